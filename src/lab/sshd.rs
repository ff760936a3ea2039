//! The lab's sshd: a real OpenSSH server on 127.0.0.1 that `cutover::remote` logs into as the
//! service user, so host commands in the lab travel the same SSH path as in production.

use super::proc::{self, ProcError, SERVICE_USER};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub const SSHD_BINARY: &str = "/usr/sbin/sshd";
/// OpenSSH's privilege-separation directory; sshd refuses to start without it.
const PRIVSEP_DIR: &str = "/run/sshd";
const HOST_KEY: &str = "ssh_host_ed25519_key";
/// The client key; named like OpenSSH's default so the lab inventory reads naturally.
pub const CLIENT_KEY: &str = "id_ed25519";
pub const KNOWN_HOSTS: &str = "known_hosts";
const CONFIG: &str = "sshd_config";
const PID_FILE: &str = "sshd.pid";
const LOG_FILE: &str = "sshd.log";
const PORT_FILE: &str = "port";
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SshdError {
    #[error("{SSHD_BINARY} not found; install it with `apt-get install -y openssh-server`")]
    NotInstalled,
    #[error("ssh-keygen not found; install it with `apt-get install -y openssh-client`")]
    NoKeygen,
    #[error(
        "OS user `{SERVICE_USER}` has shell `{shell}`, so it cannot log in over SSH; \
         give it a shell with `usermod -s /bin/bash {SERVICE_USER}`"
    )]
    NoLoginShell { shell: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("sshd did not accept connections on 127.0.0.1:{port} within {timeout:?}; see {log}")]
    NotListening {
        port: u16,
        timeout: Duration,
        log: PathBuf,
    },
    #[error("sshd started but wrote no PID file {0}")]
    NoPidFile(PathBuf),
    #[error("no lab sshd in {0}: missing {PORT_FILE} or {PID_FILE}")]
    NotSetUp(PathBuf),
}

/// A running lab sshd. Only [`Sshd::stop`] stops it; dropping the value leaves it running
/// (the lab outlives the `cutover lab up` process).
#[derive(Debug, Clone)]
pub struct Sshd {
    pub port: u16,
    pub dir: PathBuf,
    /// The server's public host key, one OpenSSH line (`ssh-ed25519 AAAA... comment`).
    pub host_key_pub: String,
    /// Private key the client authenticates with; its public half is in `authorized_keys`.
    pub client_key: PathBuf,
    /// known_hosts file holding `[127.0.0.1]:PORT` and the host key.
    pub known_hosts: PathBuf,
    pid: i32,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SshdError + '_ {
    move |source| SshdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, contents: &str) -> Result<(), SshdError> {
    std::fs::write(path, contents).map_err(io_err(path))
}

/// `ssh-keygen` an ed25519 key pair at `path` unless it exists (keeps keys stable across `lab up`).
fn ensure_key(path: &Path, comment: &str) -> Result<(), SshdError> {
    let public = public_half(path);
    if path.exists() && public.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(&public);
    let mut cmd = std::process::Command::new("ssh-keygen");
    cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null());
    match proc::run_checked(&mut cmd) {
        Err(ProcError::Spawn { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(SshdError::NoKeygen)
        }
        other => other.map(|_| ()).map_err(SshdError::from),
    }
}

/// `KEY.pub` next to `KEY`, as ssh-keygen writes it.
fn public_half(private_key: &Path) -> PathBuf {
    let mut name = private_key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn read_trimmed(path: &Path) -> Result<String, SshdError> {
    Ok(std::fs::read_to_string(path)
        .map_err(io_err(path))?
        .trim()
        .to_string())
}

/// The service user's login shell from the passwd database.
fn service_user_shell() -> Result<String, SshdError> {
    let user = nix::unistd::User::from_name(SERVICE_USER)
        .ok()
        .flatten()
        .ok_or_else(|| ProcError::NoServiceUser(SERVICE_USER.to_string()))?;
    Ok(user.shell.display().to_string())
}

fn check_login_shell() -> Result<(), SshdError> {
    let shell = service_user_shell()?;
    let unusable = shell.is_empty()
        || shell.ends_with("/nologin")
        || shell.ends_with("/false")
        || !Path::new(&shell).exists();
    if unusable {
        return Err(SshdError::NoLoginShell { shell });
    }
    Ok(())
}

fn sshd_config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "# Written by cutover's lab; regenerated on every start.\n\
         Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {d}/{HOST_KEY}\n\
         AuthorizedKeysFile {d}/authorized_keys\n\
         PidFile {d}/{PID_FILE}\n\
         UsePAM no\n\
         StrictModes no\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\n\
         AllowUsers {SERVICE_USER}\n\
         PrintMotd no\n\
         LogLevel INFO\n\
         MaxSessions 32\n\
         MaxStartups 32:30:64\n"
    )
}

impl Sshd {
    /// Set up `dir` (keys, authorized_keys, known_hosts, sshd_config) and start sshd on
    /// 127.0.0.1:`port` as the service user. Keys already in `dir` are kept.
    pub fn start(dir: &Path, port: u16) -> Result<Sshd, SshdError> {
        if !Path::new(SSHD_BINARY).exists() {
            return Err(SshdError::NotInstalled);
        }
        check_login_shell()?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let dir = dir.canonicalize().map_err(io_err(dir))?;

        let host_key = dir.join(HOST_KEY);
        let client_key = dir.join(CLIENT_KEY);
        ensure_key(&host_key, "cutover-lab-host")?;
        ensure_key(&client_key, "cutover-lab-client")?;
        let host_key_pub = read_trimmed(&public_half(&host_key))?;
        let client_key_pub = read_trimmed(&public_half(&client_key))?;

        write_file(&dir.join("authorized_keys"), &format!("{client_key_pub}\n"))?;
        let known_hosts = dir.join(KNOWN_HOSTS);
        write_file(
            &known_hosts,
            &format!(
                "[127.0.0.1]:{port} {}\n",
                key_without_comment(&host_key_pub)
            ),
        )?;
        let config = dir.join(CONFIG);
        write_file(&config, &sshd_config(&dir, port))?;
        write_file(&dir.join(PORT_FILE), &format!("{port}\n"))?;
        let pid_file = dir.join(PID_FILE);
        let _ = std::fs::remove_file(&pid_file);

        ensure_privsep_dir()?;
        proc::chown_to_service_user(&dir)?;

        let log = dir.join(LOG_FILE);
        let mut cmd = proc::service_command(SSHD_BINARY);
        cmd.arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null());
        // sshd daemonizes: the command returns once the listener is set up or config fails.
        proc::run_checked(&mut cmd)?;

        if !proc::wait_for_port(port, START_TIMEOUT) {
            return Err(SshdError::NotListening {
                port,
                timeout: START_TIMEOUT,
                log,
            });
        }
        let pid = wait_for_pid_file(&pid_file).ok_or(SshdError::NoPidFile(pid_file))?;
        Ok(Sshd {
            port,
            dir,
            host_key_pub,
            client_key,
            known_hosts,
            pid,
        })
    }

    /// Describe the sshd previously started in `dir`, without starting anything. It may have
    /// died since; check [`Sshd::is_running`].
    pub fn adopt(dir: &Path) -> Result<Sshd, SshdError> {
        let dir = dir.canonicalize().map_err(io_err(dir))?;
        let port = read_trimmed(&dir.join(PORT_FILE))
            .ok()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| SshdError::NotSetUp(dir.clone()))?;
        let pid = proc::read_pid_file(&dir.join(PID_FILE))
            .ok_or_else(|| SshdError::NotSetUp(dir.clone()))?;
        let host_key_pub = read_trimmed(&public_half(&dir.join(HOST_KEY)))?;
        Ok(Sshd {
            port,
            client_key: dir.join(CLIENT_KEY),
            known_hosts: dir.join(KNOWN_HOSTS),
            host_key_pub,
            dir,
            pid,
        })
    }

    /// Adopt a running sshd in `dir` on `port`, or start one. The flag is true when it started one.
    pub fn ensure(dir: &Path, port: u16) -> Result<(Sshd, bool), SshdError> {
        match Sshd::adopt(dir) {
            Ok(sshd) if sshd.port == port && sshd.is_running() => Ok((sshd, false)),
            Ok(stale) => {
                stale.stop();
                Ok((Sshd::start(dir, port)?, true))
            }
            Err(_) => Ok((Sshd::start(dir, port)?, true)),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the recorded PID is alive, is an sshd, and our port accepts connections.
    pub fn is_running(&self) -> bool {
        let is_sshd = std::fs::read_to_string(format!("/proc/{}/cmdline", self.pid))
            .map(|cmdline| cmdline.contains("sshd"))
            .unwrap_or(false);
        is_sshd && proc::pid_alive(self.pid) && proc::port_open(self.port)
    }

    /// Stop the listener and every process it forked (per-connection sshd processes and
    /// the commands of sessions still open), all by PID.
    pub fn stop(&self) {
        if !self.is_sshd_pid() {
            return;
        }
        let descendants = descendant_pids(self.pid);
        let mut pids = vec![self.pid];
        pids.extend(descendants);
        terminate(
            &pids,
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_secs(5),
        );
    }

    /// Kill the per-connection sshd processes and their commands, but not the listener:
    /// every client connection drops, as when a network path dies. Returns how many
    /// processes were killed.
    pub fn drop_connections(&self) -> usize {
        let descendants = descendant_pids(self.pid);
        terminate(
            &descendants,
            nix::sys::signal::Signal::SIGKILL,
            Duration::from_secs(2),
        );
        descendants.len()
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Guards against signalling a recycled PID that now belongs to something else.
    fn is_sshd_pid(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/cmdline", self.pid))
            .map(|cmdline| cmdline.contains("sshd"))
            .unwrap_or(false)
    }
}

/// `ssh-ed25519 AAAA...` from `ssh-ed25519 AAAA... comment`.
fn key_without_comment(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn ensure_privsep_dir() -> Result<(), SshdError> {
    let dir = Path::new(PRIVSEP_DIR);
    if dir.is_dir() || !proc::running_as_root() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io_err(dir))
}

fn wait_for_pid_file(path: &Path) -> Option<i32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = proc::read_pid_file(path) {
            return Some(pid);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Send `signal` to every PID, wait up to `timeout` for all to exit, then SIGKILL the rest.
/// A zombie counts as exited: daemonized servers are reparented to PID 1, which may never
/// reap them (it does not in this project's VMs), so `kill(pid, 0)` alone would wait forever.
fn terminate(pids: &[i32], signal: nix::sys::signal::Signal, timeout: Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), signal);
    }
    let deadline = std::time::Instant::now() + timeout;
    while pids.iter().any(|&pid| !exited(pid)) {
        if std::time::Instant::now() >= deadline {
            for &pid in pids.iter().filter(|&&pid| !exited(pid)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Gone, or a zombie waiting for a parent that may never reap it.
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// PIDs descending from `ancestor` (children first, then their children), from /proc.
fn descendant_pids(ancestor: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parent_by_pid: Vec<(i32, i32)> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parent_of(&stat)?))
        })
        .collect();
    let mut found = vec![ancestor];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parent_by_pid
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        next += 1;
    }
    found.remove(0);
    found
}

/// Parent PID from a /proc/PID/stat line; the command name (field 2) may contain spaces
/// and parentheses, so parse after its last `)`.
fn parent_of(stat: &str) -> Option<i32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_survives_odd_command_names() {
        assert_eq!(parent_of("42 (sshd: a) b) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn public_half_appends_pub() {
        assert_eq!(
            public_half(Path::new("/x/id_ed25519")),
            PathBuf::from("/x/id_ed25519.pub")
        );
    }
}
