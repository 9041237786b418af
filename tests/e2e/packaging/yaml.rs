//! The compose file and the Kubernetes manifests, read with PyYAML (skipped with a note when
//! python3 or PyYAML is missing): start order, the master key as a secret, the owner's URL only
//! where `migrate` runs, probes, security contexts and every referenced Secret key, ConfigMap and
//! port; the controller settings each gives load in the real binary.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{Problems, assert_settings_accepted, controller_stops_at, deploy, on_path, read};
use crate::harness::pg::random_secret;
use crate::harness::procs::workspace_bin;

/// Every document of a YAML file as JSON, through PyYAML; `None` (with a note) without it.
fn yaml_documents(path: &Path) -> Option<Vec<Value>> {
    const SCRIPT: &str =
        "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = match Command::new("python3").arg("-c").arg(SCRIPT).arg(path).output() {
        Ok(out) => out,
        Err(e) => {
            println!("note: python3 not found ({e}): the YAML of {} is not checked", path.display());
            return None;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("No module named 'yaml'") {
        println!("note: PyYAML is not installed: the YAML of {} is not checked", path.display());
        return None;
    }
    assert!(out.status.success(), "{} is not valid YAML:\n{stderr}", path.display());
    Some(serde_json::from_slice(&out.stdout).expect("PyYAML's JSON"))
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    match &container["environment"] {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Value::Array(list) => list
            .iter()
            .filter_map(|e| e.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect(),
        _ => container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (e["name"].as_str().unwrap_or_default().to_owned(), e.clone()))
            .collect(),
    }
}

fn compose_problems(doc: &Value, dir: &Path) -> Vec<String> {
    let mut p = Problems::default();
    let s = &doc["services"];
    p.need(
        s["postgres"]["image"].as_str().is_some_and(|i| i.starts_with("postgres:15")),
        "postgres: image postgres:15",
    );
    p.need(s["migrate"]["command"] == serde_json::json!(["migrate"]), "migrate: command [migrate]");
    p.need(
        s["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy",
        "migrate waits for a healthy postgres",
    );
    p.need(s["controller"]["command"] == serde_json::json!(["serve"]), "controller: command [serve]");
    p.need(
        s["controller"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully",
        "controller starts only after migrate completed successfully",
    );
    p.need(s["store"]["command"] == serde_json::json!(["serve"]), "store: command [serve]");
    for name in ["migrate", "controller"] {
        let env = env_of(&s[name]);
        p.need(
            env.get("COFRE_KEYS__MASTER_KEY_FILE") == Some(&Value::from("/run/secrets/master_key")),
            format!("{name}: master key from the secret file /run/secrets/master_key"),
        );
        p.need(!env.contains_key("COFRE_MASTER_KEY"), format!("{name}: no master key in the environment"));
        p.need(
            s[name]["secrets"].as_array().is_some_and(|l| l.iter().any(|x| x == "master_key")),
            format!("{name}: uses the master_key secret"),
        );
    }
    p.need(doc["secrets"]["master_key"]["file"].is_string(), "secrets.master_key comes from a file");
    let (migrate, controller) = (env_of(&s["migrate"]), env_of(&s["controller"]));
    p.need(migrate.contains_key("COFRE_DATABASE__OWNER_URL"), "migrate connects as the owner");
    p.need(!controller.contains_key("COFRE_DATABASE__OWNER_URL"), "controller never gets the owner's URL");
    p.need(
        controller
            .get("COFRE_DATABASE__URL")
            .and_then(Value::as_str)
            .is_some_and(|u| u.contains("cofre_serve")),
        "controller connects as cofre_serve",
    );
    for (name, svc) in s.as_object().into_iter().flatten() {
        if let Some(build) = svc.get("build") {
            let file = dir
                .join(build["context"].as_str().unwrap_or("."))
                .join(build["dockerfile"].as_str().unwrap_or(""));
            p.need(file.is_file(), format!("{name}: build file {} exists", file.display()));
        }
        for vol in svc["volumes"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if let Some(src) = vol.split(':').next().filter(|v| v.starts_with('.')) {
                p.need(dir.join(src).exists(), format!("{name}: bind mount {src} exists"));
            }
        }
    }
    p.0
}

/// `${NAME}`, `${NAME:?message}` and `${NAME:-default}` as compose interpolates them.
fn interpolate(s: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let (mut out, mut rest) = (String::new(), s);
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').context("unclosed ${")? + start;
        let expr = &rest[start + 2..end];
        let name = expr.split(':').next().unwrap_or_default();
        match (vars.get(name), expr.split_once(":-")) {
            (Some(v), _) => out.push_str(v),
            (None, Some((_, default))) => out.push_str(default),
            (None, None) => bail!("${{{name}}} is used but env.example does not define it"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The compose file's controller environment with `.env` filled from env.example.
fn compose_controller_env(doc: &Value) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for line in read(&deploy("compose/env.example")).lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.to_owned(), if v.is_empty() { random_secret() } else { v.to_owned() });
        }
    }
    env_of(&doc["services"]["controller"])
        .into_iter()
        .map(|(k, v)| Ok((k, interpolate(v.as_str().context("string values")?, &vars)?)))
        .collect()
}

#[test]
fn packaging_compose_runs_postgres_migrate_then_serve_with_the_key_as_a_secret() {
    let path = deploy("compose/compose.yaml");
    let text = read(&path);
    assert!(!text.contains('\t'), "compose.yaml: tabs are not YAML indentation");
    let Some(docs) = yaml_documents(&path) else { return };
    let doc = &docs[0];
    let problems = compose_problems(doc, path.parent().unwrap());
    assert!(problems.is_empty(), "compose.yaml:\n  {}", problems.join("\n  "));
    // Every ${VAR} the file uses is in env.example, and the controller takes the settings.
    let env = compose_controller_env(doc).unwrap();
    assert_settings_accepted("compose controller", &controller_stops_at(&env, None));
    // The store's variables name keys cofre-store has.
    let defaults = String::from_utf8(
        Command::new(workspace_bin("cofre-store")).arg("print-default-config").output().unwrap().stdout,
    )
    .unwrap();
    for key in env_of(&doc["services"]["store"]).keys() {
        let setting = key.strip_prefix("COFRE_STORE_").expect("COFRE_STORE_ variables").to_ascii_lowercase();
        let leaf = setting.rsplit("__").next().unwrap();
        assert!(
            defaults.lines().any(|l| l.starts_with(&format!("{leaf} ="))),
            "cofre-store has no key for {key}"
        );
    }
}

#[test]
fn packaging_compose_checks_catch_what_they_check() {
    let path = deploy("compose/compose.yaml");
    let Some(docs) = yaml_documents(&path) else { return };
    let dir = path.parent().unwrap();
    let broken: [(&str, &str, Value, &str); 4] = [
        (
            "/services/controller/depends_on/migrate/condition",
            "serve before migrate",
            "service_started".into(),
            "after migrate",
        ),
        (
            "/services/controller/environment/COFRE_DATABASE__OWNER_URL",
            "owner URL in serve",
            "x".into(),
            "never gets",
        ),
        ("/services/migrate/command", "no migrate", serde_json::json!(["serve"]), "command [migrate]"),
        ("/services/controller/secrets", "no secret", serde_json::json!([]), "master_key secret"),
    ];
    for (pointer, what, value, expected) in broken {
        let mut doc = docs[0].clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        doc.pointer_mut(parent).unwrap().as_object_mut().unwrap().insert(key.to_owned(), value);
        let problems = compose_problems(&doc, dir);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{what}: expected {expected:?} in {problems:?}"
        );
    }
    // Plain HTTP on all interfaces without saying so is refused by the controller itself.
    let mut env = compose_controller_env(&docs[0]).unwrap();
    env.remove("COFRE_HTTP__ALLOW_PLAIN_HTTP");
    assert!(controller_stops_at(&env, None).contains("invalid configuration"));
}

fn k8s_problems(docs: &[Value]) -> Vec<String> {
    let mut p = Problems::default();
    let kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    let deployments: Vec<&Value> = kind("Deployment").collect();
    let [deployment] = deployments.as_slice() else { return vec!["expected exactly one Deployment".into()] };
    let (spec, pod) = (&deployment["spec"], &deployment["spec"]["template"]["spec"]);
    let labels = &spec["template"]["metadata"]["labels"];
    let matches = |selector: &Value| {
        selector.as_object().is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
    };
    p.need(spec["replicas"] == 2, "the Deployment runs 2 replicas");
    p.need(matches(&spec["selector"]["matchLabels"]), "the selector matches the pod's labels");
    p.need(pod["securityContext"]["runAsNonRoot"] == true, "pods run as non-root (runAsNonRoot)");
    p.need(
        pod["securityContext"]["runAsUser"].as_u64().is_some_and(|u| u > 0),
        "pods set a non-zero runAsUser",
    );
    let inits: Vec<&Value> = pod["initContainers"].as_array().into_iter().flatten().collect();
    let mains: Vec<&Value> = pod["containers"].as_array().into_iter().flatten().collect();
    let volumes: Vec<&Value> = pod["volumes"].as_array().into_iter().flatten().collect();
    let secret_has = |name: &Value, key: &str| {
        kind("Secret").any(|s| {
            &s["metadata"]["name"] == name
                && (s["stringData"].get(key).is_some() || s["data"].get(key).is_some())
        })
    };
    for c in inits.iter().chain(&mains) {
        let (n, sc) = (c["name"].as_str().unwrap_or("?"), &c["securityContext"]);
        p.need(sc["allowPrivilegeEscalation"] == false, format!("{n}: allowPrivilegeEscalation false"));
        p.need(sc["readOnlyRootFilesystem"] == true, format!("{n}: readOnlyRootFilesystem"));
        p.need(
            sc["capabilities"]["drop"].as_array().is_some_and(|d| d.iter().any(|x| x == "ALL")),
            format!("{n}: drops ALL capabilities"),
        );
        for e in env_of(c).values() {
            if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                p.need(
                    secret_has(&r["name"], r["key"].as_str().unwrap_or_default()),
                    format!("{n}: secret {r} exists"),
                );
            }
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            p.need(
                volumes.iter().any(|v| v["name"] == m["name"]),
                format!("{n}: volume {} exists", m["name"]),
            );
        }
    }
    p.need(
        inits.iter().any(|c| {
            c["args"] == serde_json::json!(["migrate"]) && env_of(c).contains_key("COFRE_DATABASE__OWNER_URL")
        }),
        "an init container runs migrate as the owner",
    );
    let Some(main) = mains.first() else { return p.0 };
    let env = env_of(main);
    p.need(main["args"] == serde_json::json!(["serve"]), "the controller container runs serve");
    p.need(!env.contains_key("COFRE_DATABASE__OWNER_URL"), "serve never gets the owner's URL");
    p.need(
        env.get("COFRE_MASTER_KEY")
            .is_some_and(|e| secret_has(&e["valueFrom"]["secretKeyRef"]["name"], "master-key")),
        "the master key comes from the Secret",
    );
    let ports: Vec<&Value> = main["ports"].as_array().into_iter().flatten().collect();
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &main[probe]["httpGet"];
        p.need(get["path"] == path, format!("{probe} asks {path}"));
        p.need(
            ports.iter().any(|port| port["name"] == get["port"] || port["containerPort"] == get["port"]),
            format!("{probe}: port exists"),
        );
    }
    for v in volumes.iter().filter_map(|v| v.get("configMap")) {
        p.need(
            kind("ConfigMap").any(|c| c["metadata"]["name"] == v["name"]),
            format!("ConfigMap {} exists", v["name"]),
        );
    }
    let services: Vec<&Value> = kind("Service").collect();
    p.need(!services.is_empty(), "a Service exposes the controller");
    for svc in services {
        p.need(
            matches(&svc["spec"]["selector"]),
            format!("Service {}: selector matches the pods", svc["metadata"]["name"]),
        );
        for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
            p.need(
                ports.iter().any(|c| c["name"] == port["targetPort"]),
                format!("Service port {}: targetPort exists", port["name"]),
            );
        }
    }
    p.0
}

fn k8s_documents() -> Option<Vec<Value>> {
    let kustomization = deploy("kubernetes/kustomization.yaml");
    let k = yaml_documents(&kustomization)?.remove(0);
    let mut docs = Vec::new();
    for file in k["resources"].as_array().expect("kustomization resources") {
        docs.extend(yaml_documents(&deploy(&format!("kubernetes/{}", file.as_str().unwrap())))?);
    }
    Some(docs)
}

#[test]
fn packaging_kubernetes_runs_two_replicas_migrates_first_and_probes_health() {
    let dir = deploy("kubernetes");
    let Some(docs) = k8s_documents() else { return };
    // kustomization.yaml lists every manifest in the directory.
    let k = read(&dir.join("kustomization.yaml"));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(k.contains(&format!("- {name}")), "kustomization.yaml does not list {name}");
        }
    }
    let problems = k8s_problems(&docs);
    assert!(problems.is_empty(), "deploy/kubernetes:\n  {}", problems.join("\n  "));
    // The ConfigMap's settings plus the Deployment's literal variables load in the controller.
    let tmp = tempfile::tempdir().unwrap();
    let toml =
        docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap()["data"]["controller.toml"].as_str().unwrap();
    let config = tmp.path().join("controller.toml");
    std::fs::write(&config, toml).unwrap();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let main = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env: BTreeMap<String, String> =
        env_of(main).into_iter().filter_map(|(k, v)| Some((k, v["value"].as_str()?.to_owned()))).collect();
    assert_eq!(env.remove("COFRE_CONFIG").as_deref(), Some("/etc/cofre/controller.toml"));
    assert_settings_accepted("kubernetes controller", &controller_stops_at(&env, Some(&config)));
    let http_port =
        main["ports"].as_array().unwrap().iter().find(|p| p["name"] == "http").unwrap()["containerPort"]
            .clone();
    assert!(
        toml.contains(&format!("listen = \"0.0.0.0:{http_port}\"")),
        "http.listen is not the probed port {http_port}"
    );
    match on_path("kubectl") {
        None => println!("note: kubectl not found: `kubectl kustomize` not run"),
        Some(kubectl) => {
            let out = Command::new(kubectl).arg("kustomize").arg(&dir).output().unwrap();
            assert!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
            println!("kubectl kustomize deploy/kubernetes: {} bytes of manifests", out.stdout.len());
        }
    }
}

#[test]
fn packaging_kubernetes_checks_catch_what_they_check() {
    let Some(docs) = k8s_documents() else { return };
    let at = docs.iter().position(|d| d["kind"] == "Deployment").unwrap();
    let pod = "/spec/template/spec";
    let broken: [(String, Value, &str); 6] = [
        ("/spec/replicas".into(), 1.into(), "2 replicas"),
        (format!("{pod}/securityContext/runAsNonRoot"), false.into(), "non-root"),
        (format!("{pod}/containers/0/readinessProbe/httpGet/path"), "/healthz".into(), "asks /readyz"),
        (format!("{pod}/initContainers"), serde_json::json!([]), "runs migrate"),
        (
            format!("{pod}/containers/0/securityContext/allowPrivilegeEscalation"),
            true.into(),
            "allowPrivilegeEscalation",
        ),
        (format!("{pod}/containers/0/env/1/valueFrom/secretKeyRef/name"), "nope".into(), "exists"),
    ];
    for (pointer, value, expected) in broken {
        let mut docs = docs.clone();
        *docs[at].pointer_mut(&pointer).unwrap_or_else(|| panic!("{pointer} is gone")) = value;
        let problems = k8s_problems(&docs);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{pointer}: expected {expected:?} in {problems:?}"
        );
    }
}
