//! `/v1/secrets` (set, list, delete) and `PUT /v1/instances/{id}/secrets`. No route answers with
//! a value. Bodies of these routes are parsed here rather than by [`super::json::ApiJson`] so
//! that no rejection can echo a value back (serde's type errors quote what they got), and they
//! are never logged.

use aegis_proto::api::{Deleted, Instance, SecretInfo, SetInstanceSecrets};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::Value;

use super::error::ApiError;
use super::instances::find;
use super::json::{ApiJson, ApiPath};
use super::AppState;
use crate::lifecycle::command::Command;
use crate::registry::SecretMeta;
use crate::secrets::SecretValue;

fn info(meta: SecretMeta) -> SecretInfo {
    SecretInfo {
        name: meta.name,
        created_at: meta.created_at,
        updated_at: meta.updated_at,
    }
}

/// `PUT /v1/secrets/{name}` `{"value": "..."}` → 201 (new) or 200 (replaced) with the secret's
/// name and dates.
pub async fn put(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SecretInfo>), ApiError> {
    let value = parse_value(&headers, &body)?;
    drop(body);
    let (meta, created) = state.ctx.secrets.set(&name, value).await?;
    tracing::info!(secret = %meta.name, created, "secret set");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info(meta))))
}

/// `GET /v1/secrets` → names and dates, by name.
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    let metas = state.ctx.secrets.list().await?;
    Ok(Json(metas.into_iter().map(info).collect()))
}

/// `DELETE /v1/secrets/{name}` → `{"deleted": name}`.
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Deleted>, ApiError> {
    state.ctx.secrets.delete(&name).await?;
    tracing::info!(secret = %name, "secret deleted");
    Ok(Json(Deleted { deleted: name }))
}

/// `PUT /v1/instances/{id}/secrets` `{"secrets": [...]}` → the instance. Every name must exist
/// (and decrypt) now; the set applies from the instance's next boot on, whatever its state.
pub async fn set_for_instance(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<SetInstanceSecrets>,
) -> Result<Json<Instance>, ApiError> {
    let handle = find(&state, &id)?;
    let secrets = state
        .ctx
        .secrets
        .check(&req.secrets)
        .await
        .map_err(ApiError::InstanceSecrets)?;
    let view = handle
        .request(|reply| Command::SetSecrets { secrets, reply })
        .await?;
    Ok(Json(view))
}

/// The `value` of a `PUT /v1/secrets/{name}` body, with errors that never quote the body.
fn parse_value(headers: &HeaderMap, body: &[u8]) -> Result<SecretValue, ApiError> {
    let bad = |m: &str| ApiError::BadRequest(format!("invalid request body: {m}"));
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim() == "application/json")
        });
    if !json {
        return Err(ApiError::BadRequest(
            "request body must be JSON (Content-Type: application/json)".to_owned(),
        ));
    }
    // Syntax errors of `serde_json::Value` report a position, never the text around it.
    let parsed: Value = serde_json::from_slice(body).map_err(|e| {
        bad(&format!(
            "not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(mut fields) = parsed else {
        return Err(bad(r#"expected an object {"value": "<string>"}"#));
    };
    if let Some(unknown) = fields.keys().find(|k| k.as_str() != "value") {
        return Err(bad(&format!("unknown field `{unknown}`, expected `value`")));
    }
    match fields.remove("value") {
        Some(Value::String(value)) => Ok(SecretValue::new(value)),
        Some(_) => Err(bad("field `value` must be a string")),
        None => Err(bad("missing field `value`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h
    }

    #[test]
    fn parses_the_value() {
        let v = parse_value(&json_headers(), br#"{"value":"s3cret"}"#).unwrap();
        assert_eq!(v.expose(), "s3cret");
        let v = parse_value(&json_headers(), br#"{"value":""}"#).unwrap();
        assert_eq!(v.expose(), "");
    }

    #[test]
    fn errors_never_quote_the_body() {
        let canary = "canary-9d1e";
        let rows: Vec<(String, &str)> = vec![
            (format!(r#"{{"value": 1{canary}}}"#), "not valid JSON"),
            (format!(r#""{canary}""#), "expected an object"),
            (format!(r#"["{canary}"]"#), "expected an object"),
            (format!(r#"{{"value": ["{canary}"]}}"#), "must be a string"),
            (
                format!(r#"{{"value": {{"x": "{canary}"}}}}"#),
                "must be a string",
            ),
            (
                format!(r#"{{"valeu": "{canary}"}}"#),
                "unknown field `valeu`",
            ),
            (
                format!(r#"{{"value": "{canary}", "x": 1}}"#),
                "unknown field `x`",
            ),
            ("{}".to_owned(), "missing field `value`"),
            (format!(r#"{{"value": "{canary}"#), "not valid JSON"),
        ];
        for (body, want) in rows {
            let err = parse_value(&json_headers(), body.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}: {err}");
            assert!(!err.contains(canary), "{body}: {err}");
        }
        let err = parse_value(&HeaderMap::new(), br#"{"value":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("Content-Type"), "{err}");
    }
}
