//! The Citus section of the Shards pane: a bar of rows per worker, scaled to the fullest, so
//! skew is seen; exact counts when the slow reading has them; an unhealthy link in red. And
//! the header naming connections that TLS does not verify.

use cutover::ui::fixtures;
use cutover::ui::model::Pane;
use cutover::ui::render;
use cutover::ui::theme::Theme;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::time::Instant;

fn pane_text(width: u16, height: u16) -> String {
    let mut model = fixtures::model(Instant::now());
    model.shown = fixtures::citus_snapshot(fixtures::fixed_now());
    model.shown.distribution.clear();
    let theme = Theme::builtin("dark").unwrap();
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|frame| render::render_pane(frame, frame.area(), Pane::Shards, &model, &theme))
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
fn each_worker_has_a_bar_scaled_to_the_fullest() {
    let text = pane_text(120, 16);
    let bar = |worker: &str| {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("{worker} █")))
            .unwrap();
        line.matches('█').count()
    };
    assert_eq!(
        bar("citus2"),
        24,
        "the fullest worker fills its bar:\n{text}"
    );
    assert_eq!(bar("citus1"), 12, "half the rows, half the bar:\n{text}");
    assert!(
        text.contains("66,666 rows · 17 shards"),
        "exact counts:\n{text}"
    );
    assert!(text.contains("unhealthy: citus2 → citus1"), "{text}");
    assert!(
        text.contains("domains") && text.contains("(reference)"),
        "{text}"
    );
}

#[test]
fn snapshots_at_80x24_and_200x60() {
    insta::assert_snapshot!("citus_80x24", pane_text(80, 24));
    insta::assert_snapshot!("citus_200x60", pane_text(200, 60));
}

/// An inventory whose connections TLS does not verify says so in the cockpit header, as
/// `check` and `plan` do on stderr.
#[test]
fn unverified_connections_are_named_in_the_header() {
    let mut model = fixtures::model(Instant::now());
    model.session.tls_warnings = vec![
        "connections to pg1 are not verified (sslmode prefer, no root certificate)".into(),
        "connections to pg2 are not verified (sslmode prefer, no root certificate)".into(),
    ];
    let theme = Theme::builtin("dark").unwrap();
    let mut terminal = Terminal::new(TestBackend::new(200, 60)).unwrap();
    terminal
        .draw(|frame| render::render(frame, &model, &theme))
        .unwrap();
    let buffer = terminal.backend().buffer().clone();
    let header: String = (0..buffer.area.width)
        .map(|x| buffer[(x, 0)].symbol().to_string())
        .collect();
    assert!(
        header.contains("⚠ connections to pg1 are not verified") && header.contains("(+1 more)"),
        "{header}"
    );
}
