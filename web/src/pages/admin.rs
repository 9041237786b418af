//! The fleet's definitions: groups (with the form to add one), policies, repositories and
//! stores. Changes are the API's to allow: a role that may not gets the API's refusal.

use axum::extract::Query;
use axum::response::Response;
use axum::{Extension, Form};
use cofre_api::Items;
use cofre_api::groups::{Group, NewGroup};
use cofre_api::policies::Policy;
use cofre_api::repositories::Repository;
use cofre_api::stores::Store;
use http::{Method, StatusCode};
use leptos::prelude::*;
use serde::Deserialize;

use super::see_other;
use crate::Ctx;
use crate::api::ApiError;
use crate::layout::{self, badge, csrf_field, field_error, when};

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

/// `GET /policies`.
pub async fn policies(Extension(ctx): Extension<Ctx>) -> Response {
    let lang = ctx.lang;
    let policies = match ctx.api.get::<Items<Policy>>("/api/v1/policies").await {
        Ok(p) => p.items,
        Err(e) => return layout::api_error(&ctx, &e),
    };
    let rows = policies
        .into_iter()
        .map(|p| {
            let schedule = p
                .spec
                .schedule
                .as_ref()
                .map(|s| serde_json::to_string(s).unwrap_or_default())
                .unwrap_or_else(|| lang.t("policies-on-demand"));
            view! {
                <tr>
                    <th scope="row"><a href=format!("/policies/{}", p.id)>{p.spec.name.clone()}</a></th>
                    <td>{p.spec.paths.join(", ")}</td>
                    <td><code>{schedule}</code></td>
                    <td class="num">{p.revision.to_string()}</td>
                    <td>{when(lang, Some(p.updated_at))}</td>
                </tr>
            }
        })
        .collect_view();
    let content = view! {
        <table id="policies">
            <thead><tr>
                <th scope="col">{lang.t("col-policy")}</th>
                <th scope="col">{lang.t("col-paths")}</th>
                <th scope="col">{lang.t("policies-schedule")}</th>
                <th scope="col">{lang.t("policies-revision")}</th>
                <th scope="col">{lang.t("policies-updated")}</th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
    };
    layout::page(&ctx, &lang.t("policies-title"), content)
}

/// `GET /repositories`.
pub async fn repositories(Extension(ctx): Extension<Ctx>) -> Response {
    let lang = ctx.lang;
    let repos = match ctx.api.get::<Items<Repository>>("/api/v1/repositories").await {
        Ok(r) => r.items,
        Err(e) => return layout::api_error(&ctx, &e),
    };
    let rows = repos
        .into_iter()
        .map(|r| {
            let kind = if r.per_machine {
                lang.t("repositories-per-machine")
            } else {
                lang.t("repositories-shared")
            };
            view! {
                <tr>
                    <th scope="row">{r.name}</th>
                    <td><code>{r.url}</code></td>
                    <td>{kind}</td>
                    <td>{if r.maintenance_url.is_some() { lang.t("yes") } else { lang.t("no") }}</td>
                    <td>{lang.datetime(r.created_at)}</td>
                </tr>
            }
        })
        .collect_view();
    let content = view! {
        <table id="repositories">
            <thead><tr>
                <th scope="col">{lang.t("repositories-name")}</th>
                <th scope="col">{lang.t("repositories-url")}</th>
                <th scope="col">{lang.t("repositories-layout")}</th>
                <th scope="col">{lang.t("repositories-maintenance")}</th>
                <th scope="col">{lang.t("col-created")}</th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
    };
    layout::page(&ctx, &lang.t("repositories-title"), content)
}

/// `GET /stores`.
pub async fn stores(Extension(ctx): Extension<Ctx>) -> Response {
    let lang = ctx.lang;
    let stores = match ctx.api.get::<Items<Store>>("/api/v1/stores").await {
        Ok(s) => s.items,
        Err(e) => return layout::api_error(&ctx, &e),
    };
    let rows = stores
        .into_iter()
        .map(|s| {
            view! {
                <tr>
                    <th scope="row">{s.name}</th>
                    <td><code>{s.url}</code></td>
                    <td>{badge(lang, &s.status)}</td>
                    <td>{s.store_version}</td>
                    <td>{when(lang, s.last_seen_at)}</td>
                </tr>
            }
        })
        .collect_view();
    let content = view! {
        <table id="stores">
            <thead><tr>
                <th scope="col">{lang.t("stores-name")}</th>
                <th scope="col">{lang.t("repositories-url")}</th>
                <th scope="col">{lang.t("col-status")}</th>
                <th scope="col">{lang.t("stores-version")}</th>
                <th scope="col">{lang.t("col-last-seen")}</th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
    };
    layout::page(&ctx, &lang.t("stores-title"), content)
}
