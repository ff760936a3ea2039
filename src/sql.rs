//! SQL text helpers used wherever `cutover` builds SQL: identifiers and literals are always quoted.

/// Quote an identifier for SQL (`"name"`), doubling embedded quotes.
/// A dotted name is *not* split; use [`quote_qualified`] for `schema.table`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote `schema.table` (or a bare `table`) part by part.
pub fn quote_qualified(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, table)) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
        None => quote_ident(name),
    }
}

/// Quote a string literal (`'text'`), doubling embedded quotes.
/// Backslashes are safe because `standard_conforming_strings` is on (the default since 9.1);
/// an `E''` literal is used when the text contains one, so the result is correct either way.
pub fn quote_literal(text: &str) -> String {
    let doubled = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", doubled.replace('\\', "\\\\"))
    } else {
        format!("'{doubled}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(quote_ident("forms"), "\"forms\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_qualified("public.forms"), "\"public\".\"forms\"");
    }

    #[test]
    fn literals_are_escaped() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }
}
