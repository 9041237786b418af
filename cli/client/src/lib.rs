//! The one way code talks to Cofre's REST API (`/api/v1`): the `cofre` CLI, the end-to-end
//! tests and later the portal tests and the fleet simulator all use this client. Errors keep
//! the server's RFC 9457 problem details.

mod types;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub use cofre_api;
pub use types::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status}: {detail}")]
    Api { status: StatusCode, title: String, detail: String, errors: Vec<FieldError> },
    #[error("cannot reach the controller: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("invalid URL: {0}")]
    Url(#[from] url::ParseError),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// An error answer: its problem details, or the plain text when it has none.
fn api_error(status: StatusCode, text: String) -> ClientError {
    let p: Problem = serde_json::from_str(&text).unwrap_or(Problem {
        kind: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("error").into(),
        status: status.as_u16(),
        detail: text,
        errors: Vec::new(),
    });
    ClientError::Api { status, title: p.title, detail: p.detail, errors: p.errors }
}

#[derive(Debug, Clone)]
pub struct Client {
    base: url::Url,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// `base` is the controller's HTTP address, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str) -> Result<Self> {
        Self::with_ca(base, None)
    }

    /// Like [`Client::new`], trusting `ca_pem` (a private CA) for an `https://` controller.
    pub fn with_ca(base: &str, ca_pem: Option<&[u8]>) -> Result<Self> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(pem) = ca_pem {
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
        }
        Ok(Self { base: url::Url::parse(base)?, http: builder.build()?, token: None })
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn set_token(&mut self, token: impl Into<String>) {
        self.token = Some(token.into());
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Logs in with a password and keeps the access token. The answer also holds the
    /// session's refresh token (single use) for [`Client::refresh`].
    pub async fn login(&mut self, username: &str, password: &str) -> Result<Session> {
        let body = cofre_api::users::Login { username: username.into(), password: password.into() };
        let r: Session = self.request(Method::POST, "/api/v1/auth/login", Some(&body), &[]).await?;
        self.token = Some(r.access_token.clone());
        Ok(r)
    }

    /// Trades a refresh token for a new access token (kept) and the session's next refresh
    /// token (in the answer; the one given is used up).
    pub async fn refresh(&mut self, refresh_token: &str) -> Result<Session> {
        let body = cofre_api::users::Refresh { refresh_token: refresh_token.into() };
        let r: Session = self.request(Method::POST, "/api/v1/auth/refresh", Some(&body), &[]).await?;
        self.token = Some(r.access_token.clone());
        Ok(r)
    }

    /// A raw request: status and body, without interpreting errors (for tests of error paths).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, String)> {
        let mut rb = self.http.request(method, self.base.join(path)?);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await?;
        let status = resp.status();
        Ok((status, resp.text().await?))
    }

    async fn request<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        headers: &[(&str, &str)],
    ) -> Result<T> {
        let mut rb = self.http.request(method, self.base.join(path)?);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await?;
        let status = resp.status();
        if status.is_success() {
            if status == StatusCode::NO_CONTENT {
                return serde_json::from_value(serde_json::Value::Null).map_err(|_| ClientError::Api {
                    status,
                    title: "unexpected empty response".into(),
                    detail: String::new(),
                    errors: Vec::new(),
                });
            }
            return Ok(resp.json().await?);
        }
        Err(api_error(status, resp.text().await.unwrap_or_default()))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.request::<(), T>(Method::GET, path, None, &[]).await
    }

    /// A GET whose answer is not JSON (CSV, a tar file): its bytes. Errors are read as for
    /// every other request.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let mut rb = self.http.get(self.base.join(path)?);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        let resp = rb.send().await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(api_error(status, resp.text().await.unwrap_or_default()));
        }
        Ok(resp.bytes().await?.to_vec())
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.request(Method::POST, path, Some(body), &[]).await
    }

    pub async fn create_enrollment_token(&self, req: &NewEnrollmentToken) -> Result<CreatedEnrollmentToken> {
        self.post("/api/v1/enrollment-tokens", req).await
    }

    pub async fn list_enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>> {
        let l: Items<EnrollmentToken> = self.get("/api/v1/enrollment-tokens").await?;
        Ok(l.items)
    }

    pub async fn revoke_enrollment_token(&self, id: Uuid) -> Result<()> {
        self.request::<(), ()>(Method::DELETE, &format!("/api/v1/enrollment-tokens/{id}"), None, &[]).await
    }

    /// Deletes a group nothing belongs to (409 saying what still does, otherwise).
    pub async fn delete_group(&self, id: Uuid) -> Result<()> {
        self.request::<(), ()>(Method::DELETE, &format!("/api/v1/groups/{id}"), None, &[]).await
    }

    /// Changes a repository's name or credentials (absent fields stay; `Some(None)` clears).
    pub async fn update_repository(
        &self,
        id: Uuid,
        req: &cofre_api::repositories::UpdateRepository,
    ) -> Result<Repository> {
        self.request(Method::PUT, &format!("/api/v1/repositories/{id}"), Some(req), &[]).await
    }

    /// Deletes a repository definition nothing uses.
    pub async fn delete_repository(&self, id: Uuid) -> Result<()> {
        self.request::<(), ()>(Method::DELETE, &format!("/api/v1/repositories/{id}"), None, &[]).await
    }

    pub async fn create_group(&self, name: &str) -> Result<Group> {
        self.post("/api/v1/groups", &serde_json::json!({ "name": name })).await
    }

    pub async fn list_groups(&self) -> Result<Vec<Group>> {
        let l: Items<Group> = self.get("/api/v1/groups").await?;
        Ok(l.items)
    }

    pub async fn get_repository(&self, id: Uuid) -> Result<Repository> {
        self.get(&format!("/api/v1/repositories/{id}")).await
    }

    pub async fn list_repositories(&self) -> Result<Vec<Repository>> {
        let l: Items<Repository> = self.get("/api/v1/repositories").await?;
        Ok(l.items)
    }

    pub async fn create_repository(&self, req: &NewRepository) -> Result<Repository> {
        self.post("/api/v1/repositories", req).await
    }

    pub async fn create_policy(&self, spec: &PolicySpec) -> Result<Policy> {
        self.post("/api/v1/policies", spec).await
    }

    /// Replaces a policy's spec; `if_revision` guards against overwriting someone else's edit.
    pub async fn update_policy(
        &self,
        id: Uuid,
        spec: &PolicySpec,
        if_revision: Option<i64>,
    ) -> Result<Policy> {
        let etag = if_revision.map(|r| format!("\"rev-{r}\""));
        let headers: Vec<(&str, &str)> = etag.as_deref().map(|e| ("If-Match", e)).into_iter().collect();
        self.request(Method::PUT, &format!("/api/v1/policies/{id}"), Some(spec), &headers).await
    }

    pub async fn list_policies(&self) -> Result<Vec<Policy>> {
        let l: Items<Policy> = self.get("/api/v1/policies").await?;
        Ok(l.items)
    }

    pub async fn get_policy(&self, id: Uuid) -> Result<Policy> {
        self.get(&format!("/api/v1/policies/{id}")).await
    }

    pub async fn policy_versions(&self, id: Uuid) -> Result<Vec<PolicyVersion>> {
        let l: Items<PolicyVersion> = self.get(&format!("/api/v1/policies/{id}/versions")).await?;
        Ok(l.items)
    }

    pub async fn policy_diff(&self, id: Uuid, from: i64, to: i64) -> Result<PolicyDiff> {
        self.get(&format!("/api/v1/policies/{id}/diff?from={from}&to={to}")).await
    }

    pub async fn list_assignments(&self, policy: Uuid) -> Result<Vec<Assignment>> {
        let l: Items<Assignment> = self.get(&format!("/api/v1/policies/{policy}/assignments")).await?;
        Ok(l.items)
    }

    pub async fn unassign_policy(&self, policy: Uuid, assignment: Uuid) -> Result<()> {
        self.request::<(), ()>(
            Method::DELETE,
            &format!("/api/v1/policies/{policy}/assignments/{assignment}"),
            None,
            &[],
        )
        .await
    }

    /// Machines whose agent does not hold the plan the controller computes now.
    pub async fn stale_plans(&self) -> Result<Vec<StalePlan>> {
        let l: Items<StalePlan> = self.get("/api/v1/plans/stale").await?;
        Ok(l.items)
    }

    /// Asks a queued or running job to stop.
    /// GET `path` with query parameters (absent values left out).
    pub async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, Option<String>)],
    ) -> Result<T> {
        let mut url = self.base.join(path)?;
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                if let Some(v) = v {
                    pairs.append_pair(k, v);
                }
            }
        }
        let rel = match url.query() {
            Some(q) if !q.is_empty() => format!("{}?{q}", url.path()),
            _ => url.path().to_string(),
        };
        self.get(&rel).await
    }

    /// One page of audit events, newest first.
    pub async fn audit_events(&self, filter: &AuditFilter) -> Result<cofre_api::audit::EventPage> {
        let q = [
            ("actor", filter.actor.clone()),
            ("action", filter.action.clone()),
            ("target_type", filter.target_type.clone()),
            ("target_id", filter.target_id.clone()),
            ("from", filter.from.map(|t| t.to_rfc3339())),
            ("to", filter.to.map(|t| t.to_rfc3339())),
            ("cursor", filter.cursor.clone()),
            ("limit", filter.limit.map(|l| l.to_string())),
        ];
        self.get_query("/api/v1/audit/events", &q).await
    }

    /// Recomputes the audit chain and its checkpoints on the controller.
    pub async fn audit_verify(&self) -> Result<cofre_api::audit::Report> {
        self.get("/api/v1/audit/verify").await
    }

    pub async fn audit_checkpoints(&self) -> Result<cofre_api::audit::Checkpoints> {
        self.get("/api/v1/audit/checkpoints").await
    }

    /// Signs the chain head now.
    pub async fn make_audit_checkpoint(&self) -> Result<cofre_api::audit::MadeCheckpoint> {
        self.post("/api/v1/audit/checkpoints", &serde_json::json!({})).await
    }

    /// Every machine's compliance now (`group`, `status` filter).
    pub async fn compliance(
        &self,
        group: Option<Uuid>,
        status: Option<&str>,
    ) -> Result<Vec<cofre_api::compliance::MachineCompliance>> {
        let q = [("group", group.map(|g| g.to_string())), ("status", status.map(str::to_string))];
        let l: cofre_api::compliance::Report = self.get_query("/api/v1/compliance", &q).await?;
        Ok(l.items)
    }

    /// The same report as CSV text.
    pub async fn compliance_csv(&self, group: Option<Uuid>, status: Option<&str>) -> Result<String> {
        let mut q = vec!["format=csv".to_string()];
        q.extend(group.map(|g| format!("group={g}")));
        q.extend(status.map(|s| format!("status={s}")));
        let bytes = self.get_bytes(&format!("/api/v1/compliance?{}", q.join("&"))).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Roll-ups per group and for the fleet.
    pub async fn compliance_summary(&self) -> Result<cofre_api::compliance::Summary> {
        self.get("/api/v1/compliance/summary").await
    }

    /// Days of a group (or the fleet), oldest first.
    pub async fn compliance_days(
        &self,
        group: Option<Uuid>,
        from: Option<chrono::NaiveDate>,
        to: Option<chrono::NaiveDate>,
    ) -> Result<Vec<cofre_api::compliance::Day>> {
        let q = [
            ("group", group.map(|g| g.to_string())),
            ("from", from.map(|d| d.to_string())),
            ("to", to.map(|d| d.to_string())),
        ];
        let l: Items<cofre_api::compliance::Day> = self.get_query("/api/v1/compliance/days", &q).await?;
        Ok(l.items)
    }

    /// A machine's changes of status over a period, with the time spent in each.
    pub async fn machine_compliance_history(
        &self,
        machine: Uuid,
        from: Option<chrono::DateTime<chrono::Utc>>,
        to: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<cofre_api::compliance::MachineHistory> {
        let q = [("from", from.map(|t| t.to_rfc3339())), ("to", to.map(|t| t.to_rfc3339()))];
        self.get_query(&format!("/api/v1/machines/{machine}/compliance/history"), &q).await
    }

    /// A signed evidence pack (tar bytes) for the days `from`..=`to` and a group (None: the
    /// fleet).
    pub async fn evidence_pack(
        &self,
        group: Option<Uuid>,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<Vec<u8>> {
        let mut q = vec![format!("from={from}"), format!("to={to}")];
        q.extend(group.map(|g| format!("group={g}")));
        self.get_bytes(&format!("/api/v1/evidence?{}", q.join("&"))).await
    }

    /// Alerts raised since `since`, newest first, with their deliveries.
    pub async fn alerts(
        &self,
        group: Option<Uuid>,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<cofre_api::alerts::AlertRecord>> {
        let q = [("group", group.map(|g| g.to_string())), ("since", since.map(|t| t.to_rfc3339()))];
        let l: Items<cofre_api::alerts::AlertRecord> = self.get_query("/api/v1/alerts", &q).await?;
        Ok(l.items)
    }

    /// Ends this client's access token (from `login`) before it expires.
    pub async fn logout(&self) -> Result<()> {
        self.request(Method::POST, "/api/v1/auth/logout", Some(&serde_json::json!({})), &[]).await
    }

    /// The signed-in user.
    pub async fn me(&self) -> Result<cofre_api::users::User> {
        self.get("/api/v1/me").await
    }

    pub async fn list_users(&self) -> Result<Vec<cofre_api::users::User>> {
        let l: Items<cofre_api::users::User> = self.get("/api/v1/users").await?;
        Ok(l.items)
    }

    /// Creates a user; without a password one is generated and returned once.
    pub async fn create_user(
        &self,
        req: &cofre_api::users::NewUser,
    ) -> Result<cofre_api::users::UserWithPassword> {
        self.post("/api/v1/users", req).await
    }

    pub async fn update_user(
        &self,
        id: Uuid,
        req: &cofre_api::users::UpdateUser,
    ) -> Result<cofre_api::users::User> {
        self.request(Method::PUT, &format!("/api/v1/users/{id}"), Some(req), &[]).await
    }

    /// Disables (`true`) or enables a user; a disabled user's tokens stop working at once.
    pub async fn set_user_disabled(&self, id: Uuid, disabled: bool) -> Result<cofre_api::users::User> {
        let verb = if disabled { "disable" } else { "enable" };
        self.post(&format!("/api/v1/users/{id}/{verb}"), &serde_json::json!({})).await
    }

    /// Sets a password, or generates one (returned once) when `password` is None.
    pub async fn reset_user_password(
        &self,
        id: Uuid,
        password: Option<String>,
    ) -> Result<cofre_api::users::UserWithPassword> {
        self.post(&format!("/api/v1/users/{id}/password"), &cofre_api::users::NewPassword { password }).await
    }

    /// Creates an API token for the signed-in user (its secret is in the answer, once).
    pub async fn create_api_token(
        &self,
        req: &cofre_api::users::NewApiToken,
    ) -> Result<cofre_api::users::CreatedApiToken> {
        self.post("/api/v1/api-tokens", req).await
    }

    /// The signed-in user's API tokens (`all`: everyone's, for fleet-wide admins).
    pub async fn list_api_tokens(&self, all: bool) -> Result<Vec<cofre_api::users::ApiToken>> {
        let l: Items<cofre_api::users::ApiToken> = self.get(&format!("/api/v1/api-tokens?all={all}")).await?;
        Ok(l.items)
    }

    pub async fn revoke_api_token(&self, id: Uuid) -> Result<cofre_api::users::ApiToken> {
        self.request::<(), _>(Method::DELETE, &format!("/api/v1/api-tokens/{id}"), None, &[]).await
    }

    /// Every job the caller may see matching `f`, newest first (all pages).
    pub async fn list_all_jobs(&self, f: &JobFilter) -> Result<Vec<Job>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = [
                ("machine", f.machine.map(|m| m.to_string())),
                ("policy", f.policy.map(|p| p.to_string())),
                ("kind", f.kind.clone()),
                ("state", f.state.clone()),
                ("from", f.from.map(|t| t.to_rfc3339())),
                ("to", f.to.map(|t| t.to_rfc3339())),
                ("limit", Some("500".to_string())),
                ("cursor", cursor.clone()),
            ];
            let page: Page<Job> = self.get_query("/api/v1/jobs", &q).await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Renames a machine or moves it to another group.
    pub async fn update_machine(
        &self,
        id: Uuid,
        req: &cofre_api::machines::UpdateMachine,
    ) -> Result<Machine> {
        self.request(Method::PUT, &format!("/api/v1/machines/{id}"), Some(req), &[]).await
    }

    /// Decommissions a machine: it keeps its repository and snapshots, stops its schedules and
    /// loses its certificates; it leaves the compliance reports.
    pub async fn decommission_machine(&self, id: Uuid) -> Result<Machine> {
        self.post(&format!("/api/v1/machines/{id}/decommission"), &serde_json::json!({})).await
    }

    pub async fn cancel_job(&self, id: Uuid) -> Result<Job> {
        self.post(&format!("/api/v1/jobs/{id}/cancel"), &serde_json::json!({})).await
    }

    pub async fn list_restic_repositories(&self, machine: Option<Uuid>) -> Result<Vec<ResticRepository>> {
        let path = match machine {
            Some(m) => format!("/api/v1/restic-repositories?machine={m}"),
            None => "/api/v1/restic-repositories".to_string(),
        };
        let l: Items<ResticRepository> = self.get(&path).await?;
        Ok(l.items)
    }

    /// Queues forget, prune or check of a restic repository now; `dry_run` (forget only)
    /// removes nothing and reports what it would remove.
    pub async fn run_maintenance(&self, restic_repository: Uuid, kind: &str, dry_run: bool) -> Result<Job> {
        self.post(
            &format!("/api/v1/restic-repositories/{restic_repository}/maintenance"),
            &serde_json::json!({ "kind": kind, "dry_run": dry_run }),
        )
        .await
    }

    /// Maintenance jobs, newest first (`kind`: forget, prune or check).
    pub async fn maintenance_jobs(&self, kind: Option<&str>, state: Option<&str>) -> Result<Vec<Job>> {
        let mut q = vec!["limit=1000".to_string()];
        q.extend(kind.map(|k| format!("kind={k}")));
        q.extend(state.map(|s| format!("state={s}")));
        let page: Page<Job> = self.get(&format!("/api/v1/maintenance/jobs?{}", q.join("&"))).await?;
        Ok(page.items)
    }

    pub async fn assign_policy_to_machine(&self, policy: Uuid, machine: Uuid) -> Result<Assignment> {
        self.post(
            &format!("/api/v1/policies/{policy}/assignments"),
            &serde_json::json!({ "machine_id": machine }),
        )
        .await
    }

    pub async fn assign_policy_to_group(&self, policy: Uuid, group: Uuid) -> Result<Assignment> {
        self.post(
            &format!("/api/v1/policies/{policy}/assignments"),
            &serde_json::json!({ "group_id": group }),
        )
        .await
    }

    pub async fn list_machines(&self) -> Result<Vec<Machine>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/v1/machines?limit=500&cursor={c}"),
                None => "/api/v1/machines?limit=500".to_string(),
            };
            let page: Page<Machine> = self.get(&path).await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    pub async fn get_machine(&self, id: Uuid) -> Result<Machine> {
        self.get(&format!("/api/v1/machines/{id}")).await
    }

    pub async fn approve_machine(&self, id: Uuid) -> Result<Machine> {
        self.post(&format!("/api/v1/machines/{id}/approve"), &serde_json::json!({})).await
    }

    pub async fn revoke_machine(&self, id: Uuid) -> Result<Machine> {
        self.post(&format!("/api/v1/machines/{id}/revoke"), &serde_json::json!({})).await
    }

    /// Queues a backup now. With an idempotency key, retrying returns the same job.
    pub async fn run_now(&self, machine: Uuid, policy: Uuid, idempotency_key: Option<&str>) -> Result<Job> {
        let headers: Vec<(&str, &str)> =
            idempotency_key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        self.request(
            Method::POST,
            &format!("/api/v1/machines/{machine}/jobs"),
            Some(&serde_json::json!({ "policy_id": policy })),
            &headers,
        )
        .await
    }

    pub async fn get_job(&self, id: Uuid) -> Result<Job> {
        self.get(&format!("/api/v1/jobs/{id}")).await
    }

    pub async fn list_jobs(&self, machine: Uuid) -> Result<Vec<Job>> {
        let page: Page<Job> = self.get(&format!("/api/v1/machines/{machine}/jobs?limit=1000")).await?;
        Ok(page.items)
    }

    pub async fn list_snapshots(&self, machine: Uuid) -> Result<Vec<Snapshot>> {
        let l: Items<Snapshot> = self.get(&format!("/api/v1/machines/{machine}/snapshots")).await?;
        Ok(l.items)
    }

    /// Registers a cofre-store; the answer holds its one-time enrollment token.
    pub async fn create_store(&self, name: &str, url: &str) -> Result<CreatedStore> {
        self.post("/api/v1/stores", &serde_json::json!({ "name": name, "url": url })).await
    }

    pub async fn list_stores(&self) -> Result<Vec<Store>> {
        let l: Items<Store> = self.get("/api/v1/stores").await?;
        Ok(l.items)
    }

    pub async fn get_store(&self, id: Uuid) -> Result<Store> {
        self.get(&format!("/api/v1/stores/{id}")).await
    }

    pub async fn revoke_store(&self, id: Uuid) -> Result<Store> {
        self.post(&format!("/api/v1/stores/{id}/revoke"), &serde_json::json!({})).await
    }

    pub async fn store_inventory(&self, id: Uuid) -> Result<Vec<RepositoryInventory>> {
        let l: Items<RepositoryInventory> = self.get(&format!("/api/v1/stores/{id}/inventory")).await?;
        Ok(l.items)
    }

    /// Sets a machine's storage quota on cofre-store (`None`: no limit).
    pub async fn set_machine_quota(&self, machine: Uuid, bytes: Option<u64>) -> Result<()> {
        self.request(
            Method::PUT,
            &format!("/api/v1/machines/{machine}/quota"),
            Some(&serde_json::json!({ "storage_quota_bytes": bytes })),
            &[],
        )
        .await
    }

    /// Sets a group's storage quota on cofre-store (`None`: no limit).
    pub async fn set_group_quota(&self, group: Uuid, bytes: Option<u64>) -> Result<()> {
        self.request(
            Method::PUT,
            &format!("/api/v1/groups/{group}/quota"),
            Some(&serde_json::json!({ "storage_quota_bytes": bytes })),
            &[],
        )
        .await
    }

    /// Polls a job until it reaches a final state.
    pub async fn wait_for_job(&self, id: Uuid, timeout: Duration) -> Result<Job> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let job = self.get_job(id).await?;
            if job.is_final() {
                return Ok(job);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout(format!("job {id} still {} after {timeout:?}", job.state)));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
