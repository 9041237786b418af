//! `Idempotency-Key` on every POST: the first request with a key is run and its answer kept
//! (a day); a retry with the same key and the same method, path and body gets the same answer
//! again (`Idempotent-Replayed: true`) without doing anything twice; the same key with another
//! request is refused (422), and a retry while the first is still running is refused (409). Server errors are not kept, so a retry after one runs again. Keys belong to
//! the user who sent them.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::error::problem;
use crate::auth::Claims;
use crate::error::Error;

pub const HEADER: &str = "idempotency-key";
/// The largest answer kept for replay (larger ones are not replayable: 422 on retry).
const MAX_KEPT: usize = 1024 * 1024;

fn request_hash(method: &Method, path: &str, body: &[u8]) -> Vec<u8> {
    Sha256::new()
        .chain_update(method.as_str())
        .chain_update(b"\0")
        .chain_update(path)
        .chain_update(b"\0")
        .chain_update(body)
        .finalize()
        .to_vec()
}

/// Runs `req` at most once per (user, key). A middleware after authorisation.
pub async fn once(pool: PgPool, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER).cloned() else { return next.run(req).await };
    let Some(owner) = req.extensions().get::<Claims>().map(|c| c.sub) else { return next.run(req).await };
    let key = match key.to_str() {
        Ok(k) if (1..=200).contains(&k.len()) => k.to_string(),
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 200 visible ASCII characters".into(),
                &[],
            );
        }
    };
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return problem(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large".into(), &[]),
    };
    let hash = request_hash(&parts.method, parts.uri.path(), &bytes);
    match claim(&pool, owner, &key, &hash).await {
        Ok(Claimed::First) => {}
        Ok(Claimed::Replay(resp)) => return resp,
        Err(e) => return e.into_response(),
    }
    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    keep(&pool, owner, &key, resp).await
}

enum Claimed {
    First,
    Replay(Response),
}

async fn claim(pool: &PgPool, owner: uuid::Uuid, key: &str, hash: &[u8]) -> Result<Claimed, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("delete from idempotency_keys where created_at < now() - interval '1 day'")
        .execute(&mut *tx)
        .await?;
    let inserted = sqlx::query(
        "insert into idempotency_keys (owner, key, request_hash) values ($1, $2, $3) on conflict do nothing",
    )
    .bind(owner)
    .bind(key)
    .bind(hash)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        tx.commit().await?;
        return Ok(Claimed::First);
    }
    let (stored_hash, status, content_type, body): (Vec<u8>, Option<i32>, Option<String>, Option<Vec<u8>>) =
        sqlx::query_as(
            "select request_hash, status, content_type, body from idempotency_keys where owner = $1 and key = $2",
        )
        .bind(owner)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    if stored_hash != hash {
        return Err(Error::invalid("this Idempotency-Key was used for a different request"));
    }
    let Some(status) = status.and_then(|s| u16::try_from(s).ok()).and_then(|s| StatusCode::from_u16(s).ok())
    else {
        return Err(Error::Conflict(
            "the first request with this Idempotency-Key is still running: retry shortly".into(),
        ));
    };
    let mut resp = (status, body.unwrap_or_default()).into_response();
    if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(Claimed::Replay(resp))
}

/// Keeps the answer for replays (not server errors: those may run again), and passes it on.
async fn keep(pool: &PgPool, owner: uuid::Uuid, key: &str, resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let forget = || async {
        let _ = sqlx::query("delete from idempotency_keys where owner = $1 and key = $2")
            .bind(owner)
            .bind(key)
            .execute(pool)
            .await;
    };
    let bytes = match axum::body::to_bytes(body, MAX_KEPT).await {
        Ok(b) => b,
        Err(e) => {
            forget().await;
            tracing::warn!("an answer too large to keep for Idempotency-Key replays: {e}");
            return problem(StatusCode::INTERNAL_SERVER_ERROR, "the answer could not be kept".into(), &[]);
        }
    };
    if parts.status.is_server_error() {
        forget().await;
    } else {
        let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if let Err(e) = sqlx::query(
            "update idempotency_keys set status = $3, content_type = $4, body = $5 where owner = $1 and key = $2",
        )
        .bind(owner)
        .bind(key)
        .bind(i32::from(parts.status.as_u16()))
        .bind(content_type)
        .bind(bytes.as_ref())
        .execute(pool)
        .await
        {
            tracing::warn!("cannot keep an answer for Idempotency-Key replays: {e}");
            forget().await;
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}
