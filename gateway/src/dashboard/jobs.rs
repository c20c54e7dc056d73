//! The dashboard's pipelines, pipeline and job pages, a job's log for the live follow, and the
//! job and cluster actions (each needs its scope and the session's CSRF value).

use std::sync::Arc;

use askama::Template;
use atoll_api::ApiError;
use atoll_api::gateway::Scope;
use atoll_api::jobs::AttemptInfo;
use atoll_api::jobs::JobDetail;
use atoll_api::jobs::JobInfo;
use atoll_api::jobs::JobState;
use atoll_api::jobs::RouteTaken;
use atoll_api::jobs::Submitted;
use axum::Form;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Redirect;
use axum::response::Response;

use super::CsrfForm;
use super::Shared;
use super::Signed;
use super::dag;
use super::page;
use super::require;
use super::utc;
use crate::Gateway;
use crate::db::jobs::PipelineSummary;

/// How many pipelines the pipelines page lists (the newest).
pub const PIPELINES_LISTED: u32 = 200;

/// What a digest of `value`'s debug text is: pages and the event stream compare them to know
/// whether what a page shows changed.
pub fn digest_of(value: &impl std::fmt::Debug) -> String {
    use std::hash::Hash;
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{value:?}").hash(&mut h);
    format!("{:x}", h.finish())
}

/// A page saying why something was not shown or done, in the API's words.
fn refusal(signed: &Signed, page_name: &'static str, heading: &str, e: &ApiError) -> Response {
    signed.message(e.code.status(), page_name, heading, e.message.clone())
}

/// Where a pipeline stands, from how many of its jobs are in each state.
pub fn pipeline_status(jobs: &[(JobState, u64)]) -> &'static str {
    let any = |states: &[JobState]| jobs.iter().any(|(s, n)| *n > 0 && states.contains(s));
    if jobs.iter().any(|(s, n)| *n > 0 && !s.is_final()) {
        "running"
    } else if any(&[JobState::Failure, JobState::Error, JobState::Killed]) {
        "failed"
    } else if any(&[JobState::Unstable]) {
        "unstable"
    } else {
        "finished"
    }
}

pub struct PipelineLine {
    pub id: String,
    pub submitted_by: String,
    pub submitted: String,
    pub status: &'static str,
    /// "3 finished, 1 running".
    pub jobs: String,
}

#[derive(Template)]
#[template(path = "dashboard/pipelines.html")]
pub struct PipelinesPage {
    pub page: &'static str,
    pub user: String,
    pub csrf: String,
    pub events: String,
    pub status_options: Vec<(&'static str, bool)>,
    pub listed: u32,
    pub total: usize,
    pub rows: Vec<PipelineLine>,
    pub digest: String,
}

#[derive(serde::Deserialize, Default)]
pub(super) struct PipelineFilter {
    #[serde(default)]
    status: String,
}

pub fn pipeline_lines(summaries: &[PipelineSummary], status: &str) -> Vec<PipelineLine> {
    summaries
        .iter()
        .map(|p| PipelineLine {
            id: p.id.clone(),
            submitted_by: p.submitted_by.clone(),
            submitted: utc(p.created_ms),
            status: pipeline_status(&p.jobs),
            jobs: p.jobs.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", "),
        })
        .filter(|line| status.is_empty() || line.status == status)
        .collect()
}

pub(super) async fn pipelines(
    State(gateway): Shared,
    headers: HeaderMap,
    Query(filter): Query<PipelineFilter>,
) -> Response {
    let signed = match require(&gateway, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let summaries = match gateway.db.recent_pipelines(PIPELINES_LISTED).await {
        Ok(summaries) => summaries,
        Err(e) => return refusal(&signed, "pipelines", "Pipelines", &crate::jobs::db_error(e)),
    };
    let rows = pipeline_lines(&summaries, &filter.status);
    page(
        StatusCode::OK,
        &PipelinesPage {
            page: "pipelines",
            user: signed.user,
            csrf: signed.csrf,
            events: "/events?watch=pipelines".into(),
            status_options: ["running", "finished", "unstable", "failed"]
                .into_iter()
                .map(|s| (s, s == filter.status))
                .collect(),
            listed: PIPELINES_LISTED,
            total: summaries.len(),
            rows,
            digest: digest_of(&summaries),
        },
    )
}

/// A job in the pipeline page's table.
pub struct JobLine {
    pub name: String,
    pub id: String,
    pub state: &'static str,
    pub cluster: String,
    pub attempts: u32,
    pub reason: String,
}

#[derive(Template)]
#[template(path = "dashboard/pipeline.html")]
pub struct PipelinePage {
    pub page: &'static str,
    pub user: String,
    pub csrf: String,
    pub events: String,
    pub id: String,
    pub status: &'static str,
    pub dag: dag::Dag,
    pub jobs: Vec<JobLine>,
    pub digest: String,
}

/// What the pipeline page shows: the jobs and the routes of their inputs, and its digest.
pub async fn pipeline_view(
    gateway: &Gateway,
    id: &str,
) -> Result<(Submitted, Vec<(String, u32, RouteTaken)>, String), ApiError> {
    let submitted = gateway.pipeline_info(id).await?;
    let routes = gateway.db.pipeline_routes(id).await.map_err(crate::jobs::db_error)?;
    let digest = digest_of(&(&submitted, &routes));
    Ok((submitted, routes, digest))
}

pub fn pipeline_page(
    signed: Signed,
    submitted: &Submitted,
    routes: &[(String, u32, RouteTaken)],
    digest: String,
) -> PipelinePage {
    let mut counts: Vec<(JobState, u64)> = Vec::new();
    for job in &submitted.jobs {
        match counts.iter_mut().find(|(s, _)| *s == job.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((job.state, 1)),
        }
    }
    PipelinePage {
        page: "pipelines",
        user: signed.user,
        csrf: signed.csrf,
        events: format!("/events?watch=pipeline:{}", submitted.pipeline),
        id: submitted.pipeline.clone(),
        status: pipeline_status(&counts),
        dag: dag::layout(&submitted.jobs, routes),
        jobs: submitted
            .jobs
            .iter()
            .map(|j| JobLine {
                name: j.name.clone(),
                id: j.id.to_string(),
                state: j.state.as_str(),
                cluster: j.cluster.as_deref().unwrap_or("—").to_string(),
                attempts: j.attempts,
                reason: j.reason.clone().unwrap_or_default(),
            })
            .collect(),
        digest,
    }
}

pub(super) async fn pipeline(State(gateway): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let signed = match require(&gateway, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    match pipeline_view(&gateway, &id).await {
        Ok((submitted, routes, digest)) => page(StatusCode::OK, &pipeline_page(signed, &submitted, &routes, digest)),
        Err(e) => refusal(&signed, "pipelines", &format!("Pipeline {id}"), &e),
    }
}

/// An attempt in the job page's table.
pub struct AttemptLine {
    pub attempt: u32,
    pub cluster: String,
    pub state: String,
    pub term: String,
    pub exit_code: String,
    pub message: String,
    pub bound: String,
    pub started: String,
    pub ended: String,
    /// How its inputs travelled: "build from aws: pull at ...".
    pub routes: Vec<String>,
}

#[derive(Template)]
#[template(path = "dashboard/job.html")]
pub struct JobPage {
    pub page: &'static str,
    pub user: String,
    pub csrf: String,
    pub events: String,
    pub job: JobInfo,
    pub created: String,
    pub finished: String,
    pub exit_code: String,
    pub output: Option<(String, u64)>,
    pub attempts: Vec<AttemptLine>,
    pub log_truncated: bool,
    /// The user may cancel it (submit scope) and it has not ended.
    pub can_cancel: bool,
    pub digest: String,
}

fn attempt_line(a: &AttemptInfo) -> AttemptLine {
    let opt = |ms: Option<i64>| ms.map_or_else(|| "—".to_string(), utc);
    AttemptLine {
        attempt: a.attempt,
        cluster: a.cluster.to_string(),
        state: a.state.to_string(),
        term: a.term.map_or_else(|| "—".to_string(), |t| t.0.to_string()),
        exit_code: a.exit_code.map_or_else(|| "—".to_string(), |c| c.to_string()),
        message: a.message.clone().unwrap_or_default(),
        bound: utc(a.bound_ms),
        started: opt(a.started_ms),
        ended: opt(a.ended_ms),
        routes: a
            .routes
            .iter()
            .map(|r| {
                let mut text =
                    format!("{} from {}: {} at {}", r.from_job, r.from_cluster, r.route.as_str(), utc(r.at_ms));
                if let Some(reason) = &r.reason {
                    text.push_str(&format!(" (fell back: {reason})"));
                }
                text
            })
            .collect(),
    }
}

pub fn job_page(signed: Signed, detail: JobDetail) -> JobPage {
    let digest = digest_of(&detail);
    let can_cancel = signed.allows(Scope::Submit) && !detail.job.state.is_final();
    JobPage {
        page: "pipelines",
        events: format!("/events?watch=job:{}", detail.job.id),
        created: utc(detail.job.created_ms),
        finished: detail.job.finished_ms.map_or_else(|| "—".to_string(), utc),
        exit_code: detail.job.exit_code.map_or_else(|| "—".to_string(), |c| c.to_string()),
        output: detail.job.output.as_ref().map(|o| (o.digest.clone(), o.size)),
        attempts: detail.attempts.iter().map(attempt_line).collect(),
        log_truncated: detail.log_truncated,
        user: signed.user,
        csrf: signed.csrf,
        job: detail.job,
        can_cancel,
        digest,
    }
}

pub(super) async fn job(State(gateway): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let signed = match require(&gateway, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    match gateway.job_detail(&id).await {
        Ok(detail) => page(StatusCode::OK, &job_page(signed, detail)),
        Err(e) => refusal(&signed, "pipelines", &format!("Job {id}"), &e),
    }
}

/// `GET /jobs/{id}/logs.json`: the job's log after a cursor, waiting up to `wait_ms` (at most
/// 20 s) for more: the job page's live follow.
pub(super) async fn job_logs(
    State(gateway): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<crate::http::jobs::LogQuery>,
) -> Response {
    if let Err(no) = super::signed(&gateway, &headers).await {
        return super::no_session_status(&no).into_response();
    }
    let wait = std::time::Duration::from_millis(query.wait_ms.min(20_000));
    match gateway.read_logs(&id, (query.after_attempt, query.after_seq), wait).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /jobs/{id}/cancel` (submit scope): as `atoll cancel`.
pub(super) async fn cancel(
    State(gateway): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let signed = match super::act(&gateway, &headers, &form).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let caller = signed.caller();
    let done = match caller.require(Scope::Submit) {
        Ok(()) => gateway.cancel(&id, &format!("{} (dashboard)", caller.describe())).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => Redirect::to(&format!("/jobs/{id}")).into_response(),
        Err(e) => refusal(&signed, "pipelines", &format!("Job {id} was not cancelled"), &e),
    }
}

/// `POST /clusters/{name}/enable` and `/disable` (admin scope): as `atoll cluster enable`.
pub(super) async fn set_enabled(
    gateway: Arc<Gateway>,
    headers: HeaderMap,
    name: String,
    form: CsrfForm,
    enabled: bool,
) -> Response {
    let signed = match super::act(&gateway, &headers, &form).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let caller = signed.caller();
    let word = if enabled { "enabled" } else { "disabled" };
    let done = match caller.require(Scope::Admin) {
        Ok(()) => match gateway.registry.set_enabled(&name, enabled).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::not_found(format!("no cluster named {name:?} is registered"))),
            Err(e) => Err(crate::jobs::db_error(e)),
        },
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => {
            tracing::info!(cluster = %name, enabled, by = %caller.describe(), "cluster admin intent changed (dashboard)");
            Redirect::to("/clusters").into_response()
        }
        Err(e) => refusal(&signed, "clusters", &format!("Cluster {name} was not {word}"), &e),
    }
}

pub(super) async fn enable(
    State(gateway): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    set_enabled(gateway, headers, name, form, true).await
}

pub(super) async fn disable(
    State(gateway): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    set_enabled(gateway, headers, name, form, false).await
}
