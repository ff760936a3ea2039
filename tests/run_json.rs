//! `cutover run --json` during a real split: one JSON object per journal entry, streamed as the
//! run goes, with the schema of `cutover journal export --format json` (plus the run id).

mod common;

use common::*;
use std::io::BufRead;
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ndjson_stream_of_a_real_split_is_the_journal_as_it_happens() {
    let lab = lab(2_000).await;
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "run",
            lab.config.inventory_path().to_str().unwrap(),
            "shard-split",
            "--from",
            "p1",
            "--to",
            "p2",
            "--node",
            "pg2",
            "--shards",
            "512-1023",
            "--yes",
            "--json",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut running_at_first_line = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if running_at_first_line.is_none() {
                running_at_first_line = Some(std::time::Instant::now());
            }
            lines.push(line);
        }
        (lines, running_at_first_line)
    });
    let status = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let finished = std::time::Instant::now();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (lines, first_line_at) = reader.join().unwrap();
    assert!(
        first_line_at.is_some_and(|at| finished.duration_since(at).as_millis() > 100),
        "entries stream while the run goes, not at its end"
    );

    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    assert!(entries.len() > 20, "{} entries", entries.len());
    let run = entries[0]["run"].as_str().unwrap().to_string();
    for entry in &entries {
        for key in ["at", "step", "kind", "detail", "actors", "item", "run"] {
            assert!(entry.get(key).is_some(), "{key} missing in {entry}");
        }
        assert_eq!(entry["run"], run.as_str());
    }
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"verified"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run_finished"), "{kinds:?}");
    assert!(
        entries
            .iter()
            .any(|e| e["kind"] == "gate" && e["detail"].as_str().is_some_and(|d| !d.is_empty())),
        "gate values are in the stream"
    );

    // The same schema as the export: each line is an export entry plus `run`.
    let export = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["journal", "export", &run, "--format", "json"])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    assert!(export.status.success());
    let export: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    let exported = export["entries"].as_array().unwrap();
    assert_eq!(exported.len(), entries.len());
    for (streamed, stored) in entries.iter().zip(exported) {
        let mut streamed = streamed.clone();
        streamed.as_object_mut().unwrap().remove("run");
        assert_eq!(&streamed, stored);
    }
}
