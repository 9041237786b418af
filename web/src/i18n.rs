//! Languages: Brazilian Portuguese and English. Every visible string goes through Fluent
//! (`web/locales/<lang>/portal.ftl`, compiled in); the language comes from the `cofre_lang`
//! cookie, then `Accept-Language`, then English. Numbers, byte sizes and dates are written the
//! way each language writes them (pt-BR: `1.234,5`, `02/12/2026 14:05`).

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fluent_templates::fluent_bundle::FluentValue;
use fluent_templates::{LanguageIdentifier, Loader, langid};
use http::HeaderMap;

fluent_templates::static_loader! {
    static LOCALES = {
        locales: "./locales",
        fallback_language: "en-US",
        // Unicode isolation marks around arguments would end up inside attributes and CSV.
        customise: |bundle| bundle.set_use_isolating(false),
    };
}

static EN: LanguageIdentifier = langid!("en-US");
static PT_BR: LanguageIdentifier = langid!("pt-BR");

/// The cookie that keeps the chosen language.
pub const COOKIE: &str = "cofre_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    PtBr,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::PtBr, Lang::En];

    /// The code in URLs, cookies and `<html lang>`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::PtBr => "pt-BR",
        }
    }

    /// The language's own name (never translated: people look for their own).
    pub fn native_name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::PtBr => "Português",
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        let code = code.trim().to_ascii_lowercase();
        if code == "pt" || code.starts_with("pt-") || code.starts_with("pt_") {
            Some(Lang::PtBr)
        } else if code == "en" || code.starts_with("en-") || code.starts_with("en_") {
            Some(Lang::En)
        } else {
            None
        }
    }

    /// The cookie's choice, else the first language of `Accept-Language` we have (by q), else
    /// English.
    pub fn of_request(headers: &HeaderMap) -> Lang {
        if let Some(l) = crate::session::cookie(headers, COOKIE).and_then(|c| Lang::parse(&c)) {
            return l;
        }
        let Some(accept) = headers.get(http::header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()) else {
            return Lang::En;
        };
        let mut best: Option<(f32, Lang)> = None;
        for item in accept.split(',').take(32) {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()))
                .unwrap_or(1.0);
            if let Some(l) = Lang::parse(tag)
                && best.is_none_or(|(bq, _)| q > bq)
            {
                best = Some((q, l));
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }

    fn id(self) -> &'static LanguageIdentifier {
        match self {
            Lang::En => &EN,
            Lang::PtBr => &PT_BR,
        }
    }

    /// The text of `key`.
    pub fn t(self, key: &str) -> String {
        LOCALES.lookup(self.id(), key)
    }

    /// The text of `key` with its arguments.
    pub fn ta(self, key: &str, args: &[(&'static str, Arg)]) -> String {
        let map: HashMap<Cow<'static, str>, FluentValue> =
            args.iter().map(|(k, v)| (Cow::Borrowed(*k), v.to_fluent())).collect();
        LOCALES.lookup_with_args(self.id(), key, &map)
    }

    /// Whether `key` exists in this language itself (not through the fallback).
    pub fn has(self, key: &str) -> bool {
        // Messages with arguments only format with them: give every argument name used.
        let args: HashMap<Cow<'static, str>, FluentValue> = [
            "n",
            "count",
            "page",
            "pages",
            "protected",
            "machines",
            "name",
            "percent",
            "from",
            "to",
            "policy",
            "at",
            "events",
            "checkpoints",
            "until",
            "limit",
            "revision",
            "done",
            "total",
            "files",
        ]
        .into_iter()
        .map(|k| (Cow::Borrowed(k), FluentValue::from(1)))
        .collect();
        LOCALES.try_lookup_with_args(self.id(), key, &args).is_some()
    }

    fn separators(self) -> (char, char) {
        match self {
            Lang::En => (',', '.'),
            Lang::PtBr => ('.', ','),
        }
    }

    /// A whole number with thousands separators.
    pub fn number(self, n: i64) -> String {
        let (thousands, _) = self.separators();
        let digits = n.unsigned_abs().to_string();
        let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
        if n < 0 {
            out.push('-');
        }
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(thousands);
            }
            out.push(c);
        }
        out
    }

    /// A number with `places` decimals.
    pub fn decimal(self, x: f64, places: usize) -> String {
        let (_, point) = self.separators();
        let s = format!("{:.*}", places, x.abs());
        let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
        let whole = self.number(int.parse::<i64>().unwrap_or(0));
        let sign = if x < 0.0 && s.bytes().any(|b| b.is_ascii_digit() && b != b'0') { "-" } else { "" };
        if frac.is_empty() { format!("{sign}{whole}") } else { format!("{sign}{whole}{point}{frac}") }
    }

    /// A percentage, one decimal (`97.5%`, `97,5%`).
    pub fn percent(self, p: f64) -> String {
        format!("{}%", self.decimal(p, 1))
    }

    /// A byte count in binary units (`1.5 GiB`, `1,5 GiB`).
    pub fn bytes(self, n: i64) -> String {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut x = n.max(0) as f64;
        let mut unit = 0;
        while x >= 1024.0 && unit + 1 < UNITS.len() {
            x /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            format!("{} B", self.number(n.max(0)))
        } else {
            format!("{} {}", self.decimal(x, 1), UNITS[unit])
        }
    }

    /// A moment in UTC, the way this language writes dates.
    pub fn datetime(self, t: DateTime<Utc>) -> String {
        match self {
            Lang::En => t.format("%Y-%m-%d %H:%M UTC").to_string(),
            Lang::PtBr => t.format("%d/%m/%Y %H:%M UTC").to_string(),
        }
    }

    /// A day, the way this language writes dates.
    pub fn date(self, d: chrono::NaiveDate) -> String {
        match self {
            Lang::En => d.format("%Y-%m-%d").to_string(),
            Lang::PtBr => d.format("%d/%m/%Y").to_string(),
        }
    }

    /// How long ago `t` was, in words ("3 hours ago", "há 3 horas").
    pub fn ago(self, t: DateTime<Utc>, now: DateTime<Utc>) -> String {
        let s = (now - t).num_seconds();
        if s < 0 {
            return self.t("time-in-future");
        }
        let (key, n) = match s {
            0..60 => return self.t("time-just-now"),
            60..3600 => ("time-minutes-ago", s / 60),
            3600..86_400 => ("time-hours-ago", s / 3600),
            _ => ("time-days-ago", s / 86_400),
        };
        self.ta(key, &[("n", Arg::Int(n))])
    }

    /// A limit as people write it (`36 h`, `7 d`, `15 min`), the way the controller's reasons do.
    pub fn limit(self, seconds: i64) -> String {
        cofre_api::compliance::human_limit(seconds)
    }

    /// A duration in words (`2 min 5 s`).
    pub fn duration(self, seconds: i64) -> String {
        let s = seconds.max(0);
        match s {
            0..60 => format!("{s} s"),
            60..3600 => format!("{} min {} s", s / 60, s % 60),
            _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        }
    }
}

/// A Fluent argument.
#[derive(Debug, Clone)]
pub enum Arg {
    Int(i64),
    Text(String),
}

impl Arg {
    fn to_fluent(&self) -> FluentValue<'static> {
        match self {
            Arg::Int(n) => FluentValue::from(*n),
            Arg::Text(s) => FluentValue::from(s.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ftl: &str) -> std::collections::BTreeSet<String> {
        ftl.lines()
            .filter(|l| !l.starts_with([' ', '#', '\t', '*', '[']) && l.contains(" ="))
            .filter_map(|l| l.split_once(" =").map(|(k, _)| k.trim().to_string()))
            .collect()
    }

    #[test]
    fn every_message_exists_in_both_languages() {
        let en = keys(include_str!("../locales/en-US/portal.ftl"));
        let pt = keys(include_str!("../locales/pt-BR/portal.ftl"));
        assert!(en.len() > 50, "the English file is read ({} keys)", en.len());
        let only_en: Vec<_> = en.difference(&pt).collect();
        let only_pt: Vec<_> = pt.difference(&en).collect();
        assert!(
            only_en.is_empty() && only_pt.is_empty(),
            "only in en: {only_en:?}; only in pt-BR: {only_pt:?}"
        );
        for k in &en {
            assert!(Lang::PtBr.has(k) && Lang::En.has(k), "{k} does not load");
        }
    }

    #[test]
    fn every_key_the_code_uses_exists() {
        let en = keys(include_str!("../locales/en-US/portal.ftl"));
        let mut missing = Vec::new();
        for src in crate::SOURCES {
            for (i, pat) in
                [".t(\"", ".ta(\"", "refused(lang, \"", "key: \""].iter().flat_map(|p| src.match_indices(p))
            {
                let rest = &src[i + pat.len()..];
                let key = &rest[..rest.find('"').unwrap_or(0)];
                if !key.is_empty() && !en.contains(key) {
                    missing.push(key.to_string());
                }
            }
        }
        assert!(missing.is_empty(), "keys used but not translated: {missing:?}");
    }

    #[test]
    fn numbers_and_dates_follow_the_language() {
        assert_eq!(Lang::En.number(1_234_567), "1,234,567");
        assert_eq!(Lang::PtBr.number(1_234_567), "1.234.567");
        assert_eq!(Lang::PtBr.number(-12), "-12");
        assert_eq!(Lang::En.percent(97.46), "97.5%");
        assert_eq!(Lang::PtBr.percent(97.46), "97,5%");
        assert_eq!(Lang::PtBr.bytes(1536 * 1024 * 1024), "1,5 GiB");
        assert_eq!(Lang::En.bytes(999), "999 B");
        let t = DateTime::parse_from_rfc3339("2026-12-02T14:05:00Z").map(|t| t.with_timezone(&Utc));
        let t = t.expect("a date");
        assert_eq!(Lang::PtBr.datetime(t), "02/12/2026 14:05 UTC");
        assert_eq!(Lang::En.datetime(t), "2026-12-02 14:05 UTC");
        assert_eq!(Lang::PtBr.ago(t - chrono::Duration::hours(3), t), "há 3 horas");
        assert_eq!(Lang::En.ago(t - chrono::Duration::hours(1), t), "1 hour ago");
    }

    #[test]
    fn reasons_in_english_read_as_the_controller_writes_them() {
        let t = DateTime::parse_from_rfc3339("2026-12-02T14:05:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("date");
        let args = [("at", Arg::Text(Lang::En.datetime(t))), ("limit", Arg::Text(Lang::En.limit(36 * 3600)))];
        assert_eq!(
            Lang::En.ta("why-backup_old", &args),
            "last good backup at 2026-12-02 14:05 UTC (RPO: 36 h)"
        );
        assert_eq!(
            Lang::PtBr.ta("why-backup_old", &args).split(" (").next(),
            Some("último backup bem-sucedido em 2026-12-02 14:05 UTC")
        );
        assert_eq!(Lang::En.limit(7 * 86_400), "7 d");
        assert_eq!(Lang::En.limit(86_400), "24 h");
        assert_eq!(Lang::En.limit(90), "90 s");
    }

    #[test]
    fn language_from_cookie_then_accept_language() {
        let mut h = HeaderMap::new();
        assert_eq!(Lang::of_request(&h), Lang::En);
        h.insert(http::header::ACCEPT_LANGUAGE, "fr;q=1, pt-BR;q=0.9, en;q=0.8".parse().expect("header"));
        assert_eq!(Lang::of_request(&h), Lang::PtBr);
        h.insert(http::header::COOKIE, "x=1; cofre_lang=en".parse().expect("header"));
        assert_eq!(Lang::of_request(&h), Lang::En);
    }
}
