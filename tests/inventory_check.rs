//! Inventory checks as an operator meets them: every problem in a file is listed as
//! `FILE:LINE:COL: message`, pointing at the offending key or value, and nothing panics.

use std::path::{Path, PathBuf};
use std::process::Command;

use cutover::inventory::{self, Inventory, InventoryError};
use proptest::prelude::*;

const FIXTURES: &str = "tests/fixtures/inventories";

fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURES)
        .join(relative)
}

/// Diagnostics as `LINE:COL: message`, in the order reported.
fn problems(result: Result<Inventory, InventoryError>) -> Vec<String> {
    match result {
        Ok(_) => Vec::new(),
        Err(InventoryError::Invalid(diagnostics)) => diagnostics
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
            .collect(),
        Err(other) => panic!("expected diagnostics, got {other}"),
    }
}

const SECRET_HELP: &str = "secrets never go in an inventory; PostgreSQL passwords come from PG* environment variables (PGPASSWORD, PGPASSFILE) or ~/.pgpass, SSH keys from a key file or ssh-agent";

/// Each invalid fixture with every diagnostic it must produce, exactly and in order.
const INVALID_FIXTURES: &[(&str, &[&str])] = &[
    (
        "syntax_error.yaml",
        &["5:62: YAML syntax error: while parsing a flow sequence, expected ',' or ']'"],
    ),
    (
        "tab_indent.yaml",
        &["5:3: YAML syntax error: tab character in indentation; indent with spaces"],
    ),
    (
        "not_utf8.yaml",
        &["2:17: file is not valid UTF-8 (byte 0xe9); save it as UTF-8"],
    ),
    (
        "shards_overlap.yaml",
        &["46:58: partitions[1].shards: [1, 3] overlaps [0, 1] of partition `p1`"],
    ),
    (
        "shards_gap.yaml",
        &["46:58: partitions[1].shards: gap before this range: shard 1 belongs to no partition"],
    ),
    (
        "shards_not_from_zero.yaml",
        &["45:58: partitions[0].shards: shard ranges must start at 0; the lowest range starts at 1"],
    ),
    (
        "shards_reversed.yaml",
        &[
            "3:14: shard_count: 4 shards, but the partition ranges end at shard 1; they must end at shard 3",
            "46:58: partitions[1].shards: [3, 2] is reversed; the first shard must not exceed the last",
        ],
    ),
    (
        "shard_count_mismatch.yaml",
        &["3:14: shard_count: 8 shards, but the partition ranges end at shard 3; they must end at shard 7"],
    ),
    (
        "shard_count_not_power_of_two.yaml",
        &["3:14: shard_count: 3 is not a power of two (such as 1024)"],
    ),
    (
        "shard_total_not_power_of_two.yaml",
        &[
            "2:1: inventory: missing field `shard_count`",
            "45:58: partitions[1].shards: the partition ranges cover 3 shards, which is not a power of two",
        ],
    ),
    (
        "unknown_references.yaml",
        &[
            "24:11: nodes[1].host: unknown host `pg3host` (hosts: jump, pg2host)",
            "33:11: pgbouncers[0].host: unknown host `nowhere` (hosts: jump, pg2host)",
            "38:37: pgbouncers[0].aliases[1].node: unknown node `pg9` (nodes: pg1, pg2)",
            "40:9: proxy.node: unknown node `pgX` (nodes: pg1, pg2)",
            "43:10: proxy.alias: `commcarehq_proxi` is not an alias of any pgbouncer (aliases: commcarehq_proxy, commcarehq_p1)",
            "46:45: partitions[1].node: unknown node `pg5` (nodes: pg1, pg2)",
            "52:12: standbys[0].node: unknown node `pg7` (nodes: pg1, pg2)",
            "52:26: standbys[0].primary: unknown node `pg8` (nodes: pg1, pg2)",
            "54:12: slots[0].node: unknown node `pg6` (nodes: pg1, pg2)",
            "56:9: traffic.host: unknown host `jumpbox` (hosts: jump, pg2host)",
        ],
    ),
    (
        "duplicate_names.yaml",
        &[
            "7:11: hosts[1].name: duplicate host `jump` (first at line 5)",
            "23:11: nodes[1].name: duplicate node `pg1` (first at line 13)",
            "39:16: pgbouncers[0].aliases[2].name: duplicate alias `commcarehq_p1` in pgbouncer `bouncer` (first at line 38)",
            "40:11: pgbouncers[1].name: duplicate pgbouncer `bouncer` (first at line 32)",
            "52:12: partitions[1].name: duplicate partition `p1` (first at line 51)",
            "52:24: partitions[1].dbname: database `commcarehq_p1` on node `pg1` is already used by partitions[0] (line 51)",
            "57:12: sharded_tables[1].table: duplicate sharded table `forms` (first at line 54)",
            "62:23: slots[1].name: duplicate slot `pg2_slot` on node `pg1` (first at line 61)",
        ],
    ),
    (
        "cross_checks.yaml",
        &[
            "17:24: partitions[0].dbname: database `commcarehq_p0` on node `db` is already used by proxy (line 15)",
            "18:24: partitions[1].dbname: database `commcarehq_p0` on node `db` is already used by proxy (line 15)",
            "21:25: standbys[0].primary: node `db` cannot be its own primary",
        ],
    ),
    (
        "duplicate_keys.yaml",
        &[
            "11:5: nodes[0].port: duplicate key (first at line 10)",
            "19:1: environment: duplicate key (first at line 2)",
        ],
    ),
    (
        "mistyped_fields.yaml",
        &[
            "2:14: environment: expected a string, found a list of 1 item",
            "3:14: shard_count: expected a whole number from 1 to 4294967295, found `99999999999999999999999`",
            "6:12: hosts[0].local: expected true or false, found `yes`",
            "8:36: hosts[1].ssh.port: expected a port number from 1 to 65535, found `0`",
            "13:11: nodes[0].port: expected a port number from 1 to 65535, found the string \"abc\"",
            "14:14: nodes[0].version: expected a whole number from 1 to 4294967295, found `15.5`",
            "16:14: nodes[0].bin_dir: must not be empty",
            "17:14: nodes[0].control: expected a mapping of fields, found `pg_ctlcluster 15 main start`",
            "21:11: nodes[1].port: expected a port number from 1 to 65535, found `70000`",
            "22:14: nodes[1].version: expected a whole number from 1 to 4294967295, found the string \"15\"",
            "26:13: pgbouncers: expected a list, found a mapping",
            "28:57: partitions[0].shards: expected a shard range [first, last] of two whole numbers, found a list of 1 item",
            "29:57: partitions[1].shards: expected a shard range [first, last] of two whole numbers, found a list of 2 items",
            "30:57: partitions[2].shards: expected a shard range [first, last] of two whole numbers, found `3`",
            "31:57: partitions[3].shards: expected a shard range [first, last] of two whole numbers, found a list of 2 items",
            "33:56: sharded_tables[0].key: expected a non-empty list of column names, found `form_id`",
            "34:56: sharded_tables[1].key: expected a non-empty list of column names, found an empty list",
        ],
    ),
    (
        "missing_fields.yaml",
        &[
            "2:1: inventory: missing field `environment`",
            "2:1: inventory: missing field `sharded_tables`",
            "5:5: hosts[1].name: missing value",
            "8:5: nodes[0]: missing field `port`",
            "14:14: nodes[0].control: missing field `stop`",
            "16:5: partitions[0]: missing field `dbname`",
        ],
    ),
    (
        "unknown_fields.yaml",
        &[
            "8:5: nodes[0]: missing field `port`",
            "11:5: nodes[0]: unknown field `prot` (did you mean `port`?)",
            "15:85: nodes[0].control: unknown field `restart` (did you mean `start`?)",
            "19:1: inventory: unknown field `colour`; expected one of: environment, shard_count, hosts, nodes, pgbouncers, proxy, partitions, sharded_tables, standbys, slots, traffic, citus, tls",
        ],
    ),
    (
        "tls.yaml",
        &[
            "5:12: tls.sslmode: verify-full needs a root certificate to verify with; set sslrootcert (here or in the top-level tls), or use require to encrypt without verifying",
            "18:20: nodes[0].tls.sslmode: verify-ca needs a root certificate to verify with; set sslrootcert (here or in the top-level tls), or use require to encrypt without verifying",
            "18:40: nodes[0].tls.sslcert: a client certificate needs its private key: set sslkey",
            "27:20: nodes[1].tls.sslmode: `allow` is not one of: disable, prefer, require, verify-ca, verify-full",
            "31:75: pgbouncers[0].admin.tls.sslkey: a private key needs its client certificate: set sslcert",
        ],
    ),
    (
        "host_access.yaml",
        &[
            "6:12: hosts[0]: set either `local: true` or `ssh`, not both",
            "8:5: hosts[1]: set how to reach this host: `ssh` (address, user, key) or `local: true`",
            "9:5: hosts[2]: set how to reach this host: `ssh` (address, user, key) or `local: true`",
        ],
    ),
];

#[test]
fn every_invalid_fixture_lists_exactly_its_problems_at_their_positions() {
    let mut failures = Vec::new();
    for (name, expected) in INVALID_FIXTURES {
        let found = problems(inventory::load(&fixture(&format!("invalid/{name}"))));
        if found != *expected {
            failures.push(format!(
                "{name}:\n  expected {expected:#?}\n  found {found:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_invalid_fixture_is_in_the_table() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture("invalid"))
        .expect("fixture dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = INVALID_FIXTURES
        .iter()
        .map(|(name, _)| name.to_string())
        .chain(["secrets.yaml".to_string()])
        .collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn secrets_are_rejected_wherever_they_appear() {
    let found = problems(inventory::load(&fixture("invalid/secrets.yaml")));
    assert_eq!(
        found,
        vec![
            format!("4:1: PGPASSWORD: {SECRET_HELP}"),
            "11:9: hosts[0].ssh.key: looks like private key material; an inventory names a key file (`key: ~/.ssh/id_ed25519`) or relies on ssh-agent, it never holds the key".to_string(),
            format!("14:7: hosts[0].ssh.key_passphrase: {SECRET_HELP}"),
            format!("23:5: nodes[0].password: {SECRET_HELP}"),
        ]
    );
    let InventoryError::Invalid(diagnostics) =
        inventory::load(&fixture("invalid/secrets.yaml")).expect_err("invalid")
    else {
        panic!("expected diagnostics");
    };
    let shown = InventoryError::Invalid(diagnostics).to_string();
    for secret in ["hunter2", "swordfish", "b3BlbnNzaC1rZXktdjEAAAAA"] {
        assert!(
            !shown.contains(secret),
            "diagnostics echo a secret: {shown}"
        );
    }
}

/// A small valid inventory that inline cases extend; 14 lines.
const MINIMAL: &str = "environment: minimal
shard_count: 1
hosts:
  - {name: here, local: true}
nodes:
  - name: db
    host: here
    address: localhost
    port: 5432
    version: 15
    data_dir: /var/lib/postgresql/15/main
    bin_dir: /usr/lib/postgresql/15/bin
    control: {start: pg_ctlcluster 15 main start, stop: pg_ctlcluster 15 main stop}
partitions:
  - {name: p0, dbname: commcarehq_p0, node: db, shards: [0, 0]}
sharded_tables: []
";

const EMPTY_HELP: &str = "1:1: empty inventory: expected a mapping with environment, shard_count, hosts, nodes, partitions and sharded_tables";

#[test]
fn odd_documents_are_reported_not_panicked_on() {
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("empty file", String::new(), vec![EMPTY_HELP.to_string()]),
        (
            "comments only",
            "# nothing yet\n\n".to_string(),
            vec![EMPTY_HELP.to_string()],
        ),
        (
            "null document",
            "---\n~\n".to_string(),
            vec![EMPTY_HELP.to_string()],
        ),
        (
            "top-level list",
            "- a\n- b\n".to_string(),
            vec![
                "1:1: inventory: expected a mapping of fields, found a list of 2 items".to_string(),
            ],
        ),
        (
            "two documents",
            format!("{MINIMAL}---\n{MINIMAL}"),
            vec![
                "17:1: an inventory is a single YAML document; remove this second document"
                    .to_string(),
            ],
        ),
        (
            "tag",
            MINIMAL.replace("environment: minimal", "environment: !!str minimal"),
            vec![
                "1:20: YAML tags such as `!!str` are not supported in an inventory; remove the tag"
                    .to_string(),
            ],
        ),
        (
            "deep nesting",
            format!("{MINIMAL}traffic: {}{}\n", "[".repeat(100), "]".repeat(100)),
            vec![
                "17:73: nesting deeper than 64 levels is not supported".to_string(),
                "17:10: traffic: expected a mapping of fields, found a list of 1 item".to_string(),
            ],
        ),
        (
            "empty lists",
            MINIMAL
                .replace("hosts:\n  - {name: here, local: true}", "hosts: []")
                .replace(
                    "partitions:\n  - {name: p0, dbname: commcarehq_p0, node: db, shards: [0, 0]}",
                    "partitions: []",
                ),
            vec![
                "3:8: hosts: list at least one entry".to_string(),
                "6:11: nodes[0].host: unknown host `here` (no hosts are defined)".to_string(),
                "13:13: partitions: list at least one entry".to_string(),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, expected) in cases {
        let mut found = problems(inventory::parse(&text, "inline.yaml"));
        let mut expected = expected;
        found.sort();
        expected.sort();
        if found != expected {
            failures.push(format!(
                "{name}:\n  expected {expected:#?}\n  found {found:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn alias_bombs_are_cut_off_with_one_diagnostic() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..10 {
        let previous = format!("*a{}", level - 1);
        let items = [previous.as_str(); 10].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    let found = problems(inventory::parse(&text, "bomb.yaml"));
    let budget: Vec<&String> = found
        .iter()
        .filter(|problem| problem.contains("expands to more than"))
        .collect();
    assert_eq!(
        budget,
        vec!["5:45: the document expands to more than 100000 values (aliases?); an inventory is much smaller"]
    );
}

#[test]
fn anchors_and_aliases_are_expanded() {
    let text = MINIMAL.replace(
        "    control: {start: pg_ctlcluster 15 main start, stop: pg_ctlcluster 15 main stop}\n",
        "    control: &ctl {start: pg_ctlcluster 15 main start, stop: pg_ctlcluster 15 main stop}\n  - name: db2\n    host: here\n    address: localhost\n    port: 5433\n    version: 15\n    data_dir: /srv/db2\n    bin_dir: /usr/lib/postgresql/15/bin\n    control: *ctl\n",
    );
    let inventory = inventory::parse(&text, "inline.yaml").expect("valid");
    assert_eq!(inventory.nodes[1].control, inventory.nodes[0].control);
    assert_eq!(
        inventory.nodes[1].control.stop,
        "pg_ctlcluster 15 main stop"
    );
}

/// MINIMAL with one sharded table whose `hash` is the given YAML value (line 18, the value at
/// column 11).
fn with_hash(hash_yaml: &str) -> String {
    MINIMAL.replace(
        "sharded_tables: []",
        &format!("sharded_tables:\n  - table: forms\n    hash: {hash_yaml}\n    key: [form_id]"),
    )
}

#[test]
fn the_hash_is_exactly_one_sql_expression() {
    const ONE: &str = "expected one SQL expression such as `hashtext(form_id::text)`";
    for ok in [
        "hashtext(form_id::text)",
        "\"hash_string(form_id, 'siphash24')\"",
        "\"hashtext('a;b' || form_id)\"",
    ] {
        assert_eq!(
            problems(inventory::parse(&with_hash(ok), "t.yaml")),
            Vec::<String>::new(),
            "{ok}"
        );
    }
    let cases = [
        (
            "hashtext(form_id::text); DROP TABLE forms",
            format!("18:34: sharded_tables[0].hash: `;` ends a statement; {ONE}"),
        ),
        (
            "hashtext((form_id::text)",
            format!("18:19: sharded_tables[0].hash: unclosed `(`; {ONE}"),
        ),
        (
            "hashtext(form_id))",
            format!("18:28: sharded_tables[0].hash: unbalanced `)`; {ONE}"),
        ),
        (
            "\"hashtext('x)\"",
            format!("18:11: sharded_tables[0].hash: unterminated string literal; {ONE}"),
        ),
        (
            "(SELECT max(id) FROM forms)",
            format!("18:12: sharded_tables[0].hash: `SELECT` belongs to a statement; {ONE}"),
        ),
        (
            "hashtext(form_id::text) -- trailing",
            format!("18:35: sharded_tables[0].hash: comments are not allowed; {ONE}"),
        ),
        (
            "\"  \"",
            format!("18:11: sharded_tables[0].hash: empty expression; {ONE}"),
        ),
    ];
    for (hash, expected) in cases {
        assert_eq!(
            problems(inventory::parse(&with_hash(hash), "t.yaml")),
            vec![expected],
            "{hash}"
        );
    }
    // As `cutover check` prints it: FILE:LINE:COL.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("inv.yaml");
    std::fs::write(&path, with_hash("hashtext(id); DELETE FROM forms")).expect("write");
    let (code, stdout) = run_check(&path);
    assert_eq!(code, Some(2));
    assert!(
        stdout.contains("inv.yaml:18:23: sharded_tables[0].hash: `;` ends a statement"),
        "{stdout}"
    );
}

#[test]
fn display_prefixes_the_file_and_lists_one_problem_per_line() {
    let text = MINIMAL
        .replace("port: 5432", "port: \"abc\"")
        .replace("shard_count: 1", "shard_count: 6");
    let error = inventory::parse(&text, "envs/prod.yaml").expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "envs/prod.yaml:2:14: shard_count: 6 is not a power of two (such as 1024)\n\
         envs/prod.yaml:2:14: shard_count: 6 shards, but the partition ranges end at shard 0; they must end at shard 5\n\
         envs/prod.yaml:9:11: nodes[0].port: expected a port number from 1 to 65535, found the string \"abc\""
    );
}

#[test]
fn valid_inventories_load() {
    for name in ["valid/lab.yaml", "valid/minimal.yaml"] {
        let loaded = inventory::load(&fixture(name));
        assert!(
            loaded.is_ok(),
            "{name}: {}",
            loaded.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
    let lab = inventory::load(&fixture("valid/lab.yaml")).expect("valid");
    assert_eq!(lab.owner_of(3).map(|p| p.name.as_str()), Some("p2"));
    assert!(lab.hosts[0].local && lab.hosts[0].ssh.is_none());
    assert_eq!(lab.hosts[1].ssh.as_ref().map(|ssh| ssh.port), Some(2222));
    assert_eq!(lab.nodes[1].user, "postgres", "the default role applies");
}

#[test]
fn the_commcare_example_is_valid_and_describes_the_seed_environment() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/commcare-example.yaml");
    let example = inventory::load(&path).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(example.environment, "commcare-example");
    assert_eq!(example.shard_count, 1024);
    assert_eq!(example.partitions.len(), 1);
    assert_eq!(example.partitions[0].shards, [0, 1023]);
    assert_eq!(example.partitions[0].dbname, "commcarehq_p1");
    assert!(
        !example.partitions_by_node().contains_key("pg2"),
        "pg2 is a spare"
    );
    let proxy = example.proxy.as_ref().expect("proxy");
    assert_eq!(proxy.alias.as_deref(), Some("commcarehq_proxy"));
    assert_eq!(proxy.cluster, "commcarehq");
    assert_eq!(example.sharded_tables[0].hash, "hashtext(form_id::text)");
    assert_eq!(example.sharded_tables[0].key, vec!["form_id".to_string()]);
    assert_eq!(example.sharded_tables[1].table, "cases");
    assert_eq!(example.sharded_tables[1].hash, "hashtext(case_id::text)");
    assert_eq!(example.sharded_tables[1].key, vec!["case_id".to_string()]);
    let traffic = example.traffic.as_ref().expect("traffic hooks");
    assert_eq!(traffic.stop, "commcare-cloud production downtime start");
    assert_eq!(traffic.start, "commcare-cloud production downtime end");
    assert_eq!(example.pgbouncers[0].admin.port, 6432);
}

#[test]
fn to_yaml_round_trips_the_fixtures() {
    for path in [
        fixture("valid/lab.yaml"),
        fixture("valid/minimal.yaml"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/commcare-example.yaml"),
    ] {
        let original = inventory::load(&path).expect("valid");
        let text = inventory::to_yaml(&original).expect("serializes");
        let reparsed = inventory::parse(&text, "round-trip.yaml")
            .unwrap_or_else(|error| panic!("{}:\n{text}\n{error}", path.display()));
        assert_eq!(reparsed, original);
    }
}

/// Mirrors the inventory rule: control characters other than tab and newline, and U+2028/9.
fn is_invisible_control(c: char) -> bool {
    (c.is_control() && c != '\t' && c != '\n') || c == '\u{2028}' || c == '\u{2029}'
}

#[test]
fn invisible_control_characters_are_rejected() {
    let text = MINIMAL.replace(
        "stop: pg_ctlcluster 15 main stop}",
        "stop: \"pg_ctlcluster 15 main stop\\u2028\"}",
    );
    assert_eq!(
        problems(inventory::parse(&text, "inline.yaml")),
        vec!["13:57: nodes[0].control.stop: contains the invisible control character U+2028; remove it"]
    );
    let bell = MINIMAL.replace("environment: minimal", "environment: \"mini\\amal\"");
    assert_eq!(
        problems(inventory::parse(&bell, "inline.yaml")),
        vec!["1:14: environment: contains the invisible control character U+0007; remove it"]
    );
}

/// Strings matching `pattern` that a valid inventory may hold.
fn free_text(pattern: &'static str) -> impl Strategy<Value = String> {
    pattern.prop_map(|text| {
        text.chars()
            .map(|c| if is_invisible_control(c) { '?' } else { c })
            .collect()
    })
}

fn lab_inventory() -> Inventory {
    inventory::load(&fixture("valid/lab.yaml")).expect("valid")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Free text (commands, paths, a literal in the hash expression) survives to_yaml → parse unchanged,
    /// whatever characters it holds.
    #[test]
    fn to_yaml_round_trips_any_free_text(
        environment in free_text("\\PC{1,30}"),
        command in free_text(".{1,60}"),
        literal in free_text("[ -~\\n\\t]{0,40}"),
        data_dir in free_text("\\PC{1,30}"),
    ) {
        let mut original = lab_inventory();
        original.environment = environment;
        original.nodes[0].control.start = command;
        // Any characters, inside the one string literal a valid hash expression may hold.
        original.sharded_tables[0].hash = format!("hashtext('{}')", literal.replace('\'', "''"));
        original.nodes[1].data_dir = data_dir;
        let text = inventory::to_yaml(&original).expect("serializes");
        let reparsed = inventory::parse(&text, "round-trip.yaml");
        prop_assert!(reparsed.is_ok(), "{}\n{}", text, reparsed.err().map(|e| e.to_string()).unwrap_or_default());
        prop_assert_eq!(reparsed.ok(), Some(original));
    }

    /// Whatever an editor (or a cat on the keyboard) does to a valid file, checking it either
    /// succeeds or lists at least one problem at a real position; it never panics.
    #[test]
    fn mutated_inventories_never_panic(mutations in prop::collection::vec(mutation(), 1..5)) {
        let mut bytes = std::fs::read(fixture("valid/lab.yaml")).expect("fixture");
        for mutation in &mutations {
            mutation.apply(&mut bytes);
        }
        let line_count = bytes.split(|b| *b == b'\n').count();
        match inventory::parse_bytes(&bytes, "mutated.yaml") {
            Ok(_) => {}
            Err(InventoryError::Invalid(diagnostics)) => {
                prop_assert!(!diagnostics.is_empty());
                for diagnostic in &diagnostics {
                    prop_assert!(diagnostic.line >= 1 && diagnostic.col >= 1, "{}", diagnostic);
                    prop_assert!(diagnostic.line <= line_count + 1, "{} (file has {} lines)", diagnostic, line_count);
                    prop_assert_eq!(&diagnostic.file, "mutated.yaml");
                }
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    InsertText(usize, String),
    ChangeNumber(usize, u64),
    Truncate(usize),
    SetByte(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>().prop_map(|i| i.index(usize::MAX));
    prop_oneof![
        index.clone().prop_map(Mutation::DeleteLine),
        index.clone().prop_map(Mutation::DuplicateLine),
        (index.clone(), index.clone()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (
            index.clone(),
            prop_oneof![
                "[-:\\[\\]{}&*!|>'\"%@`#, \\t\\n]{1,4}",
                "\\PC{1,8}",
                Just("\t".to_string()),
                Just("password: x".to_string()),
                Just("*control".to_string()),
            ]
        )
            .prop_map(|(at, text)| Mutation::InsertText(at, text)),
        (index.clone(), any::<u64>()).prop_map(|(at, n)| Mutation::ChangeNumber(at, n)),
        index.clone().prop_map(Mutation::Truncate),
        (index, any::<u8>()).prop_map(|(at, b)| Mutation::SetByte(at, b)),
    ]
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        let line_at = |i: usize| i % lines.len();
        match self {
            Mutation::DeleteLine(i) => {
                let at = line_at(*i);
                lines.remove(at);
            }
            Mutation::DuplicateLine(i) => {
                let at = line_at(*i);
                lines.insert(at, lines[at].clone());
            }
            Mutation::SwapLines(a, b) => {
                let (a, b) = (line_at(*a), line_at(*b));
                lines.swap(a, b);
            }
            Mutation::InsertText(at, text) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, text.bytes());
                return;
            }
            Mutation::ChangeNumber(which, value) => {
                let starts: Vec<usize> = (0..bytes.len())
                    .filter(|&i| {
                        bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit())
                    })
                    .collect();
                if let Some(&start) = starts.get(which % starts.len().max(1)) {
                    let end = (start..bytes.len())
                        .find(|&i| !bytes[i].is_ascii_digit())
                        .unwrap_or(bytes.len());
                    bytes.splice(start..end, value.to_string().bytes());
                }
                return;
            }
            Mutation::Truncate(at) => {
                bytes.truncate(at % (bytes.len() + 1));
                return;
            }
            Mutation::SetByte(at, value) => {
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    bytes[at] = *value;
                }
                return;
            }
        }
        *bytes = lines.join(&b'\n');
    }
}

/// Runs the `cutover` binary; returns (exit code, stdout).
fn run_check(path: &Path) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("check")
        .arg(path)
        .output()
        .expect("run cutover");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn cutover_check_exits_0_for_a_valid_inventory_and_2_listing_every_problem() {
    let (code, _) = run_check(&fixture("valid/lab.yaml"));
    assert_eq!(code, Some(0));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/commcare-example.yaml");
    assert_eq!(run_check(&example).0, Some(0));
    let (code, stdout) = run_check(&fixture("invalid/not_utf8.yaml"));
    assert_eq!(code, Some(2));
    assert!(
        stdout.contains("not_utf8.yaml:2:17: file is not valid UTF-8"),
        "{stdout}"
    );

    let invalid = fixture("invalid/unknown_references.yaml");
    let (code, stdout) = run_check(&invalid);
    assert_eq!(code, Some(2));
    let expected = inventory::load(&invalid).expect_err("invalid").to_string();
    for line in expected.lines() {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": unknown ")).count(),
        9
    );
}
