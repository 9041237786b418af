//! The agent service over real TLS on 127.0.0.1 against a real PostgreSQL (`DATABASE_URL`):
//! what a hostile or unlucky agent can and cannot do to the controller and to its own spool.

use std::net::SocketAddr;
use std::time::Duration;

use cofre_proto::agent::v1 as pb;
use pb::agent_message::Msg as Send;
use pb::controller_message::Msg as Recv;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};
use uuid::Uuid;

use crate::audit::Actor;
use crate::enrollment::{self, NewToken};
use crate::state::AppState;
use crate::tests::{inv, state};

/// The agent service (as `serve` builds it) on 127.0.0.1, port 0.
async fn serve(st: &AppState) -> SocketAddr {
    serve_with(st, super::Limits::default()).await
}

async fn serve_with(st: &AppState, limits: super::Limits) -> SocketAddr {
    // Two crypto providers are linked (reqwest brings aws-lc-rs): `main` picks ring, so do we.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = super::tls_config(st).unwrap();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(super::service_with(st.clone(), limits))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}

/// A machine's key and certificate, as an agent holds them.
struct Machine {
    id: Uuid,
    key_pem: String,
    cert_pem: String,
}

fn key_and_csr() -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().der().to_vec();
    (key.serialize_pem(), csr)
}

async fn enroll(st: &AppState, requires_approval: bool) -> Machine {
    let token = enrollment::create_token(
        &st.pool,
        &Actor::System,
        &st.ca,
        &st.settings.enrollment,
        NewToken {
            description: String::new(),
            group_id: None,
            uses: Some(1),
            ttl_seconds: None,
            requires_approval,
        },
    )
    .await
    .unwrap();
    let (key_pem, csr) = key_and_csr();
    let lifetime = Duration::from_secs(st.settings.certificates.agent_lifetime_seconds);
    let e = enrollment::enroll(&st.pool, &st.ca, lifetime, &token.token, &csr, inv()).await.unwrap();
    Machine { id: e.machine_id, key_pem, cert_pem: e.certificate_pem }
}

/// One agent session: what it sends, what it receives.
struct Session {
    tx: mpsc::Sender<pb::AgentMessage>,
    rx: tonic::Streaming<pb::ControllerMessage>,
}

/// Opens a session with `cert_pem`/`key_pem` and says Hello.
async fn open(st: &AppState, addr: SocketAddr, cert_pem: &str, key_pem: &str) -> Result<Session, Status> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&st.ca.cert_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let hello = pb::Hello { plan_version: 0, inventory: None, interrupted_job_ids: vec![] };
    tx.send(pb::AgentMessage { msg: Some(Send::Hello(hello)) }).await.unwrap();
    let rx = client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    Ok(Session { tx, rx })
}

impl Session {
    async fn send(&self, msg: Send) {
        // The controller may already have ended the session; what it said comes from `next`.
        let _ = self.tx.send(pb::AgentMessage { msg: Some(msg) }).await;
    }

    /// The next message, or the status the controller ended the session with.
    async fn next(&mut self) -> Result<Recv, Status> {
        let got = tokio::time::timeout(Duration::from_secs(30), self.rx.next()).await;
        match got.expect("the controller answers within 30 s") {
            Some(Ok(m)) => Ok(m.msg.expect("a message")),
            Some(Err(status)) => Err(status),
            None => Err(Status::cancelled("the controller ended the session without a status")),
        }
    }

    /// The next message that is not a plan.
    async fn next_not_plan(&mut self) -> Result<Recv, Status> {
        loop {
            match self.next().await? {
                Recv::Plan(_) => {}
                other => return Ok(other),
            }
        }
    }
}

fn started_event(job: Uuid) -> pb::JobEvent {
    pb::JobEvent {
        event_id: Uuid::now_v7().to_string(),
        job_id: job.to_string(),
        kind: Some(pb::job_event::Kind::Started(pb::JobStarted {
            policy_id: String::new(),
            trigger: pb::TriggerKind::Schedule as i32,
            started_at: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
        })),
    }
}

fn finished_event(job: Uuid, warnings: Vec<String>, log: String) -> pb::JobEvent {
    pb::JobEvent {
        event_id: Uuid::now_v7().to_string(),
        job_id: job.to_string(),
        kind: Some(pb::job_event::Kind::Finished(pb::JobFinished {
            trigger: pb::TriggerKind::Schedule as i32,
            outcome: pb::JobOutcome::SucceededWithWarnings as i32,
            finished_at: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
            warnings,
            log,
            ..Default::default()
        })),
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap()
}

fn retry_after(status: &Status) -> Option<u64> {
    status.metadata().get(super::error::RETRY_AFTER)?.to_str().ok()?.parse().ok()
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn an_oversized_or_unstorable_result_is_stored_clipped_and_acknowledged(pool: PgPool) {
    let st = state(pool).await;
    let addr = serve(&st).await;
    let m = enroll(&st, false).await;
    let mut s = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    // 3,000 warnings of 2 KiB: 6 MiB, over tonic's default 4 MiB message limit, which used
    // to end the session; the agent then sent the same result first on every reconnect.
    let warnings: Vec<String> = (0..3_000).map(|i| format!("{i:05} {}", "w".repeat(2_048))).collect();
    let big = finished_event(Uuid::now_v7(), warnings, "hook output\n".repeat(20_000));
    s.send(Send::JobEvent(big.clone())).await;
    match s.next_not_plan().await {
        Ok(Recv::Ack(a)) => assert_eq!(a.event_ids, vec![big.event_id.clone()]),
        other => panic!("expected the oversized result to be acknowledged, got {other:?}"),
    }
    // A NUL byte (hook output may print one) is refused by PostgreSQL's text type: before, the
    // database error closed the session and the agent redelivered the result forever.
    let nul = finished_event(Uuid::now_v7(), vec!["bad\0name".into()], "out\0put".into());
    s.send(Send::JobEvent(nul.clone())).await;
    match s.next_not_plan().await {
        Ok(Recv::Ack(a)) => assert_eq!(a.event_ids, vec![nul.event_id.clone()]),
        other => panic!("expected the result with a NUL byte to be acknowledged, got {other:?}"),
    }
    // Both were stored, clipped.
    let (n, longest, log): (i32, i32, i32) = sqlx::query_as(
        "select coalesce(array_length(warnings, 1), 0),
                (select coalesce(max(octet_length(w)), 0)::int from unnest(warnings) w), octet_length(log)
         from job_results r join jobs j on j.id = r.job_id where r.event_id = $1",
    )
    .bind(Uuid::parse_str(&big.event_id).unwrap())
    .fetch_one(&st.pool)
    .await
    .unwrap();
    assert_eq!(n, 1_000, "at most 1,000 warnings are stored");
    assert!(longest <= 2_010, "each warning is clipped: {longest} bytes");
    assert!(log <= 64 * 1024 + 8, "the log is clipped: {log} bytes");
    let (w, l): (Vec<String>, String) =
        sqlx::query_as("select warnings, log from job_results where event_id = $1")
            .bind(Uuid::parse_str(&nul.event_id).unwrap())
            .fetch_one(&st.pool)
            .await
            .unwrap();
    assert_eq!((w, l.as_str()), (vec!["badname".to_string()], "output"));
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_machine_awaiting_approval_writes_nothing_and_keeps_its_results(pool: PgPool) {
    let st = state(pool).await;
    let addr = serve(&st).await;
    let m = enroll(&st, true).await;
    let audit_before = count(&st.pool, "select count(*) from audit_events").await;
    let mut s = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    assert!(matches!(s.next().await, Ok(Recv::PendingApproval(_))));
    let job = Uuid::now_v7();
    let ev = finished_event(job, vec![], String::new());
    s.send(Send::JobEvent(ev.clone())).await;
    let refused = s.next().await.expect_err("a pending machine's result is refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(retry_after(&refused).is_some_and(|s| s > 0), "the agent is told when to retry: {refused:?}");
    assert_eq!(count(&st.pool, "select count(*) from jobs").await, 0);
    assert_eq!(count(&st.pool, "select count(*) from job_results").await, 0);
    assert_eq!(count(&st.pool, "select count(*) from audit_events").await, audit_before);

    // Once approved, the same result (still in the agent's spool) is stored and acknowledged.
    crate::machines::approve(&st.pool, &Actor::System, m.id).await.unwrap();
    let mut s = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    s.send(Send::JobEvent(ev.clone())).await;
    match s.next_not_plan().await {
        Ok(Recv::Ack(a)) => assert_eq!(a.event_ids, vec![ev.event_id.clone()]),
        other => panic!("expected an ack, got {other:?}"),
    }
    assert_eq!(count(&st.pool, "select count(*) from job_results").await, 1);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn job_events_beyond_a_machines_limit_are_refused_with_a_retry_delay(pool: PgPool) {
    let st = state(pool).await;
    // A burst of 5, then (in this test) practically nothing.
    let limits = super::Limits { events_burst: 5, events_per_minute: 1, ..super::Limits::default() };
    let addr = serve_with(&st, limits).await;
    let m = enroll(&st, false).await;
    let mut s = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    let mut acked = 0;
    let refused = loop {
        s.send(Send::JobEvent(started_event(Uuid::now_v7()))).await;
        match s.next_not_plan().await {
            Ok(Recv::Ack(_)) => acked += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(status) => break status,
        }
        assert!(acked <= 5, "more events accepted than the burst allows");
    };
    assert_eq!(acked, 5);
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(retry_after(&refused).is_some_and(|s| s >= 60), "{refused:?}");
    // Reconnecting does not reset the machine's budget; other machines have their own.
    let mut s = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    s.send(Send::JobEvent(started_event(Uuid::now_v7()))).await;
    assert_eq!(s.next_not_plan().await.map(|_| ()).unwrap_err().code(), Code::ResourceExhausted);
    let other = enroll(&st, false).await;
    let mut s = open(&st, addr, &other.cert_pem, &other.key_pem).await.unwrap();
    s.send(Send::JobEvent(started_event(Uuid::now_v7()))).await;
    assert!(matches!(s.next_not_plan().await, Ok(Recv::Ack(_))));
    assert_eq!(count(&st.pool, "select count(*) from jobs").await, 6);
}

/// A running backup's progress (#11) is stored on its job and never acknowledged (the agent
/// never spooled it); over the machine's event rate it is dropped and the session goes on.
#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn progress_is_stored_unacknowledged_and_never_ends_the_session(pool: PgPool) {
    let st = state(pool).await;
    let limits = super::Limits { events_burst: 3, events_per_minute: 1, ..super::Limits::default() };
    let addr = serve_with(&st, limits).await;
    let m = enroll(&st, false).await;
    let mut s = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    let job = Uuid::now_v7();
    s.send(Send::JobEvent(started_event(job))).await;
    assert!(matches!(s.next_not_plan().await, Ok(Recv::Ack(_))));
    let progress = |bytes_done| pb::JobEvent {
        event_id: Uuid::now_v7().to_string(),
        job_id: job.to_string(),
        kind: Some(pb::job_event::Kind::Progress(pb::JobProgress { bytes_done, ..Default::default() })),
    };
    // Two samples fit the budget, the rest are over it: none is acknowledged, none ends it.
    for bytes in [100, 200, 300, 400] {
        s.send(Send::JobEvent(progress(bytes))).await;
    }
    // A heartbeat's answer would not show; a started event over the budget ends the session,
    // and only after every progress sample before it was handled.
    s.send(Send::JobEvent(started_event(Uuid::now_v7()))).await;
    let ended = s.next_not_plan().await.map(|r| format!("{r:?}")).expect_err("the result over the budget");
    assert_eq!(ended.code(), Code::ResourceExhausted, "no ack came for progress first: {ended:?}");
    let stored: Option<serde_json::Value> = sqlx::query_scalar("select progress from jobs where id = $1")
        .bind(job)
        .fetch_one(&st.pool)
        .await
        .unwrap();
    assert_eq!(stored.and_then(|p| p["bytes_done"].as_u64()), Some(200), "the samples within the rate");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn renewals_are_limited_per_machine_unless_the_certificate_is_about_to_expire(pool: PgPool) {
    let st = state(pool).await;
    let addr = serve(&st).await;
    let m = enroll(&st, false).await;
    let certificates = || count(&st.pool, "select count(*) from certificates");
    // Right after enrollment: the machine's newest certificate is minutes old.
    let mut s = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    s.send(Send::Renew(pb::RenewCertificate { csr_der: key_and_csr().1 })).await;
    let refused = s.next_not_plan().await.expect_err("a renewal within the hour is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(retry_after(&refused).is_some_and(|s| s > 3_000 && s <= 3_600), "{refused:?}");
    assert_eq!(certificates().await, 1);

    // An hour later it may renew, once.
    sqlx::query("update certificates set issued_at = now() - interval '61 minutes'")
        .execute(&st.pool)
        .await
        .unwrap();
    let mut s = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    s.send(Send::Renew(pb::RenewCertificate { csr_der: key_and_csr().1 })).await;
    assert!(matches!(s.next_not_plan().await, Ok(Recv::CertificateRenewed(_))));
    s.send(Send::Renew(pb::RenewCertificate { csr_der: key_and_csr().1 })).await;
    let refused = s.next_not_plan().await.expect_err("a second renewal is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(certificates().await, 2);

    // A certificate that expires before the limit lifts may renew after a minute (its renewal
    // may have been lost on the way).
    sqlx::query("update certificates set issued_at = now() - interval '2 minutes'")
        .execute(&st.pool)
        .await
        .unwrap();
    sqlx::query("update certificates set not_after = now() + interval '10 minutes' where machine_id = $1")
        .bind(m.id)
        .execute(&st.pool)
        .await
        .unwrap();
    let mut s = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    s.send(Send::Renew(pb::RenewCertificate { csr_der: key_and_csr().1 })).await;
    assert!(matches!(s.next_not_plan().await, Ok(Recv::CertificateRenewed(_))));
    assert_eq!(certificates().await, 3);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_renewed_certificate_in_use_retires_its_predecessor(pool: PgPool) {
    let st = state(pool).await;
    let addr = serve(&st).await;
    let m = enroll(&st, false).await;
    sqlx::query("update certificates set issued_at = now() - interval '2 hours'")
        .execute(&st.pool)
        .await
        .unwrap();
    let mut s = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    let (new_key, csr) = key_and_csr();
    s.send(Send::Renew(pb::RenewCertificate { csr_der: csr })).await;
    let Ok(Recv::CertificateRenewed(renewed)) = s.next_not_plan().await else {
        panic!("the renewal is answered");
    };
    drop(s);
    // Until the new certificate is used, the old one still works (the answer may be lost).
    let mut old = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    assert!(matches!(old.next().await, Ok(Recv::Plan(_))));
    drop(old);
    let mut new = open(&st, addr, &renewed.certificate_pem, &new_key).await.unwrap();
    assert!(matches!(new.next().await, Ok(Recv::Plan(_))));
    // From then on the predecessor is revoked.
    let refused = match open(&st, addr, &m.cert_pem, &m.key_pem).await {
        Err(status) => status,
        Ok(mut s) => s.next().await.expect_err("the old certificate is refused"),
    };
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    let revoked = count(&st.pool, "select count(*) from certificates where revoked_at is not null").await;
    assert_eq!(revoked, 1);
    let audited =
        count(&st.pool, "select count(*) from audit_events where action = 'certificate.supersede'").await;
    assert_eq!(audited, 1);
}

/// The serial and expiry of the certificate a new TLS handshake with `addr` presents.
async fn presented_certificate(st: &AppState, addr: SocketAddr) -> (String, i64) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(st.ca.cert_der.clone())).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    (crate::pki::serial_hex(cert.raw_serial()), cert.validity().not_after.timestamp())
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn the_grpc_server_certificate_is_renewed_in_the_running_process(pool: PgPool) {
    let st = state(pool).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let lifetime = Duration::from_secs(3 * 3600);
    let tls = super::GrpcTls::new(st.ca.clone(), st.settings.tls_names(), lifetime).unwrap();
    // Due at 2/3 of the lifetime (an injected "now", nobody waits hours).
    let start = std::time::SystemTime::now();
    assert!(!tls.renewal_due(start + Duration::from_secs(3600)));
    assert!(tls.renewal_due(start + Duration::from_secs(2 * 3600 + 1)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(super::service(st.clone()))
        .serve_with_incoming(tls.incoming(listener));
    tokio::spawn(server);
    let (first, first_expiry) = presented_certificate(&st, addr).await;
    // Sessions work over it: the machine's identity comes from its verified certificate.
    let m = enroll(&st, false).await;
    let mut session = open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap();
    assert!(matches!(session.next().await, Ok(Recv::Plan(_))));
    // Enrollment works without a client certificate.
    let tls_client = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&st.ca.cert_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls_client)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let refused = pb::agent_service_client::AgentServiceClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: "cofre1.x.y.z".into(),
            csr_der: key_and_csr().1,
            inventory: Some(pb::Inventory { hostname: "h".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect_err("a made-up token is refused");
    assert_ne!(refused.code(), Code::Unavailable, "the call reached the service: {refused:?}");

    tls.renew().unwrap();
    let (second, second_expiry) = presented_certificate(&st, addr).await;
    assert_ne!(first, second, "new handshakes get the renewed certificate");
    assert!(second_expiry >= first_expiry);
    assert!(!tls.renewal_due(std::time::SystemTime::now() + Duration::from_secs(3600)));
    // The session opened before the renewal goes on.
    session.send(Send::JobEvent(started_event(Uuid::now_v7()))).await;
    assert!(matches!(session.next().await, Ok(Recv::Ack(_))));
}

/// Session opens are limited per machine (#13): each costs database queries and a plan, so a
/// machine reconnecting in a tight loop is refused, before any query, with a `retry-after` the
/// agent honours; other machines are not affected.
#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn session_opens_beyond_a_machines_limit_are_refused_with_a_retry_delay(pool: PgPool) {
    let st = state(pool).await;
    let limits = super::Limits { sessions_burst: 3, sessions_per_minute: 1, ..super::Limits::default() };
    let addr = serve_with(&st, limits).await;
    let m = enroll(&st, false).await;
    for i in 0..3 {
        let mut s =
            open(&st, addr, &m.cert_pem, &m.key_pem).await.unwrap_or_else(|e| panic!("open {i}: {e:?}"));
        assert!(matches!(s.next().await, Ok(Recv::Plan(_))), "a session");
    }
    let refused = open(&st, addr, &m.cert_pem, &m.key_pem).await.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(retry_after(&refused).is_some_and(|s| s >= 60), "{refused:?}");
    let other = enroll(&st, false).await;
    assert!(
        open(&st, addr, &other.cert_pem, &other.key_pem).await.is_ok(),
        "other machines have their own budget"
    );
}
