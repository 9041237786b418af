//! The edge between the controller's rows and the REST API's wire types (`cofre-api`): every
//! answer is a `cofre-api` value made here from a domain value, so a column added to a table
//! never reaches the JSON by accident, and requests carrying secrets become domain values
//! holding them as secrets.

use cofre_api as api;

use crate::{enrollment, groups, jobs, machines, maintenance, plans, policies, repositories, stores};

impl From<machines::Machine> for api::machines::Machine {
    fn from(m: machines::Machine) -> Self {
        Self {
            id: m.id,
            hostname: m.hostname,
            display_name: m.display_name,
            os: m.os,
            arch: m.arch,
            agent_version: m.agent_version,
            group_id: m.group_id,
            group_name: m.group_name,
            status: m.status,
            enrolled_at: m.enrolled_at,
            approved_at: m.approved_at,
            revoked_at: m.revoked_at,
            last_seen_at: m.last_seen_at,
            plan_version: m.plan_version,
            storage_quota_bytes: m.storage_quota_bytes,
            last_backup_at: m.last_backup_at,
            last_result: m.last_result,
            last_result_at: m.last_result_at,
            last_error: m.last_error,
        }
    }
}

/// A page of domain values as a page of wire values.
pub fn page<D, W: From<D>>(p: machines::Page<D>) -> api::Page<W> {
    api::Page { items: p.items.into_iter().map(W::from).collect(), next_cursor: p.next_cursor }
}

impl From<jobs::Job> for api::jobs::Job {
    fn from(j: jobs::Job) -> Self {
        let progress = match (j.state == "running", j.progress, j.progress_at) {
            (true, Some(p), Some(at)) => Some(api::jobs::JobProgress {
                files_done: p.files_done,
                bytes_done: p.bytes_done,
                files_total: p.files_total,
                bytes_total: p.bytes_total,
                at,
            }),
            _ => None,
        };
        Self {
            id: j.id,
            machine_id: j.machine_id,
            hostname: j.hostname,
            policy_id: j.policy_id,
            restic_repository_id: j.restic_repository_id,
            kind: j.kind,
            trigger: j.trigger,
            state: j.state,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            overran_window: j.overran_window,
            cancel_requested_at: j.cancel_requested_at,
            snapshot_id: j.snapshot_id,
            stats: j.stats,
            warnings: j.warnings,
            error_message: j.error_message,
            retry_class: j.retry_class,
            log: j.log,
            // Only a running job has progress (a finished one's is cleared with its result).
            progress,
        }
    }
}

impl From<jobs::Snapshot> for api::jobs::Snapshot {
    fn from(s: jobs::Snapshot) -> Self {
        Self {
            snapshot_id: s.snapshot_id,
            restic_repository_id: s.restic_repository_id,
            machine_id: s.machine_id,
            job_id: s.job_id,
            time: s.time,
            hostname: s.hostname,
            paths: s.paths,
            bytes_processed: s.bytes_processed,
            bytes_added: s.bytes_added,
            policy_id: s.policy_id,
            tags: s.tags,
        }
    }
}

impl From<enrollment::TokenInfo> for api::enrollment::EnrollmentToken {
    fn from(t: enrollment::TokenInfo) -> Self {
        Self {
            id: t.id,
            description: t.description,
            group_id: t.group_id,
            uses_left: t.uses_left,
            requires_approval: t.requires_approval,
            expires_at: t.expires_at,
            created_at: t.created_at,
            revoked_at: t.revoked_at,
        }
    }
}

impl From<enrollment::CreatedToken> for api::enrollment::CreatedEnrollmentToken {
    fn from(t: enrollment::CreatedToken) -> Self {
        Self { info: t.info.into(), token: t.token, install_line: None }
    }
}

impl From<groups::Group> for api::groups::Group {
    fn from(g: groups::Group) -> Self {
        Self { id: g.id, name: g.name, created_at: g.created_at }
    }
}

impl From<repositories::Repository> for api::repositories::Repository {
    fn from(r: repositories::Repository) -> Self {
        Self {
            id: r.id,
            name: r.name,
            url: r.url,
            per_machine: r.per_machine,
            path_template: r.path_template,
            username: r.username,
            has_password: r.has_password,
            ca_certificate_pem: r.ca_certificate_pem,
            allow_insecure_http: r.allow_insecure_http,
            maintenance_url: r.maintenance_url,
            maintenance_username: r.maintenance_username,
            has_maintenance_password: r.has_maintenance_password,
            created_at: r.created_at,
        }
    }
}

impl From<api::repositories::NewRepository> for repositories::NewRepository {
    fn from(r: api::repositories::NewRepository) -> Self {
        Self {
            name: r.name,
            url: r.url,
            per_machine: r.per_machine,
            path_template: r.path_template,
            username: r.username,
            password: r.password.map(Into::into),
            ca_certificate_pem: r.ca_certificate_pem,
            allow_insecure_http: r.allow_insecure_http,
            maintenance_url: r.maintenance_url,
            maintenance_username: r.maintenance_username,
            maintenance_password: r.maintenance_password.map(Into::into),
        }
    }
}

impl From<maintenance::ResticRepository> for api::repositories::ResticRepository {
    fn from(r: maintenance::ResticRepository) -> Self {
        Self {
            id: r.id,
            repository_id: r.repository_id,
            machine_id: r.machine_id,
            hostname: r.hostname,
            url: r.url,
            restic_id: r.restic_id,
            init_error: r.init_error,
            initialised_at: r.initialised_at,
            snapshots: r.snapshots,
            last_forget: r.last_forget,
            last_prune: r.last_prune,
            last_check: r.last_check,
        }
    }
}

impl From<stores::Store> for api::stores::Store {
    fn from(s: stores::Store) -> Self {
        Self {
            id: s.id,
            name: s.name,
            url: s.url,
            status: s.status,
            store_version: s.store_version,
            access_list_version: s.access_list_version,
            created_at: s.created_at,
            token_expires_at: s.token_expires_at,
            enrolled_at: s.enrolled_at,
            last_seen_at: s.last_seen_at,
            revoked_at: s.revoked_at,
        }
    }
}

impl From<stores::CreatedStore> for api::stores::CreatedStore {
    fn from(s: stores::CreatedStore) -> Self {
        Self { store: s.store.into(), token: s.token }
    }
}

impl From<stores::inventory::RepositoryInventory> for api::stores::RepositoryInventory {
    fn from(r: stores::inventory::RepositoryInventory) -> Self {
        Self {
            path: r.path,
            url: r.url,
            restic_repository_id: r.restic_repository_id,
            machine_id: r.machine_id,
            size_bytes: r.size_bytes,
            data_objects: r.data_objects,
            index_objects: r.index_objects,
            snapshot_objects: r.snapshot_objects,
            key_objects: r.key_objects,
            lock_objects: r.lock_objects,
            has_config: r.has_config,
            last_snapshot_at: r.last_snapshot_at,
            unrecorded_snapshots: r.unrecorded_snapshots,
            reported_at: r.reported_at,
        }
    }
}

impl From<policies::Policy> for api::policies::Policy {
    fn from(p: policies::Policy) -> Self {
        Self {
            id: p.id,
            revision: p.revision,
            created_at: p.created_at,
            updated_at: p.updated_at,
            spec: p.spec,
        }
    }
}

impl From<policies::PolicyVersion> for api::policies::PolicyVersion {
    fn from(v: policies::PolicyVersion) -> Self {
        Self {
            policy_id: v.policy_id,
            revision: v.revision,
            changed_by: v.changed_by,
            changed_at: v.changed_at,
            spec: v.spec,
        }
    }
}

impl From<policies::Assignment> for api::policies::Assignment {
    fn from(a: policies::Assignment) -> Self {
        Self {
            id: a.id,
            policy_id: a.policy_id,
            machine_id: a.machine_id,
            group_id: a.group_id,
            created_at: a.created_at,
        }
    }
}

impl From<plans::StalePlan> for api::policies::StalePlan {
    fn from(s: plans::StalePlan) -> Self {
        Self {
            machine_id: s.machine_id,
            hostname: s.hostname,
            group_id: s.group_id,
            held_plan_version: s.held_plan_version,
            current_plan_version: s.current_plan_version,
            last_seen_at: s.last_seen_at,
        }
    }
}
