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

/// Post/Redirect/Get: after a change, back to a page that shows it (with a notice key).
pub fn see_other(path: &str, notice: &str) -> Response {
    let sep = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{sep}done={notice}")).into_response()
}

/// One page of a list: `page` (1-based, clamped to the pages there are) of `per_page` items;
/// also the page shown and how many there are.
pub fn paginate<T>(items: Vec<T>, page: usize, per_page: usize) -> (Vec<T>, usize, usize) {
    let pages = items.len().div_ceil(per_page).max(1);
    let page = page.clamp(1, pages);
    (items.into_iter().skip((page - 1) * per_page).take(per_page).collect(), page, pages)
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

    #[test]
    fn pages() {
        let (p, page, n) = paginate((1..=120).collect::<Vec<_>>(), 3, 50);
        assert_eq!((p.len(), page, n, p[0]), (20, 3, 3, 101));
        let (p, page, n) = paginate(Vec::<i32>::new(), 9, 50);
        assert_eq!((p.len(), page, n), (0, 1, 1));
    }
}
