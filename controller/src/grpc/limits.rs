//! What one agent (or one address) may ask of this replica: enrollment attempts per address,
//! sessions opened and job events per machine, the largest message, and how often a machine
//! may renew its certificate. Counters live in this replica's memory (a machine talks to one replica at a
//! time); the renewal limit is checked in the database, so it holds across replicas.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The limits of the agent service.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest message an agent may send. Agents cut their results to 3 MiB; the margin is
    /// for older agents, whose results are clipped when stored.
    pub max_message_bytes: usize,
    /// Job events a machine may send at once (a spool that filled while the controller was
    /// away is delivered in bursts of this size).
    pub events_burst: u32,
    /// Job events per minute a machine may send in the long run.
    pub events_per_minute: u32,
    /// The least time between two certificates of one machine (or half the certificate
    /// lifetime, when that is shorter). A certificate about to expire may renew after
    /// [`Limits::near_expiry_interval`].
    pub renewal_interval: Duration,
    pub near_expiry_interval: Duration,
    /// Sessions a machine may open at once (an agent reconnecting after short sessions backs
    /// off 1, 2, 4 … s) ...
    pub sessions_burst: u32,
    /// ... and per minute in the long run. Each open costs database queries (the certificate's
    /// standing, its predecessors) and a plan computation, so a machine reconnecting in a tight
    /// loop must not cost more than this.
    pub sessions_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024 * 1024,
            events_burst: 100,
            events_per_minute: 120,
            renewal_interval: Duration::from_secs(3600),
            near_expiry_interval: Duration::from_secs(60),
            sessions_burst: 10,
            sessions_per_minute: 6,
        }
    }
}

/// A token bucket per machine (job events, session opens).
pub(crate) struct EventLimiter {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl EventLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self::with_rate(limits.events_burst, limits.events_per_minute)
    }

    /// `burst` at once, `per_minute` in the long run.
    pub(crate) fn with_rate(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_minute.max(1)) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one event's token at `now`, or says how long to wait: until half the burst is
    /// back, so a refused agent does not come back for a single event.
    pub(crate) fn take(&self, machine: Uuid, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 100_000 {
            // Full buckets are the same as no bucket.
            buckets.retain(|_, b| self.refilled(*b, now) < self.burst);
        }
        let b = buckets.entry(machine).or_insert(Bucket { tokens: self.burst, at: now });
        *b = Bucket { tokens: self.refilled(*b, now), at: now.max(b.at) };
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = (self.burst / 2.0 - b.tokens).max(1.0) / self.per_second;
        Err(Duration::from_secs_f64(wait.min(86_400.0)))
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.per_second).min(self.burst)
    }
}

/// A fixed-window limiter per source address (enrollment attempts).
pub(crate) struct RateLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self { per_minute, windows: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn allow(&self, ip: IpAddr) -> bool {
        let mut w = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let e = w.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(60) {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enroll_attempts_are_limited_per_address() {
        let l = RateLimiter::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..3).all(|_| l.allow(a)));
        assert!(!l.allow(a), "the fourth attempt within a minute is refused");
        assert!(l.allow(b), "other addresses are not affected");
    }

    #[test]
    fn job_events_come_in_bursts_then_at_the_sustained_rate() {
        let limits = Limits { events_burst: 10, events_per_minute: 60, ..Limits::default() };
        let l = EventLimiter::new(&limits);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let t0 = Instant::now();
        assert!((0..10).all(|_| l.take(a, t0).is_ok()), "a burst is accepted");
        let wait = l.take(a, t0).expect_err("the eleventh at once is refused");
        assert_eq!(wait, Duration::from_secs(5), "until half the burst is back (1 a second)");
        assert!(l.take(b, t0).is_ok(), "other machines are not affected");
        let t1 = t0 + Duration::from_secs(3);
        assert!((0..3).all(|_| l.take(a, t1).is_ok()), "one per second comes back");
        assert!(l.take(a, t1).is_err());
        let later = t1 + Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| l.take(a, later).is_ok()).count(), 10, "never more than a burst");
    }
}
