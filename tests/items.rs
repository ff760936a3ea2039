//! Items within a step: the pure engine's item transitions, replay after a crash mid-items,
//! the concurrency limit and the failure policy; then the runner driving a step's items
//! against a fake `Actions` and a real journal; and a corrupt run memory refusing to open.

use chrono::{DateTime, TimeZone, Utc};
use cutover::engine::{
    apply, required_confirmation, Command, Confirmation, Effect, EngineSettings, EngineState,
    EntryKind, ItemId, ItemStatus, JournalEntry, Observation, OnItemFailure, PreconditionResult,
    Refusal, StepStatus,
};
use cutover::executor::{Actions, ItemAttempt, ItemFuture, RunError, Runner, Sink, StepItems};
use cutover::journal::Journal;
use cutover::plan::{Plan, RenderedCommand, Step, StepId, Undo};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PREPARE: usize = 0;
const COPY: usize = 1;

/// A table copy in miniature: prepare, then copy table by table.
fn plan() -> Plan {
    Plan {
        environment: "lab".into(),
        runbook: "table-copy".into(),
        params: BTreeMap::new(),
        inventory_yaml: "environment: lab\n".into(),
        steps: vec![
            Step::new("prepare", "Create the target schema")
                .command(RenderedCommand::sql("pg2", "app", "CREATE SCHEMA app;"))
                .verification("schema exists"),
            Step::new("copy", "Copy every table")
                .command(RenderedCommand::shell("pg2", "copy-table TABLE"))
                .verification("row counts match")
                .undo(Undo::Reversible {
                    description: "truncate the copied tables".into(),
                    commands: vec![RenderedCommand::sql("pg2", "app", "TRUNCATE app.t;")],
                }),
        ],
        tool_version: "0.0.0-test".into(),
    }
}

fn at(second: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::seconds(second)
}

fn item(name: &str) -> ItemId {
    ItemId::new(name)
}

fn items(names: &[&str]) -> Vec<ItemId> {
    names.iter().map(|n| item(n)).collect()
}

/// Drives the engine like an executor that never fails on its own.
struct Run {
    plan: Plan,
    state: EngineState,
    effects: Vec<Effect>,
    clock: i64,
}

impl Run {
    fn new() -> Self {
        let plan = plan();
        let state = EngineState::new(&plan, EngineSettings::default());
        Run {
            plan,
            state,
            effects: Vec::new(),
            clock: 0,
        }
    }
    fn resumed(plan: Plan, journal: &[JournalEntry]) -> Self {
        let state = EngineState::replay(&plan, EngineSettings::default(), journal.iter()).unwrap();
        Run {
            plan,
            state,
            effects: journal.iter().cloned().map(Effect::Journal).collect(),
            clock: 1000,
        }
    }
    fn apply(&mut self, command: Command) -> Result<Vec<Effect>, Refusal> {
        self.clock += 1;
        let (state, effects) = apply(&self.state, &self.plan, at(self.clock), command)?;
        self.state = state;
        self.effects.extend(effects.clone());
        Ok(effects)
    }
    fn step(&self, index: usize) -> StepId {
        self.plan.steps[index].id.clone()
    }
    fn start(&mut self, index: usize) -> Vec<Effect> {
        let step = self.step(index);
        let observations: Vec<Observation> = Vec::new();
        let requirement =
            required_confirmation(&self.state, &self.plan, &step, &observations).unwrap();
        let precondition_results: Vec<PreconditionResult> = Vec::new();
        self.apply(Command::Start {
            step,
            confirmation: Some(Confirmation {
                by: vec!["alice".into()],
                seen: requirement.seen,
                approval: None,
            }),
            precondition_results,
            observations,
        })
        .unwrap()
    }
    fn succeed(&mut self, index: usize) -> Result<Vec<Effect>, Refusal> {
        let step = self.step(index);
        self.apply(Command::ActionSucceeded {
            step,
            verification_detail: "verified".into(),
        })
    }
    /// Prepare done, copy running with `names` declared.
    fn copying(names: &[&str]) -> Self {
        let mut run = Run::new();
        run.start(PREPARE);
        run.succeed(PREPARE).unwrap();
        run.start(COPY);
        run.declare(names);
        run
    }
    fn declare(&mut self, names: &[&str]) -> Vec<Effect> {
        let step = self.step(COPY);
        self.apply(Command::DeclareItems {
            step,
            items: items(names),
        })
        .unwrap()
    }
    /// The items `StartItems` started, as (item, attempt, recheck).
    fn start_items(&mut self, limit: usize, on_failure: OnItemFailure) -> Vec<(String, u32, bool)> {
        let step = self.step(COPY);
        let effects = self
            .apply(Command::StartItems {
                step,
                limit,
                on_failure,
            })
            .unwrap();
        assert_journal_precedes_each_run_item(&effects);
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::RunItem {
                    item,
                    attempt,
                    recheck,
                    ..
                } => Some((item.to_string(), *attempt, *recheck)),
                _ => None,
            })
            .collect()
    }
    fn item_done(&mut self, name: &str) -> Result<Vec<Effect>, Refusal> {
        let step = self.step(COPY);
        self.apply(Command::ItemSucceeded {
            step,
            item: item(name),
            detail: format!("{name}: 10 rows"),
        })
    }
    fn item_failed(&mut self, name: &str) -> Result<Vec<Effect>, Refusal> {
        let step = self.step(COPY);
        self.apply(Command::ItemFailed {
            step,
            item: item(name),
            reason: format!("{name}: connection reset"),
        })
    }
    fn status(&self, name: &str) -> &'static str {
        self.state
            .items(COPY)
            .iter()
            .find(|i| i.id.as_str() == name)
            .map_or("absent", |i| i.status.label())
    }
    fn journal(&self) -> Vec<JournalEntry> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Journal(entry) => Some(entry.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Every `RunItem` comes right after the `item_started` entry of the same item and attempt.
fn assert_journal_precedes_each_run_item(effects: &[Effect]) {
    for (n, effect) in effects.iter().enumerate() {
        if let Effect::RunItem { step, item, .. } = effect {
            let Some(Effect::Journal(entry)) = n.checked_sub(1).map(|p| &effects[p]) else {
                panic!("RunItem for {item} is not preceded by its journal entry: {effects:?}");
            };
            assert_eq!(entry.kind, EntryKind::ItemStarted);
            assert_eq!(entry.item.as_ref(), Some(item));
            assert_eq!(entry.step.as_ref(), Some(step));
        }
    }
}

fn started(list: &[(String, u32, bool)]) -> Vec<&str> {
    list.iter().map(|(name, _, _)| name.as_str()).collect()
}

#[test]
fn items_are_declared_once_started_in_order_and_the_step_verifies_only_when_all_are_done() {
    let mut run = Run::copying(&["t1", "t2", "t3"]);
    // Declaring again (a re-checked step finds its items again) adds only new ones.
    let effects = run.declare(&["t2", "t3", "t4", "t4"]);
    assert_eq!(effects.len(), 1, "{effects:?}");
    assert_eq!(
        run.state
            .items(COPY)
            .iter()
            .map(|i| i.id.to_string())
            .collect::<Vec<_>>(),
        ["t1", "t2", "t3", "t4"]
    );
    assert!(run.state.items(PREPARE).is_empty());

    let first = run.start_items(2, OnItemFailure::Stop);
    assert_eq!(
        first,
        [("t1".to_string(), 1, false), ("t2".to_string(), 1, false)]
    );
    assert_eq!(run.status("t1"), "running");
    assert_eq!(run.status("t3"), "pending");
    assert_eq!(
        run.succeed(COPY),
        Err(Refusal::ItemsUnfinished {
            step: run.step(COPY),
            unfinished: 4,
            total: 4
        })
    );
    run.item_done("t1").unwrap();
    assert_eq!(run.status("t1"), "done");
    assert_eq!(started(&run.start_items(2, OnItemFailure::Stop)), ["t3"]);
    for name in ["t2", "t3"] {
        run.item_done(name).unwrap();
    }
    assert_eq!(started(&run.start_items(2, OnItemFailure::Stop)), ["t4"]);
    run.item_done("t4").unwrap();
    assert!(run.start_items(2, OnItemFailure::Stop).is_empty());
    let effects = run.succeed(COPY).unwrap();
    assert!(effects.contains(&Effect::RunCompleted));

    let journal = run.journal();
    let done: Vec<_> = journal
        .iter()
        .filter(|e| e.kind == EntryKind::ItemDone)
        .map(|e| e.item.clone().unwrap().to_string())
        .collect();
    assert_eq!(done, ["t1", "t2", "t3", "t4"]);
    let replayed =
        EngineState::replay(&run.plan, EngineSettings::default(), journal.iter()).unwrap();
    assert_eq!(replayed, run.state);
}

#[test]
fn item_commands_are_refused_unless_the_item_is_running_in_a_running_step() {
    let mut run = Run::copying(&["t1", "t2"]);
    let step = run.step(COPY);
    assert_eq!(
        run.item_done("t9"),
        Err(Refusal::UnknownItem {
            step: step.clone(),
            item: item("t9")
        })
    );
    assert_eq!(
        run.item_done("t1"),
        Err(Refusal::ItemNotRunning {
            step: step.clone(),
            item: item("t1"),
            status: "pending"
        })
    );
    run.start_items(1, OnItemFailure::Stop);
    run.item_done("t1").unwrap();
    assert_eq!(
        run.item_failed("t1"),
        Err(Refusal::ItemNotRunning {
            step: step.clone(),
            item: item("t1"),
            status: "done"
        })
    );
    let prepare = run.step(PREPARE);
    assert!(matches!(
        run.apply(Command::DeclareItems {
            step: prepare,
            items: items(&["x"])
        }),
        Err(Refusal::NotRunning { .. })
    ));
}

#[test]
fn no_more_than_the_limit_run_at_once() {
    let names: Vec<String> = (1..=10).map(|n| format!("t{n:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut run = Run::copying(&refs);
    assert_eq!(
        run.state.next_items(COPY, 4, OnItemFailure::Stop),
        items(&["t01", "t02", "t03", "t04"])
    );
    assert_eq!(run.start_items(4, OnItemFailure::Stop).len(), 4);
    assert!(run.start_items(4, OnItemFailure::Stop).is_empty());
    run.item_done("t03").unwrap();
    assert_eq!(started(&run.start_items(4, OnItemFailure::Stop)), ["t05"]);
    // A lower limit than what runs starts nothing, and stops nothing.
    assert!(run.start_items(2, OnItemFailure::Stop).is_empty());
    let running = run
        .state
        .items(COPY)
        .iter()
        .filter(|i| matches!(i.status, ItemStatus::Running { .. }))
        .count();
    assert_eq!(running, 4);
}

#[test]
fn after_a_failure_stop_starts_nothing_new_but_running_items_finish() {
    let mut run = Run::copying(&["t1", "t2", "t3", "t4", "t5"]);
    run.start_items(3, OnItemFailure::Stop);
    run.item_failed("t2").unwrap();
    assert_eq!(run.status("t2"), "failed");
    assert!(run.start_items(3, OnItemFailure::Stop).is_empty());
    assert!(run
        .state
        .next_items(COPY, 3, OnItemFailure::Stop)
        .is_empty());
    run.item_done("t1").unwrap();
    run.item_done("t3").unwrap();
    assert!(run.start_items(3, OnItemFailure::Stop).is_empty());
    // Continue keeps going past the failure, and never retries it within this start.
    assert_eq!(
        started(&run.start_items(3, OnItemFailure::Continue)),
        ["t4", "t5"]
    );
    run.item_done("t4").unwrap();
    run.item_done("t5").unwrap();
    assert!(run.start_items(3, OnItemFailure::Continue).is_empty());
    assert!(matches!(
        run.succeed(COPY),
        Err(Refusal::ItemsUnfinished { unfinished: 1, .. })
    ));
    let step = run.step(COPY);
    run.apply(Command::ActionFailed {
        step,
        reason: "1 of 5 items failed".into(),
    })
    .unwrap();

    // The next start of the step retries only the failed item, re-checking it.
    run.start(COPY);
    assert_eq!(run.status("t2"), "needs recheck");
    assert_eq!(
        run.start_items(3, OnItemFailure::Stop),
        [("t2".to_string(), 2, true)]
    );
    run.item_done("t2").unwrap();
    run.succeed(COPY).unwrap();
}

impl Run {
    fn retry(&mut self, name: &str) -> Result<Vec<Effect>, Refusal> {
        let step = self.step(COPY);
        self.apply(Command::RetryItem {
            step,
            item: item(name),
            by: vec!["alice (uid 1001)".into()],
        })
    }
}

#[test]
fn a_retry_mid_step_starts_the_failed_item_again_keeping_its_attempts() {
    let mut run = Run::copying(&["t1", "t2", "t3", "t4", "t5"]);
    run.start_items(2, OnItemFailure::Stop);
    run.item_failed("t1").unwrap();
    // Stopped: nothing new starts while t2 runs.
    assert!(run.start_items(2, OnItemFailure::Stop).is_empty());
    let effects = run.retry("t1").unwrap();
    let [Effect::Journal(entry)] = effects.as_slice() else {
        panic!("one journal entry expected: {effects:?}");
    };
    assert_eq!(entry.kind, EntryKind::ItemRetryAsked);
    assert_eq!(entry.item, Some(item("t1")));
    assert_eq!(entry.actors, ["alice (uid 1001)"]);
    assert_eq!(entry.detail, "t1: connection reset");
    assert_eq!(run.status("t1"), "needs recheck");
    // The retry lifts the stop it caused: t1 starts again (attempt 2, re-checking) next to t2,
    // then the remaining items as slots free.
    assert_eq!(
        run.start_items(2, OnItemFailure::Stop),
        [("t1".to_string(), 2, true)]
    );
    run.item_done("t1").unwrap();
    run.item_done("t2").unwrap();
    // The live state equals the replayed journal.
    let replayed =
        EngineState::replay(&run.plan, EngineSettings::default(), run.journal().iter()).unwrap();
    assert_eq!(replayed.items(COPY), run.state.items(COPY));
    assert_eq!(
        started(&run.start_items(2, OnItemFailure::Stop)),
        ["t3", "t4"]
    );
}

#[test]
fn a_retry_under_a_stop_starts_only_the_items_asked_for() {
    let mut run = Run::copying(&["t1", "t2", "t3", "t4"]);
    run.start_items(3, OnItemFailure::Stop);
    run.item_failed("t1").unwrap();
    run.item_failed("t2").unwrap();
    run.retry("t1").unwrap();
    // t2 still failed: the stop holds for t4, but the item asked for starts.
    assert_eq!(
        run.start_items(3, OnItemFailure::Stop),
        [("t1".to_string(), 2, true)]
    );
    assert_eq!(run.status("t4"), "pending");
}

#[test]
fn a_retry_after_the_step_failed_makes_its_next_start_retry_exactly_those_items() {
    let mut run = Run::copying(&["t1", "t2", "t3"]);
    run.start_items(3, OnItemFailure::Continue);
    run.item_failed("t1").unwrap();
    run.item_failed("t2").unwrap();
    run.item_done("t3").unwrap();
    let step = run.step(COPY);
    run.apply(Command::ActionFailed {
        step,
        reason: "2 of 3 items failed".into(),
    })
    .unwrap();
    run.retry("t2").unwrap();
    run.start(COPY);
    assert_eq!(run.status("t1"), "failed", "not asked for: stays failed");
    assert_eq!(run.status("t2"), "needs recheck");
    assert_eq!(
        run.start_items(3, OnItemFailure::Continue),
        [("t2".to_string(), 2, true)]
    );
    // Without any retry asked, a new start retries every failed item (as before).
    let mut plain = Run::copying(&["t1", "t2"]);
    plain.start_items(2, OnItemFailure::Continue);
    plain.item_failed("t1").unwrap();
    plain.item_failed("t2").unwrap();
    let step = plain.step(COPY);
    plain
        .apply(Command::ActionFailed {
            step,
            reason: "2 of 2 items failed".into(),
        })
        .unwrap();
    plain.start(COPY);
    assert_eq!(
        started(&plain.start_items(3, OnItemFailure::Continue)),
        ["t1", "t2"]
    );
}

#[test]
fn a_retry_is_refused_unless_the_item_failed_in_a_running_or_failed_step() {
    let mut run = Run::copying(&["t1", "t2", "t3"]);
    run.start_items(1, OnItemFailure::Continue);
    assert!(matches!(
        run.retry("t1"),
        Err(Refusal::ItemNotFailed {
            status: "running",
            ..
        })
    ));
    assert!(matches!(
        run.retry("t2"),
        Err(Refusal::ItemNotFailed {
            status: "pending",
            ..
        })
    ));
    assert!(matches!(run.retry("t9"), Err(Refusal::UnknownItem { .. })));
    run.item_done("t1").unwrap();
    assert!(matches!(
        run.retry("t1"),
        Err(Refusal::ItemNotFailed { status: "done", .. })
    ));
    let step = run.step(COPY);
    assert!(matches!(
        run.apply(Command::RetryItem {
            step,
            item: item("t1"),
            by: vec![" ".into()],
        }),
        Err(Refusal::UnnamedOperator { .. })
    ));
    // A step that is not running nor failed: the prepare step is done.
    let prepare = run.step(PREPARE);
    assert!(matches!(
        run.apply(Command::RetryItem {
            step: prepare,
            item: item("t1"),
            by: vec!["alice".into()],
        }),
        Err(Refusal::StepNotRunningNorFailed { status: "done", .. })
    ));
    let before = run.state.clone();
    assert!(run.retry("t2").is_err());
    assert_eq!(run.state, before, "a refusal changes nothing");
}

#[test]
fn an_item_confirmation_is_journaled_with_who_confirmed() {
    let mut run = Run::copying(&["t1", "t2"]);
    let step = run.step(COPY);
    let effects = run
        .apply(Command::ConfirmItem {
            step: step.clone(),
            item: item("t1"),
            by: vec!["alice (uid 1001)".into()],
        })
        .unwrap();
    let [Effect::Journal(entry)] = effects.as_slice() else {
        panic!("{effects:?}");
    };
    assert_eq!(entry.kind, EntryKind::ItemConfirmed);
    assert_eq!(entry.actors, ["alice (uid 1001)"]);
    assert_eq!(entry.item, Some(item("t1")));
    run.start_items(1, OnItemFailure::Continue);
    assert!(matches!(
        run.apply(Command::ConfirmItem {
            step,
            item: item("t1"),
            by: vec!["alice".into()],
        }),
        Err(Refusal::ItemNotWaiting { .. })
    ));
}

#[test]
fn after_a_crash_mid_items_done_items_are_not_rerun_and_running_ones_are_rechecked() {
    let mut live = Run::copying(&["t1", "t2", "t3", "t4", "t5"]);
    live.start_items(3, OnItemFailure::Stop);
    live.item_done("t1").unwrap();
    live.start_items(3, OnItemFailure::Stop);
    live.item_done("t4").unwrap();
    // Crash: t2, t3 started, t1 and t4 done, t5 never started.
    let journal = live.journal();

    let mut resumed = Run::resumed(plan(), &journal);
    assert!(matches!(
        resumed.state.steps[COPY],
        StepStatus::NeedsRecheck { .. }
    ));
    assert_eq!(resumed.status("t1"), "done");
    assert_eq!(resumed.status("t2"), "needs recheck");
    assert_eq!(resumed.status("t3"), "needs recheck");
    assert_eq!(resumed.status("t5"), "pending");

    resumed.start(COPY);
    let redeclared = resumed.declare(&["t1", "t2", "t3", "t4", "t5"]);
    assert!(redeclared.is_empty(), "{redeclared:?}");
    let restarted = resumed.start_items(10, OnItemFailure::Stop);
    assert_eq!(
        restarted,
        [
            ("t2".to_string(), 2, true),
            ("t3".to_string(), 2, true),
            ("t5".to_string(), 1, false),
        ]
    );
    for name in ["t2", "t3", "t5"] {
        resumed.item_done(name).unwrap();
    }
    resumed.succeed(COPY).unwrap();
    let attempts: Vec<u32> = resumed
        .state
        .items(COPY)
        .iter()
        .map(|i| i.attempts)
        .collect();
    assert_eq!(attempts, [1, 2, 2, 1, 1]);
}

#[test]
fn a_rolled_back_step_forgets_its_items_so_a_new_start_runs_them_all() {
    let mut run = Run::copying(&["t1", "t2"]);
    run.start_items(2, OnItemFailure::Stop);
    run.item_done("t1").unwrap();
    run.item_done("t2").unwrap();
    run.succeed(COPY).unwrap();
    let step = run.step(COPY);
    run.apply(Command::RollbackTo {
        step: step.clone(),
        by: "alice".into(),
        reason: "wrong target".into(),
    })
    .unwrap();
    run.apply(Command::RollbackStepDone { step }).unwrap();
    assert!(run.state.items(COPY).is_empty());
    run.start(COPY);
    run.declare(&["t1", "t2"]);
    assert_eq!(
        run.start_items(2, OnItemFailure::Stop),
        [("t1".to_string(), 1, false), ("t2".to_string(), 1, false)]
    );
}

// ---- the runner, against a fake `Actions` and a real journal ----

/// What the fake saw, shared with the test.
#[derive(Default)]
struct Seen {
    in_flight: AtomicUsize,
    most_at_once: AtomicUsize,
    /// (item, attempt, recheck) per `run_item` call.
    attempts: Mutex<Vec<(String, u32, bool)>>,
    actions: AtomicUsize,
}

struct FakeCopy {
    tables: usize,
    concurrency: usize,
    on_failure: OnItemFailure,
    /// Items whose first attempt fails at once (before the others finish).
    fail_first: Vec<String>,
    seen: Arc<Seen>,
}

impl Actions for FakeCopy {
    async fn preconditions(&mut self, _step: &Step) -> Vec<PreconditionResult> {
        Vec::new()
    }
    async fn observations(&mut self, _step: &Step) -> Vec<Observation> {
        Vec::new()
    }
    async fn action(
        &mut self,
        step: &Step,
        _recheck: bool,
        _sink: Sink,
    ) -> Result<String, cutover::executor::StepError> {
        self.seen.actions.fetch_add(1, Ordering::SeqCst);
        Ok(format!("{} verified", step.id))
    }
    async fn undo(
        &mut self,
        _step: &Step,
        _recheck: bool,
        _sink: Sink,
    ) -> Result<String, cutover::executor::StepError> {
        Ok("undone".into())
    }
    async fn force_resume(&mut self, _sink: Sink) -> Result<String, cutover::executor::StepError> {
        Ok("resumed".into())
    }
    fn pause_bound(&self) -> Duration {
        Duration::from_secs(10)
    }
    fn resume_is_safe(&self, _plan: &Plan, _state: &EngineState) -> bool {
        true
    }
    async fn items(
        &mut self,
        step: &Step,
        _recheck: bool,
        _sink: Sink,
    ) -> Result<Option<StepItems>, String> {
        if step.id.as_str() != "copy" {
            return Ok(None);
        }
        Ok(Some(StepItems {
            items: (1..=self.tables)
                .map(|n| ItemId::new(format!("t{n:02}")))
                .collect(),
            concurrency: self.concurrency,
            on_failure: self.on_failure,
        }))
    }
    fn run_item(
        &mut self,
        _step: &Step,
        item: &ItemId,
        attempt: ItemAttempt,
        sink: Sink,
    ) -> ItemFuture {
        let seen = self.seen.clone();
        let name = item.to_string();
        let fails = attempt.number == 1 && self.fail_first.contains(&name);
        Box::pin(async move {
            seen.attempts
                .lock()
                .unwrap()
                .push((name.clone(), attempt.number, attempt.recheck));
            if fails {
                return Err(format!("{name}: connection reset"));
            }
            let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            seen.most_at_once.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            sink.output(format!("{name}: copied"));
            seen.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(format!("{name}: 10 rows"))
        })
    }
}

fn open(dir: &std::path::Path, fake: FakeCopy) -> Runner<FakeCopy> {
    let journal = Journal::open(dir).unwrap();
    Runner::open(journal, plan(), EngineSettings::default(), move |_| {
        Ok(fake)
    })
    .unwrap()
}

fn item_entries(runner: &Runner<FakeCopy>, kind: EntryKind) -> Vec<String> {
    runner
        .journal()
        .entries(&runner.run_id)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.item.unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_runner_runs_twenty_items_four_at_a_time_and_journals_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    let fake = FakeCopy {
        tables: 20,
        concurrency: 4,
        on_failure: OnItemFailure::Stop,
        fail_first: Vec::new(),
        seen: seen.clone(),
    };
    let mut runner = open(dir.path(), fake);
    runner.run_headless("tester").await.unwrap();

    assert_eq!(seen.most_at_once.load(Ordering::SeqCst), 4);
    assert_eq!(seen.attempts.lock().unwrap().len(), 20);
    let mut done = item_entries(&runner, EntryKind::ItemDone);
    assert_eq!(done.len(), 20);
    done.sort();
    done.dedup();
    assert_eq!(done.len(), 20, "an item was journaled done twice");
    assert_eq!(item_entries(&runner, EntryKind::ItemStarted).len(), 20);
    assert_eq!(item_entries(&runner, EntryKind::ItemDeclared).len(), 20);
    // The step's action runs once, after its items; `prepare` has none.
    assert_eq!(seen.actions.load(Ordering::SeqCst), 2);
    assert!(runner.state.is_complete());
    // Every item's start is durable before its done, and the stored journal replays.
    let entries = runner.journal().entries(&runner.run_id).unwrap();
    for name in &done {
        let position = |kind| {
            entries
                .iter()
                .position(|e| e.kind == kind && e.item.as_ref().map(ItemId::as_str) == Some(name))
                .unwrap()
        };
        assert!(position(EntryKind::ItemStarted) < position(EntryKind::ItemDone));
    }
    let replayed =
        EngineState::replay(&runner.plan, EngineSettings::default(), entries.iter()).unwrap();
    assert_eq!(replayed, runner.state);
}

#[tokio::test]
async fn a_failed_item_stops_new_starts_and_the_next_run_retries_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    let fake = |seen: &Arc<Seen>| FakeCopy {
        tables: 12,
        concurrency: 3,
        on_failure: OnItemFailure::Stop,
        fail_first: vec!["t02".into()],
        seen: seen.clone(),
    };
    let first_done = {
        let mut runner = open(dir.path(), fake(&seen));
        let error = runner.run_headless("tester").await.unwrap_err();
        assert!(
            matches!(&error, RunError::StepFailed { step, reason } if step.as_str() == "copy" && reason.contains("t02: connection reset")),
            "{error}"
        );
        // t01..t03 were running when t02 failed; they finish, and nothing new starts.
        let done = item_entries(&runner, EntryKind::ItemDone);
        assert_eq!(done, ["t01", "t03"]);
        assert_eq!(item_entries(&runner, EntryKind::ItemFailed), ["t02"]);
        // Only the prepare step's action ran: a step with a failed item never verifies.
        assert_eq!(seen.actions.load(Ordering::SeqCst), 1);
        done
    };

    let retry = Arc::new(Seen::default());
    let mut runner = open(dir.path(), fake(&retry));
    assert!(runner.resumed);
    runner.run_headless("tester").await.unwrap();
    let attempts = retry.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 10);
    assert!(attempts.contains(&("t02".to_string(), 2, true)));
    for (name, _, _) in &attempts {
        assert!(!first_done.contains(name), "{name} ran again");
    }
    assert!(runner.state.is_complete());
}

#[tokio::test]
async fn a_step_whose_items_are_none_runs_its_action_alone() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Seen::default());
    let fake = FakeCopy {
        tables: 0,
        concurrency: 4,
        on_failure: OnItemFailure::Stop,
        fail_first: Vec::new(),
        seen: seen.clone(),
    };
    let mut runner = open(dir.path(), fake);
    runner.run_headless("tester").await.unwrap();
    assert!(item_entries(&runner, EntryKind::ItemDeclared).is_empty());
    assert_eq!(seen.actions.load(Ordering::SeqCst), 2);
}

// ---- the run's memory file ----

fn exec_context(run_dir: &std::path::Path) -> cutover::executor::context::ExecContext {
    let inventory = cutover::inventory::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/inventories/valid/minimal.yaml"
    )))
    .unwrap();
    cutover::executor::context::ExecContext::new(&inventory, run_dir.to_path_buf(), false).unwrap()
}

#[test]
fn a_missing_memory_file_is_a_fresh_memory() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = exec_context(dir.path());
    let memory: BTreeMap<String, String> = ctx.load_memory("memory.json").unwrap();
    assert!(memory.is_empty());
    let kept: BTreeMap<String, String> = [("lsn".to_string(), "0/3000000".to_string())].into();
    ctx.save_memory("memory.json", &kept).unwrap();
    assert_eq!(
        ctx.load_memory::<BTreeMap<String, String>>("memory.json")
            .unwrap(),
        kept
    );
}

#[test]
fn a_corrupt_memory_file_refuses_to_open_the_run_naming_the_file() {
    let state = tempfile::tempdir().unwrap();
    let run_dir = tempfile::tempdir().unwrap();
    let file = run_dir.path().join("memory.json");
    std::fs::write(&file, "{\"lsn\": \"0/30").unwrap();
    let journal = Journal::open(state.path()).unwrap();
    let opened = Runner::open(journal, plan(), EngineSettings::default(), |_| {
        let ctx = exec_context(run_dir.path());
        let memory: BTreeMap<String, String> =
            ctx.load_memory("memory.json").map_err(|e| e.to_string())?;
        let _ = memory;
        Ok(FakeCopy {
            tables: 0,
            concurrency: 1,
            on_failure: OnItemFailure::Stop,
            fail_first: Vec::new(),
            seen: Arc::default(),
        })
    });
    let Err(error) = opened else {
        panic!("a run with a corrupt memory file opened");
    };
    let message = error.to_string();
    assert!(matches!(error, RunError::Setup(_)), "{message}");
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("corrupt"), "{message}");
}

#[test]
fn a_journal_from_before_items_gains_the_item_column_and_keeps_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn =
            rusqlite::Connection::open(dir.path().join(cutover::journal::JOURNAL_FILE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at TEXT NOT NULL,
                environment TEXT NOT NULL, runbook TEXT NOT NULL, params_json TEXT NOT NULL,
                fingerprint TEXT NOT NULL, plan_json TEXT NOT NULL, status TEXT NOT NULL);
             CREATE TABLE entries (run_id TEXT NOT NULL REFERENCES runs(run_id),
                seq INTEGER NOT NULL, at TEXT NOT NULL, step_id TEXT, kind TEXT NOT NULL,
                detail TEXT NOT NULL, actors TEXT NOT NULL, PRIMARY KEY (run_id, seq));",
        )
        .unwrap();
    }
    let journal = Journal::open(dir.path()).unwrap();
    let run_id = journal.create_run(&plan()).unwrap();
    let copy = StepId::new("copy");
    journal
        .append(
            &run_id,
            &JournalEntry::new(at(1), Some(copy.clone()), EntryKind::Note, "before items"),
        )
        .unwrap();
    let declared = JournalEntry::new(at(2), Some(copy), EntryKind::ItemDeclared, "")
        .with_item(item("public.form"));
    journal.append(&run_id, &declared).unwrap();
    drop(journal);
    let journal = Journal::open(dir.path()).unwrap();
    let entries = journal.entries(&run_id).unwrap();
    assert_eq!(entries[0].item, None);
    assert_eq!(entries[1], declared);
    let text = journal.show_text(&run_id).unwrap();
    assert!(text.contains("copy public.form"), "{text}");
}
