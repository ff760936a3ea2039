//! Secret masking, the one redactor between the flow and anything a person or a disk sees:
//! the journal stores every detail through [`redact`], and the cockpit's log pane shows every
//! line through [`redact_cow`]. Both therefore mask exactly the same things.

use std::borrow::Cow;

/// Keys whose values are secrets, matched case-insensitively and at the end of a word
/// (`PGPASSWORD` contains `password`, `client_secret` contains `secret`, `access_token`
/// contains `token`; `password_encryption` and `tokenizer` match nothing).
const SECRET_KEYS: [&str; 5] = ["password", "passwd", "secret", "token", "api_key"];
/// What a secret value becomes.
pub const MASK: &str = "***";

/// Masks secrets in free text: `password=…`, `PGPASSWORD=…`, `token=…`, `"secret": "…"`,
/// `PASSWORD '…'` (SQL), and the password in `scheme://user:password@host` URLs.
/// Keys and structure stay readable; only the value becomes `***`.
pub fn redact(text: &str) -> String {
    redact_urls(&redact_key_values(text))
}

/// [`redact`], borrowing when there is nothing that could be a secret (the log pane formats
/// every line on every frame).
pub fn redact_cow(text: &str) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    if text.contains("://") || SECRET_KEYS.iter().any(|key| lower.contains(key)) {
        Cow::Owned(redact(text))
    } else {
        Cow::Borrowed(text)
    }
}

fn redact_key_values(text: &str) -> String {
    let bytes = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search_from = 0;
    while let Some((key_start, key_len)) = next_secret_key(&lower, search_from) {
        let after_key = key_start + key_len;
        search_from = after_key;
        // Require the key to end at a word boundary (`password_encryption` is a setting name).
        if bytes
            .get(after_key)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            continue;
        }
        let Some((value_start, value_end)) = secret_value_span(bytes, after_key) else {
            continue;
        };
        if value_start < copied {
            continue;
        }
        // All positions are at ASCII bytes (key letters, quotes, separators) or the string
        // end, so slicing keeps UTF-8 boundaries.
        out.push_str(&text[copied..value_start]);
        out.push_str(MASK);
        copied = value_end;
        search_from = value_end.max(search_from);
    }
    out.push_str(&text[copied..]);
    out
}

fn next_secret_key(lower: &str, from: usize) -> Option<(usize, usize)> {
    SECRET_KEYS
        .iter()
        .filter_map(|key| lower[from..].find(key).map(|pos| (from + pos, key.len())))
        .min()
}

/// The span of the value after a secret key at `pos`: `KEY = value`, `KEY: value`,
/// `"KEY": "value"`, or `KEY 'value'` (SQL). Quoted values end at the closing quote
/// (SQL-doubled quotes included); bare values at whitespace or `&;,)`.
fn secret_value_span(bytes: &[u8], mut pos: usize) -> Option<(usize, usize)> {
    if matches!(bytes.get(pos), Some(b'"' | b'\'')) {
        pos += 1;
    }
    let skip_spaces = |mut p: usize| {
        while matches!(bytes.get(p), Some(b' ' | b'\t')) {
            p += 1;
        }
        p
    };
    pos = skip_spaces(pos);
    let separated = matches!(bytes.get(pos), Some(b'=' | b':'));
    if separated {
        pos = skip_spaces(pos + 1);
    }
    match bytes.get(pos) {
        Some(&quote @ (b'\'' | b'"')) => {
            let start = pos + 1;
            let mut p = start;
            while p < bytes.len() {
                if bytes[p] == quote {
                    if bytes.get(p + 1) == Some(&quote) {
                        p += 2;
                        continue;
                    }
                    return Some((start, p));
                }
                p += 1;
            }
            // Unclosed quote: mask to the end of the line.
            let end = bytes[start..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |n| start + n);
            Some((start, end))
        }
        Some(_) if separated => {
            let start = pos;
            let mut p = start;
            while p < bytes.len()
                && !bytes[p].is_ascii_whitespace()
                && !matches!(bytes[p], b'&' | b';' | b',' | b')' | b'"' | b'\'')
            {
                p += 1;
            }
            (p > start).then_some((start, p))
        }
        _ => None,
    }
}

fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        let authority_len = rest[authority_start..]
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(rest.len() - authority_start);
        let authority = &rest[authority_start..authority_start + authority_len];
        out.push_str(&rest[..authority_start]);
        match authority.rfind('@') {
            Some(at) => match authority[..at].find(':') {
                Some(colon) if authority[colon + 1..at] != *MASK => {
                    out.push_str(&authority[..=colon]);
                    out.push_str(MASK);
                    out.push_str(&authority[at..]);
                }
                _ => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = &rest[authority_start + authority_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_union_of_screen_and_journal_secrets() {
        let cases = [
            (
                "PGPASSWORD=hunter2 psql -h pg1",
                "PGPASSWORD=*** psql -h pg1",
            ),
            (
                "host=pg1 password=hunter2 dbname=p1",
                "host=pg1 password=*** dbname=p1",
            ),
            (
                "export PGPASSWORD='hunter 2'; psql",
                "export PGPASSWORD='***'; psql",
            ),
            (
                "ALTER ROLE app PASSWORD 'hun''ter2';",
                "ALTER ROLE app PASSWORD '***';",
            ),
            ("passwd: x1", "passwd: ***"),
            ("curl -d token=abc123&x=1", "curl -d token=***&x=1"),
            ("access_token: abc", "access_token: ***"),
            (r#"{"token": "abc", "n": 1}"#, r#"{"token": "***", "n": 1}"#),
            ("AUTH_TOKEN=abc rest", "AUTH_TOKEN=*** rest"),
            ("secret=s1 api_key=k1", "secret=*** api_key=***"),
            ("client_secret=abc&x=1", "client_secret=***&x=1"),
            (
                "postgresql://app:hunter2@pg1:5432/p1",
                "postgresql://app:***@pg1:5432/p1",
            ),
            (
                "https://u:p@example.com/x?token=t",
                "https://u:***@example.com/x?token=***",
            ),
            ("ssh://deploy@pg2 stays", "ssh://deploy@pg2 stays"),
            (
                "password_encryption = scram-sha-256",
                "password_encryption = scram-sha-256",
            ),
            ("the token expired", "the token expired"),
            ("tokenizer=icu", "tokenizer=icu"),
            ("SELECT 1", "SELECT 1"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(input), expected, "redact({input:?})");
            assert_eq!(redact_cow(input), expected, "redact_cow({input:?})");
        }
    }

    #[test]
    fn borrows_when_nothing_can_be_secret() {
        assert!(matches!(redact_cow("SELECT 1"), Cow::Borrowed(_)));
        assert!(matches!(redact_cow("token=x"), Cow::Owned(_)));
    }

    #[test]
    fn redacting_twice_changes_nothing_more() {
        for text in [
            "password=x token='y' postgresql://a:b@h/d",
            "PASSWORD 'it''s'",
        ] {
            let once = redact(text);
            assert_eq!(redact(&once), once);
        }
    }
}
