//! The crash matrix: every runbook, driven headless by the real binary on a real lab (under
//! application load where it has traffic), is killed with SIGKILL at every step boundary, at
//! seeded points inside long steps, inside its pause (left to the pause guard) and at its
//! fixed points; the same command resumes it each time, and the end state is checked against
//! the servers. `CUTOVER_MATRIX_SEEDS=1,2,3,...` runs more seeds (one fresh lab each).

mod common;
mod matrix;

use cutover::engine::{EntryKind, JournalEntry};
use cutover::lab::citus::{CitusLab, CLUSTER, DATABASE};
use cutover::lab::target::{UpgradeLab, UpgradeLabOptions, APP_DB};
use cutover::lab::{TestLab, P1_DB};
use cutover::pg::{self, Endpoint, SessionSettings};
use matrix::{KillPoint, Subject, Then};
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

// One line per runbook (and method): the whole matrix of it.
matrix_tests! {
    shard_split: Split,
    major_upgrade_dumpall: Upgrade<Dumpall>,
    major_upgrade_parallel: Upgrade<Parallel>,
    major_upgrade_pg_upgrade: Upgrade<PgUpgradeLink>,
    citus_bootstrap: Citus,
    table_copy: Copy,
    logical_move: Move,
    logical_move_citus: MoveCitus,
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn was(entries: &[JournalEntry], step: &str, kind: EntryKind) -> bool {
    entries
        .iter()
        .any(|e| e.kind == kind && e.step.as_ref().is_some_and(|s| s.as_str() == step))
}

async fn paused_on(bouncer: &cutover::inventory::Pgbouncer) -> bool {
    let admin = pg::connect(
        &Endpoint::pgbouncer_admin(bouncer),
        SessionSettings::PGBOUNCER,
    )
    .await
    .expect("pgbouncer admin");
    cutover::readings::queries::pgbouncer(&admin, &bouncer.name)
        .await
        .expect("SHOW DATABASES")
        .databases
        .iter()
        .any(|d| d.paused)
}

// ---- shard split ---------------------------------------------------------------------------

const SPLIT_DOCS: u64 = 2_000;

struct Split {
    lab: TestLab,
    load: Option<(
        watch::Sender<bool>,
        JoinHandle<cutover::lab::load::LoadReport>,
    )>,
}

impl Subject for Split {
    const RUNBOOK: &'static str = "shard-split";

    async fn start() -> Self {
        Split {
            lab: common::lab(SPLIT_DOCS).await,
            load: None,
        }
    }
    fn inventory_path(&self) -> PathBuf {
        self.lab.config.inventory_path()
    }
    fn params(&self) -> BTreeMap<String, String> {
        params(&[
            ("from", "p1"),
            ("to", "p2"),
            ("node", "pg2"),
            ("shards", "512-1023"),
            ("pause-bound-ms", "5000"),
        ])
    }
    fn long_steps(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("base-backup", 800),
            ("promote", 400),
            ("delete-invalid", 200),
        ]
    }
    fn pause_step(&self) -> Option<&'static str> {
        Some("stop-traffic")
    }
    async fn paused(&self) -> bool {
        paused_on(&self.lab.inventory.pgbouncers[0]).await
    }
    async fn start_load(&mut self) {
        let (stop, stopped) = watch::channel(false);
        let options = cutover::lab::load::LoadOptions {
            endpoint: cutover::lab::load::entry_endpoint(&self.lab.inventory)
                .expect("the entry alias"),
            rate: 20,
            duration: Duration::from_secs(3600),
            workers: 2,
            out: None,
        };
        let task = tokio::spawn(async move {
            cutover::lab::load::run(options, stopped)
                .await
                .expect("load")
        });
        self.load = Some((stop, task));
    }
    async fn converged(&mut self, _entries: &[JournalEntry]) {
        let (stop, task) = self.load.take().expect("load running");
        stop.send(true).expect("stop the load");
        let load = task.await.expect("load task");
        let c = &self.lab.config;
        let mut ids: Vec<String> = Vec::new();
        for (port, db) in [(c.pg1_port, P1_DB), (c.pg2_port, "commcarehq_p2")] {
            ids.extend(
                common::connect(port, db)
                    .await
                    .query("SELECT form_id::text FROM forms", &[])
                    .await
                    .expect("forms")
                    .iter()
                    .map(|r| r.get::<_, String>(0)),
            );
        }
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "no form on both nodes");
        for id in &load.committed_ids {
            assert!(
                unique.contains(&id.to_string()),
                "committed form {id} is present"
            );
        }
        let total = ids.len() as u64;
        let least = SPLIT_DOCS + load.committed;
        assert!(
            (least..=least + load.failed).contains(&total),
            "{total} forms: {SPLIT_DOCS} loaded, {} committed under load, {} failed",
            load.committed,
            load.failed
        );
        assert!(load.committed > 0, "the load ran: {:?}", load.errors);
        let foreign: i64 = common::pg1_forms(&self.lab)
            .await
            .query_one(
                "SELECT count(*) FROM forms WHERE (hashtext(form_id::text) & 1023) >= 512",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(foreign, 0, "pg1 keeps only its own shards");
        let routes = common::plproxy_routes(c.pg1_port).await;
        assert!((0..512).all(|s| routes[&s] == P1_DB));
        assert!((512..1024).all(|s| routes[&s] == "commcarehq_p2"));
        assert!(!self.paused().await, "no alias is left paused");
        let slots: i64 = common::connect(c.pg1_port, "postgres")
            .await
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .expect("slots")
            .get(0);
        assert_eq!(slots, 0, "no replication slot is left");
    }
}

// ---- major upgrade -------------------------------------------------------------------------

trait Method {
    const NAME: &'static str;
    fn long_steps() -> Vec<(&'static str, u64)>;
    fn fixed_points() -> Vec<KillPoint> {
        Vec::new()
    }
    /// What the journal must say once the fixed points were met.
    fn journal_says() -> Vec<&'static str> {
        Vec::new()
    }
}

struct Dumpall;
impl Method for Dumpall {
    const NAME: &'static str = "dumpall";
    fn long_steps() -> Vec<(&'static str, u64)> {
        vec![("dump", 300), ("restore", 600)]
    }
    /// The case: a kill during the restore, then a kill while the re-check returns
    /// the target to empty that leaves it without its `postgres` database (as a kill between
    /// the undo's DROP and CREATE does).
    fn fixed_points() -> Vec<KillPoint> {
        vec![
            KillPoint::output("restore", "allowed restore error"),
            KillPoint::output("restore", "returning the target to empty")
                .then(Then::Tamper("drop-postgres")),
        ]
    }
    fn journal_says() -> Vec<&'static str> {
        vec![
            "had no postgres database: re-created it empty",
            "no database or role of the restore, postgres present and empty",
        ]
    }
}

struct Parallel;
impl Method for Parallel {
    const NAME: &'static str = "parallel";
    fn long_steps() -> Vec<(&'static str, u64)> {
        vec![("dump", 300), ("restore", 600)]
    }
}

struct PgUpgradeLink;
impl Method for PgUpgradeLink {
    const NAME: &'static str = "pg-upgrade";
    fn long_steps() -> Vec<(&'static str, u64)> {
        vec![("upgrade-check", 1500), ("pg-upgrade", 1500)]
    }
    /// The case: the re-check of `upgrade-check` finds a postmaster that a cut-off
    /// `pg_upgrade --check` of this run left on the target.
    fn fixed_points() -> Vec<KillPoint> {
        vec![KillPoint::started("upgrade-check", 0).then(Then::Tamper("postmaster-left"))]
    }
    fn journal_says() -> Vec<&'static str> {
        vec!["stopped the server a cut-off pg_upgrade of this run left running"]
    }
}

/// Markers of the writes the load committed, and how many writes failed.
type MarkerLoad = (Vec<String>, u64);

struct Upgrade<M> {
    lab: UpgradeLab,
    before: BTreeMap<String, String>,
    load: Option<(watch::Sender<bool>, JoinHandle<MarkerLoad>)>,
    method: PhantomData<M>,
}

async fn connect(port: u16, dbname: &str) -> tokio_postgres::Client {
    common::connect(port, dbname).await
}

/// What a user checks after an upgrade: rows per table, sequences, roles, extensions. The
/// table the load writes to is left out (its rows are checked one by one).
async fn fingerprint(port: u16) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for row in connect(port, "postgres")
        .await
        .query("SELECT rolname::text, rolsuper, rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname !~ '^pg_'", &[])
        .await
        .expect("roles")
    {
        let (name, sup, login, limit): (String, bool, bool, i32) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        out.insert(format!("role {name}"), format!("{sup} {login} {limit}"));
    }
    let app = connect(port, APP_DB).await;
    let tables: Vec<String> = app
        .query("SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')", &[])
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in tables.iter().filter(|t| *t != "audit.events") {
        let n: i64 = app
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        out.insert(format!("table {table}"), n.to_string());
    }
    for row in app
        .query("SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences WHERE sequencename <> 'events_id_seq'", &[])
        .await
        .expect("sequences")
    {
        let (name, value): (String, Option<i64>) = (row.get(0), row.get(1));
        out.insert(format!("sequence {name}"), format!("{value:?}"));
    }
    for row in app
        .query("SELECT extname::text FROM pg_extension", &[])
        .await
        .expect("extensions")
    {
        out.insert(
            format!("extension {}", row.get::<_, String>(0)),
            "present".into(),
        );
    }
    out
}

impl<M: Method> Upgrade<M> {
    fn resolved(&self) -> cutover::runbooks::major_upgrade::plan::Upgrade {
        use cutover::runbooks::major_upgrade::plan;
        let inventory = cutover::inventory::load(&self.lab.inventory_path()).expect("inventory");
        plan::Upgrade::resolve(
            &inventory,
            plan::UpgradeParams::from_map(&self.params()).expect("params"),
        )
        .expect("resolve")
    }

    fn way_back_intact(&self) -> bool {
        let old = self.lab.dir.join("pg1");
        old.join("PG_VERSION").exists()
            && (old.join("global/pg_control").exists()
                || old.join("global/pg_control.old").exists())
    }
}

impl<M: Method> Subject for Upgrade<M> {
    const RUNBOOK: &'static str = "major-upgrade";

    fn name() -> String {
        format!("major-upgrade --method {}", M::NAME)
    }

    async fn start() -> Self {
        let lab = UpgradeLab::start(UpgradeLabOptions::default())
            .await
            .expect("upgrade lab up");
        let before = fingerprint(lab.source_port).await;
        Upgrade {
            lab,
            before,
            load: None,
            method: PhantomData,
        }
    }
    fn inventory_path(&self) -> PathBuf {
        self.lab.inventory_path()
    }
    fn params(&self) -> BTreeMap<String, String> {
        params(&[
            ("from", "pg1"),
            ("to", "pg1new"),
            ("method", M::NAME),
            ("jobs", "2"),
            ("pause-bound-ms", "10000"),
            ("min-soak-s", "0"),
        ])
    }
    fn through(&self) -> Option<&'static str> {
        Some("retire-old-cluster")
    }
    fn long_steps(&self) -> Vec<(&'static str, u64)> {
        M::long_steps()
    }
    fn fixed_points(&self) -> Vec<KillPoint> {
        M::fixed_points()
    }
    fn pause_step(&self) -> Option<&'static str> {
        Some("stop-traffic")
    }
    async fn paused(&self) -> bool {
        paused_on(&self.lab.inventory.pgbouncers[0]).await
    }
    /// Writes through the `app` alias, as the application would, each with its own marker.
    async fn start_load(&mut self) {
        let (stop, stopped) = watch::channel(false);
        let endpoint = self.lab.app_endpoint();
        let task = tokio::spawn(async move {
            let mut committed = Vec::new();
            let mut failed = 0;
            let mut client = None;
            while !*stopped.borrow() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if client.is_none() {
                    client = pg::connect(&endpoint, SessionSettings::PGBOUNCER)
                        .await
                        .ok();
                }
                let Some(c) = &client else { continue };
                let marker = uuid::Uuid::new_v4().to_string();
                match c
                    .simple_query(&format!(
                        "INSERT INTO audit.events (kind) VALUES ('load-{marker}')"
                    ))
                    .await
                {
                    Ok(_) => committed.push(marker),
                    Err(_) => {
                        failed += 1;
                        client = None;
                    }
                }
            }
            (committed, failed)
        });
        self.load = Some((stop, task));
    }
    async fn tamper(&self, tag: &str) {
        let u = self.resolved();
        match tag {
            "drop-postgres" => {
                connect(self.lab.target_port, "template1")
                    .await
                    .simple_query("DROP DATABASE IF EXISTS postgres WITH (FORCE)")
                    .await
                    .expect("drop postgres on the target");
            }
            "postmaster-left" => {
                // As `pg_upgrade` starts the new cluster: no TCP, its socket in the work dir.
                let options = format!(
                    "-p {} -c listen_addresses='' -c unix_socket_permissions=0700 -c unix_socket_directories='{}'",
                    u.target.port, u.dump_dir
                );
                let started = cutover::lab::proc::run_checked(
                    cutover::lab::proc::service_command(format!("{}/pg_ctl", u.target.bin_dir))
                        .arg("-D")
                        .arg(&u.target.data_dir)
                        .arg("-l")
                        .arg(self.lab.dir.join("pg1new-left.log"))
                        .args(["-o", &options, "-w", "start"]),
                );
                // The killed `pg_upgrade --check` may have left its own server there already:
                // either way a postmaster the run did not stop is serving the new cluster.
                let serving = cutover::lab::proc::read_pid_file(
                    &std::path::Path::new(&u.target.data_dir).join("postmaster.pid"),
                )
                .is_some_and(cutover::lab::proc::pid_alive);
                assert!(
                    started.is_ok() || serving,
                    "start the target as pg_upgrade does: {started:?}"
                );
            }
            other => panic!("no tamper {other}"),
        }
    }
    async fn after_kill(&self, entries: &[JournalEntry]) {
        if !was(entries, "retire-old-cluster", EntryKind::Started) {
            assert!(
                self.way_back_intact(),
                "the old cluster is intact until it is retired"
            );
        }
    }
    async fn converged(&mut self, entries: &[JournalEntry]) {
        let (stop, task) = self.load.take().expect("load running");
        stop.send(true).expect("stop the load");
        let (committed, failed) = task.await.expect("load task");
        for text in M::journal_says() {
            assert!(
                entries.iter().any(|e| e.detail.contains(text)),
                "the journal says \"{text}\""
            );
        }
        let lab = &self.lab;
        assert_eq!(
            fingerprint(lab.target_port).await,
            self.before,
            "counts, sequences, roles and extensions equal on the target"
        );
        let app = connect(lab.target_port, APP_DB).await;
        let markers: Vec<String> = app
            .query(
                "SELECT substr(kind, 6) FROM audit.events WHERE kind LIKE 'load-%'",
                &[],
            )
            .await
            .expect("markers")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let unique: BTreeSet<&String> = markers.iter().collect();
        assert_eq!(unique.len(), markers.len(), "no write carried twice");
        for marker in &committed {
            assert!(
                unique.contains(marker),
                "committed write {marker} is on the target"
            );
        }
        assert!(markers.len() <= committed.len() + failed as usize);
        assert!(!committed.is_empty(), "the load ran");
        let version: String = app
            .query_one("SHOW server_version_num", &[])
            .await
            .expect("version")
            .get(0);
        assert!(version.starts_with("18"), "{version}");
        assert!(!self.paused().await, "no alias is left paused");
        let admin = pg::connect(
            &Endpoint::pgbouncer_admin(&lab.inventory.pgbouncers[0]),
            SessionSettings::PGBOUNCER,
        )
        .await
        .expect("pgbouncer admin");
        let reading = cutover::readings::queries::pgbouncer(&admin, "pgbouncer")
            .await
            .expect("SHOW DATABASES");
        let alias = reading
            .databases
            .iter()
            .find(|d| d.name == APP_DB)
            .expect("alias app");
        assert_eq!(alias.port, Some(i64::from(lab.target_port)), "routed to 18");
        assert!(
            !cutover::lab::proc::port_open(lab.source_port),
            "the old cluster is stopped"
        );
        let retired = was(entries, "retire-old-cluster", EntryKind::Verified);
        let old_files = std::fs::read_dir(lab.dir.join("pg1"))
            .map(|d| d.count())
            .unwrap_or(0);
        if retired {
            assert_eq!(old_files, 0, "retired by name: the old data is gone");
        } else {
            assert!(self.way_back_intact(), "the way back is intact");
        }
        let slots: i64 = connect(lab.target_port, "postgres")
            .await
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .expect("slots")
            .get(0);
        assert_eq!(slots, 0, "no replication slot on the target");
    }
}

// ---- citus bootstrap -----------------------------------------------------------------------

struct Citus {
    lab: CitusLab,
}

impl Subject for Citus {
    const RUNBOOK: &'static str = "citus-bootstrap";

    async fn start() -> Self {
        Citus {
            lab: CitusLab::start(500, 15)
                .await
                .expect("lab with a Citus cluster"),
        }
    }
    fn inventory_path(&self) -> PathBuf {
        self.lab.inventory_path()
    }
    fn params(&self) -> BTreeMap<String, String> {
        params(&[
            ("cluster", CLUSTER),
            ("schema-from", &format!("pg1/{P1_DB}")),
        ])
    }
    fn long_steps(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("create-extension", 400),
            ("add-workers", 400),
            ("distribute", 400),
        ]
    }
    async fn converged(&mut self, _entries: &[JournalEntry]) {
        let client = self.lab.coordinator(DATABASE).await.expect("coordinator");
        let kinds: BTreeMap<String, String> = client
            .query(
                "SELECT table_name::text, citus_table_type FROM citus_tables",
                &[],
            )
            .await
            .expect("citus_tables")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let wanted: BTreeMap<String, String> = self.lab.inventory.citus[0]
            .tables
            .iter()
            .map(|t| {
                let kind = match t.distribution {
                    cutover::inventory::Distribution::Distributed => "distributed",
                    cutover::inventory::Distribution::Reference => "reference",
                    cutover::inventory::Distribution::Local => "local",
                };
                (t.table.clone(), kind.to_string())
            })
            .collect();
        assert_eq!(
            kinds, wanted,
            "every table distributed as the inventory says"
        );
        let workers: Vec<i32> = client
            .query(
                "SELECT nodeport FROM pg_dist_node WHERE groupid > 0 AND isactive ORDER BY 1",
                &[],
            )
            .await
            .expect("workers")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut expected = vec![
            i32::from(self.lab.citus.ports[1]),
            i32::from(self.lab.citus.ports[2]),
        ];
        expected.sort();
        assert_eq!(workers, expected, "each worker added once");
        let unhealthy: i64 = client
            .query_one(
                "SELECT count(*) FROM citus_check_cluster_node_health() WHERE NOT result",
                &[],
            )
            .await
            .expect("health")
            .get(0);
        assert_eq!(unhealthy, 0, "the cluster is healthy");
        let shards: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'forms'::regclass",
                &[],
            )
            .await
            .expect("shards")
            .get(0);
        assert_eq!(
            shards,
            i64::from(self.lab.inventory.citus[0].shard_count),
            "forms has the inventory's shard count"
        );
        for port in self.lab.citus.ports {
            let present: i64 = connect(port, "postgres")
                .await
                .query_one(
                    "SELECT count(*) FROM pg_database WHERE datname = $1",
                    &[&DATABASE],
                )
                .await
                .expect("databases")
                .get(0);
            assert_eq!(present, 1, "{DATABASE} on :{port}");
        }
    }
}

// ---- table copy ----------------------------------------------------------------------------

const COPY_SHAPE: cutover::lab::copy_source::SourceShape = cutover::lab::copy_source::SourceShape {
    months: 6,
    rows_per_month: 4_000,
    big_rows: 30_000,
};
const COPY_TARGET_DB: &str = "copy_target";

struct Copy {
    lab: TestLab,
    /// Ledger rows verified at some kill, with their `copied_at`: never copied again.
    verified: std::sync::Mutex<BTreeMap<(String, String), String>>,
}

impl Copy {
    async fn ledger(&self) -> Vec<(String, String, String, bool)> {
        connect(self.lab.config.pg2_port, COPY_TARGET_DB)
            .await
            .query(
                "SELECT target_table, part, copied_at::text, verified_at IS NOT NULL FROM cutover_copy_ledger",
                &[],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The sum of the rows' hashes (their text, settings pinned): equal sums, equal rows.
async fn row_sum(client: &tokio_postgres::Client, table: &str) -> String {
    client
        .batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3")
        .await
        .expect("settings");
    client
        .query_one(
            &format!("SELECT coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {table} t"),
            &[],
        )
        .await
        .expect("row hashes")
        .get(0)
}

impl Subject for Copy {
    const RUNBOOK: &'static str = "table-copy";

    async fn start() -> Self {
        use cutover::lab::copy_source;
        let lab = TestLab::start(500).await.expect("lab");
        copy_source::start_plain_target(&lab.config).expect("plain target");
        copy_source::create_source(lab.config.pg1_port, &COPY_SHAPE)
            .await
            .expect("source");
        copy_source::create_database(lab.config.pg2_port, COPY_TARGET_DB, &COPY_SHAPE)
            .await
            .expect("target");
        Copy {
            lab,
            verified: std::sync::Mutex::default(),
        }
    }
    fn inventory_path(&self) -> PathBuf {
        self.lab.config.inventory_path()
    }
    fn params(&self) -> BTreeMap<String, String> {
        params(&[
            (
                "from",
                &format!("pg1/{}", cutover::lab::copy_source::SOURCE_DB),
            ),
            ("to", &format!("pg2/{COPY_TARGET_DB}")),
            ("jobs", "2"),
            // The big table in key ranges, each its own ledger row.
            ("split-rows", "10000"),
        ])
    }
    fn long_steps(&self) -> Vec<(&'static str, u64)> {
        // Early in the copy, so that the fixed points after it are still ahead.
        vec![("copy", 400)]
    }
    fn fixed_points(&self) -> Vec<KillPoint> {
        vec![
            // Exactly between a target commit and the local state update, for a key range
            // and for a whole table (the biggest table's ranges start first, the monthly
            // tables after them in name order).
            KillPoint::self_kill(
                "copy",
                cutover::runbooks::table_copy::effects::KILL_AFTER_COMMIT_ENV,
                "public.events#3/3",
            ),
            KillPoint::self_kill(
                "copy",
                cutover::runbooks::table_copy::effects::KILL_AFTER_COMMIT_ENV,
                "public.report_2023_06",
            ),
        ]
    }
    async fn after_kill(&self, _entries: &[JournalEntry]) {
        let ledger = self.ledger().await;
        let mut verified = self.verified.lock().expect("verified");
        for (table, part, copied_at, is_verified) in ledger {
            if is_verified {
                verified.entry((table, part)).or_insert(copied_at);
            }
        }
    }
    async fn converged(&mut self, _entries: &[JournalEntry]) {
        use cutover::lab::copy_source;
        let source = connect(self.lab.config.pg1_port, copy_source::SOURCE_DB).await;
        let target = connect(self.lab.config.pg2_port, COPY_TARGET_DB).await;
        for table in COPY_SHAPE.tables() {
            let (s_rows, s_dups) = copy_source::count_with_duplicates(&source, &table)
                .await
                .expect("source count");
            let (t_rows, t_dups) = copy_source::count_with_duplicates(&target, &table)
                .await
                .expect("target count");
            assert_eq!(s_dups, 0);
            assert_eq!(t_dups, 0, "{table}: no duplicate on the target");
            assert_eq!(t_rows, s_rows, "{table}: none missing");
            assert_eq!(
                row_sum(&source, &table).await,
                row_sum(&target, &table).await,
                "{table}: the same rows"
            );
        }
        let end: BTreeMap<(String, String), String> = self
            .ledger()
            .await
            .into_iter()
            .map(|(t, p, c, _)| ((t, p), c))
            .collect();
        for (part, copied_at) in self.verified.lock().expect("verified").iter() {
            assert_eq!(
                end.get(part),
                Some(copied_at),
                "{part:?} was verified at a kill and must not be copied again"
            );
        }
        assert!(
            end.keys().any(|(t, p)| t == "public.events" && p == "2/3"),
            "the big table was split: {end:?}"
        );
    }
}

// ---- logical move ----------------------------------------------------------------------------

const MOVE_DOCS: u64 = 3_000;

struct Move {
    lab: cutover::runbooks::logical_move::rehearse::MoveLab,
    load: Option<(
        watch::Sender<bool>,
        JoinHandle<cutover::lab::load::LoadReport>,
    )>,
}

impl Subject for Move {
    const RUNBOOK: &'static str = "logical-move";

    async fn start() -> Self {
        Move {
            lab: cutover::runbooks::logical_move::rehearse::MoveLab::start(MOVE_DOCS, 18)
                .await
                .expect("lab with an 18 target"),
            load: None,
        }
    }
    fn inventory_path(&self) -> PathBuf {
        self.lab.config.inventory_path()
    }
    fn params(&self) -> BTreeMap<String, String> {
        let mut params = self.lab.params();
        params.insert("jobs".into(), "1".into());
        params
    }
    /// Inside the initial copy (the slot's snapshot dies with the process), inside the
    /// catch-up while the stream runs, and inside the gate.
    fn long_steps(&self) -> Vec<(&'static str, u64)> {
        vec![("initial-copy", 600), ("catch-up", 100), ("lsn-gate", 30)]
    }
    fn fixed_points(&self) -> Vec<KillPoint> {
        vec![KillPoint::output("initial-copy", "rows copied")]
    }
    fn pause_step(&self) -> Option<&'static str> {
        Some("stop-traffic")
    }
    async fn paused(&self) -> bool {
        let inventory = cutover::inventory::load(&self.inventory_path()).expect("inventory");
        paused_on(&inventory.pgbouncers[0]).await
    }
    async fn start_load(&mut self) {
        let inventory = cutover::inventory::load(&self.inventory_path()).expect("inventory");
        let (stop, stopped) = watch::channel(false);
        let options = cutover::lab::load::LoadOptions {
            endpoint: cutover::lab::load::entry_endpoint(&inventory).expect("the entry alias"),
            rate: 20,
            duration: Duration::from_secs(3600),
            workers: 2,
            out: None,
        };
        let task = tokio::spawn(async move {
            cutover::lab::load::run(options, stopped)
                .await
                .expect("load")
        });
        self.load = Some((stop, task));
    }
    async fn converged(&mut self, _entries: &[JournalEntry]) {
        let (stop, task) = self.load.take().expect("load running");
        stop.send(true).expect("stop the load");
        let load = task.await.expect("load task");
        assert!(load.committed > 0, "the load ran: {:?}", load.errors);
        let (missing, duplicated, slots) =
            self.lab.audit(&load.committed_ids).await.expect("audit");
        assert_eq!(missing, 0, "every committed form is on the target");
        assert_eq!(duplicated, 0, "no change applied twice");
        assert_eq!(slots, 0, "no replication slot is left");
        let source = self.lab.source().await.expect("source");
        let target = self.lab.target().await.expect("target");
        for table in ["forms", "form_events"] {
            let (s, t) = (
                all_rows(&source, table).await,
                all_rows(&target, table).await,
            );
            assert!(
                s.is_subset(&t),
                "{table}: every source row is on the target, identical"
            );
        }
        let max: i64 = target
            .query_one("SELECT max(id) FROM form_events", &[])
            .await
            .expect("max")
            .get(0);
        let next: i64 = target
            .query_one("SELECT nextval('form_events_id_seq')", &[])
            .await
            .expect("nextval")
            .get(0);
        assert!(next > max, "the target's sequence is past every id");
        assert!(!self.paused().await, "no alias is left paused");
    }
}

/// Every row of `table` as text.
async fn all_rows(client: &tokio_postgres::Client, table: &str) -> BTreeSet<String> {
    client
        .batch_execute("SET TimeZone = 'UTC'")
        .await
        .expect("settings");
    client
        .query(&format!("SELECT t::text FROM {table} t"), &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

// ---- logical move into Citus (the tool's apply through the coordinator) ----------------------

struct MoveCitus {
    lab: CitusLab,
    load: Option<(
        watch::Sender<bool>,
        JoinHandle<cutover::lab::load::LoadReport>,
    )>,
}

impl Subject for MoveCitus {
    const RUNBOOK: &'static str = "logical-move";

    fn name() -> String {
        "logical-move into Citus".into()
    }
    async fn start() -> Self {
        let lab = CitusLab::start(MOVE_DOCS, 15)
            .await
            .expect("lab with a Citus cluster");
        let state = lab.config.dir.join("bootstrap-state");
        let mut bootstrap =
            cutover::runbooks::citus_bootstrap::rehearse::lab_invocation(&lab, state);
        bootstrap.oversight = cutover::engine::Oversight::Solo;
        cutover::session::open_as::<cutover::runbooks::citus_bootstrap::CitusBootstrap>(&bootstrap)
            .expect("bootstrap session")
            .run_headless("matrix")
            .await
            .expect("citus-bootstrap");
        // The application's function, which citus-bootstrap does not bring.
        lab.coordinator(DATABASE)
            .await
            .expect("coordinator")
            .batch_execute(
                "CREATE FUNCTION insert_form(form_id uuid, domain text, payload jsonb) RETURNS uuid LANGUAGE sql AS $$ \
                 INSERT INTO forms (form_id, domain, received_on, payload) VALUES ($1, $2, now(), $3) RETURNING form_id $$",
            )
            .await
            .expect("insert_form");
        MoveCitus { lab, load: None }
    }
    fn inventory_path(&self) -> PathBuf {
        self.lab.inventory_path()
    }
    fn params(&self) -> BTreeMap<String, String> {
        params(&[
            ("from", &format!("pg1/{P1_DB}")),
            (
                "to",
                &format!("{}/{DATABASE}", cutover::lab::citus::COORDINATOR),
            ),
            ("tables", "forms"),
            ("min-free-gb", "1"),
            ("min-free-percent", "1"),
            ("pause-bound-ms", "5000"),
            ("jobs", "1"),
        ])
    }
    /// Inside the initial copy, inside the catch-up while the tool's apply runs, and inside
    /// the gate (`caught_up_to`).
    fn long_steps(&self) -> Vec<(&'static str, u64)> {
        vec![("initial-copy", 600), ("catch-up", 100), ("lsn-gate", 30)]
    }
    fn pause_step(&self) -> Option<&'static str> {
        Some("stop-traffic")
    }
    async fn paused(&self) -> bool {
        let inventory = cutover::inventory::load(&self.inventory_path()).expect("inventory");
        paused_on(&inventory.pgbouncers[0]).await
    }
    async fn start_load(&mut self) {
        let inventory = cutover::inventory::load(&self.inventory_path()).expect("inventory");
        let (stop, stopped) = watch::channel(false);
        let options = cutover::lab::load::LoadOptions {
            endpoint: cutover::lab::load::entry_endpoint(&inventory).expect("the entry alias"),
            rate: 20,
            duration: Duration::from_secs(3600),
            workers: 2,
            out: None,
        };
        let task = tokio::spawn(async move {
            cutover::lab::load::run(options, stopped)
                .await
                .expect("load")
        });
        self.load = Some((stop, task));
    }
    async fn converged(&mut self, _entries: &[JournalEntry]) {
        let (stop, task) = self.load.take().expect("load running");
        stop.send(true).expect("stop the load");
        let load = task.await.expect("load task");
        assert!(load.committed > 0, "the load ran: {:?}", load.errors);
        let coordinator = self.lab.coordinator(DATABASE).await.expect("coordinator");
        let ids: Vec<String> = load.committed_ids.iter().map(|i| i.to_string()).collect();
        let row = coordinator
            .query_one(
                "SELECT count(*), count(DISTINCT form_id) FROM forms WHERE form_id::text = ANY($1)",
                &[&ids],
            )
            .await
            .expect("committed ids");
        let (found, distinct): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            distinct as usize,
            ids.len(),
            "every committed form is on Citus"
        );
        assert_eq!(found, distinct, "no change applied twice");
        let source = connect(self.lab.config.pg1_port, P1_DB).await;
        let (s, t) = (
            all_rows(&source, "forms").await,
            all_rows(&coordinator, "forms").await,
        );
        assert!(
            s.is_subset(&t),
            "forms: every source row is visible through the coordinator, identical"
        );
        let slots: i64 = source
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .expect("slots")
            .get(0);
        assert_eq!(slots, 0, "no replication slot is left");
        assert!(!self.paused().await, "no alias is left paused");
    }
}
