//! When a connection is idle: the requests in progress on it (a request lasts until its response
//! body has been sent or dropped, so a long download is not idle) and a future that completes
//! once none has been in progress for a given time.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
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
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity { in_flight: AtomicUsize::new(0), last_change: Mutex::new(Instant::now()) })
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

/// One request in progress (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// A response body that keeps its request in progress until it is finished or dropped.
pub fn track(body: Body, guard: InFlight) -> Body {
    Body::new(Tracked { inner: body, _guard: guard })
}

struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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
}
