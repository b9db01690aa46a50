//! The layers every request passes: request id and logging, authentication (the caller's
//! token and the principal its ledger entries carry) and turning errors into problems.
//!
//! Why apart: they wrap every route the same way; a handler only sees an authenticated
//! [`Caller`].

use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand_core::{OsRng, RngCore};

use super::{problem, AppState, ConnInfo, RequestId};
use super::{Principal, Problem, ProblemKind, Role};

/// The authenticated caller of a `/v1` request (401 when there is none).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(Problem::unauthorized)
    }
}

impl Caller {
    /// 403 unless the caller has one of `roles`.
    ///
    /// # Errors
    /// [`ProblemKind::Forbidden`].
    pub fn require(&self, roles: &[Role]) -> Result<&Principal, Problem> {
        if self.0.has_role(roles) {
            Ok(&self.0)
        } else {
            Err(Problem::forbidden(format!(
                "the {} role may not do this",
                self.0.role
            )))
        }
    }

    /// 403 unless the token covers vault `name`.
    ///
    /// # Errors
    /// [`ProblemKind::Forbidden`].
    pub fn require_vault(&self, name: &str) -> Result<(), Problem> {
        if self.0.may_see_vault(name) {
            Ok(())
        } else {
            Err(Problem::forbidden("the token is not scoped to this vault"))
        }
    }
}

pub(super) fn new_request_id() -> String {
    let mut b = [0u8; 12];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Outermost layer: request id, span, timeout, metrics and the access log line.
pub(super) async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = new_request_id();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, %method, route = %route);
    let timeout = state.inner.limits.timeout;
    let resp = {
        use tracing::Instrument;
        match tokio::time::timeout(timeout, next.run(req).instrument(span.clone())).await {
            Ok(r) => r,
            Err(_) => {
                let _g = span.enter();
                tracing::warn!("request timed out");
                Problem::new(
                    ProblemKind::Timeout,
                    "the request took longer than the service allows",
                )
                .into_response()
            }
        }
    };
    let mut resp = as_problem(resp).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let took = started.elapsed();
    state.inner.metrics.record(&method, &route, status, took);
    let _g = span.enter();
    tracing::info!(status, took_us = took.as_micros() as u64, "done");
    resp
}

/// Turns an error response that is not a problem (axum's own rejections of a path or query,
/// for instance) into one, keeping its status and its text as the detail.
pub(super) async fn as_problem(resp: Response) -> Response {
    let status = resp.status();
    // Problems, and JSON bodies of our own (`/readyz`), stay as they are.
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes() == problem::PROBLEM_JSON.as_bytes() || v.as_bytes() == b"application/json"
    });
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let kind = match status {
        StatusCode::NOT_FOUND => ProblemKind::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ProblemKind::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ProblemKind::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemKind::UnsupportedMediaType,
        StatusCode::UNPROCESSABLE_ENTITY => ProblemKind::Validation,
        StatusCode::UNAUTHORIZED => ProblemKind::Unauthorized,
        StatusCode::FORBIDDEN => ProblemKind::Forbidden,
        s if s.is_server_error() => ProblemKind::Internal,
        _ => ProblemKind::BadRequest,
    };
    let text = match axum::body::to_bytes(resp.into_body(), 4096).await {
        Ok(b) if kind != ProblemKind::Internal => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    };
    let detail = if text.is_empty() {
        kind.title().to_owned()
    } else {
        text
    };
    let mut p = Problem::new(kind, detail).into_response();
    *p.status_mut() = status;
    p
}

/// `/v1` layer: authenticates the bearer token and applies its rate limit.
pub(super) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_owned);
    let Some(token) = token else {
        state.inner.metrics.auth_failure();
        return Problem::unauthorized().into_response();
    };
    let principal = match state
        .inner
        .tokens
        .principal(&state.inner.store, &token)
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => {
            state.inner.metrics.auth_failure();
            return Problem::unauthorized().into_response();
        }
        Err(e) => return Problem::internal(e).into_response(),
    };
    if state.inner.require_client_cert && principal.role == Role::Integrator {
        let has_cert = req
            .extensions()
            .get::<ConnInfo>()
            .is_some_and(|c| c.client_cert);
        if !has_cert {
            state.inner.metrics.auth_failure();
            return Problem::new(
                ProblemKind::Unauthorized,
                "integrator tokens are accepted only with a client certificate",
            )
            .into_response();
        }
    }
    if let Err(wait) = state.inner.rate.check(&principal.token_id) {
        state.inner.metrics.rate_limited();
        let mut p = Problem::new(
            ProblemKind::RateLimited,
            "the token's rate limit is exceeded",
        );
        p.retry_after = Some(wait.as_secs().saturating_add(1));
        return p.into_response();
    }
    tracing::Span::current().record("principal", principal.name.as_str());
    let actor = match custody::ledger::Actor::new(principal.name.clone()) {
        Ok(a) => a,
        Err(e) => return Problem::internal(e).into_response(),
    };
    req.extensions_mut().insert(principal);
    // Every ledger entry the request writes carries the caller (crate::actor).
    crate::actor::acting_as(actor, next.run(req)).await
}
