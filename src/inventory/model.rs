//! Inventory data model: the typed shape of `inventories/*.yaml`, shared by every later stage.
//!
//! Invariant: a value of [`Inventory`] handed out by [`super::load`] has passed validation,
//! so every name it references (host, node, pgbouncer) exists and the shard ranges tile
//! `0..shard_count` exactly.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Environment name shown in the cockpit header, e.g. `lab` or `production`.
    pub environment: String,
    /// Total number of shards; a power of two. A row's shard is `hash & (shard_count - 1)`.
    pub shard_count: u32,
    pub hosts: Vec<Host>,
    pub nodes: Vec<Node>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pgbouncers: Vec<Pgbouncer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
    pub partitions: Vec<Partition>,
    pub sharded_tables: Vec<ShardedTable>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<Standby>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<Slot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficHooks>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub citus: Vec<CitusCluster>,
    /// The environment's TLS default; a node's or console's own `tls` overrides it field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// TLS for PostgreSQL and pgbouncer connections, with libpq's keywords and meanings.
/// Unset fields fall back to the environment's `tls`, then to `PGSSLMODE`, `PGSSLROOTCERT`,
/// `PGSSLCERT`, `PGSSLKEY` (see [`crate::tls`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<SslMode>,
    /// CA certificate(s) (PEM) the server certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<String>,
    /// Client certificate (PEM), for servers that ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslcert: Option<String>,
    /// Client private key file (PEM); a path, never the key itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslkey: Option<String>,
}

impl Tls {
    /// Field by field: `self` where set, else `fallback`.
    pub fn or(&self, fallback: &Tls) -> Tls {
        Tls {
            sslmode: self.sslmode.or(fallback.sslmode),
            sslrootcert: self.sslrootcert.clone().or(fallback.sslrootcert.clone()),
            sslcert: self.sslcert.clone().or(fallback.sslcert.clone()),
            sslkey: self.sslkey.clone().or(fallback.sslkey.clone()),
        }
    }
}

/// libpq's `sslmode`, without `allow` (it only exists to downgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, unverified; plain text otherwise.
    Prefer,
    /// TLS always, certificate unverified.
    Require,
    /// TLS, certificate chains to the root certificate; the host name is not checked.
    VerifyCa,
    /// TLS, certificate chains to the root certificate and names the address connected to.
    VerifyFull,
}

impl SslMode {
    pub const NAMES: &'static [&'static str] =
        &["disable", "prefer", "require", "verify-ca", "verify-full"];

    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate is checked against a root certificate.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Where host commands run: over SSH, or on the jump host itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: String,
    /// `true` runs commands locally on the machine that runs `cutover`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub local: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshTarget {
    pub address: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    pub user: String,
    /// Private key file. When absent, ssh-agent (`SSH_AUTH_SOCK`) is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// known_hosts file used to verify the host key; defaults to `~/.ssh/known_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    /// Name of the [`Host`] the server runs on.
    pub host: String,
    /// Address clients (and `cutover`) use to reach PostgreSQL.
    pub address: String,
    pub port: u16,
    /// Major version, e.g. 15.
    pub version: u32,
    pub data_dir: String,
    pub bin_dir: String,
    /// Database role `cutover` connects as. Passwords come from `PGPASSWORD` or `~/.pgpass`.
    #[serde(default = "default_db_user")]
    pub user: String,
    /// Maintenance database used for server-wide readings.
    #[serde(default = "default_maintenance_db")]
    pub maintenance_db: String,
    pub control: NodeControl,
    /// TLS to this node; unset fields come from the environment's `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// Shell commands run on the node's host to control the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeControl {
    pub start: String,
    pub stop: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pgbouncer {
    pub name: String,
    pub host: String,
    /// Admin console address; the console speaks the simple query protocol only.
    pub admin: PgbouncerAdmin,
    /// Path of pgbouncer.ini on its host.
    pub config: String,
    pub aliases: Vec<PgbouncerAlias>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgbouncerAdmin {
    pub address: String,
    pub port: u16,
    pub user: String,
    /// TLS to the admin console (and the pooled aliases); unset fields come from the environment's `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgbouncerAlias {
    pub name: String,
    pub node: String,
    pub dbname: String,
}

/// The plproxy entry database the application calls into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    pub node: String,
    pub dbname: String,
    /// Name of the plproxy SQL/MED server (`CREATE SERVER <cluster> ... plproxy`).
    pub cluster: String,
    /// The pgbouncer alias the application enters by; this is the alias a cutover pauses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Host and port written into plproxy partition connect strings (normally pgbouncer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_via: Option<RouteVia>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteVia {
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub name: String,
    pub dbname: String,
    pub node: String,
    /// Inclusive shard range `[first, last]`.
    pub shards: [u32; 2],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedTable {
    /// Table name, optionally schema-qualified as `schema.table`.
    pub table: String,
    /// SQL expression yielding a row's 32-bit hash, e.g. `hashtext(form_id::text)`.
    pub hash: String,
    /// Primary-key column(s), used for batched deletes and stray-row moves.
    pub key: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standby {
    pub node: String,
    pub primary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub node: String,
    pub name: String,
}

/// Commands that stop and start application traffic, e.g. `commcare-cloud prod downtime start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficHooks {
    /// Host to run the hooks on; defaults to the jump host (local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub stop: String,
    pub start: String,
}

/// A Citus cluster: a coordinator, its workers (all of them [`Node`]s), the database Citus
/// lives in, and how each table is spread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CitusCluster {
    pub name: String,
    pub coordinator: String,
    pub workers: Vec<String>,
    pub database: String,
    /// `citus.shard_count`: shards per distributed table.
    #[serde(default = "default_citus_shard_count")]
    pub shard_count: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<CitusTable>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CitusTable {
    /// Table name, optionally schema-qualified as `schema.table`.
    pub table: String,
    pub distribution: Distribution,
    /// The distribution column; present exactly when `distribution` is `distributed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// A distributed table of the same cluster whose shards this one's follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colocate_with: Option<String>,
}

/// How Citus spreads a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Sharded by `column` across the workers (`create_distributed_table`).
    Distributed,
    /// A full copy on every node (`create_reference_table`).
    Reference,
    /// Left on the coordinator only.
    Local,
}

impl Distribution {
    pub const NAMES: &'static [&'static str] = &["distributed", "reference", "local"];
}

fn default_citus_shard_count() -> u32 {
    32
}
fn default_ssh_port() -> u16 {
    22
}
fn default_db_user() -> String {
    "postgres".to_string()
}
fn default_maintenance_db() -> String {
    "postgres".to_string()
}
fn is_false(b: &bool) -> bool {
    !*b
}

impl Inventory {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn partition(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }
    /// Host a node's commands run on. `None` only for an unvalidated inventory.
    pub fn host_of(&self, node: &Node) -> Option<&Host> {
        self.host(&node.host)
    }
    /// The partition owning `shard`, if any.
    pub fn owner_of(&self, shard: u32) -> Option<&Partition> {
        self.partitions
            .iter()
            .find(|p| p.shards[0] <= shard && shard <= p.shards[1])
    }
    /// Partitions grouped by node name.
    pub fn partitions_by_node(&self) -> BTreeMap<&str, Vec<&Partition>> {
        let mut map: BTreeMap<&str, Vec<&Partition>> = BTreeMap::new();
        for p in &self.partitions {
            map.entry(p.node.as_str()).or_default().push(p);
        }
        map
    }
    pub fn citus_cluster(&self, name: &str) -> Option<&CitusCluster> {
        self.citus.iter().find(|c| c.name == name)
    }
    /// Puts the environment's `tls` default into every node's and console's own `tls`, so an
    /// [`crate::pg::Endpoint`] built from one node carries the settings that apply to it.
    /// Idempotent: the merged inventory merges to itself.
    pub fn apply_tls_default(&mut self) {
        let Some(default) = self.tls.clone() else {
            return;
        };
        for node in &mut self.nodes {
            node.tls = Some(node.tls.clone().unwrap_or_default().or(&default));
        }
        for bouncer in &mut self.pgbouncers {
            bouncer.admin.tls = Some(bouncer.admin.tls.clone().unwrap_or_default().or(&default));
        }
    }
    /// Shard mask: `shard_count - 1`.
    pub fn shard_mask(&self) -> u32 {
        self.shard_count.saturating_sub(1)
    }
}
