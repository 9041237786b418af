//! The cofre-store instances, and for fleet-wide admins the form to register one (the answer
//! shows the store's enrollment token once: not stored, not redirected to, like an enrollment
//! token it is never shown again) and a revoke button per store (with a confirmation box; a
//! revoked store never reaches the controller again and serves from its last access list until
//! it is stopped).

use axum::extract::{Path, Query};
use axum::response::Response;
use axum::{Extension, Form};
use cofre_api::Items;
use cofre_api::stores::{CreatedStore, NewStore, Store};
use http::{Method, StatusCode};
use leptos::prelude::*;
use serde::Deserialize;

use super::see_other;
use crate::Ctx;
use crate::api::ApiError;
use crate::layout::{self, badge, csrf_field, text_field, when};

#[derive(Deserialize, Default)]
pub struct StoreForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    url: String,
}

#[derive(Deserialize, Default)]
pub struct Notice {
    done: Option<String>,
}

/// `GET /stores`.
pub async fn list(Extension(ctx): Extension<Ctx>, Query(n): Query<Notice>) -> Response {
    let revoked = n.done.as_deref() == Some("store-revoked");
    render(&ctx, StatusCode::OK, &StoreForm::default(), None, None, revoked).await
}

/// `POST /stores/{id}/revoke` (only with the confirmation box ticked): the store can no longer
/// reach the controller, and its certificates are refused.
pub async fn revoke(
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<uuid::Uuid>,
    Form(f): Form<super::Confirm>,
) -> Response {
    if let Some(page) = f.unticked(&ctx, "stores-revoke-unconfirmed") {
        return page;
    }
    match ctx.api.send::<(), Store>(Method::POST, &format!("/api/v1/stores/{id}/revoke"), None, &[]).await {
        Ok(_) => see_other("/stores", "store-revoked"),
        Err(e) => layout::api_error(&ctx, &e),
    }
}

/// `POST /stores`: registered (its token shown once, with an empty form) or refused beside the
/// field the API names.
pub async fn create(Extension(ctx): Extension<Ctx>, Form(f): Form<StoreForm>) -> Response {
    let body = NewStore { name: f.name.trim().to_string(), url: f.url.trim().to_string() };
    match ctx.api.send::<_, CreatedStore>(Method::POST, "/api/v1/stores", Some(&body), &[]).await {
        Ok(created) => {
            render(&ctx, StatusCode::CREATED, &StoreForm::default(), None, Some(created), false).await
        }
        Err(e)
            if e.status.is_client_error()
                && ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&e.status) =>
        {
            render(&ctx, e.status, &f, Some(e), None, false).await
        }
        Err(e) => layout::api_error(&ctx, &e),
    }
}

/// The list, the register form (as typed, with the API's refusal of it), a just-registered
/// store's token, and whether a store was just revoked.
async fn render(
    ctx: &Ctx,
    status: StatusCode,
    f: &StoreForm,
    error: Option<ApiError>,
    created: Option<CreatedStore>,
    revoked: bool,
) -> Response {
    let lang = ctx.lang;
    let editable = ctx.viewer.as_ref().is_some_and(|v| v.is_admin() && v.fleet_wide());
    let stores = match ctx.api.get::<Items<Store>>("/api/v1/stores").await {
        Ok(s) => s.items,
        Err(e) => return layout::api_error(ctx, &e),
    };
    let rows = stores
        .into_iter()
        .map(|s| {
            let revoke = (editable && s.status != "revoked").then(|| {
                super::confirm_form(
                    ctx,
                    format!("/stores/{}/revoke", s.id),
                    format!("confirm-revoke-{}", s.id),
                    lang.t("stores-revoke-confirm"),
                    lang.t("stores-revoke"),
                )
            });
            view! {
                <tr>
                    <th scope="row">{s.name}</th>
                    <td><code>{s.url}</code></td>
                    <td>{badge(lang, &s.status)}</td>
                    <td>{s.store_version}</td>
                    <td>{when(lang, s.last_seen_at)}</td>
                    {editable.then(|| view! { <td>{revoke}</td> })}
                </tr>
            }
        })
        .collect_view();
    let notice =
        revoked.then(|| view! { <p class="notice" role="status">{lang.t("notice-store-revoked")}</p> });
    let created = created.map(|c| {
        view! {
            <section class="created" aria-labelledby="created-h" role="status">
                <h2 id="created-h">{lang.t("stores-created")}</h2>
                <p>{lang.t("stores-shown-once")}</p>
                <label for="store-token">{lang.t("enroll-token")}</label>
                <input id="store-token" readonly=true value=c.token/>
            </section>
        }
    });
    let err = |name: &str| error.as_ref().and_then(|e| e.field(name));
    let general = error.as_ref().filter(|e| e.problem.errors.is_empty()).map(|e| e.problem.detail.clone());
    let form = editable.then(|| {
        view! {
            <section aria-labelledby="new-store-h">
                <h2 id="new-store-h">{lang.t("stores-new")}</h2>
                <form method="post" action="/stores" class="stack" novalidate=true>
                    {csrf_field(ctx)}
                    {text_field("name", lang.t("stores-name"), f.name.clone(), err("name"), None)}
                    {text_field("url", lang.t("repositories-url"), f.url.clone(), err("url"), Some(lang.t("stores-url-hint")))}
                    {general.map(|g| view! { <p class="field-error" role="alert" id="form-error">{g}</p> })}
                    <button type="submit">{lang.t("stores-create")}</button>
                </form>
            </section>
        }
    });
    let content = view! {
        {notice}
        {created}
        <table id="stores">
            <thead><tr>
                <th scope="col">{lang.t("stores-name")}</th>
                <th scope="col">{lang.t("repositories-url")}</th>
                <th scope="col">{lang.t("col-status")}</th>
                <th scope="col">{lang.t("stores-version")}</th>
                <th scope="col">{lang.t("col-last-seen")}</th>
                {editable.then(|| view! { <th scope="col">{lang.t("col-actions")}</th> })}
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
        {form}
    };
    layout::page_with_status(ctx, status, &lang.t("stores-title"), content)
}
