//! Who is looking: the portal's session cookie, its CSRF token and the Origin check.
//!
//! The cookie (`cofre_session`: `HttpOnly; Secure; SameSite=Lax`) holds a portal ticket the
//! controller signs ([`Backend::open`]); it names the user's login session, so logout, a
//! disabled account or a password reset end it like any other. Each request trades it for a
//! short-lived token of the REST API ([`Backend::resume`]), which the in-process API call
//! carries: the API's one authorisation middleware decides, exactly as for scripts. The REST API
//! itself never reads cookies.
//!
//! Every POST needs a matching `Origin` and the ticket's CSRF token in the form (`csrf`); the
//! login form, before any session, uses a random token in its own short-lived cookie.

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, header};

/// The portal's session cookie.
pub const COOKIE: &str = "cofre_session";
/// The login form's CSRF cookie (before a session exists).
pub const LOGIN_COOKIE: &str = "cofre_login";

/// What the controller does for the portal that the REST API does not: signing portal tickets.
pub trait Backend: Send + Sync + 'static {
    /// A portal ticket for the login session `access_token` (fresh from the API's login) belongs
    /// to.
    fn open(&self, access_token: &str) -> Result<Ticket, String>;
    /// Checks a portal ticket: a short-lived API token of the same session, and the CSRF token.
    fn resume(&self, ticket: &str) -> Option<Resumed>;
    /// What of the browser request's extensions the in-process API call carries (the server's
    /// record of the connection: the peer address the API's rate limits and audit use).
    fn connection(&self, from: &http::Extensions) -> http::Extensions;
}

/// A signed portal ticket: the session cookie's value.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub value: String,
    pub expires_at: DateTime<Utc>,
}

/// A ticket checked.
#[derive(Clone)]
pub struct Resumed {
    pub api_token: String,
    pub csrf: String,
}

impl std::fmt::Debug for Resumed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resumed { .. }")
    }
}

/// A cookie's value from the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// `Set-Cookie` for a cookie only this site's pages send back.
pub fn set_cookie(name: &str, value: &str, max_age_seconds: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={}",
        max_age_seconds.max(0)
    ))
    .ok()
}

/// `Set-Cookie` that removes a cookie.
pub fn clear_cookie(name: &str) -> Option<HeaderValue> {
    set_cookie(name, "", 0)
}

/// Whether a state-changing request comes from this site: its `Origin` names the host it was
/// sent to. Browsers send `Origin` with every form POST; a request without one is refused.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(origin_host) = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")) else {
        return false;
    };
    origin_host.eq_ignore_ascii_case(host)
}

/// Compares two tokens in time that does not depend on where they differ.
pub fn tokens_match(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn origin_must_name_the_host() {
        assert!(same_origin(&headers(&[("origin", "http://127.0.0.1:8080"), ("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[("origin", "https://cofre.example"), ("host", "cofre.example")])));
        assert!(!same_origin(&headers(&[("origin", "https://evil.example"), ("host", "cofre.example")])));
        assert!(!same_origin(&headers(&[("origin", "null"), ("host", "cofre.example")])));
        assert!(!same_origin(&headers(&[("host", "cofre.example")])));
        assert!(!same_origin(&headers(&[
            ("origin", "http://127.0.0.1:8080.evil"),
            ("host", "127.0.0.1:8080")
        ])));
    }

    #[test]
    fn cookies_and_tokens() {
        let h = headers(&[("cookie", "a=1; cofre_session=abc.def"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc.def"));
        assert_eq!(cookie(&h, "b").as_deref(), Some("2"));
        assert!(cookie(&h, "c").is_none());
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("", ""));
        let c = set_cookie(COOKIE, "v", 60).expect("cookie");
        let c = c.to_str().expect("ascii");
        for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=60"] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
    }
}
