//! Logging in and out, and choosing the language.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use http::{Method, StatusCode, header};
use leptos::prelude::*;
use serde::Deserialize;

use super::local_path;
use crate::layout::{self, render};
use crate::session::{self, LOGIN_COOKIE};
use crate::{Ctx, Lang, Portal};
use std::sync::Arc;

#[derive(Deserialize, Default)]
pub struct Next {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

fn login_page(lang: Lang, status: StatusCode, next: &str, username: &str, error: Option<String>) -> Response {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let (next, username, token_field) = (next.to_string(), username.to_string(), token.clone());
    let described = error.is_some().then_some("login-error");
    let body = render(view! {
        <main id="main" class="narrow login">
            <p class="brand">"Cofre"</p>
            <h1>{lang.t("login-title")}</h1>
            <p class="muted">{lang.t("login-intro")}</p>
            <form method="post" action="/login" class="stack">
                <input type="hidden" name="csrf" value=token_field/>
                <input type="hidden" name="next" value=next/>
                <label for="username">{lang.t("login-username")}</label>
                <input id="username" name="username" type="text" autocomplete="username" required=true
                    value=username aria-describedby=described aria-invalid=described.map(|_| "true")/>
                <label for="password">{lang.t("login-password")}</label>
                <input id="password" name="password" type="password" autocomplete="current-password" required=true
                    aria-describedby=described/>
                {layout::field_error("login-error", error)}
                <button type="submit">{lang.t("login-submit")}</button>
            </form>
            <nav class="langs" aria-label=lang.t("nav-language")><ul>
                {Lang::ALL.into_iter().map(|l| view! {
                    <li><a href=format!("/lang/{}?back=/login", l.code()) lang=l.code()>{l.native_name()}</a></li>
                }).collect_view()}
            </ul></nav>
        </main>
    });
    let doc = format!(
        "<!DOCTYPE html><html lang=\"{}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · Cofre</title><link rel=\"stylesheet\" href=\"/assets/portal.css\"></head><body>{body}</body></html>",
        lang.code(),
        lang.t("login-title")
    );
    let mut resp = (status, doc).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
    if let Some(c) = session::set_cookie(LOGIN_COOKIE, &token, 1800) {
        h.append(header::SET_COOKIE, c);
    }
    resp
}

/// `GET /login`.
pub async fn form(Extension(ctx): Extension<Ctx>, Query(q): Query<Next>) -> Response {
    if ctx.viewer.is_some() {
        return Redirect::to(&local_path(q.next.as_deref())).into_response();
    }
    login_page(ctx.lang, StatusCode::OK, &local_path(q.next.as_deref()), "", None)
}

/// `POST /login`: the API's login, then a portal ticket for that session.
pub async fn submit(
    State(portal): State<Arc<Portal>>,
    Extension(ctx): Extension<Ctx>,
    Form(f): Form<LoginForm>,
) -> Response {
    let lang = ctx.lang;
    let next = local_path(f.next.as_deref());
    let login = cofre_api::users::Login { username: f.username.clone(), password: f.password };
    let session: cofre_api::users::Session =
        match ctx.api.send(Method::POST, "/api/v1/auth/login", Some(&login), &[]).await {
            Ok(s) => s,
            Err(e) => {
                let message = match e.status {
                    StatusCode::UNAUTHORIZED if e.problem.detail.contains("disabled") => {
                        lang.t("login-disabled")
                    }
                    StatusCode::UNAUTHORIZED => lang.t("login-wrong"),
                    StatusCode::TOO_MANY_REQUESTS => lang.t("login-too-many"),
                    StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => lang.t("login-wrong"),
                    _ => e.problem.detail.clone(),
                };
                return login_page(lang, e.status, &next, &f.username, Some(message));
            }
        };
    let ticket = match portal.backend.open(&session.access_token) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("cannot open a portal session: {e}");
            return login_page(
                lang,
                StatusCode::INTERNAL_SERVER_ERROR,
                &next,
                &f.username,
                Some(lang.t("error-title-server")),
            );
        }
    };
    let mut resp = Redirect::to(&next).into_response();
    let max_age = (ticket.expires_at - chrono::Utc::now()).num_seconds();
    let h = resp.headers_mut();
    if let Some(c) = session::set_cookie(session::COOKIE, &ticket.value, max_age) {
        h.append(header::SET_COOKIE, c);
    }
    if let Some(c) = session::clear_cookie(LOGIN_COOKIE) {
        h.append(header::SET_COOKIE, c);
    }
    resp
}

/// `POST /logout`: ends the session on the server (the API's logout), then the cookie.
pub async fn logout(Extension(ctx): Extension<Ctx>) -> Response {
    if let Err(e) = ctx.api.act::<()>(Method::POST, "/api/v1/auth/logout", None).await {
        tracing::warn!("portal logout: {}", e.problem.detail);
    }
    let mut resp = Redirect::to("/login").into_response();
    if let Some(c) = session::clear_cookie(session::COOKIE) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

#[derive(Deserialize)]
pub struct Back {
    back: Option<String>,
}

/// `GET /lang/{code}`: keeps the choice in a cookie for a year and goes back.
pub async fn language(Path(code): Path<String>, Query(q): Query<Back>) -> Response {
    let mut resp = Redirect::to(&local_path(q.back.as_deref())).into_response();
    if let Some(lang) = Lang::parse(&code)
        && let Some(c) = session::set_cookie(crate::i18n::COOKIE, lang.code(), 365 * 86_400)
    {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}
