//! The local HTTP server for the local spool: one thread per connection.
//!
//! Each accepted connection gets a thread with its own current-thread
//! runtime, and that thread does the spool's file work itself
//! ([`remediate_spool::run_file_work_inline_on_this_thread`]): a request is
//! read, handled (fsyncs included) and answered without waking any other
//! thread. With one shared runtime every durable call went to the blocking
//! pool and back: two thread wake-ups per request, which in A/B runs of
//! `make bench-http` cost 150-400 µs of server CPU per 1-client execute on
//! a 2-core VM (README). Concurrent clients still fsync in parallel, one
//! thread each.
//!
//! Connections beyond [`MAX_CONNECTIONS`] wait in the listen backlog until
//! one closes; an idle keep-alive connection is closed after hyper's header
//! read timeout (30 s), so idle clients do not hold threads for long. On
//! shutdown the listener closes, every connection finishes the request it
//! is on and closes, and [`serve`] returns when all have.
//!
//! Only for the local store: the AWS SDK's clients keep pooled connections
//! whose tasks live on the runtime that opened them, which a short-lived
//! per-connection runtime would take down with it. The AWS store is served
//! by `axum::serve` on the main runtime instead.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// Most connections served at once (one thread each).
pub const MAX_CONNECTIONS: usize = 256;

/// Serves `router` on `listener` until `shutdown` completes, then waits for
/// the open connections to finish their requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or memory, or a connection reset
                    // before it was accepted: not the listener's end.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, %peer, "taking over a connection failed");
                continue;
            }
        };
        let (router, stop) = (router.clone(), stop_rx.clone());
        let spawned = std::thread::Builder::new()
            .name("remediate-conn".into())
            .spawn(move || {
                connection(stream, peer, router, stop);
                drop(slot);
            });
        if let Err(e) = spawned {
            // The connection (moved into the closure) is closed with it.
            tracing::warn!(error = %e, %peer, "no thread for a connection; closed it");
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every slot back means every connection thread has ended.
    let _all = slots
        .acquire_many(MAX_CONNECTIONS as u32)
        .await
        .map_err(std::io::Error::other)?;
    Ok(())
}

/// Serves one connection on the calling thread until the client closes it,
/// it idles out, or `stop` turns true (then the request in progress is
/// answered first).
fn connection(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    remediate_spool::run_file_work_inline_on_this_thread();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, %peer, "no runtime for a connection; closed it");
            return;
        }
    };
    rt.block_on(async move {
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, %peer, "registering a connection failed");
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        tokio::pin!(conn);
        let done = tokio::select! {
            r = conn.as_mut() => Some(r),
            _ = stop.wait_for(|s| *s) => None,
        };
        let r = match done {
            Some(r) => r,
            None => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    });
}
