//! Boot and orderly shutdown of the gateway.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use atoll_api::gateway::Scope;
use atoll_api::tls::ClientCerts;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Gateway;
use crate::breakage::Breakage;
use crate::ca::GatewayCa;
use crate::config::GatewayConfig;
use crate::db::Db;
use crate::matrix::Rows;
use crate::metrics::Flush;
use crate::metrics::Metrics;
use crate::now_ms;
use crate::registry::Registry;

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Write a fresh admin token to `path` when the database holds none.
async fn bootstrap_admin(db: &Db, path: &std::path::Path) -> anyhow::Result<()> {
    if db.has_admin_token(now_ms()).await? {
        return Ok(());
    }
    if path.exists() {
        anyhow::bail!(
            "{} exists, but the database holds no admin token: the file is stale (another database?). Delete it to have a new admin token written",
            path.display()
        );
    }
    let (token, secret) = atoll_api::token::new_user_token();
    db.insert_user_token(&atoll_api::token::hash_secret(&secret), "admin", &[Scope::Admin], now_ms(), None).await?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing the admin token to {}", path.display()))?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    tracing::info!(file = %path.display(), "admin token written");
    Ok(())
}

/// How long a batched write may take before it is given up (and retried with the next batch).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Flush batched writes every `every` until `stop`.
async fn flush_forever(gateway: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(crate::registry::FLUSH_EVERY);
    let mut refresh = tokio::time::interval(crate::registry::REFRESH_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => gateway.flush().await,
            _ = refresh.tick() => {
                if let Err(e) = gateway.registry.refresh().await {
                    tracing::warn!(error = %e, "refreshing the registry from the database failed");
                }
                if let Err(e) = gateway.rows.refresh().await {
                    tracing::warn!(error = %e, "refreshing matrix rows from the database failed");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

impl Gateway {
    /// Write batched heartbeat times and rows.
    pub async fn flush(&self) {
        for (what, result) in
            [("heartbeats", self.timed_flush("heartbeats").await), ("rows", self.timed_flush("rows").await)]
        {
            if let Err(e) = result {
                self.metrics.flush_errors.get_or_create(&Flush { what }).inc();
                tracing::warn!(what, error = %e, "writing batched updates failed; they are kept in memory and retried");
            }
        }
    }

    /// One batched write (heartbeat times are given up after [`FLUSH_TIMEOUT`] and kept for the
    /// next). With several
    /// replicas, a write that failed or hung marks the database unreachable from this replica:
    /// it refuses heartbeats until a write succeeds again, so leaders move to a replica whose
    /// writes the others see.
    async fn timed_flush(&self, what: &'static str) -> Result<(), String> {
        let started = tokio::time::Instant::now();
        let result = if what == "heartbeats" {
            // Abandoning it puts the batch back (the registry's flush is safe to drop).
            match tokio::time::timeout(FLUSH_TIMEOUT, self.registry.flush()).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {FLUSH_TIMEOUT:?}")),
            }
        } else {
            // A hung write of rows holds the loop; this replica's presence writes hang with it
            // and it stops accepting heartbeats all the same.
            self.rows.flush().await.map_err(|e| e.to_string())
        };
        if result.is_err() {
            self.lease.database_trouble();
        }
        self.metrics.flush_duration.get_or_create(&Flush { what }).observe(started.elapsed().as_secs_f64());
        result
    }
}

/// Run the gateway until `shutdown` resolves, then stop in order.
pub async fn run(config: GatewayConfig, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    serve(config, Breakage::default(), shutdown).await
}

/// [`run`], broken as `breakage` says: the chaos suite's gateway, to show its checkers catch
/// what they claim to. Test builds only.
#[cfg(any(test, feature = "testsuite"))]
pub async fn run_broken(
    config: GatewayConfig,
    breakage: Breakage,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve(config, breakage, shutdown).await
}

async fn serve(
    config: GatewayConfig,
    breakage: Breakage,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tracing::info!(id = %config.id, version = atoll_api::VERSION, "starting atoll gateway");
    for warning in breakage.warnings() {
        tracing::warn!("{warning}");
    }
    if config.ha.enabled && !config.ca_dir.join("ca-key.pem").exists() {
        // Two replicas starting at once would each make a CA of their own.
        anyhow::bail!(
            "ca_dir: {} holds no CA (ca.pem, ca-key.pem), and several gateway replicas (ha.enabled) must share one: create it once with `atoll ca init --dir DIR`, or mount the secret holding it",
            config.ca_dir.display()
        );
    }
    let db = Db::connect(&config.database).await?;
    tracing::info!(engine = db.engine(), "database ready (migrated)");
    let (ca, created) = GatewayCa::load_or_create(&config.ca_dir, &config.id, &config.tls_names, config.cert_lifetime)?;
    tracing::info!(dir = %config.ca_dir.display(), fingerprint = ca.fingerprint(), created, "certificate authority ready");
    let names: Vec<String> = config.tls_names.iter().map(|name| name.to_string()).collect();
    tracing::info!(identity = %ca.tls().identity(), ?names, "gateway certificate issued");
    if let Some(path) = &config.admin_token_file {
        bootstrap_admin(&db, path).await?;
    }
    let judging = crate::registry::Judging {
        since_ms: crate::now_ms(),
        suspect_after: config.suspect_after,
        dead_after: config.dead_after,
    };
    let registry = Registry::load(db.clone(), judging, breakage).await?;
    let fallen = db.fallen_edges().await?;
    if !fallen.is_empty() {
        tracing::info!(edges = fallen.len(), "edges that fell back to the relay stay relayed");
    }
    let rows = Rows::load(db.clone()).await?;
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("binding listen {}", config.listen))?;
    let ops_listener = match config.ops_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding ops_listen {addr}"))?),
        None => None,
    };
    let ca = Arc::new(ca);
    let server_config = ca.tls().server_config_with(ClientCerts::Optional)?;
    let relay =
        atoll_store::Blobs::open(&config.storage).with_context(|| format!("storage: {}", config.storage.describe()))?;
    match relay.check().await {
        Ok(()) => tracing::info!(store = relay.name(), "relayed outputs are kept in {}", relay.name()),
        Err(e) => tracing::warn!(error = %e, "the relay store does not answer yet"),
    }
    let relay = atoll_store::transfer::BlobService::new(
        relay,
        crate::relay::StoreGuard::new(ca.authority().cert_der()?, db.clone()),
    );
    let (bus, announcements) = match (&db, config.ha.enabled) {
        (Db::Postgres(_), true) => {
            let (bus, rx) = crate::bus::channel();
            (bus, Some(rx))
        }
        _ => (crate::bus::Bus::default(), None),
    };
    let lease = crate::duties::Lease::new(config.ha, breakage);
    let gateway = Arc::new(Gateway {
        config: config.clone(),
        db: db.clone(),
        ca: ca.clone(),
        registry,
        rows,
        metrics: Metrics::new(),
        jobs: crate::jobs::JobsState::default(),
        transfers: crate::relay::Transfers::with_fallen(fallen),
        relay,
        breakage,
        lease,
        bus,
        stopping: Default::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let grace = config.shutdown_grace;
    let server = tokio::spawn(atoll_api::serve::serve_mtls(
        listener,
        server_config,
        crate::http::router(gateway.clone()),
        atoll_api::serve::Hooks { allow_anonymous: true, ..Default::default() },
        stopped(stop_rx.clone()),
        grace / 2,
    ));
    let dashboard = match config.dashboard {
        Some(d) => {
            let listener =
                TcpListener::bind(d.listen).await.with_context(|| format!("binding dashboard.listen {}", d.listen))?;
            let tls = ca.tls().server_config_with(ClientCerts::None)?;
            tracing::info!(listen = %d.listen, "dashboard at https://{}/", d.listen);
            Some(tokio::spawn(atoll_api::serve::serve_mtls(
                listener,
                tls,
                crate::dashboard::router(gateway.clone()),
                atoll_api::serve::Hooks { allow_anonymous: true, ..Default::default() },
                stopped(stop_rx.clone()),
                grace / 2,
            )))
        }
        None => None,
    };
    let ops = ops_listener.map(|l| {
        tokio::spawn(atoll_api::serve::serve_ops(
            l,
            crate::http::ops::router(gateway.clone()),
            stopped(stop_rx.clone()),
        ))
    });
    let flusher = tokio::spawn(flush_forever(gateway.clone(), stop_rx.clone()));
    let scheduler = tokio::spawn(gateway.clone().schedule_forever(stop_rx.clone()));
    let renewer = tokio::spawn(ca.clone().renew_forever());
    let collector = tokio::spawn(crate::retention::run(gateway.clone(), stop_rx.clone()));
    let duties = tokio::spawn(crate::duties::run(gateway.clone(), stop_rx.clone()));
    let mut bus_tasks = Vec::new();
    if let (Db::Postgres(pool), Some(rx)) = (&db, announcements) {
        let me = gateway.lease.incarnation().to_string();
        bus_tasks.push(tokio::spawn(crate::bus::send_forever(pool.clone(), me.clone(), rx, stop_rx.clone())));
        bus_tasks.push(tokio::spawn(crate::bus::listen_forever(gateway.clone(), pool.clone(), me, stop_rx.clone())));
        tracing::info!(channel = crate::bus::CHANNEL, "one of several gateway replicas: listening to the others");
    }
    tracing::info!(listen = %config.listen, advertise = %config.advertise, ops = ?config.ops_listen, "serving");

    shutdown.await;
    tracing::info!("shutdown: readiness off");
    gateway.stopping.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    gateway.jobs.close();
    tracing::info!("shutdown: draining requests");
    let _ = tokio::time::timeout(grace, server).await;
    if let Some(dashboard) = dashboard {
        let _ = tokio::time::timeout(grace / 2, dashboard).await;
    }
    if let Some(ops) = ops {
        let _ = tokio::time::timeout(Duration::from_secs(1), ops).await;
    }
    renewer.abort();
    collector.abort();
    let _ = flusher.await;
    let _ = scheduler.await;
    let _ = duties.await;
    for task in bus_tasks {
        task.abort();
    }
    tracing::info!("shutdown: writing batched updates");
    gateway.flush().await;
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}
