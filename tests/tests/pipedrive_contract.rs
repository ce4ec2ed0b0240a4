//! The Pipedrive adapter and emulator against Pipedrive's official OpenAPI specs: after a run
//! through every sync operation, each request the adapter sent must use a documented path,
//! documented query parameters and a request body of the documented schema (naming no field the
//! schema does not), and each answer the emulator gave must match the documented response.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use crm_sync::domain::CrmType;
use crm_sync_tests::contract::OpenApi;
use crm_sync_tests::emulator::pipedrive::PipedriveEmulator;
use crm_sync_tests::harness::{TempDir, connection, local_app, store_connection};
use serde_json::json;

const TOKEN: &str = "pipedrive-contract-token-51e0";
/// A person custom field key, in the form Pipedrive gives them.
const CITY_FIELD: &str = "9dc80c50d78a15643bfc4ca79d76156a73a1ca0e";

fn v1() -> &'static OpenApi {
    static SPEC: OnceLock<OpenApi> = OnceLock::new();
    SPEC.get_or_init(|| {
        OpenApi::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/specs/pipedrive/openapi-v1.yaml"
        )))
    })
}

fn v2() -> &'static OpenApi {
    static SPEC: OnceLock<OpenApi> = OnceLock::new();
    SPEC.get_or_init(|| {
        OpenApi::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/specs/pipedrive/openapi-v2.yaml"
        )))
    })
}

#[test]
fn both_specs_take_the_api_token_in_the_x_api_token_header() {
    for spec in [v1(), v2()] {
        assert_eq!(
            spec.document()["components"]["securitySchemes"]["api_key"],
            json!({"type": "apiKey", "name": "x-api-token", "in": "header"})
        );
    }
}

/// Runs every operation of crm-sync against the emulator, including the answers that are
/// errors (a refused token, a lead deleted in Pipedrive).
async fn sync_everything(emulator: &PipedriveEmulator) {
    let dir = TempDir::new("pipedrive-contract");
    let app = local_app(&dir);
    let mut pipedrive = connection(
        CrmType::Pipedrive,
        emulator.base_url(),
        &[("apiToken", TOKEN)],
    );
    pipedrive.settings.field_mappings = [(
        "contact".to_string(),
        [("city".to_string(), CITY_FIELD.to_string())].into(),
    )]
    .into();
    store_connection(&app, "pd", &pipedrive).await;
    let revoked = connection(
        CrmType::Pipedrive,
        emulator.base_url(),
        &[("apiToken", "revoked")],
    );
    store_connection(&app, "revoked", &revoked).await;

    let ada = json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com", "city": "London"});
    let created = app
        .sync_customer(&json!({"connectionId": "pd", "customer": ada}))
        .await
        .unwrap();
    let mut moved = ada.clone();
    moved["phone"] = json!("+442079460958");
    moved["city"] = json!("Marylebone");
    app.sync_customer(&json!({"connectionId": "pd", "customer": moved}))
        .await
        .unwrap();
    emulator
        .state
        .lock()
        .unwrap()
        .insert_person("Grace Hopper", None, Some("(415) 555-0123"));
    app.sync_customer(
        &json!({"connectionId": "pd", "customer": {"firstName": "Grace", "phone": "+14155550123"}}),
    )
    .await
    .unwrap();
    for query in [
        json!({"connectionId": "pd", "customerId": created.crm_id}),
        json!({"connectionId": "pd", "email": "ada@example.com"}),
        json!({"connectionId": "pd", "phone": "+14155550123"}),
    ] {
        app.get_customer(&query).await.unwrap();
    }

    for (start, status) in [
        ("2025-07-01T10:00:00", "scheduled"),
        ("2025-07-02T15:30:00", "scheduled"),
        ("2025-07-02T15:30:00", "cancelled"),
    ] {
        app.sync_appointment(&json!({"connectionId": "pd", "customer": ada,
            "appointment": {"externalId": "contract-1", "title": "Consultation", "start": start,
                "timezone": "America/New_York", "durationMinutes": 45, "location": "Main St 1",
                "notes": "First visit", "status": status}}))
            .await
            .unwrap();
    }

    for company in ["NACA", "NASA"] {
        app.sync_lead(
            &json!({"connectionId": "pd", "lead": {"firstName": "Dorothy",
            "email": "dorothy@example.com", "company": company}}),
        )
        .await
        .unwrap();
    }
    // Deleted in Pipedrive by a person: the update finds nothing, so it is created again.
    emulator.state.lock().unwrap().leads.clear();
    app.sync_lead(
        &json!({"connectionId": "pd", "lead": {"firstName": "Dorothy",
        "email": "dorothy@example.com", "company": "JPL"}}),
    )
    .await
    .unwrap();

    assert!(
        app.test_connection(&json!({"connectionId": "pd"}))
            .await
            .unwrap()
            .ok
    );
    assert!(
        !app.test_connection(&json!({"connectionId": "revoked"}))
            .await
            .unwrap()
            .ok
    );
}

#[tokio::test]
async fn every_request_and_answer_matches_pipedrives_openapi_specs() {
    let emulator = PipedriveEmulator::start(&[TOKEN]).await.unwrap();
    sync_everything(&emulator).await;

    let mut covered = BTreeSet::new();
    let mut failures = Vec::new();
    for request in emulator.server.control.requests() {
        let (spec, version, path) = match request.path.split_at(7) {
            ("/api/v1", path) => (v1(), "v1", path),
            ("/api/v2", path) => (v2(), "v2", path),
            _ => panic!("{} is not a Pipedrive API path", request.path),
        };
        let method = request.method.as_str();
        let template = spec
            .path_template(path)
            .unwrap_or_else(|| panic!("{method} {} is not in the {version} spec", request.path));
        let status = request.status.expect("every request was answered");
        covered.insert((format!("{method} /api/{version}{template}"), status));
        let query = request.query.as_deref().unwrap_or("");
        failures.extend(spec.check_query(method, &template, query).err());
        if !request.body.is_null() {
            let checked = spec.check_request_closed(method, &template, &request.body);
            failures.extend(
                checked
                    .err()
                    .map(|e| format!("{e}\nsent: {}", request.body)),
            );
        }
        if spec.documents_response(method, &template, status) {
            let checked = spec.check_response(method, &template, status, &request.response);
            failures.extend(
                checked
                    .err()
                    .map(|e| format!("{e}\nanswered: {}", request.response)),
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    let operations: BTreeSet<&str> = covered.iter().map(|(op, _)| op.as_str()).collect();
    let expected = [
        "GET /api/v1/users/me",
        "POST /api/v2/persons",
        "GET /api/v2/persons/search",
        "GET /api/v2/persons/{id}",
        "PATCH /api/v2/persons/{id}",
        "POST /api/v2/activities",
        "PATCH /api/v2/activities/{id}",
        "GET /api/v1/leads",
        "POST /api/v1/leads",
        "PATCH /api/v1/leads/{id}",
    ];
    assert_eq!(operations, expected.into_iter().collect(), "{covered:?}");
    for documented_error in [
        ("GET /api/v1/users/me".to_string(), 401),
        ("PATCH /api/v1/leads/{id}".to_string(), 404),
    ] {
        assert!(
            covered.contains(&documented_error),
            "{documented_error:?} was exercised"
        );
    }
    let sent_custom_field = emulator
        .server
        .control
        .requests()
        .iter()
        .any(|r| r.body["custom_fields"][CITY_FIELD] == "London");
    assert!(sent_custom_field, "the mapped custom field was sent");
}
