//! Groups (departments), with the form to add one. Changes are the API's to allow: a role that
//! may not gets the API's refusal. Policies, repositories and stores have their own files.

use axum::extract::Query;
use axum::response::Response;
use axum::{Extension, Form};
use cofre_api::Items;
use cofre_api::groups::{Group, NewGroup};
use http::{Method, StatusCode};
use leptos::prelude::*;
use serde::Deserialize;

use super::see_other;
use crate::Ctx;
use crate::api::ApiError;
use crate::layout::{self, csrf_field, field_error};

#[derive(Deserialize, Default)]
pub struct Notice {
    done: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct GroupForm {
    name: String,
}

/// `GET /groups`.
pub async fn groups(Extension(ctx): Extension<Ctx>, Query(n): Query<Notice>) -> Response {
    groups_page(&ctx, StatusCode::OK, "", None, n.done.as_deref() == Some("group")).await
}

async fn groups_page(
    ctx: &Ctx,
    status: StatusCode,
    name: &str,
    error: Option<ApiError>,
    done: bool,
) -> Response {
    let lang = ctx.lang;
    let groups = match ctx.api.get::<Items<Group>>("/api/v1/groups").await {
        Ok(g) => g.items,
        Err(e) => return layout::api_error(ctx, &e),
    };
    let rows = groups
        .into_iter()
        .map(|g| {
            view! {
                <tr>
                    <th scope="row"><a href=format!("/machines?group={}", g.id)>{g.name}</a></th>
                    <td>{lang.datetime(g.created_at)}</td>
                </tr>
            }
        })
        .collect_view();
    let message = error.as_ref().map(|e| e.field("name").unwrap_or_else(|| e.problem.detail.clone()));
    let invalid = message.is_some().then_some("true");
    let form = ctx.viewer.as_ref().is_some_and(|v| v.is_admin() && v.fleet_wide()).then(|| {
        view! {
            <form method="post" action="/groups" class="stack" novalidate=true>
                {csrf_field(ctx)}
                <label for="name">{lang.t("groups-name")}</label>
                <input id="name" name="name" value=name.to_string() aria-invalid=invalid aria-describedby="name-error"/>
                {field_error("name-error", message)}
                <button type="submit">{lang.t("groups-create")}</button>
            </form>
        }
    });
    let notice = done.then(|| view! { <p class="notice" role="status">{lang.t("notice-group")}</p> });
    let content = view! {
        {notice}
        <table id="groups-list">
            <thead><tr><th scope="col">{lang.t("groups-name")}</th><th scope="col">{lang.t("col-created")}</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
        {form}
    };
    layout::page_with_status(ctx, status, &lang.t("groups-title"), content)
}

/// `POST /groups`.
pub async fn create_group(Extension(ctx): Extension<Ctx>, Form(f): Form<GroupForm>) -> Response {
    let body = NewGroup { name: f.name.clone() };
    match ctx.api.send::<_, Group>(Method::POST, "/api/v1/groups", Some(&body), &[]).await {
        Ok(_) => see_other("/groups", "group"),
        Err(e) if e.status.is_client_error() && e.status != StatusCode::UNAUTHORIZED => {
            let status = e.status;
            groups_page(&ctx, status, &f.name, Some(e), false).await
        }
        Err(e) => layout::api_error(&ctx, &e),
    }
}
