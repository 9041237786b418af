//! Repository definitions (where backups go): the list, and for fleet-wide admins the form to
//! define one and a delete button per definition (with a confirmation box; the API refuses to
//! delete one a policy uses or that holds restic repositories, and the page says why). Its
//! passwords are write-only all the way: typed into password inputs, sent to the API, never put
//! back into a page (a refused form is shown again without them, and the API answers only
//! whether one is set).

use axum::extract::{Path, Query};
use axum::response::Response;
use axum::{Extension, Form};
use cofre_api::Items;
use cofre_api::repositories::{NewRepository, Repository};
use http::{Method, StatusCode};
use leptos::prelude::*;
use serde::Deserialize;

use super::see_other;
use crate::Ctx;
use crate::api::ApiError;
use crate::layout::{self, csrf_field, secret_field, text_area, text_field};

#[derive(Deserialize, Default)]
pub struct Notice {
    done: Option<String>,
}

/// The form's fields, as typed (no `Debug`: it holds the passwords).
#[derive(Deserialize, Default)]
pub struct RepositoryForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    url: String,
    /// `shared` or (anything else) one per machine.
    #[serde(default)]
    layout: String,
    #[serde(default)]
    path_template: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    ca_certificate_pem: String,
    allow_insecure_http: Option<String>,
    #[serde(default)]
    maintenance_url: String,
    #[serde(default)]
    maintenance_username: String,
    #[serde(default)]
    maintenance_password: String,
}

fn given(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

impl RepositoryForm {
    fn body(&self) -> NewRepository {
        NewRepository {
            name: self.name.trim().to_string(),
            url: self.url.trim().to_string(),
            per_machine: self.layout != "shared",
            path_template: given(&self.path_template),
            username: given(&self.username),
            // A password is taken as typed (spaces may be part of it).
            password: Some(self.password.clone()).filter(|p| !p.is_empty()),
            ca_certificate_pem: given(&self.ca_certificate_pem),
            allow_insecure_http: self.allow_insecure_http.is_some(),
            maintenance_url: given(&self.maintenance_url),
            maintenance_username: given(&self.maintenance_username),
            maintenance_password: Some(self.maintenance_password.clone()).filter(|p| !p.is_empty()),
        }
    }
}

/// `GET /repositories`.
pub async fn list(Extension(ctx): Extension<Ctx>, Query(n): Query<Notice>) -> Response {
    let done = match n.done.as_deref() {
        Some("repository") => Some("notice-repository"),
        Some("repository-deleted") => Some("notice-repository-deleted"),
        _ => None,
    };
    render(&ctx, StatusCode::OK, &RepositoryForm::default(), None, done, None).await
}

/// `POST /repositories/{id}/delete` (only with the confirmation box ticked): deleted (back to
/// the list), or the API's refusal above the list (in use, holds restic repositories).
pub async fn delete(
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<uuid::Uuid>,
    Form(f): Form<super::Confirm>,
) -> Response {
    if let Some(page) = f.unticked(&ctx, "repositories-delete-unconfirmed") {
        return page;
    }
    match ctx.api.act::<()>(Method::DELETE, &format!("/api/v1/repositories/{id}"), None).await {
        Ok(()) => see_other("/repositories", "repository-deleted"),
        Err(e) if [StatusCode::CONFLICT, StatusCode::NOT_FOUND].contains(&e.status) => {
            let why = Some(e.problem.detail.clone());
            render(&ctx, e.status, &RepositoryForm::default(), None, None, why).await
        }
        Err(e) => layout::api_error(&ctx, &e),
    }
}

/// `POST /repositories`: defined (back to the list) or refused beside the field the API names.
pub async fn create(Extension(ctx): Extension<Ctx>, Form(f): Form<RepositoryForm>) -> Response {
    match ctx.api.send::<_, Repository>(Method::POST, "/api/v1/repositories", Some(&f.body()), &[]).await {
        Ok(_) => see_other("/repositories", "repository"),
        Err(e)
            if e.status.is_client_error()
                && ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&e.status) =>
        {
            render(&ctx, e.status, &f, Some(e), None, None).await
        }
        Err(e) => layout::api_error(&ctx, &e),
    }
}

/// The list, the create form (as typed, with the API's refusal of it), a notice (message key)
/// and a refused deletion's reason above the list.
async fn render(
    ctx: &Ctx,
    status: StatusCode,
    f: &RepositoryForm,
    error: Option<ApiError>,
    done: Option<&str>,
    refused: Option<String>,
) -> Response {
    let lang = ctx.lang;
    let editable = ctx.viewer.as_ref().is_some_and(|v| v.is_admin() && v.fleet_wide());
    let repos = match ctx.api.get::<Items<Repository>>("/api/v1/repositories").await {
        Ok(r) => r.items,
        Err(e) => return layout::api_error(ctx, &e),
    };
    let rows = repos
        .into_iter()
        .map(|r| {
            let kind = if r.per_machine {
                lang.t("repositories-per-machine")
            } else {
                lang.t("repositories-shared")
            };
            let delete = editable.then(|| {
                let form = super::confirm_form(
                    ctx,
                    format!("/repositories/{}/delete", r.id),
                    format!("confirm-delete-{}", r.id),
                    lang.t("repositories-delete-confirm"),
                    lang.t("repositories-delete"),
                );
                view! { <td>{form}</td> }
            });
            view! {
                <tr>
                    <th scope="row">{r.name}</th>
                    <td><code>{r.url}</code></td>
                    <td>{kind}</td>
                    <td>{if r.maintenance_url.is_some() { lang.t("yes") } else { lang.t("no") }}</td>
                    <td>{lang.datetime(r.created_at)}</td>
                    {delete}
                </tr>
            }
        })
        .collect_view();
    let err = |name: &str| error.as_ref().and_then(|e| e.field(name));
    let general = error.as_ref().filter(|e| e.problem.errors.is_empty()).map(|e| e.problem.detail.clone());
    let form = editable.then(|| {
        let shared = f.layout == "shared";
        view! {
            <section aria-labelledby="new-repository-h">
                <h2 id="new-repository-h">{lang.t("repositories-new")}</h2>
                <form method="post" action="/repositories" class="stack" id="new-repository" novalidate=true autocomplete="off">
                    {csrf_field(ctx)}
                    {text_field("name", lang.t("repositories-name"), f.name.clone(), err("name"), None)}
                    {text_field("url", lang.t("repositories-url"), f.url.clone(), err("url"), Some(lang.t("repositories-url-hint")))}
                    <label for="layout">{lang.t("repositories-layout")}</label>
                    <select id="layout" name="layout">
                        <option value="per_machine" selected=!shared>{lang.t("repositories-per-machine")}</option>
                        <option value="shared" selected=shared>{lang.t("repositories-shared")}</option>
                    </select>
                    {text_field("path_template", lang.t("repositories-path-template"), f.path_template.clone(), err("path_template"), Some(lang.t("repositories-path-template-hint")))}
                    {text_field("username", lang.t("repositories-username"), f.username.clone(), err("username"), None)}
                    {secret_field("password", lang.t("repositories-password"), err("password"), Some(lang.t("repositories-password-hint")))}
                    {text_area("ca_certificate_pem", lang.t("repositories-ca"), f.ca_certificate_pem.clone(), err("ca_certificate_pem"))}
                    <div class="check">
                        <input type="checkbox" id="allow_insecure_http" name="allow_insecure_http" value="yes" checked=f.allow_insecure_http.is_some()/>
                        <label for="allow_insecure_http">{lang.t("repositories-insecure")}</label>
                    </div>
                    {text_field("maintenance_url", lang.t("repositories-maintenance-url"), f.maintenance_url.clone(), err("maintenance_url"), Some(lang.t("repositories-maintenance-hint")))}
                    {text_field("maintenance_username", lang.t("repositories-maintenance-username"), f.maintenance_username.clone(), err("maintenance_username"), None)}
                    {secret_field("maintenance_password", lang.t("repositories-maintenance-password"), err("maintenance_password"), None)}
                    {general.map(|g| view! { <p class="field-error" role="alert" id="form-error">{g}</p> })}
                    <button type="submit">{lang.t("repositories-create")}</button>
                </form>
            </section>
        }
    });
    let notice = done.map(|key| view! { <p class="notice" role="status">{lang.t(key)}</p> });
    let refused = refused.map(|why| view! { <p class="field-error" role="alert" id="refused">{why}</p> });
    let content = view! {
        {notice}
        {refused}
        <table id="repositories">
            <thead><tr>
                <th scope="col">{lang.t("repositories-name")}</th>
                <th scope="col">{lang.t("repositories-url")}</th>
                <th scope="col">{lang.t("repositories-layout")}</th>
                <th scope="col">{lang.t("repositories-maintenance")}</th>
                <th scope="col">{lang.t("col-created")}</th>
                {editable.then(|| view! { <th scope="col">{lang.t("col-actions")}</th> })}
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
        <p class="muted">{lang.t("repositories-more")}</p>
        {form}
    };
    layout::page_with_status(ctx, status, &lang.t("repositories-title"), content)
}
