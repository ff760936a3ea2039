//! Inventory, step 3 of 3: cross-field checks on the marked tree — names that must be unique,
//! references that must resolve, hosts reached one way, and shard ranges that tile
//! `0..shard_count`. Works on whatever parts are well-formed, so one run reports every problem.

use std::collections::HashMap;

use super::marked::{Marked, Pos, Problem, Scalar, ScalarStyle, Value};

/// Runs every cross-field check on the document root.
pub(crate) fn check(root: &Marked, problems: &mut Vec<Problem>) {
    let hosts = unique_names(root, "hosts", "name", "host", problems);
    let nodes = unique_names(root, "nodes", "name", "node", problems);
    unique_names(root, "pgbouncers", "name", "pgbouncer", problems);
    unique_names(root, "partitions", "name", "partition", problems);
    unique_names(root, "sharded_tables", "table", "sharded table", problems);
    for list in ["hosts", "nodes", "partitions"] {
        require_non_empty(root, list, problems);
    }
    check_hosts(root, problems);

    let host_names = Known::new("host", "hosts", &hosts);
    let node_names = Known::new("node", "nodes", &nodes);
    for (index, node) in entries(root, "nodes") {
        host_names.check(node, "host", &format!("nodes[{index}]"), problems);
    }
    let mut aliases: Vec<(&str, Pos)> = Vec::new();
    for (index, pgbouncer) in entries(root, "pgbouncers") {
        let path = format!("pgbouncers[{index}]");
        host_names.check(pgbouncer, "host", &path, problems);
        let label = pgbouncer
            .field("name")
            .and_then(Marked::text)
            .unwrap_or("?");
        let mut seen: Vec<(&str, Pos)> = Vec::new();
        for (alias_index, alias) in list(pgbouncer.field("aliases")) {
            let alias_path = format!("{path}.aliases[{alias_index}]");
            node_names.check(alias, "node", &alias_path, problems);
            if let Some((name, pos)) = text_at(alias, "name") {
                if let Some((_, first)) = seen.iter().find(|(seen, _)| *seen == name) {
                    problems.push(Problem::new(
                        pos,
                        format!(
                            "{alias_path}.name: duplicate alias `{name}` in pgbouncer `{label}` (first at line {})",
                            first.line
                        ),
                    ));
                } else {
                    seen.push((name, pos));
                    aliases.push((name, pos));
                }
            }
        }
    }
    for (index, partition) in entries(root, "partitions") {
        node_names.check(partition, "node", &format!("partitions[{index}]"), problems);
    }
    if let Some(proxy) = root.field("proxy") {
        node_names.check(proxy, "node", "proxy", problems);
        if let Some((alias, pos)) = text_at(proxy, "alias") {
            if !aliases.iter().any(|(name, _)| *name == alias) {
                problems.push(Problem::new(
                    pos,
                    format!(
                        "proxy.alias: `{alias}` is not an alias of any pgbouncer ({})",
                        Known::new("alias", "aliases", &aliases).listing()
                    ),
                ));
            }
        }
    }
    for (index, standby) in entries(root, "standbys") {
        let path = format!("standbys[{index}]");
        node_names.check(standby, "node", &path, problems);
        node_names.check(standby, "primary", &path, problems);
        if let (Some((node, _)), Some((primary, pos))) =
            (text_at(standby, "node"), text_at(standby, "primary"))
        {
            if node == primary {
                problems.push(Problem::new(
                    pos,
                    format!("{path}.primary: node `{node}` cannot be its own primary"),
                ));
            }
        }
    }
    let mut slots: Vec<(&str, &str, Pos)> = Vec::new();
    for (index, slot) in entries(root, "slots") {
        let path = format!("slots[{index}]");
        node_names.check(slot, "node", &path, problems);
        if let (Some((node, _)), Some((name, pos))) = (text_at(slot, "node"), text_at(slot, "name"))
        {
            if let Some((_, _, first)) = slots.iter().find(|(n, s, _)| *n == node && *s == name) {
                problems.push(Problem::new(
                    pos,
                    format!(
                        "{path}.name: duplicate slot `{name}` on node `{node}` (first at line {})",
                        first.line
                    ),
                ));
            } else {
                slots.push((node, name, pos));
            }
        }
    }
    if let Some(traffic) = root.field("traffic") {
        host_names.check(traffic, "host", "traffic", problems);
    }
    check_dbnames(root, problems);
    check_shards(root, problems);
    check_citus(root, &node_names, problems);
    check_hash_expressions(root, problems);
    check_tls(root, problems);
}

/// Each `tls` block, read with the environment's `tls` under it: a verifying `sslmode` has a
/// root certificate to verify with, and a client certificate comes with its key (and back).
fn check_tls(root: &Marked, problems: &mut Vec<Problem>) {
    let default = root.field("tls");
    let mut blocks: Vec<(String, &Marked)> = Vec::new();
    if let Some(tls) = default {
        blocks.push(("tls".to_string(), tls));
    }
    for (index, node) in entries(root, "nodes") {
        if let Some(tls) = node.field("tls") {
            blocks.push((format!("nodes[{index}].tls"), tls));
        }
    }
    for (index, bouncer) in entries(root, "pgbouncers") {
        if let Some(tls) = bouncer.field("admin").and_then(|admin| admin.field("tls")) {
            blocks.push((format!("pgbouncers[{index}].admin.tls"), tls));
        }
    }
    let inherited = |tls: &Marked, key: &str| -> bool {
        tls.field(key).and_then(Marked::text).is_some()
            || default
                .and_then(|d| d.field(key))
                .and_then(Marked::text)
                .is_some()
    };
    for (path, tls) in blocks {
        if let Some((mode, pos)) = text_at(tls, "sslmode") {
            if (mode == "verify-ca" || mode == "verify-full") && !inherited(tls, "sslrootcert") {
                problems.push(Problem::new(
                    pos,
                    format!(
                        "{path}.sslmode: {mode} needs a root certificate to verify with; set sslrootcert (here or in the top-level tls), or use require to encrypt without verifying"
                    ),
                ));
            }
        }
        for (have, need, message) in [
            (
                "sslcert",
                "sslkey",
                "a client certificate needs its private key: set sslkey",
            ),
            (
                "sslkey",
                "sslcert",
                "a private key needs its client certificate: set sslcert",
            ),
        ] {
            if let Some((_, pos)) = text_at(tls, have) {
                if !inherited(tls, need) {
                    problems.push(Problem::new(pos, format!("{path}.{have}: {message}")));
                }
            }
        }
    }
}

/// A Citus cluster's nodes exist and play one role each; a distributed table names its
/// column, the others name none; `colocate_with` is a distributed table of the same cluster.
fn check_citus(root: &Marked, node_names: &Known, problems: &mut Vec<Problem>) {
    unique_names(root, "citus", "name", "Citus cluster", problems);
    for (index, cluster) in entries(root, "citus") {
        let path = format!("citus[{index}]");
        node_names.check(cluster, "coordinator", &path, problems);
        let coordinator = text_at(cluster, "coordinator").map(|(name, _)| name);
        let mut workers: Vec<&str> = Vec::new();
        for (worker_index, worker) in list(cluster.field("workers")) {
            let Some(name) = worker.text() else { continue };
            let worker_path = format!("{path}.workers[{worker_index}]");
            if !node_names.names.iter().any(|(known, _)| *known == name) {
                problems.push(Problem::new(
                    worker.pos,
                    format!(
                        "{worker_path}: unknown node `{name}` ({})",
                        node_names.listing()
                    ),
                ));
            } else if Some(name) == coordinator {
                problems.push(Problem::new(
                    worker.pos,
                    format!("{worker_path}: `{name}` is the coordinator; a node is the coordinator or a worker, not both"),
                ));
            } else if workers.contains(&name) {
                problems.push(Problem::new(
                    worker.pos,
                    format!("{worker_path}: worker `{name}` is listed twice"),
                ));
            }
            workers.push(name);
        }
        let mut tables: Vec<(&str, Pos)> = Vec::new();
        let mut distributed: Vec<&str> = Vec::new();
        for (table_index, table) in list(cluster.field("tables")) {
            let table_path = format!("{path}.tables[{table_index}]");
            let name = text_at(table, "table");
            if let Some((name, pos)) = name {
                if let Some((_, first)) = tables.iter().find(|(seen, _)| *seen == name) {
                    problems.push(Problem::new(
                        pos,
                        format!(
                            "{table_path}.table: duplicate table `{name}` (first at line {})",
                            first.line
                        ),
                    ));
                }
                tables.push((name, pos));
            }
            let distribution = text_at(table, "distribution").map(|(d, _)| d);
            let column = table.field("column").filter(|c| !c.is_null());
            match (distribution, column) {
                (Some("distributed"), None) => problems.push(Problem::new(
                    table.pos,
                    format!("{table_path}: a distributed table names its distribution `column`"),
                )),
                (Some(other @ ("reference" | "local")), Some(column)) => {
                    problems.push(Problem::new(
                        column.pos,
                        format!("{table_path}.column: a {other} table has no distribution column"),
                    ))
                }
                _ => {}
            }
            if distribution == Some("distributed") {
                if let Some((name, _)) = name {
                    distributed.push(name);
                }
            } else if let Some(colocate) = table.field("colocate_with").filter(|c| !c.is_null()) {
                problems.push(Problem::new(
                    colocate.pos,
                    format!("{table_path}.colocate_with: only a distributed table is co-located"),
                ));
            }
        }
        for (table_index, table) in list(cluster.field("tables")) {
            if let Some((with, pos)) = text_at(table, "colocate_with") {
                if !distributed.contains(&with) {
                    problems.push(Problem::new(
                        pos,
                        format!(
                            "{path}.tables[{table_index}].colocate_with: `{with}` is not a distributed table of this cluster"
                        ),
                    ));
                }
            }
        }
    }
}

/// Items of the list at `root.key`, with their indexes.
fn entries<'a>(root: &'a Marked, key: &str) -> impl Iterator<Item = (usize, &'a Marked)> {
    list(root.field(key))
}

fn list(node: Option<&Marked>) -> impl Iterator<Item = (usize, &Marked)> {
    node.map(Marked::items).unwrap_or(&[]).iter().enumerate()
}

/// The text of `node.key` and where it is, when it is a scalar.
fn text_at<'a>(node: &'a Marked, key: &str) -> Option<(&'a str, Pos)> {
    let value = node.field(key)?;
    Some((value.text()?, value.pos))
}

/// Collects `list[*].key` names, reporting repeats; returns the first occurrence of each.
fn unique_names<'a>(
    root: &'a Marked,
    list_key: &str,
    name_key: &str,
    what: &str,
    problems: &mut Vec<Problem>,
) -> Vec<(&'a str, Pos)> {
    let mut names: Vec<(&str, Pos)> = Vec::new();
    for (index, item) in entries(root, list_key) {
        let Some((name, pos)) = text_at(item, name_key) else {
            continue;
        };
        if let Some((_, first)) = names.iter().find(|(seen, _)| *seen == name) {
            problems.push(Problem::new(
                pos,
                format!(
                    "{list_key}[{index}].{name_key}: duplicate {what} `{name}` (first at line {})",
                    first.line
                ),
            ));
        } else {
            names.push((name, pos));
        }
    }
    names
}

fn require_non_empty(root: &Marked, key: &str, problems: &mut Vec<Problem>) {
    if let Some(
        value @ Marked {
            value: Value::Seq(items),
            ..
        },
    ) = root.field(key)
    {
        if items.is_empty() {
            problems.push(Problem::new(
                value.pos,
                format!("{key}: list at least one entry"),
            ));
        }
    }
}

/// Names a reference may point at, for one kind of thing.
struct Known<'a> {
    what: &'static str,
    plural: &'static str,
    names: &'a [(&'a str, Pos)],
}

impl<'a> Known<'a> {
    fn new(what: &'static str, plural: &'static str, names: &'a [(&'a str, Pos)]) -> Self {
        Known {
            what,
            plural,
            names,
        }
    }

    fn listing(&self) -> String {
        const SHOWN: usize = 8;
        if self.names.is_empty() {
            return format!("no {} are defined", self.plural);
        }
        let mut shown: Vec<&str> = self
            .names
            .iter()
            .take(SHOWN)
            .map(|(name, _)| *name)
            .collect();
        if self.names.len() > SHOWN {
            shown.push("…");
        }
        format!("{}: {}", self.plural, shown.join(", "))
    }

    /// Reports `item.key` when it names nothing known.
    fn check(&self, item: &Marked, key: &str, path: &str, problems: &mut Vec<Problem>) {
        let Some((name, pos)) = text_at(item, key) else {
            return;
        };
        if !self.names.iter().any(|(known, _)| *known == name) {
            problems.push(Problem::new(
                pos,
                format!(
                    "{path}.{key}: unknown {} `{name}` ({})",
                    self.what,
                    self.listing()
                ),
            ));
        }
    }
}

fn is_true(node: &Marked) -> bool {
    matches!(&node.value, Value::Scalar(Scalar { text, style: ScalarStyle::Plain })
        if matches!(text.as_str(), "true" | "True" | "TRUE"))
}

fn is_false(node: &Marked) -> bool {
    matches!(&node.value, Value::Scalar(Scalar { text, style: ScalarStyle::Plain })
        if matches!(text.as_str(), "false" | "False" | "FALSE"))
}

fn check_hosts(root: &Marked, problems: &mut Vec<Problem>) {
    for (index, host) in entries(root, "hosts") {
        if !matches!(host.value, Value::Map(_)) {
            continue;
        }
        let local_field = host.field("local").filter(|value| !value.is_null());
        if local_field.is_some_and(|value| !is_true(value) && !is_false(value)) {
            continue; // mistyped `local`, reported by the schema check
        }
        let local = local_field.filter(|value| is_true(value));
        let ssh = host.field("ssh").filter(|value| !value.is_null());
        match (local, ssh) {
            (Some(local), Some(_)) => problems.push(Problem::new(
                local.pos,
                format!("hosts[{index}]: set either `local: true` or `ssh`, not both"),
            )),
            (None, None) => problems.push(Problem::new(
                host.pos,
                format!("hosts[{index}]: set how to reach this host: `ssh` (address, user, key) or `local: true`"),
            )),
            _ => {}
        }
    }
}

/// Two databases on one node cannot share a name: partitions and the proxy database.
fn check_dbnames(root: &Marked, problems: &mut Vec<Problem>) {
    let mut owners: HashMap<(&str, &str), (String, Pos)> = HashMap::new();
    let mut claims: Vec<(String, &Marked)> = entries(root, "partitions")
        .map(|(index, partition)| (format!("partitions[{index}]"), partition))
        .collect();
    if let Some(proxy) = root.field("proxy") {
        claims.push(("proxy".to_string(), proxy));
    }
    let mut claims: Vec<(String, &str, &str, Pos)> = claims
        .into_iter()
        .filter_map(|(path, claim)| {
            let (node, _) = text_at(claim, "node")?;
            let (dbname, pos) = text_at(claim, "dbname")?;
            Some((path, node, dbname, pos))
        })
        .collect();
    claims.sort_by_key(|(_, _, _, pos)| pos.index);
    for (path, node, dbname, pos) in claims {
        match owners.get(&(node, dbname)) {
            Some((first_path, first)) => problems.push(Problem::new(
                pos,
                format!(
                    "{path}.dbname: database `{dbname}` on node `{node}` is already used by {first_path} (line {})",
                    first.line
                ),
            )),
            None => {
                owners.insert((node, dbname), (path, pos));
            }
        }
    }
}

struct Range {
    index: usize,
    name: String,
    first: u64,
    last: u64,
    pos: Pos,
}

fn check_shards(root: &Marked, problems: &mut Vec<Problem>) {
    let shard_count = root.field("shard_count").and_then(|node| {
        let count = node
            .uint()
            .filter(|count| (1..=u64::from(u32::MAX)).contains(count))?;
        Some((count, node.pos))
    });
    if let Some((count, pos)) = shard_count {
        if !count.is_power_of_two() {
            problems.push(Problem::new(
                pos,
                format!("shard_count: {count} is not a power of two (such as 1024)"),
            ));
        }
    }

    let mut ranges: Vec<Range> = Vec::new();
    for (index, partition) in entries(root, "partitions") {
        let Some(shards) = partition.field("shards") else {
            continue;
        };
        let (Value::Seq(_), [first, last]) = (&shards.value, shards.items()) else {
            continue;
        };
        let max = u64::from(u32::MAX);
        let (Some(first), Some(last)) = (
            first.uint().filter(|n| *n <= max),
            last.uint().filter(|n| *n <= max),
        ) else {
            continue;
        };
        if first > last {
            problems.push(Problem::new(
                shards.pos,
                format!(
                    "partitions[{index}].shards: [{first}, {last}] is reversed; the first shard must not exceed the last"
                ),
            ));
            continue;
        }
        let name = partition
            .field("name")
            .and_then(Marked::text)
            .unwrap_or("?")
            .to_string();
        ranges.push(Range {
            index,
            name,
            first,
            last,
            pos: shards.pos,
        });
    }
    if ranges.is_empty() {
        return;
    }
    ranges.sort_by_key(|range| (range.first, range.last, range.index));

    let mut next_uncovered: u64 = 0;
    let mut furthest: Option<&Range> = None;
    for range in &ranges {
        let path = format!("partitions[{}].shards", range.index);
        if range.first > next_uncovered {
            let message = if next_uncovered == 0 {
                format!(
                    "{path}: shard ranges must start at 0; the lowest range starts at {}",
                    range.first
                )
            } else if range.first - 1 == next_uncovered {
                format!(
                    "{path}: gap before this range: shard {next_uncovered} belongs to no partition"
                )
            } else {
                format!(
                    "{path}: gap before this range: shards {next_uncovered} to {} belong to no partition",
                    range.first - 1
                )
            };
            problems.push(Problem::new(range.pos, message));
        } else if let Some(previous) = furthest.filter(|_| range.first < next_uncovered) {
            problems.push(Problem::new(
                range.pos,
                format!(
                    "{path}: [{}, {}] overlaps [{}, {}] of partition `{}`",
                    range.first, range.last, previous.first, previous.last, previous.name
                ),
            ));
        }
        if range.last + 1 > next_uncovered {
            next_uncovered = range.last + 1;
            furthest = Some(range);
        }
    }

    match shard_count {
        Some((count, pos)) if next_uncovered != count => problems.push(Problem::new(
            pos,
            format!(
                "shard_count: {count} shards, but the partition ranges end at shard {}; they must end at shard {}",
                next_uncovered - 1,
                count - 1
            ),
        )),
        None if !next_uncovered.is_power_of_two() => {
            if let Some(last) = furthest {
                problems.push(Problem::new(
                    last.pos,
                    format!(
                        "partitions[{}].shards: the partition ranges cover {next_uncovered} shards, which is not a power of two",
                        last.index
                    ),
                ));
            }
        }
        _ => {}
    }
}

/// Every `sharded_tables[*].hash` is exactly one SQL expression (the runbooks splice it into
/// statements). Plain one-line scalars are located at the offending character.
fn check_hash_expressions(root: &Marked, problems: &mut Vec<Problem>) {
    for (index, table) in entries(root, "sharded_tables") {
        let Some(value) = table.field("hash") else {
            continue;
        };
        // An empty value is the schema's to report.
        let Some(text) = value.text().filter(|text| !text.is_empty()) else {
            continue;
        };
        if let Err((offset, reason)) = sql_expression(text) {
            let mut pos = value.pos;
            let plain_one_line = matches!(
                &value.value,
                Value::Scalar(Scalar {
                    style: ScalarStyle::Plain,
                    ..
                })
            ) && !text.contains('\n');
            if plain_one_line {
                let chars = text[..offset].chars().count();
                pos.col += chars;
                pos.index += chars;
            }
            problems.push(Problem::new(
                pos,
                format!("sharded_tables[{index}].hash: {reason}; expected one SQL expression such as `hashtext(form_id::text)`"),
            ));
        }
    }
}

/// Words that begin or belong only to statements, never to an expression of a row's columns.
const STATEMENT_WORDS: &[&str] = &[
    "abort",
    "alter",
    "analyze",
    "begin",
    "call",
    "checkpoint",
    "close",
    "cluster",
    "comment",
    "commit",
    "copy",
    "create",
    "deallocate",
    "declare",
    "delete",
    "discard",
    "do",
    "drop",
    "execute",
    "explain",
    "fetch",
    "grant",
    "import",
    "insert",
    "into",
    "listen",
    "load",
    "lock",
    "merge",
    "move",
    "notify",
    "prepare",
    "reassign",
    "refresh",
    "reindex",
    "release",
    "reset",
    "returning",
    "revoke",
    "rollback",
    "savepoint",
    "security",
    "select",
    "set",
    "show",
    "start",
    "table",
    "truncate",
    "union",
    "intersect",
    "except",
    "unlisten",
    "update",
    "vacuum",
    "values",
];

/// Checks that `text` is one SQL expression: not empty, no `;`, no comments, no statement
/// words, no top-level `,`, balanced `()`/`[]`, closed quotes. `Err` carries the byte offset of
/// the offending character and the reason.
pub(crate) fn sql_expression(text: &str) -> Result<(), (usize, String)> {
    let bytes = text.as_bytes();
    if text.trim().is_empty() {
        return Err((0, "empty expression".to_string()));
    }
    let mut open: Vec<(u8, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b';' => return Err((i, "`;` ends a statement".to_string())),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                return Err((i, "comments are not allowed".to_string()))
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                return Err((i, "comments are not allowed".to_string()))
            }
            b'(' | b'[' => open.push((b, i)),
            b')' | b']' => {
                let want = if b == b')' { b'(' } else { b'[' };
                match open.pop() {
                    Some((opened, _)) if opened == want => {}
                    _ => return Err((i, format!("unbalanced `{}`", b as char))),
                }
            }
            b',' if open.is_empty() => {
                return Err((i, "`,` outside parentheses makes a list".to_string()))
            }
            b'\'' => {
                // `E'…'` strings take backslash escapes; all take a doubled quote.
                let escapes = i > 0
                    && matches!(bytes[i - 1], b'e' | b'E')
                    && (i < 2 || !is_word_byte(bytes[i - 2]));
                i = close_quote(bytes, i, b'\'', escapes)
                    .ok_or((i, "unterminated string literal".to_string()))?;
            }
            b'"' => {
                i = close_quote(bytes, i, b'"', false)
                    .ok_or((i, "unterminated quoted identifier".to_string()))?;
            }
            b'$' => {
                return Err((
                    i,
                    "`$` (dollar quoting or a parameter) is not allowed".to_string(),
                ))
            }
            _ if is_word_byte(b) && !b.is_ascii_digit() => {
                let start = i;
                while i < bytes.len() && is_word_byte(bytes[i]) {
                    i += 1;
                }
                let word = text[start..i].to_ascii_lowercase();
                if STATEMENT_WORDS.contains(&word.as_str()) {
                    return Err((
                        start,
                        format!("`{}` belongs to a statement", &text[start..i]),
                    ));
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    match open.last() {
        Some((b, at)) => Err((*at, format!("unclosed `{}`", *b as char))),
        None => Ok(()),
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// The offset of the quote closing the one at `start` (a doubled quote is part of the text).
fn close_quote(bytes: &[u8], start: usize, quote: u8, backslash_escapes: bool) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        if backslash_escapes && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::sql_expression;

    #[test]
    fn one_expression_passes() {
        for ok in [
            "hashtext(form_id::text)",
            "hash_string(form_id, 'siphash24')",
            "hashtext(lower(\"Form Id\")) # 7",
            "CASE WHEN a IS NULL THEN 0 ELSE hashtext(a) END",
            "hashtext(E'it\\'s;' || x)",
            "hashtext('a;b''c' || (x)::text)",
            "(arr[1])",
            "extract(epoch FROM created_on)::int",
            "hashtext(x::timestamp with time zone::text)",
        ] {
            assert_eq!(sql_expression(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn anything_more_is_refused_where_it_starts() {
        for (bad, at) in [
            ("hashtext(x); DROP TABLE forms", 11),
            ("hashtext(x) -- note", 12),
            ("/* c */ hashtext(x)", 0),
            ("hashtext(x))", 11),
            ("hashtext((x)", 8),
            ("hashtext(x]", 10),
            ("hashtext('x)", 9),
            ("hashtext(\"x)", 9),
            ("(SELECT 1)", 1),
            ("1 UNION SELECT 2", 2),
            ("a, b", 1),
            ("$1", 0),
            ("$$x$$", 0),
            ("   ", 0),
            ("hashtext(x) INTO y", 12),
        ] {
            match sql_expression(bad) {
                Err((offset, _)) => assert_eq!(offset, at, "{bad}"),
                Ok(()) => panic!("accepted {bad:?}"),
            }
        }
    }
}
