//! Proof-of-reserves requests in the service: prove, sign, finalize, bundle.
//!
//! Why like this:
//! - **H is the tip the vaults were just synced to.** [`ReserveService::prove`] syncs every
//!   chosen vault from the node, requires them all at the same block (else the chain moved
//!   while syncing: try again), takes every confirmed UTXO of theirs (unconfirmed ones exist at
//!   no block and are left out, counted in the ledger entry) and asks the node for the hash of
//!   the block that created each (the proof file's output metadata).
//! - **The message binds the current signed ledger checkpoint.** Either the caller gives the
//!   ledger key and a fresh checkpoint is signed over the whole log right after the syncs
//!   ([`CheckpointSource::Sign`]), or the latest stored checkpoint is used, and only if it is
//!   the last entry of the ledger ([`CheckpointSource::Latest`]); otherwise the request is
//!   refused ([`ReserveServiceError::StaleCheckpoint`]) rather than bind an old state of the
//!   ledger. The note travels base64-encoded (the message is one line per field).
//! - **Signing is the normal signer path** under the policy's reserve-proof rule (ADR 0010,
//!   amended by ADR 0013): the request's terms (its id and the approvals' expiry, the active
//!   policy's approval max age from now) are written into the PSBT as proprietary fields, so
//!   the proof's [`ProofSubject`] can be re-derived from the PSBT alone; officers of the
//!   `proof_quorum` group approve that subject ([`ReserveService::add_approval`], verified on
//!   arrival); officers' PSBTs are combined with every partial signature verified on arrival
//!   ([`custody::vault::combine`]) and the shape re-checked; the HSM policy key signs through
//!   [`hsm::PolicySigner::sign_proof`], which checks the shape and the approvals itself. No
//!   spend approvals.
//! - **Every step is a ledger entry** written in the same transaction as the row it changes
//!   (`reserve_proof` entries for the request and the finalization, `signature` entries for
//!   each signer), each naming `"proof_request": ID`, so that the bundle can carry inclusion
//!   proofs of all of them.
//! - **Two forms of one proof** (ADR 0014): besides the BIP-127 PSBT, [`ReserveService::prove`]
//!   builds the BIP-322 proof-of-funds `to_sign` PSBT over exactly the same UTXOs and message,
//!   with the first vault's first receive address as the challenge. Every step takes either
//!   form ([`ProofForm`], told apart by input 0: `PSBT_IN_POR_COMMITMENT` or `to_spend:0`).
//!   The BIP-322 form is optional for the signers: it stays `unsigned` until an officer submits
//!   a signature for it, and once started it must be complete before the proof finalizes.
//! - **The bundle** ([`ReserveService::bundle`]) is a set of files in memory ([`Bundle`]) that
//!   the CLI writes to a directory and the API can serve as JSON: descriptors with key origins,
//!   the BIP-127 proof file (protobuf and JSON), H, the signed checkpoint covering the proof's
//!   entries with their inclusion proofs and a consistency proof from the checkpoint in the
//!   message, the liabilities root when the ledger has one, and a manifest of SHA-256 digests.
//!   `treasury audit reserves` ([`crate::audit::bundle`]) checks it against the auditor's node.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use bdk_wallet::bitcoin::consensus::encode::{deserialize, serialize_hex};
use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::ScriptBuf;
use bdk_wallet::bitcoin::{Amount, BlockHash, Network, OutPoint, Transaction, Txid};
use custody::ledger::checkpoint::parse_note;
use custody::ledger::{
    consistency_proof, inclusion_proof, leaf_hashes, to_json_line, Actor, AnyCheckpointSigner,
    Checkpoint, CheckpointError, ConsistencyProofJson, Entry, EntryError, InclusionProofJson, Kind,
    VerifierKey,
};
use custody::reserves::bip322::{
    self, build_proof_of_funds, check_proof_of_funds_psbt, encode_full, spends_to_spend,
    to_spend_outpoint, Bip322Error, Challenge,
};
use custody::reserves::file::{FinalProof, OutputMeta, ProofFile};
use custody::reserves::{
    build_proof, check_proof_shape, commitment_hash, finalize_proof, ProofMessage, ReserveError,
    PSBT_IN_POR_COMMITMENT,
};
use custody::vault::{combine, ledger_record, Vault, VaultUtxo};
use hsm::policy_signer::{PolicySigner, PolicySignerError, ProofSignature};
use hsm::Signer;
use policies::approval::{Approval, ApprovalError};
use policies::proof::{
    verify_proof_approval, ProofSubject, ProofSubjectDocument, ProofTerms, SubjectError,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;

use crate::actor::POLICY_SIGNER_ACTOR;
use crate::files::bundle::{
    checkpoint_field, decode_checkpoint_field, Bip322ProofJson, Bundle, DeclaredDescriptor,
    ProofOutput, APPROVAL_TYPE, BIP322_FORMAT, BIP322_FULL_PATH, BIP322_JSON_PATH, FINALIZED_TYPE,
    REQUESTED_TYPE, SIGNATURE_TYPE,
};
use crate::node::NodeConfig;
use crate::service::signing::SigningError;
use crate::service::spend::SpendService;
use crate::service::vaults::OpError;
use crate::store::{on_db, SqlValue, StoreError, Write};

/// Errors of the proof-of-reserves service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReserveServiceError {
    /// A field of the request is not acceptable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// No proof request with this id.
    #[error("no proof request {0:?}")]
    NotFound(String),
    /// The id is taken.
    #[error("proof request {0:?} exists already")]
    Exists(String),
    /// The vaults were synced to different blocks.
    #[error("the vaults are synced to different blocks ({0}): the chain moved, try again")]
    ChainMoved(String),
    /// Nothing to prove.
    #[error("the vaults hold no confirmed coin at block {height}")]
    NoUtxos {
        /// Height of H.
        height: u32,
    },
    /// The latest signed checkpoint does not cover what it must.
    #[error(
        "the latest signed checkpoint covers {covered} entries but {needed} must be covered: \
         sign a checkpoint (treasury ledger checkpoint) or give the ledger key"
    )]
    StaleCheckpoint {
        /// Entries the latest checkpoint covers.
        covered: u64,
        /// Entries that must be covered.
        needed: u64,
    },
    /// The ledger has no signed checkpoint.
    #[error("the ledger has no signed checkpoint: sign one (treasury ledger checkpoint) or give the ledger key")]
    NoCheckpoint,
    /// The request is not in a state that allows this step.
    #[error("proof request {id} is {state}: {why}")]
    WrongState {
        /// The request.
        id: String,
        /// Its state.
        state: &'static str,
        /// What the step needs.
        why: &'static str,
    },
    /// A submitted PSBT is for another transaction.
    #[error("the psbt is for transaction {got}, proof request {id} is {want}")]
    OtherTransaction {
        /// The request.
        id: String,
        /// The request's txid.
        want: Txid,
        /// The PSBT's txid.
        got: Txid,
    },
    /// The proof was refused (shape, message, finalization, verification).
    #[error("proof: {0}")]
    Proof(#[from] ReserveError),
    /// The BIP-322 form was refused (shape, finalization, verification).
    #[error("bip-322 form: {0}")]
    Bip322(#[from] Bip322Error),
    /// A PSBT that is neither form of the proof.
    #[error("proof request {id}: {reason}")]
    UnknownForm {
        /// The request.
        id: String,
        /// Why.
        reason: String,
    },
    /// The proof file could not be built.
    #[error("proof file: {0}")]
    File(#[from] custody::reserves::file::ProofFileError),
    /// The policy signer refused.
    #[error("the policy signer refused: {0}")]
    Refused(#[from] PolicySignerError),
    /// A partial signature was refused on arrival.
    #[error("psbt refused: {0}")]
    Combine(#[from] combine::CombineError),
    /// The vault store or the node.
    #[error(transparent)]
    Op(#[from] OpError),
    /// Building the policy signer.
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// The node failed to answer.
    #[error("bitcoin node: {0}")]
    Node(String),
    /// The ledger or a write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A checkpoint.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// A ledger entry could not be built.
    #[error("ledger entry: {0}")]
    Entry(#[from] EntryError),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A bundle could not be written or read.
    #[error("bundle: {0}")]
    Bundle(String),
    /// Stored rows do not decode.
    #[error("corrupt reserve proof store: {0}")]
    Corrupt(String),
    /// The proof's subject cannot be derived from its PSBT.
    #[error("proof subject: {0}")]
    Subject(#[from] SubjectError),
    /// The active policy could not be read.
    #[error("policy: {0}")]
    Governance(#[from] crate::service::governance::GovernanceStoreError),
    /// An approval does not verify against the proof's subject (tampered, for another proof,
    /// other UTXOs or another message, under another policy, expired, unknown key).
    #[error("approval refused: {0}")]
    ApprovalRefused(ApprovalError),
    /// The approver is not a member of the policy's `proof_quorum` group.
    #[error("approval refused: {person:?} is not a member of group {group}, whose quorum approves reserve proofs")]
    NotInProofQuorum {
        /// The approver.
        person: String,
        /// The `proof_quorum` group.
        group: String,
    },
    /// The approver already approved this subject.
    #[error("approval refused: {person:?} already approved proof request {id}")]
    DuplicateApproval {
        /// The proof request.
        id: String,
        /// The approver.
        person: String,
    },
}

/// An officer's approval of a proof, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredProofApproval {
    /// The signed approval.
    pub approval: Approval,
    /// The digest of the subject it approves (hex).
    pub subject: String,
    /// The principal who submitted it.
    pub actor: String,
    /// When the service received it (Unix ms).
    pub received_ms: i64,
}

/// Where a proof's approvals stand under the active policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofApprovals {
    /// The proof request.
    pub id: String,
    /// The `proof_quorum` group.
    pub group: String,
    /// Its threshold.
    pub need: u32,
    /// The digest of the subject under the active policy (hex).
    pub subject: String,
    /// The members whose approvals of that subject count (distinct, valid now).
    pub counted: Vec<String>,
    /// Every stored approval (of any subject of this proof).
    pub approvals: Vec<StoredProofApproval>,
}

impl ProofApprovals {
    /// True when the approvals meet the reserve-proof rule.
    pub fn complete(&self) -> bool {
        u32::try_from(self.counted.len()).unwrap_or(u32::MAX) >= self.need
    }
}

type Result<T> = std::result::Result<T, ReserveServiceError>;

/// What `treasury reserves subject ID` prints and `treasury officer review`/`approve` read: the
/// proof's subject document, the proof PSBT it is derived from and the policy document it is
/// bound to, so that an officer offline re-derives the subject from the PSBT under that policy
/// instead of trusting the service ([`ProofSubjectFile::rebuild`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofSubjectFile {
    /// Always [`policies::proof::DOCUMENT_KIND`] (`"reserve_proof"`).
    pub kind: String,
    /// The subject with its message and outpoints.
    pub document: ProofSubjectDocument,
    /// The proof PSBT (base64).
    pub psbt: String,
    /// The policy document (TOML) the subject is bound to.
    pub policy: String,
}

impl ProofSubjectFile {
    /// Re-derives the subject from the file's PSBT under the file's policy and checks that the
    /// document says the same (its message, outpoints and every field).
    ///
    /// # Errors
    /// A message naming what does not match or does not parse.
    pub fn rebuild(&self) -> std::result::Result<(ProofSubject, policies::Policy), String> {
        if self.kind != policies::proof::DOCUMENT_KIND {
            return Err(format!(
                "not a reserve proof subject file (kind {:?})",
                self.kind
            ));
        }
        let policy =
            policies::Policy::from_toml(&self.policy).map_err(|e| format!("policy: {e}"))?;
        let psbt = Psbt::from_str(self.psbt.trim()).map_err(|e| format!("psbt: {e}"))?;
        let subject =
            ProofSubject::from_bip127_psbt(&psbt, policy.hash()).map_err(|e| e.to_string())?;
        let claimed = self.document.check().map_err(|e| e.to_string())?;
        if *claimed != subject {
            return Err("the subject in the file is not the one its psbt and policy give".into());
        }
        Ok((subject, policy))
    }
}

fn corrupt(e: impl std::fmt::Display) -> ReserveServiceError {
    ReserveServiceError::Corrupt(e.to_string())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Which signed ledger checkpoint a step binds.
#[derive(Clone, Copy)]
pub enum CheckpointSource<'a> {
    /// The latest stored checkpoint, which must cover what the step needs (else
    /// [`ReserveServiceError::StaleCheckpoint`]).
    Latest,
    /// Sign a fresh checkpoint of the whole log with this key (stored as a checkpoint entry).
    Sign {
        /// The ledger's origin.
        origin: &'a str,
        /// The actor of the checkpoint entry.
        actor: &'a str,
        /// The ledger key.
        signer: &'a (dyn AnyCheckpointSigner + Sync),
    },
}

impl std::fmt::Debug for CheckpointSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointSource::Latest => f.write_str("Latest"),
            CheckpointSource::Sign { origin, actor, .. } => f
                .debug_struct("Sign")
                .field("origin", origin)
                .field("actor", actor)
                .finish_non_exhaustive(),
        }
    }
}

/// What to prove.
#[derive(Debug, Clone)]
pub struct ProveRequest {
    /// Request id; `None` for a random one.
    pub id: Option<String>,
    /// The vaults whose every confirmed UTXO is proven.
    pub vaults: Vec<String>,
    /// The operator's statement in the message (may be empty).
    pub statement: String,
    /// Who asks (the actor of the ledger entry).
    pub actor: String,
}

/// Where a proof request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofState {
    /// Collecting signatures.
    Signing,
    /// Finalized: every real input signed and verified.
    Finalized,
}

impl ProofState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProofState::Signing => "signing",
            ProofState::Finalized => "finalized",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "signing" => Ok(ProofState::Signing),
            "finalized" => Ok(ProofState::Finalized),
            other => Err(corrupt(format!("unknown proof state {other:?}"))),
        }
    }
}

/// The two forms of one proof (ADR 0014).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofForm {
    /// BIP-127: input 0 is the commitment input carrying `PSBT_IN_POR_COMMITMENT`.
    Bip127,
    /// BIP-322 proof of funds: `to_sign`, input 0 spends `to_spend:0`.
    Bip322,
}

impl ProofForm {
    /// `bip127` or `bip322`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProofForm::Bip127 => "bip127",
            ProofForm::Bip322 => "bip322",
        }
    }
}

impl FromStr for ProofForm {
    type Err = ReserveServiceError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bip127" => Ok(ProofForm::Bip127),
            "bip322" => Ok(ProofForm::Bip322),
            other => Err(ReserveServiceError::Invalid {
                what: "form",
                reason: format!("{other:?} is not bip127 or bip322"),
            }),
        }
    }
}

/// Where the BIP-322 form of a proof stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bip322State {
    /// No officer has signed it yet: the proof may finalize without it.
    Unsigned,
    /// Signatures are being collected: the proof finalizes only with this form complete.
    Signing,
    /// Finalized and verified with the BIP-127 form.
    Finalized,
}

impl Bip322State {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Bip322State::Unsigned => "unsigned",
            Bip322State::Signing => "signing",
            Bip322State::Finalized => "finalized",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "unsigned" => Ok(Bip322State::Unsigned),
            "signing" => Ok(Bip322State::Signing),
            "finalized" => Ok(Bip322State::Finalized),
            other => Err(corrupt(format!("unknown bip-322 state {other:?}"))),
        }
    }
}

/// The BIP-322 proof-of-funds form of a stored proof.
#[derive(Debug, Clone)]
pub struct StoredBip322 {
    /// The vault whose address is the challenge.
    pub challenge_vault: String,
    /// The challenge address.
    pub challenge_address: String,
    /// The challenge scriptPubKey.
    pub challenge: ScriptBuf,
    /// The unsigned `to_sign` PSBT.
    pub psbt: Psbt,
    /// The PSBT with every signature accepted so far.
    pub signed: Psbt,
    /// Partial signatures in `signed`.
    pub signatures: usize,
    /// Where it stands.
    pub state: Bip322State,
    /// The finalized `to_sign` transaction.
    pub final_tx: Option<Transaction>,
}

impl StoredBip322 {
    /// The unsigned `to_sign` txid.
    pub fn txid(&self) -> Txid {
        self.psbt.unsigned_tx.compute_txid()
    }

    /// The `to_spend` txid (input 0's previous txid).
    pub fn to_spend_txid(&self) -> Option<Txid> {
        self.psbt
            .unsigned_tx
            .input
            .first()
            .map(|i| i.previous_output.txid)
    }
}

/// A stored proof request.
#[derive(Debug, Clone)]
pub struct StoredProof {
    /// The id.
    pub id: String,
    /// The vaults, in proof order.
    pub vaults: Vec<String>,
    /// The network.
    pub network: Network,
    /// Height of H.
    pub height: u32,
    /// Hash of H.
    pub block_hash: BlockHash,
    /// The canonical message text.
    pub message: String,
    /// The unsigned proof PSBT.
    pub psbt: Psbt,
    /// The PSBT with every signature accepted so far.
    pub signed: Psbt,
    /// Partial signatures in `signed`.
    pub signatures: usize,
    /// The real inputs, in input order.
    pub outputs: Vec<ProofOutput>,
    /// The declared descriptors of the vaults.
    pub descriptors: Vec<DeclaredDescriptor>,
    /// The amount the proof proves.
    pub total: Amount,
    /// Tree size of the checkpoint the message carries.
    pub checkpoint_size: u64,
    /// Where it stands.
    pub state: ProofState,
    /// The finalized transaction.
    pub final_tx: Option<Transaction>,
    /// Created (Unix ms).
    pub created_ms: i64,
    /// The BIP-322 form (absent for requests made before it existed).
    pub bip322: Option<StoredBip322>,
}

impl StoredProof {
    /// The unsigned proof transaction's txid.
    pub fn txid(&self) -> Txid {
        self.psbt.unsigned_tx.compute_txid()
    }

    /// Which form of this proof `psbt` is: BIP-127 when input 0 carries
    /// `PSBT_IN_POR_COMMITMENT`, BIP-322 when input 0 spends `to_spend:0` of this proof's
    /// message and challenge.
    ///
    /// # Errors
    /// [`ReserveServiceError::UnknownForm`] for anything else.
    pub fn form_of(&self, psbt: &Psbt) -> Result<ProofForm> {
        let commitment = psbt.inputs.first().is_some_and(|i| {
            i.unknown
                .keys()
                .any(|k| k.type_value == PSBT_IN_POR_COMMITMENT)
        });
        if commitment {
            return Ok(ProofForm::Bip127);
        }
        match &self.bip322 {
            Some(b)
                if spends_to_spend(&psbt.unsigned_tx, self.message.as_bytes(), &b.challenge) =>
            {
                Ok(ProofForm::Bip322)
            }
            Some(b) => Err(ReserveServiceError::UnknownForm {
                id: self.id.clone(),
                reason: format!(
                    "neither form: input 0 carries no psbt_in_por_commitment (bip-127) and does \
                     not spend {} (to_spend:0 of this proof, bip-322)",
                    to_spend_outpoint(self.message.as_bytes(), &b.challenge)
                ),
            }),
            None => Err(ReserveServiceError::UnknownForm {
                id: self.id.clone(),
                reason: "input 0 carries no psbt_in_por_commitment and the request has no \
                         bip-322 form"
                    .into(),
            }),
        }
    }

    /// The BIP-322 form, or [`ReserveServiceError::UnknownForm`].
    ///
    /// # Errors
    /// [`ReserveServiceError::UnknownForm`] for a request made before the BIP-322 form existed.
    pub fn bip322_form(&self) -> Result<&StoredBip322> {
        self.bip322
            .as_ref()
            .ok_or_else(|| ReserveServiceError::UnknownForm {
                id: self.id.clone(),
                reason: "the request has no bip-322 form (made before it existed)".into(),
            })
    }

    /// The PSBT of `form` with every signature accepted so far.
    ///
    /// # Errors
    /// As [`StoredProof::bip322_form`].
    pub fn signed_psbt(&self, form: ProofForm) -> Result<&Psbt> {
        match form {
            ProofForm::Bip127 => Ok(&self.signed),
            ProofForm::Bip322 => Ok(&self.bip322_form()?.signed),
        }
    }

    /// The commitment hash of the message (hex).
    pub fn commitment_hex(&self) -> String {
        hex::encode(commitment_hash(self.message.as_bytes()))
    }

    /// The message's signed checkpoint note (decoded from its base64 field).
    ///
    /// # Errors
    /// [`ReserveServiceError::Corrupt`] when the message does not carry one.
    pub fn message_checkpoint(&self) -> Result<String> {
        let m = ProofMessage::parse(&self.message)?;
        decode_checkpoint_field(m.checkpoint()).map_err(corrupt)
    }
}

/// The tree size a signed note states (its signature is not checked here).
///
/// # Errors
/// [`ReserveServiceError::Checkpoint`] for a malformed note.
pub fn note_size(note: &str) -> Result<u64> {
    let parsed = parse_note(note)?;
    Ok(Checkpoint::parse_body(parsed.text)?.size())
}

fn check_id(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ReserveServiceError::Invalid {
            what: "proof request id",
            reason: format!("{s:?} must be 1 to 64 of A-Z a-z 0-9 . _ - (not starting with .)"),
        })
    }
}

fn decode_tx(hex_text: Option<&str>) -> Result<Option<Transaction>> {
    match hex_text {
        Some(h) => Ok(Some(
            hex::decode(h)
                .ok()
                .and_then(|b| deserialize::<Transaction>(&b).ok())
                .ok_or_else(|| corrupt("a final transaction does not decode"))?,
        )),
        None => Ok(None),
    }
}

fn count_signatures(psbt: &Psbt) -> usize {
    psbt.inputs
        .iter()
        .map(|i| {
            i.partial_sigs.len() + i.tap_script_sigs.len() + usize::from(i.tap_key_sig.is_some())
        })
        .sum()
}

/// What to put in a bundle besides the proof.
#[derive(Debug, Clone, Copy)]
pub struct BundleOptions<'a> {
    /// The checkpoint that covers the proof's ledger entries.
    pub checkpoint: CheckpointSource<'a>,
    /// The ledger's verifier key, written to `ledger/verifier-key.txt` for the auditor's
    /// convenience (an auditor should pin the key out of band).
    pub ledger_key: Option<&'a VerifierKey>,
    /// The output of `treasury reserves liabilities` (`root.json`, `proofs/*.json`), copied
    /// to `liabilities/` so the auditor can check every account's proof.
    pub liabilities_dir: Option<&'a Path>,
}

struct ProofRow {
    id: String,
    vaults: String,
    network: String,
    height: i64,
    block_hash: String,
    message: String,
    psbt: String,
    signed_psbt: String,
    outputs: String,
    descriptors: String,
    total_sat: i64,
    checkpoint_size: i64,
    state: String,
    final_tx: Option<String>,
    created_ms: i64,
    bip322: Option<Bip322Row>,
}

struct Bip322Row {
    challenge_vault: String,
    challenge_address: String,
    challenge_script: String,
    psbt: String,
    signed_psbt: String,
    state: String,
    final_tx: Option<String>,
}

/// The proof-of-reserves service over the spend service (vaults, ledger, governance; one
/// database).
#[derive(Debug, Clone)]
pub struct ReserveService {
    /// Vaults, ledger, policies.
    pub spend: SpendService,
}

fn node_call(client: &bitcoincore_rpc::Client, method: &str, params: &[Value]) -> Result<Value> {
    use bitcoincore_rpc::RpcApi;
    client
        .call::<Value>(method, params)
        .map_err(|e| ReserveServiceError::Node(format!("{method}: {e}")))
}

impl ReserveService {
    /// The service on the spend service's database.
    pub fn new(spend: SpendService) -> Self {
        ReserveService { spend }
    }

    fn ledger(&self) -> &crate::store::LedgerStore {
        &self.spend.vaults.ledger
    }

    /// Creates a proof request: syncs `req.vaults` from the node, takes H = the block they are
    /// synced to, collects every confirmed UTXO of theirs, binds the signed ledger checkpoint
    /// (see [`CheckpointSource`]), builds the BIP-127 PSBT and stores it with a
    /// `reserve_proof` ledger entry, in one transaction.
    ///
    /// # Errors
    /// [`ReserveServiceError::Invalid`] for a bad id or vault list, [`ReserveServiceError::Exists`],
    /// [`ReserveServiceError::ChainMoved`], [`ReserveServiceError::NoUtxos`],
    /// [`ReserveServiceError::StaleCheckpoint`] / [`ReserveServiceError::NoCheckpoint`],
    /// [`ReserveServiceError::Op`] when the node is down; nothing is stored on any error
    /// (the vault syncs and a fresh checkpoint are kept: they are true whatever follows).
    pub async fn prove(
        &self,
        req: &ProveRequest,
        node: &NodeConfig,
        checkpoint: CheckpointSource<'_>,
        now_ms: i64,
    ) -> Result<StoredProof> {
        let id = match &req.id {
            Some(id) => id.clone(),
            None => format!("por-{:016x}", rand::random::<u64>()),
        };
        check_id(&id)?;
        Actor::new(req.actor.clone())?;
        if req.vaults.is_empty() {
            return Err(ReserveServiceError::Invalid {
                what: "vaults",
                reason: "name at least one vault".into(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for v in &req.vaults {
            if !seen.insert(v) {
                return Err(ReserveServiceError::Invalid {
                    what: "vaults",
                    reason: format!("vault {v:?} is named twice"),
                });
            }
        }
        if self.row(&id).await?.is_some() {
            return Err(ReserveServiceError::Exists(id));
        }
        // The policy whose proof quorum approves the proof (and whose approval max age bounds
        // the approvals' expiry); read first, so that activating a due change is recorded
        // before the checkpoint the message binds.
        let active = self.spend.governance.active(now_ms).await?;

        // Sync every vault; they must all stand at one block H.
        let mut vaults: Vec<Vault> = Vec::new();
        for attempt in 0..2 {
            vaults.clear();
            for name in &req.vaults {
                let (v, _) = self.spend.vaults.sync(name, node).await?;
                vaults.push(v);
            }
            let tips: std::collections::BTreeSet<_> = vaults.iter().map(Vault::tip).collect();
            if tips.len() == 1 {
                break;
            }
            if attempt == 1 {
                let text: Vec<String> = vaults
                    .iter()
                    .map(|v| format!("{} at {}", v.name(), v.tip_height()))
                    .collect();
                return Err(ReserveServiceError::ChainMoved(text.join(", ")));
            }
        }
        let first = vaults.first().ok_or(ReserveServiceError::Invalid {
            what: "vaults",
            reason: "no vault".into(),
        })?;
        let tip = first.tip();
        let network = first.network();
        let height = tip.height;
        let block_hash = tip.hash;

        // Every confirmed UTXO at H, and the block that created each.
        let mut picked: Vec<(usize, Vec<VaultUtxo>)> = Vec::new();
        let mut unconfirmed = 0usize;
        for (i, v) in vaults.iter().enumerate() {
            let (conf, unconf): (Vec<VaultUtxo>, Vec<VaultUtxo>) = v
                .utxos()
                .into_iter()
                .partition(|u| u.height.is_some_and(|h| h <= height));
            unconfirmed = unconfirmed.saturating_add(unconf.len());
            picked.push((i, conf));
        }
        if picked.iter().all(|(_, u)| u.is_empty()) {
            return Err(ReserveServiceError::NoUtxos { height });
        }
        let mut heights: Vec<u32> = picked
            .iter()
            .flat_map(|(_, us)| us.iter().filter_map(|u| u.height))
            .collect();
        heights.push(height);
        heights.sort_unstable();
        heights.dedup();
        let node2 = node.clone();
        let hashes: BTreeMap<u32, BlockHash> = tokio::task::spawn_blocking(move || {
            let client = node2
                .connect_checked(network, 3, std::time::Duration::from_millis(500))
                .map_err(|e| ReserveServiceError::Node(e.to_string()))?;
            let mut out = BTreeMap::new();
            for h in heights {
                let v = node_call(&client, "getblockhash", &[json!(h)])?;
                let hash = v
                    .as_str()
                    .and_then(|s| BlockHash::from_str(s).ok())
                    .ok_or_else(|| ReserveServiceError::Node("getblockhash: not a hash".into()))?;
                out.insert(h, hash);
            }
            Ok::<_, ReserveServiceError>(out)
        })
        .await
        .map_err(|e| corrupt(format!("node task: {e}")))??;
        if hashes.get(&height) != Some(&block_hash) {
            return Err(ReserveServiceError::ChainMoved(format!(
                "the node's block at {height} is no longer {block_hash}"
            )));
        }

        // The signed checkpoint the message binds.
        let note = match checkpoint {
            CheckpointSource::Sign {
                origin,
                actor,
                signer,
            } => {
                let actor = Actor::new(actor)?;
                let (note, _) = self
                    .ledger()
                    .checkpoint(origin, &actor, now_ms, signer)
                    .await?;
                note
            }
            CheckpointSource::Latest => {
                let head = self.ledger().head().await?;
                let (entry, note) = self.latest_checkpoint().await?;
                if entry.seq().saturating_add(1) != head.size() {
                    return Err(ReserveServiceError::StaleCheckpoint {
                        covered: note_size(&note)?,
                        needed: head.size(),
                    });
                }
                note
            }
        };
        let checkpoint_size = note_size(&note)?;

        let refs: Vec<&Vault> = vaults.iter().collect();
        let message =
            ProofMessage::for_vaults(&refs, network, height, block_hash, &checkpoint_field(&note))?
                .with_statement(&req.statement)?;
        let pairs: Vec<(&Vault, &[VaultUtxo])> = picked
            .iter()
            .filter_map(|(i, us)| vaults.get(*i).map(|v| (v, us.as_slice())))
            .collect();
        let mut built = build_proof(&pairs, &message)?;
        let text = message.encode();
        // The BIP-322 form over exactly the same UTXOs and message (ADR 0014).
        let challenge = Challenge::first_receive(first);
        let challenge_address = first
            .peek_address(challenge.keychain, challenge.index)
            .address
            .to_string();
        let mut funds = build_proof_of_funds(&challenge, &pairs, &message)?;
        if funds.inputs != built.inputs || funds.total != built.total {
            return Err(corrupt(
                "the bip-322 form does not spend exactly the bip-127 proof's utxos",
            ));
        }
        // The request's terms travel in the PSBTs of both forms (the same terms, so that one set
        // of approvals covers both), so that the subject officers approve can be re-derived from
        // either PSBT alone (the txids are unchanged).
        let expires_at_ms = now_ms.saturating_add(
            i64::try_from(
                active
                    .policy
                    .approval_rules()
                    .max_age_secs
                    .saturating_mul(1000),
            )
            .unwrap_or(i64::MAX),
        );
        let terms = ProofTerms {
            request_id: id.clone(),
            expires_at_ms,
        };
        terms.write_to(&mut built.psbt)?;
        terms.write_to(&mut funds.psbt)?;

        let mut outputs = Vec::new();
        for (v, us) in &pairs {
            for u in us.iter() {
                let h = u.height.unwrap_or(height);
                let hash = hashes
                    .get(&h)
                    .ok_or_else(|| corrupt(format!("no block hash for height {h}")))?;
                outputs.push(ProofOutput {
                    outpoint: u.outpoint.to_string(),
                    block_hash: hash.to_string(),
                    height: h,
                    value_sat: u.value.to_sat(),
                    vault: v.name().to_string(),
                });
            }
        }
        let descriptors: Vec<DeclaredDescriptor> = vaults
            .iter()
            .flat_map(|v| {
                let d = &v.config().descriptor;
                [
                    DeclaredDescriptor {
                        vault: v.name().to_string(),
                        keychain: "external".into(),
                        descriptor: d.external_string(),
                    },
                    DeclaredDescriptor {
                        vault: v.name().to_string(),
                        keychain: "internal".into(),
                        descriptor: d.internal_string(),
                    },
                ]
            })
            .collect();
        let txid = built.psbt.unsigned_tx.compute_txid();
        let body = json!({
            "type": REQUESTED_TYPE, "proof_request": id, "vaults": req.vaults,
            "network": network.to_string(), "height": height, "block": block_hash.to_string(),
            "commitment": hex::encode(commitment_hash(text.as_bytes())),
            "txid": txid.to_string(), "total_sat": built.total.to_sat(),
            "inputs": outputs.len(), "unconfirmed_excluded": unconfirmed,
            "checkpoint_size": checkpoint_size, "statement": req.statement,
            "bip322": {
                "challenge_vault": first.name().to_string(),
                "challenge_address": challenge_address,
                "challenge_script": funds.challenge.to_hex_string(),
                "to_spend_txid": funds.to_spend.compute_txid().to_string(),
                "txid": funds.psbt.unsigned_tx.compute_txid().to_string(),
            },
            "approvals_expire_ms": expires_at_ms, "policy": active.hash.to_string(),
        });
        let draft = ledger_record(Kind::ReserveProof, &req.actor, &body, now_ms)?;
        let insert = Write::new(
            "INSERT INTO reserve_proofs (id, vaults, network, height, block_hash, message, psbt, \
             signed_psbt, signatures, outputs, descriptors, total_sat, checkpoint_size, state, \
             final_tx, created_ms, updated_ms, bip322_challenge_vault, bip322_challenge_address, \
             bip322_challenge_script, bip322_psbt, bip322_signed_psbt, bip322_signatures, \
             bip322_state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, $11, $12, \
             'signing', NULL, $13, $13, $14, $15, $16, $17, $17, 0, 'unsigned')",
            vec![
                SqlValue::Text(id.clone()),
                SqlValue::Text(json!(req.vaults).to_string()),
                SqlValue::Text(network.to_string()),
                SqlValue::Int(i64::from(height)),
                SqlValue::Text(block_hash.to_string()),
                SqlValue::Text(text),
                SqlValue::Text(built.psbt.to_string()),
                SqlValue::Text(built.psbt.to_string()),
                SqlValue::Text(serde_json::to_string(&outputs).map_err(corrupt)?),
                SqlValue::Text(serde_json::to_string(&descriptors).map_err(corrupt)?),
                SqlValue::Int(to_i64(built.total.to_sat())),
                SqlValue::Int(to_i64(checkpoint_size)),
                SqlValue::Int(now_ms),
                SqlValue::Text(first.name().to_string()),
                SqlValue::Text(challenge_address),
                SqlValue::Text(funds.challenge.to_hex_string()),
                SqlValue::Text(funds.psbt.to_string()),
            ],
        );
        self.ledger()
            .append_with_writes(vec![draft], &[insert])
            .await?;
        self.load(&id).await
    }

    async fn latest_checkpoint(&self) -> Result<(Entry, String)> {
        let entries = self.ledger().entries().await?;
        let entry = entries
            .into_iter()
            .rev()
            .find(|e| e.kind() == Kind::Checkpoint)
            .ok_or(ReserveServiceError::NoCheckpoint)?;
        let note = entry.payload().as_checkpoint()?.note().to_string();
        Ok((entry, note))
    }

    async fn row(&self, id: &str) -> Result<Option<ProofRow>> {
        let q = "SELECT id, vaults, network, height, block_hash, message, psbt, signed_psbt, \
                 outputs, descriptors, total_sat, checkpoint_size, state, final_tx, created_ms, \
                 bip322_challenge_vault, bip322_challenge_address, bip322_challenge_script, \
                 bip322_psbt, bip322_signed_psbt, bip322_state, bip322_final_tx \
                 FROM reserve_proofs WHERE id = $1";
        let row = on_db!(self.ledger().db(), p => {
            match sqlx::query(q).bind(id).fetch_optional(p).await? {
                Some(r) => Some(ProofRow {
                    id: r.try_get(0)?,
                    vaults: r.try_get(1)?,
                    network: r.try_get(2)?,
                    height: r.try_get(3)?,
                    block_hash: r.try_get(4)?,
                    message: r.try_get(5)?,
                    psbt: r.try_get(6)?,
                    signed_psbt: r.try_get(7)?,
                    outputs: r.try_get(8)?,
                    descriptors: r.try_get(9)?,
                    total_sat: r.try_get(10)?,
                    checkpoint_size: r.try_get(11)?,
                    state: r.try_get(12)?,
                    final_tx: r.try_get(13)?,
                    created_ms: r.try_get(14)?,
                    bip322: match (
                        r.try_get::<Option<String>, _>(15)?,
                        r.try_get::<Option<String>, _>(16)?,
                        r.try_get::<Option<String>, _>(17)?,
                        r.try_get::<Option<String>, _>(18)?,
                        r.try_get::<Option<String>, _>(19)?,
                        r.try_get::<Option<String>, _>(20)?,
                    ) {
                        (Some(v), Some(a), Some(c), Some(p), Some(sp), Some(st)) => {
                            Some(Bip322Row {
                                challenge_vault: v,
                                challenge_address: a,
                                challenge_script: c,
                                psbt: p,
                                signed_psbt: sp,
                                state: st,
                                final_tx: r.try_get(21)?,
                            })
                        }
                        _ => None,
                    },
                }),
                None => None,
            }
        });
        Ok(row)
    }

    /// Loads a proof request.
    ///
    /// # Errors
    /// [`ReserveServiceError::NotFound`], [`ReserveServiceError::Corrupt`].
    pub async fn load(&self, id: &str) -> Result<StoredProof> {
        let r = self
            .row(id)
            .await?
            .ok_or_else(|| ReserveServiceError::NotFound(id.to_owned()))?;
        let psbt = Psbt::from_str(&r.psbt).map_err(corrupt)?;
        let signed = Psbt::from_str(&r.signed_psbt).map_err(corrupt)?;
        let final_tx = decode_tx(r.final_tx.as_deref())?;
        let bip322 = match &r.bip322 {
            Some(b) => {
                let signed = Psbt::from_str(&b.signed_psbt).map_err(corrupt)?;
                Some(StoredBip322 {
                    challenge_vault: b.challenge_vault.clone(),
                    challenge_address: b.challenge_address.clone(),
                    challenge: ScriptBuf::from_hex(&b.challenge_script).map_err(corrupt)?,
                    psbt: Psbt::from_str(&b.psbt).map_err(corrupt)?,
                    signatures: count_signatures(&signed),
                    signed,
                    state: Bip322State::parse(&b.state)?,
                    final_tx: decode_tx(b.final_tx.as_deref())?,
                })
            }
            None => None,
        };
        Ok(StoredProof {
            id: r.id,
            vaults: serde_json::from_str(&r.vaults).map_err(corrupt)?,
            network: Network::from_str(&r.network).map_err(corrupt)?,
            height: u32::try_from(r.height).map_err(corrupt)?,
            block_hash: BlockHash::from_str(&r.block_hash).map_err(corrupt)?,
            message: r.message,
            signatures: count_signatures(&signed),
            psbt,
            signed,
            outputs: serde_json::from_str(&r.outputs).map_err(corrupt)?,
            descriptors: serde_json::from_str(&r.descriptors).map_err(corrupt)?,
            total: Amount::from_sat(u64::try_from(r.total_sat).map_err(corrupt)?),
            checkpoint_size: u64::try_from(r.checkpoint_size).map_err(corrupt)?,
            state: ProofState::parse(&r.state)?,
            final_tx,
            created_ms: r.created_ms,
            bip322,
        })
    }

    /// Every proof request: id, state, height of H, amount.
    ///
    /// # Errors
    /// [`ReserveServiceError::Db`], [`ReserveServiceError::Corrupt`].
    pub async fn list(&self) -> Result<Vec<(String, ProofState, u32, Amount)>> {
        let q = "SELECT id, state, height, total_sat FROM reserve_proofs ORDER BY created_ms, id";
        let rows: Vec<(String, String, i64, i64)> = on_db!(self.ledger().db(), p => {
            sqlx::query(q)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                .collect::<std::result::Result<_, sqlx::Error>>()?
        });
        rows.into_iter()
            .map(|(id, st, h, t)| {
                Ok((
                    id,
                    ProofState::parse(&st)?,
                    u32::try_from(h).map_err(corrupt)?,
                    Amount::from_sat(u64::try_from(t).map_err(corrupt)?),
                ))
            })
            .collect()
    }

    fn signed_write(p: &StoredProof, psbt: &Psbt, now_ms: i64) -> Write {
        Write::new(
            "UPDATE reserve_proofs SET signed_psbt = $1, signatures = $2, updated_ms = $3 \
             WHERE id = $4 AND signatures = $5 AND state = 'signing'",
            vec![
                SqlValue::Text(psbt.to_string()),
                SqlValue::Int(i64::try_from(count_signatures(psbt)).unwrap_or(i64::MAX)),
                SqlValue::Int(now_ms),
                SqlValue::Text(p.id.clone()),
                SqlValue::Int(i64::try_from(p.signatures).unwrap_or(i64::MAX)),
            ],
        )
        .exactly(
            1,
            "the proof's psbt was changed by another writer; try again",
        )
    }

    fn require_signing(p: &StoredProof) -> Result<()> {
        if p.state != ProofState::Signing {
            return Err(ReserveServiceError::WrongState {
                id: p.id.clone(),
                state: p.state.as_str(),
                why: "signatures are accepted only while it is being signed",
            });
        }
        Ok(())
    }

    fn bip322_signed_write(p: &StoredProof, b: &StoredBip322, psbt: &Psbt, now_ms: i64) -> Write {
        Write::new(
            "UPDATE reserve_proofs SET bip322_signed_psbt = $1, bip322_signatures = $2, \
             bip322_state = 'signing', updated_ms = $3 WHERE id = $4 AND bip322_signatures = $5 \
             AND state = 'signing'",
            vec![
                SqlValue::Text(psbt.to_string()),
                SqlValue::Int(i64::try_from(count_signatures(psbt)).unwrap_or(i64::MAX)),
                SqlValue::Int(now_ms),
                SqlValue::Text(p.id.clone()),
                SqlValue::Int(i64::try_from(b.signatures).unwrap_or(i64::MAX)),
            ],
        )
        .exactly(
            1,
            "the proof's bip-322 psbt was changed by another writer; try again",
        )
    }

    /// Accepts an officer's PSBT for proof `id`, of either form (from Bitcoin Core, a hardware
    /// wallet or `treasury officer sign`): the form is told by input 0 ([`StoredProof::form_of`]);
    /// it must be for that form's exact transaction, every partial signature is verified on
    /// arrival and the form's shape is checked again. Records a `signature` ledger entry naming
    /// `by` and the form. Returns how many signatures were new.
    ///
    /// # Errors
    /// [`ReserveServiceError::UnknownForm`], [`ReserveServiceError::OtherTransaction`],
    /// [`ReserveServiceError::Combine`] naming the input and key of a bad signature,
    /// [`ReserveServiceError::Proof`] / [`ReserveServiceError::Bip322`] for a PSBT that breaks
    /// the shape, [`ReserveServiceError::WrongState`]. Nothing is stored on any error.
    pub async fn submit_psbt(
        &self,
        id: &str,
        incoming: Psbt,
        by: &str,
        now_ms: i64,
    ) -> Result<usize> {
        Ok(self.submit_psbt_form(id, incoming, by, now_ms).await?.1)
    }

    /// As [`ReserveService::submit_psbt`], also returning the form the PSBT was.
    ///
    /// # Errors
    /// As [`ReserveService::submit_psbt`].
    pub async fn submit_psbt_form(
        &self,
        id: &str,
        incoming: Psbt,
        by: &str,
        now_ms: i64,
    ) -> Result<(ProofForm, usize)> {
        let p = self.load(id).await?;
        Self::require_signing(&p)?;
        let form = p.form_of(&incoming)?;
        let (want, base, before) = match form {
            ProofForm::Bip127 => (p.txid(), &p.signed, p.signatures),
            ProofForm::Bip322 => {
                let b = p.bip322_form()?;
                (b.txid(), &b.signed, b.signatures)
            }
        };
        let got = incoming.unsigned_tx.compute_txid();
        if got != want {
            return Err(ReserveServiceError::OtherTransaction {
                id: id.to_owned(),
                want,
                got,
            });
        }
        // The proof terms are the request's (the same in both forms): an incoming PSBT with
        // other terms is refused, and the stored terms are written again after the merge.
        let terms = ProofTerms::from_psbt(&p.psbt)?;
        if let Ok(t) = ProofTerms::from_psbt(&incoming) {
            if t != terms {
                return Err(ReserveServiceError::Invalid {
                    what: "psbt",
                    reason: "its proof terms (request id, expiry) differ from the request's".into(),
                });
            }
        }
        let mut merged = base.clone();
        combine::combine(&mut merged, incoming)?;
        terms.write_to(&mut merged)?;
        let write = match form {
            ProofForm::Bip127 => {
                check_proof_shape(&merged, p.message.as_bytes())?;
                Self::signed_write(&p, &merged, now_ms)
            }
            ProofForm::Bip322 => {
                let b = p.bip322_form()?;
                check_proof_of_funds_psbt(&merged, p.message.as_bytes(), &b.challenge)?;
                Self::bip322_signed_write(&p, b, &merged, now_ms)
            }
        };
        let added = count_signatures(&merged).saturating_sub(before);
        if added == 0 {
            return Ok((form, 0));
        }
        let body = json!({
            "type": SIGNATURE_TYPE, "proof_request": id, "form": form.as_str(),
            "txid": want.to_string(), "by": by, "added": added,
        });
        let draft = ledger_record(Kind::Signature, by, &body, now_ms)?;
        self.ledger()
            .append_with_writes(vec![draft], &[write])
            .await?;
        Ok((form, added))
    }

    /// The subject officers approve for proof `id` under the policy active at `now_ms`,
    /// re-derived from the stored PSBT ([`ProofSubject::from_bip127_psbt`]), with the message
    /// and outpoints an officer reviews offline (`treasury officer review`).
    ///
    /// # Errors
    /// [`ReserveServiceError::NotFound`], [`ReserveServiceError::Subject`] for a proof whose
    /// PSBT carries no terms, [`ReserveServiceError::Governance`].
    pub async fn proof_subject(&self, id: &str, now_ms: i64) -> Result<ProofSubjectDocument> {
        let p = self.load(id).await?;
        let active = self.spend.governance.active(now_ms).await?;
        let subject = ProofSubject::from_bip127_psbt(&p.psbt, active.hash)?;
        let outpoints = p
            .psbt
            .unsigned_tx
            .input
            .iter()
            .skip(1)
            .map(|i| i.previous_output);
        Ok(ProofSubjectDocument::new(
            subject,
            p.message.clone(),
            outpoints,
        ))
    }

    /// The file officers review and approve offline for proof `id` (see [`ProofSubjectFile`]).
    ///
    /// # Errors
    /// As [`ReserveService::proof_subject`].
    pub async fn subject_file(&self, id: &str, now_ms: i64) -> Result<ProofSubjectFile> {
        let document = self.proof_subject(id, now_ms).await?;
        let p = self.load(id).await?;
        let active = self.spend.governance.active(now_ms).await?;
        Ok(ProofSubjectFile {
            kind: policies::proof::DOCUMENT_KIND.to_owned(),
            document,
            psbt: p.psbt.to_string(),
            policy: active.document,
        })
    }

    /// Accepts an officer's approval of proof `id`: verified on arrival against the subject
    /// under the active policy (key of the person named, this request, this exact subject, the
    /// signature, not expired), from a member of the `proof_quorum` group, not a duplicate;
    /// stored with an `approval` ledger entry naming `actor` (the principal who submitted it),
    /// in one transaction. Returns where the approvals stand.
    ///
    /// # Errors
    /// [`ReserveServiceError::ApprovalRefused`] (tampered, replayed from another proof, for
    /// other UTXOs or another message, expired, unknown key),
    /// [`ReserveServiceError::NotInProofQuorum`], [`ReserveServiceError::DuplicateApproval`],
    /// [`ReserveServiceError::WrongState`] once finalized, [`ReserveServiceError::Entry`] for
    /// a bad actor name. Nothing is stored on any error.
    pub async fn add_approval(
        &self,
        id: &str,
        approval: Approval,
        actor: &str,
        now_ms: i64,
    ) -> Result<ProofApprovals> {
        let actor = Actor::new(actor)?;
        let p = self.load(id).await?;
        Self::require_signing(&p)?;
        let active = self.spend.governance.active(now_ms).await?;
        let subject = ProofSubject::from_bip127_psbt(&p.psbt, active.hash)?;
        let v = verify_proof_approval(&active.policy, &subject, &approval, now_ms)
            .map_err(ReserveServiceError::ApprovalRefused)?;
        let group = active.policy.proof_quorum().to_owned();
        if !active
            .policy
            .group(&group)
            .is_some_and(|g| g.has(&v.person))
        {
            return Err(ReserveServiceError::NotInProofQuorum {
                person: v.person,
                group,
            });
        }
        let digest = hex::encode(subject.digest());
        if self
            .stored_approvals(id)
            .await?
            .iter()
            .any(|a| a.approval.approver == v.person && a.subject == digest)
        {
            return Err(ReserveServiceError::DuplicateApproval {
                id: id.to_owned(),
                person: v.person,
            });
        }
        let body = json!({
            "type": APPROVAL_TYPE, "proof_request": id, "approver": v.person,
            "decision": "approve", "subject": digest, "policy": active.hash.to_string(),
            "pubkey": hex::encode(approval.pubkey),
            "signature": hex::encode(approval.signature),
        });
        let draft = ledger_record(Kind::Approval, actor.as_str(), &body, now_ms)?;
        let insert = Write::new(
            "INSERT INTO reserve_proof_approvals (proof_id, approver, subject, approval, actor, \
             received_ms) VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                SqlValue::Text(id.to_owned()),
                SqlValue::Text(v.person.clone()),
                SqlValue::Text(digest),
                SqlValue::Text(serde_json::to_string(&approval).map_err(corrupt)?),
                SqlValue::Text(actor.as_str().to_owned()),
                SqlValue::Int(now_ms),
            ],
        );
        self.ledger()
            .append_with_writes(vec![draft], &[insert])
            .await?;
        self.approvals(id, now_ms).await
    }

    /// Where proof `id`'s approvals stand under the policy active at `now_ms`: the subject,
    /// the members counted (distinct, valid now, of the `proof_quorum` group) and every stored
    /// approval.
    ///
    /// # Errors
    /// [`ReserveServiceError::NotFound`], [`ReserveServiceError::Subject`],
    /// [`ReserveServiceError::Governance`], [`ReserveServiceError::Db`].
    pub async fn approvals(&self, id: &str, now_ms: i64) -> Result<ProofApprovals> {
        let p = self.load(id).await?;
        let active = self.spend.governance.active(now_ms).await?;
        let subject = ProofSubject::from_bip127_psbt(&p.psbt, active.hash)?;
        let stored = self.stored_approvals(id).await?;
        let received: Vec<policies::evaluate::ReceivedApproval> = stored
            .iter()
            .map(|a| policies::evaluate::ReceivedApproval {
                approval: a.approval.clone(),
                received_ms: a.received_ms,
            })
            .collect();
        let ctx = policies::evaluate::Context {
            now_ms,
            tip_height: 0,
            frozen: false,
        };
        let ev = policies::evaluate_proof(&active.policy, &subject, &received, &ctx);
        let group = active.policy.proof_quorum().to_owned();
        let need = active.policy.group(&group).map_or(1, |g| g.k);
        Ok(ProofApprovals {
            id: id.to_owned(),
            group,
            need,
            subject: hex::encode(subject.digest()),
            counted: ev.counted,
            approvals: stored,
        })
    }

    /// Every stored approval of proof `id`, in the order received.
    ///
    /// # Errors
    /// [`ReserveServiceError::Db`], [`ReserveServiceError::Corrupt`].
    pub async fn stored_approvals(&self, id: &str) -> Result<Vec<StoredProofApproval>> {
        let q = "SELECT approval, subject, actor, received_ms FROM reserve_proof_approvals \
                 WHERE proof_id = $1 ORDER BY received_ms, approver, subject";
        let rows: Vec<(String, String, String, i64)> = on_db!(self.ledger().db(), p => {
            sqlx::query(q)
                .bind(id)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                .collect::<std::result::Result<_, sqlx::Error>>()?
        });
        rows.into_iter()
            .map(|(a, subject, actor, received_ms)| {
                Ok(StoredProofApproval {
                    approval: serde_json::from_str(&a).map_err(corrupt)?,
                    subject,
                    actor,
                    received_ms,
                })
            })
            .collect()
    }

    /// The policy signer for `key`, built from what the service stores (as for spends).
    ///
    /// # Errors
    /// As [`SpendService::proof_signer`].
    pub async fn policy_signer<S: Signer>(
        &self,
        key: S,
        network: Network,
        now_ms: i64,
    ) -> Result<PolicySigner<S>> {
        Ok(self.spend.proof_signer(key, network, now_ms).await?)
    }

    /// Asks the policy signer to sign proof `id`: the BIP-127 form
    /// ([`PolicySigner::sign_proof`] checks the shape itself and refuses anything that could be
    /// broadcast) and, when officers have started it, the BIP-322 form
    /// ([`PolicySigner::sign_proof_of_funds`]), each with every stored approval (the signer
    /// re-derives the one subject from each PSBT and checks the reserve-proof rule). Both are checked before anything is stored, and
    /// each signature is a `signature` ledger entry. Returns the BIP-127 form's signature.
    ///
    /// # Errors
    /// [`ReserveServiceError::Refused`] with the signer's reason (e.g. "1 of 2 approvals from
    /// group officers"), [`ReserveServiceError::WrongState`].
    pub async fn policy_sign<S: Signer>(
        &self,
        id: &str,
        signer: &mut PolicySigner<S>,
        now_ms: i64,
    ) -> Result<ProofSignature> {
        let p = self.load(id).await?;
        let mut forms = vec![ProofForm::Bip127];
        if p.bip322
            .as_ref()
            .is_some_and(|b| b.state == Bip322State::Signing)
        {
            forms.push(ProofForm::Bip322);
        }
        let sigs = self.policy_sign_forms(id, &forms, signer, now_ms).await?;
        sigs.into_iter()
            .find(|(f, _)| *f == ProofForm::Bip127)
            .map(|(_, s)| s)
            .ok_or_else(|| corrupt("the bip-127 form was not signed"))
    }

    /// Asks the policy signer to sign the given forms of proof `id` (see
    /// [`ReserveService::policy_sign`]), all or nothing: every form is signed in memory first,
    /// then all are stored with their ledger entries in one transaction.
    ///
    /// # Errors
    /// [`ReserveServiceError::Refused`] with the signer's reason, [`ReserveServiceError::WrongState`],
    /// [`ReserveServiceError::UnknownForm`] for a request without a BIP-322 form.
    pub async fn policy_sign_forms<S: Signer>(
        &self,
        id: &str,
        forms: &[ProofForm],
        signer: &mut PolicySigner<S>,
        now_ms: i64,
    ) -> Result<Vec<(ProofForm, ProofSignature)>> {
        let p = self.load(id).await?;
        Self::require_signing(&p)?;
        let approvals: Vec<Approval> = self
            .stored_approvals(id)
            .await?
            .into_iter()
            .map(|a| a.approval)
            .collect();
        let mut drafts = Vec::new();
        let mut writes = Vec::new();
        let mut out = Vec::new();
        for form in forms {
            let mut psbt = p.signed_psbt(*form)?.clone();
            let sig = match form {
                ProofForm::Bip127 => signer.sign_proof(&mut psbt, id, &approvals, now_ms)?,
                ProofForm::Bip322 => {
                    let b = p.bip322_form()?;
                    signer.sign_proof_of_funds(
                        &mut psbt,
                        Some(p.message.as_bytes()),
                        &b.challenge,
                        id,
                        &approvals,
                        now_ms,
                    )?
                }
            };
            let body = json!({
                "type": SIGNATURE_TYPE, "proof_request": id, "form": form.as_str(),
                "txid": sig.txid.to_string(), "by": POLICY_SIGNER_ACTOR, "key": sig.key,
                "signer": sig.signer, "inputs": sig.inputs, "amount_sat": sig.amount.to_sat(),
                "commitment": sig.commitment, "policy": sig.policy.to_string(),
                "subject": hex::encode(sig.subject), "counted": sig.counted,
            });
            drafts.push(ledger_record(
                Kind::Signature,
                POLICY_SIGNER_ACTOR,
                &body,
                now_ms,
            )?);
            writes.push(match form {
                ProofForm::Bip127 => Self::signed_write(&p, &psbt, now_ms),
                ProofForm::Bip322 => Self::bip322_signed_write(&p, p.bip322_form()?, &psbt, now_ms),
            });
            out.push((*form, sig));
        }
        self.ledger().append_with_writes(drafts, &writes).await?;
        Ok(out)
    }

    /// Finalizes proof `id` (every real input through miniscript's finalizer, then the full
    /// verification of [`custody::reserves::verify_proof_tx`], taproot included) and records
    /// a `reserve_proof` ledger entry with the final txid. The BIP-322 form is finalized with
    /// it ([`custody::reserves::bip322::finalize`], every input verified against all spent
    /// outputs) when officers started it; a started but incomplete BIP-322 form stops the
    /// finalization with the input that lacks signatures. A finalized proof is returned as is.
    ///
    /// # Errors
    /// [`ReserveServiceError::Proof`] / [`ReserveServiceError::Bip322`] naming the form and
    /// the input that lacks signatures or fails.
    pub async fn finalize(&self, id: &str, now_ms: i64) -> Result<StoredProof> {
        let p = self.load(id).await?;
        if p.state == ProofState::Finalized {
            return Ok(p);
        }
        let tx = finalize_proof(p.signed.clone(), p.message.as_bytes())?;
        let funds = match &p.bip322 {
            Some(b) if b.state == Bip322State::Signing => Some((
                b,
                bip322::finalize(b.signed.clone(), p.message.as_bytes(), &b.challenge)?,
            )),
            _ => None,
        };
        let bip322_body = match &funds {
            Some((b, t)) => json!({
                "txid": t.compute_txid().to_string(), "wtxid": t.compute_wtxid().to_string(),
                "to_spend_txid": b.to_spend_txid().map(|x| x.to_string()),
                "challenge_address": b.challenge_address,
            }),
            None => json!(null),
        };
        let body = json!({
            "type": FINALIZED_TYPE, "proof_request": id, "txid": tx.compute_txid().to_string(),
            "wtxid": tx.compute_wtxid().to_string(), "commitment": p.commitment_hex(),
            "total_sat": p.total.to_sat(), "height": p.height,
            "block": p.block_hash.to_string(), "bip322": bip322_body,
        });
        let draft = ledger_record(Kind::ReserveProof, "treasury", &body, now_ms)?;
        let (bip322_tx, bip322_state) = match &funds {
            Some((_, t)) => (
                SqlValue::OptText(Some(serialize_hex(t))),
                SqlValue::OptText(Some(Bip322State::Finalized.as_str().into())),
            ),
            None => (
                SqlValue::OptText(None),
                SqlValue::OptText(p.bip322.as_ref().map(|b| b.state.as_str().into())),
            ),
        };
        let update = Write::new(
            "UPDATE reserve_proofs SET state = 'finalized', final_tx = $1, updated_ms = $2, \
             bip322_final_tx = $4, bip322_state = $5 WHERE id = $3 AND state = 'signing'",
            vec![
                SqlValue::Text(serialize_hex(&tx)),
                SqlValue::Int(now_ms),
                SqlValue::Text(id.to_owned()),
                bip322_tx,
                bip322_state,
            ],
        )
        .exactly(1, "the proof was finalized by another writer");
        self.ledger()
            .append_with_writes(vec![draft], &[update])
            .await?;
        self.load(id).await
    }

    /// The proof file of a finalized proof.
    ///
    /// # Errors
    /// [`ReserveServiceError::WrongState`] before it is finalized, [`ReserveServiceError::Proof`].
    pub fn proof_file(p: &StoredProof) -> Result<ProofFile> {
        let tx = p.final_tx.clone().ok_or(ReserveServiceError::WrongState {
            id: p.id.clone(),
            state: p.state.as_str(),
            why: "only a finalized proof has a proof file",
        })?;
        let metas = p
            .outputs
            .iter()
            .map(|o| {
                Ok(OutputMeta {
                    outpoint: OutPoint::from_str(&o.outpoint).map_err(corrupt)?,
                    block_hash: BlockHash::from_str(&o.block_hash).map_err(corrupt)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ProofFile::new(
            p.network,
            &p.message,
            p.block_hash,
            vec![FinalProof::new(tx, metas)?],
        )?)
    }

    /// The auditor's bundle of proof `id` (finalizing it first when it is fully signed): see
    /// the module docs for what it holds. Signs a fresh checkpoint when `opts.checkpoint` says
    /// so; with [`CheckpointSource::Latest`] the latest checkpoint must cover the proof's
    /// ledger entries.
    ///
    /// # Errors
    /// [`ReserveServiceError::Proof`] when the proof is not fully signed,
    /// [`ReserveServiceError::StaleCheckpoint`], [`ReserveServiceError::Bundle`] for an
    /// unreadable liabilities directory, store errors.
    pub async fn bundle(&self, id: &str, opts: &BundleOptions<'_>, now_ms: i64) -> Result<Bundle> {
        let p = self.finalize(id, now_ms).await?;
        let file = Self::proof_file(&p)?;
        let message_note = p.message_checkpoint()?;

        // The proof's ledger entries, and the latest liabilities root.
        let entries = self.ledger().entries().await?;
        let mut mine: Vec<&Entry> = Vec::new();
        let mut liabilities: Option<&Entry> = None;
        for e in &entries {
            if !matches!(
                e.kind(),
                Kind::ReserveProof | Kind::Signature | Kind::Approval
            ) {
                continue;
            }
            let Ok(body) = serde_json::from_slice::<Value>(e.payload().as_bytes()) else {
                continue;
            };
            if body["proof_request"] == id {
                mine.push(e);
            } else if body["type"] == custody::liabilities::LEDGER_TYPE {
                liabilities = Some(e);
            }
        }
        let last = mine
            .iter()
            .map(|e| e.seq())
            .max()
            .ok_or_else(|| corrupt("the proof has no ledger entries"))?;

        // The checkpoint covering them.
        let note = match opts.checkpoint {
            CheckpointSource::Sign {
                origin,
                actor,
                signer,
            } => {
                let actor = Actor::new(actor)?;
                self.ledger()
                    .checkpoint(origin, &actor, now_ms, signer)
                    .await?
                    .0
            }
            CheckpointSource::Latest => {
                let (_, note) = self.latest_checkpoint().await?;
                let covered = note_size(&note)?;
                if covered <= last {
                    return Err(ReserveServiceError::StaleCheckpoint {
                        covered,
                        needed: last.saturating_add(1),
                    });
                }
                note
            }
        };
        let size = note_size(&note)?;
        let hashes = self.ledger().entry_hashes(size).await?;
        let leaves = leaf_hashes(&hashes);
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut lines = String::new();
        let mut included: Vec<&Entry> = mine.clone();
        if let Some(l) = liabilities.filter(|l| l.seq() < size) {
            included.push(l);
        }
        included.sort_by_key(|e| e.seq());
        for e in &included {
            lines.push_str(&to_json_line(e));
            lines.push('\n');
            let proof = inclusion_proof(&leaves, e.seq(), size).map_err(corrupt)?;
            files.insert(
                format!("ledger/inclusion/{}.json", e.seq()),
                InclusionProofJson::new(&proof, e.entry_hash())
                    .to_json()
                    .into_bytes(),
            );
        }
        files.insert("ledger/entries.jsonl".into(), lines.into_bytes());
        let consistency = consistency_proof(&leaves, p.checkpoint_size, size).map_err(corrupt)?;
        files.insert(
            "ledger/consistency.json".into(),
            ConsistencyProofJson::new(&consistency)
                .to_json()
                .into_bytes(),
        );
        files.insert("ledger/checkpoint.txt".into(), note.into_bytes());
        files.insert(
            "ledger/message-checkpoint.txt".into(),
            message_note.into_bytes(),
        );
        if let Some(k) = opts.ledger_key {
            files.insert(
                "ledger/verifier-key.txt".into(),
                format!("{k}\n").into_bytes(),
            );
        }
        // The policy version the request names (its hash is in the request's ledger entry), so
        // that the auditor checks the approvals against its proof quorum.
        let policy_hash = mine
            .iter()
            .filter_map(|e| serde_json::from_slice::<Value>(e.payload().as_bytes()).ok())
            .find(|b| b["type"] == REQUESTED_TYPE)
            .and_then(|b| b["policy"].as_str().map(str::to_owned));
        if let Some(h) = policy_hash {
            let hash = policies::PolicyHash::from_str(&h).map_err(corrupt)?;
            let version = self.spend.governance.version(&hash).await?;
            files.insert("policy.toml".into(), version.document.into_bytes());
        }
        files.insert("proof.bin".into(), file.encode());
        let mut pj = file.to_json_string()?;
        pj.push('\n');
        files.insert("proof.json".into(), pj.into_bytes());
        let mut d = serde_json::to_string_pretty(&p.descriptors).map_err(corrupt)?;
        d.push('\n');
        files.insert("descriptors.json".into(), d.into_bytes());
        let mut forms = vec![ProofForm::Bip127.as_str()];
        let mut bip322_txid = None;
        if let Some((b, t)) = p
            .bip322
            .as_ref()
            .and_then(|b| b.final_tx.as_ref().map(|t| (b, t)))
        {
            forms.push(ProofForm::Bip322.as_str());
            bip322_txid = Some(t.compute_txid().to_string());
            files.insert(
                BIP322_FULL_PATH.into(),
                format!("{}\n", encode_full(t)).into_bytes(),
            );
            let doc = Bip322ProofJson {
                format: BIP322_FORMAT.into(),
                network: p.network.to_string(),
                message: p.message.clone(),
                challenge_vault: b.challenge_vault.clone(),
                challenge_address: b.challenge_address.clone(),
                challenge_script: b.challenge.to_hex_string(),
                to_spend_txid: b.to_spend_txid().map(|x| x.to_string()).unwrap_or_default(),
                to_sign_txid: t.compute_txid().to_string(),
                total_sat: p.total.to_sat(),
                utxos: p.outputs.clone(),
            };
            let mut j = serde_json::to_string_pretty(&doc).map_err(corrupt)?;
            j.push('\n');
            files.insert(BIP322_JSON_PATH.into(), j.into_bytes());
        }
        let block = json!({
            "network": p.network.to_string(), "height": p.height,
            "hash": p.block_hash.to_string(), "proof_request": p.id,
            "total_sat": p.total.to_sat(), "txid": p.final_tx.as_ref().map(|t| t.compute_txid().to_string()),
            "forms": forms, "bip322_txid": bip322_txid,
        });
        files.insert(
            "block.json".into(),
            format!(
                "{}\n",
                serde_json::to_string_pretty(&block).map_err(corrupt)?
            )
            .into_bytes(),
        );
        if let Some(dir) = opts.liabilities_dir {
            let read = |path: &Path| {
                std::fs::read(path)
                    .map_err(|e| ReserveServiceError::Bundle(format!("{}: {e}", path.display())))
            };
            files.insert(
                "liabilities/root.json".into(),
                read(&dir.join("root.json"))?,
            );
            let proofs = dir.join("proofs");
            let list = std::fs::read_dir(&proofs)
                .map_err(|e| ReserveServiceError::Bundle(format!("{}: {e}", proofs.display())))?;
            for e in list {
                let e = e.map_err(|e| ReserveServiceError::Bundle(e.to_string()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".json") {
                    files.insert(format!("liabilities/proofs/{name}"), read(&e.path())?);
                }
            }
        }
        Bundle::seal(files).map_err(ReserveServiceError::Bundle)
    }
}
