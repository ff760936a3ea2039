//! Rehearsals: a full headless runbook on a fresh lab under `lab load`, measured — the
//! benchmark behind the README numbers (pause window, failed calls, lost ids, strays).

use crate::engine::Oversight;
use crate::lab::load::{self, LoadOptions};
use crate::lab::{LabError, TestLab};
use crate::session::{self, Invocation};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `cutover lab rehearse shard-split ...`
#[derive(Debug, Clone, clap::Args)]
pub struct RehearsalOptions {
    /// Application calls per second during each run.
    #[arg(long, default_value_t = 300)]
    pub rate: u32,
    /// Runs, each on a fresh lab.
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// Documents loaded into p1 before each run.
    #[arg(long, default_value_t = 200_000)]
    pub docs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitRehearsal {
    pub pause_window_ms: f64,
    pub committed: u64,
    pub failed: u64,
    /// Committed ids not found on the node that owns their shard afterwards.
    pub missing: u64,
    /// Rows written to a node that no longer owned their shard (moved by the delete step).
    pub stray: u64,
    /// Slowest client call, i.e. the longest a client waited in the pause.
    pub max_call_ms: u64,
    pub total_ms: u128,
    pub step_ms: BTreeMap<String, f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub worst: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitSummary {
    pub runs: Vec<SplitRehearsal>,
    pub pause_window_ms: Stat,
    pub failed: u64,
    pub missing: u64,
    pub stray: u64,
}

impl SplitSummary {
    /// One line for the operator, as `lab rehearse` prints it without `--json`.
    pub fn human(&self, rate: u32) -> String {
        format!(
            "pause window: median {:.1} ms, worst {:.1} ms; failed {}, missing {}, stray {} over {} runs at {rate}/s",
            self.pause_window_ms.median,
            self.pause_window_ms.worst,
            self.failed,
            self.missing,
            self.stray,
            self.runs.len()
        )
    }
    /// No failed call, no lost id, no run that ended in an error.
    pub fn clean(&self) -> bool {
        self.failed == 0 && self.missing == 0 && self.runs.iter().all(|r| r.error.is_none())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RehearsalError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("rehearsal: {0}")]
    Other(String),
}

fn stat(values: &[f64]) -> Stat {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    Stat {
        median,
        worst: sorted.last().copied().unwrap_or(0.0),
    }
}

pub async fn shard_split(options: &RehearsalOptions) -> Result<SplitSummary, RehearsalError> {
    let mut runs = Vec::new();
    for run in 0..options.runs {
        let result = one_split(options).await?;
        eprintln!(
            "run {}: pause {:.1} ms, {} committed, {} failed, {} missing, {} stray{}",
            run + 1,
            result.pause_window_ms,
            result.committed,
            result.failed,
            result.missing,
            result.stray,
            result
                .error
                .as_deref()
                .map(|e| format!(", ERROR {e}"))
                .unwrap_or_default()
        );
        runs.push(result);
    }
    let windows: Vec<f64> = runs.iter().map(|r| r.pause_window_ms).collect();
    Ok(SplitSummary {
        pause_window_ms: stat(&windows),
        failed: runs.iter().map(|r| r.failed).sum(),
        missing: runs.iter().map(|r| r.missing).sum(),
        stray: runs.iter().map(|r| r.stray).sum(),
        runs,
    })
}

async fn one_split(options: &RehearsalOptions) -> Result<SplitRehearsal, RehearsalError> {
    let lab = TestLab::start(options.docs).await?;
    let state = lab.config.dir.join("state");
    let endpoint = load::entry_endpoint(&lab.inventory)
        .ok_or_else(|| RehearsalError::Other("no entry alias".into()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(load::run(
        LoadOptions {
            endpoint,
            rate: options.rate,
            duration: Duration::from_secs(3600),
            workers: 4,
            out: None,
        },
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let invocation = Invocation {
        inventory_path: lab.config.inventory_path(),
        runbook: crate::runbooks::shard_split::plan::RUNBOOK.into(),
        params: BTreeMap::from([
            ("from".into(), "p1".into()),
            ("to".into(), "p2".into()),
            ("node".into(), "pg2".into()),
            ("shards".into(), "512-1023".into()),
        ]),
        state_dir: Some(state),
        oversight: Oversight::Solo,
        trust_on_first_use: false,
        expect_fingerprint: None,
    };
    let started = std::time::Instant::now();
    let mut runner = session::open_as::<super::ShardSplit>(&invocation)
        .map_err(|e| RehearsalError::Other(e.to_string()))?;
    let outcome = runner.run_headless("rehearsal").await;
    let total_ms = started.elapsed().as_millis();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    let report = traffic
        .await
        .map_err(|e| RehearsalError::Other(e.to_string()))?
        .map_err(|e| RehearsalError::Other(e.to_string()))?;
    let ids: Vec<String> = report
        .committed_ids
        .iter()
        .map(|id| id.to_string())
        .collect();
    let found = owned_ids(&lab, &ids).await?;
    let memory = runner.actions_mut().memory().clone();
    let entries = runner
        .journal()
        .entries(&runner.run_id)
        .map_err(|e| RehearsalError::Other(e.to_string()))?;
    let step_ms = crate::engine::step_durations_ms(&entries);
    Ok(SplitRehearsal {
        pause_window_ms: memory.pause_window_ms.unwrap_or(f64::NAN),
        committed: report.committed,
        failed: report.failed,
        missing: report.committed.saturating_sub(found),
        stray: memory.strays_moved,
        max_call_ms: report.max_call_ms,
        total_ms,
        step_ms,
        error: outcome.err().map(|e| e.to_string()),
    })
}

/// How many of `ids` sit on the partition that owns their shard after the split.
async fn owned_ids(lab: &TestLab, ids: &[String]) -> Result<u64, RehearsalError> {
    let mut found = 0;
    for (port, db, range) in [
        (lab.config.pg1_port, "commcarehq_p1", (0i32, 511i32)),
        (lab.config.pg2_port, "commcarehq_p2", (512, 1023)),
    ] {
        let endpoint = crate::pg::Endpoint {
            address: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            dbname: db.into(),
            tls: Default::default(),
        };
        let client = crate::pg::connect(&endpoint, crate::pg::SessionSettings::EXECUTOR)
            .await
            .map_err(|e| RehearsalError::Other(e.to_string()))?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM forms WHERE form_id::text = ANY($1) AND (hashtext(form_id::text) & 1023) BETWEEN $2 AND $3",
                &[&ids, &range.0, &range.1],
            )
            .await
            .map_err(|e| RehearsalError::Other(crate::pg::error_chain(&e)))?
            .get(0);
        found += n as u64;
    }
    Ok(found)
}
