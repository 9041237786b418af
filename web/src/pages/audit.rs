//! The audit log: events newest first with filters, and, on request, whether the chain verifies
//! against its signed checkpoints (verifying reads every event: about 2.7 s per million in a
//! release build, too much for every view of the page). Fleet-wide users only (the API refuses
//! the others).

use axum::Extension;
use axum::extract::Query;
use axum::response::Response;
use cofre_api::audit::{EventPage, Report};
use leptos::prelude::*;
use serde::Deserialize;

use crate::Ctx;
use crate::api::query;
use crate::layout;

#[derive(Deserialize, Default)]
pub struct Filters {
    action: Option<String>,
    actor: Option<String>,
    target_type: Option<String>,
    cursor: Option<String>,
    /// `1`: verify the chain now.
    verify: Option<String>,
}

/// `GET /audit`.
pub async fn page(Extension(ctx): Extension<Ctx>, Query(f): Query<Filters>) -> Response {
    let lang = ctx.lang;
    let trim = |v: &Option<String>| v.clone().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let (action, actor, target) = (trim(&f.action), trim(&f.actor), trim(&f.target_type));
    let path = format!(
        "/api/v1/audit/events{}",
        query(&[
            ("action", action.clone()),
            ("actor", actor.clone()),
            ("target_type", target.clone()),
            ("cursor", f.cursor.clone()),
            ("limit", Some("100".into())),
        ])
    );
    let asked = f.verify.as_deref() == Some("1");
    let verifying = async {
        if asked { ctx.api.get::<Report>("/api/v1/audit/verify").await.map(Some) } else { Ok(None) }
    };
    let (events, verify) = futures::join!(ctx.api.get::<EventPage>(&path), verifying);
    let (events, verify) = match (events, verify) {
        (Ok(e), Ok(v)) => (e, v),
        (Err(e), _) | (_, Err(e)) => return layout::api_error(&ctx, &e),
    };
    let chain = match verify {
        Some(verify) => chain_status(lang, verify),
        None => view! {
            <form method="get" action="/audit" id="chain" class="no-print">
                <input type="hidden" name="verify" value="1"/>
                <button type="submit">{lang.t("audit-chain-verify")}</button>
                " " <span class="muted">{lang.t("audit-chain-verify-hint")}</span>
            </form>
        }
        .into_any(),
    };
    let rows = events
        .items
        .into_iter()
        .map(|e| {
            let details = serde_json::to_string(&e.details).unwrap_or_default();
            view! {
                <tr>
                    <td class="num">{e.seq.to_string()}</td>
                    <td>{lang.datetime(e.at)}</td>
                    <td>{e.actor}</td>
                    <td><code>{e.action}</code></td>
                    <td>{format!("{} {}", e.target_type, e.target_id)}</td>
                    <td class="details"><code>{details}</code></td>
                </tr>
            }
        })
        .collect_view();
    let next = events.next_cursor.map(|c| {
        let href = format!(
            "/audit{}",
            query(&[("action", action.clone()), ("actor", actor.clone()), ("target_type", target.clone()), ("cursor", Some(c))])
        );
        view! { <nav class="pager" aria-label=lang.t("page-label")><a rel="next" href=href>{lang.t("page-older")}</a></nav> }
    });
    let content = view! {
        {chain}
        <form method="get" action="/audit" class="filters">
            <div><label for="action">{lang.t("audit-action")}</label><input id="action" name="action" value=action.clone().unwrap_or_default()/></div>
            <div><label for="actor">{lang.t("audit-actor")}</label><input id="actor" name="actor" value=actor.clone().unwrap_or_default()/></div>
            <div><label for="target_type">{lang.t("audit-target")}</label><input id="target_type" name="target_type" value=target.clone().unwrap_or_default()/></div>
            <button type="submit">{lang.t("filter-apply")}</button>
        </form>
        <table id="audit">
            <thead><tr>
                <th scope="col">"#"</th>
                <th scope="col">{lang.t("col-time")}</th>
                <th scope="col">{lang.t("audit-actor")}</th>
                <th scope="col">{lang.t("audit-action")}</th>
                <th scope="col">{lang.t("audit-target")}</th>
                <th scope="col">{lang.t("col-detail")}</th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
        {next}
    };
    layout::page(&ctx, &lang.t("audit-title"), content)
}

/// Whether the chain verified, and the first thing broken if not.
fn chain_status(lang: crate::Lang, verify: Report) -> AnyView {
    if verify.ok {
        let text = lang.ta(
            "audit-chain-ok",
            &[
                ("events", crate::i18n::Arg::Text(lang.number(verify.events_checked))),
                ("checkpoints", crate::i18n::Arg::Text(lang.number(verify.checkpoints_checked as i64))),
            ],
        );
        view! { <p class="ok" id="chain" role="status">{text}</p> }.into_any()
    } else {
        let problem =
            verify.problem.map(|p| format!("#{} {}: {}", p.seq, p.kind, p.message)).unwrap_or_default();
        view! { <p class="error" id="chain" role="alert">{lang.t("audit-chain-broken")} " " {problem}</p> }
            .into_any()
    }
}
