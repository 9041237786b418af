//! Compliance against a real PostgreSQL with an injected clock: facts written as the controller
//! records them, judged at chosen instants, and the insert-only history they leave.

use chrono::{DateTime, Duration, DurationRound as _, Utc};
use cofre_api::compliance::{Rule, Status};
use cofre_policy::spec::PolicySpec;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::Actor;
use crate::tests::{assigned_policy, initialise_repositories, machine_in_new_group, state, test_repository};

/// A backup of `policy` on `machine` whose result the controller received at `at`.
async fn good_backup(pool: &PgPool, machine: Uuid, policy: Uuid, at: DateTime<Utc>) {
    let job = Uuid::now_v7();
    sqlx::query(
        "insert into jobs (id, machine_id, policy_id, kind, trigger, state, created_at, finished_at)
         values ($1, $2, $3, 'backup', 'schedule', 'succeeded', $4, $4)",
    )
    .bind(job)
    .bind(machine)
    .bind(policy)
    .bind(at)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into job_results (job_id, event_id, outcome, finished_at, received_at) values ($1, $2, 'succeeded', $3, $3)",
    )
    .bind(job)
    .bind(Uuid::now_v7())
    .bind(at)
    .execute(pool)
    .await
    .unwrap();
}

async fn seen(pool: &PgPool, machine: Uuid, at: DateTime<Utc>) {
    sqlx::query("update machines set last_seen_at = $2 where id = $1")
        .bind(machine)
        .bind(at)
        .execute(pool)
        .await
        .unwrap();
}

async fn changes(pool: &PgPool, machine: Uuid) -> Vec<String> {
    sqlx::query_scalar("select status from compliance_changes where machine_id = $1 order by at")
        .bind(machine)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_machine_is_judged_with_reasons_and_its_history_cannot_be_argued_with(pool: PgPool) {
    let st = state(pool.clone()).await;
    let (group, m) = machine_in_new_group(&st, "obras").await;
    let repo = test_repository(&st).await;
    let policy = assigned_policy(&st, PolicySpec::new("servidores", repo, vec!["/srv".into()]), m).await;
    initialise_repositories(&st).await;
    let plan = crate::plans::compute(&pool, &st.master, &st.ca.cert_pem, m).await.unwrap();
    sqlx::query("update machines set plan_version = $2 where id = $1")
        .bind(m)
        .bind(i64::try_from(plan.version).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let t0 = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    seen(&pool, m, t0).await;
    good_backup(&pool, m, policy, t0).await;

    assert!(crate::compliance::record(&st, t0).await.unwrap());
    let now = crate::compliance::current(&st, None, None, t0).await.unwrap();
    assert_eq!((now.len(), now[0].status), (1, Status::Compliant), "{now:#?}");

    // 30 h later (RPO 36 h): at risk, with its reason and the instant it crossed 80%.
    let t30 = t0 + Duration::hours(30);
    seen(&pool, m, t30).await;
    crate::compliance::record(&st, t30).await.unwrap();
    let r = crate::compliance::current(&st, None, None, t30).await.unwrap().remove(0);
    assert_eq!(r.status, Status::AtRisk, "{r:#?}");
    let f = &r.findings[0];
    assert_eq!((f.rule, f.policy_id), (Rule::BackupAge, Some(policy)));
    assert!(f.reason.contains("RPO: 36 h") && f.reason.contains("last good backup at"), "{}", f.reason);
    assert_eq!(f.since, Some(t0 + Duration::minutes(36 * 60 * 80 / 100)));

    // The CSV names the reason; the roll-up counts the group.
    let report = crate::compliance::current(&st, None, None, t30).await.unwrap();
    let csv = crate::compliance::csv(&report);
    assert!(csv.starts_with("machine_id,hostname,group,status"), "{csv}");
    assert!(csv.contains("backup_age,at_risk,servidores,last good backup at"), "{csv}");
    let s = crate::compliance::summary(&st, None, t30).await.unwrap();
    assert_eq!((s.fleet.machines, s.fleet.at_risk, s.fleet.protected_percent), (1, 1, 100.0));
    assert_eq!(s.groups[0].group_name.as_deref(), Some("obras"));

    // Past the RPO: non-compliant; a new backup makes it compliant again.
    let t37 = t0 + Duration::hours(37);
    seen(&pool, m, t37).await;
    crate::compliance::record(&st, t37).await.unwrap();
    let t38 = t0 + Duration::hours(38);
    good_backup(&pool, m, policy, t38).await;
    seen(&pool, m, t38).await;
    crate::compliance::record(&st, t38).await.unwrap();
    crate::compliance::record(&st, t38 + Duration::minutes(1)).await.unwrap(); // nothing changed
    assert_eq!(changes(&pool, m).await, ["compliant", "at_risk", "non_compliant", "compliant"]);
    let now = crate::compliance::current(&st, None, None, t38 + Duration::minutes(2)).await.unwrap();
    assert_eq!(now[0].status_since, Some(t38), "an unchanged evaluation keeps when the status began");
    let alerted: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("select alerted_at from compliance_current where machine_id = $1")
            .bind(m)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(alerted, Some(t38), "the recovery alert's time is kept by later evaluations");

    // How long was it unprotected? The history answers to the second.
    let h = crate::compliance::machine_history(&pool, m, t0, t38).await.unwrap();
    assert_eq!(h.changes.len(), 3, "{h:#?}"); // t0's change is at `from`: it is in the period
    assert_eq!(
        (h.seconds.compliant, h.seconds.at_risk, h.seconds.non_compliant),
        (30 * 3600, 7 * 3600, 3600)
    );
    let later = crate::compliance::machine_history(&pool, m, t0 + Duration::hours(31), t38).await.unwrap();
    assert_eq!(later.status_at_start, Some(Status::AtRisk));

    // Once days are over, one row per machine and day, with the worst status of the day.
    let t_days = t38 + Duration::days(3);
    seen(&pool, m, t_days).await;
    good_backup(&pool, m, policy, t_days).await;
    crate::compliance::record(&st, t_days).await.unwrap();
    let first_day = t0.date_naive();
    let days = crate::compliance::days(&pool, Some(group), first_day, t_days.date_naive()).await.unwrap();
    assert!(days.len() >= 3, "{days:#?}");
    assert!(days.iter().all(|d| d.machines == 1));
    assert!(days.iter().any(|d| d.non_compliant == 1), "the day it was unprotected: {days:#?}");
    let rows: i64 =
        sqlx::query_scalar("select count(*) from compliance_daily").fetch_one(&pool).await.unwrap();
    crate::compliance::record(&st, t_days + Duration::minutes(1)).await.unwrap();
    let again: i64 =
        sqlx::query_scalar("select count(*) from compliance_daily").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, again, "days are written once");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn silent_pending_and_decommissioned_machines(pool: PgPool) {
    let st = state(pool.clone()).await;
    let (_, silent) = machine_in_new_group(&st, "a").await;
    let (_, gone) = machine_in_new_group(&st, "b").await;
    let (_, bare) = machine_in_new_group(&st, "c").await;
    sqlx::query("update machines set status = 'pending' where id = $1")
        .bind(bare)
        .execute(&pool)
        .await
        .unwrap();
    let now = Utc::now();
    let r = crate::compliance::current(&st, None, None, now).await.unwrap();
    let by = |id: Uuid| r.iter().find(|m| m.machine_id == id).unwrap().clone();
    assert_eq!((by(silent).status, by(silent).findings[0].rule), (Status::Unknown, Rule::Reported));
    assert_eq!((by(bare).status, by(bare).findings[0].rule), (Status::Unknown, Rule::Approved));

    // Seen once, no policy: non-compliant, because nothing protects it.
    seen(&pool, silent, now).await;
    let m = crate::compliance::current(&st, None, None, now).await.unwrap();
    let s = m.iter().find(|x| x.machine_id == silent).unwrap();
    assert_eq!((s.status, s.findings[0].rule), (Status::NonCompliant, Rule::PolicyAssigned), "{s:#?}");
    // ...and silent past the default allowance too.
    let later = crate::compliance::current(&st, None, None, now + Duration::hours(25)).await.unwrap();
    let s = later.iter().find(|x| x.machine_id == silent).unwrap();
    assert!(
        s.findings.iter().any(|f| f.rule == Rule::Heartbeat && f.status == Status::NonCompliant),
        "{s:#?}"
    );

    // Decommissioned: certificates revoked, out of the reports, audited.
    let d = crate::machines::decommission(&pool, &Actor::System, gone).await.unwrap();
    assert_eq!(d.status, "decommissioned");
    let live: i64 =
        sqlx::query_scalar("select count(*) from certificates where machine_id = $1 and revoked_at is null")
            .bind(gone)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(live, 0);
    let r = crate::compliance::current(&st, None, None, now).await.unwrap();
    assert!(r.iter().all(|m| m.machine_id != gone));
    let audited: i64 =
        sqlx::query_scalar("select count(*) from audit_events where action = 'machine.decommission'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(audited, 1);
    // Revoking a decommissioned machine changes nothing.
    assert_eq!(crate::machines::revoke(&pool, &Actor::System, gone).await.unwrap().status, "decommissioned");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn two_replicas_recording_at_once_write_each_change_once(pool: PgPool) {
    let st = state(pool.clone()).await;
    for i in 0..5 {
        machine_in_new_group(&st, &format!("g{i}")).await;
    }
    let now = Utc::now();
    let (a, b) = tokio::join!(crate::compliance::record(&st, now), crate::compliance::record(&st, now));
    assert!(a.unwrap() || b.unwrap());
    let n: i64 =
        sqlx::query_scalar("select count(*) from compliance_changes").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 5);
}

/// Runs the pack's verify.sh (openssl only) in `dir` against `ca`; returns (success, output).
fn verify_pack(dir: &std::path::Path, ca: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new("sh").arg("verify.sh").arg(ca).current_dir(dir).output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn an_evidence_pack_verifies_with_openssl_and_one_changed_byte_breaks_it(pool: PgPool) {
    let st = state(pool.clone()).await;
    let (group, m) = machine_in_new_group(&st, "obras").await;
    let (_, other) = machine_in_new_group(&st, "saude").await;
    let repo = test_repository(&st).await;
    let policy = assigned_policy(&st, PolicySpec::new("servidores", repo, vec!["/srv".into()]), m).await;
    let now = Utc::now();
    good_backup(&pool, m, policy, now).await;
    seen(&pool, m, now).await;
    crate::compliance::record(&st, now).await.unwrap();
    crate::audit::checkpoints::make(&pool, &st.audit, "t", std::time::Duration::ZERO).await.unwrap();
    let today = now.date_naive();
    let req = super::evidence::Request {
        group: Some(group),
        from: today - Duration::days(1),
        to: today + Duration::days(1),
        requested_by: "test".into(),
    };
    let pack = super::evidence::build(&st, &req).await.unwrap();
    assert!(pack.name.starts_with("cofre-evidence-obras-"), "{}", pack.name);

    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join(&pack.name);
    std::fs::write(&tar, &pack.tar).unwrap();
    let st_out =
        std::process::Command::new("tar").arg("xf").arg(&tar).current_dir(dir.path()).output().unwrap();
    assert!(st_out.status.success());
    let root = dir.path().join(pack.name.trim_end_matches(".tar"));
    let ca = dir.path().join("trusted-ca.pem");
    std::fs::write(&ca, &st.ca.cert_pem).unwrap();
    let (ok, out) = verify_pack(&root, &ca);
    assert!(ok, "{out}");

    // What it holds: this group's machine, its job, its policy, the audit events about it.
    let read = |p: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(root.join(p)).unwrap()).unwrap()
    };
    let jobs = read("jobs/results.json");
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(read("policies/versions.json")[0]["spec"]["name"], "servidores");
    assert_eq!(read("compliance/changes.json")[0]["machine_id"], m.to_string());
    let events = read("audit/events.json");
    let events = events.as_array().unwrap();
    assert!(events.iter().any(|e| e["target_id"] == m.to_string()), "{events:?}");
    assert!(events.iter().all(|e| e["target_id"] != other.to_string()), "no other group's machine");
    assert!(!read("audit/checkpoints.json").as_array().unwrap().is_empty());

    // One changed byte in a file, in the manifest, or a file added: each fails.
    let changes = root.join("compliance/changes.json");
    let original = std::fs::read(&changes).unwrap();
    let mut flipped = original.clone();
    flipped[10] ^= 1;
    std::fs::write(&changes, &flipped).unwrap();
    let (ok, out) = verify_pack(&root, &ca);
    assert!(!ok && out.contains("compliance/changes.json"), "{out}");
    std::fs::write(&changes, &original).unwrap();

    let manifest = root.join("MANIFEST.sha256");
    let original = std::fs::read(&manifest).unwrap();
    let mut flipped = original.clone();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
    std::fs::write(&manifest, &flipped).unwrap();
    let (ok, out) = verify_pack(&root, &ca);
    assert!(!ok, "a changed manifest must fail the signature: {out}");
    std::fs::write(&manifest, &original).unwrap();

    std::fs::write(root.join("compliance/extra.json"), b"{}").unwrap();
    let (ok, out) = verify_pack(&root, &ca);
    assert!(!ok && out.contains("extra.json"), "{out}");
    std::fs::remove_file(root.join("compliance/extra.json")).unwrap();

    // Another CA does not vouch for the signing certificate.
    let other_ca = crate::pki::generate_ca().unwrap();
    std::fs::write(&ca, other_ca.cert_pem).unwrap();
    let (ok, out) = verify_pack(&root, &ca);
    assert!(!ok, "{out}");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn reports_read_the_recorded_verdicts_and_judge_only_what_is_not_recorded_recently(pool: PgPool) {
    let st = state(pool.clone()).await;
    let (_, m) = machine_in_new_group(&st, "obras").await;
    let repo = test_repository(&st).await;
    let policy = assigned_policy(&st, PolicySpec::new("servidores", repo, vec!["/srv".into()]), m).await;
    initialise_repositories(&st).await;
    let (_, newcomer) = machine_in_new_group(&st, "saude").await;
    let t0 = (Utc::now() + Duration::seconds(1)).duration_trunc(Duration::seconds(1)).unwrap();
    seen(&pool, m, t0).await;
    let registered: DateTime<Utc> =
        sqlx::query_scalar("select coalesce(approved_at, enrolled_at) from machines where id = $1")
            .bind(newcomer)
            .fetch_one(&pool)
            .await
            .unwrap();

    // Never recorded: judged on reading, and two readers agree on when its status began.
    let a = crate::compliance::current(&st, None, None, t0).await.unwrap();
    let b = crate::compliance::current(&st, None, None, t0 + Duration::seconds(1)).await.unwrap();
    let since = |r: &[cofre_api::compliance::MachineCompliance], id| {
        r.iter().find(|x| x.machine_id == id).and_then(|x| x.status_since)
    };
    assert_eq!(since(&a, newcomer), Some(registered));
    assert_eq!(since(&a, newcomer), since(&b, newcomer), "the same instant for every reader");

    crate::compliance::record(&st, t0).await.unwrap();
    let recorded = crate::compliance::current(&st, None, None, t0).await.unwrap();
    assert_eq!(since(&recorded, newcomer), since(&a, newcomer), "recording keeps when it began");
    let status = |r: &[cofre_api::compliance::MachineCompliance]| {
        r.iter().find(|x| x.machine_id == m).map(|x| (x.status, x.last_good_backup_at))
    };
    // Assigned moments ago: within its first RPO, so compliant before any backup.
    assert_eq!(status(&recorded), Some((Status::Compliant, None)), "{recorded:#?}");

    // A backup lands: reports show the recorded verdict until the machine is judged again
    // (the recorder does that within a second of the result; here by hand)...
    good_backup(&pool, m, policy, t0).await;
    let t1 = t0 + Duration::seconds(30);
    let r = crate::compliance::current(&st, None, None, t1).await.unwrap();
    assert_eq!(status(&r), Some((Status::Compliant, None)), "read from compliance_current");
    crate::compliance::record_machines(&st, &[m], t1).await.unwrap();
    let r = crate::compliance::current(&st, None, None, t1).await.unwrap();
    assert_eq!(status(&r), Some((Status::Compliant, Some(t0))));
    let s = crate::compliance::summary(&st, None, t1).await.unwrap();
    assert_eq!(s.evaluated_at, t0, "as of the oldest verdict counted (the newcomer's, at t0)");
    assert_eq!(changes(&pool, m).await, ["compliant"]);

    // ...and when nobody has recorded for longer than two rounds, readers judge it themselves.
    sqlx::query("update machines set status = 'pending' where id = $1").bind(m).execute(&pool).await.unwrap();
    let r = crate::compliance::current(&st, None, None, t1).await.unwrap();
    assert_eq!(status(&r).map(|s| s.0), Some(Status::Compliant), "still the recorded verdict");
    let late =
        t1 + Duration::seconds(i64::try_from(2 * st.settings.compliance.evaluate_seconds + 31).unwrap());
    let r = crate::compliance::current(&st, None, None, late).await.unwrap();
    assert_eq!(status(&r).map(|s| s.0), Some(Status::Unknown), "judged live, not the stale row");
    let s = crate::compliance::summary(&st, None, late).await.unwrap();
    assert_eq!(s.evaluated_at, late);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn the_report_api_selects_orders_and_cuts_pages_and_refuses_what_it_cannot_read(pool: PgPool) {
    use axum::http::StatusCode;
    let st = state(pool.clone()).await;
    let mut ids = Vec::new();
    for (host, group) in [("ubs-centro", "saude"), ("escola-norte", "educacao"), ("ubs-sul", "saude2")] {
        let (_, m) = machine_in_new_group(&st, group).await;
        sqlx::query("update machines set hostname = $2 where id = $1")
            .bind(m)
            .bind(host)
            .execute(&pool)
            .await
            .unwrap();
        ids.push(m);
    }
    let now = Utc::now();
    seen(&pool, ids[1], now).await; // seen, no policy: non-compliant; the others never reported.
    crate::compliance::record(&st, now).await.unwrap();
    let admin = crate::tests::user_token(&st, "a", crate::auth::Role::Admin, None).await;
    let get = |q: &str| {
        let (st, admin) = (st.clone(), admin.clone());
        let path = format!("/api/v1/compliance{q}");
        async move { crate::tests::call_json(&st, "GET", &path, &admin, "").await }
    };
    let hosts = |body: &serde_json::Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["hostname"].as_str().unwrap().to_string())
            .collect()
    };

    let (s, all) = get("").await;
    assert_eq!((s, all["total"].as_u64()), (StatusCode::OK, Some(3)));
    assert_eq!(hosts(&all), ["escola-norte", "ubs-centro", "ubs-sul"], "worst first, then by name");
    assert!(!all["items"][0]["findings"].as_array().unwrap().is_empty(), "recorded findings are read");

    let (_, page) = get("?q=UBS&sort=host&limit=1&offset=1").await;
    assert_eq!((hosts(&page), page["total"].as_u64()), (vec!["ubs-sul".to_string()], Some(2)));
    assert!(!page["items"][0]["findings"].as_array().unwrap().is_empty(), "the page's findings");
    let (_, by_group) = get("?q=saude&sort=group").await;
    assert_eq!(hosts(&by_group), ["ubs-centro", "ubs-sul"], "the group's name matches too");
    let (_, one) = get(&format!("?q={}", ids[2])).await;
    assert_eq!(hosts(&one), ["ubs-sul"], "a whole machine id selects that machine");
    let (_, never) = get("?backup_age=never&status=unknown&sort=seen").await;
    assert_eq!(hosts(&never), ["ubs-centro", "ubs-sul"]);
    let (_, past) = get("?offset=10&limit=5").await;
    assert_eq!((hosts(&past).len(), past["total"].as_u64()), (0, Some(3)), "past the end: empty, total kept");

    for (q, field) in [
        ("?sort=size", "sort"),
        ("?backup_age=7h", "backup_age"),
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?status=fine", "status"),
    ] {
        let (s, body) = get(q).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{q}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{q}: {body}");
    }
    let (s, _) = get("?limit=abc").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}
