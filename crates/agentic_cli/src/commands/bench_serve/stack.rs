//! The servers `lion bench serve` measures: lion's own stack, as `lion
//! serve` runs it, on a scratch home; and the bare baselines — an axum
//! handler answering a fixed JSON body, and an axum SSE endpoint fed by a
//! tokio broadcast.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use agentic_core::{EventStore, Orchestrator, kernel};
use agentic_http::Access;
use agentic_mcp::Exposure;
use anyhow::Result;
use axum::Router;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::commands::Ctx;
use crate::commands::run::start;
use crate::commands::serve::http_kernel;

/// lion's stack, running until dropped.
pub struct Lion {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The scratch home's token.
    pub token: String,
    /// The home's store, for appending outside HTTP.
    pub store: Arc<dyn EventStore>,
    /// The kernel's orchestrator, for the in-process baseline.
    pub orchestrator: Orchestrator,
    stopping: CancellationToken,
}

impl Drop for Lion {
    fn drop(&mut self) {
        self.stopping.cancel();
    }
}

/// Binds a loopback port.
async fn listener() -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

impl Lion {
    /// Starts the kernel and the HTTP server on `home` (a scratch home), and
    /// waits until it is ready.
    pub async fn start(home: &Path, store: Arc<dyn EventStore>, ctx: Ctx) -> Result<Self> {
        let (listener, addr) = listener().await?;
        let hosts = [addr.to_string()];
        let access = Arc::new(Access::new(home, &hosts, false)?);
        let token = agentic_http::Token::load(home)?.expose().to_owned();
        let (plugins, orchestrator) = start(home, &store, ctx, 64, None)?;
        let (ready_tx, mut ready) = watch::channel(false);
        let stopping = CancellationToken::new();
        let router = agentic_http::router(
            http_kernel(
                home,
                &store,
                orchestrator.clone(),
                plugins.clone(),
                ctx,
                None,
            ),
            access,
            ready.clone(),
            stopping.clone(),
            Exposure::default(),
        );
        tokio::spawn(agentic_http::serve(
            listener,
            router,
            stopping.clone().cancelled_owned(),
        ));
        let dyn_store: Arc<dyn EventStore> = store.clone();
        let (kernel_orchestrator, kernel_stop) = (orchestrator.clone(), stopping.clone());
        tokio::spawn(async move {
            let stop = kernel_stop.clone();
            let _ = kernel::serve(
                dyn_store,
                kernel_orchestrator,
                Some(plugins),
                stop.cancelled_owned(),
                kernel_stop.cancelled_owned(),
                ready_tx,
                None,
            )
            .await;
        });
        ready.wait_for(|r| *r).await?;
        Ok(Self {
            url: format!("http://{addr}"),
            token,
            store,
            orchestrator,
            stopping,
        })
    }
}

/// A bare axum server, running until dropped.
pub struct Bare {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stopping: CancellationToken,
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.stopping.cancel();
    }
}

impl Bare {
    /// `GET /elements/{id}` answering `body` as JSON, and `GET /stream`
    /// sending each message of `feed` as one SSE event (id = its number).
    pub async fn start(body: Bytes, feed: broadcast::Sender<(u64, Arc<str>)>) -> Result<Self> {
        let (listener, addr) = listener().await?;
        let router = Router::new()
            .route(
                "/elements/{id}",
                get(move || {
                    let body = body.clone();
                    async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            body,
                        )
                    }
                }),
            )
            .route(
                "/stream",
                get(move || {
                    let events = tokio_stream_of(feed.subscribe());
                    async move { Sse::new(events) }
                }),
            );
        let stopping = CancellationToken::new();
        tokio::spawn(agentic_http::serve(
            listener,
            router,
            stopping.clone().cancelled_owned(),
        ));
        Ok(Self {
            url: format!("http://{addr}"),
            stopping,
        })
    }
}

/// The broadcast as SSE events, skipping what a slow reader missed.
fn tokio_stream_of(
    rx: broadcast::Receiver<(u64, Arc<str>)>,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok((seq, data)) => {
                    return Some((Ok(Event::default().id(seq.to_string()).data(&*data)), rx));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}
