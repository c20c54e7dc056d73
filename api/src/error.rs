//! The error envelope of every HTTP API: `{"error": {"code": "...", "message": "..."}}`.
//!
//! One table maps codes to statuses, so every daemon answers the same way: 400 bad input,
//! 401/403 identity, 404, 405 no such method, 409 stale leader or conflict, 413 body too large,
//! 415 body not JSON, 503 no quorum or unavailable.
//!
//! Requests the framework refuses before a handler runs (a path or query that does not parse, a
//! body over the limit, a method a route does not have) get the envelope too: [`JsonBody`] reads
//! bodies, and the [`envelope`] middleware turns every other error answer that is not JSON into it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::FromRequest;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

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
    /// The route exists, but not with this method (the `Allow` header lists those it has).
    MethodNotAllowed,
    /// The request body is larger than the route accepts ([`BODY_LIMIT`] for JSON bodies).
    TooLarge,
    /// The request body declares a content type the route does not read (not JSON).
    UnsupportedMediaType,
}

/// Largest JSON request body of the `/v1` APIs (blob chunks have their own, larger limit).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

impl ErrorCode {
    /// Every code, for documents and tests that must list them all.
    pub const ALL: [ErrorCode; 14] = [
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
        ErrorCode::MethodNotAllowed,
        ErrorCode::TooLarge,
        ErrorCode::UnsupportedMediaType,
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
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The code of an error answer that carries only a status (the framework's own).
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => ErrorCode::Unauthenticated,
            StatusCode::FORBIDDEN => ErrorCode::Forbidden,
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            StatusCode::CONFLICT => ErrorCode::Conflict,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
            StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => ErrorCode::Timeout,
            status if status.is_client_error() => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
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

/// A JSON request body, read whole (up to the route's limit; over it: 413 with the envelope)
/// before the handler runs, and parsed when the handler asks, after it checked who is calling:
/// [`JsonBody::parse`] refuses a body that declares a content type other than JSON (415; one
/// without a content type is read as JSON) and one that does not parse (400, naming the field).
#[derive(Clone, Debug)]
pub struct JsonBody {
    content_type: Option<header::HeaderValue>,
    bytes: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = Bytes::from_request(request, state).await.map_err(body_error)?;
        Ok(Self { content_type, bytes })
    }
}

impl JsonBody {
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        check_json_content_type(self.content_type.as_ref())?;
        parse_json(&self.bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Refuse a body that declares a content type other than JSON (`application/json`,
/// `application/*+json`); none declared is fine.
pub fn check_json_content_type(content_type: Option<&header::HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = content_type else { return Ok(()) };
    let essence = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::UnsupportedMediaType,
        format!("request body: the content type is {value:?}; send application/json"),
    ))
}

/// Parse a JSON body; the error names where it went wrong (`jobs[0].name: ...`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("request body: {inner}"))
        } else {
            ApiError::bad_request(format!("request body: {path}: {inner}"))
        }
    })?;
    deserializer.end().map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
    Ok(value)
}

/// A body that could not be read: over the limit (413), or cut off.
pub fn body_error(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            ErrorCode::TooLarge,
            format!("request body: larger than this route accepts (JSON bodies: at most {BODY_LIMIT} bytes)"),
        );
    }
    ApiError::new(ErrorCode::for_status(status), format!("request body: {}", rejection.body_text()))
}

/// Middleware (`axum::middleware::map_response`): every error answer of an API is the envelope.
/// Answers that are JSON already pass; the framework's own (a path or query that does not parse,
/// a method a route does not have, a body over the limit: text or empty) are rewritten with the
/// same status and the framework's words as the message. Headers such as `Allow` are kept.
pub async fn envelope(method: axum::http::Method, response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.headers()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The framework's messages are one line; anything longer is cut, not buffered whole.
    let text = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let code = ErrorCode::for_status(status);
    let message = match (text.is_empty(), status) {
        (true, StatusCode::METHOD_NOT_ALLOWED) => {
            format!("this route does not take {method} (the Allow header lists what it takes)")
        }
        (true, _) => status.canonical_reason().unwrap_or("error").to_lowercase(),
        (false, _) => text,
    };
    let body = ErrorBody { error: ErrorDetail { code, message, leader: None } };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    // A 422 of the framework is bad input like any other: 400, as the table says.
    parts.status = if status == StatusCode::UNPROCESSABLE_ENTITY { code.status() } else { status };
    Response::from_parts(parts, axum::body::Body::from(json))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::DefaultBodyLimit;
    use axum::extract::Path;
    use axum::extract::Query;
    use axum::routing::get;
    use axum::routing::post;
    use tower::ServiceExt;

    #[derive(Deserialize)]
    struct Limit {
        #[allow(dead_code)]
        limit: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Spec {
        #[allow(dead_code)]
        name: String,
    }

    fn router() -> Router {
        Router::new()
            .route("/jobs", get(|Query(_): Query<Limit>| async { "ok" }))
            .route("/chunks/{index}", get(|Path(_): Path<usize>| async { "ok" }))
            .route("/specs", post(|body: JsonBody| async move { body.parse::<Spec>().map(|_| "ok") }))
            .fallback(|| async { ApiError::not_found("no such route") })
            .layer(DefaultBodyLimit::max(64))
            .layer(axum::middleware::map_response(envelope))
    }

    async fn send(request: axum::http::Request<axum::body::Body>) -> (StatusCode, HeaderMap, ErrorBody) {
        let response = router().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not the envelope ({e}): {}", String::from_utf8_lossy(&bytes)));
        assert_eq!(parts.headers[header::CONTENT_TYPE], "application/json");
        (parts.status, parts.headers, body)
    }

    fn get_(uri: &str) -> axum::http::Request<axum::body::Body> {
        axum::http::Request::get(uri).body(axum::body::Body::empty()).unwrap()
    }

    fn post_(content_type: Option<&str>, body: &str) -> axum::http::Request<axum::body::Body> {
        let mut request = axum::http::Request::post("/specs");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        request.body(axum::body::Body::from(body.to_string())).unwrap()
    }

    #[tokio::test]
    async fn every_refusal_is_the_envelope_with_its_status() {
        let cases = [
            (get_("/jobs?limit=null"), StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "limit"),
            (get_("/chunks/-1"), StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "-1"),
            (get_("/nowhere"), StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route"),
            (get_("/specs"), StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed, "take GET"),
            (
                post_(Some("text/plain"), "{}"),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "text/plain",
            ),
            (post_(None, &"x".repeat(65)), StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, "larger"),
            (
                post_(Some("application/json"), "{\"name\": 1}"),
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "name: invalid type",
            ),
            (post_(Some("application/json"), "{"), StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "EOF"),
            (
                post_(Some("application/json"), "{\"name\": \"a\"} x"),
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "trailing",
            ),
        ];
        for (request, status, code, words) in cases {
            let what = format!("{} {}", request.method(), request.uri());
            let (seen, headers, body) = send(request).await;
            assert_eq!((seen, body.error.code), (status, code), "{what}: {}", body.error.message);
            assert!(body.error.message.contains(words), "{what}: {:?} lacks {words:?}", body.error.message);
            if status == StatusCode::METHOD_NOT_ALLOWED {
                assert!(headers.contains_key(header::ALLOW), "{what}: the Allow header is kept");
            }
        }
        let ok = router().oneshot(post_(Some("application/json; charset=utf-8"), "{\"name\": \"a\"}")).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let ok = router().oneshot(post_(None, "{\"name\": \"a\"}")).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }

    #[test]
    fn every_code_has_a_status_that_maps_back() {
        for code in ErrorCode::ALL {
            let back = ErrorCode::for_status(code.status());
            assert_eq!(back.status(), code.status(), "{code:?}");
        }
    }
}
