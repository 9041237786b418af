//! The audit log end to end, with the controller as a process: logins and failed logins are
//! recorded with the address the controller saw (a client cannot name its own), the CLI reads
//! and verifies the log, and when the schema owner cuts the log's tail together with the
//! database's checkpoints, the copy in the controller's checkpoint file names what is missing.

use anyhow::{Context, Result};
use cofre_client::AuditFilter;
use reqwest::Method;

use crate::harness::cofre::Controller;
use crate::harness::pg::PgCluster;

fn json(out: &std::process::Output) -> Result<serde_json::Value> {
    anyhow::ensure!(out.status.success(), "cofre failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).context("cofre printed no JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_read_and_verified_and_a_cut_tail_is_named() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cofre-e2e-audit-").tempdir()?;
    let pg = PgCluster::start()?;
    let dir = tmp.path().join("controller");
    let file = dir.join("state/audit-checkpoints.jsonl");
    let ctrl = Controller::start_with(
        &pg,
        &dir,
        "audit",
        &format!("[audit]\ncheckpoint_file = \"{}\"\n", file.display()),
    )?;
    let admin = ctrl.admin().await?;
    let token = admin.token().context("token")?.to_string();

    // A failed login claiming another address through X-Forwarded-For: not a trusted proxy,
    // so the address recorded is the one the controller saw.
    let http = reqwest::Client::new();
    let resp = http
        .request(Method::POST, format!("{}/api/v1/auth/login", ctrl.api_url()))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&serde_json::json!({"username": "admin", "password": "wrong"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    let auth = admin.audit_events(&AuditFilter { action: Some("auth".into()), ..Default::default() }).await?;
    let failed =
        auth.items.iter().find(|e| e.action == "auth.login_failed").context("failed login audited")?;
    assert_eq!(failed.details["address"], "127.0.0.1", "{failed:?}");
    assert_eq!(failed.details["known_user"], true);
    assert!(auth.items.iter().any(|e| e.action == "auth.login" && e.actor.ends_with(":admin")));

    // Some history, signed twice.
    for name in ["obras", "saude"] {
        admin.create_group(name).await?;
    }
    let first = json(&ctrl.cli(&token, &["audit", "checkpoint"])?)?;
    let first_seq = first["checkpoint"]["seq"].as_i64().context("seq")?;
    for name in ["educacao", "fazenda"] {
        admin.create_group(name).await?;
    }
    let second = json(&ctrl.cli(&token, &["audit", "checkpoint"])?)?;
    let second_seq = second["checkpoint"]["seq"].as_i64().context("seq")?;
    assert!(second_seq > first_seq);
    let copied = std::fs::read_to_string(&file)?;
    for seq in [first_seq, second_seq] {
        assert!(copied.contains(&format!("\"seq\":{seq},")), "checkpoint {seq} is in the file:\n{copied}");
    }

    // Filters and pages: one event per page, followed to the end.
    let listed = json(&ctrl.cli(&token, &["audit", "list", "--action", "group", "--limit", "1", "--all"])?)?;
    let names: Vec<&str> =
        listed.as_array().context("array")?.iter().filter_map(|e| e["details"]["name"].as_str()).collect();
    assert_eq!(names, ["fazenda", "educacao", "saude", "obras"]);

    let ok = json(&ctrl.cli(&token, &["audit", "verify"])?)?;
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(ok["checkpoints_checked"].as_u64() >= Some(2), "{ok}");
    assert_eq!(ok["checkpoint_file"], file.display().to_string());

    // An evidence pack through the CLI, checked as an auditor would: the CA's fingerprint is
    // the one the administrator handed out (it is in every enrollment token), then verify.sh.
    let today = chrono::Utc::now().date_naive();
    let pack = tmp.path().join("fleet.tar");
    let (from, to) = ((today - chrono::Duration::days(1)).to_string(), today.to_string());
    json(&ctrl.cli(
        &token,
        &["compliance", "evidence", "--from", &from, "--to", &to, "--file", pack.to_str().context("path")?],
    )?)?;
    let out = std::process::Command::new("tar").arg("xf").arg(&pack).current_dir(tmp.path()).output()?;
    anyhow::ensure!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    let root = tmp.path().join(format!("cofre-evidence-fleet-{from}-{to}"));
    let fp = std::process::Command::new("openssl")
        .args(["x509", "-in", "ca.pem", "-noout", "-fingerprint", "-sha256"])
        .current_dir(&root)
        .output()?;
    let fp = String::from_utf8_lossy(&fp.stdout)
        .split('=')
        .nth(1)
        .unwrap_or_default()
        .trim()
        .replace(':', "")
        .to_lowercase();
    let enrollment = admin.create_enrollment_token(&cofre_client::NewEnrollmentToken::default()).await?;
    assert_eq!(enrollment.token.rsplit('.').next(), Some(fp.as_str()), "the pack's CA is the controller's");
    let out = std::process::Command::new("sh").args(["verify.sh", "ca.pem"]).current_dir(&root).output()?;
    assert!(
        out.status.success(),
        "verify.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let events: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("audit/events.json"))?)?;
    assert!(
        events.as_array().is_some_and(|e| e.iter().any(|e| e["action"] == "auth.login_failed")),
        "{events}"
    );

    // The schema owner removes the last events and the checkpoint that signed them.
    pg.psql(
        &ctrl.db.name,
        &format!("delete from audit_events where seq > {first_seq}; delete from audit_checkpoints where seq > {first_seq};"),
    )?;
    let out = ctrl.cli(&token, &["audit", "verify"])?;
    assert_eq!(
        out.status.code(),
        Some(9),
        "verify fails with its own exit status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("checkpoint {second_seq}")), "{err}");
    let report = admin.audit_verify().await?;
    let problem = report.problem.context("a problem")?;
    assert_eq!((problem.seq, problem.kind.as_str()), (second_seq, "checkpoint"), "{problem:?}");
    Ok(())
}

/// 300 concurrent wrong-password logins against a controller process: limited (429 with
/// Retry-After) while `/healthz` keeps answering; the latencies are printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_limited_while_the_controller_keeps_answering() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cofre-e2e-flood-").tempdir()?;
    let pg = PgCluster::start()?;
    let ctrl = Controller::start(&pg, &tmp.path().join("controller"), "flood")?;
    let http = reqwest::Client::new();
    let login_url = format!("{}/api/v1/auth/login", ctrl.api_url());
    let health_url = format!("{}/healthz", ctrl.api_url());
    let started = std::time::Instant::now();
    let flood = (0..300).map(|_| {
        let (http, url) = (http.clone(), login_url.clone());
        async move {
            let r = http
                .post(&url)
                .json(&serde_json::json!({"username": "admin", "password": "wrong"}))
                .send()
                .await?;
            anyhow::Ok((r.status().as_u16(), r.headers().get("retry-after").is_some()))
        }
    });
    let probe = async {
        let mut worst = std::time::Duration::ZERO;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            let ok = http.get(&health_url).send().await.map(|r| r.status().is_success()).unwrap_or(false);
            assert!(ok, "/healthz answers during the flood");
            worst = worst.max(t.elapsed());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        worst
    };
    let (results, worst) = tokio::join!(futures_all(flood), probe);
    let results = results?;
    let limited = results.iter().filter(|(s, retry)| *s == 429 && *retry).count();
    let refused = results.iter().filter(|(s, _)| *s == 401).count();
    eprintln!(
        "login flood: 300 attempts in {:.2} s: {refused} checked and refused (401), {limited} limited (429); \
         slowest /healthz during the flood: {} ms",
        started.elapsed().as_secs_f64(),
        worst.as_millis()
    );
    assert!(refused <= 5, "{refused} passwords were checked");
    assert_eq!(refused + limited, 300);
    Ok(())
}

async fn futures_all<F, T>(fs: impl Iterator<Item = F>) -> Result<Vec<T>>
where
    F: std::future::Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect::<Vec<_>>();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await??);
    }
    Ok(out)
}
