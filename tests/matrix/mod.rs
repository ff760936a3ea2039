//! The crash matrix harness, generic over runbooks: drive the real binary headless on a real
//! lab, SIGKILL it at every journaled step boundary, at seeded points inside long steps and at
//! each subject's fixed points, resume with the same command, and check the subject's ground
//! truth read from the servers. A runbook joins the matrix with a [`Subject`] and one line in
//! `tests/crash_matrix.rs`.
#![allow(dead_code)]

use cutover::engine::EntryKind;
use cutover::engine::JournalEntry;
use cutover::journal::Journal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Seeds of the CI matrix; `CUTOVER_MATRIX_SEEDS=1,2,3` (a nightly run) picks others.
pub const CI_SEEDS: [u64; 1] = [1];
/// Longest a kill point may take to be reached before the matrix gives up on it.
const REACH_TIMEOUT: Duration = Duration::from_secs(180);
/// Slack over the pause bound for the guard to notice and end a pause.
const GUARD_SLACK: Duration = Duration::from_secs(10);

/// When the driver is killed: the journal's entries are watched from the moment it starts.
#[derive(Debug, Clone)]
pub enum When {
    /// Just after `step` is verified: a step boundary.
    Verified(String),
    /// `delay` after `step` started: inside it, or further on when it is quicker.
    Started(String, Duration),
    /// As soon as `step` journals output containing the text.
    Output(String, String),
    /// The driver kills itself with SIGKILL at a moment no journal entry marks (e.g. right
    /// after a target commit, before the local state update), when run with `env` set.
    SelfKill(String, (String, String)),
}

/// What happens between the kill and the next run.
#[derive(Debug, Clone)]
pub enum Then {
    /// The operator re-runs at once.
    Resume,
    /// Nobody re-runs: the pause guard must end the pause within the bound, then the
    /// operator re-runs.
    AwaitGuard,
    /// The subject alters the lab the way a crash at a narrower moment would have left it,
    /// then the operator re-runs.
    Tamper(&'static str),
}

#[derive(Debug, Clone)]
pub struct KillPoint {
    pub when: When,
    pub then: Then,
}

impl KillPoint {
    pub fn verified(step: &str) -> Self {
        KillPoint {
            when: When::Verified(step.into()),
            then: Then::Resume,
        }
    }
    pub fn started(step: &str, delay_ms: u64) -> Self {
        KillPoint {
            when: When::Started(step.into(), Duration::from_millis(delay_ms)),
            then: Then::Resume,
        }
    }
    pub fn output(step: &str, text: &str) -> Self {
        KillPoint {
            when: When::Output(step.into(), text.into()),
            then: Then::Resume,
        }
    }
    pub fn self_kill(step: &str, env: &str, value: &str) -> Self {
        KillPoint {
            when: When::SelfKill(step.into(), (env.into(), value.into())),
            then: Then::Resume,
        }
    }
    pub fn then(mut self, then: Then) -> Self {
        self.then = then;
        self
    }

    fn label(&self) -> String {
        let when = match &self.when {
            When::Verified(s) => format!("after {s}"),
            When::Started(s, d) => format!("{} ms into {s}", d.as_millis()),
            When::Output(s, t) => format!("in {s} at \"{t}\""),
            When::SelfKill(s, (k, v)) => format!("in {s} by itself at {k}={v}"),
        };
        match self.then {
            Then::Resume => when,
            Then::AwaitGuard => format!("{when}, guard ends the pause"),
            Then::Tamper(tag) => format!("{when}, then {tag}"),
        }
    }
}

/// One runbook on its lab, as the matrix drives it.
#[allow(async_fn_in_trait)]
pub trait Subject: Sized {
    /// The runbook's registry name.
    const RUNBOOK: &'static str;

    /// How the matrix names this subject (the runbook, and its method when it has several).
    fn name() -> String {
        Self::RUNBOOK.to_string()
    }
    /// A fresh lab for one pass of the matrix.
    async fn start() -> Self;
    fn inventory_path(&self) -> PathBuf;
    /// The run's parameters (long flag name → value); the same on every run.
    fn params(&self) -> BTreeMap<String, String>;
    /// A step that removes the way back, named with `--through` as an operator runs it after
    /// the soak; `--yes` alone stops before it.
    fn through(&self) -> Option<&'static str> {
        None
    }
    /// Steps long enough to be killed inside, with the span (ms) a seeded delay is drawn from.
    fn long_steps(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Points beyond the boundaries and the seeded ones, in plan order of their steps.
    fn fixed_points(&self) -> Vec<KillPoint> {
        Vec::new()
    }
    /// The step that pauses traffic, for runbooks that pause.
    fn pause_step(&self) -> Option<&'static str> {
        None
    }
    /// Whether traffic is paused right now, read from pgbouncer.
    async fn paused(&self) -> bool {
        false
    }
    /// Start application traffic, for runbooks that run under load.
    async fn start_load(&mut self) {}
    /// Alter the lab as the fixed point `tag` says.
    async fn tamper(&self, tag: &str) {
        panic!("{} has no tamper `{tag}`", Self::RUNBOOK);
    }
    /// What must hold after every kill, whatever the run reached (e.g. the way back intact
    /// until it is retired).
    async fn after_kill(&self, _entries: &[JournalEntry]) {}
    /// The end state, against ground truth read from the servers.
    async fn converged(&mut self, entries: &[JournalEntry]);
}

/// What one pass did, for the README's numbers.
#[derive(Debug, Default)]
pub struct PassReport {
    pub kills: usize,
    pub guard_ends: usize,
    /// Points the run passed without reaching (it finished first).
    pub missed: usize,
    pub unexpected_exits: usize,
    /// Points whose step an earlier kill had already passed.
    pub overshot: usize,
    /// Runs refused while the pause guard held the run.
    pub held: usize,
    pub seconds: f64,
}

pub fn seeds() -> Vec<u64> {
    match std::env::var("CUTOVER_MATRIX_SEEDS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|s| s.trim().parse().expect("CUTOVER_MATRIX_SEEDS: numbers"))
            .collect(),
        _ => CI_SEEDS.to_vec(),
    }
}

/// A small deterministic generator: the same seed gives the same kill points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The kill points of one pass: every step boundary (the last one ends the run, so it is not
/// one), a seeded point inside each long step, the subject's fixed points, and, for a runbook
/// that pauses, a kill inside the pause that nobody follows up on but the guard.
pub fn schedule<S: Subject>(subject: &S, steps: &[String], seed: u64) -> Vec<KillPoint> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let long = subject.long_steps();
    let fixed = subject.fixed_points();
    let mut points = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if subject.pause_step() == Some(step.as_str()) {
            points.push(KillPoint::verified(step).then(Then::AwaitGuard));
        }
        if let Some((_, span)) = long.iter().find(|(s, _)| s == step) {
            points.push(KillPoint::started(step, rng.below(*span)));
        }
        points.extend(fixed.iter().filter(|p| step_of(p) == step).cloned());
        if i + 1 < steps.len() {
            points.push(KillPoint::verified(step));
        }
    }
    points
}

fn step_of(point: &KillPoint) -> &str {
    match &point.when {
        When::Verified(s) | When::Started(s, _) | When::Output(s, _) | When::SelfKill(s, _) => s,
    }
}

/// `cutover run INV RUNBOOK --k v ... --yes --state-dir D`: the operator's one command.
pub fn run_command<S: Subject>(subject: &S, state: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cutover"));
    command
        .arg("run")
        .arg(subject.inventory_path())
        .arg(S::RUNBOOK);
    for (name, value) in subject.params() {
        command.arg(format!("--{name}")).arg(value);
    }
    if let Some(step) = subject.through() {
        command.arg("--through").arg(step);
    }
    command.arg("--yes").arg("--state-dir").arg(state);
    command
}

fn spawn<S: Subject>(subject: &S, state: &Path, log: &Path, when: &When) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("driver log");
    let mut command = run_command(subject, state);
    if let When::SelfKill(_, (name, value)) = when {
        command.env(name, value);
    }
    command
        .stdout(stderr.try_clone().expect("driver log"))
        .stderr(stderr)
        .spawn()
        .expect("spawn cutover run")
}

/// The entries of the one run in `state` (empty before it exists).
pub fn entries(state: &Path) -> Vec<JournalEntry> {
    let Ok(journal) = Journal::open(state) else {
        return Vec::new();
    };
    let Some(run) = journal.runs().ok().and_then(|r| r.into_iter().next()) else {
        return Vec::new();
    };
    journal.entries(&run.run_id).unwrap_or_default()
}

fn is_step(entry: &JournalEntry, step: &str) -> bool {
    entry.step.as_ref().is_some_and(|s| s.as_str() == step)
}

/// Whether `when` holds among `fresh` entries; for `Started`, the instant it is due.
fn due(when: &When, fresh: &[JournalEntry], seen_start: &mut Option<Instant>) -> bool {
    match when {
        When::Verified(step) => fresh
            .iter()
            .any(|e| e.kind == EntryKind::Verified && is_step(e, step)),
        When::Output(step, text) => fresh
            .iter()
            .any(|e| e.kind == EntryKind::Output && is_step(e, step) && e.detail.contains(text)),
        // Reached when the driver dies of its own SIGKILL (see the polling loop).
        When::SelfKill(..) => false,
        When::Started(step, delay) => {
            if seen_start.is_none()
                && fresh
                    .iter()
                    .any(|e| e.kind == EntryKind::Started && is_step(e, step))
            {
                *seen_start = Some(Instant::now());
            }
            // A step quicker than the delay is killed at its end instead: the kill stays
            // inside or at the boundary of its step and never skips the later boundaries.
            let ended = fresh
                .iter()
                .any(|e| is_step(e, step) && is_terminal(e.kind));
            seen_start.is_some_and(|at| ended || at.elapsed() >= *delay)
        }
    }
}

fn kill(child: &mut Child) {
    // SIGKILL: no handler runs, nothing is cleaned up.
    let _ = child.kill();
    let _ = child.wait();
}

/// Run one pass: a fresh lab, every kill point in order, then the run to its end and the
/// subject's ground truth. Panics on the first thing that does not converge.
pub async fn pass<S: Subject>(seed: u64) -> PassReport {
    let started = Instant::now();
    let mut subject = S::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let log = state.path().join("driver.log");
    let inventory =
        cutover::inventory::load(&subject.inventory_path()).expect("the lab's inventory");
    let plan = cutover::session::plan(&inventory, S::RUNBOOK, &subject.params())
        .unwrap_or_else(|e| panic!("{}: plan: {e}", S::RUNBOOK));
    let steps: Vec<String> = plan.steps.iter().map(|s| s.id.to_string()).collect();
    let points = schedule(&subject, &steps, seed);
    subject.start_load().await;
    let mut report = PassReport::default();
    let show = |text: String| eprintln!("[matrix {} seed {seed}] {text}", S::name());

    let mut next = 0;
    // The deadline of the current point, kept across refusals while the run is held.
    let mut held_since: Option<Instant> = None;
    let mut finished = false;
    while next < points.len() {
        let point = &points[next];
        let before = entries(state.path());
        if settled(&before, step_of(point)) {
            // An earlier kill landed past this point's step (a delay longer than the step):
            // the run will not pass it again.
            report.overshot += 1;
            show(format!("{} passed already", point.label()));
            next += 1;
            continue;
        }
        let baseline = before.len();
        let mut child = spawn(&subject, state.path(), &log, &point.when);
        let deadline = *held_since.get_or_insert_with(|| Instant::now() + REACH_TIMEOUT);
        let mut seen_start = None;
        let reached = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                use std::os::unix::process::ExitStatusExt;
                if matches!(point.when, When::SelfKill(..)) && status.signal() == Some(9) {
                    break Ok(());
                }
                break Err(status);
            }
            let all = entries(state.path());
            if due(
                &point.when,
                all.get(baseline..).unwrap_or(&[]),
                &mut seen_start,
            ) {
                kill(&mut child);
                break Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "{}: kill point {} never reached; driver log:\n{}",
                S::RUNBOOK,
                point.label(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        match reached {
            Ok(()) => {
                report.kills += 1;
                show(format!("killed {}", point.label()));
                subject.after_kill(&entries(state.path())).await;
                match point.then {
                    Then::Resume => {}
                    Then::Tamper(tag) => subject.tamper(tag).await,
                    Then::AwaitGuard => {
                        let killed_at = Instant::now();
                        let bound = cutover::runbooks::find(S::RUNBOOK)
                            .expect("registered")
                            .pause_bound(&plan);
                        while subject.paused().await {
                            assert!(
                                killed_at.elapsed() < bound + GUARD_SLACK,
                                "{}: the pause outlived its bound of {bound:?} by {GUARD_SLACK:?} with its driver killed",
                                S::RUNBOOK
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        // The guard resumes first, then rolls back to before the pause.
                        let step = subject.pause_step().unwrap_or_default();
                        let rolled = Instant::now() + Duration::from_secs(30);
                        while settled(&entries(state.path()), step) && Instant::now() < rolled {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        report.guard_ends += 1;
                        show(format!(
                            "the guard ended the pause {:.1} s after the kill",
                            killed_at.elapsed().as_secs_f64()
                        ));
                    }
                }
                next += 1;
                held_since = None;
            }
            Err(status) if status.success() => {
                finished = true;
                report.missed += points.len() - next;
                show(format!(
                    "the run finished before {}; {} point(s) missed",
                    point.label(),
                    points.len() - next
                ));
                break;
            }
            Err(_)
                if std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .lines()
                    .last()
                    .is_some_and(|l| l.contains("being driven by another")) =>
            {
                // The pause guard holds the run (it ended a pause that outlived its bound):
                // the operator waits and runs the same command again.
                assert!(
                    Instant::now() < deadline,
                    "{}: the run stays held by another process",
                    S::RUNBOOK
                );
                report.held += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(status) => {
                // A step that failed and rolled back: the operator runs the same command again.
                report.unexpected_exits += 1;
                let failures: Vec<String> = entries(state.path())
                    .get(baseline..)
                    .unwrap_or(&[])
                    .iter()
                    .filter(|e| matches!(e.kind, EntryKind::Failed | EntryKind::UndoFailed))
                    .map(|e| format!("{:?} {:?}: {}", e.kind, e.step, e.detail))
                    .collect();
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = log_text.lines().rev().take(4).collect();
                show(format!(
                    "the run exited by itself ({status}) before {}: {} | {}",
                    point.label(),
                    failures.join("; "),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
                assert!(
                    report.unexpected_exits <= 2,
                    "{}: the run keeps failing; driver log:\n{}",
                    S::RUNBOOK,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // The operator's last run: it completes (a guard still holding the run refuses it
    // briefly, naming the holder; the operator retries).
    let deadline = Instant::now() + Duration::from_secs(120);
    while !finished {
        let output = run_command(&subject, state.path())
            .output()
            .expect("cutover run");
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        if output.status.success() {
            finished = true;
            continue;
        }
        assert!(
            stderr.contains("being driven") && Instant::now() < deadline,
            "{}: the resumed run did not complete: {stderr}\ndriver log:\n{}",
            S::RUNBOOK,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let journal = Journal::open(state.path()).expect("journal");
    let runs = journal.runs().expect("runs");
    assert_eq!(
        runs.len(),
        1,
        "{}: one run, resumed, never restarted",
        S::RUNBOOK
    );
    let all = journal.entries(&runs[0].run_id).expect("entries");
    let record_plan = cutover::plan::Plan::from_json(&runs[0].plan_json).expect("plan");
    for step in &record_plan.steps {
        let last = all
            .iter()
            .rev()
            .find(|e| is_step(e, step.id.as_str()) && is_terminal(e.kind));
        assert!(
            last.is_some_and(|e| matches!(e.kind, EntryKind::Verified | EntryKind::Skipped)),
            "{}: step {} ends verified, not {:?}",
            S::RUNBOOK,
            step.id,
            last.map(|e| e.kind)
        );
    }
    subject.converged(&all).await;
    report.seconds = started.elapsed().as_secs_f64();
    show(format!(
        "converged: {} kill points ({} ended by the guard), {} passed already, {} missed, {} unexpected exits, {} refused while held, {:.1} s",
        report.kills, report.guard_ends, report.overshot, report.missed, report.unexpected_exits, report.held, report.seconds
    ));
    report
}

/// Whether `step` is done for good: its last terminal entry is Verified or Skipped.
fn settled(entries: &[JournalEntry], step: &str) -> bool {
    entries
        .iter()
        .rev()
        .find(|e| is_step(e, step) && is_terminal(e.kind))
        .is_some_and(|e| matches!(e.kind, EntryKind::Verified | EntryKind::Skipped))
}

fn is_terminal(kind: EntryKind) -> bool {
    matches!(
        kind,
        EntryKind::Verified
            | EntryKind::Failed
            | EntryKind::Skipped
            | EntryKind::RolledBack
            | EntryKind::UndoFailed
    )
}

/// Every seed's pass of one subject.
pub async fn matrix<S: Subject>() {
    for seed in seeds() {
        let report = pass::<S>(seed).await;
        assert!(
            report.kills > 0,
            "{}: no kill point was reached",
            S::RUNBOOK
        );
    }
}

/// One `#[tokio::test]` per subject: `matrix_tests! { name: Subject, ... }`.
#[macro_export]
macro_rules! matrix_tests {
    ($($name:ident: $subject:ty),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                matrix::matrix::<$subject>().await;
            }
        )*
    };
}
