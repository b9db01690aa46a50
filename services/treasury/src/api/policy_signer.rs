//! Problems for the policy signer process's answers: a refusal is the signer's reason (422,
//! or 409 for a request not ready to sign), an unreachable signer is 503.

use crate::api::json::signing_problem;
use crate::api::problem::{Problem, ProblemKind};
use crate::service::policy_signer::PolicySignError;

/// The problem of a policy-signature error.
pub fn policy_sign_problem(e: &PolicySignError) -> Problem {
    match e {
        PolicySignError::Signing(s) => signing_problem(s),
        PolicySignError::Refused { .. } => Problem::new(ProblemKind::Refused, e.to_string()),
        PolicySignError::Unavailable(_) => Problem::unavailable(e.to_string()),
    }
}

impl From<PolicySignError> for Problem {
    fn from(e: PolicySignError) -> Self {
        policy_sign_problem(&e)
    }
}
