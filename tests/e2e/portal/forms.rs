//! The fleet's definitions made in the browser: an admin creates a policy (an invalid RPO is
//! refused beside its field first), applies it to a group (a second time is refused beside the
//! choice) and to a machine, removes that again, and the API shows exactly that; defines a
//! repository whose password then appears in no page; registers a store and gets its token once.
//! An auditor is offered none of these forms, and the API refuses his hand-made assignment.

use anyhow::{Context as _, Result};
use cofre_api::users::NewUser;

use super::{Fleet, http};
use crate::harness::browser::Browser;

/// The value of the field `css` selects, as the browser holds it.
async fn value(b: &Browser, css: &str) -> Result<String> {
    let v = b.eval(&format!("return document.querySelector({css:?}).value"), vec![]).await?;
    Ok(v.as_str().with_context(|| format!("{css} has a value"))?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_defines_policies_assignments_repositories_and_stores_in_the_browser() -> Result<()> {
    let fleet = Fleet::start("portalforms").await?;
    let groups = fleet.admin.list_groups().await?;
    let saude = groups.iter().find(|g| g.name == "saude").context("group saude")?.id;
    let central = fleet.admin.list_repositories().await?.first().context("the seeded repository")?.id;
    let b = fleet.admin_browser("pt-BR").await?;

    // A new policy: an RPO of 0 is the API's to refuse, beside its field; nothing is created and
    // what was typed is kept.
    b.goto(&fleet.url("/policies")).await?;
    b.fill("#name", "contabilidade").await?;
    b.select("#repository_id", &central.to_string()).await?;
    b.fill("#paths", "/srv/contabilidade\n/home/contador").await?;
    b.fill("#cron", "0 20 * * 1-5").await?;
    b.fill("#timezone", "America/Sao_Paulo").await?;
    b.fill("#rpo_hours", "0").await?;
    b.click("form[action='/policies'] button[type=submit]").await?;
    let rpo = b.text("#rpo_hours-error").await?;
    assert!(!rpo.is_empty(), "the RPO's error stands beside it");
    let described = b
        .eval("return document.querySelector('#rpo_hours').getAttribute('aria-describedby')", vec![])
        .await?;
    assert!(described.as_str().is_some_and(|d| d.contains("rpo_hours-error")), "{described}");
    assert_eq!(value(&b, "#name").await?, "contabilidade");
    assert_eq!(value(&b, "#repository_id").await?, central.to_string(), "the repository stays chosen");
    assert_eq!(fleet.admin.list_policies().await?.len(), 1, "nothing was created");
    b.fill("#rpo_hours", "26").await?;
    b.fill("#keep_daily", "7").await?;
    b.click("form[action='/policies'] button[type=submit]").await?;
    let policies = fleet.admin.list_policies().await?;
    let made = policies.iter().find(|p| p.spec.name == "contabilidade").context("the policy is created")?;
    assert_eq!(
        b.path().await?,
        format!("/policies/{}?done=created", made.id),
        "Post/Redirect/Get to its page"
    );
    assert_eq!(made.spec.repository_id, central);
    assert_eq!(made.spec.paths, ["/srv/contabilidade", "/home/contador"]);
    assert_eq!(made.spec.rpo_seconds, 26 * 3600);
    assert_eq!(made.spec.retention.as_ref().map(|r| r.keep_daily), Some(7));
    let schedule = made.spec.schedule.clone().context("a schedule")?;
    assert_eq!(
        (schedule.cron.as_deref(), schedule.timezone.as_deref()),
        (Some("0 20 * * 1-5"), Some("America/Sao_Paulo"))
    );

    // Applied to the health department: the API shows the assignment, the page lists it.
    b.select("#target", &format!("group:{saude}")).await?;
    b.click("#assign button[type=submit]").await?;
    assert_eq!(b.path().await?, format!("/policies/{}?done=assigned", made.id));
    assert!(b.text("#assignments tbody").await?.contains("saude"));
    let assigned = fleet.admin.list_assignments(made.id).await?;
    assert_eq!(
        assigned.iter().map(|a| (a.group_id, a.machine_id)).collect::<Vec<_>>(),
        [(Some(saude), None)]
    );
    // The same again is the API's to refuse, beside the choice.
    b.select("#target", &format!("group:{saude}")).await?;
    b.click("#assign button[type=submit]").await?;
    assert!(!b.text("#target-error").await?.is_empty(), "the refusal stands beside the choice");
    assert_eq!(fleet.admin.list_assignments(made.id).await?.len(), 1);
    // Applied to one machine, then removed again.
    b.select("#target", &format!("machine:{}", fleet.saude)).await?;
    b.click("#assign button[type=submit]").await?;
    assert!(b.text("#assignments tbody").await?.contains("ubs-centro-01"));
    assert_eq!(fleet.admin.list_assignments(made.id).await?.len(), 2);
    let machine_row = fleet
        .admin
        .list_assignments(made.id)
        .await?
        .into_iter()
        .find(|a| a.machine_id == Some(fleet.saude))
        .context("the machine's assignment")?;
    b.click(&format!("form[action$='/assignments/{}/remove'] button", machine_row.id)).await?;
    assert_eq!(b.path().await?, format!("/policies/{}?done=unassigned", made.id));
    let left = fleet.admin.list_assignments(made.id).await?;
    assert_eq!(left.iter().map(|a| (a.group_id, a.machine_id)).collect::<Vec<_>>(), [(Some(saude), None)]);

    // A repository: plain http to another machine is refused beside the address, and the
    // password typed is not sent back; then it is defined.
    let secret = "s3nha-do-armazenamento-42";
    b.goto(&fleet.url("/repositories")).await?;
    b.fill("#name", "nuvem").await?;
    b.fill("#url", "http://backup.example:8000/").await?;
    b.fill("#username", "cofre").await?;
    b.fill("#password", secret).await?;
    b.click("form[action='/repositories'] button[type=submit]").await?;
    assert!(!b.text("#url-error").await?.is_empty(), "the address's error stands beside it");
    assert_eq!(value(&b, "#url").await?, "http://backup.example:8000/", "the address is kept");
    assert_eq!(value(&b, "#password").await?, "", "the password is not sent back");
    assert!(!b.source().await?.contains(secret), "the refused form holds no password");
    b.fill("#url", "https://backup.example:8000/").await?;
    b.fill("#password", secret).await?;
    b.click("form[action='/repositories'] button[type=submit]").await?;
    assert_eq!(b.path().await?, "/repositories?done=repository");
    let repo = fleet
        .admin
        .list_repositories()
        .await?
        .into_iter()
        .find(|r| r.name == "nuvem")
        .context("the repository is defined")?;
    assert_eq!(
        (repo.url.as_str(), repo.username.as_deref(), repo.has_password),
        ("https://backup.example:8000", Some("cofre"), true)
    );
    assert!(b.text("#repositories").await?.contains("nuvem"));

    // A store: a name the API refuses, then one it takes; its token is shown once.
    b.goto(&fleet.url("/stores")).await?;
    b.fill("#name", "Loja Um").await?;
    b.fill("#url", "https://backup.example:8443/").await?;
    b.click("form[action='/stores'] button[type=submit]").await?;
    assert!(!b.text("#name-error").await?.is_empty(), "the name's error stands beside it");
    b.fill("#name", "store-1").await?;
    b.click("form[action='/stores'] button[type=submit]").await?;
    let token = value(&b, "#store-token").await?;
    assert!(token.len() > 20, "the store's token is shown: {token}");
    let stores = fleet.admin.list_stores().await?;
    let store = stores.iter().find(|s| s.name == "store-1" && s.status == "pending").context("store-1")?;

    // Revoked from its row, only with the confirmation ticked.
    b.goto(&fleet.url("/stores")).await?;
    let revoke = format!("form[action='/stores/{}/revoke']", store.id);
    b.tick(&format!("{revoke} input[name=confirm]")).await?;
    b.click(&format!("{revoke} button[type=submit]")).await?;
    assert!(b.path().await?.starts_with("/stores?done=store-revoked"), "{}", b.path().await?);
    assert!(!b.text(".notice").await?.is_empty(), "the revocation is confirmed");
    assert_eq!(fleet.admin.get_store(store.id).await?.status, "revoked");
    assert!(!b.has(&revoke).await?, "a revoked store offers no revoke button");

    // The password appears in no page.
    let mut pages = vec![
        "/".to_string(),
        "/machines".into(),
        "/jobs".into(),
        "/maintenance".into(),
        "/compliance".into(),
        "/enrollment".into(),
        "/groups".into(),
        "/policies".into(),
        "/repositories".into(),
        "/stores".into(),
        "/audit".into(),
        format!("/machines/{}", fleet.saude),
    ];
    pages.extend(fleet.admin.list_policies().await?.iter().map(|p| format!("/policies/{}", p.id)));
    for page in &pages {
        b.goto(&fleet.url(page)).await?;
        assert!(!b.source().await?.contains(secret), "{page} shows the repository's password");
    }

    // Deleting a repository from its row: one a policy uses is refused with the API's reason
    // above the list and stays; an unused one goes (confirmation ticked each time).
    b.goto(&fleet.url("/repositories")).await?;
    let delete = |id: uuid::Uuid| format!("form[action='/repositories/{id}/delete']");
    b.tick(&format!("{} input[name=confirm]", delete(central))).await?;
    b.click(&format!("{} button[type=submit]", delete(central))).await?;
    let refused = b.text("#refused").await?;
    assert!(refused.contains("polic"), "the API's reason (policies use it): {refused}");
    assert!(fleet.admin.list_repositories().await?.iter().any(|r| r.id == central), "the used one stays");
    b.goto(&fleet.url("/repositories")).await?;
    b.tick(&format!("{} input[name=confirm]", delete(repo.id))).await?;
    b.click(&format!("{} button[type=submit]", delete(repo.id))).await?;
    assert_eq!(b.path().await?, "/repositories?done=repository-deleted");
    assert!(
        !fleet.admin.list_repositories().await?.iter().any(|r| r.id == repo.id),
        "the unused one is gone"
    );
    assert!(!b.text("#repositories").await?.contains("nuvem"));
    b.close().await?;

    // An auditor is offered none of these forms (a live store is there to revoke); the API
    // refuses his hand-made assignment.
    fleet.admin.create_store("store-2", "https://backup2.example:8443/").await?;
    fleet
        .admin
        .create_user(&NewUser {
            username: "bruno".into(),
            role: "auditor".into(),
            password: Some("auditor-da-camara".into()),
            ..Default::default()
        })
        .await?;
    let auditor = fleet.browser("en", "bruno", "auditor-da-camara").await?;
    for (page, form) in [
        ("/policies".to_string(), "form[action='/policies']".to_string()),
        (format!("/policies/{}", made.id), "#assign".into()),
        (format!("/policies/{}", made.id), "form[action$='/remove']".into()),
        ("/repositories".into(), "form[action='/repositories']".into()),
        ("/repositories".into(), "form[action$='/delete']".into()),
        ("/stores".into(), "form[action='/stores']".into()),
        ("/stores".into(), "form[action$='/revoke']".into()),
    ] {
        auditor.goto(&fleet.url(&page)).await?;
        assert!(auditor.has("main h1").await?, "{page} rendered");
        assert!(!auditor.has(&form).await?, "no {form} for an auditor on {page}");
    }
    auditor.goto(&fleet.url(&format!("/policies/{}", made.id))).await?;
    assert!(auditor.has("#assignments tbody tr").await?, "the auditor reads where the policy applies");
    let cookie = auditor.cookie("cofre_session").await?.context("cookie")?;
    let csrf = auditor.eval("return document.querySelector('.user input[name=csrf]').value", vec![]).await?;
    let csrf = csrf.as_str().context("csrf")?.to_string();
    let forged = http()?
        .post(fleet.url(&format!("/policies/{}/assignments", made.id)))
        .header("cookie", format!("cofre_session={cookie}"))
        .header("origin", fleet.ctrl.api_url())
        .form(&[("target", format!("machine:{}", fleet.pending)), ("csrf", csrf)])
        .send()
        .await?;
    assert_eq!(forged.status(), 403, "the API refuses an auditor's assignment");
    assert_eq!(fleet.admin.list_assignments(made.id).await?.len(), 1);
    auditor.close().await?;
    Ok(())
}
