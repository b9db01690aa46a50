//! Vault descriptors: the three templates and the validation every descriptor passes.
//!
//! Why here and not in bdk: a reserve vault must be watch-only, every key must carry its origin
//! so hardware signers can find their keys, keys must belong to the vault's network, no key may
//! appear twice, and every spending path must be standard and sane. bdk accepts far more than
//! that; we refuse the rest before anything is created or persisted.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use bdk_wallet::bitcoin::bip32::{ChildNumber, Fingerprint};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::{Network, NetworkKind};
use bdk_wallet::descriptor::calc_checksum;
use bdk_wallet::miniscript::descriptor::{DescriptorType, SinglePubKey, Wildcard};
use bdk_wallet::miniscript::{Descriptor, DescriptorPublicKey, ForEachKey};
pub use policies::policy_key::PolicyKeyError;

/// The BIP-341 "nothing up my sleeve" point: an x-only key nobody knows the secret of, used as
/// the internal key of taproot vaults so that only the script path can spend.
pub const NUMS_POINT: &str = policies::policy_key::NUMS_POINT;

/// Largest witness script that Bitcoin Core relays (standardness, `MAX_STANDARD_P2WSH_SCRIPT_SIZE`).
const MAX_STANDARD_P2WSH_SCRIPT_SIZE: usize = 3600;

/// Largest relative timelock in blocks that `older()` can express (16 bits of nSequence).
pub const MAX_OLDER_BLOCKS: u32 = 65_535;

/// Why a descriptor or template was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DescriptorError {
    /// The text does not parse as a descriptor.
    #[error("descriptor does not parse: {0}")]
    Parse(String),
    /// The `#checksum` suffix does not match the descriptor.
    #[error("descriptor checksum mismatch: found {found}, expected {expected}")]
    ChecksumMismatch {
        /// The checksum in the text.
        found: String,
        /// The checksum of the descriptor text.
        expected: String,
    },
    /// A private key was given; vaults are watch-only.
    #[error("descriptor contains a private key; vaults are watch-only, give public keys only")]
    PrivateKey,
    /// A key lacks its `[fingerprint/path]` origin.
    #[error("key {0} has no key origin ([fingerprint/path]); signers need it to find their keys")]
    MissingOrigin(String),
    /// A key belongs to another network.
    #[error("key {key} is for {found:?}, the vault is on {expected}")]
    WrongNetwork {
        /// The key.
        key: String,
        /// The key's network kind.
        found: NetworkKind,
        /// The vault's network.
        expected: Network,
    },
    /// The same key appears twice.
    #[error("key {0} appears more than once")]
    DuplicateKey(String),
    /// An extended key is not ranged (`/*`) or ranges over hardened children.
    #[error("extended key {0} must end in an unhardened wildcard (/*) below any hardened step")]
    BadDerivation(String),
    /// The descriptor derives a single script: a vault needs fresh addresses.
    #[error("descriptor has no ranged key; a vault needs a fresh address per deposit")]
    NotRanged,
    /// Threshold outside `1..=n`.
    #[error("threshold {k} of {n} keys is out of range (1 <= k <= n)")]
    Threshold {
        /// Required signatures.
        k: usize,
        /// Keys.
        n: usize,
    },
    /// A timelock the vault does not support or that is out of range.
    #[error("timelock {0} out of range: older(N) needs 1 <= N <= 65535 blocks; time-based and absolute locks are not supported")]
    Timelock(String),
    /// The descriptor type is not one a vault uses.
    #[error("descriptor type {0} is not a vault type (wsh or tr)")]
    UnsupportedType(String),
    /// Miniscript's sanity check failed (malleable, missing signatures, or non-standard).
    #[error("miniscript is not sane or not standard: {0}")]
    Insane(String),
    /// The witness script exceeds the standard size.
    #[error("witness script of {0} bytes exceeds the standard limit of 3600 bytes")]
    ScriptTooLarge(usize),
    /// A multipath descriptor must have exactly two paths (receive, change).
    #[error("multipath descriptor must have exactly two paths (<0;1>), found {0}")]
    MultipathCount(usize),
    /// Receive and change descriptors are the same or have different shapes.
    #[error("receive and change descriptors must differ only in the keychain step: {0}")]
    KeychainMismatch(String),
    /// An empty key list.
    #[error("a template needs at least one key in every group")]
    NoKeys,
    /// A path without a relative timelock does not need the policy key (see
    /// [`VaultDescriptor::require_policy_key`]).
    #[error(transparent)]
    PolicyKey(#[from] PolicyKeyError),
}

/// Explicit, loud consent to build a vault in which some keys can spend **without the policy
/// key** and without a timelock, so that the policy signer's rules do not bind those spends.
///
/// Every vault of the reserve needs the policy key on every path without `older` (issue 16);
/// [`Template::build`] enforces it. Only [`Template::build_without_policy_key_guard`] takes this
/// token, and the only way to get one is to spell out what it means:
/// [`AllowWithoutPolicyKey::officers_can_spend_without_the_policy_key`]. Use it for test
/// fixtures and for watch-only proofs over legacy vaults, never for a vault the service creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowWithoutPolicyKey(());

impl AllowWithoutPolicyKey {
    /// The consent token: the vault's officers (or other keys) may spend without the policy
    /// key, bypassing every rule the policy signer enforces.
    pub const fn officers_can_spend_without_the_policy_key() -> Self {
        AllowWithoutPolicyKey(())
    }
}

/// A vault's two validated public descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultDescriptor {
    /// Receive keychain (external).
    pub external: Descriptor<DescriptorPublicKey>,
    /// Change keychain (internal).
    pub internal: Descriptor<DescriptorPublicKey>,
    /// The network every key was checked against.
    pub network: Network,
}

impl VaultDescriptor {
    /// Parses and validates a vault from a BIP-389 multipath descriptor (`<0;1>/*`), or from a
    /// receive descriptor and a change descriptor.
    ///
    /// # Errors
    /// Any [`DescriptorError`]: parse, checksum, private keys, origins, network, duplicates,
    /// derivation, threshold, timelocks, type, sanity, size, keychain shape.
    pub fn parse(
        external: &str,
        internal: Option<&str>,
        network: Network,
    ) -> Result<Self, DescriptorError> {
        let first = parse_public(external)?;
        let (ext, int) = match internal {
            Some(text) => {
                if first.is_multipath() {
                    return Err(DescriptorError::KeychainMismatch(
                        "a multipath descriptor already holds both keychains".into(),
                    ));
                }
                (first, parse_public(text)?)
            }
            None => {
                if !first.is_multipath() {
                    return Err(DescriptorError::KeychainMismatch(
                        "give a change descriptor or a multipath <0;1> descriptor".into(),
                    ));
                }
                let mut singles = first
                    .into_single_descriptors()
                    .map_err(|e| DescriptorError::Parse(e.to_string()))?;
                if singles.len() != 2 {
                    return Err(DescriptorError::MultipathCount(singles.len()));
                }
                let int = singles.pop().ok_or(DescriptorError::MultipathCount(0))?;
                let ext = singles.pop().ok_or(DescriptorError::MultipathCount(1))?;
                (ext, int)
            }
        };
        validate(&ext, network)?;
        validate(&int, network)?;
        if ext == int {
            return Err(DescriptorError::KeychainMismatch(
                "receive and change descriptors are identical".into(),
            ));
        }
        if shape(&ext) != shape(&int) {
            return Err(DescriptorError::KeychainMismatch(
                "receive and change descriptors use different keys or scripts".into(),
            ));
        }
        Ok(VaultDescriptor {
            external: ext,
            internal: int,
            network,
        })
    }

    /// The receive descriptor with its checksum, as the wallet stores and Bitcoin Core prints it.
    pub fn external_string(&self) -> String {
        with_checksum(&body(&self.external))
    }

    /// The change descriptor with its checksum.
    pub fn internal_string(&self) -> String {
        with_checksum(&body(&self.internal))
    }

    /// The BIP-389 multipath form (`<0;1>/*`) with checksum, when the two descriptors differ
    /// only in the keychain step `0` / `1` (true of every template).
    pub fn multipath_string(&self) -> Option<String> {
        let ext = body(&self.external);
        let int = body(&self.internal);
        let merged = ext.replace("/0/*", "/<0;1>/*");
        if merged.replace("/<0;1>/*", "/1/*") == int && merged != ext {
            Some(with_checksum(&merged))
        } else {
            None
        }
    }

    /// Checks the policy-key promise on both keychains: every spending path without a relative
    /// timelock (`older`) needs `policy_key`, and a taproot internal key is the unspendable
    /// [`NUMS_POINT`]. Keys are compared by their x-only public key (for an extended key, the
    /// account key), the way taproot scripts compare them.
    ///
    /// [`VaultDescriptor::parse`] does not run this check (an imported descriptor is parsed
    /// first, then checked against the policy key the caller expects); a vault the service
    /// creates or imports must pass it.
    ///
    /// # Errors
    /// [`PolicyKeyError::SpendsWithout`] naming a minimal set of keys that spends without the
    /// policy key (e.g. "keys O1, O2 can spend without the policy key"),
    /// [`PolicyKeyError::KeyPath`] for a taproot internal key other than NUMS,
    /// [`PolicyKeyError::Lift`] when a descriptor has no semantic policy.
    pub fn require_policy_key(&self, policy_key: &TemplateKey) -> Result<(), PolicyKeyError> {
        let policy = key_identity(&policy_key.0);
        for desc in [&self.external, &self.internal] {
            policies::policy_key::require_policy_key(desc, |k| key_identity(k) == policy, is_nums)?;
        }
        Ok(())
    }

    /// The spending-path shape of this vault (primary only, or with a recovery timelock).
    pub fn recovery_older(&self) -> Option<u32> {
        older_values(&self.external.to_string()).into_iter().max()
    }
}

/// The x-only public key a descriptor key stands for (the account key of an extended key).
fn key_identity(key: &DescriptorPublicKey) -> [u8; 32] {
    match key {
        DescriptorPublicKey::Single(single) => match single.key {
            SinglePubKey::FullKey(pk) => pk.inner.x_only_public_key().0.serialize(),
            SinglePubKey::XOnly(x) => x.serialize(),
        },
        DescriptorPublicKey::XPub(x) => x.xkey.public_key.x_only_public_key().0.serialize(),
        DescriptorPublicKey::MultiXPub(x) => x.xkey.public_key.x_only_public_key().0.serialize(),
    }
}

/// Whether a key is the unspendable BIP-341 NUMS point.
fn is_nums(key: &DescriptorPublicKey) -> bool {
    matches!(key, DescriptorPublicKey::Single(_))
        && policies::policy_key::is_nums(&key_identity(key))
}

/// The descriptor text without its checksum.
fn body(desc: &Descriptor<DescriptorPublicKey>) -> String {
    let text = desc.to_string();
    match text.split_once('#') {
        Some((b, _)) => b.to_string(),
        None => text,
    }
}

/// Appends `#checksum` to a descriptor without one.
pub fn with_checksum(desc: &str) -> String {
    let body = desc.split('#').next().unwrap_or(desc);
    match calc_checksum(body) {
        Ok(sum) => format!("{body}#{sum}"),
        Err(_) => body.to_string(),
    }
}

fn parse_public(text: &str) -> Result<Descriptor<DescriptorPublicKey>, DescriptorError> {
    let text = text.trim();
    let (body, checksum) = match text.split_once('#') {
        Some((b, c)) => (b, Some(c)),
        None => (text, None),
    };
    if let Some(found) = checksum {
        let expected = calc_checksum(body).map_err(|e| DescriptorError::Parse(e.to_string()))?;
        if found != expected {
            return Err(DescriptorError::ChecksumMismatch {
                found: found.to_string(),
                expected,
            });
        }
    }
    if body.contains("xprv") || body.contains("tprv") {
        return Err(DescriptorError::PrivateKey);
    }
    let secp = Secp256k1::signing_only();
    let (desc, keymap) =
        Descriptor::<DescriptorPublicKey>::parse_descriptor(&secp, body).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("k must be") || msg.contains("threshold") {
                DescriptorError::Parse(format!("bad threshold: {msg}"))
            } else {
                DescriptorError::Parse(msg)
            }
        })?;
    if !keymap.is_empty() {
        return Err(DescriptorError::PrivateKey);
    }
    Ok(desc)
}

fn validate(
    desc: &Descriptor<DescriptorPublicKey>,
    network: Network,
) -> Result<(), DescriptorError> {
    match desc.desc_type() {
        DescriptorType::Wsh | DescriptorType::WshSortedMulti | DescriptorType::Tr => {}
        other => return Err(DescriptorError::UnsupportedType(format!("{other:?}"))),
    }
    let mut seen = BTreeSet::new();
    let mut ranged = false;
    let mut problem = None;
    desc.for_each_key(|key| {
        if problem.is_some() {
            return true;
        }
        problem = check_key(key, network, &mut seen, &mut ranged).err();
        true
    });
    if let Some(err) = problem {
        return Err(err);
    }
    if !ranged {
        return Err(DescriptorError::NotRanged);
    }
    let text = desc.to_string();
    if text.contains("after(") {
        return Err(DescriptorError::Timelock("after(..)".into()));
    }
    for n in older_values(&text) {
        if n == 0 || n > MAX_OLDER_BLOCKS {
            return Err(DescriptorError::Timelock(format!("older({n})")));
        }
    }
    desc.sanity_check()
        .map_err(|e| DescriptorError::Insane(e.to_string()))?;
    desc.max_weight_to_satisfy()
        .map_err(|e| DescriptorError::Insane(e.to_string()))?;
    if let Descriptor::Wsh(_) = desc {
        let derived = desc
            .at_derivation_index(0)
            .map_err(|e| DescriptorError::Parse(e.to_string()))?;
        let script = derived
            .explicit_script()
            .map_err(|e| DescriptorError::Insane(e.to_string()))?;
        if script.len() > MAX_STANDARD_P2WSH_SCRIPT_SIZE {
            return Err(DescriptorError::ScriptTooLarge(script.len()));
        }
    }
    Ok(())
}

fn check_key(
    key: &DescriptorPublicKey,
    network: Network,
    seen: &mut BTreeSet<Vec<u8>>,
    ranged: &mut bool,
) -> Result<(), DescriptorError> {
    let expected_kind = NetworkKind::from(network);
    let identity: Vec<u8> = match key {
        DescriptorPublicKey::Single(single) => {
            let x_only = match single.key {
                SinglePubKey::FullKey(pk) => pk.inner.x_only_public_key().0.serialize(),
                SinglePubKey::XOnly(x) => x.serialize(),
            };
            if hex::encode(x_only) == NUMS_POINT {
                // The unspendable internal key of a taproot vault: nobody holds it, so it has
                // no origin, and it may not be used as a signer's key.
                return if single.origin.is_none() && seen.insert(x_only.to_vec()) {
                    Ok(())
                } else {
                    Err(DescriptorError::DuplicateKey(key.to_string()))
                };
            }
            if single.origin.is_none() {
                return Err(DescriptorError::MissingOrigin(key.to_string()));
            }
            x_only.to_vec()
        }
        DescriptorPublicKey::XPub(x) => {
            if x.origin.is_none() {
                return Err(DescriptorError::MissingOrigin(key.to_string()));
            }
            if x.xkey.network != expected_kind {
                return Err(DescriptorError::WrongNetwork {
                    key: key.to_string(),
                    found: x.xkey.network,
                    expected: network,
                });
            }
            let hardened_below = x.derivation_path.into_iter().any(ChildNumber::is_hardened);
            if x.wildcard != Wildcard::Unhardened || hardened_below {
                return Err(DescriptorError::BadDerivation(key.to_string()));
            }
            *ranged = true;
            x.xkey.public_key.x_only_public_key().0.serialize().to_vec()
        }
        DescriptorPublicKey::MultiXPub(_) => {
            // Only seen before splitting into keychains; validation runs on single paths.
            return Err(DescriptorError::BadDerivation(format!(
                "{key} (multipath key inside a single-path descriptor)"
            )));
        }
    };
    if !seen.insert(identity) {
        return Err(DescriptorError::DuplicateKey(key.to_string()));
    }
    Ok(())
}

/// The script shape of a descriptor with keychain steps erased, to check that receive and
/// change descriptors use the same keys and script.
fn shape(desc: &Descriptor<DescriptorPublicKey>) -> String {
    body(desc).replace("/0/*", "/K/*").replace("/1/*", "/K/*")
}

fn older_values(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find("older(") {
        rest = &rest[pos + "older(".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        // A value too large for u32 is out of range as well.
        out.push(digits.parse::<u32>().unwrap_or(u32::MAX));
    }
    out
}

/// A key of a vault template: an account-level extended public key with its origin
/// (`[fingerprint/48'/1'/0'/2']tpub...`), or a single static key with origin (an HSM key,
/// `[fingerprint]02...`: PKCS#11 tokens have no BIP-32).
#[derive(Clone, PartialEq, Eq)]
pub struct TemplateKey(DescriptorPublicKey);

impl TemplateKey {
    /// Parses a key as written in a descriptor, without the `/<0;1>/*` suffix.
    ///
    /// # Errors
    /// [`DescriptorError::Parse`] for a malformed key, [`DescriptorError::PrivateKey`] for a
    /// private key, [`DescriptorError::MissingOrigin`] without an origin,
    /// [`DescriptorError::BadDerivation`] when a derivation suffix is already present.
    pub fn parse(text: &str) -> Result<Self, DescriptorError> {
        let text = text.trim();
        if text.contains("prv") {
            return Err(DescriptorError::PrivateKey);
        }
        let key = DescriptorPublicKey::from_str(text).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("secret") || msg.contains("private") {
                DescriptorError::PrivateKey
            } else {
                DescriptorError::Parse(format!("key {text}: {msg}"))
            }
        })?;
        match &key {
            DescriptorPublicKey::Single(s) if s.origin.is_none() => {
                Err(DescriptorError::MissingOrigin(text.into()))
            }
            DescriptorPublicKey::XPub(x) if x.origin.is_none() => {
                Err(DescriptorError::MissingOrigin(text.into()))
            }
            DescriptorPublicKey::XPub(x)
                if !x.derivation_path.is_empty() || x.wildcard != Wildcard::None =>
            {
                Err(DescriptorError::BadDerivation(format!(
                    "{text} (give the account key; the template adds /<0;1>/*)"
                )))
            }
            DescriptorPublicKey::MultiXPub(_) => Err(DescriptorError::BadDerivation(format!(
                "{text} (give the account key; the template adds /<0;1>/*)"
            ))),
            _ => Ok(TemplateKey(key)),
        }
    }

    /// The master fingerprint of the key's origin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.0.master_fingerprint()
    }

    /// The key as it appears in a template's multipath descriptor.
    fn ranged(&self) -> String {
        match &self.0 {
            DescriptorPublicKey::XPub(_) => format!("{}/<0;1>/*", self.0),
            _ => self.0.to_string(),
        }
    }

    /// Bytes that order keys canonically: the account public key.
    fn sort_key(&self) -> Vec<u8> {
        match &self.0 {
            DescriptorPublicKey::XPub(x) => x.xkey.public_key.serialize().to_vec(),
            DescriptorPublicKey::MultiXPub(x) => x.xkey.public_key.serialize().to_vec(),
            DescriptorPublicKey::Single(s) => match s.key {
                SinglePubKey::FullKey(pk) => pk.inner.serialize().to_vec(),
                SinglePubKey::XOnly(x) => x.serialize().to_vec(),
            },
        }
    }
}

impl fmt::Debug for TemplateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TemplateKey({})", self.0)
    }
}

impl fmt::Display for TemplateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TemplateKey {
    type Err = DescriptorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TemplateKey::parse(s)
    }
}

/// The vault templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// `wsh(sortedmulti(k, officers…, policy_key))`: the policy key is one more cosigner and the
    /// threshold counts it. [`Template::build`] accepts it only with `k` = every key (officers
    /// plus the policy key); with `k` at most the number of officers, officers could spend
    /// alone, and only [`Template::build_without_policy_key_guard`] builds it.
    SortedMulti {
        /// Signatures required.
        k: usize,
        /// Officers' account keys.
        officers: Vec<TemplateKey>,
        /// The policy key (HSM).
        policy_key: TemplateKey,
    },
    /// The policy key AND k of the officers, OR after `older` blocks r of the recovery keys:
    /// `wsh(or_d(and_b(pk(P),a:multi(k,O…)),and_v(v:multi(r,R…),older(N))))`.
    PolicyWithRecovery {
        /// The policy key (HSM).
        policy_key: TemplateKey,
        /// Officer signatures required beside the policy key.
        k: usize,
        /// Officers' account keys.
        officers: Vec<TemplateKey>,
        /// Recovery signatures required.
        r: usize,
        /// Recovery keys.
        recovery: Vec<TemplateKey>,
        /// Relative timelock of the recovery path, in blocks.
        older: u32,
    },
    /// `tr(NUMS, multi_a(k, …))` for vaults without an HSM key. Keys are put in canonical order
    /// (by account public key) because there is no `sortedmulti_a`. It has no policy key, so
    /// [`Template::build`] refuses it; only [`Template::build_without_policy_key_guard`] builds
    /// it (legacy vaults, fixtures).
    TaprootMultiA {
        /// Signatures required.
        k: usize,
        /// Signers' account keys (extended keys only).
        keys: Vec<TemplateKey>,
    },
    /// The taproot vault with a mandatory policy key: the policy key AND k of the officers in
    /// one leaf, OR after `older` blocks r of the recovery keys in the other, and the
    /// unspendable NUMS point as internal key (no key path):
    /// `tr(NUMS,{and_v(v:pk(P),multi_a(k,O…)),and_v(v:multi_a(r,R…),older(N))})`.
    /// Keys inside `multi_a` are in canonical order (by account public key). The policy key
    /// signs with BIP-340 Schnorr, which PKCS#11 tokens lack: it is held sealed under the
    /// token's AES key (`hsm::SealedKey`).
    TaprootPolicyWithRecovery {
        /// The policy key (a single key with origin, `[fingerprint]02…`).
        policy_key: TemplateKey,
        /// Officer signatures required beside the policy key.
        k: usize,
        /// Officers' account keys.
        officers: Vec<TemplateKey>,
        /// Recovery signatures required.
        r: usize,
        /// Recovery keys.
        recovery: Vec<TemplateKey>,
        /// Relative timelock of the recovery path, in blocks.
        older: u32,
    },
}

impl Template {
    /// The multipath descriptor of this template, with checksum.
    ///
    /// # Errors
    /// [`DescriptorError::Threshold`], [`DescriptorError::NoKeys`] or
    /// [`DescriptorError::Timelock`] before the text is even built; the text then goes through
    /// [`VaultDescriptor::parse`] for every other check.
    pub fn descriptor_text(&self) -> Result<String, DescriptorError> {
        let text = match self {
            Template::SortedMulti {
                k,
                officers,
                policy_key,
            } => {
                let n = officers.len() + 1;
                check_threshold(*k, n)?;
                let keys: Vec<String> = std::iter::once(policy_key)
                    .chain(officers)
                    .map(TemplateKey::ranged)
                    .collect();
                format!("wsh(sortedmulti({k},{}))", keys.join(","))
            }
            Template::PolicyWithRecovery {
                policy_key,
                k,
                officers,
                r,
                recovery,
                older,
            } => {
                if officers.is_empty() || recovery.is_empty() {
                    return Err(DescriptorError::NoKeys);
                }
                check_threshold(*k, officers.len())?;
                check_threshold(*r, recovery.len())?;
                if *older == 0 || *older > MAX_OLDER_BLOCKS {
                    return Err(DescriptorError::Timelock(format!("older({older})")));
                }
                let o: Vec<String> = canonical(officers).iter().map(|k| k.ranged()).collect();
                let rk: Vec<String> = canonical(recovery).iter().map(|k| k.ranged()).collect();
                format!(
                    "wsh(or_d(and_b(pk({}),a:multi({k},{})),and_v(v:multi({r},{}),older({older}))))",
                    policy_key.ranged(),
                    o.join(","),
                    rk.join(",")
                )
            }
            Template::TaprootMultiA { k, keys } => {
                if keys.is_empty() {
                    return Err(DescriptorError::NoKeys);
                }
                check_threshold(*k, keys.len())?;
                let ks: Vec<String> = canonical(keys).iter().map(|k| k.ranged()).collect();
                format!("tr({NUMS_POINT},multi_a({k},{}))", ks.join(","))
            }
            Template::TaprootPolicyWithRecovery {
                policy_key,
                k,
                officers,
                r,
                recovery,
                older,
            } => {
                if officers.is_empty() || recovery.is_empty() {
                    return Err(DescriptorError::NoKeys);
                }
                check_threshold(*k, officers.len())?;
                check_threshold(*r, recovery.len())?;
                if *older == 0 || *older > MAX_OLDER_BLOCKS {
                    return Err(DescriptorError::Timelock(format!("older({older})")));
                }
                let o: Vec<String> = canonical(officers).iter().map(|k| k.ranged()).collect();
                let rk: Vec<String> = canonical(recovery).iter().map(|k| k.ranged()).collect();
                format!(
                    "tr({NUMS_POINT},{{and_v(v:pk({}),multi_a({k},{})),and_v(v:multi_a({r},{}),older({older}))}})",
                    policy_key.ranged(),
                    o.join(","),
                    rk.join(",")
                )
            }
        };
        Ok(with_checksum(&text))
    }

    /// The template's policy key, if it has one ([`Template::TaprootMultiA`] has none).
    pub fn policy_key(&self) -> Option<&TemplateKey> {
        match self {
            Template::SortedMulti { policy_key, .. }
            | Template::PolicyWithRecovery { policy_key, .. }
            | Template::TaprootPolicyWithRecovery { policy_key, .. } => Some(policy_key),
            Template::TaprootMultiA { .. } => None,
        }
    }

    /// Builds and validates the vault descriptor of this template, and checks that every path
    /// without a relative timelock needs the template's policy key
    /// ([`VaultDescriptor::require_policy_key`]).
    ///
    /// # Errors
    /// See [`Template::descriptor_text`] and [`VaultDescriptor::parse`];
    /// [`DescriptorError::PolicyKey`] for [`Template::TaprootMultiA`] (no policy key) and for
    /// [`Template::SortedMulti`] with `k` at most the number of officers, naming the keys that
    /// could spend alone.
    pub fn build(&self, network: Network) -> Result<VaultDescriptor, DescriptorError> {
        let vault = VaultDescriptor::parse(&self.descriptor_text()?, None, network)?;
        match self.policy_key() {
            Some(key) => vault.require_policy_key(key)?,
            None => {
                // No policy key at all: name the keys that spend without one.
                for desc in [&vault.external, &vault.internal] {
                    policies::policy_key::require_policy_key(desc, |_| false, is_nums)?;
                }
            }
        }
        Ok(vault)
    }

    /// Builds and validates the vault descriptor of this template **without** the policy-key
    /// check of [`Template::build`]: some keys may spend without the policy key. Every other
    /// check of [`VaultDescriptor::parse`] still runs. See [`AllowWithoutPolicyKey`].
    ///
    /// # Errors
    /// See [`Template::descriptor_text`] and [`VaultDescriptor::parse`].
    pub fn build_without_policy_key_guard(
        &self,
        network: Network,
        _consent: AllowWithoutPolicyKey,
    ) -> Result<VaultDescriptor, DescriptorError> {
        VaultDescriptor::parse(&self.descriptor_text()?, None, network)
    }
}

fn check_threshold(k: usize, n: usize) -> Result<(), DescriptorError> {
    if n == 0 {
        return Err(DescriptorError::NoKeys);
    }
    if k == 0 || k > n {
        return Err(DescriptorError::Threshold { k, n });
    }
    Ok(())
}

fn canonical(keys: &[TemplateKey]) -> Vec<TemplateKey> {
    let mut sorted = keys.to_vec();
    sorted.sort_by_key(TemplateKey::sort_key);
    sorted
}
