//! The one-line agent install (#14 item 1): the install script and the agent binary that sits
//! beside the running controller, served publicly by the REST API, and the line people paste.
//!
//! Only the platform the controller itself was built for is served (the agent beside it is the
//! same build); every other platform answers 404 naming the one available.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

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

/// The install script as served.
pub fn script() -> String {
    SCRIPT.replace("@COFRE_AGENT_UNIT@", UNIT.trim_end())
}

/// The whole install, as one line for a shell: fetch the script from the REST API and run it
/// with what pins the download (the binary's SHA-256) and the enrollment (the token pins the CA).
pub fn install_line(api_url: &str, controller_url: &str, token: &str, sha256: &str) -> String {
    let api = api_url.trim_end_matches('/');
    let proto = if api.starts_with("http://") { "=http" } else { "=https" };
    format!(
        "curl -fsS --proto '{proto}' {} | sh -s -- --api {} --controller {} --token {} --sha256 {}",
        sh_quote(&format!("{api}/install.sh")),
        sh_quote(api),
        sh_quote(controller_url),
        sh_quote(token),
        sh_quote(sha256)
    )
}

/// Quotes a word for sh only when it needs it (URLs, tokens and hashes usually do not).
fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/=@%+,".contains(&b));
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
pub async fn serve_download(Path(file): Path<String>) -> Response {
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

    #[test]
    fn the_line_runs_the_served_script_with_every_pin() {
        let line =
            install_line("https://cofre.example:8443/", "https://cofre.example:7443", "cofre1.a.b.c", "ab12");
        assert_eq!(
            line,
            "curl -fsS --proto '=https' https://cofre.example:8443/install.sh | sh -s -- --api \
             https://cofre.example:8443 --controller https://cofre.example:7443 --token cofre1.a.b.c --sha256 ab12"
        );
        assert!(
            install_line("http://127.0.0.1:1", "u", "t; rm -rf /", "h").contains("--token 't; rm -rf /'")
        );
    }

    #[test]
    fn the_served_script_carries_the_agent_unit() {
        let s = script();
        assert!(s.starts_with("#!/bin/sh"));
        assert!(!s.contains("@COFRE_AGENT_UNIT@"));
        assert!(s.contains("AmbientCapabilities=CAP_DAC_READ_SEARCH"));
    }
}
