//! Rehearsal of the logical move (`cutover lab rehearse logical-move --target pg18`): a fresh
//! lab with a PostgreSQL 18 target, `lab load` through the entry alias, the runbook headless,
//! then every committed id looked up on the target — the benchmark behind the README numbers.

use crate::engine::Oversight;
use crate::lab::load::{self, LoadOptions};
use crate::lab::{self, LabConfig, LabError, TargetConfig, P1_DB};
use crate::pg::{self, Endpoint, SessionSettings};
use crate::session::{self, Invocation};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `cutover lab rehearse logical-move ...`
#[derive(Debug, Clone, clap::Args)]
pub struct MoveRehearsalOptions {
    /// `pg18` (a PostgreSQL 18 target: an online major upgrade), `pg15`, or `citus`.
    #[arg(long, default_value = "pg18")]
    pub target: String,
    /// Application calls per second during each run.
    #[arg(long, default_value_t = 300)]
    pub rate: u32,
    /// Runs, each on a fresh lab.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Documents loaded into the moved database before each run.
    #[arg(long, default_value_t = 100_000)]
    pub docs: u64,
    /// Skip the `pgcopydb clone --follow` cutover run after ours (plain targets only).
    #[arg(long)]
    pub no_pgcopydb: bool,
}

/// The lab's moved database gets a table whose key comes from a sequence, written by a
/// trigger on every form: after the cutover the target's sequence must be past the source's.
pub const EVENTS_DDL: &str = "CREATE TABLE IF NOT EXISTS form_events (id bigserial PRIMARY KEY, form_id uuid NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE OR REPLACE FUNCTION log_form() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO form_events (form_id) VALUES (NEW.form_id); RETURN NEW; END $$;
DROP TRIGGER IF EXISTS log_form ON forms;
CREATE TRIGGER log_form AFTER INSERT ON forms FOR EACH ROW EXECUTE FUNCTION log_form();
INSERT INTO form_events (form_id) SELECT form_id FROM forms;";

#[derive(Debug, Clone, Serialize)]
pub struct MoveRun {
    /// PAUSE issued → RESUME returned, as the runbook measured it.
    pub pause_window_ms: f64,
    pub committed: u64,
    pub failed: u64,
    /// Committed ids not on the target afterwards.
    pub missing: u64,
    /// Rows applied twice: form ids with more than one event row on the target.
    pub duplicated: u64,
    /// Sequences whose nextval on the target was not past their column's maximum.
    pub sequences_behind: u64,
    pub sequences_checked: u64,
    /// Replication slots left on the source after the run.
    pub slots_left: u64,
    pub max_call_ms: u64,
    pub copy_ms: Option<f64>,
    pub sync_ms: Option<f64>,
    pub gate_ms: Option<f64>,
    /// Of the gate: marker written → confirmed by the target.
    pub gate_wait_ms: Option<f64>,
    /// Per step of the pause window, in ms.
    pub window_steps: BTreeMap<String, f64>,
    pub peak_retained_bytes: i64,
    /// Slot lag in bytes, one sample a second while catching up.
    pub lag_bytes: Vec<i64>,
    pub total_ms: u128,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub worst: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MoveSummary {
    pub target: String,
    pub rate: u32,
    pub runs: Vec<MoveRun>,
    pub pause_window_ms: Stat,
    pub failed: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub sequences_behind: u64,
    pub slots_left: u64,
    /// `pgcopydb clone --follow` cut over on a fresh lab of the same shape and load rate.
    pub pgcopydb: Option<super::pgcopydb::PgcopydbRun>,
    /// Why pgcopydb did not run, when it did not.
    pub pgcopydb_skipped: Option<String>,
    /// Our median pause window ÷ pgcopydb's pause (PAUSE → endpos applied).
    pub pause_vs_pgcopydb: Option<f64>,
}

impl MoveSummary {
    pub fn human(&self, rate: u32) -> String {
        let mut out = String::new();
        for (i, r) in self.runs.iter().enumerate() {
            out.push_str(&format!(
                "run {}: pause {:.1} ms, {} committed, {} failed, {} missing, {} duplicated, {} sequences behind of {}, {} slots left, copy {:.0} ms, sync {:.0} ms, gate {:.1} ms (wait {:.1} ms), window steps {:?}{}\n",
                i + 1,
                r.pause_window_ms,
                r.committed,
                r.failed,
                r.missing,
                r.duplicated,
                r.sequences_behind,
                r.sequences_checked,
                r.slots_left,
                r.copy_ms.unwrap_or(f64::NAN),
                r.sync_ms.unwrap_or(f64::NAN),
                r.gate_ms.unwrap_or(f64::NAN),
                r.gate_wait_ms.unwrap_or(f64::NAN),
                r.window_steps,
                r.error.as_deref().map(|e| format!(", ERROR {e}")).unwrap_or_default()
            ));
        }
        out.push_str(&format!(
            "logical-move → {}: pause window median {:.1} ms, worst {:.1} ms; failed {}, missing {}, duplicated {}, sequences behind {}, slots left {} over {} runs at {rate}/s",
            self.target,
            self.pause_window_ms.median,
            self.pause_window_ms.worst,
            self.failed,
            self.missing,
            self.duplicated,
            self.sequences_behind,
            self.slots_left,
            self.runs.len()
        ));
        match (&self.pgcopydb, &self.pgcopydb_skipped) {
            (Some(p), _) => out.push_str(&format!(
                "\npgcopydb {} clone --follow → {}: pause (PAUSE → endpos applied) {:.1} ms (endpos set after {:.1} ms), sync {:.1} s, lag while following {:?} bytes (WAL switched every {} s), {} missing, {} duplicated, {} slots left, {} committed, {} failed{}; ours/pgcopydb {}",
                p.version,
                self.target,
                p.pause_ms,
                p.endpos_set_ms,
                p.sync_s,
                p.lag_bytes,
                p.wal_switch_every_s,
                p.missing,
                p.duplicated,
                p.slots_left,
                p.committed,
                p.failed,
                p.error.as_deref().map(|e| format!(", ERROR {e}")).unwrap_or_default(),
                self.pause_vs_pgcopydb
                    .map(|r| format!("{r:.4}"))
                    .unwrap_or_else(|| "n/a".into())
            )),
            (None, Some(why)) => out.push_str(&format!("\npgcopydb: skipped ({why})")),
            (None, None) => {}
        }
        out
    }

    pub fn clean(&self) -> bool {
        self.failed == 0
            && self.missing == 0
            && self.duplicated == 0
            && self.sequences_behind == 0
            && self.slots_left == 0
            && self.runs.iter().all(|r| r.error.is_none())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RehearsalError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("rehearsal: {0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> RehearsalError {
    RehearsalError::Other(e.to_string())
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

/// The target's major version for `--target` (0: the lab's Citus cluster, PostgreSQL 15).
fn target_version(target: &str) -> Result<u32, RehearsalError> {
    match target {
        "pg18" => Ok(18),
        "pg15" => Ok(15),
        "citus" => Ok(0),
        other => Err(RehearsalError::Other(format!(
            "--target {other}: expected pg18, pg15 or citus"
        ))),
    }
}

pub async fn logical_move(options: &MoveRehearsalOptions) -> Result<MoveSummary, RehearsalError> {
    let version = target_version(&options.target)?;
    let mut runs = Vec::new();
    for run in 0..options.runs {
        let result = if version == 0 {
            one_citus_move(options).await?
        } else {
            one_move(options, version).await?
        };
        eprintln!(
            "run {}: pause {:.1} ms, {} committed, {} failed, {} missing, {} duplicated{}",
            run + 1,
            result.pause_window_ms,
            result.committed,
            result.failed,
            result.missing,
            result.duplicated,
            result
                .error
                .as_deref()
                .map(|e| format!(", ERROR {e}"))
                .unwrap_or_default()
        );
        runs.push(result);
    }
    let windows: Vec<f64> = runs.iter().map(|r| r.pause_window_ms).collect();
    let pause_window_ms = stat(&windows);
    let (pgcopydb, pgcopydb_skipped) = if options.no_pgcopydb {
        (None, Some("--no-pgcopydb".to_string()))
    } else if version == 0 {
        (
            None,
            Some("into Citus it would replay into the coordinator's shell tables".to_string()),
        )
    } else {
        match super::pgcopydb::version().await {
            None => (
                None,
                Some(
                    "no pgcopydb binary on PATH (apt-get install pgcopydb postgresql-15-wal2json)"
                        .to_string(),
                ),
            ),
            Some(v) => {
                eprintln!(
                    "pgcopydb {v}: clone --follow on a fresh lab at {}/s",
                    options.rate
                );
                let run = super::pgcopydb::run(options, version, v).await?;
                eprintln!(
                    "pgcopydb: pause {:.1} ms, sync {:.1} s, {} missing, {} duplicated, {} slots left{}",
                    run.pause_ms,
                    run.sync_s,
                    run.missing,
                    run.duplicated,
                    run.slots_left,
                    run.error.as_deref().map(|e| format!(", ERROR {e}")).unwrap_or_default()
                );
                (Some(run), None)
            }
        }
    };
    if let Some(why) = &pgcopydb_skipped {
        eprintln!("pgcopydb: skipped ({why})");
    }
    // A pause is comparable only when it ended in a correct cutover: pgcopydb's target held
    // every committed row once.
    let pause_vs_pgcopydb = pgcopydb
        .as_ref()
        .filter(|p| p.error.is_none() && p.pause_ms > 0.0 && p.missing == 0 && p.duplicated == 0)
        .map(|p| pause_window_ms.median / p.pause_ms);
    Ok(MoveSummary {
        target: options.target.clone(),
        rate: options.rate,
        pause_window_ms,
        pgcopydb,
        pgcopydb_skipped,
        pause_vs_pgcopydb,
        failed: runs.iter().map(|r| r.failed).sum(),
        missing: runs.iter().map(|r| r.missing).sum(),
        duplicated: runs.iter().map(|r| r.duplicated).sum(),
        sequences_behind: runs.iter().map(|r| r.sequences_behind).sum(),
        slots_left: runs.iter().map(|r| r.slots_left).sum(),
        runs,
    })
}

/// A lab with a target node, torn down on drop.
pub struct MoveLab {
    pub config: LabConfig,
    pub target_port: u16,
}

impl MoveLab {
    /// The main lab plus node `pg1new` on PostgreSQL `version`, with the event table and its
    /// sequence in the moved database.
    pub async fn start(docs: u64, version: u32) -> Result<MoveLab, RehearsalError> {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("cutover-move-{}", uuid::Uuid::new_v4().simple()));
        let config = LabConfig::on_free_ports(&dir, docs).map_err(other)?;
        let target_port = crate::lab::proc::free_port().map_err(other)?;
        let lab = MoveLab {
            config,
            target_port,
        };
        lab::up_with_target(
            &lab.config,
            Some(TargetConfig {
                version,
                port: target_port,
            }),
        )
        .await?;
        lab.source()
            .await?
            .batch_execute(EVENTS_DDL)
            .await
            .map_err(|e| other(pg::error_chain(&e)))?;
        Ok(lab)
    }

    pub(super) fn endpoint(port: u16, dbname: &str) -> Endpoint {
        Endpoint {
            address: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            dbname: dbname.into(),
            tls: Default::default(),
        }
    }

    pub async fn source(&self) -> Result<tokio_postgres::Client, RehearsalError> {
        pg::connect(
            &Self::endpoint(self.config.pg1_port, P1_DB),
            SessionSettings::EXECUTOR,
        )
        .await
        .map_err(other)
    }

    pub async fn target(&self) -> Result<tokio_postgres::Client, RehearsalError> {
        pg::connect(
            &Self::endpoint(self.target_port, P1_DB),
            SessionSettings::EXECUTOR,
        )
        .await
        .map_err(other)
    }

    /// The run's parameters: pg1's partition database into `pg1new`; the lab's disk is small.
    pub fn params(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("from".to_string(), format!("pg1/{P1_DB}")),
            (
                "to".to_string(),
                format!("{}/{P1_DB}", lab::target::TARGET_NODE),
            ),
            ("min-free-gb".to_string(), "1".to_string()),
            ("min-free-percent".to_string(), "1".to_string()),
            ("pause-bound-ms".to_string(), "5000".to_string()),
        ])
    }

    pub fn invocation(&self, state_dir: PathBuf) -> Invocation {
        Invocation {
            inventory_path: self.config.inventory_path(),
            runbook: super::plan::RUNBOOK.into(),
            params: self.params(),
            state_dir: Some(state_dir),
            oversight: Oversight::Solo,
            trust_on_first_use: false,
            expect_fingerprint: None,
        }
    }

    /// What the move left: (missing committed ids, duplicated events, slots on the source).
    pub async fn audit(&self, committed: &[uuid::Uuid]) -> Result<(u64, u64, u64), RehearsalError> {
        let target = self.target().await?;
        let ids: Vec<String> = committed.iter().map(|id| id.to_string()).collect();
        let q = |e: tokio_postgres::Error| other(pg::error_chain(&e));
        let found: i64 = target
            .query_one(
                "SELECT count(*) FROM forms WHERE form_id::text = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(q)?
            .get(0);
        let duplicated: i64 = target
            .query_one(
                "SELECT coalesce(sum(n - 1), 0)::bigint FROM (SELECT count(*) AS n FROM form_events GROUP BY form_id HAVING count(*) > 1) d",
                &[],
            )
            .await
            .map_err(q)?
            .get(0);
        let slots: i64 = self
            .source()
            .await?
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .map_err(q)?
            .get(0);
        Ok((
            (committed.len() as u64).saturating_sub(found as u64),
            duplicated as u64,
            slots as u64,
        ))
    }
}

impl Drop for MoveLab {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.config.dir) {
            eprintln!("lab down {}: {e}", self.config.dir.display());
        }
    }
}

async fn one_move(options: &MoveRehearsalOptions, version: u32) -> Result<MoveRun, RehearsalError> {
    let lab = MoveLab::start(options.docs, version).await?;
    let inventory = crate::inventory::load(&lab.config.inventory_path()).map_err(other)?;
    let endpoint =
        load::entry_endpoint(&inventory).ok_or_else(|| other("the lab has no entry alias"))?;
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
    let started = Instant::now();
    let mut runner =
        session::open_as::<super::LogicalMove>(&lab.invocation(lab.config.dir.join("state")))
            .map_err(other)?;
    let outcome = runner.run_headless("rehearsal").await;
    let total_ms = started.elapsed().as_millis();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    let report = traffic.await.map_err(other)?.map_err(other)?;
    let memory = runner.actions_mut().memory().clone();
    let window_steps = step_times(
        &runner,
        &[
            "stop-traffic",
            "lsn-gate",
            "sequences",
            "repoint",
            "resume-traffic",
        ],
    );
    drop(runner);
    let (missing, duplicated, slots_left) = lab.audit(&report.committed_ids).await?;
    let sequences_behind = memory
        .sequences
        .iter()
        .filter(|s| s.next <= s.column_max.unwrap_or(i64::MIN))
        .count() as u64;
    Ok(MoveRun {
        pause_window_ms: memory.pause_window_ms.unwrap_or(f64::NAN),
        committed: report.committed,
        failed: report.failed,
        missing,
        duplicated,
        sequences_behind,
        sequences_checked: memory.sequences.len() as u64,
        slots_left,
        max_call_ms: report.max_call_ms,
        copy_ms: memory.copy_ms,
        sync_ms: memory.sync_ms,
        gate_ms: memory.gate_ms,
        gate_wait_ms: memory.gate_wait_ms,
        window_steps,
        peak_retained_bytes: memory.peak_retained_bytes,
        lag_bytes: memory.lag_samples.iter().map(|(_, b)| *b).collect(),
        total_ms,
        error: outcome.err().map(|e| e.to_string()),
    })
}

/// Started → verified time of each of `steps`, from the run's journal.
fn step_times<A: crate::executor::Actions>(
    runner: &crate::executor::Runner<A>,
    steps: &[&str],
) -> BTreeMap<String, f64> {
    let entries = runner.journal().entries(&runner.run_id).unwrap_or_default();
    let mut times = crate::engine::step_durations_ms(&entries);
    times.retain(|step, _| steps.contains(&step.as_str()));
    times
}

/// The application's function on the coordinator: citus-bootstrap brings the distributed
/// tables, not the functions.
const INSERT_FORM_SQL: &str = "CREATE OR REPLACE FUNCTION insert_form(form_id uuid, domain text, payload jsonb) RETURNS uuid LANGUAGE sql AS $$ \
INSERT INTO forms (form_id, domain, received_on, payload) VALUES ($1, $2, now(), $3) RETURNING form_id $$";

/// One move of pg1's `forms` into the lab's Citus cluster (bootstrapped with citus-bootstrap).
async fn one_citus_move(options: &MoveRehearsalOptions) -> Result<MoveRun, RehearsalError> {
    use crate::lab::citus::{CitusLab, COORDINATOR, DATABASE};
    let lab = CitusLab::start(options.docs, 15).await?;
    let state = lab.config.dir.join("state");
    let mut bootstrap =
        crate::runbooks::citus_bootstrap::rehearse::lab_invocation(&lab, state.join("bootstrap"));
    bootstrap.oversight = Oversight::Solo;
    session::open_as::<crate::runbooks::citus_bootstrap::CitusBootstrap>(&bootstrap)
        .map_err(other)?
        .run_headless("rehearsal")
        .await
        .map_err(other)?;
    lab.coordinator(DATABASE)
        .await?
        .batch_execute(INSERT_FORM_SQL)
        .await
        .map_err(|e| other(pg::error_chain(&e)))?;
    let endpoint =
        load::entry_endpoint(&lab.inventory).ok_or_else(|| other("the lab has no entry alias"))?;
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
    let started = Instant::now();
    let invocation = Invocation {
        inventory_path: lab.inventory_path(),
        runbook: super::plan::RUNBOOK.into(),
        params: BTreeMap::from([
            ("from".to_string(), format!("pg1/{P1_DB}")),
            ("to".to_string(), format!("{COORDINATOR}/{DATABASE}")),
            ("tables".to_string(), "forms".to_string()),
            ("min-free-gb".to_string(), "1".to_string()),
            ("min-free-percent".to_string(), "1".to_string()),
            ("pause-bound-ms".to_string(), "5000".to_string()),
        ]),
        state_dir: Some(state.join("move")),
        oversight: Oversight::Solo,
        trust_on_first_use: false,
        expect_fingerprint: None,
    };
    let mut runner = session::open_as::<super::LogicalMove>(&invocation).map_err(other)?;
    let outcome = runner.run_headless("rehearsal").await;
    let total_ms = started.elapsed().as_millis();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    let report = traffic.await.map_err(other)?.map_err(other)?;
    let memory = runner.actions_mut().memory().clone();
    let window_steps = step_times(
        &runner,
        &[
            "stop-traffic",
            "lsn-gate",
            "sequences",
            "repoint",
            "resume-traffic",
        ],
    );
    drop(runner);
    let q = |e: tokio_postgres::Error| other(pg::error_chain(&e));
    let ids: Vec<String> = report
        .committed_ids
        .iter()
        .map(|id| id.to_string())
        .collect();
    let coordinator = lab.coordinator(DATABASE).await?;
    let row = coordinator
        .query_one(
            "SELECT count(*), count(DISTINCT form_id) FROM forms WHERE form_id::text = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(q)?;
    let (found, distinct): (i64, i64) = (row.get(0), row.get(1));
    let slots: i64 = pg::connect(
        &MoveLab::endpoint(lab.config.pg1_port, P1_DB),
        SessionSettings::EXECUTOR,
    )
    .await
    .map_err(other)?
    .query_one("SELECT count(*) FROM pg_replication_slots", &[])
    .await
    .map_err(q)?
    .get(0);
    Ok(MoveRun {
        pause_window_ms: memory.pause_window_ms.unwrap_or(f64::NAN),
        committed: report.committed,
        failed: report.failed,
        missing: (ids.len() as u64).saturating_sub(distinct as u64),
        duplicated: (found - distinct) as u64,
        sequences_behind: memory
            .sequences
            .iter()
            .filter(|s| s.next <= s.column_max.unwrap_or(i64::MIN))
            .count() as u64,
        sequences_checked: memory.sequences.len() as u64,
        slots_left: slots as u64,
        max_call_ms: report.max_call_ms,
        copy_ms: memory.copy_ms,
        sync_ms: memory.sync_ms,
        gate_ms: memory.gate_ms,
        gate_wait_ms: memory.gate_wait_ms,
        window_steps,
        peak_retained_bytes: memory.peak_retained_bytes,
        lag_bytes: memory.lag_samples.iter().map(|(_, b)| *b).collect(),
        total_ms,
        error: outcome.err().map(|e| e.to_string()),
    })
}
