//! The policy signer's own state: an append-only, hash-chained log in its own directory, and
//! the anchor that notices a restored older copy of it.
//!
//! Format: `state.log`, JSON lines, one [`Record`] per line: `{seq, prev, time_ms, kind, body,
//! hash}`. `seq` counts from 0 (the genesis record), `prev` is the hex hash of the record before
//! (64 zeros for genesis), `time_ms` is the signer's clock, `kind` names the body's type and
//! `hash` is the hashcore tagged hash (tag [`RECORD_TAG`]) of the canonical encoding
//! ([`record_hash`]). Every append is written and `fsync`ed before the caller sees its result;
//! the whole log is read and verified at start ([`StateLog::open`]).
//!
//! Rollback detection ([`HeadAnchor`]): after every append the head (seq and hash) is also
//! written where a copy of the directory does not reach: a data object in the PKCS#11 token
//! ([`TokenAnchor`]), or, for a software keystore, a MAC'd head file beside the keystore
//! ([`MacFileAnchor`], which notices only a partial rollback: whoever restores the keystore's
//! directory too restores its head file). At start a log behind the anchor, or different at
//! the anchor's seq, is refused as a rollback; a log exactly one record ahead (a crash between
//! the append and the anchor update) is accepted and the anchor brought up to date.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hashcore::TaggedHash;
use hsm::Pkcs11Signer;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The tag of record hashes.
pub const RECORD_TAG: &str = "strategic-reserve/policy-signer/record/v1";
/// The tag of the software anchor's MAC.
pub const HEAD_MAC_TAG: &str = "strategic-reserve/policy-signer/head-mac/v1";
/// The name of the log file inside the state directory.
pub const LOG_FILE: &str = "state.log";

/// Why the state could not be read, verified or extended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Reading or writing a file failed.
    #[error("state i/o on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The state directory already holds a log (init refused).
    #[error("state log {0} already exists")]
    Exists(PathBuf),
    /// No log in the state directory.
    #[error("no state log at {0}: run init first")]
    Missing(PathBuf),
    /// A record does not parse.
    #[error("state log corrupt at line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// Why.
        reason: String,
    },
    /// The hash chain is broken: a record was changed, removed or inserted.
    #[error("state log chain broken at seq {seq}: {reason}")]
    ChainBroken {
        /// The first record that does not fit.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The log is behind the anchor or differs from it: an older copy was restored.
    #[error("rollback detected: {0}")]
    Rollback(String),
    /// The anchor could not be read or written.
    #[error("head anchor {anchor}: {reason}")]
    Anchor {
        /// Which anchor.
        anchor: String,
        /// Why.
        reason: String,
    },
    /// Another process holds the state directory.
    #[error("state directory {0} is in use by another signer process")]
    Locked(PathBuf),
    /// A record body could not be encoded.
    #[error("cannot encode a state record: {0}")]
    Encode(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its position (0 = genesis).
    pub seq: u64,
    /// The previous record's hash, hex (64 zeros for genesis).
    pub prev: String,
    /// The signer's clock when it was appended (Unix ms).
    pub time_ms: i64,
    /// The body's kind.
    pub kind: String,
    /// The body.
    pub body: serde_json::Value,
    /// This record's hash, hex ([`record_hash`]).
    pub hash: String,
}

/// The head of a log: the last record's seq and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The last record's seq.
    pub seq: u64,
    /// The last record's hash.
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

impl Head {
    /// 40 bytes: seq big-endian, then the hash.
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.hash);
        out
    }

    /// The inverse of [`Head::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Option<Head> {
        let seq: [u8; 8] = b.get(..8)?.try_into().ok()?;
        let hash: [u8; 32] = b.get(8..40)?.try_into().ok()?;
        (b.len() == 40).then_some(Head {
            seq: u64::from_be_bytes(seq),
            hash,
        })
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// The hash of a record: the tagged hash ([`RECORD_TAG`]) of seq (u64 BE), prev (32 bytes),
/// time (i64 BE), kind and body (each u64 BE length then bytes; the body as compact JSON with
/// object keys sorted, which is how `serde_json` writes a `Value`).
///
/// # Errors
/// [`StateError::Encode`] when the body cannot be written.
pub fn record_hash(
    seq: u64,
    prev: &[u8; 32],
    time_ms: i64,
    kind: &str,
    body: &serde_json::Value,
) -> Result<[u8; 32], StateError> {
    let body = serde_json::to_vec(body).map_err(|e| StateError::Encode(e.to_string()))?;
    let mut buf = Vec::with_capacity(64 + kind.len() + body.len());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(prev);
    buf.extend_from_slice(&time_ms.to_be_bytes());
    buf.extend_from_slice(&(kind.len() as u64).to_be_bytes());
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(&(body.len() as u64).to_be_bytes());
    buf.extend_from_slice(&body);
    Ok(TaggedHash::new(RECORD_TAG).hash(&buf))
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    (hex::encode(out) == s).then_some(out)
}

/// Where the head is kept out of the state directory's reach.
pub trait HeadAnchor: Send {
    /// A name for messages ("pkcs#11 data object ...").
    fn name(&self) -> String;

    /// The head last stored, if any.
    ///
    /// # Errors
    /// [`StateError::Anchor`] when it cannot be read or fails its integrity check.
    fn load(&self) -> Result<Option<Head>, StateError>;

    /// Stores `head` (overwriting the previous one).
    ///
    /// # Errors
    /// [`StateError::Anchor`] when it cannot be written.
    fn store(&mut self, head: &Head) -> Result<(), StateError>;
}

/// The head in a private `CKO_DATA` token object (`CKA_TOKEN` true) with its own label.
#[derive(Debug)]
pub struct TokenAnchor {
    key: Arc<Pkcs11Signer>,
    label: String,
}

impl TokenAnchor {
    /// The data object `label` on the token of `key` (any open key of the token: the session
    /// is the key's).
    pub fn new(key: Arc<Pkcs11Signer>, label: impl Into<String>) -> Self {
        TokenAnchor {
            key,
            label: label.into(),
        }
    }
}

impl HeadAnchor for TokenAnchor {
    fn name(&self) -> String {
        format!(
            "pkcs#11 data object {:?} on token {:?}",
            self.label,
            self.key.token_label()
        )
    }

    fn load(&self) -> Result<Option<Head>, StateError> {
        let bad = |reason: String| StateError::Anchor {
            anchor: self.name(),
            reason,
        };
        let values = self
            .key
            .read_data_objects(&self.label)
            .map_err(|e| bad(e.to_string()))?;
        let mut best: Option<Head> = None;
        for v in values {
            let h = Head::from_bytes(&v)
                .ok_or_else(|| bad(format!("value of {} bytes is not a head", v.len())))?;
            if best.is_none_or(|b| h.seq > b.seq) {
                best = Some(h);
            }
        }
        Ok(best)
    }

    fn store(&mut self, head: &Head) -> Result<(), StateError> {
        self.key
            .replace_data_object(&self.label, &head.to_bytes())
            .map_err(|e| StateError::Anchor {
                anchor: self.name(),
                reason: e.to_string(),
            })
    }
}

/// The head in a file beside a software keystore, authenticated with a key derived from the
/// keystore's secret. It detects only a partial rollback (the state directory restored, the
/// keystore's directory not): whoever restores both restores the head file with them.
pub struct MacFileAnchor {
    path: PathBuf,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MacFileAnchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacFileAnchor")
            .field("path", &self.path)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct MacHead {
    seq: u64,
    hash: String,
    mac: String,
}

impl MacFileAnchor {
    /// The head file `path`, MAC'd with `key` (derive it from the keystore's secret).
    pub fn new(path: impl Into<PathBuf>, key: Zeroizing<[u8; 32]>) -> Self {
        MacFileAnchor {
            path: path.into(),
            key,
        }
    }

    fn mac(&self, head: &Head) -> [u8; 32] {
        let mut buf = Zeroizing::new(Vec::with_capacity(72));
        buf.extend_from_slice(&self.key[..]);
        buf.extend_from_slice(&head.to_bytes());
        TaggedHash::new(HEAD_MAC_TAG).hash(&buf)
    }
}

impl HeadAnchor for MacFileAnchor {
    fn name(&self) -> String {
        format!("head file {}", self.path.display())
    }

    fn load(&self) -> Result<Option<Head>, StateError> {
        let bad = |reason: &str| StateError::Anchor {
            anchor: self.name(),
            reason: reason.to_owned(),
        };
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        let m: MacHead = serde_json::from_str(&text).map_err(|_| bad("not a head file"))?;
        let hash = parse_hex32(&m.hash).ok_or_else(|| bad("bad hash"))?;
        let head = Head { seq: m.seq, hash };
        if parse_hex32(&m.mac) != Some(self.mac(&head)) {
            return Err(bad(
                "its mac does not verify (edited, or another keystore's)",
            ));
        }
        Ok(Some(head))
    }

    fn store(&mut self, head: &Head) -> Result<(), StateError> {
        let m = MacHead {
            seq: head.seq,
            hash: hex::encode(head.hash),
            mac: hex::encode(self.mac(head)),
        };
        let text = serde_json::to_string(&m).map_err(|e| StateError::Encode(e.to_string()))?;
        write_atomic(&self.path, text.as_bytes())
    }
}

/// Writes `path` through a temporary file, fsync and rename.
///
/// # Errors
/// [`StateError::Io`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// What the core needs from its storage: the verified records, and appending one.
pub trait StateStore: Send {
    /// Every record, verified, in order.
    fn records(&self) -> &[Record];

    /// Appends a record (durably, and the anchor updated) and returns it.
    ///
    /// # Errors
    /// [`StateError`] when it could not be written; then the caller must stop.
    fn append(
        &mut self,
        time_ms: i64,
        kind: &str,
        body: serde_json::Value,
    ) -> Result<Record, StateError>;

    /// Called once the replay accepted every record: a log found one record ahead of its
    /// anchor brings the anchor up to date now.
    ///
    /// # Errors
    /// [`StateError::Anchor`].
    fn confirm(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    /// The head, `None` for an empty store.
    fn head(&self) -> Option<Head> {
        self.records()
            .last()
            .and_then(|r| parse_hex32(&r.hash).map(|hash| Head { seq: r.seq, hash }))
    }
}

/// The log file with its anchor.
pub struct StateLog {
    path: PathBuf,
    file: File,
    records: Vec<Record>,
    anchor: Box<dyn HeadAnchor>,
    /// The head to give the anchor once the replay accepted the record it lacks.
    behind: Option<Head>,
    /// The directory's lock, held while the log is open.
    _lock: File,
}

/// Takes the exclusive lock of `dir` (file `lock`): one signer process per state.
fn lock_dir(dir: &Path) -> Result<File, StateError> {
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

impl std::fmt::Debug for StateLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateLog")
            .field("path", &self.path)
            .field("records", &self.records.len())
            .field("anchor", &self.anchor.name())
            .finish()
    }
}

impl StateLog {
    /// Creates an empty log in `dir` (created with mode 0700 when missing). The first append
    /// must be the genesis record. Refuses when a log exists, or when the anchor already holds
    /// a head (the key holder serves another state already).
    ///
    /// # Errors
    /// [`StateError::Exists`], [`StateError::Anchor`], [`StateError::Io`].
    pub fn create(dir: &Path, anchor: Box<dyn HeadAnchor>) -> Result<Self, StateError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let lock = lock_dir(dir)?;
        let path = dir.join(LOG_FILE);
        if path.exists() {
            return Err(StateError::Exists(path));
        }
        if let Some(h) = anchor.load()? {
            return Err(StateError::Anchor {
                anchor: anchor.name(),
                reason: format!(
                    "already holds a head (seq {}): this key holder keeps another state",
                    h.seq
                ),
            });
        }
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(StateLog {
            path,
            file,
            records: Vec::new(),
            anchor,
            behind: None,
            _lock: lock,
        })
    }

    /// Opens the log in `dir`: reads and verifies every record (the chain) and checks it
    /// against the anchor (rollback). A log one record ahead of the anchor (a crash between
    /// append and anchor update) is accepted; the anchor is brought up to date by
    /// [`StateStore::confirm`] once the replay has accepted that record.
    ///
    /// # Errors
    /// [`StateError::Missing`], [`StateError::Malformed`], [`StateError::ChainBroken`],
    /// [`StateError::Rollback`], [`StateError::Anchor`], [`StateError::Io`].
    pub fn open(dir: &Path, anchor: Box<dyn HeadAnchor>) -> Result<Self, StateError> {
        let path = dir.join(LOG_FILE);
        if !path.exists() {
            return Err(StateError::Missing(path));
        }
        let lock = lock_dir(dir)?;
        let records = read_log(&path)?;
        let last = records.last().ok_or_else(|| StateError::ChainBroken {
            seq: 0,
            reason: "the log is empty (no genesis record)".to_owned(),
        })?;
        let file_head = Head {
            seq: last.seq,
            hash: parse_hex32(&last.hash).ok_or_else(|| StateError::ChainBroken {
                seq: last.seq,
                reason: "bad hash".to_owned(),
            })?,
        };
        let anchored = anchor.load()?.ok_or_else(|| {
            StateError::Rollback(format!(
                "{} holds no head: the state was not made with this key holder, or its head \
                 was removed",
                anchor.name()
            ))
        })?;
        check_against_anchor(&records, file_head, anchored, &anchor.name())?;
        let behind = (file_head.seq == anchored.seq.saturating_add(1)).then_some(file_head);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(StateLog {
            path,
            file,
            records,
            anchor,
            behind,
            _lock: lock,
        })
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn check_against_anchor(
    records: &[Record],
    file: Head,
    anchored: Head,
    name: &str,
) -> Result<(), StateError> {
    if file.seq < anchored.seq {
        return Err(StateError::Rollback(format!(
            "the state log ends at seq {}, but {name} records seq {}: an older copy of the \
             state directory was restored",
            file.seq, anchored.seq
        )));
    }
    let at = usize::try_from(anchored.seq)
        .ok()
        .and_then(|i| records.get(i))
        .and_then(|r| parse_hex32(&r.hash));
    if at != Some(anchored.hash) {
        return Err(StateError::Rollback(format!(
            "the state log's record {} differs from the head {name} records: another or \
             older copy of the state",
            anchored.seq
        )));
    }
    if file.seq > anchored.seq.saturating_add(1) {
        return Err(StateError::Rollback(format!(
            "the state log is {} records ahead of {name} (at most one is possible after a \
             crash)",
            file.seq - anchored.seq
        )));
    }
    Ok(())
}

/// Reads and verifies the chain of the log at `path`.
///
/// # Errors
/// [`StateError::Io`], [`StateError::Malformed`], [`StateError::ChainBroken`].
pub fn read_log(path: &Path) -> Result<Vec<Record>, StateError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut records: Vec<Record> = Vec::new();
    let mut prev = [0u8; 32];
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        let r: Record = serde_json::from_str(&line).map_err(|e| StateError::Malformed {
            line: i + 1,
            reason: e.to_string(),
        })?;
        let expect = records.len() as u64;
        let broken = |reason: String| StateError::ChainBroken {
            seq: expect,
            reason,
        };
        if r.seq != expect {
            return Err(broken(format!(
                "found seq {} where seq {expect} belongs (a record removed or inserted)",
                r.seq
            )));
        }
        if parse_hex32(&r.prev) != Some(prev) {
            return Err(broken(
                "its prev is not the hash of the record before (a record removed, inserted or \
                 changed)"
                    .to_owned(),
            ));
        }
        let h = record_hash(r.seq, &prev, r.time_ms, &r.kind, &r.body)?;
        if parse_hex32(&r.hash) != Some(h) {
            return Err(broken(format!(
                "its hash does not match its content (the {} record was changed)",
                r.kind
            )));
        }
        if let Some(p) = records.last() {
            if r.time_ms < p.time_ms {
                return Err(broken(
                    "its time is before the previous record's".to_owned(),
                ));
            }
        }
        prev = h;
        records.push(r);
    }
    Ok(records)
}

impl StateStore for StateLog {
    fn records(&self) -> &[Record] {
        &self.records
    }

    fn confirm(&mut self) -> Result<(), StateError> {
        if let Some(h) = self.behind.take() {
            self.anchor.store(&h)?;
        }
        Ok(())
    }

    fn append(
        &mut self,
        time_ms: i64,
        kind: &str,
        body: serde_json::Value,
    ) -> Result<Record, StateError> {
        let (seq, prev) = match self.records.last() {
            None => (0, [0u8; 32]),
            Some(r) => (
                r.seq.saturating_add(1),
                parse_hex32(&r.hash).ok_or_else(|| StateError::ChainBroken {
                    seq: r.seq,
                    reason: "bad hash".to_owned(),
                })?,
            ),
        };
        let time_ms = self
            .records
            .last()
            .map_or(time_ms, |r| r.time_ms.max(time_ms));
        let hash = record_hash(seq, &prev, time_ms, kind, &body)?;
        let record = Record {
            seq,
            prev: hex::encode(prev),
            time_ms,
            kind: kind.to_owned(),
            body,
            hash: hex::encode(hash),
        };
        let mut line =
            serde_json::to_vec(&record).map_err(|e| StateError::Encode(e.to_string()))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.records.push(record.clone());
        self.anchor.store(&Head { seq, hash })?;
        Ok(record)
    }
}

/// A state kept in memory only (tests, measurements): no durability, no rollback detection.
#[derive(Debug, Default)]
pub struct MemoryState {
    records: Vec<Record>,
}

impl MemoryState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StateStore for MemoryState {
    fn records(&self) -> &[Record] {
        &self.records
    }

    fn append(
        &mut self,
        time_ms: i64,
        kind: &str,
        body: serde_json::Value,
    ) -> Result<Record, StateError> {
        let (seq, prev) = match self.records.last() {
            None => (0, [0u8; 32]),
            Some(r) => (
                r.seq.saturating_add(1),
                parse_hex32(&r.hash).unwrap_or([0; 32]),
            ),
        };
        let hash = record_hash(seq, &prev, time_ms, kind, &body)?;
        let record = Record {
            seq,
            prev: hex::encode(prev),
            time_ms,
            kind: kind.to_owned(),
            body,
            hash: hex::encode(hash),
        };
        self.records.push(record.clone());
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn head_bytes_round_trip_and_mac_file_detects_edits() {
        let h = Head {
            seq: 7,
            hash: [3; 32],
        };
        assert_eq!(Head::from_bytes(&h.to_bytes()), Some(h));
        assert_eq!(Head::from_bytes(&[0; 39]), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head");
        let mut a = MacFileAnchor::new(&path, Zeroizing::new([1; 32]));
        assert_eq!(a.load().unwrap(), None);
        a.store(&h).unwrap();
        assert_eq!(a.load().unwrap(), Some(h));
        let other = MacFileAnchor::new(&path, Zeroizing::new([2; 32]));
        assert!(other.load().is_err());
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"seq\":7", "\"seq\":6");
        std::fs::write(&path, text).unwrap();
        assert!(a.load().unwrap_err().to_string().contains("mac"));
        assert!(!format!("{a:?}").contains("0101"));
    }
}
