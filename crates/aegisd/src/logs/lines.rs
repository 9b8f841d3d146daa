//! Joins the harness's output chunks back into lines. The harness splits long lines into chunks
//! of at most `OUTPUT_CHUNK_BYTES`; a line is complete when a chunk says `eol`. A line that grows
//! past [`MAX_LINE_BYTES`] is emitted in pieces of that size, so a guest cannot make us buffer
//! without bound.

use std::collections::HashMap;

use aegis_proto::control::{ExecId, Stream};

/// Longest line kept whole. 1 MiB lines must arrive whole; 4 MiB leaves room.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Partial lines per (exec, stream).
#[derive(Debug, Default)]
pub struct LineAssembler {
    partial: HashMap<(Option<ExecId>, Stream), String>,
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
        let buf = self.partial.entry(key.clone()).or_default();
        buf.push_str(data);
        let mut out = Vec::new();
        while buf.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !buf.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = buf.split_off(cut);
            out.push((std::mem::replace(buf, rest), false));
        }
        if eol {
            out.push((std::mem::take(buf), true));
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
}
