//! Where connect sessions and the OAuth apps' clients live: beside the sync records (DynamoDB
//! items with a TTL, or local files) and beside the connections (Secrets Manager, or local files).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Deserialize;

use super::session::{ConnectSession, SessionId};
use crate::connection::SecretString;
use crate::domain::CrmType;
use crate::error::{Error, Result};
use crate::store::WriteOutcome;
use crate::store::aws::LazySdkConfig;
use crate::store::local::{io_error, with_dir_lock, write_atomically};

/// Connect sessions, written conditionally so that a link is used once.
#[async_trait]
pub trait ConnectSessionStore: Send + Sync {
    async fn get(&self, id: &SessionId) -> Result<Option<ConnectSession>>;
    /// Writes `session` if the stored version is `expected_version` (`None`: none stored).
    async fn put(
        &self,
        session: &ConnectSession,
        expected_version: Option<u64>,
    ) -> Result<WriteOutcome>;
}

/// An OAuth app registered with a CRM (a Salesforce connected app, a Zoho server-based client):
/// one per CRM for the whole service, never typed into the page.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: SecretString,
}

#[async_trait]
pub trait OAuthAppStore: Send + Sync {
    /// The app's client for `crm`, or `None` where none is set up.
    async fn client(&self, crm: CrmType) -> Result<Option<OAuthClient>>;
}

fn unreadable(what: &str, e: impl std::fmt::Display) -> Error {
    // serde's message names the position, never a string's value.
    Error::Store(format!("unreadable {what}: {e}"))
}

/// Sessions as `<dir>/<session id>.json`.
pub struct LocalConnectSessionStore {
    dir: PathBuf,
}

impl LocalConnectSessionStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalConnectSessionStore { dir: dir.into() }
    }
}

fn read_session(path: &Path) -> Result<Option<ConnectSession>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| unreadable("connect session", e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("reading a connect session", e)),
    }
}

#[async_trait]
impl ConnectSessionStore for LocalConnectSessionStore {
    async fn get(&self, id: &SessionId) -> Result<Option<ConnectSession>> {
        let path = self.dir.join(format!("{}.json", id.as_str()));
        tokio::task::spawn_blocking(move || read_session(&path))
            .await
            .map_err(|e| Error::Store(format!("local store task failed: {e}")))?
    }

    async fn put(
        &self,
        session: &ConnectSession,
        expected_version: Option<u64>,
    ) -> Result<WriteOutcome> {
        let file = format!("{}.json", session.id.as_str());
        let json = serde_json::to_vec_pretty(session).map_err(|e| Error::Store(e.to_string()))?;
        with_dir_lock(self.dir.clone(), move |dir| {
            let path = dir.join(file);
            if read_session(&path)?.map(|s| s.version) != expected_version {
                return Ok(WriteOutcome::Conflict);
            }
            write_atomically(&path, &json)?;
            Ok(WriteOutcome::Written)
        })
        .await
    }
}

/// Each OAuth app as `<dir>/<crmType>.json`, `{"clientId", "clientSecret"}`.
pub struct LocalOAuthAppStore {
    dir: PathBuf,
}

impl LocalOAuthAppStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalOAuthAppStore { dir: dir.into() }
    }
}

#[async_trait]
impl OAuthAppStore for LocalOAuthAppStore {
    async fn client(&self, crm: CrmType) -> Result<Option<OAuthClient>> {
        let path = self.dir.join(format!("{}.json", crm.as_str()));
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| unreadable("OAuth app", e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("reading an OAuth app", e)),
        }
    }
}

/// The storage key of a session in the sync-record table; never collides with records, leases
/// or idempotency keys, and is the prefix the connect functions' IAM policies allow.
pub fn session_key(id: &SessionId) -> String {
    format!("connect#{}", id.as_str())
}

/// How long a finished or expired session's item stays, so that its link says "used" or
/// "expired" rather than "unknown"; DynamoDB's TTL removes it after that.
const KEPT_AFTER_EXPIRY: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// Sessions as items of the sync-record table: `pk` = `connect#<id>`, the session as JSON, and
/// the table's TTL attribute.
pub struct DynamoDbConnectSessionStore {
    sdk: LazySdkConfig,
    client: tokio::sync::OnceCell<aws_sdk_dynamodb::Client>,
    table: String,
}

impl DynamoDbConnectSessionStore {
    /// A store whose client is built from `sdk` by its first call.
    pub fn lazy(sdk: LazySdkConfig, table: impl Into<String>) -> Self {
        DynamoDbConnectSessionStore {
            sdk,
            client: tokio::sync::OnceCell::new(),
            table: table.into(),
        }
    }

    /// A store on a ready client (tests).
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoDbConnectSessionStore {
            sdk: LazySdkConfig::default(),
            client: tokio::sync::OnceCell::new_with(Some(client)),
            table: table.into(),
        }
    }

    async fn client(&self) -> &aws_sdk_dynamodb::Client {
        self.client
            .get_or_init(|| async { aws_sdk_dynamodb::Client::new(self.sdk.get().await) })
            .await
    }
}

fn dynamodb_error(e: impl std::fmt::Debug + std::fmt::Display) -> Error {
    Error::Store(format!("DynamoDB: {e}"))
}

#[async_trait]
impl ConnectSessionStore for DynamoDbConnectSessionStore {
    async fn get(&self, id: &SessionId) -> Result<Option<ConnectSession>> {
        let out = self
            .client()
            .await
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(session_key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| dynamodb_error(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        out.item()
            .and_then(|item| item.get("session"))
            .and_then(|v| v.as_s().ok())
            .map(|json| serde_json::from_str(json).map_err(|e| unreadable("connect session", e)))
            .transpose()
    }

    async fn put(
        &self,
        session: &ConnectSession,
        expected_version: Option<u64>,
    ) -> Result<WriteOutcome> {
        let json = serde_json::to_string(session).map_err(|e| Error::Store(e.to_string()))?;
        let item = HashMap::from([
            (
                "pk".to_string(),
                AttributeValue::S(session_key(&session.id)),
            ),
            ("session".into(), AttributeValue::S(json)),
            (
                "version".into(),
                AttributeValue::N(session.version.to_string()),
            ),
            (
                "expiresAt".into(),
                AttributeValue::N(
                    (session.expires_at + KEPT_AFTER_EXPIRY)
                        .timestamp()
                        .to_string(),
                ),
            ),
        ]);
        let put = self
            .client()
            .await
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        let put = match expected_version {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(version) => put
                .condition_expression("#version = :expected")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":expected", AttributeValue::N(version.to_string())),
        };
        match put.send().await {
            Ok(_) => Ok(WriteOutcome::Written),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(WriteOutcome::Conflict)
            }
            Err(e) => Err(dynamodb_error(
                aws_sdk_dynamodb::error::DisplayErrorContext(e),
            )),
        }
    }
}

/// Each OAuth app as the secret `<prefix><crmType>`, `{"clientId", "clientSecret"}`.
pub struct SecretsManagerOAuthAppStore {
    sdk: LazySdkConfig,
    client: tokio::sync::OnceCell<aws_sdk_secretsmanager::Client>,
    prefix: String,
}

impl SecretsManagerOAuthAppStore {
    pub fn lazy(sdk: LazySdkConfig, prefix: impl Into<String>) -> Self {
        SecretsManagerOAuthAppStore {
            sdk,
            client: tokio::sync::OnceCell::new(),
            prefix: prefix.into(),
        }
    }

    pub fn new(client: aws_sdk_secretsmanager::Client, prefix: impl Into<String>) -> Self {
        SecretsManagerOAuthAppStore {
            sdk: LazySdkConfig::default(),
            client: tokio::sync::OnceCell::new_with(Some(client)),
            prefix: prefix.into(),
        }
    }
}

#[async_trait]
impl OAuthAppStore for SecretsManagerOAuthAppStore {
    async fn client(&self, crm: CrmType) -> Result<Option<OAuthClient>> {
        let client = self
            .client
            .get_or_init(|| async { aws_sdk_secretsmanager::Client::new(self.sdk.get().await) })
            .await;
        let out = client
            .get_secret_value()
            .secret_id(format!("{}{}", self.prefix, crm.as_str()))
            .send()
            .await;
        match out {
            Ok(out) => out
                .secret_string()
                .map(|json| serde_json::from_str(json).map_err(|e| unreadable("OAuth app", e)))
                .transpose(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::Store(format!(
                "Secrets Manager: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(e)
            ))),
        }
    }
}

/// Both local stores under one data folder (`connect-sessions/`, `oauth-apps/`).
pub fn open_local(data_dir: &Path) -> (Arc<dyn ConnectSessionStore>, Arc<dyn OAuthAppStore>) {
    (
        Arc::new(LocalConnectSessionStore::new(
            data_dir.join("connect-sessions"),
        )),
        Arc::new(LocalOAuthAppStore::new(data_dir.join("oauth-apps"))),
    )
}
