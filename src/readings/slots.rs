//! Slot watch readings: per node, each logical slot's lag (bytes and seconds) and retained WAL,
//! the WAL filesystem's free space and the time until the slots fill it at the current rate,
//! and apply errors (native subscriptions' `pg_stat_subscription_stats`, the tool's own apply
//! progress rows). Read by the poller (one task per node) and published like every reading;
//! [`alarms`] turns a reading into the cockpit's alarm lines (pure).

use super::types::Reading;
use crate::inventory::{Inventory, Node};
use crate::pg::{self, Endpoint, PgError, SessionSettings};
use crate::remote::{HostOptions, Hosts};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// One node's slot watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotWatch {
    /// `pg_current_wal_lsn()`; `None` on a standby.
    pub current_wal_lsn: Option<String>,
    pub slots: Vec<LogicalSlot>,
    /// Native subscriptions on this node (it is a target) and their error counters.
    pub subscriptions: Vec<SubscriptionApply>,
    /// The tool's apply progress rows found in this node's databases (it is a target).
    pub applies: Vec<ToolApply>,
    /// The filesystem of the node's `pg_wal`, when the node has a logical slot.
    pub disk: Option<WalDisk>,
    /// Why the disk could not be read (ssh, df), if it could not.
    #[serde(default)]
    pub disk_error: Option<String>,
    /// Growth of the WAL the logical slots retain, bytes per second (smoothed; ≤ 0: not growing).
    pub retained_growth_bytes_per_s: Option<f64>,
    /// Seconds until retained WAL fills the disk at that rate; `None` when it is not growing.
    pub full_in_secs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogicalSlot {
    pub name: String,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`.
    pub lag_bytes: Option<i64>,
    /// `pg_current_wal_lsn() - restart_lsn`: the WAL the slot keeps on disk.
    pub retained_bytes: Option<i64>,
    /// The walsender's `replay_lag` while a subscription streams from the slot (0 when idle).
    pub lag_seconds: Option<f64>,
    /// `pg_replication_slots.wal_status` (`reserved`, `extended`, `unreserved`, `lost`).
    pub wal_status: Option<String>,
}

/// A native subscription on a target node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionApply {
    pub name: String,
    pub enabled: bool,
    /// `pg_stat_subscription_stats.apply_error_count` / `sync_error_count`.
    pub apply_errors: i64,
    pub sync_errors: i64,
    /// Seconds since the publisher last reported its end position to the apply worker.
    pub since_last_report_secs: Option<f64>,
}

/// One `cutover_apply_progress` row: the tool's own apply into this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolApply {
    pub database: String,
    /// The slot (origin) it applies from.
    pub origin: String,
    pub applied_lsn: String,
    pub changes: i64,
    pub applied_at: DateTime<Utc>,
    /// Lag in seconds of the last applied transaction: its target commit minus its source commit.
    pub lag_seconds: Option<f64>,
    /// The error the apply stopped on, until a later batch commits.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalDisk {
    pub path: String,
    pub free_bytes: i64,
    pub total_bytes: i64,
}

/// How often the disk is read (over ssh) and the databases are looked through for progress rows.
const DISK_EVERY: Duration = Duration::from_secs(10);
const DATABASES_EVERY: Duration = Duration::from_secs(30);
/// Weight of the newest rate sample in the smoothed rate.
const RATE_WEIGHT: f64 = 0.3;

/// What the poller remembers between ticks: the previous retained total (for the rate), the
/// last disk reading, and connections to databases holding progress rows.
#[derive(Default)]
pub struct SlotMemory {
    previous: Option<(Instant, i64)>,
    rate: Option<f64>,
    disk: Option<(Instant, Result<WalDisk, String>)>,
    hosts: Option<Hosts>,
    databases: Option<Instant>,
    progress: HashMap<String, Client>,
}

const SLOTS_SQL: &str = "SELECT s.slot_name::text, s.plugin::text, s.database::text, s.active, \
 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint END, \
 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint END, \
 s.wal_status, CASE WHEN r.pid IS NULL THEN NULL ELSE coalesce(extract(epoch FROM r.replay_lag), 0)::float8 END \
 FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
 WHERE s.slot_type = 'logical' ORDER BY 1";

const SUBSCRIPTIONS_SQL: &str =
    "SELECT s.subname::text, s.subenabled, coalesce(st.apply_error_count, 0), \
 coalesce(st.sync_error_count, 0), extract(epoch FROM now() - ss.latest_end_time)::float8 \
 FROM pg_subscription s LEFT JOIN pg_stat_subscription_stats st ON st.subid = s.oid \
 LEFT JOIN pg_stat_subscription ss ON ss.subid = s.oid AND ss.relid IS NULL ORDER BY 1";

const PROGRESS_SQL: &str = "SELECT origin, applied_lsn::text, changes, applied_at, \
 extract(epoch FROM applied_at - source_committed_at)::float8, last_error \
 FROM public.cutover_apply_progress ORDER BY origin";

fn query_err(target: &str) -> impl Fn(tokio_postgres::Error) -> PgError + '_ {
    move |source| PgError::Query {
        target: target.to_string(),
        source,
    }
}

/// Read `node`'s slot watch over `client` (its maintenance database). `memory` carries the rate,
/// the disk (read over the node's host every 10 s while it has a logical slot) and the
/// progress-table connections between ticks.
pub async fn read(
    client: &Client,
    target: &str,
    inventory: &Inventory,
    node: &Node,
    memory: &mut SlotMemory,
) -> Result<SlotWatch, PgError> {
    let err = query_err(target);
    let head = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
            &[],
        )
        .await
        .map_err(&err)?;
    let slots: Vec<LogicalSlot> = client
        .query(SLOTS_SQL, &[])
        .await
        .map_err(&err)?
        .iter()
        .map(|r| LogicalSlot {
            name: r.get(0),
            plugin: r.get(1),
            database: r.get(2),
            active: r.get(3),
            lag_bytes: r.get(4),
            retained_bytes: r.get(5),
            wal_status: r.get(6),
            lag_seconds: r.get(7),
        })
        .collect();
    let subscriptions = if node.version >= 15 {
        client
            .query(SUBSCRIPTIONS_SQL, &[])
            .await
            .map_err(&err)?
            .iter()
            .map(|r| SubscriptionApply {
                name: r.get(0),
                enabled: r.get(1),
                apply_errors: r.get(2),
                sync_errors: r.get(3),
                since_last_report_secs: r.get(4),
            })
            .collect()
    } else {
        Vec::new()
    };
    let applies = read_progress(client, target, node, memory).await?;

    let retained: i64 = slots.iter().filter_map(|s| s.retained_bytes).sum();
    let now = Instant::now();
    if let Some((at, before)) = memory.previous {
        let seconds = now.duration_since(at).as_secs_f64();
        if seconds > 0.0 {
            let sample = (retained - before) as f64 / seconds;
            memory.rate = Some(match memory.rate {
                Some(rate) => rate + RATE_WEIGHT * (sample - rate),
                None => sample,
            });
        }
    }
    memory.previous = Some((now, retained));

    let (disk, disk_error) = if slots.is_empty() {
        (None, None)
    } else {
        let stale = memory
            .disk
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= DISK_EVERY);
        if stale {
            let reading = read_disk(inventory, node, memory).await;
            memory.disk = Some((Instant::now(), reading));
        }
        match memory.disk.as_ref().map(|(_, d)| d.clone()) {
            Some(Ok(disk)) => (Some(disk), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        }
    };
    let full_in_secs = match (&disk, memory.rate) {
        (Some(disk), Some(rate)) if rate > 0.0 => Some(disk.free_bytes as f64 / rate),
        _ => None,
    };
    Ok(SlotWatch {
        current_wal_lsn: head.get(0),
        slots,
        subscriptions,
        applies,
        disk,
        disk_error,
        retained_growth_bytes_per_s: memory.rate,
        full_in_secs,
    })
}

/// One reading of `node`'s slot watch on a fresh connection (no rate yet): for `status`.
pub async fn read_once(inventory: &Inventory, node: &Node) -> Reading<SlotWatch> {
    super::queries::timed(&node.name, async {
        let endpoint = Endpoint::maintenance(node);
        let client =
            pg::connect(&endpoint, SessionSettings::MONITOR.named("cutover/slots")).await?;
        let mut memory = SlotMemory::default();
        read(&client, &endpoint.label(), inventory, node, &mut memory).await
    })
    .await
}

/// Progress rows from every database of the node that has the progress table. The databases
/// are listed every 30 s; a connection is kept per database that has the table.
async fn read_progress(
    client: &Client,
    target: &str,
    node: &Node,
    memory: &mut SlotMemory,
) -> Result<Vec<ToolApply>, PgError> {
    let relist = memory
        .databases
        .is_none_or(|at| at.elapsed() >= DATABASES_EVERY);
    if relist {
        memory.databases = Some(Instant::now());
        let names: Vec<String> = client
            .query(
                "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
                &[],
            )
            .await
            .map_err(query_err(target))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        memory
            .progress
            .retain(|db, c| names.contains(db) && !c.is_closed());
        for db in names {
            if memory.progress.contains_key(&db) {
                continue;
            }
            let Ok(db_client) = pg::connect(
                &Endpoint::node(node, &db),
                SessionSettings::MONITOR.named("cutover/slots"),
            )
            .await
            else {
                continue;
            };
            let has_table = db_client
                .query_one(
                    "SELECT to_regclass('public.cutover_apply_progress') IS NOT NULL",
                    &[],
                )
                .await
                .is_ok_and(|r| r.get::<_, bool>(0));
            if has_table {
                memory.progress.insert(db, db_client);
            }
        }
    }
    let mut applies = Vec::new();
    let mut gone = Vec::new();
    for (db, db_client) in &memory.progress {
        match db_client.query(PROGRESS_SQL, &[]).await {
            Ok(rows) => applies.extend(rows.iter().map(|r| ToolApply {
                database: db.clone(),
                origin: r.get(0),
                applied_lsn: r.get(1),
                changes: r.get(2),
                applied_at: r.get(3),
                lag_seconds: r.get(4),
                last_error: r.get(5),
            })),
            Err(_) => gone.push(db.clone()),
        }
    }
    for db in gone {
        memory.progress.remove(&db);
    }
    applies.sort_by(|a, b| (&a.database, &a.origin).cmp(&(&b.database, &b.origin)));
    Ok(applies)
}

/// `df -Pk <data_dir>/pg_wal` on the node's host.
async fn read_disk(
    inventory: &Inventory,
    node: &Node,
    memory: &mut SlotMemory,
) -> Result<WalDisk, String> {
    let hosts = memory
        .hosts
        .get_or_insert_with(|| Hosts::new(inventory.hosts.clone(), HostOptions::default()));
    let path = format!("{}/pg_wal", node.data_dir);
    let command = crate::runbooks::table_copy::plan::df_command(&path);
    let out = hosts
        .run_checked(&node.host, &command, Duration::from_secs(5), &mut |_| {})
        .await
        .map_err(|e| e.to_string())?;
    parse_df(&out.stdout, &path)
}

/// The free and total bytes from `df -Pk` output (header, then one line).
pub fn parse_df(output: &str, path: &str) -> Result<WalDisk, String> {
    let fields: Vec<&str> = output
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let kb = |i: usize| fields.get(i).and_then(|v| v.parse::<i64>().ok());
    match (kb(1), kb(3)) {
        (Some(total), Some(free)) => Ok(WalDisk {
            path: path.to_string(),
            free_bytes: free * 1024,
            total_bytes: total * 1024,
        }),
        _ => Err(format!("unexpected df output: {}", output.trim())),
    }
}

/// `41 min`, `2 h 5 min`, `50 s`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=89 => format!("{s} s"),
        90..=5399 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The alarm lines for one node's reading: a slot whose retained WAL fills the disk within
/// `threshold` at the current rate, an inactive slot holding WAL, a lost slot, apply errors.
pub fn alarms(node: &str, watch: &SlotWatch, threshold: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let human = super::text::human_bytes;
    for slot in &watch.slots {
        let held = slot.retained_bytes.unwrap_or(0);
        if let Some(full_in) = watch.full_in_secs {
            if full_in <= threshold.as_secs_f64() {
                out.push(format!(
                    "slot {} holds {}; disk full in {} at the current rate",
                    slot.name,
                    human(held),
                    human_duration(full_in)
                ));
                continue;
            }
        }
        if slot.wal_status.as_deref() == Some("lost") {
            out.push(format!(
                "slot {} on {node} has lost WAL it needed: the stream cannot resume from it",
                slot.name
            ));
        }
    }
    for sub in &watch.subscriptions {
        if sub.apply_errors > 0 || sub.sync_errors > 0 {
            out.push(format!(
                "subscription {} on {node}: {} apply errors, {} sync errors (see the server log)",
                sub.name, sub.apply_errors, sub.sync_errors
            ));
        }
    }
    for apply in &watch.applies {
        if let Some(error) = &apply.last_error {
            out.push(format!(
                "apply from {} into {}/{} stopped: {error}",
                apply.origin, node, apply.database
            ));
        }
    }
    out
}

/// Every alarm of a snapshot's slot readings, node by node.
pub fn snapshot_alarms(readings: &[Reading<SlotWatch>], threshold: Duration) -> Vec<String> {
    readings
        .iter()
        .filter_map(|r| r.value().map(|w| alarms(&r.source, w, threshold)))
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(retained: i64, free: i64, full_in: Option<f64>) -> SlotWatch {
        SlotWatch {
            current_wal_lsn: Some("0/10".into()),
            slots: vec![LogicalSlot {
                name: "cutover_move".into(),
                plugin: Some("wal2json".into()),
                database: Some("shop".into()),
                active: false,
                lag_bytes: Some(retained),
                retained_bytes: Some(retained),
                lag_seconds: None,
                wal_status: Some("reserved".into()),
            }],
            subscriptions: vec![],
            applies: vec![],
            disk: Some(WalDisk {
                path: "/d/pg_wal".into(),
                free_bytes: free,
                total_bytes: free * 4,
            }),
            disk_error: None,
            retained_growth_bytes_per_s: full_in.map(|s| free as f64 / s),
            full_in_secs: full_in,
        }
    }

    #[test]
    fn a_slot_filling_the_disk_within_the_threshold_raises_the_alarm() {
        let w = watch(3_200_000_000, 10_000_000_000, Some(41.0 * 60.0));
        assert_eq!(
            alarms("pg1", &w, Duration::from_secs(3600)),
            vec!["slot cutover_move holds 3.2 GB; disk full in 41 min at the current rate"]
        );
        assert!(alarms("pg1", &w, Duration::from_secs(600)).is_empty());
        let still = watch(3_200_000_000, 10_000_000_000, None);
        assert!(alarms("pg1", &still, Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn apply_errors_are_alarms() {
        let mut w = watch(0, 1, None);
        w.applies.push(ToolApply {
            database: "reporting".into(),
            origin: "cutover_move".into(),
            applied_lsn: "0/1".into(),
            changes: 3,
            applied_at: Utc::now(),
            lag_seconds: Some(0.2),
            last_error: Some("a schema change on the source mid-stream: ALTER TABLE public.orders at LSN 0/5; the move stops here".into()),
        });
        w.subscriptions.push(SubscriptionApply {
            name: "move".into(),
            enabled: true,
            apply_errors: 2,
            sync_errors: 0,
            since_last_report_secs: None,
        });
        let a = alarms("citus0", &w, Duration::from_secs(60));
        assert_eq!(a.len(), 2);
        assert!(a[0].starts_with("subscription move on citus0: 2 apply errors"));
        assert!(a[1]
            .starts_with("apply from cutover_move into citus0/reporting stopped: a schema change"));
    }

    #[test]
    fn df_output_and_durations_read_as_expected() {
        let out = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n/dev/sda1         41152736 20000000  19039568      52% /\n";
        let d = parse_df(out, "/x").unwrap();
        assert_eq!(d.free_bytes, 19039568 * 1024);
        assert_eq!(d.total_bytes, 41152736 * 1024);
        assert!(parse_df("nonsense", "/x").is_err());
        assert_eq!(human_duration(50.0), "50 s");
        assert_eq!(human_duration(41.0 * 60.0), "41 min");
        assert_eq!(human_duration(7500.0), "2 h 5 min");
    }
}
