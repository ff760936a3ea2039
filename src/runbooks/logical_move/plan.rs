//! The `logical-move` plan (seed 001): move a live database to another PostgreSQL cluster of
//! the same or a newer major version by logical replication, with a bounded write pause at
//! the cutover.
//!
//! Pure: the SQL and commands here are what the effects send, so what a reviewer reads is
//! what runs. The concrete table list is read from the source by the preflight and recorded
//! in the run (`move.json` in the run dir).

use super::MoveStep;
use crate::inventory::{CitusCluster, Distribution, Inventory, Node, Pgbouncer, PgbouncerAlias};
use crate::pgbouncer_ini::AliasTarget;
use crate::plan::{ParamError, Plan, RenderedCommand, Step, StepFlags, Undo};
use crate::quote::shell_quote;
use crate::runbooks::shard_split::plan::{pause_sql, resume_sql};
use crate::runbooks::{RunbookError, StepKind};
use crate::sql::{quote_ident, quote_literal, quote_qualified};
use sha2::Digest;
use std::collections::BTreeMap;
use std::time::Duration;

pub const RUNBOOK: &str = "logical-move";
pub const DEFAULT_PAUSE_BOUND: Duration = Duration::from_millis(5_000);
/// Added to every sequence past the larger of its source value and its column's maximum.
pub const DEFAULT_SEQUENCE_GAP: i64 = 1_000;
/// The seed's disk rule: 100 GB free or 20% of the disk, the larger.
pub const DEFAULT_MIN_FREE_GB: u64 = 100;
pub const DEFAULT_MIN_FREE_PERCENT: u64 = 20;
/// Slot lag under which the target counts as in sync before the pause.
pub const DEFAULT_SYNC_BYTES: u64 = 128 * 1024;
/// The table whose row proves the stream lands where queries see it.
pub const CANARY_TABLE: &str = "public.cutover_move_canary";

/// What is moved and how: the plan's parameters, covered by its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveParams {
    pub from: (String, String),
    pub to: (String, String),
    /// Only these tables (`schema.table` or `table`); empty: every ordinary table.
    pub tables: Vec<String>,
    /// Tables left out (e.g. those without a key or replica identity).
    pub exclude: Vec<String>,
    pub pause_bound: Duration,
    pub sequence_gap: i64,
    pub min_free_gb: u64,
    pub min_free_percent: u64,
    pub sync_bytes: u64,
    /// Tables copied at once in the initial copy. Not part of the plan.
    pub jobs: usize,
    /// A reverse stream (target → source) from the cutover on, with a held move-back step.
    pub reverse_stream: bool,
}

fn node_db(name: &'static str, value: &str) -> Result<(String, String), ParamError> {
    value
        .split_once('/')
        .filter(|(node, db)| !node.is_empty() && !db.is_empty())
        .map(|(node, db)| (node.to_string(), db.to_string()))
        .ok_or_else(|| ParamError::Invalid {
            name,
            value: value.to_string(),
            reason: "expected NODE/DATABASE, e.g. pg1/app".into(),
        })
}

fn number(
    params: &BTreeMap<String, String>,
    name: &'static str,
    default: u64,
) -> Result<u64, ParamError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v.parse::<u64>().map_err(|_| ParamError::Invalid {
            name,
            value: v.clone(),
            reason: "expected a whole number".into(),
        }),
    }
}

fn list(params: &BTreeMap<String, String>, name: &str) -> Vec<String> {
    params
        .get(name)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

impl MoveParams {
    pub fn from_map(params: &BTreeMap<String, String>) -> Result<MoveParams, ParamError> {
        let from = node_db("from", &crate::plan::required_param(params, "from")?)?;
        let to = node_db("to", &crate::plan::required_param(params, "to")?)?;
        let pause_ms = number(
            params,
            "pause-bound-ms",
            DEFAULT_PAUSE_BOUND.as_millis() as u64,
        )?;
        if pause_ms == 0 {
            return Err(ParamError::Invalid {
                name: "pause-bound-ms",
                value: "0".into(),
                reason: "the pause needs a positive bound".into(),
            });
        }
        let percent = number(params, "min-free-percent", DEFAULT_MIN_FREE_PERCENT)?;
        if percent > 100 {
            return Err(ParamError::Invalid {
                name: "min-free-percent",
                value: percent.to_string(),
                reason: "a percentage is at most 100".into(),
            });
        }
        Ok(MoveParams {
            from,
            to,
            tables: list(params, "tables"),
            exclude: list(params, "exclude"),
            pause_bound: Duration::from_millis(pause_ms),
            sequence_gap: number(params, "sequence-gap", DEFAULT_SEQUENCE_GAP as u64)? as i64,
            min_free_gb: number(params, "min-free-gb", DEFAULT_MIN_FREE_GB)?,
            min_free_percent: percent,
            sync_bytes: number(params, "sync-bytes", DEFAULT_SYNC_BYTES)?,
            jobs: number(params, "jobs", 2)?.max(1) as usize,
            reverse_stream: match params.get("reverse-stream").map(String::as_str) {
                None | Some("no" | "false") => false,
                Some("yes" | "true") => true,
                Some(other) => {
                    return Err(ParamError::Invalid {
                        name: "reverse-stream",
                        value: other.to_string(),
                        reason: "expected yes or no".into(),
                    })
                }
            },
        })
    }

    /// The parameters as the plan records them (`jobs` is run-time policy, not among them).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::from([
            (
                "from".to_string(),
                format!("{}/{}", self.from.0, self.from.1),
            ),
            ("to".to_string(), format!("{}/{}", self.to.0, self.to.1)),
            (
                "pause-bound-ms".to_string(),
                self.pause_bound.as_millis().to_string(),
            ),
        ]);
        if !self.tables.is_empty() {
            map.insert("tables".into(), self.tables.join(","));
        }
        if !self.exclude.is_empty() {
            map.insert("exclude".into(), self.exclude.join(","));
        }
        if self.sequence_gap != DEFAULT_SEQUENCE_GAP {
            map.insert("sequence-gap".into(), self.sequence_gap.to_string());
        }
        if self.min_free_gb != DEFAULT_MIN_FREE_GB {
            map.insert("min-free-gb".into(), self.min_free_gb.to_string());
        }
        if self.min_free_percent != DEFAULT_MIN_FREE_PERCENT {
            map.insert("min-free-percent".into(), self.min_free_percent.to_string());
        }
        if self.sync_bytes != DEFAULT_SYNC_BYTES {
            map.insert("sync-bytes".into(), self.sync_bytes.to_string());
        }
        if self.reverse_stream {
            map.insert("reverse-stream".into(), "yes".into());
        }
        map
    }

    /// Whether `qualified` (`schema.table`) is moved: named (or no names given) and not excluded.
    pub fn selects(&self, qualified: &str) -> bool {
        let named = |list: &[String]| {
            list.iter()
                .any(|t| crate::runbooks::table_copy::plan::names_match(t, qualified))
        };
        (self.tables.is_empty() || named(&self.tables)) && !named(&self.exclude)
    }

    /// Whether `qualified` is named in `--exclude`.
    pub fn excluded(&self, qualified: &str) -> bool {
        self.exclude
            .iter()
            .any(|t| crate::runbooks::table_copy::plan::names_match(t, qualified))
    }
}

/// The pgbouncer aliases that route to the moved database on one bouncer.
#[derive(Debug, Clone)]
pub struct Route {
    pub bouncer: Pgbouncer,
    pub aliases: Vec<PgbouncerAlias>,
}

/// A move resolved against an inventory.
#[derive(Debug, Clone)]
pub struct Move {
    pub params: MoveParams,
    pub inventory: Inventory,
    pub source: Node,
    pub target: Node,
    /// Aliases that route to the source database: repointed to the target.
    pub routes: Vec<Route>,
    /// Paused in this order (the application's entry alias first), resumed in reverse.
    pub paused: Vec<(Pgbouncer, String)>,
    /// The inventory after the switch: the routes name the target.
    pub inventory_after: Inventory,
    /// Slot, publication and subscription name (one name: `cutover_move_<hash>`).
    pub name: String,
    /// The Citus cluster whose coordinator database the target is: the tool applies the
    /// stream itself (wal2json), since a native subscription silently misses distributed tables.
    pub citus: Option<CitusCluster>,
}

impl Move {
    pub fn resolve(inventory: &Inventory, params: MoveParams) -> Result<Move, RunbookError> {
        let bad = |reason: String| RunbookError::Inventory {
            runbook: RUNBOOK,
            reason,
        };
        let node = |name: &str| {
            inventory
                .node(name)
                .cloned()
                .ok_or_else(|| bad(format!("node `{name}` is not in the inventory")))
        };
        let source = node(&params.from.0)?;
        let target = node(&params.to.0)?;
        if source.name == target.name {
            return Err(bad("--from and --to name the same node".into()));
        }
        let into_citus = inventory
            .citus
            .iter()
            .any(|c| c.coordinator == target.name && c.database == params.to.1);
        if params.reverse_stream && into_citus {
            return Err(bad(
                "--reverse-stream needs a plain PostgreSQL target: a Citus coordinator does not decode its distributed tables' changes into one stream".into(),
            ));
        }
        if target.version < source.version {
            return Err(bad(format!(
                "{} is PostgreSQL {} and {} is {}: the target must be the same or a newer major version",
                source.name, source.version, target.name, target.version
            )));
        }
        let citus = inventory
            .citus
            .iter()
            .find(|c| c.coordinator == target.name && c.database == params.to.1)
            .cloned();
        let from_db = params.from.1.clone();
        let routes: Vec<Route> = inventory
            .pgbouncers
            .iter()
            .filter_map(|b| {
                let aliases: Vec<PgbouncerAlias> = b
                    .aliases
                    .iter()
                    .filter(|a| a.node == source.name && a.dbname == from_db)
                    .cloned()
                    .collect();
                (!aliases.is_empty()).then(|| Route {
                    bouncer: b.clone(),
                    aliases,
                })
            })
            .collect();
        if routes.is_empty() {
            return Err(bad(format!(
                "no pgbouncer alias routes to {}/{from_db}: the move switches traffic by repointing one",
                source.name
            )));
        }
        let mut paused: Vec<(Pgbouncer, String)> = Vec::new();
        if let Some(entry) = inventory.proxy.as_ref().and_then(|p| p.alias.as_ref()) {
            if let Some(b) = inventory
                .pgbouncers
                .iter()
                .find(|b| b.aliases.iter().any(|a| &a.name == entry))
            {
                paused.push((b.clone(), entry.clone()));
            }
        }
        for route in &routes {
            for alias in &route.aliases {
                if !paused
                    .iter()
                    .any(|(b, a)| b.name == route.bouncer.name && a == &alias.name)
                {
                    paused.push((route.bouncer.clone(), alias.name.clone()));
                }
            }
        }
        let mut inventory_after = inventory.clone();
        for b in &mut inventory_after.pgbouncers {
            for a in &mut b.aliases {
                if a.node == source.name && a.dbname == from_db {
                    a.node = target.name.clone();
                    a.dbname = params.to.1.clone();
                }
            }
        }
        let digest = sha2::Sha256::digest(
            format!(
                "{}/{}>{}/{}",
                params.from.0, params.from.1, params.to.0, params.to.1
            )
            .as_bytes(),
        );
        let name = format!("cutover_move_{}", &hex::encode(digest)[..10]);
        Ok(Move {
            params,
            inventory: inventory.clone(),
            source,
            target,
            routes,
            paused,
            inventory_after,
            name,
            citus,
        })
    }

    /// The slot's output plugin: pgoutput for a native subscription, wal2json for the tool's
    /// own apply into Citus.
    pub fn plugin(&self) -> &'static str {
        if self.citus.is_some() {
            crate::effects::logical_apply::OUTPUT_PLUGIN
        } else {
            "pgoutput"
        }
    }

    /// `SELECT create_distributed_table(...)` / `create_reference_table(...)` for each moved
    /// table the inventory's citus section names, as `(table, statement)`.
    pub fn distribute_sql(&self, tables: &[String]) -> Vec<(String, String)> {
        let Some(cluster) = &self.citus else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for t in &cluster.tables {
            let Some(table) = tables
                .iter()
                .find(|q| crate::runbooks::table_copy::plan::names_match(&t.table, q))
            else {
                continue;
            };
            let sql = match (t.distribution, &t.column) {
                (Distribution::Distributed, Some(column)) => format!(
                    "SELECT create_distributed_table({}, {}{})",
                    quote_literal(&quote_qualified(table)),
                    quote_literal(column),
                    t.colocate_with
                        .as_ref()
                        .map(|c| format!(", colocate_with => {}", quote_literal(c)))
                        .unwrap_or_default()
                ),
                (Distribution::Reference, _) => format!(
                    "SELECT create_reference_table({})",
                    quote_literal(&quote_qualified(table))
                ),
                _ => continue,
            };
            out.push((table.clone(), sql));
        }
        out
    }

    pub fn source_db(&self) -> &str {
        &self.params.from.1
    }
    pub fn target_db(&self) -> &str {
        &self.params.to.1
    }

    pub fn new_alias_target(&self) -> AliasTarget {
        AliasTarget {
            host: self.target.address.clone(),
            port: self.target.port,
            dbname: self.target_db().to_string(),
        }
    }

    /// The disk the source must have free: the larger of the two rules, in kB.
    pub fn min_free_kb(&self, total_kb: u64) -> u64 {
        (self.params.min_free_gb * 1024 * 1024).max(total_kb / 100 * self.params.min_free_percent)
    }

    /// The subscription's connection to the source, without a password: the target server
    /// finds one in its own `~/.pgpass` when the source asks.
    pub fn source_conninfo(&self) -> String {
        let port = self.source.port.to_string();
        crate::pg::conninfo(&[
            ("host", &self.source.address),
            ("port", &port),
            ("user", &self.source.user),
            ("dbname", self.source_db()),
            ("application_name", &self.name),
        ])
    }

    pub fn create_publication_sql(&self, tables: &[String]) -> String {
        let mut list: Vec<String> = tables.iter().map(|t| quote_qualified(t)).collect();
        list.push(quote_qualified(CANARY_TABLE));
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(&self.name),
            list.join(", ")
        )
    }

    pub fn drop_publication_sql(&self) -> String {
        format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&self.name))
    }

    pub fn create_subscription_sql(&self) -> String {
        format!(
            "CREATE SUBSCRIPTION {sub} CONNECTION {conn} PUBLICATION {sub} WITH (copy_data = false, create_slot = false, slot_name = {slot}, enabled = true)",
            sub = quote_ident(&self.name),
            conn = quote_literal(&self.source_conninfo()),
            slot = quote_literal(&self.name),
        )
    }

    /// Detach the subscription from its slot, then drop it: the slot is dropped on the
    /// source by its own statement, so this works with the source down too.
    pub fn drop_subscription_sql(&self) -> String {
        let sub = quote_ident(&self.name);
        format!(
            "ALTER SUBSCRIPTION {sub} DISABLE; ALTER SUBSCRIPTION {sub} SET (slot_name = NONE); DROP SUBSCRIPTION {sub}"
        )
    }

    pub fn drop_slot_sql(&self) -> String {
        format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(&self.name)
        )
    }

    /// The reverse stream's slot, publication and subscription (target → source).
    pub fn reverse_name(&self) -> String {
        format!("{}_back", self.name)
    }

    /// The reverse subscription's connection to the target, without a password.
    pub fn target_conninfo(&self) -> String {
        let port = self.target.port.to_string();
        crate::pg::conninfo(&[
            ("host", &self.target.address),
            ("port", &port),
            ("user", &self.target.user),
            ("dbname", self.target_db()),
            ("application_name", &self.reverse_name()),
        ])
    }

    /// On the target: the moved tables and the move-back canary.
    pub fn create_reverse_publication_sql(&self, tables: &[String]) -> String {
        let mut list: Vec<String> = tables.iter().map(|t| quote_qualified(t)).collect();
        list.push(quote_qualified(BACK_CANARY_TABLE));
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(&self.reverse_name()),
            list.join(", ")
        )
    }

    /// On the target, while paused and past the gate: its consistent point is the cutover.
    pub fn create_reverse_slot_sql(&self) -> String {
        format!(
            "SELECT lsn::text FROM pg_create_logical_replication_slot({}, 'pgoutput')",
            quote_literal(&self.reverse_name())
        )
    }

    /// On the source, disabled: enabled by the cleanup once the forward stream is gone, so the
    /// rows it applies are never decoded back to the target.
    pub fn create_reverse_subscription_sql(&self) -> String {
        format!(
            "CREATE SUBSCRIPTION {sub} CONNECTION {conn} PUBLICATION {sub} WITH (copy_data = false, create_slot = false, slot_name = {slot}, enabled = false)",
            sub = quote_ident(&self.reverse_name()),
            conn = quote_literal(&self.target_conninfo()),
            slot = quote_literal(&self.reverse_name()),
        )
    }

    pub fn enable_reverse_subscription_sql(&self) -> String {
        format!(
            "ALTER SUBSCRIPTION {} ENABLE",
            quote_ident(&self.reverse_name())
        )
    }

    /// On the source: detach from the slot and drop (the slot is dropped on the target).
    pub fn drop_reverse_subscription_sql(&self) -> String {
        let sub = quote_ident(&self.reverse_name());
        format!(
            "ALTER SUBSCRIPTION {sub} DISABLE; ALTER SUBSCRIPTION {sub} SET (slot_name = NONE); DROP SUBSCRIPTION {sub}"
        )
    }

    pub fn drop_reverse_slot_sql(&self) -> String {
        format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(&self.reverse_name())
        )
    }

    pub fn drop_reverse_publication_sql(&self) -> String {
        format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(&self.reverse_name())
        )
    }

    /// The schema copy, run on the source's host with the source's tools.
    pub fn schema_command(&self) -> String {
        let s = &self.source;
        let t = &self.target;
        let bin = |tool: &str| shell_quote(&format!("{}/{tool}", s.bin_dir));
        let script = format!(
            "{dump} --schema-only --no-publications --no-subscriptions -h {sh} -p {sp} -U {su} -d {sd} | {psql} -X -q -v ON_ERROR_STOP=1 --single-transaction -h {th} -p {tp} -U {tu} -d {td}",
            dump = bin("pg_dump"),
            psql = bin("psql"),
            sh = shell_quote(&s.address),
            sp = s.port,
            su = shell_quote(&s.user),
            sd = shell_quote(self.source_db()),
            th = shell_quote(&t.address),
            tp = t.port,
            tu = shell_quote(&t.user),
            td = shell_quote(self.target_db()),
        );
        format!("bash -o pipefail -c {}", shell_quote(&script))
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
        let (s, sdb) = (&self.source.name, self.source_db());
        let (t, tdb) = (&self.target.name, self.target_db());
        let smaint = &self.source.maintenance_db;
        let name = &self.name;
        let selection = if self.params.tables.is_empty() {
            "every ordinary table".to_string()
        } else {
            format!("the tables {}", self.params.tables.join(", "))
        };
        let preflight = MoveStep::Preflight
            .step(format!("Preflight: {s}/{sdb} can stream {selection} to {t}/{tdb}"))
            .command(RenderedCommand::sql(s, sdb, TABLES_SQL))
            .command(RenderedCommand::sql(s, smaint, CAPACITY_SQL))
            .command(RenderedCommand::sql(s, sdb, LARGE_OBJECTS_SQL))
            .command(RenderedCommand::shell(&self.source.host, crate::runbooks::table_copy::plan::df_command(&self.source.data_dir)))
            .precondition("keys", "every moved table has a primary key, or REPLICA IDENTITY FULL (warned); tables with neither, and unlogged tables, are refused unless --exclude names them")
            .precondition("wal-level", format!("{s}: wal_level = logical, or the wal-level step sets it (restart)"))
            .precondition("replication-capacity", format!("{s}: a WAL sender and a replication slot are free; slot {name} is not in use by another run"))
            .precondition("source-disk", format!("{s}: free disk ≥ {} GB or {}% of the disk, the larger (the slot retains WAL while the move runs)", self.params.min_free_gb, self.params.min_free_percent))
            .precondition("large-objects", "large objects are reported: logical replication does not carry them")
            .precondition("target", format!("{t} is PostgreSQL {} (≥ {}), and {tdb} is absent, empty, or has every moved table with the source's columns and the source's functions", self.target.version, self.source.version))
            .precondition("no-long-transactions", format!("{s}: no transaction open longer than 60 s (the slot waits for them)"))
            .verification("every precondition holds; the table list and a fingerprint of their columns are recorded in the run")
            .undo(Undo::NothingToUndo);
        let wal_level = MoveStep::WalLevel
            .step(format!(
                "wal_level = logical on {s} (a restart, only if it is not set)"
            ))
            .command(RenderedCommand::sql(s, smaint, "SHOW wal_level"))
            .command(RenderedCommand::sql(
                s,
                smaint,
                "ALTER SYSTEM SET wal_level = logical  -- only if not logical",
            ))
            .command(RenderedCommand::shell(
                &self.source.host,
                format!(
                    "{}; {}  -- only if it was changed",
                    self.source.control.stop, self.source.control.start
                ),
            ))
            .verification(format!("{s} reports wal_level = logical"))
            .undo(Undo::Reversible {
                description: format!(
                    "put wal_level back as it was and restart {s}, only if this step changed it"
                ),
                commands: vec![
                    RenderedCommand::sql(
                        s,
                        smaint,
                        "ALTER SYSTEM SET wal_level = '<the value before>'",
                    ),
                    RenderedCommand::shell(
                        &self.source.host,
                        format!(
                            "{}; {}",
                            self.source.control.stop, self.source.control.start
                        ),
                    ),
                ],
            });
        let publication = MoveStep::Publication
            .step(format!(
                "Publication {name} of the moved tables on {s}/{sdb}"
            ))
            .command(RenderedCommand::sql(s, sdb, CANARY_DDL))
            .command(RenderedCommand::sql(
                s,
                sdb,
                format!(
                    "CREATE PUBLICATION {name} FOR TABLE <the preflight's tables>, {CANARY_TABLE}"
                ),
            ))
            .verification(format!(
                "{name} publishes every moved table and {CANARY_TABLE}"
            ))
            .undo(Undo::Reversible {
                description: format!("drop the publication and {CANARY_TABLE} on {s}"),
                commands: vec![
                    RenderedCommand::sql(s, sdb, self.drop_publication_sql()),
                    RenderedCommand::sql(s, sdb, format!("DROP TABLE IF EXISTS {CANARY_TABLE}")),
                ],
            });
        let schema = MoveStep::Schema
            .step(format!(
                "Schema: pg_dump --schema-only of {s}/{sdb} restored on {t}/{tdb}"
            ))
            .command(RenderedCommand::sql(
                t,
                &self.target.maintenance_db,
                format!(
                    "CREATE DATABASE {}  -- if it does not exist",
                    quote_ident(tdb)
                ),
            ))
            .command(RenderedCommand::shell(
                &self.source.host,
                self.schema_command(),
            ))
            .verification(format!(
                "every moved table exists on {t}/{tdb} with the source's columns"
            ))
            .undo(Undo::Reversible {
                description: format!("drop {tdb} on {t} if this run created it"),
                commands: vec![RenderedCommand::sql(
                    t,
                    &self.target.maintenance_db,
                    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(tdb)),
                )],
            });
        let initial_copy = MoveStep::InitialCopy
            .step(format!("Slot {name} with an exported snapshot; copy every table under it"))
            .command(RenderedCommand::internal(format!("{s} · replication connection"), super::slot::create_slot_command(name, self.plugin(), self.source.version)))
            .command(RenderedCommand::internal(
                format!("{s}/{sdb} → {t}/{tdb} · table-copy engine"),
                format!("per table, {} at a time: BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '<exported>' on the source; one target transaction TRUNCATE + COPY + ledger row; then count and checksum on both sides under the same snapshot", self.params.jobs),
            ))
            .command(RenderedCommand::internal("on a re-run (the snapshot died with the process)", format!("drop slot {name}, TRUNCATE the moved tables and their ledger rows on {t}, start again with a new slot")))
            .verification("every table copied and verified (count + row-hash sum) against the snapshot the slot starts from")
            .undo(Undo::Reversible {
                description: format!("drop slot {name} on {s}; TRUNCATE the moved tables on {t}"),
                commands: vec![
                    RenderedCommand::sql(s, sdb, self.drop_slot_sql()),
                    RenderedCommand::sql(t, tdb, "TRUNCATE <the moved tables>; DELETE their ledger rows"),
                ],
            });
        let subscribe = if self.citus.is_some() {
            MoveStep::Subscribe
                .step(format!("Start the tool's apply of slot {name} through the coordinator {t}/{tdb}; prove it with a canary row"))
                .command(RenderedCommand::internal(format!("{s}/{sdb} → {t}/{tdb}"), "a task: peek whole transactions from the wal2json slot, apply them through the coordinator in one transaction with the progress row (cutover_apply_progress), then advance the slot; a key change is a delete plus an insert"))
                .command(RenderedCommand::sql(s, sdb, "INSERT INTO public.cutover_canary (id) VALUES (<uuid>)"))
                .command(RenderedCommand::sql(t, tdb, "SELECT count(*) FROM public.cutover_canary WHERE id = <uuid>  -- a distributed table: seen only through Citus"))
                .verification(format!("the canary row written on {s} is visible through the coordinator {t}"))
                .undo(Undo::Reversible {
                    description: "stop the apply task (the slot stays for the initial copy's undo)".into(),
                    commands: vec![RenderedCommand::internal("cutover", "stop the apply task")],
                })
        } else {
            MoveStep::Subscribe
                .step(format!(
                    "Subscription {name} on {t}/{tdb} from slot {name}; prove it with a canary row"
                ))
                .command(RenderedCommand::sql(
                    t,
                    tdb,
                    crate::redact::redact(&self.create_subscription_sql()),
                ))
                .command(RenderedCommand::sql(s, sdb, CANARY_WRITE_SQL))
                .command(RenderedCommand::sql(t, tdb, CANARY_READ_SQL))
                .verification(format!(
                    "the canary row written on {s} is visible on {t} through an ordinary query"
                ))
                .undo(Undo::Reversible {
                    description: format!(
                    "drop the subscription on {t}, keeping the slot (initial-copy's undo drops it)"
                ),
                    commands: vec![RenderedCommand::sql(t, tdb, self.drop_subscription_sql())],
                })
        };
        let catch_up = MoveStep::CatchUp
            .step(format!("Catch up: slot lag under {} kB; stop on DDL or apply errors", self.params.sync_bytes / 1024))
            .command(RenderedCommand::sql(s, sdb, SLOT_LAG_SQL))
            .command(RenderedCommand::sql(t, tdb, APPLY_ERRORS_SQL))
            .command(RenderedCommand::sql(s, sdb, FINGERPRINT_SQL))
            .verification("lag under the bound; no apply error; the moved tables' columns unchanged since the preflight")
            .undo(Undo::NothingToUndo);
        let mut stop_traffic = MoveStep::StopTraffic
            .step(format!(
                "Stop traffic: PAUSE {}",
                self.paused
                    .iter()
                    .map(|(_, a)| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .verification("SHOW DATABASES reports every alias paused")
            .undo(Undo::Reversible {
                description: "RESUME the aliases and start traffic".into(),
                commands: self
                    .paused
                    .iter()
                    .rev()
                    .map(|(b, a)| RenderedCommand::pgbouncer_admin(&b.name, resume_sql(a)))
                    .collect(),
            })
            .flags(StepFlags {
                pauses_traffic: true,
                ..StepFlags::default()
            });
        for (b, a) in &self.paused {
            stop_traffic =
                stop_traffic.command(RenderedCommand::pgbouncer_admin(&b.name, pause_sql(a)));
        }
        let stop_traffic = stop_traffic.command(RenderedCommand::internal(
            "pause bound",
            format!("if RESUME has not run {} ms after PAUSE, traffic resumes on {s} by itself and the run rolls back to before the pause", self.params.pause_bound.as_millis()),
        ));
        let gate = MoveStep::LsnGate
            .step(format!("Gate: {t} has applied everything {s} wrote"))
            .command(RenderedCommand::sql(s, sdb, FINGERPRINT_SQL))
            .command(RenderedCommand::sql(s, sdb, format!("{CANARY_WRITE_SQL}  -- $1: a new token, the marker")))
            .command(RenderedCommand::sql(s, sdb, "SELECT pg_current_wal_lsn()  -- recorded"))
            .command(RenderedCommand::sql(t, tdb, format!("{APPLIED_SQL}  -- every 5 ms until the token shows; the applied LSN recorded")))
            .command(RenderedCommand::sql(t, tdb, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT pg_export_snapshot()  -- held for verify"))
            .verification(format!("the canary row {s} committed while paused is visible on {t}: the target applies in commit order, so every earlier transaction is applied; both LSNs recorded"))
            .undo(Undo::NothingToUndo)
            .flags(StepFlags { needs_traffic_stopped: true, ..StepFlags::default() });
        let sequences = MoveStep::Sequences
            .step(format!("Sequences on {t}: past the source's value and the column's maximum, + {}", self.params.sequence_gap))
            .command(RenderedCommand::sql(s, sdb, SEQUENCES_SQL))
            .command(RenderedCommand::sql(t, tdb, "SELECT setval(seq, greatest(source last_value, max(column)) + gap, true); SELECT nextval(seq) > max(column)"))
            .verification("for every sequence, nextval on the target is greater than the largest value of its column and than the source's last value")
            .undo(Undo::NothingToUndo)
            .flags(StepFlags { needs_traffic_stopped: true, ..StepFlags::default() });
        let mut repoint =
            MoveStep::Repoint.step(format!("Repoint the aliases of {s}/{sdb} to {t}/{tdb}"));
        for route in &self.routes {
            for alias in &route.aliases {
                repoint = repoint.command(RenderedCommand::file(
                    &route.bouncer.config,
                    format!(
                        "[databases]\n-{} = host={} port={} dbname={}\n+{} = {}",
                        alias.name,
                        self.source.address,
                        self.source.port,
                        alias.dbname,
                        alias.name,
                        self.new_alias_target().render()
                    ),
                ));
            }
            repoint = repoint.command(RenderedCommand::pgbouncer_admin(
                &route.bouncer.name,
                "RELOAD",
            ));
        }
        let repoint = repoint
            .command(RenderedCommand::file("<inventory>", format!("aliases of {s}/{sdb} now name {t}/{tdb}")))
            .verification(format!("pgbouncer reports every alias of {sdb} on {t}'s port"))
            .undo(Undo::Reversible {
                description: "put back pgbouncer.ini and the inventory from the copies kept in the run dir, RELOAD".into(),
                commands: self.routes.iter().map(|r| RenderedCommand::pgbouncer_admin(&r.bouncer.name, "RELOAD")).collect(),
            })
            .flags(StepFlags { needs_traffic_stopped: true, ..StepFlags::default() });
        let mut resume = MoveStep::ResumeTraffic.step(format!(
            "Resume traffic: RESUME {}",
            self.paused
                .iter()
                .rev()
                .map(|(_, a)| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for (b, a) in self.paused.iter().rev() {
            resume = resume.command(RenderedCommand::pgbouncer_admin(&b.name, resume_sql(a)));
        }
        let resume = resume
            .verification("SHOW DATABASES reports no alias paused")
            .undo(Undo::PointOfNoReturn {
                reason: format!(
                    "from here on, writes land on {t} only; going back would lose them"
                ),
            })
            .flags(StepFlags {
                resumes_traffic: true,
                needs_traffic_stopped: true,
                ..StepFlags::default()
            });
        let verify = MoveStep::Verify
            .step(format!("Verify every moved table: {s}/{sdb} against {t}/{tdb} as of the cutover"))
            .command(RenderedCommand::internal(
                format!("{s}/{sdb} and {t}/{tdb}"),
                "per table: SELECT count(*), sum(hash_record_extended(ROW(columns), 0)) on the source (no longer written) and on the target inside SET TRANSACTION SNAPSHOT '<exported at the gate>'",
            ))
            .verification("per table: rows and the sum of 64-bit row hashes agree")
            .undo(Undo::NothingToUndo);
        let cleanup = MoveStep::Cleanup
            .step(format!(
                "Drop subscription {name} on {t}, slot and publication {name} on {s}"
            ))
            .command(RenderedCommand::sql(t, tdb, self.drop_subscription_sql()))
            .command(RenderedCommand::sql(s, sdb, self.drop_slot_sql()))
            .command(RenderedCommand::sql(s, sdb, self.drop_publication_sql()))
            .command(RenderedCommand::sql(
                s,
                sdb,
                format!("DROP TABLE IF EXISTS {CANARY_TABLE}"),
            ))
            .command(RenderedCommand::sql(
                t,
                tdb,
                format!("DROP TABLE IF EXISTS {CANARY_TABLE}, public.cutover_copy_ledger"),
            ))
            .verification(format!(
                "no slot, publication or subscription named {name} is left"
            ))
            .undo(Undo::PointOfNoReturn {
                reason: "the slot is gone: the stream cannot restart".into(),
            });
        if !self.params.reverse_stream {
            return vec![
                preflight,
                wal_level,
                publication,
                schema,
                initial_copy,
                subscribe,
                catch_up,
                stop_traffic,
                gate,
                sequences,
                repoint,
                resume,
                verify,
                cleanup,
            ];
        }
        let back = self.reverse_name();
        let cleanup = cleanup
            .command(RenderedCommand::sql(
                s,
                sdb,
                self.enable_reverse_subscription_sql(),
            ))
            .verification(format!(
                "no slot, publication or subscription named {name} is left; subscription {back} on {s} is enabled, after the forward stream is gone (so what it applies is never decoded back)"
            ));
        let reverse = MoveStep::ReverseStream
            .step(format!("The way back: publication and slot {back} on {t}, a subscription on {s}"))
            .command(RenderedCommand::sql(t, tdb, BACK_CANARY_DDL))
            .command(RenderedCommand::sql(s, sdb, BACK_CANARY_DDL))
            .command(RenderedCommand::sql(t, tdb, self.create_reverse_publication_sql(&["<the moved tables>".to_string()])))
            .command(RenderedCommand::sql(t, tdb, self.create_reverse_slot_sql()))
            .command(RenderedCommand::sql(s, sdb, self.create_reverse_subscription_sql()))
            .verification(format!("slot {back} exists on {t}, created while paused after the gate: its consistent point is the cutover, so every write the target takes from RESUME on is in the reverse stream; subscription {back} exists (disabled) on {s}"))
            .undo(Undo::Reversible {
                description: format!("drop subscription {back} on {s}, slot and publication {back} on {t}"),
                commands: vec![
                    RenderedCommand::sql(s, sdb, self.drop_reverse_subscription_sql()),
                    RenderedCommand::sql(t, tdb, self.drop_reverse_slot_sql()),
                    RenderedCommand::sql(t, tdb, self.drop_reverse_publication_sql()),
                ],
            })
            .flags(StepFlags { needs_traffic_stopped: true, ..StepFlags::default() });
        let mut move_back = MoveStep::MoveBack.step(format!(
            "Move back to {s}/{sdb} (held: run it by name, or skip it to keep {t})"
        ));
        for (b, a) in &self.paused {
            move_back = move_back.command(RenderedCommand::pgbouncer_admin(&b.name, pause_sql(a)));
        }
        move_back = move_back
            .command(RenderedCommand::sql(t, tdb, format!("{BACK_CANARY_WRITE_SQL}  -- $1: a new token")))
            .command(RenderedCommand::sql(t, tdb, "SELECT pg_current_wal_lsn()  -- recorded"))
            .command(RenderedCommand::sql(s, sdb, format!("{BACK_CANARY_READ_SQL}  -- every 5 ms until the token shows, at most half the pause bound")))
            .command(RenderedCommand::sql(t, tdb, SEQUENCES_SQL))
            .command(RenderedCommand::sql(s, sdb, "SELECT setval(seq, greatest(target last_value, max(column)) + gap, true); SELECT nextval(seq) > max(column)"));
        for route in &self.routes {
            move_back = move_back.command(RenderedCommand::file(
                &route.bouncer.config,
                "put back from the copy kept at the repoint (the aliases name the source)",
            ));
            move_back = move_back.command(RenderedCommand::pgbouncer_admin(
                &route.bouncer.name,
                "RELOAD",
            ));
        }
        move_back = move_back.command(RenderedCommand::file(
            "<inventory>",
            format!("aliases of {sdb} name {s} again"),
        ));
        for (b, a) in self.paused.iter().rev() {
            move_back = move_back.command(RenderedCommand::pgbouncer_admin(&b.name, resume_sql(a)));
        }
        let move_back = move_back
            .verification(format!("the canary row {t} committed while paused is visible on {s} (the reverse stream applies in commit order: every write {t} took is on {s}); every sequence on {s} past the target's value and its column's maximum; the aliases route to {s}; none is paused. A refused gate resumes traffic on {t}, unchanged"))
            .undo(Undo::PointOfNoReturn {
                reason: format!("from here on, writes land on {s} only"),
            })
            .flags(StepFlags {
                removes_way_back: true,
                ..StepFlags::default()
            });
        let retire = MoveStep::RetireReverseStream
            .step(format!("Retire the way back: drop subscription {back} on {s}, slot and publication {back} on {t}"))
            .command(RenderedCommand::sql(s, sdb, self.drop_reverse_subscription_sql()))
            .command(RenderedCommand::sql(t, tdb, self.drop_reverse_slot_sql()))
            .command(RenderedCommand::sql(t, tdb, self.drop_reverse_publication_sql()))
            .command(RenderedCommand::sql(s, sdb, format!("DROP TABLE IF EXISTS {BACK_CANARY_TABLE}")))
            .command(RenderedCommand::sql(t, tdb, format!("DROP TABLE IF EXISTS {BACK_CANARY_TABLE}")))
            .verification(format!("no slot, publication or subscription named {back} is left on either side"))
            .undo(Undo::PointOfNoReturn {
                reason: "the reverse slot is gone: the way back cannot restart".into(),
            })
            .flags(StepFlags {
                removes_way_back: true,
                ..StepFlags::default()
            });
        vec![
            preflight,
            wal_level,
            publication,
            schema,
            initial_copy,
            subscribe,
            catch_up,
            stop_traffic,
            gate,
            sequences,
            reverse,
            repoint,
            resume,
            verify,
            cleanup,
            move_back,
            retire,
        ]
    }
}

/// Ordinary and partitioned tables: name, replica identity, whether a primary key exists,
/// persistence (`u`: unlogged).
pub const TABLES_SQL: &str = "SELECT n.nspname || '.' || c.relname, c.relreplident::text, \
EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), c.relpersistence::text \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind = 'r' AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
AND n.nspname NOT LIKE 'pg\\_%' AND c.relname NOT IN ('cutover_move_canary', 'cutover_move_back_canary', 'cutover_copy_ledger', 'cutover_canary', 'cutover_ddl_events', 'cutover_apply_progress') ORDER BY 1";

/// wal_level, free replication slots and WAL senders.
pub const CAPACITY_SQL: &str = "SELECT current_setting('wal_level'), \
current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int, \
current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int";

/// The database's own functions (not of extensions), by signature.
pub const FUNCTIONS_SQL: &str = "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') \
AND p.proname NOT LIKE 'cutover\\_%' ORDER BY 1";

pub const LARGE_OBJECTS_SQL: &str = "SELECT count(*)::bigint FROM pg_largeobject_metadata";

/// The moved tables' columns and types, hashed: a change means DDL ran on the source.
pub const FINGERPRINT_SQL: &str = "SELECT md5(coalesce(string_agg(c.oid::regclass::text || ':' || a.attname || ':' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY c.oid::regclass::text, a.attnum), '')) \
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
WHERE c.oid = ANY($1::text[]::regclass[])";

/// Which columns differ from a recorded list (for the DDL message).
pub const COLUMNS_TEXT_SQL: &str = "SELECT c.oid::regclass::text, string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) \
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
WHERE c.oid = ANY($1::text[]::regclass[]) GROUP BY 1 ORDER BY 1";

pub const CANARY_DDL: &str = "CREATE TABLE IF NOT EXISTS public.cutover_move_canary (id int PRIMARY KEY, token text NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp())";
pub const CANARY_WRITE_SQL: &str = "INSERT INTO public.cutover_move_canary (id, token) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token, written_at = clock_timestamp()";
pub const CANARY_READ_SQL: &str = "SELECT token FROM public.cutover_move_canary WHERE id = 1";

/// The table whose row proves the reverse stream delivered the target's writes to the source.
pub const BACK_CANARY_TABLE: &str = "public.cutover_move_back_canary";
pub const BACK_CANARY_DDL: &str = "CREATE TABLE IF NOT EXISTS public.cutover_move_back_canary (id int PRIMARY KEY, token text NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp())";
pub const BACK_CANARY_WRITE_SQL: &str = "INSERT INTO public.cutover_move_back_canary (id, token) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token, written_at = clock_timestamp()";
pub const BACK_CANARY_READ_SQL: &str =
    "SELECT token FROM public.cutover_move_back_canary WHERE id = 1";

/// Lag of slot `$1` in bytes (current WAL − confirmed flush) and the WAL it retains.
pub const SLOT_LAG_SQL: &str = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, \
pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active FROM pg_replication_slots WHERE slot_name = $1";

/// On the target: the canary's token, and the source LSN subscription `$1` has applied up to
/// (its replication origin's progress).
pub const APPLIED_SQL: &str = "SELECT (SELECT token FROM public.cutover_move_canary WHERE id = 1), \
(SELECT o.remote_lsn::text FROM pg_replication_origin_status o JOIN pg_subscription s ON o.external_id = 'pg_' || s.oid WHERE s.subname = $1)";

/// Apply errors of subscription `$1` and whether its apply worker runs.
pub const APPLY_ERRORS_SQL: &str = "SELECT coalesce((SELECT apply_error_count + sync_error_count FROM pg_stat_subscription_stats WHERE subname = $1), 0)::bigint, \
EXISTS (SELECT 1 FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL AND relid IS NULL)";

/// Sequences of the source database: name (quoted), last value, and the table
/// (`schema.table`, unquoted) and column that own it, if any.
pub const SEQUENCES_SQL: &str = "SELECT format('%I.%I', s.schemaname, s.sequencename), s.last_value, \
o.owner_table, o.owner_column \
FROM pg_sequences s LEFT JOIN LATERAL (SELECT n.nspname || '.' || c.relname AS owner_table, a.attname::text AS owner_column \
 FROM pg_depend d JOIN pg_class c ON c.oid = d.refobjid JOIN pg_namespace n ON n.oid = c.relnamespace \
 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
 WHERE d.classid = 'pg_class'::regclass AND d.objid = format('%I.%I', s.schemaname, s.sequencename)::regclass AND d.deptype IN ('a', 'i') LIMIT 1) o ON true \
WHERE s.schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1";

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn params_round_trip_and_select() {
        let p = MoveParams::from_map(&map(&[
            ("from", "pg1/app"),
            ("to", "pg2/app"),
            ("exclude", "audit, public.nokey"),
            ("sequence-gap", "50"),
        ]))
        .unwrap();
        assert_eq!(MoveParams::from_map(&p.to_map()).unwrap(), p);
        assert!(p.selects("public.forms"));
        assert!(!p.selects("public.audit"));
        assert!(!p.selects("public.nokey"));
        assert!(MoveParams::from_map(&map(&[("from", "pg1"), ("to", "pg2/app")])).is_err());
        assert!(MoveParams::from_map(&map(&[
            ("from", "pg1/a"),
            ("to", "pg2/a"),
            ("pause-bound-ms", "0")
        ]))
        .is_err());
    }
}
