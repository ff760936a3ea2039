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
    /// `host=H port=P dbname=D`, each value through [`quote_value`].
    pub fn render(&self) -> String {
        format!(
            "host={} port={} dbname={}",
            quote_value(&self.host),
            self.port,
            quote_value(&self.dbname)
        )
    }
}

/// A `[databases]` connection-string value as pgbouncer reads it: bare when plain (letters,
/// digits and `._-/:@+,`), otherwise single-quoted with `'` doubled (pgbouncer, unlike libpq,
/// takes a backslash literally). A value can neither end early nor add a keyword.
pub fn quote_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@+,".contains(&b));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// The `key=value` pairs of a `[databases]` connection string, values unquoted as
/// [`quote_value`] quotes them; `None` when malformed.
fn split_pairs(conn: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = conn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        chars.next_if_eq(&'=')?;
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next()? {
                    '\'' if chars.next_if_eq(&'\'').is_some() => value.push('\''),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        if key.is_empty() {
            return None;
        }
        pairs.push((key, value));
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
    let fields: BTreeMap<String, String> = split_pairs(conn)?.into_iter().collect();
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

    #[test]
    fn odd_names_stay_one_value_and_round_trip() {
        for dbname in [
            "plain_db",
            "two words",
            "it's",
            r"back\slash",
            "x host=evil",
            "",
        ] {
            let t = AliasTarget {
                host: "127.0.0.1".into(),
                port: 5,
                dbname: dbname.into(),
            };
            let out = set_alias(INI, "odd", &t);
            assert_eq!(parse_target(&aliases(&out)["odd"]), Some(t), "{out}");
        }
        assert_eq!(
            target(1, "x host=evil").render(),
            "host=127.0.0.1 port=1 dbname='x host=evil'"
        );
        assert_eq!(
            target(1, "it's").render(),
            "host=127.0.0.1 port=1 dbname='it''s'"
        );
    }
}
