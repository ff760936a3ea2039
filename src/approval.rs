//! Pair review: the four-eyes rules between the driver's process and the second operator's,
//! both reading and writing the journal (the channel between them). A driver that reaches a
//! step needing two people writes an [`ApprovalRequest`] (step, plan fingerprint, `seen` hash
//! and the observations behind it, its own identity); the second operator's session records
//! a [`VerdictRecord`] on it; [`decide`] folds the verdicts into what the driver may do.
//! Pure: the SQLite side is `journal::Journal::{request_approval, record_verdict, ...}`.

use crate::engine::Observation;
use crate::identity::Identity;
use crate::plan::StepId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What the second operator says about a request (or a plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    /// Blocks the step until the same person withdraws it.
    Object,
    /// Takes back this person's earlier approval or objection of the same request.
    Withdraw,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Object => "object",
            Verdict::Withdraw => "withdraw",
        }
    }
    pub fn parse(text: &str) -> Option<Verdict> {
        [Verdict::Approve, Verdict::Object, Verdict::Withdraw]
            .into_iter()
            .find(|v| v.as_str() == text)
    }
}

/// Why a request stopped being open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Closed {
    /// The driver started the step with its approval.
    Used,
    /// The readings changed after the approval; the driver asked again.
    Superseded,
    /// The driver stopped waiting (it exited, or asked again after a restart).
    Cancelled,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Used => "used",
            Closed::Superseded => "superseded",
            Closed::Cancelled => "cancelled",
        }
    }
    pub fn parse(text: &str) -> Option<Closed> {
        [Closed::Used, Closed::Superseded, Closed::Cancelled]
            .into_iter()
            .find(|c| c.as_str() == text)
    }
}

/// A person as the journal keeps them next to a request or verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub uid: u32,
    /// [`Identity::label`].
    pub label: String,
    /// [`crate::identity::Terminal::describe`].
    pub terminal: String,
}

impl From<&Identity> for Person {
    fn from(identity: &Identity) -> Self {
        Person {
            uid: identity.uid,
            label: identity.label(),
            terminal: identity.terminal.describe(),
        }
    }
}

/// The driver waits for a second person on this step, exactly as it saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: i64,
    pub run_id: String,
    pub environment: String,
    pub runbook: String,
    pub fingerprint: String,
    pub step: StepId,
    /// What the approval covers: the step, or the paused window it opens (as one unit).
    pub covers: String,
    /// The engine's `seen` hash over (fingerprint, step, observations).
    pub seen: String,
    /// The observations the hash covers, so another session can show and re-hash them.
    pub observations: Vec<Observation>,
    /// What the driver was shown besides: preconditions and their verdicts.
    pub shown: String,
    pub driver: Person,
    pub requested_at: DateTime<Utc>,
    pub closed: Option<Closed>,
}

/// One verdict on a request, or on a plan (`request_id` and `step` empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRecord {
    pub request_id: Option<i64>,
    pub environment: String,
    pub runbook: String,
    pub fingerprint: String,
    pub step: Option<StepId>,
    pub seen: Option<String>,
    pub verdict: Verdict,
    pub reason: String,
    pub by: Person,
    pub at: DateTime<Utc>,
}

impl VerdictRecord {
    /// `by`'s verdict on exactly what `request` showed (its plan, step and seen hash), now.
    pub fn on(request: &ApprovalRequest, verdict: Verdict, reason: String, by: Person) -> Self {
        VerdictRecord {
            request_id: Some(request.id),
            environment: request.environment.clone(),
            runbook: request.runbook.clone(),
            fingerprint: request.fingerprint.clone(),
            step: Some(request.step.clone()),
            seen: Some(request.seen.clone()),
            verdict,
            reason,
            by,
            at: Utc::now(),
        }
    }
}

/// Where a request stands for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody else has approved or objected (or they withdrew).
    Waiting,
    /// A different person approved exactly what the driver saw.
    Approved(VerdictRecord),
    /// A different person objects; the step is blocked until they withdraw.
    Objected(VerdictRecord),
}

/// Folds the verdicts on `request` in the order they were recorded: each person's last
/// verdict counts; an objection outweighs any approval. Verdicts by the driver's own uid, for
/// another request, or for another `seen` count for nothing (the journal refuses them too).
pub fn decide(request: &ApprovalRequest, verdicts: &[VerdictRecord]) -> Decision {
    let mut last: Vec<&VerdictRecord> = Vec::new();
    for verdict in verdicts {
        if verdict.request_id != Some(request.id)
            || verdict.by.uid == request.driver.uid
            || verdict.fingerprint != request.fingerprint
            || verdict.step.as_ref() != Some(&request.step)
            || (verdict.verdict == Verdict::Approve
                && verdict.seen.as_deref() != Some(request.seen.as_str()))
        {
            continue;
        }
        last.retain(|earlier| earlier.by.uid != verdict.by.uid);
        last.push(verdict);
    }
    if let Some(objection) = last.iter().find(|v| v.verdict == Verdict::Object) {
        return Decision::Objected((*objection).clone());
    }
    match last.iter().find(|v| v.verdict == Verdict::Approve) {
        Some(approval) => Decision::Approved((*approval).clone()),
        None => Decision::Waiting,
    }
}

/// Why a verdict is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("{approver} drives this run: an approval must come from a different OS user than the driver ({driver})")]
    SameUser { approver: String, driver: String },
    #[error("stale: you approve seen {given}, but the driver now waits on seen {current} (the readings changed); review the request again")]
    Stale { given: String, current: String },
    #[error("request {id} is no longer open ({closed}); the driver moved on or asked again")]
    Closed { id: i64, closed: &'static str },
    #[error("the driver runs plan {driver}, but the plan you reviewed has fingerprint {reviewed}; review the driver's plan")]
    PlanDiffers { driver: String, reviewed: String },
    #[error("the request's seen hash {seen} does not cover the observations it shows; refusing to approve it")]
    SeenDoesNotCover { seen: String },
    #[error("an objection needs a reason")]
    ReasonRequired,
    #[error("an approval must name the seen hash it approves (at least 12 hex digits)")]
    SeenRequired,
}

/// Checks a verdict of `by` on `request` before it is recorded: a different uid than the
/// driver, the plan `by` reviewed, a `seen` that covers the request's observations and, for an
/// approval, the very `seen` `by` was shown (`given`, a prefix of at least 12 digits).
pub fn check_verdict(
    request: &ApprovalRequest,
    reviewed_fingerprint: &str,
    by: &Identity,
    verdict: Verdict,
    given_seen: Option<&str>,
    reason: &str,
) -> Result<(), ApprovalError> {
    if let Some(closed) = request.closed {
        return Err(ApprovalError::Closed {
            id: request.id,
            closed: closed.as_str(),
        });
    }
    if !by.is_other_than(request.driver.uid) {
        return Err(ApprovalError::SameUser {
            approver: by.label(),
            driver: request.driver.label.clone(),
        });
    }
    if request.fingerprint != reviewed_fingerprint {
        return Err(ApprovalError::PlanDiffers {
            driver: request.fingerprint.clone(),
            reviewed: reviewed_fingerprint.to_string(),
        });
    }
    let rehashed =
        crate::engine::seen_hash(&request.fingerprint, &request.step, &request.observations);
    if rehashed != request.seen {
        return Err(ApprovalError::SeenDoesNotCover {
            seen: request.seen.clone(),
        });
    }
    match verdict {
        Verdict::Approve => {
            let given = given_seen
                .map(str::trim)
                .filter(|g| g.len() >= 12)
                .ok_or(ApprovalError::SeenRequired)?;
            if !request.seen.starts_with(&given.to_ascii_lowercase()) {
                return Err(ApprovalError::Stale {
                    given: given.to_string(),
                    current: request.seen.clone(),
                });
            }
        }
        Verdict::Object if reason.trim().is_empty() => return Err(ApprovalError::ReasonRequired),
        Verdict::Object | Verdict::Withdraw => {}
    }
    Ok(())
}

/// Whether a person other than `driver_uid` approved the plan with this fingerprint.
pub fn plan_approved_by_other<'v>(
    fingerprint: &str,
    driver_uid: u32,
    verdicts: &'v [VerdictRecord],
) -> Option<&'v VerdictRecord> {
    verdicts.iter().rev().find(|v| {
        v.request_id.is_none()
            && v.step.is_none()
            && v.fingerprint == fingerprint
            && v.verdict == Verdict::Approve
            && v.by.uid != driver_uid
    })
}

/// The request shown to people: who waits, since when, on what, and what they saw.
pub fn describe_request(request: &ApprovalRequest) -> String {
    let mut out = format!(
        "request {} · {} waits since {} for a second operator to approve {}\n  driver terminal: {}\n  plan fingerprint: {}\n  seen: {}\n",
        request.id,
        request.driver.label,
        request.requested_at.format("%H:%M:%S UTC"),
        request.covers,
        request.driver.terminal,
        request.fingerprint,
        request.seen,
    );
    for observation in &request.observations {
        out.push_str(&format!(
            "  observed {} = {}\n",
            observation.name, observation.value
        ));
    }
    for line in request.shown.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(uid: u32, name: &str) -> Person {
        Person {
            uid,
            label: format!("{name} (uid {uid})"),
            terminal: "local, no tty".into(),
        }
    }

    fn request() -> ApprovalRequest {
        let step = StepId::new("promote");
        let observations = vec![Observation::new("standby.caught_up", "true")];
        ApprovalRequest {
            id: 7,
            run_id: "r".into(),
            environment: "lab".into(),
            runbook: "shard-split".into(),
            fingerprint: "f".repeat(64),
            seen: crate::engine::seen_hash(&"f".repeat(64), &step, &observations),
            step,
            covers: "step promote".into(),
            observations,
            shown: String::new(),
            driver: person(1000, "driver"),
            requested_at: Utc::now(),
            closed: None,
        }
    }

    fn verdict(request: &ApprovalRequest, uid: u32, verdict: Verdict) -> VerdictRecord {
        let reason = if verdict == Verdict::Object {
            "wait".into()
        } else {
            String::new()
        };
        VerdictRecord::on(request, verdict, reason, person(uid, "second"))
    }

    #[test]
    fn no_verdict_waits_and_an_approval_by_another_uid_approves() {
        let r = request();
        assert_eq!(decide(&r, &[]), Decision::Waiting);
        let approve = verdict(&r, 1001, Verdict::Approve);
        assert_eq!(
            decide(&r, std::slice::from_ref(&approve)),
            Decision::Approved(approve)
        );
    }

    #[test]
    fn the_drivers_own_approval_counts_for_nothing() {
        let r = request();
        assert_eq!(
            decide(&r, &[verdict(&r, 1000, Verdict::Approve)]),
            Decision::Waiting
        );
    }

    #[test]
    fn an_approval_of_another_seen_or_request_counts_for_nothing() {
        let r = request();
        let mut stale = verdict(&r, 1001, Verdict::Approve);
        stale.seen = Some("0".repeat(64));
        let mut other = verdict(&r, 1001, Verdict::Approve);
        other.request_id = Some(8);
        assert_eq!(decide(&r, &[stale, other]), Decision::Waiting);
    }

    #[test]
    fn an_objection_blocks_over_an_approval_until_withdrawn() {
        let r = request();
        let approve = verdict(&r, 1001, Verdict::Approve);
        let object = verdict(&r, 1002, Verdict::Object);
        let verdicts = vec![approve.clone(), object.clone()];
        assert_eq!(decide(&r, &verdicts), Decision::Objected(object));
        let mut withdrawn = verdicts.clone();
        withdrawn.push(verdict(&r, 1002, Verdict::Withdraw));
        assert_eq!(decide(&r, &withdrawn), Decision::Approved(approve));
    }

    #[test]
    fn a_later_verdict_of_the_same_person_replaces_the_earlier() {
        let r = request();
        let verdicts = vec![
            verdict(&r, 1001, Verdict::Object),
            verdict(&r, 1001, Verdict::Approve),
        ];
        assert!(matches!(decide(&r, &verdicts), Decision::Approved(_)));
    }

    #[test]
    fn check_refuses_the_same_user_a_stale_seen_and_another_plan() {
        let r = request();
        let driver = crate::identity::Identity::new(
            1000,
            "driver".into(),
            None,
            crate::identity::Terminal::default(),
        );
        let second = crate::identity::Identity::new(
            1001,
            "second".into(),
            None,
            crate::identity::Terminal::default(),
        );
        let fp = r.fingerprint.clone();
        assert!(matches!(
            check_verdict(&r, &fp, &driver, Verdict::Approve, Some(&r.seen), ""),
            Err(ApprovalError::SameUser { .. })
        ));
        assert!(matches!(
            check_verdict(
                &r,
                &fp,
                &second,
                Verdict::Approve,
                Some(&"a".repeat(64)),
                ""
            ),
            Err(ApprovalError::Stale { .. })
        ));
        assert!(matches!(
            check_verdict(
                &r,
                &"e".repeat(64),
                &second,
                Verdict::Approve,
                Some(&r.seen),
                ""
            ),
            Err(ApprovalError::PlanDiffers { .. })
        ));
        assert!(matches!(
            check_verdict(&r, &fp, &second, Verdict::Approve, None, ""),
            Err(ApprovalError::SeenRequired)
        ));
        assert!(matches!(
            check_verdict(&r, &fp, &second, Verdict::Object, None, " "),
            Err(ApprovalError::ReasonRequired)
        ));
        assert_eq!(
            check_verdict(&r, &fp, &second, Verdict::Approve, Some(&r.seen[..12]), ""),
            Ok(())
        );
        let mut tampered = r.clone();
        tampered.observations[0].value = "false".into();
        assert!(matches!(
            check_verdict(&tampered, &fp, &second, Verdict::Approve, Some(&r.seen), ""),
            Err(ApprovalError::SeenDoesNotCover { .. })
        ));
        let mut closed = r.clone();
        closed.closed = Some(Closed::Used);
        assert!(matches!(
            check_verdict(&closed, &fp, &second, Verdict::Approve, Some(&r.seen), ""),
            Err(ApprovalError::Closed { .. })
        ));
    }

    #[test]
    fn a_plan_approval_counts_only_from_another_uid() {
        let r = request();
        let mut plan = verdict(&r, 1000, Verdict::Approve);
        plan.request_id = None;
        plan.step = None;
        plan.seen = None;
        assert!(
            plan_approved_by_other(&r.fingerprint, 1000, std::slice::from_ref(&plan)).is_none()
        );
        plan.by = person(1001, "second");
        assert!(
            plan_approved_by_other(&r.fingerprint, 1000, std::slice::from_ref(&plan)).is_some()
        );
        assert!(plan_approved_by_other(&"0".repeat(64), 1000, &[plan]).is_none());
    }
}
