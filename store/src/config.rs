//! Typed store settings: defaults → TOML file (`--config FILE`) → `COFRE_STORE_…` environment
//! (`__` separates levels, e.g. `COFRE_STORE_LOG__FILTER`). Validation names the bad key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::access::{Mode, RepoPattern};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to listen on (HTTPS; plain HTTP only on loopback with `allow_plain_http`).
    pub listen: SocketAddr,
    /// Root of the repositories, laid out exactly as restic's rest-server lays them out.
    pub data_dir: PathBuf,
    /// Where the Cofre CA (`ca.pem`) and the access list (`access-list.json`) live.
    pub state_dir: PathBuf,
    /// PEM certificate chain and private key of this server.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP (no client certificates, passwords in clear): loopback addresses only.
    pub allow_plain_http: bool,
    /// htpasswd file (bcrypt as `htpasswd -B` writes, or `{SHA}`); re-read when it changes.
    pub htpasswd_file: Option<PathBuf>,
    /// Largest object (pack file, index, config…) accepted, in bytes.
    pub max_object_size: u64,
    /// An upload that sends nothing for this long is abandoned (408): its temp file is removed
    /// and its reserved quota released.
    pub upload_idle_timeout_seconds: u64,
    /// Uploads one identity (machine or htpasswd user) may have in progress at once; more are
    /// answered 503 with Retry-After. The maintenance identity is exempt.
    pub max_uploads_per_identity: u32,
    /// bcrypt password checks (htpasswd users) run at once, each on a blocking thread.
    pub bcrypt_concurrency: u32,
    /// bcrypt checks that may wait for a free slot; beyond that, requests needing one are
    /// answered 503 with Retry-After (passwords already verified are cached and never wait).
    pub bcrypt_queue: u32,
    /// An HTTP/1 connection must send a complete request head within this long (also the longest
    /// an idle keep-alive connection waits for its next request).
    pub header_read_timeout_seconds: u64,
    /// A connection with no request in progress for this long is closed (HTTP/2: GOAWAY first;
    /// also a connection that never sends anything).
    pub idle_connection_timeout_seconds: u64,
    /// HTTP/2 PING every this many seconds; a peer that does not answer within
    /// `http2_keep_alive_timeout_seconds` is disconnected.
    pub http2_keep_alive_interval_seconds: u64,
    pub http2_keep_alive_timeout_seconds: u64,
    /// A response the client takes nothing of for this long (it stopped reading) drops its
    /// connection.
    pub write_timeout_seconds: u64,
    /// Connections one client address (an IPv6 client: its /64) may hold open at once; more are
    /// answered 503 with Retry-After and closed.
    pub max_connections_per_address: u32,
    /// The controller's addresses (its replicas), tried in turn from the one that answered
    /// last. Empty: the addresses given at enrollment (`state_dir/store.json`).
    pub controllers: Vec<String>,
    pub log: LogSettings,
    /// What htpasswd users may reach. A user without a rule gets rest-server's
    /// `--private-repos` behaviour, append-only: repositories equal to or below its name.
    pub users: Vec<UserRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserRule {
    pub name: String,
    pub mode: Mode,
    /// Exact repository paths, `prefix/*` for everything below a prefix, or `*`.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Limit on the bytes stored in all the repositories this rule reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `pretty` or `json`.
    pub format: String,
    /// A tracing filter such as `info,cofre_store::access=info`.
    pub filter: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("/var/lib/cofre-store/data"),
            state_dir: PathBuf::from("/var/lib/cofre-store/state"),
            tls_cert: None,
            tls_key: None,
            allow_plain_http: false,
            htpasswd_file: None,
            max_object_size: 4 << 30,
            upload_idle_timeout_seconds: 300,
            max_uploads_per_identity: 8,
            bcrypt_concurrency: 2,
            bcrypt_queue: 32,
            header_read_timeout_seconds: 30,
            idle_connection_timeout_seconds: 120,
            http2_keep_alive_interval_seconds: 60,
            http2_keep_alive_timeout_seconds: 20,
            write_timeout_seconds: 60,
            max_connections_per_address: 64,
            controllers: Vec::new(),
            log: LogSettings::default(),
            users: Vec::new(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: "pretty".into(), filter: "info".into() }
    }
}

/// The longest any timeout may be set to (one day).
const MAX_TIMEOUT_SECONDS: u64 = 86_400;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// The documented defaults (`print-default-config`). A test checks it loads as `Settings::default()`.
const DEFAULT_TOML: &str = r#"# cofre-store configuration. Every key may also come from the environment:
# COFRE_STORE_LISTEN, COFRE_STORE_DATA_DIR, COFRE_STORE_LOG__FILTER, ...

# HTTPS address. Plain HTTP needs a loopback address and allow_plain_http = true (and then
# carries no client certificates: only htpasswd users can work).
listen = "127.0.0.1:8000"
# Repositories, in restic rest-server's layout (an existing rest-server data dir works as is).
data_dir = "/var/lib/cofre-store/data"
# Cofre CA (ca.pem) and the access list the controller pushes (access-list.json).
state_dir = "/var/lib/cofre-store/state"
# This server's certificate chain and key (PEM). Without them the store serves with the
# certificate Cofre's CA issues it at enrollment (for the host of its registered URL).
# tls_cert = "/etc/cofre-store/cert.pem"
# tls_key = "/etc/cofre-store/key.pem"
allow_plain_http = false
# Users for plain restic / Backrest clients (htpasswd -B). Re-read when it changes.
# htpasswd_file = "/etc/cofre-store/htpasswd"
# Largest object accepted, in bytes (4 GiB).
max_object_size = 4294967296
# An upload that sends nothing for this long is abandoned (HTTP 408).
upload_idle_timeout_seconds = 300
# Uploads one machine or htpasswd user may have in progress at once (more: HTTP 503 with
# Retry-After: 1). The controller's maintenance identity is exempt.
max_uploads_per_identity = 8
# bcrypt password checks for htpasswd users: how many run at once, and how many may wait for a
# slot (more: HTTP 503 with Retry-After). Passwords already verified are cached and never wait.
bcrypt_concurrency = 2
bcrypt_queue = 32
# Slow and idle clients. An HTTP/1 request head must arrive within header_read_timeout_seconds
# (also the longest an idle keep-alive connection waits for its next request); a connection
# with no request in progress for idle_connection_timeout_seconds is closed; HTTP/2 peers are
# pinged every http2_keep_alive_interval_seconds and dropped when they do not answer within
# http2_keep_alive_timeout_seconds.
header_read_timeout_seconds = 30
idle_connection_timeout_seconds = 120
http2_keep_alive_interval_seconds = 60
http2_keep_alive_timeout_seconds = 20
# A client that stops reading a response (takes none of it for write_timeout_seconds) is
# disconnected.
write_timeout_seconds = 60
# Connections one client address (IPv6: one /64) may hold open at once; more are answered
# HTTP 503 with Retry-After and closed (a flood beyond that is closed at once). restic and
# rustic use far fewer (HTTP/2: one); mind clients behind one NAT address.
max_connections_per_address = 64
# The controller's addresses, one per replica, tried in turn from the one that answered last
# (each https://, as given to `enroll --controller`). Unset or empty: the addresses given at
# enrollment (`cofre-store enroll --controller A --controller B`, `cofre-store set-controllers`).
controllers = []

[log]
# pretty or json
format = "pretty"
filter = "info"

# What htpasswd users may reach. mode: "append-only", "read-only" or "full".
# repositories: exact paths, "prefix/*" for everything below, or "*".
# A user without a rule may reach, append-only, the repositories equal to or below its name.
# [[users]]
# name = "auditor"
# mode = "read-only"
# repositories = ["*"]
#
# [[users]]
# name = "backrest"
# mode = "append-only"
# repositories = ["legacy/*"]
# quota_bytes = 107374182400
"#;

impl Settings {
    /// Loads defaults, then `file` (if given; it must exist), then `COFRE_STORE_…` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!("config file {} does not exist", file.display())));
            }
            fig = fig.merge(Toml::file_exact(file));
        }
        // COFRE_STORE_CONFIG names the file (a flag's variable), it is not a setting.
        fig = fig.merge(Env::prefixed("COFRE_STORE_").ignore(&["CONFIG"]).split("__"));
        let s: Settings = fig
            .extract()
            .map_err(|e| ConfigError(e.into_iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))?;
        s.validate()?;
        Ok(s)
    }

    /// The documented default configuration, as TOML.
    pub fn default_toml() -> &'static str {
        DEFAULT_TOML
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        // Without certificate files the store serves with the certificate Cofre's CA issued it at
        // enrollment (checked when it starts: see `StoreState::open`).
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => return err("tls_cert and tls_key go together".into()),
            (None, None) if self.allow_plain_http && !self.listen.ip().is_loopback() => {
                return err(format!(
                    "allow_plain_http needs a loopback listen address, not {} (agents authenticate with \
                     client certificates, so a TLS-terminating proxy cannot stand in)",
                    self.listen
                ));
            }
            _ => {}
        }
        if self.max_object_size == 0 {
            return err("max_object_size must be positive".into());
        }
        for (key, value) in [
            ("max_uploads_per_identity", self.max_uploads_per_identity),
            ("bcrypt_concurrency", self.bcrypt_concurrency),
            ("max_connections_per_address", self.max_connections_per_address),
        ] {
            if value == 0 {
                return err(format!("{key} must be positive"));
            }
        }
        // Zero would mean "at once"; beyond a day is a typo (milliseconds for seconds).
        let timeouts = [
            ("upload_idle_timeout_seconds", self.upload_idle_timeout_seconds),
            ("header_read_timeout_seconds", self.header_read_timeout_seconds),
            ("idle_connection_timeout_seconds", self.idle_connection_timeout_seconds),
            ("http2_keep_alive_interval_seconds", self.http2_keep_alive_interval_seconds),
            ("http2_keep_alive_timeout_seconds", self.http2_keep_alive_timeout_seconds),
            ("write_timeout_seconds", self.write_timeout_seconds),
        ];
        for (key, value) in timeouts {
            if value == 0 || value > MAX_TIMEOUT_SECONDS {
                return err(format!(
                    "{key} must be between 1 and {MAX_TIMEOUT_SECONDS} (one day), not {value}"
                ));
            }
        }
        if !self.controllers.is_empty()
            && let Err(e) = cofre_dial::controller_urls(&self.controllers)
        {
            return err(format!("controllers: {}", e.to_string().replace("--controller", "address")));
        }
        if self.log.format != "pretty" && self.log.format != "json" {
            return err(format!("log.format must be \"pretty\" or \"json\", not {:?}", self.log.format));
        }
        let mut names = HashSet::new();
        for (i, rule) in self.users.iter().enumerate() {
            if rule.name.is_empty() || rule.name.contains(':') || rule.name.chars().any(char::is_control) {
                return err(format!("users[{i}].name {:?} is not a valid htpasswd user name", rule.name));
            }
            if !names.insert(rule.name.as_str()) {
                return err(format!("users[{i}].name {:?}: one rule per user", rule.name));
            }
            for (j, pattern) in rule.repositories.iter().enumerate() {
                if let Err(e) = RepoPattern::parse(pattern) {
                    return err(format!("users[{i}].repositories[{j}] {pattern:?}: {e}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, text).unwrap();
        Settings::load(Some(&f))
    }

    #[test]
    fn documented_defaults_are_the_defaults() {
        assert_eq!(load(DEFAULT_TOML).unwrap(), Settings::default());
        let text = DEFAULT_TOML.replace("allow_plain_http = false", "allow_plain_http = true");
        let loaded = load(&text).unwrap();
        assert_eq!(loaded, Settings { allow_plain_http: true, ..Settings::default() });
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        let e = load("allow_plain_http = true\nlisen = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = load("allow_plain_http = true\nmax_object_size = \"big\"\n").unwrap_err().to_string();
        assert!(e.contains("max_object_size"), "{e}");
        let e = load(
            "allow_plain_http = true\n[[users]]\nname = \"a\"\nmode = \"full\"\nrepositories = [\"x/../y\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("users[0].repositories[0]"), "{e}");
        let e = load("allow_plain_http = true\nmax_uploads_per_identity = 0\n").unwrap_err().to_string();
        assert!(e.contains("max_uploads_per_identity must be positive"), "{e}");
        let e = load("allow_plain_http = true\nbcrypt_concurrency = 0\n").unwrap_err().to_string();
        assert!(e.contains("bcrypt_concurrency must be positive"), "{e}");
        let e = load("allow_plain_http = true\nmax_connections_per_address = 0\n").unwrap_err().to_string();
        assert!(e.contains("max_connections_per_address must be positive"), "{e}");
        let e = load("allow_plain_http = true\nwrite_timeout_seconds = 0\n").unwrap_err().to_string();
        assert!(e.contains("write_timeout_seconds must be between 1 and"), "{e}");
        let e =
            load("allow_plain_http = true\nidle_connection_timeout_seconds = 0\n").unwrap_err().to_string();
        assert!(e.contains("idle_connection_timeout_seconds must be between 1 and"), "{e}");
        let e =
            load("allow_plain_http = true\nheader_read_timeout_seconds = 100000\n").unwrap_err().to_string();
        assert!(e.contains("header_read_timeout_seconds must be between 1 and"), "{e}");
        let e = load("allow_plain_http = true\n[[users]]\nname = \"a\"\nmode = \"all\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode") || e.contains("all"), "{e}");
    }

    #[test]
    fn controller_addresses_are_checked() {
        let s = load("allow_plain_http = true\ncontrollers = [\"https://a:7443\", \"https://b:7443\"]\n")
            .unwrap();
        assert_eq!(s.controllers, ["https://a:7443", "https://b:7443"]);
        let e = load("allow_plain_http = true\ncontrollers = [\"http://a:7443\"]\n").unwrap_err().to_string();
        assert!(e.contains("controllers: address must be an https:// URL"), "{e}");
        let e = load("allow_plain_http = true\ncontrollers = [\"https://a:7443\", \"https://a:7443\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("controllers") && e.contains("twice"), "{e}");
    }

    #[test]
    fn users_rules_parse() {
        let s = load(
            "allow_plain_http = true\n[[users]]\nname = \"audit\"\nmode = \"read-only\"\nrepositories = [\"*\"]\n\
             [[users]]\nname = \"b\"\nmode = \"append-only\"\nrepositories = [\"legacy/*\", \"city/pc-01\"]\n\
             quota_bytes = 1000\n",
        )
        .unwrap();
        assert_eq!(s.users.len(), 2);
        assert_eq!(s.users[0].mode, Mode::ReadOnly);
        assert_eq!(s.users[1].quota_bytes, Some(1000));
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let e = load("listen = \"0.0.0.0:8000\"\nallow_plain_http = true\n").unwrap_err().to_string();
        assert!(e.contains("allow_plain_http needs a loopback"), "{e}");
        // Without files on a public address: the certificate from Cofre's CA (checked at start).
        assert!(load("listen = \"0.0.0.0:8000\"\n").is_ok());
        let e = load("allow_plain_http = true\ntls_cert = \"/c.pem\"\n").unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
        assert!(load("listen = \"0.0.0.0:8000\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\n").is_ok());
    }
}
