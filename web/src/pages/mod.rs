//! The pages, one file per area. Each handler reads through the in-process API, renders with
//! Leptos and answers; forms post, and on success redirect (Post/Redirect/Get); on a refusal the
//! form is rendered again with the API's message next to the field it names.

pub mod admin;
pub mod assignments;
pub mod audit;
pub mod compliance;
pub mod enrollment;
pub mod jobs;
pub mod login;
pub mod machines;
pub mod maintenance;
pub mod overview;
pub mod policies;
pub mod policy;
pub mod policy_form;
pub mod repositories;
pub mod stores;

use axum::response::{IntoResponse, Redirect, Response};

/// A path inside this site to go back to (never another site: `//host` and `/\host` are
/// refused).
pub fn local_path(p: Option<&str>) -> String {
    match p {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && !p.contains(['\r', '\n']) =>
        {
            p.to_string()
        }
        _ => "/".to_string(),
    }
}

/// A destructive action's form (revoke a machine or a store, delete a repository): its
/// confirmation box must be ticked.
#[derive(serde::Deserialize)]
pub struct Confirm {
    confirm: Option<String>,
}

impl Confirm {
    /// When the box was not ticked, the page to answer: it says `unticked` (a message key).
    pub fn unticked(&self, ctx: &crate::Ctx, unticked: &str) -> Option<Response> {
        (self.confirm.as_deref() != Some("yes"))
            .then(|| crate::layout::api_error(ctx, &crate::api::ApiError::invalid(ctx.lang.t(unticked))))
    }
}

/// The form of a destructive action posting to `action`: a confirmation box (`box_id`, saying
/// `confirm`) to tick first, and a danger button saying `button`.
pub fn confirm_form(
    ctx: &crate::Ctx,
    action: String,
    box_id: String,
    confirm: String,
    button: String,
) -> impl leptos::IntoView + use<> {
    use leptos::prelude::*;
    view! {
        <form method="post" action=action class="danger">
            {crate::layout::csrf_field(ctx)}
            <input type="checkbox" id=box_id.clone() name="confirm" value="yes" required=true/>
            <label for=box_id>{confirm}</label>
            <button type="submit" class="danger">{button}</button>
        </form>
    }
}

/// Post/Redirect/Get: after a change, back to a page that shows it (with a notice key).
pub fn see_other(path: &str, notice: &str) -> Response {
    let sep = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{sep}done={notice}")).into_response()
}

/// One page of the compliance report the API selects with `params` (its filters and order):
/// the machines, the page shown (1-based, clamped to the pages there are), how many pages and
/// how many machines in all. The API cuts the page: the portal never holds the whole fleet.
pub async fn report_page(
    ctx: &crate::Ctx,
    params: &[(&str, Option<String>)],
    page: usize,
    per_page: usize,
) -> Result<(Vec<cofre_api::compliance::MachineCompliance>, usize, usize, usize), crate::api::ApiError> {
    let fetch = |page: usize| {
        let mut all = params.to_vec();
        all.push(("limit", Some(per_page.to_string())));
        all.push(("offset", Some(((page - 1) * per_page).to_string())));
        let path = format!("/api/v1/compliance{}", crate::api::query(&all));
        async move { ctx.api.get::<cofre_api::compliance::Report>(path).await }
    };
    let page = page.max(1);
    let mut report = fetch(page).await?;
    let total = usize::try_from(report.total).unwrap_or(usize::MAX);
    let pages = total.div_ceil(per_page).max(1);
    if page > pages {
        report = fetch(pages).await?;
    }
    Ok((report.items, page.min(pages), pages, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths() {
        assert_eq!(local_path(Some("/machines?x=1")), "/machines?x=1");
        assert_eq!(local_path(Some("//evil.example")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(Some("https://evil.example")), "/");
        assert_eq!(local_path(None), "/");
    }
}
