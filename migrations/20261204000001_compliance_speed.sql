-- Compliance reads, per machine and policy, when the last good backup arrived and when the last
-- backups started. Over a year of daily jobs those were scans of every job of every machine:
-- 49 s for 10,000 machines (docs/benchmarks.md#portal). Now:

-- The last good backup of each (machine, policy): kept by a trigger in the transaction that
-- stores the result, so it is never behind the results it summarises.
create table last_good_backups (
    machine_id  uuid not null references machines (id) on delete cascade,
    policy_id   uuid not null references policies (id) on delete cascade,
    received_at timestamptz not null,
    primary key (machine_id, policy_id)
);

insert into last_good_backups (machine_id, policy_id, received_at)
select j.machine_id, j.policy_id, max(r.received_at)
from jobs j join job_results r on r.job_id = j.id
where j.kind = 'backup' and r.outcome in ('succeeded', 'warning')
  and j.machine_id is not null and j.policy_id is not null
group by j.machine_id, j.policy_id;

create function note_good_backup() returns trigger language plpgsql as $$
begin
    if new.outcome in ('succeeded', 'warning') then
        insert into last_good_backups (machine_id, policy_id, received_at)
        select j.machine_id, j.policy_id, new.received_at
        from jobs j
        where j.id = new.job_id and j.kind = 'backup' and j.machine_id is not null and j.policy_id is not null
        on conflict (machine_id, policy_id) do update
            set received_at = greatest(last_good_backups.received_at, excluded.received_at);
    end if;
    return new;
end
$$;

create trigger job_results_note_good_backup after insert on job_results
    for each row execute function note_good_backup();

grant select, insert, update on last_good_backups to cofre_app;

-- The newest backup of a (machine, policy), scheduled or not: one step down an index.
create index jobs_machine_policy_created on jobs (machine_id, policy_id, kind, created_at);

-- Which restic repository is a machine's own: the per-machine index leads with the repository,
-- so looking a machine up scanned all of it, once per machine (0.8 s for 10,000 machines).
create index restic_repositories_machine on restic_repositories (machine_id);

-- The same view as before, its "own or shared" choice written as two equality joins (the unique
-- indexes allow one of each at most) instead of one join on an OR, which no index or hash
-- could serve.
create or replace view machine_policy_repositories as
select mp.machine_id, mp.policy_id, p.repository_id, coalesce(own.id, shared.id) as restic_repository_id
from machine_policies mp
join policies p on p.id = mp.policy_id
join repositories r on r.id = p.repository_id
left join restic_repositories own
    on r.per_machine and own.repository_id = r.id and own.machine_id = mp.machine_id
left join restic_repositories shared
    on not r.per_machine and shared.repository_id = r.id and shared.machine_id is null;
