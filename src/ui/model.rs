//! UI model: everything the cockpit shows, fed by readings (pollers) and runbook views (engine),
//! changed only by [`super::update::update`] and read by [`super::render`].
//!
//! The UI never depends on the engine's types: the engine speaks to it through the view types
//! here ([`RunbookView`], [`StepView`]) and receives [`UiRequest`]s back.

use crate::readings::poller::PollIntervals;
use crate::readings::types::{Outcome, Snapshot};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::time::{Duration, Instant};

use super::dialog::Layer;

/// Samples kept per sender for the lag sparkline.
pub const LAG_HISTORY_LEN: usize = 60;
/// Notices kept for the status line.
const NOTICES_KEPT: usize = 50;

/// Status of one step as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepStatusView {
    Pending,
    Running,
    Done,
    Failed(String),
    Skipped(String),
    RolledBack,
    /// The step may have half-run before a crash; the engine re-checks before going on.
    NeedsRecheck,
}

/// One precondition, evaluated live by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreconditionView {
    pub description: String,
    /// `None`: not evaluated yet.
    pub holds: Option<bool>,
    /// What was measured, e.g. `replay 0/3000060 ≥ current 0/3000060`.
    pub detail: String,
}

/// A command or query a step runs, exactly as it will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandView {
    /// Where it runs, e.g. `pg1`, `pgbouncer pgb1`, `host db2 (ssh)`.
    pub target: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepView {
    pub id: String,
    pub title: String,
    pub status: StepStatusView,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub commands: Vec<CommandView>,
    pub preconditions: Vec<PreconditionView>,
    pub destructive: bool,
    /// `Some(reason)`: the step cannot be rolled back, and confirming it needs a typed word.
    pub point_of_no_return: Option<String>,
    /// The word the operator types to confirm a point-of-no-return step (partition or database
    /// name). When absent, the step id is asked for.
    pub confirm_word: Option<String>,
    pub needs_traffic_stopped: bool,
    /// How the step is undone, for the reviewer.
    pub undo: Option<String>,
    /// The step pauses application traffic: it opens a paused window.
    pub pauses_traffic: bool,
    /// The step lets traffic flow again: it closes a paused window.
    pub resumes_traffic: bool,
    /// How the engine proves the step took effect.
    pub verification: String,
    /// Short fingerprint of the engine's readings the confirmation is bound to; empty until
    /// the engine evaluated the step.
    pub binding: String,
    /// The step's items (tables, key ranges, shard groups) as the engine journaled them; empty
    /// for a step without items.
    pub items: ItemsView,
}

/// How far a step's items are, from the engine's item table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemsView {
    pub done: usize,
    pub pending: usize,
    /// Items running now, with their attempt.
    pub running: Vec<(String, u32)>,
    /// Items that failed (or were cut off) and will be re-checked, with why.
    pub failed: Vec<(String, String)>,
}

impl ItemsView {
    pub fn is_empty(&self) -> bool {
        self.done + self.pending + self.running.len() + self.failed.len() == 0
    }
}

impl StepView {
    /// The word a point-of-no-return confirmation needs typed.
    pub fn required_word(&self) -> &str {
        self.confirm_word.as_deref().unwrap_or(&self.id)
    }
    /// First precondition known not to hold.
    pub fn failing_precondition(&self) -> Option<&PreconditionView> {
        self.preconditions.iter().find(|p| p.holds == Some(false))
    }
    pub fn duration(&self, now: DateTime<Utc>) -> Option<Duration> {
        let start = self.started_at?;
        let end = self.finished_at.unwrap_or(now);
        (end - start).to_std().ok()
    }
}

/// Baseline count of one table of one partition database, recorded by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineRow {
    pub node: String,
    pub database: String,
    pub table: String,
    pub total: i64,
}

/// The runbook as the engine shows it to the cockpit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunbookView {
    pub runbook: String,
    /// Plan fingerprint (hex sha256); the header shows a short prefix.
    pub fingerprint: String,
    pub steps: Vec<StepView>,
    /// Set while traffic is paused; the header shows the pause clock against `pause_bound`.
    pub traffic_paused_since: Option<DateTime<Utc>>,
    pub pause_bound: Duration,
    /// Index of the step running now.
    pub running: Option<usize>,
    /// Per-table baseline; empty when none was recorded.
    pub baseline: Vec<BaselineRow>,
    /// Set while a rollback is under way: why it runs (e.g. the pause bound ran out).
    pub rolling_back: Option<String>,
    /// Set while a confirmed paused window runs at machine speed: its first and last steps.
    pub window_running: Option<(usize, usize)>,
    /// Nodes the run expects stopped now, each with why (shown stopped, not unreachable).
    pub expected_stopped: Vec<(String, String)>,
    /// The shards the run moves (its `shards` parameter), marked in the Shards pane.
    pub moving_shards: Option<[u32; 2]>,
}

impl RunbookView {
    /// The paused window starting `from` opens: `from` pauses traffic and the window runs
    /// through the first later step that resumes it (both included).
    pub fn paused_window(&self, from: usize) -> Option<(usize, usize)> {
        if !self.steps.get(from)?.pauses_traffic {
            return None;
        }
        let end = self.steps[from + 1..]
            .iter()
            .position(|s| s.resumes_traffic)?;
        Some((from, from + 1 + end))
    }

    /// The step Enter runs: the first one that still has to run.
    pub fn next_step(&self) -> Option<usize> {
        self.steps.iter().position(|s| {
            matches!(
                s.status,
                StepStatusView::Pending
                    | StepStatusView::NeedsRecheck
                    | StepStatusView::Failed(_)
                    | StepStatusView::RolledBack
            )
        })
    }
}

/// What the operator confirmed: who, and a fingerprint of what they saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmationView {
    /// Operator names; two distinct names in pair mode for destructive steps.
    pub by: Vec<String>,
    /// [`SeenFn`] output at the moment of confirmation.
    pub seen: String,
}

/// What the cockpit asks the engine to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UiRequest {
    RunStep {
        step: usize,
        confirmation: ConfirmationView,
    },
    /// Run the paused window that `step` opens, through the step that resumes traffic, at
    /// machine speed with every gate enforced; confirmed once, bound to what was seen of `step`.
    RunWindow {
        step: usize,
        confirmation: ConfirmationView,
    },
    /// End the running paused window now, as its bound would: resume and roll back.
    AbortWindow,
    /// Start no new item of the running step (`true`; the running ones finish), or start
    /// them again (`false`).
    HoldItems(bool),
    /// Confirm the next item waiting for the operator (table-copy's `--confirm`).
    ConfirmNextItem,
    /// Retry a failed item (an errored table): at once while its step runs, else on the
    /// step's next start (which then retries only the items asked for).
    RetryItem(String),
    Rollback {
        to: usize,
        by: Vec<String>,
    },
    Skip {
        step: usize,
        reason: String,
        by: Vec<String>,
    },
    /// Second operator: approve request `request`, exactly the engine `seen` it showed.
    Approve {
        request: i64,
        seen: String,
    },
    /// Second operator: object to request `request`; it blocks until withdrawn.
    Object {
        request: i64,
        reason: String,
    },
    /// Second operator: withdraw my approval or objection of request `request`.
    Withdraw {
        request: i64,
    },
    Quit,
}

/// The driver waits for a second person (pair mode): what its cockpit shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairWaitView {
    pub request: i64,
    /// `step `x``, or the paused window it opens.
    pub covers: String,
    /// Who drives (the second person must be another OS user).
    pub driver: String,
    pub since: DateTime<Utc>,
    pub seen: String,
    /// Who objects and why: the step is blocked until they withdraw.
    pub objection: Option<(String, String)>,
    /// E.g. "the readings changed after the approval: asking again".
    pub note: Option<String>,
}

/// What the driver waits on, as the second operator's cockpit (`tui --second`) shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRequestView {
    pub request: i64,
    /// Index of the step in the runbook view (for a window: the step that pauses traffic).
    pub step: usize,
    pub covers: String,
    pub driver: String,
    pub driver_terminal: String,
    pub since: DateTime<Utc>,
    /// The engine's seen hash the approval is bound to.
    pub seen: String,
    /// The observations behind `seen` and the preconditions the driver was shown.
    pub shown: Vec<String>,
    /// Why this session cannot approve it (the driver's own OS user, another plan), if so.
    pub refusal: Option<String>,
    /// This person's standing verdict on it (`approve`, `object`), if any.
    pub mine: Option<String>,
}

/// What the engine tells the cockpit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunbookUpdate {
    View(RunbookView),
    /// The engine refused a request; the message says why.
    Refused(String),
    /// Anything else worth a line in the status bar.
    Info(String),
    /// Pair mode, driver: waiting for a second person (`None`: not waiting).
    PairWait(Option<PairWaitView>),
    /// Pair mode, second operator: the request the driver waits on (`None`: none open).
    PairRequest(Option<PairRequestView>),
}

/// Computes the fingerprint of what the operator sees when confirming `step`.
/// A confirmation is only submitted if this is unchanged between opening and confirming.
pub type SeenFn = fn(&StepView, &Snapshot) -> String;

/// Replication lag that makes an open confirmation stale. Under live traffic a healthy standby
/// is a few kB behind at any instant; only lag past this means the standby fell behind.
pub const LAG_WORTH_RECONFIRMING_BYTES: i64 = 16 * 1024 * 1024;

/// Default [`SeenFn`]: one line per fact, so a change can be shown line by line.
///
/// Facts: the step id; every precondition with its result and detail; per node, whether it is
/// reachable, each sender's state and whether it lags, each receiver's status and replay pause.
/// Raw LSNs are included only for steps that need traffic stopped: under live traffic they move
/// every second, which would make any confirmation stale before it could be given; with
/// traffic stopped a moving LSN means something still writes, which the operator must see.
pub fn default_seen(step: &StepView, snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "step {}", step.id);
    for p in &step.preconditions {
        let holds = match p.holds {
            Some(true) => "holds",
            Some(false) => "does not hold",
            None => "not evaluated",
        };
        if p.detail.is_empty() {
            let _ = writeln!(out, "precondition {}: {holds}", p.description);
        } else {
            let _ = writeln!(
                out,
                "precondition {}: {holds} ({})",
                p.description, p.detail
            );
        }
    }
    for reading in &snapshot.replication {
        let node = &reading.source;
        let value = match &reading.outcome {
            Outcome::Ok(value) => value,
            Outcome::Unreachable(_) => {
                let _ = writeln!(out, "{node}: unreachable");
                continue;
            }
        };
        if step.needs_traffic_stopped {
            if let Some(lsn) = &value.current_wal_lsn {
                let _ = writeln!(out, "{node}: current WAL {lsn}");
            }
        }
        for s in &value.senders {
            let lagging = s
                .lag_bytes
                .is_some_and(|b| b > LAG_WORTH_RECONFIRMING_BYTES);
            let _ = write!(
                out,
                "{node} → {}: {}, {}",
                s.application_name,
                s.state,
                if lagging { "lagging" } else { "no lag" }
            );
            if step.needs_traffic_stopped {
                let _ = write!(out, ", replay {}", s.replay_lsn.as_deref().unwrap_or("-"));
            }
            out.push('\n');
        }
        if let Some(r) = &value.receiver {
            let _ = write!(
                out,
                "{node} receiver: {}{}",
                r.status.as_deref().unwrap_or("not running"),
                if r.replay_paused {
                    ", replay paused"
                } else {
                    ""
                }
            );
            if step.needs_traffic_stopped {
                let _ = write!(out, ", replayed {}", r.replay_lsn.as_deref().unwrap_or("-"));
            }
            out.push('\n');
        }
    }
    if !step.binding.is_empty() {
        let _ = writeln!(out, "bound to engine readings {}", step.binding);
    }
    out
}

/// Lines of `before` missing from `after` (`- `) and new in `after` (`+ `).
pub fn describe_change(before: &str, after: &str) -> Vec<String> {
    let old: Vec<&str> = before.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    let mut out: Vec<String> = old
        .iter()
        .filter(|l| !new.contains(l))
        .map(|l| format!("- {l}"))
        .collect();
    out.extend(
        new.iter()
            .filter(|l| !old.contains(l))
            .map(|l| format!("+ {l}")),
    );
    out
}

/// One COPY running into the target, as `pg_stat_progress_copy` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CopyRunningView {
    /// The table (or key range) item.
    pub item: String,
    pub rows: i64,
    /// The plan's estimate for this table or range: the bar's 100 %.
    pub rows_estimate: i64,
    pub bytes: i64,
}

/// The Copy pane's reading (table-copy): the per-table state the run keeps, and the target's
/// running COPYs; made by a poller task (see `crate::readings::copy`), never by the UI.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CopyView {
    pub at: DateTime<Utc>,
    /// `FROM → TO`.
    pub pair: String,
    pub pending: usize,
    pub copying: usize,
    pub verified: usize,
    pub errored: usize,
    pub running: Vec<CopyRunningView>,
    /// Errored items (a table, or `table#i/n`) with their reason.
    pub errors: Vec<(String, String)>,
    /// COPY bytes per second over the last readings; `None` until two readings exist.
    pub bytes_per_s: Option<f64>,
    /// From the plan's size estimates of what is not verified yet, at the recent rate.
    pub eta: Option<Duration>,
    /// `--confirm`: each table waits for the operator's `c`.
    pub confirm_each: bool,
    /// Why the last reading failed, if it did (the rest is the previous reading).
    pub error: Option<String>,
}

/// The panes of the cockpit, in focus order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pane {
    Replication,
    Connections,
    Shards,
    Runbook,
    Log,
    /// table-copy's progress; only in the cockpit of a table copy (see [`Model::panes`]).
    Copy,
}

impl Pane {
    pub const ALL: [Pane; 5] = [
        Pane::Replication,
        Pane::Connections,
        Pane::Shards,
        Pane::Runbook,
        Pane::Log,
    ];
    pub fn title(self) -> &'static str {
        match self {
            Pane::Replication => "Replication",
            Pane::Connections => "Connections",
            Pane::Shards => "Shards",
            Pane::Runbook => "Runbook",
            Pane::Log => "Log",
            Pane::Copy => "Copy",
        }
    }
    pub fn index(self) -> usize {
        Pane::ALL
            .iter()
            .position(|p| *p == self)
            .unwrap_or(Pane::ALL.len())
    }
    pub fn next(self) -> Pane {
        Pane::ALL[(self.index() + 1) % Pane::ALL.len()]
    }
    pub fn prev(self) -> Pane {
        Pane::ALL[(self.index() + Pane::ALL.len() - 1) % Pane::ALL.len()]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeLevel {
    Info,
    Refused,
}

/// A line for the status bar: a refusal or an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub at: DateTime<Utc>,
    pub level: NoticeLevel,
    pub text: String,
}

/// Lag samples of one sender, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LagHistory {
    pub samples: VecDeque<u64>,
    /// Time of the reading last sampled, so one reading is never counted twice.
    pub last_at: Option<DateTime<Utc>>,
}

/// How the cockpit session was started.
#[derive(Debug, Clone)]
pub struct Session {
    pub environment: String,
    pub operator: String,
    /// `--pair`: steps that need two people wait for another OS user's approval.
    pub pair: bool,
    /// `--readonly`: everything is shown, nothing runs.
    pub readonly: bool,
    /// `--second`: read-only, and this person approves or objects to what the driver waits on.
    pub second: bool,
    pub intervals: PollIntervals,
    pub seen: SeenFn,
    /// Connections that TLS does not verify (`tls::inventory_warnings`), shown in the header.
    pub tls_warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub session: Session,
    /// Wall clock, as of the last action that carried it. Reading ages are measured from it.
    pub now: DateTime<Utc>,
    /// Monotonic clock, as of the last action that carried it (key timing).
    pub instant: Instant,
    /// The newest readings; confirmations are checked against these, even when frozen.
    pub latest: Snapshot,
    /// What the panes show: `latest`, or the snapshot current when `f` froze the view.
    pub shown: Snapshot,
    pub frozen: bool,
    /// Lag history per `node/application_name`.
    pub lag_history: BTreeMap<String, LagHistory>,
    pub runbook: Option<RunbookView>,
    /// `false` once the engine's channel closed.
    pub engine_connected: bool,
    pub focus: Pane,
    /// Selected runbook step (for `r`, `s` and the details view).
    pub selected_step: usize,
    /// Scroll offset per pane, indexed by [`Pane::index`] (the Copy pane's is its selected
    /// errored table).
    pub scroll: [u16; 6],
    /// table-copy's progress, when the cockpit drives or follows a table copy.
    pub copy: Option<CopyView>,
    /// New item starts held from this cockpit (`p`).
    pub items_held: bool,
    /// Popups above the panes, bottom first; the last one receives keys.
    pub layers: Vec<Layer>,
    pub notices: VecDeque<Notice>,
    /// Built-in theme picked from the palette; the run loop applies it.
    pub theme_request: Option<String>,
    pub size: (u16, u16),
    pub should_quit: bool,
    /// Driver in pair mode: the approval it waits for.
    pub pair_wait: Option<PairWaitView>,
    /// Second operator: the request the driver waits on.
    pub pair_request: Option<PairRequestView>,
}

impl Model {
    /// The panes in focus order: the Copy pane joins them once a copy reading arrived.
    pub fn panes(&self) -> Vec<Pane> {
        let mut panes = Pane::ALL.to_vec();
        if self.copy.is_some() {
            panes.push(Pane::Copy);
        }
        panes
    }

    fn cycle_focus(&mut self, forward: bool) {
        let panes = self.panes();
        let at = panes.iter().position(|p| *p == self.focus).unwrap_or(0);
        let n = panes.len();
        self.focus = panes[if forward {
            (at + 1) % n
        } else {
            (at + n - 1) % n
        }];
    }
    pub fn focus_next(&mut self) {
        self.cycle_focus(true);
    }
    pub fn focus_prev(&mut self) {
        self.cycle_focus(false);
    }

    pub fn new(
        session: Session,
        snapshot: Snapshot,
        runbook: Option<RunbookView>,
        instant: Instant,
    ) -> Model {
        let now = snapshot.taken_at;
        let selected_step = runbook.as_ref().and_then(|r| r.next_step()).unwrap_or(0);
        let mut model = Model {
            session,
            now,
            instant,
            latest: snapshot.clone(),
            shown: snapshot,
            frozen: false,
            lag_history: BTreeMap::new(),
            runbook,
            engine_connected: true,
            focus: Pane::Runbook,
            selected_step,
            scroll: [0; 6],
            copy: None,
            items_held: false,
            layers: Vec::new(),
            notices: VecDeque::new(),
            theme_request: None,
            size: (80, 24),
            should_quit: false,
            pair_wait: None,
            pair_request: None,
        };
        model.sample_lag();
        model
    }

    /// Takes in a new snapshot: always as `latest`; as `shown` unless frozen.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        self.latest = snapshot;
        if !self.frozen {
            self.shown = self.latest.clone();
            self.sample_lag();
        }
    }

    fn sample_lag(&mut self) {
        for reading in &self.latest.replication {
            let Some(node) = reading.value() else {
                continue;
            };
            for sender in &node.senders {
                let key = format!("{}/{}", reading.source, sender.application_name);
                let history = self.lag_history.entry(key).or_default();
                if history.last_at.is_some_and(|at| at >= reading.at) {
                    continue;
                }
                history.last_at = Some(reading.at);
                history
                    .samples
                    .push_back(sender.lag_bytes.unwrap_or(0).max(0) as u64);
                while history.samples.len() > LAG_HISTORY_LEN {
                    history.samples.pop_front();
                }
            }
        }
    }

    pub fn notify(&mut self, level: NoticeLevel, text: impl Into<String>) {
        self.notices.push_back(Notice {
            at: self.now,
            level,
            text: text.into(),
        });
        while self.notices.len() > NOTICES_KEPT {
            self.notices.pop_front();
        }
    }

    /// Who confirms a request: this cockpit's operator (in pair mode the second person is
    /// another OS user, approving from their own session).
    pub fn operators(&self) -> Vec<String> {
        vec![self.session.operator.clone()]
    }

    pub fn step(&self, index: usize) -> Option<&StepView> {
        self.runbook.as_ref()?.steps.get(index)
    }

    /// How long traffic has been paused, as of `now`.
    pub fn pause_elapsed(&self) -> Option<Duration> {
        let since = self.runbook.as_ref()?.traffic_paused_since?;
        Some((self.now - since).to_std().unwrap_or(Duration::ZERO))
    }

    /// Whether the screen changes with time alone (running clock, running step).
    pub fn animating(&self) -> bool {
        self.runbook
            .as_ref()
            .is_some_and(|r| r.traffic_paused_since.is_some() || r.running.is_some())
    }
}
