//! Newline-delimited frames with a size bound. A line longer than the bound is skipped up to its
//! newline and reported, never buffered: the guest is untrusted and must not grow our memory.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One result of [`FrameReader::next`].
#[derive(Debug, PartialEq, Eq)]
pub enum ReadFrame {
    /// A complete line, without its newline.
    Line(Vec<u8>),
    /// A line over the bound was discarded; carries how many bytes were dropped.
    Oversized(usize),
    /// The peer closed the stream.
    Eof,
}

/// Reads bounded lines from `R`.
#[derive(Debug)]
pub struct FrameReader<R> {
    reader: R,
    max: usize,
}

impl<R: AsyncBufRead + Unpin> FrameReader<R> {
    /// A reader accepting lines of at most `max` bytes.
    pub fn new(reader: R, max: usize) -> Self {
        FrameReader { reader, max }
    }

    /// Reads the next frame.
    ///
    /// # Errors
    /// I/O errors of the underlying stream.
    pub async fn next(&mut self) -> std::io::Result<ReadFrame> {
        let mut line = Vec::new();
        let mut dropped = 0usize;
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Ok(if line.is_empty() && dropped == 0 {
                    ReadFrame::Eof
                } else if dropped > 0 {
                    ReadFrame::Oversized(dropped)
                } else {
                    ReadFrame::Line(line)
                });
            }
            let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if dropped > 0 || line.len() + chunk.len() > self.max {
                dropped += line.len() + chunk.len();
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
            let consumed = found.unwrap_or(buf.len());
            self.reader.consume(consumed);
            if found.is_some() {
                return Ok(if dropped > 0 {
                    ReadFrame::Oversized(dropped)
                } else {
                    ReadFrame::Line(line)
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_skips_oversized_ones() {
        let input: &[u8] = b"short\nthis line is far too long\nok\ntail";
        let mut r = FrameReader::new(tokio::io::BufReader::with_capacity(4, input), 10);
        assert_eq!(r.next().await.unwrap(), ReadFrame::Line(b"short".to_vec()));
        assert!(matches!(r.next().await.unwrap(), ReadFrame::Oversized(n) if n == 25));
        assert_eq!(r.next().await.unwrap(), ReadFrame::Line(b"ok".to_vec()));
        assert_eq!(r.next().await.unwrap(), ReadFrame::Line(b"tail".to_vec()));
        assert_eq!(r.next().await.unwrap(), ReadFrame::Eof);
    }
}
