//! Plain-text rendering of a [`Snapshot`] for `cutover status` (the cockpit renders its own panes).

use super::types::*;
use std::fmt::Write;

/// Bytes as a short human figure (`0 B`, `12.3 kB`, `4.0 MB`).
pub fn human_bytes(bytes: i64) -> String {
    let abs = bytes.unsigned_abs() as f64;
    let sign = if bytes < 0 { "-" } else { "" };
    match abs {
        a if a < 1000.0 => format!("{sign}{a} B"),
        a if a < 1e6 => format!("{sign}{:.1} kB", a / 1e3),
        a if a < 1e9 => format!("{sign}{:.1} MB", a / 1e6),
        a => format!("{sign}{:.1} GB", a / 1e9),
    }
}

fn opt(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("-")
}

fn header<T>(out: &mut String, reading: &Reading<T>) -> bool {
    let at = reading.at.format("%H:%M:%S%.3f");
    match reading.error() {
        Some(error) => {
            let _ = writeln!(out, "  {} @ {at}: UNREACHABLE: {error}", reading.source);
            false
        }
        None => {
            let _ = writeln!(
                out,
                "  {} @ {at} ({:.1} ms)",
                reading.source, reading.took_ms
            );
            true
        }
    }
}

pub fn render_snapshot(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} — snapshot at {}",
        snapshot.environment,
        snapshot.taken_at.to_rfc3339()
    );
    let _ = writeln!(out, "\nREPLICATION");
    for reading in &snapshot.replication {
        if !header(&mut out, reading) {
            continue;
        }
        let Some(node) = reading.value() else {
            continue;
        };
        match &node.receiver {
            None => {
                let _ = writeln!(
                    out,
                    "    primary, current WAL {}",
                    opt(&node.current_wal_lsn)
                );
            }
            Some(r) => {
                let _ = writeln!(
                    out,
                    "    standby, receiver {} received {} replayed {}{}",
                    opt(&r.status),
                    opt(&r.receive_lsn),
                    opt(&r.replay_lsn),
                    if r.replay_paused {
                        " (replay PAUSED)"
                    } else {
                        ""
                    }
                );
            }
        }
        for s in &node.senders {
            let _ = writeln!(
                out,
                "    sender {} {} {} sent {} replay {} lag {}",
                s.application_name,
                opt(&s.client_addr),
                s.state,
                opt(&s.sent_lsn),
                opt(&s.replay_lsn),
                s.lag_bytes.map(human_bytes).unwrap_or_else(|| "-".into())
            );
        }
        for slot in &node.slots {
            let _ = writeln!(
                out,
                "    slot {} ({}, {}) retains {}",
                slot.slot_name,
                slot.slot_type,
                if slot.active { "active" } else { "inactive" },
                slot.retained_bytes
                    .map(human_bytes)
                    .unwrap_or_else(|| "-".into())
            );
        }
        for sub in &node.subscriptions {
            let _ = writeln!(
                out,
                "    subscription {} received {}",
                sub.name,
                opt(&sub.received_lsn)
            );
        }
    }
    let _ = writeln!(out, "\nCONNECTIONS");
    for reading in &snapshot.connections {
        if !header(&mut out, reading) {
            continue;
        }
        for g in reading.value().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    {:<16} {:<24} {:<20} {}",
                opt(&g.client_addr),
                opt(&g.database),
                opt(&g.state),
                g.count
            );
        }
    }
    let _ = writeln!(out, "\nPGBOUNCER");
    for reading in &snapshot.pgbouncer {
        if !header(&mut out, reading) {
            continue;
        }
        let Some(b) = reading.value() else { continue };
        for db in b.databases.iter().filter(|d| d.name != "pgbouncer") {
            let _ = writeln!(
                out,
                "    {:<24} -> {}:{}/{}{}",
                db.name,
                opt(&db.host),
                db.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                db.database,
                if db.paused { "  PAUSED" } else { "" }
            );
        }
        for p in b.pools.iter().filter(|p| p.database != "pgbouncer") {
            let _ = writeln!(
                out,
                "    pool {}/{} active {} waiting {} server active {} idle {}",
                p.database, p.user, p.cl_active, p.cl_waiting, p.sv_active, p.sv_idle
            );
        }
    }
    let _ = writeln!(out, "\nDISTRIBUTION");
    for reading in &snapshot.distribution {
        if !header(&mut out, reading) {
            continue;
        }
        let Some(d) = reading.value() else { continue };
        for t in &d.tables {
            let _ = writeln!(
                out,
                "    {}/{} owns [{}, {}]: {} rows exact, ~{} estimated, {} shards with rows, {} misplaced",
                d.node,
                t.table,
                d.owns[0],
                d.owns[1],
                t.total,
                t.estimate,
                t.per_shard.len(),
                t.misplaced
            );
        }
    }
    let watched = snapshot.slots.iter().any(|r| {
        r.value().is_some_and(|w| {
            !w.slots.is_empty() || !w.applies.is_empty() || !w.subscriptions.is_empty()
        })
    });
    if watched {
        let _ = writeln!(out, "\nSLOTS");
        for alarm in super::slots::snapshot_alarms(&snapshot.slots, SLOT_ALARM_WITHIN) {
            let _ = writeln!(out, "  ALARM {alarm}");
        }
        for reading in &snapshot.slots {
            let Some(w) = reading.value() else { continue };
            for slot in &w.slots {
                let _ = writeln!(
                    out,
                    "  {} slot {} ({}): lag {}, retains {}{}",
                    reading.source,
                    slot.name,
                    if slot.active { "active" } else { "inactive" },
                    slot.lag_bytes
                        .map(human_bytes)
                        .unwrap_or_else(|| "-".into()),
                    slot.retained_bytes
                        .map(human_bytes)
                        .unwrap_or_else(|| "-".into()),
                    w.disk
                        .as_ref()
                        .map(|d| format!(", disk {} free", human_bytes(d.free_bytes)))
                        .unwrap_or_default()
                );
            }
            for a in &w.applies {
                let _ = writeln!(
                    out,
                    "  {} apply {} -> {}: applied {}, {} changes{}",
                    reading.source,
                    a.origin,
                    a.database,
                    a.applied_lsn,
                    a.changes,
                    if a.last_error.is_some() {
                        ", STOPPED"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    out
}

/// Retained WAL filling the disk within this long is an alarm in `status`.
const SLOT_ALARM_WITHIN: std::time::Duration = std::time::Duration::from_secs(2 * 3600);
