//! Shared test helpers: real labs and direct SQL against them.
#![allow(dead_code)]

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
            .args(["-h", "127.0.0.1", "-p", &c.pg1_port.to_string(), "-U", "postgres"])
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
