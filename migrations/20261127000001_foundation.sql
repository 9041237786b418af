-- Cofre foundation schema. Never edit once landed: add a new migration instead.
--
-- Two roles: the owner (who runs `cofre-controller migrate`) owns every object; `serve` connects
-- as a login role that is a member of the NOLOGIN group role `cofre_app`. The app role may not
-- UPDATE, DELETE or TRUNCATE the audit log or job results: those are insert-only.

-- Roles are cluster-wide: another database's migration may create it at the same moment.
do $$
begin
    if not exists (select from pg_roles where rolname = 'cofre_app') then
        create role cofre_app nologin;
    end if;
exception when duplicate_object or unique_violation then
    null;
end
$$;

-- Key material (CA key, JWT signing key, audit signing key), sealed under the master key.
create table server_keys (
    name        text primary key,
    key_id      text not null,
    sealed      bytea not null,
    public_pem  text,
    created_at  timestamptz not null default now()
);

create table groups (
    id          uuid primary key,
    name        text not null unique check (length(name) between 1 and 100 and name ~ '^[a-z0-9][a-z0-9_-]*$'),
    created_at  timestamptz not null default now()
);

create table users (
    id              uuid primary key,
    username        text not null unique,
    password_hash   text not null,
    role            text not null check (role in ('admin', 'operator', 'auditor')),
    -- A user limited to one group (department) sees only that group's machines; null: fleet-wide.
    group_id        uuid references groups (id),
    created_at      timestamptz not null default now()
);

create table enrollment_tokens (
    id                  uuid primary key,
    secret_hash         bytea not null,
    description         text not null default '',
    group_id            uuid references groups (id),
    uses_left           integer not null check (uses_left >= 0),
    requires_approval   boolean not null default false,
    expires_at          timestamptz not null,
    created_by          uuid references users (id),
    created_at          timestamptz not null default now(),
    revoked_at          timestamptz
);

create table machines (
    id              uuid primary key,
    hostname        text not null,
    os              text not null default '',
    arch            text not null default '',
    agent_version   text not null default '',
    group_id        uuid references groups (id),
    status          text not null check (status in ('pending', 'active', 'revoked', 'decommissioned')),
    enrolled_at     timestamptz not null default now(),
    enrolled_with   uuid references enrollment_tokens (id),
    approved_at     timestamptz,
    revoked_at      timestamptz,
    last_seen_at    timestamptz,
    plan_version    bigint not null default 0
);

create table certificates (
    serial      text primary key,
    machine_id  uuid not null references machines (id),
    not_before  timestamptz not null,
    not_after   timestamptz not null,
    issued_at   timestamptz not null default now(),
    revoked_at  timestamptz
);
create index certificates_machine on certificates (machine_id);

-- A repository as the admin defines it: a REST server location plus storage credentials.
-- per_machine: every machine using it gets its own restic repository at url/path_template.
create table repositories (
    id                  uuid primary key,
    name                text not null unique,
    url                 text not null,
    per_machine         boolean not null default true,
    path_template       text not null default '{machine}',
    username            text,
    sealed_password     bytea,
    ca_certificate_pem  text,
    allow_insecure_http boolean not null default false,
    created_at          timestamptz not null default now()
);

-- The restic repositories that actually exist: one per (repository, machine) when per_machine,
-- or one with machine_id null for a shared repository. Created and initialised by the controller.
create table restic_repositories (
    id                          uuid primary key,
    repository_id               uuid not null references repositories (id),
    machine_id                  uuid references machines (id),
    url                         text not null,
    sealed_repository_password  bytea not null,
    restic_id                   text,
    init_error                  text,
    created_at                  timestamptz not null default now(),
    initialised_at              timestamptz
);
create unique index restic_repositories_per_machine on restic_repositories (repository_id, machine_id) where machine_id is not null;
create unique index restic_repositories_shared on restic_repositories (repository_id) where machine_id is null;

create table policies (
    id                  uuid primary key,
    name                text not null unique,
    repository_id       uuid not null references repositories (id),
    paths               text[] not null check (cardinality(paths) > 0),
    excludes            text[] not null default '{}',
    interval_seconds    bigint not null check (interval_seconds >= 0),
    revision            bigint not null default 1,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now()
);

create table policy_assignments (
    id          uuid primary key,
    policy_id   uuid not null references policies (id),
    machine_id  uuid references machines (id),
    group_id    uuid references groups (id),
    created_at  timestamptz not null default now(),
    check ((machine_id is null) <> (group_id is null))
);
create unique index policy_assignments_machine on policy_assignments (policy_id, machine_id) where machine_id is not null;
create unique index policy_assignments_group on policy_assignments (policy_id, group_id) where group_id is not null;

create table jobs (
    id              uuid primary key,
    machine_id      uuid not null references machines (id),
    policy_id       uuid references policies (id),
    kind            text not null check (kind in ('backup')),
    trigger         text not null check (trigger in ('schedule', 'run_now')),
    state           text not null check (state in ('queued', 'running', 'succeeded', 'warning', 'failed', 'interrupted')),
    requested_by    uuid references users (id),
    idempotency_key text,
    created_at      timestamptz not null default now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
create index jobs_machine on jobs (machine_id, id desc);
create index jobs_queued on jobs (machine_id) where state = 'queued';
create unique index jobs_idempotency on jobs (requested_by, idempotency_key) where idempotency_key is not null;

-- Insert-only: the result of a job as the agent reported it. One per job; event_id makes a
-- redelivered result a no-op.
create table job_results (
    job_id          uuid primary key references jobs (id),
    event_id        uuid not null unique,
    outcome         text not null check (outcome in ('succeeded', 'warning', 'failed', 'interrupted')),
    snapshot_id     text,
    stats           jsonb not null default '{}',
    warnings        text[] not null default '{}',
    error_message   text,
    retry_class     text check (retry_class in ('temporary', 'permanent')),
    started_at      timestamptz,
    finished_at     timestamptz not null,
    received_at     timestamptz not null default now()
);

create table snapshots (
    restic_repository_id    uuid not null references restic_repositories (id),
    snapshot_id             text not null,
    machine_id              uuid not null references machines (id),
    job_id                  uuid references jobs (id),
    time                    timestamptz not null,
    hostname                text not null,
    paths                   text[] not null,
    bytes_processed         bigint,
    bytes_added             bigint,
    recorded_at             timestamptz not null default now(),
    primary key (restic_repository_id, snapshot_id)
);
create index snapshots_machine on snapshots (machine_id, time desc);

-- Insert-only, hash-chained: seq is gapless (allocated under a transaction-scoped advisory lock).
create table audit_events (
    seq         bigint primary key,
    at          timestamptz not null,
    actor       text not null,
    action      text not null,
    target_type text not null,
    target_id   text not null,
    details     jsonb not null,
    prev_hash   bytea not null,
    hash        bytea not null
);

grant select on all tables in schema public to cofre_app;
grant insert, update, delete on
    groups, users, enrollment_tokens, machines, certificates, repositories,
    restic_repositories, policies, policy_assignments, jobs, snapshots
    to cofre_app;
grant insert on job_results, audit_events to cofre_app;
