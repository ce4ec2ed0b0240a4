//! Runs the CRM emulators as a local server for `make dev`:
//! `crm-emulator [--hubspot ADDR] [--token TOKEN] [--zoho ADDR] [--state DIR]`.
//! With `--state`, what the emulated CRMs hold is loaded at start and saved at shutdown, so the
//! local run's records and the emulated CRM stay in step across restarts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use crm_sync_tests::emulator::oauth::OAuthTokens;
use crm_sync_tests::emulator::zoho::ZohoEmulator;
use serde_json::Value;

pub const DEMO_TOKEN: &str = "demo-hubspot-token";
/// The Zoho client and refresh token `make dev` stores in `demo-zoho`.
pub const DEMO_ZOHO_CLIENT_ID: &str = "1000.DEMOZOHOCLIENT";
pub const DEMO_ZOHO_CLIENT_SECRET: &str = "demo-zoho-client-secret";
pub const DEMO_ZOHO_REFRESH_TOKEN: &str = "1000.demo-zoho-refresh-token";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn load(file: Option<&Path>) -> Result<Option<Value>, Box<dyn std::error::Error>> {
    match file.filter(|f| f.exists()) {
        Some(file) => Ok(Some(serde_json::from_slice(&std::fs::read(file)?)?)),
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
    let zoho_addr: SocketAddr = arg(&args, "--zoho")
        .unwrap_or_else(|| "127.0.0.1:4013".into())
        .parse()?;
    let token = arg(&args, "--token").unwrap_or_else(|| DEMO_TOKEN.into());
    let state_dir = arg(&args, "--state").map(PathBuf::from);
    let hubspot_file = state_dir.as_ref().map(|dir| dir.join("hubspot.json"));
    let zoho_file = state_dir.as_ref().map(|dir| dir.join("zoho.json"));

    let hubspot = HubSpotEmulator::start_on(&[&token], hubspot_addr).await?;
    if let Some(snapshot) = load(hubspot_file.as_deref())? {
        hubspot.state.lock().unwrap().restore(&snapshot)?;
        println!("HubSpot emulator state loaded");
    }
    println!("HubSpot emulator listening on {}", hubspot.base_url());

    // Access tokens live in memory only: after a restart the stored one is refused with
    // INVALID_TOKEN and the adapter refreshes, as it would against Zoho.
    let zoho_tokens = OAuthTokens::new(
        DEMO_ZOHO_CLIENT_ID,
        DEMO_ZOHO_CLIENT_SECRET,
        DEMO_ZOHO_REFRESH_TOKEN,
        chrono::Duration::hours(1),
    );
    let zoho = ZohoEmulator::start_on(zoho_tokens, zoho_addr).await?;
    if let Some(snapshot) = load(zoho_file.as_deref())? {
        zoho.state.lock().unwrap().restore(&snapshot)?;
        println!("Zoho CRM emulator state loaded");
    }
    println!(
        "Zoho CRM emulator (accounts server and API) listening on {}",
        zoho.base_url()
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    if let Some(file) = hubspot_file {
        save(&file, &hubspot.state.lock().unwrap().snapshot())?;
    }
    if let Some(file) = zoho_file {
        save(&file, &zoho.state.lock().unwrap().snapshot())?;
    }
    Ok(())
}
