//! Enrollment: tokens (admins create them and get the ready-to-paste install line, shown once),
//! and the machines waiting for approval (operators approve them).

use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use cofre_api::Items;
use cofre_api::common::Page;
use cofre_api::enrollment::{CreatedEnrollmentToken, EnrollmentToken, NewEnrollmentToken};
use cofre_api::groups::Group;
use cofre_api::machines::Machine;
use http::{Method, StatusCode};
use leptos::prelude::*;
use serde::Deserialize;
use uuid::Uuid;

use crate::Ctx;
use crate::api::ApiError;
use crate::layout::{self, badge, csrf_field, field_error, when};

#[derive(Deserialize, Default, Clone)]
pub struct TokenForm {
    description: String,
    group_id: Option<String>,
    uses: Option<String>,
    ttl_hours: Option<String>,
    requires_approval: Option<String>,
}

/// `GET /enrollment`.
pub async fn page(Extension(ctx): Extension<Ctx>) -> Response {
    render(
        &ctx,
        StatusCode::OK,
        TokenForm { uses: Some("1".into()), ttl_hours: Some("24".into()), ..Default::default() },
        None,
        None,
    )
    .await
}

async fn render(
    ctx: &Ctx,
    status: StatusCode,
    form: TokenForm,
    error: Option<ApiError>,
    created: Option<CreatedEnrollmentToken>,
) -> Response {
    let lang = ctx.lang;
    let is_admin = ctx.viewer.as_ref().is_some_and(|v| v.is_admin());
    let can_operate = ctx.viewer.as_ref().is_some_and(|v| v.can_operate());
    let (pending, groups) = futures::join!(
        ctx.api.get::<Page<Machine>>("/api/v1/machines?status=pending&limit=1000"),
        ctx.api.get::<Items<Group>>("/api/v1/groups"),
    );
    let (pending, groups) = match (pending, groups) {
        (Ok(p), Ok(g)) => (p.items, g.items),
        (Err(e), _) | (_, Err(e)) => return layout::api_error(ctx, &e),
    };
    let tokens = if is_admin {
        match ctx.api.get::<Items<EnrollmentToken>>("/api/v1/enrollment-tokens").await {
            Ok(t) => t.items,
            Err(e) => return layout::api_error(ctx, &e),
        }
    } else {
        Vec::new()
    };
    let group_names: std::collections::HashMap<Uuid, String> =
        groups.iter().map(|g| (g.id, g.name.clone())).collect();
    let created_view = created.map(|c| {
        let line = c.install_line.clone();
        view! {
            <section class="created" aria-labelledby="created-h" role="status">
                <h2 id="created-h">{lang.t("enroll-created")}</h2>
                <p>{lang.t("enroll-shown-once")}</p>
                <label for="install-line">{lang.t("enroll-install-line")}</label>
                {match line {
                    Some(l) => view! { <textarea id="install-line" readonly=true rows="4">{l}</textarea> }.into_any(),
                    None => view! { <p class="muted" id="install-line">{lang.t("enroll-no-agent-binary")}</p> }.into_any(),
                }}
                <label for="token">{lang.t("enroll-token")}</label>
                <input id="token" readonly=true value=c.token/>
            </section>
        }
    });
    let err_field = |name: &str| error.as_ref().and_then(|e| e.field(name));
    let general = error.as_ref().filter(|e| e.problem.errors.is_empty()).map(|e| e.problem.detail.clone());
    let form_view = is_admin.then(|| {
        let group_options = groups
            .iter()
            .map(|g| view! { <option value=g.id.to_string() selected=form.group_id.as_deref() == Some(g.id.to_string().as_str())>{g.name.clone()}</option> })
            .collect_view();
        view! {
            <section aria-labelledby="new-h">
                <h2 id="new-h">{lang.t("enroll-new")}</h2>
                <form method="post" action="/enrollment" class="stack" novalidate=true>
                    {csrf_field(ctx)}
                    <label for="description">{lang.t("enroll-description")}</label>
                    <input id="description" name="description" value=form.description.clone() aria-describedby="description-error"/>
                    {field_error("description-error", err_field("description"))}
                    <label for="group_id">{lang.t("col-group")}</label>
                    <select id="group_id" name="group_id"><option value="">{lang.t("group-none")}</option>{group_options}</select>
                    {field_error("group_id-error", err_field("group_id"))}
                    <label for="uses">{lang.t("enroll-uses")}</label>
                    <input id="uses" name="uses" inputmode="numeric" value=form.uses.clone().unwrap_or_default() aria-describedby="uses-error"/>
                    {field_error("uses-error", err_field("uses"))}
                    <label for="ttl_hours">{lang.t("enroll-ttl")}</label>
                    <input id="ttl_hours" name="ttl_hours" inputmode="numeric" value=form.ttl_hours.clone().unwrap_or_default() aria-describedby="ttl_hours-error"/>
                    {field_error("ttl_hours-error", err_field("ttl_seconds").or_else(|| err_field("ttl_hours")))}
                    <div class="check">
                        <input type="checkbox" id="requires_approval" name="requires_approval" value="yes" checked=form.requires_approval.is_some()/>
                        <label for="requires_approval">{lang.t("enroll-requires-approval")}</label>
                    </div>
                    {general.map(|g| view! { <p class="field-error" role="alert">{g}</p> })}
                    <button type="submit">{lang.t("enroll-create")}</button>
                </form>
            </section>
        }
    });
    let token_rows = tokens
        .into_iter()
        .map(|t| {
            let state = if t.revoked_at.is_some() {
                "revoked"
            } else if t.expires_at < chrono::Utc::now() {
                "expired"
            } else if t.uses_left <= 0 {
                "used"
            } else {
                "active"
            };
            view! {
                <tr>
                    <td>{t.description}</td>
                    <td>{t.group_id.and_then(|g| group_names.get(&g).cloned()).unwrap_or_else(|| lang.t("group-none"))}</td>
                    <td class="num">{t.uses_left.to_string()}</td>
                    <td>{lang.datetime(t.expires_at)}</td>
                    <td>{badge(lang, state)}</td>
                </tr>
            }
        })
        .collect_view();
    let tokens_view = is_admin.then(|| {
        view! {
            <section aria-labelledby="tokens-h">
                <h2 id="tokens-h">{lang.t("enroll-tokens")}</h2>
                <table id="tokens">
                    <thead><tr>
                        <th scope="col">{lang.t("enroll-description")}</th>
                        <th scope="col">{lang.t("col-group")}</th>
                        <th scope="col">{lang.t("enroll-uses-left")}</th>
                        <th scope="col">{lang.t("enroll-expires")}</th>
                        <th scope="col">{lang.t("col-status")}</th>
                    </tr></thead>
                    <tbody>{token_rows}</tbody>
                </table>
            </section>
        }
    });
    let pending_rows = pending
        .into_iter()
        .map(|m| {
            let approve = can_operate.then(|| {
                view! {
                    <form method="post" action=format!("/machines/{}/approve", m.id)>
                        {csrf_field(ctx)}
                        <button type="submit">{lang.t("machine-approve")}</button>
                    </form>
                }
            });
            view! {
                <tr>
                    <th scope="row"><a href=format!("/machines/{}", m.id)>{m.hostname.clone()}</a></th>
                    <td>{m.group_name.clone().unwrap_or_else(|| lang.t("group-none"))}</td>
                    <td>{when(lang, Some(m.enrolled_at))}</td>
                    <td>{approve}</td>
                </tr>
            }
        })
        .collect_view();
    let content = view! {
        {created_view}
        {form_view}
        <section aria-labelledby="pending-h" id="pending">
            <h2 id="pending-h">{lang.t("enroll-pending")}</h2>
            <table id="pending-machines">
                <thead><tr>
                    <th scope="col">{lang.t("col-machine")}</th>
                    <th scope="col">{lang.t("col-group")}</th>
                    <th scope="col">{lang.t("machine-enrolled")}</th>
                    <th scope="col"><span class="sr-only">{lang.t("col-actions")}</span></th>
                </tr></thead>
                <tbody>{pending_rows}</tbody>
            </table>
        </section>
        {tokens_view}
    };
    layout::page_with_status(ctx, status, &lang.t("enroll-title"), content)
}

/// `POST /enrollment`: a new token; the answer shows it once with its install line (not a
/// redirect: the secret must not travel in a URL or be stored to show it again).
pub async fn create(Extension(ctx): Extension<Ctx>, Form(f): Form<TokenForm>) -> Response {
    let lang = ctx.lang;
    let mut fields = Vec::new();
    let uses = match f.uses.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                fields.push(cofre_api::common::FieldError::new("uses", lang.t("form-whole-number")));
                None
            }
        },
    };
    let ttl_seconds = match f.ttl_hours.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(h) => Some(h.saturating_mul(3600)),
            Err(_) => {
                fields.push(cofre_api::common::FieldError::new("ttl_hours", lang.t("form-whole-number")));
                None
            }
        },
    };
    let group_id = f.group_id.as_deref().filter(|g| !g.is_empty()).and_then(|g| Uuid::parse_str(g).ok());
    if !fields.is_empty() {
        let mut e = ApiError::invalid(lang.t("form-fix-fields"));
        e.problem.errors = fields;
        return render(&ctx, StatusCode::UNPROCESSABLE_ENTITY, f, Some(e), None).await;
    }
    let body = NewEnrollmentToken {
        description: f.description.clone(),
        group_id,
        uses,
        ttl_seconds,
        requires_approval: f.requires_approval.is_some(),
    };
    match ctx
        .api
        .send::<_, CreatedEnrollmentToken>(Method::POST, "/api/v1/enrollment-tokens", Some(&body), &[])
        .await
    {
        Ok(created) => {
            let mut resp = render(
                &ctx,
                StatusCode::CREATED,
                TokenForm { uses: Some("1".into()), ttl_hours: Some("24".into()), ..Default::default() },
                None,
                Some(created),
            )
            .await;
            resp.headers_mut()
                .insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
            resp.into_response()
        }
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY || e.status == StatusCode::BAD_REQUEST => {
            let status = e.status;
            render(&ctx, status, f, Some(e), None).await
        }
        Err(e) => layout::api_error(&ctx, &e),
    }
}
