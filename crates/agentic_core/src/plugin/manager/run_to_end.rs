//! [`RunToEnd`]: a future polled in its caller's task that, dropped
//! before it ends, goes on as a task of its own — work a cancelled caller
//! must not cut short (recording a call's outcome), without the cost of a
//! task per call when nobody cancels.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::task::TaskTracker;

/// Polls `future` in place; if dropped before it ends, spawns the rest on
/// `tracker` (outside a runtime the rest is dropped: nothing could run it).
pub(crate) struct RunToEnd<T: Send + 'static> {
    future: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    tracker: TaskTracker,
}

impl<T: Send + 'static> RunToEnd<T> {
    /// `future`, run to its end even if its caller stops waiting.
    pub(crate) fn new(
        future: impl Future<Output = T> + Send + 'static,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            future: Some(Box::pin(future)),
            tracker,
        }
    }
}

impl<T: Send + 'static> Future for RunToEnd<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(future) = self.future.as_mut() else {
            panic!("RunToEnd polled after it ended");
        };
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for RunToEnd<T> {
    fn drop(&mut self) {
        if let Some(rest) = self.future.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            self.tracker.spawn_on(
                async move {
                    rest.await;
                },
                &runtime,
            );
        }
    }
}
