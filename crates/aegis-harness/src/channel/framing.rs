//! Newline-delimited framing of the control channel, with a hard bound on incoming lines.
//!
//! [`LineDecoder`] turns the byte stream from the host into complete lines, never holding more
//! than its limit: an overlong line is reported once as [`Decoded::TooLarge`] and the rest of it
//! is skipped up to the next newline. [`encode`] turns an outgoing frame into one line. What a
//! line means is `rpc`'s business.

use serde::Serialize;

/// One unit produced by the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete line, without its newline (and without a trailing `\r`).
    Line(Vec<u8>),
    /// A line exceeded the limit; it is being (or has been) discarded up to the next newline.
    TooLarge,
}

/// Splits incoming bytes into bounded lines.
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl LineDecoder {
    /// A decoder that accepts lines of at most `max` bytes (newline excluded).
    pub fn new(max: usize) -> LineDecoder {
        LineDecoder {
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// Feeds bytes; complete lines and overflow reports are appended to `out` in order. Blank
    /// lines are skipped (a peer may send them as keepalives).
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Decoded>) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let (part, rest) = match newline {
                Some(i) => (&data[..i], Some(&data[i + 1..])),
                None => (data, None),
            };
            if !self.discarding {
                if self.buf.len() + part.len() > self.max {
                    self.buf = Vec::new();
                    self.discarding = true;
                    out.push(Decoded::TooLarge);
                } else {
                    self.buf.extend_from_slice(part);
                }
            }
            match rest {
                Some(rest) => {
                    if !self.discarding {
                        let mut line = std::mem::take(&mut self.buf);
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                        if !line.iter().all(u8::is_ascii_whitespace) {
                            out.push(Decoded::Line(line));
                        }
                    }
                    self.discarding = false;
                    data = rest;
                }
                None => data = &[],
            }
        }
    }

    /// Forgets a partial line, e.g. when the host went away mid-line: the next host starts fresh.
    pub fn reset(&mut self) {
        self.buf = Vec::new();
        self.discarding = false;
    }

    /// Bytes of the partial line held right now.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Serialises one frame as a line (compact JSON never contains a raw newline).
///
/// # Errors
/// The serialiser's error; the wire types of `aegis-proto` always serialise.
pub fn encode<T: Serialize>(frame: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = serde_json::to_vec(frame)?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(max: usize, chunks: &[&[u8]]) -> Vec<Decoded> {
        let mut decoder = LineDecoder::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(chunk, &mut out);
        }
        out
    }

    fn line(text: &str) -> Decoded {
        Decoded::Line(text.as_bytes().to_vec())
    }

    #[test]
    fn splits_lines_across_chunks() {
        let out = decode_all(100, &[b"ab", b"c\nde", b"f\n", b"\n", b"g\r\nh"]);
        assert_eq!(out, vec![line("abc"), line("def"), line("g")]);
    }

    #[test]
    fn line_of_exactly_the_limit_is_accepted() {
        let out = decode_all(4, &[b"abcd\n"]);
        assert_eq!(out, vec![line("abcd")]);
        let out = decode_all(4, &[b"ab", b"cd", b"\n"]);
        assert_eq!(out, vec![line("abcd")]);
    }

    #[test]
    fn overlong_line_is_reported_once_and_skipped_to_the_newline() {
        let out = decode_all(4, &[b"abc", b"de", b"fghij", b"klm\nok\n"]);
        assert_eq!(out, vec![Decoded::TooLarge, line("ok")]);
        let out = decode_all(4, &[b"abcdefgh\nxy\nabcdefgh\n"]);
        assert_eq!(out, vec![Decoded::TooLarge, line("xy"), Decoded::TooLarge]);
    }

    #[test]
    fn buffer_never_exceeds_the_limit() {
        let mut decoder = LineDecoder::new(8);
        let mut out = Vec::new();
        for _ in 0..1000 {
            decoder.push(&[b'x'; 3], &mut out);
            assert!(decoder.pending() <= 8);
        }
        assert_eq!(out, vec![Decoded::TooLarge]);
        decoder.push(b"\n{}\n", &mut out);
        assert_eq!(out, vec![Decoded::TooLarge, line("{}")]);
    }

    #[test]
    fn reset_drops_the_partial_line() {
        let mut decoder = LineDecoder::new(100);
        let mut out = Vec::new();
        decoder.push(b"half a fra", &mut out);
        decoder.reset();
        decoder.push(b"{\"a\":1}\n", &mut out);
        assert_eq!(out, vec![line("{\"a\":1}")]);
    }

    #[test]
    fn encode_appends_one_newline() {
        let bytes = encode(&serde_json::json!({"data": "a\nb"})).unwrap();
        assert_eq!(bytes, b"{\"data\":\"a\\nb\"}\n");
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
