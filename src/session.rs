//! Runbook sessions: the glue between a CLI or cockpit invocation (inventory file, runbook
//! name, parameters) and a plan plus a resumable [`Runner`]. Shared by `plan`, `run`,
//! `rollback`, the cockpit and the lab rehearsal, so all of them resume the same way.

use crate::engine::{EngineSettings, Oversight};
use crate::executor::shard_split::ShardSplitActions;
use crate::executor::{RunError, Runner};
use crate::inventory::{self, Inventory, InventoryError};
use crate::journal::{self, Journal, JournalError, RunId};
use crate::runbook::shard_split::{Split, SplitError, SplitParams};
use crate::runbook::Plan;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("unknown runbook `{0}`; known: shard-split")]
    UnknownRunbook(String),
    #[error("the plan changed since it was reviewed: expected fingerprint {expected}, the plan now has {actual}; review it again with `cutover plan`")]
    FingerprintMismatch { expected: String, actual: String },
    #[error("{0}")]
    Io(String),
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

/// A generated plan with what produced it.
pub struct Planned {
    pub plan: Plan,
    pub split: Split,
}

/// Generate the plan of `runbook` on `inventory`.
pub fn plan(
    inventory: &Inventory,
    runbook: &str,
    params: &BTreeMap<String, String>,
) -> Result<Planned, SessionError> {
    match runbook {
        crate::runbook::shard_split::RUNBOOK => {
            let split = Split::resolve(
                inventory,
                SplitParams::from_map(params).map_err(SplitError::Param)?,
            )?;
            Ok(Planned {
                plan: split.plan()?,
                split,
            })
        }
        other => Err(SessionError::UnknownRunbook(other.to_string())),
    }
}

fn run_dir(state_dir: &Path, run_id: &RunId) -> PathBuf {
    state_dir.join("runs").join(&run_id.0)
}

const PLAN_INVENTORY: &str = "inventory.plan.yaml";

/// Open the run for this invocation: resume the unfinished one of this environment and
/// runbook (planned from the inventory it started with, since the re-route rewrites the
/// file), or start a new one from the current inventory.
pub fn open_shard_split(
    invocation: &Invocation,
) -> Result<Runner<ShardSplitActions>, SessionError> {
    let state_dir = journal::resolve_state_dir(invocation.state_dir.as_deref())?;
    let journal = Journal::open(&state_dir)?;
    let current = inventory::load(&invocation.inventory_path)?;
    let planned_from =
        match journal.latest_unfinished_run(&current.environment, &invocation.runbook)? {
            Some(meta) => match std::fs::read_to_string(
                run_dir(&state_dir, &meta.run_id).join(PLAN_INVENTORY),
            ) {
                Ok(text) => inventory::parse(&text, PLAN_INVENTORY)?,
                Err(_) => current.clone(),
            },
            None => current.clone(),
        };
    let Planned { plan, split } = plan(&planned_from, &invocation.runbook, &invocation.params)?;
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
    let inventory_path = invocation.inventory_path.clone();
    let trust = invocation.trust_on_first_use;
    let runner = Runner::open(journal, plan, settings, |run_id| {
        let dir = run_dir(&state_dir, run_id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let saved = dir.join(PLAN_INVENTORY);
        if !saved.exists() {
            let text = inventory::to_yaml(&planned_from).map_err(|e| e.to_string())?;
            std::fs::write(&saved, text).map_err(|e| format!("{}: {e}", saved.display()))?;
        }
        ShardSplitActions::new(split, inventory_path, dir, trust)
    })?;
    Ok(runner)
}
