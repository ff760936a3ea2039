//! The large pause clock in the header: how long traffic has been paused against its bound,
//! drawn with a small built-in glyph table (5 rows high).

use super::super::model::Model;
use super::super::theme::Theme;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Gauge, Paragraph};
use ratatui::Frame;

/// Rows the clock takes: 5 rows of glyphs, with the label and gauge beside them.
pub const CLOCK_HEIGHT: u16 = 5;
const GLYPH_ROWS: usize = 5;

fn glyph(c: char) -> [&'static str; GLYPH_ROWS] {
    match c {
        '0' => ["███", "█ █", "█ █", "█ █", "███"],
        '1' => [" █ ", "██ ", " █ ", " █ ", "███"],
        '2' => ["███", "  █", "███", "█  ", "███"],
        '3' => ["███", "  █", "███", "  █", "███"],
        '4' => ["█ █", "█ █", "███", "  █", "  █"],
        '5' => ["███", "█  ", "███", "  █", "███"],
        '6' => ["███", "█  ", "███", "█ █", "███"],
        '7' => ["███", "  █", "  █", "  █", "  █"],
        '8' => ["███", "█ █", "███", "█ █", "███"],
        '9' => ["███", "█ █", "███", "  █", "███"],
        '.' => [" ", " ", " ", " ", "█"],
        ':' => [" ", "█", " ", "█", " "],
        's' => ["   ", "   ", "██ ", " ██", "██ "],
        _ => ["   ", "   ", "   ", "   ", "   "],
    }
}

/// `text` in 5-row glyphs, one column between characters.
pub fn big_text_lines(text: &str) -> [String; GLYPH_ROWS] {
    let mut rows: [String; GLYPH_ROWS] = Default::default();
    for (i, c) in text.chars().enumerate() {
        let g = glyph(c);
        for (row, part) in rows.iter_mut().zip(g) {
            if i > 0 {
                row.push(' ');
            }
            row.push_str(part);
        }
    }
    rows
}

/// `07.3s`, or `1:07.3` past a minute.
fn clock_text(secs: f64) -> String {
    let tenths = (secs * 10.0).floor() as u64;
    let (minutes, rest) = (tenths / 600, tenths % 600);
    if minutes == 0 {
        format!("{:02}.{}s", rest / 10, rest % 10)
    } else {
        format!("{minutes}:{:02}.{}", rest / 10, rest % 10)
    }
}

pub fn render_pause_clock(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let (Some(elapsed), Some(runbook)) = (model.pause_elapsed(), &model.runbook) else {
        return;
    };
    let bound = runbook.pause_bound.as_secs_f64().max(0.001);
    let ratio = elapsed.as_secs_f64() / bound;
    let style = if ratio >= 0.8 {
        theme.danger
    } else if ratio >= 0.5 {
        theme.warn
    } else {
        theme.ok
    };
    let big = big_text_lines(&clock_text(elapsed.as_secs_f64()));
    let width = big[0].chars().count() as u16 + 2;
    let [digits, label] =
        Layout::horizontal([Constraint::Length(width), Constraint::Min(0)]).areas(area);
    let lines: Vec<Line> = big
        .iter()
        .map(|row| Line::from(Span::styled(format!(" {row}"), style)))
        .collect();
    frame.render_widget(Paragraph::new(lines), digits);
    let remaining = (bound - elapsed.as_secs_f64()).max(0.0);
    let [title, numbers, gauge, note] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(label);
    frame.render_widget(
        Paragraph::new(Line::from(Span::styled(" TRAFFIC PAUSED ", theme.paused))),
        title,
    );
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(format!(" bound {bound:.1}s"), theme.text),
            Span::styled(format!(" · {remaining:.1}s left"), style),
        ])),
        numbers,
    );
    frame.render_widget(
        Paragraph::new(Line::from(Span::styled(
            " traffic resumes by itself at the bound",
            theme.dim,
        ))),
        note,
    );
    frame.render_widget(
        Gauge::default()
            .gauge_style(style)
            .ratio(ratio.clamp(0.0, 1.0))
            .label(format!(
                "{:.0}% of the pause bound",
                (ratio * 100.0).min(999.0)
            )),
        Rect {
            x: gauge.x + 1,
            width: gauge.width.saturating_sub(2).min(60),
            ..gauge
        },
    );
}
