//! Rehearsal of the major upgrade (`cutover lab rehearse major-upgrade --method M`): a fresh
//! [`UpgradeLab`] with 8 comparable tables, the seed's hand pipeline as the reference, the
//! checksum's cost, then the runbook headless with per-step times and the downtime.

use crate::engine::{Confirmation, Oversight};
use crate::lab::proc::service_command;
use crate::lab::target::{bin_dir, UpgradeLab, UpgradeLabOptions, APP_DB};
use crate::lab::LabError;
use crate::plan::StepId;
use crate::session::{self, Invocation};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// `cutover lab rehearse major-upgrade ...`
#[derive(Debug, Clone, clap::Args)]
pub struct UpgradeRehearsalOptions {
    /// `dumpall`, `parallel`, `pg-upgrade` or `pg-upgrade-copy`.
    #[arg(long, default_value = "dumpall")]
    pub method: String,
    /// Rows in each of the 8 bench tables (8 × 125k ≈ the guide's 359 MB, 1M-row database).
    #[arg(long, default_value_t = 125_000)]
    pub bench_rows: u64,
    /// Parallel jobs (`parallel`, `pg_upgrade -j`).
    #[arg(long, default_value_t = 2)]
    pub jobs: u32,
    /// Also time the seed's hand pipeline and the checksum's cost (about a minute); the
    /// `--no-reference` flag skips them.
    #[arg(long = "no-reference", action = clap::ArgAction::SetFalse)]
    pub reference: bool,
}

impl Default for UpgradeRehearsalOptions {
    fn default() -> Self {
        UpgradeRehearsalOptions {
            method: "parallel".into(),
            bench_rows: 125_000,
            jobs: 2,
            reference: true,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepTime {
    pub step: String,
    pub ms: f64,
}

/// The seed runbook by hand: `pg_dumpall | gzip`, `sha512sum`, `gunzip -c | psql` into 18.
#[derive(Debug, Clone, Serialize)]
pub struct SeedPipeline {
    pub dump_gzip_ms: f64,
    pub sha512_ms: f64,
    pub restore_ms: f64,
    pub total_ms: f64,
}

/// `pg_dumpall | gzip` with and without the runbook's in-stream SHA-512 stage
/// ([`CHECKSUM_PAIRS`] back-to-back pairs, alternating which goes first; single dumps vary by
/// ±15% here, so the cost is the median of the per-pair differences).
#[derive(Debug, Clone, Serialize)]
pub struct ChecksumCost {
    pub dump_ms_without: f64,
    pub dump_ms_with: f64,
    /// Median over the pairs of (with − without) / without.
    pub added_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpgradeRehearsal {
    pub method: String,
    pub database_bytes: i64,
    pub tables: usize,
    pub artifact_bytes: Option<u64>,
    /// Traffic stopped → resumed, as the runbook measured it.
    pub downtime_ms: Option<f64>,
    pub steps: Vec<StepTime>,
    /// Steps between stop-traffic and resume-traffic, summed: the data path of the window.
    pub window_ms: f64,
    pub seed: Option<SeedPipeline>,
    pub checksum: Option<ChecksumCost>,
    /// `window_ms / seed.total_ms`.
    pub ratio_to_seed: Option<f64>,
    pub error: Option<String>,
}

impl UpgradeRehearsal {
    pub fn human(&self) -> String {
        let mut out = format!(
            "major-upgrade --method {}: database {}, {} tables, artifact {}\n",
            self.method,
            crate::readings::text::human_bytes(self.database_bytes),
            self.tables,
            self.artifact_bytes
                .map(|b| crate::readings::text::human_bytes(b as i64))
                .unwrap_or_else(|| "-".into())
        );
        for s in &self.steps {
            out.push_str(&format!("  {:<20} {:>9.0} ms\n", s.step, s.ms));
        }
        out.push_str(&format!(
            "downtime (traffic stopped → resumed): {}\n",
            self.downtime_ms
                .map(|d| format!("{d:.0} ms"))
                .unwrap_or_else(|| "-".into())
        ));
        if let Some(seed) = &self.seed {
            out.push_str(&format!(
                "seed pipeline: dump|gzip {:.0} ms + sha512 {:.0} ms + restore {:.0} ms = {:.0} ms; this method's window {:.0} ms = {:.2}×\n",
                seed.dump_gzip_ms, seed.sha512_ms, seed.restore_ms, seed.total_ms, self.window_ms,
                self.ratio_to_seed.unwrap_or(0.0)
            ));
        }
        if let Some(c) = &self.checksum {
            out.push_str(&format!(
                "in-stream sha512: dump {:.0} ms without, {:.0} ms with (medians); added {:+.1}% (median of {CHECKSUM_PAIRS} back-to-back pairs)\n",
                c.dump_ms_without, c.dump_ms_with, c.added_percent
            ));
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("ERROR: {e}\n"));
        }
        out
    }
}

fn shell_timed(script: &str) -> Result<f64, LabError> {
    let started = Instant::now();
    crate::lab::proc::run_checked(service_command("bash").args(["-o", "pipefail", "-c", script]))?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Bring up a fresh upgrade lab, measure, tear it down.
pub async fn major_upgrade(
    options: &UpgradeRehearsalOptions,
) -> Result<UpgradeRehearsal, LabError> {
    let lab = UpgradeLab::start(UpgradeLabOptions {
        rows: 20_000,
        bench_rows: options.bench_rows,
        ..UpgradeLabOptions::default()
    })
    .await?;
    let source = crate::pg::connect(
        &crate::pg::Endpoint {
            address: "127.0.0.1".into(),
            port: lab.source_port,
            user: "postgres".into(),
            dbname: APP_DB.into(),
            tls: Default::default(),
        },
        crate::pg::SessionSettings::EXECUTOR,
    )
    .await?;
    let size_row = source
        .query_one(
            "SELECT pg_database_size(current_database())::int8, (SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema'))::int8",
            &[],
        )
        .await
        .map_err(|source| crate::pg::PgError::Query {
            target: "rehearsal".into(),
            source,
        })?;
    drop(source);
    let (database_bytes, tables): (i64, i64) = (size_row.get(0), size_row.get(1));

    let (seed, checksum) = if options.reference {
        reference(&lab)?
    } else {
        (None, None)
    };

    let state = lab.dir.join("state");
    let mut params = BTreeMap::from([
        ("from".to_string(), "pg1".to_string()),
        (
            "to".to_string(),
            crate::lab::target::TARGET_NODE.to_string(),
        ),
        ("method".to_string(), options.method.clone()),
        ("jobs".to_string(), options.jobs.to_string()),
    ]);
    params.insert("pause-bound-ms".into(), "3600000".into());
    let invocation = Invocation {
        inventory_path: lab.inventory_path(),
        runbook: crate::runbooks::major_upgrade::plan::RUNBOOK.into(),
        params,
        state_dir: Some(state),
        oversight: Oversight::Solo,
        trust_on_first_use: false,
        expect_fingerprint: None,
    };
    let mut runner = session::open_as::<super::MajorUpgrade>(&invocation)
        .map_err(|e| LabError::Inventory(e.to_string()))?;
    let mut steps = Vec::new();
    let mut error = None;
    while let Some(next) = runner.state.next_step(&runner.plan).map(|s| s.id.clone()) {
        if next.as_str() == "stop-old-cluster" {
            break;
        }
        let started = Instant::now();
        let result = async {
            let requirement = runner.requirement(&next).await?;
            runner
                .start(
                    &next,
                    Some(Confirmation::headless("rehearsal", &requirement)),
                )
                .await
        };
        let result = Box::pin(result).await;
        steps.push(StepTime {
            step: next.to_string(),
            ms: started.elapsed().as_secs_f64() * 1000.0,
        });
        if let Err(e) = result {
            error = Some(e.to_string());
            break;
        }
    }
    let memory = runner.actions_mut().memory().clone();
    let in_window = |s: &&StepTime| {
        let order: Vec<StepId> = runner.plan.steps.iter().map(|s| s.id.clone()).collect();
        let index = |id: &str| order.iter().position(|s| s.as_str() == id);
        let i = index(&s.step);
        i > index("stop-traffic") && i < index("resume-traffic")
    };
    let window_ms: f64 = steps.iter().filter(in_window).map(|s| s.ms).sum();
    let ratio_to_seed = seed.as_ref().map(|s: &SeedPipeline| window_ms / s.total_ms);
    drop(runner);
    drop(lab);
    Ok(UpgradeRehearsal {
        method: options.method.clone(),
        database_bytes,
        tables: tables as usize,
        artifact_bytes: memory.artifact_bytes,
        downtime_ms: memory.downtime_ms,
        steps,
        window_ms,
        seed,
        checksum,
        ratio_to_seed,
        error,
    })
}

/// Pairs of dumps, one with and one without the checksum.
const CHECKSUM_PAIRS: usize = 11;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The seed pipeline into a scratch 18 cluster, and the checksum's cost on the dump.
fn reference(lab: &UpgradeLab) -> Result<(Option<SeedPipeline>, Option<ChecksumCost>), LabError> {
    let dir = lab.dir.join("reference");
    std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    crate::lab::proc::chown_to_service_user(&dir)?;
    let d = dir.display();
    let old = crate::lab::PG15_BIN;
    let new = bin_dir(18)?;
    let src = format!("-h 127.0.0.1 -p {} -U postgres", lab.source_port);
    let dump_gzip_ms = shell_timed(&format!(
        "{old}/pg_dumpall {src} | gzip > {d}/backup.sql.gz"
    ))?;
    let sha512_ms = shell_timed(&format!(
        "sha512sum {d}/backup.sql.gz > {d}/backup.sql.gz.sha512"
    ))?;
    let port = crate::lab::proc::free_port().map_err(|source| LabError::Io {
        path: "free port".into(),
        source,
    })?;
    shell_timed(&format!(
        "{new}/initdb -D {d}/new -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null && \
         printf '%s\\n' \"port = {port}\" \"listen_addresses = ''\" \"unix_socket_directories = '{d}'\" >> {d}/new/postgresql.conf && \
         {new}/pg_ctl -D {d}/new -l {d}/new.log -w start >/dev/null"
    ))?;
    let restore = shell_timed(&format!(
        "gunzip -c {d}/backup.sql.gz | {new}/psql -X -q -h {d} -p {port} -U postgres -d postgres >/dev/null 2>{d}/restore.err"
    ));
    let _ = shell_timed(&format!(
        "{new}/pg_ctl -D {d}/new -m immediate -w stop >/dev/null"
    ));
    let restore_ms = restore?;
    let seed = SeedPipeline {
        dump_gzip_ms,
        sha512_ms,
        restore_ms,
        total_ms: dump_gzip_ms + sha512_ms + restore_ms,
    };
    // Same gzip level and hasher as the runbook's dump, with and without the checksum.
    let (mut without, mut with, mut added) = (Vec::new(), Vec::new(), Vec::new());
    let level = crate::runbooks::major_upgrade::plan::GZIP_LEVEL;
    let plain = format!("{old}/pg_dumpall {src} | gzip -{level} > {d}/plain.sql.gz");
    let summed = format!(
        "{old}/pg_dumpall {src} | gzip -{level} | {} > {d}/summed.sha512",
        crate::runbooks::major_upgrade::plan::tee_sha512(&format!("{d}/summed.sql.gz"))
    );
    // Each dump starts with nothing dirty in the page cache: the scratch restore above and the
    // previous dump leave hundreds of MB for the kernel to write back, which would otherwise
    // land on whichever dump runs next.
    let timed_clean = |script: &str| {
        shell_timed("sync")?;
        shell_timed(script)
    };
    for pair in 0..CHECKSUM_PAIRS {
        let (w, c) = if pair % 2 == 0 {
            (timed_clean(&plain)?, timed_clean(&summed)?)
        } else {
            let c = timed_clean(&summed)?;
            (timed_clean(&plain)?, c)
        };
        without.push(w);
        with.push(c);
        added.push((c - w) / w * 100.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        Some(seed),
        Some(ChecksumCost {
            dump_ms_without: median(without),
            dump_ms_with: median(with),
            added_percent: median(added),
        }),
    ))
}
