//! The host end of the harness's data service (`aegis_proto::control::DATA_SERVICE_PORT`):
//! one TCP connection per transfer through the guest's ingress forward, a request line, the
//! harness's answer line, then the transfer's bytes and, for transfers towards the guest, a
//! final answer line.

use aegis_proto::control::{
    frame_header, DataReply, DataRequest, FileErrorKind, DATA_SERVICE_PORT, MAX_DATA_REQUEST_BYTES,
    MAX_FRAME_BYTES,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::command::GuestLink;
use crate::control::CONTROL_CALL_TIMEOUT;

/// Why a data-service transfer did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The guest could not be reached, or did not answer.
    #[error("{0}")]
    Unreachable(String),
    /// The harness refused the request or failed it; its reason, and for file operations what
    /// kind of failure.
    #[error("{message}")]
    Refused {
        /// What the harness said.
        message: String,
        /// Its classification, for file operations.
        kind: Option<FileErrorKind>,
    },
}

impl DataError {
    fn from_reply(reply: DataReply, default: &str) -> DataError {
        DataError::Refused {
            message: reply.error.unwrap_or_else(|| default.to_owned()),
            kind: reply.kind,
        }
    }
}

/// Opens a data-service connection and sends `request`; returns the connection once the
/// harness has accepted it, positioned at the first byte of the transfer.
///
/// # Errors
/// [`DataError`].
pub async fn open(link: &GuestLink, request: &DataRequest) -> Result<TcpStream, DataError> {
    open_with_reply(link, request)
        .await
        .map(|(stream, _)| stream)
}

/// [`open`], returning the harness's acceptance too (for operations whose answer it is).
///
/// # Errors
/// [`DataError`].
pub async fn open_with_reply(
    link: &GuestLink,
    request: &DataRequest,
) -> Result<(TcpStream, DataReply), DataError> {
    let unreachable = DataError::Unreachable;
    let ingress = link
        .ingress
        .ok_or_else(|| unreachable("the guest has no ingress forward".to_owned()))?;
    let mut stream = ingress
        .open(DATA_SERVICE_PORT)
        .await
        .map_err(|status| unreachable(format!("the guest's data service answered {status:?}")))?;
    let mut line = serde_json::to_vec(request).map_err(|e| unreachable(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    // One line, read byte by byte: what follows belongs to the transfer.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.len() < MAX_DATA_REQUEST_BYTES {
        let n = tokio::time::timeout(CONTROL_CALL_TIMEOUT, stream.read(&mut byte))
            .await
            .map_err(|_| unreachable("the guest did not answer".to_owned()))?
            .map_err(|e| unreachable(e.to_string()))?;
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        answer.push(byte[0]);
    }
    match serde_json::from_slice::<DataReply>(&answer) {
        Ok(reply) if reply.ok => Ok((stream, reply)),
        Ok(reply) => Err(DataError::from_reply(reply, "refused")),
        Err(e) => Err(unreachable(format!("unreadable answer: {e}"))),
    }
}

/// Reads the final answer after a transfer towards the guest; returns the bytes it took.
///
/// # Errors
/// The harness's reason when the transfer failed, or that no answer came.
pub async fn final_reply(read: impl AsyncRead + Unpin) -> Result<u64, DataError> {
    final_answer(read)
        .await
        .map(|reply| reply.bytes.unwrap_or(0))
}

async fn final_answer(read: impl AsyncRead + Unpin) -> Result<DataReply, DataError> {
    let mut line = String::new();
    let _ = BufReader::new(read).read_line(&mut line).await;
    match serde_json::from_str::<DataReply>(&line) {
        Ok(reply) if reply.ok => Ok(reply),
        Ok(reply) => Err(DataError::from_reply(reply, "the transfer failed")),
        Err(_) => Err(DataError::Unreachable(
            "the guest did not confirm the transfer".to_owned(),
        )),
    }
}

/// A file operation that moves no bytes (`stat`, `list`, `mkdir`, `remove`, `rename`): the
/// harness's answer.
///
/// # Errors
/// [`DataError`].
pub async fn call(link: &GuestLink, request: &DataRequest) -> Result<DataReply, DataError> {
    open_with_reply(link, request).await.map(|(_, reply)| reply)
}

/// Sends `body` to the guest as frames (`write`, `tar_in`), then the end frame, and returns the
/// harness's final answer. A body that fails stops the transfer before the end frame, so the
/// guest keeps nothing of it.
///
/// # Errors
/// [`DataError`]; [`DataError::Unreachable`] naming the body's error when it failed.
pub async fn upload<E: std::fmt::Display>(
    link: &GuestLink,
    request: &DataRequest,
    body: impl Stream<Item = Result<Bytes, E>>,
) -> Result<DataReply, DataError> {
    let stream = open(link, request).await?;
    let (read, mut write) = stream.into_split();
    let mut body = std::pin::pin!(body);
    let lost = |e: std::io::Error| {
        DataError::Unreachable(format!("the guest stopped taking the data: {e}"))
    };
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| DataError::Unreachable(format!("the upload broke off: {e}")))?;
        for piece in chunk.chunks(MAX_FRAME_BYTES) {
            write
                .write_all(&frame_header(piece.len()))
                .await
                .map_err(lost)?;
            write.write_all(piece).await.map_err(lost)?;
        }
    }
    write.write_all(&frame_header(0)).await.map_err(lost)?;
    final_answer(read).await
}

/// The guest's bytes of a transfer towards the host (`read`, `tar_out`) as a stream that
/// ends after the end frame and a good final answer, and fails otherwise (so a cut transfer
/// never looks like a whole one).
pub fn download(stream: TcpStream) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::try_unfold(Some(BufReader::new(stream)), |state| async move {
        let Some(mut stream) = state else {
            return Ok(None);
        };
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).await?;
        let len = u32::from_be_bytes(header) as usize;
        if len == 0 {
            return match final_answer(&mut stream).await {
                Ok(_) => Ok(None),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
        }
        if len > MAX_FRAME_BYTES {
            return Err(std::io::Error::other(format!(
                "the guest sent a frame of {len} bytes"
            )));
        }
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await?;
        Ok(Some((Bytes::from(payload), Some(stream))))
    })
}
