//! Where a policy applies, on its page: its assignments to groups and machines (each with a
//! button to remove it) and the form to apply it to one more, for fleet-wide admins (the API
//! refuses anyone else). A refused assignment shows the API's message beside the choice; the
//! form posts to `policy::assign`, which re-renders the policy's page (so this module needs
//! nothing of `policy.rs`: no import circle).

use std::collections::HashMap;

use axum::Extension;
use axum::extract::Path;
use axum::response::Response;
use cofre_api::Items;
use cofre_api::common::Page;
use cofre_api::groups::Group;
use cofre_api::machines::Machine;
use cofre_api::policies::{Assignment, NewAssignment};
use http::Method;
use leptos::prelude::*;
use serde::Deserialize;
use uuid::Uuid;

use super::see_other;
use crate::Ctx;
use crate::api::ApiError;
use crate::layout::{self, csrf_field, field_error};

/// What to apply the policy to: `group:<id>` or `machine:<id>`.
#[derive(Deserialize, Default)]
pub struct AssignForm {
    #[serde(default)]
    pub target: String,
}

impl AssignForm {
    /// The assignment the choice names, if it names one.
    pub fn assignment(&self) -> Option<NewAssignment> {
        let (kind, id) = self.target.split_once(':')?;
        let id = id.parse::<Uuid>().ok()?;
        match kind {
            "group" => Some(NewAssignment { group_id: Some(id), machine_id: None }),
            "machine" => Some(NewAssignment { machine_id: Some(id), group_id: None }),
            _ => None,
        }
    }
}

/// The section of the policy's page, rendered; `refused` is the value the form sent and the
/// API's refusal of it.
pub async fn section(
    ctx: &Ctx,
    policy: Uuid,
    refused: Option<(String, ApiError)>,
) -> Result<String, ApiError> {
    let lang = ctx.lang;
    let (list, groups, machines) = futures::join!(
        ctx.api.get::<Items<Assignment>>(format!("/api/v1/policies/{policy}/assignments")),
        ctx.api.get::<Items<Group>>("/api/v1/groups"),
        ctx.api.get::<Page<Machine>>("/api/v1/machines?limit=1000"),
    );
    let (list, groups, machines) = (list?.items, groups?.items, machines?.items);
    let group_names: HashMap<Uuid, String> = groups.iter().map(|g| (g.id, g.name.clone())).collect();
    let hosts: HashMap<Uuid, String> = machines.iter().map(|m| (m.id, m.hostname.clone())).collect();
    let editable = ctx.viewer.as_ref().is_some_and(|v| v.is_admin() && v.fleet_wide());
    let csrf = ctx.csrf();
    let rows = list
        .into_iter()
        .map(|a| {
            let (kind, target) = match (a.group_id, a.machine_id) {
                (Some(g), _) => (
                    lang.t("col-group"),
                    view! { <a href=format!("/machines?group={g}")>{group_names.get(&g).cloned().unwrap_or_else(|| g.to_string())}</a> }.into_any(),
                ),
                (None, Some(m)) => (
                    lang.t("col-machine"),
                    view! { <a href=format!("/machines/{m}")>{hosts.get(&m).cloned().unwrap_or_else(|| m.to_string())}</a> }.into_any(),
                ),
                (None, None) => (String::new(), ().into_any()),
            };
            let remove = editable.then(|| {
                view! {
                    <td>
                        <form method="post" action=format!("/policies/{policy}/assignments/{}/remove", a.id)>
                            <input type="hidden" name="csrf" value=csrf.clone()/>
                            <button type="submit" class="danger">{lang.t("assign-remove")}</button>
                        </form>
                    </td>
                }
            });
            view! {
                <tr>
                    <td>{kind}</td>
                    <td>{target}</td>
                    <td>{lang.datetime(a.created_at)}</td>
                    {remove}
                </tr>
            }
        })
        .collect_view();
    let (chosen, message) = match refused {
        Some((target, e)) => (target, Some(e.problem.detail)),
        None => (String::new(), None),
    };
    let form = editable.then(|| {
        let option = |value: String, label: String| {
            let selected = value == chosen;
            view! { <option value=value selected=selected>{label}</option> }
        };
        let group_options =
            groups.iter().map(|g| option(format!("group:{}", g.id), g.name.clone())).collect_view();
        let machine_options =
            machines.iter().map(|m| option(format!("machine:{}", m.id), m.hostname.clone())).collect_view();
        let invalid = message.is_some().then_some("true");
        view! {
            <form method="post" action=format!("/policies/{policy}/assignments") class="stack" id="assign" novalidate=true>
                {csrf_field(ctx)}
                <label for="target">{lang.t("assign-target")}</label>
                <select id="target" name="target" aria-invalid=invalid aria-describedby="target-error">
                    <option value="">{lang.t("policy-choose")}</option>
                    <optgroup label=lang.t("nav-groups")>{group_options}</optgroup>
                    <optgroup label=lang.t("nav-machines")>{machine_options}</optgroup>
                </select>
                {field_error("target-error", message)}
                <button type="submit">{lang.t("assign-submit")}</button>
            </form>
        }
    });
    let header = editable.then(|| view! { <th scope="col">{lang.t("col-actions")}</th> });
    Ok(layout::render(view! {
        <section aria-labelledby="assignments-h" id="assignments">
            <h2 id="assignments-h">{lang.t("assign-title")}</h2>
            <table>
                <thead><tr>
                    <th scope="col">{lang.t("col-kind")}</th>
                    <th scope="col">{lang.t("assign-applies-to")}</th>
                    <th scope="col">{lang.t("col-created")}</th>
                    {header}
                </tr></thead>
                <tbody>{rows}</tbody>
            </table>
            {form}
        </section>
    }))
}

/// `POST /policies/{id}/assignments/{assignment}/remove`.
pub async fn unassign(
    Extension(ctx): Extension<Ctx>,
    Path((id, assignment)): Path<(Uuid, Uuid)>,
) -> Response {
    let path = format!("/api/v1/policies/{id}/assignments/{assignment}");
    match ctx.api.act::<()>(Method::DELETE, &path, None).await {
        Ok(()) => see_other(&format!("/policies/{id}"), "unassigned"),
        Err(e) => layout::api_error(&ctx, &e),
    }
}
