//! A step made of items (tables, key ranges) shows in the Runbook pane how far its items are,
//! which run, and which failed with why, from the engine's item table.

use cutover::ui::fixtures;
use cutover::ui::model::{ItemsView, Pane};
use cutover::ui::render;
use cutover::ui::theme::Theme;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::time::Instant;

#[test]
fn a_step_with_items_shows_counts_running_and_failed_items() {
    let mut model = fixtures::model(Instant::now());
    let runbook = model.runbook.as_mut().unwrap();
    runbook.steps[1].items = ItemsView {
        done: 12,
        pending: 8,
        running: vec![("forms_2024_03".into(), 1), ("events".into(), 2)],
        failed: vec![(
            "cases_2024_01".into(),
            "invalid input syntax for type integer".into(),
        )],
    };
    model.selected_step = 1;
    let theme = Theme::builtin("dark").unwrap();
    let mut terminal = Terminal::new(TestBackend::new(200, 60)).unwrap();
    terminal
        .draw(|frame| render::render_pane(frame, frame.area(), Pane::Runbook, &model, &theme))
        .unwrap();
    let buffer = terminal.backend().buffer().clone();
    let text: String = (0..buffer.area.height)
        .map(|y| {
            (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol().to_string())
                .collect::<String>()
                + "\n"
        })
        .collect();
    assert!(
        text.contains("Items 12 done · 2 running · 8 pending · 1 failed"),
        "{text}"
    );
    assert!(
        text.contains("running: forms_2024_03, events (attempt 2)"),
        "{text}"
    );
    assert!(
        text.contains("✗ cases_2024_01: invalid input syntax for type integer"),
        "{text}"
    );
}
