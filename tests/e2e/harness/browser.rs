//! A real browser for the portal's tests: headless Chromium driven over WebDriver
//! (`chromedriver`, Debian's `chromium-driver`) with fantoccini, on loopback only.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use fantoccini::{Client, ClientBuilder, Locator};

use super::procs::{Proc, free_port, wait_until_async};

/// A headless Chromium session and the chromedriver behind it (killed on drop).
pub struct Browser {
    pub client: Client,
    _driver: Proc,
}

/// Which language the browser asks for (its `Accept-Language`).
pub fn chromedriver() -> Result<std::path::PathBuf> {
    for p in ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"] {
        if Path::new(p).is_file() {
            return Ok(p.into());
        }
    }
    anyhow::bail!(
        "chromedriver not found: install the Debian packages chromium and chromium-driver (tests/run.sh does)"
    )
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that prefers `accept_language`.
    pub async fn start(log_dir: &Path, accept_language: &str) -> Result<Browser> {
        let port = free_port();
        let mut cmd = std::process::Command::new(chromedriver()?);
        cmd.arg(format!("--port={port}")).arg("--allowed-ips=127.0.0.1");
        let driver = Proc::spawn("chromedriver", cmd, log_dir)?;
        let url = format!("http://127.0.0.1:{port}");
        let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--lang={accept_language}"),
                ],
                "prefs": { "intl.accept_languages": accept_language },
            },
        }))?;
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = wait_until_async(
            "chromedriver answers",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let (url, caps, connector) = (url.clone(), caps.clone(), connector.clone());
                async move {
                    ClientBuilder::new(connector)
                        .capabilities(caps)
                        .connect(&url)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await?;
        Ok(Browser { client, _driver: driver })
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client.goto(url).await.with_context(|| format!("opening {url}"))
    }

    /// The text of the element `css` selects.
    pub async fn text(&self, css: &str) -> Result<String> {
        let e = self.client.find(Locator::Css(css)).await.with_context(|| format!("finding {css}"))?;
        Ok(e.text().await?)
    }

    /// Whether `css` selects anything on the page.
    pub async fn has(&self, css: &str) -> Result<bool> {
        Ok(!self.client.find_all(Locator::Css(css)).await?.is_empty())
    }

    /// Types into a field (after clearing it).
    pub async fn fill(&self, css: &str, value: &str) -> Result<()> {
        let e = self.client.find(Locator::Css(css)).await.with_context(|| format!("finding {css}"))?;
        e.clear().await?;
        e.send_keys(value).await?;
        Ok(())
    }

    /// Ticks the checkbox `css` selects (a click that loads no page).
    pub async fn tick(&self, css: &str) -> Result<()> {
        let e = self.client.find(Locator::Css(css)).await.with_context(|| format!("finding {css}"))?;
        if !e.is_selected().await? {
            e.click().await?;
        }
        Ok(())
    }

    /// Chooses the option whose value is `value` in the select `css` selects.
    pub async fn select(&self, css: &str, value: &str) -> Result<()> {
        let e = self.client.find(Locator::Css(css)).await.with_context(|| format!("finding {css}"))?;
        e.select_by_value(value).await.with_context(|| format!("choosing {value} in {css}"))?;
        Ok(())
    }

    /// Clicks something that navigates (a link, a form's button) and waits until the next page
    /// has loaded; a click that loads no page within a minute is an error here, not a wrong page
    /// read by the next step.
    pub async fn click(&self, css: &str) -> Result<()> {
        let before = self.client.current_url().await?;
        let marker = self
            .eval("window.__cofre_page = (window.__cofre_page || 0) + 1; return window.__cofre_page", vec![])
            .await?;
        let e = self.client.find(Locator::Css(css)).await.with_context(|| format!("finding {css}"))?;
        e.click().await?;
        // A new page has no marker; wait for it.
        wait_until_async(
            &format!("the page after clicking {css} loads"),
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async {
                let state = self
                    .eval("return [document.readyState, window.__cofre_page || 0]", vec![])
                    .await
                    .map_err(|e| e.to_string())?;
                let loaded = state[0].as_str() == Some("complete") && state[1] != marker;
                if loaded { Ok(()) } else { Err(format!("{state} after {before}")) }
            },
        )
        .await?;
        Ok(())
    }

    /// The page's path and query.
    pub async fn path(&self) -> Result<String> {
        let u = self.client.current_url().await?;
        Ok(match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        })
    }

    /// The page's HTML as the browser holds it.
    pub async fn source(&self) -> Result<String> {
        Ok(self.client.source().await?)
    }

    /// Runs a script in the page and returns its JSON result.
    pub async fn eval(&self, script: &str, args: Vec<serde_json::Value>) -> Result<serde_json::Value> {
        Ok(self.client.execute(script, args).await?)
    }

    /// The value of a cookie the browser holds for this site.
    pub async fn cookie(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .client
            .get_all_cookies()
            .await?
            .into_iter()
            .find(|c| c.name() == name)
            .map(|c| c.value().to_string()))
    }

    /// A PNG of the page.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        Ok(self.client.screenshot().await?)
    }

    /// True when a JavaScript dialog (alert) is open.
    pub async fn alert_open(&self) -> bool {
        self.client.get_alert_text().await.is_ok()
    }

    pub async fn close(self) -> Result<()> {
        self.client.close().await?;
        Ok(())
    }
}
