//! The copy's durable per-table state, kept beside the journal (`<state dir>/table-copy/<env>.json`)
//! across runs: pending, copying, copied, verified, errored, with attempts, rows, bytes and
//! timings; what `cutover copy status` reads and the cockpit's Copy pane can show.
//!
//! Invariant: this file follows the target's ledger, never leads it. A table is `copied` here
//! only after its transaction committed, and a resumed run reconciles from the ledger first,
//! so losing an update here (a crash between the commit and the write) costs nothing.

use super::plan::{CopyTable, WHOLE};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Pending,
    Copying,
    Copied,
    Verified,
    Errored,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Copying => "copying",
            Status::Copied => "copied",
            Status::Verified => "verified",
            Status::Errored => "errored",
        }
    }
}

/// One table, or one key range of a split table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartState {
    pub status: Status,
    pub attempts: u32,
    pub rows: u64,
    pub bytes: u64,
    pub copy_ms: u64,
    pub verify_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableState {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<NaiveDate>,
    pub source_bytes: i64,
    pub rows_estimate: i64,
    /// `all` for a whole table, else `i/n` per key range.
    pub parts: BTreeMap<String, PartState>,
}

impl TableState {
    /// Errored if a part is, verified if all are, else the furthest-behind part's status.
    pub fn status(&self) -> Status {
        let statuses: Vec<Status> = self.parts.values().map(|p| p.status).collect();
        if statuses.is_empty() {
            return Status::Pending;
        }
        if statuses.contains(&Status::Errored) {
            return Status::Errored;
        }
        if statuses.contains(&Status::Copying) {
            return Status::Copying;
        }
        if statuses.iter().all(|s| *s == Status::Verified) {
            return Status::Verified;
        }
        if statuses
            .iter()
            .all(|s| matches!(s, Status::Verified | Status::Copied))
        {
            return Status::Copied;
        }
        if statuses.iter().any(|s| *s != Status::Pending) {
            return Status::Copying;
        }
        Status::Pending
    }
    pub fn error(&self) -> Option<String> {
        self.parts.iter().find_map(|(k, p)| {
            p.error.as_ref().map(|e| {
                if k == WHOLE {
                    e.clone()
                } else {
                    format!("{k}: {e}")
                }
            })
        })
    }
    pub fn attempts(&self) -> u32 {
        self.parts.values().map(|p| p.attempts).max().unwrap_or(0)
    }
    pub fn rows(&self) -> u64 {
        self.parts.values().map(|p| p.rows).sum()
    }
}

/// Every table of one source → target pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairState {
    pub tables: BTreeMap<String, TableState>,
}

/// All pairs of one environment, by `FROM → TO`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyState {
    pub pairs: BTreeMap<String, PairState>,
}

pub fn pair_key(from: &(String, String), to: &(String, String)) -> String {
    format!("{}/{} → {}/{}", from.0, from.1, to.0, to.1)
}

pub fn state_path(state_dir: &Path, environment: &str) -> PathBuf {
    state_dir
        .join("table-copy")
        .join(format!("{environment}.json"))
}

pub fn load(path: &Path) -> Result<CopyState, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CopyState::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The state file of a run, shared by the items that run at once.
pub struct Store {
    path: PathBuf,
    pair: String,
    state: Mutex<CopyState>,
}

impl Store {
    pub fn open(path: PathBuf, pair: String) -> Result<Store, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let state = load(&path)?;
        Ok(Store {
            path,
            pair,
            state: Mutex::new(state),
        })
    }

    /// Replaced whole (write, then rename) but not fsynced: this file follows the ledger, so
    /// an update lost to a power cut is reconciled from the ledger like one lost to a crash.
    fn save(&self, state: &CopyState) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// Record the discovered list: new tables pending, known ones keep their state.
    pub fn declare(&self, tables: &[CopyTable]) -> Result<(), String> {
        let mut state = self.state.lock().map_err(|_| "copy state lock poisoned")?;
        let pair = state.pairs.entry(self.pair.clone()).or_default();
        for table in tables {
            let entry = pair.tables.entry(table.source.clone()).or_default();
            entry.target = table.target.clone();
            entry.date = table.date;
            entry.source_bytes = table.bytes;
            entry.rows_estimate = table.rows_estimate;
            let parts: Vec<String> = if table.ranges.is_empty() {
                vec![WHOLE.to_string()]
            } else {
                let n = table.ranges.len();
                (1..=n).map(|i| format!("{i}/{n}")).collect()
            };
            entry.parts.retain(|k, _| parts.contains(k));
            for part in parts {
                entry.parts.entry(part).or_default();
            }
        }
        let snapshot = state.clone();
        drop(state);
        self.save(&snapshot)
    }

    pub fn part(&self, table: &str, part: &str) -> Option<PartState> {
        let state = self.state.lock().ok()?;
        state
            .pairs
            .get(&self.pair)?
            .tables
            .get(table)?
            .parts
            .get(part)
            .cloned()
    }

    pub fn update(
        &self,
        table: &str,
        part: &str,
        edit: impl FnOnce(&mut PartState),
    ) -> Result<(), String> {
        let mut state = self.state.lock().map_err(|_| "copy state lock poisoned")?;
        let entry = state
            .pairs
            .entry(self.pair.clone())
            .or_default()
            .tables
            .entry(table.to_string())
            .or_default()
            .parts
            .entry(part.to_string())
            .or_default();
        edit(entry);
        let snapshot = state.clone();
        drop(state);
        self.save(&snapshot)
    }

    pub fn snapshot(&self) -> PairState {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.pairs.get(&self.pair).cloned())
            .unwrap_or_default()
    }
}

/// The seed's `stats`: totals and percentages.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub total: usize,
    pub migrated: usize,
    pub errored: usize,
    pub pending: usize,
    pub copying: usize,
    pub migrated_pct: f64,
    pub errored_pct: f64,
    pub rows: u64,
}

pub fn stats(pair: &PairState) -> Stats {
    let mut s = Stats {
        total: pair.tables.len(),
        ..Stats::default()
    };
    for t in pair.tables.values() {
        s.rows += t.rows();
        match t.status() {
            Status::Verified => s.migrated += 1,
            Status::Errored => s.errored += 1,
            Status::Pending => s.pending += 1,
            Status::Copying | Status::Copied => s.copying += 1,
        }
    }
    if s.total > 0 {
        s.migrated_pct = 100.0 * s.migrated as f64 / s.total as f64;
        s.errored_pct = 100.0 * s.errored as f64 / s.total as f64;
    }
    s
}

/// Which tables `cutover copy status` lists.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub migrated: bool,
    pub errored: bool,
    pub start_date: Option<NaiveDate>,
    pub end_date: Option<NaiveDate>,
}

/// One line of the seed's `list_tables`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listed {
    pub table: String,
    pub target: String,
    pub date: Option<NaiveDate>,
    pub status: &'static str,
    pub attempts: u32,
    pub rows: u64,
    pub error: Option<String>,
}

pub fn list(pair: &PairState, filter: &ListFilter) -> Vec<Listed> {
    pair.tables
        .iter()
        .filter(|(_, t)| {
            let status = t.status();
            (!filter.migrated || status == Status::Verified)
                && (!filter.errored || status == Status::Errored)
                && filter
                    .start_date
                    .is_none_or(|s| t.date.is_some_and(|d| d >= s))
                && filter
                    .end_date
                    .is_none_or(|e| t.date.is_some_and(|d| d < e))
        })
        .map(|(name, t)| Listed {
            table: name.clone(),
            target: t.target.clone(),
            date: t.date,
            status: t.status().label(),
            attempts: t.attempts(),
            rows: t.rows(),
            error: t.error(),
        })
        .collect()
}

/// `cutover copy status`: stats and the list for every pair of the environment.
pub fn status_report(state: &CopyState, filter: &ListFilter, json: bool) -> String {
    if json {
        let value: BTreeMap<&String, serde_json::Value> = state
            .pairs
            .iter()
            .map(|(k, pair)| {
                (
                    k,
                    serde_json::json!({ "stats": stats(pair), "tables": list(pair, filter) }),
                )
            })
            .collect();
        return serde_json::to_string_pretty(&value).unwrap_or_default();
    }
    let mut out = String::new();
    if state.pairs.is_empty() {
        out.push_str("no table copy recorded for this environment\n");
    }
    for (key, pair) in &state.pairs {
        let s = stats(pair);
        out.push_str(&format!(
            "{key}: {} tables, {} migrated ({:.1}%), {} errored ({:.1}%), {} pending, {} in progress, {} rows\n",
            s.total, s.migrated, s.migrated_pct, s.errored, s.errored_pct, s.pending, s.copying, s.rows
        ));
        for l in list(pair, filter) {
            out.push_str(&format!(
                "  {:<40} {:<10} {:<9} attempts {:<2} rows {:<10} → {}{}\n",
                l.table,
                l.date.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                l.status,
                l.attempts,
                l.rows,
                l.target,
                l.error.map(|e| format!("  ({e})")).unwrap_or_default()
            ));
        }
    }
    out
}

/// What the target's `pg_stat_progress_copy` shows for running COPYs: the Copy pane's bars.
pub const PROGRESS_SQL: &str =
    "SELECT coalesce(relid::regclass::text, ''), bytes_processed, bytes_total, tuples_processed \
FROM pg_stat_progress_copy WHERE command = 'COPY FROM' AND datname = current_database()";

/// One running COPY on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyProgress {
    pub table: String,
    pub bytes_processed: i64,
    pub bytes_total: i64,
    pub tuples_processed: i64,
}

/// A reading of the COPYs running into the target database, for the cockpit's Copy pane.
pub async fn progress(
    client: &tokio_postgres::Client,
) -> Result<Vec<CopyProgress>, tokio_postgres::Error> {
    Ok(client
        .query(PROGRESS_SQL, &[])
        .await?
        .iter()
        .map(|r| CopyProgress {
            table: r.get(0),
            bytes_processed: r.get(1),
            bytes_total: r.get(2),
            tuples_processed: r.get(3),
        })
        .collect())
}
