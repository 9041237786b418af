//! Bounded fuzzing of the controller's settings (#13): defaults → TOML file → `COFRE_<SECTION>__…`
//! environment, as `Settings::load` reads them. Whatever the file or the environment holds, the
//! result is valid settings or a clear error naming the problem — never a panic, and never
//! settings that break a rule `validate` states (an https public URL with a host, timeouts
//! within a day, token lifetimes in range, a certificate with its key, plain HTTP only on
//! loopback or when allowed, a real time zone) or that read back differently after being
//! written out again.
//!
//! Replays the checked-in corpus first (`tests/corpus/config/`: files as deployed — the
//! Kubernetes ConfigMap's, one with alert channels — truncated, typed-wrong and misspelt ones,
//! and the environment of `deploy/compose/compose.yaml`), plus `deploy/systemd/etc/cofre/
//! controller.toml` as shipped and the documented defaults, then mutations of them: byte edits,
//! and values swapped for hostile ones on otherwise valid lines. The environment can only be
//! set for a whole process (and `unsafe_code` is forbidden), so each environment case runs this
//! test binary again as a child (`env_child`) with the variables set, ~40 of them.

use std::path::{Path, PathBuf};

use cofre_controller::config::Settings;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The TOML seeds: the checked-in corpus and the shipped configuration itself.
fn toml_seeds() -> Vec<(String, String)> {
    let mut seeds: Vec<(String, String)> = std::fs::read_dir(root().join("tests/corpus/config"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap()))
        .collect();
    seeds.sort();
    let shipped = root().join("../deploy/systemd/etc/cofre/controller.toml");
    seeds
        .push(("deploy/systemd/etc/cofre/controller.toml".into(), std::fs::read_to_string(shipped).unwrap()));
    seeds.push(("defaults".into(), Settings::default_toml()));
    seeds
}

/// `KEY=value` lines of the environment corpus.
fn env_seed() -> Vec<(String, String)> {
    std::fs::read_to_string(root().join("tests/corpus/config/compose.env"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("86401".to_string()),
        Just("4294967296".to_string()),
        Just("9223372036854775807".to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("1e400".to_string()),
        Just("nan".to_string()),
        Just("true".to_string()),
        Just("\"\"".to_string()),
        Just("\"0.0.0.0:8000\"".to_string()),
        Just("\"[::1]:99999\"".to_string()),
        Just("\"../../etc\"".to_string()),
        Just("\"a\\u0000b\"".to_string()),
        Just("[]".to_string()),
        Just("[1, \"a\"]".to_string()),
        Just("{ name = \"x\" }".to_string()),
        Just("\"x:y\"".to_string()),
        ".{0,12}",
    ]
}

/// A seed with some bytes edited, or with the values of some `key = value` lines replaced.
fn toml_input() -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<String> = toml_seeds().into_iter().map(|(_, t)| t).collect();
    let swapped = (
        proptest::sample::select(seeds.clone()),
        proptest::collection::vec((any::<usize>(), hostile_value()), 1..4),
    )
        .prop_map(|(seed, swaps)| {
            let mut lines: Vec<String> = seed.lines().map(String::from).collect();
            let settable: Vec<usize> = (0..lines.len())
                .filter(|&i| {
                    let l = lines[i].trim_start_matches("# ");
                    l.contains(" = ") && !l.starts_with('#')
                })
                .collect();
            for (pick, value) in swaps {
                if settable.is_empty() {
                    break;
                }
                let i = settable[pick % settable.len()];
                let key = lines[i].trim_start_matches("# ").split(" = ").next().unwrap_or("").to_string();
                lines[i] = format!("{key} = {value}");
            }
            lines.join("\n").into_bytes()
        });
    let edited = (
        proptest::sample::select(seeds),
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
    )
        .prop_map(|(seed, edits)| {
            let mut b = seed.into_bytes();
            for (at, byte, how) in edits {
                if b.is_empty() {
                    break;
                }
                let at = at % b.len();
                match how {
                    0 => b[at] = byte,
                    1 => b.truncate(at),
                    _ => b.insert(at, byte),
                }
            }
            b
        });
    prop_oneof![3 => swapped, 2 => edited, 1 => proptest::collection::vec(any::<u8>(), 0..200)]
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config { cases, failure_persistence: None, ..Config::default() },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

/// The rules valid settings keep, and the round trip through TOML.
fn check_valid(s: &Settings) {
    let url = url::Url::parse(&s.grpc.public_url).expect("public_url is a URL");
    assert!(url.scheme() == "https" && url.host_str().is_some(), "{url}");
    let h = &s.http;
    for t in [
        h.header_read_timeout_seconds,
        h.idle_timeout_seconds,
        h.http2_keep_alive_interval_seconds,
        h.http2_keep_alive_timeout_seconds,
    ] {
        assert!((1..=86_400).contains(&t), "timeout {t} accepted");
    }
    assert!((1..=1_000_000).contains(&h.max_connections));
    assert_eq!(h.tls_cert_file.is_some(), h.tls_key_file.is_some(), "a certificate goes with its key");
    if h.tls_cert_file.is_none() && !h.allow_plain_http {
        assert!(h.listen.ip().is_loopback(), "plain HTTP on {}", h.listen);
    }
    assert!(s.certificates.agent_lifetime_seconds >= 60);
    assert!((60..=3600).contains(&s.admin.token_ttl_seconds));
    assert!((s.admin.token_ttl_seconds..=30 * 24 * 3600).contains(&s.admin.session_ttl_seconds));
    assert!(jiff::tz::TimeZone::get(&s.compliance.time_zone).is_ok());
    assert!(s.enrollment.token_uses >= 1);
    // Written out and read again, the same settings (nothing silently dropped or changed;
    // secrets are written as "<redacted>", so both sides compare that way).
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("again.toml");
    std::fs::write(&f, toml::to_string(s).expect("valid settings serialise")).unwrap();
    let again = Settings::load(Some(&f)).expect("written settings load");
    assert_eq!(
        serde_json::to_value(&again).unwrap(),
        serde_json::to_value(s).unwrap(),
        "reads back as itself"
    );
}

fn check_file(dir: &Path, raw: &[u8]) {
    let f = dir.join("controller.toml");
    std::fs::write(&f, raw).unwrap();
    match Settings::load(Some(&f)) {
        Ok(s) => check_valid(&s),
        Err(e) => {
            assert!(e.to_string().starts_with("invalid configuration: ") && e.to_string().len() > 24, "{e}");
        }
    }
}

#[test]
fn config_files_load_as_valid_settings_or_a_clear_error_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in toml_seeds() {
        let f = dir.path().join("controller.toml");
        std::fs::write(&f, &text).unwrap();
        let loaded = Settings::load(Some(&f));
        if name.starts_with("valid") || name.starts_with("deploy") || name == "defaults" {
            check_valid(&loaded.unwrap_or_else(|e| panic!("{name}: {e}")));
        } else {
            assert!(loaded.is_err(), "{name} is refused");
        }
    }
    runner(1_500)
        .run(&toml_input(), |raw| {
            check_file(dir.path(), &raw);
            Ok(())
        })
        .unwrap();
}

const CHILD: &str = "CONTROLLER_CONFIG_FUZZ_CHILD";

/// Run as a child by `environment_variables_…`: loads the settings from this process's
/// environment and prints the outcome.
#[test]
fn env_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    match Settings::load(None) {
        Ok(s) => {
            check_valid(&s);
            println!("\nLOADED {}", serde_json::to_string(&s).unwrap());
        }
        Err(e) => {
            assert!(e.to_string().starts_with("invalid configuration: "), "{e}");
            println!("\nREFUSED {e}");
        }
    }
}

fn run_child(vars: &[(String, String)]) -> String {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "env_child", "--nocapture", "--test-threads", "1"]);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("COFRE_")) {
        cmd.env_remove(k);
    }
    cmd.env(CHILD, "1").envs(vars.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "settings from {vars:?} made the controller panic: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().find(|l| l.starts_with("LOADED ") || l.starts_with("REFUSED "));
    line.unwrap_or_else(|| panic!("no outcome: {stdout}")).to_string()
}

#[test]
fn environment_variables_load_as_valid_settings_or_a_clear_error_never_a_panic() {
    let seed = env_seed();
    let loaded = run_child(&seed);
    assert!(loaded.starts_with("LOADED "), "the compose environment loads: {loaded}");
    assert!(loaded.contains("\"listen\":\"0.0.0.0:8080\""), "and means what it says: {loaded}");
    let keys: Vec<String> = seed
        .iter()
        .map(|(k, _)| k.clone())
        .chain(
            [
                "HTTP__MAX_CONNECTIONS",
                "HTTP__TLS_CERT_FILE",
                "HTTP__IDLE_TIMEOUT_SECONDS",
                "ADMIN__TOKEN_TTL_SECONDS",
                "COMPLIANCE__TIME_ZONE",
                "ALERTS__CHANNELS",
                "CERTIFICATES__AGENT_LIFETIME_SECONDS",
                "HTPP__LISTEN",
                "GRPC__NO_SUCH_KEY",
                "TOKEN",
            ]
            .iter()
            .map(|k| format!("COFRE_{k}")),
        )
        .collect();
    let env_value = hostile_value().prop_map(|v| v.replace('\0', ""));
    let case = proptest::collection::vec((proptest::sample::select(keys), env_value), 1..4);
    runner(40)
        .run(&case, |vars| {
            let mut all = seed.clone();
            all.extend(vars.iter().cloned());
            let outcome = run_child(&all);
            if let Some(listen) = vars.iter().rev().find(|(k, _)| k == "COFRE_HTTP__LISTEN").map(|(_, v)| v)
                && outcome.starts_with("LOADED ")
                && let Ok(addr) = listen.trim_matches('"').parse::<std::net::SocketAddr>()
            {
                assert!(outcome.contains(&format!("\"listen\":\"{addr}\"")), "{listen} read as {outcome}");
            }
            Ok(())
        })
        .unwrap();
}
