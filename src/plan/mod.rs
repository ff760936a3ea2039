//! Runbook plan: the pure second stage of the flow. A runbook turns an inventory plus
//! parameters into a [`Plan`] of typed [`Step`]s that a reviewer can read (markdown/JSON) and
//! pin by [`Plan::fingerprint`]; the engine (`crate::engine`) walks the plan, the executor
//! performs the steps' actions.
//!
//! Nothing here does I/O. The rendered commands are for review and for the fingerprint; the
//! executor runs typed actions of its own that must match what is rendered.

mod markdown;

use crate::inventory::Inventory;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// Version recorded in every plan; part of the fingerprint, so an upgraded tool never runs a
/// plan that was reviewed with another version.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Stable slug naming a step, e.g. `preflight`, `base-backup`. Journals refer to steps by it,
/// so it must not change between tool versions for the same step.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(pub String);

impl StepId {
    pub fn new(slug: impl Into<String>) -> Self {
        StepId(slug.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for StepId {
    fn from(slug: &str) -> Self {
        StepId(slug.to_string())
    }
}

/// How a rendered command is carried out; decides the code-fence language in review output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// SQL sent to a PostgreSQL node.
    Sql,
    /// Shell command on a host (over SSH, or local).
    Shell,
    /// Statement on the pgbouncer admin console (simple query protocol).
    PgbouncerAdmin,
    /// A file written by the tool (e.g. the new inventory); `text` shows the content or diff.
    File,
    /// Anything else the tool does itself (polling loops, comparisons).
    Internal,
}

impl CommandKind {
    fn fence_language(self) -> &'static str {
        match self {
            CommandKind::Sql | CommandKind::PgbouncerAdmin => "sql",
            CommandKind::Shell => "sh",
            CommandKind::File => "diff",
            CommandKind::Internal => "text",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            CommandKind::Sql => "sql",
            CommandKind::Shell => "shell",
            CommandKind::PgbouncerAdmin => "pgbouncer_admin",
            CommandKind::File => "file",
            CommandKind::Internal => "internal",
        }
    }
}

/// One command exactly as it will run, for a reviewer to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedCommand {
    pub kind: CommandKind,
    /// Where it runs, e.g. `pg1 · sql · commcarehq_p1`, `host lab · shell`, `pgbouncer pgb · admin`.
    pub target: String,
    pub text: String,
}

impl RenderedCommand {
    /// SQL on `node` in database `dbname`.
    pub fn sql(node: &str, dbname: &str, text: impl Into<String>) -> Self {
        RenderedCommand {
            kind: CommandKind::Sql,
            target: format!("{node} · sql · {dbname}"),
            text: text.into(),
        }
    }
    /// Shell command on `host`.
    pub fn shell(host: &str, text: impl Into<String>) -> Self {
        RenderedCommand {
            kind: CommandKind::Shell,
            target: format!("host {host} · shell"),
            text: text.into(),
        }
    }
    /// Statement on the admin console of pgbouncer `name`.
    pub fn pgbouncer_admin(name: &str, text: impl Into<String>) -> Self {
        RenderedCommand {
            kind: CommandKind::PgbouncerAdmin,
            target: format!("pgbouncer {name} · admin"),
            text: text.into(),
        }
    }
    /// A file the tool writes; `text` is the content or a diff.
    pub fn file(path: &str, text: impl Into<String>) -> Self {
        RenderedCommand {
            kind: CommandKind::File,
            target: format!("file {path}"),
            text: text.into(),
        }
    }
    /// Work the tool does itself, described in words or pseudo-code.
    pub fn internal(target: impl Into<String>, text: impl Into<String>) -> Self {
        RenderedCommand {
            kind: CommandKind::Internal,
            target: target.into(),
            text: text.into(),
        }
    }
}

/// A condition checked from live readings right before a step runs. The executor evaluates
/// it and hands the engine a `PreconditionResult` with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreconditionSpec {
    /// Stable slug, unique within the step, e.g. `standby-caught-up`.
    pub id: String,
    pub description: String,
}

/// What rolling a step back means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Undo {
    /// The step can be undone by these commands. Undo actions must tolerate a partially
    /// applied step (check before acting), because a failed or interrupted step is undone too.
    Reversible {
        description: String,
        commands: Vec<RenderedCommand>,
    },
    /// Once this step has started, nothing before it (nor it) can be rolled back.
    PointOfNoReturn { reason: String },
    /// The step changes nothing that needs undoing (checks, readings, baselines).
    NothingToUndo,
}

/// Named step properties the engine enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFlags {
    /// The engine refuses to start the step unless traffic is paused.
    pub needs_traffic_stopped: bool,
    /// Changes or deletes data; needs a second operator in pair mode.
    pub destructive: bool,
    /// The step stops application traffic (pgbouncer `PAUSE`, traffic hooks).
    pub pauses_traffic: bool,
    /// The step lets application traffic flow again (`RESUME`).
    pub resumes_traffic: bool,
    /// The step removes the way back (e.g. deletes the old cluster): headless runs stop before
    /// it unless it is named, and the engine refuses it until the side that replaced it has
    /// served traffic for `min_soak_secs`.
    #[serde(default)]
    pub removes_way_back: bool,
    /// With `removes_way_back`: the least time since the last `resumes_traffic` step finished.
    #[serde(default)]
    pub min_soak_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub id: StepId,
    pub title: String,
    pub commands: Vec<RenderedCommand>,
    pub preconditions: Vec<PreconditionSpec>,
    /// How the executor proves the action took effect, in words.
    pub verification: String,
    pub undo: Undo,
    pub flags: StepFlags,
}

impl Step {
    /// A step with no commands, no preconditions, nothing to undo and no flags; fill it with
    /// the builder methods below.
    pub fn new(id: impl Into<String>, title: impl Into<String>) -> Self {
        Step {
            id: StepId(id.into()),
            title: title.into(),
            commands: Vec::new(),
            preconditions: Vec::new(),
            verification: String::new(),
            undo: Undo::NothingToUndo,
            flags: StepFlags::default(),
        }
    }
    pub fn command(mut self, command: RenderedCommand) -> Self {
        self.commands.push(command);
        self
    }
    pub fn precondition(mut self, id: impl Into<String>, description: impl Into<String>) -> Self {
        self.preconditions.push(PreconditionSpec {
            id: id.into(),
            description: description.into(),
        });
        self
    }
    pub fn verification(mut self, verification: impl Into<String>) -> Self {
        self.verification = verification.into();
        self
    }
    pub fn undo(mut self, undo: Undo) -> Self {
        self.undo = undo;
        self
    }
    pub fn flags(mut self, flags: StepFlags) -> Self {
        self.flags = flags;
        self
    }
    pub fn is_point_of_no_return(&self) -> bool {
        matches!(self.undo, Undo::PointOfNoReturn { .. })
    }
}

/// A runbook parameter that is missing or malformed (`--shards`, `--method`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("missing parameter --{0}")]
    Missing(&'static str),
    #[error("--{name} {value}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// A parameter every invocation of the runbook must give.
pub(crate) fn required_param(
    params: &BTreeMap<String, String>,
    name: &'static str,
) -> Result<String, ParamError> {
    params.get(name).cloned().ok_or(ParamError::Missing(name))
}

/// `pause-bound-ms`: the longest write pause, or the runbook's `default`.
pub(crate) fn pause_bound_param(
    params: &BTreeMap<String, String>,
    default: std::time::Duration,
) -> Result<std::time::Duration, ParamError> {
    match params.get("pause-bound-ms") {
        None => Ok(default),
        Some(ms) => ms
            .parse()
            .map(std::time::Duration::from_millis)
            .map_err(|_| ParamError::Invalid {
                name: "pause-bound-ms",
                value: ms.clone(),
                reason: "expected milliseconds".into(),
            }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot render the inventory as canonical YAML: {0}")]
    CanonicalInventory(#[from] serde_yaml::Error),
    #[error("plan JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("step id `{0}` appears more than once in the plan")]
    DuplicateStep(StepId),
}

/// Everything a run will do, fixed before it starts. Reviewed as markdown, pinned by its
/// fingerprint, stored in the journal as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub environment: String,
    pub runbook: String,
    /// Runbook parameters, e.g. `from=p1`, `to=p2`, `node=pg2`, `shards=512-1023`.
    pub params: BTreeMap<String, String>,
    /// Canonical YAML of the inventory the plan was generated from.
    pub inventory_yaml: String,
    pub steps: Vec<Step>,
    pub tool_version: String,
}

impl Plan {
    /// Builds a plan from a loaded inventory, recording its canonical YAML and this tool's
    /// version. Refuses duplicate step ids, since the journal addresses steps by id.
    pub fn new(
        inventory: &Inventory,
        runbook: impl Into<String>,
        params: BTreeMap<String, String>,
        steps: Vec<Step>,
    ) -> Result<Plan, PlanError> {
        let plan = Plan {
            environment: inventory.environment.clone(),
            runbook: runbook.into(),
            params,
            inventory_yaml: canonical_inventory_yaml(inventory)?,
            steps,
            tool_version: TOOL_VERSION.to_string(),
        };
        plan.check_unique_step_ids()?;
        Ok(plan)
    }

    pub fn check_unique_step_ids(&self) -> Result<(), PlanError> {
        let mut seen = std::collections::BTreeSet::new();
        for step in &self.steps {
            if !seen.insert(&step.id) {
                return Err(PlanError::DuplicateStep(step.id.clone()));
            }
        }
        Ok(())
    }

    /// Position of the step with this id.
    pub fn index_of(&self, id: &StepId) -> Option<usize> {
        self.steps.iter().position(|s| &s.id == id)
    }

    pub fn step(&self, id: &StepId) -> Option<&Step> {
        self.steps.iter().find(|s| &s.id == id)
    }

    /// Lowercase hex sha256 over a length-prefixed encoding of the environment, inventory
    /// text, runbook name, sorted parameters, tool version and every rendered step (commands,
    /// preconditions, verification, undo, flags). Any change in generated SQL changes it.
    pub fn fingerprint(&self) -> String {
        let mut enc = CanonicalEncoder::new("cutover-plan-v1");
        enc.str(&self.environment);
        enc.str(&self.inventory_yaml);
        enc.str(&self.runbook);
        enc.count(self.params.len());
        for (key, value) in &self.params {
            enc.str(key);
            enc.str(value);
        }
        enc.str(&self.tool_version);
        enc.count(self.steps.len());
        for step in &self.steps {
            encode_step(&mut enc, step);
        }
        enc.finish_hex()
    }

    /// Readable review document; see `markdown.rs` for the layout.
    pub fn to_markdown(&self) -> String {
        markdown::plan_markdown(self)
    }

    /// Pretty JSON with stable field names (the serde names of these types).
    pub fn to_json(&self) -> Result<String, PlanError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn from_json(text: &str) -> Result<Plan, PlanError> {
        let plan: Plan = serde_json::from_str(text)?;
        plan.check_unique_step_ids()?;
        Ok(plan)
    }
}

/// A name made safe for slot names and settings: lowercase ASCII alphanumerics, `_` otherwise.
pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The inventory as the plan records it: serde_yaml of the validated model, so formatting
/// and comments in the source file do not change the fingerprint, but any value does.
pub fn canonical_inventory_yaml(inventory: &Inventory) -> Result<String, PlanError> {
    Ok(serde_yaml::to_string(inventory)?)
}

fn encode_step(enc: &mut CanonicalEncoder, step: &Step) {
    enc.str(step.id.as_str());
    enc.str(&step.title);
    encode_commands(enc, &step.commands);
    enc.count(step.preconditions.len());
    for pre in &step.preconditions {
        enc.str(&pre.id);
        enc.str(&pre.description);
    }
    enc.str(&step.verification);
    match &step.undo {
        Undo::Reversible {
            description,
            commands,
        } => {
            enc.str("reversible");
            enc.str(description);
            encode_commands(enc, commands);
        }
        Undo::PointOfNoReturn { reason } => {
            enc.str("point_of_no_return");
            enc.str(reason);
        }
        Undo::NothingToUndo => enc.str("nothing_to_undo"),
    }
    let StepFlags {
        needs_traffic_stopped,
        destructive,
        pauses_traffic,
        resumes_traffic,
        removes_way_back,
        min_soak_secs,
    } = step.flags;
    for flag in [
        needs_traffic_stopped,
        destructive,
        pauses_traffic,
        resumes_traffic,
    ] {
        enc.bytes(&[u8::from(flag)]);
    }
    // Encoded only when set, so plans without such a step keep their fingerprints.
    if removes_way_back {
        enc.str("removes_way_back");
        enc.str(&min_soak_secs.to_string());
    }
}

fn encode_commands(enc: &mut CanonicalEncoder, commands: &[RenderedCommand]) {
    enc.count(commands.len());
    for command in commands {
        enc.str(command.kind.tag());
        enc.str(&command.target);
        enc.str(&command.text);
    }
}

/// sha256 over length-prefixed fields: no two different field sequences encode alike.
pub(crate) struct CanonicalEncoder {
    hasher: Sha256,
}

impl CanonicalEncoder {
    pub(crate) fn new(domain: &str) -> Self {
        let mut enc = CanonicalEncoder {
            hasher: Sha256::new(),
        };
        enc.str(domain);
        enc
    }
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        self.hasher.update((bytes.len() as u64).to_be_bytes());
        self.hasher.update(bytes);
    }
    pub(crate) fn str(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }
    pub(crate) fn count(&mut self, n: usize) {
        self.hasher.update((n as u64).to_be_bytes());
    }
    pub(crate) fn finish_hex(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}
