//! The engine's transition function: validates a command against state and plan, then emits
//! journal entries (folded into the new state as they are emitted) and effects.

use super::entry::{EntryKind, JournalEntry};
use super::items::{ItemId, ItemStatus, OnItemFailure};
use super::state::{EngineState, Oversight, StepStatus};
use super::{
    Command, Confirmation, ConfirmationRequirement, Effect, Observation, PreconditionResult,
    Refusal, Severity,
};
use crate::plan::{CanonicalEncoder, Plan, StepId, Undo};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Actor recorded for transitions the engine makes on its own after the pause bound fired.
const PAUSE_BOUND_ACTOR: &str = "cutover:pause-bound";

/// Applies `command` at time `at`. On refusal nothing changes and nothing is emitted.
/// On success, every `RunAction`/`RunUndo`/`CancelAction` in the effects is preceded by the
/// `Journal` effect recording it.
pub fn apply(
    state: &EngineState,
    plan: &Plan,
    at: DateTime<Utc>,
    command: Command,
) -> Result<(EngineState, Vec<Effect>), Refusal> {
    if state.steps.len() != plan.steps.len() {
        return Err(Refusal::PlanMismatch {
            plan_steps: plan.steps.len(),
            state_steps: state.steps.len(),
        });
    }
    let mut t = Transition {
        plan,
        at,
        state: state.clone(),
        effects: Vec::new(),
    };
    match command {
        Command::Start {
            step,
            confirmation,
            precondition_results,
            observations,
        } => start(
            &mut t,
            &step,
            confirmation,
            &precondition_results,
            &observations,
        )?,
        Command::ActionSucceeded {
            step,
            verification_detail,
        } => {
            let i = t.running(&step)?;
            let unfinished = t.state.unfinished_items(i);
            if unfinished > 0 {
                return Err(Refusal::ItemsUnfinished {
                    step,
                    unfinished,
                    total: t.state.items(i).len(),
                });
            }
            t.journal(
                Some(i),
                EntryKind::Verified,
                verification_detail,
                Vec::new(),
            )?;
            t.complete_if_done()?;
        }
        Command::ActionFailed { step, reason } => {
            let i = t.running(&step)?;
            t.journal(Some(i), EntryKind::Failed, reason, Vec::new())?;
        }
        Command::Output { step, text } => {
            let i = index_of(plan, &step)?;
            t.journal(Some(i), EntryKind::Output, text, Vec::new())?;
        }
        Command::Gate {
            step,
            detail,
            passed,
        } => {
            let i = index_of(plan, &step)?;
            let verdict = if passed { "passed" } else { "refused" };
            t.journal(
                Some(i),
                EntryKind::Gate,
                format!("{verdict}: {detail}"),
                Vec::new(),
            )?;
        }
        Command::Note { step, text, by } => {
            let i = step.map(|s| index_of(plan, &s)).transpose()?;
            t.journal(i, EntryKind::Note, text, by)?;
        }
        Command::Skip { step, reason, by } => skip(&mut t, &step, reason, by)?,
        Command::RollbackTo { step, by, reason } => rollback_to(&mut t, &step, by, reason)?,
        Command::RollbackStepDone { step } => {
            let i = t.rolling_back(&step)?;
            t.journal(Some(i), EntryKind::RolledBack, "undo succeeded", Vec::new())?;
            if t.state.rollback.is_some() {
                t.advance_rollback()?;
            }
        }
        Command::RollbackStepFailed { step, reason } => {
            let i = t.rolling_back(&step)?;
            t.journal(Some(i), EntryKind::UndoFailed, reason, Vec::new())?;
        }
        Command::PauseBoundExceeded { bound, paused_for } => {
            pause_bound_exceeded(&mut t, bound, paused_for)?
        }
        Command::DeclareItems { step, items } => declare_items(&mut t, &step, items)?,
        Command::StartItems {
            step,
            limit,
            on_failure,
        } => start_items(&mut t, &step, limit, on_failure)?,
        Command::ItemSucceeded { step, item, detail } => {
            let i = t.running_item(&step, &item)?;
            t.journal_item(i, EntryKind::ItemDone, item, detail)?;
        }
        Command::ItemFailed { step, item, reason } => {
            let i = t.running_item(&step, &item)?;
            t.journal_item(i, EntryKind::ItemFailed, item, reason)?;
        }
        Command::RetryItem { step, item, by } => retry_item(&mut t, &step, item, by)?,
        Command::ConfirmItem { step, item, by } => confirm_item(&mut t, &step, item, by)?,
    }
    Ok((t.state, t.effects))
}

/// The confirmation `Start` will accept for `step` given these observations. The cockpit
/// computes it when it shows the dialog and again before sending `Start`; if the two differ,
/// the readings changed and it asks again.
pub fn required_confirmation(
    state: &EngineState,
    plan: &Plan,
    step: &StepId,
    observations: &[Observation],
) -> Result<ConfirmationRequirement, Refusal> {
    let i = index_of(plan, step)?;
    let spec = &plan.steps[i];
    let severity = if spec.is_point_of_no_return() {
        Severity::PointOfNoReturn
    } else if spec.flags.destructive {
        Severity::Destructive
    } else {
        Severity::Routine
    };
    let approval_of = match state.settings.oversight {
        Oversight::Pair => approval_of(state, plan, i),
        Oversight::Solo => None,
    };
    Ok(ConfirmationRequirement {
        step: step.clone(),
        seen: seen_hash(&plan.fingerprint(), step, observations),
        distinct_operators: if approval_of.is_some() { 2 } else { 1 },
        approval_of,
        severity,
    })
}

/// Lowercase hex sha256 over the plan fingerprint, the step id and the sorted observations:
/// what a confirmation (and a pair approval) of `step` is bound to. Another session holding
/// the same observations computes the same hash.
pub fn seen_hash(fingerprint: &str, step: &StepId, observations: &[Observation]) -> String {
    let mut sorted: Vec<&Observation> = observations.iter().collect();
    sorted.sort();
    let mut enc = CanonicalEncoder::new("cutover-confirmation-v1");
    enc.str(fingerprint);
    enc.str(step.as_str());
    enc.count(sorted.len());
    for observation in sorted {
        enc.str(&observation.name);
        enc.str(&observation.value);
    }
    enc.finish_hex()
}

fn is_dangerous(step: &crate::plan::Step) -> bool {
    step.flags.destructive || step.is_point_of_no_return()
}

/// In pair mode, the step whose approval step `i` needs, if any. The paused window is one
/// unit: its opening step is approved (before traffic pauses, so no bound is spent waiting for
/// a person) when the window holds a dangerous step, and that approval covers the window's
/// dangerous steps while the window it opened is the one in effect.
fn approval_of(state: &EngineState, plan: &Plan, i: usize) -> Option<StepId> {
    let step = &plan.steps[i];
    if let Some(pause) = state.traffic_pause {
        let window = super::paused_window(plan, pause.by_step);
        if pause.by_step < i && window.is_some_and(|(from, to)| from < i && i <= to) {
            return is_dangerous(step).then(|| plan.steps[pause.by_step].id.clone());
        }
    }
    if let Some((from, to)) = super::paused_window(plan, i) {
        if plan.steps[from..=to].iter().any(is_dangerous) {
            return Some(step.id.clone());
        }
    }
    is_dangerous(step).then(|| step.id.clone())
}

/// Pair mode: the confirmation carries an approval from another uid, for this plan and the
/// step the requirement names; an approval of the step itself must be of exactly the `seen`
/// the readings give now.
fn check_pair_approval(
    plan: &Plan,
    step: &StepId,
    requirement: &ConfirmationRequirement,
    confirmation: &Confirmation,
    operators: &[String],
) -> Result<(), Refusal> {
    let Some(approval_of) = &requirement.approval_of else {
        return Ok(());
    };
    let Some(approval) = &confirmation.approval else {
        return Err(Refusal::SecondOperatorRequired {
            step: step.clone(),
            approval_of: approval_of.clone(),
            by: operators.to_vec(),
        });
    };
    if approval.approver_uid == approval.driver_uid {
        return Err(Refusal::ApprovalBySameUser {
            step: step.clone(),
            uid: approval.approver_uid,
        });
    }
    if approval.fingerprint != plan.fingerprint() {
        return Err(Refusal::ApprovalMismatch {
            step: step.clone(),
            what: format!("plan {}", approval.fingerprint),
        });
    }
    if &approval.step != approval_of {
        return Err(Refusal::ApprovalMismatch {
            step: step.clone(),
            what: format!("step `{}`", approval.step),
        });
    }
    if approval_of == step && approval.seen != requirement.seen {
        return Err(Refusal::StaleApproval {
            step: step.clone(),
            approved: approval.seen.clone(),
            now: requirement.seen.clone(),
        });
    }
    Ok(())
}

fn start(
    t: &mut Transition<'_>,
    step: &StepId,
    confirmation: Option<Confirmation>,
    precondition_results: &[PreconditionResult],
    observations: &[Observation],
) -> Result<(), Refusal> {
    let i = index_of(t.plan, step)?;
    t.check_can_advance(i)?;
    let spec = &t.plan.steps[i];
    if spec.flags.needs_traffic_stopped && t.state.traffic_pause.is_none() {
        return Err(Refusal::TrafficNotStopped { step: step.clone() });
    }
    if spec.flags.removes_way_back {
        check_soak(t, i)?;
    }
    for pre in &spec.preconditions {
        let result = precondition_results
            .iter()
            .find(|r| r.id == pre.id)
            .ok_or_else(|| Refusal::PreconditionNotEvaluated {
                step: step.clone(),
                precondition: pre.id.clone(),
            })?;
        if !result.holds {
            return Err(Refusal::PreconditionFailed {
                step: step.clone(),
                precondition: pre.id.clone(),
                description: pre.description.clone(),
                detail: result.detail.clone(),
            });
        }
    }
    let requirement = required_confirmation(&t.state, t.plan, step, observations)?;
    let confirmation =
        confirmation.ok_or_else(|| Refusal::ConfirmationMissing { step: step.clone() })?;
    let operators = distinct_operators(&confirmation.by);
    if operators.is_empty() {
        return Err(Refusal::UnnamedOperator { step: step.clone() });
    }
    if confirmation.seen != requirement.seen {
        return Err(Refusal::StaleConfirmation {
            step: step.clone(),
            expected: requirement.seen,
            got: confirmation.seen,
        });
    }
    check_pair_approval(t.plan, step, &requirement, &confirmation, &operators)?;
    let mut operators = operators;
    if let Some(approval) = &confirmation.approval {
        if requirement.approval_of.is_some() && !operators.contains(&approval.approver) {
            operators.push(approval.approver.clone());
        }
    }

    let previous = t.state.steps[i].clone();
    let resume_recheck = matches!(
        previous,
        StepStatus::NeedsRecheck { .. } | StepStatus::Failed { .. }
    );
    let observed = observations
        .iter()
        .map(|o| format!("{}={}", o.name, o.value))
        .collect::<Vec<_>>()
        .join(", ");
    let mut confirmed_detail = if observed.is_empty() {
        format!("seen {}", requirement.seen)
    } else {
        format!("seen {} ({observed})", requirement.seen)
    };
    if let (Some(approval), Some(of)) = (&confirmation.approval, &requirement.approval_of) {
        confirmed_detail.push_str(&format!(
            "; approved by {} from {} (request {}, approval of `{of}`, seen {})",
            approval.approver, approval.approver_terminal, approval.request_id, approval.seen
        ));
    }
    t.journal(Some(i), EntryKind::Confirmed, confirmed_detail, operators)?;
    for result in precondition_results {
        let verdict = if result.holds {
            "holds"
        } else {
            "does not hold"
        };
        t.journal(
            Some(i),
            EntryKind::Precondition,
            format!("{} {verdict}: {}", result.id, result.detail),
            Vec::new(),
        )?;
    }
    let started_detail = match previous {
        StepStatus::NeedsRecheck { .. } => "resumed after interruption: re-check before acting",
        StepStatus::Failed { .. } => "retry after failure: re-check before acting",
        _ => "",
    };
    t.journal(Some(i), EntryKind::Started, started_detail, Vec::new())?;
    t.effects.push(Effect::RunAction {
        step: step.clone(),
        resume_recheck,
    });
    Ok(())
}

/// A step that removes the way back starts only once the last traffic-resuming step before it
/// finished at least `min_soak_secs` ago; a plan with no such step has nothing to soak.
fn check_soak(t: &Transition<'_>, i: usize) -> Result<(), Refusal> {
    let spec = &t.plan.steps[i];
    let Some(resumed) = t.plan.steps[..i]
        .iter()
        .rposition(|s| s.flags.resumes_traffic)
    else {
        return Ok(());
    };
    let ran_for = match &t.state.steps[resumed] {
        StepStatus::Done { finished_at, .. } => (t.at - *finished_at).num_seconds().max(0) as u64,
        _ => 0,
    };
    if ran_for < spec.flags.min_soak_secs {
        return Err(Refusal::SoakNotOver {
            step: spec.id.clone(),
            ran_for_secs: ran_for,
            min_soak_secs: spec.flags.min_soak_secs,
        });
    }
    Ok(())
}

fn skip(t: &mut Transition<'_>, step: &StepId, reason: String, by: String) -> Result<(), Refusal> {
    let i = index_of(t.plan, step)?;
    if reason.trim().is_empty() {
        return Err(Refusal::ReasonRequired {
            step: step.clone(),
            action: "skip",
        });
    }
    let by = by.trim().to_string();
    if by.is_empty() {
        return Err(Refusal::UnnamedOperator { step: step.clone() });
    }
    t.check_can_advance(i)?;
    if t.plan.steps[i].flags.resumes_traffic && t.state.traffic_pause.is_some() {
        return Err(Refusal::SkipWouldLeaveTrafficPaused { step: step.clone() });
    }
    t.journal(Some(i), EntryKind::Skipped, reason, vec![by])?;
    t.complete_if_done()
}

fn rollback_to(
    t: &mut Transition<'_>,
    step: &StepId,
    by: String,
    reason: String,
) -> Result<(), Refusal> {
    let i = index_of(t.plan, step)?;
    let by = by.trim().to_string();
    if by.is_empty() {
        return Err(Refusal::UnnamedOperator { step: step.clone() });
    }
    if reason.trim().is_empty() {
        return Err(Refusal::ReasonRequired {
            step: step.clone(),
            action: "roll back to",
        });
    }
    if let Some(running) = t.state.running_step() {
        return Err(Refusal::AnotherStepRunning {
            running: t.plan.steps[running].id.clone(),
        });
    }
    // An undo is running right now: its result must come back before anything else.
    if let Some(undoing) = t.state.rolling_back_step() {
        let target = t.state.rollback.as_ref().map_or(undoing, |r| r.target);
        return Err(Refusal::RollbackInProgress {
            target: t.step_id(target),
        });
    }
    let target = match &t.state.rollback {
        Some(progress) => i.min(progress.target),
        None => i,
    };
    t.check_point_of_no_return(target)?;
    let anything_to_undo = t.state.steps[target..].iter().any(|s| s.needs_undo());
    if !anything_to_undo && t.state.rollback.is_none() {
        return Err(Refusal::NothingToRollBack { step: step.clone() });
    }
    t.journal(Some(target), EntryKind::RollbackRequested, reason, vec![by])?;
    t.advance_rollback()
}

fn pause_bound_exceeded(
    t: &mut Transition<'_>,
    bound: Duration,
    paused_for: Duration,
) -> Result<(), Refusal> {
    let pause = t.state.traffic_pause.ok_or(Refusal::TrafficNotPaused)?;
    let running = t.state.running_step();
    let actors = vec![PAUSE_BOUND_ACTOR.to_string()];
    t.journal(
        Some(running.unwrap_or(pause.by_step)),
        EntryKind::PauseBoundExceeded,
        format!(
            "write pause lasted {:.3} s, over its bound of {:.3} s; traffic was resumed automatically",
            paused_for.as_secs_f64(),
            bound.as_secs_f64()
        ),
        actors.clone(),
    )?;
    if let Some(r) = running {
        t.journal(
            Some(r),
            EntryKind::Failed,
            format!(
                "cancelled: the write pause exceeded its bound of {:.3} s",
                bound.as_secs_f64()
            ),
            actors.clone(),
        )?;
        t.effects.push(Effect::CancelAction {
            step: t.plan.steps[r].id.clone(),
        });
    }
    if t.state.rollback.is_some() {
        return Ok(());
    }
    if let Err(refusal) = t.check_point_of_no_return(pause.by_step) {
        t.journal(
            Some(pause.by_step),
            EntryKind::Note,
            format!("automatic rollback to before the pause is impossible: {refusal}"),
            actors,
        )?;
        return Ok(());
    }
    t.journal(
        Some(pause.by_step),
        EntryKind::RollbackRequested,
        "automatic: the write pause exceeded its bound; rolling back to before the pause",
        actors,
    )?;
    t.advance_rollback()
}

fn declare_items(t: &mut Transition<'_>, step: &StepId, items: Vec<ItemId>) -> Result<(), Refusal> {
    let i = t.running(step)?;
    for item in items {
        if !t.state.items(i).iter().any(|known| known.id == item) {
            t.journal_item(i, EntryKind::ItemDeclared, item, String::new())?;
        }
    }
    Ok(())
}

fn start_items(
    t: &mut Transition<'_>,
    step: &StepId,
    limit: usize,
    on_failure: OnItemFailure,
) -> Result<(), Refusal> {
    let i = t.running(step)?;
    for item in t.state.next_items(i, limit, on_failure) {
        let previous = t
            .state
            .items(i)
            .iter()
            .find(|known| known.id == item)
            .map(|known| (known.attempts, known.status.clone()));
        let Some((attempts, status)) = previous else {
            continue;
        };
        let attempt = attempts + 1;
        let (recheck, detail) = match status {
            ItemStatus::NeedsRecheck { reason } => (
                true,
                format!("attempt {attempt}: re-check before acting (earlier attempt: {reason})"),
            ),
            _ => (false, format!("attempt {attempt}")),
        };
        t.journal_item(i, EntryKind::ItemStarted, item.clone(), detail)?;
        t.effects.push(Effect::RunItem {
            step: step.clone(),
            item,
            attempt,
            recheck,
        });
    }
    Ok(())
}

fn retry_item(
    t: &mut Transition<'_>,
    step: &StepId,
    item: ItemId,
    by: Vec<String>,
) -> Result<(), Refusal> {
    let i = index_of(t.plan, step)?;
    let by = distinct_operators(&by);
    if by.is_empty() {
        return Err(Refusal::UnnamedOperator { step: step.clone() });
    }
    let status = &t.state.steps[i];
    if !matches!(
        status,
        StepStatus::Running { .. } | StepStatus::Failed { .. }
    ) {
        return Err(Refusal::StepNotRunningNorFailed {
            step: step.clone(),
            status: status.label(),
        });
    }
    let reason = match &t.known_item(i, &item)?.status {
        ItemStatus::Failed { reason, .. } => reason.clone(),
        other => {
            return Err(Refusal::ItemNotFailed {
                step: step.clone(),
                item,
                status: other.label(),
            })
        }
    };
    t.journal_item_by(i, EntryKind::ItemRetryAsked, item, reason, by)
}

fn confirm_item(
    t: &mut Transition<'_>,
    step: &StepId,
    item: ItemId,
    by: Vec<String>,
) -> Result<(), Refusal> {
    let i = t.running(step)?;
    let by = distinct_operators(&by);
    if by.is_empty() {
        return Err(Refusal::UnnamedOperator { step: step.clone() });
    }
    let known = t.known_item(i, &item)?;
    if !known.is_startable() {
        return Err(Refusal::ItemNotWaiting {
            step: step.clone(),
            item,
            status: known.status.label(),
        });
    }
    let detail = format!("may start attempt {}", known.attempts + 1);
    t.journal_item_by(i, EntryKind::ItemConfirmed, item, detail, by)
}

fn index_of(plan: &Plan, step: &StepId) -> Result<usize, Refusal> {
    plan.index_of(step)
        .ok_or_else(|| Refusal::UnknownStep { step: step.clone() })
}

/// Trimmed, non-empty names, deduplicated case-insensitively (first spelling kept).
fn distinct_operators(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let name = name.trim();
        if !name.is_empty() && !out.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            out.push(name.to_string());
        }
    }
    out
}

/// A transition under construction: journal entries are folded into `state` as they are
/// emitted, so state always equals "old state + emitted entries", exactly like replay.
struct Transition<'p> {
    plan: &'p Plan,
    at: DateTime<Utc>,
    state: EngineState,
    effects: Vec<Effect>,
}

impl Transition<'_> {
    fn journal(
        &mut self,
        index: Option<usize>,
        kind: EntryKind,
        detail: impl Into<String>,
        actors: Vec<String>,
    ) -> Result<(), Refusal> {
        let entry = JournalEntry {
            at: self.at,
            step: index.map(|i| self.plan.steps[i].id.clone()),
            kind,
            detail: detail.into(),
            actors,
            item: None,
        };
        self.state
            .fold(self.plan, 0, &entry)
            .map_err(|_| Refusal::PlanMismatch {
                plan_steps: self.plan.steps.len(),
                state_steps: self.state.steps.len(),
            })?;
        self.effects.push(Effect::Journal(entry));
        Ok(())
    }

    fn journal_item(
        &mut self,
        index: usize,
        kind: EntryKind,
        item: ItemId,
        detail: String,
    ) -> Result<(), Refusal> {
        self.journal_item_by(index, kind, item, detail, Vec::new())
    }

    fn journal_item_by(
        &mut self,
        index: usize,
        kind: EntryKind,
        item: ItemId,
        detail: String,
        actors: Vec<String>,
    ) -> Result<(), Refusal> {
        let entry = JournalEntry {
            at: self.at,
            step: Some(self.plan.steps[index].id.clone()),
            kind,
            detail,
            actors,
            item: Some(item),
        };
        self.state
            .fold(self.plan, 0, &entry)
            .map_err(|_| Refusal::PlanMismatch {
                plan_steps: self.plan.steps.len(),
                state_steps: self.state.steps.len(),
            })?;
        self.effects.push(Effect::Journal(entry));
        Ok(())
    }

    /// The item `item` of the step at `i`, which must have declared it.
    fn known_item(&self, i: usize, item: &ItemId) -> Result<&super::items::ItemState, Refusal> {
        self.state
            .items(i)
            .iter()
            .find(|known| &known.id == item)
            .ok_or_else(|| Refusal::UnknownItem {
                step: self.plan.steps[i].id.clone(),
                item: item.clone(),
            })
    }

    /// Index of the running step whose item `item` is running.
    fn running_item(&self, step: &StepId, item: &ItemId) -> Result<usize, Refusal> {
        let i = self.running(step)?;
        let known = self
            .state
            .items(i)
            .iter()
            .find(|known| &known.id == item)
            .ok_or_else(|| Refusal::UnknownItem {
                step: step.clone(),
                item: item.clone(),
            })?;
        match known.status {
            ItemStatus::Running { .. } => Ok(i),
            ref other => Err(Refusal::ItemNotRunning {
                step: step.clone(),
                item: item.clone(),
                status: other.label(),
            }),
        }
    }

    fn step_id(&self, i: usize) -> StepId {
        self.plan.steps[i].id.clone()
    }

    /// Forward progress (start, skip) is allowed only at the cursor, with nothing running,
    /// no rollback pending and no unfinished undo.
    fn check_can_advance(&self, i: usize) -> Result<(), Refusal> {
        let step = self.step_id(i);
        if let Some(progress) = &self.state.rollback {
            return Err(Refusal::RollbackInProgress {
                target: self.step_id(progress.target),
            });
        }
        if let Some(running) = self.state.running_step() {
            return Err(if running == i {
                Refusal::AlreadyRunning { step }
            } else {
                Refusal::AnotherStepRunning {
                    running: self.step_id(running),
                }
            });
        }
        if let Some(undo) = self.state.unfinished_undo() {
            return Err(Refusal::RollbackIncomplete {
                step: self.step_id(undo),
            });
        }
        if matches!(self.state.steps[i], StepStatus::Done { .. }) {
            return Err(Refusal::AlreadyDone { step });
        }
        if i != self.state.cursor {
            return Err(match self.plan.steps.get(self.state.cursor) {
                Some(expected) => Refusal::OutOfOrder {
                    step,
                    expected: expected.id.clone(),
                },
                None => Refusal::RunAlreadyComplete { step },
            });
        }
        Ok(())
    }

    fn check_point_of_no_return(&self, target: usize) -> Result<(), Refusal> {
        match self.state.point_of_no_return_passed_at {
            Some(p) if target <= p => {
                let reason = match &self.plan.steps[p].undo {
                    Undo::PointOfNoReturn { reason } => reason.clone(),
                    _ => String::from("it is marked as a point of no return"),
                };
                Err(Refusal::RollbackPastPointOfNoReturn {
                    target: self.step_id(target),
                    step: self.step_id(p),
                    reason,
                })
            }
            _ => Ok(()),
        }
    }

    fn running(&self, step: &StepId) -> Result<usize, Refusal> {
        let i = index_of(self.plan, step)?;
        match self.state.steps[i] {
            StepStatus::Running { .. } => Ok(i),
            ref other => Err(Refusal::NotRunning {
                step: step.clone(),
                status: other.label(),
            }),
        }
    }

    fn rolling_back(&self, step: &StepId) -> Result<usize, Refusal> {
        let i = index_of(self.plan, step)?;
        match self.state.steps[i] {
            StepStatus::RollingBack { .. } => Ok(i),
            ref other => Err(Refusal::NotRollingBack {
                step: step.clone(),
                status: other.label(),
            }),
        }
    }

    /// Walks the pending rollback down from the highest step needing undo: steps with nothing
    /// to undo are marked at once; the first reversible one gets a `RunUndo`; when none is
    /// left the rollback finishes and the cursor returns to its target.
    fn advance_rollback(&mut self) -> Result<(), Refusal> {
        loop {
            let Some(target) = self.state.rollback.as_ref().map(|r| r.target) else {
                return Ok(());
            };
            let next = (target..self.state.steps.len())
                .rev()
                .find(|&j| self.state.steps[j].needs_undo());
            let Some(j) = next else {
                let to = self.step_id(target);
                self.journal(
                    Some(target),
                    EntryKind::RollbackFinished,
                    format!("rolled back to before `{to}`"),
                    Vec::new(),
                )?;
                self.effects.push(Effect::RollbackCompleted { to });
                return Ok(());
            };
            let resume_recheck = !matches!(self.state.steps[j], StepStatus::Done { .. });
            match &self.plan.steps[j].undo {
                Undo::NothingToUndo => {
                    self.journal(
                        Some(j),
                        EntryKind::RolledBack,
                        "nothing to undo",
                        Vec::new(),
                    )?;
                }
                Undo::Reversible { description, .. } => {
                    let detail = description.clone();
                    self.journal(Some(j), EntryKind::UndoStarted, detail, Vec::new())?;
                    self.effects.push(Effect::RunUndo {
                        step: self.step_id(j),
                        resume_recheck,
                    });
                    return Ok(());
                }
                Undo::PointOfNoReturn { reason } => {
                    // Unreachable while `point_of_no_return_passed_at` is maintained by fold:
                    // a point-of-no-return step that needs undo has started, so the target
                    // check above already refused. Refuse rather than skip it silently.
                    return Err(Refusal::RollbackPastPointOfNoReturn {
                        target: self.step_id(target),
                        step: self.step_id(j),
                        reason: reason.clone(),
                    });
                }
            }
        }
    }

    fn complete_if_done(&mut self) -> Result<(), Refusal> {
        if self.state.is_complete() {
            self.journal(
                None,
                EntryKind::RunFinished,
                "every step is done or skipped",
                Vec::new(),
            )?;
            self.effects.push(Effect::RunCompleted);
        }
        Ok(())
    }
}
