//! The logical-move runbook against a real lab: PostgreSQL 15 (pg1) into PostgreSQL 18
//! (`pg1new`), under application load through the entry alias, with a sequence-keyed table
//! written by a trigger. Crashes (kill -9 at every step, inside the copy and inside the pause)
//! are in tests/crash_matrix.rs.

mod common;

use cutover::engine::Oversight;
use cutover::lab::load::{self, LoadOptions, LoadReport};
use cutover::lab::P1_DB;
use cutover::plan::StepId;
use cutover::runbooks::logical_move::rehearse::MoveLab;
use cutover::runbooks::logical_move::LogicalMove;
use cutover::session::{self, Invocation};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

type Load = (watch::Sender<bool>, JoinHandle<LoadReport>);

fn start_load(lab: &MoveLab, rate: u32) -> Load {
    let inventory = cutover::inventory::load(&lab.config.inventory_path()).expect("inventory");
    let (stop, stopped) = watch::channel(false);
    let options = LoadOptions {
        endpoint: load::entry_endpoint(&inventory).expect("the entry alias"),
        rate,
        duration: Duration::from_secs(3600),
        workers: 2,
        out: None,
    };
    let task = tokio::spawn(async move { load::run(options, stopped).await.expect("load") });
    (stop, task)
}

async fn stop_load((stop, task): Load) -> LoadReport {
    stop.send(true).expect("stop the load");
    task.await.expect("load task")
}

fn invocation(lab: &MoveLab, state: &std::path::Path) -> Invocation {
    Invocation {
        oversight: Oversight::Solo,
        ..lab.invocation(state.to_path_buf())
    }
}

/// Every row of `table` as text.
async fn rows(client: &Client, table: &str) -> BTreeSet<String> {
    client
        .batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3")
        .await
        .unwrap();
    client
        .query(&format!("SELECT t::text FROM {table} t"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_to_18_under_load_row_for_row_with_sequences_set() {
    let lab = MoveLab::start(5_000, 18).await.expect("lab");
    let state = tempfile::tempdir().unwrap();
    let load = start_load(&lab, 100);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut runner = session::open_as::<LogicalMove>(&invocation(&lab, state.path())).unwrap();
    runner.run_headless("test").await.expect("the move runs");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = stop_load(load).await;
    assert_eq!(report.failed, 0, "no call failed: {:?}", report.errors);
    assert!(report.committed > 0);

    let source = lab.source().await.unwrap();
    let target = lab.target().await.unwrap();
    let version: String = target
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("18"), "{version}");
    // The source stopped taking writes at the cutover: every row it has is on the target,
    // identical; the target has the rows written after the cutover besides.
    for table in ["forms", "cases", "form_events"] {
        let (s, t) = (rows(&source, table).await, rows(&target, table).await);
        let lost: Vec<&String> = s.difference(&t).take(3).collect();
        assert!(lost.is_empty(), "{table}: rows not on the target: {lost:?}");
    }
    let (missing, duplicated, slots) = lab.audit(&report.committed_ids).await.unwrap();
    assert_eq!((missing, duplicated, slots), (0, 0, 0));
    // Writes after the cutover landed on the target and took ids from its sequence without
    // a clash (no failed call), and the sequence is past every id.
    let after_cutover = rows(&target, "forms")
        .await
        .difference(&rows(&source, "forms").await)
        .count();
    assert!(
        after_cutover > 0,
        "writes reached the target after the cutover"
    );
    let next: i64 = count(&target, "SELECT nextval('form_events_id_seq')").await;
    let max: i64 = count(&target, "SELECT max(id) FROM form_events").await;
    assert!(next > max, "nextval {next} > max(id) {max}");
    let memory = runner.actions().memory().clone();
    assert_eq!(memory.sequences.len(), 1, "{:?}", memory.sequences);
    assert!(memory.pause_window_ms.is_some());
    // The aliases route to the target, none is paused, nothing of the move is left.
    let inventory = cutover::inventory::load(&lab.config.inventory_path()).unwrap();
    let alias = inventory.pgbouncers[0]
        .aliases
        .iter()
        .find(|a| a.name == P1_DB)
        .unwrap();
    assert_eq!(alias.node, "pg1new");
    assert_eq!(
        count(&source, "SELECT count(*) FROM pg_publication").await,
        0
    );
    assert_eq!(
        count(&target, "SELECT count(*) FROM pg_subscription").await,
        0
    );
    assert_eq!(
        count(
            &target,
            "SELECT count(*) FROM pg_class WHERE relname IN ('cutover_move_canary', 'cutover_copy_ledger')"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_on_the_source_mid_stream_stops_the_run_with_a_clear_message() {
    let lab = MoveLab::start(1_000, 18).await.expect("lab");
    let state = tempfile::tempdir().unwrap();
    let mut runner = session::open_as::<LogicalMove>(&invocation(&lab, state.path())).unwrap();
    runner
        .run_headless_through("test", Some(&StepId::new("subscribe")))
        .await
        .expect("through subscribe");
    lab.source()
        .await
        .unwrap()
        .batch_execute("ALTER TABLE forms ADD COLUMN note text")
        .await
        .unwrap();
    let error = runner
        .run_headless("test")
        .await
        .expect_err("the catch-up stops");
    let text = error.to_string();
    assert!(text.contains("catch-up"), "{text}");
    assert!(text.contains("schema change (DDL)"), "{text}");
    assert!(text.contains("note text"), "names the new column: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_before_the_pause_leaves_nothing_and_a_refused_gate_puts_traffic_back_on_the_source(
) {
    let lab = MoveLab::start(1_000, 18).await.expect("lab");
    let state = tempfile::tempdir().unwrap();
    let load = start_load(&lab, 50);
    let mut runner = session::open_as::<LogicalMove>(&invocation(&lab, state.path())).unwrap();
    runner
        .run_headless_through("test", Some(&StepId::new("catch-up")))
        .await
        .expect("through catch-up");

    // The stream stops delivering (as into a Citus distributed table): the gate's canary never
    // shows, the gate is refused inside the pause, the run rolls back to before the pause and
    // traffic flows to the source again.
    let target = lab.target().await.unwrap();
    let sub: String = target
        .query_one("SELECT subname::text FROM pg_subscription", &[])
        .await
        .unwrap()
        .get(0);
    target
        .batch_execute(&format!("ALTER SUBSCRIPTION {sub} DISABLE"))
        .await
        .unwrap();
    let error = runner
        .run_headless("test")
        .await
        .expect_err("the gate refuses");
    assert!(error.to_string().contains("canary"), "{error}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let inventory = cutover::inventory::load(&lab.config.inventory_path()).unwrap();
    let alias = inventory.pgbouncers[0]
        .aliases
        .iter()
        .find(|a| a.name == P1_DB)
        .unwrap();
    assert_eq!(alias.node, "pg1", "the alias still routes to the source");
    let before = lab.source().await.unwrap();
    let n0 = count(&before, "SELECT count(*) FROM forms").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        count(&before, "SELECT count(*) FROM forms").await > n0,
        "writes land on the source again"
    );

    // Then roll back every step: nothing of the move is left anywhere.
    runner
        .rollback_to(&StepId::new("preflight"), "test", "give up")
        .await
        .expect("rollback");
    let report = stop_load(load).await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let source = lab.source().await.unwrap();
    let committed: Vec<String> = report.committed_ids.iter().map(|i| i.to_string()).collect();
    let found: i64 = source
        .query_one(
            "SELECT count(*) FROM forms WHERE form_id::text = ANY($1)",
            &[&committed],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        found as usize,
        committed.len(),
        "every committed form is on the source"
    );
    assert_eq!(
        count(&source, "SELECT count(*) FROM pg_replication_slots").await,
        0
    );
    assert_eq!(
        count(&source, "SELECT count(*) FROM pg_publication").await,
        0
    );
    assert_eq!(
        count(
            &source,
            "SELECT count(*) FROM pg_class WHERE relname = 'cutover_move_canary'"
        )
        .await,
        0
    );
    let admin = common::connect(lab.target_port, "postgres").await;
    let db: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&P1_DB],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, 0, "the database this run created on the target is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_key_or_replica_identity_is_refused_unless_excluded() {
    let lab = MoveLab::start(200, 18).await.expect("lab");
    lab.source()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE audit_log (at timestamptz, line text); INSERT INTO audit_log VALUES (now(), 'x')")
        .await
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut runner = session::open_as::<LogicalMove>(&invocation(&lab, state.path())).unwrap();
    let error = runner
        .run_headless_through("test", Some(&StepId::new("preflight")))
        .await
        .expect_err("refused");
    let text = error.to_string();
    assert!(
        text.contains("public.audit_log has no primary key"),
        "{text}"
    );
    drop(runner);

    let state = tempfile::tempdir().unwrap();
    let mut with_exclude = invocation(&lab, state.path());
    with_exclude
        .params
        .insert("exclude".into(), "audit_log".into());
    let mut runner = session::open_as::<LogicalMove>(&with_exclude).unwrap();
    runner
        .run_headless_through("test", Some(&StepId::new("preflight")))
        .await
        .expect("excluded: the preflight holds");
    assert!(!runner
        .actions()
        .memory()
        .tables
        .iter()
        .any(|t| t.contains("audit_log")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_into_citus_under_load_through_the_tools_apply_row_for_row() {
    use cutover::lab::citus::{CitusLab, COORDINATOR, DATABASE};
    let lab = CitusLab::start(2_000, 15).await.expect("a Citus lab");
    let state = tempfile::tempdir().unwrap();
    let mut bootstrap = cutover::runbooks::citus_bootstrap::rehearse::lab_invocation(
        &lab,
        state.path().join("bootstrap"),
    );
    bootstrap.oversight = Oversight::Solo;
    session::open_as::<cutover::runbooks::citus_bootstrap::CitusBootstrap>(&bootstrap)
        .unwrap()
        .run_headless("test")
        .await
        .expect("citus-bootstrap with the schema of pg1/commcarehq_p1");

    // The application's function, which citus-bootstrap does not bring: without it the
    // preflight refuses the move (the calls would fail after the cutover).
    let coordinator = lab.coordinator(DATABASE).await.unwrap();
    coordinator
        .batch_execute(
            "CREATE FUNCTION insert_form(form_id uuid, domain text, payload jsonb) RETURNS uuid LANGUAGE sql AS $$ \
             INSERT INTO forms (form_id, domain, received_on, payload) VALUES ($1, $2, now(), $3) RETURNING form_id $$",
        )
        .await
        .unwrap();
    drop(coordinator);
    let inventory = cutover::inventory::load(&lab.inventory_path()).unwrap();
    let (stop, stopped) = watch::channel(false);
    let options = LoadOptions {
        endpoint: load::entry_endpoint(&inventory).expect("the entry alias"),
        rate: 50,
        duration: Duration::from_secs(3600),
        workers: 2,
        out: None,
    };
    let task = tokio::spawn(async move { load::run(options, stopped).await.expect("load") });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let invocation = Invocation {
        inventory_path: lab.inventory_path(),
        runbook: "logical-move".into(),
        params: [
            ("from", format!("pg1/{P1_DB}")),
            ("to", format!("{COORDINATOR}/{DATABASE}")),
            // citus-bootstrap brought the tables its inventory section names.
            ("tables", "forms".into()),
            ("min-free-gb", "1".into()),
            ("min-free-percent", "1".into()),
            ("pause-bound-ms", "5000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        state_dir: Some(state.path().join("move")),
        oversight: Oversight::Solo,
        trust_on_first_use: false,
        expect_fingerprint: None,
    };
    let mut runner = session::open_as::<LogicalMove>(&invocation).unwrap();
    runner
        .run_headless("test")
        .await
        .expect("the move into Citus");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = stop_load((stop, task)).await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);

    let source = common::connect(lab.config.pg1_port, P1_DB).await;
    let coordinator = lab.coordinator(DATABASE).await.unwrap();
    let distributed: i64 = count(
        &coordinator,
        "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'forms'::regclass",
    )
    .await;
    assert_eq!(distributed, 1, "forms is distributed");
    let (s, t) = (
        rows(&source, "forms").await,
        rows(&coordinator, "forms").await,
    );
    assert!(
        s.is_subset(&t),
        "every source row is visible through the coordinator"
    );
    let ids: Vec<String> = report.committed_ids.iter().map(|i| i.to_string()).collect();
    let found: i64 = coordinator
        .query_one(
            "SELECT count(*) FROM forms WHERE form_id::text = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        found as usize,
        ids.len(),
        "every committed form is on Citus"
    );
    assert_eq!(
        count(&source, "SELECT count(*) FROM pg_replication_slots").await,
        0
    );
}

async fn wal_level(lab: &MoveLab) -> String {
    common::connect(lab.config.pg1_port, "postgres")
        .await
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_is_set_with_a_restart_and_its_undo_puts_it_back() {
    use cutover::lab::proc::{run_checked, service_command};
    let lab = MoveLab::start(200, 18).await.expect("lab");
    common::connect(lab.config.pg1_port, "postgres")
        .await
        .batch_execute("ALTER SYSTEM SET wal_level = replica")
        .await
        .unwrap();
    let restart = || {
        run_checked(
            service_command(format!("{}/pg_ctl", cutover::lab::PG15_BIN))
                .arg("-D")
                .arg(lab.config.dir.join("pg1"))
                .arg("-l")
                .arg(lab.config.dir.join("pg1.log"))
                .args(["-m", "fast", "-w", "restart"]),
        )
        .expect("restart pg1")
    };
    restart();
    assert_eq!(wal_level(&lab).await, "replica");

    let state = tempfile::tempdir().unwrap();
    let mut runner = session::open_as::<LogicalMove>(&invocation(&lab, state.path())).unwrap();
    runner
        .run_headless_through("test", Some(&StepId::new("wal-level")))
        .await
        .expect("preflight and wal-level");
    assert_eq!(wal_level(&lab).await, "logical", "set, and pg1 restarted");
    assert_eq!(
        runner.actions().memory().wal_level_before.as_deref(),
        Some("replica")
    );
    runner
        .rollback_to(&StepId::new("wal-level"), "test", "not today")
        .await
        .expect("rollback");
    assert_eq!(wal_level(&lab).await, "replica", "put back, and restarted");
}

/// Every row of `table` on `target` is on `source`, identical.
async fn contained(source: &Client, target: &Client, table: &str) {
    let (s, t) = (rows(source, table).await, rows(target, table).await);
    let lost: Vec<&String> = t.difference(&s).take(3).collect();
    assert!(
        lost.is_empty(),
        "{table}: rows of the target not on the source: {lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reverse_stream_moves_back_to_15_without_losing_a_write_then_retires() {
    let lab = MoveLab::start(1_000, 18).await.expect("lab");
    let state = tempfile::tempdir().unwrap();
    let mut inv = invocation(&lab, state.path());
    inv.params.insert("reverse-stream".into(), "yes".into());
    let load = start_load(&lab, 50);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut runner = session::open_as::<LogicalMove>(&inv).unwrap();
    let progress = runner.run_headless("test").await.expect("the move runs");
    assert!(
        format!("{progress:?}").contains("move-back"),
        "held before the move back: {progress:?}"
    );
    let inventory = cutover::inventory::load(&lab.config.inventory_path()).unwrap();
    let alias = |inventory: &cutover::inventory::Inventory| {
        inventory.pgbouncers[0]
            .aliases
            .iter()
            .find(|a| a.name == P1_DB)
            .unwrap()
            .node
            .clone()
    };
    assert_eq!(alias(&inventory), "pg1new");
    // Writes land on the target through the alias; its reverse slot shows in the readings
    // the Replication pane draws, beside no forward slot left on the source.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let target_node = inventory.node("pg1new").unwrap();
    let reading = cutover::readings::slots::read_once(&inventory, target_node).await;
    let watch = reading.value().expect("the target's slots read");
    let back = watch
        .slots
        .iter()
        .find(|s| s.name.ends_with("_back"))
        .unwrap_or_else(|| panic!("the reverse slot is read on the target: {:?}", watch.slots));
    assert!(back.lag_bytes.is_some(), "{back:?}");
    let source = lab.source().await.unwrap();
    let target = lab.target().await.unwrap();
    assert_eq!(
        count(&source, "SELECT count(*) FROM pg_replication_slots").await,
        0,
        "the forward slot is dropped; the reverse stream runs on"
    );
    let on_target_only = rows(&target, "forms")
        .await
        .difference(&rows(&source, "forms").await)
        .count();
    assert!(
        on_target_only < 200,
        "the reverse stream follows ({on_target_only} behind)"
    );

    runner
        .run_headless_through("test", Some(&StepId::new("move-back")))
        .await
        .expect("moves back");
    let inventory = cutover::inventory::load(&lab.config.inventory_path()).unwrap();
    assert_eq!(
        alias(&inventory),
        "pg1",
        "the alias routes to the source again"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let report = stop_load(load).await;
    assert_eq!(report.failed, 0, "no call failed: {:?}", report.errors);

    // Every write the target took is on the source; the source took the later ones with ids
    // past the target's.
    for table in ["forms", "cases", "form_events"] {
        contained(&source, &target, table).await;
    }
    let committed: Vec<String> = report.committed_ids.iter().map(|i| i.to_string()).collect();
    let found: i64 = source
        .query_one(
            "SELECT count(*) FROM forms WHERE form_id::text = ANY($1)",
            &[&committed],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        found as usize,
        committed.len(),
        "every committed form is on the source"
    );
    let target_max = count(&target, "SELECT coalesce(max(id), 0) FROM form_events").await;
    let source_next = count(&source, "SELECT nextval('form_events_id_seq')").await;
    let source_max = count(&source, "SELECT max(id) FROM form_events").await;
    assert!(
        source_next > source_max && source_next > target_max,
        "nextval {source_next} past max {source_max} (target {target_max})"
    );
    let duplicated = count(
        &source,
        "SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) AS n FROM form_events GROUP BY form_id HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(duplicated, 0);
    let memory = runner.actions().memory().clone();
    eprintln!(
        "forward pause {:?} ms; move back: gate {:?} ms, pause {:?} ms; {} calls",
        memory.pause_window_ms, memory.back_gate_ms, memory.back_pause_window_ms, report.committed
    );
    assert!(memory.reverse_slot_lsn.is_some());
    assert!(memory.back_pause_window_ms.is_some());
    assert!(!memory.back_sequences.is_empty());

    let progress = runner
        .run_headless_through("test", Some(&StepId::new("retire-reverse-stream")))
        .await
        .expect("retires the reverse stream");
    assert!(format!("{progress:?}").contains("retire"), "{progress:?}");
    for (client, side) in [(&source, "source"), (&target, "target")] {
        assert_eq!(
            count(
                client,
                "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_subscription) + (SELECT count(*) FROM pg_class WHERE relname LIKE 'cutover\\_move%')"
            )
            .await,
            0,
            "nothing of the move is left on the {side}"
        );
    }
}

/// What the source holds of a move, besides rows: slots, publications, subscriptions and the
/// tool's tables.
async fn leftovers(client: &Client) -> i64 {
    count(
        client,
        "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_subscription) + (SELECT count(*) FROM pg_class WHERE relname LIKE 'cutover\\_%')",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_from_every_stage_before_resume_leaves_the_source_untouched_and_serving() {
    let lab = MoveLab::start(1_000, 18).await.expect("lab");
    let source = lab.source().await.unwrap();
    let wal_level_before = wal_level(&lab).await;
    let before = leftovers(&source).await;
    let load = start_load(&lab, 30);
    let stages = [
        "preflight",
        "schema",
        "initial-copy",
        "catch-up",
        // Inside the window: paused, gated, sequences set on the target, reverse slot made.
        "reverse-stream",
    ];
    for stage in stages {
        let state = tempfile::tempdir().unwrap();
        let mut inv = invocation(&lab, state.path());
        inv.params.insert("reverse-stream".into(), "yes".into());
        let mut runner = session::open_as::<LogicalMove>(&inv).unwrap();
        runner
            .run_headless_through("test", Some(&StepId::new(stage)))
            .await
            .unwrap_or_else(|e| panic!("through {stage}: {e}"));
        runner
            .rollback_to(&StepId::new("preflight"), "test", "rehearsed rollback")
            .await
            .unwrap_or_else(|e| panic!("rollback from {stage}: {e}"));
        assert_eq!(
            leftovers(&source).await,
            before,
            "after {stage}: no slot, publication, subscription or tool table left on the source"
        );
        assert_eq!(wal_level(&lab).await, wal_level_before, "after {stage}");
        let inventory = cutover::inventory::load(&lab.config.inventory_path()).unwrap();
        let alias = inventory.pgbouncers[0]
            .aliases
            .iter()
            .find(|a| a.name == P1_DB)
            .unwrap();
        assert_eq!(
            alias.node, "pg1",
            "after {stage}: the alias routes to the source"
        );
        let admin = common::connect(lab.target_port, "postgres").await;
        assert_eq!(
            count(&admin, "SELECT count(*) FROM pg_replication_slots").await,
            0,
            "after {stage}: no slot on the target"
        );
        let db: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&P1_DB],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            db, 0,
            "after {stage}: the target database this run created is gone"
        );
        let n0 = count(&source, "SELECT count(*) FROM forms").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            count(&source, "SELECT count(*) FROM forms").await > n0,
            "after {stage}: writes land on the source"
        );
    }
    let report = stop_load(load).await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let committed: Vec<String> = report.committed_ids.iter().map(|i| i.to_string()).collect();
    let found: i64 = source
        .query_one(
            "SELECT count(*) FROM forms WHERE form_id::text = ANY($1)",
            &[&committed],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        found as usize,
        committed.len(),
        "every committed form is on the source"
    );
    let duplicated = count(
        &source,
        "SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) AS n FROM form_events GROUP BY form_id HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(duplicated, 0);
}
