//! The `major-upgrade` runbook (seed 003): move every database of a cluster to a new major
//! version by dump and restore or by `pg_upgrade`, keeping the old cluster as the way back.

pub mod effects;
pub mod plan;
pub mod rehearse;
pub mod steps;

pub use steps::UpgradeStep;

use crate::inventory::Inventory;
use crate::plan::Plan;
use crate::runbooks::{Rehearsal, RunSetup, Runbook, RunbookError};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct MajorUpgrade;

/// `cutover run INV major-upgrade ...`: the flags of an upgrade.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct UpgradeArgs {
    /// The node on the old major version.
    #[arg(long)]
    pub from: Option<String>,
    /// The empty node on the new major version.
    #[arg(long)]
    pub to: Option<String>,
    /// dumpall (default), parallel, pg-upgrade (--link) or pg-upgrade-copy.
    #[arg(long)]
    pub method: Option<String>,
    /// Parallel jobs for pg_dump/pg_restore/pg_upgrade (1–64; default 4).
    #[arg(long)]
    pub jobs: Option<u32>,
    /// `pause` (traffic hooks plus pgbouncer PAUSE, bounded; the default) or `hooks` (the
    /// hooks alone: a plain downtime window).
    #[arg(long)]
    pub traffic: Option<String>,
    /// Restore into a scratch cluster of the target version first.
    #[arg(long)]
    pub test_restore: bool,
    /// Absolute directory for the dump on the hosts (default: next to the data).
    #[arg(long)]
    pub dump_dir: Option<String>,
    /// Longest write pause before traffic resumes on the source and the run rolls back.
    #[arg(long, value_name = "MS")]
    pub pause_bound_ms: Option<u64>,
    /// Least time traffic runs on the new cluster before retire-old-cluster may start
    /// (default 1800).
    #[arg(long, value_name = "SECONDS")]
    pub min_soak_s: Option<u64>,
}

impl Runbook for MajorUpgrade {
    const NAME: &'static str = plan::RUNBOOK;
    const ABOUT: &'static str =
        "Move a cluster to a new PostgreSQL major version (dumpall, parallel dump, pg_upgrade)";
    type Args = UpgradeArgs;
    type Step = UpgradeStep;
    type Resolved = plan::Upgrade;
    type Effects = effects::MajorUpgradeActions;

    fn resolve(
        inventory: &Inventory,
        params: &BTreeMap<String, String>,
    ) -> Result<plan::Upgrade, RunbookError> {
        plan::Upgrade::resolve(inventory, plan::UpgradeParams::from_map(params)?)
    }
    fn plan(upgrade: &plan::Upgrade) -> Result<Plan, RunbookError> {
        upgrade.plan()
    }
    fn effects(upgrade: plan::Upgrade, setup: RunSetup) -> Result<Self::Effects, String> {
        effects::MajorUpgradeActions::new(
            upgrade,
            setup.inventory_path,
            setup.run_dir,
            setup.trust_on_first_use,
        )
    }
    type RehearseArgs = rehearse::UpgradeRehearsalOptions;
    fn rehearse(args: Self::RehearseArgs) -> BoxFuture<'static, Result<Rehearsal, String>> {
        Box::pin(async move {
            let summary = rehearse::major_upgrade(&args)
                .await
                .map_err(|e| e.to_string())?;
            Rehearsal::new(summary.human(), &summary, summary.error.is_none())
        })
    }

    fn pause_bound(plan: &Plan) -> Duration {
        plan::UpgradeParams::from_map(&plan.params)
            .map(|p| p.pause_bound)
            .unwrap_or(plan::DEFAULT_PAUSE_BOUND)
    }
}
