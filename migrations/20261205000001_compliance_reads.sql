-- Fleet-wide compliance reads come from compliance_current (kept by the recorder every
-- compliance.evaluate_seconds, and within seconds of a result, a connection, an approval or a
-- plan change) instead of judging every machine per request. The row carries everything the
-- report shows that is not read live from `machines`.
alter table compliance_current add column last_good_backup_at timestamptz;
