//! The logical apply against real servers: a PostgreSQL 15 source (`wal_level = logical`,
//! wal2json) applied through a real Citus 13 coordinator (distributed and reference tables)
//! and into a plain PostgreSQL database, verified row for row; a crash between the target's
//! commit and the slot's advance re-applied without duplicates; the cutover gate; the canary
//! through the apply loop; the silent-subscription trap refused; a schema change mid-stream
//! stopping the apply with its DDL and LSN.

mod common;

use cutover::effects::logical_apply::{
    self, canary, check_native_subscription, ddl_events, install_source, run_apply, Applier,
    ApplyConfig, ApplyError, ApplyStatus, Lsn, TargetKind,
};
use cutover::lab::citus::CitusLab;
use cutover::lab::TestLab;
use std::time::Duration;
use tokio_postgres::Client;

const SLOT: &str = "cutover_move";

/// The moved tables: a distributed one keyed (tenant, id) and a reference one, with the types
/// that are easy to get wrong.
const SCHEMA: &str =
    "CREATE TABLE orders (tenant int NOT NULL, id bigint NOT NULL, note text, doc jsonb, \
    amount numeric(30,10), placed_at timestamptz, blob bytea, tags text[], flag boolean, \
    PRIMARY KEY (tenant, id)); \
    CREATE TABLE tiers (code text PRIMARY KEY, label text, rank int)";

async fn connect(port: u16, db: &str) -> Client {
    let client = cutover::pg::connect(
        &common::endpoint(port, db),
        cutover::pg::SessionSettings::EXECUTOR,
    )
    .await
    .expect("connect");
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    client
}

/// A fresh database `db` on the server at `port`, connected.
async fn fresh_db(port: u16, db: &str) -> Client {
    connect(port, "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    connect(port, db).await
}

/// The source database with the schema, the slot (wal2json) and the tool's source objects.
async fn source(port: u16, db: &str) -> Client {
    let client = fresh_db(port, db).await;
    client.batch_execute(SCHEMA).await.unwrap();
    install_source(&client)
        .await
        .expect("install the DDL capture and canary");
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'wal2json')",
            &[&SLOT],
        )
        .await
        .unwrap();
    client
}

/// A Citus coordinator with two workers, in database `postgres`, with the schema distributed.
async fn citus_target(lab: &CitusLab) -> Client {
    let [coordinator, w1, w2] = lab.citus.ports;
    for port in lab.citus.ports {
        connect(port, "postgres")
            .await
            .batch_execute("CREATE EXTENSION citus")
            .await
            .unwrap();
    }
    let client = connect(coordinator, "postgres").await;
    client
        .execute(
            "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
            &[&i32::from(coordinator)],
        )
        .await
        .unwrap();
    for port in [w1, w2] {
        client
            .execute(
                "SELECT citus_add_node('127.0.0.1', $1)",
                &[&i32::from(port)],
            )
            .await
            .unwrap();
    }
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute(
            "SELECT create_distributed_table('orders', 'tenant'); SELECT create_reference_table('tiers')",
        )
        .await
        .unwrap();
    client
}

/// Inserts, updates (plain, same-value distribution column, key moves), deletes, NULLs and the
/// awkward types, in several transactions. `round` keeps ids apart between calls.
async fn write_changes(source: &Client, round: i64) {
    let base = round * 1000;
    source
        .execute(
            "INSERT INTO orders SELECT g % 7, $1::bigint + g, \
               CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ''' || g || E'\\\\ \"quoted\" ' || repeat('é', g % 3) END, \
               CASE WHEN g % 4 = 0 THEN NULL ELSE jsonb_build_object('g', g, 'nested', jsonb_build_array(1, 'two', NULL), 'u', 'ü') END, \
               CASE WHEN g % 6 = 0 THEN NULL ELSE (g * 12345678901.0123456789 / 7)::numeric(30,10) END, \
               CASE WHEN g % 3 = 0 THEN NULL ELSE timestamptz '2026-01-01 00:00:00.123456+00' + g * interval '1 hour 1 second' END, \
               CASE WHEN g % 2 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') || '\\x00ff'::bytea END, \
               CASE WHEN g % 5 = 1 THEN NULL ELSE ARRAY['a' || g, 'b c', 'd,\"e\"', NULL] END, \
               g % 2 = 0 \
             FROM generate_series(1, 120) g",
            &[&base],
        )
        .await
        .unwrap();
    let script = format!(
            "INSERT INTO tiers VALUES ('t{round}a', 'A', 1), ('t{round}b', NULL, 2), ('t{round}c', 'C', 3);
             BEGIN;
             UPDATE orders SET note = 'updated', doc = '{{\"x\": [1, 2]}}' WHERE id BETWEEN {base} + 1 AND {base} + 20;
             UPDATE orders SET tenant = tenant, flag = NOT flag WHERE id BETWEEN {base} + 21 AND {base} + 30;
             COMMIT;
             UPDATE orders SET tenant = tenant + 100 WHERE id BETWEEN {base} + 31 AND {base} + 40;
             UPDATE orders SET id = id + 500 WHERE id BETWEEN {base} + 41 AND {base} + 45;
             UPDATE orders SET amount = NULL, blob = '\\x', tags = '{{}}' WHERE id BETWEEN {base} + 46 AND {base} + 50;
             DELETE FROM orders WHERE id BETWEEN {base} + 51 AND {base} + 60;
             UPDATE tiers SET label = 'renamed', rank = NULL WHERE code = 't{round}a';
             UPDATE tiers SET code = 't{round}z' WHERE code = 't{round}b';
             DELETE FROM tiers WHERE code = 't{round}c'"
        );
    // One statement per round trip, so each is its own transaction (but the BEGIN block).
    for statement in script.split(";\n") {
        source.batch_execute(statement.trim()).await.unwrap();
    }
}

/// Every row of `table` as JSON text, in key order.
async fn rows(client: &Client, table: &str, order: &str) -> Vec<String> {
    client
        .query(
            &format!("SELECT row_to_json(t)::text FROM {table} t ORDER BY {order}"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn assert_same_rows(source: &Client, target: &Client) {
    for (table, order) in [("orders", "tenant, id"), ("tiers", "code")] {
        let (s, t) = (
            rows(source, table, order).await,
            rows(target, table, order).await,
        );
        assert!(!s.is_empty(), "{table} has rows on the source");
        assert_eq!(s.len(), t.len(), "{table}: same number of rows");
        for (a, b) in s.iter().zip(&t) {
            assert_eq!(a, b, "{table}: the same row on both sides");
        }
    }
}

async fn applier(source_port: u16, source_db: &str, target_port: u16, target_db: &str) -> Applier {
    let mut config = ApplyConfig::new(SLOT);
    config.batch_changes = 150;
    Applier::new(
        connect(source_port, source_db).await,
        connect(target_port, target_db).await,
        config,
    )
    .await
    .expect("the applier opens")
}

/// Apply batches until one finds nothing; the number of transactions applied.
async fn drain(applier: &mut Applier) -> usize {
    let mut applied = 0;
    loop {
        let outcome = applier.apply_batch().await.expect("a batch applies");
        applied += outcome.transactions;
        if outcome.transactions == 0 && outcome.skipped == 0 {
            return applied;
        }
    }
}

async fn slot_confirmed(source: &Client) -> Lsn {
    let text: String = source
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await
        .unwrap()
        .get(0);
    text.parse().unwrap()
}

async fn current_lsn(client: &Client) -> Lsn {
    let text: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    text.parse().unwrap()
}

/// The whole exactly-once story on one target: apply, crash between the target's commit and
/// the slot's advance, re-apply (skipped, no duplicate), the gate, the canary through the
/// running loop, and a DDL stopping the stream.
async fn scenario(source_port: u16, target_port: u16, target_db: &str, target: &Client) {
    let src = source(source_port, "shop").await;
    write_changes(&src, 1).await;

    let mut apply = applier(source_port, "shop", target_port, target_db).await;
    let applied = drain(&mut apply).await;
    assert!(
        applied >= 10,
        "the source's transactions were applied: {applied}"
    );
    assert_same_rows(&src, target).await;
    assert_eq!(
        slot_confirmed(&src).await,
        apply.applied_lsn(),
        "the slot is advanced to what the target has"
    );

    // Crash between the target's commit and the slot's advance: the target has the batch,
    // the slot still holds it.
    write_changes(&src, 2).await;
    let before = slot_confirmed(&src).await;
    let committed = apply
        .apply_to_target(None)
        .await
        .expect("the batch commits");
    assert!(committed.transactions > 0);
    assert_eq!(
        slot_confirmed(&src).await,
        before,
        "the slot was not advanced"
    );
    drop(apply);
    let mut restarted = applier(source_port, "shop", target_port, target_db).await;
    assert_eq!(restarted.applied_lsn(), committed.applied_lsn);
    let again = restarted.apply_batch().await.expect("the re-read batch");
    assert_eq!(
        again.skipped, committed.transactions,
        "every transaction the target already had is skipped"
    );
    drain(&mut restarted).await;
    assert_same_rows(&src, target).await;
    let counted: i64 = target
        .query_one(
            "SELECT changes FROM cutover_apply_progress WHERE origin = $1",
            &[&SLOT],
        )
        .await
        .unwrap()
        .get(0);
    let changes_total =
        i64::try_from(rows(&src, "orders", "1").await.len() + rows(&src, "tiers", "1").await.len())
            .unwrap();
    assert!(
        counted >= changes_total,
        "progress counts the changes: {counted}"
    );

    // The gate: writes, then the LSN as if read while paused, then caught_up_to.
    write_changes(&src, 3).await;
    let gate_lsn = current_lsn(&src).await;
    let proof = restarted
        .caught_up_to(gate_lsn)
        .await
        .expect("the gate holds");
    assert!(proof.applied_lsn >= gate_lsn);
    assert!(proof.transactions > 0, "the gate applied what was left");
    assert_same_rows(&src, target).await;
    let recorded: String = target
        .query_one(
            "SELECT applied_lsn::text FROM cutover_apply_progress WHERE origin = $1",
            &[&SLOT],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        recorded.parse::<Lsn>().unwrap() >= gate_lsn,
        "the gate is recorded"
    );
    assert!(slot_confirmed(&src).await >= gate_lsn);

    // The canary through the running loop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (status_tx, mut status_rx) = tokio::sync::watch::channel(ApplyStatus::default());
    let task = tokio::spawn(async move {
        let result = run_apply(&mut restarted, stop_rx, status_tx).await;
        (restarted, result)
    });
    let proof = canary(&src, target, Duration::from_secs(20))
        .await
        .expect("the canary arrives through the apply loop");
    assert!(proof.seen_after < Duration::from_secs(20));
    status_rx.changed().await.unwrap();
    assert!(status_rx.borrow().transactions > 0);
    stop_tx.send(true).unwrap();
    let (mut restarted, result) = task.await.unwrap();
    result.expect("the loop stops cleanly");

    // A schema change mid-stream: the insert before it is applied, the apply stops at it.
    for statement in [
        "INSERT INTO tiers VALUES ('before-ddl', 'x', 0)",
        "ALTER TABLE orders ADD COLUMN extra int",
        "INSERT INTO tiers VALUES ('after-ddl', 'y', 0)",
    ] {
        src.batch_execute(statement).await.unwrap();
    }
    let stopped = loop {
        match restarted.apply_batch().await {
            Ok(outcome) if outcome.transactions > 0 => continue,
            Ok(outcome) => panic!("the DDL was not seen: {outcome:?}"),
            Err(e) => break e,
        }
    };
    let events = ddl_events(&src, 0).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].describe(), "ALTER TABLE public.orders");
    match &stopped {
        ApplyError::SchemaChange { ddl, lsn } => {
            assert_eq!(ddl, "ALTER TABLE public.orders");
            assert_eq!(lsn, &events[0].lsn);
        }
        other => panic!("not a schema change: {other}"),
    }
    assert_eq!(
        stopped.to_string(),
        format!(
            "a schema change on the source mid-stream: ALTER TABLE public.orders at LSN {}; the move stops here",
            events[0].lsn
        )
    );
    let codes: Vec<String> = target
        .query(
            "SELECT code FROM tiers WHERE code LIKE '%-ddl' ORDER BY code",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        codes,
        vec!["before-ddl"],
        "nothing at or after the DDL is applied"
    );
    // It stays stopped, and says so in the progress row for the readings.
    assert!(matches!(
        restarted.apply_batch().await,
        Err(ApplyError::SchemaChange { .. })
    ));
    let last_error: Option<String> = target
        .query_one(
            "SELECT last_error FROM cutover_apply_progress WHERE origin = $1",
            &[&SLOT],
        )
        .await
        .unwrap()
        .get(0);
    assert!(last_error.unwrap().contains("schema change"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_through_a_citus_coordinator_exactly_once() {
    let lab = CitusLab::start(100, 15).await.expect("a Citus lab");
    let target = citus_target(&lab).await;
    scenario(lab.config.pg1_port, lab.citus.ports[0], "postgres", &target).await;

    // The rows really are on the workers: counted through Citus, per placement.
    let on_workers: i64 = target
        .query_one(
            "SELECT sum(result::bigint)::bigint FROM run_command_on_placements('orders', 'SELECT count(*) FROM %s')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let through_citus: i64 = target
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_workers, through_citus);
    let kind: String = target
        .query_one(
            "SELECT citus_table_type FROM citus_tables WHERE table_name = 'cutover_apply_progress'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        kind, "reference",
        "the progress table commits with every worker"
    );

    // Citus 13.2.2 also lets a coordinator-local table be written in the same transaction as a
    // distributed one (the progress table is a reference table for the commit protocol, not
    // because this is refused).
    target
        .batch_execute(
            "CREATE TABLE local_probe (n int); BEGIN; INSERT INTO local_probe VALUES (1); \
             INSERT INTO orders (tenant, id) VALUES (3, 999999); COMMIT;",
        )
        .await
        .expect("a local and a distributed write commit together");
    let both: i64 = target
        .query_one(
            "SELECT (SELECT count(*) FROM local_probe) + (SELECT count(*) FROM orders WHERE id = 999999)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(both, 2);

    // ... but that transaction committed one-phase (no 2PC record), while one that also writes
    // the reference progress table is a two-phase commit (Citus records it).
    for statement in [
        "ALTER SYSTEM SET citus.recover_2pc_interval = -1",
        "SELECT pg_reload_conf()",
    ] {
        target.batch_execute(statement).await.unwrap();
    }
    let records = || async {
        target
            .query_one("SELECT count(*) FROM pg_dist_transaction", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = records().await;
    target
        .batch_execute(
            "BEGIN; INSERT INTO local_probe VALUES (2); INSERT INTO orders (tenant, id) VALUES (3, 999998); COMMIT;",
        )
        .await
        .unwrap();
    assert_eq!(records().await, before, "local + one worker: one-phase");
    target
        .batch_execute(
            "BEGIN; INSERT INTO orders (tenant, id) VALUES (3, 999997); \
             UPDATE cutover_apply_progress SET changes = changes WHERE origin = 'cutover_move'; COMMIT;",
        )
        .await
        .unwrap();
    assert!(
        records().await > before,
        "with the reference progress table: two-phase"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_into_plain_postgresql_exactly_once() {
    let lab = TestLab::start(100).await.expect("a lab");
    let port = lab.config.pg1_port;
    let target = fresh_db(port, "shop_target").await;
    target.batch_execute(SCHEMA).await.unwrap();
    scenario(port, port, "shop_target", &target).await;
    let apply = applier(port, "shop", port, "shop_target").await;
    assert_eq!(apply.target_kind(), TargetKind::Plain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_subscription_into_citus_is_refused_by_its_canary() {
    let lab = CitusLab::start(100, 15).await.expect("a Citus lab");
    let target = citus_target(&lab).await;
    logical_apply::install_target(&target).await.unwrap();
    let source_port = lab.config.pg1_port;
    let src = fresh_db(source_port, "trap").await;
    src.batch_execute(SCHEMA).await.unwrap();
    install_source(&src).await.unwrap();
    src.batch_execute(
        "INSERT INTO orders (tenant, id, note) SELECT g % 3, g, 'n' FROM generate_series(1, 50) g; \
         CREATE PUBLICATION trap_pub FOR TABLE orders, cutover_canary",
    )
    .await
    .unwrap();
    target
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION trap CONNECTION 'host=127.0.0.1 port={source_port} dbname=trap user=postgres' \
             PUBLICATION trap_pub"
        ))
        .await
        .unwrap();
    let ready = common::eventually(Duration::from_secs(60), || async {
        let states: Vec<String> = target
            .query(
                "SELECT srsubstate::text FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = 'trap'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (states.len() == 2 && states.iter().all(|s| s == "r")).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the subscription reaches state r");
    src.batch_execute("INSERT INTO orders (tenant, id, note) VALUES (1, 1000, 'after')")
        .await
        .unwrap();

    let refused = check_native_subscription(&src, &target, "trap", Duration::from_secs(3))
        .await
        .expect_err("a subscription into Citus is never trusted");
    match &refused {
        ApplyError::SilentSubscription {
            state,
            canary_seen,
            citus_tables,
            ..
        } => {
            assert_eq!(state, "r", "it looks healthy");
            assert!(
                !canary_seen,
                "the canary never arrives through the coordinator"
            );
            assert_eq!(
                citus_tables,
                &vec!["cutover_canary".to_string(), "orders".to_string()]
            );
        }
        other => panic!("not the trap: {other}"),
    }
    let message = refused.to_string();
    assert!(
        message.starts_with(
            "subscription trap reports state r but is not trusted: the canary written at LSN "
        ),
        "{message}"
    );
    assert!(
        message.contains("was not seen through the coordinator after 3 s"),
        "{message}"
    );
    // The trap is real: the source's rows are not visible through Citus.
    let through_citus: i64 = target
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        through_citus, 0,
        "no subscribed row is visible through the coordinator"
    );
    // The plain canary check says the same without knowing about subscriptions.
    let e = canary(&src, &target, Duration::from_secs(1))
        .await
        .expect_err("not seen");
    assert!(
        e.to_string()
            .starts_with("the stream is not trusted: the canary written at LSN ")
            && e.to_string()
                .ends_with("was not seen through the coordinator after 1 s"),
        "{e}"
    );
    target
        .batch_execute("DROP SUBSCRIPTION trap")
        .await
        .unwrap();
}

/// Throughput of the apply, printed (no timed assertion): 100 source transactions of 200
/// inserts, then 100 of 50 updates and 20 deletes, drained in batches of 2000 changes.
/// `cargo test --test logical_apply measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn measure_apply_throughput() {
    async fn measure(label: &str, source_port: u16, target_port: u16, target_db: &str) {
        let src = source(source_port, "bench").await;
        for t in 0..100i64 {
            src.execute(
                "INSERT INTO orders (tenant, id, note, doc, amount) SELECT g % 16, $1::bigint * 1000 + g, 'n', '{\"a\": 1}', g FROM generate_series(1, 200) g",
                &[&t],
            )
            .await
            .unwrap();
        }
        for t in 0..100i64 {
            src.execute(
                "UPDATE orders SET note = 'u' WHERE id BETWEEN $1::bigint * 1000 + 1 AND $1::bigint * 1000 + 50",
                &[&t],
            )
            .await
            .unwrap();
            src.execute(
                "DELETE FROM orders WHERE id BETWEEN $1::bigint * 1000 + 51 AND $1::bigint * 1000 + 70",
                &[&t],
            )
            .await
            .unwrap();
        }
        let mut config = ApplyConfig::new(SLOT);
        config.batch_changes = 2000;
        let mut apply = Applier::new(
            connect(source_port, "bench").await,
            connect(target_port, target_db).await,
            config,
        )
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let mut changes = 0;
        let mut batches = 0;
        loop {
            let outcome = apply.apply_batch().await.unwrap();
            if outcome.transactions == 0 {
                break;
            }
            changes += outcome.changes;
            batches += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{label}: {changes} changes in {batches} batches, {seconds:.2} s, {:.0} changes/s",
            changes as f64 / seconds
        );
    }
    let lab = CitusLab::start(100, 15).await.expect("a Citus lab");
    let coordinator = citus_target(&lab).await;
    drop(coordinator);
    measure("citus", lab.config.pg1_port, lab.citus.ports[0], "postgres").await;
    let target = fresh_db(lab.config.pg1_port, "bench_target").await;
    target.batch_execute(SCHEMA).await.unwrap();
    connect(lab.config.pg1_port, "bench")
        .await
        .batch_execute("SELECT pg_drop_replication_slot('cutover_move'); DROP TABLE orders, tiers; DROP TABLE cutover_canary")
        .await
        .unwrap();
    connect(lab.config.pg1_port, "postgres")
        .await
        .batch_execute("DROP DATABASE bench")
        .await
        .unwrap();
    measure(
        "plain",
        lab.config.pg1_port,
        lab.config.pg1_port,
        "bench_target",
    )
    .await;
}
