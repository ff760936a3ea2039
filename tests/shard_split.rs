//! The shard split against real labs: under load, gates, stray rows, rollback, pause bound.

mod common;

use common::*;
use cutover::executor::{Actions, RunError};
use cutover::lab::load::{self, LoadOptions};
use std::time::{Duration, Instant};

const DOCS: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_split_under_load_loses_nothing_and_every_shard_has_one_owner() {
    let lab = lab(DOCS).await;
    let state = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(load::run(
        LoadOptions {
            endpoint: load::entry_endpoint(&lab.inventory).unwrap(),
            rate: 300,
            duration: Duration::from_secs(120),
            workers: 4,
            out: None,
        },
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut cases_before = case_ids(&pg1_forms(&lab).await).await;
    cases_before.sort();
    assert_eq!(cases_before.len() as u64, lab.config.cases());
    let mut runner = open_split(&lab, state.path());
    runner
        .run_headless("test")
        .await
        .expect("the split completes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let report = traffic.await.unwrap().unwrap();
    assert_eq!(report.failed, 0, "no call failed: {:?}", report.errors);
    assert!(
        report.committed > 300,
        "the load ran through the split: {}",
        report.committed
    );

    let c = &lab.config;
    let pg1 = connect(c.pg1_port, "commcarehq_p1").await;
    let pg2 = connect(c.pg2_port, "commcarehq_p2").await;
    let ids: Vec<String> = report
        .committed_ids
        .iter()
        .map(|id| id.to_string())
        .collect();
    async fn owned(client: &tokio_postgres::Client, ids: &[String], range: (i32, i32)) -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM forms WHERE form_id::text = ANY($1) AND (hashtext(form_id::text) & 1023) BETWEEN $2 AND $3",
                &[&ids, &range.0, &range.1],
            )
            .await
            .unwrap()
            .get(0)
    }
    let on_owner = owned(&pg1, &ids, (0, 511)).await + owned(&pg2, &ids, (512, 1023)).await;
    assert_eq!(
        on_owner as u64, report.committed,
        "every committed id is on its owner"
    );

    for (client, range, name) in [(&pg1, (512, 1023), "pg1"), (&pg2, (0, 511), "pg2")] {
        let foreign: i64 = client
            .query_one("SELECT count(*) FROM forms WHERE (hashtext(form_id::text) & 1023) BETWEEN $1 AND $2", &[&range.0, &range.1])
            .await
            .unwrap()
            .get(0);
        assert_eq!(foreign, 0, "{name} holds no row of a shard it does not own");
    }
    let total = form_count(c.pg1_port, "commcarehq_p1").await
        + form_count(c.pg2_port, "commcarehq_p2").await;
    assert_eq!(
        total as u64,
        DOCS + report.committed,
        "no row lost or duplicated"
    );

    // The second sharded table: every case row exactly once, on its owner.
    let (cases_pg1, cases_pg2) = (case_ids(&pg1).await, case_ids(&pg2).await);
    let shard_of = |rows: &[(String, i32)], range: std::ops::RangeInclusive<i32>| {
        rows.iter().all(|(_, shard)| range.contains(shard))
    };
    assert!(shard_of(&cases_pg1, 0..=511), "pg1 holds only its cases");
    assert!(shard_of(&cases_pg2, 512..=1023), "pg2 holds only its cases");
    assert!(
        cases_pg2.len() > 1_000,
        "cases moved: {} on pg2",
        cases_pg2.len()
    );
    let mut after: Vec<(String, i32)> = cases_pg1.into_iter().chain(cases_pg2).collect();
    after.sort();
    assert_eq!(
        after, cases_before,
        "every case row is present exactly once after the split"
    );
    let baselines = runner.actions_mut().baseline();
    let tables: Vec<(&str, i64)> = baselines
        .iter()
        .map(|b| (b.table.as_str(), b.total))
        .collect();
    assert_eq!(tables[1], ("cases", lab.config.cases() as i64));
    assert_eq!(tables[0].0, "forms");

    // The re-route's undo names these copies in the plan: `<state-dir>/runs/<run-id>/...`.
    let run_dir = state.path().join("runs").join(&runner.run_id.0);
    for kept in [
        cutover::runbooks::shard_split::plan::INI_BACKUP_FILE,
        cutover::runbooks::shard_split::plan::INVENTORY_BACKUP_FILE,
    ] {
        assert!(run_dir.join(kept).is_file(), "{kept} kept in the run dir");
        let undo = format!("<state-dir>/runs/<run-id>/{kept}");
        assert!(
            runner.plan.to_markdown().contains(&undo),
            "the plan names {undo}"
        );
    }

    // The inventory, plproxy and pgbouncer agree on the new map.
    let inventory = cutover::inventory::load(&c.inventory_path()).unwrap();
    assert_eq!(inventory.partition("p1").unwrap().shards, [0, 511]);
    assert_eq!(inventory.partition("p2").unwrap().shards, [512, 1023]);
    assert_eq!(inventory.partition("p2").unwrap().node, "pg2");
    let routes = plproxy_routes(c.pg1_port).await;
    assert!((0..512).all(|s| routes[&s] == "commcarehq_p1"));
    assert!((512..1024).all(|s| routes[&s] == "commcarehq_p2"));
    let ini = std::fs::read_to_string(c.pgbouncer_ini()).unwrap();
    let aliases = cutover::pgbouncer_ini::aliases(&ini);
    let p2 = cutover::pgbouncer_ini::parse_target(&aliases["commcarehq_p2"]).unwrap();
    assert_eq!((p2.port, p2.dbname.as_str()), (c.pg2_port, "commcarehq_p2"));
    let slots: i64 = connect(c.pg1_port, "postgres")
        .await
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "the standby's slot is dropped");
    let pause = runner
        .actions_mut()
        .memory()
        .pause_window_ms
        .expect("pause window measured");
    assert!(
        pause < 10_000.0,
        "pause window {pause} ms stays within the bound"
    );
}

/// Every `cases` row of a partition database as (case_id, shard), sorted.
async fn case_ids(client: &tokio_postgres::Client) -> Vec<(String, i32)> {
    client
        .query(
            "SELECT case_id::text, hashtext(case_id::text) & 1023 FROM cases ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Hold pg2's replay, then write one row on pg1 directly (pgbouncer is paused): the standby
/// now lags the primary by that row.
async fn hold_standby_and_write(lab: &cutover::lab::TestLab, form_id: &str) {
    connect(lab.config.pg2_port, "postgres")
        .await
        .simple_query("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    pg1_forms(lab)
        .await
        .execute(
            "INSERT INTO forms (form_id, domain) VALUES ($1::text::uuid, 'late')",
            &[&form_id],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_is_refused_while_the_standby_lags() {
    let lab = lab(2_000).await;
    let state = tempfile::tempdir().unwrap();
    let mut runner = open_split(&lab, state.path());
    run_until(&mut runner, "lsn-gate").await;
    hold_standby_and_write(&lab, "00000000-0000-0000-0000-0000000001a7").await;
    runner.actions_mut().gate_timeout = Duration::from_millis(500);
    let error = start_step(&mut runner, "lsn-gate")
        .await
        .expect_err("the gate refuses");
    assert!(error.to_string().contains("promotion refused"), "{error}");
    let in_recovery: bool = connect(lab.config.pg2_port, "postgres")
        .await
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "pg2 was not promoted");
    let gates = runner.journal().export_markdown(&runner.run_id).unwrap();
    assert!(
        gates.contains("is behind pg1 current LSN"),
        "the journal records both LSNs"
    );
}

/// WAL the primary writes outside pgbouncer's pause (autovacuum, checkpoints) must not fail the
/// promotion: the re-check waits for the standby to replay it, and only then promotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_waits_for_wal_written_after_the_gate() {
    let lab = lab(2_000).await;
    let state = tempfile::tempdir().unwrap();
    let mut runner = open_split(&lab, state.path());
    run_until(&mut runner, "promote").await;
    hold_standby_and_write(&lab, "00000000-0000-0000-0000-00000000beef").await;
    let pg2_port = lab.config.pg2_port;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let pg2 = connect(pg2_port, "postgres").await;
        let in_recovery: bool = pg2
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        pg2.simple_query("SELECT pg_wal_replay_resume()")
            .await
            .unwrap();
        in_recovery
    });
    start_step(&mut runner, "promote")
        .await
        .expect("promotion succeeds once the standby has replayed the late WAL");
    assert!(
        release.await.unwrap(),
        "pg2 was not promoted while it lagged"
    );
    let late: i64 = connect(lab.config.pg2_port, "commcarehq_p1")
        .await
        .query_one(
            "SELECT count(*) FROM forms WHERE form_id = '00000000-0000-0000-0000-00000000beef'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        late, 1,
        "the row written after the gate reached the promoted node"
    );
}

/// A run that died after requesting the promotion: a promoting standby replays no further,
/// so the current-LSN re-check could never pass again. The resumed run proves instead that
/// the standby replayed the primary's LSN recorded at the gate, and completes the promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_interrupted_after_the_gate_completes_on_resume() {
    let lab = lab(2_000).await;
    let state = tempfile::tempdir().unwrap();
    let mut runner = open_split(&lab, state.path());
    run_until(&mut runner, "promote").await;
    let memory_file = state
        .path()
        .join("runs")
        .join(&runner.run_id.0)
        .join("split.json");
    drop(runner);
    // The crash: the request was recorded, then the primary wrote WAL the (now promoting)
    // standby will never replay.
    let mut memory: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&memory_file).unwrap()).unwrap();
    memory["promote_requested"] = serde_json::Value::Bool(true);
    std::fs::write(&memory_file, memory.to_string()).unwrap();
    hold_standby_and_write(&lab, "00000000-0000-0000-0000-00000000c0de").await;

    let mut resumed = open_split(&lab, state.path());
    resumed.actions_mut().gate_timeout = Duration::from_millis(300);
    start_step(&mut resumed, "promote")
        .await
        .expect("the interrupted promotion completes");
    let record = resumed.journal().export_markdown(&resumed.run_id).unwrap();
    assert!(
        record.contains("re-check after an interrupted promotion"),
        "{record}"
    );
    let in_recovery: bool = connect(lab.config.pg2_port, "postgres")
        .await
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_recovery, "pg2 is promoted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_for_a_shard_whose_owner_lacks_rows() {
    let lab = lab(5_000).await;
    let state = tempfile::tempdir().unwrap();
    let mut runner = open_split(&lab, state.path());
    run_until(&mut runner, "delete-invalid").await;
    // A row of a moved shard, written before the cutover, goes missing on its new owner.
    let pg2 = connect(lab.config.pg2_port, "commcarehq_p2").await;
    let victim: String = pg2
        .query_one(
            "SELECT form_id::text FROM forms WHERE (hashtext(form_id::text) & 1023) >= 512 LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    pg2.execute(
        "DELETE FROM forms WHERE form_id = $1::text::uuid",
        &[&victim],
    )
    .await
    .unwrap();

    let error = start_step(&mut runner, "delete-invalid")
        .await
        .expect_err("the delete is refused");
    assert!(matches!(error, RunError::StepFailed { .. }), "{error}");
    assert!(error.to_string().contains("owner lacks rows"), "{error}");
    let still_on_pg1: i64 = pg1_forms(&lab)
        .await
        .query_one(
            "SELECT count(*) FROM forms WHERE form_id = $1::text::uuid",
            &[&victim],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        still_on_pg1, 1,
        "the row was not deleted from the node that still has it"
    );
    // Other shards were cleaned: pg1 keeps only the refused shard among the moved ones.
    let moved_left: i64 = pg1_forms(&lab)
        .await
        .query_one(
            "SELECT count(DISTINCT hashtext(form_id::text) & 1023) FROM forms WHERE (hashtext(form_id::text) & 1023) >= 512",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(moved_left, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_row_is_moved_to_its_owner_not_deleted() {
    let lab = lab(5_000).await;
    let state = tempfile::tempdir().unwrap();
    let mut runner = open_split(&lab, state.path());
    run_until(&mut runner, "delete-invalid").await;
    // After the re-route, a writer that bypasses the map puts a moved shard's row on pg1.
    let pg1 = pg1_forms(&lab).await;
    let stray = form_id_in_shards(&pg1, 512..=1023).await;
    pg1.execute(
        "INSERT INTO forms (form_id, domain) VALUES ($1::text::uuid, 'stray')",
        &[&stray],
    )
    .await
    .unwrap();

    start_step(&mut runner, "delete-invalid")
        .await
        .expect("the delete completes");
    let pg2 = connect(lab.config.pg2_port, "commcarehq_p2").await;
    let on_owner: i64 = pg2
        .query_one(
            "SELECT count(*) FROM forms WHERE form_id = $1::text::uuid AND domain = 'stray'",
            &[&stray],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_owner, 1, "the stray row now lives on its owner");
    let on_pg1: i64 = pg1
        .query_one(
            "SELECT count(*) FROM forms WHERE form_id = $1::text::uuid",
            &[&stray],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_pg1, 0, "and is gone from the non-owner");
    assert_eq!(runner.actions_mut().memory().strays_moved, 1);
    let record = runner.journal().export_markdown(&runner.run_id).unwrap();
    assert!(
        record.contains("STRAY") && record.contains(&stray),
        "the stray is reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_from_each_reversible_step_returns_the_lab_to_its_start() {
    let lab = lab(2_000).await;
    let state = tempfile::tempdir().unwrap();
    let original_ini = std::fs::read_to_string(lab.config.pgbouncer_ini()).unwrap();
    let original_inventory = std::fs::read_to_string(lab.config.inventory_path()).unwrap();
    let mut runner = open_split(&lab, state.path());
    for last in [
        "base-backup",
        "stop-traffic",
        "lsn-gate",
        "promote",
        "rename",
        "reroute",
    ] {
        let next_after = {
            let i = runner.plan.index_of(&last.into()).unwrap();
            runner.plan.steps[i + 1].id.to_string()
        };
        run_until(&mut runner, &next_after).await;
        runner
            .rollback_to(
                &"base-backup".into(),
                "test",
                &format!("rollback after {last}"),
            )
            .await
            .unwrap_or_else(|e| panic!("rollback after {last}: {e}"));
        assert_lab_at_start(&lab, &original_ini, &original_inventory).await;
    }
    // Past the point of no return, rollback is refused with the reason.
    run_until(&mut runner, "verify").await;
    let refused = runner
        .rollback_to(&"base-backup".into(), "test", "too late")
        .await
        .expect_err("refused");
    assert!(
        refused.to_string().contains("point of no return"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_step_resumes_traffic_within_the_bound_and_fails_the_run() {
    let lab = lab(2_000).await;
    let state = tempfile::tempdir().unwrap();
    let mut invocation = split_invocation(&lab, state.path());
    invocation
        .params
        .insert("pause-bound-ms".into(), "1000".into());
    let mut runner =
        cutover::session::open_as::<cutover::runbooks::shard_split::ShardSplit>(&invocation)
            .unwrap();
    run_until(&mut runner, "stop-traffic").await;
    // The gate will wait (up to 30 s) for a standby that does not replay: a hang.
    connect(lab.config.pg2_port, "postgres")
        .await
        .simple_query("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    runner.actions_mut().gate_timeout = Duration::from_secs(30);
    start_step(&mut runner, "stop-traffic").await.unwrap();
    let paused_at = Instant::now();
    pg1_forms(&lab)
        .await
        .simple_query("INSERT INTO forms (form_id, domain) VALUES (gen_random_uuid(), 'late')")
        .await
        .unwrap();
    let error = start_step(&mut runner, "lsn-gate")
        .await
        .expect_err("the bound fires");
    let resumed_after = paused_at.elapsed();
    assert!(
        matches!(error, RunError::PauseBoundExceeded { .. }),
        "{error}"
    );
    assert!(
        resumed_after < Duration::from_millis(2_500),
        "traffic resumed after {resumed_after:?}"
    );
    assert_eq!(
        paused_aliases(&lab).await,
        Vec::<String>::new(),
        "nothing is paused"
    );
    let record = runner.journal().export_markdown(&runner.run_id).unwrap();
    assert!(
        record.contains("pause_bound_exceeded") || record.contains("exceeded its bound"),
        "the journal says why"
    );
    assert!(!runner.state.traffic_paused());
    assert_eq!(
        runner.state.next_step(&runner.plan).unwrap().id.as_str(),
        "stop-traffic",
        "rolled back to before the pause"
    );
}

/// Quitting the cockpit while traffic is paused ends the pause first, as the bound would:
/// traffic flows again, the journal says why, and the run can be resumed later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitting_the_cockpit_while_paused_resumes_traffic() {
    let lab = lab(2_000).await;
    let state = tempfile::tempdir().unwrap();
    let mut runner = open_split(&lab, state.path());
    run_until(&mut runner, "lsn-gate").await;
    assert!(!paused_aliases(&lab).await.is_empty(), "traffic is paused");

    let (requests_tx, requests_rx) = tokio::sync::mpsc::channel(8);
    let (updates_tx, mut updates_rx) = tokio::sync::mpsc::channel(64);
    let bridge = tokio::spawn(cutover::cockpit::serve(
        runner,
        requests_rx,
        updates_tx,
        Duration::from_secs(10),
    ));
    tokio::spawn(async move { while updates_rx.recv().await.is_some() {} });
    requests_tx
        .send(cutover::ui::model::UiRequest::Quit)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), bridge)
        .await
        .expect("the bridge ends")
        .unwrap();

    assert_eq!(paused_aliases(&lab).await, Vec::<String>::new());
    let journal = cutover::journal::Journal::open(state.path()).unwrap();
    let run = journal.runs().unwrap().remove(0);
    let record = journal.export_markdown(&run.run_id).unwrap();
    assert!(
        record.contains("the operator quit the cockpit while traffic was paused"),
        "{record}"
    );
    let resumed = open_split(&lab, state.path());
    assert_eq!(
        resumed
            .state
            .next_step(&resumed.plan)
            .map(|s| s.id.to_string()),
        Some("stop-traffic".to_string()),
        "the run resumes from before the pause"
    );
}
