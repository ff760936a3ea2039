//! Effects of the `logical-move` runbook over tokio-postgres, the replication protocol
//! (`slot.rs`), the table-copy engine, the pgbouncer admin console and host commands. Every
//! action checks before it acts, so a re-run after a crash converges; SQL and commands come
//! from `plan.rs`, the reviewed text.
//!
//! Invariants:
//! - the initial copy reads every table under the snapshot the slot exported, so the stream
//!   starts exactly where the copy ends; a re-run (the snapshot died with the process) drops
//!   the slot and empties the target tables before a new slot: never a row lost or doubled;
//! - traffic moves only after the gate: the slot's confirmed flush (what the target applied
//!   and flushed) is at or past the source's LSN recorded while paused;
//! - sequences on the target are set and checked before any write can reach it.

use super::plan::{self, Move, CANARY_TABLE};
use super::slot;
use super::MoveStep;
use crate::effects::logical_apply::{self, Applier, ApplyConfig, ApplyError, ApplyStatus};
use crate::effects::{repoint, traffic};
use crate::engine::{EngineState, Observation, PreconditionResult};
use crate::executor::context::{
    announce_recheck, check_long_transactions, not_begun, verdict, ExecContext,
};
use crate::executor::{Actions, ItemAttempt, Sink, StepError};
use crate::inventory::{Node, Pgbouncer};
use crate::pg::{self, Endpoint, SessionSettings};
use crate::plan::{Plan, Step};
use crate::readings::queries;
use crate::runbooks::table_copy::effects::{TableCopyActions, TABLES_FILE};
use crate::runbooks::table_copy::plan::{
    CopyParams, CopyPolicy, CopyTable, TableCopy, DEFAULT_SPLIT_ROWS, PINNED_SETTINGS,
};
use crate::runbooks::table_copy::CopyStep;
use crate::runbooks::{RunSetup, StepKind};
use crate::sql::{quote_ident, quote_qualified};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const MEMORY_FILE: &str = "move.json";
const HOST_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the canary row may take to show on the target.
const CANARY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the catch-up step waits for the lag to fall under the bound.
const SYNC_TIMEOUT: Duration = Duration::from_secs(3600);
const GATE_POLL: Duration = Duration::from_millis(5);
/// Test hook: `kill -9` this process once the initial copy has copied this many tables.
pub const KILL_DURING_COPY_ENV: &str = "CUTOVER_TEST_KILL_DURING_MOVE_COPY";

/// One sequence as the cutover set it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceFix {
    pub sequence: String,
    pub source_last_value: Option<i64>,
    /// `table.column` that owns it, and the column's maximum on the target.
    pub column: Option<String>,
    pub column_max: Option<i64>,
    pub set_to: i64,
    /// The value `nextval` returned on the target right after: the proof.
    pub next: i64,
}

/// What a resumed run needs from earlier steps, kept durably in the run dir.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MoveMemory {
    /// `schema.table` of every moved table, as the preflight found them.
    pub tables: Vec<String>,
    /// Columns per table at the preflight (for the DDL message) and their fingerprint.
    pub columns: BTreeMap<String, String>,
    pub fingerprint: Option<String>,
    /// `wal_level` before the wal-level step changed it (None: it did not).
    pub wal_level_before: Option<String>,
    pub created_target_db: bool,
    pub consistent_point: Option<String>,
    pub copy_ms: Option<f64>,
    pub copied_rows: u64,
    pub apply_errors_baseline: i64,
    pub canary_ms: Option<f64>,
    pub sync_ms: Option<f64>,
    /// (seconds since catch-up began, slot lag bytes), one a second.
    pub lag_samples: Vec<(f64, i64)>,
    pub peak_retained_bytes: i64,
    pub traffic_stopped_at: Option<DateTime<Utc>>,
    pub gate_lsn: Option<String>,
    pub gate_confirmed: Option<String>,
    pub gate_ms: Option<f64>,
    /// Of the gate: marker written → the slot confirmed it.
    pub gate_wait_ms: Option<f64>,
    pub sequences: Vec<SequenceFix>,
    /// PAUSE issued → RESUME returned.
    pub pause_window_ms: Option<f64>,
    pub verified_rows: u64,
    /// The reverse slot's consistent point on the target (the cutover moment).
    pub reverse_slot_lsn: Option<String>,
    /// Of the move back: the target's LSN after its canary, the wait for the canary on the
    /// source, the sequences set on the source, and the write pause (PAUSE → RESUME).
    pub back_gate_lsn: Option<String>,
    pub back_gate_ms: Option<f64>,
    pub back_sequences: Vec<SequenceFix>,
    pub back_pause_window_ms: Option<f64>,
}

pub struct LogicalMoveActions {
    mv: Move,
    ctx: ExecContext,
    inventory_path: PathBuf,
    run_dir: PathBuf,
    trust_on_first_use: bool,
    memory: MoveMemory,
    /// A target transaction that exported the snapshot taken at the gate, and its name: the
    /// target exactly as of the cutover, for the verify step. Lost with the process.
    cutover_snapshot: Option<(Client, String)>,
    /// A target session opened before the pause, that the gate turns into `cutover_snapshot`:
    /// no connect (TLS handshake) inside the write pause.
    snapshot_holder: Option<Client>,
    /// Into Citus: the tool's apply, running as a task. Lost with the process (the progress
    /// row on the target makes a new one resume exactly where it stopped).
    apply: Option<ApplyTask>,
}

/// The apply loop running in a task, and how to stop it and get the applier back.
struct ApplyTask {
    stop: tokio::sync::watch::Sender<bool>,
    status: tokio::sync::watch::Receiver<ApplyStatus>,
    handle: tokio::task::JoinHandle<(Applier, Result<ApplyStatus, ApplyError>)>,
}

fn apply_err(e: ApplyError) -> StepError {
    StepError::Failed(e.to_string())
}

fn db_err(target: &str) -> impl Fn(tokio_postgres::Error) -> StepError + '_ {
    move |e| StepError::Command {
        target: target.to_string(),
        reason: pg::error_chain(&e),
    }
}

fn ini_backup(bouncer: &Pgbouncer) -> String {
    format!("pgbouncer-{}.ini.before", hex::encode(&bouncer.name))
}

impl LogicalMoveActions {
    pub fn new(mv: Move, setup: RunSetup) -> Result<Self, String> {
        let ctx = ExecContext::new(
            &mv.inventory,
            setup.run_dir.clone(),
            setup.trust_on_first_use,
        )?;
        let memory = ctx.load_memory(MEMORY_FILE).map_err(|e| e.to_string())?;
        Ok(LogicalMoveActions {
            mv,
            ctx,
            inventory_path: setup.inventory_path,
            run_dir: setup.run_dir,
            trust_on_first_use: setup.trust_on_first_use,
            memory,
            cutover_snapshot: None,
            snapshot_holder: None,
            apply: None,
        })
    }

    pub fn memory(&self) -> &MoveMemory {
        &self.memory
    }

    fn remember(&self) -> Result<(), StepError> {
        self.ctx.save_memory(MEMORY_FILE, &self.memory)
    }

    fn s_label(&self) -> String {
        format!("{}/{}", self.mv.source.name, self.mv.source_db())
    }
    fn t_label(&self) -> String {
        format!("{}/{}", self.mv.target.name, self.mv.target_db())
    }

    async fn source(&self) -> Result<std::sync::Arc<Client>, StepError> {
        self.ctx
            .node_client(&self.mv.source, self.mv.source_db())
            .await
    }
    async fn target(&self) -> Result<std::sync::Arc<Client>, StepError> {
        self.ctx
            .node_client(&self.mv.target, self.mv.target_db())
            .await
    }
    async fn target_admin(&self) -> Result<std::sync::Arc<Client>, StepError> {
        self.ctx
            .node_client(&self.mv.target, &self.mv.target.maintenance_db)
            .await
    }

    fn aliases(&self) -> Vec<traffic::Alias<'_>> {
        self.mv
            .paused
            .iter()
            .map(|(bouncer, name)| traffic::Alias {
                bouncer,
                name: name.as_str(),
            })
            .collect()
    }

    // ---- preflight ------------------------------------------------------------------------

    /// The moved tables, and what refuses them: (tables, refusals, warnings).
    async fn discover(&self) -> Result<(Vec<String>, Vec<String>, Vec<String>), StepError> {
        let label = self.s_label();
        let rows = self
            .source()
            .await?
            .query(plan::TABLES_SQL, &[])
            .await
            .map_err(db_err(&label))?;
        let (mut tables, mut refused, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            let (name, identity, has_pk, persistence): (String, String, bool, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if !self.mv.params.selects(&name) {
                continue;
            }
            if persistence == "u" {
                refused.push(format!(
                    "{name} is unlogged: logical replication does not carry it (--exclude it)"
                ));
                continue;
            }
            match (identity.as_str(), has_pk) {
                ("d", true) | ("i", _) => {}
                ("f", _) => warnings.push(format!(
                    "{name} has REPLICA IDENTITY FULL and no key: every update and delete is applied by a scan of the whole table"
                )),
                _ => {
                    refused.push(format!(
                        "{name} has no primary key and no replica identity: its updates and deletes cannot be replicated (add a key, set REPLICA IDENTITY FULL, or --exclude it)"
                    ));
                    continue;
                }
            }
            tables.push(name);
        }
        for named in &self.mv.params.tables {
            if !tables
                .iter()
                .any(|t| crate::runbooks::table_copy::plan::names_match(named, t))
                && !refused.iter().any(|r| r.contains(named.as_str()))
            {
                refused.push(format!("table {named} does not exist on {label}"));
            }
        }
        if tables.is_empty() && refused.is_empty() {
            refused.push(format!("no table to move on {label}"));
        }
        Ok((tables, refused, warnings))
    }

    async fn check_keys(&self) -> Result<String, StepError> {
        let (tables, refused, warnings) = self.discover().await?;
        if !refused.is_empty() {
            return Err(StepError::precondition(refused.join("; ")));
        }
        let mut text = format!("{} tables: {}", tables.len(), tables.join(", "));
        for w in warnings {
            text.push_str(&format!("; WARNING: {w}"));
        }
        Ok(text)
    }

    async fn capacity(&self) -> Result<(String, i32, i32), StepError> {
        let row = self
            .ctx
            .node_client(&self.mv.source, &self.mv.source.maintenance_db)
            .await?
            .query_one(plan::CAPACITY_SQL, &[])
            .await
            .map_err(db_err(&self.mv.source.name))?;
        Ok((row.get(0), row.get(1), row.get(2)))
    }

    async fn slot_exists(&self) -> Result<Option<(bool, Option<i32>)>, StepError> {
        Ok(self
            .source()
            .await?
            .query_opt(
                "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.mv.name],
            )
            .await
            .map_err(db_err(&self.s_label()))?
            .map(|r| (r.get(0), r.get(1))))
    }

    async fn check_capacity(&self) -> Result<String, StepError> {
        let (_, free_slots, free_senders) = self.capacity().await?;
        let ours = self.slot_exists().await?;
        if matches!(ours, Some((true, _))) {
            return Err(StepError::precondition(format!(
                "slot {} exists and is in use: another run of this move is streaming",
                self.mv.name
            )));
        }
        let free_slots = free_slots + i32::from(ours.is_some());
        if free_slots < 1 || free_senders < 1 {
            return Err(StepError::precondition(format!(
                "{}: {free_slots} free replication slots and {free_senders} free WAL senders; the move needs one of each (raise max_replication_slots / max_wal_senders)",
                self.mv.source.name
            )));
        }
        Ok(format!(
            "{free_slots} slots and {free_senders} WAL senders free"
        ))
    }

    async fn check_wal_level(&self) -> Result<String, StepError> {
        let (level, _, _) = self.capacity().await?;
        Ok(if level == "logical" {
            "wal_level = logical".into()
        } else {
            format!(
                "wal_level = {level}: the wal-level step sets it to logical and restarts {} (confirmed)",
                self.mv.source.name
            )
        })
    }

    async fn check_disk(&self) -> Result<String, StepError> {
        let node = &self.mv.source;
        let out = self
            .ctx
            .host_read(
                &node.host,
                &crate::runbooks::table_copy::plan::df_command(&node.data_dir),
                HOST_TIMEOUT,
            )
            .await?;
        let fields: Vec<u64> = out
            .lines()
            .nth(1)
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let (Some(total), Some(avail)) = (fields.first(), fields.get(2)) else {
            return Err(StepError::Failed(format!("unexpected df output: {out}")));
        };
        let need = self.mv.min_free_kb(*total);
        let text = format!(
            "{}: {} MB free of {} MB; the rule (--min-free-gb {} or --min-free-percent {}, the larger) asks {} MB",
            node.name,
            avail / 1024,
            total / 1024,
            self.mv.params.min_free_gb,
            self.mv.params.min_free_percent,
            need / 1024
        );
        if *avail < need {
            Err(StepError::precondition(text))
        } else {
            Ok(text)
        }
    }

    async fn check_large_objects(&self) -> Result<String, StepError> {
        let n: i64 = self
            .source()
            .await?
            .query_one(plan::LARGE_OBJECTS_SQL, &[])
            .await
            .map_err(db_err(&self.s_label()))?
            .get(0);
        Ok(if n == 0 {
            "no large objects".into()
        } else {
            format!("WARNING: {n} large objects on the source: logical replication does not carry them; move them separately")
        })
    }

    async fn target_database_exists(&self) -> Result<bool, StepError> {
        Ok(self
            .target_admin()
            .await?
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&self.mv.target_db()],
            )
            .await
            .map_err(db_err(&self.mv.target.name))?
            .is_some())
    }

    /// Per moved table, its columns on `client` (None: the table is absent).
    async fn columns_on(
        client: &Client,
        label: &str,
        tables: &[String],
    ) -> Result<BTreeMap<String, Option<String>>, StepError> {
        let mut out = BTreeMap::new();
        for t in tables {
            let quoted = quote_qualified(t);
            let exists: Option<String> = client
                .query_one("SELECT to_regclass($1)::text", &[&quoted])
                .await
                .map_err(db_err(label))?
                .get(0);
            let columns = match exists {
                None => None,
                Some(_) => client
                    .query_opt(plan::COLUMNS_TEXT_SQL, &[&vec![quoted.clone()]])
                    .await
                    .map_err(db_err(label))?
                    .map(|r| r.get::<_, String>(1)),
            };
            out.insert(t.clone(), columns);
        }
        Ok(out)
    }

    /// `Ok(true)`: the target needs the schema; `Ok(false)`: it has every table, compatible.
    async fn target_needs_schema(&self, tables: &[String]) -> Result<bool, StepError> {
        if !self.target_database_exists().await? {
            return Ok(true);
        }
        let source = Self::columns_on(&*self.source().await?, &self.s_label(), tables).await?;
        let target = Self::columns_on(&*self.target().await?, &self.t_label(), tables).await?;
        let present = target.values().filter(|c| c.is_some()).count();
        if present == 0 {
            return Ok(true);
        }
        let mut problems = Vec::new();
        for (t, cols) in &target {
            match cols {
                None => problems.push(format!("{t} is missing")),
                Some(c) if Some(c) != source.get(t).and_then(|s| s.as_ref()) => {
                    problems.push(format!(
                        "{t} has ({c}) on the target and ({}) on the source",
                        source.get(t).cloned().flatten().unwrap_or_default()
                    ))
                }
                Some(_) => {}
            }
        }
        let functions = |rows: Vec<tokio_postgres::Row>| -> std::collections::BTreeSet<String> {
            rows.iter().map(|r| r.get(0)).collect()
        };
        let on_source = functions(
            self.source()
                .await?
                .query(plan::FUNCTIONS_SQL, &[])
                .await
                .map_err(db_err(&self.s_label()))?,
        );
        let on_target = functions(
            self.target()
                .await?
                .query(plan::FUNCTIONS_SQL, &[])
                .await
                .map_err(db_err(&self.t_label()))?,
        );
        let missing: Vec<&String> = on_source.difference(&on_target).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "functions of the source are missing (the application would fail after the cutover): {}",
                missing.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        if problems.is_empty() {
            Ok(false)
        } else {
            Err(StepError::precondition(format!(
                "{} has some of the moved tables but not as the source: {}",
                self.t_label(),
                problems.join("; ")
            )))
        }
    }

    async fn check_target(&self) -> Result<String, StepError> {
        let version: String = self
            .target_admin()
            .await?
            .query_one("SHOW server_version_num", &[])
            .await
            .map_err(db_err(&self.mv.target.name))?
            .get(0);
        let major = version.parse::<u32>().unwrap_or(0) / 10_000;
        if major < self.mv.source.version {
            return Err(StepError::precondition(format!(
                "{} runs PostgreSQL {major}, older than the source's {}",
                self.mv.target.name, self.mv.source.version
            )));
        }
        let (tables, _, _) = self.discover().await?;
        let needs = self.target_needs_schema(&tables).await?;
        Ok(format!(
            "{} runs PostgreSQL {major}; {}",
            self.mv.target.name,
            if needs {
                "the schema step restores the source's schema there".to_string()
            } else {
                format!(
                    "{} has every moved table with the source's columns",
                    self.t_label()
                )
            }
        ))
    }

    async fn preflight(&self) -> Vec<PreconditionResult> {
        let long = async {
            let client = self
                .ctx
                .node_client(&self.mv.source, &self.mv.source.maintenance_db)
                .await?;
            check_long_transactions(&client).await
        };
        vec![
            verdict("keys", self.check_keys().await),
            verdict("wal-level", self.check_wal_level().await),
            verdict("replication-capacity", self.check_capacity().await),
            verdict("source-disk", self.check_disk().await),
            verdict("large-objects", self.check_large_objects().await),
            verdict("target", self.check_target().await),
            verdict("no-long-transactions", long.await),
        ]
    }

    async fn fingerprint(&self) -> Result<String, StepError> {
        let quoted: Vec<String> = self
            .memory
            .tables
            .iter()
            .map(|t| quote_qualified(t))
            .collect();
        Ok(self
            .source()
            .await?
            .query_one(plan::FINGERPRINT_SQL, &[&quoted])
            .await
            .map_err(db_err(&self.s_label()))?
            .get(0))
    }

    /// Stop with a clear message when the moved tables' columns changed on the source.
    async fn check_no_ddl(&self) -> Result<(), StepError> {
        let now = self.fingerprint().await?;
        if Some(&now) == self.memory.fingerprint.as_ref() {
            return Ok(());
        }
        let current =
            Self::columns_on(&*self.source().await?, &self.s_label(), &self.memory.tables).await?;
        let changed: Vec<String> = self
            .memory
            .columns
            .iter()
            .filter(|(t, before)| current.get(*t).cloned().flatten().as_ref() != Some(*before))
            .map(|(t, before)| {
                format!(
                    "{t}: was ({before}), now ({})",
                    current
                        .get(t)
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| "dropped".into())
                )
            })
            .collect();
        Err(StepError::gate(format!(
            "schema change (DDL) on {} during the move: {}. The stream would stall or drop data; make the same change on {}, or roll back and start again",
            self.s_label(),
            if changed.is_empty() { "the moved tables' columns changed".to_string() } else { changed.join("; ") },
            self.t_label()
        )))
    }

    async fn record_tables(&mut self, sink: &Sink) -> Result<String, StepError> {
        let (tables, refused, warnings) = self.discover().await?;
        if !refused.is_empty() {
            return Err(StepError::precondition(refused.join("; ")));
        }
        for w in &warnings {
            sink.output(format!("WARNING: {w}"));
        }
        let columns = Self::columns_on(&*self.source().await?, &self.s_label(), &tables).await?;
        self.memory.columns = columns
            .into_iter()
            .filter_map(|(t, c)| c.map(|c| (t, c)))
            .collect();
        self.memory.tables = tables;
        self.memory.fingerprint = Some(self.fingerprint().await?);
        self.remember()?;
        Ok(format!(
            "{} tables recorded: {}",
            self.memory.tables.len(),
            self.memory.tables.join(", ")
        ))
    }

    // ---- wal_level ------------------------------------------------------------------------

    async fn answers(node: &Node) -> bool {
        let settings = SessionSettings {
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Some(Duration::from_secs(5)),
            ..SessionSettings::EXECUTOR
        };
        match pg::connect(&Endpoint::maintenance(node), settings).await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    async fn restart_source(&self, sink: &Sink) -> Result<(), StepError> {
        let node = &self.mv.source;
        self.ctx.forget_clients();
        self.ctx
            .host_run(&node.host, &node.control.stop, HOST_TIMEOUT, sink)
            .await?;
        self.ctx
            .host_run(&node.host, &node.control.start, HOST_TIMEOUT, sink)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Self::answers(node).await {
            if Instant::now() > deadline {
                return Err(format!("{} does not answer after the restart", node.name).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn wal_level(&mut self, sink: &Sink) -> Result<String, StepError> {
        let (level, _, _) = self.capacity().await?;
        if level == "logical" {
            return Ok(format!(
                "{}: wal_level = logical; nothing changed",
                self.mv.source.name
            ));
        }
        if self.memory.wal_level_before.is_none() {
            self.memory.wal_level_before = Some(level.clone());
            self.remember()?;
        }
        let admin = self
            .ctx
            .node_client(&self.mv.source, &self.mv.source.maintenance_db)
            .await?;
        admin
            .batch_execute("ALTER SYSTEM SET wal_level = logical")
            .await
            .map_err(db_err(&self.mv.source.name))?;
        sink.output(format!(
            "{}: wal_level {level} → logical; restarting",
            self.mv.source.name
        ));
        self.restart_source(sink).await?;
        let (now, _, _) = self.capacity().await?;
        if now != "logical" {
            return Err(StepError::Failed(format!(
                "{} still reports wal_level = {now} after the restart",
                self.mv.source.name
            )));
        }
        Ok(format!(
            "{}: wal_level = logical after a restart",
            self.mv.source.name
        ))
    }

    async fn undo_wal_level(&mut self, sink: &Sink) -> Result<String, StepError> {
        let Some(before) = self.memory.wal_level_before.clone() else {
            return Ok("this run did not change wal_level".into());
        };
        let admin = self
            .ctx
            .node_client(&self.mv.source, &self.mv.source.maintenance_db)
            .await?;
        // `before` is one of PostgreSQL's own words (minimal, replica), read from the server.
        admin
            .batch_execute(&format!(
                "ALTER SYSTEM SET wal_level = {}",
                crate::sql::quote_literal(&before)
            ))
            .await
            .map_err(db_err(&self.mv.source.name))?;
        self.restart_source(sink).await?;
        self.memory.wal_level_before = None;
        self.remember()?;
        Ok(format!("wal_level is back to {before} (restarted)"))
    }

    // ---- publication and schema -------------------------------------------------------------

    async fn publication(&mut self) -> Result<String, StepError> {
        if self.mv.citus.is_some() {
            return Ok("into Citus the tool applies the stream itself: no publication".into());
        }
        let src = self.source().await?;
        let label = self.s_label();
        src.batch_execute(plan::CANARY_DDL)
            .await
            .map_err(db_err(&label))?;
        let exists = src
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&self.mv.name],
            )
            .await
            .map_err(db_err(&label))?
            .is_some();
        if !exists {
            src.batch_execute(&self.mv.create_publication_sql(&self.memory.tables))
                .await
                .map_err(db_err(&label))?;
        }
        let published: i64 = src
            .query_one(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1",
                &[&self.mv.name],
            )
            .await
            .map_err(db_err(&label))?
            .get(0);
        let wanted = self.memory.tables.len() as i64 + 1;
        if published != wanted {
            return Err(StepError::Failed(format!(
                "publication {} has {published} tables; expected {wanted}",
                self.mv.name
            )));
        }
        Ok(format!(
            "publication {} of {} tables and {CANARY_TABLE}",
            self.mv.name,
            self.memory.tables.len()
        ))
    }

    async fn undo_publication(&mut self) -> Result<String, StepError> {
        let src = self.source().await?;
        src.batch_execute(&format!(
            "{}; DROP TABLE IF EXISTS {CANARY_TABLE}",
            self.mv.drop_publication_sql()
        ))
        .await
        .map_err(db_err(&self.s_label()))?;
        Ok(format!(
            "publication {} and {CANARY_TABLE} dropped",
            self.mv.name
        ))
    }

    async fn schema(&mut self, sink: &Sink) -> Result<String, StepError> {
        let tdb = self.mv.target_db().to_string();
        if !self.target_database_exists().await? {
            self.memory.created_target_db = true;
            self.remember()?;
            self.target_admin()
                .await?
                .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&tdb)))
                .await
                .map_err(db_err(&self.mv.target.name))?;
            sink.output(format!("created database {tdb} on {}", self.mv.target.name));
        }
        let mut tables = self.memory.tables.clone();
        if self.mv.citus.is_none() {
            tables.push(CANARY_TABLE.to_string());
        }
        if self.target_needs_schema(&tables).await? {
            self.ctx
                .host_run(
                    &self.mv.source.host,
                    &self.mv.schema_command(),
                    HOST_TIMEOUT,
                    sink,
                )
                .await?;
        } else {
            sink.output(format!(
                "{} has every table already, with the source's columns: no restore",
                self.t_label()
            ));
        }
        if self.target_needs_schema(&tables).await? {
            return Err(StepError::Failed(format!(
                "the moved tables are still missing on {} after the restore",
                self.t_label()
            )));
        }
        let tgt = self.target().await?;
        for (table, sql) in self.mv.distribute_sql(&self.memory.tables) {
            let done = tgt
                .query_opt(
                    "SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::text::regclass",
                    &[&quote_qualified(&table)],
                )
                .await
                .map_err(db_err(&self.t_label()))?
                .is_some();
            if !done {
                tgt.batch_execute(&sql)
                    .await
                    .map_err(db_err(&self.t_label()))?;
                sink.output(format!("{table}: {sql}"));
            }
        }
        Ok(format!(
            "{} tables on {} with the source's columns",
            self.memory.tables.len(),
            self.t_label()
        ))
    }

    async fn undo_schema(&mut self) -> Result<String, StepError> {
        if !self.memory.created_target_db {
            return Ok(format!("{} existed before this run: kept", self.t_label()));
        }
        self.ctx.forget_clients();
        self.target_admin()
            .await?
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(self.mv.target_db())
            ))
            .await
            .map_err(db_err(&self.mv.target.name))?;
        self.memory.created_target_db = false;
        self.remember()?;
        Ok(format!("{} dropped", self.t_label()))
    }

    // ---- slot and initial copy ----------------------------------------------------------------

    /// Drop this move's slot on the source, ending the session that holds it first.
    async fn drop_slot(&self, sink: &Sink) -> Result<bool, StepError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.slot_exists().await? {
                None => return Ok(false),
                Some((true, Some(pid))) => {
                    sink.output(format!(
                        "slot {} is held by pid {pid}: terminating it",
                        self.mv.name
                    ));
                    self.source()
                        .await?
                        .execute("SELECT pg_terminate_backend($1)", &[&pid])
                        .await
                        .map_err(db_err(&self.s_label()))?;
                }
                Some(_) => {
                    let dropped = self
                        .source()
                        .await?
                        .batch_execute(&self.mv.drop_slot_sql())
                        .await;
                    if dropped.is_ok() {
                        sink.output(format!("slot {} dropped", self.mv.name));
                        return Ok(true);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(StepError::Failed(format!(
                    "slot {} could not be dropped within 30 s",
                    self.mv.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Empty the moved tables on the target and forget their ledger rows, in one transaction.
    async fn empty_target_tables(&self) -> Result<(), StepError> {
        if self.memory.tables.is_empty() || !self.target_database_exists().await? {
            return Ok(());
        }
        let tgt = self.target().await?;
        let label = self.t_label();
        let quoted: Vec<String> = self
            .memory
            .tables
            .iter()
            .map(|t| quote_qualified(t))
            .collect();
        let present: Vec<String> = {
            let mut present = Vec::new();
            for q in &quoted {
                let exists: Option<String> = tgt
                    .query_one("SELECT to_regclass($1)::text", &[q])
                    .await
                    .map_err(db_err(&label))?
                    .get(0);
                if exists.is_some() {
                    present.push(q.clone());
                }
            }
            present
        };
        let ledger: Option<String> = tgt
            .query_one(
                "SELECT to_regclass('public.cutover_copy_ledger')::text",
                &[],
            )
            .await
            .map_err(db_err(&label))?
            .get(0);
        let mut sql = String::from("BEGIN; ");
        if !present.is_empty() {
            sql.push_str(&format!("TRUNCATE {}; ", present.join(", ")));
        }
        if ledger.is_some() {
            let names: Vec<String> = self
                .memory
                .tables
                .iter()
                .map(|t| crate::sql::quote_literal(t))
                .collect();
            sql.push_str(&format!(
                "DELETE FROM public.cutover_copy_ledger WHERE target_table IN ({}); ",
                names.join(", ")
            ));
        }
        sql.push_str("COMMIT");
        tgt.batch_execute(&sql).await.map_err(db_err(&label))?;
        Ok(())
    }

    fn inner_copy(&self) -> Result<TableCopyActions, StepError> {
        let copy = TableCopy {
            params: CopyParams {
                from: self.mv.params.from.clone(),
                to: self.mv.params.to.clone(),
                start_date: None,
                end_date: None,
                tables: self.memory.tables.clone(),
                split_rows: DEFAULT_SPLIT_ROWS,
                frozen_before: None,
                maps: BTreeMap::new(),
            },
            policy: CopyPolicy {
                jobs: self.mv.params.jobs,
                retry_errors: true,
                stop_on_error: true,
                confirm: false,
            },
            inventory: self.mv.inventory.clone(),
            source: self.mv.source.clone(),
            target: self.mv.target.clone(),
            citus: self.mv.citus.clone(),
        };
        TableCopyActions::new(copy, self.run_dir.clone(), self.trust_on_first_use)
            .map_err(StepError::Setup)
    }

    /// Run every item of `step` of the inner table copy, `jobs` at a time.
    async fn run_items(
        &self,
        inner: &mut TableCopyActions,
        step: CopyStep,
        sink: &Sink,
    ) -> Result<Vec<String>, StepError> {
        let step = step.step(format!("initial copy: {}", <&str>::from(step)));
        let ids: Vec<String> = inner
            .tables()
            .unwrap_or_default()
            .iter()
            .flat_map(CopyTable::item_ids)
            .collect();
        let kill_after: Option<usize> = std::env::var(KILL_DURING_COPY_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        let futures: Vec<_> = ids
            .iter()
            .map(|id| {
                let future = inner.run_item(
                    &step,
                    &crate::engine::ItemId::new(id.clone()),
                    ItemAttempt {
                        number: 1,
                        recheck: false,
                    },
                    sink.clone(),
                );
                let id = id.clone();
                async move { (id, future.await) }
            })
            .collect();
        let mut done = Vec::new();
        let mut results = futures_util::stream::iter(futures).buffer_unordered(self.mv.params.jobs);
        while let Some((id, result)) = results.next().await {
            match result {
                Ok(detail) => {
                    sink.output(format!("{id}: {detail}"));
                    done.push(detail);
                    if step.id.as_str() == "copy" && kill_after == Some(done.len()) {
                        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                    }
                }
                Err(reason) => {
                    return Err(StepError::Failed(format!("{id}: {reason}")));
                }
            }
        }
        Ok(done)
    }

    async fn initial_copy(&mut self, recheck: bool, sink: &Sink) -> Result<String, StepError> {
        if self.drop_slot(sink).await? || recheck {
            sink.output(format!(
                "an earlier attempt's snapshot died with its process: emptying the moved tables on {} and starting the copy again under a new slot",
                self.t_label()
            ));
        }
        self.empty_target_tables().await?;
        if self.mv.citus.is_some() {
            // The DDL capture and the canary table, before the slot: the stream carries both.
            logical_apply::install_source(&*self.source().await?)
                .await
                .map_err(apply_err)?;
            logical_apply::install_target(&*self.target().await?)
                .await
                .map_err(apply_err)?;
            self.target()
                .await?
                .batch_execute(&format!(
                    "DELETE FROM public.{} WHERE origin = {}",
                    quote_ident(logical_apply::PROGRESS_TABLE),
                    crate::sql::quote_literal(&self.mv.name)
                ))
                .await
                .map_err(db_err(&self.t_label()))?;
        }
        let started = Instant::now();
        let exported = slot::create_exported(
            &Endpoint::node(&self.mv.source, self.mv.source_db()),
            &self.mv.name,
            self.mv.plugin(),
            self.mv.source.version,
        )
        .await
        .map_err(|e| StepError::Failed(e.to_string()))?;
        sink.output(format!(
            "slot {} created at {}, snapshot {} exported",
            exported.slot, exported.consistent_point, exported.snapshot
        ));
        self.memory.consistent_point = Some(exported.consistent_point.clone());
        self.remember()?;
        let mut inner = self.inner_copy()?;
        inner.set_snapshot(Some(exported.snapshot.clone()));
        inner.set_replica_role(true);
        let outcome = async {
            inner
                .action(
                    &CopyStep::Preflight.step("initial copy: preflight"),
                    false,
                    sink.clone(),
                )
                .await?;
            inner
                .action(
                    &CopyStep::Ledger.step("initial copy: ledger"),
                    false,
                    sink.clone(),
                )
                .await?;
            self.run_items(&mut inner, CopyStep::Copy, sink).await?;
            self.run_items(&mut inner, CopyStep::Verify, sink).await
        }
        .await;
        exported.release().await;
        let verified = outcome?;
        let rows: u64 = inner.state().tables.values().map(|t| t.rows()).sum();
        self.memory.copy_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        self.memory.copied_rows = rows;
        self.remember()?;
        Ok(format!(
            "{} tables ({rows} rows) copied and verified under the snapshot of slot {} at {}",
            verified.len(),
            self.mv.name,
            self.memory.consistent_point.as_deref().unwrap_or("?")
        ))
    }

    async fn undo_initial_copy(&mut self, sink: &Sink) -> Result<String, StepError> {
        self.drop_slot(sink).await?;
        self.empty_target_tables().await?;
        Ok(format!(
            "slot {} gone; the moved tables on {} are empty",
            self.mv.name,
            self.t_label()
        ))
    }

    // ---- subscription, catch-up ---------------------------------------------------------------

    async fn subscription_exists(&self) -> Result<bool, StepError> {
        Ok(self
            .target()
            .await?
            .query_opt(
                "SELECT 1 FROM pg_subscription WHERE subname = $1",
                &[&self.mv.name],
            )
            .await
            .map_err(db_err(&self.t_label()))?
            .is_some())
    }

    async fn apply_errors(&self) -> Result<(i64, bool), StepError> {
        let row = self
            .target()
            .await?
            .query_one(plan::APPLY_ERRORS_SQL, &[&self.mv.name])
            .await
            .map_err(db_err(&self.t_label()))?;
        Ok((row.get(0), row.get(1)))
    }

    async fn start_apply(&mut self, sink: &Sink) -> Result<String, StepError> {
        self.ensure_applying().await?;
        let proof = logical_apply::canary(
            &*self.source().await?,
            &*self.target().await?,
            CANARY_TIMEOUT,
        )
        .await;
        match proof {
            Ok(proof) => {
                let ms = proof.seen_after.as_secs_f64() * 1000.0;
                self.memory.canary_ms = Some(ms);
                self.remember()?;
                let detail = format!(
                    "the tool's apply runs: the canary written at {} is visible through the coordinator {} {ms:.0} ms later",
                    proof.written_lsn,
                    self.t_label()
                );
                sink.gate(detail.clone(), true);
                Ok(detail)
            }
            Err(e) => {
                let detail = format!(
                    "{e}{}",
                    self.apply_failure()
                        .map(|f| format!(" (the apply: {f})"))
                        .unwrap_or_default()
                );
                sink.gate(detail.clone(), false);
                Err(StepError::gate(detail))
            }
        }
    }

    async fn subscribe(&mut self, sink: &Sink) -> Result<String, StepError> {
        if self.mv.citus.is_some() {
            return self.start_apply(sink).await;
        }
        let tgt = self.target().await?;
        if !self.subscription_exists().await? {
            tgt.batch_execute(&self.mv.create_subscription_sql())
                .await
                .map_err(db_err(&self.t_label()))?;
            sink.output(format!(
                "subscription {} created on {} (connection: {})",
                self.mv.name,
                self.t_label(),
                crate::redact::redact(&self.mv.source_conninfo())
            ));
        }
        self.memory.apply_errors_baseline = self.apply_errors().await?.0;
        self.remember()?;
        let token = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        self.source()
            .await?
            .execute(plan::CANARY_WRITE_SQL, &[&token])
            .await
            .map_err(db_err(&self.s_label()))?;
        loop {
            let seen: Option<String> = tgt
                .query_opt(plan::CANARY_READ_SQL, &[])
                .await
                .map_err(db_err(&self.t_label()))?
                .map(|r| r.get(0));
            if seen.as_deref() == Some(token.as_str()) {
                break;
            }
            if started.elapsed() > CANARY_TIMEOUT {
                let (errors, running) = self.apply_errors().await?;
                let detail = format!(
                    "the canary row written on {} never became visible on {} in {CANARY_TIMEOUT:?} (apply worker {}, {} apply errors): the subscription does not deliver rows where queries see them; the stream is not trusted",
                    self.s_label(),
                    self.t_label(),
                    if running { "running" } else { "not running" },
                    errors
                );
                sink.gate(detail.clone(), false);
                return Err(StepError::gate(detail));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.memory.canary_ms = Some(ms);
        self.remember()?;
        let detail = format!(
            "canary row visible on {} {ms:.0} ms after it was written on {}",
            self.t_label(),
            self.s_label()
        );
        sink.gate(detail.clone(), true);
        Ok(detail)
    }

    async fn undo_subscribe(&mut self) -> Result<String, StepError> {
        if self.mv.citus.is_some() {
            if let Some(task) = self.apply.take() {
                let _ = task.stop.send(true);
                let _ = task.handle.await;
            }
            return Ok("the apply task is stopped".into());
        }
        if !self.target_database_exists().await? || !self.subscription_exists().await? {
            return Ok("no subscription".into());
        }
        let tgt = self.target().await?;
        for sql in self.mv.drop_subscription_sql().split("; ") {
            tgt.batch_execute(sql)
                .await
                .map_err(db_err(&self.t_label()))?;
        }
        Ok(format!(
            "subscription {} dropped; slot kept for the initial copy's undo",
            self.mv.name
        ))
    }

    async fn slot_lag(&self) -> Result<(i64, i64, bool), StepError> {
        let row = self
            .source()
            .await?
            .query_opt(plan::SLOT_LAG_SQL, &[&self.mv.name])
            .await
            .map_err(db_err(&self.s_label()))?
            .ok_or_else(|| {
                StepError::precondition(format!("slot {} is gone on the source", self.mv.name))
            })?;
        Ok((
            row.get::<_, Option<i64>>(0).unwrap_or(0),
            row.get::<_, Option<i64>>(1).unwrap_or(0),
            row.get(2),
        ))
    }

    async fn check_apply(&mut self) -> Result<(), StepError> {
        if self.mv.citus.is_some() {
            if let Some(failure) = self.apply_failure() {
                return Err(StepError::gate(format!(
                    "the tool's apply into {} stopped: {failure}. Slot {} retains WAL on {} meanwhile; fix the cause and run again, or roll back to drop the slot",
                    self.t_label(),
                    self.mv.name,
                    self.mv.source.name
                )));
            }
            return self.ensure_applying().await;
        }
        let (errors, _) = self.apply_errors().await?;
        if errors > self.memory.apply_errors_baseline {
            return Err(StepError::gate(format!(
                "the subscription's apply on {} failed {} times since it started (a type mismatch or a schema change on one side; the target's log names the row): the stream is stalled while slot {} retains WAL on {}. Fix the cause, or roll back to drop the slot",
                self.t_label(),
                errors - self.memory.apply_errors_baseline,
                self.mv.name,
                self.mv.source.name
            )));
        }
        Ok(())
    }

    async fn catch_up(&mut self, sink: &Sink) -> Result<String, StepError> {
        let started = Instant::now();
        let mut last_sample = Instant::now() - Duration::from_secs(2);
        let mut last_report = Instant::now();
        loop {
            self.check_no_ddl().await?;
            self.check_apply().await?;
            let (lag, retained, active) = self.slot_lag().await?;
            self.memory.peak_retained_bytes = self.memory.peak_retained_bytes.max(retained);
            if last_sample.elapsed() >= Duration::from_secs(1) {
                last_sample = Instant::now();
                self.memory
                    .lag_samples
                    .push((started.elapsed().as_secs_f64(), lag));
            }
            if active && lag <= self.mv.params.sync_bytes as i64 {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                self.memory.sync_ms = Some(ms);
                self.remember()?;
                return Ok(format!(
                    "in sync after {ms:.0} ms: slot lag {lag} B, retaining {} on {}",
                    crate::readings::text::human_bytes(retained),
                    self.mv.source.name
                ));
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                sink.output(format!(
                    "slot lag {} ({}), retaining {}",
                    crate::readings::text::human_bytes(lag),
                    if active { "streaming" } else { "not streaming" },
                    crate::readings::text::human_bytes(retained)
                ));
            }
            if started.elapsed() > SYNC_TIMEOUT {
                self.remember()?;
                return Err(StepError::gate(format!(
                    "slot lag still {lag} B after {SYNC_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // ---- the tool's apply (Citus) -------------------------------------------------------------

    async fn new_applier(&self) -> Result<Applier, StepError> {
        let mut config = ApplyConfig::new(&self.mv.name);
        config.tables = self.memory.tables.clone();
        Applier::connect(
            &Endpoint::node(&self.mv.source, self.mv.source_db()),
            &Endpoint::node(&self.mv.target, self.mv.target_db()),
            config,
        )
        .await
        .map_err(apply_err)
    }

    /// Start the apply task unless it runs.
    async fn ensure_applying(&mut self) -> Result<(), StepError> {
        if self.apply.as_ref().is_some_and(|t| !t.handle.is_finished()) {
            return Ok(());
        }
        if let Some(task) = self.apply.take() {
            if let Ok((_, Err(e))) = task.handle.await {
                return Err(StepError::gate(format!("the apply stopped: {e}")));
            }
        }
        let mut applier = self.new_applier().await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (status_tx, status) = tokio::sync::watch::channel(applier.status().clone());
        let handle = tokio::spawn(async move {
            let result = logical_apply::run_apply(&mut applier, stopped, status_tx).await;
            (applier, result)
        });
        self.apply = Some(ApplyTask {
            stop,
            status,
            handle,
        });
        Ok(())
    }

    /// Stop the apply task and hand its applier back (a new one when none ran).
    async fn stop_applying(&mut self) -> Result<Applier, StepError> {
        match self.apply.take() {
            Some(task) => {
                let _ = task.stop.send(true);
                let (applier, result) = task
                    .handle
                    .await
                    .map_err(|e| StepError::Failed(format!("the apply task: {e}")))?;
                result.map_err(|e| StepError::gate(format!("the apply stopped: {e}")))?;
                Ok(applier)
            }
            None => self.new_applier().await,
        }
    }

    /// The apply's error, if its task stopped on one (a schema change names the DDL).
    fn apply_failure(&self) -> Option<String> {
        self.apply
            .as_ref()
            .and_then(|t| t.status.borrow().error.clone())
    }

    // ---- the cutover --------------------------------------------------------------------------

    async fn open_snapshot_holder(&self) -> Result<Client, StepError> {
        Ok(pg::connect(
            &Endpoint::node(&self.mv.target, self.mv.target_db()),
            SessionSettings {
                statement_timeout: None,
                ..SessionSettings::EXECUTOR
            },
        )
        .await?)
    }

    async fn stop_traffic(&mut self, sink: &Sink) -> Result<String, StepError> {
        if self.snapshot_holder.is_none() && self.mv.citus.is_none() {
            self.snapshot_holder = Some(self.open_snapshot_holder().await?);
        }
        if self.memory.traffic_stopped_at.is_none() {
            self.memory.traffic_stopped_at = Some(Utc::now());
            self.remember()?;
        }
        let aliases = self.aliases();
        traffic::pause(&self.ctx, &aliases, HOST_TIMEOUT, sink, || {}).await?;
        Ok(format!("paused: {}", traffic::names(&aliases)))
    }

    async fn resume_traffic(&mut self, sink: &Sink) -> Result<String, StepError> {
        traffic::resume(&self.ctx, &self.aliases(), sink).await?;
        if let Some(stopped) = self.memory.traffic_stopped_at.take() {
            let window = (Utc::now() - stopped).num_microseconds().unwrap_or(0) as f64 / 1000.0;
            sink.output(format!("write pause: {window:.1} ms (PAUSE → RESUME)"));
            self.memory.pause_window_ms = Some(window);
            self.remember()?;
        }
        traffic::start_hook(&self.ctx, HOST_TIMEOUT, sink).await?;
        traffic::check_flowing(&self.ctx, &self.aliases()).await?;
        Ok("traffic flows".into())
    }

    async fn lsn_gate(&mut self, sink: &Sink) -> Result<String, StepError> {
        let started = Instant::now();
        self.check_no_ddl().await?;
        self.check_apply().await?;
        let src = self.source().await?;
        let label = self.s_label();
        let checks_ms = started.elapsed().as_secs_f64() * 1000.0;
        if self.mv.citus.is_some() {
            return self.citus_gate(started, checks_ms, sink).await;
        }
        // The marker is a canary row: the target applies in commit order, so once it shows
        // there, every transaction the source committed before it (all of them: traffic is
        // paused) is applied and visible on the target.
        let token = format!("cutover gate {}", uuid::Uuid::new_v4());
        src.execute(plan::CANARY_WRITE_SQL, &[&token])
            .await
            .map_err(db_err(&label))?;
        let lsn: String = src
            .query_one(crate::runbooks::shard_split::plan::PRIMARY_LSN_SQL, &[])
            .await
            .map_err(db_err(&label))?
            .get(0);
        self.memory.gate_lsn = Some(lsn.clone());
        let tgt = self.target().await?;
        let t_label = self.t_label();
        // Half the pause bound: a refusal here leaves time to roll back and RESUME within it.
        let wait = self.mv.params.pause_bound / 2;
        let deadline = Instant::now() + wait;
        let confirmed = loop {
            let row = tgt
                .query_one(plan::APPLIED_SQL, &[&self.mv.name])
                .await
                .map_err(db_err(&t_label))?;
            let (seen, applied): (Option<String>, Option<String>) = (row.get(0), row.get(1));
            if seen.as_deref() == Some(token.as_str()) {
                break applied.unwrap_or_default();
            }
            if Instant::now() > deadline {
                let detail = format!(
                    "the gate's canary row, committed on {} at or before {lsn}, is not visible on {t_label} after {wait:?} (applied up to {}); the cutover is refused",
                    self.mv.source.name,
                    applied.as_deref().unwrap_or("none")
                );
                sink.gate(detail.clone(), false);
                return Err(StepError::gate(detail));
            }
            tokio::time::sleep(GATE_POLL).await;
        };
        let confirmed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let holder = match self.snapshot_holder.take() {
            Some(holder) if !holder.is_closed() => holder,
            _ => self.open_snapshot_holder().await?,
        };
        holder
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(db_err(&self.t_label()))?;
        let snapshot: String = holder
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(db_err(&self.t_label()))?
            .get(0);
        self.cutover_snapshot = Some((holder, snapshot));
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.memory.gate_confirmed = Some(confirmed.clone());
        self.memory.gate_ms = Some(ms);
        self.memory.gate_wait_ms = Some(confirmed_ms - checks_ms);
        self.remember()?;
        let detail = format!(
            "{} applied {}'s transactions up to {confirmed} (the canary row written while paused, {}'s LSN after it {lsn}, is visible there): {checks_ms:.1} ms checks, {:.1} ms to the canary, {ms:.1} ms with the target's snapshot",
            t_label, self.mv.source.name, self.mv.source.name, confirmed_ms - checks_ms
        );
        sink.gate(detail.clone(), true);
        Ok(detail)
    }

    /// Into Citus: stop the apply loop, then apply everything up to the source's LSN read while
    /// paused and record it on the target ([`Applier::caught_up_to`]).
    async fn citus_gate(
        &mut self,
        started: Instant,
        checks_ms: f64,
        sink: &Sink,
    ) -> Result<String, StepError> {
        let src = self.source().await?;
        let lsn: String = src
            .query_one(crate::runbooks::shard_split::plan::PRIMARY_LSN_SQL, &[])
            .await
            .map_err(db_err(&self.s_label()))?
            .get(0);
        self.memory.gate_lsn = Some(lsn.clone());
        let mut applier = self.stop_applying().await?;
        let parsed = lsn
            .parse()
            .map_err(|e| StepError::Failed(format!("LSN {lsn}: {e:?}")))?;
        let proof = match applier.caught_up_to(parsed).await {
            Ok(proof) => proof,
            Err(e) => {
                let detail = format!(
                    "the apply could not reach {}'s LSN {lsn}: {e}; the cutover is refused",
                    self.mv.source.name
                );
                sink.gate(detail.clone(), false);
                return Err(StepError::gate(detail));
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.memory.gate_confirmed = Some(proof.applied_lsn.to_string());
        self.memory.gate_ms = Some(ms);
        self.memory.gate_wait_ms = Some(ms - checks_ms);
        self.remember()?;
        let detail = format!(
            "{} applied up to {} ≥ {}'s LSN {lsn} read while paused ({} transactions in the gate), recorded in {}: {ms:.1} ms",
            self.t_label(),
            proof.applied_lsn,
            self.mv.source.name,
            proof.transactions,
            logical_apply::PROGRESS_TABLE
        );
        sink.gate(detail.clone(), true);
        Ok(detail)
    }

    async fn sequences(&mut self, sink: &Sink) -> Result<String, StepError> {
        let src = self.source().await?;
        let tgt = self.target().await?;
        let (s_label, t_label) = (self.s_label(), self.t_label());
        let (fixes, behind) = set_sequences(
            (&src, &s_label),
            (&tgt, &t_label),
            &self.memory.tables,
            self.mv.params.sequence_gap,
            sink,
        )
        .await?;
        self.memory.sequences = fixes;
        self.remember()?;
        if !behind.is_empty() {
            return Err(StepError::gate(format!(
                "nextval is not past the maximum for: {}",
                behind.join(", ")
            )));
        }
        Ok(format!(
            "{} sequences on {t_label}: every nextval > max(column) and > the source's value",
            self.memory.sequences.len()
        ))
    }

    async fn repoint(&self, sink: &Sink) -> Result<String, StepError> {
        self.ctx.back_up_inventory(&self.inventory_path)?;
        for route in &self.mv.routes {
            let b = &route.bouncer;
            let targets: Vec<(&str, crate::pgbouncer_ini::AliasTarget)> = route
                .aliases
                .iter()
                .map(|alias| (alias.name.as_str(), self.mv.new_alias_target()))
                .collect();
            repoint::repoint(&self.ctx, b, &ini_backup(b), &b.config, &targets, sink).await?;
        }
        self.ctx
            .rewrite_inventory(&self.inventory_path, &self.mv.inventory_after, sink)?;
        self.check_routes(&self.mv.target).await
    }

    async fn undo_repoint(&self, sink: &Sink) -> Result<String, StepError> {
        for route in &self.mv.routes {
            repoint::undo_repoint(&self.ctx, &route.bouncer, &ini_backup(&route.bouncer), sink)
                .await?;
        }
        self.ctx.restore_inventory(&self.inventory_path, sink)?;
        self.check_routes(&self.mv.source).await
    }

    async fn check_routes(&self, node: &Node) -> Result<String, StepError> {
        let mut wrong = Vec::new();
        let mut count = 0;
        for route in &self.mv.routes {
            let admin = self.ctx.bouncer_admin(&route.bouncer).await?;
            let reading = queries::pgbouncer(&admin, &route.bouncer.name).await?;
            for alias in &route.aliases {
                count += 1;
                let port = reading
                    .databases
                    .iter()
                    .find(|d| d.name == alias.name)
                    .and_then(|d| d.port);
                if port != Some(i64::from(node.port)) {
                    wrong.push(format!("{} → port {port:?}", alias.name));
                }
            }
        }
        if wrong.is_empty() {
            Ok(format!(
                "{count} aliases route to {} (port {})",
                node.name, node.port
            ))
        } else {
            Err(format!("aliases not routed to {}: {}", node.name, wrong.join(", ")).into())
        }
    }

    // ---- the way back ---------------------------------------------------------------------------

    async fn reverse_exists(&self) -> Result<(bool, bool, bool), StepError> {
        let back = self.mv.reverse_name();
        let tgt = self.target().await?;
        let row = tgt
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1), EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&back],
            )
            .await
            .map_err(db_err(&self.t_label()))?;
        let sub = self
            .source()
            .await?
            .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1", &[&back])
            .await
            .map_err(db_err(&self.s_label()))?
            .is_some();
        Ok((row.get(0), row.get(1), sub))
    }

    /// Inside the pause, past the gate and the sequences: the target takes no write until
    /// RESUME, so the slot created now starts exactly at the cutover.
    async fn reverse_stream(&mut self, sink: &Sink) -> Result<String, StepError> {
        let back = self.mv.reverse_name();
        let (s_label, t_label) = (self.s_label(), self.t_label());
        let src = self.source().await?;
        let tgt = self.target().await?;
        tgt.batch_execute(plan::BACK_CANARY_DDL)
            .await
            .map_err(db_err(&t_label))?;
        src.batch_execute(plan::BACK_CANARY_DDL)
            .await
            .map_err(db_err(&s_label))?;
        let (publication, slot, subscription) = self.reverse_exists().await?;
        if !publication {
            tgt.batch_execute(&self.mv.create_reverse_publication_sql(&self.memory.tables))
                .await
                .map_err(db_err(&t_label))?;
        }
        if !slot {
            let lsn: String = tgt
                .query_one(&self.mv.create_reverse_slot_sql(), &[])
                .await
                .map_err(db_err(&t_label))?
                .get(0);
            sink.output(format!("slot {back} on {t_label}: consistent point {lsn}"));
            self.memory.reverse_slot_lsn = Some(lsn);
            self.remember()?;
        }
        if !subscription {
            src.batch_execute(&self.mv.create_reverse_subscription_sql())
                .await
                .map_err(db_err(&s_label))?;
            sink.output(format!(
                "subscription {back} created (disabled) on {s_label} (connection: {})",
                crate::redact::redact(&self.mv.target_conninfo())
            ));
        }
        Ok(format!(
            "the way back is ready: slot {back} on {t_label} from {}, subscription {back} on {s_label}, enabled once the forward stream is dropped",
            self.memory.reverse_slot_lsn.as_deref().unwrap_or("(an earlier attempt)")
        ))
    }

    /// Drop the reverse subscription on the source, then its slot and publication on the
    /// target, and the move-back canaries. Converges when repeated.
    async fn retire_reverse_stream(&mut self, sink: &Sink) -> Result<String, StepError> {
        let back = self.mv.reverse_name();
        let (s_label, t_label) = (self.s_label(), self.t_label());
        let src = self.source().await?;
        if src
            .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1", &[&back])
            .await
            .map_err(db_err(&s_label))?
            .is_some()
        {
            for sql in self.mv.drop_reverse_subscription_sql().split("; ") {
                src.batch_execute(sql).await.map_err(db_err(&s_label))?;
            }
            sink.output(format!("subscription {back} dropped on {s_label}"));
        }
        if self.target_database_exists().await? {
            let tgt = self.target().await?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let held: Option<Option<i32>> = tgt
                    .query_opt(
                        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                        &[&back],
                    )
                    .await
                    .map_err(db_err(&t_label))?
                    .map(|r| r.get(0));
                match held {
                    None => break,
                    Some(Some(pid)) => {
                        sink.output(format!("slot {back} is held by pid {pid}: terminating it"));
                        tgt.execute("SELECT pg_terminate_backend($1)", &[&pid])
                            .await
                            .map_err(db_err(&t_label))?;
                    }
                    Some(None) => {
                        if tgt
                            .batch_execute(&self.mv.drop_reverse_slot_sql())
                            .await
                            .is_ok()
                        {
                            sink.output(format!("slot {back} dropped on {t_label}"));
                            break;
                        }
                    }
                }
                if Instant::now() > deadline {
                    return Err(StepError::Failed(format!(
                        "slot {back} on {t_label} could not be dropped within 30 s"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tgt.batch_execute(&format!(
                "{}; DROP TABLE IF EXISTS {}",
                self.mv.drop_reverse_publication_sql(),
                plan::BACK_CANARY_TABLE
            ))
            .await
            .map_err(db_err(&t_label))?;
        }
        src.batch_execute(&format!("DROP TABLE IF EXISTS {}", plan::BACK_CANARY_TABLE))
            .await
            .map_err(db_err(&s_label))?;
        let left = if self.target_database_exists().await? {
            self.reverse_exists().await?
        } else {
            (false, false, false)
        };
        if left != (false, false, false) {
            return Err(StepError::Failed(format!(
                "the reverse stream {back} is not fully gone (publication, slot, subscription): {left:?}"
            )));
        }
        Ok(format!(
            "the reverse stream {back} is retired: no subscription on {s_label}, no slot or publication on {t_label}"
        ))
    }

    /// PAUSE, the gate (the target's canary visible on the source), sequences on the source,
    /// the aliases back to the source, RESUME. Any failure before the aliases move resumes
    /// traffic on the target, unchanged.
    async fn move_back(&mut self, sink: &Sink) -> Result<String, StepError> {
        let started = Instant::now();
        traffic::pause(&self.ctx, &self.aliases(), HOST_TIMEOUT, sink, || {}).await?;
        let paused_at = Instant::now();
        let attempt = self.move_back_paused(sink).await;
        if let Err(e) = &attempt {
            sink.output(format!(
                "move back refused ({e}): traffic resumes where it was"
            ));
        }
        traffic::resume(&self.ctx, &self.aliases(), sink).await?;
        let window = paused_at.elapsed().as_secs_f64() * 1000.0;
        traffic::start_hook(&self.ctx, HOST_TIMEOUT, sink).await?;
        traffic::check_flowing(&self.ctx, &self.aliases()).await?;
        let detail = attempt?;
        sink.output(format!("write pause: {window:.1} ms (PAUSE → RESUME)"));
        self.memory.back_pause_window_ms = Some(window);
        self.remember()?;
        Ok(format!(
            "{detail}; write pause {window:.1} ms, {:.1} ms in all",
            started.elapsed().as_secs_f64() * 1000.0
        ))
    }

    async fn move_back_paused(&mut self, sink: &Sink) -> Result<String, StepError> {
        let (s_label, t_label) = (self.s_label(), self.t_label());
        let src = self.source().await?;
        let tgt = self.target().await?;
        let started = Instant::now();
        let token = format!("cutover move back {}", uuid::Uuid::new_v4());
        tgt.execute(plan::BACK_CANARY_WRITE_SQL, &[&token])
            .await
            .map_err(db_err(&t_label))?;
        let lsn: String = tgt
            .query_one(crate::runbooks::shard_split::plan::PRIMARY_LSN_SQL, &[])
            .await
            .map_err(db_err(&t_label))?
            .get(0);
        self.memory.back_gate_lsn = Some(lsn.clone());
        let wait = self.mv.params.pause_bound / 2;
        loop {
            let seen: Option<String> = src
                .query_opt(plan::BACK_CANARY_READ_SQL, &[])
                .await
                .map_err(db_err(&s_label))?
                .map(|r| r.get(0));
            if seen.as_deref() == Some(token.as_str()) {
                break;
            }
            if started.elapsed() > wait {
                let detail = format!(
                    "the move-back canary, committed on {} at or before {lsn}, is not visible on {s_label} after {wait:?}: the reverse stream has not delivered every write; the move back is refused",
                    self.mv.target.name
                );
                sink.gate(detail.clone(), false);
                return Err(StepError::gate(detail));
            }
            tokio::time::sleep(GATE_POLL).await;
        }
        let gate_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.memory.back_gate_ms = Some(gate_ms);
        sink.gate(
            format!("{s_label} applied {t_label}'s writes up to {lsn} (its canary is visible) in {gate_ms:.1} ms"),
            true,
        );
        let (fixes, behind) = set_sequences(
            (&tgt, &t_label),
            (&src, &s_label),
            &self.memory.tables,
            self.mv.params.sequence_gap,
            sink,
        )
        .await?;
        self.memory.back_sequences = fixes;
        self.remember()?;
        if !behind.is_empty() {
            return Err(StepError::gate(format!(
                "nextval on {s_label} is not past the maximum for: {}",
                behind.join(", ")
            )));
        }
        // The source takes writes from here on: its reverse subscription must not apply
        // anything more from the target.
        src.batch_execute(&format!(
            "ALTER SUBSCRIPTION {} DISABLE",
            quote_ident(&self.mv.reverse_name())
        ))
        .await
        .map_err(db_err(&s_label))?;
        self.undo_repoint(sink).await
    }

    // ---- after ----------------------------------------------------------------------------------

    fn copy_tables(&self) -> Result<Vec<CopyTable>, StepError> {
        let path = self.run_dir.join(TABLES_FILE);
        let bytes = std::fs::read(&path)
            .map_err(|e| StepError::Setup(format!("{}: {e}", path.display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StepError::Setup(format!("{}: {e}", path.display())))
    }

    async fn verify(&mut self, sink: &Sink) -> Result<String, StepError> {
        let tables = self.copy_tables()?;
        let src = pg::connect(
            &Endpoint::node(&self.mv.source, self.mv.source_db()),
            SessionSettings::EXECUTOR,
        )
        .await?;
        src.batch_execute(PINNED_SETTINGS)
            .await
            .map_err(db_err(&self.s_label()))?;
        let tgt = pg::connect(
            &Endpoint::node(&self.mv.target, self.mv.target_db()),
            SessionSettings::EXECUTOR,
        )
        .await?;
        tgt.batch_execute(PINNED_SETTINGS)
            .await
            .map_err(db_err(&self.t_label()))?;
        let exact = match &self.cutover_snapshot {
            Some((_, snapshot)) => {
                tgt.batch_execute(&crate::runbooks::table_copy::plan::snapshot_sql(snapshot))
                    .await
                    .map_err(db_err(&self.t_label()))?;
                true
            }
            None => {
                sink.output("WARNING: the snapshot taken at the gate died with the process that took it: the target now holds writes made after the cutover, so each table is checked only for count(target) ≥ count(source)");
                false
            }
        };
        let mut problems = Vec::new();
        let mut rows = 0u64;
        for t in &tables {
            let (s_sql, t_sql) = (
                t.checksum_sql(&t.source, None),
                t.checksum_sql(&t.target, None),
            );
            let (s, d) = tokio::join!(src.query_one(&s_sql, &[]), tgt.query_one(&t_sql, &[]));
            let s = s.map_err(db_err(&self.s_label()))?;
            let d = d.map_err(db_err(&self.t_label()))?;
            let (sc, ss): (i64, String) = (s.get(0), s.get(1));
            let (tc, ts): (i64, String) = (d.get(0), d.get(1));
            rows += sc as u64;
            let ok = if exact {
                sc == tc && ss == ts
            } else {
                tc >= sc
            };
            sink.output(format!(
                "{}: {sc} rows, checksum {ss} on {}; {tc} rows, checksum {ts} on {}{}",
                t.source,
                self.mv.source.name,
                self.mv.target.name,
                if ok { "" } else { " — DIFFERS" }
            ));
            if !ok {
                problems.push(t.source.clone());
            }
        }
        if let Some((holder, _)) = self.cutover_snapshot.take() {
            let _ = holder.batch_execute("COMMIT").await;
        }
        self.memory.verified_rows = rows;
        self.remember()?;
        if !problems.is_empty() {
            return Err(StepError::gate(format!(
                "the target differs from the source for: {}",
                problems.join(", ")
            )));
        }
        Ok(format!(
            "{} tables, {rows} rows: {} on both sides",
            tables.len(),
            if exact {
                "count and checksum equal (the target read as of the cutover)"
            } else {
                "every source row count reached on the target"
            }
        ))
    }

    async fn cleanup(&mut self, sink: &Sink) -> Result<String, StepError> {
        self.cutover_snapshot = None;
        let undone = self.undo_subscribe().await?;
        sink.output(undone);
        self.drop_slot(sink).await?;
        self.undo_publication().await?;
        if self.mv.citus.is_some() {
            logical_apply::uninstall_source(&*self.source().await?)
                .await
                .map_err(apply_err)?;
            let drop = format!(
                "DROP TABLE IF EXISTS public.{}",
                quote_ident(logical_apply::CANARY_TABLE)
            );
            self.source()
                .await?
                .batch_execute(&drop)
                .await
                .map_err(db_err(&self.s_label()))?;
            self.target()
                .await?
                .batch_execute(&format!(
                    "{drop}, public.{}",
                    quote_ident(logical_apply::PROGRESS_TABLE)
                ))
                .await
                .map_err(db_err(&self.t_label()))?;
        }
        self.target()
            .await?
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {CANARY_TABLE}, public.cutover_copy_ledger"
            ))
            .await
            .map_err(db_err(&self.t_label()))?;
        let left: i64 = self
            .source()
            .await?
            .query_one(
                "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1) + (SELECT count(*) FROM pg_publication WHERE pubname = $1)",
                &[&self.mv.name],
            )
            .await
            .map_err(db_err(&self.s_label()))?
            .get(0);
        if left > 0 {
            return Err(StepError::Failed(format!(
                "slot or publication {} still on the source",
                self.mv.name
            )));
        }
        if self.mv.params.reverse_stream {
            // Only now: with the forward slot gone, what the reverse stream applies on the
            // source is decoded by nothing that would carry it back to the target.
            self.source()
                .await?
                .batch_execute(&self.mv.enable_reverse_subscription_sql())
                .await
                .map_err(db_err(&self.s_label()))?;
            sink.output(format!(
                "reverse subscription {} enabled on {}",
                self.mv.reverse_name(),
                self.s_label()
            ));
        }
        Ok(format!(
            "subscription, slot and publication {} dropped; {} no longer retains WAL for the move",
            self.mv.name, self.mv.source.name
        ))
    }
}

/// Every sequence of `from` (of a moved table, or free-standing and present on `to`) set on
/// `to` past the larger of its value on `from` and its column's maximum on `to`, plus `gap`.
/// Returns the fixes and the sequences whose `nextval` is still not past both (must be none).
async fn set_sequences(
    (from, from_label): (&Client, &str),
    (to, to_label): (&Client, &str),
    tables: &[String],
    gap: i64,
    sink: &Sink,
) -> Result<(Vec<SequenceFix>, Vec<String>), StepError> {
    let rows = from
        .query(plan::SEQUENCES_SQL, &[])
        .await
        .map_err(db_err(from_label))?;
    let mut fixes = Vec::new();
    let mut behind = Vec::new();
    for row in rows {
        let (sequence, last, owner_table, owner_column): (
            String,
            Option<i64>,
            Option<String>,
            Option<String>,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let owner = owner_table.zip(owner_column);
        let column_max = match &owner {
            Some((table, _)) if !tables.contains(table) => continue,
            Some((table, column)) => to
                .query_one(
                    &format!(
                        "SELECT max({})::bigint FROM {}",
                        quote_ident(column),
                        quote_qualified(table)
                    ),
                    &[],
                )
                .await
                .map_err(db_err(to_label))?
                .get::<_, Option<i64>>(0),
            None => {
                let present: Option<String> = to
                    .query_one("SELECT to_regclass($1)::text", &[&sequence])
                    .await
                    .map_err(db_err(to_label))?
                    .get(0);
                if present.is_none() {
                    sink.output(format!("{sequence}: not on {to_label}; left alone"));
                    continue;
                }
                None
            }
        };
        let set_to = last.unwrap_or(0).max(column_max.unwrap_or(0)) + gap;
        to.query_one(
            "SELECT setval($1::text::regclass, $2, true)",
            &[&sequence, &set_to],
        )
        .await
        .map_err(db_err(to_label))?;
        let next: i64 = to
            .query_one("SELECT nextval($1::text::regclass)", &[&sequence])
            .await
            .map_err(db_err(to_label))?
            .get(0);
        if next <= column_max.unwrap_or(i64::MIN) || next <= last.unwrap_or(i64::MIN) {
            behind.push(sequence.clone());
        }
        fixes.push(SequenceFix {
            sequence,
            source_last_value: last,
            column: owner.map(|(t, c)| format!("{t}.{c}")),
            column_max,
            set_to,
            next,
        });
    }
    for f in &fixes {
        sink.output(format!(
            "{}: {from_label} {:?}, max({}) on {to_label} {:?} → setval {}; nextval {}",
            f.sequence,
            f.source_last_value,
            f.column.as_deref().unwrap_or("-"),
            f.column_max,
            f.set_to,
            f.next
        ));
    }
    Ok((fixes, behind))
}

impl Actions for LogicalMoveActions {
    async fn preconditions(&mut self, step: &Step) -> Vec<PreconditionResult> {
        match MoveStep::of(step) {
            Ok(MoveStep::Preflight) => self.preflight().await,
            _ => Vec::new(),
        }
    }

    async fn observations(&mut self, step: &Step) -> Vec<Observation> {
        match MoveStep::of(step) {
            Ok(MoveStep::Repoint | MoveStep::ResumeTraffic) => vec![
                Observation::new("target", self.mv.target.name.clone()),
                Observation::new(
                    "gate",
                    self.memory.gate_confirmed.clone().unwrap_or_default(),
                ),
            ],
            _ => vec![Observation::new("step", step.id.to_string())],
        }
    }

    async fn action(
        &mut self,
        step: &Step,
        recheck: bool,
        sink: Sink,
    ) -> Result<String, StepError> {
        announce_recheck(step, recheck, &sink);
        match MoveStep::of(step)? {
            MoveStep::Preflight => self.record_tables(&sink).await,
            MoveStep::WalLevel => self.wal_level(&sink).await,
            MoveStep::Publication => self.publication().await,
            MoveStep::Schema => self.schema(&sink).await,
            MoveStep::InitialCopy => self.initial_copy(recheck, &sink).await,
            MoveStep::Subscribe => self.subscribe(&sink).await,
            MoveStep::CatchUp => self.catch_up(&sink).await,
            MoveStep::StopTraffic => self.stop_traffic(&sink).await,
            MoveStep::LsnGate => self.lsn_gate(&sink).await,
            MoveStep::Sequences => self.sequences(&sink).await,
            MoveStep::ReverseStream => self.reverse_stream(&sink).await,
            MoveStep::Repoint => self.repoint(&sink).await,
            MoveStep::ResumeTraffic => self.resume_traffic(&sink).await,
            MoveStep::Verify => self.verify(&sink).await,
            MoveStep::Cleanup => self.cleanup(&sink).await,
            MoveStep::MoveBack => self.move_back(&sink).await,
            MoveStep::RetireReverseStream => self.retire_reverse_stream(&sink).await,
        }
    }

    async fn undo(&mut self, step: &Step, _recheck: bool, sink: Sink) -> Result<String, StepError> {
        match MoveStep::of(step)? {
            MoveStep::WalLevel => self.undo_wal_level(&sink).await,
            MoveStep::Publication => self.undo_publication().await,
            MoveStep::Schema => self.undo_schema().await,
            MoveStep::InitialCopy => self.undo_initial_copy(&sink).await,
            MoveStep::Subscribe => self.undo_subscribe().await,
            MoveStep::StopTraffic => self.resume_traffic(&sink).await,
            MoveStep::LsnGate => {
                self.cutover_snapshot = None;
                Ok("the gate's snapshot released".into())
            }
            MoveStep::Repoint => self.undo_repoint(&sink).await,
            MoveStep::ReverseStream => self.retire_reverse_stream(&sink).await,
            MoveStep::Preflight
            | MoveStep::CatchUp
            | MoveStep::Sequences
            | MoveStep::ResumeTraffic
            | MoveStep::Verify
            | MoveStep::Cleanup
            | MoveStep::MoveBack
            | MoveStep::RetireReverseStream => Ok("nothing to undo".into()),
        }
    }

    async fn force_resume(&mut self, sink: Sink) -> Result<String, StepError> {
        self.resume_traffic(&sink).await
    }

    fn pause_bound(&self) -> Duration {
        self.mv.params.pause_bound
    }

    fn resume_is_safe(&self, plan: &Plan, state: &EngineState) -> bool {
        // Until the repoint starts, every alias still routes to the source, which has lost nothing.
        not_begun(plan, state, MoveStep::Repoint.into())
    }
}
