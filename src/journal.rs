//! Journal: the durable end of the flow. Stores runs and every engine transition
//! (`JournalEntry`) in SQLite under the state dir, before the executor performs the next
//! effect; `cutover run` resumes from it and `cutover journal show|export` prints it.
//!
//! Invariant: every entry's detail passes through [`redact`] before it is stored.

use crate::approval::{ApprovalRequest, Closed, Person, Verdict, VerdictRecord};
use crate::engine::{EngineSettings, EngineState, EntryKind, ItemId, JournalEntry, Observation};
use crate::plan::{Plan, StepId};
/// The journal's redactor is the cockpit's: see [`crate::redact`].
pub use crate::redact::redact;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// File name of the database inside the state dir.
pub const JOURNAL_FILE: &str = "journal.sqlite";
/// Environment variable overriding the state dir (below `--state-dir`).
pub const STATE_DIR_ENV: &str = "CUTOVER_STATE_DIR";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,
    environment TEXT NOT NULL,
    runbook     TEXT NOT NULL,
    params_json TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    plan_json   TEXT NOT NULL,
    status      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    run_id  TEXT NOT NULL REFERENCES runs(run_id),
    seq     INTEGER NOT NULL,
    at      TEXT NOT NULL,
    step_id TEXT,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL,
    actors  TEXT NOT NULL,
    item_id TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX IF NOT EXISTS runs_by_target ON runs(environment, runbook, status);
CREATE TABLE IF NOT EXISTS approval_requests (
    request_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id            TEXT NOT NULL,
    environment       TEXT NOT NULL,
    runbook           TEXT NOT NULL,
    fingerprint       TEXT NOT NULL,
    step_id           TEXT NOT NULL,
    covers            TEXT NOT NULL,
    seen              TEXT NOT NULL,
    observations_json TEXT NOT NULL,
    shown             TEXT NOT NULL,
    driver_uid        INTEGER NOT NULL,
    driver            TEXT NOT NULL,
    driver_terminal   TEXT NOT NULL,
    requested_at      TEXT NOT NULL,
    closed            TEXT
);
CREATE TABLE IF NOT EXISTS approval_verdicts (
    verdict_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id        INTEGER REFERENCES approval_requests(request_id),
    environment       TEXT NOT NULL,
    runbook           TEXT NOT NULL,
    fingerprint       TEXT NOT NULL,
    step_id           TEXT,
    seen              TEXT,
    verdict           TEXT NOT NULL,
    reason            TEXT NOT NULL,
    approver_uid      INTEGER NOT NULL,
    approver          TEXT NOT NULL,
    approver_terminal TEXT NOT NULL,
    at                TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approval_requests_open ON approval_requests(environment, runbook, closed);
";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot create state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no state dir: set --state-dir or CUTOVER_STATE_DIR (neither XDG_STATE_HOME nor HOME is set)")]
    NoStateDir,
    #[error("journal {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("no run `{0}` in the journal")]
    UnknownRun(RunId),
    #[error("journal data is corrupt: {0}")]
    Corrupt(String),
    #[error("plan JSON: {0}")]
    Plan(#[from] crate::plan::PlanError),
    #[error("{runbook} in {environment} is being driven by another cutover process ({holder}); follow it with `cutover tui --readonly`, or wait until it stops")]
    DriverBusy {
        environment: String,
        runbook: String,
        holder: String,
    },
    #[error("driver lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn read_holder(file: &mut std::fs::File) -> String {
    use std::io::Read;
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    match holder.trim() {
        "" => "holder unknown".to_string(),
        text => text.to_string(),
    }
}

/// Proof that this process alone drives runs of one runbook in one environment: an exclusive
/// lock on a file in the state dir, released by the kernel when the process ends, however it
/// ends. Readers (`journal show`, `tui --readonly`) never take it.
#[derive(Debug)]
pub struct DriverLock {
    _file: std::fs::File,
}

/// Identifies a run: `YYYYMMDDTHHMMSSZ-xxxxxxxx` (creation time plus 8 random hex digits), so
/// ids sort by creation time and stay readable in a change ticket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(pub String);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Started and not finished: `cutover run` resumes it.
    Running,
    Completed,
    Failed,
    RolledBack,
    /// Given up by an operator; never resumed.
    Abandoned,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::RolledBack => "rolled_back",
            RunStatus::Abandoned => "abandoned",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = JournalError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            RunStatus::Running,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::RolledBack,
            RunStatus::Abandoned,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| JournalError::Corrupt(format!("unknown run status `{text}`")))
    }
}

/// A row of `runs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMeta {
    pub run_id: RunId,
    pub created_at: DateTime<Utc>,
    pub environment: String,
    pub runbook: String,
    pub params: BTreeMap<String, String>,
    /// Fingerprint of the plan as generated (before redaction of `plan_json`). To resume,
    /// regenerate the plan and compare fingerprints.
    pub fingerprint: String,
    /// The plan as JSON, with secrets redacted.
    pub plan_json: String,
    pub status: RunStatus,
}

/// The state dir: `flag` (`--state-dir`), else `$CUTOVER_STATE_DIR`, else
/// `$XDG_STATE_HOME/cutover`, else `~/.local/state/cutover`.
pub fn resolve_state_dir(flag: Option<&Path>) -> Result<PathBuf, JournalError> {
    state_dir_from(
        flag,
        std::env::var_os(STATE_DIR_ENV).as_deref().map(Path::new),
        std::env::var_os("XDG_STATE_HOME").as_deref().map(Path::new),
        dirs::home_dir().as_deref(),
    )
}

/// The precedence of [`resolve_state_dir`] over explicit inputs. Empty values count as unset.
pub fn state_dir_from(
    flag: Option<&Path>,
    cutover_state_dir: Option<&Path>,
    xdg_state_home: Option<&Path>,
    home: Option<&Path>,
) -> Result<PathBuf, JournalError> {
    let set = |p: Option<&Path>| {
        p.filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
    };
    if let Some(dir) = set(flag).or_else(|| set(cutover_state_dir)) {
        return Ok(dir);
    }
    if let Some(xdg) = set(xdg_state_home) {
        return Ok(xdg.join("cutover"));
    }
    set(home)
        .map(|h| h.join(".local").join("state").join("cutover"))
        .ok_or(JournalError::NoStateDir)
}

/// A state dir its group may write (`chmod g+ws DIR`) is shared by the operators of one jump
/// host: files this process creates from now on (the journal, its `-wal`/`-shm`, run files,
/// locks) are made group-writable too, by clearing the group-write bit of the umask. Returns
/// whether the dir is shared.
fn share_with_group(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let shared = std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o020 != 0);
    if shared {
        let current = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        nix::sys::stat::umask(
            current & !nix::sys::stat::Mode::S_IWGRP & !nix::sys::stat::Mode::S_IRGRP,
        );
    }
    shared
}

/// `chmod g+rw` on a file this process owns; others' files are left as they are (their
/// owner's process made them group-writable when it created them).
fn make_group_writable(path: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o060 != 0o060 {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o060));
    }
}

/// An open journal database.
pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

impl Journal {
    /// Opens (creating if needed) `DIR/journal.sqlite` with WAL and `synchronous=FULL`.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::StateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let shared = share_with_group(dir);
        let path = dir.join(JOURNAL_FILE);
        let conn = Connection::open(&path).map_err(|source| JournalError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let journal = Journal { conn, path };
        journal.sql(journal.conn.pragma_update(None, "journal_mode", "WAL"))?;
        journal.sql(journal.conn.pragma_update(None, "synchronous", "FULL"))?;
        journal.sql(journal.conn.pragma_update(None, "foreign_keys", "ON"))?;
        journal.sql(journal.conn.busy_timeout(std::time::Duration::from_secs(5)))?;
        journal.sql(journal.conn.execute_batch(SCHEMA))?;
        journal.add_item_column()?;
        if shared {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = journal.path.clone().into_os_string();
                file.push(suffix);
                make_group_writable(Path::new(&file));
            }
        }
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Journals created before items existed lack `entries.item_id`; their entries have none.
    fn add_item_column(&self) -> Result<(), JournalError> {
        let has_item: bool = self.sql(self.conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('entries') WHERE name = 'item_id'",
            [],
            |row| row.get(0),
        ))?;
        if !has_item {
            self.sql(
                self.conn
                    .execute_batch("ALTER TABLE entries ADD COLUMN item_id TEXT"),
            )?;
        }
        Ok(())
    }

    /// Take the driver lock of `runbook` in `environment`, or say who holds it.
    pub fn lock_driver(
        &self,
        environment: &str,
        runbook: &str,
    ) -> Result<DriverLock, JournalError> {
        use std::io::{Seek, Write};
        let path = self.driver_lock_path(environment, runbook);
        let io = |source| JournalError::Lock {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // A follower probing the lock holds it for microseconds: retry briefly before refusing.
        let mut attempts = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if attempts < 10 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(JournalError::DriverBusy {
                        environment: environment.to_string(),
                        runbook: runbook.to_string(),
                        holder: read_holder(&mut file),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        let holder = format!(
            "pid {}, user {}, since {}",
            std::process::id(),
            std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            format_time(Utc::now())
        );
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(holder.as_bytes()).map_err(io)?;
        Ok(DriverLock { _file: file })
    }

    /// Who drives `runbook` in `environment` now, if anyone. Never creates or writes the
    /// lock file.
    pub fn driver(&self, environment: &str, runbook: &str) -> Option<String> {
        let mut file = std::fs::File::open(self.driver_lock_path(environment, runbook)).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(std::fs::TryLockError::WouldBlock) => Some(read_holder(&mut file)),
            Err(std::fs::TryLockError::Error(_)) => None,
        }
    }

    /// The process id the driver lock of `runbook` in `environment` last named, whether or
    /// not that process still runs (the lock is a kernel lock; the text stays behind).
    pub fn driver_holder_pid(&self, environment: &str, runbook: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.driver_lock_path(environment, runbook)).ok()?;
        let rest = text.trim().strip_prefix("pid ")?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    fn driver_lock_path(&self, environment: &str, runbook: &str) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        dir.join(format!(
            "{}.{}.lock",
            crate::plan::sanitize(environment),
            crate::plan::sanitize(runbook)
        ))
    }

    fn sql<T>(&self, result: rusqlite::Result<T>) -> Result<T, JournalError> {
        result.map_err(|source| JournalError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Records a new run of `plan` with status `running`.
    pub fn create_run(&self, plan: &Plan) -> Result<RunId, JournalError> {
        let run_id = Journal::new_run_id();
        self.insert_run(&run_id, plan)?;
        Ok(run_id)
    }

    /// A fresh run id, not yet recorded (see [`Journal::insert_run`]).
    pub fn new_run_id() -> RunId {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        RunId(format!(
            "{}-{}",
            Utc::now().format("%Y%m%dT%H%M%SZ"),
            &suffix[..8]
        ))
    }

    /// Records run `run_id` of `plan` with status `running`.
    pub fn insert_run(&self, run_id: &RunId, plan: &Plan) -> Result<(), JournalError> {
        let created_at = Utc::now();
        let params_json = serde_json::to_string(&plan.params)
            .map_err(|e| JournalError::Corrupt(format!("parameters: {e}")))?;
        let plan_json = redact(&plan.to_json()?);
        self.sql(self.conn.execute(
            "INSERT INTO runs (run_id, created_at, environment, runbook, params_json, fingerprint, plan_json, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                run_id.0,
                format_time(created_at),
                plan.environment,
                plan.runbook,
                redact(&params_json),
                plan.fingerprint(),
                plan_json,
                RunStatus::Running.as_str(),
            ],
        ))?;
        Ok(())
    }

    /// Appends one entry (detail redacted) in its own committed transaction; with
    /// `synchronous=FULL` it is on disk when this returns. Returns its sequence number (1-based).
    pub fn append(&self, run_id: &RunId, entry: &JournalEntry) -> Result<u64, JournalError> {
        self.run(run_id)?;
        let actors = serde_json::to_string(&entry.actors)
            .map_err(|e| JournalError::Corrupt(format!("actors: {e}")))?;
        let seq: i64 = self.sql(self.conn.query_row(
            "INSERT INTO entries (run_id, seq, at, step_id, kind, detail, actors, item_id)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM entries WHERE run_id = ?1), ?2, ?3, ?4, ?5, ?6, ?7)
             RETURNING seq",
            params![
                run_id.0,
                format_time(entry.at),
                entry.step.as_ref().map(|s| s.as_str()),
                entry.kind.as_str(),
                redact(&entry.detail),
                actors,
                entry.item.as_ref().map(ItemId::as_str),
            ],
            |row| row.get(0),
        ))?;
        u64::try_from(seq).map_err(|_| JournalError::Corrupt(format!("negative seq {seq}")))
    }

    /// Every entry of the run, in append order.
    pub fn entries(&self, run_id: &RunId) -> Result<Vec<JournalEntry>, JournalError> {
        Ok(self
            .numbered_entries(run_id)?
            .into_iter()
            .map(|(_, entry)| entry)
            .collect())
    }

    fn numbered_entries(&self, run_id: &RunId) -> Result<Vec<(u64, JournalEntry)>, JournalError> {
        self.run(run_id)?;
        let mut statement = self.sql(self.conn.prepare(
            "SELECT seq, at, step_id, kind, detail, actors, item_id FROM entries WHERE run_id = ?1 ORDER BY seq",
        ))?;
        let rows = self.sql(
            statement
                .query_map(params![run_id.0], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(5)?,
                        row.get::<_, Option<String>>(6)?,
                    ))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>()),
        )?;
        rows.into_iter()
            .map(|(seq, at, step, kind, detail, actors, item)| {
                let entry = JournalEntry {
                    at: parse_time(&at)?,
                    step: step.map(StepId),
                    kind: EntryKind::from_str(&kind)
                        .map_err(|e| JournalError::Corrupt(e.to_string()))?,
                    detail,
                    actors: serde_json::from_str(&actors).map_err(|e| {
                        JournalError::Corrupt(format!("actors of entry {seq}: {e}"))
                    })?,
                    item: item.map(ItemId),
                };
                Ok((seq.max(0) as u64, entry))
            })
            .collect()
    }

    /// The run's metadata, or `UnknownRun`.
    pub fn run(&self, run_id: &RunId) -> Result<RunMeta, JournalError> {
        let row = self.sql(
            self.conn
                .query_row(
                    &format!("{RUN_COLUMNS} WHERE run_id = ?1"),
                    params![run_id.0],
                    raw_run,
                )
                .optional(),
        )?;
        row.ok_or_else(|| JournalError::UnknownRun(run_id.clone()))?
            .into_meta()
    }

    /// Every run, newest first.
    pub fn runs(&self) -> Result<Vec<RunMeta>, JournalError> {
        let mut statement = self.sql(self.conn.prepare(&format!(
            "{RUN_COLUMNS} ORDER BY created_at DESC, run_id DESC"
        )))?;
        let rows = self.sql(
            statement
                .query_map([], raw_run)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>()),
        )?;
        rows.into_iter().map(RawRun::into_meta).collect()
    }

    /// The newest run of `runbook` on `environment` that is still `running`: the one
    /// `cutover run` resumes.
    pub fn latest_unfinished_run(
        &self,
        environment: &str,
        runbook: &str,
    ) -> Result<Option<RunMeta>, JournalError> {
        let row = self.sql(
            self.conn
                .query_row(
                    &format!(
                        "{RUN_COLUMNS} WHERE environment = ?1 AND runbook = ?2 AND status = ?3
                         ORDER BY created_at DESC, run_id DESC LIMIT 1"
                    ),
                    params![environment, runbook, RunStatus::Running.as_str()],
                    raw_run,
                )
                .optional(),
        )?;
        row.map(RawRun::into_meta).transpose()
    }

    pub fn finish_run(&self, run_id: &RunId, status: RunStatus) -> Result<(), JournalError> {
        let changed = self.sql(self.conn.execute(
            "UPDATE runs SET status = ?2 WHERE run_id = ?1",
            params![run_id.0, status.as_str()],
        ))?;
        if changed == 0 {
            return Err(JournalError::UnknownRun(run_id.clone()));
        }
        Ok(())
    }

    /// The run record for a change ticket: header, fingerprint, step outcomes,
    /// confirmations, gates, and every entry with its time and actors.
    pub fn export_markdown(&self, run_id: &RunId) -> Result<String, JournalError> {
        let meta = self.run(run_id)?;
        let entries = self.numbered_entries(run_id)?;
        let mut out = String::new();
        line(&mut out, &format!("# Run record `{}`", meta.run_id));
        out.push('\n');
        line(&mut out, "| | |");
        line(&mut out, "|---|---|");
        line(
            &mut out,
            &format!("| environment | `{}` |", cell(&meta.environment)),
        );
        line(
            &mut out,
            &format!("| runbook | `{}` |", cell(&meta.runbook)),
        );
        line(
            &mut out,
            &format!("| parameters | {} |", cell(&params_text(&meta.params))),
        );
        line(
            &mut out,
            &format!("| created | {} |", display_time(meta.created_at)),
        );
        line(&mut out, &format!("| status | {} |", meta.status));
        line(
            &mut out,
            &format!("| plan fingerprint | `{}` |", meta.fingerprint),
        );
        for verdict in self.plan_verdicts(&meta.fingerprint)? {
            line(
                &mut out,
                &format!(
                    "| plan {} by | {} from {} at {} |",
                    verdict.verdict.as_str(),
                    cell(&verdict.by.label),
                    cell(&verdict.by.terminal),
                    display_time(verdict.at)
                ),
            );
        }
        let operators = operators_of(&entries);
        if !operators.is_empty() {
            line(
                &mut out,
                &format!("| operators | {} |", cell(&operators.join(", "))),
            );
        }

        if let Some(summary) = step_summary(&meta, &entries) {
            out.push('\n');
            line(&mut out, "## Steps");
            out.push('\n');
            line(&mut out, "| # | step | outcome |");
            line(&mut out, "|---|---|---|");
            for (number, (step, outcome)) in summary.iter().enumerate() {
                line(
                    &mut out,
                    &format!("| {} | `{}` | {} |", number + 1, step, cell(outcome)),
                );
            }
        }

        let confirmations: Vec<_> = entries
            .iter()
            .filter(|(_, e)| {
                matches!(
                    e.kind,
                    EntryKind::Confirmed | EntryKind::ItemConfirmed | EntryKind::ItemRetryAsked
                )
            })
            .collect();
        out.push('\n');
        line(&mut out, "## Confirmations");
        out.push('\n');
        if confirmations.is_empty() {
            line(&mut out, "(none)");
        }
        for (_, entry) in confirmations {
            let what = match (&entry.item, entry.kind) {
                (Some(item), EntryKind::ItemRetryAsked) => {
                    format!("`{}` item `{item}` retry asked", step_text(entry))
                }
                (Some(item), _) => format!("`{}` item `{item}` confirmed", step_text(entry)),
                (None, _) => format!("`{}` confirmed", step_text(entry)),
            };
            line(
                &mut out,
                &format!(
                    "- {} · {what} by **{}** · {}",
                    display_time(entry.at),
                    entry.actors.join("**, **"),
                    entry.detail
                ),
            );
        }

        self.pair_review_markdown(run_id, &mut out)?;

        let gates: Vec<_> = entries
            .iter()
            .filter(|(_, e)| e.kind == EntryKind::Gate)
            .collect();
        if !gates.is_empty() {
            out.push('\n');
            line(&mut out, "## Gates");
            out.push('\n');
            for (_, entry) in gates {
                line(
                    &mut out,
                    &format!(
                        "- {} · `{}` · {}",
                        display_time(entry.at),
                        step_text(entry),
                        entry.detail
                    ),
                );
            }
        }

        out.push('\n');
        line(&mut out, "## Timeline");
        out.push('\n');
        line(
            &mut out,
            "| seq | time (UTC) | step | event | actors | detail |",
        );
        line(&mut out, "|---|---|---|---|---|---|");
        for (seq, entry) in &entries {
            line(
                &mut out,
                &format!(
                    "| {seq} | {} | {} | {} | {} | {} |",
                    display_time(entry.at),
                    match (&entry.step, &entry.item) {
                        (Some(s), Some(item)) => format!("`{s}` · `{}`", cell(item.as_str())),
                        (Some(s), None) => format!("`{s}`"),
                        (None, _) => String::new(),
                    },
                    entry.kind,
                    cell(&entry.actors.join(", ")),
                    cell(&entry.detail)
                ),
            );
        }
        Ok(out)
    }

    /// Plain-text listing for `cutover journal show`.
    /// The run's record as JSON: every entry with its time, step, kind, detail and actors.
    pub fn export_json(&self, run_id: &RunId) -> Result<serde_json::Value, JournalError> {
        let rows: Vec<serde_json::Value> = self.entries(run_id)?.iter().map(entry_json).collect();
        let mut pair_review = Vec::new();
        for request in self.approval_requests_of_run(run_id)? {
            let verdicts = self.verdicts_on_request(request.id)?;
            pair_review.push(serde_json::json!({
                "request": request.id,
                "step": request.step.to_string(),
                "covers": request.covers,
                "requested_at": request.requested_at,
                "driver": request.driver,
                "seen": request.seen,
                "observations": request.observations,
                "shown": request.shown,
                "closed": request.closed,
                "verdicts": verdicts.iter().map(|v| serde_json::json!({
                    "verdict": v.verdict,
                    "by": v.by,
                    "at": v.at,
                    "seen": v.seen,
                    "reason": v.reason,
                })).collect::<Vec<_>>(),
            }));
        }
        Ok(serde_json::json!({"run": run_id.0, "entries": rows, "pair_review": pair_review}))
    }

    pub fn show_text(&self, run_id: &RunId) -> Result<String, JournalError> {
        let meta = self.run(run_id)?;
        let entries = self.numbered_entries(run_id)?;
        let mut out = String::new();
        line(
            &mut out,
            &format!(
                "run {} · {} · {} · {} · created {}",
                meta.run_id,
                meta.environment,
                meta.runbook,
                meta.status,
                display_time(meta.created_at)
            ),
        );
        line(
            &mut out,
            &format!("parameters: {}", params_text(&meta.params)),
        );
        line(&mut out, &format!("fingerprint: {}", meta.fingerprint));
        for (seq, entry) in &entries {
            let actors = if entry.actors.is_empty() {
                String::new()
            } else {
                format!(" [{}]", entry.actors.join(", "))
            };
            let step = match (&entry.step, &entry.item) {
                (Some(s), Some(item)) => format!("{s} {item}"),
                (Some(s), None) => s.to_string(),
                (None, _) => "-".to_string(),
            };
            line(
                &mut out,
                &format!(
                    "{seq:>4} {} {step:<20} {:<20}{actors} {}",
                    display_time(entry.at),
                    entry.kind.as_str(),
                    entry.detail.replace('\n', "\n                         ")
                ),
            );
        }
        Ok(out)
    }
}

const RUN_COLUMNS: &str = "SELECT run_id, created_at, environment, runbook, params_json, fingerprint, plan_json, status FROM runs";

struct RawRun {
    run_id: String,
    created_at: String,
    environment: String,
    runbook: String,
    params_json: String,
    fingerprint: String,
    plan_json: String,
    status: String,
}

fn raw_run(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRun> {
    Ok(RawRun {
        run_id: row.get(0)?,
        created_at: row.get(1)?,
        environment: row.get(2)?,
        runbook: row.get(3)?,
        params_json: row.get(4)?,
        fingerprint: row.get(5)?,
        plan_json: row.get(6)?,
        status: row.get(7)?,
    })
}

impl RawRun {
    fn into_meta(self) -> Result<RunMeta, JournalError> {
        Ok(RunMeta {
            created_at: parse_time(&self.created_at)?,
            params: serde_json::from_str(&self.params_json).map_err(|e| {
                JournalError::Corrupt(format!("parameters of run {}: {e}", self.run_id))
            })?,
            status: self.status.parse()?,
            run_id: RunId(self.run_id),
            environment: self.environment,
            runbook: self.runbook,
            fingerprint: self.fingerprint,
            plan_json: self.plan_json,
        })
    }
}

/// Outcome per step from replaying the stored plan; `None` if the stored plan cannot be read
/// or does not match the entries (the timeline is still exported).
fn step_summary(meta: &RunMeta, entries: &[(u64, JournalEntry)]) -> Option<Vec<(String, String)>> {
    let plan = Plan::from_json(&meta.plan_json).ok()?;
    let state = EngineState::replay(
        &plan,
        EngineSettings::default(),
        entries.iter().map(|(_, e)| e),
    )
    .ok()?;
    Some(
        plan.steps
            .iter()
            .zip(&state.steps)
            .map(|(step, status)| (step.id.to_string(), outcome_text(status)))
            .collect(),
    )
}

fn outcome_text(status: &crate::engine::StepStatus) -> String {
    use crate::engine::StepStatus;
    match status {
        StepStatus::Done { finished_at, .. } => format!("done {}", display_time(*finished_at)),
        StepStatus::Failed { reason, .. } => format!("failed: {reason}"),
        StepStatus::Skipped { reason, by } => format!("skipped by {}: {reason}", by.join(", ")),
        StepStatus::RollbackFailed { reason, .. } => format!("rollback failed: {reason}"),
        StepStatus::RolledBack { at } => format!("rolled back {}", display_time(*at)),
        other => other.label().to_string(),
    }
}

fn operators_of(entries: &[(u64, JournalEntry)]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (_, entry) in entries {
        if matches!(
            entry.kind,
            EntryKind::Confirmed
                | EntryKind::Skipped
                | EntryKind::RollbackRequested
                | EntryKind::ItemConfirmed
                | EntryKind::ItemRetryAsked
        ) {
            for actor in &entry.actors {
                if !names.contains(actor) {
                    names.push(actor.clone());
                }
            }
        }
    }
    names
}

fn step_text(entry: &JournalEntry) -> &str {
    entry.step.as_ref().map_or("-", |s| s.as_str())
}

fn params_text(params: &BTreeMap<String, String>) -> String {
    if params.is_empty() {
        return "(none)".to_string();
    }
    params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stored form: RFC 3339 UTC with as many fractional digits as needed, so replay sees the
/// exact instants the engine emitted.
fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn display_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, JournalError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| JournalError::Corrupt(format!("timestamp `{text}`: {e}")))
}

/// Escapes a value for a markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', "<br>")
}

fn line(out: &mut String, text: &str) {
    out.push_str(text);
    out.push('\n');
}

/// One journal entry as JSON: the element of `export_json`'s `entries` and, with `run` added,
/// one line of `cutover run --json`. The detail is redacted like the stored one.
pub fn entry_json(entry: &JournalEntry) -> serde_json::Value {
    serde_json::json!({
        "at": entry.at,
        "step": entry.step.as_ref().map(|s| s.to_string()),
        "kind": entry.kind.as_str(),
        "detail": redact(&entry.detail),
        "actors": entry.actors,
        "item": entry.item.as_ref().map(|i| i.to_string()),
    })
}

/// One line of `cutover run --json` (NDJSON): [`entry_json`] plus the run id.
pub fn entry_json_line(run_id: &RunId, entry: &JournalEntry) -> String {
    let mut value = entry_json(entry);
    value["run"] = serde_json::Value::String(run_id.0.clone());
    value.to_string()
}

/// What a driver asks a second person to approve (see [`Journal::request_approval`]).
#[derive(Debug, Clone)]
pub struct NewApprovalRequest<'a> {
    pub run_id: &'a RunId,
    pub environment: &'a str,
    pub runbook: &'a str,
    pub fingerprint: &'a str,
    pub step: &'a StepId,
    pub covers: &'a str,
    pub seen: &'a str,
    pub observations: &'a [Observation],
    pub shown: &'a str,
    pub driver: &'a Person,
}

const REQUEST_COLUMNS: &str = "SELECT request_id, run_id, environment, runbook, fingerprint, step_id, covers, seen, observations_json, shown, driver_uid, driver, driver_terminal, requested_at, closed FROM approval_requests";
const VERDICT_COLUMNS: &str = "SELECT request_id, environment, runbook, fingerprint, step_id, seen, verdict, reason, approver_uid, approver, approver_terminal, at FROM approval_verdicts";

type RawRequest = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
);

fn raw_request(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRequest> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
        row.get(11)?,
        row.get(12)?,
        row.get(13)?,
        row.get(14)?,
    ))
}

fn into_request(raw: RawRequest) -> Result<ApprovalRequest, JournalError> {
    let (
        id,
        run_id,
        environment,
        runbook,
        fingerprint,
        step,
        covers,
        seen,
        observations,
        shown,
        driver_uid,
        driver,
        driver_terminal,
        requested_at,
        closed,
    ) = raw;
    Ok(ApprovalRequest {
        id,
        run_id,
        environment,
        runbook,
        fingerprint,
        step: StepId(step),
        covers,
        seen,
        observations: serde_json::from_str(&observations).map_err(|e| {
            JournalError::Corrupt(format!("observations of approval request {id}: {e}"))
        })?,
        shown,
        driver: Person {
            uid: uid_of(driver_uid)?,
            label: driver,
            terminal: driver_terminal,
        },
        requested_at: parse_time(&requested_at)?,
        closed: closed
            .map(|c| {
                Closed::parse(&c).ok_or_else(|| {
                    JournalError::Corrupt(format!("approval request {id} closed as `{c}`"))
                })
            })
            .transpose()?,
    })
}

type RawVerdict = (
    Option<i64>,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    i64,
    String,
    String,
    String,
);

fn raw_verdict(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawVerdict> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
        row.get(11)?,
    ))
}

fn into_verdict(raw: RawVerdict) -> Result<VerdictRecord, JournalError> {
    let (
        request_id,
        environment,
        runbook,
        fingerprint,
        step,
        seen,
        verdict,
        reason,
        uid,
        approver,
        terminal,
        at,
    ) = raw;
    Ok(VerdictRecord {
        request_id,
        environment,
        runbook,
        fingerprint,
        step: step.map(StepId),
        seen,
        verdict: Verdict::parse(&verdict)
            .ok_or_else(|| JournalError::Corrupt(format!("unknown verdict `{verdict}`")))?,
        reason,
        by: Person {
            uid: uid_of(uid)?,
            label: approver,
            terminal,
        },
        at: parse_time(&at)?,
    })
}

fn uid_of(value: i64) -> Result<u32, JournalError> {
    u32::try_from(value).map_err(|_| JournalError::Corrupt(format!("uid {value}")))
}

impl Journal {
    /// Per step that waited for a second person: who drove and from which terminal, what the
    /// driver saw (the seen hash and the observations behind it), and each verdict with who
    /// gave it, from where, and on which seen hash.
    fn pair_review_markdown(&self, run_id: &RunId, out: &mut String) -> Result<(), JournalError> {
        let requests = self.approval_requests_of_run(run_id)?;
        if requests.is_empty() {
            return Ok(());
        }
        out.push('\n');
        line(out, "## Pair review");
        out.push('\n');
        for request in requests {
            let status = match request.closed {
                Some(Closed::Used) => "the step ran with this approval",
                Some(Closed::Superseded) => "superseded: the readings changed after the approval",
                Some(Closed::Cancelled) => "cancelled: the driver stopped waiting",
                None => "still waiting",
            };
            line(
                out,
                &format!(
                    "- `{}` · {} · request {} · {status}",
                    request.step,
                    cell(&request.covers),
                    request.id
                ),
            );
            line(
                out,
                &format!(
                    "  - driven by **{}** from {}, waiting since {}",
                    request.driver.label,
                    request.driver.terminal,
                    display_time(request.requested_at)
                ),
            );
            let observed = request
                .observations
                .iter()
                .map(|o| format!("{}={}", o.name, o.value))
                .collect::<Vec<_>>()
                .join(", ");
            line(
                out,
                &format!("  - the driver saw: seen `{}` ({observed})", request.seen),
            );
            let verdicts = self.verdicts_on_request(request.id)?;
            if verdicts.is_empty() {
                line(out, "  - no verdict");
            }
            for verdict in verdicts {
                let what = match verdict.verdict {
                    Verdict::Approve => format!(
                        "approved by **{}**, who saw seen `{}`",
                        verdict.by.label,
                        verdict.seen.as_deref().unwrap_or("-")
                    ),
                    Verdict::Object => format!(
                        "objected to by **{}**: {}",
                        verdict.by.label,
                        cell(&verdict.reason)
                    ),
                    Verdict::Withdraw => format!("withdrawn by **{}**", verdict.by.label),
                };
                line(
                    out,
                    &format!(
                        "  - {} · {what} · from {}",
                        display_time(verdict.at),
                        verdict.by.terminal
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Pair review: requests and verdicts, shared by the driver's and the second person's
/// processes through this database (see `crate::approval`).
impl Journal {
    /// Records that the driver waits for a second person on `request.step`; any earlier open
    /// request of this environment and runbook is cancelled (one driver waits on one step).
    pub fn request_approval(
        &self,
        request: &NewApprovalRequest<'_>,
    ) -> Result<ApprovalRequest, JournalError> {
        self.sql(self.conn.execute(
            "UPDATE approval_requests SET closed = ?3 WHERE environment = ?1 AND runbook = ?2 AND closed IS NULL",
            params![request.environment, request.runbook, Closed::Cancelled.as_str()],
        ))?;
        let observations = serde_json::to_string(request.observations)
            .map_err(|e| JournalError::Corrupt(format!("observations: {e}")))?;
        let id: i64 = self.sql(self.conn.query_row(
            "INSERT INTO approval_requests (run_id, environment, runbook, fingerprint, step_id, covers, seen, observations_json, shown, driver_uid, driver, driver_terminal, requested_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING request_id",
            params![
                request.run_id.0,
                request.environment,
                request.runbook,
                request.fingerprint,
                request.step.as_str(),
                request.covers,
                request.seen,
                redact(&observations),
                redact(request.shown),
                i64::from(request.driver.uid),
                request.driver.label,
                request.driver.terminal,
                format_time(Utc::now()),
            ],
            |row| row.get(0),
        ))?;
        self.approval_request(id)
    }

    pub fn approval_request(&self, id: i64) -> Result<ApprovalRequest, JournalError> {
        let raw = self.sql(self.conn.query_row(
            &format!("{REQUEST_COLUMNS} WHERE request_id = ?1"),
            params![id],
            raw_request,
        ))?;
        into_request(raw)
    }

    /// The open request of this environment and runbook (on `step`, when given), if any.
    pub fn open_approval_request(
        &self,
        environment: &str,
        runbook: &str,
        step: Option<&StepId>,
    ) -> Result<Option<ApprovalRequest>, JournalError> {
        let raw = self.sql(
            self.conn
                .query_row(
                    &format!(
                        "{REQUEST_COLUMNS} WHERE environment = ?1 AND runbook = ?2 AND closed IS NULL
                         AND (?3 IS NULL OR step_id = ?3) ORDER BY request_id DESC LIMIT 1"
                    ),
                    params![environment, runbook, step.map(StepId::as_str)],
                    raw_request,
                )
                .optional(),
        )?;
        raw.map(into_request).transpose()
    }

    pub fn close_approval_request(&self, id: i64, closed: Closed) -> Result<(), JournalError> {
        self.sql(self.conn.execute(
            "UPDATE approval_requests SET closed = ?2 WHERE request_id = ?1 AND closed IS NULL",
            params![id, closed.as_str()],
        ))?;
        Ok(())
    }

    /// Every request of a run, oldest first (for the record).
    pub fn approval_requests_of_run(
        &self,
        run_id: &RunId,
    ) -> Result<Vec<ApprovalRequest>, JournalError> {
        let mut statement = self.sql(self.conn.prepare(&format!(
            "{REQUEST_COLUMNS} WHERE run_id = ?1 ORDER BY request_id"
        )))?;
        let rows = self.sql(
            statement
                .query_map(params![run_id.0], raw_request)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>()),
        )?;
        rows.into_iter().map(into_request).collect()
    }

    /// The request of `run_id` on `step` the driver started the step with, if any.
    pub fn used_approval_request(
        &self,
        run_id: &RunId,
        step: &StepId,
    ) -> Result<Option<ApprovalRequest>, JournalError> {
        let raw = self.sql(
            self.conn
                .query_row(
                    &format!(
                        "{REQUEST_COLUMNS} WHERE run_id = ?1 AND step_id = ?2 AND closed = ?3
                         ORDER BY request_id DESC LIMIT 1"
                    ),
                    params![run_id.0, step.as_str(), Closed::Used.as_str()],
                    raw_request,
                )
                .optional(),
        )?;
        raw.map(into_request).transpose()
    }

    /// Records a verdict as given; the caller checked it (`approval::check_verdict`).
    pub fn record_verdict(&self, verdict: &VerdictRecord) -> Result<(), JournalError> {
        self.sql(self.conn.execute(
            "INSERT INTO approval_verdicts (request_id, environment, runbook, fingerprint, step_id, seen, verdict, reason, approver_uid, approver, approver_terminal, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                verdict.request_id,
                verdict.environment,
                verdict.runbook,
                verdict.fingerprint,
                verdict.step.as_ref().map(StepId::as_str),
                verdict.seen,
                verdict.verdict.as_str(),
                redact(&verdict.reason),
                i64::from(verdict.by.uid),
                verdict.by.label,
                verdict.by.terminal,
                format_time(verdict.at),
            ],
        ))?;
        Ok(())
    }

    /// Every verdict on request `id`, in the order recorded.
    pub fn verdicts_on_request(&self, id: i64) -> Result<Vec<VerdictRecord>, JournalError> {
        self.verdicts_where("request_id = ?1", params![id])
    }

    /// Every verdict on the plan with this fingerprint (`cutover plan --approve`).
    pub fn plan_verdicts(&self, fingerprint: &str) -> Result<Vec<VerdictRecord>, JournalError> {
        self.verdicts_where(
            "request_id IS NULL AND step_id IS NULL AND fingerprint = ?1",
            params![fingerprint],
        )
    }

    fn verdicts_where(
        &self,
        condition: &str,
        values: impl rusqlite::Params,
    ) -> Result<Vec<VerdictRecord>, JournalError> {
        let mut statement = self.sql(self.conn.prepare(&format!(
            "{VERDICT_COLUMNS} WHERE {condition} ORDER BY verdict_id"
        )))?;
        let rows = self.sql(
            statement
                .query_map(values, raw_verdict)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>()),
        )?;
        rows.into_iter().map(into_verdict).collect()
    }
}
