//! The vault use cases behind `treasury vault` and `treasury psbt` and the API's `/v1/vaults`:
//! create, import, sync with the node, build PSBTs with coin reservations, release, finalize.
//!
//! Why like this: the domain (`custody::vault`) is pure; this service loads a vault from
//! [`crate::store::vaults`], talks to the node through [`crate::node`], and records each change
//! in the reserve ledger.

use std::time::{Duration, Instant};

use custody::vault::{Vault, VaultConfig, VaultError, VaultEvent};

use crate::store::LedgerStore;

use crate::clock::now_ms;
use crate::node::sync::sync_vault;
use crate::node::{NodeConfig, SyncError};
use crate::store::vaults::{VaultStore, VaultStoreError};

/// The operations behind `treasury vault` and `treasury psbt`, shared by the CLI and the API:
/// each one changes the vault store and records what happened in the reserve ledger.
#[derive(Debug, Clone)]
pub struct VaultService {
    /// The reserve ledger.
    pub ledger: LedgerStore,
    /// The vaults.
    pub vaults: VaultStore,
}

/// Errors of the vault operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// Store.
    #[error(transparent)]
    Store(#[from] VaultStoreError),
    /// Ledger.
    #[error("ledger: {0}")]
    Ledger(#[from] crate::store::StoreError),
    /// Ledger entry.
    #[error("ledger entry: {0}")]
    Entry(#[from] custody::ledger::EntryError),
    /// Vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// Node.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// PSBT builder.
    #[error(transparent)]
    Spend(#[from] custody::vault::spend::SpendError),
    /// A blocking task failed.
    #[error("internal task failed: {0}")]
    Task(String),
    /// The policy signer process refused to register the vault (the vault is not created).
    #[error("the policy signer refused vault {vault}: {reason}")]
    SignerRefused {
        /// The vault.
        vault: String,
        /// The signer's reason.
        reason: String,
    },
}

/// What a PSBT build produced and reserved.
#[derive(Debug, Clone)]
pub struct BuiltRequest {
    /// Request id the coins are reserved for.
    pub request: String,
    /// The PSBT and its facts.
    pub built: custody::vault::spend::BuiltPsbt,
    /// When the reservation expires.
    pub expires_ms: i64,
}

impl VaultService {
    /// The service over a ledger store's database.
    pub fn new(ledger: LedgerStore) -> Self {
        let vaults = VaultStore::new(&ledger);
        VaultService { ledger, vaults }
    }

    /// Creates a vault and records it in the ledger (`vault_created`).
    ///
    /// # Errors
    /// [`OpError`]; nothing is stored when the vault is refused.
    pub async fn create(&self, config: VaultConfig, source: &str) -> Result<Vault, OpError> {
        self.create_recorded(config, source, None).await
    }

    /// As [`VaultService::create`] for a vault that was let through **without** the
    /// policy-key check (`--allow-without-policy-key`): some keys may spend without the policy
    /// key. The `vault_created` ledger entry says so in `policy_key_guard`, with `why` (the
    /// check's message, or why it did not run).
    ///
    /// # Errors
    /// As [`VaultService::create`].
    pub async fn create_without_policy_key_guard(
        &self,
        config: VaultConfig,
        source: &str,
        why: &str,
    ) -> Result<Vault, OpError> {
        self.create_recorded(config, source, Some(why)).await
    }

    async fn create_recorded(
        &self,
        config: VaultConfig,
        source: &str,
        without_policy_key: Option<&str>,
    ) -> Result<Vault, OpError> {
        let mut vault = Vault::create(config)?;
        let now = now_ms();
        self.vaults.create(&mut vault, now).await?;
        let cfg = vault.config();
        let mut body = serde_json::json!({
            "vault": cfg.name,
            "network": cfg.descriptor.network.to_string(),
            "external": cfg.descriptor.external_string(),
            "internal": cfg.descriptor.internal_string(),
            "birthday": cfg.birthday,
            "gap_limit": cfg.gap_limit,
            "source": source,
        });
        if let Some(why) = without_policy_key {
            body["policy_key_guard"] = serde_json::json!({
                "disabled": "officers can spend without the policy key",
                "why": why,
            });
        }
        self.ledger
            .append(custody::vault::ledger_record(
                custody::ledger::Kind::VaultCreated,
                "treasury",
                &body,
                now,
            )?)
            .await?;
        Ok(vault)
    }

    /// Hands out the next receive address, persists the index and records it.
    ///
    /// # Errors
    /// [`OpError`], e.g. the gap limit.
    pub async fn next_address(&self, name: &str) -> Result<custody::vault::VaultAddress, OpError> {
        self.next_address_by(name, "treasury").await
    }

    /// As [`VaultService::next_address`], recording `actor` as who asked (the API's caller).
    ///
    /// # Errors
    /// As [`VaultService::next_address`].
    pub async fn next_address_by(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<custody::vault::VaultAddress, OpError> {
        let mut vault = self.vaults.load(name).await?;
        let addr = vault.next_receive_address()?;
        self.vaults.persist(&mut vault).await?;
        let body = serde_json::json!({
            "vault": name, "address": addr.address.to_string(), "index": addr.index,
            "keychain": addr.keychain.as_str(),
        });
        self.ledger
            .append(custody::vault::ledger_record(
                custody::ledger::Kind::AddressIssued,
                actor,
                &body,
                now_ms(),
            )?)
            .await?;
        Ok(addr)
    }

    /// Syncs a vault with the node (on a blocking thread), persists its state, releases the
    /// reservations of coins that are gone and records every event in the ledger.
    ///
    /// # Errors
    /// [`OpError::Sync`] when the node is unreachable (after retries) or fails.
    pub async fn sync(
        &self,
        name: &str,
        node: &NodeConfig,
    ) -> Result<(Vault, Vec<VaultEvent>), OpError> {
        let vault = self.vaults.load(name).await?;
        let node = node.clone();
        let (mut vault, result) = tokio::task::spawn_blocking(move || {
            let mut vault = vault;
            let r = node
                .connect_checked(vault.network(), 3, Duration::from_millis(500))
                .and_then(|client| sync_vault(&mut vault, &client));
            (vault, r)
        })
        .await
        .map_err(|e| OpError::Task(e.to_string()))?;
        // Whatever was applied before an error is consistent: keep it.
        self.vaults.persist(&mut vault).await?;
        let events = result?;
        self.vaults.release_spent(&vault).await?;
        let now = now_ms();
        let drafts = events
            .iter()
            .map(|e| e.ledger_draft(name, now))
            .collect::<Result<Vec<_>, _>>()?;
        if !drafts.is_empty() {
            self.ledger.append_batch(drafts).await?;
        }
        Ok((vault, events))
    }

    /// Builds a PSBT, reserves its coins for `request` for `ttl`, persists the revealed
    /// change index and records the request (`spend_requested`). When another builder takes
    /// a coin between selection and reservation, selection runs again without it.
    ///
    /// # Errors
    /// [`OpError::Spend`] for every refusal of the builder, [`OpError::Store`].
    #[allow(clippy::too_many_arguments)]
    pub async fn build_psbt(
        &self,
        name: &str,
        request: &str,
        req: &custody::vault::spend::SpendRequest,
        default_fee_rate: bdk_wallet::bitcoin::FeeRate,
        caps: &custody::vault::spend::FeeCaps,
        ttl: Duration,
        rng: &mut (impl rand_core::RngCore + Send),
    ) -> Result<BuiltRequest, OpError> {
        self.build_psbt_at(
            name,
            request,
            req,
            default_fee_rate,
            caps,
            ttl,
            rng,
            now_ms(),
        )
        .await
    }

    /// As [`VaultService::build_psbt`], at the caller's clock `now` (Unix milliseconds):
    /// reservations are judged and made at that time.
    ///
    /// # Errors
    /// As [`VaultService::build_psbt`].
    #[allow(clippy::too_many_arguments)]
    pub async fn build_psbt_at(
        &self,
        name: &str,
        request: &str,
        req: &custody::vault::spend::SpendRequest,
        default_fee_rate: bdk_wallet::bitcoin::FeeRate,
        caps: &custody::vault::spend::FeeCaps,
        ttl: Duration,
        rng: &mut (impl rand_core::RngCore + Send),
        now: i64,
    ) -> Result<BuiltRequest, OpError> {
        let started = Instant::now();
        let phase = |what: &str| {
            tracing::debug!(
                request,
                phase = what,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "psbt build"
            );
        };
        let mut vault = self.vaults.load(name).await?;
        let mut reserved = self.vaults.reserved(name, now).await?;
        phase("vault loaded");
        let expires_ms = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        for _ in 0..5 {
            let built = custody::vault::spend::build(
                &mut vault,
                req,
                &reserved,
                default_fee_rate,
                caps,
                rng,
            )?;
            phase("built");
            match self
                .vaults
                .reserve(name, request, built.txid, &built.inputs, now, expires_ms)
                .await
            {
                Ok(()) => {
                    phase("reserved");
                    self.vaults.persist(&mut vault).await?;
                    phase("persisted");
                    let outputs: Vec<serde_json::Value> = built
                        .psbt
                        .unsigned_tx
                        .output
                        .iter()
                        .map(|o| serde_json::json!({"script": o.script_pubkey.to_hex_string(), "amount_sat": o.value.to_sat()}))
                        .collect();
                    let body = serde_json::json!({
                        "vault": name, "request": request, "txid": built.txid.to_string(),
                        "inputs": built.inputs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "outputs": outputs, "fee_sat": built.fee.to_sat(),
                        "expires_ms": expires_ms,
                    });
                    self.ledger
                        .append(custody::vault::ledger_record(
                            custody::ledger::Kind::SpendRequested,
                            "treasury",
                            &body,
                            now,
                        )?)
                        .await?;
                    return Ok(BuiltRequest {
                        request: request.to_string(),
                        built,
                        expires_ms,
                    });
                }
                Err(VaultStoreError::Reserved(op)) if !req.include.contains(&op) => {
                    reserved.insert(op);
                    // Reload: the other builder may have revealed change addresses too.
                    vault = self.vaults.load(name).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(OpError::Store(VaultStoreError::Corrupt(
            "coin selection kept colliding with other requests".into(),
        )))
    }
}
