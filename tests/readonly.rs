//! The read-only cockpit follows a run someone else drives, from the journal, and never opens,
//! creates or changes a run. No servers: the journal alone is the source.

use chrono::Utc;
use cutover::engine::{EntryKind, JournalEntry};
use cutover::journal::Journal;
use cutover::plan::StepId;
use cutover::ui::model::{RunbookUpdate, StepStatusView};
use std::collections::BTreeMap;
use std::time::Duration;

fn lab_plan() -> cutover::plan::Plan {
    let inventory = cutover::inventory::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/inventories/lab.yaml"
    )))
    .unwrap();
    let params = BTreeMap::from([
        ("from".to_string(), "p1".to_string()),
        ("to".to_string(), "p2".to_string()),
        ("node".to_string(), "pg2".to_string()),
        ("shards".to_string(), "512-1023".to_string()),
    ]);
    cutover::session::plan(&inventory, "shard-split", &params).unwrap()
}

async fn next_view(
    updates: &mut tokio::sync::mpsc::Receiver<RunbookUpdate>,
) -> cutover::ui::model::RunbookView {
    match tokio::time::timeout(Duration::from_secs(5), updates.recv()).await {
        Ok(Some(RunbookUpdate::View(view))) => view,
        other => panic!("expected a view, got {other:?}"),
    }
}

#[tokio::test]
async fn readonly_follows_the_journal_and_never_creates_a_run() {
    let state = tempfile::tempdir().unwrap();
    let plan = lab_plan();
    let (tx, mut updates) = tokio::sync::mpsc::channel(8);
    tokio::spawn(cutover::cockpit::follow(
        Journal::open(state.path()).unwrap(),
        plan.clone(),
        Duration::from_secs(10),
        tx,
    ));

    // No run yet: the plan is shown, all pending, and watching created nothing.
    let view = next_view(&mut updates).await;
    assert_eq!(view.fingerprint, plan.fingerprint());
    assert!(view
        .steps
        .iter()
        .all(|s| s.status == StepStatusView::Pending));
    let driver = Journal::open(state.path()).unwrap();
    assert!(
        driver.runs().unwrap().is_empty(),
        "the read-only cockpit created no run"
    );

    // Another operator's run progresses; the follower shows it.
    let lock = driver
        .lock_driver(&plan.environment, &plan.runbook)
        .unwrap();
    let run = driver.create_run(&plan).unwrap();
    let preflight = Some(StepId::new("preflight"));
    for (kind, detail) in [
        (EntryKind::Confirmed, "seen x"),
        (EntryKind::Started, ""),
        (EntryKind::Verified, "every precondition held"),
    ] {
        driver
            .append(
                &run,
                &JournalEntry::new(Utc::now(), preflight.clone(), kind, detail)
                    .with_actors(vec!["alice".into()]),
            )
            .unwrap();
    }
    driver
        .append(
            &run,
            &JournalEntry::new(
                Utc::now(),
                Some(StepId::new("base-backup")),
                EntryKind::Confirmed,
                "seen y",
            )
            .with_actors(vec!["alice".into()]),
        )
        .unwrap();
    driver
        .append(
            &run,
            &JournalEntry::new(
                Utc::now(),
                Some(StepId::new("base-backup")),
                EntryKind::Started,
                "",
            ),
        )
        .unwrap();
    let followed = loop {
        let view = next_view(&mut updates).await;
        if view.steps[0].status == StepStatusView::Done {
            break view;
        }
    };
    assert_eq!(followed.steps[1].status, StepStatusView::Running);
    assert!(
        Journal::open(state.path())
            .unwrap()
            .lock_driver(&plan.environment, &plan.runbook)
            .is_err(),
        "nobody else can drive while the driver holds the run"
    );

    // The driver dies mid-step: the follower no longer calls the step running.
    drop(lock);
    let stopped = loop {
        let view = next_view(&mut updates).await;
        if view.steps[1].status != StepStatusView::Running {
            break view;
        }
    };
    assert_eq!(stopped.steps[1].status, StepStatusView::NeedsRecheck);
    assert_eq!(stopped.running, None);
    assert_eq!(
        driver.runs().unwrap().len(),
        1,
        "still only the driver's run"
    );
    assert_eq!(
        driver.entries(&run).unwrap().len(),
        5,
        "the follower wrote nothing"
    );
}
