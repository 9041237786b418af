//! Repository life cycle against a real rustic-server and the restic CLI: init, id, errors.

mod common;

use std::time::{Duration, Instant};

use cofre_engine::{EngineError, RetryClass, init_repository, repository_id};
use common::{REPO_PASSWORD, REST_PASSWORD, RestServer, free_port, target};

#[test]
fn init_returns_the_id_restic_sees_and_refuses_a_second_init() {
    let server = RestServer::start(&["repo-a"]);
    let t = server.target("repo-a");

    let started = Instant::now();
    let id = init_repository(&t).expect("init");
    eprintln!("init took {:?}", started.elapsed());
    assert_eq!(id.len(), 64, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");

    let config = server.restic_json("repo-a", &["cat", "config"]);
    assert_eq!(config["id"].as_str(), Some(id.as_str()), "{config}");
    assert_eq!(config["version"].as_u64(), Some(2), "{config}");

    assert_eq!(repository_id(&t).expect("id"), id);

    // One key, written with restic's scrypt cost (32 MiB), not rustic's (128 MiB).
    let out = server.restic("repo-a", &["list", "keys"]);
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key_id = keys[0].clone();
    let key = server.restic_json("repo-a", &["cat", "key", &key_id]);
    assert_eq!(
        (key["N"].as_u64(), key["r"].as_u64(), key["p"].as_u64()),
        (Some(32768), Some(8), Some(1)),
        "{key}"
    );

    match init_repository(&t) {
        Err(EngineError::AlreadyInitialised { restic_id }) => {
            assert_eq!(restic_id.as_deref(), Some(id.as_str()));
        }
        other => panic!("expected AlreadyInitialised, got {other:?}"),
    }
    // Without the right repository password the id cannot be read, but the answer stays.
    let wrong = target(&server.url("repo-a"), REST_PASSWORD, "not the password");
    match init_repository(&wrong) {
        Err(err @ EngineError::AlreadyInitialised { restic_id: None }) => {
            assert_eq!(err.retry_class(), RetryClass::Permanent);
        }
        other => panic!("expected AlreadyInitialised without id, got {other:?}"),
    }
    // restic still opens the repository with the original password: nothing was overwritten.
    server.restic("repo-a", &["check"]);
}

#[test]
fn missing_repository_and_wrong_passwords() {
    let server = RestServer::start(&["repo-b", "repo-empty"]);

    // Nothing initialised at this path yet.
    let err = repository_id(&server.target("repo-empty")).unwrap_err();
    eprintln!("not initialised: {err}");
    assert!(matches!(err, EngineError::NotInitialised), "{err:?}");
    assert_eq!(err.retry_class(), RetryClass::Permanent);

    init_repository(&server.target("repo-b")).expect("init");

    // Wrong restic repository password.
    let err = repository_id(&target(&server.url("repo-b"), REST_PASSWORD, "wrong")).unwrap_err();
    eprintln!("wrong repository password: {err}");
    assert!(matches!(err, EngineError::WrongPassword), "{err:?}");
    assert_eq!(err.retry_class(), RetryClass::Permanent);

    // Wrong REST server password: refused, permanent, never taken for a missing repository.
    let wrong_rest = target(&server.url("repo-b"), "not-the-rest-password", REPO_PASSWORD);
    for err in [repository_id(&wrong_rest).unwrap_err(), init_repository(&wrong_rest).unwrap_err()] {
        eprintln!("wrong REST password: {err}");
        assert!(matches!(err, EngineError::AccessDenied { status: 401 | 403, .. }), "{err:?}");
        assert_eq!(err.retry_class(), RetryClass::Permanent);
        let text = err.to_string();
        assert!(text.contains("refused the credentials"), "{text}");
        assert!(!text.contains("not-the-rest-password") && !text.contains(REPO_PASSWORD), "{text}");
    }

    // A repository path the user is not granted.
    let err = repository_id(&server.target("someone-else")).unwrap_err();
    eprintln!("repository not granted: {err}");
    assert!(matches!(err, EngineError::AccessDenied { .. }), "{err:?}");
}

#[test]
fn dead_server_is_a_temporary_backend_error_within_seconds() {
    let port = free_port();
    let t = target(&format!("http://127.0.0.1:{port}/repo"), REST_PASSWORD, REPO_PASSWORD);
    for call in [repository_id as fn(&_) -> _, init_repository] {
        let started = Instant::now();
        let err = call(&t).unwrap_err();
        let took = started.elapsed();
        eprintln!("dead server answered in {took:?}: {err}");
        // A bound on hanging or retrying without end, not a speed target.
        assert!(took < Duration::from_secs(60), "took {took:?}");
        assert!(matches!(err, EngineError::Backend { status: None, .. }), "{err:?}");
        assert_eq!(err.retry_class(), RetryClass::Temporary);
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
        assert!(!text.contains("p@ss") && !text.contains(REPO_PASSWORD), "{text}");
    }
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    let t = target("http://198.51.100.7:8000/repo", REST_PASSWORD, REPO_PASSWORD);
    // Refused before any connection: a connection attempt to this unreachable address would
    // end as a backend error, not as invalid input.
    let err = init_repository(&t).unwrap_err();
    assert!(matches!(&err, EngineError::InvalidInput(m) if m.contains("plain http")), "{err:?}");
    assert_eq!(err.retry_class(), RetryClass::Permanent);

    let mut allowed = t;
    allowed.allow_insecure_http = true;
    assert!(cofre_engine::check_repository_url(&allowed.url, true).is_ok());
    assert!(cofre_engine::check_repository_url("https://198.51.100.7:8000/repo", false).is_ok());
}

#[test]
fn debug_output_has_no_secrets() {
    let t = target("https://backup.example.org/m1", REST_PASSWORD, REPO_PASSWORD);
    let text = format!("{t:?}");
    assert!(!text.contains(REST_PASSWORD) && !text.contains(REPO_PASSWORD), "{text}");
}
