//! The `shard-split` runbook (seed 000): move the upper shards of a partition to a spare node by
//! streaming replication and promotion, inside a bounded write pause.

pub mod effects;
pub mod plan;
pub mod rehearse;
pub mod steps;

pub use steps::SplitStep;

use crate::inventory::Inventory;
use crate::plan::Plan;
use crate::runbooks::{Rehearsal, RunSetup, Runbook, RunbookError};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct ShardSplit;

/// `cutover run INV shard-split ...`: the flags of a split.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SplitArgs {
    /// Partition that gives up shards, e.g. p1.
    #[arg(long)]
    pub from: Option<String>,
    /// The new partition, e.g. p2.
    #[arg(long)]
    pub to: Option<String>,
    /// The spare node that becomes the new partition's primary.
    #[arg(long)]
    pub node: Option<String>,
    /// Inclusive range moved, FIRST-LAST: the upper part of --from's range.
    #[arg(long)]
    pub shards: Option<String>,
    /// Longest write pause before traffic resumes by itself and the run rolls back.
    #[arg(long, value_name = "MS")]
    pub pause_bound_ms: Option<u64>,
}

impl Runbook for ShardSplit {
    const NAME: &'static str = plan::RUNBOOK;
    const ABOUT: &'static str = "Move the upper shards of a partition to a spare node (streaming replication, promotion, bounded pause)";
    type Args = SplitArgs;
    type Step = SplitStep;
    type Resolved = plan::Split;
    type Effects = effects::ShardSplitActions;

    fn resolve(
        inventory: &Inventory,
        params: &BTreeMap<String, String>,
    ) -> Result<plan::Split, RunbookError> {
        plan::Split::resolve(inventory, plan::SplitParams::from_map(params)?)
    }
    fn plan(split: &plan::Split) -> Result<Plan, RunbookError> {
        split.plan()
    }
    fn effects(split: plan::Split, setup: RunSetup) -> Result<Self::Effects, String> {
        effects::ShardSplitActions::new(
            split,
            setup.inventory_path,
            setup.run_dir,
            setup.trust_on_first_use,
        )
    }
    type RehearseArgs = rehearse::RehearsalOptions;
    fn rehearse(args: Self::RehearseArgs) -> BoxFuture<'static, Result<Rehearsal, String>> {
        Box::pin(async move {
            let rate = args.rate;
            let summary = rehearse::shard_split(&args)
                .await
                .map_err(|e| e.to_string())?;
            Rehearsal::new(summary.human(rate), &summary, summary.clean())
        })
    }

    fn pause_bound(plan: &Plan) -> Duration {
        plan::SplitParams::from_map(&plan.params)
            .map(|p| p.pause_bound)
            .unwrap_or(plan::DEFAULT_PAUSE_BOUND)
    }
}
