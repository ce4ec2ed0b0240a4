//! AWS calls per operation on the production wiring (`App::on_aws`: Secrets Manager behind the
//! container's connection cache, DynamoDB for records and the accounts' rate budgets), counted
//! by an SDK interceptor against moto. The README's table of calls per operation comes from
//! these tests.
//!
//! A rate-budget lease is one conditional `UpdateItem`: a request that finds no lease of its
//! account in the container claims one (with the search lane's token too, when it is a search),
//! and the next requests within the lease's life (one second for HubSpot Starter) spend it. So
//! a new contact found by email is exactly one `UpdateItem` (its search claims both lanes at
//! once, the create spends the general lease), and a request right after another may make none.

use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use crm_sync::App;
use crm_sync::config::StoreKind;
use crm_sync::connection::ConnectionId;
use crm_sync::domain::CrmType;
use crm_sync::http::{Operation, handle};
use crm_sync::store::ConnectionStore;
use crm_sync::store::aws::{DynamoDbSyncRecordStore, SecretsManagerConnectionStore};
use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::harness::*;
use crm_sync_tests::store_suite::create_records_table;
use lambda_http::http::Method;
use serde_json::{Value, json};

const TOKEN: &str = "hubspot-aws-calls-token-51c2";

/// Records the operation of every request the SDK sends (`GetItem`, `GetSecretValue`, ...).
#[derive(Debug, Clone, Default)]
struct AwsCalls(Arc<Mutex<Vec<String>>>);

impl Intercept for AwsCalls {
    fn name(&self) -> &'static str {
        "AwsCalls"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Both services speak the JSON protocol: `X-Amz-Target: <service>.<Operation>`.
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("unknown");
        let operation = target.rsplit('.').next().unwrap_or(target);
        self.0.lock().unwrap().push(operation.to_string());
        Ok(())
    }
}

impl AwsCalls {
    /// The calls since the last `take`, sorted.
    fn take(&self) -> Vec<String> {
        let mut calls = std::mem::take(&mut *self.0.lock().unwrap());
        calls.sort();
        calls
    }

    /// The calls since the last `take`, sorted, with the rate budget's `UpdateItem`s counted
    /// apart (records are written with `PutItem`).
    fn take_with_budget(&self) -> (Vec<String>, usize) {
        let calls = self.take();
        let budget = calls.iter().filter(|c| *c == "UpdateItem").count();
        (
            calls.into_iter().filter(|c| c != "UpdateItem").collect(),
            budget,
        )
    }
}

struct Setup {
    app: App,
    calls: AwsCalls,
    /// The same secrets without cache or counting: what an operator or another container writes.
    elsewhere: SecretsManagerConnectionStore,
    hubspot: HubSpotEmulator,
}

/// A cold container on moto with a HubSpot connection `demo` stored before it started.
async fn setup() -> Setup {
    let sdk = aws_sdk_config().await;
    let calls = AwsCalls::default();
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = format!("records-{}", uuid::Uuid::new_v4());
    create_records_table(&dynamodb, &table).await;
    let prefix = format!("crm-sync-calls-{}/connections/", uuid::Uuid::new_v4());
    let counted_dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(calls.clone())
            .build(),
    );
    let counted_secrets = aws_sdk_secretsmanager::Client::from_conf(
        aws_sdk_secretsmanager::config::Builder::from(&sdk)
            .interceptor(calls.clone())
            .build(),
    );
    let elsewhere =
        SecretsManagerConnectionStore::new(aws_sdk_secretsmanager::Client::new(&sdk), &prefix);
    let hubspot = HubSpotEmulator::start(&[TOKEN]).await.unwrap();
    elsewhere
        .put(
            &ConnectionId::parse("demo").unwrap(),
            &connection(
                CrmType::Hubspot,
                hubspot.base_url(),
                &[("accessToken", TOKEN)],
            ),
        )
        .await
        .unwrap();
    let dir = TempDir::new("aws-calls");
    let app = App::on_aws(
        test_config(StoreKind::Aws, dir.path()),
        SecretsManagerConnectionStore::new(counted_secrets, &prefix),
        DynamoDbSyncRecordStore::new(counted_dynamodb, &table),
    );
    Setup {
        app,
        calls,
        elsewhere,
        hubspot,
    }
}

async fn call(app: &App, operation: Operation, body: Option<Value>) -> (u16, Value) {
    let method = if body.is_some() {
        Method::POST
    } else {
        Method::GET
    };
    let request = api_request(method, Some(TEST_API_KEY), body.as_ref());
    read_response(handle(app, operation, request).await.unwrap())
}

fn calls(list: &[&str]) -> Vec<String> {
    let mut calls: Vec<String> = list.iter().map(|c| c.to_string()).collect();
    calls.sort();
    calls
}

#[tokio::test]
async fn platforms_makes_no_aws_call() {
    let setup = setup().await;
    let (status, _) = call(&setup.app, Operation::Platforms, None).await;
    assert_eq!(status, 200);
    assert_eq!(setup.calls.take(), calls(&[]));
}

#[tokio::test]
async fn a_warm_new_sync_is_one_read_and_two_conditional_writes_and_a_resend_one_read() {
    let setup = setup().await;
    let customer = |email: &str| json!({"connectionId": "demo", "customer": {"email": email}});

    let (status, body) = call(
        &setup.app,
        Operation::SyncCustomer,
        Some(customer("cold@example.com")),
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("created")),
        "{body}"
    );
    assert_eq!(
        setup.calls.take_with_budget(),
        (
            calls(&["GetSecretValue", "GetItem", "PutItem", "PutItem"]),
            2
        ),
        "a cold container reads its connection once; on HubSpot Starter (a live lease of one \
         token, a lease life of 0.25 s) each of its two CRM calls (read by email, create) claims \
         its token"
    );

    let (_, body) = call(
        &setup.app,
        Operation::SyncCustomer,
        Some(customer("warm@example.com")),
    )
    .await;
    assert_eq!(body["status"], "created");
    assert_eq!(
        setup.calls.take_with_budget(),
        (calls(&["GetItem", "PutItem", "PutItem"]), 2),
        "a warm sync reads its connection from memory; each CRM call claims its token"
    );

    let (_, body) = call(
        &setup.app,
        Operation::SyncCustomer,
        Some(customer("warm@example.com")),
    )
    .await;
    assert_eq!(body["status"], "unchanged");
    assert_eq!(setup.calls.take(), calls(&["GetItem"]));

    let appointment = json!({"connectionId": "demo", "customer": {"email": "warm@example.com"},
        "appointment": {"externalId": "bk-calls-1", "start": "2025-07-01T10:00:00Z"}});
    let (_, body) = call(&setup.app, Operation::SyncAppointment, Some(appointment)).await;
    assert_eq!(body["status"], "created", "{body}");
    let (without_budget, budget) = setup.calls.take_with_budget();
    assert_eq!(
        without_budget,
        calls(&["GetItem", "PutItem", "PutItem", "GetItem"]),
        "a new appointment: its record claimed and finished, the unchanged contact's record read"
    );
    assert!(
        budget <= 1,
        "its one CRM call spends the warm lease or claims one: {budget} UpdateItem"
    );
}

#[tokio::test]
async fn a_lease_claimed_by_one_sync_serves_the_next_requests_of_the_container() {
    let setup = setup().await;
    let mut connection = setup
        .elsewhere
        .get(&ConnectionId::parse("demo").unwrap())
        .await
        .unwrap();
    connection.id = None;
    // A daily window: the lease lives a minute, longer than this test. (The emulated portal
    // is as large, else its ten-secondly headers would lower the bucket, one more write.)
    setup.hubspot.state.lock().unwrap().lift_rate_limits();
    connection.settings.extra.insert(
        "rateBudget".into(),
        json!({"requests": 250_000, "windowSeconds": 86_400}),
    );
    setup
        .elsewhere
        .put(&ConnectionId::parse("demo").unwrap(), &connection)
        .await
        .unwrap();
    let customer = json!({"connectionId": "demo", "customer": {"email": "lease@example.com"}});
    call(&setup.app, Operation::SyncCustomer, Some(customer)).await;
    assert_eq!(
        setup.calls.take_with_budget().1,
        1,
        "search + create: one lease"
    );
    let appointment = json!({"connectionId": "demo", "customer": {"email": "lease@example.com"},
        "appointment": {"externalId": "bk-lease-1", "start": "2025-07-01T10:00:00Z"}});
    let (_, body) = call(&setup.app, Operation::SyncAppointment, Some(appointment)).await;
    assert_eq!(body["status"], "created", "{body}");
    assert_eq!(
        setup.calls.take_with_budget().1,
        0,
        "the meeting's create spends the lease the contact's sync claimed"
    );
}

#[tokio::test]
async fn a_refused_token_is_read_again_and_a_rotated_one_is_used() {
    let setup = setup().await;
    let id = ConnectionId::parse("demo").unwrap();
    let customer = json!({"connectionId": "demo", "customer": {"email": "rotate@example.com"}});
    call(&setup.app, Operation::Platforms, None).await;
    // The container has the connection in memory; then the token is revoked and rotated.
    let mut stored = setup.elsewhere.get(&id).await.unwrap();
    setup.app.connections.get(&id).await.unwrap();
    let revoked = connection(
        CrmType::Hubspot,
        setup.hubspot.base_url(),
        &[("accessToken", "revoked-0a1")],
    );
    setup.app.connections.put(&id, &revoked).await.unwrap();
    setup.calls.take();

    let (status, body) = call(&setup.app, Operation::SyncCustomer, Some(customer.clone())).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (502, &json!("crm_auth_failed"))
    );
    assert!(
        !setup.calls.take().contains(&"GetSecretValue".to_string()),
        "served from memory"
    );

    stored.id = None;
    setup.elsewhere.put(&id, &stored).await.unwrap();
    let (status, body) = call(&setup.app, Operation::SyncCustomer, Some(customer)).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("created")),
        "{body}"
    );
    assert!(
        setup.calls.take().contains(&"GetSecretValue".to_string()),
        "the refused connection was read again"
    );
}
