//! Vaults: watch-only multisig descriptor wallets that hold the reserve.
//!
//! Why a wrapper around bdk's `Wallet`: the service never holds a spending quorum of keys, so a
//! vault is created only from validated public descriptors ([`descriptor`]), and every change of
//! its state leaves as a bdk `ChangeSet` that the edge (treasury) persists in its own database.
//! Nothing here does I/O: blocks and mempool transactions are handed in by the caller, and the
//! PSBT builder ([`spend`]) is a pure function of the vault's state and the request.

pub mod combine;
pub mod descriptor;
pub mod formats;
pub mod spend;

use std::collections::BTreeMap;
use std::sync::Arc;

use bdk_wallet::bitcoin::address::NetworkUnchecked;
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::{
    Address, Amount, Block, Network, OutPoint, PublicKey, ScriptBuf, Transaction, Txid,
};
use bdk_wallet::chain::{BlockId, ChainPosition, ConfirmationBlockTime};
use bdk_wallet::miniscript::descriptor::DescriptorPublicKey;
use bdk_wallet::miniscript::{Descriptor, ForEachKey};
use bdk_wallet::{ChangeSet, KeychainKind, LocalOutput, Wallet};

use crate::ledger::{Actor, EntryDraft, EntryError, Kind, Payload};
use serde_json::json;

pub use descriptor::{
    AllowWithoutPolicyKey, DescriptorError, PolicyKeyError, Template, TemplateKey, VaultDescriptor,
};

/// Default gap limit: how many unused receive addresses may be handed out in a row.
pub const DEFAULT_GAP_LIMIT: u32 = 100;

/// Errors of vault creation, loading and queries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The descriptor was refused.
    #[error(transparent)]
    Descriptor(#[from] DescriptorError),
    /// bdk refused the descriptors.
    #[error("wallet rejected the descriptors: {0}")]
    Wallet(String),
    /// A stored vault could not be loaded.
    #[error("vault {name} could not be loaded: {reason}")]
    Load {
        /// The vault.
        name: String,
        /// Why.
        reason: String,
    },
    /// A vault name that is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("vault name {0:?} is invalid: use 1-64 characters of A-Z a-z 0-9 . _ -")]
    BadName(String),
    /// Too many unused receive addresses were handed out.
    #[error("gap limit reached: {unused} receive addresses are unused (limit {limit}); wait for deposits or raise the gap limit")]
    GapLimit {
        /// Unused addresses handed out.
        unused: u32,
        /// The configured limit.
        limit: u32,
    },
    /// An address of another network.
    #[error("address {address} is not valid on {network}")]
    AddressNetwork {
        /// The address as given.
        address: String,
        /// The vault's network.
        network: Network,
    },
    /// The address does not belong to the vault.
    #[error("address {0} does not belong to this vault (searched receive and change up to the revealed index plus the gap limit)")]
    NotOurs(String),
    /// A block does not connect to the vault's chain.
    #[error("block {height} does not connect to the vault's chain: {reason}")]
    Connect {
        /// Height of the block.
        height: u32,
        /// Why.
        reason: String,
    },
}

/// What a vault is made of, as stored beside its changesets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// Unique name.
    pub name: String,
    /// Validated descriptors.
    pub descriptor: VaultDescriptor,
    /// Height from which sync starts (no deposit can be older).
    pub birthday: u32,
    /// Gap limit for receive addresses.
    pub gap_limit: u32,
}

impl VaultConfig {
    /// A config with the default gap limit.
    ///
    /// # Errors
    /// [`VaultError::BadName`] for a name outside `[A-Za-z0-9._-]{1,64}`.
    pub fn new(name: &str, descriptor: VaultDescriptor, birthday: u32) -> Result<Self, VaultError> {
        check_name(name)?;
        Ok(VaultConfig {
            name: name.to_string(),
            descriptor,
            birthday,
            gap_limit: DEFAULT_GAP_LIMIT,
        })
    }
}

fn check_name(name: &str) -> Result<(), VaultError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(VaultError::BadName(name.to_string()))
    }
}

/// Which keychain an address or output belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Keychain {
    /// Receive addresses.
    External,
    /// Change addresses.
    Internal,
}

impl Keychain {
    fn bdk(self) -> KeychainKind {
        match self {
            Keychain::External => KeychainKind::External,
            Keychain::Internal => KeychainKind::Internal,
        }
    }
    fn from_bdk(k: KeychainKind) -> Self {
        match k {
            KeychainKind::External => Keychain::External,
            KeychainKind::Internal => Keychain::Internal,
        }
    }
    /// `"receive"` or `"change"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Keychain::External => "receive",
            Keychain::Internal => "change",
        }
    }
}

/// An address of the vault with where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultAddress {
    /// The address.
    pub address: Address,
    /// Keychain.
    pub keychain: Keychain,
    /// Derivation index.
    pub index: u32,
}

/// The answer to "is this address ours?": where it derives from, with its keys and script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressOwnership {
    /// The address.
    pub address: Address,
    /// Keychain.
    pub keychain: Keychain,
    /// Derivation index.
    pub index: u32,
    /// Each key of the script at this index: origin fingerprint, full path, public key.
    pub keys: Vec<DerivedKey>,
    /// The witness script (wsh) or the output script (tr).
    pub script: ScriptBuf,
    /// The descriptor at this index.
    pub descriptor: String,
}

/// One key of a derived script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedKey {
    /// Origin master fingerprint.
    pub fingerprint: String,
    /// Full derivation path from the master (`m/48'/1'/0'/2'/0/5`).
    pub path: String,
    /// The derived public key (compressed, hex).
    pub public_key: String,
}

/// Balances in satoshis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VaultBalance {
    /// Confirmed, spendable.
    pub confirmed: Amount,
    /// Unconfirmed (in the mempool), ours or incoming.
    pub pending: Amount,
    /// Coinbase outputs not yet mature.
    pub immature: Amount,
}

impl VaultBalance {
    /// Confirmed + pending + immature.
    ///
    /// # Errors
    /// `None` on overflow (impossible for real bitcoin amounts).
    pub fn total(&self) -> Option<Amount> {
        self.confirmed
            .checked_add(self.pending)?
            .checked_add(self.immature)
    }
}

/// One unspent output of the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultUtxo {
    /// Outpoint.
    pub outpoint: OutPoint,
    /// Value.
    pub value: Amount,
    /// Keychain of its script.
    pub keychain: Keychain,
    /// Derivation index of its script.
    pub index: u32,
    /// Confirmation height, `None` while unconfirmed.
    pub height: Option<u32>,
    /// Confirmations at the vault's tip (0 while unconfirmed).
    pub confirmations: u32,
}

/// A change the vault saw between two syncs: the material of deposit and confirmation events
/// (and ledger entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultEvent {
    /// A transaction that pays the vault appeared.
    Deposit {
        /// Transaction.
        txid: Txid,
        /// Net amount received by the vault.
        amount: Amount,
        /// Height if confirmed.
        height: Option<u32>,
    },
    /// A transaction spending from the vault appeared.
    Spend {
        /// Transaction.
        txid: Txid,
        /// Net amount that left the vault (outputs to others plus fee).
        amount: Amount,
        /// Height if confirmed.
        height: Option<u32>,
    },
    /// A known transaction confirmed (or re-confirmed in another block after a reorg).
    Confirmed {
        /// Transaction.
        txid: Txid,
        /// Height of its block.
        height: u32,
    },
    /// A confirmed transaction lost its block in a reorg and is unconfirmed again.
    Unconfirmed {
        /// Transaction.
        txid: Txid,
    },
    /// A transaction is no longer part of the best chain nor the mempool (reorged coinbase,
    /// replaced or evicted).
    Removed {
        /// Transaction.
        txid: Txid,
    },
}

impl VaultEvent {
    /// The transaction the event is about.
    pub fn txid(&self) -> Txid {
        match self {
            VaultEvent::Deposit { txid, .. }
            | VaultEvent::Spend { txid, .. }
            | VaultEvent::Confirmed { txid, .. }
            | VaultEvent::Unconfirmed { txid }
            | VaultEvent::Removed { txid } => *txid,
        }
    }

    /// The reserve-ledger entry recording this event for `vault`. The payload is canonical
    /// JSON (sorted keys, no spaces, integer satoshis).
    ///
    /// # Errors
    /// [`EntryError`] when the actor or payload is invalid.
    pub fn ledger_draft(&self, vault: &str, time_ms: i64) -> Result<EntryDraft, EntryError> {
        let (kind, body) = match self {
            VaultEvent::Deposit {
                txid,
                amount,
                height,
            } => (
                Kind::DepositSeen,
                json!({"event": "deposit", "vault": vault, "txid": txid.to_string(),
                       "amount_sat": amount.to_sat(), "height": height}),
            ),
            VaultEvent::Spend {
                txid,
                amount,
                height,
            } => (
                if height.is_some() {
                    Kind::Confirmation
                } else {
                    Kind::Broadcast
                },
                json!({"event": "spend", "vault": vault, "txid": txid.to_string(),
                       "amount_sat": amount.to_sat(), "height": height}),
            ),
            VaultEvent::Confirmed { txid, height } => (
                Kind::Confirmation,
                json!({"event": "confirmed", "vault": vault, "txid": txid.to_string(),
                       "height": height}),
            ),
            VaultEvent::Unconfirmed { txid } => (
                Kind::ChainReorg,
                json!({"event": "unconfirmed", "vault": vault, "txid": txid.to_string()}),
            ),
            VaultEvent::Removed { txid } => (
                Kind::ChainReorg,
                json!({"event": "removed", "vault": vault, "txid": txid.to_string()}),
            ),
        };
        Ok(EntryDraft {
            time_ms,
            kind,
            actor: Actor::new(format!("vault:{vault}"))?,
            payload: Payload::bytes(body.to_string().into_bytes())?,
        })
    }
}

/// A ledger entry recording a vault-level action (created, imported, address issued, PSBT
/// built) with a canonical JSON payload.
///
/// # Errors
/// [`EntryError`] when the actor or payload is invalid.
pub fn ledger_record(
    kind: Kind,
    actor: &str,
    body: &serde_json::Value,
    time_ms: i64,
) -> Result<EntryDraft, EntryError> {
    Ok(EntryDraft {
        time_ms,
        kind,
        actor: Actor::new(actor)?,
        payload: Payload::bytes(body.to_string().into_bytes())?,
    })
}

/// A watch-only multisig vault.
#[derive(Debug)]
pub struct Vault {
    config: VaultConfig,
    wallet: Wallet,
}

type TxSnapshot = BTreeMap<Txid, Option<u32>>;

impl Vault {
    /// Creates a new vault. Returns the vault; its first changeset is staged (see
    /// [`Vault::take_changes`]).
    ///
    /// # Errors
    /// [`VaultError::Wallet`] when bdk refuses the descriptors.
    pub fn create(config: VaultConfig) -> Result<Self, VaultError> {
        check_name(&config.name)?;
        let wallet = Wallet::create(
            config.descriptor.external_string(),
            config.descriptor.internal_string(),
        )
        .network(config.descriptor.network)
        .lookahead(config.gap_limit)
        .use_spk_cache(true)
        .create_wallet_no_persist()
        .map_err(|e| VaultError::Wallet(e.to_string()))?;
        Ok(Vault { config, wallet })
    }

    /// Loads a vault from its config and the merge of all its persisted changesets.
    ///
    /// # Errors
    /// [`VaultError::Load`] when the changeset is empty, for another network, or holds other
    /// descriptors than the config.
    pub fn load(config: VaultConfig, changeset: ChangeSet) -> Result<Self, VaultError> {
        let load_err = |reason: String| VaultError::Load {
            name: config.name.clone(),
            reason,
        };
        let wallet = Wallet::load()
            .descriptor(
                KeychainKind::External,
                Some(config.descriptor.external_string()),
            )
            .descriptor(
                KeychainKind::Internal,
                Some(config.descriptor.internal_string()),
            )
            .check_network(config.descriptor.network)
            .lookahead(config.gap_limit)
            .use_spk_cache(true)
            .load_wallet_no_persist(changeset)
            .map_err(|e| load_err(e.to_string()))?
            .ok_or_else(|| load_err("no stored state".into()))?;
        Ok(Vault { config, wallet })
    }

    /// The vault's config.
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    /// The vault's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The network.
    pub fn network(&self) -> Network {
        self.config.descriptor.network
    }

    /// Changes since the last call, to persist. `None` when nothing changed.
    pub fn take_changes(&mut self) -> Option<ChangeSet> {
        self.wallet.take_staged()
    }

    /// The underlying bdk wallet (read-only).
    pub fn wallet(&self) -> &Wallet {
        &self.wallet
    }

    pub(crate) fn wallet_mut(&mut self) -> &mut Wallet {
        &mut self.wallet
    }

    /// The public descriptor of a keychain.
    pub fn public_descriptor(&self, keychain: Keychain) -> &Descriptor<DescriptorPublicKey> {
        self.wallet.public_descriptor(keychain.bdk())
    }

    /// The address at `index` without revealing it.
    pub fn peek_address(&self, keychain: Keychain, index: u32) -> VaultAddress {
        let info = self.wallet.peek_address(keychain.bdk(), index);
        VaultAddress {
            address: info.address,
            keychain,
            index: info.index,
        }
    }

    /// Hands out the next receive address (the index is persisted through the changeset).
    ///
    /// # Errors
    /// [`VaultError::GapLimit`] when `gap_limit` addresses in a row are unused: a wallet that
    /// restores from the descriptors would not look further.
    pub fn next_receive_address(&mut self) -> Result<VaultAddress, VaultError> {
        let unused = self.unused_receive_count();
        if unused >= self.config.gap_limit {
            return Err(VaultError::GapLimit {
                unused,
                limit: self.config.gap_limit,
            });
        }
        let info = self.wallet.reveal_next_address(KeychainKind::External);
        Ok(VaultAddress {
            address: info.address,
            keychain: Keychain::External,
            index: info.index,
        })
    }

    /// Reveals the next change address (used by the PSBT builder for consolidations).
    pub fn next_change_address(&mut self) -> VaultAddress {
        let info = self.wallet.reveal_next_address(KeychainKind::Internal);
        VaultAddress {
            address: info.address,
            keychain: Keychain::Internal,
            index: info.index,
        }
    }

    /// Receive addresses handed out after the last one that received funds.
    pub fn unused_receive_count(&self) -> u32 {
        let index = self.wallet.spk_index();
        let next = self.wallet.next_derivation_index(KeychainKind::External);
        let last_used = index
            .last_used_index(KeychainKind::External)
            .map_or(0, |i| i.saturating_add(1));
        next.saturating_sub(last_used)
    }

    /// The highest revealed index of a keychain.
    pub fn revealed_index(&self, keychain: Keychain) -> Option<u32> {
        self.wallet.derivation_index(keychain.bdk())
    }

    /// Says whether an address belongs to the vault and how: keychain, index, keys, script.
    ///
    /// # Errors
    /// [`VaultError::AddressNetwork`] for another network's address, [`VaultError::NotOurs`]
    /// when no index up to the revealed one plus the gap limit derives it.
    pub fn verify_address(&self, address: &str) -> Result<AddressOwnership, VaultError> {
        let network = self.network();
        let parsed = address
            .trim()
            .parse::<Address<NetworkUnchecked>>()
            .map_err(|_| VaultError::NotOurs(address.to_string()))?;
        let checked = parsed
            .require_network(network)
            .map_err(|_| VaultError::AddressNetwork {
                address: address.to_string(),
                network,
            })?;
        let spk = checked.script_pubkey();
        let found = self.wallet.derivation_of_spk(spk.clone()).or_else(|| {
            [Keychain::External, Keychain::Internal]
                .into_iter()
                .find_map(|kc| {
                    let end = self
                        .revealed_index(kc)
                        .unwrap_or(0)
                        .saturating_add(self.config.gap_limit);
                    (0..=end)
                        .find(|i| self.peek_address(kc, *i).address.script_pubkey() == spk)
                        .map(|i| (kc.bdk(), i))
                })
        });
        let (keychain, index) = found.ok_or_else(|| VaultError::NotOurs(address.to_string()))?;
        let desc = self
            .wallet
            .public_descriptor(keychain)
            .at_derivation_index(index)
            .map_err(|e| VaultError::Wallet(e.to_string()))?;
        let secp = Secp256k1::verification_only();
        let mut keys = Vec::new();
        desc.for_each_key(|k| {
            let origin = k.as_descriptor_public_key();
            let public_key = k
                .derive_public_key(&secp)
                .map(|pk: PublicKey| pk.to_string())
                .unwrap_or_default();
            keys.push(DerivedKey {
                fingerprint: origin.master_fingerprint().to_string(),
                path: origin
                    .full_derivation_path()
                    .map(|p| format!("m/{p}"))
                    .unwrap_or_else(|| "m".into()),
                public_key,
            });
            true
        });
        let script = desc
            .explicit_script()
            .unwrap_or_else(|_| desc.script_pubkey());
        Ok(AddressOwnership {
            address: checked,
            keychain: Keychain::from_bdk(keychain),
            index,
            keys,
            script,
            descriptor: desc.to_string(),
        })
    }

    /// Balances.
    pub fn balance(&self) -> VaultBalance {
        let b = self.wallet.balance();
        VaultBalance {
            confirmed: b.confirmed,
            pending: b.trusted_pending + b.untrusted_pending,
            immature: b.immature,
        }
    }

    /// Height of the vault's chain tip.
    pub fn tip_height(&self) -> u32 {
        self.wallet.latest_checkpoint().height()
    }

    /// The vault's chain tip.
    pub fn tip(&self) -> BlockId {
        self.wallet.latest_checkpoint().block_id()
    }

    /// The latest checkpoint (what a block emitter starts from).
    pub fn latest_checkpoint(&self) -> bdk_wallet::chain::CheckPoint {
        self.wallet.latest_checkpoint()
    }

    /// Unspent outputs, ordered by outpoint.
    pub fn utxos(&self) -> Vec<VaultUtxo> {
        let tip = self.tip_height();
        let mut out: Vec<VaultUtxo> = self
            .wallet
            .list_unspent()
            .map(|o| utxo_of(&o, tip))
            .collect();
        out.sort_by_key(|u| u.outpoint);
        out
    }

    /// One unspent output.
    pub fn utxo(&self, outpoint: OutPoint) -> Option<VaultUtxo> {
        let o = self.wallet.get_utxo(outpoint)?;
        if o.is_spent {
            return None;
        }
        Some(utxo_of(&o, self.tip_height()))
    }

    /// Unconfirmed transactions of the vault (what a mempool emitter must be told about).
    pub fn unconfirmed_transactions(&self) -> Vec<Arc<Transaction>> {
        self.wallet
            .transactions()
            .filter(|t| !t.chain_position.is_confirmed())
            .map(|t| t.tx_node.tx.clone())
            .collect()
    }

    /// A transaction the vault knows.
    pub fn transaction(&self, txid: Txid) -> Option<Arc<Transaction>> {
        self.wallet.get_tx(txid).map(|t| t.tx_node.tx.clone())
    }

    /// Confirmation height of a canonical transaction; `Some(None)` while unconfirmed.
    pub fn tx_height(&self, txid: Txid) -> Option<Option<u32>> {
        self.wallet
            .get_tx(txid)
            .map(|t| position_height(&t.chain_position))
    }

    fn snapshot(&self) -> TxSnapshot {
        self.wallet
            .transactions()
            .map(|t| (t.tx_node.txid, position_height(&t.chain_position)))
            .collect()
    }

    /// Applies a block that connects to `connected_to`.
    ///
    /// # Errors
    /// [`VaultError::Connect`] when the block does not connect (the caller restarts from the
    /// vault's checkpoint).
    pub fn apply_block(
        &mut self,
        block: &Block,
        height: u32,
        connected_to: BlockId,
    ) -> Result<(), VaultError> {
        self.wallet
            .apply_block_connected_to(block, height, connected_to)
            .map_err(|e| VaultError::Connect {
                height,
                reason: e.to_string(),
            })
    }

    /// Applies the node's mempool: transactions with their first-seen times, and evictions.
    pub fn apply_mempool(&mut self, txs: Vec<(Arc<Transaction>, u64)>, evicted: Vec<(Txid, u64)>) {
        self.wallet.apply_unconfirmed_txs(txs);
        self.wallet.apply_evicted_txs(evicted);
    }

    /// Runs `update` and returns the events it caused (deposits, spends, confirmations,
    /// reorgs), in txid order per kind.
    ///
    /// # Errors
    /// Whatever `update` returns.
    pub fn with_events<E>(
        &mut self,
        update: impl FnOnce(&mut Self) -> Result<(), E>,
    ) -> Result<Vec<VaultEvent>, E> {
        let before = self.snapshot();
        update(self)?;
        let after = self.snapshot();
        let mut events = Vec::new();
        for (txid, pos) in &after {
            match before.get(txid) {
                None => {
                    let Some(tx) = self.transaction(*txid) else {
                        continue;
                    };
                    let (sent, received) = self.wallet.sent_and_received(&tx);
                    if received > sent {
                        events.push(VaultEvent::Deposit {
                            txid: *txid,
                            amount: received - sent,
                            height: *pos,
                        });
                    } else {
                        events.push(VaultEvent::Spend {
                            txid: *txid,
                            amount: sent - received,
                            height: *pos,
                        });
                    }
                }
                Some(old) if old != pos => match pos {
                    Some(h) => events.push(VaultEvent::Confirmed {
                        txid: *txid,
                        height: *h,
                    }),
                    None => events.push(VaultEvent::Unconfirmed { txid: *txid }),
                },
                Some(_) => {}
            }
        }
        for txid in before.keys() {
            if !after.contains_key(txid) {
                events.push(VaultEvent::Removed { txid: *txid });
            }
        }
        Ok(events)
    }
}

fn position_height(pos: &ChainPosition<ConfirmationBlockTime>) -> Option<u32> {
    match pos {
        ChainPosition::Confirmed { anchor, .. } => Some(anchor.block_id.height),
        ChainPosition::Unconfirmed { .. } => None,
    }
}

fn utxo_of(o: &LocalOutput, tip: u32) -> VaultUtxo {
    let height = position_height(&o.chain_position);
    VaultUtxo {
        outpoint: o.outpoint,
        value: o.txout.value,
        keychain: Keychain::from_bdk(o.keychain),
        index: o.derivation_index,
        height,
        confirmations: height.map_or(0, |h| tip.saturating_sub(h).saturating_add(1)),
    }
}
