//! `/v1/vaults`: list, show, export, balance, UTXOs, deposit addresses, address verification,
//! sync.
//!
//! Why a snapshot cache: loading a vault replays its wallet changesets (bdk), far too slow to
//! do per balance read. Each instance keeps the views of a vault (show, balance, UTXOs) with
//! the number of changesets they were computed from; a read re-checks that count (one small
//! query) at most every 250 ms and reloads only when another writer (any instance) added a
//! changeset. A read is therefore at most 250 ms behind a sync done by another instance.
// utoipa's path macro expands to fully qualified paths.
#![allow(unused_qualifications)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use crate::api::problem::{ApiResult, Problem};
use crate::api::{AppState, Caller, Role};
use crate::store::on_db;

/// How long a snapshot is used without re-checking the changeset count.
const FRESH: Duration = Duration::from_millis(250);

/// A vault in the list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VaultSummary {
    /// Name.
    pub name: String,
    /// Network.
    pub network: String,
    /// The multipath descriptor (or the receive descriptor).
    pub descriptor: String,
}

/// A vault.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VaultView {
    /// Name.
    pub name: String,
    /// Network.
    pub network: String,
    /// The multipath descriptor, when the two keychains have one.
    pub descriptor: Option<String>,
    /// Receive descriptor.
    pub external: String,
    /// Change descriptor.
    pub internal: String,
    /// Birthday height.
    pub birthday: u32,
    /// Gap limit.
    pub gap_limit: u32,
    /// Height of the last synced block.
    pub tip: u32,
}

/// A vault's balance, integer satoshis.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Balance {
    /// Vault.
    pub vault: String,
    /// Height of the last synced block.
    pub tip: u32,
    /// Confirmed.
    pub confirmed_sat: u64,
    /// Unconfirmed (trusted and untrusted).
    pub pending_sat: u64,
    /// Immature coinbase.
    pub immature_sat: u64,
}

/// An unspent output.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Utxo {
    /// `txid:vout`.
    pub outpoint: String,
    /// Value.
    pub amount_sat: u64,
    /// `external` or `internal`.
    pub keychain: String,
    /// Derivation index.
    pub index: u32,
    /// Confirmation height.
    pub height: Option<u32>,
    /// Confirmations at the vault's tip.
    pub confirmations: u32,
}

/// A deposit address handed out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DepositAddress {
    /// Vault.
    pub vault: String,
    /// The address.
    pub address: String,
    /// Keychain (`external`).
    pub keychain: String,
    /// Derivation index.
    pub index: u32,
}

/// A key an address derives from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddressKey {
    /// Master fingerprint (hex).
    pub fingerprint: String,
    /// Derivation path.
    pub path: String,
    /// Public key (hex).
    pub public_key: String,
}

/// Where an address of the vault derives from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddressVerification {
    /// Vault.
    pub vault: String,
    /// The address.
    pub address: String,
    /// Keychain.
    pub keychain: String,
    /// Derivation index.
    pub index: u32,
    /// The keys, with origins.
    pub keys: Vec<AddressKey>,
    /// The output script (hex).
    pub script: String,
    /// The derived descriptor.
    pub descriptor: String,
}

/// A vault export.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VaultExport {
    /// Vault.
    pub vault: String,
    /// The format.
    pub format: String,
    /// The exported text.
    pub text: String,
}

/// Export format.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// Descriptors with checksums.
    Descriptor,
    /// BIP-129 BSMS.
    Bsms,
    /// Caravan JSON.
    Caravan,
    /// Coldcard multisig file.
    Coldcard,
}

/// `?format=`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `descriptor` (default), `bsms`, `caravan` or `coldcard`.
    pub format: Option<ExportFormat>,
}

/// The result of a sync.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SyncResult {
    /// The balance after the sync.
    pub balance: Balance,
    /// Events recorded in the ledger.
    pub events: usize,
}

#[derive(Debug)]
struct Snapshot {
    changesets: i64,
    checked: Instant,
    view: VaultView,
    balance: Balance,
    utxos: Vec<Utxo>,
}

/// Per-instance vault snapshots.
#[derive(Debug, Default)]
pub struct VaultCache {
    map: Mutex<HashMap<String, Arc<Snapshot>>>,
}

async fn changesets(state: &AppState, name: &str) -> ApiResult<i64> {
    let q = "SELECT COUNT(*) FROM vault_changesets WHERE vault = $1";
    let n: i64 = on_db!(state.store().db(), p => {
        sqlx::query(q)
            .bind(name)
            .fetch_one(p)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .map_err(Problem::internal)?
    });
    Ok(n)
}

fn snapshot_of(v: &custody::vault::Vault, changesets: i64) -> Snapshot {
    let d = &v.config().descriptor;
    let b = v.balance();
    let name = v.name().to_owned();
    Snapshot {
        changesets,
        checked: Instant::now(),
        view: VaultView {
            name: name.clone(),
            network: d.network.to_string(),
            descriptor: d.multipath_string(),
            external: d.external_string(),
            internal: d.internal_string(),
            birthday: v.config().birthday,
            gap_limit: v.config().gap_limit,
            tip: v.tip_height(),
        },
        balance: Balance {
            vault: name,
            tip: v.tip_height(),
            confirmed_sat: b.confirmed.to_sat(),
            pending_sat: b.pending.to_sat(),
            immature_sat: b.immature.to_sat(),
        },
        utxos: v
            .utxos()
            .iter()
            .map(|u| Utxo {
                outpoint: u.outpoint.to_string(),
                amount_sat: u.value.to_sat(),
                keychain: u.keychain.as_str().to_owned(),
                index: u.index,
                height: u.height,
                confirmations: u.confirmations,
            })
            .collect(),
    }
}

async fn snapshot(state: &AppState, name: &str) -> ApiResult<Arc<Snapshot>> {
    let cache = &state.inner.vault_cache;
    let cached = cache
        .map
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
        .cloned();
    if let Some(s) = &cached {
        if s.checked.elapsed() < FRESH {
            return Ok(s.clone());
        }
    }
    let n = changesets(state, name).await?;
    if let Some(s) = cached {
        if s.changesets == n {
            let fresh = Arc::new(Snapshot {
                changesets: n,
                checked: Instant::now(),
                view: s.view.clone(),
                balance: s.balance.clone(),
                utxos: s.utxos.clone(),
            });
            cache
                .map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name.to_owned(), fresh.clone());
            return Ok(fresh);
        }
    }
    let v = state.spend().vaults.vaults.load(name).await?;
    let snap = Arc::new(snapshot_of(&v, n));
    cache
        .map
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.to_owned(), snap.clone());
    Ok(snap)
}

const ALL: &[Role] = &[Role::Admin, Role::Officer, Role::Auditor, Role::Integrator];
const STAFF: &[Role] = &[Role::Admin, Role::Officer, Role::Auditor];

/// List the vaults the token covers.
#[utoipa::path(get, path = "/v1/vaults", tag = "vaults",
    responses((status = 200, body = [VaultSummary]), (status = 401, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<VaultSummary>>> {
    caller.require(ALL)?;
    let out = state
        .spend()
        .vaults
        .vaults
        .list()
        .await?
        .into_iter()
        .filter(|c| caller.0.may_see_vault(&c.name))
        .map(|c| VaultSummary {
            network: c.descriptor.network.to_string(),
            descriptor: c
                .descriptor
                .multipath_string()
                .unwrap_or_else(|| c.descriptor.external_string()),
            name: c.name,
        })
        .collect();
    Ok(Json(out))
}

/// Show a vault.
#[utoipa::path(get, path = "/v1/vaults/{name}", tag = "vaults",
    params(("name" = String, Path, description = "Vault name")),
    responses((status = 200, body = VaultView), (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<VaultView>> {
    caller.require(ALL)?;
    caller.require_vault(&name)?;
    Ok(Json(snapshot(&state, &name).await?.view.clone()))
}

/// A vault's balance.
#[utoipa::path(get, path = "/v1/vaults/{name}/balance", tag = "vaults",
    params(("name" = String, Path, description = "Vault name")),
    responses((status = 200, body = Balance), (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Balance>> {
    caller.require(ALL)?;
    caller.require_vault(&name)?;
    Ok(Json(snapshot(&state, &name).await?.balance.clone()))
}

/// A vault's unspent outputs.
#[utoipa::path(get, path = "/v1/vaults/{name}/utxos", tag = "vaults",
    params(("name" = String, Path, description = "Vault name")),
    responses((status = 200, body = [Utxo]), (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn utxos(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Utxo>>> {
    caller.require(ALL)?;
    caller.require_vault(&name)?;
    Ok(Json(snapshot(&state, &name).await?.utxos.clone()))
}

/// Export a vault's descriptors (for signers and auditors).
#[utoipa::path(get, path = "/v1/vaults/{name}/export", tag = "vaults",
    params(("name" = String, Path, description = "Vault name"), ExportQuery),
    responses((status = 200, body = VaultExport), (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Json<VaultExport>> {
    use crate::files::vault_formats::Format;
    caller.require(STAFF)?;
    caller.require_vault(&name)?;
    let cfg = state.spend().vaults.vaults.config(&name).await?;
    let d = &cfg.descriptor;
    let (format, text) = match q.format.unwrap_or(ExportFormat::Descriptor) {
        ExportFormat::Descriptor => (
            "descriptor",
            format!(
                "{}\n{}\n{}\n",
                d.multipath_string().unwrap_or_default(),
                d.external_string(),
                d.internal_string()
            ),
        ),
        ExportFormat::Bsms => (
            "bsms",
            crate::files::vault_formats::export(&name, d, Format::Bsms)
                .map_err(Problem::validation)?,
        ),
        ExportFormat::Caravan => (
            "caravan",
            crate::files::vault_formats::export(&name, d, Format::Caravan)
                .map_err(Problem::validation)?,
        ),
        ExportFormat::Coldcard => (
            "coldcard",
            crate::files::vault_formats::export(&name, d, Format::Coldcard)
                .map_err(Problem::validation)?,
        ),
    };
    Ok(Json(VaultExport {
        vault: name,
        format: format.to_owned(),
        text,
    }))
}

/// Hand out the next deposit address (recorded in the ledger with the caller).
#[utoipa::path(post, path = "/v1/vaults/{name}/addresses", tag = "vaults",
    params(("name" = String, Path, description = "Vault name")),
    responses((status = 201, body = DepositAddress), (status = 404, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn next_address(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<DepositAddress>)> {
    caller.require(&[Role::Admin, Role::Integrator])?;
    caller.require_vault(&name)?;
    let a = state
        .spend()
        .vaults
        .next_address_by(&name, &caller.0.name)
        .await?;
    state.metrics().ledger_appended(1);
    Ok((
        StatusCode::CREATED,
        Json(DepositAddress {
            vault: name,
            address: a.address.to_string(),
            keychain: a.keychain.as_str().to_owned(),
            index: a.index,
        }),
    ))
}

/// Verify that an address belongs to the vault, and where it derives from.
#[utoipa::path(get, path = "/v1/vaults/{name}/addresses/{address}", tag = "vaults",
    params(("name" = String, Path, description = "Vault name"), ("address" = String, Path, description = "The address")),
    responses((status = 200, body = AddressVerification), (status = 422, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn verify_address(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, address)): Path<(String, String)>,
) -> ApiResult<Json<AddressVerification>> {
    caller.require(ALL)?;
    caller.require_vault(&name)?;
    let v = state.spend().vaults.vaults.load(&name).await?;
    let own = v
        .verify_address(&address)
        .map_err(|e| Problem::validation(e.to_string()))?;
    Ok(Json(AddressVerification {
        vault: name,
        address: own.address.to_string(),
        keychain: own.keychain.as_str().to_owned(),
        index: own.index,
        keys: own
            .keys
            .iter()
            .map(|k| AddressKey {
                fingerprint: k.fingerprint.to_string(),
                path: k.path.to_string(),
                public_key: k.public_key.to_string(),
            })
            .collect(),
        script: own.script.to_hex_string(),
        descriptor: own.descriptor.to_string(),
    }))
}

/// Sync the vault with the node (blocks, reorgs, mempool); events go to the ledger.
#[utoipa::path(post, path = "/v1/vaults/{name}/sync", tag = "vaults",
    params(("name" = String, Path, description = "Vault name")),
    responses((status = 200, body = SyncResult), (status = 503, body = crate::api::problem::ProblemBody)),
    security(("bearer" = [])))]
pub async fn sync(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<SyncResult>> {
    caller.require(&[Role::Admin, Role::Officer])?;
    caller.require_vault(&name)?;
    let node = state
        .node()
        .cloned()
        .ok_or_else(|| Problem::unavailable("no bitcoin node is configured"))?;
    let (v, events) = state.spend().vaults.sync(&name, &node).await?;
    state.metrics().ledger_appended(events.len() as u64);
    let n = changesets(&state, &name).await?;
    let snap = snapshot_of(&v, n);
    let balance = snap.balance.clone();
    state
        .inner
        .vault_cache
        .map
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name, Arc::new(snap));
    Ok(Json(SyncResult {
        balance,
        events: events.len(),
    }))
}
