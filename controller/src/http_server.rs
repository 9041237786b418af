//! Serves the REST API router over HTTP/1.1 and HTTP/2, plain or TLS, with bounds on slow and
//! idle clients: a cap on connections (over it, new ones wait in the accept backlog), the TLS
//! handshake deadline, an HTTP/1 header read timeout, HTTP/2 keep-alive pings, and an idle
//! timeout for connections with no request in progress (also those that never send a byte).
//! Every request carries `ConnectInfo<Peer>`, as `into_make_service_with_connect_info` did.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::Service as _;

use crate::api::Peer;
use crate::config::HttpSettings;

/// hyper's HTTP/1 read buffer: a request head larger than this is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How long slow and idle clients may hold a connection, and how many connections at once.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_settings(http: &HttpSettings) -> Self {
        let secs = Duration::from_secs;
        Self {
            header_read_timeout: secs(http.header_read_timeout_seconds),
            idle_timeout: secs(http.idle_timeout_seconds),
            http2_keep_alive_interval: secs(http.http2_keep_alive_interval_seconds),
            http2_keep_alive_timeout: secs(http.http2_keep_alive_timeout_seconds),
            max_connections: usize::try_from(http.max_connections).unwrap_or(usize::MAX),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, shuts open
/// connections down gracefully (requests in progress finish) and returns once all have closed.
pub async fn serve(
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout);
    let builder = Arc::new(builder);
    let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Every connection holds a receiver: `closed()` tells when the last one has ended.
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // The slot is taken before accepting: over the cap, new connections wait in the
        // kernel's accept backlog (and may time out there) rather than being refused.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
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
        let conn = Conn {
            router: router.clone(),
            builder: Arc::clone(&builder),
            limits: limits.clone(),
            stopping: stopping.clone(),
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            conn.serve(tcp, peer, acceptor).await;
            drop(permit);
        });
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    // As axum's graceful shutdown: wait for the open connections (idle ones close at once).
    stop.closed().await;
    Ok(())
}

struct Conn {
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    /// Turns true when the server shuts down.
    stopping: watch::Receiver<bool>,
}

impl Conn {
    async fn serve(
        self,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) {
        match acceptor {
            None => self.http(TokioIo::new(tcp), peer).await,
            Some(acceptor) => {
                if let Some(tls) = crate::tls_listener::handshake(&acceptor, tcp, peer).await {
                    self.http(TokioIo::new(tls), peer).await;
                }
            }
        }
    }

    /// Serves the connection until it ends. At server shutdown, and once no request has been in
    /// progress for the idle timeout, it is shut down gracefully (HTTP/2: GOAWAY; HTTP/1: closed);
    /// if it is still open one more idle timeout later (a peer that never acknowledges), it is
    /// dropped. A connection that has not started a request within the header read timeout
    /// (hyper's own timer starts only once it has seen the first bytes) is dropped.
    async fn http<I>(mut self, io: TokioIo<I>, peer: std::net::SocketAddr)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router;
        let activity = Activity::new();
        let tracked = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(Peer(peer)));
            let mut router = router.clone();
            let in_flight = tracked.begin();
            async move {
                let resp = router.call(req.map(Body::new)).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|body| track(body, in_flight)))
            }
        });
        let conn = self.builder.serve_connection_with_upgrades(io, service).into_owned();
        tokio::pin!(conn);
        let first_request = tokio::time::sleep(self.limits.header_read_timeout);
        tokio::pin!(first_request);
        let (mut idle_closing, mut stop_seen, mut first_checked) = (false, false, false);
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                    }
                    return;
                }
                // An error means the server is gone: shut down too.
                _ = self.stopping.changed(), if !stop_seen => {
                    stop_seen = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = &mut first_request, if !first_checked => {
                    first_checked = true;
                    if activity.started() == 0 {
                        return tracing::debug!(%peer, "connection sent no request in time: dropped");
                    }
                }
                () = activity.idle_for(self.limits.idle_timeout) => {
                    if idle_closing {
                        return tracing::debug!(%peer, "idle connection dropped");
                    }
                    tracing::debug!(%peer, "idle connection shut down");
                    idle_closing = true;
                    conn.as_mut().graceful_shutdown();
                    // The next idle period counts from now.
                    activity.touch();
                }
            }
        }
    }
}

/// Requests in progress on one connection (a request lasts until its response body has been
/// sent or dropped, so a long download is not idle), how many have started, and when the number
/// in progress last changed.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    started: AtomicU64,
    last_change: Mutex<Instant>,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            last_change: Mutex::new(Instant::now()),
        })
    }

    /// A request starts; it ends when the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(Arc::clone(self))
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// Restarts the idle period from now.
    fn touch(&self) {
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Completes once no request has been in progress for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) + idle;
            let busy = self.in_flight.load(Ordering::SeqCst) > 0;
            if !busy && Instant::now() >= deadline {
                return;
            }
            // While busy, look again after a whole period: the end of the request moves the
            // deadline anyway.
            tokio::time::sleep_until(if busy { Instant::now() + idle } else { deadline }).await;
        }
    }
}

/// One request in progress (see [`Activity::begin`]).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// A response body that keeps its request in progress until it is finished or dropped.
fn track(body: Body, guard: InFlight) -> Body {
    Body::new(Tracked { inner: body, rest: Bytes::new(), _guard: guard })
}

/// The largest piece of a response body handed to hyper at once. hyper drops a body once it has
/// taken its last frame, and a handler's body is often one frame (a whole JSON document or
/// file): handing it over in pieces keeps the request in progress while the client reads it
/// slowly, leaving only the last pieces in hyper's write buffer when the body ends.
const PIECE: usize = 64 * 1024;

struct Tracked {
    inner: Body,
    /// What is left of a data frame larger than [`PIECE`].
    rest: Bytes,
    _guard: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.rest.is_empty() {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.rest = data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                other => return other,
            }
        }
        let n = self.rest.len().min(PIECE);
        let piece = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests;
