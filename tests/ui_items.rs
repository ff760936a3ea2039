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

/// The Copy pane: a bar per running COPY, the rate and ETA, the counts by state, the errored
/// tables with their reason (the selected one marked), and the hold shown when held.
#[test]
fn the_copy_pane_shows_bars_rate_eta_counts_and_errors() {
    use cutover::ui::model::{CopyRunningView, CopyView};
    let mut model = fixtures::model(Instant::now());
    model.copy = Some(CopyView {
        at: model.now,
        pair: "pg1/reporting → pg2/copy_target".into(),
        pending: 7,
        copying: 2,
        verified: 14,
        errored: 1,
        running: vec![CopyRunningView {
            item: "public.events#2/4".into(),
            rows: 60_000,
            rows_estimate: 120_000,
            bytes: 12 * 1024 * 1024,
        }],
        errors: vec![(
            "public.report_2023_03".into(),
            "value too long for type character varying(4)".into(),
        )],
        bytes_per_s: Some(48.0 * 1024.0 * 1024.0),
        eta: Some(std::time::Duration::from_secs(95)),
        confirm_each: false,
        error: None,
    });
    model.items_held = true;
    let theme = Theme::builtin("dark").unwrap();
    let mut terminal = Terminal::new(TestBackend::new(120, 20)).unwrap();
    terminal
        .draw(|frame| render::render_pane(frame, frame.area(), Pane::Copy, &model, &theme))
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
        text.contains("7 pending · 2 copying · 14 verified · 1 errored"),
        "{text}"
    );
    assert!(text.contains("50.3 MB/s · ETA 1m35s"), "{text}");
    assert!(
        text.contains("public.events#2/4            [██████████··········]  50 % 60,000 of ~120,000 rows, 12.6 MB"),
        "{text}"
    );
    assert!(
        text.contains("▶✗ public.report_2023_03: value too long for type character varying(4)"),
        "{text}"
    );
    assert!(text.contains("HELD: no new table starts"), "{text}");
    assert!(model.panes().contains(&Pane::Copy));
}
