//! Bounded fuzzing of the store's request-path parser (#13): any path a client sends is either
//! refused or names a repository inside the data directory — never `..`, never absolute, never
//! an empty segment, never a restic type or `config` as a repository — and a repository path
//! reads back as itself. Mostly well-formed paths (so the interesting branches are reached),
//! sometimes any bytes.

use cofre_store::layout::{RepoPath, Target, parse_target};
use proptest::prelude::*;

fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => "[A-Za-z0-9_-][A-Za-z0-9._-]{0,12}",
        1 => prop_oneof![Just(".."), Just("."), Just(""), Just("config"), Just("data"), Just("keys"), Just("locks")].prop_map(String::from),
        1 => "[0-9a-f]{64}",
        1 => ".{0,6}",
    ];
    (proptest::collection::vec(segment, 0..12), any::<bool>(), any::<bool>()).prop_map(
        |(segs, lead, trail)| {
            format!("{}{}{}", if lead { "/" } else { "" }, segs.join("/"), if trail { "/" } else { "" })
        },
    )
}

fn safe(repo: &RepoPath) {
    let s = repo.as_str();
    assert!(!s.starts_with('/') && !s.is_empty(), "{s:?}");
    for seg in s.split('/') {
        assert!(!seg.is_empty() && seg != "." && seg != ".." && seg != "config", "{s:?}");
    }
    assert_eq!(RepoPath::parse(s).as_ref(), Ok(repo), "reads back as itself");
}

#[test]
fn any_request_path_is_refused_or_stays_inside_the_data_directory() {
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 5_000, ..ProptestConfig::default() });
    runner
        .run(&prop_oneof![4 => path(), 1 => ".{0,80}"], |raw| {
            if let Ok(target) = parse_target(&raw) {
                match &target {
                    Target::Repo(r) | Target::Config(r) | Target::List(r, _) => safe(r),
                    Target::Object(r, _, name) => {
                        safe(r);
                        assert!(name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()), "{name:?}");
                    }
                }
            }
            if let Ok(repo) = RepoPath::parse(&raw) {
                safe(&repo);
            }
            Ok(())
        })
        .expect("no path escapes");
}
