//! Popup layers drawn over the panes: confirmation dialogs, the command palette and the help
//! popup generated from the keymap table.

use super::super::dialog::{ConfirmDialog, DialogFocus, Layer, Palette, Severity};
use super::super::keymap::{self, Context, PALETTE_COMMANDS};
use super::super::model::{describe_change, Model};
use super::super::theme::Theme;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

/// Most lines of "what you confirm" shown in a dialog.
const SEEN_LINES_SHOWN: usize = 8;

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width.saturating_sub(2));
    let height = height.min(area.height.saturating_sub(2));
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

pub fn render_layer(frame: &mut Frame, area: Rect, layer: &Layer, model: &Model, theme: &Theme) {
    match layer {
        Layer::Confirm(dialog) => render_confirm(frame, area, dialog, model, theme),
        Layer::Palette(palette) => render_palette(frame, area, palette, theme),
        Layer::Help { scroll } => render_help(frame, area, *scroll, theme),
    }
}

fn render_confirm(
    frame: &mut Frame,
    area: Rect,
    dialog: &ConfirmDialog,
    model: &Model,
    theme: &Theme,
) {
    let dangerous = dialog.severity == Severity::Dangerous;
    // A window's (and an approval's) body is long: wide, and wrapped rather than cut.
    let window = matches!(
        dialog.intent,
        super::super::dialog::Intent::RunWindow { .. }
            | super::super::dialog::Intent::Approve { .. }
            | super::super::dialog::Intent::Object { .. }
    );
    let width: u16 = if window { 120 } else { 90 };
    // A window's body is read in full: its lines wrap to the dialog instead of being cut.
    let inner = width.min(area.width.saturating_sub(2)).saturating_sub(2) as usize;
    let body: Vec<Line> = dialog
        .body
        .iter()
        .flat_map(|l| {
            let style = if l.contains("POINT OF NO RETURN") || l.contains("DESTRUCTIVE") {
                theme.danger
            } else {
                theme.dialog
            };
            let parts = if window {
                wrap(l, inner)
            } else {
                vec![l.clone()]
            };
            parts.into_iter().map(move |p| Line::styled(p, style))
        })
        .collect();
    let mut changes: Vec<Line> = Vec::new();
    // Live hint: the readings moved since the dialog recorded them (checked again on confirm).
    if dialog.changed.is_empty() {
        if let Some(step) = intent_step(dialog).and_then(|i| model.step(i)) {
            let now = (model.session.seen)(step, &model.latest);
            if now != dialog.seen {
                changes.push(Line::styled(
                    "Readings changed since this dialog opened: confirming will ask again.",
                    theme.warn,
                ));
                for l in describe_change(&dialog.seen, &now).into_iter().take(4) {
                    changes.push(Line::styled(format!("  {l}"), theme.warn));
                }
            }
        }
    } else {
        changes.push(Line::styled(
            "CHANGED since you opened this dialog:",
            theme.warn,
        ));
        for l in &dialog.changed {
            changes.push(Line::styled(format!("  {l}"), theme.warn));
        }
    }
    let mut tail: Vec<Line> = Vec::new();
    if !dialog.fields.is_empty() {
        tail.push(Line::raw(""));
    }
    for (i, field) in dialog.fields.iter().enumerate() {
        let focused = dialog.focus == DialogFocus::Field(i);
        let cursor = if focused { "▏" } else { "" };
        tail.push(Line::from(vec![
            Span::styled(
                format!("{} {}: ", if focused { "›" } else { " " }, field.label),
                theme.dialog,
            ),
            Span::styled(
                format!("[{}{cursor}]", field.value),
                if focused {
                    theme.selected
                } else {
                    theme.dialog
                },
            ),
        ]));
    }
    if let Some(error) = &dialog.error {
        tail.push(Line::styled(format!("✗ {error}"), theme.danger));
    }
    tail.push(Line::raw(""));
    let cancel_style = if dialog.focus == DialogFocus::Buttons {
        theme.selected
    } else {
        theme.dialog
    };
    tail.push(Line::from(vec![
        Span::styled(" [ Cancel ] ", cancel_style),
        Span::styled("  Enter/Esc cancels · ", theme.dialog),
        Span::styled(dialog.severity.confirm_label(), theme.key),
        Span::styled(" confirms", theme.dialog),
    ]));
    // The body gets the room the changes and the buttons leave; a longer body scrolls.
    let max_inner = area.height.saturating_sub(4) as usize;
    let fixed = changes.len() + tail.len();
    let body_room = max_inner.saturating_sub(fixed).max(3);
    let mut body = body;
    if body.len() > body_room {
        let shown = body_room.saturating_sub(1);
        let last_start = body.len().saturating_sub(shown);
        let start = (dialog.scroll as usize).min(last_start);
        let more = format!(
            "  … lines {}–{} of {} · PgDn/PgUp scroll",
            start + 1,
            start + shown,
            body.len()
        );
        body = body.into_iter().skip(start).take(shown).collect();
        body.push(Line::styled(more, theme.key));
    }
    // What the operator confirms gets the room that is left, up to SEEN_LINES_SHOWN lines.
    let fixed = body.len() + changes.len() + tail.len();
    let seen: Vec<&str> = dialog.seen.lines().collect();
    let mut lines = body;
    let room = max_inner.saturating_sub(fixed + 2).min(SEEN_LINES_SHOWN);
    if !seen.is_empty() && room > 0 {
        lines.push(Line::raw(""));
        lines.push(Line::styled("You confirm what you see now:", theme.title));
        let shown = if seen.len() > room {
            room.saturating_sub(1)
        } else {
            seen.len()
        };
        for l in seen.iter().take(shown) {
            lines.push(Line::styled(format!("  {l}"), theme.dim));
        }
        if seen.len() > shown {
            lines.push(Line::styled(
                format!("  … {} more", seen.len() - shown),
                theme.dim,
            ));
        }
    }
    lines.extend(changes);
    lines.extend(tail);
    let height = lines.len() as u16 + 2;
    let rect = centered(area, width, height);
    let border = if dangerous {
        theme.dialog_danger
    } else {
        theme.border_focused
    };
    let block = Block::bordered()
        .border_style(border)
        .style(theme.dialog)
        .title(Span::styled(format!(" {} ", dialog.title), border));
    frame.render_widget(Clear, rect);
    frame.render_widget(Paragraph::new(lines).block(block).style(theme.dialog), rect);
}

/// `text` in lines of at most `width` characters, broken at spaces where one is near, with
/// continuation lines indented like the first.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(16);
    let indent: String = text.chars().take_while(|c| *c == ' ').collect();
    let mut out = Vec::new();
    let mut rest: Vec<char> = text.chars().collect();
    while rest.len() > width {
        let cut = rest[..width]
            .iter()
            .rposition(|c| *c == ' ')
            .filter(|&i| i > width / 2)
            .unwrap_or(width);
        out.push(
            rest[..cut]
                .iter()
                .collect::<String>()
                .trim_end()
                .to_string(),
        );
        let tail: String = rest[cut..].iter().collect();
        rest = format!("{indent}  {}", tail.trim_start()).chars().collect();
    }
    out.push(rest.into_iter().collect());
    out
}

fn intent_step(dialog: &ConfirmDialog) -> Option<usize> {
    use super::super::dialog::Intent;
    match dialog.intent {
        Intent::RunStep { step } | Intent::Skip { step } => Some(step),
        Intent::RunWindow { from, .. } => Some(from),
        Intent::Rollback { to } => Some(to),
        Intent::Approve { step, .. } | Intent::Object { step, .. } => Some(step),
        Intent::Quit => None,
    }
}

fn render_palette(frame: &mut Frame, area: Rect, palette: &Palette, theme: &Theme) {
    let mut lines = vec![Line::from(vec![
        Span::styled(":", theme.key),
        Span::styled(format!("{}▏", palette.input), theme.dialog),
    ])];
    let completions = keymap::palette_completions(&palette.input);
    for (name, args, description) in PALETTE_COMMANDS
        .iter()
        .filter(|c| completions.contains(&c.0))
    {
        lines.push(Line::from(vec![
            Span::styled(format!("  {name}{args}"), theme.key),
            Span::styled(format!("  {description}"), theme.dim),
        ]));
    }
    if let Some(error) = &palette.error {
        lines.push(Line::styled(format!("✗ {error}"), theme.danger));
    }
    let height = lines.len() as u16 + 2;
    let width = area.width.min(70);
    let rect = Rect {
        x: area.x + 1,
        y: area.y + area.height.saturating_sub(height + 2),
        width,
        height,
    };
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .border_style(theme.border_focused)
                .style(theme.dialog)
                .title(Span::styled(" command ", theme.title)),
        ),
        rect,
    );
}

/// Help lines, generated from the keymap table.
pub fn help_lines(theme: &Theme) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    for context in [
        Context::Main,
        Context::Dialog,
        Context::Palette,
        Context::Help,
    ] {
        lines.push(Line::styled(context.title(), theme.title));
        for binding in keymap::bindings(context) {
            lines.push(Line::from(vec![
                Span::styled(format!("  {:<16}", binding.keys_label()), theme.key),
                Span::styled(binding.description, theme.dialog),
            ]));
        }
        lines.push(Line::raw(""));
    }
    lines.push(Line::styled("Runbook step flags", theme.title));
    lines.push(Line::styled(
        "  D destructive · ! point of no return (type a name to confirm) · T needs traffic stopped",
        theme.dialog,
    ));
    lines.push(Line::raw(""));
    lines.push(Line::styled("Palette commands (:)", theme.title));
    for (name, args, description) in PALETTE_COMMANDS {
        lines.push(Line::from(vec![
            Span::styled(format!("  {:<36}", format!("{name}{args}")), theme.key),
            Span::styled(*description, theme.dialog),
        ]));
    }
    lines
}

fn render_help(frame: &mut Frame, area: Rect, scroll: u16, theme: &Theme) {
    let lines = help_lines(theme);
    let rect = centered(area, 94, lines.len() as u16 + 2);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).scroll((scroll, 0)).block(
            Block::bordered()
                .border_style(theme.border_focused)
                .style(theme.dialog)
                .title(Span::styled(" keys ", theme.title)),
        ),
        rect,
    );
}

/// Pair review boxes under the dialogs: the driver's "waiting for a second operator" (who it
/// waits for, since when, an objection in full) and, in `tui --second`, what the driver waits
/// on with the keys that answer it.
pub fn render_pair(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let since = |at: chrono::DateTime<chrono::Utc>| {
        let waited = (model.now - at).num_seconds().max(0);
        format!("since {} ({waited} s)", at.format("%H:%M:%S UTC"))
    };
    let (title, lines, danger) = if let Some(wait) = &model.pair_wait {
        let mut lines = vec![
            Line::styled(format!("Waiting for a second operator to approve {}", wait.covers), theme.dialog),
            Line::styled(
                format!("from another OS user than {}, in their own session, {}", wait.driver, since(wait.since)),
                theme.dialog,
            ),
            Line::styled(format!("seen {} (request {})", &wait.seen[..16.min(wait.seen.len())], wait.request), theme.dim),
            Line::styled(
                "they run: cutover tui INV RUNBOOK --second  (or cutover approve ... --step STEP --seen HASH)",
                theme.dim,
            ),
        ];
        if let Some((who, reason)) = &wait.objection {
            lines.push(Line::styled(
                format!("BLOCKED: {who} objects: {reason}"),
                theme.danger,
            ));
            lines.push(Line::styled(
                "nothing runs until they withdraw",
                theme.danger,
            ));
        }
        if let Some(note) = &wait.note {
            lines.push(Line::styled(note.clone(), theme.warn));
        }
        let danger = wait.objection.is_some();
        (" pair review: waiting ", lines, danger)
    } else if let (Some(request), true) = (&model.pair_request, model.session.second) {
        let mut lines = vec![
            Line::styled(
                format!(
                    "{} waits for you to approve {}",
                    request.driver, request.covers
                ),
                theme.dialog,
            ),
            Line::styled(
                format!("{} · {}", request.driver_terminal, since(request.since)),
                theme.dim,
            ),
            Line::styled(format!("seen {}", request.seen), theme.dim),
        ];
        match (&request.refusal, &request.mine) {
            (Some(why), _) => lines.push(Line::styled(why.clone(), theme.danger)),
            (None, Some(mine)) => lines.push(Line::styled(
                format!("your verdict: {mine} · w withdraws it"),
                theme.warn,
            )),
            (None, None) => lines.push(Line::styled(
                "a reviews and approves · o objects (with a reason)",
                theme.key,
            )),
        }
        (" pair review: your approval ", lines, false)
    } else {
        return;
    };
    let width = area.width.saturating_sub(4).min(110);
    let height = (lines.len() as u16 + 2).min(area.height.saturating_sub(4));
    let rect = Rect {
        x: area.x + (area.width.saturating_sub(width)) / 2,
        y: area.y + 3,
        width,
        height,
    };
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(ratatui::widgets::Wrap { trim: false })
            .block(
                Block::bordered()
                    .border_style(if danger {
                        theme.danger
                    } else {
                        theme.border_focused
                    })
                    .style(theme.dialog)
                    .title(Span::styled(title, theme.title)),
            ),
        rect,
    );
}
