//! The Dockerfiles of `deploy/docker/`, parsed here (no Docker engine on these machines): multi-stage,
//! pinned bases, a toolchain new enough for the workspace, no `ADD` of a URL, a non-root final
//! stage with a `HEALTHCHECK` that ships only a binary the workspace builds.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use super::{deploy, mutate, parse_version, read, workspace_binaries, workspace_rust_version};
use crate::harness::procs::workspace_bin;

const DOCKERFILES: [&str; 2] = ["docker/controller.Dockerfile", "docker/store.Dockerfile"];

const INSTRUCTIONS: [&str; 18] = [
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

#[derive(Debug)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

struct Stage {
    name: String,
    base: String,
    body: Vec<Instruction>,
}

/// Instructions with continuation lines joined; comments (parser directives too) and blank
/// lines dropped, also inside a continued instruction, as Docker does.
fn dockerfile_instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (body, continued) = match line.strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (line, false),
        };
        match &mut current {
            Some((_, joined)) => {
                joined.push(' ');
                joined.push_str(body);
            }
            None => current = Some((i + 1, body.to_owned())),
        }
        if !continued && let Some((line, joined)) = current.take() {
            let (keyword, args) = joined.split_once(char::is_whitespace).unwrap_or((&joined, ""));
            out.push(Instruction {
                line,
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_owned(),
            });
        }
    }
    out
}

/// `${NAME}` / `$NAME` replaced by the ARG defaults declared before the first FROM.
fn substitute(s: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = s.to_owned();
    for (k, v) in args {
        out = out.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
    }
    out
}

fn instructions<'a>(stage: &'a Stage, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> {
    stage.body.iter().filter(move |i| i.keyword == keyword)
}

fn flag<'a>(args: &'a str, name: &str) -> Option<&'a str> {
    args.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// Everything wrong with a Dockerfile of ours, as sentences (empty: fine).
fn dockerfile_problems(text: &str, binaries: &BTreeSet<String>, min_rust: (u32, u32)) -> Vec<String> {
    let mut problems = Vec::new();
    let mut args = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in dockerfile_instructions(text) {
        let at = ins.line;
        if !INSTRUCTIONS.contains(&ins.keyword.as_str()) {
            problems.push(format!("line {at}: unknown instruction {}", ins.keyword));
        } else if ins.keyword == "FROM" {
            let words: Vec<&str> = ins.args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let (image, name) = match words.as_slice() {
                [image, r#as, name] if r#as.eq_ignore_ascii_case("as") => (*image, (*name).to_owned()),
                [image] => {
                    problems.push(format!("line {at}: FROM {image} has no stage name (AS …)"));
                    (*image, String::new())
                }
                _ => {
                    problems.push(format!("line {at}: cannot read FROM {}", ins.args));
                    continue;
                }
            };
            let base = substitute(image, &args);
            let tag = base.rsplit_once(':').map(|(_, t)| t).filter(|t| !t.contains('/'));
            if tag.is_none_or(|t| t == "latest") {
                problems.push(format!("line {at}: base image {base} is not pinned to a tag"));
            }
            if !name.is_empty() && stages.iter().any(|s| s.name == name) {
                problems.push(format!("line {at}: stage name {name} used twice"));
            }
            stages.push(Stage { name, base, body: Vec::new() });
        } else if let Some(stage) = stages.last_mut() {
            stage.body.push(ins);
        } else if ins.keyword == "ARG" {
            let (k, v) = ins.args.split_once('=').unwrap_or((&ins.args, ""));
            args.insert(k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
        } else {
            problems.push(format!("line {at}: {} before the first FROM", ins.keyword));
        }
    }
    if stages.len() < 2 {
        problems.push(format!("not multi-stage: {} stage(s)", stages.len()));
    }
    for (i, stage) in stages.iter().enumerate() {
        for ins in &stage.body {
            if ins.keyword == "ADD" && (ins.args.contains("http://") || ins.args.contains("https://")) {
                problems.push(format!("line {}: ADD fetches a URL (unverified download)", ins.line));
            }
            if ins.keyword == "COPY"
                && let Some(from) = flag(&ins.args, "--from")
                && !stages[..i].iter().any(|s| s.name == from)
            {
                problems
                    .push(format!("line {}: COPY --from={from}: no earlier stage has that name", ins.line));
            }
        }
    }
    match stages.iter().find_map(|s| s.base.strip_prefix("rust:")) {
        None => problems.push("no stage builds with the Rust toolchain image (rust:…)".into()),
        Some(tag) => match parse_version(tag.split('-').next().unwrap_or_default()) {
            Some(v) if v >= min_rust => {}
            _ => problems.push(format!(
                "rust:{tag} is older than the workspace's rust-version {}.{}",
                min_rust.0, min_rust.1
            )),
        },
    }
    let Some((last, builders)) = stages.split_last() else { return problems };
    if !((last.base.starts_with("debian:") && last.base.contains("-slim"))
        || last.base.contains("/distroless/"))
    {
        problems.push(format!("the final stage runs on {}, not debian-slim or distroless", last.base));
    }
    match instructions(last, "USER").last() {
        None => problems.push("the final stage has no USER: it would run as root".into()),
        Some(u) => {
            let user = u.args.split(':').next().unwrap_or_default();
            if user == "root" || user == "0" {
                problems.push(format!("line {}: the final stage runs as root (USER {})", u.line, u.args));
            }
        }
    }
    let mut copied = Vec::new();
    for ins in instructions(last, "COPY").filter(|i| flag(&i.args, "--from").is_some()) {
        let words: Vec<&str> = ins.args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        let Some((dest, sources)) = words.split_last() else { continue };
        for src in sources {
            let name = src.rsplit('/').next().unwrap_or_default();
            if binaries.contains(name) {
                copied.push((name.to_owned(), (*dest).to_owned()));
            } else {
                problems.push(format!(
                    "line {}: copies {src}, which is not a binary the workspace builds",
                    ins.line
                ));
            }
        }
    }
    if copied.is_empty() {
        problems.push("the final stage copies no binary of the workspace".into());
    }
    for (bin, _) in &copied {
        let built = builders.iter().flat_map(|s| &s.body).any(|i| {
            i.keyword == "RUN"
                && i.args.contains("cargo build")
                && i.args.contains("--release")
                && i.args.contains("--locked")
                && i.args
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| w == ["--bin", bin.as_str()])
        });
        if !built {
            problems.push(format!("no build stage runs `cargo build --release --locked … --bin {bin}`"));
        }
    }
    match instructions(last, "ENTRYPOINT").last().map(|e| serde_json::from_str::<Vec<String>>(&e.args)) {
        Some(Ok(entry)) if copied.iter().any(|(_, dest)| entry.first() == Some(dest)) => {}
        other => problems.push(format!("ENTRYPOINT is not the exec form of a copied binary: {other:?}")),
    }
    if !instructions(last, "HEALTHCHECK").any(|h| h.args.starts_with("--") || h.args.starts_with("CMD")) {
        problems.push("the final stage has no HEALTHCHECK".into());
    }
    problems
}

fn dockerfile_cmd(text: &str) -> Vec<String> {
    let cmd = dockerfile_instructions(text).into_iter().rfind(|i| i.keyword == "CMD").expect("a CMD");
    serde_json::from_str(&cmd.args).expect("CMD in exec form")
}

#[test]
fn packaging_dockerfiles_are_multi_stage_non_root_and_ship_one_workspace_binary() {
    let (binaries, rust) = (workspace_binaries(), workspace_rust_version());
    for rel in DOCKERFILES {
        let path = deploy(rel);
        let text = read(&path);
        let problems = dockerfile_problems(&text, &binaries, rust);
        assert!(problems.is_empty(), "{}:\n  {}", path.display(), problems.join("\n  "));
        // The build context is the repository root: the Dockerfile's own ignore file keeps the
        // (many GB) target directory and .git out of it.
        let ignore =
            read(&path.with_file_name(format!("{}.dockerignore", path.file_name().unwrap().display())));
        for needed in ["target", ".git"] {
            assert!(ignore.lines().any(|l| l.trim() == needed), "{rel}.dockerignore must exclude {needed}");
        }
        // CMD is a subcommand the copied binary has.
        let bin =
            ["cofre-controller", "cofre-store"].into_iter().find(|b| text.contains(&format!("--bin {b}")));
        let mut cmd = Command::new(workspace_bin(bin.expect("a known binary")));
        let out = cmd.args(dockerfile_cmd(&text)).arg("--help").output().expect("running the binary");
        assert!(
            out.status.success(),
            "{rel}: CMD is not a subcommand: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{rel}: {} instructions, no problems", dockerfile_instructions(&text).len());
    }
}

#[test]
fn packaging_dockerfile_checks_catch_what_they_check() {
    let (binaries, rust) = (workspace_binaries(), workspace_rust_version());
    let text = read(&deploy(DOCKERFILES[0]));
    let final_from = text.find("FROM debian").expect("a debian final stage");
    let broken: [(&str, String, &str); 11] = [
        ("USER removed", mutate(&text, "USER 10001:10001", ""), "no USER"),
        ("USER root", mutate(&text, "USER 10001:10001", "USER root"), "runs as root"),
        ("USER 0:0", mutate(&text, "USER 10001:10001", "USER 0:0"), "runs as root"),
        (
            "ADD of a URL",
            mutate(&text, "WORKDIR /src", "WORKDIR /src\nADD https://example.org/x /x"),
            "ADD fetches",
        ),
        ("unknown stage", mutate(&text, "--from=build", "--from=builder"), "no earlier stage"),
        ("foreign binary", mutate(&text, "/out/cofre-controller /usr", "/out/evil /usr"), "not a binary"),
        ("unknown instruction", mutate(&text, "EXPOSE", "EXPOZE"), "unknown instruction"),
        ("latest base", mutate(&text, "FROM debian:${DEBIAN_RELEASE}-slim", "FROM debian"), "not pinned"),
        ("old toolchain", mutate(&text, "RUST_VERSION=1.", "RUST_VERSION=0."), "older than"),
        ("single stage", text[final_from..].to_owned(), "not multi-stage"),
        ("no healthcheck", mutate(&text, "HEALTHCHECK --interval", "LABEL x=y"), "no HEALTHCHECK"),
    ];
    for (what, broken_text, expected) in broken {
        let problems = dockerfile_problems(&broken_text, &binaries, rust);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{what}: expected {expected:?} in {problems:?}"
        );
    }
}
