//! Sessions against a real database, through the API: refresh rotates, a reused refresh token
//! ends its whole family, logout / disable / password reset end sessions, families expire, and
//! a rotated signing key is picked up by a replica that has not reloaded yet.

use axum::http::StatusCode;
use sqlx::PgPool;

use crate::state::AppState;
use crate::tests::{call_json, request, state};

async fn post(st: &AppState, path: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let (status, _, json) = request(st, "POST", path, None, &[], &body.to_string()).await;
    (status, json)
}

async fn login(st: &AppState, user: &str, password: &str) -> serde_json::Value {
    let (s, body) =
        post(st, "/api/v1/auth/login", serde_json::json!({"username": user, "password": password})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

async fn refresh(st: &AppState, token: &serde_json::Value) -> (StatusCode, serde_json::Value) {
    post(st, "/api/v1/auth/refresh", serde_json::json!({"refresh_token": token})).await
}

async fn first_admin(st: &AppState) {
    let pw: secrecy::SecretString = "first-admin-password".to_string().into();
    crate::auth::ensure_first_admin(&st.pool, "admin", Some(&pw)).await.unwrap();
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn refresh_rotates_and_a_reused_token_ends_the_whole_session(pool: PgPool) {
    let st = state(pool).await;
    first_admin(&st).await;
    let s0 = login(&st, "admin", "first-admin-password").await;
    let rt0 = s0["refresh_token"].clone();
    assert!(rt0.as_str().unwrap().starts_with(super::PREFIX));
    assert_eq!(s0["expires_in"], 600);

    // Refresh: a new access token that works, and a new refresh token.
    let (s, s1) = refresh(&st, &rt0).await;
    assert_eq!(s, StatusCode::OK, "{s1}");
    assert_ne!(s1["refresh_token"], rt0);
    assert_ne!(s1["access_token"], s0["access_token"]);
    assert_eq!(s1["refresh_expires_at"], s0["refresh_expires_at"], "refreshing never extends a session");
    let access1 = s1["access_token"].as_str().unwrap();
    assert_eq!(call_json(&st, "GET", "/api/v1/me", access1, "").await.0, StatusCode::OK);

    // The first refresh token again (a thief's copy, or the owner's after the thief used it):
    // refused, and the family's newest refresh token dies with it.
    let (s, body) = refresh(&st, &rt0).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body["detail"].as_str().unwrap().contains("already used"), "{body}");
    let (s, _) = refresh(&st, &s1["refresh_token"]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the whole family ends");
    assert_eq!(
        call_json(&st, "GET", "/api/v1/me", access1, "").await.0,
        StatusCode::UNAUTHORIZED,
        "and its access tokens with it"
    );
    let reused: i64 =
        sqlx::query_scalar("select count(*) from audit_events where action = 'auth.refresh_reused'")
            .fetch_one(&st.pool)
            .await
            .unwrap();
    assert_eq!(reused, 1);

    // Another login is another session, untouched.
    let other = login(&st, "admin", "first-admin-password").await;
    assert_eq!(refresh(&st, &other["refresh_token"]).await.0, StatusCode::OK);

    // Garbage is refused plainly.
    for bad in [serde_json::json!("cofre_rt_00"), serde_json::json!("nope"), serde_json::json!("")] {
        assert_eq!(refresh(&st, &bad).await.0, StatusCode::UNAUTHORIZED);
    }
    let (s, body) = post(&st, "/api/v1/auth/refresh", serde_json::json!({"refresh": 1})).await;
    assert!(s.is_client_error() && body["title"].is_string(), "{s} {body}");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn logout_disable_reset_and_expiry_end_sessions(pool: PgPool) {
    let st = state(pool).await;
    first_admin(&st).await;
    // Logout ends the access token and the session's refresh tokens.
    let s0 = login(&st, "admin", "first-admin-password").await;
    let access = s0["access_token"].as_str().unwrap();
    assert_eq!(call_json(&st, "POST", "/api/v1/auth/logout", access, "").await.0, StatusCode::NO_CONTENT);
    assert_eq!(call_json(&st, "GET", "/api/v1/me", access, "").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(refresh(&st, &s0["refresh_token"]).await.0, StatusCode::UNAUTHORIZED);

    // A disabled user's sessions end; enabling them again does not revive them.
    let admin = login(&st, "admin", "first-admin-password").await;
    let admin = admin["access_token"].as_str().unwrap().to_string();
    let (_, body) = call_json(
        &st,
        "POST",
        "/api/v1/users",
        &admin,
        r#"{"username":"maria","role":"operator","password":"maria-password-1"}"#,
    )
    .await;
    let maria = body["user"]["id"].as_str().unwrap().to_string();
    let m = login(&st, "maria", "maria-password-1").await;
    call_json(&st, "POST", &format!("/api/v1/users/{maria}/disable"), &admin, "{}").await;
    assert_eq!(refresh(&st, &m["refresh_token"]).await.0, StatusCode::UNAUTHORIZED);
    call_json(&st, "POST", &format!("/api/v1/users/{maria}/enable"), &admin, "{}").await;
    assert_eq!(refresh(&st, &m["refresh_token"]).await.0, StatusCode::UNAUTHORIZED);

    // A password reset ends her sessions.
    let m = login(&st, "maria", "maria-password-1").await;
    let (s, _) = call_json(
        &st,
        "POST",
        &format!("/api/v1/users/{maria}/password"),
        &admin,
        r#"{"password":"maria-password-2"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(refresh(&st, &m["refresh_token"]).await.0, StatusCode::UNAUTHORIZED);
    let old_access = m["access_token"].as_str().unwrap();
    assert_eq!(call_json(&st, "GET", "/api/v1/me", old_access, "").await.0, StatusCode::UNAUTHORIZED);

    // A session past its lifetime refreshes no more.
    let m = login(&st, "maria", "maria-password-2").await;
    sqlx::query("update refresh_tokens set expires_at = now() - interval '1 second'")
        .execute(&st.pool)
        .await
        .unwrap();
    let (s, body) = refresh(&st, &m["refresh_token"]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body["detail"].as_str().unwrap().contains("ended"), "{body}");
    // Only hashes are stored.
    let stored: i64 = sqlx::query_scalar("select count(*) from refresh_tokens where token_hash = $1::bytea")
        .bind(m["refresh_token"].as_str().unwrap().as_bytes())
        .fetch_one(&st.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_rotated_signing_key_is_shared_by_replicas_and_the_key_before_the_previous_dies(pool: PgPool) {
    let st = state(pool).await;
    first_admin(&st).await;
    let before = login(&st, "admin", "first-admin-password").await;
    let before = before["access_token"].as_str().unwrap().to_string();
    let old_kid = st.jwt.current_kid();

    // A rotation (as `cofre-controller rotate-jwt-key` does), then one replica reloads.
    let kid = crate::keys::rotate_jwt(&st.pool, &st.master).await.unwrap();
    assert_ne!(kid, old_kid);
    let replica = state_sharing_keys(&st).await;
    crate::serve::reload_jwt(&replica).await;
    assert_eq!(replica.jwt.current_kid(), kid);
    let after = login(&replica, "admin", "first-admin-password").await;
    let after = after["access_token"].as_str().unwrap().to_string();
    // The replica that has not reloaded yet accepts the new key's token at once (unknown kid →
    // reload), and both accept the token signed before the rotation.
    assert_eq!(st.jwt.current_kid(), old_kid);
    assert_eq!(call_json(&st, "GET", "/api/v1/me", &after, "").await.0, StatusCode::OK);
    assert_eq!(st.jwt.current_kid(), kid);
    for t in [&before, &after] {
        assert_eq!(call_json(&replica, "GET", "/api/v1/me", t, "").await.0, StatusCode::OK);
    }
    // A second rotation: the first key's tokens stop working.
    crate::keys::rotate_jwt(&st.pool, &st.master).await.unwrap();
    crate::serve::reload_jwt(&st).await;
    assert_eq!(call_json(&st, "GET", "/api/v1/me", &before, "").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call_json(&st, "GET", "/api/v1/me", &after, "").await.0, StatusCode::OK);
    let rotations: i64 =
        sqlx::query_scalar("select count(*) from audit_events where action = 'auth.jwt_key_rotated'")
            .fetch_one(&st.pool)
            .await
            .unwrap();
    assert_eq!(rotations, 2);
}

/// Another replica on the same database (same master key, its own key set in memory).
async fn state_sharing_keys(st: &AppState) -> AppState {
    let keys = crate::keys::load_jwt(&st.pool, &st.master).await.unwrap();
    let mut other = st.clone();
    other.jwt = std::sync::Arc::new(crate::jwt::JwtKeys::new(
        &keys.current,
        keys.previous.as_ref().map(|p| p.as_slice()),
        600,
    ));
    other.seen_tokens = std::sync::Arc::default();
    other
}
