//! Maintenance: every restic repository with its last forget, prune and check (run by the
//! controller's maintenance identity, never by agents), the maintenance jobs, and "run now" for
//! the roles that may.

use std::collections::HashMap;

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
}

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
    let (repos, jobs, machines) = futures::join!(
        ctx.api.get::<Items<ResticRepository>>("/api/v1/restic-repositories"),
        ctx.api.get::<Page<Job>>("/api/v1/maintenance/jobs?limit=50"),
        ctx.api.get::<Items<cofre_api::compliance::MachineCompliance>>("/api/v1/compliance"),
    );
    let (repos, jobs, machines) = match (repos, jobs, machines) {
        (Ok(r), Ok(j), Ok(m)) => (r.items, j.items, m.items),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return layout::api_error(&ctx, &e),
    };
    let hosts: HashMap<Uuid, String> = machines.into_iter().map(|m| (m.machine_id, m.hostname)).collect();
    let can_operate = ctx.viewer.as_ref().is_some_and(|v| v.can_operate());
    let rows = repos
        .iter()
        .map(|r| {
            let owner = r
                .machine_id
                .and_then(|m| hosts.get(&m).cloned())
                .unwrap_or_else(|| lang.t("maintenance-shared"));
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
