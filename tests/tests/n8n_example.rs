//! The importable n8n files in examples/n8n, read as data: each workflow calls its operation with
//! the header-auth credential the credential template defines, hands crm-sync's status and body
//! back to the webhook's caller, and does not retry. What the workflows send and answer is tested
//! in a real n8n by tests/n8n/run.sh (n8n's expressions are JavaScript; a missing field there is
//! `undefined`, not `null`).

use serde_json::Value;

fn example(name: &str) -> Value {
    let path = format!("{}/../examples/n8n/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(name)).expect("valid JSON")
}

fn node<'a>(workflow: &'a Value, node_type: &str) -> &'a Value {
    workflow["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == node_type)
        .unwrap_or_else(|| panic!("a {node_type} node"))
}

fn by_name<'a>(workflow: &'a Value, name: &Value) -> &'a Value {
    workflow["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| &n["name"] == name)
        .unwrap_or_else(|| panic!("a node named {name}"))
}

/// The node an output of `from` leads to.
fn next<'a>(workflow: &'a Value, from: &Value, output: usize) -> &'a Value {
    let target = &workflow["connections"][from.as_str().unwrap()]["main"][output][0]["node"];
    by_name(workflow, target)
}

fn check_workflow(file: &str, operation: &str, webhook_fields: &[&str]) {
    let workflow = example(file);
    let credential = &example("crm-sync-credential.json")[0];
    let webhook = node(&workflow, "n8n-nodes-base.webhook");
    assert_eq!(webhook["parameters"]["responseMode"], "responseNode");
    let http = next(&workflow, &webhook["name"], 0);
    assert_eq!(http["type"], "n8n-nodes-base.httpRequest");
    let parameters = &http["parameters"];
    assert_eq!(parameters["method"], "POST");
    let url = parameters["url"].as_str().unwrap();
    assert!(
        url.ends_with(&format!("/api/v1/integrations/crm/{operation}")),
        "{url}"
    );
    assert_eq!(parameters["authentication"], "genericCredentialType");
    assert_eq!(parameters["genericAuthType"], "httpHeaderAuth");
    // The credential is imported first and found by its id.
    assert_eq!(
        http["credentials"]["httpHeaderAuth"]["id"],
        credential["id"]
    );
    assert_eq!(
        http["credentials"]["httpHeaderAuth"]["name"],
        credential["name"]
    );
    assert!(
        !workflow.to_string().contains("x-api-key\": \""),
        "no key in the workflow"
    );

    // JSON.stringify of one object leaves out what the webhook did not receive; a `}}` inside
    // would end n8n's expression early.
    let body = parameters["jsonBody"].as_str().unwrap();
    let expression = body
        .strip_prefix("={{ JSON.stringify({")
        .and_then(|b| b.strip_suffix("}) }}"))
        .expect("the body is one JSON.stringify expression");
    assert!(!expression.contains("}}") && !expression.contains("{{"));
    for field in webhook_fields {
        assert!(
            expression.contains(&format!("$json.body.{field},"))
                || expression.contains(&format!("$json.body.{field}\n")),
            "{file} reads {field}"
        );
    }

    // Validation errors are not retried; crm-sync's status and body reach the caller.
    assert_ne!(http["retryOnFail"], true, "{file}: n8n's retry is off");
    let response = &parameters["options"]["response"]["response"];
    assert_eq!(response["neverError"], true);
    assert_eq!(response["fullResponse"], true);
    let reply = next(&workflow, &http["name"], 0);
    assert_eq!(reply["type"], "n8n-nodes-base.respondToWebhook");
    assert_eq!(
        reply["parameters"]["options"]["responseCode"],
        "={{ $json.statusCode }}"
    );
    assert_eq!(
        reply["parameters"]["responseBody"],
        "={{ JSON.stringify($json.body) }}"
    );
    // No answer at all (crm-sync unreachable) takes the error output to its own reply.
    assert_eq!(http["onError"], "continueErrorOutput");
    let unreachable = next(&workflow, &http["name"], 1);
    assert_eq!(unreachable["type"], "n8n-nodes-base.respondToWebhook");
    assert_eq!(unreachable["parameters"]["options"]["responseCode"], 502);
}

#[test]
fn the_booking_workflow_calls_sync_appointment_and_answers_with_crm_syncs_status_and_body() {
    let sample = example("sample-booking.json");
    let fields: Vec<&str> = sample
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    check_workflow("voice-booking-to-crm.json", "sync-appointment", &fields);
}

#[test]
fn the_lead_workflow_calls_sync_lead_and_answers_with_crm_syncs_status_and_body() {
    let sample = example("sample-lead.json");
    let fields: Vec<&str> = sample
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    check_workflow("voice-lead-to-crm.json", "sync-lead", &fields);
}

#[test]
fn the_credential_template_is_a_header_auth_credential_without_a_real_key() {
    let credentials = example("crm-sync-credential.json");
    let credential = &credentials[0];
    assert_eq!(credential["type"], "httpHeaderAuth");
    assert_eq!(credential["data"]["name"], "x-api-key");
    assert_eq!(
        credential["data"]["value"],
        "REPLACE-WITH-YOUR-CRM-SYNC-API-KEY"
    );
}

/// The scheduled batch workflow: a Schedule Trigger, then the bookings built into sync-batch
/// bodies of at most 500 items with a batch id per run, posted with the header credential.
#[test]
fn the_scheduled_batch_workflow_posts_batches_of_at_most_500_with_a_batch_id() {
    let workflow = example("scheduled-bookings-batch-to-crm.json");
    let credential = &example("crm-sync-credential.json")[0];
    let trigger = node(&workflow, "n8n-nodes-base.scheduleTrigger");
    assert!(trigger["parameters"]["rule"]["interval"].is_array());
    let http = node(&workflow, "n8n-nodes-base.httpRequest");
    assert_eq!(http["parameters"]["method"], "POST");
    assert!(
        http["parameters"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/api/v1/integrations/crm/sync-batch")
    );
    assert_eq!(http["parameters"]["genericAuthType"], "httpHeaderAuth");
    assert_eq!(
        http["credentials"]["httpHeaderAuth"]["id"],
        credential["id"]
    );
    let build = by_name(&workflow, &Value::from("Build batches"));
    let code = build["parameters"]["jsCode"].as_str().unwrap();
    assert!(
        code.contains("500") && code.contains("batchId") && code.contains("type: 'appointment'")
    );
    assert_eq!(next(&workflow, &build["name"], 0)["name"], http["name"]);
    let first = next(&workflow, &trigger["name"], 0);
    assert_eq!(next(&workflow, &first["name"], 0)["name"], build["name"]);
}
