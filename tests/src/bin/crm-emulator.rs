//! Runs the CRM emulators as a local server for `make dev`:
//! `crm-emulator [--hubspot ADDR] [--token TOKEN] [--salesforce ADDR] [--state DIR]`.
//! With `--state`, what the emulated CRMs hold is loaded at start and saved at shutdown, so the
//! local run's records and the emulated CRM stay in step across restarts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::emulator::salesforce::{SalesforceEmulator, client};
use serde_json::Value;

pub const DEMO_TOKEN: &str = "demo-hubspot-token";
/// The connected app and refresh token the demo-salesforce connection holds.
pub const DEMO_SALESFORCE_CLIENT_ID: &str = "demo-salesforce-client";
pub const DEMO_SALESFORCE_CLIENT_SECRET: &str = "demo-salesforce-secret";
pub const DEMO_SALESFORCE_REFRESH_TOKEN: &str = "demo-salesforce-refresh-token";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn load(file: Option<&PathBuf>) -> Result<Option<Value>, Box<dyn std::error::Error>> {
    match file.filter(|f| f.exists()) {
        Some(file) => {
            println!("emulator state loaded from {}", file.display());
            Ok(Some(serde_json::from_slice(&std::fs::read(file)?)?))
        }
        None => Ok(None),
    }
}

fn save(file: &Path, snapshot: &Value) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(file.parent().expect("a folder"))?;
    std::fs::write(file, serde_json::to_vec_pretty(snapshot)?)?;
    println!("emulator state saved to {}", file.display());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let hubspot_addr: SocketAddr = arg(&args, "--hubspot")
        .unwrap_or_else(|| "127.0.0.1:4010".into())
        .parse()?;
    let salesforce_addr: SocketAddr = arg(&args, "--salesforce")
        .unwrap_or_else(|| "127.0.0.1:4011".into())
        .parse()?;
    let token = arg(&args, "--token").unwrap_or_else(|| DEMO_TOKEN.into());
    let state_dir = arg(&args, "--state").map(PathBuf::from);
    let hubspot_file = state_dir.as_ref().map(|dir| dir.join("hubspot.json"));
    let salesforce_file = state_dir.as_ref().map(|dir| dir.join("salesforce.json"));

    let hubspot = HubSpotEmulator::start_on(&[&token], hubspot_addr).await?;
    if let Some(snapshot) = load(hubspot_file.as_ref())? {
        hubspot.state.lock().unwrap().restore(&snapshot)?;
    }
    println!("HubSpot emulator listening on {}", hubspot.base_url());

    let salesforce = SalesforceEmulator::start_on(
        client(
            DEMO_SALESFORCE_CLIENT_ID,
            DEMO_SALESFORCE_CLIENT_SECRET,
            DEMO_SALESFORCE_REFRESH_TOKEN,
        ),
        salesforce_addr,
    )
    .await?;
    if let Some(snapshot) = load(salesforce_file.as_ref())? {
        salesforce.state.lock().unwrap().restore(&snapshot)?;
    }
    println!(
        "Salesforce emulator listening on {} (login and instance URL)",
        salesforce.base_url()
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    if let Some(file) = hubspot_file {
        save(&file, &hubspot.state.lock().unwrap().snapshot())?;
    }
    if let Some(file) = salesforce_file {
        save(&file, &salesforce.state.lock().unwrap().snapshot())?;
    }
    Ok(())
}
