//! The one API error type: an exhaustive mapping to HTTP status codes and the JSON error body
//! `{"error": "<chain>", "hint": "..."}`.

use aegis_proto::api::ErrorBody;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::images::{error_chain, ImageError};
use crate::kits::KitError;
use crate::lifecycle::command::LifecycleError;
use crate::lifecycle::data::DataError;
use crate::names::NameError;
use crate::provision::{CreateError, ExposeError};
use crate::router::RouterError;
use crate::secrets::SecretError;
use crate::workspaces::WorkspaceError;
use aegis_proto::control::FileErrorKind;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid request.
    #[error("{0}")]
    BadRequest(String),
    /// A name in the request's path that no resource can have (`..`, `a/b`, NUL, …).
    #[error(transparent)]
    Name(#[from] NameError),
    /// No such instance.
    #[error("instance {0:?} not found")]
    UnknownInstance(String),
    /// No such resource (one without a kind of its own here).
    #[error("{0}")]
    NotFound(String),
    /// No such route.
    #[error("no route {0}")]
    NoRoute(String),
    /// No process of that id was started in the instance (or it was forgotten).
    #[error("instance {instance:?} has no exec {exec_id:?}")]
    UnknownExec {
        /// The instance as named.
        instance: String,
        /// The exec id as named.
        exec_id: String,
    },
    /// The request conflicts with the resource's state.
    #[error("{0}")]
    Conflict(String),
    /// A transfer with the guest's data service failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A lifecycle operation failed.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// Creating an instance failed.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// An image operation failed.
    #[error(transparent)]
    Image(ImageError),
    /// The guest refused to start a process.
    #[error("cannot start the process: {0}")]
    Spawn(String),
    /// Exposing a port failed.
    #[error(transparent)]
    Expose(#[from] ExposeError),
    /// A kit route failed.
    #[error(transparent)]
    Kit(#[from] KitError),
    /// A secret route failed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The secrets named for an instance (`PUT /v1/instances/{id}/secrets`) are not usable.
    #[error(transparent)]
    InstanceSecrets(SecretError),
    /// A workspace route failed.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// A socket scoped to one instance (an instance daemon's `AEGIS_SOCKET`) refused a request
    /// outside its scope.
    #[error("this socket is scoped to instance {instance}: {method} {path} is not allowed")]
    Forbidden {
        /// The instance the socket is scoped to.
        instance: String,
        /// The request's method.
        method: Method,
        /// The request's path, as sent (shortened when long).
        path: String,
    },
    /// The daemon failed in a way the request could not cause.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Name(_) | ApiError::Spawn(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::UnknownInstance(_)
            | ApiError::NotFound(_)
            | ApiError::NoRoute(_)
            | ApiError::UnknownExec { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Data(DataError::Refused { kind, .. }) => match kind {
                None
                | Some(
                    FileErrorKind::Exists
                    | FileErrorKind::IsDir
                    | FileErrorKind::NotDir
                    | FileErrorKind::NotEmpty,
                ) => StatusCode::CONFLICT,
                Some(FileErrorKind::NotFound) => StatusCode::NOT_FOUND,
                Some(FileErrorKind::Denied) => StatusCode::FORBIDDEN,
                Some(FileErrorKind::Invalid) => StatusCode::BAD_REQUEST,
                Some(FileErrorKind::NoSpace) => StatusCode::INSUFFICIENT_STORAGE,
                Some(FileErrorKind::Other) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Data(DataError::Unreachable(_)) => StatusCode::BAD_GATEWAY,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Lifecycle(e) => lifecycle_status(e),
            ApiError::Image(e) => image_status(e),
            ApiError::Create(e) => match e {
                CreateError::Spec(_) | CreateError::NoCommand { .. } => StatusCode::BAD_REQUEST,
                CreateError::HandleInUse { .. } => StatusCode::CONFLICT,
                CreateError::Image(e) => image_status(e),
                CreateError::Lifecycle(e) => lifecycle_status(e),
                CreateError::Router(e) => router_status(e),
                CreateError::Secrets(e) => secret_status(e, SecretUse::Referenced),
                CreateError::Kit(e) => kit_status(e, KitUse::Referenced),
                CreateError::Preset(_) => StatusCode::BAD_REQUEST,
                CreateError::Registry(_) | CreateError::Dir { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            ApiError::Expose(e) => match e {
                ExposeError::Spec(_) => StatusCode::BAD_REQUEST,
                ExposeError::Router(e) => router_status(e),
                ExposeError::Lifecycle(e) => lifecycle_status(e),
            },
            ApiError::Kit(e) => kit_status(e, KitUse::Direct),
            ApiError::Secret(e) => secret_status(e, SecretUse::Direct),
            ApiError::InstanceSecrets(e) => secret_status(e, SecretUse::Referenced),
            ApiError::Workspace(e) => workspace_status(e),
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ApiError::Lifecycle(e)
            | ApiError::Create(CreateError::Lifecycle(e))
            | ApiError::Expose(ExposeError::Lifecycle(e)) => e.hint(),
            ApiError::Create(CreateError::Router(_)) | ApiError::Expose(ExposeError::Router(_)) => {
                Some("choose another public port, or omit it to get a free one".to_owned())
            }
            ApiError::Create(CreateError::Image(e)) | ApiError::Image(e) => e.hint(),
            ApiError::Secret(e)
            | ApiError::Create(CreateError::Secrets(e))
            | ApiError::InstanceSecrets(e) => e.hint(),
            ApiError::UnknownInstance(_) => {
                Some("`aegis instance list` shows the instances".to_owned())
            }
            ApiError::UnknownExec { instance, .. } => Some(format!(
                "`aegis process list {instance}` shows the processes started in it"
            )),
            ApiError::Kit(e) | ApiError::Create(CreateError::Kit(e)) => e.hint(),
            ApiError::Create(CreateError::Preset(e)) => Some(e.hint()),
            ApiError::Create(CreateError::NoCommand { .. }) => {
                Some("give a command after `--`".to_owned())
            }
            ApiError::Create(CreateError::HandleInUse { .. }) => {
                Some("choose another --name, or stop or delete the existing instance".to_owned())
            }
            ApiError::Workspace(WorkspaceError::NotFound(_)) => {
                Some("`aegis workspace list` shows the workspaces".to_owned())
            }
            ApiError::Workspace(WorkspaceError::Volume(e)) => e.hint(),
            ApiError::Workspace(_) => None,
            ApiError::Forbidden { .. } => Some(
                "an instance daemon's socket allows `GET /v1/status`, `GET /v1/openapi.json` and, \
                 for its own instance only: info, start, stop, restart, pause, resume, exec and its \
                 processes, \
                 logs, expose and unexpose"
                    .to_owned(),
            ),
            ApiError::BadRequest(_)
            | ApiError::Name(_)
            | ApiError::NoRoute(_)
            | ApiError::NotFound(_)
            | ApiError::Conflict(_)
            | ApiError::Data(_)
            | ApiError::Spawn(_)
            | ApiError::Internal(_)
            | ApiError::Expose(ExposeError::Spec(_))
            | ApiError::Create(
                CreateError::Spec(_) | CreateError::Registry(_) | CreateError::Dir { .. },
            ) => None,
        }
    }
}

fn workspace_status(e: &WorkspaceError) -> StatusCode {
    match e {
        WorkspaceError::BadName { .. }
        | WorkspaceError::RelativePath(_)
        | WorkspaceError::HostDir { .. }
        | WorkspaceError::Size { .. }
        | WorkspaceError::SizeNotApplicable(_)
        | WorkspaceError::Kind(_) => StatusCode::BAD_REQUEST,
        WorkspaceError::NotFound(_) => StatusCode::NOT_FOUND,
        WorkspaceError::Exists(_)
        | WorkspaceError::InUse { .. }
        | WorkspaceError::VolumeTaken { .. } => StatusCode::CONFLICT,
        WorkspaceError::Io { .. } | WorkspaceError::Volume(_) | WorkspaceError::Corrupt { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

fn lifecycle_status(e: &LifecycleError) -> StatusCode {
    match e {
        LifecycleError::Invalid(_)
        | LifecycleError::AlreadyExposed { .. }
        | LifecycleError::Disabled { .. }
        | LifecycleError::Stopped { .. }
        | LifecycleError::Refused { .. } => StatusCode::CONFLICT,
        LifecycleError::Spawn { .. } => StatusCode::BAD_REQUEST,
        LifecycleError::Gone { .. } | LifecycleError::NotExposed { .. } => StatusCode::NOT_FOUND,
        LifecycleError::Image { source, .. } => image_status(source),
        LifecycleError::Secrets { source, .. } => secret_status(source, SecretUse::AtStart),
        LifecycleError::Boot { .. } | LifecycleError::Control { .. } => StatusCode::BAD_GATEWAY,
        LifecycleError::Vmm { .. } | LifecycleError::Registry { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// Where a secret error arose, which decides what a missing secret means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretUse {
    /// A secret route named it: the resource itself is missing (404).
    Direct,
    /// A create or `PUT /v1/instances/{id}/secrets` body named it: a bad request (400).
    Referenced,
    /// The stored configuration of an instance being started names it: the request conflicts
    /// with the state of the store (409).
    AtStart,
}

fn secret_status(e: &SecretError, used: SecretUse) -> StatusCode {
    match e {
        SecretError::InvalidName(_)
        | SecretError::InvalidValue { .. }
        | SecretError::TooLarge { .. } => StatusCode::BAD_REQUEST,
        SecretError::NotFound { .. } => match used {
            SecretUse::Direct => StatusCode::NOT_FOUND,
            SecretUse::Referenced => StatusCode::BAD_REQUEST,
            SecretUse::AtStart => StatusCode::CONFLICT,
        },
        SecretError::Decrypt { .. }
        | SecretError::Encrypt { .. }
        | SecretError::WrappedKey { .. }
        | SecretError::Key(_)
        | SecretError::Registry(_)
        | SecretError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Where a kit error arose, which decides what a missing kit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KitUse {
    /// A kit route named it: the resource itself is missing (404).
    Direct,
    /// A create body named it: a bad request (400).
    Referenced,
}

fn kit_status(e: &KitError, used: KitUse) -> StatusCode {
    match e {
        KitError::NotFound { .. } => match used {
            KitUse::Direct => StatusCode::NOT_FOUND,
            KitUse::Referenced => StatusCode::BAD_REQUEST,
        },
        KitError::BadName(_)
        | KitError::Manifest(_)
        | KitError::Installed { .. }
        | KitError::BaseDir(_) => StatusCode::BAD_REQUEST,
        KitError::AlreadyInstalled { .. } => StatusCode::CONFLICT,
        KitError::Io { .. } | KitError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn router_status(e: &RouterError) -> StatusCode {
    match e {
        RouterError::PortInUse { .. } => StatusCode::CONFLICT,
        RouterError::Bind { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn image_status(e: &ImageError) -> StatusCode {
    use aegis_image::pull::PullError;
    match e {
        ImageError::InvalidReference { .. } | ImageError::TagRequired | ImageError::Import(_) => {
            StatusCode::BAD_REQUEST
        }
        ImageError::NotFound { .. } => StatusCode::NOT_FOUND,
        ImageError::Pull(e) => match **e {
            PullError::NotFound { .. } => StatusCode::NOT_FOUND,
            PullError::Unauthorized { .. } => StatusCode::FORBIDDEN,
            PullError::Unreachable { .. }
            | PullError::DigestMismatch { .. }
            | PullError::Oversized { .. }
            | PullError::ManifestTooLarge { .. }
            | PullError::ConfigTooLarge { .. }
            | PullError::LayersTooLarge { .. }
            | PullError::Registry { .. }
            | PullError::Manifest { .. } => StatusCode::BAD_GATEWAY,
            PullError::DeadlineExceeded { .. } | PullError::Stalled { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            PullError::Credentials { .. }
            | PullError::Store { .. }
            | PullError::Build { .. }
            | PullError::Interrupted { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        },
        ImageError::Store(_) | ImageError::Build { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %error_chain(&self), "request failed");
        }
        let body = ErrorBody {
            error: error_chain(&self),
            hint: self.hint(),
        };
        (status, axum::Json(body)).into_response()
    }
}

/// Fallback for unknown routes.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::InstanceId;
    use crate::lifecycle::spec::SpecError;
    use crate::lifecycle::state::{Event, InvalidTransition};
    use crate::names::{self, NameKind};
    use aegis_proto::api::InstanceStatus;

    fn bad_name(kind: NameKind) -> NameError {
        names::check(kind, "../x").unwrap_err()
    }

    #[test]
    fn maps_every_kit_error_to_a_status() {
        use crate::kits::{ManifestError, PresetError};
        let missing = || KitError::NotFound { name: "k".into() };
        let manifest = || ManifestError::Invalid {
            field: "name".into(),
            problem: "p".into(),
        };
        let rows: Vec<(ApiError, u16)> = vec![
            (ApiError::Kit(missing()), 404),
            (ApiError::Create(CreateError::Kit(missing())), 400),
            (ApiError::Kit(KitError::Manifest(manifest())), 400),
            (
                ApiError::Kit(KitError::Installed {
                    path: "/k.json".into(),
                    source: manifest(),
                }),
                400,
            ),
            (ApiError::Kit(KitError::BaseDir("x".into())), 400),
            (
                ApiError::Kit(KitError::BadName(bad_name(NameKind::Kit))),
                400,
            ),
            (
                ApiError::Create(CreateError::Kit(KitError::BadName(bad_name(NameKind::Kit)))),
                400,
            ),
            (
                ApiError::Kit(KitError::AlreadyInstalled {
                    name: "k".into(),
                    version: "1".into(),
                }),
                409,
            ),
            (ApiError::Kit(KitError::Task("t".into())), 500),
            (
                ApiError::Create(CreateError::Preset(PresetError::MemoryAboveMax {
                    kit: "k".into(),
                    value: 2,
                    max: 1,
                })),
                400,
            ),
            (
                ApiError::Lifecycle(LifecycleError::Refused {
                    id: InstanceId::from_stored("i".into()),
                    reason: "kit k needs secrets".into(),
                    hint: None,
                }),
                409,
            ),
        ];
        for (err, status) in rows {
            assert_eq!(err.status().as_u16(), status, "{err}");
        }
        let hint = ApiError::Kit(missing()).hint().unwrap_or_default();
        assert!(hint.contains("aegis kit install PATH"), "{hint}");
    }

    #[test]
    fn maps_every_secret_error_to_a_status() {
        use crate::secrets::KeyError;
        let missing = || SecretError::NotFound {
            names: vec!["API_KEY".into()],
        };
        let decrypt = || SecretError::Decrypt {
            name: "API_KEY".into(),
        };
        let rows: Vec<(ApiError, u16)> = vec![
            (
                ApiError::Secret(SecretError::InvalidName(bad_name(NameKind::Secret))),
                400,
            ),
            (
                ApiError::InstanceSecrets(SecretError::InvalidName(bad_name(NameKind::Secret))),
                400,
            ),
            (
                ApiError::Secret(SecretError::InvalidValue {
                    name: "A".into(),
                    problem: "p".into(),
                }),
                400,
            ),
            (
                ApiError::Secret(SecretError::TooLarge { bytes: 2, max: 1 }),
                400,
            ),
            (ApiError::Secret(missing()), 404),
            (ApiError::Create(CreateError::Secrets(missing())), 400),
            (ApiError::InstanceSecrets(missing()), 400),
            (
                ApiError::Lifecycle(LifecycleError::Secrets {
                    id: InstanceId::from_stored("i".into()),
                    source: missing(),
                }),
                409,
            ),
            (ApiError::Secret(decrypt()), 500),
            (
                ApiError::Lifecycle(LifecycleError::Secrets {
                    id: InstanceId::from_stored("i".into()),
                    source: decrypt(),
                }),
                500,
            ),
            (
                ApiError::Secret(SecretError::Encrypt { name: "A".into() }),
                500,
            ),
            (
                ApiError::Secret(SecretError::Key(KeyError::Permissions {
                    path: "/h/master.key".into(),
                    mode: 0o644,
                })),
                500,
            ),
            (ApiError::Secret(SecretError::Task("t".into())), 500),
        ];
        for (err, want) in rows {
            assert_eq!(err.status().as_u16(), want, "{err}");
        }
    }

    #[test]
    fn secret_errors_name_the_secret_and_the_fix() {
        let err = ApiError::Lifecycle(LifecycleError::Secrets {
            id: InstanceId::from_stored("inst-1".into()),
            source: SecretError::NotFound {
                names: vec!["API_KEY".into()],
            },
        });
        assert_eq!(
            error_chain(&err),
            "cannot inject the secrets of instance inst-1: secret API_KEY does not exist"
        );
        assert_eq!(
            err.hint().as_deref(),
            Some(
                "set it with `aegis secret set API_KEY`, or change the instance's secrets with \
                 `aegis instance secrets inst-1 NAME...`"
            )
        );
        let err = ApiError::Create(CreateError::Secrets(SecretError::NotFound {
            names: vec!["A".into(), "B".into()],
        }));
        assert_eq!(error_chain(&err), "secrets A, B do not exist");
        let err = ApiError::Secret(SecretError::Key(crate::secrets::KeyError::Permissions {
            path: "/h/master.key".into(),
            mode: 0o644,
        }));
        assert_eq!(
            error_chain(&err),
            "master key /h/master.key is accessible by group or others (mode 0644), so it may \
             have leaked"
        );
        assert!(err
            .hint()
            .unwrap()
            .starts_with("run `chmod 600 /h/master.key`"));
    }

    #[test]
    fn maps_every_kind_to_a_status() {
        let rows: Vec<(ApiError, u16)> = vec![
            (ApiError::BadRequest("x".into()), 400),
            (ApiError::Name(bad_name(NameKind::InstanceRef)), 400),
            (
                ApiError::Create(CreateError::Spec(SpecError::Handle(bad_name(
                    NameKind::Handle,
                )))),
                400,
            ),
            (
                ApiError::Workspace(WorkspaceError::BadName(bad_name(NameKind::Workspace))),
                400,
            ),
            (ApiError::UnknownInstance("x".into()), 404),
            (
                ApiError::Forbidden {
                    instance: "inst-1".into(),
                    method: Method::GET,
                    path: "/v1/secrets".into(),
                },
                403,
            ),
            (ApiError::Spawn("x".into()), 400),
            (ApiError::Create(CreateError::Spec(SpecError::Command)), 400),
            (
                ApiError::Create(CreateError::NoCommand { image: "i".into() }),
                400,
            ),
            (
                ApiError::Create(CreateError::HandleInUse {
                    handle: "h".into(),
                    id: "i".into(),
                    state: InstanceStatus::Running,
                }),
                409,
            ),
            (
                ApiError::Create(CreateError::Image(ImageError::NotFound {
                    reference: "r".into(),
                    default: false,
                })),
                404,
            ),
            (
                ApiError::Lifecycle(LifecycleError::Invalid(InvalidTransition {
                    from: InstanceStatus::Stopped,
                    event: Event::Pause,
                })),
                409,
            ),
            (
                ApiError::Lifecycle(LifecycleError::Disabled {
                    id: InstanceId::from_stored("i".into()),
                }),
                409,
            ),
            (
                ApiError::Lifecycle(LifecycleError::Gone {
                    id: InstanceId::from_stored("i".into()),
                }),
                404,
            ),
        ];
        for (err, want) in rows {
            assert_eq!(err.status().as_u16(), want, "{err}");
        }
    }

    #[test]
    fn body_carries_chain_and_hint() {
        let err = ApiError::Lifecycle(LifecycleError::Disabled {
            id: InstanceId::from_stored("inst-1".into()),
        });
        assert_eq!(err.to_string(), "instance inst-1 is disabled");
        assert_eq!(
            err.hint().as_deref(),
            Some("start it first: `aegis instance start inst-1`")
        );
    }
}
