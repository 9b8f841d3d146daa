//! Errors as the E2B SDKs read them. The control plane answers `{"code": STATUS, "message"}`
//! with the HTTP status the SDK maps to its exception (401 authentication, 404 not found, 409
//! conflict, 400 invalid argument, 500 otherwise). The envd side's Connect errors are in
//! [`super::connect`].

use aegis_client::ClientError;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// A refused or failed control-plane or file-transfer call.
#[derive(Debug)]
pub struct E2bError {
    /// The status.
    pub status: StatusCode,
    /// What the SDK shows.
    pub message: String,
}

impl E2bError {
    /// A refusal with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> E2bError {
        E2bError {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> E2bError {
        E2bError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 for a sandbox this listener does not know.
    pub fn no_sandbox(id: &str) -> E2bError {
        E2bError::new(StatusCode::NOT_FOUND, format!("sandbox {id:?} not found"))
    }

    /// The daemon's refusal or failure, with its status and message (and hint).
    pub fn daemon(e: &ClientError) -> E2bError {
        let status = e
            .status()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        E2bError::new(status, daemon_message(e))
    }

    /// 500 for a failure of the listener's own (its registry, its serialisation).
    pub fn internal(e: impl std::fmt::Display) -> E2bError {
        E2bError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// The daemon's message with its hint, as both planes show it.
pub fn daemon_message(e: &ClientError) -> String {
    match e.hint() {
        Some(hint) => format!("{e} ({hint})"),
        None => e.to_string(),
    }
}

impl From<ClientError> for E2bError {
    fn from(e: ClientError) -> E2bError {
        E2bError::daemon(&e)
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "code": self.status.as_u16(),
            "message": self.message,
        });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Any path the listener does not serve.
pub async fn no_route(uri: Uri) -> E2bError {
    E2bError::new(
        StatusCode::NOT_FOUND,
        format!("{} is not part of the E2B API Aegis serves", uri.path()),
    )
}
