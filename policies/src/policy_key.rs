//! The policy-key promise: every way to spend a vault without a relative timelock needs the
//! policy key.
//!
//! Why a check on the semantic policy: the policy signer can only gate the spends it is asked to
//! sign. A vault whose script lets officers spend alone (`sortedmulti(k, P, O…)` with `k` at most
//! the number of officers, a `multi_a` without `P`, a taproot key path of one officer) bypasses
//! every rule of the policy. So the descriptor is lifted to its semantic policy
//! ([`miniscript::policy::Liftable`]) and asked one question: with the policy key withheld and
//! every relative timelock (`older`) unmet, can the remaining keys still satisfy it? If they
//! can, a minimal set of those keys is named in the error.
//!
//! What counts as "available" to an attacker, conservatively: every key but the policy key,
//! every hash preimage, every absolute timelock (`after`: it only delays, and vaults refuse it
//! anyway). Only `older` paths are the recovery exception. A taproot key path is a single-key
//! path, so the internal key must be unspendable (the caller says which key is the NUMS point).
//!
//! Shared by `custody` (vault validation) and the HSM policy signer (which refuses to register,
//! and therefore ever sign for, a vault failing it).

use miniscript::policy::semantic::Policy as Semantic;
use miniscript::policy::Liftable;
use miniscript::{Descriptor, ForEachKey, MiniscriptKey};

/// The BIP-341 "nothing up my sleeve" point (x-only, hex): the one taproot internal key a vault
/// may use, because nobody knows its secret and the key path is therefore unspendable.
pub const NUMS_POINT: &str = "50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0";

/// Whether an x-only key is [`NUMS_POINT`].
pub fn is_nums(x_only: &[u8; 32]) -> bool {
    hex::encode(x_only) == NUMS_POINT
}

/// Why a vault descriptor breaks the policy-key promise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyKeyError {
    /// These keys together satisfy a path that needs neither the policy key nor a timelock.
    #[error("{}", describe_solo(.keys))]
    SpendsWithout {
        /// A minimal set of keys (no key can be dropped) that spends without the policy key.
        keys: Vec<String>,
    },
    /// A taproot internal key other than the unspendable NUMS point: a one-key solo path.
    #[error("taproot internal key {key} can spend alone by the key path without the policy key; only the unspendable nums point is accepted")]
    KeyPath {
        /// The internal key.
        key: String,
    },
    /// The descriptor cannot be lifted to a semantic policy.
    #[error("descriptor cannot be lifted to a spending policy: {0}")]
    Lift(String),
}

fn describe_solo(keys: &[String]) -> String {
    match keys {
        [] => "a path with no key at all can spend without the policy key".to_owned(),
        [one] => format!("key {one} can spend alone without the policy key"),
        many => format!("keys {} can spend without the policy key", many.join(", ")),
    }
}

/// Checks that every spending path of `desc` without a relative timelock needs the policy key.
///
/// `is_policy_key` says whether a key is the policy key (compare the way the script will: for
/// taproot, by x-only key); `is_unspendable` whether a taproot internal key is the NUMS point.
///
/// # Errors
/// [`PolicyKeyError::KeyPath`] for a taproot internal key that is not unspendable,
/// [`PolicyKeyError::SpendsWithout`] naming a minimal set of keys that spends without the policy
/// key and without `older`, [`PolicyKeyError::Lift`] when the descriptor has no semantic policy.
pub fn require_policy_key<Pk: MiniscriptKey>(
    desc: &Descriptor<Pk>,
    is_policy_key: impl Fn(&Pk) -> bool,
    is_unspendable: impl Fn(&Pk) -> bool,
) -> Result<(), PolicyKeyError> {
    let lifted = match desc {
        Descriptor::Tr(tr) => {
            let internal = tr.internal_key();
            if !is_unspendable(internal) {
                return Err(PolicyKeyError::KeyPath {
                    key: internal.to_string(),
                });
            }
            match tr.tap_tree() {
                Some(tree) => tree.lift(),
                // Only an unspendable key path: nothing can spend, so nothing spends alone.
                None => return Ok(()),
            }
        }
        other => other.lift(),
    }
    .map_err(|e| PolicyKeyError::Lift(e.to_string()))?;
    require_policy_key_in(&lifted, is_policy_key)
}

/// [`require_policy_key`] on an already lifted semantic policy (a taproot internal key must be
/// checked by the caller).
///
/// # Errors
/// [`PolicyKeyError::SpendsWithout`] naming a minimal set of keys that spends without the
/// policy key and without `older`.
pub fn require_policy_key_in<Pk: MiniscriptKey>(
    policy: &Semantic<Pk>,
    is_policy_key: impl Fn(&Pk) -> bool,
) -> Result<(), PolicyKeyError> {
    let mut others: Vec<Pk> = Vec::new();
    policy.for_each_key(|k| {
        if !is_policy_key(k) && !others.contains(k) {
            others.push(k.clone());
        }
        true
    });
    if !satisfiable(policy, &others) {
        return Ok(());
    }
    // Greedy shrink: drop every key the path does not need; what remains is minimal.
    let mut needed = others.clone();
    for key in &others {
        let without: Vec<Pk> = needed.iter().filter(|k| *k != key).cloned().collect();
        if satisfiable(policy, &without) {
            needed = without;
        }
    }
    Err(PolicyKeyError::SpendsWithout {
        keys: needed.iter().map(ToString::to_string).collect(),
    })
}

/// Whether `policy` can be satisfied with exactly the keys in `keys`, every hash preimage and
/// absolute lock, and no relative timelock.
fn satisfiable<Pk: MiniscriptKey>(policy: &Semantic<Pk>, keys: &[Pk]) -> bool {
    match policy {
        Semantic::Unsatisfiable | Semantic::Older(_) => false,
        Semantic::Trivial
        | Semantic::After(_)
        | Semantic::Sha256(_)
        | Semantic::Hash256(_)
        | Semantic::Ripemd160(_)
        | Semantic::Hash160(_) => true,
        Semantic::Key(k) => keys.contains(k),
        Semantic::Thresh(t) => t.iter().filter(|s| satisfiable(s, keys)).count() >= t.k(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::str::FromStr;

    use proptest::prelude::*;

    use super::*;

    fn check(text: &str) -> Result<(), PolicyKeyError> {
        let d = Descriptor::<String>::from_str(text).unwrap();
        require_policy_key(&d, |k| k == "P", |k| k == "NUMS")
    }

    #[test]
    fn policy_with_recovery_is_accepted() {
        check("wsh(or_d(and_b(pk(P),a:multi(2,O1,O2,O3)),and_v(v:multi(2,R1,R2),older(52560))))")
            .unwrap();
    }

    #[test]
    fn sortedmulti_officers_alone_is_refused_and_named() {
        let err = check("wsh(sortedmulti(2,P,O1,O2))").unwrap_err();
        assert_eq!(
            err,
            PolicyKeyError::SpendsWithout {
                keys: vec!["O1".into(), "O2".into()]
            }
        );
        assert_eq!(
            err.to_string(),
            "keys O1, O2 can spend without the policy key"
        );
    }

    #[test]
    fn sortedmulti_all_keys_is_accepted() {
        check("wsh(sortedmulti(3,P,O1,O2))").unwrap();
    }

    #[test]
    fn taproot_without_policy_key_is_refused() {
        let err = check("tr(NUMS,multi_a(2,O1,O2,O3))").unwrap_err();
        assert_eq!(
            err,
            PolicyKeyError::SpendsWithout {
                keys: vec!["O2".into(), "O3".into()]
            }
        );
    }

    #[test]
    fn taproot_officer_internal_key_is_refused() {
        let err = check("tr(O1,and_v(v:pk(P),multi_a(1,O2,O3)))").unwrap_err();
        assert_eq!(err, PolicyKeyError::KeyPath { key: "O1".into() });
        // Even the policy key itself: the key path skips the officers.
        let err = check("tr(P,multi_a(1,O2,O3))").unwrap_err();
        assert_eq!(err, PolicyKeyError::KeyPath { key: "P".into() });
    }

    #[test]
    fn taproot_policy_with_recovery_is_accepted() {
        check("tr(NUMS,{and_v(v:pk(P),multi_a(2,O1,O2,O3)),and_v(v:multi_a(2,R1,R2),older(144))})")
            .unwrap();
    }

    #[test]
    fn recovery_leaf_without_older_is_refused() {
        let err =
            check("tr(NUMS,{and_v(v:pk(P),multi_a(2,O1,O2,O3)),multi_a(2,R1,R2)})").unwrap_err();
        assert_eq!(
            err,
            PolicyKeyError::SpendsWithout {
                keys: vec!["R1".into(), "R2".into()]
            }
        );
    }

    #[test]
    fn single_officer_path_is_named() {
        let err = check("wsh(or_d(pk(O1),and_v(v:pk(P),pk(O2))))").unwrap_err();
        assert_eq!(
            err.to_string(),
            "key O1 can spend alone without the policy key"
        );
    }

    #[test]
    fn hash_only_path_is_refused() {
        let h = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let err = check(&format!("wsh(or_d(pk(P),sha256({h})))")).unwrap_err();
        assert_eq!(err, PolicyKeyError::SpendsWithout { keys: vec![] });
    }

    proptest! {
        /// `sortedmulti(k, P, O1..On)` needs P exactly when k > n, and the named set is k keys.
        #[test]
        fn sortedmulti_threshold_decides(n in 1usize..8, k_off in 0usize..8) {
            let k = 1 + k_off % (n + 1);
            let officers: Vec<String> = (1..=n).map(|i| format!("O{i}")).collect();
            let text = format!("wsh(sortedmulti({k},P,{}))", officers.join(","));
            match check(&text) {
                Ok(()) => prop_assert_eq!(k, n + 1),
                Err(PolicyKeyError::SpendsWithout { keys }) => {
                    prop_assert!(k <= n);
                    prop_assert_eq!(keys.len(), k);
                    prop_assert!(!keys.contains(&"P".to_owned()));
                }
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
        }

        /// The taproot template is accepted for every threshold, and a recovery leaf is
        /// accepted only with its timelock.
        #[test]
        fn taproot_template_accepted(n in 1usize..6, k_off in 0usize..6, r in 1usize..3, timelocked in any::<bool>()) {
            let k = 1 + k_off % n;
            let officers: Vec<String> = (1..=n).map(|i| format!("O{i}")).collect();
            let recovery = if timelocked {
                format!("and_v(v:multi_a({r},R1,R2),older(144))")
            } else {
                format!("multi_a({r},R1,R2)")
            };
            let text = format!("tr(NUMS,{{and_v(v:pk(P),multi_a({k},{})),{recovery}}})", officers.join(","));
            prop_assert_eq!(check(&text).is_ok(), timelocked);
        }
    }
}
