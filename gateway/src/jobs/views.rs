//! Pipelines and jobs as users see them.

use std::collections::HashMap;

use atoll_api::ApiError;
use atoll_api::jobs::AttemptInfo;
use atoll_api::jobs::JobDetail;
use atoll_api::jobs::JobInfo;
use atoll_api::jobs::Submitted;

use super::db_error;
use super::info;
use crate::Gateway;
use crate::db::jobs::JobRow;

impl Gateway {
    /// A pipeline's jobs as users see them.
    pub async fn pipeline_info(&self, id: &str) -> Result<Submitted, ApiError> {
        let pipeline = self.pipeline(id).await?;
        let rows = self.db.pipeline_jobs(id).await.map_err(db_error)?;
        let flow = self.flow();
        let jobs = rows.iter().map(|row| info(row, &pipeline, &rows, &flow)).collect();
        Ok(Submitted { pipeline: id.to_string(), jobs })
    }

    /// The newest jobs first.
    pub async fn recent_jobs(&self, limit: u32) -> Result<Vec<JobInfo>, ApiError> {
        let rows = self.db.recent_jobs(limit).await.map_err(db_error)?;
        let flow = self.flow();
        let mut siblings: HashMap<String, Vec<JobRow>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let pipeline = self.pipeline(&row.pipeline_id).await?;
            if !siblings.contains_key(&row.pipeline_id) {
                let all = self.db.pipeline_jobs(&row.pipeline_id).await.map_err(db_error)?;
                siblings.insert(row.pipeline_id.clone(), all);
            }
            out.push(info(row, &pipeline, &siblings[&row.pipeline_id], &flow));
        }
        Ok(out)
    }

    pub async fn job_detail(&self, id: &str) -> Result<JobDetail, ApiError> {
        let row = self.job_row(id).await?;
        let pipeline = self.pipeline(&row.pipeline_id).await?;
        let siblings = self.db.pipeline_jobs(&row.pipeline_id).await.map_err(db_error)?;
        let attempts = self.db.attempts(id).await.map_err(db_error)?;
        let mut routes = self.db.routes_of(id).await.map_err(db_error)?;
        let log_truncated = self.db.log_truncated(id).await.map_err(db_error)?;
        Ok(JobDetail {
            log_truncated,
            job: info(&row, &pipeline, &siblings, &self.flow()),
            attempts: attempts
                .into_iter()
                .map(|a| AttemptInfo {
                    attempt: a.attempt,
                    cluster: a.cluster,
                    state: a.state,
                    term: a.term,
                    exit_code: a.exit_code,
                    message: a.message,
                    bound_ms: a.bound_ms,
                    started_ms: a.started_ms,
                    ended_ms: a.ended_ms,
                    routes: routes
                        .extract_if(.., |(attempt, _)| *attempt == a.attempt)
                        .map(|(_, taken)| taken)
                        .collect(),
                })
                .collect(),
        })
    }
}
