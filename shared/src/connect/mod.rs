//! Connect links: a person connects a CRM from a browser. A link (made by `POST connect-sessions`
//! or `crm-sync connect-link`) opens the connect page, which asks for the CRM's credentials or
//! sends the person through the CRM's OAuth consent page; the callback tests the connection and
//! stores it, once.
//!
//! `session` and `store` keep the links; `fields` says what the page asks; `authorization` is the
//! OAuth authorization-code flow; `flow` the steps; `page` the HTML; `http` the three functions'
//! edge, where every `ConnectError` becomes a page.

pub mod authorization;
pub mod config;
pub mod error;
pub mod fields;
pub mod flow;
pub mod http;
pub mod page;
pub mod session;
pub mod store;

use std::sync::Arc;

use crate::App;
use crate::config::{Config, StoreKind};
pub use config::ConnectConfig;
pub use error::ConnectError;
use store::{ConnectSessionStore, OAuthAppStore};

/// What the connect functions need, built once per cold start.
pub struct ConnectService {
    /// The connection store and CRM adapters, as every function has them.
    pub app: App,
    pub config: ConnectConfig,
    pub sessions: Arc<dyn ConnectSessionStore>,
    pub oauth_apps: Arc<dyn OAuthAppStore>,
}

impl ConnectService {
    pub async fn from_env() -> Self {
        Self::from_config(Config::from_env(), ConnectConfig::from_env()).await
    }

    /// The stores `config` names: sessions beside the sync records and OAuth apps beside the
    /// connections. Nothing here does I/O; AWS clients are built by their first call.
    pub async fn from_config(config: Config, connect: ConnectConfig) -> Self {
        match config.store {
            StoreKind::Aws => {
                use crate::store::aws::{
                    DynamoDbSyncRecordStore, LazySdkConfig, SecretsManagerConnectionStore,
                };
                let sdk = LazySdkConfig::default();
                let secrets =
                    SecretsManagerConnectionStore::lazy(sdk.clone(), &config.secret_prefix);
                let records = DynamoDbSyncRecordStore::lazy(sdk.clone(), &config.table_name);
                let sessions = Arc::new(store::DynamoDbConnectSessionStore::lazy(
                    sdk.clone(),
                    &config.table_name,
                ));
                let apps = Arc::new(store::SecretsManagerOAuthAppStore::lazy(
                    sdk,
                    &connect.oauth_app_prefix,
                ));
                Self::new(
                    App::on_aws(config, secrets, records),
                    connect,
                    sessions,
                    apps,
                )
            }
            StoreKind::Local => {
                let (sessions, apps) = store::open_local(&config.data_dir);
                Self::new(App::from_config(config).await, connect, sessions, apps)
            }
        }
    }

    pub fn new(
        app: App,
        config: ConnectConfig,
        sessions: Arc<dyn ConnectSessionStore>,
        oauth_apps: Arc<dyn OAuthAppStore>,
    ) -> Self {
        ConnectService {
            app,
            config,
            sessions,
            oauth_apps,
        }
    }
}
