//! When a connection is idle: the requests in progress on it (a request lasts until its response
//! body has been sent or dropped, so a long download is not idle) and a future that completes
//! once none has been in progress for a given time. And when its client stopped reading: a
//! response body that handed over a frame and has not been asked for the next one for a given
//! time (HTTP/1: the socket buffers are full; HTTP/2: the client's flow-control window stays
//! closed), whatever the client does on other streams.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

/// Requests in progress on one connection, and when that number last changed.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    last_change: Mutex<Instant>,
    /// Response bodies waiting for the client to take what they handed over, and since when.
    waiting: Mutex<HashMap<u64, Instant>>,
    next_body: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_change: Mutex::new(Instant::now()),
            waiting: Mutex::new(HashMap::new()),
            next_body: AtomicU64::new(0),
        })
    }

    /// A request starts; it ends when the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(Arc::clone(self))
    }

    /// Restarts the idle period from now.
    pub fn touch(&self) {
        *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Completes once no request has been in progress for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
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

impl Activity {
    /// Completes once a response body has waited `stall` for the client to take what it handed
    /// over (the client stopped reading).
    pub async fn stalled_for(&self, stall: Duration) {
        loop {
            let oldest = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).values().min().copied();
            match oldest {
                Some(since) if Instant::now() >= since + stall => return,
                Some(since) => tokio::time::sleep_until(since + stall).await,
                None => tokio::time::sleep(stall).await,
            }
        }
    }

    fn waiting(&self, body: u64, since: Option<Instant>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match since {
            Some(t) => waiting.insert(body, t),
            None => waiting.remove(&body),
        };
    }
}

/// One request in progress (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// A response body that keeps its request in progress until it is finished or dropped, and
/// tells its connection when it waits for the client.
pub fn track(body: Body, guard: InFlight) -> Body {
    let id = guard.0.next_body.fetch_add(1, Ordering::Relaxed);
    Body::new(Tracked { inner: body, guard, id })
}

struct Tracked {
    inner: Body,
    guard: InFlight,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.guard.0.waiting(self.id, None);
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        // Asked for more: the client took what came before. Waiting on our side (a disk read)
        // is not the client's doing.
        let this = &mut *self;
        this.guard.0.waiting(this.id, None);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.guard.0.waiting(this.id, Some(Instant::now()));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_only_without_requests_in_progress() {
        let a = Activity::new();
        let guard = a.begin();
        let idle = Duration::from_millis(50);
        // A request in progress is never idle, however long it lasts.
        assert!(tokio::time::timeout(idle * 6, a.idle_for(idle)).await.is_err());
        drop(guard);
        let start = Instant::now();
        a.idle_for(idle).await;
        assert!(start.elapsed() >= idle, "idle counts from the end of the last request");
    }

    async fn next_frame(body: &mut Body) -> Option<Result<Frame<Bytes>, axum::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test]
    async fn a_body_not_asked_for_its_next_frame_is_stalled() {
        let a = Activity::new();
        let stall = Duration::from_millis(50);
        let chunks = futures::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from_static(b"one")),
            Ok(Bytes::from_static(b"two")),
        ]);
        let mut body = track(Body::from_stream(chunks), a.begin());
        // Nothing handed over yet: not stalled.
        assert!(tokio::time::timeout(stall * 3, a.stalled_for(stall)).await.is_err());
        assert!(next_frame(&mut body).await.is_some());
        // One frame handed over and the next not asked for: stalled after `stall`.
        let start = Instant::now();
        a.stalled_for(stall).await;
        assert!(start.elapsed() >= stall * 9 / 10);
        // Asked again: no longer waiting; dropped: forgotten.
        assert!(next_frame(&mut body).await.is_some());
        drop(body);
        assert!(a.waiting.lock().unwrap().is_empty());
    }
}
