//! Shared test helpers: real labs and direct SQL against them.
#![allow(dead_code)]

pub mod tmux;

use cutover::lab::proc::{run_checked, service_command};
use cutover::lab::{TestLab, PG15_BIN};
use cutover::pg::{self, Endpoint, SessionSettings};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

pub async fn lab(docs: u64) -> TestLab {
    TestLab::start(docs).await.expect("lab up")
}

pub fn endpoint(port: u16, dbname: &str) -> Endpoint {
    Endpoint {
        address: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        dbname: dbname.into(),
        tls: Default::default(),
    }
}

pub async fn connect(port: u16, dbname: &str) -> Client {
    pg::connect(&endpoint(port, dbname), SessionSettings::MONITOR)
        .await
        .expect("connect")
}

/// Make pg2 a streaming standby of pg1 with a slot, the way an operator would by hand.
pub fn start_standby(lab: &TestLab, slot: &str) {
    let c = &lab.config;
    let pg2 = c.dir.join("pg2");
    run_checked(
        service_command(format!("{PG15_BIN}/pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &c.pg1_port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(&pg2)
            .args(["-R", "-C", "-S", slot, "-X", "stream", "-c", "fast"]),
    )
    .expect("pg_basebackup");
    std::fs::write(
        pg2.join("postgresql.auto.conf"),
        format!(
            "{}\nport = {}\ncluster_name = 'pg2'\n",
            std::fs::read_to_string(pg2.join("postgresql.auto.conf")).unwrap_or_default(),
            c.pg2_port
        ),
    )
    .unwrap();
    run_checked(
        service_command(format!("{PG15_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&pg2)
            .arg("-l")
            .arg(c.dir.join("pg2.log"))
            .args(["-w", "start"]),
    )
    .expect("start standby");
}

pub fn stop_node(lab: &TestLab, node: &str) {
    run_checked(
        service_command(format!("{PG15_BIN}/pg_ctl"))
            .arg("-D")
            .arg(lab.config.dir.join(node))
            .args(["-m", "fast", "-w", "stop"]),
    )
    .expect("stop node");
}

/// Poll `check` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = check().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

use cutover::engine::{Confirmation, Oversight};
use cutover::executor::Runner;
use cutover::plan::StepId;
use cutover::runbooks::shard_split::effects::ShardSplitActions;
use cutover::session::{self, Invocation};
use std::collections::BTreeMap;
use std::path::Path;

pub fn split_params() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("from".to_string(), "p1".to_string()),
        ("to".to_string(), "p2".to_string()),
        ("node".to_string(), "pg2".to_string()),
        ("shards".to_string(), "512-1023".to_string()),
    ])
}

pub fn split_invocation(lab: &TestLab, state_dir: &Path) -> Invocation {
    Invocation {
        inventory_path: lab.config.inventory_path(),
        runbook: "shard-split".into(),
        params: split_params(),
        state_dir: Some(state_dir.to_path_buf()),
        oversight: Oversight::Solo,
        trust_on_first_use: false,
        expect_fingerprint: None,
    }
}

pub fn open_split(lab: &TestLab, state_dir: &Path) -> Runner<ShardSplitActions> {
    session::open_as::<cutover::runbooks::shard_split::ShardSplit>(&split_invocation(
        lab, state_dir,
    ))
    .expect("open shard-split run")
}

/// Start `step` with a headless confirmation built from current readings.
pub async fn start_step(
    runner: &mut Runner<ShardSplitActions>,
    step: &str,
) -> Result<(), cutover::executor::RunError> {
    let id = StepId::new(step);
    let requirement = runner.requirement(&id).await?;
    runner
        .start(&id, Some(Confirmation::headless("test", &requirement)))
        .await
}

/// Run steps headless until `step` is next (it is not started).
pub async fn run_until(runner: &mut Runner<ShardSplitActions>, step: &str) {
    while let Some(next) = runner
        .state
        .next_step(&runner.plan)
        .map(|s| s.id.to_string())
    {
        if next == step {
            return;
        }
        start_step(runner, &next)
            .await
            .unwrap_or_else(|e| panic!("step {next}: {e}"));
    }
    panic!("the run ended before {step}");
}

/// Rows of `forms` on a node's database, or None when the database is absent.
pub async fn form_count(port: u16, dbname: &str) -> i64 {
    connect(port, dbname)
        .await
        .query_one("SELECT count(*) FROM forms", &[])
        .await
        .unwrap()
        .get(0)
}

/// A form id whose shard (hashtext & 1023) falls in `range`.
pub async fn form_id_in_shards(client: &Client, range: std::ops::RangeInclusive<i32>) -> String {
    client
        .query_one(
            "SELECT id::text FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, 1000)) x \
             WHERE (hashtext(id::text) & 1023) BETWEEN $1 AND $2 LIMIT 1",
            &[range.start(), range.end()],
        )
        .await
        .unwrap()
        .get(0)
}

/// plproxy's routing: shard → dbname.
pub async fn plproxy_routes(port: u16) -> BTreeMap<u32, String> {
    let client = connect(port, "commcarehq_proxy").await;
    client
        .query(
            "SELECT unnest(srvoptions) FROM pg_foreign_server WHERE srvname = 'commcarehq'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .filter_map(|r| {
            let option: String = r.get(0);
            let (name, conn) = option.split_once('=')?;
            let shard = name.strip_prefix('p')?.parse().ok()?;
            let db = conn
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("dbname="))?;
            Some((shard, db.to_string()))
        })
        .collect()
}

/// The lab as `lab up` left it: traffic to pg1 only, pg2 stopped and empty, no slot,
/// original pgbouncer.ini, inventory and plproxy routing.
pub async fn assert_lab_at_start(lab: &TestLab, original_ini: &str, original_inventory: &str) {
    let c = &lab.config;
    assert!(!cutover::lab::proc::port_open(c.pg2_port), "pg2 is stopped");
    let pg2_files: Vec<_> = std::fs::read_dir(c.dir.join("pg2")).unwrap().collect();
    assert!(pg2_files.is_empty(), "pg2's data directory is empty");
    let pg1 = connect(c.pg1_port, "postgres").await;
    let slots: i64 = pg1
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no replication slot is left");
    assert_eq!(
        std::fs::read_to_string(lab.config.pgbouncer_ini()).unwrap(),
        original_ini
    );
    assert_eq!(
        std::fs::read_to_string(lab.config.inventory_path()).unwrap(),
        original_inventory
    );
    let routes = plproxy_routes(c.pg1_port).await;
    assert_eq!(routes.len(), 1024);
    assert!(
        routes.values().all(|db| db == "commcarehq_p1"),
        "plproxy routes everything to p1"
    );
    // Traffic flows to pg1 through pgbouncer and plproxy.
    let proxy = cutover::pg::connect(
        &cutover::lab::load::entry_endpoint(&lab.inventory).unwrap(),
        cutover::pg::SessionSettings::PGBOUNCER,
    )
    .await
    .unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    proxy
        .simple_query(&format!(
            "SELECT insert_form('{id}'::uuid, 'check', '{{}}'::jsonb)"
        ))
        .await
        .expect("a call through the entry alias works");
    let found: i64 = pg1_forms(lab)
        .await
        .query_one(
            "SELECT count(*) FROM forms WHERE form_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, 1, "the call landed on pg1");
}

pub async fn pg1_forms(lab: &TestLab) -> Client {
    connect(lab.config.pg1_port, "commcarehq_p1").await
}

/// Aliases pgbouncer reports paused right now.
pub async fn paused_aliases(lab: &TestLab) -> Vec<String> {
    let admin = cutover::pg::connect(
        &cutover::pg::Endpoint::pgbouncer_admin(&lab.inventory.pgbouncers[0]),
        cutover::pg::SessionSettings::PGBOUNCER,
    )
    .await
    .unwrap();
    cutover::readings::queries::pgbouncer(&admin, "pgbouncer")
        .await
        .unwrap()
        .databases
        .into_iter()
        .filter(|d| d.paused)
        .map(|d| d.name)
        .collect()
}
