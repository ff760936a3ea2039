//! Engine and plan tests: transitions of the pure state machine on a small hand-built plan,
//! the plan fingerprint, and the review markdown (insta snapshot).

use chrono::{DateTime, TimeZone, Utc};
use cutover::engine::{
    apply, required_confirmation, Command, Confirmation, Effect, EngineSettings, EngineState,
    EntryKind, JournalEntry, Observation, Oversight, PairApproval, PreconditionResult, Refusal,
    Severity, StepStatus,
};
use cutover::plan::{Plan, RenderedCommand, Step, StepFlags, StepId, Undo};
use std::collections::BTreeMap;
use std::time::Duration;

const PREFLIGHT: usize = 0;
const BASE_BACKUP: usize = 1;
const BASELINE: usize = 2;
const PAUSE: usize = 3;
const PROMOTE: usize = 4;
const RESUME: usize = 5;
const DELETE: usize = 6;
const VACUUM: usize = 7;

/// A miniature shard split: the shape of the real runbook, with fake but readable commands.
fn plan() -> Plan {
    let params: BTreeMap<String, String> = [
        ("from", "p1"),
        ("to", "p2"),
        ("node", "pg2"),
        ("shards", "2-3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let steps = vec![
        Step::new("preflight", "Preflight checks")
            .command(RenderedCommand::sql("pg1", "postgres", "SHOW wal_level;"))
            .precondition("wal-level", "wal_level is replica or logical on pg1")
            .verification("every check passed"),
        Step::new("base-backup", "Build pg2 as a streaming standby of pg1")
            .command(RenderedCommand::shell(
                "pg2",
                "pg_basebackup -h 127.0.0.1 -p 5432 -D /data/pg2 -R -C -S pg2_slot -X stream -c fast",
            ))
            .precondition("slot-free", "no replication slot named pg2_slot exists on pg1")
            .verification("pg2 is in recovery and streaming from pg1")
            .undo(Undo::Reversible {
                description: "stop and discard the standby, drop the slot".into(),
                commands: vec![RenderedCommand::sql(
                    "pg1",
                    "postgres",
                    "SELECT pg_drop_replication_slot('pg2_slot');",
                )],
            }),
        Step::new("baseline", "Record the per-shard distribution")
            .command(RenderedCommand::sql(
                "pg1",
                "commcarehq_p1",
                "SELECT hashtext(form_id::text) & 3 AS shard, count(*) FROM form GROUP BY 1;",
            ))
            .verification("counts recorded"),
        Step::new("pause", "Pause traffic at the proxy alias")
            .command(RenderedCommand::pgbouncer_admin("pgb", "PAUSE commcarehq_proxy;"))
            .verification("SHOW DATABASES lists commcarehq_proxy as paused")
            .undo(Undo::Reversible {
                description: "resume traffic".into(),
                commands: vec![RenderedCommand::pgbouncer_admin(
                    "pgb",
                    "RESUME commcarehq_proxy;",
                )],
            })
            .flags(StepFlags {
                pauses_traffic: true,
                ..StepFlags::default()
            }),
        Step::new("promote", "Promote pg2")
            .command(RenderedCommand::sql(
                "pg2",
                "postgres",
                "SELECT pg_promote(wait => false);",
            ))
            .precondition("standby-caught-up", "pg2 replay LSN ≥ pg1 current WAL LSN")
            .verification("pg_is_in_recovery() is false on pg2")
            .undo(Undo::Reversible {
                description: "stop and discard pg2".into(),
                commands: vec![RenderedCommand::shell("pg2", "pg_ctl stop -D /data/pg2 -m fast")],
            })
            .flags(StepFlags {
                needs_traffic_stopped: true,
                destructive: true,
                ..StepFlags::default()
            }),
        Step::new("resume", "Resume traffic")
            .command(RenderedCommand::pgbouncer_admin("pgb", "RESUME commcarehq_proxy;"))
            .verification("no alias is paused")
            .undo(Undo::Reversible {
                description: "pause traffic again before undoing the re-route".into(),
                commands: vec![RenderedCommand::pgbouncer_admin(
                    "pgb",
                    "PAUSE commcarehq_proxy;",
                )],
            })
            .flags(StepFlags {
                resumes_traffic: true,
                ..StepFlags::default()
            }),
        Step::new("delete-invalid", "Delete rows each node no longer owns")
            .command(RenderedCommand::sql(
                "pg1",
                "commcarehq_p1",
                "DELETE FROM form WHERE id IN (SELECT id FROM form WHERE hashtext(form_id::text) & 3 BETWEEN 2 AND 3 ORDER BY id LIMIT 10000);",
            ))
            .precondition("owner-has-rows", "the owner holds every row to delete (count + hash)")
            .verification("no node holds rows of shards it does not own")
            .undo(Undo::PointOfNoReturn {
                reason: "deleted rows exist only on their new owner; pg1 can no longer take traffic for shards 2-3".into(),
            })
            .flags(StepFlags {
                destructive: true,
                ..StepFlags::default()
            }),
        Step::new("vacuum", "VACUUM ANALYZE")
            .command(RenderedCommand::sql("pg1", "commcarehq_p1", "VACUUM ANALYZE form;"))
            .verification("estimates match exact counts within 10%"),
    ];
    Plan {
        environment: "lab".into(),
        runbook: "shard-split".into(),
        params,
        inventory_yaml: "environment: lab\nshard_count: 4\n".into(),
        steps,
        tool_version: "0.0.0-test".into(),
    }
}

fn at(second: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::seconds(second)
}

fn id(plan: &Plan, index: usize) -> StepId {
    plan.steps[index].id.clone()
}

fn all_hold(plan: &Plan, index: usize) -> Vec<PreconditionResult> {
    plan.steps[index]
        .preconditions
        .iter()
        .map(|p| PreconditionResult {
            id: p.id.clone(),
            holds: true,
            detail: format!("{}: ok", p.id),
        })
        .collect()
}

fn start_command(
    state: &EngineState,
    plan: &Plan,
    index: usize,
    by: &[&str],
    observations: Vec<Observation>,
) -> Command {
    let requirement = required_confirmation(state, plan, &id(plan, index), &observations).unwrap();
    // The second name, when given, is another OS user's approval of what the engine asks for.
    let approval = match (by, &requirement.approval_of) {
        ([_, second, ..], Some(of)) => Some(approval(plan, of, &requirement.seen, 1001, second)),
        _ => None,
    };
    let by = match approval {
        Some(_) => vec![by[0].to_string()],
        None => by.iter().map(|s| s.to_string()).collect(),
    };
    Command::Start {
        step: id(plan, index),
        confirmation: Some(Confirmation {
            by,
            seen: requirement.seen,
            approval,
        }),
        precondition_results: all_hold(plan, index),
        observations,
    }
}

/// An approval of `step` by uid `approver_uid` for a driver of uid 1000.
fn approval(plan: &Plan, step: &StepId, seen: &str, approver_uid: u32, name: &str) -> PairApproval {
    PairApproval {
        request_id: 1,
        step: step.clone(),
        fingerprint: plan.fingerprint(),
        seen: seen.to_string(),
        driver_uid: 1000,
        approver_uid,
        approver: name.to_string(),
        approver_terminal: "tty /dev/pts/9".into(),
    }
}

/// Drives the engine, keeping every effect in order (a fake executor that never fails).
struct Run {
    plan: Plan,
    state: EngineState,
    effects: Vec<Effect>,
    clock: i64,
}

impl Run {
    fn new(settings: EngineSettings) -> Self {
        let plan = plan();
        let state = EngineState::new(&plan, settings);
        Run {
            plan,
            state,
            effects: Vec::new(),
            clock: 0,
        }
    }
    fn apply(&mut self, command: Command) -> Result<Vec<Effect>, Refusal> {
        self.clock += 1;
        let (state, effects) = apply(&self.state, &self.plan, at(self.clock), command)?;
        self.state = state;
        self.effects.extend(effects.clone());
        Ok(effects)
    }
    fn start(&mut self, index: usize) -> Vec<Effect> {
        let command = start_command(&self.state, &self.plan, index, &["alice", "bob"], vec![]);
        self.apply(command).unwrap()
    }
    fn succeed(&mut self, index: usize) -> Vec<Effect> {
        let step = id(&self.plan, index);
        self.apply(Command::ActionSucceeded {
            step,
            verification_detail: format!("{} verified", index),
        })
        .unwrap()
    }
    fn walk_through(&mut self, last: usize) {
        for index in self.state.cursor..=last {
            self.start(index);
            self.succeed(index);
        }
    }
    fn journal(&self) -> Vec<JournalEntry> {
        journal_of(&self.effects)
    }
}

fn journal_of(effects: &[Effect]) -> Vec<JournalEntry> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Journal(entry) => Some(entry.clone()),
            _ => None,
        })
        .collect()
}

fn undo_order(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::RunUndo { step, .. } => Some(step.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_normal_walk_reaches_the_end_and_completes_the_run() {
    let mut run = Run::new(EngineSettings::default());
    for index in 0..run.plan.steps.len() {
        assert_eq!(run.state.cursor, index);
        let effects = run.start(index);
        assert_eq!(
            effects.last(),
            Some(&Effect::RunAction {
                step: id(&run.plan, index),
                resume_recheck: false
            })
        );
        assert!(matches!(run.state.steps[index], StepStatus::Running { .. }));
        let paused_while_running = run.state.traffic_paused();
        assert_eq!(
            paused_while_running,
            (PAUSE..=RESUME).contains(&index),
            "traffic pause while step {index} runs"
        );
        let effects = run.succeed(index);
        assert!(matches!(run.state.steps[index], StepStatus::Done { .. }));
        let last = index + 1 == run.plan.steps.len();
        assert_eq!(effects.contains(&Effect::RunCompleted), last);
    }
    assert!(run.state.is_complete());
    assert!(!run.state.traffic_paused());
    assert_eq!(run.state.point_of_no_return_passed_at, Some(DELETE));
    let kinds: Vec<EntryKind> = run.journal().iter().map(|e| e.kind).collect();
    assert_eq!(kinds.last(), Some(&EntryKind::RunFinished));
}

#[test]
fn refusals_name_the_reason_and_change_nothing() {
    let mut run = Run::new(EngineSettings::default());
    run.walk_through(BASE_BACKUP);
    let before = run.state.clone();
    let effects_before = run.effects.len();

    struct Case {
        name: &'static str,
        command: Command,
        expect: fn(&Refusal) -> bool,
    }
    let plan = run.plan.clone();
    let state = run.state.clone();
    let cases = vec![
        Case {
            name: "out of order",
            command: start_command(&state, &plan, PROMOTE, &["alice"], vec![]),
            expect: |r| matches!(r, Refusal::OutOfOrder { step, expected } if step.as_str() == "promote" && expected.as_str() == "baseline"),
        },
        Case {
            name: "already done",
            command: start_command(&state, &plan, PREFLIGHT, &["alice"], vec![]),
            expect: |r| matches!(r, Refusal::AlreadyDone { .. }),
        },
        Case {
            name: "unknown step",
            command: Command::Skip {
                step: StepId::new("nope"),
                reason: "x".into(),
                by: "alice".into(),
            },
            expect: |r| matches!(r, Refusal::UnknownStep { .. }),
        },
        Case {
            name: "confirmation missing",
            command: Command::Start {
                step: id(&plan, BASELINE),
                confirmation: None,
                precondition_results: vec![],
                observations: vec![],
            },
            expect: |r| matches!(r, Refusal::ConfirmationMissing { .. }),
        },
        Case {
            name: "no operator named",
            command: start_command(&state, &plan, BASELINE, &["  "], vec![]),
            expect: |r| matches!(r, Refusal::UnnamedOperator { .. }),
        },
        Case {
            name: "skip without a reason",
            command: Command::Skip {
                step: id(&plan, BASELINE),
                reason: " ".into(),
                by: "alice".into(),
            },
            expect: |r| matches!(r, Refusal::ReasonRequired { .. }),
        },
        Case {
            name: "success of a step that is not running",
            command: Command::ActionSucceeded {
                step: id(&plan, BASELINE),
                verification_detail: "?".into(),
            },
            expect: |r| {
                matches!(
                    r,
                    Refusal::NotRunning {
                        status: "pending",
                        ..
                    }
                )
            },
        },
        Case {
            name: "pause bound while traffic flows",
            command: Command::PauseBoundExceeded {
                bound: Duration::from_secs(10),
                paused_for: Duration::from_secs(11),
            },
            expect: |r| matches!(r, Refusal::TrafficNotPaused),
        },
        Case {
            name: "rollback with nothing to undo after the step",
            command: Command::RollbackTo {
                step: id(&plan, BASELINE),
                by: "alice".into(),
                reason: "test".into(),
            },
            expect: |r| matches!(r, Refusal::NothingToRollBack { .. }),
        },
    ];
    for case in cases {
        let refusal = run
            .apply(case.command)
            .expect_err(&format!("{} must be refused", case.name));
        assert!((case.expect)(&refusal), "{}: got {refusal:?}", case.name);
        assert_eq!(run.state, before, "{} changed the state", case.name);
    }
    assert_eq!(
        run.effects.len(),
        effects_before,
        "refusals must emit nothing"
    );
}

#[test]
fn a_precondition_that_does_not_hold_refuses_the_start_with_its_detail() {
    let mut run = Run::new(EngineSettings::default());
    run.walk_through(PAUSE);
    let effects_before = run.effects.len();
    let Command::Start {
        step,
        confirmation,
        mut precondition_results,
        observations,
    } = start_command(&run.state, &run.plan, PROMOTE, &["alice"], vec![])
    else {
        unreachable!()
    };
    precondition_results[0].holds = false;
    precondition_results[0].detail = "pg2 replay 0/3000000 < pg1 current 0/3000100".into();
    let refusal = run
        .apply(Command::Start {
            step: step.clone(),
            confirmation: confirmation.clone(),
            precondition_results,
            observations: observations.clone(),
        })
        .unwrap_err();
    assert!(matches!(
        &refusal,
        Refusal::PreconditionFailed { precondition, .. } if precondition == "standby-caught-up"
    ));
    let message = refusal.to_string();
    assert!(message.contains("standby-caught-up"), "{message}");
    assert!(message.contains("0/3000100"), "{message}");

    let unevaluated = run
        .apply(Command::Start {
            step,
            confirmation,
            precondition_results: vec![],
            observations,
        })
        .unwrap_err();
    assert!(matches!(
        unevaluated,
        Refusal::PreconditionNotEvaluated { .. }
    ));
    assert_eq!(run.effects.len(), effects_before, "a refusal emits nothing");
    assert_eq!(run.state.steps[PROMOTE], StepStatus::Pending);
}

#[test]
fn a_confirmation_is_bound_to_the_observations_it_was_given_for() {
    let mut run = Run::new(EngineSettings::default());
    let shown = vec![
        Observation::new("standby.lag_bytes", "0"),
        Observation::new("target.dbname", "commcarehq_p2"),
    ];
    let requirement =
        required_confirmation(&run.state, &run.plan, &id(&run.plan, PREFLIGHT), &shown).unwrap();
    let confirmation = Confirmation {
        by: vec!["alice".into()],
        seen: requirement.seen.clone(),
        approval: None,
    };
    let now = vec![
        Observation::new("standby.lag_bytes", "5242880"),
        Observation::new("target.dbname", "commcarehq_p2"),
    ];
    let refusal = run
        .apply(Command::Start {
            step: id(&run.plan, PREFLIGHT),
            confirmation: Some(confirmation.clone()),
            precondition_results: all_hold(&run.plan, PREFLIGHT),
            observations: now,
        })
        .unwrap_err();
    assert!(
        matches!(&refusal, Refusal::StaleConfirmation { expected, got, .. } if got == &requirement.seen && expected != got),
        "{refusal:?}"
    );

    // The same readings in another order are the same confirmation.
    let reordered: Vec<Observation> = shown.iter().rev().cloned().collect();
    run.apply(Command::Start {
        step: id(&run.plan, PREFLIGHT),
        confirmation: Some(confirmation),
        precondition_results: all_hold(&run.plan, PREFLIGHT),
        observations: reordered,
    })
    .unwrap();
    let confirmed = run
        .journal()
        .into_iter()
        .find(|e| e.kind == EntryKind::Confirmed)
        .unwrap();
    assert_eq!(confirmed.actors, vec!["alice".to_string()]);
    assert!(
        confirmed.detail.contains("standby.lag_bytes=0"),
        "{}",
        confirmed.detail
    );

    // A confirmation for one step does not confirm another.
    let other =
        required_confirmation(&run.state, &run.plan, &id(&run.plan, BASE_BACKUP), &shown).unwrap();
    assert_ne!(other.seen, requirement.seen);
}

#[test]
fn pair_mode_needs_another_os_users_approval_of_exactly_what_was_seen() {
    let pair = EngineSettings {
        oversight: Oversight::Pair,
    };
    let seen_now = |run: &Run, step: usize| {
        required_confirmation(&run.state, &run.plan, &id(&run.plan, step), &[])
            .unwrap()
            .seen
    };
    let start_with = |run: &Run, step: usize, approval: Option<PairApproval>| Command::Start {
        step: id(&run.plan, step),
        confirmation: Some(Confirmation {
            by: vec!["alice (uid 1000)".into()],
            seen: seen_now(run, step),
            approval,
        }),
        precondition_results: all_hold(&run.plan, step),
        observations: vec![],
    };
    let mut run = Run::new(pair);
    run.walk_through(BASELINE);

    // The pausing step opens a window holding a destructive step: the window is one unit,
    // approved before traffic pauses.
    let requirement =
        required_confirmation(&run.state, &run.plan, &id(&run.plan, PAUSE), &[]).unwrap();
    assert_eq!(requirement.severity, Severity::Routine);
    assert_eq!(requirement.approval_of, Some(id(&run.plan, PAUSE)));
    let seen = seen_now(&run, PAUSE);
    let pause = id(&run.plan, PAUSE);
    let refusals = [
        (None, "no approval"),
        (
            Some(approval(&run.plan, &pause, &seen, 1000, "alice")),
            "same uid",
        ),
        (
            Some(approval(&run.plan, &pause, &"0".repeat(64), 1001, "bob")),
            "stale seen",
        ),
        (
            Some(approval(
                &run.plan,
                &id(&run.plan, DELETE),
                &seen,
                1001,
                "bob",
            )),
            "another step",
        ),
        (
            Some(PairApproval {
                fingerprint: "f".repeat(64),
                ..approval(&run.plan, &pause, &seen, 1001, "bob")
            }),
            "another plan",
        ),
    ];
    for (given, case) in refusals {
        let refusal = run.apply(start_with(&run, PAUSE, given)).unwrap_err();
        let expected = match case {
            "no approval" => matches!(refusal, Refusal::SecondOperatorRequired { .. }),
            "same uid" => matches!(refusal, Refusal::ApprovalBySameUser { uid: 1000, .. }),
            "stale seen" => matches!(refusal, Refusal::StaleApproval { .. }),
            _ => matches!(refusal, Refusal::ApprovalMismatch { .. }),
        };
        assert!(expected, "{case}: {refusal:?}");
        assert_eq!(run.state.steps[PAUSE], StepStatus::Pending, "{case}");
    }
    let window = approval(&run.plan, &pause, &seen, 1001, "bob (uid 1001)");
    run.apply(start_with(&run, PAUSE, Some(window.clone())))
        .unwrap();
    let confirmed = run
        .journal()
        .into_iter()
        .rfind(|e| e.kind == EntryKind::Confirmed)
        .unwrap();
    assert_eq!(
        confirmed.actors,
        vec!["alice (uid 1000)".to_string(), "bob (uid 1001)".to_string()],
        "both people are journaled"
    );
    assert!(confirmed
        .detail
        .contains("approved by bob (uid 1001) from tty /dev/pts/9"));
    run.succeed(PAUSE);

    // Inside the window the destructive step is covered by the window's approval, without
    // waiting for a person while traffic is paused; nothing else covers it.
    let requirement =
        required_confirmation(&run.state, &run.plan, &id(&run.plan, PROMOTE), &[]).unwrap();
    assert_eq!(requirement.severity, Severity::Destructive);
    assert_eq!(requirement.approval_of, Some(pause.clone()));
    let refusal = run.apply(start_with(&run, PROMOTE, None)).unwrap_err();
    assert!(
        matches!(refusal, Refusal::SecondOperatorRequired { .. }),
        "{refusal:?}"
    );
    run.apply(start_with(&run, PROMOTE, Some(window))).unwrap();
    run.succeed(PROMOTE);
    let requirement =
        required_confirmation(&run.state, &run.plan, &id(&run.plan, RESUME), &[]).unwrap();
    assert_eq!(
        requirement.approval_of, None,
        "a routine step in the window"
    );
    run.apply(start_with(&run, RESUME, None)).unwrap();
    run.succeed(RESUME);

    // Past the window, a destructive step needs its own approval.
    let requirement =
        required_confirmation(&run.state, &run.plan, &id(&run.plan, DELETE), &[]).unwrap();
    assert_eq!(requirement.approval_of, Some(id(&run.plan, DELETE)));
    let stale_window = approval(&run.plan, &pause, &seen, 1001, "bob");
    let refusal = run
        .apply(start_with(&run, DELETE, Some(stale_window)))
        .unwrap_err();
    assert!(
        matches!(refusal, Refusal::ApprovalMismatch { .. }),
        "{refusal:?}"
    );

    // Routine steps need one person even in pair mode, and solo mode needs no approval.
    let mut run = Run::new(pair);
    run.apply(start_with(&run, PREFLIGHT, None)).unwrap();
    let mut solo = Run::new(EngineSettings::default());
    solo.walk_through(BASELINE);
    solo.apply(start_with(&solo, PAUSE, None)).unwrap();
}

#[test]
fn rollback_undoes_in_reverse_order_and_stops_at_the_chosen_step() {
    let mut run = Run::new(EngineSettings::default());
    run.walk_through(PROMOTE);
    assert!(run.state.traffic_paused());

    let effects = run
        .apply(Command::RollbackTo {
            step: id(&run.plan, BASE_BACKUP),
            by: "alice".into(),
            reason: "rehearsal".into(),
        })
        .unwrap();
    assert_eq!(undo_order(&effects), ["promote"]);
    run.apply(Command::RollbackStepDone {
        step: id(&run.plan, PROMOTE),
    })
    .unwrap();
    assert!(
        run.state.traffic_paused(),
        "pause is undone only with its step"
    );
    run.apply(Command::RollbackStepDone {
        step: id(&run.plan, PAUSE),
    })
    .unwrap();
    assert!(!run.state.traffic_paused());
    let last = run
        .apply(Command::RollbackStepDone {
            step: id(&run.plan, BASE_BACKUP),
        })
        .unwrap();
    assert_eq!(
        last.last(),
        Some(&Effect::RollbackCompleted {
            to: id(&run.plan, BASE_BACKUP)
        })
    );

    // promote, pause and base-backup were undone in that order; baseline had nothing to undo.
    assert_eq!(
        undo_order(&run.effects),
        ["promote", "pause", "base-backup"]
    );
    let rolled_back: Vec<_> = run
        .journal()
        .into_iter()
        .filter(|e| e.kind == EntryKind::RolledBack)
        .map(|e| (e.step.unwrap().to_string(), e.detail))
        .collect();
    assert_eq!(
        rolled_back,
        [
            ("promote".to_string(), "undo succeeded".to_string()),
            ("pause".to_string(), "undo succeeded".to_string()),
            ("baseline".to_string(), "nothing to undo".to_string()),
            ("base-backup".to_string(), "undo succeeded".to_string()),
        ]
    );
    assert!(matches!(
        run.state.steps[PREFLIGHT],
        StepStatus::Done { .. }
    ));
    for index in BASE_BACKUP..=PROMOTE {
        assert!(matches!(
            run.state.steps[index],
            StepStatus::RolledBack { .. }
        ));
    }
    assert_eq!(run.state.cursor, BASE_BACKUP);
    assert!(run.state.rollback.is_none());

    // The run can go forward again from the chosen step.
    run.walk_through(VACUUM);
    assert!(run.state.is_complete());
}

#[test]
fn a_failed_undo_halts_the_rollback_and_blocks_forward_progress() {
    let mut run = Run::new(EngineSettings::default());
    run.walk_through(PROMOTE);
    run.apply(Command::RollbackTo {
        step: id(&run.plan, PAUSE),
        by: "alice".into(),
        reason: "lag".into(),
    })
    .unwrap();
    run.apply(Command::RollbackStepFailed {
        step: id(&run.plan, PROMOTE),
        reason: "pg_ctl stop timed out".into(),
    })
    .unwrap();
    assert!(matches!(
        run.state.steps[PROMOTE],
        StepStatus::RollbackFailed { .. }
    ));
    let refusal = run
        .apply(start_command(
            &run.state,
            &run.plan,
            RESUME,
            &["alice"],
            vec![],
        ))
        .unwrap_err();
    assert!(
        matches!(refusal, Refusal::RollbackIncomplete { .. }),
        "{refusal:?}"
    );

    // Asking again retries that undo, flagged for a re-check.
    let effects = run
        .apply(Command::RollbackTo {
            step: id(&run.plan, PAUSE),
            by: "alice".into(),
            reason: "retry".into(),
        })
        .unwrap();
    assert_eq!(
        effects.last(),
        Some(&Effect::RunUndo {
            step: id(&run.plan, PROMOTE),
            resume_recheck: true
        })
    );
}

#[test]
fn rollback_past_the_point_of_no_return_is_refused_with_its_reason() {
    let mut run = Run::new(EngineSettings::default());
    run.walk_through(RESUME);
    run.start(DELETE);
    run.apply(Command::ActionFailed {
        step: id(&run.plan, DELETE),
        reason: "lock timeout".into(),
    })
    .unwrap();
    // Even a failed delete has started, so it may have deleted rows.
    let refusal = run
        .apply(Command::RollbackTo {
            step: id(&run.plan, PAUSE),
            by: "alice".into(),
            reason: "give up".into(),
        })
        .unwrap_err();
    match &refusal {
        Refusal::RollbackPastPointOfNoReturn {
            target,
            step,
            reason,
        } => {
            assert_eq!(target.as_str(), "pause");
            assert_eq!(step.as_str(), "delete-invalid");
            assert!(reason.contains("pg1 can no longer take traffic"));
        }
        other => panic!("expected a point-of-no-return refusal, got {other:?}"),
    }
    let message = refusal.to_string();
    assert!(
        message.contains("delete-invalid") && message.contains("point of no return"),
        "{message}"
    );

    // Steps after the point of no return can still be rolled back.
    run.start(DELETE);
    run.succeed(DELETE);
    run.start(VACUUM);
    run.succeed(VACUUM);
    let effects = run
        .apply(Command::RollbackTo {
            step: id(&run.plan, VACUUM),
            by: "alice".into(),
            reason: "re-run vacuum".into(),
        })
        .unwrap();
    assert!(effects.contains(&Effect::RollbackCompleted {
        to: id(&run.plan, VACUUM)
    }));
}

#[test]
fn the_pause_bound_cancels_the_running_step_and_rolls_back_to_before_the_pause() {
    let mut run = Run::new(EngineSettings::default());
    run.walk_through(PAUSE);
    run.start(PROMOTE);
    let effects = run
        .apply(Command::PauseBoundExceeded {
            bound: Duration::from_secs(10),
            paused_for: Duration::from_millis(10_200),
        })
        .unwrap();
    assert!(!run.state.traffic_paused());
    assert!(matches!(
        &run.state.steps[PROMOTE],
        StepStatus::RollingBack { .. }
    ));
    let kinds: Vec<String> = effects
        .iter()
        .map(|e| match e {
            Effect::Journal(entry) => {
                format!("journal {} {}", entry.kind, entry.step.as_ref().unwrap())
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "journal pause_bound_exceeded promote",
            "journal failed promote",
            "CancelAction { step: StepId(\"promote\") }",
            "journal rollback_requested pause",
            "journal undo_started promote",
            "RunUndo { step: StepId(\"promote\"), resume_recheck: true }",
        ]
    );
    let failed = journal_of(&effects)
        .into_iter()
        .find(|e| e.kind == EntryKind::Failed)
        .unwrap();
    assert!(
        failed
            .detail
            .contains("pause exceeded its bound of 10.000 s"),
        "{}",
        failed.detail
    );
    assert_eq!(failed.actors, ["cutover:pause-bound"]);

    run.apply(Command::RollbackStepDone {
        step: id(&run.plan, PROMOTE),
    })
    .unwrap();
    let last = run
        .apply(Command::RollbackStepDone {
            step: id(&run.plan, PAUSE),
        })
        .unwrap();
    assert!(last.contains(&Effect::RollbackCompleted {
        to: id(&run.plan, PAUSE)
    }));
    assert_eq!(run.state.cursor, PAUSE);
    // A late success report of the cancelled action is refused.
    let late = run
        .apply(Command::ActionSucceeded {
            step: id(&run.plan, PROMOTE),
            verification_detail: "late".into(),
        })
        .unwrap_err();
    assert!(matches!(late, Refusal::NotRunning { .. }));
}

#[test]
fn traffic_rules_are_enforced_by_the_engine() {
    let mut run = Run::new(EngineSettings::default());
    run.walk_through(BASELINE);
    run.apply(Command::Skip {
        step: id(&run.plan, PAUSE),
        reason: "traffic stopped by hand".into(),
        by: "alice".into(),
    })
    .unwrap();
    let refusal = run
        .apply(start_command(
            &run.state,
            &run.plan,
            PROMOTE,
            &["alice"],
            vec![],
        ))
        .unwrap_err();
    assert!(
        matches!(refusal, Refusal::TrafficNotStopped { .. }),
        "{refusal:?}"
    );

    let mut run = Run::new(EngineSettings::default());
    run.walk_through(PROMOTE);
    let refusal = run
        .apply(Command::Skip {
            step: id(&run.plan, RESUME),
            reason: "later".into(),
            by: "alice".into(),
        })
        .unwrap_err();
    assert!(matches!(
        refusal,
        Refusal::SkipWouldLeaveTrafficPaused { .. }
    ));

    // Rolling back the resume step pauses traffic again (its undo is PAUSE).
    run.walk_through(RESUME);
    assert!(!run.state.traffic_paused());
    run.apply(Command::RollbackTo {
        step: id(&run.plan, RESUME),
        by: "alice".into(),
        reason: "re-route was wrong".into(),
    })
    .unwrap();
    run.apply(Command::RollbackStepDone {
        step: id(&run.plan, RESUME),
    })
    .unwrap();
    assert_eq!(run.state.traffic_pause.map(|p| p.by_step), Some(PAUSE));
}

#[test]
fn running_steps_refuse_a_second_start_and_a_rollback() {
    let mut run = Run::new(EngineSettings::default());
    run.start(PREFLIGHT);
    let again = run
        .apply(start_command(
            &run.state,
            &run.plan,
            PREFLIGHT,
            &["alice"],
            vec![],
        ))
        .unwrap_err();
    assert!(matches!(again, Refusal::AlreadyRunning { .. }));
    let rollback = run
        .apply(Command::RollbackTo {
            step: id(&run.plan, PREFLIGHT),
            by: "alice".into(),
            reason: "x".into(),
        })
        .unwrap_err();
    assert!(matches!(rollback, Refusal::AnotherStepRunning { .. }));

    // While an undo runs, neither a new rollback nor a start is accepted.
    run.succeed(PREFLIGHT);
    run.walk_through(PAUSE);
    let rollback = |step: usize| Command::RollbackTo {
        step: id(&run.plan, step),
        by: "alice".into(),
        reason: "x".into(),
    };
    let first = rollback(BASE_BACKUP);
    let again = rollback(PREFLIGHT);
    run.apply(first).unwrap();
    let refusal = run.apply(again).unwrap_err();
    assert!(
        matches!(refusal, Refusal::RollbackInProgress { .. }),
        "{refusal:?}"
    );
    let start = start_command(&run.state, &run.plan, PROMOTE, &["alice"], vec![]);
    let refusal = run.apply(start).unwrap_err();
    assert!(
        matches!(refusal, Refusal::RollbackInProgress { .. }),
        "{refusal:?}"
    );
}

#[test]
fn replaying_the_journal_reproduces_the_live_state() {
    let mut run = Run::new(EngineSettings::default());
    run.walk_through(PROMOTE);
    run.apply(Command::Gate {
        step: id(&run.plan, PROMOTE),
        detail: "pg2 replay 0/3000100 ≥ pg1 current 0/3000100".into(),
        passed: true,
    })
    .unwrap();
    run.apply(Command::RollbackTo {
        step: id(&run.plan, PAUSE),
        by: "alice".into(),
        reason: "rehearsal".into(),
    })
    .unwrap();
    run.apply(Command::RollbackStepDone {
        step: id(&run.plan, PROMOTE),
    })
    .unwrap();
    run.apply(Command::RollbackStepDone {
        step: id(&run.plan, PAUSE),
    })
    .unwrap();
    run.walk_through(RESUME);
    run.apply(Command::Skip {
        step: id(&run.plan, DELETE),
        reason: "deleted by the DBA team tomorrow".into(),
        by: "bob".into(),
    })
    .unwrap();

    let replayed =
        EngineState::replay(&run.plan, run.state.settings, run.journal().iter()).unwrap();
    assert_eq!(replayed, run.state);

    // Every prefix of the journal replays to the state the run had at that point.
    let journal = run.journal();
    let mut live = Run::new(EngineSettings::default());
    live.walk_through(BASELINE);
    let prefix = journal_of(&live.effects);
    assert_eq!(&journal[..prefix.len()], prefix.as_slice());
    let replayed = EngineState::replay(&live.plan, live.state.settings, prefix.iter()).unwrap();
    assert_eq!(replayed, live.state);
}

#[test]
fn a_half_run_step_is_rechecked_on_resume_not_blindly_reapplied() {
    let mut run = Run::new(EngineSettings::default());
    run.walk_through(PAUSE);
    run.start(PROMOTE);
    // The process dies here: `started` is journaled, no terminal entry.
    let journal = run.journal();
    assert_eq!(journal.last().unwrap().kind, EntryKind::Started);

    let state = EngineState::replay(&run.plan, EngineSettings::default(), journal.iter()).unwrap();
    assert!(matches!(
        state.steps[PROMOTE],
        StepStatus::NeedsRecheck { .. }
    ));
    assert!(state.traffic_paused(), "the pause outlives the crash");
    assert_eq!(state.cursor, PROMOTE);

    let command = start_command(&state, &run.plan, PROMOTE, &["alice"], vec![]);
    let (state, effects) = apply(&state, &run.plan, at(100), command).unwrap();
    assert_eq!(
        effects.last(),
        Some(&Effect::RunAction {
            step: id(&run.plan, PROMOTE),
            resume_recheck: true
        })
    );
    let started = journal_of(&effects)
        .into_iter()
        .rfind(|e| e.kind == EntryKind::Started)
        .unwrap();
    assert!(started.detail.contains("re-check"), "{}", started.detail);
    assert!(matches!(state.steps[PROMOTE], StepStatus::Running { .. }));

    // A half-run undo resumes the same way.
    let mut run = Run::new(EngineSettings::default());
    run.walk_through(PROMOTE);
    run.apply(Command::RollbackTo {
        step: id(&run.plan, PAUSE),
        by: "alice".into(),
        reason: "x".into(),
    })
    .unwrap();
    let state =
        EngineState::replay(&run.plan, EngineSettings::default(), run.journal().iter()).unwrap();
    assert!(matches!(
        state.steps[PROMOTE],
        StepStatus::UndoNeedsRecheck { .. }
    ));
    let target = state.rollback.as_ref().unwrap().target;
    let (_, effects) = apply(
        &state,
        &run.plan,
        at(200),
        Command::RollbackTo {
            step: id(&run.plan, target),
            by: "alice".into(),
            reason: "resume".into(),
        },
    )
    .unwrap();
    assert_eq!(
        effects.last(),
        Some(&Effect::RunUndo {
            step: id(&run.plan, PROMOTE),
            resume_recheck: true
        })
    );
}

#[test]
fn replay_rejects_a_journal_from_another_plan() {
    let plan = plan();
    let entry = JournalEntry::new(
        at(1),
        Some(StepId::new("rename-db")),
        EntryKind::Started,
        "",
    );
    let error = EngineState::replay(&plan, EngineSettings::default(), [&entry]).unwrap_err();
    assert!(error.to_string().contains("rename-db"));
}

#[test]
fn every_action_is_journaled_before_it_runs() {
    let mut run = Run::new(EngineSettings::default());
    run.walk_through(PROMOTE);
    run.start(RESUME);
    run.apply(Command::PauseBoundExceeded {
        bound: Duration::from_secs(10),
        paused_for: Duration::from_secs(11),
    })
    .unwrap();
    for step in [RESUME, PROMOTE, PAUSE] {
        run.apply(Command::RollbackStepDone {
            step: id(&run.plan, step),
        })
        .unwrap();
    }
    run.walk_through(VACUUM);

    let mut actions = 0;
    for (position, effect) in run.effects.iter().enumerate() {
        let (step, kind) = match effect {
            Effect::RunAction { step, .. } => (step, EntryKind::Started),
            Effect::RunUndo { step, .. } => (step, EntryKind::UndoStarted),
            Effect::CancelAction { step } => (step, EntryKind::Failed),
            _ => continue,
        };
        actions += 1;
        match position.checked_sub(1).map(|p| &run.effects[p]) {
            Some(Effect::Journal(entry)) => {
                assert_eq!(entry.kind, kind, "{effect:?} preceded by {entry:?}");
                assert_eq!(entry.step.as_ref(), Some(step));
            }
            other => panic!("{effect:?} is not preceded by its journal entry: {other:?}"),
        }
    }
    assert!(actions >= 14, "only {actions} actions checked");
}

#[test]
fn the_fingerprint_covers_rendered_sql_params_and_version() {
    let base = plan();
    let fingerprint = base.fingerprint();
    assert_eq!(fingerprint.len(), 64);
    assert!(fingerprint
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(fingerprint, plan().fingerprint(), "deterministic");

    let mut changed_sql = plan();
    changed_sql.steps[DELETE].commands[0].text = changed_sql.steps[DELETE].commands[0]
        .text
        .replace("10000", "10001");
    let mut changed_param = plan();
    changed_param.params.insert("shards".into(), "1-3".into());
    let mut changed_version = plan();
    changed_version.tool_version = "0.0.1".into();
    let mut changed_inventory = plan();
    changed_inventory.inventory_yaml.push_str("# x\n");
    let mut changed_flag = plan();
    changed_flag.steps[VACUUM].flags.destructive = true;
    let mut changed_undo = plan();
    changed_undo.steps[PROMOTE].undo = Undo::NothingToUndo;
    // Moving text between adjacent fields must change the encoding too.
    let mut shifted = plan();
    shifted.runbook = "shard-spli".into();
    shifted.tool_version = format!("t{}", shifted.tool_version);
    for (what, other) in [
        ("sql", changed_sql),
        ("param", changed_param),
        ("version", changed_version),
        ("inventory", changed_inventory),
        ("flag", changed_flag),
        ("undo", changed_undo),
        ("field boundary", shifted),
    ] {
        assert_ne!(
            other.fingerprint(),
            fingerprint,
            "{what} must change the fingerprint"
        );
    }
}

#[test]
fn the_plan_round_trips_through_json_with_stable_field_names() {
    let plan = plan();
    let json = plan.to_json().unwrap();
    for field in [
        "\"environment\"",
        "\"runbook\"",
        "\"params\"",
        "\"inventory_yaml\"",
        "\"tool_version\"",
        "\"needs_traffic_stopped\"",
        "\"destructive\"",
        "\"pauses_traffic\"",
        "\"resumes_traffic\"",
        "\"kind\": \"point_of_no_return\"",
        "\"kind\": \"pgbouncer_admin\"",
        "\"verification\"",
    ] {
        assert!(json.contains(field), "missing {field}");
    }
    assert_eq!(Plan::from_json(&json).unwrap(), plan);
}

#[test]
fn the_plan_reads_as_markdown_for_review() {
    let plan = plan();
    let markdown = plan.to_markdown();
    assert!(markdown.contains(&plan.fingerprint()));
    assert!(markdown.contains("**POINT OF NO RETURN:**"));
    insta::assert_snapshot!("plan_markdown", markdown);
}

#[test]
fn a_plan_built_from_an_inventory_pins_its_values_not_its_formatting() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/lab.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let build = |text: &str| {
        let inventory = cutover::inventory::parse(text, "lab.yaml").unwrap();
        Plan::new(&inventory, "shard-split", plan().params, plan().steps).unwrap()
    };
    let original = build(&text);
    assert_eq!(original.environment, "lab");
    assert_eq!(original.tool_version, cutover::plan::TOOL_VERSION);

    let reformatted = format!(
        "# reviewed by alice\n{}\n\n",
        text.replace("port: 54321", "port:   54321")
    );
    assert_eq!(build(&reformatted).fingerprint(), original.fingerprint());
    let changed = text.replace("port: 54321", "port: 54329");
    assert_ne!(build(&changed).fingerprint(), original.fingerprint());

    let inventory = cutover::inventory::parse(&text, "lab.yaml").unwrap();
    let mut steps = plan().steps;
    steps.push(steps[0].clone());
    let duplicate = Plan::new(&inventory, "shard-split", BTreeMap::new(), steps).unwrap_err();
    assert!(duplicate.to_string().contains("preflight"), "{duplicate}");
}

/// After a crash mid-copy, the re-check stops only the live `pg_basebackup`s copying into the
/// target's own data directory: not another directory's, not a zombie, not a look-alike.
#[test]
fn an_interrupted_copy_is_recognised_by_its_target_directory() {
    use cutover::runbooks::shard_split::plan::{Split, SplitParams};
    let inventory = cutover::inventory::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/inventories/lab.yaml"
    )))
    .unwrap();
    let params: BTreeMap<String, String> = [
        ("from", "p1"),
        ("to", "p2"),
        ("node", "pg2"),
        ("shards", "512-1023"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let split = Split::resolve(&inventory, SplitParams::from_map(&params).unwrap()).unwrap();
    let dir = &split.target.data_dir;
    let bin = &split.target.bin_dir;
    let ours = format!("  4242 S    {bin}/pg_basebackup -h 127.0.0.1 -p 5432 -U postgres -D {dir} -R -C -S cutover_p2 -X stream -c fast -P");
    assert_eq!(split.copies_into_target(&ours), Some("4242"));
    let at_end = format!("4243 S pg_basebackup -X stream -D {dir}");
    assert_eq!(split.copies_into_target(&at_end), Some("4243"));
    for other in [
        format!("4244 Z {bin}/pg_basebackup -D {dir} -R"),
        format!("4245 S {bin}/pg_basebackup -D {dir}-old -R"),
        format!("4246 S {bin}/pg_dump -D {dir} -R"),
        format!("4247 S sh -c echo pg_basebackup -D {dir}"),
        format!("12;x S {bin}/pg_basebackup -D {dir} -R"),
    ] {
        assert_eq!(split.copies_into_target(&other), None, "{other}");
    }
}
