//! Executor: runs a step's items (the engine's `items.rs`) through a runbook's
//! [`Actions::items`] and [`Actions::run_item`], several at once, journaling every item's start
//! and outcome durably before the next item starts; the step's own `action` runs once every
//! item is done.
//!
//! Invariants:
//! - which items start, how many at once, and whether a failure stops new starts is decided
//!   by the engine (`Command::StartItems`), never here;
//! - after a failure under `OnItemFailure::Stop`, running items finish and are journaled; the
//!   step then fails, and its next start retries the failed items (re-checking) and skips the
//!   done ones;
//! - the pause bound and stop requests cut the items off exactly as they cut off an action:
//!   cut-off items stay started in the journal and are re-checked by the next attempt;
//! - the operator's retries and confirmations reach the journal (`item_retry_asked`,
//!   `item_confirmed`, with the driver's identity) before the item they concern starts.

use super::{sleep_until, Actions, RunError, Runner, Sink};
use crate::engine::{Command, Effect, ItemId, ItemStatus, OnItemFailure};
use crate::plan::StepId;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// The operator's requests about the items of a running step, from the cockpit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemRequests {
    /// Start no new item; the running ones finish.
    pub hold: bool,
    /// Items the operator confirmed, for a step whose items each wait for a confirmation.
    pub confirmed: BTreeSet<ItemId>,
    /// Failed items the operator asked to retry, not yet taken up by the runner: it journals
    /// each (`Command::RetryItem`) and removes it from here; a retried item of a running step
    /// starts again as a slot frees, one of a failed step on the step's next start.
    pub retry: BTreeSet<ItemId>,
}

/// A handle on the runner's [`ItemRequests`]: the latest value wins, the runner reacts to
/// each change between item starts.
#[derive(Clone)]
pub struct ItemControl(pub(super) Arc<watch::Sender<ItemRequests>>);

impl ItemControl {
    /// Hold (or release) new starts; running items finish either way.
    pub fn hold(&self, hold: bool) {
        self.0.send_modify(|r| r.hold = hold);
    }
    pub fn confirm(&self, item: ItemId) {
        self.0.send_modify(|r| {
            r.confirmed.insert(item);
        });
    }
    pub fn retry(&self, item: ItemId) {
        self.0.send_modify(|r| {
            r.retry.insert(item);
        });
    }
    pub fn requests(&self) -> ItemRequests {
        self.0.borrow().clone()
    }
}

/// A step's items and how to run them, as [`Actions::items`] returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepItems {
    /// In the order they should start; items already known to the run keep their state.
    pub items: Vec<ItemId>,
    /// Items running at once; 0 counts as 1.
    pub concurrency: usize,
    pub on_failure: OnItemFailure,
}

/// Which attempt at an item [`Actions::run_item`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemAttempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// An earlier attempt may have half-run: check the live state before acting.
    pub recheck: bool,
}

/// One attempt at an item: owns what it needs, so that several run at once.
pub type ItemFuture = BoxFuture<'static, Result<String, String>>;

/// What ended the wait for the items.
enum Interruption {
    PauseBound,
    Stop,
}

/// Most failed items named in the step's failure reason.
const FAILURES_NAMED: usize = 5;

/// An operator's retry the runner took up: journaled, or refused with the engine's reason.
pub type RetryOutcome = (ItemId, Result<StepId, String>);

impl<A: Actions> Runner<A> {
    /// Journal the retries asked through the [`ItemControl`] (`Command::RetryItem`, by this
    /// driver) and take them out of its requests. A retry applies to the running step, or to
    /// the step at the cursor after it failed; one the engine refuses (the item has not failed)
    /// is dropped and returned with the reason.
    pub fn take_retry_requests(&mut self) -> Result<Vec<RetryOutcome>, RunError> {
        let asked = self.item_requests.borrow().retry.clone();
        if asked.is_empty() {
            return Ok(Vec::new());
        }
        // Removed without waking the watchers: the runner itself is the one watching.
        self.item_requests.send_if_modified(|r| {
            r.retry.retain(|item| !asked.contains(item));
            false
        });
        let step = self.state.running_step().or_else(|| {
            matches!(
                self.state.steps.get(self.state.cursor),
                Some(crate::engine::StepStatus::Failed { .. })
            )
            .then_some(self.state.cursor)
        });
        let Some(step) = step
            .and_then(|i| self.plan.steps.get(i))
            .map(|s| s.id.clone())
        else {
            let reason = "no step is running or failed: nothing to retry".to_string();
            return Ok(asked
                .into_iter()
                .map(|i| (i, Err(reason.clone())))
                .collect());
        };
        let mut outcomes = Vec::new();
        for item in asked {
            let command = Command::RetryItem {
                step: step.clone(),
                item: item.clone(),
                by: vec![self.identity.label()],
            };
            match self.commit(command) {
                Ok(_) => {
                    self.actions.allow_retry(&BTreeSet::from([item.clone()]));
                    outcomes.push((item, Ok(step.clone())));
                }
                Err(RunError::Refused { refusal, .. }) => {
                    outcomes.push((item, Err(refusal.to_string())))
                }
                Err(other) => return Err(other),
            }
        }
        Ok(outcomes)
    }

    /// Journal the confirmations of `step`'s items not journaled yet (`journaled` holds those
    /// that are), each by this driver, for items that still wait to start.
    fn journal_confirmations(
        &mut self,
        step: &StepId,
        index: usize,
        confirmed: &BTreeSet<ItemId>,
        journaled: &mut BTreeSet<ItemId>,
    ) -> Result<(), RunError> {
        for item in confirmed.difference(&journaled.clone()) {
            let waiting = self
                .state
                .items(index)
                .iter()
                .any(|known| &known.id == item && known.is_startable());
            journaled.insert(item.clone());
            if !waiting {
                continue;
            }
            self.commit(Command::ConfirmItem {
                step: step.clone(),
                item: item.clone(),
                by: vec![self.identity.label()],
            })?;
        }
        Ok(())
    }

    /// Perform `RunAction`: the step's items first when it has any, then its action.
    pub(super) async fn run_step(
        &mut self,
        step: &StepId,
        recheck: bool,
    ) -> Result<(VecDeque<Effect>, Option<RunError>), RunError> {
        let spec = self.step_spec(step)?;
        let deadline = self.pause_deadline();
        let mut stop = self.stop_requested.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let found = {
            let mut items = Box::pin(self.actions.items(&spec, recheck, Sink(tx.clone())));
            tokio::select! {
                found = &mut items => Ok(found),
                _ = sleep_until(deadline) => Err(Interruption::PauseBound),
                _ = stop.wait_for(Option::is_some) => Err(Interruption::Stop),
            }
        };
        while let Ok(report) = rx.try_recv() {
            self.journal_report(Some(step), report)?;
        }
        let plan = match found {
            Ok(Ok(None)) => return Box::pin(self.run_action(step, recheck)).await,
            Ok(Ok(Some(plan))) => plan,
            Ok(Err(reason)) => {
                let reason = format!("finding the step's items failed: {reason}");
                return self.step_failed(step, reason);
            }
            Err(interruption) => return self.interrupted(step, interruption).await,
        };
        self.commit(Command::DeclareItems {
            step: step.clone(),
            items: plan.items,
        })?;

        let limit = plan.concurrency.max(1);
        let confirm_each = self.actions.confirm_each_item(&spec);
        if confirm_each && !self.item_control_given {
            return self.step_failed(
                step,
                "each item waits for the operator's confirmation, and this run has no one to ask (it is headless): run it in the cockpit, or without --confirm".into(),
            );
        }
        let index = self.plan.index_of(step);
        // Retries asked earlier (this process, or before a crash) still count for the runbook.
        let asked_before: BTreeSet<ItemId> = index.map_or_else(BTreeSet::new, |i| {
            self.state
                .items(i)
                .iter()
                .filter(|item| item.retry_asked)
                .map(|item| item.id.clone())
                .collect()
        });
        self.actions.allow_retry(&asked_before);
        let mut requests = self.item_requests.subscribe();
        let mut running = FuturesUnordered::new();
        let mut confirmations_journaled = BTreeSet::new();
        let interruption = loop {
            let asked = requests.borrow_and_update().clone();
            self.take_retry_requests()?;
            if let (true, Some(i)) = (confirm_each, index) {
                self.journal_confirmations(
                    step,
                    i,
                    &asked.confirmed,
                    &mut confirmations_journaled,
                )?;
            }
            // What the operator allows to run at once now: no new start while held; with
            // confirmations, only the confirmed head of the queue.
            let next = index.map_or_else(Vec::new, |i| {
                self.state.next_items(i, usize::MAX, plan.on_failure)
            });
            let allowed = if asked.hold {
                running.len()
            } else if confirm_each {
                running.len()
                    + next
                        .iter()
                        .take_while(|id| asked.confirmed.contains(*id))
                        .count()
            } else {
                limit
            };
            let started = if allowed.min(limit) > running.len() {
                self.commit(Command::StartItems {
                    step: step.clone(),
                    limit: allowed.min(limit),
                    on_failure: plan.on_failure,
                })?
            } else {
                VecDeque::new()
            };
            for effect in started {
                if let Effect::RunItem {
                    item,
                    attempt,
                    recheck,
                    ..
                } = effect
                {
                    let attempt = ItemAttempt {
                        number: attempt,
                        recheck,
                    };
                    let run = self
                        .actions
                        .run_item(&spec, &item, attempt, Sink(tx.clone()));
                    running.push(async move { (item, run.await) });
                }
            }
            // Nothing runs: done, unless items wait for the operator (held or unconfirmed).
            let waiting = !next.is_empty() && (asked.hold || confirm_each);
            if running.is_empty() && !waiting {
                break None;
            }
            tokio::select! {
                Some((item, result)) = running.next() => {
                    while let Ok(report) = rx.try_recv() {
                        self.journal_report(Some(step), report)?;
                    }
                    self.commit(match result {
                        Ok(detail) => Command::ItemSucceeded { step: step.clone(), item, detail },
                        Err(reason) => Command::ItemFailed { step: step.clone(), item, reason },
                    })?;
                }
                Ok(()) = requests.changed() => {}
                Some(report) = rx.recv() => self.journal_report(Some(step), report)?,
                _ = sleep_until(deadline) => break Some(Interruption::PauseBound),
                _ = stop.wait_for(Option::is_some) => break Some(Interruption::Stop),
            }
        };
        // Items cut off stay started in the journal; the next attempt re-checks them.
        drop(running);
        while let Ok(report) = rx.try_recv() {
            self.journal_report(Some(step), report)?;
        }
        if let Some(interruption) = interruption {
            return self.interrupted(step, interruption).await;
        }
        match self.item_failures(step) {
            Some(reason) => self.step_failed(step, reason),
            None => Box::pin(self.run_action(step, recheck)).await,
        }
    }

    /// The reason the step fails when some of its items failed, naming the first few.
    fn item_failures(&self, step: &StepId) -> Option<String> {
        let i = self.plan.index_of(step)?;
        let items = self.state.items(i);
        let failed: Vec<String> = items
            .iter()
            .filter_map(|item| match &item.status {
                ItemStatus::Failed { reason, .. } => Some(format!("{}: {reason}", item.id)),
                _ => None,
            })
            .collect();
        if failed.is_empty() {
            return None;
        }
        let not_started = items.iter().filter(|item| item.is_startable()).count();
        let mut reason = format!("{} of {} items failed", failed.len(), items.len());
        if not_started > 0 {
            reason.push_str(&format!(" ({not_started} not started)"));
        }
        reason.push_str(": ");
        reason.push_str(&failed[..failed.len().min(FAILURES_NAMED)].join("; "));
        if failed.len() > FAILURES_NAMED {
            reason.push_str("; …");
        }
        Some(reason)
    }

    fn step_failed(
        &mut self,
        step: &StepId,
        reason: String,
    ) -> Result<(VecDeque<Effect>, Option<RunError>), RunError> {
        let effects = self.commit(Command::ActionFailed {
            step: step.clone(),
            reason: reason.clone(),
        })?;
        Ok((
            effects,
            Some(RunError::StepFailed {
                step: step.clone(),
                reason: reason.into(),
            }),
        ))
    }

    /// The pause bound ran out or a stop was asked for while items ran: handled as for an
    /// action.
    async fn interrupted(
        &mut self,
        step: &StepId,
        interruption: Interruption,
    ) -> Result<(VecDeque<Effect>, Option<RunError>), RunError> {
        match interruption {
            Interruption::PauseBound => Ok((self.pause_bound_exceeded(Some(step)).await?, None)),
            Interruption::Stop => {
                self.stopped_during(
                    step,
                    "items that were running stopped half-run; a resumed run re-checks them",
                )
                .await
            }
        }
    }
}
