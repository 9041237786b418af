//! The crate's one error type and its single mapping to HTTP statuses (rest-server's codes).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What `Retry-After` says when a request is refused for a momentary lack of capacity.
const RETRY_AFTER_SECONDS: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A malformed path, query or body (also: an upload whose content does not match its name).
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    /// No identity, or a wrong password: the client may retry with credentials.
    #[error("authentication required")]
    Unauthenticated,
    /// A known identity that may not do this (also: overwriting an existing object).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("object larger than the configured max_object_size")]
    PayloadTooLarge,
    #[error("the upload stalled: nothing received for upload_idle_timeout_seconds")]
    RequestTimeout,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("storage quota exceeded ({0})")]
    QuotaExceeded(String),
    /// The identity already has `max_uploads_per_identity` uploads in progress.
    #[error("too many uploads in progress for this identity; retry shortly")]
    TooManyUploads,
    /// Too much of a shared resource in use right now (password checks): retry shortly.
    #[error("busy: {0}; retry shortly")]
    Busy(&'static str),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl StoreError {
    /// Wraps an I/O error with what was being done (the path is for the log, never the client).
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            StoreError::BadRequest(_) => StatusCode::BAD_REQUEST,
            StoreError::NotFound => StatusCode::NOT_FOUND,
            StoreError::Unauthenticated => StatusCode::UNAUTHORIZED,
            StoreError::Forbidden(_) => StatusCode::FORBIDDEN,
            StoreError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            StoreError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            StoreError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            StoreError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            StoreError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            StoreError::QuotaExceeded(_) => StatusCode::INSUFFICIENT_STORAGE,
            // 503, not 429: rustic (the agents' engine) retries 5xx answers and gives up on
            // every 4xx (rustic_backend 0.7, rest.rs); restic retries both.
            StoreError::TooManyUploads | StoreError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Io { .. } | StoreError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for StoreError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Internal errors are logged here, once, with their cause chain; the client only learns
        // that something went wrong (paths and OS messages stay in the log).
        let body = if matches!(self, StoreError::Io { .. } | StoreError::Internal(_)) {
            tracing::error!(error = ?self, "internal error");
            "internal server error".to_string()
        } else {
            self.to_string()
        };
        let mut resp = (status, body).into_response();
        let headers = resp.headers_mut();
        match &self {
            StoreError::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"restic\""));
            }
            StoreError::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            StoreError::TooManyUploads | StoreError::Busy(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            StoreError::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn momentary_refusals_say_when_to_retry() {
        let resp = StoreError::Busy("too many password checks waiting").into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let resp = StoreError::TooManyUploads.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "a status rustic retries");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }
}
