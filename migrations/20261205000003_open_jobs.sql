-- The portal's overview asks for the running jobs (GET /api/v1/jobs?state=running) on every
-- view. Without this index the newest-first scan walked every job ever stored looking for the
-- few that are open: 152 ms (debug) at 300,000 jobs, growing with the history.
create index jobs_open on jobs (id desc) where state in ('queued', 'running');
