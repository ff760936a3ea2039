//! Effects of the `shard-split` runbook: each step's action and undo over tokio-postgres,
//! the pgbouncer admin console and host commands. Every action checks before it acts, so a
//! re-run after a crash converges; SQL comes from `runbook::shard_split`, the reviewed text.

use super::SplitStep;
use crate::effects::{lsn, repoint, traffic};
use crate::engine::{EngineState, Observation, PreconditionResult};
use crate::executor::context::{
    announce_recheck, check_long_transactions, not_begun, verdict, ExecContext,
};
use crate::executor::{Actions, Sink, StepError};
use crate::inventory::Inventory;
use crate::pg;
use crate::plan::{Plan, Step};
use crate::readings::queries;
use crate::runbooks::shard_split::plan::{self as plan, Split, DELETE_BATCH, MAX_LAG_BYTES};
use crate::runbooks::StepKind;
use crate::sql::{quote_ident, quote_literal, quote_qualified};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const HOST_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);
const QUICK_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The run-dir file that holds [`SplitMemory`].
const MEMORY_FILE: &str = "split.json";
/// The run-dir file that keeps pgbouncer.ini as it was before the re-route.
const INI_BACKUP: &str = "pgbouncer.ini.before";

/// Values a later step needs, kept in the state dir so a resumed run has them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SplitMemory {
    /// Exact rows per shard on the source at the baseline, per sharded table.
    #[serde(default)]
    pub baselines: BTreeMap<String, BTreeMap<u32, i64>>,
    /// First transaction id not yet assigned when the cutover happened, per node name
    /// (32-bit xid as text). Rows with a newer xmin were written after the cutover.
    pub cutover_xid: BTreeMap<String, String>,
    pub gate_primary_lsn: Option<String>,
    pub gate_standby_lsn: Option<String>,
    /// Set before pg_basebackup starts: a data directory without `standby.signal` found on
    /// re-check is then our own interrupted copy, safe to discard.
    pub base_backup_started: bool,
    /// Set after the gate held and before `pg_promote` is sent: a standby still in recovery
    /// on re-check is then finishing a promotion that was already proven safe.
    #[serde(default)]
    pub promote_requested: bool,
    /// From the first PAUSE issued to the last RESUME returned, in milliseconds.
    pub pause_window_ms: Option<f64>,
    /// Rows written to a node after it stopped owning their shard, moved to their owner.
    pub strays_moved: u64,
    #[serde(skip)]
    pub pause_issued_at: Option<std::time::SystemTime>,
}

pub struct ShardSplitActions {
    split: Split,
    /// Hosts, cached connections, and the run dir where backups and [`SplitMemory`] live.
    ctx: ExecContext,
    /// The inventory file the re-route rewrites (the previous one is kept beside it).
    inventory_path: PathBuf,
    memory: SplitMemory,
    /// How long the LSN gate waits for the standby to replay before refusing.
    pub gate_timeout: Duration,
}

impl ShardSplitActions {
    pub fn new(
        split: Split,
        inventory_path: PathBuf,
        run_dir: PathBuf,
        trust_on_first_use: bool,
    ) -> Result<Self, String> {
        let ctx = ExecContext::new(&split.inventory, run_dir, trust_on_first_use)?;
        let memory = ctx.load_memory(MEMORY_FILE).map_err(|e| e.to_string())?;
        Ok(ShardSplitActions {
            split,
            ctx,
            inventory_path,
            memory,
            gate_timeout: Duration::from_secs(5),
        })
    }

    pub fn memory(&self) -> &SplitMemory {
        &self.memory
    }

    fn remember(&self) -> Result<(), StepError> {
        self.ctx.save_memory(MEMORY_FILE, &self.memory)
    }

    /// A connection to `dbname` on `node`, reused while it stays open: inside the write
    /// pause every connect saved is a few milliseconds of downtime saved.
    async fn node_client(&self, node_name: &str, dbname: &str) -> Result<Arc<Client>, StepError> {
        let node = self
            .split
            .inventory
            .node(node_name)
            .ok_or_else(|| format!("node {node_name} is not in the inventory"))?;
        self.ctx.node_client(node, dbname).await
    }

    async fn source_admin(&self) -> Result<Arc<Client>, StepError> {
        self.node_client(&self.split.source.name, &self.split.source.maintenance_db)
            .await
    }

    async fn target_admin(&self) -> Result<Arc<Client>, StepError> {
        self.node_client(&self.split.target.name, &self.split.target.maintenance_db)
            .await
    }

    async fn bouncer_admin(&self) -> Result<Arc<Client>, StepError> {
        self.ctx.bouncer_admin(&self.split.bouncer).await
    }

    /// Is the target PostgreSQL up, and in recovery? `None` when it does not answer.
    async fn target_in_recovery(&self) -> Option<bool> {
        let client = self.target_admin().await.ok()?;
        let row = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .ok()?;
        Some(row.get(0))
    }

    async fn paused_aliases(&self) -> Result<BTreeSet<String>, StepError> {
        Ok(traffic::paused(&self.ctx, &[&self.split.bouncer])
            .await?
            .into_iter()
            .map(|(_, alias)| alias)
            .collect())
    }

    fn lsn_pair(&self) -> lsn::Pair<'_> {
        lsn::Pair {
            primary: &self.split.source,
            standby: &self.split.target,
        }
    }

    // ---- preflight ------------------------------------------------------------------------

    async fn preflight(&self) -> Vec<PreconditionResult> {
        let source_size = self.source_size().await;
        vec![
            verdict(
                "replication-capacity",
                self.check_replication_capacity().await,
            ),
            verdict("target-empty", self.check_target_empty().await),
            verdict(
                "target-disk",
                self.check_target_disk(source_size.clone()).await,
            ),
            verdict("ssh-and-pgbouncer", self.check_ssh_and_pgbouncer().await),
            verdict("shard-map", self.check_shard_map().await),
            verdict("no-long-transactions", self.check_long_transactions().await),
        ]
    }

    async fn source_size(&self) -> Result<i64, StepError> {
        let client = self.source_admin().await?;
        let row = client
            .query_one(plan::PREFLIGHT_SETTINGS_SQL, &[])
            .await
            .map_err(|e| pg::error_chain(&e))?;
        Ok(row.get::<_, Option<i64>>(5).unwrap_or(0))
    }

    async fn check_replication_capacity(&self) -> Result<String, StepError> {
        let client = self.source_admin().await?;
        let row = client
            .query_one(plan::PREFLIGHT_SETTINGS_SQL, &[])
            .await
            .map_err(|e| pg::error_chain(&e))?;
        let (wal_level, max_senders, senders, max_slots, slots): (String, i32, i32, i32, i32) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let slot_taken = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.split.slot],
            )
            .await
            .map_err(|e| pg::error_chain(&e))?
            .is_some();
        let detail = format!(
            "wal_level={wal_level}, senders {senders}/{max_senders}, slots {slots}/{max_slots}, slot {} {}",
            self.split.slot,
            if slot_taken { "EXISTS" } else { "free" }
        );
        let ok = matches!(wal_level.as_str(), "replica" | "logical")
            && senders < max_senders
            && slots < max_slots
            && !slot_taken;
        if ok {
            Ok(detail)
        } else {
            Err(StepError::Failed(detail))
        }
    }

    async fn check_target_empty(&self) -> Result<String, StepError> {
        if self.target_in_recovery().await.is_some() {
            return Err(format!("{} is running", self.split.target.name).into());
        }
        let dir = crate::quote::shell_quote(&self.split.target.data_dir);
        let listing = self
            .ctx
            .host_run(
                &self.split.target.host,
                &format!("test -d {dir} && ls -A {dir} | head -n 5"),
                QUICK_COMMAND_TIMEOUT,
                &Sink::discard(),
            )
            .await
            .map_err(|e| format!("data directory {}: {e}", self.split.target.data_dir))?;
        if listing.trim().is_empty() {
            Ok(format!(
                "{} is stopped and {} is empty",
                self.split.target.name, self.split.target.data_dir
            ))
        } else {
            Err(format!(
                "{} is not empty: {}",
                self.split.target.data_dir,
                listing.split_whitespace().collect::<Vec<_>>().join(" ")
            )
            .into())
        }
    }

    async fn check_target_disk(
        &self,
        source_size: Result<i64, StepError>,
    ) -> Result<String, StepError> {
        let needed = source_size?;
        let avail: i64 = self
            .ctx
            .host_run(
                &self.split.target.host,
                &self.split.target_disk_command(),
                QUICK_COMMAND_TIMEOUT,
                &Sink::discard(),
            )
            .await?
            .trim()
            .parse()
            .map_err(|_| StepError::from("df printed no number"))?;
        let detail = format!(
            "{} free on {}, source is {}",
            crate::readings::text::human_bytes(avail),
            self.split.target.name,
            crate::readings::text::human_bytes(needed)
        );
        if avail >= needed {
            Ok(detail)
        } else {
            Err(StepError::Failed(detail))
        }
    }

    async fn check_ssh_and_pgbouncer(&self) -> Result<String, StepError> {
        self.ctx
            .host_run(
                &self.split.target.host,
                "true",
                QUICK_COMMAND_TIMEOUT,
                &Sink::discard(),
            )
            .await?;
        let admin = self.bouncer_admin().await?;
        let version = pg::simple_rows(&admin, &self.split.bouncer.name, "SHOW VERSION").await?;
        let version = version
            .first()
            .and_then(|r| r.values().next().cloned().flatten())
            .unwrap_or_default();
        Ok(format!(
            "ssh {} ok; pgbouncer {version}",
            self.split.target.host
        ))
    }

    async fn check_shard_map(&self) -> Result<String, StepError> {
        let inv = &self.split.inventory;
        let from = &self.split.from;
        let reading = queries::read_distribution(inv, from).await;
        let dist = reading
            .value()
            .ok_or_else(|| reading.error().unwrap_or("unreadable").to_string())?;
        let misplaced: i64 = dist.tables.iter().map(|t| t.misplaced).sum();
        if misplaced > 0 {
            return Err(format!(
                "{} holds {misplaced} rows of shards it does not own",
                from.dbname
            )
            .into());
        }
        if let Some(proxy) = &inv.proxy {
            let routes = self.plproxy_routes().await?;
            let wrong: Vec<String> = (0..inv.shard_count)
                .filter(|shard| {
                    routes.get(shard).map(String::as_str)
                        != inv.owner_of(*shard).map(|p| p.dbname.as_str())
                })
                .take(5)
                .map(|shard| {
                    format!(
                        "p{shard:04}→{}",
                        routes.get(&shard).map(String::as_str).unwrap_or("none")
                    )
                })
                .collect();
            if !wrong.is_empty() {
                return Err(format!(
                    "plproxy cluster {} disagrees with the inventory: {}",
                    proxy.cluster,
                    wrong.join(", ")
                )
                .into());
            }
        }
        let rows: i64 = dist.tables.iter().map(|t| t.total).sum();
        Ok(format!(
            "{} holds {rows} rows, none misplaced; plproxy matches the inventory",
            from.dbname
        ))
    }

    async fn check_long_transactions(&self) -> Result<String, StepError> {
        check_long_transactions(&*self.source_admin().await?).await
    }

    /// Shard → dbname from the plproxy cluster's options.
    async fn plproxy_routes(&self) -> Result<BTreeMap<u32, String>, StepError> {
        let Some(proxy) = &self.split.inventory.proxy else {
            return Ok(BTreeMap::new());
        };
        let client = self.node_client(&proxy.node, &proxy.dbname).await?;
        let rows = client
            .query(plan::PLPROXY_OPTIONS_SQL, &[&proxy.cluster])
            .await
            .map_err(|e| pg::error_chain(&e))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let option: String = r.get(0);
                let (name, conn) = option.split_once('=')?;
                let shard: u32 = name.strip_prefix('p')?.parse().ok()?;
                let dbname = pg::parse_conninfo(conn)?
                    .into_iter()
                    .find_map(|(key, value)| (key == "dbname").then_some(value))?;
                Some((shard, dbname))
            })
            .collect())
    }

    // ---- base backup ----------------------------------------------------------------------

    async fn base_backup(&mut self, sink: &Sink) -> Result<String, StepError> {
        let s = self.split.clone();
        match self.target_in_recovery().await {
            Some(true) => sink.output(format!(
                "{} already runs as a standby; waiting for it to catch up",
                s.target.name
            )),
            Some(false) => {
                return Err(StepError::precondition(format!(
                    "{} runs as a primary; it cannot become a standby",
                    s.target.name
                )))
            }
            None => {
                if self.memory.base_backup_started {
                    // An interrupted run's copy may still be starting or running: stop it
                    // before looking at the directory it writes to.
                    self.stop_interrupted_basebackup(sink).await?;
                }
                let dir = crate::quote::shell_quote(&s.target.data_dir);
                let state = self
                    .ctx
                    .host_run(&s.target.host, &format!("if [ -f {dir}/standby.signal ]; then echo standby; elif [ -n \"$(ls -A {dir})\" ]; then echo other; else echo empty; fi"), QUICK_COMMAND_TIMEOUT, sink)
                    .await?;
                match state.trim() {
                    "standby" => sink.output(
                        "found a standby data directory from an earlier attempt; starting it",
                    ),
                    "empty" => self.copy_from_source(sink).await?,
                    "other" if self.memory.base_backup_started => {
                        // No standby.signal yet: the copy an interrupted run of ours began.
                        sink.output(format!(
                            "{} holds an interrupted copy of ours; discarding it and copying again",
                            s.target.data_dir
                        ));
                        self.stop_and_discard_target(sink).await?;
                        self.copy_from_source(sink).await?;
                    }
                    other => {
                        return Err(format!(
                            "{} holds something else ({other}); refusing to overwrite it",
                            s.target.data_dir
                        )
                        .into())
                    }
                }
                self.ctx
                    .host_run(
                        &s.target.host,
                        &s.standby_settings_command(),
                        QUICK_COMMAND_TIMEOUT,
                        sink,
                    )
                    .await?;
                self.ctx
                    .host_run(
                        &s.target.host,
                        &s.target.control.start,
                        HOST_COMMAND_TIMEOUT,
                        sink,
                    )
                    .await?;
            }
        }
        let caught_up = self.wait_caught_up(Duration::from_secs(600), sink).await?;
        Ok(format!(
            "{} streams from {} through slot {}; {caught_up}",
            s.target.name, s.source.name, s.slot
        ))
    }

    /// Wait until the standby has replayed everything the primary had written when we asked.
    async fn wait_caught_up(&self, timeout: Duration, sink: &Sink) -> Result<String, StepError> {
        let source = self.source_admin().await?;
        let deadline = Instant::now() + timeout;
        let mut last_report = Instant::now();
        loop {
            let primary: String = source
                .query_one(plan::PRIMARY_LSN_SQL, &[])
                .await
                .map_err(|e| pg::error_chain(&e))?
                .get(0);
            if let Ok(target) = self.target_admin().await {
                let row = target
                    .query_one(
                        "SELECT pg_last_wal_replay_lsn()::text, pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())::int8",
                        &[&primary],
                    )
                    .await
                    .map_err(|e| pg::error_chain(&e))?;
                let (replayed, behind): (Option<String>, Option<i64>) = (row.get(0), row.get(1));
                if behind.is_some_and(|b| b <= 0) {
                    return Ok(format!(
                        "replayed {} ≥ primary {primary}",
                        replayed.unwrap_or_default()
                    ));
                }
                if last_report.elapsed() > Duration::from_secs(2) {
                    sink.output(format!(
                        "catching up: {} behind",
                        behind
                            .map(crate::readings::text::human_bytes)
                            .unwrap_or_else(|| "?".into())
                    ));
                    last_report = Instant::now();
                }
            }
            if Instant::now() > deadline {
                return Err(format!("the standby did not catch up within {timeout:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// pg_basebackup into the empty target directory, creating the slot. Marked in the run's
    /// memory first, so a re-check knows a half-filled directory is its own.
    async fn copy_from_source(&mut self, sink: &Sink) -> Result<(), StepError> {
        self.memory.base_backup_started = true;
        self.remember()?;
        let s = &self.split;
        // A crash after pg_basebackup created the slot leaves it behind: ours, by name. Its
        // walsender may hold it for a moment after the copy was stopped.
        let source = self.source_admin().await?;
        drop_slot_when_inactive(&source, &s.slot).await?;
        self.ctx
            .host_run(
                &s.target.host,
                &s.basebackup_command(),
                HOST_COMMAND_TIMEOUT,
                sink,
            )
            .await?;
        Ok(())
    }

    /// The pg_basebackup of an interrupted run may outlive it (its WAL streamer waits on the
    /// source). It is ours, copying into the directory about to be discarded: stop it by PID.
    async fn stop_interrupted_basebackup(&self, sink: &Sink) -> Result<(), StepError> {
        let s = &self.split;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut signal = "TERM";
        loop {
            let listed = self
                .ctx
                .host_run(
                    &s.target.host,
                    plan::Split::PROCESSES_COMMAND,
                    QUICK_COMMAND_TIMEOUT,
                    &Sink::discard(),
                )
                .await?;
            let pids: Vec<&str> = listed
                .lines()
                .filter_map(|line| s.copies_into_target(line))
                .collect();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "an interrupted pg_basebackup into {} is still running (pid {}); stop it, then run again",
                    s.target.data_dir,
                    pids.join(", ")
                ).into());
            }
            if Instant::now() + Duration::from_secs(10) > deadline {
                signal = "KILL";
            }
            sink.output(format!(
                "stopping the interrupted pg_basebackup of an earlier run: kill -{signal} {}",
                pids.join(" ")
            ));
            // Exit status ignored: a process may end between the listing and the signal.
            let _ = self
                .ctx
                .host_run(
                    &s.target.host,
                    &format!("kill -{signal} {}", pids.join(" ")),
                    QUICK_COMMAND_TIMEOUT,
                    &Sink::discard(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stop the target if it runs, then discard its data directory.
    async fn stop_and_discard_target(&self, sink: &Sink) -> Result<(), StepError> {
        let s = &self.split;
        if self.target_in_recovery().await.is_some() {
            self.ctx.forget_clients();
            self.ctx
                .host_run(
                    &s.target.host,
                    &s.target.control.stop,
                    HOST_COMMAND_TIMEOUT,
                    sink,
                )
                .await?;
        }
        self.ctx
            .host_run(
                &s.target.host,
                &s.discard_target_command(),
                HOST_COMMAND_TIMEOUT,
                sink,
            )
            .await?;
        Ok(())
    }

    async fn undo_base_backup(&mut self, sink: &Sink) -> Result<String, StepError> {
        self.stop_and_discard_target(sink).await?;
        self.memory.base_backup_started = false;
        self.memory.promote_requested = false;
        self.remember()?;
        let s = &self.split;
        let source = self.source_admin().await?;
        drop_slot_when_inactive(&source, &s.slot).await?;
        Ok(format!(
            "{} stopped and discarded; slot {} dropped",
            s.target.name, s.slot
        ))
    }

    // ---- baseline -------------------------------------------------------------------------

    async fn per_shard(
        &self,
        node: &str,
        dbname: &str,
        table: &crate::inventory::ShardedTable,
    ) -> Result<BTreeMap<u32, i64>, StepError> {
        let client = self.node_client(node, dbname).await?;
        let rows = client
            .query(&self.split.per_shard_sql(table), &[])
            .await
            .map_err(|e| pg::error_chain(&e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u32, r.get::<_, i64>(1)))
            .collect())
    }

    async fn baseline(&mut self, sink: &Sink) -> Result<String, StepError> {
        let s = &self.split;
        let mut baselines = BTreeMap::new();
        let mut details = Vec::new();
        for table in &s.inventory.sharded_tables {
            let counts = self
                .per_shard(&s.source.name, &s.from.dbname, table)
                .await?;
            let total: i64 = counts.values().sum();
            let moving: i64 = counts
                .iter()
                .filter(|(shard, _)| s.moved_shards().contains(shard))
                .map(|(_, n)| n)
                .sum();
            sink.output(format!(
                "baseline {}: {total} rows in {} shards; shards {}–{} hold {moving}",
                table.table,
                counts.len(),
                s.to.shards[0],
                s.to.shards[1]
            ));
            details.push(format!(
                "{}: {total} rows recorded per shard; {moving} will move",
                table.table
            ));
            baselines.insert(table.table.clone(), counts);
        }
        self.memory.baselines = baselines;
        self.remember()?;
        Ok(details.join("; "))
    }

    // ---- traffic ----------------------------------------------------------------------------

    async fn stop_traffic(&mut self, sink: &Sink) -> Result<String, StepError> {
        let aliases = pause_aliases(&self.split);
        let issued = &mut self.memory.pause_issued_at;
        traffic::pause(&self.ctx, &aliases, HOST_COMMAND_TIMEOUT, sink, || {
            if issued.is_none() {
                *issued = Some(std::time::SystemTime::now());
            }
        })
        .await?;
        Ok(format!("paused: {}", traffic::names(&aliases)))
    }

    async fn resume_traffic(&mut self, sink: &Sink) -> Result<String, StepError> {
        traffic::resume(&self.ctx, &pause_aliases(&self.split), sink).await?;
        if let Some(issued) = self.memory.pause_issued_at.take() {
            let window = issued.elapsed().unwrap_or_default().as_secs_f64() * 1000.0;
            sink.output(format!(
                "write pause window: {window:.1} ms (PAUSE issued → RESUME returned)"
            ));
            self.memory.pause_window_ms = Some(window);
            self.remember()?;
        }
        traffic::start_hook(&self.ctx, HOST_COMMAND_TIMEOUT, sink).await?;
        let aliases = pause_aliases(&self.split);
        traffic::check_flowing(&self.ctx, &aliases).await?;
        Ok(format!("resumed: {}", traffic::names(&aliases)))
    }

    // ---- gate and promotion ---------------------------------------------------------------

    /// The gate: the standby has replayed everything the primary wrote. Records both values.
    async fn lsn_gate(&mut self, sink: &Sink) -> Result<String, StepError> {
        let (reading, detail) = lsn::gate(
            &self.ctx,
            self.lsn_pair(),
            self.gate_timeout,
            "promotion refused",
            sink,
        )
        .await?;
        self.memory.gate_primary_lsn = Some(reading.primary);
        self.memory.gate_standby_lsn = Some(reading.replayed);
        self.remember()?;
        Ok(detail)
    }

    async fn promote(&mut self, sink: &Sink) -> Result<String, StepError> {
        let s = self.split.clone();
        let needs_promotion = match self.target_in_recovery().await {
            None => {
                return Err(StepError::Unreachable {
                    node: s.target.name.clone(),
                    reason: format!("{} does not answer", s.target.name),
                })
            }
            Some(false) => {
                sink.output(format!("{} is already promoted", s.target.name));
                false
            }
            Some(true) if self.replayed_past_the_gate(sink).await? => true,
            Some(true) => {
                // Re-prove the gate from live data right before the irreversible call. Once
                // promotion starts, replay stops: a re-check after a crash could never pass.
                let reading =
                    lsn::await_catch_up(&self.ctx, self.lsn_pair(), self.gate_timeout).await?;
                let detail = format!(
                    "re-check: replay {} vs primary {}",
                    reading.replayed, reading.primary
                );
                sink.gate(detail.clone(), reading.caught_up);
                if !reading.caught_up {
                    return Err(StepError::gate(format!(
                        "{detail}: the standby fell behind; promotion refused"
                    )));
                }
                self.memory.promote_requested = true;
                self.remember()?;
                true
            }
        };
        if needs_promotion {
            let target = self.target_admin().await?;
            let started = Instant::now();
            if let Err(e) = target.simple_query(plan::PROMOTE_SQL).await {
                // A promotion begun by an interrupted run may finish between the
                // recovery check and this call; then PostgreSQL refuses a second one.
                if self.target_in_recovery().await != Some(false) {
                    // Not promoting: the next attempt must prove the gate again.
                    self.memory.promote_requested = false;
                    self.remember()?;
                    return Err(StepError::Failed(pg::error_chain(&e)));
                }
                sink.output(format!(
                    "{} finished a promotion begun earlier ({})",
                    s.target.name,
                    pg::error_chain(&e)
                ));
            }
            loop {
                let row = target
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .map_err(|e| pg::error_chain(&e))?;
                if !row.get::<_, bool>(0) {
                    break;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    return Err("still in recovery 60 s after pg_promote".into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sink.output(format!(
                "promoted in {:.1} ms",
                started.elapsed().as_secs_f64() * 1000.0
            ));
        }
        // Traffic is still paused: nothing has been written under the new map yet.
        for node in [&s.source, &s.target] {
            if !self.memory.cutover_xid.contains_key(&node.name) {
                let client = self.node_client(&node.name, &node.maintenance_db).await?;
                let xid: String = client
                    .query_one("SELECT (pg_snapshot_xmax(pg_current_snapshot())::text::int8 % 4294967296)::text", &[])
                    .await
                    .map_err(|e| pg::error_chain(&e))?
                    .get(0);
                self.memory.cutover_xid.insert(node.name.clone(), xid);
            }
        }
        self.remember()?;
        Ok(format!(
            "{} is out of recovery; cutover xids {:?}",
            s.target.name, self.memory.cutover_xid
        ))
    }

    /// After a crash that may have interrupted a promotion: the promotion was requested once
    /// the gate held, and a promoting standby replays no further, so the current-LSN gate can
    /// no longer pass. What the gate proved still can: the standby has replayed the primary's
    /// LSN recorded at the gate, taken while traffic was already paused.
    async fn replayed_past_the_gate(&self, sink: &Sink) -> Result<bool, StepError> {
        let Some(gate_lsn) = self
            .memory
            .gate_primary_lsn
            .clone()
            .filter(|_| self.memory.promote_requested)
        else {
            return Ok(false);
        };
        let (replayed, past) = lsn::replayed_to(&self.ctx, &self.split.target, &gate_lsn).await?;
        if past {
            sink.gate(
                format!(
                    "re-check after an interrupted promotion: {} replayed {} ≥ {gate_lsn}, the primary's LSN at the gate",
                    self.split.target.name,
                    replayed.unwrap_or_default()
                ),
                true,
            );
        }
        Ok(past)
    }

    /// A promoted node cannot follow its old primary again: undoing the promotion discards it
    /// and rebuilds the standby, so the state is again what base-backup left.
    async fn undo_promote(&mut self, sink: &Sink) -> Result<String, StepError> {
        let s = self.split.clone();
        // Whatever happens below, a later promotion proves the gate again.
        self.memory.promote_requested = false;
        self.remember()?;
        if self.target_in_recovery().await == Some(true) {
            return Ok(format!(
                "{} was never promoted; it is still a standby",
                s.target.name
            ));
        }
        self.stop_and_discard_target(sink).await?;
        self.memory.cutover_xid.clear();
        self.remember()?;
        sink.output(format!(
            "{} served no traffic; rebuilding it as a standby of {}",
            s.target.name, s.source.name
        ));
        self.base_backup(sink).await
    }

    // ---- rename -----------------------------------------------------------------------------

    async fn rename(&self, from: &str, to: &str, sink: &Sink) -> Result<String, StepError> {
        let client = self.target_admin().await?;
        let exists = |name: String| {
            let client = &client;
            async move {
                client
                    .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                    .await
                    .map(|r| r.is_some())
                    .map_err(|e| pg::error_chain(&e))
            }
        };
        if !exists(from.to_string()).await? && exists(to.to_string()).await? {
            return Ok(format!("{} already has {to}", self.split.target.name));
        }
        let mut last_error = String::new();
        for _attempt in 0..10 {
            client
                .simple_query(&plan::terminate_sql(from))
                .await
                .map_err(|e| pg::error_chain(&e))?;
            match client.simple_query(&plan::rename_sql(from, to)).await {
                Ok(_) => {
                    sink.output(format!("renamed {from} to {to}"));
                    return Ok(format!("{} has {to} and no {from}", self.split.target.name));
                }
                Err(e) => last_error = pg::error_chain(&e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("rename {from} → {to}: {last_error}").into())
    }

    // ---- re-route ---------------------------------------------------------------------------

    async fn reroute(&self, sink: &Sink) -> Result<String, StepError> {
        let s = &self.split;
        let b = &s.bouncer;
        self.ctx.back_up_inventory(&self.inventory_path)?;
        repoint::repoint(
            &self.ctx,
            b,
            INI_BACKUP,
            "pgbouncer.ini",
            &[(s.to.dbname.as_str(), s.new_alias_target())],
            sink,
        )
        .await?;

        if let (Some(proxy), Some(sql)) = (&s.inventory.proxy, s.reroute_sql(&s.to.dbname)) {
            let routes = self.plproxy_routes().await?;
            if s.moved_shards()
                .all(|shard| routes.get(&shard) == Some(&s.to.dbname))
            {
                sink.output("plproxy already routes the moved shards to the new partition");
            } else {
                // Sent to the proxy node directly: its alias is paused.
                let client = self.node_client(&proxy.node, &proxy.dbname).await?;
                let started = Instant::now();
                client
                    .simple_query(&sql)
                    .await
                    .map_err(|e| pg::error_chain(&e))?;
                sink.output(format!(
                    "ALTER SERVER {}: {} shards re-pointed in {:.1} ms",
                    proxy.cluster,
                    s.to.shards[1] - s.to.shards[0] + 1,
                    started.elapsed().as_secs_f64() * 1000.0
                ));
            }
        }

        self.ctx
            .rewrite_inventory(&self.inventory_path, &s.inventory_after, sink)?;
        self.check_routing(&s.inventory_after).await
    }

    async fn undo_reroute(&self, sink: &Sink) -> Result<String, StepError> {
        let s = &self.split;
        let b = &s.bouncer;
        if let (Some(proxy), Some(sql)) = (&s.inventory.proxy, s.reroute_sql(&s.from.dbname)) {
            let routes = self.plproxy_routes().await?;
            if s.moved_shards()
                .any(|shard| routes.get(&shard) != Some(&s.from.dbname))
            {
                let client = self.node_client(&proxy.node, &proxy.dbname).await?;
                client
                    .simple_query(&sql)
                    .await
                    .map_err(|e| pg::error_chain(&e))?;
                sink.output(format!(
                    "plproxy: shards {}–{} routed back to {}",
                    s.to.shards[0], s.to.shards[1], s.from.dbname
                ));
            }
        }
        repoint::undo_repoint(&self.ctx, b, INI_BACKUP, sink).await?;
        self.ctx.restore_inventory(&self.inventory_path, sink)?;
        self.check_routing(&s.inventory).await
    }

    /// Every shard served by exactly one node, and plproxy, pgbouncer and `inventory` agree.
    async fn check_routing(&self, inventory: &Inventory) -> Result<String, StepError> {
        let admin = self.bouncer_admin().await?;
        let pools = queries::pgbouncer(&admin, &self.split.bouncer.name).await?;
        let node_at = |host: &Option<String>, port: Option<i64>| {
            inventory
                .nodes
                .iter()
                .find(|n| Some(&n.address) == host.as_ref() && Some(i64::from(n.port)) == port)
                .map(|n| n.name.clone())
        };
        let alias_node: BTreeMap<String, Option<String>> = pools
            .databases
            .iter()
            .map(|d| (d.name.clone(), node_at(&d.host, d.port)))
            .collect();
        let routes = self.plproxy_routes().await?;
        let mut disagreements = Vec::new();
        for shard in 0..inventory.shard_count {
            let by_inventory = inventory.owner_of(shard).map(|p| p.node.clone());
            let owner_db = inventory.owner_of(shard).map(|p| p.dbname.clone());
            let by_pgbouncer = owner_db
                .as_ref()
                .and_then(|db| alias_node.get(db).cloned().flatten());
            let by_plproxy = if inventory.proxy.is_some() {
                routes
                    .get(&shard)
                    .and_then(|db| alias_node.get(db).cloned().flatten())
            } else {
                by_inventory.clone()
            };
            if by_inventory.is_none() || by_inventory != by_pgbouncer || by_inventory != by_plproxy
            {
                disagreements.push(format!("shard {shard}: inventory {by_inventory:?}, pgbouncer {by_pgbouncer:?}, plproxy {by_plproxy:?}"));
            }
        }
        if disagreements.is_empty() {
            Ok(format!(
                "{} shards each served by one node; plproxy, pgbouncer and the inventory agree",
                inventory.shard_count
            ))
        } else {
            Err(format!(
                "{} shards disagree: {}",
                disagreements.len(),
                disagreements
                    .into_iter()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
            .into())
        }
    }

    // ---- verify -----------------------------------------------------------------------------

    async fn verify(&self, sink: &Sink) -> Result<String, StepError> {
        let s = &self.split;
        let routing = self.check_routing(&s.inventory_after).await?;
        sink.output(routing.clone());
        let mut short = Vec::new();
        let mut details = Vec::new();
        for table in &s.inventory.sharded_tables {
            let baseline = self
                .memory
                .baselines
                .get(&table.table)
                .ok_or_else(|| format!("no baseline recorded for {}", table.table))?;
            let mut now = self
                .per_shard(&s.source.name, &s.from.dbname, table)
                .await?;
            let on_target = self.per_shard(&s.target.name, &s.to.dbname, table).await?;
            // Owners: the source keeps the lower shards, the target owns the moved ones.
            now.retain(|shard, _| !s.moved_shards().contains(shard));
            now.extend(
                on_target
                    .into_iter()
                    .filter(|(shard, _)| s.moved_shards().contains(shard)),
            );
            short.extend(
                baseline
                    .iter()
                    .filter(|(shard, base)| now.get(shard).copied().unwrap_or(0) < **base)
                    .take(5)
                    .map(|(shard, base)| {
                        format!(
                            "{} shard {shard}: {} < baseline {base}",
                            table.table,
                            now.get(shard).copied().unwrap_or(0)
                        )
                    }),
            );
            let base_total: i64 = baseline.values().sum();
            let now_total: i64 = now.values().sum();
            details.push(format!(
                "{}: owners hold {now_total} rows = baseline {base_total} + {} new",
                table.table,
                now_total - base_total
            ));
        }
        if !short.is_empty() {
            return Err(format!(
                "owners hold fewer rows than the baseline: {}",
                short.join("; ")
            )
            .into());
        }
        Ok(format!("{routing}; {}", details.join("; ")))
    }

    // ---- delete invalid data ---------------------------------------------------------------

    async fn delete_invalid(&mut self, sink: &Sink) -> Result<String, StepError> {
        let s = &self.split;
        let lower: Vec<u32> = (s.from.shards[0]..s.to.shards[0]).collect();
        let upper: Vec<u32> = s.moved_shards().collect();
        let mut summary = Vec::new();
        let mut refused = Vec::new();
        // The source no longer owns the moved shards; the target does not own the rest.
        for (non_owner, non_owner_db, owner, owner_db, shards) in [
            (
                &s.source.name,
                &s.from.dbname,
                &s.target.name,
                &s.to.dbname,
                &upper,
            ),
            (
                &s.target.name,
                &s.to.dbname,
                &s.source.name,
                &s.from.dbname,
                &lower,
            ),
        ] {
            let xid = self.memory.cutover_xid.get(non_owner).ok_or_else(|| {
                format!("no cutover xid recorded for {non_owner}; the promote step records it")
            })?;
            for table in &s.inventory.sharded_tables {
                let side = Side {
                    node: non_owner,
                    db: non_owner_db,
                };
                let owner_side = Side {
                    node: owner,
                    db: owner_db,
                };
                let report = self
                    .clean_table(side, owner_side, table, shards, xid, sink)
                    .await?;
                self.memory.strays_moved += report.moved;
                summary.push(format!(
                    "{non_owner}/{}: deleted {} rows, moved {} stray rows to {owner}",
                    table.table, report.deleted, report.moved
                ));
                refused.extend(report.refused);
            }
        }
        self.remember()?;
        if refused.is_empty() {
            Ok(summary.join("; "))
        } else {
            Err(StepError::gate(format!(
                "delete refused for {} shards whose owner lacks rows (those rows were NOT deleted): {}. Done: {}",
                refused.len(),
                refused.into_iter().take(10).collect::<Vec<_>>().join("; "),
                summary.join("; ")
            )))
        }
    }

    async fn clean_table(
        &self,
        non_owner: Side<'_>,
        owner: Side<'_>,
        table: &crate::inventory::ShardedTable,
        shards: &[u32],
        cutover_xid: &str,
        sink: &Sink,
    ) -> Result<CleanReport, StepError> {
        let n = self.node_client(non_owner.node, non_owner.db).await?;
        let o = self.node_client(owner.node, owner.db).await?;
        let qualified = quote_qualified(&table.table);
        let key = quote_ident(&table.key[0]);
        let key_type = key_type(&n, &table.table, &table.key[0]).await?;
        let keys_sql = self.split.shard_keys_sql(table);
        let present_sql = plan::present_keys_sql(table, &key_type);
        let digest_sql = self.split.key_digest_sql(table, &key_type);
        let delete_sql = self.split.delete_batch_sql(table, &key_type);
        let mut report = CleanReport::default();
        let mut refused_shards = BTreeSet::new();
        // New strays can land while we work; go over the range until it is clean or only
        // refused shards remain (at most three rounds).
        for _round in 0..3 {
            let shard_list: Vec<i64> = shards
                .iter()
                .filter(|s| !refused_shards.contains(*s))
                .map(|s| i64::from(*s))
                .collect();
            let mut remaining = 0;
            for group in shard_list.chunks(64) {
                let rows = n
                    .query(&keys_sql, &[&group, &cutover_xid])
                    .await
                    .map_err(|e| pg::error_chain(&e))?;
                remaining += rows.len();
                let mut by_shard: BTreeMap<i64, Vec<(String, bool)>> = BTreeMap::new();
                for row in &rows {
                    by_shard
                        .entry(row.get(1))
                        .or_default()
                        .push((row.get(0), row.get(2)));
                }
                let group_keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                let present: BTreeSet<String> = o
                    .query(&present_sql, &[&group_keys])
                    .await
                    .map_err(|e| pg::error_chain(&e))?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                // Classify per shard: rows the owner lacks that predate the cutover refuse the
                // shard; rows written after it are strays and move to the owner.
                let mut candidates: BTreeMap<i64, Vec<String>> = BTreeMap::new();
                for (shard, keys) in by_shard {
                    let lost: Vec<&String> = keys
                        .iter()
                        .filter(|(k, after)| !after && !present.contains(k))
                        .map(|(k, _)| k)
                        .collect();
                    if !lost.is_empty() {
                        let message = format!(
                            "shard {shard}: {} rows missing on {} (e.g. {})",
                            lost.len(),
                            owner.node,
                            lost[0]
                        );
                        sink.gate(format!("delete gate refused: {message}"), false);
                        report
                            .refused
                            .push(format!("{}/{}: {message}", non_owner.node, table.table));
                        refused_shards.insert(shard as u32);
                        continue;
                    }
                    let strays: Vec<String> = keys
                        .iter()
                        .filter(|(k, after)| *after && !present.contains(k))
                        .map(|(k, _)| k.clone())
                        .collect();
                    if !strays.is_empty() {
                        let moved = move_rows(&n, &o, &qualified, &key, &key_type, &strays).await?;
                        report.moved += moved;
                        sink.output(format!(
                            "STRAY: shard {shard}: {} rows written to {} after the cutover moved to owner {} ({})",
                            strays.len(), non_owner.node, owner.node, strays.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                    candidates.insert(shard, keys.into_iter().map(|(k, _)| k).collect());
                }
                // Proof, per shard: the owner holds exactly these keys (count + md5 over the
                // sorted keys), computed on both sides in one query each.
                let keys: Vec<String> = candidates.values().flatten().cloned().collect();
                let mine = shard_digests(&n, &digest_sql, &keys).await?;
                let theirs = shard_digests(&o, &digest_sql, &keys).await?;
                let mut proven: Vec<i64> = Vec::new();
                let mut proven_keys: Vec<String> = Vec::new();
                for (shard, shard_keys) in candidates {
                    if mine.get(&shard) == theirs.get(&shard) && mine.contains_key(&shard) {
                        proven.push(shard);
                        proven_keys.extend(shard_keys);
                    } else {
                        let message = format!(
                            "shard {shard}: owner digest {:?} ≠ {:?}",
                            theirs.get(&shard),
                            mine.get(&shard)
                        );
                        sink.gate(format!("delete gate refused: {message}"), false);
                        report
                            .refused
                            .push(format!("{}/{}: {message}", non_owner.node, table.table));
                        refused_shards.insert(shard as u32);
                    }
                }
                if !proven.is_empty() {
                    sink.gate(
                        format!(
                            "{} shards {}–{} proven on {} ({} rows: count + md5 equal)",
                            proven.len(),
                            proven[0],
                            proven[proven.len() - 1],
                            owner.node,
                            proven_keys.len()
                        ),
                        true,
                    );
                }
                for batch in proven_keys.chunks(DELETE_BATCH) {
                    wait_for_lag(&n, sink).await?;
                    let batch: Vec<String> = batch.to_vec();
                    let deleted = n
                        .execute(&delete_sql, &[&batch, &proven])
                        .await
                        .map_err(|e| pg::error_chain(&e))?;
                    report.deleted += deleted;
                }
            }
            if remaining == 0 {
                break;
            }
        }
        sink.output(format!(
            "{}/{}: deleted {} rows of shards it does not own, moved {} strays",
            non_owner.node, table.table, report.deleted, report.moved
        ));
        Ok(report)
    }

    async fn vacuum(&self, sink: &Sink) -> Result<String, StepError> {
        let s = &self.split;
        let mut details = Vec::new();
        for (node, db) in [
            (&s.source.name, &s.from.dbname),
            (&s.target.name, &s.to.dbname),
        ] {
            let client = self.node_client(node, db).await?;
            for table in &s.inventory.sharded_tables {
                let qualified = quote_qualified(&table.table);
                let started = Instant::now();
                client
                    .simple_query(&format!("VACUUM ANALYZE {qualified}"))
                    .await
                    .map_err(|e| pg::error_chain(&e))?;
                let row = client
                    .query_one(&format!("SELECT count(*), (SELECT reltuples::int8 FROM pg_class WHERE oid = {}::regclass) FROM {qualified}", quote_literal(&qualified)), &[])
                    .await
                    .map_err(|e| pg::error_chain(&e))?;
                let (exact, estimate): (i64, i64) = (row.get(0), row.get(1));
                sink.output(format!(
                    "{node}/{}: VACUUM ANALYZE {:.0} ms; exact {exact}, estimate {estimate}",
                    table.table,
                    started.elapsed().as_secs_f64() * 1000.0
                ));
                details.push(format!(
                    "{node}/{}: {exact} rows, estimate {estimate}",
                    table.table
                ));
            }
        }
        Ok(details.join("; "))
    }

    async fn drop_slot(&self) -> Result<String, StepError> {
        let source = self.source_admin().await?;
        drop_slot_when_inactive(&source, &self.split.slot).await?;
        Ok(format!(
            "{} has no slot {}",
            self.split.source.name, self.split.slot
        ))
    }

    async fn validate_connections(&self, sink: &Sink) -> Result<String, StepError> {
        let after = &self.split.inventory_after;
        let mut problems = Vec::new();
        let mut details = Vec::new();
        for node in [&self.split.source, &self.split.target] {
            let mut allowed: BTreeSet<String> = after
                .partitions
                .iter()
                .filter(|p| p.node == node.name)
                .map(|p| p.dbname.clone())
                .collect();
            allowed.insert(node.maintenance_db.clone());
            if let Some(proxy) = after.proxy.as_ref().filter(|p| p.node == node.name) {
                allowed.insert(proxy.dbname.clone());
            }
            let partition_dbs: BTreeSet<String> =
                after.partitions.iter().map(|p| p.dbname.clone()).collect();
            let client = self.node_client(&node.name, &node.maintenance_db).await?;
            let rows = client
                .query(plan::CONNECTIONS_BY_DB_SQL, &[])
                .await
                .map_err(|e| pg::error_chain(&e))?;
            for row in rows {
                let (db, count): (String, i64) = (row.get(0), row.get(1));
                details.push(format!("{}: {db} ×{count}", node.name));
                if partition_dbs.contains(&db) && !allowed.contains(&db) {
                    problems.push(format!(
                        "{} has {count} connections to {db}, which it does not hold",
                        node.name
                    ));
                }
            }
        }
        sink.output(details.join(", "));
        if problems.is_empty() {
            Ok(format!("connections by database: {}", details.join(", ")))
        } else {
            Err(StepError::Failed(problems.join("; ")))
        }
    }
}

/// The aliases the write pause covers, in PAUSE order.
fn pause_aliases(split: &Split) -> Vec<traffic::Alias<'_>> {
    split
        .paused_aliases
        .iter()
        .map(|name| traffic::Alias {
            bouncer: &split.bouncer,
            name,
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Side<'a> {
    node: &'a str,
    db: &'a str,
}

#[derive(Default)]
struct CleanReport {
    deleted: u64,
    moved: u64,
    refused: Vec<String>,
}

/// Shard → (rows, md5 of the sorted keys) for the given keys.
async fn shard_digests(
    client: &Client,
    sql: &str,
    keys: &[String],
) -> Result<BTreeMap<i64, (i64, Option<String>)>, StepError> {
    Ok(client
        .query(sql, &[&keys])
        .await
        .map_err(|e| pg::error_chain(&e))?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

async fn key_type(client: &Client, table: &str, column: &str) -> Result<String, StepError> {
    let row = client
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND NOT a.attisdropped",
            &[&quote_qualified(table), &column],
        )
        .await
        .map_err(|e| pg::error_chain(&e))?
        .ok_or_else(|| format!("{table} has no column {column}"))?;
    Ok(row.get(0))
}

/// Copy rows (as JSON records) from the node that holds them to their owner; keep existing.
async fn move_rows(
    from: &Client,
    to: &Client,
    qualified: &str,
    key: &str,
    key_type: &str,
    keys: &[String],
) -> Result<u64, StepError> {
    let rows = from
        .query(&format!("SELECT row_to_json(t)::text FROM {qualified} t WHERE {key} = ANY($1::text[]::{key_type}[])"), &[&keys])
        .await
        .map_err(|e| pg::error_chain(&e))?;
    let mut moved = 0;
    for row in rows {
        let json: String = row.get(0);
        moved += to
            .execute(
                &format!("INSERT INTO {qualified} SELECT * FROM json_populate_record(NULL::{qualified}, $1::text::json) ON CONFLICT DO NOTHING"),
                &[&json],
            )
            .await
            .map_err(|e| pg::error_chain(&e))?;
    }
    Ok(moved)
}

/// Hold the next delete batch while any standby of this node lags more than the bound.
async fn wait_for_lag(client: &Client, sink: &Sink) -> Result<(), StepError> {
    let started = Instant::now();
    loop {
        let lag: Option<i64> = client
            .query_one("SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::int8 FROM pg_stat_replication", &[])
            .await
            .map_err(|e| pg::error_chain(&e))?
            .get(0);
        if lag.unwrap_or(0) <= MAX_LAG_BYTES || started.elapsed() > Duration::from_secs(300) {
            return Ok(());
        }
        sink.output(format!(
            "replication lag {}: holding the delete",
            crate::readings::text::human_bytes(lag.unwrap_or(0))
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn drop_slot_when_inactive(client: &Client, slot: &str) -> Result<(), StepError> {
    for _ in 0..100 {
        match client.simple_query(&plan::drop_slot_sql(slot)).await {
            Ok(_) => return Ok(()),
            // The walsender of a standby being stopped may still hold the slot for a moment.
            Err(e) if pg::error_chain(&e).contains("is active") => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(StepError::Failed(pg::error_chain(&e))),
        }
    }
    Err(format!("slot {slot} stayed active").into())
}

impl Actions for ShardSplitActions {
    async fn preconditions(&mut self, step: &Step) -> Vec<PreconditionResult> {
        match SplitStep::of(step) {
            Ok(SplitStep::Preflight) => self.preflight().await,
            _ => Vec::new(),
        }
    }

    async fn observations(&mut self, step: &Step) -> Vec<Observation> {
        let Ok(kind) = SplitStep::of(step) else {
            return vec![Observation::new("step", step.id.to_string())];
        };
        match kind {
            SplitStep::LsnGate | SplitStep::Promote => {
                match lsn::positions(&self.ctx, self.lsn_pair()).await {
                    Ok((primary, replayed, caught_up)) => vec![
                        Observation::new("standby.caught_up", caught_up.to_string()),
                        Observation::new("primary.lsn", primary),
                        Observation::new("standby.replay_lsn", replayed.unwrap_or_default()),
                    ],
                    Err(e) => vec![Observation::new("lsn.error", e.to_string())],
                }
            }
            SplitStep::Rename | SplitStep::Reroute | SplitStep::ResumeTraffic => vec![
                Observation::new("target.database", self.split.to.dbname.clone()),
                Observation::new(
                    "paused",
                    format!("{:?}", self.paused_aliases().await.unwrap_or_default()),
                ),
            ],
            SplitStep::DeleteInvalid => vec![
                Observation::new("partition", self.split.to.name.clone()),
                Observation::new(
                    "routing",
                    self.check_routing(&self.split.inventory_after)
                        .await
                        .is_ok()
                        .to_string(),
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
        match SplitStep::of(step)? {
            SplitStep::Preflight => Ok("every precondition held".into()),
            SplitStep::BaseBackup => self.base_backup(&sink).await,
            SplitStep::Baseline => self.baseline(&sink).await,
            SplitStep::StopTraffic => self.stop_traffic(&sink).await,
            SplitStep::LsnGate => self.lsn_gate(&sink).await,
            SplitStep::Promote => self.promote(&sink).await,
            SplitStep::Rename => {
                let (from, to) = (self.split.from.dbname.clone(), self.split.to.dbname.clone());
                self.rename(&from, &to, &sink).await
            }
            SplitStep::Reroute => self.reroute(&sink).await,
            SplitStep::ResumeTraffic => self.resume_traffic(&sink).await,
            SplitStep::Verify => self.verify(&sink).await,
            SplitStep::DeleteInvalid => self.delete_invalid(&sink).await,
            SplitStep::Vacuum => self.vacuum(&sink).await,
            SplitStep::DropSlot => self.drop_slot().await,
            SplitStep::ValidateConnections => self.validate_connections(&sink).await,
        }
    }

    async fn undo(&mut self, step: &Step, _recheck: bool, sink: Sink) -> Result<String, StepError> {
        match SplitStep::of(step)? {
            SplitStep::BaseBackup => self.undo_base_backup(&sink).await,
            SplitStep::StopTraffic => self.resume_traffic(&sink).await,
            SplitStep::Promote => self.undo_promote(&sink).await,
            SplitStep::Rename => {
                let (from, to) = (self.split.from.dbname.clone(), self.split.to.dbname.clone());
                if self.target_in_recovery().await.is_none() {
                    return Ok(format!(
                        "{} is not running; nothing to rename",
                        self.split.target.name
                    ));
                }
                self.rename(&to, &from, &sink).await
            }
            SplitStep::Reroute => self.undo_reroute(&sink).await,
            SplitStep::Preflight
            | SplitStep::Baseline
            | SplitStep::LsnGate
            | SplitStep::ResumeTraffic
            | SplitStep::Verify
            | SplitStep::DeleteInvalid
            | SplitStep::Vacuum
            | SplitStep::DropSlot
            | SplitStep::ValidateConnections => Ok("nothing to undo".into()),
        }
    }

    async fn force_resume(&mut self, sink: Sink) -> Result<String, StepError> {
        self.resume_traffic(&sink).await
    }

    fn pause_bound(&self) -> Duration {
        self.split.params.pause_bound
    }

    fn baseline(&self) -> Vec<crate::executor::BaselineCount> {
        self.split
            .inventory
            .sharded_tables
            .iter()
            .filter_map(|table| {
                let counts = self.memory.baselines.get(&table.table)?;
                Some(crate::executor::BaselineCount {
                    node: self.split.source.name.clone(),
                    database: self.split.from.dbname.clone(),
                    table: table.table.clone(),
                    total: counts.values().sum(),
                })
            })
            .collect()
    }

    fn expected_stopped(&self, plan: &Plan, state: &EngineState) -> Vec<(String, String)> {
        // The spare stays stopped until the base backup starts it.
        if not_begun(plan, state, SplitStep::BaseBackup.into()) {
            vec![(
                self.split.target.name.clone(),
                "spare: the base-backup step starts it".to_string(),
            )]
        } else {
            Vec::new()
        }
    }

    fn resume_is_safe(&self, plan: &Plan, state: &EngineState) -> bool {
        // Until the re-route starts, the routing is the original one: resuming first is safe.
        not_begun(plan, state, SplitStep::Reroute.into())
    }
}
