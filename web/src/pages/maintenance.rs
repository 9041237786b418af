//! Maintenance: every restic repository with its last forget, prune and check (run by the
//! controller's maintenance identity, never by agents), the maintenance jobs, and "run now" for
//! the roles that may.

use axum::extract::{Path, Query};
use axum::response::Response;
use axum::{Extension, Form};
use cofre_api::Items;
use cofre_api::common::Page;
use cofre_api::jobs::Job;
use cofre_api::repositories::{ResticRepository, RunMaintenance};
use http::Method;
use leptos::prelude::*;
use serde::Deserialize;
use uuid::Uuid;

use super::see_other;
use crate::layout::{self, badge, csrf_field, when};
use crate::{Ctx, Lang};

#[derive(Deserialize, Default)]
pub struct Notice {
    done: Option<String>,
    page: Option<usize>,
}

/// Repositories per page (a city has one per machine).
const PER_PAGE: usize = 100;

/// The last run of one kind, as the API gives it (`{id, state, finished_at}`).
fn last(lang: Lang, v: Option<&serde_json::Value>) -> AnyView {
    let state = v.and_then(|v| v.get("state")).and_then(|s| s.as_str()).map(str::to_string);
    let at = v
        .and_then(|v| v.get("finished_at"))
        .and_then(|t| t.as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    match state {
        Some(s) => view! { {badge(lang, &s)} " " {when(lang, at)} }.into_any(),
        None => view! { <span class="muted">{lang.t("never")}</span> }.into_any(),
    }
}

/// `GET /maintenance`.
pub async fn page(Extension(ctx): Extension<Ctx>, Query(n): Query<Notice>) -> Response {
    let lang = ctx.lang;
    let page = n.page.unwrap_or(1).max(1);
    // One more than a page: whether there is a next one.
    let path = format!(
        "/api/v1/restic-repositories?limit={}&offset={}",
        PER_PAGE + 1,
        (page - 1).saturating_mul(PER_PAGE)
    );
    let (repos, jobs) = futures::join!(
        ctx.api.get::<Items<ResticRepository>>(&path),
        ctx.api.get::<Page<Job>>("/api/v1/maintenance/jobs?limit=50")
    );
    let (mut repos, jobs) = match (repos, jobs) {
        (Ok(r), Ok(j)) => (r.items, j.items),
        (Err(e), _) | (_, Err(e)) => return layout::api_error(&ctx, &e),
    };
    let more = repos.len() > PER_PAGE;
    repos.truncate(PER_PAGE);
    let link = |p: usize| format!("/maintenance?page={p}");
    let pager = (page > 1 || more).then(|| {
        let prev =
            (page > 1).then(|| view! { <a rel="prev" href=link(page - 1)>{lang.t("page-previous")}</a> });
        let next = more.then(|| view! { <a rel="next" href=link(page + 1)>{lang.t("page-next")}</a> });
        view! { <nav class="pager no-print" aria-label=lang.t("page-label")>{prev}" "{next}</nav> }
    });
    let can_operate = ctx.viewer.as_ref().is_some_and(|v| v.can_operate());
    let rows = repos
        .iter()
        .map(|r| {
            let owner = r.hostname.clone().unwrap_or_else(|| lang.t("maintenance-shared"));
            let state = if r.initialised_at.is_some() {
                view! { {badge(lang, "active")} }.into_any()
            } else {
                let why = r.init_error.clone().unwrap_or_default();
                view! { {badge(lang, "pending")} " " <span class="reason">{why}</span> }.into_any()
            };
            let actions = (can_operate && r.initialised_at.is_some()).then(|| {
                ["forget", "prune", "check"]
                    .into_iter()
                    .map(|kind| {
                        view! {
                            <form method="post" action=format!("/maintenance/{}", r.id)>
                                {csrf_field(&ctx)}
                                <input type="hidden" name="kind" value=kind/>
                                <button type="submit" class="small">{lang.t(&format!("kind-{kind}"))}</button>
                            </form>
                        }
                    })
                    .collect_view()
            });
            view! {
                <tr>
                    <th scope="row">{owner}</th>
                    <td><code>{r.url.clone()}</code></td>
                    <td>{state}</td>
                    <td class="num">{lang.number(r.snapshots)}</td>
                    <td>{last(lang, r.last_forget.as_ref())}</td>
                    <td>{last(lang, r.last_prune.as_ref())}</td>
                    <td>{last(lang, r.last_check.as_ref())}</td>
                    <td class="actions">{actions}</td>
                </tr>
            }
        })
        .collect_view();
    let notice = n
        .done
        .filter(|d| d == "queued")
        .map(|_| view! { <p class="notice" role="status">{lang.t("notice-maintenance")}</p> });
    let names = std::collections::BTreeMap::new();
    let content = view! {
        {notice}
        <p class="muted">{lang.t("maintenance-intro")}</p>
        <table id="restic-repositories">
            <thead><tr>
                <th scope="col">{lang.t("col-machine")}</th>
                <th scope="col">{lang.t("repositories-url")}</th>
                <th scope="col">{lang.t("col-status")}</th>
                <th scope="col">{lang.t("machine-snapshots")}</th>
                <th scope="col">{lang.t("kind-forget")}</th>
                <th scope="col">{lang.t("kind-prune")}</th>
                <th scope="col">{lang.t("kind-check")}</th>
                <th scope="col"><span class="sr-only">{lang.t("col-actions")}</span></th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
        {pager}
        <section aria-labelledby="mjobs-h">
            <h2 id="mjobs-h">{lang.t("maintenance-jobs")}</h2>
            {super::jobs::table(lang, jobs, &names)}
        </section>
    };
    layout::page(&ctx, &lang.t("maintenance-title"), content)
}

#[derive(Deserialize)]
pub struct RunForm {
    kind: String,
}

/// `POST /maintenance/{id}`: forget, prune or check now.
pub async fn run(Extension(ctx): Extension<Ctx>, Path(id): Path<Uuid>, Form(f): Form<RunForm>) -> Response {
    let body = RunMaintenance { kind: f.kind, dry_run: false };
    match ctx
        .api
        .send::<_, Job>(
            Method::POST,
            &format!("/api/v1/restic-repositories/{id}/maintenance"),
            Some(&body),
            &[],
        )
        .await
    {
        Ok(_) => see_other("/maintenance", "queued"),
        Err(e) => layout::api_error(&ctx, &e),
    }
}
