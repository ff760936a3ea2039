//! The table-copy benchmark (`cutover lab rehearse table-copy`): a lab source of about 2M rows,
//! copied in one run by the seed's pipeline (`pg_dump -t T --data-only | psql
//! --single-transaction`, N at a time), by `pgcopydb copy table-data`, and by this runbook,
//! into fresh databases of one plain PostgreSQL target, then by this runbook into the lab's
//! Citus cluster; every copy is counted against the source for missing and duplicated rows.

use super::state::Status;
use crate::engine::{EntryKind, JournalEntry, Oversight};
use crate::lab::citus::{CitusLab, COORDINATOR, DATABASE};
use crate::lab::copy_source::{self, SourceShape, SOURCE_DB};
use crate::lab::{LabError, PG15_BIN};
use crate::remote::shell_quote;
use crate::session::{self, Invocation};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// `cutover lab rehearse table-copy ...`
#[derive(Debug, Clone, clap::Args)]
pub struct CopyRehearsalOptions {
    /// Tables copied at once, by every method.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Monthly tables of the source.
    #[arg(long, default_value_t = 24)]
    pub months: u32,
    #[arg(long, default_value_t = 60_000)]
    pub rows_per_month: u64,
    /// Rows of the big table.
    #[arg(long, default_value_t = 500_000)]
    pub big_rows: u64,
    /// Leave the Citus copy out.
    #[arg(long)]
    pub no_citus: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyRehearsal {
    pub jobs: usize,
    pub tables: usize,
    pub rows: u64,
    pub source_mb: f64,
    pub load_s: f64,
    /// The seed's pipeline into the plain target.
    pub seed_s: f64,
    /// `pgcopydb copy table-data --table-jobs N` into the plain target.
    pub pgcopydb_s: f64,
    /// This runbook's copy into the plain target: the copy step's wall time times the share
    /// of its items' busy time spent copying (each item copies, then verifies its part).
    pub copy_s: f64,
    /// The rest of the copy step (both sides' count and checksum after each part) plus the
    /// final ledger check.
    pub verify_s: f64,
    /// The whole run: preflight, ledger, copy, verify.
    pub run_s: f64,
    pub rows_per_s: f64,
    pub mb_per_s: f64,
    pub citus_copy_s: Option<f64>,
    pub citus_verify_s: Option<f64>,
    pub copy_vs_seed: f64,
    pub copy_vs_pgcopydb: f64,
    pub verify_vs_copy: f64,
    pub verify_vs_seed: f64,
    pub verify_vs_pgcopydb: f64,
    /// Source rows absent from this runbook's targets (plain and Citus), after verification.
    pub missing: i64,
    /// Rows present more than once on this runbook's targets.
    pub duplicated: i64,
    /// The same for the seed pipeline and pgcopydb (they are not verified).
    pub seed_missing: i64,
    pub pgcopydb_missing: i64,
    pub errors: Vec<String>,
}

impl CopyRehearsal {
    pub fn clean(&self) -> bool {
        self.errors.is_empty()
            && self.missing == 0
            && self.duplicated == 0
            && self.copy_vs_seed <= 0.65
            && self.copy_vs_pgcopydb <= 0.75
            && self.verify_vs_copy <= 0.5
    }

    pub fn human(&self) -> String {
        let citus = match (self.citus_copy_s, self.citus_verify_s) {
            (Some(c), Some(v)) => format!("; into Citus: copy {c:.2} s, verify {v:.2} s"),
            _ => String::new(),
        };
        format!(
            "table-copy, {} jobs, {} tables, {} rows ({:.0} MB): seed pipeline {:.2} s, pgcopydb {:.2} s, \
cutover copy {:.2} s ({:.0} rows/s, {:.1} MB/s), verify {:.2} s, whole run {:.2} s{citus}; \
copy/seed {:.2} (target ≤ 0.65), copy/pgcopydb {:.2} (≤ 0.75), verify/copy {:.2} (≤ 0.5); \
missing {}, duplicated {}{}",
            self.jobs,
            self.tables,
            self.rows,
            self.source_mb,
            self.seed_s,
            self.pgcopydb_s,
            self.copy_s,
            self.rows_per_s,
            self.mb_per_s,
            self.verify_s,
            self.run_s,
            self.copy_vs_seed,
            self.copy_vs_pgcopydb,
            self.verify_vs_copy,
            self.missing,
            self.duplicated,
            if self.errors.is_empty() {
                String::new()
            } else {
                format!("; ERRORS {}", self.errors.join("; "))
            }
        )
    }
}

fn lab_err(e: impl std::fmt::Display) -> LabError {
    LabError::Inventory(e.to_string())
}

/// The invocation of this runbook on the lab.
pub fn lab_invocation(
    lab: &CitusLab,
    state_dir: std::path::PathBuf,
    params: &[(&str, &str)],
) -> Invocation {
    Invocation {
        inventory_path: lab.inventory_path(),
        runbook: super::plan::RUNBOOK.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        state_dir: Some(state_dir),
        oversight: Oversight::Solo,
        trust_on_first_use: false,
        expect_fingerprint: None,
    }
}

/// Seconds between a step's last `started` entry and its `verified` entry.
fn step_seconds(entries: &[JournalEntry], step: &str) -> f64 {
    let of = |kind: EntryKind| {
        entries
            .iter()
            .filter(|e| e.kind == kind && e.step.as_ref().is_some_and(|s| s.as_str() == step))
            .map(|e| e.at)
            .next_back()
    };
    match (of(EntryKind::Started), of(EntryKind::Verified)) {
        (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
        _ => 0.0,
    }
}

/// Run this runbook headless; (copy s, verify s, whole run s).
async fn run_copy(
    lab: &CitusLab,
    state_dir: &Path,
    to: &str,
    jobs: usize,
) -> Result<(f64, f64, f64), String> {
    let jobs = jobs.to_string();
    let from = format!("pg1/{SOURCE_DB}");
    let invocation = lab_invocation(
        lab,
        state_dir.to_path_buf(),
        &[("from", &from), ("to", to), ("jobs", &jobs)],
    );
    let started = Instant::now();
    let mut runner =
        session::open_as::<super::TableCopy>(&invocation).map_err(|e| e.to_string())?;
    runner
        .run_headless("rehearsal")
        .await
        .map_err(|e| e.to_string())?;
    let run_s = started.elapsed().as_secs_f64();
    let entries = runner
        .journal()
        .entries(&runner.run_id)
        .map_err(|e| e.to_string())?;
    let pair = runner.actions().state();
    if let Some((name, t)) = pair
        .tables
        .iter()
        .find(|(_, t)| t.status() != Status::Verified)
    {
        return Err(format!("{name} is {}", t.status().label()));
    }
    // Each item copies then verifies its part, so the copy step's wall time holds both; it
    // is split in proportion to the parts' own copy and verify times (the items overlap, so
    // neither can be read off a clock alone). The final ledger check is counted as verify.
    let (copy_ms, verify_ms) = pair
        .tables
        .values()
        .flat_map(|t| t.parts.values())
        .fold((0u64, 0u64), |(c, v), p| (c + p.copy_ms, v + p.verify_ms));
    let step_s = step_seconds(&entries, "copy");
    let busy = (copy_ms + verify_ms).max(1) as f64;
    let copy_s = step_s * copy_ms as f64 / busy;
    Ok((
        copy_s,
        step_s - copy_s + step_seconds(&entries, "verify"),
        run_s,
    ))
}

async fn checkpoint(port: u16) -> Result<(), LabError> {
    let client = copy_source::connect(port, "postgres").await?;
    client.batch_execute("CHECKPOINT").await.map_err(lab_err)
}

/// The seed's pipeline, `jobs` tables at a time.
async fn seed_pipeline(
    pg1: u16,
    pg2: u16,
    db: &str,
    tables: &[String],
    jobs: usize,
) -> Result<(), String> {
    let results: Vec<Result<(), String>> = stream::iter(tables.iter().cloned())
        .map(|t| {
            let script = format!(
                "set -o pipefail; {bin}/pg_dump -h 127.0.0.1 -p {pg1} -U postgres -t {t} --data-only {src} | \
{bin}/psql -h 127.0.0.1 -p {pg2} -U postgres -v ON_ERROR_STOP=1 --single-transaction -q -o /dev/null -d {db}",
                bin = PG15_BIN,
                t = shell_quote(&format!("public.{t}")),
                src = shell_quote(SOURCE_DB),
                db = shell_quote(db),
            );
            async move {
                let out = tokio::process::Command::new("bash")
                    .arg("-c")
                    .arg(&script)
                    .output()
                    .await
                    .map_err(|e| e.to_string())?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!("{t}: {}", String::from_utf8_lossy(&out.stderr).trim()))
                }
            }
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

async fn pgcopydb(pg1: u16, pg2: u16, db: &str, jobs: usize, work: &Path) -> Result<(), String> {
    let out = tokio::process::Command::new("pgcopydb")
        .args(["copy", "table-data", "--source"])
        .arg(format!("postgres://postgres@127.0.0.1:{pg1}/{SOURCE_DB}"))
        .arg("--target")
        .arg(format!("postgres://postgres@127.0.0.1:{pg2}/{db}"))
        .arg("--table-jobs")
        .arg(jobs.max(1).to_string())
        .arg("--dir")
        .arg(work)
        .output()
        .await
        .map_err(|e| format!("pgcopydb: {e} (install it: apt-get install pgcopydb)"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        Err(format!(
            "pgcopydb: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }
}

/// Missing and duplicated rows of every table of `shape` at `port`/`db` against the source.
async fn compare(
    source: &BTreeMap<String, i64>,
    port: u16,
    db: &str,
) -> Result<(i64, i64), LabError> {
    let client = copy_source::connect(port, db).await?;
    let (mut missing, mut duplicated) = (0, 0);
    for (table, rows) in source {
        let (n, dups) = copy_source::count_with_duplicates(&client, table).await?;
        duplicated += dups;
        missing += (rows - (n - dups)).max(0);
    }
    Ok((missing, duplicated))
}

pub async fn table_copy(options: &CopyRehearsalOptions) -> Result<CopyRehearsal, LabError> {
    let shape = SourceShape {
        months: options.months,
        rows_per_month: options.rows_per_month,
        big_rows: options.big_rows,
    };
    let lab = CitusLab::start(1_000, 15).await?;
    let (pg1, pg2) = (lab.config.pg1_port, lab.config.pg2_port);
    let mut report = CopyRehearsal {
        jobs: options.jobs,
        tables: shape.tables().len(),
        rows: shape.rows(),
        ..CopyRehearsal::default()
    };
    let started = Instant::now();
    copy_source::start_plain_target(&lab.config)?;
    copy_source::create_source(pg1, &shape).await?;
    if !options.no_citus {
        copy_source::setup_citus(&lab, &shape).await?;
    }
    // No autovacuum on either side: the tables one method loaded must not be vacuumed while
    // the next method is timed.
    for port in [pg1, pg2] {
        let admin = copy_source::connect(port, "postgres").await?;
        for sql in [
            "ALTER SYSTEM SET autovacuum = off",
            "SELECT pg_reload_conf()",
        ] {
            admin.batch_execute(sql).await.map_err(lab_err)?;
        }
    }
    for db in ["seed_target", "pgcopydb_target", "copy_target"] {
        copy_source::create_database(pg2, db, &shape).await?;
    }
    report.load_s = started.elapsed().as_secs_f64();
    let src = copy_source::connect(pg1, SOURCE_DB).await?;
    let size: i64 = src
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(lab_err)?
        .get(0);
    report.source_mb = size as f64 / 1024.0 / 1024.0;
    let mut source_rows = BTreeMap::new();
    for t in shape.tables() {
        let (n, _) = copy_source::count_with_duplicates(&src, &t).await?;
        source_rows.insert(t, n);
    }

    checkpoint(pg2).await?;
    let t0 = Instant::now();
    if let Err(e) = seed_pipeline(pg1, pg2, "seed_target", &shape.tables(), options.jobs).await {
        report.errors.push(format!("seed pipeline: {e}"));
    }
    report.seed_s = t0.elapsed().as_secs_f64();
    report.seed_missing = compare(&source_rows, pg2, "seed_target").await?.0;

    checkpoint(pg2).await?;
    let work = lab.config.dir.join("pgcopydb");
    let t0 = Instant::now();
    if let Err(e) = pgcopydb(pg1, pg2, "pgcopydb_target", options.jobs, &work).await {
        report.errors.push(e);
    }
    report.pgcopydb_s = t0.elapsed().as_secs_f64();
    report.pgcopydb_missing = compare(&source_rows, pg2, "pgcopydb_target").await?.0;

    checkpoint(pg2).await?;
    let state_dir = lab.config.dir.join("state");
    match run_copy(&lab, &state_dir, "pg2/copy_target", options.jobs).await {
        Ok((copy_s, verify_s, run_s)) => {
            report.copy_s = copy_s;
            report.verify_s = verify_s;
            report.run_s = run_s;
        }
        Err(e) => report.errors.push(format!("copy into pg2: {e}")),
    }
    let (m, d) = compare(&source_rows, pg2, "copy_target").await?;
    report.missing += m;
    report.duplicated += d;

    if !options.no_citus {
        let to = format!("{COORDINATOR}/{DATABASE}");
        match run_copy(&lab, &state_dir, &to, options.jobs).await {
            Ok((copy_s, verify_s, _)) => {
                report.citus_copy_s = Some(copy_s);
                report.citus_verify_s = Some(verify_s);
            }
            Err(e) => report.errors.push(format!("copy into Citus: {e}")),
        }
        let (m, d) = compare(&source_rows, lab.citus.ports[0], DATABASE).await?;
        report.missing += m;
        report.duplicated += d;
    }

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    report.copy_vs_seed = ratio(report.copy_s, report.seed_s);
    report.copy_vs_pgcopydb = ratio(report.copy_s, report.pgcopydb_s);
    report.verify_vs_copy = ratio(report.verify_s, report.copy_s);
    report.verify_vs_seed = ratio(report.verify_s, report.seed_s);
    report.verify_vs_pgcopydb = ratio(report.verify_s, report.pgcopydb_s);
    report.rows_per_s = ratio(report.rows as f64, report.copy_s);
    report.mb_per_s = ratio(report.source_mb, report.copy_s);
    Ok(report)
}
