//! The reachability matrix: a leader's row in, the joined matrix out (streamed).

use atoll_api::ApiError;
use atoll_api::error::JsonBody;
use atoll_api::gateway::RowReport;
use atoll_api::gateway::Scope;
use axum::Extension;
use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;

use super::Shared;
use crate::auth::Caller;
use crate::db::matrix::StoredRow;
use crate::now_ms;

/// Largest number of cells in a reported row.
const MAX_ROW_CELLS: usize = 100_000;
/// Size of the pieces a large matrix is streamed in.
const MATRIX_CHUNK: usize = 256 * 1024;

/// The leader of `name` reports its whole matrix row.
pub(super) async fn row(
    State(gateway): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    caller.replica_of(&name)?;
    let report: RowReport = body.parse()?;
    gateway.fence(&name, report.term)?;
    if report.cells.len() > MAX_ROW_CELLS {
        return Err(ApiError::bad_request(format!("a row may hold at most {MAX_ROW_CELLS} cells")));
    }
    for (i, cell) in report.cells.iter().enumerate() {
        if cell.to == name {
            return Err(ApiError::bad_request(format!("cells[{i}]: a cluster does not report on itself")));
        }
        if !(0.0..=1.0).contains(&cell.loss) || cell.rtt_ms.is_some_and(|r| !r.is_finite() || r < 0.0) {
            return Err(ApiError::bad_request(format!(
                "cells[{i}]: loss must be within 0..1 and rtt_ms a positive number"
            )));
        }
    }
    gateway.metrics.rows.inc();
    for cell in report.cells.iter().filter(|cell| cell.state == atoll_api::gateway::LinkState::Reachable) {
        if let Some(rtt_ms) = cell.rtt_ms {
            gateway.metrics.matrix_rtt.observe(rtt_ms / 1000.0);
        }
    }
    gateway.rows.put(StoredRow { reporter: name, term: report.term, cells: report.cells, reported_ms: now_ms() });
    Ok(Json(serde_json::json!({"accepted": true})).into_response())
}

pub(super) async fn matrix(State(gateway): Shared, Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let (clusters, rows, stale_after) =
        (gateway.registry.registered(), gateway.rows.snapshot(), gateway.config.stale_after);
    // A thousand clusters make a million cells (~100 MB of JSON): join and serialize off the
    // request threads, streaming the body as it is written.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::convert::Infallible>>(4);
    tokio::task::spawn_blocking(move || {
        let grid = crate::matrix::Grid::new(&clusters, &rows, now_ms(), stale_after);
        grid.write_json(MATRIX_CHUNK, |piece| tx.blocking_send(Ok(piece.into())).is_ok());
    });
    let pieces = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|piece| (piece, rx)) });
    let body = axum::body::Body::from_stream(pieces);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}
