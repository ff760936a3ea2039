//! The slot watch against a real lab: the poller reads pg1's wal2json slot (lag, retained WAL,
//! inactive), the WAL disk over the lab's sshd with `df`, a retained-WAL growth rate and the
//! time until the disk fills once writes pile up behind the slot, and the tool's apply error
//! from a progress table in one of the node's databases.

mod common;

use common::*;
use cutover::readings::poller::{PollIntervals, Pollers};
use cutover::readings::slots::{alarms, SlotWatch};
use std::sync::Arc;
use std::time::Duration;

fn pg1_watch(pollers: &Pollers) -> Option<SlotWatch> {
    pollers
        .snapshot()
        .slots
        .into_iter()
        .find(|r| r.source == "pg1")
        .and_then(|r| r.value().cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_reads_a_logical_slot_its_disk_its_growth_and_apply_errors() {
    let lab = lab(1_000).await;
    let p1 = connect(lab.config.pg1_port, "commcarehq_p1").await;
    p1.execute(
        "SELECT pg_create_logical_replication_slot('cutover_move', 'wal2json')",
        &[],
    )
    .await
    .unwrap();
    // A target database on the same node with the tool's progress row, stopped on an error.
    connect(lab.config.pg1_port, "postgres")
        .await
        .batch_execute("CREATE DATABASE reporting")
        .await
        .unwrap();
    let target = connect(lab.config.pg1_port, "reporting").await;
    cutover::effects::logical_apply::install_target(&target)
        .await
        .unwrap();
    target
        .batch_execute(
            "INSERT INTO cutover_apply_progress (origin, applied_lsn, changes, source_committed_at, applied_at, last_error) \
             VALUES ('cutover_move', '0/1', 7, now() - interval '2 seconds', now(), 'applying UPDATE on public.forms (form_id)=(x) at LSN 0/5: boom')",
        )
        .await
        .unwrap();

    let intervals = PollIntervals {
        fast: Duration::from_millis(300),
        distribution: Duration::from_secs(30),
    };
    let mut pollers = Pollers::spawn(Arc::new(lab.inventory.clone()), intervals);
    let first = eventually(Duration::from_secs(20), || {
        let watch = pg1_watch(&pollers);
        async move { watch.filter(|w| w.disk.is_some() && !w.applies.is_empty()) }
    })
    .await
    .expect("pg1's slot watch with its disk and the apply row");
    let slot = &first.slots[0];
    assert_eq!(slot.name, "cutover_move");
    assert_eq!(slot.plugin.as_deref(), Some("wal2json"));
    assert!(!slot.active, "nothing consumes the slot");
    assert!(slot.retained_bytes.is_some() && slot.lag_bytes.is_some());
    let disk = first.disk.as_ref().unwrap();
    assert!(
        disk.free_bytes > 0 && disk.total_bytes >= disk.free_bytes,
        "{disk:?}"
    );
    assert!(disk.path.ends_with("/pg1/pg_wal"));
    let apply = &first.applies[0];
    assert_eq!(
        (apply.database.as_str(), apply.origin.as_str()),
        ("reporting", "cutover_move")
    );
    assert_eq!(apply.changes, 7);
    assert!(apply.lag_seconds.unwrap() >= 1.9);
    assert!(alarms("pg1", &first, Duration::from_secs(1))
        .iter()
        .any(|a| a
            .starts_with("apply from cutover_move into pg1/reporting stopped: applying UPDATE")));

    // Writes pile up behind the unconsumed slot: retained WAL grows, the rate and the time
    // until the disk fills appear, and retained WAL is above what it was.
    let before = slot.retained_bytes.unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..40 {
            p1.batch_execute(
                "INSERT INTO forms (form_id, domain, payload) SELECT gen_random_uuid(), 'slots', \
                 jsonb_build_object('pad', repeat('x', 500)) FROM generate_series(1, 2000)",
            )
            .await
            .unwrap();
        }
    });
    let growing = eventually(Duration::from_secs(60), || {
        let watch = pg1_watch(&pollers);
        async move {
            watch.filter(|w| {
                w.full_in_secs.is_some()
                    && w.retained_growth_bytes_per_s.is_some_and(|r| r > 0.0)
                    && w.slots[0].retained_bytes.is_some_and(|b| b > before)
            })
        }
    })
    .await
    .expect("retained WAL grows and the time until full is estimated");
    let full_in = growing.full_in_secs.unwrap();
    let free = growing.disk.as_ref().unwrap().free_bytes as f64;
    let rate = growing.retained_growth_bytes_per_s.unwrap();
    assert!((full_in - free / rate).abs() < 1.0);
    let threshold = Duration::from_secs_f64(full_in + 3600.0);
    assert!(alarms("pg1", &growing, threshold)
        .iter()
        .any(|a| a.starts_with("slot cutover_move holds ") && a.ends_with("at the current rate")));
    writer.await.unwrap();
    pollers.changed().await;
}
