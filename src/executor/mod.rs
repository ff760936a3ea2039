//! Executor: the effects stage of the flow. Drives the pure engine (`crate::engine`) with
//! live preconditions and confirmations, performs its effects through a runbook's [`Actions`]
//! (tokio-postgres, pgbouncer admin, russh), and appends every journal entry durably before
//! the next effect runs.
//!
//! Invariants:
//! - a `Journal` effect is written before any later effect is performed;
//! - while traffic is paused, an action that overruns the pause bound is cancelled, the run
//!   rolls back to before the pause, and traffic is resumed even if that rollback stalls;
//! - a stop request (a signal, or the operator quitting) while traffic is paused is handled as
//!   the bound running out now: no orderly exit leaves the applications waiting.

pub mod context;
pub mod error;
pub mod items;
pub mod pair;
pub mod signals;

pub use error::{StepError, StepErrorKind};
pub use items::{ItemAttempt, ItemControl, ItemFuture, ItemRequests, RetryOutcome, StepItems};
pub use pair::{ApprovalHook, ApprovalStatus};

use crate::engine::{
    self, Command, Confirmation, Effect, EngineSettings, EngineState, JournalEntry, Observation,
    PreconditionResult, Refusal,
};
use crate::journal::{DriverLock, Journal, JournalError, RunId, RunStatus};
use crate::plan::{Plan, Step, StepId};
use chrono::Utc;
use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Rows of one table of one partition database when the run recorded its baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineCount {
    pub node: String,
    pub database: String,
    pub table: String,
    pub total: i64,
}

/// What an action reports while it runs; journaled as it arrives.
#[derive(Debug, Clone)]
pub enum Report {
    Output(String),
    Gate { detail: String, passed: bool },
}

/// Where an action sends its [`Report`]s.
#[derive(Clone)]
pub struct Sink(mpsc::UnboundedSender<Report>);

impl Sink {
    pub fn output(&self, text: impl Into<String>) {
        let text = text.into();
        tracing::info!(target: "cutover::cmd", "{text}");
        let _ = self.0.send(Report::Output(text));
    }
    pub fn gate(&self, detail: impl Into<String>, passed: bool) {
        let detail = detail.into();
        tracing::info!(target: "cutover::cmd", passed, "gate: {detail}");
        let _ = self.0.send(Report::Gate { detail, passed });
    }
    /// A sink whose reports go nowhere, for previews (e.g. the cockpit evaluating preconditions).
    pub fn discard() -> Sink {
        let (tx, _) = mpsc::unbounded_channel();
        Sink(tx)
    }
}

/// A runbook's effects. Every action checks before it acts, so running it again after a
/// crash (`recheck`) converges instead of applying twice; the same holds for undos.
pub trait Actions: Send {
    /// Evaluate the step's preconditions from live readings, right now.
    fn preconditions(
        &mut self,
        step: &Step,
    ) -> impl Future<Output = Vec<PreconditionResult>> + Send;
    /// The readings a confirmation of this step is bound to (e.g. both LSNs before promotion).
    fn observations(&mut self, step: &Step) -> impl Future<Output = Vec<Observation>> + Send;
    /// Perform the step; `Ok` carries the verification detail.
    fn action(
        &mut self,
        step: &Step,
        recheck: bool,
        sink: Sink,
    ) -> impl Future<Output = Result<String, StepError>> + Send;
    fn undo(
        &mut self,
        step: &Step,
        recheck: bool,
        sink: Sink,
    ) -> impl Future<Output = Result<String, StepError>> + Send;
    /// Last-resort RESUME after the pause bound, whatever state the rollback reached.
    fn force_resume(
        &mut self,
        sink: Sink,
    ) -> impl Future<Output = Result<String, StepError>> + Send;
    /// The longest write pause this runbook allows.
    fn pause_bound(&self) -> Duration;
    /// Baseline counts the run recorded, for the cockpit's Shards pane (none by default).
    fn baseline(&self) -> Vec<BaselineCount> {
        Vec::new()
    }
    /// Nodes the plan expects stopped at this point of the run, each with why (e.g. a spare
    /// that a later step starts); the cockpit shows them as stopped, not unreachable.
    fn expected_stopped(&self, plan: &Plan, state: &EngineState) -> Vec<(String, String)> {
        let _ = (plan, state);
        Vec::new()
    }
    /// Whether traffic may resume before the rollback runs: true while nothing that changes
    /// where writes go has started. Otherwise the rollback restores routing first, then resumes.
    fn resume_is_safe(&self, plan: &Plan, state: &EngineState) -> bool;
    /// The step's items, found now (e.g. the tables to copy), and how to run them. `None` (the
    /// default): the step has no items and runs `action` alone. With items, the runner runs
    /// them through [`Actions::run_item`] first, and `action` only once every item is done.
    fn items(
        &mut self,
        step: &Step,
        recheck: bool,
        sink: Sink,
    ) -> impl Future<Output = Result<Option<StepItems>, String>> + Send {
        let _ = (step, recheck, sink);
        std::future::ready(Ok(None))
    }
    /// One attempt at `item` of `step`; `Ok` carries the item's verification detail. The
    /// future owns what it needs, so that several run at once. Never called for a step whose
    /// `items` is `None`.
    fn run_item(
        &mut self,
        step: &Step,
        item: &engine::ItemId,
        attempt: ItemAttempt,
        sink: Sink,
    ) -> ItemFuture {
        let _ = (attempt, sink);
        let reason = format!("step `{}` runs no items (asked for `{item}`)", step.id);
        Box::pin(std::future::ready(Err(reason)))
    }
    /// Whether each item of `step` waits for the operator's confirmation before it starts
    /// (table-copy's `--confirm`). Only a cockpit can give one ([`Runner::item_control`]); a
    /// run without one fails such a step before any item starts.
    fn confirm_each_item(&self, step: &Step) -> bool {
        let _ = step;
        false
    }
    /// The operator asked to retry these items of the running step after they failed (see
    /// [`ItemRequests::retry`]); called before items start, so an attempt knows it was asked for.
    fn allow_retry(&mut self, items: &std::collections::BTreeSet<engine::ItemId>) {
        let _ = items;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("step `{step}` refused: {refusal}")]
    Refused { step: StepId, refusal: Refusal },
    #[error("step `{step}` failed: {reason}")]
    StepFailed { step: StepId, reason: StepError },
    #[error("rolling back `{step}` failed: {reason}")]
    UndoFailed { step: StepId, reason: StepError },
    #[error("the plan changed since it was reviewed: expected fingerprint {expected}, the plan now has {actual}")]
    FingerprintMismatch { expected: String, actual: String },
    #[error("run {run_id} of this runbook is unfinished with another plan (fingerprint {fingerprint}); resume it with the same inventory and parameters, or roll it back first")]
    OtherRunUnfinished { run_id: RunId, fingerprint: String },
    #[error("the journal of run {run_id} does not replay onto this plan: {detail}")]
    Replay { run_id: RunId, detail: String },
    #[error("cannot prepare the run: {0}")]
    Setup(String),
    #[error("the write pause exceeded its bound of {bound_ms} ms; traffic was resumed and the run rolled back to before the pause")]
    PauseBoundExceeded { bound_ms: u128 },
    #[error("stopped ({reason}); traffic is not left paused, and `cutover run` resumes the run")]
    Stopped { reason: String },
    #[error("the operator aborted the paused window; traffic was resumed and the run rolled back to before the pause")]
    WindowAborted,
}

/// Asks a [`Runner`] to stop: the process is about to exit. Cloneable, so that a signal task
/// and the cockpit can both hold one.
#[derive(Clone)]
pub struct StopHandle(std::sync::Arc<watch::Sender<Option<String>>>);

impl StopHandle {
    /// Request the stop; the first reason given is the one journaled.
    pub fn stop(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.0.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

/// Asks a [`Runner`] to abort the paused window: the pause ends now as its bound would end
/// it (traffic resumes, the run rolls back to before the pause). Outside a pause it does nothing.
#[derive(Clone)]
pub struct AbortHandle(std::sync::Arc<watch::Sender<bool>>);

impl AbortHandle {
    pub fn abort(&self) {
        self.0.send_replace(true);
    }
}

/// How a run ended up after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Completed,
    /// Stopped at a step that needs an operator (refused, failed, or rolled back).
    Stopped,
    /// Stopped before `step`, which removes the way back and was not asked for by name.
    HeldBefore {
        step: StepId,
    },
    /// Stopped after `step`, the last one asked for.
    StoppedAfter {
        step: StepId,
    },
}

pub struct Runner<A: Actions> {
    pub plan: Plan,
    pub state: EngineState,
    pub run_id: RunId,
    pub resumed: bool,
    journal: Journal,
    /// Held for the runner's life: no second process drives this runbook meanwhile.
    _driver: DriverLock,
    actions: A,
    /// When the current write pause began, by our monotonic clock.
    pause_started: Option<Instant>,
    pause_bound_hit: bool,
    /// Set once traffic was resumed because of the bound, so it is not resumed again.
    resumed_after_bound: bool,
    stop: StopHandle,
    stop_requested: watch::Receiver<Option<String>>,
    /// Called whenever a write pause begins (or is found on resume), with the pause bound.
    on_pause: Option<PauseHook>,
    /// Called with every journal entry once it is durable (`cutover run --json`).
    on_entry: Option<EntryHook>,
    abort: std::sync::Arc<watch::Sender<bool>>,
    abort_requested: watch::Receiver<bool>,
    /// Set when the pause ended because of an abort, so `perform` reports it as such.
    aborted: bool,
    /// The state after every committed command, for a cockpit showing a long call as it runs.
    state_tx: watch::Sender<EngineState>,
    /// Whether the run is in the journal. A new run is recorded with its first entry (the
    /// first confirmed step), so opening and closing a cockpit leaves no run behind.
    recorded: bool,
    /// Called on drop when the run was never recorded (removes its run directory).
    discard: Option<Box<dyn FnOnce() + Send>>,
    /// Who drives: the OS user of this process (pair mode binds approvals to it).
    identity: crate::identity::Identity,
    /// Called whenever a wait for a second person changes (see [`pair`]).
    on_approval: Option<ApprovalHook>,
    /// The operator's requests about a step's items (hold, confirm, retry).
    item_requests: std::sync::Arc<watch::Sender<items::ItemRequests>>,
    /// Someone (a cockpit) holds an [`ItemControl`] and can confirm items.
    item_control_given: bool,
}

impl<A: Actions> Drop for Runner<A> {
    fn drop(&mut self) {
        if !self.recorded {
            if let Some(discard) = self.discard.take() {
                discard();
            }
        }
    }
}

/// See [`Runner::on_entry`].
pub type EntryHook = Box<dyn FnMut(&RunId, &JournalEntry) + Send>;

/// See [`Runner::on_pause`].
pub type PauseHook = Box<dyn FnMut(&RunId, Duration) + Send>;

impl<A: Actions> Runner<A> {
    /// Resume the unfinished run of this plan, or create a new one. An unfinished run of the
    /// same runbook with a different plan blocks a new run: two cutovers must never interleave.
    /// `make_actions` gets the run id (new or resumed) so the actions can keep per-run files.
    pub fn open(
        journal: Journal,
        plan: Plan,
        settings: EngineSettings,
        make_actions: impl FnOnce(&RunId) -> Result<A, String>,
    ) -> Result<Self, RunError> {
        let driver = journal.lock_driver(&plan.environment, &plan.runbook)?;
        let fingerprint = plan.fingerprint();
        let (run_id, state, resumed) = match journal
            .latest_unfinished_run(&plan.environment, &plan.runbook)?
        {
            Some(meta) if meta.fingerprint == fingerprint => {
                let entries = journal.entries(&meta.run_id)?;
                let state = EngineState::replay(&plan, settings, entries.iter()).map_err(|e| {
                    RunError::Replay {
                        run_id: meta.run_id.clone(),
                        detail: e.to_string(),
                    }
                })?;
                (meta.run_id, state, true)
            }
            Some(meta) => {
                return Err(RunError::OtherRunUnfinished {
                    run_id: meta.run_id,
                    fingerprint: meta.fingerprint,
                })
            }
            None => (
                Journal::new_run_id(),
                EngineState::new(&plan, settings),
                false,
            ),
        };
        let actions = make_actions(&run_id).map_err(RunError::Setup)?;
        let (stop_tx, stop_requested) = watch::channel(None);
        let (abort_tx, abort_requested) = watch::channel(false);
        let (state_tx, _) = watch::channel(state.clone());
        // A pause that survived a crash counts from now: we cannot know how long it has been.
        let pause_started = state.traffic_paused().then(Instant::now);
        Ok(Runner {
            plan,
            state,
            run_id,
            resumed,
            journal,
            _driver: driver,
            actions,
            pause_started,
            pause_bound_hit: false,
            resumed_after_bound: false,
            stop: StopHandle(std::sync::Arc::new(stop_tx)),
            stop_requested,
            on_pause: None,
            on_entry: None,
            abort: std::sync::Arc::new(abort_tx),
            abort_requested,
            aborted: false,
            state_tx,
            recorded: resumed,
            discard: None,
            identity: crate::identity::Identity::current(None),
            on_approval: None,
            item_requests: std::sync::Arc::new(watch::channel(items::ItemRequests::default()).0),
            item_control_given: false,
        })
    }

    /// Whether `step` can end a headless run (`--through`), or with `only` be the one step it
    /// runs (`--step`): it is in the plan, not behind the run, and with `only` the next step.
    pub fn check_stop_step(&self, step: &StepId, only: bool) -> Result<(), String> {
        let Some(index) = self.plan.index_of(step) else {
            return Err(format!("this plan has no step `{step}`"));
        };
        if index < self.state.cursor {
            return Err(format!(
                "`{step}` is behind run {}: it is already done or skipped",
                self.run_id
            ));
        }
        let next = self.state.next_step(&self.plan).map(|s| s.id.clone());
        if only && next.as_ref() != Some(step) {
            return Err(format!(
                "--step {step}: the next step of run {} is {}",
                self.run_id,
                next.map_or("none (the run is complete)".to_string(), |s| format!(
                    "`{s}`"
                ))
            ));
        }
        Ok(())
    }

    /// Whether the run is recorded in the journal (a new run is, from its first confirmed step).
    pub fn is_recorded(&self) -> bool {
        self.recorded
    }

    /// Run `discard` when this runner is dropped without its run ever being recorded.
    pub fn on_discard(&mut self, discard: Box<dyn FnOnce() + Send>) {
        self.discard = Some(discard);
    }

    /// Follows the engine state: a new value after every committed command.
    pub fn watch_state(&self) -> watch::Receiver<EngineState> {
        self.state_tx.subscribe()
    }

    /// Journal a free-text note on the run.
    pub fn note(
        &mut self,
        step: Option<&StepId>,
        text: &str,
        by: Vec<String>,
    ) -> Result<(), RunError> {
        self.commit(Command::Note {
            step: step.cloned(),
            text: text.to_string(),
            by,
        })?;
        Ok(())
    }

    /// Start `step` with `confirmation`; a failure while traffic is paused rolls back to before
    /// the pause and resumes, as a headless run does.
    pub async fn start_recovering(
        &mut self,
        step: &StepId,
        confirmation: Confirmation,
    ) -> Result<(), RunError> {
        let by = confirmation.by.join(" + ");
        if let Err(error) = Box::pin(self.start(step, Some(confirmation))).await {
            self.recover_in_pause(&by, &error).await?;
            return Err(error);
        }
        Ok(())
    }

    /// The operator's say over a step's items (see [`ItemControl`]); taking it tells the runner
    /// that someone can confirm items one by one.
    pub fn item_control(&mut self) -> ItemControl {
        self.item_control_given = true;
        ItemControl(self.item_requests.clone())
    }

    /// A handle that aborts the paused window (see [`AbortHandle`]).
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle(self.abort.clone())
    }

    fn abort_pending(&self) -> bool {
        *self.abort_requested.borrow()
    }

    fn note_abort(&mut self) -> Result<(), RunError> {
        self.abort.send_replace(false);
        self.aborted = true;
        self.commit(Command::Note {
            step: None,
            text: "the operator aborted the paused window: the pause ends now, as if its bound had run out".into(),
            by: vec!["cutover:abort".into()],
        })?;
        Ok(())
    }

    /// Call `hook` whenever traffic pauses, and now if it already is (a resumed run). The CLI
    /// uses it to start a pause guard that outlives this process (`crate::guard`).
    pub fn on_pause(&mut self, mut hook: PauseHook) {
        if self.state.traffic_paused() {
            hook(&self.run_id, self.actions.pause_bound());
        }
        self.on_pause = Some(hook);
    }

    /// A handle that asks this runner to stop (see [`RunError::Stopped`]).
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Follows stop requests: becomes `Some(reason)` once a stop was asked for.
    pub fn stop_requests(&self) -> watch::Receiver<Option<String>> {
        self.stop_requested.clone()
    }

    fn stop_reason(&self) -> Option<String> {
        self.stop_requested.borrow().clone()
    }

    /// The process is about to exit: when traffic is paused, end the pause now exactly as the
    /// bound would (resume when routing is untouched, roll back to before the pause).
    pub async fn end_pause_before_exit(&mut self, reason: &str) -> Result<(), RunError> {
        if !self.state.traffic_paused() {
            return Ok(());
        }
        self.note_stop_while_paused(reason)?;
        let effects = self.pause_bound_exceeded(None).await?;
        match Box::pin(self.perform(effects)).await {
            // perform reports the ended pause as an error for the step it interrupted.
            Ok(()) | Err(RunError::Stopped { .. } | RunError::PauseBoundExceeded { .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    fn note_stop_while_paused(&mut self, reason: &str) -> Result<(), RunError> {
        self.commit(Command::Note {
            step: None,
            text: format!(
                "{reason} while traffic was paused: the pause ends now, as if its bound had run out"
            ),
            by: vec!["cutover:stop".into()],
        })?;
        Ok(())
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn actions(&self) -> &A {
        &self.actions
    }

    pub fn actions_mut(&mut self) -> &mut A {
        &mut self.actions
    }

    /// Follow every journal entry as it is written: the hook sees an entry only after it is
    /// durable, in journal order.
    pub fn on_entry(&mut self, hook: EntryHook) {
        self.on_entry = Some(hook);
    }

    /// Write `entry` durably; a new run is recorded with its first entry.
    fn append(&mut self, entry: &JournalEntry) -> Result<(), RunError> {
        if !self.recorded {
            self.journal.insert_run(&self.run_id, &self.plan)?;
            self.recorded = true;
        }
        self.journal.append(&self.run_id, entry)?;
        if let Some(hook) = self.on_entry.as_mut() {
            hook(&self.run_id, entry);
        }
        Ok(())
    }

    /// Apply a command to the engine, write its journal entries, and return the other effects.
    fn commit(&mut self, command: Command) -> Result<VecDeque<Effect>, RunError> {
        let step = command_step(&command);
        let (state, effects) = engine::apply(&self.state, &self.plan, Utc::now(), command)
            .map_err(|refusal| RunError::Refused { step, refusal })?;
        // Durable first: the in-memory state never runs ahead of the journal.
        let mut rest = VecDeque::new();
        for effect in effects {
            match effect {
                Effect::Journal(entry) => {
                    self.append(&entry)?;
                }
                other => rest.push_back(other),
            }
        }
        let was_paused = self.state.traffic_paused();
        self.state = state;
        self.state_tx.send_replace(self.state.clone());
        match (was_paused, self.state.traffic_paused()) {
            (false, true) => {
                self.pause_started = Some(Instant::now());
                let bound = self.actions.pause_bound();
                if let Some(hook) = self.on_pause.as_mut() {
                    hook(&self.run_id, bound);
                }
            }
            (true, false) => {
                self.pause_started = None;
                // An abort was for the pause that just ended, never for a later one.
                self.abort.send_replace(false);
            }
            _ => {}
        }
        Ok(rest)
    }

    fn pause_deadline(&self) -> Option<Instant> {
        self.pause_started
            .map(|since| since + self.actions.pause_bound())
    }

    /// Start `step` with preconditions evaluated now and the given confirmation, then perform
    /// every effect that follows until the engine waits for an operator again.
    pub async fn start(
        &mut self,
        step: &StepId,
        confirmation: Option<Confirmation>,
    ) -> Result<(), RunError> {
        let spec = self.step_spec(step)?;
        let precondition_results = self.preconditions_of(&spec).await?;
        let observations = self.observations_of(&spec).await?;
        let effects = self.commit(Command::Start {
            step: step.clone(),
            confirmation,
            precondition_results,
            observations,
        });
        let effects = match effects {
            Ok(effects) => effects,
            Err(RunError::Refused { step, refusal }) if !self.recorded => {
                // A run begins with its first confirmed step: a refused one leaves no run.
                return Err(RunError::Refused { step, refusal });
            }
            Err(RunError::Refused { step, refusal }) => {
                // A refusal changes no state; record it for the change ticket all the same.
                let _ = self.commit(Command::Note {
                    step: Some(step.clone()),
                    text: format!("refused: {refusal}"),
                    by: vec![],
                });
                return Err(RunError::Refused { step, refusal });
            }
            Err(other) => return Err(other),
        };
        Box::pin(self.perform(effects)).await
    }

    /// The confirmation requirement of `step` from readings taken now.
    pub async fn requirement(
        &mut self,
        step: &StepId,
    ) -> Result<engine::ConfirmationRequirement, RunError> {
        let spec = self.step_spec(step)?;
        let observations = self.observations_of(&spec).await?;
        engine::required_confirmation(&self.state, &self.plan, step, &observations).map_err(
            |refusal| RunError::Refused {
                step: step.clone(),
                refusal,
            },
        )
    }

    /// The preconditions of `step` evaluated now, under the pause bound while traffic is paused.
    pub async fn preconditions(
        &mut self,
        step: &StepId,
    ) -> Result<Vec<PreconditionResult>, RunError> {
        let spec = self.step_spec(step)?;
        self.preconditions_of(&spec).await
    }

    async fn preconditions_of(&mut self, spec: &Step) -> Result<Vec<PreconditionResult>, RunError> {
        let deadline = self.pause_deadline();
        let mut stop = self.stop_requested.clone();
        let mut abort = self.abort_requested.clone();
        let read = Box::pin(crate::pg::in_step(
            spec.id.as_str(),
            self.actions.preconditions(spec),
        ));
        let outcome = within_pause(deadline, &mut stop, &mut abort, read).await;
        self.finish_read(outcome).await
    }

    async fn observations_of(&mut self, spec: &Step) -> Result<Vec<Observation>, RunError> {
        let deadline = self.pause_deadline();
        let mut stop = self.stop_requested.clone();
        let mut abort = self.abort_requested.clone();
        let read = Box::pin(crate::pg::in_step(
            spec.id.as_str(),
            self.actions.observations(spec),
        ));
        let outcome = within_pause(deadline, &mut stop, &mut abort, read).await;
        self.finish_read(outcome).await
    }

    /// A read interrupted while traffic was paused ends the pause exactly as an overrunning
    /// action does: the bound's path resumes, rolls back to before the pause, and reports it.
    async fn finish_read<T>(&mut self, outcome: ReadOutcome<T>) -> Result<T, RunError> {
        match outcome {
            ReadOutcome::Done(value) => Ok(value),
            ReadOutcome::PauseBound => {
                self.commit(Command::Note {
                    step: None,
                    text: "a read of live state overran the pause bound; it was cancelled".into(),
                    by: vec!["cutover:pause-bound".into()],
                })?;
                Err(self.end_pause_now().await)
            }
            ReadOutcome::Stop => {
                let reason = self.stop_reason().unwrap_or_default();
                self.note_stop_while_paused(&reason)?;
                Err(self.end_pause_now().await)
            }
            ReadOutcome::Abort => {
                self.note_abort()?;
                Err(self.end_pause_now().await)
            }
        }
    }

    /// The pause ends now as the bound ends it; the error says how the run stands after.
    async fn end_pause_now(&mut self) -> RunError {
        let effects = match self.pause_bound_exceeded(None).await {
            Ok(effects) => effects,
            Err(error) => return error,
        };
        match Box::pin(self.perform(effects)).await {
            Err(error) => error,
            // perform always reports an ended pause; this only guards the type.
            Ok(()) => RunError::PauseBoundExceeded {
                bound_ms: self.actions.pause_bound().as_millis(),
            },
        }
    }

    fn step_spec(&self, step: &StepId) -> Result<Step, RunError> {
        self.plan
            .step(step)
            .cloned()
            .ok_or_else(|| RunError::Refused {
                step: step.clone(),
                refusal: Refusal::UnknownStep { step: step.clone() },
            })
    }

    pub async fn rollback_to(
        &mut self,
        step: &StepId,
        by: &str,
        reason: &str,
    ) -> Result<(), RunError> {
        let effects = self.commit(Command::RollbackTo {
            step: step.clone(),
            by: by.to_string(),
            reason: reason.to_string(),
        })?;
        self.perform(effects).await
    }

    pub async fn skip(&mut self, step: &StepId, by: &str, reason: &str) -> Result<(), RunError> {
        let effects = self.commit(Command::Skip {
            step: step.clone(),
            reason: reason.to_string(),
            by: by.to_string(),
        })?;
        self.perform(effects).await
    }

    async fn perform(&mut self, mut queue: VecDeque<Effect>) -> Result<(), RunError> {
        let mut first_error: Option<RunError> = None;
        while let Some(effect) = queue.pop_front() {
            let next = match effect {
                Effect::Journal(entry) => {
                    self.append(&entry)?;
                    VecDeque::new()
                }
                Effect::RunAction {
                    step,
                    resume_recheck,
                } => {
                    let (next, error) = Box::pin(self.run_step(&step, resume_recheck)).await?;
                    if first_error.is_none() {
                        first_error = error;
                    }
                    next
                }
                Effect::RunUndo {
                    step,
                    resume_recheck,
                } => {
                    let (next, error) = Box::pin(self.run_undo(&step, resume_recheck)).await?;
                    if first_error.is_none() {
                        first_error = error;
                    }
                    next
                }
                // The action's future was dropped when the bound fired; nothing is left to stop.
                Effect::CancelAction { .. } => VecDeque::new(),
                // Only `StartItems` emits it, and `run_step` performs those itself.
                Effect::RunItem { .. } => VecDeque::new(),
                Effect::RollbackCompleted { .. } => {
                    if self.state.cursor == 0 {
                        self.journal
                            .finish_run(&self.run_id, RunStatus::RolledBack)?;
                    }
                    VecDeque::new()
                }
                Effect::RunCompleted => {
                    self.journal
                        .finish_run(&self.run_id, RunStatus::Completed)?;
                    VecDeque::new()
                }
            };
            for effect in next.into_iter().rev() {
                queue.push_front(effect);
            }
        }
        if self.pause_bound_hit {
            self.pause_bound_hit = false;
            self.resumed_after_bound = false;
            self.ensure_resumed().await?;
            let aborted = std::mem::take(&mut self.aborted);
            return Err(match self.stop_reason() {
                Some(reason) => RunError::Stopped { reason },
                None if aborted => RunError::WindowAborted,
                None => RunError::PauseBoundExceeded {
                    bound_ms: self.actions.pause_bound().as_millis(),
                },
            });
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// After the bound fired: if the rollback did not end the pause, RESUME anyway.
    async fn ensure_resumed(&mut self) -> Result<(), RunError> {
        if !self.state.traffic_paused() {
            return Ok(());
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let result = self.actions.force_resume(Sink(tx)).await;
        while let Ok(report) = rx.try_recv() {
            self.journal_report(None, report)?;
        }
        let text = match result {
            Ok(detail) => format!("traffic resumed by force after the pause bound: {detail}"),
            Err(reason) => format!("FORCED RESUME FAILED after the pause bound: {reason}"),
        };
        self.commit(Command::Note {
            step: None,
            text,
            by: vec!["cutover:pause-bound".into()],
        })?;
        Ok(())
    }

    fn journal_report(&mut self, step: Option<&StepId>, report: Report) -> Result<(), RunError> {
        let command = match (report, step) {
            (Report::Output(text), Some(step)) => Command::Output {
                step: step.clone(),
                text,
            },
            (Report::Gate { detail, passed }, Some(step)) => Command::Gate {
                step: step.clone(),
                detail,
                passed,
            },
            (Report::Output(text) | Report::Gate { detail: text, .. }, None) => Command::Note {
                step: None,
                text,
                by: vec![],
            },
        };
        self.commit(command)?;
        Ok(())
    }

    async fn run_action(
        &mut self,
        step: &StepId,
        recheck: bool,
    ) -> Result<(VecDeque<Effect>, Option<RunError>), RunError> {
        let spec = self.step_spec(step)?;
        let deadline = self.pause_deadline();
        let mut stop = self.stop_requested.clone();
        let mut abort = self.abort_requested.clone();
        let paused = deadline.is_some();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let outcome = {
            // Boxed: runbook actions are large futures; on the stack they overflow it.
            let mut action = Box::pin(crate::pg::in_step(
                step.as_str(),
                self.actions.action(&spec, recheck, Sink(tx)),
            ));
            let mut reports = Vec::new();
            let outcome = loop {
                tokio::select! {
                    result = &mut action => break ActionOutcome::Done(result),
                    Some(report) = rx.recv() => reports.push(report),
                    _ = sleep_until(deadline) => break ActionOutcome::PauseBound,
                    _ = stop.wait_for(Option::is_some) => break ActionOutcome::Stop,
                    _ = abort.wait_for(|a| *a), if paused => break ActionOutcome::Abort,
                }
            };
            (outcome, reports)
        };
        let (outcome, mut reports) = outcome;
        while let Ok(report) = rx.try_recv() {
            reports.push(report);
        }
        for report in reports {
            self.journal_report(Some(step), report)?;
        }
        match outcome {
            ActionOutcome::Done(Ok(detail)) => Ok((
                self.commit(Command::ActionSucceeded {
                    step: step.clone(),
                    verification_detail: detail,
                })?,
                None,
            )),
            ActionOutcome::Done(Err(reason)) => {
                let effects = self.commit(Command::ActionFailed {
                    step: step.clone(),
                    reason: reason.to_string(),
                })?;
                Ok((
                    effects,
                    Some(RunError::StepFailed {
                        step: step.clone(),
                        reason,
                    }),
                ))
            }
            ActionOutcome::PauseBound => Ok((self.pause_bound_exceeded(Some(step)).await?, None)),
            ActionOutcome::Abort => {
                self.note_abort()?;
                Ok((self.pause_bound_exceeded(Some(step)).await?, None))
            }
            ActionOutcome::Stop => {
                self.stopped_during(step, "it stopped half-run; a resumed run re-checks it")
                    .await
            }
        }
    }

    /// A stop request came while `step` ran. Inside a pause it is handled as the bound running
    /// out now; outside, stopping mid-step is what a crash does: the step stays started, and
    /// a resumed run re-checks before acting. `half_run` says what was left half-run.
    async fn stopped_during(
        &mut self,
        step: &StepId,
        half_run: &str,
    ) -> Result<(VecDeque<Effect>, Option<RunError>), RunError> {
        let reason = self.stop_reason().unwrap_or_default();
        if self.state.traffic_paused() {
            self.note_stop_while_paused(&reason)?;
            return Ok((self.pause_bound_exceeded(Some(step)).await?, None));
        }
        self.commit(Command::Note {
            step: Some(step.clone()),
            text: format!("{reason} during this step: {half_run} before acting"),
            by: vec!["cutover:stop".into()],
        })?;
        Err(RunError::Stopped { reason })
    }

    /// The pause outlived its bound: resume first when routing is untouched, then roll back
    /// to before the pause (the engine emits the undo effects).
    async fn pause_bound_exceeded(
        &mut self,
        step: Option<&StepId>,
    ) -> Result<VecDeque<Effect>, RunError> {
        let paused_for = self.pause_started.map(|s| s.elapsed()).unwrap_or_default();
        self.pause_bound_hit = true;
        if self.actions.resume_is_safe(&self.plan, &self.state) {
            self.force_resume_now(step).await?;
        }
        self.commit(Command::PauseBoundExceeded {
            bound: self.actions.pause_bound(),
            paused_for,
        })
    }

    /// RESUME now (idempotent: aliases already flowing are left alone) and journal what happened.
    async fn force_resume_now(&mut self, step: Option<&StepId>) -> Result<(), RunError> {
        self.resumed_after_bound = true;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let resumed = self.actions.force_resume(Sink(tx)).await;
        while let Ok(report) = rx.try_recv() {
            self.journal_report(step, report)?;
        }
        if let Err(reason) = resumed {
            self.journal_report(
                step,
                Report::Output(format!("RESUME after the pause bound failed: {reason}")),
            )?;
        }
        Ok(())
    }

    /// When the pause window is open, the instant its bound runs out.
    pub fn pause_deadline_at(&self) -> Option<Instant> {
        self.pause_deadline()
    }

    /// Enforce the bound while no action runs (an operator taking too long in the cockpit).
    pub async fn enforce_pause_bound(&mut self) -> Result<(), RunError> {
        match self.pause_deadline() {
            Some(deadline) if Instant::now() >= deadline => {
                let effects = self.pause_bound_exceeded(None).await?;
                Box::pin(self.perform(effects)).await
            }
            _ => Ok(()),
        }
    }

    async fn run_undo(
        &mut self,
        step: &StepId,
        recheck: bool,
    ) -> Result<(VecDeque<Effect>, Option<RunError>), RunError> {
        let spec = self.step_spec(step)?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let result = Box::pin(crate::pg::in_step(
            step.as_str(),
            self.actions.undo(&spec, recheck, Sink(tx)),
        ))
        .await;
        while let Ok(report) = rx.try_recv() {
            self.journal_report(Some(step), report)?;
        }
        match result {
            Ok(_) => Ok((
                self.commit(Command::RollbackStepDone { step: step.clone() })?,
                None,
            )),
            Err(reason) => {
                let effects = self.commit(Command::RollbackStepFailed {
                    step: step.clone(),
                    reason: reason.to_string(),
                })?;
                Ok((
                    effects,
                    Some(RunError::UndoFailed {
                        step: step.clone(),
                        reason,
                    }),
                ))
            }
        }
    }

    /// `--yes`: run every remaining step with headless confirmations, enforcing every
    /// precondition and gate. A failure while traffic is paused rolls back to before the pause.
    /// A step that removes the way back is never run this way (see [`Self::run_headless_through`]).
    pub async fn run_headless(&mut self, user: &str) -> Result<Progress, RunError> {
        self.run_headless_through(user, None).await
    }

    /// As [`Self::run_headless`], stopping after `through` when given. A step that removes the
    /// way back runs only when it is `through` itself: otherwise the run holds before it.
    pub async fn run_headless_through(
        &mut self,
        user: &str,
        through: Option<&StepId>,
    ) -> Result<Progress, RunError> {
        let by = match self.state.settings.oversight {
            engine::Oversight::Pair => vec![format!("headless:{}", self.identity.label())],
            engine::Oversight::Solo => vec![format!("headless:{user}")],
        };
        loop {
            if let Some(reason) = self.stop_reason() {
                self.end_pause_before_exit(&reason).await?;
                return Err(RunError::Stopped { reason });
            }
            let Some(step) = self.state.next_step(&self.plan).cloned() else {
                return Ok(Progress::Completed);
            };
            if step.flags.removes_way_back && through != Some(&step.id) {
                return Ok(Progress::HeldBefore { step: step.id });
            }
            Box::pin(self.confirmed_step(by.clone())).await?;
            if through == Some(&step.id) {
                return Ok(Progress::StoppedAfter { step: step.id });
            }
        }
    }

    /// Start the next step confirmed by `by` against readings taken now, exactly as a headless
    /// run does; a failure while traffic is paused rolls back to before the pause and resumes.
    /// Returns the step started, or `None` when every step is done.
    pub async fn confirmed_step(&mut self, by: Vec<String>) -> Result<Option<StepId>, RunError> {
        let Some(step) = self.state.next_step(&self.plan).map(|s| s.id.clone()) else {
            return Ok(None);
        };
        if self.abort_pending() && self.state.traffic_paused() {
            self.note_abort()?;
            return Err(self.end_pause_now().await);
        }
        let approval = match Box::pin(self.pair_approval(&step)).await {
            Ok(approval) => approval,
            Err(error) => {
                self.recover_in_pause(&by.join(" + "), &error).await?;
                return Err(error);
            }
        };
        let requirement = match Box::pin(self.requirement(&step)).await {
            Ok(requirement) => requirement,
            Err(error) => {
                self.recover_in_pause(&by.join(" + "), &error).await?;
                return Err(error);
            }
        };
        let confirmation = Confirmation {
            by,
            seen: requirement.seen,
            approval,
        };
        // The run stays unfinished on failure: `cutover run` retries (re-checking), `cutover rollback` undoes.
        self.start_recovering(&step, confirmation).await?;
        Ok(Some(step))
    }

    /// After `error` while traffic is still paused: roll back to before the pause, then make
    /// sure traffic flows.
    async fn recover_in_pause(&mut self, by: &str, error: &RunError) -> Result<(), RunError> {
        let Some(pause_step) = self.state.traffic_pause.as_ref().map(|p| p.by_step) else {
            return Ok(());
        };
        let target = self.plan.steps[pause_step].id.clone();
        let reason = format!("automatic: {error}");
        if let Err(rollback_error) = Box::pin(self.rollback_to(&target, by, &reason)).await {
            tracing::error!(target: "cutover::cmd", "rollback after failure: {rollback_error}");
        }
        self.ensure_resumed().await
    }
}

/// How a running action ended.
enum ActionOutcome {
    Done(Result<String, StepError>),
    /// The pause bound ran out first; the action's future was dropped.
    PauseBound,
    /// A stop was requested first; the action's future was dropped.
    Stop,
    /// The operator aborted the paused window; the action's future was dropped.
    Abort,
}

/// How a read of live state (preconditions, observations) ended.
enum ReadOutcome<T> {
    Done(T),
    /// The pause bound ran out first; the read's future was dropped.
    PauseBound,
    /// A stop was requested while traffic was paused; the read's future was dropped.
    Stop,
    /// The operator aborted the paused window; the read's future was dropped.
    Abort,
}

/// Await `read`; while traffic is paused (`deadline` is set) no longer than the deadline, and
/// no longer than until a stop is requested. Outside a pause a read runs to its end.
async fn within_pause<T>(
    deadline: Option<Instant>,
    stop: &mut watch::Receiver<Option<String>>,
    abort: &mut watch::Receiver<bool>,
    read: impl Future<Output = T>,
) -> ReadOutcome<T> {
    if deadline.is_none() {
        return ReadOutcome::Done(read.await);
    }
    tokio::select! {
        value = read => ReadOutcome::Done(value),
        _ = sleep_until(deadline) => ReadOutcome::PauseBound,
        _ = stop.wait_for(Option::is_some) => ReadOutcome::Stop,
        _ = abort.wait_for(|a| *a) => ReadOutcome::Abort,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

fn command_step(command: &Command) -> StepId {
    match command {
        Command::Start { step, .. }
        | Command::ActionSucceeded { step, .. }
        | Command::ActionFailed { step, .. }
        | Command::Output { step, .. }
        | Command::Gate { step, .. }
        | Command::Skip { step, .. }
        | Command::RollbackTo { step, .. }
        | Command::RollbackStepDone { step }
        | Command::RollbackStepFailed { step, .. }
        | Command::DeclareItems { step, .. }
        | Command::StartItems { step, .. }
        | Command::ItemSucceeded { step, .. }
        | Command::ItemFailed { step, .. }
        | Command::RetryItem { step, .. }
        | Command::ConfirmItem { step, .. } => step.clone(),
        Command::Note { step, .. } => step.clone().unwrap_or_else(|| StepId::new("-")),
        Command::PauseBoundExceeded { .. } => StepId::new("pause-bound"),
    }
}
