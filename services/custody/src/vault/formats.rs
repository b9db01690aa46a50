//! Export and import of a vault's public descriptors.
//!
//! Three formats are supported:
//!
//! - **BSMS** (BIP-129) descriptor records: `BSMS 1.0`, a descriptor template (`XPUB/**`, with
//!   its checksum), the derivation path restrictions (`/0/*,/1/*`) and the first receive address.
//!   On import the checksum and the first address are verified.
//! - **Caravan** wallet configuration JSON.
//! - **Coldcard** multisig setup files (`Name:`, `Policy:`, `Format:`, `Derivation:` and
//!   `XFP: xpub` lines).
//!
//! Caravan and Coldcard can only describe `sortedmulti` over extended keys with key origins,
//! with `/0/*` (receive) and `/1/*` (change) derived below each key, in `wsh`, `sh(wsh)` or `sh`.
//! Any other vault (miniscript with timelocks, taproot `multi_a`, single keys, other paths) is
//! refused with [`FormatError::Unsupported`] rather than written as a file that would describe
//! different addresses.

use core::fmt::Write as _;
use std::str::FromStr;

use bdk_wallet::bitcoin::address::NetworkUnchecked;
use bdk_wallet::bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, Xpub};
use bdk_wallet::bitcoin::{Address, Network, NetworkKind};
use bdk_wallet::miniscript::descriptor::checksum::desc_checksum;
use bdk_wallet::miniscript::descriptor::{
    DerivPaths, DescriptorMultiXKey, DescriptorXKey, ShInner, SortedMultiVec, Wildcard, WshInner,
};
use bdk_wallet::miniscript::{
    self, Descriptor, DescriptorPublicKey, ForEachKey, ScriptContext, TranslateErr, TranslatePk,
    Translator,
};
use serde::{Deserialize, Serialize};

/// Errors from building, exporting or importing vault descriptors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// A descriptor failed to parse or to be built.
    #[error("invalid descriptor: {0}")]
    Descriptor(#[from] miniscript::Error),
    /// A multipath descriptor did not have exactly two paths.
    #[error(
        "a vault multipath descriptor needs exactly two paths (receive and change), found {0}"
    )]
    PathCount(usize),
    /// The descriptors cannot form a vault (not ranged, hardened steps, mismatched keychains...).
    #[error("invalid vault: {0}")]
    InvalidVault(String),
    /// An extended key is for another network than the vault's.
    #[error("key {key} is not valid on network {network}")]
    NetworkMismatch {
        /// The offending key.
        key: String,
        /// The vault's network.
        network: Network,
    },
    /// External and internal descriptors have no `<a;b>` multipath form.
    #[error("external and internal descriptors have no multipath form: {0}")]
    NotMultipath(String),
    /// Deriving a key or an address failed.
    #[error("address derivation failed: {0}")]
    Derivation(String),
    /// The vault cannot be represented in the requested format.
    #[error("{format} supports only sortedmulti of extended keys with origins (/0/* receive, /1/* change below each key): {reason}")]
    Unsupported {
        /// The format (`bsms`, `caravan`, `coldcard`).
        format: &'static str,
        /// What in the vault the format cannot represent.
        reason: String,
    },
    /// A descriptor checksum does not match its descriptor.
    #[error("descriptor checksum mismatch: computed {computed}, the record says {found}")]
    ChecksumMismatch {
        /// The checksum computed from the descriptor text.
        computed: String,
        /// The checksum written in the record.
        found: String,
    },
    /// The first address written in a BSMS record is not the descriptor's first address.
    #[error(
        "first address mismatch: the descriptor derives {derived}, the record says {recorded}"
    )]
    FirstAddressMismatch {
        /// The first receive address derived from the descriptor.
        derived: String,
        /// The address written in the record.
        recorded: String,
    },
    /// A BSMS record is malformed.
    #[error("invalid bsms record: {0}")]
    Bsms(String),
    /// A Caravan file is not valid JSON of the expected shape.
    #[error("invalid caravan json: {0}")]
    Json(#[from] serde_json::Error),
    /// A Caravan configuration is inconsistent.
    #[error("invalid caravan config: {0}")]
    Caravan(String),
    /// A Coldcard setup file is malformed.
    #[error("invalid coldcard file: {0}")]
    Coldcard(String),
    /// A `k of n` policy with `k == 0`, `k > n` or a key count different from `n`.
    #[error("invalid policy {k} of {n} with {keys} keys: need 1 <= k <= n and n keys")]
    Policy {
        /// Required signers.
        k: usize,
        /// Total signers declared.
        n: usize,
        /// Keys actually given.
        keys: usize,
    },
}

/// A vault's public descriptors, as exported/imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultDescriptors {
    /// Human-readable vault name.
    pub name: String,
    /// The network the vault's keys and addresses are for.
    pub network: Network,
    /// The receive keychain, e.g. `.../0/*`.
    pub external: Descriptor<DescriptorPublicKey>,
    /// The change keychain, e.g. `.../1/*`.
    pub internal: Descriptor<DescriptorPublicKey>,
}

impl VaultDescriptors {
    /// A vault from two single-path ranged descriptors (receive and change).
    ///
    /// # Errors
    ///
    /// [`FormatError::InvalidVault`] if a descriptor is multipath, not ranged, derives hardened
    /// steps below a public key, the two are equal or of different script types;
    /// [`FormatError::NetworkMismatch`] if an extended key is for another network.
    pub fn new(
        name: impl Into<String>,
        network: Network,
        external: Descriptor<DescriptorPublicKey>,
        internal: Descriptor<DescriptorPublicKey>,
    ) -> Result<Self, FormatError> {
        let vault = Self {
            name: name.into(),
            network,
            external,
            internal,
        };
        vault.validate()?;
        Ok(vault)
    }

    /// A vault from a BIP-389 multipath descriptor (`<0;1>/*`): the first path is the receive
    /// keychain, the second the change keychain.
    ///
    /// # Errors
    ///
    /// [`FormatError::PathCount`] unless the descriptor has exactly two paths; otherwise as
    /// [`VaultDescriptors::new`].
    pub fn from_multipath(
        name: impl Into<String>,
        network: Network,
        descriptor: &Descriptor<DescriptorPublicKey>,
    ) -> Result<Self, FormatError> {
        if !descriptor.is_multipath() {
            return Err(FormatError::PathCount(1));
        }
        let singles = descriptor.clone().into_single_descriptors()?;
        let [external, internal]: [Descriptor<DescriptorPublicKey>; 2] = singles
            .try_into()
            .map_err(|v: Vec<_>| FormatError::PathCount(v.len()))?;
        Self::new(name, network, external, internal)
    }

    /// The `<a;b>/*` multipath form (BIP-389) of the two keychains, with its checksum.
    ///
    /// # Errors
    ///
    /// [`FormatError::NotMultipath`] unless every key of the two descriptors is the same key
    /// with derivation paths that differ in exactly one step.
    pub fn multipath_string(&self) -> Result<String, FormatError> {
        let ext_keys = keys_of(&self.external);
        let int_keys = keys_of(&self.internal);
        if ext_keys.len() != int_keys.len() {
            return Err(FormatError::NotMultipath(format!(
                "{} receive keys but {} change keys",
                ext_keys.len(),
                int_keys.len()
            )));
        }
        let mut pairs = Vec::with_capacity(ext_keys.len());
        for (e, i) in ext_keys.iter().zip(&int_keys) {
            pairs.push((e.clone(), merge_keys(e, i)?));
        }
        let multi = self
            .external
            .translate_pk(&mut Merger(pairs))
            .map_err(|e| match e {
                TranslateErr::TranslatorErr(e) => e,
                TranslateErr::OuterError(e) => FormatError::Descriptor(e),
            })?;
        // Only claim the multipath form if it expands back to exactly these two keychains.
        let back = multi.clone().into_single_descriptors()?;
        if back.len() != 2 || back[0] != self.external || back[1] != self.internal {
            return Err(FormatError::NotMultipath(
                "the descriptors differ in more than key derivation steps".to_owned(),
            ));
        }
        Ok(multi.to_string())
    }

    /// The external and internal descriptor strings with their checksums (`desc#checksum`).
    pub fn descriptor_strings(&self) -> (String, String) {
        (self.external.to_string(), self.internal.to_string())
    }

    /// The first `n` addresses of the receive (`internal == false`) or change
    /// (`internal == true`) keychain.
    ///
    /// # Errors
    ///
    /// [`FormatError::Derivation`] if an index cannot be derived (`n > 2^31`) or the descriptor
    /// has no address form.
    pub fn addresses(&self, internal: bool, n: u32) -> Result<Vec<Address>, FormatError> {
        let desc = if internal {
            &self.internal
        } else {
            &self.external
        };
        (0..n)
            .map(|index| {
                desc.at_derivation_index(index)
                    .map_err(|e| FormatError::Derivation(format!("index {index}: {e}")))?
                    .address(self.network)
                    .map_err(|e| FormatError::Derivation(format!("index {index}: {e}")))
            })
            .collect()
    }

    fn validate(&self) -> Result<(), FormatError> {
        let kind = NetworkKind::from(self.network);
        for (which, desc) in [("receive", &self.external), ("change", &self.internal)] {
            if desc.is_multipath() {
                return Err(FormatError::InvalidVault(format!(
                    "the {which} descriptor is multipath; use from_multipath"
                )));
            }
            if !desc.has_wildcard() {
                return Err(FormatError::InvalidVault(format!(
                    "the {which} descriptor has no wildcard; a vault needs ranged descriptors"
                )));
            }
            if desc.for_any_key(|k| k.has_hardened_step() || hardened_wildcard(k)) {
                return Err(FormatError::InvalidVault(format!(
                    "the {which} descriptor derives hardened steps below a public key"
                )));
            }
            for key in keys_of(desc) {
                if let DescriptorPublicKey::XPub(x) = &key {
                    if x.xkey.network != kind {
                        return Err(FormatError::NetworkMismatch {
                            key: key.to_string(),
                            network: self.network,
                        });
                    }
                }
            }
        }
        if self.external == self.internal {
            return Err(FormatError::InvalidVault(
                "receive and change descriptors are the same".to_owned(),
            ));
        }
        if self.external.desc_type() != self.internal.desc_type() {
            return Err(FormatError::InvalidVault(
                "receive and change descriptors have different script types".to_owned(),
            ));
        }
        Ok(())
    }
}

fn hardened_wildcard(key: &DescriptorPublicKey) -> bool {
    match key {
        DescriptorPublicKey::Single(_) => false,
        DescriptorPublicKey::XPub(x) => x.wildcard == Wildcard::Hardened,
        DescriptorPublicKey::MultiXPub(x) => x.wildcard == Wildcard::Hardened,
    }
}

/// The keys of a descriptor, in the order miniscript visits them.
fn keys_of(desc: &Descriptor<DescriptorPublicKey>) -> Vec<DescriptorPublicKey> {
    let mut keys = Vec::new();
    desc.for_each_key(|k| {
        keys.push(k.clone());
        true
    });
    keys
}

/// The multipath key whose two paths are those of `e` (receive) and `i` (change).
fn merge_keys(
    e: &DescriptorPublicKey,
    i: &DescriptorPublicKey,
) -> Result<DescriptorPublicKey, FormatError> {
    if e == i {
        return Ok(e.clone());
    }
    match (e, i) {
        (DescriptorPublicKey::XPub(a), DescriptorPublicKey::XPub(b))
            if a.origin == b.origin
                && a.xkey == b.xkey
                && a.wildcard == b.wildcard
                && a.derivation_path.len() == b.derivation_path.len() =>
        {
            let differing = a
                .derivation_path
                .into_iter()
                .zip(&b.derivation_path)
                .filter(|(x, y)| x != y)
                .count();
            if differing != 1 {
                return Err(FormatError::NotMultipath(format!(
                    "{e} and {i} differ in {differing} derivation steps"
                )));
            }
            let paths = DerivPaths::new(vec![a.derivation_path.clone(), b.derivation_path.clone()])
                .ok_or_else(|| FormatError::NotMultipath("empty derivation paths".to_owned()))?;
            Ok(DescriptorPublicKey::MultiXPub(DescriptorMultiXKey {
                origin: a.origin.clone(),
                xkey: a.xkey,
                derivation_paths: paths,
                wildcard: a.wildcard,
            }))
        }
        _ => Err(FormatError::NotMultipath(format!(
            "{e} and {i} are not the same extended key"
        ))),
    }
}

/// Replaces each receive key by its merged multipath key.
struct Merger(Vec<(DescriptorPublicKey, DescriptorPublicKey)>);

impl Translator<DescriptorPublicKey, DescriptorPublicKey, FormatError> for Merger {
    fn pk(&mut self, pk: &DescriptorPublicKey) -> Result<DescriptorPublicKey, FormatError> {
        self.0
            .iter()
            .find(|(e, _)| e == pk)
            .map(|(_, m)| m.clone())
            .ok_or_else(|| FormatError::NotMultipath(format!("unpaired key {pk}")))
    }

    miniscript::translate_hash_clone!(DescriptorPublicKey, DescriptorPublicKey, FormatError);
}

// ---------------------------------------------------------------------------------------------
// Shared sortedmulti model for Caravan and Coldcard (and the BSMS template).

/// Script types Caravan and Coldcard know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScriptType {
    P2wsh,
    P2shP2wsh,
    P2sh,
}

impl ScriptType {
    fn caravan_name(self) -> &'static str {
        match self {
            ScriptType::P2wsh => "P2WSH",
            ScriptType::P2shP2wsh => "P2SH-P2WSH",
            ScriptType::P2sh => "P2SH",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "P2WSH" => Some(ScriptType::P2wsh),
            "P2SH-P2WSH" | "P2WSH-P2SH" => Some(ScriptType::P2shP2wsh),
            "P2SH" => Some(ScriptType::P2sh),
            _ => None,
        }
    }
}

/// One co-signer: master fingerprint, full path from the master to the xpub, and the xpub.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cosigner {
    fingerprint: Fingerprint,
    path: DerivationPath,
    xpub: Xpub,
}

/// A `k`-of-`keys` sortedmulti vault with `/0/*` receive and `/1/*` change below each key.
#[derive(Debug, Clone)]
struct SortedMulti {
    script: ScriptType,
    k: usize,
    keys: Vec<Cosigner>,
}

fn sortedmulti_parts(
    desc: &Descriptor<DescriptorPublicKey>,
) -> Option<(ScriptType, usize, &[DescriptorPublicKey])> {
    fn parts<Ctx: ScriptContext>(
        s: &SortedMultiVec<DescriptorPublicKey, Ctx>,
    ) -> (usize, &[DescriptorPublicKey]) {
        (s.k(), s.pks())
    }
    match desc {
        Descriptor::Wsh(wsh) => match wsh.as_inner() {
            WshInner::SortedMulti(s) => {
                let (k, pks) = parts(s);
                Some((ScriptType::P2wsh, k, pks))
            }
            WshInner::Ms(_) => None,
        },
        Descriptor::Sh(sh) => match sh.as_inner() {
            ShInner::SortedMulti(s) => {
                let (k, pks) = parts(s);
                Some((ScriptType::P2sh, k, pks))
            }
            ShInner::Wsh(wsh) => match wsh.as_inner() {
                WshInner::SortedMulti(s) => {
                    let (k, pks) = parts(s);
                    Some((ScriptType::P2shP2wsh, k, pks))
                }
                WshInner::Ms(_) => None,
            },
            ShInner::Wpkh(_) | ShInner::Ms(_) => None,
        },
        _ => None,
    }
}

/// The vault as a sortedmulti over xpubs with origins and `/0/*`, `/1/*` below them.
fn as_sortedmulti(v: &VaultDescriptors, format: &'static str) -> Result<SortedMulti, FormatError> {
    let unsupported = |reason: String| FormatError::Unsupported { format, reason };
    let (script, k, ext) = sortedmulti_parts(&v.external).ok_or_else(|| {
        unsupported(format!(
            "the receive descriptor is {:?}, not sortedmulti",
            v.external.desc_type()
        ))
    })?;
    let (int_script, int_k, int) = sortedmulti_parts(&v.internal).ok_or_else(|| {
        unsupported(format!(
            "the change descriptor is {:?}, not sortedmulti",
            v.internal.desc_type()
        ))
    })?;
    if script != int_script || k != int_k || ext.len() != int.len() {
        return Err(unsupported("receive and change policies differ".to_owned()));
    }
    let receive = DerivationPath::from(vec![ChildNumber::Normal { index: 0 }]);
    let change = DerivationPath::from(vec![ChildNumber::Normal { index: 1 }]);
    let mut keys = Vec::with_capacity(ext.len());
    for (e, i) in ext.iter().zip(int) {
        let (DescriptorPublicKey::XPub(e), DescriptorPublicKey::XPub(i)) = (e, i) else {
            return Err(unsupported(format!(
                "{e} is not a single-path extended key"
            )));
        };
        let Some((fingerprint, path)) = &e.origin else {
            return Err(unsupported(format!("{} has no key origin", e.xkey)));
        };
        if e.origin != i.origin || e.xkey != i.xkey {
            return Err(unsupported("receive and change keys differ".to_owned()));
        }
        if e.wildcard != Wildcard::Unhardened
            || i.wildcard != Wildcard::Unhardened
            || e.derivation_path != receive
            || i.derivation_path != change
        {
            return Err(unsupported(format!(
                "{} is not derived as /0/* (receive) and /1/* (change)",
                e.xkey
            )));
        }
        keys.push(Cosigner {
            fingerprint: *fingerprint,
            path: path.clone(),
            xpub: e.xkey,
        });
    }
    Ok(SortedMulti { script, k, keys })
}

/// Builds and validates the vault for a sortedmulti description read from a file.
fn vault_from_sortedmulti(
    name: String,
    network: Network,
    spec: &SortedMulti,
) -> Result<VaultDescriptors, FormatError> {
    let n = spec.keys.len();
    if spec.k == 0 || spec.k > n {
        return Err(FormatError::Policy {
            k: spec.k,
            n,
            keys: n,
        });
    }
    let kind = NetworkKind::from(network);
    for (idx, c) in spec.keys.iter().enumerate() {
        if c.xpub.network != kind {
            return Err(FormatError::NetworkMismatch {
                key: c.xpub.to_string(),
                network,
            });
        }
        if usize::from(c.xpub.depth) != c.path.len() {
            return Err(FormatError::InvalidVault(format!(
                "key {} is at depth {} but its path m/{} has {} steps",
                idx + 1,
                c.xpub.depth,
                c.path,
                c.path.len()
            )));
        }
        if spec.keys[..idx].iter().any(|o| o.xpub == c.xpub) {
            return Err(FormatError::InvalidVault(format!(
                "duplicate key {}",
                c.xpub
            )));
        }
    }
    let keychain = |index: u32| -> Result<Descriptor<DescriptorPublicKey>, FormatError> {
        let pks = spec
            .keys
            .iter()
            .map(|c| {
                DescriptorPublicKey::XPub(DescriptorXKey {
                    origin: Some((c.fingerprint, c.path.clone())),
                    xkey: c.xpub,
                    derivation_path: DerivationPath::from(vec![ChildNumber::Normal { index }]),
                    wildcard: Wildcard::Unhardened,
                })
            })
            .collect();
        Ok(match spec.script {
            ScriptType::P2wsh => Descriptor::new_wsh_sortedmulti(spec.k, pks)?,
            ScriptType::P2shP2wsh => Descriptor::new_sh_wsh_sortedmulti(spec.k, pks)?,
            ScriptType::P2sh => Descriptor::new_sh_sortedmulti(spec.k, pks)?,
        })
    };
    VaultDescriptors::new(name, network, keychain(0)?, keychain(1)?)
}

/// `m/48'/1'/0'/2'` (or with `h` when `alternate`).
fn path_string(path: &DerivationPath, hardened_h: bool) -> String {
    let mut s = String::from("m");
    for child in path {
        // Writing to a String cannot fail.
        let _ = if hardened_h {
            write!(s, "/{child:#}")
        } else {
            write!(s, "/{child}")
        };
    }
    s
}

fn parse_path(s: &str) -> Option<DerivationPath> {
    let s = s.trim();
    if s == "m" {
        return Some(DerivationPath::master());
    }
    let rest = s.strip_prefix("m/")?;
    rest.split('/')
        .map(|c| ChildNumber::from_str(c).ok())
        .collect::<Option<Vec<_>>>()
        .map(Into::into)
}

// ---------------------------------------------------------------------------------------------
// BSMS (BIP-129)

const BSMS_VERSION: &str = "BSMS 1.0";
const NO_PATH_RESTRICTIONS: &str = "No path restrictions";

/// Replaces every key by its BIP-129 template form `[origin]xpub/**`.
struct Templater {
    receive: DerivationPath,
    change: DerivationPath,
    int_keys: Vec<DescriptorPublicKey>,
    ext_keys: Vec<DescriptorPublicKey>,
}

impl Translator<DescriptorPublicKey, String, FormatError> for Templater {
    fn pk(&mut self, pk: &DescriptorPublicKey) -> Result<String, FormatError> {
        let pos =
            self.ext_keys
                .iter()
                .position(|k| k == pk)
                .ok_or_else(|| FormatError::Unsupported {
                    format: "bsms",
                    reason: format!("unpaired key {pk}"),
                })?;
        let Some(i) = self.int_keys.get(pos) else {
            return Err(FormatError::Unsupported {
                format: "bsms",
                reason: format!("unpaired key {pk}"),
            });
        };
        let e = pk;
        if e == i {
            return Ok(pk.to_string());
        }
        match (e, i) {
            (DescriptorPublicKey::XPub(a), DescriptorPublicKey::XPub(b))
                if a.origin == b.origin
                    && a.xkey == b.xkey
                    && a.wildcard == Wildcard::Unhardened
                    && b.wildcard == Wildcard::Unhardened
                    && a.derivation_path == self.receive
                    && b.derivation_path == self.change =>
            {
                let mut s = String::new();
                if let Some((fp, path)) = &a.origin {
                    let _ = write!(s, "[{fp}");
                    for child in path {
                        let _ = write!(s, "/{child}");
                    }
                    s.push(']');
                }
                let _ = write!(s, "{}/**", a.xkey);
                Ok(s)
            }
            _ => Err(FormatError::Unsupported {
                format: "bsms",
                reason: format!(
                    "{e} and {i} are not one extended key with the same receive and change steps as the others"
                ),
            }),
        }
    }

    fn sha256(
        &mut self,
        h: &<DescriptorPublicKey as miniscript::MiniscriptKey>::Sha256,
    ) -> Result<String, FormatError> {
        Ok(h.to_string())
    }

    fn hash256(
        &mut self,
        h: &<DescriptorPublicKey as miniscript::MiniscriptKey>::Hash256,
    ) -> Result<String, FormatError> {
        Ok(h.to_string())
    }

    fn ripemd160(
        &mut self,
        h: &<DescriptorPublicKey as miniscript::MiniscriptKey>::Ripemd160,
    ) -> Result<String, FormatError> {
        Ok(h.to_string())
    }

    fn hash160(
        &mut self,
        h: &<DescriptorPublicKey as miniscript::MiniscriptKey>::Hash160,
    ) -> Result<String, FormatError> {
        Ok(h.to_string())
    }
}

fn suffix_string(path: &DerivationPath) -> String {
    let mut s = String::new();
    for child in path {
        let _ = write!(s, "/{child}");
    }
    s.push_str("/*");
    s
}

/// The BIP-129 descriptor record (round 2, unencrypted) of a vault:
///
/// ```text
/// BSMS 1.0
/// wsh(sortedmulti(2,[fp/48'/1'/0'/2']tpub.../**,...))#checksum
/// /0/*,/1/*
/// <first receive address>
/// ```
///
/// The template's checksum is computed over the template text (with `/**`). BIP-129's own
/// test vectors write templates without a checksum; [`from_bsms`] accepts both. Any descriptor
/// miniscript can express is written (taproot and timelocks included) as long as every key
/// derives the same receive and change steps. BSMS carries no wallet name.
///
/// # Errors
///
/// [`FormatError::Unsupported`] unless every key is one extended key derived with the same
/// receive and change steps (`/A/*` and `/B/*`) below it; [`FormatError::Derivation`] if the
/// first address cannot be derived.
pub fn to_bsms(v: &VaultDescriptors) -> Result<String, FormatError> {
    let ext_keys = keys_of(&v.external);
    let int_keys = keys_of(&v.internal);
    let unsupported = |reason: &str| FormatError::Unsupported {
        format: "bsms",
        reason: reason.to_owned(),
    };
    if ext_keys.len() != int_keys.len() {
        return Err(unsupported(
            "receive and change descriptors have different keys",
        ));
    }
    let first_ranged = ext_keys
        .iter()
        .zip(&int_keys)
        .find_map(|(e, i)| match (e, i) {
            (DescriptorPublicKey::XPub(a), DescriptorPublicKey::XPub(b)) if e != i => {
                Some((a.derivation_path.clone(), b.derivation_path.clone()))
            }
            _ => None,
        });
    let Some((receive, change)) = first_ranged else {
        return Err(unsupported(
            "no extended key differs between receive and change",
        ));
    };
    let mut templater = Templater {
        receive,
        change,
        int_keys,
        ext_keys,
    };
    let template = v
        .external
        .translate_pk(&mut templater)
        .map_err(|e| match e {
            TranslateErr::TranslatorErr(e) => e,
            TranslateErr::OuterError(e) => FormatError::Descriptor(e),
        })?;
    let template = format!("{template:#}");
    let checksum = desc_checksum(&template)?;
    // The record is only written if it expands back to exactly this vault.
    let restrictions = format!(
        "{},{}",
        suffix_string(&templater.receive),
        suffix_string(&templater.change)
    );
    let (external, internal) = expand_template(&template, &restrictions)?;
    if external != v.external || internal != v.internal {
        return Err(unsupported(
            "the template does not expand back to the vault's descriptors",
        ));
    }
    let first = first_address(v)?;
    Ok(format!(
        "{BSMS_VERSION}\n{template}#{checksum}\n{restrictions}\n{first}\n"
    ))
}

fn first_address(v: &VaultDescriptors) -> Result<Address, FormatError> {
    v.addresses(false, 1)?
        .pop()
        .ok_or_else(|| FormatError::Derivation("no first address".to_owned()))
}

fn expand_template(
    template: &str,
    restrictions: &str,
) -> Result<
    (
        Descriptor<DescriptorPublicKey>,
        Descriptor<DescriptorPublicKey>,
    ),
    FormatError,
> {
    let paths: Vec<&str> = restrictions.split(',').map(str::trim).collect();
    let [receive, change] = paths[..] else {
        return Err(FormatError::Bsms(format!(
            "a vault needs exactly two path restrictions (receive and change), found {}",
            paths.len()
        )));
    };
    for p in [receive, change] {
        let well_formed = p.starts_with('/')
            && p.ends_with("/*")
            && p[1..]
                .split('/')
                .all(|s| s == "*" || (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())));
        if !well_formed {
            return Err(FormatError::Bsms(format!(
                "path restriction {p:?} must be /NUM/.../* with unhardened steps"
            )));
        }
    }
    if !template.contains("/**") {
        return Err(FormatError::Bsms(
            "path restrictions given but the template has no /**".to_owned(),
        ));
    }
    let external = Descriptor::from_str(&template.replace("/**", receive))?;
    let internal = Descriptor::from_str(&template.replace("/**", change))?;
    Ok((external, internal))
}

/// Verifies a `desc#checksum` line (if it carries a checksum) and returns the text before `#`.
fn check_checksum(line: &str) -> Result<&str, FormatError> {
    match line.split_once('#') {
        None => Ok(line),
        Some((desc, found)) => {
            let computed = desc_checksum(desc)?;
            if computed != found {
                return Err(FormatError::ChecksumMismatch {
                    computed,
                    found: found.to_owned(),
                });
            }
            Ok(desc)
        }
    }
}

/// Reads a BIP-129 descriptor record (unencrypted) for `network`.
///
/// Accepts a template with `/**` and two path restrictions (receive, change), or a BIP-389
/// multipath descriptor with `No path restrictions`. The descriptor checksum, when present, is
/// verified, and the record's first address must be the vault's first receive address. The
/// returned vault's name is empty: BSMS carries none.
///
/// # Errors
///
/// [`FormatError::Bsms`] for a malformed record, [`FormatError::ChecksumMismatch`],
/// [`FormatError::FirstAddressMismatch`], [`FormatError::NetworkMismatch`], or the errors of
/// [`VaultDescriptors::new`].
pub fn from_bsms(text: &str, network: Network) -> Result<VaultDescriptors, FormatError> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let [version, descriptor, restrictions, address] = lines[..] else {
        return Err(FormatError::Bsms(format!(
            "expected 4 lines, found {}",
            lines.len()
        )));
    };
    if version != BSMS_VERSION {
        return Err(FormatError::Bsms(format!(
            "unsupported version line {version:?}"
        )));
    }
    let desc = check_checksum(descriptor)?;
    let vault = if restrictions.eq_ignore_ascii_case(NO_PATH_RESTRICTIONS) {
        if desc.contains("/**") {
            return Err(FormatError::Bsms(
                "a template (/**) needs path restrictions".to_owned(),
            ));
        }
        VaultDescriptors::from_multipath(String::new(), network, &Descriptor::from_str(desc)?)?
    } else {
        let (external, internal) = expand_template(desc, restrictions)?;
        VaultDescriptors::new(String::new(), network, external, internal)?
    };
    let recorded = Address::<NetworkUnchecked>::from_str(address)
        .map_err(|e| FormatError::Bsms(format!("first address {address:?}: {e}")))?;
    if !recorded.is_valid_for_network(network) {
        return Err(FormatError::Bsms(format!(
            "first address {address} is not for network {network}"
        )));
    }
    let recorded = recorded.assume_checked();
    let derived = first_address(&vault)?;
    if derived != recorded {
        return Err(FormatError::FirstAddressMismatch {
            derived: derived.to_string(),
            recorded: recorded.to_string(),
        });
    }
    Ok(vault)
}

// ---------------------------------------------------------------------------------------------
// Caravan

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CaravanConfig {
    name: String,
    address_type: String,
    network: String,
    #[serde(default = "CaravanClient::public")]
    client: CaravanClient,
    quorum: CaravanQuorum,
    extended_public_keys: Vec<CaravanKey>,
    #[serde(default)]
    starting_address_index: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct CaravanClient {
    #[serde(rename = "type")]
    kind: String,
}

impl CaravanClient {
    fn public() -> Self {
        Self {
            kind: "public".to_owned(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CaravanQuorum {
    required_signers: usize,
    total_signers: usize,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CaravanKey {
    #[serde(default)]
    name: String,
    bip32_path: String,
    xpub: String,
    xfp: String,
}

fn caravan_network(network: Network) -> &'static str {
    match network {
        Network::Bitcoin => "mainnet",
        Network::Regtest => "regtest",
        // Caravan's "testnet" covers testnet, testnet4 and signet.
        _ => "testnet",
    }
}

/// The Caravan wallet configuration JSON of a sortedmulti vault.
///
/// Caravan's `testnet` stands for every test network except regtest; importing it back gives
/// [`Network::Testnet`].
///
/// # Errors
///
/// [`FormatError::Unsupported`] unless the vault is a sortedmulti of extended keys with origins
/// and `/0/*`, `/1/*` below each key.
pub fn to_caravan(v: &VaultDescriptors) -> Result<String, FormatError> {
    let spec = as_sortedmulti(v, "caravan")?;
    let config = CaravanConfig {
        name: v.name.clone(),
        address_type: spec.script.caravan_name().to_owned(),
        network: caravan_network(v.network).to_owned(),
        client: CaravanClient::public(),
        quorum: CaravanQuorum {
            required_signers: spec.k,
            total_signers: spec.keys.len(),
        },
        extended_public_keys: spec
            .keys
            .iter()
            .enumerate()
            .map(|(i, c)| CaravanKey {
                name: format!("key {} ({})", i + 1, c.fingerprint),
                bip32_path: path_string(&c.path, false),
                xpub: c.xpub.to_string(),
                xfp: c.fingerprint.to_string(),
            })
            .collect(),
        starting_address_index: 0,
    };
    Ok(serde_json::to_string_pretty(&config)?)
}

/// Reads a Caravan wallet configuration JSON.
///
/// `network` `mainnet` gives [`Network::Bitcoin`], `testnet` [`Network::Testnet`], `signet`
/// [`Network::Signet`] and `regtest` [`Network::Regtest`]. Fields this module does not use
/// (such as `startingAddressIndex` or per-key `method`) are ignored.
///
/// # Errors
///
/// [`FormatError::Json`] for malformed JSON, [`FormatError::Caravan`] for unknown address types,
/// networks, paths, fingerprints or keys, [`FormatError::Policy`] for an impossible quorum,
/// [`FormatError::NetworkMismatch`] for keys of another network.
pub fn from_caravan(text: &str) -> Result<VaultDescriptors, FormatError> {
    let config: CaravanConfig = serde_json::from_str(text)?;
    let script = ScriptType::parse(&config.address_type).ok_or_else(|| {
        FormatError::Caravan(format!("unsupported addressType {:?}", config.address_type))
    })?;
    let network = match config.network.as_str() {
        "mainnet" => Network::Bitcoin,
        "testnet" => Network::Testnet,
        "signet" => Network::Signet,
        "regtest" => Network::Regtest,
        other => return Err(FormatError::Caravan(format!("unknown network {other:?}"))),
    };
    let (k, n, keys) = (
        config.quorum.required_signers,
        config.quorum.total_signers,
        config.extended_public_keys.len(),
    );
    if k == 0 || k > n || n != keys {
        return Err(FormatError::Policy { k, n, keys });
    }
    let keys = config
        .extended_public_keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let which = i + 1;
            let fingerprint = Fingerprint::from_str(key.xfp.trim()).map_err(|e| {
                FormatError::Caravan(format!("key {which}: xfp {:?}: {e}", key.xfp))
            })?;
            let path = parse_path(&key.bip32_path).ok_or_else(|| {
                FormatError::Caravan(format!(
                    "key {which}: bip32Path {:?} is not m/...",
                    key.bip32_path
                ))
            })?;
            let xpub = Xpub::from_str(key.xpub.trim())
                .map_err(|e| FormatError::Caravan(format!("key {which}: xpub: {e}")))?;
            Ok(Cosigner {
                fingerprint,
                path,
                xpub,
            })
        })
        .collect::<Result<Vec<_>, FormatError>>()?;
    vault_from_sortedmulti(config.name, network, &SortedMulti { script, k, keys })
}

// ---------------------------------------------------------------------------------------------
// Coldcard

/// Coldcard's limit on wallet names.
const COLDCARD_NAME_MAX: usize = 20;
/// Coldcard's limit on co-signers.
const COLDCARD_MAX_SIGNERS: usize = 15;

/// The Coldcard multisig setup file of a sortedmulti vault.
///
/// One `Derivation:` line is written when all keys share their path, otherwise one before each
/// key line. Key lines are `XFP: xpub` with the fingerprint as 8 uppercase hex digits.
///
/// # Errors
///
/// [`FormatError::Unsupported`] unless the vault is a sortedmulti of at most 15 extended keys
/// with origins and `/0/*`, `/1/*` below each key, and its name is 1 to 20 printable characters.
pub fn to_coldcard(v: &VaultDescriptors) -> Result<String, FormatError> {
    let spec = as_sortedmulti(v, "coldcard")?;
    let unsupported = |reason: String| FormatError::Unsupported {
        format: "coldcard",
        reason,
    };
    let name = v.name.as_str();
    if name.is_empty()
        || name.trim() != name
        || name.chars().count() > COLDCARD_NAME_MAX
        || name.chars().any(char::is_control)
    {
        return Err(unsupported(format!(
            "the wallet name must be 1 to {COLDCARD_NAME_MAX} printable characters, without surrounding spaces"
        )));
    }
    if spec.keys.len() > COLDCARD_MAX_SIGNERS {
        return Err(unsupported(format!(
            "at most {COLDCARD_MAX_SIGNERS} co-signers"
        )));
    }
    let mut out = String::new();
    let _ = writeln!(out, "# Coldcard multisig setup file (exported by custody)");
    let _ = writeln!(out, "Name: {name}");
    let _ = writeln!(out, "Policy: {} of {}", spec.k, spec.keys.len());
    let format = spec.script.caravan_name();
    let _ = writeln!(out, "Format: {format}");
    let shared = spec
        .keys
        .iter()
        .all(|c| spec.keys.first().is_some_and(|f| f.path == c.path));
    if let (true, Some(first)) = (shared, spec.keys.first()) {
        let _ = writeln!(out, "Derivation: {}", path_string(&first.path, true));
    }
    out.push('\n');
    for c in &spec.keys {
        if !shared {
            let _ = writeln!(out, "Derivation: {}", path_string(&c.path, true));
        }
        let xfp = c.fingerprint.to_string().to_ascii_uppercase();
        let _ = writeln!(out, "{xfp}: {}", c.xpub);
    }
    Ok(out)
}

/// Reads a Coldcard multisig setup file for `network`.
///
/// `#` comments and blank lines are ignored; header keys are case-insensitive. Each key line
/// uses the most recent `Derivation:` line. `Format:` defaults to P2SH as on Coldcard.
///
/// # Errors
///
/// [`FormatError::Coldcard`] for malformed or missing lines, [`FormatError::Policy`] when
/// `k > n`, `k == 0` or the key count is not `n`, [`FormatError::NetworkMismatch`] for keys of
/// another network.
pub fn from_coldcard(text: &str, network: Network) -> Result<VaultDescriptors, FormatError> {
    let err = |line: usize, reason: String| FormatError::Coldcard(format!("line {line}: {reason}"));
    let mut name: Option<String> = None;
    let mut policy: Option<(usize, usize)> = None;
    let mut script = ScriptType::P2sh;
    let mut derivation: Option<DerivationPath> = None;
    let mut keys = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((label, value)) = line.split_once(':') else {
            return Err(err(
                line_no,
                format!("expected `label: value`, found {line:?}"),
            ));
        };
        let (label, value) = (label.trim(), value.trim());
        match label.to_ascii_lowercase().as_str() {
            "name" => name = Some(value.to_owned()),
            "policy" => {
                let parsed = value
                    .split_once(" of ")
                    .or_else(|| value.split_once('/'))
                    .and_then(|(k, n)| {
                        Some((
                            k.trim().parse::<usize>().ok()?,
                            n.trim().parse::<usize>().ok()?,
                        ))
                    });
                policy =
                    Some(parsed.ok_or_else(|| {
                        err(line_no, format!("policy {value:?} is not `k of n`"))
                    })?);
            }
            "format" => {
                script = ScriptType::parse(value)
                    .ok_or_else(|| err(line_no, format!("unsupported format {value:?}")))?;
            }
            "derivation" => {
                derivation =
                    Some(parse_path(value).ok_or_else(|| {
                        err(line_no, format!("derivation {value:?} is not m/..."))
                    })?);
            }
            xfp if xfp.len() == 8 && xfp.bytes().all(|b| b.is_ascii_hexdigit()) => {
                let fingerprint = Fingerprint::from_str(xfp)
                    .map_err(|e| err(line_no, format!("fingerprint {label:?}: {e}")))?;
                let xpub = Xpub::from_str(value).map_err(|e| err(line_no, format!("xpub: {e}")))?;
                let path = derivation.clone().ok_or_else(|| {
                    err(line_no, "key line before any Derivation line".to_owned())
                })?;
                keys.push(Cosigner {
                    fingerprint,
                    path,
                    xpub,
                });
            }
            _ => return Err(err(line_no, format!("unknown line {label:?}"))),
        }
    }
    let name = name.ok_or_else(|| FormatError::Coldcard("missing Name line".to_owned()))?;
    let (k, n) = policy.ok_or_else(|| FormatError::Coldcard("missing Policy line".to_owned()))?;
    if keys.is_empty() {
        return Err(FormatError::Coldcard("no key lines".to_owned()));
    }
    if k == 0 || k > n || n != keys.len() {
        return Err(FormatError::Policy {
            k,
            n,
            keys: keys.len(),
        });
    }
    vault_from_sortedmulti(name, network, &SortedMulti { script, k, keys })
}
