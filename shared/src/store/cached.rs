//! Connections kept in the container's memory, over any `ConnectionStore`: a warm invocation reads
//! its connection without a Secrets Manager call.
//!
//! The semantics of AWS's `aws_secretsmanager_caching` client: an entry is served for `ttl` after
//! it was read, then read again; `get_fresh` reads through (and refreshes the entry); writes
//! (`put`, an OAuth token refreshed by crm-sync) update the entry as they are stored. On top of
//! that, `invalidate` drops an entry whose credentials a CRM refused (401/403), so the next
//! request reads what an operator may have rotated meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::ConnectionStore;
use crate::connection::{Connection, ConnectionId};
use crate::error::Result;

pub struct CachedConnectionStore {
    inner: Arc<dyn ConnectionStore>,
    ttl: Duration,
    entries: Mutex<HashMap<ConnectionId, (Instant, Connection)>>,
}

impl CachedConnectionStore {
    /// Serves each connection from memory for `ttl` after it was read or written.
    pub fn new(inner: Arc<dyn ConnectionStore>, ttl: Duration) -> Self {
        CachedConnectionStore {
            inner,
            ttl,
            entries: Mutex::default(),
        }
    }

    fn cached(&self, id: &ConnectionId) -> Option<Connection> {
        let entries = self.entries.lock().expect("not poisoned");
        entries
            .get(id)
            .filter(|(read_at, _)| read_at.elapsed() < self.ttl)
            .map(|(_, connection)| connection.clone())
    }

    fn remember(&self, id: &ConnectionId, connection: &Connection) {
        let mut connection = connection.clone();
        connection.id = Some(id.clone());
        self.entries
            .lock()
            .expect("not poisoned")
            .insert(id.clone(), (Instant::now(), connection));
    }
}

#[async_trait]
impl ConnectionStore for CachedConnectionStore {
    async fn get(&self, id: &ConnectionId) -> Result<Connection> {
        match self.cached(id) {
            Some(connection) => Ok(connection),
            None => self.get_fresh(id).await,
        }
    }

    async fn get_fresh(&self, id: &ConnectionId) -> Result<Connection> {
        match self.inner.get_fresh(id).await {
            Ok(connection) => {
                self.remember(id, &connection);
                Ok(connection)
            }
            Err(e) => {
                self.invalidate(id);
                Err(e)
            }
        }
    }

    async fn put(&self, id: &ConnectionId, connection: &Connection) -> Result<()> {
        match self.inner.put(id, connection).await {
            Ok(()) => {
                self.remember(id, connection);
                Ok(())
            }
            // Perhaps written, perhaps not: the next read asks the store.
            Err(e) => {
                self.invalidate(id);
                Err(e)
            }
        }
    }

    async fn list(&self) -> Result<Vec<ConnectionId>> {
        self.inner.list().await
    }

    async fn delete(&self, id: &ConnectionId) -> Result<()> {
        self.invalidate(id);
        self.inner.delete(id).await
    }

    fn invalidate(&self, id: &ConnectionId) {
        self.entries.lock().expect("not poisoned").remove(id);
    }
}
