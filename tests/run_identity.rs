//! Never act on a run the operator did not name: a run begins with its first confirmed step,
//! an unfinished run refuses an inventory of other content (naming the difference and the ways
//! on), the run's own rewrite of the inventory is accepted, and `cutover abandon` gives a run up
//! on the record. No servers needed: all of this happens before anything connects.

use cutover::engine::Oversight;
use cutover::journal::Journal;
use cutover::session::{self, Invocation, SessionError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/inventories/lab.yaml");

fn split_params() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("from".to_string(), "p1".to_string()),
        ("to".to_string(), "p2".to_string()),
        ("node".to_string(), "pg2".to_string()),
        ("shards".to_string(), "512-1023".to_string()),
    ])
}

fn invocation(inventory: &Path, state: &Path) -> Invocation {
    Invocation {
        inventory_path: inventory.to_path_buf(),
        runbook: "shard-split".into(),
        params: split_params(),
        state_dir: Some(state.to_path_buf()),
        oversight: Oversight::Solo,
        trust_on_first_use: false,
        expect_fingerprint: None,
    }
}

/// A copy of the lab inventory, and one whose pg2 listens elsewhere (another lab).
fn inventories(dir: &Path) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(LAB).unwrap();
    let first = dir.join("first.yaml");
    let other = dir.join("other.yaml");
    std::fs::write(&first, &text).unwrap();
    std::fs::write(&other, text.replace("port: 54322", "port: 55322")).unwrap();
    (first, other)
}

/// An unfinished run of `inventory`, as if its first step had been confirmed.
fn begin_run(inventory: &Path, state: &Path) -> cutover::journal::RunId {
    let mut runner = session::open(&invocation(inventory, state)).unwrap();
    runner
        .note(None, "begun by the test", vec!["test".into()])
        .unwrap();
    runner.run_id.clone()
}

fn cutover(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn opening_a_run_and_closing_it_without_a_step_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (first, _) = inventories(dir.path());
    let runner = session::open(&invocation(&first, &state)).unwrap();
    let run_dir = state.join("runs").join(&runner.run_id.0);
    assert!(run_dir.exists(), "the effects get their run directory");
    drop(runner);
    assert!(!run_dir.exists(), "the unused run directory is removed");
    let journal = Journal::open(&state).unwrap();
    assert!(journal.runs().unwrap().is_empty(), "no run was recorded");
}

#[test]
fn another_inventory_is_refused_with_the_difference_and_the_ways_on() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (first, other) = inventories(dir.path());
    let run_id = begin_run(&first, &state);
    let state_arg = state.to_str().unwrap();
    let other_arg = other.to_str().unwrap();
    let split = [
        "--from", "p1", "--to", "p2", "--node", "pg2", "--shards", "512-1023",
    ];

    let mut args = vec!["run", other_arg, "shard-split"];
    args.extend(split);
    args.extend(["--yes", "--state-dir", state_arg]);
    let out = cutover(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        run_id.0.as_str(),
        other_arg,
        "inventory.plan.yaml",
        "fingerprint",
        "-   port: 54322",
        "+   port: 55322",
        "cutover rollback",
        "cutover abandon",
    ] {
        assert!(stderr.contains(expected), "lacks {expected:?}:\n{stderr}");
    }

    let out = cutover(&[
        "rollback",
        other_arg,
        "shard-split",
        "--back-to",
        "preflight",
        "--state-dir",
        state_arg,
    ]);
    assert_eq!(out.status.code(), Some(2), "rollback refuses it too");

    // The run is untouched: only the note of its beginning.
    let journal = Journal::open(&state).unwrap();
    let entries = journal.entries(&run_id).unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");

    let out = cutover(&[
        "abandon",
        other_arg,
        "shard-split",
        "--reason",
        "that was the other lab",
        "--operator",
        "alice",
        "--state-dir",
        state_arg,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("abandoned"), "{stdout}");
    let run = journal.run(&run_id).unwrap();
    assert_eq!(run.status.as_str(), "abandoned");
    let last = journal.entries(&run_id).unwrap().pop().unwrap();
    assert!(last.detail.contains("that was the other lab"), "{last:?}");
    assert_eq!(last.actors, vec!["alice".to_string()]);

    // Nothing is left to resume: the other inventory starts its own run.
    let runner = session::open(&invocation(&other, &state)).unwrap();
    assert!(!runner.resumed);
    assert_ne!(runner.run_id, run_id);
}

#[test]
fn the_runs_own_rewrite_of_the_inventory_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (first, other) = inventories(dir.path());
    let run_id = begin_run(&first, &state);
    // The re-route rewrote the file: the run records what it wrote before writing it.
    let rewritten =
        cutover::inventory::to_yaml(&cutover::inventory::load(&other).unwrap()).unwrap();
    std::fs::write(
        state
            .join("runs")
            .join(&run_id.0)
            .join(cutover::executor::context::INVENTORY_REWRITTEN),
        &rewritten,
    )
    .unwrap();
    std::fs::write(&first, &rewritten).unwrap();
    let runner = session::open(&invocation(&first, &state)).unwrap();
    assert!(runner.resumed, "the run goes on");
    assert_eq!(runner.run_id, run_id);
    drop(runner);
    // A further change is not the run's own.
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&first, text.replace("port: 6432", "port: 6433")).unwrap();
    match session::open(&invocation(&first, &state)) {
        Err(SessionError::InventoryDiffers(differs)) => {
            assert!(differs.diff.contains("6433"), "{}", differs.diff)
        }
        Err(other) => panic!("expected the inventory refusal: {other}"),
        Ok(_) => panic!("expected the inventory refusal"),
    }
}
