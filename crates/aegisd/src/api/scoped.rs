//! The API as one instance's daemons see it: the routes of [`super::router`] behind a filter
//! that lets through only requests about that one instance ([`check`]) and answers everything
//! else with 403 ([`ApiError::Forbidden`]). [`ScopedSockets`] binds one such socket per kit
//! instance with daemons, for [`crate::kits::Daemons`]; serving is [`Server`]'s.
//!
//! Allowed: `GET /v1/status`, `GET /v1/openapi.json`, and for the own instance (by id or
//! handle) `GET /v1/instances/{id}`, `POST /v1/instances/{id}/{start|stop|restart|pause|
//! resume|exec|expose}`, `GET /v1/instances/{id}/logs` and
//! `DELETE /v1/instances/{id}/expose/{port}`, and its processes:
//! `GET /v1/instances/{id}/execs[/{exec_id}]`, `POST .../execs/{exec_id}/{wait|signal|stdin}`.
//! Refused: everything else (create, delete,
//! disable, secrets, images, kits, workspaces, shutdown, the list of instances, any other
//! instance).
//!
//! The scope limits what a daemon does through the API; it is no sandbox: a daemon runs as
//! `aegisd`'s user.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use aegis_vmm::AcceleratorChoice;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::server::{OnStop, Server};
use super::AppState;
use crate::kits::{ScopedApi, ScopedSocket, ScopedSocketError};
use crate::lifecycle::instances::Instances;
use crate::lifecycle::Ctx;
use crate::provision::Provisioner;

/// How much of a refused request's path the 403 message quotes; paths are the client's, and a
/// message stays readable.
const SHOWN_PATH_BYTES: usize = 200;

/// Lifecycle actions a daemon may ask of its own instance with `POST /v1/instances/{id}/…`.
/// Not `disable`: that would stop the daemons themselves, and an instance is disabled by its
/// user.
const ACTIONS: [&str; 7] = [
    "start", "stop", "restart", "pause", "resume", "exec", "expose",
];

/// What a scoped socket does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Passed on to the API's routes.
    Allowed,
    /// Answered with 403.
    Refused,
}

/// The methods a scoped socket knows; any other (`HEAD`, `PUT`, `OPTIONS`, …) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
    Delete,
}

impl Verb {
    fn of(method: &Method) -> Option<Verb> {
        if *method == Method::GET {
            Some(Verb::Get)
        } else if *method == Method::POST {
            Some(Verb::Post)
        } else if *method == Method::DELETE {
            Some(Verb::Delete)
        } else {
            None
        }
    }
}

/// Whether a socket scoped to the instance `own_id` lets `method path` through. `path` is the
/// request's path as the router matches it (`Uri::path`: no query, not decoded); `resolve`
/// finds the id of the instance an `{id}` segment names (decoded, as handlers get it), as
/// handlers do.
///
/// Fixed segments must match as sent: the router matches them undecoded, so `%65xec` is not
/// `exec` to it either. Only the `{id}` segment is decoded, and it must name the own instance.
/// Empty segments (`//`, a trailing `/`) and dot segments match no route and are refused, as
/// is a segment that is not UTF-8 once decoded.
pub fn check(
    own_id: &str,
    method: &Method,
    path: &str,
    resolve: impl Fn(&str) -> Option<String>,
) -> Access {
    let Some(verb) = Verb::of(method) else {
        return Access::Refused;
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Access::Refused;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Access::Refused;
    }
    let own = |raw: &str| match decode(raw) {
        Some(reference) if resolve(&reference).as_deref() == Some(own_id) => Access::Allowed,
        _ => Access::Refused,
    };
    match (verb, segments.as_slice()) {
        (Verb::Get, ["v1", "status" | "openapi.json"]) => Access::Allowed,
        (Verb::Get, ["v1", "instances", id] | ["v1", "instances", id, "logs"]) => own(id),
        (Verb::Post, ["v1", "instances", id, action]) if ACTIONS.contains(action) => own(id),
        (Verb::Delete, ["v1", "instances", id, "expose", port]) if is_port(port) => own(id),
        (Verb::Get, ["v1", "instances", id, "execs"] | ["v1", "instances", id, "execs", _]) => {
            own(id)
        }
        (Verb::Post, ["v1", "instances", id, "execs", _, "wait" | "signal" | "stdin"]) => own(id),
        _ => Access::Refused,
    }
}

/// A guest port as the router will hand it to the handler: 1 to 5 plain digits.
fn is_port(segment: &str) -> bool {
    (1..=5).contains(&segment.len()) && segment.bytes().all(|b| b.is_ascii_digit())
}

/// Percent-decodes a path segment as axum does for path parameters (`%XX` becomes a byte, a
/// `%` not followed by two hex digits stays), or `None` when the result is not UTF-8 (axum
/// refuses those too).
fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|&b| char::from(b).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(high), Some(low)) => {
                out.push(u8::try_from(high * 16 + low).expect("two hex digits fit a byte"));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The refusal of `method path` by a socket scoped to `instance`.
fn refusal(instance: &str, method: &Method, path: &str) -> ApiError {
    let mut end = path.len().min(SHOWN_PATH_BYTES);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let shown = if end < path.len() {
        format!("{}…", &path[..end])
    } else {
        path.to_owned()
    };
    ApiError::Forbidden {
        instance: instance.to_owned(),
        method: method.clone(),
        path: shown,
    }
}

/// The id of the instance an id-or-handle names, if any.
type Resolver = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What the filter of one scoped socket knows.
#[derive(Clone)]
struct Scope {
    instance_id: String,
    resolve: Resolver,
}

/// `app` behind the filter of `scope`: every request, the unrouted and the wrong-method ones
/// included, goes through [`check`] first.
fn filtered(app: Router, scope: Scope) -> Router {
    app.layer(axum::middleware::from_fn_with_state(scope, enforce))
}

/// Most of a refused request's body read before the refusal is sent.
const REFUSED_BODY_READ: usize = 1 << 20;

async fn enforce(State(scope): State<Scope>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    match check(&scope.instance_id, req.method(), path, |r| {
        (scope.resolve)(r)
    }) {
        Access::Allowed => next.run(req).await,
        Access::Refused => {
            tracing::debug!(
                instance = %scope.instance_id,
                method = %req.method(),
                path,
                "scoped socket refused a request"
            );
            let response = refusal(&scope.instance_id, req.method(), path).into_response();
            // Read what the client sends before answering, so that it gets the answer: a
            // connection closed on an unread body breaks the client's write (EPIPE). Bounded:
            // past the bound the connection closes.
            let _ = axum::body::to_bytes(req.into_body(), REFUSED_BODY_READ).await;
            response
        }
    }
}

/// The API routes of [`super::router`] as the daemons of the instance `instance_id` may use
/// them.
pub fn router(state: AppState, instance_id: String) -> Router {
    let lookup = state.clone();
    let scope = Scope {
        instance_id,
        resolve: Arc::new(move |reference| {
            super::instances::find(&lookup, reference)
                .ok()
                .map(|handle| handle.id.to_string())
        }),
    };
    filtered(super::router(state), scope)
}

/// [`AppState`] without keeping it alive: the `Provisioner` holds the `Daemons` that hold
/// [`ScopedSockets`], which must not hold it in turn.
#[derive(Debug, Clone)]
struct WeakState {
    instances: Weak<Instances>,
    ctx: Weak<Ctx>,
    provision: Weak<Provisioner>,
    accel: AcceleratorChoice,
    shutdown: CancellationToken,
}

impl WeakState {
    fn upgrade(&self) -> Option<AppState> {
        Some(AppState {
            instances: self.instances.upgrade()?,
            ctx: self.ctx.upgrade()?,
            provision: self.provision.upgrade()?,
            accel: self.accel.clone(),
            shutdown: self.shutdown.clone(),
            // Scoped sockets do not show where the E2B listener is.
            e2b: None,
        })
    }
}

/// Binds the sockets scoped to one instance each, in one directory (`~/.aegis/run/kit-api/`,
/// mode 0700), as `ID.sock` (mode 0600). It exists before the instances do (their actors start
/// daemons while they load), so sockets may be bound before [`ScopedSockets::attach`]: they
/// accept connections from then on, and the kernel queues those that come earlier.
#[derive(Debug)]
pub struct ScopedSockets {
    dir: PathBuf,
    server: Server,
    state: watch::Sender<Option<WeakState>>,
}

impl ScopedSockets {
    /// Sockets in `dir`, served by `server`. Sockets left in `dir` by a daemon that did not
    /// end cleanly are removed.
    ///
    /// # Errors
    /// The directory cannot be emptied or created.
    pub fn open(dir: PathBuf, server: Server) -> Result<ScopedSockets, std::io::Error> {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        prepare_dir(&dir)?;
        Ok(ScopedSockets {
            dir,
            server,
            state: watch::Sender::new(None),
        })
    }

    /// Gives the sockets the state the API serves (once it exists); they hold it weakly.
    pub fn attach(&self, state: &AppState) {
        self.state.send_replace(Some(WeakState {
            instances: Arc::downgrade(&state.instances),
            ctx: Arc::downgrade(&state.ctx),
            provision: Arc::downgrade(&state.provision),
            accel: state.accel.clone(),
            shutdown: state.shutdown.clone(),
        }));
    }

    /// Where the socket of the instance `instance_id` is.
    pub fn path(&self, instance_id: &str) -> PathBuf {
        self.dir.join(format!("{instance_id}.sock"))
    }
}

fn prepare_dir(dir: &Path) -> Result<(), std::io::Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

impl ScopedApi for ScopedSockets {
    fn bind(&self, instance_id: &str) -> Result<ScopedSocket, ScopedSocketError> {
        use std::os::unix::fs::PermissionsExt;
        prepare_dir(&self.dir).map_err(|source| ScopedSocketError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.path(instance_id);
        let failed = |source| ScopedSocketError::Bind {
            path: path.clone(),
            source,
        };
        // Left by an earlier run of this instance's daemons that did not end cleanly.
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e)),
        }
        let listener = UnixListener::bind(&path).map_err(failed)?;
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            let _ = std::fs::remove_file(&path);
            return Err(failed(e));
        }
        let stop = CancellationToken::new();
        let guard = ScopedSocket::new(path, stop.clone());
        let server = self.server.clone();
        let mut state = self.state.subscribe();
        let instance_id = instance_id.to_owned();
        self.server.spawn(async move {
            let weak = tokio::select! {
                ready = state.wait_for(Option::is_some) => ready.ok().and_then(|s| s.clone()),
                () = stop.cancelled() => None,
            };
            // Gone: the daemon is ending.
            let Some(app_state) = weak.and_then(|w| w.upgrade()) else {
                return;
            };
            let app = router(app_state, instance_id);
            server.serve(listener, app, stop, OnStop::Close).await;
        });
        Ok(guard)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use axum::http::Uri;
    use axum::routing::{get, post};

    use super::*;

    /// The own instance is inst-1 (handle web); inst-2 (handle db) is another one.
    fn resolve(reference: &str) -> Option<String> {
        match reference {
            "inst-1" | "web" => Some("inst-1".to_owned()),
            "inst-2" | "db" => Some("inst-2".to_owned()),
            _ => None,
        }
    }

    fn access(method: &str, target: &str) -> Access {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        // The path as the middleware sees it: what `Uri` makes of the request target.
        let uri: Uri = target.parse().unwrap_or_else(|e| panic!("{target}: {e}"));
        check("inst-1", &method, uri.path(), resolve)
    }

    #[test]
    fn scoped_socket_allows_only_its_own_instance() {
        let allowed = [
            ("GET", "/v1/status"),
            ("GET", "/v1/status?verbose=1"),
            ("GET", "/v1/openapi.json"),
            ("GET", "http://aegisd/v1/status"),
            ("GET", "/v1/instances/inst-1"),
            ("GET", "/v1/instances/web"),
            ("GET", "/v1/instances/%77eb"),
            ("GET", "/v1/instances/web?x=/../db"),
            ("POST", "/v1/instances/web/start"),
            ("POST", "/v1/instances/web/stop"),
            ("POST", "/v1/instances/inst-1/restart"),
            ("POST", "/v1/instances/web/pause"),
            ("POST", "/v1/instances/web/resume"),
            ("POST", "/v1/instances/web/exec"),
            ("POST", "/v1/instances/web/exec?x=1"),
            ("GET", "/v1/instances/web/logs"),
            ("GET", "/v1/instances/web/logs?follow=1&tail=10"),
            ("POST", "/v1/instances/web/expose"),
            ("DELETE", "/v1/instances/web/expose/8080"),
        ];
        for (method, target) in allowed {
            assert_eq!(access(method, target), Access::Allowed, "{method} {target}");
        }
        let refused = [
            // Everything that is not about one instance.
            ("POST", "/v1/instances"),
            ("GET", "/v1/instances"),
            ("GET", "/v1/instances?state=running"),
            ("POST", "/v1/shutdown"),
            ("GET", "/v1/secrets"),
            ("PUT", "/v1/secrets/API_KEY"),
            ("DELETE", "/v1/secrets/API_KEY"),
            ("GET", "/v1/images"),
            ("GET", "/v1/images/alpine"),
            ("POST", "/v1/images/pull"),
            ("POST", "/v1/images/import"),
            ("POST", "/v1/images/prune"),
            ("DELETE", "/v1/images/alpine"),
            ("GET", "/v1/kits"),
            ("POST", "/v1/kits"),
            ("GET", "/v1/kits/example"),
            ("DELETE", "/v1/kits/example"),
            ("GET", "/v1/workspaces"),
            ("POST", "/v1/workspaces"),
            ("DELETE", "/v1/workspaces/w"),
            ("GET", "http://aegisd/v1/secrets"),
            // The own instance, but not these.
            ("DELETE", "/v1/instances/web"),
            ("POST", "/v1/instances/web/disable"),
            ("PUT", "/v1/instances/web/secrets"),
            ("HEAD", "/v1/instances/web"),
            ("OPTIONS", "/v1/status"),
            ("PATCH", "/v1/instances/web"),
            ("POST", "/v1/status"),
            ("GET", "/v1/instances/web/exec"),
            ("POST", "/v1/instances/web/logs"),
            ("POST", "/v1/instances/web/frobnicate"),
            ("DELETE", "/v1/instances/web/expose"),
            ("DELETE", "/v1/instances/web/expose/8080/x"),
            ("DELETE", "/v1/instances/web/expose/%38080"),
            ("DELETE", "/v1/instances/web/expose/123456"),
            // Other instances, existing or not.
            ("GET", "/v1/instances/db"),
            ("GET", "/v1/instances/inst-2"),
            ("POST", "/v1/instances/inst-2/exec"),
            ("GET", "/v1/instances/db/logs"),
            ("DELETE", "/v1/instances/db/expose/80"),
            ("GET", "/v1/instances/nope"),
            // Tricks: dot segments, encoded dots and slashes, empty segments.
            ("POST", "/v1/instances/db/../web/exec"),
            ("POST", "/v1/instances/web/../db/exec"),
            ("POST", "/v1/instances/web/./exec"),
            ("GET", "/v1/instances/./web"),
            ("GET", "/v1/instances/web/logs/../../db/logs"),
            ("POST", "/v1/instances/%2e%2e/exec"),
            ("POST", "/v1/instances/%2E%2E/db/exec"),
            ("POST", "/v1/instances/web%2F..%2Fdb/exec"),
            ("POST", "/v1/instances/web%2fexec"),
            ("POST", "/v1//instances/web/exec"),
            ("POST", "//v1/instances/web/exec"),
            ("POST", "/v1/instances//web/exec"),
            ("GET", "/v1/instances/web/"),
            ("POST", "/v1/instances/web/exec/"),
            ("GET", "/v1/status/"),
            ("GET", "/"),
            ("GET", "/v2/status"),
            ("GET", "/%76%31/status"),
            // Fixed segments are matched as sent, as the router does.
            ("POST", "/v1/instances/web/%65xec"),
            ("POST", "/v1/instances/web/%73tart"),
            ("POST", "/v1/instances/web/%64isable"),
            // Not UTF-8 once decoded.
            ("GET", "/v1/instances/%ff"),
            ("GET", "/v1/instances/web%ff"),
        ];
        for (method, target) in refused {
            assert_eq!(access(method, target), Access::Refused, "{method} {target}");
        }
        // Without a leading slash (never from `Uri::path`, refused all the same).
        assert_eq!(
            check("inst-1", &Method::GET, "v1/status", resolve),
            Access::Refused
        );
    }

    #[test]
    fn decodes_as_the_router_does() {
        assert_eq!(decode("web").as_deref(), Some("web"));
        assert_eq!(decode("%77%45b").as_deref(), Some("wEb"));
        assert_eq!(decode("%2e%2E").as_deref(), Some(".."));
        assert_eq!(decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(decode("100%").as_deref(), Some("100%"));
        assert_eq!(decode("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(decode("%c3%a9").as_deref(), Some("é"));
        assert_eq!(decode("%ff"), None);
    }

    #[test]
    fn refusal_is_a_403_naming_the_scope_and_the_request() {
        let err = refusal("inst-1", &Method::POST, "/v1/instances");
        assert_eq!(err.status().as_u16(), 403);
        assert_eq!(
            err.to_string(),
            "this socket is scoped to instance inst-1: POST /v1/instances is not allowed"
        );
        let long = format!("/v1/{}", "a".repeat(500));
        let text = refusal("inst-1", &Method::GET, &long).to_string();
        assert!(text.len() < 300 && text.contains("a…"), "{text}");
    }

    /// One HTTP/1.1 request on `socket`: status and body.
    fn request(socket: &Path, method: &str, target: &str) -> (u16, String) {
        let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: aegisd\r\nConnection: close\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = raw.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    /// The filter covers every request of a real router served on a socket: a route, an
    /// unknown path (the fallback) and a known path with a wrong method.
    #[tokio::test(flavor = "multi_thread")]
    async fn filtered_router_refuses_with_the_api_error_body() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let app = Router::new()
            .route("/v1/instances/:id", get(|| async { "info" }))
            .route("/v1/instances/:id/exec", post(|| async { "exec" }))
            .fallback(super::super::error::not_found);
        let scope = Scope {
            instance_id: "inst-1".to_owned(),
            resolve: Arc::new(resolve),
        };
        let server = Server::new();
        let stop = CancellationToken::new();
        let listener = UnixListener::bind(&socket).unwrap();
        server.spawn(server.clone().serve(
            listener,
            filtered(app, scope),
            stop.clone(),
            OnStop::Close,
        ));
        let rows = [
            ("GET", "/v1/instances/web", 200, "info"),
            ("POST", "/v1/instances/inst-1/exec", 200, "exec"),
            ("GET", "/v1/instances/db", 403, "GET /v1/instances/db"),
            ("GET", "/v1/secrets", 403, "GET /v1/secrets"),
            (
                "GET",
                "/v1/instances/web/exec",
                403,
                "GET /v1/instances/web/exec",
            ),
        ];
        for (method, target, status, text) in rows {
            let socket = socket.clone();
            let (got, body) = tokio::task::spawn_blocking(move || request(&socket, method, target))
                .await
                .unwrap();
            assert_eq!(got, status, "{method} {target}: {body}");
            assert!(body.contains(text), "{method} {target}: {body}");
            if status == 403 {
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(
                    json["error"],
                    format!("this socket is scoped to instance inst-1: {text} is not allowed")
                );
                assert!(json["hint"].as_str().is_some_and(|h| h.contains("own")));
            }
        }
        stop.cancel();
        server.wait(Duration::from_secs(5)).await;
    }

    /// Bound before the state exists (as while the instances load), the socket is there with
    /// mode 0600 in a 0700 directory; dropping the guard removes it.
    #[tokio::test]
    async fn bound_socket_is_private_and_removed_with_its_guard() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("run/kit-api");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("inst-9.sock"), "left by a crash").unwrap();
        let server = Server::new();
        let sockets = ScopedSockets::open(dir.clone(), server.clone()).unwrap();
        // Leftovers are gone.
        assert!(!dir.join("inst-9.sock").exists());
        let guard = sockets.bind("inst-1").unwrap();
        let path = sockets.path("inst-1");
        assert_eq!(guard.path(), path);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        // A second bind of the same instance replaces the socket.
        let again = sockets.bind("inst-1").unwrap();
        // The first guard no longer owns the path: dropping it leaves the new socket.
        drop(guard);
        assert!(path.exists());
        drop(again);
        assert!(!path.exists());
        server.wait(Duration::from_secs(5)).await;
        // A path over the limit of unix sockets is an error naming it.
        let err = sockets.bind(&"x".repeat(120)).unwrap_err();
        assert!(
            crate::images::error_chain(&err).starts_with("cannot bind the socket "),
            "{err}"
        );
    }
}
