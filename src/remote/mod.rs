//! Host commands: the executor's effect for "run this on host X" — over SSH (russh, one pooled
//! connection per host) or locally via `sh -c` — streaming output lines back as they arrive.
//!
//! Every command is logged on target `cutover::cmd` (the cockpit's command log) with fields
//! `host`, `command` and `phase`: `start`, then `exit` (with `exit_status`, `elapsed_ms`) at
//! info level, or `timeout`/`error` at warn level. Key material is never logged; commands
//! are, so never put secrets on a command line — pass them with [`Hosts::upload`].

pub mod known_hosts;
mod local;
mod output;
mod ssh;

use crate::inventory::Host;
pub use crate::quote::shell_quote;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One line of a command's output, without its line terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputLine {
    Stdout(String),
    Stderr(String),
}

/// A finished command. `stdout`/`stderr` hold all output (lossy UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The command's exit status; 128 + N when it was killed by signal N (as `sh` reports).
    pub exit_status: u32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.exit_status == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOptions {
    /// Accept (and record in known_hosts) the key of a host that has NO key on record.
    /// A changed or revoked key is refused regardless.
    pub trust_on_first_use: bool,
    /// Bound on TCP connect + SSH handshake + authentication.
    pub connect_timeout: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            trust_on_first_use: false,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("host `{host}` is not in the inventory")]
    UnknownHost { host: String },
    #[error("host `{host}` has neither `local: true` nor an `ssh:` section")]
    NoTransport { host: String },
    #[error(
        "host key of `{host}` ({address}:{port}) is unknown: {fingerprint} is not in {known_hosts}{}. \
         Verify the fingerprint with the host's owner, then add the key \
         (`ssh-keyscan -p {port} {address} >> {known_hosts}`), or connect with trust-on-first-use",
        if *other_types_known { " (keys of other types are recorded for it)" } else { "" },
        address = key.address,
        port = key.port,
        fingerprint = key.fingerprint,
        known_hosts = key.known_hosts.display()
    )]
    HostKeyUnknown {
        host: String,
        key: Box<HostKeyReport>,
        other_types_known: bool,
    },
    #[error(
        "@@@ HOST KEY CHANGED for `{host}` ({address}:{port}) — POSSIBLE MAN-IN-THE-MIDDLE ATTACK @@@ \
         The server presented {fingerprint}, but {known_hosts} line {line} records {recorded_fingerprint}. \
         Refusing to connect. If the host was legitimately reinstalled, confirm the new key out of band \
         and replace that line (`ssh-keygen -R '{host_field}' -f {known_hosts}`)",
        host_field = known_hosts::host_field(&key.address, key.port),
        address = key.address,
        port = key.port,
        fingerprint = key.fingerprint,
        known_hosts = key.known_hosts.display()
    )]
    HostKeyChanged {
        host: String,
        key: Box<HostKeyReport>,
        recorded_fingerprint: String,
        line: usize,
    },
    #[error(
        "host key {fingerprint} of `{host}` ({address}:{port}) is REVOKED in {known_hosts} line {line}; refusing to connect",
        address = key.address,
        port = key.port,
        fingerprint = key.fingerprint,
        known_hosts = key.known_hosts.display()
    )]
    HostKeyRevoked {
        host: String,
        key: Box<HostKeyReport>,
        line: usize,
    },
    #[error("known_hosts {} for host `{host}`: {source}", path.display())]
    KnownHosts {
        host: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("authentication as `{user}` on host `{host}` failed: {reason}")]
    Auth {
        host: String,
        user: String,
        reason: String,
    },
    #[error("cannot connect to host `{host}` ({address}:{port}): {reason}")]
    Connect {
        host: String,
        address: String,
        port: u16,
        reason: String,
    },
    #[error("command on host `{host}` timed out after {after:?}: {command}")]
    Timeout {
        host: String,
        command: String,
        after: Duration,
    },
    #[error("command on host `{host}` was cut off: {reason}: {command}")]
    Channel {
        host: String,
        command: String,
        reason: String,
    },
    #[error("running a command on host `{host}`: {source}: {command}")]
    Io {
        host: String,
        command: String,
        source: std::io::Error,
    },
    #[error("command on host `{host}` exited with status {exit_status}: {command}\n{stderr_tail}")]
    Failed {
        host: String,
        command: String,
        exit_status: u32,
        /// The last lines of stderr (bounded), for display.
        stderr_tail: String,
    },
}

/// The host key a server presented, and the known_hosts file it was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyReport {
    pub address: String,
    pub port: u16,
    /// `SHA256:...` of the presented key.
    pub fingerprint: String,
    pub known_hosts: PathBuf,
}

impl RemoteError {
    /// The inventory host the error concerns.
    pub fn host(&self) -> &str {
        match self {
            RemoteError::UnknownHost { host }
            | RemoteError::NoTransport { host }
            | RemoteError::HostKeyUnknown { host, .. }
            | RemoteError::HostKeyChanged { host, .. }
            | RemoteError::HostKeyRevoked { host, .. }
            | RemoteError::KnownHosts { host, .. }
            | RemoteError::Auth { host, .. }
            | RemoteError::Connect { host, .. }
            | RemoteError::Timeout { host, .. }
            | RemoteError::Channel { host, .. }
            | RemoteError::Io { host, .. }
            | RemoteError::Failed { host, .. } => host,
        }
    }
}

/// Runs commands on inventory hosts. Cheap to clone; clones share the SSH connection pool.
#[derive(Clone)]
pub struct Hosts {
    inner: Arc<Inner>,
}

struct Inner {
    hosts: HashMap<String, Host>,
    opts: HostOptions,
    pool: ssh::Pool,
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.inner.hosts.keys().collect();
        names.sort();
        f.debug_struct("Hosts")
            .field("hosts", &names)
            .field("opts", &self.inner.opts)
            .finish()
    }
}

/// After a command exits, how long to keep reading output still in flight. Background
/// processes that inherited the output pipes can keep them open indefinitely.
const OUTPUT_GRACE: Duration = Duration::from_millis(250);

/// What to feed a command on stdin; without input the command sees end-of-file at once.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stdin<'a> {
    Empty,
    Bytes(&'a [u8]),
}

impl Hosts {
    pub fn new(hosts: Vec<Host>, opts: HostOptions) -> Self {
        Hosts {
            inner: Arc::new(Inner {
                hosts: hosts.into_iter().map(|h| (h.name.clone(), h)).collect(),
                opts,
                pool: ssh::Pool::default(),
            }),
        }
    }

    /// Run `command` (a shell command line) on `host`, calling `on_line` for each output line
    /// as it arrives. A nonzero exit status is not an error here; see [`Hosts::run_checked`].
    /// `timeout` bounds the command from the moment a connection is available; connecting is
    /// bounded by [`HostOptions::connect_timeout`]. On timeout the command is killed (locally:
    /// its whole process group; over SSH: a KILL signal request, then the channel is closed).
    pub async fn run(
        &self,
        host: &str,
        command: &str,
        timeout: Duration,
        on_line: &mut (dyn FnMut(OutputLine) + Send),
    ) -> Result<CommandOutput, RemoteError> {
        self.exec(host, command, Stdin::Empty, timeout, on_line)
            .await
    }

    /// [`Hosts::run`], but a nonzero exit status is [`RemoteError::Failed`].
    pub async fn run_checked(
        &self,
        host: &str,
        command: &str,
        timeout: Duration,
        on_line: &mut (dyn FnMut(OutputLine) + Send),
    ) -> Result<CommandOutput, RemoteError> {
        let output = self.run(host, command, timeout, on_line).await?;
        check_exit(host, command, output)
    }

    /// Write `bytes` to `remote_path` on `host` (via a temporary file and `mv`, so readers never
    /// see a partial file). The contents are not logged.
    pub async fn upload(
        &self,
        host: &str,
        remote_path: &str,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<(), RemoteError> {
        let temporary = format!("{remote_path}.cutover-upload");
        let command = format!(
            "cat > {tmp} && mv -f {tmp} {dest}",
            tmp = shell_quote(&temporary),
            dest = shell_quote(remote_path)
        );
        let output = self
            .exec(host, &command, Stdin::Bytes(bytes), timeout, &mut |_| {})
            .await?;
        check_exit(host, &command, output).map(|_| ())
    }

    /// Number of SSH connections opened so far (reconnects included).
    pub fn connections_opened(&self) -> usize {
        self.inner.pool.connections_opened()
    }

    /// Politely close every pooled SSH connection.
    pub async fn disconnect_all(&self) {
        self.inner.pool.disconnect_all().await;
    }

    pub fn options(&self) -> &HostOptions {
        &self.inner.opts
    }

    async fn exec(
        &self,
        host: &str,
        command: &str,
        stdin: Stdin<'_>,
        timeout: Duration,
        on_line: &mut (dyn FnMut(OutputLine) + Send),
    ) -> Result<CommandOutput, RemoteError> {
        let started = Instant::now();
        tracing::info!(target: "cutover::cmd", host, command, phase = "start");
        let result = match self.inner.hosts.get(host) {
            None => Err(RemoteError::UnknownHost {
                host: host.to_string(),
            }),
            Some(h) if h.local => local::run(host, command, stdin, timeout, on_line).await,
            Some(Host {
                ssh: Some(target), ..
            }) => {
                self.inner
                    .pool
                    .run(
                        host,
                        target,
                        &self.inner.opts,
                        command,
                        stdin,
                        timeout,
                        on_line,
                    )
                    .await
            }
            Some(_) => Err(RemoteError::NoTransport {
                host: host.to_string(),
            }),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(output) => tracing::info!(
                target: "cutover::cmd",
                host,
                command,
                phase = "exit",
                exit_status = output.exit_status,
                elapsed_ms
            ),
            Err(RemoteError::Timeout { .. }) => tracing::warn!(
                target: "cutover::cmd",
                host,
                command,
                phase = "timeout",
                elapsed_ms
            ),
            Err(error) => tracing::warn!(
                target: "cutover::cmd",
                host,
                command,
                phase = "error",
                elapsed_ms,
                %error
            ),
        }
        result
    }
}

fn check_exit(
    host: &str,
    command: &str,
    output: CommandOutput,
) -> Result<CommandOutput, RemoteError> {
    if output.success() {
        return Ok(output);
    }
    Err(RemoteError::Failed {
        host: host.to_string(),
        command: command.to_string(),
        exit_status: output.exit_status,
        stderr_tail: tail(&output.stderr, 20, 4000),
    })
}

/// The last `max_lines` lines of `text`, at most about `max_chars` characters.
fn tail(text: &str, max_lines: usize, max_chars: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let mut tail = lines[lines.len().saturating_sub(max_lines)..].join("\n");
    if tail.len() > max_chars {
        let mut cut = tail.len() - max_chars;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = format!("…{}", &tail[cut..]);
    }
    tail
}

/// `~/x` → `$HOME/x`; other paths unchanged.
fn expand_tilde(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), dirs::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        for word in ["plain", "with space", "it's", "", "$HOME", "a\"b", "-n"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(word)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
        }
    }

    #[test]
    fn tail_keeps_last_lines() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&text, 3, 1000);
        assert_eq!(t, "line 97\nline 98\nline 99");
        assert!(tail(&"é".repeat(3000), 1, 10).chars().count() <= 11);
    }
}
