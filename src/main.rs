//! `cutover` command line: the edge where arguments become calls into the library and errors
//! become exit codes (0 ok, 1 failure, 2 invalid input).

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use cutover::{engine, inventory, journal, lab, plan, readings, runbooks, session};
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

mod cli;

use cli::{
    Cli, Command, CompletionShell, Format, JournalCommand, LabCommand, RunOptions, RunbookChoice,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match (cli.command, cli.inventory) {
        (Some(command), _) => command,
        (None, Some(inventory)) if std::io::IsTerminal::is_terminal(&std::io::stdout()) => {
            Command::Tui {
                inventory,
                runbook: None,
                run: RunOptions::from_env(),
                theme: None,
                readonly: false,
                second: false,
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
        Command::Status { inventory, json } => {
            warn_unverified(&inventory);
            status(&inventory, json).await
        }
        Command::Lab { command } => lab_command(command).await,
        Command::Plan {
            inventory,
            runbook,
            format,
            approve,
            state_dir,
            operator,
        } => {
            let approve = approve.then_some(PlanApproval {
                state_dir,
                operator,
            });
            plan_command(&inventory, &runbook, format, approve)
        }
        Command::Approve {
            inventory,
            runbook,
            run,
            step,
            seen,
            object,
            withdraw,
            wait_s,
        } => {
            let Some(step) = step else {
                eprintln!("cutover: approve needs --step STEP (the step the driver waits on)");
                return Ok(ExitCode::from(INVALID_INPUT));
            };
            let asked = Asked {
                step: plan::StepId::new(step),
                seen,
                object,
                withdraw,
                wait: Duration::from_secs(wait_s),
            };
            approve_command(&inventory, &runbook, &run, asked).await
        }
        Command::Run {
            inventory,
            runbook,
            run,
            expect_fingerprint,
            yes,
            json,
            through,
            step,
        } => {
            let only = step.is_some();
            let through = step.or(through).map(plan::StepId::new);
            let yes = Yes { yes, through, only };
            run_command(&inventory, &runbook, &run, expect_fingerprint, yes, json).await
        }
        Command::Completions { shell } => completions(shell),
        Command::Man => man_page(),
        Command::Rollback {
            inventory,
            runbook,
            run,
            back_to,
            reason,
        } => match back_to {
            Some(step) => rollback_command(&inventory, &runbook, &run, &step, &reason).await,
            None => {
                eprintln!("cutover: rollback needs --back-to STEP");
                Ok(ExitCode::from(INVALID_INPUT))
            }
        },
        Command::Journal { command } => journal_command(command),
        Command::Abandon {
            inventory,
            runbook,
            run,
            reason,
        } => {
            let Some(reason) = reason.filter(|r| !r.trim().is_empty()) else {
                eprintln!("cutover: abandon needs --reason TEXT, for the journal");
                return Ok(ExitCode::from(INVALID_INPUT));
            };
            let invocation = invocation(&inventory, &runbook, &run, None);
            match session::abandon(&invocation, &run.operator, &reason) {
                Ok(run_id) => {
                    emit!("run {run_id} abandoned");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(report_session_error(e)),
            }
        }
        Command::Copy {
            command: cli::CopyCommand::Status(args),
        } => match cutover::runbooks::table_copy::status_command(&args) {
            Ok(text) => {
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("cutover: {e}");
                Ok(ExitCode::from(INVALID_INPUT))
            }
        },
        Command::Tui {
            inventory,
            runbook,
            run,
            theme,
            readonly,
            second,
        } => tui_command(&inventory, runbook, &run, theme, readonly, second).await,
    }
}

async fn tui_command(
    file: &std::path::Path,
    runbook: Option<RunbookChoice>,
    run: &RunOptions,
    theme: Option<String>,
    readonly: bool,
    second: bool,
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
    let launch = cutover::cockpit::Launch {
        inventory_path: file.to_path_buf(),
        inventory: inv,
        theme,
        operator: run.operator.clone(),
        pair: run.pair,
        readonly: readonly || second,
        second,
        runbook: runbook.map(|runbook| invocation(file, &runbook, run, None)),
    };
    match cutover::cockpit::launch(launch).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(cutover::cockpit::LaunchError::Session(e)) => Ok(report_session_error(e)),
        Err(e) => Err(e.into()),
    }
}

/// `cutover plan --approve`: where to record the approval, and the display name.
struct PlanApproval {
    state_dir: Option<std::path::PathBuf>,
    operator: String,
}

fn plan_command(
    file: &std::path::Path,
    runbook: &RunbookChoice,
    format: Format,
    approve: Option<PlanApproval>,
) -> Result<ExitCode> {
    let inv = match load_inventory(file)? {
        Ok(inv) => inv,
        Err(code) => return Ok(code),
    };
    for warning in cutover::tls::inventory_warnings(&inv) {
        eprintln!("warning: {warning}");
    }
    let plan = match session::plan(&inv, &runbook.name, &runbook.params) {
        Ok(plan) => plan,
        Err(e) => return Ok(report_session_error(e)),
    };
    match format {
        Format::Md => emit!("{}", plan.to_markdown()),
        Format::Json => {
            let mut value: serde_json::Value = serde_json::from_str(&plan.to_json()?)?;
            value["fingerprint"] = serde_json::Value::String(plan.fingerprint());
            emit!("{}", serde_json::to_string_pretty(&value)?)
        }
    }
    eprintln!("fingerprint: {}", plan.fingerprint());
    if let Some(approve) = approve {
        let me = cutover::identity::Identity::current(Some(&approve.operator));
        let journal =
            journal::Journal::open(&journal::resolve_state_dir(approve.state_dir.as_deref())?)?;
        journal.record_verdict(&cutover::approval::VerdictRecord {
            request_id: None,
            environment: plan.environment.clone(),
            runbook: plan.runbook.clone(),
            fingerprint: plan.fingerprint(),
            step: None,
            seen: None,
            verdict: cutover::approval::Verdict::Approve,
            reason: String::new(),
            by: cutover::approval::Person::from(&me),
            at: chrono::Utc::now(),
        })?;
        eprintln!(
            "plan {} approved by {} from {}",
            plan.fingerprint(),
            me.label(),
            me.terminal.describe()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `cutover approve` was asked to do.
struct Asked {
    step: plan::StepId,
    seen: Option<String>,
    object: Option<String>,
    withdraw: bool,
    wait: Duration,
}

/// Exit code of a verdict the pair-review rules refuse (same user, stale, other plan).
const REFUSED: u8 = 3;

async fn approve_command(
    file: &std::path::Path,
    runbook: &RunbookChoice,
    run: &RunOptions,
    asked: Asked,
) -> Result<ExitCode> {
    use cutover::approval::{self, Verdict};
    let (plan, journal) = match session::review_plan(&invocation(file, runbook, run, None)) {
        Ok(reviewed) => reviewed,
        Err(e) => return Ok(report_session_error(e)),
    };
    let me = cutover::identity::Identity::current(Some(&run.operator));
    let until = std::time::Instant::now() + asked.wait;
    let request = loop {
        // A request is answered only while its driver runs (it holds the driver lock); one
        // left by a driver that died is answered by nobody.
        let driving = journal.driver(&plan.environment, &plan.runbook).is_some();
        let open = journal
            .open_approval_request(&plan.environment, &plan.runbook, Some(&asked.step))?
            .filter(|_| driving);
        match open {
            Some(request) => break request,
            None if std::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            None => {
                eprintln!(
                    "cutover: no driver of {} on {} waits for an approval of `{}`",
                    plan.runbook, plan.environment, asked.step
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    };
    emit!("{}", approval::describe_request(&request).trim_end());
    let (verdict, reason) = match (&asked.object, asked.withdraw, &asked.seen) {
        (Some(reason), _, _) => (Verdict::Object, reason.clone()),
        (None, true, _) => (Verdict::Withdraw, String::new()),
        (None, false, Some(_)) => (Verdict::Approve, String::new()),
        (None, false, None) => {
            emit!(
                "to approve exactly this: cutover approve {} {} --step {} --seen {}",
                file.display(),
                plan.runbook,
                asked.step,
                request.seen
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Err(refusal) = approval::check_verdict(
        &request,
        &plan.fingerprint(),
        &me,
        verdict,
        asked.seen.as_deref(),
        &reason,
    ) {
        eprintln!("cutover: refused: {refusal}");
        return Ok(ExitCode::from(REFUSED));
    }
    journal.record_verdict(&approval::VerdictRecord::on(
        &request,
        verdict,
        reason,
        approval::Person::from(&me),
    ))?;
    emit!(
        "{} request {} ({}) as {} from {}",
        match verdict {
            Verdict::Approve => "approved",
            Verdict::Object => "objected to",
            Verdict::Withdraw => "withdrew your verdict on",
        },
        request.id,
        request.covers,
        me.label(),
        me.terminal.describe()
    );
    Ok(ExitCode::SUCCESS)
}

fn invocation(
    file: &std::path::Path,
    runbook: &RunbookChoice,
    run: &RunOptions,
    expect: Option<String>,
) -> session::Invocation {
    session::Invocation {
        inventory_path: file.to_path_buf(),
        runbook: runbook.name.clone(),
        params: runbook.params.clone(),
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
    if e.is_invalid_input() {
        ExitCode::from(INVALID_INPUT)
    } else {
        ExitCode::FAILURE
    }
}

/// How far a headless run goes: `--yes`, `--through STEP`, `--step STEP`.
struct Yes {
    yes: bool,
    through: Option<plan::StepId>,
    /// `--step`: `through` must be the next step.
    only: bool,
}

async fn run_command(
    file: &std::path::Path,
    runbook: &RunbookChoice,
    run: &RunOptions,
    expect: Option<String>,
    yes: Yes,
    json: bool,
) -> Result<ExitCode> {
    warn_unverified(file);
    let mut runner = match session::open(&invocation(file, runbook, run, expect)) {
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
    if !yes.yes {
        eprintln!(
            "cutover: interactive runs use the cockpit: cutover tui {} {} ...; pass --yes for a headless run",
            file.display(),
            runbook.name
        );
        return Ok(ExitCode::from(INVALID_INPUT));
    }
    if let Some(through) = &yes.through {
        if let Err(reason) = runner.check_stop_step(through, yes.only) {
            eprintln!("cutover: {reason}");
            return Ok(ExitCode::from(INVALID_INPUT));
        }
        if let Some(spec) = runner
            .plan
            .step(through)
            .filter(|s| s.flags.removes_way_back)
        {
            eprintln!(
                "cutover: `{through}` removes the way back; it runs: {}",
                spec.commands
                    .iter()
                    .map(|c| format!("[{}] {}", c.target, c.text))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    }
    cutover::executor::signals::stop_on_signals(runner.stop_handle());
    cutover::guard::spawn_on_pause(&mut runner, invocation(file, runbook, run, None));
    runner.set_identity(cutover::identity::Identity::current(Some(&run.operator)));
    runner.on_approval(Box::new(|status| {
        eprintln!("cutover: {}", status.describe());
    }));
    if json {
        runner.on_entry(Box::new(|run_id, entry| {
            emit!("{}", journal::entry_json_line(run_id, entry));
        }));
    }
    // With --json, stdout carries only the journal's lines; what people read goes to stderr.
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            emit!("{line}");
        }
    };
    match runner
        .run_headless_through(&run.operator, yes.through.as_ref())
        .await
    {
        Ok(cutover::executor::Progress::HeldBefore { step }) => {
            let what = runner
                .plan
                .step(&step)
                .map(|s| s.title.clone())
                .unwrap_or_default();
            say(format!(
                "run {} stopped before `{step}` ({what}): it removes the way back and runs only when named: cutover run {} {} --yes --step {step}",
                runner.run_id,
                file.display(),
                runbook.name
            ));
            Ok(ExitCode::SUCCESS)
        }
        Ok(cutover::executor::Progress::StoppedAfter { step }) => {
            say(format!(
                "run {} stopped after `{step}` as asked",
                runner.run_id
            ));
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => {
            say(format!("run {} completed", runner.run_id));
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

async fn rollback_command(
    file: &std::path::Path,
    runbook: &RunbookChoice,
    run: &RunOptions,
    to: &str,
    reason: &str,
) -> Result<ExitCode> {
    let mut runner = match session::open(&invocation(file, runbook, run, None)) {
        Ok(runner) => runner,
        Err(e) => return Ok(report_session_error(e)),
    };
    match runner
        .rollback_to(&plan::StepId::new(to), &run.operator, reason)
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
        Some(Format::Md) => emit!("{}", journal.export_markdown(&run_id)?),
        Some(Format::Json) => emit!(
            "{}",
            serde_json::to_string_pretty(&journal.export_json(&run_id)?)?
        ),
    }
    Ok(ExitCode::SUCCESS)
}

const INVALID_INPUT: u8 = 2;

/// TLS warnings for the inventory at `file`, on stderr; an unreadable inventory is reported
/// later by the command itself.
fn warn_unverified(file: &std::path::Path) {
    if let Ok(inv) = inventory::load(file) {
        for warning in cutover::tls::inventory_warnings(&inv) {
            eprintln!("warning: {warning}");
        }
    }
}

/// The completion script for `shell`, generated from the full command (runbooks included).
fn completions(shell: CompletionShell) -> Result<ExitCode> {
    use clap_complete::Shell;
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "cutover", &mut out);
    write_stdout(&out)
}

/// `cutover(1)`: the top-level page, with every subcommand listed.
fn man_page() -> Result<ExitCode> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> Result<ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

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
            for warning in cutover::tls::inventory_warnings(&inv) {
                eprintln!("warning: {warning}");
            }
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
            citus,
            citus_version,
            citus_coordinator_port,
            citus_worker_ports,
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
            let citus = match (citus, citus_worker_ports.as_slice()) {
                (false, _) => None,
                (true, &[first, second]) => Some(lab::citus::CitusConfig {
                    version: citus_version,
                    ports: [citus_coordinator_port, first, second],
                }),
                (true, _) => {
                    eprintln!("cutover: --citus-worker-ports takes two ports, e.g. 54331,54332");
                    return Ok(ExitCode::from(INVALID_INPUT));
                }
            };
            let report = lab::up_with(&config, target, citus).await?;
            for started in &report.started {
                eprintln!("started: {started}");
            }
            for running in &report.already_running {
                eprintln!("already running: {running}");
            }
            emit!("{}", report.inventory.display());
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Rehearse { runbook, json } => {
            let registered = match runbooks::find(&runbook.name) {
                Ok(registered) => registered,
                Err(e) => {
                    eprintln!("cutover: {e}");
                    return Ok(ExitCode::from(INVALID_INPUT));
                }
            };
            let rehearsal = registered
                .rehearse(&runbook.matches)?
                .await
                .map_err(anyhow::Error::msg)?;
            if json {
                emit!("{}", serde_json::to_string_pretty(&rehearsal.json)?);
            } else {
                emit!("{}", rehearsal.human);
            }
            Ok(if rehearsal.clean {
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
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            // A load started in the background (the demo tape) ends with its lab: once the
            // lab's inventory is gone there is nothing left to call.
            let lab_file = dir.join("lab.yaml");
            tokio::spawn(async move {
                while tokio::fs::try_exists(&lab_file).await.unwrap_or(true) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let _ = stop_tx.send(true);
            });
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
