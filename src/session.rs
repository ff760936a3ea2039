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
}

impl SessionError {
    /// The operator's input is wrong (exit code 2), as opposed to a failure of the run.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            SessionError::Inventory(_) | SessionError::FingerprintMismatch { .. } => true,
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
    let current = inventory::load(&invocation.inventory_path)?;
    let unfinished = journal.latest_unfinished_run(&current.environment, &invocation.runbook)?;
    let planned_from = match &unfinished {
        Some(meta) => {
            match std::fs::read_to_string(run_dir(&state_dir, &meta.run_id).join(PLAN_INVENTORY)) {
                Ok(text) => inventory::parse(&text, PLAN_INVENTORY)?,
                Err(_) => current.clone(),
            }
        }
        None => current.clone(),
    };
    // Given no parameters, an unfinished run goes on (or rolls back) with its own.
    let params = match &unfinished {
        Some(meta) if invocation.params.is_empty() => &meta.params,
        _ => &invocation.params,
    };
    let Built {
        plan,
        effects: make_effects,
    } = build(&planned_from, params)?;
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
    let runner = Runner::open(journal, plan, settings, |run_id| {
        let dir = run_dir(&state_dir, run_id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
    Ok(runner)
}
