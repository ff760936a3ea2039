//! Lab PostgreSQL clusters: initdb, configuration, start, and the CommCare-shaped lab databases
//! (a plproxy proxy database and one partition database with the sharded `forms` and `cases`).

use super::proc::{self, chown_to_service_user, service_command, wait_for_port};
use super::{LabConfig, LabError, CLUSTER, P1_DB, PROXY_DB, SHARD_COUNT};
use crate::pg::{self, Endpoint, SessionSettings};
use crate::sql::{quote_ident, quote_literal};
use std::path::Path;
use std::time::Duration;

/// initdb options that matter for upgrades: locale and checksums must match across versions.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub locale: String,
    pub encoding: String,
    /// `None` keeps the binary's default (off before 18, on from 18); `Some(false)` on 18
    /// passes `--no-data-checksums`, which `pg_upgrade` from 15 needs.
    pub data_checksums: Option<bool>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            locale: "C.UTF-8".into(),
            encoding: "UTF8".into(),
            data_checksums: None,
        }
    }
}

pub fn initdb(bin_dir: &str, data: &Path, options: InitOptions) -> Result<(), LabError> {
    std::fs::create_dir_all(data).map_err(|source| LabError::Io {
        path: data.display().to_string(),
        source,
    })?;
    chown_to_service_user(data)?;
    let mut cmd = service_command(format!("{bin_dir}/initdb"));
    cmd.arg("-D")
        .arg(data)
        .args(["-U", "postgres", "--auth=trust", "-E"])
        .arg(&options.encoding)
        .arg(format!("--locale={}", options.locale));
    match options.data_checksums {
        Some(true) => {
            cmd.arg("--data-checksums");
        }
        Some(false) => {
            cmd.arg("--no-data-checksums");
        }
        None => {}
    }
    proc::run_checked(&mut cmd)?;
    Ok(())
}

/// Whether the PostgreSQL build in `bin_dir` has TLS (the PostgreSQL 18 wheel is built without).
pub fn ssl_supported(bin_dir: &str) -> bool {
    std::process::Command::new(format!("{bin_dir}/pg_config"))
        .arg("--configure")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("openssl"))
}

/// Settings for a lab primary: loopback only, own socket dir, replication and logical decoding
/// on, and, when the build has it, TLS with a certificate from the lab CA of `socket_dir` (the
/// lab directory).
pub fn configure_primary(
    bin_dir: &str,
    data: &Path,
    port: u16,
    socket_dir: &Path,
) -> Result<(), LabError> {
    let ssl = if ssl_supported(bin_dir) {
        let name = data
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "lab".to_string());
        super::certs::issue_server_cert(
            socket_dir,
            &name,
            &data.join("server.crt"),
            &data.join("server.key"),
        )?;
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
    } else {
        ""
    };
    let conf = data.join("postgresql.conf");
    let extra = format!(
        "\n# cutover lab\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
         wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\nhot_standby = on\n\
         max_connections = 200\nshared_buffers = 128MB\nfsync = on\nlog_min_messages = warning\n{ssl}",
        socket_dir.display()
    );
    append(&conf, &extra)?;
    append(
        &data.join("pg_hba.conf"),
        "host replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n",
    )
}

pub fn append(path: &Path, text: &str) -> Result<(), LabError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|source| LabError::Io {
            path: path.display().to_string(),
            source,
        })?;
    file.write_all(text.as_bytes())
        .map_err(|source| LabError::Io {
            path: path.display().to_string(),
            source,
        })
}

pub fn is_running(data: &Path, port: u16) -> bool {
    proc::read_pid_file(&data.join("postmaster.pid")).is_some_and(proc::pid_alive)
        && proc::port_open(port)
}

pub fn start(bin_dir: &str, data: &Path, log: &Path, port: u16) -> Result<(), LabError> {
    let mut cmd = service_command(format!("{bin_dir}/pg_ctl"));
    cmd.arg("-D")
        .arg(data)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", "60", "start"]);
    proc::run_checked(&mut cmd)?;
    if !wait_for_port(port, Duration::from_secs(30)) {
        return Err(LabError::NotStarted {
            server: data.display().to_string(),
            port,
            log: log.display().to_string(),
        });
    }
    Ok(())
}

fn endpoint(port: u16, dbname: &str) -> Endpoint {
    Endpoint {
        address: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        dbname: dbname.into(),
        tls: crate::inventory::Tls::default(),
    }
}

const SETUP: SessionSettings = SessionSettings {
    connect_timeout: Duration::from_secs(5),
    statement_timeout: Some(Duration::from_secs(600)),
    application_name: "cutover/lab",
};

/// Partition-side schema: the sharded `forms` and `cases` tables and the function plproxy calls.
const PARTITION_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS forms (
    form_id uuid PRIMARY KEY,
    domain text NOT NULL,
    received_on timestamptz NOT NULL DEFAULT now(),
    payload jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS cases (
    case_id uuid PRIMARY KEY,
    domain text NOT NULL,
    modified_on timestamptz NOT NULL DEFAULT now(),
    payload jsonb NOT NULL DEFAULT '{}'
);
CREATE OR REPLACE FUNCTION insert_form(form_id uuid, domain text, payload jsonb)
RETURNS uuid LANGUAGE sql AS $$
    INSERT INTO forms (form_id, domain, received_on, payload) VALUES ($1, $2, now(), $3)
    RETURNING form_id
$$;
";

/// Create the proxy and partition databases and load `config.docs` documents (idempotent).
/// Returns how many documents it loaded (0 when the data was already there).
pub async fn setup_lab_databases(config: &LabConfig) -> Result<u64, LabError> {
    let admin = pg::connect(&endpoint(config.pg1_port, "postgres"), SETUP).await?;
    let target = format!("pg1:{}", config.pg1_port);
    for db in [PROXY_DB, P1_DB] {
        let exists = pg::simple_rows(
            &admin,
            &target,
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                quote_literal(db)
            ),
        )
        .await?;
        if exists.is_empty() {
            pg::simple_execute(
                &admin,
                &target,
                &format!("CREATE DATABASE {}", quote_ident(db)),
            )
            .await?;
        }
    }

    let p1 = pg::connect(&endpoint(config.pg1_port, P1_DB), SETUP).await?;
    pg::simple_execute(&p1, &target, PARTITION_SCHEMA).await?;
    let rows = pg::simple_rows(&p1, &target, "SELECT count(*) AS n FROM forms").await?;
    let existing: u64 = rows
        .first()
        .and_then(|r| r.get("n").cloned().flatten())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut loaded = 0;
    if existing == 0 && config.docs > 0 {
        pg::simple_execute(
            &p1,
            &target,
            &format!(
                "INSERT INTO forms (form_id, domain, received_on, payload)
                 SELECT gen_random_uuid(), 'domain-' || (i % 20), now() - i * interval '1 second',
                        jsonb_build_object('seq', i, 'note', md5(i::text))
                 FROM generate_series(1, {}) AS i;
                 ANALYZE forms;",
                config.docs
            ),
        )
        .await?;
        loaded = config.docs;
    }

    let cases = pg::simple_rows(&p1, &target, "SELECT count(*) AS n FROM cases").await?;
    let no_cases = cases
        .first()
        .and_then(|r| r.get("n").cloned().flatten())
        .is_some_and(|n| n == "0");
    if no_cases && config.cases() > 0 {
        pg::simple_execute(
            &p1,
            &target,
            &format!(
                "INSERT INTO cases (case_id, domain, modified_on, payload)
                 SELECT gen_random_uuid(), 'domain-' || (i % 20), now() - i * interval '1 second',
                        jsonb_build_object('seq', i, 'name', md5(i::text))
                 FROM generate_series(1, {}) AS i;
                 ANALYZE cases;",
                config.cases()
            ),
        )
        .await?;
    }

    let proxy = pg::connect(&endpoint(config.pg1_port, PROXY_DB), SETUP).await?;
    pg::simple_execute(&proxy, &target, &proxy_setup_sql(config)).await?;
    Ok(loaded)
}

/// The plproxy cluster: every shard routed to p1 through pgbouncer, and the entry function.
fn proxy_setup_sql(config: &LabConfig) -> String {
    let conn = format!(
        "dbname={P1_DB} host=127.0.0.1 port={}",
        config.pgbouncer_port
    );
    let partitions: Vec<String> = (0..SHARD_COUNT)
        .map(|shard| format!("p{shard:04} {}", quote_literal(&conn)))
        .collect();
    let cluster = quote_ident(CLUSTER);
    format!(
        "CREATE EXTENSION IF NOT EXISTS plproxy;
         DO $do$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_foreign_server WHERE srvname = {cluster_lit}) THEN
             EXECUTE {create_server};
             EXECUTE {create_mapping};
           END IF;
         END $do$;
         CREATE OR REPLACE FUNCTION insert_form(form_id uuid, domain text, payload jsonb)
         RETURNS uuid LANGUAGE plproxy AS $$
             CLUSTER {cluster_lit};
             RUN ON hashtext(form_id::text);
         $$;",
        cluster_lit = quote_literal(CLUSTER),
        create_server = quote_literal(&format!(
            "CREATE SERVER {cluster} FOREIGN DATA WRAPPER plproxy OPTIONS (connection_lifetime '1800', {})",
            partitions.join(", ")
        )),
        create_mapping = quote_literal(&format!(
            "CREATE USER MAPPING FOR PUBLIC SERVER {cluster} OPTIONS (user 'postgres')"
        )),
    )
}
