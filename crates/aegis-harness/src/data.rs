//! The data service: bulk bytes between host and guest over an ingress connection whose header
//! names [`DATA_SERVICE_PORT`] (the protocol is documented there): it feeds the stdin of execs
//! started with `stdin: true`, attaches to the terminals of execs started with `tty`, and serves
//! file operations (`files`). TCP carries the bytes, so
//! a process that reads slowly slows the host's sender down instead of filling memory here,
//! and the control channel never waits behind a large transfer.

use std::time::Duration;

use aegis_proto::control::{DataReply, DataRequest, ExecId, MAX_DATA_REQUEST_BYTES};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use crate::console;
use crate::process::input::Inputs;
use crate::process::terminal;

/// How long the host has to send its request line after the header.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one data-service connection (the `Connected` status is already sent).
pub async fn serve(stream: TcpStream, inputs: Inputs) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, request_line(&mut read)).await {
        Ok(Ok(request)) => request,
        Ok(Err(why)) => return refuse(&mut write, why).await,
        Err(_) => return refuse(&mut write, "no request within 10 s".to_owned()).await,
    };
    match request {
        DataRequest::Stdin { exec_id, keep_open } => {
            feed_stdin(read, write, &inputs, &exec_id, keep_open).await;
        }
        DataRequest::Terminal { exec_id } => match terminal::attach(&inputs, &exec_id) {
            Ok(attachment) => {
                if reply(&mut write, &accepted()).await.is_ok() {
                    if let Err(e) = attachment.pump(read, write).await {
                        console::line(format_args!("data service: terminal: {e}"));
                    }
                }
            }
            Err(why) => refuse(&mut write, why).await,
        },
        files => {
            let leftover = read.buffer().to_vec();
            let stream = match read.into_inner().reunite(write).map(TcpStream::into_std) {
                Ok(Ok(stream)) => stream,
                _ => return,
            };
            let _ =
                tokio::task::spawn_blocking(move || crate::files::serve(files, stream, leftover))
                    .await;
        }
    }
}

async fn request_line(read: &mut (impl AsyncBufReadExt + Unpin)) -> Result<DataRequest, String> {
    let mut line = Vec::new();
    let limit = u64::try_from(MAX_DATA_REQUEST_BYTES).unwrap_or(u64::MAX);
    read.take(limit)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("cannot read the request: {e}"))?;
    if line.last() != Some(&b'\n') {
        return Err(format!(
            "the request is not a line of at most {MAX_DATA_REQUEST_BYTES} bytes"
        ));
    }
    serde_json::from_slice(&line).map_err(|e| format!("invalid data request: {e}"))
}

/// Copies the connection's bytes into the process's stdin until the host's end-of-file (or the
/// process closing its stdin), then closes the pipe, or keeps it for the next connection with
/// `keep_open`, and reports the count.
async fn feed_stdin(
    mut read: impl AsyncRead + Unpin,
    mut write: OwnedWriteHalf,
    inputs: &Inputs,
    exec_id: &Option<ExecId>,
    keep_open: bool,
) {
    let Some(pipe) = inputs.take(exec_id) else {
        let which = exec_id.as_ref().map_or_else(
            || "the primary process".to_owned(),
            |e| format!("exec {:?}", e.0),
        );
        let why = format!(
            "{which} takes no input: it was started without stdin, its stdin was closed, \
             another connection is feeding it, or it has ended"
        );
        return refuse(&mut write, why).await;
    };
    let mut pipe = match tokio::net::unix::pipe::Sender::from_owned_fd(pipe) {
        Ok(pipe) => pipe,
        Err(e) => return refuse(&mut write, format!("cannot use the stdin pipe: {e}")).await,
    };
    if reply(&mut write, &accepted()).await.is_err() {
        return;
    }
    let copied = tokio::io::copy(&mut read, &mut pipe).await;
    match (keep_open && copied.is_ok(), pipe.into_blocking_fd()) {
        (true, Ok(pipe)) => inputs.put_back(exec_id, pipe),
        // The process sees its end-of-file now.
        _ => inputs.remove(exec_id),
    }
    let last = match copied {
        Ok(bytes) => DataReply {
            bytes: Some(bytes),
            ..DataReply::ok()
        },
        // The process closed its stdin or exited: what it did not read is dropped, as a pipe
        // into a process that stopped reading would.
        Err(e) => DataReply::failed(None, format!("the process stopped reading its input: {e}")),
    };
    let _ = reply(&mut write, &last).await;
    let _ = write.shutdown().await;
}

fn accepted() -> DataReply {
    DataReply::ok()
}

async fn refuse(write: &mut OwnedWriteHalf, why: String) {
    console::line(format_args!("data service: {why}"));
    let _ = reply(write, &DataReply::failed(None, why)).await;
    let _ = write.shutdown().await;
}

async fn reply(write: &mut OwnedWriteHalf, reply: &DataReply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    write.write_all(&line).await
}
