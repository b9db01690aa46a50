//! The OpenAPI 3.1 document, generated from the handlers' annotations (utoipa).
//!
//! Why generated: the document cannot drift from the code; docs/openapi.json is the committed
//! copy, and a test fails when the two differ (`TREASURY_REGENERATE_OPENAPI=1` rewrites it, as
//! does `treasury openapi > docs/openapi.json`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::problem;
use super::routes::{ledger, policies, reserves, spends, tokens, vaults};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token (`treasury token create`)"))
                    .build(),
            ),
        );
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Strategic reserve treasury API",
        version = "1",
        description = "Integrators, officers and auditors reach the reserve through this API. \
            Amounts are integer satoshis. Errors are RFC 9457 problem+json (docs/api.md)."
    ),
    paths(
        vaults::list, vaults::show, vaults::balance, vaults::utxos, vaults::export,
        vaults::next_address, vaults::verify_address, vaults::sync,
        spends::create, spends::list, spends::show, spends::approve, spends::submit_psbt,
        spends::policy_sign, spends::broadcast, spends::follow, spends::cancel, spends::bump,
        policies::active, policies::list, policies::propose, policies::approve, policies::simulate,
        ledger::entries, ledger::entry, ledger::head, ledger::latest_checkpoint, ledger::checkpoint,
        ledger::inclusion, ledger::consistency, ledger::events,
        reserves::request_proof, reserves::list_proofs, reserves::show_proof,
        reserves::proof_psbt, reserves::submit_proof_psbt, reserves::policy_sign_proof,
        reserves::finalize_proof, reserves::bundle, reserves::proof_subject,
        reserves::proof_approvals, reserves::approve_proof,
        tokens::list, tokens::revoke,
    ),
    components(schemas(problem::ProblemBody, super::auth::Role)),
    modifiers(&Bearer),
    tags(
        (name = "vaults", description = "Vaults, balances, deposit addresses"),
        (name = "spends", description = "Spend requests from creation to confirmation"),
        (name = "policies", description = "Spending policies and their governance"),
        (name = "ledger", description = "The reserve ledger and its proofs"),
        (name = "events", description = "Server-Sent Events of ledger entries"),
        (name = "reserves", description = "Proofs of reserves"),
        (name = "tokens", description = "API tokens (admin)"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON (what `/v1/openapi.json` serves and docs/openapi.json holds).
pub fn openapi_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
