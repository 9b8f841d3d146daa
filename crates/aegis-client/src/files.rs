//! The file routes of [`Client`]: `/v1/instances/{id}/files`. Contents travel as streams both
//! ways, so neither side holds a whole file; no client timeout applies to a transfer.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::TryStreamExt;
use http_body_util::BodyStream;
use hyper::Method;
use tokio::io::{AsyncRead, ReadBuf};

use aegis_proto::api::{FileInfo, MkdirRequest, RenameRequest};

use crate::client::{encode, instance_route, query_string, Client, MAX_JSON_BODY};
use crate::error::ClientError;
use crate::transport::{self, ConnGuard, Outgoing};

/// How a file is written ([`Client::write_file`]).
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Create missing parent directories.
    pub parents: bool,
    /// Permission bits in octal (`"0644"`); the replaced file's, or 0644, when absent.
    pub mode: Option<String>,
    /// Owner: a user name, uid or `user:group`; the replaced file's, or root, when absent.
    pub owner: Option<String>,
}

/// A file's bytes or an archive as it arrives from the daemon. A transfer the guest could not
/// finish ends in an error, never as a short read.
pub struct Download {
    reader: Pin<Box<dyn AsyncRead + Send>>,
    _conn: ConnGuard,
    /// The length the daemon announced, when it did.
    pub length: Option<u64>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Download {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.reader.as_mut().poll_read(cx, buf)
    }
}

impl Client {
    /// `GET /files?path=`: the file's bytes from `offset`, `length` of them at most.
    ///
    /// # Errors
    /// 404 when there is no such file, 409 for a directory; see [`ClientError`].
    pub async fn read_file(
        &self,
        id_or_handle: &str,
        path: &str,
        offset: Option<u64>,
        length: Option<u64>,
    ) -> Result<Download, ClientError> {
        let mut params = vec![("path", path.to_owned())];
        params.extend(offset.map(|o| ("offset", o.to_string())));
        params.extend(length.map(|l| ("length", l.to_string())));
        self.download(files_route(id_or_handle, "", &params)).await
    }

    /// `PUT /files?path=`: replaces (or creates) the file with `content`, atomically.
    ///
    /// # Errors
    /// 404 when the parent directory is missing (without `parents`), 409 for a directory; see
    /// [`ClientError`].
    pub async fn write_file(
        &self,
        id_or_handle: &str,
        path: &str,
        content: impl AsyncRead + Send + 'static,
        options: &WriteOptions,
    ) -> Result<FileInfo, ClientError> {
        let mut params = vec![("path", path.to_owned())];
        if options.parents {
            params.push(("parents", "true".to_owned()));
        }
        params.extend(options.mode.clone().map(|m| ("mode", m)));
        params.extend(options.owner.clone().map(|o| ("owner", o)));
        self.upload(Method::PUT, files_route(id_or_handle, "", &params), content)
            .await
    }

    /// `GET /files/stat?path=`.
    ///
    /// # Errors
    /// 404 when there is nothing at `path`; see [`ClientError`].
    pub async fn stat_file(&self, id_or_handle: &str, path: &str) -> Result<FileInfo, ClientError> {
        let route = files_route(id_or_handle, "/stat", &[("path", path.to_owned())]);
        self.json(Method::GET, route, None).await
    }

    /// `GET /files/list?path=&depth=`.
    ///
    /// # Errors
    /// 404 when there is no such directory, 409 for a file; see [`ClientError`].
    pub async fn list_files(
        &self,
        id_or_handle: &str,
        path: &str,
        depth: u32,
    ) -> Result<Vec<FileInfo>, ClientError> {
        let params = [("path", path.to_owned()), ("depth", depth.to_string())];
        self.json(
            Method::GET,
            files_route(id_or_handle, "/list", &params),
            None,
        )
        .await
    }

    /// `POST /files/mkdir`.
    ///
    /// # Errors
    /// 409 when something is already there (without `parents`); see [`ClientError`].
    pub async fn make_dir(
        &self,
        id_or_handle: &str,
        request: &MkdirRequest,
    ) -> Result<FileInfo, ClientError> {
        let route = files_route(id_or_handle, "/mkdir", &[]);
        self.json(Method::POST, route, Some(encode(request))).await
    }

    /// `DELETE /files?path=&recursive=`.
    ///
    /// # Errors
    /// 404 when there is nothing at `path`, 409 for a directory that is not empty (without
    /// `recursive`); see [`ClientError`].
    pub async fn remove_file(
        &self,
        id_or_handle: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), ClientError> {
        let params = [
            ("path", path.to_owned()),
            ("recursive", recursive.to_string()),
        ];
        let _: serde_json::Value = self
            .json(Method::DELETE, files_route(id_or_handle, "", &params), None)
            .await?;
        Ok(())
    }

    /// `POST /files/rename`.
    ///
    /// # Errors
    /// 404 when `from` does not exist; see [`ClientError`].
    pub async fn rename_file(
        &self,
        id_or_handle: &str,
        request: &RenameRequest,
    ) -> Result<FileInfo, ClientError> {
        let route = files_route(id_or_handle, "/rename", &[]);
        self.json(Method::POST, route, Some(encode(request))).await
    }

    /// `GET /files/archive?path=`: a tar archive of the file or directory, whose top entry is
    /// named after `path`'s last component.
    ///
    /// # Errors
    /// 404 when there is nothing at `path`; see [`ClientError`].
    pub async fn archive_out(
        &self,
        id_or_handle: &str,
        path: &str,
    ) -> Result<Download, ClientError> {
        let route = files_route(id_or_handle, "/archive", &[("path", path.to_owned())]);
        self.download(route).await
    }

    /// `PUT /files/archive?path=`: unpacks the tar archive `tar` into the directory `path`.
    ///
    /// # Errors
    /// 404 when there is no such directory; see [`ClientError`].
    pub async fn archive_in(
        &self,
        id_or_handle: &str,
        path: &str,
        tar: impl AsyncRead + Send + 'static,
    ) -> Result<(), ClientError> {
        let route = files_route(id_or_handle, "/archive", &[("path", path.to_owned())]);
        let _: serde_json::Value = self.upload(Method::PUT, route, tar).await?;
        Ok(())
    }

    async fn download(&self, route: String) -> Result<Download, ClientError> {
        let exchange = self.exchange(Method::GET, route, None).await?;
        let length = exchange
            .response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let transport::Exchange { response, conn, .. } = exchange;
        let frames = BodyStream::new(response.into_body())
            .map_err(std::io::Error::other)
            .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) });
        Ok(Download {
            reader: Box::pin(tokio_util::io::StreamReader::new(frames)),
            _conn: conn,
            length,
        })
    }

    /// Sends `content` streamed as the request body (no client timeout: it may be long) and
    /// decodes the JSON answer.
    pub(crate) async fn upload<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        route: String,
        content: impl AsyncRead + Send + 'static,
    ) -> Result<T, ClientError> {
        transport::send_upgrading(&self.socket, method, route, Outgoing::reader(content), None)
            .await?
            .json(MAX_JSON_BODY)
            .await
    }
}

fn files_route(id_or_handle: &str, rest: &str, params: &[(&str, String)]) -> String {
    instance_route(
        id_or_handle,
        &format!("/files{rest}{}", query_string(params)),
    )
}
