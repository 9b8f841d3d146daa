//! [`ClientError`]: everything that can go wrong between asking `aegisd` something and holding a
//! typed answer, with the context (socket, route) needed to say what failed.

use std::path::PathBuf;
use std::time::Duration;

use aegis_proto::api::ErrorBody;
use hyper::{Method, StatusCode};

/// A request to `aegisd` failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket (it is missing, or the daemon that made it is gone).
    #[error("aegisd is not running (nothing answers on {})", socket.display())]
    NotRunning {
        /// The socket tried.
        socket: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The socket exists but could not be connected to for another reason (permissions, …).
    #[error("cannot connect to aegisd at {}", socket.display())]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange broke before an answer arrived.
    #[error("request {method} {path} to aegisd failed")]
    Request {
        /// Method.
        method: Method,
        /// Path and query.
        path: String,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// The daemon answered with an error status; `body.error` is its whole error chain.
    #[error("{}", body.error)]
    Api {
        /// Method.
        method: Method,
        /// Path and query.
        path: String,
        /// HTTP status (4xx: the request was refused, 5xx: the daemon failed).
        status: StatusCode,
        /// The daemon's error body (`error` and an optional `hint`).
        body: ErrorBody,
    },
    /// The answer was not the JSON the route promises.
    #[error("cannot decode the answer to {method} {path}")]
    Decode {
        /// Method.
        method: Method,
        /// Path and query.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The answer's body could not be read.
    #[error("cannot read the answer to {method} {path}")]
    Body {
        /// Method.
        method: Method,
        /// Path and query.
        path: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// One NDJSON record exceeded [`crate::MAX_LINE_BYTES`].
    #[error("a record of the {path} stream is longer than {limit} bytes")]
    LineTooLong {
        /// Path and query.
        path: String,
        /// The bound.
        limit: usize,
    },
    /// No answer within the client's deadline.
    #[error("no answer to {method} {path} within {} s", after.as_secs())]
    Timeout {
        /// Method.
        method: Method,
        /// Path and query.
        path: String,
        /// The deadline.
        after: Duration,
    },
}

impl ClientError {
    /// What the user should do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::NotRunning { .. } => Some("run `aegis up`".to_owned()),
            ClientError::Connect { socket, source }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Some(format!(
                    "{} belongs to the user who ran `aegis up`; run aegis as that user or set \
                     AEGIS_HOME",
                    socket.display()
                ))
            }
            ClientError::Api { body, .. } => body.hint.clone(),
            ClientError::Timeout { .. } => {
                Some("check `aegis status` and the daemon log ($AEGIS_HOME/aegisd.log)".to_owned())
            }
            ClientError::Connect { .. }
            | ClientError::Request { .. }
            | ClientError::Decode { .. }
            | ClientError::Body { .. }
            | ClientError::LineTooLong { .. } => None,
        }
    }

    /// The HTTP status when the daemon refused the request.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when nothing listens on the socket.
    pub fn is_not_running(&self) -> bool {
        matches!(self, ClientError::NotRunning { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_running_hints_at_up() {
        let err = ClientError::NotRunning {
            socket: PathBuf::from("/x/aegisd.sock"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            err.to_string(),
            "aegisd is not running (nothing answers on /x/aegisd.sock)"
        );
        assert_eq!(err.hint().as_deref(), Some("run `aegis up`"));
        assert!(err.is_not_running());
    }

    #[test]
    fn api_errors_show_the_daemon_message_and_hint() {
        let err = ClientError::Api {
            method: Method::GET,
            path: "/v1/instances/web".to_owned(),
            status: StatusCode::NOT_FOUND,
            body: ErrorBody {
                error: "no instance \"web\"".to_owned(),
                hint: Some("run `aegis instance list`".to_owned()),
            },
        };
        assert_eq!(err.to_string(), "no instance \"web\"");
        assert_eq!(err.hint().as_deref(), Some("run `aegis instance list`"));
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    }
}
