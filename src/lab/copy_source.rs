//! Lab data for the `table-copy` runbook: a reporting database of monthly tables plus one big
//! table (`jsonb`, `numeric`, `timestamptz`, some TOASTed text), the same definitions for the
//! targets, a plain PostgreSQL target on pg2, and the Citus cluster's databases and tables.

use super::citus::{CitusLab, DATABASE};
use super::postgres::{self, InitOptions};
use super::{LabConfig, LabError, PG15_BIN};
use crate::inventory::{CitusTable, Distribution};
use crate::pg::{self, Endpoint, SessionSettings};
use crate::sql::{quote_ident, quote_literal};
use std::time::Duration;

/// The source database on pg1.
pub const SOURCE_DB: &str = "reporting_src";
/// The big table.
pub const BIG_TABLE: &str = "events";

const SETUP: SessionSettings = SessionSettings {
    connect_timeout: Duration::from_secs(5),
    statement_timeout: Some(Duration::from_secs(1200)),
    application_name: "cutover/lab",
};

/// Shape of the lab source.
#[derive(Debug, Clone, Copy)]
pub struct SourceShape {
    /// Monthly tables `report_YYYY_MM`, from January 2023.
    pub months: u32,
    pub rows_per_month: u64,
    pub big_rows: u64,
}

impl SourceShape {
    /// The benchmark's: 24 × 60k + 500k rows.
    pub const BENCHMARK: SourceShape = SourceShape {
        months: 24,
        rows_per_month: 60_000,
        big_rows: 500_000,
    };

    pub fn month_tables(&self) -> Vec<String> {
        (0..self.months)
            .map(|i| format!("report_{}_{:02}", 2023 + i / 12, i % 12 + 1))
            .collect()
    }

    /// Every table, monthly ones first.
    pub fn tables(&self) -> Vec<String> {
        let mut t = self.month_tables();
        t.push(BIG_TABLE.to_string());
        t
    }

    pub fn rows(&self) -> u64 {
        self.months as u64 * self.rows_per_month + self.big_rows
    }

    /// The definitions, for the source and every target.
    pub fn ddl(&self) -> String {
        let mut sql = String::new();
        for t in self.month_tables() {
            sql.push_str(&format!(
                "CREATE TABLE {} (id bigint PRIMARY KEY, owner_id integer NOT NULL, created timestamptz NOT NULL, \
amount numeric(12,2), state text NOT NULL, payload jsonb NOT NULL);\n",
                quote_ident(&t)
            ));
        }
        sql.push_str(&format!(
            "CREATE TABLE {} (id bigint PRIMARY KEY, created timestamptz NOT NULL, amount numeric, \
doc jsonb NOT NULL, note text);\n",
            quote_ident(BIG_TABLE)
        ));
        sql
    }

    /// The rows, generated on the server.
    pub fn load_sql(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, t) in self.month_tables().into_iter().enumerate() {
            let first = format!("{}-{:02}-01", 2023 + i / 12, i % 12 + 1);
            out.push(format!(
                "INSERT INTO {} SELECT g, g % 5000, {}::timestamptz + (g % 2419200) * interval '1 second', \
(g % 100000) / 100.0, (ARRAY['open','closed','pending'])[g % 3 + 1], \
jsonb_build_object('n', g, 'tag', md5(g::text), 'ok', g % 2 = 0) FROM generate_series(1, {}) g",
                quote_ident(&t),
                quote_literal(&first),
                self.rows_per_month
            ));
        }
        out.push(format!(
            "INSERT INTO {} SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute', g * 1.2345, \
jsonb_build_object('id', g, 'kind', 'evt' || (g % 17), 'vals', jsonb_build_array(g, g * 2, md5(g::text))), \
CASE WHEN g % 50 = 0 THEN (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 78) i) \
ELSE 'note ' || g END FROM generate_series(1, {}) g",
            quote_ident(BIG_TABLE),
            self.big_rows
        ));
        out
    }

    /// The inventory's `citus` entries: every table distributed by `id`.
    pub fn citus_tables(&self) -> Vec<CitusTable> {
        self.tables()
            .into_iter()
            .map(|t| CitusTable {
                table: t,
                distribution: Distribution::Distributed,
                column: Some("id".into()),
                colocate_with: None,
            })
            .collect()
    }
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

pub async fn connect(port: u16, dbname: &str) -> Result<tokio_postgres::Client, LabError> {
    Ok(pg::connect(&endpoint(port, dbname), SETUP).await?)
}

fn sql_err(target: String) -> impl Fn(tokio_postgres::Error) -> LabError {
    move |e| LabError::Inventory(format!("{target}: {}", pg::error_chain(&e)))
}

/// Create `db` on the server at `port` with the tables of `shape`, empty.
pub async fn create_database(port: u16, db: &str, shape: &SourceShape) -> Result<(), LabError> {
    let admin = connect(port, "postgres").await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(db)))
        .await
        .map_err(sql_err(format!(":{port}")))?;
    let client = connect(port, db).await?;
    client
        .batch_execute(&shape.ddl())
        .await
        .map_err(sql_err(format!(":{port}/{db}")))?;
    Ok(())
}

/// The source database on pg1, loaded, vacuumed and analyzed.
pub async fn create_source(pg1_port: u16, shape: &SourceShape) -> Result<(), LabError> {
    create_database(pg1_port, SOURCE_DB, shape).await?;
    let client = connect(pg1_port, SOURCE_DB).await?;
    for sql in shape.load_sql() {
        client
            .batch_execute(&sql)
            .await
            .map_err(sql_err(format!("pg1/{SOURCE_DB}")))?;
    }
    client
        .batch_execute("VACUUM (FREEZE, ANALYZE)")
        .await
        .map_err(sql_err(format!("pg1/{SOURCE_DB}")))?;
    Ok(())
}

/// Make the lab's spare pg2 a plain PostgreSQL 15 primary (the lab's `down` stops it).
pub fn start_plain_target(config: &LabConfig) -> Result<(), LabError> {
    let dir = &config.dir;
    let data = dir.join("pg2");
    let port = config.pg2_port;
    if !data.join("PG_VERSION").exists() {
        postgres::initdb(PG15_BIN, &data, InitOptions::default())?;
        postgres::configure_primary(PG15_BIN, &data, port, dir)?;
    }
    if !postgres::is_running(&data, port) {
        postgres::start(PG15_BIN, &data, &dir.join("pg2.log"), port)?;
    }
    Ok(())
}

/// The Citus cluster's database on every node, the workers registered, and `shape`'s tables
/// distributed by `id`; the inventory file's `citus` section lists them.
pub async fn setup_citus(lab: &CitusLab, shape: &SourceShape) -> Result<(), LabError> {
    let [coordinator, w1, w2] = lab.citus.ports;
    for port in lab.citus.ports {
        let admin = connect(port, "postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(DATABASE)))
            .await
            .map_err(sql_err(format!(":{port}")))?;
        let client = connect(port, DATABASE).await?;
        client
            .batch_execute("CREATE EXTENSION citus")
            .await
            .map_err(sql_err(format!(":{port}/{DATABASE}")))?;
    }
    let client = connect(coordinator, DATABASE).await?;
    let mut sql = format!(
        "SELECT citus_set_coordinator_host('127.0.0.1', {coordinator});\n\
         SELECT citus_add_node('127.0.0.1', {w1});\nSELECT citus_add_node('127.0.0.1', {w2});\n"
    );
    sql.push_str(&shape.ddl());
    for t in shape.tables() {
        sql.push_str(&format!(
            "SELECT create_distributed_table({}, 'id');\n",
            quote_literal(&t)
        ));
    }
    client
        .batch_execute(&sql)
        .await
        .map_err(sql_err(format!("citus0/{DATABASE}")))?;
    let mut inventory = lab.inventory.clone();
    if let Some(cluster) = inventory.citus.first_mut() {
        cluster.tables = shape.citus_tables();
    }
    let yaml =
        crate::inventory::to_yaml(&inventory).map_err(|e| LabError::Inventory(e.to_string()))?;
    std::fs::write(lab.inventory_path(), yaml).map_err(|source| LabError::Io {
        path: lab.inventory_path().display().to_string(),
        source,
    })?;
    Ok(())
}

/// Rows, and rows whose `id` appears more than once, of `table` at `port`/`db`.
pub async fn count_with_duplicates(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<(i64, i64), LabError> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(*) - count(DISTINCT id) FROM {}",
                quote_ident(table)
            ),
            &[],
        )
        .await
        .map_err(sql_err(table.to_string()))?;
    Ok((row.get(0), row.get(1)))
}
