//! The plan for pair review: a fingerprint that pins it, and runs that refuse a changed plan.
//! No servers needed: these checks happen before anything connects.

use std::process::Command;

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/inventories/lab.yaml");

fn cutover(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .unwrap()
}

fn split(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--from", "p1", "--to", "p2", "--node", "pg2", "--shards", "512-1023",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn plan_fingerprint(extra: &[&str]) -> String {
    let mut args = vec![
        "plan".to_string(),
        LAB.to_string(),
        "shard-split".to_string(),
    ];
    args.extend(split(extra));
    args.extend(["--format".to_string(), "json".to_string()]);
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["steps"].as_array().unwrap().len(), 14);
    plan["fingerprint"].as_str().unwrap().to_string()
}

#[test]
fn the_markdown_plan_shows_the_exact_sql_and_the_fingerprint() {
    let mut args = vec!["plan", LAB, "shard-split"];
    let params = split(&[]);
    args.extend(params.iter().map(String::as_str));
    let out = cutover(&args);
    assert!(out.status.success());
    let md = String::from_utf8_lossy(&out.stdout);
    let fingerprint = plan_fingerprint(&[]);
    assert!(
        md.contains(&fingerprint),
        "the review document carries the fingerprint"
    );
    assert!(md.contains(r#"ALTER DATABASE "commcarehq_p1" RENAME TO "commcarehq_p2""#));
    assert!(md.contains("SET p0512 'dbname=commcarehq_p2 host=127.0.0.1 port=6432'"));
    assert!(
        md.contains("POINT OF NO RETURN"),
        "the point of no return is stated"
    );
}

#[test]
fn the_fingerprint_changes_with_the_parameters() {
    assert_eq!(plan_fingerprint(&[]), plan_fingerprint(&[]), "stable");
    assert_ne!(
        plan_fingerprint(&[]),
        plan_fingerprint(&["--pause-bound-ms", "5000"])
    );
}

#[test]
fn a_run_refuses_a_plan_that_changed_since_review() {
    let state = tempfile::tempdir().unwrap();
    let mut args = vec!["run", LAB, "shard-split"];
    let params = split(&[
        "--yes",
        "--expect-fingerprint",
        "0000",
        "--state-dir",
        state.path().to_str().unwrap(),
    ]);
    args.extend(params.iter().map(String::as_str));
    let out = cutover(&args);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("changed since it was reviewed"), "{stderr}");
    assert!(
        stderr.contains(&plan_fingerprint(&[])),
        "it names the current fingerprint: {stderr}"
    );
}

#[test]
fn bad_parameters_are_refused_with_the_reason() {
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
        "0-511",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upper part of p1's range") && stderr.contains("512-1023"),
        "{stderr}"
    );
    let out = cutover(&[
        "plan",
        LAB,
        "shard-split",
        "--from",
        "p9",
        "--to",
        "p2",
        "--node",
        "pg2",
        "--shards",
        "512-1023",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("partition `p9` is not in the inventory"));
    let out = cutover(&["plan", LAB, "no-such-runbook"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The lab inventory plus `pg1new` (PostgreSQL 18) and traffic hooks, written under `dir`.
fn upgrade_inventory(dir: &std::path::Path) -> std::path::PathBuf {
    let mut inventory = cutover::inventory::load(std::path::Path::new(LAB)).unwrap();
    let mut target = inventory
        .nodes
        .iter()
        .find(|n| n.name == "pg2")
        .unwrap()
        .clone();
    target.name = "pg1new".into();
    target.version = 18;
    target.port += 100;
    target.data_dir.push_str("-18");
    inventory.nodes.push(target);
    inventory.traffic = Some(cutover::inventory::TrafficHooks {
        host: None,
        stop: "true".into(),
        start: "true".into(),
    });
    let path = dir.join("upgrade.yaml");
    std::fs::write(&path, cutover::inventory::to_yaml(&inventory).unwrap()).unwrap();
    path
}

/// A bad major-upgrade parameter is refused with exit 2 and its reason by `cutover run` as by
/// `cutover plan`, before any run is opened.
#[test]
fn bad_major_upgrade_parameters_exit_2_from_run_as_from_plan() {
    let dir = tempfile::tempdir().unwrap();
    let path = upgrade_inventory(dir.path());
    let inventory = path.to_str().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let base = ["--from", "pg1", "--to", "pg1new"];
    for (bad, reason) in [(["--method", "nope"], "nope"), (["--jobs", "0"], "jobs")] {
        let mut plan = vec!["plan", inventory, "major-upgrade"];
        plan.extend(base);
        plan.extend(bad);
        let planned = cutover(&plan);
        let mut run = vec!["run", inventory, "major-upgrade"];
        run.extend(base);
        run.extend(bad);
        run.extend(["--yes", "--state-dir", state_arg]);
        let ran = cutover(&run);
        for (what, out) in [("plan", &planned), ("run", &ran)] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{what} {bad:?}: {stderr}");
            assert!(stderr.contains(reason), "{what} {bad:?}: {stderr}");
        }
    }
    let runs = cutover::journal::Journal::open(&state)
        .map(|journal| journal.runs().unwrap().len())
        .unwrap_or(0);
    assert_eq!(runs, 0, "a refused run opens nothing");
}

/// Every major-upgrade option given on the command line reaches the plan (and so its
/// fingerprint): a dropped option would silently run another method than the one reviewed.
#[test]
fn major_upgrade_options_reach_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let path = upgrade_inventory(dir.path());

    let out = cutover(&[
        "plan",
        path.to_str().unwrap(),
        "major-upgrade",
        "--from",
        "pg1",
        "--to",
        "pg1new",
        "--method",
        "parallel",
        "--jobs",
        "3",
        "--traffic",
        "hooks",
        "--test-restore",
        "--dump-dir",
        "/var/tmp/cutover-dump",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let params = &plan["params"];
    assert_eq!(params["method"], "parallel", "{params}");
    assert_eq!(params["jobs"], "3");
    assert_eq!(params["traffic"], "hooks");
    assert_eq!(params["test-restore"], "yes");
    assert_eq!(params["dump-dir"], "/var/tmp/cutover-dump");
    let steps: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(steps.contains(&"test-restore"), "{steps:?}");
}

#[test]
fn completions_and_the_man_page_cover_every_runbook_and_its_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cutover(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in [
            "shard-split",
            "major-upgrade",
            "citus-bootstrap",
            "shards",
            "json",
        ] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let bad = cutover(&["completions", "powershell-ise"]);
    assert_eq!(bad.status.code(), Some(2));
    let man = cutover(&["man"]);
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH cutover 1"), "{page}");
    for word in ["check", "completions", "journal"] {
        assert!(page.contains(word), "the man page lists {word}");
    }
}

#[test]
fn plan_warns_when_connections_are_not_verified() {
    let lab = cutover(&[
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
    ]);
    assert!(lab.status.success());
    assert!(
        !String::from_utf8_lossy(&lab.stderr).contains("not verified"),
        "the lab verifies every server"
    );
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/inventories/commcare-example.yaml"
    );
    let out = cutover(&["check", example]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: connections to pg1 are not verified (sslmode prefer"),
        "{stderr}"
    );
}
