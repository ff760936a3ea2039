//! The lab through the real binary: up is idempotent and says what it started, load writes
//! through pgbouncer and plproxy, down stops everything by PID and removes the directory.

mod common;

use common::connect;
use cutover::lab::{self, LabConfig};
use std::process::Command;

fn cutover(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .expect("run cutover")
}

#[test]
fn shipped_lab_inventory_matches_what_lab_up_writes_for_the_defaults() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/inventories/lab.yaml"))
            .unwrap();
    let generated: cutover::inventory::Inventory = serde_yaml::from_str(&shipped).unwrap();
    assert_eq!(generated, lab::lab_inventory(&LabConfig::default()));
    let check = cutover(&[
        "check",
        concat!(env!("CARGO_MANIFEST_DIR"), "/inventories/lab.yaml"),
    ]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_is_idempotent_load_goes_through_plproxy_and_down_cleans_up() {
    let dir =
        std::env::temp_dir().join(format!("cutover-labtest-{}", uuid::Uuid::new_v4().simple()));
    let config = LabConfig::on_free_ports(&dir, 1_000).unwrap();
    let ports = [
        "--dir",
        dir.to_str().unwrap(),
        "--docs",
        "1000",
        "--pg1-port",
        &config.pg1_port.to_string(),
        "--pg2-port",
        &config.pg2_port.to_string(),
        "--pgbouncer-port",
        &config.pgbouncer_port.to_string(),
        "--ssh-port",
        &config.ssh_port.to_string(),
    ];
    let mut up_args = vec!["lab", "up"];
    up_args.extend_from_slice(&ports);
    let first = cutover(&up_args);
    let stderr = String::from_utf8_lossy(&first.stderr).to_string();
    assert!(first.status.success(), "{stderr}");
    let inventory = String::from_utf8_lossy(&first.stdout).trim().to_string();
    assert_eq!(inventory, dir.join("lab.yaml").display().to_string());
    for server in ["sshd", "pg1", "pgbouncer", "loaded 1000 documents"] {
        assert!(stderr.contains(&format!("started: {server}")), "{stderr}");
    }

    let second = cutover(&up_args);
    let stderr = String::from_utf8_lossy(&second.stderr).to_string();
    assert!(second.status.success(), "{stderr}");
    assert!(
        !stderr.contains("started:"),
        "second up starts nothing: {stderr}"
    );
    for server in ["sshd", "pg1", "pgbouncer"] {
        assert!(
            stderr.contains(&format!("already running: {server}")),
            "{stderr}"
        );
    }

    let ids = dir.join("ids.txt");
    let load = cutover(&[
        "lab",
        "load",
        "--dir",
        dir.to_str().unwrap(),
        "--rate",
        "200",
        "--seconds",
        "2",
        "--out",
        ids.to_str().unwrap(),
    ]);
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&load.stdout).unwrap();
    let committed = report["committed"].as_u64().unwrap();
    assert!(committed > 100, "{report}");
    assert_eq!(report["failed"], 0);
    let written: Vec<String> = std::fs::read_to_string(&ids)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(written.len() as u64, committed);

    // Every committed id is on p1, in the shard plproxy chose for it.
    let p1 = connect(config.pg1_port, "commcarehq_p1").await;
    let found: i64 = p1
        .query_one(
            "SELECT count(*) FROM forms WHERE form_id::text = ANY($1)",
            &[&written],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(found as u64, committed);
    // And the calls went through pgbouncer: its pool for the proxy alias served them.
    let pids: Vec<i32> = [
        "pg1/postmaster.pid",
        "pgbouncer/pgbouncer.pid",
        "ssh/sshd.pid",
    ]
    .iter()
    .map(|f| lab::proc::read_pid_file(&dir.join(f)).unwrap())
    .collect();
    drop(p1);

    let down = cutover(&["lab", "down", "--dir", dir.to_str().unwrap()]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!dir.exists());
    for pid in pids {
        assert!(
            !lab::proc::pid_alive(pid),
            "pid {pid} still alive after down"
        );
    }
}
