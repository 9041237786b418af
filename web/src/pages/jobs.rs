//! Jobs: the fleet's jobs newest first, filtered by state and kind, and the job table the
//! machine page shows too (duration, bytes, files, result, warnings; a running backup's
//! progress as its agent last reported it, also on the overview).

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
use crate::i18n::Arg;
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

/// A running backup's progress: a `<progress>` bar and the same in words ("1.2 GiB of 3.4 GiB,
/// 35 %"), or "scanning…" with what is done so far while the totals are not known. Nothing
/// before the agent's first report (and for jobs that are not running).
pub fn progress(lang: Lang, job: &Job) -> Option<AnyView> {
    let p = job.progress.as_ref().filter(|_| job.state == "running")?;
    let bytes = |n: u64| lang.bytes(i64::try_from(n).unwrap_or(i64::MAX));
    let files = |n: u64| Arg::Text(lang.number(i64::try_from(n).unwrap_or(i64::MAX)));
    let view = match (p.percent(), p.bytes_total, p.files_total) {
        (Some(pct), Some(total), Some(files_total)) => {
            let text = lang.ta(
                "job-progress",
                &[
                    ("done", Arg::Text(bytes(p.bytes_done))),
                    ("total", Arg::Text(bytes(total))),
                    ("percent", Arg::Int(i64::from(pct))),
                ],
            );
            let title = lang
                .ta("job-progress-files", &[("done", files(p.files_done)), ("total", files(files_total))]);
            view! {
                <span class="job-progress">
                    <progress max="100" value=pct aria-label=text.clone() title=title.clone()>{text.clone()}</progress>
                    " "<span class="progress-text" title=title>{text}</span>
                </span>
            }
            .into_any()
        }
        _ => {
            let text = lang.ta(
                "job-progress-scanning",
                &[("done", Arg::Text(bytes(p.bytes_done))), ("files", files(p.files_done))],
            );
            view! {
                <span class="job-progress">
                    <progress aria-label=text.clone()>{text.clone()}</progress>
                    " "<span class="progress-text">{text}</span>
                </span>
            }
            .into_any()
        }
    };
    Some(view)
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
            let machine = j.machine_id.map(|m| {
                let name = j.hostname.clone().unwrap_or_else(|| lang.t("jobs-machine-link"));
                view! { <a href=format!("/machines/{m}")>{name}</a> }
            });
            let detail = progress(lang, &j).unwrap_or_else(|| {
                j.error_message
                    .clone()
                    .or_else(|| j.warnings.as_ref().and_then(|w| w.first().cloned()))
                    .into_any()
            });
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
                <th scope="col">{lang.t("col-machine")}</th>
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

#[cfg(test)]
mod tests {
    use super::*;

    fn running(progress: &serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "id": Uuid::nil(), "machine_id": null, "policy_id": null, "restic_repository_id": null,
            "kind": "backup", "trigger": "schedule", "state": "running", "created_at": "2026-12-02T10:00:00Z",
            "started_at": null, "finished_at": null, "overran_window": false, "cancel_requested_at": null,
            "snapshot_id": null, "stats": null, "warnings": null, "error_message": null, "retry_class": null,
            "log": null, "progress": progress,
        }))
        .unwrap()
    }

    #[test]
    fn progress_shows_a_bar_and_its_words_or_scanning() {
        let known = running(&serde_json::json!({"files_done": 10, "bytes_done": 1_288_490_189u64,
            "files_total": 30, "bytes_total": 3_650_722_202u64, "at": "2026-12-02T10:01:00Z"}));
        let html = crate::layout::render(progress(Lang::En, &known));
        assert!(html.contains("<progress") && html.contains(r#"value="35""#), "{html}");
        assert!(html.contains("1.2 GiB of 3.4 GiB, 35 %"), "{html}");
        assert!(html.contains("10 of 30 files"), "{html}");
        let pt = crate::layout::render(progress(Lang::PtBr, &known));
        assert!(pt.contains("1,2 GiB de 3,4 GiB, 35 %"), "{pt}");

        let scanning = running(&serde_json::json!({"files_done": 1234, "bytes_done": 2048,
            "files_total": null, "bytes_total": null, "at": "2026-12-02T10:01:00Z"}));
        let html = crate::layout::render(progress(Lang::En, &scanning));
        assert!(html.contains("<progress") && !html.contains("value="), "indeterminate: {html}");
        assert!(html.contains("scanning… 2.0 KiB in 1,234 files so far"), "{html}");

        let mut ended = known;
        ended.state = "succeeded".into();
        assert!(progress(Lang::En, &ended).is_none());
        assert!(progress(Lang::En, &running(&serde_json::Value::Null)).is_none());
    }
}
