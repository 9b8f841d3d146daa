//! The Connect protocol (connectrpc.com) as envd speaks it, JSON codec only: a unary call is a
//! POST of one JSON message answered by one; a server-streaming call sends one enveloped
//! message (`application/connect+json`: a flags byte, a 4-byte big-endian length, the JSON)
//! and gets envelopes back, the last one flagged end-of-stream (0x02) with `{}` or
//! `{"error": {...}}`. Errors of unary calls are `{"code": "not_found", "message"}` with the
//! HTTP status Connect assigns to the code.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The content type of a streaming call with the JSON codec.
pub const STREAM_JSON: &str = "application/connect+json";
/// Flag of the last envelope of a stream.
const END_STREAM: u8 = 0x02;
/// Flag of a compressed envelope (never sent here; refused when received).
const COMPRESSED: u8 = 0x01;

/// Connect's error codes (those used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// `invalid_argument`.
    InvalidArgument,
    /// `not_found`.
    NotFound,
    /// `already_exists`.
    AlreadyExists,
    /// `permission_denied`.
    PermissionDenied,
    /// `failed_precondition`.
    FailedPrecondition,
    /// `unimplemented`.
    Unimplemented,
    /// `unauthenticated`.
    Unauthenticated,
    /// `unavailable`.
    Unavailable,
    /// `deadline_exceeded`.
    DeadlineExceeded,
    /// `internal`.
    Internal,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Unauthenticated => "unauthenticated",
            Code::Unavailable => "unavailable",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::Internal => "internal",
        }
    }

    /// The HTTP status of a unary error with this code.
    fn status(self) -> StatusCode {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code of an HTTP status (a daemon's refusal).
    pub fn of_status(status: StatusCode) -> Code {
        match status.as_u16() {
            400 | 413 | 422 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 => Code::FailedPrecondition,
            501 => Code::Unimplemented,
            503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Internal,
        }
    }
}

/// A failed call.
#[derive(Debug, Clone)]
pub struct ConnectError {
    /// Its code.
    pub code: Code,
    /// What the SDK shows.
    pub message: String,
}

impl ConnectError {
    /// An error with `code`.
    pub fn new(code: Code, message: impl Into<String>) -> ConnectError {
        ConnectError {
            code,
            message: message.into(),
        }
    }

    /// The daemon's refusal or failure.
    pub fn daemon(e: &aegis_client::ClientError) -> ConnectError {
        let code = e.status().map_or(Code::Unavailable, Code::of_status);
        ConnectError::new(code, super::error::daemon_message(e))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code.as_str(), "message": self.message })
    }
}

impl From<aegis_client::ClientError> for ConnectError {
    fn from(e: aegis_client::ClientError) -> ConnectError {
        ConnectError::daemon(&e)
    }
}

/// A control-plane refusal met on the data plane (an unknown sandbox): the same message, its
/// status as a Connect code.
impl From<super::error::E2bError> for ConnectError {
    fn from(e: super::error::E2bError) -> ConnectError {
        ConnectError::new(Code::of_status(e.status), e.message)
    }
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        (self.code.status(), axum::Json(self.json())).into_response()
    }
}

/// Whether the request is a streaming call (its content type is an enveloped one).
pub fn is_streaming(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/connect+"))
}

/// The request message: the body itself (unary) or its one envelope (streaming). Only the
/// JSON codec is served.
///
/// # Errors
/// A binary codec, a compressed or cut envelope, or JSON that is not the message.
pub fn request<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ConnectError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = if content_type.starts_with("application/connect+") {
        if content_type != STREAM_JSON {
            return Err(unsupported_codec(content_type));
        }
        let [flags, a, b, c, d, rest @ ..] = body else {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "the request's envelope is cut short",
            ));
        };
        if flags & COMPRESSED != 0 {
            return Err(ConnectError::new(
                Code::Unimplemented,
                "compressed request messages are not supported: send them uncompressed",
            ));
        }
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        rest.get(..len).ok_or_else(|| {
            ConnectError::new(Code::InvalidArgument, "the request's envelope is cut short")
        })?
    } else {
        if !content_type.starts_with("application/json") {
            return Err(unsupported_codec(content_type));
        }
        body
    };
    let json = if json.is_empty() { b"{}" } else { json };
    serde_json::from_slice(json)
        .map_err(|e| ConnectError::new(Code::InvalidArgument, format!("invalid request: {e}")))
}

fn unsupported_codec(content_type: &str) -> ConnectError {
    ConnectError::new(
        Code::Unimplemented,
        format!(
            "content type {content_type:?} is not served: Aegis speaks Connect with the JSON codec"
        ),
    )
}

/// The answer of a unary call.
pub fn unary(message: &impl Serialize) -> Response {
    axum::Json(message).into_response()
}

fn envelope(flags: u8, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + json.len());
    out.put_u8(flags);
    out.put_u32(u32::try_from(json.len()).unwrap_or(u32::MAX));
    out.put_slice(json);
    out.freeze()
}

/// The answer of a streaming call: each message an envelope, then the end of the stream,
/// with the error that ended it if one did.
pub fn streaming<S>(messages: S) -> Response
where
    S: Stream<Item = Result<serde_json::Value, ConnectError>> + Send + 'static,
{
    let body = futures::stream::unfold(
        (Box::pin(messages), false),
        |(mut messages, ended)| async move {
            if ended {
                return None;
            }
            let piece = match messages.next().await {
                Some(Ok(message)) => {
                    let json = serde_json::to_vec(&message).unwrap_or_default();
                    (envelope(0, &json), false)
                }
                Some(Err(e)) => {
                    let end = serde_json::json!({ "error": e.json() });
                    (envelope(END_STREAM, end.to_string().as_bytes()), true)
                }
                None => (envelope(END_STREAM, b"{}"), true),
            };
            Some((
                Ok::<_, std::convert::Infallible>(piece.0),
                (messages, piece.1),
            ))
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, STREAM_JSON)
        .body(Body::from_stream(body))
        .unwrap_or_default()
}

/// A stream that fails at once with `error` (a streaming call refused before it started).
fn streaming_error(error: ConnectError) -> Response {
    streaming(futures::stream::once(async move { Err(error) }))
}

/// A call's outcome as the client expects it: a failed streaming call still answers as a
/// stream (its error in the end message), a failed unary call with the error's status.
pub fn answer(streaming: bool, result: Result<Response, ConnectError>) -> Response {
    match result {
        Ok(response) => response,
        Err(e) if streaming => streaming_error(e),
        Err(e) => e.into_response(),
    }
}
