//! TLS for PostgreSQL and pgbouncer connections, with libpq's conventions: `sslmode`,
//! `sslrootcert`, `sslcert`, `sslkey` from the inventory, then `PGSSLMODE`, `PGSSLROOTCERT`,
//! `PGSSLCERT`, `PGSSLKEY`, then `~/.postgresql/{root.crt,postgresql.crt,postgresql.key}`.
//!
//! Invariants: a verifying mode never connects without its root certificate and never falls
//! back to an unverified or plain connection; a certificate that does not verify fails the
//! connection with rustls' reason. Only `prefer` may continue in plain text, and only when the
//! server itself declines TLS.

use crate::inventory::{Inventory, SslMode, Tls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `PGSSL*` environment variables (an empty value counts as unset, as in libpq) and the
/// home directory whose `.postgresql/` holds libpq's default files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsEnv {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    pub home: Option<PathBuf>,
}

impl TlsEnv {
    pub fn from_process() -> TlsEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        TlsEnv {
            sslmode: var("PGSSLMODE"),
            sslrootcert: var("PGSSLROOTCERT"),
            sslcert: var("PGSSLCERT"),
            sslkey: var("PGSSLKEY"),
            home: dirs::home_dir(),
        }
    }

    /// `~/.postgresql/<name>` when that file exists.
    fn default_file(&self, name: &str) -> Option<PathBuf> {
        let path = self.home.as_ref()?.join(".postgresql").join(name);
        path.is_file().then_some(path)
    }
}

/// The settings one connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub mode: SslMode,
    /// `mode` came from the default rule: neither the inventory nor `PGSSLMODE` set it.
    pub defaulted: bool,
    pub rootcert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Loopback addresses and Unix-socket directories: traffic that never leaves the machine.
pub fn is_loopback(address: &str) -> bool {
    if address.starts_with('/') || address.eq_ignore_ascii_case("localhost") {
        return true;
    }
    address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The settings for a connection to `address`: the inventory's `tls` first, then the
/// environment, then libpq's default files. Without any `sslmode`: `verify-full` for a
/// non-loopback address when a root certificate is configured, `prefer` otherwise. A Unix
/// socket never uses TLS (libpq does not negotiate it there either).
pub fn resolve(tls: &Tls, address: &str, env: &TlsEnv) -> Result<Resolved, String> {
    // Each file as libpq finds it: the inventory's, else the variable's, else its default.
    let file = |inventory: &Option<String>, variable: &Option<String>, default: &str| {
        inventory
            .clone()
            .or(variable.clone())
            .map(PathBuf::from)
            .or_else(|| env.default_file(default))
    };
    let rootcert = file(&tls.sslrootcert, &env.sslrootcert, "root.crt");
    let cert = file(&tls.sslcert, &env.sslcert, "postgresql.crt");
    let key = file(&tls.sslkey, &env.sslkey, "postgresql.key");
    let from_env = match env.sslmode.as_deref() {
        None => None,
        Some(text) => Some(SslMode::parse(text).ok_or_else(|| {
            format!(
                "PGSSLMODE={text} is not a supported sslmode (one of {})",
                SslMode::NAMES.join(", ")
            )
        })?),
    };
    let (mode, defaulted) = match tls.sslmode.or(from_env) {
        Some(mode) => (mode, false),
        None if !is_loopback(address) && rootcert.is_some() => (SslMode::VerifyFull, true),
        None => (SslMode::Prefer, true),
    };
    let mode = if address.starts_with('/') {
        SslMode::Disable
    } else {
        mode
    };
    Ok(Resolved {
        mode,
        defaulted,
        rootcert,
        cert,
        key,
    })
}

/// The warning for connections to `name` at `address`, when they leave the machine unverified.
pub fn warning(name: &str, address: &str, resolved: &Resolved) -> Option<String> {
    if is_loopback(address) || resolved.mode.verifies() {
        return None;
    }
    let why = if resolved.defaulted {
        ": no root certificate configured (sslrootcert or PGSSLROOTCERT)"
    } else {
        ""
    };
    Some(format!(
        "connections to {name} are not verified (sslmode {}{why})",
        resolved.mode.as_str()
    ))
}

/// Warnings for every node and pgbouncer console of `inventory` whose connections are not
/// verified, under this process's environment. `check`, `plan` and the cockpit header show them.
pub fn inventory_warnings(inventory: &Inventory) -> Vec<String> {
    warnings_with(inventory, &TlsEnv::from_process())
}

/// [`inventory_warnings`] under a given environment.
pub fn warnings_with(inventory: &Inventory, env: &TlsEnv) -> Vec<String> {
    let default = inventory.tls.clone().unwrap_or_default();
    let nodes = inventory
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.address.as_str(), n.tls.as_ref()));
    let consoles = inventory.pgbouncers.iter().map(|b| {
        (
            b.name.as_str(),
            b.admin.address.as_str(),
            b.admin.tls.as_ref(),
        )
    });
    nodes
        .chain(consoles)
        .filter_map(|(name, address, tls)| {
            let tls = tls.cloned().unwrap_or_default().or(&default);
            match resolve(&tls, address, env) {
                Ok(resolved) => warning(name, address, &resolved),
                Err(reason) => Some(format!("connections to {name}: {reason}")),
            }
        })
        .collect()
}

/// How to open the connection: plain, or TLS with the `sslmode` tokio-postgres understands
/// (`prefer` or `require`; the verifying modes are `require` with a verifying rustls config).
pub enum Connector {
    Plain,
    Tls {
        mode: tokio_postgres::config::SslMode,
        connect: tokio_postgres_rustls::MakeRustlsConnect,
    },
}

/// The connector for `resolved`: reads the root certificate, client certificate and key files.
/// Fails, with the file named, when a verifying mode has no readable root certificate.
pub fn connector(resolved: &Resolved) -> Result<Connector, String> {
    let pg_mode = match resolved.mode {
        SslMode::Disable => return Ok(Connector::Plain),
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match resolved.mode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = resolved.rootcert.as_deref().ok_or_else(|| {
                format!(
                    "sslmode {} needs a root certificate: set sslrootcert in the inventory or PGSSLROOTCERT, or use sslmode require to encrypt without verifying",
                    resolved.mode.as_str()
                )
            })?;
            let roots = root_store(path)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("root certificate {}: {e}", path.display()))?;
            if resolved.mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
        _ => Arc::new(Unverified(provider.clone())),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&resolved.cert, &resolved.key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert, "client certificate")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("client key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate {}: {e}", cert.display()))?
        }
        (Some(cert), None) => {
            return Err(format!(
                "client certificate {} has no key: set sslkey or PGSSLKEY",
                cert.display()
            ))
        }
        (None, Some(key)) => {
            return Err(format!(
                "client key {} has no certificate: set sslcert or PGSSLCERT",
                key.display()
            ))
        }
        (None, None) => builder.with_no_client_auth(),
    };
    Ok(Connector::Tls {
        mode: pg_mode,
        connect: tokio_postgres_rustls::MakeRustlsConnect::new(config),
    })
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    if !path.is_file() {
        return Err(format!("{what} file \"{}\" does not exist", path.display()));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn root_store(path: &Path) -> Result<RootCertStore, String> {
    if !path.is_file() {
        return Err(format!(
            "root certificate file \"{}\" does not exist; point sslrootcert (or PGSSLROOTCERT) at the CA that signed the server certificates, or use sslmode require to encrypt without verifying",
            path.display()
        ));
    }
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, "root certificate")? {
        roots
            .add(cert)
            .map_err(|e| format!("root certificate {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// `prefer` and `require`: encryption without verification, as in libpq. The handshake
/// signature is still checked, so the session is bound to the certificate presented.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must verify; only a host-name mismatch is accepted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> TlsEnv {
        TlsEnv::default()
    }

    #[test]
    fn loopback_addresses() {
        for a in [
            "127.0.0.1",
            "127.3.0.1",
            "::1",
            "[::1]",
            "localhost",
            "/var/run/postgresql",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in ["10.0.0.5", "db.example.com", "192.168.1.1"] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    #[test]
    fn default_is_verify_full_with_a_root_certificate_else_prefer_with_a_warning() {
        let tls = Tls::default();
        let plain = resolve(&tls, "10.0.0.5", &env()).unwrap();
        assert_eq!((plain.mode, plain.defaulted), (SslMode::Prefer, true));
        assert_eq!(
            warning("pg1", "10.0.0.5", &plain).unwrap(),
            "connections to pg1 are not verified (sslmode prefer: no root certificate configured (sslrootcert or PGSSLROOTCERT))"
        );
        let with_root = TlsEnv {
            sslrootcert: Some("/etc/ca.crt".into()),
            ..env()
        };
        let verified = resolve(&tls, "10.0.0.5", &with_root).unwrap();
        assert_eq!(verified.mode, SslMode::VerifyFull);
        assert_eq!(verified.rootcert, Some(PathBuf::from("/etc/ca.crt")));
        assert_eq!(warning("pg1", "10.0.0.5", &verified), None);
        let local = resolve(&tls, "127.0.0.1", &with_root).unwrap();
        assert_eq!(local.mode, SslMode::Prefer);
        assert_eq!(warning("pg1", "127.0.0.1", &local), None);
    }

    #[test]
    fn inventory_beats_environment_beats_default() {
        let env = TlsEnv {
            sslmode: Some("require".into()),
            sslrootcert: Some("/env/ca.crt".into()),
            ..env()
        };
        let from_env = resolve(&Tls::default(), "10.0.0.5", &env).unwrap();
        assert_eq!(
            (from_env.mode, from_env.defaulted),
            (SslMode::Require, false)
        );
        let tls = Tls {
            sslmode: Some(SslMode::VerifyCa),
            sslrootcert: Some("/inv/ca.crt".into()),
            ..Tls::default()
        };
        let from_inventory = resolve(&tls, "10.0.0.5", &env).unwrap();
        assert_eq!(from_inventory.mode, SslMode::VerifyCa);
        assert_eq!(from_inventory.rootcert, Some(PathBuf::from("/inv/ca.crt")));
        let socket = resolve(&tls, "/run/postgresql", &env).unwrap();
        assert_eq!(socket.mode, SslMode::Disable);
        let bad = TlsEnv {
            sslmode: Some("allow".into()),
            ..TlsEnv::default()
        };
        assert!(resolve(&Tls::default(), "h", &bad)
            .unwrap_err()
            .contains("PGSSLMODE=allow"));
    }

    #[test]
    fn verifying_without_a_root_certificate_is_refused() {
        let resolved = Resolved {
            mode: SslMode::VerifyFull,
            defaulted: false,
            rootcert: None,
            cert: None,
            key: None,
        };
        let Err(reason) = connector(&resolved) else {
            panic!("connector without root certificate");
        };
        assert!(reason.contains("needs a root certificate"), "{reason}");
        let missing = Resolved {
            rootcert: Some("/nonexistent/ca.crt".into()),
            ..resolved
        };
        let Err(reason) = connector(&missing) else {
            panic!("connector with a missing root certificate");
        };
        assert!(
            reason.contains("root certificate file \"/nonexistent/ca.crt\" does not exist"),
            "{reason}"
        );
    }
}
