//! The admin CLI against the local stores and the HubSpot emulator.

use std::io::Write;
use std::process::{Command, Stdio};

use crm_sync::domain::CrmType;
use crm_sync_tests::emulator::Fault;
use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::harness::{TempDir, connection, local_app, store_connection};
use serde_json::json;

const TOKEN: &str = "cli-token-secret-4242";

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `crm-sync ARGS` on the local stores in `dir`, with `stdin` piped in.
async fn crm_sync(dir: &TempDir, args: &[&str], stdin: &str) -> Run {
    let env = vec![
        ("CRM_SYNC_STORE".to_string(), "local".to_string()),
        (
            "CRM_SYNC_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        ),
    ];
    crm_sync_with(env, args, stdin).await
}

/// Runs `crm-sync ARGS` with `env` added to this process's environment.
async fn crm_sync_with(env: Vec<(String, String)>, args: &[&str], stdin: &str) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crm-sync"))
            .args(&args)
            .envs(env)
            .env("CRM_SYNC_CRM_ATTEMPTS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("crm-sync runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_added_from_stdin_checked_listed_tested_and_removed() {
    let hubspot = HubSpotEmulator::start(&[TOKEN]).await.unwrap();
    let dir = TempDir::new("cli");
    let base_url = format!("baseUrl={}", hubspot.base_url());

    let refused = crm_sync(
        &dir,
        &[
            "connections",
            "add",
            "hubspot",
            "--id",
            "acme",
            "--setting",
            &base_url,
        ],
        r#"{"accessToken": "wrong"}"#,
    )
    .await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("nothing was stored"),
        "{}",
        refused.stderr
    );

    let missing = crm_sync(
        &dir,
        &["connections", "add", "hubspot", "--id", "acme"],
        "{}",
    )
    .await;
    assert!(
        !missing.ok && missing.stderr.contains("accessToken"),
        "{}",
        missing.stderr
    );

    let added = crm_sync(
        &dir,
        &[
            "connections",
            "add",
            "hubspot",
            "--id",
            "acme",
            "--setting",
            &base_url,
            "--timezone",
            "America/Chicago",
        ],
        &format!("accessToken={TOKEN}\n"),
    )
    .await;
    assert!(added.ok, "{}", added.stderr);
    assert!(added.stdout.contains("stored connection acme"));

    let listed = crm_sync(&dir, &["connections", "list"], "").await;
    assert_eq!(listed.stdout.trim(), "acme\thubspot");
    let tested = crm_sync(&dir, &["connections", "test", "acme"], "").await;
    assert!(
        tested.ok && tested.stdout.contains("\"ok\": true"),
        "{}",
        tested.stdout
    );

    for run in [&refused, &missing, &added, &listed, &tested] {
        assert!(
            !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
            "the CLI never prints a secret"
        );
    }

    let removed = crm_sync(&dir, &["connections", "remove", "acme"], "").await;
    assert!(removed.ok);
    assert_eq!(
        crm_sync(&dir, &["connections", "list"], "")
            .await
            .stdout
            .trim(),
        ""
    );
    assert!(
        !crm_sync(&dir, &["connections", "test", "acme"], "")
            .await
            .ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_records_are_listed_and_replayed() {
    let hubspot = HubSpotEmulator::start(&[TOKEN]).await.unwrap();
    let dir = TempDir::new("cli");
    let app = local_app(&dir);
    store_connection(
        &app,
        "acme",
        &connection(
            CrmType::Hubspot,
            hubspot.base_url(),
            &[("accessToken", TOKEN)],
        ),
    )
    .await;
    hubspot.server.control.inject(Fault::status(503).times(10));
    let failure = app
        .sync_customer(&json!({"connectionId": "acme", "customer": {"email": "later@example.com"}}))
        .await
        .unwrap_err();
    hubspot.server.control.clear_faults();

    let listed = crm_sync(&dir, &["records", "list", "--status", "failed"], "").await;
    assert!(listed.ok, "{}", listed.stderr);
    assert!(
        listed.stdout.contains(failure.sync_id.as_deref().unwrap()),
        "{}",
        listed.stdout
    );
    assert!(listed.stdout.contains("crm_unavailable"));

    let replayed = crm_sync(&dir, &["records", "replay"], "").await;
    assert!(replayed.ok, "{}", replayed.stderr);
    assert!(
        replayed.stdout.contains("\"synced\": 1"),
        "{}",
        replayed.stdout
    );
    assert_eq!(hubspot.state.lock().unwrap().all("contacts").len(), 1);
    let after = crm_sync(&dir, &["records", "list", "--status", "failed"], "").await;
    assert_eq!(
        after.stdout.lines().count(),
        1,
        "only the header is left: {}",
        after.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_connections_in_secrets_manager_and_reads_records_from_dynamodb() {
    let hubspot = HubSpotEmulator::start(&[TOKEN]).await.unwrap();
    let endpoint = crm_sync_tests::harness::aws_endpoint();
    let sdk = crm_sync_tests::harness::aws_sdk_config().await;
    let table = format!("cli-records-{}", uuid::Uuid::new_v4().simple());
    crm_sync_tests::store_suite::create_records_table(&aws_sdk_dynamodb::Client::new(&sdk), &table)
        .await;
    let prefix = format!(
        "crm-sync-cli-{}/connections/",
        uuid::Uuid::new_v4().simple()
    );
    let env: Vec<(String, String)> = [
        ("CRM_SYNC_STORE", "aws"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("CRM_SYNC_TABLE", table.as_str()),
        ("CRM_SYNC_SECRET_PREFIX", prefix.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let base_url = format!("baseUrl={}", hubspot.base_url());
    let added = crm_sync_with(
        env.clone(),
        &[
            "connections",
            "add",
            "hubspot",
            "--id",
            "acme",
            "--setting",
            &base_url,
        ],
        &format!("accessToken={TOKEN}"),
    )
    .await;
    assert!(added.ok, "{}", added.stderr);
    let listed = crm_sync_with(env.clone(), &["connections", "list"], "").await;
    assert_eq!(listed.stdout.trim(), "acme\thubspot", "{}", listed.stderr);
    let tested = crm_sync_with(env.clone(), &["connections", "test", "acme"], "").await;
    assert!(tested.ok, "{}", tested.stderr);
    let records = crm_sync_with(env.clone(), &["records", "list", "--status", "failed"], "").await;
    assert!(records.ok, "{}", records.stderr);
    assert_eq!(
        records.stdout.lines().count(),
        1,
        "no failed records yet: {}",
        records.stdout
    );
    let removed = crm_sync_with(env.clone(), &["connections", "remove", "acme"], "").await;
    assert!(removed.ok, "{}", removed.stderr);
    assert_eq!(
        crm_sync_with(env, &["connections", "list"], "")
            .await
            .stdout
            .trim(),
        ""
    );
}

#[tokio::test]
async fn connect_link_prints_a_single_use_link_that_opens_the_connect_page() {
    let dir = TempDir::new("cli-connect-link");
    let missing = crm_sync(&dir, &["connect-link", "acme-hubspot"], "").await;
    assert!(!missing.ok);
    assert!(missing.stderr.contains("--page-url"), "{}", missing.stderr);
    let made = crm_sync(
        &dir,
        &[
            "connect-link",
            "acme-hubspot",
            "--crm",
            "hubspot",
            "--timezone",
            "America/New_York",
            "--page-url",
            "https://connect.example/connect",
        ],
        "",
    )
    .await;
    assert!(made.ok, "{}", made.stderr);
    let link = made.stdout.trim();
    assert!(
        link.starts_with("https://connect.example/connect?session="),
        "{link}"
    );
    assert!(!link.contains("acme-hubspot"));
    assert!(made.stderr.contains("works once"));
    let sessions: Vec<_> = std::fs::read_dir(dir.path().join("connect-sessions"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(sessions.len(), 1);
    let session: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sessions[0].path()).unwrap()).unwrap();
    assert_eq!(session["connectionId"], "acme-hubspot");
    assert_eq!(session["crmType"], "hubspot");
    assert_eq!(session["settings"]["defaultTimezone"], "America/New_York");
    let token = link.rsplit('=').next().unwrap();
    assert!(
        !std::fs::read_to_string(sessions[0].path())
            .unwrap()
            .contains(token)
    );
}
