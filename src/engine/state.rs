//! Engine state and the fold from journal entries to state. The single definition of what
//! each entry means: `apply` folds the entries it emits, `replay` folds the stored journal.

use super::entry::{EntryKind, JournalEntry};
use super::items::{ItemId, ItemState, ItemStatus};
use crate::plan::{Plan, StepId, Undo};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Whether destructive steps need a second operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum Oversight {
    /// One operator confirms every step.
    #[default]
    Solo,
    /// Destructive and point-of-no-return steps need two distinct operator names.
    Pair,
}

/// Run settings that are not part of the plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineSettings {
    pub oversight: Oversight,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running {
        started_at: DateTime<Utc>,
    },
    /// Replay found `started` without a terminal entry: the action may have half-run. The next
    /// start re-checks before acting (`Effect::RunAction { resume_recheck: true }`).
    NeedsRecheck {
        started_at: DateTime<Utc>,
    },
    Done {
        finished_at: DateTime<Utc>,
        verification_detail: String,
    },
    Failed {
        at: DateTime<Utc>,
        reason: String,
    },
    Skipped {
        reason: String,
        by: Vec<String>,
    },
    RollingBack {
        started_at: DateTime<Utc>,
    },
    /// Replay found `undo_started` without a terminal entry: the undo may have half-run.
    UndoNeedsRecheck {
        started_at: DateTime<Utc>,
    },
    RolledBack {
        at: DateTime<Utc>,
    },
    RollbackFailed {
        at: DateTime<Utc>,
        reason: String,
    },
}

impl StepStatus {
    /// Statuses whose step may have changed something that a rollback must undo.
    pub fn needs_undo(&self) -> bool {
        matches!(
            self,
            StepStatus::Running { .. }
                | StepStatus::NeedsRecheck { .. }
                | StepStatus::Done { .. }
                | StepStatus::Failed { .. }
                | StepStatus::RollingBack { .. }
                | StepStatus::UndoNeedsRecheck { .. }
                | StepStatus::RollbackFailed { .. }
        )
    }
    /// Statuses from which the step at the cursor may be started.
    pub fn is_startable(&self) -> bool {
        matches!(
            self,
            StepStatus::Pending
                | StepStatus::NeedsRecheck { .. }
                | StepStatus::Failed { .. }
                | StepStatus::Skipped { .. }
                | StepStatus::RolledBack { .. }
        )
    }
    /// Short lowercase label for lists and logs.
    pub fn label(&self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running { .. } => "running",
            StepStatus::NeedsRecheck { .. } => "needs recheck",
            StepStatus::Done { .. } => "done",
            StepStatus::Failed { .. } => "failed",
            StepStatus::Skipped { .. } => "skipped",
            StepStatus::RollingBack { .. } => "rolling back",
            StepStatus::UndoNeedsRecheck { .. } => "undo needs recheck",
            StepStatus::RolledBack { .. } => "rolled back",
            StepStatus::RollbackFailed { .. } => "rollback failed",
        }
    }
}

/// Application traffic is (or may be) paused since `since`, by the step at `by_step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TrafficPause {
    pub since: DateTime<Utc>,
    pub by_step: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackProgress {
    /// Index of the lowest step to roll back (inclusive).
    pub target: usize,
    pub requested_by: Vec<String>,
    pub reason: String,
}

/// Where a run stands. Indices refer to `plan.steps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineState {
    pub settings: EngineSettings,
    /// One status per plan step, index-aligned with `plan.steps`.
    pub steps: Vec<StepStatus>,
    /// Index of the next step to start; `steps.len()` when every step is done or skipped.
    pub cursor: usize,
    /// Set from the start of a `pauses_traffic` step (conservatively: the pause may be in
    /// effect while the step runs) until a `resumes_traffic` step is verified, the pausing
    /// step is rolled back, or the pause bound fires.
    pub traffic_pause: Option<TrafficPause>,
    /// Highest index of a point-of-no-return step that has *started*. A started step counts
    /// as passed because it may have partially run. Rollback to this index or below is refused.
    pub point_of_no_return_passed_at: Option<usize>,
    pub rollback: Option<RollbackProgress>,
    /// Each step's items in declaration order, index-aligned with `plan.steps`; empty for
    /// steps without items. Cleared when the step is rolled back.
    pub items: Vec<Vec<ItemState>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("journal entry {position} ({kind}) names step `{step}`, which this plan does not have; the plan changed since the run started")]
    UnknownStep {
        position: usize,
        kind: EntryKind,
        step: StepId,
    },
    #[error("journal entry {position} ({kind}) must name a step")]
    MissingStep { position: usize, kind: EntryKind },
    #[error("journal entry {position} ({kind}) must name an item")]
    MissingItem { position: usize, kind: EntryKind },
    #[error(
        "journal entry {position} ({kind}) names item `{item}`, which step `{step}` never declared"
    )]
    UnknownItem {
        position: usize,
        kind: EntryKind,
        step: StepId,
        item: ItemId,
    },
}

impl EngineState {
    /// A run that has not started: every step pending, cursor on the first step.
    pub fn new(plan: &Plan, settings: EngineSettings) -> Self {
        EngineState {
            settings,
            steps: vec![StepStatus::Pending; plan.steps.len()],
            cursor: 0,
            traffic_pause: None,
            point_of_no_return_passed_at: None,
            rollback: None,
            items: vec![Vec::new(); plan.steps.len()],
        }
    }

    /// Rebuilds state from a stored journal. Nothing is running after a restart, so a step
    /// (or undo) whose last entry is its start becomes `NeedsRecheck` (`UndoNeedsRecheck`).
    pub fn replay<'a>(
        plan: &Plan,
        settings: EngineSettings,
        entries: impl IntoIterator<Item = &'a JournalEntry>,
    ) -> Result<EngineState, ReplayError> {
        let mut state = EngineState::new(plan, settings);
        for (position, entry) in entries.into_iter().enumerate() {
            state.fold(plan, position, entry)?;
        }
        for status in &mut state.steps {
            match *status {
                StepStatus::Running { started_at } => {
                    *status = StepStatus::NeedsRecheck { started_at }
                }
                StepStatus::RollingBack { started_at } => {
                    *status = StepStatus::UndoNeedsRecheck { started_at }
                }
                _ => {}
            }
        }
        for item in state.items.iter_mut().flatten() {
            if matches!(item.status, ItemStatus::Running { .. }) {
                item.status = ItemStatus::NeedsRecheck {
                    reason: "interrupted".into(),
                };
            }
        }
        Ok(state)
    }

    /// Applies the meaning of one journal entry. `position` is only for error messages.
    pub(crate) fn fold(
        &mut self,
        plan: &Plan,
        position: usize,
        entry: &JournalEntry,
    ) -> Result<(), ReplayError> {
        let index = match &entry.step {
            Some(step) => match plan.index_of(step) {
                Some(index) => Some(index),
                None => {
                    return Err(ReplayError::UnknownStep {
                        position,
                        kind: entry.kind,
                        step: step.clone(),
                    })
                }
            },
            None => None,
        };
        let need_index = || {
            index.ok_or(ReplayError::MissingStep {
                position,
                kind: entry.kind,
            })
        };
        let at = entry.at;
        match entry.kind {
            EntryKind::Confirmed
            | EntryKind::Precondition
            | EntryKind::Output
            | EntryKind::Gate
            | EntryKind::Note
            | EntryKind::RunFinished
            | EntryKind::ItemConfirmed => {}
            EntryKind::Started => {
                let i = need_index()?;
                let step = &plan.steps[i];
                self.steps[i] = StepStatus::Running { started_at: at };
                // A new start of the step retries, re-checking, every item that failed or
                // was cut off in an earlier start; done items stay done. When the operator
                // asked to retry some failed items, only those (already due) are retried.
                let retries_asked = self.items[i].iter().any(|item| item.retry_asked);
                for item in &mut self.items[i] {
                    match &item.status {
                        ItemStatus::Failed { .. } if retries_asked => {}
                        ItemStatus::Failed { reason, .. } => {
                            item.status = ItemStatus::NeedsRecheck {
                                reason: reason.clone(),
                            }
                        }
                        ItemStatus::Running { .. } => {
                            item.status = ItemStatus::NeedsRecheck {
                                reason: "interrupted".into(),
                            }
                        }
                        _ => {}
                    }
                }
                if step.flags.pauses_traffic && self.traffic_pause.is_none() {
                    self.traffic_pause = Some(TrafficPause {
                        since: at,
                        by_step: i,
                    });
                }
                if step.is_point_of_no_return() {
                    self.point_of_no_return_passed_at =
                        Some(self.point_of_no_return_passed_at.map_or(i, |p| p.max(i)));
                }
            }
            EntryKind::Verified => {
                let i = need_index()?;
                self.steps[i] = StepStatus::Done {
                    finished_at: at,
                    verification_detail: entry.detail.clone(),
                };
                self.cursor = i + 1;
                if plan.steps[i].flags.resumes_traffic {
                    self.traffic_pause = None;
                }
            }
            EntryKind::Failed => {
                let i = need_index()?;
                self.steps[i] = StepStatus::Failed {
                    at,
                    reason: entry.detail.clone(),
                };
                // Items still running when the step failed (the pause bound cut them off) may
                // have half-run.
                for item in &mut self.items[i] {
                    if matches!(item.status, ItemStatus::Running { .. }) {
                        item.status = ItemStatus::NeedsRecheck {
                            reason: "interrupted".into(),
                        };
                    }
                }
            }
            EntryKind::Skipped => {
                let i = need_index()?;
                self.steps[i] = StepStatus::Skipped {
                    reason: entry.detail.clone(),
                    by: entry.actors.clone(),
                };
                self.cursor = i + 1;
            }
            EntryKind::RollbackRequested => {
                let i = need_index()?;
                self.rollback = Some(RollbackProgress {
                    target: i,
                    requested_by: entry.actors.clone(),
                    reason: entry.detail.clone(),
                });
            }
            EntryKind::UndoStarted => {
                let i = need_index()?;
                self.steps[i] = StepStatus::RollingBack { started_at: at };
            }
            EntryKind::RolledBack => {
                let i = need_index()?;
                self.steps[i] = StepStatus::RolledBack { at };
                // Undone: a new start of the step runs every item again.
                self.items[i].clear();
                let step = &plan.steps[i];
                if step.flags.pauses_traffic {
                    self.traffic_pause = None;
                }
                let undo_pauses_again = matches!(step.undo, Undo::Reversible { .. });
                if step.flags.resumes_traffic && undo_pauses_again && self.traffic_pause.is_none() {
                    let by_step = plan.steps[..i]
                        .iter()
                        .rposition(|s| s.flags.pauses_traffic)
                        .unwrap_or(i);
                    self.traffic_pause = Some(TrafficPause { since: at, by_step });
                }
                self.cursor = self.cursor.min(i);
            }
            EntryKind::UndoFailed => {
                let i = need_index()?;
                self.steps[i] = StepStatus::RollbackFailed {
                    at,
                    reason: entry.detail.clone(),
                };
                self.rollback = None;
            }
            EntryKind::RollbackFinished => {
                let i = need_index()?;
                self.rollback = None;
                self.cursor = i;
            }
            EntryKind::PauseBoundExceeded => {
                self.traffic_pause = None;
            }
            EntryKind::ItemDeclared => {
                let i = need_index()?;
                let item = entry.item.clone().ok_or(ReplayError::MissingItem {
                    position,
                    kind: entry.kind,
                })?;
                if !self.items[i].iter().any(|known| known.id == item) {
                    self.items[i].push(ItemState::new(item));
                }
            }
            EntryKind::ItemStarted
            | EntryKind::ItemDone
            | EntryKind::ItemFailed
            | EntryKind::ItemRetryAsked => {
                let i = need_index()?;
                let id = entry.item.as_ref().ok_or(ReplayError::MissingItem {
                    position,
                    kind: entry.kind,
                })?;
                let item = self
                    .item_mut(i, id)
                    .ok_or_else(|| ReplayError::UnknownItem {
                        position,
                        kind: entry.kind,
                        step: plan.steps[i].id.clone(),
                        item: id.clone(),
                    })?;
                item.status = match entry.kind {
                    EntryKind::ItemStarted => {
                        item.attempts += 1;
                        item.retry_asked = false;
                        ItemStatus::Running { started_at: at }
                    }
                    EntryKind::ItemRetryAsked => {
                        item.retry_asked = true;
                        let earlier = match &item.status {
                            ItemStatus::Failed { reason, .. } => reason.clone(),
                            _ => entry.detail.clone(),
                        };
                        ItemStatus::NeedsRecheck {
                            reason: format!("retry asked after: {earlier}"),
                        }
                    }
                    EntryKind::ItemDone => ItemStatus::Done {
                        finished_at: at,
                        detail: entry.detail.clone(),
                    },
                    _ => ItemStatus::Failed {
                        at,
                        reason: entry.detail.clone(),
                    },
                };
            }
        }
        Ok(())
    }

    /// Index of the step whose action is running, if any.
    pub fn running_step(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| matches!(s, StepStatus::Running { .. }))
    }

    /// Index of the step whose undo is running, if any.
    pub fn rolling_back_step(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| matches!(s, StepStatus::RollingBack { .. }))
    }

    /// The step the cursor points at: the one `Start` accepts next.
    pub fn next_step<'p>(&self, plan: &'p Plan) -> Option<&'p crate::plan::Step> {
        plan.steps.get(self.cursor)
    }

    /// Every step is done or skipped and no rollback is pending.
    pub fn is_complete(&self) -> bool {
        self.rollback.is_none()
            && self.cursor >= self.steps.len()
            && self
                .steps
                .iter()
                .all(|s| matches!(s, StepStatus::Done { .. } | StepStatus::Skipped { .. }))
    }

    pub fn traffic_paused(&self) -> bool {
        self.traffic_pause.is_some()
    }

    /// A step whose undo failed or was interrupted: forward progress is refused until a
    /// rollback is re-requested and completes.
    pub fn unfinished_undo(&self) -> Option<usize> {
        self.steps.iter().position(|s| {
            matches!(
                s,
                StepStatus::RollingBack { .. }
                    | StepStatus::UndoNeedsRecheck { .. }
                    | StepStatus::RollbackFailed { .. }
            )
        })
    }
}
