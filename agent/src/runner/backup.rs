//! One backup job's work: the engine's inputs from the current plan (`prepare`), the policy's
//! before and after hooks with their environment and log, the backup in its child process
//! (stopped by a cancel) with its progress, and the result as reported (outcome, warnings,
//! statistics). Each
//! snapshot is tagged with its policy, its machine and its job (`cofre-job:<id>`).

use cofre_proto::agent::v1 as pb;
use secrecy::SecretString;
use tokio::sync::watch;
use uuid::Uuid;

use super::{Agent, JobRequest, ts};

impl Agent {
    /// Hooks and the backup, filling `finished`.
    pub(super) async fn run_backup(
        &self,
        job: &JobRequest,
        finished: &mut pb::JobFinished,
        stop: watch::Receiver<bool>,
    ) {
        let fail = |f: &mut pb::JobFinished, message: String, class: pb::RetryClass| {
            f.outcome = pb::JobOutcome::Failed as i32;
            f.error = Some(pb::JobError { message, retry_class: class as i32 });
        };
        let (target, req, repository_id) = match self.prepare(&job.policy_id, job.job_id) {
            Ok(p) => p,
            Err(msg) => return fail(finished, msg, pb::RetryClass::Permanent),
        };
        finished.repository_id = repository_id;
        let policy = self.policy(&job.policy_id).unwrap_or_default();
        let mut log = String::new();
        let mut hook_warnings = Vec::new();
        let mut engine_dropped = 0;
        if let Some(h) = &policy.before_hook {
            let r = crate::hooks::run(&self.hook_dir, h, &self.hook_env(job, &policy, None)).await;
            append_log(&mut log, &r);
            if !r.ok {
                match pb::HookOnFailure::try_from(h.on_failure).unwrap_or(pb::HookOnFailure::Fail) {
                    pb::HookOnFailure::SkipBackup => {
                        finished.outcome = pb::JobOutcome::Skipped as i32;
                        finished.warnings.push(r.summary);
                        finished.log = log;
                        return;
                    }
                    pb::HookOnFailure::Continue => hook_warnings.push(r.summary),
                    _ => {
                        finished.log = log;
                        return fail(finished, r.summary, pb::RetryClass::Temporary);
                    }
                }
            }
        }
        let child = crate::job_process::ChildJob::new(&target, &req, Some(self.state.root().join("cache")));
        let mut stop = stop;
        let cancelled = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        let on_progress = |sample| {
            self.progress.send_replace(Some(progress_event(job.job_id, &sample, self.now_utc())));
        };
        match crate::job_process::run(&child, cancelled, on_progress).await {
            Ok(report) => {
                tracing::info!(job.id = %job.job_id, snapshot = %report.snapshot_id,
                    files = report.files_processed, bytes_added = report.bytes_added,
                    warnings = report.warnings.len(), "backup finished");
                finished.warnings = report.warnings.clone();
                engine_dropped = report.warnings_dropped;
                finished.stats = Some(stats(&report));
                finished.outcome = pb::JobOutcome::Succeeded as i32;
            }
            Err(e) if e.cancelled => {
                tracing::info!(job.id = %job.job_id, "backup cancelled");
                finished.outcome = pb::JobOutcome::Cancelled as i32;
                finished.log = log;
                return;
            }
            Err(e) => {
                tracing::error!(job.id = %job.job_id, error = %e.message, "backup failed");
                fail(
                    finished,
                    e.message,
                    match e.retry_class {
                        cofre_engine::RetryClass::Temporary => pb::RetryClass::Temporary,
                        cofre_engine::RetryClass::Permanent => pb::RetryClass::Permanent,
                    },
                );
            }
        }
        if let Some(h) = &policy.after_hook {
            let outcome =
                if finished.outcome == pb::JobOutcome::Failed as i32 { "failed" } else { "succeeded" };
            let r = crate::hooks::run(&self.hook_dir, h, &self.hook_env(job, &policy, Some(outcome))).await;
            append_log(&mut log, &r);
            if !r.ok {
                match pb::HookOnFailure::try_from(h.on_failure).unwrap_or(pb::HookOnFailure::Fail) {
                    pb::HookOnFailure::Fail if finished.error.is_none() => {
                        // The snapshot stays recorded; the job still fails.
                        fail(finished, r.summary, pb::RetryClass::Temporary);
                    }
                    _ => hook_warnings.push(r.summary),
                }
            }
        }
        // Hooks' warnings first: when the list is cut, the thousandth unreadable file goes.
        hook_warnings.append(&mut finished.warnings);
        finished.warnings = crate::bounds::report_warnings(hook_warnings, engine_dropped);
        if finished.outcome == pb::JobOutcome::Succeeded as i32 && !finished.warnings.is_empty() {
            finished.outcome = pb::JobOutcome::SucceededWithWarnings as i32;
        }
        finished.log = log;
    }

    fn hook_env(
        &self,
        job: &JobRequest,
        p: &pb::PlanPolicy,
        outcome: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("COFRE_JOB_ID", job.job_id.to_string()),
            ("COFRE_POLICY_ID", p.id.clone()),
            ("COFRE_POLICY_NAME", p.name.clone()),
            ("COFRE_MACHINE_ID", self.machine_id.to_string()),
            ("COFRE_HOOK", if outcome.is_some() { "after" } else { "before" }.to_string()),
        ];
        if let Some(o) = outcome {
            env.push(("COFRE_BACKUP_OUTCOME", o.to_string()));
        }
        env
    }

    /// The engine's inputs for a policy of the current plan.
    pub(super) fn prepare(
        &self,
        policy_id: &str,
        job: Uuid,
    ) -> Result<(cofre_engine::RepoTarget, cofre_engine::BackupRequest, String), String> {
        let plan = self.plan.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let plan = plan.ok_or("no plan received yet")?;
        let policy = plan
            .policies
            .iter()
            .find(|p| p.id == policy_id)
            .ok_or_else(|| format!("policy {policy_id} is not in this machine's current plan"))?;
        let repo = plan
            .repositories
            .iter()
            .find(|r| r.id == policy.repository_id)
            .ok_or_else(|| format!("repository {} missing from the plan", policy.repository_id))?;
        if repo.restic_id.is_empty() {
            return Err("the plan's repository has no recorded restic id; refusing to write".into());
        }
        let ca_cert_file = if repo.ca_certificate_pem.is_empty() {
            None
        } else {
            Some(self.state.rest_ca_file(&repo.id, &repo.ca_certificate_pem).map_err(|e| e.to_string())?)
        };
        let target = cofre_engine::RepoTarget {
            url: repo.url.clone(),
            username: Some(repo.username.clone()).filter(|u| !u.is_empty()),
            password: Some(repo.password.clone()).filter(|p| !p.is_empty()).map(SecretString::from),
            repository_password: SecretString::from(repo.repository_password.clone()),
            ca_cert_file,
            // A cofre-store knows this machine by its certificate (identity.pem: certificate
            // and key in one file, replaced atomically on renewal).
            client_identity_file: repo.client_certificate.then(|| self.state.identity_pem_path()),
            allow_insecure_http: repo.allow_insecure_http,
        };
        // Cofre's own tags say which policy and machine made a snapshot (the controller's
        // retention keeps each policy's history by its own rules) and which job: the agent
        // finds a job's snapshot by it when it stopped before recording the result (`recover`).
        let mut tags = vec![
            "cofre".to_string(),
            format!("cofre-policy:{}", policy.id),
            machine_tag(self.machine_id),
            job_tag(job),
        ];
        tags.extend(policy.tags.iter().cloned());
        let req = cofre_engine::BackupRequest {
            expected_restic_id: repo.restic_id.clone(),
            paths: policy.paths.iter().map(std::path::PathBuf::from).collect(),
            excludes: policy.excludes.clone(),
            filters: cofre_engine::SourceFilters {
                iexcludes: policy.iexcludes.clone(),
                exclude_if_present: policy.exclude_if_present.clone(),
                exclude_larger_than: Some(policy.exclude_larger_than_bytes).filter(|b| *b > 0),
                one_file_system: policy.one_file_system,
            },
            hostname: self.hostname.clone(),
            tags,
            lock: cofre_engine::LockOptions {
                wait: crate::job_process::LOCK_WAIT,
                record: Some(self.lock_record(&job)),
                stale: Vec::new(),
            },
        };
        Ok((target, req, repo.id.clone()))
    }
}

/// A running backup's progress as sent (on a live session only, never spooled).
pub(super) fn progress_event(
    job: Uuid,
    sample: &cofre_engine::ProgressSample,
    at: chrono::DateTime<chrono::Utc>,
) -> pb::JobEvent {
    pb::JobEvent {
        event_id: Uuid::now_v7().to_string(),
        job_id: job.to_string(),
        kind: Some(pb::job_event::Kind::Progress(pb::JobProgress {
            files_done: sample.files_done,
            bytes_done: sample.bytes_done,
            files_total: sample.files_total,
            bytes_total: sample.bytes_total,
            sampled_at: Some(ts(at)),
        })),
    }
}

/// The tag naming the job that wrote a snapshot.
pub(super) fn job_tag(job: Uuid) -> String {
    format!("cofre-job:{job}")
}

/// The tag naming the machine that wrote a snapshot.
pub(super) fn machine_tag(machine: Uuid) -> String {
    format!("cofre-machine:{machine}")
}

fn append_log(log: &mut String, r: &crate::hooks::HookResult) {
    log.push_str(&format!("== {}\n", r.summary));
    if !r.output.is_empty() {
        log.push_str(&r.output);
        if !r.output.ends_with('\n') {
            log.push('\n');
        }
    }
}

pub(super) fn stats(r: &cofre_engine::BackupReport) -> pb::BackupStats {
    pb::BackupStats {
        snapshot_id: r.snapshot_id.clone(),
        files_new: r.files_new,
        files_changed: r.files_changed,
        files_unmodified: r.files_unmodified,
        dirs_new: r.dirs_new,
        dirs_changed: r.dirs_changed,
        dirs_unmodified: r.dirs_unmodified,
        files_processed: r.files_processed,
        bytes_processed: r.bytes_processed,
        bytes_added: r.bytes_added,
        bytes_added_packed: r.bytes_added_packed,
        snapshot_time: Some(ts(r.snapshot_time)),
        paths: r.paths.clone(),
        hostname: r.hostname.clone(),
        utc_offset_seconds: r.utc_offset_seconds,
        tags: r.tags.clone(),
    }
}
