//! Runs the CRM emulators as a local server for `make dev`:
//! `crm-emulator [--hubspot ADDR] [--token TOKEN]` (defaults 127.0.0.1:4010 and the demo token).

use std::net::SocketAddr;

use crm_sync_tests::emulator::hubspot::HubSpotEmulator;

pub const DEMO_TOKEN: &str = "demo-hubspot-token";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let hubspot_addr: SocketAddr = arg(&args, "--hubspot").unwrap_or_else(|| "127.0.0.1:4010".into()).parse()?;
    let token = arg(&args, "--token").unwrap_or_else(|| DEMO_TOKEN.into());
    let hubspot = HubSpotEmulator::start_on(&[&token], hubspot_addr).await?;
    println!("HubSpot emulator listening on {}", hubspot.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
