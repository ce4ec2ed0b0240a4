//! Checks requests and responses against an OpenAPI 3.x document (ours, or a CRM's official
//! spec): the schema of the operation's request body or of its response for a status. OpenAPI
//! 3.0 schemas are converted to their 3.1 (JSON Schema 2020-12) meaning when loaded.

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
        let mut doc: Value = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        if doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.0"))
        {
            to_json_schema_2020(&mut doc);
        }
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
        self.check_against(schema.clone(), instance, what)
    }

    fn check_against(&self, mut root: Value, instance: &Value, what: &str) -> Result<(), String> {
        // The schema is evaluated with the document's components beside it, so `$ref`s resolve.
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
        let response = self
            .documented_response(method, path, status)
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

    /// Like `check_request`, and also refuses properties the request schema does not name
    /// where it describes an object itself (a misspelt field, or another API version's).
    pub fn check_request_closed(
        &self,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<(), String> {
        let request = self.resolve(&self.operation(method, path)["requestBody"]);
        let mut schema = request["content"]["application/json"]["schema"].clone();
        close_objects(&mut schema);
        self.check_against(schema, body, &format!("{method} {path} request"))
    }

    /// Validates a query string (`term=a%40b.com&exact_match=true`) of `method path`: every
    /// parameter documented, each value of its schema, the required ones present.
    pub fn check_query(&self, method: &str, path: &str, query: &str) -> Result<(), String> {
        let what = format!("{method} {path} query");
        let documented: Vec<&Value> = self.doc["paths"][path]["parameters"]
            .as_array()
            .into_iter()
            .chain(self.operation(method, path)["parameters"].as_array())
            .flatten()
            .map(|p| self.resolve(p))
            .filter(|p| p["in"] == "query")
            .collect();
        let url = reqwest::Url::parse(&format!("http://query.invalid/?{query}"))
            .map_err(|e| format!("{what}: {e}"))?;
        let given: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        for (name, value) in &given {
            let parameter = documented
                .iter()
                .find(|p| p["name"] == name.as_str())
                .ok_or_else(|| format!("{what}: '{name}' is not a documented parameter"))?;
            let schema = &parameter["schema"];
            // Query values are text; the schema's type says how to read them.
            let typed = match schema["type"].as_str() {
                Some("integer") => value.parse::<i64>().map(Value::from).ok(),
                Some("number") => value.parse::<f64>().ok().map(Value::from),
                Some("boolean") => value.parse::<bool>().ok().map(Value::from),
                _ => Some(Value::from(value.as_str())),
            }
            .ok_or_else(|| format!("{what}: '{name}={value}' is not of type {}", schema["type"]))?;
            self.check(schema, &typed, &format!("{what} parameter '{name}'"))?;
        }
        for parameter in documented.iter().filter(|p| p["required"] == true) {
            if !given
                .iter()
                .any(|(name, _)| parameter["name"] == name.as_str())
            {
                return Err(format!("{what}: '{}' is required", parameter["name"]));
            }
        }
        Ok(())
    }

    /// Whether `method path` documents a response for `status` (or its class, or a default).
    pub fn documents_response(&self, method: &str, path: &str, status: u16) -> bool {
        self.documented_response(method, path, status).is_some()
    }

    fn documented_response(&self, method: &str, path: &str, status: u16) -> Option<&Value> {
        let responses = &self.operation(method, path)["responses"];
        responses
            .get(status.to_string())
            .or_else(|| responses.get(format!("{}XX", status / 100)))
            .or_else(|| responses.get("default"))
    }

    /// The documented path (`/persons/{id}`) a concrete one (`/persons/42`) is an instance of;
    /// literal segments win over parameters, as servers route them.
    pub fn path_template(&self, concrete: &str) -> Option<String> {
        let segments: Vec<&str> = concrete.trim_matches('/').split('/').collect();
        let documented = self.doc["paths"].as_object()?;
        documented
            .keys()
            .filter_map(|template| {
                let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
                let fits = parts.len() == segments.len()
                    && parts
                        .iter()
                        .zip(&segments)
                        .all(|(p, s)| p == s || (p.starts_with('{') && p.ends_with('}')));
                let parameters = parts.iter().filter(|p| p.starts_with('{')).count();
                fits.then_some((parameters, template))
            })
            .min()
            .map(|(_, template)| template.clone())
    }

    pub fn paths(&self) -> Vec<String> {
        self.doc["paths"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Rewrites OpenAPI 3.0 schema keywords in place to what they mean in JSON Schema 2020-12:
/// `nullable: true` becomes a `"null"` type (or an `anyOf` with null when there is no `type`),
/// and boolean `exclusiveMinimum`/`exclusiveMaximum` become the numeric bound.
fn to_json_schema_2020(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(to_json_schema_2020),
        Value::Object(object) => {
            object.values_mut().for_each(to_json_schema_2020);
            for (flag, bound) in [
                ("exclusiveMinimum", "minimum"),
                ("exclusiveMaximum", "maximum"),
            ] {
                if let Some(Value::Bool(exclusive)) = object.get(flag).cloned() {
                    object.remove(flag);
                    if exclusive && let Some(limit) = object.remove(bound) {
                        object.insert(flag.into(), limit);
                    }
                }
            }
            if object.get("nullable") != Some(&Value::Bool(true)) {
                return;
            }
            object.remove("nullable");
            if let Some(Value::Array(allowed)) = object.get_mut("enum")
                && !allowed.contains(&Value::Null)
            {
                allowed.push(Value::Null);
            }
            match object.get("type").cloned() {
                Some(Value::String(kind)) => {
                    object.insert("type".into(), json!([kind, "null"]));
                }
                Some(_) => {}
                None => {
                    let schema = Value::Object(std::mem::take(object));
                    object.insert("anyOf".into(), json!([schema, {"type": "null"}]));
                }
            }
        }
        _ => {}
    }
}

/// Adds `unevaluatedProperties: false` to every object schema reached through `properties` and
/// `items` that does not say what it allows beyond its properties. Branches of `allOf` and the
/// like are left open: the object that composes them is closed as a whole.
fn close_objects(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let describes_object = object.contains_key("properties") || object.contains_key("allOf");
    let says_more =
        object.contains_key("additionalProperties") || object.contains_key("unevaluatedProperties");
    if describes_object && !says_more {
        object.insert("unevaluatedProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        properties.values_mut().for_each(close_objects);
    }
    if let Some(items) = object.get_mut("items") {
        close_objects(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_3_0_nullables_and_exclusive_bounds_read_as_json_schema_2020() {
        let mut schema = json!({"properties": {
            "a": {"type": "integer", "nullable": true},
            "b": {"type": "string", "enum": ["x"], "nullable": true},
            "c": {"allOf": [{"type": "string"}], "nullable": true},
            "d": {"type": "number", "minimum": 0, "exclusiveMinimum": true},
            "e": {"type": "number", "maximum": 9, "exclusiveMaximum": false},
        }});
        to_json_schema_2020(&mut schema);
        assert_eq!(
            schema["properties"],
            json!({
                "a": {"type": ["integer", "null"]},
                "b": {"type": ["string", "null"], "enum": ["x", null]},
                "c": {"anyOf": [{"allOf": [{"type": "string"}]}, {"type": "null"}]},
                "d": {"type": "number", "exclusiveMinimum": 0},
                "e": {"type": "number", "maximum": 9},
            })
        );
    }
}
