//! The pure state transition of the cockpit: `(Model, Action) → (Model', requests)`.
//!
//! Inputs are terminal keys, readings, engine updates and clock ticks, each carrying the time as
//! data; outputs are [`UiRequest`]s for the engine. No I/O happens here.

use super::dialog::{
    ConfirmDialog, DialogFocus, FieldKind, Intent, Layer, Palette, Severity, TextField,
};
use super::keymap::{self, Command, Context, CONFIRM_PLAIN, CONFIRM_SHIFTED};
use super::model::{
    describe_change, ConfirmationView, CopyView, Model, NoticeLevel, Pane, RunbookUpdate,
    StepStatusView, StepView, UiRequest,
};
use crate::readings::types::Snapshot;
use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::time::Instant;

#[derive(Debug, Clone)]
pub enum Action {
    /// A terminal key event and when it arrived.
    Key {
        key: KeyEvent,
        at: Instant,
    },
    /// A command as if its key had been pressed (palette, tests, scripted demos).
    Command {
        command: Command,
        at: Instant,
    },
    /// New readings from the pollers.
    Snapshot(Box<Snapshot>),
    /// A new reading of the table copy (the Copy pane).
    Copy(Box<CopyView>),
    Runbook(RunbookUpdate),
    /// The engine's update channel closed.
    EngineDisconnected,
    /// Clock tick: wall time for reading ages and the pause clock, monotonic time for keys.
    Tick {
        now: DateTime<Utc>,
        at: Instant,
    },
    Resize {
        width: u16,
        height: u16,
    },
}

/// Applies `action` to `model` and returns what to ask the engine.
pub fn update(model: &mut Model, action: Action) -> Vec<UiRequest> {
    match action {
        Action::Key { key, at } => {
            model.instant = at;
            handle_key(model, key)
        }
        Action::Command { command, at } => {
            model.instant = at;
            run_command(model, command)
        }
        Action::Snapshot(snapshot) => {
            if snapshot.taken_at > model.now {
                model.now = snapshot.taken_at;
            }
            model.set_snapshot(*snapshot);
            vec![]
        }
        Action::Runbook(update) => {
            apply_runbook_update(model, update);
            vec![]
        }
        Action::Copy(view) => {
            if !model.frozen {
                model.copy = Some(*view);
            }
            vec![]
        }
        Action::EngineDisconnected => {
            model.engine_connected = false;
            model.notify(
                NoticeLevel::Refused,
                "engine disconnected: nothing more can run",
            );
            vec![]
        }
        Action::Tick { now, at } => {
            model.now = now;
            model.instant = at;
            vec![]
        }
        Action::Resize { width, height } => {
            model.size = (width, height);
            vec![]
        }
    }
}

fn apply_runbook_update(model: &mut Model, update: RunbookUpdate) {
    match update {
        RunbookUpdate::View(view) => {
            let old_next = model.runbook.as_ref().and_then(|r| r.next_step());
            let follow = model.runbook.is_none() || old_next == Some(model.selected_step);
            let last = view.steps.len().saturating_sub(1);
            if follow {
                model.selected_step = view.next_step().unwrap_or(last);
            }
            model.selected_step = model.selected_step.min(last);
            model.runbook = Some(view);
        }
        RunbookUpdate::Refused(message) => model.notify(NoticeLevel::Refused, message),
        RunbookUpdate::Info(message) => model.notify(NoticeLevel::Info, message),
        RunbookUpdate::PairWait(wait) => model.pair_wait = wait,
        RunbookUpdate::PairRequest(request) => {
            let new = request.as_ref().map(|r| r.request);
            let old = model.pair_request.as_ref().map(|r| r.request);
            if new != old {
                // A dialog about a request the driver no longer waits on answers nothing.
                model.layers.retain(|layer| {
                    !matches!(
                        layer,
                        Layer::Confirm(d) if matches!(d.intent, Intent::Approve { .. } | Intent::Object { .. })
                    )
                });
                if let Some(open) = &request {
                    model.notify(
                        NoticeLevel::Info,
                        format!(
                            "{} waits for your approval of {} (a approves, o objects)",
                            open.driver, open.covers
                        ),
                    );
                }
            }
            model.pair_request = request;
        }
    }
}

fn handle_key(model: &mut Model, key: KeyEvent) -> Vec<UiRequest> {
    if key.kind == KeyEventKind::Release {
        return vec![];
    }
    match model.layers.last() {
        Some(Layer::Confirm(_)) => dialog_key(model, key),
        Some(Layer::Palette(_)) => palette_key(model, key),
        Some(Layer::Help { .. }) => {
            help_key(model, key);
            vec![]
        }
        None => {
            let Some(binding) = keymap::lookup(Context::Main, &key) else {
                return vec![];
            };
            let navigation = matches!(
                binding.command,
                Command::Up | Command::Down | Command::FocusNext | Command::FocusPrev
            );
            // Auto-repeat may move around, never open a dialog or act.
            if key.kind == KeyEventKind::Repeat && !navigation {
                return vec![];
            }
            run_command(model, binding.command.clone())
        }
    }
}

/// Runs a command on the main screen (from a key or the palette).
pub fn run_command(model: &mut Model, command: Command) -> Vec<UiRequest> {
    match command {
        Command::RunNext => return open_run_dialog(model, false),
        Command::RunNextStepwise => return open_run_dialog(model, true),
        Command::AbortWindow => return abort_window(model),
        Command::RollbackToSelected => return open_rollback_dialog(model),
        Command::SkipSelected => return open_skip_dialog(model),
        Command::ApproveRequest => return open_approval_dialog(model, false),
        Command::ObjectRequest => return open_approval_dialog(model, true),
        Command::WithdrawVerdict => return withdraw_verdict(model),
        Command::ToggleFreeze => {
            model.frozen = !model.frozen;
            if model.frozen {
                model.notify(NoticeLevel::Info, "readings frozen (f to resume)");
            } else {
                model.shown = model.latest.clone();
                model.notify(NoticeLevel::Info, "readings live again");
            }
        }
        Command::OpenPalette => model.layers.push(Layer::Palette(Palette::default())),
        Command::ToggleHelp => {
            if matches!(model.layers.last(), Some(Layer::Help { .. })) {
                model.layers.pop();
            } else {
                model.layers.push(Layer::Help { scroll: 0 });
            }
        }
        Command::Quit => return request_quit(model),
        Command::FocusNext => model.focus_next(),
        Command::FocusPrev => model.focus_prev(),
        Command::ToggleHoldItems => return toggle_hold(model),
        Command::ConfirmNextItem => return confirm_next_item(model),
        Command::RetrySelectedItem => return retry_selected_item(model),
        Command::Up | Command::Down => move_selection(model, command == Command::Down),
        Command::Theme(name) => {
            model.notify(NoticeLevel::Info, format!("theme {name}"));
            model.theme_request = Some(name);
        }
        Command::Cancel | Command::Confirm | Command::NextField => {}
    }
    vec![]
}

/// Why the Copy pane's keys do nothing now, if they don't.
fn copy_keys_refused(model: &Model) -> Option<&'static str> {
    if model.session.readonly {
        Some("read-only session: nothing runs")
    } else if model.copy.is_none() {
        Some("no table copy in this cockpit")
    } else if !model.engine_connected {
        Some("engine gone")
    } else {
        None
    }
}

fn toggle_hold(model: &mut Model) -> Vec<UiRequest> {
    if let Some(why) = copy_keys_refused(model) {
        model.notify(NoticeLevel::Refused, why);
        return vec![];
    }
    model.items_held = !model.items_held;
    model.notify(
        NoticeLevel::Info,
        if model.items_held {
            "new tables held: the running ones finish (p releases)"
        } else {
            "new tables start again"
        },
    );
    vec![UiRequest::HoldItems(model.items_held)]
}

fn confirm_next_item(model: &mut Model) -> Vec<UiRequest> {
    if let Some(why) = copy_keys_refused(model) {
        model.notify(NoticeLevel::Refused, why);
        return vec![];
    }
    if !model.copy.as_ref().is_some_and(|c| c.confirm_each) {
        model.notify(
            NoticeLevel::Refused,
            "tables need no confirmation in this run (no --confirm)",
        );
        return vec![];
    }
    vec![UiRequest::ConfirmNextItem]
}

/// The errored item the Copy pane has selected (j/k).
pub fn selected_copy_error(model: &Model) -> Option<&(String, String)> {
    let copy = model.copy.as_ref()?;
    let at = (model.scroll[Pane::Copy.index()] as usize).min(copy.errors.len().checked_sub(1)?);
    copy.errors.get(at)
}

fn retry_selected_item(model: &mut Model) -> Vec<UiRequest> {
    if let Some(why) = copy_keys_refused(model) {
        model.notify(NoticeLevel::Refused, why);
        return vec![];
    }
    let Some((item, _)) = selected_copy_error(model).cloned() else {
        model.notify(NoticeLevel::Refused, "no errored table to retry");
        return vec![];
    };
    model.notify(
        NoticeLevel::Info,
        format!("{item} will be retried when the copy step next runs"),
    );
    vec![UiRequest::RetryItem(item)]
}

fn move_selection(model: &mut Model, down: bool) {
    if model.focus == Pane::Runbook {
        let count = model.runbook.as_ref().map_or(0, |r| r.steps.len());
        if down {
            model.selected_step = (model.selected_step + 1).min(count.saturating_sub(1));
        } else {
            model.selected_step = model.selected_step.saturating_sub(1);
        }
    } else {
        let scroll = &mut model.scroll[model.focus.index()];
        *scroll = if down {
            scroll.saturating_add(1)
        } else {
            scroll.saturating_sub(1)
        };
    }
}

fn request_quit(model: &mut Model) -> Vec<UiRequest> {
    // A read-only cockpit drives nothing, so leaving it cannot strand a step or a pause.
    let drives_engine = !model.session.readonly && model.engine_connected;
    let live = model
        .runbook
        .as_ref()
        .filter(|_| drives_engine)
        .and_then(|r| {
            if let Some(i) = r.running {
                let title = r.steps.get(i).map_or("?", |s| s.title.as_str());
                Some(format!(
                    "Step {} “{title}” is running: quitting stops it half-run.",
                    i + 1
                ))
            } else {
                r.traffic_paused_since.map(|_| {
                    "Traffic is PAUSED: quitting ends the pause first, as its bound would."
                        .to_string()
                })
            }
        });
    match live {
        None => {
            model.should_quit = true;
            vec![UiRequest::Quit]
        }
        Some(why) => {
            let dialog = ConfirmDialog::new(
                Intent::Quit,
                "Quit while live?",
                vec![
                    why,
                    "The journal keeps every step; `cutover run` re-checks and resumes.".into(),
                ],
                Severity::Dangerous,
                model.instant,
                String::new(),
                vec![],
            );
            model.layers.push(Layer::Confirm(dialog));
            vec![]
        }
    }
}

/// Why a step cannot run now, or the index of the step Enter runs.
pub fn run_next_availability(model: &Model) -> Result<usize, String> {
    if model.session.readonly {
        return Err("read-only session: nothing runs".into());
    }
    if !model.engine_connected {
        return Err("engine disconnected".into());
    }
    let Some(runbook) = &model.runbook else {
        return Err("no runbook loaded".into());
    };
    if let Some(running) = runbook.running {
        return Err(format!("step {} is still running", running + 1));
    }
    let Some(next) = runbook.next_step() else {
        return Err("every step is done".into());
    };
    let step = &runbook.steps[next];
    if let Some(p) = step.failing_precondition() {
        return Err(format!(
            "step {}: precondition “{}” does not hold ({})",
            next + 1,
            p.description,
            p.detail
        ));
    }
    Ok(next)
}

/// Why the run cannot be rolled back to step `to` now.
pub fn rollback_availability(model: &Model, to: usize) -> Result<(), String> {
    if model.session.readonly {
        return Err("read-only session: nothing runs".into());
    }
    if !model.engine_connected {
        return Err("engine disconnected".into());
    }
    let Some(runbook) = &model.runbook else {
        return Err("no runbook loaded".into());
    };
    if let Some(running) = runbook.running {
        return Err(format!("step {} is still running", running + 1));
    }
    let undone: Vec<(usize, &StepView)> = runbook
        .steps
        .iter()
        .enumerate()
        .skip(to)
        .filter(|(_, s)| {
            matches!(
                s.status,
                StepStatusView::Done | StepStatusView::Failed(_) | StepStatusView::NeedsRecheck
            )
        })
        .collect();
    if undone.is_empty() {
        return Err(format!("nothing to roll back at or after step {}", to + 1));
    }
    if let Some((i, s)) = undone
        .iter()
        .find(|(_, s)| s.status == StepStatusView::Done && s.point_of_no_return.is_some())
    {
        return Err(format!(
            "step {} “{}” is past the point of no return: {}",
            i + 1,
            s.title,
            s.point_of_no_return.as_deref().unwrap_or("")
        ));
    }
    Ok(())
}

/// Why step `step` cannot be skipped now.
pub fn skip_availability(model: &Model, step: usize) -> Result<(), String> {
    if model.session.readonly {
        return Err("read-only session: nothing runs".into());
    }
    if !model.engine_connected {
        return Err("engine disconnected".into());
    }
    let Some(runbook) = &model.runbook else {
        return Err("no runbook loaded".into());
    };
    let Some(s) = runbook.steps.get(step) else {
        return Err("no step selected".into());
    };
    if runbook.running == Some(step) {
        return Err(format!("step {} is running", step + 1));
    }
    match s.status {
        StepStatusView::Done => Err(format!("step {} is already done", step + 1)),
        StepStatusView::Skipped(_) => Err(format!("step {} is already skipped", step + 1)),
        _ => Ok(()),
    }
}

fn step_body(step: &StepView, index: usize, total: usize) -> Vec<String> {
    let mut body = vec![format!("Step {}/{}: {}", index + 1, total, step.title)];
    let mut flags = Vec::new();
    if step.destructive {
        flags.push("DESTRUCTIVE");
    }
    if step.needs_traffic_stopped {
        flags.push("needs traffic stopped");
    }
    if !flags.is_empty() {
        body.push(flags.join(" · "));
    }
    for c in &step.commands {
        let first = c.text.lines().next().unwrap_or("");
        let more = if c.text.lines().count() > 1 {
            " …"
        } else {
            ""
        };
        body.push(format!("  [{}] {first}{more}", c.target));
    }
    match (&step.point_of_no_return, &step.undo) {
        (Some(reason), _) => body.push(format!("POINT OF NO RETURN: {reason}")),
        (None, Some(undo)) => body.push(format!("Undo: {undo}")),
        (None, None) => {}
    }
    body
}

fn refuse(model: &mut Model, why: String) -> Vec<UiRequest> {
    model.notify(NoticeLevel::Refused, why);
    vec![]
}

fn abort_window(model: &mut Model) -> Vec<UiRequest> {
    if model.session.readonly {
        return refuse(model, "read-only session: nothing runs".into());
    }
    let paused = model
        .runbook
        .as_ref()
        .is_some_and(|r| r.traffic_paused_since.is_some() || r.window_running.is_some());
    if !paused {
        return refuse(model, "no paused window is running".into());
    }
    model.notify(
        NoticeLevel::Info,
        "abort sent: traffic resumes and the run rolls back to before the pause",
    );
    vec![UiRequest::AbortWindow]
}

/// The confirmation of a whole paused window: every command of every step, the gates, the
/// bound and what rollback does.
fn open_window_dialog(model: &mut Model, from: usize, through: usize) -> Vec<UiRequest> {
    if let Some(dialog) = window_dialog(model, from, through) {
        model.layers.push(Layer::Confirm(dialog));
    }
    vec![]
}

/// What pair mode adds to the driver's dialog of a step that needs two people.
fn pair_note(model: &Model, step: &StepView, dangerous: bool) -> Option<String> {
    (model.session.pair && dangerous).then(|| {
        format!(
            "PAIR MODE: once you confirm, this waits until another OS user approves exactly what you see from their own session (cutover tui INV RUNBOOK --second, or cutover approve INV RUNBOOK ... --step {}); traffic is never paused while it waits.",
            step.id
        )
    })
}

fn window_dialog(model: &Model, from: usize, through: usize) -> Option<ConfirmDialog> {
    let runbook = model.runbook.clone()?;
    let first = runbook.steps.get(from).cloned()?;
    let total = runbook.steps.len();
    let window = &runbook.steps[from..=through];
    let bound = runbook.pause_bound.as_secs_f64();
    let mut body = vec![
        format!(
            "Steps {}–{} of {total} run as one, at machine speed: traffic is paused from “{}” until “{}”.",
            from + 1,
            through + 1,
            first.title,
            window.last().map_or("", |s| s.title.as_str()),
        ),
        format!(
            "Pause bound {bound:.1}s: if it runs out, traffic resumes and the run rolls back to before step {}.",
            from + 1
        ),
        "x aborts while it runs: traffic resumes and the run rolls back, as the bound would.".into(),
    ];
    for (offset, step) in window.iter().enumerate() {
        let i = from + offset;
        let mut flags = Vec::new();
        if step.destructive {
            flags.push("DESTRUCTIVE");
        }
        if step.point_of_no_return.is_some() {
            flags.push("POINT OF NO RETURN");
        }
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", flags.join(", "))
        };
        body.push(String::new());
        body.push(format!("{}. {}{flags}", i + 1, step.title));
        for c in &step.commands {
            for (n, line) in c.text.lines().enumerate() {
                if n == 0 {
                    body.push(format!("  [{}] {line}", c.target));
                } else {
                    body.push(format!(
                        "  {:width$} {line}",
                        "",
                        width = c.target.len() + 2
                    ));
                }
            }
        }
        for p in &step.preconditions {
            body.push(format!("  gate: {}", p.description));
        }
        if !step.verification.is_empty() {
            body.push(format!("  proves: {}", step.verification));
        }
    }
    body.push(String::new());
    body.push("Rollback (on failure, abort or the bound), newest first:".into());
    let mut past_no_return = None;
    for (offset, step) in window.iter().enumerate().rev() {
        match (&step.point_of_no_return, &step.undo) {
            (Some(reason), _) => {
                past_no_return = Some((from + offset, reason.clone()));
                body.push(format!(
                    "  {}. POINT OF NO RETURN: {reason}",
                    from + offset + 1
                ));
            }
            (None, Some(undo)) => body.push(format!("  {}. {undo}", from + offset + 1)),
            (None, None) => {}
        }
    }
    if let Some((i, _)) = past_no_return {
        body.push(format!(
            "Once step {} has started, a failure can no longer roll back past it: traffic resumes and the run stops for you.",
            i + 1
        ));
    }
    let mut fields = Vec::new();
    if let Some(step) = window.iter().find(|s| s.point_of_no_return.is_some()) {
        let word = step.required_word().to_string();
        fields.push(TextField::new(
            FieldKind::ConfirmWord,
            format!("type {word} to confirm the whole window"),
            Some(word),
        ));
    }
    let dangerous = window
        .iter()
        .any(|s| s.destructive || s.point_of_no_return.is_some());
    if let Some(note) = pair_note(model, &first, dangerous) {
        body.push(String::new());
        body.push(note);
    }
    let seen = (model.session.seen)(&first, &model.latest);
    Some(ConfirmDialog::new(
        Intent::RunWindow { from, through },
        format!("Run the paused window, steps {}–{}?", from + 1, through + 1),
        body,
        Severity::Dangerous,
        model.instant,
        seen,
        fields,
    ))
}

fn open_run_dialog(model: &mut Model, stepwise: bool) -> Vec<UiRequest> {
    let index = match run_next_availability(model) {
        Ok(i) => i,
        Err(why) => return refuse(model, why),
    };
    let window = model.runbook.as_ref().and_then(|r| r.paused_window(index));
    if let (Some((from, through)), false) = (window, stepwise) {
        return open_window_dialog(model, from, through);
    }
    if let Some(dialog) = step_dialog(model, index, window.is_some()) {
        model.layers.push(Layer::Confirm(dialog));
    }
    vec![]
}

/// The confirmation of one step; `in_window`: it opens a paused window run step by step.
fn step_dialog(model: &Model, index: usize, in_window: bool) -> Option<ConfirmDialog> {
    let step = model.step(index).cloned()?;
    let total = model.runbook.as_ref().map_or(0, |r| r.steps.len());
    let dangerous = step.destructive || step.point_of_no_return.is_some();
    let mut fields = Vec::new();
    if step.point_of_no_return.is_some() {
        let word = step.required_word().to_string();
        fields.push(TextField::new(
            FieldKind::ConfirmWord,
            format!("type {word} to confirm"),
            Some(word),
        ));
    }
    let seen = (model.session.seen)(&step, &model.latest);
    let mut body = step_body(&step, index, total);
    if let Some(note) = pair_note(model, &step, dangerous) {
        body.push(note);
    }
    let paused = model
        .runbook
        .as_ref()
        .is_some_and(|r| r.traffic_paused_since.is_some());
    if in_window || paused {
        let bound = model
            .runbook
            .as_ref()
            .map_or(0.0, |r| r.pause_bound.as_secs_f64());
        body.push(format!(
            "STEP BY STEP: the pause bound of {bound:.1}s runs while you confirm each step; raise it (--pause-bound-ms) if you need the time."
        ));
    }
    Some(ConfirmDialog::new(
        Intent::RunStep { step: index },
        format!("Run step {}?", index + 1),
        body,
        if dangerous {
            Severity::Dangerous
        } else {
            Severity::Plain
        },
        model.instant,
        seen,
        fields,
    ))
}

/// Second operator: the driver's own dialog of the step it waits on (the same commands,
/// gates and typed word), with who waits since when and the exact seen hash, as an approval.
fn open_approval_dialog(model: &mut Model, object: bool) -> Vec<UiRequest> {
    if !model.session.second {
        return refuse(
            model,
            "only a second operator's session (tui --second) approves".into(),
        );
    }
    let Some(request) = model.pair_request.clone() else {
        return refuse(model, "the driver waits for no approval now".into());
    };
    if let Some(why) = &request.refusal {
        return refuse(model, why.clone());
    }
    let window = model
        .runbook
        .as_ref()
        .and_then(|r| r.paused_window(request.step));
    let dialog = match window {
        Some((from, through)) => window_dialog(model, from, through),
        None => step_dialog(model, request.step, false),
    };
    let Some(mut dialog) = dialog else {
        return refuse(model, format!("no step {} in this plan", request.step + 1));
    };
    let mut head = vec![
        format!(
            "{} waits since {} for a second operator to approve {}.",
            request.driver,
            request.since.format("%H:%M:%S UTC"),
            request.covers
        ),
        format!("Driver's terminal: {}", request.driver_terminal),
        format!(
            "Seen (what the driver saw; your approval is bound to it): {}",
            request.seen
        ),
    ];
    head.extend(request.shown.iter().map(|line| format!("  {line}")));
    if let Some(mine) = &request.mine {
        head.push(format!("Your standing verdict: {mine} (w withdraws it)"));
    }
    head.push(String::new());
    head.append(&mut dialog.body);
    dialog.body = head;
    dialog.severity = Severity::Dangerous;
    if object {
        dialog.intent = Intent::Object {
            request: request.request,
            step: request.step,
        };
        dialog.title = format!(
            "Object to {}? The driver stays blocked until you withdraw.",
            request.covers
        );
        dialog.fields = vec![TextField::new(FieldKind::Reason, "why you object", None)];
    } else {
        dialog.intent = Intent::Approve {
            request: request.request,
            step: request.step,
        };
        dialog.title = format!("Approve {} as the second operator?", request.covers);
        dialog.body.push(String::new());
        dialog.body.push(
            "Approving records your OS user, this terminal and exactly this seen hash; the driver then runs it."
                .into(),
        );
    }
    dialog.focus = if dialog.fields.is_empty() {
        DialogFocus::Buttons
    } else {
        DialogFocus::Field(0)
    };
    model.layers.push(Layer::Confirm(dialog));
    vec![]
}

fn withdraw_verdict(model: &mut Model) -> Vec<UiRequest> {
    match (&model.pair_request, model.session.second) {
        (Some(request), true) => {
            let request = request.request;
            model.notify(
                NoticeLevel::Info,
                format!("withdrawing your verdict on request {request}"),
            );
            vec![UiRequest::Withdraw { request }]
        }
        _ => refuse(
            model,
            "no request of the driver to withdraw a verdict from".into(),
        ),
    }
}

fn open_rollback_dialog(model: &mut Model) -> Vec<UiRequest> {
    let to = model.selected_step;
    if let Err(why) = rollback_availability(model, to) {
        return refuse(model, why);
    }
    let Some(step) = model.step(to).cloned() else {
        return vec![];
    };
    let mut body = vec![format!(
        "Undo every completed step from the last one back to step {}: {}",
        to + 1,
        step.title
    )];
    if let Some(runbook) = &model.runbook {
        for (i, s) in runbook.steps.iter().enumerate().skip(to).rev() {
            if matches!(
                s.status,
                StepStatusView::Done | StepStatusView::Failed(_) | StepStatusView::NeedsRecheck
            ) {
                body.push(format!(
                    "  {}. {} — {}",
                    i + 1,
                    s.title,
                    s.undo.as_deref().unwrap_or("engine-defined undo")
                ));
            }
        }
    }
    let fields = vec![];
    let seen = (model.session.seen)(&step, &model.latest);
    let dialog = ConfirmDialog::new(
        Intent::Rollback { to },
        format!("Roll back to step {}?", to + 1),
        body,
        Severity::Dangerous,
        model.instant,
        seen,
        fields,
    );
    model.layers.push(Layer::Confirm(dialog));
    vec![]
}

fn open_skip_dialog(model: &mut Model) -> Vec<UiRequest> {
    let index = model.selected_step;
    if let Err(why) = skip_availability(model, index) {
        return refuse(model, why);
    }
    let Some(step) = model.step(index).cloned() else {
        return vec![];
    };
    let total = model.runbook.as_ref().map_or(0, |r| r.steps.len());
    let seen = (model.session.seen)(&step, &model.latest);
    let dialog = ConfirmDialog::new(
        Intent::Skip { step: index },
        format!("Skip step {}?", index + 1),
        step_body(&step, index, total),
        Severity::Plain,
        model.instant,
        seen,
        vec![TextField::new(
            FieldKind::Reason,
            "reason (goes in the journal)",
            None,
        )],
    );
    model.layers.push(Layer::Confirm(dialog));
    vec![]
}

fn top_dialog(model: &mut Model) -> Option<&mut ConfirmDialog> {
    match model.layers.last_mut() {
        Some(Layer::Confirm(dialog)) => Some(dialog),
        _ => None,
    }
}

fn cancel_dialog(model: &mut Model) {
    model.layers.pop();
    model.notify(NoticeLevel::Info, "cancelled");
}

fn dialog_key(model: &mut Model, key: KeyEvent) -> Vec<UiRequest> {
    // Only deliberate presses count: auto-repeat never types, moves or confirms.
    if key.kind != KeyEventKind::Press {
        return vec![];
    }
    if key.code == KeyCode::Esc {
        cancel_dialog(model);
        return vec![];
    }
    let at = model.instant;
    let Some(dialog) = top_dialog(model) else {
        return vec![];
    };
    if dialog.guarded(at) {
        return vec![];
    }
    let typing = !key
        .modifiers
        .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT);
    match key.code {
        KeyCode::PageDown => {
            dialog.scroll = dialog.scroll.saturating_add(10);
            return vec![];
        }
        KeyCode::PageUp => {
            dialog.scroll = dialog.scroll.saturating_sub(10);
            return vec![];
        }
        _ => {}
    }
    match dialog.focus {
        DialogFocus::Field(i) => {
            let count = dialog.fields.len();
            match key.code {
                KeyCode::Char(c) if typing => {
                    if let Some(field) = dialog.fields.get_mut(i) {
                        field.value.push(c);
                    }
                }
                KeyCode::Backspace => {
                    if let Some(field) = dialog.fields.get_mut(i) {
                        field.value.pop();
                    }
                }
                KeyCode::Enter | KeyCode::Tab | KeyCode::Down => {
                    dialog.focus = if i + 1 < count {
                        DialogFocus::Field(i + 1)
                    } else {
                        DialogFocus::Buttons
                    };
                }
                KeyCode::BackTab | KeyCode::Up => {
                    dialog.focus = DialogFocus::Field(i.saturating_sub(1));
                }
                _ => {}
            }
            vec![]
        }
        DialogFocus::Buttons => {
            let confirm = dialog.severity.confirm_key();
            if confirm.matches(&key)
                || (dialog.severity == Severity::Plain && CONFIRM_SHIFTED.matches(&key))
            {
                return try_confirm(model);
            }
            if dialog.severity == Severity::Dangerous && CONFIRM_PLAIN.matches(&key) {
                dialog.error = Some("this confirmation needs the shifted key: Shift+Y".into());
                return vec![];
            }
            match key.code {
                KeyCode::Enter | KeyCode::Char('n') => cancel_dialog(model),
                KeyCode::Tab | KeyCode::Up | KeyCode::BackTab if !dialog.fields.is_empty() => {
                    dialog.focus = if key.code == KeyCode::Tab {
                        DialogFocus::Field(0)
                    } else {
                        DialogFocus::Field(dialog.fields.len() - 1)
                    };
                }
                _ => {}
            }
            vec![]
        }
    }
}

/// Checks every field of `dialog`; on failure returns the field index and why.
fn validate_fields(dialog: &ConfirmDialog) -> Result<(), (usize, String)> {
    for (i, field) in dialog.fields.iter().enumerate() {
        let value = field.value.trim();
        match field.kind {
            FieldKind::ConfirmWord => {
                let expected = field.expected.as_deref().unwrap_or("");
                if value != expected {
                    return Err((
                        i,
                        format!("typed {value:?}, but this step needs exactly {expected:?}"),
                    ));
                }
            }
            FieldKind::Reason => {
                if value.is_empty() {
                    return Err((i, "a reason is required".into()));
                }
            }
        }
    }
    Ok(())
}

fn try_confirm(model: &mut Model) -> Vec<UiRequest> {
    let readonly = model.session.readonly;
    let seen_fn = model.session.seen;
    let at = model.instant;
    let Some(dialog) = top_dialog(model).cloned() else {
        return vec![];
    };
    let set_error = |model: &mut Model, error: String| {
        if let Some(d) = top_dialog(model) {
            d.error = Some(error);
        }
    };
    if let Err((field, why)) = validate_fields(&dialog) {
        if let Some(d) = top_dialog(model) {
            d.error = Some(why);
            d.focus = DialogFocus::Field(field);
        }
        return vec![];
    }
    let second_verdict = matches!(
        dialog.intent,
        Intent::Approve { .. } | Intent::Object { .. }
    );
    if readonly && dialog.intent != Intent::Quit && !second_verdict {
        set_error(model, "read-only session: nothing runs".into());
        return vec![];
    }
    let (step_index, available) = match dialog.intent {
        Intent::Quit => {
            model.layers.pop();
            model.should_quit = true;
            return vec![UiRequest::Quit];
        }
        Intent::RunStep { step } | Intent::RunWindow { from: step, .. } => (
            step,
            run_next_availability(model).and_then(|next| {
                if next == step {
                    Ok(())
                } else {
                    Err(format!(
                        "the next step is now step {}, not {}",
                        next + 1,
                        step + 1
                    ))
                }
            }),
        ),
        Intent::Rollback { to } => (to, rollback_availability(model, to)),
        Intent::Skip { step } => (step, skip_availability(model, step)),
        Intent::Approve { request, step } | Intent::Object { request, step } => (
            step,
            match &model.pair_request {
                Some(open) if open.request == request => Ok(()),
                _ => Err(
                    "the driver no longer waits on this request (it moved on or asked again)"
                        .into(),
                ),
            },
        ),
    };
    if let Err(why) = available {
        set_error(model, format!("cannot confirm: {why}"));
        return vec![];
    }
    let Some(step) = model.step(step_index).cloned() else {
        return vec![];
    };
    let seen_now = seen_fn(&step, &model.latest);
    if seen_now != dialog.seen {
        if let Some(d) = top_dialog(model) {
            let mut changed = describe_change(&d.seen, &seen_now);
            if changed.is_empty() {
                changed.push("the readings were reordered".into());
            }
            d.changed = changed;
            d.seen = seen_now;
            d.opened_at = at;
            d.focus = DialogFocus::Buttons;
            d.error = Some("what you saw has changed (below): review it and confirm again".into());
        }
        return vec![];
    }
    let by = model.operators();
    model.layers.pop();
    let request = match dialog.intent {
        Intent::RunStep { step } => UiRequest::RunStep {
            step,
            confirmation: ConfirmationView {
                by,
                seen: dialog.seen.clone(),
            },
        },
        Intent::RunWindow { from, .. } => UiRequest::RunWindow {
            step: from,
            confirmation: ConfirmationView {
                by,
                seen: dialog.seen.clone(),
            },
        },
        Intent::Rollback { to } => UiRequest::Rollback { to, by },
        Intent::Skip { step } => UiRequest::Skip {
            step,
            reason: dialog
                .field(FieldKind::Reason)
                .map(|f| f.value.trim().to_string())
                .unwrap_or_default(),
            by,
        },
        Intent::Approve { request, .. } => UiRequest::Approve {
            request,
            seen: model
                .pair_request
                .as_ref()
                .map(|r| r.seen.clone())
                .unwrap_or_default(),
        },
        Intent::Object { request, .. } => UiRequest::Object {
            request,
            reason: dialog
                .field(FieldKind::Reason)
                .map(|f| f.value.trim().to_string())
                .unwrap_or_default(),
        },
        Intent::Quit => UiRequest::Quit,
    };
    model.notify(
        NoticeLevel::Info,
        format!("sent: {}", dialog.title.trim_end_matches('?')),
    );
    vec![request]
}

fn palette_key(model: &mut Model, key: KeyEvent) -> Vec<UiRequest> {
    let Some(Layer::Palette(palette)) = model.layers.last_mut() else {
        return vec![];
    };
    let typing = !key
        .modifiers
        .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT);
    match key.code {
        KeyCode::Esc => {
            model.layers.pop();
        }
        KeyCode::Enter if key.kind == KeyEventKind::Press => {
            match keymap::parse_palette(&palette.input) {
                Ok(command) => {
                    model.layers.pop();
                    return run_command(model, command);
                }
                Err(why) => palette.error = Some(why),
            }
        }
        KeyCode::Tab => {
            if let [only] = keymap::palette_completions(&palette.input)[..] {
                if !palette.input.starts_with(only) {
                    palette.input = only.to_string();
                }
            }
        }
        KeyCode::Backspace => {
            palette.input.pop();
            palette.error = None;
        }
        KeyCode::Char(c) if typing => {
            palette.input.push(c);
            palette.error = None;
        }
        _ => {}
    }
    vec![]
}

fn help_key(model: &mut Model, key: KeyEvent) {
    let Some(binding) = keymap::lookup(Context::Help, &key) else {
        return;
    };
    let Some(Layer::Help { scroll }) = model.layers.last_mut() else {
        return;
    };
    match binding.command {
        Command::Down => *scroll = scroll.saturating_add(1),
        Command::Up => *scroll = scroll.saturating_sub(1),
        Command::Cancel => {
            model.layers.pop();
        }
        _ => {}
    }
}
