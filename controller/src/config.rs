//! Typed controller settings: defaults → TOML file → `COFRE_…` environment (`__` separates
//! levels, e.g. `COFRE_DATABASE__URL`) → command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub grpc: GrpcSettings,
    pub keys: KeySettings,
    pub enrollment: EnrollmentSettings,
    pub certificates: CertificateSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
    pub maintenance: MaintenanceSettings,
    pub audit: AuditSettings,
    pub compliance: ComplianceSettings,
    pub alerts: AlertSettings,
}

/// Where alerts go. Every replica routes and sends (each delivery once, by lease); give every
/// replica the same channels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    pub channels: Vec<ChannelSettings>,
    /// Hours between reminders about a machine that stays non-compliant (0: none).
    pub reminder_hours: u64,
    /// First retry of a failed delivery, in seconds; each next one waits twice as long.
    pub retry_initial_seconds: u64,
    /// Longest wait between retries. Deliveries are retried until they succeed.
    pub retry_max_seconds: u64,
    /// Seconds one delivery attempt may take.
    pub send_timeout_seconds: u64,
    /// Alert when a repository grows by more than this percentage in a day (0: never)...
    pub growth_percent: u64,
    /// ...and by at least this many bytes.
    pub growth_min_bytes: u64,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            channels: Vec::new(),
            reminder_hours: 24,
            retry_initial_seconds: 5,
            retry_max_seconds: 900,
            send_timeout_seconds: 20,
            growth_percent: 50,
            growth_min_bytes: 1 << 30,
        }
    }
}

/// How a channel is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// JSON (the alert as `cofre_api::alerts::Alert`), HMAC-SHA256 signed with `secret`.
    Webhook,
    /// Slack incoming webhook (`{"text": …}`).
    Slack,
    /// Microsoft Teams incoming webhook (`{"text": …}`).
    Teams,
    /// Discord webhook (`{"content": …}`).
    Discord,
    /// E-mail over SMTP.
    Email,
}

/// One alert channel. `[[alerts.channels]]` in the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    /// A name for the channel (its deliveries are listed under it).
    pub name: String,
    pub kind: ChannelKind,
    /// Only alerts about machines of these groups (by name); empty: every alert.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Only these alert kinds (e.g. `job.failed`, `machine.silent`); empty: every kind.
    #[serde(default)]
    pub alert_kinds: Vec<String>,
    /// Webhook and chat channels: the URL to POST to.
    #[serde(default)]
    pub url: Option<String>,
    /// Webhook: the HMAC-SHA256 key for `X-Cofre-Signature`.
    #[serde(default, serialize_with = "ser_secret_opt")]
    pub secret: Option<SecretString>,
    /// A PEM file of a private CA the webhook's or SMTP server's certificate chains to.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub smtp_host: Option<String>,
    #[serde(default)]
    pub smtp_port: Option<u16>,
    /// `starttls` (default), `tls`, or `none` (only to a loopback address).
    #[serde(default)]
    pub smtp_security: Option<String>,
    #[serde(default)]
    pub smtp_username: Option<String>,
    #[serde(default, serialize_with = "ser_secret_opt")]
    pub smtp_password: Option<SecretString>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
}

/// The audit log's signed checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// A file outside PostgreSQL where this controller appends every signed checkpoint (JSON
    /// lines), so a cut or rewritten log is detected even by whoever owns the schema. Put it on
    /// the controller's own disk (e.g. /var/lib/cofre/audit-checkpoints.jsonl).
    pub checkpoint_file: Option<PathBuf>,
    /// Seconds between checkpoints of the chain head (at least 60).
    pub checkpoint_interval_seconds: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self { checkpoint_file: None, checkpoint_interval_seconds: 3600 }
    }
}

/// How machines' compliance is judged and recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComplianceSettings {
    /// How long an agent may run an older plan after a change before it counts against it.
    pub plan_grace_seconds: u64,
    /// The time zone whose days the daily history uses (IANA name).
    pub time_zone: String,
    /// Seconds between evaluations of the whole fleet (the history's resolution).
    pub evaluate_seconds: u64,
    /// How late a scheduled backup may start before it counts as missed (and alerts).
    pub missed_run_grace_seconds: u64,
}

impl Default for ComplianceSettings {
    fn default() -> Self {
        Self {
            plan_grace_seconds: 900,
            time_zone: "UTC".into(),
            evaluate_seconds: 60,
            missed_run_grace_seconds: 900,
        }
    }
}

/// The controller's maintenance of repositories (forget, prune, check), run as child processes
/// by whichever replica claims the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceSettings {
    /// Run maintenance on this replica (at least one replica should).
    pub enabled: bool,
    /// Maintenance jobs this replica runs at once.
    pub concurrency: u32,
    /// How long a job waits for running backups (their repository locks) before it gives up
    /// and is retried later.
    pub lock_wait_seconds: u64,
    /// Seconds between looks for due or orphaned jobs.
    pub poll_seconds: u64,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        Self { enabled: true, concurrency: 2, lock_wait_seconds: 1800, poll_seconds: 5 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Used by `serve`: a login role that is a member of `cofre_app`.
    #[serde(serialize_with = "ser_secret_opt")]
    pub url: Option<SecretString>,
    /// Used by `migrate`: the owner role. Defaults to `url`.
    #[serde(serialize_with = "ser_secret_opt")]
    pub owner_url: Option<SecretString>,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// REST API (`/api/v1`), health endpoints and, later, the portal.
    pub listen: SocketAddr,
    /// PEM certificate chain and key for HTTPS. Without them the API is plain HTTP, which is
    /// allowed only on a loopback address unless `allow_plain_http` is set.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).
    pub allow_plain_http: bool,
    /// Proxies (addresses or networks, e.g. `10.0.0.0/8`) whose `X-Forwarded-For` is believed
    /// for the client address recorded in the audit log; from anyone else it is ignored.
    pub trusted_proxies: Vec<crate::api::Network>,
    /// An HTTP/1 request head must arrive within this many seconds of the client starting it
    /// (also the longest a keep-alive connection waits for its next request, and the longest a
    /// new connection may stay silent before its first request). 1–86400.
    pub header_read_timeout_seconds: u64,
    /// A connection with no request in progress for this many seconds is closed (HTTP/2: GOAWAY
    /// first). A request in progress (a slow upload, a slowly read download) is never cut. 1–86400.
    pub idle_timeout_seconds: u64,
    /// HTTP/2 PING every this many seconds; a peer that does not answer within
    /// `http2_keep_alive_timeout_seconds` is disconnected. 1–86400 each.
    pub http2_keep_alive_interval_seconds: u64,
    pub http2_keep_alive_timeout_seconds: u64,
    /// Connections served at once (TLS handshakes included). Over the cap, new connections wait
    /// in the kernel's accept backlog until one closes; they are not refused. Idle connections
    /// hold their slot until they time out (as above), so a flood of them delays every client,
    /// health checks included. Keep it below the open-file limit (`LimitNOFILE`). 1–1000000.
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSettings {
    /// Agents connect here (TLS; mutual TLS for sessions).
    pub listen: SocketAddr,
    /// The URL agents dial, printed in enrollment instructions; its host is put in the
    /// controller's TLS certificate.
    pub public_url: String,
    /// More DNS names or IP addresses for the controller's TLS certificate.
    pub extra_names: Vec<String>,
    /// Enroll attempts allowed per source address per minute.
    pub enroll_per_minute: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// File holding the 32-byte master key (64 hex characters). Alternative: `COFRE_MASTER_KEY`.
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentSettings {
    /// Default lifetime of a new enrollment token, in seconds.
    pub token_ttl_seconds: u64,
    /// Default number of machines a token may enroll.
    pub token_uses: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertificateSettings {
    /// Lifetime of agent certificates, in seconds (renewed at 2/3 of it).
    pub agent_lifetime_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    pub username: String,
    /// Password of the first admin, created on first start. When absent a random one is
    /// generated and printed once.
    #[serde(serialize_with = "ser_secret_opt")]
    pub initial_password: Option<SecretString>,
    /// Lifetime of an access token (JWT), in seconds: minutes, since a stolen one works until it
    /// expires. Sessions go on with refresh tokens.
    pub token_ttl_seconds: u64,
    /// Lifetime of a login session, in seconds: its refresh tokens never outlive it.
    pub session_ttl_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `pretty` or `json`.
    pub format: String,
    /// A tracing filter such as `info,cofre_controller=debug`.
    pub filter: String,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: None, owner_url: None, max_connections: 20 }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert_file: None,
            tls_key_file: None,
            allow_plain_http: false,
            trusted_proxies: Vec::new(),
            header_read_timeout_seconds: 30,
            idle_timeout_seconds: 120,
            http2_keep_alive_interval_seconds: 60,
            http2_keep_alive_timeout_seconds: 20,
            max_connections: 1024,
        }
    }
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            public_url: "https://localhost:7443".into(),
            extra_names: Vec::new(),
            enroll_per_minute: 30,
        }
    }
}

impl Default for EnrollmentSettings {
    fn default() -> Self {
        Self { token_ttl_seconds: 24 * 3600, token_uses: 1 }
    }
}

impl Default for CertificateSettings {
    fn default() -> Self {
        Self { agent_lifetime_seconds: 30 * 24 * 3600 }
    }
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            username: "admin".into(),
            initial_password: None,
            token_ttl_seconds: 900,
            session_ttl_seconds: 12 * 3600,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: "pretty".into(), filter: "info".into() }
    }
}

fn ser_secret_opt<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Which `COFRE_…` variables are the controller's settings. The programs of one product share
/// the `COFRE_` prefix, so the controller reads only `COFRE_<SECTION>__<KEY>` for its own
/// sections; variables without `__` belong to the CLI, the agent or command-line flags
/// (`COFRE_TOKEN`, `COFRE_URL`, `COFRE_AGENT_STATE_DIR`, `COFRE_CONFIG`, `COFRE_MASTER_KEY`)
/// and `COFRE_STORE_…`/`COFRE_AGENT_…` to cofre-store and the agent: all ignored. A variable
/// shaped like a setting whose section is unknown is a typo, and an error, as a misspelt key
/// inside a known section is (`deny_unknown_fields`).
///
/// # Errors
/// A `COFRE_X__Y` variable whose section `X` the controller does not have.
pub fn controller_env(names: impl Iterator<Item = String>, sections: &[String]) -> Result<(), ConfigError> {
    for name in names {
        let Some(rest) = name.strip_prefix("COFRE_") else { continue };
        let Some((section, _)) = rest.split_once("__") else { continue };
        let upper = section.to_ascii_uppercase();
        if upper.starts_with("STORE_") || upper.starts_with("AGENT_") || upper == "STORE" || upper == "AGENT"
        {
            continue;
        }
        if !sections.iter().any(|s| s.eq_ignore_ascii_case(section)) {
            return Err(ConfigError(format!(
                "{name}: the controller has no settings section {:?} (its sections: {})",
                section.to_ascii_lowercase(),
                sections.join(", ")
            )));
        }
    }
    Ok(())
}

impl Settings {
    /// Loads defaults, then `file` (if given; it must exist), then the controller's `COFRE_…`
    /// variables (see [`controller_env`]).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!("config file {} does not exist", file.display())));
            }
            fig = fig.merge(Toml::file_exact(file));
        }
        let sections = Self::sections();
        controller_env(std::env::vars().map(|(k, _)| k), &sections)?;
        fig = fig.merge(
            Env::prefixed("COFRE_")
                .filter(move |k| {
                    k.as_str()
                        .split_once("__")
                        .is_some_and(|(s, _)| sections.iter().any(|x| x.eq_ignore_ascii_case(s)))
                })
                .split("__"),
        );
        let s: Settings = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// The top-level sections (`database`, `http`, …).
    fn sections() -> Vec<String> {
        match serde_json::to_value(Settings::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.grpc.public_url)
            .map_err(|e| ConfigError(format!("grpc.public_url: {e}")))?;
        if url.scheme() != "https" || url.host_str().is_none() {
            return Err(ConfigError("grpc.public_url must be an https:// URL with a host".into()));
        }
        // Short lifetimes are for tests; renewal happens at 2/3 of the lifetime.
        if self.certificates.agent_lifetime_seconds < 60 {
            return Err(ConfigError("certificates.agent_lifetime_seconds must be at least 60".into()));
        }
        match (&self.http.tls_cert_file, &self.http.tls_key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError("http.tls_cert_file and http.tls_key_file go together".into()));
            }
            (None, None) if !self.http.listen.ip().is_loopback() && !self.http.allow_plain_http => {
                return Err(ConfigError(format!(
                    "http.listen {} is not a loopback address: passwords and tokens would cross the network \
                     unencrypted. Set http.tls_cert_file and http.tls_key_file, or http.allow_plain_http = true \
                     behind a TLS-terminating proxy",
                    self.http.listen
                )));
            }
            _ => {}
        }
        // Zero would mean "at once"; beyond a day is a typo (milliseconds for seconds).
        let timeouts = [
            ("header_read_timeout_seconds", self.http.header_read_timeout_seconds),
            ("idle_timeout_seconds", self.http.idle_timeout_seconds),
            ("http2_keep_alive_interval_seconds", self.http.http2_keep_alive_interval_seconds),
            ("http2_keep_alive_timeout_seconds", self.http.http2_keep_alive_timeout_seconds),
        ];
        for (key, value) in timeouts {
            if !(1..=86_400).contains(&value) {
                return Err(ConfigError(format!("http.{key} must be between 1 and 86400 (a day)")));
            }
        }
        if !(1..=1_000_000).contains(&self.http.max_connections) {
            return Err(ConfigError("http.max_connections must be between 1 and 1000000".into()));
        }
        if self.maintenance.concurrency == 0 && self.maintenance.enabled {
            return Err(ConfigError(
                "maintenance.concurrency must be at least 1 (or set maintenance.enabled = false)".into(),
            ));
        }
        if !(1..=300).contains(&self.maintenance.poll_seconds) {
            return Err(ConfigError("maintenance.poll_seconds must be between 1 and 300".into()));
        }
        if !(60..=3600).contains(&self.admin.token_ttl_seconds) {
            return Err(ConfigError(
                "admin.token_ttl_seconds must be between 60 and 3600 (an hour): access tokens are short-lived; \
                 sessions go on with refresh tokens and scripts use API tokens"
                    .into(),
            ));
        }
        if !(self.admin.token_ttl_seconds..=30 * 24 * 3600).contains(&self.admin.session_ttl_seconds) {
            return Err(ConfigError(
                "admin.session_ttl_seconds must be at least admin.token_ttl_seconds and at most 2592000 (30 days)"
                    .into(),
            ));
        }
        if self.audit.checkpoint_interval_seconds < 60 {
            return Err(ConfigError("audit.checkpoint_interval_seconds must be at least 60".into()));
        }
        if jiff::tz::TimeZone::get(&self.compliance.time_zone).is_err() {
            return Err(ConfigError(format!(
                "compliance.time_zone {:?} is not an IANA time zone (e.g. America/Sao_Paulo, UTC)",
                self.compliance.time_zone
            )));
        }
        if !(5..=3600).contains(&self.compliance.evaluate_seconds) {
            return Err(ConfigError("compliance.evaluate_seconds must be between 5 and 3600".into()));
        }
        crate::alerts::channels::validate(&self.alerts).map_err(ConfigError)?;
        if self.enrollment.token_uses == 0 {
            return Err(ConfigError("enrollment.token_uses must be at least 1".into()));
        }
        Ok(())
    }

    /// Host names / addresses to put in the controller's TLS certificate.
    pub fn tls_names(&self) -> Vec<String> {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if let Ok(u) = url::Url::parse(&self.grpc.public_url)
            && let Some(h) = u.host_str()
        {
            names.push(h.trim_matches(['[', ']']).to_string());
        }
        names.extend(self.grpc.extra_names.iter().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// The documented defaults, as TOML (`print-default-config`).
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Settings::default()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap();
        let err = Settings::load(Some(&f)).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn plain_http_only_on_loopback_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[http]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        let err = Settings::load(Some(&f)).unwrap_err().to_string();
        assert!(err.contains("not a loopback address"), "{err}");
        std::fs::write(&f, "[http]\nlisten = \"0.0.0.0:8080\"\nallow_plain_http = true\n").unwrap();
        assert!(Settings::load(Some(&f)).is_ok());
        std::fs::write(&f, "[http]\ntls_cert_file = \"/x.pem\"\n").unwrap();
        assert!(Settings::load(Some(&f)).unwrap_err().to_string().contains("go together"));
    }

    #[test]
    fn http_connection_limits_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let load = |body: &str| {
            std::fs::write(&f, format!("[http]\n{body}\n")).unwrap();
            Settings::load(Some(&f)).map_err(|e| e.to_string())
        };
        let e = load("idle_timeout_seconds = 0").unwrap_err();
        assert!(e.contains("http.idle_timeout_seconds must be between 1 and 86400"), "{e}");
        let e = load("header_read_timeout_seconds = 100000").unwrap_err();
        assert!(e.contains("http.header_read_timeout_seconds must be between"), "{e}");
        let e = load("max_connections = 0").unwrap_err();
        assert!(e.contains("http.max_connections must be between"), "{e}");
        let s = load("max_connections = 2\nidle_timeout_seconds = 5").unwrap();
        assert_eq!((s.http.max_connections, s.http.idle_timeout_seconds), (2, 5));
    }

    #[test]
    fn other_programs_variables_are_not_settings_but_misspelt_sections_are_refused() {
        let sections = Settings::sections();
        assert!(sections.contains(&"database".to_string()) && sections.contains(&"alerts".to_string()));
        let vars = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>().into_iter();
        let others = [
            "COFRE_TOKEN",
            "COFRE_URL",
            "COFRE_CA_FILE",
            "COFRE_AGENT_STATE_DIR",
            "COFRE_CONFIG",
            "COFRE_DATA_DIR",
            "COFRE_MASTER_KEY",
            "COFRE_STORE_CONFIG",
            "COFRE_STORE_SERVER__LISTEN",
            "COFRE_DATABASE__URL",
            "PATH",
        ];
        assert!(controller_env(vars(&others), &sections).is_ok());
        let err = controller_env(vars(&["COFRE_DATABSE__URL"]), &sections).unwrap_err().to_string();
        assert!(err.contains("COFRE_DATABSE__URL") && err.contains("\"databse\""), "{err}");
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let t = Settings::default_toml();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, t).unwrap();
        let s = Settings::load(Some(&f)).unwrap();
        assert_eq!(s.http.listen, Settings::default().http.listen);
    }
}
