//! Output collection shared by the SSH and local runners: splits arriving byte chunks into
//! lines for the caller's callback and keeps the whole text for [`CommandOutput`].

use super::{CommandOutput, OutputLine};
use std::time::Duration;

#[derive(Debug, Default)]
struct Stream {
    bytes: Vec<u8>,
    /// Start of the line not yet emitted; everything before it was passed to the callback.
    pending: usize,
}

impl Stream {
    /// Linear in the output size: only the new chunk is searched for line ends (a long line
    /// arriving in many chunks, such as a base64 file chunk, is not rescanned per chunk).
    fn push(&mut self, chunk: &[u8], emit: &mut dyn FnMut(String)) {
        let mut search_from = self.bytes.len();
        self.bytes.extend_from_slice(chunk);
        while let Some(offset) = self.bytes[search_from..].iter().position(|&b| b == b'\n') {
            let end = search_from + offset;
            emit(line_text(&self.bytes[self.pending..end]));
            self.pending = end + 1;
            search_from = self.pending;
        }
    }

    fn finish(&mut self, emit: &mut dyn FnMut(String)) {
        if self.pending < self.bytes.len() {
            emit(line_text(&self.bytes[self.pending..]));
            self.pending = self.bytes.len();
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

fn line_text(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

/// Collects stdout and stderr; lines reach `on_line` in the order their last byte arrived.
#[derive(Debug, Default)]
pub(super) struct Collector {
    stdout: Stream,
    stderr: Stream,
}

impl Collector {
    pub fn stdout(&mut self, chunk: &[u8], on_line: &mut (dyn FnMut(OutputLine) + Send)) {
        self.stdout
            .push(chunk, &mut |line| on_line(OutputLine::Stdout(line)));
    }

    pub fn stderr(&mut self, chunk: &[u8], on_line: &mut (dyn FnMut(OutputLine) + Send)) {
        self.stderr
            .push(chunk, &mut |line| on_line(OutputLine::Stderr(line)));
    }

    /// Emit unterminated last lines and build the result.
    pub fn finish(
        mut self,
        exit_status: u32,
        elapsed: Duration,
        on_line: &mut (dyn FnMut(OutputLine) + Send),
    ) -> CommandOutput {
        self.stdout
            .finish(&mut |line| on_line(OutputLine::Stdout(line)));
        self.stderr
            .finish(&mut |line| on_line(OutputLine::Stderr(line)));
        CommandOutput {
            exit_status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
            elapsed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_and_multibyte_characters() {
        let mut lines = Vec::new();
        let mut on_line = |l: OutputLine| lines.push(l);
        let mut c = Collector::default();
        let euro = "€".as_bytes();
        c.stdout(b"ab", &mut on_line);
        c.stdout(&[b'c', euro[0]], &mut on_line);
        c.stderr(b"err\r\n", &mut on_line);
        c.stdout(&euro[1..], &mut on_line);
        c.stdout(b"\n\nlast", &mut on_line);
        let out = c.finish(3, Duration::ZERO, &mut on_line);
        assert_eq!(
            lines,
            vec![
                OutputLine::Stderr("err".into()),
                OutputLine::Stdout("abc€".into()),
                OutputLine::Stdout("".into()),
                OutputLine::Stdout("last".into()),
            ]
        );
        assert_eq!(out.stdout, "abc€\n\nlast");
        assert_eq!(out.stderr, "err\r\n");
        assert_eq!(out.exit_status, 3);
    }
}
