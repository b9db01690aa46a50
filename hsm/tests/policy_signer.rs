//! The policy signer in front of a real SoftHSM2 policy key.
//!
//! A vault `wsh(or_d(and_b(pk(HSM), a:multi(2, three officers)), and_v(v:multi(2, two recovery
//! keys), older(10))))` under the example policy (keys from its fixed test secrets). Each test
//! builds a real PSBT for the vault with miniscript's updater, asks the policy signer to sign,
//! and checks both the refusals (each naming its reason) and, when it signs, that the officers'
//! signatures plus the policy key's finalize into a transaction miniscript's interpreter accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::str::FromStr;

use bitcoin::absolute::LockTime;
use bitcoin::bip32::DerivationPath;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Keypair, Secp256k1, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{
    Address, Amount, Network, NetworkKind, OutPoint, Psbt, ScriptBuf, Sequence, Transaction, TxIn,
    TxOut, Txid, Witness,
};
use common::softhsm::{config, softhsm, PIN, TOKEN};
use hsm::policy_signer::{PolicySignerError, SpendAuthorization};
use hsm::{Pkcs11Signer, PolicySigner, Signer, SoftwareKeystore};
use miniscript::descriptor::DescriptorPublicKey;
use miniscript::psbt::PsbtExt;
use miniscript::Descriptor;
use policies::approval::{sign, ApprovalSubject, Verdict};
use policies::evaluate::{PastSpend, ReceivedApproval, SpendState};
use policies::freeze::{AdminSignature, FreezeAction, FreezeOrder};
use policies::governance::ChangeOrder;
use policies::proof::{ProofSubject, ProofTerms};
use policies::{Approval, Policy};

const EXAMPLE: &str = include_str!("../../policies/examples/strategic-reserve.toml");
const PERSONS: &[(&str, u8)] = &[
    ("alice", 1),
    ("bob", 2),
    ("carol", 3),
    ("dave", 4),
    ("erin", 5),
    ("frank", 6),
    ("grace", 7),
    ("heidi", 8),
    ("ivan", 9),
    ("judy", 10),
];
const NOW: i64 = 1_800_000_000_000;
const TIP: u32 = 900_000;
const HOUR: i64 = 3_600_000;
const BTC: u64 = 100_000_000;
/// The first allowlist entry of the example policy, as a regtest address (same script).
const ALLOWLISTED_MAINNET: &str = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";

fn secret_of(person: &str) -> SecretKey {
    let b = PERSONS.iter().find(|(p, _)| *p == person).unwrap().1;
    SecretKey::from_slice(&[b; 32]).unwrap()
}

fn allowlisted() -> ScriptBuf {
    Address::from_str(ALLOWLISTED_MAINNET)
        .unwrap()
        .assume_checked()
        .script_pubkey()
}

fn elsewhere() -> ScriptBuf {
    let kp = Keypair::from_secret_key(
        &Secp256k1::new(),
        &SecretKey::from_slice(&[42; 32]).unwrap(),
    );
    let pk = bitcoin::CompressedPublicKey(kp.public_key());
    ScriptBuf::new_p2wpkh(&pk.wpubkey_hash())
}

struct Fixture {
    signer: PolicySigner<Pkcs11Signer>,
    officers: Vec<SoftwareKeystore>,
    external: Descriptor<DescriptorPublicKey>,
    internal: Descriptor<DescriptorPublicKey>,
    policy: Policy,
}

fn fixture(key_label: &str) -> Option<Fixture> {
    softhsm()?;
    let hsm_key = Pkcs11Signer::generate(config(TOKEN, key_label, PIN)).unwrap();
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let keys: Vec<SoftwareKeystore> = (0..5)
        .map(|i| {
            SoftwareKeystore::generate(format!("k{i}"), NetworkKind::Test, path.clone()).unwrap()
        })
        .collect();
    let k = |i: usize, chain: u32| format!("{}/{chain}/*", keys[i].descriptor_key());
    let text = |chain: u32| {
        format!(
            "wsh(or_d(and_b(pk({}),a:multi(2,{},{},{})),and_v(v:multi(2,{},{}),older(10))))",
            hsm_key.descriptor_key(),
            k(0, chain),
            k(1, chain),
            k(2, chain),
            k(3, chain),
            k(4, chain)
        )
    };
    let external = Descriptor::<DescriptorPublicKey>::from_str(&text(0)).unwrap();
    let internal = Descriptor::<DescriptorPublicKey>::from_str(&text(1)).unwrap();
    let policy = Policy::from_toml(EXAMPLE).unwrap();
    let mut signer = PolicySigner::new(hsm_key, policy.clone(), Network::Regtest).unwrap();
    signer
        .add_vault("main", &external.to_string(), &internal.to_string())
        .unwrap();
    Some(Fixture {
        signer,
        officers: keys.into_iter().take(3).collect(),
        external,
        internal,
        policy,
    })
}

/// A PSBT spending two vault coins (100 BTC and 200 BTC) to `dest` with change to the vault;
/// output 0 pays `dest`, output 1 is change.
fn psbt(f: &Fixture, dest: ScriptBuf, amount: Amount, fee: Amount) -> Psbt {
    let coins = [(0u32, 100 * BTC), (1, 200 * BTC)];
    let funding = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([9; 32]), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: coins
            .iter()
            .map(|(i, v)| TxOut {
                value: Amount::from_sat(*v),
                script_pubkey: f.external.at_derivation_index(*i).unwrap().script_pubkey(),
            })
            .collect(),
    };
    let total = Amount::from_sat(300 * BTC);
    let change = total - amount - fee;
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: (0..2)
            .map(|vout| TxIn {
                previous_output: OutPoint::new(funding.compute_txid(), vout),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output: vec![
            TxOut {
                value: amount,
                script_pubkey: dest,
            },
            TxOut {
                value: change,
                script_pubkey: f.internal.at_derivation_index(0).unwrap().script_pubkey(),
            },
        ],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    for (i, (index, _)) in coins.iter().enumerate() {
        psbt.inputs[i].witness_utxo = Some(funding.output[i].clone());
        psbt.inputs[i].non_witness_utxo = Some(funding.clone());
        psbt.update_input_with_descriptor(i, &f.external.at_derivation_index(*index).unwrap())
            .unwrap();
    }
    psbt.update_output_with_descriptor(1, &f.internal.at_derivation_index(0).unwrap())
        .unwrap();
    psbt
}

/// Half a bitcoin to a stranger with a 5,000 sat fee: the example policy's small tier.
fn small(f: &Fixture) -> Psbt {
    psbt(
        f,
        elsewhere(),
        Amount::from_sat(BTC / 2),
        Amount::from_sat(5_000),
    )
}

fn subject(f: &Fixture, id: &str, psbt: &Psbt) -> ApprovalSubject {
    let tx = &psbt.unsigned_tx;
    let inputs: Vec<(OutPoint, Amount)> = tx
        .input
        .iter()
        .zip(&psbt.inputs)
        .map(|(i, p)| (i.previous_output, p.witness_utxo.as_ref().unwrap().value))
        .collect();
    let outputs: Vec<(ScriptBuf, Amount)> = tx
        .output
        .iter()
        .map(|o| (o.script_pubkey.clone(), o.value))
        .collect();
    let total_in: Amount = inputs.iter().map(|(_, a)| *a).sum();
    let total_out: Amount = outputs.iter().map(|(_, a)| *a).sum();
    ApprovalSubject {
        request_id: id.to_owned(),
        vault: "main".to_owned(),
        txid: tx.compute_txid(),
        inputs,
        outputs,
        fee: total_in - total_out,
        policy: f.signer.policy().hash(),
        decision: Verdict::Approve,
        expires_at_ms: NOW + 48 * HOUR,
        expires_at_height: Some(TIP + 288),
    }
}

fn auth(f: &Fixture, id: &str, psbt: &Psbt) -> SpendAuthorization {
    SpendAuthorization {
        request_id: id.to_owned(),
        vault: "main".to_owned(),
        initiator: "alice".to_owned(),
        created_ms: NOW,
        created_height: TIP,
        requested_fee_rate: None,
        subject: subject(f, id, psbt),
        change_outputs: vec![1],
        approvals: Vec::new(),
        history: Vec::new(),
    }
}

fn approve(a: &mut SpendAuthorization, people: &[&str], at: i64) {
    for p in people {
        a.approvals.push(ReceivedApproval {
            approval: sign(&a.subject, p, &secret_of(p)),
            received_ms: at,
        });
    }
}

/// The officers 0 and 1 sign, then miniscript finalizes and its interpreter checks everything.
fn officers_finalize(f: &Fixture, mut psbt: Psbt) -> Transaction {
    for o in &f.officers[..2] {
        assert_eq!(o.sign_psbt(&mut psbt).unwrap().inputs(), vec![0, 1]);
    }
    let secp = Secp256k1::verification_only();
    let psbt = psbt.finalize(&secp).map_err(|(_, e)| e).unwrap();
    psbt.extract(&secp).unwrap()
}

#[test]
fn signs_an_approved_small_spend_and_the_transaction_verifies() {
    let Some(mut f) = fixture("policy-small") else {
        return;
    };
    let p = small(&f);
    let mut a = auth(&f, "r-small", &p);

    // No approval: refused, naming the group.
    let err = f.signer.check(&p, &a, NOW, TIP).unwrap_err();
    assert!(
        matches!(err, PolicySignerError::MissingApprovals { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("duty-officers"), "{err}");

    // The initiator's own approval never counts.
    approve(&mut a, &["alice"], NOW);
    let err = f.signer.check(&p, &a, NOW, TIP).unwrap_err();
    assert!(err.to_string().contains("initiator"), "{err}");

    approve(&mut a, &["bob"], NOW + 1);
    f.signer.observe(&a, NOW + 1);
    let mut signed = p.clone();
    let sig = f.signer.sign(&mut signed, &a, NOW + 2, TIP).unwrap();
    assert_eq!(sig.inputs, vec![0, 1]);
    assert_eq!(sig.request_id, "r-small");
    assert_eq!(sig.txid, p.unsigned_tx.compute_txid());
    assert_eq!(sig.tier.as_deref(), Some("small"));
    assert_eq!(sig.counted, vec!["bob".to_owned()]);
    assert_eq!(sig.amount, Amount::from_sat(BTC / 2));
    for input in &signed.inputs {
        assert_eq!(input.partial_sigs.len(), 1);
    }

    // The policy key alone is not enough; with two officers it finalizes and verifies.
    let secp = Secp256k1::verification_only();
    assert!(signed.clone().finalize(&secp).is_err());
    let tx = officers_finalize(&f, signed);
    assert_eq!(tx.compute_txid(), p.unsigned_tx.compute_txid());
}

#[test]
fn refuses_approvals_for_another_transaction_and_expired_ones() {
    let Some(mut f) = fixture("policy-refusals") else {
        return;
    };
    let p = small(&f);
    let mut a = auth(&f, "r-1", &p);

    // An approval for another txid (the same request, another transaction).
    let other = psbt(
        &f,
        elsewhere(),
        Amount::from_sat(BTC / 3),
        Amount::from_sat(5_000),
    );
    let foreign = subject(&f, "r-1", &other);
    a.approvals.push(ReceivedApproval {
        approval: sign(&foreign, "bob", &secret_of("bob")),
        received_ms: NOW,
    });
    let err = f.signer.check(&p, &a, NOW, TIP).unwrap_err();
    assert!(
        matches!(err, PolicySignerError::MissingApprovals { ref ignored, .. } if ignored.len() == 1),
        "{err}"
    );
    assert!(err.to_string().contains("bob"), "{err}");

    // An approval of another request (a replay) is not counted either.
    let mut replay = auth(&f, "r-2", &p);
    approve(&mut replay, &["bob"], NOW);
    a.approvals = replay.approvals.clone();
    let err = f.signer.check(&p, &a, NOW, TIP).unwrap_err();
    assert!(
        matches!(err, PolicySignerError::MissingApprovals { .. }),
        "{err}"
    );

    // A valid approval, but the subject expired (time, then height).
    a.approvals.clear();
    approve(&mut a, &["bob"], NOW);
    f.signer.check(&p, &a, NOW, TIP).unwrap();
    let err = f.signer.check(&p, &a, NOW + 48 * HOUR, TIP).unwrap_err();
    assert!(matches!(err, PolicySignerError::Expired(_)), "{err}");
    let err = f.signer.check(&p, &a, NOW, TIP + 288).unwrap_err();
    assert!(matches!(err, PolicySignerError::Expired(_)), "{err}");

    // Nothing was signed by any refusal.
    let mut q = p.clone();
    assert!(f.signer.sign(&mut q, &a, NOW + 48 * HOUR, TIP).is_err());
    assert_eq!(q, p);
}

#[test]
fn refuses_a_swapped_output_a_raised_fee_and_false_change() {
    let Some(mut f) = fixture("policy-tamper") else {
        return;
    };
    let p = small(&f);
    let mut a = auth(&f, "r-t", &p);
    approve(&mut a, &["bob", "carol"], NOW);
    f.signer.check(&p, &a, NOW, TIP).unwrap();

    // The destination swapped for another script, same amount.
    let mut swapped = p.clone();
    swapped.unsigned_tx.output[0].script_pubkey = allowlisted();
    let err = f.signer.sign(&mut swapped, &a, NOW, TIP).unwrap_err();
    assert!(
        matches!(err, PolicySignerError::NotTheApprovedTransaction(_)),
        "{err}"
    );
    assert!(
        err.to_string().contains("output 0 pays another script"),
        "{err}"
    );
    assert!(swapped.inputs.iter().all(|i| i.partial_sigs.is_empty()));

    // The fee raised by 1,000 sat out of the change.
    let mut raised = p.clone();
    raised.unsigned_tx.output[1].value -= Amount::from_sat(1_000);
    let err = f.signer.check(&raised, &a, NOW, TIP).unwrap_err();
    assert!(
        err.to_string().contains("fee 6000 sat, approved 5000 sat"),
        "{err}"
    );

    // The version (or a sequence) changed: only the txid tells.
    let mut bumped = p.clone();
    bumped.unsigned_tx.input[0].sequence = Sequence::MAX;
    let err = f.signer.check(&bumped, &a, NOW, TIP).unwrap_err();
    assert!(err.to_string().contains("txid"), "{err}");

    // Declaring the payment as change (to understate the amount) is caught.
    let mut lie = a.clone();
    lie.change_outputs = vec![0, 1];
    let err = f.signer.check(&p, &lie, NOW, TIP).unwrap_err();
    assert!(matches!(err, PolicySignerError::NotChange(0)), "{err}");

    // An input that is not the vault's.
    let mut foreign = p.clone();
    foreign.inputs[1].bip32_derivation.clear();
    let err = f.signer.check(&foreign, &a, NOW, TIP).unwrap_err();
    assert!(
        matches!(err, PolicySignerError::Input { input: 1, .. }),
        "{err}"
    );

    // A segwit v0 input without its previous transaction: its amount cannot be checked (two
    // requests over one txid could lie with complementary amounts), so nothing is signed.
    let mut bare = p.clone();
    bare.inputs[0].non_witness_utxo = None;
    let err = f.signer.sign(&mut bare, &a, NOW, TIP).unwrap_err();
    assert!(
        matches!(err, PolicySignerError::Input { input: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("non_witness_utxo"), "{err}");
    assert!(bare.inputs.iter().all(|i| i.partial_sigs.is_empty()));
    // ...nor with a witness_utxo amount the previous transaction disagrees with.
    let mut lying = p.clone();
    lying.inputs[1].witness_utxo.as_mut().unwrap().value -= Amount::from_sat(1_000);
    let err = f.signer.sign(&mut lying, &a, NOW, TIP).unwrap_err();
    assert!(
        matches!(err, PolicySignerError::Input { input: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("non_witness_utxo"), "{err}");
    assert!(lying.inputs.iter().all(|i| i.partial_sigs.is_empty()));

    // A vault the signer does not cosign for.
    let mut unknown = a.clone();
    unknown.vault = "other".to_owned();
    let err = f.signer.check(&p, &unknown, NOW, TIP).unwrap_err();
    assert!(matches!(err, PolicySignerError::UnknownVault(_)), "{err}");
}

#[test]
fn a_large_spend_waits_for_its_delay_counted_from_when_the_signer_saw_the_quorum() {
    let Some(mut f) = fixture("policy-delay") else {
        return;
    };
    let p = psbt(
        &f,
        allowlisted(),
        Amount::from_sat(60 * BTC),
        Amount::from_sat(5_000),
    );
    let mut a = auth(&f, "r-large", &p);
    approve(&mut a, &["bob", "carol", "dave"], NOW);
    let err = f.signer.check(&p, &a, NOW, TIP).unwrap_err();
    assert!(err.to_string().contains("cfo"), "{err}");

    // The quorum, with receive times the service claims are a day old.
    approve(&mut a, &["frank"], NOW);
    for ra in &mut a.approvals {
        ra.received_ms = NOW - 25 * HOUR;
    }
    // The signer first sees them now: the 24 h run from now, not from the claimed time.
    f.signer.observe(&a, NOW);
    let err = f.signer.check(&p, &a, NOW + HOUR, TIP).unwrap_err();
    assert!(
        matches!(err, PolicySignerError::DelayNotElapsed { ready_at_ms, .. } if ready_at_ms == NOW + 24 * HOUR),
        "{err}"
    );
    let mut signed = p.clone();
    let sig = f
        .signer
        .sign(&mut signed, &a, NOW + 24 * HOUR, TIP)
        .unwrap();
    assert_eq!(sig.tier.as_deref(), Some("large"));
    officers_finalize(&f, signed);

    // The same spend to a destination off the allowlist is denied outright.
    let q = psbt(
        &f,
        elsewhere(),
        Amount::from_sat(60 * BTC),
        Amount::from_sat(5_000),
    );
    let mut b = auth(&f, "r-large-2", &q);
    approve(&mut b, &["bob", "carol", "dave", "frank"], NOW);
    let err = f.signer.check(&q, &b, NOW + 30 * HOUR, TIP).unwrap_err();
    assert!(matches!(err, PolicySignerError::Denied(_)), "{err}");
}

#[test]
fn velocity_counts_what_the_signer_signed_even_when_the_history_omits_it() {
    let Some(mut f) = fixture("policy-velocity") else {
        return;
    };
    // 45 BTC (medium, 2 of 3 duty officers), four times within 24 h: 180 BTC, under 200.
    for i in 0..4 {
        let p = psbt(
            &f,
            elsewhere(),
            Amount::from_sat(45 * BTC),
            Amount::from_sat(5_000 + i),
        );
        let mut a = auth(&f, &format!("r-v{i}"), &p);
        approve(&mut a, &["bob", "carol"], NOW);
        let mut s = p.clone();
        f.signer
            .sign(&mut s, &a, NOW + i64::try_from(i).unwrap(), TIP)
            .unwrap();
    }
    // A fifth would make 225 BTC: denied although the caller's history is empty.
    let p = psbt(
        &f,
        elsewhere(),
        Amount::from_sat(45 * BTC),
        Amount::from_sat(9_000),
    );
    let mut a = auth(&f, "r-v4", &p);
    approve(&mut a, &["bob", "carol"], NOW);
    assert!(a.history.is_empty());
    let err = f.signer.check(&p, &a, NOW + 10, TIP).unwrap_err();
    assert!(
        matches!(err, PolicySignerError::Denied(ref r) if r.iter().any(|d| d.to_string().contains("velocity"))),
        "{err}"
    );
    // A day later the window has moved on.
    f.signer.check(&p, &a, NOW + 24 * HOUR + 10, TIP).unwrap();
    // A history that names a spend the signer did not sign counts too.
    a.history.push(PastSpend {
        request_id: "r-elsewhere".to_owned(),
        amount: Amount::from_sat(190 * BTC),
        at_ms: NOW + 24 * HOUR,
        state: SpendState::Broadcast,
    });
    assert!(f.signer.check(&p, &a, NOW + 24 * HOUR + 10, TIP).is_err());
}

fn admin_sigs(digest: [u8; 32], admins: &[&str]) -> Vec<AdminSignature> {
    admins
        .iter()
        .map(|a| AdminSignature::sign(digest, a, &secret_of(a)))
        .collect()
}

#[test]
fn a_frozen_reserve_signs_nothing_until_the_admin_quorum_lifts_it() {
    let Some(mut f) = fixture("policy-freeze") else {
        return;
    };
    let p = small(&f);
    let mut a = auth(&f, "r-f", &p);
    approve(&mut a, &["bob"], NOW);

    let freeze = FreezeOrder {
        action: FreezeAction::Freeze,
        policy: f.policy.hash(),
        seq: 0,
        issued_at_ms: NOW,
        reason: "incident 7".to_owned(),
    };
    f.signer
        .apply_freeze(&freeze, &admin_sigs(freeze.digest(), &["heidi"]))
        .unwrap();
    let mut q = p.clone();
    let err = f.signer.sign(&mut q, &a, NOW, TIP).unwrap_err();
    assert!(matches!(err, PolicySignerError::Frozen { seq: 1 }), "{err}");
    assert_eq!(q, p);

    let lift = FreezeOrder {
        action: FreezeAction::Lift,
        seq: 1,
        reason: "resolved".to_owned(),
        ..freeze.clone()
    };
    // One admin cannot lift.
    let err = f
        .signer
        .apply_freeze(&lift, &admin_sigs(lift.digest(), &["ivan"]))
        .unwrap_err();
    assert!(matches!(err, PolicySignerError::Freeze(_)), "{err}");
    // A signature by someone who is not an admin does not help.
    let mut sigs = admin_sigs(lift.digest(), &["ivan"]);
    sigs.extend(admin_sigs(lift.digest(), &["alice"]));
    assert!(f.signer.apply_freeze(&lift, &sigs).is_err());
    f.signer
        .apply_freeze(&lift, &admin_sigs(lift.digest(), &["ivan", "judy"]))
        .unwrap();
    f.signer.sign(&mut q, &a, NOW, TIP).unwrap();
}

#[test]
fn policy_changes_tighten_at_once_and_loosen_after_their_delay() {
    let Some(mut f) = fixture("policy-governance") else {
        return;
    };
    let p = small(&f);
    let mut a = auth(&f, "r-g", &p);
    approve(&mut a, &["bob"], NOW);
    f.signer.check(&p, &a, NOW, TIP).unwrap();

    // Tightening (a lower fee cap) applies at once; the old request is bound to the old version.
    let tight_text = EXAMPLE
        .replacen("version = 1\n", "version = 2\n", 1)
        .replacen("max_fee_sat = 2_000_000", "max_fee_sat = 1_000_000", 1);
    let tight = Policy::from_toml(&tight_text).unwrap();
    let order = ChangeOrder {
        current: f.policy.hash(),
        proposed: tight.hash(),
        issued_at_ms: NOW,
    };
    // One admin is not the quorum.
    assert!(f
        .signer
        .activate(
            tight.clone(),
            &order,
            &admin_sigs(order.digest(), &["heidi"]),
            NOW
        )
        .is_err());
    let act = f
        .signer
        .activate(
            tight.clone(),
            &order,
            &admin_sigs(order.digest(), &["heidi", "ivan"]),
            NOW,
        )
        .unwrap();
    assert_eq!(act.activates_at_ms, NOW);
    let err = f.signer.check(&p, &a, NOW, TIP).unwrap_err();
    assert!(
        matches!(err, PolicySignerError::PolicyNotActive { .. }),
        "{err}"
    );

    // Loosening (a higher fee cap) waits 72 h and can be vetoed meanwhile.
    let loose_text = tight_text
        .replacen("version = 2\n", "version = 3\n", 1)
        .replacen("max_fee_sat = 1_000_000", "max_fee_sat = 3_000_000", 1);
    let loose = Policy::from_toml(&loose_text).unwrap();
    let order = ChangeOrder {
        current: tight.hash(),
        proposed: loose.hash(),
        issued_at_ms: NOW,
    };
    let sigs = admin_sigs(order.digest(), &["heidi", "judy"]);
    let act = f
        .signer
        .activate(loose.clone(), &order, &sigs, NOW)
        .unwrap();
    assert_eq!(act.activates_at_ms, NOW + 72 * HOUR);
    assert_eq!(f.signer.policy().hash(), tight.hash());
    assert!(matches!(
        f.signer.activate_due(NOW + HOUR),
        Err(PolicySignerError::NotYetActive { .. })
    ));
    assert!(f.signer.veto_pending().is_some());
    assert_eq!(f.signer.activate_due(NOW + 73 * HOUR).unwrap(), None);
    assert_eq!(f.signer.policy().hash(), tight.hash());

    // Proposed again and not vetoed: active once the delay has passed.
    f.signer
        .activate(loose.clone(), &order, &sigs, NOW)
        .unwrap();
    assert!(f.signer.activate_due(NOW + 72 * HOUR).unwrap().is_some());
    assert_eq!(f.signer.policy().hash(), loose.hash());
}

#[test]
fn refuses_a_vault_without_the_policy_key_and_a_reserve_proof() {
    let Some(mut f) = fixture("policy-misc") else {
        return;
    };
    let text = f.external.to_string();
    // The same vault shape, but with another key in the policy key's place.
    let other = Keypair::from_secret_key(
        &Secp256k1::new(),
        &SecretKey::from_slice(&[77; 32]).unwrap(),
    );
    let start = text.find("pk(").unwrap() + 3;
    let end = start + text[start..].find(')').unwrap();
    let replaced = format!(
        "{}{}{}",
        &text[..start],
        bitcoin::PublicKey::new(other.public_key()),
        &text[end..]
    );
    let replaced = replaced.split('#').next().unwrap().to_owned();
    let err = f
        .signer
        .add_vault("nokey", &replaced, &replaced.replace("/0/*", "/1/*"))
        .unwrap_err();
    assert!(matches!(err, PolicySignerError::KeyNotInVault(_)), "{err}");
    let err = f
        .signer
        .add_vault("bad", "wsh(pk(nonsense))", "x")
        .unwrap_err();
    assert!(matches!(err, PolicySignerError::Descriptor { .. }), "{err}");
    // A vault the officers can spend from without the policy key is refused, naming them.
    let p = f.external.to_string();
    let start = p.find("pk(").unwrap() + 3;
    let policy_key = &p[start..start + p[start..].find(')').unwrap()];
    let officer = |chain: u32| format!("{}/{chain}/*", f.officers[0].descriptor_key());
    let officer2 = |chain: u32| format!("{}/{chain}/*", f.officers[1].descriptor_key());
    let solo = |chain: u32| {
        format!(
            "wsh(sortedmulti(2,{policy_key},{},{}))",
            officer(chain),
            officer2(chain)
        )
    };
    let err = f.signer.add_vault("solo", &solo(0), &solo(1)).unwrap_err();
    assert!(
        matches!(err, PolicySignerError::PolicyKeyBypass { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("can spend without the policy key"), "{msg}");
    assert!(msg.contains(&f.officers[0].descriptor_key()), "{msg}");
    // With every key required, the same shape is accepted.
    let all = |chain: u32| {
        format!(
            "wsh(sortedmulti(3,{policy_key},{},{}))",
            officer(chain),
            officer2(chain)
        )
    };
    f.signer.add_vault("all", &all(0), &all(1)).unwrap();

    // A PSBT carrying a proof-of-reserves commitment is not signed as a spend.
    let mut p = small(&f);
    let mut a = auth(&f, "r-por", &p);
    approve(&mut a, &["bob"], NOW);
    p.inputs[0].unknown.insert(
        bitcoin::psbt::raw::Key {
            type_value: 0x09,
            key: Vec::new(),
        },
        b"message".to_vec(),
    );
    let err = f.signer.sign(&mut p, &a, NOW, TIP).unwrap_err();
    assert!(matches!(err, PolicySignerError::NotASpend(_)), "{err}");
}

/// A BIP-127 proof PSBT over the same two vault coins `psbt` spends, for `message`.
fn proof_psbt(f: &Fixture, message: &str) -> Psbt {
    use policies::proof::{
        commitment_outpoint, commitment_prevout, proof_output_script, PSBT_IN_POR_COMMITMENT,
    };
    let spend = small(f);
    let msg = message.as_bytes();
    let mut input = vec![TxIn {
        previous_output: commitment_outpoint(msg),
        script_sig: ScriptBuf::new(),
        sequence: Sequence::MAX,
        witness: Witness::new(),
    }];
    input.extend(spend.unsigned_tx.input.iter().map(|i| TxIn {
        sequence: Sequence::MAX,
        ..i.clone()
    }));
    let total: Amount = spend
        .inputs
        .iter()
        .map(|i| i.witness_utxo.as_ref().unwrap().value)
        .sum();
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input,
        output: vec![TxOut {
            value: total,
            script_pubkey: proof_output_script(msg),
        }],
    };
    let mut p = Psbt::from_unsigned_tx(tx).unwrap();
    p.inputs[0].unknown.insert(
        bitcoin::psbt::raw::Key {
            type_value: PSBT_IN_POR_COMMITMENT,
            key: Vec::new(),
        },
        msg.to_vec(),
    );
    p.inputs[0].witness_utxo = Some(commitment_prevout());
    for (i, src) in spend.inputs.iter().enumerate() {
        p.inputs[i + 1] = src.clone();
    }
    ProofTerms {
        request_id: "por-1".to_owned(),
        expires_at_ms: NOW + HOUR,
    }
    .write_to(&mut p)
    .unwrap();
    p
}

/// The proof subject of `p` under the fixture's policy, re-derived from the PSBT.
fn proof_subject(f: &Fixture, p: &Psbt) -> ProofSubject {
    ProofSubject::from_bip127_psbt(p, f.policy.hash()).unwrap()
}

/// Approvals of `subject` by `people`.
fn proof_approvals(subject: &ProofSubject, people: &[&str]) -> Vec<Approval> {
    people
        .iter()
        .map(|p| subject.sign(p, &secret_of(p)))
        .collect()
}

const PROOF_MESSAGE: &str = "strategic-reserve proof of reserves v1\nnetwork: regtest\nheight: 1";

fn no_signatures(p: &Psbt) -> bool {
    p.inputs.iter().all(|i| i.partial_sigs.is_empty())
}

#[test]
fn signs_a_well_formed_proof_and_refuses_one_that_could_be_broadcast() {
    use policies::proof::{commitment_outpoint, ProofError};
    let Some(mut f) = fixture("policy-proof") else {
        return;
    };
    let good = proof_psbt(&f, PROOF_MESSAGE);
    assert_eq!(
        f.signer.check_proof(&good).unwrap(),
        Amount::from_sat(300 * BTC)
    );

    // Each way a "proof" could be broadcast (or lifted into a spend) is refused, naming the
    // reason, and the PSBT stays unsigned.
    let quorum = proof_approvals(&proof_subject(&f, &good), &["alice", "bob", "carol"]);
    let refuse = |f: &mut Fixture, mut p: Psbt| -> PolicySignerError {
        let err = f
            .signer
            .sign_proof(&mut p, "por-1", &quorum, NOW)
            .unwrap_err();
        assert!(no_signatures(&p), "{err}");
        err
    };
    let not_a_proof = |e: &PolicySignerError| match e {
        PolicySignerError::NotAProof(p) => p.clone(),
        other => panic!("expected a shape refusal, got {other}"),
    };

    // A real outpoint in position 0: a vault coin instead of the commitment.
    let mut p = good.clone();
    p.unsigned_tx.input[0].previous_output = p.unsigned_tx.input[1].previous_output;
    let e = refuse(&mut f, p);
    assert!(
        matches!(not_a_proof(&e), ProofError::NotACommitment { .. }),
        "{e}"
    );
    // A second output.
    let mut p = good.clone();
    p.unsigned_tx.output[0].value -= Amount::from_sat(10_000);
    p.unsigned_tx.output.push(TxOut {
        value: Amount::from_sat(10_000),
        script_pubkey: elsewhere(),
    });
    p.outputs.push(Default::default());
    let e = refuse(&mut f, p);
    assert_eq!(not_a_proof(&e), ProofError::OutputCount(2), "{e}");
    // A fee (the output pays less than the inputs).
    let mut p = good.clone();
    p.unsigned_tx.output[0].value -= Amount::from_sat(1_000);
    let e = refuse(&mut f, p);
    assert!(matches!(not_a_proof(&e), ProofError::Fee { .. }), "{e}");
    assert!(e.to_string().contains("a proof pays no fee"), "{e}");
    // A spendable output.
    let mut p = good.clone();
    p.unsigned_tx.output[0].script_pubkey = elsewhere();
    let e = refuse(&mut f, p);
    assert_eq!(not_a_proof(&e), ProofError::SpendableOutput, "{e}");
    // An unspendable output other than OP_RETURN <commitment>: another message's commitment,
    // or a damaged push (found by the damaged-proof property test).
    for script in [
        policies::proof::proof_output_script(b"another message"),
        ScriptBuf::from_bytes(vec![0x6a, 0x00, 0xf6]),
    ] {
        let mut p = good.clone();
        p.unsigned_tx.output[0].script_pubkey = script;
        let e = refuse(&mut f, p);
        assert_eq!(not_a_proof(&e), ProofError::OutputScript, "{e}");
    }
    // A commitment that does not match the message in the PSBT.
    let mut p = good.clone();
    let other = format!("{PROOF_MESSAGE}0");
    for v in p.inputs[0].unknown.values_mut() {
        *v = other.clone().into_bytes();
    }
    let e = refuse(&mut f, p);
    match not_a_proof(&e) {
        ProofError::NotACommitment { found, expected } => {
            assert_eq!(found, commitment_outpoint(PROOF_MESSAGE.as_bytes()));
            assert_eq!(expected, commitment_outpoint(other.as_bytes()));
        }
        other => panic!("{other}"),
    }
    // A second commitment field.
    let mut p = good.clone();
    p.inputs[0].unknown.insert(
        bitcoin::psbt::raw::Key {
            type_value: 0x09,
            key: vec![1],
        },
        b"another".to_vec(),
    );
    let e = refuse(&mut f, p);
    assert_eq!(not_a_proof(&e), ProofError::CommitmentFieldMismatch, "{e}");
    // A sighash type other than ALL.
    let mut p = good.clone();
    p.inputs[1].sighash_type = Some(bitcoin::psbt::PsbtSighashType::from(
        bitcoin::EcdsaSighashType::AllPlusAnyoneCanPay,
    ));
    let e = refuse(&mut f, p);
    assert!(
        matches!(not_a_proof(&e), ProofError::SighashNotAll { input: 1, .. }),
        "{e}"
    );
    // A message for another network.
    let p = proof_psbt(&f, &PROOF_MESSAGE.replace("regtest", "bitcoin"));
    let e = refuse(&mut f, p);
    assert!(matches!(not_a_proof(&e), ProofError::Message(_)), "{e}");
    // A spend is not a proof.
    let spend = small(&f);
    let e = refuse(&mut f, spend);
    assert_eq!(not_a_proof(&e), ProofError::MissingCommitmentField, "{e}");
    // An input outside the vaults the key cosigns for.
    let mut p = good.clone();
    p.inputs[2].bip32_derivation.clear();
    let e = refuse(&mut f, p);
    assert!(
        matches!(e, PolicySignerError::Input { input: 2, .. }),
        "{e}"
    );

    // The well-formed proof is signed (both real inputs), and the officers' signatures plus the
    // policy key's satisfy the vault's script: miniscript finalizes every real input and its
    // interpreter accepts them with all spent outputs (the commitment's included).
    let mut p = good.clone();
    let sig = f.signer.sign_proof(&mut p, "por-1", &quorum, NOW).unwrap();
    assert_eq!(sig.inputs, vec![1, 2]);
    assert_eq!(sig.counted, vec!["alice", "bob", "carol"]);
    assert_eq!(sig.subject, proof_subject(&f, &good).digest());
    assert_eq!(sig.amount, Amount::from_sat(300 * BTC));
    assert_eq!(sig.txid, good.unsigned_tx.compute_txid());
    assert_eq!(
        sig.commitment,
        hex::encode(policies::proof::commitment_hash(PROOF_MESSAGE.as_bytes()))
    );
    for o in &f.officers[..2] {
        assert_eq!(o.sign_psbt(&mut p).unwrap().inputs(), vec![1, 2]);
    }
    let secp = Secp256k1::verification_only();
    for i in 1..3 {
        p.finalize_inp_mut(&secp, i).unwrap();
    }
    let tx = p.clone().extract_tx_unchecked_fee_rate();
    let prevouts: Vec<TxOut> = p
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    for i in 1..3 {
        let interp = miniscript::Interpreter::from_txdata(
            &prevouts[i].script_pubkey,
            &tx.input[i].script_sig,
            &tx.input[i].witness,
            tx.input[i].sequence,
            tx.lock_time,
        )
        .unwrap();
        let all = bitcoin::sighash::Prevouts::All(&prevouts);
        let steps: Vec<_> = interp.iter(&secp, &tx, i, &all).collect();
        assert!(steps.iter().all(Result::is_ok), "input {i}: {steps:?}");
    }
}

#[test]
fn a_proof_needs_the_proof_quorum_of_approvals_for_exactly_this_subject() {
    use policies::proof::outpoints_digest;
    let Some(mut f) = fixture("policy-proof-quorum") else {
        return;
    };
    let good = proof_psbt(&f, PROOF_MESSAGE);
    let subject = proof_subject(&f, &good);
    assert_eq!(subject.request_id, "por-1");
    assert_eq!(subject.amount, Amount::from_sat(300 * BTC));

    // Refused with `approvals`, the PSBT untouched; returns the error.
    let refuse = |f: &mut Fixture, approvals: &[Approval], now: i64| -> PolicySignerError {
        let mut p = good.clone();
        let err = f
            .signer
            .sign_proof(&mut p, "por-1", approvals, now)
            .unwrap_err();
        assert_eq!(p, good, "{err}");
        err
    };
    let missing = |e: &PolicySignerError| match e {
        PolicySignerError::ProofApprovalsMissing {
            have, need, group, ..
        } => (*have, *need, group.clone()),
        other => panic!("expected missing approvals, got {other}"),
    };

    // No approvals at all: the reserve-proof rule is not met.
    let e = refuse(&mut f, &[], NOW);
    assert_eq!(missing(&e), (0, 3, "officers".to_owned()));
    assert!(
        e.to_string()
            .contains("0 of 3 approvals from group officers"),
        "{e}"
    );
    // Too few.
    let two = proof_approvals(&subject, &["alice", "bob"]);
    let e = refuse(&mut f, &two, NOW);
    assert!(
        e.to_string()
            .contains("2 of 3 approvals from group officers"),
        "{e}"
    );
    // The same officer twice counts once.
    let mut dup = two.clone();
    dup.push(subject.sign("bob", &secret_of("bob")));
    let e = refuse(&mut f, &dup, NOW);
    assert_eq!(missing(&e).0, 2, "{e}");
    assert!(e.to_string().contains("bob: a repeated approval"), "{e}");
    // A person of the policy outside the proof_quorum group (the CFO) does not count.
    let mut cfo = two.clone();
    cfo.push(subject.sign("frank", &secret_of("frank")));
    let e = refuse(&mut f, &cfo, NOW);
    assert_eq!(missing(&e).0, 2, "{e}");
    assert!(
        e.to_string()
            .contains("frank: not a member of group officers"),
        "{e}"
    );
    // Approvals of another proof request, of other UTXOs, of another message do not count.
    let mut other_request = subject.clone();
    other_request.request_id = "por-2".to_owned();
    let mut other_utxos = subject.clone();
    other_utxos.outpoints = outpoints_digest([good.unsigned_tx.input[1].previous_output]).unwrap();
    let mut other_message = subject.clone();
    other_message.commitment = policies::proof::commitment_hash(b"another message");
    for foreign in [&other_request, &other_utxos, &other_message] {
        let mut approvals = two.clone();
        approvals.push(foreign.sign("carol", &secret_of("carol")));
        let e = refuse(&mut f, &approvals, NOW);
        assert_eq!(missing(&e).0, 2, "{e}");
        assert!(e.to_string().contains("carol:"), "{e}");
    }
    // A forged signature does not count.
    let mut forged = proof_approvals(&subject, &["alice", "bob", "carol"]);
    forged[2].signature[0] ^= 1;
    let e = refuse(&mut f, &forged, NOW);
    assert!(e.to_string().contains("carol: bad signature"), "{e}");
    // Expired: the terms in the PSBT say until NOW + 1 h.
    let three = proof_approvals(&subject, &["alice", "bob", "carol"]);
    let e = refuse(&mut f, &three, NOW + HOUR);
    assert!(matches!(e, PolicySignerError::Expired(_)), "{e}");
    // The PSBT names another request than the one asked for.
    let mut p = good.clone();
    let e = f
        .signer
        .sign_proof(&mut p, "por-9", &three, NOW)
        .unwrap_err();
    assert!(
        matches!(e, PolicySignerError::ProofRequestMismatch { .. }),
        "{e}"
    );
    assert_eq!(p, good);
    // A PSBT without terms has no subject to approve.
    let mut p = good.clone();
    p.proprietary.clear();
    let e = f
        .signer
        .sign_proof(&mut p, "por-1", &three, NOW)
        .unwrap_err();
    assert!(matches!(e, PolicySignerError::ProofSubject(_)), "{e}");
    assert!(no_signatures(&p));
    // Terms changed in the PSBT (a later expiry) void the approvals of the original subject.
    let mut p = good.clone();
    ProofTerms {
        request_id: "por-1".to_owned(),
        expires_at_ms: NOW + 2 * HOUR,
    }
    .write_to(&mut p)
    .unwrap();
    let e = f
        .signer
        .sign_proof(&mut p, "por-1", &three, NOW)
        .unwrap_err();
    assert_eq!(missing(&e).0, 0, "{e}");
    assert!(no_signatures(&p));

    // check_proof_approvals (the BIP-322 form's entry point) agrees, and checks the subject's
    // network and policy against the signer's own.
    f.signer
        .check_proof_approvals(&subject, &three, NOW)
        .unwrap();
    assert!(f.signer.check_proof_approvals(&subject, &two, NOW).is_err());
    let mut mainnet = subject.clone();
    mainnet.network = Network::Bitcoin;
    let e = f
        .signer
        .check_proof_approvals(
            &mainnet,
            &proof_approvals(&mainnet, &["alice", "bob", "carol"]),
            NOW,
        )
        .unwrap_err();
    assert!(matches!(e, PolicySignerError::NotAProof(_)), "{e}");
    let mut old_policy = subject.clone();
    old_policy.policy = policies::PolicyHash([5; 32]);
    let e = f
        .signer
        .check_proof_approvals(
            &old_policy,
            &proof_approvals(&old_policy, &["alice", "bob", "carol"]),
            NOW,
        )
        .unwrap_err();
    assert!(
        matches!(e, PolicySignerError::PolicyNotActive { .. }),
        "{e}"
    );

    // Three distinct officers: signed, even while the reserve is frozen (auditing goes on).
    let freeze = FreezeOrder {
        action: FreezeAction::Freeze,
        policy: f.policy.hash(),
        seq: 0,
        issued_at_ms: NOW,
        reason: "incident 8".to_owned(),
    };
    f.signer
        .apply_freeze(&freeze, &admin_sigs(freeze.digest(), &["heidi"]))
        .unwrap();
    let mut p = good.clone();
    let mut with_noise = three.clone();
    with_noise.push(subject.sign("frank", &secret_of("frank")));
    let sig = f
        .signer
        .sign_proof(&mut p, "por-1", &with_noise, NOW)
        .unwrap();
    assert_eq!(sig.counted, vec!["alice", "bob", "carol"]);
    assert_eq!(sig.inputs, vec![1, 2]);
    assert!(!no_signatures(&p));
}

/// The challenge of the BIP-322 form: the vault's first receive address.
fn challenge(f: &Fixture) -> ScriptBuf {
    f.external.at_derivation_index(0).unwrap().script_pubkey()
}

/// A BIP-322 proof-of-funds `to_sign` PSBT over the same two vault coins `psbt` spends, for
/// `message` and the challenge `challenge_script` (input 0 described by the external
/// descriptor at index 0 when the challenge is the vault's).
fn to_sign_psbt(f: &Fixture, message: &str, challenge_script: &ScriptBuf) -> Psbt {
    use policies::proof_of_funds::{set_psbt_message, to_sign, to_spend};
    let spend = small(f);
    let msg = message.as_bytes();
    let to_spend_tx = to_spend(msg, challenge_script);
    let utxos: Vec<OutPoint> = spend
        .unsigned_tx
        .input
        .iter()
        .map(|i| i.previous_output)
        .collect();
    let tx = to_sign(to_spend_tx.compute_txid(), &utxos);
    let mut p = Psbt::from_unsigned_tx(tx).unwrap();
    set_psbt_message(&mut p, msg);
    ProofTerms {
        request_id: "por-1".to_owned(),
        expires_at_ms: NOW + HOUR,
    }
    .write_to(&mut p)
    .unwrap();
    p.inputs[0].witness_utxo = Some(to_spend_tx.output[0].clone());
    p.inputs[0].non_witness_utxo = Some(to_spend_tx.clone());
    p.inputs[0].sighash_type = Some(bitcoin::psbt::PsbtSighashType::from(
        bitcoin::EcdsaSighashType::All,
    ));
    if *challenge_script == challenge(f) {
        p.update_input_with_descriptor(0, &f.external.at_derivation_index(0).unwrap())
            .unwrap();
    }
    for (i, src) in spend.inputs.iter().enumerate() {
        p.inputs[i + 1] = src.clone();
    }
    p
}

#[test]
fn signs_a_well_formed_bip322_proof_of_funds_and_refuses_every_other_shape() {
    use policies::proof::ProofError;
    use policies::proof_of_funds::{to_spend_outpoint, Bip322Error};
    let Some(mut f) = fixture("policy-bip322") else {
        return;
    };
    let ch = challenge(&f);
    let good = to_sign_psbt(&f, PROOF_MESSAGE, &ch);
    // One subject for both forms: the to_sign PSBT gives the BIP-127 proof's subject, so the
    // officers' approvals of the proof cover both.
    let subject = f.signer.proof_of_funds_subject(&good, None, &ch).unwrap();
    assert_eq!(subject, proof_subject(&f, &proof_psbt(&f, PROOF_MESSAGE)));
    let quorum = proof_approvals(&subject, &["alice", "bob", "carol"]);
    assert_eq!(
        f.signer.check_proof_of_funds(&good, None, &ch).unwrap(),
        Amount::from_sat(300 * BTC)
    );
    assert_eq!(
        f.signer
            .check_proof_of_funds(&good, Some(PROOF_MESSAGE.as_bytes()), &ch)
            .unwrap(),
        Amount::from_sat(300 * BTC)
    );

    let refuse = |f: &mut Fixture, mut p: Psbt, message: Option<&[u8]>| -> PolicySignerError {
        let before = p.clone();
        let err = f
            .signer
            .sign_proof_of_funds(&mut p, message, &ch, "por-1", &quorum, NOW)
            .unwrap_err();
        assert_eq!(p, before, "the psbt changed on a refusal: {err}");
        err
    };
    let shape = |e: &PolicySignerError| match e {
        PolicySignerError::NotAProofOfFunds(b) => b.clone(),
        other => panic!("expected a bip-322 shape refusal, got {other}"),
    };

    // A real outpoint in position 0 (a vault coin instead of to_spend:0).
    let mut p = good.clone();
    p.unsigned_tx.input[0].previous_output = OutPoint::new(Txid::from_byte_array([5; 32]), 0);
    let e = refuse(&mut f, p, None);
    assert!(matches!(shape(&e), Bip322Error::NotToSpend { .. }), "{e}");
    // Input 0 with a sequence (a proof "valid later").
    let mut p = good.clone();
    p.unsigned_tx.input[0].sequence = Sequence::MAX;
    let e = refuse(&mut f, p, None);
    assert_eq!(shape(&e), Bip322Error::Sequence(0xffff_ffff), "{e}");
    // A lock time, and a version other than 0 or 2.
    let mut p = good.clone();
    p.unsigned_tx.lock_time = LockTime::from_consensus(500);
    let e = refuse(&mut f, p, None);
    assert_eq!(shape(&e), Bip322Error::LockTime(500), "{e}");
    let mut p = good.clone();
    p.unsigned_tx.version = Version::ONE;
    let e = refuse(&mut f, p, None);
    assert_eq!(shape(&e), Bip322Error::Version(1), "{e}");
    // A second output, and an output that pays something or is not OP_RETURN alone.
    let mut p = good.clone();
    p.unsigned_tx.output.push(TxOut {
        value: Amount::from_sat(10_000),
        script_pubkey: elsewhere(),
    });
    p.outputs.push(Default::default());
    let e = refuse(&mut f, p, None);
    assert_eq!(shape(&e), Bip322Error::OutputCount(2), "{e}");
    let mut p = good.clone();
    p.unsigned_tx.output[0].value = Amount::from_sat(1);
    let e = refuse(&mut f, p, None);
    assert!(matches!(shape(&e), Bip322Error::Output(_)), "{e}");
    let mut p = good.clone();
    p.unsigned_tx.output[0].script_pubkey = elsewhere();
    let e = refuse(&mut f, p, None);
    assert!(matches!(shape(&e), Bip322Error::Output(_)), "{e}");
    // Another input spending to_spend too, and an outpoint twice.
    let mut p = good.clone();
    p.unsigned_tx.input[2].previous_output =
        OutPoint::new(p.unsigned_tx.input[0].previous_output.txid, 1);
    let e = refuse(&mut f, p, None);
    assert_eq!(shape(&e), Bip322Error::ToSpendReused(2), "{e}");
    let mut p = good.clone();
    p.unsigned_tx.input[2].previous_output = p.unsigned_tx.input[1].previous_output;
    let e = refuse(&mut f, p, None);
    assert!(matches!(shape(&e), Bip322Error::DuplicateInput(_)), "{e}");
    // Input 0's spent output is not to_spend's.
    let mut p = good.clone();
    p.inputs[0].witness_utxo.as_mut().unwrap().value = Amount::from_sat(1);
    let e = refuse(&mut f, p, None);
    assert!(
        matches!(shape(&e), Bip322Error::PsbtInput { input: 0, .. }),
        "{e}"
    );
    // A sighash type other than ALL.
    let mut p = good.clone();
    p.inputs[1].sighash_type = Some(bitcoin::psbt::PsbtSighashType::from(
        bitcoin::EcdsaSighashType::AllPlusAnyoneCanPay,
    ));
    let e = refuse(&mut f, p, None);
    assert!(
        matches!(shape(&e), Bip322Error::SighashNotAll { input: 1, .. }),
        "{e}"
    );
    // A message other than the one to_spend commits to (given, or carried by the PSBT).
    let other = format!("{PROOF_MESSAGE}0");
    let mut p = good.clone();
    policies::proof_of_funds::set_psbt_message(&mut p, other.as_bytes());
    let e = refuse(&mut f, p, None);
    match shape(&e) {
        Bip322Error::NotToSpend { found, expected } => {
            assert_eq!(found, to_spend_outpoint(PROOF_MESSAGE.as_bytes(), &ch));
            assert_eq!(expected, to_spend_outpoint(other.as_bytes(), &ch));
        }
        other => panic!("{other}"),
    }
    let e = refuse(&mut f, good.clone(), Some(other.as_bytes()));
    assert!(
        matches!(e, PolicySignerError::NotAProof(ProofError::Message(_))),
        "{e}"
    );
    // No message at all.
    let mut p = good.clone();
    p.proprietary
        .retain(|k, _| k.prefix != policies::proof_of_funds::PSBT_PROPRIETARY_PREFIX);
    let e = refuse(&mut f, p, None);
    assert!(
        matches!(e, PolicySignerError::NotAProof(ProofError::Message(_))),
        "{e}"
    );
    // A message for another network.
    let mainnet = PROOF_MESSAGE.replace("regtest", "bitcoin");
    let p = to_sign_psbt(&f, &mainnet, &ch);
    let e = refuse(&mut f, p, None);
    assert!(
        matches!(e, PolicySignerError::NotAProof(ProofError::Message(_))),
        "{e}"
    );
    // An input outside the vaults the key cosigns for, and a challenge outside them.
    let mut p = good.clone();
    p.inputs[2].bip32_derivation.clear();
    let e = refuse(&mut f, p, None);
    assert!(
        matches!(e, PolicySignerError::Input { input: 2, .. }),
        "{e}"
    );
    let stranger = elsewhere();
    let p = to_sign_psbt(&f, PROOF_MESSAGE, &stranger);
    let mut q = p.clone();
    let e = f
        .signer
        .sign_proof_of_funds(&mut q, None, &stranger, "por-1", &quorum, NOW)
        .unwrap_err();
    assert_eq!(q, p);
    assert!(
        matches!(e, PolicySignerError::Input { input: 0, .. }),
        "{e}"
    );
    // The spend path refuses a to_sign PSBT, and the BIP-127 path does too.
    let mut a = auth(&f, "spend-bip322", &good);
    approve(&mut a, &["alice", "bob"], NOW - HOUR);
    let mut p = good.clone();
    let e = f.signer.sign(&mut p, &a, NOW, TIP).unwrap_err();
    assert!(matches!(e, PolicySignerError::NotASpend(_)), "{e}");
    let mut p = good.clone();
    let e = f
        .signer
        .sign_proof(&mut p, "por-1", &quorum, NOW)
        .unwrap_err();
    assert!(
        matches!(
            e,
            PolicySignerError::NotAProof(ProofError::MissingCommitmentField)
        ),
        "{e}"
    );

    // The reserve-proof rule exactly as for the BIP-127 form: too few approvals, another
    // request, no terms.
    let two = proof_approvals(&subject, &["alice", "bob"]);
    let mut p = good.clone();
    let e = f
        .signer
        .sign_proof_of_funds(&mut p, None, &ch, "por-1", &two, NOW)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("2 of 3 approvals from group officers"),
        "{e}"
    );
    assert_eq!(p, good);
    let e = f
        .signer
        .sign_proof_of_funds(&mut p, None, &ch, "por-9", &quorum, NOW)
        .unwrap_err();
    assert!(
        matches!(e, PolicySignerError::ProofRequestMismatch { .. }),
        "{e}"
    );
    let e = f
        .signer
        .sign_proof_of_funds(&mut p, None, &ch, "por-1", &quorum, NOW + HOUR)
        .unwrap_err();
    assert!(matches!(e, PolicySignerError::Expired(_)), "{e}");
    let mut q = good.clone();
    q.proprietary
        .retain(|k, _| k.prefix == policies::proof_of_funds::PSBT_PROPRIETARY_PREFIX);
    let e = f
        .signer
        .sign_proof_of_funds(&mut q, None, &ch, "por-1", &quorum, NOW)
        .unwrap_err();
    assert!(matches!(e, PolicySignerError::ProofSubject(_)), "{e}");
    assert_eq!(p, good);

    // The well-formed proof is signed on every input (the challenge's too); with two officers'
    // signatures every input finalizes and miniscript's interpreter accepts each against all
    // spent outputs (to_spend's output and the two coins).
    let mut p = good.clone();
    let sig = f
        .signer
        .sign_proof_of_funds(&mut p, None, &ch, "por-1", &quorum, NOW)
        .unwrap();
    assert_eq!(sig.counted, vec!["alice", "bob", "carol"]);
    assert_eq!(sig.subject, subject.digest());
    assert_eq!(sig.inputs, vec![0, 1, 2]);
    assert_eq!(sig.amount, Amount::from_sat(300 * BTC));
    assert_eq!(sig.txid, good.unsigned_tx.compute_txid());
    assert_eq!(
        sig.commitment,
        hex::encode(policies::proof::commitment_hash(PROOF_MESSAGE.as_bytes()))
    );
    assert!(p.inputs.iter().all(|i| i.partial_sigs.len() == 1));
    for o in &f.officers[..2] {
        assert_eq!(o.sign_psbt(&mut p).unwrap().inputs(), vec![0, 1, 2]);
    }
    let secp = Secp256k1::verification_only();
    for i in 0..3 {
        p.finalize_inp_mut(&secp, i).unwrap();
    }
    let tx = p.clone().extract_tx_unchecked_fee_rate();
    let prevouts: Vec<TxOut> = p
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    for i in 0..3 {
        let interp = miniscript::Interpreter::from_txdata(
            &prevouts[i].script_pubkey,
            &tx.input[i].script_sig,
            &tx.input[i].witness,
            tx.input[i].sequence,
            tx.lock_time,
        )
        .unwrap();
        let all = bitcoin::sighash::Prevouts::All(&prevouts);
        let steps: Vec<_> = interp.iter(&secp, &tx, i, &all).collect();
        assert!(steps.iter().all(Result::is_ok), "input {i}: {steps:?}");
    }
}

/// Damaged PSBTs (random bytes of an approved spend's serialization overwritten): parsing or
/// the policy check may fail, but nothing panics, and whenever the check passes the damaged
/// PSBT still spends exactly the approved coins (same amounts and scripts) in exactly the
/// approved transaction; where the policy key then signs, its signatures complete the
/// *original* PSBT into a transaction that verifies.
#[test]
fn a_damaged_psbt_is_refused_or_is_still_the_approved_transaction() {
    use proptest::prelude::*;
    let Some(mut f) = fixture("policy-fuzz") else {
        return;
    };
    let p = small(&f);
    let mut a = auth(&f, "r-fuzz", &p);
    approve(&mut a, &["bob"], NOW);
    f.signer.observe(&a, NOW + 1);
    f.signer.check(&p, &a, NOW + 2, TIP).unwrap();
    let bytes = p.serialize();
    let txid = p.unsigned_tx.compute_txid();
    let prevouts: Vec<_> = p.inputs.iter().map(|i| i.witness_utxo.clone()).collect();
    let f = std::cell::RefCell::new(f);
    let (passed, signed) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let parsed = for_each_damaged(&bytes, |edits, mut q| {
        let mut f = f.borrow_mut();
        if f.signer.check(&q, &a, NOW + 2, TIP).is_err() {
            return Ok(());
        }
        passed.set(passed.get() + 1);
        prop_assert_eq!(q.unsigned_tx.compute_txid(), txid, "edits {:?}", &edits);
        let now: Vec<_> = q.inputs.iter().map(|i| i.witness_utxo.clone()).collect();
        prop_assert_eq!(&now, &prevouts, "edits {:?}", &edits);
        // A few signatures (each counts against the velocity limit of the fixture).
        if signed.get() < fuzz_cases() / 512 && f.signer.sign(&mut q, &a, NOW + 2, TIP).is_ok() {
            signed.set(signed.get() + 1);
            let mut original = p.clone();
            for (o, s) in original.inputs.iter_mut().zip(&q.inputs) {
                o.partial_sigs = s.partial_sigs.clone();
            }
            for o in &f.officers[..2] {
                o.sign_psbt(&mut original).unwrap();
            }
            let secp = Secp256k1::verification_only();
            let done = original.finalize(&secp).map_err(|(_, e)| e);
            prop_assert!(done.is_ok(), "edits {:?}: {:?}", &edits, done.err());
        }
        Ok(())
    });
    assert!(
        passed.get() < parsed,
        "no damaged PSBT was refused ({} parsed)",
        parsed
    );
    eprintln!(
        "{} damaged PSBTs parsed, {} passed the check, {} signed",
        parsed,
        passed.get(),
        signed.get()
    );
}

/// The same for reserve proofs: whenever the policy key signs a damaged serialization of an
/// approved BIP-127 proof, it is still a proof of exactly the approved subject (same UTXOs,
/// message, amount, request and expiry), its first input is still the message's commitment
/// (which no transaction can spend) and its only output is still the unspendable proof output.
#[test]
fn a_damaged_proof_is_refused_or_is_still_the_approved_unspendable_proof() {
    use policies::proof::{commitment_outpoint, proof_output_script};
    use proptest::prelude::*;
    let Some(f) = fixture("policy-proof-fuzz") else {
        return;
    };
    let good = proof_psbt(&f, PROOF_MESSAGE);
    let subject = proof_subject(&f, &good);
    let quorum = proof_approvals(&subject, &["alice", "bob", "carol"]);
    let msg = PROOF_MESSAGE.as_bytes();
    let bytes = good.serialize();
    let f = std::cell::RefCell::new(f);
    f.borrow_mut()
        .signer
        .sign_proof(&mut good.clone(), "por-1", &quorum, NOW)
        .unwrap();
    let signed = std::cell::Cell::new(0u32);
    let parsed = for_each_damaged(&bytes, |edits, mut q| {
        let mut f = f.borrow_mut();
        if f.signer.sign_proof(&mut q, "por-1", &quorum, NOW).is_err() {
            prop_assert!(no_signatures(&q), "a refused proof was changed");
            return Ok(());
        }
        signed.set(signed.get() + 1);
        let now = ProofSubject::from_bip127_psbt(&q, f.policy.hash());
        prop_assert_eq!(now.as_ref().ok(), Some(&subject), "edits {:?}", &edits);
        let tx = &q.unsigned_tx;
        prop_assert_eq!(tx.input[0].previous_output, commitment_outpoint(msg));
        prop_assert_eq!(tx.output.len(), 1);
        prop_assert_eq!(&tx.output[0].script_pubkey, &proof_output_script(msg));
        Ok(())
    });
    assert!(
        signed.get() < parsed,
        "every damaged proof was signed ({} parsed)",
        parsed
    );
    eprintln!("{} damaged proofs parsed, {} signed", parsed, signed.get());
}

/// And for the BIP-322 form: a damaged approved `to_sign` that the policy key still signs is
/// the same subject, its input 0 still spends the virtual `to_spend` of the message and the
/// vault's challenge (no such output exists on chain), and its only output is still the empty
/// zero-value `OP_RETURN`.
#[test]
fn a_damaged_bip322_proof_is_refused_or_is_still_the_approved_unspendable_proof() {
    use policies::proof_of_funds::{to_sign_output_script, to_spend};
    use proptest::prelude::*;
    let Some(f) = fixture("policy-bip322-fuzz") else {
        return;
    };
    let ch = challenge(&f);
    let good = to_sign_psbt(&f, PROOF_MESSAGE, &ch);
    let subject = f.signer.proof_of_funds_subject(&good, None, &ch).unwrap();
    let quorum = proof_approvals(&subject, &["alice", "bob", "carol"]);
    let virtual_input = OutPoint::new(to_spend(PROOF_MESSAGE.as_bytes(), &ch).compute_txid(), 0);
    let bytes = good.serialize();
    let f = std::cell::RefCell::new(f);
    let sign = |f: &mut Fixture, p: &mut Psbt| {
        f.signer
            .sign_proof_of_funds(p, None, &ch, "por-1", &quorum, NOW)
    };
    sign(&mut f.borrow_mut(), &mut good.clone()).unwrap();
    let signed = std::cell::Cell::new(0u32);
    let parsed = for_each_damaged(&bytes, |edits, mut q| {
        let mut f = f.borrow_mut();
        if sign(&mut f, &mut q).is_err() {
            prop_assert!(no_signatures(&q), "a refused proof was changed");
            return Ok(());
        }
        signed.set(signed.get() + 1);
        let now = f.signer.proof_of_funds_subject(&q, None, &ch);
        prop_assert_eq!(now.as_ref().ok(), Some(&subject), "edits {:?}", &edits);
        let tx = &q.unsigned_tx;
        prop_assert_eq!(tx.input[0].previous_output, virtual_input);
        prop_assert_eq!(tx.output.len(), 1);
        prop_assert_eq!(&tx.output[0].script_pubkey, &to_sign_output_script());
        prop_assert_eq!(tx.output[0].value, Amount::ZERO);
        Ok(())
    });
    assert!(
        signed.get() < parsed,
        "every damaged proof was signed ({} parsed)",
        parsed
    );
    eprintln!(
        "{} damaged to_sign PSBTs parsed, {} signed",
        parsed,
        signed.get()
    );
}

/// Runs `check` on `fuzz_cases()` copies of `bytes` with 1 to 3 bytes overwritten at random
/// that still parse as a PSBT (`check` gets the edits and the damaged PSBT); fails when a
/// check fails or when too few damaged copies parse for the test to mean much. Returns how
/// many parsed.
fn for_each_damaged(
    bytes: &[u8],
    check: impl Fn(&[(usize, u8)], Psbt) -> Result<(), proptest::test_runner::TestCaseError>,
) -> u32 {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let parsed = std::cell::Cell::new(0u32);
    let damage = proptest::collection::vec((0..bytes.len(), any::<u8>()), 1..4);
    let mut runner = TestRunner::new(Config {
        cases: fuzz_cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&damage, |edits| {
            let mut b = bytes.to_vec();
            for (at, v) in &edits {
                b[*at] = *v;
            }
            let Ok(q) = Psbt::deserialize(&b) else {
                return Ok(());
            };
            parsed.set(parsed.get() + 1);
            check(&edits, q)
        })
        .unwrap();
    assert!(
        parsed.get() > 50,
        "only {} damaged psbts parsed",
        parsed.get()
    );
    parsed.get()
}

/// Cases per damaged-input property test: 2,048, or `TREASURY_FUZZ_CASES` for a longer hunt.
fn fuzz_cases() -> u32 {
    std::env::var("TREASURY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048)
}

/// Found by the damaged-PSBT property test: a PSBT whose input map no longer names the policy
/// key (its `bip32_derivation` entry dropped or turned into an unknown field) used to be
/// "signed" with that input left unsigned. Now the signer refuses, naming the input, and the
/// PSBT is unchanged; dropping any other key's entry changes nothing.
#[test]
fn a_psbt_that_hides_the_policy_key_on_one_input_is_refused_whole() {
    let Some(mut f) = fixture("policy-hidden-key") else {
        return;
    };
    let p = small(&f);
    let mut a = auth(&f, "r-hidden", &p);
    approve(&mut a, &["bob"], NOW);
    f.signer.observe(&a, NOW + 1);
    let keys: Vec<_> = p.inputs[0].bip32_derivation.keys().copied().collect();
    let mut refused = 0;
    for k in keys {
        let mut q = p.clone();
        q.inputs[0].bip32_derivation.remove(&k);
        let before = q.clone();
        match f.signer.sign(&mut q, &a, NOW + 2, TIP) {
            Ok(sig) => assert_eq!(sig.inputs, vec![0, 1], "dropping {k}"),
            Err(e) => {
                assert!(
                    matches!(e, PolicySignerError::Unsigned(ref v) if v == &vec![0]),
                    "dropping {k}: {e}"
                );
                assert!(e.to_string().contains("cannot sign inputs [0]"), "{e}");
                assert_eq!(q, before, "a refused psbt was changed");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 1, "exactly the policy key's entry matters");
}
