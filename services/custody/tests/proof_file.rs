//! The BIP-127 proof file: protobuf and JSON round trips, the wire format by hand, and every
//! malformed input refused without a panic (each truncation, trailing bytes, unknown fields,
//! duplicates, bad hashes, random bytes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bdk_wallet::bitcoin::consensus::encode::serialize;
use bdk_wallet::bitcoin::hashes::Hash;
use bdk_wallet::bitcoin::transaction::Version;
use bdk_wallet::bitcoin::{
    absolute, Amount, BlockHash, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Txid, Witness,
};
use custody::reserves::file::{
    network_from_magic, network_magic, FinalProof, OutputMeta, ProofFile, ProofFileError,
};
use custody::reserves::{commitment_outpoint, proof_output_script};
use proptest::prelude::*;

const MSG: &str = "strategic-reserve proof of reserves v1\nnetwork: regtest";

fn proof_tx(n: u8, vout0: u32) -> (Transaction, Vec<OutputMeta>) {
    let txin = |previous_output, w: Vec<Vec<u8>>| TxIn {
        previous_output,
        script_sig: ScriptBuf::new(),
        sequence: Sequence::MAX,
        witness: Witness::from_slice(&w),
    };
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![txin(commitment_outpoint(MSG.as_bytes()), vec![])],
        output: vec![TxOut {
            value: Amount::from_sat(1_000 * u64::from(n)),
            script_pubkey: proof_output_script(MSG.as_bytes()),
        }],
    };
    let mut metas = Vec::new();
    for i in 0..n {
        let outpoint = OutPoint {
            txid: Txid::from_byte_array([i.wrapping_add(1); 32]),
            vout: if i == 0 { vout0 } else { u32::from(i) * 300 },
        };
        tx.input
            .push(txin(outpoint, vec![vec![i; 72], vec![2; 33]]));
        metas.push(OutputMeta {
            outpoint,
            block_hash: BlockHash::from_byte_array([0x40 + i; 32]),
        });
    }
    (tx, metas)
}

fn sample() -> ProofFile {
    let (t1, m1) = proof_tx(3, 0);
    let (t2, m2) = proof_tx(1, 7);
    ProofFile::new(
        Network::Regtest,
        MSG,
        BlockHash::from_byte_array([9; 32]),
        vec![
            FinalProof::new(t1, m1).unwrap(),
            FinalProof::new(t2, m2).unwrap(),
        ],
    )
    .unwrap()
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn field_len(n: u64, b: &[u8]) -> Vec<u8> {
    let mut out = varint(n << 3 | 2);
    out.extend(varint(b.len() as u64));
    out.extend_from_slice(b);
    out
}

fn field_varint(n: u64, v: u64) -> Vec<u8> {
    let mut out = varint(n << 3);
    out.extend(varint(v));
    out
}

#[test]
fn network_magic_is_the_bips_number() {
    assert_eq!(network_magic(Network::Bitcoin), 0xD9B4_BEF9);
    assert_eq!(network_magic(Network::Testnet), 0x0709_110B);
    for n in [
        Network::Bitcoin,
        Network::Testnet,
        Network::Signet,
        Network::Regtest,
    ] {
        assert_eq!(network_from_magic(network_magic(n)), Some(n));
    }
    assert_eq!(network_from_magic(0x1234_5678), None);
}

#[test]
fn protobuf_round_trips_and_matches_a_hand_encoding() {
    let f = sample();
    let bytes = f.encode();
    assert_eq!(ProofFile::decode(&bytes).unwrap(), f);

    // The same file written field by field from the BIP's schema.
    let mut hand = field_varint(1, 1);
    hand.extend(field_varint(2, u64::from(network_magic(Network::Regtest))));
    hand.extend(field_len(3, MSG.as_bytes()));
    hand.extend(field_len(4, &[9; 32]));
    for p in f.final_proofs() {
        let mut fp = field_len(1, &serialize(p.proof_tx()));
        for m in p.output_metadata() {
            let mut om = field_len(1, m.outpoint.txid.as_byte_array());
            if m.outpoint.vout != 0 {
                om.extend(field_varint(2, u64::from(m.outpoint.vout)));
            }
            om.extend(field_len(3, m.block_hash.as_byte_array()));
            fp.extend(field_len(2, &om));
        }
        hand.extend(field_len(5, &fp));
    }
    assert_eq!(bytes, hand);
}

#[test]
fn fields_in_another_order_and_an_explicit_zero_vout_decode() {
    let f = sample();
    let p = &f.final_proofs()[0];
    let mut fp = Vec::new();
    for m in p.output_metadata() {
        let mut om = field_len(3, m.block_hash.as_byte_array());
        om.extend(field_varint(2, u64::from(m.outpoint.vout)));
        om.extend(field_len(1, m.outpoint.txid.as_byte_array()));
        fp.extend(field_len(2, &om));
    }
    fp.extend(field_len(1, &serialize(p.proof_tx())));
    let mut bytes = field_len(5, &fp);
    bytes.extend(field_len(4, &[9; 32]));
    bytes.extend(field_len(3, MSG.as_bytes()));
    bytes.extend(field_varint(2, u64::from(network_magic(Network::Regtest))));
    bytes.extend(field_varint(1, 1));
    let d = ProofFile::decode(&bytes).unwrap();
    assert_eq!(d.final_proofs(), &f.final_proofs()[..1]);
    assert_eq!(d.message(), MSG);
}

#[test]
fn json_round_trips_and_is_checked() {
    let f = sample();
    let text = f.to_json_string().unwrap();
    assert!(text.contains("\"network\": \"regtest\""));
    assert!(text.contains("\"network_magic\": \"0xdab5bffa\""), "{text}");
    assert_eq!(ProofFile::from_json_str(&text).unwrap(), f);

    let mut j = f.to_json();
    j.network = "bitcoin".into();
    assert!(
        ProofFile::from_json(&j).is_err(),
        "magic disagrees with the name"
    );
    let mut j = f.to_json();
    j.final_proofs[0].txid = Txid::from_byte_array([0; 32]).to_string();
    assert!(ProofFile::from_json(&j).is_err());
    let mut j = f.to_json();
    j.final_proofs[0].output_metadata.swap(0, 1);
    assert!(ProofFile::from_json(&j).is_err());
    let mut j = f.to_json();
    j.final_proofs[0].proof_tx.push_str("00");
    assert!(
        ProofFile::from_json(&j).is_err(),
        "trailing bytes in the tx"
    );
    assert!(matches!(
        ProofFile::from_json_str("{\"version\":1,\"extra\":2}"),
        Err(ProofFileError::Json(_))
    ));
}

#[test]
fn every_truncation_fails_except_between_final_proofs() {
    // Protobuf has no overall length: a file cut exactly between two final proofs is a valid
    // file with fewer proofs (it proves less, never more). Every other cut fails.
    let f = sample();
    let bytes = f.encode();
    let first_only = ProofFile::new(
        f.network(),
        f.message(),
        f.block_hash(),
        f.final_proofs()[..1].to_vec(),
    )
    .unwrap()
    .encode();
    for len in 0..bytes.len() {
        match ProofFile::decode(&bytes[..len]) {
            Err(_) => {}
            Ok(d) => {
                assert_eq!(len, first_only.len(), "a prefix of {len} bytes decoded");
                assert_eq!(d.final_proofs(), &f.final_proofs()[..1]);
            }
        }
    }
}

#[test]
fn trailing_garbage_fails() {
    let bytes = sample().encode();
    for tail in [
        vec![0u8],
        vec![0x08],
        vec![0x08, 0x01],
        vec![0xff; 3],
        field_len(6, b"pending"),
        field_varint(7, 1),
    ] {
        let mut b = bytes.clone();
        b.extend(&tail);
        assert!(ProofFile::decode(&b).is_err(), "tail {tail:?} accepted");
    }
}

#[test]
fn malformed_fields_fail_with_their_reason() {
    let f = sample();
    let head = |magic: u32| {
        let mut h = field_varint(1, 1);
        h.extend(field_varint(2, u64::from(magic)));
        h.extend(field_len(3, MSG.as_bytes()));
        h.extend(field_len(4, &[9; 32]));
        h
    };
    let proof = {
        let p = &f.final_proofs()[1];
        let m = &p.output_metadata()[0];
        let mut om = field_len(1, m.outpoint.txid.as_byte_array());
        om.extend(field_varint(2, u64::from(m.outpoint.vout)));
        om.extend(field_len(3, m.block_hash.as_byte_array()));
        let mut fp = field_len(1, &serialize(p.proof_tx()));
        fp.extend(field_len(2, &om));
        field_len(5, &fp)
    };
    let ok = [head(network_magic(Network::Regtest)), proof.clone()].concat();
    ProofFile::decode(&ok).unwrap();

    let dup = [ok.clone(), field_varint(1, 1)].concat();
    assert_eq!(
        ProofFile::decode(&dup),
        Err(ProofFileError::Duplicate("version"))
    );
    let v2 = [field_varint(1, 2), ok[2..].to_vec()].concat();
    assert!(matches!(
        ProofFile::decode(&v2),
        Err(ProofFileError::Invalid {
            field: "version",
            ..
        })
    ));
    assert!(matches!(
        ProofFile::decode(&[head(0x1234_5678), proof.clone()].concat()),
        Err(ProofFileError::Invalid {
            field: "network_magic",
            ..
        })
    ));
    // no version
    assert_eq!(
        ProofFile::decode(&ok[2..]),
        Err(ProofFileError::Missing("version"))
    );
    // no final proof
    assert!(ProofFile::decode(&head(network_magic(Network::Regtest))).is_err());
    // a varint where bytes belong
    let wrong = [ok.clone(), field_varint(5, 3)].concat();
    assert!(matches!(
        ProofFile::decode(&wrong),
        Err(ProofFileError::WireType { field: 5, .. })
    ));
    // pending proofs are refused in a final file
    let pending = [ok.clone(), field_len(6, b"x")].concat();
    assert!(matches!(
        ProofFile::decode(&pending),
        Err(ProofFileError::UnknownField { field: 6, .. })
    ));
    // a block hash of 31 bytes
    let mut short = field_varint(1, 1);
    short.extend(field_varint(2, u64::from(network_magic(Network::Regtest))));
    short.extend(field_len(3, MSG.as_bytes()));
    short.extend(field_len(4, &[9; 31]));
    short.extend(&proof);
    assert!(matches!(
        ProofFile::decode(&short),
        Err(ProofFileError::Invalid {
            field: "block_hash",
            ..
        })
    ));
    // an overlong varint (a zero continuation byte) and one of 11 bytes
    let overlong = [vec![0x88, 0x00], ok[1..].to_vec()].concat();
    assert!(matches!(
        ProofFile::decode(&overlong),
        Err(ProofFileError::Varint(_))
    ));
    let huge = [vec![0x08], vec![0xff; 10], vec![0x01], ok[2..].to_vec()].concat();
    assert!(ProofFile::decode(&huge).is_err());
    // a vout beyond u32
    let mut om = field_len(1, &[1; 32]);
    om.extend(field_varint(2, u64::from(u32::MAX) + 1));
    om.extend(field_len(3, &[2; 32]));
    let big = [
        head(network_magic(Network::Regtest)),
        field_len(5, &field_len(2, &om)),
    ]
    .concat();
    assert!(matches!(
        ProofFile::decode(&big),
        Err(ProofFileError::Varint(_))
    ));
    // metadata that do not name the inputs
    let p = &f.final_proofs()[1];
    let mut om = field_len(1, &[0xee; 32]);
    om.extend(field_len(3, &[2; 32]));
    let mut fp = field_len(1, &serialize(p.proof_tx()));
    fp.extend(field_len(2, &om));
    let other = [head(network_magic(Network::Regtest)), field_len(5, &fp)].concat();
    assert!(matches!(
        ProofFile::decode(&other),
        Err(ProofFileError::Invalid {
            field: "output_metadata",
            ..
        })
    ));
    // a proof transaction with a trailing byte
    let mut raw = serialize(p.proof_tx());
    raw.push(0);
    let fp = field_len(1, &raw);
    let trailing = [head(network_magic(Network::Regtest)), field_len(5, &fp)].concat();
    assert!(matches!(
        ProofFile::decode(&trailing),
        Err(ProofFileError::Invalid {
            field: "proof_tx",
            ..
        })
    ));
}

#[test]
fn every_single_byte_flip_never_panics() {
    let bytes = sample().encode();
    for i in 0..bytes.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= x;
            let _ = ProofFile::decode(&b);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ProofFile::decode(&b);
    }

    #[test]
    fn random_suffix_of_a_valid_prefix_never_panics(
        cut in 0usize..600,
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = sample().encode();
        let mut b = bytes[..cut.min(bytes.len())].to_vec();
        b.extend(tail);
        let _ = ProofFile::decode(&b);
    }

    #[test]
    fn files_round_trip(n in 1u8..6, vout0 in any::<u32>(), magic in 0usize..4, block in any::<[u8; 32]>()) {
        let network = [Network::Bitcoin, Network::Testnet, Network::Signet, Network::Regtest][magic];
        let (t, m) = proof_tx(n, vout0);
        let f = ProofFile::new(network, MSG, BlockHash::from_byte_array(block), vec![FinalProof::new(t, m).unwrap()]).unwrap();
        prop_assert_eq!(ProofFile::decode(&f.encode()).unwrap(), f.clone());
        prop_assert_eq!(ProofFile::from_json_str(&f.to_json_string().unwrap()).unwrap(), f);
    }
}
