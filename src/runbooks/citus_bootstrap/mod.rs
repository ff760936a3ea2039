//! The `citus-bootstrap` runbook (seed 002): create the database and the extension on every
//! node of an inventory's Citus cluster, register the coordinator and the workers, verify the
//! cluster, then create and distribute its tables — each step undoable down to nothing.

pub mod effects;
pub mod plan;
pub mod rehearse;
pub mod steps;

pub use steps::CitusStep;

use crate::inventory::Inventory;
use crate::plan::Plan;
use crate::runbooks::{Rehearsal, RunSetup, Runbook, RunbookError};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct CitusBootstrap;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BootstrapArgs {
    /// The inventory's Citus cluster to set up.
    #[arg(long)]
    pub cluster: Option<String>,
    /// NODE/DB whose table definitions are copied to the coordinator (pg_dump --schema-only
    /// with the source's tools); without it the tables must exist on the coordinator.
    #[arg(long, value_name = "NODE/DB")]
    pub schema_from: Option<String>,
    /// Let the run add citus to shared_preload_libraries and restart the nodes that lack it.
    #[arg(long)]
    pub allow_restart: bool,
}

impl Runbook for CitusBootstrap {
    const NAME: &'static str = plan::RUNBOOK;
    const ABOUT: &'static str =
        "Set up a Citus cluster: database, extension, coordinator, workers, distributed tables";
    type Args = BootstrapArgs;
    type Step = CitusStep;
    type Resolved = plan::Bootstrap;
    type Effects = effects::CitusBootstrapActions;

    fn resolve(
        inventory: &Inventory,
        params: &BTreeMap<String, String>,
    ) -> Result<plan::Bootstrap, RunbookError> {
        plan::Bootstrap::resolve(inventory, plan::BootstrapParams::from_map(params)?)
    }
    fn plan(bootstrap: &plan::Bootstrap) -> Result<Plan, RunbookError> {
        bootstrap.plan()
    }
    fn effects(bootstrap: plan::Bootstrap, setup: RunSetup) -> Result<Self::Effects, String> {
        effects::CitusBootstrapActions::new(bootstrap, setup.run_dir, setup.trust_on_first_use)
    }
    fn pause_bound(_plan: &Plan) -> Duration {
        plan::PAUSE_BOUND
    }

    type RehearseArgs = rehearse::BootstrapRehearsalOptions;
    fn rehearse(args: Self::RehearseArgs) -> BoxFuture<'static, Result<Rehearsal, String>> {
        Box::pin(async move {
            let report = rehearse::citus_bootstrap(&args)
                .await
                .map_err(|e| e.to_string())?;
            Rehearsal::new(report.human(), &report, report.error.is_none())
        })
    }
}
