//! The runbook registry: every runbook's flags are its own, every step of its plans is one of
//! its typed steps, and a name outside the registry is refused as invalid input. No servers.

use cutover::plan::Plan;
use cutover::runbooks::{self, Runbook, StepKind};
use std::collections::BTreeMap;
use std::process::Command;

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/inventories/lab.yaml");

fn cutover(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .unwrap()
}

fn help(runbook: &str) -> String {
    let out = cutover(&["run", LAB, runbook, "--help"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn each_runbook_help_lists_its_own_flags_only() {
    let split = help("shard-split");
    for flag in [
        "--from",
        "--to",
        "--node",
        "--shards",
        "--pause-bound-ms",
        "--yes",
    ] {
        assert!(
            split.contains(flag),
            "shard-split --help lacks {flag}:\n{split}"
        );
    }
    for flag in [
        "--method",
        "--jobs",
        "--dump-dir",
        "--test-restore",
        "--traffic",
    ] {
        assert!(
            !split.contains(flag),
            "shard-split --help lists {flag}:\n{split}"
        );
    }
    let upgrade = help("major-upgrade");
    for flag in [
        "--from",
        "--to",
        "--method",
        "--jobs",
        "--dump-dir",
        "--test-restore",
    ] {
        assert!(
            upgrade.contains(flag),
            "major-upgrade --help lacks {flag}:\n{upgrade}"
        );
    }
    for flag in ["--node", "--shards"] {
        assert!(
            !upgrade.contains(flag),
            "major-upgrade --help lists {flag}:\n{upgrade}"
        );
    }
}

#[test]
fn a_flag_of_another_runbook_is_refused_as_invalid_input() {
    let out = cutover(&[
        "plan",
        LAB,
        "shard-split",
        "--from",
        "p1",
        "--to",
        "p2",
        "--node",
        "pg2",
        "--shards",
        "512-1023",
        "--method",
        "parallel",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--method"));
}

#[test]
fn an_unknown_runbook_is_invalid_input() {
    for command in ["plan", "run"] {
        let out = cutover(&[command, LAB, "shard-merge"]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("shard-merge"));
    }
    let names = runbooks::names();
    assert!(names.contains(&"shard-split") && names.contains(&"major-upgrade"));
}

/// Every step id of `plan` names one of `R`'s typed steps, so every step has an action and an
/// undo arm (the effects match on the enum without a wildcard).
fn assert_typed<R: Runbook>(plan: &Plan) {
    assert_eq!(plan.runbook, R::NAME);
    assert!(!plan.steps.is_empty());
    for step in &plan.steps {
        let kind = R::Step::of(step).unwrap_or_else(|e| panic!("{}: {e}", R::NAME));
        assert_eq!(kind.id(), step.id);
    }
}

#[test]
fn every_planned_step_is_a_typed_step_of_its_runbook() {
    let inventory = cutover::inventory::load(std::path::Path::new(LAB)).unwrap();
    let split = BTreeMap::from(
        [
            ("from", "p1"),
            ("to", "p2"),
            ("node", "pg2"),
            ("shards", "512-1023"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let plan = cutover::session::plan(&inventory, "shard-split", &split).unwrap();
    assert_typed::<runbooks::shard_split::ShardSplit>(&plan);

    // The lab's pg2 stands in for an upgrade target: the plan is made without connecting.
    let mut upgrade_inventory = inventory.clone();
    let pg2 = upgrade_inventory
        .nodes
        .iter_mut()
        .find(|n| n.name == "pg2")
        .unwrap();
    pg2.version = 18;
    for method in ["dumpall", "parallel", "pg-upgrade"] {
        let params = BTreeMap::from(
            [("from", "pg1"), ("to", "pg2"), ("method", method)]
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let plan = cutover::session::plan(&upgrade_inventory, "major-upgrade", &params)
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_typed::<runbooks::major_upgrade::MajorUpgrade>(&plan);
    }
}
