//! The plans a reviewer reads, as markdown snapshots built from the shipped example inventory,
//! and the shard split's coverage of every sharded table. Pure: no servers.

use cutover::inventory::{Inventory, Node, RouteVia, ShardedTable};
use cutover::plan::{Plan, Step};
use cutover::runbooks::shard_split::plan::{Split, SplitParams};
use std::collections::BTreeMap;
use std::path::Path;

fn example() -> Inventory {
    cutover::inventory::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/commcare-example.yaml"),
    )
    .unwrap()
}

/// The example plus `pg1new`, a PostgreSQL 18 cluster beside pg1 (pg_upgrade needs one host),
/// and plproxy routed through pgbouncer as the example's commented `route_via` suggests (an
/// upgrade refuses a proxy that connects to the source directly).
fn example_with_upgrade_target() -> Inventory {
    let mut inventory = example();
    if let Some(proxy) = inventory.proxy.as_mut() {
        proxy.route_via = Some(RouteVia {
            address: "pg1.example.internal".into(),
            port: 6432,
        });
    }
    let pg1 = inventory.node("pg1").unwrap().clone();
    inventory.nodes.push(Node {
        name: "pg1new".into(),
        port: 5433,
        version: 18,
        data_dir: "/opt/data/postgresql/18/main".into(),
        bin_dir: "/usr/lib/postgresql/18/bin".into(),
        ..pg1
    });
    inventory
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn split_params() -> BTreeMap<String, String> {
    params(&[
        ("from", "p1"),
        ("to", "p2"),
        ("node", "pg2"),
        ("shards", "512-1023"),
    ])
}

/// The markdown with what changes on every release (tool version, and the fingerprint that
/// covers it) replaced by placeholders; every step's text stays as rendered.
fn review_text(plan: &Plan) -> String {
    plan.to_markdown()
        .replace(&plan.fingerprint(), "<fingerprint>")
        .replace(
            &format!("| tool version | `{}` |", plan.tool_version),
            "| tool version | `<version>` |",
        )
}

#[test]
fn shard_split_plan_of_the_example_inventory() {
    let plan = cutover::session::plan(&example(), "shard-split", &split_params()).unwrap();
    insta::assert_snapshot!("shard_split_markdown", review_text(&plan));
}

#[test]
fn major_upgrade_dumpall_plan_of_the_example_inventory() {
    let plan = cutover::session::plan(
        &example_with_upgrade_target(),
        "major-upgrade",
        &params(&[("from", "pg1"), ("to", "pg1new"), ("method", "dumpall")]),
    )
    .unwrap();
    insta::assert_snapshot!("major_upgrade_dumpall_markdown", review_text(&plan));
}

#[test]
fn major_upgrade_pg_upgrade_plan_of_the_example_inventory() {
    let plan = cutover::session::plan(
        &example_with_upgrade_target(),
        "major-upgrade",
        &params(&[("from", "pg1"), ("to", "pg1new"), ("method", "pg-upgrade")]),
    )
    .unwrap();
    insta::assert_snapshot!("major_upgrade_pg_upgrade_markdown", review_text(&plan));
}

fn step<'a>(plan: &'a Plan, id: &str) -> &'a Step {
    plan.steps
        .iter()
        .find(|s| s.id.as_str() == id)
        .unwrap_or_else(|| panic!("no step {id}"))
}

/// `(target, text)` of every command of a step.
fn commands(step: &Step) -> Vec<(String, String)> {
    step.commands
        .iter()
        .map(|c| (c.target.clone(), c.text.clone()))
        .collect()
}

fn assert_renders(step: &Step, target: &str, text: &str) {
    assert!(
        commands(step)
            .iter()
            .any(|(t, x)| t.as_str() == target && x.as_str() == text),
        "step {} lacks `{text}` on {target}; it has {:#?}",
        step.id,
        commands(step)
    );
}

/// Every sharded table is counted at the baseline, checked at verify and proven and deleted
/// on both nodes, with the exact statements the effects send.
fn assert_every_table_is_in_the_plan(inventory: &Inventory) {
    let plan = cutover::session::plan(inventory, "shard-split", &split_params()).unwrap();
    let split = Split::resolve(inventory, SplitParams::from_map(&split_params()).unwrap()).unwrap();
    let pg1 = "pg1 · sql · commcarehq_p1";
    let pg2 = "pg2 · sql · commcarehq_p2";
    let key_type = "<key column type>";
    for table in &inventory.sharded_tables {
        let per_shard = split.per_shard_sql(table);
        assert!(per_shard.contains(&table.hash), "{per_shard}");
        assert_renders(step(&plan, "baseline"), pg1, &per_shard);
        assert_renders(step(&plan, "verify"), pg1, &per_shard);
        assert_renders(step(&plan, "verify"), pg2, &per_shard);
        let delete = step(&plan, "delete-invalid");
        for side in [pg1, pg2] {
            assert_renders(delete, side, &split.shard_keys_sql(table));
            assert_renders(
                delete,
                side,
                &cutover::runbooks::shard_split::plan::present_keys_sql(table, key_type),
            );
            assert_renders(delete, side, &split.key_digest_sql(table, key_type));
            assert_renders(delete, side, &split.delete_batch_sql(table, key_type));
        }
        let vacuum = step(&plan, "vacuum");
        assert!(
            commands(vacuum)
                .iter()
                .any(|(_, x)| x.contains(&table.table)),
            "vacuum misses {}",
            table.table
        );
    }
}

#[test]
fn the_split_plan_counts_proves_and_deletes_every_sharded_table() {
    let inventory = example();
    let names: Vec<&str> = inventory
        .sharded_tables
        .iter()
        .map(|t| t.table.as_str())
        .collect();
    assert_eq!(names, ["forms", "cases"]);
    assert_every_table_is_in_the_plan(&inventory);

    let mut three = inventory.clone();
    three.sharded_tables.push(ShardedTable {
        table: "ledger_values".into(),
        hash: "hashtext(ledger_id::text)".into(),
        key: vec!["ledger_id".into()],
    });
    assert_every_table_is_in_the_plan(&three);
}

#[test]
fn the_reroute_undo_names_the_run_dir_copies_the_effects_keep() {
    let plan = cutover::session::plan(&example(), "shard-split", &split_params()).unwrap();
    let reroute = step(&plan, "reroute");
    let cutover::plan::Undo::Reversible { commands, .. } = &reroute.undo else {
        panic!("the re-route is reversible");
    };
    let texts: Vec<&str> = commands.iter().map(|c| c.text.as_str()).collect();
    for kept in [
        "<state-dir>/runs/<run-id>/pgbouncer.ini.before",
        "<state-dir>/runs/<run-id>/inventory.before.yaml",
    ] {
        assert!(
            texts.iter().any(|t| t.contains(kept)),
            "{kept} missing from {texts:#?}"
        );
    }
}
