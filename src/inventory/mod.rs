//! Inventory: the first stage of the flow. Parses and validates `inventories/*.yaml` into
//! [`Inventory`], reporting every problem as `FILE:LINE:COL: message`.
//!
//! Reading goes text → [`marked`] tree (positions) → [`schema`] shape checks and conversion
//! → [`validate`] cross-field checks → [`Inventory`] (only when no problem was found).
//! Nothing here panics on any input; hostile input is bounded by `marked`'s limits.

mod marked;
mod model;
mod schema;
mod validate;

pub use model::*;

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Largest inventory file read; a real one is a few kilobytes.
const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;

/// One problem in an inventory file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, sorted by position; never empty.
    #[error("{}", DiagnosticList(.0))]
    Invalid(Vec<Diagnostic>),
    /// Writing an inventory back to YAML failed.
    #[error("cannot write inventory as YAML: {0}")]
    Encode(String),
}

/// Displays diagnostics one per line.
struct DiagnosticList<'a>(&'a [Diagnostic]);

impl fmt::Display for DiagnosticList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// Parses and validates inventory text. `file_label` prefixes every diagnostic.
pub fn parse(text: &str, file_label: &str) -> Result<Inventory, InventoryError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let read = marked::read(text);
    let mut problems = read.problems;
    let root = match read.root {
        Some(root) if !root.is_null() => Some(root),
        _ => {
            if !read.syntax_error {
                problems.push(marked::Problem::new(
                    marked::Pos::START,
                    "empty inventory: expected a mapping with environment, shard_count, hosts, nodes, partitions and sharded_tables",
                ));
            }
            None
        }
    };
    let inventory = root.and_then(|root| {
        schema::lint(&root, "", &mut problems);
        let converted = schema::convert(&root, &mut problems);
        validate::check(&root, &mut problems);
        match converted.map(serde_json::from_value::<Inventory>) {
            Some(Ok(inventory)) => Some(inventory),
            Some(Err(error)) => {
                problems.push(marked::Problem::new(
                    root.pos,
                    format!(
                        "internal error: the checked inventory does not fit the model: {error}"
                    ),
                ));
                None
            }
            None => None,
        }
    });
    match inventory {
        Some(mut inventory) if problems.is_empty() => {
            inventory.apply_tls_default();
            Ok(inventory)
        }
        _ => Err(invalid(problems, file_label)),
    }
}

/// Reads, parses and validates an inventory file.
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let io_error = |source| InventoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Read at most one byte past the limit, so that a huge or endless file is refused
    // without reading it all.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(io_error)?;
    parse_bytes(&bytes, &path.display().to_string())
}

/// Parses and validates inventory bytes: [`parse`], after reporting non-UTF-8 input and
/// oversized files as diagnostics.
pub fn parse_bytes(bytes: &[u8], label: &str) -> Result<Inventory, InventoryError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(invalid(
            vec![marked::Problem::new(
                marked::Pos::START,
                format!(
                    "file is larger than {MAX_FILE_BYTES} bytes; an inventory is a small text file"
                ),
            )],
            label,
        ));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text, label),
        Err(error) => Err(invalid(vec![utf8_problem(bytes, &error)], label)),
    }
}

/// Serializes an inventory; `parse(&to_yaml(x)?, _) == Ok(x)` for every valid `x`.
pub fn to_yaml(inventory: &Inventory) -> Result<String, InventoryError> {
    serde_yaml::to_string(inventory).map_err(|error| InventoryError::Encode(error.to_string()))
}

fn utf8_problem(bytes: &[u8], error: &std::str::Utf8Error) -> marked::Problem {
    let valid = &bytes[..error.valid_up_to()];
    // `valid` is valid UTF-8 by definition of `valid_up_to`.
    let valid = std::str::from_utf8(valid).unwrap_or_default();
    let line = valid.matches('\n').count() + 1;
    let line_start = valid.rfind('\n').map_or(0, |newline| newline + 1);
    let col = valid[line_start..].chars().count() + 1;
    let byte = bytes.get(error.valid_up_to()).copied().unwrap_or_default();
    marked::Problem::new(
        marked::Pos {
            line,
            col,
            index: valid.chars().count(),
        },
        format!("file is not valid UTF-8 (byte 0x{byte:02x}); save it as UTF-8"),
    )
}

fn invalid(mut problems: Vec<marked::Problem>, file_label: &str) -> InventoryError {
    problems.sort_by(|a, b| {
        (a.pos.line, a.pos.col, &a.message).cmp(&(b.pos.line, b.pos.col, &b.message))
    });
    problems.dedup();
    InventoryError::Invalid(
        problems
            .into_iter()
            .map(|problem| Diagnostic {
                file: file_label.to_string(),
                line: problem.pos.line.max(1),
                col: problem.pos.col.max(1),
                message: problem.message,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of the model set, so a schema/model mismatch in any field shows up.
    fn every_field_set() -> Inventory {
        Inventory {
            environment: "full".into(),
            shard_count: 2,
            hosts: vec![
                Host {
                    name: "jump".into(),
                    local: true,
                    ssh: None,
                },
                Host {
                    name: "remote".into(),
                    local: false,
                    ssh: Some(SshTarget {
                        address: "10.0.0.2".into(),
                        port: 2200,
                        user: "ubuntu".into(),
                        key: Some("~/.ssh/id_ed25519".into()),
                        known_hosts: Some("/etc/ssh/known".into()),
                    }),
                },
            ],
            nodes: vec![Node {
                name: "pg1".into(),
                host: "remote".into(),
                address: "10.0.0.2".into(),
                port: 5432,
                version: 15,
                data_dir: "/data".into(),
                bin_dir: "/bin".into(),
                user: "admin".into(),
                maintenance_db: "template1".into(),
                control: NodeControl {
                    start: "start".into(),
                    stop: "stop".into(),
                    promote: Some("promote".into()),
                },
                tls: Some(Tls {
                    sslmode: Some(SslMode::VerifyCa),
                    sslrootcert: Some("/etc/cutover/node-ca.crt".into()),
                    sslcert: Some("/etc/cutover/client.crt".into()),
                    sslkey: Some("/etc/cutover/client.key".into()),
                }),
            }],
            pgbouncers: vec![Pgbouncer {
                name: "b".into(),
                host: "jump".into(),
                admin: PgbouncerAdmin {
                    address: "127.0.0.1".into(),
                    port: 6432,
                    user: "pgadmin".into(),
                    tls: Some(Tls {
                        sslmode: Some(SslMode::Require),
                        sslrootcert: Some("/etc/cutover/ca.crt".into()),
                        sslcert: None,
                        sslkey: None,
                    }),
                },
                config: "/etc/pgbouncer.ini".into(),
                aliases: vec![PgbouncerAlias {
                    name: "proxy".into(),
                    node: "pg1".into(),
                    dbname: "proxy".into(),
                }],
            }],
            proxy: Some(Proxy {
                node: "pg1".into(),
                dbname: "proxy".into(),
                cluster: "c".into(),
                alias: Some("proxy".into()),
                route_via: Some(RouteVia {
                    address: "127.0.0.1".into(),
                    port: 6432,
                }),
            }),
            partitions: vec![
                Partition {
                    name: "p1".into(),
                    dbname: "db_p1".into(),
                    node: "pg1".into(),
                    shards: [0, 0],
                },
                Partition {
                    name: "p2".into(),
                    dbname: "db_p2".into(),
                    node: "pg1".into(),
                    shards: [1, 1],
                },
            ],
            sharded_tables: vec![ShardedTable {
                table: "public.forms".into(),
                hash: "hashtext(id::text)".into(),
                key: vec!["domain".into(), "id".into()],
            }],
            standbys: vec![Standby {
                node: "pg1".into(),
                primary: "pg1".into(),
                slot: Some("s".into()),
            }],
            slots: vec![Slot {
                node: "pg1".into(),
                name: "s".into(),
            }],
            traffic: Some(TrafficHooks {
                host: Some("jump".into()),
                stop: "down".into(),
                start: "up".into(),
            }),
            citus: Vec::new(),
            tls: Some(Tls {
                sslmode: Some(SslMode::VerifyFull),
                sslrootcert: Some("/etc/cutover/ca.crt".into()),
                sslcert: None,
                sslkey: None,
            }),
        }
    }

    #[test]
    fn the_schema_accepts_every_model_field() {
        let mut full = every_field_set();
        full.nodes.push(Node {
            name: "pg2".into(),
            ..full.nodes[0].clone()
        });
        full.standbys[0].node = "pg2".into();
        full.citus.push(CitusCluster {
            name: "reporting".into(),
            coordinator: "pg1".into(),
            workers: vec!["pg2".into()],
            database: "reports".into(),
            shard_count: 8,
            tables: vec![
                CitusTable {
                    table: "public.forms".into(),
                    distribution: Distribution::Distributed,
                    column: Some("domain".into()),
                    colocate_with: None,
                },
                CitusTable {
                    table: "cases".into(),
                    distribution: Distribution::Distributed,
                    column: Some("domain".into()),
                    colocate_with: Some("public.forms".into()),
                },
                CitusTable {
                    table: "users".into(),
                    distribution: Distribution::Reference,
                    column: None,
                    colocate_with: None,
                },
            ],
        });
        let text = to_yaml(&full).expect("serializes");
        let parsed = parse(&text, "full.yaml").unwrap_or_else(|error| panic!("{text}\n{error}"));
        assert_eq!(parsed, full);
    }

    #[test]
    fn the_environment_tls_default_fills_what_a_node_leaves_unset() {
        let mut inventory = every_field_set();
        inventory.nodes[0].tls = Some(Tls {
            sslmode: Some(SslMode::Require),
            ..Tls::default()
        });
        inventory.pgbouncers[0].admin.tls = None;
        inventory.apply_tls_default();
        let node = inventory.nodes[0].tls.clone().expect("merged");
        assert_eq!(node.sslmode, Some(SslMode::Require));
        assert_eq!(node.sslrootcert.as_deref(), Some("/etc/cutover/ca.crt"));
        let console = inventory.pgbouncers[0].admin.tls.clone().expect("merged");
        assert_eq!(console.sslmode, Some(SslMode::VerifyFull));
        let once = inventory.clone();
        inventory.apply_tls_default();
        assert_eq!(inventory, once, "idempotent");
    }

    #[test]
    fn non_utf8_is_located_at_the_first_bad_byte() {
        let error = parse_bytes(b"a: 1\nbb: \xc3\x28\n", "x.yaml").expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "x.yaml:2:5: file is not valid UTF-8 (byte 0xc3); save it as UTF-8"
        );
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let text = format!("\u{feff}{}", to_yaml(&every_field_set()).expect("yaml"));
        let error = parse(&text, "bom.yaml").expect_err("standby is its own primary");
        let InventoryError::Invalid(diagnostics) = error else {
            panic!("expected diagnostics");
        };
        assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
        assert!(diagnostics[0].message.contains("cannot be its own primary"));
    }
}
