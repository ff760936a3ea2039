//! The lab's own certificate authority and the server certificates it signs (rcgen), so every
//! lab server speaks TLS and the lab inventory can use `sslmode: verify-full`.
//!
//! Invariants: one CA per lab directory (`<dir>/tls/ca.crt`, its key beside it, mode 0600);
//! every server certificate names exactly `127.0.0.1`, the address the lab inventory uses, so a
//! connection by any other name (`localhost`) fails `verify-full`.

use super::proc::chown_to_service_user;
use super::LabError;
use crate::inventory::{SslMode, Tls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// The address every lab server certificate is issued for.
pub const SERVER_NAME: &str = "127.0.0.1";

/// `<dir>/tls`, where the CA lives.
pub fn tls_dir(dir: &Path) -> PathBuf {
    dir.join("tls")
}

/// The lab CA's certificate: what the inventory's `sslrootcert` names.
pub fn ca_cert(dir: &Path) -> PathBuf {
    tls_dir(dir).join("ca.crt")
}

/// The lab inventory's TLS settings: verify every server against the lab CA.
pub fn lab_tls(dir: &Path) -> Tls {
    Tls {
        sslmode: Some(SslMode::VerifyFull),
        sslrootcert: Some(ca_cert(dir).display().to_string()),
        sslcert: None,
        sslkey: None,
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn cert_err(error: rcgen::Error) -> LabError {
    LabError::Certificate(error.to_string())
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "cutover lab CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Writes `text` to `path` with `mode`, owned by the service user (PostgreSQL refuses a key
/// that others can read).
fn write_private(path: &Path, text: &str, mode: u32) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    chown_to_service_user(path)?;
    Ok(())
}

/// The lab CA's key, making the CA first when `<dir>/tls` has none. Returns the key.
fn ensure_ca(dir: &Path) -> Result<KeyPair, LabError> {
    let tls = tls_dir(dir);
    let key_path = tls.join("ca.key");
    let cert_path = ca_cert(dir);
    if key_path.is_file() && cert_path.is_file() {
        let pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        return KeyPair::from_pem(&pem).map_err(cert_err);
    }
    std::fs::create_dir_all(&tls).map_err(io_err(&tls))?;
    chown_to_service_user(&tls)?;
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = ca_params().self_signed(&key).map_err(cert_err)?;
    write_private(&key_path, &key.serialize_pem(), 0o600)?;
    write_private(&cert_path, &cert.pem(), 0o644)?;
    Ok(key)
}

/// Issues a server certificate for [`SERVER_NAME`] signed by the lab CA of `dir` (made on first
/// use) and writes it to `cert` and its key to `key` (mode 0600, owned by the service user).
pub fn issue_server_cert(
    dir: &Path,
    common_name: &str,
    cert: &Path,
    key: &Path,
) -> Result<(), LabError> {
    let ca_key = ensure_ca(dir)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(cert_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().map_err(cert_err)?;
    let signed = params.signed_by(&server_key, &issuer).map_err(cert_err)?;
    write_private(cert, &signed.pem(), 0o644)?;
    write_private(key, &server_key.serialize_pem(), 0o600)?;
    Ok(())
}
