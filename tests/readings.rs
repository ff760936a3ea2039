//! Live readings against real labs: replication lag, connections, distribution, unreachable nodes.

mod common;

use common::*;
use cutover::readings::poller::{PollIntervals, Pollers};
use cutover::readings::queries;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_lag_becomes_nonzero_after_writes_and_returns_to_zero() {
    let lab = lab(2_000).await;
    start_standby(&lab, "pg2_slot");
    let pg1 = lab.inventory.node("pg1").unwrap().clone();
    let pg2 = lab.inventory.node("pg2").unwrap().clone();

    let standby = connect(lab.config.pg2_port, "postgres").await;
    standby
        .simple_query("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let primary = connect(lab.config.pg1_port, "commcarehq_p1").await;
    primary
        .simple_query("INSERT INTO forms (form_id, domain) SELECT gen_random_uuid(), 'lagtest' FROM generate_series(1, 5000)")
        .await
        .unwrap();

    let lagging = eventually(Duration::from_secs(10), || async {
        let r = queries::read_replication(&pg1).await;
        let sender = r.value()?.senders.first()?.clone();
        (sender.lag_bytes? > 0).then_some(sender)
    })
    .await
    .expect("lag becomes nonzero while replay is paused");
    assert_eq!(lagging.application_name, "pg2");
    assert_eq!(lagging.state, "streaming");

    // The sender counts lag from the primary's WAL; the standby may receive it a moment later.
    let receiver = eventually(Duration::from_secs(10), || async {
        let reading = queries::read_replication(&pg2).await;
        let receiver = reading.value()?.receiver.clone()?;
        (receiver.receive_lsn != receiver.replay_lsn).then_some(receiver)
    })
    .await
    .expect("the standby shows received WAL not replayed yet");
    assert!(receiver.replay_paused);
    assert_eq!(receiver.status.as_deref(), Some("streaming"));

    standby
        .simple_query("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    eventually(Duration::from_secs(20), || async {
        let r = queries::read_replication(&pg1).await;
        (r.value()?.senders.first()?.lag_bytes? == 0).then_some(())
    })
    .await
    .expect("lag returns to 0 after replay resumes");

    let slots = queries::read_replication(&pg1)
        .await
        .value()
        .unwrap()
        .slots
        .clone();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].slot_name, "pg2_slot");
    assert!(slots[0].active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_database_match_open_sessions() {
    let lab = lab(100).await;
    let mut held = Vec::new();
    // The application's sessions (its own application_name), then two of the tool's.
    for _ in 0..3 {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=commcarehq_p1 application_name=app",
                lab.config.pg1_port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        held.push(client);
    }
    for _ in 0..2 {
        held.push(connect(lab.config.pg1_port, "commcarehq_proxy").await);
    }
    let pg1 = lab.inventory.node("pg1").unwrap();
    let reading = queries::read_connections(pg1).await;
    let groups = reading.value().expect("pg1 reachable");
    let count = |db: &str, tool: bool| -> i64 {
        groups
            .iter()
            .filter(|g| g.database.as_deref() == Some(db) && g.tool == tool)
            .map(|g| g.count)
            .sum()
    };
    assert_eq!(count("commcarehq_p1", false), 3, "{groups:?}");
    assert_eq!(count("commcarehq_proxy", true), 2, "{groups:?}");
    assert_eq!(count("commcarehq_proxy", false), 0, "{groups:?}");
    assert!(groups
        .iter()
        .filter(|g| g.database.as_deref() == Some("commcarehq_p1"))
        .all(|g| g.client_addr.as_deref() == Some("127.0.0.1/32")
            && g.state.as_deref() == Some("idle")));
    // "pg1 should only have connections to commcarehq_p1" is judged on the application's.
    let application = cutover::readings::types::application_connections_by_database(groups);
    assert_eq!(
        application.keys().map(String::as_str).collect::<Vec<_>>(),
        ["commcarehq_p1"],
        "{groups:?}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_shard_counts_sum_to_documents_loaded() {
    let docs = 20_000;
    let lab = lab(docs).await;
    let snapshot = queries::snapshot(&lab.inventory).await;
    assert_eq!(snapshot.distribution.len(), 1);
    let dist = snapshot.distribution[0].value().expect("p1 readable");
    let forms = &dist.tables[0];
    assert_eq!(forms.total, docs as i64);
    assert_eq!(
        forms.per_shard.iter().map(|s| s.rows).sum::<i64>(),
        docs as i64
    );
    assert!(forms.per_shard.iter().all(|s| s.shard < 1024));
    assert_eq!(
        forms.per_shard.len(),
        1024,
        "20k random ids cover every shard"
    );
    assert_eq!(forms.misplaced, 0);
    let cases = &dist.tables[1];
    assert_eq!(cases.table, "cases");
    assert_eq!(cases.total, lab.config.cases() as i64);
    assert_eq!(cases.misplaced, 0);
    assert_eq!(
        forms.estimate, docs as i64,
        "the lab runs ANALYZE after loading"
    );

    // The status JSON carries the documented top-level keys, and every reading its time.
    let json = serde_json::to_value(&snapshot).unwrap();
    for key in ["replication", "connections", "pgbouncer", "distribution"] {
        let readings = json[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} missing"));
        assert!(!readings.is_empty(), "{key} is empty");
        assert!(
            readings.iter().all(|r| r["at"].is_string()),
            "{key} readings carry their time"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_shows_unreachable_while_others_keep_reporting() {
    let lab = lab(100).await;
    start_standby(&lab, "pg2_slot");
    let pollers = Pollers::spawn(
        Arc::new(lab.inventory.clone()),
        PollIntervals {
            fast: Duration::from_millis(200),
            distribution: Duration::from_secs(1),
        },
    );
    let reachable = |name: &str, s: &cutover::readings::types::Snapshot| {
        s.replication
            .iter()
            .find(|r| r.source == name)
            .map(|r| r.value().is_some())
    };
    eventually(Duration::from_secs(10), || async {
        let s = pollers.snapshot();
        (reachable("pg1", &s)? && reachable("pg2", &s)?).then_some(())
    })
    .await
    .expect("both nodes report");

    stop_node(&lab, "pg2");
    let before = pollers.snapshot();
    let pg1_before = before
        .replication
        .iter()
        .find(|r| r.source == "pg1")
        .unwrap()
        .at;
    let after = eventually(Duration::from_secs(10), || async {
        let s = pollers.snapshot();
        (!reachable("pg2", &s)?).then_some(s)
    })
    .await
    .expect("pg2 shows as unreachable");
    let pg2 = after
        .replication
        .iter()
        .find(|r| r.source == "pg2")
        .unwrap();
    assert!(
        pg2.error().unwrap().contains("127.0.0.1"),
        "error names the endpoint: {:?}",
        pg2.error()
    );
    let later = eventually(Duration::from_secs(5), || async {
        let s = pollers.snapshot();
        let pg1 = s.replication.iter().find(|r| r.source == "pg1")?;
        (pg1.at > pg1_before && pg1.value().is_some()).then_some(())
    })
    .await;
    assert!(later.is_some(), "pg1 keeps updating while pg2 is down");
    assert!(
        after.pgbouncer[0].value().is_some(),
        "pgbouncer still reports"
    );
}

/// The shard split's re-route rewrites the inventory (a new partition on pg2): the pollers
/// follow the file without a restart, and stop for what left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pollers_follow_a_rewritten_inventory() {
    use cutover::inventory;
    use cutover::readings::inventory_file::follow_file;
    let lab = lab(100).await;
    start_standby(&lab, "pg2_slot_follow");
    let full = lab.inventory.clone();
    let mut before = full.clone();
    before.nodes.retain(|n| n.name != "pg2");
    assert!(
        !serde_json::to_string(&before).unwrap().contains("\"pg2\""),
        "nothing in the first version refers to pg2"
    );
    let mut after = full.clone();
    let p1 = after.partitions[0].clone();
    let mut p2 = p1.clone();
    p2.name = "p2".into();
    p2.node = "pg2".into();
    after.partitions[0].shards = [p1.shards[0], p1.shards[1] / 2];
    p2.shards = [p1.shards[1] / 2 + 1, p1.shards[1]];
    after.partitions.push(p2);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.yaml");
    std::fs::write(&path, inventory::to_yaml(&before).unwrap()).unwrap();
    let updates = follow_file(
        path.clone(),
        Arc::new(inventory::load(&path).unwrap()),
        Duration::from_millis(200),
    );
    let mut pollers = Pollers::follow(
        updates,
        PollIntervals {
            fast: Duration::from_millis(200),
            distribution: Duration::from_millis(500),
        },
    );
    // `changed` applies new inventories; drive it the way the cockpit's loop does.
    let (snapshots_tx, snapshots) = tokio::sync::watch::channel(pollers.snapshot());
    let driver = tokio::spawn(async move {
        loop {
            pollers.changed().await;
            if snapshots_tx.send(pollers.snapshot()).is_err() {
                return;
            }
        }
    });
    let sources = |s: &cutover::readings::types::Snapshot| {
        (
            s.replication
                .iter()
                .map(|r| r.source.clone())
                .collect::<Vec<_>>(),
            s.distribution
                .iter()
                .map(|r| r.source.clone())
                .collect::<Vec<_>>(),
        )
    };
    eventually(Duration::from_secs(10), || async {
        let s = snapshots.borrow().clone();
        (sources(&s) == (vec!["pg1".to_string()], vec!["p1".to_string()])).then_some(())
    })
    .await
    .expect("first version: pg1 and p1 only");

    std::fs::write(&path, inventory::to_yaml(&after).unwrap()).unwrap();
    let s = eventually(Duration::from_secs(15), || async {
        let s = snapshots.borrow().clone();
        let p2 = s.distribution.iter().find(|r| r.source == "p2")?;
        let pg2 = s.replication.iter().find(|r| r.source == "pg2")?;
        (p2.value().is_some() && pg2.value().is_some()).then_some(s)
    })
    .await
    .expect("pg2 and p2 report after the rewrite, without a restart");
    let p2 = s.distribution.iter().find(|r| r.source == "p2").unwrap();
    assert!(
        p2.value().unwrap().tables[0].total > 0,
        "p2 (the standby's copy) holds the documents"
    );

    std::fs::write(&path, inventory::to_yaml(&before).unwrap()).unwrap();
    eventually(Duration::from_secs(15), || async {
        let s = snapshots.borrow().clone();
        (sources(&s) == (vec!["pg1".to_string()], vec!["p1".to_string()])).then_some(())
    })
    .await
    .expect("pg2 and p2 leave the snapshot when they leave the inventory");
    driver.abort();
}
