//! Operator identity: who runs this process, from the system (uid, its user name, the SSH
//! connection the jump host saw, the terminal), never from a typed name. Read once at the edge
//! (CLI, cockpit) and carried into the journal with every confirmation and approval.

use serde::{Deserialize, Serialize};

/// The person behind a process. Two identities are the same person exactly when their `uid`s
/// are equal: the user name and the `--operator` display name are for people to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    /// The user name the system gives `uid` (`uid N` when it has none).
    pub user: String,
    /// `--operator`, shown next to the user name when it differs from it.
    pub display: Option<String>,
    /// Where the process was started from: tty, SSH connection, sudo (see [`Terminal`]).
    pub terminal: Terminal,
}

/// The terminal a process runs on, as far as the system tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminal {
    /// `/dev/pts/N` of standard input, when it is a terminal.
    pub tty: Option<String>,
    /// `SSH_CONNECTION` (client address and port, server address and port), else `SSH_CLIENT`.
    pub ssh: Option<String>,
    /// `SUDO_USER`: the login user who became this one through sudo.
    pub sudo_from: Option<String>,
}

impl Terminal {
    /// `tty /dev/pts/3, ssh 10.0.0.5 51234 → 10.0.0.1 22`, or `local, no tty`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(tty) = &self.tty {
            parts.push(format!("tty {tty}"));
        }
        if let Some(ssh) = &self.ssh {
            parts.push(format!("ssh {ssh}"));
        }
        if let Some(login) = &self.sudo_from {
            parts.push(format!("sudo from {login}"));
        }
        if parts.is_empty() {
            "local, no tty".to_string()
        } else {
            parts.join(", ")
        }
    }
}

impl Identity {
    /// The identity of this process; `display` is `--operator`.
    pub fn current(display: Option<&str>) -> Identity {
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| format!("uid {uid}"));
        Identity::new(uid.as_raw(), user, display, Terminal::current())
    }

    /// An identity from its parts; a display name equal to the user name (or blank) is dropped.
    pub fn new(uid: u32, user: String, display: Option<&str>, terminal: Terminal) -> Identity {
        let display = display
            .map(str::trim)
            .filter(|d| !d.is_empty() && *d != user)
            .map(str::to_string);
        Identity {
            uid,
            user,
            display,
            terminal,
        }
    }

    /// How the journal names this person: `alice (uid 1001)`, or `alice (uid 1001) "Alice B"`.
    pub fn label(&self) -> String {
        match &self.display {
            Some(display) => format!("{} (uid {}) {display:?}", self.user, self.uid),
            None => format!("{} (uid {})", self.user, self.uid),
        }
    }

    /// Whether `other` is another person, by uid.
    pub fn is_other_than(&self, other_uid: u32) -> bool {
        self.uid != other_uid
    }
}

impl Terminal {
    /// This process's terminal: standard input's tty and the SSH environment.
    pub fn current() -> Terminal {
        let tty = std::fs::read_link("/proc/self/fd/0")
            .ok()
            .map(|p| p.display().to_string())
            .filter(|p| p.starts_with("/dev/pts/") || p.starts_with("/dev/tty"));
        let ssh = ["SSH_CONNECTION", "SSH_CLIENT"]
            .iter()
            .find_map(|name| std::env::var(name).ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| ssh_text(&v));
        let sudo_from = std::env::var("SUDO_USER")
            .ok()
            .filter(|v| !v.trim().is_empty());
        Terminal {
            tty,
            ssh,
            sudo_from,
        }
    }
}

/// `SSH_CONNECTION`'s four fields as `client port → server port`; any other shape verbatim.
fn ssh_text(value: &str) -> String {
    let fields: Vec<&str> = value.split_whitespace().collect();
    match fields.as_slice() {
        [client, client_port, server, server_port] => {
            format!("{client} {client_port} → {server} {server_port}")
        }
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_display_name_equal_to_the_user_is_not_repeated() {
        let id = Identity::new(1001, "alice".into(), Some("alice"), Terminal::default());
        assert_eq!(id.label(), "alice (uid 1001)");
        let id = Identity::new(1001, "alice".into(), Some("Alice B"), Terminal::default());
        assert_eq!(id.label(), "alice (uid 1001) \"Alice B\"");
    }

    #[test]
    fn the_ssh_connection_reads_as_client_to_server() {
        assert_eq!(
            ssh_text("10.0.0.5 51234 10.0.0.1 22"),
            "10.0.0.5 51234 → 10.0.0.1 22"
        );
        let terminal = Terminal {
            tty: Some("/dev/pts/3".into()),
            ssh: Some(ssh_text("10.0.0.5 51234 10.0.0.1 22")),
            sudo_from: Some("alice".into()),
        };
        assert_eq!(
            terminal.describe(),
            "tty /dev/pts/3, ssh 10.0.0.5 51234 → 10.0.0.1 22, sudo from alice"
        );
        assert_eq!(Terminal::default().describe(), "local, no tty");
    }

    #[test]
    fn the_current_process_has_its_own_uid() {
        let id = Identity::current(None);
        assert_eq!(id.uid, nix::unistd::getuid().as_raw());
        assert!(!id.user.is_empty());
    }
}
