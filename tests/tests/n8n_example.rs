//! The importable n8n workflow in examples/n8n: its HTTP node calls sync-appointment with a
//! header-auth credential, and the body its expression builds from the sample booking is a valid
//! request that syncs.

use crm_sync::domain::CrmType;
use crm_sync::http::{Operation, handle};
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::harness::*;
use lambda_http::http::Method;
use serde_json::Value;

fn example(name: &str) -> Value {
    let path = format!("{}/../examples/n8n/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(name)).expect("valid JSON")
}

/// Renders the n8n expressions the workflow uses: `{{ JSON.stringify($json.a.b) }}`.
fn render(template: &str, item: &Value) -> String {
    let template = template
        .strip_prefix('=')
        .expect("an n8n expression starts with =");
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closed expression") + start;
        let expression = rest[start + 2..end].trim();
        let path = expression
            .strip_prefix("JSON.stringify($json.")
            .and_then(|p| p.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!("the example uses only JSON.stringify($json.…): {expression}")
            });
        let pointer = format!("/{}", path.replace('.', "/"));
        out.push_str(
            &item
                .pointer(&pointer)
                .cloned()
                .unwrap_or(Value::Null)
                .to_string(),
        );
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn the_workflow_builds_a_valid_sync_appointment_request_from_a_booking() {
    let workflow = example("voice-booking-to-crm.json");
    let nodes = workflow["nodes"].as_array().unwrap();
    let http = nodes
        .iter()
        .find(|n| n["type"] == "n8n-nodes-base.httpRequest")
        .expect("an HTTP Request node");
    let parameters = &http["parameters"];
    assert_eq!(parameters["method"], "POST");
    assert!(
        parameters["url"]
            .as_str()
            .unwrap()
            .ends_with("/api/v1/integrations/crm/sync-appointment")
    );
    assert_eq!(parameters["authentication"], "genericCredentialType");
    assert_eq!(parameters["genericAuthType"], "httpHeaderAuth");
    assert!(
        http["credentials"]["httpHeaderAuth"].is_object(),
        "the API key comes from an n8n credential"
    );
    assert!(
        !workflow.to_string().contains("x-api-key\": \""),
        "no key in the workflow"
    );
    let webhook = nodes
        .iter()
        .find(|n| n["type"] == "n8n-nodes-base.webhook")
        .unwrap();
    assert_eq!(
        workflow["connections"][webhook["name"].as_str().unwrap()]["main"][0][0]["node"],
        http["name"]
    );

    // What the webhook node hands on: the booking under `body`.
    let item = serde_json::json!({ "body": example("sample-booking.json") });
    let body: Value =
        serde_json::from_str(&render(parameters["jsonBody"].as_str().unwrap(), &item))
            .expect("the body is JSON");
    let spec = OpenApi::crm_sync();
    spec.check_request("POST", "/sync-appointment", &body)
        .unwrap();

    let hubspot = HubSpotEmulator::start(&["n8n-example-token"])
        .await
        .unwrap();
    let dir = TempDir::new("n8n");
    let app = local_app(&dir);
    let connection_id = body["connectionId"].as_str().unwrap();
    store_connection(
        &app,
        connection_id,
        &connection(
            CrmType::Hubspot,
            hubspot.base_url(),
            &[("accessToken", "n8n-example-token")],
        ),
    )
    .await;
    let response = handle(
        &app,
        Operation::SyncAppointment,
        api_request(Method::POST, Some(TEST_API_KEY), Some(&body)),
    )
    .await
    .unwrap();
    let (status, answer) = read_response(response);
    assert_eq!(status, 200, "{answer}");
    spec.check_response("POST", "/sync-appointment", 200, &answer)
        .unwrap();
    let meetings = hubspot.state.lock().unwrap().all("meetings");
    // 10:00 in Chicago in July (CDT, UTC-5).
    assert_eq!(
        meetings[0].prop("hs_meeting_start_time"),
        Some("2025-07-01T15:00:00.000Z")
    );
    assert_eq!(meetings[0].prop("hs_meeting_title"), Some("Boiler service"));
}
