//! The Runbook pane: steps with status and duration, and the selected step's exact commands and
//! live preconditions, each shown as holding or not.

use super::super::model::{Model, Pane, StepStatusView, StepView};
use super::super::theme::Theme;
use super::super::update::run_next_availability;
use super::{format_duration, pane_block};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

fn status_icon(status: &StepStatusView) -> &'static str {
    match status {
        StepStatusView::Pending => "·",
        StepStatusView::Running => "▶",
        StepStatusView::Done => "✓",
        StepStatusView::Failed(_) => "✗",
        StepStatusView::Skipped(_) => "↷",
        StepStatusView::RolledBack => "↺",
        StepStatusView::NeedsRecheck => "?",
    }
}

fn status_text(status: &StepStatusView) -> String {
    match status {
        StepStatusView::Pending => "pending".into(),
        StepStatusView::Running => "running".into(),
        StepStatusView::Done => "done".into(),
        StepStatusView::Failed(why) => format!("FAILED: {why}"),
        StepStatusView::Skipped(why) => format!("skipped: {why}"),
        StepStatusView::RolledBack => "rolled back".into(),
        StepStatusView::NeedsRecheck => "interrupted: will be re-checked, not re-applied".into(),
    }
}

fn status_style(theme: &Theme, status: &StepStatusView) -> Style {
    match status {
        StepStatusView::Done => theme.ok,
        StepStatusView::Running | StepStatusView::NeedsRecheck => theme.warn,
        StepStatusView::Failed(_) => theme.danger,
        StepStatusView::Skipped(_) | StepStatusView::RolledBack | StepStatusView::Pending => {
            theme.dim
        }
    }
}

fn step_row<'a>(
    model: &Model,
    theme: &Theme,
    index: usize,
    step: &StepView,
    width: u16,
    selected: bool,
) -> Line<'a> {
    let duration = step
        .duration(model.now)
        .map(format_duration)
        .unwrap_or_default();
    let mut flags = String::new();
    if step.destructive {
        flags.push_str(" D");
    }
    if step.point_of_no_return.is_some() {
        flags.push_str(" !");
    }
    if step.needs_traffic_stopped {
        flags.push_str(" T");
    }
    let marker = if selected { "›" } else { " " };
    let head = format!("{marker}{:>2} ", index + 1);
    let tail = format!("{flags} {duration:>7}");
    let room = (width as usize).saturating_sub(head.chars().count() + 2 + tail.chars().count());
    let mut title: String = step.title.chars().take(room).collect();
    let pad = room.saturating_sub(title.chars().count());
    title.push_str(&" ".repeat(pad));
    let base = if selected { theme.selected } else { theme.text };
    let icon_style = if selected {
        theme.selected
    } else {
        status_style(theme, &step.status)
    };
    let flag_style = if selected {
        theme.selected
    } else if step.destructive || step.point_of_no_return.is_some() {
        theme.danger
    } else {
        theme.dim
    };
    Line::from(vec![
        Span::styled(head, base),
        Span::styled(format!("{} ", status_icon(&step.status)), icon_style),
        Span::styled(title, base),
        Span::styled(flags, flag_style),
        Span::styled(format!(" {duration:>7}"), base),
    ])
}

/// Failed items listed with their reason, at most this many.
const FAILED_ITEMS_SHOWN: usize = 5;

/// A step's items: counts, the running ones, and the failed ones with why.
fn item_lines<'a>(
    theme: &Theme,
    items: &super::super::model::ItemsView,
    lines: &mut Vec<Line<'a>>,
) {
    if items.is_empty() {
        return;
    }
    lines.push(Line::from(vec![
        Span::styled("Items ", theme.title),
        Span::styled(
            format!(
                "{} done · {} running · {} pending · {} failed",
                items.done,
                items.running.len(),
                items.pending,
                items.failed.len()
            ),
            if items.failed.is_empty() {
                theme.text
            } else {
                theme.danger
            },
        ),
    ]));
    if !items.running.is_empty() {
        let running: Vec<String> = items
            .running
            .iter()
            .map(|(id, attempt)| {
                if *attempt > 1 {
                    format!("{id} (attempt {attempt})")
                } else {
                    id.clone()
                }
            })
            .collect();
        lines.push(Line::from(Span::styled(
            format!(" running: {}", running.join(", ")),
            theme.text,
        )));
    }
    for (id, reason) in items.failed.iter().take(FAILED_ITEMS_SHOWN) {
        lines.push(Line::from(vec![
            Span::styled(format!(" ✗ {id}: "), theme.danger),
            Span::styled(reason.clone(), theme.dim),
        ]));
    }
    if items.failed.len() > FAILED_ITEMS_SHOWN {
        lines.push(Line::from(Span::styled(
            format!(
                " … and {} more failed",
                items.failed.len() - FAILED_ITEMS_SHOWN
            ),
            theme.danger,
        )));
    }
}

fn details<'a>(model: &Model, theme: &Theme, index: usize, step: &StepView) -> Vec<Line<'a>> {
    let mut lines = vec![
        Line::from(Span::styled(
            format!("{}. {}", index + 1, step.title),
            theme.title,
        )),
        Line::from(vec![
            Span::styled("status ", theme.dim),
            Span::styled(status_text(&step.status), status_style(theme, &step.status)),
        ]),
    ];
    let mut flags = Vec::new();
    if step.destructive {
        flags.push(Span::styled("DESTRUCTIVE ", theme.danger));
    }
    if step.needs_traffic_stopped {
        flags.push(Span::styled("needs traffic stopped ", theme.warn));
    }
    if !flags.is_empty() {
        lines.push(Line::from(flags));
    }
    match (&step.point_of_no_return, &step.undo) {
        (Some(reason), _) => lines.push(Line::from(Span::styled(
            format!("POINT OF NO RETURN: {reason}"),
            theme.danger,
        ))),
        (None, Some(undo)) => lines.push(Line::from(vec![
            Span::styled("undo ", theme.dim),
            Span::styled(undo.clone(), theme.text),
        ])),
        (None, None) => {}
    }
    if model.runbook.as_ref().and_then(|r| r.next_step()) == Some(index) {
        if let Err(why) = run_next_availability(model) {
            lines.push(Line::from(Span::styled(
                format!("Enter disabled: {why}"),
                theme.warn,
            )));
        }
    }
    if !step.preconditions.is_empty() {
        lines.push(Line::from(Span::styled("Preconditions", theme.title)));
    }
    for p in &step.preconditions {
        let (mark, style) = match p.holds {
            Some(true) => ("✓ holds", theme.ok),
            Some(false) => ("✗ DOES NOT HOLD", theme.danger),
            None => ("? not evaluated", theme.dim),
        };
        lines.push(Line::from(vec![
            Span::styled(format!(" {mark} "), style),
            Span::styled(p.description.clone(), theme.text),
            Span::styled(
                if p.detail.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", p.detail)
                },
                theme.dim,
            ),
        ]));
    }
    item_lines(theme, &step.items, &mut lines);
    if !step.commands.is_empty() {
        lines.push(Line::from(Span::styled("Runs exactly", theme.title)));
    }
    for c in &step.commands {
        lines.push(Line::from(Span::styled(
            format!(" [{}]", c.target),
            theme.key,
        )));
        for text_line in c.text.lines() {
            lines.push(Line::from(Span::styled(
                format!("   {text_line}"),
                theme.text,
            )));
        }
    }
    lines
}

pub fn render_runbook(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let Some(runbook) = &model.runbook else {
        let block = pane_block(Pane::Runbook, model, theme, vec![]);
        frame.render_widget(
            Paragraph::new(Line::styled(
                "No runbook loaded: monitoring only.",
                theme.dim,
            ))
            .block(block),
            area,
        );
        return;
    };
    let done = runbook
        .steps
        .iter()
        .filter(|s| s.status == StepStatusView::Done)
        .count();
    let block = pane_block(
        Pane::Runbook,
        model,
        theme,
        vec![Span::styled(
            format!(
                " {} · {done}/{} done ",
                runbook.runbook,
                runbook.steps.len()
            ),
            theme.dim,
        )],
    );
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let step_count = runbook.steps.len() as u16;
    let (list_area, detail_area) = if inner.width >= 100 {
        let [list, detail] =
            Layout::horizontal([Constraint::Percentage(42), Constraint::Percentage(58)])
                .areas(inner);
        (list, detail)
    } else {
        let list_height = step_count.min(inner.height / 2).max(1);
        let [list, detail] =
            Layout::vertical([Constraint::Length(list_height), Constraint::Min(0)]).areas(inner);
        (list, detail)
    };
    let selected = model
        .selected_step
        .min(runbook.steps.len().saturating_sub(1));
    let rows: Vec<Line> = runbook
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| step_row(model, theme, i, s, list_area.width, i == selected))
        .collect();
    let offset = (selected as u16).saturating_sub(list_area.height.saturating_sub(1));
    frame.render_widget(Paragraph::new(rows).scroll((offset, 0)), list_area);
    if let Some(step) = runbook.steps.get(selected) {
        let detail_block = ratatui::widgets::Block::new()
            .borders(if inner.width >= 100 {
                ratatui::widgets::Borders::LEFT
            } else {
                ratatui::widgets::Borders::TOP
            })
            .border_style(theme.border);
        frame.render_widget(
            Paragraph::new(details(model, theme, selected, step))
                .block(detail_block)
                .wrap(Wrap { trim: false }),
            detail_area,
        );
    }
}
