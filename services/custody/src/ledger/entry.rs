//! Ledger entries and their canonical, versioned byte encoding (see docs/ledger-format.md).

use hashcore::{Digest, TaggedHash};
use std::sync::OnceLock;
use thiserror::Error;

use super::codec::{put_bytes16, put_bytes32, DecodeError, Reader};

/// The version byte that starts every encoded entry body.
pub const ENTRY_FORMAT_VERSION: u8 = 1;
/// The BIP-340 style tag of entry hashes: `entry_hash = TaggedHash(tag, body)`.
pub const ENTRY_HASH_TAG: &str = "strategic-reserve/ledger/entry/v1";
/// The longest actor name, in bytes of UTF-8.
pub const MAX_ACTOR_LEN: usize = 128;
/// The largest payload, in bytes (1 MiB).
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;
/// The longest operator note text, in bytes of UTF-8 (64 KiB).
pub const MAX_NOTE_LEN: usize = 1 << 16;
/// The version byte that starts the typed payloads (note, checkpoint).
pub const PAYLOAD_FORMAT_VERSION: u8 = 1;
/// The `prev_hash` of the first entry (seq 0): 32 zero bytes.
pub const GENESIS_PREV_HASH: Digest = [0u8; 32];

fn entry_hasher() -> &'static TaggedHash {
    static H: OnceLock<TaggedHash> = OnceLock::new();
    H.get_or_init(|| TaggedHash::new(ENTRY_HASH_TAG))
}

/// Errors building an entry or one of its fields.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EntryError {
    /// The actor name is empty.
    #[error("actor is empty")]
    EmptyActor,
    /// The actor name is longer than [`MAX_ACTOR_LEN`] bytes.
    #[error("actor is {0} bytes long, the limit is {MAX_ACTOR_LEN}")]
    ActorTooLong(usize),
    /// The actor name contains a control character.
    #[error("actor contains control character {0:?}")]
    ActorControlChar(char),
    /// The time is negative (before 1970).
    #[error("time {0} ms is negative")]
    NegativeTime(i64),
    /// The payload is longer than [`MAX_PAYLOAD_LEN`].
    #[error("payload is {0} bytes long, the limit is {MAX_PAYLOAD_LEN}")]
    PayloadTooLong(usize),
    /// The note text is empty.
    #[error("note text is empty")]
    EmptyNote,
    /// The note text is longer than [`MAX_NOTE_LEN`].
    #[error("note text is {0} bytes long, the limit is {MAX_NOTE_LEN}")]
    NoteTooLong(usize),
    /// The note text contains a control character other than newline and tab.
    #[error("note text contains control character {0:?}")]
    NoteControlChar(char),
    /// A typed payload's bytes are not its canonical encoding.
    #[error("malformed {ty} payload: {source}")]
    MalformedPayload {
        /// The payload type.
        ty: PayloadType,
        /// The decoding error.
        source: DecodeError,
    },
    /// The payload type is not allowed for the entry kind.
    #[error("a {kind} entry cannot carry a {ty} payload")]
    KindPayloadMismatch {
        /// The entry kind.
        kind: Kind,
        /// The payload type.
        ty: PayloadType,
    },
    /// The payload is not of the type asked for.
    #[error("payload is of type {found}, not {wanted}")]
    WrongPayloadType {
        /// The type asked for.
        wanted: PayloadType,
        /// The type it has.
        found: PayloadType,
    },
    /// The sequence number space is exhausted.
    #[error("sequence number overflow")]
    SeqOverflow,
}

macro_rules! coded_enum {
    (
        $(#[$meta:meta])* $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $code:literal, $text:literal; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The stable numeric code (never reused or renumbered).
            pub fn code(self) -> u16 {
                match self { $( $name::$variant => $code, )+ }
            }

            /// The value of a numeric code, if it is assigned.
            pub fn from_code(code: u16) -> Option<Self> {
                match code { $( $code => Some($name::$variant), )+ _ => None }
            }

            /// The stable snake_case name (used in JSON exports).
            pub fn name(self) -> &'static str {
                match self { $( $name::$variant => $text, )+ }
            }

            /// The value of a snake_case name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $( $text => Some($name::$variant), )+ _ => None }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl core::str::FromStr for $name {
            type Err = DecodeError;
            fn from_str(s: &str) -> Result<Self, DecodeError> {
                Self::from_name(s).ok_or_else(|| DecodeError::Invalid {
                    field: $what,
                    reason: format!("unknown name {s:?}"),
                })
            }
        }
    };
}

coded_enum! {
    /// What happened: the kind of a ledger entry, with a stable numeric code.
    Kind, "kind" {
        /// A vault (a watch-only multisig descriptor) was created.
        VaultCreated = 1, "vault_created";
        /// A receive address was issued.
        AddressIssued = 2, "address_issued";
        /// A deposit was seen on chain.
        DepositSeen = 3, "deposit_seen";
        /// A spend was requested.
        SpendRequested = 4, "spend_requested";
        /// An officer approved a spend request.
        Approval = 5, "approval";
        /// A partial signature was added.
        Signature = 6, "signature";
        /// A transaction was broadcast.
        Broadcast = 7, "broadcast";
        /// A transaction was confirmed.
        Confirmation = 8, "confirmation";
        /// A policy version was proposed.
        PolicyProposed = 9, "policy_proposed";
        /// A policy version was activated.
        PolicyActivated = 10, "policy_activated";
        /// A key ceremony took place.
        KeyCeremony = 11, "key_ceremony";
        /// A proof of reserves was made.
        ReserveProof = 12, "reserve_proof";
        /// A signed checkpoint of the log before this entry.
        Checkpoint = 13, "checkpoint";
        /// A free-text operator note.
        OperatorNote = 14, "operator_note";
        /// A vault transaction lost its block in a reorg or left the mempool.
        ChainReorg = 15, "chain_reorg";
        /// The reserve was frozen or a freeze was lifted (signed admin order).
        Freeze = 16, "freeze";
        /// A proposed policy version was vetoed by an admin.
        PolicyVetoed = 17, "policy_vetoed";
    }
}

coded_enum! {
    /// How an entry's payload bytes are to be read, with a stable numeric code.
    PayloadType, "payload type" {
        /// Opaque bytes whose structure the ledger does not check.
        Bytes = 0, "bytes";
        /// An operator note ([`NotePayload`]).
        Note = 1, "note";
        /// A signed checkpoint note ([`CheckpointPayload`]).
        Checkpoint = 2, "checkpoint";
    }
}

impl Kind {
    /// Whether an entry of this kind may carry a payload of type `ty`: operator notes carry
    /// note payloads, checkpoints carry checkpoint payloads, and note and checkpoint payloads
    /// appear nowhere else (every other kind carries opaque bytes or a note).
    pub fn allows(self, ty: PayloadType) -> bool {
        match (self, ty) {
            (Kind::OperatorNote, t) => t == PayloadType::Note,
            (Kind::Checkpoint, t) => t == PayloadType::Checkpoint,
            (_, PayloadType::Checkpoint) => false,
            (_, PayloadType::Bytes | PayloadType::Note) => true,
        }
    }
}

/// Who caused an entry: a validated name (1 to [`MAX_ACTOR_LEN`] bytes, no control characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Actor(String);

impl Actor {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`EntryError::EmptyActor`], [`EntryError::ActorTooLong`] or
    /// [`EntryError::ActorControlChar`].
    pub fn new(name: impl Into<String>) -> Result<Self, EntryError> {
        let name = name.into();
        if name.is_empty() {
            return Err(EntryError::EmptyActor);
        }
        if name.len() > MAX_ACTOR_LEN {
            return Err(EntryError::ActorTooLong(name.len()));
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(EntryError::ActorControlChar(c));
        }
        Ok(Actor(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl core::fmt::Display for Actor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An operator note: free text (1 to [`MAX_NOTE_LEN`] bytes; newline and tab are the only
/// control characters allowed).
///
/// Encoding: `0x01 || u32 length || UTF-8 text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotePayload {
    text: String,
}

impl NotePayload {
    /// Validates `text`.
    ///
    /// # Errors
    /// [`EntryError::EmptyNote`], [`EntryError::NoteTooLong`] or [`EntryError::NoteControlChar`].
    pub fn new(text: impl Into<String>) -> Result<Self, EntryError> {
        let text = text.into();
        if text.is_empty() {
            return Err(EntryError::EmptyNote);
        }
        if text.len() > MAX_NOTE_LEN {
            return Err(EntryError::NoteTooLong(text.len()));
        }
        if let Some(c) = text
            .chars()
            .find(|c| c.is_control() && *c != '\n' && *c != '\t')
        {
            return Err(EntryError::NoteControlChar(c));
        }
        Ok(NotePayload { text })
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.text.len());
        out.push(PAYLOAD_FORMAT_VERSION);
        put_bytes32(&mut out, self.text.as_bytes());
        out
    }

    /// Decodes the canonical encoding.
    ///
    /// # Errors
    /// [`DecodeError`] on a wrong version, truncation, trailing bytes, bad UTF-8 or text that
    /// [`NotePayload::new`] rejects.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        check_version(&mut r, "note payload")?;
        let text = r.bytes32("note text", MAX_NOTE_LEN)?;
        r.finish()?;
        let text = utf8(text, "note text")?;
        NotePayload::new(text).map_err(|e| DecodeError::Invalid {
            field: "note text",
            reason: e.to_string(),
        })
    }
}

/// A checkpoint entry's payload: the signed checkpoint note text (see
/// [`crate::ledger::checkpoint`]), stored verbatim.
///
/// Encoding: `0x01 || u32 length || UTF-8 note text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointPayload {
    note: String,
}

impl CheckpointPayload {
    /// Wraps a signed note's text. Its structure and signature are checked by the checkpoint
    /// verifier, not here.
    ///
    /// # Errors
    /// [`EntryError::PayloadTooLong`] when the note is too long to fit a payload.
    pub fn new(note: impl Into<String>) -> Result<Self, EntryError> {
        let note = note.into();
        if note.len() + 5 > MAX_PAYLOAD_LEN {
            return Err(EntryError::PayloadTooLong(note.len() + 5));
        }
        Ok(CheckpointPayload { note })
    }

    /// The signed note text.
    pub fn note(&self) -> &str {
        &self.note
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.note.len());
        out.push(PAYLOAD_FORMAT_VERSION);
        put_bytes32(&mut out, self.note.as_bytes());
        out
    }

    /// Decodes the canonical encoding.
    ///
    /// # Errors
    /// [`DecodeError`] on a wrong version, truncation, trailing bytes or bad UTF-8.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        check_version(&mut r, "checkpoint payload")?;
        let note = r.bytes32("checkpoint note", MAX_PAYLOAD_LEN - 5)?;
        r.finish()?;
        Ok(CheckpointPayload {
            note: utf8(note, "checkpoint note")?.to_owned(),
        })
    }
}

fn check_version(r: &mut Reader<'_>, what: &'static str) -> Result<(), DecodeError> {
    let v = r.u8("version")?;
    if v == PAYLOAD_FORMAT_VERSION {
        Ok(())
    } else {
        Err(DecodeError::UnsupportedVersion {
            what,
            found: v,
            expected: PAYLOAD_FORMAT_VERSION,
        })
    }
}

fn utf8<'a>(bytes: &'a [u8], field: &'static str) -> Result<&'a str, DecodeError> {
    core::str::from_utf8(bytes).map_err(|e| DecodeError::Invalid {
        field,
        reason: format!("not utf-8: {e}"),
    })
}

/// An entry's payload: a type and bytes that are canonical for that type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    ty: PayloadType,
    bytes: Vec<u8>,
}

impl Payload {
    /// A payload of type `ty`; typed payloads must be in their canonical encoding.
    ///
    /// # Errors
    /// [`EntryError::PayloadTooLong`], or [`EntryError::MalformedPayload`] when a typed
    /// payload does not decode (or is not canonical).
    pub fn new(ty: PayloadType, bytes: Vec<u8>) -> Result<Self, EntryError> {
        if bytes.len() > MAX_PAYLOAD_LEN {
            return Err(EntryError::PayloadTooLong(bytes.len()));
        }
        let check = match ty {
            PayloadType::Bytes => Ok(()),
            PayloadType::Note => NotePayload::decode(&bytes).map(|_| ()),
            PayloadType::Checkpoint => CheckpointPayload::decode(&bytes).map(|_| ()),
        };
        check.map_err(|source| EntryError::MalformedPayload { ty, source })?;
        Ok(Payload { ty, bytes })
    }

    /// Opaque bytes.
    ///
    /// # Errors
    /// [`EntryError::PayloadTooLong`].
    pub fn bytes(bytes: Vec<u8>) -> Result<Self, EntryError> {
        Payload::new(PayloadType::Bytes, bytes)
    }

    /// An operator note.
    ///
    /// # Errors
    /// As [`NotePayload::new`].
    pub fn note(text: impl Into<String>) -> Result<Self, EntryError> {
        Ok(Payload {
            ty: PayloadType::Note,
            bytes: NotePayload::new(text)?.encode(),
        })
    }

    /// A checkpoint note.
    ///
    /// # Errors
    /// As [`CheckpointPayload::new`].
    pub fn checkpoint(note: impl Into<String>) -> Result<Self, EntryError> {
        Ok(Payload {
            ty: PayloadType::Checkpoint,
            bytes: CheckpointPayload::new(note)?.encode(),
        })
    }

    /// The payload type.
    pub fn payload_type(&self) -> PayloadType {
        self.ty
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The payload as an operator note.
    ///
    /// # Errors
    /// [`EntryError::WrongPayloadType`] or [`EntryError::MalformedPayload`].
    pub fn as_note(&self) -> Result<NotePayload, EntryError> {
        self.expect_type(PayloadType::Note)?;
        NotePayload::decode(&self.bytes).map_err(|source| EntryError::MalformedPayload {
            ty: self.ty,
            source,
        })
    }

    /// The payload as a checkpoint.
    ///
    /// # Errors
    /// [`EntryError::WrongPayloadType`] or [`EntryError::MalformedPayload`].
    pub fn as_checkpoint(&self) -> Result<CheckpointPayload, EntryError> {
        self.expect_type(PayloadType::Checkpoint)?;
        CheckpointPayload::decode(&self.bytes).map_err(|source| EntryError::MalformedPayload {
            ty: self.ty,
            source,
        })
    }

    fn expect_type(&self, wanted: PayloadType) -> Result<(), EntryError> {
        if self.ty == wanted {
            Ok(())
        } else {
            Err(EntryError::WrongPayloadType {
                wanted,
                found: self.ty,
            })
        }
    }
}

/// What an appender supplies for a new entry; the ledger head adds seq and prev_hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryDraft {
    /// Unix time in milliseconds (the appender raises it to the previous entry's time if the
    /// clock went back).
    pub time_ms: i64,
    /// What happened.
    pub kind: Kind,
    /// Who did it.
    pub actor: Actor,
    /// The details.
    pub payload: Payload,
}

impl EntryDraft {
    /// An operator note draft.
    ///
    /// # Errors
    /// As [`Actor::new`] and [`NotePayload::new`].
    pub fn note(time_ms: i64, actor: &str, text: &str) -> Result<Self, EntryError> {
        Ok(EntryDraft {
            time_ms,
            kind: Kind::OperatorNote,
            actor: Actor::new(actor)?,
            payload: Payload::note(text)?,
        })
    }
}

/// One ledger entry: its fields and its (stored or computed) entry hash.
///
/// `entry_hash = TaggedHash("strategic-reserve/ledger/entry/v1", body)` where `body` is
/// [`Entry::encode_body`]. An entry built with [`Entry::new`] has the right hash; one read from
/// storage with [`Entry::from_stored`] or [`Entry::decode_record`] carries the hash it was stored
/// with, which [`Entry::check_hash`] and the chain verifier compare against the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    seq: u64,
    time_ms: i64,
    kind: Kind,
    actor: Actor,
    payload: Payload,
    prev_hash: Digest,
    entry_hash: Digest,
}

impl Entry {
    /// Builds entry `seq` from a draft and the previous entry's hash, and computes its hash.
    ///
    /// # Errors
    /// [`EntryError::NegativeTime`] or [`EntryError::KindPayloadMismatch`].
    pub fn new(seq: u64, draft: EntryDraft, prev_hash: Digest) -> Result<Self, EntryError> {
        let mut e = Entry::from_stored(
            seq,
            draft.time_ms,
            draft.kind,
            draft.actor,
            draft.payload,
            prev_hash,
            [0; 32],
        )?;
        e.entry_hash = e.compute_hash();
        Ok(e)
    }

    /// An entry as stored, with the hash it was stored with (not checked here).
    ///
    /// # Errors
    /// [`EntryError::NegativeTime`] or [`EntryError::KindPayloadMismatch`].
    pub fn from_stored(
        seq: u64,
        time_ms: i64,
        kind: Kind,
        actor: Actor,
        payload: Payload,
        prev_hash: Digest,
        entry_hash: Digest,
    ) -> Result<Self, EntryError> {
        if time_ms < 0 {
            return Err(EntryError::NegativeTime(time_ms));
        }
        if !kind.allows(payload.payload_type()) {
            return Err(EntryError::KindPayloadMismatch {
                kind,
                ty: payload.payload_type(),
            });
        }
        Ok(Entry {
            seq,
            time_ms,
            kind,
            actor,
            payload,
            prev_hash,
            entry_hash,
        })
    }

    /// The sequence number (0 for the first entry).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Unix time in milliseconds.
    pub fn time_ms(&self) -> i64 {
        self.time_ms
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The actor.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The previous entry's hash ([`GENESIS_PREV_HASH`] for seq 0).
    pub fn prev_hash(&self) -> &Digest {
        &self.prev_hash
    }

    /// The entry hash (as stored, or as computed by [`Entry::new`]).
    pub fn entry_hash(&self) -> &Digest {
        &self.entry_hash
    }

    /// The canonical body encoding, the input of the entry hash (docs/ledger-format.md).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(57 + self.actor.0.len() + self.payload.bytes.len());
        self.write_body(&mut out);
        out
    }

    fn write_body(&self, out: &mut Vec<u8>) {
        out.push(ENTRY_FORMAT_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(&self.kind.code().to_be_bytes());
        put_bytes16(out, self.actor.0.as_bytes());
        out.extend_from_slice(&self.payload.ty.code().to_be_bytes());
        put_bytes32(out, &self.payload.bytes);
        out.extend_from_slice(&self.prev_hash);
    }

    /// The record encoding: the body followed by the 32-byte entry hash.
    pub fn encode_record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(89 + self.actor.0.len() + self.payload.bytes.len());
        self.write_body(&mut out);
        out.extend_from_slice(&self.entry_hash);
        out
    }

    /// The hash the content should have.
    pub fn compute_hash(&self) -> Digest {
        // The body fed in pieces (no allocation); the same bytes as `encode_body`.
        let actor = self.actor.0.as_bytes();
        let payload = &self.payload.bytes;
        let mut head = [0u8; 21];
        head[0] = ENTRY_FORMAT_VERSION;
        head[1..9].copy_from_slice(&self.seq.to_be_bytes());
        head[9..17].copy_from_slice(&self.time_ms.to_be_bytes());
        head[17..19].copy_from_slice(&self.kind.code().to_be_bytes());
        head[19..21].copy_from_slice(&u16::try_from(actor.len()).unwrap_or(u16::MAX).to_be_bytes());
        let mut mid = [0u8; 6];
        mid[..2].copy_from_slice(&self.payload.ty.code().to_be_bytes());
        mid[2..].copy_from_slice(
            &u32::try_from(payload.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        let mut h = entry_hasher().hasher();
        h.update(&head);
        h.update(actor);
        h.update(&mid);
        h.update(payload);
        h.update(&self.prev_hash);
        h.finalize()
    }

    /// Whether the stored hash matches the content.
    pub fn check_hash(&self) -> bool {
        self.compute_hash() == self.entry_hash
    }

    /// Decodes a body (no hash); the entry hash is computed.
    ///
    /// # Errors
    /// [`DecodeError`] on any malformed, non-canonical or trailing input.
    pub fn decode_body(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut e = Self::read_body(&mut r)?;
        r.finish()?;
        e.entry_hash = e.compute_hash();
        Ok(e)
    }

    /// Decodes a record (body then entry hash). The stored hash is kept as is: check it with
    /// [`Entry::check_hash`] or the chain verifier.
    ///
    /// # Errors
    /// [`DecodeError`] on any malformed, non-canonical or trailing input.
    pub fn decode_record(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut e = Self::read_body(&mut r)?;
        e.entry_hash = r.array("entry hash")?;
        r.finish()?;
        Ok(e)
    }

    fn read_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8("format version")?;
        if version != ENTRY_FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "entry",
                found: version,
                expected: ENTRY_FORMAT_VERSION,
            });
        }
        let seq = r.u64("seq")?;
        let time_ms = r.i64("time")?;
        let kind_code = r.u16("kind")?;
        let kind = Kind::from_code(kind_code).ok_or_else(|| DecodeError::Invalid {
            field: "kind",
            reason: format!("unknown code {kind_code}"),
        })?;
        let actor = utf8(r.bytes16("actor", MAX_ACTOR_LEN)?, "actor")?;
        let actor = Actor::new(actor).map_err(|e| invalid("actor", &e))?;
        let ty_code = r.u16("payload type")?;
        let ty = PayloadType::from_code(ty_code).ok_or_else(|| DecodeError::Invalid {
            field: "payload type",
            reason: format!("unknown code {ty_code}"),
        })?;
        let payload = r.bytes32("payload", MAX_PAYLOAD_LEN)?.to_vec();
        let payload = Payload::new(ty, payload).map_err(|e| invalid("payload", &e))?;
        let prev_hash = r.array("prev hash")?;
        Entry::from_stored(seq, time_ms, kind, actor, payload, prev_hash, [0; 32])
            .map_err(|e| invalid("entry", &e))
    }
}

fn invalid(field: &'static str, e: &EntryError) -> DecodeError {
    DecodeError::Invalid {
        field,
        reason: e.to_string(),
    }
}
