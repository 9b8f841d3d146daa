//! Joins the harness's output chunks back into lines. The harness splits long lines into chunks
//! of at most `OUTPUT_CHUNK_BYTES`; a line is complete when a chunk says `eol`. A guest cannot
//! make us buffer without bound: a line that grows past [`MAX_LINE_BYTES`] is emitted in pieces
//! of that size, at most [`MAX_OPEN_LINES`] partial lines are kept (a chunk for any further
//! process is emitted as it comes), and all partial lines together hold at most
//! [`MAX_PENDING_BYTES`] (past it, the line being added to is emitted as a piece).

use std::collections::HashMap;

use aegis_proto::control::{ExecId, Stream};

/// Longest line kept whole. 1 MiB lines must arrive whole; 4 MiB leaves room.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// Partial lines kept at once. Each process streams two; exec ids are the guest's word, and a
/// guest could otherwise invent one per chunk.
pub const MAX_OPEN_LINES: usize = 256;
/// Bytes held in all partial lines of one guest together.
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// Partial lines per (exec, stream).
#[derive(Debug, Default)]
pub struct LineAssembler {
    partial: HashMap<(Option<ExecId>, Stream), String>,
    pending_bytes: usize,
}

/// A finished line: its text and whether a newline ended it.
pub type Line = (String, bool);

impl LineAssembler {
    /// Adds a chunk; returns the lines it completed.
    pub fn push(
        &mut self,
        exec: Option<ExecId>,
        stream: Stream,
        data: &str,
        eol: bool,
    ) -> Vec<Line> {
        let key = (exec, stream);
        if !self.partial.contains_key(&key) && (eol || self.partial.len() >= MAX_OPEN_LINES) {
            return vec![(data.to_owned(), eol)];
        }
        let buf = self.partial.entry(key.clone()).or_default();
        buf.push_str(data);
        self.pending_bytes += data.len();
        let mut out = Vec::new();
        while buf.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !buf.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = buf.split_off(cut);
            self.pending_bytes -= cut;
            out.push((std::mem::replace(buf, rest), false));
        }
        if eol || self.pending_bytes > MAX_PENDING_BYTES {
            self.pending_bytes -= buf.len();
            out.push((std::mem::take(buf), eol));
        }
        if buf.is_empty() {
            self.partial.remove(&key);
        }
        out
    }

    /// Flushes whatever is pending for a process that ended (output without a final newline).
    pub fn finish(&mut self, exec: &Option<ExecId>) -> Vec<(Stream, String)> {
        let mut out = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(text) = self.partial.remove(&(exec.clone(), stream)) {
                self.pending_bytes -= text.len();
                out.push((stream, text));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_chunks_and_flushes_partials() {
        let mut a = LineAssembler::default();
        assert!(a.push(None, Stream::Stdout, "hel", false).is_empty());
        assert_eq!(
            a.push(None, Stream::Stdout, "lo", true),
            vec![("hello".to_owned(), true)]
        );
        assert_eq!(
            a.push(None, Stream::Stdout, "", true),
            vec![(String::new(), true)]
        );
        assert!(a
            .push(
                Some(ExecId("e".into())),
                Stream::Stderr,
                "no newline",
                false
            )
            .is_empty());
        assert_eq!(
            a.finish(&Some(ExecId("e".into()))),
            vec![(Stream::Stderr, "no newline".to_owned())]
        );
        assert!(a.finish(&None).is_empty());
    }

    #[test]
    fn bounds_a_runaway_line() {
        let mut a = LineAssembler::default();
        let chunk = "x".repeat(1024 * 1024);
        let mut emitted = 0;
        for _ in 0..9 {
            emitted += a.push(None, Stream::Stdout, &chunk, false).len();
        }
        assert_eq!(emitted, 2);
    }

    #[test]
    fn bounds_partial_lines_under_invented_exec_ids() {
        let mut a = LineAssembler::default();
        let chunk = "y".repeat(64 * 1024);
        let mut emitted = 0;
        for i in 0..10_000 {
            let id = Some(ExecId(format!("forged-{i}")));
            emitted += a.push(id, Stream::Stdout, &chunk, false).len();
            assert!(a.partial.len() <= MAX_OPEN_LINES);
            assert!(a.pending_bytes <= MAX_PENDING_BYTES);
            let held: usize = a.partial.values().map(String::len).sum();
            assert_eq!(held, a.pending_bytes);
        }
        // Everything not held was handed on, none of it lost.
        assert_eq!(emitted, 10_000 - a.partial.len());
        let flushed: usize = (0..10_000)
            .map(|i| a.finish(&Some(ExecId(format!("forged-{i}")))).len())
            .sum();
        assert_eq!(flushed + emitted, 10_000);
        assert_eq!(a.pending_bytes, 0);
    }

    #[test]
    fn pending_bytes_cap_emits_the_growing_line_as_a_piece() {
        let mut a = LineAssembler::default();
        let chunk = "z".repeat(3 * 1024 * 1024);
        let mut pieces = Vec::new();
        for i in 0..8 {
            pieces.extend(a.push(Some(ExecId(format!("e{i}"))), Stream::Stderr, &chunk, false));
        }
        assert!(a.pending_bytes <= MAX_PENDING_BYTES);
        assert!(pieces
            .iter()
            .all(|(text, eol)| !eol && text.len() == chunk.len()));
        assert_eq!(pieces.len(), 8 - MAX_PENDING_BYTES / chunk.len());
    }
}
