//! End to end: replays demo.tape in tmux against the real binary and a real lab, asserting
//! every `Wait+Screen` pattern — the demo cannot rot — then checks what the run left behind:
//! the replication pane showed the standby's LSN advancing, and the journal holds every
//! confirmation by the operator who typed it.

use cutover::engine::EntryKind;
use cutover::journal::Journal;
use cutover::lab::LabConfig;
use regex::Regex;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug)]
enum TapeCommand {
    Type(String),
    Key(&'static str),
    Sleep(Duration),
    Wait { pattern: String, timeout: Duration },
}

fn parse_duration(text: &str) -> Duration {
    if let Some(ms) = text.strip_suffix("ms") {
        Duration::from_millis(ms.parse().unwrap())
    } else if let Some(s) = text.strip_suffix('s') {
        Duration::from_secs_f64(s.parse().unwrap())
    } else {
        panic!("duration {text}")
    }
}

/// The subset of VHS the tape uses; anything else fails the test, so the tape stays replayable.
fn parse_tape(text: &str) -> Vec<TapeCommand> {
    let mut commands = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "Output" | "Set" | "Hide" | "Show" => {}
            "Type" => {
                let inner = rest
                    .trim()
                    .strip_prefix('"')
                    .and_then(|r| r.strip_suffix('"'))
                    .expect("Type \"...\"");
                commands.push(TapeCommand::Type(inner.replace("\\\"", "\"")));
            }
            "Enter" => commands.push(TapeCommand::Key("Enter")),
            "Tab" => commands.push(TapeCommand::Key("Tab")),
            "Escape" => commands.push(TapeCommand::Key("Escape")),
            "Backspace" => commands.push(TapeCommand::Key("BSpace")),
            "Sleep" => commands.push(TapeCommand::Sleep(parse_duration(rest.trim()))),
            w if w.starts_with("Wait+Screen") => {
                let timeout = w
                    .split_once('@')
                    .map_or(Duration::from_secs(15), |(_, t)| parse_duration(t));
                let pattern = rest
                    .trim()
                    .strip_prefix('/')
                    .and_then(|r| r.strip_suffix('/'))
                    .expect("Wait /re/");
                commands.push(TapeCommand::Wait {
                    pattern: pattern.to_string(),
                    timeout,
                });
            }
            other => panic!("demo.tape uses `{other}`, which the replay does not support"),
        }
    }
    commands
}

struct Tmux {
    socket: String,
    lab_dir: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-L").arg(&self.socket);
        cmd
    }
    fn send(&self, args: &[&str]) {
        let status = self
            .cmd()
            .arg("send-keys")
            .arg("-t")
            .arg("demo")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success());
    }
    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-t", "demo", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }
    fn wait_for(&self, pattern: &Regex, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if pattern.is_match(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "Wait+Screen /{pattern}/ timed out; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
        if self.lab_dir.exists() {
            let _ = cutover::lab::down(&self.lab_dir);
        }
    }
}

fn replay_lsns(screen: &str) -> Vec<String> {
    Regex::new(r"replay(?:ed)? +(\d+/[0-9A-F]+)")
        .unwrap()
        .captures_iter(screen)
        .map(|c| c[1].to_string())
        .collect()
}

#[test]
fn demo_tape_replays_against_the_real_binary() {
    let tape = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/demo.tape")).unwrap();
    let commands = parse_tape(&tape);
    let work = tempfile::tempdir().unwrap();
    let lab_dir =
        std::env::temp_dir().join(format!("cutover-demo-{}", uuid::Uuid::new_v4().simple()));
    let state_dir = work.path().join("state");
    let config = LabConfig::on_free_ports(&lab_dir, 20_000).unwrap();
    let lab_args = format!(
        "--dir {} --docs 20000 --pg1-port {} --pg2-port {} --pgbouncer-port {} --ssh-port {}",
        lab_dir.display(),
        config.pg1_port,
        config.pg2_port,
        config.pgbouncer_port,
        config.ssh_port
    );
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_cutover"))
        .parent()
        .unwrap()
        .to_path_buf();
    let tmux = Tmux {
        socket: format!("cutover-demo-{}", std::process::id()),
        lab_dir: lab_dir.clone(),
    };
    let status = tmux
        .cmd()
        .args(["new-session", "-d", "-s", "demo", "-x", "160", "-y", "48"])
        .arg("-c")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("-e")
        .arg(format!("CUTOVER_BIN_DIR={}", bin_dir.display()))
        .arg("-e")
        .arg(format!("LAB_ARGS={lab_args}"))
        .arg("-e")
        .arg(format!("STATE_ARGS=--state-dir {}", state_dir.display()))
        .args(["bash", "--norc", "--noprofile"])
        .status()
        .unwrap();
    assert!(status.success(), "tmux starts");

    let mut lsn_checked = false;
    for command in &commands {
        match command {
            TapeCommand::Type(text) => tmux.send(&["-l", "--", text]),
            TapeCommand::Key(key) => tmux.send(&[key]),
            TapeCommand::Sleep(d) => std::thread::sleep(*d),
            TapeCommand::Wait { pattern, timeout } => {
                let re = Regex::new(pattern).unwrap();
                let screen = tmux.wait_for(&re, *timeout);
                if pattern == "pg2 standby" && !lsn_checked {
                    // With the load running, the standby's replay LSN moves on the screen.
                    let first = replay_lsns(&screen);
                    assert!(
                        !first.is_empty(),
                        "the replication pane shows replay LSNs:\n{screen}"
                    );
                    let moved = (0..50).any(|_| {
                        std::thread::sleep(Duration::from_millis(200));
                        let now = replay_lsns(&tmux.screen());
                        !now.is_empty() && now != first
                    });
                    assert!(moved, "the standby's replay LSN advances");
                    lsn_checked = true;
                }
            }
        }
    }
    assert!(lsn_checked, "the tape waits for the standby to appear");

    let journal = Journal::open(&state_dir).unwrap();
    let run = journal.runs().unwrap().into_iter().next().expect("a run");
    let entries = journal.entries(&run.run_id).unwrap();
    let confirmed: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Confirmed)
        .collect();
    assert_eq!(
        confirmed.len(),
        14,
        "every step was confirmed in the cockpit"
    );
    assert!(
        confirmed
            .iter()
            .all(|e| e.actors == vec!["demo".to_string()]),
        "by the operator who typed it"
    );
    assert_eq!(run.status.as_str(), "completed");
}
