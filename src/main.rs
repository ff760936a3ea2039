//! `cutover` command line: the edge where arguments become calls into the library and errors
//! become exit codes (0 ok, 1 failure, 2 invalid input).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cutover::{engine, inventory, journal, lab, readings, runbook, session};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Print a line to stdout; a closed pipe (`cutover status | head`) ends output quietly, never a panic.
macro_rules! emit {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        match writeln!(stdout, $($arg)*) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => eprintln!("cutover: stdout: {e}"),
            _ => {}
        }
    }};
}

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "A terminal cockpit for PostgreSQL cutovers",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand: open the cockpit on this inventory (needs a terminal).
    inventory: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
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
        runbook: String,
        #[command(flatten)]
        params: RunbookParams,
        #[arg(long, value_enum, default_value = "md")]
        format: PlanFormat,
    },
    /// Run (or resume) a runbook.
    Run {
        inventory: PathBuf,
        runbook: String,
        #[command(flatten)]
        params: RunbookParams,
        #[command(flatten)]
        run: RunOptions,
        /// Refuse to start unless the plan still has this fingerprint (from `cutover plan`).
        #[arg(long)]
        expect_fingerprint: Option<String>,
        /// Run every step without prompts (rehearsals, CI); preconditions and gates still hold.
        #[arg(long)]
        yes: bool,
    },
    /// Undo completed steps of the unfinished run, in reverse order, back to a step.
    Rollback {
        inventory: PathBuf,
        runbook: String,
        #[command(flatten)]
        params: RunbookParams,
        #[command(flatten)]
        run: RunOptions,
        /// The step to roll back to (it is undone too).
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "operator rollback")]
        reason: String,
    },
    /// The cockpit: live panes and the runbook, step by step with confirmations.
    Tui {
        inventory: PathBuf,
        runbook: Option<String>,
        #[command(flatten)]
        params: RunbookParams,
        #[command(flatten)]
        run: RunOptions,
        /// dark (default), light, high-contrast, or a theme file; also `theme:` in $XDG_CONFIG_HOME/cutover/config.yaml.
        #[arg(long)]
        theme: Option<String>,
        /// Show everything, run nothing.
        #[arg(long)]
        readonly: bool,
    },
    /// Show or export the record of a run.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// The local lab of real servers.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
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

#[derive(clap::Args, Debug, Clone, Default)]
struct RunbookParams {
    /// shard-split: partition that gives up shards.
    #[arg(long)]
    from: Option<String>,
    /// shard-split: the new partition.
    #[arg(long)]
    to: Option<String>,
    /// shard-split: the spare node that becomes the new partition's primary.
    #[arg(long)]
    node: Option<String>,
    /// shard-split: inclusive range moved, FIRST-LAST.
    #[arg(long)]
    shards: Option<String>,
    /// Longest write pause before traffic resumes by itself and the run rolls back.
    #[arg(long)]
    pause_bound_ms: Option<u64>,
    /// major-upgrade: dumpall, parallel, pg-upgrade (--link) or pg-upgrade-copy.
    #[arg(long)]
    method: Option<String>,
    /// major-upgrade: parallel jobs for pg_dump/pg_restore/pg_upgrade.
    #[arg(long)]
    jobs: Option<u32>,
    /// major-upgrade: `pause` (traffic hooks plus pgbouncer PAUSE, bounded; the default) or
    /// `hooks` (the hooks alone: a plain downtime window).
    #[arg(long)]
    traffic: Option<String>,
    /// major-upgrade: restore into a scratch cluster of the target version first.
    #[arg(long)]
    test_restore: bool,
    /// major-upgrade: absolute directory for the dump on the hosts (default: next to the data).
    #[arg(long)]
    dump_dir: Option<String>,
}

impl RunbookParams {
    fn to_map(&self) -> std::collections::BTreeMap<String, String> {
        [
            ("from", self.from.clone()),
            ("to", self.to.clone()),
            ("node", self.node.clone()),
            ("shards", self.shards.clone()),
            (
                "pause-bound-ms",
                self.pause_bound_ms.map(|ms| ms.to_string()),
            ),
            ("method", self.method.clone()),
            ("jobs", self.jobs.map(|jobs| jobs.to_string())),
            ("traffic", self.traffic.clone()),
            ("test-restore", self.test_restore.then(|| "yes".to_string())),
            ("dump-dir", self.dump_dir.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect()
    }
}

#[derive(clap::Args, Debug, Clone)]
struct RunOptions {
    /// Where the journal lives (default: $CUTOVER_STATE_DIR, $XDG_STATE_HOME/cutover, ~/.local/state/cutover).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Operator name recorded in the journal.
    #[arg(long, env = "USER", default_value = "operator")]
    operator: String,
    /// Destructive and point-of-no-return steps need a second, different operator.
    #[arg(long)]
    pair: bool,
    /// Accept and record an SSH host key never seen before (logged). Changed keys are always refused.
    #[arg(long)]
    trust_on_first_use: bool,
}

impl RunOptions {
    fn from_env() -> Self {
        RunOptions {
            state_dir: None,
            operator: std::env::var("USER").unwrap_or_else(|_| "operator".into()),
            pair: false,
            trust_on_first_use: false,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PlanFormat {
    Md,
    Json,
}

#[derive(Subcommand)]
enum JournalCommand {
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
        format: PlanFormat,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LabCommand {
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
    },
    /// Benchmark: a full headless runbook on fresh labs under load, measured.
    Rehearse {
        runbook: String,
        #[arg(long, default_value_t = 300)]
        rate: u32,
        #[arg(long, default_value_t = 5)]
        runs: u32,
        #[arg(long, default_value_t = 200_000)]
        docs: u64,
        /// major-upgrade: dumpall, parallel, pg-upgrade or pg-upgrade-copy.
        #[arg(long, default_value = "dumpall")]
        method: String,
        #[arg(long)]
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match (cli.command, cli.inventory) {
        (Some(command), _) => command,
        (None, Some(inventory)) if std::io::IsTerminal::is_terminal(&std::io::stdout()) => {
            Command::Tui {
                inventory,
                runbook: None,
                params: RunbookParams::default(),
                run: RunOptions::from_env(),
                theme: None,
                readonly: false,
            }
        }
        (None, Some(_)) => {
            eprintln!("cutover: the cockpit needs a terminal; use a subcommand (see --help)");
            return ExitCode::from(INVALID_INPUT);
        }
        (None, None) => {
            eprintln!(
                "cutover: give an inventory to open the cockpit, or a subcommand (see --help)"
            );
            return ExitCode::from(INVALID_INPUT);
        }
    };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("CUTOVER_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
    };
    if matches!(command, Command::Tui { .. }) {
        // The cockpit's log pane is the sink: nothing may write to the terminal underneath it.
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        match cutover::ui::log_layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry().with(layer).try_init();
            }
            Err(e) => {
                eprintln!("cutover: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init();
    }
    // Runbook actions are deep futures; workers get room for them (the runner also boxes them).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 * 1024 * 1024)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cutover: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cutover: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::PauseGuard {
            inventory,
            runbook,
            state_dir,
            parent,
            run_id,
            bound_ms,
            params,
            trust_on_first_use,
            pair,
        } => {
            let invocation = session::Invocation {
                inventory_path: inventory,
                runbook,
                params: params
                    .iter()
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                state_dir: Some(state_dir.clone()),
                oversight: oversight(pair),
                trust_on_first_use,
                expect_fingerprint: None,
            };
            pause_guard(&invocation, &state_dir, parent, run_id, bound_ms).await
        }
        Command::Check { file } => Ok(check(&file)),
        Command::Status { inventory, json } => status(&inventory, json).await,
        Command::Lab { command } => lab_command(command).await,
        Command::Plan {
            inventory,
            runbook,
            params,
            format,
        } => plan_command(&inventory, &runbook, &params, format),
        Command::Run {
            inventory,
            runbook,
            params,
            run,
            expect_fingerprint,
            yes,
        } => run_command(&inventory, &runbook, &params, &run, expect_fingerprint, yes).await,
        Command::Rollback {
            inventory,
            runbook,
            params,
            run,
            to,
            reason,
        } => rollback_command(&inventory, &runbook, &params, &run, &to, &reason).await,
        Command::Journal { command } => journal_command(command),
        Command::Tui {
            inventory,
            runbook,
            params,
            run,
            theme,
            readonly,
        } => tui_command(&inventory, runbook, &params, &run, theme, readonly).await,
    }
}

async fn tui_command(
    file: &std::path::Path,
    runbook: Option<String>,
    params: &RunbookParams,
    run: &RunOptions,
    theme: Option<String>,
    readonly: bool,
) -> Result<ExitCode> {
    let inv = match load_inventory(file)? {
        Ok(inv) => inv,
        Err(code) => return Ok(code),
    };
    let theme =
        match cutover::ui::theme::resolve(theme.as_deref(), &cutover::ui::ThemeEnv::from_process())
        {
            Ok(theme) => theme,
            Err(e) => {
                eprintln!("cutover: {e}");
                return Ok(ExitCode::from(INVALID_INPUT));
            }
        };
    let (requests_tx, requests_rx) = tokio::sync::mpsc::channel(8);
    let (updates_tx, updates_rx) = tokio::sync::mpsc::channel(64);
    let mut initial = None;
    let mut driving = None;
    if let Some(runbook) = runbook {
        if readonly {
            // Watch, never drive: no run is opened or created; the journal is followed. The
            // plan of a run in progress comes from the journal (its re-route may have rewritten
            // the inventory since); otherwise it is generated from the inventory.
            let journal =
                journal::Journal::open(&journal::resolve_state_dir(run.state_dir.as_deref())?)?;
            let in_progress = journal
                .latest_unfinished_run(&inv.environment, &runbook)?
                .and_then(|meta| runbook::Plan::from_json(&meta.plan_json).ok());
            let plan = match in_progress {
                Some(plan) => plan,
                None => match session::plan(&inv, &runbook, &params.to_map()) {
                    Ok(plan) => plan,
                    Err(e) => return Ok(report_session_error(e)),
                },
            };
            let bound = Duration::from_millis(
                plan.params
                    .get("pause-bound-ms")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(10_000),
            );
            tokio::spawn(cutover::cockpit::follow(journal, plan, bound, updates_tx));
        } else {
            let mut runner = match session::open(&invocation(file, &runbook, params, run, None)) {
                Ok(runner) => runner,
                Err(e) => return Ok(report_session_error(e)),
            };
            guard_pauses(&mut runner, invocation(file, &runbook, params, run, None));
            let bound = cutover::executor::Actions::pause_bound(runner.actions());
            initial = Some(cutover::cockpit::initial_view(&runner, bound));
            let stop = runner.stop_handle();
            let stop_requests = runner.stop_requests();
            stop_on_signals(stop.clone());
            let bridge = tokio::spawn(cutover::cockpit::serve(
                runner,
                requests_rx,
                updates_tx,
                bound,
            ));
            driving = Some((stop, bridge, stop_requests));
        }
    }
    let cockpit = cutover::ui::run(cutover::ui::TuiOptions {
        inventory: std::sync::Arc::new(inv),
        theme,
        operator: run.operator.clone(),
        pair: run.pair,
        readonly,
        requests_tx,
        updates_rx,
        initial,
        intervals: readings::poller::PollIntervals::default(),
        seen: cutover::cockpit::seen,
    });
    let ui = match &driving {
        // A signal closes the cockpit too (dropping it restores the terminal).
        Some((_, _, stop_requests)) => {
            let mut stop_requests = stop_requests.clone();
            tokio::select! {
                ui = cockpit => ui,
                _ = stop_requests.wait_for(Option::is_some) => Ok(()),
            }
        }
        None => cockpit.await,
    };
    if let Some((stop, bridge, _)) = driving {
        // The bridge ends a write pause and stops a running step before the process exits.
        stop.stop("the cockpit closed");
        let _ = bridge.await;
    }
    ui?;
    Ok(ExitCode::SUCCESS)
}

fn plan_command(
    file: &std::path::Path,
    runbook: &str,
    params: &RunbookParams,
    format: PlanFormat,
) -> Result<ExitCode> {
    let inv = match load_inventory(file)? {
        Ok(inv) => inv,
        Err(code) => return Ok(code),
    };
    let plan = match session::plan(&inv, runbook, &params.to_map()) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("cutover: {e}");
            return Ok(ExitCode::from(INVALID_INPUT));
        }
    };
    match format {
        PlanFormat::Md => emit!("{}", plan.to_markdown()),
        PlanFormat::Json => {
            let mut value: serde_json::Value = serde_json::from_str(&plan.to_json()?)?;
            value["fingerprint"] = serde_json::Value::String(plan.fingerprint());
            emit!("{}", serde_json::to_string_pretty(&value)?)
        }
    }
    eprintln!("fingerprint: {}", plan.fingerprint());
    Ok(ExitCode::SUCCESS)
}

fn invocation(
    file: &std::path::Path,
    runbook: &str,
    params: &RunbookParams,
    run: &RunOptions,
    expect: Option<String>,
) -> session::Invocation {
    session::Invocation {
        inventory_path: file.to_path_buf(),
        runbook: runbook.to_string(),
        params: params.to_map(),
        state_dir: run.state_dir.clone(),
        oversight: oversight(run.pair),
        trust_on_first_use: run.trust_on_first_use,
        expect_fingerprint: expect,
    }
}

fn oversight(pair: bool) -> engine::Oversight {
    if pair {
        engine::Oversight::Pair
    } else {
        engine::Oversight::Solo
    }
}

fn report_session_error(e: session::SessionError) -> ExitCode {
    eprintln!("cutover: {e}");
    match e {
        session::SessionError::Inventory(_)
        | session::SessionError::Split(_)
        | session::SessionError::UnknownRunbook(_)
        | session::SessionError::FingerprintMismatch { .. } => ExitCode::from(INVALID_INPUT),
        _ => ExitCode::FAILURE,
    }
}

async fn run_command(
    file: &std::path::Path,
    runbook: &str,
    params: &RunbookParams,
    run: &RunOptions,
    expect: Option<String>,
    yes: bool,
) -> Result<ExitCode> {
    let mut runner = match session::open(&invocation(file, runbook, params, run, expect)) {
        Ok(runner) => runner,
        Err(e) => return Ok(report_session_error(e)),
    };
    eprintln!(
        "{} run {} of {} (fingerprint {})",
        if runner.resumed {
            "resuming"
        } else {
            "starting"
        },
        runner.run_id,
        runner.plan.runbook,
        runner.plan.fingerprint()
    );
    if !yes {
        eprintln!("cutover: interactive runs use the cockpit: cutover tui {} {runbook} ...; pass --yes for a headless run", file.display());
        return Ok(ExitCode::from(INVALID_INPUT));
    }
    stop_on_signals(runner.stop_handle());
    guard_pauses(&mut runner, invocation(file, runbook, params, run, None));
    match runner.run_headless(&run.operator).await {
        Ok(_) => {
            emit!("run {} completed", runner.run_id);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("cutover: run {}: {e}", runner.run_id);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The guard outlives its driver: the terminal's hangup and Ctrl-C are not for it.
async fn pause_guard(
    invocation: &session::Invocation,
    state_dir: &std::path::Path,
    parent: u32,
    run_id: String,
    bound_ms: u64,
) -> Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handled and never read: the default action (exit) no longer applies.
    let _hangup = signal(SignalKind::hangup())?;
    let _interrupt = signal(SignalKind::interrupt())?;
    let outcome = cutover::guard::watch(
        invocation,
        state_dir,
        parent,
        &journal::RunId(run_id),
        Duration::from_millis(bound_ms),
    )
    .await;
    match outcome {
        Ok(outcome) => {
            tracing::info!("pause guard: {outcome:?}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            tracing::error!("pause guard: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Start a pause guard (`cutover pause-guard`) whenever the runner pauses traffic: a detached
/// process in its own process group, with no terminal, that ends the pause if this one dies.
fn guard_pauses(
    runner: &mut cutover::executor::Runner<session::RunbookActions>,
    invocation: session::Invocation,
) {
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("cutover: cannot find my own executable; no pause guard will run");
        return;
    };
    let state_dir = match journal::resolve_state_dir(invocation.state_dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("cutover: no pause guard: {e}");
            return;
        }
    };
    runner.on_pause(Box::new(move |run_id, bound| {
        use std::os::unix::process::CommandExt;
        let args = cutover::guard::command_args(
            &invocation,
            &state_dir,
            std::process::id(),
            run_id,
            bound,
        );
        let spawned = std::process::Command::new(&exe)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn();
        match spawned {
            Ok(child) => {
                tracing::info!(target: "cutover::cmd", pid = child.id(), "pause guard started")
            }
            Err(e) => tracing::warn!(target: "cutover::cmd", "pause guard not started: {e}"),
        }
    }));
}

/// SIGTERM, SIGHUP (the operator's terminal went away) and SIGINT ask the runner to stop:
/// it ends a write pause before the process exits instead of leaving applications waiting.
fn stop_on_signals(stop: cutover::executor::StopHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::interrupt(), "SIGINT"),
    ];
    for (kind, name) in kinds {
        let stop = stop.clone();
        match signal(kind) {
            Ok(mut stream) => {
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        eprintln!("cutover: {name}: stopping; a write pause is ended before exit (SIGKILL abandons it)");
                        stop.stop(format!("{name} received"));
                    }
                });
            }
            Err(e) => eprintln!("cutover: cannot handle {name}: {e}"),
        }
    }
}

async fn rollback_command(
    file: &std::path::Path,
    runbook: &str,
    params: &RunbookParams,
    run: &RunOptions,
    to: &str,
    reason: &str,
) -> Result<ExitCode> {
    let mut runner = match session::open(&invocation(file, runbook, params, run, None)) {
        Ok(runner) => runner,
        Err(e) => return Ok(report_session_error(e)),
    };
    match runner
        .rollback_to(&runbook::StepId::new(to), &run.operator, reason)
        .await
    {
        Ok(()) => {
            emit!("run {} rolled back to {to}", runner.run_id);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("cutover: rollback of run {}: {e}", runner.run_id);
            Ok(ExitCode::FAILURE)
        }
    }
}

fn journal_command(command: JournalCommand) -> Result<ExitCode> {
    let (run, state_dir, format) = match command {
        JournalCommand::Show { run, state_dir } => (run, state_dir, None),
        JournalCommand::Export {
            run,
            format,
            state_dir,
        } => (run, state_dir, Some(format)),
    };
    let journal = journal::Journal::open(&journal::resolve_state_dir(state_dir.as_deref())?)?;
    let run_id = match run {
        Some(id) => journal::RunId(id),
        None if format.is_none() => {
            for meta in journal.runs()? {
                emit!(
                    "{}  {:<12} {:<12} {} {}",
                    meta.run_id,
                    meta.status,
                    meta.runbook,
                    meta.environment,
                    &meta.fingerprint[..12.min(meta.fingerprint.len())]
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        None => match journal.runs()?.into_iter().next() {
            Some(meta) => meta.run_id,
            None => {
                eprintln!("cutover: the journal has no runs");
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    match format {
        None => emit!("{}", journal.show_text(&run_id)?),
        Some(PlanFormat::Md) => emit!("{}", journal.export_markdown(&run_id)?),
        Some(PlanFormat::Json) => {
            let entries = journal.entries(&run_id)?;
            let rows: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| serde_json::json!({"at": e.at, "step": e.step.as_ref().map(|s| s.to_string()), "kind": e.kind.as_str(), "detail": e.detail, "actors": e.actors}))
                .collect();
            emit!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"run": run_id.0, "entries": rows})
                )?
            )
        }
    }
    Ok(ExitCode::SUCCESS)
}

const INVALID_INPUT: u8 = 2;

fn check(file: &std::path::Path) -> ExitCode {
    match inventory::load(file) {
        Ok(inv) => {
            emit!(
                "{}: ok ({} nodes, {} partitions, {} shards)",
                file.display(),
                inv.nodes.len(),
                inv.partitions.len(),
                inv.shard_count
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            emit!("{e}");
            ExitCode::from(INVALID_INPUT)
        }
    }
}

/// Load an inventory for a command that needs a valid one; invalid input exits 2 with every problem.
fn load_inventory(file: &std::path::Path) -> Result<Result<inventory::Inventory, ExitCode>> {
    match inventory::load(file) {
        Ok(inv) => Ok(Ok(inv)),
        Err(e @ inventory::InventoryError::Invalid(_)) => {
            eprintln!("{e}");
            Ok(Err(ExitCode::from(INVALID_INPUT)))
        }
        Err(e) => Err(e).context("loading the inventory"),
    }
}

async fn status(file: &std::path::Path, json: bool) -> Result<ExitCode> {
    let inv = match load_inventory(file)? {
        Ok(inv) => inv,
        Err(code) => return Ok(code),
    };
    let snapshot = readings::queries::snapshot(&inv).await;
    if json {
        emit!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        emit!("{}", readings::text::render_snapshot(&snapshot));
    }
    Ok(ExitCode::SUCCESS)
}

async fn lab_command(command: LabCommand) -> Result<ExitCode> {
    match command {
        LabCommand::Up {
            dir,
            docs,
            pg1_port,
            pg2_port,
            pgbouncer_port,
            ssh_port,
            with_target,
            target_port,
        } => {
            let config = lab::LabConfig {
                dir,
                docs,
                pg1_port,
                pg2_port,
                pgbouncer_port,
                ssh_port,
            };
            let target = with_target.map(|version| lab::TargetConfig {
                version,
                port: target_port,
            });
            let report = lab::up_with_target(&config, target).await?;
            for started in &report.started {
                eprintln!("started: {started}");
            }
            for running in &report.already_running {
                eprintln!("already running: {running}");
            }
            emit!("{}", report.inventory.display());
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Rehearse {
            runbook,
            rate,
            runs,
            docs,
            method,
            json,
        } => {
            if runbook == runbook::major_upgrade::RUNBOOK {
                let options = lab::rehearse_upgrade::UpgradeRehearsalOptions {
                    method,
                    ..Default::default()
                };
                let report = lab::rehearse_upgrade::major_upgrade(&options).await?;
                if json {
                    emit!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    emit!("{}", report.human());
                }
                return Ok(if report.error.is_none() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            if runbook != runbook::shard_split::RUNBOOK {
                eprintln!("cutover: lab rehearse knows: shard-split, major-upgrade");
                return Ok(ExitCode::from(INVALID_INPUT));
            }
            let summary =
                lab::rehearse::shard_split(&lab::rehearse::RehearsalOptions { rate, runs, docs })
                    .await?;
            if json {
                emit!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                emit!(
                    "pause window: median {:.1} ms, worst {:.1} ms; failed {}, missing {}, stray {} over {} runs at {rate}/s",
                    summary.pause_window_ms.median,
                    summary.pause_window_ms.worst,
                    summary.failed,
                    summary.missing,
                    summary.stray,
                    summary.runs.len()
                );
            }
            let clean = summary.failed == 0
                && summary.missing == 0
                && summary.runs.iter().all(|r| r.error.is_none());
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCommand::Down { dir } => {
            for stopped in lab::down(&dir)? {
                eprintln!("stopped: {stopped}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Load {
            dir,
            rate,
            seconds,
            workers,
            out,
        } => {
            let inv = match load_inventory(&dir.join("lab.yaml"))? {
                Ok(inv) => inv,
                Err(code) => return Ok(code),
            };
            let endpoint = lab::load::entry_endpoint(&inv)
                .context("the lab inventory has no proxy alias on a pgbouncer")?;
            let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let report = lab::load::run(
                lab::load::LoadOptions {
                    endpoint,
                    rate,
                    duration: Duration::from_secs(seconds),
                    workers,
                    out,
                },
                stop_rx,
            )
            .await?;
            emit!("{}", serde_json::to_string(&report)?);
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
