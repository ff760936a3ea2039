//! Lab application traffic: calls `insert_form` through the pgbouncer alias the application
//! enters by (plproxy routes each call to its shard's partition), and records every committed id.

use crate::pg::{self, Endpoint, SessionSettings};
use crate::sql::quote_literal;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub endpoint: Endpoint,
    /// Target calls per second across all workers.
    pub rate: u32,
    /// Stop after this long (or earlier when the stop signal fires).
    pub duration: Duration,
    pub workers: u32,
    /// Where to write committed form ids, one per line.
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    pub committed: u64,
    pub failed: u64,
    pub elapsed_ms: u64,
    /// Up to 10 distinct error messages, for the operator.
    pub errors: Vec<String>,
    /// Slowest call in milliseconds: how long a client waited during a pause.
    pub max_call_ms: u64,
    #[serde(skip)]
    pub committed_ids: Vec<uuid::Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Pg(#[from] pg::PgError),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Run the load until `duration` passes or `stop` becomes true.
pub async fn run(
    options: LoadOptions,
    stop: watch::Receiver<bool>,
) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    let workers = options.workers.max(1);
    let per_worker_interval =
        Duration::from_secs_f64(f64::from(workers) / f64::from(options.rate.max(1)));
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let client = pg::connect(&options.endpoint, SessionSettings::PGBOUNCER).await?;
        let stop = stop.clone();
        let duration = options.duration;
        let target = options.endpoint.label();
        tasks.push(tokio::spawn(async move {
            let mut report = LoadReport::default();
            let mut ticker = tokio::time::interval(per_worker_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq: u64 = 0;
            while started.elapsed() < duration && !*stop.borrow() {
                ticker.tick().await;
                seq += 1;
                let id = uuid::Uuid::new_v4();
                let sql = format!(
                    "SELECT insert_form({}::uuid, {}, {}::jsonb)",
                    quote_literal(&id.to_string()),
                    quote_literal(&format!("load-{}", worker % 4)),
                    quote_literal(&format!("{{\"worker\": {worker}, \"seq\": {seq}}}")),
                );
                let call_started = Instant::now();
                match pg::simple_rows(&client, &target, &sql).await {
                    Ok(_) => {
                        report.committed += 1;
                        report.committed_ids.push(id);
                    }
                    Err(e) => {
                        report.failed += 1;
                        let message = e.to_string();
                        if report.errors.len() < 10 && !report.errors.contains(&message) {
                            report.errors.push(message);
                        }
                    }
                }
                report.max_call_ms = report
                    .max_call_ms
                    .max(call_started.elapsed().as_millis() as u64);
            }
            report
        }));
    }
    let mut total = LoadReport::default();
    for task in tasks {
        // A worker task only ends by returning; a panic there is a bug worth surfacing as a failure.
        match task.await {
            Ok(report) => {
                total.committed += report.committed;
                total.failed += report.failed;
                total.max_call_ms = total.max_call_ms.max(report.max_call_ms);
                for e in report.errors {
                    if total.errors.len() < 10 && !total.errors.contains(&e) {
                        total.errors.push(e);
                    }
                }
                total.committed_ids.extend(report.committed_ids);
            }
            Err(join_error) => {
                total.failed += 1;
                total
                    .errors
                    .push(format!("load worker stopped: {join_error}"));
            }
        }
    }
    total.elapsed_ms = started.elapsed().as_millis() as u64;
    if let Some(path) = &options.out {
        let text: String = total
            .committed_ids
            .iter()
            .map(|id| format!("{id}\n"))
            .collect();
        std::fs::write(path, text).map_err(|source| LoadError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(total)
}

/// The endpoint the application enters by: the proxy's pgbouncer alias, as the proxy node's user.
pub fn entry_endpoint(inventory: &crate::inventory::Inventory) -> Option<Endpoint> {
    let proxy = inventory.proxy.as_ref()?;
    let alias = proxy.alias.as_deref()?;
    let bouncer = inventory
        .pgbouncers
        .iter()
        .find(|b| b.aliases.iter().any(|a| a.name == alias))?;
    let user = inventory.node(&proxy.node)?.user.clone();
    Some(Endpoint::pgbouncer_alias(bouncer, alias, &user))
}
