//! The Copy pane (table-copy): a bar per running COPY, the overall rate and ETA, the counts
//! by state, and the errored tables with their reason. Pure: draws the model's `CopyView`.

use super::pane_block;
use super::panes::{human_bytes, thousands};
use crate::ui::model::{CopyView, Model, Pane};
use crate::ui::theme::Theme;
use crate::ui::update::selected_copy_error;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

/// Cells of a progress bar.
const BAR: usize = 20;

/// `[#####.....]  42 %` of `done` out of `total`.
pub fn progress_bar(done: i64, total: i64) -> String {
    let fraction = if total > 0 {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = (fraction * BAR as f64).round() as usize;
    format!(
        "[{}{}] {:>3} %",
        "█".repeat(filled),
        "·".repeat(BAR - filled),
        (fraction * 100.0).floor() as u32
    )
}

fn eta_text(eta: std::time::Duration) -> String {
    let s = eta.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn lines<'a>(copy: &CopyView, model: &Model, theme: &Theme) -> Vec<Line<'a>> {
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("{} pending", copy.pending), theme.dim),
        Span::raw(" · "),
        Span::styled(format!("{} copying", copy.copying), theme.text),
        Span::raw(" · "),
        Span::styled(format!("{} verified", copy.verified), theme.ok),
        Span::raw(" · "),
        Span::styled(
            format!("{} errored", copy.errored),
            if copy.errored > 0 {
                theme.danger
            } else {
                theme.dim
            },
        ),
    ])];
    let rate = copy
        .bytes_per_s
        .map(|b| format!("{}/s", human_bytes(b as i64)))
        .unwrap_or_else(|| "-/s".into());
    let eta = copy.eta.map(eta_text).unwrap_or_else(|| "-".into());
    let mut status = vec![Span::raw(format!("{rate} · ETA {eta}"))];
    if model.items_held {
        status.push(Span::styled(
            "  HELD: no new table starts (p releases)",
            theme.warn,
        ));
    }
    if copy.confirm_each {
        status.push(Span::styled(
            "  --confirm: each table waits for c",
            theme.warn,
        ));
    }
    lines.push(Line::from(status));
    if let Some(error) = &copy.error {
        lines.push(Line::styled(
            format!("reading failed: {error}"),
            theme.unreachable,
        ));
    }
    for r in &copy.running {
        lines.push(Line::from(vec![
            Span::styled(format!("{:<28} ", r.item), theme.text),
            Span::styled(progress_bar(r.rows, r.rows_estimate), theme.ok),
            Span::raw(format!(
                " {} of ~{} rows, {}",
                thousands(r.rows),
                thousands(r.rows_estimate),
                human_bytes(r.bytes)
            )),
        ]));
    }
    let selected = selected_copy_error(model).map(|(item, _)| item.clone());
    for (item, reason) in &copy.errors {
        let mark = if selected.as_ref() == Some(item) {
            "▶"
        } else {
            " "
        };
        lines.push(Line::styled(
            format!("{mark}✗ {item}: {reason}"),
            theme.danger,
        ));
    }
    if !copy.errors.is_empty() {
        lines.push(Line::styled(
            "j/k select · t retry the selected table · p hold/release new starts",
            theme.dim,
        ));
    }
    lines
}

pub fn render_copy(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let (body, extra) = match &model.copy {
        Some(copy) => (
            lines(copy, model, theme),
            vec![Span::styled(format!("{} ", copy.pair), theme.dim)],
        ),
        None => (
            vec![Line::styled("no table copy in this cockpit", theme.dim)],
            vec![],
        ),
    };
    let block = pane_block(Pane::Copy, model, theme, extra);
    frame.render_widget(
        Paragraph::new(body)
            .block(block)
            .wrap(ratatui::widgets::Wrap { trim: false }),
        area,
    );
}
