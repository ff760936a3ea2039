//! SSH host commands over russh: one pooled, host-key-verified connection per inventory host,
//! one session channel per command.

use super::known_hosts::{self, Verdict};
use super::output::Collector;
use super::{
    expand_tilde, CommandOutput, HostKeyReport, HostOptions, OutputLine, RemoteError, Stdin,
};
use crate::inventory::SshTarget;
use russh::client;
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, Disconnect, Sig};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::Instant as TokioInstant;

/// Concurrent commands per connection; OpenSSH's default `MaxSessions` is 10.
const SESSIONS_PER_CONNECTION: usize = 8;
/// A silent peer is declared dead after `KEEPALIVE_MAX` unanswered keepalives.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_MAX: usize = 3;

struct Connection {
    handle: client::Handle<ClientHandler>,
    sessions: tokio::sync::Semaphore,
}

/// One slot per host; its async mutex serializes (re)connecting, so concurrent commands on a
/// host never open a second connection.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

#[derive(Default)]
pub(super) struct Pool {
    slots: std::sync::Mutex<HashMap<String, Slot>>,
    opened: AtomicUsize,
}

impl Pool {
    pub fn connections_opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    fn slot(&self, host: &str) -> Slot {
        // A poisoned lock only means another thread panicked while cloning an Arc; the map
        // itself is still consistent.
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.entry(host.to_string()).or_default().clone()
    }

    /// The live pooled connection for `host`, or a new one. The flag is true when it is new.
    async fn connection(
        &self,
        host: &str,
        target: &SshTarget,
        opts: &HostOptions,
    ) -> Result<(Arc<Connection>, bool), RemoteError> {
        let slot = self.slot(host);
        let mut guard = slot.lock().await;
        if let Some(connection) = guard.as_ref().filter(|c| !c.handle.is_closed()) {
            return Ok((connection.clone(), false));
        }
        let started = Instant::now();
        let handle = connect(host, target, opts).await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "cutover::ssh",
            host,
            address = %target.address,
            port = target.port,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "SSH connection opened"
        );
        let connection = Arc::new(Connection {
            handle,
            sessions: tokio::sync::Semaphore::new(SESSIONS_PER_CONNECTION),
        });
        *guard = Some(connection.clone());
        Ok((connection, true))
    }

    /// Forget `connection` if it is still the pooled one for `host`.
    async fn discard(&self, host: &str, connection: &Arc<Connection>) {
        let slot = self.slot(host);
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection)) {
            *guard = None;
        }
    }

    pub async fn disconnect_all(&self) {
        let slots: Vec<Slot> = {
            let slots = self
                .slots
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            slots.values().cloned().collect()
        };
        for slot in slots {
            if let Some(connection) = slot.lock().await.take() {
                let _ = connection
                    .handle
                    .disconnect(Disconnect::ByApplication, "", "en")
                    .await;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &self,
        host: &str,
        target: &SshTarget,
        opts: &HostOptions,
        command: &str,
        stdin: Stdin<'_>,
        timeout: Duration,
        on_line: &mut (dyn FnMut(OutputLine) + Send),
    ) -> Result<CommandOutput, RemoteError> {
        let timed_out = || RemoteError::Timeout {
            host: host.to_string(),
            command: command.to_string(),
            after: timeout,
        };
        let cut_off = |reason: String| RemoteError::Channel {
            host: host.to_string(),
            command: command.to_string(),
            reason,
        };
        loop {
            let (connection, fresh) = self.connection(host, target, opts).await?;
            let started = Instant::now();
            let deadline = TokioInstant::now() + timeout;
            let opened = tokio::time::timeout_at(deadline, async {
                let permit = connection.sessions.acquire().await;
                let channel = connection.handle.channel_open_session().await;
                (permit, channel)
            })
            .await;
            let (_permit, channel) = match opened {
                Err(_elapsed) => {
                    // A channel that cannot even open in time means a wedged connection.
                    self.discard(host, &connection).await;
                    return Err(timed_out());
                }
                Ok((permit, channel)) => (permit, channel),
            };
            let mut channel = match channel {
                Ok(channel) => channel,
                // The pooled connection died since its last use: reconnect once, transparently.
                // Nothing ran yet, so retrying cannot run the command twice.
                Err(_) if !fresh => {
                    self.discard(host, &connection).await;
                    continue;
                }
                Err(e) => {
                    self.discard(host, &connection).await;
                    return Err(cut_off(format!("cannot open a session channel: {e}")));
                }
            };

            let mut collector = Collector::default();
            let exchange = async {
                channel.exec(true, command).await?;
                if let Stdin::Bytes(bytes) = stdin {
                    channel.data(bytes).await?;
                }
                channel.eof().await?;
                let mut exit: Option<u32> = None;
                let mut exited_at: Option<TokioInstant> = None;
                loop {
                    let message = match exited_at {
                        None => channel.wait().await,
                        Some(at) => {
                            match tokio::time::timeout_at(at + super::OUTPUT_GRACE, channel.wait())
                                .await
                            {
                                Ok(message) => message,
                                // Exited, but a background process holds its output open.
                                Err(_) => break,
                            }
                        }
                    };
                    match message {
                        Some(ChannelMsg::Data { data }) => collector.stdout(&data, on_line),
                        Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                            collector.stderr(&data, on_line)
                        }
                        Some(ChannelMsg::ExitStatus { exit_status }) => {
                            exit = Some(exit_status);
                            exited_at = Some(TokioInstant::now());
                        }
                        Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                            exit = Some(128 + signal_number(&signal_name));
                            exited_at = Some(TokioInstant::now());
                        }
                        Some(ChannelMsg::Failure) => {
                            return Ok(Err("the server refused to execute the command".to_string()))
                        }
                        Some(ChannelMsg::Close) | None => break,
                        Some(_) => {}
                    }
                }
                Ok::<_, russh::Error>(exit.ok_or_else(|| {
                    "the connection closed before the command reported an exit status".to_string()
                }))
            };
            let outcome = tokio::time::timeout_at(deadline, exchange).await;
            return match outcome {
                Ok(Ok(Ok(exit_status))) => {
                    let _ = channel.close().await;
                    Ok(collector.finish(exit_status, started.elapsed(), on_line))
                }
                Ok(Ok(Err(reason))) => {
                    let _ = channel.close().await;
                    if connection.handle.is_closed() {
                        self.discard(host, &connection).await;
                    }
                    Err(cut_off(reason))
                }
                Ok(Err(e)) => {
                    self.discard(host, &connection).await;
                    Err(cut_off(e.to_string()))
                }
                Err(_elapsed) => {
                    // Best effort: OpenSSH honours `signal` requests; the process may also
                    // die of SIGPIPE once the channel is gone.
                    let _ = channel.signal(Sig::KILL).await;
                    let _ = channel.close().await;
                    Err(timed_out())
                }
            };
        }
    }
}

fn signal_number(signal: &Sig) -> u32 {
    match signal {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        _ => 0,
    }
}

/// Checks the server's host key against known_hosts; see [`HostOptions::trust_on_first_use`].
struct ClientHandler {
    host: String,
    address: String,
    port: u16,
    known_hosts: PathBuf,
    trust_on_first_use: bool,
}

#[derive(Debug)]
enum HandlerError {
    Ssh(russh::Error),
    /// The host key was refused; boxed to keep the error small.
    HostKey(Box<RemoteError>),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Ssh(e)
    }
}

impl ClientHandler {
    fn check(&self, key: &PublicKey) -> Result<(), RemoteError> {
        let fingerprint = known_hosts::fingerprint(key);
        let verdict = known_hosts::verify(&self.known_hosts, &self.address, self.port, key)
            .map_err(|source| self.known_hosts_error(source))?;
        match verdict {
            Verdict::Trusted => Ok(()),
            Verdict::Unknown {
                other_types_known: false,
            } if self.trust_on_first_use => {
                known_hosts::append(&self.known_hosts, &self.address, self.port, key)
                    .map_err(|source| self.known_hosts_error(source))?;
                tracing::warn!(
                    target: "cutover::ssh",
                    host = %self.host,
                    address = %self.address,
                    port = self.port,
                    %fingerprint,
                    known_hosts = %self.known_hosts.display(),
                    "trust-on-first-use: accepted an unknown host key and added it to known_hosts"
                );
                Ok(())
            }
            Verdict::Unknown { other_types_known } => Err(RemoteError::HostKeyUnknown {
                host: self.host.clone(),
                key: self.report(fingerprint),
                other_types_known,
            }),
            Verdict::Changed { line, recorded } => Err(RemoteError::HostKeyChanged {
                host: self.host.clone(),
                key: self.report(fingerprint),
                recorded_fingerprint: known_hosts::fingerprint(&recorded),
                line,
            }),
            Verdict::Revoked { line } => Err(RemoteError::HostKeyRevoked {
                host: self.host.clone(),
                key: self.report(fingerprint),
                line,
            }),
        }
    }

    fn report(&self, fingerprint: String) -> Box<HostKeyReport> {
        Box::new(HostKeyReport {
            address: self.address.clone(),
            port: self.port,
            fingerprint,
            known_hosts: self.known_hosts.clone(),
        })
    }

    fn known_hosts_error(&self, source: std::io::Error) -> RemoteError {
        RemoteError::KnownHosts {
            host: self.host.clone(),
            path: self.known_hosts.clone(),
            source,
        }
    }
}

impl client::Handler for ClientHandler {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        server_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // Host certificates are not negotiated (russh advertises none by default); should a
        // server send one anyway, its bare key must be on record, as OpenSSH falls back to.
        let key = match server_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            russh::keys::PublicKeyOrCertificate::Certificate(cert) => {
                PublicKey::from(cert.public_key().clone())
            }
        };
        self.check(&key)
            .map(|()| true)
            .map_err(|e| HandlerError::HostKey(Box::new(e)))
    }
}

async fn connect(
    host: &str,
    target: &SshTarget,
    opts: &HostOptions,
) -> Result<client::Handle<ClientHandler>, RemoteError> {
    let connect_error = |reason: String| RemoteError::Connect {
        host: host.to_string(),
        address: target.address.clone(),
        port: target.port,
        reason,
    };
    let known_hosts = match &target.known_hosts {
        Some(path) => expand_tilde(path),
        None => known_hosts::default_path().ok_or_else(|| {
            connect_error("no home directory for ~/.ssh/known_hosts; set `known_hosts:`".into())
        })?,
    };
    let mut preferred = russh::Preferred::default();
    let known_types = known_hosts::known_key_types(&known_hosts, &target.address, target.port);
    preferred.key = Cow::Owned(known_hosts::prefer_known_types(
        &preferred.key,
        &known_types,
    ));
    let config = Arc::new(client::Config {
        preferred,
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        ..Default::default()
    });
    let handler = ClientHandler {
        host: host.to_string(),
        address: target.address.clone(),
        port: target.port,
        known_hosts,
        trust_on_first_use: opts.trust_on_first_use,
    };
    let establish = async {
        let mut handle = client::connect(config, (target.address.as_str(), target.port), handler)
            .await
            .map_err(|e| match e {
                HandlerError::HostKey(refusal) => *refusal,
                HandlerError::Ssh(e) => connect_error(e.to_string()),
            })?;
        authenticate(&mut handle, host, target).await?;
        Ok(handle)
    };
    tokio::time::timeout(opts.connect_timeout, establish)
        .await
        .map_err(|_| connect_error(format!("timed out after {:?}", opts.connect_timeout)))?
}

async fn authenticate(
    handle: &mut client::Handle<ClientHandler>,
    host: &str,
    target: &SshTarget,
) -> Result<(), RemoteError> {
    let user = target.user.as_str();
    let auth_error = |reason: String| RemoteError::Auth {
        host: host.to_string(),
        user: user.to_string(),
        reason,
    };
    let connect_error = |e: russh::Error| RemoteError::Connect {
        host: host.to_string(),
        address: target.address.clone(),
        port: target.port,
        reason: e.to_string(),
    };
    let rsa_hash = handle
        .best_supported_rsa_hash()
        .await
        .map_err(connect_error)?
        .flatten();

    if let Some(key_path) = &target.key {
        let key_path = expand_tilde(key_path);
        let key = russh::keys::load_secret_key(&key_path, None).map_err(|e| {
            let hint = match e {
                russh::keys::Error::KeyIsEncrypted => {
                    "; it is passphrase-protected: load it into ssh-agent and drop `key:`"
                }
                _ => "",
            };
            auth_error(format!(
                "cannot load private key {}: {e}{hint}",
                key_path.display()
            ))
        })?;
        let fingerprint = known_hosts::fingerprint(key.public_key());
        let result = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash))
            .await
            .map_err(connect_error)?;
        return if result.success() {
            Ok(())
        } else {
            Err(auth_error(format!(
                "the server refused key {} ({fingerprint})",
                key_path.display()
            )))
        };
    }

    let mut agent = AgentClient::connect_env().await.map_err(|e| {
        auth_error(format!(
            "no `key:` given and ssh-agent is unavailable (SSH_AUTH_SOCK): {e}"
        ))
    })?;
    let identities = agent
        .request_identities()
        .await
        .map_err(|e| auth_error(format!("ssh-agent: {e}")))?;
    let mut offered = 0;
    for identity in identities {
        let AgentIdentity::PublicKey { key, .. } = identity else {
            continue;
        };
        offered += 1;
        let hash = if key.algorithm().is_rsa() {
            rsa_hash
        } else {
            None
        };
        match handle
            .authenticate_publickey_with(user, key, hash, &mut agent)
            .await
        {
            Ok(result) if result.success() => return Ok(()),
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(target: "cutover::ssh", host, error = %e, "ssh-agent could not sign")
            }
        }
    }
    Err(auth_error(format!(
        "no `key:` given and the server accepted none of the {offered} key(s) in ssh-agent"
    )))
}
