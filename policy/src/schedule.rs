//! When a policy's next run starts: cron in a time zone or an interval, a stable per-machine
//! jitter, an allowed window, and the DST rules.
