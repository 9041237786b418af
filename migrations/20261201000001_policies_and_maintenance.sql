-- Policies that run the fleet: a versioned specification, one definition of which
-- repositories a machine uses, maintenance jobs run by the controller, cancellation.
-- Never edit once landed: add a new migration instead.

-- A policy is its specification (JSON, validated by cofre-policy before it is written). `name`
-- and `repository_id` stay as columns, copied from the spec in the same statement, for the
-- unique name and the foreign key.
alter table policies add column spec jsonb;
update policies set spec = jsonb_strip_nulls(jsonb_build_object(
    'name', name,
    'repository_id', repository_id,
    'paths', to_jsonb(paths),
    'excludes', case when cardinality(excludes) > 0 then to_jsonb(excludes) end,
    'schedule', case when interval_seconds > 0 then jsonb_build_object('interval_seconds', interval_seconds) end,
    'rpo_seconds', least(greatest(129600, interval_seconds * 2), 366 * 24 * 3600)
));
alter table policies alter column spec set not null;
alter table policies drop column paths, drop column excludes, drop column interval_seconds;

-- Every change of a policy is an immutable version: who, when, what.
create table policy_versions (
    policy_id   uuid not null references policies (id),
    revision    bigint not null,
    spec        jsonb not null,
    changed_by  text not null,
    changed_at  timestamptz not null default now(),
    primary key (policy_id, revision)
);
insert into policy_versions (policy_id, revision, spec, changed_by, changed_at)
    select id, revision, spec, 'migration', updated_at from policies;

-- One definition of which policies reach a machine (directly or through its group)...
create view machine_policies as
select distinct a.policy_id, m.id as machine_id
from policy_assignments a
join machines m on m.id = a.machine_id or (a.group_id is not null and a.group_id = m.group_id);

-- ...which restic repository each of them writes to: the machine's own for a per-machine
-- repository, the shared one otherwise (null until the controller has created it)...
create view machine_policy_repositories as
select mp.machine_id, mp.policy_id, p.repository_id, rr.id as restic_repository_id
from machine_policies mp
join policies p on p.id = mp.policy_id
join repositories r on r.id = p.repository_id
left join restic_repositories rr on rr.repository_id = r.id
    and ((r.per_machine and rr.machine_id = mp.machine_id) or (not r.per_machine and rr.machine_id is null));

-- ...and every restic repository a machine may use: its own (also once no policy points there
-- any more: its history stays reachable) and the shared ones its policies write to.
create view machine_restic_repositories as
select rr.machine_id, rr.id as restic_repository_id
from restic_repositories rr where rr.machine_id is not null
union
select mpr.machine_id, mpr.restic_repository_id
from machine_policy_repositories mpr where mpr.restic_repository_id is not null;

-- A plain rest-server cannot tell the agents' append-only access from the controller's: the
-- recipe is a second instance on the same data, reachable only by the controller. Its base URL
-- and credentials, used for init and maintenance (forget, prune, check).
alter table repositories add column maintenance_url text;
alter table repositories add column maintenance_username text;
alter table repositories add column sealed_maintenance_password bytea;

-- Snapshots as recorded from job results: what retention needs (the time's UTC offset, as
-- restic buckets by the snapshot's own local day; tags; the policy), and when Cofre's
-- maintenance forgot them.
alter table snapshots add column utc_offset_seconds integer not null default 0;
alter table snapshots add column tags text[] not null default '{}';
alter table snapshots add column policy_id uuid references policies (id);
alter table snapshots add column forgotten_at timestamptz;
alter table snapshots add column forgotten_by uuid references jobs (id);
update snapshots s set policy_id = j.policy_id from jobs j where j.id = s.job_id;

-- Jobs: maintenance kinds (run by the controller, on a restic repository), cancellation,
-- skipped backups (a before-hook said so), window overruns, and the bookkeeping that lets
-- another controller replica take over a maintenance job whose holder died.
alter table jobs drop constraint jobs_kind_check;
alter table jobs add constraint jobs_kind_check check (kind in ('backup', 'forget', 'prune', 'check'));
alter table jobs drop constraint jobs_state_check;
alter table jobs add constraint jobs_state_check
    check (state in ('queued', 'running', 'succeeded', 'warning', 'failed', 'interrupted', 'cancelled', 'skipped'));
alter table jobs alter column machine_id drop not null;
alter table jobs add column restic_repository_id uuid references restic_repositories (id);
alter table jobs add column overran_window boolean not null default false;
alter table jobs add column cancel_requested_at timestamptz;
alter table jobs add column cancel_requested_by uuid references users (id);
alter table jobs add column holder text;
alter table jobs add column heartbeat_at timestamptz;
alter table jobs add column attempts integer not null default 0;
-- The restic lock file a maintenance job holds, so a replica taking over can remove it.
alter table jobs add column lock_id text;
-- Options of a maintenance job (`{"dry_run": true}` for a forget that only reports).
alter table jobs add column options jsonb not null default '{}';
alter table jobs add constraint jobs_maintenance_target
    check (kind = 'backup' or restic_repository_id is not null);
-- At most one unfinished maintenance job of a kind per repository.
create unique index jobs_one_maintenance on jobs (restic_repository_id, kind)
    where kind <> 'backup' and state in ('queued', 'running');
create index jobs_maintenance_open on jobs (state) where kind <> 'backup' and state in ('queued', 'running');
-- A repository's last job of each maintenance kind (the API's repository list).
create index jobs_repository on jobs (restic_repository_id, kind, created_at desc) where restic_repository_id is not null;

alter table job_results drop constraint job_results_outcome_check;
alter table job_results add constraint job_results_outcome_check
    check (outcome in ('succeeded', 'warning', 'failed', 'interrupted', 'cancelled', 'skipped'));
-- Output of hooks (and similar notes), capped by the writer.
alter table job_results add column log text;

-- When each maintenance kind last ran on a repository (the slot its schedule recorded).
create table maintenance_schedule (
    restic_repository_id    uuid not null references restic_repositories (id),
    kind                    text not null check (kind in ('forget', 'prune', 'check')),
    since                   timestamptz not null default now(),
    last_slot               timestamptz,
    primary key (restic_repository_id, kind)
);

grant select on policy_versions, maintenance_schedule, machine_policies, machine_policy_repositories,
    machine_restic_repositories to cofre_app;
-- Versions are immutable: the app role may add them, never change them.
grant insert on policy_versions to cofre_app;
grant insert, update, delete on maintenance_schedule to cofre_app;
