//! The client against a small in-process HTTP server on a unix socket that answers like aegisd
//! does: checks the wire shapes (routes, query strings, status codes, NDJSON framing, error
//! bodies) without needing a daemon or a VM. Behaviour against the real daemon is covered by the
//! CLI's end-to-end tests.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

use aegis_client::{Client, ClientError, InstanceAction, LogsQuery};
use aegis_proto::api::{CreateInstance, ExecEvent, ExecRequest, InstanceStatus, LogSource};

const INSTANCE: &str = r#"{"id":"inst-1","handle":"web","state":"running","enabled":true,
"image_ref":"aegis.local/default:latest","command":["sleep","9"],"env_keys":[],
"created_at":"2024-05-01T10:00:00Z","stopped_at":null,"last_active_at":null,"endpoints":[],
"secret_keys":[],"kit":null,"memory_mb":512,"vcpus":1,"workspace":null,"reason":null,
"exit_code":null,"vmm_pid":42,"idle_pause_secs":60,"idle_stop_secs":null,"egress":true,
"snapshot":true}"#;

type Seen = Arc<Mutex<Vec<String>>>;

async fn answer(req: Request<Incoming>, seen: Seen) -> Result<Response<Full<Bytes>>, Infallible> {
    let line = format!("{} {}", req.method(), req.uri());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    seen.lock()
        .unwrap()
        .push(format!("{line} {}", String::from_utf8_lossy(&body)));
    let (status, text): (u16, String) = match line.as_str() {
        "GET /v1/status" => (
            200,
            r#"{"status":"running","version":"0.1.0","backend":"qemu","accelerator":"tcg",
            "accelerator_reason":"PVM","capabilities":{},"instances":{"running":1},"pid":7}"#
                .to_owned(),
        ),
        "POST /v1/instances" if body.starts_with(b"{\"handle\":\"web\"") => {
            (200, INSTANCE.to_owned())
        }
        "POST /v1/instances" => (201, INSTANCE.to_owned()),
        "GET /v1/instances?state=running" => (200, format!("[{INSTANCE}]")),
        "GET /v1/instances/nope" => (
            404,
            r#"{"error":"no instance \"nope\"","hint":"run `aegis instance list`"}"#.to_owned(),
        ),
        "POST /v1/instances/web/pause" => (200, INSTANCE.replace("running", "paused")),
        "DELETE /v1/instances/web" => (200, r#"{"deleted":"inst-1"}"#.to_owned()),
        "POST /v1/instances/web/exec" => (
            200,
            [
                r#"{"exec_id":"exec-1","started_at":"2024-05-01T10:00:00Z"}"#,
                r#"{"ts":"t","stream":"stdout","line":"hi","source":"exec","instance_id":"inst-1","exec_id":"exec-1"}"#,
                "",
                r#"{"done":true,"exit_code":3,"exec_id":"exec-1"}"#,
            ]
            .join("\n"),
        ),
        l if l.starts_with("GET /v1/instances/web/logs") => (
            200,
            r#"{"ts":"t","stream":"stderr","line":"part","source":"server","instance_id":"inst-1","partial":true}
"#
            .to_owned(),
        ),
        "POST /v1/shutdown" => (200, "{}".to_owned()),
        _ => (400, "plain text rejection".to_owned()),
    };
    Ok(Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .body(Full::new(Bytes::from(text)))
        .unwrap())
}

async fn fake_daemon() -> (Client, Seen, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("aegisd.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let seen = Seen::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, seen.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (Client::new(socket), seen, dir)
}

#[tokio::test]
async fn routes_bodies_and_errors() {
    let (client, seen, _dir) = fake_daemon().await;

    let status = client.status().await.unwrap();
    assert_eq!((status.accelerator.as_str(), status.pid), ("tcg", 7));

    let created = client
        .create_instance(&CreateInstance {
            command: vec!["sleep".into(), "9".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!created.restarted);
    let again = client
        .create_instance(&CreateInstance {
            handle: Some("web".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(again.restarted);

    let running = client
        .list_instances(Some(InstanceStatus::Running))
        .await
        .unwrap();
    assert_eq!(running[0].handle.as_deref(), Some("web"));

    let paused = client
        .instance_action("web", InstanceAction::Pause)
        .await
        .unwrap();
    assert_eq!(paused.state, InstanceStatus::Paused);

    let err = client.instance("nope").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(err.to_string(), "no instance \"nope\"");
    assert_eq!(err.hint().as_deref(), Some("run `aegis instance list`"));

    let err = client.openapi().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "aegisd answered 400 Bad Request: plain text rejection"
    );

    assert_eq!(
        client.delete_instance("web").await.unwrap().deleted,
        "inst-1"
    );
    client.shutdown().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&"POST /v1/instances {\"command\":[\"sleep\",\"9\"],\"env\":{},\"secrets\":[],\"exposes\":[]}".to_owned()), "{seen:#?}");
}

#[tokio::test]
async fn ndjson_streams() {
    let (client, seen, _dir) = fake_daemon().await;

    let mut exec = client
        .exec(
            "web",
            &ExecRequest {
                command: vec!["echo".into(), "hi".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        exec.next().await,
        Some(Ok(ExecEvent::Started { .. }))
    ));
    match exec.next().await {
        Some(Ok(ExecEvent::Output(entry))) => {
            assert_eq!((entry.line.as_str(), entry.source), ("hi", LogSource::Exec))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        exec.next().await,
        Some(Ok(ExecEvent::Done { exit_code: 3, .. }))
    ));
    assert!(exec.next().await.is_none());

    let query = LogsQuery {
        follow: true,
        tail: Some(5),
        ..Default::default()
    };
    let mut logs = client.logs("web", &query).await.unwrap();
    let entry = logs.next().await.unwrap().unwrap();
    assert!(entry.partial);
    assert!(logs.next().await.is_none());
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("GET /v1/instances/web/logs?follow=1&tail=5 ")));
}

#[tokio::test]
async fn refused_socket_means_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("aegisd.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let err = Client::new(&socket).status().await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
}
