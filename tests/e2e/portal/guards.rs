//! What the portal refuses and protects: an auditor sees no action; forged posts (no CSRF token,
//! a wrong one, a foreign Origin) are refused while the genuine one passes; the REST API does not
//! take the portal's cookie (nor its ticket as a bearer token); a machine named like a script
//! is text on every page; axe-core finds no serious or critical accessibility violation; a
//! Portuguese crawl finds no English interface text.

use anyhow::{Context as _, Result};
use cofre_api::users::NewUser;

use super::{Fleet, HOSTILE, english_only_texts, http};
use crate::harness::browser::Browser;

/// The portal's main pages for a fleet.
fn pages(f: &Fleet) -> Vec<String> {
    vec![
        "/".into(),
        "/machines".into(),
        format!("/machines/{}", f.saude),
        format!("/machines/{}", f.hostile),
        format!("/machines/{}", f.pending),
        "/jobs".into(),
        "/maintenance".into(),
        "/compliance".into(),
        "/enrollment".into(),
        "/groups".into(),
        "/policies".into(),
        format!("/policies/{}", f.policy),
        "/repositories".into(),
        "/stores".into(),
        "/audit".into(),
    ]
}

/// POSTs a form to the portal as a browser would, with the given cookie, origin and token.
async fn post(f: &Fleet, path: &str, cookie: &str, origin: Option<&str>, csrf: Option<&str>) -> Result<u16> {
    let mut form = vec![("name", "forjado".to_string())];
    if let Some(c) = csrf {
        form.push(("csrf", c.to_string()));
    }
    let mut req = http()?.post(f.url(path)).header("cookie", format!("cofre_session={cookie}")).form(&form);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    Ok(req.send().await?.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_forgeries_cookies_escaping_accessibility_and_translation() -> Result<()> {
    let fleet = Fleet::start("portalguards").await?;

    // An auditor reads everything and is offered no action.
    fleet
        .admin
        .create_user(&NewUser {
            username: "ana".into(),
            role: "auditor".into(),
            password: Some("auditora-da-camara".into()),
            ..Default::default()
        })
        .await?;
    let auditor = fleet.browser("en", "ana", "auditora-da-camara").await?;
    // The portal's login is the API's, with the browser's address in the audit log (the API's
    // per-address login limits see it too).
    let logins = fleet
        .admin
        .audit_events(&cofre_client::AuditFilter { action: Some("auth.login".into()), ..Default::default() })
        .await?;
    let ana = logins.items.iter().find(|e| e.actor.ends_with(":ana")).context("ana's login is audited")?;
    assert_eq!(ana.details["address"].as_str(), Some("127.0.0.1"), "{:?}", ana.details);
    for id in [fleet.saude, fleet.pending] {
        auditor.goto(&fleet.url(&format!("/machines/{id}"))).await?;
        assert!(auditor.has("#actions").await?, "the machine page rendered");
        assert!(!auditor.has("#actions form").await?, "no action for an auditor on {id}");
    }
    assert!(!auditor.has("a[href='/enrollment']").await?, "no enrollment for an auditor");
    auditor.goto(&fleet.url("/groups")).await?;
    assert!(!auditor.has("form[action='/groups']").await?);
    // Even a hand-made post with a valid token is the API's to refuse.
    let auditor_cookie = auditor.cookie("cofre_session").await?.context("cookie")?;
    let csrf = auditor.eval("return document.querySelector('.user input[name=csrf]').value", vec![]).await?;
    let csrf = csrf.as_str().context("csrf")?.to_string();
    let origin = fleet.ctrl.api_url();
    assert_eq!(post(&fleet, "/groups", &auditor_cookie, Some(&origin), Some(&csrf)).await?, 403);
    auditor.close().await?;

    // Forged posts with an admin's session: no token, a wrong token, a foreign origin, no origin.
    let b = fleet.admin_browser("en").await?;
    let cookie = b.cookie("cofre_session").await?.context("cookie")?;
    let csrf = b.eval("return document.querySelector('.user input[name=csrf]').value", vec![]).await?;
    let csrf = csrf.as_str().context("csrf")?.to_string();
    assert_eq!(post(&fleet, "/groups", &cookie, Some(&origin), None).await?, 403, "no token");
    assert_eq!(post(&fleet, "/groups", &cookie, Some(&origin), Some("0000")).await?, 403, "wrong token");
    assert_eq!(
        post(&fleet, "/groups", &cookie, Some("http://evil.example"), Some(&csrf)).await?,
        403,
        "foreign origin"
    );
    assert_eq!(post(&fleet, "/groups", &cookie, None, Some(&csrf)).await?, 403, "no origin");
    // The genuine post passes the same door (so the refusals above are the checks, not chance).
    let genuine = http()?
        .post(fleet.url("/groups"))
        .header("cookie", format!("cofre_session={cookie}"))
        .header("origin", &origin)
        .form(&[("name", "obras"), ("csrf", csrf.as_str())])
        .send()
        .await?;
    assert_eq!(genuine.status(), 303);
    assert!(fleet.admin.list_groups().await?.iter().all(|g| g.name != "forjado"), "no forged group exists");

    // The REST API never takes the portal's cookie, nor its ticket as a bearer token.
    let api = http()?
        .get(fleet.url("/api/v1/me"))
        .header("cookie", format!("cofre_session={cookie}"))
        .send()
        .await?;
    assert_eq!(api.status(), 401);
    let api = http()?.get(fleet.url("/api/v1/me")).bearer_auth(&cookie).send().await?;
    assert_eq!(api.status(), 401, "a portal ticket is not an API token");

    // In English, the portal's reasons read exactly as the API's.
    b.goto(&fleet.url("/machines")).await?;
    let rows = b.text("#machines tbody").await?;
    for m in fleet.admin.compliance(None, None).await? {
        for f in m.findings.iter().filter(|f| f.status != cofre_api::compliance::Status::Compliant) {
            assert!(rows.contains(&f.reason), "{:?} is shown as the API says it: {rows}", f.reason);
        }
    }

    // A machine named like a script is text everywhere; no page runs a script at all.
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    for page in pages(&fleet) {
        b.goto(&fleet.url(&page)).await?;
        assert!(!b.alert_open().await, "{page} ran the machine's name as a script");
        let scripts = b.eval("return document.scripts.length", vec![]).await?;
        assert_eq!(scripts.as_i64(), Some(0), "{page} has no script element");
        if ["/", "/machines", "/compliance"].contains(&page.as_str())
            || page.ends_with(&fleet.hostile.to_string())
        {
            assert!(b.source().await?.contains(escaped), "{page} shows the name as text");
            assert!(b.text("main").await?.contains(HOSTILE), "{page} shows the name");
        }
    }

    // Accessibility: axe-core on every main page, no serious or critical violation.
    let axe = std::fs::read_to_string(axe_path()?).context("reading axe.min.js")?;
    let mut found = Vec::new();
    for page in pages(&fleet) {
        b.goto(&fleet.url(&page)).await?;
        for v in axe_violations(&b, &axe).await? {
            found.push(format!("{page}: {v}"));
        }
    }
    // The check itself sees a violation when there is one (an unlabelled field).
    b.eval("document.querySelector('main').insertAdjacentHTML('beforeend', '<input type=text>')", vec![])
        .await?;
    let control = axe_violations(&b, &axe).await?;
    assert!(control.iter().any(|v| v.starts_with("label")), "axe reports an unlabelled field: {control:?}");
    assert!(found.is_empty(), "accessibility violations:\n{}", found.join("\n"));

    let english = english_only_texts();
    assert!(english.len() > 100, "the English texts are read ({})", english.len());
    b.goto(&fleet.url("/")).await?;
    let shown = visible_texts(&b).await?;
    assert!(
        shown.iter().any(|t| english.contains(t)),
        "the crawl recognises English text on an English page"
    );
    b.close().await?;

    // Portuguese: no English interface text on any page (what agents report is data, not text
    // of ours, and is left out: hostnames, paths, reasons).
    let pt = fleet.admin_browser("pt-BR").await?;
    let mut untranslated = Vec::new();
    for page in pages(&fleet) {
        pt.goto(&fleet.url(&page)).await?;
        for t in visible_texts(&pt).await? {
            if english.contains(&t) {
                untranslated.push(format!("{page}: {t:?}"));
            }
        }
    }
    assert!(untranslated.is_empty(), "English text on Portuguese pages:\n{}", untranslated.join("\n"));
    pt.close().await?;
    Ok(())
}

/// Serious and critical axe-core violations on the page the browser shows.
pub(crate) async fn axe_violations(b: &Browser, axe: &str) -> Result<Vec<String>> {
    b.eval(axe, vec![]).await?;
    let v = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.id + ' (' + v.impact + '): ' + v.nodes.map(n => n.target.join(' ')).slice(0, 3).join(', '))))
               .catch(e => done(['axe failed: ' + e]));",
            vec![],
        )
        .await?;
    Ok(v.as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| i.as_str().unwrap_or_default().to_string())
        .collect())
}

/// Every text the page shows or says to a screen reader (text nodes, labels, titles).
async fn visible_texts(b: &Browser) -> Result<Vec<String>> {
    let texts = b
        .eval(
            "const out = []; const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
             while (w.nextNode()) { const t = w.currentNode.textContent.trim(); if (t) out.push(t); }
             document.querySelectorAll('[aria-label],[title],[placeholder]').forEach(e => {
               for (const a of ['aria-label', 'title', 'placeholder']) { const v = e.getAttribute(a); if (v) out.push(v); } });
             return out;",
            vec![],
        )
        .await?;
    Ok(texts
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect())
}

/// axe-core's browser build, as `deploy/local/install-deps.sh --tests` installs it.
pub(crate) fn axe_path() -> Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("COFRE_AXE_JS") {
        return Ok(p.into());
    }
    let home = std::env::var_os("HOME").context("HOME")?;
    let p = std::path::Path::new(&home).join(".cache/cofre/axe/node_modules/axe-core/axe.min.js");
    anyhow::ensure!(p.is_file(), "{} is missing: run deploy/local/install-deps.sh --tests", p.display());
    Ok(p)
}
