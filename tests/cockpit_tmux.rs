//! The cockpit in human hands, driven in tmux as a person does, with the real binary on a real
//! lab: the whole shard split under load with the paused window confirmed once (traffic resumed
//! within the bound, no failed call); a pause walked step by step on purpose that outlives its
//! bound (the banner no longer says paused); opening the cockpit and quitting leaves no run.

mod common;

use common::tmux::Tmux;
use cutover::engine::EntryKind;
use cutover::journal::Journal;
use cutover::lab::load::{self, LoadOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// `cutover tui INV shard-split ...` with the journal in `state`.
fn tui(inventory: &Path, state: &Path, extra: &str) -> String {
    format!(
        "{} tui {} shard-split --from p1 --to p2 --node pg2 --shards 512-1023 --operator alice --state-dir {} {extra}; sleep 0.2",
        env!("CARGO_BIN_EXE_cutover"),
        inventory.display(),
        state.display(),
    )
}

/// Press `key` until `done` shows: a dialog whose readings changed asks again, and the
/// operator, having looked, confirms again.
fn confirm_until(tmux: &Tmux, key: &str, done: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    tmux.confirm(&["-l", key]);
    loop {
        let screen = tmux.screen();
        if screen.contains(done) {
            return screen;
        }
        if screen.contains("confirm again") {
            tmux.confirm(&["-l", key]);
        }
        assert!(
            Instant::now() < deadline,
            "{done:?} never appeared; screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Enter, then `y` after the guard, then wait for `done` steps.
fn run_plain_step(tmux: &Tmux, done: usize, timeout: Duration) {
    tmux.send(&["Enter"]);
    confirm_until(tmux, "y", &format!("{done}/14 steps done"), timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_split_under_load_with_the_window_confirmed_once() {
    let lab = cutover::lab::TestLab::start(2_000).await.expect("lab up");
    let state = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(load::run(
        LoadOptions {
            endpoint: load::entry_endpoint(&lab.inventory).unwrap(),
            rate: 200,
            duration: Duration::from_secs(600),
            workers: 4,
            out: None,
        },
        stop_rx,
    ));
    let inventory = lab.config.inventory_path();
    let tmux = Tmux::start(&tui(&inventory, state.path(), "--pause-bound-ms 10000"));
    let long = Duration::from_secs(120);
    tmux.wait_for("0/14 steps done", long);
    // pg2 is the spare, stopped on purpose until the base backup: shown stopped, not failed.
    let screen = tmux.wait_for("STOPPED as planned", long);
    assert!(!screen.contains("pg2/postgres UNREACHABLE"), "{screen}");
    std::thread::sleep(Duration::from_secs(1));
    run_plain_step(&tmux, 1, long);
    run_plain_step(&tmux, 2, long);
    tmux.wait_for("pg2 standby", long);
    std::thread::sleep(Duration::from_secs(2));
    run_plain_step(&tmux, 3, long);
    // One dialog for the whole window, with the point of no return typed.
    tmux.send(&["Enter"]);
    let dialog = tmux.wait_for("Run the paused window, steps 4–9?", long);
    assert!(dialog.contains("Pause bound 10.0s"), "{dialog}");
    assert!(dialog.contains("PAUSE"), "{dialog}");
    tmux.confirm(&["-l", "p2"]);
    tmux.send(&["Tab"]);
    let screen = confirm_until(&tmux, "Y", "9/14 steps done", long);
    assert!(!screen.contains("TRAFFIC PAUSED"), "{screen}");
    // The proven delete keeps its own confirmation, outside the window.
    run_plain_step(&tmux, 10, long);
    tmux.send(&["Enter"]);
    tmux.wait_for("Run step 11?", long);
    tmux.confirm(&["-l", "p2"]);
    tmux.send(&["Tab"]);
    confirm_until(&tmux, "Y", "11/14 steps done", long);
    run_plain_step(&tmux, 12, long);
    run_plain_step(&tmux, 13, long);
    run_plain_step(&tmux, 14, long);
    tmux.send(&["q"]);
    tmux.wait_exit(long);
    stop_tx.send(true).unwrap();
    let report = traffic.await.unwrap().unwrap();
    assert_eq!(report.failed, 0, "no call failed: {:?}", report.errors);
    assert!(report.committed > 100, "the load ran: {}", report.committed);

    let journal = Journal::open(state.path()).unwrap();
    let run = journal.runs().unwrap().into_iter().next().expect("a run");
    assert_eq!(run.status.as_str(), "completed");
    let entries = journal.entries(&run.run_id).unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.detail.contains("confirmed once by alice"))
            .count(),
        1,
        "the window was confirmed once"
    );
    let at = |kind: EntryKind, step: &str| {
        entries
            .iter()
            .find(|e| e.kind == kind && e.step.as_ref().is_some_and(|s| s.as_str() == step))
            .map(|e| e.at)
            .unwrap_or_else(|| panic!("no {kind} of {step}"))
    };
    let paused = at(EntryKind::Verified, "resume-traffic") - at(EntryKind::Started, "stop-traffic");
    assert!(
        paused < chrono::Duration::seconds(10),
        "traffic resumed within the bound: {paused}"
    );
    assert!(
        !entries
            .iter()
            .any(|e| e.kind == EntryKind::PauseBoundExceeded),
        "the bound never ran out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_walked_past_its_bound_shows_traffic_resumed() {
    let lab = cutover::lab::TestLab::start(2_000).await.expect("lab up");
    let state = tempfile::tempdir().unwrap();
    let inventory = lab.config.inventory_path();
    let tmux = Tmux::start(&tui(&inventory, state.path(), "--pause-bound-ms 2000"));
    let long = Duration::from_secs(120);
    tmux.wait_for("0/14 steps done", long);
    std::thread::sleep(Duration::from_secs(1));
    run_plain_step(&tmux, 1, long);
    run_plain_step(&tmux, 2, long);
    tmux.wait_for("pg2 standby", long);
    std::thread::sleep(Duration::from_secs(2));
    run_plain_step(&tmux, 3, long);
    // Step by step on purpose: the palette's `step` opens the single step, with the warning.
    tmux.send(&[":"]);
    tmux.send(&["-l", "step"]);
    tmux.send(&["Enter"]);
    let dialog = tmux.wait_for("Run step 4?", long);
    assert!(dialog.contains("STEP BY STEP"), "{dialog}");
    confirm_until(&tmux, "y", "TRAFFIC PAUSED", long);
    // Nobody confirms the gate: the bound ends the pause and the run rolls back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let screen = loop {
        let screen = tmux.screen();
        if !screen.contains("TRAFFIC PAUSED") && screen.contains("3/14 steps done") {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "the banner still says paused after the bound:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!screen.contains("% of the pause bound"), "{screen}");
    tmux.send(&["q"]);
    tmux.wait_exit(long);
    let journal = Journal::open(state.path()).unwrap();
    let run = journal.runs().unwrap().into_iter().next().expect("a run");
    let entries = journal.entries(&run.run_id).unwrap();
    assert!(entries
        .iter()
        .any(|e| e.kind == EntryKind::PauseBoundExceeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_abort_key_inside_the_window_resumes_traffic_and_rolls_back() {
    let lab = cutover::lab::TestLab::start(2_000).await.expect("lab up");
    let state = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(load::run(
        LoadOptions {
            endpoint: load::entry_endpoint(&lab.inventory).unwrap(),
            rate: 200,
            duration: Duration::from_secs(600),
            workers: 4,
            out: None,
        },
        stop_rx,
    ));
    let inventory = lab.config.inventory_path();
    let tmux = Tmux::start(&tui(&inventory, state.path(), "--pause-bound-ms 30000"));
    let long = Duration::from_secs(120);
    tmux.wait_for("0/14 steps done", long);
    std::thread::sleep(Duration::from_secs(1));
    run_plain_step(&tmux, 1, long);
    run_plain_step(&tmux, 2, long);
    tmux.wait_for("pg2 standby", long);
    std::thread::sleep(Duration::from_secs(2));
    run_plain_step(&tmux, 3, long);
    tmux.send(&["Enter"]);
    tmux.wait_for("Run the paused window, steps 4–9?", long);
    tmux.confirm(&["-l", "p2"]);
    tmux.send(&["Tab"]);
    tmux.confirm(&["-l", "Y"]);
    // The window is running: x aborts it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let screen = tmux.screen();
        if screen.contains("TRAFFIC PAUSED") {
            break;
        }
        if screen.contains("confirm again") {
            tmux.confirm(&["-l", "Y"]);
        }
        assert!(Instant::now() < deadline, "the window never ran:\n{screen}");
        std::thread::sleep(Duration::from_millis(20));
    }
    tmux.send(&["-l", "x"]);
    let deadline = Instant::now() + long;
    let journal = Journal::open(state.path()).unwrap();
    let run = journal.runs().unwrap().into_iter().next().expect("a run");
    loop {
        let screen = tmux.screen();
        let entries = journal.entries(&run.run_id).unwrap();
        let finished = entries
            .iter()
            .any(|e| e.kind == EntryKind::RollbackFinished);
        if finished && screen.contains("3/14 steps done") && !screen.contains("TRAFFIC PAUSED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abort did not roll the window back:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let entries = journal.entries(&run.run_id).unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.detail.contains("the operator aborted the paused window")),
        "the abort is journaled"
    );
    tmux.send(&["q"]);
    tmux.wait_exit(long);
    stop_tx.send(true).unwrap();
    let report = traffic.await.unwrap().unwrap();
    assert_eq!(report.failed, 0, "no call failed: {:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_cockpit_and_quitting_leaves_no_run() {
    let lab = cutover::lab::TestLab::start(2_000).await.expect("lab up");
    let state = tempfile::tempdir().unwrap();
    let inventory = lab.config.inventory_path();
    let tmux = Tmux::start(&tui(&inventory, state.path(), ""));
    let long = Duration::from_secs(60);
    tmux.wait_for("0/14 steps done", long);
    tmux.wait_for("pg1 primary", long);
    std::thread::sleep(Duration::from_secs(1));
    tmux.send(&["q"]);
    tmux.wait_exit(long);
    let journal = Journal::open(state.path()).unwrap();
    assert!(journal.runs().unwrap().is_empty(), "no run was recorded");
    let runs = state.path().join("runs");
    let left = std::fs::read_dir(&runs)
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "no run directory is left in {}", runs.display());
}
