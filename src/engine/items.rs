//! Engine: items within a step (tables, key ranges, shard groups), each with its own state and
//! attempts. Pure: the fold in `state.rs` builds each step's item table from the journal, and
//! [`EngineState::next_items`] decides which items start next under a concurrency limit and a
//! failure policy.

use super::state::EngineState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Names one item of a step, stable across runs (e.g. `public.form`, `form:0-4095`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ItemId(pub String);

impl ItemId {
    pub fn new(id: impl Into<String>) -> Self {
        ItemId(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ItemId {
    fn from(id: &str) -> Self {
        ItemId(id.to_string())
    }
}

/// What to do once an item of the step has failed in the current start of the step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnItemFailure {
    /// Start no further item; items already running finish.
    #[default]
    Stop,
    /// Keep starting the remaining items.
    Continue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ItemStatus {
    /// Declared, never started.
    Pending,
    Running {
        started_at: DateTime<Utc>,
    },
    /// An earlier attempt may have half-run: it was running when the run stopped, or it
    /// failed in an earlier start of the step. The next attempt re-checks before acting.
    NeedsRecheck {
        /// Why: `interrupted`, or the earlier failure's reason.
        reason: String,
    },
    Done {
        finished_at: DateTime<Utc>,
        detail: String,
    },
    /// Failed in the current start of the step; retried when the step is started again, or
    /// at once when the operator asks (`Command::RetryItem`).
    Failed {
        at: DateTime<Utc>,
        reason: String,
    },
}

impl ItemStatus {
    /// Short lowercase label for lists and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ItemStatus::Pending => "pending",
            ItemStatus::Running { .. } => "running",
            ItemStatus::NeedsRecheck { .. } => "needs recheck",
            ItemStatus::Done { .. } => "done",
            ItemStatus::Failed { .. } => "failed",
        }
    }
}

/// One item of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemState {
    pub id: ItemId,
    /// Attempts started so far; the attempt a start begins is `attempts + 1`.
    pub attempts: u32,
    pub status: ItemStatus,
    /// The operator asked to retry this item after it failed, and it has not started since.
    /// Such an item starts even while a failure stops new starts, and a new start of a step
    /// with such items retries only them (the other failed items stay failed).
    pub retry_asked: bool,
}

impl ItemState {
    pub(crate) fn new(id: ItemId) -> Self {
        ItemState {
            id,
            attempts: 0,
            status: ItemStatus::Pending,
            retry_asked: false,
        }
    }

    /// Pending, or due for a re-checked retry.
    pub fn is_startable(&self) -> bool {
        matches!(
            self.status,
            ItemStatus::Pending | ItemStatus::NeedsRecheck { .. }
        )
    }
}

impl EngineState {
    /// The items of the step at `step` (index into `plan.steps`), in declaration order; empty
    /// for steps without items and for indices outside the plan.
    pub fn items(&self, step: usize) -> &[ItemState] {
        self.items.get(step).map_or(&[], Vec::as_slice)
    }

    /// Items the step may start now, in declaration order: at most `limit` running at once,
    /// and after a failure in this start of the step when `on_failure` is `Stop`, only the
    /// items the operator asked to retry.
    pub fn next_items(&self, step: usize, limit: usize, on_failure: OnItemFailure) -> Vec<ItemId> {
        let items = self.items(step);
        let stopped = on_failure == OnItemFailure::Stop
            && items
                .iter()
                .any(|i| matches!(i.status, ItemStatus::Failed { .. }));
        let running = items
            .iter()
            .filter(|i| matches!(i.status, ItemStatus::Running { .. }))
            .count();
        items
            .iter()
            .filter(|i| i.is_startable() && (!stopped || i.retry_asked))
            .take(limit.saturating_sub(running))
            .map(|i| i.id.clone())
            .collect()
    }

    /// Items of the step that are not done.
    pub fn unfinished_items(&self, step: usize) -> usize {
        self.items(step)
            .iter()
            .filter(|i| !matches!(i.status, ItemStatus::Done { .. }))
            .count()
    }

    pub(crate) fn item_mut(&mut self, step: usize, item: &ItemId) -> Option<&mut ItemState> {
        self.items.get_mut(step)?.iter_mut().find(|i| &i.id == item)
    }
}
