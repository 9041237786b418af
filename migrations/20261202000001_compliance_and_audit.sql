-- Compliance and a verifiable audit log (#10). Never edit once landed: add a new migration.

-- The audit chain's links are keyed from here on: HMAC-SHA256 under a key sealed with the master
-- key (server_keys 'audit_mac'), so a row written with database credentials alone does not
-- verify. Events before the boundary keep their original unkeyed SHA-256 links; the first
-- signed checkpoint vouches for them. One row, written here, readable by the app role only.
create table audit_chain_rules (
    keyed_from_seq  bigint not null check (keyed_from_seq >= 1),
    marked_at       timestamptz not null default now()
);
create unique index audit_chain_rules_one on audit_chain_rules ((true));
insert into audit_chain_rules (keyed_from_seq) select coalesce(max(seq), 0) + 1 from audit_events;

-- Signed checkpoints of the chain head (Ed25519, the audit signing key). Copies live outside
-- the database too (a file on each controller), so cutting the log's tail is detected.
create table audit_checkpoints (
    seq         bigint primary key,
    head_hash   bytea not null,
    at          timestamptz not null,
    signature   bytea not null,
    made_by     text not null
);

-- Audit readers filter by actor, action, target and time, newest first.
create index audit_events_at on audit_events (at);
create index audit_events_actor on audit_events (actor, seq);
create index audit_events_action on audit_events (action, seq);
create index audit_events_target on audit_events (target_type, target_id, seq);

-- Decommission: the machine keeps its repository and snapshots, stops its schedules and loses
-- its certificates. Decommissioned machines leave the compliance reports.
alter table machines add column decommissioned_at timestamptz;

-- The latest evaluation of each machine (derived state, rewritten every minute by one replica).
-- `findings` are the failed or at-risk rules with their reasons; `observed` keeps when the
-- evaluator first saw conditions that carry no date of their own (a stale plan).
create table compliance_current (
    machine_id      uuid primary key references machines (id),
    status          text not null check (status in ('compliant', 'at_risk', 'non_compliant', 'unknown')),
    findings        jsonb not null,
    observed        jsonb not null default '{}',
    evaluated_at    timestamptz not null,
    changed_at      timestamptz not null,
    -- When the last alert (or reminder) about this machine was raised.
    alerted_at      timestamptz
);

-- Insert-only history: one row each time a machine's status or findings change.
create table compliance_changes (
    machine_id  uuid not null references machines (id),
    at          timestamptz not null,
    group_id    uuid,
    status      text not null check (status in ('compliant', 'at_risk', 'non_compliant', 'unknown')),
    findings    jsonb not null,
    primary key (machine_id, at)
);
create index compliance_changes_at on compliance_changes (at);

-- Insert-only: one row per machine and day (in the configured time zone) once the day is over:
-- the worst status of the day and how long the machine spent in each.
create table compliance_daily (
    day                     date not null,
    machine_id              uuid not null references machines (id),
    group_id                uuid,
    worst_status            text not null check (worst_status in ('compliant', 'at_risk', 'non_compliant', 'unknown')),
    compliant_seconds       integer not null,
    at_risk_seconds         integer not null,
    non_compliant_seconds   integer not null,
    unknown_seconds         integer not null,
    findings                jsonb not null,
    recorded_at             timestamptz not null default now(),
    primary key (day, machine_id)
);
create index compliance_daily_group on compliance_daily (group_id, day);

-- One definition of a store's repositories as the controller knows them, with the snapshots on
-- the store that no job reported (the inventory page and the compliance rule read it).
create view store_inventory_repositories as
select i.store_id, i.path, s.url || i.path as url, rr.id as restic_repository_id, rr.machine_id,
       array(select x from unnest(i.snapshot_ids) x
             where not exists (select 1 from snapshots sn
                               where sn.restic_repository_id = rr.id and sn.snapshot_id = x)
             order by x) as unrecorded_snapshots
from store_inventory i
join stores s on s.id = i.store_id
left join restic_repositories rr on rr.url = s.url || i.path or rr.url = s.url || i.path || '/';

-- Alerts: each one raised is kept (insert-only); its delivery to each channel is an outbox row
-- that replicas claim with a lease (FOR UPDATE SKIP LOCKED), retry with backoff and never drop.
create table alerts (
    id          uuid primary key,
    at          timestamptz not null,
    kind        text not null,
    severity    text not null check (severity in ('critical', 'warning', 'info')),
    machine_id  uuid references machines (id),
    group_id    uuid references groups (id),
    job_id      uuid references jobs (id),
    payload     jsonb not null
);
create index alerts_at on alerts (at);

-- Which alerts a controller has turned into deliveries (by its configured channels); written
-- once per alert, so two replicas never route one twice.
create table alert_routing (
    alert_id    uuid primary key references alerts (id),
    routed_at   timestamptz not null default now(),
    routed_by   text not null
);

create table alert_deliveries (
    alert_id        uuid not null references alerts (id),
    channel         text not null,
    state           text not null check (state in ('pending', 'sent')),
    attempts        integer not null default 0,
    next_attempt_at timestamptz not null,
    claimed_by      text,
    claimed_until   timestamptz,
    last_error      text,
    sent_at         timestamptz,
    primary key (alert_id, channel)
);
create index alert_deliveries_due on alert_deliveries (next_attempt_at) where state = 'pending';

-- Each restic repository's size on its store, once a day (the growth alert compares days).
create table repository_sizes (
    restic_repository_id    uuid not null references restic_repositories (id),
    day                     date not null,
    size_bytes              bigint not null,
    primary key (restic_repository_id, day)
);

grant select on audit_chain_rules, store_inventory_repositories to cofre_app;
grant select, insert on repository_sizes to cofre_app;
grant select, insert on alerts, alert_routing to cofre_app;
grant select, insert, update on alert_deliveries to cofre_app;
grant select, insert on audit_checkpoints, compliance_changes, compliance_daily to cofre_app;
grant select, insert, update, delete on compliance_current to cofre_app;
