//! The major upgrade from the lab, as README tells it: `cutover lab up --with-target 18`, then
//! `cutover run INV major-upgrade --from pg1 --to pg1new --method dumpall --yes`. pg1 holds the
//! PL/Proxy database, so this needs PL/Proxy for PostgreSQL 18 (`scripts/bootstrap`); after
//! the run, application calls through pgbouncer route through pg1new. `--yes` stops before
//! `retire-old-cluster`, which removes the way back: pg1's data directory stays, and asking for
//! the step by name is refused until the plan's soak has passed.

use cutover::lab::{self, proc::free_port, LabConfig, TargetConfig};
use cutover::pg::{self, Endpoint, SessionSettings};
use std::process::Command;

/// Stops the lab's servers (by PID) and removes its directory, however the test ends.
struct LabDown(std::path::PathBuf);

impl Drop for LabDown {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.0) {
            eprintln!("lab down {}: {e}", self.0.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_upgrades_pg1_to_18_and_the_proxy_routes_through_pg1new() {
    let dir = std::env::temp_dir().join(format!(
        "cutover-test-upgrade-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let _down = LabDown(dir.clone());
    let config = LabConfig::on_free_ports(&dir, 2_000).unwrap();
    let target_port = free_port().unwrap();
    let report = lab::up_with_target(
        &config,
        Some(TargetConfig {
            version: 18,
            port: target_port,
        }),
    )
    .await
    .unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("run")
        .arg(&report.inventory)
        .args([
            "major-upgrade",
            "--from",
            "pg1",
            "--to",
            "pg1new",
            "--method",
            "dumpall",
            "--yes",
        ])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the upgrade from the lab completes:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("stopped before `retire-old-cluster`"),
        "--yes holds before the step that removes the way back:\n{stdout}"
    );
    let old_data = dir.join("pg1");
    assert!(
        old_data.join("PG_VERSION").exists(),
        "the old cluster's data directory is intact"
    );
    let retire = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("run")
        .arg(&report.inventory)
        .args(["major-upgrade", "--yes", "--step", "retire-old-cluster"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&retire.stderr);
    assert!(!retire.status.success(), "refused during the soak");
    assert!(
        stderr.contains("removes the way back") && stderr.contains("1800 s"),
        "says what it deletes and why it waits:\n{stderr}"
    );
    assert!(
        old_data.join("PG_VERSION").exists(),
        "still intact after the refused retire"
    );

    // An application call through the entry alias lands on pg1new (PostgreSQL 18).
    let inventory = cutover::inventory::load(&report.inventory).unwrap();
    let entry = lab::load::entry_endpoint(&inventory).unwrap();
    let app = pg::connect(&entry, SessionSettings::PGBOUNCER)
        .await
        .unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    pg::simple_rows(
        &app,
        "proxy",
        &format!("SELECT insert_form('{id}'::uuid, 'after-upgrade', '{{}}'::jsonb)"),
    )
    .await
    .unwrap();
    let pg1new = pg::connect(
        &Endpoint {
            address: "127.0.0.1".into(),
            port: target_port,
            user: "postgres".into(),
            dbname: lab::P1_DB.into(),
            tls: Default::default(),
        },
        SessionSettings::EXECUTOR,
    )
    .await
    .unwrap();
    let row = pg1new
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000, \
             (SELECT count(*) FROM forms WHERE form_id = $1::text::uuid)",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 18);
    assert_eq!(
        row.get::<_, i64>(1),
        1,
        "the call routed through the proxy on pg1new"
    );
    assert!(
        !lab::proc::port_open(config.pg1_port),
        "pg1 no longer serves: the old cluster is stopped"
    );
}
