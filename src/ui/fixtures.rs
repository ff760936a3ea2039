//! Fixed readings and a runbook view for render tests, headless app tests and the render
//! benchmark: a mid-split lab with a lagging sender, slots past the warning thresholds, a stale
//! standby, an unreachable node, a paused pgbouncer alias and misplaced rows.

use super::model::{
    default_seen, BaselineRow, CommandView, Model, PreconditionView, RunbookView, Session,
    StepStatusView, StepView,
};
use crate::readings::poller::PollIntervals;
use crate::readings::types::*;
use chrono::{DateTime, TimeZone, Utc};
use std::time::{Duration, Instant};

/// The fixed "now" of every fixture: 2024-05-01 12:00:00 UTC.
pub fn fixed_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn reading<T>(source: &str, now: DateTime<Utc>, age_ms: i64, value: T) -> Reading<T> {
    Reading {
        source: source.to_string(),
        at: now - chrono::Duration::milliseconds(age_ms),
        took_ms: 1.5,
        outcome: Outcome::Ok(value),
    }
}

fn unreachable<T>(source: &str, now: DateTime<Utc>, why: &str) -> Reading<T> {
    Reading {
        source: source.to_string(),
        at: now - chrono::Duration::milliseconds(2000),
        took_ms: 3000.0,
        outcome: Outcome::Unreachable(why.to_string()),
    }
}

fn s(text: &str) -> Option<String> {
    Some(text.to_string())
}

/// Per-shard rows: every shard of `range` holds `rows`.
fn shards(range: std::ops::RangeInclusive<u32>, rows: i64) -> Vec<ShardCount> {
    range.map(|shard| ShardCount { shard, rows }).collect()
}

pub fn snapshot(now: DateTime<Utc>) -> Snapshot {
    let pg1 = NodeReplication {
        in_recovery: false,
        current_wal_lsn: s("0/5000060"),
        senders: vec![Sender {
            application_name: "pg2".into(),
            client_addr: s("127.0.0.1"),
            state: "streaming".into(),
            sent_lsn: s("0/5000060"),
            write_lsn: s("0/5000000"),
            flush_lsn: s("0/4FFF000"),
            replay_lsn: s("0/4F00000"),
            lag_bytes: Some(1_048_672),
            write_lag_ms: Some(12.0),
            flush_lag_ms: Some(40.0),
            replay_lag_ms: Some(850.0),
        }],
        slots: vec![
            SlotReading {
                slot_name: "pg2_slot".into(),
                slot_type: "physical".into(),
                active: true,
                restart_lsn: s("0/4F00000"),
                retained_bytes: Some(3 << 30),
            },
            SlotReading {
                slot_name: "old_logical".into(),
                slot_type: "logical".into(),
                active: false,
                restart_lsn: s("0/1000000"),
                retained_bytes: Some(9 << 30),
            },
        ],
        receiver: None,
        subscriptions: vec![Subscription {
            name: "sub_reporting".into(),
            pid: Some(4242),
            received_lsn: s("0/2A000D8"),
            latest_end_lsn: s("0/2A000D8"),
            last_msg_receipt_at: Some(now),
        }],
    };
    let pg2 = NodeReplication {
        in_recovery: true,
        current_wal_lsn: None,
        senders: vec![],
        slots: vec![],
        receiver: Some(Receiver {
            status: s("streaming"),
            sender_host: s("127.0.0.1"),
            sender_port: Some(5432),
            slot_name: s("pg2_slot"),
            flushed_lsn: s("0/4FFF000"),
            receive_lsn: s("0/5000000"),
            replay_lsn: s("0/4F00000"),
            last_replay_at: Some(now),
            replay_paused: false,
        }),
        subscriptions: vec![],
    };
    let group = |addr: Option<&str>, db: &str, state: &str, count: i64| ConnectionGroup {
        client_addr: addr.map(str::to_string),
        database: s(db),
        state: s(state),
        count,
        tool: false,
    };
    let pgbouncer = PgbouncerReading {
        pools: vec![
            PgbouncerPool {
                database: "proxy".into(),
                user: "app".into(),
                cl_active: 0,
                cl_waiting: 14,
                sv_active: 0,
                sv_idle: 2,
                maxwait_ms: 2300,
                pool_mode: "transaction".into(),
            },
            PgbouncerPool {
                database: "p1".into(),
                user: "app".into(),
                cl_active: 3,
                cl_waiting: 0,
                sv_active: 1,
                sv_idle: 4,
                maxwait_ms: 0,
                pool_mode: "transaction".into(),
            },
        ],
        databases: vec![
            PgbouncerDatabase {
                name: "proxy".into(),
                host: s("127.0.0.1"),
                port: Some(5432),
                database: "commcarehq_proxy".into(),
                paused: true,
                disabled: false,
                current_connections: 2,
            },
            PgbouncerDatabase {
                name: "p1".into(),
                host: s("127.0.0.1"),
                port: Some(5432),
                database: "commcarehq_p1".into(),
                paused: false,
                disabled: false,
                current_connections: 5,
            },
            PgbouncerDatabase {
                name: "pgbouncer".into(),
                host: None,
                port: Some(6432),
                database: "pgbouncer".into(),
                paused: false,
                disabled: false,
                current_connections: 1,
            },
        ],
    };
    let mut p1_shards = shards(0..=1023, 97);
    p1_shards[700].rows = 0;
    p1_shards.retain(|c| c.rows > 0);
    Snapshot {
        environment: "lab".into(),
        taken_at: now,
        replication: vec![
            reading("pg1", now, 400, pg1),
            reading("pg2", now, 5200, pg2),
            unreachable("pg3", now, "connection refused (127.0.0.1:5434)"),
        ],
        connections: vec![
            reading(
                "pg1",
                now,
                400,
                vec![
                    group(Some("127.0.0.1"), "commcarehq_p1", "active", 3),
                    group(Some("127.0.0.1"), "commcarehq_p1", "idle", 12),
                    group(None, "postgres", "active", 1),
                ],
            ),
            reading(
                "pg2",
                now,
                900,
                vec![group(Some("127.0.0.1"), "commcarehq_p1", "idle", 2)],
            ),
            unreachable("pg3", now, "connection refused (127.0.0.1:5434)"),
        ],
        pgbouncer: vec![reading("pgb1", now, 300, pgbouncer)],
        distribution: vec![
            reading(
                "p1",
                now,
                4000,
                PartitionDistribution {
                    node: "pg1".into(),
                    database: "commcarehq_p1".into(),
                    owns: [0, 511],
                    tables: vec![TableDistribution {
                        table: "form_data".into(),
                        total: p1_shards.iter().map(|c| c.rows).sum(),
                        estimate: 98_500,
                        misplaced: p1_shards
                            .iter()
                            .filter(|c| c.shard > 511)
                            .map(|c| c.rows)
                            .sum(),
                        per_shard: p1_shards,
                    }],
                },
            ),
            reading(
                "p2",
                now,
                4000,
                PartitionDistribution {
                    node: "pg2".into(),
                    database: "commcarehq_p2".into(),
                    owns: [512, 1023],
                    tables: vec![TableDistribution {
                        table: "form_data".into(),
                        total: 49_567,
                        estimate: 99_300,
                        misplaced: 0,
                        per_shard: shards(512..=1022, 97),
                    }],
                },
            ),
        ],
        citus: vec![],
        citus_counts: vec![],
        slots: vec![],
    }
}

fn step(id: &str, title: &str, status: StepStatusView) -> StepView {
    StepView {
        id: id.into(),
        title: title.into(),
        status,
        started_at: None,
        finished_at: None,
        commands: vec![],
        preconditions: vec![],
        destructive: false,
        point_of_no_return: None,
        confirm_word: None,
        needs_traffic_stopped: false,
        undo: None,
        pauses_traffic: false,
        resumes_traffic: false,
        verification: String::new(),
        binding: String::new(),
        items: Default::default(),
    }
}

fn timed(mut step: StepView, now: DateTime<Utc>, start_ago_ms: i64, took_ms: i64) -> StepView {
    let start = now - chrono::Duration::milliseconds(start_ago_ms);
    step.started_at = Some(start);
    step.finished_at = Some(start + chrono::Duration::milliseconds(took_ms));
    step
}

fn cmd(target: &str, text: &str) -> CommandView {
    CommandView {
        target: target.into(),
        text: text.into(),
    }
}

fn pre(description: &str, holds: Option<bool>, detail: &str) -> PreconditionView {
    PreconditionView {
        description: description.into(),
        holds,
        detail: detail.into(),
    }
}

/// The shard split, paused at the gate: steps 1–4 done, traffic paused 3.2 s ago, the gate's
/// precondition failing because the standby still lags.
pub fn runbook(now: DateTime<Utc>) -> RunbookView {
    use StepStatusView::*;
    let mut steps = vec![
        timed(step("preflight", "Preflight", Done), now, 120_000, 800),
        timed(
            step("basebackup", "Base backup and catch-up", Done),
            now,
            110_000,
            42_300,
        ),
        timed(
            step("baseline", "Record baseline distribution", Done),
            now,
            60_000,
            1_200,
        ),
        timed(
            step("stop-traffic", "Stop traffic (PAUSE proxy)", Done),
            now,
            3_300,
            90,
        ),
        step("gate", "Gate: standby caught up", Pending),
        step("promote", "Promote pg2", Pending),
        step(
            "rename",
            "Rename commcarehq_p1 → commcarehq_p2 on pg2",
            Pending,
        ),
        step("reroute", "Re-route shards 512–1023", Pending),
        step("resume", "Resume traffic", Pending),
        step("verify", "Verify routing and counts", Pending),
        step("delete", "Delete invalid data online", Pending),
        step("vacuum", "VACUUM ANALYZE", Pending),
        step("drop-slot", "Drop pg2_slot on pg1", Pending),
        step("validate", "Validate connections", Pending),
    ];
    steps[0].commands = vec![cmd("pg1", "SHOW wal_level;")];
    steps[3].commands = vec![cmd("pgbouncer pgb1", "PAUSE proxy;")];
    steps[3].undo = Some("RESUME proxy".into());
    steps[3].needs_traffic_stopped = true;
    steps[3].pauses_traffic = true;
    steps[8].resumes_traffic = true;
    let gate = &mut steps[4];
    gate.needs_traffic_stopped = true;
    gate.commands = vec![
        cmd("pg1", "SELECT pg_current_wal_lsn();"),
        cmd("pg2", "SELECT pg_last_wal_replay_lsn();"),
    ];
    gate.preconditions = vec![
        pre("traffic is paused", Some(true), "proxy paused 3.2s ago"),
        pre(
            "standby replay ≥ primary current WAL",
            Some(false),
            "replay 0/4F00000 < current 0/5000060",
        ),
    ];
    let promote = &mut steps[5];
    promote.destructive = true;
    promote.needs_traffic_stopped = true;
    promote.point_of_no_return = Some("a promoted standby cannot follow pg1 again".into());
    promote.confirm_word = Some("pg2".into());
    promote.commands = vec![cmd(
        "pg2",
        "SELECT pg_promote(wait => false);\n-- then poll pg_is_in_recovery() every 10 ms",
    )];
    promote.preconditions = vec![pre("pg2 is in recovery", Some(true), "in_recovery = t")];
    let rename = &mut steps[6];
    rename.destructive = true;
    rename.needs_traffic_stopped = true;
    rename.undo = Some("rename back to commcarehq_p1".into());
    rename.commands = vec![
        cmd("pg2", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'commcarehq_p1';"),
        cmd("pg2", "ALTER DATABASE \"commcarehq_p1\" RENAME TO \"commcarehq_p2\";"),
    ];
    let delete = &mut steps[10];
    delete.destructive = true;
    delete.point_of_no_return =
        Some("deleted rows are gone; the owner's copy was proven first".into());
    delete.confirm_word = Some("commcarehq_p1".into());
    RunbookView {
        runbook: "shard-split".into(),
        fingerprint: "3f9a1c0d5e7b2a4c8d6e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e".into(),
        steps,
        traffic_paused_since: Some(now - chrono::Duration::milliseconds(3_200)),
        pause_bound: Duration::from_secs(10),
        running: None,
        baseline: vec![BaselineRow {
            node: "pg1".into(),
            database: "commcarehq_p1".into(),
            table: "form_data".into(),
            total: 99_000,
        }],
        rolling_back: None,
        window_running: None,
        expected_stopped: vec![],
        moving_shards: Some([512, 1023]),
    }
}

pub fn session(operator: &str) -> Session {
    Session {
        environment: "lab".into(),
        operator: operator.into(),
        pair: false,
        readonly: false,
        intervals: PollIntervals::default(),
        seen: default_seen,
        tls_warnings: Vec::new(),
    }
}

/// A model on the fixed readings and runbook, at [`fixed_now`], with a short lag history.
pub fn model(instant: Instant) -> Model {
    let now = fixed_now();
    let mut model = Model::new(session("alice"), snapshot(now), Some(runbook(now)), instant);
    let history = model.lag_history.entry("pg1/pg2".into()).or_default();
    history.samples = [
        0u64, 0, 4_096, 65_536, 262_144, 1_048_672, 524_288, 1_048_672,
    ]
    .into_iter()
    .collect();
    model
}

/// [`snapshot`] plus a bootstrapped Citus cluster with a skew: citus2 holds twice citus1's
/// rows (exact counts for forms, estimates elsewhere) and one node-to-node link is unhealthy.
pub fn citus_snapshot(now: DateTime<Utc>) -> Snapshot {
    use crate::readings::types::{CitusCounts, CitusNode, CitusPlacement, CitusReading, CitusRows};
    let mut snapshot = snapshot(now);
    let node = |node: &str, role: &str| CitusNode {
        node: node.into(),
        role: role.into(),
        active: true,
    };
    let placement =
        |table: &str, kind: &str, node: &str, shards, bytes, rows_estimate| CitusPlacement {
            table: table.into(),
            kind: kind.into(),
            node: node.into(),
            shards,
            bytes,
            rows_estimate,
        };
    snapshot.citus = vec![reading(
        "citus",
        now,
        300,
        CitusReading {
            cluster: "citus".into(),
            database: "reporting".into(),
            installed: true,
            nodes: vec![
                node("citus0", "coordinator"),
                node("citus1", "worker"),
                node("citus2", "worker"),
            ],
            placements: vec![
                placement("forms", "distributed", "citus1", 16, 4_200_000, 33_000),
                placement("forms", "distributed", "citus2", 16, 8_400_000, 66_000),
                placement("domains", "reference", "citus1", 1, 8_192, 2),
                placement("domains", "reference", "citus2", 1, 8_192, 2),
            ],
        },
    )];
    snapshot.citus_counts = vec![reading(
        "citus",
        now,
        9_000,
        CitusCounts {
            cluster: "citus".into(),
            rows: vec![
                CitusRows {
                    table: "forms".into(),
                    node: "citus1".into(),
                    rows: 33_334,
                },
                CitusRows {
                    table: "forms".into(),
                    node: "citus2".into(),
                    rows: 66_666,
                },
            ],
            unhealthy: vec!["citus2 → citus1".into()],
        },
    )];
    snapshot
}

/// [`snapshot`] plus slot watch readings: on pg1 the move's slot holds 3.2 GB and the disk
/// fills in 41 minutes; pg2 is the target of a tool apply that stopped on a schema change and
/// of a native subscription with apply errors.
pub fn slots_snapshot(now: DateTime<Utc>) -> Snapshot {
    use crate::readings::slots::{LogicalSlot, SlotWatch, SubscriptionApply, ToolApply, WalDisk};
    let mut snapshot = snapshot(now);
    let free = 10_000_000_000;
    snapshot.slots = vec![
        reading(
            "pg1",
            now,
            400,
            SlotWatch {
                current_wal_lsn: s("2/9C000060"),
                slots: vec![LogicalSlot {
                    name: "cutover_move".into(),
                    plugin: s("wal2json"),
                    database: s("commcarehq_p1"),
                    active: false,
                    lag_bytes: Some(3_180_000_000),
                    retained_bytes: Some(3_200_000_000),
                    lag_seconds: None,
                    wal_status: s("extended"),
                }],
                subscriptions: vec![],
                applies: vec![],
                disk: Some(WalDisk {
                    path: "/var/lib/postgresql/15/main/pg_wal".into(),
                    free_bytes: free,
                    total_bytes: 50_000_000_000,
                }),
                disk_error: None,
                retained_growth_bytes_per_s: Some(free as f64 / 2460.0),
                full_in_secs: Some(2460.0),
            },
        ),
        reading(
            "pg2",
            now,
            900,
            SlotWatch {
                current_wal_lsn: s("0/3000148"),
                slots: vec![],
                subscriptions: vec![SubscriptionApply {
                    name: "move_back".into(),
                    enabled: true,
                    apply_errors: 3,
                    sync_errors: 0,
                    since_last_report_secs: Some(1.5),
                }],
                applies: vec![ToolApply {
                    database: "reporting".into(),
                    origin: "cutover_move".into(),
                    applied_lsn: "2/40001A8".into(),
                    changes: 1_234_567,
                    applied_at: now,
                    lag_seconds: Some(0.4),
                    last_error: s("a schema change on the source mid-stream: ALTER TABLE public.forms at LSN 2/4000200; the move stops here"),
                }],
                disk: None,
                disk_error: None,
                retained_growth_bytes_per_s: None,
                full_in_secs: None,
            },
        ),
    ];
    snapshot
}
