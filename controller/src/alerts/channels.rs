//! Alert channels: validated from the configuration, built once per process, and one `send`
//! per delivery attempt. Webhooks get the alert as JSON with an HMAC-SHA256 signature; chat
//! webhooks (Slack, Teams, Discord) a text message in their own payload shape; e-mail goes over
//! SMTP (lettre) with the alert's id in its Message-ID, so a mail retried after a lost answer
//! can be recognised.

use std::time::Duration;

use cofre_api::alerts::Alert;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{AlertSettings, ChannelKind, ChannelSettings};

/// Checks every channel; the message names the channel and the field.
///
/// # Errors
/// A missing or malformed field, or two channels with one name.
pub fn validate(s: &AlertSettings) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for c in &s.channels {
        let bad = |m: &str| format!("alerts.channels {:?}: {m}", c.name);
        if c.name.trim().is_empty() || !names.insert(c.name.clone()) {
            return Err(format!("alerts.channels: every channel needs a unique name (found {:?})", c.name));
        }
        match c.kind {
            ChannelKind::Email => {
                let host = c.smtp_host.as_deref().ok_or_else(|| bad("smtp_host is required"))?;
                c.from
                    .as_deref()
                    .ok_or_else(|| bad("from is required"))?
                    .parse::<Mailbox>()
                    .map_err(|e| bad(&format!("from: {e}")))?;
                if c.to.is_empty() {
                    return Err(bad("to needs at least one address"));
                }
                for to in &c.to {
                    to.parse::<Mailbox>().map_err(|e| bad(&format!("to {to:?}: {e}")))?;
                }
                match c.smtp_security.as_deref().unwrap_or("starttls") {
                    "starttls" | "tls" => {}
                    "none" => {
                        let loopback = host == "localhost"
                            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                        if !loopback {
                            return Err(bad(
                                "smtp_security = \"none\" is only allowed to a loopback address",
                            ));
                        }
                    }
                    other => return Err(bad(&format!("smtp_security {other:?}: starttls, tls or none"))),
                }
            }
            _ => {
                let url = c.url.as_deref().ok_or_else(|| bad("url is required"))?;
                let u = url::Url::parse(url).map_err(|e| bad(&format!("url: {e}")))?;
                if !matches!(u.scheme(), "https" | "http") {
                    return Err(bad("url must be http(s)"));
                }
            }
        }
    }
    if s.retry_initial_seconds == 0 || s.retry_max_seconds < s.retry_initial_seconds {
        return Err("alerts.retry_initial_seconds must be at least 1 and at most retry_max_seconds".into());
    }
    if s.send_timeout_seconds == 0 {
        return Err("alerts.send_timeout_seconds must be at least 1".into());
    }
    Ok(())
}

/// A channel ready to send.
pub struct Channel {
    pub settings: ChannelSettings,
    http: Option<reqwest::Client>,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("name", &self.settings.name).finish_non_exhaustive()
    }
}

impl Channel {
    /// # Errors
    /// An unreadable CA file or a client that cannot be built.
    pub fn build(c: &ChannelSettings, timeout: Duration) -> anyhow::Result<Self> {
        let ca = match &c.ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                anyhow::anyhow!("alerts.channels {:?}: ca_file {}: {e}", c.name, p.display())
            })?),
            None => None,
        };
        let mut ch = Channel { settings: c.clone(), http: None, smtp: None };
        if c.kind == ChannelKind::Email {
            let host = c.smtp_host.clone().unwrap_or_default();
            let tls = || -> anyhow::Result<TlsParameters> {
                let mut b = TlsParameters::builder(host.clone());
                if let Some(pem) = &ca {
                    b = b.add_root_certificate(lettre::transport::smtp::client::Certificate::from_pem(pem)?);
                }
                Ok(b.build_rustls()?)
            };
            let security = c.smtp_security.as_deref().unwrap_or("starttls");
            let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host).timeout(Some(timeout));
            b = match security {
                "tls" => b.port(c.smtp_port.unwrap_or(465)).tls(Tls::Wrapper(tls()?)),
                "none" => b.port(c.smtp_port.unwrap_or(25)).tls(Tls::None),
                _ => b.port(c.smtp_port.unwrap_or(587)).tls(Tls::Required(tls()?)),
            };
            if let (Some(user), Some(pw)) = (&c.smtp_username, &c.smtp_password) {
                b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
                    user.clone(),
                    pw.expose_secret().to_string(),
                ));
            }
            ch.smtp = Some(b.build());
        } else {
            let mut b =
                reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none());
            if let Some(pem) = &ca {
                for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                    b = b.add_root_certificate(cert);
                }
            }
            ch.http = Some(b.build()?);
        }
        Ok(ch)
    }

    /// Whether this channel takes `alert` (by group name and kind).
    pub fn takes(&self, alert: &Alert) -> bool {
        let s = &self.settings;
        let group_ok =
            s.groups.is_empty() || alert.group.as_ref().is_some_and(|g| s.groups.contains(&g.name));
        let kind_ok = s.alert_kinds.is_empty() || s.alert_kinds.contains(&alert.kind);
        group_ok && kind_ok
    }

    /// One attempt. `Err`: a reason for the delivery's `last_error`.
    pub async fn send(&self, alert: &Alert, attempt: i32) -> Result<(), String> {
        match (&self.http, &self.smtp) {
            (Some(http), _) => self.post(http, alert, attempt).await,
            (_, Some(smtp)) => self.mail(smtp, alert).await,
            _ => Err("channel not built".into()),
        }
    }

    async fn post(&self, http: &reqwest::Client, alert: &Alert, attempt: i32) -> Result<(), String> {
        let body = match self.settings.kind {
            ChannelKind::Webhook => serde_json::to_vec(alert),
            ChannelKind::Slack | ChannelKind::Teams => {
                serde_json::to_vec(&serde_json::json!({"text": text(alert)}))
            }
            ChannelKind::Discord => serde_json::to_vec(&serde_json::json!({"content": text(alert)})),
            ChannelKind::Email => return Err("not a web channel".into()),
        }
        .map_err(|e| e.to_string())?;
        let url = self.settings.url.as_deref().unwrap_or_default();
        let mut rb = http
            .post(url)
            .header("content-type", "application/json")
            .header("x-cofre-alert-id", alert.id.to_string())
            .header("x-cofre-alert-kind", &alert.kind)
            .header("x-cofre-delivery-attempt", attempt.to_string());
        if let Some(secret) = &self.settings.secret {
            rb = rb.header(
                "x-cofre-signature",
                format!("sha256={}", signature(secret.expose_secret().as_bytes(), &body)),
            );
        }
        let resp = rb.body(body).send().await.map_err(|e| format!("{url}: {e}"))?;
        if resp.status().is_success() { Ok(()) } else { Err(format!("{url} answered {}", resp.status())) }
    }

    async fn mail(&self, smtp: &AsyncSmtpTransport<Tokio1Executor>, alert: &Alert) -> Result<(), String> {
        let s = &self.settings;
        let from: Mailbox =
            s.from.as_deref().unwrap_or_default().parse().map_err(|e| format!("from: {e}"))?;
        let mut b = Message::builder()
            .from(from)
            .subject(format!("[Cofre] {}", alert.summary))
            .message_id(Some(format!(
                "<{}.{}@cofre>",
                alert.id,
                s.name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
            )))
            .header(ContentType::TEXT_PLAIN);
        for to in &s.to {
            b = b.to(to.parse().map_err(|e| format!("to {to}: {e}"))?);
        }
        let msg = b.body(text(alert)).map_err(|e| e.to_string())?;
        smtp.send(msg)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP {}: {e}", s.smtp_host.as_deref().unwrap_or_default()))
    }
}

/// HMAC-SHA256 of `body` under `secret`, hex.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    hex::encode(ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), body).as_ref())
}

/// The alert as text, for chat and e-mail.
pub fn text(a: &Alert) -> String {
    let mut t = format!("[{}] {}\n", a.severity.as_str(), a.summary);
    for r in &a.reasons {
        t.push_str(&format!("- {r}\n"));
    }
    if let Some(g) = &a.group {
        t.push_str(&format!("group: {}\n", g.name));
    }
    if let Some(m) = &a.machine {
        t.push_str(&format!("machine: {} ({})\n", m.hostname, m.id));
    }
    if let Some(j) = &a.job {
        t.push_str(&format!("job: {} ({})\n", j.id, j.kind));
    }
    t.push_str(&format!(
        "at: {}\nalert: {} ({})\n",
        a.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        a.id,
        a.kind
    ));
    t
}
