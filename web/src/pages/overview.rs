//! The fleet overview: how much of the fleet is protected, per department, over 90 days, which
//! machines need attention and why, and what is running now.

use axum::Extension;
use axum::response::Response;
use cofre_api::Items;
use cofre_api::common::Page;
use cofre_api::compliance::{Day, MachineCompliance, Report, Rollup, Status, Summary};
use cofre_api::jobs::Job;
use cofre_api::machines::Machine;
use leptos::prelude::*;

use crate::layout::{self, badge, when};
use crate::{Ctx, Lang};

/// How many machines the "needs attention" list shows.
const ATTENTION: usize = 15;

/// `GET /`.
pub async fn page(Extension(ctx): Extension<Ctx>) -> Response {
    let lang = ctx.lang;
    let (summary, report, days, running, pending) = tokio_join(
        ctx.api.get::<Summary>("/api/v1/compliance/summary"),
        ctx.api.get::<Report>(format!("/api/v1/compliance?sort=status&limit={ATTENTION}")),
        ctx.api.get::<Items<Day>>("/api/v1/compliance/days"),
        ctx.api.get::<Page<Job>>("/api/v1/jobs?state=running&limit=20"),
        ctx.api.get::<Page<Machine>>("/api/v1/machines?status=pending&limit=1000"),
    )
    .await;
    let (summary, report, days, running, pending) = match (summary, report, days, running, pending) {
        (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e)) => (a, b.items, c.items, d.items, e),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), ..) | (_, _, _, Err(e), _) | (.., Err(e)) => {
            return layout::api_error(&ctx, &e);
        }
    };
    let attention: Vec<MachineCompliance> =
        report.into_iter().filter(|m| m.status != Status::Compliant).take(ATTENTION).collect();
    let fleet = summary.fleet.clone();
    let content = view! {
        <section class="cards" aria-label=lang.t("overview-numbers")>
            <div class="card big" id="protected">
                <p class="label">{lang.t("overview-protected")}</p>
                <p class="value" data-value=fleet.protected_percent.to_string()>{lang.percent(fleet.protected_percent)}</p>
                <p class="muted">{lang.ta("overview-protected-of", &[
                    ("protected", crate::i18n::Arg::Text(lang.number(fleet.compliant + fleet.at_risk))),
                    ("machines", crate::i18n::Arg::Text(lang.number(fleet.machines))),
                ])}</p>
            </div>
            {counts(lang, &fleet)}
            <div class="card">
                <p class="label">{lang.t("overview-pending")}</p>
                <p class="value" id="pending-count">{pending_count(lang, &pending)}</p>
                <p><a href="/enrollment#pending">{lang.t("overview-pending-link")}</a></p>
            </div>
        </section>
        <section aria-labelledby="attention-h">
            <h2 id="attention-h">{lang.t("overview-attention")}</h2>
            {attention_list(lang, fleet.machines, attention)}
        </section>
        <section aria-labelledby="groups-h">
            <h2 id="groups-h">{lang.t("overview-groups")}</h2>
            {group_bars(lang, summary.groups)}
        </section>
        <section aria-labelledby="trend-h">
            <h2 id="trend-h">{lang.t("overview-trend")}</h2>
            {trend(lang, &days)}
        </section>
        <section aria-labelledby="running-h">
            <h2 id="running-h">{lang.t("overview-running")}</h2>
            {running_jobs(lang, running)}
        </section>
    };
    layout::page(&ctx, &lang.t("overview-title"), content)
}

/// Runs five reads at once.
async fn tokio_join<A, B, C, D, E>(
    a: impl Future<Output = A>,
    b: impl Future<Output = B>,
    c: impl Future<Output = C>,
    d: impl Future<Output = D>,
    e: impl Future<Output = E>,
) -> (A, B, C, D, E) {
    let ((a, b), (c, (d, e))) =
        futures::join!(futures::future::join(a, b), futures::future::join(c, futures::future::join(d, e)));
    (a, b, c, d, e)
}

fn counts(lang: Lang, r: &Rollup) -> impl IntoView + use<> {
    Status::ALL
        .into_iter()
        .rev()
        .map(|s| {
            let n = match s {
                Status::Compliant => r.compliant,
                Status::AtRisk => r.at_risk,
                Status::Unknown => r.unknown,
                Status::NonCompliant => r.non_compliant,
            };
            let href = format!("/machines?status={}", s.as_str());
            let id = format!("count-{}", s.as_str());
            view! {
                <div class="card">
                    <p class="label">{badge(lang, s.as_str())}</p>
                    <p class="value" id=id>{lang.number(n)}</p>
                    <p><a href=href>{lang.t("overview-see-machines")}</a></p>
                </div>
            }
        })
        .collect_view()
}

fn attention_list(lang: Lang, fleet_size: i64, machines: Vec<MachineCompliance>) -> AnyView {
    if fleet_size == 0 {
        return view! { <p class="muted">{lang.t("overview-no-machines")}</p> }.into_any();
    }
    if machines.is_empty() {
        return view! { <p class="ok">{lang.t("overview-all-good")}</p> }.into_any();
    }
    let rows = machines
        .into_iter()
        .map(|m| {
            let reason = layout::reasons(lang, &m.findings);
            let href = format!("/machines/{}", m.machine_id);
            view! {
                <tr>
                    <th scope="row"><a href=href>{m.hostname}</a></th>
                    <td>{m.group_name.unwrap_or_default()}</td>
                    <td>{badge(lang, m.status.as_str())}</td>
                    <td>{reason}</td>
                    <td>{when(lang, m.last_good_backup_at)}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table id="attention">
            <thead><tr>
                <th scope="col">{lang.t("col-machine")}</th>
                <th scope="col">{lang.t("col-group")}</th>
                <th scope="col">{lang.t("col-status")}</th>
                <th scope="col">{lang.t("col-reason")}</th>
                <th scope="col">{lang.t("col-last-good-backup")}</th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
        <p><a href="/machines?status=non_compliant">{lang.t("overview-all-attention")}</a></p>
    }
    .into_any()
}

fn group_bars(lang: Lang, groups: Vec<Rollup>) -> AnyView {
    if groups.is_empty() {
        return view! { <p class="muted">{lang.t("overview-no-machines")}</p> }.into_any();
    }
    let rows = groups
        .into_iter()
        .map(|g| {
            let name = g.group_name.clone().unwrap_or_else(|| lang.t("group-none"));
            let total = g.machines.max(1) as f64;
            let mut x = 0.0;
            let segments = [
                ("compliant", g.compliant),
                ("at_risk", g.at_risk),
                ("unknown", g.unknown),
                ("non_compliant", g.non_compliant),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| {
                let w = n as f64 * 100.0 / total;
                let rect = view! { <rect class=format!("f-{s}") x=format!("{x:.3}%") y="0" width=format!("{w:.3}%") height="14"/> };
                x += w;
                rect
            })
            .collect_view();
            let label = lang.ta("overview-group-bar", &[
                ("name", crate::i18n::Arg::Text(name.clone())),
                ("percent", crate::i18n::Arg::Text(lang.percent(g.protected_percent))),
                ("machines", crate::i18n::Arg::Text(lang.number(g.machines))),
            ]);
            let href = g.group_id.map_or_else(|| "/machines".to_string(), |id| format!("/machines?group={id}"));
            view! {
                <tr>
                    <th scope="row"><a href=href>{name}</a></th>
                    <td class="bar"><svg width="100%" height="14" role="img" aria-label=label>{segments}</svg></td>
                    <td class="num">{lang.percent(g.protected_percent)}</td>
                    <td class="num">{lang.number(g.machines)}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table id="groups">
            <thead><tr>
                <th scope="col">{lang.t("col-group")}</th>
                <th scope="col">{lang.t("col-statuses")}</th>
                <th scope="col">{lang.t("col-protected")}</th>
                <th scope="col">{lang.t("col-machines")}</th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
        <p class="legend">
            {["compliant", "at_risk", "unknown", "non_compliant"].into_iter().map(|s| view! {
                <span class=format!("key f-{s}")>{lang.t(&format!("status-{s}"))}</span>
            }).collect_view()}
        </p>
    }
    .into_any()
}

/// The last 90 days' protected share, as an SVG line (server-drawn; its numbers also in a
/// table for screen readers).
fn trend(lang: Lang, days: &[Day]) -> AnyView {
    if days.is_empty() {
        return view! { <p class="muted">{lang.t("overview-no-history")}</p> }.into_any();
    }
    let (w, h, pad) = (720.0_f64, 180.0_f64, 30.0_f64);
    let first = days[0].day;
    let span = ((days[days.len() - 1].day - first).num_days().max(1)) as f64;
    let share = |d: &Day| {
        if d.machines == 0 { 100.0 } else { (d.compliant + d.at_risk) as f64 * 100.0 / d.machines as f64 }
    };
    let points: String = days
        .iter()
        .map(|d| {
            let x = pad + (d.day - first).num_days() as f64 / span * (w - 2.0 * pad);
            let y = pad / 2.0 + (100.0 - share(d)) / 100.0 * (h - pad * 1.5);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    let last = days[days.len() - 1].clone();
    let summary = lang.ta(
        "overview-trend-summary",
        &[
            ("from", crate::i18n::Arg::Text(lang.date(first))),
            ("to", crate::i18n::Arg::Text(lang.date(last.day))),
            ("percent", crate::i18n::Arg::Text(lang.percent(share(&last)))),
        ],
    );
    let gridlines = [0.0, 50.0, 100.0]
        .into_iter()
        .map(|p: f64| {
            let y = pad / 2.0 + (100.0 - p) / 100.0 * (h - pad * 1.5);
            view! {
                <line class="grid" x1=pad.to_string() x2=(w - pad).to_string() y1=format!("{y:.1}") y2=format!("{y:.1}")/>
                <text class="axis" x="2" y=format!("{:.1}", y + 4.0)>{format!("{p:.0}%")}</text>
            }
        })
        .collect_view();
    let rows = days
        .iter()
        .rev()
        .take(14)
        .map(|d| view! { <tr><td>{lang.date(d.day)}</td><td class="num">{lang.percent(share(d))}</td><td class="num">{lang.number(d.machines)}</td></tr> })
        .collect_view();
    view! {
        <figure>
            <svg class="trend" viewBox=format!("0 0 {w} {h}") role="img" aria-label=summary.clone()>
                {gridlines}
                <polyline class="line" points=points/>
            </svg>
            <figcaption>{summary}</figcaption>
        </figure>
        <details>
            <summary>{lang.t("overview-trend-table")}</summary>
            <table>
                <thead><tr><th scope="col">{lang.t("col-day")}</th><th scope="col">{lang.t("col-protected")}</th><th scope="col">{lang.t("col-machines")}</th></tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </details>
    }
    .into_any()
}

/// How many machines wait for approval: the page's count, with a "+" when there are more than
/// one page holds (the overview and the enrollment page read one page of 1,000, oldest first).
fn pending_count(lang: Lang, pending: &Page<Machine>) -> String {
    let n = lang.number(i64::try_from(pending.items.len()).unwrap_or(i64::MAX));
    if pending.next_cursor.is_some() { format!("{n}+") } else { n }
}

fn running_jobs(lang: Lang, jobs: Vec<Job>) -> AnyView {
    if jobs.is_empty() {
        return view! { <p class="muted" id="running-none">{lang.t("overview-nothing-running")}</p> }
            .into_any();
    }
    let now = chrono::Utc::now();
    let rows = jobs
        .into_iter()
        .map(|j| {
            let host = j.hostname.clone().unwrap_or_else(|| lang.t("job-controller"));
            let href = j.machine_id.map_or_else(|| "/jobs".to_string(), |m| format!("/machines/{m}"));
            let elapsed = j.started_at.map(|s| lang.duration((now - s).num_seconds())).unwrap_or_default();
            view! {
                <tr>
                    <th scope="row"><a href=href>{host}</a></th>
                    <td>{lang.t(&format!("kind-{}", j.kind))}</td>
                    <td>{when(lang, j.started_at)}</td>
                    <td class="num">{elapsed}</td>
                    <td>{super::jobs::progress(lang, &j)}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table id="running">
            <thead><tr>
                <th scope="col">{lang.t("col-machine")}</th>
                <th scope="col">{lang.t("col-kind")}</th>
                <th scope="col">{lang.t("col-started")}</th>
                <th scope="col">{lang.t("col-elapsed")}</th>
                <th scope="col">{lang.t("col-progress")}</th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}
