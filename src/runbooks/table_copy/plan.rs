//! The `table-copy` plan (seed 004): copy tables from one database to another (PostgreSQL or
//! a Citus coordinator), N at a time, each table or key range exactly once, each verified.
//!
//! Pure: the SQL here is what the effects send, so what a reviewer reads is what runs. The
//! concrete table list is read from the source by the preflight step and recorded in the run
//! (`tables.json` in the run dir, the copy step's items in the journal); the plan records the
//! selection (tables named, dates) and, for tables named with `--table`, their exact SQL.

use super::CopyStep;
use crate::inventory::{CitusCluster, Distribution, Inventory, Node};
use crate::plan::{ParamError, Plan, RenderedCommand, Step, StepFlags, Undo};
use crate::runbooks::{RunbookError, StepKind};
use crate::sql::{quote_ident, quote_literal, quote_qualified};
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const RUNBOOK: &str = "table-copy";
/// A table copy never pauses application traffic; the bound only answers the engine's question.
pub const PAUSE_BOUND: std::time::Duration = std::time::Duration::from_secs(10);
/// The ledger on the target: one row per table or key range this tool committed.
pub const LEDGER: &str = "cutover_copy_ledger";
/// Rows (estimated) above which a table with a single integer key is split into ranges.
pub const DEFAULT_SPLIT_ROWS: u64 = 2_000_000;
/// Most ranges one table is split into.
pub const MAX_PARTS: u64 = 16;

/// Session settings pinned on both sides for every copy and checksum: they change the text
/// form of values (text-format COPY and row hashes).
pub const PINNED_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
SET statement_timeout = 0";

/// What is copied: the plan's parameters, covered by its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyParams {
    pub from: (String, String),
    pub to: (String, String),
    /// Only tables whose date is on or after this.
    pub start_date: Option<NaiveDate>,
    /// Only tables whose date is before this.
    pub end_date: Option<NaiveDate>,
    /// Only these source tables (`schema.table` or `table`); empty: every table.
    pub tables: Vec<String>,
    pub split_rows: u64,
    /// Tables dated before this are frozen (no longer written); the others are live and
    /// their copy is a snapshot per table, not consistent across tables.
    pub frozen_before: Option<NaiveDate>,
    /// `--map SRC=TARGET`: explicit targets by qualified source name, before the name-minus-
    /// date rule. A target range-partitioned by a date column takes a dated source's period
    /// (as a parent found by the rule does); any other target is wholly that source's.
    pub maps: BTreeMap<String, String>,
}

/// How the copy runs: run-time policy, not part of the plan (a resumed run may change it, e.g.
/// `--retry-errors` after fixing a target table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyPolicy {
    pub jobs: usize,
    pub retry_errors: bool,
    pub stop_on_error: bool,
    /// `--confirm`: each table (or range) waits for the operator's confirmation.
    pub confirm: bool,
}

impl Default for CopyPolicy {
    fn default() -> Self {
        CopyPolicy {
            jobs: 2,
            retry_errors: false,
            stop_on_error: true,
            confirm: false,
        }
    }
}

fn node_db(name: &'static str, value: &str) -> Result<(String, String), ParamError> {
    value
        .split_once('/')
        .filter(|(node, db)| !node.is_empty() && !db.is_empty())
        .map(|(node, db)| (node.to_string(), db.to_string()))
        .ok_or_else(|| ParamError::Invalid {
            name,
            value: value.to_string(),
            reason: "expected NODE/DATABASE, e.g. pg1/reporting".into(),
        })
}

fn date_param(
    params: &BTreeMap<String, String>,
    name: &'static str,
) -> Result<Option<NaiveDate>, ParamError> {
    params
        .get(name)
        .map(|v| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| ParamError::Invalid {
                name,
                value: v.clone(),
                reason: "expected YYYY-MM-DD".into(),
            })
        })
        .transpose()
}

/// `--map SRC=TARGET,...` (the CLI's repeated `--map`), both sides qualified with `public`
/// when they have no schema. Refused: an entry without `=` or with an empty side, a source
/// mapped twice, a source mapped onto itself, and a source `--table` does not select.
fn maps_param(
    params: &BTreeMap<String, String>,
    tables: &[String],
) -> Result<BTreeMap<String, String>, ParamError> {
    let mut maps = BTreeMap::new();
    let Some(value) = params.get("map") else {
        return Ok(maps);
    };
    let invalid = |entry: &str, reason: String| ParamError::Invalid {
        name: "map",
        value: entry.to_string(),
        reason,
    };
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (source, target) = entry
            .split_once('=')
            .map(|(s, t)| (s.trim(), t.trim()))
            .filter(|(s, t)| !s.is_empty() && !t.is_empty() && !t.contains('='))
            .ok_or_else(|| {
                invalid(
                    entry,
                    "expected SOURCE=TARGET, e.g. report_2023_01=report_archive".into(),
                )
            })?;
        let (source, target) = (qualify(source), qualify(target));
        if source == target {
            return Err(invalid(entry, "maps a table onto itself".into()));
        }
        if !tables.is_empty() && !tables.iter().any(|t| names_match(t, &source)) {
            return Err(invalid(
                entry,
                format!(
                    "{source} is not among the tables --table selects ({})",
                    tables.join(", ")
                ),
            ));
        }
        if let Some(earlier) = maps.insert(source.clone(), target.clone()) {
            return Err(invalid(
                entry,
                format!("{source} is already mapped to {earlier}"),
            ));
        }
    }
    Ok(maps)
}

fn switch(params: &BTreeMap<String, String>, name: &'static str) -> Result<bool, ParamError> {
    match params.get(name).map(String::as_str) {
        None | Some("no" | "false") => Ok(false),
        Some("yes" | "true") => Ok(true),
        Some(other) => Err(ParamError::Invalid {
            name,
            value: other.to_string(),
            reason: "expected yes or no".into(),
        }),
    }
}

fn number(
    params: &BTreeMap<String, String>,
    name: &'static str,
    default: u64,
) -> Result<u64, ParamError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ParamError::Invalid {
                name,
                value: v.clone(),
                reason: "expected a positive number".into(),
            }),
    }
}

impl CopyParams {
    pub fn from_map(params: &BTreeMap<String, String>) -> Result<CopyParams, ParamError> {
        let from = node_db("from", &crate::plan::required_param(params, "from")?)?;
        let to = node_db("to", &crate::plan::required_param(params, "to")?)?;
        let tables: Vec<String> = params
            .get("table")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let maps = maps_param(params, &tables)?;
        Ok(CopyParams {
            from,
            to,
            start_date: date_param(params, "start-date")?,
            end_date: date_param(params, "end-date")?,
            tables,
            split_rows: number(params, "split-rows", DEFAULT_SPLIT_ROWS)?,
            frozen_before: date_param(params, "frozen-before")?,
            maps,
        })
    }

    /// The target `--map` names for the source table `qualified`, if any.
    pub fn mapped_target(&self, qualified: &str) -> Option<&str> {
        self.maps.get(qualified).map(String::as_str)
    }

    /// The parameters as the plan records them (the policy flags are not among them).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::from([
            (
                "from".to_string(),
                format!("{}/{}", self.from.0, self.from.1),
            ),
            ("to".to_string(), format!("{}/{}", self.to.0, self.to.1)),
        ]);
        if let Some(d) = self.start_date {
            map.insert("start-date".into(), d.to_string());
        }
        if let Some(d) = self.end_date {
            map.insert("end-date".into(), d.to_string());
        }
        if !self.tables.is_empty() {
            map.insert("table".into(), self.tables.join(","));
        }
        if self.split_rows != DEFAULT_SPLIT_ROWS {
            map.insert("split-rows".into(), self.split_rows.to_string());
        }
        if let Some(d) = self.frozen_before {
            map.insert("frozen-before".into(), d.to_string());
        }
        if !self.maps.is_empty() {
            let maps: Vec<String> = self.maps.iter().map(|(s, t)| format!("{s}={t}")).collect();
            map.insert("map".into(), maps.join(","));
        }
        map
    }

    /// Whether a table of this name and date is selected by `--table` and the dates.
    pub fn selects(&self, qualified: &str, date: Option<NaiveDate>) -> bool {
        if !self.tables.is_empty() && !self.tables.iter().any(|t| names_match(t, qualified)) {
            return false;
        }
        if self.start_date.is_none() && self.end_date.is_none() {
            return true;
        }
        let Some(date) = date else { return false };
        self.start_date.is_none_or(|s| date >= s) && self.end_date.is_none_or(|e| date < e)
    }
}

impl CopyPolicy {
    pub fn from_map(params: &BTreeMap<String, String>) -> Result<CopyPolicy, ParamError> {
        Ok(CopyPolicy {
            jobs: number(params, "jobs", 2)? as usize,
            retry_errors: switch(params, "retry-errors")?,
            stop_on_error: !switch(params, "no-stop-on-error")?,
            confirm: switch(params, "confirm")?,
        })
    }
}

/// `t` names `schema.table` when equal, or when `t` is unqualified and `schema` is `public`.
pub fn names_match(given: &str, qualified: &str) -> bool {
    given == qualified || format!("public.{given}") == qualified
}

/// A copy resolved against an inventory.
#[derive(Debug, Clone)]
pub struct TableCopy {
    pub params: CopyParams,
    pub policy: CopyPolicy,
    pub inventory: Inventory,
    pub source: Node,
    pub target: Node,
    /// The Citus cluster whose coordinator database the target is, if any.
    pub citus: Option<CitusCluster>,
}

impl TableCopy {
    pub fn resolve(
        inventory: &Inventory,
        params: CopyParams,
        policy: CopyPolicy,
    ) -> Result<Self, RunbookError> {
        let node = |name: &str| {
            inventory
                .node(name)
                .cloned()
                .ok_or_else(|| RunbookError::Inventory {
                    runbook: RUNBOOK,
                    reason: format!("node `{name}` is not in the inventory"),
                })
        };
        let source = node(&params.from.0)?;
        let target = node(&params.to.0)?;
        if params.from == params.to {
            return Err(RunbookError::Inventory {
                runbook: RUNBOOK,
                reason: "--from and --to name the same database".into(),
            });
        }
        let citus = inventory
            .citus
            .iter()
            .find(|c| c.coordinator == params.to.0 && c.database == params.to.1)
            .cloned();
        Ok(TableCopy {
            params,
            policy,
            inventory: inventory.clone(),
            source,
            target,
            citus,
        })
    }

    pub fn source_db(&self) -> &str {
        &self.params.from.1
    }
    pub fn target_db(&self) -> &str {
        &self.params.to.1
    }

    /// How the inventory's Citus section says `qualified` is spread, if it names it.
    pub fn citus_distribution(&self, qualified: &str) -> Option<Distribution> {
        self.citus.as_ref().and_then(|c| {
            c.tables
                .iter()
                .find(|t| names_match(&t.table, qualified))
                .map(|t| t.distribution)
        })
    }

    pub fn plan(&self) -> Result<Plan, RunbookError> {
        Ok(Plan::new(
            &self.inventory,
            RUNBOOK,
            self.params.to_map(),
            self.steps(),
        )?)
    }

    fn selection(&self) -> String {
        let mut parts = Vec::new();
        if self.params.tables.is_empty() {
            parts.push("every ordinary table".to_string());
        } else {
            parts.push(format!("the tables {}", self.params.tables.join(", ")));
        }
        if let Some(d) = self.params.start_date {
            parts.push(format!("dated on or after {d}"));
        }
        if let Some(d) = self.params.end_date {
            parts.push(format!("dated before {d}"));
        }
        if !self.params.maps.is_empty() {
            let maps: Vec<String> = self
                .params
                .maps
                .iter()
                .map(|(s, t)| format!("{s} into {t}"))
                .collect();
            parts.push(format!("({})", maps.join(", ")));
        }
        parts.join(" ")
    }

    fn steps(&self) -> Vec<Step> {
        let (s, sdb) = (&self.source.name, self.source_db());
        let (t, tdb) = (&self.target.name, self.target_db());
        let kind = match &self.citus {
            Some(c) => format!("the coordinator of Citus cluster `{}`", c.name),
            None => "PostgreSQL".to_string(),
        };
        let mut preflight = CopyStep::Preflight
            .step(format!(
                "Preflight: find {} on {s}/{sdb}, check {t}/{tdb} ({kind})",
                self.selection()
            ))
            .command(RenderedCommand::sql(s, sdb, DISCOVER_SQL))
            .command(RenderedCommand::sql(s, sdb, COLUMNS_SQL))
            .command(RenderedCommand::sql(t, tdb, COLUMNS_SQL))
            .command(RenderedCommand::sql(s, sdb, KEY_SQL));
        if self.citus.is_some() {
            preflight = preflight.command(RenderedCommand::sql(t, tdb, CITUS_TABLE_SQL));
        }
        let preflight = preflight
            .command(RenderedCommand::shell(
                &self.target.host,
                df_command(&self.target.data_dir),
            ))
            .precondition("nodes-answer", format!("{s}/{sdb} and {t}/{tdb} answer"))
            .verification(format!(
                "every selected table exists on {t}/{tdb} with the source's columns (by name; binary COPY where the types are the same, text otherwise){}; free disk on {t} covers the source's size; tables dated before --frozen-before are frozen, the others are live and copied as a per-table snapshot (use the logical-move runbook for those); the list (date, target, size, row estimate, ranges) is recorded in the run",
                if self.citus.is_some() { ", and distributed or reference as the inventory's citus section says" } else { "" }
            ))
            .undo(Undo::NothingToUndo);
        let ledger = CopyStep::Ledger
            .step(format!("Create the copy ledger {LEDGER} on {t}/{tdb}"))
            .command(RenderedCommand::sql(t, tdb, LEDGER_DDL))
            .verification("the ledger exists")
            .undo(Undo::NothingToUndo);
        let mut copy = CopyStep::Copy.step(format!(
            "Copy {} from {s}/{sdb} into {t}/{tdb}, each table or key range in one target transaction with its ledger row",
            self.selection()
        ));
        if self.params.tables.is_empty() {
            copy = copy.command(RenderedCommand::internal(
                format!("{s}/{sdb} → {t}/{tdb}"),
                "per table T found by the preflight (T#i/n for a key range): skip if the ledger holds T; BEGIN; TRUNCATE T (DELETE the key range for a range); COPY T FROM STDIN (FORMAT binary[, FREEZE]) fed by COPY T TO STDOUT (FORMAT binary) on the source; INSERT the ledger row; COMMIT (a table missing on the target whose name without its date names a parent there, range-partitioned by a date column, goes into that parent: DELETE FROM P WHERE that column is in the table's month instead of TRUNCATE, no FREEZE, the ledger part named after the source; a big frozen table without a single integer key is split into ctid block ranges: the ledger step truncates its target once, with a marker ledger row in the same transaction, each range then appends with its ledger row, and the table is verified as a whole in the verify step); then at once, on both sides: SELECT count(*), sum(hash_record_extended(ROW(columns), 0)) FROM T [WHERE key range] (columns without an extended hash as text); equal: mark verified in the ledger; else bisect the key range (count and hash sum per half on both sides) down to small ranges, name the first differing keys, and mark the table errored (a retry copies it again)",
            ));
        } else {
            for table in &self.params.tables {
                let q = qualify(table);
                let into = self.params.mapped_target(&q).unwrap_or(&q).to_string();
                copy = copy
                    .command(RenderedCommand::sql(
                        s,
                        sdb,
                        format!("COPY {} TO STDOUT (FORMAT binary)", quote_qualified(&q)),
                    ))
                    .command(RenderedCommand::sql(
                        t,
                        tdb,
                        format!(
                            "BEGIN; TRUNCATE {q_}; COPY {q_} FROM STDIN (FORMAT binary{freeze}); {ledger}; COMMIT",
                            q_ = quote_qualified(&into),
                            freeze = if self.citus.is_some() { "" } else { ", FREEZE" },
                            ledger = ledger_upsert_from_sql(&into, &q, WHOLE, "<run>", 0)
                        ),
                    ));
            }
        }
        let copy = copy
            .verification("per table or range, right after its commit: rows and the sum of 64-bit row hashes agree on both sides (TimeZone, DateStyle, IntervalStyle, extra_float_digits, bytea_output pinned); a mismatch names the first differing keys and errors that table; a table marked frozen whose write counters (pg_stat_user_tables inserts, updates, deletes) moved during its copy errors as written to")
            .flags(StepFlags {
                destructive: true,
                ..StepFlags::default()
            })
            .undo(Undo::PointOfNoReturn {
                reason: "copied rows stay on the target, recorded in its ledger; a new run copies only what the ledger lacks".into(),
            });
        let verify = CopyStep::Verify
            .step(format!(
                "Confirm every table or range is verified in {t}/{tdb}'s ledger"
            ))
            .command(RenderedCommand::sql(t, tdb, LEDGER_ALL_SQL))
            .verification(
                "every table or range of the list has a verified ledger row on the target",
            )
            .undo(Undo::NothingToUndo);
        vec![preflight, ledger, copy, verify]
    }
}

/// A source transaction reading under an exported snapshot (a logical slot's): it must be the
/// first thing the session runs, and the rows it reads are exactly those at the slot's start.
pub fn snapshot_sql(snapshot: &str) -> String {
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
        quote_literal(snapshot)
    )
}

/// `table` qualified with `public` when it has no schema.
pub fn qualify(table: &str) -> String {
    if table.contains('.') {
        table.to_string()
    } else {
        format!("public.{table}")
    }
}

pub fn df_command(data_dir: &str) -> String {
    format!("df -Pk {}", crate::remote::shell_quote(data_dir))
}

/// Ordinary tables of the source (no catalogs, no ledger): name, size, row estimate, the
/// partition bound and the CHECK constraints the date may come from.
pub const DISCOVER_SQL: &str = "SELECT n.nspname, c.relname, pg_total_relation_size(c.oid)::bigint AS bytes, \
greatest(c.reltuples, 0)::bigint AS rows, coalesce(pg_get_expr(c.relpartbound, c.oid), '') AS bound, \
coalesce((SELECT string_agg(pg_get_constraintdef(k.oid), ' ') FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'c'), '') AS checks \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'citus', 'columnar', 'columnar_internal') \
AND n.nspname NOT LIKE 'pg\\_%' AND c.relname <> 'cutover_copy_ledger' ORDER BY 1, 2";

/// Columns of table `$1` (a quoted qualified name) in order, generated columns left out.
pub const COLUMNS_SQL: &str = "SELECT a.attname, format_type(a.atttypid, a.atttypmod) \
FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
AND a.attgenerated = '' ORDER BY a.attnum";

/// Primary key columns of table `$1` in key order, with their types.
pub const KEY_SQL: &str = "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i \
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.ord";

/// How Citus spreads table `$1`: `distributed`, `reference` or `local`; no row: a plain table.
pub const CITUS_TABLE_SQL: &str =
    "SELECT citus_table_type FROM citus_tables WHERE table_name = $1::text::regclass";

/// Indexes of table `$1`: name, definition, and the constraint each backs (if any).
pub const INDEXES_SQL: &str = "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname::text, \
pg_get_constraintdef(c.oid) FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid \
AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x') WHERE i.indrelid = $1::text::regclass ORDER BY 1";

/// Foreign keys referencing table `$1`: its indexes then stay during the load.
pub const REFERENCED_SQL: &str =
    "SELECT count(*)::bigint FROM pg_constraint WHERE confrelid = $1::text::regclass AND contype = 'f'";

/// How an index (or the constraint it backs) of `table` is dropped and rebuilt.
pub fn rebuild_of(
    table: &str,
    index: &str,
    indexdef: &str,
    constraint: Option<(&str, &str)>,
) -> Rebuild {
    match constraint {
        Some((name, def)) => Rebuild {
            drop: format!(
                "ALTER TABLE {} DROP CONSTRAINT {}",
                quote_qualified(table),
                quote_ident(name)
            ),
            create: format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {def}",
                quote_qualified(table),
                quote_ident(name)
            ),
        },
        None => Rebuild {
            drop: format!("DROP INDEX {index}"),
            create: indexdef.to_string(),
        },
    }
}

pub const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS public.cutover_copy_ledger (\
target_table text NOT NULL, part text NOT NULL, source_table text NOT NULL, run_id text NOT NULL, \
rows bigint NOT NULL, checksum text, copied_at timestamptz NOT NULL DEFAULT now(), \
verified_at timestamptz, verify_error text, PRIMARY KEY (target_table, part))";

/// The ledger's `part` for a whole table.
pub const WHOLE: &str = "all";

/// The ledger row of one table or range copied from the table of the same name, written in
/// the copy's own transaction.
pub fn ledger_upsert_sql(target: &str, part: &str, run_id: &str, rows: u64) -> String {
    ledger_upsert_from_sql(target, target, part, run_id, rows)
}

/// The ledger row of one table or range of `source` copied into `target` (a different table
/// when the source goes into a partitioned parent or is mapped explicitly).
pub fn ledger_upsert_from_sql(
    target: &str,
    source: &str,
    part: &str,
    run_id: &str,
    rows: u64,
) -> String {
    format!(
        "INSERT INTO public.{LEDGER} (target_table, part, source_table, run_id, rows) VALUES ({}, {}, {}, {}, {rows}) \
ON CONFLICT (target_table, part) DO UPDATE SET source_table = EXCLUDED.source_table, run_id = EXCLUDED.run_id, \
rows = EXCLUDED.rows, checksum = NULL, copied_at = now(), verified_at = NULL, verify_error = NULL",
        quote_literal(target),
        quote_literal(part),
        quote_literal(source),
        quote_literal(run_id)
    )
}

pub const LEDGER_LOOKUP_SQL: &str = "SELECT rows, verified_at IS NOT NULL, verify_error FROM public.cutover_copy_ledger WHERE target_table = $1 AND part = $2";
pub const LEDGER_VERIFIED_SQL: &str = "UPDATE public.cutover_copy_ledger SET verified_at = now(), checksum = $3, verify_error = NULL WHERE target_table = $1 AND part = $2";
pub const LEDGER_MISMATCH_SQL: &str =
    "UPDATE public.cutover_copy_ledger SET verify_error = $3 WHERE target_table = $1 AND part = $2";
/// Ledger rows of a table split into parts other than the current ones (a change of plan).
pub const LEDGER_ALL_SQL: &str =
    "SELECT target_table, part, rows, verified_at IS NOT NULL FROM public.cutover_copy_ledger";

/// A column of a copied table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub type_name: String,
}

/// A key range `[lo, hi)` of a split table's single integer key; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub lo: Option<i64>,
    pub hi: Option<i64>,
}

/// One table to copy, as the preflight found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyTable {
    /// `schema.table` on the source.
    pub source: String,
    /// `schema.table` on the target.
    pub target: String,
    /// From the name, the partition bound or a CHECK constraint.
    pub date: Option<NaiveDate>,
    pub bytes: i64,
    pub rows_estimate: i64,
    /// The source's columns, in its order; the target is addressed by these names.
    pub columns: Vec<Column>,
    /// Primary key columns (empty: none; rows are then named by their whole text).
    pub key: Vec<Column>,
    /// Every column has the same type on both sides: binary COPY.
    pub binary: bool,
    /// The target is a Citus table (distributed or reference): no `FREEZE`.
    pub citus: bool,
    /// Empty: the whole table is one item; else one item per range.
    pub ranges: Vec<Range>,
    /// Dated before `--frozen-before`.
    pub frozen: bool,
    /// Indexes dropped before and rebuilt after the load, inside the copy's transaction, with
    /// the exact definitions the target had: only for a whole plain target table that was
    /// empty when the preflight ran and that no foreign key references.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebuild: Vec<Rebuild>,
    /// The target has no table of the source's name but a parent range-partitioned by a date
    /// column (the name without its date): the rows go into it, and what an earlier attempt
    /// left is this period's rows, deleted, never the parent truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into_parent: Option<IntoParent>,
    /// `ranges` are ctid block ranges of the source, not key ranges (a big frozen table
    /// without a single integer key). A target row has no ctid of the source, so a range
    /// cannot be deleted there: the target, wholly this copy's, is truncated once (the ledger
    /// step, with a marker row in the same transaction), each range then appends in one
    /// transaction with its ledger row, and the table is verified as a whole at the end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ctid_ranges: bool,
}

/// The ledger's marker of a target truncated once for its ctid ranges.
pub const TRUNCATED: &str = "truncated";

/// The source's size in blocks, for ctid ranges.
pub const BLOCKS_SQL: &str =
    "SELECT (pg_relation_size($1::text::regclass) / current_setting('block_size')::bigint)::bigint";

/// The rows of one source table inside a shared parent on the target: `column` in `[lo, hi)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntoParent {
    pub column: String,
    pub lo: NaiveDate,
    pub hi: NaiveDate,
}

impl IntoParent {
    /// `[date, next month)`, or `[date, next day)` for a date not on a month's first day.
    pub fn period(column: &str, date: NaiveDate) -> Option<IntoParent> {
        let hi = if date.day() == 1 {
            date.checked_add_months(chrono::Months::new(1))?
        } else {
            date.succ_opt()?
        };
        Some(IntoParent {
            column: column.to_string(),
            lo: date,
            hi,
        })
    }

    pub fn filter(&self) -> String {
        format!(
            "{c} >= {lo} AND {c} < {hi}",
            c = quote_ident(&self.column),
            lo = quote_literal(&self.lo.to_string()),
            hi = quote_literal(&self.hi.to_string())
        )
    }
}

/// The parent a dated table goes into: its name without the date (`public.events_2024_01` →
/// `public.events`); `None` when the name carries no trailing date.
pub fn parent_name(qualified: &str) -> Option<String> {
    let (schema, name) = qualified.rsplit_once('.')?;
    let cut = name.char_indices().find_map(|(i, c)| {
        let rest = &name[i + 1..];
        (matches!(c, '_' | '-')
            && i > 0
            && rest
                .chars()
                .all(|c| c.is_ascii_digit() || c == '_' || c == '-')
            && date_in_name(rest).is_some())
        .then_some(i)
    })?;
    Some(format!("{schema}.{}", &name[..cut]))
}

/// Writes counted on table `$1` (a frozen table's are compared before and after its copy).
pub const WRITES_SQL: &str =
    "SELECT coalesce(sum(n_tup_ins), 0)::bigint, coalesce(sum(n_tup_upd), 0)::bigint, \
coalesce(sum(n_tup_del), 0)::bigint FROM pg_stat_user_tables WHERE relid = $1::text::regclass";

/// The range-partition key of table `$1` when it is a single column of a date type.
pub const DATE_PARTITION_KEY_SQL: &str = "SELECT a.attname::text FROM pg_partitioned_table p \
JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] \
WHERE p.partrelid = $1::text::regclass AND p.partstrat = 'r' AND p.partnatts = 1 \
AND a.atttypid IN ('date'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype)";

/// One index (or the constraint it backs) rebuilt after the load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuild {
    pub drop: String,
    pub create: String,
}

impl CopyTable {
    /// The engine item ids of this table: `schema.table`, or `schema.table#i/n` per range.
    pub fn item_ids(&self) -> Vec<String> {
        if self.ranges.is_empty() {
            return vec![self.source.clone()];
        }
        let n = self.ranges.len();
        (1..=n)
            .map(|i| format!("{}#{i}/{n}", self.source))
            .collect()
    }

    /// The range of item `id` (`None` for the whole table); `Err` for an id not of this table.
    pub fn part_of(&self, id: &str) -> Result<Option<(String, Range)>, String> {
        if id == self.source {
            return Ok(None);
        }
        let part = id
            .strip_prefix(&self.source)
            .and_then(|rest| rest.strip_prefix('#'))
            .ok_or_else(|| format!("item `{id}` is not a part of {}", self.source))?;
        let index: usize = part
            .split_once('/')
            .and_then(|(i, _)| i.parse().ok())
            .ok_or_else(|| format!("item `{id}`: bad range number"))?;
        let range = self
            .ranges
            .get(index.wrapping_sub(1))
            .copied()
            .ok_or_else(|| format!("item `{id}`: no such range"))?;
        Ok(Some((part.to_string(), range)))
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn range_filter(&self, range: Option<Range>) -> Option<String> {
        let range = range?;
        if self.ctid_ranges {
            let mut parts = Vec::new();
            if let Some(lo) = range.lo {
                parts.push(format!("ctid >= '({lo},0)'::tid"));
            }
            if let Some(hi) = range.hi {
                parts.push(format!("ctid < '({hi},0)'::tid"));
            }
            return Some(if parts.is_empty() {
                "true".into()
            } else {
                parts.join(" AND ")
            });
        }
        let key = quote_ident(&self.key.first()?.name);
        let mut parts = Vec::new();
        if let Some(lo) = range.lo {
            parts.push(format!("{key} >= {lo}"));
        }
        if let Some(hi) = range.hi {
            parts.push(format!("{key} < {hi}"));
        }
        Some(if parts.is_empty() {
            "true".into()
        } else {
            parts.join(" AND ")
        })
    }

    /// The rows of this part on `table` (the source or the target): its key range, and on a
    /// shared parent its period. Never the period on the source: a source row outside it must
    /// be copied and fail verification, not be skipped.
    fn side_filter(&self, table: &str, range: Option<Range>) -> Option<String> {
        let mut filters: Vec<String> = self.range_filter(range).into_iter().collect();
        if table == self.target && table != self.source {
            filters.extend(self.into_parent.as_ref().map(IntoParent::filter));
        }
        (!filters.is_empty()).then(|| filters.join(" AND "))
    }

    /// The ledger's `part` of this part: a shared parent holds several source tables, so
    /// theirs carry the source's name.
    pub fn ledger_part(&self, part_key: &str) -> String {
        if self.into_parent.is_some() {
            format!("{}:{part_key}", self.source)
        } else {
            part_key.to_string()
        }
    }

    fn format(&self) -> &'static str {
        if self.binary {
            "binary"
        } else {
            "text"
        }
    }

    /// The source side of the stream.
    pub fn copy_out_sql(&self, range: Option<Range>) -> String {
        match self.range_filter(range) {
            None => format!(
                "COPY {} ({}) TO STDOUT (FORMAT {})",
                quote_qualified(&self.source),
                self.column_list(),
                self.format()
            ),
            Some(filter) => format!(
                "COPY (SELECT {} FROM {} WHERE {filter}) TO STDOUT (FORMAT {})",
                self.column_list(),
                quote_qualified(&self.source),
                self.format()
            ),
        }
    }

    /// What the copy's transaction removes first: whatever an earlier attempt left.
    pub fn cleanup_sql(&self, range: Option<Range>) -> String {
        if self.ctid_ranges && range.is_some() {
            // Nothing to remove: the target was truncated once, and a range is on it only
            // with its ledger row, which the copy found missing.
            return String::new();
        }
        match self.side_filter(&self.target, range) {
            None => format!("TRUNCATE {}", quote_qualified(&self.target)),
            Some(filter) => format!(
                "DELETE FROM {} WHERE {filter}",
                quote_qualified(&self.target)
            ),
        }
    }

    /// The target side; `FREEZE` only where the same transaction truncated a plain table.
    pub fn copy_in_sql(&self, range: Option<Range>) -> String {
        let freeze = range.is_none() && !self.citus && self.into_parent.is_none();
        format!(
            "COPY {} ({}) FROM STDIN (FORMAT {}{})",
            quote_qualified(&self.target),
            self.column_list(),
            self.format(),
            if freeze { ", FREEZE" } else { "" }
        )
    }

    /// The text that names a row: its key, or the whole row without one.
    fn key_text(&self) -> String {
        let cols = if self.key.is_empty() {
            &self.columns
        } else {
            &self.key
        };
        if cols.len() == 1 {
            format!("{}::text", quote_ident(&cols[0].name))
        } else {
            format!(
                "ROW({})::text",
                cols.iter()
                    .map(|c| quote_ident(&c.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }

    /// A row's 64-bit hash, columns in the source's order: through each type's own extended
    /// hash where both sides have the same types and the type has one, else over the text
    /// form (settings pinned).
    fn row_hash(&self) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                if self.binary && hashable(&c.type_name) {
                    quote_ident(&c.name)
                } else {
                    format!("{}::text", quote_ident(&c.name))
                }
            })
            .collect();
        format!("hash_record_extended(ROW({}), 0)", columns.join(", "))
    }

    /// Rows and the sum of their 64-bit hashes (numeric: never overflows, order-independent).
    pub fn checksum_sql(&self, table: &str, range: Option<Range>) -> String {
        format!(
            "SELECT count(*)::bigint, coalesce(sum({}), 0)::text FROM {}{}",
            self.row_hash(),
            quote_qualified(table),
            self.side_filter(table, range)
                .map(|f| format!(" WHERE {f}"))
                .unwrap_or_default()
        )
    }

    /// Count and hash sum per bucket of the key's hash: where two sides differ.
    pub fn buckets_sql(&self, table: &str, range: Option<Range>, buckets: u32) -> String {
        format!(
            "SELECT (hashtextextended({key}, 1) & {mask})::int AS b, count(*)::bigint, sum({h})::text FROM {t}{w} GROUP BY 1",
            key = self.key_text(),
            mask = buckets.saturating_sub(1),
            h = self.row_hash(),
            t = quote_qualified(table),
            w = self
                .side_filter(table, range)
                .map(|f| format!(" WHERE {f}"))
                .unwrap_or_default()
        )
    }

    /// The rows of one bucket: key text and row hash.
    pub fn bucket_rows_sql(
        &self,
        table: &str,
        range: Option<Range>,
        buckets: u32,
        bucket: i32,
    ) -> String {
        let mut filter = vec![format!(
            "(hashtextextended({}, 1) & {})::int = {bucket}",
            self.key_text(),
            buckets.saturating_sub(1)
        )];
        filter.extend(self.side_filter(table, range));
        format!(
            "SELECT {}, {}::text FROM {} WHERE {}",
            self.key_text(),
            self.row_hash(),
            quote_qualified(table),
            filter.join(" AND ")
        )
    }
}

/// A span of primary key values `[lo, hi)`, each bound the key columns' text in key order
/// (`None`: unbounded); the unit the bisection of a mismatch halves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySpan {
    pub lo: Option<Vec<String>>,
    pub hi: Option<Vec<String>>,
}

impl CopyTable {
    /// The key columns quoted, in key order: `"a", "b"`.
    fn key_columns(&self) -> String {
        self.key
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The key compared as a row with untyped literals, which take the columns' own types on
    /// either side (so a bound read on one side applies on the other).
    fn key_bound(&self, op: &str, values: &[String]) -> String {
        let literals: Vec<String> = values.iter().map(|v| quote_literal(v)).collect();
        format!(
            "ROW({}) {op} ROW({})",
            self.key_columns(),
            literals.join(", ")
        )
    }

    /// `WHERE` of a part's range and a key span.
    fn span_where(&self, table: &str, range: Option<Range>, span: &KeySpan) -> String {
        let mut filters: Vec<String> = self.side_filter(table, range).into_iter().collect();
        if let Some(lo) = &span.lo {
            filters.push(self.key_bound(">=", lo));
        }
        if let Some(hi) = &span.hi {
            filters.push(self.key_bound("<", hi));
        }
        if filters.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", filters.join(" AND "))
        }
    }

    /// Whether a mismatch can be bisected: the table has a primary key to order by.
    pub fn bisectable(&self) -> bool {
        !self.key.is_empty()
    }

    /// The single integer key, if that is the key: bisected by arithmetic, not by medians.
    pub fn integer_key(&self) -> Option<&Column> {
        match self.key.as_slice() {
            [k] if matches!(k.type_name.as_str(), "integer" | "bigint" | "smallint") => Some(k),
            _ => None,
        }
    }

    /// Rows and hash sum of a key span (see [`CopyTable::checksum_sql`]).
    pub fn span_checksum_sql(&self, table: &str, range: Option<Range>, span: &KeySpan) -> String {
        format!(
            "SELECT count(*)::bigint, coalesce(sum({}), 0)::text FROM {}{}",
            self.row_hash(),
            quote_qualified(table),
            self.span_where(table, range, span)
        )
    }

    /// The smallest and largest single integer key of a part: the span bisection starts from.
    pub fn key_min_max_sql(&self, table: &str, range: Option<Range>) -> Option<String> {
        let key = quote_ident(&self.integer_key()?.name);
        Some(format!(
            "SELECT min({key})::bigint, max({key})::bigint FROM {}{}",
            quote_qualified(table),
            self.span_where(table, range, &KeySpan::default())
        ))
    }

    /// The key columns' text of the row at `offset` in key order within a span: a median
    /// that cuts a span of a non-integer key in two.
    pub fn span_key_at_sql(
        &self,
        table: &str,
        range: Option<Range>,
        span: &KeySpan,
        offset: i64,
    ) -> String {
        let texts: Vec<String> = self
            .key
            .iter()
            .map(|c| format!("{}::text", quote_ident(&c.name)))
            .collect();
        format!(
            "SELECT {} FROM {}{} ORDER BY {} OFFSET {offset} LIMIT 1",
            texts.join(", "),
            quote_qualified(table),
            self.span_where(table, range, span),
            self.key_columns()
        )
    }

    /// Every row of a (small) span: its key text and row hash, in key order.
    pub fn span_rows_sql(&self, table: &str, range: Option<Range>, span: &KeySpan) -> String {
        format!(
            "SELECT {}, {}::text FROM {}{} ORDER BY {}",
            self.key_text(),
            self.row_hash(),
            quote_qualified(table),
            self.span_where(table, range, span),
            self.key_columns()
        )
    }
}

/// Types whose extended hash agrees with their equality on both sides of a copy.
fn hashable(type_name: &str) -> bool {
    let base = type_name.split('(').next().unwrap_or(type_name).trim();
    matches!(
        base,
        "smallint"
            | "integer"
            | "bigint"
            | "numeric"
            | "text"
            | "character varying"
            | "character"
            | "boolean"
            | "date"
            | "timestamp with time zone"
            | "timestamp without time zone"
            | "jsonb"
            | "uuid"
            | "bytea"
    )
}

/// `n` contiguous ranges covering every value, cut evenly between `min` and `max`.
pub fn split_ranges(min: i64, max: i64, n: u64) -> Vec<Range> {
    if n <= 1 || max <= min {
        return Vec::new();
    }
    let span = (max as i128 - min as i128 + 1) as u128;
    let cuts: Vec<i64> = (1..n)
        .map(|i| (min as i128 + (span * i as u128 / n as u128) as i128) as i64)
        .collect();
    let mut ranges = Vec::new();
    let mut lo = None;
    for cut in cuts {
        ranges.push(Range { lo, hi: Some(cut) });
        lo = Some(cut);
    }
    ranges.push(Range { lo, hi: None });
    ranges
}

/// How many ranges a table of `rows` (estimated) is split into.
pub fn parts_for(rows: i64, split_rows: u64) -> u64 {
    if rows <= 0 || (rows as u64) <= split_rows {
        return 1;
    }
    (rows as u64).div_ceil(split_rows).min(MAX_PARTS)
}

/// A table's date, as the seed finds it: a date in the name (`_2024_03`, `_202403`,
/// `_20240315`, `2024-03-15`), else the first date literal of the partition bound or the
/// CHECK constraints.
pub fn date_of(name: &str, bound: &str, checks: &str) -> Option<NaiveDate> {
    date_in_name(name)
        .or_else(|| date_literal(bound))
        .or_else(|| date_literal(checks))
}

fn date_in_name(name: &str) -> Option<NaiveDate> {
    let digits: Vec<(usize, char)> = name.char_indices().collect();
    // Try every start position for YYYY[-_]?MM([-_]?DD)?
    for start in 0..digits.len() {
        if start > 0 && digits[start - 1].1.is_ascii_digit() {
            continue;
        }
        let rest: String = digits[start..].iter().map(|(_, c)| *c).collect();
        if let Some(date) = parse_date_prefix(&rest) {
            return Some(date);
        }
    }
    None
}

fn parse_date_prefix(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    let num = |s: &[u8]| -> Option<u32> {
        if s.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(s).ok()?.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 6 {
        return None;
    }
    let year = num(b.get(0..4)?)?;
    if !(1900..=2999).contains(&year) {
        return None;
    }
    let mut i = 4;
    let sep = matches!(b.get(i), Some(b'_' | b'-'));
    if sep {
        i += 1;
    }
    let month = num(b.get(i..i + 2)?)?;
    i += 2;
    if b.get(i).is_some_and(u8::is_ascii_digit) && !sep {
        // YYYYMMDD
        let day = num(b.get(i..i + 2)?)?;
        if b.get(i + 2).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        return NaiveDate::from_ymd_opt(year as i32, month, day);
    }
    if b.get(i).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    if sep && matches!(b.get(i), Some(b'_' | b'-')) {
        if let Some(day) = b.get(i + 1..i + 3).and_then(num) {
            if !b.get(i + 3).is_some_and(u8::is_ascii_digit) {
                return NaiveDate::from_ymd_opt(year as i32, month, day);
            }
        }
    }
    NaiveDate::from_ymd_opt(year as i32, month, 1)
}

/// The first `'YYYY-MM-DD...'` literal in a bound or constraint text.
fn date_literal(text: &str) -> Option<NaiveDate> {
    text.split('\'').skip(1).step_by(2).find_map(|lit| {
        lit.get(0..10)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(y, m, day)
    }

    #[test]
    fn dates_come_from_names_bounds_and_checks() {
        assert_eq!(date_of("report_2024_03", "", ""), d(2024, 3, 1));
        assert_eq!(date_of("report_202403", "", ""), d(2024, 3, 1));
        assert_eq!(date_of("ucr_20240315", "", ""), d(2024, 3, 15));
        assert_eq!(date_of("agg_2024-03-15", "", ""), d(2024, 3, 15));
        assert_eq!(
            date_of(
                "child_a",
                "FOR VALUES FROM ('2023-11-01') TO ('2023-12-01')",
                ""
            ),
            d(2023, 11, 1)
        );
        assert_eq!(
            date_of("child_b", "", "CHECK ((month = '2022-05-01'::date))"),
            d(2022, 5, 1)
        );
        assert_eq!(date_of("events", "", ""), None);
        assert_eq!(date_of("t123456789", "", ""), None);
    }

    #[test]
    fn a_dated_table_names_its_parent_and_period() {
        assert_eq!(
            parent_name("public.events_2024_01").as_deref(),
            Some("public.events")
        );
        assert_eq!(
            parent_name("s.ucr_daily_20240115").as_deref(),
            Some("s.ucr_daily")
        );
        assert_eq!(parent_name("public.events"), None);
        assert_eq!(parent_name("public.t2024_01x"), None);
        let p =
            IntoParent::period("created", NaiveDate::from_ymd_opt(2024, 12, 1).unwrap()).unwrap();
        assert_eq!(p.hi, NaiveDate::from_ymd_opt(2025, 1, 1).unwrap());
        assert_eq!(
            p.filter(),
            "\"created\" >= '2024-12-01' AND \"created\" < '2025-01-01'"
        );
    }

    #[test]
    fn ranges_cover_everything_once() {
        let r = split_ranges(1, 100, 4);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].lo, None);
        assert_eq!(r[3].hi, None);
        for w in r.windows(2) {
            assert_eq!(w[0].hi, w[1].lo);
        }
        assert!(split_ranges(5, 5, 4).is_empty());
        assert_eq!(parts_for(10, 100), 1);
        assert_eq!(parts_for(250, 100), 3);
    }

    #[test]
    fn selection_by_table_and_date() {
        let mut map = BTreeMap::from([
            ("from".to_string(), "pg1/a".to_string()),
            ("to".to_string(), "pg2/b".to_string()),
            ("start-date".to_string(), "2024-02-01".to_string()),
            ("end-date".to_string(), "2024-04-01".to_string()),
        ]);
        let p = CopyParams::from_map(&map).unwrap();
        assert!(p.selects("public.r_2024_02", d(2024, 2, 1)));
        assert!(!p.selects("public.r_2024_04", d(2024, 4, 1)));
        assert!(!p.selects("public.events", None));
        map.insert("table".into(), "r_2024_03".into());
        map.remove("start-date");
        map.remove("end-date");
        let p = CopyParams::from_map(&map).unwrap();
        assert!(p.selects("public.r_2024_03", None));
        assert!(!p.selects("public.r_2024_02", None));
        assert_eq!(CopyParams::from_map(&p.to_map()).unwrap(), p);
    }
}
