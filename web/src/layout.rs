//! The frame around every page (header, navigation, language switch, logout), the pieces pages
//! share (status badges, field errors, the CSRF field), error pages, and the stylesheet.

use axum::Extension;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use leptos::prelude::*;

use crate::api::ApiError;
use crate::{Ctx, Lang};

/// Renders a view to HTML (no reactive system runs: every page is rendered once).
pub fn render(view: impl IntoView + 'static) -> String {
    let owner = Owner::new();
    owner.with(|| view.into_view().to_html())
}

fn html(lang: Lang, title: &str, body: &str) -> String {
    let head = render(view! {
        <head>
            <meta charset="utf-8"/>
            <meta name="viewport" content="width=device-width, initial-scale=1"/>
            <title>{format!("{title} · Cofre")}</title>
            <link rel="stylesheet" href="/assets/portal.css"/>
        </head>
    });
    format!("<!DOCTYPE html><html lang=\"{}\">{head}<body>{body}</body></html>", lang.code())
}

fn respond(status: StatusCode, document: String) -> Response {
    let mut resp = (status, document).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

/// A signed-in page: the frame around `content`.
pub fn page(ctx: &Ctx, title: &str, content: impl IntoView + 'static) -> Response {
    page_with_status(ctx, StatusCode::OK, title, content)
}

pub fn page_with_status(
    ctx: &Ctx,
    status: StatusCode,
    title: &str,
    content: impl IntoView + 'static,
) -> Response {
    let lang = ctx.lang;
    let title_owned = title.to_string();
    let body = render(view! {
        <a class="skip" href="#main">{lang.t("nav-skip")}</a>
        {header(ctx)}
        <main id="main">
            <h1>{title_owned}</h1>
            {content}
        </main>
    });
    respond(status, html(lang, title, &body))
}

fn header(ctx: &Ctx) -> impl IntoView + use<> {
    let lang = ctx.lang;
    let path = ctx.here.split('?').next().unwrap_or("/").to_string();
    let viewer = ctx.viewer.clone();
    let links: Vec<(&str, &str, bool)> = match &viewer {
        Some(v) => vec![
            ("/", "nav-overview", true),
            ("/machines", "nav-machines", true),
            ("/jobs", "nav-jobs", true),
            ("/compliance", "nav-compliance", true),
            ("/maintenance", "nav-maintenance", true),
            ("/policies", "nav-policies", true),
            ("/repositories", "nav-repositories", true),
            ("/stores", "nav-stores", true),
            ("/groups", "nav-groups", true),
            ("/enrollment", "nav-enrollment", v.is_admin() || v.can_operate()),
            ("/audit", "nav-audit", v.fleet_wide()),
        ],
        None => Vec::new(),
    };
    let nav = links
        .into_iter()
        .filter(|(_, _, shown)| *shown)
        .map(|(href, key, _)| {
            let current = (href == "/" && path == "/") || (href != "/" && path.starts_with(href));
            view! {
                <li><a href=href aria-current=current.then_some("page")>{lang.t(key)}</a></li>
            }
        })
        .collect_view();
    let back = ctx.here.clone();
    let langs = Lang::ALL
        .into_iter()
        .map(|l| {
            let href = format!("/lang/{}{}", l.code(), crate::api::query(&[("back", Some(back.clone()))]));
            let current = l == lang;
            view! {
                <li><a href=href lang=l.code() hreflang=l.code() aria-current=current.then_some("true")>{l.native_name()}</a></li>
            }
        })
        .collect_view();
    let user = viewer.map(|v| {
        let role = lang.t(&format!("role-{}", v.me.role));
        view! {
            <div class="user">
                <span>{v.me.username.clone()} " · " {role}</span>
                <form method="post" action="/logout">
                    <input type="hidden" name="csrf" value=v.csrf/>
                    <button type="submit" class="link">{lang.t("nav-logout")}</button>
                </form>
            </div>
        }
    });
    view! {
        <header class="top">
            <a class="brand" href="/">"Cofre"</a>
            <nav aria-label=lang.t("nav-label")><ul>{nav}</ul></nav>
            <nav class="langs" aria-label=lang.t("nav-language")><ul>{langs}</ul></nav>
            {user}
        </header>
    }
}

/// A page outside the frame (login, refusals).
pub fn message_page(lang: Lang, status: StatusCode, title: &str, message: &str) -> Response {
    let (title_o, message_o) = (title.to_string(), message.to_string());
    let body = render(view! {
        <main id="main" class="narrow">
            <h1>{title_o}</h1>
            <p role="alert">{message_o}</p>
            <p><a href="/">{lang.t("error-back")}</a></p>
        </main>
    });
    respond(status, html(lang, title, &body))
}

/// The title of a page that says the API refused or failed.
fn error_title(lang: Lang, status: StatusCode) -> String {
    match status {
        StatusCode::FORBIDDEN => lang.t("error-title-forbidden"),
        StatusCode::NOT_FOUND => lang.t("error-title-not-found"),
        s if s.is_server_error() => lang.t("error-title-server"),
        _ => lang.t("error-title-refused"),
    }
}

/// The API refused or failed: say what it said.
pub fn error_page(lang: Lang, e: &ApiError) -> Response {
    message_page(lang, e.status, &error_title(lang, e.status), &e.problem.detail)
}

/// The same, inside the frame.
pub fn api_error(ctx: &Ctx, e: &ApiError) -> Response {
    if e.status == StatusCode::UNAUTHORIZED {
        return axum::response::Redirect::to("/login").into_response();
    }
    let detail = e.problem.detail.clone();
    page_with_status(
        ctx,
        e.status,
        &error_title(ctx.lang, e.status),
        view! { <p role="alert" class="error">{detail}</p> },
    )
}

/// Previous / "page N of M" / next, when there is more than one page (`link` makes a page's URL).
pub fn pager(lang: Lang, page: usize, pages: usize, link: impl Fn(usize) -> String) -> Option<AnyView> {
    use crate::i18n::Arg;
    (pages > 1).then(|| {
        let prev = (page > 1).then(|| view! { <a rel="prev" href=link(page - 1)>{lang.t("page-previous")}</a> });
        let next = (page < pages).then(|| view! { <a rel="next" href=link(page + 1)>{lang.t("page-next")}</a> });
        let of = lang.ta("page-of", &[("page", Arg::Int(page as i64)), ("pages", Arg::Int(pages as i64))]);
        view! { <nav class="pager no-print" aria-label=lang.t("page-label")>{prev}<span>{of}</span>{next}</nav> }.into_any()
    })
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(ctx: &Ctx) -> impl IntoView + use<> {
    view! { <input type="hidden" name="csrf" value=ctx.csrf()/> }
}

/// A labelled text field with its hint and the API's message beside it (both tied to the field
/// with `aria-describedby`).
pub fn text_field(
    id: &'static str,
    label: String,
    value: String,
    err: Option<String>,
    hint: Option<String>,
) -> impl IntoView + use<> {
    input(id, "text", label, Some(value), err, hint)
}

/// The same for a secret: a password input that is never filled in, so what was typed is never
/// sent back to the browser (a refused form asks for it again).
pub fn secret_field(
    id: &'static str,
    label: String,
    err: Option<String>,
    hint: Option<String>,
) -> impl IntoView + use<> {
    input(id, "password", label, None, err, hint)
}

fn input(
    id: &'static str,
    kind: &'static str,
    label: String,
    value: Option<String>,
    err: Option<String>,
    hint: Option<String>,
) -> impl IntoView + use<> {
    let err_id = format!("{id}-error");
    let hint_id = format!("{id}-hint");
    let described = match (&err, &hint) {
        (Some(_), Some(_)) => Some(format!("{err_id} {hint_id}")),
        (Some(_), None) => Some(err_id.clone()),
        (None, Some(_)) => Some(hint_id.clone()),
        (None, None) => None,
    };
    let invalid = err.is_some().then_some("true");
    let autocomplete = (kind == "password").then_some("new-password");
    view! {
        <label for=id>{label}</label>
        <input id=id name=id type=kind value=value autocomplete=autocomplete aria-invalid=invalid aria-describedby=described/>
        {hint.map(|h| view! { <p class="muted hint" id=hint_id>{h}</p> })}
        {err.map(|m| view! { <p class="field-error" id=err_id role="alert">{m}</p> })}
    }
}

/// A labelled text area with the API's message beside it.
pub fn text_area(
    id: &'static str,
    label: String,
    value: String,
    err: Option<String>,
) -> impl IntoView + use<> {
    let err_id = format!("{id}-error");
    let invalid = err.is_some().then_some("true");
    let described = err.is_some().then(|| err_id.clone());
    view! {
        <label for=id>{label}</label>
        <textarea id=id name=id rows="4" aria-invalid=invalid aria-describedby=described>{value}</textarea>
        {err.map(|m| view! { <p class="field-error" id=err_id role="alert">{m}</p> })}
    }
}

/// A compliance or machine status, as a coloured word.
pub fn badge(lang: Lang, status: &str) -> impl IntoView + use<> {
    let class = format!("badge s-{status}");
    view! { <span class=class>{lang.t(&format!("status-{status}"))}</span> }
}

/// The API's message for one field, shown next to it.
pub fn field_error(id: &'static str, message: Option<String>) -> impl IntoView + use<> {
    message.map(|m| view! { <p class="field-error" id=id role="alert">{m}</p> })
}

/// Why a rule fails, in this language: from the finding's data when the controller gave it,
/// else the controller's own (English) sentence, marked as English.
pub fn reason(lang: Lang, f: &cofre_api::compliance::Finding) -> AnyView {
    use crate::i18n::Arg;
    match &f.why {
        Some(w) => {
            let mut args = Vec::new();
            if let Some(t) = w.at {
                args.push(("at", Arg::Text(lang.datetime(t))));
            }
            if let Some(t) = w.until {
                args.push(("until", Arg::Text(lang.datetime(t))));
            }
            if let Some(l) = w.limit_seconds {
                args.push(("limit", Arg::Text(lang.limit(l))));
            }
            if let Some(n) = w.count {
                args.push(("count", Arg::Int(n)));
            }
            let key = format!("why-{}", w.code);
            let text = if lang.has(&key) { lang.ta(&key, &args) } else { f.reason.clone() };
            view! { <span class="reason" data-why=w.code.clone()>{text}</span> }.into_any()
        }
        None => view! { <span class="reason" lang="en">{f.reason.clone()}</span> }.into_any(),
    }
}

/// The failing findings' reasons, one after another.
pub fn reasons(lang: Lang, findings: &[cofre_api::compliance::Finding]) -> impl IntoView + use<> {
    let failing: Vec<_> =
        findings.iter().filter(|f| f.status != cofre_api::compliance::Status::Compliant).cloned().collect();
    let n = failing.len();
    failing
        .into_iter()
        .enumerate()
        .map(|(i, f)| view! { {reason(lang, &f)}{(i + 1 < n).then_some("; ")} })
        .collect_view()
}

/// A date as this language writes it, with the exact moment on hover.
pub fn when(lang: Lang, t: Option<chrono::DateTime<chrono::Utc>>) -> impl IntoView + use<> {
    let now = chrono::Utc::now();
    match t {
        Some(t) => {
            let exact = lang.datetime(t);
            view! { <time datetime=t.to_rfc3339() title=exact>{lang.ago(t, now)}</time> }.into_any()
        }
        None => view! { <span class="muted">{lang.t("never")}</span> }.into_any(),
    }
}

/// `GET /assets/portal.css`.
pub async fn stylesheet(_ctx: Extension<Ctx>) -> Response {
    let mut resp = include_str!("../assets/portal.css").into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    resp
}
