//! Inventory, step 2 of 3: checks the marked tree's shape against the inventory schema
//! (missing, mistyped and unknown fields; secrets; duplicate keys) and converts it into a
//! JSON value that deserializes into [`super::Inventory`].
//!
//! Invariant: the schema below mirrors `model.rs` field by field (names, optionality, integer
//! ranges), so a tree that passes here always deserializes; `mod.rs` tests check this.

use serde_json::{Map, Value as Json};

use super::marked::{Marked, Problem, Scalar, ScalarStyle, Value};

/// What a field holds.
enum Kind {
    /// A non-empty string; any scalar is read as its text.
    Text,
    /// TCP port 1..=65535.
    Port,
    /// An integer from 1 to u32::MAX.
    PositiveU32,
    Bool,
    /// `[first, last]`, two u32.
    ShardRange,
    /// A non-empty list of non-empty strings.
    TextList,
    /// One of these words.
    OneOf(&'static [&'static str]),
    Struct(&'static Schema),
    List(&'static Schema),
}

#[derive(PartialEq, Eq)]
enum Presence {
    Required,
    Optional,
}

struct Field {
    name: &'static str,
    kind: Kind,
    presence: Presence,
}

struct Schema {
    fields: &'static [Field],
}

const fn required(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        presence: Presence::Required,
    }
}

const fn optional(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        presence: Presence::Optional,
    }
}

static INVENTORY: Schema = Schema {
    fields: &[
        required("environment", Kind::Text),
        required("shard_count", Kind::PositiveU32),
        required("hosts", Kind::List(&HOST)),
        required("nodes", Kind::List(&NODE)),
        optional("pgbouncers", Kind::List(&PGBOUNCER)),
        optional("proxy", Kind::Struct(&PROXY)),
        required("partitions", Kind::List(&PARTITION)),
        required("sharded_tables", Kind::List(&SHARDED_TABLE)),
        optional("standbys", Kind::List(&STANDBY)),
        optional("slots", Kind::List(&SLOT)),
        optional("traffic", Kind::Struct(&TRAFFIC)),
        optional("citus", Kind::List(&CITUS)),
        optional("tls", Kind::Struct(&TLS)),
    ],
};

static TLS: Schema = Schema {
    fields: &[
        optional(
            "sslmode",
            Kind::OneOf(crate::inventory::model::SslMode::NAMES),
        ),
        optional("sslrootcert", Kind::Text),
        optional("sslcert", Kind::Text),
        optional("sslkey", Kind::Text),
    ],
};

static CITUS: Schema = Schema {
    fields: &[
        required("name", Kind::Text),
        required("coordinator", Kind::Text),
        required("workers", Kind::TextList),
        required("database", Kind::Text),
        optional("shard_count", Kind::PositiveU32),
        optional("tables", Kind::List(&CITUS_TABLE)),
    ],
};

static CITUS_TABLE: Schema = Schema {
    fields: &[
        required("table", Kind::Text),
        required(
            "distribution",
            Kind::OneOf(crate::inventory::model::Distribution::NAMES),
        ),
        optional("column", Kind::Text),
        optional("colocate_with", Kind::Text),
    ],
};

static HOST: Schema = Schema {
    fields: &[
        required("name", Kind::Text),
        optional("local", Kind::Bool),
        optional("ssh", Kind::Struct(&SSH)),
    ],
};

static SSH: Schema = Schema {
    fields: &[
        required("address", Kind::Text),
        optional("port", Kind::Port),
        required("user", Kind::Text),
        optional("key", Kind::Text),
        optional("known_hosts", Kind::Text),
    ],
};

static NODE: Schema = Schema {
    fields: &[
        required("name", Kind::Text),
        required("host", Kind::Text),
        required("address", Kind::Text),
        required("port", Kind::Port),
        required("version", Kind::PositiveU32),
        required("data_dir", Kind::Text),
        required("bin_dir", Kind::Text),
        optional("user", Kind::Text),
        optional("maintenance_db", Kind::Text),
        required("control", Kind::Struct(&NODE_CONTROL)),
        optional("tls", Kind::Struct(&TLS)),
    ],
};

static NODE_CONTROL: Schema = Schema {
    fields: &[
        required("start", Kind::Text),
        required("stop", Kind::Text),
        optional("promote", Kind::Text),
    ],
};

static PGBOUNCER: Schema = Schema {
    fields: &[
        required("name", Kind::Text),
        required("host", Kind::Text),
        required("admin", Kind::Struct(&PGBOUNCER_ADMIN)),
        required("config", Kind::Text),
        required("aliases", Kind::List(&PGBOUNCER_ALIAS)),
    ],
};

static PGBOUNCER_ADMIN: Schema = Schema {
    fields: &[
        required("address", Kind::Text),
        required("port", Kind::Port),
        required("user", Kind::Text),
        optional("tls", Kind::Struct(&TLS)),
    ],
};

static PGBOUNCER_ALIAS: Schema = Schema {
    fields: &[
        required("name", Kind::Text),
        required("node", Kind::Text),
        required("dbname", Kind::Text),
    ],
};

static PROXY: Schema = Schema {
    fields: &[
        required("node", Kind::Text),
        required("dbname", Kind::Text),
        required("cluster", Kind::Text),
        optional("alias", Kind::Text),
        optional("route_via", Kind::Struct(&ROUTE_VIA)),
    ],
};

static ROUTE_VIA: Schema = Schema {
    fields: &[
        required("address", Kind::Text),
        required("port", Kind::Port),
    ],
};

static PARTITION: Schema = Schema {
    fields: &[
        required("name", Kind::Text),
        required("dbname", Kind::Text),
        required("node", Kind::Text),
        required("shards", Kind::ShardRange),
    ],
};

static SHARDED_TABLE: Schema = Schema {
    fields: &[
        required("table", Kind::Text),
        required("hash", Kind::Text),
        required("key", Kind::TextList),
    ],
};

static STANDBY: Schema = Schema {
    fields: &[
        required("node", Kind::Text),
        required("primary", Kind::Text),
        optional("slot", Kind::Text),
    ],
};

static SLOT: Schema = Schema {
    fields: &[required("node", Kind::Text), required("name", Kind::Text)],
};

static TRAFFIC: Schema = Schema {
    fields: &[
        optional("host", Kind::Text),
        required("stop", Kind::Text),
        required("start", Kind::Text),
    ],
};

/// Key names that would carry a secret; matched as substrings of the lower-cased key.
const SECRET_KEY_PARTS: &[&str] = &["password", "passwd", "passphrase", "secret"];

pub(crate) fn is_secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| lower.contains(part))
}

/// Lints that apply anywhere in the document, whatever the schema says: secrets, private key
/// material, duplicate keys and non-scalar keys. Recursion is bounded by the tree's depth.
pub(crate) fn lint(node: &Marked, path: &str, problems: &mut Vec<Problem>) {
    match &node.value {
        Value::Scalar(scalar) => {
            if scalar.text.contains("PRIVATE KEY-----") {
                problems.push(Problem::new(
                    node.pos,
                    format!("{}: looks like private key material; an inventory names a key file (`key: ~/.ssh/id_ed25519`) or relies on ssh-agent, it never holds the key", display_path(path)),
                ));
            }
        }
        Value::Seq(items) => {
            for (index, item) in items.iter().enumerate() {
                lint(item, &format!("{path}[{index}]"), problems);
            }
        }
        Value::Map(entries) => {
            for (index, (key, value)) in entries.iter().enumerate() {
                let Some(name) = key.key_text() else {
                    problems.push(Problem::new(
                        key.pos,
                        format!(
                            "{}: mapping keys must be plain names, found {}",
                            display_path(path),
                            key.describe()
                        ),
                    ));
                    continue;
                };
                let child = join(path, name);
                if is_secret_key(name) {
                    problems.push(Problem::new(key.pos, format!(
                        "{child}: secrets never go in an inventory; PostgreSQL passwords come from PG* environment variables (PGPASSWORD, PGPASSFILE) or ~/.pgpass, SSH keys from a key file or ssh-agent"
                    )));
                    continue;
                }
                if let Some((first, _)) = entries[..index]
                    .iter()
                    .find(|(earlier, _)| earlier.key_text() == Some(name))
                {
                    problems.push(Problem::new(
                        key.pos,
                        format!("{child}: duplicate key (first at line {})", first.pos.line),
                    ));
                }
                lint(value, &child, problems);
            }
        }
    }
}

/// Checks the whole document against the inventory schema; `Some` when it conforms.
pub(crate) fn convert(root: &Marked, problems: &mut Vec<Problem>) -> Option<Json> {
    convert_struct(root, &INVENTORY, "", problems)
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "inventory"
    } else {
        path
    }
}

fn convert_struct(
    node: &Marked,
    schema: &Schema,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<Json> {
    let Value::Map(entries) = &node.value else {
        problems.push(Problem::new(
            node.pos,
            format!(
                "{}: expected a mapping of fields, found {}",
                display_path(path),
                node.describe()
            ),
        ));
        return None;
    };
    let mut ok = true;
    for (key, _) in entries {
        let Some(name) = key.key_text() else {
            ok = false; // reported by `lint`
            continue;
        };
        if is_secret_key(name) {
            ok = false; // reported by `lint`
        } else if !schema.fields.iter().any(|field| field.name == name) {
            ok = false;
            problems.push(Problem::new(
                key.pos,
                unknown_field_message(display_path(path), name, schema),
            ));
        }
    }
    let mut object = Map::new();
    for field in schema.fields {
        let value = node.field(field.name).filter(|value| !value.is_null());
        let child = join(path, field.name);
        match value {
            Some(value) => match convert_kind(value, &field.kind, &child, problems) {
                Some(json) => {
                    object.insert(field.name.to_string(), json);
                }
                None => ok = false,
            },
            None if field.presence == Presence::Required => {
                ok = false;
                problems.push(match node.entry(field.name) {
                    Some((key, _)) => Problem::new(key.pos, format!("{child}: missing value")),
                    None => Problem::new(
                        node.pos,
                        format!("{}: missing field `{}`", display_path(path), field.name),
                    ),
                });
            }
            None => {}
        }
    }
    ok.then_some(Json::Object(object))
}

fn unknown_field_message(path: &str, name: &str, schema: &Schema) -> String {
    let closest = schema
        .fields
        .iter()
        .map(|field| (edit_distance(name, field.name), field.name))
        .min();
    match closest {
        Some((distance, suggestion)) if distance <= 2 && distance < name.len() => {
            format!("{path}: unknown field `{name}` (did you mean `{suggestion}`?)")
        }
        _ => {
            let expected: Vec<&str> = schema.fields.iter().map(|field| field.name).collect();
            format!(
                "{path}: unknown field `{name}`; expected one of: {}",
                expected.join(", ")
            )
        }
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Control characters other than tab and newline, and the Unicode line/paragraph separators:
/// never intended in a name, path or command, and YAML tools disagree on how to read them.
pub(crate) fn is_invisible_control(c: char) -> bool {
    (c.is_control() && c != '\t' && c != '\n') || c == '\u{2028}' || c == '\u{2029}'
}

fn convert_kind(
    node: &Marked,
    kind: &Kind,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<Json> {
    let mut mistyped = |expected: &str| {
        problems.push(Problem::new(
            node.pos,
            format!("{path}: expected {expected}, found {}", node.describe()),
        ));
        None
    };
    match kind {
        Kind::Text => match node.text() {
            Some("") => {
                problems.push(Problem::new(node.pos, format!("{path}: must not be empty")));
                None
            }
            Some(text) => match text.chars().find(|c| is_invisible_control(*c)) {
                Some(control) => {
                    problems.push(Problem::new(
                        node.pos,
                        format!(
                            "{path}: contains the invisible control character U+{:04X}; remove it",
                            u32::from(control)
                        ),
                    ));
                    None
                }
                None => Some(Json::String(text.to_string())),
            },
            None => mistyped("a string"),
        },
        Kind::OneOf(words) => match node.text() {
            Some(text) if words.contains(&text) => Some(Json::String(text.to_string())),
            Some(text) => {
                problems.push(Problem::new(
                    node.pos,
                    format!("{path}: `{text}` is not one of: {}", words.join(", ")),
                ));
                None
            }
            None => mistyped(&format!("one of: {}", words.join(", "))),
        },
        Kind::Port => match node.uint() {
            Some(port @ 1..=65535) => Some(Json::from(port)),
            _ => mistyped("a port number from 1 to 65535"),
        },
        Kind::PositiveU32 => match node.uint() {
            Some(number @ 1..=0xFFFF_FFFF) => Some(Json::from(number)),
            _ => mistyped("a whole number from 1 to 4294967295"),
        },
        Kind::Bool => match &node.value {
            Value::Scalar(Scalar {
                text,
                style: ScalarStyle::Plain,
            }) => match text.as_str() {
                "true" | "True" | "TRUE" => Some(Json::Bool(true)),
                "false" | "False" | "FALSE" => Some(Json::Bool(false)),
                _ => mistyped("true or false"),
            },
            _ => mistyped("true or false"),
        },
        Kind::ShardRange => {
            let items = node.items();
            let bounds: Vec<Option<u64>> = items.iter().map(Marked::uint).collect();
            match (&node.value, bounds.as_slice()) {
                (Value::Seq(_), [Some(first), Some(last)])
                    if *first <= u64::from(u32::MAX) && *last <= u64::from(u32::MAX) =>
                {
                    Some(Json::from(vec![*first, *last]))
                }
                _ => mistyped("a shard range [first, last] of two whole numbers"),
            }
        }
        Kind::TextList => {
            let items = node.items();
            let texts: Vec<Option<&str>> = items.iter().map(Marked::text).collect();
            let all_texts = texts.iter().all(|text| {
                text.is_some_and(|t| !t.is_empty() && !t.chars().any(is_invisible_control))
            });
            if matches!(node.value, Value::Seq(_)) && !items.is_empty() && all_texts {
                Some(Json::from(
                    texts
                        .into_iter()
                        .map(|text| text.unwrap_or_default().to_string())
                        .collect::<Vec<_>>(),
                ))
            } else {
                mistyped("a non-empty list of column names")
            }
        }
        Kind::Struct(schema) => convert_struct(node, schema, path, problems),
        Kind::List(schema) => {
            let Value::Seq(items) = &node.value else {
                return mistyped("a list");
            };
            let mut converted = Vec::with_capacity(items.len());
            let mut ok = true;
            for (index, item) in items.iter().enumerate() {
                match convert_struct(item, schema, &format!("{path}[{index}]"), problems) {
                    Some(json) => converted.push(json),
                    None => ok = false,
                }
            }
            ok.then_some(Json::Array(converted))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("prot", "port"), 2);
        assert_eq!(edit_distance("adress", "address"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn secret_keys_are_matched_case_insensitively() {
        assert!(is_secret_key("password"));
        assert!(is_secret_key("PGPASSWORD"));
        assert!(is_secret_key("ssh_key_passphrase"));
        assert!(is_secret_key("client_secret"));
        assert!(!is_secret_key("key"));
        assert!(!is_secret_key("known_hosts"));
    }
}
