//! One policy: its main settings in a form (admins change them; everyone else reads them), the
//! API's message next to each field it refuses, and an edit that lost a race with another is
//! refused rather than overwriting it (If-Match with the revision the form was made from).

use axum::extract::{Path, Query};
use axum::response::Response;
use axum::{Extension, Form};
use cofre_api::common::FieldError;
use cofre_api::policies::{Policy, PolicyDiff, PolicySpec, PolicyVersion};
use http::{Method, StatusCode, header};
use leptos::prelude::*;
use serde::Deserialize;
use uuid::Uuid;

use super::see_other;
use crate::api::ApiError;
use crate::layout::{self, csrf_field};
use crate::{Ctx, Lang};

/// The form's fields, as typed.
#[derive(Deserialize, Default, Clone)]
pub struct PolicyForm {
    name: String,
    paths: String,
    #[serde(default)]
    excludes: String,
    #[serde(default)]
    cron: String,
    #[serde(default)]
    timezone: String,
    #[serde(default)]
    rpo_hours: String,
    #[serde(default)]
    keep_last: String,
    #[serde(default)]
    keep_daily: String,
    #[serde(default)]
    keep_weekly: String,
    #[serde(default)]
    keep_monthly: String,
    #[serde(default)]
    keep_yearly: String,
    /// The ETag of the revision the form was made from.
    #[serde(default)]
    etag: String,
}

fn count(n: u32) -> String {
    if n == 0 { String::new() } else { n.to_string() }
}

impl PolicyForm {
    fn of(spec: &PolicySpec, etag: &str) -> Self {
        let r = spec.retention.clone().unwrap_or_default();
        let s = spec.schedule.clone().unwrap_or_default();
        PolicyForm {
            name: spec.name.clone(),
            paths: spec.paths.join("\n"),
            excludes: spec.excludes.join("\n"),
            cron: s.cron.unwrap_or_default(),
            timezone: s.timezone.unwrap_or_default(),
            rpo_hours: (spec.rpo_seconds as f64 / 3600.0).to_string(),
            keep_last: count(r.keep_last),
            keep_daily: count(r.keep_daily),
            keep_weekly: count(r.keep_weekly),
            keep_monthly: count(r.keep_monthly),
            keep_yearly: count(r.keep_yearly),
            etag: etag.to_string(),
        }
    }

    /// The spec with this form's fields applied over `base` (what the form does not show is
    /// kept), or the fields that are not numbers.
    fn apply(&self, lang: Lang, mut spec: PolicySpec) -> Result<PolicySpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let lines = |s: &str| {
            s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect::<Vec<_>>()
        };
        let mut number = |field: &str, v: &str| -> u32 {
            let v = v.trim();
            if v.is_empty() {
                return 0;
            }
            v.parse::<u32>().unwrap_or_else(|_| {
                errors.push(FieldError::new(field, lang.t("form-whole-number")));
                0
            })
        };
        spec.name = self.name.trim().to_string();
        spec.paths = lines(&self.paths);
        spec.excludes = lines(&self.excludes);
        let mut retention = spec.retention.clone().unwrap_or_default();
        retention.keep_last = number("retention.keep_last", &self.keep_last);
        retention.keep_daily = number("retention.keep_daily", &self.keep_daily);
        retention.keep_weekly = number("retention.keep_weekly", &self.keep_weekly);
        retention.keep_monthly = number("retention.keep_monthly", &self.keep_monthly);
        retention.keep_yearly = number("retention.keep_yearly", &self.keep_yearly);
        spec.retention = Some(retention).filter(|r| *r != Default::default());
        match self.rpo_hours.trim().replace(',', ".").parse::<f64>() {
            Ok(h) if h.is_finite() && h >= 0.0 => spec.rpo_seconds = (h * 3600.0).round() as u64,
            _ => errors.push(FieldError::new("rpo_seconds", lang.t("form-hours"))),
        }
        let cron = self.cron.trim();
        let mut schedule = spec.schedule.clone().unwrap_or_default();
        if cron.is_empty() {
            if schedule.cron.is_some() {
                schedule.cron = None;
                schedule.timezone = None;
            }
        } else {
            schedule.cron = Some(cron.to_string());
            schedule.interval_seconds = None;
            schedule.timezone = Some(self.timezone.trim().to_string()).filter(|t| !t.is_empty());
        }
        spec.schedule = Some(schedule).filter(|s| s.cron.is_some() || s.interval_seconds.is_some());
        if errors.is_empty() { Ok(spec) } else { Err(errors) }
    }
}

async fn load(ctx: &Ctx, id: Uuid) -> Result<(Policy, String), ApiError> {
    let (headers, bytes) = ctx.api.get_raw(format!("/api/v1/policies/{id}")).await?;
    let policy: Policy = serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(e.to_string()))?;
    let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    Ok((policy, etag))
}

#[derive(Deserialize, Default)]
pub struct Notice {
    done: Option<String>,
}

/// `GET /policies/{id}`.
pub async fn page(Extension(ctx): Extension<Ctx>, Path(id): Path<Uuid>, Query(n): Query<Notice>) -> Response {
    match load(&ctx, id).await {
        Ok((p, etag)) => {
            let form = PolicyForm::of(&p.spec, &etag);
            let history = match history(&ctx, &p).await {
                Ok(h) => h,
                Err(e) => return layout::api_error(&ctx, &e),
            };
            render(&ctx, StatusCode::OK, &p, &form, &[], n.done.as_deref() == Some("saved"), Some(history))
        }
        Err(e) => layout::api_error(&ctx, &e),
    }
}

/// Every revision, newest first, each with what changed from the one before.
async fn history(ctx: &Ctx, p: &Policy) -> Result<String, ApiError> {
    let lang = ctx.lang;
    let versions: cofre_api::Items<PolicyVersion> =
        ctx.api.get(format!("/api/v1/policies/{}/versions", p.id)).await?;
    let mut versions = versions.items;
    versions.sort_by_key(|v| std::cmp::Reverse(v.revision));
    let diffs = futures::future::join_all(versions.iter().filter(|v| v.revision > 1).map(|v| {
        ctx.api.get::<PolicyDiff>(format!(
            "/api/v1/policies/{}/diff?from={}&to={}",
            p.id,
            v.revision - 1,
            v.revision
        ))
    }))
    .await;
    let mut changes: std::collections::HashMap<i64, Vec<cofre_api::policies::Change>> =
        std::collections::HashMap::new();
    for d in diffs {
        let d = d?;
        changes.insert(d.to, d.changes);
    }
    let show =
        |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "—".into());
    let rows = versions
        .into_iter()
        .map(|v| {
            let list = changes
                .remove(&v.revision)
                .unwrap_or_default()
                .into_iter()
                .map(|c| view! { <li><code>{c.field}</code>": " {show(&c.old)} " → " {show(&c.new)}</li> })
                .collect_view();
            view! {
                <tr>
                    <td class="num">{v.revision.to_string()}</td>
                    <td>{lang.datetime(v.changed_at)}</td>
                    <td>{v.changed_by}</td>
                    <td><ul class="findings">{list}</ul></td>
                </tr>
            }
        })
        .collect_view();
    Ok(layout::render(view! {
        <section aria-labelledby="history-h" id="history">
            <h2 id="history-h">{lang.t("policy-history")}</h2>
            <table>
                <thead><tr>
                    <th scope="col">{lang.t("policies-revision")}</th>
                    <th scope="col">{lang.t("col-time")}</th>
                    <th scope="col">{lang.t("audit-actor")}</th>
                    <th scope="col">{lang.t("policy-changes")}</th>
                </tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </section>
    }))
}

/// `POST /policies/{id}`: the change, refused field by field or saved (then back to the page).
pub async fn save(
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<Uuid>,
    Form(f): Form<PolicyForm>,
) -> Response {
    let lang = ctx.lang;
    let (policy, _) = match load(&ctx, id).await {
        Ok(p) => p,
        Err(e) => return layout::api_error(&ctx, &e),
    };
    let spec = match f.apply(lang, policy.spec.clone()) {
        Ok(s) => s,
        Err(errors) => {
            return render(&ctx, StatusCode::UNPROCESSABLE_ENTITY, &policy, &f, &errors, false, None);
        }
    };
    let if_match = vec![("if-match", f.etag.clone())];
    match ctx
        .api
        .send::<_, Policy>(Method::PUT, &format!("/api/v1/policies/{id}"), Some(&spec), &if_match)
        .await
    {
        Ok(_) => see_other(&format!("/policies/{id}"), "saved"),
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY && !e.problem.errors.is_empty() => {
            render(&ctx, e.status, &policy, &f, &e.problem.errors, false, None)
        }
        Err(e) if e.status == StatusCode::PRECONDITION_FAILED => {
            let errors = [FieldError::new("", lang.t("policy-changed-meanwhile"))];
            render(&ctx, e.status, &policy, &f, &errors, false, None)
        }
        Err(e) => layout::api_error(&ctx, &e),
    }
}

fn render(
    ctx: &Ctx,
    status: StatusCode,
    p: &Policy,
    f: &PolicyForm,
    errors: &[FieldError],
    saved: bool,
    history: Option<String>,
) -> Response {
    let lang = ctx.lang;
    let editable = ctx.viewer.as_ref().is_some_and(|v| v.is_admin() && v.fleet_wide());
    let error = |field: &str| {
        let found: Vec<String> = errors
            .iter()
            .filter(|e| {
                e.field == field
                    || e.field.starts_with(&format!("{field}["))
                    || e.field.starts_with(&format!("{field}."))
            })
            .map(|e| e.message.clone())
            .collect();
        (!found.is_empty()).then(|| found.join("; "))
    };
    // Errors on fields the form does not show are listed above it.
    let shown = [
        "name",
        "paths",
        "excludes",
        "schedule",
        "rpo_seconds",
        "retention.keep_last",
        "retention.keep_daily",
        "retention.keep_weekly",
        "retention.keep_monthly",
        "retention.keep_yearly",
    ];
    let other: Vec<String> = errors
        .iter()
        .filter(|e| {
            !shown.iter().any(|s| {
                e.field == *s
                    || e.field.starts_with(&format!("{s}["))
                    || e.field.starts_with(&format!("{s}."))
            })
        })
        .map(|e| if e.field.is_empty() { e.message.clone() } else { format!("{}: {}", e.field, e.message) })
        .collect();
    let field =
        |id: &'static str, label: String, value: String, err: Option<String>, hint: Option<String>| {
            let err_id = format!("{id}-error");
            let hint_id = format!("{id}-hint");
            let described = match (&err, &hint) {
                (Some(_), Some(_)) => Some(format!("{err_id} {hint_id}")),
                (Some(_), None) => Some(err_id.clone()),
                (None, Some(_)) => Some(hint_id.clone()),
                (None, None) => None,
            };
            let invalid = err.is_some().then_some("true");
            view! {
                <label for=id>{label}</label>
                <input id=id name=id value=value aria-invalid=invalid aria-describedby=described/>
                {hint.map(|h| view! { <p class="muted hint" id=hint_id>{h}</p> })}
                {err.map(|m| view! { <p class="field-error" id=err_id role="alert">{m}</p> })}
            }
        };
    let area = |id: &'static str, label: String, value: String, err: Option<String>| {
        let err_id = format!("{id}-error");
        let invalid = err.is_some().then_some("true");
        let described = err.is_some().then(|| err_id.clone());
        view! {
            <label for=id>{label}</label>
            <textarea id=id name=id rows="4" aria-invalid=invalid aria-describedby=described>{value}</textarea>
            {err.map(|m| view! { <p class="field-error" id=err_id role="alert">{m}</p> })}
        }
    };
    let notice = saved.then(|| view! { <p class="notice" role="status">{lang.t("notice-policy-saved")}</p> });
    let other = (!other.is_empty())
        .then(|| view! { <p class="field-error" role="alert" id="form-error">{other.join("; ")}</p> });
    let keep = |id: &'static str, key: &str, value: String| {
        let field_name = format!("retention.{id}");
        field(id, lang.t(key), value, error(&field_name), None)
    };
    let title = p.spec.name.clone();
    let content = view! {
        {notice}
        <p class="muted">{lang.ta("policy-revision", &[("revision", crate::i18n::Arg::Int(p.revision))])}</p>
        {other}
        <form method="post" action=format!("/policies/{}", p.id) class="stack policy" novalidate=true>
            {csrf_field(ctx)}
            <input type="hidden" name="etag" value=f.etag.clone()/>
            <fieldset disabled=!editable>
                <legend>{lang.t("policy-what")}</legend>
                {field("name", lang.t("groups-name"), f.name.clone(), error("name"), None)}
                {area("paths", lang.t("policy-paths"), f.paths.clone(), error("paths"))}
                {area("excludes", lang.t("policy-excludes"), f.excludes.clone(), error("excludes"))}
            </fieldset>
            <fieldset disabled=!editable>
                <legend>{lang.t("policy-when")}</legend>
                {field("cron", lang.t("policy-cron"), f.cron.clone(), error("schedule.cron").or_else(|| error("schedule.interval_seconds")), Some(lang.t("policy-cron-hint")))}
                {field("timezone", lang.t("policy-timezone"), f.timezone.clone(), error("schedule.timezone"), None)}
                {field("rpo_hours", lang.t("policy-rpo"), f.rpo_hours.clone(), error("rpo_seconds"), Some(lang.t("policy-rpo-hint")))}
            </fieldset>
            <fieldset disabled=!editable>
                <legend>{lang.t("policy-keep")}</legend>
                {keep("keep_last", "policy-keep-last", f.keep_last.clone())}
                {keep("keep_daily", "policy-keep-daily", f.keep_daily.clone())}
                {keep("keep_weekly", "policy-keep-weekly", f.keep_weekly.clone())}
                {keep("keep_monthly", "policy-keep-monthly", f.keep_monthly.clone())}
                {keep("keep_yearly", "policy-keep-yearly", f.keep_yearly.clone())}
            </fieldset>
            {editable.then(|| view! { <button type="submit">{lang.t("policy-save")}</button> })}
        </form>
        <p class="muted">{lang.t("policy-more")}</p>
        {history.map(|h| view! { <div inner_html=h></div> })}
    };
    layout::page_with_status(ctx, status, &title, content)
}
