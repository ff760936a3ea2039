//! Executor plumbing shared by every runbook's [`Actions`](super::Actions): the hosts commands
//! run on (inventory hosts plus the jump host), cached tokio-postgres connections, and the
//! per-run directory holding backups and the memory a resumed run needs.

use super::{Sink, StepError};
use crate::engine::{EngineState, PreconditionResult, StepStatus};
use crate::inventory::{self, Host, Inventory, Node, Pgbouncer, TrafficHooks};
use crate::pg::{self, Endpoint, SessionSettings};
use crate::plan::{Plan, Step};
use crate::remote::{HostOptions, Hosts, OutputLine};
use crate::runbooks::shard_split::plan::{unified_diff, LONG_TRANSACTIONS_SQL};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::Client;

/// Reserved host name for commands that run on the jump host itself (traffic hooks).
pub const LOCAL_HOST: &str = "@local";
/// The run-dir file that keeps the inventory as it was before the run rewrote it.
const INVENTORY_BACKUP: &str = "inventory.before.yaml";
/// The inventory as this run last rewrote it: the one change to the file a resumed run expects.
pub const INVENTORY_REWRITTEN: &str = "inventory.rewritten.yaml";
/// How long writing a small file (a pgbouncer config) to a host may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// What every runbook's actions share for one run.
pub struct ExecContext {
    hosts: Hosts,
    /// Open connections by endpoint label, reused while they stay open.
    clients: Mutex<HashMap<String, Arc<Client>>>,
    /// Where backups and the run's memory files live.
    run_dir: PathBuf,
    /// The inventory's traffic hooks, if it has any.
    traffic: Option<TrafficHooks>,
}

/// A run's memory file exists but cannot be used; the run does not open.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot read the run's memory file {}: {source}; it holds what earlier steps recorded for a resumed run, so the run does not open until it is readable", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the run's memory file {} is corrupt ({source}); it holds what earlier steps recorded for a resumed run, so the run does not open until the file is restored or repaired", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Which of the inventory's traffic hooks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficHook {
    Stop,
    Start,
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
            traffic: inventory.traffic.clone(),
        })
    }

    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// Run the inventory's `hook` command, on its traffic host or else [`LOCAL_HOST`], with
    /// its output sent to `sink`. Without traffic hooks in the inventory this does nothing.
    pub async fn run_traffic_hook(
        &self,
        hook: TrafficHook,
        timeout: Duration,
        sink: &Sink,
    ) -> Result<(), StepError> {
        let Some(hooks) = &self.traffic else {
            return Ok(());
        };
        let command = match hook {
            TrafficHook::Stop => &hooks.stop,
            TrafficHook::Start => &hooks.start,
        };
        let host = hooks.host.as_deref().unwrap_or(LOCAL_HOST);
        self.host_run(host, command, timeout, sink).await.map(drop)
    }

    /// A connection to `endpoint`, reused while it stays open: inside a write pause every
    /// connect saved is a few milliseconds of downtime saved.
    pub async fn cached(
        &self,
        endpoint: Endpoint,
        settings: SessionSettings,
    ) -> Result<Arc<Client>, StepError> {
        let key = endpoint.label();
        let reusable = self
            .clients
            .lock()
            .ok()
            .and_then(|cache| cache.get(&key).filter(|c| !c.is_closed()).cloned());
        if let Some(client) = reusable {
            return Ok(client);
        }
        let client = Arc::new(pg::connect(&endpoint, settings).await?);
        if let Ok(mut cache) = self.clients.lock() {
            cache.insert(key, client.clone());
        }
        Ok(client)
    }

    /// A cached executor connection to `dbname` on `node`.
    pub async fn node_client(&self, node: &Node, dbname: &str) -> Result<Arc<Client>, StepError> {
        self.cached(Endpoint::node(node, dbname), SessionSettings::EXECUTOR)
            .await
    }

    /// A cached connection to `bouncer`'s admin console.
    pub async fn bouncer_admin(&self, bouncer: &Pgbouncer) -> Result<Arc<Client>, StepError> {
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
    ) -> Result<String, StepError> {
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
            .map_err(StepError::from)
    }

    /// Run `command` on `host` quietly (its output is not journaled) and return stdout.
    pub async fn host_read(
        &self,
        host: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<String, StepError> {
        self.hosts
            .run_checked(host, command, timeout, &mut |_| {})
            .await
            .map(|out| out.stdout)
            .map_err(StepError::from)
    }

    /// Write `bytes` to `path` on `host`, replacing it.
    pub async fn upload(&self, host: &str, path: &str, bytes: &[u8]) -> Result<(), StepError> {
        self.hosts
            .upload(host, path, bytes, UPLOAD_TIMEOUT)
            .await
            .map_err(StepError::from)
    }

    /// The value kept in `file` of the run dir: the default when the file does not exist (a
    /// fresh run), an error when it exists but cannot be read or parsed. A resumed run must
    /// never act on an empty memory in place of what an earlier attempt recorded.
    pub fn load_memory<T: DeserializeOwned + Default>(&self, file: &str) -> Result<T, MemoryError> {
        let path = self.path(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
            Err(source) => return Err(MemoryError::Unreadable { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| MemoryError::Corrupt { path, source })
    }

    /// Keep `value` in `file` of the run dir, durably, for a resumed run.
    pub fn save_memory<T: Serialize>(&self, file: &str, value: &T) -> Result<(), StepError> {
        let text =
            serde_json::to_string_pretty(value).map_err(|e| StepError::Setup(e.to_string()))?;
        write_durably(&self.path(file), text.as_bytes())
    }

    /// `name` inside the run dir (backups, memory files).
    pub fn path(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }

    /// Keep `bytes` as `name` in the run dir unless a copy is there already: a re-run must
    /// not back up its own edit.
    pub fn keep_first_copy(&self, name: &str, bytes: &[u8]) -> Result<(), StepError> {
        let backup = self.path(name);
        if backup.exists() {
            return Ok(());
        }
        write_durably(&backup, bytes)
    }

    /// Keep the inventory file as it was before the first rewrite of this run.
    pub fn back_up_inventory(&self, inventory_path: &Path) -> Result<(), StepError> {
        if self.path(INVENTORY_BACKUP).exists() {
            return Ok(());
        }
        let current = std::fs::read(inventory_path)
            .map_err(|e| StepError::Setup(format!("{}: {e}", inventory_path.display())))?;
        self.keep_first_copy(INVENTORY_BACKUP, &current)
    }

    /// Write `after` to the inventory file when it differs, showing the diff.
    pub fn rewrite_inventory(
        &self,
        inventory_path: &Path,
        after: &Inventory,
        sink: &Sink,
    ) -> Result<(), StepError> {
        let after = inventory::to_yaml(after).map_err(|e| StepError::Setup(e.to_string()))?;
        let before = std::fs::read_to_string(inventory_path).unwrap_or_default();
        if before != after {
            sink.output(format!(
                "inventory {}:\n{}",
                inventory_path.display(),
                unified_diff(&before, &after)
            ));
            // Recorded first: a crash between the two leaves a file the run still recognizes.
            write_durably(&self.path(INVENTORY_REWRITTEN), after.as_bytes())?;
            write_durably(inventory_path, after.as_bytes())?;
        }
        Ok(())
    }

    /// Put back the inventory kept by [`ExecContext::back_up_inventory`], if there is one.
    pub fn restore_inventory(&self, inventory_path: &Path, sink: &Sink) -> Result<(), StepError> {
        if let Ok(inventory) = std::fs::read(self.path(INVENTORY_BACKUP)) {
            write_durably(inventory_path, &inventory)?;
            sink.output(format!("{} restored", inventory_path.display()));
        }
        Ok(())
    }
}

/// An error as the text an action reports.
pub fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A precondition result from a check: `Ok` holds, `Err` does not; either way with its detail.
pub fn verdict(id: &str, result: Result<String, impl std::fmt::Display>) -> PreconditionResult {
    match result {
        Ok(detail) => PreconditionResult {
            id: id.into(),
            holds: true,
            detail,
        },
        Err(detail) => PreconditionResult {
            id: id.into(),
            holds: false,
            detail: detail.to_string(),
        },
    }
}

/// The `no-long-transactions` check on `client`'s server: none open longer than 60 s.
pub async fn check_long_transactions(client: &Client) -> Result<String, StepError> {
    let row = client
        .query_one(LONG_TRANSACTIONS_SQL, &[])
        .await
        .map_err(|e| pg::error_chain(&e))?;
    let (count, longest): (i64, f64) = (row.get(0), row.get(1));
    if count == 0 {
        Ok("no transaction open longer than 60 s".into())
    } else {
        Err(StepError::Failed(format!(
            "{count} transactions open longer than 60 s (longest {longest:.0} s)"
        )))
    }
}

/// How long a re-check waits for statements a cut-off driver left running.
const CUT_OFF_STATEMENT_WAIT: Duration = Duration::from_secs(60);

impl ExecContext {
    /// Wait until no statement of a cut-off cutover driver still runs on `node`. A driver
    /// killed mid-statement leaves its backend running the statement to its end (the server
    /// notices the lost client only when it next writes to it); a re-check that read or acted
    /// meanwhile would race it. This process runs one statement at a time, so every other
    /// active cutover session on the node belongs to another process.
    pub async fn await_cut_off_statements(
        &self,
        node: &Node,
        sink: &Sink,
    ) -> Result<(), StepError> {
        let client = self.node_client(node, &node.maintenance_db).await?;
        let deadline = std::time::Instant::now() + CUT_OFF_STATEMENT_WAIT;
        let mut announced = false;
        loop {
            let running: Vec<String> = client
                .query(
                    "SELECT left(query, 80) FROM pg_stat_activity \
                     WHERE (application_name = $1 OR application_name LIKE $1 || '/%') \
                     AND state = 'active' AND pid <> pg_backend_pid()",
                    &[&pg::APPLICATION_NAME],
                )
                .await
                .map_err(|e| format!("{}: {}", node.name, pg::error_chain(&e)))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if running.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{}: statements of a cut-off driver still run after {:?}: {}",
                    node.name,
                    CUT_OFF_STATEMENT_WAIT,
                    running.join("; ")
                )
                .into());
            }
            if !announced {
                sink.output(format!(
                    "{}: waiting for {} statement(s) of a cut-off driver to end: {}",
                    node.name,
                    running.len(),
                    running.join("; ")
                ));
                announced = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Say in the journal that `step` is re-checked first when it may have half-run.
pub fn announce_recheck(step: &Step, recheck: bool, sink: &Sink) {
    if recheck {
        sink.output(format!(
            "re-checking {} before acting: it may have half-run",
            step.id
        ));
    }
}

/// Whether `step` has not begun in this run (pending or rolled back), or is not in the plan.
pub fn not_begun(plan: &Plan, state: &EngineState, step: &str) -> bool {
    plan.index_of(&step.into())
        .and_then(|i| state.steps.get(i))
        .is_none_or(|status| matches!(status, StepStatus::Pending | StepStatus::RolledBack { .. }))
}

/// Write a file and fsync it, so a crash right after never leaves it half-written.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StepError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp-cutover");
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| StepError::Setup(format!("{}: {e}", path.display())))
}
