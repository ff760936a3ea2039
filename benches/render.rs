//! Render benchmark: one full cockpit frame at 200×60 on fixed readings (target < 16 ms).

use criterion::{criterion_group, criterion_main, Criterion};
use cutover::ui::fixtures;
use cutover::ui::render;
use cutover::ui::theme::Theme;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::hint::black_box;
use std::time::Instant;

fn full_frame(c: &mut Criterion) {
    let model = fixtures::model(Instant::now());
    let mut group = c.benchmark_group("render");
    for name in ["dark", "high-contrast"] {
        let theme = Theme::builtin(name).expect("built-in theme");
        let mut terminal = Terminal::new(TestBackend::new(200, 60)).expect("test backend");
        group.bench_function(format!("full_frame_200x60_{name}"), |b| {
            b.iter(|| {
                // Clearing forces a full redraw, the worst case: every cell differs.
                terminal.clear().expect("clear");
                render::draw(&mut terminal, black_box(&model), &theme).expect("draw");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, full_frame);
criterion_main!(benches);
