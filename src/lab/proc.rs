//! Process helpers for the lab: run server processes as the unprivileged service user, find
//! free ports, and stop only the processes the lab started, by PID.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// OS user that runs PostgreSQL, pgbouncer and sshd when `cutover` itself runs as root
/// (`initdb`, `postgres` and `pgbouncer` refuse to run as root).
pub const SERVICE_USER: &str = "postgres";

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} exited with {status}: {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("OS user `{0}` not found; install PostgreSQL (`scripts/bootstrap`)")]
    NoServiceUser(String),
    #[error("chown {path}: {source}")]
    Chown {
        path: String,
        source: std::io::Error,
    },
}

pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Build a command that runs `program` as [`SERVICE_USER`] when we are root, or as ourselves.
pub fn service_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.arg("-u").arg(SERVICE_USER).arg("--").arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Same as [`service_command`] for tokio's process API.
pub fn service_command_async(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    tokio::process::Command::from(service_command(program))
}

/// Run to completion; error with stderr when the exit status is not success.
pub fn run_checked(cmd: &mut Command) -> Result<String, ProcError> {
    let program = format!("{:?}", cmd.get_program());
    let out = cmd.output().map_err(|source| ProcError::Spawn {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ProcError::Failed {
            program,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Give `path` (recursively) to the service user when running as root.
pub fn chown_to_service_user(path: &Path) -> Result<(), ProcError> {
    if !running_as_root() {
        return Ok(());
    }
    let user = nix::unistd::User::from_name(SERVICE_USER)
        .ok()
        .flatten()
        .ok_or_else(|| ProcError::NoServiceUser(SERVICE_USER.to_string()))?;
    chown_recursive(path, user.uid, user.gid).map_err(|source| ProcError::Chown {
        path: path.display().to_string(),
        source,
    })
}

fn chown_recursive(
    path: &Path,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
) -> std::io::Result<()> {
    nix::unistd::chown(path, Some(uid), Some(gid)).map_err(std::io::Error::from)?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Wait until `port` accepts connections or `timeout` passes.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if port_open(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Whether a process with this PID exists and has not exited. A zombie counts as exited:
/// on machines whose PID 1 does not reap orphans, stopped daemons linger as zombies.
pub fn pid_alive(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| state != 'Z'),
        Err(_) => false,
    }
}

/// Send `signal` to `pid`, then wait up to `timeout` for it to exit; SIGKILL after that.
pub fn stop_pid(pid: i32, signal: nix::sys::signal::Signal, timeout: Duration) {
    let target = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::kill(target, signal).is_err() {
        return;
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
}

/// Read a PID file (first line), as written by postgres, pgbouncer and sshd.
pub fn read_pid_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}
