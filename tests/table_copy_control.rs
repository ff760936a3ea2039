//! The operator's say over a running table copy, against real servers: `--confirm` makes each
//! table wait for a confirmation (refused headless, where no one can give it), a hold stops new
//! starts while the running ones finish, and the cockpit's Copy pane shows a running COPY's
//! progress read from the target's `pg_stat_progress_copy` by its poller.

use cutover::engine::{EngineState, ItemId, ItemStatus, OnItemFailure, Oversight};
use cutover::lab::copy_source::{self, SourceShape, SOURCE_DB};
use cutover::lab::TestLab;
use cutover::readings::copy::CopyFeed;
use cutover::runbooks::table_copy::{self, TableCopy};
use cutover::session::{self, Invocation};
use cutover::ui::model::{Model, Pane};
use cutover::ui::update::{update, Action};
use cutover::ui::{fixtures, render};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::Client;

const SHAPE: SourceShape = SourceShape {
    months: 3,
    rows_per_month: 1_000,
    big_rows: 2_000,
};

async fn plain_lab(shape: &SourceShape) -> TestLab {
    let lab = TestLab::start(500).await.expect("lab");
    copy_source::start_plain_target(&lab.config).unwrap();
    copy_source::create_source(lab.config.pg1_port, shape)
        .await
        .unwrap();
    copy_source::create_database(lab.config.pg2_port, "copy_target", shape)
        .await
        .unwrap();
    lab
}

fn invocation(lab: &TestLab, state: &Path, extra: &[(&str, &str)]) -> Invocation {
    let mut params = BTreeMap::from([
        ("from".to_string(), format!("pg1/{SOURCE_DB}")),
        ("to".to_string(), "pg2/copy_target".to_string()),
    ]);
    for (k, v) in extra {
        params.insert(k.to_string(), v.to_string());
    }
    Invocation {
        inventory_path: lab.config.inventory_path(),
        runbook: "table-copy".into(),
        params,
        state_dir: Some(state.to_path_buf()),
        oversight: Oversight::Solo,
        trust_on_first_use: false,
        expect_fingerprint: None,
    }
}

async fn ledger_rows(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT target_table || ' ' || part FROM cutover_copy_ledger ORDER BY 1",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

/// The copy step's index and its items, once it is running with its items declared.
async fn copy_step_running(state: &mut watch::Receiver<EngineState>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        {
            let current = state.borrow_and_update();
            if let Some(i) = current.running_step() {
                if !current.items(i).is_empty() {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "the copy step never started");
        let _ = tokio::time::timeout(Duration::from_millis(200), state.changed()).await;
    }
}

fn next_items(state: &watch::Receiver<EngineState>, step: usize) -> Vec<ItemId> {
    state
        .borrow()
        .next_items(step, usize::MAX, OnItemFailure::Continue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_waits_for_each_table_and_a_hold_stops_new_starts() {
    let lab = plain_lab(&SHAPE).await;
    let state_dir = lab.config.dir.join("state");
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();

    // Headless, no one can confirm: the copy step fails before any table starts.
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("run")
        .arg(lab.config.inventory_path())
        .args([
            "table-copy",
            "--from",
            &format!("pg1/{SOURCE_DB}"),
            "--to",
            "pg2/copy_target",
            "--confirm",
            "--yes",
            "--state-dir",
        ])
        .arg(&state_dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("no one to ask"), "{text}");
    assert!(ledger_rows(&target).await.is_empty());

    // With an item control (as the cockpit holds one), each table waits for its confirmation.
    let mut runner =
        session::open_as::<TableCopy>(&invocation(&lab, &state_dir, &[("confirm", "yes")]))
            .unwrap();
    let control = runner.item_control();
    let mut state = runner.watch_state();
    let run = tokio::spawn(async move {
        let result = runner.run_headless("test").await.map_err(|e| e.to_string());
        let entries = runner.journal().entries(&runner.run_id).unwrap();
        let export = runner.journal().export_markdown(&runner.run_id).unwrap();
        (result, runner.actions().state(), entries, export)
    });
    let step = copy_step_running(&mut state).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        ledger_rows(&target).await.is_empty(),
        "nothing confirmed yet"
    );
    let waiting = next_items(&state, step);
    assert_eq!(waiting.len(), SHAPE.tables().len());

    let first = waiting[0].clone();
    control.confirm(first.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state
        .borrow()
        .items(step)
        .iter()
        .any(|i| i.id == first && matches!(i.status, ItemStatus::Done { .. }))
    {
        assert!(Instant::now() < deadline, "{first} never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ledger_rows(&target).await,
        [format!("{first} all")],
        "only the confirmed table"
    );

    // Held: confirmed tables still do not start.
    control.hold(true);
    for item in next_items(&state, step) {
        control.confirm(item);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(ledger_rows(&target).await.len(), 1, "held");

    control.hold(false);
    let (result, pair, entries, export) = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends")
        .unwrap();
    result.unwrap();
    assert_eq!(ledger_rows(&target).await.len(), SHAPE.tables().len());
    assert!(pair
        .tables
        .values()
        .all(|t| t.status() == table_copy::state::Status::Verified));

    // Each confirmation is journaled once, by the driver's OS identity, before its table
    // starts, and the export lists it with the table.
    let me = cutover::identity::Identity::current(None).label();
    let kind_of = |kind: cutover::engine::EntryKind| {
        entries
            .iter()
            .enumerate()
            .filter(move |(_, e)| e.kind == kind)
    };
    let confirmed: Vec<_> = kind_of(cutover::engine::EntryKind::ItemConfirmed).collect();
    assert_eq!(confirmed.len(), SHAPE.tables().len(), "{entries:#?}");
    for (position, entry) in &confirmed {
        assert_eq!(entry.actors, std::slice::from_ref(&me));
        let item = entry.item.clone().unwrap();
        let start = kind_of(cutover::engine::EntryKind::ItemStarted)
            .find(|(_, e)| e.item.as_ref() == Some(&item))
            .map(|(n, _)| n)
            .unwrap();
        assert!(*position < start, "{item} started before its confirmation");
        assert!(
            export.contains(&format!("`copy` item `{item}` confirmed by **{me}**")),
            "{export}"
        );
    }
    assert_eq!(confirmed[0].1.item.as_ref(), Some(&first));
}

fn screen(model: &Model) -> String {
    let theme = cutover::ui::theme::Theme::builtin("dark").unwrap();
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(120, 24)).unwrap();
    terminal
        .draw(|frame| render::render_pane(frame, frame.area(), Pane::Copy, model, &theme))
        .unwrap();
    let buffer = terminal.backend().buffer().clone();
    (0..buffer.area.height)
        .map(|y| {
            (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol().to_string())
                .collect::<String>()
                + "\n"
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_pane_shows_a_running_copy_from_the_target() {
    let shape = SourceShape {
        months: 1,
        rows_per_month: 500,
        big_rows: 20_000,
    };
    let lab = plain_lab(&shape).await;
    let state_dir = lab.config.dir.join("state");
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();
    // Slow the big table's load down so that it is seen running.
    target
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_sleep(0.0003); RETURN NEW; END $$; \
             CREATE TRIGGER slow BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow()",
        )
        .await
        .unwrap();
    let inv = invocation(&lab, &state_dir, &[("jobs", "1")]);
    let feed: CopyFeed =
        table_copy::copy_feed(&lab.inventory, &inv.params, Some(&state_dir)).unwrap();
    let mut readings = cutover::readings::copy::spawn(feed);
    let mut runner = session::open_as::<TableCopy>(&inv).unwrap();
    let run =
        tokio::spawn(async move { runner.run_headless("test").await.map_err(|e| e.to_string()) });

    let mut model = fixtures::model(Instant::now());
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        assert!(Instant::now() < deadline, "no running copy was ever shown");
        let _ = tokio::time::timeout(Duration::from_secs(2), readings.changed()).await;
        let Some(view) = readings.borrow_and_update().clone() else {
            continue;
        };
        let running = view
            .running
            .iter()
            .any(|r| r.item == "public.events" && r.rows > 0 && r.bytes > 0);
        update(&mut model, Action::Copy(Box::new(view)));
        if running && model.copy.as_ref().is_some_and(|c| c.bytes_per_s.is_some()) {
            break screen(&model);
        }
    };
    assert!(seen.contains("public.events"), "{seen}");
    assert!(seen.contains("rows"), "{seen}");
    assert!(seen.contains("█") || seen.contains("·]"), "{seen}");
    assert!(seen.contains("/s · ETA"), "{seen}");
    assert!(model.panes().contains(&Pane::Copy));
    run.await.unwrap().unwrap();
}

/// Waits until `item` of `step` satisfies `done`.
async fn wait_item(
    state: &watch::Receiver<EngineState>,
    step: usize,
    item: &str,
    what: &str,
    done: impl Fn(&ItemStatus) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if state
            .borrow()
            .items(step)
            .iter()
            .any(|i| i.id.as_str() == item && done(&i.status))
        {
            return;
        }
        assert!(Instant::now() < deadline, "{item} never {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_copy_runs_copies_the_fixed_table_again_at_once() {
    let lab = plain_lab(&SHAPE).await;
    let state_dir = lab.config.dir.join("state");
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();
    // The biggest table (first to start) loads slowly, so that the step is still running;
    // the first month refuses its values ('pending', 'closed').
    target
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_sleep(0.0005); RETURN NEW; END $$; \
             CREATE TRIGGER slow BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow(); \
             ALTER TABLE report_2023_01 ALTER state TYPE varchar(4)",
        )
        .await
        .unwrap();
    let mut runner =
        session::open_as::<TableCopy>(&invocation(&lab, &state_dir, &[("jobs", "2")])).unwrap();
    let control = runner.item_control();
    let mut state = runner.watch_state();
    let run = tokio::spawn(async move {
        let result = runner.run_headless("test").await.map_err(|e| e.to_string());
        let entries = runner.journal().entries(&runner.run_id).unwrap();
        (result, runner.actions().state(), entries)
    });
    let step = copy_step_running(&mut state).await;
    let failed = |s: &ItemStatus| matches!(s, ItemStatus::Failed { .. });
    wait_item(&state, step, "public.report_2023_01", "failed", failed).await;
    {
        let current = state.borrow();
        let status = |name: &str| {
            current
                .items(step)
                .iter()
                .find(|i| i.id.as_str() == name)
                .map(|i| i.status.label())
        };
        assert_eq!(status("public.events"), Some("running"), "mid-step");
        // Stop on error: the other months wait.
        assert_eq!(status("public.report_2023_02"), Some("pending"));
        assert_eq!(status("public.report_2023_03"), Some("pending"));
    }

    target
        .batch_execute("ALTER TABLE report_2023_01 ALTER state TYPE text")
        .await
        .unwrap();
    control.retry(ItemId::new("public.report_2023_01"));
    let done = |s: &ItemStatus| matches!(s, ItemStatus::Done { .. });
    wait_item(&state, step, "public.report_2023_01", "verified", done).await;

    let (result, pair, entries) = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends")
        .unwrap();
    result.unwrap();
    for table in SHAPE.tables() {
        let (rows, duplicates) = copy_source::count_with_duplicates(&target, &table)
            .await
            .unwrap();
        assert_eq!(duplicates, 0, "{table}");
        assert!(rows > 0, "{table}");
    }
    let (rows, _) = copy_source::count_with_duplicates(&target, "report_2023_01")
        .await
        .unwrap();
    assert_eq!(rows as u64, SHAPE.rows_per_month);
    assert!(pair
        .tables
        .values()
        .all(|t| t.status() == table_copy::state::Status::Verified));

    // Journaled: who asked, then the second attempt, all while the big table still ran.
    use cutover::engine::EntryKind;
    let position = |kind: EntryKind, item: &str, nth: usize| {
        entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == kind && e.item.as_ref().map(ItemId::as_str) == Some(item))
            .nth(nth)
            .map(|(n, _)| n)
            .unwrap_or_else(|| panic!("no {kind} #{nth} for {item}"))
    };
    let asked = position(EntryKind::ItemRetryAsked, "public.report_2023_01", 0);
    let me = cutover::identity::Identity::current(None).label();
    assert_eq!(entries[asked].actors, [me]);
    assert!(entries[asked].detail.contains("character varying(4)"));
    let second = position(EntryKind::ItemStarted, "public.report_2023_01", 1);
    assert!(entries[second].detail.starts_with("attempt 2"));
    assert!(asked < second);
    assert!(second < position(EntryKind::ItemDone, "public.events", 0));
    // One step start: the retry did not wait for the step to run again.
    let starts = entries
        .iter()
        .filter(|e| {
            e.kind == EntryKind::Started && e.step.as_ref().map(|s| s.as_str()) == Some("copy")
        })
        .count();
    assert_eq!(starts, 1);
}

/// Through the cockpit bridge (`cutover::cockpit::serve`), as the Copy pane's keys send them:
/// `p` holds new starts while `c` confirms, releasing starts the confirmed table, each
/// confirmation is journaled by the driver, and `t` on a table that has not failed is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cockpit_bridge_holds_confirms_and_refuses_a_retry_of_a_running_table() {
    use cutover::engine::EntryKind;
    use cutover::ui::model::{ConfirmationView, RunbookUpdate, RunbookView, UiRequest};
    use tokio::sync::mpsc;

    let lab = plain_lab(&SHAPE).await;
    let state_dir = lab.config.dir.join("state");
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();
    let mut runner =
        session::open_as::<TableCopy>(&invocation(&lab, &state_dir, &[("confirm", "yes")]))
            .unwrap();
    runner
        .run_headless_through("test", Some(&"ledger".into()))
        .await
        .unwrap();
    let run_id = runner.run_id.clone();
    let (requests, requests_rx) = mpsc::channel(8);
    let (updates_tx, mut updates) = mpsc::channel(1024);
    let bridge = tokio::spawn(cutover::cockpit::serve(
        runner,
        requests_rx,
        updates_tx,
        table_copy::plan::PAUSE_BOUND,
    ));
    // Collects updates until `done` holds for a view; the info and refusals seen on the way.
    let mut said: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut until = async |done: &dyn Fn(&RunbookView) -> bool,
                           said: &mut Vec<String>,
                           refused: &mut Vec<String>| {
        loop {
            let update = tokio::time::timeout(Duration::from_secs(60), updates.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out; refusals: {refused:?}"))
                .expect("the bridge runs");
            match update {
                RunbookUpdate::View(view) if done(&view) => return view,
                RunbookUpdate::Info(message) => said.push(message),
                RunbookUpdate::Refused(message) => refused.push(message),
                _ => {}
            }
        }
    };
    until(&|_| true, &mut said, &mut refused).await;
    let copy = 2;
    requests
        .send(UiRequest::RunStep {
            step: copy,
            confirmation: ConfirmationView {
                by: vec!["alice".into()],
                seen: String::new(),
            },
        })
        .await
        .unwrap();
    until(
        &|v| v.running == Some(copy) && v.steps[copy].items.pending > 0,
        &mut said,
        &mut refused,
    )
    .await;

    // `p`, then `c` twice: confirmed, but held.
    requests.send(UiRequest::HoldItems(true)).await.unwrap();
    requests.send(UiRequest::ConfirmNextItem).await.unwrap();
    requests.send(UiRequest::ConfirmNextItem).await.unwrap();
    requests
        .send(UiRequest::RetryItem("public.report_2023_01".into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        ledger_rows(&target).await.is_empty(),
        "held: nothing starts"
    );

    // `p` again: the two confirmed tables (the largest first) start and finish; the others
    // still wait for their confirmation.
    requests.send(UiRequest::HoldItems(false)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger_rows(&target).await.len() < 2 {
        assert!(Instant::now() < deadline, "the confirmed tables never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        ledger_rows(&target).await,
        ["public.events all", "public.report_2023_01 all"]
    );
    for _ in 2..SHAPE.tables().len() {
        requests.send(UiRequest::ConfirmNextItem).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until(&|v| v.running.is_none(), &mut said, &mut refused).await;
    let _ = requests.send(UiRequest::Quit).await;
    drop(requests);
    tokio::time::timeout(Duration::from_secs(30), bridge)
        .await
        .expect("the bridge ends")
        .unwrap();

    assert_eq!(ledger_rows(&target).await.len(), SHAPE.tables().len());
    assert!(
        said.iter().any(|m| m.contains("new items held")),
        "{said:?}"
    );
    assert!(
        said.iter().any(|m| m.contains("public.events confirmed")),
        "{said:?}"
    );
    assert!(
        refused
            .iter()
            .any(|m| m.contains("public.report_2023_01 has not failed")),
        "{refused:?}"
    );
    let journal = cutover::journal::Journal::open(&state_dir).unwrap();
    let entries = journal.entries(&run_id).unwrap();
    let me = cutover::identity::Identity::current(None).label();
    let confirmed: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::ItemConfirmed)
        .inspect(|e| assert_eq!(e.actors, std::slice::from_ref(&me)))
        .filter_map(|e| e.item.as_ref().map(ItemId::as_str))
        .collect();
    assert_eq!(confirmed.len(), SHAPE.tables().len(), "{confirmed:?}");
    assert_eq!(confirmed[..2], ["public.events", "public.report_2023_01"]);
    assert!(!entries.iter().any(|e| e.kind == EntryKind::ItemRetryAsked));
}

/// After the copy step stopped on errors, `t` on one errored table (idle, through the cockpit
/// bridge) makes the step's next run retry exactly that table: the other errored table is not
/// attempted again and still fails the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_step_failed_t_retries_exactly_the_table_asked_for() {
    use cutover::engine::EntryKind;
    use cutover::ui::model::{ConfirmationView, RunbookUpdate, RunbookView, UiRequest};
    use tokio::sync::mpsc;

    let lab = plain_lab(&SHAPE).await;
    let state_dir = lab.config.dir.join("state");
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();
    target
        .batch_execute(
            "ALTER TABLE report_2023_01 ALTER state TYPE varchar(4); \
             ALTER TABLE report_2023_02 ALTER state TYPE varchar(4)",
        )
        .await
        .unwrap();
    let mut runner = session::open_as::<TableCopy>(&invocation(
        &lab,
        &state_dir,
        &[("no-stop-on-error", "yes")],
    ))
    .unwrap();
    runner
        .run_headless_through("test", Some(&"ledger".into()))
        .await
        .unwrap();
    let run_id = runner.run_id.clone();
    let (requests, requests_rx) = mpsc::channel(8);
    let (updates_tx, mut updates) = mpsc::channel(1024);
    let bridge = tokio::spawn(cutover::cockpit::serve(
        runner,
        requests_rx,
        updates_tx,
        table_copy::plan::PAUSE_BOUND,
    ));
    let mut said: Vec<String> = Vec::new();
    let mut until = async |done: &dyn Fn(&RunbookView) -> bool, said: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            assert!(Instant::now() < deadline, "never came; said: {said:?}");
            let update = tokio::time::timeout(Duration::from_secs(60), updates.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out; said: {said:?}"))
                .expect("the bridge runs");
            match update {
                RunbookUpdate::View(view) if done(&view) => return view,
                RunbookUpdate::View(view) => {
                    said.push(format!(
                        "view: running {:?}, failed {:?}",
                        view.running, view.steps[2].items.failed
                    ));
                    said.dedup();
                }
                RunbookUpdate::Info(message) | RunbookUpdate::Refused(message) => {
                    said.push(message)
                }
                _ => {}
            }
        }
    };
    let copy = 2;
    let run_copy = || UiRequest::RunStep {
        step: copy,
        confirmation: ConfirmationView {
            by: vec!["alice".into()],
            seen: String::new(),
        },
    };
    until(&|_| true, &mut said).await;
    requests.send(run_copy()).await.unwrap();
    until(&|v| v.running == Some(copy), &mut said).await;
    let failed = until(&|v| v.running.is_none(), &mut said).await;
    assert_eq!(failed.steps[copy].items.failed.len(), 2, "{said:?}");

    target
        .batch_execute("ALTER TABLE report_2023_01 ALTER state TYPE text")
        .await
        .unwrap();
    requests
        .send(UiRequest::RetryItem("public.report_2023_01".into()))
        .await
        .unwrap();
    // The view after the retry: the table is due again (listed with why it is retried).
    let retried = until(&|_| true, &mut said).await;
    assert!(
        retried.steps[copy]
            .items
            .failed
            .iter()
            .any(|(item, why)| item == "public.report_2023_01"
                && why.starts_with("retry asked after")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|m| m.contains("public.report_2023_01 will be retried when `copy` runs again")),
        "{said:?}"
    );
    requests.send(run_copy()).await.unwrap();
    until(&|v| v.running == Some(copy), &mut said).await;
    let again = until(&|v| v.running.is_none(), &mut said).await;
    let still: Vec<&str> = again.steps[copy]
        .items
        .failed
        .iter()
        .map(|(item, _)| item.as_str())
        .collect();
    assert_eq!(still, ["public.report_2023_02"], "{said:?}");
    let _ = requests.send(UiRequest::Quit).await;
    drop(requests);
    tokio::time::timeout(Duration::from_secs(30), bridge)
        .await
        .expect("the bridge ends")
        .unwrap();

    let (rows, duplicates) = copy_source::count_with_duplicates(&target, "report_2023_01")
        .await
        .unwrap();
    assert_eq!((rows as u64, duplicates), (SHAPE.rows_per_month, 0));
    let entries = cutover::journal::Journal::open(&state_dir)
        .unwrap()
        .entries(&run_id)
        .unwrap();
    let starts = |item: &str| {
        entries
            .iter()
            .filter(|e| {
                e.kind == EntryKind::ItemStarted
                    && e.item.as_ref().map(ItemId::as_str) == Some(item)
            })
            .count()
    };
    assert_eq!(starts("public.report_2023_01"), 2);
    assert_eq!(
        starts("public.report_2023_02"),
        1,
        "not asked for: not retried"
    );
    let asked: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::ItemRetryAsked)
        .collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].actors,
        [cutover::identity::Identity::current(None).label()]
    );
}
