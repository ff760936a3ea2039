//! Runbook sessions: the glue between a CLI or cockpit invocation (inventory file, runbook
//! name, parameters) and a plan plus a resumable [`Runner`]. Shared by `plan`, `run`,
//! `rollback`, the cockpit and the lab rehearsal, so all of them resume the same way.

use crate::engine::{EngineSettings, Oversight};
use crate::engine::{EngineState, Observation, PreconditionResult};
use crate::executor::major_upgrade::MajorUpgradeActions;
use crate::executor::shard_split::ShardSplitActions;
use crate::executor::{Actions, RunError, Runner, Sink};
use crate::inventory::{self, Inventory, InventoryError};
use crate::journal::{self, Journal, JournalError, RunId};
use crate::runbook::major_upgrade::{Upgrade, UpgradeError, UpgradeParams};
use crate::runbook::shard_split::{Split, SplitError, SplitParams};
use crate::runbook::{Plan, Step};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    Split(#[from] SplitError),
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Run(Box<RunError>),
    #[error("unknown runbook `{0}`; known: shard-split, major-upgrade")]
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

/// Generate the plan of `runbook` on `inventory`, for review (`cutover plan`).
pub fn plan(
    inventory: &Inventory,
    runbook: &str,
    params: &BTreeMap<String, String>,
) -> Result<Plan, SessionError> {
    match runbook {
        crate::runbook::shard_split::RUNBOOK => Ok(shard_split_run(inventory, params)?.0),
        crate::runbook::major_upgrade::RUNBOOK => Ok(major_upgrade_run(inventory, params)?.0),
        other => Err(SessionError::UnknownRunbook(other.to_string())),
    }
}

/// A runbook's plan and how to build its actions once the run (and its directory) exists.
type Built<A> = (Plan, Box<dyn FnOnce(RunSetup) -> Result<A, String>>);

fn shard_split_run(
    inventory: &Inventory,
    params: &BTreeMap<String, String>,
) -> Result<Built<ShardSplitActions>, SessionError> {
    let split = Split::resolve(
        inventory,
        SplitParams::from_map(params).map_err(SplitError::Param)?,
    )?;
    let plan = split.plan()?;
    Ok((
        plan,
        Box::new(move |setup: RunSetup| {
            ShardSplitActions::new(
                split,
                setup.inventory_path,
                setup.run_dir,
                setup.trust_on_first_use,
            )
        }),
    ))
}

fn major_upgrade_run(
    inventory: &Inventory,
    params: &BTreeMap<String, String>,
) -> Result<Built<MajorUpgradeActions>, SessionError> {
    let upgrade = Upgrade::resolve(
        inventory,
        UpgradeParams::from_map(params).map_err(UpgradeError::Param)?,
    )?;
    let plan = upgrade.plan()?;
    Ok((
        plan,
        Box::new(move |setup: RunSetup| {
            MajorUpgradeActions::new(
                upgrade,
                setup.inventory_path,
                setup.run_dir,
                setup.trust_on_first_use,
            )
        }),
    ))
}

/// Wrap a runbook's concrete actions into [`RunbookActions`].
fn erased<A: 'static>(built: Built<A>, wrap: fn(A) -> RunbookActions) -> Built<RunbookActions> {
    let (plan, make) = built;
    (plan, Box::new(move |setup| make(setup).map(wrap)))
}

fn run_dir(state_dir: &Path, run_id: &RunId) -> PathBuf {
    state_dir.join("runs").join(&run_id.0)
}

const PLAN_INVENTORY: &str = "inventory.plan.yaml";

/// The actions of whichever runbook an invocation names; the CLI and the cockpit drive this.
pub enum RunbookActions {
    ShardSplit(Box<ShardSplitActions>),
    MajorUpgrade(Box<MajorUpgradeActions>),
}

impl Actions for RunbookActions {
    async fn preconditions(&mut self, step: &Step) -> Vec<PreconditionResult> {
        match self {
            RunbookActions::ShardSplit(a) => a.preconditions(step).await,
            RunbookActions::MajorUpgrade(a) => Box::pin(a.preconditions(step)).await,
        }
    }
    async fn observations(&mut self, step: &Step) -> Vec<Observation> {
        match self {
            RunbookActions::ShardSplit(a) => a.observations(step).await,
            RunbookActions::MajorUpgrade(a) => Box::pin(a.observations(step)).await,
        }
    }
    async fn action(&mut self, step: &Step, recheck: bool, sink: Sink) -> Result<String, String> {
        match self {
            RunbookActions::ShardSplit(a) => a.action(step, recheck, sink).await,
            RunbookActions::MajorUpgrade(a) => Box::pin(a.action(step, recheck, sink)).await,
        }
    }
    async fn undo(&mut self, step: &Step, recheck: bool, sink: Sink) -> Result<String, String> {
        match self {
            RunbookActions::ShardSplit(a) => a.undo(step, recheck, sink).await,
            RunbookActions::MajorUpgrade(a) => Box::pin(a.undo(step, recheck, sink)).await,
        }
    }
    async fn force_resume(&mut self, sink: Sink) -> Result<String, String> {
        match self {
            RunbookActions::ShardSplit(a) => a.force_resume(sink).await,
            RunbookActions::MajorUpgrade(a) => Box::pin(a.force_resume(sink)).await,
        }
    }
    fn pause_bound(&self) -> Duration {
        match self {
            RunbookActions::ShardSplit(a) => a.pause_bound(),
            RunbookActions::MajorUpgrade(a) => a.pause_bound(),
        }
    }
    fn baseline(&self) -> Vec<crate::executor::BaselineCount> {
        match self {
            RunbookActions::ShardSplit(a) => a.baseline(),
            RunbookActions::MajorUpgrade(a) => a.baseline(),
        }
    }
    fn resume_is_safe(&self, plan: &Plan, state: &EngineState) -> bool {
        match self {
            RunbookActions::ShardSplit(a) => a.resume_is_safe(plan, state),
            RunbookActions::MajorUpgrade(a) => a.resume_is_safe(plan, state),
        }
    }
}

/// Open the run of whichever runbook `invocation` names.
pub fn open(invocation: &Invocation) -> Result<Runner<RunbookActions>, SessionError> {
    match invocation.runbook.as_str() {
        crate::runbook::shard_split::RUNBOOK => open_run(invocation, |inventory, params| {
            Ok(erased(shard_split_run(inventory, params)?, |a| {
                RunbookActions::ShardSplit(Box::new(a))
            }))
        }),
        crate::runbook::major_upgrade::RUNBOOK => open_run(invocation, |inventory, params| {
            Ok(erased(major_upgrade_run(inventory, params)?, |a| {
                RunbookActions::MajorUpgrade(Box::new(a))
            }))
        }),
        other => Err(SessionError::UnknownRunbook(other.to_string())),
    }
}

/// Open a shard-split run with its concrete actions (rehearsals and tests inspect them).
pub fn open_shard_split(
    invocation: &Invocation,
) -> Result<Runner<ShardSplitActions>, SessionError> {
    open_run(invocation, shard_split_run)
}

/// Open a major-upgrade run with its concrete actions (rehearsals and tests inspect them).
pub fn open_major_upgrade(
    invocation: &Invocation,
) -> Result<Runner<MajorUpgradeActions>, SessionError> {
    open_run(invocation, major_upgrade_run)
}

/// What a runbook's actions get when its run opens.
pub struct RunSetup {
    pub inventory_path: PathBuf,
    /// Per-run directory in the state dir for backups and values later steps need.
    pub run_dir: PathBuf,
    pub trust_on_first_use: bool,
}

/// Resume the unfinished run of this environment and runbook (planned from the inventory it
/// started with, since a run may rewrite the file), or start a new one from the current
/// inventory. `build` turns an inventory and parameters into the plan and its actions.
fn open_run<A, F>(invocation: &Invocation, build: F) -> Result<Runner<A>, SessionError>
where
    A: Actions,
    F: FnOnce(&Inventory, &BTreeMap<String, String>) -> Result<Built<A>, SessionError>,
{
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
    let (plan, make_actions) = build(&planned_from, &invocation.params)?;
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
        make_actions(RunSetup {
            inventory_path: invocation.inventory_path.clone(),
            run_dir: dir,
            trust_on_first_use: invocation.trust_on_first_use,
        })
    })?;
    Ok(runner)
}
