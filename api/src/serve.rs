//! The mTLS HTTP server of every daemon, and the plain ops listener.
//!
//! Each accepted connection completes its TLS handshake in its own task (a slow client never
//! blocks accepting), is refused with a log line naming why (wrong CA, expired, no identity),
//! and otherwise serves HTTP/1.1 or HTTP/2 with the peer's [`Identity`] attached to every
//! request as a [`Peer`] extension. A hook hears when a peer's connection closes: a replica uses
//! it to notice at once that its leader's process died.
//!
//! An HTTP/2 request answered without reading all of its body (refused early: 401, 403, 413) has
//! the rest of its body read and dropped before the answer is sent ([`Unread`]), within bounds,
//! so that the client finishes sending and the stream closes without a reset. Answering at once
//! instead ends in a reset either way: the server's (`RST_STREAM`, `NO_ERROR`, which HTTP/2
//! allows after an early answer) or, when the client stops sending on seeing the answer and ends
//! its body short of its `content-length`, the one HTTP/2 demands for that (`PROTOCOL_ERROR`).
//! Clients that are still sending when the reset arrives may drop the answer they already
//! received (curl 7.88 fails with "(92) Stream error" about half the time).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::body::SizeHint;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::identity::Identity;
use crate::tls::peer_identity;

/// The verified identity of the client of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer(pub Identity);

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Called with the peer's identity when one of its connections closes.
pub type OnClose = Arc<dyn Fn(&Identity) + Send + Sync>;

/// Decides whether a verified peer is served; `Err(reason)` drops its connection (logged), as a
/// firewall would: the peer sees a closed connection, not an answer. Asked at accept and again
/// for every request, so a refusal also reaches connections opened before it.
pub type Admit = Arc<dyn Fn(&Identity) -> Result<(), String> + Send + Sync>;

/// What a server does around each connection.
#[derive(Clone, Default)]
pub struct Hooks {
    pub admit: Option<Admit>,
    pub on_close: Option<OnClose>,
    /// Serve clients that present no certificate (with a server config built with
    /// `ClientCerts::Optional`); their requests carry no [`Peer`].
    pub allow_anonymous: bool,
}

/// Serve `router` over mTLS on `listener` until `shutdown` resolves, then let open requests
/// finish for up to `grace`.
pub async fn serve_mtls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
    hooks: Hooks,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let hooks = hooks.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Err(_) => {
                    tracing::warn!(%remote, "refused mTLS connection: handshake timed out");
                    return;
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // Closed before a TLS hello: a TCP probe (health checks, a replica checking
                    // whether a peer is alive), not an attempt worth a warning.
                    tracing::debug!(%remote, "connection closed before the TLS handshake");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "refused mTLS connection");
                    return;
                }
                Ok(Ok(tls)) => tls,
            };
            let identity = match tls.get_ref().1.peer_certificates() {
                Some(certs) if !certs.is_empty() => match peer_identity(certs) {
                    Ok(identity) => Some(identity),
                    Err(e) => {
                        tracing::warn!(%remote, error = %e, "refused mTLS connection: no atoll identity");
                        return;
                    }
                },
                _ if hooks.allow_anonymous => None,
                _ => {
                    tracing::warn!(%remote, "refused connection: no client certificate");
                    return;
                }
            };
            if let (Some(identity), Some(admit)) = (&identity, &hooks.admit)
                && let Err(reason) = admit(identity)
            {
                tracing::info!(%remote, peer = %identity, %reason, "dropped connection");
                return;
            }
            tracing::debug!(%remote, peer = ?identity, "connection accepted");
            let peer = identity.clone().map(Peer);
            let admit = hooks.admit.clone();
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                // Admission is checked again per request: a peer refused after it connected
                // (revoked, or cut at run time) loses its open connections too.
                let refused = match (&peer, &admit) {
                    (Some(Peer(identity)), Some(admit)) => admit(identity).err(),
                    _ => None,
                };
                if let Some(peer) = &peer {
                    request.extensions_mut().insert(peer.clone());
                }
                request.extensions_mut().insert(RemoteAddr(remote));
                let router = router.clone();
                async move {
                    if let Some(reason) = refused {
                        tracing::info!(%remote, %reason, "dropped a request of a refused peer");
                        return Err(Refused(reason));
                    }
                    if request.version() != hyper::Version::HTTP_2 {
                        let request = request.map(axum::body::Body::new);
                        return router.oneshot(request).await.map_err(|never| match never {});
                    }
                    let unread = Unread::default();
                    let request = request.map(|body| axum::body::Body::new(unread.watch(body)));
                    let response = router.oneshot(request).await.map_err(|never| match never {})?;
                    unread.drain().await;
                    Ok(response)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service).into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%remote, peer = ?identity, error = %e, "connection ended with an error");
            }
            if let (Some(identity), Some(on_close)) = (&identity, &hooks.on_close) {
                on_close(identity);
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "open connections did not finish within the grace period");
    }
    Ok(())
}

/// Most bytes of an HTTP/2 request body read and dropped before its answer is sent.
pub const DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// Longest time an HTTP/2 request body is read and dropped before its answer is sent.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The part of an HTTP/2 request body its handler left unread: [`Unread::watch`] wraps the body,
/// which hands what is left of itself over here when it is dropped before its end, and
/// [`Unread::drain`], called once the answer is ready and before it is sent, reads and drops it
/// to its end, for at most [`DRAIN_BYTES`] and [`DRAIN_TIME`]. Past the bounds the answer goes
/// out anyway and the server resets the stream.
#[derive(Clone, Debug, Default)]
struct Unread(Arc<std::sync::Mutex<Option<Incoming>>>);

impl Unread {
    fn watch(&self, body: Incoming) -> Watched {
        Watched { body: Some(body), unread: self.clone() }
    }

    async fn drain(&self) {
        let Some(mut body) = self.0.lock().expect("unread body").take() else { return };
        let read = async {
            let mut left = DRAIN_BYTES;
            while let Some(Ok(frame)) = body.frame().await {
                left = left.saturating_sub(frame.data_ref().map_or(0, Bytes::len));
                if left == 0 {
                    tracing::debug!(bytes = DRAIN_BYTES, "stopped reading the rest of an answered request's body");
                    return;
                }
            }
        };
        if tokio::time::timeout(DRAIN_TIME, read).await.is_err() {
            tracing::debug!(after = ?DRAIN_TIME, "stopped waiting for the rest of an answered request's body");
        }
    }
}

/// A request body that hands itself to its [`Unread`] when dropped before its end.
#[derive(Debug)]
struct Watched {
    body: Option<Incoming>,
    unread: Unread,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.as_ref().map(hyper::body::Body::size_hint).unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(body) = self.body.take().filter(|body| !hyper::body::Body::is_end_stream(body)) {
            *self.unread.0.lock().expect("unread body") = Some(body);
        }
    }
}

/// A request of a peer that admission refuses: the connection (HTTP/1) or the stream (HTTP/2)
/// is reset without an answer.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// The remote address of a request's connection.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

/// Serve the plain-HTTP ops router (health, readiness, metrics; nothing else) until `shutdown`.
pub async fn serve_ops(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
