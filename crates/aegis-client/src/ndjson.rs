//! NDJSON response streams (exec output, logs): one JSON record per line, decoded as it arrives.
//! Each record is bounded by [`MAX_LINE_BYTES`] so a runaway answer cannot grow memory.

use std::marker::PhantomData;

use bytes::Bytes;
use futures::Stream;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper::Method;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, ReadHalf};

use crate::error::ClientError;
use crate::transport::{ConnGuard, Exchange};

/// Largest NDJSON record accepted. Log lines are bounded far below this by the daemon.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// A stream of `T` records from one NDJSON response. Read with [`NdjsonStream::next`] (decoded),
/// [`NdjsonStream::next_raw`] (the record's bytes, e.g. to print them unchanged) or
/// [`NdjsonStream::into_stream`].
#[derive(Debug)]
pub struct NdjsonStream<T> {
    method: Method,
    path: String,
    body: Source,
    lines: LineSplitter,
    eof: bool,
    _conn: ConnGuard,
    _record: PhantomData<fn() -> T>,
}

/// Where the records come from: a response body, or the read side of an upgraded connection.
#[derive(Debug)]
enum Source {
    Body(Incoming),
    Upgraded(ReadHalf<TokioIo<Upgraded>>),
}

impl<T: DeserializeOwned> NdjsonStream<T> {
    pub(crate) fn new(exchange: Exchange) -> NdjsonStream<T> {
        NdjsonStream {
            method: exchange.method,
            path: exchange.path,
            body: Source::Body(exchange.response.into_body()),
            lines: LineSplitter::new(MAX_LINE_BYTES),
            eof: false,
            _conn: exchange.conn,
            _record: PhantomData,
        }
    }

    /// The records an upgraded connection carries after the `101` of `method path`.
    pub(crate) fn upgraded(
        method: Method,
        path: String,
        read: ReadHalf<TokioIo<Upgraded>>,
        conn: ConnGuard,
    ) -> NdjsonStream<T> {
        NdjsonStream {
            method,
            path,
            body: Source::Upgraded(read),
            lines: LineSplitter::new(MAX_LINE_BYTES),
            eof: false,
            _conn: conn,
            _record: PhantomData,
        }
    }

    /// The next chunk of bytes; `None` at the end.
    async fn read_more(
        &mut self,
    ) -> Option<Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> {
        match &mut self.body {
            Source::Body(body) => loop {
                match body.frame().await? {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            return Some(Ok(data));
                        }
                    }
                    Err(e) => return Some(Err(Box::new(e))),
                }
            },
            Source::Upgraded(read) => {
                let mut buf = vec![0u8; 64 * 1024];
                match read.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some(Ok(Bytes::from(buf)))
                    }
                    Err(e) => Some(Err(Box::new(e))),
                }
            }
        }
    }

    /// The next record's bytes (without the newline); `None` once the stream has ended. Blank
    /// lines are skipped.
    ///
    /// # Errors
    /// When the connection breaks or a record exceeds [`MAX_LINE_BYTES`].
    pub async fn next_raw(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Some(line)) => return Some(Ok(line)),
                Ok(None) => {}
                Err(TooLong { limit }) => {
                    self.eof = true;
                    return Some(Err(ClientError::LineTooLong {
                        path: self.path.clone(),
                        limit,
                    }));
                }
            }
            if self.eof {
                return self
                    .lines
                    .finish()
                    .filter(|rest| !rest.iter().all(u8::is_ascii_whitespace))
                    .map(Ok);
            }
            match self.read_more().await {
                None => self.eof = true,
                Some(Ok(data)) => self.lines.push(&data),
                Some(Err(source)) => {
                    self.eof = true;
                    return Some(Err(ClientError::Body {
                        method: self.method.clone(),
                        path: self.path.clone(),
                        source,
                    }));
                }
            }
        }
    }

    /// The next decoded record; `None` once the stream has ended.
    ///
    /// # Errors
    /// As [`NdjsonStream::next_raw`], and when a record is not a `T`.
    pub async fn next(&mut self) -> Option<Result<T, ClientError>> {
        let line = match self.next_raw().await? {
            Ok(line) => line,
            Err(e) => return Some(Err(e)),
        };
        Some(
            serde_json::from_slice(&line).map_err(|source| ClientError::Decode {
                method: self.method.clone(),
                path: self.path.clone(),
                source,
            }),
        )
    }

    /// The records as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = Result<T, ClientError>> {
        futures::stream::unfold(self, |mut stream| async move {
            let item = stream.next().await?;
            Some((item, stream))
        })
    }
}

/// A record longer than the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TooLong {
    limit: usize,
}

/// Splits bytes into newline-terminated records, with a bound on a record's length.
#[derive(Debug)]
struct LineSplitter {
    buf: Vec<u8>,
    /// How far `buf` has been searched for a newline already.
    scanned: usize,
    limit: usize,
}

impl LineSplitter {
    fn new(limit: usize) -> LineSplitter {
        LineSplitter {
            buf: Vec::new(),
            scanned: 0,
            limit,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn next_line(&mut self) -> Result<Option<Bytes>, TooLong> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                if end > self.limit {
                    return Err(TooLong { limit: self.limit });
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.scanned = 0;
                Ok(Some(Bytes::from(line)))
            }
            None if self.buf.len() > self.limit => Err(TooLong { limit: self.limit }),
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }

    /// What is left after the last newline, once the input has ended.
    fn finish(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        (!self.buf.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&str], limit: usize) -> Vec<Result<String, TooLong>> {
        let mut s = LineSplitter::new(limit);
        let mut out = Vec::new();
        for chunk in chunks {
            s.push(chunk.as_bytes());
            loop {
                match s.next_line() {
                    Ok(Some(l)) => out.push(Ok(String::from_utf8(l.to_vec()).unwrap())),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        if let Some(rest) = s.finish() {
            out.push(Ok(String::from_utf8(rest.to_vec()).unwrap()));
        }
        out
    }

    #[test]
    fn splits_across_chunks() {
        assert_eq!(
            lines(&["{\"a\":", "1}\n{\"b\"", ":2}\r\n", "{\"c\":3}"], 100),
            vec![
                Ok("{\"a\":1}".to_owned()),
                Ok("{\"b\":2}".to_owned()),
                Ok("{\"c\":3}".to_owned())
            ]
        );
    }

    #[test]
    fn bounds_a_record() {
        assert_eq!(
            lines(&["0123456789", "0123456789\n"], 8),
            vec![Err(TooLong { limit: 8 })]
        );
        assert_eq!(lines(&["01234567\n"], 8), vec![Ok("01234567".to_owned())]);
    }
}
