//! Rendering: a pure function of `(&Model, &Theme)` onto a ratatui frame — the last stage of the
//! UI flow. No I/O, no clock reads: times come from the model.

mod clock;
mod copy;
mod panes;
mod popups;
mod runbook;

use super::dialog::Layer;
use super::keymap::{self, Command, Context};
use super::model::{Model, NoticeLevel, Pane};
use super::theme::Theme;
use super::update::run_next_availability;
use ratatui::backend::Backend;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Tabs, Wrap};
use ratatui::{Frame, Terminal};
use std::time::Duration;

pub use clock::big_text_lines;
pub use panes::{
    human_bytes, redact_secrets, sparkline, thousands, SLOT_DANGER_BYTES, SLOT_WARN_BYTES,
};

/// Smallest terminal the cockpit draws in.
pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 24;
/// From this size up, every pane is shown at once; below it, one pane at a time with tabs.
pub const FULL_WIDTH: u16 = 120;
pub const FULL_HEIGHT: u16 = 36;
/// A reading older than this many poll intervals is marked stale.
pub const STALE_FACTOR: u32 = 3;
/// Notices stay in the status line this long.
const NOTICE_SHOWN: Duration = Duration::from_secs(15);

/// Draws one frame on any backend (crossterm in the app, `TestBackend` in tests and benches).
pub fn draw<B: Backend>(
    terminal: &mut Terminal<B>,
    model: &Model,
    theme: &Theme,
) -> Result<(), B::Error> {
    terminal.draw(|frame| render(frame, model, theme))?;
    Ok(())
}

/// Renders the whole cockpit into `frame`.
pub fn render(frame: &mut Frame, model: &Model, theme: &Theme) {
    let area = frame.area();
    frame.render_widget(Block::new().style(theme.text), area);
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        render_too_small(frame, area, theme);
        return;
    }
    let paused = model.pause_elapsed().is_some();
    let compact = area.width < FULL_WIDTH || area.height < FULL_HEIGHT;
    let rows = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(if paused { clock::CLOCK_HEIGHT } else { 0 }),
        Constraint::Length(if compact { 1 } else { 0 }),
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .split(area);
    render_header(frame, rows[0], model, theme);
    if paused {
        clock::render_pause_clock(frame, rows[1], model, theme);
    }
    if compact {
        render_tabs(frame, rows[2], model, theme);
        render_pane(frame, rows[3], model.focus, model, theme);
    } else {
        render_full_body(frame, rows[3], model, theme);
    }
    render_status_line(frame, rows[4], model, theme);
    render_hint_bar(frame, rows[5], model, theme);
    if model.layers.is_empty() {
        popups::render_pair(frame, area, model, theme);
    }
    for layer in &model.layers {
        popups::render_layer(frame, area, layer, model, theme);
    }
}

fn render_too_small(frame: &mut Frame, area: Rect, theme: &Theme) {
    let text = vec![
        Line::styled("Terminal too small", theme.warn),
        Line::raw(""),
        Line::raw(format!(
            "cutover needs at least {MIN_WIDTH}×{MIN_HEIGHT}; this terminal is {}×{}.",
            area.width, area.height
        )),
        Line::raw("Enlarge the window or reduce the font size."),
    ];
    let top = area.height.saturating_sub(text.len() as u16) / 2;
    let inner = Rect {
        y: area.y + top,
        height: area.height - top,
        ..area
    };
    frame.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
        inner,
    );
}

fn render_full_body(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let log_height = (area.height / 5).max(6);
    let [main, log] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(log_height)]).areas(area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(main);
    let [replication, connections] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(left);
    let [runbook, shards] =
        Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(right);
    render_pane(frame, replication, Pane::Replication, model, theme);
    render_pane(frame, connections, Pane::Connections, model, theme);
    render_pane(frame, runbook, Pane::Runbook, model, theme);
    // A table copy's cockpit shows its Copy pane where the shards are.
    let lower_right = if model.copy.is_some() {
        Pane::Copy
    } else {
        Pane::Shards
    };
    render_pane(frame, shards, lower_right, model, theme);
    render_pane(frame, log, Pane::Log, model, theme);
}

/// Renders one pane, with its border and title, into `area`.
pub fn render_pane(frame: &mut Frame, area: Rect, pane: Pane, model: &Model, theme: &Theme) {
    match pane {
        Pane::Replication => panes::render_replication(frame, area, model, theme),
        Pane::Connections => panes::render_connections(frame, area, model, theme),
        Pane::Shards => panes::render_shards(frame, area, model, theme),
        Pane::Runbook => runbook::render_runbook(frame, area, model, theme),
        Pane::Log => panes::render_log(frame, area, model, theme),
        Pane::Copy => copy::render_copy(frame, area, model, theme),
    }
}

/// Bordered block for `pane`, its title followed by `extra` (age, staleness).
pub(crate) fn pane_block<'a>(
    pane: Pane,
    model: &Model,
    theme: &Theme,
    extra: Vec<Span<'a>>,
) -> Block<'a> {
    let focused = model.focus == pane;
    let mut title = vec![Span::styled(format!(" {} ", pane.title()), theme.title)];
    title.extend(extra);
    if model.frozen && pane != Pane::Runbook && pane != Pane::Log {
        title.push(Span::styled(" FROZEN ", theme.warn));
    }
    Block::bordered()
        .border_style(if focused {
            theme.border_focused
        } else {
            theme.border
        })
        .title(Line::from(title))
}

fn short_fingerprint(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

fn render_header(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let sep = || Span::styled(" · ", theme.header);
    let environment_style = if model.session.environment.to_lowercase().contains("prod") {
        theme.danger
    } else {
        theme.header
    };
    let mut top = vec![
        Span::styled(" cutover ", theme.header),
        sep(),
        Span::styled(
            format!("env {}", model.session.environment),
            environment_style,
        ),
        sep(),
    ];
    match &model.runbook {
        Some(r) => {
            top.push(Span::styled(format!("runbook {}", r.runbook), theme.header));
            top.push(sep());
            top.push(Span::styled(
                format!("plan {}", short_fingerprint(&r.fingerprint)),
                theme.header,
            ));
        }
        None => top.push(Span::styled("runbook — (monitoring only)", theme.header)),
    }
    top.push(sep());
    let operators = if model.session.second {
        format!("second operator {}", model.session.operator)
    } else if model.session.pair {
        format!(
            "operator {} (pair: another OS user approves)",
            model.session.operator
        )
    } else {
        format!("operator {}", model.session.operator)
    };
    top.push(Span::styled(operators, theme.header));
    if model.session.readonly {
        top.push(Span::styled(" READ-ONLY ", theme.warn));
    }
    if model.frozen {
        top.push(Span::styled(" FROZEN ", theme.warn));
    }
    if let Some(first) = model.session.tls_warnings.first() {
        let more = model.session.tls_warnings.len() - 1;
        let text = if more == 0 {
            format!(" ⚠ {first} ")
        } else {
            format!(" ⚠ {first} (+{more} more) ")
        };
        top.push(Span::styled(text, theme.warn));
    }
    let mut second = Vec::new();
    match &model.runbook {
        Some(r) => {
            let total = r.steps.len();
            let done = r
                .steps
                .iter()
                .filter(|s| s.status == super::model::StepStatusView::Done)
                .count();
            second.push(Span::styled(
                format!(" {done}/{total} steps done"),
                theme.text,
            ));
            if let Some(i) = r.running {
                let step = &r.steps[i.min(total.saturating_sub(1))];
                let elapsed = step
                    .duration(model.now)
                    .map(|d| format!(" {}", format_duration(d)))
                    .unwrap_or_default();
                second.push(Span::raw(" · "));
                second.push(Span::styled(
                    format!("RUNNING step {}: {}{elapsed}", i + 1, step.title),
                    theme.warn,
                ));
            } else if let Some(next) = r.next_step() {
                second.push(Span::raw(" · "));
                second.push(Span::styled(
                    format!("next: step {}: {}", next + 1, r.steps[next].title),
                    theme.text,
                ));
            }
            if r.traffic_paused_since.is_some() {
                second.push(Span::raw(" · "));
                second.push(Span::styled(" TRAFFIC PAUSED ", theme.paused));
                if r.window_running.is_some() {
                    second.push(Span::styled(" x aborts the window ", theme.key));
                }
            } else if let Some(reason) = &r.rolling_back {
                second.push(Span::raw(" · "));
                second.push(Span::styled(
                    " TRAFFIC RESUMED · ROLLBACK RUNNING ",
                    theme.warn,
                ));
                second.push(Span::styled(format!(" {reason}"), theme.text));
            }
        }
        None => second.push(Span::styled(" watching readings", theme.dim)),
    }
    if !model.engine_connected {
        second.push(Span::raw(" · "));
        second.push(Span::styled("engine disconnected", theme.danger));
    }
    let [line1, line2] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    frame.render_widget(Paragraph::new(Line::from(top)).style(theme.header), line1);
    frame.render_widget(Paragraph::new(Line::from(second)), line2);
}

fn render_tabs(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let panes = model.panes();
    let titles: Vec<Line> = panes
        .iter()
        .map(|p| Line::from(format!(" {} ", p.title())))
        .collect();
    let tabs = Tabs::new(titles)
        .select(panes.iter().position(|p| *p == model.focus).unwrap_or(0))
        .style(theme.dim)
        .highlight_style(theme.selected)
        .divider("|");
    frame.render_widget(tabs, area);
}

fn render_status_line(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let recent = model.notices.back().filter(|n| {
        (model.now - n.at)
            .to_std()
            .map_or(true, |age| age < NOTICE_SHOWN)
    });
    let line = match recent {
        Some(notice) if notice.level == NoticeLevel::Refused => {
            Line::from(Span::styled(format!(" ✗ {}", notice.text), theme.danger))
        }
        Some(notice) => Line::from(Span::styled(format!(" {}", notice.text), theme.dim)),
        None => match (&model.runbook, run_next_availability(model)) {
            (Some(_), Err(why)) => Line::from(vec![
                Span::styled(" Enter disabled: ", theme.warn),
                Span::styled(why, theme.warn),
            ]),
            _ => Line::raw(""),
        },
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// The context the top layer puts keys in.
pub(crate) fn current_context(model: &Model) -> Context {
    match model.layers.last() {
        None => Context::Main,
        Some(Layer::Confirm(_)) => Context::Dialog,
        Some(Layer::Palette(_)) => Context::Palette,
        Some(Layer::Help { .. }) => Context::Help,
    }
}

fn render_hint_bar(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let context = current_context(model);
    let dialog_key = match model.layers.last() {
        Some(Layer::Confirm(d)) => Some(d.severity.confirm_key()),
        _ => None,
    };
    let run_disabled = run_next_availability(model).is_err();
    let mut spans = Vec::new();
    for binding in keymap::bindings(context) {
        let Some(hint) = binding.hint else { continue };
        if context == Context::Dialog
            && binding.command == Command::Confirm
            && dialog_key.is_some_and(|k| !binding.keys.contains(&k))
        {
            continue;
        }
        // A disabled key is dimmed; the status line says why.
        let disabled =
            context == Context::Main && binding.command == Command::RunNext && run_disabled;
        let (key_style, hint_style): (Style, Style) = if disabled {
            (theme.dim, theme.dim)
        } else {
            (theme.key, theme.text)
        };
        spans.push(Span::styled(
            format!(" {}", binding.first_key_label()),
            key_style,
        ));
        spans.push(Span::styled(format!(" {hint} "), hint_style));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// `<1s`, `4s`, `2m05s`, `1h02m`.
pub fn format_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0 => "<1s".to_string(),
        1..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// Step durations: `0.4s`, `12.3s`, `2m05s`.
pub fn format_duration(d: Duration) -> String {
    if d.as_secs() < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format_age(d)
    }
}
