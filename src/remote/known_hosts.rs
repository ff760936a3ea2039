//! Host-key verification for SSH connections: reads and appends OpenSSH known_hosts files,
//! consulted by the SSH client before any credential is sent to a host.
//!
//! Supports plain and hashed (`|1|salt|hash`, Debian's default) host fields, `[host]:port`
//! entries, `*`/`?` wildcards and `!` negation, and the `@revoked` marker. `@cert-authority`
//! lines are skipped: `cutover` does not negotiate host certificates.

use russh::keys::{Algorithm, HashAlg, PublicKey};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a known_hosts file says about a presented host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A line for this host records exactly this key.
    Trusted,
    /// No line records a key of this type for this host. `other_types_known` is true when
    /// the host has keys of other types on record.
    Unknown { other_types_known: bool },
    /// A line for this host records a different key of the same type.
    Changed { line: usize, recorded: PublicKey },
    /// The key is listed under `@revoked`.
    Revoked { line: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
}

#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    marker: Marker,
    key: PublicKey,
}

/// `~/.ssh/known_hosts`, the default when an inventory host names no file.
pub fn default_path() -> Option<PathBuf> {
    dirs::home_dir().map(|home| home.join(".ssh").join("known_hosts"))
}

/// The host field OpenSSH writes and matches: `host` for port 22, `[host]:port` otherwise.
pub fn host_field(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:...`, as `ssh-keygen -l` and OpenSSH's prompts print it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Compare `key` with what `path` records for `host`:`port`. A missing file knows no host.
pub fn verify(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<Verdict> {
    let entries = entries_for(path, host, port)?;
    if let Some(revoked) = entries
        .iter()
        .find(|e| e.marker == Marker::Revoked && e.key.key_data() == key.key_data())
    {
        return Ok(Verdict::Revoked { line: revoked.line });
    }
    let plain: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.marker == Marker::None)
        .collect();
    if plain.iter().any(|e| e.key.key_data() == key.key_data()) {
        return Ok(Verdict::Trusted);
    }
    if let Some(changed) = plain
        .iter()
        .find(|e| same_key_type(&e.key.algorithm(), &key.algorithm()))
    {
        return Ok(Verdict::Changed {
            line: changed.line,
            recorded: changed.key.clone(),
        });
    }
    Ok(Verdict::Unknown {
        other_types_known: !plain.is_empty(),
    })
}

/// Key types `path` records for `host`:`port`, in file order, so the client can ask the
/// server for a key type it can verify (as OpenSSH does).
pub fn known_key_types(path: &Path, host: &str, port: u16) -> Vec<Algorithm> {
    let mut types: Vec<Algorithm> = Vec::new();
    for entry in entries_for(path, host, port).unwrap_or_default() {
        let algorithm = entry.key.algorithm();
        if entry.marker == Marker::None && !types.iter().any(|t| same_key_type(t, &algorithm)) {
            types.push(algorithm);
        }
    }
    types
}

/// `preferred` reordered so that key types already on record come first.
pub fn prefer_known_types(preferred: &[Algorithm], known: &[Algorithm]) -> Vec<Algorithm> {
    let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) = preferred
        .iter()
        .cloned()
        .partition(|a| known.iter().any(|k| same_key_type(k, a)));
    first.extend(rest);
    first
}

/// Append `host`:`port` with `key` to `path`, creating the file (and its directory) if needed.
pub fn append(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let needs_newline = match std::fs::read(path) {
        Ok(bytes) => bytes.last().is_some_and(|&b| b != b'\n'),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    let key_text = key
        .to_openssh()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    // The comment of a server key is meaningless here; keep type and base64 only.
    let key_text = key_text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let mut line = String::new();
    if needs_newline {
        line.push('\n');
    }
    line.push_str(&format!("{} {key_text}\n", host_field(host, port)));
    use std::os::unix::fs::OpenOptionsExt;
    // Never group-writable, even when a shared state dir relaxed the umask.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)?;
    file.write_all(line.as_bytes())
}

/// RSA keys negotiate as rsa-sha2-256/512 but are one key type.
fn same_key_type(a: &Algorithm, b: &Algorithm) -> bool {
    matches!((a, b), (Algorithm::Rsa { .. }, Algorithm::Rsa { .. })) || a == b
}

fn entries_for(path: &Path, host: &str, port: u16) -> std::io::Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let wanted = host_field(host, port);
    Ok(text
        .lines()
        .enumerate()
        .filter_map(|(index, line)| parse_line(index + 1, line, &wanted))
        .collect())
}

/// The entry on `line` if it is for `wanted` (a [`host_field`]); unparseable lines are skipped.
fn parse_line(line_number: usize, line: &str, wanted: &str) -> Option<Entry> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace().peekable();
    let marker = match fields.peek() {
        Some(&"@revoked") => Marker::Revoked,
        Some(&"@cert-authority") => return None,
        Some(m) if m.starts_with('@') => return None,
        _ => Marker::None,
    };
    if marker != Marker::None {
        fields.next();
    }
    let hosts = fields.next()?;
    let _key_type = fields.next()?;
    let key_base64 = fields.next()?;
    if !hosts_match(hosts, wanted) {
        return None;
    }
    let key = russh::keys::parse_public_key_base64(key_base64).ok()?;
    Some(Entry {
        line: line_number,
        marker,
        key,
    })
}

/// OpenSSH semantics: any matching negated pattern vetoes the line; otherwise one positive
/// match is enough.
fn hosts_match(patterns: &str, wanted: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if glob_match(negated.as_bytes(), wanted.as_bytes()) {
                return false;
            }
        } else if let Some(hashed) = pattern.strip_prefix("|1|") {
            matched |= hashed_match(hashed, wanted);
        } else {
            matched |= glob_match(pattern.as_bytes(), wanted.as_bytes());
        }
    }
    matched
}

/// `salt|hash` (both base64) matches when HMAC-SHA1(salt, wanted) == hash.
fn hashed_match(salt_and_hash: &str, wanted: &str) -> bool {
    use russh::keys::ssh_encoding::base64::{Base64, Encoding};
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (Base64::decode_vec(salt), Base64::decode_vec(hash)) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    ring::hmac::verify(&key, wanted.as_bytes(), &hash).is_ok()
}

/// Case-insensitive glob with `*` (any run) and `?` (one character), as in ssh_config.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c.eq_ignore_ascii_case(&text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, matched_until)) => {
                    p = star + 1;
                    t = matched_until + 1;
                    backtrack = Some((star, matched_until + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).unwrap()
    }

    fn file(contents: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, contents).unwrap();
        (dir, path)
    }

    #[test]
    fn plain_port_entry_is_trusted_and_other_key_is_changed() {
        let (_d, path) = file(&format!("# c\n\n[10.0.0.1]:2222 ssh-ed25519 {KEY_A}\n"));
        assert_eq!(
            verify(&path, "10.0.0.1", 2222, &key(KEY_A)).unwrap(),
            Verdict::Trusted
        );
        assert!(matches!(
            verify(&path, "10.0.0.1", 2222, &key(KEY_B)).unwrap(),
            Verdict::Changed { line: 3, .. }
        ));
        // Same address, default port: a different host field.
        assert_eq!(
            verify(&path, "10.0.0.1", 22, &key(KEY_A)).unwrap(),
            Verdict::Unknown {
                other_types_known: false
            }
        );
    }

    #[test]
    fn hashed_entry_matches_only_its_host() {
        // russh's test vector: the hashed host field of "example.com".
        let (_d, path) = file(&format!(
            "|1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak= ssh-ed25519 {KEY_B}\n"
        ));
        assert_eq!(
            verify(&path, "example.com", 22, &key(KEY_B)).unwrap(),
            Verdict::Trusted
        );
        assert_eq!(
            verify(&path, "example.org", 22, &key(KEY_B)).unwrap(),
            Verdict::Unknown {
                other_types_known: false
            }
        );
    }

    #[test]
    fn wildcards_negation_and_revocation() {
        let (_d, path) = file(&format!(
            "*.lab,!evil.lab ssh-ed25519 {KEY_A}\n@revoked db1.lab ssh-ed25519 {KEY_A}\n\
             garbage line\n@cert-authority *.lab ssh-ed25519 {KEY_B}\n"
        ));
        assert_eq!(
            verify(&path, "db2.lab", 22, &key(KEY_A)).unwrap(),
            Verdict::Trusted
        );
        assert_eq!(
            verify(&path, "evil.lab", 22, &key(KEY_A)).unwrap(),
            Verdict::Unknown {
                other_types_known: false
            }
        );
        assert_eq!(
            verify(&path, "db1.lab", 22, &key(KEY_A)).unwrap(),
            Verdict::Revoked { line: 2 }
        );
    }

    #[test]
    fn append_adds_a_line_that_verifies() {
        let (_d, path) = file("[h]:1 ssh-ed25519 AAAA-not-a-key"); // no trailing newline
        append(&path, "10.1.1.1", 2200, &key(KEY_B)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with(&format!("\n[10.1.1.1]:2200 ssh-ed25519 {KEY_B}\n")));
        assert_eq!(
            verify(&path, "10.1.1.1", 2200, &key(KEY_B)).unwrap(),
            Verdict::Trusted
        );
    }

    #[test]
    fn missing_file_knows_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            verify(&dir.path().join("nope"), "h", 22, &key(KEY_A)).unwrap(),
            Verdict::Unknown {
                other_types_known: false
            }
        );
    }

    #[test]
    fn glob() {
        assert!(glob_match(b"*.example.com", b"db.EXAMPLE.com"));
        assert!(glob_match(b"[10.0.0.?]:*", b"[10.0.0.7]:2222"));
        assert!(!glob_match(b"db?.lab", b"db10.lab"));
        assert!(glob_match(b"*a*b", b"xxaxxb"));
    }

    #[test]
    fn known_types_come_first() {
        let preferred = [Algorithm::Ed25519, Algorithm::Rsa { hash: None }];
        let known = [Algorithm::Rsa { hash: None }];
        assert_eq!(
            prefer_known_types(&preferred, &known),
            vec![Algorithm::Rsa { hash: None }, Algorithm::Ed25519]
        );
    }
}
