//! A department head who has never seen Cofre, in Portuguese: logs in, sees at once how much of
//! the fleet is protected (the API's numbers) and which machines are not and why, filters the
//! machine list, backs one up now and sees the job, makes a mistake in a form and reads the error
//! beside the field, exports the report as the API's CSV, has the audit chain verified, switches
//! to English and logs out (the session ends on the server).

use anyhow::{Context as _, Result};
use cofre_api::compliance::Status;

use super::{Fleet, http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_head_sees_in_portuguese_which_machines_are_unprotected_and_why() -> Result<()> {
    let fleet = Fleet::start("portalflows").await?;
    let b = fleet.admin_browser("pt-BR").await?;

    // The portal answers in the browser's language, and the session cookie is set as designed.
    let lang = b.eval("return document.documentElement.lang", vec![]).await?;
    assert_eq!(lang.as_str(), Some("pt-BR"));
    assert_eq!(b.text("main h1").await?, "Estamos protegidos?");
    assert!(b.cookie("cofre_session").await?.is_some(), "the session cookie is kept by the browser");

    // The overview's numbers are the API's.
    let summary = fleet.admin.compliance_summary().await?;
    let shown = b.eval("return document.querySelector('#protected .value').dataset.value", vec![]).await?;
    assert_eq!(shown.as_str().and_then(|s| s.parse::<f64>().ok()), Some(summary.fleet.protected_percent));
    for (status, n) in [
        ("compliant", summary.fleet.compliant),
        ("at_risk", summary.fleet.at_risk),
        ("unknown", summary.fleet.unknown),
        ("non_compliant", summary.fleet.non_compliant),
    ] {
        assert_eq!(b.text(&format!("#count-{status}")).await?, n.to_string(), "{status}");
    }
    assert_eq!(b.text("#pending-count").await?, "1", "one machine waits for approval");
    // Every machine that is not protected is listed with the reason the API gives, said in
    // Portuguese (the API's reason as data, translated).
    let report = fleet.admin.compliance(None, None).await?;
    let attention = b.text("#attention").await?;
    for m in report.iter().filter(|m| m.status != Status::Compliant) {
        assert!(attention.contains(&m.hostname), "{} is listed: {attention}", m.hostname);
        let finding = m.findings.iter().find(|f| f.status != Status::Compliant).context("a failing rule")?;
        let why = finding.why.as_ref().context("the API gives the reason as data")?;
        let row = format!("#attention a[href='/machines/{}']", m.machine_id);
        assert!(b.has(&row).await?, "{row}");
        assert!(
            b.has(&format!("#attention [data-why='{}']", why.code)).await?,
            "the reason {} is shown",
            why.code
        );
    }
    assert!(attention.contains("nunca se comunicou"), "reasons are in Portuguese: {attention}");
    assert!(!attention.contains("has never reported"), "no English reason: {attention}");
    assert!(b.text("#groups").await?.contains("saude"), "per-department bars");

    // The machine list filters by name.
    b.goto(&fleet.url("/machines")).await?;
    assert_eq!(b.eval("return document.querySelector('#machine-count').dataset.count", vec![]).await?, "3");
    b.fill("#q", "ubs-centro").await?;
    b.click("form.filters button[type=submit]").await?;
    assert_eq!(b.eval("return document.querySelector('#machine-count').dataset.count", vec![]).await?, "1");
    let rows = b.text("#machines tbody").await?;
    assert!(rows.contains("ubs-centro-01") && !rows.contains("escola-norte-07"), "{rows}");

    // Back a machine up now: the job appears on its page and in the API.
    b.click("#machines tbody a").await?;
    assert_eq!(b.path().await?, format!("/machines/{}", fleet.saude));
    b.click("#actions form[action$='/run'] button").await?;
    assert_eq!(b.path().await?, format!("/machines/{}?done=run", fleet.saude));
    assert!(b.text(".notice").await?.contains("na fila"), "the notice says the backup is queued");
    let jobs = b.text("#jobs table").await?;
    assert!(jobs.contains("na fila") && jobs.contains("documentos"), "{jobs}");
    let api_jobs = fleet
        .admin
        .list_all_jobs(&cofre_api::jobs::JobFilter { machine: Some(fleet.saude), ..Default::default() })
        .await?;
    assert_eq!(api_jobs.len(), 1, "exactly one job (the form's key makes a resubmission the same job)");
    assert_eq!((api_jobs[0].trigger.as_str(), api_jobs[0].policy_id), ("run_now", Some(fleet.policy)));

    // A mistake in a form: the API's message stands next to the field, the value is kept.
    b.goto(&fleet.url("/groups")).await?;
    b.fill("#name", "Saúde Bucal").await?;
    b.click("form[action='/groups'] button[type=submit]").await?;
    let error = b.text("#name-error").await?;
    assert!(error.contains("a-z"), "the field's error: {error}");
    let kept = b.eval("return document.querySelector('#name').value", vec![]).await?;
    assert_eq!(kept.as_str(), Some("Saúde Bucal"));
    let described =
        b.eval("return document.querySelector('#name').getAttribute('aria-describedby')", vec![]).await?;
    assert_eq!(described.as_str(), Some("name-error"), "the error is tied to its field for screen readers");
    b.fill("#name", "saude-bucal").await?;
    b.click("form[action='/groups'] button[type=submit]").await?;
    assert_eq!(b.path().await?, "/groups?done=group", "Post/Redirect/Get");
    assert!(fleet.admin.list_groups().await?.iter().any(|g| g.name == "saude-bucal"));

    // A policy: an invalid value is refused with the API's message beside its field; a good
    // one is saved and the machines' policy changes.
    b.goto(&fleet.url("/policies")).await?;
    b.click("#policies a").await?;
    assert_eq!(b.path().await?, format!("/policies/{}", fleet.policy));
    b.fill("#cron", "0 22 * * 1-5").await?;
    b.fill("#timezone", "Marte/Olimpo").await?;
    b.fill("#rpo_hours", "0").await?;
    b.click("form.policy button[type=submit]").await?;
    let tz = b.text("#timezone-error").await?;
    let rpo = b.text("#rpo_hours-error").await?;
    assert!(!tz.is_empty() && !rpo.is_empty(), "errors beside the time zone ({tz}) and the RPO ({rpo})");
    assert_eq!(b.eval("return document.querySelector('#timezone').value", vec![]).await?, "Marte/Olimpo");
    assert_eq!(fleet.admin.get_policy(fleet.policy).await?.revision, 1, "nothing was saved");
    b.fill("#timezone", "America/Sao_Paulo").await?;
    b.fill("#rpo_hours", "30").await?;
    b.fill("#keep_daily", "7").await?;
    b.click("form.policy button[type=submit]").await?;
    assert_eq!(b.path().await?, format!("/policies/{}?done=saved", fleet.policy));
    let saved = fleet.admin.get_policy(fleet.policy).await?;
    assert_eq!(saved.revision, 2);
    let schedule = saved.spec.schedule.clone().context("a schedule")?;
    assert_eq!(
        (schedule.cron.as_deref(), schedule.timezone.as_deref()),
        (Some("0 22 * * 1-5"), Some("America/Sao_Paulo"))
    );
    assert_eq!(saved.spec.rpo_seconds, 30 * 3600);
    assert_eq!(saved.spec.retention.as_ref().map(|r| r.keep_daily), Some(7));
    assert_eq!(saved.spec.paths, vec!["/srv/documentos".to_string()], "what the form did not change is kept");
    // Its history names both revisions and what the second changed.
    let history = b.text("#history").await?;
    assert!(
        history.contains("schedule") && history.contains("rpo_seconds") && !history.contains("Marte"),
        "{history}"
    );
    let revisions = b.eval("return document.querySelectorAll('#history tbody tr').length", vec![]).await?;
    assert_eq!(revisions.as_i64(), Some(2));

    // Enrollment: a token for the health department, shown once with its install line.
    b.goto(&fleet.url("/enrollment")).await?;
    assert!(
        b.text("#pending-machines").await?.contains("escola-norte-07"),
        "the machine waiting for approval"
    );
    b.fill("#description", "UBS Centro, sala 2").await?;
    b.fill("#uses", "abc").await?;
    b.click("form[action='/enrollment'] button[type=submit]").await?;
    assert!(
        !b.text("#uses-error").await?.is_empty(),
        "a count that is not a number is refused beside its field"
    );
    b.fill("#uses", "3").await?;
    b.click("form[action='/enrollment'] button[type=submit]").await?;
    let line = b.eval("return document.querySelector('#install-line').value", vec![]).await?;
    let line = line.as_str().context("the install line")?.to_string();
    let token = b.eval("return document.querySelector('#token').value", vec![]).await?;
    let token = token.as_str().context("the token")?.to_string();
    assert!(token.starts_with("cofre1.") && line.contains("/install.sh") && line.contains(&token), "{line}");
    let tokens = fleet.admin.list_enrollment_tokens().await?;
    let made =
        tokens.iter().find(|t| t.description == "UBS Centro, sala 2").context("the token is listed")?;
    assert_eq!(made.uses_left, 3);

    // The CSV export is the API's CSV, byte for byte.
    let cookie = b.cookie("cofre_session").await?.context("session cookie")?;
    b.goto(&fleet.url("/compliance")).await?;
    let href = b.eval("return document.querySelector('#csv').getAttribute('href')", vec![]).await?;
    let href = href.as_str().context("the CSV link")?.to_string();
    let portal_csv = http()?
        .get(fleet.url(&href))
        .header("cookie", format!("cofre_session={cookie}"))
        .send()
        .await?
        .text()
        .await?;
    let api_csv = fleet.admin.compliance_csv(None, None).await?;
    assert_eq!(portal_csv, api_csv);

    // The audit log verifies its chain when asked (it reads every event, so not on every view).
    b.goto(&fleet.url("/audit")).await?;
    assert!(b.has("#audit tbody tr").await?, "the log's events");
    b.click("#chain button[type=submit]").await?;
    let chain = b.eval("return document.querySelector('#chain').className", vec![]).await?;
    assert_eq!(chain.as_str(), Some("ok"), "{}", b.text("#chain").await?);
    b.goto(&fleet.url("/compliance")).await?;

    // Switch language: the same page in English.
    b.click("a[hreflang='en']").await?;
    assert_eq!(b.text("main h1").await?, "Compliance report");
    assert_eq!(b.eval("return document.documentElement.lang", vec![]).await?, "en");

    // Log out: the session ends on the server, so the old cookie opens nothing.
    b.click(".user button").await?;
    assert!(b.path().await?.starts_with("/login"));
    let after =
        http()?.get(fleet.url("/")).header("cookie", format!("cofre_session={cookie}")).send().await?;
    assert_eq!(after.status(), 303, "the ended session's cookie is sent to the login page");
    b.close().await?;
    Ok(())
}
