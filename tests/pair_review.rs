//! Pair review by two people, not two names: a shard split driven with `--pair` by one OS user
//! waits at each step that needs two people until another OS user approves it from their own
//! session (`cutover approve`), through the shared journal in a setgid state directory. Real
//! lab, real OS users (created here and removed after), the real binary for every process.

mod common;

use common::tmux::Tmux;
use common::*;
use cutover::approval::Closed;
use cutover::engine::EntryKind;
use cutover::journal::{Journal, RunId};
use cutover::plan::StepId;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SPLIT: [&str; 8] = [
    "--from", "p1", "--to", "p2", "--node", "pg2", "--shards", "512-1023",
];

/// A group and two users in it, removed (with the group) when dropped.
struct People {
    group: String,
    approver: String,
    objector: String,
}

impl People {
    fn create() -> People {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let people = People {
            group: format!("cpr{tag}"),
            approver: format!("cpra{tag}"),
            objector: format!("cprb{tag}"),
        };
        system(Command::new("groupadd").arg(&people.group));
        for user in [&people.approver, &people.objector] {
            system(Command::new("useradd").args([
                "-M",
                "-N",
                "-g",
                &people.group,
                "-s",
                "/usr/sbin/nologin",
                user,
            ]));
        }
        people
    }

    fn uid(&self, user: &str) -> u32 {
        nix::unistd::User::from_name(user)
            .unwrap()
            .unwrap_or_else(|| panic!("no user {user}"))
            .uid
            .as_raw()
    }
}

impl Drop for People {
    fn drop(&mut self) {
        for user in [&self.approver, &self.objector] {
            let _ = Command::new("userdel").arg(user).status();
        }
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

fn system(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cutover ARGS` as `user` (`None`: as this process's user, the driver's).
fn cutover_as(user: Option<&str>, args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_cutover");
    let mut command = match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--", bin]);
            c
        }
        None => Command::new(bin),
    };
    // The display name is the user's own, so labels read `user (uid N)`.
    command
        .args(args)
        .env("CUTOVER_LOG", "warn")
        .env("USER", user.unwrap_or("root"));
    command.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The shared directory of the jump host: `chgrp GROUP; chmod 2775` (setgid, group-writable),
/// inside a temp dir others may traverse.
fn shared_state_dir(root: &Path, group: &str) -> PathBuf {
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = root.join("state");
    std::fs::create_dir(&state).unwrap();
    system(Command::new("chgrp").arg(group).arg(&state));
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o2775)).unwrap();
    state
}

/// The open request the driver waits on at `step`, once it is there.
fn wait_for_request(state: &Path, step: &str, driver: &mut std::process::Child, log: &Path) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = driver.try_wait() {
            panic!(
                "the driver ended ({status}) before waiting on {step}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(journal) = Journal::open(state) {
            if let Ok(Some(request)) =
                journal.open_approval_request("lab", "shard-split", Some(&StepId::new(step)))
            {
                return request.id;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the driver never waited on {step}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn started(state: &Path, run: &RunId, step: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let journal = Journal::open(state).unwrap();
    journal
        .entries(run)
        .unwrap_or_default()
        .into_iter()
        .find(|e| {
            e.kind == EntryKind::Started && e.step.as_ref().is_some_and(|s| s.as_str() == step)
        })
        .map(|e| e.at)
}

/// The `seen:` line of `cutover approve` in show mode.
fn shown_seen(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("seen: ").map(str::to_string))
        .unwrap_or_else(|| panic!("no seen line:\n{}", text(out)))
}

/// One plproxy option of the proxy's server, e.g. `p0600`.
async fn plproxy_option(port: u16, name: &str) -> String {
    let client = connect(port, "commcarehq_proxy").await;
    let options: Vec<String> = client
        .query_one(
            "SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'commcarehq'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    options
        .iter()
        .find_map(|o| o.strip_prefix(&format!("{name}=")).map(str::to_string))
        .unwrap()
}

async fn set_plproxy_option(port: u16, name: &str, value: &str) {
    let client = connect(port, "commcarehq_proxy").await;
    client
        .batch_execute(&format!(
            "ALTER SERVER commcarehq OPTIONS (SET {name} '{}')",
            value.replace('\'', "''")
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_split_waits_for_another_os_user_and_records_both_people() {
    let people = People::create();
    let approver_uid = people.uid(&people.approver);
    let lab = lab(2_000).await;
    let dir = tempfile::tempdir().unwrap();
    let state = shared_state_dir(dir.path(), &people.group);
    let state_arg = state.to_str().unwrap();
    // What the second person reviews: the same inventory, readable to them.
    let inventory = dir.path().join("lab.yaml");
    std::fs::copy(lab.config.inventory_path(), &inventory).unwrap();
    std::fs::set_permissions(&inventory, std::fs::Permissions::from_mode(0o644)).unwrap();
    let inv = inventory.to_str().unwrap();
    let driver_inv = lab.config.inventory_path();
    let driver_inv = driver_inv.to_str().unwrap();

    // The plan review: `run --pair` refuses a plan no second person approved; the driver's
    // own approval does not count.
    let mut run_args = vec!["run", driver_inv, "shard-split"];
    run_args.extend(SPLIT);
    run_args.extend(["--yes", "--pair", "--state-dir", state_arg]);
    let out = cutover_as(None, &run_args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no second operator"),
        "{}",
        text(&out)
    );
    let mut plan_args = vec!["plan", inv, "shard-split"];
    plan_args.extend(SPLIT);
    plan_args.extend(["--approve", "--state-dir", state_arg]);
    let out = cutover_as(None, &plan_args);
    assert!(out.status.success(), "{}", text(&out));
    let out = cutover_as(None, &run_args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "own plan approval: {}",
        text(&out)
    );
    let out = cutover_as(Some(&people.approver), &plan_args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("approved by {}", people.approver)),
        "{}",
        text(&out)
    );
    let journal_files: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("journal.sqlite"))
        .collect();
    assert!(!journal_files.is_empty());
    for file in &journal_files {
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o060, 0o060, "{} is group-writable", file.display());
    }

    // The driver: this process's OS user.
    let log = dir.path().join("driver.log");
    let mut driver = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(&run_args)
        .env("USER", "root")
        .stdout(Stdio::from(
            std::fs::File::create(dir.path().join("driver.out")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let approve_args = |step: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["approve", inv, "shard-split"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(SPLIT.iter().map(|s| s.to_string()));
        v.extend(["--step".to_string(), step.to_string()]);
        v.extend(["--state-dir".to_string(), state_arg.to_string()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let approve = |user: Option<&str>, step: &str, extra: &[&str]| {
        let v = approve_args(step, extra);
        cutover_as(user, &v.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // The paused window is approved as one unit, before traffic pauses.
    let window = wait_for_request(&state, "stop-traffic", &mut driver, &log);
    let journal = Journal::open(&state).unwrap();
    let run = journal.runs().unwrap().remove(0).run_id;
    let shown = approve(Some(&people.approver), "stop-traffic", &[]);
    assert!(shown.status.success(), "{}", text(&shown));
    let seen = shown_seen(&shown);
    let shown_text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown_text.contains("root (uid 0)"),
        "names the driver: {shown_text}"
    );
    assert!(
        shown_text.contains("the paused window `stop-traffic` through `resume-traffic`"),
        "{shown_text}"
    );

    // The driver's own OS user cannot approve, whatever name it types.
    let out = approve(
        None,
        "stop-traffic",
        &["--seen", &seen, "--operator", "bob"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("different OS user"),
        "{}",
        text(&out)
    );

    // An objection blocks, even over an approval, until it is withdrawn.
    let out = approve(
        Some(&people.objector),
        "stop-traffic",
        &["--object", "the application team is still deploying"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = approve(Some(&people.approver), "stop-traffic", &["--seen", &seen]);
    assert!(out.status.success(), "{}", text(&out));
    let approved_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        started(&state, &run, "stop-traffic"),
        None,
        "blocked by the objection"
    );
    assert!(
        paused_aliases(&lab).await.is_empty(),
        "no pause while a person is waited for"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("BLOCKED")
            && log_text.contains("the application team is still deploying"),
        "the driver shows the objection:\n{log_text}"
    );
    assert!(log_text.contains("waiting since"), "{log_text}");
    let out = approve(Some(&people.objector), "stop-traffic", &["--withdraw"]);
    assert!(out.status.success(), "{}", text(&out));

    // Withdrawn: the window runs with the standing approval; the pause began after it.
    let delete = wait_for_request(&state, "delete-invalid", &mut driver, &log);
    let paused_at = started(&state, &run, "stop-traffic").expect("the window ran");
    assert!(
        paused_at > approved_at,
        "traffic paused only after the approval"
    );
    assert!(started(&state, &run, "resume-traffic").is_some());
    assert_eq!(started(&state, &run, "delete-invalid"), None);
    let journal = Journal::open(&state).unwrap();
    assert_eq!(
        journal.approval_request(window).unwrap().closed,
        Some(Closed::Used)
    );

    // A stale approval: the routing the driver saw changes after the approver was shown it.
    let shown = approve(Some(&people.approver), "delete-invalid", &[]);
    assert!(shown.status.success(), "{}", text(&shown));
    let first_seen = shown_seen(&shown);
    let pg1 = lab.config.pg1_port;
    let moved = plproxy_option(pg1, "p0600").await;
    let unmoved = plproxy_option(pg1, "p0000").await;
    set_plproxy_option(pg1, "p0600", &unmoved).await;
    let out = approve(
        Some(&people.approver),
        "delete-invalid",
        &["--seen", &first_seen],
    );
    assert!(
        out.status.success(),
        "accepted on the request it was shown: {}",
        text(&out)
    );
    // The driver reads again before starting: what was approved is no longer what it sees.
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        let journal = Journal::open(&state).unwrap();
        if let Some(r) = journal
            .open_approval_request("lab", "shard-split", Some(&StepId::new("delete-invalid")))
            .unwrap()
            .filter(|r| r.id != delete)
        {
            break r;
        }
        assert!(Instant::now() < deadline, "the driver never asked again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(second.seen, first_seen);
    assert_eq!(
        Journal::open(&state)
            .unwrap()
            .approval_request(delete)
            .unwrap()
            .closed,
        Some(Closed::Superseded)
    );
    assert_eq!(
        started(&state, &run, "delete-invalid"),
        None,
        "a stale approval runs nothing"
    );
    let out = approve(
        Some(&people.approver),
        "delete-invalid",
        &["--seen", &first_seen],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stale"),
        "{}",
        text(&out)
    );

    // Routing restored: the driver asks once more and the approval of what it sees runs it.
    set_plproxy_option(pg1, "p0600", &moved).await;
    let shown = approve(Some(&people.approver), "delete-invalid", &[]);
    let current = shown_seen(&shown);
    let out = approve(
        Some(&people.approver),
        "delete-invalid",
        &["--seen", &current],
    );
    assert!(out.status.success(), "{}", text(&out));
    let status = loop {
        if let Some(status) = driver.try_wait().unwrap() {
            break status;
        }
        // Re-asked after the approval went stale once more: approve what is shown now.
        let shown = approve(Some(&people.approver), "delete-invalid", &[]);
        if shown.status.success() {
            let now = shown_seen(&shown);
            if now != current {
                let _ = approve(Some(&people.approver), "delete-invalid", &["--seen", &now]);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "the run completes:\n{log_text}");
    assert!(log_text.contains("stale; asking again"), "{log_text}");

    // The record names both people, their terminals and what both saw.
    let out = cutover_as(
        None,
        &[
            "journal",
            "export",
            &run.0,
            "--format",
            "md",
            "--state-dir",
            state_arg,
        ],
    );
    let markdown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    let approver_label = format!("{} (uid {approver_uid})", people.approver);
    for needle in [
        "## Pair review",
        "driven by **root (uid 0)**",
        &format!("approved by **{approver_label}**, who saw seen `{seen}`"),
        &format!("objected to by **{} (uid", people.objector),
        "the application team is still deploying",
        "withdrawn by",
        "superseded: the readings changed after the approval",
        "the step ran with this approval",
        &format!("plan approve by | {approver_label}"),
    ] {
        assert!(markdown.contains(needle), "lacks {needle:?}:\n{markdown}");
    }
    let confirmed: Vec<_> = Journal::open(&state)
        .unwrap()
        .entries(&run)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::Confirmed)
        .collect();
    for step in ["stop-traffic", "resume-traffic", "delete-invalid"] {
        let entry = confirmed
            .iter()
            .find(|e| e.step.as_ref().is_some_and(|s| s.as_str() == step))
            .unwrap();
        assert_eq!(
            entry.actors,
            vec!["headless:root (uid 0)".to_string(), approver_label.clone()],
            "{step}"
        );
    }
    let out = cutover_as(
        None,
        &[
            "journal",
            "export",
            &run.0,
            "--format",
            "json",
            "--state-dir",
            state_arg,
        ],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // For the record (not asserted): how long traffic was paused, and from the verdict that
    // let a step go to its start.
    let entries = Journal::open(&state).unwrap().entries(&run).unwrap();
    let at = |kind: EntryKind, step: &str| {
        entries
            .iter()
            .find(|e| e.kind == kind && e.step.as_ref().is_some_and(|s| s.as_str() == step))
            .map(|e| e.at)
            .unwrap()
    };
    let journal = Journal::open(&state).unwrap();
    let timer = Instant::now();
    for _ in 0..100 {
        let used = journal
            .used_approval_request(&run, &StepId::new("stop-traffic"))
            .unwrap()
            .unwrap();
        journal.verdicts_on_request(used.id).unwrap();
    }
    println!(
        "the window's approval looked up inside the pause in {:.3} ms",
        timer.elapsed().as_secs_f64() * 1000.0 / 100.0
    );
    println!(
        "paused for {} ms (stop-traffic started → resume-traffic verified)",
        (at(EntryKind::Verified, "resume-traffic") - at(EntryKind::Started, "stop-traffic"))
            .num_milliseconds()
    );
    let journal = Journal::open(&state).unwrap();
    for request in journal.approval_requests_of_run(&run).unwrap() {
        if request.closed != Some(Closed::Used) {
            continue;
        }
        let last_verdict = journal
            .verdicts_on_request(request.id)
            .unwrap()
            .into_iter()
            .map(|v| v.at)
            .max()
            .unwrap();
        let confirmed = confirmed
            .iter()
            .find(|e| e.step.as_ref() == Some(&request.step))
            .unwrap()
            .at;
        println!(
            "{}: last verdict → confirmed in {} ms",
            request.step,
            (confirmed - last_verdict).num_milliseconds()
        );
    }
    let reviews = json["pair_review"].as_array().unwrap();
    assert!(reviews.iter().any(|r| r["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["by"]["uid"] == approver_uid && v["verdict"] == "approve")));
    assert!(reviews.iter().all(|r| r["driver"]["uid"] == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_operator_approves_and_objects_from_their_own_cockpit() {
    let people = People::create();
    let lab = lab(2_000).await;
    let dir = tempfile::tempdir().unwrap();
    let state = shared_state_dir(dir.path(), &people.group);
    let state_arg = state.to_str().unwrap();
    let inventory = dir.path().join("lab.yaml");
    std::fs::copy(lab.config.inventory_path(), &inventory).unwrap();
    std::fs::set_permissions(&inventory, std::fs::Permissions::from_mode(0o644)).unwrap();
    let inv = inventory.to_str().unwrap();
    let mut plan_args = vec!["plan", inv, "shard-split"];
    plan_args.extend(SPLIT);
    plan_args.extend(["--approve", "--state-dir", state_arg]);
    let out = cutover_as(Some(&people.approver), &plan_args);
    assert!(out.status.success(), "{}", text(&out));

    let driver_inv = lab.config.inventory_path();
    let mut run_args = vec!["run", driver_inv.to_str().unwrap(), "shard-split"];
    run_args.extend(SPLIT);
    run_args.extend(["--yes", "--pair", "--state-dir", state_arg]);
    let log = dir.path().join("driver.log");
    let mut driver = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(&run_args)
        .env("USER", "root")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let window = wait_for_request(&state, "stop-traffic", &mut driver, &log);
    let run = Journal::open(&state)
        .unwrap()
        .runs()
        .unwrap()
        .remove(0)
        .run_id;

    // The second person's own cockpit, as their own OS user.
    let second = format!(
        "runuser -u {} -- {} tui {inv} shard-split {} --second --state-dir {state_arg} --operator {}; sleep 0.2",
        people.approver,
        env!("CARGO_BIN_EXE_cutover"),
        SPLIT.join(" "),
        people.approver,
    );
    let tmux = Tmux::start(&second);
    let long = Duration::from_secs(120);
    let screen = tmux.wait_for("waits for you to approve", long);
    assert!(screen.contains("root (uid 0)"), "{screen}");
    tmux.send(&["-l", "a"]);
    let dialog = tmux.wait_for("as the second operator?", long);
    let request = Journal::open(&state)
        .unwrap()
        .approval_request(window)
        .unwrap();
    for needle in [
        "root (uid 0) waits since",
        &request.seen[..40],
        "Run the paused window",
        "stop-traffic",
    ] {
        let needle = needle.replace("Run the paused window", "PAUSE");
        assert!(dialog.contains(&needle), "lacks {needle:?}:\n{dialog}");
    }
    tmux.confirm_typed("p2", "approve recorded on request", long);
    let delete = wait_for_request(&state, "delete-invalid", &mut driver, &log);
    assert!(started(&state, &run, "resume-traffic").is_some());

    // An objection from the cockpit blocks the driver, with its reason, until withdrawn.
    tmux.wait_for("waits for you to approve step `delete-invalid`", long);
    tmux.send(&["-l", "o"]);
    tmux.wait_for("Object to step `delete-invalid`?", long);
    std::thread::sleep(Duration::from_millis(500));
    tmux.send(&["-l", "the vacuum window is not open yet"]);
    tmux.send(&["Tab"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux.send(&["-l", "Y"]);
    tmux.wait_for("object recorded on request", long);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log_text = std::fs::read_to_string(&log).unwrap();
        if log_text.contains("BLOCKED") && log_text.contains("the vacuum window is not open yet") {
            break;
        }
        assert!(Instant::now() < deadline, "no objection shown:\n{log_text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    tmux.wait_for("your verdict: object", long);
    assert_eq!(started(&state, &run, "delete-invalid"), None);
    tmux.send(&["-l", "w"]);
    tmux.wait_for("withdraw recorded on request", long);
    tmux.send(&["-l", "a"]);
    tmux.wait_for("as the second operator?", long);
    tmux.confirm_typed("p2", "approve recorded on request", long);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = driver.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the driver did not finish:\n{}\n{}",
            std::fs::read_to_string(&log).unwrap(),
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    tmux.send(&["-l", "q"]);

    let journal = Journal::open(&state).unwrap();
    let verdicts = journal.verdicts_on_request(delete).unwrap();
    let kinds: Vec<&str> = verdicts.iter().map(|v| v.verdict.as_str()).collect();
    assert_eq!(kinds, ["object", "withdraw", "approve"]);
    assert!(verdicts
        .iter()
        .all(|v| v.by.uid == people.uid(&people.approver)));
    assert!(
        verdicts[0].by.terminal.contains("tty /dev/pts/"),
        "the cockpit's terminal is recorded: {}",
        verdicts[0].by.terminal
    );
}

/// Press `key` after the dialog's guard until `done` shows, confirming again when asked.
fn confirm_until(tmux: &Tmux, key: &str, done: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    std::thread::sleep(Duration::from_millis(500));
    tmux.send(&["-l", key]);
    loop {
        let screen = tmux.screen();
        if screen.contains(done) {
            return screen;
        }
        if screen.contains("confirm again") {
            std::thread::sleep(Duration::from_millis(500));
            tmux.send(&["-l", key]);
        }
        assert!(
            Instant::now() < deadline,
            "{done:?} never appeared; screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drivers_cockpit_waits_visibly_and_runs_the_window_once_approved() {
    let people = People::create();
    let lab = lab(2_000).await;
    let dir = tempfile::tempdir().unwrap();
    let state = shared_state_dir(dir.path(), &people.group);
    let state_arg = state.to_str().unwrap();
    let inventory = dir.path().join("lab.yaml");
    std::fs::copy(lab.config.inventory_path(), &inventory).unwrap();
    std::fs::set_permissions(&inventory, std::fs::Permissions::from_mode(0o644)).unwrap();
    let inv = inventory.to_str().unwrap();
    let mut plan_args = vec!["plan", inv, "shard-split"];
    plan_args.extend(SPLIT);
    plan_args.extend(["--approve", "--state-dir", state_arg]);
    let out = cutover_as(Some(&people.approver), &plan_args);
    assert!(out.status.success(), "{}", text(&out));

    let driver = format!(
        "{} tui {} shard-split {} --pair --operator alice --state-dir {state_arg}; sleep 0.2",
        env!("CARGO_BIN_EXE_cutover"),
        lab.config.inventory_path().display(),
        SPLIT.join(" "),
    );
    let tmux = Tmux::start(&driver);
    let long = Duration::from_secs(120);
    tmux.wait_for("0/14 steps done", long);
    std::thread::sleep(Duration::from_secs(1));
    for done in 1..=3 {
        tmux.send(&["Enter"]);
        confirm_until(&tmux, "y", &format!("{done}/14 steps done"), long);
        if done == 2 {
            tmux.wait_for("pg2 standby", long);
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    tmux.send(&["Enter"]);
    tmux.wait_for("Run the paused window, steps 4–9?", long);
    tmux.confirm_typed(
        "p2",
        "Waiting for a second operator to approve the paused window",
        long,
    );
    let screen = tmux.wait_for("another OS user than root (uid 0) \"alice\"", long);
    assert!(screen.contains("3/14 steps done"), "{screen}");
    assert!(
        paused_aliases(&lab).await.is_empty(),
        "not paused while waiting"
    );

    let mut approve_args = vec!["approve", inv, "shard-split"];
    approve_args.extend(SPLIT);
    approve_args.extend(["--step", "stop-traffic", "--state-dir", state_arg]);
    let shown = cutover_as(Some(&people.approver), &approve_args);
    let seen = shown_seen(&shown);
    approve_args.extend(["--seen", &seen]);
    let out = cutover_as(Some(&people.approver), &approve_args);
    assert!(out.status.success(), "{}", text(&out));
    let screen = tmux.wait_for("9/14 steps done", long);
    assert!(
        !screen.contains("Waiting for a second operator"),
        "{screen}"
    );
    tmux.send(&["-l", "q"]);

    let journal = Journal::open(&state).unwrap();
    let run = journal.runs().unwrap().remove(0).run_id;
    let confirmed = journal
        .entries(&run)
        .unwrap()
        .into_iter()
        .find(|e| {
            e.kind == EntryKind::Confirmed
                && e.step
                    .as_ref()
                    .is_some_and(|s| s.as_str() == "stop-traffic")
        })
        .expect("the window was confirmed");
    assert_eq!(
        confirmed.actors,
        vec![
            "alice".to_string(),
            format!("{} (uid {})", people.approver, people.uid(&people.approver))
        ]
    );
}
