//! The pause bound covers every await while traffic is paused, reads of live state included:
//! a precondition or observation read that never returns while paused is cancelled, traffic
//! resumes and the run rolls back to before the pause, exactly as for an overrunning action.
//! The runner is driven with a fake `Actions` (the engine and runner logic under test; no
//! server is involved), and nothing here sleeps: the reads block until cancelled.

use cutover::engine::{EngineSettings, Observation, PreconditionResult, StepStatus};
use cutover::executor::{Actions, RunError, Runner, Sink, StepError};
use cutover::journal::Journal;
use cutover::plan::{Plan, RenderedCommand, Step, StepFlags, Undo};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Which read blocks while traffic is paused.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Blocking {
    Preconditions,
    Observations,
}

#[derive(Clone)]
struct Fake {
    blocking: Blocking,
    bound: Duration,
    paused: Arc<AtomicBool>,
    undos: Arc<AtomicUsize>,
    forced_resumes: Arc<AtomicUsize>,
    /// Notified when a blocking read has begun.
    read_blocked: Arc<Notify>,
}

impl Fake {
    fn new(blocking: Blocking, bound: Duration) -> Self {
        Fake {
            blocking,
            bound,
            paused: Arc::new(AtomicBool::new(false)),
            undos: Arc::new(AtomicUsize::new(0)),
            forced_resumes: Arc::new(AtomicUsize::new(0)),
            read_blocked: Arc::new(Notify::new()),
        }
    }

    /// Never returns while traffic is paused: a lock held on what the read needs.
    async fn read(&self, which: Blocking) {
        if self.blocking == which && self.paused.load(Ordering::SeqCst) {
            self.read_blocked.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

impl Actions for Fake {
    async fn preconditions(&mut self, step: &Step) -> Vec<PreconditionResult> {
        self.read(Blocking::Preconditions).await;
        step.preconditions
            .iter()
            .map(|p| PreconditionResult {
                id: p.id.clone(),
                holds: true,
                detail: "holds".into(),
            })
            .collect()
    }

    async fn observations(&mut self, step: &Step) -> Vec<Observation> {
        self.read(Blocking::Observations).await;
        vec![Observation::new("step", step.id.to_string())]
    }

    async fn action(
        &mut self,
        step: &Step,
        _recheck: bool,
        _sink: Sink,
    ) -> Result<String, StepError> {
        match step.id.as_str() {
            "pause" => self.paused.store(true, Ordering::SeqCst),
            "resume" => self.paused.store(false, Ordering::SeqCst),
            _ => {}
        }
        Ok(format!("{} done", step.id))
    }

    async fn undo(
        &mut self,
        step: &Step,
        _recheck: bool,
        _sink: Sink,
    ) -> Result<String, StepError> {
        self.undos.fetch_add(1, Ordering::SeqCst);
        if step.id.as_str() == "pause" {
            self.paused.store(false, Ordering::SeqCst);
        }
        Ok("undone".into())
    }

    async fn force_resume(&mut self, _sink: Sink) -> Result<String, StepError> {
        self.forced_resumes.fetch_add(1, Ordering::SeqCst);
        self.paused.store(false, Ordering::SeqCst);
        Ok("resumed".into())
    }

    fn pause_bound(&self) -> Duration {
        self.bound
    }

    fn resume_is_safe(&self, _plan: &Plan, _state: &cutover::engine::EngineState) -> bool {
        true
    }
}

/// pause → check (reads while paused) → resume.
fn plan() -> Plan {
    let steps = vec![
        Step::new("pause", "Pause traffic")
            .command(RenderedCommand::pgbouncer_admin("pgb", "PAUSE app;"))
            .undo(Undo::Reversible {
                description: "resume traffic".into(),
                commands: vec![RenderedCommand::pgbouncer_admin("pgb", "RESUME app;")],
            })
            .flags(StepFlags {
                pauses_traffic: true,
                ..StepFlags::default()
            }),
        Step::new("check", "Read while paused")
            .command(RenderedCommand::sql("pg1", "postgres", "SELECT 1;"))
            .precondition("readable", "the table can be read"),
        Step::new("resume", "Resume traffic")
            .command(RenderedCommand::pgbouncer_admin("pgb", "RESUME app;"))
            .flags(StepFlags {
                resumes_traffic: true,
                ..StepFlags::default()
            }),
    ];
    Plan {
        environment: "lab".into(),
        runbook: "pause-bound-test".into(),
        params: BTreeMap::new(),
        inventory_yaml: "environment: lab\n".into(),
        steps,
        tool_version: "0.0.0-test".into(),
    }
}

fn open(state: &tempfile::TempDir, fake: Fake) -> Runner<Fake> {
    let journal = Journal::open(state.path()).unwrap();
    Runner::open(journal, plan(), EngineSettings::default(), |_| Ok(fake)).unwrap()
}

fn assert_rolled_back(runner: &Runner<Fake>, fake: &Fake) {
    assert!(
        !runner.state.traffic_paused(),
        "the run still counts as paused"
    );
    assert!(
        !fake.paused.load(Ordering::SeqCst),
        "traffic was left paused"
    );
    assert!(
        matches!(runner.state.steps[0], StepStatus::RolledBack { .. }),
        "the pause was not rolled back: {:?}",
        runner.state.steps[0]
    );
    assert!(
        matches!(runner.state.steps[1], StepStatus::Pending),
        "the step whose read overran must not have started: {:?}",
        runner.state.steps[1]
    );
    assert_eq!(
        fake.undos.load(Ordering::SeqCst),
        1,
        "the pause step is undone once"
    );
}

/// Run headless; a read left unbounded would hang, so a generous outer limit makes it fail.
async fn headless(runner: &mut Runner<Fake>) -> Result<cutover::executor::Progress, RunError> {
    tokio::time::timeout(Duration::from_secs(60), runner.run_headless("test"))
        .await
        .expect("the read while paused was never cancelled")
}

fn journal_text(runner: &Runner<Fake>) -> String {
    runner
        .journal()
        .entries(&runner.run_id)
        .unwrap()
        .iter()
        .map(|e| format!("{:?} {}", e.kind, e.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn an_observation_that_overruns_the_pause_bound_rolls_back() {
    let state = tempfile::tempdir().unwrap();
    let fake = Fake::new(Blocking::Observations, Duration::from_millis(300));
    let mut runner = open(&state, fake.clone());

    let error = headless(&mut runner).await.expect_err("the bound fires");

    assert!(
        matches!(error, RunError::PauseBoundExceeded { bound_ms: 300 }),
        "{error}"
    );
    assert_rolled_back(&runner, &fake);
    assert!(
        fake.forced_resumes.load(Ordering::SeqCst) >= 1,
        "routing was untouched: resume first"
    );
    let record = journal_text(&runner);
    assert!(record.contains("overran the pause bound"), "{record}");
}

#[tokio::test]
async fn a_precondition_read_that_overruns_the_pause_bound_rolls_back() {
    let state = tempfile::tempdir().unwrap();
    let fake = Fake::new(Blocking::Preconditions, Duration::from_millis(300));
    let mut runner = open(&state, fake.clone());

    let error = headless(&mut runner).await.expect_err("the bound fires");

    assert!(
        matches!(error, RunError::PauseBoundExceeded { .. }),
        "{error}"
    );
    assert_rolled_back(&runner, &fake);
}

#[tokio::test]
async fn a_stop_during_a_read_while_paused_ends_the_pause() {
    let state = tempfile::tempdir().unwrap();
    // A bound far away: only the stop can end the read.
    let fake = Fake::new(Blocking::Observations, Duration::from_secs(600));
    let mut runner = open(&state, fake.clone());
    let stop = runner.stop_handle();
    let blocked = fake.read_blocked.clone();
    tokio::spawn(async move {
        blocked.notified().await;
        stop.stop("SIGTERM received");
    });

    let error = headless(&mut runner)
        .await
        .expect_err("the stop ends the run");

    assert!(matches!(error, RunError::Stopped { .. }), "{error}");
    assert_rolled_back(&runner, &fake);
    let record = journal_text(&runner);
    assert!(
        record.contains("SIGTERM received while traffic was paused"),
        "{record}"
    );
}
