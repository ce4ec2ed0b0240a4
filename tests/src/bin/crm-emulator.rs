//! Runs the CRM emulators as a local server for `make dev`:
//! `crm-emulator [--hubspot ADDR] [--token TOKEN] [--freshsales ADDR] [--freshsales-key KEY]
//! [--state DIR]`.
//! With `--state`, what the emulated CRMs hold is loaded at start and saved at shutdown, so the
//! local run's records and the emulated CRMs stay in step across restarts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crm_sync_tests::emulator::freshsales::FreshsalesEmulator;
use crm_sync_tests::emulator::hubspot::HubSpotEmulator;
use serde_json::Value;

pub const DEMO_TOKEN: &str = "demo-hubspot-token";
pub const DEMO_FRESHSALES_KEY: &str = "demo-freshsales-key";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn load(file: Option<&PathBuf>) -> Result<Option<Value>, Box<dyn std::error::Error>> {
    match file.filter(|f| f.exists()) {
        Some(file) => Ok(Some(serde_json::from_slice(&std::fs::read(file)?)?)),
        None => Ok(None),
    }
}

fn save(file: &Path, snapshot: &Value) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(file.parent().expect("a folder"))?;
    std::fs::write(file, serde_json::to_vec_pretty(snapshot)?)?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let hubspot_addr: SocketAddr = arg(&args, "--hubspot")
        .unwrap_or_else(|| "127.0.0.1:4010".into())
        .parse()?;
    let freshsales_addr: SocketAddr = arg(&args, "--freshsales")
        .unwrap_or_else(|| "127.0.0.1:4014".into())
        .parse()?;
    let token = arg(&args, "--token").unwrap_or_else(|| DEMO_TOKEN.into());
    let freshsales_key =
        arg(&args, "--freshsales-key").unwrap_or_else(|| DEMO_FRESHSALES_KEY.into());
    let state_dir = arg(&args, "--state").map(PathBuf::from);
    let hubspot_file = state_dir.as_ref().map(|dir| dir.join("hubspot.json"));
    let freshsales_file = state_dir.as_ref().map(|dir| dir.join("freshsales.json"));

    let hubspot = HubSpotEmulator::start_on(&[&token], hubspot_addr).await?;
    if let Some(snapshot) = load(hubspot_file.as_ref())? {
        hubspot.state.lock().unwrap().restore(&snapshot)?;
        println!("HubSpot emulator state loaded");
    }
    println!("HubSpot emulator listening on {}", hubspot.base_url());

    let freshsales = FreshsalesEmulator::start_on(&[&freshsales_key], freshsales_addr).await?;
    if let Some(snapshot) = load(freshsales_file.as_ref())? {
        freshsales.state.lock().unwrap().restore(&snapshot)?;
        println!("Freshsales emulator state loaded");
    }
    println!("Freshsales emulator listening on {}", freshsales.base_url());

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    if let Some(file) = hubspot_file {
        save(&file, &hubspot.state.lock().unwrap().snapshot())?;
        println!("HubSpot emulator state saved to {}", file.display());
    }
    if let Some(file) = freshsales_file {
        save(&file, &freshsales.state.lock().unwrap().snapshot())?;
        println!("Freshsales emulator state saved to {}", file.display());
    }
    Ok(())
}
