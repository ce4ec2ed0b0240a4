//! Checks requests and responses against an OpenAPI 3.1 document (ours, or a CRM's official
//! spec): the schema of the operation's request body or of its response for a status.

use std::path::Path;

use serde_json::{Value, json};

/// An OpenAPI document, parsed once.
pub struct OpenApi {
    doc: Value,
}

impl OpenApi {
    pub fn load(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let doc: Value = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        OpenApi { doc }
    }

    /// crm-sync's own contract, `openapi.yaml` at the workspace root.
    pub fn crm_sync() -> Self {
        Self::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi.yaml"))
    }

    pub fn document(&self) -> &Value {
        &self.doc
    }

    fn operation(&self, method: &str, path: &str) -> &Value {
        let op = &self.doc["paths"][path][method.to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "the OpenAPI document has no {method} {path}"
        );
        op
    }

    /// Follows a local `$ref` (`#/components/...`) once, if `value` is one.
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        {
            Some(pointer) => self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {pointer}")),
            None => value,
        }
    }

    fn check(&self, schema: &Value, instance: &Value, what: &str) -> Result<(), String> {
        // The schema is evaluated with the document's components beside it, so `$ref`s resolve.
        let mut root = schema.clone();
        if let Some(object) = root.as_object_mut() {
            object.insert("components".into(), self.doc["components"].clone());
            object.insert(
                "$schema".into(),
                json!("https://json-schema.org/draft/2020-12/schema"),
            );
        } else {
            return Ok(());
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .map_err(|e| format!("{what}: the schema does not compile: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what} does not match the spec: {}",
                errors.join("; ")
            ))
        }
    }

    /// Validates a JSON response body for `status` of `method path`.
    pub fn check_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), String> {
        let responses = &self.operation(method, path)["responses"];
        let response = responses
            .get(status.to_string())
            .or_else(|| responses.get(format!("{}XX", status / 100)))
            .or_else(|| responses.get("default"))
            .ok_or_else(|| format!("{method} {path} documents no {status} response"))?;
        let schema = &self.resolve(response)["content"]["application/json"]["schema"];
        self.check(schema, body, &format!("{method} {path} {status} response"))
    }

    /// Validates a JSON request body of `method path`.
    pub fn check_request(&self, method: &str, path: &str, body: &Value) -> Result<(), String> {
        let request = self.resolve(&self.operation(method, path)["requestBody"]);
        let schema = &request["content"]["application/json"]["schema"];
        self.check(schema, body, &format!("{method} {path} request"))
    }

    pub fn paths(&self) -> Vec<String> {
        self.doc["paths"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }
}
