//! The REST API, called in-process: the portal reads and changes everything through the same
//! routes, authorisation, validation and audit as scripts, with the API's own wire types
//! (`cofre-api`). A call is one `Router` dispatch, no socket.

use axum::Router;
use axum::body::Body;
use cofre_api::Problem;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

/// Largest answer the portal reads from the API (a compliance CSV of a big fleet fits).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// An API client for one page request: the caller's token and the details of the browser's
/// connection the API's rate limits and audit rely on.
#[derive(Clone)]
pub struct Api {
    router: Router,
    token: Option<String>,
    /// The browser request's extensions (the server's connection details, such as the peer
    /// address the API's rate limits and audit use) and forwarding header.
    extensions: http::Extensions,
    /// The browser request's `Host`, `X-Forwarded-For` and `X-Forwarded-Proto`: where the
    /// browser reached this controller (install lines name it) and from where.
    passed: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// The API's refusal, as problem+json said it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub problem: Problem,
}

impl ApiError {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = status.canonical_reason().unwrap_or("Error").to_string();
        Self {
            status,
            problem: Problem {
                kind: "about:blank".into(),
                title,
                status: status.as_u16(),
                detail: detail.into(),
                errors: Vec::new(),
            },
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    /// The message for one form field, if the API named it.
    pub fn field(&self, name: &str) -> Option<String> {
        self.problem.errors.iter().find(|e| e.field == name).map(|e| e.message.clone())
    }
}

impl Api {
    pub fn new(router: Router, parts: &http::request::Parts, extensions: http::Extensions) -> Self {
        let passed = [
            header::HOST,
            http::HeaderName::from_static("x-forwarded-for"),
            http::HeaderName::from_static("x-forwarded-proto"),
        ]
        .into_iter()
        .filter_map(|h| parts.headers.get(&h).cloned().map(|v| (h, v)))
        .collect();
        Self { router, token: None, extensions, passed }
    }

    pub fn with_token(mut self, token: String) -> Self {
        self.token = Some(token);
        self
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&'static str, String)],
    ) -> Result<(HeaderMap, Vec<u8>), ApiError> {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (name, value) in &self.passed {
            req = req.header(name, value.clone());
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in extra {
            req = req.header(*k, v.as_str());
        }
        let mut req = req
            .body(body.map_or_else(Body::empty, Body::from))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request: {e}")))?;
        req.extensions_mut().extend(self.extensions.clone());
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))?;
        let (parts, body) = resp.into_parts();
        let bytes = http_body_util::Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("reading the API's answer: {e}")))?
            .to_bytes()
            .to_vec();
        if parts.status.is_success() {
            return Ok((parts.headers, bytes));
        }
        let problem = serde_json::from_slice::<Problem>(&bytes).unwrap_or_else(|_| {
            ApiError::new(parts.status, String::from_utf8_lossy(&bytes).chars().take(500).collect::<String>())
                .problem
        });
        Err(ApiError { status: parts.status, problem })
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::new(StatusCode::BAD_GATEWAY, format!("the API's answer did not parse: {e}"))
        })
    }

    /// `GET path` as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: impl AsRef<str>) -> Result<T, ApiError> {
        let (_, bytes) = self.call(Method::GET, path.as_ref(), None, &[]).await?;
        Self::decode(&bytes)
    }

    /// `GET path`, the raw answer and its content type (CSV exports).
    pub async fn get_raw(&self, path: impl AsRef<str>) -> Result<(HeaderMap, Vec<u8>), ApiError> {
        self.call(Method::GET, path.as_ref(), None, &[]).await
    }

    /// A change with a JSON body (or none), its JSON answer.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        extra: &[(&'static str, String)],
    ) -> Result<T, ApiError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))?;
        let (_, bytes) = self.call(method, path, body, extra).await?;
        Self::decode(&bytes)
    }

    /// A change whose answer is empty (204) or ignored.
    pub async fn act<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ApiError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))?;
        self.call(method, path, body, &[]).await.map(|_| ())
    }
}

/// A query string from pairs, percent-encoded (empty values left out).
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let present: Vec<(&str, &str)> =
        pairs.iter().filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (*k, v))).collect();
    if present.is_empty() {
        String::new()
    } else {
        format!("?{}", serde_urlencoded::to_string(present).unwrap_or_default())
    }
}
