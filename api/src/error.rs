//! The error envelope of every HTTP API: `{"error": {"code": "...", "message": "..."}}`.
//!
//! One table maps codes to statuses, so every daemon answers the same way: 400 bad input,
//! 401/403 identity, 404, 409 stale leader or conflict, 503 no quorum or unavailable.

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Deserialize;
use serde::Serialize;

use crate::node::LeaderRef;

/// Machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a value is out of range.
    BadRequest,
    /// No usable credentials.
    Unauthenticated,
    /// The caller's identity may not do this.
    Forbidden,
    NotFound,
    /// This replica is not the leader (the `leader` field says who is, when known).
    NotLeader,
    /// The request conflicts with the current state (a membership change in progress, a report
    /// for a term that has not registered yet).
    Conflict,
    /// The sender leads at a term older than one already seen for its cluster: it is fenced off
    /// and must stop acting as leader.
    StaleLeader,
    /// The caller's cluster was revoked; nothing it sends is accepted any more.
    Revoked,
    /// No leader or no quorum right now; retry later.
    Unavailable,
    /// The operation did not finish within its deadline; its outcome is unknown.
    Timeout,
    Internal,
}

impl ErrorCode {
    /// Every code, for documents and tests that must list them all.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::NotLeader,
        ErrorCode::Conflict,
        ErrorCode::StaleLeader,
        ErrorCode::Revoked,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::Revoked => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::NotLeader | ErrorCode::Conflict | ErrorCode::StaleLeader => StatusCode::CONFLICT,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of an error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// For `not_leader` and `unavailable`: the leader this replica knows of, to retry there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderRef>,
}

/// An API error, ready to be turned into a response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub leader: Option<LeaderRef>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), leader: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn with_leader(mut self, leader: Option<LeaderRef>) -> Self {
        self.leader = leader;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message, leader: self.leader } };
        (self.code.status(), Json(body)).into_response()
    }
}

impl From<ErrorDetail> for ApiError {
    fn from(detail: ErrorDetail) -> Self {
        Self { code: detail.code, message: detail.message, leader: detail.leader }
    }
}
