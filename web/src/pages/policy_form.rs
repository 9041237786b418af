//! The policy form both the new-policy form (`/policies`) and a policy's page use: its fields as
//! typed, how they become a spec (only what is not a number is refused here; the rest is the
//! API's to judge), and its fieldsets with each error beside the field it names.

use cofre_api::common::FieldError;
use cofre_api::policies::PolicySpec;
use cofre_api::repositories::Repository;
use leptos::prelude::*;
use serde::Deserialize;
use uuid::Uuid;

use crate::Lang;
use crate::layout::{text_area, text_field};

/// The form's fields, as typed.
#[derive(Deserialize, Default, Clone)]
pub struct PolicyForm {
    pub name: String,
    pub paths: String,
    /// Only on the new-policy form (a policy's repository is not changed in the browser).
    #[serde(default)]
    pub repository_id: String,
    #[serde(default)]
    pub excludes: String,
    #[serde(default)]
    pub cron: String,
    #[serde(default)]
    pub timezone: String,
    #[serde(default)]
    pub rpo_hours: String,
    #[serde(default)]
    pub keep_last: String,
    #[serde(default)]
    pub keep_daily: String,
    #[serde(default)]
    pub keep_weekly: String,
    #[serde(default)]
    pub keep_monthly: String,
    #[serde(default)]
    pub keep_yearly: String,
    /// The ETag of the revision the form was made from (edits only).
    #[serde(default)]
    pub etag: String,
}

fn count(n: u32) -> String {
    if n == 0 { String::new() } else { n.to_string() }
}

/// The fields the form shows, by the API's names for them (errors on others are listed above it).
const SHOWN: [&str; 11] = [
    "name",
    "repository_id",
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

/// Whether the API's error names `field` or something inside it (`paths[2]`, `schedule.cron`).
fn names(e: &FieldError, field: &str) -> bool {
    e.field == field || e.field.starts_with(&format!("{field}[")) || e.field.starts_with(&format!("{field}."))
}

impl PolicyForm {
    /// The form showing `spec`, made from the revision `etag`.
    pub fn of(spec: &PolicySpec, etag: &str) -> Self {
        let r = spec.retention.clone().unwrap_or_default();
        let s = spec.schedule.clone().unwrap_or_default();
        PolicyForm {
            name: spec.name.clone(),
            paths: spec.paths.join("\n"),
            repository_id: spec.repository_id.to_string(),
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

    /// An empty form for a new policy, with the spec's defaults (the RPO).
    pub fn blank() -> Self {
        PolicyForm {
            repository_id: String::new(),
            ..Self::of(&PolicySpec::new("", Uuid::nil(), Vec::new()), "")
        }
    }

    /// A new policy's spec: the chosen repository and these fields over every default.
    pub fn new_spec(&self, lang: Lang) -> Result<PolicySpec, Vec<FieldError>> {
        let repository = self.repository_id.trim().parse::<Uuid>().ok();
        let spec = self.apply(lang, PolicySpec::new("", repository.unwrap_or_default(), Vec::new()));
        match (repository, spec) {
            (Some(_), spec) => spec,
            (None, spec) => {
                let mut errors = spec.err().unwrap_or_default();
                errors.insert(0, FieldError::new("repository_id", lang.t("policy-pick-repository")));
                Err(errors)
            }
        }
    }

    /// The spec with this form's fields applied over `spec` (what the form does not show is
    /// kept), or the fields that are not numbers.
    pub fn apply(&self, lang: Lang, mut spec: PolicySpec) -> Result<PolicySpec, Vec<FieldError>> {
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

/// The errors on fields the form does not show (or on none), as one line above the form.
pub fn other_errors(errors: &[FieldError]) -> Option<impl IntoView + use<>> {
    let other: Vec<String> = errors
        .iter()
        .filter(|e| !SHOWN.iter().any(|s| names(e, s)))
        .map(|e| if e.field.is_empty() { e.message.clone() } else { format!("{}: {}", e.field, e.message) })
        .collect();
    (!other.is_empty())
        .then(|| view! { <p class="field-error" role="alert" id="form-error">{other.join("; ")}</p> })
}

/// The form's fieldsets (disabled unless `editable`), each field with its errors beside it;
/// with `repositories`, a choice of repository first (the new-policy form).
pub fn fieldsets(
    lang: Lang,
    f: &PolicyForm,
    errors: &[FieldError],
    editable: bool,
    repositories: Option<Vec<Repository>>,
) -> impl IntoView + use<> {
    let error = |field: &str| {
        let found: Vec<String> =
            errors.iter().filter(|e| names(e, field)).map(|e| e.message.clone()).collect();
        (!found.is_empty()).then(|| found.join("; "))
    };
    let keep = |id: &'static str, key: &str, value: String| {
        text_field(id, lang.t(key), value, error(&format!("retention.{id}")), None)
    };
    let repository = repositories.map(|repos| {
        let chosen = f.repository_id.clone();
        let options = repos
            .into_iter()
            .map(|r| {
                let id = r.id.to_string();
                let selected = id == chosen;
                view! { <option value=id selected=selected>{r.name}</option> }
            })
            .collect_view();
        let err = error("repository_id");
        let invalid = err.is_some().then_some("true");
        view! {
            <label for="repository_id">{lang.t("policy-repository")}</label>
            <select id="repository_id" name="repository_id" aria-invalid=invalid aria-describedby="repository_id-error">
                <option value="">{lang.t("policy-choose")}</option>
                {options}
            </select>
            {crate::layout::field_error("repository_id-error", err)}
        }
    });
    let cron_error = error("schedule.cron").or_else(|| error("schedule.interval_seconds"));
    view! {
        <fieldset disabled=!editable>
            <legend>{lang.t("policy-what")}</legend>
            {text_field("name", lang.t("groups-name"), f.name.clone(), error("name"), None)}
            {repository}
            {text_area("paths", lang.t("policy-paths"), f.paths.clone(), error("paths"))}
            {text_area("excludes", lang.t("policy-excludes"), f.excludes.clone(), error("excludes"))}
        </fieldset>
        <fieldset disabled=!editable>
            <legend>{lang.t("policy-when")}</legend>
            {text_field("cron", lang.t("policy-cron"), f.cron.clone(), cron_error, Some(lang.t("policy-cron-hint")))}
            {text_field("timezone", lang.t("policy-timezone"), f.timezone.clone(), error("schedule.timezone"), None)}
            {text_field("rpo_hours", lang.t("policy-rpo"), f.rpo_hours.clone(), error("rpo_seconds"), Some(lang.t("policy-rpo-hint")))}
        </fieldset>
        <fieldset disabled=!editable>
            <legend>{lang.t("policy-keep")}</legend>
            {keep("keep_last", "policy-keep-last", f.keep_last.clone())}
            {keep("keep_daily", "policy-keep-daily", f.keep_daily.clone())}
            {keep("keep_weekly", "policy-keep-weekly", f.keep_weekly.clone())}
            {keep("keep_monthly", "policy-keep-monthly", f.keep_monthly.clone())}
            {keep("keep_yearly", "policy-keep-yearly", f.keep_yearly.clone())}
        </fieldset>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_policy_needs_a_repository_and_numbers() {
        let f = PolicyForm {
            name: " docs ".into(),
            paths: "/srv/a\n\n /srv/b ".into(),
            rpo_hours: "abc".into(),
            keep_daily: "7".into(),
            ..PolicyForm::blank()
        };
        let errors = f.new_spec(Lang::En).err().unwrap_or_default();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["repository_id", "rpo_seconds"]);
        let repo = Uuid::now_v7();
        let f = PolicyForm { repository_id: repo.to_string(), rpo_hours: "24,5".into(), ..f };
        let spec = f.new_spec(Lang::En).map_err(|e| format!("{e:?}"));
        let spec = spec.as_ref().map(|s| (s.name.as_str(), s.repository_id, s.paths.len(), s.rpo_seconds));
        assert_eq!(spec, Ok(("docs", repo, 2, 88_200)));
        assert_eq!(PolicyForm::blank().rpo_hours, "36", "the default RPO is offered");
    }
}
