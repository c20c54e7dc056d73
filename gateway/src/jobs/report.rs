//! Reports: each applied only while the job is bound to the reporter's (cluster, attempt).

use std::collections::HashMap;

use atoll_api::ApiError;
use atoll_api::ids::JobId;
use atoll_api::ids::Term;
use atoll_api::jobs::JobState;
use atoll_api::jobs::Report;
use atoll_api::jobs::ReportOutcome;
use atoll_api::jobs::ReportResult;
use atoll_api::jobs::ReportedState;

use super::MAX_BATCH;
use super::db_error;
use crate::Gateway;
use crate::db::jobs::JobRow;
use crate::db::jobs::ReportApply;
use crate::db::jobs::Transition;
use crate::lifecycle;
use crate::now_ms;

impl Gateway {
    /// Apply a batch of reports, each on its own, in one transaction per round; the batch as a
    /// whole is fenced by term. A report whose job changed between the read and the fenced update
    /// is decided again on the fresh row (at most three rounds).
    pub async fn report(&self, cluster: &str, term: Term, reports: &[Report]) -> Result<Vec<ReportResult>, ApiError> {
        if reports.len() > MAX_BATCH {
            return Err(ApiError::bad_request(format!("a batch may hold at most {MAX_BATCH} reports")));
        }
        self.fence(cluster, term)?;
        let mut outcomes: Vec<Option<(ReportOutcome, Option<String>)>> = vec![None; reports.len()];
        let mut pending: Vec<usize> = (0..reports.len()).collect();
        for _round in 0..3 {
            if pending.is_empty() {
                break;
            }
            let mut items = Vec::new();
            let mut owners = Vec::new();
            let ids: Vec<&str> = pending.iter().map(|&i| reports[i].job.as_str()).collect();
            let rows: HashMap<JobId, JobRow> =
                self.db.jobs_by_id(&ids).await.map_err(db_error)?.into_iter().map(|r| (r.id.clone(), r)).collect();
            for &i in &pending {
                let report = &reports[i];
                match self.decide_report(cluster, term, report, rows.get(&report.job)).await? {
                    Err(outcome) => outcomes[i] = Some(outcome),
                    Ok((item, pipeline)) => {
                        items.push(item);
                        owners.push((i, pipeline));
                    }
                }
            }
            let applied = self.db.apply_reports(&items, now_ms()).await.map_err(db_error)?;
            pending.clear();
            for ((item, (i, pipeline)), ok) in items.iter().zip(owners).zip(applied) {
                if !ok {
                    // The row changed since it was read (or a newer term registered).
                    pending.push(i);
                    continue;
                }
                outcomes[i] = Some((ReportOutcome::Accepted, None));
                match item.transition {
                    Transition::Start => {}
                    Transition::End { state, .. } => {
                        if let Some(row) = rows.get(&item.id)
                            && state.is_final()
                        {
                            self.metrics.job_ended(state, row.created_ms);
                        }
                        self.logs_changed();
                        self.mark_dirty(&pipeline);
                    }
                    Transition::Retry { .. } => self.kick_scheduler(),
                    Transition::Rerun { .. } => self.wake_cluster(cluster),
                }
            }
        }
        if !pending.is_empty() {
            self.fence(cluster, term)?;
        }
        let mut results = Vec::with_capacity(reports.len());
        for (report, outcome) in reports.iter().zip(outcomes) {
            let (outcome, reason) = outcome.unwrap_or((
                ReportOutcome::Refused,
                Some("the job kept changing while the report was applied; resend it".to_string()),
            ));
            let label = match outcome {
                ReportOutcome::Accepted => "accepted",
                ReportOutcome::Duplicate => "duplicate",
                ReportOutcome::Refused => "refused",
            };
            self.metrics.reports.get_or_create(&crate::metrics::Outcome { outcome: label }).inc();
            if outcome == ReportOutcome::Refused {
                tracing::info!(cluster, job = %report.job, attempt = report.attempt, reason = ?reason, "report refused");
            }
            results.push(ReportResult { job: report.job.clone(), attempt: report.attempt, outcome, reason });
        }
        Ok(results)
    }

    /// Decide one report on the job as stored (`row`, read with the batch): the fenced update
    /// to make (with the job's pipeline), or the outcome when there is nothing to apply.
    async fn decide_report(
        &self,
        cluster: &str,
        term: Term,
        report: &Report,
        row: Option<&JobRow>,
    ) -> Result<Result<(ReportApply, String), (ReportOutcome, Option<String>)>, ApiError> {
        let Some(row) = row else {
            return Ok(Err((ReportOutcome::Refused, Some(format!("no job {}", report.job)))));
        };
        let pipeline = self.pipeline(&row.pipeline_id).await?;
        let spec = &pipeline.spec.jobs[row.idx];
        let bound = lifecycle::Bound {
            state: row.state,
            cluster: row.cluster.as_deref(),
            attempt: row.attempt,
            failed_attempts: row.failed_attempts,
            cancel_requested: row.cancel_requested,
        };
        let message = report.message.clone();
        let transition = match lifecycle::decide(&bound, spec, cluster, report.attempt, report.state) {
            lifecycle::Decision::Duplicate => return Ok(Err((ReportOutcome::Duplicate, None))),
            lifecycle::Decision::Refuse(reason) => return Ok(Err((ReportOutcome::Refused, Some(reason)))),
            lifecycle::Decision::Start => Transition::Start,
            lifecycle::Decision::End(state) => {
                Transition::End { state: state.into(), exit_code: report.exit_code, message }
            }
            lifecycle::Decision::Retry { failed_attempts } => Transition::Retry {
                failed_attempts,
                state: if report.state == ReportedState::Error { JobState::Error } else { JobState::Failure },
                exit_code: report.exit_code,
                message,
            },
            lifecycle::Decision::Rerun => Transition::Rerun { message },
        };
        let output = match &report.output {
            Some(o) => match o.digest.parse::<atoll_store::Digest>() {
                Ok(d) => Some((d.to_string(), o.size)),
                Err(e) => return Ok(Err((ReportOutcome::Refused, Some(format!("output: {e}"))))),
            },
            None => None,
        };
        let item = ReportApply {
            id: report.job.clone(),
            cluster: cluster.to_string(),
            attempt: report.attempt,
            from: row.state,
            term,
            transition,
            output,
        };
        Ok(Ok((item, row.pipeline_id.clone())))
    }
}
