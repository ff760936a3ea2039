//! The paused window in the cockpit: confirmed once, it runs through the resume at machine
//! speed; one request aborts it (traffic resumes, the run rolls back); after the bound ends a
//! pause the view says traffic resumed and a rollback runs. Steps that remove the way back run
//! only when named and after the plan's soak; a run that never confirmed a step leaves nothing.
//! The cockpit bridge and the runner are driven with a fake `Actions` (no server involved).

use cutover::engine::{EngineSettings, Observation, PreconditionResult, StepStatus};
use cutover::executor::{Actions, Progress, RunError, Runner, Sink, StepError};
use cutover::journal::Journal;
use cutover::plan::{Plan, RenderedCommand, Step, StepFlags, Undo};
use cutover::ui::model::{ConfirmationView, RunbookUpdate, RunbookView, UiRequest};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

#[derive(Clone)]
struct Fake {
    bound: Duration,
    /// The `hold` step blocks until cancelled (abort or bound).
    hold_blocks: bool,
    /// How long the undo of `pause` takes.
    undo_takes: Duration,
    paused: Arc<AtomicBool>,
    actions: Arc<AtomicUsize>,
    undos: Arc<AtomicUsize>,
    held: Arc<Notify>,
}

impl Fake {
    fn new(bound: Duration) -> Self {
        Fake {
            bound,
            hold_blocks: false,
            undo_takes: Duration::ZERO,
            paused: Arc::new(AtomicBool::new(false)),
            actions: Arc::new(AtomicUsize::new(0)),
            undos: Arc::new(AtomicUsize::new(0)),
            held: Arc::new(Notify::new()),
        }
    }
}

impl Actions for Fake {
    async fn preconditions(&mut self, step: &Step) -> Vec<PreconditionResult> {
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
        vec![Observation::new("step", step.id.to_string())]
    }

    async fn action(
        &mut self,
        step: &Step,
        _recheck: bool,
        _sink: Sink,
    ) -> Result<String, StepError> {
        self.actions.fetch_add(1, Ordering::SeqCst);
        match step.id.as_str() {
            "pause" => self.paused.store(true, Ordering::SeqCst),
            "resume" => self.paused.store(false, Ordering::SeqCst),
            "hold" if self.hold_blocks => {
                self.held.notify_one();
                std::future::pending::<()>().await;
            }
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
            tokio::time::sleep(self.undo_takes).await;
            self.paused.store(false, Ordering::SeqCst);
        }
        Ok("undone".into())
    }

    async fn force_resume(&mut self, _sink: Sink) -> Result<String, StepError> {
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

/// check → pause → hold → resume → retire (removes the way back, one hour of soak).
fn plan() -> Plan {
    let steps = vec![
        Step::new("check", "Check before the window"),
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
        Step::new("hold", "Work while paused")
            .command(RenderedCommand::sql("pg1", "postgres", "SELECT 1;"))
            .precondition("gate", "the gate holds")
            .flags(StepFlags {
                needs_traffic_stopped: true,
                ..StepFlags::default()
            }),
        Step::new("resume", "Resume traffic")
            .command(RenderedCommand::pgbouncer_admin("pgb", "RESUME app;"))
            .flags(StepFlags {
                resumes_traffic: true,
                ..StepFlags::default()
            }),
        Step::new("retire", "Delete the old side")
            .command(RenderedCommand::shell("db1", "rm -rf /old"))
            .undo(Undo::PointOfNoReturn {
                reason: "the old side is gone".into(),
            })
            .flags(StepFlags {
                destructive: true,
                removes_way_back: true,
                min_soak_secs: 3600,
                ..StepFlags::default()
            }),
    ];
    Plan {
        environment: "lab".into(),
        runbook: "paused-window-test".into(),
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

fn journal_text(state: &tempfile::TempDir) -> String {
    let journal = Journal::open(state.path()).unwrap();
    let run = journal.runs().unwrap().into_iter().next().expect("a run");
    journal
        .entries(&run.run_id)
        .unwrap()
        .iter()
        .map(|e| format!("{:?} {:?} {}", e.kind, e.step, e.detail))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The bridge, with the first step (`check`) already done headless.
struct Bridge {
    requests: mpsc::Sender<UiRequest>,
    updates: mpsc::Receiver<RunbookUpdate>,
    task: tokio::task::JoinHandle<()>,
    views: Vec<RunbookView>,
}

impl Bridge {
    async fn start(state: &tempfile::TempDir, fake: Fake) -> Bridge {
        let mut runner = open(state, fake);
        runner
            .run_headless_through("test", Some(&"check".into()))
            .await
            .unwrap();
        let bound = Actions::pause_bound(runner.actions());
        let (requests, requests_rx) = mpsc::channel(8);
        let (updates_tx, updates) = mpsc::channel(256);
        let task = tokio::spawn(cutover::cockpit::serve(
            runner,
            requests_rx,
            updates_tx,
            bound,
        ));
        let mut bridge = Bridge {
            requests,
            updates,
            task,
            views: Vec::new(),
        };
        // The first view comes after the next step was evaluated (its confirmation binding).
        bridge
            .until(|v| v.steps[1].binding.len() == 12)
            .await
            .expect("the window's first step is evaluated");
        bridge
    }

    /// Collect views until one matches; `Err` with the refusals seen if the bridge ends first.
    async fn until(&mut self, done: impl Fn(&RunbookView) -> bool) -> Result<RunbookView, String> {
        let mut refused = Vec::new();
        loop {
            let update = tokio::time::timeout(Duration::from_secs(20), self.updates.recv())
                .await
                .map_err(|_| format!("timed out; refusals: {refused:?}"))?;
            match update {
                Some(RunbookUpdate::View(view)) => {
                    self.views.push(view.clone());
                    if done(&view) {
                        return Ok(view);
                    }
                }
                Some(RunbookUpdate::Refused(message)) => refused.push(message),
                Some(
                    RunbookUpdate::Info(_)
                    | RunbookUpdate::PairWait(_)
                    | RunbookUpdate::PairRequest(_),
                ) => {}
                None => return Err(format!("the bridge ended; refusals: {refused:?}")),
            }
        }
    }

    async fn run_window(&self) {
        self.requests
            .send(UiRequest::RunWindow {
                step: 1,
                confirmation: ConfirmationView {
                    by: vec!["alice".into()],
                    seen: String::new(),
                },
            })
            .await
            .unwrap();
    }

    async fn quit(self) {
        let _ = self.requests.send(UiRequest::Quit).await;
        drop(self.requests);
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the bridge ends")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_confirmation_runs_the_whole_window_through_the_resume() {
    let state = tempfile::tempdir().unwrap();
    let fake = Fake::new(Duration::from_secs(30));
    let mut bridge = Bridge::start(&state, fake.clone()).await;
    bridge.run_window().await;
    let view = bridge
        .until(|v| v.steps[3].status == cutover::ui::model::StepStatusView::Done)
        .await
        .unwrap();
    assert!(view.traffic_paused_since.is_none(), "traffic flows again");
    assert!(
        bridge
            .views
            .iter()
            .any(|v| v.window_running == Some((1, 3))),
        "the views mark the window as running"
    );
    assert_eq!(
        view.steps[4].status,
        cutover::ui::model::StepStatusView::Pending,
        "the window ends at the resume"
    );
    bridge.quit().await;
    assert!(!fake.paused.load(Ordering::SeqCst));
    let journal = journal_text(&state);
    assert_eq!(
        journal.matches("confirmed once by alice").count(),
        1,
        "{journal}"
    );
    for step in ["pause", "hold", "resume"] {
        assert!(
            journal.contains(&format!("Confirmed Some(StepId(\"{step}\"))")),
            "{step} confirmed against fresh readings:\n{journal}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_abort_request_resumes_traffic_and_rolls_back_the_window() {
    let state = tempfile::tempdir().unwrap();
    let mut fake = Fake::new(Duration::from_secs(30));
    fake.hold_blocks = true;
    let mut bridge = Bridge::start(&state, fake.clone()).await;
    let held = fake.held.clone();
    let waiting = tokio::spawn(async move { held.notified().await });
    bridge.run_window().await;
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the window reaches the held step")
        .unwrap();
    assert!(
        fake.paused.load(Ordering::SeqCst),
        "paused inside the window"
    );
    bridge.requests.send(UiRequest::AbortWindow).await.unwrap();
    let view = bridge
        .until(|v| v.steps[1].status == cutover::ui::model::StepStatusView::RolledBack)
        .await
        .unwrap();
    assert!(view.traffic_paused_since.is_none());
    bridge.quit().await;
    assert!(!fake.paused.load(Ordering::SeqCst), "traffic resumed");
    assert_eq!(fake.undos.load(Ordering::SeqCst), 1, "the pause was undone");
    let journal = journal_text(&state);
    assert!(
        journal.contains("the operator aborted the paused window"),
        "{journal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_bound_the_view_says_traffic_resumed_and_a_rollback_runs() {
    let state = tempfile::tempdir().unwrap();
    let mut fake = Fake::new(Duration::from_millis(300));
    fake.hold_blocks = true;
    fake.undo_takes = Duration::from_millis(1500);
    let mut bridge = Bridge::start(&state, fake.clone()).await;
    bridge.run_window().await;
    let during = bridge
        .until(|v| v.rolling_back.is_some() && v.traffic_paused_since.is_none())
        .await
        .expect("a view while the rollback runs");
    assert!(
        during
            .rolling_back
            .as_deref()
            .unwrap_or("")
            .contains("bound"),
        "{:?}",
        during.rolling_back
    );
    // The header of the cockpit shows it.
    let model = {
        let mut model = cutover::ui::fixtures::model(std::time::Instant::now());
        model.runbook = Some(during.clone());
        model
    };
    let theme = cutover::ui::Theme::builtin("dark").unwrap();
    let backend = ratatui::backend::TestBackend::new(160, 48);
    let mut terminal = ratatui::Terminal::new(backend).unwrap();
    terminal
        .draw(|frame| cutover::ui::render::render(frame, &model, &theme))
        .unwrap();
    let screen: String = terminal
        .backend()
        .buffer()
        .content()
        .iter()
        .map(|c| c.symbol())
        .collect();
    assert!(
        screen.contains("TRAFFIC RESUMED · ROLLBACK RUNNING"),
        "{screen}"
    );
    assert!(!screen.contains("TRAFFIC PAUSED"), "{screen}");
    bridge
        .until(|v| v.steps[1].status == cutover::ui::model::StepStatusView::RolledBack)
        .await
        .unwrap();
    bridge.quit().await;
}

#[tokio::test]
async fn headless_holds_before_the_step_that_removes_the_way_back_and_the_soak_refuses_it() {
    let state = tempfile::tempdir().unwrap();
    let fake = Fake::new(Duration::from_secs(30));
    let mut runner = open(&state, fake);
    let progress = runner.run_headless("test").await.unwrap();
    assert_eq!(
        progress,
        Progress::HeldBefore {
            step: "retire".into()
        }
    );
    let error = runner
        .run_headless_through("test", Some(&"retire".into()))
        .await
        .expect_err("refused during the soak");
    match error {
        RunError::Refused { refusal, .. } => assert!(
            matches!(
                refusal,
                cutover::engine::Refusal::SoakNotOver {
                    min_soak_secs: 3600,
                    ..
                }
            ),
            "{refusal}"
        ),
        other => panic!("expected the soak refusal: {other}"),
    }
    assert!(matches!(runner.state.steps[4], StepStatus::Pending));
}

#[tokio::test]
async fn a_run_without_a_confirmed_step_leaves_no_record() {
    let state = tempfile::tempdir().unwrap();
    let runner = open(&state, Fake::new(Duration::from_secs(30)));
    drop(runner);
    let journal = Journal::open(state.path()).unwrap();
    assert!(journal.runs().unwrap().is_empty(), "no run was recorded");
    let mut runner = open(&state, Fake::new(Duration::from_secs(30)));
    runner
        .run_headless_through("test", Some(&"check".into()))
        .await
        .unwrap();
    assert_eq!(
        journal.runs().unwrap().len(),
        1,
        "the first step records it"
    );
}
