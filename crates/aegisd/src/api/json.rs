//! Extractors whose rejections are API errors (`{"error": ...}` with 400, naming the offending
//! field or parameter) instead of axum's plain-text rejections: [`ApiJson`] for bodies,
//! [`ApiQuery`] for query strings, [`ApiPath`] for path segments.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// `Json<T>` with API-style errors.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

#[axum::async_trait]
impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(ApiError::BadRequest(match rejection {
                JsonRejection::MissingJsonContentType(_) => {
                    "request body must be JSON (Content-Type: application/json)".to_owned()
                }
                other => format!("invalid request body: {}", other.body_text()),
            })),
        }
    }
}

/// `Query<T>` with API-style errors (a repeated or unknown parameter is a JSON 400).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

#[axum::async_trait]
impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(query_error(&rejection)),
        }
    }
}

fn query_error(rejection: &QueryRejection) -> ApiError {
    // "Failed to deserialize query string: <serde's message>"
    let text = rejection.body_text();
    let why = text.split_once(": ").map_or(text.as_str(), |(_, why)| why);
    ApiError::BadRequest(format!("invalid query string: {why}"))
}

/// `Path<T>` with API-style errors (a segment that is not UTF-8 once percent-decoded is a JSON
/// 400).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

#[axum::async_trait]
impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(path_error(&rejection)),
        }
    }
}

fn path_error(rejection: &PathRejection) -> ApiError {
    match rejection {
        PathRejection::FailedToDeserializePathParams(e) => {
            ApiError::BadRequest(format!("invalid path: {}", e.body_text()))
        }
        // Only a route without parameters lacks them: a bug of ours, not of the request.
        PathRejection::MissingPathParams(e) => ApiError::Internal(e.body_text()),
        other => ApiError::BadRequest(format!("invalid path: {}", other.body_text())),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Q {
        state: Option<String>,
    }

    async fn query(uri: &str) -> Result<Q, ApiError> {
        let (mut parts, ()) = Request::get(uri).body(()).unwrap().into_parts();
        ApiQuery::<Q>::from_request_parts(&mut parts, &())
            .await
            .map(|ApiQuery(q)| q)
    }

    /// The fuzzer's find: axum's own rejections were plain text, not the API's JSON errors.
    #[tokio::test]
    async fn rejected_queries_are_api_errors() {
        let rows = [
            (
                "/q?state=a&state=b",
                "invalid query string: duplicate field `state`",
            ),
            ("/q?nope=1", "invalid query string: unknown field `nope`"),
        ];
        for (uri, want) in rows {
            let err = query(uri).await.unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{uri}");
            assert!(err.to_string().starts_with(want), "{uri}: {err}");
        }
        let ok = query("/q?state=running").await.unwrap();
        assert_eq!(ok.state.as_deref(), Some("running"));
    }
}
