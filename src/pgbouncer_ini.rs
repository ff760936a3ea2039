//! pgbouncer.ini `[databases]` editing: used by the lab to write its config and by the executor
//! to add or repoint aliases before `RELOAD`. Everything outside `[databases]` is kept verbatim.

use std::collections::BTreeMap;

/// One `[databases]` entry: `alias = host=H port=P dbname=D`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasTarget {
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl AliasTarget {
    pub fn render(&self) -> String {
        format!(
            "host={} port={} dbname={}",
            self.host, self.port, self.dbname
        )
    }
}

/// Set (add or replace) `alias` in the `[databases]` section of `ini`, returning the new text.
/// The section is created if missing. Other lines, comments and sections are untouched.
pub fn set_alias(ini: &str, alias: &str, target: &AliasTarget) -> String {
    let line = format!("{alias} = {}", target.render());
    let mut out: Vec<String> = Vec::new();
    let mut in_databases = false;
    let mut saw_databases = false;
    let mut written = false;
    for raw in ini.lines() {
        let trimmed = raw.trim();
        if trimmed.starts_with('[') {
            if in_databases && !written {
                out.push(line.clone());
                written = true;
            }
            in_databases = trimmed.eq_ignore_ascii_case("[databases]");
            saw_databases |= in_databases;
            out.push(raw.to_string());
            continue;
        }
        if in_databases && entry_name(trimmed) == Some(alias) {
            if !written {
                out.push(line.clone());
                written = true;
            }
            continue;
        }
        out.push(raw.to_string());
    }
    if !written {
        if !saw_databases {
            out.insert(0, "[databases]".to_string());
            out.insert(1, line);
        } else {
            out.push(line);
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The `[databases]` entries of `ini`: alias → raw connection string.
pub fn aliases(ini: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut in_databases = false;
    for raw in ini.lines() {
        let trimmed = raw.trim();
        if trimmed.starts_with('[') {
            in_databases = trimmed.eq_ignore_ascii_case("[databases]");
            continue;
        }
        if !in_databases {
            continue;
        }
        if let (Some(name), Some((_, value))) = (entry_name(trimmed), trimmed.split_once('=')) {
            map.insert(name.to_string(), value.trim().to_string());
        }
    }
    map
}

/// Parse `host=H port=P dbname=D` (as written by [`AliasTarget::render`]).
pub fn parse_target(conn: &str) -> Option<AliasTarget> {
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for part in conn.split_whitespace() {
        let (k, v) = part.split_once('=')?;
        fields.insert(k, v);
    }
    Some(AliasTarget {
        host: fields.get("host")?.to_string(),
        port: fields.get("port")?.parse().ok()?,
        dbname: fields.get("dbname")?.to_string(),
    })
}

fn entry_name(line: &str) -> Option<&str> {
    if line.starts_with(';') || line.starts_with('#') {
        return None;
    }
    let (name, _) = line.split_once('=')?;
    let name = name.trim();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "[databases]\n; comment\na = host=127.0.0.1 port=1 dbname=a\nb = host=127.0.0.1 port=1 dbname=b\n\n[pgbouncer]\nlisten_port = 6432\n";

    fn target(port: u16, db: &str) -> AliasTarget {
        AliasTarget {
            host: "127.0.0.1".into(),
            port,
            dbname: db.into(),
        }
    }

    #[test]
    fn repoint_replaces_in_place_and_keeps_the_rest() {
        let out = set_alias(INI, "b", &target(2, "b2"));
        assert_eq!(
            out,
            INI.replace(
                "b = host=127.0.0.1 port=1 dbname=b",
                "b = host=127.0.0.1 port=2 dbname=b2"
            )
        );
    }

    #[test]
    fn add_goes_to_end_of_databases_section() {
        let out = set_alias(INI, "c", &target(3, "c"));
        let map = aliases(&out);
        assert_eq!(map.len(), 3);
        assert_eq!(parse_target(&map["c"]), Some(target(3, "c")));
        assert!(out.contains("listen_port = 6432"));
        assert!(out.find("c = ").unwrap() < out.find("[pgbouncer]").unwrap());
    }

    #[test]
    fn missing_section_is_created() {
        let out = set_alias("[pgbouncer]\nx=1\n", "a", &target(1, "a"));
        assert_eq!(aliases(&out).len(), 1);
    }
}
