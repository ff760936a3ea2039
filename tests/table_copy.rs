//! The `table-copy` runbook against real servers on loopback, with small data: a full copy
//! into a Citus cluster verified row for row; `kill -9` right after a target commit and at a
//! random moment, then resume without a duplicate or a lost row and without copying a
//! verified table again; an errored table retried with `--retry-errors` after the fix; the
//! date and table filters; a split table; a checksum mismatch that names the differing keys.

use cutover::lab::citus::{CitusLab, COORDINATOR, DATABASE};
use cutover::lab::copy_source::{self, SourceShape, SOURCE_DB};
use cutover::lab::TestLab;
use cutover::runbooks::table_copy::effects::KILL_AFTER_COMMIT_ENV;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tokio_postgres::Client;

const SHAPE: SourceShape = SourceShape {
    months: 4,
    rows_per_month: 1_500,
    big_rows: 3_000,
};

fn cutover(inventory: &Path, state: &Path, from: &str, to: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cutover"));
    command
        .arg("run")
        .arg(inventory)
        .args(["table-copy", "--from", from, "--to", to])
        .args(extra)
        .args(["--yes", "--state-dir"])
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("cutover runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn status_json(inventory: &Path, state: &Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["copy", "status"])
        .arg(inventory)
        .arg("--json")
        .args(extra)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every row of `table` as text, ordered by id.
async fn rows(client: &Client, table: &str) -> Vec<String> {
    client
        .batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3")
        .await
        .unwrap();
    client
        .query(&format!("SELECT t::text FROM {table} t ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// (rows, duplicated ids) per table.
async fn counts(client: &Client, tables: &[String]) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    for t in tables {
        out.insert(
            t.clone(),
            copy_source::count_with_duplicates(client, t).await.unwrap(),
        );
    }
    out
}

/// `copied_at` of every ledger row, by table and part.
async fn ledger(client: &Client) -> BTreeMap<(String, String), String> {
    client
        .query(
            "SELECT target_table, part, copied_at::text FROM cutover_copy_ledger",
            &[],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect()
        })
        .unwrap_or_default()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_copy_into_citus_is_verified_row_for_row() {
    let lab = CitusLab::start(500, 15).await.expect("citus lab");
    copy_source::create_source(lab.config.pg1_port, &SHAPE)
        .await
        .unwrap();
    copy_source::setup_citus(&lab, &SHAPE).await.unwrap();
    let state = lab.config.dir.join("state");
    let from = format!("pg1/{SOURCE_DB}");
    let to = format!("{COORDINATOR}/{DATABASE}");
    let out = run(&mut cutover(
        &lab.inventory_path(),
        &state,
        &from,
        &to,
        &["--jobs", "2"],
    ));
    assert!(out.status.success(), "{}", text(&out));

    let source = copy_source::connect(lab.config.pg1_port, SOURCE_DB)
        .await
        .unwrap();
    let target = lab.coordinator(DATABASE).await.unwrap();
    for table in SHAPE.tables() {
        let (s, t) = (rows(&source, &table).await, rows(&target, &table).await);
        assert_eq!(s.len(), t.len(), "{table}");
        assert!(s == t, "{table}: rows differ");
    }
    // The rows landed on the workers' shards, not in a local table on the coordinator.
    let spread: i64 = target
        .query_one(
            "SELECT count(DISTINCT nodeport)::bigint FROM citus_shards WHERE table_name = 'events'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(spread, 2);

    let status = status_json(&lab.inventory_path(), &state, &[]);
    let pair = status.as_object().unwrap().values().next().unwrap();
    assert_eq!(pair["stats"]["total"], SHAPE.tables().len());
    assert_eq!(pair["stats"]["migrated"], SHAPE.tables().len());
    assert_eq!(pair["stats"]["errored"], 0);

    // A second run finds every table verified in the ledger and copies nothing again.
    let before = ledger(&target).await;
    let out = run(&mut cutover(&lab.inventory_path(), &state, &from, &to, &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ledger(&target).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_resume_never_duplicates_nor_loses_a_row() {
    let lab = plain_lab(&SHAPE).await;
    let inventory = lab.config.inventory_path();
    let state = lab.config.dir.join("state");
    let from = format!("pg1/{SOURCE_DB}");
    let to = "pg2/copy_target";
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();
    let source = copy_source::connect(lab.config.pg1_port, SOURCE_DB)
        .await
        .unwrap();
    let tables = SHAPE.tables();
    let expected = counts(&source, &tables).await;

    // Killed exactly between the target's commit of one table and the local state update.
    let victim = "public.report_2023_02";
    let out =
        run(cutover(&inventory, &state, &from, to, &["--jobs", "1"])
            .env(KILL_AFTER_COMMIT_ENV, victim));
    assert!(!out.status.success(), "{}", text(&out));
    let after_kill = ledger(&target).await;
    let key = (victim.to_string(), "all".to_string());
    assert!(after_kill.contains_key(&key), "the victim committed");
    let local = status_json(&inventory, &state, &[]);
    let local = local.as_object().unwrap().values().next().unwrap();
    let victim_state = local["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == victim)
        .unwrap();
    assert_eq!(
        victim_state["status"], "copying",
        "killed before the state update"
    );

    // Killed at a random moment of the resumed run.
    let mut child = cutover(&inventory, &state, &from, to, &["--jobs", "2"])
        .spawn()
        .unwrap();
    let wait = 150 + rand::random::<u64>() % 600;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    let after_random = ledger(&target).await;

    let out = run(&mut cutover(
        &inventory,
        &state,
        &from,
        to,
        &["--jobs", "2"],
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(counts(&target, &tables).await, expected);
    let end = ledger(&target).await;
    assert_eq!(
        end.get(&key),
        after_kill.get(&key),
        "the victim was not copied again"
    );
    for (part, copied_at) in &after_random {
        assert_eq!(end.get(part), Some(copied_at), "{part:?} was copied again");
    }
    let status = status_json(&inventory, &state, &["--migrated"]);
    let pair = status.as_object().unwrap().values().next().unwrap();
    assert_eq!(pair["stats"]["migrated"], tables.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_retry_filters_split_and_mismatch() {
    let lab = plain_lab(&SHAPE).await;
    let inventory = lab.config.inventory_path();
    let state = lab.config.dir.join("state");
    let from = format!("pg1/{SOURCE_DB}");
    let to = "pg2/copy_target";
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();
    // A target column that refuses the source's values ('pending', 'closed').
    target
        .batch_execute("ALTER TABLE report_2023_03 ALTER state TYPE varchar(4)")
        .await
        .unwrap();
    let dates = ["--start-date", "2023-02-01", "--end-date", "2023-04-01"];

    let out = run(&mut cutover(&inventory, &state, &from, to, &dates));
    assert!(!out.status.success(), "{}", text(&out));
    let errored = status_json(&inventory, &state, &["--errored"]);
    let pair = errored.as_object().unwrap().values().next().unwrap();
    let listed = pair["tables"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{pair}");
    assert_eq!(listed[0]["table"], "public.report_2023_03");
    assert!(
        listed[0]["error"]
            .as_str()
            .unwrap()
            .contains("character varying(4)"),
        "{}",
        listed[0]["error"]
    );
    assert_eq!(
        pair["stats"]["total"], 2,
        "the date filter selects two months"
    );
    let count = |t: &'static str| {
        let target = &target;
        async move {
            copy_source::count_with_duplicates(target, t)
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(count("report_2023_01").await, 0, "outside the dates");
    assert_eq!(count("report_2023_03").await, 0, "rolled back");

    target
        .batch_execute("ALTER TABLE report_2023_03 ALTER state TYPE text")
        .await
        .unwrap();
    let before = ledger(&target).await;
    let out = run(&mut cutover(&inventory, &state, &from, to, &dates));
    assert!(!out.status.success(), "without --retry-errors");
    assert!(text(&out).contains("--retry-errors"), "{}", text(&out));
    let mut retry = dates.to_vec();
    retry.push("--retry-errors");
    let out = run(&mut cutover(&inventory, &state, &from, to, &retry));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count("report_2023_03").await, 1_500);
    let key = ("public.report_2023_02".to_string(), "all".to_string());
    assert_eq!(ledger(&target).await.get(&key), before.get(&key));

    // The table filter and a split: 3,000 rows in ranges of at most 1,000.
    let out = run(&mut cutover(
        &inventory,
        &state,
        &from,
        to,
        &["--table", "events", "--split-rows", "1000", "--jobs", "3"],
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count("events").await, 3_000);
    let parts: Vec<String> = ledger(&target)
        .await
        .keys()
        .filter(|(t, _)| t == "public.events")
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(parts, ["1/3", "2/3", "3/3"]);
    assert_eq!(count("report_2023_04").await, 0, "not named");

    // A mismatch injected on the target names the differing keys.
    target
        .batch_execute(
            "CREATE FUNCTION corrupt() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.id IN (17, 523) THEN NEW.amount := NEW.amount + 1; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER corrupt BEFORE INSERT ON report_2023_01 FOR EACH ROW EXECUTE FUNCTION corrupt()",
        )
        .await
        .unwrap();
    let out = run(&mut cutover(
        &inventory,
        &state,
        &from,
        to,
        &["--table", "report_2023_01"],
    ));
    assert!(!out.status.success(), "{}", text(&out));
    let errored = status_json(&inventory, &state, &["--errored"]);
    let pair = errored.as_object().unwrap().values().next().unwrap();
    let error = pair["tables"][0]["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("17 (differs)") && error.contains("523 (differs)"),
        "{error}"
    );
}

/// The error `copy status --errored` lists for `table`.
fn errored(inventory: &Path, state: &Path, table: &str) -> String {
    let status = status_json(inventory, state, &["--errored"]);
    let pair = status.as_object().unwrap().values().next().unwrap();
    pair["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .and_then(|t| t["error"].as_str())
        .unwrap_or_else(|| panic!("{table} is not errored: {pair}"))
        .to_string()
}

/// A mismatch found on the target after a commit (one row changed, one deleted, one extra)
/// names exactly those keys, found by bisecting the key span: for a single integer key and
/// for a composite text key (ordered by row comparison on the primary key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatch_names_exactly_the_differing_keys_by_bisection() {
    let lab = plain_lab(&SHAPE).await;
    let inventory = lab.config.inventory_path();
    let state = lab.config.dir.join("state");
    let from = format!("pg1/{SOURCE_DB}");
    let to = "pg2/copy_target";
    let source = copy_source::connect(lab.config.pg1_port, SOURCE_DB)
        .await
        .unwrap();
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();
    let ddl = "CREATE TABLE coded (region text, code text, n integer NOT NULL, PRIMARY KEY (region, code))";
    source
        .batch_execute(&format!(
            "{ddl}; INSERT INTO coded SELECT 'r' || (i % 7), 'c' || lpad(i::text, 5, '0'), i FROM generate_series(1, 2000) i"
        ))
        .await
        .unwrap();
    target.batch_execute(ddl).await.unwrap();
    let tables = ["--table", "report_2023_01", "--table", "coded"];
    let out = run(&mut cutover(&inventory, &state, &from, to, &tables));
    assert!(out.status.success(), "{}", text(&out));

    // Corrupt the committed copies, and forget their verification, as if the run had died
    // between the commit and the check: the next run verifies them again.
    target
        .batch_execute(
            "UPDATE report_2023_01 SET amount = amount + 1 WHERE id = 777; \
             DELETE FROM report_2023_01 WHERE id = 1201; \
             INSERT INTO report_2023_01 SELECT id + 100000, owner_id, created, amount, state, payload FROM report_2023_01 WHERE id = 5; \
             UPDATE coded SET n = -1 WHERE region = 'r3' AND code = 'c00843'; \
             DELETE FROM coded WHERE region = 'r0' AND code = 'c01421'; \
             INSERT INTO coded VALUES ('r6', 'zz', 1); \
             UPDATE cutover_copy_ledger SET verified_at = NULL",
        )
        .await
        .unwrap();
    let out = run(&mut cutover(
        &inventory,
        &state,
        &from,
        to,
        &[
            "--table",
            "report_2023_01",
            "--table",
            "coded",
            "--no-stop-on-error",
        ],
    ));
    assert!(!out.status.success(), "{}", text(&out));
    let error = errored(&inventory, &state, "public.report_2023_01");
    let keys = error.split("first differing keys: ").nth(1).unwrap_or("");
    assert_eq!(
        keys, "777 (differs), 1201 (missing on the target), 100005 (only on the target)",
        "{error}"
    );
    let error = errored(&inventory, &state, "public.coded");
    let keys = error.split("first differing keys: ").nth(1).unwrap_or("");
    assert_eq!(
        keys,
        "(r0,c01421) (missing on the target), (r3,c00843) (differs), (r6,zz) (only on the target)",
        "{error}"
    );
}

/// A monthly source table the target has no table for goes into the target's parent
/// partitioned by date; an earlier attempt's rows are deleted by period, never by TRUNCATE, so
/// the parent's other rows survive a re-copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_table_goes_into_the_targets_partitioned_parent() {
    let lab = plain_lab(&SHAPE).await;
    let inventory = lab.config.inventory_path();
    let state = lab.config.dir.join("state");
    let from = format!("pg1/{SOURCE_DB}");
    let to = "pg2/copy_target";
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();
    target
        .batch_execute(
            "DROP TABLE report_2023_01, report_2023_02; \
             CREATE TABLE report (id bigint NOT NULL, owner_id integer NOT NULL, created timestamptz NOT NULL, \
             amount numeric(12,2), state text NOT NULL, payload jsonb NOT NULL, PRIMARY KEY (id, created)) \
             PARTITION BY RANGE (created); \
             CREATE TABLE report_q1 PARTITION OF report FOR VALUES FROM ('2023-01-01') TO ('2023-04-01'); \
             INSERT INTO report VALUES (1, 1, '2023-03-05 00:00:00+00', 1, 'open', '{}')",
        )
        .await
        .unwrap();
    let dates = ["--start-date", "2023-01-01", "--end-date", "2023-03-01"];
    let out = run(&mut cutover(&inventory, &state, &from, to, &dates));
    assert!(out.status.success(), "{}", text(&out));
    let status = status_json(&inventory, &state, &[]);
    let pair = status.as_object().unwrap().values().next().unwrap();
    let targets: Vec<(&str, &str)> = pair["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["table"].as_str().unwrap(), t["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        targets,
        [
            ("public.report_2023_01", "public.report"),
            ("public.report_2023_02", "public.report")
        ]
    );
    let count = |sql: &'static str| {
        let target = &target;
        async move { target.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM report").await, 3_001);
    let parts: Vec<(String, String)> = ledger(&target).await.into_keys().collect();
    assert_eq!(
        parts,
        [
            (
                "public.report".to_string(),
                "public.report_2023_01:all".to_string()
            ),
            (
                "public.report".to_string(),
                "public.report_2023_02:all".to_string()
            ),
        ]
    );

    // Each ledger row names the source table it holds, not the parent it went into.
    let sources: Vec<(String, String)> = target
        .query(
            "SELECT part, source_table FROM cutover_copy_ledger ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        sources,
        [
            (
                "public.report_2023_01:all".to_string(),
                "public.report_2023_01".to_string()
            ),
            (
                "public.report_2023_02:all".to_string(),
                "public.report_2023_02".to_string()
            ),
        ]
    );

    // An attempt whose ledger row is lost (as if it never committed) copies January again:
    // its period is deleted first, February's rows and the March row stay.
    target
        .batch_execute("DELETE FROM cutover_copy_ledger WHERE part = 'public.report_2023_01:all'")
        .await
        .unwrap();
    let out = run(&mut cutover(&inventory, &state, &from, to, &dates));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count("SELECT count(*) FROM report").await, 3_001);
    assert_eq!(
        count("SELECT count(*) FROM (SELECT id, created FROM report GROUP BY 1, 2 HAVING count(*) > 1) d").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM report WHERE created >= '2023-03-01'").await,
        1,
        "the parent's other rows stay"
    );
}

/// A table marked frozen that is written while it is copied errors with a message saying so;
/// a live table written meanwhile is not checked this way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_frozen_table_during_its_copy_errors_it() {
    let lab = plain_lab(&SHAPE).await;
    let inventory = lab.config.inventory_path();
    let state = lab.config.dir.join("state");
    let from = format!("pg1/{SOURCE_DB}");
    let to = "pg2/copy_target";
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();
    // Slow the load down so that a write lands while the copy runs.
    target
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$; \
             CREATE TRIGGER slow BEFORE INSERT ON report_2023_01 FOR EACH ROW EXECUTE FUNCTION slow()",
        )
        .await
        .unwrap();
    let child = cutover(
        &inventory,
        &state,
        &from,
        to,
        &["--table", "report_2023_01", "--frozen-before", "2023-03-01"],
    )
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let running: i64 = target
            .query_one(
                "SELECT count(*)::bigint FROM pg_stat_progress_copy WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if running > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the copy never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        // A writer that exits at once, so that its counts are flushed.
        let writer = copy_source::connect(lab.config.pg1_port, SOURCE_DB)
            .await
            .unwrap();
        writer
            .batch_execute("UPDATE report_2023_01 SET amount = 0 WHERE id = 3")
            .await
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let error = errored(&inventory, &state, "public.report_2023_01");
    assert!(
        error.contains("is marked frozen") && error.contains("0 inserts, 1 updates, 0 deletes"),
        "{error}"
    );
}

/// A big frozen table without a single integer key is split by ctid block ranges: the target
/// is truncated once, each range appends with its ledger row, and the table is verified as a
/// whole; a kill right after a range's commit neither duplicates nor loses a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_table_without_an_integer_key_is_copied_in_ctid_ranges() {
    let lab = plain_lab(&SHAPE).await;
    let inventory = lab.config.inventory_path();
    let state = lab.config.dir.join("state");
    let from = format!("pg1/{SOURCE_DB}");
    let to = "pg2/copy_target";
    let source = copy_source::connect(lab.config.pg1_port, SOURCE_DB)
        .await
        .unwrap();
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();
    let ddl = "CREATE TABLE notes_2023_01 (code text PRIMARY KEY, body text NOT NULL)";
    source
        .batch_execute(&format!(
            "{ddl}; INSERT INTO notes_2023_01 SELECT 'n' || i, repeat(md5(i::text), 3) FROM generate_series(1, 6000) i; \
             ANALYZE notes_2023_01"
        ))
        .await
        .unwrap();
    target
        .batch_execute(&format!(
            "{ddl}; INSERT INTO notes_2023_01 VALUES ('left over', 'from before')"
        ))
        .await
        .unwrap();
    let args = [
        "--table",
        "notes_2023_01",
        "--frozen-before",
        "2024-01-01",
        "--split-rows",
        "2000",
        "--jobs",
        "1",
    ];
    let out = run(cutover(&inventory, &state, &from, to, &args)
        .env(KILL_AFTER_COMMIT_ENV, "public.notes_2023_01#2/3"));
    assert!(!out.status.success(), "{}", text(&out));
    let after_kill = ledger(&target).await;
    let second = ("public.notes_2023_01".to_string(), "2/3".to_string());
    assert!(after_kill.contains_key(&second), "{after_kill:?}");

    let out = run(&mut cutover(&inventory, &state, &from, to, &args));
    assert!(out.status.success(), "{}", text(&out));
    let end = ledger(&target).await;
    assert_eq!(
        end.get(&second),
        after_kill.get(&second),
        "not copied again"
    );
    let parts: Vec<&str> = end.keys().map(|(_, p)| p.as_str()).collect();
    assert_eq!(parts, ["1/3", "2/3", "3/3", "truncated"]);
    let sql = "SELECT count(*) || ' ' || count(DISTINCT code) || ' ' || sum(hashtextextended(t::text, 0)) FROM notes_2023_01 t";
    let one = |row: tokio_postgres::Row| row.get::<_, String>(0);
    assert_eq!(
        one(target.query_one(sql, &[]).await.unwrap()),
        one(source.query_one(sql, &[]).await.unwrap())
    );
    let status = status_json(&inventory, &state, &["--migrated"]);
    let pair = status.as_object().unwrap().values().next().unwrap();
    assert_eq!(pair["tables"][0]["table"], "public.notes_2023_01", "{pair}");
}

/// No servers: the plan's steps are typed, the tables named with `--table` are shown with
/// their exact SQL, and the policy flags leave the fingerprint alone (a resumed run may add
/// `--retry-errors`) while the selection changes it.
#[test]
fn plan_is_typed_and_its_fingerprint_covers_the_selection_not_the_policy() {
    use cutover::runbooks::{table_copy::TableCopy, Runbook, StepKind};
    let lab = concat!(env!("CARGO_MANIFEST_DIR"), "/inventories/lab.yaml");
    let inventory = cutover::inventory::load(Path::new(lab)).unwrap();
    let params = |extra: &[(&str, &str)]| {
        let mut map = BTreeMap::from([
            ("from".to_string(), "pg1/reporting_src".to_string()),
            ("to".to_string(), "pg2/copy_target".to_string()),
        ]);
        for (k, v) in extra {
            map.insert(k.to_string(), v.to_string());
        }
        cutover::session::plan(&inventory, "table-copy", &map).unwrap()
    };
    let plan = params(&[("table", "report_2023_01")]);
    for step in &plan.steps {
        let kind = <TableCopy as Runbook>::Step::of(step).unwrap();
        assert_eq!(kind.id(), step.id);
    }
    let markdown = plan.to_markdown();
    assert!(
        markdown.contains("TRUNCATE \"public\".\"report_2023_01\""),
        "{markdown}"
    );
    let base = plan.fingerprint();
    let policy = params(&[
        ("table", "report_2023_01"),
        ("jobs", "4"),
        ("retry-errors", "yes"),
        ("no-stop-on-error", "yes"),
    ]);
    assert_eq!(policy.fingerprint(), base);
    assert_ne!(params(&[("table", "report_2023_02")]).fingerprint(), base);
    assert_ne!(
        params(&[("table", "report_2023_01"), ("start-date", "2023-01-01")]).fingerprint(),
        base
    );

    // An explicit mapping is part of the plan: its SQL goes into the mapped target, and the
    // fingerprint covers it.
    let mapped = params(&[
        ("table", "report_2023_01"),
        ("map", "report_2023_01=archive.report"),
    ]);
    let markdown = mapped.to_markdown();
    assert!(
        markdown.contains("TRUNCATE \"archive\".\"report\"")
            && markdown.contains("public.report_2023_01 into archive.report"),
        "{markdown}"
    );
    assert_ne!(mapped.fingerprint(), base);
    assert_eq!(
        mapped.params.get("map").map(String::as_str),
        Some("public.report_2023_01=archive.report")
    );
    // Bad mappings are refused when the plan is made, naming the entry.
    let refused = |map: &str| {
        let params = BTreeMap::from([
            ("from".to_string(), "pg1/reporting_src".to_string()),
            ("to".to_string(), "pg2/copy_target".to_string()),
            ("table".to_string(), "report_2023_01".to_string()),
            ("map".to_string(), map.to_string()),
        ]);
        cutover::session::plan(&inventory, "table-copy", &params)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let unknown = refused("report_2023_02=archive.report");
    assert!(
        unknown.contains("report_2023_02")
            && unknown.contains("not among the tables --table selects"),
        "{unknown}"
    );
    assert!(refused("report_2023_01").contains("expected SOURCE=TARGET"));
    assert!(refused("report_2023_01=report_2023_01").contains("onto itself"));
    assert!(refused("report_2023_01=a,report_2023_01=b").contains("already mapped to public.a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_map_copies_a_table_into_the_named_target() {
    let lab = plain_lab(&SHAPE).await;
    let inventory = lab.config.inventory_path();
    let state = lab.config.dir.join("state");
    let from = format!("pg1/{SOURCE_DB}");
    let to = "pg2/copy_target";
    let target = copy_source::connect(lab.config.pg2_port, "copy_target")
        .await
        .unwrap();
    target
        .batch_execute(
            "CREATE SCHEMA archive;              CREATE TABLE archive.report (LIKE public.report_2023_01 INCLUDING ALL)",
        )
        .await
        .unwrap();

    // A mapping to a target table that does not exist: the preflight says which.
    let missing = [
        "--table",
        "report_2023_01",
        "--map",
        "report_2023_01=archive.nowhere",
    ];
    let out = run(&mut cutover(&inventory, &state, &from, to, &missing));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "--map public.report_2023_01=archive.nowhere: target table archive.nowhere does not exist"
        ),
        "{}",
        text(&out)
    );
    // A mapped source that does not exist on the source (no --table: the whole database).
    let other_state = lab.config.dir.join("state-2");
    let ghost = ["--map", "report_1999_01=archive.report"];
    let out = run(&mut cutover(&inventory, &other_state, &from, to, &ghost));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("source table public.report_1999_01 does not exist"),
        "{}",
        text(&out)
    );

    let state = lab.config.dir.join("state-3");
    let mapped = [
        "--table",
        "report_2023_01",
        "--table",
        "report_2023_02",
        "--map",
        "report_2023_01=archive.report",
    ];
    let out = run(&mut cutover(&inventory, &state, &from, to, &mapped));
    assert!(out.status.success(), "{}", text(&out));
    let count = |sql: &'static str| {
        let target = &target;
        async move { target.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM archive.report").await,
        SHAPE.rows_per_month as i64
    );
    assert_eq!(count("SELECT count(*) FROM public.report_2023_01").await, 0);
    assert_eq!(
        count("SELECT count(*) FROM public.report_2023_02").await,
        SHAPE.rows_per_month as i64
    );
    let source = copy_source::connect(lab.config.pg1_port, SOURCE_DB)
        .await
        .unwrap();
    assert_eq!(
        rows(&source, "public.report_2023_01").await,
        rows(&target, "archive.report").await
    );
    let ledger: Vec<(String, String, String)> = target
        .query(
            "SELECT target_table, part, source_table FROM cutover_copy_ledger ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        ledger,
        [
            (
                "archive.report".to_string(),
                "all".to_string(),
                "public.report_2023_01".to_string()
            ),
            (
                "public.report_2023_02".to_string(),
                "all".to_string(),
                "public.report_2023_02".to_string()
            ),
        ]
    );
    let status = status_json(&inventory, &state, &[]);
    let pair = status.as_object().unwrap().values().next().unwrap();
    let targets: Vec<(&str, &str, &str)> = pair["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap(),
                t["target"].as_str().unwrap(),
                t["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        targets.contains(&("public.report_2023_01", "archive.report", "verified")),
        "{targets:?}"
    );
}
