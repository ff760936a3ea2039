//! Why a step's action, undo or forced resume failed: the executor's typed error, journaled as
//! its text (which names the kind) and carried by `RunError` to the CLI and the cockpit.

use crate::pg::PgError;
use crate::remote::RemoteError;

/// A failed effect, by what the operator has to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// A server or host could not be reached: a PostgreSQL or pgbouncer connect, or ssh.
    #[error("host unreachable: {reason}")]
    Unreachable { node: String, reason: String },
    /// The state found on re-check is not one this step can act from.
    #[error("precondition not held: {detail}")]
    Precondition { detail: String },
    /// A gate or proof (LSN gate, checksums, validation) did not hold; nothing was done past it.
    #[error("gate refused: {detail}")]
    GateRefused { detail: String },
    /// A SQL statement or a host command ran and failed.
    #[error("command failed: {reason}")]
    Command { target: String, reason: String },
    /// The run's own files (run dir, memory, backups, inventory) could not be read or written.
    #[error("run files: {0}")]
    Setup(String),
    #[error("{0}")]
    Failed(String),
}

/// What kind of failure a [`StepError`] is, for matching without its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepErrorKind {
    Unreachable,
    Precondition,
    GateRefused,
    Command,
    Setup,
    Failed,
}

impl StepError {
    pub fn kind(&self) -> StepErrorKind {
        match self {
            StepError::Unreachable { .. } => StepErrorKind::Unreachable,
            StepError::Precondition { .. } => StepErrorKind::Precondition,
            StepError::GateRefused { .. } => StepErrorKind::GateRefused,
            StepError::Command { .. } => StepErrorKind::Command,
            StepError::Setup(_) => StepErrorKind::Setup,
            StepError::Failed(_) => StepErrorKind::Failed,
        }
    }

    pub fn precondition(detail: impl Into<String>) -> Self {
        StepError::Precondition {
            detail: detail.into(),
        }
    }

    pub fn gate(detail: impl Into<String>) -> Self {
        StepError::GateRefused {
            detail: detail.into(),
        }
    }

    /// Whether the message, kind included, mentions `text`.
    pub fn contains(&self, text: &str) -> bool {
        self.to_string().contains(text)
    }

    /// The message without the kind's prefix.
    pub fn detail(&self) -> &str {
        match self {
            StepError::Unreachable { reason, .. } | StepError::Command { reason, .. } => reason,
            StepError::Precondition { detail } | StepError::GateRefused { detail } => detail,
            StepError::Setup(text) | StepError::Failed(text) => text,
        }
    }
}

impl From<String> for StepError {
    fn from(text: String) -> Self {
        StepError::Failed(text)
    }
}

impl From<&str> for StepError {
    fn from(text: &str) -> Self {
        StepError::Failed(text.to_string())
    }
}

impl From<PgError> for StepError {
    fn from(error: PgError) -> Self {
        let reason = error.to_string();
        match error {
            PgError::Connect { target, .. }
            | PgError::ConnectTimeout { target, .. }
            | PgError::Tls { target, .. } => StepError::Unreachable {
                node: target,
                reason,
            },
            PgError::Query { target, .. }
            | PgError::QueryTimeout { target, .. }
            | PgError::Unexpected { target, .. } => StepError::Command { target, reason },
        }
    }
}

impl From<RemoteError> for StepError {
    fn from(error: RemoteError) -> Self {
        let reason = error.to_string();
        match error {
            RemoteError::UnknownHost { host }
            | RemoteError::NoTransport { host }
            | RemoteError::HostKeyUnknown { host, .. }
            | RemoteError::HostKeyChanged { host, .. }
            | RemoteError::HostKeyRevoked { host, .. }
            | RemoteError::KnownHosts { host, .. }
            | RemoteError::Auth { host, .. }
            | RemoteError::Connect { host, .. } => StepError::Unreachable { node: host, reason },
            RemoteError::Timeout { host, .. }
            | RemoteError::Channel { host, .. }
            | RemoteError::Io { host, .. }
            | RemoteError::Failed { host, .. } => StepError::Command {
                target: host,
                reason,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unreachable() {
        let error = StepError::from(PgError::ConnectTimeout {
            target: "pg2/postgres".into(),
            timeout: std::time::Duration::from_secs(2),
        });
        assert_eq!(error.kind(), StepErrorKind::Unreachable);
        assert!(error
            .to_string()
            .starts_with("host unreachable: pg2/postgres"));
        let error = StepError::from(RemoteError::Connect {
            host: "db2".into(),
            address: "10.0.0.2".into(),
            port: 22,
            reason: "refused".into(),
        });
        assert_eq!(error.kind(), StepErrorKind::Unreachable);
        let error = StepError::from(RemoteError::Failed {
            host: "db2".into(),
            command: "false".into(),
            exit_status: 1,
            stderr_tail: String::new(),
        });
        assert_eq!(error.kind(), StepErrorKind::Command);
    }

    #[test]
    fn plain_text_keeps_its_wording() {
        let error = StepError::from(format!("still paused: {}", "p1"));
        assert_eq!(error.to_string(), "still paused: p1");
        assert_eq!(
            StepError::gate("behind").to_string(),
            "gate refused: behind"
        );
    }
}
