//! The compliance report: per group and per machine, every rule with its reason; CSV export (the
//! API's own CSV) and a print stylesheet that makes a clean PDF from the browser.

use axum::Extension;
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use cofre_api::Items;
use cofre_api::compliance::{Status, Summary};
use cofre_api::groups::Group;
use http::{HeaderValue, header};
use leptos::prelude::*;
use serde::Deserialize;
use uuid::Uuid;

use crate::Ctx;
use crate::api::query;
use crate::layout::{self, badge, when};

#[derive(Deserialize, Default)]
pub struct Filters {
    group: Option<String>,
    page: Option<usize>,
}

/// Machines per page of the report (the CSV has them all).
const PER_PAGE: usize = 100;

fn group_of(f: &Filters) -> Option<String> {
    f.group.clone().filter(|g| Uuid::parse_str(g).is_ok())
}

/// `GET /compliance`.
pub async fn page(Extension(ctx): Extension<Ctx>, Query(f): Query<Filters>) -> Response {
    let lang = ctx.lang;
    let group = group_of(&f);
    let q = query(&[("group", group.clone())]);
    let selection = [("group", group.clone())];
    let (summary, report, groups) = futures::join!(
        ctx.api.get::<Summary>(format!("/api/v1/compliance/summary{q}")),
        super::report_page(&ctx, &selection, f.page.unwrap_or(1), PER_PAGE),
        ctx.api.get::<Items<Group>>("/api/v1/groups"),
    );
    let (summary, (report, page_no, pages, total), groups) = match (summary, report, groups) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c.items),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return layout::api_error(&ctx, &e),
    };
    let rollups = std::iter::once((lang.t("compliance-fleet"), summary.fleet.clone()))
        .chain(
            summary
                .groups
                .iter()
                .map(|g| (g.group_name.clone().unwrap_or_else(|| lang.t("group-none")), g.clone())),
        )
        .map(|(name, r)| {
            view! {
                <tr>
                    <th scope="row">{name}</th>
                    <td class="num">{lang.number(r.machines)}</td>
                    <td class="num">{lang.number(r.compliant)}</td>
                    <td class="num">{lang.number(r.at_risk)}</td>
                    <td class="num">{lang.number(r.unknown)}</td>
                    <td class="num">{lang.number(r.non_compliant)}</td>
                    <td class="num">{lang.percent(r.protected_percent)}</td>
                </tr>
            }
        })
        .collect_view();
    let link = |p: usize| {
        format!("/compliance{}", query(&[("group", group.clone()), ("page", Some(p.to_string()))]))
    };
    let pager = layout::pager(lang, page_no, pages, link);
    let machines = report
        .into_iter()
        .map(|m| {
            let findings = m
                .findings
                .iter()
                .filter(|x| x.status != Status::Compliant)
                .map(|x| {
                    view! { <li>{badge(lang, x.status.as_str())} " " {lang.t(&format!("rule-{}", x.rule.as_str()))} ": " {layout::reason(lang, x)}</li> }
                })
                .collect_view();
            view! {
                <tr>
                    <th scope="row"><a href=format!("/machines/{}", m.machine_id)>{m.hostname.clone()}</a></th>
                    <td>{m.group_name.clone().unwrap_or_else(|| lang.t("group-none"))}</td>
                    <td>{badge(lang, m.status.as_str())}</td>
                    <td>{when(lang, m.last_good_backup_at)}</td>
                    <td><ul class="findings">{findings}</ul></td>
                </tr>
            }
        })
        .collect_view();
    let options = groups
        .into_iter()
        .map(|g| view! { <option value=g.id.to_string() selected=group.as_deref() == Some(g.id.to_string().as_str())>{g.name}</option> })
        .collect_view();
    let csv = format!("/compliance.csv{q}");
    let content = view! {
        <p class="muted">{lang.ta("compliance-evaluated", &[("at", crate::i18n::Arg::Text(lang.datetime(summary.evaluated_at)))])}</p>
        <form method="get" action="/compliance" class="filters no-print">
            <div>
                <label for="group">{lang.t("col-group")}</label>
                <select id="group" name="group"><option value="">{lang.t("filter-all")}</option>{options}</select>
            </div>
            <button type="submit">{lang.t("filter-apply")}</button>
            <a class="button" href=csv id="csv">{lang.t("compliance-csv")}</a>
        </form>
        <p class="muted no-print">{lang.t("compliance-print-hint")}</p>
        <section aria-labelledby="rollup-h">
            <h2 id="rollup-h">{lang.t("compliance-groups")}</h2>
            <table id="rollups">
                <thead><tr>
                    <th scope="col">{lang.t("col-group")}</th>
                    <th scope="col">{lang.t("col-machines")}</th>
                    <th scope="col">{lang.t("status-compliant")}</th>
                    <th scope="col">{lang.t("status-at_risk")}</th>
                    <th scope="col">{lang.t("status-unknown")}</th>
                    <th scope="col">{lang.t("status-non_compliant")}</th>
                    <th scope="col">{lang.t("col-protected")}</th>
                </tr></thead>
                <tbody>{rollups}</tbody>
            </table>
        </section>
        <section aria-labelledby="machines-h">
            <h2 id="machines-h">{lang.t("nav-machines")}</h2>
            <table id="compliance">
                <thead><tr>
                    <th scope="col">{lang.t("col-machine")}</th>
                    <th scope="col">{lang.t("col-group")}</th>
                    <th scope="col">{lang.t("col-status")}</th>
                    <th scope="col">{lang.t("col-last-good-backup")}</th>
                    <th scope="col">{lang.t("col-reason")}</th>
                </tr></thead>
                <tbody>{machines}</tbody>
            </table>
            <p class="muted">{lang.ta("machines-count", &[("count", crate::i18n::Arg::Int(total as i64))])}</p>
            {pager}
        </section>
    };
    layout::page(&ctx, &lang.t("compliance-title"), content)
}

/// `GET /compliance.csv`: the API's CSV, as it is.
pub async fn csv(Extension(ctx): Extension<Ctx>, Query(f): Query<Filters>) -> Response {
    let q = query(&[("group", group_of(&f)), ("format", Some("csv".into()))]);
    match ctx.api.get_raw(&format!("/api/v1/compliance{q}")).await {
        Ok((headers, bytes)) => {
            let mut resp = bytes.into_response();
            let h = resp.headers_mut();
            for name in [header::CONTENT_TYPE, header::CONTENT_DISPOSITION] {
                if let Some(v) = headers.get(&name) {
                    h.insert(name, v.clone());
                }
            }
            h.entry(header::CONTENT_TYPE).or_insert(HeaderValue::from_static("text/csv; charset=utf-8"));
            resp
        }
        Err(e) => layout::api_error(&ctx, &e),
    }
}
