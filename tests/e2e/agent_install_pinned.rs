//! The pasted install line pins what it downloads (#14 item 1), run for real with curl and sh:
//! the line is the one the portal's enrollment page shows (`install::install_line`, as `up`
//! prints it), taken from a real controller.
//!
//! - Over HTTPS (a controller serving the REST API with a certificate of the test CA): the line
//!   carries `curl --pinnedpubkey` with the key the controller serves (compared with openssl's
//!   computation from the live handshake). Against a second controller on the same address with
//!   another key — a certificate the same CA issued for the same names, so only the key
//!   differs — curl refuses before anything is installed or enrolled, and the script itself
//!   refuses to download the binary from it. Against the genuine controller it installs and
//!   enrolls.
//! - Over plain HTTP on loopback: a program that has taken the controller's port serves an altered
//!   script; the line does not run it (its SHA-256 is on the line). Then the genuine controller's
//!   line installs and enrolls.
//!
//! `--no-systemd` into a temporary prefix, as `agent_install.rs`; each line runs in `sh` (dash)
//! once and in `bash` once.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::harness::cofre::{ADMIN_PASSWORD, Controller};
use crate::harness::pg::PgCluster;
use crate::harness::pki::{IssuedCert, TestPki};
use crate::harness::procs::{Proc, free_port, workspace_bin};

/// A client for the portal that keeps its own answers (no redirects), trusting `ca_pem` if given.
fn portal_client(ca_pem: Option<&str>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    if let Some(ca) = ca_pem {
        b = b
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?);
    }
    Ok(b.build()?)
}

/// The value of cookie `name` among a response's `Set-Cookie` headers.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Result<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.strip_prefix(&format!("{name}=")).map(|rest| rest.split(';').next().unwrap_or("").to_string())
        })
        .with_context(|| format!("no {name} cookie"))
}

/// The text after `start` up to `end` in `html`.
fn between<'a>(html: &'a str, start: &str, end: &str) -> Result<&'a str> {
    let from = html.find(start).with_context(|| format!("{start:?} is not in the page"))? + start.len();
    let len = html[from..].find(end).with_context(|| format!("{end:?} does not follow {start:?}"))?;
    Ok(&html[from..from + len])
}

fn html_text(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// Logs into the portal at `base` as the admin, creates a one-use enrollment token on its
/// enrollment page and returns the install line the page shows.
async fn portal_line(base: &str, ca_pem: Option<&str>) -> Result<String> {
    let http = portal_client(ca_pem)?;
    let form = http.get(format!("{base}/login")).send().await?;
    let login_token = set_cookie(&form, "cofre_login")?;
    let login = http
        .post(format!("{base}/login"))
        .header("origin", base)
        .header("cookie", format!("cofre_login={login_token}"))
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD), ("next", "/"), ("csrf", &login_token)])
        .send()
        .await?;
    ensure!(login.status().is_redirection(), "portal login: {}", login.status());
    let session = format!("cofre_session={}", set_cookie(&login, "cofre_session")?);
    let page = http.get(format!("{base}/enrollment")).header("cookie", &session).send().await?.text().await?;
    let csrf = between(&page, "name=\"csrf\" value=\"", "\"")?.to_string();
    let created = http
        .post(format!("{base}/enrollment"))
        .header("origin", base)
        .header("cookie", &session)
        .form(&[("description", "pinned line e2e"), ("uses", "1"), ("ttl_hours", "24"), ("csrf", &csrf)])
        .send()
        .await?;
    ensure!(created.status() == 201, "creating a token on the portal: {}", created.status());
    let html = created.text().await?;
    let textarea = between(&html, "id=\"install-line\"", "</textarea>")?;
    let line = html_text(textarea.split_once('>').context("the textarea's text")?.1);
    ensure!(line.contains("/install.sh") && line.contains("--token cofre1."), "not an install line: {line}");
    Ok(line)
}

/// Runs the pasted line with more options appended, as a technician would, in `shell` (`sh`, or
/// `bash`: root's shell on Debian); curl trusts
/// `ca_file` as a machine trusts its organisation's CA (`CURL_CA_BUNDLE`), if given.
async fn paste(shell: &str, line: &str, extra: &[&str], ca_file: Option<&Path>) -> Result<Output> {
    let cmd = format!("{line} {}", extra.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" "));
    let mut sh = Command::new(shell);
    sh.arg("-c").arg(cmd);
    if let Some(ca) = ca_file {
        sh.env("CURL_CA_BUNDLE", ca);
    }
    Ok(tokio::task::spawn_blocking(move || sh.output()).await??)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// openssl's pin of the key a server presents in its handshake, if openssl is installed.
fn openssl_served_pin(port: u16) -> Result<Option<String>> {
    if Command::new("openssl").arg("version").output().is_err() {
        return Ok(None);
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null \
             | openssl x509 -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64"
        ))
        .output()?;
    ensure!(out.status.success(), "openssl: {}", stderr(&out));
    Ok(Some(format!("sha256//{}", String::from_utf8(out.stdout)?.trim())))
}

/// A controller serving the REST API over HTTPS with `cert` on `port`: the same database, master
/// key and settings as `ctrl`, gRPC on `grpc`. Returns once `/readyz` answers over HTTPS.
async fn https_controller(
    ctrl: &Controller,
    dir: &Path,
    cert: &IssuedCert,
    (port, grpc): (u16, u16),
    ca_pem: &str,
) -> Result<Proc> {
    std::fs::create_dir_all(dir)?;
    let config = std::fs::read_to_string(ctrl.config_path())?
        .replace(
            &format!("listen = \"127.0.0.1:{}\"\n", ctrl.http_port),
            &format!(
                "listen = \"127.0.0.1:{port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
                cert.cert_path.display(),
                cert.key_path.display()
            ),
        )
        .replace(&format!("127.0.0.1:{}", ctrl.grpc_port), &format!("127.0.0.1:{grpc}"))
        .replace(&format!("localhost:{}", ctrl.grpc_port), &format!("localhost:{grpc}"));
    ensure!(config.contains("tls_cert_file"), "the harness's config changed shape:\n{config}");
    let path = dir.join("controller.toml");
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(workspace_bin("cofre-controller"));
    cmd.arg("-c").arg(&path).arg("serve").env_remove("COFRE_MASTER_KEY");
    let mut proc = Proc::spawn("https-controller", cmd, dir)?;
    let client = portal_client(Some(ca_pem))?;
    // As long as the harness waits for any controller (a loaded machine starts slowly).
    for _ in 0..600 {
        if !proc.is_running() {
            bail!("the HTTPS controller exited:\n{}", proc.log());
        }
        if client
            .get(format!("https://localhost:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(proc);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the HTTPS controller did not become ready:\n{}", proc.log())
}

fn nothing_installed(prefix: &Path, state: &Path) -> Result<()> {
    ensure!(!prefix.join("bin/cofre-agent").exists(), "a binary was installed");
    let left: Vec<_> =
        std::fs::read_dir(prefix.join("bin")).map(|d| d.flatten().collect()).unwrap_or_default();
    ensure!(left.is_empty(), "downloads were left behind: {left:?}");
    ensure!(!state.join("identity.json").exists(), "it enrolled");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_line_pins_the_served_key_and_refuses_another() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cofre-e2e-pinned-").tempdir()?;
    let pki = TestPki::new()?;
    // Same CA, same names, another key: only a pin tells it from the genuine one.
    let impostor_cert = pki.ca.issue_localhost_server()?;
    let ca = pki.ca.cert_pem().to_string();
    let pg = PgCluster::start()?;
    let ctrl = Controller::start(&pg, &tmp.path().join("controller"), "agent_install_pinned")?;
    let admin = ctrl.admin().await?;
    let (port, grpc) = (free_port(), free_port());
    let base = format!("https://localhost:{port}");
    let mut genuine =
        https_controller(&ctrl, &tmp.path().join("genuine"), &pki.server, (port, grpc), &ca).await?;

    // The line the portal shows over HTTPS pins the key this controller serves, and the script.
    let line = portal_line(&base, Some(&ca)).await?;
    let pin = between(&line, "--pinnedpubkey ", " ")?.to_string();
    ensure!(pin.starts_with("sha256//") && pin.len() == 52, "{line}");
    match openssl_served_pin(port)? {
        Some(served) => assert_eq!(pin, served, "the line pins another key than the one served"),
        None => println!("openssl is not installed: the served key's pin was not recomputed"),
    }
    assert!(line.contains(&format!("--pin {pin} ")), "the script is not given the pin: {line}");
    let script = portal_client(Some(&ca))?.get(format!("{base}/install.sh")).send().await?.bytes().await?;
    assert!(
        line.contains(&format!("= {} ]", sha256_hex(&script))),
        "the script's SHA-256 is not on the line"
    );
    let agent_sha = sha256_hex(&std::fs::read(workspace_bin("cofre-agent"))?);
    assert!(
        line.contains(&format!("--api {base} --pin ")) && line.contains(&format!("--sha256 {agent_sha}"))
    );
    println!("install line over HTTPS with a pin ({} characters):\n{line}", line.len());

    // Another controller on the same address, with a valid certificate for it but another key.
    genuine.terminate()?;
    let mut impostor =
        https_controller(&ctrl, &tmp.path().join("impostor"), &impostor_cert, (port, free_port()), &ca)
            .await?;
    // This machine trusts the CA (as machines trust their organisation's): without the pin,
    // curl takes the impostor's script.
    let trusted = Some(pki.ca.cert_path());
    let unpinned = Command::new("curl")
        .args(["-fsS", "--proto", "=https", &format!("{base}/install.sh")])
        .env("CURL_CA_BUNDLE", pki.ca.cert_path())
        .output()?;
    assert!(unpinned.status.success(), "the impostor does not serve: {}", stderr(&unpinned));
    let (prefix, state) = (tmp.path().join("prefix"), tmp.path().join("state"));
    let (prefix_s, state_s) = (prefix.display().to_string(), state.display().to_string());
    let opts = ["--prefix", &prefix_s, "--state-dir", &state_s, "--no-systemd"];
    let refused = paste("sh", &line, &opts, trusted).await?;
    assert!(!refused.status.success(), "the line ran against another key: {}", stderr(&refused));
    assert!(stderr(&refused).contains("public key does not match pinned public key"), "{}", stderr(&refused));
    assert!(!stderr(&refused).contains("cofre-install:"), "the script ran: {}", stderr(&refused));
    nothing_installed(&prefix, &state)?;
    ensure!(!prefix.exists(), "the prefix was created");
    // The script pins its own download too: given the genuine pin, it refuses the impostor's binary.
    let script_path = tmp.path().join("install.sh");
    std::fs::write(&script_path, &script)?;
    let args = ["--api", &base, "--pin", &pin, "--controller", "https://localhost:1", "--token", "cofre1.x"];
    let out = Command::new("sh")
        .arg(&script_path)
        .args(args)
        .args(["--sha256", &agent_sha])
        .args(opts)
        .env("CURL_CA_BUNDLE", pki.ca.cert_path())
        .output()?;
    assert!(!out.status.success(), "the script downloaded from another key: {}", stderr(&out));
    let why = stderr(&out);
    assert!(
        why.contains("public key does not match pinned public key") && why.contains("pinned key"),
        "{why}"
    );
    nothing_installed(&prefix, &state)?;
    assert!(admin.list_machines().await?.is_empty(), "a machine enrolled");
    impostor.terminate()?;

    // The genuine controller again: the same line installs and enrolls.
    let _genuine =
        https_controller(&ctrl, &tmp.path().join("genuine"), &pki.server, (port, grpc), &ca).await?;
    let started = std::time::Instant::now();
    let ok = paste("bash", &line, &opts, trusted).await?;
    assert!(ok.status.success(), "the line failed against the genuine controller: {}", stderr(&ok));
    println!("pinned install and enrollment took {} ms", started.elapsed().as_millis());
    assert_eq!(sha256_hex(&std::fs::read(prefix.join("bin/cofre-agent"))?), agent_sha);
    let machines = admin.list_machines().await?;
    assert_eq!(machines.len(), 1, "one machine enrolled");
    let status =
        Command::new(prefix.join("bin/cofre-agent")).arg("--state-dir").arg(&state).arg("status").output()?;
    assert!(String::from_utf8_lossy(&status.stdout).contains(&machines[0].id.to_string()), "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_line_runs_no_script_but_the_one_it_pins() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cofre-e2e-pinned-script-").tempdir()?;
    let pg = PgCluster::start()?;
    let mut ctrl = Controller::start(&pg, &tmp.path().join("controller"), "agent_install_script_pin")?;
    let admin = ctrl.admin().await?;
    let api = ctrl.api_url();
    let line = portal_line(&api, None).await?;
    assert!(!line.contains("--pinnedpubkey") && !line.contains("--pin "), "a pin over plain HTTP: {line}");
    assert!(line.starts_with(&format!("s=$(curl -fsS --proto '=http' {api}/install.sh) && ")), "{line}");
    println!("install line over plain HTTP: {} characters", line.len());

    // Something else has taken the controller's port (it was down) and serves an altered script.
    let genuine = reqwest::get(format!("{api}/install.sh")).await?.text().await?;
    let marker = tmp.path().join("the-altered-script-ran");
    let altered = genuine.replacen("set -eu\n", &format!("set -eu\ntouch '{}'\n", marker.display()), 1);
    assert_ne!(altered, genuine, "the script has no `set -eu` line to alter");
    ctrl.stop()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", ctrl.http_port)).await?;
    let app = axum::Router::new().route(
        "/install.sh",
        axum::routing::get(move || {
            let body = altered.clone();
            async move { body }
        }),
    );
    let squatter = tokio::spawn(async move { axum::serve(listener, app).await });
    let (prefix, state) = (tmp.path().join("prefix"), tmp.path().join("state"));
    let (prefix_s, state_s) = (prefix.display().to_string(), state.display().to_string());
    let opts = ["--prefix", &prefix_s, "--state-dir", &state_s, "--no-systemd"];
    let refused = paste("bash", &line, &opts, None).await?;
    assert!(!refused.status.success(), "the altered script was accepted: {}", stderr(&refused));
    assert!(
        stderr(&refused).contains("install.sh is not the script this line pins: not run"),
        "{}",
        stderr(&refused)
    );
    assert!(!marker.exists(), "the altered script ran");
    nothing_installed(&prefix, &state)?;
    squatter.abort();
    let _ = squatter.await;

    // The genuine controller back on its port: the same line installs and enrolls.
    ctrl.restart()?;
    let ok = paste("sh", &line, &opts, None).await?;
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(prefix.join("bin/cofre-agent").exists() && state.join("identity.json").exists());
    assert_eq!(admin.list_machines().await?.len(), 1);
    Ok(())
}
