//! The `citus` section of an inventory: a cluster's nodes and table distribution are checked
//! like the rest, every problem as `FILE:LINE:COL: message`.

use cutover::inventory::{self, Distribution, InventoryError};

const BASE: &str = "environment: citus
shard_count: 1
hosts:
  - {name: here, local: true}
nodes:
  - {name: c0, host: here, address: 127.0.0.1, port: 5432, version: 15, data_dir: /d0, bin_dir: /b, control: {start: a, stop: b}}
  - {name: w1, host: here, address: 127.0.0.1, port: 5433, version: 15, data_dir: /d1, bin_dir: /b, control: {start: a, stop: b}}
  - {name: w2, host: here, address: 127.0.0.1, port: 5434, version: 15, data_dir: /d2, bin_dir: /b, control: {start: a, stop: b}}
partitions:
  - {name: p0, dbname: db_p0, node: c0, shards: [0, 0]}
sharded_tables: []
";

fn problems(citus: &str) -> Vec<String> {
    match inventory::parse(&format!("{BASE}{citus}"), "citus.yaml") {
        Ok(_) => Vec::new(),
        Err(InventoryError::Invalid(diagnostics)) => diagnostics
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
            .collect(),
        Err(other) => panic!("expected diagnostics, got {other}"),
    }
}

#[test]
fn a_valid_cluster_loads_with_its_distribution() {
    let text = format!(
        "{BASE}citus:
  - name: reporting
    coordinator: c0
    workers: [w1, w2]
    database: reports
    tables:
      - {{table: forms, distribution: distributed, column: domain}}
      - {{table: cases, distribution: distributed, column: domain, colocate_with: forms}}
      - {{table: users, distribution: reference}}
"
    );
    let inventory = inventory::parse(&text, "citus.yaml").unwrap();
    let cluster = inventory.citus_cluster("reporting").unwrap();
    assert_eq!(cluster.workers, ["w1", "w2"]);
    assert_eq!(cluster.shard_count, 32, "Citus's default shard count");
    assert_eq!(cluster.tables[1].colocate_with.as_deref(), Some("forms"));
    assert_eq!(cluster.tables[2].distribution, Distribution::Reference);
}

#[test]
fn node_roles_are_checked() {
    let found = problems(
        "citus:
  - name: reporting
    coordinator: c0
    workers: [w1, c0, w9, w1]
    database: reports
",
    );
    assert_eq!(
        found,
        [
            "15:19: citus[0].workers[1]: `c0` is the coordinator; a node is the coordinator or a worker, not both",
            "15:23: citus[0].workers[2]: unknown node `w9` (nodes: c0, w1, w2)",
            "15:27: citus[0].workers[3]: worker `w1` is listed twice",
        ]
    );
}

#[test]
fn table_distribution_is_checked() {
    let found = problems(
        "citus:
  - name: reporting
    coordinator: c0
    workers: [w1, w2]
    database: reports
    tables:
      - {table: forms, distribution: distributed}
      - {table: users, distribution: reference, column: id}
      - {table: cases, distribution: distributed, column: domain, colocate_with: users}
      - {table: audit, distribution: sharded}
",
    );
    assert_eq!(
        found,
        [
            "18:9: citus[0].tables[0]: a distributed table names its distribution `column`",
            "19:57: citus[0].tables[1].column: a reference table has no distribution column",
            "20:82: citus[0].tables[2].colocate_with: `users` is not a distributed table of this cluster",
            "21:38: citus[0].tables[3].distribution: `sharded` is not one of: distributed, reference, local",
        ]
    );
}
