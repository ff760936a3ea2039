//! Cockpit bridge: runs the engine's [`Runner`] on its own task and speaks to the UI only
//! through channels — `UiRequest`s in, `RunbookView`s out — so the UI never blocks on I/O.
//!
//! Confirmations: the view of the next step carries the observations the engine will bind
//! its confirmation to (as its `binding`), so the UI's seen-fingerprint covers them; the
//! bridge confirms with the engine fingerprint it last published, and the engine refuses it
//! as stale if a fresh reading differs.
//!
//! A paused window (a step pausing traffic through the step resuming it) is confirmed once and
//! runs at machine speed, each later step confirmed against readings taken right before it as a
//! headless run does. While any call runs, the view follows the engine state after every
//! journaled transition, and the window accepts one request: abort.

use crate::engine::{Confirmation, EngineSettings, EngineState, StepStatus};
use crate::executor::{AbortHandle, Actions, ItemControl, RunError, Runner};
use crate::journal::Journal;
use crate::plan::{Plan, StepId, Undo};
use crate::ui::model::{
    BaselineRow, CommandView, PreconditionView, RunbookUpdate, RunbookView, StepStatusView,
    StepView, UiRequest,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the next step's preconditions and observations are evaluated while idle.
const REFRESH: Duration = Duration::from_secs(5);

/// What a cockpit confirmation is bound to: the UI's default facts, with each precondition's
/// verdict but not its free-text detail (free disk moves by the second), plus the engine's
/// observation fingerprint for the step (`binding`).
pub fn seen(step: &StepView, snapshot: &crate::readings::types::Snapshot) -> String {
    let mut bound = step.clone();
    for p in bound.preconditions.iter_mut() {
        p.detail.clear();
    }
    crate::ui::model::default_seen(&bound, snapshot)
}

/// What was evaluated for the next step: the engine's `seen` and the views shown.
#[derive(Default, Clone)]
struct Evaluated {
    seen: BTreeMap<usize, String>,
    preconditions: BTreeMap<usize, Vec<PreconditionView>>,
}

/// What a long call (a step, a rollback, a window) is shown with while it runs.
struct Showing<'a> {
    plan: Plan,
    evaluated: Evaluated,
    pause_bound: Duration,
    baseline: Vec<BaselineRow>,
    expected_stopped: Vec<(String, String)>,
    window: Option<(usize, usize)>,
    updates: &'a mpsc::Sender<RunbookUpdate>,
}

/// Apply a request about a step's items (hold, confirm the next, retry) to `control`: `None`
/// for any other request; else what to tell the operator (`Err`: refused).
fn item_request(
    control: &ItemControl,
    plan: &Plan,
    state: &EngineState,
    request: &UiRequest,
) -> Option<Result<String, String>> {
    Some(match request {
        UiRequest::HoldItems(true) => {
            control.hold(true);
            Ok("new items held: the running ones finish".into())
        }
        UiRequest::HoldItems(false) => {
            control.hold(false);
            Ok("new items start again".into())
        }
        UiRequest::RetryItem(item) => {
            // While a step runs: the runner journals the retry and starts the item again as a
            // slot frees. Idle, `serve` journals it against the failed step itself.
            let id = crate::engine::ItemId::new(item.clone());
            let status = state.running_step().and_then(|i| {
                state
                    .items(i)
                    .iter()
                    .find(|known| known.id == id)
                    .map(|known| known.status.clone())
            });
            match status {
                Some(crate::engine::ItemStatus::Failed { .. }) => {
                    control.retry(id);
                    Ok(format!("{item} retried: it starts again as a slot frees"))
                }
                Some(other) => Err(format!(
                    "{item} has not failed (it is {}): only a failed item can be retried",
                    other.label()
                )),
                None => Err(format!("{item} is not an item of the running step")),
            }
        }
        UiRequest::ConfirmNextItem => {
            let confirmed = control.requests().confirmed;
            let next = state.running_step().and_then(|i| {
                state
                    .next_items(i, usize::MAX, crate::engine::OnItemFailure::Continue)
                    .into_iter()
                    .find(|item| !confirmed.contains(item))
                    .map(|item| (i, item))
            });
            match next {
                Some((i, item)) => {
                    control.confirm(item.clone());
                    let step = plan.steps.get(i).map_or("?", |s| s.id.as_str());
                    Ok(format!("{item} confirmed ({step})"))
                }
                None => Err("no item of a running step waits for a confirmation".into()),
            }
        }
        _ => return None,
    })
}

/// Await `call` while publishing a view after every engine transition and answering requests:
/// abort (and quit, which aborts a window first) reach the runner through `abort`; anything else
/// is refused until the call ends. Returns the call's result and whether the operator quit.
async fn while_running<T>(
    call: impl std::future::Future<Output = T>,
    requests: &mut mpsc::Receiver<UiRequest>,
    state: &mut tokio::sync::watch::Receiver<EngineState>,
    abort: &AbortHandle,
    control: &ItemControl,
    showing: &Showing<'_>,
) -> (T, bool) {
    let mut call = std::pin::pin!(call);
    let mut quit = false;
    let mut requests_open = true;
    loop {
        tokio::select! {
            result = &mut call => return (result, quit),
            Ok(()) = state.changed() => {
                let current = state.borrow_and_update().clone();
                let view = showing.view(&current);
                let _ = showing.updates.send(RunbookUpdate::View(view)).await;
            }
            request = requests.recv(), if requests_open => match request {
                Some(UiRequest::AbortWindow)
                    if showing.window.is_some() || state.borrow().traffic_paused() =>
                {
                    abort.abort()
                }
                Some(UiRequest::Quit) | None => {
                    requests_open = false;
                    quit = true;
                    abort.abort();
                }
                Some(request) => {
                    let answer = {
                        let current = state.borrow();
                        item_request(control, &showing.plan, &current, &request)
                    };
                    let update = match answer {
                        Some(Ok(message)) => RunbookUpdate::Info(message),
                        Some(Err(message)) => RunbookUpdate::Refused(message),
                        None => RunbookUpdate::Refused(
                            "a step is running: wait for it (x aborts a paused window)".into(),
                        ),
                    };
                    let _ = showing.updates.send(update).await;
                }
            },
        }
    }
}

impl Showing<'_> {
    fn view(&self, state: &EngineState) -> RunbookView {
        let running = state.running_step().or(state.rolling_back_step());
        let mut view = state_view(
            &self.plan,
            state,
            &self.evaluated,
            self.pause_bound,
            None,
            self.baseline.clone(),
        );
        view.running = running;
        view.window_running = self.window;
        view.expected_stopped = self.expected_stopped.clone();
        view
    }
}

fn showing<'a, A: Actions>(
    runner: &Runner<A>,
    evaluated: &Evaluated,
    pause_bound: Duration,
    window: Option<(usize, usize)>,
    updates: &'a mpsc::Sender<RunbookUpdate>,
) -> Showing<'a> {
    let current = view(runner, evaluated, pause_bound, None);
    Showing {
        plan: runner.plan.clone(),
        evaluated: evaluated.clone(),
        pause_bound,
        baseline: current.baseline,
        expected_stopped: current.expected_stopped,
        window,
        updates,
    }
}

/// Serve the cockpit until it quits or its channels close.
pub async fn serve<A: Actions>(
    mut runner: Runner<A>,
    mut requests: mpsc::Receiver<UiRequest>,
    updates: mpsc::Sender<RunbookUpdate>,
    pause_bound: Duration,
) {
    let mut evaluated = Evaluated::default();
    let control = runner.item_control();
    let mut stop = runner.stop_requests();
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let deadline = runner.pause_deadline_at();
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else { return };
                if matches!(request, UiRequest::Quit) {
                    end_pause_before_exit(&mut runner, "the operator quit the cockpit").await;
                    return;
                }
                if let UiRequest::RetryItem(item) = &request {
                    control.retry(crate::engine::ItemId::new(item.clone()));
                    for update in retry_outcomes(&mut runner) {
                        let _ = updates.send(update).await;
                    }
                    let current = view(&runner, &evaluated, pause_bound, None);
                    let _ = updates.send(RunbookUpdate::View(current)).await;
                    continue;
                }
                if let Some(answer) = item_request(&control, &runner.plan, &runner.state, &request) {
                    let _ = updates
                        .send(match answer {
                            Ok(message) => RunbookUpdate::Info(message),
                            Err(message) => RunbookUpdate::Refused(message),
                        })
                        .await;
                    continue;
                }
                let window = match &request {
                    UiRequest::RunWindow { step, .. } => {
                        crate::engine::paused_window(&runner.plan, *step)
                    }
                    _ => None,
                };
                let mut running = view(&runner, &evaluated, pause_bound, request_step(&request));
                running.window_running = window;
                let _ = updates.send(RunbookUpdate::View(running)).await;
                let show = showing(&runner, &evaluated, pause_bound, window, &updates);
                let abort = runner.abort_handle();
                let mut state = runner.watch_state();
                let call = handle(&mut runner, &evaluated, request);
                let (result, quit) =
                    while_running(call, &mut requests, &mut state, &abort, &control, &show).await;
                if let Err(message) = result {
                    let _ = updates.send(RunbookUpdate::Refused(message)).await;
                }
                // Retries asked too late for the call to take up apply to what it left.
                for update in retry_outcomes(&mut runner) {
                    let _ = updates.send(update).await;
                }
                // Whatever the call did, it no longer waits for a second person.
                let _ = updates.send(RunbookUpdate::PairWait(None)).await;
                if quit {
                    end_pause_before_exit(&mut runner, "the operator quit the cockpit").await;
                    return;
                }
                if let Some(message) = evaluate_next(&mut runner, &mut evaluated).await {
                    let _ = updates.send(RunbookUpdate::Refused(message)).await;
                }
            }
            _ = refresh.tick() => {
                if let Some(message) = evaluate_next(&mut runner, &mut evaluated).await {
                    let _ = updates.send(RunbookUpdate::Refused(message)).await;
                }
            }
            reason = stop_reason(&mut stop) => {
                end_pause_before_exit(&mut runner, &reason).await;
                return;
            }
            _ = sleep_until(deadline) => {
                let show = showing(&runner, &evaluated, pause_bound, None, &updates);
                let abort = runner.abort_handle();
                let mut state = runner.watch_state();
                let call = runner.enforce_pause_bound();
                let (result, quit) =
                    while_running(call, &mut requests, &mut state, &abort, &control, &show).await;
                if let Err(e) = result {
                    let _ = updates.send(RunbookUpdate::Refused(e.to_string())).await;
                }
                if quit {
                    end_pause_before_exit(&mut runner, "the operator quit the cockpit").await;
                    return;
                }
            }
        }
        let current = view(&runner, &evaluated, pause_bound, None);
        if updates.send(RunbookUpdate::View(current)).await.is_err() {
            return;
        }
    }
}

/// Journal the retries asked through the item control while no call runs (or too late for
/// the call to take them up); what to tell the operator about each.
fn retry_outcomes<A: Actions>(runner: &mut Runner<A>) -> Vec<RunbookUpdate> {
    match runner.take_retry_requests() {
        Ok(outcomes) => outcomes
            .into_iter()
            .map(|(item, outcome)| match outcome {
                Ok(step) if runner.state.running_step().is_some() => {
                    RunbookUpdate::Info(format!("{item} retried ({step})"))
                }
                Ok(step) => RunbookUpdate::Info(format!(
                    "{item} will be retried when `{step}` runs again (only the items asked for)"
                )),
                Err(reason) => RunbookUpdate::Refused(format!("{item}: {reason}")),
            })
            .collect(),
        Err(e) => vec![RunbookUpdate::Refused(format!(
            "journaling the retry failed: {e}"
        ))],
    }
}

/// Waits for a stop request and returns its reason (the watch guard is not held after).
async fn stop_reason(stop: &mut tokio::sync::watch::Receiver<Option<String>>) -> String {
    let reason = stop
        .wait_for(Option::is_some)
        .await
        .map(|reason| reason.clone().unwrap_or_default());
    match reason {
        Ok(reason) => reason,
        // The runner owns the sender and outlives this loop; a closed channel never stops it.
        Err(_) => std::future::pending().await,
    }
}

/// The UI may already be gone: what happens is said on stderr and in the journal.
async fn end_pause_before_exit<A: Actions>(runner: &mut Runner<A>, reason: &str) {
    if !runner.state.traffic_paused() {
        return;
    }
    eprintln!("cutover: {reason} while traffic is paused: ending the pause before exit");
    match runner.end_pause_before_exit(reason).await {
        Ok(()) => eprintln!("cutover: the pause ended; `cutover run` resumes from before it"),
        Err(e) => eprintln!("cutover: ENDING THE PAUSE FAILED: {e}"),
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn request_step(request: &UiRequest) -> Option<usize> {
    match request {
        UiRequest::RunStep { step, .. } | UiRequest::RunWindow { step, .. } => Some(*step),
        _ => None,
    }
}

fn step_id(plan: &Plan, index: usize) -> Result<StepId, String> {
    plan.steps
        .get(index)
        .map(|s| s.id.clone())
        .ok_or_else(|| format!("no step {index}"))
}

async fn handle<A: Actions>(
    runner: &mut Runner<A>,
    evaluated: &Evaluated,
    request: UiRequest,
) -> Result<(), String> {
    match request {
        UiRequest::RunStep { step, confirmation } => {
            let id = step_id(&runner.plan, step)?;
            let seen = evaluated.seen.get(&step).cloned().ok_or_else(|| {
                "the step's readings were not evaluated yet; confirm again in a moment".to_string()
            })?;
            let approval = runner.pair_approval(&id).await.map_err(|e| e.to_string())?;
            // After a wait for a second person, the approval holds the readings taken last.
            let seen = approval.as_ref().map_or(seen, |a| a.seen.clone());
            let confirmation = Confirmation {
                by: confirmation.by,
                seen,
                approval,
            };
            runner
                .start(&id, Some(confirmation))
                .await
                .map_err(|e| e.to_string())
        }
        UiRequest::RunWindow { step, confirmation } => {
            run_window(runner, evaluated, step, confirmation.by).await
        }
        UiRequest::AbortWindow => Err("no paused window is running".into()),
        UiRequest::Rollback { to, by } => {
            let id = step_id(&runner.plan, to)?;
            runner
                .rollback_to(&id, &by.join(" + "), "operator rollback from the cockpit")
                .await
                .map_err(|e| e.to_string())
        }
        UiRequest::Skip { step, reason, by } => {
            let id = step_id(&runner.plan, step)?;
            runner
                .skip(&id, &by.join(" + "), &reason)
                .await
                .map_err(|e| e.to_string())
        }
        UiRequest::Approve { .. } | UiRequest::Object { .. } | UiRequest::Withdraw { .. } => {
            Err("the driver's cockpit does not approve: the second operator approves from their own session (tui --second)".into())
        }
        UiRequest::Quit => Ok(()),
        UiRequest::HoldItems(_) | UiRequest::ConfirmNextItem | UiRequest::RetryItem(_) => {
            Err("answered by the item control, not by a call".into())
        }
    }
}

/// The paused window opened by `from`, confirmed once by `by`: the first step bound to what the
/// operator saw, each later one to readings taken right before it, every gate enforced; a
/// failure (or an abort) rolls back to before the pause and resumes, as a headless run does.
async fn run_window<A: Actions>(
    runner: &mut Runner<A>,
    evaluated: &Evaluated,
    from: usize,
    by: Vec<String>,
) -> Result<(), String> {
    let (first, last) = crate::engine::paused_window(&runner.plan, from)
        .ok_or_else(|| format!("step {} does not open a paused window", from + 1))?;
    let id = step_id(&runner.plan, first)?;
    let seen = evaluated.seen.get(&first).cloned().ok_or_else(|| {
        "the step's readings were not evaluated yet; confirm again in a moment".to_string()
    })?;
    let last_id = step_id(&runner.plan, last)?;
    runner
        .note(
            Some(&id),
            &format!(
                "paused window `{id}` through `{last_id}` confirmed once by {}; it runs at machine speed",
                by.join(" + ")
            ),
            by.clone(),
        )
        .map_err(|e| e.to_string())?;
    let approval = runner.pair_approval(&id).await.map_err(|e| e.to_string())?;
    let seen = approval.as_ref().map_or(seen, |a| a.seen.clone());
    let confirmation = Confirmation {
        by: by.clone(),
        seen,
        approval,
    };
    runner
        .start_recovering(&id, confirmation)
        .await
        .map_err(|e| e.to_string())?;
    while runner.state.cursor <= last {
        match runner.confirmed_step(by.clone()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Evaluate the next step's preconditions and the observations its confirmation binds to.
/// `Some` says why the evaluation ended the run's pause (the pause bound ran out meanwhile).
async fn evaluate_next<A: Actions>(
    runner: &mut Runner<A>,
    evaluated: &mut Evaluated,
) -> Option<String> {
    let index = runner
        .state
        .next_step(&runner.plan)
        .and_then(|s| runner.plan.index_of(&s.id))?;
    let spec = runner.plan.steps[index].clone();
    // Read through the runner: while traffic is paused the read is under the pause bound.
    let results = match runner.preconditions(&spec.id).await {
        Ok(results) => results,
        Err(e) => return Some(e.to_string()),
    };
    let mut views: Vec<PreconditionView> = spec
        .preconditions
        .iter()
        .map(|p| {
            let result = results.iter().find(|r| r.id == p.id);
            PreconditionView {
                description: p.description.clone(),
                holds: result.map(|r| r.holds),
                detail: result.map(|r| r.detail.clone()).unwrap_or_default(),
            }
        })
        .collect();
    match runner.requirement(&spec.id).await {
        Ok(requirement) => {
            evaluated.seen.insert(index, requirement.seen);
        }
        Err(e @ (RunError::PauseBoundExceeded { .. } | RunError::Stopped { .. })) => {
            return Some(e.to_string())
        }
        Err(e) => views.push(PreconditionView {
            description: "confirmation".into(),
            holds: Some(false),
            detail: e.to_string(),
        }),
    }
    evaluated.preconditions.insert(index, views);
    None
}

/// The engine state as the cockpit shows it.
fn view<A: Actions>(
    runner: &Runner<A>,
    evaluated: &Evaluated,
    pause_bound: Duration,
    starting: Option<usize>,
) -> RunbookView {
    let baseline = runner
        .actions()
        .baseline()
        .into_iter()
        .map(|b| BaselineRow {
            node: b.node,
            database: b.database,
            table: b.table,
            total: b.total,
        })
        .collect();
    let mut view = state_view(
        &runner.plan,
        &runner.state,
        evaluated,
        pause_bound,
        starting,
        baseline,
    );
    view.expected_stopped = runner
        .actions()
        .expected_stopped(&runner.plan, &runner.state);
    view
}

fn state_view(
    plan: &Plan,
    state: &EngineState,
    evaluated: &Evaluated,
    pause_bound: Duration,
    starting: Option<usize>,
    baseline: Vec<BaselineRow>,
) -> RunbookView {
    let steps = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let status = state.steps.get(i).cloned().unwrap_or(StepStatus::Pending);
            let (status_view, started_at, finished_at) = match status {
                StepStatus::Pending => (StepStatusView::Pending, None, None),
                StepStatus::Running { started_at } | StepStatus::RollingBack { started_at } => {
                    (StepStatusView::Running, Some(started_at), None)
                }
                StepStatus::NeedsRecheck { started_at }
                | StepStatus::UndoNeedsRecheck { started_at } => {
                    (StepStatusView::NeedsRecheck, Some(started_at), None)
                }
                StepStatus::Done { finished_at, .. } => {
                    (StepStatusView::Done, None, Some(finished_at))
                }
                StepStatus::Failed { at, reason } => {
                    (StepStatusView::Failed(reason), None, Some(at))
                }
                StepStatus::Skipped { reason, .. } => (StepStatusView::Skipped(reason), None, None),
                StepStatus::RolledBack { at } => (StepStatusView::RolledBack, None, Some(at)),
                StepStatus::RollbackFailed { at, reason } => (
                    StepStatusView::Failed(format!("rollback failed: {reason}")),
                    None,
                    Some(at),
                ),
            };
            let status_view = if starting == Some(i) {
                StepStatusView::Running
            } else {
                status_view
            };
            StepView {
                id: step.id.to_string(),
                title: step.title.clone(),
                status: status_view,
                started_at,
                finished_at,
                commands: step
                    .commands
                    .iter()
                    .map(|c| CommandView {
                        target: c.target.clone(),
                        text: c.text.clone(),
                    })
                    .collect(),
                preconditions: evaluated.preconditions.get(&i).cloned().unwrap_or_else(|| {
                    step.preconditions
                        .iter()
                        .map(|p| PreconditionView {
                            description: p.description.clone(),
                            holds: None,
                            detail: String::new(),
                        })
                        .collect()
                }),
                destructive: step.flags.destructive,
                point_of_no_return: match &step.undo {
                    Undo::PointOfNoReturn { reason } => Some(reason.clone()),
                    _ => None,
                },
                confirm_word: plan.params.get("to").cloned(),
                needs_traffic_stopped: step.flags.needs_traffic_stopped,
                undo: match &step.undo {
                    Undo::Reversible { description, .. } => Some(description.clone()),
                    Undo::PointOfNoReturn { reason } => {
                        Some(format!("POINT OF NO RETURN: {reason}"))
                    }
                    Undo::NothingToUndo => None,
                },
                pauses_traffic: step.flags.pauses_traffic,
                resumes_traffic: step.flags.resumes_traffic,
                verification: step.verification.clone(),
                binding: evaluated
                    .seen
                    .get(&i)
                    .map(|seen| seen[..12.min(seen.len())].to_string())
                    .unwrap_or_default(),
                items: items_view(state.items(i)),
            }
        })
        .collect();
    RunbookView {
        runbook: plan.runbook.clone(),
        fingerprint: plan.fingerprint(),
        steps,
        traffic_paused_since: state.traffic_pause.as_ref().map(|p| p.since),
        pause_bound,
        running: starting.or_else(|| state.running_step()),
        baseline,
        rolling_back: state.rollback.as_ref().map(|r| r.reason.clone()),
        window_running: None,
        expected_stopped: Vec::new(),
        moving_shards: plan.params.get("shards").and_then(|range| {
            let (a, b) = range.split_once('-')?;
            Some([a.trim().parse().ok()?, b.trim().parse().ok()?])
        }),
    }
}

/// The initial view, before the bridge task has evaluated anything.
pub fn initial_view<A: Actions>(runner: &Runner<A>, pause_bound: Duration) -> RunbookView {
    view(runner, &Evaluated::default(), pause_bound, None)
}

/// Read-only cockpit (`--readonly`): follow the journal of this plan's run — someone else's,
/// in another terminal — without opening, creating or driving a run.
pub async fn follow(
    journal: Journal,
    plan: Plan,
    pause_bound: Duration,
    updates: mpsc::Sender<RunbookUpdate>,
) {
    let fingerprint = plan.fingerprint();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let run = journal
            .runs()
            .ok()
            .and_then(|runs| runs.into_iter().find(|r| r.fingerprint == fingerprint));
        let state = run
            .and_then(|r| journal.entries(&r.run_id).ok())
            .and_then(|entries| {
                EngineState::replay(&plan, EngineSettings::default(), entries.iter()).ok()
            })
            .unwrap_or_else(|| EngineState::new(&plan, EngineSettings::default()));
        let mut view = state_view(
            &plan,
            &state,
            &Evaluated::default(),
            pause_bound,
            None,
            vec![],
        );
        // Replay reads a started step without its end as half-run (nothing runs after a
        // restart). Seen from a follower, a live driver is running it now; without one, the
        // driver stopped mid-step and the step waits for a re-check.
        let driven = journal.driver(&plan.environment, &plan.runbook).is_some();
        for (i, step) in view.steps.iter_mut().enumerate().filter(|_| driven) {
            if step.status == StepStatusView::NeedsRecheck {
                step.status = StepStatusView::Running;
                view.running = Some(i);
            }
        }
        if updates.send(RunbookUpdate::View(view)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::StepError;
    use crate::plan::Step;

    #[test]
    fn a_failed_step_shows_the_kind_of_failure() {
        let plan = Plan {
            environment: "lab".into(),
            runbook: "test".into(),
            params: BTreeMap::new(),
            inventory_yaml: String::new(),
            steps: vec![Step::new("promote", "Promote")],
            tool_version: "0".into(),
        };
        let mut state = EngineState::new(&plan, EngineSettings::default());
        // The runner journals a failure as the error's text, which is what the engine keeps.
        let error = StepError::Unreachable {
            node: "pg2".into(),
            reason: "pg2/postgres: cannot connect: connection refused".into(),
        };
        state.steps[0] = StepStatus::Failed {
            at: chrono::Utc::now(),
            reason: error.to_string(),
        };
        let view = state_view(
            &plan,
            &state,
            &Evaluated::default(),
            Duration::from_secs(1),
            None,
            Vec::new(),
        );
        assert_eq!(
            view.steps[0].status,
            StepStatusView::Failed(
                "host unreachable: pg2/postgres: cannot connect: connection refused".into()
            )
        );
    }
}

/// What `cutover tui` was asked for, resolved by the CLI.
pub struct Launch {
    pub inventory_path: std::path::PathBuf,
    pub inventory: crate::inventory::Inventory,
    pub theme: crate::ui::Theme,
    pub operator: String,
    pub pair: bool,
    pub readonly: bool,
    /// `--second`: read-only, and the second operator of a pair review (approve, object).
    pub second: bool,
    /// The runbook to drive, or to follow when `readonly`; `None` shows the readings only.
    pub runbook: Option<crate::session::Invocation>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Ui(#[from] crate::ui::UiError),
}

/// Open the cockpit: the pollers, the UI, and (when a runbook is named) the bridge that drives
/// its run, or the follower that replays the journal of the run in progress. Returns when the
/// operator quits or a stop signal arrives; a write pause is ended before it returns.
pub async fn launch(launch: Launch) -> Result<(), LaunchError> {
    use crate::session;
    let (requests_tx, requests_rx) = mpsc::channel(8);
    let (updates_tx, updates_rx) = mpsc::channel(64);
    let mut initial = None;
    let mut driving = None;
    let mut copy = None;
    if let Some(invocation) = launch.runbook {
        if invocation.runbook == crate::runbooks::table_copy::plan::RUNBOOK {
            let feed = crate::runbooks::table_copy::copy_feed(
                &launch.inventory,
                &invocation.params,
                invocation.state_dir.as_deref(),
            )
            .map_err(|reason| {
                crate::session::SessionError::Runbook(crate::runbooks::RunbookError::Inventory {
                    runbook: crate::runbooks::table_copy::plan::RUNBOOK,
                    reason,
                })
            })?;
            copy = Some(crate::readings::copy::spawn(feed));
        }
        if launch.readonly {
            // Watch, never drive: no run is opened or created. The plan of a run in progress
            // comes from the journal (its re-route may have rewritten the inventory since).
            let journal = Journal::open(&crate::journal::resolve_state_dir(
                invocation.state_dir.as_deref(),
            )?)?;
            let in_progress = journal
                .latest_unfinished_run(&launch.inventory.environment, &invocation.runbook)?
                .and_then(|meta| Plan::from_json(&meta.plan_json).ok());
            let plan = match in_progress {
                Some(plan) => plan,
                None => session::plan(&launch.inventory, &invocation.runbook, &invocation.params)?,
            };
            let bound = crate::runbooks::find(&plan.runbook)
                .map_err(session::SessionError::from)?
                .pause_bound(&plan);
            if launch.second {
                let (reviewed, journal) = session::review_plan(&invocation)?;
                let me = crate::identity::Identity::current(Some(&launch.operator));
                tokio::spawn(second_operator(
                    journal,
                    reviewed,
                    me,
                    requests_rx,
                    updates_tx.clone(),
                ));
            }
            tokio::spawn(follow(journal, plan, bound, updates_tx));
        } else {
            let mut runner = session::open(&invocation)?;
            crate::guard::spawn_on_pause(&mut runner, invocation);
            runner.set_identity(crate::identity::Identity::current(Some(&launch.operator)));
            let waits = updates_tx.clone();
            runner.on_approval(Box::new(move |status| {
                // The UI drains its channel every frame; a full one only delays the banner.
                let _ = waits.try_send(RunbookUpdate::PairWait(pair_wait_view(status)));
            }));
            let bound = Actions::pause_bound(runner.actions());
            initial = Some(initial_view(&runner, bound));
            let stop = runner.stop_handle();
            let stop_requests = runner.stop_requests();
            crate::executor::signals::stop_on_signals(stop.clone());
            let bridge = tokio::spawn(serve(runner, requests_rx, updates_tx, bound));
            driving = Some((stop, bridge, stop_requests));
        }
    }
    let inventory = std::sync::Arc::new(launch.inventory);
    let inventory_updates = crate::readings::inventory_file::follow_file(
        launch.inventory_path,
        inventory.clone(),
        crate::readings::inventory_file::FOLLOW_INTERVAL,
    );
    let cockpit = crate::ui::run(crate::ui::TuiOptions {
        inventory,
        inventory_updates: Some(inventory_updates),
        theme: launch.theme,
        operator: launch.operator,
        pair: launch.pair,
        readonly: launch.readonly,
        second: launch.second,
        requests_tx,
        updates_rx,
        initial,
        intervals: crate::readings::poller::PollIntervals::default(),
        seen,
        copy,
    });
    let ui = match &driving {
        // A signal closes the cockpit too (dropping it restores the terminal).
        Some((_, _, stop_requests)) => {
            let mut stop_requests = stop_requests.clone();
            tokio::select! {
                ui = cockpit => ui,
                _ = stop_requests.wait_for(Option::is_some) => Ok(()),
            }
        }
        None => cockpit.await,
    };
    if let Some((stop, bridge, _)) = driving {
        // The bridge ends a write pause and stops a running step before the process exits.
        stop.stop("the cockpit closed");
        let _ = bridge.await;
    }
    Ok(ui?)
}

/// A step's item table as the cockpit shows it.
fn items_view(items: &[crate::engine::ItemState]) -> crate::ui::model::ItemsView {
    use crate::engine::ItemStatus;
    let mut view = crate::ui::model::ItemsView::default();
    for item in items {
        match &item.status {
            ItemStatus::Pending => view.pending += 1,
            ItemStatus::Running { .. } => view.running.push((item.id.to_string(), item.attempts)),
            ItemStatus::Done { .. } => view.done += 1,
            ItemStatus::Failed { reason, .. } | ItemStatus::NeedsRecheck { reason } => {
                view.failed.push((item.id.to_string(), reason.clone()))
            }
        }
    }
    view
}

/// The driver's cockpit banner for a wait on a second person (`None` once approved).
fn pair_wait_view(
    status: &crate::executor::ApprovalStatus,
) -> Option<crate::ui::model::PairWaitView> {
    use crate::executor::ApprovalStatus;
    let (request, objection, note) = match status {
        ApprovalStatus::Approved { .. } => return None,
        ApprovalStatus::Waiting { request } => (request, None, None),
        ApprovalStatus::Objected { request, by } => (
            request,
            Some((by.by.label.clone(), by.reason.clone())),
            None,
        ),
        ApprovalStatus::Stale { request } => (
            request,
            None,
            Some("the readings changed after the approval: it is stale, asking again".to_string()),
        ),
    };
    Some(crate::ui::model::PairWaitView {
        request: request.id,
        covers: request.covers.clone(),
        driver: request.driver.label.clone(),
        since: request.requested_at,
        seen: request.seen.clone(),
        objection,
        note,
    })
}

/// The second operator's session (`tui --second`): publishes the request the driver waits on
/// (with why this person cannot approve it, if so) and records this person's verdicts, each
/// checked by the same rules as `cutover approve`. Never opens or drives a run.
pub async fn second_operator(
    journal: Journal,
    reviewed: Plan,
    me: crate::identity::Identity,
    mut requests: mpsc::Receiver<UiRequest>,
    updates: mpsc::Sender<RunbookUpdate>,
) {
    use crate::approval::{self, Verdict};
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut published: Option<Option<crate::ui::model::PairRequestView>> = None;
    loop {
        let request = tokio::select! {
            _ = tick.tick() => None,
            request = requests.recv() => match request {
                None | Some(UiRequest::Quit) => return,
                Some(request) => Some(request),
            },
        };
        if let Some(request) = request {
            let (id, verdict, seen, reason) = match request {
                UiRequest::Approve { request, seen } => {
                    (request, Verdict::Approve, Some(seen), String::new())
                }
                UiRequest::Object { request, reason } => (request, Verdict::Object, None, reason),
                UiRequest::Withdraw { request } => {
                    (request, Verdict::Withdraw, None, String::new())
                }
                _ => {
                    let _ = updates
                        .send(RunbookUpdate::Refused(
                            "read-only session: nothing runs".into(),
                        ))
                        .await;
                    continue;
                }
            };
            let message = match record(&journal, &reviewed, &me, id, verdict, seen, reason) {
                Ok(text) => RunbookUpdate::Info(text),
                Err(text) => RunbookUpdate::Refused(text),
            };
            let _ = updates.send(message).await;
        }
        // Only a running driver waits: a request its dead driver left is not shown.
        let driving = journal
            .driver(&reviewed.environment, &reviewed.runbook)
            .is_some();
        let view = journal
            .open_approval_request(&reviewed.environment, &reviewed.runbook, None)
            .ok()
            .flatten()
            .filter(|_| driving)
            .map(|open| request_view(&journal, &reviewed, &me, open));
        if published.as_ref() != Some(&view) {
            if updates
                .send(RunbookUpdate::PairRequest(view.clone()))
                .await
                .is_err()
            {
                return;
            }
            published = Some(view);
        }
    }

    fn record(
        journal: &Journal,
        reviewed: &Plan,
        me: &crate::identity::Identity,
        id: i64,
        verdict: Verdict,
        seen: Option<String>,
        reason: String,
    ) -> Result<String, String> {
        let request = journal.approval_request(id).map_err(|e| e.to_string())?;
        approval::check_verdict(
            &request,
            &reviewed.fingerprint(),
            me,
            verdict,
            seen.as_deref(),
            &reason,
        )
        .map_err(|e| format!("refused: {e}"))?;
        journal
            .record_verdict(&approval::VerdictRecord::on(
                &request,
                verdict,
                reason,
                approval::Person::from(me),
            ))
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "{} recorded on request {} ({}) as {}",
            verdict.as_str(),
            request.id,
            request.covers,
            me.label()
        ))
    }

    fn request_view(
        journal: &Journal,
        reviewed: &Plan,
        me: &crate::identity::Identity,
        open: crate::approval::ApprovalRequest,
    ) -> crate::ui::model::PairRequestView {
        let refusal = if !me.is_other_than(open.driver.uid) {
            Some(format!(
                "you ({}) drive this run: another OS user must approve it",
                me.label()
            ))
        } else if open.fingerprint != reviewed.fingerprint() {
            Some(format!(
                "the driver runs plan {}, not the plan you reviewed ({})",
                open.fingerprint,
                reviewed.fingerprint()
            ))
        } else {
            None
        };
        let mine = journal
            .verdicts_on_request(open.id)
            .ok()
            .and_then(|verdicts| verdicts.into_iter().rev().find(|v| v.by.uid == me.uid))
            .and_then(|v| match v.verdict {
                Verdict::Withdraw => None,
                other => Some(other.as_str().to_string()),
            });
        let mut shown: Vec<String> = open
            .observations
            .iter()
            .map(|o| format!("observed {} = {}", o.name, o.value))
            .collect();
        shown.extend(open.shown.lines().map(str::to_string));
        crate::ui::model::PairRequestView {
            request: open.id,
            step: reviewed.index_of(&open.step).unwrap_or(0),
            covers: open.covers,
            driver: open.driver.label,
            driver_terminal: open.driver.terminal,
            since: open.requested_at,
            seen: open.seen,
            shown,
            refusal,
            mine,
        }
    }
}
