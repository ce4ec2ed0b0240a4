//! Runs the CRM emulators as a local server for `make dev`:
//! `crm-emulator [--hubspot ADDR] [--token TOKEN] [--salesforce ADDR] [--pipedrive ADDR]
//! [--zoho ADDR] [--freshsales ADDR] [--freshsales-key KEY] [--dynamics ADDR] [--sugarcrm ADDR]
//! [--state DIR] [--unlimited]`.
//! With `--state`, what the emulated CRMs hold is loaded at start and saved at shutdown, so the
//! local run's records and the emulated CRMs stay in step across restarts. The CRMs' documented
//! rate limits are enforced unless `--unlimited` lifts the short ones (HubSpot's, Pipedrive's,
//! Freshsales'), for benchmarks of crm-sync itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crm_sync_tests::emulator::dynamics::DynamicsEmulator;
use crm_sync_tests::emulator::freshsales::FreshsalesEmulator;
use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::emulator::oauth::OAuthTokens;
use crm_sync_tests::emulator::pipedrive::PipedriveEmulator;
use crm_sync_tests::emulator::salesforce::{SalesforceEmulator, client};
use crm_sync_tests::emulator::sugarcrm::{SugarEmulator, SugarState};
use crm_sync_tests::emulator::zoho::ZohoEmulator;
use serde_json::Value;

pub const DEMO_TOKEN: &str = "demo-hubspot-token";
pub const PIPEDRIVE_DEMO_TOKEN: &str = "demo-pipedrive-token";
pub const DEMO_FRESHSALES_KEY: &str = "demo-freshsales-key";
/// The connected app and refresh token the demo-salesforce connection holds.
pub const DEMO_SALESFORCE_CLIENT_ID: &str = "demo-salesforce-client";
pub const DEMO_SALESFORCE_CLIENT_SECRET: &str = "demo-salesforce-secret";
pub const DEMO_SALESFORCE_REFRESH_TOKEN: &str = "demo-salesforce-refresh-token";
/// The Zoho client and refresh token `make dev` stores in `demo-zoho`.
pub const DEMO_ZOHO_CLIENT_ID: &str = "1000.DEMOZOHOCLIENT";
pub const DEMO_ZOHO_CLIENT_SECRET: &str = "demo-zoho-client-secret";
pub const DEMO_ZOHO_REFRESH_TOKEN: &str = "1000.demo-zoho-refresh-token";
/// The app registration `make dev` stores in `demo-dynamics`.
pub const DEMO_DYNAMICS_CLIENT_ID: &str = "demo-dynamics-client";
pub const DEMO_DYNAMICS_CLIENT_SECRET: &str = "demo-dynamics-secret";
/// The API user `make dev` stores in `demo-sugarcrm`, on Sugar's built-in client.
pub const DEMO_SUGAR_USERNAME: &str = "demo-sugar-user";
pub const DEMO_SUGAR_PASSWORD: &str = "demo-sugar-password";

type Failure = Box<dyn std::error::Error>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Restores an emulator from what it saved in `file`, when there is such a file.
fn load(
    file: Option<&Path>,
    crm: &str,
    restore: impl FnOnce(&Value) -> Result<(), serde_json::Error>,
) -> Result<(), Failure> {
    if let Some(file) = file.filter(|f| f.exists()) {
        restore(&serde_json::from_slice(&std::fs::read(file)?)?)?;
        println!("{crm} emulator state loaded from {}", file.display());
    }
    Ok(())
}

fn save(file: Option<&Path>, crm: &str, snapshot: Value) -> Result<(), Failure> {
    if let Some(file) = file {
        std::fs::create_dir_all(file.parent().expect("a folder"))?;
        std::fs::write(file, serde_json::to_vec_pretty(&snapshot)?)?;
        println!("{crm} emulator state saved to {}", file.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().collect();
    let address = |flag: &str, default: &str| -> Result<SocketAddr, Failure> {
        Ok(arg(&args, flag).unwrap_or_else(|| default.into()).parse()?)
    };
    let token = arg(&args, "--token").unwrap_or_else(|| DEMO_TOKEN.into());
    let freshsales_key =
        arg(&args, "--freshsales-key").unwrap_or_else(|| DEMO_FRESHSALES_KEY.into());
    let state_dir = arg(&args, "--state").map(PathBuf::from);
    let state_file = |crm: &str| {
        state_dir
            .as_ref()
            .map(|dir| dir.join(format!("{crm}.json")))
    };
    let (hubspot_file, pipedrive_file, freshsales_file, salesforce_file, zoho_file) = (
        state_file("hubspot"),
        state_file("pipedrive"),
        state_file("freshsales"),
        state_file("salesforce"),
        state_file("zoho"),
    );
    let (dynamics_file, sugarcrm_file) = (state_file("dynamics"), state_file("sugarcrm"));

    let hubspot =
        HubSpotEmulator::start_on(&[&token], address("--hubspot", "127.0.0.1:4010")?).await?;
    load(hubspot_file.as_deref(), "HubSpot", |s| {
        hubspot.state.lock().unwrap().restore(s)
    })?;
    println!("HubSpot emulator listening on {}", hubspot.base_url());

    let pipedrive = PipedriveEmulator::start_on(
        &[PIPEDRIVE_DEMO_TOKEN],
        address("--pipedrive", "127.0.0.1:4012")?,
    )
    .await?;
    load(pipedrive_file.as_deref(), "Pipedrive", |s| {
        pipedrive.state.lock().unwrap().restore(s)
    })?;
    println!("Pipedrive emulator listening on {}", pipedrive.base_url());

    let freshsales = FreshsalesEmulator::start_on(
        &[&freshsales_key],
        address("--freshsales", "127.0.0.1:4014")?,
    )
    .await?;
    load(freshsales_file.as_deref(), "Freshsales", |s| {
        freshsales.state.lock().unwrap().restore(s)
    })?;
    println!("Freshsales emulator listening on {}", freshsales.base_url());

    let salesforce = SalesforceEmulator::start_on(
        client(
            DEMO_SALESFORCE_CLIENT_ID,
            DEMO_SALESFORCE_CLIENT_SECRET,
            DEMO_SALESFORCE_REFRESH_TOKEN,
        ),
        address("--salesforce", "127.0.0.1:4011")?,
    )
    .await?;
    load(salesforce_file.as_deref(), "Salesforce", |s| {
        salesforce.state.lock().unwrap().restore(s)
    })?;
    println!(
        "Salesforce emulator listening on {} (login and instance URL)",
        salesforce.base_url()
    );

    // Access tokens live in memory only: after a restart the stored one is refused with
    // INVALID_TOKEN and the adapter refreshes, as it would against Zoho.
    let zoho_tokens = OAuthTokens::new(
        DEMO_ZOHO_CLIENT_ID,
        DEMO_ZOHO_CLIENT_SECRET,
        DEMO_ZOHO_REFRESH_TOKEN,
        chrono::Duration::hours(1),
    );
    let zoho = ZohoEmulator::start_on(zoho_tokens, address("--zoho", "127.0.0.1:4013")?).await?;
    load(zoho_file.as_deref(), "Zoho CRM", |s| {
        zoho.state.lock().unwrap().restore(s)
    })?;
    println!(
        "Zoho CRM emulator (accounts server and API) listening on {}",
        zoho.base_url()
    );

    // Tokens live in memory only, as for Zoho: after a restart the stored one is refused and
    // the adapter asks again.
    let dynamics_tokens = OAuthTokens::new(
        DEMO_DYNAMICS_CLIENT_ID,
        DEMO_DYNAMICS_CLIENT_SECRET,
        "",
        chrono::Duration::hours(1),
    );
    let dynamics =
        DynamicsEmulator::start_on(dynamics_tokens, address("--dynamics", "127.0.0.1:4015")?)
            .await?;
    load(dynamics_file.as_deref(), "Dynamics 365", |s| {
        dynamics.state.lock().unwrap().restore(s)
    })?;
    println!(
        "Dynamics 365 emulator (token endpoint and environment) listening on {}",
        dynamics.base_url()
    );

    let sugar_tokens = OAuthTokens::new("sugar", "", "", chrono::Duration::hours(1));
    let sugar_state = SugarState::new(
        sugar_tokens,
        DEMO_SUGAR_USERNAME,
        DEMO_SUGAR_PASSWORD,
        crm_sync::crm::sugarcrm::DEFAULT_PLATFORM,
    );
    let sugarcrm =
        SugarEmulator::start_on(sugar_state, address("--sugarcrm", "127.0.0.1:4016")?).await?;
    load(sugarcrm_file.as_deref(), "SugarCRM", |s| {
        sugarcrm.state.lock().unwrap().restore(s)
    })?;
    println!("SugarCRM emulator listening on {}", sugarcrm.base_url());

    if args.iter().any(|a| a == "--unlimited") {
        hubspot.state.lock().unwrap().lift_rate_limits();
        pipedrive.state.lock().unwrap().lift_rate_limits();
        let mut freshsales = freshsales.state.lock().unwrap();
        freshsales.budget =
            crm_sync_tests::emulator::RequestBudget::new(u32::MAX, chrono::Duration::hours(1));
        freshsales.per_minute.lift();
        println!("rate limits lifted");
    }

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    let snapshot = hubspot.state.lock().unwrap().snapshot();
    save(hubspot_file.as_deref(), "HubSpot", snapshot)?;
    let snapshot = pipedrive.state.lock().unwrap().snapshot();
    save(pipedrive_file.as_deref(), "Pipedrive", snapshot)?;
    let snapshot = freshsales.state.lock().unwrap().snapshot();
    save(freshsales_file.as_deref(), "Freshsales", snapshot)?;
    let snapshot = salesforce.state.lock().unwrap().snapshot();
    save(salesforce_file.as_deref(), "Salesforce", snapshot)?;
    let snapshot = zoho.state.lock().unwrap().snapshot();
    save(zoho_file.as_deref(), "Zoho CRM", snapshot)?;
    let snapshot = dynamics.state.lock().unwrap().snapshot();
    save(dynamics_file.as_deref(), "Dynamics 365", snapshot)?;
    let snapshot = sugarcrm.state.lock().unwrap().snapshot();
    save(sugarcrm_file.as_deref(), "SugarCRM", snapshot)?;
    Ok(())
}
