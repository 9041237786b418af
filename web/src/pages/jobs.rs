//! Jobs: the fleet's jobs newest first, filtered by state and kind, and the job table the
//! machine page shows too (duration, bytes, files, result, warnings).

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::Query;
use axum::response::Response;
use cofre_api::common::Page;
use cofre_api::jobs::Job;
use leptos::prelude::*;
use serde::Deserialize;
use uuid::Uuid;

use crate::api::query;
use crate::layout::{self, badge, when};
use crate::{Ctx, Lang};

#[derive(Deserialize, Default)]
pub struct Filters {
    state: Option<String>,
    kind: Option<String>,
    cursor: Option<String>,
}

fn stat(job: &Job, key: &str) -> Option<i64> {
    job.stats.as_ref()?.get(key)?.as_i64()
}

/// The job table (the jobs page and each machine's page).
pub fn table(lang: Lang, jobs: Vec<Job>, policies: &BTreeMap<Uuid, String>) -> AnyView {
    if jobs.is_empty() {
        return view! { <p class="muted">{lang.t("jobs-none")}</p> }.into_any();
    }
    let rows = jobs
        .into_iter()
        .map(|j| {
            let duration = match (j.started_at, j.finished_at) {
                (Some(s), Some(f)) => lang.duration((f - s).num_seconds()),
                _ => String::new(),
            };
            let bytes = stat(&j, "bytes_added").map(|b| lang.bytes(b)).unwrap_or_default();
            let files = stat(&j, "files_processed").map(|n| lang.number(n)).unwrap_or_default();
            let warnings = j.warnings.as_ref().map_or(0, Vec::len);
            let policy = j.policy_id.and_then(|p| policies.get(&p).cloned()).unwrap_or_default();
            let machine = j
                .machine_id
                .map(|m| view! { <a href=format!("/machines/{m}")>{lang.t("jobs-machine-link")}</a> });
            let detail =
                j.error_message.clone().or_else(|| j.warnings.as_ref().and_then(|w| w.first().cloned()));
            view! {
                <tr>
                    <td>{lang.t(&format!("kind-{}", j.kind))}</td>
                    <td>{policy}</td>
                    <td>{badge(lang, &j.state)}</td>
                    <td>{when(lang, Some(j.created_at))}</td>
                    <td class="num">{duration}</td>
                    <td class="num">{bytes}</td>
                    <td class="num">{files}</td>
                    <td class="num">{(warnings > 0).then(|| lang.number(warnings as i64))}</td>
                    <td class="reason">{detail}</td>
                    <td>{machine}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="jobs">
            <thead><tr>
                <th scope="col">{lang.t("col-kind")}</th>
                <th scope="col">{lang.t("col-policy")}</th>
                <th scope="col">{lang.t("col-result")}</th>
                <th scope="col">{lang.t("col-created")}</th>
                <th scope="col">{lang.t("col-duration")}</th>
                <th scope="col">{lang.t("col-added")}</th>
                <th scope="col">{lang.t("col-files")}</th>
                <th scope="col">{lang.t("col-warnings")}</th>
                <th scope="col">{lang.t("col-detail")}</th>
                <th scope="col"><span class="sr-only">{lang.t("col-machine")}</span></th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

/// `GET /jobs`.
pub async fn list(Extension(ctx): Extension<Ctx>, Query(f): Query<Filters>) -> Response {
    let lang = ctx.lang;
    let states =
        ["queued", "running", "succeeded", "warning", "failed", "cancelled", "interrupted", "skipped"];
    let kinds = ["backup", "forget", "prune", "check"];
    let state = f.state.clone().filter(|s| states.contains(&s.as_str()));
    let kind = f.kind.clone().filter(|k| kinds.contains(&k.as_str()));
    let path = format!(
        "/api/v1/jobs{}",
        query(&[
            ("state", state.clone()),
            ("kind", kind.clone()),
            ("cursor", f.cursor.clone()),
            ("limit", Some("50".into()))
        ])
    );
    let (jobs, policies) = futures::join!(
        ctx.api.get::<Page<Job>>(&path),
        ctx.api.get::<cofre_api::Items<cofre_api::policies::Policy>>("/api/v1/policies")
    );
    let (jobs, policies) = match (jobs, policies) {
        (Ok(j), Ok(p)) => (j, p.items),
        (Err(e), _) | (_, Err(e)) => return layout::api_error(&ctx, &e),
    };
    let names: BTreeMap<Uuid, String> = policies.into_iter().map(|p| (p.id, p.spec.name)).collect();
    let state_options = states
        .into_iter()
        .map(|s| view! { <option value=s selected=state.as_deref() == Some(s)>{lang.t(&format!("status-{s}"))}</option> })
        .collect_view();
    let kind_options = kinds
        .into_iter()
        .map(|k| view! { <option value=k selected=kind.as_deref() == Some(k)>{lang.t(&format!("kind-{k}"))}</option> })
        .collect_view();
    let next = jobs.next_cursor.clone().map(|c| {
        let href = format!("/jobs{}", query(&[("state", state.clone()), ("kind", kind.clone()), ("cursor", Some(c))]));
        view! { <nav class="pager" aria-label=lang.t("page-label")><a rel="next" href=href>{lang.t("page-older")}</a></nav> }
    });
    let content = view! {
        <form method="get" action="/jobs" class="filters">
            <div>
                <label for="state">{lang.t("col-result")}</label>
                <select id="state" name="state"><option value="">{lang.t("filter-all")}</option>{state_options}</select>
            </div>
            <div>
                <label for="kind">{lang.t("col-kind")}</label>
                <select id="kind" name="kind"><option value="">{lang.t("filter-all")}</option>{kind_options}</select>
            </div>
            <button type="submit">{lang.t("filter-apply")}</button>
        </form>
        {table(lang, jobs.items, &names)}
        {next}
    };
    layout::page(&ctx, &lang.t("jobs-title"), content)
}
