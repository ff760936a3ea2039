//! The command line's shape: clap types only. Each runbook contributes its own flags through
//! the registry (`cutover run INV shard-split --help` lists the split's), so nothing here
//! names a runbook.

use clap::{Parser, Subcommand};
use cutover::lab;
use cutover::runbooks::{self, Registered};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "A terminal cockpit for PostgreSQL cutovers",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand: open the cockpit on this inventory (needs a terminal).
    pub inventory: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Validate an inventory; lists every problem as FILE:LINE:COL: message (exit 2).
    Check { file: PathBuf },
    /// Print one snapshot of all live readings.
    Status {
        inventory: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print a runbook's plan and its fingerprint, for review before a run.
    Plan {
        inventory: PathBuf,
        #[command(subcommand)]
        runbook: RunbookChoice,
        #[arg(long, value_enum, default_value = "md", global = true)]
        format: Format,
        /// Pair review: record in the journal that you (this OS user) approve this plan's
        /// fingerprint; `cutover run --pair` drives only a plan another user approved.
        #[arg(long, global = true)]
        approve: bool,
        /// Where the journal lives (with --approve).
        #[arg(long, global = true)]
        state_dir: Option<PathBuf>,
        /// Display name recorded next to your OS user (with --approve).
        #[arg(long, global = true, env = "USER", default_value = "operator")]
        operator: String,
    },
    /// Pair review, headless: show what the driver waits on at STEP, and approve it (with the
    /// seen hash you were shown), object to it (with a reason), or withdraw your verdict.
    /// Only another OS user than the driver can approve.
    Approve {
        inventory: PathBuf,
        #[command(subcommand)]
        runbook: RunbookChoice,
        #[command(flatten)]
        run: RunOptions,
        /// The step the driver waits on (for a paused window: the step that pauses traffic).
        #[arg(long, global = true, value_name = "STEP")]
        step: Option<String>,
        /// Approve exactly this seen hash (at least its first 12 hex digits), as shown.
        #[arg(long, global = true, value_name = "HASH", conflicts_with_all = ["object", "withdraw"])]
        seen: Option<String>,
        /// Object, with this reason: the step is blocked until you withdraw.
        #[arg(
            long,
            global = true,
            value_name = "REASON",
            conflicts_with = "withdraw"
        )]
        object: Option<String>,
        /// Withdraw your earlier approval or objection of the request.
        #[arg(long, global = true)]
        withdraw: bool,
        /// Wait up to this many seconds for the driver to reach STEP.
        #[arg(long, global = true, default_value_t = 0)]
        wait_s: u64,
    },
    /// Run (or resume) a runbook.
    Run {
        inventory: PathBuf,
        #[command(subcommand)]
        runbook: RunbookChoice,
        #[command(flatten)]
        run: RunOptions,
        /// Refuse to start unless the plan still has this fingerprint (from `cutover plan`).
        #[arg(long, global = true)]
        expect_fingerprint: Option<String>,
        /// Run every step without prompts (rehearsals, CI); preconditions and gates still hold.
        /// Steps that remove the way back run only when named by --through or --step.
        #[arg(long, global = true)]
        yes: bool,
        /// Print every journal entry as it is written, one JSON object per line (NDJSON).
        #[arg(long, global = true)]
        json: bool,
        /// With --yes: stop after this step; names a step that removes the way back to run it.
        #[arg(long, global = true, value_name = "STEP", conflicts_with = "step")]
        through: Option<String>,
        /// With --yes: run only this step, which must be the next one (e.g. retire-old-cluster
        /// after the soak).
        #[arg(long, global = true, value_name = "STEP")]
        step: Option<String>,
    },
    /// Undo completed steps of the unfinished run, in reverse order, back to a step. The
    /// run's own parameters are used when none are given.
    Rollback {
        inventory: PathBuf,
        #[command(subcommand)]
        runbook: RunbookChoice,
        #[command(flatten)]
        run: RunOptions,
        /// The step to roll back to (it is undone too).
        #[arg(long, global = true, value_name = "STEP")]
        back_to: Option<String>,
        #[arg(long, global = true, default_value = "operator rollback")]
        reason: String,
    },
    /// Give up the unfinished run of this environment and runbook: journaled, never resumed.
    /// Refused while traffic is paused or a step may be half-run (roll back first).
    Abandon {
        inventory: PathBuf,
        #[command(subcommand)]
        runbook: RunbookChoice,
        #[command(flatten)]
        run: RunOptions,
        /// Why, for the journal (required).
        #[arg(long, global = true)]
        reason: Option<String>,
    },
    /// The cockpit: live panes and the runbook, step by step with confirmations.
    Tui {
        inventory: PathBuf,
        #[command(subcommand)]
        runbook: Option<RunbookChoice>,
        #[command(flatten)]
        run: RunOptions,
        /// dark (default), light, high-contrast, or a theme file; also `theme:` in $XDG_CONFIG_HOME/cutover/config.yaml.
        #[arg(long, global = true)]
        theme: Option<String>,
        /// Show everything, run nothing.
        #[arg(long, global = true)]
        readonly: bool,
        /// Pair review: follow the run read-only, and approve or object when the driver waits
        /// for a second operator (you must be another OS user than the driver).
        #[arg(long, global = true, conflicts_with = "readonly")]
        second: bool,
    },
    /// Show or export the record of a run.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Table copies (`table-copy`): per-table state, stats and list.
    Copy {
        #[command(subcommand)]
        command: CopyCommand,
    },
    /// The local lab of real servers.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the manual page (roff) to stdout: `cutover man | man -l -`.
    Man,
    /// Started by a driving `cutover` when traffic pauses: ends the pause if the driver dies.
    #[command(hide = true)]
    PauseGuard {
        inventory: PathBuf,
        runbook: String,
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        parent: u32,
        #[arg(long)]
        run_id: String,
        #[arg(long)]
        bound_ms: u64,
        /// Runbook parameters as NAME=VALUE.
        #[arg(long = "param")]
        params: Vec<String>,
        #[arg(long)]
        trust_on_first_use: bool,
        #[arg(long)]
        pair: bool,
    },
}

/// A runbook of the registry and the parameters given on its command line, as the plan
/// records them (each flag by its long name, a switch as `yes`).
#[derive(Debug, Clone)]
pub struct RunbookChoice {
    pub name: String,
    pub params: BTreeMap<String, String>,
}

fn runbook_command(runbook: &dyn Registered) -> clap::Command {
    runbook
        .args(clap::Command::new(runbook.name()))
        .about(runbook.about())
}

/// The runbook named on the command line and its own matches.
fn chosen_runbook(matches: &clap::ArgMatches) -> Result<(&str, &clap::ArgMatches), clap::Error> {
    matches.subcommand().ok_or_else(|| {
        clap::Error::raw(
            clap::error::ErrorKind::MissingSubcommand,
            format!("name a runbook: {}\n", runbooks::names().join(", ")),
        )
    })
}

/// `command` with one subcommand per runbook of the registry, each made by `subcommand`.
fn one_subcommand_per_runbook(
    command: clap::Command,
    subcommand: impl Fn(&dyn Registered) -> clap::Command,
) -> clap::Command {
    runbooks::REGISTRY
        .iter()
        .fold(command, |command, runbook| {
            command.subcommand(subcommand(*runbook))
        })
        .subcommand_value_name("RUNBOOK")
}

fn unknown_runbook(name: &str) -> clap::Error {
    clap::Error::raw(
        clap::error::ErrorKind::InvalidSubcommand,
        format!(
            "unknown runbook `{name}`; known: {}\n",
            runbooks::names().join(", ")
        ),
    )
}

impl clap::FromArgMatches for RunbookChoice {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let (name, sub) = chosen_runbook(matches)?;
        let runbook = runbooks::find(name).map_err(|_| unknown_runbook(name))?;
        Ok(RunbookChoice {
            name: name.to_string(),
            params: runbooks::params_from_matches(&runbook_command(runbook), sub),
        })
    }
    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Subcommand for RunbookChoice {
    fn augment_subcommands(command: clap::Command) -> clap::Command {
        one_subcommand_per_runbook(command, runbook_command)
    }
    fn augment_subcommands_for_update(command: clap::Command) -> clap::Command {
        Self::augment_subcommands(command)
    }
    fn has_subcommand(name: &str) -> bool {
        runbooks::find(name).is_ok()
    }
}

/// A runbook's rehearsal and its own flags (`cutover lab rehearse shard-split --rate 300`).
#[derive(Debug, Clone)]
pub struct RehearsalChoice {
    pub name: String,
    pub matches: clap::ArgMatches,
}

impl clap::FromArgMatches for RehearsalChoice {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let (name, sub) = chosen_runbook(matches)?;
        Ok(RehearsalChoice {
            name: name.to_string(),
            matches: sub.clone(),
        })
    }
    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Subcommand for RehearsalChoice {
    fn augment_subcommands(command: clap::Command) -> clap::Command {
        one_subcommand_per_runbook(command, |runbook| {
            runbook
                .rehearse_args(clap::Command::new(runbook.name()))
                .about(runbook.about())
        })
    }
    fn augment_subcommands_for_update(command: clap::Command) -> clap::Command {
        Self::augment_subcommands(command)
    }
    fn has_subcommand(name: &str) -> bool {
        runbooks::find(name).is_ok()
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunOptions {
    /// Where the journal lives (default: $CUTOVER_STATE_DIR, $XDG_STATE_HOME/cutover, ~/.local/state/cutover).
    #[arg(long, global = true)]
    pub state_dir: Option<PathBuf>,
    /// Display name recorded in the journal next to your OS user (who you are is the OS user).
    #[arg(long, global = true, env = "USER", default_value = "operator")]
    pub operator: String,
    /// Destructive and point-of-no-return steps (and a paused window holding one) need an
    /// approval from another OS user's session (`cutover approve`, `cutover tui --second`),
    /// and the plan an approval from `cutover plan --approve`.
    #[arg(long, global = true)]
    pub pair: bool,
    /// Accept and record an SSH host key never seen before (logged). Changed keys are always refused.
    #[arg(long, global = true)]
    pub trust_on_first_use: bool,
}

impl RunOptions {
    pub fn from_env() -> Self {
        RunOptions {
            state_dir: None,
            operator: std::env::var("USER").unwrap_or_else(|_| "operator".into()),
            pair: false,
            trust_on_first_use: false,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    Md,
    Json,
}

#[derive(Subcommand)]
pub enum CopyCommand {
    /// Totals (migrated, errored, in percent) and the tables, filtered.
    Status(runbooks::table_copy::StatusArgs),
}

#[derive(Subcommand)]
pub enum JournalCommand {
    /// List runs, or show one run's entries.
    Show {
        run: Option<String>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Export a run's record (newest run by default) for the change ticket.
    Export {
        run: Option<String>,
        #[arg(long, value_enum, default_value = "md")]
        format: Format,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum LabCommand {
    /// Start pg1 (proxy + p1), a spare pg2, pgbouncer and sshd; print the inventory path.
    Up {
        #[arg(long, default_value = lab::DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(long, default_value_t = 200_000)]
        docs: u64,
        #[arg(long, default_value_t = 54321)]
        pg1_port: u16,
        #[arg(long, default_value_t = 54322)]
        pg2_port: u16,
        #[arg(long, default_value_t = 6432)]
        pgbouncer_port: u16,
        #[arg(long, default_value_t = 2222)]
        ssh_port: u16,
        /// Also start a target node `pg1new` of this major version (18) for major-upgrade.
        #[arg(long)]
        with_target: Option<u32>,
        #[arg(long, default_value_t = 54323)]
        target_port: u16,
        /// Also start an empty Citus cluster: a coordinator and two workers.
        #[arg(long)]
        citus: bool,
        /// 15 (Citus 13, the default) or 18 (Citus 14).
        #[arg(long, default_value_t = 15, requires = "citus")]
        citus_version: u32,
        #[arg(long, default_value_t = lab::citus::DEFAULT_PORTS[0], requires = "citus")]
        citus_coordinator_port: u16,
        /// The two workers' ports.
        #[arg(long, value_delimiter = ',', default_values_t = [lab::citus::DEFAULT_PORTS[1], lab::citus::DEFAULT_PORTS[2]], requires = "citus")]
        citus_worker_ports: Vec<u16>,
    },
    /// Benchmark: a full headless runbook on fresh labs under load, measured.
    Rehearse {
        #[command(subcommand)]
        runbook: RehearsalChoice,
        /// The full record as JSON instead of the summary.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Stop everything the lab started (by PID) and remove its directory.
    Down {
        #[arg(long, default_value = lab::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Application traffic: insert_form calls through the pgbouncer proxy alias.
    Load {
        #[arg(long, default_value = lab::DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(long, default_value_t = 300)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        workers: u32,
        /// Write every committed form_id here, one per line.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}
