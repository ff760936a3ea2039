//! The reading panes (Replication, Connections, Shards) and the Log pane, rendered from the
//! model's shown snapshot; each marks the age of its readings and stale or unreachable sources.

use super::super::model::{LagHistory, Model, Pane};
use super::super::theme::Theme;
use super::{format_age, pane_block, STALE_FACTOR};
use crate::readings::slots::{human_duration, snapshot_alarms, SlotWatch};
use crate::readings::types::{Outcome, Reading};
use chrono::{DateTime, Utc};
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use std::borrow::Cow;
use std::time::Duration;

/// Retained WAL of a slot above which it is shown as a warning.
pub const SLOT_WARN_BYTES: i64 = 1 << 30;
/// Retained WAL of a slot above which it is shown as dangerous.
pub const SLOT_DANGER_BYTES: i64 = 8 << 30;
/// Replication lag above which a sender is shown as a warning / as dangerous.
const LAG_WARN_BYTES: i64 = 16 << 20;
const LAG_DANGER_BYTES: i64 = 1 << 30;
const SPARKLINE_WIDTH: usize = 20;

pub use crate::readings::text::human_bytes;

/// `samples` (oldest first) as a block-character sparkline of at most `width` columns,
/// scaled to the largest sample shown.
pub fn sparkline(samples: &LagHistory, width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let skip = samples.samples.len().saturating_sub(width);
    let shown: Vec<u64> = samples.samples.iter().skip(skip).copied().collect();
    let max = shown.iter().copied().max().unwrap_or(0);
    shown
        .iter()
        .map(|&v| {
            if max == 0 {
                BARS[0]
            } else {
                let level = (v as u128 * (BARS.len() as u128 - 1)).div_ceil(max as u128);
                BARS[level.min(BARS.len() as u128 - 1) as usize]
            }
        })
        .collect()
}

fn age_of(model: &Model, at: DateTime<Utc>) -> Duration {
    (model.now - at).to_std().unwrap_or(Duration::ZERO)
}

fn is_stale(age: Duration, interval: Duration) -> bool {
    age > interval * STALE_FACTOR
}

/// Title spans with the oldest reading's age, marked stale when it is.
fn age_title<'a, T>(
    model: &Model,
    theme: &Theme,
    readings: &[Reading<T>],
    interval: Duration,
) -> Vec<Span<'a>> {
    match readings.iter().map(|r| age_of(model, r.at)).max() {
        None => vec![Span::styled(" waiting for readings ", theme.dim)],
        Some(age) if is_stale(age, interval) => {
            vec![Span::styled(
                format!(" STALE {} ", format_age(age)),
                theme.stale,
            )]
        }
        Some(age) => vec![Span::styled(format!(" {} ", format_age(age)), theme.dim)],
    }
}

/// The node a source reads (`pg2/postgres` reads `pg2`).
fn source_node(source: &str) -> &str {
    source.split('/').next().unwrap_or(source)
}

/// The lines naming a source: its name, its age (stale marked), or why it cannot be read: a
/// node the run expects stopped is shown stopped, in a neutral colour; any other failure is
/// unreachable, its reason in full, wrapped to `width`.
fn source_line<'a, T>(
    width: u16,
    model: &Model,
    theme: &Theme,
    reading: &Reading<T>,
    interval: Duration,
    what: String,
) -> Vec<Line<'a>> {
    let age = age_of(model, reading.at);
    let mut spans = vec![Span::styled(reading.source.clone(), theme.title)];
    match &reading.outcome {
        Outcome::Unreachable(why) => {
            let expected = model.runbook.as_ref().and_then(|r| {
                r.expected_stopped
                    .iter()
                    .find(|(node, _)| node == source_node(&reading.source))
            });
            if let Some((_, because)) = expected {
                spans.push(Span::styled(" STOPPED ", theme.dim));
                spans.push(Span::styled(format!("as planned ({because})"), theme.dim));
                return vec![Line::from(spans)];
            }
            spans.push(Span::styled(" UNREACHABLE ", theme.unreachable));
            spans.push(Span::styled(
                format!("tried {} ago", format_age(age)),
                theme.dim,
            ));
            let mut lines = vec![Line::from(spans)];
            let room = (width as usize).saturating_sub(4).max(20);
            let chars: Vec<char> = why.chars().collect();
            for chunk in chars.chunks(room) {
                lines.push(Line::styled(
                    format!("  {}", chunk.iter().collect::<String>()),
                    theme.danger,
                ));
            }
            return lines;
        }
        Outcome::Ok(_) => {
            if !what.is_empty() {
                spans.push(Span::styled(format!(" {what}"), theme.text));
            }
            if is_stale(age, interval) {
                spans.push(Span::styled(
                    format!(" · STALE {}", format_age(age)),
                    theme.stale,
                ));
            } else {
                spans.push(Span::styled(format!(" · {}", format_age(age)), theme.dim));
            }
        }
    }
    vec![Line::from(spans)]
}

fn opt(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("-")
}

fn lag_style(theme: &Theme, lag: Option<i64>) -> Style {
    match lag {
        Some(b) if b >= LAG_DANGER_BYTES => theme.danger,
        Some(b) if b >= LAG_WARN_BYTES => theme.warn,
        Some(0) => theme.ok,
        _ => theme.text,
    }
}

fn slot_style(theme: &Theme, retained: Option<i64>) -> Style {
    match retained {
        Some(b) if b > SLOT_DANGER_BYTES => theme.danger,
        Some(b) if b > SLOT_WARN_BYTES => theme.warn,
        _ => theme.text,
    }
}

fn paragraph_in<'a>(
    frame: &mut Frame,
    area: Rect,
    pane: Pane,
    model: &Model,
    lines: Vec<Line<'a>>,
    block: ratatui::widgets::Block<'a>,
) {
    let scroll = model.scroll[pane.index()];
    frame.render_widget(Paragraph::new(lines).block(block).scroll((scroll, 0)), area);
}

/// Retained WAL that fills the disk within this long raises the slot alarm.
pub const DISK_ALARM_WITHIN: Duration = Duration::from_secs(2 * 3600);

/// The slot watch lines of one node: per logical slot its lag, and the disk; per apply into
/// the node its progress or error; per subscription its error counters.
fn slot_watch_lines<'a>(watch: &SlotWatch, theme: &Theme, lines: &mut Vec<Line<'a>>) {
    for slot in &watch.slots {
        let lag = slot
            .lag_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "-".into());
        let seconds = slot
            .lag_seconds
            .map(|s| format!(" / {s:.1} s"))
            .unwrap_or_default();
        let mut detail = format!(
            "    {} {}: lag {lag}{seconds} · WAL {}",
            slot.name,
            slot.plugin.as_deref().unwrap_or("-"),
            slot.wal_status.as_deref().unwrap_or("-")
        );
        if let Some(disk) = &watch.disk {
            detail.push_str(&format!(
                " · disk {} free of {}",
                human_bytes(disk.free_bytes),
                human_bytes(disk.total_bytes)
            ));
        }
        match watch.full_in_secs {
            Some(full_in) => detail.push_str(&format!(" · full in {}", human_duration(full_in))),
            None if watch.disk.is_some() => detail.push_str(" · not growing"),
            None => {}
        }
        lines.push(Line::styled(detail, lag_style(theme, slot.lag_bytes)));
    }
    if let Some(why) = &watch.disk_error {
        lines.push(Line::styled(format!("    disk unread: {why}"), theme.warn));
    }
    for apply in &watch.applies {
        let lag = apply
            .lag_seconds
            .map(|s| format!(", lag {s:.1} s"))
            .unwrap_or_default();
        let mut spans = vec![Span::styled(
            format!(
                "  apply {} → {}: applied {}, {} changes{lag}",
                apply.origin,
                apply.database,
                apply.applied_lsn,
                thousands(apply.changes)
            ),
            theme.text,
        )];
        if apply.last_error.is_some() {
            spans.push(Span::styled(" STOPPED", theme.danger));
        }
        lines.push(Line::from(spans));
    }
    for sub in &watch.subscriptions {
        let errors = sub.apply_errors + sub.sync_errors;
        lines.push(Line::styled(
            format!(
                "  subscription {}{}: {} apply / {} sync errors",
                sub.name,
                if sub.enabled { "" } else { " (disabled)" },
                sub.apply_errors,
                sub.sync_errors
            ),
            if errors > 0 { theme.danger } else { theme.dim },
        ));
    }
}

pub fn render_replication(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let snapshot = &model.shown;
    let interval = model.session.intervals.fast;
    let mut lines: Vec<Line> = Vec::new();
    // Alarms first, so a filling disk is seen whatever the scroll.
    for alarm in snapshot_alarms(&snapshot.slots, DISK_ALARM_WITHIN) {
        lines.push(Line::styled(format!("⚠ {alarm}"), theme.danger));
    }
    for reading in &snapshot.replication {
        let Some(node) = reading.value() else {
            lines.extend(source_line(
                area.width,
                model,
                theme,
                reading,
                interval,
                String::new(),
            ));
            continue;
        };
        let role = match (&node.receiver, node.in_recovery) {
            (Some(_), _) | (None, true) => "standby".to_string(),
            (None, false) => format!("primary · WAL {}", opt(&node.current_wal_lsn)),
        };
        lines.extend(source_line(
            area.width, model, theme, reading, interval, role,
        ));
        for s in &node.senders {
            let key = format!("{}/{}", reading.source, s.application_name);
            let spark = model
                .lag_history
                .get(&key)
                .map(|h| sparkline(h, SPARKLINE_WIDTH))
                .unwrap_or_default();
            let lag_time = s
                .replay_lag_ms
                .map(|ms| format!("{ms:.0} ms"))
                .unwrap_or_else(|| "-".into());
            lines.push(Line::from(vec![
                Span::styled(
                    format!(
                        "  → {} {} {}",
                        s.application_name,
                        opt(&s.client_addr),
                        s.state
                    ),
                    theme.text,
                ),
                Span::styled(
                    format!(
                        "  lag {} / {lag_time} ",
                        s.lag_bytes.map(human_bytes).unwrap_or_else(|| "-".into())
                    ),
                    lag_style(theme, s.lag_bytes),
                ),
                Span::styled(spark, theme.sparkline),
            ]));
            lines.push(Line::styled(
                format!(
                    "    sent {}  write {}  flush {}  replay {}",
                    opt(&s.sent_lsn),
                    opt(&s.write_lsn),
                    opt(&s.flush_lsn),
                    opt(&s.replay_lsn)
                ),
                theme.dim,
            ));
        }
        if let Some(r) = &node.receiver {
            let status = r.status.as_deref().unwrap_or("not running");
            let from = match (&r.sender_host, r.sender_port) {
                (Some(host), Some(port)) => format!(" from {host}:{port}"),
                (Some(host), None) => format!(" from {host}"),
                _ => String::new(),
            };
            let status_style = if r.status.as_deref() == Some("streaming") {
                theme.ok
            } else {
                theme.warn
            };
            let mut spans = vec![
                Span::styled("  receiver ", theme.text),
                Span::styled(status.to_string(), status_style),
                Span::styled(from, theme.text),
            ];
            if r.replay_paused {
                spans.push(Span::styled(" REPLAY PAUSED", theme.warn));
            }
            lines.push(Line::from(spans));
            lines.push(Line::styled(
                format!(
                    "    received {}  replayed {}",
                    opt(&r.receive_lsn),
                    opt(&r.replay_lsn)
                ),
                theme.dim,
            ));
        }
        for slot in &node.slots {
            let retained = slot
                .retained_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "-".into());
            let mut spans = vec![
                Span::styled(
                    format!(
                        "  slot {} ({}, {})",
                        slot.slot_name,
                        slot.slot_type,
                        if slot.active { "active" } else { "inactive" }
                    ),
                    theme.text,
                ),
                Span::styled(
                    format!(" retains {retained}"),
                    slot_style(theme, slot.retained_bytes),
                ),
            ];
            if slot.retained_bytes.is_some_and(|b| b > SLOT_WARN_BYTES) {
                spans.push(Span::styled(
                    " ⚠ WAL piling up",
                    slot_style(theme, slot.retained_bytes),
                ));
            }
            lines.push(Line::from(spans));
        }
        for sub in &node.subscriptions {
            lines.push(Line::styled(
                format!(
                    "  subscription {} received {} latest end {}",
                    sub.name,
                    opt(&sub.received_lsn),
                    opt(&sub.latest_end_lsn)
                ),
                theme.text,
            ));
        }
        let watch = snapshot
            .slots
            .iter()
            .find(|w| w.source == reading.source)
            .and_then(|w| w.value());
        if let Some(watch) = watch {
            slot_watch_lines(watch, theme, &mut lines);
        }
    }
    let block = pane_block(
        Pane::Replication,
        model,
        theme,
        age_title(model, theme, &snapshot.replication, interval),
    );
    paragraph_in(frame, area, Pane::Replication, model, lines, block);
}

fn fit(text: &str, width: usize) -> Cow<'_, str> {
    if text.chars().count() <= width {
        Cow::Borrowed(text)
    } else {
        let cut: String = text.chars().take(width.saturating_sub(1)).collect();
        Cow::Owned(format!("{cut}…"))
    }
}

pub fn render_connections(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let snapshot = &model.shown;
    let interval = model.session.intervals.fast;
    let mut lines: Vec<Line> = Vec::new();
    for reading in &snapshot.connections {
        lines.extend(source_line(
            area.width,
            model,
            theme,
            reading,
            interval,
            "sessions".into(),
        ));
        let Some(groups) = reading.value() else {
            continue;
        };
        if groups.is_empty() {
            lines.push(Line::styled("  no sessions", theme.dim));
        } else {
            lines.push(Line::styled(
                format!(
                    "  {:<15} {:<22} {:<20} {:>5}",
                    "client", "database", "state", "n"
                ),
                theme.dim,
            ));
        }
        for g in groups {
            lines.push(Line::styled(
                format!(
                    "  {:<15} {:<22} {:<20} {:>5}",
                    fit(g.client_addr.as_deref().unwrap_or("local"), 15),
                    fit(opt(&g.database), 22),
                    fit(opt(&g.state), 20),
                    g.count
                ),
                theme.text,
            ));
        }
    }
    for reading in &snapshot.pgbouncer {
        lines.extend(source_line(
            area.width,
            model,
            theme,
            reading,
            interval,
            "pgbouncer".into(),
        ));
        let Some(bouncer) = reading.value() else {
            continue;
        };
        for db in bouncer.databases.iter().filter(|d| d.name != "pgbouncer") {
            let target = format!(
                "{}:{}/{}",
                opt(&db.host),
                db.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                db.database
            );
            let state = match (db.paused, db.disabled) {
                (true, _) => Span::styled(" PAUSED ", theme.paused),
                (false, true) => Span::styled(" DISABLED ", theme.warn),
                (false, false) => Span::styled(" live   ", theme.ok),
            };
            lines.push(Line::from(vec![
                Span::styled(format!("  alias {:<14} ", fit(&db.name, 14)), theme.text),
                state,
                Span::styled(
                    format!(" → {target}  conns {}", db.current_connections),
                    theme.text,
                ),
            ]));
        }
        for p in bouncer.pools.iter().filter(|p| p.database != "pgbouncer") {
            let waiting_style = if p.cl_waiting > 0 {
                theme.warn
            } else {
                theme.text
            };
            lines.push(Line::from(vec![
                Span::styled(
                    format!(
                        "  pool {:<14} active {:>3}",
                        fit(&format!("{}/{}", p.database, p.user), 14),
                        p.cl_active
                    ),
                    theme.text,
                ),
                Span::styled(format!("  waiting {:>3}", p.cl_waiting), waiting_style),
                Span::styled(
                    format!(
                        "  srv {}/{} idle  maxwait {} ms · {}",
                        p.sv_active, p.sv_idle, p.maxwait_ms, p.pool_mode
                    ),
                    theme.dim,
                ),
            ]));
        }
    }
    let mut ages = age_title(model, theme, &snapshot.connections, interval);
    if snapshot.connections.is_empty() {
        ages = age_title(model, theme, &snapshot.pgbouncer, interval);
    }
    let block = pane_block(Pane::Connections, model, theme, ages);
    paragraph_in(frame, area, Pane::Connections, model, lines, block);
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// One cell of a node's shard strip: the shards `[first, last]` folded into it.
fn strip_cell<'a>(
    theme: &Theme,
    dist: &crate::readings::types::PartitionDistribution,
    moving: Option<[u32; 2]>,
    first: u32,
    last: u32,
) -> Span<'a> {
    let owned = |s: u32| s >= dist.owns[0] && s <= dist.owns[1];
    let in_moving = |s: u32| moving.is_some_and(|[a, b]| s >= a && s <= b);
    let has_rows = |s: u32| {
        dist.tables
            .iter()
            .any(|t| t.per_shard.iter().any(|c| c.shard == s && c.rows > 0))
    };
    let shards = first..=last;
    if shards
        .clone()
        .any(|s| !owned(s) && has_rows(s) && !in_moving(s))
    {
        Span::styled("✗", theme.danger)
    } else if shards
        .clone()
        .any(|s| in_moving(s) && (owned(s) || has_rows(s)))
    {
        Span::styled("▚", theme.warn)
    } else if shards.clone().any(owned) {
        Span::styled("█", theme.ok)
    } else {
        Span::styled("·", theme.dim)
    }
}

/// The strip of the shards a node owns (every shard folded into `width` cells: owned `█`,
/// moving `▚`, rows it does not own `✗`) and a bar of its rows against the largest node.
fn shard_strip_lines<'a>(
    theme: &Theme,
    dist: &crate::readings::types::PartitionDistribution,
    shard_count: u32,
    moving: Option<[u32; 2]>,
    max_rows: i64,
    width: u16,
) -> Vec<Line<'a>> {
    let cells = (width as u32)
        .saturating_sub(12)
        .clamp(8, 128)
        .min(shard_count.max(1));
    let mut strip = vec![Span::styled("  shards ", theme.dim)];
    for cell in 0..cells {
        let first = cell * shard_count / cells;
        let last = ((cell + 1) * shard_count / cells)
            .saturating_sub(1)
            .max(first);
        strip.push(strip_cell(theme, dist, moving, first, last));
    }
    let rows: i64 = dist.tables.iter().map(|t| t.total).sum();
    let filled = if max_rows > 0 {
        ((rows.max(0) as f64 / max_rows as f64) * cells as f64).round() as usize
    } else {
        0
    };
    let bar = format!(
        "{}{}",
        "█".repeat(filled),
        "░".repeat((cells as usize).saturating_sub(filled))
    );
    vec![
        Line::from(strip),
        Line::from(vec![
            Span::styled("  rows   ", theme.dim),
            Span::styled(bar, theme.text),
            Span::styled(format!(" {}", thousands(rows)), theme.text),
        ]),
    ]
}

pub fn render_shards(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let snapshot = &model.shown;
    let interval = model.session.intervals.distribution;
    let baseline = model
        .runbook
        .as_ref()
        .map(|r| r.baseline.as_slice())
        .unwrap_or(&[]);
    let moving = model.runbook.as_ref().and_then(|r| r.moving_shards);
    let dists: Vec<&crate::readings::types::PartitionDistribution> = snapshot
        .distribution
        .iter()
        .filter_map(|r| r.value())
        .collect();
    let shard_count = dists
        .iter()
        .map(|d| d.owns[1] + 1)
        .chain(moving.map(|m| m[1] + 1))
        .max()
        .unwrap_or(1);
    let max_rows = dists
        .iter()
        .map(|d| d.tables.iter().map(|t| t.total).sum::<i64>())
        .max()
        .unwrap_or(0);
    let mut lines: Vec<Line> = Vec::new();
    for reading in &snapshot.distribution {
        let Some(dist) = reading.value() else {
            lines.extend(source_line(
                area.width,
                model,
                theme,
                reading,
                interval,
                String::new(),
            ));
            continue;
        };
        let what = format!(
            "on {} · {} · owns {}–{}",
            dist.node, dist.database, dist.owns[0], dist.owns[1]
        );
        lines.extend(source_line(
            area.width, model, theme, reading, interval, what,
        ));
        lines.extend(shard_strip_lines(
            theme,
            dist,
            shard_count,
            moving,
            max_rows,
            area.width,
        ));
        for t in &dist.tables {
            let mut spans = vec![Span::styled(
                format!(
                    "  {} exact {} · est {}",
                    fit(&t.table, 24),
                    thousands(t.total),
                    thousands(t.estimate)
                ),
                theme.text,
            )];
            if let Some(base) = baseline
                .iter()
                .find(|b| b.node == dist.node && b.database == dist.database && b.table == t.table)
            {
                let delta = t.total - base.total;
                spans.push(Span::styled(
                    format!(
                        " · baseline {} ({}{})",
                        thousands(base.total),
                        if delta >= 0 { "+" } else { "" },
                        thousands(delta)
                    ),
                    theme.dim,
                ));
            }
            lines.push(Line::from(spans));
            let outside: Vec<u32> = t
                .per_shard
                .iter()
                .filter(|s| s.rows > 0 && (s.shard < dist.owns[0] || s.shard > dist.owns[1]))
                .map(|s| s.shard)
                .collect();
            if t.misplaced > 0 {
                let range = match (outside.first(), outside.last()) {
                    (Some(a), Some(b)) => format!(" in {} shards ({a}–{b})", outside.len()),
                    _ => String::new(),
                };
                lines.push(Line::styled(
                    format!(
                        "    ⚠ {} misplaced rows{range}, not owned here",
                        thousands(t.misplaced)
                    ),
                    theme.danger,
                ));
            }
            if let (Some(first), Some(last)) = (t.per_shard.first(), t.per_shard.last()) {
                lines.push(Line::styled(
                    format!(
                        "    rows in {} shards, {}–{}",
                        t.per_shard.len(),
                        first.shard,
                        last.shard
                    ),
                    theme.dim,
                ));
            }
        }
    }
    citus_lines(area.width, model, theme, &mut lines);
    let block = pane_block(
        Pane::Shards,
        model,
        theme,
        age_title(model, theme, &snapshot.distribution, interval),
    );
    paragraph_in(frame, area, Pane::Shards, model, lines, block);
}

/// Width of the per-worker bars in the Citus section.
const CITUS_BAR: usize = 24;

/// The Citus clusters: a bar of rows per worker (exact counts where the slow reading has
/// them, estimates otherwise), so that skew is seen, not read; then shards and bytes per table.
fn citus_lines<'a>(width: u16, model: &Model, theme: &Theme, lines: &mut Vec<Line<'a>>) {
    let snapshot = &model.shown;
    for reading in &snapshot.citus {
        let Some(citus) = reading.value() else {
            lines.extend(source_line(
                width,
                model,
                theme,
                reading,
                model.session.intervals.fast,
                String::new(),
            ));
            continue;
        };
        let workers: Vec<&str> = citus
            .nodes
            .iter()
            .filter(|n| n.role == "worker")
            .map(|n| n.node.as_str())
            .collect();
        let what = if citus.installed {
            format!("Citus · {} · {} workers", citus.database, workers.len())
        } else {
            format!("Citus · {} · not bootstrapped", citus.database)
        };
        lines.extend(source_line(
            width,
            model,
            theme,
            reading,
            model.session.intervals.fast,
            what,
        ));
        let counts = snapshot
            .citus_counts
            .iter()
            .find(|c| c.source == reading.source)
            .and_then(|c| c.value());
        let rows_on = |node: &str| -> (i64, bool) {
            match counts {
                Some(counts) if counts.rows.iter().any(|r| r.node == node) => (
                    counts
                        .rows
                        .iter()
                        .filter(|r| r.node == node)
                        .map(|r| r.rows)
                        .sum(),
                    true,
                ),
                _ => (
                    citus
                        .placements
                        .iter()
                        .filter(|p| p.node == node && p.kind != "reference")
                        .map(|p| p.rows_estimate)
                        .sum(),
                    false,
                ),
            }
        };
        let per_worker: Vec<(&str, i64, bool)> = workers
            .iter()
            .map(|w| {
                let (rows, exact) = rows_on(w);
                (*w, rows, exact)
            })
            .collect();
        let most = per_worker
            .iter()
            .map(|(_, rows, _)| *rows)
            .max()
            .unwrap_or(0)
            .max(1);
        for (worker, rows, exact) in &per_worker {
            let filled = usize::try_from(rows.saturating_mul(CITUS_BAR as i64) / most).unwrap_or(0);
            let shards: i64 = citus
                .placements
                .iter()
                .filter(|p| &p.node == worker)
                .map(|p| p.shards)
                .sum();
            let bytes: i64 = citus
                .placements
                .iter()
                .filter(|p| &p.node == worker)
                .map(|p| p.bytes)
                .sum();
            let active = citus.nodes.iter().any(|n| n.node == *worker && n.active);
            lines.push(Line::from(vec![
                Span::styled(
                    format!("  {} ", fit(worker, 12)),
                    if active { theme.text } else { theme.danger },
                ),
                Span::styled("█".repeat(filled), theme.ok),
                Span::styled("░".repeat(CITUS_BAR - filled.min(CITUS_BAR)), theme.dim),
                Span::styled(
                    format!(
                        " {} rows{} · {shards} shards · {}",
                        thousands(*rows),
                        if *exact { "" } else { " (est)" },
                        human_bytes(bytes)
                    ),
                    theme.text,
                ),
            ]));
        }
        if let Some(counts) = counts {
            for link in &counts.unhealthy {
                lines.push(Line::styled(
                    format!("    ⚠ unhealthy: {link}"),
                    theme.danger,
                ));
            }
        }
        let mut tables: Vec<&str> = citus.placements.iter().map(|p| p.table.as_str()).collect();
        tables.dedup();
        for table in tables {
            let parts: Vec<String> = citus
                .placements
                .iter()
                .filter(|p| p.table == table)
                .map(|p| format!("{} {} sh", p.node, p.shards))
                .collect();
            let kind = citus
                .placements
                .iter()
                .find(|p| p.table == table)
                .map(|p| p.kind.as_str())
                .unwrap_or_default();
            lines.push(Line::styled(
                format!("    {} ({kind}): {}", fit(table, 20), parts.join(" · ")),
                theme.dim,
            ));
        }
    }
}

/// Masks secret values in a log message with the journal's redactor ([`crate::redact`]), so
/// what the screen hides is exactly what the journal hides.
pub fn redact_secrets(message: &str) -> Cow<'_, str> {
    crate::redact::redact_cow(message)
}

/// tui-logger formatter: `HH:MM:SS LEVEL target message`, secrets masked, wrapped to width.
struct RedactingFormatter {
    text: Style,
    dim: Style,
    warn: Style,
    danger: Style,
}

impl tui_logger::LogFormatter for RedactingFormatter {
    fn min_width(&self) -> u16 {
        20
    }
    fn format(&self, width: usize, evt: &tui_logger::ExtLogRecord) -> Vec<Line<'_>> {
        let level_style = match evt.level.as_str() {
            "ERROR" => self.danger,
            "WARN" => self.warn,
            _ => self.dim,
        };
        let prefix = format!(
            "{} {:<5} {} ",
            evt.timestamp.strftime("%H:%M:%S"),
            evt.level,
            evt.target()
        );
        let message = redact_secrets(evt.msg()).into_owned();
        let mut lines = Vec::new();
        let mut first = true;
        for text_line in message.lines() {
            let mut rest: Vec<char> = text_line.chars().collect();
            loop {
                let lead = if first { prefix.chars().count() } else { 2 };
                let room = width.saturating_sub(lead).max(1);
                let take = rest.len().min(room);
                let chunk: String = rest.drain(..take).collect();
                let head = if first {
                    Span::styled(prefix.clone(), level_style)
                } else {
                    Span::raw("  ")
                };
                lines.push(Line::from(vec![head, Span::styled(chunk, self.text)]));
                first = false;
                if rest.is_empty() {
                    break;
                }
            }
        }
        if lines.is_empty() {
            lines.push(Line::from(Span::styled(prefix, level_style)));
        }
        lines
    }
}

pub fn render_log(frame: &mut Frame, area: Rect, model: &Model, theme: &Theme) {
    let block = pane_block(
        Pane::Log,
        model,
        theme,
        vec![Span::styled(
            " commands & queries (cutover::cmd) ",
            theme.dim,
        )],
    );
    let widget = tui_logger::TuiLoggerWidget::default()
        .block(block)
        .style(theme.text)
        .formatter(Box::new(RedactingFormatter {
            text: theme.text,
            dim: theme.dim,
            warn: theme.warn,
            danger: theme.danger,
        }));
    frame.render_widget(widget, area);
}
