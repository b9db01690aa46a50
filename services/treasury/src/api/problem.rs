//! RFC 9457 problem details: every error the API returns.
//!
//! Why: callers branch on a stable `type` URI, not on prose; the `detail` says what was wrong
//! with *their* request and never carries internals (SQL, paths, node errors). A server-side
//! cause is logged with the request id, and the response carries the same id so an operator
//! can find the log line.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The base of every problem `type` URI.
pub const PROBLEM_BASE: &str = "https://reserve.invalid/problems/";

/// The media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The stable kinds of problem (docs/api.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// 400: the request is malformed (bad JSON, bad query, bad header).
    BadRequest,
    /// 401: no token, or a token the service does not know.
    Unauthorized,
    /// 403: the token's role or vault scope does not allow this.
    Forbidden,
    /// 404: no such route or resource.
    NotFound,
    /// 405: the route exists, with another method.
    MethodNotAllowed,
    /// 409: the resource is in a state that does not allow this.
    Conflict,
    /// 409: the idempotency key was used with another body.
    IdempotencyConflict,
    /// 409: a request with this idempotency key is still being processed.
    IdempotencyInProgress,
    /// 413: the body is larger than the limit.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 422: the JSON is well-formed but a value is invalid (amount, address, unknown field).
    Validation,
    /// 422: the policy, the signer or the node refused the operation.
    Refused,
    /// 429: the token exceeded its rate limit.
    RateLimited,
    /// 500: something failed inside the service (logged with the request id).
    Internal,
    /// 503: a part the request needs is not configured or not reachable.
    Unavailable,
    /// 503: the request took longer than the timeout.
    Timeout,
}

impl ProblemKind {
    /// Every kind.
    pub const ALL: [ProblemKind; 16] = [
        ProblemKind::BadRequest,
        ProblemKind::Unauthorized,
        ProblemKind::Forbidden,
        ProblemKind::NotFound,
        ProblemKind::MethodNotAllowed,
        ProblemKind::Conflict,
        ProblemKind::IdempotencyConflict,
        ProblemKind::IdempotencyInProgress,
        ProblemKind::PayloadTooLarge,
        ProblemKind::UnsupportedMediaType,
        ProblemKind::Validation,
        ProblemKind::Refused,
        ProblemKind::RateLimited,
        ProblemKind::Internal,
        ProblemKind::Unavailable,
        ProblemKind::Timeout,
    ];

    /// The last segment of the `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::BadRequest => "bad-request",
            ProblemKind::Unauthorized => "unauthorized",
            ProblemKind::Forbidden => "forbidden",
            ProblemKind::NotFound => "not-found",
            ProblemKind::MethodNotAllowed => "method-not-allowed",
            ProblemKind::Conflict => "conflict",
            ProblemKind::IdempotencyConflict => "idempotency-conflict",
            ProblemKind::IdempotencyInProgress => "idempotency-in-progress",
            ProblemKind::PayloadTooLarge => "payload-too-large",
            ProblemKind::UnsupportedMediaType => "unsupported-media-type",
            ProblemKind::Validation => "validation",
            ProblemKind::Refused => "refused",
            ProblemKind::RateLimited => "rate-limited",
            ProblemKind::Internal => "internal",
            ProblemKind::Unavailable => "unavailable",
            ProblemKind::Timeout => "timeout",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ProblemKind::BadRequest => StatusCode::BAD_REQUEST,
            ProblemKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ProblemKind::Forbidden => StatusCode::FORBIDDEN,
            ProblemKind::NotFound => StatusCode::NOT_FOUND,
            ProblemKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProblemKind::Conflict
            | ProblemKind::IdempotencyConflict
            | ProblemKind::IdempotencyInProgress => StatusCode::CONFLICT,
            ProblemKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemKind::Validation | ProblemKind::Refused => StatusCode::UNPROCESSABLE_ENTITY,
            ProblemKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProblemKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ProblemKind::Unavailable | ProblemKind::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The short human title.
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::BadRequest => "Bad request",
            ProblemKind::Unauthorized => "Unauthorized",
            ProblemKind::Forbidden => "Forbidden",
            ProblemKind::NotFound => "Not found",
            ProblemKind::MethodNotAllowed => "Method not allowed",
            ProblemKind::Conflict => "Conflict",
            ProblemKind::IdempotencyConflict => "Idempotency key reused with another body",
            ProblemKind::IdempotencyInProgress => "Request with this idempotency key in progress",
            ProblemKind::PayloadTooLarge => "Payload too large",
            ProblemKind::UnsupportedMediaType => "Unsupported media type",
            ProblemKind::Validation => "Invalid request",
            ProblemKind::Refused => "Refused",
            ProblemKind::RateLimited => "Too many requests",
            ProblemKind::Internal => "Internal error",
            ProblemKind::Unavailable => "Service unavailable",
            ProblemKind::Timeout => "Request timed out",
        }
    }

    /// The full `type` URI.
    pub fn type_uri(self) -> String {
        format!("{PROBLEM_BASE}{}", self.slug())
    }
}

/// A problem response.
#[derive(Debug, Clone)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// What was wrong with the request (safe to show the caller).
    pub detail: String,
    /// Seconds to wait (429 `Retry-After`).
    pub retry_after: Option<u64>,
}

/// The problem+json body.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ProblemBody {
    /// Stable URI of the problem kind.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short title of the kind.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What was wrong with this request.
    pub detail: String,
}

impl Problem {
    /// A problem of `kind` with `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Problem {
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(ProblemKind::BadRequest, detail)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Problem::new(
            ProblemKind::Unauthorized,
            "send a valid API token as Authorization: Bearer <token>",
        )
    }

    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(ProblemKind::Forbidden, detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(ProblemKind::NotFound, detail)
    }

    /// 422.
    pub fn validation(detail: impl Into<String>) -> Self {
        Problem::new(ProblemKind::Validation, detail)
    }

    /// 503 for a part that is not configured or down.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Problem::new(ProblemKind::Unavailable, detail)
    }

    /// 500: logs `cause` (never shown to the caller).
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(cause = %cause, "internal error");
        Problem::new(
            ProblemKind::Internal,
            "the service failed; the operator can find the cause in the log by the x-request-id of this response",
        )
    }

    /// The body.
    pub fn body(&self) -> ProblemBody {
        ProblemBody {
            type_uri: self.kind.type_uri(),
            title: self.kind.title().to_owned(),
            status: self.kind.status().as_u16(),
            detail: self.detail.clone(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut resp = (self.kind.status(), body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                h.insert(header::RETRY_AFTER, v);
            }
        }
        if self.kind == ProblemKind::Unauthorized {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"treasury\""),
            );
        }
        resp
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, Problem>;
