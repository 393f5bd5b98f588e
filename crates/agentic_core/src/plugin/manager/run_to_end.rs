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
    /// Set while `future` is polled: still set at drop means it panicked.
    polling: bool,
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
            polling: false,
        }
    }
}

impl<T: Send + 'static> Future for RunToEnd<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        let Some(future) = this.future.as_mut() else {
            panic!("RunToEnd polled after it ended");
        };
        this.polling = true;
        let polled = future.as_mut().poll(cx);
        this.polling = false;
        let output = std::task::ready!(polled);
        this.future = None;
        Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for RunToEnd<T> {
    fn drop(&mut self) {
        // A future that panicked while polled cannot go on: polling it again
        // would panic a second time on another task.
        if self.polling {
            return;
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn it_ends_in_place_when_awaited() {
        let tracker = TaskTracker::new();
        let out = RunToEnd::new(async { 7 }, tracker.clone()).await;
        assert_eq!(out, 7);
        assert!(tracker.is_empty(), "nothing was handed to a task");
    }

    #[tokio::test]
    async fn dropped_halfway_it_goes_on_as_a_task() {
        let tracker = TaskTracker::new();
        let (go, wait) = oneshot::channel::<()>();
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        let mut run = Box::pin(RunToEnd::new(
            async move {
                let _ = wait.await;
                flag.store(true, Ordering::SeqCst);
            },
            tracker.clone(),
        ));
        // Polled once (it waits on `go`), then its caller goes.
        assert!(futures_poll_once(run.as_mut()).await.is_pending());
        drop(run);
        assert!(!ended.load(Ordering::SeqCst));
        go.send(()).expect("the rest still waits");
        tracker.close();
        tracker.wait().await;
        assert!(ended.load(Ordering::SeqCst), "the rest ran to its end");
    }

    /// Polls `f` once.
    async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }
}
