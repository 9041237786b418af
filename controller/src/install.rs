//! The one-line agent install (#14 item 1): the install script and the agent binary that sits
//! beside the running controller binary, served publicly by the REST API, and the line people paste.
//!
//! Only the platform the controller itself was built for is served (the agent beside it is the
//! same build); every other platform answers 404 naming the one available.
//!
//! The line pins everything it downloads (docs/install.md, "What the line protects"): the
//! script's SHA-256 is checked before `sh` sees it, the binary's by the script before it is
//! installed, and when this controller serves the REST API over HTTPS itself, curl pins its key
//! (`--pinnedpubkey sha256//…`, [`spki_pin`]) for the script and the script for the binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use axum::extract::Path as UrlPath;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::error::Error;

/// The script, with the agent's systemd unit (the one in `deploy/systemd`) in place of
/// `@COFRE_AGENT_UNIT@`, so there is one copy of the unit.
const SCRIPT: &str = include_str!("../../deploy/install/install.sh");
const UNIT: &str = include_str!("../../deploy/systemd/cofre-agent.service");

/// The file name the agent for this controller's platform is served as, e.g.
/// `cofre-agent-linux-x86_64`.
pub fn agent_file_name() -> String {
    format!("cofre-agent-{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// The install script as served. It ends with exactly one newline: the line reads it with
/// `$(curl …)`, which drops trailing newlines, and gives it back one with `printf '%s\n'`, so
/// the bytes hashed and run are the bytes served.
pub fn script() -> String {
    let s = SCRIPT.replace("@COFRE_AGENT_UNIT@", UNIT.trim_end());
    format!("{}\n", s.trim_end_matches('\n'))
}

/// The SHA-256 (lower-case hex) of [`script`], as the line checks it.
pub fn script_sha256() -> String {
    hex::encode(Sha256::digest(script().as_bytes()))
}

/// curl's pin of a certificate's key: `sha256//` and the base64 SHA-256 of its DER
/// SubjectPublicKeyInfo (what `openssl x509 -pubkey | openssl pkey -pubin -outform der |
/// openssl dgst -sha256 -binary | base64` prints).
pub fn spki_pin(cert_der: &[u8]) -> anyhow::Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!("sha256//{}", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki))))
}

/// The pins of the certificates this process serves the REST API with, by certificate file.
/// `serve` records the chain it loaded, so lines pin the key actually served even after the file
/// has been replaced on disk (a renewal takes effect at the next start; so do its pins).
static SERVED_PINS: Mutex<BTreeMap<PathBuf, String>> = Mutex::new(BTreeMap::new());

/// Records the pin of the certificate `serve` loaded from `cert_file`.
pub fn record_served_pin(cert_file: &Path, pin: String) {
    SERVED_PINS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(cert_file.to_path_buf(), pin);
}

/// The pin of the REST API's key when this controller serves HTTPS itself (`http.tls_cert_file`):
/// the one `serve` recorded, else (outside `serve`) computed from the file. `None` for plain HTTP
/// (loopback, or behind a TLS proxy whose key the controller does not know).
pub fn api_pin(settings: &Settings) -> anyhow::Result<Option<String>> {
    let Some(cert_file) = &settings.http.tls_cert_file else {
        return Ok(None);
    };
    if let Some(pin) = SERVED_PINS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(cert_file) {
        return Ok(Some(pin.clone()));
    }
    let der = rustls_pki_types::pem::PemObject::pem_file_iter(cert_file)
        .with_context(|| format!("cannot read {} (http.tls_cert_file)", cert_file.display()))?
        .next()
        .with_context(|| format!("{} holds no certificate", cert_file.display()))?
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
        .with_context(|| format!("{} is not a PEM certificate chain", cert_file.display()))?;
    Ok(Some(spki_pin(&der)?))
}

/// The whole install, as one line for a POSIX shell (sh, bash, dash, zsh): what `up` prints and
/// the portal shows. `api_url` is the REST API as the machine reaches it; when this controller
/// serves it over HTTPS (`http.tls_cert_file`) the URL is `https://` (the portal may only see
/// `http://` without a proxy's `X-Forwarded-Proto`) and its key is pinned.
pub fn install_line(api_url: &str, settings: &Settings, token: &str, sha256: &str) -> anyhow::Result<String> {
    let pin = api_pin(settings)?;
    let api = api_url.trim_end_matches('/');
    let api = match (&pin, api.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => api.to_string(),
    };
    let pin = pin.filter(|_| api.starts_with("https://"));
    Ok(format_line(&api, pin.as_deref(), &script_sha256(), &settings.grpc.public_url, token, sha256))
}

/// The line from its parts: the script is read into a variable (no temporary file), its SHA-256
/// compared with the one on the line and only then run, with the script's options last so more
/// can be appended (`--prefix`, `--no-systemd`, …). With a pin, curl checks the key instead of
/// the certificate chain (`-k`: a private CA need not be trusted by the machine; curl still
/// aborts before sending anything when the key differs).
fn format_line(
    api: &str,
    pin: Option<&str>,
    script_sha256: &str,
    controller_url: &str,
    token: &str,
    sha256: &str,
) -> String {
    let (curl, pin_arg) = match pin {
        Some(p) => {
            let p = sh_quote(p);
            (format!("curl -fsSk --proto '=https' --pinnedpubkey {p}"), format!(" --pin {p}"))
        }
        None if api.starts_with("http://") => ("curl -fsS --proto '=http'".to_string(), String::new()),
        None => ("curl -fsS --proto '=https'".to_string(), String::new()),
    };
    format!(
        "s=$({curl} {}) && {{ [ \"$(printf '%s\\n' \"$s\" | sha256sum | cut -c1-64)\" = {script_sha256} ] || {{ \
         echo 'cofre: install.sh is not the script this line pins: not run' >&2; false; }}; }} && printf '%s\\n' \
         \"$s\" | sh -s -- --api {}{pin_arg} --controller {} --token {} --sha256 {}",
        sh_quote(&format!("{api}/install.sh")),
        sh_quote(api),
        sh_quote(controller_url),
        sh_quote(token),
        sh_quote(sha256)
    )
}

/// Quotes a word for sh only when it needs it (URLs, tokens, hashes and pins usually do not).
fn sh_quote(s: &str) -> String {
    // A leading `=` is special to zsh (`=cmd` is the command's path).
    let plain = !s.is_empty()
        && !s.starts_with('=')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/=@%+,".contains(&b));
    if plain { s.to_string() } else { format!("'{}'", s.replace('\'', "'\\''")) }
}

/// The agent binary beside the running controller binary.
fn agent_path() -> Result<std::path::PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::Internal(e.into()))?;
    let dir =
        exe.parent().ok_or_else(|| Error::Internal(anyhow::anyhow!("{} has no parent", exe.display())))?;
    Ok(dir.join("cofre-agent"))
}

/// The agent binary, or `None` when this controller has none beside it.
async fn agent_binary() -> Result<Option<Vec<u8>>, Error> {
    match tokio::fs::read(agent_path()?).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Internal(anyhow::Error::new(e).context("reading the agent binary"))),
    }
}

/// The SHA-256 of the served agent binary (lower-case hex), when there is one.
pub async fn agent_sha256() -> Result<Option<String>, Error> {
    Ok(agent_binary().await?.map(|b| hex::encode(Sha256::digest(&b))))
}

/// `GET /install.sh`.
pub async fn serve_script() -> Response {
    ([(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")], script()).into_response()
}

/// `GET /downloads/{file}`: the agent binary or its `.sha256` (sha256sum's format).
pub async fn serve_download(UrlPath(file): UrlPath<String>) -> Response {
    let name = agent_file_name();
    let sum = format!("{name}.sha256");
    if file != name && file != sum {
        return not_found(&format!(
            "no such download: {file}. This controller serves the agent for one platform only, as {name} \
             (and {sum}); other platforms are not available yet"
        ));
    }
    let binary = match agent_binary().await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return not_found(&format!(
                "{name} is not available: this controller has no cofre-agent binary beside its own \
                 (install it there to serve it)"
            ));
        }
        Err(e) => return e.into_response(),
    };
    if file == sum {
        let line = format!("{}  {name}\n", hex::encode(Sha256::digest(&binary)));
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], line).into_response();
    }
    ([(header::CONTENT_TYPE, "application/octet-stream")], binary).into_response()
}

/// A 404 problem+json whose detail is said as is (not "… not found").
fn not_found(detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": detail,
    });
    let mut resp = (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    const SCRIPT_HASH: &str = "5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c";

    fn settings_with_cert(cert_file: Option<PathBuf>) -> Settings {
        let mut s = Settings::default();
        s.http.tls_cert_file = cert_file.clone();
        s.http.tls_key_file = cert_file;
        s.grpc.public_url = "https://cofre.example:7443".into();
        s
    }

    /// openssl's pin of a PEM certificate, when openssl is installed.
    fn openssl_pin(pem: &str) -> Option<String> {
        Command::new("openssl").arg("version").output().ok()?;
        let mut sh = Command::new("sh")
            .args([
                "-c",
                "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary \
                 | base64",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        std::io::Write::write_all(&mut sh.stdin.take()?, pem.as_bytes()).ok()?;
        let out = sh.wait_with_output().ok()?;
        assert!(out.status.success(), "openssl failed on {pem}");
        Some(format!("sha256//{}", String::from_utf8(out.stdout).ok()?.trim()))
    }

    #[test]
    fn the_pin_is_the_sha256_of_the_certificates_key_as_openssl_computes_it() {
        let mut checked_with_openssl = 0;
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["cofre.example".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let pin = spki_pin(cert.der()).unwrap();
            // The DER SubjectPublicKeyInfo rcgen encodes, hashed on its own.
            let b64 = base64::engine::general_purpose::STANDARD
                .encode(Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)));
            assert_eq!(pin, format!("sha256//{b64}"));
            assert_eq!(pin.len(), "sha256//".len() + 44);
            if let Some(theirs) = openssl_pin(&cert.pem()) {
                assert_eq!(pin, theirs, "{alg:?}");
                checked_with_openssl += 1;
            }
        }
        println!("pins compared with openssl: {checked_with_openssl} of 3 (0 = openssl not installed)");
        assert!(spki_pin(b"not a certificate").unwrap_err().to_string().contains("not an X.509 certificate"));
    }

    #[test]
    fn the_pin_is_the_served_certificates_even_after_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api.pem");
        let first = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&file, first.cert.pem()).unwrap();
        let settings = settings_with_cert(Some(file.clone()));
        let from_file = api_pin(&settings).unwrap().unwrap();
        assert_eq!(from_file, spki_pin(first.cert.der()).unwrap());
        // serve records what it loaded; a renewal written to the file afterwards is not served yet.
        let (_, served) = crate::tls_listener::server_config_and_pin(&file, &{
            let k = dir.path().join("k.pem");
            std::fs::write(&k, first.signing_key.serialize_pem()).unwrap();
            k
        })
        .unwrap();
        assert_eq!(served, from_file);
        record_served_pin(&file, served.clone());
        let renewed = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&file, renewed.cert.pem()).unwrap();
        assert_eq!(api_pin(&settings).unwrap(), Some(served));
        assert_eq!(api_pin(&settings_with_cert(None)).unwrap(), None, "plain HTTP has no pin");
        let missing = settings_with_cert(Some(dir.path().join("missing.pem")));
        assert!(api_pin(&missing).unwrap_err().to_string().contains("http.tls_cert_file"));
    }

    #[test]
    fn the_line_pins_the_key_the_script_and_the_binary() {
        let pin = "sha256//tpmGU49syyfWeC6yuTO17/l1ivwg7seHVAxJ0+h1I8o=";
        let line = format_line(
            "https://cofre.example:8443",
            Some(pin),
            SCRIPT_HASH,
            "https://cofre.example:7443",
            "cofre1.a.b.c",
            "ab12",
        );
        assert_eq!(
            line,
            format!(
                "s=$(curl -fsSk --proto '=https' --pinnedpubkey {pin} https://cofre.example:8443/install.sh) && \
                 {{ [ \"$(printf '%s\\n' \"$s\" | sha256sum | cut -c1-64)\" = {SCRIPT_HASH} ] || {{ echo 'cofre: \
                 install.sh is not the script this line pins: not run' >&2; false; }}; }} && printf '%s\\n' \"$s\" | \
                 sh -s -- --api https://cofre.example:8443 --pin {pin} --controller https://cofre.example:7443 \
                 --token cofre1.a.b.c --sha256 ab12"
            )
        );
        let plain = format_line("http://127.0.0.1:8080", None, SCRIPT_HASH, "u", "t", "h");
        assert!(
            plain.starts_with("s=$(curl -fsS --proto '=http' http://127.0.0.1:8080/install.sh) && "),
            "{plain}"
        );
        assert!(!plain.contains("-fsSk") && !plain.contains("--pin"), "{plain}");
        let proxied = format_line("https://cofre.example", None, SCRIPT_HASH, "u", "t", "h");
        assert!(proxied.starts_with("s=$(curl -fsS --proto '=https' https://"), "{proxied}");
        assert!(!proxied.contains("-fsSk") && !proxied.contains("--pin"), "{proxied}");
        // The whole line is one valid command for sh (dash here), and for bash and zsh where installed.
        for shell in ["sh", "bash", "zsh"] {
            let Ok(parsed) = Command::new(shell).args(["-n", "-c", &line]).output() else { continue };
            assert!(parsed.status.success(), "{shell}: {}", String::from_utf8_lossy(&parsed.stderr));
        }
    }

    #[test]
    fn install_line_pins_only_a_controller_that_serves_https_itself() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api.pem");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&file, ck.cert.pem()).unwrap();
        let pin = spki_pin(ck.cert.der()).unwrap();
        let tls = settings_with_cert(Some(file));
        // The portal sees http:// unless a proxy says otherwise: this controller's API is https.
        for api in ["http://cofre.example:8443", "https://cofre.example:8443/"] {
            let line = install_line(api, &tls, "cofre1.t", "ab").unwrap();
            assert!(
                line.contains(&format!("--pinnedpubkey {pin} https://cofre.example:8443/install.sh)")),
                "{line}"
            );
            assert!(
                line.contains(&format!("--api https://cofre.example:8443 --pin {pin} --controller")),
                "{line}"
            );
            assert!(line.contains(&format!("= {} ]", script_sha256())), "{line}");
        }
        let plain =
            install_line("http://127.0.0.1:8080/", &settings_with_cert(None), "cofre1.t", "ab").unwrap();
        assert!(
            plain.contains("--api http://127.0.0.1:8080 --controller https://cofre.example:7443 --token"),
            "{plain}"
        );
    }

    #[test]
    fn every_word_reaches_sh_as_it_was() {
        let words = [
            "cofre1.a.b.c",
            "t; rm -rf /",
            "$(id)",
            "`id`",
            "it's",
            "a b\tc\nd",
            "=https",
            "",
            "\"quoted\" \\ back",
            "sha256//tpmGU49syyfWeC6yuTO17/l1ivwg7seHVAxJ0+h1I8o=",
        ];
        let script = format!(
            "for w in {}; do printf '%s\\0' \"$w\"; done",
            words.iter().map(|w| sh_quote(w)).collect::<Vec<_>>().join(" ")
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let back: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().split_terminator('\0').collect();
        assert_eq!(back, words);
        assert_eq!(sh_quote("t; rm -rf /"), "'t; rm -rf /'");
        assert_eq!(sh_quote("=https"), "'=https'");
    }

    /// The served script run with `args` (before any download: nothing here reaches a network).
    fn run_script(args: &[&str]) -> (bool, String) {
        let mut sh = Command::new("sh")
            .args(["-s", "--"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut sh.stdin.take().unwrap(), script().as_bytes()).unwrap();
        let out = sh.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    #[test]
    fn the_script_takes_only_a_well_formed_pin_and_only_over_https() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("p").display().to_string();
        let good = "sha256//tpmGU49syyfWeC6yuTO17/l1ivwg7seHVAxJ0+h1I8o=";
        let sha = "0".repeat(64);
        let base = |api: &str, pin: &str| {
            ["--api", api, "--pin", pin, "--controller", "https://c:7443", "--token", "cofre1.t"]
                .into_iter()
                .map(String::from)
                .chain(["--sha256", &sha, "--prefix", &prefix, "--no-systemd"].into_iter().map(String::from))
                .collect::<Vec<_>>()
        };
        // curl reads a --pinnedpubkey that is not sha256//… as a key file: never pass one on.
        for bad in [
            "/etc/ssl/certs/ca-certificates.crt",
            "sha256//short",
            "sha256//tpmGU49syyfWeC6yuTO17/l1ivwg7s$HVAxJ0+h1I8o=",
            "",
        ] {
            let args = base("https://cofre.example", bad);
            let (ok, err) = run_script(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(!ok && err.contains("--pin must be sha256//"), "{bad:?}: {err}");
        }
        let args = base("http://127.0.0.1:1", good);
        let (ok, err) = run_script(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!ok && err.contains("--pin needs an https:// --api URL"), "{err}");
        assert!(!dir.path().join("p").exists(), "the script went on after refusing its options");
    }

    #[test]
    fn the_served_script_carries_the_agent_unit_and_ends_with_one_newline() {
        let s = script();
        assert!(s.starts_with("#!/bin/sh"));
        assert!(!s.contains("@COFRE_AGENT_UNIT@"));
        assert!(s.contains("AmbientCapabilities=CAP_DAC_READ_SEARCH"));
        // `$(curl …)` drops trailing newlines and a NUL; printf '%s\n' gives back exactly one.
        assert!(s.ends_with("\n") && !s.ends_with("\n\n") && !s.contains('\0'));
        assert_eq!(script_sha256(), hex::encode(Sha256::digest(s.as_bytes())));
    }
}
