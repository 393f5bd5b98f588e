//! `lion serve`: the kernel, as `lion run` holds it, behind the HTTP API of
//! [`agentic_http`].
//!
//! It takes the home's lease, binds the address, and answers 503 until the
//! kernel has taken over the home's unfinished tasks; then it prints one
//! ready line on stdout naming the address (`lion serve: listening on
//! http://…`), which scripts wait on. The first SIGINT/SIGTERM stops it
//! accepting connections, ends the event streams and lets requests and
//! tasks in flight finish; a second one interrupts the tasks, each recorded
//! as `lion run` records it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentic_core::plugin::PluginManager;
use agentic_core::{EventStore, Orchestrator, kernel};
use agentic_http::{Access, Kernel, Token};
use agentic_llm::local::{ModelSpec, parse_spec};
use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::run::{count_signals, membership, start, stopped, wait_for};
use crate::cli::ServeArgs;
use crate::providers::HomeProviders;

/// The lease of `lion serve`'s kernel on a shared store.
const DEFAULT_LEASE: Duration = Duration::from_secs(10);
use crate::{lease, live};

/// How long a stopping server waits for its connections to close after the
/// kernel has stopped.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// `lion serve`.
pub async fn serve(
    home: &Path,
    open: impl AsyncFnOnce() -> Result<Arc<dyn EventStore>>,
    ctx: Ctx,
    args: &ServeArgs,
) -> Result<()> {
    if args.print_token {
        outln!("{}", Token::load_or_create(home)?.expose());
        return Ok(());
    }
    if args.rotate_token {
        let token = Token::rotate(home)?;
        errln!(
            "the API token of {} is replaced: the old one no longer works",
            home.display()
        );
        outln!("{}", token.expose());
        return Ok(());
    }
    let loopback = args.addr.ip().is_loopback();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(agentic_http::tls::acceptor(cert, key)?),
        _ => None,
    };
    if !loopback && tls.is_none() && !args.insecure_no_tls {
        bail!(
            "{} is not a loopback address: serve it over TLS (--tls-cert and --tls-key), \
             or pass --insecure-no-tls to serve it in clear text anyway",
            args.addr
        );
    }
    let plugin_dir = match &args.plugin_dir {
        Some(dir) => Some(
            dir.canonicalize()
                .with_context(|| format!("the plugin directory {}", dir.display()))?,
        ),
        None => None,
    };
    let store = open().await?;
    let _lease = lease::acquire(home)?;
    let signals = count_signals()?;
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let local = listener.local_addr()?;
    if !loopback && tls.is_none() {
        errln!(
            "warning: serving {local} without TLS (--insecure-no-tls): the token and every answer cross the network in clear text"
        );
    }
    let access = Arc::new(Access::new(
        home,
        &allowed_hosts(local, &args.allow_hosts),
        tls.is_some(),
    )?);
    let membership = membership(&store, DEFAULT_LEASE);
    let (plugins, orchestrator) = start(home, &store, ctx, args.concurrency, membership.as_ref())?;
    let _live = live::serve(home, &orchestrator)?;
    let (ready_tx, ready) = watch::channel(false);
    let stopping = CancellationToken::new();
    let router = agentic_http::router(
        http_kernel(
            home,
            &store,
            orchestrator.clone(),
            plugins.clone(),
            ctx,
            plugin_dir,
        ),
        access,
        ready.clone(),
        stopping.clone(),
        super::mcp::exposure(&args.mcp)?,
    );
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Cancelled once the HTTP server has stopped (its connections closed).
    let http_done = CancellationToken::new();
    let http = {
        let (stopping, done) = (stopping.clone(), http_done.clone());
        let listener = match tls {
            Some(acceptor) => Either::Tls(agentic_http::tls::TlsListener::new(listener, acceptor)?),
            None => Either::Plain(listener),
        };
        tokio::spawn(async move {
            let served = match listener {
                Either::Tls(l) => {
                    agentic_http::serve_tls(l, router, stopping.cancelled_owned()).await
                }
                Either::Plain(l) => {
                    agentic_http::serve(l, router, stopping.cancelled_owned()).await
                }
            };
            done.cancel();
            served
        })
    };
    tokio::spawn(announce(
        format!("{scheme}://{local}"),
        ready,
        home.to_owned(),
    ));
    // The first signal stops the HTTP side taking requests and ends the
    // event streams; once the requests in flight have finished (at most
    // CLOSE_WAIT), the kernel stops taking work and drains its tasks, and
    // only then closes the plugin manager: no call a request made is left
    // unrecorded.
    let first = {
        let (signals, stopping, done) = (signals.clone(), stopping.clone(), http_done.clone());
        async move {
            wait_for(signals, 1).await;
            stopping.cancel();
            if tokio::time::timeout(CLOSE_WAIT, done.cancelled())
                .await
                .is_err()
            {
                errln!(
                    "warning: connections still open after {CLOSE_WAIT:?}; the kernel stops anyway"
                );
            }
        }
    };
    let store: Arc<dyn EventStore> = store;
    let report = kernel::serve(
        store,
        orchestrator,
        Some(plugins),
        first,
        wait_for(signals, 2),
        ready_tx,
        membership,
    )
    .await;
    stopping.cancel();
    match tokio::time::timeout(CLOSE_WAIT, http).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => errln!("warning: the HTTP server failed: {e}"),
        Ok(Err(e)) => errln!("warning: the HTTP server failed: {e}"),
        Err(_) => errln!("warning: connections still open after {CLOSE_WAIT:?}; closing them"),
    }
    stopped(report?);
    Ok(())
}

/// The kernel's parts as the HTTP server drives them: where agents run
/// (catalog models only for a client: model files on disk are the
/// operator's choice), the writer's totals for `/metrics`, and the plugin
/// directory installs may come from.
pub fn http_kernel(
    home: &Path,
    store: &Arc<dyn EventStore>,
    orchestrator: Orchestrator,
    plugins: PluginManager,
    ctx: Ctx,
    plugin_dir: Option<PathBuf>,
) -> Kernel {
    let providers = HomeProviders::new(home);
    let counters = store.clone();
    Kernel {
        store: store.clone(),
        orchestrator,
        plugins,
        correlation_id: ctx.correlation_id,
        plugin_dir,
        timeline_file: Some(agentic_http::timeline::file_in(home)),
        commits: store.commit_counters().is_some().then(|| {
            Arc::new(move || {
                let load =
                    |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
                counters
                    .commit_counters()
                    .map_or((0, 0), |c| (load(&c.commits), load(&c.events)))
            }) as _
        }),
        runs_on: Arc::new(move |spec| {
            if let Some(model) = &spec.model
                && let Ok(ModelSpec::File(_)) = parse_spec(model)
            {
                return Err(format!(
                    "{model} names a model file: over HTTP only catalog models (lion model list)"
                ));
            }
            providers.runs_on(spec).map_err(|e| format!("{e:#}"))
        }),
    }
}

/// The listener, plain or TLS.
enum Either {
    Plain(TcpListener),
    Tls(agentic_http::tls::TlsListener),
}

/// The `Host` values the server answers to: its address and, on loopback,
/// the loopback names with its port; plus the operator's.
fn allowed_hosts(local: SocketAddr, extra: &[String]) -> Vec<String> {
    let port = local.port();
    let mut hosts = vec![local.to_string()];
    if local.ip().is_loopback() {
        hosts.extend([
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]);
    }
    hosts.extend(extra.iter().cloned());
    hosts
}

/// Prints the ready line once the kernel is ready.
async fn announce(url: String, mut ready: watch::Receiver<bool>, home: std::path::PathBuf) {
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    errln!(
        "lion kernel running on {} (pid {}); token: `lion serve --print-token`; Ctrl-C or SIGTERM stops it",
        home.display(),
        std::process::id()
    );
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "lion serve: listening on {url}");
    let _ = stdout.flush();
}
