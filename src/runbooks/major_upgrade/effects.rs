//! Effects of the `major-upgrade` runbook: each step's action and undo over tokio-postgres,
//! the pgbouncer admin console and host commands. Every action checks before it acts, so a
//! re-run after a crash converges; commands come from `runbook::major_upgrade`, the reviewed text.

use super::UpgradeStep;
use crate::effects::{repoint, traffic};
use crate::engine::{EngineState, Observation, PreconditionResult};
use crate::executor::context::{
    announce_recheck, check_long_transactions, fail, not_begun, verdict, ExecContext,
};
use crate::executor::{Actions, Sink, StepError};
use crate::inventory::{self, Node};
use crate::pg::{self, Endpoint, SessionSettings};
use crate::pgbouncer_ini;
use crate::plan::{Plan, Step};
use crate::quote::shell_quote;
use crate::readings::queries;
use crate::runbooks::major_upgrade::plan::{self as plan, Method, Upgrade, BENIGN_RESTORE_ERRORS};
use crate::runbooks::StepKind;
use crate::sql::quote_ident;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const HOST_COMMAND_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
const QUICK_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The run-dir file that holds [`UpgradeMemory`].
const MEMORY_FILE: &str = "upgrade.json";
/// Chunk size when an artifact moves between hosts through the jump host.
const TRANSFER_CHUNK: u64 = 16 * 1024 * 1024;

/// One database as validation sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseSnapshot {
    /// Exact row count per `schema.table`.
    pub tables: BTreeMap<String, i64>,
    /// `last_value` per `schema.sequence` (None: never called).
    pub sequences: BTreeMap<String, Option<i64>>,
    pub extensions: BTreeSet<String>,
}

/// What validation compares: every carried database, and the roles with their attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    pub databases: BTreeMap<String, DatabaseSnapshot>,
    pub roles: BTreeMap<String, String>,
}

impl ClusterSnapshot {
    pub fn summary(&self) -> String {
        let tables: usize = self.databases.values().map(|d| d.tables.len()).sum();
        let rows: i64 = self
            .databases
            .values()
            .flat_map(|d| d.tables.values())
            .sum();
        let sequences: usize = self.databases.values().map(|d| d.sequences.len()).sum();
        format!(
            "{} databases, {tables} tables, {rows} rows, {sequences} sequences, {} roles",
            self.databases.len(),
            self.roles.len()
        )
    }

    /// Differences that make `after` not a faithful copy of `self`. Extension versions may
    /// differ across major versions; names must not.
    pub fn differences(&self, after: &ClusterSnapshot) -> Vec<String> {
        let mut problems = Vec::new();
        compare(
            &self.roles,
            &after.roles,
            &mut problems,
            |name, change| match change {
                None => format!("role {name} is missing"),
                Some((before, now)) => format!("role {name}: {before} before, {now} after"),
            },
        );
        for (db, before) in &self.databases {
            let Some(now) = after.databases.get(db) else {
                problems.push(format!("database {db} is missing"));
                continue;
            };
            compare(
                &before.tables,
                &now.tables,
                &mut problems,
                |table, change| match change {
                    None => format!("{db}: table {table} is missing"),
                    Some((count, n)) => format!("{db}: {table} has {n} rows, expected {count}"),
                },
            );
            compare(
                &before.sequences,
                &now.sequences,
                &mut problems,
                |seq, change| match change {
                    None => format!("{db}: sequence {seq} is missing"),
                    Some((value, v)) => {
                        format!("{db}: sequence {seq} is at {v:?}, expected {value:?}")
                    }
                },
            );
            for ext in before.extensions.difference(&now.extensions) {
                problems.push(format!("{db}: extension {ext} is missing"));
            }
        }
        for db in after.databases.keys() {
            if !self.databases.contains_key(db) {
                problems.push(format!("database {db} is new on the target"));
            }
        }
        problems
    }
}

/// Every key of `before` that is missing from `after` (`None`) or differs (`Some((before,
/// now))`) becomes one problem, worded by `describe`.
fn compare<V: PartialEq>(
    before: &BTreeMap<String, V>,
    after: &BTreeMap<String, V>,
    problems: &mut Vec<String>,
    describe: impl Fn(&str, Option<(&V, &V)>) -> String,
) {
    for (key, was) in before {
        match after.get(key) {
            None => problems.push(describe(key, None)),
            Some(now) if now != was => problems.push(describe(key, Some((was, now)))),
            Some(_) => {}
        }
    }
}

/// Values later steps need, kept in the run dir so a resumed run has them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpgradeMemory {
    pub baseline: Option<ClusterSnapshot>,
    pub validated: Option<ClusterSnapshot>,
    /// When traffic stopped (first PAUSE or stop hook).
    pub traffic_stopped_at: Option<DateTime<Utc>>,
    /// Traffic stopped → resumed, in milliseconds.
    pub downtime_ms: Option<f64>,
    /// Size of the artifact(s) in bytes.
    pub artifact_bytes: Option<u64>,
    /// Databases dumped by the `parallel` method, in dump order.
    pub dumped_databases: Vec<String>,
    /// Databases and roles the target had before the restore began: undo keeps them.
    pub target_databases_before: Option<BTreeSet<String>>,
    pub target_roles_before: Option<BTreeSet<String>>,
    /// Restore errors met and allowed by the allow-list.
    pub allowed_errors: Vec<String>,
}

pub struct MajorUpgradeActions {
    upgrade: Upgrade,
    /// Hosts, cached connections, and the run dir where backups and [`UpgradeMemory`] live.
    ctx: ExecContext,
    /// The inventory file the repoint rewrites (the previous one is kept in the run dir).
    inventory_path: PathBuf,
    memory: UpgradeMemory,
}

fn db_err(e: tokio_postgres::Error) -> String {
    pg::error_chain(&e)
}

/// The database every cluster has, used when the maintenance database is missing.
const FALLBACK_DB: &str = "template1";
/// Relations outside the system schemas: zero in a database fresh from template0.
const USER_RELATIONS_SQL: &str = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'";

async fn maintenance_db_present(client: &Client, node: &Node) -> Result<bool, StepError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&node.maintenance_db],
        )
        .await
        .map_err(db_err)?
        .is_some())
}

impl MajorUpgradeActions {
    pub fn new(
        upgrade: Upgrade,
        inventory_path: PathBuf,
        run_dir: PathBuf,
        trust_on_first_use: bool,
    ) -> Result<Self, String> {
        let ctx = ExecContext::new(&upgrade.inventory, run_dir, trust_on_first_use)?;
        let memory = ctx.load_memory(MEMORY_FILE).map_err(|e| e.to_string())?;
        Ok(MajorUpgradeActions {
            upgrade,
            ctx,
            inventory_path,
            memory,
        })
    }

    pub fn memory(&self) -> &UpgradeMemory {
        &self.memory
    }

    pub fn upgrade(&self) -> &Upgrade {
        &self.upgrade
    }

    fn remember(&self) -> Result<(), StepError> {
        self.ctx.save_memory(MEMORY_FILE, &self.memory)
    }

    /// A connection to `node`'s maintenance database, or to [`FALLBACK_DB`] when the
    /// maintenance database is missing (a crash between its drop and its re-creation leaves
    /// it so); any other connection failure is the error.
    async fn admin(&self, node: &Node) -> Result<Arc<Client>, StepError> {
        let error = match self.ctx.node_client(node, &node.maintenance_db).await {
            Ok(client) => return Ok(client),
            Err(error) => error,
        };
        if node.maintenance_db == FALLBACK_DB {
            return Err(error);
        }
        let Ok(fallback) = self.ctx.node_client(node, FALLBACK_DB).await else {
            return Err(error);
        };
        if maintenance_db_present(&fallback, node).await? {
            Err(error)
        } else {
            Ok(fallback)
        }
    }

    /// Re-create `node`'s maintenance database when it is missing; says whether it did.
    async fn repair_maintenance_db(&self, node: &Node, sink: &Sink) -> Result<bool, StepError> {
        if node.maintenance_db == FALLBACK_DB {
            return Ok(false);
        }
        let client = pg::connect(
            &Endpoint::node(node, FALLBACK_DB),
            SessionSettings::EXECUTOR,
        )
        .await?;
        if maintenance_db_present(&client, node).await? {
            return Ok(false);
        }
        client
            .simple_query(&format!(
                "CREATE DATABASE {} TEMPLATE template0",
                quote_ident(&node.maintenance_db)
            ))
            .await
            .map_err(db_err)?;
        self.ctx.forget_clients();
        sink.output(format!(
            "{} had no {} database: re-created it empty",
            node.name, node.maintenance_db
        ));
        Ok(true)
    }

    /// Whether `node` answers a query right now (a fresh connection, never a cached one),
    /// through its maintenance database or, when that is missing, [`FALLBACK_DB`].
    async fn answers(node: &Node) -> bool {
        let settings = SessionSettings {
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Some(Duration::from_secs(5)),
            ..SessionSettings::EXECUTOR
        };
        for db in [node.maintenance_db.as_str(), FALLBACK_DB] {
            if let Ok(client) = pg::connect(&Endpoint::node(node, db), settings).await {
                if client.simple_query("SELECT 1").await.is_ok() {
                    return true;
                }
            }
        }
        false
    }

    /// Run quietly and return stdout; the output is not journaled line by line.
    async fn host_read(&self, host: &str, command: &str) -> Result<String, StepError> {
        self.ctx
            .host_read(host, command, QUICK_COMMAND_TIMEOUT)
            .await
    }

    /// The aliases the write pause covers, in PAUSE order (none with `--traffic hooks`).
    fn aliases(&self) -> Vec<traffic::Alias<'_>> {
        let wanted = self.upgrade.paused_aliases();
        self.upgrade
            .routes
            .iter()
            .flat_map(|route| {
                route.aliases.iter().map(move |alias| traffic::Alias {
                    bouncer: &route.bouncer,
                    name: &alias.name,
                })
            })
            .filter(|a| wanted.contains(&(a.bouncer.name.clone(), a.name.to_string())))
            .collect()
    }

    async fn paused_aliases(&self) -> Result<BTreeSet<(String, String)>, StepError> {
        let bouncers: Vec<&inventory::Pgbouncer> =
            self.upgrade.routes.iter().map(|r| &r.bouncer).collect();
        traffic::paused(&self.ctx, &bouncers).await
    }

    // ---- preflight ------------------------------------------------------------------------

    async fn preflight(&self) -> Vec<PreconditionResult> {
        vec![
            verdict("versions", self.check_versions().await),
            verdict("encoding-locale", self.check_locales().await),
            verdict("extensions", self.check_extensions().await),
            verdict("disk", self.check_disk().await),
            verdict("target-empty", self.check_target_empty().await),
            verdict("no-long-transactions", self.check_long_transactions().await),
            verdict("tools", self.check_tools().await),
        ]
    }

    async fn server_version(&self, node: &Node) -> Result<(u32, String), StepError> {
        let row = self
            .admin(node)
            .await?
            .query_one(plan::VERSION_SQL, &[])
            .await
            .map_err(db_err)?;
        let num: i32 = row.get(0);
        Ok(((num / 10_000) as u32, row.get(1)))
    }

    async fn check_versions(&self) -> Result<String, StepError> {
        let (s, t) = (&self.upgrade.source, &self.upgrade.target);
        let (source_major, source_checksums) = self.server_version(s).await?;
        let mut detail = format!("{} runs {source_major}", s.name);
        if source_major != s.version {
            return Err(format!("{detail}, but the inventory says {}", s.version).into());
        }
        match self.server_version(t).await {
            Ok((target_major, target_checksums)) => {
                detail.push_str(&format!(", {} runs {target_major}", t.name));
                if target_major != t.version {
                    return Err(format!("{detail}, but the inventory says {}", t.version).into());
                }
                if !self.upgrade.method().is_dump() && source_checksums != target_checksums {
                    return Err(format!(
                        "{detail}; pg_upgrade needs the same data_checksums setting: {} has {source_checksums}, {} has {target_checksums} (initdb the target with --no-data-checksums)",
                        s.name, t.name
                    ).into());
                }
                Ok(detail)
            }
            Err(e) if !self.upgrade.method().is_dump() => {
                let version = self
                    .host_read(
                        &t.host,
                        &format!("cat {}/PG_VERSION", shell_quote(&t.data_dir)),
                    )
                    .await
                    .map_err(|_| {
                        format!(
                            "{detail}; {} does not answer ({e}) and has no PG_VERSION",
                            t.name
                        )
                    })?;
                if version.trim() != t.version.to_string() {
                    return Err(format!(
                        "{detail}; {}'s data directory is version {}",
                        t.name,
                        version.trim()
                    )
                    .into());
                }
                Ok(format!(
                    "{detail}; {} is stopped, data directory version {}",
                    t.name,
                    version.trim()
                ))
            }
            Err(e) => Err(format!("{detail}; {}: {e}", t.name).into()),
        }
    }

    async fn check_locales(&self) -> Result<String, StepError> {
        let (s, t) = (&self.upgrade.source, &self.upgrade.target);
        type Locale = (String, String, String, String);
        async fn read(client: &Client) -> Result<BTreeMap<String, Locale>, StepError> {
            Ok(client
                .query(plan::DATABASE_LOCALES_SQL, &[])
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
                .collect())
        }
        let source = read(&*self.admin(s).await?).await?;
        let target_client = self
            .admin(t)
            .await
            .map_err(|e| format!("{} must be running to compare locales: {e}", t.name))?;
        let target = read(&target_client).await?;
        let offered: BTreeSet<String> = target_client
            .query(plan::COLLATIONS_SQL, &[])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let default = target
            .get("template1")
            .cloned()
            .ok_or_else(|| format!("{} has no template1", t.name))?;
        let source_default = source
            .get("template1")
            .or_else(|| source.get(&s.maintenance_db))
            .cloned()
            .ok_or_else(|| format!("{} has no template1", s.name))?;
        let mut problems = Vec::new();
        let show = |l: &Locale| {
            format!(
                "encoding {}, collate {}, ctype {}, provider {}",
                l.0,
                l.1,
                l.2,
                if l.3 == "i" { "icu" } else { "libc" }
            )
        };
        if source_default != default {
            problems.push(format!(
                "cluster default differs: {} has {}, {} has {}",
                s.name,
                show(&source_default),
                t.name,
                show(&default)
            ));
        }
        for (db, locale) in &source {
            if locale.3 == "i" && !target.values().any(|l| l.3 == "i") {
                problems.push(format!("{db} uses ICU; {} has no ICU database", t.name));
            }
            let available = |name: &String| *name == default.1 || offered.contains(name);
            if locale.0 != default.0 {
                problems.push(format!(
                    "{db} is {} but {} defaults to {}",
                    locale.0, t.name, default.0
                ));
            }
            for name in [&locale.1, &locale.2] {
                if !available(name) {
                    problems.push(format!(
                        "{db}: locale {name} is not available on {}",
                        t.name
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(format!(
                "{} databases; both clusters use {}",
                source.len(),
                show(&default)
            ))
        } else {
            Err(StepError::Failed(problems.join("; ")))
        }
    }

    async fn source_databases(&self) -> Result<Vec<String>, StepError> {
        Ok(self
            .admin(&self.upgrade.source)
            .await?
            .query(plan::DATABASES_SQL, &[])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn check_extensions(&self) -> Result<String, StepError> {
        let (s, t) = (&self.upgrade.source, &self.upgrade.target);
        let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for db in self.source_databases().await? {
            let client = pg::connect(&Endpoint::node(s, &db), SessionSettings::EXECUTOR).await?;
            for row in client
                .query(plan::EXTENSIONS_SQL, &[])
                .await
                .map_err(db_err)?
            {
                used.entry(row.get(0)).or_default().push(db.clone());
            }
        }
        let available: BTreeSet<String> = match self.admin(t).await {
            Ok(client) => client
                .query(plan::AVAILABLE_EXTENSIONS_SQL, &[])
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| r.get(0))
                .collect(),
            Err(_) => self
                .host_read(&t.host, &self.upgrade.available_extensions_command())
                .await?
                .lines()
                .map(|l| l.trim().to_string())
                .collect(),
        };
        let missing: Vec<String> = used
            .iter()
            .filter(|(ext, _)| !available.contains(*ext))
            .map(|(ext, dbs)| format!("{ext} (used in {})", dbs.join(", ")))
            .collect();
        if missing.is_empty() {
            Ok(format!(
                "{} available on {}: {}",
                used.len(),
                t.name,
                used.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        } else {
            Err(format!("not available on {}: {}", t.name, missing.join("; ")).into())
        }
    }

    async fn free_bytes(&self, host: &str, path: &str) -> Result<i64, StepError> {
        self.host_read(host, &Upgrade::disk_free_command(path))
            .await?
            .trim()
            .parse()
            .map_err(|_| StepError::from("df printed no number"))
    }

    async fn check_disk(&self) -> Result<String, StepError> {
        let u = &self.upgrade;
        let size: i64 = self
            .admin(&u.source)
            .await?
            .query_one(plan::DATABASE_SIZE_SQL, &[])
            .await
            .map_err(db_err)?
            .get(0);
        let human = crate::readings::text::human_bytes;
        let mut checks = Vec::new();
        match u.method() {
            Method::Dumpall | Method::Parallel => {
                // A compressed dump is smaller than the data; the data size is the safe bound.
                checks.push((u.source.host.clone(), u.dump_dir.clone(), size, "the dump"));
                checks.push((
                    u.target.host.clone(),
                    u.target.data_dir.clone(),
                    size,
                    "the restored data",
                ));
            }
            Method::PgUpgrade { link: false } => {
                checks.push((
                    u.target.host.clone(),
                    u.target.data_dir.clone(),
                    size,
                    "a copy of the data",
                ));
            }
            Method::PgUpgrade { link: true } => {
                checks.push((
                    u.target.host.clone(),
                    u.dump_dir.clone(),
                    64 << 20,
                    "the pristine copy and catalog",
                ));
            }
        }
        let mut details = Vec::new();
        for (host, path, needed, what) in checks {
            let avail = self.free_bytes(&host, &path).await?;
            let line = format!(
                "{}: {} free at {path} for {what} (needs {})",
                host,
                human(avail),
                human(needed)
            );
            if avail < needed {
                return Err(StepError::Failed(line));
            }
            details.push(line);
        }
        Ok(details.join("; "))
    }

    async fn check_target_empty(&self) -> Result<String, StepError> {
        let t = &self.upgrade.target;
        match self.admin(t).await {
            Ok(client) => {
                let rows = client
                    .query(plan::TARGET_CONTENTS_SQL, &[])
                    .await
                    .map_err(db_err)?;
                let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                if found.is_empty() {
                    Ok(format!("{} holds no user database or role", t.name))
                } else {
                    Err(format!("{} is not empty: {}", t.name, found.join(", ")).into())
                }
            }
            Err(e) if !self.upgrade.method().is_dump() => Ok(format!(
                "{} is stopped ({e}); pg_upgrade --check verifies it is empty",
                t.name
            )),
            Err(e) => Err(e),
        }
    }

    async fn check_long_transactions(&self) -> Result<String, StepError> {
        check_long_transactions(&*self.admin(&self.upgrade.source).await?).await
    }

    async fn check_tools(&self) -> Result<String, StepError> {
        let mut found = Vec::new();
        for (host, check) in self.upgrade.tools_check_command() {
            let out = self
                .host_read(&host, &check)
                .await
                .map_err(|e| format!("host {host}: {e}"))?;
            found.push(format!("{host}: {}", out.trim()));
        }
        Ok(found.join("; "))
    }

    // ---- traffic --------------------------------------------------------------------------

    async fn stop_traffic(&mut self, sink: &Sink) -> Result<String, StepError> {
        if self.memory.traffic_stopped_at.is_none() {
            self.memory.traffic_stopped_at = Some(Utc::now());
            self.remember()?;
        }
        let aliases = self.aliases();
        traffic::pause(&self.ctx, &aliases, HOST_COMMAND_TIMEOUT, sink, || {}).await?;
        Ok(if aliases.is_empty() {
            "traffic hooks ran; downtime window open".into()
        } else {
            format!("paused: {}", traffic::names(&aliases))
        })
    }

    async fn resume_traffic(&mut self, sink: &Sink) -> Result<String, StepError> {
        traffic::resume(&self.ctx, &self.aliases(), sink).await?;
        traffic::start_hook(&self.ctx, HOST_COMMAND_TIMEOUT, sink).await?;
        if let Some(stopped) = self.memory.traffic_stopped_at.take() {
            let downtime = (Utc::now() - stopped).num_microseconds().unwrap_or(0) as f64 / 1000.0;
            sink.output(format!(
                "downtime: {downtime:.0} ms (traffic stopped → resumed)"
            ));
            self.memory.downtime_ms = Some(downtime);
            self.remember()?;
        }
        traffic::check_flowing(&self.ctx, &self.aliases()).await?;
        Ok("traffic flows".into())
    }

    // ---- snapshots ------------------------------------------------------------------------

    async fn snapshot(
        &self,
        node: &Node,
        databases: &[String],
    ) -> Result<ClusterSnapshot, StepError> {
        let admin = pg::connect(&Endpoint::maintenance(node), SessionSettings::EXECUTOR).await?;
        let roles = admin
            .query(plan::ROLES_SQL, &[])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut snapshot = ClusterSnapshot {
            databases: BTreeMap::new(),
            roles,
        };
        for db in databases {
            let client = pg::connect(&Endpoint::node(node, db), SessionSettings::EXECUTOR).await?;
            let mut one = DatabaseSnapshot::default();
            for row in client.query(plan::TABLES_SQL, &[]).await.map_err(db_err)? {
                let table: String = row.get(0);
                // `table` comes from format('%I.%I'): already quoted.
                let count: i64 = client
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await
                    .map_err(db_err)?
                    .get(0);
                one.tables.insert(table, count);
            }
            for row in client
                .query(plan::SEQUENCES_SQL, &[])
                .await
                .map_err(db_err)?
            {
                one.sequences.insert(row.get(0), row.get(1));
            }
            for row in client
                .query(plan::EXTENSIONS_SQL, &[])
                .await
                .map_err(db_err)?
            {
                one.extensions.insert(row.get(0));
            }
            snapshot.databases.insert(db.clone(), one);
        }
        Ok(snapshot)
    }

    async fn baseline(&mut self, sink: &Sink) -> Result<String, StepError> {
        let databases = self.source_databases().await?;
        let snapshot = self.snapshot(&self.upgrade.source, &databases).await?;
        for (db, one) in &snapshot.databases {
            sink.output(format!(
                "baseline {db}: {}",
                one.tables
                    .iter()
                    .map(|(t, n)| format!("{t}={n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let summary = snapshot.summary();
        self.memory.baseline = Some(snapshot);
        self.remember()?;
        Ok(format!(
            "baseline of {}: {summary}",
            self.upgrade.source.name
        ))
    }

    // ---- dump and transfer ----------------------------------------------------------------

    /// Wait until no process on `host` has a file under the dump directory open: a dump
    /// cut off with its driver keeps writing its `.partial` files, and a second dump writing
    /// the same files would race it.
    async fn await_cut_off_writers(&self, host: &str, sink: &Sink) -> Result<(), StepError> {
        let script = format!(
            "d={dir}; end=$(( $(date +%s) + 50 )); while :; do \
               busy=$(for f in /proc/[0-9]*/fd/*; do t=$(readlink \"$f\" 2>/dev/null) && case \"$t\" in \"$d\"/*) echo \"${{f%/fd/*}}\";; esac; done | sort -u | tr '\\n' ' '); \
               [ -z \"$busy\" ] && exit 0; \
               [ \"$(date +%s)\" -ge \"$end\" ] && {{ echo \"still writing in $d: $busy\" >&2; exit 1; }}; \
               echo waiting; sleep 0.2; \
             done",
            dir = shell_quote(&self.upgrade.dump_dir)
        );
        let out = self.host_read(host, &script).await?;
        if !out.trim().is_empty() {
            sink.output(format!(
                "waited for a cut-off dump on {host} to stop writing in {}",
                self.upgrade.dump_dir
            ));
        }
        Ok(())
    }

    async fn dump(&mut self, recheck: bool, sink: &Sink) -> Result<String, StepError> {
        let u = self.upgrade.clone();
        if recheck {
            self.await_cut_off_writers(&u.source.host, sink).await?;
        }
        let started = Instant::now();
        let artifact = match u.method() {
            Method::Dumpall => {
                self.ctx
                    .host_run(
                        &u.source.host,
                        &u.dumpall_command(),
                        HOST_COMMAND_TIMEOUT,
                        sink,
                    )
                    .await?;
                u.dumpall_file()
            }
            Method::Parallel => {
                let databases = self.source_databases().await?;
                self.ctx
                    .host_run(
                        &u.source.host,
                        &u.globals_dump_command(),
                        HOST_COMMAND_TIMEOUT,
                        sink,
                    )
                    .await?;
                for db in &databases {
                    let one = Instant::now();
                    self.ctx
                        .host_run(
                            &u.source.host,
                            &u.database_dump_command(db),
                            HOST_COMMAND_TIMEOUT,
                            sink,
                        )
                        .await?;
                    sink.output(format!(
                        "pg_dump {db}: {:.0} ms",
                        one.elapsed().as_secs_f64() * 1000.0
                    ));
                }
                self.memory.dumped_databases = databases;
                u.parallel_dir()
            }
            Method::PgUpgrade { .. } => return Err("pg-upgrade has no dump step".into()),
        };
        let bytes: u64 = self
            .host_read(
                &u.source.host,
                &format!("du -sb {} | cut -f1", shell_quote(&artifact)),
            )
            .await?
            .trim()
            .parse()
            .unwrap_or(0);
        self.memory.artifact_bytes = Some(bytes);
        self.remember()?;
        Ok(format!(
            "{artifact}: {} in {:.0} ms, sha512 written beside it",
            crate::readings::text::human_bytes(bytes as i64),
            started.elapsed().as_secs_f64() * 1000.0
        ))
    }

    /// The artifact files, relative to the dump dir, with their checksum files.
    async fn artifact_files(&self) -> Result<Vec<String>, StepError> {
        let u = &self.upgrade;
        let listing = self
            .host_read(
                &u.source.host,
                &match u.method() {
                    Method::Dumpall => format!(
                        "cd {} && ls dumpall.sql.gz dumpall.sql.gz.sha512",
                        shell_quote(&u.dump_dir)
                    ),
                    _ => format!(
                        "cd {} && find parallel -type f ! -name '*.partial' | sort",
                        shell_quote(&u.dump_dir)
                    ),
                },
            )
            .await?;
        Ok(listing
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Verify every checksum file of the artifact on the target host.
    async fn verify_checksums(&self, sink: &Sink) -> Result<String, StepError> {
        let u = &self.upgrade;
        let checks: Vec<(String, String)> = match u.method() {
            Method::Dumpall => vec![(u.dump_dir.clone(), "dumpall.sql.gz.sha512".into())],
            _ => {
                let mut checks = vec![(u.parallel_dir(), "globals.sql.sha512".to_string())];
                for db in &self.memory.dumped_databases {
                    let dir = u.database_dump_dir(db);
                    checks.push((dir.clone(), Upgrade::checksum_file(&dir)));
                }
                checks
            }
        };
        let started = Instant::now();
        for (dir, sums) in &checks {
            let result = self
                .host_read(&u.target.host, &Upgrade::verify_checksum_command(dir, sums))
                .await;
            if let Err(e) = result {
                let message = format!("CHECKSUM MISMATCH in {dir} ({sums}): the artifact is corrupt; nothing was restored. {e}");
                sink.gate(message.clone(), false);
                return Err(StepError::gate(message));
            }
        }
        let detail = format!(
            "sha512 verified on {} for {} checksum file(s) in {:.0} ms",
            u.target.host,
            checks.len(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        sink.gate(detail.clone(), true);
        Ok(detail)
    }

    async fn transfer(&self, sink: &Sink) -> Result<String, StepError> {
        let u = &self.upgrade;
        if u.source.host != u.target.host {
            for file in self.artifact_files().await? {
                self.copy_file(&format!("{}/{file}", u.dump_dir), sink)
                    .await?;
            }
        }
        self.verify_checksums(sink).await
    }

    /// Move one file from the source host to the same path on the target host, in chunks,
    /// through the jump host.
    async fn copy_file(&self, path: &str, sink: &Sink) -> Result<(), StepError> {
        let u = &self.upgrade;
        let q = shell_quote(path);
        let size: u64 = self
            .host_read(&u.source.host, &format!("stat -c %s {q}"))
            .await?
            .trim()
            .parse()
            .map_err(|_| format!("cannot read the size of {path}"))?;
        let parent = std::path::Path::new(path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into());
        self.host_read(
            &u.target.host,
            &format!("mkdir -p {} && rm -f {q}.part.*", shell_quote(&parent)),
        )
        .await?;
        let started = Instant::now();
        let chunks = size.div_ceil(TRANSFER_CHUNK).max(1);
        for i in 0..chunks {
            // Command output is text: the chunk crosses as base64 (coreutils, ~1 GB/s to encode).
            let encoded = self
                .ctx
                .hosts()
                .run_checked(
                    &u.source.host,
                    &format!(
                        "dd if={q} bs=1M skip={} count={} status=none | base64 -w0",
                        i * (TRANSFER_CHUNK >> 20),
                        TRANSFER_CHUNK >> 20
                    ),
                    HOST_COMMAND_TIMEOUT,
                    &mut |_| {},
                )
                .await?
                .stdout;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(fail)?;
            self.ctx
                .hosts()
                .upload(
                    &u.target.host,
                    &format!("{path}.part.{i:06}"),
                    &bytes,
                    HOST_COMMAND_TIMEOUT,
                )
                .await?;
        }
        self.host_read(
            &u.target.host,
            &format!("cat {q}.part.* > {q} && rm -f {q}.part.*"),
        )
        .await?;
        sink.output(format!(
            "{path}: {} moved {} → {} in {:.1} s ({}/s)",
            crate::readings::text::human_bytes(size as i64),
            u.source.host,
            u.target.host,
            started.elapsed().as_secs_f64(),
            crate::readings::text::human_bytes(
                (size as f64 / started.elapsed().as_secs_f64().max(0.001)) as i64
            )
        ));
        Ok(())
    }

    // ---- restore --------------------------------------------------------------------------

    /// Source cluster's default encoding and locale (template1), for the scratch cluster.
    async fn source_locale(&self) -> Result<(String, String), StepError> {
        let row = self
            .admin(&self.upgrade.source)
            .await?
            .query_one(
                "SELECT datcollate::text, pg_encoding_to_char(encoding)::text FROM pg_database WHERE datname = 'template1'",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok((row.get(0), row.get(1)))
    }

    async fn test_restore(&mut self, sink: &Sink) -> Result<String, StepError> {
        let u = self.upgrade.clone();
        self.verify_checksums(sink).await?;
        let (locale, encoding) = self.source_locale().await?;
        let mut scratch = u.clone();
        scratch.target = u.scratch_node();
        let started = Instant::now();
        let result = async {
            self.ctx
                .host_run(
                    &u.target.host,
                    &u.scratch_init_command(&locale, &encoding),
                    HOST_COMMAND_TIMEOUT,
                    sink,
                )
                .await?;
            self.restore_into(&scratch, sink).await
        }
        .await;
        let stopped = self
            .ctx
            .host_run(
                &u.target.host,
                &u.scratch_stop_command(),
                QUICK_COMMAND_TIMEOUT,
                sink,
            )
            .await;
        let allowed = result?;
        stopped?;
        Ok(format!(
            "scratch restore into PostgreSQL {} passed in {:.0} ms{}",
            u.target.version,
            started.elapsed().as_secs_f64() * 1000.0,
            if allowed.is_empty() {
                String::new()
            } else {
                format!("; allowed errors: {}", allowed.join("; "))
            }
        ))
    }

    async fn restore(&mut self, recheck: bool, sink: &Sink) -> Result<String, StepError> {
        let u = self.upgrade.clone();
        self.verify_checksums(sink).await?;
        // The restore connects to the maintenance database; a crash may have left it dropped.
        self.repair_maintenance_db(&u.target, sink).await?;
        let admin = self.admin(&u.target).await?;
        if self.memory.target_databases_before.is_none() {
            let before: BTreeSet<String> = admin
                .query("SELECT datname::text FROM pg_database", &[])
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let roles: BTreeSet<String> = admin
                .query("SELECT rolname::text FROM pg_roles", &[])
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            self.memory.target_databases_before = Some(before);
            self.memory.target_roles_before = Some(roles);
            self.remember()?;
        }
        if recheck {
            sink.output("a restore may have half-run: returning the target to empty first");
            let emptied = self.empty_target(sink).await?;
            sink.output(emptied);
        }
        let started = Instant::now();
        let allowed = self.restore_into(&u, sink).await?;
        self.memory.allowed_errors = allowed.clone();
        self.remember()?;
        Ok(format!(
            "restored into {} in {:.0} ms; allowed errors: {}",
            u.target.name,
            started.elapsed().as_secs_f64() * 1000.0,
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join("; ")
            }
        ))
    }

    /// Restore the artifact into `into.target` (the real target or the scratch cluster).
    /// Returns the allowed errors met; any other error fails.
    async fn restore_into(&self, into: &Upgrade, sink: &Sink) -> Result<Vec<String>, StepError> {
        let host = &into.target.host;
        match into.method() {
            Method::Dumpall => {
                let split: u64 = self
                    .host_read(host, &into.dumpall_split_line_command())
                    .await?
                    .trim()
                    .parse()
                    .map_err(|_| {
                        "the dump has no \\connect line: not a pg_dumpall artifact".to_string()
                    })?;
                let globals = self
                    .host_read(host, &into.dumpall_globals_text_command(split))
                    .await?;
                let allowed = self.restore_globals(into, &globals, sink).await?;
                let started = Instant::now();
                self.ctx
                    .host_run(
                        host,
                        &into.dumpall_databases_restore_command(&split.to_string()),
                        HOST_COMMAND_TIMEOUT,
                        sink,
                    )
                    .await
                    .map_err(|e| format!("restore failed (ON_ERROR_STOP): {e}"))?;
                sink.output(format!(
                    "databases restored in {:.0} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                ));
                Ok(allowed)
            }
            Method::Parallel => {
                let globals = self
                    .host_read(host, &format!("cat {}", shell_quote(&into.globals_file())))
                    .await?;
                let allowed = self.restore_globals(into, &globals, sink).await?;
                for db in &self.memory.dumped_databases {
                    let started = Instant::now();
                    self.ctx
                        .host_run(
                            host,
                            &into.database_restore_command(db),
                            HOST_COMMAND_TIMEOUT,
                            sink,
                        )
                        .await
                        .map_err(|e| format!("restore of {db} failed (--exit-on-error): {e}"))?;
                    sink.output(format!(
                        "pg_restore {db}: {:.0} ms",
                        started.elapsed().as_secs_f64() * 1000.0
                    ));
                }
                Ok(allowed)
            }
            Method::PgUpgrade { .. } => Err("pg-upgrade has no restore step".into()),
        }
    }

    /// Run the globals script with ON_ERROR_STOP. When psql stops on an error that is on the
    /// allow-list, record it and continue from the statement after it (re-sending the
    /// script's leading `SET`s); any other error fails.
    async fn restore_globals(
        &self,
        into: &Upgrade,
        globals: &str,
        sink: &Sink,
    ) -> Result<Vec<String>, StepError> {
        let host = &into.target.host;
        let lines: Vec<&str> = globals.lines().collect();
        let preamble = lines
            .iter()
            .position(|l| {
                let t = l.trim();
                !(t.is_empty()
                    || t.starts_with("--")
                    || t.starts_with("SET ")
                    || t.starts_with('\\'))
            })
            .unwrap_or(lines.len());
        let script_path = format!("{}/globals.restore.sql", into.dump_dir);
        let mut next = preamble;
        let mut allowed = Vec::new();
        loop {
            let mut script = lines[..preamble].join("\n");
            script.push('\n');
            script.push_str(&lines[next..].join("\n"));
            script.push('\n');
            self.ctx
                .hosts()
                .upload(host, &script_path, script.as_bytes(), QUICK_COMMAND_TIMEOUT)
                .await?;
            let output = self
                .ctx
                .hosts()
                .run(
                    host,
                    &into.globals_restore_command(&script_path),
                    HOST_COMMAND_TIMEOUT,
                    &mut |_| {},
                )
                .await?;
            if output.success() {
                return Ok(allowed);
            }
            let Some((line, message)) = first_psql_error(&output.stderr) else {
                return Err(format!(
                    "globals restore failed (exit {}): {}",
                    output.exit_status,
                    output.stderr.trim()
                )
                .into());
            };
            // 1-based line in the script → index into `lines`.
            let original = (line as usize)
                .checked_sub(1)
                .filter(|i| *i >= preamble)
                .map(|i| next + (i - preamble));
            let benign = BENIGN_RESTORE_ERRORS.iter().any(|b| message.contains(b));
            match original {
                Some(index) if benign && index < lines.len() => {
                    sink.output(format!(
                        "allowed restore error (globals line {}): {message}",
                        index + 1
                    ));
                    allowed.push(message);
                    next = index + 1;
                }
                _ => {
                    let shown = format!("RESTORE ERROR not on the allow-list: {message}");
                    sink.output(shown.clone());
                    return Err(StepError::Failed(shown));
                }
            }
        }
    }

    /// Return the target to how it was before the restore: end the restore's leftover
    /// sessions, drop the databases and roles the restore created, and recreate the
    /// maintenance database empty. Succeeds only once a fresh look shows exactly that state;
    /// a restore process orphaned by a crash may create something meanwhile, so it retries.
    async fn empty_target(&self, sink: &Sink) -> Result<String, StepError> {
        const ATTEMPTS: usize = 3;
        let t = &self.upgrade.target;
        if !Self::answers(t).await {
            return Err(format!("{} does not answer: cannot return it to empty", t.name).into());
        }
        self.ctx.forget_clients();
        let mut left = Vec::new();
        for _ in 0..ATTEMPTS {
            self.empty_target_once(sink).await?;
            left = self.target_leftovers().await?;
            if left.is_empty() {
                self.ctx.forget_clients();
                return Ok(format!(
                    "{} is back to its state before the restore: no database or role of the restore, {} present and empty",
                    t.name, t.maintenance_db
                ));
            }
            sink.output(format!("{} still holds {}: again", t.name, left.join(", ")));
        }
        Err(format!(
            "{} is not empty after {ATTEMPTS} attempts: {}",
            t.name,
            left.join(", ")
        )
        .into())
    }

    /// What the target keeps through an undo of the restore: what it had before, the
    /// templates and the maintenance database.
    fn target_keeps(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let t = &self.upgrade.target;
        let mut dbs = self
            .memory
            .target_databases_before
            .clone()
            .unwrap_or_default();
        dbs.extend(
            [FALLBACK_DB, "template0", t.maintenance_db.as_str()]
                .iter()
                .map(|s| s.to_string()),
        );
        let roles = self.memory.target_roles_before.clone().unwrap_or_default();
        (dbs, roles)
    }

    async fn empty_target_once(&self, sink: &Sink) -> Result<(), StepError> {
        let t = &self.upgrade.target;
        let (keep_dbs, keep_roles) = self.target_keeps();
        let client =
            pg::connect(&Endpoint::node(t, FALLBACK_DB), SessionSettings::EXECUTOR).await?;
        // A restore cut off by a crash of its driver may still run: its sessions end first.
        let ended = client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND application_name IN ('psql', 'pg_restore')",
                &[],
            )
            .await
            .map_err(db_err)?
            .len();
        if ended > 0 {
            sink.output(format!(
                "ended {ended} restore session(s) left on {}",
                t.name
            ));
        }
        let dbs: Vec<String> = client
            .query("SELECT datname::text FROM pg_database", &[])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for db in dbs.iter().filter(|d| !keep_dbs.contains(*d)) {
            client
                .simple_query(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(db)
                ))
                .await
                .map_err(db_err)?;
            sink.output(format!("dropped database {db} on {}", t.name));
        }
        let maint = &t.maintenance_db;
        if maint != FALLBACK_DB {
            // Two statements: a multi-statement query is one transaction, and neither may run
            // in one. A crash between them leaves it missing: the next attempt creates it.
            if dbs.contains(maint) {
                client
                    .simple_query(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        quote_ident(maint)
                    ))
                    .await
                    .map_err(db_err)?;
            }
            client
                .simple_query(&format!(
                    "CREATE DATABASE {} TEMPLATE template0",
                    quote_ident(maint)
                ))
                .await
                .map_err(db_err)?;
            sink.output(format!("recreated {maint} empty on {}", t.name));
        }
        let roles: Vec<String> = client
            .query(
                "SELECT rolname::text FROM pg_roles WHERE rolname !~ '^pg_' AND oid <> 10",
                &[],
            )
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|r| !keep_roles.contains(r))
            .collect();
        if !roles.is_empty() {
            let list = roles
                .iter()
                .map(|r| quote_ident(r))
                .collect::<Vec<_>>()
                .join(", ");
            client
                .simple_query(&format!("DROP OWNED BY {list}; DROP ROLE {list}"))
                .await
                .map_err(db_err)?;
            sink.output(format!("dropped roles {} on {}", roles.join(", "), t.name));
        }
        Ok(())
    }

    /// What makes the target differ from its state before the restore, read afresh: a
    /// database or role the restore made, a missing maintenance database, or one with tables.
    async fn target_leftovers(&self) -> Result<Vec<String>, StepError> {
        let t = &self.upgrade.target;
        let (keep_dbs, keep_roles) = self.target_keeps();
        let client =
            pg::connect(&Endpoint::node(t, FALLBACK_DB), SessionSettings::EXECUTOR).await?;
        let dbs: BTreeSet<String> = client
            .query("SELECT datname::text FROM pg_database", &[])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut left: Vec<String> = dbs
            .iter()
            .filter(|d| !keep_dbs.contains(*d))
            .map(|d| format!("database {d}"))
            .collect();
        left.extend(
            client
                .query(
                    "SELECT rolname::text FROM pg_roles WHERE rolname !~ '^pg_' AND oid <> 10",
                    &[],
                )
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .filter(|r| !keep_roles.contains(r))
                .map(|r| format!("role {r}")),
        );
        let maint = &t.maintenance_db;
        if !dbs.contains(maint) {
            left.push(format!("no {maint} database"));
        } else if maint != FALLBACK_DB {
            let relations: i64 = pg::connect(&Endpoint::node(t, maint), SessionSettings::EXECUTOR)
                .await?
                .query_one(USER_RELATIONS_SQL, &[])
                .await
                .map_err(db_err)?
                .get(0);
            if relations > 0 {
                left.push(format!("{relations} relation(s) in {maint}"));
            }
        }
        Ok(left)
    }

    // ---- pg_upgrade -----------------------------------------------------------------------

    async fn stop_node(&self, node: &Node, sink: &Sink) -> Result<String, StepError> {
        self.ctx.forget_clients();
        if Self::answers(node).await {
            self.ctx
                .host_run(
                    &node.host,
                    &node.control.stop,
                    QUICK_COMMAND_TIMEOUT * 5,
                    sink,
                )
                .await?;
        }
        if Self::answers(node).await {
            return Err(format!("{} still answers after stop", node.name).into());
        }
        Ok(format!("{} is stopped", node.name))
    }

    async fn start_node(&self, node: &Node, sink: &Sink) -> Result<String, StepError> {
        self.ctx.forget_clients();
        if !Self::answers(node).await {
            self.ctx
                .host_run(
                    &node.host,
                    &node.control.start,
                    QUICK_COMMAND_TIMEOUT * 5,
                    sink,
                )
                .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Self::answers(node).await {
            if Instant::now() > deadline {
                return Err(format!("{} does not answer after start", node.name).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(format!("{} answers", node.name))
    }

    async fn stop_target(&self, sink: &Sink) -> Result<String, StepError> {
        let u = &self.upgrade;
        let stopped = self.stop_node(&u.target, sink).await?;
        self.ctx
            .host_run(
                &u.target.host,
                &format!(
                    "mkdir -p {} && {}",
                    shell_quote(&u.dump_dir),
                    u.save_pristine_command()
                ),
                HOST_COMMAND_TIMEOUT,
                sink,
            )
            .await?;
        Ok(format!("{stopped}; pristine copy in {}", u.pristine_dir()))
    }

    async fn pg_upgrade(
        &self,
        check_only: bool,
        recheck: bool,
        sink: &Sink,
    ) -> Result<String, StepError> {
        let u = &self.upgrade;
        self.stop_servers_left_by_pg_upgrade(sink).await?;
        if recheck && !check_only {
            sink.output("pg_upgrade may have half-run: restoring the pristine target first");
            self.ctx
                .host_run(
                    &u.target.host,
                    &u.undo_pg_upgrade_command(),
                    HOST_COMMAND_TIMEOUT,
                    sink,
                )
                .await?;
        }
        let started = Instant::now();
        self.ctx
            .host_run(
                &u.target.host,
                &u.pg_upgrade_command(check_only),
                HOST_COMMAND_TIMEOUT,
                sink,
            )
            .await?;
        Ok(format!(
            "pg_upgrade {} finished in {:.0} ms",
            if check_only { "--check" } else { "" },
            started.elapsed().as_secs_f64() * 1000.0
        ))
    }

    /// Stop the servers a `pg_upgrade` of this run started and left running when it was cut
    /// off: a postmaster on the source's or the target's data directory whose socket directory
    /// is this run's pg_upgrade work directory (`-s`), and only while its PID is alive. A
    /// server started any other way is never touched.
    async fn stop_servers_left_by_pg_upgrade(&self, sink: &Sink) -> Result<(), StepError> {
        let u = &self.upgrade;
        let work = shell_quote(&u.dump_dir);
        let script = [&u.source, &u.target]
            .iter()
            .map(|node| {
                let data = shell_quote(&node.data_dir);
                format!(
                    "f={data}/postmaster.pid; \
                     if [ -f \"$f\" ] && kill -0 \"$(head -n 1 \"$f\")\" 2>/dev/null \
                        && [ -d {work} ] && [ \"$(cd \"$(sed -n 5p \"$f\")\" 2>/dev/null && pwd -P)\" = \"$(cd {work} && pwd -P)\" ]; then \
                       {pg_ctl} -D {data} -m fast -w -t 60 stop >/dev/null && echo {data}; \
                     fi",
                    pg_ctl = shell_quote(&format!("{}/pg_ctl", node.bin_dir)),
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let stopped = self.host_read(&u.target.host, &script).await?;
        for data_dir in stopped.lines().filter(|l| !l.trim().is_empty()) {
            sink.output(format!(
                "stopped the server a cut-off pg_upgrade of this run left running on {}",
                data_dir.trim()
            ));
        }
        if !stopped.trim().is_empty() {
            self.ctx.forget_clients();
        }
        Ok(())
    }

    async fn undo_pg_upgrade(&self, sink: &Sink) -> Result<String, StepError> {
        let u = &self.upgrade;
        self.stop_servers_left_by_pg_upgrade(sink).await?;
        if Self::answers(&u.target).await {
            return Err(format!(
                "{} is running on the upgraded data; stop it first",
                u.target.name
            )
            .into());
        }
        self.ctx
            .host_run(
                &u.target.host,
                &u.undo_pg_upgrade_command(),
                HOST_COMMAND_TIMEOUT,
                sink,
            )
            .await?;
        Ok(format!(
            "{} re-enabled; {} restored from its pristine copy",
            u.source.data_dir, u.target.data_dir
        ))
    }

    async fn start_target(&self, sink: &Sink) -> Result<String, StepError> {
        let started = self.start_node(&self.upgrade.target, sink).await?;
        let (major, _) = self.server_version(&self.upgrade.target).await?;
        if major != self.upgrade.target.version {
            return Err(format!("{started}, but it runs PostgreSQL {major}").into());
        }
        Ok(format!("{started} and runs PostgreSQL {major}"))
    }

    // ---- validate, switch -----------------------------------------------------------------

    async fn validate(&mut self, sink: &Sink) -> Result<String, StepError> {
        let baseline = self
            .memory
            .baseline
            .clone()
            .ok_or("no baseline was recorded; run the baseline step first")?;
        let databases: Vec<String> = baseline.databases.keys().cloned().collect();
        let target = &self.upgrade.target;
        let mut now = self.snapshot(target, &databases).await?;
        // Databases on the target that the source did not have are differences too.
        let on_target: Vec<String> = self
            .admin(target)
            .await?
            .query(plan::DATABASES_SQL, &[])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for db in on_target {
            now.databases.entry(db).or_default();
        }
        let problems = baseline.differences(&now);
        for (db, one) in &now.databases {
            sink.output(format!(
                "validated {db}: {} tables, {} sequences, extensions {}",
                one.tables.len(),
                one.sequences.len(),
                one.extensions.iter().cloned().collect::<Vec<_>>().join(",")
            ));
        }
        let detail = format!(
            "{} vs baseline: {}; {}",
            target.name,
            now.summary(),
            if problems.is_empty() {
                "all equal".to_string()
            } else {
                problems.join("; ")
            }
        );
        sink.gate(detail.clone(), problems.is_empty());
        self.memory.validated = Some(now);
        self.remember()?;
        if problems.is_empty() {
            Ok(detail)
        } else {
            Err(StepError::gate(format!(
                "validation failed: {}",
                problems.join("; ")
            )))
        }
    }

    async fn repoint(&self, sink: &Sink) -> Result<String, StepError> {
        let u = &self.upgrade;
        self.ctx.back_up_inventory(&self.inventory_path)?;
        for route in &u.routes {
            let b = &route.bouncer;
            let targets: Vec<(&str, pgbouncer_ini::AliasTarget)> = route
                .aliases
                .iter()
                .map(|alias| (alias.name.as_str(), u.new_alias_target(alias)))
                .collect();
            repoint::repoint(&self.ctx, b, &ini_backup(b), &b.config, &targets, sink).await?;
        }
        self.ctx
            .rewrite_inventory(&self.inventory_path, &u.inventory_after, sink)?;
        self.check_routes(&u.target).await
    }

    async fn undo_repoint(&self, sink: &Sink) -> Result<String, StepError> {
        let u = &self.upgrade;
        for route in &u.routes {
            repoint::undo_repoint(&self.ctx, &route.bouncer, &ini_backup(&route.bouncer), sink)
                .await?;
        }
        self.ctx.restore_inventory(&self.inventory_path, sink)?;
        self.check_routes(&u.source).await
    }

    /// Every alias of the source routes to `node`, as pgbouncer reports it.
    async fn check_routes(&self, node: &Node) -> Result<String, StepError> {
        let mut wrong = Vec::new();
        let mut count = 0;
        for route in &self.upgrade.routes {
            let admin = self.ctx.bouncer_admin(&route.bouncer).await?;
            let reading = queries::pgbouncer(&admin, &route.bouncer.name).await?;
            for alias in &route.aliases {
                count += 1;
                let shown = reading.databases.iter().find(|d| d.name == alias.name);
                let port = shown.and_then(|d| d.port);
                if port != Some(i64::from(node.port)) {
                    wrong.push(format!("{} → port {port:?}", alias.name));
                }
            }
        }
        if wrong.is_empty() {
            Ok(format!(
                "{count} aliases route to {} (port {})",
                node.name, node.port
            ))
        } else {
            Err(format!("aliases not routed to {}: {}", node.name, wrong.join(", ")).into())
        }
    }

    async fn retire(&self, sink: &Sink) -> Result<String, StepError> {
        let s = &self.upgrade.source;
        if Self::answers(s).await {
            return Err(StepError::precondition(format!(
                "{} is running; stop it before retiring it",
                s.name
            )));
        }
        self.ctx
            .host_run(
                &s.host,
                &self.upgrade.retire_command(),
                HOST_COMMAND_TIMEOUT,
                sink,
            )
            .await?;
        Ok(format!("{} deleted; {} is retired", s.data_dir, s.name))
    }
}

/// The run-dir file that keeps `bouncer`'s config as it was before the repoint.
fn ini_backup(bouncer: &inventory::Pgbouncer) -> String {
    format!("pgbouncer-{}.ini.before", hex::encode(&bouncer.name))
}

/// The first `psql:FILE:LINE: ERROR:  message` in psql's stderr.
pub fn first_psql_error(stderr: &str) -> Option<(u64, String)> {
    stderr.lines().find_map(|line| {
        let (location, message) = line.split_once(": ERROR:")?;
        let (_, number) = location.rsplit_once(':')?;
        Some((number.trim().parse().ok()?, message.trim().to_string()))
    })
}

impl Actions for MajorUpgradeActions {
    async fn preconditions(&mut self, step: &Step) -> Vec<PreconditionResult> {
        match UpgradeStep::of(step) {
            Ok(UpgradeStep::Preflight) => self.preflight().await,
            _ => Vec::new(),
        }
    }

    async fn observations(&mut self, step: &Step) -> Vec<Observation> {
        let Ok(kind) = UpgradeStep::of(step) else {
            return vec![Observation::new("step", step.id.to_string())];
        };
        match kind {
            UpgradeStep::Repoint | UpgradeStep::ResumeTraffic => vec![
                Observation::new("target", self.upgrade.target.name.clone()),
                Observation::new(
                    "paused",
                    format!("{:?}", self.paused_aliases().await.unwrap_or_default()),
                ),
                Observation::new("validated", self.memory.validated.is_some().to_string()),
            ],
            UpgradeStep::StartTarget | UpgradeStep::RetireOldCluster => vec![
                Observation::new("old.data_dir", self.upgrade.source.data_dir.clone()),
                Observation::new(
                    "old.running",
                    Self::answers(&self.upgrade.source).await.to_string(),
                ),
            ],
            _ => vec![Observation::new("step", step.id.to_string())],
        }
    }

    async fn action(
        &mut self,
        step: &Step,
        recheck: bool,
        sink: Sink,
    ) -> Result<String, StepError> {
        announce_recheck(step, recheck, &sink);
        let started = Instant::now();
        let result = match UpgradeStep::of(step)? {
            UpgradeStep::Preflight => Ok("every precondition held".into()),
            UpgradeStep::StopTarget => self.stop_target(&sink).await,
            UpgradeStep::UpgradeCheck => self.pg_upgrade(true, recheck, &sink).await,
            UpgradeStep::StopTraffic => self.stop_traffic(&sink).await,
            UpgradeStep::Baseline => self.baseline(&sink).await,
            UpgradeStep::Dump => self.dump(recheck, &sink).await,
            UpgradeStep::Transfer => self.transfer(&sink).await,
            UpgradeStep::TestRestore => self.test_restore(&sink).await,
            UpgradeStep::Restore => self.restore(recheck, &sink).await,
            UpgradeStep::StopSource => {
                let source = self.upgrade.source.clone();
                self.stop_node(&source, &sink).await
            }
            UpgradeStep::PgUpgrade => self.pg_upgrade(false, recheck, &sink).await,
            UpgradeStep::StartTarget => self.start_target(&sink).await,
            UpgradeStep::Validate => self.validate(&sink).await,
            UpgradeStep::Repoint => self.repoint(&sink).await,
            UpgradeStep::ResumeTraffic => self.resume_traffic(&sink).await,
            UpgradeStep::StopOldCluster => {
                let source = self.upgrade.source.clone();
                self.stop_node(&source, &sink)
                    .await
                    .map(|s| format!("{s}; {} kept intact as the way back", source.data_dir))
            }
            UpgradeStep::RetireOldCluster => self.retire(&sink).await,
        };
        sink.output(format!(
            "step {} took {:.0} ms",
            step.id,
            started.elapsed().as_secs_f64() * 1000.0
        ));
        result
    }

    async fn undo(&mut self, step: &Step, _recheck: bool, sink: Sink) -> Result<String, StepError> {
        let u = self.upgrade.clone();
        match UpgradeStep::of(step)? {
            UpgradeStep::StopTarget => self.start_node(&u.target, &sink).await,
            UpgradeStep::StopTraffic => self.resume_traffic(&sink).await,
            UpgradeStep::Restore => self.empty_target(&sink).await,
            UpgradeStep::StopSource => self.start_node(&u.source, &sink).await,
            UpgradeStep::PgUpgrade => self.undo_pg_upgrade(&sink).await,
            UpgradeStep::StartTarget => self.stop_node(&u.target, &sink).await,
            UpgradeStep::Repoint => self.undo_repoint(&sink).await,
            UpgradeStep::Preflight
            | UpgradeStep::UpgradeCheck
            | UpgradeStep::Baseline
            | UpgradeStep::Dump
            | UpgradeStep::Transfer
            | UpgradeStep::TestRestore
            | UpgradeStep::Validate
            | UpgradeStep::ResumeTraffic
            | UpgradeStep::StopOldCluster
            | UpgradeStep::RetireOldCluster => Ok("nothing to undo".into()),
        }
    }

    async fn force_resume(&mut self, sink: Sink) -> Result<String, StepError> {
        self.resume_traffic(&sink).await
    }

    fn pause_bound(&self) -> Duration {
        self.upgrade.params.pause_bound
    }

    fn resume_is_safe(&self, plan: &Plan, state: &EngineState) -> bool {
        // Until the repoint starts, every alias still routes to the untouched source.
        not_begun(plan, state, UpgradeStep::Repoint.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_errors_are_located() {
        let stderr =
            "psql:/tmp/x/globals.restore.sql:12: ERROR:  role \"postgres\" already exists\n";
        assert_eq!(
            first_psql_error(stderr),
            Some((12, "role \"postgres\" already exists".to_string()))
        );
        assert_eq!(first_psql_error("psql: error: connection refused"), None);
    }

    #[test]
    fn differences_name_what_is_missing() {
        let mut before = ClusterSnapshot::default();
        before.roles.insert("app".into(), "login".into());
        let mut db = DatabaseSnapshot::default();
        db.tables.insert("s.t".into(), 3);
        db.sequences.insert("s.q".into(), Some(7));
        db.extensions.insert("citext".into());
        before.databases.insert("app".into(), db.clone());
        assert!(before.differences(&before).is_empty());
        let mut after = before.clone();
        after
            .databases
            .get_mut("app")
            .unwrap()
            .tables
            .insert("s.t".into(), 2);
        after.databases.get_mut("app").unwrap().extensions.clear();
        after.roles.clear();
        let problems = after_problems(&before, &after);
        assert!(problems.iter().any(|p| p.contains("role app is missing")));
        assert!(problems
            .iter()
            .any(|p| p.contains("has 2 rows, expected 3")));
        assert!(problems.iter().any(|p| p.contains("extension citext")));
    }

    fn after_problems(before: &ClusterSnapshot, after: &ClusterSnapshot) -> Vec<String> {
        before.differences(after)
    }
}
