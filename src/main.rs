//! `cutover` command line: the edge where arguments become calls into the library and errors
//! become exit codes (0 ok, 1 failure, 2 invalid input).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cutover::{inventory, lab, readings};
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
#[command(name = "cutover", version, about = "A terminal cockpit for PostgreSQL cutovers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// The local lab of real servers.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUTOVER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cutover: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cutover: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Check { file } => Ok(check(&file)),
        Command::Status { inventory, json } => status(&inventory, json).await,
        Command::Lab { command } => lab_command(command).await,
    }
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
        } => {
            let config = lab::LabConfig {
                dir,
                docs,
                pg1_port,
                pg2_port,
                pgbouncer_port,
                ssh_port,
            };
            let report = lab::up(&config).await?;
            for started in &report.started {
                eprintln!("started: {started}");
            }
            for running in &report.already_running {
                eprintln!("already running: {running}");
            }
            emit!("{}", report.inventory.display());
            Ok(ExitCode::SUCCESS)
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
