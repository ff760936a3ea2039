//! Journal entries: the engine's record of every transition. The engine emits them as
//! `Effect::Journal`, the journal (`crate::journal`) stores them, and `EngineState::replay`
//! folds them back into state, so the live state and the resumed state share one definition.

use super::items::ItemId;
use crate::plan::StepId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub at: DateTime<Utc>,
    /// `None` for run-level entries (`note`, `run_finished`).
    pub step: Option<StepId>,
    pub kind: EntryKind,
    pub detail: String,
    /// Operator names (or `headless:<user>`, `cutover:<reason>` for automatic transitions).
    pub actors: Vec<String>,
    /// The item of `step` an `item_*` entry is about; `None` for every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<ItemId>,
}

/// Started → verified time of every step in `entries`, in milliseconds (a step run twice keeps
/// its last run).
pub fn step_durations_ms(entries: &[JournalEntry]) -> std::collections::BTreeMap<String, f64> {
    let mut started = std::collections::BTreeMap::new();
    let mut durations = std::collections::BTreeMap::new();
    for entry in entries {
        let Some(step) = entry.step.as_ref().map(|s| s.to_string()) else {
            continue;
        };
        match entry.kind {
            EntryKind::Started => {
                started.insert(step, entry.at);
            }
            EntryKind::Verified => {
                if let Some(at) = started.get(&step) {
                    let ms = (entry.at - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                    durations.insert(step, ms);
                }
            }
            _ => {}
        }
    }
    durations
}

impl JournalEntry {
    pub fn new(
        at: DateTime<Utc>,
        step: Option<StepId>,
        kind: EntryKind,
        detail: impl Into<String>,
    ) -> Self {
        JournalEntry {
            at,
            step,
            kind,
            detail: detail.into(),
            actors: Vec::new(),
            item: None,
        }
    }
    pub fn with_actors(mut self, actors: Vec<String>) -> Self {
        self.actors = actors;
        self
    }
    pub fn with_item(mut self, item: ItemId) -> Self {
        self.item = Some(item);
        self
    }
}

/// What an entry records. Stored as the snake_case text of [`EntryKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Operators confirmed a step; `actors` are their names, `detail` the `seen` fingerprint.
    Confirmed,
    /// One precondition's live result at start.
    Precondition,
    /// The step's action began. Without a later terminal entry the step may have half-run.
    Started,
    /// Output of a running action (progress, command output).
    Output,
    /// A gate's recorded values (e.g. both LSNs) and whether it passed.
    Gate,
    /// The action's verification held; the step is done.
    Verified,
    /// The action failed; `detail` is the reason.
    Failed,
    /// The step was skipped; `detail` is the reason, `actors` who skipped.
    Skipped,
    /// A rollback down to (and including) `step` was requested.
    RollbackRequested,
    /// The step's undo began.
    UndoStarted,
    /// The step is rolled back (its undo succeeded, or it had nothing to undo).
    RolledBack,
    /// The step's undo failed; the rollback halts here.
    UndoFailed,
    /// The requested rollback reached its target step.
    RollbackFinished,
    /// The write pause outlived its bound; traffic was resumed automatically.
    PauseBoundExceeded,
    /// Free text.
    Note,
    /// Every step is done or skipped.
    RunFinished,
    /// The running step found `item` to work on (items may be discovered at run time).
    ItemDeclared,
    /// An attempt at `item` began; without a later `item_done`/`item_failed` it may have
    /// half-run. The attempt number is the count of `item_started` entries for the item.
    ItemStarted,
    /// `item` is done; `detail` is its verification.
    ItemDone,
    /// The attempt at `item` failed; `detail` is the reason.
    ItemFailed,
    /// The operator (`actors`) asked to retry the failed `item`; `detail` is the failure it
    /// retries. The item is due again, its attempts kept.
    ItemRetryAsked,
    /// The operator (`actors`) confirmed that `item` may start (a step whose items each wait
    /// for a confirmation, table-copy's `--confirm`).
    ItemConfirmed,
}

impl EntryKind {
    pub const ALL: [EntryKind; 22] = [
        EntryKind::Confirmed,
        EntryKind::Precondition,
        EntryKind::Started,
        EntryKind::Output,
        EntryKind::Gate,
        EntryKind::Verified,
        EntryKind::Failed,
        EntryKind::Skipped,
        EntryKind::RollbackRequested,
        EntryKind::UndoStarted,
        EntryKind::RolledBack,
        EntryKind::UndoFailed,
        EntryKind::RollbackFinished,
        EntryKind::PauseBoundExceeded,
        EntryKind::Note,
        EntryKind::RunFinished,
        EntryKind::ItemDeclared,
        EntryKind::ItemStarted,
        EntryKind::ItemDone,
        EntryKind::ItemFailed,
        EntryKind::ItemRetryAsked,
        EntryKind::ItemConfirmed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Confirmed => "confirmed",
            EntryKind::Precondition => "precondition",
            EntryKind::Started => "started",
            EntryKind::Output => "output",
            EntryKind::Gate => "gate",
            EntryKind::Verified => "verified",
            EntryKind::Failed => "failed",
            EntryKind::Skipped => "skipped",
            EntryKind::RollbackRequested => "rollback_requested",
            EntryKind::UndoStarted => "undo_started",
            EntryKind::RolledBack => "rolled_back",
            EntryKind::UndoFailed => "undo_failed",
            EntryKind::RollbackFinished => "rollback_finished",
            EntryKind::PauseBoundExceeded => "pause_bound_exceeded",
            EntryKind::Note => "note",
            EntryKind::RunFinished => "run_finished",
            EntryKind::ItemDeclared => "item_declared",
            EntryKind::ItemStarted => "item_started",
            EntryKind::ItemDone => "item_done",
            EntryKind::ItemFailed => "item_failed",
            EntryKind::ItemRetryAsked => "item_retry_asked",
            EntryKind::ItemConfirmed => "item_confirmed",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown journal entry kind `{0}`")]
pub struct UnknownEntryKind(pub String);

impl FromStr for EntryKind {
    type Err = UnknownEntryKind;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EntryKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownEntryKind(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(step: &str, kind: EntryKind, ms: i64) -> JournalEntry {
        JournalEntry {
            at: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms),
            step: Some(StepId::from(step)),
            kind,
            detail: String::new(),
            actors: Vec::new(),
            item: None,
        }
    }

    #[test]
    fn a_steps_duration_runs_from_its_last_start_to_its_verification() {
        let entries = [
            entry("gate", EntryKind::Started, 0),
            entry("gate", EntryKind::Started, 100),
            entry("gate", EntryKind::Verified, 130),
            entry("repoint", EntryKind::Started, 200),
        ];
        let durations = step_durations_ms(&entries);
        assert_eq!(durations.get("gate"), Some(&30.0));
        assert_eq!(durations.get("repoint"), None, "never verified");
    }
}
