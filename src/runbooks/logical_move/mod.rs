//! The `logical-move` runbook (seed 001): move a live database to another PostgreSQL cluster
//! (same or newer major version: an online major upgrade) by logical replication. The initial
//! copy runs under the slot's exported snapshot with the table-copy engine, a native
//! subscription streams the rest, and the cutover is a bounded pgbouncer PAUSE with an LSN gate.

pub mod effects;
pub mod pgcopydb;
pub mod plan;
pub mod rehearse;
pub mod slot;
pub mod steps;

pub use steps::MoveStep;

use crate::inventory::Inventory;
use crate::plan::Plan;
use crate::runbooks::{Rehearsal, RunSetup, Runbook, RunbookError};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct LogicalMove;

/// `cutover run INV logical-move ...`
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MoveArgs {
    /// NODE/DB to move from.
    #[arg(long, value_name = "NODE/DB")]
    pub from: Option<String>,
    /// NODE/DB to move into (created from the source's schema when absent).
    #[arg(long, value_name = "NODE/DB")]
    pub to: Option<String>,
    /// Only these tables (comma-separated; `schema.table` or `table` in public).
    #[arg(long, value_name = "T,...")]
    pub tables: Option<String>,
    /// Tables left out (e.g. without a primary key or replica identity).
    #[arg(long, value_name = "T,...")]
    pub exclude: Option<String>,
    /// Longest write pause before traffic resumes on the source and the run rolls back.
    #[arg(long, value_name = "MS")]
    pub pause_bound_ms: Option<u64>,
    /// Added to every sequence at the cutover, past its source value and column maximum.
    #[arg(long, value_name = "N")]
    pub sequence_gap: Option<u64>,
    /// Free disk the source needs, in GB (the seed's 100), or --min-free-percent, the larger.
    #[arg(long, value_name = "GB")]
    pub min_free_gb: Option<u64>,
    /// Free disk the source needs, in percent of its disk (the seed's 20).
    #[arg(long, value_name = "PERCENT")]
    pub min_free_percent: Option<u64>,
    /// Slot lag in bytes under which the target counts as in sync before the pause.
    #[arg(long, value_name = "BYTES")]
    pub sync_bytes: Option<u64>,
    /// Tables copied at once in the initial copy. Not part of the plan.
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// A way back (plain PostgreSQL target): a reverse stream target → source started at the
    /// cutover, a held `move-back` step, and a final `retire-reverse-stream` step.
    #[arg(long)]
    pub reverse_stream: bool,
}

impl Runbook for LogicalMove {
    const NAME: &'static str = plan::RUNBOOK;
    const ABOUT: &'static str =
        "Move a live database to another cluster (same or newer major) by logical replication";
    type Args = MoveArgs;
    type Step = MoveStep;
    type Resolved = plan::Move;
    type Effects = effects::LogicalMoveActions;

    fn resolve(
        inventory: &Inventory,
        params: &BTreeMap<String, String>,
    ) -> Result<plan::Move, RunbookError> {
        plan::Move::resolve(inventory, plan::MoveParams::from_map(params)?)
    }
    fn plan(resolved: &plan::Move) -> Result<Plan, RunbookError> {
        resolved.plan()
    }
    fn effects(resolved: plan::Move, setup: RunSetup) -> Result<Self::Effects, String> {
        effects::LogicalMoveActions::new(resolved, setup)
    }
    fn pause_bound(plan: &Plan) -> Duration {
        plan::MoveParams::from_map(&plan.params)
            .map(|p| p.pause_bound)
            .unwrap_or(plan::DEFAULT_PAUSE_BOUND)
    }

    type RehearseArgs = rehearse::MoveRehearsalOptions;
    fn rehearse(args: Self::RehearseArgs) -> BoxFuture<'static, Result<Rehearsal, String>> {
        Box::pin(async move {
            let summary = rehearse::logical_move(&args)
                .await
                .map_err(|e| e.to_string())?;
            let clean = summary.clean();
            Rehearsal::new(summary.human(args.rate), &summary, clean)
        })
    }
}
