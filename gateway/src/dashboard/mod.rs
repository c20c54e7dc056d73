//! The dashboard: server-rendered pages (askama templates, checked at compile time) on an HTTPS
//! listener of their own (`dashboard.listen`, the gateway's certificate, no client certificate).
//!
//! Sign-in takes a user bearer token on a form (one field, `token`) and opens a session: a random
//! id in a cookie (`HttpOnly`, `Secure`, `SameSite=Strict`, with the session's lifetime), stored
//! hashed in the database with the token's hash, so any replica serves it and a revoked or expired
//! token ends it at the next request. Every form that changes something carries the session's
//! CSRF value. Pages: clusters (filtered by label and state; enable and disable for the admin
//! scope), the matrix (a canvas heatmap over `/matrix.json`, cell details from `/matrix/cell`),
//! pipelines, a pipeline (its DAG, see [`dag`]), a job (attempts, routes, its log followed live;
//! cancel for the submit scope), gateways. `/events` tells open pages when what they show
//! changed (server-sent events), and `static/live.js` reads the changed part again.

// A handler's early answer (the sign-in page, a refusal) is a whole `Response`, returned once per
// request: boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::sync::Arc;

use askama::Template;
use atoll_api::gateway::ClusterState;
use atoll_api::gateway::Scope;
use axum::Form;
use axum::Router;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::Html;
use axum::response::IntoResponse;
use axum::response::Redirect;
use axum::response::Response;
use axum::routing::get;

use crate::Gateway;
use crate::now_ms;

pub mod dag;
pub mod jobs;

/// The session cookie's name.
pub const COOKIE: &str = "atoll_session";

type Shared = State<Arc<Gateway>>;

/// The dashboard's routes.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/clusters") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/clusters", get(clusters))
        .route("/matrix", get(matrix))
        .route("/matrix.json", get(matrix_json))
        .route("/matrix/cell", get(matrix_cell))
        .route("/clusters/{name}/enable", axum::routing::post(jobs::enable))
        .route("/clusters/{name}/disable", axum::routing::post(jobs::disable))
        .route("/pipelines", get(jobs::pipelines))
        .route("/pipelines/{id}", get(jobs::pipeline))
        .route("/jobs/{id}", get(jobs::job))
        .route("/jobs/{id}/logs.json", get(jobs::job_logs))
        .route("/jobs/{id}/cancel", axum::routing::post(jobs::cancel))
        .route("/gateways", get(gateways))
        .route("/events", get(events))
        .route("/static/style.css", get(|| async { asset("text/css", include_str!("static/style.css")) }))
        .route("/static/matrix.js", get(|| async { asset("text/javascript", include_str!("static/matrix.js")) }))
        .route("/static/live.js", get(|| async { asset("text/javascript", include_str!("static/live.js")) }))
        .route("/static/log.js", get(|| async { asset("text/javascript", include_str!("static/log.js")) }))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, Html("<!doctype html><title>Not found</title><p>No such page.</p>"))
        })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(gateway)
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], text).into_response()
}

/// Every answer: no framing by other sites, no guessing of types, scripts only from here.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Render a template as a page with `status`.
fn page(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a dashboard page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html("<!doctype html><title>Error</title><p>This page could not be shown.</p>"),
            )
                .into_response()
        }
    }
}

/// Who is signed in, for a page.
#[derive(Clone, Debug)]
pub struct Signed {
    pub user: String,
    pub scopes: Vec<Scope>,
    pub csrf: String,
    id_hash: String,
}

impl Signed {
    /// Whether the user holds `scope`, as the API decides it.
    pub fn allows(&self, scope: Scope) -> bool {
        self.caller().allows(scope)
    }

    /// The user as the API's caller, to check a scope with the API's words.
    fn caller(&self) -> crate::auth::Caller {
        crate::auth::Caller::User { name: self.user.clone(), scopes: self.scopes.clone() }
    }

    /// A page for this user saying why something was not shown or done.
    fn message(&self, status: StatusCode, page_name: &'static str, heading: &str, message: String) -> Response {
        page(
            status,
            &MessagePage {
                page: page_name,
                user: self.user.clone(),
                csrf: self.csrf.clone(),
                heading: heading.to_string(),
                message,
            },
        )
    }
}

/// Why a request has no session.
enum NoSession {
    /// No cookie: sign in.
    Absent,
    /// A cookie the database no longer knows, or whose token was revoked or expired.
    Ended,
    /// The database did not answer.
    Unavailable(String),
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn signed(gateway: &Gateway, headers: &HeaderMap) -> Result<Signed, NoSession> {
    let Some(id) = cookie_value(headers, COOKIE) else { return Err(NoSession::Absent) };
    let id_hash = atoll_api::token::hash_secret(id);
    let found = gateway.db.session_user(&id_hash, now_ms()).await.map_err(|e| NoSession::Unavailable(e.to_string()))?;
    let Some((session, user)) = found else {
        // Its token may be gone while the session row is not: the row goes too.
        let _ = gateway.db.delete_session(&id_hash).await;
        return Err(NoSession::Ended);
    };
    Ok(Signed { user: user.name, scopes: user.scopes, csrf: session.csrf, id_hash })
}

/// A time as people read it: UTC to the millisecond.
pub fn utc(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => format!("{ms} ms"),
    }
}

/// The answer to a data request (not a page) without a session.
fn no_session_status(no: &NoSession) -> StatusCode {
    match no {
        NoSession::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        NoSession::Absent | NoSession::Ended => StatusCode::UNAUTHORIZED,
    }
}

/// The session of a page request, or the answer to give instead (the sign-in page).
async fn require(gateway: &Gateway, headers: &HeaderMap) -> Result<Signed, Response> {
    match signed(gateway, headers).await {
        Ok(signed) => Ok(signed),
        Err(NoSession::Absent) => Err(Redirect::to("/login").into_response()),
        Err(NoSession::Ended) => Err(Redirect::to("/login?ended=1").into_response()),
        Err(NoSession::Unavailable(e)) => {
            tracing::warn!(error = %e, "reading a dashboard session failed");
            Err(page(
                StatusCode::SERVICE_UNAVAILABLE,
                &LoginPage {
                    message: Some("The gateway cannot read its database right now; try again shortly.".into()),
                },
            ))
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/login.html")]
struct LoginPage {
    message: Option<String>,
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    #[serde(default)]
    ended: Option<String>,
}

async fn login_page(Query(query): Query<LoginQuery>) -> Response {
    let message = query.ended.map(|_| {
        "Your session ended: it timed out, you signed out, or its token was revoked or expired. Sign in again."
            .to_string()
    });
    page(StatusCode::OK, &LoginPage { message })
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(State(gateway): Shared, Form(form): Form<LoginForm>) -> Response {
    let refuse = |status, message: &str| page(status, &LoginPage { message: Some(message.to_string()) });
    let token = form.token.trim();
    if token.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "Give a user token.");
    }
    let Ok(secret) = atoll_api::token::parse_user_token(token) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "That is not a user token: one looks like atoll-user. followed by 64 hex digits (a join token cannot sign in).",
        );
    };
    let token_hash = atoll_api::token::hash_secret(&secret);
    let now = now_ms();
    let user = match gateway.db.user_token(&token_hash, now).await {
        Ok(user) => user,
        Err(e) => {
            tracing::warn!(error = %e, "reading a user token failed");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway cannot read its database right now; try again shortly.",
            );
        }
    };
    let Some(user) = user else {
        tracing::warn!("dashboard sign-in refused: unknown, revoked or expired token");
        return refuse(StatusCode::UNAUTHORIZED, "This token is unknown, revoked or expired.");
    };
    // The dashboard's routes are served only when it is configured; the default is a fallback.
    let ttl = gateway
        .config
        .dashboard
        .map_or_else(|| std::time::Duration::from_secs(crate::config::default_session_ttl_s()), |d| d.session_ttl);
    let id = atoll_api::token::new_secret();
    let csrf = atoll_api::token::new_secret();
    let expires = now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    if let Err(e) =
        gateway.db.insert_session(&atoll_api::token::hash_secret(&id), &token_hash, &csrf, now, expires).await
    {
        tracing::warn!(error = %e, "storing a dashboard session failed");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway cannot write its database right now; try again shortly.",
        );
    }
    tracing::info!(user = %user.name, "dashboard sign-in");
    let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}", ttl.as_secs());
    let mut response = Redirect::to("/clusters").into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("an ASCII cookie"));
    response
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

#[derive(Template)]
#[template(path = "dashboard/message.html")]
struct MessagePage {
    page: &'static str,
    user: String,
    csrf: String,
    heading: String,
    message: String,
}

/// A form that changes something must carry the session's CSRF value.
fn check_csrf(signed: &Signed, form: &CsrfForm) -> Result<(), Response> {
    if !form.csrf.is_empty() && constant_time_eq(form.csrf.as_bytes(), signed.csrf.as_bytes()) {
        return Ok(());
    }
    Err(signed.message(
        StatusCode::FORBIDDEN,
        "",
        "Not done",
        "The form was stale or came from another site (its CSRF value did not match): reload the page and try again."
            .into(),
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session of a form that changes something, its CSRF value checked; or the answer to give.
async fn act(gateway: &Gateway, headers: &HeaderMap, form: &CsrfForm) -> Result<Signed, Response> {
    let signed = require(gateway, headers).await?;
    check_csrf(&signed, form)?;
    Ok(signed)
}

async fn logout(State(gateway): Shared, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    let signed = match act(&gateway, &headers, &form).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if let Err(e) = gateway.db.delete_session(&signed.id_hash).await {
        tracing::warn!(error = %e, "ending a dashboard session failed");
    }
    let mut response = Redirect::to("/login").into_response();
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("an ASCII cookie"));
    response
}

/// One row of the clusters page.
pub struct ClusterLine {
    pub name: String,
    pub labels: Vec<String>,
    pub state: String,
    pub enabled: bool,
    pub leader: String,
    pub term: u64,
    pub replicas: usize,
    pub last_seen: String,
    /// Attempts running there.
    pub running: u64,
    /// Attempts placed there that have not started (the leader's `max_running` holds them).
    pub queued: u64,
}

#[derive(Template)]
#[template(path = "dashboard/clusters.html")]
pub struct ClustersPage {
    pub page: &'static str,
    pub user: String,
    pub csrf: String,
    /// Every label a cluster has, and whether the filter chose it.
    pub label_options: Vec<(String, bool)>,
    /// Every state, and whether the filter chose it.
    pub state_options: Vec<(&'static str, bool)>,
    pub total: usize,
    pub rows: Vec<ClusterLine>,
    /// [`clusters_digest`] of what the page shows: the live script asks for the page again only
    /// when an event says otherwise.
    pub digest: String,
    /// The user holds the admin scope: each row has its enable or disable button.
    pub can_admin: bool,
}

#[derive(serde::Deserialize, Default)]
struct ClusterFilter {
    #[serde(default)]
    label: String,
    #[serde(default)]
    state: String,
}

fn state_name(state: ClusterState) -> &'static str {
    match state {
        ClusterState::Alive => "alive",
        ClusterState::Suspect => "suspect",
        ClusterState::Dead => "dead",
    }
}

async fn clusters(State(gateway): Shared, headers: HeaderMap, Query(filter): Query<ClusterFilter>) -> Response {
    let signed = match require(&gateway, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    if gateway.lease.replicated()
        && let Err(e) = gateway.registry.refresh_if_unregistered().await
    {
        tracing::warn!(error = %e, "refreshing the registry for the dashboard failed");
    }
    let counts = gateway.db.cluster_job_counts().await.unwrap_or_default();
    let all = gateway.registry.list(now_ms());
    let digest = format!("{:x}", clusters_digest(&all));
    let all_labels: Vec<String> =
        all.iter().flat_map(|c| c.labels.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let total = all.len();
    let rows = all
        .into_iter()
        .filter(|c| filter.label.is_empty() || c.labels.contains(&filter.label))
        .filter(|c| {
            let state = if c.revoked { "revoked" } else { state_name(c.state) };
            filter.state.is_empty() || state == filter.state
        })
        .map(|c| ClusterLine {
            running: counts.get(c.name.as_str()).map_or(0, |n| n.1),
            queued: counts.get(c.name.as_str()).map_or(0, |n| n.0),
            name: c.name.to_string(),
            labels: c.labels,
            state: if c.revoked { "revoked".into() } else { state_name(c.state).into() },
            enabled: c.enabled,
            leader: c.leader.map_or_else(|| "—".to_string(), |l| l.to_string()),
            term: c.term.0,
            replicas: c.replicas.len(),
            last_seen: c.last_seen_ms.map_or_else(|| "never".to_string(), |ms| format!("{ms} ms ago")),
        })
        .collect();
    let can_admin = signed.allows(Scope::Admin);
    page(
        StatusCode::OK,
        &ClustersPage {
            page: "clusters",
            user: signed.user,
            csrf: signed.csrf,
            label_options: all_labels.into_iter().map(|l| (l.clone(), l == filter.label)).collect(),
            state_options: ["alive", "suspect", "dead", "revoked"]
                .into_iter()
                .map(|s| (s, s == filter.state))
                .collect(),
            total,
            rows,
            digest,
            can_admin,
        },
    )
}

#[derive(Template)]
#[template(path = "dashboard/matrix.html")]
pub struct MatrixPage {
    pub page: &'static str,
    pub user: String,
    pub csrf: String,
    pub count: usize,
    pub label_keys: Vec<String>,
}

async fn matrix(State(gateway): Shared, headers: HeaderMap) -> Response {
    let signed = match require(&gateway, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let clusters = gateway.registry.registered();
    let label_keys =
        clusters.iter().flat_map(|c| c.labels.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    page(
        StatusCode::OK,
        &MatrixPage { page: "matrix", user: signed.user, csrf: signed.csrf, count: clusters.len(), label_keys },
    )
}

/// The matrix for the heatmap, compact: a character per cell (see `static/matrix.js`).
#[derive(serde::Serialize)]
pub struct MatrixData {
    pub names: Vec<String>,
    pub labels: Vec<Vec<String>>,
    pub states: String,
    pub modes: String,
}

/// The heatmap's data from the registry's clusters and the reported rows (pure but for `now`).
pub fn matrix_data(
    clusters: &[crate::db::clusters::ClusterRow],
    rows: &std::collections::BTreeMap<String, Arc<crate::db::matrix::StoredRow>>,
    now_ms: i64,
    stale_after: std::time::Duration,
) -> MatrixData {
    use atoll_api::gateway::LinkState;
    use atoll_api::gateway::TransferMode;
    let grid = crate::matrix::Grid::new(clusters, rows, now_ms, stale_after);
    let names: Vec<String> = grid.names().iter().map(|n| n.to_string()).collect();
    let labels_of: std::collections::HashMap<&str, &Vec<String>> =
        clusters.iter().map(|c| (c.name.as_str(), &c.labels)).collect();
    let labels = names.iter().map(|n| labels_of.get(n.as_str()).map(|l| (*l).clone()).unwrap_or_default()).collect();
    let n = names.len();
    let mut states = String::with_capacity(n * n);
    let mut modes = String::with_capacity(n * n);
    for from in 0..n {
        for to in 0..n {
            let cell = grid.cell(from, to);
            states.push(match cell.state {
                LinkState::Reachable => 'r',
                LinkState::Suspect => 's',
                LinkState::Unreachable => 'u',
                LinkState::Unknown => '?',
            });
            modes.push(match cell.mode {
                TransferMode::Direct => 'd',
                TransferMode::Relay => 'r',
            });
        }
    }
    MatrixData { names, labels, states, modes }
}

async fn matrix_json(State(gateway): Shared, headers: HeaderMap) -> Response {
    if let Err(no) = signed(&gateway, &headers).await {
        return no_session_status(&no).into_response();
    }
    let (clusters, rows, stale_after) =
        (gateway.registry.registered(), gateway.rows.snapshot(), gateway.config.stale_after);
    let data = tokio::task::spawn_blocking(move || matrix_data(&clusters, &rows, now_ms(), stale_after)).await;
    match data {
        Ok(data) => axum::Json(data).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(serde::Deserialize)]
struct CellQuery {
    from: String,
    to: String,
}

async fn matrix_cell(State(gateway): Shared, headers: HeaderMap, Query(query): Query<CellQuery>) -> Response {
    if let Err(no) = signed(&gateway, &headers).await {
        return no_session_status(&no).into_response();
    }
    // A grid of just the pair: its cells are the whole matrix's for these two (the direction
    // back decides the mode), without joining every row for one cell.
    let pair: Vec<_> = gateway
        .registry
        .registered()
        .into_iter()
        .filter(|c| c.name.as_str() == query.from || c.name.as_str() == query.to)
        .collect();
    let rows = gateway.rows.snapshot();
    let grid = crate::matrix::Grid::new(&pair, &rows, now_ms(), gateway.config.stale_after);
    let index = |name: &str| grid.names().iter().position(|n| n.as_str() == name);
    match (index(&query.from), index(&query.to)) {
        (Some(from), Some(to)) => axum::Json(grid.cell(from, to)).into_response(),
        _ => (StatusCode::NOT_FOUND, "no such pair of registered clusters").into_response(),
    }
}

#[derive(Template)]
#[template(path = "dashboard/gateways.html")]
pub struct GatewaysPage {
    pub page: &'static str,
    pub user: String,
    pub csrf: String,
    pub rows: Vec<atoll_api::gateway::GatewayReplica>,
}

async fn gateways(State(gateway): Shared, headers: HeaderMap) -> Response {
    let signed = match require(&gateway, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let rows = match crate::http::gateways::replicas(&gateway).await {
        Ok(rows) => rows,
        Err(e) => {
            return signed.message(
                StatusCode::SERVICE_UNAVAILABLE,
                "gateways",
                "Gateway replicas",
                format!("The replicas could not be read: {}", e.message),
            );
        }
    };
    page(StatusCode::OK, &GatewaysPage { page: "gateways", user: signed.user, csrf: signed.csrf, rows })
}

/// How often the event stream looks for changes: what the gateway knows shows within this (and
/// the browser's fetch of the new data).
pub const EVENTS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A digest of what the clusters page shows: each cluster's state, leader, term, standing.
pub fn clusters_digest(clusters: &[atoll_api::gateway::ClusterInfo]) -> u64 {
    use std::hash::Hash;
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in clusters {
        (c.name.as_str(), state_name(c.state), c.leader, c.term.0, c.enabled, c.revoked, c.replicas.len()).hash(&mut h);
    }
    h.finish()
}

/// A digest of what the matrix shows: every reporter's row (by term and time) and whether it is
/// still fresh, so a row growing stale (its cells turning unknown) counts as a change too.
pub fn matrix_digest(
    clusters: &[crate::db::clusters::ClusterRow],
    rows: &std::collections::BTreeMap<String, Arc<crate::db::matrix::StoredRow>>,
    now_ms: i64,
    stale_after: std::time::Duration,
) -> u64 {
    use std::hash::Hash;
    use std::hash::Hasher;
    let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in clusters {
        c.name.as_str().hash(&mut h);
        c.labels.hash(&mut h);
    }
    for (reporter, row) in rows {
        reporter.hash(&mut h);
        (now_ms - row.reported_ms <= stale_ms).hash(&mut h);
        for cell in &row.cells {
            (cell.to.as_str(), cell.state).hash(&mut h);
        }
    }
    h.finish()
}

/// What an event stream watches (`/events?watch=...`): the clusters and the matrix (no
/// `watch`), the pipelines list, one pipeline, or one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watch {
    ClustersAndMatrix,
    Pipelines,
    Pipeline(String),
    Job(String),
}

impl Watch {
    /// `watch`'s value, or why it is not one.
    pub fn parse(value: Option<&str>) -> Result<Watch, String> {
        match value {
            None | Some("") => Ok(Watch::ClustersAndMatrix),
            Some("pipelines") => Ok(Watch::Pipelines),
            Some(other) => match other.split_once(':') {
                Some(("pipeline", id)) if !id.is_empty() => Ok(Watch::Pipeline(id.to_string())),
                Some(("job", id)) if !id.is_empty() => Ok(Watch::Job(id.to_string())),
                _ => Err(format!(
                    "watch={other:?} is not something to watch: leave it out (clusters and matrix), or give pipelines, pipeline:ID or job:ID"
                )),
            },
        }
    }

    /// The events to send now: (event name, digest) of what is watched. A pipeline or job that
    /// cannot be read sends nothing this time.
    async fn digests(&self, gateway: &Gateway) -> Vec<(&'static str, String)> {
        match self {
            Watch::ClustersAndMatrix => {
                let now = now_ms();
                let clusters = clusters_digest(&gateway.registry.list(now));
                let matrix = matrix_digest(
                    &gateway.registry.registered(),
                    &gateway.rows.snapshot(),
                    now,
                    gateway.config.stale_after,
                );
                vec![("clusters", format!("{clusters:x}")), ("matrix", format!("{matrix:x}"))]
            }
            Watch::Pipelines => match gateway.db.recent_pipelines(jobs::PIPELINES_LISTED).await {
                Ok(summaries) => vec![("pipelines", jobs::digest_of(&summaries))],
                Err(_) => Vec::new(),
            },
            Watch::Pipeline(id) => match jobs::pipeline_view(gateway, id).await {
                Ok((_, _, digest)) => vec![("pipeline", digest)],
                Err(_) => Vec::new(),
            },
            Watch::Job(id) => match gateway.job_detail(id).await {
                Ok(detail) => vec![("job", jobs::digest_of(&detail))],
                Err(_) => Vec::new(),
            },
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    watch: Option<String>,
}

/// `GET /events`: server-sent events, each named for what it watches (`clusters`, `matrix`,
/// `pipelines`, `pipeline`, `job`) with a digest of it, sent at the start and when it changes;
/// a page reads its changed part again on them. Ends when the session does (the browser's
/// `EventSource` then reconnects, and a page finds the sign-in form) or the gateway stops.
async fn events(State(gateway): Shared, headers: HeaderMap, Query(query): Query<EventsQuery>) -> Response {
    let signed = match signed(&gateway, &headers).await {
        Ok(signed) => signed,
        Err(no) => return no_session_status(&no).into_response(),
    };
    let watch = match Watch::parse(query.watch.as_deref()) {
        Ok(watch) => watch,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    struct Stream {
        gateway: Arc<Gateway>,
        signed: Signed,
        watch: Watch,
        last: std::collections::HashMap<&'static str, String>,
        pending: Vec<axum::response::sse::Event>,
        checked: tokio::time::Instant,
    }
    let start = Stream {
        gateway,
        signed,
        watch,
        last: std::collections::HashMap::new(),
        pending: Vec::new(),
        checked: tokio::time::Instant::now(),
    };
    let stream = futures::stream::unfold(start, |mut w| async move {
        loop {
            if let Some(event) = w.pending.pop() {
                return Some((Ok::<_, std::convert::Infallible>(event), w));
            }
            if w.gateway.is_stopping() {
                return None;
            }
            tokio::time::sleep_until(w.checked + EVENTS_EVERY).await;
            w.checked = tokio::time::Instant::now();
            // A session that ended (signed out, timed out, its token revoked) ends its stream.
            if matches!(w.gateway.db.session_user(&w.signed.id_hash, now_ms()).await, Ok(None)) {
                return None;
            }
            for (name, digest) in w.watch.digests(&w.gateway).await {
                if w.last.get(name) != Some(&digest) {
                    w.pending.push(axum::response::sse::Event::default().event(name).data(digest.clone()));
                    w.last.insert(name, digest);
                }
            }
        }
    });
    axum::response::sse::Sse::new(stream)
        .keep_alive(axum::response::sse::KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests;
