//! Request extractors whose rejections are problem+json like every other error, and which
//! refuse text PostgreSQL cannot store (NUL characters) before any handler sees it.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::Response;

use super::error;

const NUL: &str = "text may not contain NUL characters (\\u0000)";

/// Whether any string (or key) in `v` holds a NUL character.
fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Query-string extractor whose rejections are problem+json (400) like every other error.
pub struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or_default();
        if raw.to_ascii_lowercase().contains("%00") || raw.contains('\0') {
            return Err(error::problem(StatusCode::BAD_REQUEST, NUL.into(), &[]));
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rej) => Err(error::problem(StatusCode::BAD_REQUEST, rej.body_text(), &[])),
        }
    }
}

/// JSON body extractor whose rejections are problem+json like every other error.
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) if has_nul(&v) => Err(error::problem(StatusCode::BAD_REQUEST, NUL.into(), &[])),
            Ok(axum::Json(v)) => match serde_json::from_value::<T>(v) {
                Ok(v) => Ok(Json(v)),
                // The shape is wrong: as axum would answer (422), with serde's words.
                Err(e) => Err(error::problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("Failed to deserialize the JSON body into the target type: {e}"),
                    &[],
                )),
            },
            Err(rej) => {
                let status = match rej.status() {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::UNPROCESSABLE_ENTITY,
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(error::problem(status, rej.body_text(), &[]))
            }
        }
    }
}
