//! Runbook sessions: the glue between a CLI or cockpit invocation (inventory file, runbook
//! name, parameters) and a plan plus a resumable [`Runner`]. Shared by `plan`, `run`,
//! `rollback`, the cockpit, the pause guard and the lab rehearsals, so all of them resume the
//! same way, whichever runbook of the registry they name.

use crate::engine::{EngineSettings, Oversight};
use crate::executor::{Actions, RunError, Runner};
use crate::inventory::{self, Inventory, InventoryError};
use crate::journal::{self, Journal, JournalError, RunId};
use crate::plan::Plan;
use crate::runbooks::{self, Built, DynActions, RunSetup, Runbook, RunbookError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

impl From<RunError> for SessionError {
    fn from(e: RunError) -> Self {
        SessionError::Run(Box::new(e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Runbook(#[from] RunbookError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Run(Box<RunError>),
    #[error("the plan changed since it was reviewed: expected fingerprint {expected}, the plan now has {actual}; review it again with `cutover plan`")]
    FingerprintMismatch { expected: String, actual: String },
    #[error("{0}")]
    InventoryDiffers(Box<InventoryDiffers>),
    #[error("no unfinished {runbook} run on environment {environment} to abandon")]
    NothingToAbandon {
        environment: String,
        runbook: String,
    },
    #[error("run {run_id} has traffic paused or a step half-run; roll it back (`cutover rollback`) before abandoning it")]
    AbandonWhileLive { run_id: RunId },
    #[error("pair mode: no second operator (another OS user) approved plan {fingerprint}; they review it with `cutover plan INV RUNBOOK ...` and approve it with `--approve`")]
    PlanNotApproved { fingerprint: String },
}

/// The unfinished run started from an inventory whose content differs from the one given.
#[derive(Debug)]
pub struct InventoryDiffers {
    pub run_id: RunId,
    pub runbook: String,
    pub given_path: PathBuf,
    pub given_fingerprint: String,
    pub recorded_path: PathBuf,
    pub recorded_fingerprint: String,
    /// `-` recorded, `+` given.
    pub diff: String,
}

impl std::fmt::Display for InventoryDiffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = self.given_path.display();
        writeln!(
            f,
            "run {} of {} is unfinished and started from an inventory with other content; refusing to act on it with this one.",
            self.run_id, self.runbook
        )?;
        writeln!(
            f,
            "  given:    {given} (fingerprint {})",
            self.given_fingerprint
        )?;
        writeln!(
            f,
            "  recorded: {} (fingerprint {})",
            self.recorded_path.display(),
            self.recorded_fingerprint
        )?;
        writeln!(f, "  changed lines (- recorded, + given):")?;
        for line in self.diff.lines() {
            writeln!(f, "    {line}")?;
        }
        writeln!(f, "Go on with one of:")?;
        writeln!(
            f,
            "  resume it with the inventory it started with: put {} back at {given} (or give the file it came from), then run again",
            self.recorded_path.display()
        )?;
        writeln!(
            f,
            "  roll it back: cutover rollback <that inventory> {} --back-to STEP",
            self.runbook
        )?;
        write!(
            f,
            "  abandon it (journaled, never resumed): cutover abandon {given} {} --reason TEXT",
            self.runbook
        )
    }
}

impl SessionError {
    /// The operator's input is wrong (exit code 2), as opposed to a failure of the run.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            SessionError::Inventory(_)
            | SessionError::FingerprintMismatch { .. }
            | SessionError::InventoryDiffers(_)
            | SessionError::NothingToAbandon { .. }
            | SessionError::AbandonWhileLive { .. }
            | SessionError::PlanNotApproved { .. } => true,
            SessionError::Runbook(e) => e.is_invalid_input(),
            SessionError::Journal(_) | SessionError::Run(_) => false,
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub inventory_path: PathBuf,
    pub runbook: String,
    pub params: BTreeMap<String, String>,
    pub state_dir: Option<PathBuf>,
    pub oversight: Oversight,
    pub trust_on_first_use: bool,
    pub expect_fingerprint: Option<String>,
}

/// Generate the plan of `runbook` on `inventory`, for review (`cutover plan`).
pub fn plan(
    inventory: &Inventory,
    runbook: &str,
    params: &BTreeMap<String, String>,
) -> Result<Plan, SessionError> {
    Ok(runbooks::find(runbook)?.build(inventory, params)?.plan)
}

fn run_dir(state_dir: &Path, run_id: &RunId) -> PathBuf {
    state_dir.join("runs").join(&run_id.0)
}

const PLAN_INVENTORY: &str = "inventory.plan.yaml";

/// The runner of whichever runbook an invocation names; the CLI and the cockpit drive this.
pub type AnyRunner = Runner<Box<dyn DynActions>>;

/// Open the run of whichever runbook `invocation` names.
pub fn open(invocation: &Invocation) -> Result<AnyRunner, SessionError> {
    let runbook = runbooks::find(&invocation.runbook)?;
    open_run(invocation, |inventory, params| {
        runbook.build(inventory, params)
    })
}

/// Open a run of `R` with its concrete effects (rehearsals and tests inspect them).
pub fn open_as<R: Runbook>(invocation: &Invocation) -> Result<Runner<R::Effects>, SessionError> {
    open_run(invocation, runbooks::build::<R>)
}

/// Resume the unfinished run of this environment and runbook (planned from the inventory it
/// started with, since a run may rewrite the file), or start a new one from the current
/// inventory. `build` turns an inventory and parameters into the plan and its effects.
fn open_run<A, F>(invocation: &Invocation, build: F) -> Result<Runner<A>, SessionError>
where
    A: Actions,
    F: FnOnce(&Inventory, &BTreeMap<String, String>) -> Result<Built<A>, RunbookError>,
{
    let state_dir = journal::resolve_state_dir(invocation.state_dir.as_deref())?;
    let journal = Journal::open(&state_dir)?;
    let (planned_from, params) = planned_inventory(invocation, &state_dir, &journal)?;
    let Built {
        plan,
        effects: make_effects,
    } = build(&planned_from, &params)?;
    if invocation.oversight == Oversight::Pair {
        check_plan_approved(&journal, &plan)?;
    }
    if let Some(expected) = &invocation.expect_fingerprint {
        let actual = plan.fingerprint();
        if &actual != expected {
            return Err(SessionError::FingerprintMismatch {
                expected: expected.clone(),
                actual,
            });
        }
    }
    let settings = EngineSettings {
        oversight: invocation.oversight,
    };
    // The run directory this call made: removed again if no step is ever confirmed.
    let mut made_dir = None;
    let mut runner = Runner::open(journal, plan, settings, |run_id| {
        let dir = run_dir(&state_dir, run_id);
        let existed = dir.exists();
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !existed {
            made_dir = Some(dir.clone());
        }
        let saved = dir.join(PLAN_INVENTORY);
        if !saved.exists() {
            let text = inventory::to_yaml(&planned_from).map_err(|e| e.to_string())?;
            std::fs::write(&saved, text).map_err(|e| format!("{}: {e}", saved.display()))?;
        }
        make_effects(RunSetup {
            inventory_path: invocation.inventory_path.clone(),
            run_dir: dir,
            trust_on_first_use: invocation.trust_on_first_use,
        })
    })?;
    // A run never recorded (no step confirmed) leaves no directory behind either.
    if let (Some(dir), false) = (made_dir, runner.is_recorded()) {
        runner.on_discard(Box::new(move || {
            let _ = std::fs::remove_dir_all(&dir);
        }));
    }
    Ok(runner)
}

/// The inventory and parameters a run of `invocation` is planned from: those of the unfinished
/// run (the inventory it started with, which must match the given one but for the run's own
/// rewrite; its parameters when none are given), else the given ones.
fn planned_inventory(
    invocation: &Invocation,
    state_dir: &Path,
    journal: &Journal,
) -> Result<(Inventory, BTreeMap<String, String>), SessionError> {
    let current = inventory::load(&invocation.inventory_path)?;
    let unfinished = journal.latest_unfinished_run(&current.environment, &invocation.runbook)?;
    let planned_from = match &unfinished {
        Some(meta) => {
            let dir = run_dir(state_dir, &meta.run_id);
            match std::fs::read_to_string(dir.join(PLAN_INVENTORY)) {
                Ok(text) => {
                    let recorded = inventory::parse(&text, PLAN_INVENTORY)?;
                    check_same_inventory(invocation, meta, &dir, &recorded, &current)?;
                    recorded
                }
                Err(_) => current.clone(),
            }
        }
        None => current.clone(),
    };
    let params = match unfinished {
        Some(meta) if invocation.params.is_empty() => meta.params,
        _ => invocation.params.clone(),
    };
    Ok((planned_from, params))
}

/// The plan a run of `invocation` drives, exactly as `open` would plan it, without opening,
/// locking or creating a run: what the second operator reviews and approves.
pub fn review_plan(invocation: &Invocation) -> Result<(Plan, Journal), SessionError> {
    let state_dir = journal::resolve_state_dir(invocation.state_dir.as_deref())?;
    let journal = Journal::open(&state_dir)?;
    let (planned_from, params) = planned_inventory(invocation, &state_dir, &journal)?;
    Ok((plan(&planned_from, &invocation.runbook, &params)?, journal))
}

/// Pair mode drives only a plan another OS user approved (`cutover plan ... --approve`).
fn check_plan_approved(journal: &Journal, plan: &Plan) -> Result<(), SessionError> {
    let fingerprint = plan.fingerprint();
    let verdicts = journal.plan_verdicts(&fingerprint)?;
    let me = nix::unistd::getuid().as_raw();
    match crate::approval::plan_approved_by_other(&fingerprint, me, &verdicts) {
        Some(_) => Ok(()),
        None => Err(SessionError::PlanNotApproved { fingerprint }),
    }
}

/// Normalized text of an inventory (what it means, not how the file spells it).
fn normalized(inventory: &Inventory) -> String {
    inventory::to_yaml(inventory).unwrap_or_default()
}

fn short_sha(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// An unfinished run goes on only with the inventory it started from, or with the file as the
/// run itself last rewrote it (the re-route's rewrite is the one expected difference).
fn check_same_inventory(
    invocation: &Invocation,
    meta: &journal::RunMeta,
    dir: &Path,
    recorded: &Inventory,
    current: &Inventory,
) -> Result<(), SessionError> {
    let given = normalized(current);
    let started = normalized(recorded);
    if given == started {
        return Ok(());
    }
    let rewritten =
        std::fs::read_to_string(dir.join(crate::executor::context::INVENTORY_REWRITTEN))
            .ok()
            .and_then(|text| inventory::parse(&text, "inventory.rewritten.yaml").ok())
            .map(|inv| normalized(&inv));
    if rewritten.as_deref() == Some(given.as_str()) {
        return Ok(());
    }
    Err(SessionError::InventoryDiffers(Box::new(InventoryDiffers {
        run_id: meta.run_id.clone(),
        runbook: meta.runbook.clone(),
        given_path: invocation.inventory_path.clone(),
        given_fingerprint: short_sha(&given),
        recorded_path: dir.join(PLAN_INVENTORY),
        recorded_fingerprint: short_sha(&started),
        diff: changed_lines(&started, &given),
    })))
}

/// Only the lines that differ, `-` recorded and `+` given.
fn changed_lines(recorded: &str, given: &str) -> String {
    similar::TextDiff::from_lines(recorded, given)
        .iter_all_changes()
        .filter_map(|change| match change.tag() {
            similar::ChangeTag::Delete => Some(format!("- {}", change.value().trim_end())),
            similar::ChangeTag::Insert => Some(format!("+ {}", change.value().trim_end())),
            similar::ChangeTag::Equal => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Give up the unfinished run of this environment and runbook: journaled with who and why,
/// never resumed. Refused while traffic is paused or a step may be half-run.
pub fn abandon(invocation: &Invocation, by: &str, reason: &str) -> Result<RunId, SessionError> {
    let state_dir = journal::resolve_state_dir(invocation.state_dir.as_deref())?;
    let journal = Journal::open(&state_dir)?;
    let current = inventory::load(&invocation.inventory_path)?;
    let Some(meta) = journal.latest_unfinished_run(&current.environment, &invocation.runbook)?
    else {
        return Err(SessionError::NothingToAbandon {
            environment: current.environment.clone(),
            runbook: invocation.runbook.clone(),
        });
    };
    let _driver = journal.lock_driver(&meta.environment, &meta.runbook)?;
    let live = Plan::from_json(&meta.plan_json)
        .ok()
        .and_then(|plan| {
            let entries = journal.entries(&meta.run_id).ok()?;
            crate::engine::EngineState::replay(&plan, EngineSettings::default(), entries.iter())
                .ok()
        })
        .is_some_and(|state| {
            state.traffic_paused()
                || state.steps.iter().any(|s| {
                    matches!(
                        s,
                        crate::engine::StepStatus::NeedsRecheck { .. }
                            | crate::engine::StepStatus::UndoNeedsRecheck { .. }
                    )
                })
        });
    if live {
        return Err(SessionError::AbandonWhileLive {
            run_id: meta.run_id,
        });
    }
    let entry = crate::engine::JournalEntry::new(
        chrono::Utc::now(),
        None,
        crate::engine::EntryKind::Note,
        format!("run abandoned: {reason}"),
    )
    .with_actors(vec![by.to_string()]);
    journal.append(&meta.run_id, &entry)?;
    journal.finish_run(&meta.run_id, journal::RunStatus::Abandoned)?;
    Ok(meta.run_id)
}
