//! The slot watch in the Replication pane: the alarm line when retained WAL fills the source's
//! disk within the threshold, per slot its lag, WAL status and disk, per target the tool's
//! apply (stopped, with its error as an alarm) and a native subscription's error counters.

use cutover::ui::fixtures;
use cutover::ui::model::Pane;
use cutover::ui::render;
use cutover::ui::theme::Theme;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::time::Instant;

fn pane_text(width: u16, height: u16) -> String {
    let mut model = fixtures::model(Instant::now());
    model.shown = fixtures::slots_snapshot(fixtures::fixed_now());
    let theme = Theme::builtin("dark").unwrap();
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|frame| render::render_pane(frame, frame.area(), Pane::Replication, &model, &theme))
        .unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        let line: String = (0..buffer.area.width)
            .map(|x| buffer[(x, y)].symbol().to_string())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn the_disk_alarm_comes_first_and_each_slot_shows_its_lag_and_disk() {
    let text = pane_text(160, 48);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[1]
            .contains("⚠ slot cutover_move holds 3.2 GB; disk full in 41 min at the current rate"),
        "the alarm is the pane's first line:\n{text}"
    );
    assert!(
        text.contains("cutover_move wal2json: lag 3.2 GB · WAL extended · disk 10.0 GB free of 50.0 GB · full in 41 min"),
        "{text}"
    );
    assert!(
        text.contains("apply cutover_move → reporting: applied 2/40001A8, 1,234,567 changes, lag 0.4 s STOPPED"),
        "{text}"
    );
    assert!(
        text.contains("⚠ apply from cutover_move into pg2/reporting stopped: a schema change"),
        "{text}"
    );
    assert!(
        text.contains("subscription move_back: 3 apply / 0 sync errors"),
        "{text}"
    );
}

#[test]
fn slot_watch_snapshots() {
    insta::assert_snapshot!("slots_80x24", pane_text(80, 24));
    insta::assert_snapshot!("slots_160x48", pane_text(160, 48));
}
