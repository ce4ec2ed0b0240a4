//! `crm-sync`: manage connections and sync records without hand-written JSON.
//!
//! Works against whatever the environment configures, like the functions do: AWS (Secrets
//! Manager + DynamoDB) with `CRM_SYNC_STORE=aws`, the local embedded stores otherwise.
//! Secrets are read from standard input or a file, never from the command line, where shell
//! history and process lists would keep them.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use crm_sync::App;
use crm_sync::config::{Config, StoreKind};
use crm_sync::connection::{Connection, ConnectionId, ConnectionSettings, SecretString};
use crm_sync::domain::CrmType;
use crm_sync::error::Error;
use crm_sync::store::SyncStatus;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "crm-sync",
    version,
    about = "Manage crm-sync connections and sync records"
)]
struct Cli {
    /// Which stores to use (default: CRM_SYNC_STORE, else local).
    #[arg(long, global = true, value_enum)]
    store: Option<StoreArg>,
    /// Folder of the local stores (default: CRM_SYNC_DATA_DIR, else .local).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum StoreArg {
    Aws,
    Local,
}

#[derive(Subcommand)]
enum Command {
    /// Add, list, test and remove CRM connections.
    #[command(subcommand)]
    Connections(ConnectionsCommand),
    /// List and replay sync records.
    #[command(subcommand)]
    Records(RecordsCommand),
}

#[derive(Subcommand)]
enum ConnectionsCommand {
    /// Store a connection. Credentials come from stdin (or --credentials-file) as a JSON object
    /// (`{"accessToken": "…"}`) or `name=value` lines.
    Add(AddArgs),
    /// List stored connections and their CRM.
    List,
    /// Check a stored connection against its CRM.
    Test { id: String },
    /// Remove a stored connection (at once, without a recovery window).
    Remove { id: String },
}

#[derive(Args)]
struct AddArgs {
    /// hubspot, salesforce, pipedrive, zoho or freshsales.
    crm_type: String,
    /// The connection id requests will name (`connectionId`).
    #[arg(long)]
    id: String,
    /// Read the credentials from this file instead of stdin.
    #[arg(long)]
    credentials_file: Option<PathBuf>,
    /// IANA zone for appointments that name none.
    #[arg(long)]
    timezone: Option<String>,
    /// Country for phone numbers without a country code (ISO 3166 alpha-2).
    #[arg(long)]
    country: Option<String>,
    /// Another setting, `name=value` (e.g. `companyDomain=acme`, `baseUrl=http://127.0.0.1:4010`).
    #[arg(long = "setting", value_name = "NAME=VALUE")]
    settings: Vec<String>,
    /// Store without checking the credentials against the CRM first.
    #[arg(long)]
    no_test: bool,
}

#[derive(Subcommand)]
enum RecordsCommand {
    /// Sync records by status, least recently updated first.
    List {
        #[arg(long, value_enum, default_value = "failed")]
        status: StatusArg,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Run what the scheduled sync would run now: queued, failed (transient), unknown and
    /// abandoned pending records, oldest first.
    Replay,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusArg {
    Pending,
    Synced,
    Failed,
}

impl From<StatusArg> for SyncStatus {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Pending => SyncStatus::Pending,
            StatusArg::Synced => SyncStatus::Synced,
            StatusArg::Failed => SyncStatus::Failed,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn app(cli: &Cli) -> App {
    let mut config = Config::from_env();
    if let Some(store) = cli.store {
        config.store = match store {
            StoreArg::Aws => StoreKind::Aws,
            StoreArg::Local => StoreKind::Local,
        };
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    App::from_config(config).await
}

async fn run(cli: Cli) -> Result<(), String> {
    let app = app(&cli).await;
    match cli.command {
        Command::Connections(ConnectionsCommand::Add(args)) => add_connection(&app, args).await,
        Command::Connections(ConnectionsCommand::List) => {
            for id in app.connections.list().await.map_err(describe)? {
                match app.connections.get(&id).await {
                    Ok(connection) => println!("{id}\t{}", connection.crm_type),
                    Err(e) => println!("{id}\t(unreadable: {})", describe(e)),
                }
            }
            Ok(())
        }
        Command::Connections(ConnectionsCommand::Test { id }) => {
            let result = app
                .test_connection(&json!({ "connectionId": id }))
                .await
                .map_err(describe)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_default()
            );
            if result.ok {
                Ok(())
            } else {
                Err("the CRM refused the connection".into())
            }
        }
        Command::Connections(ConnectionsCommand::Remove { id }) => {
            let id = ConnectionId::parse(&id).map_err(describe)?;
            app.connections.delete(&id).await.map_err(describe)?;
            println!("removed {id}");
            Ok(())
        }
        Command::Records(RecordsCommand::List { status, limit }) => {
            let records = app
                .records
                .list_by_status(status.into(), limit)
                .await
                .map_err(describe)?;
            println!(
                "syncId\tconnection\tentity\tsourceKey\tcrmId\tattempts\tupdatedAt\tlastError"
            );
            for r in records {
                let error = r
                    .last_error
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .unwrap_or_default();
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    r.sync_id,
                    r.connection_id,
                    r.entity.as_str(),
                    r.source_key,
                    r.crm_id.unwrap_or_default(),
                    r.attempts,
                    r.updated_at.to_rfc3339(),
                    error
                );
            }
            Ok(())
        }
        Command::Records(RecordsCommand::Replay) => {
            let summary = app.replay_failed().await.map_err(describe)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).unwrap_or_default()
            );
            if summary.failed == 0 {
                Ok(())
            } else {
                Err(format!("{} record(s) failed again", summary.failed))
            }
        }
    }
}

async fn add_connection(app: &App, args: AddArgs) -> Result<(), String> {
    let crm_type: CrmType = args.crm_type.parse()?;
    let id = ConnectionId::parse(&args.id).map_err(describe)?;
    let raw = match &args.credentials_file {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?
        }
        None => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| format!("reading stdin: {e}"))?;
            input
        }
    };
    let credentials = parse_credentials(&raw)?;
    let platform = crm_sync::sync::platforms()["platforms"]
        .as_array()
        .and_then(|list| {
            list.iter()
                .find(|p| p["crmType"] == crm_type.as_str())
                .cloned()
        })
        .unwrap_or(Value::Null);
    let missing: Vec<&str> = platform["credentialFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|field| !credentials.contains_key(*field))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{crm_type} needs the credential(s) {}",
            missing.join(", ")
        ));
    }
    let mut settings = json!({});
    for setting in &args.settings {
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("--setting {setting}: expected NAME=VALUE"))?;
        settings[name.trim()] = json!(value.trim());
    }
    if let Some(zone) = args.timezone {
        settings["defaultTimezone"] = json!(zone);
    }
    if let Some(country) = args.country {
        settings["defaultCountry"] = json!(country);
    }
    let settings: ConnectionSettings =
        serde_json::from_value(settings).map_err(|e| format!("invalid settings: {e}"))?;
    settings.validation_defaults().map_err(describe)?;
    let connection = Connection {
        id: Some(id.clone()),
        crm_type,
        credentials,
        settings,
    };
    if !args.no_test {
        let body = json!({
            "crmType": crm_type,
            "credentials": connection.credentials.iter().map(|(k, v)| (k.clone(), json!(v.expose()))).collect::<serde_json::Map<_, _>>(),
            "settings": connection.settings,
        });
        let result = app.test_connection(&body).await.map_err(describe)?;
        if !result.ok {
            let reason = result.error.map(|e| e.message).unwrap_or_default();
            return Err(format!(
                "the CRM refused these credentials ({reason}); nothing was stored (use --no-test to store anyway)"
            ));
        }
        println!("checked: {}", result.account.unwrap_or_default());
    }
    app.connections
        .put(&id, &connection)
        .await
        .map_err(describe)?;
    println!("stored connection {id} ({crm_type})");
    Ok(())
}

/// `{"name": "value"}` or `name=value` lines (blank lines and `#` comments ignored).
fn parse_credentials(
    raw: &str,
) -> Result<std::collections::BTreeMap<String, SecretString>, String> {
    let trimmed = raw.trim();
    if trimmed.starts_with('{') {
        let object: serde_json::Map<String, Value> = serde_json::from_str(trimmed)
            .map_err(|e| format!("credentials are not a JSON object: line {}", e.line()))?;
        return object
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, SecretString::new(s))),
                _ => Err(format!("credential {k} must be a string")),
            })
            .collect();
    }
    trimmed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (name, value) = line
                .split_once('=')
                .ok_or("credentials: expected name=value lines or a JSON object")?;
            Ok((name.trim().to_string(), SecretString::new(value.trim())))
        })
        .collect()
}

fn describe(error: Error) -> String {
    match error.field() {
        Some(field) => format!("{error} (field {field})"),
        None => error.to_string(),
    }
}
