//! The REST API's conventions against a real database: text PostgreSQL cannot store is refused
//! up front (400, never 500), edits made from a stale copy are refused (ETag / If-Match, 412),
//! repository credentials rotate while secrets stay write-only, and deletes happen only when
//! nothing depends on what is deleted (409 saying why).

use axum::http::{HeaderMap, StatusCode};
use sqlx::PgPool;

use crate::auth::Role;
use crate::state::AppState;
use crate::tests::{call_json, machine_in_new_group, request, state, user_token};

async fn call(
    st: &AppState,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, serde_json::Value) {
    request(st, method, path, Some(token), headers, body).await
}

fn is_problem(h: &HeaderMap) -> bool {
    h.get("content-type").is_some_and(|v| v == "application/problem+json")
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn nul_characters_are_refused_before_they_reach_the_database(pool: PgPool) {
    let st = state(pool).await;
    let admin = user_token(&st, "admin", Role::Admin, None).await;
    for (method, path, body) in [
        ("POST", "/api/v1/auth/login", r#"{"username":"ad\u0000min","password":"x"}"#),
        ("POST", "/api/v1/groups", r#"{"name":"a\u0000b"}"#),
        ("POST", "/api/v1/users", r#"{"username":"maria","role":"auditor","password":"p\u0000ssword-long"}"#),
        ("GET", "/api/v1/audit/events?actor=a%00b", ""),
        ("GET", "/api/v1/jobs?kind=%00", ""),
    ] {
        let (s, h, body) = call(&st, method, path, &admin, &[], body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert!(is_problem(&h), "{method} {path}");
        assert!(body["detail"].as_str().unwrap().contains("NUL"), "{body}");
    }
    // A route that exists answers a method it does not take with problem+json too.
    let (s, h, _) = call(&st, "PATCH", "/api/v1/groups", &admin, &[], "{}").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(is_problem(&h));
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn edits_from_a_stale_copy_are_refused(pool: PgPool) {
    let st = state(pool).await;
    let admin = user_token(&st, "admin", Role::Admin, None).await;
    // A user.
    let (_, _, created) =
        call(&st, "POST", "/api/v1/users", &admin, &[], r#"{"username":"maria","role":"auditor"}"#).await;
    let path = format!("/api/v1/users/{}", created["user"]["id"].as_str().unwrap());
    let (s, h, _) = call(&st, "GET", &path, &admin, &[], "").await;
    assert_eq!(s, StatusCode::OK);
    let etag = h["etag"].to_str().unwrap().to_string();
    let (s, h, _) = call(&st, "PUT", &path, &admin, &[("if-match", &etag)], r#"{"role":"operator"}"#).await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(h["etag"].to_str().unwrap(), etag, "a change makes a new version");
    let (s, h, body) = call(&st, "PUT", &path, &admin, &[("if-match", &etag)], r#"{"role":"admin"}"#).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{body}");
    assert!(is_problem(&h));
    let (_, _, now) = call(&st, "GET", &path, &admin, &[], "").await;
    assert_eq!(now["role"], "operator", "the stale edit changed nothing");
    // Without If-Match, the last write wins (as before).
    assert_eq!(call(&st, "PUT", &path, &admin, &[], r#"{"role":"auditor"}"#).await.0, StatusCode::OK);

    // A machine.
    let (_, machine) = machine_in_new_group(&st, "obras").await;
    let path = format!("/api/v1/machines/{machine}");
    let (_, h, _) = call(&st, "GET", &path, &admin, &[], "").await;
    let etag = h["etag"].to_str().unwrap().to_string();
    let (s, _, _) =
        call(&st, "PUT", &path, &admin, &[("if-match", &etag)], r#"{"display_name":"Recepção"}"#).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) =
        call(&st, "PUT", &path, &admin, &[("if-match", &etag)], r#"{"display_name":"Outro"}"#).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    let (_, _, m) = call(&st, "GET", &path, &admin, &[], "").await;
    assert_eq!(m["display_name"], "Recepção");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn repository_credentials_rotate_and_deletes_refuse_what_is_in_use(pool: PgPool) {
    let st = state(pool).await;
    let admin = user_token(&st, "admin", Role::Admin, None).await;
    let (s, repo) = call_json(
        &st,
        "POST",
        "/api/v1/repositories",
        &admin,
        r#"{"name":"main","url":"https://rest.example","username":"cofre","password":"old-secret-1"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{repo}");
    let path = format!("/api/v1/repositories/{}", repo["id"].as_str().unwrap());
    let sealed = |st: &AppState| {
        let pool = st.pool.clone();
        let id: uuid::Uuid = repo["id"].as_str().unwrap().parse().unwrap();
        async move {
            sqlx::query_scalar::<_, Option<Vec<u8>>>("select sealed_password from repositories where id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let before = sealed(&st).await;
    // Rotation: a new password (write-only), the rest kept.
    let (s, after) =
        call_json(&st, "PUT", &path, &admin, r#"{"name":"main-2026","password":"new-secret-2"}"#).await;
    assert_eq!(s, StatusCode::OK, "{after}");
    assert_eq!((after["name"].as_str(), after["has_password"].as_bool()), (Some("main-2026"), Some(true)));
    assert_eq!(after["username"], "cofre");
    assert!(after.get("password").is_none(), "secrets are never returned");
    assert_ne!(sealed(&st).await, before, "the stored secret changed");
    // Where the backups live cannot change; an unknown field is named.
    let (s, body) = call_json(&st, "PUT", &path, &admin, r#"{"url":"https://elsewhere.example"}"#).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "url", "{body}");
    let (s, _) = call_json(&st, "PUT", &path, &admin, r#"{"colour":"blue"}"#).await;
    assert!(s.is_client_error());
    // A password without a user name is refused as on create; clearing both works.
    let (s, _) = call_json(&st, "PUT", &path, &admin, r#"{"username":null}"#).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, cleared) = call_json(&st, "PUT", &path, &admin, r#"{"username":null,"password":null}"#).await;
    assert_eq!((s, cleared["has_password"].as_bool()), (StatusCode::OK, Some(false)));
    let audit: Vec<serde_json::Value> = sqlx::query_scalar(
        "select details from audit_events where action = 'repository.update' order by seq",
    )
    .fetch_all(&st.pool)
    .await
    .unwrap();
    assert_eq!(audit[0]["password"], "replaced");
    assert!(
        !serde_json::Value::Array(audit).to_string().contains("new-secret-2"),
        "never a secret in the log"
    );

    // Deletes: a repository a policy uses, and a group that has a machine, are kept (409, why).
    let body =
        format!(r#"{{"name":"p","repository_id":"{}","paths":["/srv"]}}"#, repo["id"].as_str().unwrap());
    let (s, policy) = call_json(&st, "POST", "/api/v1/policies", &admin, &body).await;
    assert_eq!(s, StatusCode::CREATED, "{policy}");
    let (s, h, body) = call(&st, "DELETE", &path, &admin, &[], "").await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(is_problem(&h) && body["detail"].as_str().unwrap().contains("polic"), "{body}");
    let (group, _machine) = machine_in_new_group(&st, "saude").await;
    let (s, _, body) = call(&st, "DELETE", &format!("/api/v1/groups/{group}"), &admin, &[], "").await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(body["detail"].as_str().unwrap().contains("1 machines"), "{body}");
    // Unused ones go, audited; a second delete is 404.
    let (_, unused) = call_json(
        &st,
        "POST",
        "/api/v1/repositories",
        &admin,
        r#"{"name":"typo","url":"https://rest.example/typo"}"#,
    )
    .await;
    let unused = format!("/api/v1/repositories/{}", unused["id"].as_str().unwrap());
    assert_eq!(call(&st, "DELETE", &unused, &admin, &[], "").await.0, StatusCode::NO_CONTENT);
    assert_eq!(call(&st, "DELETE", &unused, &admin, &[], "").await.0, StatusCode::NOT_FOUND);
    let (_, g) = call_json(&st, "POST", "/api/v1/groups", &admin, r#"{"name":"empty"}"#).await;
    let g = format!("/api/v1/groups/{}", g["id"].as_str().unwrap());
    assert_eq!(call(&st, "DELETE", &g, &admin, &[], "").await.0, StatusCode::NO_CONTENT);
    let deletes: i64 = sqlx::query_scalar(
        "select count(*) from audit_events where action in ('repository.delete', 'group.delete')",
    )
    .fetch_one(&st.pool)
    .await
    .unwrap();
    assert_eq!(deletes, 2);
    // Operators may not delete.
    let operator = user_token(&st, "op", Role::Operator, None).await;
    assert_eq!(call(&st, "DELETE", &path, &operator, &[], "").await.0, StatusCode::FORBIDDEN);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_post_retried_with_its_idempotency_key_is_done_once(pool: PgPool) {
    let st = state(pool).await;
    let admin = user_token(&st, "admin", Role::Admin, None).await;
    let key = [("idempotency-key", "create-obras-1")];
    let (s1, h1, first) = call(&st, "POST", "/api/v1/groups", &admin, &key, r#"{"name":"obras"}"#).await;
    assert_eq!(s1, StatusCode::CREATED, "{first}");
    assert!(h1.get("idempotent-replayed").is_none());
    // The retry (say, the answer was lost): the same answer, nothing done twice.
    let (s2, h2, again) = call(&st, "POST", "/api/v1/groups", &admin, &key, r#"{"name":"obras"}"#).await;
    assert_eq!((s2, &again), (StatusCode::CREATED, &first));
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(h2["content-type"], "application/json");
    let groups: i64 = sqlx::query_scalar("select count(*) from groups").fetch_one(&st.pool).await.unwrap();
    assert_eq!(groups, 1);
    let audited: i64 = sqlx::query_scalar("select count(*) from audit_events where action = 'group.create'")
        .fetch_one(&st.pool)
        .await
        .unwrap();
    assert_eq!(audited, 1);
    // The same key for another request is refused; a refusal is kept like any answer.
    let (s, h, body) = call(&st, "POST", "/api/v1/groups", &admin, &key, r#"{"name":"saude"}"#).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(is_problem(&h));
    let bad = [("idempotency-key", "bad-1")];
    let (s, _, _) = call(&st, "POST", "/api/v1/groups", &admin, &bad, r#"{"name":"Not Valid"}"#).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, h, _) = call(&st, "POST", "/api/v1/groups", &admin, &bad, r#"{"name":"Not Valid"}"#).await;
    assert_eq!((s, h["idempotent-replayed"].to_str().unwrap()), (StatusCode::UNPROCESSABLE_ENTITY, "true"));
    // Keys are per user: another admin's same key is a new request.
    let other = user_token(&st, "other", Role::Admin, None).await;
    let (s, _, _) = call(&st, "POST", "/api/v1/groups", &other, &key, r#"{"name":"saude"}"#).await;
    assert_eq!(s, StatusCode::CREATED);
    // Without a key, two requests are two requests.
    let (s, _, _) = call(&st, "POST", "/api/v1/groups", &admin, &[], r#"{"name":"educacao"}"#).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, _) = call(&st, "POST", "/api/v1/groups", &admin, &[], r#"{"name":"educacao"}"#).await;
    assert_eq!(s, StatusCode::CONFLICT);
}
