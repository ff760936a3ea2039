//! Reading types: the timestamped values pollers publish and `status --json` prints.
//!
//! JSON shape is a public contract (documented in README): field names here are stable.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One reading of one source: when it was taken, and either its value or why it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading<T> {
    /// Inventory name of the source (node, pgbouncer or partition).
    pub source: String,
    pub at: DateTime<Utc>,
    /// How long the query took, in milliseconds.
    pub took_ms: f64,
    #[serde(flatten)]
    pub outcome: Outcome<T>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome<T> {
    Ok(T),
    /// The source could not be read; the message says why (e.g. connection refused).
    Unreachable(String),
}

impl<T> Reading<T> {
    pub fn value(&self) -> Option<&T> {
        match &self.outcome {
            Outcome::Ok(v) => Some(v),
            Outcome::Unreachable(_) => None,
        }
    }
    pub fn error(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Ok(_) => None,
            Outcome::Unreachable(e) => Some(e),
        }
    }
}

/// Replication state of one node, whatever its role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReplication {
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` on a primary; `None` on a standby.
    pub current_wal_lsn: Option<String>,
    pub senders: Vec<Sender>,
    pub slots: Vec<SlotReading>,
    /// Present when the node is a standby.
    pub receiver: Option<Receiver>,
    pub subscriptions: Vec<Subscription>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sender {
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: String,
    pub sent_lsn: Option<String>,
    pub write_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    /// `pg_current_wal_lsn() - replay_lsn`.
    pub lag_bytes: Option<i64>,
    pub write_lag_ms: Option<f64>,
    pub flush_lag_ms: Option<f64>,
    pub replay_lag_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotReading {
    pub slot_name: String,
    pub slot_type: String,
    pub active: bool,
    pub restart_lsn: Option<String>,
    /// WAL the slot holds back: `pg_current_wal_lsn() - restart_lsn` (on a primary).
    pub retained_bytes: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receiver {
    /// `pg_stat_wal_receiver.status`, or `None` when no receiver process runs.
    pub status: Option<String>,
    pub sender_host: Option<String>,
    pub sender_port: Option<i32>,
    pub slot_name: Option<String>,
    pub flushed_lsn: Option<String>,
    /// `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<String>,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<String>,
    /// `pg_last_xact_replay_timestamp()`.
    pub last_replay_at: Option<DateTime<Utc>>,
    pub replay_paused: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub name: String,
    pub pid: Option<i32>,
    pub received_lsn: Option<String>,
    pub latest_end_lsn: Option<String>,
    pub last_msg_receipt_at: Option<DateTime<Utc>>,
}

/// `pg_stat_activity` grouped by client address × database × state × whose session it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionGroup {
    pub client_addr: Option<String>,
    pub database: Option<String>,
    pub state: Option<String>,
    pub count: i64,
    /// The tool's own sessions (`application_name` `cutover` or `cutover/...`), kept apart so
    /// judgements about the application ("pg1 only serves commcarehq_p1") leave them out.
    #[serde(default)]
    pub tool: bool,
}

/// The application's sessions only: every group that is not the tool's own.
pub fn application_groups(groups: &[ConnectionGroup]) -> impl Iterator<Item = &ConnectionGroup> {
    groups.iter().filter(|g| !g.tool)
}

/// Application sessions per database (tool sessions left out), for checks such as
/// "pg1 should only have connections to commcarehq_p1".
pub fn application_connections_by_database(
    groups: &[ConnectionGroup],
) -> std::collections::BTreeMap<String, i64> {
    let mut map = std::collections::BTreeMap::new();
    for g in application_groups(groups) {
        *map.entry(g.database.clone().unwrap_or_default())
            .or_insert(0) += g.count;
    }
    map
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgbouncerReading {
    pub pools: Vec<PgbouncerPool>,
    pub databases: Vec<PgbouncerDatabase>,
}

/// One row of `SHOW POOLS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgbouncerPool {
    pub database: String,
    pub user: String,
    pub cl_active: i64,
    pub cl_waiting: i64,
    pub sv_active: i64,
    pub sv_idle: i64,
    pub maxwait_ms: i64,
    pub pool_mode: String,
}

/// One row of `SHOW DATABASES`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgbouncerDatabase {
    pub name: String,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub database: String,
    pub paused: bool,
    pub disabled: bool,
    pub current_connections: i64,
}

/// Document distribution of one partition database on its node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionDistribution {
    pub node: String,
    pub database: String,
    /// Shard range this database owns according to the inventory.
    pub owns: [u32; 2],
    pub tables: Vec<TableDistribution>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDistribution {
    pub table: String,
    /// Exact `count(*)`.
    pub total: i64,
    /// Planner estimate (`pg_class.reltuples`), the fast view; stale until ANALYZE.
    pub estimate: i64,
    /// Exact rows per shard, only shards with rows, sorted by shard.
    pub per_shard: Vec<ShardCount>,
    /// Rows whose shard this database does not own.
    pub misplaced: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCount {
    pub shard: u32,
    pub rows: i64,
}

/// Everything `cutover status` prints: one snapshot of all readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub environment: String,
    pub taken_at: DateTime<Utc>,
    pub replication: Vec<Reading<NodeReplication>>,
    pub connections: Vec<Reading<Vec<ConnectionGroup>>>,
    pub pgbouncer: Vec<Reading<PgbouncerReading>>,
    pub distribution: Vec<Reading<PartitionDistribution>>,
    /// One per Citus cluster of the inventory, read through its coordinator (estimates).
    #[serde(default)]
    pub citus: Vec<Reading<CitusReading>>,
    /// Exact rows per table and worker, and node health: the slower reading.
    #[serde(default)]
    pub citus_counts: Vec<Reading<CitusCounts>>,
    /// Per node: logical slots' lag and retained WAL, the WAL disk, apply errors.
    #[serde(default)]
    pub slots: Vec<Reading<super::slots::SlotWatch>>,
}

/// A Citus cluster as its coordinator sees it, at 1 Hz: nodes, and per worker and table the
/// shards, bytes and estimated rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CitusReading {
    pub cluster: String,
    pub database: String,
    /// `false` until the citus extension exists in the database (not bootstrapped yet).
    pub installed: bool,
    pub nodes: Vec<CitusNode>,
    pub placements: Vec<CitusPlacement>,
}

/// One row of `pg_dist_node`, named as the inventory names it where it can be matched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CitusNode {
    /// The inventory's node name, or `address:port`.
    pub node: String,
    /// `coordinator` (group 0) or `worker`.
    pub role: String,
    pub active: bool,
}

/// Shards of one table on one node: `citus_shards` plus the planner's row estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CitusPlacement {
    pub table: String,
    /// `distributed`, `reference` or `local`.
    pub kind: String,
    pub node: String,
    pub shards: i64,
    pub bytes: i64,
    /// Sum of `pg_class.reltuples` over the shards: stale until ANALYZE.
    pub rows_estimate: i64,
}

/// The slow Citus reading: exact rows per table and node, and whether every node reaches
/// every node (`citus_check_cluster_node_health`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CitusCounts {
    pub cluster: String,
    pub rows: Vec<CitusRows>,
    /// Connections between nodes that failed the health check, as `from → to`.
    pub unhealthy: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CitusRows {
    pub table: String,
    pub node: String,
    /// Exact `count(*)` over the table's shards on the node.
    pub rows: i64,
}
