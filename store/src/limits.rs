//! How many connections one client address may hold (`max_connections_per_address`): counted
//! from the moment a connection is accepted (before its TLS handshake) until it closes. A
//! connection over the cap is answered 503 with Retry-After (restic and rustic retry a 5xx and
//! the client sees why); a few such answers at a time per address, beyond them a connection is
//! closed at once, so refusing costs a flood nothing. An IPv6 client counts per /64 (one host
//! holds a whole /64), an IPv4-mapped address as its IPv4 address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Refusals (503 answers) in progress per address; beyond them connections are just closed.
const MAX_REFUSING: usize = 4;
/// One warning per address this often, however many connections it opens.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What a client address is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                ClientKey(IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
            }
            v4 => ClientKey(v4),
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

#[derive(Default)]
struct Counts {
    open: usize,
    refusing: usize,
}

#[derive(Default)]
struct Clients {
    counts: HashMap<ClientKey, Counts>,
    /// When each client refused lately was last warned about (kept after its connections close).
    warned: HashMap<ClientKey, Instant>,
}

pub struct ConnectionLimits {
    max: usize,
    by_client: Mutex<Clients>,
}

/// What to do with a new connection.
pub enum Admission {
    /// Serve it; the slot is held until the guard is dropped.
    Serve(Slot),
    /// Answer 503 and close it; the guard counts the refusal in progress.
    Refuse(Slot),
    /// Close it at once.
    Close,
}

/// A connection (or a refusal) counted for its client; uncounted when dropped.
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    key: ClientKey,
    refusal: bool,
}

impl ConnectionLimits {
    pub fn new(max: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits { max, by_client: Mutex::new(Clients::default()) })
    }

    /// Counts a connection accepted from `ip`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let key = ClientKey::of(ip);
        let mut clients = self.by_client.lock().unwrap_or_else(|e| e.into_inner());
        let Clients { counts, warned } = &mut *clients;
        let counts = counts.entry(key).or_default();
        if counts.open < self.max {
            counts.open += 1;
            return Admission::Serve(Slot { limits: Arc::clone(self), key, refusal: false });
        }
        let now = Instant::now();
        if warned.get(&key).is_none_or(|t| now.duration_since(*t) >= WARN_EVERY) {
            if warned.len() >= 4096 {
                warned.retain(|_, t| now.duration_since(*t) < WARN_EVERY);
            }
            warned.insert(key, now);
            tracing::warn!(
                client = %key,
                open = counts.open,
                "client holds max_connections_per_address connections: refusing more (HTTP 503)"
            );
        }
        if counts.refusing < MAX_REFUSING {
            counts.refusing += 1;
            Admission::Refuse(Slot { limits: Arc::clone(self), key, refusal: true })
        } else {
            Admission::Close
        }
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> (usize, usize) {
        let clients = self.by_client.lock().unwrap_or_else(|e| e.into_inner());
        clients.counts.get(&ClientKey::of(ip)).map_or((0, 0), |c| (c.open, c.refusing))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut clients = self.limits.by_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.counts.get_mut(&self.key) {
            if self.refusal {
                c.refusing = c.refusing.saturating_sub(1);
            } else {
                c.open = c.open.saturating_sub(1);
            }
            if c.open == 0 && c.refusing == 0 {
                clients.counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_address_has_its_own_cap_then_a_few_refusals_then_closing() {
        let limits = ConnectionLimits::new(2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let served: Vec<_> = (0..2).map(|_| limits.admit(a)).collect();
        assert!(served.iter().all(|s| matches!(s, Admission::Serve(_))));
        let refused: Vec<_> = (0..MAX_REFUSING).map(|_| limits.admit(a)).collect();
        assert!(refused.iter().all(|s| matches!(s, Admission::Refuse(_))));
        assert!(matches!(limits.admit(a), Admission::Close));
        assert!(matches!(limits.admit(b), Admission::Serve(_)), "another address is not affected");
        assert_eq!(limits.open(a), (2, MAX_REFUSING));
        drop(refused);
        drop(served);
        assert_eq!(limits.open(a), (0, 0));
        assert!(limits.by_client.lock().unwrap().counts.len() <= 1, "forgotten once closed");
        assert!(matches!(limits.admit(a), Admission::Serve(_)));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let one: IpAddr = "2001:db8:1:2::10".parse().unwrap();
        let same: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::10".parse().unwrap();
        assert_eq!(ClientKey::of(one), ClientKey::of(same));
        assert_ne!(ClientKey::of(one), ClientKey::of(other));
        assert_eq!(ClientKey::of(one).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ClientKey::of(mapped).to_string(), "192.0.2.7");
    }
}
