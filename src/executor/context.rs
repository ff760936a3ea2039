//! Executor plumbing shared by every runbook's [`Actions`](super::Actions): the hosts commands
//! run on (inventory hosts plus the jump host), cached tokio-postgres connections, and the
//! per-run directory holding backups and the memory a resumed run needs.

use super::Sink;
use crate::engine::PreconditionResult;
use crate::inventory::{Host, Inventory, Node, Pgbouncer};
use crate::pg::{self, Endpoint, SessionSettings};
use crate::remote::{HostOptions, Hosts, OutputLine};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::Client;

/// Reserved host name for commands that run on the jump host itself (traffic hooks).
pub const LOCAL_HOST: &str = "@local";

/// What every runbook's actions share for one run.
pub struct ExecContext {
    hosts: Hosts,
    /// Open connections by endpoint label, reused while they stay open.
    clients: Mutex<HashMap<String, Arc<Client>>>,
    /// Where backups and the run's memory files live.
    run_dir: PathBuf,
    /// Where traffic hooks run: the inventory's traffic host, else [`LOCAL_HOST`].
    hook_host: String,
}

impl ExecContext {
    /// Create `run_dir` if needed, and reach the inventory's hosts plus [`LOCAL_HOST`].
    pub fn new(
        inventory: &Inventory,
        run_dir: PathBuf,
        trust_on_first_use: bool,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        let mut hosts = inventory.hosts.clone();
        hosts.push(Host {
            name: LOCAL_HOST.into(),
            local: true,
            ssh: None,
        });
        let hook_host = inventory
            .traffic
            .as_ref()
            .and_then(|t| t.host.clone())
            .unwrap_or_else(|| LOCAL_HOST.into());
        Ok(ExecContext {
            hosts: Hosts::new(
                hosts,
                HostOptions {
                    trust_on_first_use,
                    ..Default::default()
                },
            ),
            clients: Mutex::new(HashMap::new()),
            run_dir,
            hook_host,
        })
    }

    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// The host traffic stop/start hooks run on.
    pub fn hook_host(&self) -> &str {
        &self.hook_host
    }

    /// A connection to `endpoint`, reused while it stays open: inside a write pause every
    /// connect saved is a few milliseconds of downtime saved.
    pub async fn cached(
        &self,
        endpoint: Endpoint,
        settings: SessionSettings,
    ) -> Result<Arc<Client>, String> {
        let key = endpoint.label();
        let reusable = self
            .clients
            .lock()
            .ok()
            .and_then(|cache| cache.get(&key).filter(|c| !c.is_closed()).cloned());
        if let Some(client) = reusable {
            return Ok(client);
        }
        let client = Arc::new(pg::connect(&endpoint, settings).await.map_err(fail)?);
        if let Ok(mut cache) = self.clients.lock() {
            cache.insert(key, client.clone());
        }
        Ok(client)
    }

    /// A cached executor connection to `dbname` on `node`.
    pub async fn node_client(&self, node: &Node, dbname: &str) -> Result<Arc<Client>, String> {
        self.cached(Endpoint::node(node, dbname), SessionSettings::EXECUTOR)
            .await
    }

    /// A cached connection to `bouncer`'s admin console.
    pub async fn bouncer_admin(&self, bouncer: &Pgbouncer) -> Result<Arc<Client>, String> {
        self.cached(
            Endpoint::pgbouncer_admin(bouncer),
            SessionSettings::PGBOUNCER,
        )
        .await
    }

    /// Drop every cached connection: a node is about to stop, start or restart.
    pub fn forget_clients(&self) {
        if let Ok(mut cache) = self.clients.lock() {
            cache.clear();
        }
    }

    /// Run `command` on `host`, sending each non-blank output line to `sink` prefixed with
    /// `[host]`; a nonzero exit is an error. Returns stdout.
    pub async fn host_run(
        &self,
        host: &str,
        command: &str,
        timeout: Duration,
        sink: &Sink,
    ) -> Result<String, String> {
        let mut on_line = |line: OutputLine| match line {
            OutputLine::Stdout(text) | OutputLine::Stderr(text) => {
                if !text.trim().is_empty() {
                    sink.output(format!("[{host}] {text}"));
                }
            }
        };
        self.hosts
            .run_checked(host, command, timeout, &mut on_line)
            .await
            .map(|out| out.stdout)
            .map_err(fail)
    }

    /// The value kept in `file` of the run dir; the default when it is missing or unreadable.
    pub fn load_memory<T: DeserializeOwned + Default>(&self, file: &str) -> T {
        std::fs::read_to_string(self.path(file))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// Keep `value` in `file` of the run dir, durably, for a resumed run.
    pub fn save_memory<T: Serialize>(&self, file: &str, value: &T) -> Result<(), String> {
        let text = serde_json::to_string_pretty(value).map_err(fail)?;
        write_durably(&self.path(file), text.as_bytes())
    }

    /// `name` inside the run dir (backups, memory files).
    pub fn path(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }
}

/// An error as the text an action reports.
pub fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A precondition result from a check: `Ok` holds, `Err` does not; either way with its detail.
pub fn verdict(id: &str, result: Result<String, String>) -> PreconditionResult {
    match result {
        Ok(detail) => PreconditionResult {
            id: id.into(),
            holds: true,
            detail,
        },
        Err(detail) => PreconditionResult {
            id: id.into(),
            holds: false,
            detail,
        },
    }
}

/// Write a file and fsync it, so a crash right after never leaves it half-written.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension("tmp-cutover");
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| format!("{}: {e}", path.display()))
}
