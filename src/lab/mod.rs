//! The lab: real PostgreSQL, pgbouncer and sshd servers on loopback that match `inventories/lab.yaml`.
//!
//! `up` is idempotent: it starts only what is not already running and says what it did.
//! Every server runs as the unprivileged service user when we are root; `down` stops them by PID.

pub mod certs;
pub mod citus;
pub mod copy_source;
pub mod load;
pub mod postgres;
pub mod proc;
pub mod sshd;
pub mod target;

use crate::inventory::{
    Host, Inventory, Node, NodeControl, Partition, Pgbouncer, PgbouncerAdmin, PgbouncerAlias,
    Proxy, RouteVia, ShardedTable, SshTarget,
};
use crate::pgbouncer_ini::{set_alias, AliasTarget};
use proc::{chown_to_service_user, service_command, stop_pid, wait_for_port};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const PGBOUNCER_BIN: &str = "/usr/sbin/pgbouncer";
pub const SSHD_BIN: &str = "/usr/sbin/sshd";
const PLPROXY_CONTROL: &str = "/usr/share/postgresql/15/extension/plproxy.control";
pub const INSTALL_HINT: &str =
    "run scripts/bootstrap (apt-get install -y pgbouncer openssh-server postgresql-15-plproxy)";
pub const DEFAULT_DIR: &str = "/tmp/cutover-lab";
pub const SHARD_COUNT: u32 = 1024;
pub const PROXY_DB: &str = "commcarehq_proxy";
pub const P1_DB: &str = "commcarehq_p1";
pub const CLUSTER: &str = "commcarehq";
pub const ADMIN_USER: &str = "pgadmin";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{what} is missing ({path}); {hint}", hint = INSTALL_HINT)]
    MissingPackage { what: String, path: String },
    #[error("lab dir {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Proc(#[from] proc::ProcError),
    #[error(transparent)]
    Sshd(#[from] sshd::SshdError),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("{server} did not start on port {port}; see {log}")]
    NotStarted {
        server: String,
        port: u16,
        log: String,
    },
    #[error("writing the lab inventory: {0}")]
    Inventory(String),
    #[error("lab certificate: {0}")]
    Certificate(String),
}

/// Ports and size of one lab. Tests pick free ports so labs run side by side.
#[derive(Debug, Clone)]
pub struct LabConfig {
    pub dir: PathBuf,
    pub docs: u64,
    pub pg1_port: u16,
    pub pg2_port: u16,
    pub pgbouncer_port: u16,
    pub ssh_port: u16,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            dir: PathBuf::from(DEFAULT_DIR),
            docs: 200_000,
            pg1_port: 54321,
            pg2_port: 54322,
            pgbouncer_port: 6432,
            ssh_port: 2222,
        }
    }
}

impl LabConfig {
    /// Rows of the lab's second sharded table, `cases`: one per two documents.
    pub fn cases(&self) -> u64 {
        self.docs / 2
    }

    /// A config on free ports under `dir`, for tests.
    pub fn on_free_ports(dir: &Path, docs: u64) -> std::io::Result<Self> {
        Ok(LabConfig {
            dir: dir.to_path_buf(),
            docs,
            pg1_port: proc::free_port()?,
            pg2_port: proc::free_port()?,
            pgbouncer_port: proc::free_port()?,
            ssh_port: proc::free_port()?,
        })
    }
    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join("lab.yaml")
    }
    fn pgbouncer_dir(&self) -> PathBuf {
        self.dir.join("pgbouncer")
    }
    pub fn pgbouncer_ini(&self) -> PathBuf {
        self.pgbouncer_dir().join("pgbouncer.ini")
    }
    fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What `up` did, for the operator.
#[derive(Debug, Default)]
pub struct UpReport {
    pub started: Vec<String>,
    pub already_running: Vec<String>,
    pub inventory: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Fail early, with the install command, when a package the lab needs is absent.
pub fn check_packages() -> Result<(), LabError> {
    let needed = [
        ("PostgreSQL 15", format!("{PG15_BIN}/initdb")),
        ("pgbouncer", PGBOUNCER_BIN.to_string()),
        ("openssh-server", SSHD_BIN.to_string()),
        ("plproxy", PLPROXY_CONTROL.to_string()),
    ];
    for (what, path) in needed {
        if !Path::new(&path).exists() {
            return Err(LabError::MissingPackage {
                what: what.to_string(),
                path,
            });
        }
    }
    Ok(())
}

/// Bring the lab up (idempotent) and write its inventory.
pub async fn up(config: &LabConfig) -> Result<UpReport, LabError> {
    up_with_target(config, None).await
}

/// The lab's major-upgrade target (`cutover lab up --with-target 18`): node `pg1new`.
#[derive(Debug, Clone, Copy)]
pub struct TargetConfig {
    pub version: u32,
    pub port: u16,
}

impl TargetConfig {
    /// PostgreSQL `version` on the default target port (54323).
    pub fn new(version: u32) -> Self {
        TargetConfig {
            version,
            port: target::DEFAULT_TARGET_PORT,
        }
    }
}

/// [`up`], plus the upgrade target node `pg1new` and the upgrade sample database on pg1.
pub async fn up_with_target(
    config: &LabConfig,
    with_target: Option<TargetConfig>,
) -> Result<UpReport, LabError> {
    up_with(config, with_target, None).await
}

/// [`up_with_target`], plus an empty Citus cluster (a coordinator and two workers).
pub async fn up_with(
    config: &LabConfig,
    with_target: Option<TargetConfig>,
    with_citus: Option<citus::CitusConfig>,
) -> Result<UpReport, LabError> {
    check_packages()?;
    let dir = &config.dir;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    chown_to_service_user(dir)?;
    let mut report = UpReport::default();

    if start_sshd(config)? {
        report.started.push(format!("sshd :{}", config.ssh_port));
    } else {
        report
            .already_running
            .push(format!("sshd :{}", config.ssh_port));
    }

    let pg1 = config.node_dir("pg1");
    if postgres::is_running(&pg1, config.pg1_port) {
        report
            .already_running
            .push(format!("pg1 :{}", config.pg1_port));
    } else {
        if !pg1.join("PG_VERSION").exists() {
            postgres::initdb(PG15_BIN, &pg1, postgres::InitOptions::default())?;
            postgres::configure_primary(PG15_BIN, &pg1, config.pg1_port, dir)?;
        }
        postgres::start(PG15_BIN, &pg1, &dir.join("pg1.log"), config.pg1_port)?;
        report.started.push(format!("pg1 :{}", config.pg1_port));
    }
    // pg2 stays an empty data directory: the shard split makes it a standby.
    let pg2 = config.node_dir("pg2");
    std::fs::create_dir_all(&pg2).map_err(io_err(&pg2))?;
    set_mode(&pg2, 0o700)?;
    chown_to_service_user(&pg2)?;

    let loaded = postgres::setup_lab_databases(config).await?;
    if loaded > 0 {
        report
            .started
            .push(format!("loaded {loaded} documents into {P1_DB}"));
    }

    if start_pgbouncer(config)? {
        report
            .started
            .push(format!("pgbouncer :{}", config.pgbouncer_port));
    } else {
        report
            .already_running
            .push(format!("pgbouncer :{}", config.pgbouncer_port));
    }

    let mut inventory = lab_inventory(config);
    if let Some(t) = with_target {
        report
            .started
            .extend(target::up_target(config, t.version, t.port).await?);
        inventory.nodes.push(target::lab_node(
            dir,
            target::TARGET_NODE,
            t.port,
            t.version,
            &target::bin_dir(t.version)?,
        ));
    }
    if let Some(citus_config) = with_citus {
        report.started.extend(citus::up(dir, citus_config)?);
        inventory.nodes.extend(citus::lab_nodes(dir, citus_config)?);
        inventory.citus.push(citus::lab_cluster());
    }
    let inventory_path = config.inventory_path();
    let text = inventory_yaml(&inventory)?;
    std::fs::write(&inventory_path, text).map_err(io_err(&inventory_path))?;
    report.inventory = inventory_path;
    Ok(report)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Start the lab's sshd unless it runs already. Returns whether it started it.
fn start_sshd(config: &LabConfig) -> Result<bool, LabError> {
    let (_, started) = sshd::Sshd::ensure(&config.dir.join("ssh"), config.ssh_port)?;
    Ok(started)
}

/// Stop the lab's sshd in `dir`, if one was set up. Returns whether there was one.
fn stop_sshd(dir: &Path) -> bool {
    match sshd::Sshd::adopt(&dir.join("ssh")) {
        Ok(sshd) => {
            sshd.stop();
            true
        }
        Err(_) => false,
    }
}

/// The pgbouncer.ini the lab starts with: both aliases on pg1, transaction pooling.
pub fn pgbouncer_ini_text(config: &LabConfig) -> String {
    let dir = config.pgbouncer_dir();
    let base = format!(
        "[databases]\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = trust\nauth_file = {dir}/userlist.txt\nadmin_users = {ADMIN_USER}\nstats_users = {ADMIN_USER}\n\
         pool_mode = transaction\nmax_client_conn = 1000\ndefault_pool_size = 20\n\
         ignore_startup_parameters = extra_float_digits,options\n\
         pidfile = {dir}/pgbouncer.pid\nlogfile = {dir}/pgbouncer.log\n\
         client_tls_sslmode = prefer\nclient_tls_cert_file = {dir}/server.crt\nclient_tls_key_file = {dir}/server.key\n",
        port = config.pgbouncer_port,
        dir = dir.display(),
    );
    [PROXY_DB, P1_DB].iter().fold(base, |ini, db| {
        set_alias(
            &ini,
            db,
            &AliasTarget {
                host: "127.0.0.1".into(),
                port: config.pg1_port,
                dbname: db.to_string(),
            },
        )
    })
}

/// Start pgbouncer unless its PID file names a live process. Returns whether it started it.
fn start_pgbouncer(config: &LabConfig) -> Result<bool, LabError> {
    let dir = config.pgbouncer_dir();
    let pid_file = dir.join("pgbouncer.pid");
    if proc::read_pid_file(&pid_file).is_some_and(proc::pid_alive)
        && proc::port_open(config.pgbouncer_port)
    {
        return Ok(false);
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let userlist = dir.join("userlist.txt");
    std::fs::write(
        &userlist,
        format!("\"postgres\" \"\"\n\"{ADMIN_USER}\" \"\"\n"),
    )
    .map_err(io_err(&userlist))?;
    let ini = config.pgbouncer_ini();
    std::fs::write(&ini, pgbouncer_ini_text(config)).map_err(io_err(&ini))?;
    chown_to_service_user(&dir)?;
    certs::issue_server_cert(
        &config.dir,
        "pgbouncer",
        &dir.join("server.crt"),
        &dir.join("server.key"),
    )?;
    proc::run_checked(service_command(PGBOUNCER_BIN).arg("-d").arg(&ini))?;
    if !wait_for_port(config.pgbouncer_port, Duration::from_secs(10)) {
        return Err(LabError::NotStarted {
            server: "pgbouncer".into(),
            port: config.pgbouncer_port,
            log: dir.join("pgbouncer.log").display().to_string(),
        });
    }
    Ok(true)
}

/// The inventory describing a lab: what `lab up` writes and `inventories/lab.yaml` holds for the defaults.
pub fn lab_inventory(config: &LabConfig) -> Inventory {
    let dir = config.dir.display().to_string();
    let ssh = format!("{dir}/ssh");
    let node = |name: &str, port: u16| {
        let data = format!("{dir}/{name}");
        let ctl = format!("{PG15_BIN}/pg_ctl -D {data}");
        Node {
            name: name.to_string(),
            host: "lab".into(),
            address: "127.0.0.1".into(),
            port,
            version: 15,
            data_dir: data,
            bin_dir: PG15_BIN.into(),
            user: "postgres".into(),
            maintenance_db: "postgres".into(),
            control: NodeControl {
                start: format!("{ctl} -l {dir}/{name}.log -w -t 60 start"),
                stop: format!("{ctl} -m fast -w -t 60 stop"),
                promote: Some(format!("{ctl} promote")),
            },
            tls: Some(certs::lab_tls(&config.dir)),
        }
    };
    let alias = |name: &str| PgbouncerAlias {
        name: name.to_string(),
        node: "pg1".into(),
        dbname: name.to_string(),
    };
    Inventory {
        environment: "lab".into(),
        shard_count: SHARD_COUNT,
        hosts: vec![Host {
            name: "lab".into(),
            local: false,
            ssh: Some(SshTarget {
                address: "127.0.0.1".into(),
                port: config.ssh_port,
                user: proc::SERVICE_USER.into(),
                key: Some(format!("{ssh}/id_ed25519")),
                known_hosts: Some(format!("{ssh}/known_hosts")),
            }),
        }],
        nodes: vec![node("pg1", config.pg1_port), node("pg2", config.pg2_port)],
        pgbouncers: vec![Pgbouncer {
            name: "pgbouncer".into(),
            host: "lab".into(),
            admin: PgbouncerAdmin {
                address: "127.0.0.1".into(),
                port: config.pgbouncer_port,
                user: ADMIN_USER.into(),
                tls: Some(certs::lab_tls(&config.dir)),
            },
            config: config.pgbouncer_ini().display().to_string(),
            aliases: vec![alias(PROXY_DB), alias(P1_DB)],
        }],
        proxy: Some(Proxy {
            node: "pg1".into(),
            dbname: PROXY_DB.into(),
            cluster: CLUSTER.into(),
            alias: Some(PROXY_DB.into()),
            route_via: Some(RouteVia {
                address: "127.0.0.1".into(),
                port: config.pgbouncer_port,
            }),
        }),
        partitions: vec![Partition {
            name: "p1".into(),
            dbname: P1_DB.into(),
            node: "pg1".into(),
            shards: [0, SHARD_COUNT - 1],
        }],
        sharded_tables: vec![
            ShardedTable {
                table: "forms".into(),
                hash: "hashtext(form_id::text)".into(),
                key: vec!["form_id".into()],
            },
            ShardedTable {
                table: "cases".into(),
                hash: "hashtext(case_id::text)".into(),
                key: vec!["case_id".into()],
            },
        ],
        standbys: vec![],
        slots: vec![],
        traffic: None,
        citus: Vec::new(),
        tls: None,
    }
}

fn inventory_yaml(inv: &Inventory) -> Result<String, LabError> {
    let body = serde_yaml::to_string(inv).map_err(|e| LabError::Inventory(e.to_string()))?;
    Ok(format!(
        "# Written by `cutover lab up`. Describes the local lab: pg1 holds the proxy and p1,\n\
         # pg2 is a spare with an empty data directory, all host commands go over the lab's sshd.\n{body}"
    ))
}

/// Stop everything the lab in `dir` started, by PID, and remove the directory.
pub fn down(dir: &Path) -> Result<Vec<String>, LabError> {
    use nix::sys::signal::Signal;
    let mut stopped = Vec::new();
    let timeout = Duration::from_secs(30);
    if let Some(pid) = proc::read_pid_file(&dir.join("pgbouncer/pgbouncer.pid")) {
        stop_pid(pid, Signal::SIGINT, timeout);
        stopped.push(format!("pgbouncer (pid {pid})"));
    }
    for node in ["pg1", "pg2", "pg1new", "scratch"]
        .into_iter()
        .chain(citus::node_names())
    {
        if let Some(pid) = proc::read_pid_file(&dir.join(node).join("postmaster.pid")) {
            // SIGINT is PostgreSQL's fast shutdown.
            stop_pid(pid, Signal::SIGINT, timeout);
            stopped.push(format!("{node} (pid {pid})"));
        }
    }
    if stop_sshd(dir) {
        stopped.push("sshd".to_string());
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    Ok(stopped)
}

/// A running lab owned by a test: brought up on free ports in a temp dir, torn down on drop.
pub struct TestLab {
    pub config: LabConfig,
    pub inventory: Inventory,
}

impl TestLab {
    /// Bring up a lab with `docs` documents on free ports under a fresh directory in /tmp.
    pub async fn start(docs: u64) -> Result<TestLab, LabError> {
        let dir =
            std::env::temp_dir().join(format!("cutover-test-{}", uuid::Uuid::new_v4().simple()));
        let config = LabConfig::on_free_ports(&dir, docs).map_err(io_err(&dir))?;
        let started = up(&config).await;
        if let Err(e) = started {
            let _ = down(&dir);
            return Err(e);
        }
        let text = std::fs::read_to_string(config.inventory_path())
            .map_err(io_err(&config.inventory_path()))?;
        let inventory: Inventory =
            serde_yaml::from_str(&text).map_err(|e| LabError::Inventory(e.to_string()))?;
        Ok(TestLab { config, inventory })
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = down(&self.config.dir) {
            eprintln!("lab down {}: {e}", self.config.dir.display());
        }
    }
}
