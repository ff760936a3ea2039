//! The logical slot with an exported snapshot: a replication connection
//! (`replication=database`, which tokio-postgres does not offer) that runs
//! `CREATE_REPLICATION_SLOT ... LOGICAL <plugin> (SNAPSHOT 'export')` and then stays idle, so
//! the snapshot lives while the initial copy reads under it. The effects of the initial-copy
//! step hold one [`ExportedSlot`] and drop it when the copy is done.

use crate::pg::{self, Endpoint};
use crate::sql::quote_ident;
use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

/// The replication session's byte stream: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Creating a slot waits for running transactions to end: a long one delays it this long at most.
const CREATE_TIMEOUT: Duration = Duration::from_secs(600);

/// Why the slot could not be made. Never carries a password.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{target}: {detail}")]
    Protocol { target: String, detail: String },
    #[error("{target}: the server said: {message}")]
    Server { target: String, message: String },
}

/// A logical slot just made, and the connection that keeps its exported snapshot valid.
pub struct ExportedSlot {
    stream: Box<dyn Io>,
    pub slot: String,
    /// The LSN the slot's stream starts at: every transaction committed before it is in the snapshot.
    pub consistent_point: String,
    /// The snapshot name for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
}

impl ExportedSlot {
    /// End the replication session: the exported snapshot stops being importable.
    pub async fn release(mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.stream.write_all(&buf).await;
        let _ = self.stream.shutdown().await;
    }
}

/// One backend message: its type byte and body.
struct Message {
    kind: u8,
    body: BytesMut,
}

struct Session {
    stream: Box<dyn Io>,
    read: BytesMut,
    target: String,
}

impl Session {
    fn protocol(&self, detail: impl Into<String>) -> SlotError {
        SlotError::Protocol {
            target: self.target.clone(),
            detail: detail.into(),
        }
    }

    async fn send(&mut self, buf: &[u8]) -> Result<(), SlotError> {
        self.stream
            .write_all(buf)
            .await
            .map_err(|e| self.protocol(format!("write: {e}")))
    }

    async fn next(&mut self) -> Result<Message, SlotError> {
        loop {
            if self.read.len() >= 5 {
                let len =
                    i32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]);
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l >= 4)
                    .ok_or_else(|| self.protocol("bad message length"))?;
                if self.read.len() > len {
                    let kind = self.read[0];
                    self.read.advance(5);
                    let body = self.read.split_to(len - 4);
                    if kind == b'E' {
                        return Err(SlotError::Server {
                            target: self.target.clone(),
                            message: error_text(&body),
                        });
                    }
                    return Ok(Message { kind, body });
                }
            }
            let n = self
                .stream
                .read_buf(&mut self.read)
                .await
                .map_err(|e| self.protocol(format!("read: {e}")))?;
            if n == 0 {
                return Err(self.protocol("the server closed the connection"));
            }
        }
    }
}

/// `S`everity, `C`ode and `M`essage of an ErrorResponse body.
fn error_text(body: &[u8]) -> String {
    let mut fields = std::collections::BTreeMap::new();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        fields.insert(kind, String::from_utf8_lossy(&tail[..end]).into_owned());
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    let get = |k: u8| fields.get(&k).cloned().unwrap_or_default();
    format!("{} {}: {}", get(b'S'), get(b'C'), get(b'M'))
}

/// The text columns of a DataRow body.
fn data_row(mut body: &[u8]) -> Vec<Option<String>> {
    if body.len() < 2 {
        return Vec::new();
    }
    let n = body.get_u16();
    let mut columns = Vec::new();
    for _ in 0..n {
        if body.len() < 4 {
            break;
        }
        let len = body.get_i32();
        match usize::try_from(len) {
            Ok(len) if body.len() >= len => {
                columns.push(Some(String::from_utf8_lossy(&body[..len]).into_owned()));
                body.advance(len);
            }
            _ => columns.push(None),
        }
    }
    columns
}

/// The replication command that makes `slot` with `plugin` and exports its snapshot, in the
/// syntax of a server of major `version` (the option list from 15 on).
pub fn create_slot_command(slot: &str, plugin: &str, version: u32) -> String {
    if version >= 15 {
        format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL {} (SNAPSHOT 'export')",
            quote_ident(slot),
            quote_ident(plugin)
        )
    } else {
        format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL {} EXPORT_SNAPSHOT",
            quote_ident(slot),
            quote_ident(plugin)
        )
    }
}

/// Open a replication connection to `endpoint` and make `slot`; the returned value keeps the
/// session (and so the snapshot) open. TLS as the node's settings say, through the same
/// connector as every other connection.
pub async fn create_exported(
    endpoint: &Endpoint,
    slot: &str,
    plugin: &str,
    version: u32,
) -> Result<ExportedSlot, SlotError> {
    let target = endpoint.label();
    let protocol = |detail: String| SlotError::Protocol {
        target: target.clone(),
        detail,
    };
    let resolved = crate::tls::resolve(
        &endpoint.tls,
        &endpoint.address,
        &crate::tls::TlsEnv::from_process(),
    )
    .map_err(&protocol)?;
    let mut tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((endpoint.address.as_str(), endpoint.port)),
    )
    .await
    .map_err(|_| protocol(format!("connect timed out after {CONNECT_TIMEOUT:?}")))?
    .map_err(|e| protocol(format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = match crate::tls::connector(&resolved).map_err(&protocol)? {
        crate::tls::Connector::Plain => Box::new(tcp),
        crate::tls::Connector::Tls { mut connect, .. } => {
            // SSLRequest: length 8, code 80877103; the server answers one byte.
            tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
                .await
                .map_err(|e| protocol(format!("write: {e}")))?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer)
                .await
                .map_err(|e| protocol(format!("read: {e}")))?;
            match answer[0] {
                b'S' => {
                    let tls = MakeTlsConnect::<TcpStream>::make_tls_connect(
                        &mut connect,
                        &endpoint.address,
                    )
                    .map_err(|e| protocol(format!("TLS: {e}")))?;
                    let stream = tls
                        .connect(tcp)
                        .await
                        .map_err(|e| protocol(format!("TLS handshake: {e}")))?;
                    Box::new(stream)
                }
                _ if resolved.mode == crate::inventory::SslMode::Prefer => {
                    // The server refused TLS: reconnect in the clear, as libpq's prefer does.
                    let tcp = TcpStream::connect((endpoint.address.as_str(), endpoint.port))
                        .await
                        .map_err(|e| protocol(format!("connect: {e}")))?;
                    Box::new(tcp)
                }
                _ => {
                    return Err(protocol(format!(
                        "the server does not offer TLS and sslmode is {}",
                        resolved.mode.as_str()
                    )))
                }
            }
        }
    };
    let mut session = Session {
        stream,
        read: BytesMut::with_capacity(8192),
        target: target.clone(),
    };
    let mut buf = BytesMut::new();
    frontend::startup_message(
        [
            ("user", endpoint.user.as_str()),
            ("database", endpoint.dbname.as_str()),
            ("replication", "database"),
            ("application_name", "cutover/logical-move"),
        ],
        &mut buf,
    )
    .map_err(|e| protocol(e.to_string()))?;
    session.send(&buf).await?;
    authenticate(&mut session, endpoint).await?;
    // Parameter status and key data until the server is ready.
    loop {
        if session.next().await?.kind == b'Z' {
            break;
        }
    }
    let mut buf = BytesMut::new();
    frontend::query(&create_slot_command(slot, plugin, version), &mut buf)
        .map_err(|e| protocol(e.to_string()))?;
    session.send(&buf).await?;
    let row = tokio::time::timeout(CREATE_TIMEOUT, async {
        let mut row = None;
        loop {
            let message = session.next().await?;
            match message.kind {
                b'D' => row = Some(data_row(&message.body)),
                b'Z' => return Ok::<_, SlotError>(row),
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| {
        protocol(format!(
            "no slot after {CREATE_TIMEOUT:?}: a long transaction holds it back"
        ))
    })??
    .ok_or_else(|| protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
    let column = |i: usize| row.get(i).cloned().flatten();
    match (column(1), column(2)) {
        (Some(consistent_point), Some(snapshot)) => Ok(ExportedSlot {
            stream: session.stream,
            slot: slot.to_string(),
            consistent_point,
            snapshot,
        }),
        _ => Err(protocol(format!(
            "CREATE_REPLICATION_SLOT returned no snapshot: {row:?}"
        ))),
    }
}

async fn authenticate(session: &mut Session, endpoint: &Endpoint) -> Result<(), SlotError> {
    let password = || {
        pg::password_for(endpoint).ok_or_else(|| {
            session_error(
                endpoint,
                "the server asks for a password and neither PGPASSWORD nor ~/.pgpass has one",
            )
        })
    };
    let mut scram: Option<ScramSha256> = None;
    loop {
        let mut message = session.next().await?;
        if message.kind != b'R' {
            return Err(session.protocol(format!(
                "expected authentication, got message {:?}",
                message.kind as char
            )));
        }
        if message.body.len() < 4 {
            return Err(session.protocol("short authentication message"));
        }
        let code = message.body.get_i32();
        let mut buf = BytesMut::new();
        match code {
            0 => return Ok(()),
            3 => {
                frontend::password_message(password()?.as_bytes(), &mut buf)
                    .map_err(|e| session.protocol(e.to_string()))?;
            }
            5 => {
                if message.body.len() < 4 {
                    return Err(session.protocol("short MD5 salt"));
                }
                let salt = [
                    message.body[0],
                    message.body[1],
                    message.body[2],
                    message.body[3],
                ];
                let hashed = postgres_protocol::authentication::md5_hash(
                    endpoint.user.as_bytes(),
                    password()?.as_bytes(),
                    salt,
                );
                frontend::password_message(hashed.as_bytes(), &mut buf)
                    .map_err(|e| session.protocol(e.to_string()))?;
            }
            10 => {
                let offered = String::from_utf8_lossy(&message.body);
                if !offered.split('\0').any(|m| m == SCRAM_SHA_256) {
                    return Err(
                        session.protocol(format!("no supported SASL mechanism among {offered:?}"))
                    );
                }
                let client =
                    ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut buf)
                    .map_err(|e| session.protocol(e.to_string()))?;
                scram = Some(client);
            }
            11 => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| session.protocol("SASL continue without a start"))?;
                client
                    .update(&message.body)
                    .map_err(|e| session.protocol(format!("SCRAM: {e}")))?;
                frontend::sasl_response(client.message(), &mut buf)
                    .map_err(|e| session.protocol(e.to_string()))?;
            }
            12 => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| session.protocol("SASL final without a start"))?;
                client
                    .finish(&message.body)
                    .map_err(|e| session.protocol(format!("SCRAM: {e}")))?;
                continue;
            }
            other => {
                return Err(session.protocol(format!(
                    "authentication method {other} is not supported for the replication connection"
                )))
            }
        }
        session.send(&buf).await?;
    }
}

fn session_error(endpoint: &Endpoint, detail: &str) -> SlotError {
    SlotError::Protocol {
        target: endpoint.label(),
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn slot_command_follows_the_server_version() {
        assert_eq!(
            create_slot_command("s1", "pgoutput", 15),
            "CREATE_REPLICATION_SLOT \"s1\" LOGICAL \"pgoutput\" (SNAPSHOT 'export')"
        );
        assert!(create_slot_command("s1", "wal2json", 14).ends_with("EXPORT_SNAPSHOT"));
    }

    #[test]
    fn data_rows_and_errors_are_read() {
        let mut body = BytesMut::new();
        body.put_u16(3);
        for v in ["a", "0/16B3748"] {
            body.put_i32(v.len() as i32);
            body.put_slice(v.as_bytes());
        }
        body.put_i32(-1);
        assert_eq!(
            data_row(&body),
            vec![Some("a".into()), Some("0/16B3748".into()), None]
        );
        let error = b"SERROR\0C42710\0Mreplication slot \"s\" already exists\0\0";
        assert_eq!(
            error_text(error),
            "ERROR 42710: replication slot \"s\" already exists"
        );
    }
}
