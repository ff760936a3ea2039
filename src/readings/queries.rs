//! One-shot readings: the SQL behind every pane, run against one source at a time.
//! Pollers call these on an interval; gates call them right before an irreversible step.

use super::types::*;
use crate::inventory::{Inventory, Node, Partition, Pgbouncer};
use crate::pg::{self, Endpoint, PgError, SessionSettings};
use crate::sql::quote_qualified;
use chrono::Utc;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;
use tokio_postgres::Client;

/// Time `read` and wrap its result as a [`Reading`] of `source`.
pub async fn timed<T, F>(source: &str, read: F) -> Reading<T>
where
    F: Future<Output = Result<T, PgError>>,
{
    let started = Instant::now();
    let at = Utc::now();
    let outcome = match read.await {
        Ok(value) => Outcome::Ok(value),
        Err(e) => Outcome::Unreachable(e.to_string()),
    };
    Reading {
        source: source.to_string(),
        at,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
        outcome,
    }
}

fn query_err(target: &str) -> impl Fn(tokio_postgres::Error) -> PgError + '_ {
    move |source| PgError::Query {
        target: target.to_string(),
        source,
    }
}

/// The WAL position of this node: current LSN on a primary, last received on a standby.
const HEAD_LSN: &str =
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END";

pub async fn replication(client: &Client, target: &str) -> Result<NodeReplication, PgError> {
    let err = query_err(target);
    let head = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
             CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
            &[],
        )
        .await
        .map_err(&err)?;
    let in_recovery: bool = head.get(0);
    let senders = client
        .query(
            &format!(
                "SELECT application_name, client_addr::text, state, sent_lsn::text, write_lsn::text, \
                 flush_lsn::text, replay_lsn::text, pg_wal_lsn_diff({HEAD_LSN}, replay_lsn)::bigint, \
                 (extract(epoch FROM write_lag) * 1000)::float8, (extract(epoch FROM flush_lag) * 1000)::float8, \
                 (extract(epoch FROM replay_lag) * 1000)::float8 \
                 FROM pg_stat_replication ORDER BY application_name, pid"
            ),
            &[],
        )
        .await
        .map_err(&err)?
        .iter()
        .map(|r| Sender {
            application_name: r.get(0),
            client_addr: r.get(1),
            state: r.get::<_, Option<String>>(2).unwrap_or_default(),
            sent_lsn: r.get(3),
            write_lsn: r.get(4),
            flush_lsn: r.get(5),
            replay_lsn: r.get(6),
            lag_bytes: r.get(7),
            write_lag_ms: r.get(8),
            flush_lag_ms: r.get(9),
            replay_lag_ms: r.get(10),
        })
        .collect();
    let slots = client
        .query(
            &format!(
                "SELECT slot_name::text, slot_type, active, restart_lsn::text, \
                 pg_wal_lsn_diff({HEAD_LSN}, restart_lsn)::bigint \
                 FROM pg_replication_slots ORDER BY slot_name"
            ),
            &[],
        )
        .await
        .map_err(&err)?
        .iter()
        .map(|r| SlotReading {
            slot_name: r.get(0),
            slot_type: r.get(1),
            active: r.get(2),
            restart_lsn: r.get(3),
            retained_bytes: r.get(4),
        })
        .collect();
    let receiver = if in_recovery {
        let positions = client
            .query_one(
                "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
                 pg_last_xact_replay_timestamp(), pg_is_wal_replay_paused()",
                &[],
            )
            .await
            .map_err(&err)?;
        let process = client
            .query_opt(
                "SELECT status, sender_host, sender_port, slot_name, flushed_lsn::text \
                 FROM pg_stat_wal_receiver",
                &[],
            )
            .await
            .map_err(&err)?;
        Some(Receiver {
            status: process.as_ref().map(|p| p.get(0)),
            sender_host: process.as_ref().and_then(|p| p.get(1)),
            sender_port: process.as_ref().and_then(|p| p.get(2)),
            slot_name: process.as_ref().and_then(|p| p.get(3)),
            flushed_lsn: process.as_ref().and_then(|p| p.get(4)),
            receive_lsn: positions.get(0),
            replay_lsn: positions.get(1),
            last_replay_at: positions.get(2),
            replay_paused: positions.get(3),
        })
    } else {
        None
    };
    let subscriptions = client
        .query(
            "SELECT subname::text, pid, received_lsn::text, latest_end_lsn::text, last_msg_receipt_time \
             FROM pg_stat_subscription ORDER BY subname",
            &[],
        )
        .await
        .map_err(&err)?
        .iter()
        .map(|r| Subscription {
            name: r.get(0),
            pid: r.get(1),
            received_lsn: r.get(2),
            latest_end_lsn: r.get(3),
            last_msg_receipt_at: r.get(4),
        })
        .collect();
    Ok(NodeReplication {
        in_recovery,
        current_wal_lsn: head.get(1),
        senders,
        slots,
        receiver,
        subscriptions,
    })
}

pub async fn connections(client: &Client, target: &str) -> Result<Vec<ConnectionGroup>, PgError> {
    let rows = client
        .query(
            "SELECT client_addr::text, datname::text, state, count(*) \
             FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
             GROUP BY 1, 2, 3 ORDER BY 2 NULLS FIRST, 1 NULLS FIRST, 3 NULLS FIRST",
            &[],
        )
        .await
        .map_err(query_err(target))?;
    Ok(rows
        .iter()
        .map(|r| ConnectionGroup {
            client_addr: r.get(0),
            database: r.get(1),
            state: r.get(2),
            count: r.get(3),
        })
        .collect())
}

fn int(row: &BTreeMap<String, Option<String>>, column: &str) -> i64 {
    row.get(column)
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn text(row: &BTreeMap<String, Option<String>>, column: &str) -> Option<String> {
    row.get(column).cloned().flatten()
}

/// `SHOW POOLS` and `SHOW DATABASES` on the admin console (simple protocol only).
pub async fn pgbouncer(client: &Client, target: &str) -> Result<PgbouncerReading, PgError> {
    let pools = pg::simple_rows(client, target, "SHOW POOLS")
        .await?
        .iter()
        .map(|r| PgbouncerPool {
            database: text(r, "database").unwrap_or_default(),
            user: text(r, "user").unwrap_or_default(),
            cl_active: int(r, "cl_active"),
            cl_waiting: int(r, "cl_waiting"),
            sv_active: int(r, "sv_active"),
            sv_idle: int(r, "sv_idle"),
            maxwait_ms: int(r, "maxwait") * 1000 + int(r, "maxwait_us") / 1000,
            pool_mode: text(r, "pool_mode").unwrap_or_default(),
        })
        .collect();
    let databases = pg::simple_rows(client, target, "SHOW DATABASES")
        .await?
        .iter()
        .map(|r| PgbouncerDatabase {
            name: text(r, "name").unwrap_or_default(),
            host: text(r, "host"),
            port: text(r, "port").and_then(|p| p.parse().ok()),
            database: text(r, "database").unwrap_or_default(),
            paused: int(r, "paused") != 0,
            disabled: int(r, "disabled") != 0,
            current_connections: int(r, "current_connections"),
        })
        .collect();
    Ok(PgbouncerReading { pools, databases })
}

/// Exact per-shard counts and the planner estimate of every sharded table in one partition.
pub async fn distribution(
    client: &Client,
    target: &str,
    inventory: &Inventory,
    partition: &Partition,
) -> Result<PartitionDistribution, PgError> {
    let err = query_err(target);
    let mask = inventory.shard_mask();
    let [first, last] = partition.shards;
    let mut tables = Vec::new();
    for table in &inventory.sharded_tables {
        let qualified = quote_qualified(&table.table);
        let per_shard: Vec<ShardCount> = client
            .query(
                &format!(
                    "SELECT ((({hash}) & {mask}))::int8 AS shard, count(*) FROM {qualified} GROUP BY 1 ORDER BY 1",
                    hash = table.hash
                ),
                &[],
            )
            .await
            .map_err(&err)?
            .iter()
            .map(|r| ShardCount {
                shard: u32::try_from(r.get::<_, i64>(0)).unwrap_or(u32::MAX),
                rows: r.get(1),
            })
            .collect();
        let estimate: i64 = client
            .query_one(
                "SELECT COALESCE((SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = to_regclass($1)), 0)",
                &[&qualified],
            )
            .await
            .map_err(&err)?
            .get(0);
        let total = per_shard.iter().map(|s| s.rows).sum();
        let misplaced = per_shard
            .iter()
            .filter(|s| s.shard < first || s.shard > last)
            .map(|s| s.rows)
            .sum();
        tables.push(TableDistribution {
            table: table.table.clone(),
            total,
            estimate,
            per_shard,
            misplaced,
        });
    }
    Ok(PartitionDistribution {
        node: partition.node.clone(),
        database: partition.dbname.clone(),
        owns: partition.shards,
        tables,
    })
}

async fn with_client<T, F, Fut>(
    endpoint: Endpoint,
    settings: SessionSettings,
    read: F,
) -> Result<T, PgError>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = Result<T, PgError>>,
{
    let client = pg::connect(&endpoint, settings).await?;
    read(client, endpoint.label()).await
}

pub async fn read_replication(node: &Node) -> Reading<NodeReplication> {
    timed(
        &node.name,
        with_client(
            Endpoint::maintenance(node),
            SessionSettings::MONITOR,
            |c, t| async move { replication(&c, &t).await },
        ),
    )
    .await
}

pub async fn read_connections(node: &Node) -> Reading<Vec<ConnectionGroup>> {
    timed(
        &node.name,
        with_client(
            Endpoint::maintenance(node),
            SessionSettings::MONITOR,
            |c, t| async move { connections(&c, &t).await },
        ),
    )
    .await
}

pub async fn read_pgbouncer(bouncer: &Pgbouncer) -> Reading<PgbouncerReading> {
    timed(
        &bouncer.name,
        with_client(
            Endpoint::pgbouncer_admin(bouncer),
            SessionSettings::PGBOUNCER,
            |c, t| async move { pgbouncer(&c, &t).await },
        ),
    )
    .await
}

pub async fn read_distribution(
    inventory: &Inventory,
    partition: &Partition,
) -> Reading<PartitionDistribution> {
    let read = async {
        let node = inventory
            .node(&partition.node)
            .ok_or_else(|| PgError::Unexpected {
                target: partition.name.clone(),
                detail: format!("node {} is not in the inventory", partition.node),
            })?;
        let client = pg::connect(
            &Endpoint::node(node, &partition.dbname),
            SessionSettings::MONITOR,
        )
        .await?;
        distribution(
            &client,
            &format!("{}/{}", node.name, partition.dbname),
            inventory,
            partition,
        )
        .await
    };
    timed(&partition.name, read).await
}

/// One snapshot of every reading, all sources read concurrently; an unreachable source is
/// reported with its error and does not hold up the others beyond its connect timeout.
pub async fn snapshot(inventory: &Inventory) -> Snapshot {
    use futures_util::future::join_all;
    let taken_at = Utc::now();
    let (replication, connections, pgbouncer, distribution) = tokio::join!(
        join_all(inventory.nodes.iter().map(read_replication)),
        join_all(inventory.nodes.iter().map(read_connections)),
        join_all(inventory.pgbouncers.iter().map(read_pgbouncer)),
        join_all(
            inventory
                .partitions
                .iter()
                .map(|p| read_distribution(inventory, p))
        ),
    );
    Snapshot {
        environment: inventory.environment.clone(),
        taken_at,
        replication,
        connections,
        pgbouncer,
        distribution,
    }
}
