//! JSON in and out, and how the service's errors become problems.
//!
//! Why: axum's own JSON rejections are plain text and mix syntax errors with unknown fields;
//! the API promises problem+json everywhere (400 for bytes that are not JSON, 422 for JSON
//! that does not fit, 413 over the size limit, 415 without `application/json`). The mapping
//! of service errors decides which messages are the caller's business (refusals, unknown
//! ids, bad values) and which are internals (database, corrupt rows, tasks), logged only.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::problem::{Problem, ProblemKind};
use crate::node::SyncError;
use crate::service::governance::GovernanceStoreError;
use crate::service::signing::SigningError;
use crate::service::spend::SpendServiceError;
use crate::service::vaults::OpError;
use crate::store::vaults::VaultStoreError;

/// A JSON body whose rejections are problems.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

/// The problem of a JSON rejection.
pub fn json_rejection(e: JsonRejection) -> Problem {
    match e {
        JsonRejection::JsonDataError(e) => Problem::validation(e.body_text()),
        JsonRejection::JsonSyntaxError(e) => Problem::bad_request(e.body_text()),
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            ProblemKind::UnsupportedMediaType,
            "send the body as Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) => {
            if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    ProblemKind::PayloadTooLarge,
                    "the request body is larger than the service accepts",
                )
            } else {
                Problem::bad_request("the request body could not be read")
            }
        }
        other => Problem::bad_request(other.body_text()),
    }
}

fn sync_problem(e: &SyncError) -> Problem {
    match e {
        SyncError::Unreachable { .. } => {
            tracing::warn!(error = %e, "node unreachable");
            Problem::unavailable("the bitcoin node is unreachable")
        }
        SyncError::Rpc(m) => Problem::new(ProblemKind::Refused, format!("bitcoin node: {m}")),
        SyncError::WrongChain { .. } => Problem::internal(e),
        SyncError::Vault(v) => Problem::validation(v.to_string()),
    }
}

fn vault_store_problem(e: &VaultStoreError) -> Problem {
    match e {
        VaultStoreError::NotFound(_) => Problem::not_found(e.to_string()),
        VaultStoreError::Exists(_) | VaultStoreError::Reserved(_) => {
            Problem::new(ProblemKind::Conflict, e.to_string())
        }
        VaultStoreError::Vault(_) => Problem::validation(e.to_string()),
        _ => Problem::internal(e),
    }
}

/// The problem of a vault operation error.
pub fn op_problem(e: &OpError) -> Problem {
    match e {
        OpError::Store(s) => vault_store_problem(s),
        OpError::Vault(_) | OpError::Spend(_) => Problem::validation(e.to_string()),
        OpError::SignerRefused { .. } => Problem::new(ProblemKind::Refused, e.to_string()),
        OpError::Sync(s) => sync_problem(s),
        OpError::Ledger(crate::store::StoreError::Conflict(_)) => Problem::new(
            ProblemKind::Conflict,
            "another request changed this at the same time; try again",
        ),
        _ => Problem::internal(e),
    }
}

/// The problem of a governance error.
pub fn governance_problem(e: &GovernanceStoreError) -> Problem {
    use GovernanceStoreError as G;
    match e {
        G::Document(_) | G::Governance(_) | G::Freeze(_) | G::VetoSignatures(_) => {
            Problem::validation(e.to_string())
        }
        G::NoActivePolicy => Problem::new(ProblemKind::Conflict, e.to_string()),
        G::UnknownProposal(_) => Problem::not_found(e.to_string()),
        G::AlreadyInitialized(_)
        | G::AlreadyProposed(_)
        | G::WrongStatus { .. }
        | G::Stale { .. }
        | G::OrderMismatch(_)
        | G::NotVetoable => Problem::new(ProblemKind::Conflict, e.to_string()),
        G::Store(crate::store::StoreError::Conflict(_)) => Problem::new(
            ProblemKind::Conflict,
            "another request changed this at the same time; try again",
        ),
        _ => Problem::internal(e),
    }
}

/// The problem of a spend-request error.
pub fn spend_problem(e: &SpendServiceError) -> Problem {
    use SpendServiceError as S;
    match e {
        S::Op(o) => op_problem(o),
        S::Vault(v) => vault_store_problem(v),
        S::Governance(g) => governance_problem(g),
        S::Request(_) | S::PolicyNotActive { .. } | S::Exists(_) => {
            Problem::new(ProblemKind::Conflict, e.to_string())
        }
        S::NotFound(_) => Problem::not_found(e.to_string()),
        S::Invalid { .. } | S::File(_) => Problem::validation(e.to_string()),
        S::Store(crate::store::StoreError::Conflict(_)) => Problem::new(
            ProblemKind::Conflict,
            "another request changed this at the same time; try again",
        ),
        _ => Problem::internal(e),
    }
}

/// The problem of a signing-path error.
pub fn signing_problem(e: &SigningError) -> Problem {
    use SigningError as G;
    match e {
        G::Spend(s) => spend_problem(s),
        G::Refused(_) | G::Combine(_) | G::Finalize(_) => {
            Problem::new(ProblemKind::Refused, e.to_string())
        }
        G::WrongState { .. } | G::OtherTransaction { .. } => {
            Problem::new(ProblemKind::Conflict, e.to_string())
        }
        G::Node(s) => sync_problem(s),
        G::Store(crate::store::StoreError::Conflict(_)) => Problem::new(
            ProblemKind::Conflict,
            "another request changed this at the same time; try again",
        ),
        _ => Problem::internal(e),
    }
}

impl From<SpendServiceError> for Problem {
    fn from(e: SpendServiceError) -> Self {
        spend_problem(&e)
    }
}

impl From<SigningError> for Problem {
    fn from(e: SigningError) -> Self {
        signing_problem(&e)
    }
}

impl From<OpError> for Problem {
    fn from(e: OpError) -> Self {
        op_problem(&e)
    }
}

impl From<VaultStoreError> for Problem {
    fn from(e: VaultStoreError) -> Self {
        vault_store_problem(&e)
    }
}

impl From<GovernanceStoreError> for Problem {
    fn from(e: GovernanceStoreError) -> Self {
        governance_problem(&e)
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Conflict(_) => Problem::new(
                ProblemKind::Conflict,
                "another request changed this at the same time; try again",
            ),
            other => Problem::internal(other),
        }
    }
}
