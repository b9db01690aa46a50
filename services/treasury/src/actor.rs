//! The principal acting in the current task: who caused the ledger entries it writes.
//!
//! Why: the service code below the API (spends, signing, syncs, reserve proofs) writes some
//! entries under its own actors (`treasury`, `custody`, `policy-signer`, `vault:NAME`),
//! because the CLIs run it for an operator who is not a principal. When the API runs it for
//! a caller, the rule is that every state change lands in the ledger with the principal who
//! caused it. Threading a caller argument through every service method would touch every
//! signature and every CLI; instead the API runs each authenticated request inside
//! [`acting_as`], and the ledger store ([`crate::store::LedgerStore`]) attributes each entry
//! it appends during that request: an entry whose actor is one of the service's own
//! ([`is_service_actor`]) gets the principal as actor. Entries that already name a person
//! (an officer's approval, an admin's signature on a policy change) keep that name. What the
//! service actor was is not lost: the payloads name the key, signer or vault involved.

use std::future::Future;

use custody::ledger::{Actor, EntryDraft};

/// The actor of the policy signer's ledger entries.
pub const POLICY_SIGNER_ACTOR: &str = "policy-signer";

tokio::task_local! {
    static ACTING: Actor;
}

/// Runs `fut` with `principal` as the acting principal of the ledger entries it appends.
pub async fn acting_as<F: Future>(principal: Actor, fut: F) -> F::Output {
    ACTING.scope(principal, fut).await
}

/// The acting principal of the current task, if any.
pub fn acting() -> Option<Actor> {
    ACTING.try_with(Clone::clone).ok()
}

/// Whether `actor` is one of the service's own actors (replaced by the acting principal).
pub fn is_service_actor(actor: &str) -> bool {
    matches!(
        actor,
        "treasury" | "custody" | "policy-signer" | "ledger" | "governance"
    ) || actor.starts_with("vault:")
}

/// Gives `drafts` written by the service the acting principal as actor (unchanged outside
/// [`acting_as`]).
pub fn attribute(drafts: &mut [EntryDraft]) {
    if let Some(p) = acting() {
        for d in drafts.iter_mut() {
            if is_service_actor(d.actor.as_str()) {
                d.actor = p.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    fn draft(actor: &str) -> EntryDraft {
        EntryDraft::note(1, actor, "x").expect("draft")
    }

    #[tokio::test]
    async fn service_actors_become_the_principal_and_people_stay() {
        let mut ds = vec![
            draft("custody"),
            draft("policy-signer"),
            draft("vault:reserve"),
            draft("alice"),
        ];
        attribute(&mut ds);
        assert_eq!(
            ds[0].actor.as_str(),
            "custody",
            "no principal outside a scope"
        );
        let p = Actor::new("integrator-1").expect("actor");
        acting_as(p, async {
            attribute(&mut ds);
        })
        .await;
        let got: Vec<&str> = ds.iter().map(|d| d.actor.as_str()).collect();
        assert_eq!(
            got,
            ["integrator-1", "integrator-1", "integrator-1", "alice"]
        );
    }
}
