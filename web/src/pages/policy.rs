//! One policy: its main settings in a form (admins change them; everyone else reads them), the
//! API's message next to each field it refuses, and an edit that lost a race with another is
//! refused rather than overwriting it (If-Match with the revision the form was made from). Below:
//! where it applies (`assignments.rs` renders that section; applying the policy to one more
//! group or machine is posted here, since a refusal re-renders this page) and its history.

use axum::extract::{Path, Query};
use axum::response::Response;
use axum::{Extension, Form};
use cofre_api::common::FieldError;
use cofre_api::policies::{Assignment, Policy, PolicyDiff, PolicyVersion};
use http::{Method, StatusCode, header};
use leptos::prelude::*;
use serde::Deserialize;
use uuid::Uuid;

use super::policy_form::{self, PolicyForm};
use super::{assignments, see_other};
use crate::Ctx;
use crate::api::ApiError;
use crate::layout::{self, csrf_field};

async fn load(ctx: &Ctx, id: Uuid) -> Result<(Policy, String), ApiError> {
    let (headers, bytes) = ctx.api.get_raw(format!("/api/v1/policies/{id}")).await?;
    let policy: Policy = serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(e.to_string()))?;
    let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    Ok((policy, etag))
}

#[derive(Deserialize, Default)]
pub struct Notice {
    done: Option<String>,
}

/// `GET /policies/{id}`.
pub async fn page(Extension(ctx): Extension<Ctx>, Path(id): Path<Uuid>, Query(n): Query<Notice>) -> Response {
    let notice = match n.done.as_deref() {
        Some("saved") => Some("notice-policy-saved"),
        Some("created") => Some("notice-policy-created"),
        Some("assigned") => Some("notice-assigned"),
        Some("unassigned") => Some("notice-unassigned"),
        _ => None,
    };
    show(&ctx, id, StatusCode::OK, notice, None).await
}

/// The policy's page with its settings, where it applies and its history; `refused` is the
/// assignment form's value and the API's refusal of it.
async fn show(
    ctx: &Ctx,
    id: Uuid,
    status: StatusCode,
    notice: Option<&'static str>,
    refused: Option<(String, ApiError)>,
) -> Response {
    let (p, etag) = match load(ctx, id).await {
        Ok(p) => p,
        Err(e) => return layout::api_error(ctx, &e),
    };
    let form = PolicyForm::of(&p.spec, &etag);
    let (history, assignments) = futures::join!(history(ctx, &p), assignments::section(ctx, p.id, refused));
    match (history, assignments) {
        (Ok(h), Ok(a)) => render(ctx, status, &p, &form, &[], notice, Some(a + &h)),
        (Err(e), _) | (_, Err(e)) => layout::api_error(ctx, &e),
    }
}

/// Every revision, newest first, each with what changed from the one before.
async fn history(ctx: &Ctx, p: &Policy) -> Result<String, ApiError> {
    let lang = ctx.lang;
    let versions: cofre_api::Items<PolicyVersion> =
        ctx.api.get(format!("/api/v1/policies/{}/versions", p.id)).await?;
    let mut versions = versions.items;
    versions.sort_by_key(|v| std::cmp::Reverse(v.revision));
    let diffs = futures::future::join_all(versions.iter().filter(|v| v.revision > 1).map(|v| {
        ctx.api.get::<PolicyDiff>(format!(
            "/api/v1/policies/{}/diff?from={}&to={}",
            p.id,
            v.revision - 1,
            v.revision
        ))
    }))
    .await;
    let mut changes: std::collections::HashMap<i64, Vec<cofre_api::policies::Change>> =
        std::collections::HashMap::new();
    for d in diffs {
        let d = d?;
        changes.insert(d.to, d.changes);
    }
    let show =
        |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "—".into());
    let rows = versions
        .into_iter()
        .map(|v| {
            let list = changes
                .remove(&v.revision)
                .unwrap_or_default()
                .into_iter()
                .map(|c| view! { <li><code>{c.field}</code>": " {show(&c.old)} " → " {show(&c.new)}</li> })
                .collect_view();
            view! {
                <tr>
                    <td class="num">{v.revision.to_string()}</td>
                    <td>{lang.datetime(v.changed_at)}</td>
                    <td>{v.changed_by}</td>
                    <td><ul class="findings">{list}</ul></td>
                </tr>
            }
        })
        .collect_view();
    Ok(layout::render(view! {
        <section aria-labelledby="history-h" id="history">
            <h2 id="history-h">{lang.t("policy-history")}</h2>
            <table>
                <thead><tr>
                    <th scope="col">{lang.t("policies-revision")}</th>
                    <th scope="col">{lang.t("col-time")}</th>
                    <th scope="col">{lang.t("audit-actor")}</th>
                    <th scope="col">{lang.t("policy-changes")}</th>
                </tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </section>
    }))
}

/// `POST /policies/{id}`: the change, refused field by field or saved (then back to the page).
pub async fn save(
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<Uuid>,
    Form(f): Form<PolicyForm>,
) -> Response {
    let lang = ctx.lang;
    let (policy, _) = match load(&ctx, id).await {
        Ok(p) => p,
        Err(e) => return layout::api_error(&ctx, &e),
    };
    let spec = match f.apply(lang, policy.spec.clone()) {
        Ok(s) => s,
        Err(errors) => {
            return render(&ctx, StatusCode::UNPROCESSABLE_ENTITY, &policy, &f, &errors, None, None);
        }
    };
    let if_match = vec![("if-match", f.etag.clone())];
    match ctx
        .api
        .send::<_, Policy>(Method::PUT, &format!("/api/v1/policies/{id}"), Some(&spec), &if_match)
        .await
    {
        Ok(_) => see_other(&format!("/policies/{id}"), "saved"),
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY && !e.problem.errors.is_empty() => {
            render(&ctx, e.status, &policy, &f, &e.problem.errors, None, None)
        }
        Err(e) if e.status == StatusCode::PRECONDITION_FAILED => {
            let errors = [FieldError::new("", lang.t("policy-changed-meanwhile"))];
            render(&ctx, e.status, &policy, &f, &errors, None, None)
        }
        Err(e) => layout::api_error(&ctx, &e),
    }
}

/// The page; `more` is the rest of it, already rendered (where the policy applies, its history).
fn render(
    ctx: &Ctx,
    status: StatusCode,
    p: &Policy,
    f: &PolicyForm,
    errors: &[FieldError],
    notice: Option<&'static str>,
    more: Option<String>,
) -> Response {
    let lang = ctx.lang;
    let editable = ctx.viewer.as_ref().is_some_and(|v| v.is_admin() && v.fleet_wide());
    let notice = notice.map(|key| view! { <p class="notice" role="status">{lang.t(key)}</p> });
    let title = p.spec.name.clone();
    let content = view! {
        {notice}
        <p class="muted">{lang.ta("policy-revision", &[("revision", crate::i18n::Arg::Int(p.revision))])}</p>
        {policy_form::other_errors(errors)}
        <form method="post" action=format!("/policies/{}", p.id) class="stack policy" novalidate=true>
            {csrf_field(ctx)}
            <input type="hidden" name="etag" value=f.etag.clone()/>
            {policy_form::fieldsets(lang, f, errors, editable, None)}
            {editable.then(|| view! { <button type="submit">{lang.t("policy-save")}</button> })}
        </form>
        <p class="muted">{lang.t("policy-more")}</p>
        {more.map(|h| view! { <div inner_html=h></div> })}
    };
    layout::page_with_status(ctx, status, &title, content)
}

/// `POST /policies/{id}/assignments`: applied (back to the policy's page) or refused beside the
/// choice.
pub async fn assign(
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<Uuid>,
    Form(f): Form<super::assignments::AssignForm>,
) -> Response {
    let Some(body) = f.assignment() else {
        let e = ApiError::invalid(ctx.lang.t("assign-choose"));
        return show(&ctx, id, e.status, None, Some((f.target, e))).await;
    };
    match ctx
        .api
        .send::<_, Assignment>(Method::POST, &format!("/api/v1/policies/{id}/assignments"), Some(&body), &[])
        .await
    {
        Ok(_) => see_other(&format!("/policies/{id}"), "assigned"),
        Err(e)
            if e.status.is_client_error()
                && ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN, StatusCode::NOT_FOUND]
                    .contains(&e.status) =>
        {
            show(&ctx, id, e.status, None, Some((f.target, e))).await
        }
        Err(e) => layout::api_error(&ctx, &e),
    }
}
