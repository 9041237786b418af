-- A running backup's latest progress (#11), as its agent sampled it about every 15 s: files and
-- bytes processed, and the totals once the agent's scan has counted them (absent while it
-- scans). One UPDATE of the running job per sample, never an audit row; cleared when the job
-- ends (its result has the final counts).
alter table jobs add column progress jsonb, add column progress_at timestamptz;
