//! The client's address as far as it can be trusted: the TCP peer, or — only when the peer is a
//! configured proxy (`http.trusted_proxies`) — the nearest address in `X-Forwarded-For` that
//! is not itself a trusted proxy. A client cannot name its own address by sending the header.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};

use crate::state::AppState;

/// An address or network (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl TryFrom<String> for Network {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Network> for String {
    fn from(n: Network) -> String {
        format!("{}/{}", n.addr, n.prefix)
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let bits = |ip: IpAddr| -> u128 {
            match ip {
                IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        bits(ip) & mask == bits(self.addr) & mask
    }
}

/// The TCP peer of a request, recorded by the server for both listeners (plain and TLS).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls_listener::TlsListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls_listener::TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// The client's address (`None` when the server was not told the peer, as in tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

/// The client address from the peer and the forwarded chain, trusting only `proxies`.
pub fn resolve(peer: IpAddr, forwarded_for: Option<&str>, proxies: &[Network]) -> IpAddr {
    let trusted = |ip: IpAddr| proxies.iter().any(|n| n.contains(ip));
    if !trusted(peer) {
        return peer;
    }
    // Rightmost first: each trusted proxy appended the address it saw.
    let mut client = peer;
    for hop in forwarded_for.unwrap_or_default().rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    client
}

/// The client address of a request from its recorded peer and headers.
pub fn of(extensions: &Extensions, headers: &HeaderMap, proxies: &[Network]) -> Option<IpAddr> {
    let ConnectInfo(Peer(peer)) = extensions.get::<ConnectInfo<Peer>>().copied()?;
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    Some(resolve(peer.ip(), forwarded, proxies))
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(of(&parts.extensions, &parts.headers, &st.settings.http.trusted_proxies)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let proxies: Vec<Network> =
            ["10.0.0.0/8", "2001:db8::1"].iter().map(|s| s.parse().unwrap()).collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A client talking directly cannot claim another address.
        assert_eq!(resolve(ip("203.0.113.9"), Some("198.51.100.1"), &proxies), ip("203.0.113.9"));
        // Behind a trusted proxy: the address it saw.
        assert_eq!(resolve(ip("10.1.2.3"), Some("198.51.100.1"), &proxies), ip("198.51.100.1"));
        // A spoofed entry left of the real one is ignored; chained trusted proxies are skipped.
        assert_eq!(
            resolve(ip("10.1.2.3"), Some("1.1.1.1, 198.51.100.1, 10.9.9.9"), &proxies),
            ip("198.51.100.1")
        );
        assert_eq!(resolve(ip("2001:db8::1"), Some("garbage"), &proxies), ip("2001:db8::1"));
        assert_eq!(resolve(ip("::ffff:10.0.0.1"), Some("192.0.2.1"), &proxies), ip("192.0.2.1"));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("example.org".parse::<Network>().is_err());
    }
}
