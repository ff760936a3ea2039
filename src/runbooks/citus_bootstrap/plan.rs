//! The `citus-bootstrap` plan (seed 002): turn the nodes of an inventory's Citus cluster into a
//! healthy cluster, then create and distribute its tables as the inventory says.
//!
//! Pure: the SQL and commands here are the ones the effects send, so what a reviewer reads is
//! what runs.

use super::CitusStep;
use crate::inventory::{CitusCluster, CitusTable, Distribution, Inventory, Node};
use crate::plan::{ParamError, Plan, RenderedCommand, Step, StepFlags, Undo};
use crate::remote::shell_quote;
use crate::runbooks::{RunbookError, StepKind};
use crate::sql::{quote_ident, quote_literal, quote_qualified};
use std::collections::BTreeMap;

pub const RUNBOOK: &str = "citus-bootstrap";
/// A bootstrap never pauses application traffic; the bound only answers the engine's question.
pub const PAUSE_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// Operator-given parameters of a bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapParams {
    /// The inventory's Citus cluster.
    pub cluster: String,
    /// `NODE/DB` whose table definitions are copied to the coordinator; without it the
    /// coordinator's database must hold the tables already.
    pub schema_from: Option<(String, String)>,
    /// Let the run add `citus` to `shared_preload_libraries` and restart the nodes that lack it.
    pub allow_restart: bool,
}

impl BootstrapParams {
    pub fn from_map(params: &BTreeMap<String, String>) -> Result<BootstrapParams, ParamError> {
        let schema_from = match params.get("schema-from") {
            None => None,
            Some(value) => Some(
                value
                    .split_once('/')
                    .filter(|(node, db)| !node.is_empty() && !db.is_empty())
                    .map(|(node, db)| (node.to_string(), db.to_string()))
                    .ok_or_else(|| ParamError::Invalid {
                        name: "schema-from",
                        value: value.clone(),
                        reason: "expected NODE/DATABASE, e.g. pg1/commcarehq_p1".into(),
                    })?,
            ),
        };
        let allow_restart = match params.get("allow-restart").map(String::as_str) {
            None | Some("no" | "false") => false,
            Some("yes" | "true") => true,
            Some(other) => {
                return Err(ParamError::Invalid {
                    name: "allow-restart",
                    value: other.to_string(),
                    reason: "expected yes or no".into(),
                })
            }
        };
        Ok(BootstrapParams {
            cluster: crate::plan::required_param(params, "cluster")?,
            schema_from,
            allow_restart,
        })
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::from([("cluster".to_string(), self.cluster.clone())]);
        if let Some((node, db)) = &self.schema_from {
            map.insert("schema-from".into(), format!("{node}/{db}"));
        }
        if self.allow_restart {
            map.insert("allow-restart".into(), "yes".into());
        }
        map
    }
}

/// A bootstrap resolved against an inventory: every node it touches, and the tables in the
/// order they are distributed (reference tables, then the tables others co-locate with).
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub params: BootstrapParams,
    pub inventory: Inventory,
    pub cluster: CitusCluster,
    pub coordinator: Node,
    pub workers: Vec<Node>,
    pub source: Option<(Node, String)>,
    pub tables: Vec<CitusTable>,
}

impl Bootstrap {
    pub fn resolve(inventory: &Inventory, params: BootstrapParams) -> Result<Self, RunbookError> {
        let bad = |reason: String| RunbookError::Inventory {
            runbook: RUNBOOK,
            reason,
        };
        let cluster = inventory
            .citus_cluster(&params.cluster)
            .cloned()
            .ok_or_else(|| {
                let known: Vec<&str> = inventory.citus.iter().map(|c| c.name.as_str()).collect();
                bad(format!(
                    "no Citus cluster `{}` (the inventory has: {})",
                    params.cluster,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
        let node = |name: &str| {
            inventory
                .node(name)
                .cloned()
                .ok_or_else(|| bad(format!("node `{name}` is not in the inventory")))
        };
        let coordinator = node(&cluster.coordinator)?;
        let workers = cluster
            .workers
            .iter()
            .map(|w| node(w))
            .collect::<Result<Vec<_>, _>>()?;
        let source = match &params.schema_from {
            None => None,
            Some((name, db)) => Some((node(name)?, db.clone())),
        };
        let tables = distribution_order(&cluster.tables);
        Ok(Bootstrap {
            params,
            inventory: inventory.clone(),
            cluster,
            coordinator,
            workers,
            source,
            tables,
        })
    }

    /// Coordinator first, then the workers.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.coordinator).chain(&self.workers)
    }

    pub fn database(&self) -> &str {
        &self.cluster.database
    }

    pub fn plan(&self) -> Result<Plan, RunbookError> {
        Ok(Plan::new(
            &self.inventory,
            RUNBOOK,
            self.params.to_map(),
            self.steps(),
        )?)
    }

    fn steps(&self) -> Vec<Step> {
        let c = &self.coordinator.name;
        let db = self.database();
        let all: Vec<&str> = self.nodes().map(|n| n.name.as_str()).collect();
        let all = all.join(", ");
        let mut preflight = CitusStep::Preflight.step(format!(
            "Preflight: {all} can form Citus cluster `{}`",
            self.cluster.name
        ));
        for node in self.nodes() {
            preflight = preflight.command(RenderedCommand::sql(
                &node.name,
                &node.maintenance_db,
                NODE_FACTS_SQL,
            ));
        }
        for worker in &self.workers {
            preflight = preflight.command(RenderedCommand::shell(
                &self.coordinator.host,
                reach_command(&self.coordinator, worker),
            ));
        }
        let (schema_node, schema_db) = match &self.source {
            Some((node, db)) => (node.name.clone(), db.clone()),
            None => (c.clone(), db.to_string()),
        };
        for table in &self.tables {
            preflight = preflight.command(RenderedCommand::sql(
                &schema_node,
                &schema_db,
                constraints_sql(&table.table),
            ));
        }
        let preflight = preflight
            .precondition("nodes-answer", format!("{all} answer"))
            .precondition("same-version", "every node runs the same PostgreSQL major and offers the same Citus version")
            .precondition("citus-preloaded", if self.params.allow_restart {
                "`citus` is in shared_preload_libraries on every node, or the next step adds it and restarts the node (--allow-restart)".to_string()
            } else {
                "`citus` is in shared_preload_libraries on every node (--allow-restart lets the run add it and restart the node)".to_string()
            })
            .precondition("coordinator-reaches-workers", format!("{c}'s host connects to every worker as Citus will"))
            .precondition("database-fresh", match &self.source {
                Some(_) => format!("`{db}` does not exist yet or holds no table, on every node"),
                None => format!("`{db}` on {c} holds the tables to distribute; on the workers it does not exist yet or holds no table"),
            })
            .precondition("tables-distributable", "each distributed table's primary key and unique constraints include its distribution column; foreign keys point at reference tables or co-located tables; no int (32-bit) sequence feeds a distributed table")
            .verification("every precondition holds");

        let preload = CitusStep::PreloadCitus
            .step("Preload citus where it is missing (ALTER SYSTEM, restart)")
            .command(RenderedCommand::internal(
                "each node without citus in shared_preload_libraries",
                if self.params.allow_restart {
                    "ALTER SYSTEM SET shared_preload_libraries = '<current>,citus'; then the node's control stop and start"
                } else {
                    "nothing: without --allow-restart, preflight requires citus preloaded everywhere"
                },
            ))
            .verification("SHOW shared_preload_libraries lists citus on every node")
            .undo(Undo::Reversible {
                description: "set shared_preload_libraries back to what it was on the nodes this run changed, and restart them".into(),
                commands: vec![RenderedCommand::internal("each node this run changed", "ALTER SYSTEM SET shared_preload_libraries = '<before>'; control stop and start")],
            });

        let mut create_db =
            CitusStep::CreateDatabase.step(format!("Create database `{db}` on {all}"));
        for node in self.nodes() {
            create_db = create_db.command(RenderedCommand::sql(
                &node.name,
                &node.maintenance_db,
                create_database_sql(db),
            ));
        }
        let create_db = create_db
            .verification(format!("`{db}` exists on every node"))
            .undo(Undo::Reversible {
                description: format!("drop `{db}` on the nodes where this run created it, ending its sessions (never one it found)"),
                commands: self.nodes().map(|n| RenderedCommand::sql(&n.name, &n.maintenance_db, drop_database_sql(db))).collect(),
            })
            .flags(StepFlags::default());

        let mut extension =
            CitusStep::CreateExtension.step(format!("CREATE EXTENSION citus in `{db}` on {all}"));
        for node in self.nodes() {
            extension =
                extension.command(RenderedCommand::sql(&node.name, db, CREATE_EXTENSION_SQL));
        }
        let extension = extension
            .verification("citus is installed at the same version on every node")
            .undo(Undo::Reversible {
                description: "drop the extension on the nodes where this run created it".into(),
                commands: self
                    .nodes()
                    .map(|n| RenderedCommand::sql(&n.name, db, DROP_EXTENSION_SQL))
                    .collect(),
            });

        let set_coordinator = CitusStep::SetCoordinator
            .step(format!("Tell Citus where the coordinator {c} is"))
            .command(RenderedCommand::sql(
                c,
                db,
                set_coordinator_sql(&self.coordinator),
            ))
            .verification(format!("pg_dist_node has {c} in group 0"))
            .undo(Undo::Reversible {
                description: "none of its own: the metadata goes with the extension".into(),
                commands: Vec::new(),
            });

        let mut add_workers = CitusStep::AddWorkers.step(format!(
            "Add the workers: {}",
            self.cluster.workers.join(", ")
        ));
        for worker in &self.workers {
            add_workers = add_workers.command(RenderedCommand::sql(c, db, add_node_sql(worker)));
        }
        let add_workers = add_workers
            .verification("every worker is an active primary in pg_dist_node")
            .undo(Undo::Reversible {
                description: "remove the workers this run added".into(),
                commands: self
                    .workers
                    .iter()
                    .map(|w| RenderedCommand::sql(c, db, remove_node_sql(w)))
                    .collect(),
            });

        let shard_count = CitusStep::ShardCount
            .step(format!(
                "citus.shard_count = {} for `{db}`",
                self.cluster.shard_count
            ))
            .command(RenderedCommand::sql(
                c,
                &self.coordinator.maintenance_db,
                shard_count_sql(db, self.cluster.shard_count),
            ))
            .verification("new sessions in the database see the shard count")
            .undo(Undo::Reversible {
                description: "reset the setting".into(),
                commands: vec![RenderedCommand::sql(
                    c,
                    &self.coordinator.maintenance_db,
                    reset_shard_count_sql(db),
                )],
            });

        let verify_cluster = CitusStep::VerifyCluster
            .step("Verify the cluster: every node reaches every node; the active workers are the inventory's")
            .command(RenderedCommand::sql(c, db, HEALTH_SQL))
            .command(RenderedCommand::sql(c, db, ACTIVE_WORKERS_SQL))
            .verification("all health checks true; active workers exactly as listed");

        let table_names: Vec<&str> = self.tables.iter().map(|t| t.table.as_str()).collect();
        let create_tables = CitusStep::CreateTables.step(match &self.source {
            Some((node, sdb)) => {
                format!("Create the tables on {c} from {}/{sdb}'s schema", node.name)
            }
            None => format!("The tables already exist on {c}"),
        });
        let create_tables = match &self.source {
            Some((node, sdb)) if !self.tables.is_empty() => create_tables
                .command(RenderedCommand::shell(
                    &node.host,
                    schema_copy_command(node, sdb, &self.coordinator, db, &table_names),
                ))
                .verification(format!("{} exist on {c}", table_names.join(", ")))
                .undo(Undo::Reversible {
                    description: "drop the tables this run created (only those)".into(),
                    commands: self
                        .tables
                        .iter()
                        .map(|t| {
                            RenderedCommand::sql(
                                c,
                                db,
                                format!("DROP TABLE IF EXISTS {}", quote_qualified(&t.table)),
                            )
                        })
                        .collect(),
                }),
            _ => create_tables
                .command(RenderedCommand::internal(
                    c,
                    format!(
                        "check that {} exist",
                        if table_names.is_empty() {
                            "no tables are listed; nothing".to_string()
                        } else {
                            table_names.join(", ")
                        }
                    ),
                ))
                .verification("every listed table exists on the coordinator"),
        };

        let mut distribute =
            CitusStep::Distribute.step("Distribute the tables as the inventory says");
        for table in &self.tables {
            if let Some(sql) = distribute_sql(table) {
                distribute = distribute.command(RenderedCommand::sql(c, db, sql));
            }
        }
        let distribute = distribute
            .verification("pg_dist_partition lists each table with its kind and column")
            .undo(Undo::Reversible {
                description: "undistribute the tables this run distributed (their rows come back to the coordinator)".into(),
                commands: self.tables.iter().filter(|t| t.distribution != Distribution::Local).map(|t| RenderedCommand::sql(c, db, undistribute_sql(&t.table))).collect(),
            });

        let verify_distribution = CitusStep::VerifyDistribution
            .step("Verify the distribution: kinds, columns, co-location, shards on every worker")
            .command(RenderedCommand::sql(c, db, CITUS_TABLES_SQL))
            .command(RenderedCommand::sql(c, db, SHARDS_PER_WORKER_SQL))
            .verification("each table as the inventory says; every distributed table has shards on every worker");

        vec![
            preflight,
            preload,
            create_db,
            extension,
            set_coordinator,
            add_workers,
            shard_count,
            verify_cluster,
            create_tables,
            distribute,
            verify_distribution,
        ]
    }
}

/// Reference tables first (others may point at them), then the distributed tables each in
/// the order that puts a `colocate_with` target before the tables that follow it.
pub fn distribution_order(tables: &[CitusTable]) -> Vec<CitusTable> {
    let mut ordered: Vec<CitusTable> = tables
        .iter()
        .filter(|t| t.distribution == Distribution::Reference)
        .cloned()
        .collect();
    let mut pending: Vec<&CitusTable> = tables
        .iter()
        .filter(|t| t.distribution == Distribution::Distributed)
        .collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|t| {
            let ready = t
                .colocate_with
                .as_ref()
                .is_none_or(|with| ordered.iter().any(|o| &o.table == with));
            if ready {
                ordered.push((*t).clone());
            }
            !ready
        });
        if pending.len() == before {
            // A cycle the inventory check does not rule out: keep the listed order.
            ordered.extend(pending.drain(..).cloned());
        }
    }
    ordered.extend(
        tables
            .iter()
            .filter(|t| t.distribution == Distribution::Local)
            .cloned(),
    );
    ordered
}

/// Version, Citus availability and preload of one node, read from its maintenance database.
pub const NODE_FACTS_SQL: &str = "SELECT current_setting('server_version_num')::int / 10000, \
     (SELECT default_version FROM pg_available_extensions WHERE name = 'citus'), \
     current_setting('shared_preload_libraries')";

pub const CREATE_EXTENSION_SQL: &str = "CREATE EXTENSION IF NOT EXISTS citus";
pub const DROP_EXTENSION_SQL: &str = "DROP EXTENSION IF EXISTS citus";

pub const HEALTH_SQL: &str =
    "SELECT from_nodename, from_nodeport, to_nodename, to_nodeport, result \
     FROM citus_check_cluster_node_health() ORDER BY 1, 2, 3, 4";

pub const ACTIVE_WORKERS_SQL: &str =
    "SELECT node_name::text, node_port::int FROM citus_get_active_worker_nodes() ORDER BY 1, 2";

pub const CITUS_TABLES_SQL: &str =
    "SELECT table_name::text, citus_table_type, distribution_column, \
     colocation_id, shard_count FROM citus_tables ORDER BY 1";

pub const SHARDS_PER_WORKER_SQL: &str =
    "SELECT table_name::text, nodename::text, nodeport::int, count(*)::int8 \
     FROM citus_shards GROUP BY 1, 2, 3 ORDER BY 1, 2, 3";

pub fn create_database_sql(db: &str) -> String {
    format!("CREATE DATABASE {}", quote_ident(db))
}

pub fn drop_database_sql(db: &str) -> String {
    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(db))
}

pub fn set_coordinator_sql(node: &Node) -> String {
    format!(
        "SELECT citus_set_coordinator_host({}, {})",
        quote_literal(&node.address),
        node.port
    )
}

pub fn add_node_sql(node: &Node) -> String {
    format!(
        "SELECT citus_add_node({}, {})",
        quote_literal(&node.address),
        node.port
    )
}

pub fn remove_node_sql(node: &Node) -> String {
    format!(
        "SELECT citus_remove_node({}, {})",
        quote_literal(&node.address),
        node.port
    )
}

pub fn shard_count_sql(db: &str, shard_count: u32) -> String {
    format!(
        "ALTER DATABASE {} SET citus.shard_count = {shard_count}",
        quote_ident(db)
    )
}

pub fn reset_shard_count_sql(db: &str) -> String {
    format!("ALTER DATABASE {} RESET citus.shard_count", quote_ident(db))
}

/// The statement that distributes `table`, or `None` for a table left local.
pub fn distribute_sql(table: &CitusTable) -> Option<String> {
    let name = quote_literal(&quote_qualified(&table.table));
    match table.distribution {
        Distribution::Distributed => Some(format!(
            "SELECT create_distributed_table({name}, {}, colocate_with => {})",
            quote_literal(table.column.as_deref().unwrap_or_default()),
            quote_literal(
                &table
                    .colocate_with
                    .as_deref()
                    .map(quote_qualified)
                    .unwrap_or_else(|| "default".to_string())
            )
        )),
        Distribution::Reference => Some(format!("SELECT create_reference_table({name})")),
        Distribution::Local => None,
    }
}

pub fn undistribute_sql(table: &str) -> String {
    format!(
        "SELECT undistribute_table({})",
        quote_literal(&quote_qualified(table))
    )
}

/// The unique constraints, foreign keys and int sequences of `table`, for the preflight.
pub fn constraints_sql(table: &str) -> String {
    let name = quote_literal(&quote_qualified(table));
    format!(
        "SELECT c.contype::text, c.conname::text, \
         ARRAY(SELECT a.attname::text FROM unnest(c.conkey) k JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k), \
         coalesce(c.confrelid::regclass::text, '') \
         FROM pg_constraint c WHERE c.conrelid = {name}::regclass AND c.contype IN ('p', 'u', 'f') \
         UNION ALL \
         SELECT 's', a.attname::text, ARRAY[format_type(a.atttypid, a.atttypmod)], '' \
         FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE a.attrelid = {name}::regclass AND pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%' \
         AND a.atttypid IN ('int2'::regtype, 'int4'::regtype) \
         ORDER BY 1, 2"
    )
}

/// A libpq connection string for `node`, every value escaped.
fn conninfo(node: &Node, dbname: &str) -> String {
    crate::pg::conninfo(&[
        ("host", &node.address),
        ("port", &node.port.to_string()),
        ("user", &node.user),
        ("dbname", dbname),
    ])
}

/// From the coordinator's host, connect to `worker` the way Citus will (TCP, its address).
pub fn reach_command(coordinator: &Node, worker: &Node) -> String {
    format!(
        "{} {} -Atc 'SELECT 1'",
        shell_quote(&format!("{}/psql", coordinator.bin_dir)),
        shell_quote(&conninfo(worker, &worker.maintenance_db))
    )
}

/// On the source's host, with the source's tools: the listed tables' definitions, restored
/// on the coordinator in one transaction that stops at the first error.
pub fn schema_copy_command(
    source: &Node,
    source_db: &str,
    coordinator: &Node,
    db: &str,
    tables: &[&str],
) -> String {
    let mut dump = format!(
        "{} {} --schema-only --no-owner --no-privileges",
        shell_quote(&format!("{}/pg_dump", source.bin_dir)),
        shell_quote(&conninfo(source, source_db))
    );
    for table in tables {
        dump.push_str(&format!(" -t {}", shell_quote(&quote_qualified(table))));
    }
    let restore = format!(
        "{} {} -v ON_ERROR_STOP=1 --single-transaction -q",
        shell_quote(&format!("{}/psql", source.bin_dir)),
        shell_quote(&conninfo(coordinator, db))
    );
    format!(
        "bash -o pipefail -c {}",
        shell_quote(&format!("{dump} | {restore}"))
    )
}
