//! The BIP-127 proof file: the protobuf `ProofOfReserves` message, encoded and decoded by hand,
//! and a JSON rendering of the same content.
//!
//! The schema (BIP-127, "Proof File Format"):
//! ```text
//! message OutputMeta      { bytes txid = 1; uint32 vout = 2; bytes block_hash = 3; }
//! message FinalProof      { bytes proof_tx = 1; repeated OutputMeta output_metadata = 2; }
//! message ProofOfReserves { uint32 version = 1; uint32 network_magic = 2; string message = 3;
//!                           bytes block_hash = 4; repeated FinalProof final_proofs = 5;
//!                           repeated google.protobuf.Any pending_proofs = 6; }
//! ```
//!
//! Why by hand: the wire format needs only varints and length-delimited fields, and no protobuf
//! crate is in the lock file. Why strict: an auditor's verifier must not guess. Decoding refuses
//! truncated input, overlong or overflowing varints, wrong wire types, unknown fields, repeated
//! singular fields, missing fields, `pending_proofs` (a final proof file has none), hashes that
//! are not 32 bytes, a proof transaction with trailing bytes, and output metadata that do not
//! name the proof's real inputs in order. It never panics. Protobuf has no overall length, so a
//! file cut exactly between two final proofs is a valid file with fewer proofs: it proves less,
//! never more (the verifier reports the amount it proves).
//!
//! Choices the BIP leaves open:
//! - **Byte order of `txid` and `block_hash`**: the internal (consensus) order, as the hashes
//!   are serialized inside transactions and blocks, not the reversed hex Bitcoin Core prints.
//! - **`network_magic`**: the four message-start bytes read as a little-endian `u32`, which
//!   gives the BIP's example values (`0xD9B4BEF9` for mainnet).
//! - **Version**: [`FILE_VERSION`] (1); other versions are refused.
//! - **Canonical encoding**: fields in number order, proto3 defaults (a `vout` of 0) omitted.
//!   Decoding accepts any field order and an explicit zero `vout`.

use bdk_wallet::bitcoin::consensus::encode::{deserialize, serialize};
use bdk_wallet::bitcoin::hashes::Hash;
use bdk_wallet::bitcoin::p2p::Magic;
use bdk_wallet::bitcoin::{BlockHash, Network, OutPoint, Transaction, Txid};
use serde::{Deserialize, Serialize};

/// The proof file format version this module writes and reads.
pub const FILE_VERSION: u32 = 1;

/// Largest proof file accepted (64 MiB): a proof of 10,000 inputs is a few MiB.
pub const MAX_FILE_LEN: usize = 64 * 1024 * 1024;

/// Why a proof file was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofFileError {
    /// The input ends inside a field.
    #[error("truncated proof file: {0}")]
    Truncated(&'static str),
    /// A varint longer than 10 bytes, not minimal, or too large for its field.
    #[error("invalid varint in {0}")]
    Varint(&'static str),
    /// A field with the wrong wire type.
    #[error("{message}.{field}: wire type {wire} is not the field's type")]
    WireType {
        /// The message.
        message: &'static str,
        /// The field number.
        field: u64,
        /// The wire type found.
        wire: u8,
    },
    /// A field number the schema does not have (or `pending_proofs`).
    #[error("{message}: unknown or unsupported field {field}")]
    UnknownField {
        /// The message.
        message: &'static str,
        /// The field number.
        field: u64,
    },
    /// A singular field given twice.
    #[error("{0} appears twice")]
    Duplicate(&'static str),
    /// A field that must be present is missing.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A field's value is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The file is larger than [`MAX_FILE_LEN`].
    #[error("proof file of {0} bytes is larger than the limit")]
    TooLarge(usize),
    /// The JSON rendering could not be read or written.
    #[error("proof file json: {0}")]
    Json(String),
}

type Result<T> = std::result::Result<T, ProofFileError>;

/// Where one output spent by a proof was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputMeta {
    /// The outpoint (txid and vout).
    pub outpoint: OutPoint,
    /// The block in which the output was created.
    pub block_hash: BlockHash,
}

/// One final proof transaction with the metadata of its real inputs, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalProof {
    proof_tx: Transaction,
    output_metadata: Vec<OutputMeta>,
}

impl FinalProof {
    /// A final proof; `output_metadata` must name inputs 1.. of `proof_tx`, in order.
    ///
    /// # Errors
    /// [`ProofFileError::Invalid`] when the metadata do not match the inputs.
    pub fn new(proof_tx: Transaction, output_metadata: Vec<OutputMeta>) -> Result<Self> {
        let p = FinalProof {
            proof_tx,
            output_metadata,
        };
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<()> {
        let real: Vec<OutPoint> = self
            .proof_tx
            .input
            .iter()
            .skip(1)
            .map(|i| i.previous_output)
            .collect();
        let metas: Vec<OutPoint> = self.output_metadata.iter().map(|m| m.outpoint).collect();
        if real.is_empty() {
            return Err(invalid("proof_tx", "a proof needs at least one real input"));
        }
        if real != metas {
            return Err(invalid(
                "output_metadata",
                "the metadata do not name the proof's real inputs in order",
            ));
        }
        Ok(())
    }

    /// The proof transaction.
    pub fn proof_tx(&self) -> &Transaction {
        &self.proof_tx
    }

    /// The metadata of the real inputs, in input order.
    pub fn output_metadata(&self) -> &[OutputMeta] {
        &self.output_metadata
    }
}

/// The BIP-127 `ProofOfReserves` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofFile {
    network: Network,
    message: String,
    block_hash: BlockHash,
    final_proofs: Vec<FinalProof>,
}

fn invalid(field: &'static str, reason: &str) -> ProofFileError {
    ProofFileError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

/// The network magic of `network` as the file stores it.
pub fn network_magic(network: Network) -> u32 {
    u32::from_le_bytes(network.magic().to_bytes())
}

/// The network of a file's magic, if it is one of bitcoin's.
pub fn network_from_magic(magic: u32) -> Option<Network> {
    Network::from_magic(Magic::from_bytes(magic.to_le_bytes()))
}

impl ProofFile {
    /// A proof file.
    ///
    /// # Errors
    /// [`ProofFileError::Invalid`] for an empty message or no final proof.
    pub fn new(
        network: Network,
        message: &str,
        block_hash: BlockHash,
        final_proofs: Vec<FinalProof>,
    ) -> Result<Self> {
        if message.is_empty() {
            return Err(invalid("message", "the message is empty"));
        }
        if final_proofs.is_empty() {
            return Err(invalid("final_proofs", "a proof file needs a final proof"));
        }
        Ok(ProofFile {
            network,
            message: message.to_string(),
            block_hash,
            final_proofs,
        })
    }

    /// The network the proofs are valid on.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The commitment message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The block H at which the proofs are to be verified.
    pub fn block_hash(&self) -> BlockHash {
        self.block_hash
    }

    /// The final proofs.
    pub fn final_proofs(&self) -> &[FinalProof] {
        &self.final_proofs
    }

    /// The canonical protobuf encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint_field(&mut out, 1, u64::from(FILE_VERSION));
        put_varint_field(&mut out, 2, u64::from(network_magic(self.network)));
        put_bytes_field(&mut out, 3, self.message.as_bytes());
        put_bytes_field(&mut out, 4, self.block_hash.as_byte_array());
        for p in &self.final_proofs {
            let mut fp = Vec::new();
            put_bytes_field(&mut fp, 1, &serialize(&p.proof_tx));
            for m in &p.output_metadata {
                let mut om = Vec::new();
                put_bytes_field(&mut om, 1, m.outpoint.txid.as_byte_array());
                if m.outpoint.vout != 0 {
                    put_varint_field(&mut om, 2, u64::from(m.outpoint.vout));
                }
                put_bytes_field(&mut om, 3, m.block_hash.as_byte_array());
                put_bytes_field(&mut fp, 2, &om);
            }
            put_bytes_field(&mut out, 5, &fp);
        }
        out
    }

    /// Decodes a protobuf proof file strictly (see the module docs).
    ///
    /// # Errors
    /// The [`ProofFileError`] naming the first problem.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_FILE_LEN {
            return Err(ProofFileError::TooLarge(bytes.len()));
        }
        let mut r = Reader { buf: bytes };
        let (mut version, mut magic, mut message, mut block) = (None, None, None, None);
        let mut final_proofs = Vec::new();
        const M: &str = "ProofOfReserves";
        while !r.is_empty() {
            let (field, wire) = r.key(M)?;
            match (field, wire) {
                (1, WIRE_VARINT) => set(&mut version, r.varint_u32("version")?, "version")?,
                (2, WIRE_VARINT) => {
                    set(&mut magic, r.varint_u32("network_magic")?, "network_magic")?
                }
                (3, WIRE_LEN) => {
                    let text = std::str::from_utf8(r.bytes("message")?)
                        .map_err(|_| invalid("message", "not utf-8"))?;
                    set(&mut message, text.to_string(), "message")?;
                }
                (4, WIRE_LEN) => set(
                    &mut block,
                    hash32(r.bytes("block_hash")?, "block_hash")?,
                    "block_hash",
                )?,
                (5, WIRE_LEN) => final_proofs.push(decode_final_proof(r.bytes("final_proofs")?)?),
                (1..=5, w) => {
                    return Err(ProofFileError::WireType {
                        message: M,
                        field,
                        wire: w,
                    })
                }
                (f, _) => {
                    return Err(ProofFileError::UnknownField {
                        message: M,
                        field: f,
                    })
                }
            }
        }
        let version = version.ok_or(ProofFileError::Missing("version"))?;
        if version != FILE_VERSION {
            return Err(ProofFileError::Invalid {
                field: "version",
                reason: format!("version {version} is not {FILE_VERSION}"),
            });
        }
        let magic = magic.ok_or(ProofFileError::Missing("network_magic"))?;
        let network = network_from_magic(magic).ok_or_else(|| ProofFileError::Invalid {
            field: "network_magic",
            reason: format!("{magic:#010x} is not a bitcoin network"),
        })?;
        let message = message.ok_or(ProofFileError::Missing("message"))?;
        let block_hash =
            BlockHash::from_byte_array(block.ok_or(ProofFileError::Missing("block_hash"))?);
        ProofFile::new(network, &message, block_hash, final_proofs)
    }

    /// The JSON rendering of the same content.
    pub fn to_json(&self) -> ProofFileJson {
        ProofFileJson {
            version: FILE_VERSION,
            network: self.network.to_string(),
            network_magic: format!("{:#010x}", network_magic(self.network)),
            message: self.message.clone(),
            block_hash: self.block_hash.to_string(),
            final_proofs: self
                .final_proofs
                .iter()
                .map(|p| FinalProofJson {
                    txid: p.proof_tx.compute_txid().to_string(),
                    proof_tx: hex::encode(serialize(&p.proof_tx)),
                    output_metadata: p
                        .output_metadata
                        .iter()
                        .map(|m| OutputMetaJson {
                            txid: m.outpoint.txid.to_string(),
                            vout: m.outpoint.vout,
                            block_hash: m.block_hash.to_string(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Reads the JSON rendering back, with the same checks as [`ProofFile::decode`] (the
    /// network magic must agree with the network name, each `txid` with its proof).
    ///
    /// # Errors
    /// [`ProofFileError`].
    pub fn from_json(j: &ProofFileJson) -> Result<Self> {
        if j.version != FILE_VERSION {
            return Err(ProofFileError::Invalid {
                field: "version",
                reason: format!("version {} is not {FILE_VERSION}", j.version),
            });
        }
        let network: Network = j
            .network
            .parse()
            .map_err(|_| invalid("network", "unknown network"))?;
        if j.network_magic != format!("{:#010x}", network_magic(network)) {
            return Err(invalid("network_magic", "does not match the network"));
        }
        let block_hash: BlockHash = j
            .block_hash
            .parse()
            .map_err(|_| invalid("block_hash", "not a block hash"))?;
        let mut proofs = Vec::with_capacity(j.final_proofs.len());
        for p in &j.final_proofs {
            let raw = hex::decode(&p.proof_tx).map_err(|_| invalid("proof_tx", "not hex"))?;
            let tx: Transaction =
                deserialize(&raw).map_err(|e| invalid("proof_tx", &e.to_string()))?;
            if tx.compute_txid().to_string() != p.txid {
                return Err(invalid("txid", "does not match the proof transaction"));
            }
            let mut metas = Vec::with_capacity(p.output_metadata.len());
            for m in &p.output_metadata {
                metas.push(OutputMeta {
                    outpoint: OutPoint {
                        txid: m.txid.parse().map_err(|_| invalid("txid", "not a txid"))?,
                        vout: m.vout,
                    },
                    block_hash: m
                        .block_hash
                        .parse()
                        .map_err(|_| invalid("block_hash", "not a block hash"))?,
                });
            }
            proofs.push(FinalProof::new(tx, metas)?);
        }
        ProofFile::new(network, &j.message, block_hash, proofs)
    }

    /// The JSON rendering as pretty text.
    ///
    /// # Errors
    /// [`ProofFileError::Json`] (not expected).
    pub fn to_json_string(&self) -> Result<String> {
        serde_json::to_string_pretty(&self.to_json())
            .map_err(|e| ProofFileError::Json(e.to_string()))
    }

    /// Parses the JSON rendering from text.
    ///
    /// # Errors
    /// [`ProofFileError::Json`] for malformed JSON, else as [`ProofFile::from_json`].
    pub fn from_json_str(text: &str) -> Result<Self> {
        let j: ProofFileJson =
            serde_json::from_str(text).map_err(|e| ProofFileError::Json(e.to_string()))?;
        ProofFile::from_json(&j)
    }
}

/// JSON rendering of a [`ProofFile`]: hashes as Bitcoin Core prints them, the proof
/// transaction as consensus hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofFileJson {
    /// Format version.
    pub version: u32,
    /// Network name (`bitcoin`, `testnet`, `signet`, `regtest`, ...).
    pub network: String,
    /// The network magic, `0x` and 8 hex digits.
    pub network_magic: String,
    /// The commitment message.
    pub message: String,
    /// Block H.
    pub block_hash: String,
    /// The final proofs.
    pub final_proofs: Vec<FinalProofJson>,
}

/// JSON rendering of a [`FinalProof`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalProofJson {
    /// The proof transaction's txid (informative, checked on reading).
    pub txid: String,
    /// The proof transaction, consensus-serialized, hex.
    pub proof_tx: String,
    /// The output metadata.
    pub output_metadata: Vec<OutputMetaJson>,
}

/// JSON rendering of an [`OutputMeta`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputMetaJson {
    /// Txid of the output.
    pub txid: String,
    /// Output index.
    pub vout: u32,
    /// Block where the output was created.
    pub block_hash: String,
}

const WIRE_VARINT: u8 = 0;
const WIRE_LEN: u8 = 2;

fn set<T>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<()> {
    if slot.is_some() {
        return Err(ProofFileError::Duplicate(name));
    }
    *slot = Some(v);
    Ok(())
}

fn hash32(b: &[u8], field: &'static str) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(b).map_err(|_| ProofFileError::Invalid {
        field,
        reason: format!("{} bytes, not 32", b.len()),
    })
}

fn decode_final_proof(bytes: &[u8]) -> Result<FinalProof> {
    const M: &str = "FinalProof";
    let mut r = Reader { buf: bytes };
    let mut tx = None;
    let mut metas = Vec::new();
    while !r.is_empty() {
        let (field, wire) = r.key(M)?;
        match (field, wire) {
            (1, WIRE_LEN) => {
                let raw = r.bytes("proof_tx")?;
                let t: Transaction =
                    deserialize(raw).map_err(|e| invalid("proof_tx", &e.to_string()))?;
                set(&mut tx, t, "proof_tx")?;
            }
            (2, WIRE_LEN) => metas.push(decode_output_meta(r.bytes("output_metadata")?)?),
            (1 | 2, w) => {
                return Err(ProofFileError::WireType {
                    message: M,
                    field,
                    wire: w,
                })
            }
            (f, _) => {
                return Err(ProofFileError::UnknownField {
                    message: M,
                    field: f,
                })
            }
        }
    }
    FinalProof::new(tx.ok_or(ProofFileError::Missing("proof_tx"))?, metas)
}

fn decode_output_meta(bytes: &[u8]) -> Result<OutputMeta> {
    const M: &str = "OutputMeta";
    let mut r = Reader { buf: bytes };
    let (mut txid, mut vout, mut block) = (None, None, None);
    while !r.is_empty() {
        let (field, wire) = r.key(M)?;
        match (field, wire) {
            (1, WIRE_LEN) => set(&mut txid, hash32(r.bytes("txid")?, "txid")?, "txid")?,
            (2, WIRE_VARINT) => set(&mut vout, r.varint_u32("vout")?, "vout")?,
            (3, WIRE_LEN) => set(
                &mut block,
                hash32(r.bytes("block_hash")?, "output block_hash")?,
                "output block_hash",
            )?,
            (1..=3, w) => {
                return Err(ProofFileError::WireType {
                    message: M,
                    field,
                    wire: w,
                })
            }
            (f, _) => {
                return Err(ProofFileError::UnknownField {
                    message: M,
                    field: f,
                })
            }
        }
    }
    Ok(OutputMeta {
        outpoint: OutPoint {
            txid: Txid::from_byte_array(txid.ok_or(ProofFileError::Missing("txid"))?),
            vout: vout.unwrap_or(0),
        },
        block_hash: BlockHash::from_byte_array(
            block.ok_or(ProofFileError::Missing("output block_hash"))?,
        ),
    })
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn varint(&mut self, what: &'static str) -> Result<u64> {
        let mut value: u64 = 0;
        for i in 0..10usize {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or(ProofFileError::Truncated(what))?;
            self.buf = rest;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(ProofFileError::Varint(what));
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                // minimal: no trailing zero byte after the first
                if i > 0 && b == 0 {
                    return Err(ProofFileError::Varint(what));
                }
                return Ok(value);
            }
        }
        Err(ProofFileError::Varint(what))
    }

    fn varint_u32(&mut self, what: &'static str) -> Result<u32> {
        u32::try_from(self.varint(what)?).map_err(|_| ProofFileError::Varint(what))
    }

    fn key(&mut self, message: &'static str) -> Result<(u64, u8)> {
        let k = self.varint(message)?;
        let field = k >> 3;
        if field == 0 {
            return Err(ProofFileError::UnknownField { message, field });
        }
        // the low three bits, so the cast cannot truncate
        let wire = (k & 7) as u8;
        Ok((field, wire))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let len =
            usize::try_from(self.varint(what)?).map_err(|_| ProofFileError::Truncated(what))?;
        if len > self.buf.len() {
            return Err(ProofFileError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3 | u64::from(WIRE_VARINT));
    put_varint(out, v);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    put_varint(out, field << 3 | u64::from(WIRE_LEN));
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}
