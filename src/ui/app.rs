//! The cockpit's event loop — the only part of the UI with effects: terminal setup and restore,
//! and a `select!` over terminal events, pollers, engine updates and a clock tick, feeding
//! [`update`] and drawing with [`render`] at most ~30 times per second.

use super::model::NoticeLevel;
use super::model::{Model, RunbookUpdate, RunbookView, SeenFn, Session, UiRequest};
use super::render;
use super::theme::{Theme, ThemeEnv};
use super::update::{update, Action};
use crate::inventory::Inventory;
use crate::readings::poller::{PollIntervals, Pollers};
use crate::readings::types::Snapshot;
use crossterm::event::{Event, EventStream};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};

/// Shortest time between two frames (~30 fps).
const FRAME_INTERVAL: Duration = Duration::from_millis(33);
/// Clock tick: drives reading ages, durations and the pause clock.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("terminal error: {0}")]
    Terminal(#[from] std::io::Error),
    #[error("cannot start the log pane: {0}")]
    Logger(String),
}

/// Everything the cockpit needs; the engine is reached only through the two channels.
pub struct TuiOptions {
    pub inventory: Arc<Inventory>,
    /// New versions of the inventory (see [`crate::readings::inventory_file::follow_file`]):
    /// the pollers follow them. `None`: poll `inventory` as it is.
    pub inventory_updates: Option<watch::Receiver<Arc<Inventory>>>,
    /// Already resolved (see [`super::theme::resolve`]), so theme errors surface before the
    /// terminal switches to raw mode.
    pub theme: Theme,
    pub operator: String,
    pub pair: bool,
    pub readonly: bool,
    /// Requests to the engine. Sent with `try_send`: the UI never waits on the engine; a full
    /// channel is reported in the status line and the request is dropped (nothing was confirmed
    /// to the engine, so the operator just confirms again).
    pub requests_tx: mpsc::Sender<UiRequest>,
    pub updates_rx: mpsc::Receiver<RunbookUpdate>,
    pub initial: Option<RunbookView>,
    pub intervals: PollIntervals,
    /// What a confirmation is bound to; [`super::model::default_seen`] unless the engine knows better.
    pub seen: SeenFn,
}

/// Installs tui-logger as the sink of a tracing layer; add the returned layer to the
/// subscriber before [`run`] (and do not also log to stderr while the cockpit is up).
pub fn log_layer() -> Result<tui_logger::TuiTracingSubscriberLayer, UiError> {
    tui_logger::init_logger(tui_logger::LevelFilter::Trace)
        .map_err(|e| UiError::Logger(e.to_string()))?;
    tui_logger::set_default_level(tui_logger::LevelFilter::Info);
    // Every command and query the tool runs is logged under this target: show all of it.
    tui_logger::set_level_for_target("cutover::cmd", tui_logger::LevelFilter::Trace);
    Ok(tui_logger::TuiTracingSubscriberLayer)
}

/// Restores the terminal when dropped, also on early return (the panic hook covers panics).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the cockpit until the operator quits. Must be called inside a tokio runtime.
pub async fn run(opts: TuiOptions) -> Result<(), UiError> {
    let TuiOptions {
        inventory,
        inventory_updates,
        mut theme,
        operator,
        pair,
        readonly,
        requests_tx,
        mut updates_rx,
        initial,
        intervals,
        seen,
    } = opts;
    let mut pollers = match inventory_updates {
        Some(updates) => Pollers::follow(updates, intervals),
        None => Pollers::spawn(inventory.clone(), intervals),
    };
    let session = Session {
        environment: inventory.environment.clone(),
        operator,
        pair,
        readonly,
        intervals,
        seen,
        tls_warnings: crate::tls::inventory_warnings(&inventory),
    };
    let empty = Snapshot {
        environment: inventory.environment.clone(),
        taken_at: chrono::Utc::now(),
        replication: vec![],
        connections: vec![],
        pgbouncer: vec![],
        distribution: vec![],
        citus: vec![],
        citus_counts: vec![],
        slots: vec![],
    };
    let mut model = Model::new(session, empty, initial, Instant::now());

    // try_init sets raw mode, the alternate screen and a panic hook that restores both.
    // Mouse capture stays off so that text can be selected.
    let mut terminal = ratatui::try_init()?;
    let _guard = TerminalGuard;
    let size = terminal.size()?;
    update(
        &mut model,
        Action::Resize {
            width: size.width,
            height: size.height,
        },
    );

    let mut events = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut engine_open = true;
    let mut dirty = true;
    let mut last_frame = Instant::now() - FRAME_INTERVAL;
    let mut last_second = model.now.timestamp();

    loop {
        if let Some(name) = model.theme_request.take() {
            match Theme::builtin(&name) {
                Ok(t) if ThemeEnv::from_process().no_color => theme = t.without_colors(),
                Ok(t) => theme = t,
                Err(e) => model.notify(NoticeLevel::Refused, e.to_string()),
            }
            dirty = true;
        }
        if model.should_quit {
            break;
        }
        let frame_due = last_frame + FRAME_INTERVAL;
        if dirty && Instant::now() >= frame_due {
            render::draw(&mut terminal, &model, &theme)?;
            last_frame = Instant::now();
            dirty = false;
        }
        let action = tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Key(key))) => Some(Action::Key { key, at: Instant::now() }),
                Some(Ok(Event::Resize(width, height))) => Some(Action::Resize { width, height }),
                Some(Ok(_)) => None,
                Some(Err(e)) => return Err(UiError::Terminal(e)),
                None => break,
            },
            _ = pollers.changed() => Some(Action::Snapshot(Box::new(pollers.snapshot()))),
            received = updates_rx.recv(), if engine_open => match received {
                Some(update) => Some(Action::Runbook(update)),
                None => {
                    engine_open = false;
                    Some(Action::EngineDisconnected)
                }
            },
            _ = tokio::time::sleep_until(frame_due.into()), if dirty => None,
            _ = tick.tick() => {
                let now = chrono::Utc::now();
                // Ages are shown in whole seconds: redraw once a second, or continuously
                // while a clock runs.
                if model.animating() || now.timestamp() != last_second {
                    last_second = now.timestamp();
                    dirty = true;
                }
                Some(Action::Tick { now, at: Instant::now() })
            }
        };
        let Some(action) = action else { continue };
        if !matches!(action, Action::Tick { .. }) {
            dirty = true;
        }
        for request in update(&mut model, action) {
            match requests_tx.try_send(request) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => model.notify(
                    NoticeLevel::Refused,
                    "engine busy: request not sent, confirm again in a moment",
                ),
                Err(TrySendError::Closed(UiRequest::Quit)) => model.should_quit = true,
                Err(TrySendError::Closed(_)) => {
                    model.notify(NoticeLevel::Refused, "engine gone: request not sent")
                }
            }
        }
    }
    Ok(())
}
