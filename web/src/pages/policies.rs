//! The policies: every one with its paths and schedule, and for fleet-wide admins the form to
//! create one (the same fields as a policy's page, plus its repository); a created policy opens
//! on its own page, a refused one comes back with the API's message beside each field.

use axum::response::Response;
use axum::{Extension, Form};
use cofre_api::Items;
use cofre_api::common::FieldError;
use cofre_api::policies::Policy;
use cofre_api::repositories::Repository;
use http::{Method, StatusCode};
use leptos::prelude::*;

use super::policy_form::{self, PolicyForm};
use super::see_other;
use crate::Ctx;
use crate::layout::{self, csrf_field, when};

/// `GET /policies`.
pub async fn list(Extension(ctx): Extension<Ctx>) -> Response {
    render(&ctx, StatusCode::OK, &PolicyForm::blank(), &[]).await
}

/// `POST /policies`: the new policy, refused field by field or created (then its page).
pub async fn create(Extension(ctx): Extension<Ctx>, Form(f): Form<PolicyForm>) -> Response {
    let spec = match f.new_spec(ctx.lang) {
        Ok(s) => s,
        Err(errors) => return render(&ctx, StatusCode::UNPROCESSABLE_ENTITY, &f, &errors).await,
    };
    match ctx.api.send::<_, Policy>(Method::POST, "/api/v1/policies", Some(&spec), &[]).await {
        Ok(p) => see_other(&format!("/policies/{}", p.id), "created"),
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY || e.status == StatusCode::CONFLICT => {
            let errors = if e.problem.errors.is_empty() {
                vec![FieldError::new("", e.problem.detail.clone())]
            } else {
                e.problem.errors.clone()
            };
            render(&ctx, e.status, &f, &errors).await
        }
        Err(e) => layout::api_error(&ctx, &e),
    }
}

async fn render(ctx: &Ctx, status: StatusCode, f: &PolicyForm, errors: &[FieldError]) -> Response {
    let lang = ctx.lang;
    let editable = ctx.viewer.as_ref().is_some_and(|v| v.is_admin() && v.fleet_wide());
    let (policies, repositories) = futures::join!(
        ctx.api.get::<Items<Policy>>("/api/v1/policies"),
        ctx.api.get::<Items<Repository>>("/api/v1/repositories"),
    );
    let (policies, repositories) = match (policies, repositories) {
        (Ok(p), Ok(r)) => (p.items, r.items),
        (Err(e), _) | (_, Err(e)) => return layout::api_error(ctx, &e),
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
    let form = editable.then(|| {
        view! {
            <section aria-labelledby="new-policy-h">
                <h2 id="new-policy-h">{lang.t("policy-new")}</h2>
                {policy_form::other_errors(errors)}
                <form method="post" action="/policies" class="stack policy" novalidate=true>
                    {csrf_field(ctx)}
                    {policy_form::fieldsets(lang, f, errors, true, Some(repositories))}
                    <button type="submit">{lang.t("policy-create")}</button>
                </form>
            </section>
        }
    });
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
        {form}
    };
    layout::page_with_status(ctx, status, &lang.t("policies-title"), content)
}
