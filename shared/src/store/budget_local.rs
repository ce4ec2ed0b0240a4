//! Rate budgets for running without AWS: one small JSON file per account under the data folder,
//! read and written under the folder's exclusive lock, so separate local function processes
//! share one bucket as Lambda instances share the DynamoDB item.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::budget::{BudgetStore, LaneTake, Taken, apply, budget_key, refused};
use super::local::{io_error, with_dir_lock, write_atomically};
use super::sha256_hex;
use crate::budget::spec::Lane;
use crate::error::{Error, Result};

/// Buckets as `<dir>/<sha256 of key>.json`: `{"general": <full-at µs>, "search": …}`.
pub struct LocalBudgetStore {
    dir: PathBuf,
}

impl LocalBudgetStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalBudgetStore { dir: dir.into() }
    }
}

fn file(key: &str) -> String {
    format!("{}.json", sha256_hex(budget_key(key).as_bytes()))
}

fn read(path: &Path) -> Result<Map<String, Value>> {
    match fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(Value::Object(lanes)) => Ok(lanes),
            _ => Err(Error::Store(format!(
                "unreadable rate budget {}",
                path.display()
            ))),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(io_error("reading a rate budget", e)),
    }
}

fn full_at(lanes: &Map<String, Value>, lane: Lane) -> Option<i64> {
    lanes.get(lane.as_str()).and_then(Value::as_i64)
}

#[async_trait]
impl BudgetStore for LocalBudgetStore {
    async fn take(
        &self,
        key: &str,
        takes: &[LaneTake],
        now_us: i64,
        _known: &[Option<i64>],
    ) -> Result<Taken> {
        let name = file(key);
        let takes = takes.to_vec();
        with_dir_lock(self.dir.clone(), move |dir| {
            let path = dir.join(name);
            let mut lanes = read(&path)?;
            let current: Vec<Option<i64>> = takes.iter().map(|t| full_at(&lanes, t.lane)).collect();
            let Some(next) = apply(&current, &takes, now_us) else {
                return Ok(refused(&current, now_us));
            };
            for (take, at) in takes.iter().zip(&next) {
                lanes.insert(take.lane.as_str().into(), (*at).into());
            }
            write_atomically(&path, Value::Object(lanes).to_string().as_bytes())?;
            Ok(Taken::Granted(next))
        })
        .await
    }

    async fn hold_until(&self, key: &str, lane: Lane, at_least_us: i64) -> Result<()> {
        let name = file(key);
        with_dir_lock(self.dir.clone(), move |dir| {
            let path = dir.join(name);
            let mut lanes = read(&path)?;
            if full_at(&lanes, lane).is_some_and(|at| at >= at_least_us) {
                return Ok(());
            }
            lanes.insert(lane.as_str().into(), at_least_us.into());
            write_atomically(&path, Value::Object(lanes).to_string().as_bytes())
        })
        .await
    }
}
