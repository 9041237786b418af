//! The signed-in session of `cofre login`, kept in the user's config dir
//! (`$XDG_CONFIG_HOME/cofre/session.json`, else `~/.config/cofre/session.json`; the directory
//! 0700, the file 0600, replaced atomically). Commands use it when no token is given
//! (`--token` / `COFRE_TOKEN`), refreshing the short-lived access token when it is about to
//! expire; `cofre logout` ends it on the controller and removes the file.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use cofre_client::{Client, Session};
use serde::{Deserialize, Serialize};

/// Refresh when the access token has less than this left.
const REFRESH_MARGIN_SECONDS: i64 = 60;

#[derive(Serialize, Deserialize)]
pub struct Stored {
    /// The controller this session belongs to (`--api-url` / `COFRE_URL`).
    pub api_url: String,
    pub username: String,
    pub access_token: String,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
}

impl Stored {
    pub fn new(api_url: &str, username: &str, s: &Session) -> Self {
        Self {
            api_url: api_url.to_string(),
            username: username.to_string(),
            access_token: s.access_token.clone(),
            access_expires_at: Utc::now() + chrono::Duration::seconds(s.expires_in),
            refresh_token: s.refresh_token.clone(),
            refresh_expires_at: s.refresh_expires_at,
        }
    }
}

/// Where the session is kept.
pub fn path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .context("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the session")?,
        )
        .join(".config"),
    };
    Ok(base.join("cofre").join("session.json"))
}

pub fn save(stored: &Stored) -> anyhow::Result<PathBuf> {
    let path = path()?;
    let dir = path.parent().context("session path has no directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".session.json.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(stored).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write the session to {}", path.display()));
    }
    Ok(path)
}

fn load() -> anyhow::Result<Option<Stored>> {
    let path = path()?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged: run `cofre login` again", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn remove() -> anyhow::Result<()> {
    match std::fs::remove_file(path()?) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Gives `client` the stored session's access token, refreshed first when it is about to
/// expire (the rotated refresh token is saved at once). Fails with what to do when there is no
/// usable session.
pub async fn attach(client: &mut Client, api_url: &str) -> anyhow::Result<()> {
    let no_session = "not signed in: run `cofre login` (or give an API token in COFRE_TOKEN)";
    let Some(stored) = load()? else { anyhow::bail!(no_session) };
    if stored.api_url != api_url {
        anyhow::bail!(
            "the stored session is for {}, not {api_url}: run `cofre login` for this controller (or give a token)",
            stored.api_url
        );
    }
    let now = Utc::now();
    if stored.access_expires_at - now > chrono::Duration::seconds(REFRESH_MARGIN_SECONDS) {
        client.set_token(stored.access_token);
        return Ok(());
    }
    if stored.refresh_expires_at <= now {
        remove()?;
        anyhow::bail!("the session of {} has ended: run `cofre login` again", stored.username);
    }
    match client.refresh(&stored.refresh_token).await {
        Ok(s) => {
            save(&Stored::new(api_url, &stored.username, &s))?;
            Ok(())
        }
        Err(e @ cofre_client::ClientError::Api { status, .. }) if status.as_u16() == 401 => {
            remove()?;
            Err(anyhow::Error::new(e).context("the session has ended: run `cofre login` again"))
        }
        Err(e) => Err(e.into()),
    }
}
