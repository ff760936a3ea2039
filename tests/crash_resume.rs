//! Crash and resume: `kill -9` the real binary at step boundaries and in the middle of steps;
//! running it again reaches the same end state, with nothing lost and no step applied twice.

mod common;

use common::*;
use cutover::engine::EntryKind;
use cutover::journal::Journal;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DOCS: u64 = 5_000;

fn run_split(lab: &cutover::lab::TestLab, state: &std::path::Path) -> std::process::Child {
    split_command(lab, state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn split_command(lab: &cutover::lab::TestLab, state: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cutover"));
    command
        .args([
            "run",
            lab.config.inventory_path().to_str().unwrap(),
            "shard-split",
        ])
        .args([
            "--from", "p1", "--to", "p2", "--node", "pg2", "--shards", "512-1023", "--yes",
        ])
        .arg("--state-dir")
        .arg(state);
    command
}

/// Wait until the journal holds `kind` for `step`, then SIGKILL the run. Panics when the run
/// ends by itself first: a crash point that is never reached tests nothing.
fn kill_at(child: &mut std::process::Child, state: &std::path::Path, step: &str, kind: EntryKind) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before reaching {step} {kind:?}");
        }
        if let Ok(journal) = Journal::open(state) {
            if let Some(run) = journal.runs().ok().and_then(|r| r.into_iter().next()) {
                let entries = journal.entries(&run.run_id).unwrap_or_default();
                if entries
                    .iter()
                    .any(|e| e.kind == kind && e.step.as_ref().is_some_and(|s| s.as_str() == step))
                {
                    child.kill().unwrap(); // SIGKILL: no cleanup runs
                    child.wait().unwrap();
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("{step} {kind:?} never appeared");
}

/// Entries of every run in the journal (0 before the first run).
fn journal_entries(state: &std::path::Path) -> usize {
    let Ok(journal) = Journal::open(state) else {
        return 0;
    };
    journal
        .runs()
        .unwrap_or_default()
        .iter()
        .map(|run| journal.entries(&run.run_id).unwrap_or_default().len())
        .sum()
}

/// While one `cutover run` drives the split, a second one is refused, names the holder, and
/// writes nothing to the journal.
fn second_driver_is_refused(
    lab: &cutover::lab::TestLab,
    state: &std::path::Path,
    holder: u32,
    entries_before: usize,
) {
    // Wait for the driving run to hold the lock: its first journal entry comes after it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_entries(state) <= entries_before {
        assert!(Instant::now() < deadline, "the driving run never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = split_command(lab, state).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a second driver is refused");
    assert!(
        stderr.contains("being driven by another cutover process")
            && stderr.contains(&format!("pid {holder}")),
        "the refusal names the holder: {stderr}"
    );
    let runs = Journal::open(state).unwrap().runs().unwrap();
    assert_eq!(runs.len(), 1, "the refused driver created no run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_resume_to_the_same_end_state() {
    let lab = lab(DOCS).await;
    let state = tempfile::tempdir().unwrap();
    let points = [
        ("base-backup", EntryKind::Started), // mid-step: pg_basebackup running
        ("baseline", EntryKind::Verified),   // boundary
        ("stop-traffic", EntryKind::Verified), // boundary, traffic paused
        ("promote", EntryKind::Started),     // mid-step
        ("reroute", EntryKind::Started),     // mid-step
        ("delete-invalid", EntryKind::Started), // mid-step
    ];
    for (i, (step, kind)) in points.into_iter().enumerate() {
        let entries_before = journal_entries(state.path());
        let mut child = run_split(&lab, state.path());
        // At a boundary point, so that the check's time cannot carry the base backup past
        // the mid-step kill.
        if i == 1 {
            second_driver_is_refused(&lab, state.path(), child.id(), entries_before);
        }
        kill_at(&mut child, state.path(), step, kind);
    }
    let status = run_split(&lab, state.path()).wait().unwrap();
    assert!(status.success(), "the resumed run completes");

    let c = &lab.config;
    let pg1 = form_count(c.pg1_port, "commcarehq_p1").await;
    let pg2 = form_count(c.pg2_port, "commcarehq_p2").await;
    assert_eq!((pg1 + pg2) as u64, DOCS, "nothing lost, nothing duplicated");
    let foreign_on_pg1: i64 = pg1_forms(&lab)
        .await
        .query_one(
            "SELECT count(*) FROM forms WHERE (hashtext(form_id::text) & 1023) >= 512",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(foreign_on_pg1, 0);
    let routes = plproxy_routes(c.pg1_port).await;
    assert!((512..1024).all(|s| routes[&s] == "commcarehq_p2"));

    let journal = Journal::open(state.path()).unwrap();
    let runs = journal.runs().unwrap();
    assert_eq!(runs.len(), 1, "one run, resumed, never restarted");
    let entries = journal.entries(&runs[0].run_id).unwrap();
    // Shown only when an assertion below fails: the run's record, to see what happened.
    for e in &entries {
        eprintln!("{:?} {:?} {}", e.kind, e.step, e.detail);
    }
    let outputs = |needle: &str| {
        entries
            .iter()
            .filter(|e| e.kind == EntryKind::Output && e.detail.contains(needle))
            .count()
    };
    let entries_of = |step: &str, kind: EntryKind| {
        entries
            .iter()
            .filter(|e| e.kind == kind && e.step.as_ref().is_some_and(|s| s.as_str() == step))
            .count()
    };
    // Promotion was killed just after it started: either the killed run's pg_promote never
    // went out and the resumed run promoted, or it went out and the resumed run found it
    // finished (or finishing). Exactly one of the three, never two promotions.
    assert_eq!(
        outputs("promoted in")
            + outputs("finished a promotion begun earlier")
            + outputs("is already promoted"),
        1,
        "promotion happened once"
    );
    // Rename and PAUSE run in steps no crash point interrupts: exactly once each.
    assert_eq!(
        outputs("renamed commcarehq_p1 to commcarehq_p2"),
        1,
        "rename ran once"
    );
    assert_eq!(
        outputs("PAUSE commcarehq_proxy"),
        1,
        "PAUSE was issued once"
    );
    // Every step was verified exactly once, the interrupted ones included.
    let plan = cutover::plan::Plan::from_json(&runs[0].plan_json).unwrap();
    for step in &plan.steps {
        let step = step.id.as_str();
        assert_eq!(
            entries_of(step, EntryKind::Verified),
            1,
            "{step} verified once"
        );
    }
    // Steps killed mid-way: the base backup and the promotion outlast the kill by far, so the
    // resumed run started them once more. The re-route and the delete may finish within the
    // few milliseconds before the kill lands; then the resumed run did not start them again.
    for step in ["base-backup", "promote"] {
        assert_eq!(
            entries_of(step, EntryKind::Started),
            2,
            "{step} started, killed, started again"
        );
    }
    for step in ["reroute", "delete-invalid"] {
        let started = entries_of(step, EntryKind::Started);
        assert!((1..=2).contains(&started), "{step} started {started} times");
    }
    // A boundary kill lands a few milliseconds after the step's Verified entry, so the next
    // step may have started (then its re-check runs); the step itself never runs again.
    // The baseline comes long after the previous kill: it ran exactly once.
    assert_eq!(
        entries_of("baseline", EntryKind::Started),
        1,
        "baseline started once"
    );
    assert!(
        entries.iter().any(|e| e.detail.contains("re-checking")),
        "a half-run step was re-checked"
    );
    assert_eq!(
        paused_aliases(&lab).await,
        Vec::<String>::new(),
        "traffic flows at the end"
    );
}

/// SIGTERM (or SIGHUP from a dropped terminal) while traffic is paused: the process ends the
/// pause before it exits, says so in the journal, and a later run completes the split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_while_paused_ends_the_pause_before_exit() {
    let lab = lab(DOCS).await;
    let state = tempfile::tempdir().unwrap();
    let mut child = run_split(&lab, state.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "traffic was never paused");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the pause"
        );
        if !paused_aliases(&lab).await.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "a stopped run does not report success");
    assert_eq!(
        paused_aliases(&lab).await,
        Vec::<String>::new(),
        "no alias is left paused"
    );
    let journal = Journal::open(state.path()).unwrap();
    let run = journal.runs().unwrap().remove(0);
    let record = journal.export_markdown(&run.run_id).unwrap();
    assert!(
        record.contains("SIGTERM received while traffic was paused"),
        "the journal says why the pause ended:\n{record}"
    );

    assert!(
        run_split(&lab, state.path()).wait().unwrap().success(),
        "the next run completes the split"
    );
    let c = &lab.config;
    let total = form_count(c.pg1_port, "commcarehq_p1").await
        + form_count(c.pg2_port, "commcarehq_p2").await;
    assert_eq!(total as u64, DOCS, "nothing lost, nothing duplicated");
}

/// SIGKILL while traffic is paused: no handler runs, but the pause guard the run started
/// notices its driver is gone and, once the bound has passed, ends the pause as the bound
/// would. Until then the pause holds: an operator who re-runs promptly takes over instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_drivers_pause_is_ended_by_its_guard_after_the_bound() {
    let lab = lab(DOCS).await;
    let state = tempfile::tempdir().unwrap();
    let mut child = split_command(&lab, state.path())
        .args(["--pause-bound-ms", "3000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while paused_aliases(&lab).await.is_empty() {
        assert!(Instant::now() < deadline, "traffic was never paused");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the pause"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let paused_at = Instant::now();
    child.kill().unwrap(); // SIGKILL: no handler runs
    child.wait().unwrap();

    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !paused_aliases(&lab).await.is_empty(),
        "within the bound the pause holds"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !paused_aliases(&lab).await.is_empty() {
        assert!(Instant::now() < deadline, "the guard never ended the pause");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(paused_at.elapsed() >= Duration::from_millis(3000));
    let journal = Journal::open(state.path()).unwrap();
    let run = journal.runs().unwrap().remove(0);
    let record = journal.export_markdown(&run.run_id).unwrap();
    assert!(
        record.contains("is gone while traffic was paused"),
        "the journal says who ended the pause and why:\n{record}"
    );

    // The guard holds the run while it rolls back; then the operator's next run completes it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let output = split_command(&lab, state.path())
            .args(["--pause-bound-ms", "3000"])
            .output()
            .unwrap();
        let busy = String::from_utf8_lossy(&output.stderr).contains("being driven");
        if !busy || Instant::now() > deadline {
            break output.status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "the next run completes the split");
    let c = &lab.config;
    let total = form_count(c.pg1_port, "commcarehq_p1").await
        + form_count(c.pg2_port, "commcarehq_p2").await;
    assert_eq!(total as u64, DOCS, "nothing lost, nothing duplicated");
}
