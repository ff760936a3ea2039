//! Effects of the `table-copy` runbook over tokio-postgres: discovery and checks, the ledger,
//! and the copy items (a binary `COPY` stream from the source into the target inside one
//! target transaction with its ledger row, then a count and checksum on both sides).
//!
//! Invariants:
//! - a table or range is copied in one target transaction that first removes what an earlier
//!   attempt left and ends by writing its ledger row, so it is on the target exactly once or
//!   not at all;
//! - the ledger is read before any copy: a committed part is never copied again, a verified
//!   one is not even re-checked; the local state file follows the ledger, never leads it.

use super::plan::{
    self, date_of, parts_for, split_ranges, Column, CopyTable, IntoParent, KeySpan, Range,
    TableCopy, LEDGER_DDL, PINNED_SETTINGS, WHOLE,
};
use super::state::{pair_key, state_path, Status, Store};
use super::CopyStep;
use crate::engine::{EngineState, ItemId, Observation, OnItemFailure, PreconditionResult};
use crate::executor::context::{announce_recheck, verdict, write_durably, ExecContext};
use crate::executor::{Actions, ItemAttempt, ItemFuture, Sink, StepError, StepItems};
use crate::inventory::{Distribution, Node};
use crate::pg::{self, Endpoint, SessionSettings};
use crate::plan::{Plan, Step};
use crate::runbooks::StepKind;
use crate::sql::quote_qualified;
use chrono::Utc;
use futures_util::{SinkExt, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The run-dir file holding the list the preflight found: the copy step's items.
pub const TABLES_FILE: &str = "tables.json";
/// Test hook: `kill -9` this process right after the target committed this item, before the
/// local state is updated (the crash the seed turns into duplicate rows).
pub const KILL_AFTER_COMMIT_ENV: &str = "CUTOVER_TEST_KILL_AFTER_COMMIT";
const HOST_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Key-hash buckets compared when a checksum differs.
const BUCKETS: u32 = 256;
/// Most differing keys a mismatch names.
const KEYS_NAMED: usize = 5;
/// Bytes handed to the target's COPY at once.
const BATCH: usize = 64 * 1024;

pub struct TableCopyActions {
    shared: Arc<Shared>,
    ctx: ExecContext,
    run_dir: PathBuf,
    tables: Option<Arc<Vec<CopyTable>>>,
}

/// What every item needs, shared by the items running at once.
struct Shared {
    copy: TableCopy,
    run_id: String,
    store: Store,
    /// Items the operator asked to retry from the cockpit (as `--retry-errors` does for all).
    retry_asked: std::sync::Mutex<BTreeSet<String>>,
    /// An exported snapshot every part's source transaction reads under (a logical move's
    /// slot): all tables then show the one moment the stream starts from.
    snapshot: std::sync::Mutex<Option<String>>,
    /// Load with `session_replication_role = replica`: the target's triggers and foreign keys
    /// do not fire (the rows are a copy, as a subscription applies them).
    replica_role: std::sync::atomic::AtomicBool,
}

fn command(target: &str, e: tokio_postgres::Error) -> StepError {
    StepError::Command {
        target: target.to_string(),
        reason: pg::error_chain(&e),
    }
}

impl TableCopyActions {
    pub fn new(
        copy: TableCopy,
        run_dir: PathBuf,
        trust_on_first_use: bool,
    ) -> Result<Self, String> {
        let ctx = ExecContext::new(&copy.inventory, run_dir.clone(), trust_on_first_use)?;
        let run_id = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The run dir is `<state dir>/runs/<run id>`.
        let state_dir = run_dir
            .parent()
            .and_then(|p| p.parent())
            .ok_or_else(|| format!("{}: not a run dir", run_dir.display()))?;
        let store = Store::open(
            state_path(state_dir, &copy.inventory.environment),
            pair_key(&copy.params.from, &copy.params.to),
        )?;
        let tables = load_tables(&run_dir)?.map(Arc::new);
        Ok(TableCopyActions {
            shared: Arc::new(Shared {
                copy,
                run_id,
                store,
                retry_asked: std::sync::Mutex::default(),
                snapshot: std::sync::Mutex::new(None),
                replica_role: std::sync::atomic::AtomicBool::new(false),
            }),
            ctx,
            run_dir,
            tables,
        })
    }

    /// The list the preflight recorded, once it has run.
    pub fn tables(&self) -> Option<&[CopyTable]> {
        self.tables.as_deref().map(Vec::as_slice)
    }

    /// Read every part's source rows under this exported snapshot (`None`: each part its own).
    pub fn set_snapshot(&self, snapshot: Option<String>) {
        if let Ok(mut held) = self.shared.snapshot.lock() {
            *held = snapshot;
        }
    }

    /// Load every part with the target's triggers and foreign keys off (`true`), as a
    /// logical subscription applies rows.
    pub fn set_replica_role(&self, on: bool) {
        self.shared.replica_role.store(on, Ordering::Relaxed);
    }

    /// The per-table state (what `cutover copy status` shows).
    pub fn state(&self) -> super::state::PairState {
        self.shared.store.snapshot()
    }

    async fn preflight(&mut self, sink: &Sink) -> Result<String, StepError> {
        let copy = &self.shared.copy;
        let src = connect(&copy.source, copy.source_db()).await?;
        let tgt = connect(&copy.target, copy.target_db()).await?;
        let (s_label, t_label) = (
            format!("{}/{}", copy.source.name, copy.source_db()),
            format!("{}/{}", copy.target.name, copy.target_db()),
        );
        let rows = src
            .query(plan::DISCOVER_SQL, &[])
            .await
            .map_err(|e| command(&s_label, e))?;
        let mut problems = Vec::new();
        let mut tables = Vec::new();
        let mut found = BTreeSet::new();
        for row in rows {
            let (schema, name): (String, String) = (row.get(0), row.get(1));
            let qualified = format!("{schema}.{name}");
            let date = date_of(&name, row.get::<_, &str>(4), row.get::<_, &str>(5));
            found.insert(qualified.clone());
            if !copy.params.selects(&qualified, date) {
                continue;
            }
            let quoted = quote_qualified(&qualified);
            let columns = columns_of(&src, &s_label, plan::COLUMNS_SQL, &quoted).await?;
            let key = columns_of(&src, &s_label, plan::KEY_SQL, &quoted).await?;
            let exists: Option<String> = tgt
                .query_one("SELECT to_regclass($1)::text", &[&quoted])
                .await
                .map_err(|e| command(&t_label, e))?
                .get(0);
            let mapped = copy.params.mapped_target(&qualified).map(str::to_string);
            let (target, into_parent) = if let Some(mapped) = mapped {
                match mapped_into(&src, &tgt, (&s_label, &t_label), &qualified, date, &mapped)
                    .await?
                {
                    Ok(into) => (mapped, into),
                    Err(problem) => {
                        problems.push(problem);
                        continue;
                    }
                }
            } else if exists.is_some() {
                (qualified.clone(), None)
            } else {
                match into_parent(&src, &tgt, (&s_label, &t_label), &qualified, date).await? {
                    Ok((parent, mapping)) => (parent, Some(mapping)),
                    Err(problem) => {
                        problems.push(problem);
                        continue;
                    }
                }
            };
            let target_quoted = quote_qualified(&target);
            let target_columns =
                columns_of(&tgt, &t_label, plan::COLUMNS_SQL, &target_quoted).await?;
            let by_name: BTreeMap<&str, &str> = target_columns
                .iter()
                .map(|c| (c.name.as_str(), c.type_name.as_str()))
                .collect();
            let mut binary = true;
            for c in &columns {
                match by_name.get(c.name.as_str()) {
                    None => problems.push(format!(
                        "{qualified}: column {} ({}) is missing on {t_label}",
                        c.name, c.type_name
                    )),
                    Some(t) if *t != c.type_name => {
                        binary = false;
                        sink.output(format!(
                            "{qualified}: column {} is {} on the source and {t} on the target: copied as text",
                            c.name, c.type_name
                        ));
                    }
                    Some(_) => {}
                }
            }
            let mut citus = false;
            if copy.citus.is_some() {
                let kind: Option<String> = tgt
                    .query_opt(plan::CITUS_TABLE_SQL, &[&target_quoted])
                    .await
                    .map_err(|e| command(&t_label, e))?
                    .map(|r| r.get(0));
                citus = matches!(kind.as_deref(), Some("distributed" | "reference"));
                let expected = copy.citus_distribution(&target);
                let wanted = match expected {
                    Some(Distribution::Distributed) => Some("distributed"),
                    Some(Distribution::Reference) => Some("reference"),
                    Some(Distribution::Local) | None => None,
                };
                if let Some(wanted) = wanted {
                    if kind.as_deref() != Some(wanted) {
                        problems.push(format!(
                            "{target} is {} on {t_label}; the inventory's citus section says {wanted}",
                            kind.as_deref().unwrap_or("a plain local table")
                        ));
                    }
                }
            }
            let rows_estimate: i64 = row.get(3);
            let mut ranges = Vec::new();
            let parts = parts_for(rows_estimate, copy.params.split_rows);
            let int_key = key.len() == 1
                && matches!(key[0].type_name.as_str(), "integer" | "bigint" | "smallint");
            if parts > 1 && int_key {
                let sql = format!(
                    "SELECT min({k})::bigint, max({k})::bigint FROM {quoted}",
                    k = crate::sql::quote_ident(&key[0].name)
                );
                let r = src
                    .query_one(&sql, &[])
                    .await
                    .map_err(|e| command(&s_label, e))?;
                if let (Some(min), Some(max)) = (r.get::<_, Option<i64>>(0), r.get(1)) {
                    ranges = split_ranges(min, max, parts);
                }
            }
            let frozen = matches!((date, copy.params.frozen_before), (Some(d), Some(f)) if d < f);
            // Without a single integer key, a big frozen table whose target is wholly this
            // copy's is split by ctid block ranges (see `CopyTable::ctid_ranges`).
            let mut ctid_ranges = false;
            if parts > 1 && !int_key && frozen && into_parent.is_none() {
                let blocks: i64 = src
                    .query_one(plan::BLOCKS_SQL, &[&quoted])
                    .await
                    .map_err(|e| command(&s_label, e))?
                    .get(0);
                ranges = split_ranges(0, blocks - 1, parts);
                ctid_ranges = !ranges.is_empty();
            }
            let mut rebuild = Vec::new();
            if !citus && ranges.is_empty() && into_parent.is_none() {
                let empty: bool = tgt
                    .query_one(
                        &format!("SELECT NOT EXISTS (SELECT 1 FROM {target_quoted})"),
                        &[],
                    )
                    .await
                    .map_err(|e| command(&t_label, e))?
                    .get(0);
                let referenced: i64 = tgt
                    .query_one(plan::REFERENCED_SQL, &[&target_quoted])
                    .await
                    .map_err(|e| command(&t_label, e))?
                    .get(0);
                if empty && referenced == 0 {
                    for r in tgt
                        .query(plan::INDEXES_SQL, &[&target_quoted])
                        .await
                        .map_err(|e| command(&t_label, e))?
                    {
                        let (index, def): (String, String) = (r.get(0), r.get(1));
                        let (con, condef): (Option<String>, Option<String>) = (r.get(2), r.get(3));
                        let constraint = con.as_deref().zip(condef.as_deref());
                        rebuild.push(plan::rebuild_of(&target, &index, &def, constraint));
                    }
                }
            }
            tables.push(CopyTable {
                source: qualified.clone(),
                target,
                date,
                bytes: row.get(2),
                rows_estimate,
                columns,
                key,
                binary,
                citus,
                ranges,
                frozen,
                rebuild,
                into_parent,
                ctid_ranges,
            });
        }
        for named in &copy.params.tables {
            if !found.iter().any(|q| plan::names_match(named, q)) {
                problems.push(format!("source table {named} does not exist on {s_label}"));
            }
        }
        for (source, target) in &copy.params.maps {
            if !found.contains(source) {
                problems.push(format!(
                    "--map {source}={target}: source table {source} does not exist on {s_label}"
                ));
            }
        }
        // A target that is not split by period is wholly one source's: its copy truncates it.
        let mut whole: BTreeMap<&str, &str> = BTreeMap::new();
        for table in tables.iter().filter(|t| t.into_parent.is_none()) {
            if let Some(other) = whole.insert(&table.target, &table.source) {
                problems.push(format!(
                    "{other} and {} both go into {} on {t_label}, which is not range-partitioned by a date column: each copy would truncate the other's rows",
                    table.source, table.target
                ));
            }
        }
        // Largest first: the last table to start is a small one, so no job idles at the end.
        tables.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.source.cmp(&b.source)));
        let total: i64 = tables.iter().map(|t| t.bytes).sum();
        match self.free_kb(&copy.target).await {
            Ok(free_kb) => {
                let need_kb = total / 1024 * 5 / 4;
                sink.output(format!(
                    "free disk on {}: {} MB; the selected tables take {} MB on the source",
                    copy.target.name,
                    free_kb / 1024,
                    total / 1024 / 1024
                ));
                if free_kb < need_kb {
                    problems.push(format!(
                        "{} has {} MB free; the copy needs about {} MB",
                        copy.target.name,
                        free_kb / 1024,
                        need_kb / 1024
                    ));
                }
            }
            Err(e) => problems.push(format!("free disk on {} unknown: {e}", copy.target.name)),
        }
        if !problems.is_empty() {
            return Err(StepError::gate(problems.join("; ")));
        }
        for t in &tables {
            sink.output(format!(
                "{} → {}: date {}, {} MB, ~{} rows, {}{}{}",
                t.source,
                t.target,
                t.date.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                t.bytes / 1024 / 1024,
                t.rows_estimate,
                if t.binary { "binary" } else { "text" },
                match (t.ranges.len(), t.ctid_ranges) {
                    (0, _) => String::new(),
                    (n, false) => format!(", {n} key ranges"),
                    (n, true) => format!(
                        ", {n} ctid block ranges (TRUNCATE once, then each range appends; verified as a whole table)"
                    ),
                },
                if t.frozen { ", frozen" } else { "" }
            ));
            if let Some(p) = &t.into_parent {
                sink.output(format!(
                    "  {} is not on the target: copied into its parent {}, which other tables share; an earlier attempt's rows are removed by `DELETE FROM {} WHERE {}`, never by TRUNCATE",
                    t.source,
                    t.target,
                    quote_qualified(&t.target),
                    p.filter()
                ));
            }
            for r in &t.rebuild {
                sink.output(format!(
                    "  {} is empty: in the copy's transaction `{}`, then after the load `{}`",
                    t.target, r.drop, r.create
                ));
            }
        }
        let live: Vec<&str> = tables
            .iter()
            .filter(|t| !t.frozen)
            .map(|t| t.source.as_str())
            .collect();
        if !live.is_empty() {
            sink.output(format!(
                "WARNING: {} live table(s) (not dated before --frozen-before): each is copied as one snapshot, the copy is not consistent across tables nor with writes after it; move live tables with the logical-move runbook",
                live.len()
            ));
        }
        let bytes =
            serde_json::to_vec_pretty(&tables).map_err(|e| StepError::Setup(e.to_string()))?;
        write_durably(&self.run_dir.join(TABLES_FILE), &bytes)?;
        self.shared
            .store
            .declare(&tables)
            .map_err(StepError::Setup)?;
        let n = tables.len();
        let items: usize = tables.iter().map(|t| t.item_ids().len()).sum();
        self.tables = Some(Arc::new(tables));
        Ok(format!(
            "{n} tables ({items} items, {} MB) found on {s_label}, all present and compatible on {t_label}",
            total / 1024 / 1024
        ))
    }

    async fn free_kb(&self, node: &Node) -> Result<i64, StepError> {
        let out = self
            .ctx
            .host_read(
                &node.host,
                &plan::df_command(&node.data_dir),
                HOST_COMMAND_TIMEOUT,
            )
            .await?;
        out.lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StepError::Failed(format!("unexpected df output: {out}")))
    }

    /// The whole-run check after the items: every part of every table is verified in the
    /// target's own ledger (not only in the local state), then the summary.
    async fn confirm_ledger(&self) -> Result<String, StepError> {
        let copy = &self.shared.copy;
        let t_label = format!("{}/{}", copy.target.name, copy.target_db());
        let tgt = connect(&copy.target, copy.target_db()).await?;
        let verified: BTreeSet<(String, String)> = tgt
            .query(plan::LEDGER_ALL_SQL, &[])
            .await
            .map_err(|e| command(&t_label, e))?
            .iter()
            .filter(|r| r.get::<_, bool>(3))
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut missing = Vec::new();
        for t in self.tables().unwrap_or_default() {
            if t.ctid_ranges {
                if let Err(reason) = verify_whole(&self.shared, t, &tgt, &verified).await {
                    missing.push(format!("{} ({reason})", t.source));
                }
                continue;
            }
            for id in t.item_ids() {
                let part = t
                    .part_of(&id)
                    .map_err(StepError::Failed)?
                    .map_or(WHOLE.to_string(), |(k, _)| k);
                if !verified.contains(&(t.target.clone(), t.ledger_part(&part))) {
                    missing.push(id);
                }
            }
        }
        if !missing.is_empty() {
            return Err(StepError::gate(format!(
                "not verified in {t_label}'s ledger: {}",
                missing.join(", ")
            )));
        }
        self.summary()
    }

    fn summary(&self) -> Result<String, StepError> {
        let pair = self.shared.store.snapshot();
        let tables = self
            .tables
            .as_deref()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut verified = 0;
        let mut rows = 0;
        let mut not = Vec::new();
        for t in tables {
            match pair.tables.get(&t.source) {
                Some(state) if state.status() == Status::Verified => {
                    verified += 1;
                    rows += state.rows();
                }
                Some(state) => not.push(format!("{} {}", t.source, state.status().label())),
                None => not.push(format!("{} unknown", t.source)),
            }
        }
        if !not.is_empty() {
            return Err(StepError::gate(format!("not verified: {}", not.join(", "))));
        }
        Ok(format!(
            "{verified} tables copied and verified, {rows} rows"
        ))
    }
}

/// A table copied in ctid ranges, verified as a whole once every range is in: count and
/// checksum on both sides; equal marks every range verified (ledger, then state); a mismatch
/// names the first differing keys and errors the table.
async fn verify_whole(
    shared: &Shared,
    table: &CopyTable,
    tgt: &Client,
    verified: &BTreeSet<(String, String)>,
) -> Result<(), String> {
    let copy = &shared.copy;
    let parts: Vec<String> = (1..=table.ranges.len())
        .map(|i| format!("{i}/{}", table.ranges.len()))
        .collect();
    if parts
        .iter()
        .all(|p| verified.contains(&(table.target.clone(), table.ledger_part(p))))
    {
        return Ok(());
    }
    let s_label = format!("{}/{}", copy.source.name, copy.source_db());
    let t_label = format!("{}/{}", copy.target.name, copy.target_db());
    let src = connect(&copy.source, copy.source_db())
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let (s, t) = tokio::join!(
        checksum(&src, &s_label, table.checksum_sql(&table.source, None)),
        checksum(tgt, &t_label, table.checksum_sql(&table.target, None)),
    );
    let (s, t) = (s.map_err(|e| e.to_string())?, t.map_err(|e| e.to_string())?);
    let verify_ms = started.elapsed().as_millis() as u64;
    let outcome = if s == t {
        Ok(())
    } else {
        let keys = differing_keys(&src, tgt, table, None, &s_label, &t_label)
            .await
            .map_err(|e| e.to_string())?;
        Err(format!(
            "verification failed: {} rows on the source, {} on the target, checksums {} and {}; first differing keys: {}; copy it again with a run of its own (--table {})",
            s.rows,
            t.rows,
            s.sum,
            t.sum,
            if keys.is_empty() { "none found".to_string() } else { keys.join(", ") },
            table.source
        ))
    };
    for part in &parts {
        let ledger_part = table.ledger_part(part);
        match &outcome {
            Ok(()) => tgt
                .execute(
                    plan::LEDGER_VERIFIED_SQL,
                    &[&table.target, &ledger_part, &t.sum],
                )
                .await
                .map_err(|e| pg::error_chain(&e))?,
            Err(reason) => tgt
                .execute(
                    plan::LEDGER_MISMATCH_SQL,
                    &[&table.target, &ledger_part, reason],
                )
                .await
                .map_err(|e| pg::error_chain(&e))?,
        };
        shared
            .store
            .update(&table.source, part, |p| match &outcome {
                Ok(()) => {
                    p.status = Status::Verified;
                    p.verify_ms = verify_ms / parts.len().max(1) as u64;
                    p.error = None;
                    p.finished_at = Some(Utc::now());
                }
                Err(reason) => {
                    p.status = Status::Errored;
                    p.error = Some(reason.clone());
                }
            })?;
    }
    outcome
}

/// Empty the target of a table split by ctid ranges, once: the TRUNCATE and its ledger marker
/// commit together, so a later attempt (whose ranges may already be appended) never truncates
/// again. Whether it truncated now.
async fn truncate_once(tgt: &Client, label: &str, table: &CopyTable) -> Result<bool, StepError> {
    let marker = table.ledger_part(plan::TRUNCATED);
    let done = tgt
        .query_opt(plan::LEDGER_LOOKUP_SQL, &[&table.target, &marker])
        .await
        .map_err(|e| command(label, e))?;
    if done.is_some() {
        return Ok(false);
    }
    tgt.batch_execute(&format!(
        "BEGIN; TRUNCATE {}; {}; COMMIT",
        quote_qualified(&table.target),
        plan::ledger_upsert_from_sql(&table.target, &table.source, &marker, "-", 0)
    ))
    .await
    .map_err(|e| command(label, e))?;
    Ok(true)
}

/// How the source table `qualified` goes into `mapped`, the target `--map` names for it: into
/// its period when `mapped` is range-partitioned by a date column and the source is dated (as
/// for a parent found by name), else wholly. `Ok(Err(problem))`: `mapped` is missing, or the
/// source's rows there could not be told apart.
async fn mapped_into(
    src: &Client,
    tgt: &Client,
    (s_label, t_label): (&str, &str),
    qualified: &str,
    date: Option<chrono::NaiveDate>,
    mapped: &str,
) -> Result<Result<Option<IntoParent>, String>, StepError> {
    let mapped_quoted = quote_qualified(mapped);
    let found: Option<String> = tgt
        .query_one("SELECT to_regclass($1)::text", &[&mapped_quoted])
        .await
        .map_err(|e| command(t_label, e))?
        .get(0);
    if found.is_none() {
        return Ok(Err(format!(
            "--map {qualified}={mapped}: target table {mapped} does not exist on {t_label}"
        )));
    }
    let by_date: Option<String> = tgt
        .query_opt(plan::DATE_PARTITION_KEY_SQL, &[&mapped_quoted])
        .await
        .map_err(|e| command(t_label, e))?
        .map(|r| r.get(0));
    if by_date.is_none() || date.is_none() {
        return Ok(Ok(None));
    }
    Ok(
        into_named_parent(src, tgt, (s_label, t_label), qualified, date, mapped)
            .await?
            .map(|(_, into)| Some(into)),
    )
}

/// Where a source table missing on the target goes: its parent there (the name without its
/// date), range-partitioned by a date column, with every source row inside the table's period.
/// `Ok(Err(problem))`: it has nowhere to go.
async fn into_parent(
    src: &Client,
    tgt: &Client,
    (s_label, t_label): (&str, &str),
    qualified: &str,
    date: Option<chrono::NaiveDate>,
) -> Result<Result<(String, IntoParent), String>, StepError> {
    let missing = format!("{qualified} does not exist on {t_label}");
    let Some(parent) = plan::parent_name(qualified) else {
        return Ok(Err(missing));
    };
    into_named_parent(src, tgt, (s_label, t_label), qualified, date, &parent).await
}

/// [`into_parent`] with the parent named.
async fn into_named_parent(
    src: &Client,
    tgt: &Client,
    (s_label, t_label): (&str, &str),
    qualified: &str,
    date: Option<chrono::NaiveDate>,
    parent: &str,
) -> Result<Result<(String, IntoParent), String>, StepError> {
    let missing = format!("{qualified} does not exist on {t_label}");
    let parent = parent.to_string();
    let parent_quoted = quote_qualified(&parent);
    let found: Option<String> = tgt
        .query_one("SELECT to_regclass($1)::text", &[&parent_quoted])
        .await
        .map_err(|e| command(t_label, e))?
        .get(0);
    if found.is_none() {
        return Ok(Err(format!("{missing}, nor does its parent {parent}")));
    }
    let column: Option<String> = tgt
        .query_opt(plan::DATE_PARTITION_KEY_SQL, &[&parent_quoted])
        .await
        .map_err(|e| command(t_label, e))?
        .map(|r| r.get(0));
    let (Some(column), Some(date)) = (column, date) else {
        return Ok(Err(format!(
            "{missing}; its parent {parent} there is not range-partitioned by a date column, so the rows this copy owns in it could not be told apart"
        )));
    };
    let Some(mapping) = IntoParent::period(&column, date) else {
        return Ok(Err(format!("{missing}; {date} has no following period")));
    };
    let outside: i64 = src
        .query_one(
            &format!(
                "SELECT count(*)::bigint FROM {} WHERE NOT ({}) OR {} IS NULL",
                quote_qualified(qualified),
                mapping.filter(),
                crate::sql::quote_ident(&column)
            ),
            &[],
        )
        .await
        .map_err(|e| command(s_label, e))?
        .get(0);
    if outside > 0 {
        return Ok(Err(format!(
            "{qualified} would go into {parent} on {t_label}, but {outside} of its rows have {column} outside [{}, {}): its rows there could not be told apart",
            mapping.lo, mapping.hi
        )));
    }
    Ok(Ok((parent, mapping)))
}

fn load_tables(run_dir: &std::path::Path) -> Result<Option<Vec<CopyTable>>, String> {
    let path = run_dir.join(TABLES_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// A connection of its own with the settings that change text output pinned.
async fn connect(node: &Node, db: &str) -> Result<Client, StepError> {
    let endpoint = Endpoint::node(node, db);
    let client = pg::connect(&endpoint, SessionSettings::EXECUTOR).await?;
    client
        .batch_execute(PINNED_SETTINGS)
        .await
        .map_err(|e| command(&endpoint.label(), e))?;
    Ok(client)
}

async fn columns_of(
    client: &Client,
    label: &str,
    sql: &str,
    quoted: &str,
) -> Result<Vec<Column>, StepError> {
    Ok(client
        .query(sql, &[&quoted])
        .await
        .map_err(|e| command(label, e))?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
        })
        .collect())
}

impl Actions for TableCopyActions {
    async fn preconditions(&mut self, step: &Step) -> Vec<PreconditionResult> {
        let mut results = Vec::new();
        if let Ok(CopyStep::Preflight) = CopyStep::of(step) {
            let copy = &self.shared.copy;
            let answer = async {
                connect(&copy.source, copy.source_db())
                    .await
                    .map_err(|e| e.to_string())?;
                connect(&copy.target, copy.target_db())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>("both answer".to_string())
            }
            .await;
            results.push(verdict("nodes-answer", answer));
        }
        results
    }

    async fn observations(&mut self, _step: &Step) -> Vec<Observation> {
        Vec::new()
    }

    async fn action(
        &mut self,
        step: &Step,
        recheck: bool,
        sink: Sink,
    ) -> Result<String, StepError> {
        announce_recheck(step, recheck, &sink);
        match CopyStep::of(step)? {
            CopyStep::Preflight => self.preflight(&sink).await,
            CopyStep::Ledger => {
                let copy = &self.shared.copy;
                let tgt = connect(&copy.target, copy.target_db()).await?;
                tgt.batch_execute(LEDGER_DDL)
                    .await
                    .map_err(|e| command(&copy.target.name, e))?;
                let mut truncated = Vec::new();
                for t in self.tables().unwrap_or_default() {
                    if t.ctid_ranges && truncate_once(&tgt, &copy.target.name, t).await? {
                        truncated.push(t.target.clone());
                    }
                }
                Ok(format!(
                    "{} exists{}",
                    plan::LEDGER,
                    if truncated.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; truncated once for their ctid ranges: {}",
                            truncated.join(", ")
                        )
                    }
                ))
            }
            CopyStep::Copy => Ok(format!(
                "{} tables copied, each in one target transaction with its ledger row, each verified right after its commit",
                self.tables().map_or(0, <[CopyTable]>::len)
            )),
            CopyStep::Verify => self.confirm_ledger().await,
        }
    }

    async fn undo(
        &mut self,
        step: &Step,
        _recheck: bool,
        _sink: Sink,
    ) -> Result<String, StepError> {
        match CopyStep::of(step)? {
            CopyStep::Preflight | CopyStep::Ledger | CopyStep::Verify => {
                Ok("nothing to undo".into())
            }
            CopyStep::Copy => Err(StepError::precondition(
                "the copy is a point of no return: copied rows stay, recorded in the target's ledger",
            )),
        }
    }

    async fn force_resume(&mut self, _sink: Sink) -> Result<String, StepError> {
        Ok("a table copy never pauses traffic".into())
    }

    fn pause_bound(&self) -> Duration {
        plan::PAUSE_BOUND
    }

    fn resume_is_safe(&self, _plan: &Plan, _state: &EngineState) -> bool {
        true
    }

    fn confirm_each_item(&self, step: &Step) -> bool {
        self.shared.copy.policy.confirm && matches!(CopyStep::of(step), Ok(CopyStep::Copy))
    }

    fn allow_retry(&mut self, items: &BTreeSet<ItemId>) {
        if let Ok(mut asked) = self.shared.retry_asked.lock() {
            asked.extend(items.iter().map(|i| i.as_str().to_string()));
        }
    }

    async fn items(
        &mut self,
        step: &Step,
        _recheck: bool,
        _sink: Sink,
    ) -> Result<Option<StepItems>, String> {
        match CopyStep::of(step)? {
            CopyStep::Preflight | CopyStep::Ledger | CopyStep::Verify => Ok(None),
            CopyStep::Copy => {
                let tables = self
                    .tables
                    .as_ref()
                    .ok_or("the preflight recorded no table list in this run")?;
                let policy = self.shared.copy.policy;
                Ok(Some(StepItems {
                    items: tables
                        .iter()
                        .flat_map(CopyTable::item_ids)
                        .map(ItemId::new)
                        .collect(),
                    concurrency: policy.jobs.max(1),
                    on_failure: if policy.stop_on_error {
                        OnItemFailure::Stop
                    } else {
                        OnItemFailure::Continue
                    },
                }))
            }
        }
    }

    fn run_item(
        &mut self,
        step: &Step,
        item: &ItemId,
        attempt: ItemAttempt,
        sink: Sink,
    ) -> ItemFuture {
        let shared = self.shared.clone();
        let tables = self.tables.clone();
        // Each part is verified right after its commit, in its own item: a mismatch errors
        // that table at once, under the same stop-or-continue policy as a failed copy.
        let verify = matches!(CopyStep::of(step), Ok(CopyStep::Copy));
        let item = item.as_str().to_string();
        Box::pin(async move {
            let tables = tables.ok_or("the preflight recorded no table list in this run")?;
            let table = tables
                .iter()
                .find(|t| item == t.source || item.starts_with(&format!("{}#", t.source)))
                .ok_or_else(|| format!("item `{item}` is not in this run's table list"))?;
            let part = table.part_of(&item)?;
            copy_item(&shared, table, part, attempt, verify, &sink).await
        })
    }
}

/// Counts and checksums of one part on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sums {
    rows: i64,
    sum: String,
}

async fn checksum(client: &Client, label: &str, sql: String) -> Result<Sums, StepError> {
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| command(label, e))?;
    Ok(Sums {
        rows: row.get(0),
        sum: row.get(1),
    })
}

/// One attempt at a table or range in the copy step (`verify`: the verify step): reconcile
/// from the ledger, copy if it lacks the part (or holds a failed verification), verify in
/// the verify step, and record the outcome locally.
async fn copy_item(
    shared: &Shared,
    table: &CopyTable,
    part: Option<(String, Range)>,
    attempt: ItemAttempt,
    verify: bool,
    sink: &Sink,
) -> Result<String, String> {
    let part_key = part.as_ref().map_or(WHOLE.to_string(), |(k, _)| k.clone());
    let range = part.map(|(_, r)| r);
    let store = &shared.store;
    let previous = store.part(&table.source, &part_key).unwrap_or_default();
    let item = match &range {
        None => table.source.clone(),
        Some(_) => format!("{}#{part_key}", table.source),
    };
    let asked = shared
        .retry_asked
        .lock()
        .is_ok_and(|asked| asked.contains(&item));
    if previous.status == Status::Errored && !shared.copy.policy.retry_errors && !asked {
        return Err(format!(
            "errored earlier ({}); fix the cause and run again with --retry-errors",
            previous.error.unwrap_or_default()
        ));
    }
    match copy_part(shared, table, &part_key, range, attempt, verify, sink).await {
        Ok(detail) => Ok(detail),
        Err(e) => {
            let reason = e.to_string();
            let _ = store.update(&table.source, &part_key, |p| {
                p.status = Status::Errored;
                p.error = Some(reason.clone());
                p.finished_at = Some(Utc::now());
            });
            Err(reason)
        }
    }
}

async fn copy_part(
    shared: &Shared,
    table: &CopyTable,
    part_key: &str,
    range: Option<Range>,
    attempt: ItemAttempt,
    verify: bool,
    sink: &Sink,
) -> Result<String, StepError> {
    let copy = &shared.copy;
    let store = &shared.store;
    let setup = StepError::Setup;
    let t_label = format!("{}/{}", copy.target.name, copy.target_db());
    let s_label = format!("{}/{}", copy.source.name, copy.source_db());
    let mut tgt = connect(&copy.target, copy.target_db()).await?;
    let ledger = tgt
        .query_opt(
            plan::LEDGER_LOOKUP_SQL,
            &[&table.target, &table.ledger_part(part_key)],
        )
        .await
        .map_err(|e| command(&t_label, e))?;
    let ledger: Option<(i64, bool, Option<String>)> =
        ledger.map(|r| (r.get(0), r.get(1), r.get(2)));
    if let Some((rows, true, _)) = ledger {
        store
            .update(&table.source, part_key, |p| {
                p.status = Status::Verified;
                p.rows = rows as u64;
                p.error = None;
            })
            .map_err(setup)?;
        return Ok(format!(
            "verified earlier (ledger): {rows} rows; not copied again"
        ));
    }
    let src = connect(&copy.source, copy.source_db()).await?;
    // A frozen table must not be written while it is copied: its write counters are read
    // before the copy and again after it, before the checksums.
    let writes_before = if table.frozen {
        Some(writes(&src, &s_label, &table.source).await?)
    } else {
        None
    };
    let snapshot = shared.snapshot.lock().ok().and_then(|s| s.clone());
    if let Some(snapshot) = snapshot {
        src.batch_execute(&plan::snapshot_sql(&snapshot))
            .await
            .map_err(|e| command(&s_label, e))?;
    }
    let detail = match ledger {
        Some((rows, false, None)) => {
            if store
                .part(&table.source, part_key)
                .is_some_and(|p| p.status != Status::Copied)
            {
                store
                    .update(&table.source, part_key, |p| {
                        p.status = Status::Copied;
                        p.rows = rows as u64;
                    })
                    .map_err(setup)?;
            }
            format!("committed earlier (ledger): {rows} rows; not copied again")
        }
        Some((_, false, Some(reason))) if table.ctid_ranges => {
            // A ctid range cannot be removed from the target alone: copying it again would
            // add its rows twice.
            return Err(StepError::gate(format!(
                "{} failed its whole-table verification ({reason}); its ctid ranges cannot be copied again one by one: TRUNCATE {} and DELETE FROM public.{} WHERE target_table = '{}', then run again",
                table.source,
                quote_qualified(&table.target),
                plan::LEDGER,
                table.target
            )));
        }
        _ => {
            if ledger.is_some() {
                sink.output(format!(
                    "{} {part_key}: its last verification failed; copying it again",
                    table.source
                ));
            }
            let rows = stream_part(shared, table, part_key, range, attempt, &src, &mut tgt).await?;
            format!("{rows} rows copied")
        }
    };
    if let Some(before) = writes_before {
        let after = writes(&src, &s_label, &table.source).await?;
        if after != before {
            let reason = format!(
                "{} is marked frozen (dated before --frozen-before) but was written on {s_label} while it was copied ({} inserts, {} updates, {} deletes): this copy is not a consistent image of it; stop the writers (or move it with the logical-move runbook), then --retry-errors",
                table.source,
                after.0 - before.0,
                after.1 - before.1,
                after.2 - before.2
            );
            tgt.execute(
                plan::LEDGER_MISMATCH_SQL,
                &[&table.target, &table.ledger_part(part_key), &reason],
            )
            .await
            .map_err(|e| command(&t_label, e))?;
            return Err(StepError::gate(reason));
        }
    }
    if !verify || (table.ctid_ranges && range.is_some()) {
        // A ctid range has no counterpart on the target to compare: the whole table is
        // verified once every range is in (the verify step).
        return Ok(detail);
    }
    let started = Instant::now();
    let (s, t) = tokio::join!(
        checksum(&src, &s_label, table.checksum_sql(&table.source, range)),
        checksum(&tgt, &t_label, table.checksum_sql(&table.target, range)),
    );
    let (s, t) = (s?, t?);
    let verify_ms = started.elapsed().as_millis() as u64;
    if s == t {
        tgt.execute(
            plan::LEDGER_VERIFIED_SQL,
            &[&table.target, &table.ledger_part(part_key), &t.sum],
        )
        .await
        .map_err(|e| command(&t_label, e))?;
        store
            .update(&table.source, part_key, |p| {
                p.status = Status::Verified;
                p.rows = t.rows as u64;
                p.verify_ms = verify_ms;
                p.error = None;
                p.finished_at = Some(Utc::now());
            })
            .map_err(setup)?;
        return Ok(format!("{} rows, checksum {} on both sides", t.rows, t.sum));
    }
    let keys = differing_keys(&src, &tgt, table, range, &s_label, &t_label).await?;
    let reason = format!(
        "verification failed: {} rows on the source, {} on the target, checksums {} and {}; first differing keys: {}",
        s.rows,
        t.rows,
        s.sum,
        t.sum,
        if keys.is_empty() { "none found".to_string() } else { keys.join(", ") }
    );
    tgt.execute(
        plan::LEDGER_MISMATCH_SQL,
        &[&table.target, &table.ledger_part(part_key), &reason],
    )
    .await
    .map_err(|e| command(&t_label, e))?;
    Err(StepError::gate(reason))
}

/// Inserts, updates and deletes counted on `table` so far (`pg_stat_user_tables`; a writer's
/// counts arrive when its backend flushes them: at the latest when it goes idle or exits).
async fn writes(client: &Client, label: &str, table: &str) -> Result<(i64, i64, i64), StepError> {
    let row = client
        .query_one(plan::WRITES_SQL, &[&quote_qualified(table)])
        .await
        .map_err(|e| command(label, e))?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// The copy itself: one target transaction that removes what an earlier attempt left, takes
/// the source's stream, and writes the ledger row; the local state is updated after commit.
async fn stream_part(
    shared: &Shared,
    table: &CopyTable,
    part_key: &str,
    range: Option<Range>,
    attempt: ItemAttempt,
    src: &Client,
    tgt: &mut Client,
) -> Result<u64, StepError> {
    let copy = &shared.copy;
    let store = &shared.store;
    let t_label = format!("{}/{}", copy.target.name, copy.target_db());
    let s_label = format!("{}/{}", copy.source.name, copy.source_db());
    store
        .update(&table.source, part_key, |p| {
            p.status = Status::Copying;
            p.attempts = attempt.number.max(p.attempts + 1);
            p.error = None;
            p.started_at = Some(Utc::now());
        })
        .map_err(StepError::Setup)?;
    let started = Instant::now();
    let bytes = AtomicU64::new(0);
    let tx = tgt.transaction().await.map_err(|e| command(&t_label, e))?;
    // Asynchronous commit: the rows and their ledger row are lost or kept together, and a
    // part the ledger lacks is copied again, so only durability lag is traded, never a row.
    let role = if shared.replica_role.load(Ordering::Relaxed) {
        "SET LOCAL session_replication_role = replica; "
    } else {
        ""
    };
    tx.batch_execute(&format!(
        "{role}SET LOCAL synchronous_commit = off; {}",
        table.cleanup_sql(range)
    ))
    .await
    .map_err(|e| command(&t_label, e))?;
    let rebuild = if range.is_none() {
        table.rebuild.as_slice()
    } else {
        &[]
    };
    for r in rebuild {
        tx.batch_execute(&r.drop)
            .await
            .map_err(|e| command(&t_label, e))?;
    }
    let stream = src
        .copy_out(&table.copy_out_sql(range))
        .await
        .map_err(|e| command(&s_label, e))?;
    let target_sink = tx
        .copy_in(&table.copy_in_sql(range))
        .await
        .map_err(|e| command(&t_label, e))?;
    futures_util::pin_mut!(stream);
    futures_util::pin_mut!(target_sink);
    // The source sends a message per row; the target gets them in batches of BATCH bytes.
    let mut batch = bytes::BytesMut::with_capacity(2 * BATCH);
    let stream_err = |e| command(&format!("{s_label} → {t_label}"), e);
    while let Some(chunk) = stream.as_mut().try_next().await.map_err(stream_err)? {
        bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        batch.extend_from_slice(&chunk);
        if batch.len() >= BATCH {
            target_sink
                .as_mut()
                .feed(batch.split().freeze())
                .await
                .map_err(stream_err)?;
        }
    }
    if !batch.is_empty() {
        target_sink
            .as_mut()
            .feed(batch.split().freeze())
            .await
            .map_err(stream_err)?;
    }
    let rows = target_sink
        .as_mut()
        .finish()
        .await
        .map_err(|e| command(&t_label, e))?;
    for r in rebuild {
        tx.batch_execute(&r.create)
            .await
            .map_err(|e| command(&t_label, e))?;
    }
    tx.batch_execute(&plan::ledger_upsert_from_sql(
        &table.target,
        &table.source,
        &table.ledger_part(part_key),
        &shared.run_id,
        rows,
    ))
    .await
    .map_err(|e| command(&t_label, e))?;
    tx.commit().await.map_err(|e| command(&t_label, e))?;
    if std::env::var(KILL_AFTER_COMMIT_ENV)
        .is_ok_and(|v| v == table.source || v == format!("{}#{part_key}", table.source))
    {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    let copy_ms = started.elapsed().as_millis() as u64;
    let bytes = bytes.load(Ordering::Relaxed);
    store
        .update(&table.source, part_key, |p| {
            p.status = Status::Copied;
            p.rows = rows;
            p.bytes = bytes;
            p.copy_ms = copy_ms;
        })
        .map_err(StepError::Setup)?;
    Ok(rows)
}

type Buckets = BTreeMap<i32, (i64, Option<String>)>;

async fn buckets(client: &Client, label: &str, sql: String) -> Result<Buckets, StepError> {
    Ok(client
        .query(&sql, &[])
        .await
        .map_err(|e| command(label, e))?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

async fn bucket_rows(
    client: &Client,
    label: &str,
    sql: String,
) -> Result<BTreeMap<String, String>, StepError> {
    Ok(client
        .query(&sql, &[])
        .await
        .map_err(|e| command(label, e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Rows and hash sum of a span, the sum exact: a sum of at most 2^31 64-bit hashes fits i128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct SpanSums {
    rows: i64,
    sum: i128,
}

impl std::ops::Sub for SpanSums {
    type Output = SpanSums;
    fn sub(self, other: SpanSums) -> SpanSums {
        SpanSums {
            rows: self.rows - other.rows,
            sum: self.sum - other.sum,
        }
    }
}

async fn span_sums(client: &Client, label: &str, sql: String) -> Result<SpanSums, StepError> {
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| command(label, e))?;
    let sum: String = row.get(1);
    Ok(SpanSums {
        rows: row.get(0),
        sum: sum.parse().map_err(|_| {
            StepError::Failed(format!("{label}: hash sum `{sum}` is not an integer"))
        })?,
    })
}

/// Spans with at most this many rows on either side are listed row by row.
const LEAF_ROWS: i64 = 32;
/// Most spans compared while bisecting one mismatch (each costs one query per side).
const SPANS_COMPARED: usize = 2_000;

/// The two sides of a part being compared.
struct Sides<'a> {
    src: &'a Client,
    tgt: &'a Client,
    table: &'a CopyTable,
    range: Option<Range>,
    s_label: &'a str,
    t_label: &'a str,
}

impl Sides<'_> {
    async fn sums(&self, span: &KeySpan) -> Result<(SpanSums, SpanSums), StepError> {
        let t = self.table;
        let (s, d) = tokio::join!(
            span_sums(
                self.src,
                self.s_label,
                t.span_checksum_sql(&t.source, self.range, span)
            ),
            span_sums(
                self.tgt,
                self.t_label,
                t.span_checksum_sql(&t.target, self.range, span)
            ),
        );
        Ok((s?, d?))
    }

    /// The whole part's span: for a single integer key, the smallest and largest key of
    /// either side (so arithmetic halving starts from real values); else unbounded.
    async fn whole(&self) -> Result<KeySpan, StepError> {
        let t = self.table;
        let (Some(s_sql), Some(t_sql)) = (
            t.key_min_max_sql(&t.source, self.range),
            t.key_min_max_sql(&t.target, self.range),
        ) else {
            return Ok(KeySpan::default());
        };
        let (a, b) = tokio::join!(
            min_max(self.src, self.s_label, s_sql),
            min_max(self.tgt, self.t_label, t_sql)
        );
        let (a, b) = (a?, b?);
        let lo = a.0.into_iter().chain(b.0).min();
        let hi = a.1.into_iter().chain(b.1).max();
        Ok(match (lo, hi) {
            (Some(lo), Some(hi)) => KeySpan {
                lo: Some(vec![lo.to_string()]),
                hi: Some(vec![(hi as i128 + 1).to_string()]),
            },
            _ => KeySpan::default(),
        })
    }

    /// Where to cut a span in two: the arithmetic middle of a single integer key, else the
    /// median key of the side with more rows; `None` when the span cannot be cut further.
    async fn cut(
        &self,
        span: &KeySpan,
        sums: (SpanSums, SpanSums),
    ) -> Result<Option<Vec<String>>, StepError> {
        let t = self.table;
        if t.integer_key().is_some() {
            let bound = |b: &Option<Vec<String>>| {
                b.as_ref()
                    .and_then(|v| v.first())
                    .and_then(|v| v.parse::<i128>().ok())
            };
            if let (Some(lo), Some(hi)) = (bound(&span.lo), bound(&span.hi)) {
                let mid = lo + (hi - lo) / 2;
                return Ok((mid > lo).then(|| vec![mid.to_string()]));
            }
        }
        let (client, label, table, rows) = if sums.0.rows >= sums.1.rows {
            (self.src, self.s_label, &t.source, sums.0.rows)
        } else {
            (self.tgt, self.t_label, &t.target, sums.1.rows)
        };
        if rows < 2 {
            return Ok(None);
        }
        let row = client
            .query_opt(&t.span_key_at_sql(table, self.range, span, rows / 2), &[])
            .await
            .map_err(|e| command(label, e))?;
        let Some(row) = row else { return Ok(None) };
        let mid: Vec<String> = (0..t.key.len()).map(|i| row.get(i)).collect();
        Ok((span.lo.as_ref() != Some(&mid)).then_some(mid))
    }

    /// Every row of a small span on both sides, compared key by key in key order.
    async fn leaf(&self, span: &KeySpan) -> Result<Vec<(String, &'static str)>, StepError> {
        let t = self.table;
        let (s, d) = tokio::join!(
            span_rows(
                self.src,
                self.s_label,
                t.span_rows_sql(&t.source, self.range, span)
            ),
            span_rows(
                self.tgt,
                self.t_label,
                t.span_rows_sql(&t.target, self.range, span)
            ),
        );
        let (s, d) = (s?, d?);
        let target: BTreeMap<&str, &str> =
            d.iter().map(|(k, h)| (k.as_str(), h.as_str())).collect();
        let source: BTreeSet<&str> = s.iter().map(|(k, _)| k.as_str()).collect();
        // Both lists are in the same key order: a key the other side lacks comes first.
        let mut found = Vec::new();
        let (mut i, mut j) = (0, 0);
        loop {
            match (s.get(i), d.get(j)) {
                (Some((sk, sh)), Some((dk, dh))) if sk == dk => {
                    if sh != dh {
                        found.push((sk.clone(), "differs"));
                    }
                    i += 1;
                    j += 1;
                }
                (Some((sk, _)), _) if !target.contains_key(sk.as_str()) => {
                    found.push((sk.clone(), "missing on the target"));
                    i += 1;
                }
                (_, Some((dk, _))) if !source.contains(dk.as_str()) => {
                    found.push((dk.clone(), "only on the target"));
                    j += 1;
                }
                (None, None) => break,
                // Present on both sides but met out of step (the sides order keys
                // differently, e.g. by collation): compared by lookup instead.
                (Some((sk, sh)), _) => {
                    if target.get(sk.as_str()) != Some(&sh.as_str()) {
                        found.push((sk.clone(), "differs"));
                    }
                    i += 1;
                }
                (None, Some(_)) => j += 1,
            }
        }
        Ok(found)
    }
}

async fn min_max(
    client: &Client,
    label: &str,
    sql: String,
) -> Result<(Option<i64>, Option<i64>), StepError> {
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| command(label, e))?;
    Ok((row.get(0), row.get(1)))
}

async fn span_rows(
    client: &Client,
    label: &str,
    sql: String,
) -> Result<Vec<(String, String)>, StepError> {
    Ok(client
        .query(&sql, &[])
        .await
        .map_err(|e| command(label, e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The first differing keys of a part, in key order, by bisecting its key span: each span's
/// count and hash sum are compared on both sides, only the halves that differ are cut again
/// (lower half first), and spans of at most [`LEAF_ROWS`] rows are compared row by row.
async fn bisect_keys(sides: &Sides<'_>) -> Result<Vec<(String, &'static str)>, StepError> {
    let whole = sides.whole().await?;
    let sums = sides.sums(&whole).await?;
    let mut stack = vec![(whole, sums)];
    let mut found = Vec::new();
    let mut compared = 1;
    while let Some((span, sums)) = stack.pop() {
        if found.len() >= KEYS_NAMED {
            break;
        }
        if sums.0 == sums.1 {
            continue;
        }
        let cut = if sums.0.rows.max(sums.1.rows) <= LEAF_ROWS || compared >= SPANS_COMPARED {
            None
        } else {
            sides.cut(&span, sums).await?
        };
        let Some(mid) = cut else {
            found.extend(sides.leaf(&span).await?);
            continue;
        };
        let lower = KeySpan {
            lo: span.lo.clone(),
            hi: Some(mid.clone()),
        };
        let upper = KeySpan {
            lo: Some(mid),
            hi: span.hi,
        };
        let lower_sums = sides.sums(&lower).await?;
        compared += 1;
        let upper_sums = (sums.0 - lower_sums.0, sums.1 - lower_sums.1);
        stack.push((upper, upper_sums));
        stack.push((lower, lower_sums));
    }
    found.truncate(KEYS_NAMED);
    Ok(found)
}

/// The first differing keys: by bisecting the key span where the table has a primary key;
/// without one, rows have no order to bisect, so by key-hash bucket, then row by row.
async fn differing_keys(
    src: &Client,
    tgt: &Client,
    table: &CopyTable,
    range: Option<Range>,
    s_label: &str,
    t_label: &str,
) -> Result<Vec<String>, StepError> {
    if table.bisectable() {
        let sides = Sides {
            src,
            tgt,
            table,
            range,
            s_label,
            t_label,
        };
        return Ok(bisect_keys(&sides)
            .await?
            .into_iter()
            .map(|(k, why)| format!("{k} ({why})"))
            .collect());
    }
    bucket_keys(src, tgt, table, range, s_label, t_label).await
}

/// Without a primary key: compare per key-hash bucket, then the rows of the buckets that
/// differ, row by row.
async fn bucket_keys(
    src: &Client,
    tgt: &Client,
    table: &CopyTable,
    range: Option<Range>,
    s_label: &str,
    t_label: &str,
) -> Result<Vec<String>, StepError> {
    let (s, t) = tokio::join!(
        buckets(
            src,
            s_label,
            table.buckets_sql(&table.source, range, BUCKETS)
        ),
        buckets(
            tgt,
            t_label,
            table.buckets_sql(&table.target, range, BUCKETS)
        ),
    );
    let (s, t) = (s?, t?);
    let differing: BTreeSet<i32> = s
        .keys()
        .chain(t.keys())
        .filter(|b| s.get(b) != t.get(b))
        .copied()
        .collect();
    let mut keys: Vec<(String, &'static str)> = Vec::new();
    for bucket in differing.into_iter().take(8) {
        let (sr, tr) = tokio::join!(
            bucket_rows(
                src,
                s_label,
                table.bucket_rows_sql(&table.source, range, BUCKETS, bucket)
            ),
            bucket_rows(
                tgt,
                t_label,
                table.bucket_rows_sql(&table.target, range, BUCKETS, bucket)
            ),
        );
        let (sr, tr) = (sr?, tr?);
        for (key, hash) in &sr {
            match tr.get(key) {
                None => keys.push((key.clone(), "missing on the target")),
                Some(h) if h != hash => keys.push((key.clone(), "differs")),
                Some(_) => {}
            }
        }
        for key in tr.keys() {
            if !sr.contains_key(key) {
                keys.push((key.clone(), "only on the target"));
            }
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .take(KEYS_NAMED)
        .map(|(k, why)| format!("{k} ({why})"))
        .collect())
}
