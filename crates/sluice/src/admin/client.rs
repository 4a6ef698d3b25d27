//! The command line's side of the admin interface: finds the running relay through the spool directory
//! (or `--admin-url`), sends the token, and turns HTTP failures into sentences an admin can act on.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;

use super::{DISCOVERY_FILE, Discovery, client_token};

pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// Finds the relay that uses `spool_dir` (its `admin.json`), unless `url` names one.
    pub fn discover(spool_dir: &Path, url: Option<&str>) -> anyhow::Result<AdminClient> {
        let path = spool_dir.join(DISCOVERY_FILE);
        let discovery = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Discovery>(&bytes)
                .with_context(|| format!("{} is not sluice's admin discovery file", path.display()))?,
            // `--admin-url` names the relay; the token then comes from the environment.
            Err(_) if url.is_some() => Discovery { url: String::new(), token_file: None, pid: 0 },
            Err(e) => bail!(
                "cannot read {}: {e}\n(is sluice running with this configuration, and its admin interface enabled?)",
                path.display()
            ),
        };
        let base = url.map(str::to_owned).unwrap_or_else(|| discovery.url.clone());
        let token = client_token(&discovery)?;
        Ok(AdminClient::new(base, token))
    }

    pub fn new(base: String, token: String) -> AdminClient {
        let tls = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let http = crate::oauth::http_client(&tls, Duration::from_secs(5), Duration::from_secs(60));
        AdminClient { base: base.trim_end_matches('/').to_owned(), token, http }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<T> {
        let request = self
            .http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?);
        self.send(request).await
    }

    /// DELETE with a JSON body (who asks and why, for the relay's log).
    pub async fn delete_with<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<T> {
        let request = self
            .http
            .delete(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?);
        self.send(request).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let response =
            request.bearer_auth(&self.token).send().await.with_context(|| {
                format!("cannot reach sluice's admin interface at {} (is sluice running?)", self.base)
            })?;
        let status = response.status();
        let body = response.bytes().await.context("the admin interface's answer was cut short")?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!("the admin interface refused the token (check admin.token_file or SLUICE_ADMIN_TOKEN)");
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            // The API answers errors as {"error": "..."}; anything else is shown as it came.
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| text.trim().to_owned());
            bail!("{message} (HTTP {status})");
        }
        serde_json::from_slice(&body).context("the admin interface answered something that is not the expected JSON")
    }
}
