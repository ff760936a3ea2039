//! The reference beside the logical-move rehearsal: Debian's `pgcopydb clone --follow` on a
//! fresh lab of the same shape under the same `lab load`, cut over the way an operator would
//! with it (PAUSE the entry alias, `stream sentinel set endpos --current`, wait for it to exit),
//! then audited and cleaned up. Its pause lands in the rehearsal's JSON as `pgcopydb`.
//!
//! pgcopydb 0.10 (Debian 12) prefetches the slot's changes into one JSON file per WAL segment
//! and transforms and applies a file only once it is closed (its `follow` manual: "Each time a
//! JSON file is closed, an auxiliary process is started to transform the JSON file into a
//! matching SQL file"; live streaming came in 0.11). A file is closed when the stream crosses
//! into the next WAL segment, so the rehearsal switches the source's WAL segment every
//! [`WAL_SWITCH_EVERY`] while following, the operator's way to keep 0.10's backlog small;
//! without it the whole backlog lands inside the pause.

use super::rehearse::{MoveLab, MoveRehearsalOptions, RehearsalError};
use crate::lab::load::{self, LoadOptions};
use crate::lab::P1_DB;
use crate::pg::{self, SessionSettings};
use crate::runbooks::shard_split::plan::{pause_sql, resume_sql};
use crate::sql::quote_ident;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How often the source's WAL segment is switched while pgcopydb follows.
pub const WAL_SWITCH_EVERY: Duration = Duration::from_secs(5);
/// Steady following under load, after pgcopydb first applied the live stream.
const FOLLOW_FOR: Duration = Duration::from_secs(10);
/// The copy and the first apply of the live stream must finish within this.
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);
/// From `endpos` set to pgcopydb's exit.
const ENDPOS_TIMEOUT: Duration = Duration::from_secs(180);
/// pgcopydb's default slot and replication origin names.
const SLOT: &str = "pgcopydb";
const ORIGIN: &str = "pgcopydb";

#[derive(Debug, Clone, Serialize, Default)]
pub struct PgcopydbRun {
    /// `pgcopydb --version`, first line.
    pub version: String,
    /// PAUSE issued → pgcopydb exited after applying up to `endpos`.
    pub pause_ms: f64,
    /// Of the pause: `stream sentinel set endpos --current` returned.
    pub endpos_set_ms: f64,
    /// Start → the target's replication origin first reached a source LSN taken after the
    /// first apply (copy done, following).
    pub sync_s: f64,
    /// Source LSN − the target origin's applied LSN, bytes, one sample a second while following.
    pub lag_bytes: Vec<i64>,
    /// Source LSN − the slot's `confirmed_flush_lsn`, bytes, at the same samples.
    pub slot_lag_bytes: Vec<i64>,
    pub wal_switch_every_s: f64,
    /// Source ids absent from the target at endpos (writes paused, so both must match).
    pub missing: u64,
    /// Extra rows on the target: `forms` ids more than once, and `form_events` per form beyond one.
    pub duplicated: u64,
    /// Calls of the load that failed during pgcopydb's run.
    pub failed: u64,
    pub committed: u64,
    /// Replication slots left on the source after `pgcopydb stream cleanup`.
    pub slots_left: u64,
    pub error: Option<String>,
}

fn other(e: impl std::fmt::Display) -> RehearsalError {
    RehearsalError::Other(e.to_string())
}

fn q(e: tokio_postgres::Error) -> RehearsalError {
    RehearsalError::Other(pg::error_chain(&e))
}

/// `pgcopydb --version`'s version line, or None when the binary is absent.
pub async fn version() -> Option<String> {
    let out = tokio::process::Command::new("pgcopydb")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// The version from `pgcopydb --version`'s stdout ("pgcopydb version 0.10-1").
pub fn parse_version(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("pgcopydb version "))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A child in its own process group, killed with its group (pgcopydb forks workers) unless
/// it exited first.
struct Group {
    child: tokio::process::Child,
    pid: Option<nix::unistd::Pid>,
}

impl Group {
    fn spawn(cmd: &mut tokio::process::Command) -> Result<Group, RehearsalError> {
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| other(format!("pgcopydb: {e}")))?;
        let pid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
        Ok(Group { child, pid })
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

fn uri(port: u16, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{db}")
}

/// Run pgcopydb `args` to completion (bounded), returning its stderr tail on failure.
async fn pgcopydb(args: &[&str], log: &Path) -> Result<(), RehearsalError> {
    let file = std::fs::File::create(log).map_err(other)?;
    let mut group = Group::spawn(
        tokio::process::Command::new("pgcopydb")
            .args(args)
            .stdout(Stdio::null())
            .stderr(file),
    )?;
    let status = match tokio::time::timeout(Duration::from_secs(60), group.child.wait()).await {
        Ok(status) => status.map_err(other)?,
        Err(_) => {
            group.kill();
            return Err(other(format!("pgcopydb {}: timed out", args.join(" "))));
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(other(format!(
            "pgcopydb {}: {status}: {}",
            args.join(" "),
            log_tail(log)
        )))
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// (source LSN − origin's applied LSN, source LSN − slot's confirmed flush); None before the
/// origin or slot exist.
async fn lags(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
) -> Result<(Option<i64>, Option<i64>, String), RehearsalError> {
    let row = source
        .query_one(
            "SELECT pg_current_wal_lsn()::text, \
             (SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1)",
            &[&SLOT],
        )
        .await
        .map_err(q)?;
    let current: String = row.get(0);
    let slot_lag: Option<i64> = row.get(1);
    let applied: Option<String> = target
        .query_one(
            "SELECT pg_replication_origin_progress($1, false)::text \
             FROM pg_replication_origin WHERE roname = $1",
            &[&ORIGIN],
        )
        .await
        .ok()
        .and_then(|r| r.get(0));
    let lag = match applied {
        Some(applied) if applied != "0/0" => {
            let row = source
                .query_one(
                    "SELECT ($1::text::pg_lsn - $2::text::pg_lsn)::bigint",
                    &[&current, &applied],
                )
                .await
                .map_err(q)?;
            Some(row.get(0))
        }
        _ => None,
    };
    Ok((lag, slot_lag, current))
}

/// The target origin's applied LSN ≥ `lsn`.
async fn applied_past(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    lsn: &str,
) -> Result<bool, RehearsalError> {
    let applied: Option<String> = target
        .query_one(
            "SELECT pg_replication_origin_progress($1, false)::text \
             FROM pg_replication_origin WHERE roname = $1",
            &[&ORIGIN],
        )
        .await
        .ok()
        .and_then(|r| r.get(0));
    let Some(applied) = applied else {
        return Ok(false);
    };
    let row = source
        .query_one(
            "SELECT $1::text::pg_lsn >= $2::text::pg_lsn",
            &[&applied, &lsn],
        )
        .await
        .map_err(q)?;
    Ok(row.get(0))
}

/// Every `form_id` of `forms` on `client`, as text.
async fn form_ids(client: &tokio_postgres::Client) -> Result<Vec<String>, RehearsalError> {
    Ok(client
        .query("SELECT form_id::text FROM forms", &[])
        .await
        .map_err(q)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// (missing, duplicated) of the target against the source while writes are paused.
pub fn compare_ids(source: &[String], target: &[String], extra_events: u64) -> (u64, u64) {
    let on_target: BTreeSet<&String> = target.iter().collect();
    let missing = source.iter().filter(|id| !on_target.contains(id)).count() as u64;
    let duplicated = (target.len() - on_target.len()) as u64 + extra_events;
    (missing, duplicated)
}

/// One pgcopydb cutover on a fresh lab with a PostgreSQL `version` target.
pub async fn run(
    options: &MoveRehearsalOptions,
    version: u32,
    pgcopydb_version: String,
) -> Result<PgcopydbRun, RehearsalError> {
    let lab = MoveLab::start(options.docs, version).await?;
    let mut result = PgcopydbRun {
        version: pgcopydb_version,
        wal_switch_every_s: WAL_SWITCH_EVERY.as_secs_f64(),
        ..Default::default()
    };
    let admin = pg::connect(
        &MoveLab::endpoint(lab.target_port, "postgres"),
        SessionSettings::EXECUTOR,
    )
    .await
    .map_err(other)?;
    let exists: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&P1_DB],
        )
        .await
        .map_err(q)?
        .get(0);
    if exists == 0 {
        admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(P1_DB)))
            .await
            .map_err(q)?;
    }
    let inventory = crate::inventory::load(&lab.config.inventory_path()).map_err(other)?;
    let endpoint =
        load::entry_endpoint(&inventory).ok_or_else(|| other("the lab has no entry alias"))?;
    let alias = endpoint.dbname.clone();
    let bouncer = inventory
        .pgbouncers
        .iter()
        .find(|b| b.aliases.iter().any(|a| a.name == alias))
        .ok_or_else(|| other("the entry alias has no pgbouncer"))?
        .clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(load::run(
        LoadOptions {
            endpoint,
            rate: options.rate,
            duration: Duration::from_secs(3600),
            workers: 4,
            out: None,
        },
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcome = cut_over(&lab, &bouncer, &alias, &mut result).await;
    let _ = stop_tx.send(true);
    let report = traffic.await.map_err(other)?.map_err(other)?;
    result.committed = report.committed;
    result.failed = report.failed;
    let work = lab.config.dir.join("pgcopydb");
    let (source_uri, target_uri) = (uri(lab.config.pg1_port, P1_DB), uri(lab.target_port, P1_DB));
    let cleanup = pgcopydb(
        &[
            "stream",
            "cleanup",
            "--source",
            &source_uri,
            "--target",
            &target_uri,
            "--dir",
            &work.display().to_string(),
        ],
        &lab.config.dir.join("pgcopydb-cleanup.log"),
    )
    .await;
    let slots: i64 = lab
        .source()
        .await?
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .map_err(q)?
        .get(0);
    result.slots_left = slots as u64;
    result.error = match (outcome, cleanup) {
        (Err(e), _) => Some(e.to_string()),
        (Ok(()), Err(e)) => Some(format!("cleanup: {e}")),
        (Ok(()), Ok(())) => None,
    };
    Ok(result)
}

/// Clone and follow under load, then PAUSE → endpos → exit, audit, RESUME. The alias is
/// resumed whatever happened; no repoint (the audit compares both sides while paused).
async fn cut_over(
    lab: &MoveLab,
    bouncer: &crate::inventory::Pgbouncer,
    alias: &str,
    result: &mut PgcopydbRun,
) -> Result<(), RehearsalError> {
    let work = lab.config.dir.join("pgcopydb");
    let source_uri = uri(lab.config.pg1_port, P1_DB);
    let target_uri = uri(lab.target_port, P1_DB);
    let log = lab.config.dir.join("pgcopydb-clone.log");
    let file = std::fs::File::create(&log).map_err(other)?;
    let started = Instant::now();
    let mut clone = Group::spawn(
        tokio::process::Command::new("pgcopydb")
            .args(["clone", "--follow", "--source", &source_uri])
            .args(["--target", &target_uri, "--dir"])
            .arg(&work)
            .stdout(Stdio::null())
            .stderr(file),
    )?;
    let source = lab.source().await?;
    let target = lab.target().await?;
    let mut last_switch = Instant::now();
    let mut mark: Option<String> = None;
    let mut synced_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(Some(status)) = clone.child.try_wait() {
            return Err(other(format!(
                "pgcopydb clone --follow exited while following: {status}: {}",
                log_tail(&log)
            )));
        }
        if last_switch.elapsed() >= WAL_SWITCH_EVERY {
            source
                .batch_execute("SELECT pg_switch_wal()")
                .await
                .map_err(q)?;
            last_switch = Instant::now();
        }
        let (lag, slot_lag, current) = lags(&source, &target).await?;
        if let Some(lag) = lag {
            result.lag_bytes.push(lag);
            result.slot_lag_bytes.push(slot_lag.unwrap_or(-1));
            match &mark {
                None => mark = Some(current),
                Some(m) if synced_at.is_none() && applied_past(&source, &target, m).await? => {
                    synced_at = Some(Instant::now());
                    result.sync_s = started.elapsed().as_secs_f64();
                }
                _ => {}
            }
        }
        if synced_at.is_some_and(|t| t.elapsed() >= FOLLOW_FOR) {
            break;
        }
        if started.elapsed() > SYNC_TIMEOUT {
            return Err(other(format!(
                "pgcopydb had not applied the live stream after {} s: {}",
                SYNC_TIMEOUT.as_secs(),
                log_tail(&log)
            )));
        }
    }
    let bouncer_admin = pg::connect(
        &crate::pg::Endpoint::pgbouncer_admin(bouncer),
        SessionSettings::PGBOUNCER,
    )
    .await
    .map_err(other)?;
    let paused = Instant::now();
    pg::simple_execute(&bouncer_admin, &bouncer.name, &pause_sql(alias))
        .await
        .map_err(other)?;
    let window = endpos_and_audit(lab, &mut clone, &source, &target, &log, paused, result).await;
    let resumed = pg::simple_execute(&bouncer_admin, &bouncer.name, &resume_sql(alias))
        .await
        .map_err(other);
    window?;
    resumed
}

/// Inside the pause: set endpos, wait for pgcopydb to exit, then compare both sides.
async fn endpos_and_audit(
    lab: &MoveLab,
    clone: &mut Group,
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    log: &Path,
    paused: Instant,
    result: &mut PgcopydbRun,
) -> Result<(), RehearsalError> {
    let source_uri = uri(lab.config.pg1_port, P1_DB);
    pgcopydb(
        &[
            "stream",
            "sentinel",
            "set",
            "endpos",
            "--current",
            "--source",
            &source_uri,
        ],
        &lab.config.dir.join("pgcopydb-endpos.log"),
    )
    .await?;
    result.endpos_set_ms = paused.elapsed().as_secs_f64() * 1000.0;
    let status = match tokio::time::timeout(ENDPOS_TIMEOUT, clone.child.wait()).await {
        Ok(status) => status.map_err(other)?,
        Err(_) => {
            clone.kill();
            return Err(other(format!(
                "pgcopydb did not reach endpos within {} s (killed): {}",
                ENDPOS_TIMEOUT.as_secs(),
                log_tail(log)
            )));
        }
    };
    result.pause_ms = paused.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        return Err(other(format!(
            "pgcopydb clone --follow: {status}: {}",
            log_tail(log)
        )));
    }
    let on_source = form_ids(source).await?;
    let on_target = form_ids(target).await?;
    let extra_events: i64 = target
        .query_one(
            "SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) AS n FROM form_events GROUP BY form_id HAVING count(*) > 1) d",
            &[],
        )
        .await
        .map_err(q)?
        .get(0);
    let (missing, duplicated) = compare_ids(&on_source, &on_target, extra_events as u64);
    result.missing = missing;
    result.duplicated = duplicated;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_line_of_debian_build() {
        assert_eq!(
            parse_version("pgcopydb version 0.10-1\ncompiled with PostgreSQL 15.0\n").as_deref(),
            Some("0.10-1")
        );
        assert_eq!(parse_version("something else\n"), None);
    }

    #[test]
    fn ids_missing_and_duplicated() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            compare_ids(&s(&["a", "b", "c"]), &s(&["a", "b", "b"]), 2),
            (1, 3)
        );
        assert_eq!(compare_ids(&s(&["a"]), &s(&["a"]), 0), (0, 0));
    }
}
