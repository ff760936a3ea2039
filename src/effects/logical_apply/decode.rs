//! wal2json (format-version 2) rows, as `pg_logical_slot_peek_changes` returns them, folded into
//! whole source transactions: the pure first stage of the logical apply (peek → decode → apply).

use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;
use std::str::FromStr;

/// A WAL position (`pg_lsn`), ordered as PostgreSQL orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (high, low) = text
            .split_once('/')
            .ok_or_else(|| format!("not an LSN: {text:?}"))?;
        let part =
            |p: &str| u64::from_str_radix(p, 16).map_err(|_| format!("not an LSN: {text:?}"));
        let (high, low) = (part(high)?, part(low)?);
        if high > u64::from(u32::MAX) || low > u64::from(u32::MAX) {
            return Err(format!("not an LSN: {text:?}"));
        }
        Ok(Lsn((high << 32) | low))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// What a source change does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Insert => "INSERT",
            ChangeKind::Update => "UPDATE",
            ChangeKind::Delete => "DELETE",
        }
    }
}

/// One column value as the source decoded it: the value's text in PostgreSQL's output form
/// (numbers and booleans as wal2json prints them, bytea as bare hex), `None` for NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnValue {
    pub name: String,
    /// The source's `format_type` of the column (informative: the target's own types are cast to).
    pub source_type: String,
    pub text: Option<String>,
}

/// One row change of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub lsn: Lsn,
    pub schema: String,
    pub table: String,
    /// The new row (insert, update); an update leaves out unchanged TOASTed columns.
    pub columns: Vec<ColumnValue>,
    /// The old row's replica identity (update, delete): its key, or every column under
    /// `REPLICA IDENTITY FULL`.
    pub identity: Vec<ColumnValue>,
}

impl Change {
    /// `schema.table`, unquoted, for messages.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// A `cutover.ddl` logical message: a schema change on the source, in its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdlMessage {
    pub lsn: Lsn,
    /// Command tag and object identity, e.g. `ALTER TABLE public.orders`.
    pub content: String,
}

/// One committed source transaction, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTransaction {
    pub xid: Option<i64>,
    /// The end of its commit record: the slot can be advanced to it once it is applied.
    pub commit_lsn: Lsn,
    /// The source's commit time, as the source printed it (`timestamptz` text).
    pub committed_at: Option<String>,
    pub changes: Vec<Change>,
    /// The first schema-change message in the transaction, if any: the apply stops before it.
    pub ddl: Option<DdlMessage>,
}

/// The prefix of the logical messages the source's DDL trigger emits.
pub const DDL_MESSAGE_PREFIX: &str = "cutover.ddl";

#[derive(Deserialize)]
struct RawRow<'a> {
    action: &'a str,
    #[serde(default)]
    xid: Option<i64>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default, borrow)]
    columns: Option<Vec<RawColumn<'a>>>,
    #[serde(default, borrow)]
    identity: Option<Vec<RawColumn<'a>>>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    transactional: Option<bool>,
}

#[derive(Deserialize)]
struct RawColumn<'a> {
    name: String,
    #[serde(rename = "type")]
    type_name: String,
    #[serde(borrow)]
    value: &'a RawValue,
}

impl RawColumn<'_> {
    /// The value's text: a JSON string unescaped, `null` as NULL, a number or boolean exactly as
    /// printed (so `numeric` keeps every digit).
    fn into_value(self) -> Result<ColumnValue, String> {
        let raw = self.value.get().trim();
        let text = if raw == "null" {
            None
        } else if raw.starts_with('"') {
            Some(
                serde_json::from_str::<String>(raw)
                    .map_err(|e| format!("column {}: {e}", self.name))?,
            )
        } else {
            Some(raw.to_string())
        };
        Ok(ColumnValue {
            name: self.name,
            source_type: self.type_name,
            text,
        })
    }
}

fn values(raw: Option<Vec<RawColumn<'_>>>) -> Result<Vec<ColumnValue>, String> {
    raw.unwrap_or_default()
        .into_iter()
        .map(RawColumn::into_value)
        .collect()
}

/// A row the decoder could not read, with its LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub lsn: Lsn,
    pub detail: String,
}

/// Folds peeked `(lsn, data)` rows into whole transactions, in commit order. Rows after the last
/// commit (a transaction cut off by the peek's limit) are dropped: they come back whole on the
/// next peek. Non-transactional messages and other prefixes are ignored.
pub fn transactions(rows: &[(Lsn, String)]) -> Result<Vec<SourceTransaction>, DecodeError> {
    let mut done = Vec::new();
    let mut open: Option<SourceTransaction> = None;
    for (lsn, data) in rows {
        let err = |detail: String| DecodeError { lsn: *lsn, detail };
        let row: RawRow<'_> =
            serde_json::from_str(data).map_err(|e| err(format!("not wal2json v2: {e}")))?;
        match row.action {
            "B" => {
                open = Some(SourceTransaction {
                    xid: row.xid,
                    commit_lsn: *lsn,
                    committed_at: row.timestamp,
                    changes: Vec::new(),
                    ddl: None,
                });
            }
            "C" => {
                let mut txn = open
                    .take()
                    .ok_or_else(|| err("a commit without its begin".into()))?;
                txn.commit_lsn = *lsn;
                if row.timestamp.is_some() {
                    txn.committed_at = row.timestamp;
                }
                done.push(txn);
            }
            "I" | "U" | "D" => {
                let kind = match row.action {
                    "I" => ChangeKind::Insert,
                    "U" => ChangeKind::Update,
                    _ => ChangeKind::Delete,
                };
                let txn = open
                    .as_mut()
                    .ok_or_else(|| err("a change outside a transaction".into()))?;
                let change = Change {
                    kind,
                    lsn: *lsn,
                    schema: row
                        .schema
                        .ok_or_else(|| err("a change without schema".into()))?,
                    table: row
                        .table
                        .ok_or_else(|| err("a change without table".into()))?,
                    columns: values(row.columns).map_err(&err)?,
                    identity: values(row.identity).map_err(&err)?,
                };
                txn.changes.push(change);
            }
            "M" => {
                let ours = row.prefix.as_deref() == Some(DDL_MESSAGE_PREFIX);
                if let (true, Some(true), Some(txn)) = (ours, row.transactional, open.as_mut()) {
                    if txn.ddl.is_none() {
                        txn.ddl = Some(DdlMessage {
                            lsn: *lsn,
                            content: row.content.unwrap_or_default(),
                        });
                    }
                }
            }
            // TRUNCATE ("T") is not replicated by wal2json v2; anything else is not a row change.
            _ => {}
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    #[test]
    fn lsns_parse_print_and_order() {
        assert_eq!(lsn("0/1526F98").to_string(), "0/1526F98");
        assert_eq!(lsn("1/0").0, 1 << 32);
        assert!(lsn("0/FFFFFFFF") < lsn("1/0"));
        assert!("x".parse::<Lsn>().is_err());
        assert!("1/100000000".parse::<Lsn>().is_err());
    }

    #[test]
    fn rows_fold_into_whole_transactions_and_a_cut_off_one_is_dropped() {
        let rows = vec![
            (lsn("0/10"), r#"{"action":"B","xid":7,"timestamp":"2026-12-02 01:00:25.1+00"}"#.to_string()),
            (lsn("0/20"), r#"{"action":"I","schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":1},{"name":"n","type":"numeric","value":1.2345678901234567890123},{"name":"j","type":"jsonb","value":"{\"x\": 1}"},{"name":"z","type":"text","value":null}]}"#.to_string()),
            (lsn("0/30"), r#"{"action":"U","schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":2}],"identity":[{"name":"id","type":"integer","value":1}]}"#.to_string()),
            (lsn("0/38"), r#"{"action":"M","transactional":true,"prefix":"cutover.ddl","content":"ALTER TABLE public.t"}"#.to_string()),
            (lsn("0/40"), r#"{"action":"C","xid":7}"#.to_string()),
            (lsn("0/50"), r#"{"action":"M","transactional":false,"prefix":"cutover.ddl","content":"x"}"#.to_string()),
            (lsn("0/60"), r#"{"action":"B","xid":8}"#.to_string()),
            (lsn("0/70"), r#"{"action":"D","schema":"public","table":"t","identity":[{"name":"id","type":"integer","value":2}]}"#.to_string()),
        ];
        let txns = transactions(&rows).unwrap();
        assert_eq!(txns.len(), 1, "the open transaction at the end is dropped");
        let t = &txns[0];
        assert_eq!(t.commit_lsn, lsn("0/40"));
        assert_eq!(t.xid, Some(7));
        assert_eq!(t.committed_at.as_deref(), Some("2026-12-02 01:00:25.1+00"));
        assert_eq!(t.changes.len(), 2);
        let insert = &t.changes[0];
        assert_eq!(
            insert.columns[1].text.as_deref(),
            Some("1.2345678901234567890123")
        );
        assert_eq!(insert.columns[2].text.as_deref(), Some("{\"x\": 1}"));
        assert_eq!(insert.columns[3].text, None);
        assert_eq!(t.changes[1].identity[0].text.as_deref(), Some("1"));
        assert_eq!(
            t.ddl,
            Some(DdlMessage {
                lsn: lsn("0/38"),
                content: "ALTER TABLE public.t".into()
            })
        );
    }

    #[test]
    fn garbage_is_a_decode_error_with_its_lsn() {
        let e = transactions(&[(lsn("0/99"), "nope".into())]).unwrap_err();
        assert_eq!(e.lsn, lsn("0/99"));
        let e = transactions(&[(lsn("0/9A"), r#"{"action":"C"}"#.into())]).unwrap_err();
        assert!(e.detail.contains("without its begin"));
    }
}
