//! Host commands against a real OpenSSH server (the lab's sshd on a free port in a tempdir)
//! and on the local host.

use cutover::inventory::{Host, SshTarget};
use cutover::lab::proc::free_port;
use cutover::lab::sshd::Sshd;
use cutover::remote::{HostOptions, Hosts, OutputLine, RemoteError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);
/// Well below the 25 s a background `sleep 25` would hold a command, and below [`T`]; far
/// above what returning promptly takes on a loaded machine.
const BACKGROUND_SLEEP_BOUND: Duration = Duration::from_secs(15);
/// How long a killed process may take to disappear.
const GONE_WITHIN: Duration = Duration::from_secs(15);

/// Polls `pgrep -f pattern` (through `list`, which returns its stdout) until nothing matches;
/// returns what still matched at the deadline.
async fn until_no_process<F, Fut>(mut list: F) -> String
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let deadline = Instant::now() + GONE_WITHIN;
    loop {
        let left = list().await;
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running lab sshd, stopped by PID when the test ends.
struct LabSshd {
    sshd: Sshd,
    dir: tempfile::TempDir,
}

impl Drop for LabSshd {
    fn drop(&mut self) {
        self.sshd.stop();
    }
}

impl LabSshd {
    fn start() -> LabSshd {
        let dir = tempfile::tempdir().unwrap();
        let mut last_error = None;
        // A free port can be taken between probing and binding; try a few.
        for _ in 0..3 {
            match Sshd::start(dir.path(), free_port().unwrap()) {
                Ok(sshd) => return LabSshd { sshd, dir },
                Err(e) => last_error = Some(e),
            }
        }
        panic!("lab sshd did not start: {}", last_error.unwrap());
    }

    fn target(&self, known_hosts: &Path) -> SshTarget {
        SshTarget {
            address: "127.0.0.1".into(),
            port: self.sshd.port,
            user: "postgres".into(),
            key: Some(self.sshd.client_key.display().to_string()),
            known_hosts: Some(known_hosts.display().to_string()),
        }
    }

    fn host_with(&self, known_hosts: &Path) -> Host {
        Host {
            name: "db1".into(),
            local: false,
            ssh: Some(self.target(known_hosts)),
        }
    }

    fn hosts(&self) -> Hosts {
        Hosts::new(
            vec![self.host_with(&self.sshd.known_hosts)],
            HostOptions::default(),
        )
    }

    /// A scratch file path in a directory the test can write and sshd's user can read.
    fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The base64 part of the server's host key.
    fn host_key_base64(&self) -> String {
        self.sshd
            .host_key_pub
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }
}

fn ignore(_: OutputLine) {}

fn other_ed25519_public_key(dir: &Path) -> String {
    let path = dir.join("other_key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn ssh_command_streams_stdout_and_stderr_in_order_and_returns_exit_status() {
    let lab = LabSshd::start();
    let hosts = lab.hosts();
    let mut lines = Vec::new();
    let out = hosts
        .run(
            "db1",
            "echo a; sleep 0.1; echo b >&2; sleep 0.1; printf 'c\\nno-newline'; exit 3",
            T,
            &mut |line| lines.push(line),
        )
        .await
        .unwrap();
    assert_eq!(
        lines,
        vec![
            OutputLine::Stdout("a".into()),
            OutputLine::Stderr("b".into()),
            OutputLine::Stdout("c".into()),
            OutputLine::Stdout("no-newline".into()),
        ]
    );
    assert_eq!(out.exit_status, 3);
    assert_eq!(out.stdout, "a\nc\nno-newline");
    assert_eq!(out.stderr, "b\n");

    let who = hosts.run("db1", "id -un", T, &mut ignore).await.unwrap();
    assert_eq!(who.stdout.trim(), "postgres");

    // A background process holding the output open (e.g. a server started without a log
    // file) does not hang the command once the shell has exited: it returns long before the
    // background sleep ends (and before T).
    let started = Instant::now();
    let out = hosts
        .run("db1", "sleep 25 & echo started", T, &mut ignore)
        .await
        .unwrap();
    assert_eq!(out.stdout, "started\n");
    assert!(
        started.elapsed() < BACKGROUND_SLEEP_BOUND,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn ssh_output_arrives_while_the_command_is_still_running() {
    let lab = LabSshd::start();
    let hosts = lab.hosts();
    let started = Instant::now();
    let mut arrivals = Vec::new();
    let out = hosts
        .run("db1", "echo early; sleep 1; echo late", T, &mut |line| {
            arrivals.push((line, started.elapsed()))
        })
        .await
        .unwrap();
    assert_eq!(out.exit_status, 0);
    assert_eq!(arrivals.len(), 2);
    let (early_at, late_at) = (arrivals[0].1, arrivals[1].1);
    assert_eq!(arrivals[0].0, OutputLine::Stdout("early".into()));
    assert!(
        late_at - early_at >= Duration::from_millis(800),
        "the first line was held back until the end: {early_at:?} vs {late_at:?}"
    );
}

#[tokio::test]
async fn commands_on_a_host_share_one_connection() {
    let lab = LabSshd::start();
    let hosts = lab.hosts();

    let first = Instant::now();
    hosts.run("db1", "true", T, &mut ignore).await.unwrap();
    let first_elapsed = first.elapsed();

    let mut multiplexed = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let out = hosts
            .run("db1", &format!("echo {i}"), T, &mut ignore)
            .await
            .unwrap();
        multiplexed.push(started.elapsed());
        assert_eq!(out.stdout, format!("{i}\n"));
    }
    // Concurrent commands from clones of the handle also share it.
    let runs = (0..12).map(|i| {
        let hosts = hosts.clone();
        tokio::spawn(async move {
            hosts
                .run("db1", &format!("sleep 0.2; echo {i}"), T, &mut ignore)
                .await
                .map(|o| o.stdout)
        })
    });
    for (i, run) in futures_util::future::join_all(runs)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(run.unwrap().unwrap(), format!("{i}\n"));
    }
    assert_eq!(hosts.connections_opened(), 1);

    // Timings are shown, not asserted: one connection (above) is what sharing means.
    multiplexed.sort();
    let median = multiplexed[multiplexed.len() / 2];
    eprintln!("first command incl. connect: {first_elapsed:?}; multiplexed median: {median:?}");
}

#[tokio::test]
async fn a_dead_pooled_connection_is_replaced_transparently() {
    let lab = LabSshd::start();
    let hosts = lab.hosts();
    hosts.run("db1", "true", T, &mut ignore).await.unwrap();
    assert!(lab.sshd.drop_connections() > 0);
    let out = hosts
        .run("db1", "echo again", T, &mut ignore)
        .await
        .unwrap();
    assert_eq!(out.stdout, "again\n");
    assert_eq!(hosts.connections_opened(), 2);
}

#[tokio::test]
async fn a_changed_host_key_is_refused_even_with_trust_on_first_use() {
    let lab = LabSshd::start();
    let known_hosts = lab.scratch("known_hosts_changed");
    let other = other_ed25519_public_key(lab.dir.path());
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {other}\n", lab.sshd.port),
    )
    .unwrap();
    for trust_on_first_use in [false, true] {
        let hosts = Hosts::new(
            vec![lab.host_with(&known_hosts)],
            HostOptions {
                trust_on_first_use,
                ..HostOptions::default()
            },
        );
        let err = hosts.run("db1", "true", T, &mut ignore).await.unwrap_err();
        let message = err.to_string();
        match err {
            RemoteError::HostKeyChanged { host, line, .. } => {
                assert_eq!(host, "db1");
                assert_eq!(line, 1);
            }
            other => panic!("expected HostKeyChanged, got {other:?}"),
        }
        assert!(message.contains("MAN-IN-THE-MIDDLE"), "{message}");
        assert!(message.contains("SHA256:"), "{message}");
    }
    // Nothing was appended.
    assert_eq!(
        std::fs::read_to_string(&known_hosts)
            .unwrap()
            .lines()
            .count(),
        1
    );
}

#[tokio::test]
async fn an_unknown_host_key_needs_trust_on_first_use_which_records_it() {
    let lab = LabSshd::start();
    let known_hosts = lab.scratch("known_hosts_empty");
    // Another host's key only: this host is unknown.
    let other = other_ed25519_public_key(lab.dir.path());
    std::fs::write(&known_hosts, format!("[127.0.0.1]:1 {other}\n")).unwrap();

    let strict = Hosts::new(vec![lab.host_with(&known_hosts)], HostOptions::default());
    let err = strict.run("db1", "true", T, &mut ignore).await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, RemoteError::HostKeyUnknown { .. }),
        "{message}"
    );
    assert!(
        message.contains(&known_hosts.display().to_string()),
        "{message}"
    );
    assert!(message.contains(&lab.sshd.port.to_string()), "{message}");
    assert!(message.contains("SHA256:"), "{message}");

    let trusting = Hosts::new(
        vec![lab.host_with(&known_hosts)],
        HostOptions {
            trust_on_first_use: true,
            ..HostOptions::default()
        },
    );
    let out = trusting
        .run("db1", "echo ok", T, &mut ignore)
        .await
        .unwrap();
    assert_eq!(out.stdout, "ok\n");
    let recorded = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(
        recorded.contains(&format!(
            "[127.0.0.1]:{} ssh-ed25519 {}",
            lab.sshd.port,
            lab.host_key_base64()
        )),
        "{recorded}"
    );

    // Now known: a strict client connects.
    let strict = Hosts::new(vec![lab.host_with(&known_hosts)], HostOptions::default());
    strict.run("db1", "true", T, &mut ignore).await.unwrap();
}

#[tokio::test]
async fn hashed_known_hosts_entries_are_honoured() {
    let lab = LabSshd::start();
    let known_hosts = lab.scratch("known_hosts_hashed");
    std::fs::copy(&lab.sshd.known_hosts, &known_hosts).unwrap();
    let status = std::process::Command::new("ssh-keygen")
        .arg("-q")
        .arg("-H")
        .arg("-f")
        .arg(&known_hosts)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(text.starts_with("|1|"), "not hashed: {text}");

    let hosts = Hosts::new(vec![lab.host_with(&known_hosts)], HostOptions::default());
    hosts.run("db1", "true", T, &mut ignore).await.unwrap();
}

#[tokio::test]
async fn a_command_timeout_is_prompt_and_names_host_and_command() {
    let lab = LabSshd::start();
    let hosts = lab.hosts();
    hosts.run("db1", "true", T, &mut ignore).await.unwrap();

    let started = Instant::now();
    let err = hosts
        .run(
            "db1",
            "sleep 31.25",
            Duration::from_millis(400),
            &mut ignore,
        )
        .await
        .unwrap_err();
    // Far below the 31.25 s the command would take.
    assert!(
        started.elapsed() < BACKGROUND_SLEEP_BOUND,
        "{:?}",
        started.elapsed()
    );
    let message = err.to_string();
    assert!(matches!(err, RemoteError::Timeout { .. }), "{message}");
    assert!(
        message.contains("db1") && message.contains("sleep 31.25"),
        "{message}"
    );

    // The remote process was killed, and the connection is still good.
    let left = until_no_process(|| async {
        hosts
            .run("db1", "pgrep -f 'slee[p] 31.25' || true", T, &mut ignore)
            .await
            .unwrap()
            .stdout
    })
    .await;
    assert_eq!(left, "", "remote sleep survived the timeout");
    assert_eq!(hosts.connections_opened(), 1);
}

#[tokio::test]
async fn a_wrong_client_key_is_an_auth_error() {
    let lab = LabSshd::start();
    other_ed25519_public_key(lab.dir.path());
    let mut host = lab.host_with(&lab.sshd.known_hosts);
    if let Some(ssh) = host.ssh.as_mut() {
        ssh.key = Some(lab.dir.path().join("other_key").display().to_string());
    }
    let hosts = Hosts::new(vec![host], HostOptions::default());
    let err = hosts.run("db1", "true", T, &mut ignore).await.unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err}");
}

#[tokio::test]
async fn run_checked_reports_failure_with_stderr_and_upload_writes_files() {
    let lab = LabSshd::start();
    let hosts = lab.hosts();
    let err = hosts
        .run_checked("db1", "echo boom >&2; exit 7", T, &mut ignore)
        .await
        .unwrap_err();
    match err {
        RemoteError::Failed {
            exit_status,
            stderr_tail,
            ..
        } => {
            assert_eq!(exit_status, 7);
            assert_eq!(stderr_tail, "boom");
        }
        other => panic!("expected Failed, got {other:?}"),
    }

    let path = lab.scratch("pgbouncer's config.ini");
    let contents = "[databases]\np1 = host=127.0.0.1 dbname='x'\n";
    hosts
        .upload("db1", &path.display().to_string(), contents.as_bytes(), T)
        .await
        .unwrap();
    let back = hosts
        .run_checked(
            "db1",
            &format!(
                "cat {}",
                cutover::remote::shell_quote(&path.display().to_string())
            ),
            T,
            &mut ignore,
        )
        .await
        .unwrap();
    assert_eq!(back.stdout, contents);
}

#[tokio::test]
async fn ssh_agent_is_used_when_no_key_is_given() {
    let lab = LabSshd::start();
    let socket = lab.scratch("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            cutover::lab::proc::stop_pid(
                self.0,
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(2),
            );
        }
    }
    let _agent_guard = KillOnDrop(agent.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let added = std::process::Command::new("ssh-add")
        .arg("-q")
        .arg(&lab.sshd.client_key)
        .env("SSH_AUTH_SOCK", &socket)
        .status()
        .unwrap();
    assert!(added.success());
    // Only this test reads SSH_AUTH_SOCK: every other test names its key.
    std::env::set_var("SSH_AUTH_SOCK", &socket);

    let mut host = lab.host_with(&lab.sshd.known_hosts);
    if let Some(ssh) = host.ssh.as_mut() {
        ssh.key = None;
    }
    let hosts = Hosts::new(vec![host], HostOptions::default());
    let out = hosts.run("db1", "id -un", T, &mut ignore).await.unwrap();
    assert_eq!(out.stdout, "postgres\n");
    let _ = agent.try_wait();
}

#[tokio::test]
async fn a_local_host_runs_commands_locally_with_the_same_contract() {
    let hosts = Hosts::new(
        vec![Host {
            name: "jump".into(),
            local: true,
            ssh: None,
        }],
        HostOptions::default(),
    );
    let mut lines = Vec::new();
    let out = hosts
        .run(
            "jump",
            "echo a; sleep 0.05; echo b >&2; sleep 0.05; echo c; exit 4",
            T,
            &mut |line| lines.push(line),
        )
        .await
        .unwrap();
    assert_eq!(
        lines,
        vec![
            OutputLine::Stdout("a".into()),
            OutputLine::Stderr("b".into()),
            OutputLine::Stdout("c".into()),
        ]
    );
    assert_eq!(out.exit_status, 4);
    assert_eq!(out.stdout, "a\nc\n");
    assert_eq!(out.stderr, "b\n");
    assert_eq!(hosts.connections_opened(), 0);

    // A timeout kills the whole process group, children included.
    let started = Instant::now();
    let err = hosts
        .run(
            "jump",
            "sleep 32.5 & sleep 32.5; wait",
            Duration::from_millis(300),
            &mut ignore,
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < BACKGROUND_SLEEP_BOUND);
    assert!(matches!(err, RemoteError::Timeout { .. }), "{err}");
    let left = until_no_process(|| async {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "slee[p] 32.5"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await;
    assert_eq!(left, "", "local children survived the timeout");

    // A background process holding the output pipe open does not hang the command.
    let started = Instant::now();
    let out = hosts
        .run("jump", "sleep 25 & echo started", T, &mut ignore)
        .await
        .unwrap();
    assert_eq!(out.stdout, "started\n");
    assert!(started.elapsed() < BACKGROUND_SLEEP_BOUND);

    let err = hosts.run("nope", "true", T, &mut ignore).await.unwrap_err();
    assert!(matches!(err, RemoteError::UnknownHost { .. }));
}

#[tokio::test]
async fn every_command_is_logged_with_host_and_exit_status_and_no_key_material() {
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // A global subscriber: a thread-scoped one misses callsites whose interest other test
    // threads cached first. Other tests' events land in the buffer too; we look for ours.
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let lab = LabSshd::start();
    let hosts = lab.hosts();
    hosts
        .run("db1", "echo logged; exit 5", T, &mut ignore)
        .await
        .unwrap();

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let exit_line = log
        .lines()
        .find(|l| {
            l.contains("cutover::cmd")
                && l.contains("phase=\"exit\"")
                && l.contains("echo logged; exit 5")
        })
        .unwrap_or_else(|| panic!("no exit line in:\n{log}"));
    assert!(exit_line.contains("host=\"db1\""), "{exit_line}");
    assert!(exit_line.contains("echo logged; exit 5"), "{exit_line}");
    assert!(exit_line.contains("exit_status=5"), "{exit_line}");
    let private_key = std::fs::read_to_string(&lab.sshd.client_key).unwrap();
    let secret_line = private_key.lines().nth(1).unwrap();
    assert!(
        !log.contains(secret_line),
        "private key material in the log"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_hits_the_connect_timeout() {
    // Accepts TCP connections (the kernel backlog does) but never speaks SSH.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let host = Host {
        name: "silent".into(),
        local: false,
        ssh: Some(SshTarget {
            address: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            key: None,
            known_hosts: None,
        }),
    };
    let hosts = Hosts::new(
        vec![host],
        HostOptions {
            connect_timeout: Duration::from_millis(300),
            ..HostOptions::default()
        },
    );
    let started = Instant::now();
    let err = hosts
        .run("silent", "true", T, &mut ignore)
        .await
        .unwrap_err();
    // The 300 ms connect timeout, not the command's T, ended it.
    assert!(started.elapsed() < T / 2, "{:?}", started.elapsed());
    let message = err.to_string();
    assert!(matches!(err, RemoteError::Connect { .. }), "{message}");
    assert!(
        message.contains("silent") && message.contains("timed out"),
        "{message}"
    );

    drop(silent);
    let err = hosts
        .run("silent", "true", T, &mut ignore)
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Connect { .. }), "{err}");
}

#[test]
fn lab_sshd_is_adopted_when_running_and_stopped_by_pid() {
    let lab = LabSshd::start();
    let (again, started) = Sshd::ensure(&lab.sshd.dir, lab.sshd.port).unwrap();
    assert!(!started, "a running sshd must be adopted, not restarted");
    assert_eq!(again.pid(), lab.sshd.pid());
    assert_eq!(again.host_key_pub, lab.sshd.host_key_pub);

    lab.sshd.stop();
    // sshd removes its PID file on SIGTERM, so there is nothing left to adopt.
    assert!(Sshd::adopt(&lab.sshd.dir).map_or(true, |s| !s.is_running()));
    assert!(!lab.sshd.is_running());
    assert!(!cutover::lab::proc::port_open(lab.sshd.port));

    // Restarting keeps the keys, so known_hosts entries stay valid.
    let (restarted, started) = Sshd::ensure(&lab.sshd.dir, lab.sshd.port).unwrap();
    assert!(started);
    assert_eq!(restarted.host_key_pub, lab.sshd.host_key_pub);
    assert!(restarted.is_running());
    restarted.stop();
}
