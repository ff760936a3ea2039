//! Inventory, step 1 of 3: YAML text → a small tree whose every node carries its source
//! position, so that later checks can point at the offending key or value.
//!
//! Invariants of a tree built here: depth ≤ [`MAX_DEPTH`]; total node count (including
//! copies made by expanding `*alias`) ≤ [`MAX_NODES`]. Content past either limit is replaced
//! by an empty scalar and reported once, so hostile input cannot exhaust the stack or memory.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::ScanError;
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deepest nesting accepted; a real inventory nests about 5 levels.
pub(crate) const MAX_DEPTH: usize = 64;
/// Most nodes accepted, counting alias expansions; a real inventory has a few hundred.
pub(crate) const MAX_NODES: usize = 100_000;

/// A 1-based source position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub col: usize,
    /// Character offset, used only to order positions.
    pub index: usize,
}

impl Pos {
    pub(crate) const START: Pos = Pos {
        line: 1,
        col: 1,
        index: 0,
    };

    fn from_marker(marker: &Marker) -> Pos {
        // yaml-rust2 markers: line is 1-based, col is 0-based.
        Pos {
            line: marker.line().max(1),
            col: marker.col() + 1,
            index: marker.index(),
        }
    }
}

/// A problem found while reading or checking, before the file label is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub pos: Pos,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(pos: Pos, message: impl Into<String>) -> Problem {
        Problem {
            pos,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marked {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Scalar(Scalar),
    Seq(Vec<Marked>),
    /// Entries in source order; duplicate keys are kept (and reported by the checks).
    Map(Vec<(Marked, Marked)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scalar {
    pub text: String,
    pub style: ScalarStyle,
}

/// Whether a scalar was written bare (and so may be a number, bool or null) or quoted/block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarStyle {
    Plain,
    Quoted,
}

impl Marked {
    fn empty(pos: Pos) -> Marked {
        Marked {
            pos,
            value: Value::Scalar(Scalar {
                text: String::new(),
                style: ScalarStyle::Plain,
            }),
        }
    }

    /// Plain `~`, `null` or nothing: YAML's null.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(Scalar { text, style: ScalarStyle::Plain })
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The scalar's text, unless it is a list, a mapping or null.
    pub(crate) fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) if !self.is_null() => Some(&s.text),
            _ => None,
        }
    }

    /// The scalar's text if it is a key-like scalar (any scalar, null included).
    pub(crate) fn key_text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    /// The first entry whose key is `name`, if this is a mapping.
    pub(crate) fn entry(&self, name: &str) -> Option<(&Marked, &Marked)> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(key, _)| key.key_text() == Some(name))
                .map(|(key, value)| (key, value)),
            _ => None,
        }
    }

    /// The value of the first entry whose key is `name`, if this is a mapping.
    pub(crate) fn field(&self, name: &str) -> Option<&Marked> {
        self.entry(name).map(|(_, value)| value)
    }

    /// List items, or nothing when this is not a list.
    pub(crate) fn items(&self) -> &[Marked] {
        match &self.value {
            Value::Seq(items) => items,
            _ => &[],
        }
    }

    /// An unsigned integer written bare (`42`, `+42`, `0x2a`, `0o52`); `None` otherwise,
    /// including when it does not fit in a u64.
    pub(crate) fn uint(&self) -> Option<u64> {
        match &self.value {
            Value::Scalar(Scalar {
                text,
                style: ScalarStyle::Plain,
            }) => parse_uint(text),
            _ => None,
        }
    }

    /// How the value reads to a user, for "found ..." in messages.
    pub(crate) fn describe(&self) -> String {
        match &self.value {
            _ if self.is_null() => "an empty value".to_string(),
            Value::Scalar(s) => {
                let shown: String = s.text.chars().take(40).collect();
                let ellipsis = if s.text.chars().count() > 40 {
                    "…"
                } else {
                    ""
                };
                match s.style {
                    ScalarStyle::Plain => format!("`{shown}{ellipsis}`"),
                    ScalarStyle::Quoted => format!("the string {shown:?}{ellipsis}"),
                }
            }
            Value::Seq(items) => match items.len() {
                0 => "an empty list".to_string(),
                1 => "a list of 1 item".to_string(),
                count => format!("a list of {count} items"),
            },
            Value::Map(_) => "a mapping".to_string(),
        }
    }

    fn size(&self) -> usize {
        1 + match &self.value {
            Value::Scalar(_) => 0,
            Value::Seq(items) => items.iter().map(Marked::size).sum(),
            Value::Map(entries) => entries.iter().map(|(k, v)| k.size() + v.size()).sum(),
        }
    }
}

/// YAML 1.2 core-schema unsigned integers.
fn parse_uint(text: &str) -> Option<u64> {
    let digits = text.strip_prefix('+').unwrap_or(text);
    if let Some(hex) = digits.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok();
    }
    if let Some(oct) = digits.strip_prefix("0o") {
        return u64::from_str_radix(oct, 8).ok();
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The outcome of reading YAML text: the first document's root (if any) and every problem.
pub(crate) struct Read {
    pub root: Option<Marked>,
    pub problems: Vec<Problem>,
    /// A syntax error stopped reading; `root` is then `None`.
    pub syntax_error: bool,
}

/// Parses `text` into a marked tree. Never panics: a parser panic is caught and reported.
pub(crate) fn read(text: &str) -> Read {
    let mut builder = Builder::default();
    // Pull events one by one: `Parser::load` recurses once per nesting level and overflows
    // the stack on deeply nested block collections, while `next_token` is a state machine.
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(), ScanError> {
        let mut parser = Parser::new_from_str(text);
        loop {
            let (event, marker) = parser.next_token()?;
            if event == Event::StreamEnd {
                return Ok(());
            }
            builder.on_event(event, marker);
        }
    }));
    let mut problems = std::mem::take(&mut builder.problems);
    match outcome {
        Ok(Ok(())) => Read {
            root: builder.documents.into_iter().next(),
            problems,
            syntax_error: false,
        },
        Ok(Err(error)) => {
            problems.push(syntax_problem(text, error.marker(), error.info()));
            Read {
                root: None,
                problems,
                syntax_error: true,
            }
        }
        Err(_) => {
            problems.push(Problem::new(
                Pos::START,
                "the YAML parser failed on this file (internal error); please report it",
            ));
            Read {
                root: None,
                problems,
                syntax_error: true,
            }
        }
    }
}

/// yaml-rust2 reports a tab in indentation at the start of the surrounding scalar; point at
/// the tab itself, which is what the user must fix.
fn syntax_problem(text: &str, marker: &Marker, info: &str) -> Problem {
    let at = Pos::from_marker(marker);
    if info.contains("tab") {
        let tab_in_indent = text
            .lines()
            .enumerate()
            .skip(at.line.saturating_sub(1))
            .find_map(|(number, line)| {
                let indent_len = line.len() - line.trim_start_matches([' ', '\t']).len();
                let indent = &line[..indent_len];
                let rest = &line[indent_len..];
                let tab_col = indent.find('\t')?;
                (!rest.is_empty()).then_some((number + 1, tab_col + 1))
            });
        if let Some((line, col)) = tab_in_indent {
            return Problem::new(
                Pos {
                    line,
                    col,
                    index: 0,
                },
                "YAML syntax error: tab character in indentation; indent with spaces",
            );
        }
    }
    Problem::new(at, format!("YAML syntax error: {info}"))
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Marked>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Marked, Marked)>,
        pending_key: Option<Marked>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// Levels of nesting being skipped because they lie past `MAX_DEPTH`.
    skipped_levels: usize,
    anchors: HashMap<usize, (Marked, usize)>,
    nodes: usize,
    budget_reported: bool,
    depth_reported: bool,
    documents: Vec<Marked>,
    problems: Vec<Problem>,
}

impl Builder {
    fn note_tag(&mut self, tag: &Option<Tag>, pos: Pos) {
        if let Some(tag) = tag {
            self.problems.push(Problem::new(
                pos,
                format!(
                    "YAML tags such as `{}{}` are not supported in an inventory; remove the tag",
                    short_handle(&tag.handle),
                    tag.suffix
                ),
            ));
        }
    }

    /// Counts `count` new nodes; false when the budget is spent (reported once).
    fn spend(&mut self, count: usize, pos: Pos) -> bool {
        if self.nodes.saturating_add(count) > MAX_NODES {
            if !self.budget_reported {
                self.budget_reported = true;
                self.problems.push(Problem::new(
                    pos,
                    format!("the document expands to more than {MAX_NODES} values (aliases?); an inventory is much smaller"),
                ));
            }
            return false;
        }
        self.nodes += count;
        true
    }

    fn complete(&mut self, node: Marked, anchor: usize) {
        if anchor != 0 {
            let size = node.size();
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                Some(key) => entries.push((key, node)),
                None => *pending_key = Some(node),
            },
            None => self.documents.push(node),
        }
    }

    fn open(&mut self, frame: Frame, pos: Pos) {
        if self.skipped_levels > 0 || self.stack.len() >= MAX_DEPTH {
            if !self.depth_reported {
                self.depth_reported = true;
                self.problems.push(Problem::new(
                    pos,
                    format!("nesting deeper than {MAX_DEPTH} levels is not supported"),
                ));
            }
            self.skipped_levels += 1;
            return;
        }
        self.stack.push(frame);
    }

    fn close(&mut self, pos: Pos) {
        if self.skipped_levels > 0 {
            self.skipped_levels -= 1;
            if self.skipped_levels == 0 {
                self.complete(Marked::empty(pos), 0);
            }
            return;
        }
        let Some(frame) = self.stack.pop() else {
            return;
        };
        let (node, anchor) = match frame {
            Frame::Seq { pos, anchor, items } => (
                Marked {
                    pos,
                    value: Value::Seq(items),
                },
                anchor,
            ),
            Frame::Map {
                pos,
                anchor,
                mut entries,
                pending_key,
            } => {
                if let Some(key) = pending_key {
                    let value_pos = key.pos;
                    entries.push((key, Marked::empty(value_pos)));
                }
                // A block mapping's start marker points past its first key; use the key.
                let pos = match entries.first() {
                    Some((key, _)) if key.pos.index < pos.index => key.pos,
                    _ => pos,
                };
                (
                    Marked {
                        pos,
                        value: Value::Map(entries),
                    },
                    anchor,
                )
            }
        };
        self.complete(node, anchor);
    }
}

fn short_handle(handle: &str) -> &str {
    if handle == "tag:yaml.org,2002:" {
        "!!"
    } else {
        handle
    }
}

impl Builder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        let pos = Pos::from_marker(&marker);
        match event {
            Event::DocumentStart => {
                if self.documents.len() == 1 && self.stack.is_empty() {
                    self.problems.push(Problem::new(
                        pos,
                        "an inventory is a single YAML document; remove this second document",
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                if self.skipped_levels > 0 {
                    return;
                }
                self.note_tag(&tag, pos);
                let node = if self.spend(1, pos) {
                    Marked {
                        pos,
                        value: Value::Scalar(Scalar {
                            text,
                            style: match style {
                                TScalarStyle::Plain => ScalarStyle::Plain,
                                _ => ScalarStyle::Quoted,
                            },
                        }),
                    }
                } else {
                    Marked::empty(pos)
                };
                self.complete(node, anchor);
            }
            Event::Alias(id) => {
                if self.skipped_levels > 0 {
                    return;
                }
                let node = match self.anchors.get(&id) {
                    Some((node, size)) => {
                        let (node, size) = (node.clone(), *size);
                        if self.spend(size, pos) {
                            node
                        } else {
                            Marked::empty(pos)
                        }
                    }
                    None => Marked::empty(pos),
                };
                self.complete(node, 0);
            }
            Event::SequenceStart(anchor, tag) => {
                if self.skipped_levels == 0 {
                    self.note_tag(&tag, pos);
                    self.spend(1, pos);
                }
                self.open(
                    Frame::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    },
                    pos,
                );
            }
            Event::MappingStart(anchor, tag) => {
                if self.skipped_levels == 0 {
                    self.note_tag(&tag, pos);
                    self.spend(1, pos);
                }
                self.open(
                    Frame::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        pending_key: None,
                    },
                    pos,
                );
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(pos),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Marked {
        let read = read(text);
        assert!(read.problems.is_empty(), "{:?}", read.problems);
        read.root.expect("a document")
    }

    #[test]
    fn positions_are_one_based_and_block_maps_start_at_their_first_key() {
        let tree = root("a: 1\nlist:\n  - name: x\n    port: 22\n");
        assert_eq!((tree.pos.line, tree.pos.col), (1, 1));
        let item = &tree.field("list").expect("list").items()[0];
        assert_eq!((item.pos.line, item.pos.col), (3, 5));
        let port = item.field("port").expect("port");
        assert_eq!((port.pos.line, port.pos.col), (4, 11));
        assert_eq!(port.uint(), Some(22));
    }

    #[test]
    fn aliases_expand_to_a_copy_of_the_anchored_node() {
        let tree = root("a: &x {k: v}\nb: *x\n");
        assert_eq!(tree.field("a"), tree.field("b"));
    }

    #[test]
    fn exponential_aliases_stop_at_the_node_budget() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let prev = level - 1;
            text.push_str(&format!(
                "a{level}: &a{level} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let read = read(&text);
        assert_eq!(read.problems.len(), 1, "{:?}", read.problems);
        assert!(read.problems[0].message.contains("more than 100000 values"));
    }

    #[test]
    fn deep_nesting_is_cut_at_max_depth() {
        let text = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let read = read(&text);
        assert_eq!(read.problems.len(), 1, "{:?}", read.problems);
        assert_eq!(
            read.problems[0].message,
            "nesting deeper than 64 levels is not supported"
        );
        assert_eq!(read.root.map(|root| root.size()), Some(MAX_DEPTH + 1));
    }

    #[test]
    fn very_deep_nesting_never_overflows_the_stack() {
        // yaml-rust2 itself stops flow collections at 255 levels.
        let flow = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        let read_flow = read(&flow);
        assert!(read_flow.syntax_error);
        assert_eq!(read_flow.problems.len(), 1, "{:?}", read_flow.problems);
        // Block collections have no parser limit; ours applies.
        let block = format!("{}x\n", "- ".repeat(100_000));
        let read_block = read(&block);
        assert!(!read_block.syntax_error);
        assert_eq!(read_block.problems.len(), 1, "{:?}", read_block.problems);
    }

    #[test]
    fn uints_follow_the_core_schema_and_reject_overflow() {
        assert_eq!(parse_uint("0x10"), Some(16));
        assert_eq!(parse_uint("0o10"), Some(8));
        assert_eq!(parse_uint("+7"), Some(7));
        assert_eq!(parse_uint("99999999999999999999999"), None);
        assert_eq!(parse_uint("-1"), None);
        assert_eq!(parse_uint("1.5"), None);
        assert_eq!(parse_uint(""), None);
    }
}
