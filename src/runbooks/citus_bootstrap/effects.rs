//! Effects of the `citus-bootstrap` runbook over tokio-postgres and host commands. Every
//! action checks before it acts, and records what it is about to create before creating it,
//! so a re-run after a crash converges and an undo removes only what this run made.

use super::plan::{self, Bootstrap};
use super::CitusStep;
use crate::engine::{EngineState, Observation, PreconditionResult};
use crate::executor::context::{announce_recheck, verdict, ExecContext};
use crate::executor::{Actions, Sink, StepError};
use crate::inventory::{Distribution, Node};
use crate::pg;
use crate::plan::{Plan, Step};
use crate::runbooks::StepKind;
use crate::sql::{quote_literal, quote_qualified};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

const MEMORY_FILE: &str = "citus-bootstrap.json";
const HOST_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// What this run created or changed, by node or table name: an undo touches only these.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct BootstrapMemory {
    /// `shared_preload_libraries` before this run added citus, per node.
    pub preload_before: BTreeMap<String, String>,
    pub created_databases: BTreeSet<String>,
    pub created_extension: BTreeSet<String>,
    pub added_workers: BTreeSet<String>,
    pub created_tables: BTreeSet<String>,
    pub distributed: BTreeSet<String>,
}

pub struct CitusBootstrapActions {
    bootstrap: Bootstrap,
    ctx: ExecContext,
    memory: BootstrapMemory,
}

/// One node's facts, from [`plan::NODE_FACTS_SQL`].
struct NodeFacts {
    major: i32,
    citus_version: Option<String>,
    preload: String,
}

fn has_citus(preload: &str) -> bool {
    preload.split(',').any(|lib| lib.trim() == "citus")
}

impl CitusBootstrapActions {
    pub fn new(
        bootstrap: Bootstrap,
        run_dir: PathBuf,
        trust_on_first_use: bool,
    ) -> Result<Self, String> {
        let ctx = ExecContext::new(&bootstrap.inventory, run_dir, trust_on_first_use)?;
        let memory = ctx.load_memory(MEMORY_FILE).map_err(|e| e.to_string())?;
        Ok(CitusBootstrapActions {
            bootstrap,
            ctx,
            memory,
        })
    }

    pub fn memory(&self) -> &BootstrapMemory {
        &self.memory
    }

    fn remember(&self) -> Result<(), StepError> {
        self.ctx.save_memory(MEMORY_FILE, &self.memory)
    }

    async fn client(&self, node: &Node, db: &str) -> Result<Arc<Client>, StepError> {
        self.ctx.node_client(node, db).await
    }

    async fn database_exists(&self, node: &Node) -> Result<bool, StepError> {
        let client = self.client(node, &node.maintenance_db).await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&self.bootstrap.database()],
            )
            .await
            .map_err(|e| format!("{}: {}", node.name, pg::error_chain(&e)))?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    async fn facts(&self, node: &Node) -> Result<NodeFacts, StepError> {
        let client = self.client(node, &node.maintenance_db).await?;
        let row = client
            .query_one(plan::NODE_FACTS_SQL, &[])
            .await
            .map_err(|e| format!("{}: {}", node.name, pg::error_chain(&e)))?;
        Ok(NodeFacts {
            major: row.get(0),
            citus_version: row.get(1),
            preload: row.get(2),
        })
    }

    async fn user_tables(&self, node: &Node) -> Result<Vec<String>, StepError> {
        if !self.database_exists(node).await? {
            return Ok(Vec::new());
        }
        let client = self.client(node, self.bootstrap.database()).await?;
        let rows = client
            .query(
                "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'citus', 'columnar', 'columnar_internal') \
                 AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| format!("{}: {}", node.name, pg::error_chain(&e)))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn preflight(&self) -> Vec<PreconditionResult> {
        let b = &self.bootstrap;
        let mut facts = Vec::new();
        let mut unreachable = Vec::new();
        for node in b.nodes() {
            match self.facts(node).await {
                Ok(f) => facts.push((node.clone(), f)),
                Err(e) => unreachable.push(e.to_string()),
            }
        }
        let mut results = vec![verdict(
            "nodes-answer",
            if unreachable.is_empty() {
                Ok(format!("{} nodes answer", facts.len()))
            } else {
                Err(unreachable.join("; "))
            },
        )];
        results.push(verdict("same-version", same_version(&facts)));
        results.push(verdict("citus-preloaded", self.check_preload(&facts)));
        results.push(verdict(
            "coordinator-reaches-workers",
            self.check_reach().await,
        ));
        results.push(verdict("database-fresh", self.check_fresh().await));
        results.push(verdict(
            "tables-distributable",
            self.check_distributable().await,
        ));
        results
    }

    fn check_preload(&self, facts: &[(Node, NodeFacts)]) -> Result<String, String> {
        let missing: Vec<String> = facts
            .iter()
            .filter(|(_, f)| !has_citus(&f.preload))
            .map(|(n, f)| format!("{} (shared_preload_libraries = '{}')", n.name, f.preload))
            .collect();
        match (missing.is_empty(), self.bootstrap.params.allow_restart) {
            (true, _) => Ok("citus is preloaded on every node".into()),
            (false, true) => Ok(format!(
                "preload-citus will add citus and restart: {}",
                missing.join(", ")
            )),
            (false, false) => Err(format!(
                "citus is not in shared_preload_libraries on {}; add it and restart those nodes, or pass --allow-restart to let the run do it",
                missing.join(", ")
            )),
        }
    }

    async fn check_reach(&self) -> Result<String, String> {
        let b = &self.bootstrap;
        let sink = Sink::discard();
        for worker in &b.workers {
            self.ctx
                .host_run(
                    &b.coordinator.host,
                    &plan::reach_command(&b.coordinator, worker),
                    Duration::from_secs(30),
                    &sink,
                )
                .await
                .map_err(|e| {
                    format!(
                        "{}'s host cannot connect to {} at {}:{}: {e}",
                        b.coordinator.name, worker.name, worker.address, worker.port
                    )
                })?;
        }
        Ok(format!(
            "{} reaches {}",
            b.coordinator.name,
            b.cluster.workers.join(", ")
        ))
    }

    async fn check_fresh(&self) -> Result<String, String> {
        let b = &self.bootstrap;
        let db = b.database();
        let mut problems = Vec::new();
        for node in b.nodes() {
            let tables = self.user_tables(node).await.map_err(|e| e.to_string())?;
            let is_coordinator = node.name == b.coordinator.name;
            if is_coordinator && b.source.is_none() {
                let missing: Vec<&str> = b
                    .tables
                    .iter()
                    .map(|t| t.table.as_str())
                    .filter(|t| !tables.iter().any(|have| same_table(have, t)))
                    .collect();
                if !missing.is_empty() {
                    problems.push(format!(
                        "{}: `{db}` lacks {} (no --schema-from to create them)",
                        node.name,
                        missing.join(", ")
                    ));
                }
            } else if !tables.is_empty() {
                problems.push(format!(
                    "{}: `{db}` already holds {}",
                    node.name,
                    tables.join(", ")
                ));
            }
        }
        if problems.is_empty() {
            Ok(format!("`{db}` is ready on every node"))
        } else {
            Err(problems.join("; "))
        }
    }

    /// What Citus would refuse, per table, read from where the definitions come from.
    async fn check_distributable(&self) -> Result<String, String> {
        let b = &self.bootstrap;
        let (node, db) = match &b.source {
            Some((node, db)) => (node.clone(), db.clone()),
            None => (b.coordinator.clone(), b.database().to_string()),
        };
        if b.tables.is_empty() {
            return Ok("no tables listed".into());
        }
        let client = self.client(&node, &db).await.map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        for table in &b.tables {
            let rows = match client
                .query(&plan::constraints_sql(&table.table), &[])
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    problems.push(format!(
                        "{}: not readable on {}/{db}: {}",
                        table.table,
                        node.name,
                        pg::error_chain(&e)
                    ));
                    continue;
                }
            };
            for row in rows {
                let (kind, name, columns, referenced): (String, String, Vec<String>, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                if let Some(problem) =
                    distribution_problem(b, table, &kind, &name, &columns, &referenced)
                {
                    problems.push(problem);
                }
            }
        }
        if problems.is_empty() {
            Ok(format!(
                "{} tables can be distributed as listed",
                b.tables.len()
            ))
        } else {
            Err(problems.join("; "))
        }
    }

    async fn preload_citus(&mut self, sink: &Sink) -> Result<String, StepError> {
        let nodes: Vec<Node> = self.bootstrap.nodes().cloned().collect();
        let mut changed = Vec::new();
        for node in &nodes {
            let facts = self.facts(node).await?;
            if has_citus(&facts.preload) {
                continue;
            }
            if !self.bootstrap.params.allow_restart {
                return Err(format!(
                    "{}: citus is not preloaded and --allow-restart was not given",
                    node.name
                )
                .into());
            }
            let before = self
                .memory
                .preload_before
                .entry(node.name.clone())
                .or_insert(facts.preload.clone())
                .clone();
            self.remember()?;
            let wanted = if before.trim().is_empty() {
                "citus".to_string()
            } else {
                format!("{before},citus")
            };
            self.set_preload_and_restart(node, &wanted, sink).await?;
            changed.push(node.name.clone());
        }
        Ok(if changed.is_empty() {
            "citus is preloaded on every node".into()
        } else {
            format!("citus preloaded and restarted: {}", changed.join(", "))
        })
    }

    async fn set_preload_and_restart(
        &self,
        node: &Node,
        value: &str,
        sink: &Sink,
    ) -> Result<(), StepError> {
        let sql = format!(
            "ALTER SYSTEM SET shared_preload_libraries = {}",
            quote_literal(value)
        );
        self.execute(node, &node.maintenance_db, &sql, sink).await?;
        self.ctx.forget_clients();
        for command in [&node.control.stop, &node.control.start] {
            self.ctx
                .host_run(&node.host, command, HOST_COMMAND_TIMEOUT, sink)
                .await?;
        }
        let now = self.facts(node).await?;
        if now.preload != value {
            return Err(format!(
                "{}: after the restart shared_preload_libraries is '{}', expected '{value}'",
                node.name, now.preload
            )
            .into());
        }
        Ok(())
    }

    async fn undo_preload(&mut self, sink: &Sink) -> Result<String, StepError> {
        let nodes: Vec<Node> = self.bootstrap.nodes().cloned().collect();
        let mut restored = Vec::new();
        for node in &nodes {
            let Some(before) = self.memory.preload_before.get(&node.name).cloned() else {
                continue;
            };
            if self.facts(node).await?.preload != before {
                self.set_preload_and_restart(node, &before, sink).await?;
            }
            self.memory.preload_before.remove(&node.name);
            self.remember()?;
            restored.push(node.name.clone());
        }
        Ok(if restored.is_empty() {
            "this run changed no node's preload".into()
        } else {
            format!(
                "shared_preload_libraries restored on {}",
                restored.join(", ")
            )
        })
    }

    async fn create_database(&mut self, sink: &Sink) -> Result<String, StepError> {
        let nodes: Vec<Node> = self.bootstrap.nodes().cloned().collect();
        let db = self.bootstrap.database().to_string();
        let mut created = Vec::new();
        for node in &nodes {
            if self.database_exists(node).await? {
                continue;
            }
            self.memory.created_databases.insert(node.name.clone());
            self.remember()?;
            self.execute(
                node,
                &node.maintenance_db,
                &plan::create_database_sql(&db),
                sink,
            )
            .await?;
            created.push(node.name.clone());
        }
        for node in &nodes {
            if !self.database_exists(node).await? {
                return Err(
                    format!("{}: `{db}` does not exist after CREATE DATABASE", node.name).into(),
                );
            }
        }
        Ok(format!(
            "`{db}` exists on every node (created on {})",
            listing(&created)
        ))
    }

    async fn undo_create_database(&mut self, sink: &Sink) -> Result<String, StepError> {
        let nodes: Vec<Node> = self.bootstrap.nodes().cloned().collect();
        let db = self.bootstrap.database().to_string();
        let mut dropped = Vec::new();
        for node in &nodes {
            if !self.memory.created_databases.contains(&node.name) {
                continue;
            }
            self.ctx.forget_clients();
            self.execute(
                node,
                &node.maintenance_db,
                &plan::drop_database_sql(&db),
                sink,
            )
            .await?;
            if self.database_exists(node).await? {
                return Err(
                    format!("{}: `{db}` still exists after DROP DATABASE", node.name).into(),
                );
            }
            self.memory.created_databases.remove(&node.name);
            self.remember()?;
            dropped.push(node.name.clone());
        }
        Ok(format!(
            "dropped `{db}` where this run created it: {}",
            listing(&dropped)
        ))
    }

    async fn citus_version(&self, node: &Node) -> Result<Option<String>, StepError> {
        let client = self.client(node, self.bootstrap.database()).await?;
        let row = client
            .query_opt(
                "SELECT extversion FROM pg_extension WHERE extname = 'citus'",
                &[],
            )
            .await
            .map_err(|e| format!("{}: {}", node.name, pg::error_chain(&e)))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn create_extension(&mut self, sink: &Sink) -> Result<String, StepError> {
        let nodes: Vec<Node> = self.bootstrap.nodes().cloned().collect();
        let mut versions = BTreeSet::new();
        for node in &nodes {
            if self.citus_version(node).await?.is_none() {
                self.memory.created_extension.insert(node.name.clone());
                self.remember()?;
                self.execute(
                    node,
                    self.bootstrap.database(),
                    plan::CREATE_EXTENSION_SQL,
                    sink,
                )
                .await?;
            }
            match self.citus_version(node).await? {
                Some(version) => versions.insert(version),
                None => {
                    return Err(format!(
                        "{}: citus is not installed after CREATE EXTENSION",
                        node.name
                    )
                    .into())
                }
            };
        }
        if versions.len() != 1 {
            return Err(format!("citus versions differ across nodes: {versions:?}").into());
        }
        Ok(format!(
            "citus {} on every node",
            versions.into_iter().next().unwrap_or_default()
        ))
    }

    async fn undo_create_extension(&mut self, sink: &Sink) -> Result<String, StepError> {
        let nodes: Vec<Node> = self.bootstrap.nodes().cloned().collect();
        let mut dropped = Vec::new();
        for node in nodes.iter().rev() {
            if !self.memory.created_extension.contains(&node.name) {
                continue;
            }
            if self.database_exists(node).await? && self.citus_version(node).await?.is_some() {
                self.execute(
                    node,
                    self.bootstrap.database(),
                    plan::DROP_EXTENSION_SQL,
                    sink,
                )
                .await?;
            }
            self.memory.created_extension.remove(&node.name);
            self.remember()?;
            dropped.push(node.name.clone());
        }
        Ok(format!(
            "dropped citus where this run created it: {}",
            listing(&dropped)
        ))
    }

    /// Send `sql` to `db` on `node`, journaled first as `node: sql`.
    async fn execute(
        &self,
        node: &Node,
        db: &str,
        sql: &str,
        sink: &Sink,
    ) -> Result<(), StepError> {
        sink.output(format!("{}: {sql}", node.name));
        let client = self.client(node, db).await?;
        pg::simple_execute(&client, &node.name, sql).await?;
        Ok(())
    }

    /// [`Self::execute`] on the coordinator's copy of the cluster's database.
    async fn on_coordinator(&self, sql: &str, sink: &Sink) -> Result<(), StepError> {
        let b = &self.bootstrap;
        self.execute(&b.coordinator, b.database(), sql, sink).await
    }

    async fn coordinator(&self) -> Result<Arc<Client>, StepError> {
        self.client(&self.bootstrap.coordinator, self.bootstrap.database())
            .await
    }

    /// `(nodename, nodeport, groupid, isactive)` of every row of pg_dist_node.
    async fn dist_nodes(&self) -> Result<Vec<(String, i32, i32, bool)>, StepError> {
        let rows = self
            .coordinator()
            .await?
            .query("SELECT nodename::text, nodeport, groupid, isactive FROM pg_dist_node ORDER BY groupid", &[])
            .await
            .map_err(|e| pg::error_chain(&e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    async fn set_coordinator(&self, sink: &Sink) -> Result<String, StepError> {
        let c = &self.bootstrap.coordinator;
        let sql = plan::set_coordinator_sql(c);
        self.on_coordinator(&sql, sink).await?;
        let nodes = self.dist_nodes().await?;
        if nodes.iter().any(|(name, port, group, _)| {
            *group == 0 && name == &c.address && *port == i32::from(c.port)
        }) {
            Ok(format!(
                "{} is the coordinator (group 0, {}:{})",
                c.name, c.address, c.port
            ))
        } else {
            Err(format!(
                "pg_dist_node has no coordinator row for {}:{}: {nodes:?}",
                c.address, c.port
            )
            .into())
        }
    }

    async fn add_workers(&mut self, sink: &Sink) -> Result<String, StepError> {
        let workers = self.bootstrap.workers.clone();
        for worker in &workers {
            let present = self
                .dist_nodes()
                .await?
                .iter()
                .any(|(name, port, group, _)| {
                    *group > 0 && name == &worker.address && *port == i32::from(worker.port)
                });
            if present {
                continue;
            }
            self.memory.added_workers.insert(worker.name.clone());
            self.remember()?;
            let sql = plan::add_node_sql(worker);
            self.on_coordinator(&sql, sink).await?;
        }
        let nodes = self.dist_nodes().await?;
        for worker in &workers {
            if !nodes.iter().any(|(name, port, group, active)| {
                *group > 0 && *active && name == &worker.address && *port == i32::from(worker.port)
            }) {
                return Err(format!("{} is not an active worker: {nodes:?}", worker.name).into());
            }
        }
        Ok(format!(
            "active workers: {}",
            self.bootstrap.cluster.workers.join(", ")
        ))
    }

    async fn undo_add_workers(&mut self, sink: &Sink) -> Result<String, StepError> {
        let workers = self.bootstrap.workers.clone();
        let mut removed = Vec::new();
        for worker in workers.iter().rev() {
            if !self.memory.added_workers.contains(&worker.name) {
                continue;
            }
            let present = self.dist_nodes().await?.iter().any(|(name, port, _, _)| {
                name == &worker.address && *port == i32::from(worker.port)
            });
            if present {
                let sql = plan::remove_node_sql(worker);
                self.on_coordinator(&sql, sink).await?;
            }
            self.memory.added_workers.remove(&worker.name);
            self.remember()?;
            removed.push(worker.name.clone());
        }
        Ok(format!(
            "removed the workers this run added: {}",
            listing(&removed)
        ))
    }

    async fn set_shard_count(&self, reset: bool, sink: &Sink) -> Result<String, StepError> {
        let b = &self.bootstrap;
        let sql = if reset {
            plan::reset_shard_count_sql(b.database())
        } else {
            plan::shard_count_sql(b.database(), b.cluster.shard_count)
        };
        self.execute(&b.coordinator, &b.coordinator.maintenance_db, &sql, sink)
            .await?;
        Ok(if reset {
            "citus.shard_count reset".to_string()
        } else {
            format!(
                "citus.shard_count = {} for `{}`",
                b.cluster.shard_count,
                b.database()
            )
        })
    }

    async fn verify_cluster(&self, sink: &Sink) -> Result<String, StepError> {
        let client = self.coordinator().await?;
        let health = client
            .query(plan::HEALTH_SQL, &[])
            .await
            .map_err(|e| pg::error_chain(&e))?;
        let failed: Vec<String> = health
            .iter()
            .filter(|r| !r.get::<_, Option<bool>>(4).unwrap_or(false))
            .map(|r| {
                format!(
                    "{}:{} → {}:{}",
                    r.get::<_, String>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, String>(2),
                    r.get::<_, i32>(3)
                )
            })
            .collect();
        if !failed.is_empty() {
            sink.gate(
                format!("unhealthy connections: {}", failed.join(", ")),
                false,
            );
            return Err(StepError::gate(format!(
                "citus_check_cluster_node_health: {} failed: {}",
                failed.len(),
                failed.join(", ")
            )));
        }
        let active: BTreeSet<(String, i32)> = client
            .query(plan::ACTIVE_WORKERS_SQL, &[])
            .await
            .map_err(|e| pg::error_chain(&e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected: BTreeSet<(String, i32)> = self
            .bootstrap
            .workers
            .iter()
            .map(|w| (w.address.clone(), i32::from(w.port)))
            .collect();
        if active != expected {
            return Err(StepError::gate(format!(
                "active workers {active:?}, the inventory lists {expected:?}"
            )));
        }
        let detail = format!(
            "{} health checks true; {} active workers as listed",
            health.len(),
            active.len()
        );
        sink.gate(detail.clone(), true);
        Ok(detail)
    }

    async fn table_exists(&self, table: &str) -> Result<bool, StepError> {
        let row = self
            .coordinator()
            .await?
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&quote_qualified(table)],
            )
            .await
            .map_err(|e| pg::error_chain(&e))?;
        Ok(row.get(0))
    }

    async fn create_tables(&mut self, sink: &Sink) -> Result<String, StepError> {
        let b = self.bootstrap.clone();
        let mut missing = Vec::new();
        for table in &b.tables {
            if !self.table_exists(&table.table).await? {
                missing.push(table.table.clone());
            }
        }
        if missing.is_empty() {
            return Ok(format!(
                "{} tables exist on {}",
                b.tables.len(),
                b.coordinator.name
            ));
        }
        let Some((source, source_db)) = &b.source else {
            return Err(format!(
                "{} missing on {} and no --schema-from",
                missing.join(", "),
                b.coordinator.name
            )
            .into());
        };
        for table in &missing {
            self.memory.created_tables.insert(table.clone());
        }
        self.remember()?;
        let names: Vec<&str> = missing.iter().map(String::as_str).collect();
        let command =
            plan::schema_copy_command(source, source_db, &b.coordinator, b.database(), &names);
        self.ctx
            .host_run(&source.host, &command, HOST_COMMAND_TIMEOUT, sink)
            .await?;
        for table in &missing {
            if !self.table_exists(table).await? {
                return Err(format!(
                    "{table} does not exist on {} after the schema copy",
                    b.coordinator.name
                )
                .into());
            }
        }
        Ok(format!(
            "created {} on {} from {}/{source_db}",
            missing.join(", "),
            b.coordinator.name,
            source.name
        ))
    }

    async fn undo_create_tables(&mut self, sink: &Sink) -> Result<String, StepError> {
        let created: Vec<String> = self.memory.created_tables.iter().cloned().collect();
        for table in created.iter().rev() {
            if self.database_ready().await? {
                let sql = format!("DROP TABLE IF EXISTS {}", quote_qualified(table));
                self.on_coordinator(&sql, sink).await?;
            }
            self.memory.created_tables.remove(table);
            self.remember()?;
        }
        Ok(format!(
            "dropped the tables this run created: {}",
            listing(&created)
        ))
    }

    /// Whether the coordinator's database exists (an undo after a half-made run may find none).
    async fn database_ready(&self) -> Result<bool, StepError> {
        self.database_exists(&self.bootstrap.coordinator).await
    }

    /// The Citus kind of `table` on the coordinator: `None` when it is not a Citus table.
    async fn citus_kind(&self, table: &str) -> Result<Option<String>, StepError> {
        let row = self
            .coordinator()
            .await?
            .query_opt(
                "SELECT citus_table_type FROM citus_tables WHERE table_name = $1::text::regclass",
                &[&quote_qualified(table)],
            )
            .await
            .map_err(|e| pg::error_chain(&e))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn distribute(&mut self, sink: &Sink) -> Result<String, StepError> {
        let tables = self.bootstrap.tables.clone();
        let mut done = Vec::new();
        for table in &tables {
            let Some(sql) = plan::distribute_sql(table) else {
                continue;
            };
            if self.citus_kind(&table.table).await?.is_none() {
                self.memory.distributed.insert(table.table.clone());
                self.remember()?;
                self.on_coordinator(&sql, sink)
                    .await
                    .map_err(|e| format!("{}: {}", table.table, e.detail()))?;
            }
            let kind = self.citus_kind(&table.table).await?.unwrap_or_default();
            let expected = match table.distribution {
                Distribution::Distributed => "distributed",
                Distribution::Reference => "reference",
                Distribution::Local => "local",
            };
            if kind != expected {
                return Err(format!(
                    "{} is a {kind} table, the inventory says {expected}",
                    table.table
                )
                .into());
            }
            done.push(format!("{} ({kind})", table.table));
        }
        Ok(if done.is_empty() {
            "no tables to distribute".into()
        } else {
            done.join(", ")
        })
    }

    async fn undo_distribute(&mut self, sink: &Sink) -> Result<String, StepError> {
        let distributed: Vec<String> = self
            .bootstrap
            .tables
            .iter()
            .rev()
            .map(|t| t.table.clone())
            .filter(|t| self.memory.distributed.contains(t))
            .collect();
        for table in &distributed {
            if self.database_ready().await? && self.citus_kind(table).await?.is_some() {
                let sql = plan::undistribute_sql(table);
                self.on_coordinator(&sql, sink)
                    .await
                    .map_err(|e| format!("{table}: {}", e.detail()))?;
            }
            self.memory.distributed.remove(table);
            self.remember()?;
        }
        Ok(format!("undistributed: {}", listing(&distributed)))
    }

    async fn verify_distribution(&self, sink: &Sink) -> Result<String, StepError> {
        let b = &self.bootstrap;
        let client = self.coordinator().await?;
        let shards = client
            .query(plan::SHARDS_PER_WORKER_SQL, &[])
            .await
            .map_err(|e| pg::error_chain(&e))?;
        let mut detail = Vec::new();
        for table in b
            .tables
            .iter()
            .filter(|t| t.distribution == Distribution::Distributed)
        {
            let qualified = quote_qualified(&table.table);
            let row = client
                .query_one(
                    "SELECT column_to_column_name(logicalrelid, partkey) FROM pg_dist_partition WHERE logicalrelid = $1::text::regclass",
                    &[&qualified],
                )
                .await
                .map_err(|e| format!("{}: {}", table.table, pg::error_chain(&e)))?;
            let column: String = row.get(0);
            if Some(column.as_str()) != table.column.as_deref() {
                return Err(StepError::gate(format!(
                    "{} is distributed by {column}, the inventory says {:?}",
                    table.table, table.column
                )));
            }
            let name = client
                .query_one("SELECT $1::text::regclass::text", &[&qualified])
                .await
                .map_err(|e| pg::error_chain(&e))?
                .get::<_, String>(0);
            for worker in &b.workers {
                let on_worker: i64 = shards
                    .iter()
                    .filter(|r| {
                        r.get::<_, String>(0) == name
                            && r.get::<_, String>(1) == worker.address
                            && r.get::<_, i32>(2) == i32::from(worker.port)
                    })
                    .map(|r| r.get::<_, i64>(3))
                    .sum();
                if on_worker == 0 {
                    return Err(StepError::gate(format!(
                        "{} has no shard on {}",
                        table.table, worker.name
                    )));
                }
                detail.push(format!(
                    "{} {}: {on_worker} shards",
                    table.table, worker.name
                ));
            }
        }
        let detail = if detail.is_empty() {
            "no distributed tables".to_string()
        } else {
            detail.join(", ")
        };
        sink.gate(detail.clone(), true);
        Ok(detail)
    }
}

/// Names as a list for a detail line, `none` when there are none.
fn listing(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Same table, whether named `forms` or `public.forms`.
fn same_table(have: &str, wanted: &str) -> bool {
    have == wanted || have.trim_start_matches("public.") == wanted.trim_start_matches("public.")
}

fn same_version(facts: &[(Node, NodeFacts)]) -> Result<String, String> {
    let majors: BTreeSet<i32> = facts.iter().map(|(_, f)| f.major).collect();
    let citus: BTreeSet<Option<&str>> = facts
        .iter()
        .map(|(_, f)| f.citus_version.as_deref())
        .collect();
    let listing = |what: &dyn Fn(&NodeFacts) -> String| {
        facts
            .iter()
            .map(|(n, f)| format!("{} {}", n.name, what(f)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if majors.len() > 1 {
        return Err(format!(
            "PostgreSQL majors differ: {}",
            listing(&|f| f.major.to_string())
        ));
    }
    if let Some((node, _)) = facts.iter().find(|(_, f)| f.citus_version.is_none()) {
        return Err(format!(
            "the citus extension is not available on {}",
            node.name
        ));
    }
    if citus.len() > 1 {
        return Err(format!(
            "Citus versions differ: {}",
            listing(&|f| f.citus_version.clone().unwrap_or_default())
        ));
    }
    Ok(format!(
        "PostgreSQL {} and Citus {} on every node",
        majors.iter().next().copied().unwrap_or_default(),
        citus.iter().next().copied().flatten().unwrap_or_default()
    ))
}

/// What Citus would refuse about one constraint or sequence of `table`, in words.
fn distribution_problem(
    b: &Bootstrap,
    table: &crate::inventory::CitusTable,
    kind: &str,
    name: &str,
    columns: &[String],
    referenced: &str,
) -> Option<String> {
    let column = table.column.as_deref()?;
    if table.distribution != Distribution::Distributed {
        return None;
    }
    match kind {
        "p" | "u" if !columns.iter().any(|c| c == column) => Some(format!(
            "{}: {} `{name}` on ({}) does not include the distribution column {column}; Citus refuses it",
            table.table,
            if kind == "p" { "primary key" } else { "unique constraint" },
            columns.join(", ")
        )),
        "f" => {
            let target = b.tables.iter().find(|t| same_table(referenced, &t.table));
            let colocated = target.is_some_and(|t| {
                t.distribution == Distribution::Reference || colocation_root(b, t) == colocation_root(b, table)
            });
            (!colocated).then(|| format!(
                "{}: foreign key `{name}` references {referenced}, which is neither a reference table nor co-located with it",
                table.table
            ))
        }
        "s" => Some(format!(
            "{}: column {name} takes an {} sequence; Citus starts worker sequences at groupid << 48, so only bigint is safe",
            table.table,
            columns.first().map(String::as_str).unwrap_or("int")
        )),
        _ => None,
    }
}

/// The table a distributed table's co-location chain starts from.
fn colocation_root<'a>(b: &'a Bootstrap, table: &'a crate::inventory::CitusTable) -> &'a str {
    let mut current = table;
    for _ in 0..b.tables.len() {
        match current
            .colocate_with
            .as_deref()
            .and_then(|with| b.tables.iter().find(|t| t.table == with))
        {
            Some(next) => current = next,
            None => break,
        }
    }
    &current.table
}

impl Actions for CitusBootstrapActions {
    async fn preconditions(&mut self, step: &Step) -> Vec<PreconditionResult> {
        match CitusStep::of(step) {
            Ok(CitusStep::Preflight) => self.preflight().await,
            _ => Vec::new(),
        }
    }

    async fn observations(&mut self, step: &Step) -> Vec<Observation> {
        vec![
            Observation::new("step", step.id.to_string()),
            Observation::new("cluster", self.bootstrap.cluster.name.clone()),
        ]
    }

    async fn action(
        &mut self,
        step: &Step,
        recheck: bool,
        sink: Sink,
    ) -> Result<String, StepError> {
        announce_recheck(step, recheck, &sink);
        if recheck {
            let nodes: Vec<Node> = self.bootstrap.nodes().cloned().collect();
            for node in &nodes {
                self.ctx.await_cut_off_statements(node, &sink).await?;
            }
        }
        match CitusStep::of(step)? {
            CitusStep::Preflight => Ok("every precondition held".into()),
            CitusStep::PreloadCitus => self.preload_citus(&sink).await,
            CitusStep::CreateDatabase => self.create_database(&sink).await,
            CitusStep::CreateExtension => self.create_extension(&sink).await,
            CitusStep::SetCoordinator => self.set_coordinator(&sink).await,
            CitusStep::AddWorkers => self.add_workers(&sink).await,
            CitusStep::ShardCount => self.set_shard_count(false, &sink).await,
            CitusStep::VerifyCluster => self.verify_cluster(&sink).await,
            CitusStep::CreateTables => self.create_tables(&sink).await,
            CitusStep::Distribute => self.distribute(&sink).await,
            CitusStep::VerifyDistribution => self.verify_distribution(&sink).await,
        }
    }

    async fn undo(&mut self, step: &Step, _recheck: bool, sink: Sink) -> Result<String, StepError> {
        match CitusStep::of(step)? {
            CitusStep::PreloadCitus => self.undo_preload(&sink).await,
            CitusStep::CreateDatabase => self.undo_create_database(&sink).await,
            CitusStep::CreateExtension => self.undo_create_extension(&sink).await,
            CitusStep::AddWorkers => self.undo_add_workers(&sink).await,
            CitusStep::ShardCount => self.set_shard_count(true, &sink).await,
            CitusStep::CreateTables => self.undo_create_tables(&sink).await,
            CitusStep::Distribute => self.undo_distribute(&sink).await,
            CitusStep::SetCoordinator => Ok("the coordinator's row goes with the extension".into()),
            CitusStep::Preflight | CitusStep::VerifyCluster | CitusStep::VerifyDistribution => {
                Ok("nothing to undo".into())
            }
        }
    }

    async fn force_resume(&mut self, _sink: Sink) -> Result<String, StepError> {
        Ok("citus-bootstrap never pauses traffic".into())
    }

    fn pause_bound(&self) -> Duration {
        plan::PAUSE_BOUND
    }

    fn resume_is_safe(&self, _plan: &Plan, _state: &EngineState) -> bool {
        true
    }
}
