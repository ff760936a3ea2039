//! The `citus-bootstrap` runbook against a real Citus cluster on loopback (a coordinator and
//! two workers, PostgreSQL 15 with Citus 13): from nothing to a healthy cluster whose tables
//! are distributed as the inventory says, a `kill -9` mid-run that the next run converges
//! from, a rollback to nothing, and the preflight refusing what Citus would refuse.

use cutover::engine::{EntryKind, Oversight};
use cutover::inventory::{CitusTable, Distribution, Inventory};
use cutover::journal::Journal;
use cutover::lab::citus::{CitusLab, CLUSTER, DATABASE};
use cutover::lab::P1_DB;
use cutover::session::{self, Invocation};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Bootstrap = cutover::runbooks::citus_bootstrap::CitusBootstrap;

async fn lab() -> CitusLab {
    CitusLab::start(2_000, 15)
        .await
        .expect("lab with a Citus cluster")
}

/// Rewrite the lab inventory with `edit` applied (tables, workers, ...).
fn edit_inventory(lab: &CitusLab, edit: impl FnOnce(&mut Inventory)) {
    let mut inventory = lab.inventory.clone();
    edit(&mut inventory);
    std::fs::write(
        lab.inventory_path(),
        cutover::inventory::to_yaml(&inventory).unwrap(),
    )
    .unwrap();
}

fn table(
    name: &str,
    distribution: Distribution,
    column: Option<&str>,
    with: Option<&str>,
) -> CitusTable {
    CitusTable {
        table: name.into(),
        distribution,
        column: column.map(String::from),
        colocate_with: with.map(String::from),
    }
}

fn invocation(lab: &CitusLab, state: &Path, extra: &[(&str, &str)]) -> Invocation {
    let mut invocation =
        cutover::runbooks::citus_bootstrap::rehearse::lab_invocation(lab, state.to_path_buf());
    for (k, v) in extra {
        invocation.params.insert(k.to_string(), v.to_string());
    }
    invocation.oversight = Oversight::Solo;
    invocation
}

fn bootstrap_command(lab: &CitusLab, state: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cutover"));
    command
        .arg("run")
        .arg(lab.inventory_path())
        .args(["citus-bootstrap", "--cluster", CLUSTER, "--schema-from"])
        .arg(format!("pg1/{P1_DB}"))
        .args(["--yes", "--state-dir"])
        .arg(state);
    command
}

/// A small reference table on the source, for the bootstrap to create and replicate.
async fn add_reference_source(lab: &CitusLab) {
    let p1 = cutover::pg::connect(
        &cutover::pg::Endpoint {
            address: "127.0.0.1".into(),
            port: lab.config.pg1_port,
            user: "postgres".into(),
            dbname: P1_DB.into(),
            tls: Default::default(),
        },
        cutover::pg::SessionSettings::EXECUTOR,
    )
    .await
    .unwrap();
    p1.batch_execute("CREATE TABLE domains (name text PRIMARY KEY, tier text NOT NULL)")
        .await
        .unwrap();
}

async fn databases_on(lab: &CitusLab) -> Vec<bool> {
    let mut present = Vec::new();
    for port in lab.citus.ports {
        let client = cutover::pg::connect(
            &cutover::pg::Endpoint {
                address: "127.0.0.1".into(),
                port,
                user: "postgres".into(),
                dbname: "postgres".into(),
                tls: Default::default(),
            },
            cutover::pg::SessionSettings::EXECUTOR,
        )
        .await
        .unwrap();
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&DATABASE],
            )
            .await
            .unwrap()
            .get(0);
        present.push(n == 1);
    }
    present
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_from_nothing_distributes_and_rows_land_on_both_workers() {
    let lab = lab().await;
    add_reference_source(&lab).await;
    edit_inventory(&lab, |inv| {
        inv.citus[0].tables = vec![
            table("forms", Distribution::Distributed, Some("form_id"), None),
            table(
                "cases",
                Distribution::Distributed,
                Some("case_id"),
                Some("forms"),
            ),
            table("domains", Distribution::Reference, None, None),
        ];
    });
    let state = tempfile::tempdir().unwrap();
    let mut runner = session::open_as::<Bootstrap>(&invocation(&lab, state.path(), &[])).unwrap();
    runner
        .run_headless("tester")
        .await
        .expect("the bootstrap completes");

    let client = lab.coordinator(DATABASE).await.unwrap();
    let kinds: BTreeMap<String, String> = client
        .query(
            "SELECT table_name::text, citus_table_type FROM citus_tables",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(kinds["forms"], "distributed");
    assert_eq!(kinds["cases"], "distributed");
    assert_eq!(kinds["domains"], "reference");
    let colocated: i64 = client
        .query_one(
            "SELECT count(DISTINCT colocation_id) FROM citus_tables WHERE table_name::text IN ('forms', 'cases')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(colocated, 1, "cases follows forms' shards");
    let unhealthy: i64 = client
        .query_one(
            "SELECT count(*) FROM citus_check_cluster_node_health() WHERE NOT result",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unhealthy, 0);

    client
        .batch_execute(
            "INSERT INTO forms (form_id, domain, payload) \
             SELECT gen_random_uuid(), 'd', '{}' FROM generate_series(1, 100000)",
        )
        .await
        .unwrap();
    let per_worker: Vec<(i32, i64)> = client
        .query(
            "SELECT nodeport, sum(result::int8)::int8 FROM run_command_on_placements('forms', 'SELECT count(*) FROM %s') GROUP BY nodeport ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut worker_ports = vec![i32::from(lab.citus.ports[1]), i32::from(lab.citus.ports[2])];
    worker_ports.sort();
    assert_eq!(
        per_worker.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        worker_ports
    );
    assert_eq!(per_worker.iter().map(|(_, n)| n).sum::<i64>(), 100_000);
    for (port, rows) in &per_worker {
        assert!(
            *rows > 40_000,
            "worker :{port} holds {rows} of 100000 rows: the spread is even"
        );
    }
    // The readings see the same spread: estimates at 1 Hz, exact counts on the slow cadence.
    client.batch_execute("ANALYZE forms").await.unwrap();
    let inventory = cutover::inventory::load(&lab.inventory_path()).unwrap();
    let snapshot = cutover::readings::queries::snapshot(&inventory).await;
    let citus = snapshot.citus[0]
        .value()
        .unwrap_or_else(|| panic!("the Citus reading: {:?}", snapshot.citus[0].error()));
    assert!(citus.installed);
    assert_eq!(
        citus
            .nodes
            .iter()
            .filter(|n| n.role == "worker" && n.active)
            .map(|n| n.node.as_str())
            .collect::<Vec<_>>(),
        ["citus1", "citus2"]
    );
    let estimated: i64 = citus
        .placements
        .iter()
        .filter(|p| p.table == "forms")
        .map(|p| p.rows_estimate)
        .sum();
    assert!(
        (90_000..=110_000).contains(&estimated),
        "estimate {estimated}"
    );
    let counts = snapshot.citus_counts[0].value().expect("the exact counts");
    let exact: BTreeMap<&str, i64> = counts
        .rows
        .iter()
        .filter(|r| r.table == "forms")
        .map(|r| (r.node.as_str(), r.rows))
        .collect();
    assert_eq!(exact.values().sum::<i64>(), 100_000);
    assert_eq!(exact.len(), 2, "{exact:?}");
    assert!(counts.unhealthy.is_empty());
    eprintln!(
        "citus reading {:.1} ms, exact counts {:.1} ms",
        snapshot.citus[0].took_ms, snapshot.citus_counts[0].took_ms
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("status")
        .arg(lab.inventory_path())
        .arg("--json")
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["citus"][0]["source"], "citus");
    assert_eq!(status["citus"][0]["ok"]["installed"], true);

    client
        .batch_execute("INSERT INTO domains VALUES ('a', 'free'), ('b', 'pro')")
        .await
        .unwrap();
    let replicated: i64 = client
        .query_one(
            "SELECT count(*) FROM run_command_on_placements('domains', 'SELECT count(*) FROM %s') WHERE result = '2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(replicated >= 2, "the reference table is on every worker");
}

/// Wait for `kind` of `step` in the run's journal, then SIGKILL the driver.
fn kill_at(child: &mut std::process::Child, state: &Path, step: &str, kind: EntryKind) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let log = std::fs::read_to_string(state.join("driver.log")).unwrap_or_default();
            panic!("the run ended before {step} {kind:?}:\n{log}");
        }
        if let Ok(journal) = Journal::open(state) {
            if let Some(run) = journal.runs().ok().and_then(|r| r.into_iter().next()) {
                let reached = journal
                    .entries(&run.run_id)
                    .unwrap_or_default()
                    .iter()
                    .any(|e| e.kind == kind && e.step.as_ref().is_some_and(|s| s.as_str() == step));
                if reached {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("{step} {kind:?} never appeared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bootstrap_converges_and_rolls_back_to_nothing() {
    let lab = lab().await;
    let state = tempfile::tempdir().unwrap();
    for (step, kind) in [
        ("create-database", EntryKind::Started),
        ("add-workers", EntryKind::Started),
        ("distribute", EntryKind::Started),
    ] {
        let log = std::fs::File::create(state.path().join("driver.log")).unwrap();
        let mut child = bootstrap_command(&lab, state.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        kill_at(&mut child, state.path(), step, kind);
    }
    let out = bootstrap_command(&lab, state.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = Journal::open(state.path()).unwrap().runs().unwrap();
    assert_eq!(runs.len(), 1, "every kill resumed the same run");
    let client = lab.coordinator(DATABASE).await.unwrap();
    let forms: String = client
        .query_one(
            "SELECT citus_table_type FROM citus_tables WHERE table_name = 'forms'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(forms, "distributed");
    let workers: i64 = client
        .query_one("SELECT count(*) FROM pg_dist_node WHERE groupid > 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(workers, 2, "each worker added once");
    drop(client);
    assert_eq!(databases_on(&lab).await, [true, true, true]);

    // The completed run is finished: roll back a new run's work instead, to nothing.
    let state = tempfile::tempdir().unwrap();
    let fresh = lab_fresh(&lab).await;
    let mut child = bootstrap_command(fresh, state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_at(
        &mut child,
        state.path(),
        "verify-distribution",
        EntryKind::Started,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("rollback")
        .arg(fresh.inventory_path())
        .args(["citus-bootstrap", "--back-to", "preflight", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        databases_on(fresh).await,
        [false, false, false],
        "the rollback dropped what the run created"
    );
}

/// The same lab after dropping the bootstrap's database everywhere: as if never set up.
async fn lab_fresh(lab: &CitusLab) -> &CitusLab {
    for port in lab.citus.ports {
        let client = cutover::pg::connect(
            &cutover::pg::Endpoint {
                address: "127.0.0.1".into(),
                port,
                user: "postgres".into(),
                dbname: "postgres".into(),
                tls: Default::default(),
            },
            cutover::pg::SessionSettings::EXECUTOR,
        )
        .await
        .unwrap();
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
            .await
            .unwrap();
    }
    lab
}

/// Why a run refuses at preflight: the first precondition that does not hold, with its reading.
async fn refused(lab: &CitusLab, extra: &[(&str, &str)]) -> String {
    let state = tempfile::tempdir().unwrap();
    let mut runner = session::open_as::<Bootstrap>(&invocation(lab, state.path(), extra)).unwrap();
    let error = runner
        .run_headless("tester")
        .await
        .expect_err("preflight refuses")
        .to_string();
    assert!(error.contains("step `preflight` refused"), "{error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_what_citus_would_refuse() {
    let lab = lab().await;
    // A primary key without the distribution column.
    edit_inventory(&lab, |inv| {
        inv.citus[0].tables = vec![table(
            "forms",
            Distribution::Distributed,
            Some("domain"),
            None,
        )];
    });
    let reason = refused(&lab, &[]).await;
    assert!(
        reason.contains("`tables-distributable`")
            && reason.contains("forms_pkey")
            && reason.contains("does not include the distribution column domain"),
        "{reason}"
    );

    // A worker without citus preloaded, then a worker of another major version.
    edit_inventory(&lab, |inv| {
        inv.citus[0].workers[1] = "pg1".into();
    });
    let reason = refused(&lab, &[]).await;
    assert!(
        reason.contains("`citus-preloaded`")
            && reason.contains("pg1 (shared_preload_libraries")
            && reason.contains("--allow-restart"),
        "{reason}"
    );

    let port = cutover::lab::proc::free_port().unwrap();
    cutover::lab::target::up_target(&lab.config, 18, port)
        .await
        .unwrap();
    let bin = cutover::lab::target::bin_dir(18).unwrap();
    edit_inventory(&lab, |inv| {
        inv.nodes.push(cutover::lab::target::lab_node(
            &lab.config.dir,
            "pg1new",
            port,
            18,
            &bin,
        ));
        inv.citus[0].workers[1] = "pg1new".into();
    });
    let reason = refused(&lab, &[]).await;
    assert!(
        reason.contains("`same-version`")
            && reason.contains("PostgreSQL majors differ")
            && reason.contains("pg1new 18"),
        "{reason}"
    );
}
