//! From a decoded source change to the parameterised target statements that apply it (pure):
//! identifiers quoted, every value sent as text and cast to the target column's own type, an
//! update that moves a row's key or distribution column turned into delete + insert.

use super::decode::{Change, ChangeKind, ColumnValue};
use crate::sql::{quote_ident, quote_qualified};

/// A target column: its name and the target's `format_type` (what values are cast to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetColumn {
    pub name: String,
    pub type_sql: String,
    /// A generated column: never written.
    pub generated: bool,
}

/// What the applier knows about one target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTable {
    /// `schema.table`, unquoted.
    pub name: String,
    pub columns: Vec<TargetColumn>,
    /// Primary key columns on the target, in key order; empty when the target has none.
    pub key: Vec<String>,
    /// The Citus distribution column (hash-distributed tables only).
    pub distribution_column: Option<String>,
}

/// One statement to run on the target, with its text parameters (`None` is NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Option<String>>,
    /// An update or delete that must touch exactly one row: zero rows means the target has
    /// drifted from the source, which the applier reports rather than hides.
    pub expect_one_row: bool,
}

impl TargetTable {
    fn column(&self, name: &str) -> Option<&TargetColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
    fn quoted(&self) -> String {
        quote_qualified(&self.name)
    }
}

/// The SQL expression for parameter `$n` holding `value`, cast to the target column's type.
/// wal2json prints `bytea` as bare hex (no `\x`), so that one is decoded rather than cast.
fn value_sql(n: usize, value: &ColumnValue, column: &TargetColumn) -> String {
    if value.source_type == "bytea" && column.type_sql == "bytea" {
        format!("decode(${n}::text, 'hex')")
    } else {
        format!("${n}::text::{}", column.type_sql)
    }
}

struct Builder {
    params: Vec<Option<String>>,
}

impl Builder {
    fn push(&mut self, value: &ColumnValue, column: &TargetColumn) -> String {
        self.params.push(value.text.clone());
        value_sql(self.params.len(), value, column)
    }
}

/// The row's old key: per target key column, its old value (from the replica identity, else
/// from the new row when the identity leaves it out) and how it is compared. A target without a
/// primary key is matched on every identity column, NULL-safe.
fn old_key<'a>(
    change: &'a Change,
    table: &'a TargetTable,
) -> Result<Vec<(&'a ColumnValue, &'a TargetColumn, bool)>, String> {
    let mut key = Vec::new();
    if table.key.is_empty() {
        if change.identity.is_empty() {
            return Err(format!(
                "{} has no primary key on the target and the source sent no replica identity",
                table.name
            ));
        }
        for value in &change.identity {
            let column = table
                .column(&value.name)
                .ok_or_else(|| format!("{} has no column {:?}", table.name, value.name))?;
            key.push((value, column, true));
        }
        return Ok(key);
    }
    for name in &table.key {
        let column = table
            .column(name)
            .ok_or_else(|| format!("{} has no column {name:?}", table.name))?;
        let value = change
            .identity
            .iter()
            .find(|v| &v.name == name)
            .or_else(|| change.columns.iter().find(|v| &v.name == name))
            .ok_or_else(|| {
                format!(
                    "the source sent no value for key column {name:?} of {} (set REPLICA IDENTITY FULL on the source, or make its key include it)",
                    table.name
                )
            })?;
        key.push((value, column, false));
    }
    Ok(key)
}

fn where_clause(
    builder: &mut Builder,
    key: &[(&ColumnValue, &TargetColumn, bool)],
    alias: &str,
) -> String {
    key.iter()
        .map(|(value, column, null_safe)| {
            let expr = builder.push(value, column);
            let op = if *null_safe {
                "IS NOT DISTINCT FROM"
            } else {
                "="
            };
            format!("{alias}{} {op} {expr}", quote_ident(&column.name))
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Whether the update moves the row: a key column or the distribution column has a new value.
/// (Citus refuses `SET <distribution column>` even to the same value, so such updates become
/// delete + insert.)
fn moves_row(change: &Change, table: &TargetTable) -> bool {
    let watched = table.key.iter().chain(table.distribution_column.iter());
    watched.into_iter().any(|name| {
        let new = change.columns.iter().find(|v| &v.name == name);
        let old = change.identity.iter().find(|v| &v.name == name);
        matches!((old, new), (Some(old), Some(new)) if old.text != new.text)
    })
}

/// The written columns of the new row, with their target columns; a column the target lacks is
/// an error (the schemas differ), a generated one is left to the target.
fn new_values<'a>(
    change: &'a Change,
    table: &'a TargetTable,
) -> Result<Vec<(&'a ColumnValue, &'a TargetColumn)>, String> {
    let mut out = Vec::new();
    for value in &change.columns {
        let column = table.column(&value.name).ok_or_else(|| {
            format!(
                "{} has no column {:?} on the target (the schemas differ)",
                table.name, value.name
            )
        })?;
        if !column.generated {
            out.push((value, column));
        }
    }
    Ok(out)
}

fn insert(table: &TargetTable, values: &[(&ColumnValue, &TargetColumn)]) -> Statement {
    let mut builder = Builder { params: Vec::new() };
    let names: Vec<String> = values.iter().map(|(_, c)| quote_ident(&c.name)).collect();
    let exprs: Vec<String> = values.iter().map(|(v, c)| builder.push(v, c)).collect();
    Statement {
        sql: format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.quoted(),
            names.join(", "),
            exprs.join(", ")
        ),
        params: builder.params,
        expect_one_row: false,
    }
}

fn delete(table: &TargetTable, key: &[(&ColumnValue, &TargetColumn, bool)]) -> Statement {
    let mut builder = Builder { params: Vec::new() };
    let clause = where_clause(&mut builder, key, "");
    Statement {
        sql: format!("DELETE FROM {} WHERE {clause}", table.quoted()),
        params: builder.params,
        expect_one_row: true,
    }
}

/// The statements that apply `change` to `table`, in order.
pub fn statements_for(change: &Change, table: &TargetTable) -> Result<Vec<Statement>, String> {
    match change.kind {
        ChangeKind::Insert => Ok(vec![insert(table, &new_values(change, table)?)]),
        ChangeKind::Delete => Ok(vec![delete(table, &old_key(change, table)?)]),
        ChangeKind::Update => {
            let key = old_key(change, table)?;
            let values = new_values(change, table)?;
            if moves_row(change, table) {
                let written: Vec<&str> = values.iter().map(|(_, c)| c.name.as_str()).collect();
                let missing: Vec<&TargetColumn> = table
                    .columns
                    .iter()
                    .filter(|c| !c.generated && !written.contains(&c.name.as_str()))
                    .collect();
                if missing.is_empty() {
                    return Ok(vec![delete(table, &key), insert(table, &values)]);
                }
                // Unchanged TOASTed columns are not in the change: carry them over from the old
                // row, inserting the moved row before the old one is deleted.
                let mut builder = Builder { params: Vec::new() };
                let names: Vec<String> = values
                    .iter()
                    .map(|(_, c)| quote_ident(&c.name))
                    .chain(missing.iter().map(|c| quote_ident(&c.name)))
                    .collect();
                let mut exprs: Vec<String> =
                    values.iter().map(|(v, c)| builder.push(v, c)).collect();
                exprs.extend(
                    missing
                        .iter()
                        .map(|c| format!("r.{}", quote_ident(&c.name))),
                );
                let clause = where_clause(&mut builder, &key, "r.");
                let carry = Statement {
                    sql: format!(
                        "INSERT INTO {t} ({}) SELECT {} FROM {t} r WHERE {clause}",
                        names.join(", "),
                        exprs.join(", "),
                        t = table.quoted()
                    ),
                    params: builder.params,
                    expect_one_row: true,
                };
                return Ok(vec![carry, delete(table, &key)]);
            }
            let key_names: Vec<&str> = key.iter().map(|(_, c, _)| c.name.as_str()).collect();
            let set: Vec<&(&ColumnValue, &TargetColumn)> = values
                .iter()
                .filter(|(_, c)| {
                    !key_names.contains(&c.name.as_str())
                        && table.distribution_column.as_deref() != Some(c.name.as_str())
                })
                .collect();
            let mut builder = Builder { params: Vec::new() };
            let assignments: Vec<String> = set
                .iter()
                .map(|(v, c)| format!("{} = {}", quote_ident(&c.name), builder.push(v, c)))
                .collect();
            if assignments.is_empty() {
                // Only key columns, unchanged: nothing to write.
                return Ok(Vec::new());
            }
            let clause = where_clause(&mut builder, &key, "");
            Ok(vec![Statement {
                sql: format!(
                    "UPDATE {} SET {} WHERE {clause}",
                    table.quoted(),
                    assignments.join(", ")
                ),
                params: builder.params,
                expect_one_row: true,
            }])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode::Lsn;
    use super::*;

    fn col(name: &str, ty: &str) -> TargetColumn {
        TargetColumn {
            name: name.into(),
            type_sql: ty.into(),
            generated: false,
        }
    }
    fn val(name: &str, ty: &str, text: Option<&str>) -> ColumnValue {
        ColumnValue {
            name: name.into(),
            source_type: ty.into(),
            text: text.map(String::from),
        }
    }
    fn orders() -> TargetTable {
        TargetTable {
            name: "public.orders".into(),
            columns: vec![
                col("tenant", "integer"),
                col("id", "bigint"),
                col("data", "bytea"),
                col("note", "text"),
            ],
            key: vec!["tenant".into(), "id".into()],
            distribution_column: Some("tenant".into()),
        }
    }
    fn change(kind: ChangeKind, columns: Vec<ColumnValue>, identity: Vec<ColumnValue>) -> Change {
        Change {
            kind,
            lsn: Lsn(1),
            schema: "public".into(),
            table: "orders".into(),
            columns,
            identity,
        }
    }

    #[test]
    fn an_ordinary_update_never_sets_the_key_or_distribution_column() {
        let c = change(
            ChangeKind::Update,
            vec![
                val("tenant", "integer", Some("1")),
                val("id", "bigint", Some("5")),
                val("note", "text", None),
            ],
            vec![
                val("tenant", "integer", Some("1")),
                val("id", "bigint", Some("5")),
            ],
        );
        let s = statements_for(&c, &orders()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            s[0].sql,
            "UPDATE \"public\".\"orders\" SET \"note\" = $1::text::text WHERE \"tenant\" = $2::text::integer AND \"id\" = $3::text::bigint"
        );
        assert_eq!(s[0].params, vec![None, Some("1".into()), Some("5".into())]);
    }

    #[test]
    fn an_update_of_the_key_is_delete_then_insert() {
        let c = change(
            ChangeKind::Update,
            vec![
                val("tenant", "integer", Some("2")),
                val("id", "bigint", Some("5")),
                val("data", "bytea", Some("0102")),
                val("note", "text", Some("n")),
            ],
            vec![
                val("tenant", "integer", Some("1")),
                val("id", "bigint", Some("5")),
            ],
        );
        let s = statements_for(&c, &orders()).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0].sql.starts_with("DELETE FROM \"public\".\"orders\""));
        assert_eq!(s[0].params, vec![Some("1".into()), Some("5".into())]);
        assert!(s[1].sql.starts_with("INSERT INTO"));
        assert!(s[1].sql.contains("decode($3::text, 'hex')"));
    }

    #[test]
    fn a_moved_row_missing_toasted_columns_carries_them_from_the_old_row() {
        let c = change(
            ChangeKind::Update,
            vec![
                val("tenant", "integer", Some("2")),
                val("id", "bigint", Some("5")),
            ],
            vec![
                val("tenant", "integer", Some("1")),
                val("id", "bigint", Some("5")),
            ],
        );
        let s = statements_for(&c, &orders()).unwrap();
        assert_eq!(
            s[0].sql,
            "INSERT INTO \"public\".\"orders\" (\"tenant\", \"id\", \"data\", \"note\") SELECT $1::text::integer, $2::text::bigint, r.\"data\", r.\"note\" FROM \"public\".\"orders\" r WHERE r.\"tenant\" = $3::text::integer AND r.\"id\" = $4::text::bigint"
        );
        assert!(s[1].sql.starts_with("DELETE"));
    }

    #[test]
    fn without_a_target_key_rows_are_matched_null_safe_on_the_identity() {
        let mut t = orders();
        t.key.clear();
        let c = change(
            ChangeKind::Delete,
            vec![],
            vec![
                val("tenant", "integer", Some("1")),
                val("note", "text", None),
            ],
        );
        let s = statements_for(&c, &t).unwrap();
        assert_eq!(
            s[0].sql,
            "DELETE FROM \"public\".\"orders\" WHERE \"tenant\" IS NOT DISTINCT FROM $1::text::integer AND \"note\" IS NOT DISTINCT FROM $2::text::text"
        );
    }

    #[test]
    fn a_column_the_target_lacks_is_named() {
        let c = change(
            ChangeKind::Insert,
            vec![val("extra", "text", Some("x"))],
            vec![],
        );
        let e = statements_for(&c, &orders()).unwrap_err();
        assert!(e.contains("no column \"extra\""), "{e}");
    }
}
