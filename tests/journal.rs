//! Journal tests against real SQLite files in a tempdir: durability across reopen, resume
//! lookup, the change-ticket export, and secret redaction.

use chrono::{DateTime, TimeZone, Utc};
use cutover::engine::{
    apply, required_confirmation, Command, Confirmation, Effect, EngineSettings, EngineState,
    EntryKind, JournalEntry, Oversight, PairApproval, PreconditionResult, StepStatus,
};
use cutover::journal::{redact, state_dir_from, Journal, JournalError, RunId, RunStatus};
use cutover::plan::{Plan, RenderedCommand, Step, StepFlags, StepId, Undo};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn plan(environment: &str, runbook: &str) -> Plan {
    Plan {
        environment: environment.into(),
        runbook: runbook.into(),
        params: BTreeMap::from([("from".to_string(), "p1".to_string())]),
        inventory_yaml: format!("environment: {environment}\n"),
        steps: vec![
            Step::new("preflight", "Preflight")
                .command(RenderedCommand::sql("pg1", "postgres", "SHOW wal_level;"))
                .precondition("wal-level", "wal_level is replica"),
            Step::new("pause", "Pause traffic")
                .command(RenderedCommand::pgbouncer_admin(
                    "pgb",
                    "PAUSE commcarehq_proxy;",
                ))
                .undo(Undo::Reversible {
                    description: "RESUME".into(),
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
                .undo(Undo::PointOfNoReturn {
                    reason: "test".into(),
                })
                .flags(StepFlags {
                    needs_traffic_stopped: true,
                    destructive: true,
                    ..StepFlags::default()
                }),
        ],
        tool_version: "0.0.0-test".into(),
    }
}

/// Instants with sub-millisecond parts, to prove they round-trip exactly.
fn at(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
        + chrono::Duration::nanoseconds(n * 1_000_123_457)
}

/// Drives the engine like the executor does: journal entries are appended before anything else.
struct Executor<'a> {
    journal: &'a Journal,
    run_id: RunId,
    plan: Plan,
    state: EngineState,
    clock: i64,
}

impl Executor<'_> {
    fn send(&mut self, command: Command) {
        self.clock += 1;
        let (state, effects) = apply(&self.state, &self.plan, at(self.clock), command).unwrap();
        self.state = state;
        for effect in effects {
            if let Effect::Journal(entry) = effect {
                self.journal.append(&self.run_id, &entry).unwrap();
            }
        }
    }
    fn start(&mut self, index: usize, by: &[&str]) {
        let step = self.plan.steps[index].id.clone();
        let requirement = required_confirmation(&self.state, &self.plan, &step, &[]).unwrap();
        let precondition_results = self.plan.steps[index]
            .preconditions
            .iter()
            .map(|p| PreconditionResult {
                id: p.id.clone(),
                holds: true,
                detail: "wal_level=replica".into(),
            })
            .collect();
        self.send(Command::Start {
            step,
            confirmation: Some(Confirmation {
                by: by[..1].iter().map(|s| s.to_string()).collect(),
                approval: requirement
                    .approval_of
                    .clone()
                    .zip(by.get(1))
                    .map(|(step, second)| PairApproval {
                        request_id: 1,
                        step,
                        fingerprint: self.plan.fingerprint(),
                        seen: requirement.seen.clone(),
                        driver_uid: 1000,
                        approver_uid: 1001,
                        approver: second.to_string(),
                        approver_terminal: "test".into(),
                    }),
                seen: requirement.seen,
            }),
            precondition_results,
            observations: vec![],
        });
    }
    fn succeed(&mut self, index: usize, detail: &str) {
        let step = self.plan.steps[index].id.clone();
        self.send(Command::ActionSucceeded {
            step,
            verification_detail: detail.into(),
        });
    }
}

fn all_files_contain(dir: &Path, needle: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let bytes = std::fs::read(p).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .collect()
}

#[test]
fn appended_entries_survive_reopen_and_replay_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan("lab", "shard-split");
    let settings = EngineSettings {
        oversight: Oversight::Pair,
    };
    let (run_id, live_state) = {
        let journal = Journal::open(dir.path()).unwrap();
        let run_id = journal.create_run(&plan).unwrap();
        let mut executor = Executor {
            journal: &journal,
            run_id: run_id.clone(),
            state: EngineState::new(&plan, settings),
            plan: plan.clone(),
            clock: 0,
        };
        executor.start(0, &["alice"]);
        executor.succeed(0, "wal_level=replica");
        executor.start(1, &["alice"]);
        executor.send(Command::Output {
            step: StepId::new("pause"),
            text: "PAUSE\nok".into(),
        });
        executor.succeed(1, "paused");
        executor.start(2, &["alice", "bob"]);
        // The process dies here, mid-step.
        (run_id, executor.state)
    };

    let journal = Journal::open(dir.path()).unwrap();
    let entries = journal.entries(&run_id).unwrap();
    assert!(entries.len() >= 10, "{} entries", entries.len());
    assert_eq!(entries.last().unwrap().kind, EntryKind::Started);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.kind == EntryKind::Confirmed)
            .count(),
        3
    );

    let meta = journal.run(&run_id).unwrap();
    assert_eq!(meta.fingerprint, plan.fingerprint());
    assert_eq!(meta.status, RunStatus::Running);
    assert_eq!(Plan::from_json(&meta.plan_json).unwrap(), plan);

    let replayed = EngineState::replay(&plan, settings, entries.iter()).unwrap();
    let mut expected = live_state;
    let StepStatus::Running { started_at } = expected.steps[2] else {
        panic!("promote was running")
    };
    expected.steps[2] = StepStatus::NeedsRecheck { started_at };
    assert_eq!(
        replayed, expected,
        "timestamps and statuses survive the round trip"
    );

    // The journal is in WAL mode on disk.
    let raw = rusqlite::Connection::open(journal.path()).unwrap();
    let mode: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn latest_unfinished_run_is_the_newest_running_one_for_that_target() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    assert!(journal
        .latest_unfinished_run("lab", "shard-split")
        .unwrap()
        .is_none());

    let older = journal.create_run(&plan("lab", "shard-split")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let newer = journal.create_run(&plan("lab", "shard-split")).unwrap();
    let _other_runbook = journal.create_run(&plan("lab", "major-upgrade")).unwrap();
    let _other_env = journal.create_run(&plan("prod", "shard-split")).unwrap();

    let found = journal
        .latest_unfinished_run("lab", "shard-split")
        .unwrap()
        .unwrap();
    assert_eq!(found.run_id, newer);
    assert_eq!(found.environment, "lab");
    assert_eq!(found.params.get("from").map(String::as_str), Some("p1"));

    journal.finish_run(&newer, RunStatus::Completed).unwrap();
    let found = journal
        .latest_unfinished_run("lab", "shard-split")
        .unwrap()
        .unwrap();
    assert_eq!(found.run_id, older);
    journal.finish_run(&older, RunStatus::RolledBack).unwrap();
    assert!(journal
        .latest_unfinished_run("lab", "shard-split")
        .unwrap()
        .is_none());
    assert_eq!(journal.run(&older).unwrap().status, RunStatus::RolledBack);
    assert_eq!(journal.runs().unwrap().len(), 4);

    let unknown = RunId("nope".into());
    assert!(matches!(
        journal.finish_run(&unknown, RunStatus::Failed),
        Err(JournalError::UnknownRun(_))
    ));
    let entry = JournalEntry::new(at(1), None, EntryKind::Note, "x");
    assert!(matches!(
        journal.append(&unknown, &entry),
        Err(JournalError::UnknownRun(_))
    ));
}

#[test]
fn the_markdown_export_is_a_run_record_with_confirmations_actors_and_gates() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let plan = plan("lab", "shard-split");
    let run_id = journal.create_run(&plan).unwrap();
    let mut executor = Executor {
        journal: &journal,
        run_id: run_id.clone(),
        state: EngineState::new(
            &plan,
            EngineSettings {
                oversight: Oversight::Pair,
            },
        ),
        plan: plan.clone(),
        clock: 0,
    };
    executor.start(0, &["alice"]);
    executor.succeed(0, "all checks passed");
    executor.start(1, &["alice"]);
    executor.succeed(1, "paused");
    executor.start(2, &["alice", "bob"]);
    executor.send(Command::Gate {
        step: StepId::new("promote"),
        detail: "pg2 replay 0/3000100 ≥ pg1 current 0/3000100".into(),
        passed: true,
    });
    executor.send(Command::Output {
        step: StepId::new("promote"),
        text: "a | b\nsecond line".into(),
    });
    executor.succeed(2, "pg_is_in_recovery() = false");
    journal.finish_run(&run_id, RunStatus::Completed).unwrap();

    let markdown = journal.export_markdown(&run_id).unwrap();
    for needle in [
        &format!("# Run record `{run_id}`"),
        &format!("| plan fingerprint | `{}` |", plan.fingerprint()),
        "| status | completed |",
        "| operators | alice, bob |",
        "`promote` confirmed by **alice**, **bob**",
        "## Gates",
        "passed: pg2 replay 0/3000100 ≥ pg1 current 0/3000100",
        "| 2 | `pause` | done 2025-03-01T12:00:0",
        "a \\| b<br>second line",
        "run_finished",
    ] {
        assert!(
            markdown.contains(needle),
            "missing {needle:?} in\n{markdown}"
        );
    }
    // Every entry appears in the timeline, numbered.
    let entries = journal.entries(&run_id).unwrap();
    assert!(markdown.contains(&format!("| {} |", entries.len())));

    let text = journal.show_text(&run_id).unwrap();
    assert!(
        text.contains("confirmed") && text.contains("[alice, bob]"),
        "{text}"
    );
    assert!(text.contains(&plan.fingerprint()));
}

#[test]
fn secrets_are_redacted_before_they_reach_the_disk() {
    let cases = [
        (
            "PGPASSWORD=hunter2 psql -h pg1",
            "PGPASSWORD=*** psql -h pg1",
        ),
        (
            "host=pg1 password=hunter2 dbname=p1",
            "host=pg1 password=*** dbname=p1",
        ),
        (
            "export PGPASSWORD='hunter 2'; psql",
            "export PGPASSWORD='***'; psql",
        ),
        (
            "ALTER ROLE app PASSWORD 'hun''ter2';",
            "ALTER ROLE app PASSWORD '***';",
        ),
        (
            r#"{"password": "hunter2", "user": "x"}"#,
            r#"{"password": "***", "user": "x"}"#,
        ),
        ("password: hunter2", "password: ***"),
        ("client_secret=abc&x=1", "client_secret=***&x=1"),
        (
            "postgresql://app:hunter2@pg1:5432/p1",
            "postgresql://app:***@pg1:5432/p1",
        ),
        ("ssh://deploy@pg2 stays", "ssh://deploy@pg2 stays"),
        (
            "password_encryption = scram-sha-256",
            "password_encryption = scram-sha-256",
        ),
        (
            "the password prompt appeared",
            "the password prompt appeared",
        ),
        ("naïve PGPASSWORD=ünïcode rest", "naïve PGPASSWORD=*** rest"),
    ];
    for (input, expected) in cases {
        assert_eq!(redact(input), expected, "redact({input:?})");
    }

    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut plan = plan("lab", "shard-split");
    plan.steps[0].commands.push(RenderedCommand::shell(
        "lab",
        "PGPASSWORD=planSecret9 psql -c 'select 1'",
    ));
    let run_id = journal.create_run(&plan).unwrap();
    let entry = JournalEntry::new(
        at(1),
        Some(StepId::new("preflight")),
        EntryKind::Output,
        "connecting with host=pg1 password=entrySecret7 dbname=postgres",
    );
    journal.append(&run_id, &entry).unwrap();

    let stored = journal.entries(&run_id).unwrap();
    assert_eq!(
        stored[0].detail,
        "connecting with host=pg1 password=*** dbname=postgres"
    );
    assert!(journal
        .run(&run_id)
        .unwrap()
        .plan_json
        .contains("PGPASSWORD=***"));
    assert!(!journal
        .export_markdown(&run_id)
        .unwrap()
        .contains("entrySecret7"));
    drop(journal);
    for secret in ["entrySecret7", "planSecret9"] {
        assert_eq!(
            all_files_contain(dir.path(), secret),
            Vec::<PathBuf>::new(),
            "{secret} on disk"
        );
    }
}

/// The screen masked `token=` while the journal stored it in clear; one redactor now serves
/// both, so a token in an entry's detail never reaches the disk.
#[test]
fn a_token_in_an_entry_detail_is_stored_masked() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let run_id = journal.create_run(&plan("lab", "shard-split")).unwrap();
    let detail = "hook called https://hooks.example/drain?token=abc&env=lab with token=abc";
    let entry = JournalEntry::new(
        at(1),
        Some(StepId::new("preflight")),
        EntryKind::Output,
        detail,
    );
    journal.append(&run_id, &entry).unwrap();
    let stored = journal.entries(&run_id).unwrap();
    assert_eq!(
        stored[0].detail,
        "hook called https://hooks.example/drain?token=***&env=lab with token=***"
    );
    assert_eq!(
        cutover::ui::render::redact_secrets(detail),
        stored[0].detail,
        "the screen and the journal mask alike"
    );
    drop(journal);
    assert_eq!(
        all_files_contain(dir.path(), "token=abc"),
        Vec::<PathBuf>::new(),
        "token on disk"
    );
}

#[test]
fn the_state_dir_follows_flag_then_env_then_xdg_then_home() {
    let p = |s: &str| PathBuf::from(s);
    let flag = p("/flag");
    let env = p("/env");
    let xdg = p("/xdg");
    let home = p("/home/op");
    let empty = p("");
    let resolve =
        |f: Option<&PathBuf>, e: Option<&PathBuf>, x: Option<&PathBuf>, h: Option<&PathBuf>| {
            state_dir_from(
                f.map(|v| v.as_path()),
                e.map(|v| v.as_path()),
                x.map(|v| v.as_path()),
                h.map(|v| v.as_path()),
            )
        };
    assert_eq!(
        resolve(Some(&flag), Some(&env), Some(&xdg), Some(&home)).unwrap(),
        p("/flag")
    );
    assert_eq!(
        resolve(None, Some(&env), Some(&xdg), Some(&home)).unwrap(),
        p("/env")
    );
    assert_eq!(
        resolve(None, Some(&empty), Some(&xdg), Some(&home)).unwrap(),
        p("/xdg/cutover")
    );
    assert_eq!(
        resolve(None, None, None, Some(&home)).unwrap(),
        p("/home/op/.local/state/cutover")
    );
    assert!(matches!(
        resolve(None, None, None, None),
        Err(JournalError::NoStateDir)
    ));

    // Opening creates the directory.
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    let journal = Journal::open(&nested).unwrap();
    assert_eq!(journal.path(), nested.join("journal.sqlite"));
    assert!(journal.path().exists());
}

/// The driver lock names its holder; the pause guard reads the pid to know whether a live
/// driver holds the run, and the name stays behind when the holder is gone.
#[test]
fn the_driver_lock_names_its_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.driver_holder_pid("env", "shard-split"), None);
    let lock = journal.lock_driver("env", "shard-split").unwrap();
    assert_eq!(
        journal.driver_holder_pid("env", "shard-split"),
        Some(std::process::id())
    );
    drop(lock);
    assert_eq!(
        journal.driver_holder_pid("env", "shard-split"),
        Some(std::process::id())
    );
    assert_eq!(journal.driver_holder_pid("env", "major-upgrade"), None);
}

#[test]
fn approval_requests_and_verdicts_round_trip_and_one_driver_waits_on_one_step() {
    use cutover::approval::{decide, Closed, Decision, Person, Verdict, VerdictRecord};
    use cutover::engine::{seen_hash, Observation};
    use cutover::journal::NewApprovalRequest;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let plan = plan("lab", "shard-split");
    let run_id = Journal::new_run_id();
    let step = StepId::new("promote");
    let observations = vec![Observation::new("standby.caught_up", "true")];
    let seen = seen_hash(&plan.fingerprint(), &step, &observations);
    let driver = Person {
        uid: 1000,
        label: "alice (uid 1000)".into(),
        terminal: "tty /dev/pts/1".into(),
    };
    let ask = |shown: &str| {
        journal
            .request_approval(&NewApprovalRequest {
                run_id: &run_id,
                environment: "lab",
                runbook: "shard-split",
                fingerprint: &plan.fingerprint(),
                step: &step,
                covers: "step `promote`",
                seen: &seen,
                observations: &observations,
                shown,
                driver: &driver,
            })
            .unwrap()
    };
    let first = ask("precondition caught-up holds: PGPASSWORD=hunter2");
    assert!(
        !first.shown.contains("hunter2"),
        "secrets are masked: {}",
        first.shown
    );
    assert_eq!(first.observations, observations);
    let second = ask("");
    assert_eq!(
        journal.approval_request(first.id).unwrap().closed,
        Some(Closed::Cancelled),
        "a new request cancels the open one"
    );
    let open = journal
        .open_approval_request("lab", "shard-split", Some(&step))
        .unwrap()
        .unwrap();
    assert_eq!(open, second);
    let verdict = |uid: u32, verdict: Verdict| VerdictRecord {
        request_id: Some(second.id),
        environment: "lab".into(),
        runbook: "shard-split".into(),
        fingerprint: plan.fingerprint(),
        step: Some(step.clone()),
        seen: Some(seen.clone()),
        verdict,
        reason: "why".into(),
        by: Person {
            uid,
            label: format!("user (uid {uid})"),
            terminal: "ssh 10.0.0.5 51234 → 10.0.0.1 22".into(),
        },
        at: Utc::now(),
    };
    journal
        .record_verdict(&verdict(1000, Verdict::Approve))
        .unwrap();
    let stored = journal.verdicts_on_request(second.id).unwrap();
    assert_eq!(
        decide(&open, &stored),
        Decision::Waiting,
        "the driver's own uid"
    );
    journal
        .record_verdict(&verdict(1001, Verdict::Approve))
        .unwrap();
    let stored = journal.verdicts_on_request(second.id).unwrap();
    assert!(matches!(decide(&open, &stored), Decision::Approved(v) if v.by.uid == 1001));
    journal
        .close_approval_request(second.id, Closed::Used)
        .unwrap();
    assert_eq!(
        journal
            .used_approval_request(&run_id, &step)
            .unwrap()
            .map(|r| r.id),
        Some(second.id)
    );
    assert!(journal
        .open_approval_request("lab", "shard-split", None)
        .unwrap()
        .is_none());
    assert_eq!(journal.approval_requests_of_run(&run_id).unwrap().len(), 2);
}

#[test]
fn a_group_writable_state_dir_gets_a_group_writable_journal() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2775)).unwrap();
    let journal = Journal::open(&shared).unwrap();
    journal.create_run(&plan("lab", "shard-split")).unwrap();
    let runs = shared.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    for file in [
        "journal.sqlite",
        "journal.sqlite-wal",
        "journal.sqlite-shm",
        "runs",
    ] {
        let mode = std::fs::metadata(shared.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o060, 0o060, "{file} is group-writable: {mode:o}");
    }
}
