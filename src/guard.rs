//! Pause guard: the safety net behind the executor. When a driving `cutover` pauses traffic it
//! starts `cutover pause-guard`, a detached process that watches the driver and the journal.
//! If the driver dies in a way no handler sees (SIGKILL, the OOM killer, the jump host going
//! down) and the pause outlives its bound, the guard opens the run as its driver and ends the
//! pause exactly as the bound would: resume, roll back to before the pause, journal why.
//! Otherwise it leaves by itself: the pause ended, the run finished, or its journal is gone.

use crate::engine::{EngineSettings, EngineState};
use crate::executor::RunError;
use crate::journal::{Journal, JournalError, RunId, RunStatus, JOURNAL_FILE};
use crate::plan::Plan;
use crate::session::{self, Invocation, SessionError};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the guard looks at the driver and the journal.
const POLL: Duration = Duration::from_millis(250);
/// A live driver enforces its own bound; past the bound by this much the guard stops watching.
const WATCH_LIMIT_PAST_BOUND: Duration = Duration::from_secs(600);

/// How a guard's watch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardOutcome {
    /// The pause ended without the guard (the driver resumed, or rolled back).
    PauseEnded,
    /// The run finished, or its journal is gone.
    RunGone,
    /// The driver died and the pause outlived its bound: the guard ended it.
    EndedPause,
    /// The driver is still alive long past the bound: it enforces its own bound.
    StoppedWatching,
}

/// Arguments of `cutover pause-guard` for the pause of `run_id` that has just begun. The
/// state dir must be the resolved one, so the guard reads the journal the driver writes.
pub fn command_args(
    invocation: &Invocation,
    state_dir: &Path,
    parent: u32,
    run_id: &RunId,
    bound: Duration,
) -> Vec<String> {
    let mut args = vec![
        "pause-guard".to_string(),
        invocation.inventory_path.display().to_string(),
        invocation.runbook.clone(),
        "--state-dir".to_string(),
        state_dir.display().to_string(),
        "--parent".to_string(),
        parent.to_string(),
        "--run-id".to_string(),
        run_id.0.clone(),
        "--bound-ms".to_string(),
        bound.as_millis().to_string(),
    ];
    for (name, value) in &invocation.params {
        args.push("--param".to_string());
        args.push(format!("{name}={value}"));
    }
    if invocation.trust_on_first_use {
        args.push("--trust-on-first-use".to_string());
    }
    if invocation.oversight == crate::engine::Oversight::Pair {
        args.push("--pair".to_string());
    }
    args
}

/// Watch the pause of `run_id`, begun about now, driven by process `parent`.
pub async fn watch(
    invocation: &Invocation,
    state_dir: &Path,
    parent: u32,
    run_id: &RunId,
    bound: Duration,
) -> Result<GuardOutcome, String> {
    let started = Instant::now();
    // The bound counts from the last moment a live driver held the pause: a driver that
    // resumes the run enforces its own bound from its resume, so the guard's clock restarts
    // whenever it sees one.
    let mut driven_at = started;
    let mut journal = None;
    loop {
        tokio::time::sleep(POLL).await;
        match paused(&mut journal, state_dir, run_id) {
            None => return Ok(GuardOutcome::RunGone),
            Some(false) => return Ok(GuardOutcome::PauseEnded),
            Some(true) => {}
        }
        if process_alive(parent) {
            if started.elapsed() > bound + WATCH_LIMIT_PAST_BOUND {
                return Ok(GuardOutcome::StoppedWatching);
            }
            continue;
        }
        if other_driver_alive(journal.as_ref(), run_id, parent) {
            driven_at = Instant::now();
            continue;
        }
        if driven_at.elapsed() < bound {
            // An operator who re-runs promptly takes the run over before the guard would.
            continue;
        }
        let mut runner = match session::open(invocation) {
            Ok(runner) => runner,
            // Another driver took the run over: it enforces the bound; watch in case it dies.
            Err(SessionError::Run(e))
                if matches!(*e, RunError::Journal(JournalError::DriverBusy { .. })) =>
            {
                continue
            }
            Err(e) => return Err(e.to_string()),
        };
        if runner.run_id != *run_id || !runner.state.traffic_paused() {
            return Ok(GuardOutcome::PauseEnded);
        }
        let reason = format!("the driving cutover process (pid {parent}) is gone");
        runner
            .end_pause_before_exit(&reason)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(GuardOutcome::EndedPause);
    }
}

/// Whether the run is unfinished with traffic paused, from its journal alone (opened once,
/// into `journal`); `None` when the journal or the run is gone. Never creates the journal.
fn paused(journal: &mut Option<Journal>, state_dir: &Path, run_id: &RunId) -> Option<bool> {
    if !state_dir.join(JOURNAL_FILE).exists() {
        return None;
    }
    if journal.is_none() {
        *journal = Journal::open(state_dir).ok();
    }
    let journal = journal.as_ref()?;
    let meta = journal.run(run_id).ok()?;
    if meta.status != RunStatus::Running {
        return None;
    }
    let plan = Plan::from_json(&meta.plan_json).ok()?;
    let entries = journal.entries(run_id).ok()?;
    let state = EngineState::replay(&plan, EngineSettings::default(), entries.iter()).ok()?;
    Some(state.traffic_paused())
}

/// Whether a live process other than `parent` (and this guard) holds the run's driver lock.
fn other_driver_alive(journal: Option<&Journal>, run_id: &RunId, parent: u32) -> bool {
    let Some(journal) = journal else {
        return false;
    };
    let Ok(meta) = journal.run(run_id) else {
        return false;
    };
    journal
        .driver_holder_pid(&meta.environment, &meta.runbook)
        .is_some_and(|pid| pid != parent && pid != std::process::id() && process_alive(pid))
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Start a pause guard (`cutover pause-guard`, this executable) whenever `runner` pauses
/// traffic: a detached process in its own process group, with no terminal, that ends the
/// pause if the driver dies unseen.
pub fn spawn_on_pause<A: crate::executor::Actions>(
    runner: &mut crate::executor::Runner<A>,
    invocation: Invocation,
) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::warn!(target: "cutover::cmd", "no pause guard: cannot find this executable: {e}");
            return;
        }
    };
    let state_dir = match crate::journal::resolve_state_dir(invocation.state_dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => {
            tracing::warn!(target: "cutover::cmd", "no pause guard: {e}");
            return;
        }
    };
    runner.on_pause(Box::new(move |run_id, bound| {
        use std::os::unix::process::CommandExt;
        let args = command_args(&invocation, &state_dir, std::process::id(), run_id, bound);
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
