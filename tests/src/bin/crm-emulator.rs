//! Runs the CRM emulators as a local server for `make dev`:
//! `crm-emulator [--hubspot ADDR] [--token TOKEN] [--state DIR]`.
//! With `--state`, what the emulated CRMs hold is loaded at start and saved at shutdown, so the
//! local run's records and the emulated CRM stay in step across restarts.

use std::net::SocketAddr;
use std::path::PathBuf;

use crm_sync_tests::emulator::hubspot::HubSpotEmulator;

pub const DEMO_TOKEN: &str = "demo-hubspot-token";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let hubspot_addr: SocketAddr = arg(&args, "--hubspot")
        .unwrap_or_else(|| "127.0.0.1:4010".into())
        .parse()?;
    let token = arg(&args, "--token").unwrap_or_else(|| DEMO_TOKEN.into());
    let state_file = arg(&args, "--state").map(|dir| PathBuf::from(dir).join("hubspot.json"));

    let hubspot = HubSpotEmulator::start_on(&[&token], hubspot_addr).await?;
    if let Some(file) = state_file.as_ref().filter(|f| f.exists()) {
        let snapshot = serde_json::from_slice(&std::fs::read(file)?)?;
        hubspot.state.lock().unwrap().restore(&snapshot)?;
        println!("HubSpot emulator state loaded from {}", file.display());
    }
    println!("HubSpot emulator listening on {}", hubspot.base_url());

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    if let Some(file) = state_file {
        std::fs::create_dir_all(file.parent().expect("a folder"))?;
        let snapshot = hubspot.state.lock().unwrap().snapshot();
        std::fs::write(&file, serde_json::to_vec_pretty(&snapshot)?)?;
        println!("HubSpot emulator state saved to {}", file.display());
    }
    Ok(())
}
