//! Engine: the pure state machine between the plan and the executor.
//! `apply(state, plan, at, command) -> (state', effects)`; the executor performs the effects
//! in order and reports results back as further commands. No I/O, no clock: time arrives
//! with each command.
//!
//! Contract for the executor (and the cockpit, which drives the same engine):
//! - Perform effects strictly in order. Every `Effect::Journal` must be durably appended
//!   before the next effect runs; if an append fails, stop (do not run the action).
//! - Every `RunAction`/`RunUndo` is preceded by the `Journal` entry that records its start.
//! - Report each action with `ActionSucceeded`/`ActionFailed`, each undo with
//!   `RollbackStepDone`/`RollbackStepFailed`.
//! - `RunAction { resume_recheck: true }`: the step may have half-run; check the live state
//!   before acting and skip work already done (actions are idempotent or check first).
//! - Watch `EngineState::traffic_pause`: while it is `Some`, enforce the pause bound yourself
//!   (RESUME first, then send `PauseBoundExceeded`); the engine then cancels the running
//!   step and rolls back to before the pause.
//! - After `replay`, continue an interrupted rollback by sending `RollbackTo` again with the
//!   target from `EngineState::rollback`.
//! - Items (`items.rs`): while a step runs, declare its items (`DeclareItems`), then send
//!   `StartItems` whenever a slot is free; each `RunItem` it emits is preceded by its
//!   `item_started` entry; report each with `ItemSucceeded`/`ItemFailed`. `ActionSucceeded`
//!   of a step with items is refused until every item is done.

mod apply;
mod entry;
mod items;
mod state;

pub use apply::{apply, required_confirmation, seen_hash};
pub use entry::{step_durations_ms, EntryKind, JournalEntry, UnknownEntryKind};
pub use items::{ItemId, ItemState, ItemStatus, OnItemFailure};
pub use state::{
    EngineSettings, EngineState, Oversight, ReplayError, RollbackProgress, StepStatus, TrafficPause,
};

use crate::plan::StepId;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The paused window that starting step `from` opens: `from` pauses traffic, and the window
/// runs through the first later step that resumes it (both included). `None` when `from` does
/// not pause traffic or nothing after it resumes.
pub fn paused_window(plan: &crate::plan::Plan, from: usize) -> Option<(usize, usize)> {
    if !plan.steps.get(from)?.flags.pauses_traffic {
        return None;
    }
    let end = plan.steps[from + 1..]
        .iter()
        .position(|s| s.flags.resumes_traffic)?;
    Some((from, from + 1 + end))
}

/// A reading the operator was shown and the decision depends on, e.g.
/// `standby.caught_up = true`, `target.dbname = commcarehq_p2`, or an exact LSN for a gate.
/// Confirmations are bound to the set of observations: if one changes, the confirmation is stale.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Observation {
    pub name: String,
    pub value: String,
}

impl Observation {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Observation {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A precondition evaluated from live readings right before `Start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreconditionResult {
    /// `PreconditionSpec::id` of the step.
    pub id: String,
    pub holds: bool,
    /// The readings behind the verdict, recorded in the journal.
    pub detail: String,
}

/// Operators' confirmation of a step, bound to what they saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// Who drives: the driver's label (see `crate::identity::Identity::label`).
    pub by: Vec<String>,
    /// `ConfirmationRequirement::seen` as computed when the dialog was shown.
    pub seen: String,
    /// Pair mode: the second person's approval from the journal, for steps that need two.
    pub approval: Option<PairApproval>,
}

impl Confirmation {
    /// Headless (`--yes`) confirmation from the current readings: `by = ["headless:<user>"]`.
    /// In pair mode this alone is refused for destructive steps, by design.
    pub fn headless(user: &str, requirement: &ConfirmationRequirement) -> Self {
        Confirmation {
            by: vec![format!("headless:{user}")],
            seen: requirement.seen.clone(),
            approval: None,
        }
    }
}

/// A second person's approval as the driver found it in the journal (`crate::approval`): who
/// approved what, bound to the step, the plan fingerprint and the `seen` hash they were shown.
/// Two people are two OS users: the engine refuses an approval whose uid is the driver's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairApproval {
    /// The approval request in the journal.
    pub request_id: i64,
    /// The step approved: the step itself, or the step opening the paused window it is in.
    pub step: StepId,
    pub fingerprint: String,
    pub seen: String,
    pub driver_uid: u32,
    pub approver_uid: u32,
    /// The approver's label and terminal, for the journal.
    pub approver: String,
    pub approver_terminal: String,
}

/// How much a confirmation must weigh; the cockpit maps it to the dialog
/// (plain key, shifted key, typed name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Routine,
    Destructive,
    PointOfNoReturn,
}

/// What a confirmation of this step must carry right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfirmationRequirement {
    pub step: StepId,
    /// Lowercase hex sha256 over the plan fingerprint, the step id and the sorted observations.
    pub seen: String,
    /// People needed: 2 in pair mode for destructive or point-of-no-return steps and for a step
    /// opening a paused window that holds one, else 1.
    pub distinct_operators: usize,
    /// Pair mode: the step whose approval covers this one (itself, or the step that opened the
    /// paused window it is in), when two people are needed.
    pub approval_of: Option<StepId>,
    pub severity: Severity,
}

/// Input to the engine. Steps are named by id; time comes as `apply`'s `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start the step at the cursor (or retry it after a failure, or re-check it after a
    /// crash). Every declared precondition must have a result and hold.
    Start {
        step: StepId,
        confirmation: Option<Confirmation>,
        precondition_results: Vec<PreconditionResult>,
        /// The observations the confirmation must match (see [`required_confirmation`]).
        observations: Vec<Observation>,
    },
    ActionSucceeded {
        step: StepId,
        verification_detail: String,
    },
    ActionFailed {
        step: StepId,
        reason: String,
    },
    /// Output of a running action or undo; journaled only.
    Output {
        step: StepId,
        text: String,
    },
    /// A gate's values (e.g. both LSNs) and its verdict; journaled only. A refused gate is
    /// reported as `ActionFailed` as well.
    Gate {
        step: StepId,
        detail: String,
        passed: bool,
    },
    /// Free-text note; journaled only.
    Note {
        step: Option<StepId>,
        text: String,
        by: Vec<String>,
    },
    /// Skip the step at the cursor with a reason.
    Skip {
        step: StepId,
        reason: String,
        by: String,
    },
    /// Undo every step that may have changed something, in reverse order, down to and
    /// including `step`. Also continues an interrupted or failed rollback.
    RollbackTo {
        step: StepId,
        by: String,
        reason: String,
    },
    RollbackStepDone {
        step: StepId,
    },
    RollbackStepFailed {
        step: StepId,
        reason: String,
    },
    /// The executor's watchdog found the write pause longer than its bound and has already
    /// resumed traffic.
    PauseBoundExceeded {
        bound: Duration,
        paused_for: Duration,
    },
    /// The running step's items, as its action found them; items already known are kept as
    /// they are (a re-checked step declares its items again).
    DeclareItems {
        step: StepId,
        items: Vec<ItemId>,
    },
    /// Start the running step's next items (see [`EngineState::next_items`]): at most `limit`
    /// running at once, none after a failure when `on_failure` is `Stop`. Starting nothing is
    /// not a refusal.
    StartItems {
        step: StepId,
        limit: usize,
        on_failure: OnItemFailure,
    },
    ItemSucceeded {
        step: StepId,
        item: ItemId,
        detail: String,
    },
    ItemFailed {
        step: StepId,
        item: ItemId,
        reason: String,
    },
    /// The operator asks to retry the failed `item` of a step that is running (it starts again
    /// as a slot frees, under the step's limit and failure policy) or that failed (its next
    /// start retries exactly the items asked for). Attempts are kept; the retry re-checks.
    RetryItem {
        step: StepId,
        item: ItemId,
        by: Vec<String>,
    },
    /// The operator confirms that `item` of the running step may start; journaled only (the
    /// executor holds the confirmations until the item starts).
    ConfirmItem {
        step: StepId,
        item: ItemId,
        by: Vec<String>,
    },
}

/// Output of the engine, to be performed in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Append durably before performing any later effect.
    Journal(JournalEntry),
    /// Run the step's action, then report `ActionSucceeded`/`ActionFailed`.
    RunAction { step: StepId, resume_recheck: bool },
    /// Run the step's undo, then report `RollbackStepDone`/`RollbackStepFailed`.
    RunUndo { step: StepId, resume_recheck: bool },
    /// Stop the step's running action before performing later effects.
    CancelAction { step: StepId },
    /// The requested rollback finished; the cursor is back at `to`.
    RollbackCompleted { to: StepId },
    /// Every step is done or skipped; mark the run finished in the journal.
    RunCompleted,
    /// Run one attempt at an item of the running step, then report `ItemSucceeded` or
    /// `ItemFailed`. `recheck`: an earlier attempt may have half-run; check before acting.
    RunItem {
        step: StepId,
        item: ItemId,
        attempt: u32,
        recheck: bool,
    },
}

/// Why the engine refused a command. A refused command changes nothing and emits nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the engine state has {state_steps} steps but the plan has {plan_steps}; they belong to different plans")]
    PlanMismatch {
        plan_steps: usize,
        state_steps: usize,
    },
    #[error("step `{step}` is not in this plan")]
    UnknownStep { step: StepId },
    #[error("step `{step}` is out of order: the next step is `{expected}`")]
    OutOfOrder { step: StepId, expected: StepId },
    #[error("step `{step}` is out of order: every step is already done or skipped")]
    RunAlreadyComplete { step: StepId },
    #[error("step `{step}` is already done")]
    AlreadyDone { step: StepId },
    #[error("step `{step}` is already running")]
    AlreadyRunning { step: StepId },
    #[error("step `{running}` is still running; wait for it (or cancel it) first")]
    AnotherStepRunning { running: StepId },
    #[error(
        "precondition `{precondition}` of step `{step}` does not hold: {description} ({detail})"
    )]
    PreconditionFailed {
        step: StepId,
        precondition: String,
        description: String,
        detail: String,
    },
    #[error("precondition `{precondition}` of step `{step}` was not evaluated")]
    PreconditionNotEvaluated { step: StepId, precondition: String },
    #[error("step `{step}` needs traffic stopped, and traffic is not paused")]
    TrafficNotStopped { step: StepId },
    #[error("step `{step}` needs a confirmation")]
    ConfirmationMissing { step: StepId },
    #[error("the confirmation of step `{step}` names no operator")]
    UnnamedOperator { step: StepId },
    #[error("the confirmation of step `{step}` is stale: the readings changed since it was shown (expected {expected}, got {got})")]
    StaleConfirmation {
        step: StepId,
        expected: String,
        got: String,
    },
    #[error("step `{step}` needs a second operator in pair mode: an approval of `{approval_of}` from another OS user (cutover approve / cutover tui --second); confirmed by: {}", by.join(", "))]
    SecondOperatorRequired {
        step: StepId,
        approval_of: StepId,
        by: Vec<String>,
    },
    #[error("the approval of step `{step}` comes from the driver's own OS user (uid {uid}); pair mode needs another person")]
    ApprovalBySameUser { step: StepId, uid: u32 },
    #[error("the approval given for step `{step}` is for {what}, not for this")]
    ApprovalMismatch { step: StepId, what: String },
    #[error("the approval of step `{step}` is stale: it approved seen {approved}, the readings now give {now}")]
    StaleApproval {
        step: StepId,
        approved: String,
        now: String,
    },
    #[error("a reason is required to {action} step `{step}`")]
    ReasonRequired { step: StepId, action: &'static str },
    #[error("skipping `{step}` would leave traffic paused; run it or roll back instead")]
    SkipWouldLeaveTrafficPaused { step: StepId },
    #[error("a rollback to `{target}` is in progress; finish it first")]
    RollbackInProgress { target: StepId },
    #[error("the undo of step `{step}` did not finish; roll back again before going forward")]
    RollbackIncomplete { step: StepId },
    #[error("cannot roll back to `{target}`: step `{step}` is a point of no return: {reason}")]
    RollbackPastPointOfNoReturn {
        target: StepId,
        step: StepId,
        reason: String,
    },
    #[error("nothing to roll back at or after step `{step}`")]
    NothingToRollBack { step: StepId },
    #[error("step `{step}` is not running (it is {status})")]
    NotRunning { step: StepId, status: &'static str },
    #[error("step `{step}` is not being rolled back (it is {status})")]
    NotRollingBack { step: StepId, status: &'static str },
    #[error("traffic is not paused, so the pause bound cannot have been exceeded")]
    TrafficNotPaused,
    #[error("step `{step}` has no item `{item}`")]
    UnknownItem { step: StepId, item: ItemId },
    #[error("item `{item}` of step `{step}` has not failed (it is {status}): only a failed item can be retried")]
    ItemNotFailed {
        step: StepId,
        item: ItemId,
        status: &'static str,
    },
    #[error("item `{item}` of step `{step}` is not waiting to start (it is {status})")]
    ItemNotWaiting {
        step: StepId,
        item: ItemId,
        status: &'static str,
    },
    #[error("step `{step}` is {status}: items are retried only while their step runs or after it failed")]
    StepNotRunningNorFailed { step: StepId, status: &'static str },
    #[error("item `{item}` of step `{step}` is not running (it is {status})")]
    ItemNotRunning {
        step: StepId,
        item: ItemId,
        status: &'static str,
    },
    #[error("step `{step}` removes the way back and the new side has served traffic for {ran_for_secs} s of the {min_soak_secs} s the plan asks before it")]
    SoakNotOver {
        step: StepId,
        ran_for_secs: u64,
        min_soak_secs: u64,
    },
    #[error("step `{step}` cannot be verified: {unfinished} of its {total} items are not done")]
    ItemsUnfinished {
        step: StepId,
        unfinished: usize,
        total: usize,
    },
}
