//! Machines: the list (search, filters, sorting, pages) and one machine's page with its status
//! and the reasons, plan, jobs and snapshots, and the run-now / approve / revoke actions for the
//! roles that may.

use std::collections::BTreeMap;

use axum::extract::{Path, Query};
use axum::response::Response;
use axum::{Extension, Form};
use cofre_api::Items;
use cofre_api::common::Page;
use cofre_api::compliance::Status;
use cofre_api::groups::Group;
use cofre_api::jobs::{Job, RunNow, Snapshot};
use cofre_api::machines::Machine;
use cofre_api::policies::{Assignment, Policy};
use http::Method;
use leptos::prelude::*;
use serde::Deserialize;
use uuid::Uuid;

use super::{report_page, see_other};
use crate::api::query;
use crate::layout::{self, badge, csrf_field, when};
use crate::{Ctx, Lang};

const PER_PAGE: usize = 50;

#[derive(Deserialize, Default, Clone)]
pub struct Filters {
    q: Option<String>,
    group: Option<String>,
    status: Option<String>,
    /// Last good backup older than: `1d`, `7d`, `30d`, or `never`.
    age: Option<String>,
    /// `host` (default), `status`, `backup`, `seen`, `group`.
    sort: Option<String>,
    page: Option<usize>,
}

impl Filters {
    fn link(&self, page: usize, sort: Option<&str>) -> String {
        format!(
            "/machines{}",
            query(&[
                ("q", self.q.clone()),
                ("group", self.group.clone()),
                ("status", self.status.clone()),
                ("age", self.age.clone()),
                ("sort", sort.map(str::to_string).or_else(|| self.sort.clone())),
                ("page", (page > 1).then(|| page.to_string())),
            ])
        )
    }
}

/// The API's selection for these filters (values the API would refuse are left out, as if
/// the filter were not set).
fn selection(f: &Filters) -> Vec<(&'static str, Option<String>)> {
    let known = |v: &Option<String>, ok: &[&str]| v.clone().filter(|v| ok.contains(&v.as_str()));
    vec![
        ("group", f.group.clone().filter(|g| Uuid::parse_str(g).is_ok())),
        ("status", f.status.clone().filter(|s| Status::parse(s).is_some())),
        ("q", f.q.clone().filter(|q| !q.trim().is_empty())),
        ("backup_age", known(&f.age, &AGES.map(|(v, _)| v))),
        ("sort", known(&f.sort, &["host", "group", "status", "backup", "seen"]).or(Some("host".into()))),
    ]
}

/// The backup-age filter's choices and their labels.
const AGES: [(&str, &str); 4] =
    [("1d", "age-1d"), ("7d", "age-7d"), ("30d", "age-30d"), ("never", "age-never")];

/// `GET /machines`.
pub async fn list(Extension(ctx): Extension<Ctx>, Query(f): Query<Filters>) -> Response {
    let lang = ctx.lang;
    let params = selection(&f);
    let (report, groups) = futures::join!(
        report_page(&ctx, &params, f.page.unwrap_or(1), PER_PAGE),
        ctx.api.get::<Items<Group>>("/api/v1/groups")
    );
    let ((rows, page_no, pages, total), groups) = match (report, groups) {
        (Ok(r), Ok(g)) => (r, g.items),
        (Err(e), _) | (_, Err(e)) => return layout::api_error(&ctx, &e),
    };
    let sort_link = |key: &'static str, label: String| {
        let current = f.sort.as_deref().unwrap_or("host") == key;
        let href = f.link(1, Some(key));
        view! { <a href=href aria-current=current.then_some("true")>{label}</a> }
    };
    let head = view! {
        <tr>
            <th scope="col">{sort_link("host", lang.t("col-machine"))}</th>
            <th scope="col">{sort_link("group", lang.t("col-group"))}</th>
            <th scope="col">{sort_link("status", lang.t("col-status"))}</th>
            <th scope="col">{lang.t("col-reason")}</th>
            <th scope="col">{sort_link("backup", lang.t("col-last-good-backup"))}</th>
            <th scope="col">{sort_link("seen", lang.t("col-last-seen"))}</th>
        </tr>
    };
    let body = rows
        .into_iter()
        .map(|m| {
            let reason = layout::reasons(lang, &m.findings);
            let href = format!("/machines/{}", m.machine_id);
            view! {
                <tr>
                    <th scope="row"><a href=href>{m.hostname}</a></th>
                    <td>{m.group_name.unwrap_or_else(|| lang.t("group-none"))}</td>
                    <td>{badge(lang, m.status.as_str())}</td>
                    <td>{reason}</td>
                    <td>{when(lang, m.last_good_backup_at)}</td>
                    <td>{when(lang, m.last_seen_at)}</td>
                </tr>
            }
        })
        .collect_view();
    let group_options = groups
        .into_iter()
        .map(|g| {
            let selected = f.group.as_deref() == Some(g.id.to_string().as_str());
            view! { <option value=g.id.to_string() selected=selected>{g.name}</option> }
        })
        .collect_view();
    let status_options = Status::ALL
        .into_iter()
        .map(|s| {
            let selected = f.status.as_deref() == Some(s.as_str());
            view! { <option value=s.as_str() selected=selected>{lang.t(&format!("status-{}", s.as_str()))}</option> }
        })
        .collect_view();
    let age_options = AGES
        .into_iter()
        .map(|(v, k)| {
            let selected = f.age.as_deref() == Some(v);
            view! { <option value=v selected=selected>{lang.t(k)}</option> }
        })
        .collect_view();
    let pager = layout::pager(lang, page_no, pages, |p| f.link(p, None));
    let content = view! {
        <form method="get" action="/machines" class="filters" role="search">
            <div>
                <label for="q">{lang.t("filter-search")}</label>
                <input id="q" name="q" type="search" value=f.q.clone().unwrap_or_default()/>
            </div>
            <div>
                <label for="group">{lang.t("col-group")}</label>
                <select id="group" name="group"><option value="">{lang.t("filter-all")}</option>{group_options}</select>
            </div>
            <div>
                <label for="status">{lang.t("col-status")}</label>
                <select id="status" name="status"><option value="">{lang.t("filter-all")}</option>{status_options}</select>
            </div>
            <div>
                <label for="age">{lang.t("filter-age")}</label>
                <select id="age" name="age"><option value="">{lang.t("filter-any")}</option>{age_options}</select>
            </div>
            <input type="hidden" name="sort" value=f.sort.clone().unwrap_or_default()/>
            <button type="submit">{lang.t("filter-apply")}</button>
        </form>
        <p id="machine-count" data-count=total.to_string()>{lang.ta("machines-count", &[("count", crate::i18n::Arg::Int(total as i64))])}</p>
        <table id="machines"><thead>{head}</thead><tbody>{body}</tbody></table>
        {pager}
    };
    layout::page(&ctx, &lang.t("machines-title"), content)
}

#[derive(Deserialize, Default)]
pub struct Notice {
    done: Option<String>,
}

/// `GET /machines/{id}`.
pub async fn page(
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    Query(n): Query<Notice>,
) -> Response {
    let lang = ctx.lang;
    let Ok(id) = Uuid::parse_str(&id) else {
        return layout::api_error(&ctx, &crate::api::ApiError::not_found(lang.t("error-title-not-found")));
    };
    let machine = match ctx.api.get::<Machine>(format!("/api/v1/machines/{id}")).await {
        Ok(m) => m,
        Err(e) => return layout::api_error(&ctx, &e),
    };
    // The report's search matches a machine id's start: the whole id selects this machine.
    let report_path = format!(
        "/api/v1/compliance{}",
        query(&[("group", machine.group_id.map(|g| g.to_string())), ("q", Some(id.to_string()))])
    );
    let (report, jobs, snapshots, policies) = futures::join!(
        ctx.api.get::<cofre_api::compliance::Report>(&report_path),
        ctx.api.get::<Page<Job>>(format!("/api/v1/machines/{id}/jobs?limit=25")),
        ctx.api.get::<Items<Snapshot>>(format!("/api/v1/machines/{id}/snapshots")),
        ctx.api.get::<Items<Policy>>("/api/v1/policies"),
    );
    let (report, jobs, snapshots, policies) = match (report, jobs, snapshots, policies) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a.items, b.items, c.items, d.items),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
            return layout::api_error(&ctx, &e);
        }
    };
    let compliance = report.into_iter().find(|m| m.machine_id == id);
    let policy_names: BTreeMap<Uuid, String> = policies.iter().map(|p| (p.id, p.spec.name.clone())).collect();
    // The machine's policies: those assigned to it or to its group.
    let assignments = futures::future::join_all(
        policies
            .iter()
            .map(|p| ctx.api.get::<Items<Assignment>>(format!("/api/v1/policies/{}/assignments", p.id))),
    )
    .await;
    let mut own: Vec<(Uuid, String)> = Vec::new();
    for (p, a) in policies.iter().zip(assignments) {
        let a = match a {
            Ok(a) => a.items,
            Err(e) => return layout::api_error(&ctx, &e),
        };
        if a.iter()
            .any(|a| a.machine_id == Some(id) || (a.group_id.is_some() && a.group_id == machine.group_id))
        {
            own.push((p.id, p.spec.name.clone()));
        }
    }
    let viewer = ctx.viewer.clone();
    let can_operate = viewer.as_ref().is_some_and(|v| v.can_operate());
    let is_admin = viewer.as_ref().is_some_and(|v| v.is_admin());
    let notice = n.done.filter(|d| ["run", "approved", "revoked"].contains(&d.as_str())).map(|d| {
        view! { <p class="notice" role="status">{lang.t(&format!("notice-{d}"))}</p> }
    });
    let status_view = match &compliance {
        Some(c) => {
            let findings = c
                .findings
                .iter()
                .map(|f| {
                    view! {
                        <li>
                            {badge(lang, f.status.as_str())} " "
                            <strong>{lang.t(&format!("rule-{}", f.rule.as_str()))}</strong>
                            {f.policy_name.clone().map(|p| view! { <span class="muted">" · " {p}</span> })}
                            <br/>{layout::reason(lang, f)}
                        </li>
                    }
                })
                .collect_view();
            view! {
                <p class="status-line">{badge(lang, c.status.as_str())} " " {lang.t("machine-since")} " " {when(lang, c.status_since)}</p>
                <ul class="findings">{findings}</ul>
            }
            .into_any()
        }
        None => view! { <p class="muted">{lang.t("machine-no-compliance")}</p> }.into_any(),
    };
    let actions = {
        let run = (can_operate && machine.status == "active").then(|| {
            own.iter()
                .map(|(pid, name)| {
                    let label =
                        lang.ta("machine-run-now", &[("policy", crate::i18n::Arg::Text(name.clone()))]);
                    view! {
                        <form method="post" action=format!("/machines/{id}/run")>
                            {csrf_field(&ctx)}
                            <input type="hidden" name="policy_id" value=pid.to_string()/>
                            <input type="hidden" name="key" value=Uuid::new_v4().to_string()/>
                            <button type="submit">{label}</button>
                        </form>
                    }
                })
                .collect_view()
        });
        let approve = (can_operate && machine.status == "pending").then(|| {
            view! {
                <form method="post" action=format!("/machines/{id}/approve")>
                    {csrf_field(&ctx)}
                    <button type="submit">{lang.t("machine-approve")}</button>
                </form>
            }
        });
        let revoke = (is_admin && matches!(machine.status.as_str(), "active" | "pending")).then(|| {
            super::confirm_form(
                &ctx,
                format!("/machines/{id}/revoke"),
                "confirm-revoke".into(),
                lang.t("machine-revoke-confirm"),
                lang.t("machine-revoke"),
            )
        });
        view! { <div class="actions" id="actions">{run}{approve}{revoke}</div> }
    };
    let title = machine.display_name.clone().unwrap_or_else(|| machine.hostname.clone());
    let facts = view! {
        <dl class="facts">
            <dt>{lang.t("machine-hostname")}</dt><dd>{machine.hostname.clone()}</dd>
            <dt>{lang.t("col-group")}</dt><dd>{machine.group_name.clone().unwrap_or_else(|| lang.t("group-none"))}</dd>
            <dt>{lang.t("machine-state")}</dt><dd>{badge(lang, &machine.status)}</dd>
            <dt>{lang.t("machine-system")}</dt><dd>{format!("{} {} · cofre-agent {}", machine.os, machine.arch, machine.agent_version)}</dd>
            <dt>{lang.t("machine-plan")}</dt><dd>{machine.plan_version.to_string()}</dd>
            <dt>{lang.t("col-last-seen")}</dt><dd>{when(lang, machine.last_seen_at)}</dd>
            <dt>{lang.t("machine-enrolled")}</dt><dd>{lang.datetime(machine.enrolled_at)}</dd>
            <dt>{lang.t("machine-id")}</dt><dd><code>{machine.id.to_string()}</code></dd>
        </dl>
    };
    let content = view! {
        {notice}
        <section aria-labelledby="status-h"><h2 id="status-h">{lang.t("machine-status")}</h2>{status_view}</section>
        {actions}
        <section aria-labelledby="facts-h"><h2 id="facts-h">{lang.t("machine-facts")}</h2>{facts}</section>
        <section aria-labelledby="jobs-h" id="jobs"><h2 id="jobs-h">{lang.t("nav-jobs")}</h2>{super::jobs::table(lang, jobs, &policy_names)}</section>
        <section aria-labelledby="snaps-h"><h2 id="snaps-h">{lang.t("machine-snapshots")}</h2>{snapshots_table(lang, snapshots)}</section>
    };
    layout::page(&ctx, &title, content)
}

fn snapshots_table(lang: Lang, mut snaps: Vec<Snapshot>) -> AnyView {
    if snaps.is_empty() {
        return view! { <p class="muted">{lang.t("machine-no-snapshots")}</p> }.into_any();
    }
    snaps.sort_by_key(|s| std::cmp::Reverse(s.time));
    let rows = snaps
        .into_iter()
        .take(50)
        .map(|s| {
            view! {
                <tr>
                    <td><code>{s.snapshot_id.chars().take(8).collect::<String>()}</code></td>
                    <td>{lang.datetime(s.time)}</td>
                    <td>{s.paths.join(", ")}</td>
                    <td class="num">{s.bytes_added.map(|b| lang.bytes(b)).unwrap_or_default()}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table id="snapshots">
            <thead><tr>
                <th scope="col">{lang.t("col-snapshot")}</th>
                <th scope="col">{lang.t("col-time")}</th>
                <th scope="col">{lang.t("col-paths")}</th>
                <th scope="col">{lang.t("col-added")}</th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

#[derive(Deserialize)]
pub struct RunForm {
    policy_id: Uuid,
    key: Option<String>,
}

/// `POST /machines/{id}/run`: a backup now (the form's key makes a double submit one job).
pub async fn run_now(
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<Uuid>,
    Form(f): Form<RunForm>,
) -> Response {
    let key: Vec<(&'static str, String)> = f
        .key
        .filter(|k| Uuid::parse_str(k).is_ok())
        .map(|k| ("idempotency-key", format!("portal-{k}")))
        .into_iter()
        .collect();
    let body = RunNow { policy_id: f.policy_id };
    match ctx
        .api
        .send::<_, Job>(Method::POST, &format!("/api/v1/machines/{id}/jobs"), Some(&body), &key)
        .await
    {
        Ok(_) => see_other(&format!("/machines/{id}"), "run"),
        Err(e) => layout::api_error(&ctx, &e),
    }
}

/// `POST /machines/{id}/approve`.
pub async fn approve(Extension(ctx): Extension<Ctx>, Path(id): Path<Uuid>) -> Response {
    match ctx.api.act::<()>(Method::POST, &format!("/api/v1/machines/{id}/approve"), None).await {
        Ok(()) => see_other(&format!("/machines/{id}"), "approved"),
        Err(e) => layout::api_error(&ctx, &e),
    }
}

/// `POST /machines/{id}/revoke` (only with the confirmation box ticked).
pub async fn revoke(
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<Uuid>,
    Form(f): Form<super::Confirm>,
) -> Response {
    if let Some(page) = f.unticked(&ctx, "machine-revoke-unconfirmed") {
        return page;
    }
    match ctx.api.act::<()>(Method::POST, &format!("/api/v1/machines/{id}/revoke"), None).await {
        Ok(()) => see_other(&format!("/machines/{id}"), "revoked"),
        Err(e) => layout::api_error(&ctx, &e),
    }
}
