//! Pair review in the runner: before a step that needs two people starts, the driver writes an
//! approval request to the journal and waits, visibly, until another OS user's session approves
//! exactly what it saw (`crate::approval::decide`). Headless runs and the cockpit wait here
//! alike. A paused window is approved as one unit before its pausing step starts, so the pause
//! bound is never spent waiting for a person.

use super::{Actions, RunError, Runner};
use crate::approval::{self, ApprovalRequest, Closed, Decision, Person, VerdictRecord};
use crate::engine::{self, Oversight, PairApproval, Refusal};
use crate::journal::NewApprovalRequest;
use crate::plan::StepId;
use std::time::Duration;

/// How often the driver reads the journal for a verdict while it waits.
const POLL: Duration = Duration::from_millis(250);

/// What the driver waiting for a second person sees change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalStatus {
    /// Waiting since `request.requested_at` for anyone but `request.driver` to approve.
    Waiting { request: ApprovalRequest },
    /// Blocked: `by` objects, with a reason, until they withdraw.
    Objected {
        request: ApprovalRequest,
        by: VerdictRecord,
    },
    /// Approved; the step starts now.
    Approved {
        request: ApprovalRequest,
        by: VerdictRecord,
    },
    /// The readings changed after the approval: it is stale, and the driver asks again.
    Stale { request: ApprovalRequest },
}

impl ApprovalStatus {
    /// One line for people: who is waited for, since when, or who objects and why.
    pub fn describe(&self) -> String {
        match self {
            ApprovalStatus::Waiting { request } => format!(
                "waiting since {} for a second operator (another OS user than {}) to approve {} (request {}, seen {}): cutover approve INV {} --step {} --seen {}, or cutover tui INV {} --second",
                request.requested_at.format("%H:%M:%S UTC"),
                request.driver.label,
                request.covers,
                request.id,
                short(&request.seen),
                request.runbook,
                request.step,
                short(&request.seen),
                request.runbook,
            ),
            ApprovalStatus::Objected { request, by } => format!(
                "BLOCKED: {} objects to {} (request {}): {} — waiting until they withdraw",
                by.by.label, request.covers, request.id, by.reason
            ),
            ApprovalStatus::Approved { request, by } => format!(
                "{} approved {} from {} (request {}, seen {})",
                by.by.label,
                request.covers,
                by.by.terminal,
                request.id,
                short(&request.seen)
            ),
            ApprovalStatus::Stale { request } => format!(
                "the readings changed after the approval of {} (request {}): it is stale; asking again",
                request.covers, request.id
            ),
        }
    }
}

/// Why the wait loop woke up.
enum Woke {
    Poll,
    Stop,
    PauseBound,
    Abort,
}

/// See [`Runner::on_approval`].
pub type ApprovalHook = Box<dyn FnMut(&ApprovalStatus) + Send>;

fn short(seen: &str) -> &str {
    &seen[..16.min(seen.len())]
}

impl<A: Actions> Runner<A> {
    /// Who drives: `--operator` shown next to this process's OS user.
    pub fn set_identity(&mut self, identity: crate::identity::Identity) {
        self.identity = identity;
    }

    pub fn identity(&self) -> &crate::identity::Identity {
        &self.identity
    }

    /// Follow the wait for a second person: `hook` sees every change.
    pub fn on_approval(&mut self, hook: ApprovalHook) {
        self.on_approval = Some(hook);
    }

    fn tell(&mut self, status: ApprovalStatus) {
        tracing::info!(target: "cutover::cmd", "{}", status.describe());
        if let Some(hook) = self.on_approval.as_mut() {
            hook(&status);
        }
    }

    /// Pair mode: the approval `step` needs, waiting for it when none is given yet; `None`
    /// when one person suffices. A step inside the paused window that an approval opened is
    /// covered by that approval, found in the journal without waiting.
    pub async fn pair_approval(&mut self, step: &StepId) -> Result<Option<PairApproval>, RunError> {
        if self.state.settings.oversight != Oversight::Pair {
            return Ok(None);
        }
        let refused = |refusal| RunError::Refused {
            step: step.clone(),
            refusal,
        };
        // Which approval the step needs depends on the plan and the state alone: no reads
        // (inside a paused window every read would lengthen the pause).
        let needs = engine::required_confirmation(&self.state, &self.plan, step, &[])
            .map_err(refused)?
            .approval_of;
        let Some(of) = needs else {
            return Ok(None);
        };
        if &of != step {
            return self.window_approval(step, &of).map(Some);
        }
        loop {
            let spec = self.step_spec(step)?;
            let observations = self.observations_of(&spec).await?;
            let requirement =
                engine::required_confirmation(&self.state, &self.plan, step, &observations)
                    .map_err(refused)?;
            let shown = self.shown(step).await?;
            let covers = match engine::paused_window(&self.plan, self.plan_index(step)?) {
                Some((from, to)) => format!(
                    "the paused window `{}` through `{}`",
                    self.plan.steps[from].id, self.plan.steps[to].id
                ),
                None => format!("step `{step}`"),
            };
            let driver = Person::from(&self.identity);
            let fingerprint = self.plan.fingerprint();
            let request = self.journal.request_approval(&NewApprovalRequest {
                run_id: &self.run_id,
                environment: &self.plan.environment,
                runbook: &self.plan.runbook,
                fingerprint: &fingerprint,
                step,
                covers: &covers,
                seen: &requirement.seen,
                observations: &observations,
                shown: &shown,
                driver: &driver,
            })?;
            let verdict = self.wait_for_verdict(&request).await?;
            // Valid only for exactly what was seen: the readings are taken again now.
            let now = self.requirement(step).await?;
            if now.seen != request.seen {
                self.journal
                    .close_approval_request(request.id, Closed::Superseded)?;
                self.tell(ApprovalStatus::Stale { request });
                continue;
            }
            self.journal
                .close_approval_request(request.id, Closed::Used)?;
            self.tell(ApprovalStatus::Approved {
                request: request.clone(),
                by: verdict.clone(),
            });
            return Ok(Some(pair_approval(&request, &verdict)));
        }
    }

    fn plan_index(&self, step: &StepId) -> Result<usize, RunError> {
        self.plan.index_of(step).ok_or_else(|| RunError::Refused {
            step: step.clone(),
            refusal: Refusal::UnknownStep { step: step.clone() },
        })
    }

    /// The preconditions the driver sees now, as text for the second person.
    async fn shown(&mut self, step: &StepId) -> Result<String, RunError> {
        let results = self.preconditions(step).await?;
        Ok(results
            .iter()
            .map(|r| {
                format!(
                    "precondition {} {}: {}",
                    r.id,
                    if r.holds { "holds" } else { "does not hold" },
                    r.detail
                )
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// The approval of `opened_by`, the step that opened the paused window `step` is in.
    fn window_approval(&self, step: &StepId, opened_by: &StepId) -> Result<PairApproval, RunError> {
        let refused = || RunError::Refused {
            step: step.clone(),
            refusal: Refusal::SecondOperatorRequired {
                step: step.clone(),
                approval_of: opened_by.clone(),
                by: vec![self.identity.label()],
            },
        };
        let request = self
            .journal
            .used_approval_request(&self.run_id, opened_by)?
            .ok_or_else(refused)?;
        let verdicts = self.journal.verdicts_on_request(request.id)?;
        let mut open = request.clone();
        open.closed = None;
        match approval::decide(&open, &verdicts) {
            Decision::Approved(verdict) => Ok(pair_approval(&request, &verdict)),
            Decision::Waiting | Decision::Objected(_) => Err(refused()),
        }
    }

    /// Poll the journal until someone else approves `request`. An objection is shown and
    /// blocks until withdrawn; a stop request cancels the request. Traffic is never paused
    /// here by design; should it be (a resumed run), the pause bound still runs.
    async fn wait_for_verdict(
        &mut self,
        request: &ApprovalRequest,
    ) -> Result<VerdictRecord, RunError> {
        let mut stop = self.stop_requested.clone();
        let mut abort = self.abort_requested.clone();
        let mut shown: Option<Decision> = None;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let deadline = self.pause_deadline();
            let woke = tokio::select! {
                _ = tick.tick() => Woke::Poll,
                stopped = stop.wait_for(Option::is_some) => {
                    if stopped.is_ok() { Woke::Stop } else { Woke::Poll }
                }
                _ = super::sleep_until(deadline) => Woke::PauseBound,
                aborted = abort.wait_for(|a| *a) => {
                    if aborted.is_ok() { Woke::Abort } else { Woke::Poll }
                }
            };
            match woke {
                Woke::Poll => {}
                Woke::Stop => {
                    self.journal
                        .close_approval_request(request.id, Closed::Cancelled)?;
                    let reason = self.stop_reason().unwrap_or_default();
                    return Err(RunError::Stopped { reason });
                }
                Woke::Abort if !self.state.traffic_paused() => {
                    // The operator gave up waiting (quit, or x on a window): nothing started.
                    self.abort.send_replace(false);
                    self.journal
                        .close_approval_request(request.id, Closed::Cancelled)?;
                    return Err(RunError::Stopped {
                        reason: "the operator stopped waiting for a second operator".into(),
                    });
                }
                Woke::Abort => {
                    self.journal
                        .close_approval_request(request.id, Closed::Cancelled)?;
                    self.note_abort()?;
                    return Err(self.end_pause_now().await);
                }
                Woke::PauseBound => {
                    self.journal
                        .close_approval_request(request.id, Closed::Cancelled)?;
                    return Err(self.end_pause_now().await);
                }
            }
            let verdicts = self.journal.verdicts_on_request(request.id)?;
            let decision = approval::decide(request, &verdicts);
            if let Decision::Approved(verdict) = decision {
                return Ok(verdict);
            }
            if shown.as_ref() != Some(&decision) {
                let status = match &decision {
                    Decision::Objected(by) => ApprovalStatus::Objected {
                        request: request.clone(),
                        by: by.clone(),
                    },
                    _ => ApprovalStatus::Waiting {
                        request: request.clone(),
                    },
                };
                self.tell(status);
                shown = Some(decision);
            }
        }
    }
}

fn pair_approval(request: &ApprovalRequest, verdict: &VerdictRecord) -> PairApproval {
    PairApproval {
        request_id: request.id,
        step: request.step.clone(),
        fingerprint: request.fingerprint.clone(),
        seen: request.seen.clone(),
        driver_uid: request.driver.uid,
        approver_uid: verdict.by.uid,
        approver: verdict.by.label.clone(),
        approver_terminal: verdict.by.terminal.clone(),
    }
}
