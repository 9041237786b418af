//! Alerts end to end: a real agent backs up on a one-minute schedule through cofre-store, two
//! controllers run, and the agent is killed with SIGKILL (no error is ever reported). The
//! machine turns non-compliant by its heartbeat allowance, one `machine.silent` alert reaches a
//! webhook (HMAC-signed) exactly once across the two controllers, and the same alert reaches an
//! SMTP server that was down when it was raised, once it comes up.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cofre_api::compliance::Status;
use cofre_client::ScheduleSpec;

use crate::harness::alerts::{SmtpSink, WebhookReceiver};
use crate::harness::procs::{free_port, wait_until_async};
use crate::store::{fixture_configured, protect, write_files};

const SECRET: &str = "webhook-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_reported_once_by_webhook_and_by_mail_through_a_dead_smtp_server() -> Result<()> {
    let hook = WebhookReceiver::start().await?;
    let smtp_port = free_port();
    let toml = format!(
        "[compliance]\nevaluate_seconds = 5\n\
         [alerts]\nretry_initial_seconds = 1\nretry_max_seconds = 3\n\
         [[alerts.channels]]\nname = \"ops-webhook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
         [[alerts.channels]]\nname = \"ops-mail\"\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp_port}\n\
         smtp_security = \"none\"\nfrom = \"cofre@prefeitura.example\"\nto = [\"ti@prefeitura.example\"]\n",
        hook.url
    );
    let f = fixture_configured("alerts", &toml).await?;
    let _replica = f.ctrl.replica(&f.tmp.path().join("replica"))?;
    let mut smtp = SmtpSink::new(&f.tmp.path().join("smtp"), smtp_port); // down for now

    let source = f.tmp.path().join("source");
    write_files(&source, 20, 10_000, 1)?;
    let mut p = protect(&f, &source).await?;
    // Every minute; the machine may be silent one minute. Its backups may be an hour old: only
    // the silence is judged here (with a short RPO, a backup older than the silence could turn
    // "overdue" first, and the first alert would name that instead).
    let policy = f.admin.get_policy(p.policy).await?;
    let mut spec = policy.spec.clone();
    spec.schedule = Some(ScheduleSpec { interval_seconds: Some(60), ..Default::default() });
    spec.rpo_seconds = 3600;
    spec.heartbeat_allowance_seconds = 60;
    f.admin.update_policy(p.policy, &spec, Some(policy.revision)).await?;

    let machine = p.machine;
    let compliant = |want: Status| {
        let admin = f.admin.clone();
        move || {
            let admin = admin.clone();
            async move {
                let r = admin.compliance(None, None).await.map_err(|e| e.to_string())?;
                let m = r.iter().find(|m| m.machine_id == machine).ok_or("machine not in the report")?;
                if m.status == want {
                    Ok(m.clone())
                } else {
                    Err(format!("{:?}: {:?}", m.status, m.findings))
                }
            }
        }
    };
    wait_until_async(
        "the machine is compliant",
        Duration::from_secs(180),
        Duration::from_secs(1),
        compliant(Status::Compliant),
    )
    .await
    .with_context(|| p.agent.log())?;

    // SIGKILL: the agent reports nothing ever again.
    p.agent.kill9()?;
    let killed = Instant::now();
    let out = wait_until_async(
        "the machine turns non-compliant",
        Duration::from_secs(150),
        Duration::from_secs(1),
        compliant(Status::NonCompliant),
    )
    .await?;
    assert!(out.findings.iter().any(|f| f.rule == cofre_api::compliance::Rule::Heartbeat), "{out:#?}");

    let first =
        wait_until_async("a webhook alert", Duration::from_secs(60), Duration::from_millis(200), || async {
            hook.received()
                .into_iter()
                .find(|r| r.alert().is_ok_and(|a| a.machine.as_ref().is_some_and(|m| m.id == machine)))
                .ok_or("none yet")
        })
        .await?;
    let alert = first.alert()?;
    eprintln!(
        "alert {} ({}) reached the webhook {:.1} s after the agent was killed (heartbeat allowance 60 s)",
        alert.id,
        alert.kind,
        first.at.duration_since(killed).as_secs_f64()
    );
    assert_eq!(alert.kind, "machine.silent", "{alert:#?}");
    assert!(first.signed_with(SECRET.as_bytes()), "valid HMAC signature");
    assert!(!first.signed_with(b"another secret"));

    // The SMTP server was down: the mail waits, retried, and arrives once it is up.
    let rec = f.admin.alerts(None, None).await?;
    let pending = rec.iter().find(|r| r.alert.id == alert.id).context("alert listed")?;
    let mail = pending.deliveries.iter().find(|d| d.channel == "ops-mail").context("mail delivery")?;
    assert_eq!(mail.state, "pending", "{mail:?}");
    wait_until_async(
        "a failed mail attempt",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let rec = f.admin.alerts(None, None).await.map_err(|e| e.to_string())?;
            let r = rec.iter().find(|r| r.alert.id == alert.id).ok_or("gone")?;
            let d = r.deliveries.iter().find(|d| d.channel == "ops-mail").ok_or("no mail delivery")?;
            if d.attempts >= 1 && d.last_error.is_some() { Ok(()) } else { Err(format!("{d:?}")) }
        },
    )
    .await?;
    smtp.start()?;
    let id = alert.id.to_string();
    wait_until_async("the mail arrives", Duration::from_secs(60), Duration::from_millis(500), || async {
        smtp.messages().into_iter().find(|m| m.contains(&id)).ok_or("not yet")
    })
    .await?;

    // A few more evaluations on both controllers: still exactly one of each.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let webhook_copies = hook.received().iter().filter(|r| r.alert().is_ok_and(|a| a.id == alert.id)).count();
    let mail_copies = smtp.messages().iter().filter(|m| m.contains(&id)).count();
    assert_eq!((webhook_copies, mail_copies), (1, 1), "each channel got the alert exactly once");
    let silent_alerts = hook
        .received()
        .iter()
        .filter_map(|r| r.alert().ok())
        .filter(|a| a.kind == "machine.silent" && a.machine.as_ref().is_some_and(|m| m.id == machine))
        .count();
    assert_eq!(silent_alerts, 1, "one alert for one change");
    Ok(())
}
