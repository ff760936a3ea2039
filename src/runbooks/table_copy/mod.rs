//! The `table-copy` runbook (seed 004): copy tables from one database into another
//! (PostgreSQL, or a Citus coordinator so the rows land on their shards), N at a time, each
//! table or key range exactly once (one target transaction with its ledger row), each
//! verified by count and an order-independent checksum; `cutover copy status` reads its state.

pub mod effects;
pub mod plan;
pub mod rehearse;
pub mod state;
pub mod steps;

pub use steps::CopyStep;

use crate::inventory::Inventory;
use crate::plan::Plan;
use crate::runbooks::{Rehearsal, RunSetup, Runbook, RunbookError};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub struct TableCopy;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct CopyArgs {
    /// NODE/DB to copy from.
    #[arg(long, value_name = "NODE/DB")]
    pub from: Option<String>,
    /// NODE/DB to copy into: a PostgreSQL database or a Citus cluster's coordinator database.
    #[arg(long, value_name = "NODE/DB")]
    pub to: Option<String>,
    /// Tables (or key ranges) copied at once. Not part of the plan.
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Only tables dated on or after this (from the name, partition bound or CHECK).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub start_date: Option<String>,
    /// Only tables dated before this.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub end_date: Option<String>,
    /// Only this table (repeatable; `schema.table` or `table` in public).
    #[arg(long, value_name = "T")]
    pub table: Vec<String>,
    /// Copy source table SRC into the target table TARGET (repeatable), instead of the table
    /// of the same name or the parent found by the name without its date. Part of the plan.
    #[arg(long, value_name = "SRC=TARGET")]
    pub map: Vec<String>,
    /// Retry tables that errored (after fixing the cause). Not part of the plan.
    #[arg(long)]
    pub retry_errors: bool,
    /// Keep starting tables after one errors. Not part of the plan.
    #[arg(long)]
    pub no_stop_on_error: bool,
    /// Tables with more (estimated) rows and a single integer key are split into key ranges
    /// copied in parallel.
    #[arg(long, value_name = "ROWS")]
    pub split_rows: Option<u64>,
    /// Tables dated before this are frozen (no longer written); the others are live.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub frozen_before: Option<String>,
    /// Each table waits for the operator's confirmation (`c` in the cockpit's Copy pane)
    /// before it starts. Cockpit only: a headless run refuses the copy step. Not part of the
    /// plan.
    #[arg(long)]
    pub confirm: bool,
}

impl Runbook for TableCopy {
    const NAME: &'static str = plan::RUNBOOK;
    const ABOUT: &'static str =
        "Copy tables into PostgreSQL or Citus, N at a time, exactly once, each verified";
    type Args = CopyArgs;
    type Step = CopyStep;
    type Resolved = plan::TableCopy;
    type Effects = effects::TableCopyActions;

    fn resolve(
        inventory: &Inventory,
        params: &BTreeMap<String, String>,
    ) -> Result<plan::TableCopy, RunbookError> {
        plan::TableCopy::resolve(
            inventory,
            plan::CopyParams::from_map(params)?,
            plan::CopyPolicy::from_map(params)?,
        )
    }
    fn plan(copy: &plan::TableCopy) -> Result<Plan, RunbookError> {
        copy.plan()
    }
    fn effects(copy: plan::TableCopy, setup: RunSetup) -> Result<Self::Effects, String> {
        effects::TableCopyActions::new(copy, setup.run_dir, setup.trust_on_first_use)
    }
    fn pause_bound(_plan: &Plan) -> Duration {
        plan::PAUSE_BOUND
    }

    type RehearseArgs = rehearse::CopyRehearsalOptions;
    fn rehearse(args: Self::RehearseArgs) -> BoxFuture<'static, Result<Rehearsal, String>> {
        Box::pin(async move {
            let report = rehearse::table_copy(&args)
                .await
                .map_err(|e| e.to_string())?;
            let clean = report.clean();
            Rehearsal::new(report.human(), &report, clean)
        })
    }
}

/// The Copy pane's feed for a cockpit driving or following this runbook with `params`.
pub fn copy_feed(
    inventory: &Inventory,
    params: &BTreeMap<String, String>,
    state_dir: Option<&Path>,
) -> Result<crate::readings::copy::CopyFeed, String> {
    let copy = plan::TableCopy::resolve(
        inventory,
        plan::CopyParams::from_map(params).map_err(|e| e.to_string())?,
        plan::CopyPolicy::from_map(params).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let dir = crate::journal::resolve_state_dir(state_dir).map_err(|e| e.to_string())?;
    Ok(crate::readings::copy::CopyFeed {
        target: crate::pg::Endpoint::node(&copy.target, copy.target_db()),
        state_path: state::state_path(&dir, &inventory.environment),
        pair: state::pair_key(&copy.params.from, &copy.params.to),
        confirm_each: copy.policy.confirm,
    })
}

/// `cutover copy status INV ...`: the seed's `stats` and `list_tables`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    pub inventory: std::path::PathBuf,
    #[arg(long)]
    pub json: bool,
    /// Only errored tables.
    #[arg(long)]
    pub errored: bool,
    /// Only migrated (verified) tables.
    #[arg(long)]
    pub migrated: bool,
    /// Only tables dated on or after this.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub start_date: Option<String>,
    /// Only tables dated before this.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub end_date: Option<String>,
    #[arg(long)]
    pub state_dir: Option<std::path::PathBuf>,
}

/// Run `cutover copy status`; `Err` is the operator's input (exit 2).
pub fn status_command(args: &StatusArgs) -> Result<String, String> {
    let date = |v: &Option<String>| {
        v.as_deref()
            .map(|d| {
                chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .map_err(|_| format!("{d}: expected YYYY-MM-DD"))
            })
            .transpose()
    };
    let filter = state::ListFilter {
        migrated: args.migrated,
        errored: args.errored,
        start_date: date(&args.start_date)?,
        end_date: date(&args.end_date)?,
    };
    status(
        &args.inventory,
        args.state_dir.as_deref(),
        &filter,
        args.json,
    )
}

/// The seed's `stats` and `list` from the state beside the journal.
pub fn status(
    inventory_path: &Path,
    state_dir: Option<&Path>,
    filter: &state::ListFilter,
    json: bool,
) -> Result<String, String> {
    let inventory = crate::inventory::load(inventory_path).map_err(|e| e.to_string())?;
    let dir = crate::journal::resolve_state_dir(state_dir).map_err(|e| e.to_string())?;
    let copy_state = state::load(&state::state_path(&dir, &inventory.environment))?;
    Ok(state::status_report(&copy_state, filter, json))
}
