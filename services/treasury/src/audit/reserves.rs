//! Verifies a BIP-127 proof file against the auditor's own Bitcoin Core node, at a past block
//! H, without rewinding the node.
//!
//! What the node is asked (every call timed apart from the local work):
//! - the chain (`getblockchaininfo`) against the file's network magic and the message's network;
//! - H: `getblockheader` of the file's block hash (on the main chain) and `getblockhash` at the
//!   message's height, which must be that hash;
//! - for each output a proof spends: `getblockheader` of the block its metadata name (on the
//!   main chain, height at or below H) and `getrawtransaction txid false blockhash` (the block
//!   holds the transaction; no `txindex` needed), which gives the spent output's real value and
//!   script;
//! - unspent at H: `gettxout` (unspent now), or else the spend found by `getdescriptoractivity`
//!   over the blocks H+1..tip for the output's script: a spend above H is fine, none means it
//!   was spent at or before H. The `gettxout` calls go in JSON-RPC batches.
//!
//! Local work: the message parses and binds H; the declared descriptors' checksums are exactly
//! the message's; every output's script is derived from a declared descriptor (indexes
//! `0..gap` of ranged descriptors, miniscript); no outpoint is proven twice; then
//! [`custody::reserves::verify_proof_tx`] with the node's spent outputs (signatures, commitment,
//! zero fee, one `OP_RETURN` output).
//!
//! Each distinct block is asked about once and each distinct transaction fetched once per
//! verification (a proof over the 10 outputs of one transaction would otherwise fetch it 10
//! times): [`Node`] keeps the answers for the length of one [`verify_reserves_with`] call, so
//! every check above still runs for every output, against the same answers.
//!
//! The verifier collects every problem instead of stopping at the first, so a report says all
//! that is wrong; a node that fails to answer is an error, not a verdict.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdk_wallet::bitcoin::consensus::encode::deserialize;

use bdk_wallet::bitcoin::{
    Amount, BlockHash, Network, OutPoint, ScriptBuf, Transaction, TxOut, Txid,
};
use bdk_wallet::miniscript::descriptor::DescriptorPublicKey;
use bdk_wallet::miniscript::Descriptor;
use bitcoincore_rpc::{Client, RpcApi};
use custody::reserves::file::ProofFile;
use custody::reserves::{verify_proof_tx, ProofMessage, ReserveError};
use serde_json::{json, Value};

/// Why a reserve proof does not hold (a problem of the whole file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReserveProblem {
    /// The file's network is not the node's.
    #[error("wrong network: the proof file is for {file}, the node is on {node}")]
    WrongNetwork {
        /// The file's network.
        file: Network,
        /// The node's chain.
        node: String,
    },
    /// The message is not a canonical proof message, or disagrees with the file.
    #[error("message: {0}")]
    Message(String),
    /// The file's block H is unknown to the node or not on its main chain.
    #[error("block {0} is not on the node's main chain")]
    BlockNotInChain(BlockHash),
    /// The node's block at H's height is another block.
    #[error("at height {height} the node has block {node}, the proof names {file}")]
    BlockHashMismatch {
        /// Height of H.
        height: u32,
        /// The node's block there.
        node: BlockHash,
        /// The proof's H.
        file: BlockHash,
    },
    /// The message names a descriptor checksum that was not declared.
    #[error(
        "the message names descriptor checksum {0}, which is not among the declared descriptors"
    )]
    UndeclaredDescriptor(String),
    /// A declared descriptor the message does not name.
    #[error("declared descriptor with checksum {0} is not named by the message")]
    DescriptorNotInMessage(String),
    /// The same outpoint in two places.
    #[error("outpoint {0} is proven twice")]
    DuplicateOutpoint(OutPoint),
    /// A final proof does not verify (signatures, commitment, shape, fee).
    #[error("final proof {index}: {error}")]
    Proof {
        /// Index of the final proof in the file.
        index: usize,
        /// Why.
        error: ReserveError,
    },
    /// A final proof could not be checked because some of its outputs are unknown.
    #[error("final proof {0} cannot be verified: some spent outputs are unknown")]
    ProofUnchecked(usize),
    /// Amounts overflow.
    #[error("amounts overflow")]
    Overflow,
}

/// Why one output of a proof does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UtxoProblem {
    /// Its metadata block is unknown or off the main chain.
    #[error("its block {0} is not on the node's main chain")]
    BlockNotInChain(BlockHash),
    /// Created after H.
    #[error("confirmed at height {height}, after h = {h}")]
    CreatedAfterH {
        /// Where it was created.
        height: u32,
        /// Height of H.
        h: u32,
    },
    /// The block does not hold the transaction.
    #[error("the node's block {0} does not hold its transaction")]
    NotInBlock(BlockHash),
    /// The transaction has no such output.
    #[error("its transaction has no such output")]
    NoSuchOutput,
    /// Spent at or before H.
    #[error("spent at or before h = {h}{}", .height.map(|x| format!(" (at height {x})")).unwrap_or_default())]
    SpentAtOrBeforeH {
        /// Height of the spend when known.
        height: Option<u32>,
        /// Height of H.
        h: u32,
    },
    /// Its script is not derived from any declared descriptor (within the gap).
    #[error("its script is outside the declared descriptors")]
    OutsideDescriptors,
}

/// The status of one output a proof spends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtxoReport {
    /// The outpoint.
    pub outpoint: OutPoint,
    /// Its value, as the node has it.
    pub value: Option<Amount>,
    /// Height of the block that created it.
    pub created_height: Option<u32>,
    /// Height of the block that spent it, when spent (above H if all is well).
    pub spent_height: Option<u32>,
    /// Which declared descriptor (index in the declared list) and derivation index.
    pub descriptor: Option<(usize, u32)>,
    /// The output as the node has it (value and script): what the BIP-322 form of the same
    /// proof is verified against.
    pub spent_output: Option<TxOut>,
    /// What is wrong with it; empty when it counts.
    pub problems: Vec<UtxoProblem>,
}

/// The result of verifying a proof file against a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveReport {
    /// The file's network.
    pub network: Network,
    /// Height of H (from the node), when H is known.
    pub height: Option<u32>,
    /// Block H.
    pub block_hash: BlockHash,
    /// The amount the verified final proofs prove (only proofs without any problem count).
    pub proven: Amount,
    /// Every output the proofs spend.
    pub utxos: Vec<UtxoReport>,
    /// Problems of the whole file.
    pub problems: Vec<ReserveProblem>,
    /// Time spent waiting for the node.
    pub node_time: Duration,
    /// Time spent verifying locally.
    pub local_time: Duration,
}

impl ReserveReport {
    /// True when everything holds: no problem anywhere.
    pub fn verdict(&self) -> bool {
        self.problems.is_empty() && self.utxos.iter().all(|u| u.problems.is_empty())
    }

    /// Every problem as text, file problems first, then each output's.
    pub fn reasons(&self) -> Vec<String> {
        let mut out: Vec<String> = self.problems.iter().map(ToString::to_string).collect();
        for u in &self.utxos {
            out.extend(
                u.problems
                    .iter()
                    .map(|p| format!("utxo {}: {p}", u.outpoint)),
            );
        }
        out
    }
}

/// Errors that stop the verification (no verdict).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The node failed to answer.
    #[error("bitcoin node: {method}: {reason}")]
    Node {
        /// The RPC.
        method: &'static str,
        /// Its error.
        reason: String,
    },
    /// A declared descriptor cannot be read.
    #[error("declared descriptor {index}: {reason}")]
    Descriptor {
        /// Index in the declared list.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// How many `gettxout` calls go in one JSON-RPC batch.
const UNSPENT_BATCH: usize = 500;

/// The auditor's node for one verification: the client, the time spent waiting for it, and
/// the answers already had (the chain does not change under one verification as far as the
/// report is concerned: it is a view of the node at one moment).
struct Node<'a> {
    client: &'a Client,
    time: Duration,
    /// `getblockheader` by block hash: main-chain height, `None` when off the main chain.
    heights: HashMap<BlockHash, Option<u32>>,
    /// `getrawtransaction txid false block` by (txid, block): `None` when the block does not
    /// hold the transaction.
    txs: HashMap<(Txid, BlockHash), Option<Arc<Transaction>>>,
}

impl Node<'_> {
    fn call(&mut self, method: &'static str, params: &[Value]) -> Result<Value, VerifyError> {
        let start = Instant::now();
        let r = self.client.call::<Value>(method, params);
        self.time = self.time.saturating_add(start.elapsed());
        r.map_err(|e| VerifyError::Node {
            method,
            reason: e.to_string(),
        })
    }

    /// `getblockheader`, `None` for an unknown block or one off the main chain; asked once per
    /// block.
    fn main_chain_height(&mut self, hash: BlockHash) -> Result<Option<u32>, VerifyError> {
        if let Some(known) = self.heights.get(&hash) {
            return Ok(*known);
        }
        let height = self.ask_main_chain_height(hash);
        self.heights.insert(hash, height);
        Ok(height)
    }

    fn ask_main_chain_height(&mut self, hash: BlockHash) -> Option<u32> {
        let start = Instant::now();
        let r = self
            .client
            .call::<Value>("getblockheader", &[json!(hash.to_string())]);
        self.time = self.time.saturating_add(start.elapsed());
        let h = r.ok()?;
        if h["confirmations"].as_i64().unwrap_or(-1) < 1 {
            return None;
        }
        h["height"].as_u64().and_then(|x| u32::try_from(x).ok())
    }

    /// Whether each of `outpoints` is unspent now (`gettxout txid vout false` not null), asked
    /// in JSON-RPC batches of [`UNSPENT_BATCH`] (one HTTP round trip each instead of one per
    /// output); the answers in the order of `outpoints`.
    fn unspent_now(&mut self, outpoints: &[OutPoint]) -> Result<Vec<bool>, VerifyError> {
        let failed = |reason: String| VerifyError::Node {
            method: "gettxout",
            reason,
        };
        let mut unspent = Vec::with_capacity(outpoints.len());
        for chunk in outpoints.chunks(UNSPENT_BATCH) {
            let params = chunk
                .iter()
                .map(|op| {
                    serde_json::value::to_raw_value(&json!([op.txid.to_string(), op.vout, false]))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| failed(e.to_string()))?;
            let rpc = self.client.get_jsonrpc_client();
            let requests: Vec<_> = params
                .iter()
                .map(|p| rpc.build_request("gettxout", Some(&**p)))
                .collect();
            let start = Instant::now();
            let answers = rpc.send_batch(&requests);
            self.time = self.time.saturating_add(start.elapsed());
            let answers = answers.map_err(|e| failed(e.to_string()))?;
            if answers.len() != chunk.len() {
                return Err(bad_answer("gettxout", "a batch answer of another size"));
            }
            for answer in answers {
                let answer =
                    answer.ok_or_else(|| bad_answer("gettxout", "no answer in the batch"))?;
                let value: Value = answer.result().map_err(|e| failed(e.to_string()))?;
                unspent.push(!value.is_null());
            }
        }
        Ok(unspent)
    }

    /// Transaction `txid` from `block` (`getrawtransaction` with the block hash, so no `txindex`
    /// is needed), `None` when the node does not give it or gives another; fetched once per
    /// (transaction, block).
    fn transaction(&mut self, txid: Txid, block: BlockHash) -> Option<Arc<Transaction>> {
        if let Some(known) = self.txs.get(&(txid, block)) {
            return known.clone();
        }
        let start = Instant::now();
        let raw = self.client.call::<Value>(
            "getrawtransaction",
            &[
                json!(txid.to_string()),
                json!(false),
                json!(block.to_string()),
            ],
        );
        self.time = self.time.saturating_add(start.elapsed());
        let tx = raw
            .ok()
            .and_then(|v| v.as_str().and_then(|s| hex::decode(s).ok()))
            .and_then(|b| deserialize::<Transaction>(&b).ok())
            .filter(|t| t.compute_txid() == txid)
            .map(Arc::new);
        self.txs.insert((txid, block), tx.clone());
        tx
    }
}

fn bad_answer(method: &'static str, what: &str) -> VerifyError {
    VerifyError::Node {
        method,
        reason: format!("unexpected answer: {what}"),
    }
}

/// Script -> (index of the declared descriptor, derivation index).
type DeclaredScripts = HashMap<ScriptBuf, (usize, u32)>;

/// The scripts of the declared descriptors, indexes `0..gap` of ranged ones, with where they
/// come from; and each descriptor's checksum.
fn declared_scripts(
    descriptors: &[String],
    gap: u32,
) -> Result<(DeclaredScripts, BTreeSet<String>), VerifyError> {
    let mut scripts = HashMap::new();
    let mut sums = BTreeSet::new();
    for (i, text) in descriptors.iter().enumerate() {
        let err = |reason: String| VerifyError::Descriptor { index: i, reason };
        let (_, sum) = text
            .split_once('#')
            .ok_or_else(|| err("no checksum".into()))?;
        sums.insert(sum.to_string());
        let d =
            Descriptor::<DescriptorPublicKey>::from_str(text).map_err(|e| err(e.to_string()))?;
        if d.is_multipath() {
            return Err(err(
                "declare each keychain's descriptor, not a multipath one".into(),
            ));
        }
        let end = if d.has_wildcard() { gap } else { 1 };
        for index in 0..end {
            let spk = d
                .at_derivation_index(index)
                .map_err(|e| err(e.to_string()))?
                .script_pubkey();
            scripts.entry(spk).or_insert((i, index));
        }
    }
    Ok((scripts, sums))
}

/// Verifies `file` against the auditor's node: see the module docs. `descriptors` are the
/// declared descriptors (one per keychain, with checksums); ranged ones are searched up to
/// index `gap`.
///
/// # Errors
/// [`VerifyError::Node`] when the node fails to answer, [`VerifyError::Descriptor`] for a
/// declared descriptor that cannot be read. Everything wrong with the proof itself is in the
/// report.
pub fn verify_reserves(
    file: &ProofFile,
    descriptors: &[String],
    client: &Client,
    gap: u32,
) -> Result<ReserveReport, VerifyError> {
    verify_reserves_with(
        file,
        descriptors,
        client,
        gap,
        SpendSearch::DescriptorActivity,
    )
}

/// How the verifier finds where an output spent now was spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendSearch {
    /// `getdescriptoractivity` over the blocks above H (one call), falling back to
    /// [`SpendSearch::BlockScan`] when the node does not have that RPC.
    DescriptorActivity,
    /// `getblock` (verbosity 2) of every block above H, looking at every input.
    BlockScan,
}

/// As [`verify_reserves`], choosing how spends above H are found.
///
/// # Errors
/// As [`verify_reserves`].
pub fn verify_reserves_with(
    file: &ProofFile,
    descriptors: &[String],
    client: &Client,
    gap: u32,
    search: SpendSearch,
) -> Result<ReserveReport, VerifyError> {
    let start = Instant::now();
    let mut node = Node {
        client,
        time: Duration::ZERO,
        heights: HashMap::new(),
        txs: HashMap::new(),
    };
    let mut problems = Vec::new();

    // The network.
    let info = node.call("getblockchaininfo", &[])?;
    let chain = info["chain"]
        .as_str()
        .ok_or_else(|| bad_answer("getblockchaininfo", "no chain"))?
        .to_string();
    if Network::from_core_arg(&chain).ok() != Some(file.network()) {
        problems.push(ReserveProblem::WrongNetwork {
            file: file.network(),
            node: chain,
        });
    }
    let tip = info["blocks"]
        .as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| bad_answer("getblockchaininfo", "no height"))?;

    // The message and H.
    let message = match ProofMessage::parse(file.message()) {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push(ReserveProblem::Message(e.to_string()));
            None
        }
    };
    if let Some(m) = &message {
        if m.network() != file.network() {
            problems.push(ReserveProblem::Message(format!(
                "the message is for {}, the file for {}",
                m.network(),
                file.network()
            )));
        }
        if m.block_hash() != file.block_hash() {
            problems.push(ReserveProblem::Message(format!(
                "the message names block {}, the file {}",
                m.block_hash(),
                file.block_hash()
            )));
        }
    }
    let height = node.main_chain_height(file.block_hash())?;
    if height.is_none() {
        problems.push(ReserveProblem::BlockNotInChain(file.block_hash()));
    }
    if let Some(m) = &message {
        if height.is_some_and(|h| h != m.height()) {
            problems.push(ReserveProblem::Message(format!(
                "the message says height {}, block {} is at {}",
                m.height(),
                file.block_hash(),
                height.unwrap_or_default()
            )));
        }
        if m.height() <= tip {
            let at = node.call("getblockhash", &[json!(m.height())])?;
            let at: BlockHash = at
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad_answer("getblockhash", "not a block hash"))?;
            if at != file.block_hash() {
                problems.push(ReserveProblem::BlockHashMismatch {
                    height: m.height(),
                    node: at,
                    file: file.block_hash(),
                });
            }
        }
    }
    // Without a known H every output is judged against height 0: nothing counts.
    let h = height.unwrap_or(0);

    // The declared descriptors.
    let (scripts, declared) = declared_scripts(descriptors, gap)?;
    if let Some(m) = &message {
        let named: BTreeSet<String> = m.descriptor_checksums().map(str::to_string).collect();
        for s in named.difference(&declared) {
            problems.push(ReserveProblem::UndeclaredDescriptor(s.clone()));
        }
        for s in declared.difference(&named) {
            problems.push(ReserveProblem::DescriptorNotInMessage(s.clone()));
        }
    }

    // Each output: created at or below H, its real value and script, its descriptor.
    let mut utxos: Vec<UtxoReport> = Vec::new();
    let mut spent_outputs: Vec<Vec<Option<TxOut>>> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut spent_now: BTreeMap<OutPoint, (usize, ScriptBuf)> = BTreeMap::new();
    // (index in `utxos`, outpoint, script) of every output whose transaction the node gave.
    let mut unspent_asks: Vec<(usize, OutPoint, ScriptBuf)> = Vec::new();
    for proof in file.final_proofs() {
        let mut outs = Vec::new();
        for meta in proof.output_metadata() {
            let op = meta.outpoint;
            if !seen.insert(op) {
                problems.push(ReserveProblem::DuplicateOutpoint(op));
            }
            let mut r = UtxoReport {
                outpoint: op,
                value: None,
                created_height: None,
                spent_height: None,
                descriptor: None,
                spent_output: None,
                problems: Vec::new(),
            };
            match node.main_chain_height(meta.block_hash)? {
                None => r
                    .problems
                    .push(UtxoProblem::BlockNotInChain(meta.block_hash)),
                Some(created) => {
                    r.created_height = Some(created);
                    if created > h {
                        r.problems
                            .push(UtxoProblem::CreatedAfterH { height: created, h });
                    }
                }
            }
            let txout = fetch_output(&mut node, op, meta.block_hash, &mut r)?;
            if let Some(out) = &txout {
                r.value = Some(out.value);
                r.spent_output = Some(out.clone());
                match scripts.get(&out.script_pubkey) {
                    Some(at) => r.descriptor = Some(*at),
                    None => r.problems.push(UtxoProblem::OutsideDescriptors),
                }
                unspent_asks.push((utxos.len(), op, out.script_pubkey.clone()));
            }
            outs.push(txout);
            utxos.push(r);
        }
        spent_outputs.push(outs);
    }
    // Unspent now: `gettxout` for every output found, in JSON-RPC batches.
    let outpoints: Vec<OutPoint> = unspent_asks.iter().map(|(_, op, _)| *op).collect();
    let unspent = node.unspent_now(&outpoints)?;
    for ((i, op, script), unspent) in unspent_asks.into_iter().zip(unspent) {
        if !unspent {
            spent_now.insert(op, (i, script));
        }
    }

    // Spent now: a spend above H is fine, none above H means spent at or before H.
    if !spent_now.is_empty() {
        let spends = match search {
            SpendSearch::DescriptorActivity => {
                match spends_above(&mut node, h, tip, spent_now.values().map(|(_, s)| s)) {
                    Err(VerifyError::Node { reason, .. })
                        if reason.contains("Method not found") =>
                    {
                        spends_by_scan(&mut node, h, tip, spent_now.keys())?
                    }
                    other => other?,
                }
            }
            SpendSearch::BlockScan => spends_by_scan(&mut node, h, tip, spent_now.keys())?,
        };
        for (op, (i, _)) in &spent_now {
            let Some(r) = utxos.get_mut(*i) else {
                continue;
            };
            match spends.get(op) {
                Some(at) if *at > h => r.spent_height = Some(*at),
                Some(at) => r.problems.push(UtxoProblem::SpentAtOrBeforeH {
                    height: Some(*at),
                    h,
                }),
                None => r
                    .problems
                    .push(UtxoProblem::SpentAtOrBeforeH { height: None, h }),
            }
        }
    }

    // The signatures and shape, with the node's spent outputs.
    let mut proven = Amount::ZERO;
    let mut offset = 0usize;
    for (index, (proof, outs)) in file.final_proofs().iter().zip(&spent_outputs).enumerate() {
        let n = outs.len();
        let mine = utxos.get(offset..offset.saturating_add(n)).unwrap_or(&[]);
        offset = offset.saturating_add(n);
        let Some(outs) = outs.iter().cloned().collect::<Option<Vec<TxOut>>>() else {
            problems.push(ReserveProblem::ProofUnchecked(index));
            continue;
        };
        match verify_proof_tx(proof.proof_tx(), &outs, file.message().as_bytes()) {
            Ok(amount) => {
                if mine.iter().all(|u| u.problems.is_empty()) {
                    match proven.checked_add(amount) {
                        Some(p) => proven = p,
                        None => problems.push(ReserveProblem::Overflow),
                    }
                }
            }
            Err(error) => problems.push(ReserveProblem::Proof { index, error }),
        }
    }
    if !problems.is_empty() {
        proven = Amount::ZERO;
    }

    let node_time = node.time;
    let local_time = start.elapsed().saturating_sub(node_time);
    Ok(ReserveReport {
        network: file.network(),
        height,
        block_hash: file.block_hash(),
        proven,
        utxos,
        problems,
        node_time,
        local_time,
    })
}

/// The output `op` from its transaction in `block` ([`Node::transaction`]); records why when
/// it cannot be had.
fn fetch_output(
    node: &mut Node<'_>,
    op: OutPoint,
    block: BlockHash,
    r: &mut UtxoReport,
) -> Result<Option<TxOut>, VerifyError> {
    let Some(tx) = node.transaction(op.txid, block) else {
        if !r
            .problems
            .iter()
            .any(|p| matches!(p, UtxoProblem::BlockNotInChain(_)))
        {
            r.problems.push(UtxoProblem::NotInBlock(block));
        }
        return Ok(None);
    };
    let out = usize::try_from(op.vout)
        .ok()
        .and_then(|v| tx.output.get(v).cloned());
    if out.is_none() {
        r.problems.push(UtxoProblem::NoSuchOutput);
    }
    Ok(out)
}

/// Spends of outputs with `scripts` in the blocks `from`..=`to` (`getdescriptoractivity`),
/// by outpoint, with the spending block's height.
fn spends_above<'s>(
    node: &mut Node<'_>,
    h: u32,
    tip: u32,
    scripts: impl Iterator<Item = &'s ScriptBuf>,
) -> Result<BTreeMap<OutPoint, u32>, VerifyError> {
    let mut out = BTreeMap::new();
    if tip <= h {
        return Ok(out);
    }
    let mut hashes = Vec::new();
    for height in h.saturating_add(1)..=tip {
        hashes.push(node.call("getblockhash", &[json!(height)])?);
    }
    let objects: BTreeSet<String> = scripts
        .map(|s| {
            custody::vault::descriptor::with_checksum(&format!(
                "raw({})",
                hex::encode(s.as_bytes())
            ))
        })
        .collect();
    let activity = node.call(
        "getdescriptoractivity",
        &[json!(hashes), json!(objects), json!(false)],
    )?;
    let events = activity["activity"]
        .as_array()
        .ok_or_else(|| bad_answer("getdescriptoractivity", "no activity"))?;
    for e in events {
        if e["type"] != "spend" {
            continue;
        }
        let txid = e["prevout_txid"].as_str().and_then(|s| s.parse().ok());
        let vout = e["prevout_vout"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok());
        let height = e["height"].as_u64().and_then(|v| u32::try_from(v).ok());
        if let (Some(txid), Some(vout), Some(height)) = (txid, vout, height) {
            out.insert(OutPoint { txid, vout }, height);
        }
    }
    Ok(out)
}

/// Spends of `outpoints` in the blocks above `h` up to `tip`, by reading every block
/// (`getblock` verbosity 2), with the spending block's height.
fn spends_by_scan<'o>(
    node: &mut Node<'_>,
    h: u32,
    tip: u32,
    outpoints: impl Iterator<Item = &'o OutPoint>,
) -> Result<BTreeMap<OutPoint, u32>, VerifyError> {
    let wanted: BTreeSet<OutPoint> = outpoints.copied().collect();
    let mut out = BTreeMap::new();
    for height in h.saturating_add(1)..=tip {
        if out.len() == wanted.len() {
            break;
        }
        let hash = node.call("getblockhash", &[json!(height)])?;
        let block = node.call("getblock", &[hash, json!(2)])?;
        let txs = block["tx"]
            .as_array()
            .ok_or_else(|| bad_answer("getblock", "no transactions"))?;
        for tx in txs {
            for vin in tx["vin"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                let txid = vin["txid"].as_str().and_then(|s| s.parse().ok());
                let vout = vin["vout"].as_u64().and_then(|v| u32::try_from(v).ok());
                if let (Some(txid), Some(vout)) = (txid, vout) {
                    let op = OutPoint { txid, vout };
                    if wanted.contains(&op) {
                        out.insert(op, height);
                    }
                }
            }
        }
    }
    Ok(out)
}
