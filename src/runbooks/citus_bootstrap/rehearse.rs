//! Rehearsal of the Citus bootstrap (`cutover lab rehearse citus-bootstrap`): a fresh lab with
//! an empty Citus cluster, the runbook headless from nothing to a distributed `forms`, then
//! rows inserted through the coordinator and counted per worker.

use crate::engine::Oversight;
use crate::lab::citus::{CitusLab, CLUSTER, DATABASE};
use crate::lab::{LabError, P1_DB};
use crate::session::{self, Invocation};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// `cutover lab rehearse citus-bootstrap ...`
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapRehearsalOptions {
    /// PostgreSQL major of the cluster: 15 (Citus 13) or 18 (Citus 14).
    #[arg(long, default_value_t = 15)]
    pub version: u32,
    /// Rows inserted through the coordinator once the cluster is up.
    #[arg(long, default_value_t = 100_000)]
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootstrapRehearsal {
    pub version: u32,
    pub lab_start_s: f64,
    pub bootstrap_s: f64,
    pub insert_s: f64,
    pub rows: u64,
    /// Rows per worker (`nodename:port`), counted exactly through Citus.
    pub rows_per_worker: BTreeMap<String, i64>,
    /// Median of 10 fast Citus readings (nodes, shards, bytes, estimates) on one connection.
    pub reading_ms: f64,
    /// Median of 5 slow readings (exact counts per table and node, node health).
    pub counts_ms: f64,
    pub error: Option<String>,
}

impl BootstrapRehearsal {
    pub fn human(&self) -> String {
        let spread: Vec<String> = self
            .rows_per_worker
            .iter()
            .map(|(w, n)| format!("{w} {n}"))
            .collect();
        format!(
            "citus-bootstrap on PostgreSQL {}: lab start {:.1} s, bootstrap {:.2} s, {} rows through the coordinator in {:.2} s ({}); Citus reading {:.1} ms, exact counts {:.1} ms{}",
            self.version,
            self.lab_start_s,
            self.bootstrap_s,
            self.rows,
            self.insert_s,
            spread.join(", "),
            self.reading_ms,
            self.counts_ms,
            self.error.as_deref().map(|e| format!("; ERROR {e}")).unwrap_or_default()
        )
    }
}

/// The invocation of the lab's bootstrap: `forms` from pg1's p1 database.
pub fn lab_invocation(lab: &CitusLab, state_dir: std::path::PathBuf) -> Invocation {
    Invocation {
        inventory_path: lab.inventory_path(),
        runbook: super::plan::RUNBOOK.into(),
        params: BTreeMap::from([
            ("cluster".to_string(), CLUSTER.to_string()),
            ("schema-from".to_string(), format!("pg1/{P1_DB}")),
        ]),
        state_dir: Some(state_dir),
        oversight: Oversight::Solo,
        trust_on_first_use: false,
        expect_fingerprint: None,
    }
}

pub async fn citus_bootstrap(
    options: &BootstrapRehearsalOptions,
) -> Result<BootstrapRehearsal, LabError> {
    let lab = CitusLab::start(1_000, options.version).await?;
    let mut report = BootstrapRehearsal {
        version: options.version,
        lab_start_s: lab.start_seconds,
        bootstrap_s: 0.0,
        insert_s: 0.0,
        rows: options.rows,
        rows_per_worker: BTreeMap::new(),
        reading_ms: 0.0,
        counts_ms: 0.0,
        error: None,
    };
    let started = Instant::now();
    let invocation = lab_invocation(&lab, lab.config.dir.join("state"));
    let outcome = match session::open_as::<super::CitusBootstrap>(&invocation) {
        Ok(mut runner) => runner
            .run_headless("rehearsal")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    report.bootstrap_s = started.elapsed().as_secs_f64();
    if let Err(e) = outcome {
        report.error = Some(e);
        return Ok(report);
    }
    let client = lab.coordinator(DATABASE).await?;
    let started = Instant::now();
    let insert = format!(
        "INSERT INTO forms (form_id, domain, payload) \
         SELECT gen_random_uuid(), 'rehearsal', jsonb_build_object('n', n) FROM generate_series(1, {}) n",
        options.rows
    );
    if let Err(e) = client.batch_execute(&insert).await {
        report.error = Some(crate::pg::error_chain(&e));
        return Ok(report);
    }
    report.insert_s = started.elapsed().as_secs_f64();
    let rows = client
        .query(
            "SELECT nodename || ':' || nodeport, sum(result::int8)::int8 \
             FROM run_command_on_placements('forms', 'SELECT count(*) FROM %s') \
             GROUP BY nodename, nodeport ORDER BY 1",
            &[],
        )
        .await
        .map_err(|source| crate::pg::PgError::Query {
            target: "coordinator".into(),
            source,
        })?;
    report.rows_per_worker = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    client
        .batch_execute("ANALYZE forms")
        .await
        .map_err(|source| crate::pg::PgError::Query {
            target: "coordinator".into(),
            source,
        })?;
    let cluster = lab
        .inventory
        .citus_cluster(CLUSTER)
        .cloned()
        .ok_or_else(|| LabError::Inventory("the lab inventory has no Citus cluster".into()))?;
    let mut reading = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        crate::readings::queries::citus(&client, "rehearsal", &lab.inventory, &cluster).await?;
        reading.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut counts = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        crate::readings::queries::citus_counts(&client, "rehearsal", &lab.inventory, &cluster)
            .await?;
        counts.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    report.reading_ms = median(reading);
    report.counts_ms = median(counts);
    Ok(report)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}
