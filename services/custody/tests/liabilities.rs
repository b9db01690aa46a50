//! The liabilities sum tree: round trips, every mutation of a proof refused, reserves and
//! overflow checks, the ledger draft.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bdk_wallet::bitcoin::Amount;
use custody::ledger::Kind;
use custody::liabilities::{
    check_reserves, parse_accounts_csv, parse_accounts_json, verify_proof_json, Account, AccountId,
    LiabilitiesRoot, LiabilitiesTree, LiabilityError, LiabilityProof, LEDGER_TYPE,
};
use proptest::prelude::*;

fn account(i: u64, balance: u64) -> Account {
    let mut salt = [0u8; 32];
    salt[..8].copy_from_slice(&i.to_le_bytes());
    salt[31] = 0x5a;
    Account::new(
        AccountId::new(format!("agency-{i}")).unwrap(),
        Amount::from_sat(balance),
        salt,
    )
    .unwrap()
}

fn accounts(n: u64) -> Vec<Account> {
    (0..n).map(|i| account(i, 1_000 + i * 7)).collect()
}

fn tree(n: u64) -> LiabilitiesTree {
    LiabilitiesTree::build(accounts(n)).unwrap()
}

#[test]
fn round_trip_every_account() {
    for n in [1u64, 2, 3, 7, 1000] {
        let t = tree(n);
        let root = t.root();
        let total: u64 = (0..n).map(|i| 1_000 + i * 7).sum();
        assert_eq!(root.total, Amount::from_sat(total));
        assert_eq!(root.accounts, n);
        for i in 0..n {
            let p = t.proof(i).unwrap();
            let text = p.to_json();
            let v = verify_proof_json(&text, &root.hash_hex(), Some(root.total)).unwrap();
            assert_eq!(v.index, i);
            assert_eq!(v.root, root);
            assert_eq!(&v.account, t.accounts()[i as usize].id());
            assert_eq!(v.balance, t.accounts()[i as usize].balance());
            // Without the total too.
            p.verify(&root.hash_hex(), None).unwrap();
        }
        assert!(matches!(
            t.proof(n),
            Err(LiabilityError::IndexOutOfRange { .. })
        ));
    }
}

#[test]
fn deterministic_whatever_the_order() {
    let a = tree(50).root();
    let mut rev = accounts(50);
    rev.reverse();
    let b = LiabilitiesTree::build(rev).unwrap().root();
    assert_eq!(a, b);
    // Another salt gives another root.
    let mut other = accounts(50);
    other[3] = Account::new(other[3].id().clone(), other[3].balance(), [9; 32]).unwrap();
    assert_ne!(LiabilitiesTree::build(other).unwrap().root().hash, a.hash);
}

#[test]
fn root_json_round_trip_and_ledger_draft() {
    let root = tree(7).root();
    assert_eq!(LiabilitiesRoot::parse(&root.to_json()).unwrap(), root);
    assert!(matches!(
        LiabilitiesRoot::parse("{"),
        Err(LiabilityError::Malformed { .. })
    ));
    let d = root.ledger_draft("liabilities", 1_700_000_000_000).unwrap();
    assert_eq!(d.kind, Kind::ReserveProof);
    let body: serde_json::Value = serde_json::from_slice(d.payload.as_bytes()).unwrap();
    assert_eq!(body["type"], LEDGER_TYPE);
    assert_eq!(body["root_hash"], root.hash_hex());
    assert_eq!(body["root_sum_sat"], root.total.to_sat());
    assert_eq!(body["accounts"], 7);
}

/// Each named mutation of a proof, applied to a proof of leaf `index` in a tree of `n`.
fn mutations(p: &LiabilityProof) -> Vec<(&'static str, LiabilityProof)> {
    let mut out = Vec::new();
    let mut m = p.clone();
    m.balance_sat += 1;
    out.push(("balance", m));
    let mut m = p.clone();
    m.balance_sat += 1;
    m.root_sum_sat += 1;
    out.push(("balance and root sum", m));
    let mut m = p.clone();
    m.salt = flip_hex(&m.salt);
    out.push(("salt", m));
    let mut m = p.clone();
    m.account_id.push('x');
    out.push(("id", m));
    if !p.path.is_empty() {
        let mut m = p.clone();
        m.path[0].hash = flip_hex(&m.path[0].hash);
        out.push(("sibling hash", m));
        let mut m = p.clone();
        m.path[0].sum_sat += 1;
        out.push(("sibling sum", m));
        let mut m = p.clone();
        m.path[0].sum_sat += 1;
        m.root_sum_sat += 1;
        out.push(("sibling sum and root sum", m));
        let mut m = p.clone();
        let last = m.path.len() - 1;
        m.path[last].sum_sat -= 1;
        m.balance_sat += 1;
        out.push(("sum moved from a sibling to the leaf", m));
    }
    let mut m = p.clone();
    m.root_sum_sat += 1;
    out.push(("root sum", m));
    let mut m = p.clone();
    m.root_hash = flip_hex(&m.root_hash);
    out.push(("root hash", m));
    let mut m = p.clone();
    m.index = (m.index + 1) % m.tree_size.max(2);
    out.push(("index", m));
    let mut m = p.clone();
    m.index = m.tree_size;
    out.push(("index out of range", m));
    let mut m = p.clone();
    m.tree_size += 1;
    out.push(("size", m));
    let mut m = p.clone();
    m.tree_size = 0;
    out.push(("size zero", m));
    out
}

fn flip_hex(h: &str) -> String {
    let mut b = hex::decode(h).unwrap();
    b[0] ^= 1;
    hex::encode(b)
}

#[test]
fn every_mutation_fails() {
    for n in [1u64, 2, 3, 7, 64] {
        let t = tree(n);
        let root = t.root();
        for i in 0..n {
            let p = t.proof(i).unwrap();
            for (what, m) in mutations(&p) {
                // Against the published root hash alone, and with the total too.
                let r = m.verify(&root.hash_hex(), None);
                assert!(r.is_err(), "n={n} i={i}: {what} accepted");
                let r = m.verify(&root.hash_hex(), Some(root.total));
                assert!(r.is_err(), "n={n} i={i}: {what} accepted with total");
            }
        }
    }
}

#[test]
fn mutations_give_the_named_errors() {
    let t = tree(7);
    let root = t.root();
    let hex = root.hash_hex();
    let p = t.proof(2).unwrap();
    let err = |m: &LiabilityProof| m.verify(&hex, Some(root.total)).unwrap_err();

    let mut m = p.clone();
    m.balance_sat += 1;
    assert!(
        matches!(err(&m), LiabilityError::SumMismatch { .. }),
        "{}",
        err(&m)
    );
    let mut m = p.clone();
    m.path[1].sum_sat += 5;
    assert!(matches!(err(&m), LiabilityError::SumMismatch { .. }));
    let mut m = p.clone();
    m.salt = flip_hex(&m.salt);
    assert!(matches!(err(&m), LiabilityError::NotInTree { .. }));
    let mut m = p.clone();
    m.account_id = "agency-3".into();
    assert!(matches!(err(&m), LiabilityError::NotInTree { .. }));
    let mut m = p.clone();
    m.path[0].hash = flip_hex(&m.path[0].hash);
    assert!(matches!(err(&m), LiabilityError::NotInTree { .. }));
    let mut m = p.clone();
    m.index = 9;
    assert!(matches!(err(&m), LiabilityError::IndexOutOfRange { .. }));
    let mut m = p.clone();
    m.tree_size = 100;
    assert!(matches!(err(&m), LiabilityError::PathLength { .. }));
    let mut m = p.clone();
    m.tree_size = 0;
    assert!(matches!(err(&m), LiabilityError::SizeOutOfRange(0)));
    let mut m = p.clone();
    m.root_sum_sat += 1;
    assert!(matches!(err(&m), LiabilityError::WrongTotal { .. }));
    let mut m = p.clone();
    m.account_id = "../etc".into();
    assert!(matches!(err(&m), LiabilityError::InvalidAccountId { .. }));
    let mut m = p.clone();
    m.path[0].sum_sat = u64::MAX;
    assert!(matches!(err(&m), LiabilityError::Overflow));

    // The proof against another published root.
    let other = tree(8).root();
    let e = p.verify(&other.hash_hex(), None).unwrap_err();
    assert!(matches!(e, LiabilityError::WrongRoot { .. }));
    assert!(e.to_string().starts_with("proof is for root"), "{e}");
    // A bad root argument.
    assert!(matches!(
        p.verify("zz", None),
        Err(LiabilityError::Malformed { .. })
    ));
    assert!(matches!(
        p.verify("abcd", None),
        Err(LiabilityError::Malformed { .. })
    ));
}

#[test]
fn malformed_json_never_panics() {
    let t = tree(3);
    let hex = t.root().hash_hex();
    let good = t.proof(1).unwrap().to_json();
    for bad in [
        "",
        "{",
        "[]",
        "null",
        "{\"format\": 1}",
        &good.replace("\"index\": 1", "\"index\": -1"),
        &good.replace("\"index\": 1", "\"index\": 1.5"),
        &good.replace("\"format\"", "\"extra\": 0, \"format\""),
        &good.replace("strategic-reserve liability proof v1", "v0"),
    ] {
        assert!(
            matches!(
                verify_proof_json(bad, &hex, None),
                Err(LiabilityError::Malformed { .. })
            ),
            "{bad}"
        );
    }
    // Truncations of a good proof.
    for cut in 0..good.len() {
        if good.is_char_boundary(cut) {
            let _ = verify_proof_json(&good[..cut], &hex, None);
        }
    }
    verify_proof_json(&good, &hex, None).unwrap();
}

#[test]
fn liabilities_above_reserves_refused() {
    let root = tree(3).root();
    check_reserves(root.total, root.total).unwrap();
    check_reserves(root.total, root.total + Amount::from_sat(1)).unwrap();
    let e = check_reserves(root.total, root.total - Amount::from_sat(1)).unwrap_err();
    assert!(matches!(
        e,
        LiabilityError::LiabilitiesExceedReserves { .. }
    ));
    assert!(e.to_string().contains("exceed the proven reserves"), "{e}");
}

#[test]
fn overflow_and_bad_input_refused() {
    let max = Amount::MAX_MONEY.to_sat();
    // 21e14 * 8785 > u64::MAX.
    let many: Vec<Account> = (0..8785).map(|i| account(i, max)).collect();
    assert!(matches!(
        LiabilitiesTree::build(many),
        Err(LiabilityError::Overflow)
    ));
    let fits: Vec<Account> = (0..8000).map(|i| account(i, max)).collect();
    LiabilitiesTree::build(fits).unwrap();
    assert!(matches!(
        Account::new(
            AccountId::new("a").unwrap(),
            Amount::from_sat(max + 1),
            [0; 32]
        ),
        Err(LiabilityError::BalanceTooLarge { .. })
    ));
    assert!(matches!(
        LiabilitiesTree::build(vec![]),
        Err(LiabilityError::NoAccounts)
    ));
    assert!(matches!(
        LiabilitiesTree::build(vec![account(1, 5), account(1, 6)]),
        Err(LiabilityError::DuplicateAccount(_))
    ));
    for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
        assert!(AccountId::new(bad).is_err(), "{bad:?}");
    }
    AccountId::new("treasury.ops_2-A").unwrap();
}

#[test]
fn account_lists() {
    let csv = "account_id,balance_sat\n# comment\nagency-a, 100\n\nagency-b,200,\
               0101010101010101010101010101010101010101010101010101010101010101\n";
    let l = parse_accounts_csv(csv).unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].balance_sat, 100);
    assert!(l[1].salt.is_some());
    let e = parse_accounts_csv("a,1\nb,x\n").unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
    let j = parse_accounts_json(r#"[{"account_id":"a","balance_sat":5}]"#).unwrap();
    assert_eq!(j[0].account_id, "a");
    assert!(parse_accounts_json(r#"[{"account_id":"a","balance_sat":-5}]"#).is_err());
    let mut rng = rand::rngs::OsRng;
    let a = l[0].to_account(&mut rng).unwrap();
    let b = l[0].to_account(&mut rng).unwrap();
    assert_ne!(a.salt(), b.salt(), "fresh salts");
    assert_eq!(l[1].to_account(&mut rng).unwrap().salt(), &[1u8; 32]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn any_single_mutation_fails(
        n in 1u64..80,
        idx in any::<u64>(),
        which in 0usize..7,
        pos in any::<usize>(),
        bit in 0u8..8,
        delta in 1u64..1_000_000,
    ) {
        let t = tree(n);
        let root = t.root();
        let i = idx % n;
        let p = t.proof(i).unwrap();
        let mut m = p.clone();
        let flip = |h: &str, pos: usize| {
            let mut b = hex::decode(h).unwrap();
            let k = pos % b.len();
            b[k] ^= 1 << bit;
            hex::encode(b)
        };
        match which {
            0 => m.balance_sat = m.balance_sat.wrapping_add(delta),
            1 => m.salt = flip(&m.salt, pos),
            2 => {
                let mut id = m.account_id.into_bytes();
                let k = pos % id.len();
                id[k] = if id[k] == b'a' { b'b' } else { b'a' };
                m.account_id = String::from_utf8(id).unwrap();
            }
            3 if !m.path.is_empty() => {
                let k = pos % m.path.len();
                m.path[k].hash = flip(&m.path[k].hash, pos / 7);
            }
            4 if !m.path.is_empty() => {
                let k = pos % m.path.len();
                m.path[k].sum_sat = m.path[k].sum_sat.wrapping_add(delta);
            }
            5 => m.index = m.index.wrapping_add(delta),
            _ => m.tree_size = m.tree_size.wrapping_add(delta),
        }
        prop_assume!(m != p);
        prop_assert!(m.verify(&root.hash_hex(), None).is_err());
        // The same mutation with the root sum adjusted to match is refused too.
        let mut adjusted = m.clone();
        adjusted.root_sum_sat = adjusted.root_sum_sat.wrapping_add(m.balance_sat.wrapping_sub(p.balance_sat));
        prop_assert!(adjusted.verify(&root.hash_hex(), None).is_err());
        prop_assert!(m.verify(&root.hash_hex(), Some(root.total)).is_err());
    }
}
