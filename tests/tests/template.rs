//! The SAM template, read as data: every API method needs the API key, each function's IAM is the
//! least its operation needs, and the environment matches what the code reads.

use std::collections::BTreeSet;

use serde_json::Value;

fn template() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/template.yaml");
    let text = std::fs::read_to_string(path).expect("infra/template.yaml");
    let yaml: serde_norway::Value =
        serde_norway::from_str(&text).expect("the template parses as YAML");
    to_json(yaml)
}

/// YAML to JSON, with CloudFormation's short-form tags kept as `{"!Ref": …}`.
fn to_json(yaml: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(n).unwrap(),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    (
                        k.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("{k:?}")),
                        to_json(v),
                    )
                })
                .collect(),
        ),
        Y::Tagged(tagged) => {
            let mut object = serde_json::Map::new();
            object.insert(
                format!("!{}", tagged.tag.to_string().trim_start_matches('!')),
                to_json(tagged.value),
            );
            Value::Object(object)
        }
    }
}

fn functions(template: &Value) -> Vec<(String, &Value)> {
    template["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
        .map(|(name, r)| (name.clone(), r))
        .collect()
}

/// The binary the Makefile's `build-<logical id>` target (SAM's makefile build) packages.
fn binary_of(logical_id: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Makefile");
    let makefile = std::fs::read_to_string(path).expect("Makefile");
    let mut lines = makefile.lines();
    lines
        .find(|l| *l == format!("build-{logical_id}:"))
        .unwrap_or_else(|| panic!("the Makefile has no target build-{logical_id}"));
    let recipe = lines.next().unwrap_or_default();
    recipe
        .trim()
        .strip_prefix("$(call bootstrap,")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("build-{logical_id} copies no function's bootstrap: {recipe}"))
        .to_string()
}

#[test]
fn sam_builds_every_function_with_the_one_cargo_invocation_of_the_makefile() {
    let template = template();
    let mut binaries = BTreeSet::new();
    for (name, function) in functions(&template) {
        assert_eq!(function["Metadata"]["BuildMethod"], "makefile", "{name}");
        binaries.insert(binary_of(&name));
    }
    let makefile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Makefile"))
        .expect("Makefile");
    let listed: BTreeSet<String> = makefile
        .lines()
        .find_map(|l| l.strip_prefix("FUNCTIONS := "))
        .expect("the Makefile lists the functions")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        binaries, listed,
        "each function built once, and only the functions"
    );
}

/// The `!GetAtt X.Arn` a role reference names, as `X`.
fn get_att_target(value: &Value) -> String {
    let text = serde_json::to_string(value).unwrap();
    text.split(|c: char| !c.is_alphanumeric() && c != '.')
        .find(|s| s.ends_with(".Arn"))
        .unwrap()
        .trim_end_matches(".Arn")
        .to_string()
}

/// Every action a role allows, and the resources of the statements that allow them.
fn allowed_actions(role: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for policy in role["Properties"]["Policies"].as_array().unwrap() {
        for statement in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
            assert_eq!(statement["Effect"], "Allow");
            let actions: Vec<String> = match &statement["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(list) => list
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
                other => panic!("unexpected Action {other}"),
            };
            // A condition is part of what the statement allows.
            let mut resource = serde_json::to_string(&statement["Resource"]).unwrap();
            if !statement["Condition"].is_null() {
                resource.push_str(&format!(" if {}", statement["Condition"]));
            }
            for action in actions {
                out.push((action, resource.clone()));
            }
        }
    }
    out
}

#[test]
fn every_api_method_requires_the_api_key_and_every_route_exists() {
    let template = template();
    let api = &template["Resources"]["CrmSyncApi"];
    assert_eq!(api["Properties"]["Auth"]["ApiKeyRequired"], true);
    let mut routes = BTreeSet::new();
    for (name, function) in functions(&template) {
        for (_, event) in function["Properties"]["Events"]
            .as_object()
            .into_iter()
            .flatten()
        {
            if event["Type"] == "Api" {
                assert_ne!(
                    event["Properties"]["Auth"]["ApiKeyRequired"], false,
                    "{name} turns the API key off"
                );
                routes.insert(format!(
                    "{} {}",
                    event["Properties"]["Method"].as_str().unwrap(),
                    event["Properties"]["Path"].as_str().unwrap()
                ));
            }
        }
    }
    let expected: BTreeSet<String> = [
        "GET /api/v1/integrations/crm/platforms",
        "POST /api/v1/integrations/crm/test-connection",
        "POST /api/v1/integrations/crm/sync-customer",
        "POST /api/v1/integrations/crm/sync-appointment",
        "POST /api/v1/integrations/crm/sync-lead",
        "GET /api/v1/integrations/crm/get-customer",
        "POST /api/v1/integrations/crm/sync-batch",
        "GET /api/v1/integrations/crm/sync-records",
        "POST /api/v1/integrations/crm/sync-records/replay",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(routes, expected);
    let usage_plan = &template["Resources"]["CrmSyncUsagePlan"]["Properties"];
    assert!(usage_plan["Throttle"].is_object() && usage_plan["Quota"].is_object());
}

#[test]
fn each_function_gets_the_least_iam_its_operation_needs() {
    let template = template();
    let resources = &template["Resources"];
    for (name, function) in functions(&template) {
        let role_name = get_att_target(&function["Properties"]["Role"]);
        let actions = allowed_actions(&resources[&role_name]);
        let has = |action: &str| actions.iter().any(|(a, _)| a == action);
        for (action, resource) in &actions {
            assert!(!action.contains('*'), "{name}: wildcard action {action}");
            assert!(
                action != "dynamodb:Scan",
                "{name}: records are read by key and index, never scanned"
            );
            if action.starts_with("secretsmanager:") {
                assert!(
                    resource.contains("secret:crm-sync/connections/*"),
                    "{name}: {action} on {resource}"
                );
            }
        }
        let binary = binary_of(&name);
        match binary.as_str() {
            "platforms" => assert!(
                actions.iter().all(|(a, _)| a.starts_with("logs:")),
                "platforms needs no data access: {actions:?}"
            ),
            "get-customer" => {
                assert!(has("secretsmanager:GetSecretValue"));
                assert!(!has("dynamodb:Query"), "get-customer cannot list records");
                // It updates rate budgets, and nothing else (records are written with PutItem).
                let updates: Vec<_> = actions
                    .iter()
                    .filter(|(a, _)| a == "dynamodb:UpdateItem")
                    .collect();
                assert!(!updates.is_empty(), "get-customer takes from rate budgets");
                for (_, allowed) in updates {
                    assert!(
                        allowed.contains("dynamodb:LeadingKeys") && allowed.contains("budget#*"),
                        "get-customer may update budget items only: {allowed}"
                    );
                }
            }
            "scheduled-sync" => {
                assert!(has("dynamodb:Query") && has("dynamodb:PutItem"));
                assert!(
                    has("secretsmanager:PutSecretValue"),
                    "refreshed tokens are stored"
                );
                let queried: Vec<&String> = actions
                    .iter()
                    .filter(|(a, _)| a == "dynamodb:Query")
                    .map(|(_, r)| r)
                    .collect();
                assert!(
                    queried.iter().all(|r| r.contains("/index/status-index")),
                    "the drain reads the status index only: {queried:?}"
                );
            }
            "sync-batch" => {
                assert!(has("secretsmanager:GetSecretValue") && has("dynamodb:PutItem"));
                assert!(
                    !has("secretsmanager:PutSecretValue") && !has("dynamodb:Query"),
                    "sync-batch calls no CRM and lists nothing"
                );
            }
            "sync-records" => {
                assert!(
                    !actions
                        .iter()
                        .any(|(a, _)| a.starts_with("secretsmanager:")),
                    "sync-records reads no connection"
                );
                for (action, resource) in &actions {
                    if action == "dynamodb:Query" {
                        assert!(resource.contains("/index/"), "{resource}");
                        assert!(!resource.contains("status-index"), "{resource}");
                    }
                }
                assert!(has("dynamodb:GetItem") && has("dynamodb:PutItem"));
            }
            "sync-customer" | "sync-appointment" | "sync-lead" | "test-connection" => {
                assert!(
                    has("secretsmanager:GetSecretValue")
                        && has("dynamodb:GetItem")
                        && has("dynamodb:PutItem")
                );
                assert!(
                    !has("dynamodb:Query") && !has("dynamodb:Scan"),
                    "{binary} never lists records"
                );
            }
            other => panic!("unexpected function binary {other}"),
        }
        assert!(
            !has("secretsmanager:CreateSecret") && !has("secretsmanager:DeleteSecret"),
            "{name} cannot add or remove connections"
        );
    }
}

#[test]
fn functions_get_the_environment_the_code_reads() {
    let template = template();
    let variables = &template["Globals"]["Function"]["Environment"]["Variables"];
    assert_eq!(variables["CRM_SYNC_STORE"], "aws");
    assert_eq!(variables["CRM_SYNC_SECRET_PREFIX"], "crm-sync/connections/");
    assert!(variables["CRM_SYNC_TABLE"].is_object() || variables["CRM_SYNC_TABLE"].is_string());
    assert!(!variables["RUST_LOG"].is_null());
    let config =
        crm_sync::config::Config::from_lookup(|name| variables[name].as_str().map(str::to_string));
    assert_eq!(config.store, crm_sync::config::StoreKind::Aws);
    assert_eq!(config.api_key, None, "deployed, API Gateway checks the key");
    let table = &template["Resources"]["SyncRecordsTable"]["Properties"];
    let indexes: Vec<&str> = table["GlobalSecondaryIndexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["IndexName"].as_str().unwrap())
        .collect();
    use crm_sync::store::aws::{BATCH_INDEX, CONNECTION_INDEX, STATUS_INDEX, SYNC_ID_INDEX};
    assert_eq!(
        indexes,
        [STATUS_INDEX, SYNC_ID_INDEX, CONNECTION_INDEX, BATCH_INDEX]
    );
    assert_eq!(
        table["TimeToLiveSpecification"]["AttributeName"],
        "expiresAt"
    );
    assert_eq!(table["TimeToLiveSpecification"]["Enabled"], true);
    assert_eq!(table["BillingMode"], "PAY_PER_REQUEST");
    assert_eq!(
        table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
        true
    );
}
