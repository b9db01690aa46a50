//! The reserve-proof bundle an auditor receives: its named files, the manifest that lists
//! them with their hashes, the format names and the ledger entry types it carries.
//!
//! Why in `files/`: the service writes bundles and the auditor's verifier (`audit/`) reads
//! them; the format living apart from both lets the verifier check a bundle without importing
//! any service or the database (and later move to its own crate).

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The format tag of a bundle's manifest.
pub const BUNDLE_FORMAT: &str = "strategic-reserve/reserves-bundle/v1";

/// The manifest's file name in a bundle.
pub const MANIFEST: &str = "manifest.json";

/// The format tag of a bundle's `bip322/proof.json`.
pub const BIP322_FORMAT: &str = "strategic-reserve/bip322-proof-of-funds/v1";

/// Path of the BIP-322 form's final `to_sign` ("full" encoding, base64) in a bundle.
pub const BIP322_FULL_PATH: &str = "bip322/to_sign.base64";

/// Path of the BIP-322 form's JSON rendering in a bundle.
pub const BIP322_JSON_PATH: &str = "bip322/proof.json";

/// `type` of the ledger entry recording a proof request.
pub const REQUESTED_TYPE: &str = "reserve_proof_requested";

/// `type` of the ledger entry recording a signature on a proof.
pub const SIGNATURE_TYPE: &str = "reserve_proof_signature";

/// `type` of the ledger entry recording a finalized proof.
pub const FINALIZED_TYPE: &str = "reserve_proof_finalized";

/// `type` of the ledger entry recording an officer's approval of a proof.
pub const APPROVAL_TYPE: &str = "reserve_proof_approval";

/// One real input of a proof: the output it spends and where that was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofOutput {
    /// `txid:vout`.
    pub outpoint: String,
    /// The block that created it.
    pub block_hash: String,
    /// Its height.
    pub height: u32,
    /// Its value (integer satoshis).
    pub value_sat: u64,
    /// The vault it belongs to.
    pub vault: String,
}

/// The JSON rendering of the BIP-322 form in a bundle ([`BIP322_JSON_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bip322ProofJson {
    /// [`BIP322_FORMAT`].
    pub format: String,
    /// The network.
    pub network: String,
    /// The message (the same canonical text as the BIP-127 proof's).
    pub message: String,
    /// The vault whose address is the challenge.
    pub challenge_vault: String,
    /// The challenge address (the first vault's first receive address).
    pub challenge_address: String,
    /// The challenge scriptPubKey (hex).
    pub challenge_script: String,
    /// The `to_spend` txid.
    pub to_spend_txid: String,
    /// The `to_sign` txid.
    pub to_sign_txid: String,
    /// The sum of the UTXOs (integer satoshis).
    pub total_sat: u64,
    /// The UTXOs, in input order (inputs 1..).
    pub utxos: Vec<ProofOutput>,
}

/// A declared descriptor (public, with key origins and checksum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredDescriptor {
    /// The vault.
    pub vault: String,
    /// `external` or `internal`.
    pub keychain: String,
    /// The descriptor.
    pub descriptor: String,
}

/// The message's checkpoint field for a signed note: the note in base64 (one line of
/// printable ASCII).
pub fn checkpoint_field(note: &str) -> String {
    B64.encode(note.as_bytes())
}

/// The signed note a message's checkpoint field carries.
///
/// # Errors
/// A message when the field is not base64 of UTF-8 text.
pub fn decode_checkpoint_field(field: &str) -> Result<String, String> {
    let bytes = B64
        .decode(field.as_bytes())
        .map_err(|e| format!("the checkpoint field is not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "the checkpoint field is not utf-8 text".to_string())
}

/// The auditor's bundle: named files (paths with `/`) and their manifest. Written to a
/// directory by [`Bundle::write_to`], read back by [`Bundle::read_from`], or carried as one
/// JSON document ([`Bundle::to_json`], for the API).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bundle {
    files: BTreeMap<String, Vec<u8>>,
}

/// A path inside a bundle: relative, `/`-separated, each part of `A-Z a-z 0-9 . _ -` and not
/// starting with `.`.
fn check_bundle_path(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.len() <= 200
        && path.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{path:?} is not an acceptable bundle path"))
    }
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// The path.
    pub path: String,
    /// SHA-256 of the bytes (hex).
    pub sha256: String,
    /// Length in bytes.
    pub bytes: u64,
}

/// The manifest (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// Every other file of the bundle, by path.
    pub files: Vec<ManifestFile>,
}

impl Bundle {
    /// A bundle of `files` (every path but [`MANIFEST`]) with a fresh manifest.
    ///
    /// # Errors
    /// A message for an unacceptable path.
    pub fn seal(mut files: BTreeMap<String, Vec<u8>>) -> Result<Self, String> {
        files.remove(MANIFEST);
        let mut listed = Vec::new();
        for (path, bytes) in &files {
            check_bundle_path(path)?;
            listed.push(ManifestFile {
                path: path.clone(),
                sha256: hex::encode(hashcore::sha256(bytes)),
                bytes: bytes.len() as u64,
            });
        }
        let manifest = Manifest {
            format: BUNDLE_FORMAT.to_string(),
            files: listed,
        };
        let mut text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
        text.push('\n');
        files.insert(MANIFEST.to_string(), text.into_bytes());
        Ok(Bundle { files })
    }

    /// The bundle as it is, manifest included and not recomputed (what a reader found).
    pub fn from_files(files: BTreeMap<String, Vec<u8>>) -> Self {
        Bundle { files }
    }

    /// Every file, by path (the manifest included).
    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    /// One file.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// One file as text.
    pub fn text(&self, path: &str) -> Option<&str> {
        self.get(path).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Writes every file under `dir`, which must not exist or be empty; files are never
    /// overwritten.
    ///
    /// # Errors
    /// A message naming the path that failed.
    pub fn write_to(&self, dir: &Path) -> Result<(), String> {
        use std::io::Write as _;
        if dir.exists() {
            let mut entries = std::fs::read_dir(dir)
                .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            if entries.next().is_some() {
                return Err(format!("{} exists and is not empty", dir.display()));
            }
        }
        for (path, bytes) in &self.files {
            check_bundle_path(path)?;
            let full = dir.join(path);
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&full)
                .map_err(|e| format!("cannot create {}: {e}", full.display()))?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", full.display()))?;
        }
        Ok(())
    }

    /// Reads every regular file under `dir` (symbolic links and other odd files are refused).
    ///
    /// # Errors
    /// A message naming the path that failed.
    pub fn read_from(dir: &Path) -> Result<Self, String> {
        let mut files = BTreeMap::new();
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((at, prefix)) = stack.pop() {
            let entries =
                std::fs::read_dir(&at).map_err(|e| format!("cannot read {}: {e}", at.display()))?;
            for e in entries {
                let e = e.map_err(|e| format!("cannot read {}: {e}", at.display()))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                let ty = e
                    .file_type()
                    .map_err(|err| format!("cannot read {}: {err}", e.path().display()))?;
                if ty.is_dir() {
                    stack.push((e.path(), path));
                } else if ty.is_file() {
                    check_bundle_path(&path)?;
                    let bytes = std::fs::read(e.path())
                        .map_err(|err| format!("cannot read {}: {err}", e.path().display()))?;
                    files.insert(path, bytes);
                } else {
                    return Err(format!("{} is not a regular file", e.path().display()));
                }
            }
        }
        Ok(Bundle { files })
    }

    /// The bundle as one JSON document: `{"format", "files": {path: base64}}`.
    pub fn to_json(&self) -> String {
        let files: serde_json::Map<String, Value> = self
            .files
            .iter()
            .map(|(p, b)| (p.clone(), json!(B64.encode(b))))
            .collect();
        json!({"format": BUNDLE_FORMAT, "files": files}).to_string()
    }

    /// Reads [`Bundle::to_json`]'s document.
    ///
    /// # Errors
    /// A message for a malformed document or path.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if v["format"] != BUNDLE_FORMAT {
            return Err(format!("not a {BUNDLE_FORMAT} document"));
        }
        let obj = v["files"].as_object().ok_or("no files")?;
        let mut files = BTreeMap::new();
        for (p, b) in obj {
            check_bundle_path(p)?;
            let bytes = b
                .as_str()
                .and_then(|s| B64.decode(s).ok())
                .ok_or_else(|| format!("{p}: not base64"))?;
            files.insert(p.clone(), bytes);
        }
        Ok(Bundle { files })
    }
}
