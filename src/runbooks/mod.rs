//! Runbooks: the plan-and-effects stage of the flow, one folder each (parameters, typed steps,
//! plan, effects, rehearsal) behind the [`Runbook`] trait. [`REGISTRY`] is the one list the
//! CLI, the cockpit, the session and the pause guard read: adding a runbook is its folder plus
//! one line there.

pub mod citus_bootstrap;
pub mod logical_move;
pub mod major_upgrade;
pub mod shard_split;
pub mod table_copy;

use crate::engine::ItemId;
use crate::engine::{EngineState, Observation, PreconditionResult};
use crate::executor::{
    Actions, BaselineCount, ItemAttempt, ItemFuture, Sink, StepError, StepItems,
};
use crate::inventory::Inventory;
use crate::plan::{ParamError, Plan, PlanError, Step, StepId};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Why a runbook cannot produce a plan. Every variant but `Plan` is the operator's input.
#[derive(Debug, thiserror::Error)]
pub enum RunbookError {
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{runbook} cannot run on this inventory: {reason}")]
    Inventory {
        runbook: &'static str,
        reason: String,
    },
    #[error("unknown runbook `{name}`; known: {}", names().join(", "))]
    Unknown { name: String },
}

impl RunbookError {
    /// The operator gave something this runbook cannot work with (exit code 2).
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, RunbookError::Plan(_))
    }
}

/// What a runbook's effects get when its run opens.
pub struct RunSetup {
    pub inventory_path: PathBuf,
    /// Per-run directory in the state dir for backups and values later steps need.
    pub run_dir: PathBuf,
    pub trust_on_first_use: bool,
}

/// A runbook's steps: one variant per step, its slug the journal's stable step id. Derive
/// `strum::{EnumString, IntoStaticStr, EnumIter}` with `serialize_all = "kebab-case"`.
pub trait StepKind: Copy + FromStr + Into<&'static str> + 'static {
    fn id(self) -> StepId {
        StepId::new(self.into())
    }
    /// A plan step of this kind, to be filled with the builder methods of [`Step`].
    fn step(self, title: impl Into<String>) -> Step {
        Step::new(self.into(), title)
    }
    /// The kind of a plan step; a step id no variant has is an error, never a silent no-op.
    fn of(step: &Step) -> Result<Self, String> {
        Self::from_str(step.id.as_str())
            .map_err(|_| format!("this runbook has no step `{}`", step.id))
    }
}

/// One runbook: how its parameters are given, how a plan is made from an inventory, and how
/// its effects are built once a run exists.
pub trait Runbook: 'static {
    /// The name on the command line and in the journal, e.g. `shard-split`.
    const NAME: &'static str;
    /// One line for `cutover run --help`.
    const ABOUT: &'static str;
    /// This runbook's flags, and only these: `cutover run INV NAME --help` lists them.
    type Args: clap::Args;
    /// The steps of its plans.
    type Step: StepKind;
    /// The plan's inputs checked against an inventory; what the effects act on.
    type Resolved: Send + 'static;
    type Effects: Actions + 'static;

    /// Resolve parameters (as the plan records them) against an inventory.
    fn resolve(
        inventory: &Inventory,
        params: &BTreeMap<String, String>,
    ) -> Result<Self::Resolved, RunbookError>;
    fn plan(resolved: &Self::Resolved) -> Result<Plan, RunbookError>;
    fn effects(resolved: Self::Resolved, setup: RunSetup) -> Result<Self::Effects, String>;
    /// The pause bound a plan of this runbook records (the read-only cockpit shows it).
    fn pause_bound(plan: &Plan) -> Duration;

    /// The flags of `cutover lab rehearse NAME`.
    type RehearseArgs: clap::Args + clap::FromArgMatches + Send + 'static;
    /// The benchmark: this runbook headless on fresh lab servers, measured.
    fn rehearse(args: Self::RehearseArgs) -> BoxFuture<'static, Result<Rehearsal, String>>;
}

/// What a rehearsal measured: one summary for people, the full record as JSON.
pub struct Rehearsal {
    pub human: String,
    pub json: serde_json::Value,
    /// Every target of the rehearsal held (no failed call, no lost row, no error).
    pub clean: bool,
}

impl Rehearsal {
    pub fn new(human: String, record: &impl serde::Serialize, clean: bool) -> Result<Self, String> {
        let json = serde_json::to_value(record).map_err(|e| e.to_string())?;
        Ok(Rehearsal { human, json, clean })
    }
}

/// Every runbook, in the order `--help` lists them.
pub static REGISTRY: &[&dyn Registered] = &[
    &Entry::<shard_split::ShardSplit>(PhantomData),
    &Entry::<major_upgrade::MajorUpgrade>(PhantomData),
    &Entry::<citus_bootstrap::CitusBootstrap>(PhantomData),
    &Entry::<table_copy::TableCopy>(PhantomData),
    &Entry::<logical_move::LogicalMove>(PhantomData),
];

pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|r| r.name()).collect()
}

pub fn find(name: &str) -> Result<&'static dyn Registered, RunbookError> {
    REGISTRY
        .iter()
        .copied()
        .find(|r| r.name() == name)
        .ok_or_else(|| RunbookError::Unknown {
            name: name.to_string(),
        })
}

/// A plan, and how to build its effects once the run (and its directory) exists.
pub struct Built<A> {
    pub plan: Plan,
    pub effects: Box<dyn FnOnce(RunSetup) -> Result<A, String> + Send>,
}

/// A [`Runbook`] with its types erased, as the registry holds it.
pub trait Registered: Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    /// Add this runbook's flags to `command`.
    fn args(&self, command: clap::Command) -> clap::Command;
    fn build(
        &self,
        inventory: &Inventory,
        params: &BTreeMap<String, String>,
    ) -> Result<Built<Box<dyn DynActions>>, RunbookError>;
    fn pause_bound(&self, plan: &Plan) -> Duration;
    /// Add the flags of this runbook's rehearsal to `command`.
    fn rehearse_args(&self, command: clap::Command) -> clap::Command;
    fn rehearse(
        &self,
        matches: &clap::ArgMatches,
    ) -> Result<BoxFuture<'static, Result<Rehearsal, String>>, clap::Error>;
}

struct Entry<R>(PhantomData<fn() -> R>);

/// Build `R`'s plan and its (typed) effects.
pub fn build<R: Runbook>(
    inventory: &Inventory,
    params: &BTreeMap<String, String>,
) -> Result<Built<R::Effects>, RunbookError> {
    let resolved = R::resolve(inventory, params)?;
    let plan = R::plan(&resolved)?;
    Ok(Built {
        plan,
        effects: Box::new(move |setup| R::effects(resolved, setup)),
    })
}

impl<R: Runbook> Registered for Entry<R> {
    fn name(&self) -> &'static str {
        R::NAME
    }
    fn about(&self) -> &'static str {
        R::ABOUT
    }
    fn args(&self, command: clap::Command) -> clap::Command {
        <R::Args as clap::Args>::augment_args(command)
    }
    fn build(
        &self,
        inventory: &Inventory,
        params: &BTreeMap<String, String>,
    ) -> Result<Built<Box<dyn DynActions>>, RunbookError> {
        let Built { plan, effects } = build::<R>(inventory, params)?;
        Ok(Built {
            plan,
            effects: Box::new(move |setup| {
                effects(setup).map(|e| Box::new(e) as Box<dyn DynActions>)
            }),
        })
    }
    fn pause_bound(&self, plan: &Plan) -> Duration {
        R::pause_bound(plan)
    }
    fn rehearse_args(&self, command: clap::Command) -> clap::Command {
        <R::RehearseArgs as clap::Args>::augment_args(command)
    }
    fn rehearse(
        &self,
        matches: &clap::ArgMatches,
    ) -> Result<BoxFuture<'static, Result<Rehearsal, String>>, clap::Error> {
        let args = <R::RehearseArgs as clap::FromArgMatches>::from_arg_matches(matches)?;
        Ok(R::rehearse(args))
    }
}

/// The parameters given on a runbook's command line, as the plan records them: each flag the
/// operator set by its long name; a switch as `yes`.
pub fn params_from_matches(
    command: &clap::Command,
    matches: &clap::ArgMatches,
) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if matches.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let value = if arg.get_action().takes_values() {
            matches
                .get_raw(id)
                .into_iter()
                .flatten()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            "yes".to_string()
        };
        params.insert(long.to_string(), value);
    }
    params
}

/// [`Actions`] behind a pointer, so one runner type drives every runbook.
pub trait DynActions: Send {
    fn preconditions<'a>(&'a mut self, step: &'a Step) -> BoxFuture<'a, Vec<PreconditionResult>>;
    fn observations<'a>(&'a mut self, step: &'a Step) -> BoxFuture<'a, Vec<Observation>>;
    fn action<'a>(
        &'a mut self,
        step: &'a Step,
        recheck: bool,
        sink: Sink,
    ) -> BoxFuture<'a, Result<String, StepError>>;
    fn undo<'a>(
        &'a mut self,
        step: &'a Step,
        recheck: bool,
        sink: Sink,
    ) -> BoxFuture<'a, Result<String, StepError>>;
    fn force_resume(&mut self, sink: Sink) -> BoxFuture<'_, Result<String, StepError>>;
    fn items<'a>(
        &'a mut self,
        step: &'a Step,
        recheck: bool,
        sink: Sink,
    ) -> BoxFuture<'a, Result<Option<StepItems>, String>>;
    fn run_item(
        &mut self,
        step: &Step,
        item: &ItemId,
        attempt: ItemAttempt,
        sink: Sink,
    ) -> ItemFuture;
    fn pause_bound(&self) -> Duration;
    fn baseline(&self) -> Vec<BaselineCount>;
    fn resume_is_safe(&self, plan: &Plan, state: &EngineState) -> bool;
    fn expected_stopped(&self, plan: &Plan, state: &EngineState) -> Vec<(String, String)>;
    fn confirm_each_item(&self, step: &Step) -> bool;
    fn allow_retry(&mut self, items: &std::collections::BTreeSet<ItemId>);
}

impl<A: Actions> DynActions for A {
    fn preconditions<'a>(&'a mut self, step: &'a Step) -> BoxFuture<'a, Vec<PreconditionResult>> {
        Box::pin(Actions::preconditions(self, step))
    }
    fn observations<'a>(&'a mut self, step: &'a Step) -> BoxFuture<'a, Vec<Observation>> {
        Box::pin(Actions::observations(self, step))
    }
    fn action<'a>(
        &'a mut self,
        step: &'a Step,
        recheck: bool,
        sink: Sink,
    ) -> BoxFuture<'a, Result<String, StepError>> {
        Box::pin(Actions::action(self, step, recheck, sink))
    }
    fn undo<'a>(
        &'a mut self,
        step: &'a Step,
        recheck: bool,
        sink: Sink,
    ) -> BoxFuture<'a, Result<String, StepError>> {
        Box::pin(Actions::undo(self, step, recheck, sink))
    }
    fn force_resume(&mut self, sink: Sink) -> BoxFuture<'_, Result<String, StepError>> {
        Box::pin(Actions::force_resume(self, sink))
    }
    fn items<'a>(
        &'a mut self,
        step: &'a Step,
        recheck: bool,
        sink: Sink,
    ) -> BoxFuture<'a, Result<Option<StepItems>, String>> {
        Box::pin(Actions::items(self, step, recheck, sink))
    }
    fn run_item(
        &mut self,
        step: &Step,
        item: &ItemId,
        attempt: ItemAttempt,
        sink: Sink,
    ) -> ItemFuture {
        Actions::run_item(self, step, item, attempt, sink)
    }
    fn pause_bound(&self) -> Duration {
        Actions::pause_bound(self)
    }
    fn baseline(&self) -> Vec<BaselineCount> {
        Actions::baseline(self)
    }
    fn resume_is_safe(&self, plan: &Plan, state: &EngineState) -> bool {
        Actions::resume_is_safe(self, plan, state)
    }
    fn expected_stopped(&self, plan: &Plan, state: &EngineState) -> Vec<(String, String)> {
        Actions::expected_stopped(self, plan, state)
    }
    fn confirm_each_item(&self, step: &Step) -> bool {
        Actions::confirm_each_item(self, step)
    }
    fn allow_retry(&mut self, items: &std::collections::BTreeSet<ItemId>) {
        Actions::allow_retry(self, items)
    }
}

impl Actions for Box<dyn DynActions> {
    async fn preconditions(&mut self, step: &Step) -> Vec<PreconditionResult> {
        DynActions::preconditions(self.as_mut(), step).await
    }
    async fn observations(&mut self, step: &Step) -> Vec<Observation> {
        DynActions::observations(self.as_mut(), step).await
    }
    async fn action(
        &mut self,
        step: &Step,
        recheck: bool,
        sink: Sink,
    ) -> Result<String, StepError> {
        DynActions::action(self.as_mut(), step, recheck, sink).await
    }
    async fn undo(&mut self, step: &Step, recheck: bool, sink: Sink) -> Result<String, StepError> {
        DynActions::undo(self.as_mut(), step, recheck, sink).await
    }
    async fn force_resume(&mut self, sink: Sink) -> Result<String, StepError> {
        DynActions::force_resume(self.as_mut(), sink).await
    }
    async fn items(
        &mut self,
        step: &Step,
        recheck: bool,
        sink: Sink,
    ) -> Result<Option<StepItems>, String> {
        DynActions::items(self.as_mut(), step, recheck, sink).await
    }
    fn run_item(
        &mut self,
        step: &Step,
        item: &ItemId,
        attempt: ItemAttempt,
        sink: Sink,
    ) -> ItemFuture {
        DynActions::run_item(self.as_mut(), step, item, attempt, sink)
    }
    fn pause_bound(&self) -> Duration {
        DynActions::pause_bound(self.as_ref())
    }
    fn baseline(&self) -> Vec<BaselineCount> {
        DynActions::baseline(self.as_ref())
    }
    fn resume_is_safe(&self, plan: &Plan, state: &EngineState) -> bool {
        DynActions::resume_is_safe(self.as_ref(), plan, state)
    }
    fn expected_stopped(&self, plan: &Plan, state: &EngineState) -> Vec<(String, String)> {
        DynActions::expected_stopped(self.as_ref(), plan, state)
    }
    fn confirm_each_item(&self, step: &Step) -> bool {
        DynActions::confirm_each_item(self.as_ref(), step)
    }
    fn allow_retry(&mut self, items: &std::collections::BTreeSet<ItemId>) {
        DynActions::allow_retry(self.as_mut(), items)
    }
}
