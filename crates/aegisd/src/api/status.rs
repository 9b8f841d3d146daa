//! `GET /v1/status`, `GET /v1/openapi.json`, `POST /v1/shutdown`.

use std::collections::BTreeMap;

use aegis_proto::api::Status;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

use super::{AppState, OPENAPI};

pub async fn status(State(state): State<AppState>) -> Json<Status> {
    let caps = state.ctx.boot.vmm.capabilities();
    let capabilities = BTreeMap::from([
        ("pause_resume".to_owned(), caps.pause_resume),
        ("snapshot".to_owned(), caps.snapshot),
        ("port_forwarding".to_owned(), caps.port_forwarding),
        (
            "runtime_port_forwarding".to_owned(),
            caps.runtime_port_forwarding,
        ),
        ("exec".to_owned(), true),
        ("logs".to_owned(), true),
    ]);
    let mut instances: BTreeMap<String, u32> = BTreeMap::new();
    for v in state.instances.list() {
        *instances.entry(v.state.as_str().to_owned()).or_default() += 1;
    }
    Json(Status {
        status: "running".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        backend: state.ctx.boot.vmm.name().to_owned(),
        accelerator: state.accel.accelerator.as_str().to_owned(),
        accelerator_reason: state.accel.reason.clone(),
        capabilities,
        instances,
        pid: std::process::id(),
        snapshot_bytes: crate::lifecycle::snapshot::total_bytes(&state.ctx.config.instances_dir()),
        e2b: state.e2b.map(|addr| addr.to_string()),
    })
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

pub async fn shutdown(State(state): State<AppState>) -> Json<serde_json::Value> {
    tracing::info!("shutdown requested over the API");
    state.shutdown.cancel();
    Json(serde_json::json!({ "status": "shutting down" }))
}
