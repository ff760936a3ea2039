//! One-shot readings: the SQL behind every pane, run against one source at a time.
//! Pollers call these on an interval; gates call them right before an irreversible step.

use super::types::*;
use crate::inventory::{CitusCluster, Inventory, Node, Partition, Pgbouncer};
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
            "SELECT client_addr::text, datname::text, state, count(*), \
             coalesce(application_name = 'cutover' OR application_name LIKE 'cutover/%', false) AS tool \
             FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
             GROUP BY 1, 2, 3, 5 ORDER BY 2 NULLS FIRST, 1 NULLS FIRST, 3 NULLS FIRST, 5",
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
            tool: r.get(4),
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

/// The inventory's name of the node at `address:port`, or `address:port`.
fn node_name(inventory: &Inventory, address: &str, port: i32) -> String {
    inventory
        .nodes
        .iter()
        .find(|n| n.address == address && i32::from(n.port) == port)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| format!("{address}:{port}"))
}

async fn citus_installed(client: &Client, target: &str) -> Result<bool, PgError> {
    Ok(client
        .query_one(
            "SELECT count(*) > 0 FROM pg_extension WHERE extname = 'citus'",
            &[],
        )
        .await
        .map_err(query_err(target))?
        .get(0))
}

/// Shards and bytes of each Citus table per node.
const CITUS_PLACEMENTS_SQL: &str =
    "SELECT table_name::text, citus_table_type, nodename::text, nodeport::int, \
     count(*)::int8, COALESCE(sum(shard_size), 0)::int8 \
     FROM citus_shards GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 4";

/// The planner's row estimate of each placement of one table (`$1`), summed per node: one
/// command per placement, run by Citus in parallel.
const CITUS_ESTIMATES_SQL: &str =
    "SELECT nodename::text, nodeport::int, COALESCE(sum(result::float8), 0)::int8 \
     FROM run_command_on_placements($1::text::regclass, \
       $$SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = '%s'::regclass$$) \
     WHERE success GROUP BY 1, 2";

/// The fast Citus reading of `cluster`, through a connection to its coordinator's database.
pub async fn citus(
    client: &Client,
    target: &str,
    inventory: &Inventory,
    cluster: &CitusCluster,
) -> Result<CitusReading, PgError> {
    let err = query_err(target);
    let mut reading = CitusReading {
        cluster: cluster.name.clone(),
        database: cluster.database.clone(),
        installed: citus_installed(client, target).await?,
        nodes: Vec::new(),
        placements: Vec::new(),
    };
    if !reading.installed {
        return Ok(reading);
    }
    reading.nodes = client
        .query(
            "SELECT nodename::text, nodeport, groupid, isactive FROM pg_dist_node ORDER BY groupid, nodename, nodeport",
            &[],
        )
        .await
        .map_err(&err)?
        .iter()
        .map(|r| CitusNode {
            node: node_name(inventory, &r.get::<_, String>(0), r.get(1)),
            role: if r.get::<_, i32>(2) == 0 {
                "coordinator".into()
            } else {
                "worker".into()
            },
            active: r.get(3),
        })
        .collect();
    let mut estimates: BTreeMap<(String, String), i64> = BTreeMap::new();
    let rows = client
        .query(CITUS_PLACEMENTS_SQL, &[])
        .await
        .map_err(&err)?;
    let mut tables: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    tables.dedup();
    for table in tables {
        for r in client
            .query(CITUS_ESTIMATES_SQL, &[&table])
            .await
            .map_err(&err)?
        {
            let node = node_name(inventory, &r.get::<_, String>(0), r.get(1));
            estimates.insert((table.clone(), node), r.get(2));
        }
    }
    reading.placements = rows
        .iter()
        .map(|r| {
            let table: String = r.get(0);
            let node = node_name(inventory, &r.get::<_, String>(2), r.get(3));
            let rows_estimate = estimates
                .get(&(table.clone(), node.clone()))
                .copied()
                .unwrap_or(0);
            CitusPlacement {
                table,
                kind: r.get(1),
                node,
                shards: r.get(4),
                bytes: r.get(5),
                rows_estimate,
            }
        })
        .collect();
    Ok(reading)
}

/// The slow Citus reading: exact counts per table and node, and node-to-node health.
pub async fn citus_counts(
    client: &Client,
    target: &str,
    inventory: &Inventory,
    cluster: &CitusCluster,
) -> Result<CitusCounts, PgError> {
    let err = query_err(target);
    let mut counts = CitusCounts {
        cluster: cluster.name.clone(),
        rows: Vec::new(),
        unhealthy: Vec::new(),
    };
    if !citus_installed(client, target).await? {
        return Ok(counts);
    }
    let tables: Vec<String> = client
        .query("SELECT table_name::text FROM citus_tables ORDER BY 1", &[])
        .await
        .map_err(&err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in tables {
        let rows = client
            .query(
                "SELECT nodename::text, nodeport::int, COALESCE(sum(result::int8), 0)::int8 \
                 FROM run_command_on_placements($1::text::regclass, 'SELECT count(*) FROM %s') \
                 WHERE success GROUP BY 1, 2 ORDER BY 1, 2",
                &[&table],
            )
            .await
            .map_err(&err)?;
        for r in rows {
            counts.rows.push(CitusRows {
                table: table.clone(),
                node: node_name(inventory, &r.get::<_, String>(0), r.get(1)),
                rows: r.get(2),
            });
        }
    }
    counts.unhealthy = client
        .query(
            "SELECT from_nodename::text, from_nodeport, to_nodename::text, to_nodeport \
             FROM citus_check_cluster_node_health() WHERE result IS NOT TRUE ORDER BY 1, 2, 3, 4",
            &[],
        )
        .await
        .map_err(&err)?
        .iter()
        .map(|r| {
            format!(
                "{} → {}",
                node_name(inventory, &r.get::<_, String>(0), r.get(1)),
                node_name(inventory, &r.get::<_, String>(2), r.get(3))
            )
        })
        .collect();
    Ok(counts)
}

/// Where a Citus reading connects: the coordinator's copy of the cluster's database.
pub fn citus_endpoint(inventory: &Inventory, cluster: &CitusCluster) -> Result<Endpoint, PgError> {
    inventory
        .node(&cluster.coordinator)
        .map(|n| Endpoint::node(n, &cluster.database))
        .ok_or_else(|| PgError::Unexpected {
            target: cluster.name.clone(),
            detail: format!(
                "coordinator {} is not in the inventory",
                cluster.coordinator
            ),
        })
}

pub async fn read_citus(inventory: &Inventory, cluster: &CitusCluster) -> Reading<CitusReading> {
    let read = async {
        let endpoint = citus_endpoint(inventory, cluster)?;
        let client =
            pg::connect(&endpoint, SessionSettings::MONITOR.named("cutover/citus")).await?;
        citus(&client, &endpoint.label(), inventory, cluster).await
    };
    timed(&cluster.name, read).await
}

pub async fn read_citus_counts(
    inventory: &Inventory,
    cluster: &CitusCluster,
) -> Reading<CitusCounts> {
    let read = async {
        let endpoint = citus_endpoint(inventory, cluster)?;
        let client = pg::connect(
            &endpoint,
            SessionSettings::MONITOR.named("cutover/citus-counts"),
        )
        .await?;
        citus_counts(&client, &endpoint.label(), inventory, cluster).await
    };
    timed(&cluster.name, read).await
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
            SessionSettings::MONITOR.named("cutover/replication"),
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
            SessionSettings::MONITOR.named("cutover/connections"),
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
            SessionSettings::MONITOR.named("cutover/distribution"),
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
    let (replication, connections, pgbouncer, distribution, citus, citus_counts, slots) = tokio::join!(
        join_all(inventory.nodes.iter().map(read_replication)),
        join_all(inventory.nodes.iter().map(read_connections)),
        join_all(inventory.pgbouncers.iter().map(read_pgbouncer)),
        join_all(
            inventory
                .partitions
                .iter()
                .map(|p| read_distribution(inventory, p))
        ),
        join_all(inventory.citus.iter().map(|c| read_citus(inventory, c))),
        join_all(
            inventory
                .citus
                .iter()
                .map(|c| read_citus_counts(inventory, c))
        ),
        join_all(
            inventory
                .nodes
                .iter()
                .map(|n| super::slots::read_once(inventory, n))
        ),
    );
    Snapshot {
        environment: inventory.environment.clone(),
        taken_at,
        replication,
        connections,
        pgbouncer,
        distribution,
        citus,
        citus_counts,
        slots,
    }
}
