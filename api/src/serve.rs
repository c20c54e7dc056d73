//! The mTLS HTTP server of every daemon, and the plain ops listener.
//!
//! Each accepted connection completes its TLS handshake in its own task (a slow client never
//! blocks accepting), is refused with a log line naming why (wrong CA, expired, no identity),
//! and otherwise serves HTTP/1.1 or HTTP/2 with the peer's [`Identity`] attached to every
//! request as a [`Peer`] extension. A hook hears when a peer's connection closes: a replica uses
//! it to notice at once that its leader's process died.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
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
                    router.oneshot(request.map(axum::body::Body::new)).await.map_err(|never| match never {})
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
