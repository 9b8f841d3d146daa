//! The host end of the harness's data service (`aegis_proto::control::DATA_SERVICE_PORT`):
//! one TCP connection per transfer through the guest's ingress forward, a request line, the
//! harness's answer line, then the transfer's bytes and, for transfers towards the guest, a
//! final answer line.

use aegis_proto::control::{DataReply, DataRequest, DATA_SERVICE_PORT, MAX_DATA_REQUEST_BYTES};
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
    /// The harness refused the request; its reason.
    #[error("{0}")]
    Refused(String),
}

/// Opens a data-service connection and sends `request`; returns the connection once the
/// harness has accepted it, positioned at the first byte of the transfer.
///
/// # Errors
/// [`DataError`].
pub async fn open(link: &GuestLink, request: &DataRequest) -> Result<TcpStream, DataError> {
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
        Ok(DataReply { ok: true, .. }) => Ok(stream),
        Ok(DataReply { error, .. }) => Err(DataError::Refused(
            error.unwrap_or_else(|| "refused".to_owned()),
        )),
        Err(e) => Err(unreachable(format!("unreadable answer: {e}"))),
    }
}

/// Reads the final answer after a transfer towards the guest; returns the bytes it took.
///
/// # Errors
/// The harness's reason when the transfer failed, or that no answer came.
pub async fn final_reply(read: impl AsyncRead + Unpin) -> Result<u64, DataError> {
    let mut line = String::new();
    let _ = BufReader::new(read).read_line(&mut line).await;
    match serde_json::from_str::<DataReply>(&line) {
        Ok(DataReply {
            ok: true, bytes, ..
        }) => Ok(bytes.unwrap_or(0)),
        Ok(DataReply { error, .. }) => Err(DataError::Refused(
            error.unwrap_or_else(|| "the transfer failed".to_owned()),
        )),
        Err(_) => Err(DataError::Unreachable(
            "the guest did not confirm the transfer".to_owned(),
        )),
    }
}
