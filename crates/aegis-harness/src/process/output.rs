//! Turns a process's stdout or stderr pipe into `output` notifications.
//!
//! [`LineSplitter`] is the pure part: bytes in, [`Chunk`]s out — one per line (without the
//! newline, `eol: true`), lines longer than [`OUTPUT_CHUNK_BYTES`] split into several chunks with
//! `eol: false` except the last, a trailing partial line flushed with `eol: false` at EOF, text
//! decoded as lossy UTF-8 and never cut inside a multi-byte character. [`pump`] reads the pipe
//! and sends the chunks through the writer, which applies backpressure or its drop policy.

use std::io;
use std::os::fd::OwnedFd;

use aegis_proto::control::{ExecId, Notification, OutputParams, Stream, OUTPUT_CHUNK_BYTES};

use crate::async_fd::AsyncPipe;
use crate::channel::writer::OutboxSender;
use crate::console;

/// Bytes read from a pipe per system call. Each running process holds two such buffers, so with
/// [`aegis_proto::control::MAX_PROCESSES`] processes this stays at 8 MiB in a small guest.
const READ_CHUNK: usize = 16 * 1024;

/// One piece of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The text, without a newline.
    pub data: String,
    /// Whether a newline ended it.
    pub eol: bool,
}

/// Splits a byte stream into line chunks; see the module documentation.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter producing chunks of at most `max` bytes (before lossy decoding).
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            pending: Vec::new(),
            max: max.max(4),
        }
    }

    /// Feeds bytes; complete chunks are appended to `out`. At most `max` bytes are kept back.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Chunk>) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&data[..i]);
                    self.emit_full_chunks(out);
                    out.push(Chunk {
                        data: String::from_utf8_lossy(&self.pending).into_owned(),
                        eol: true,
                    });
                    self.pending.clear();
                    data = &data[i + 1..];
                }
                None => {
                    self.pending.extend_from_slice(data);
                    self.emit_full_chunks(out);
                    data = &[];
                }
            }
        }
    }

    /// Flushes a trailing partial line (`eol: false`) at end of stream.
    pub fn finish(&mut self, out: &mut Vec<Chunk>) {
        if !self.pending.is_empty() {
            out.push(Chunk {
                data: String::from_utf8_lossy(&self.pending).into_owned(),
                eol: false,
            });
            self.pending.clear();
        }
    }

    /// Emits `eol: false` chunks while more than `max` bytes are pending. Exactly `max` bytes
    /// stay, so a line of exactly `max` bytes still becomes a single `eol: true` chunk.
    fn emit_full_chunks(&mut self, out: &mut Vec<Chunk>) {
        while self.pending.len() > self.max {
            let cut = char_boundary(&self.pending, self.max);
            out.push(Chunk {
                data: String::from_utf8_lossy(&self.pending[..cut]).into_owned(),
                eol: false,
            });
            self.pending.drain(..cut);
        }
    }
}

/// The largest cut `<= max` that does not split a UTF-8 sequence; `max` itself when the bytes
/// there are not valid UTF-8 anyway (lossy decoding replaces them wherever the cut falls).
fn char_boundary(bytes: &[u8], max: usize) -> usize {
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    let mut cut = max;
    // A UTF-8 character has at most three continuation bytes.
    while cut > 0 && max - cut < 3 && bytes.get(cut).is_some_and(|&b| is_continuation(b)) {
        cut -= 1;
    }
    if cut == 0 || bytes.get(cut).is_some_and(|&b| is_continuation(b)) {
        return max;
    }
    if cut == max {
        return max;
    }
    // `cut` is at a lead byte; keep the whole character out of this chunk only if it really
    // extends past `max`.
    let len = match bytes[cut] {
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        b if b >= 0xC0 => 2,
        _ => 1,
    };
    if cut + len > max {
        cut
    } else {
        max
    }
}

/// Reads `pipe` to end-of-file and sends its output. Errors end the stream early with a console
/// line; the process's exit is still reported by its supervisor.
pub async fn pump(pipe: OwnedFd, stream: Stream, exec_id: Option<ExecId>, outbox: OutboxSender) {
    if let Err(e) = pump_inner(pipe, stream, &exec_id, &outbox).await {
        let who = exec_id.map_or_else(
            || "the primary process".to_owned(),
            |id| format!("exec {id}"),
        );
        console::line(format_args!(
            "cannot read {} of {who}: {e}",
            stream.as_str()
        ));
    }
}

async fn pump_inner(
    pipe: OwnedFd,
    stream: Stream,
    exec_id: &Option<ExecId>,
    outbox: &OutboxSender,
) -> io::Result<()> {
    let pipe = AsyncPipe::new(pipe)?;
    let mut splitter = LineSplitter::new(OUTPUT_CHUNK_BYTES);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut chunks = Vec::new();
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => splitter.push(&buf[..n], &mut chunks),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Still deliver what was read before the error.
                splitter.finish(&mut chunks);
                send(&mut chunks, stream, exec_id, outbox).await;
                return Err(e);
            }
        }
        send(&mut chunks, stream, exec_id, outbox).await;
    }
    splitter.finish(&mut chunks);
    send(&mut chunks, stream, exec_id, outbox).await;
    Ok(())
}

async fn send(
    chunks: &mut Vec<Chunk>,
    stream: Stream,
    exec_id: &Option<ExecId>,
    outbox: &OutboxSender,
) {
    for chunk in chunks.drain(..) {
        outbox
            .notify(Notification::Output(OutputParams {
                exec_id: exec_id.clone(),
                stream,
                data: chunk.data,
                eol: chunk.eol,
            }))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, pieces: &[&[u8]]) -> Vec<(String, bool)> {
        let mut splitter = LineSplitter::new(max);
        let mut out = Vec::new();
        for piece in pieces {
            splitter.push(piece, &mut out);
        }
        splitter.finish(&mut out);
        out.into_iter().map(|c| (c.data, c.eol)).collect()
    }

    fn c(data: &str, eol: bool) -> (String, bool) {
        (data.to_owned(), eol)
    }

    #[test]
    fn lines_and_partial_lines() {
        assert_eq!(
            split(100, &[b"hello\nwor", b"ld\n\nlast"]),
            vec![
                c("hello", true),
                c("world", true),
                c("", true),
                c("last", false)
            ]
        );
        assert_eq!(split(100, &[b"no newline"]), vec![c("no newline", false)]);
        assert_eq!(split(100, &[]), vec![]);
    }

    #[test]
    fn long_lines_are_chunked_with_eol_only_on_the_last() {
        assert_eq!(
            split(4, &[b"abcdefghij\n"]),
            vec![c("abcd", false), c("efgh", false), c("ij", true)]
        );
        // Exactly the chunk size: one chunk, not an extra empty one.
        assert_eq!(split(4, &[b"abcd\n"]), vec![c("abcd", true)]);
        assert_eq!(
            split(4, &[b"abcd", b"efgh"]),
            vec![c("abcd", false), c("efgh", false)]
        );
        assert_eq!(
            split(4, &[b"ab", b"cdefgh", b"i\n"]),
            vec![c("abcd", false), c("efgh", false), c("i", true)]
        );
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        // "ééé" is 6 bytes; a cut at 5 would split the third character.
        let text = "ééé\n".as_bytes();
        assert_eq!(split(5, &[text]), vec![c("éé", false), c("é", true)]);
        // A four-byte character straddling the boundary moves whole to the next chunk.
        let text = "ab😀cd\n".as_bytes();
        assert_eq!(
            split(4, &[text]),
            vec![c("ab", false), c("😀", false), c("cd", true)]
        );
        // Arriving byte by byte changes nothing.
        let bytes: Vec<&[u8]> = "ab😀cd\n".as_bytes().chunks(1).collect();
        assert_eq!(
            split(4, &bytes),
            vec![c("ab", false), c("😀", false), c("cd", true)]
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(split(100, &[b"a\xffb\n"]), vec![c("a\u{fffd}b", true)]);
        // Continuation bytes without a lead byte: cut at the limit anyway.
        let out = split(4, &[b"\x80\x80\x80\x80\x80\x80\n"]);
        assert_eq!(out.len(), 2);
        assert!(!out[0].1 && out[1].1);
    }

    #[test]
    fn joined_chunks_reproduce_a_long_line() {
        let line: String = (0..10_000u32)
            .map(|i| char::from(b'a' + u8::try_from(i % 26).unwrap()))
            .collect();
        let mut input = line.clone().into_bytes();
        input.push(b'\n');
        let out = split(OUTPUT_CHUNK_BYTES / 8, &[&input]);
        let joined: String = out.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(joined, line);
        assert!(out.last().unwrap().1);
        assert!(out[..out.len() - 1].iter().all(|(_, eol)| !eol));
    }
}
