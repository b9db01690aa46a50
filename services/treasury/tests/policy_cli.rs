//! `treasury policy check|hash|simulate` through the binary, on the example policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::Command;

use bdk_wallet::bitcoin::hashes::Hash;
use bdk_wallet::bitcoin::secp256k1::SecretKey;
use bdk_wallet::bitcoin::{Amount, OutPoint, ScriptBuf, Txid};
use policies::{ApprovalSubject, Policy, Verdict};
use serde_json::{json, Value};

const EXAMPLE: &str = include_str!("../../../policies/examples/strategic-reserve.toml");
const NOW: i64 = 1_800_000_000_000;

fn treasury(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_treasury"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_and_hash_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(&f, EXAMPLE).unwrap();
    let path = f.to_str().unwrap();
    let (ok, out, err) = treasury(&["policy", "check", path]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("ok: policy \"strategic-reserve\" version 1"),
        "{out}"
    );
    let (ok, hash, _) = treasury(&["policy", "hash", path]);
    assert!(ok);
    let want = Policy::from_toml(EXAMPLE).unwrap().hash().to_string();
    assert_eq!(hash.trim(), want);
    // a broken rule is named by its field
    let bad = EXAMPLE.replace(
        "require = [\"officers\", \"cfo\"]",
        "require = [\"officers\", \"cfo2\"]",
    );
    std::fs::write(&f, bad).unwrap();
    let (ok, _, err) = treasury(&["policy", "check", path]);
    assert!(!ok);
    assert!(err.contains("tiers[2]") && err.contains("cfo2"), "{err}");
}

fn secret(b: u8) -> SecretKey {
    SecretKey::from_slice(&[b; 32]).unwrap()
}

#[test]
fn simulate_says_what_is_missing_then_allows() {
    let policy = Policy::from_toml(EXAMPLE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pf = dir.path().join("p.toml");
    std::fs::write(&pf, EXAMPLE).unwrap();
    let amount = Amount::from_sat(2_0000_0000); // medium tier: 2 of the 3 duty officers
    let txid = Txid::from_byte_array([7; 32]);
    let input = OutPoint::new(Txid::from_byte_array([1; 32]), 0);
    let script = ScriptBuf::from_bytes(vec![0x00, 0x14, 1, 2, 3]);
    let subject = ApprovalSubject {
        request_id: "r1".into(),
        vault: "main".into(),
        txid,
        inputs: vec![(input, Amount::from_sat(3_0000_0000))],
        outputs: vec![(script.clone(), amount)],
        fee: Amount::from_sat(50_000),
        policy: policy.hash(),
        decision: Verdict::Approve,
        expires_at_ms: NOW + 3_600_000,
        expires_at_height: Some(900_100),
    };
    let mut request = json!({
        "id": "r1", "vault": "main", "initiator": "dave",
        "amount_sat": amount.to_sat(),
        "destinations": ["bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"],
        "fee_sat": 50_000, "fee_rate_sat_vb": 20, "requested_fee_rate_sat_vb": 20,
        "created_ms": NOW - 60_000, "created_height": 899_999,
        "txid": txid.to_string(),
        "inputs": [{"outpoint": input.to_string(), "amount_sat": 3_0000_0000u64}],
        "outputs": [{"script_hex": script.to_hex_string(), "amount_sat": amount.to_sat()}],
        "expires_at_ms": NOW + 3_600_000, "expires_at_height": 900_100,
        "now_ms": NOW, "tip_height": 900_000,
    });
    let rf = dir.path().join("r.json");
    let run = |request: &Value| {
        std::fs::write(&rf, request.to_string()).unwrap();
        let (ok, out, err) = treasury(&[
            "policy",
            "simulate",
            "--policy",
            pf.to_str().unwrap(),
            "--request",
            rf.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let pending = run(&request);
    let text = pending.to_string();
    assert!(
        text.contains("pending") && text.contains("duty-officers"),
        "{text}"
    );
    // alice (1) and bob (2) are duty officers: their approvals of this exact subject allow it
    let approvals: Vec<Value> = [("alice", 1u8), ("bob", 2u8)]
        .iter()
        .map(|(p, b)| {
            json!({"approval": policies::sign(&subject, p, &secret(*b)), "received_ms": NOW - 1_000})
        })
        .collect();
    request["approvals"] = json!(approvals);
    let allowed = run(&request);
    assert!(allowed.to_string().contains("allow"), "{allowed}");
    // a frozen reserve denies
    request["frozen"] = json!(true);
    let denied = run(&request);
    assert!(denied.to_string().contains("frozen"), "{denied}");
    // an approval of another amount (the request was changed after approval) does not count
    request["frozen"] = json!(false);
    request["outputs"][0]["amount_sat"] = json!(amount.to_sat() + 1);
    let changed = run(&request);
    assert!(changed.to_string().contains("pending"), "{changed}");
}
