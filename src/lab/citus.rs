//! Lab Citus cluster: a coordinator and two workers on loopback with `citus` preloaded, empty
//! (the `citus-bootstrap` runbook sets them up), described by the lab inventory's `citus`
//! section. PostgreSQL 15 with Citus 13, or 18 with Citus 14, from `../shared/pgext`.

use super::postgres::{self, InitOptions};
use super::target::{bin_dir, lab_node};
use super::LabError;
use crate::inventory::{CitusCluster, CitusTable, Distribution, Node};
use std::path::{Path, PathBuf};

/// The lab cluster's name in the inventory.
pub const CLUSTER: &str = "citus";
pub const COORDINATOR: &str = "citus0";
pub const WORKERS: [&str; 2] = ["citus1", "citus2"];
/// The database the bootstrap creates on every node.
pub const DATABASE: &str = "reporting";
pub const DEFAULT_PORTS: [u16; 3] = [54330, 54331, 54332];

/// Which Citus cluster `lab up --citus` starts.
#[derive(Debug, Clone, Copy)]
pub struct CitusConfig {
    /// PostgreSQL major version: 15 (Citus 13) or 18 (Citus 14).
    pub version: u32,
    /// Coordinator, then the two workers.
    pub ports: [u16; 3],
}

/// Every node of the lab cluster, coordinator first.
pub fn node_names() -> [&'static str; 3] {
    [COORDINATOR, WORKERS[0], WORKERS[1]]
}

/// The directory holding `bin_dir`'s extension control files.
fn extension_dir(bin_dir: &str) -> Result<PathBuf, LabError> {
    let out = std::process::Command::new(format!("{bin_dir}/pg_config"))
        .arg("--sharedir")
        .output()
        .map_err(|source| LabError::Io {
            path: format!("{bin_dir}/pg_config"),
            source,
        })?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("extension"))
}

/// Fails with the missing extension's name when `bin_dir`'s PostgreSQL lacks it.
pub fn require_extension(bin_dir: &str, extension: &str, version: u32) -> Result<(), LabError> {
    let control = extension_dir(bin_dir)?.join(format!("{extension}.control"));
    if control.exists() {
        return Ok(());
    }
    Err(LabError::MissingPackage {
        what: format!("the {extension} extension for PostgreSQL {version}"),
        path: control.display().to_string(),
    })
}

/// Start (or find running) the coordinator and workers under `dir`. Returns what it did.
pub fn up(dir: &Path, config: CitusConfig) -> Result<Vec<String>, LabError> {
    let bin = bin_dir(config.version)?;
    require_extension(&bin, "citus", config.version)?;
    let mut did = Vec::new();
    for (name, port) in node_names().into_iter().zip(config.ports) {
        let data = dir.join(name);
        if postgres::is_running(&data, port) {
            did.push(format!("{name} :{port} already running"));
            continue;
        }
        if !data.join("PG_VERSION").exists() {
            postgres::initdb(
                &bin,
                &data,
                InitOptions {
                    data_checksums: (config.version >= 18).then_some(false),
                    ..InitOptions::default()
                },
            )?;
            postgres::configure_primary(&bin, &data, port, dir)?;
            postgres::append(
                &data.join("postgresql.conf"),
                "shared_preload_libraries = 'citus'\n",
            )?;
        }
        postgres::start(&bin, &data, &dir.join(format!("{name}.log")), port)?;
        did.push(format!(
            "{name} :{port} (PostgreSQL {}, Citus preloaded)",
            config.version
        ));
    }
    Ok(did)
}

/// The inventory's nodes for the lab cluster.
pub fn lab_nodes(dir: &Path, config: CitusConfig) -> Result<Vec<Node>, LabError> {
    let bin = bin_dir(config.version)?;
    Ok(node_names()
        .into_iter()
        .zip(config.ports)
        .map(|(name, port)| lab_node(dir, name, port, config.version, &bin))
        .collect())
}

/// The inventory's description of the lab cluster: the forms of p1, distributed by their key.
pub fn lab_cluster() -> CitusCluster {
    CitusCluster {
        name: CLUSTER.into(),
        coordinator: COORDINATOR.into(),
        workers: WORKERS.map(String::from).to_vec(),
        database: DATABASE.into(),
        shard_count: 32,
        tables: vec![CitusTable {
            table: "forms".into(),
            distribution: Distribution::Distributed,
            column: Some("form_id".into()),
            colocate_with: None,
        }],
    }
}

/// A lab with a Citus cluster, owned by a test or a rehearsal: free ports, a fresh directory
/// in /tmp, everything stopped by PID and removed on drop.
pub struct CitusLab {
    pub config: super::LabConfig,
    pub citus: CitusConfig,
    pub inventory: crate::inventory::Inventory,
    /// Seconds `lab up` took, Citus nodes included.
    pub start_seconds: f64,
}

impl CitusLab {
    /// A lab of `docs` forms on pg1 and an empty Citus cluster of PostgreSQL `version`.
    pub async fn start(docs: u64, version: u32) -> Result<CitusLab, LabError> {
        let dir =
            std::env::temp_dir().join(format!("cutover-citus-{}", uuid::Uuid::new_v4().simple()));
        let io = |source| LabError::Io {
            path: dir.display().to_string(),
            source,
        };
        let config = super::LabConfig::on_free_ports(&dir, docs).map_err(io)?;
        let port = || super::proc::free_port().map_err(io);
        let citus = CitusConfig {
            version,
            ports: [port()?, port()?, port()?],
        };
        let started = std::time::Instant::now();
        if let Err(e) = super::up_with(&config, None, Some(citus)).await {
            let _ = super::down(&dir);
            return Err(e);
        }
        let start_seconds = started.elapsed().as_secs_f64();
        let inventory = crate::inventory::load(&config.inventory_path())
            .map_err(|e| LabError::Inventory(e.to_string()))?;
        Ok(CitusLab {
            config,
            citus,
            inventory,
            start_seconds,
        })
    }

    pub fn inventory_path(&self) -> PathBuf {
        self.config.inventory_path()
    }

    /// A connection to `db` on the coordinator.
    pub async fn coordinator(&self, db: &str) -> Result<tokio_postgres::Client, LabError> {
        Ok(crate::pg::connect(
            &crate::pg::Endpoint {
                address: "127.0.0.1".into(),
                port: self.citus.ports[0],
                user: "postgres".into(),
                dbname: db.into(),
                tls: self
                    .inventory
                    .node(COORDINATOR)
                    .and_then(|n| n.tls.clone())
                    .unwrap_or_default(),
            },
            crate::pg::SessionSettings::EXECUTOR,
        )
        .await?)
    }
}

impl Drop for CitusLab {
    fn drop(&mut self) {
        if let Err(e) = super::down(&self.config.dir) {
            eprintln!("lab down {}: {e}", self.config.dir.display());
        }
    }
}
