//! Reading: GET/HEAD of config and objects, streamed from disk (never buffered whole), with
//! single `Range: bytes=…` requests answered 206 (restic and rustic read pack files partially),
//! and the v1/v2 listings.

use std::io::SeekFrom;
use std::path::Path;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::io::ReaderStream;

use crate::error::StoreError;

pub const V1: &str = "application/vnd.x.restic.rest.v1";
pub const V2: &str = "application/vnd.x.restic.rest.v2";

/// Answers GET (or HEAD, without a body) for one file.
pub async fn file(path: &Path, head: bool, headers: &HeaderMap) -> Result<Response, StoreError> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound),
        Err(e) => return Err(StoreError::io(format!("opening {}", path.display()), e)),
    };
    let meta = file.metadata().await.map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(StoreError::NotFound);
    }
    let size = meta.len();
    let range = if head { None } else { headers.get(header::RANGE).and_then(|v| v.to_str().ok()) };
    let range = range.map(|r| parse_range(r, size)).transpose()?.flatten();
    let (status, start, len) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, len);
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + len - 1));
    }
    let body = if head {
        Body::empty()
    } else {
        if start > 0 {
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(|e| StoreError::io(format!("seeking {}", path.display()), e))?;
        }
        Body::from_stream(ReaderStream::with_capacity(file.take(len), 64 * 1024))
    };
    resp.body(body).map_err(|e| StoreError::Internal(e.into()))
}

/// One `bytes=` range → inclusive (first, last) within `size`. Multiple ranges, other units and
/// malformed headers are ignored (the whole file is sent, as RFC 9110 allows); a range that
/// starts past the end is 416.
fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, StoreError> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Ok(None) };
    let unsatisfiable = Err(StoreError::RangeNotSatisfiable { size });
    match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(first), Some(last)) if first <= last => {
            if first >= size {
                return unsatisfiable;
            }
            Ok(Some((first, last.min(size - 1))))
        }
        (Some(first), None) if b.is_empty() => {
            if first >= size {
                return unsatisfiable;
            }
            Ok(Some((first, size - 1)))
        }
        (None, Some(suffix)) if a.is_empty() => {
            if suffix == 0 || size == 0 {
                return unsatisfiable;
            }
            Ok(Some((size - suffix.min(size), size - 1)))
        }
        _ => Ok(None),
    }
}

#[derive(Serialize)]
struct Entry<'a> {
    name: &'a str,
    size: u64,
}

/// A listing: v2 (`[{"name","size"}]`) when the client accepts it, else v1 (`["name"]`).
/// For HEAD the body is left out but its Content-Length kept.
pub fn listing(entries: &[(String, u64)], headers: &HeaderMap, head: bool) -> Response {
    let v2 = headers.get_all(header::ACCEPT).iter().any(|v| v.to_str().is_ok_and(|v| v.contains(V2)));
    let (body, ctype) = if v2 {
        let list: Vec<Entry<'_>> = entries.iter().map(|(n, s)| Entry { name: n, size: *s }).collect();
        (serde_json::to_vec(&list), V2)
    } else {
        let list: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        (serde_json::to_vec(&list), V1)
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => return StoreError::Internal(e.into()).into_response(),
    };
    let len = HeaderValue::from(body.len());
    let body = if head { Body::empty() } else { Body::from(body) };
    ([(header::CONTENT_TYPE, HeaderValue::from_static(ctype)), (header::CONTENT_LENGTH, len)], body)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |v| parse_range(v, 100).map_err(|e| e.status().as_u16());
        assert_eq!(r("bytes=0-9"), Ok(Some((0, 9))));
        assert_eq!(r("bytes=90-200"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=95-"), Ok(Some((95, 99))));
        assert_eq!(r("bytes=-10"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=-1000"), Ok(Some((0, 99))));
        assert_eq!(r("bytes=100-"), Err(416));
        assert_eq!(r("bytes=100-120"), Err(416));
        assert_eq!(r("bytes=0-1,5-6"), Ok(None));
        assert_eq!(r("items=0-1"), Ok(None));
        assert_eq!(r("bytes=9-3"), Ok(None));
        assert_eq!(r("bytes=x-3"), Ok(None));
    }
}
