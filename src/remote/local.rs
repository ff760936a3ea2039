//! Local host commands: `sh -c` on the jump host itself, with the same streaming, exit-status
//! and timeout contract as the SSH runner.

use super::output::Collector;
use super::{CommandOutput, OutputLine, RemoteError, Stdin};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(super) async fn run(
    host: &str,
    command: &str,
    stdin: Stdin<'_>,
    timeout: Duration,
    on_line: &mut (dyn FnMut(OutputLine) + Send),
) -> Result<CommandOutput, RemoteError> {
    let started = Instant::now();
    let io_error = |source| RemoteError::Io {
        host: host.to_string(),
        command: command.to_string(),
        source,
    };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(match stdin {
            Stdin::Empty => Stdio::null(),
            Stdin::Bytes(_) => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so a timeout kills the command's children too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(io_error)?;
    let process_group = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));

    let stdin_pipe = child.stdin.take();
    let feed = async move {
        if let (Stdin::Bytes(bytes), Some(mut pipe)) = (stdin, stdin_pipe) {
            // A command that exits without reading stdin closes the pipe; that is its choice.
            let _ = pipe.write_all(bytes).await;
        }
    };
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io_error(std::io::Error::other(
            "stdout/stderr pipe missing",
        )));
    };

    let mut collector = Collector::default();
    let drain = async {
        let (mut out_buf, mut err_buf) = ([0u8; 8192], [0u8; 8192]);
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                read = stdout.read(&mut out_buf), if out_open => match read {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => collector.stdout(&out_buf[..n], on_line),
                },
                read = stderr.read(&mut err_buf), if err_open => match read {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => collector.stderr(&err_buf[..n], on_line),
                },
            }
        }
    };
    let work = async {
        let feed_and_drain = async { tokio::join!(feed, drain) };
        tokio::pin!(feed_and_drain);
        let exited_first = tokio::select! {
            _ = &mut feed_and_drain => None,
            status = child.wait() => Some(status),
        };
        match exited_first {
            None => child.wait().await,
            Some(status) => {
                // A background process (e.g. a server started without a log file) may hold the
                // pipes open forever; take what is already buffered and stop there.
                let _ = tokio::time::timeout(super::OUTPUT_GRACE, &mut feed_and_drain).await;
                status
            }
        }
    };
    let waited = tokio::time::timeout(timeout, work).await;
    match waited {
        Ok(Ok(status)) => {
            let exit_status = match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(code), _) => code as u32,
                (None, Some(signal)) => 128 + signal as u32,
                (None, None) => u32::MAX,
            };
            Ok(collector.finish(exit_status, started.elapsed(), on_line))
        }
        Ok(Err(source)) => Err(io_error(source)),
        Err(_elapsed) => {
            if let Some(group) = process_group {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(RemoteError::Timeout {
                host: host.to_string(),
                command: command.to_string(),
                after: timeout,
            })
        }
    }
}
