//! The connection loop: accepts TCP connections, runs each TLS handshake in its own task with a
//! deadline, reads the verified client certificate's identity and serves the router over HTTP/1.1
//! or HTTP/2 with that identity attached to every request of the connection. Slow and idle
//! clients are bounded: HTTP/1 header read timeout, HTTP/2 keep-alive pings, an idle timeout
//! for connections with no request in progress (also those that never send a byte), a write
//! timeout for a client that stops reading a response, and a cap on the connections one client
//! address holds (`limits`: the connection over it is answered 503 and closed).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::Service as _;

use crate::access::Identity;
use crate::config::Settings;
use crate::idle::{self, Activity};
use crate::limits::{Admission, ConnectionLimits, Slot};
use crate::{StoreState, tls};

const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// hyper's HTTP/1 read buffer: a request head larger than this is refused with 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A connection over the per-address cap gets this long for its handshake, its request and
/// the 503.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);
/// What a refused connection's client is told to wait before trying again, in seconds.
const REFUSAL_RETRY_AFTER: &str = "5";

/// What the connection proved, attached to each of its requests as an extension.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub peer: Option<SocketAddr>,
    /// From a client certificate verified against the Cofre CA, if it names a known identity.
    pub identity: Option<Identity>,
    /// That certificate's serial (lowercase hex), checked against the access list's revoked
    /// serials at every request.
    pub serial: Option<String>,
}

/// A bound store: the shared state and the listening socket, not yet serving.
pub struct Store {
    state: StoreState,
    listener: TcpListener,
}

impl Store {
    /// Opens the state (scan, sweep, access list, CA, TLS files) and binds `settings.listen`.
    pub async fn bind(settings: Settings) -> anyhow::Result<Store> {
        let listen = settings.listen;
        let state = StoreState::open(settings).await?;
        let listener =
            TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        Ok(Store { state, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.state.settings().listen)
    }

    pub fn state(&self) -> &StoreState {
        &self.state
    }

    /// Serves until `shutdown` completes, then lets open requests finish (up to 10 s).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let router = crate::router(self.state.clone());
        let settings = self.state.settings();
        let secs = Duration::from_secs;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(secs(settings.header_read_timeout_seconds))
            .max_buf_size(MAX_HEAD_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .keep_alive_interval(secs(settings.http2_keep_alive_interval_seconds))
            .keep_alive_timeout(secs(settings.http2_keep_alive_timeout_seconds));
        let builder = Arc::new(builder);
        let idle_timeout = secs(settings.idle_connection_timeout_seconds);
        let write_timeout = secs(settings.write_timeout_seconds);
        let limits = ConnectionLimits::new(settings.max_connections_per_address as usize);
        // Every connection holds a receiver: `closed()` tells when the last one has ended.
        let (stop, stopping) = watch::channel(false);
        tracing::info!(addr = %self.local_addr(), tls = self.state.shared().tls.is_some(), "cofre-store serving");
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.state.shared().tls.as_ref().map(tls::Tls::acceptor);
            match limits.admit(peer.ip()) {
                Admission::Serve(slot) => {
                    let conn = Conn {
                        router: router.clone(),
                        builder: Arc::clone(&builder),
                        idle_timeout,
                        write_timeout,
                        stopping: stopping.clone(),
                        _slot: slot,
                    };
                    tokio::spawn(conn.serve(tcp, peer, acceptor));
                }
                Admission::Refuse(slot) => {
                    tokio::spawn(refuse(tcp, peer, acceptor, Arc::clone(&builder), slot));
                }
                Admission::Close => {
                    tracing::debug!(%peer, "connection over max_connections_per_address closed at once");
                    drop(tcp);
                }
            }
        }
        drop(self.listener);
        drop(stopping);
        let _ = stop.send(true);
        tokio::select! {
            () = stop.closed() => {}
            () = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("open requests cut at shutdown"),
        }
        Ok(())
    }
}

struct Conn {
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle_timeout: Duration,
    write_timeout: Duration,
    /// Turns true when the server shuts down.
    stopping: watch::Receiver<bool>,
    /// This connection, counted for its client address while it is open.
    _slot: Slot,
}

impl Conn {
    async fn serve(self, tcp: TcpStream, peer: SocketAddr, acceptor: Option<tokio_rustls::TlsAcceptor>) {
        let Some(acceptor) = acceptor else {
            let info = ConnInfo { peer: Some(peer), identity: None, serial: None };
            return self.http(TokioIo::new(tcp), info).await;
        };
        let tls = match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
        };
        // rustls only hands out a peer certificate it verified against the client CA.
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        let identity = leaf.and_then(|c| tls::identity_from_certificate(c));
        let serial = leaf.and_then(|c| tls::serial_of(c));
        self.http(TokioIo::new(tls), ConnInfo { peer: Some(peer), identity, serial }).await;
    }

    /// Serves the connection until it ends. At server shutdown, and once no request has been in
    /// progress for the idle timeout, it is shut down gracefully (HTTP/2: GOAWAY; HTTP/1 or a
    /// connection that never sent its first bytes: closed); if it is still open and idle one
    /// more idle timeout later (a peer that never acknowledges), it is dropped.
    async fn http<I>(mut self, io: TokioIo<I>, info: ConnInfo)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router;
        let activity = Activity::new();
        let tracked = Arc::clone(&activity);
        let peer = info.peer;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(info.clone());
            let mut router = router.clone();
            let in_flight = tracked.begin();
            async move {
                let resp = router.call(req.map(axum::body::Body::new)).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|body| idle::track(body, in_flight)))
            }
        });
        let conn = self.builder.serve_connection(io, service).into_owned();
        tokio::pin!(conn);
        let (mut idle_closing, mut stop_seen) = (false, false);
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                // An error means the server is gone: shut down too.
                _ = self.stopping.changed(), if !stop_seen => {
                    stop_seen = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = activity.stalled_for(self.write_timeout) => {
                    return tracing::info!(
                        ?peer,
                        timeout_s = self.write_timeout.as_secs(),
                        "client stopped reading a response (write_timeout_seconds): connection dropped"
                    );
                }
                () = activity.idle_for(self.idle_timeout) => {
                    if idle_closing {
                        return tracing::debug!(?peer, "idle connection dropped");
                    }
                    tracing::debug!(?peer, "idle connection shut down");
                    idle_closing = true;
                    conn.as_mut().graceful_shutdown();
                    // The next idle period counts from now.
                    activity.touch();
                }
            }
        }
    }
}

/// Answers a connection over `max_connections_per_address`: its TLS handshake, then 503 with
/// Retry-After to its first request, then closed (HTTP/2: GOAWAY); all within
/// [`REFUSAL_DEADLINE`]. `_slot` counts it among the refusals in progress for its address.
async fn refuse(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    _slot: Slot,
) {
    let answer = async {
        match acceptor {
            Some(acceptor) => match acceptor.accept(tcp).await {
                Ok(tls) => answer_503(TokioIo::new(tls), &builder).await,
                Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake of a refused connection failed"),
            },
            None => answer_503(TokioIo::new(tcp), &builder).await,
        }
    };
    if tokio::time::timeout(REFUSAL_DEADLINE, answer).await.is_err() {
        tracing::debug!(%peer, "refused connection closed without an answer (deadline)");
    }
}

async fn answer_503<I>(io: TokioIo<I>, builder: &auto::Builder<TokioExecutor>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let answered = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&answered);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let notify = Arc::clone(&notify);
        async move {
            let mut resp = hyper::Response::new(axum::body::Body::from(
                "too many connections from this address (max_connections_per_address): retry later\n",
            ));
            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            let headers = resp.headers_mut();
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static(REFUSAL_RETRY_AFTER));
            if req.version() < http::Version::HTTP_2 {
                headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            notify.notify_one();
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = answered.notified() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}
