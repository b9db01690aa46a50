//! Shared fixtures: fixed keys, the example policy, requests and approvals.
#![allow(dead_code, unreachable_pub)]

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{Keypair, Secp256k1, SecretKey, XOnlyPublicKey};
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Txid};
use policies::approval::{sign, ApprovalSubject, Verdict};
use policies::evaluate::{ReceivedApproval, RequestKind, SpendRequestFacts};
use policies::Policy;

pub const EXAMPLE: &str = include_str!("../../examples/strategic-reserve.toml");

/// Persons of the example policy and the byte their fixed secret key repeats.
pub const PERSONS: &[(&str, u8)] = &[
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
    ("mallory", 11),
];

pub fn secret_of(person: &str) -> SecretKey {
    let b = PERSONS
        .iter()
        .find(|(p, _)| *p == person)
        .map(|(_, b)| *b)
        .unwrap();
    SecretKey::from_slice(&[b; 32]).unwrap()
}

pub fn xonly_of(person: &str) -> XOnlyPublicKey {
    Keypair::from_secret_key(&Secp256k1::new(), &secret_of(person))
        .x_only_public_key()
        .0
}

pub fn example() -> Policy {
    Policy::from_toml(EXAMPLE).unwrap()
}

pub const NOW: i64 = 1_800_000_000_000;
pub const TIP: u32 = 900_000;

pub const DEST: &str = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
pub const NOT_ALLOWLISTED: &str = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2";

pub fn subject(policy: &Policy, id: &str, amount: Amount) -> ApprovalSubject {
    ApprovalSubject {
        request_id: id.into(),
        vault: "main".into(),
        txid: Txid::from_byte_array([7; 32]),
        inputs: vec![
            (
                OutPoint::new(Txid::from_byte_array([1; 32]), 0),
                Amount::from_sat(amount.to_sat() + 1_000_000),
            ),
            (
                OutPoint::new(Txid::from_byte_array([2; 32]), 3),
                Amount::from_sat(50_000),
            ),
        ],
        outputs: vec![
            (ScriptBuf::from_bytes(vec![0x00, 0x14, 1, 2, 3]), amount),
            (
                ScriptBuf::from_bytes(vec![0x00, 0x20, 9, 9]),
                Amount::from_sat(1_000_000),
            ),
        ],
        fee: Amount::from_sat(50_000),
        policy: policy.hash(),
        decision: Verdict::Approve,
        expires_at_ms: NOW + 36 * 3_600_000,
        expires_at_height: Some(TIP + 100),
    }
}

pub fn request(policy: &Policy, id: &str, amount: Amount, initiator: &str) -> SpendRequestFacts {
    SpendRequestFacts {
        id: id.into(),
        vault: "main".into(),
        initiator: initiator.into(),
        amount,
        destinations: vec![DEST.into()],
        fee: Amount::from_sat(50_000),
        fee_rate: FeeRate::from_sat_per_vb(20).unwrap(),
        requested_fee_rate: Some(FeeRate::from_sat_per_vb(20).unwrap()),
        kind: RequestKind::Spend,
        created_ms: NOW - 60_000,
        created_height: TIP - 1,
        subject: subject(policy, id, amount),
    }
}

pub fn approve(req: &SpendRequestFacts, person: &str, at: i64) -> ReceivedApproval {
    ReceivedApproval {
        approval: sign(&req.subject, person, &secret_of(person)),
        received_ms: at,
    }
}

pub fn reject(req: &SpendRequestFacts, person: &str, at: i64) -> ReceivedApproval {
    ReceivedApproval {
        approval: sign(
            &req.subject.with_decision(Verdict::Reject),
            person,
            &secret_of(person),
        ),
        received_ms: at,
    }
}

/// `text` with `from` (which must occur) replaced by `to`.
pub fn mutate(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture text lacks {from:?}");
    text.replacen(from, to, 1)
}

/// The example with a higher version number (for governance tests).
pub fn next_version(text: &str) -> String {
    mutate(text, "version = 1\n", "version = 2\n")
}

/// Parses, panicking with the error message.
pub fn parse(text: &str) -> Policy {
    match Policy::from_toml(text) {
        Ok(p) => p,
        Err(e) => panic!("policy does not parse: {e}"),
    }
}

/// The error message of a policy that must not parse.
pub fn parse_err(text: &str) -> String {
    match Policy::from_toml(text) {
        Ok(_) => panic!("policy parsed but should not"),
        Err(e) => e.to_string(),
    }
}
