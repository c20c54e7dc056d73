//! A gateway client over several replicas, against real listeners on 127.0.0.1: a call moves
//! past a replica with nothing listening, one answering server errors, and one that dies under
//! a long poll; a submission is not sent twice; a replica learned from a heartbeat answer is
//! used by every client over the same list; the error of a call that found no replica names
//! every address it tried.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::Identity;
use atoll_api::gateway::GatewayReplica;
use atoll_api::gateway_addrs::GatewayAddrs;
use atoll_api::gateway_client::GatewayClient;
use atoll_api::ids::Term;
use atoll_api::jobs::LeaseRequest;
use atoll_api::jobs::LeaseResponse;
use atoll_api::jobs::SubmitRequest;
use atoll_api::pki::CertificateAuthority;
use atoll_api::pki::KeyAlgorithm;
use atoll_api::serve::serve_mtls;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TlsIdentity;
use axum::Json;
use axum::Router;
use axum::routing::get;
use axum::routing::post;

const DAY: Duration = Duration::from_secs(86_400);

fn identity(ca: &CertificateAuthority, who: &Identity) -> TlsIdentity {
    let cert = ca.issue(who, DAY, KeyAlgorithm::EcdsaP256).unwrap();
    TlsIdentity::from_pem(
        Path::new("ca.pem"),
        ca.cert_pem().as_bytes(),
        Path::new("cert.pem"),
        cert.cert_pem.as_bytes(),
        Path::new("key.pem"),
        cert.key_pem.as_bytes(),
    )
    .unwrap()
}

/// How a test replica answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Every route answers.
    Healthy,
    /// Every route answers 503 `unavailable` (its database is away, say).
    Unavailable,
    /// A lease is held without an answer (a long poll with nothing to say).
    HoldsLeases,
}

/// A gateway replica on its own runtime, so that stopping it drops its open connections at once,
/// as a process that dies does.
struct Replica {
    addr: String,
    requests: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Replica {
    fn start(ca: &CertificateAuthority, id: &str, behaviour: Behaviour) -> Self {
        let tls = identity(ca, &Identity::Gateway { id: id.to_string() });
        let requests = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (me, count) = (addr.clone(), requests.clone());
        let answer = move || {
            count.fetch_add(1, Ordering::SeqCst);
            match behaviour {
                Behaviour::Unavailable => Err(ApiError::unavailable("the database does not answer")),
                _ => Ok(()),
            }
        };
        let (gateways, lease, submit) = (answer.clone(), answer.clone(), answer);
        let router = Router::new()
            .route(
                "/v1/gateways",
                get(move || {
                    let me = me.clone();
                    let gateways = gateways.clone();
                    async move {
                        gateways()?;
                        let replica = GatewayReplica {
                            id: me,
                            addr: String::new(),
                            holds_lease: true,
                            generation: 1,
                            last_seen_ms: 0,
                        };
                        Ok::<_, ApiError>(Json(vec![replica]))
                    }
                }),
            )
            .route(
                "/v1/clusters/{name}/lease",
                post(move || async move {
                    lease()?;
                    if behaviour == Behaviour::HoldsLeases {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, ApiError>(Json(LeaseResponse::default()))
                }),
            )
            .route(
                "/v1/pipelines",
                post(move || async move {
                    submit()?;
                    Ok::<_, ApiError>(Json(serde_json::json!({"pipeline": "p1", "jobs": []})))
                }),
            );
        let config = tls.server_config().unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let never = std::future::pending::<()>();
            let _ = serve_mtls(listener, config, router, Default::default(), never, Duration::from_secs(1)).await;
        });
        Self { addr, requests, runtime: Some(runtime) }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stop at once: the listener and every open connection close.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An address nothing listens on (bound, then released).
fn nothing_listening() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn client(ca: &CertificateAuthority, addrs: &GatewayAddrs, timeout: Duration) -> GatewayClient {
    let tls = identity(ca, &Identity::node("aws".parse().unwrap(), 1));
    GatewayClient::with_addrs(tls.client_config(ServerPolicy::Gateway).unwrap(), addrs.clone(), None, timeout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_moves_past_a_replica_with_nothing_listening_and_the_next_starts_there() {
    let ca = CertificateAuthority::generate("test CA", DAY).unwrap();
    let live = Replica::start(&ca, "b", Behaviour::Healthy);
    let dead = nothing_listening();
    let addrs = GatewayAddrs::new(&[dead.clone(), live.addr.clone()]);
    let gateway = client(&ca, &addrs, Duration::from_secs(5));
    assert_eq!(gateway.addr(), dead, "the first configured is used first");

    tracing::info!("phase: the first replica refuses the connection; the call goes on to the second");
    let replicas = gateway.gateways().await.expect("answered by the live replica");
    assert_eq!(replicas[0].id, live.addr);
    assert_eq!(gateway.addr(), live.addr);

    tracing::info!("phase: the next call, and a client sharing the addresses, start at the live one");
    let leases = client(&ca, &addrs, Duration::from_secs(30));
    assert_eq!(leases.addr(), live.addr);
    leases.gateways().await.expect("answered");
    gateway.gateways().await.expect("answered");
    assert_eq!(live.requests(), 3);
    assert_eq!(addrs.plan(), [live.addr.clone(), dead]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_moves_a_read_on_but_a_submission_is_not_sent_again() {
    let ca = CertificateAuthority::generate("test CA", DAY).unwrap();
    let sick = Replica::start(&ca, "a", Behaviour::Unavailable);
    let live = Replica::start(&ca, "b", Behaviour::Healthy);

    tracing::info!("phase: a read answered 503 by the first replica is answered by the second");
    let addrs = GatewayAddrs::new(&[sick.addr.clone(), live.addr.clone()]);
    let gateway = client(&ca, &addrs, Duration::from_secs(5));
    gateway.gateways().await.expect("the second replica answers");
    assert_eq!((sick.requests(), live.requests()), (1, 1));

    tracing::info!("phase: a submission answered 503 is that answer (it may have been stored)");
    let addrs = GatewayAddrs::new(&[sick.addr.clone(), live.addr.clone()]);
    let gateway = client(&ca, &addrs, Duration::from_secs(5));
    let request = SubmitRequest { spec: serde_json::json!({"version": 1, "jobs": []}), files: Default::default() };
    let error = gateway.submit(&request).await.expect_err("not sent to the second replica");
    assert_eq!(error.code(), Some(ErrorCode::Unavailable));
    assert_eq!((sick.requests(), live.requests()), (2, 1));
    assert_eq!(gateway.addr(), live.addr, "the next call starts at the next replica");
    gateway.submit(&request).await.expect("submitted through the second replica");

    tracing::info!("phase: a submission whose connection was refused goes on to the next replica");
    let addrs = GatewayAddrs::new(&[nothing_listening(), live.addr.clone()]);
    let gateway = client(&ca, &addrs, Duration::from_secs(5));
    gateway.submit(&request).await.expect("never sent to the first: sent to the second");
    assert_eq!(live.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_under_a_long_poll_is_left_at_once() {
    let ca = CertificateAuthority::generate("test CA", DAY).unwrap();
    let mut holder = Replica::start(&ca, "a", Behaviour::HoldsLeases);
    let live = Replica::start(&ca, "b", Behaviour::Healthy);
    let addrs = GatewayAddrs::new(&[holder.addr.clone(), live.addr.clone()]);
    // The lease client's timeout is long, as the agent's is (the poll itself waits at the gateway).
    let leases = client(&ca, &addrs, Duration::from_secs(60));
    let request = LeaseRequest { term: Term(1), held: Vec::new(), wait_ms: 20_000 };

    tracing::info!("phase: the lease waits at the first replica");
    let poll = tokio::spawn(async move { leases.lease("aws", &request).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while holder.requests() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the lease never reached the first replica");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    tracing::info!("phase: the first replica dies; the poll is answered by the second, not after its timeout");
    let killed = tokio::time::Instant::now();
    holder.kill();
    let answer = tokio::time::timeout(Duration::from_secs(5), poll).await.expect("left at once").unwrap();
    assert_eq!(answer.expect("answered by the second replica"), LeaseResponse::default());
    assert!(killed.elapsed() < Duration::from_secs(5));
    assert_eq!(live.requests(), 1);
    assert_eq!(addrs.current(), live.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_no_replica_answers_the_error_names_every_address_tried() {
    let ca = CertificateAuthority::generate("test CA", DAY).unwrap();
    let (a, b, c) = (nothing_listening(), nothing_listening(), nothing_listening());
    let addrs = GatewayAddrs::new(&[a.clone(), b.clone(), c.clone()]);
    let gateway = client(&ca, &addrs, Duration::from_secs(5));
    let error = gateway.gateways().await.expect_err("nothing listens");
    let text = error.to_string();
    for addr in [&a, &b, &c] {
        assert!(text.contains(addr.as_str()), "{addr} not named in: {text}");
    }
    assert!(error.surely_failed(), "no try was sent: {text}");
    assert_eq!(addrs.current(), a, "each tried once: round to the first again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_learned_after_the_start_is_used_when_the_one_in_use_dies() {
    let ca = CertificateAuthority::generate("test CA", DAY).unwrap();
    let mut first = Replica::start(&ca, "a", Behaviour::Healthy);
    let added = Replica::start(&ca, "b", Behaviour::Healthy);
    let addrs = GatewayAddrs::new(std::slice::from_ref(&first.addr));
    let heartbeats = client(&ca, &addrs, Duration::from_secs(5));
    let leases = client(&ca, &addrs, Duration::from_secs(60));
    heartbeats.gateways().await.expect("the configured replica answers");

    tracing::info!("phase: a heartbeat answer lists a replica started later");
    heartbeats.learn(&[first.addr.clone(), added.addr.clone()]);
    assert_eq!(leases.addr(), first.addr, "the replica in use stays in use");

    tracing::info!("phase: the configured replica dies; every client goes on to the learned one");
    first.kill();
    let request = LeaseRequest { term: Term(1), held: Vec::new(), wait_ms: 20_000 };
    leases.lease("aws", &request).await.expect("answered by the learned replica");
    assert_eq!(heartbeats.addr(), added.addr, "clients over one list move together");
    heartbeats.gateways().await.expect("answered by the learned replica");
    assert_eq!(added.requests(), 2);
}
