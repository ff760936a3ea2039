//! PostgreSQL connections for pollers and the executor: tokio-postgres with a statement timeout,
//! passwords from `PGPASSWORD`/`~/.pgpass`, and the pgbouncer admin console (simple protocol only).

use crate::inventory::{Node, Pgbouncer, Tls};
use crate::tls::{self, Connector, TlsEnv};
use std::path::PathBuf;
use std::time::Duration;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage, Socket};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{target}: cannot connect: {}", error_chain(source))]
    Connect {
        target: String,
        source: tokio_postgres::Error,
    },
    /// TLS settings that cannot be used, or a server whose TLS was refused (a certificate that
    /// does not verify, a server without TLS under `require`): never downgraded.
    #[error("{target}: refused under sslmode {sslmode}: {detail}")]
    Tls {
        target: String,
        sslmode: &'static str,
        detail: String,
    },
    #[error("{target}: connect timed out after {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("{target}: {}", error_chain(source))]
    Query {
        target: String,
        source: tokio_postgres::Error,
    },
    #[error("{target}: query timed out after {timeout:?}")]
    QueryTimeout { target: String, timeout: Duration },
    #[error("{target}: unexpected result: {detail}")]
    Unexpected { target: String, detail: String },
}

/// An error with its causes (`db error: ERROR: relation "x" does not exist`): tokio-postgres
/// keeps the server's message in the source, so Display alone would hide it.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Where to connect; never holds a password (that is looked up at connect time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    /// The inventory's TLS settings for this server; unset fields come from `PGSSL*` and defaults.
    pub tls: Tls,
}

impl Endpoint {
    pub fn node(node: &Node, dbname: &str) -> Self {
        Endpoint {
            address: node.address.clone(),
            port: node.port,
            user: node.user.clone(),
            dbname: dbname.to_string(),
            tls: node.tls.clone().unwrap_or_default(),
        }
    }
    pub fn maintenance(node: &Node) -> Self {
        Self::node(node, &node.maintenance_db)
    }
    pub fn pgbouncer_admin(bouncer: &Pgbouncer) -> Self {
        Endpoint {
            address: bouncer.admin.address.clone(),
            port: bouncer.admin.port,
            user: bouncer.admin.user.clone(),
            dbname: "pgbouncer".to_string(),
            tls: bouncer.admin.tls.clone().unwrap_or_default(),
        }
    }
    /// A pgbouncer alias as the application sees it (transaction pooled: simple or typed queries only).
    pub fn pgbouncer_alias(bouncer: &Pgbouncer, alias: &str, user: &str) -> Self {
        Endpoint {
            address: bouncer.admin.address.clone(),
            port: bouncer.admin.port,
            user: user.to_string(),
            dbname: alias.to_string(),
            tls: bouncer.admin.tls.clone().unwrap_or_default(),
        }
    }
    /// `user@address:port/dbname`: safe to log.
    pub fn label(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user, self.address, self.port, self.dbname
        )
    }
}

/// How a session is set up.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub connect_timeout: Duration,
    /// Sent as `statement_timeout` in the startup packet; `None` for pgbouncer
    /// (its admin console and pooled aliases reject unknown startup options).
    pub statement_timeout: Option<Duration>,
    /// `application_name`, always `cutover/<reading or purpose>`: how a DBA (and the
    /// connections reading) tells the tool's sessions from the application's.
    pub application_name: &'static str,
}

impl SessionSettings {
    /// Monitoring queries: short statement timeout so a stuck server never stalls a poller.
    pub const MONITOR: SessionSettings = SessionSettings {
        connect_timeout: Duration::from_secs(3),
        statement_timeout: Some(Duration::from_secs(5)),
        application_name: "cutover/reading",
    };
    /// Executor statements (DDL, batches): longer, still bounded.
    pub const EXECUTOR: SessionSettings = SessionSettings {
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Some(Duration::from_secs(300)),
        application_name: "cutover/run",
    };
    /// pgbouncer admin console and pooled aliases.
    pub const PGBOUNCER: SessionSettings = SessionSettings {
        connect_timeout: Duration::from_secs(3),
        statement_timeout: None,
        application_name: "cutover/pgbouncer",
    };

    /// The same settings under another `application_name` (which must start with `cutover/`).
    pub const fn named(self, application_name: &'static str) -> SessionSettings {
        SessionSettings {
            application_name,
            ..self
        }
    }
}

/// The prefix of every `application_name` the tool sets.
pub const APPLICATION_NAME: &str = "cutover";

tokio::task_local! {
    /// The step whose action is running on this task: connections it opens are named after it.
    static STEP: String;
}

/// Runs `future` as `step`'s work: every connection it opens is `cutover/<step>` rather than
/// its settings' name. A cached connection keeps the name of the step that opened it.
pub async fn in_step<F: std::future::Future>(step: &str, future: F) -> F::Output {
    STEP.scope(step.to_string(), future).await
}

/// The `application_name` a connection opened here and now gets.
fn application_name(settings: &SessionSettings) -> String {
    STEP.try_with(|step| format!("{APPLICATION_NAME}/{step}"))
        .unwrap_or_else(|_| settings.application_name.to_string())
}

/// Whether a session's `application_name` is one of the tool's own.
pub fn is_tool_session(application_name: &str) -> bool {
    application_name == APPLICATION_NAME
        || application_name
            .strip_prefix(APPLICATION_NAME)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Open a connection and drive it on a background task. The task ends when the client drops.
/// TLS follows the endpoint's settings (see [`crate::tls`]); a refused certificate or a
/// server without TLS under a mode that needs it fails here, never downgraded.
pub async fn connect(endpoint: &Endpoint, settings: SessionSettings) -> Result<Client, PgError> {
    let target = endpoint.label();
    let resolved = tls::resolve(&endpoint.tls, &endpoint.address, &TlsEnv::from_process())
        .map_err(|detail| PgError::Tls {
            target: target.clone(),
            sslmode: "(unset)",
            detail,
        })?;
    let sslmode = resolved.mode.as_str();
    let mut config = Config::new();
    config
        .host(&endpoint.address)
        .port(endpoint.port)
        .user(&endpoint.user)
        .dbname(&endpoint.dbname)
        .application_name(application_name(&settings))
        .connect_timeout(settings.connect_timeout);
    if let Some(timeout) = settings.statement_timeout {
        config.options(format!("-c statement_timeout={}", timeout.as_millis()));
    }
    if let Some(password) = password_for(endpoint) {
        config.password(password);
    }
    let connector = tls::connector(&resolved).map_err(|detail| PgError::Tls {
        target: target.clone(),
        sslmode,
        detail,
    })?;
    match connector {
        Connector::Plain => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            open(&config, NoTls, target, sslmode, settings.connect_timeout).await
        }
        Connector::Tls { mode, connect } => {
            config.ssl_mode(mode);
            open(&config, connect, target, sslmode, settings.connect_timeout).await
        }
    }
}

async fn open<T>(
    config: &Config,
    tls: T,
    target: String,
    sslmode: &'static str,
    timeout: Duration,
) -> Result<Client, PgError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = tokio::time::timeout(timeout, config.connect(tls))
        .await
        .map_err(|_| PgError::ConnectTimeout {
            target: target.clone(),
            timeout,
        })?
        .map_err(|source| {
            let chain = error_chain(&source);
            if is_tls_failure(&chain) {
                PgError::Tls {
                    target: target.clone(),
                    sslmode,
                    detail: chain,
                }
            } else {
                PgError::Connect {
                    target: target.clone(),
                    source,
                }
            }
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(target: "cutover::pg", %target, %error, "connection closed");
        }
    });
    Ok(client)
}

/// Whether a connect error is the TLS handshake's (certificate, protocol, server without TLS).
fn is_tls_failure(chain: &str) -> bool {
    let lower = chain.to_ascii_lowercase();
    ["tls", "certificate", "handshake"]
        .iter()
        .any(|word| lower.contains(word))
}

/// Run a simple-protocol query and return its rows as column-name → text maps.
/// Works on the pgbouncer admin console and through transaction-pooled aliases.
pub async fn simple_rows(
    client: &Client,
    target: &str,
    sql: &str,
) -> Result<Vec<std::collections::BTreeMap<String, Option<String>>>, PgError> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|source| PgError::Query {
            target: target.to_string(),
            source,
        })?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), row.get(i).map(str::to_string)))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// Run a simple-protocol command (no rows expected), e.g. `PAUSE "alias"` on the admin console.
pub async fn simple_execute(client: &Client, target: &str, sql: &str) -> Result<(), PgError> {
    tracing::info!(target: "cutover::cmd", %target, sql, "simple query");
    client
        .simple_query(sql)
        .await
        .map(|_| ())
        .map_err(|source| PgError::Query {
            target: target.to_string(),
            source,
        })
}

/// Password for an endpoint: `PGPASSWORD`, else the first matching `~/.pgpass` (or `PGPASSFILE`) line.
/// The password is returned to the caller only to put into the connection config; never log it.
pub fn password_for(endpoint: &Endpoint) -> Option<String> {
    if let Ok(password) = std::env::var("PGPASSWORD") {
        return Some(password);
    }
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    pgpass_lookup(&text, endpoint)
}

/// Match `hostname:port:database:username:password` lines (`*` wildcards, `\:` escapes).
pub fn pgpass_lookup(text: &str, endpoint: &Endpoint) -> Option<String> {
    let wanted = [
        endpoint.address.clone(),
        endpoint.port.to_string(),
        endpoint.dbname.clone(),
        endpoint.user.clone(),
    ];
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .find_map(|line| {
            let fields = split_pgpass_line(line);
            if fields.len() != 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(wanted.iter())
                .all(|(field, want)| field == "*" || field == want);
            matches.then(|| fields[4].clone())
        })
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    if let Some(last) = fields.last_mut() {
                        last.push(next);
                    }
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            _ => {
                if let Some(last) = fields.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    fields
}

/// A libpq `key=value` connection-string value: bare when it is plain (letters, digits and
/// `._-/:@+,`), otherwise single-quoted with `\` and `'` backslash-escaped. Whatever the
/// value holds, it stays one value: it cannot end early or add a keyword.
pub fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@+,".contains(&b));
    if plain {
        return value.to_string();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// A libpq connection string from `(keyword, value)` pairs, each value through
/// [`conninfo_value`]. Keywords are the caller's constants, never data.
pub fn conninfo(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={}", conninfo_value(value)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `(keyword, value)` pairs of a libpq `key=value` connection string, values unescaped;
/// `None` when it is malformed (a word without `=`, an unterminated quote).
pub fn parse_conninfo(text: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        chars.next_if_eq(&'=')?;
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next()? {
                    '\'' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next()?);
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return None;
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_values_stay_one_value() {
        assert_eq!(
            conninfo(&[
                ("dbname", "commcarehq_p1"),
                ("host", "10.0.0.5"),
                ("port", "6432")
            ]),
            "dbname=commcarehq_p1 host=10.0.0.5 port=6432"
        );
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conninfo_value("my db"), "'my db'");
        assert_eq!(conninfo_value(r"it's"), r"'it\'s'");
        assert_eq!(conninfo_value(r"a\b"), r"'a\\b'");
        assert_eq!(
            conninfo(&[("dbname", "x host=evil"), ("port", "1")]),
            "dbname='x host=evil' port=1"
        );
        for value in [
            "plain",
            "",
            "two words",
            r"q'uo\te",
            "x' host='evil",
            "tab\there",
            "ünï",
        ] {
            let text = conninfo(&[("dbname", value), ("host", "h")]);
            assert_eq!(
                parse_conninfo(&text),
                Some(vec![
                    ("dbname".to_string(), value.to_string()),
                    ("host".to_string(), "h".to_string())
                ]),
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_conninfo_is_refused() {
        assert_eq!(parse_conninfo("dbname"), None);
        assert_eq!(parse_conninfo("dbname='open"), None);
        assert_eq!(parse_conninfo("=x"), None);
        assert_eq!(
            parse_conninfo(" host = h  port=1 "),
            Some(vec![
                ("host".to_string(), "h".to_string()),
                ("port".to_string(), "1".to_string())
            ])
        );
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            address: "10.0.0.5".into(),
            port: 5432,
            user: "commcarehq".into(),
            dbname: "commcarehq_p1".into(),
            tls: Tls::default(),
        }
    }

    #[test]
    fn pgpass_matches_first_line_with_wildcards_and_escapes() {
        let text = "# comment\n10.0.0.5:5432:other:commcarehq:nope\n*:5432:*:commcarehq:s\\:ecret\n*:*:*:*:fallback\n";
        assert_eq!(pgpass_lookup(text, &endpoint()).as_deref(), Some("s:ecret"));
    }

    #[test]
    fn pgpass_without_match_gives_none() {
        assert_eq!(pgpass_lookup("h:1:d:u:p\n", &endpoint()), None);
    }
}
