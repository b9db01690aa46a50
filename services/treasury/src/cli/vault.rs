//! `treasury vault ...` and `treasury psbt ...`: vaults, addresses, sync and the PSBT builder
//! for treasury officers, against the database and a Bitcoin Core node.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bdk_wallet::bitcoin::{FeeRate, Network, OutPoint, Txid};
use clap::{Subcommand, ValueEnum};
use custody::vault::spend::{self, Payment, SpendPath, SpendRequest};
use custody::vault::{
    AllowWithoutPolicyKey, DescriptorError, Keychain, Template, TemplateKey, VaultConfig,
    VaultDescriptor,
};

use crate::cli::io::read_input;
use crate::cli::io::read_psbt;
use crate::cli::opts::runtime;
use crate::cli::opts::VaultOpts;
use crate::files::vault_formats::{policy_key_guard, Format, Guard};
use crate::service::vaults::{OpError, VaultService};
use crate::store::LedgerStore;

/// Vault templates on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TemplateName {
    /// wsh(sortedmulti(k, officers…, policy key)); k must count every key (officers plus the
    /// policy key) so that the policy key signs every spend, else --allow-without-policy-key.
    Sortedmulti,
    /// Policy key AND k of officers, OR after N blocks r of the recovery keys (wsh).
    Recovery,
    /// The taproot vault: tr(NUMS, {policy key AND k of officers, r of the recovery keys after
    /// N blocks}).
    TaprootRecovery,
    /// tr(NUMS, multi_a(k, …)) without the policy key: only with --allow-without-policy-key.
    Taproot,
}

/// Export and import formats (the flag's values; [`Format`] is the file format itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Receive and change descriptors with checksums (and the multipath form).
    Descriptor,
    /// BIP-129 BSMS descriptor record.
    Bsms,
    /// Caravan wallet configuration JSON.
    Caravan,
    /// Coldcard multisig setup file.
    Coldcard,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Descriptor => Format::Descriptor,
            FormatArg::Bsms => Format::Bsms,
            FormatArg::Caravan => Format::Caravan,
            FormatArg::Coldcard => Format::Coldcard,
        }
    }
}

/// `treasury vault` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum VaultCommand {
    /// Create a vault from public descriptors or from a template.
    Create {
        /// Vault name.
        #[arg(long)]
        name: String,
        /// A multipath (`<0;1>/*`) descriptor, or the receive descriptor with --change-descriptor.
        #[arg(long, conflicts_with = "template")]
        descriptor: Option<String>,
        /// The change descriptor.
        #[arg(long, requires = "descriptor")]
        change_descriptor: Option<String>,
        /// A template instead of a descriptor.
        #[arg(long, value_enum)]
        template: Option<TemplateName>,
        /// Signatures required of the officers (or of all keys for sortedmulti and taproot).
        #[arg(long)]
        k: Option<usize>,
        /// An officer's account key `[fp/path]xpub` (repeat).
        #[arg(long = "officer")]
        officers: Vec<String>,
        /// The policy key `[fp]pubkey` or `[fp/path]xpub`: the key the policy signer holds.
        /// Every template but `taproot` needs it; a --descriptor is checked against it.
        #[arg(long, env = "TREASURY_POLICY_KEY")]
        policy_key: Option<String>,
        /// DANGEROUS: create the vault even though some keys can spend without the policy key
        /// (and so without every rule of the policy signer). Prints a warning, and the ledger
        /// entry records it.
        #[arg(long)]
        allow_without_policy_key: bool,
        /// A recovery key (repeat).
        #[arg(long = "recovery-key")]
        recovery: Vec<String>,
        /// Recovery signatures required.
        #[arg(long)]
        r: Option<usize>,
        /// Recovery timelock in blocks.
        #[arg(long)]
        older: Option<u32>,
        /// Height to sync from.
        #[arg(long, default_value_t = 0)]
        birthday: u32,
        /// Gap limit for receive addresses.
        #[arg(long, default_value_t = custody::vault::DEFAULT_GAP_LIMIT)]
        gap_limit: u32,
    },
    /// List vaults.
    List,
    /// Show a vault: descriptors, tip, revealed indexes and balance.
    Show {
        /// Vault name.
        #[arg(long)]
        vault: String,
    },
    /// Print a vault's descriptors in an interchange format.
    Export {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Format.
        #[arg(long, value_enum, default_value = "descriptor")]
        format: FormatArg,
    },
    /// Create a vault from an exported file.
    Import {
        /// Vault name.
        #[arg(long)]
        name: String,
        /// Format.
        #[arg(long, value_enum)]
        format: FormatArg,
        /// The file (`-` for standard input).
        file: PathBuf,
        /// Height to sync from.
        #[arg(long, default_value_t = 0)]
        birthday: u32,
        /// The policy key `[fp]pubkey` or `[fp/path]xpub` the vault is checked against: every
        /// spending path without a relative timelock must need it.
        #[arg(long, env = "TREASURY_POLICY_KEY")]
        policy_key: Option<String>,
        /// DANGEROUS: import the vault even though some keys can spend without the policy key
        /// (or without checking, when no --policy-key is given). Prints a warning, and the
        /// ledger entry records it.
        #[arg(long)]
        allow_without_policy_key: bool,
    },
    /// Hand out the next receive address, or verify an address.
    Address {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Verify this address instead: vault, keychain, index, keys, script.
        #[arg(long)]
        verify: Option<String>,
    },
    /// Follow the node: blocks since the last sync (or the birthday), reorgs and mempool.
    Sync {
        /// Vault name (default: every vault).
        #[arg(long)]
        vault: Option<String>,
    },
    /// Print the balance (integer satoshis, JSON).
    Balance {
        /// Vault name.
        #[arg(long)]
        vault: String,
    },
    /// Print the unspent outputs (JSON lines).
    Utxos {
        /// Vault name.
        #[arg(long)]
        vault: String,
    },
}

/// `treasury psbt` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum PsbtCommand {
    /// Build a PSBT (printed in base64) and reserve its coins.
    Build {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// A payment ADDRESS:SATS (repeat for a batch).
        #[arg(long = "to")]
        to: Vec<String>,
        /// Fee rate in sat/vB (default: the node's estimate).
        #[arg(long)]
        fee_rate: Option<u32>,
        /// Spend this outpoint TXID:VOUT (repeat).
        #[arg(long)]
        include: Vec<String>,
        /// Never spend this outpoint (repeat).
        #[arg(long)]
        exclude: Vec<String>,
        /// Spend only the included outpoints.
        #[arg(long)]
        only_included: bool,
        /// Consolidate into a new change address.
        #[arg(long)]
        consolidate: bool,
        /// OP_RETURN memo (UTF-8, at most 80 bytes).
        #[arg(long)]
        memo: Option<String>,
        /// Use the recovery path (only once its timelock has matured).
        #[arg(long)]
        recovery: bool,
        /// Request id the coins are reserved for (default: a random id).
        #[arg(long)]
        request: Option<String>,
        /// Reservation lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        reserve_secs: u64,
    },
    /// Build a replacement of a pending spend at a higher fee rate.
    Bump {
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// The pending transaction.
        #[arg(long)]
        txid: Txid,
        /// New fee rate in sat/vB.
        #[arg(long)]
        fee_rate: u32,
    },
    /// Release the coins reserved for a request.
    Release {
        /// Request id.
        #[arg(long)]
        request: String,
    },
    /// Finalize a fully signed PSBT (base64 file, `-` for stdin) and print the transaction hex.
    Finalize {
        /// The PSBT file.
        file: PathBuf,
    },
    /// Merge signers' PSBTs into the base PSBT, verifying every partial signature on arrival;
    /// prints the combined PSBT.
    Combine {
        /// The request's PSBT.
        base: PathBuf,
        /// Signers' PSBTs.
        #[arg(required = true)]
        signed: Vec<PathBuf>,
    },
    /// Finalize, check with the node's `testmempoolaccept`, broadcast; prints the txid.
    Broadcast {
        /// The fully signed PSBT.
        file: PathBuf,
    },
}

fn keys(list: &[String]) -> Result<Vec<TemplateKey>, String> {
    list.iter()
        .map(|k| TemplateKey::parse(k).map_err(|e| e.to_string()))
        .collect()
}

fn need<T: Copy>(v: Option<T>, what: &str) -> Result<T, String> {
    v.ok_or_else(|| format!("the template needs --{what}"))
}

fn policy_key_arg(policy_key: Option<&String>) -> Result<Option<TemplateKey>, String> {
    policy_key
        .map(|k| TemplateKey::parse(k).map_err(|e| format!("--policy-key: {e}")))
        .transpose()
}

fn need_policy_key(policy_key: Option<&TemplateKey>) -> Result<TemplateKey, String> {
    policy_key
        .cloned()
        .ok_or_else(|| "the template needs --policy-key".to_owned())
}

/// Builds a template's vault. [`Template::build`] refuses a vault some keys can spend without
/// the policy key; with `allow_without_policy_key` it is built anyway and the refusal comes
/// back as [`Guard::Bypassed`].
#[allow(clippy::too_many_arguments)]
fn template_descriptor(
    t: TemplateName,
    k: Option<usize>,
    officers: &[String],
    policy_key: Option<&TemplateKey>,
    recovery: &[String],
    r: Option<usize>,
    older: Option<u32>,
    allow_without_policy_key: bool,
    network: Network,
) -> Result<(VaultDescriptor, Guard), String> {
    let template = match t {
        TemplateName::Sortedmulti => Template::SortedMulti {
            k: need(k, "k")?,
            officers: keys(officers)?,
            policy_key: need_policy_key(policy_key)?,
        },
        TemplateName::Recovery => Template::PolicyWithRecovery {
            policy_key: need_policy_key(policy_key)?,
            k: need(k, "k")?,
            officers: keys(officers)?,
            r: need(r, "r")?,
            recovery: keys(recovery)?,
            older: need(older, "older")?,
        },
        TemplateName::TaprootRecovery => Template::TaprootPolicyWithRecovery {
            policy_key: need_policy_key(policy_key)?,
            k: need(k, "k")?,
            officers: keys(officers)?,
            r: need(r, "r")?,
            recovery: keys(recovery)?,
            older: need(older, "older")?,
        },
        TemplateName::Taproot => Template::TaprootMultiA {
            k: need(k, "k")?,
            keys: keys(officers)?,
        },
    };
    match template.build(network) {
        Ok(d) => Ok((d, Guard::Passed)),
        Err(DescriptorError::PolicyKey(e)) if allow_without_policy_key => {
            let d = template
                .build_without_policy_key_guard(
                    network,
                    AllowWithoutPolicyKey::officers_can_spend_without_the_policy_key(),
                )
                .map_err(|e| e.to_string())?;
            Ok((d, Guard::Bypassed(format!("vault refused: {e}"))))
        }
        Err(e @ DescriptorError::PolicyKey(_)) => Err(format!(
            "vault refused: {e}; give --allow-without-policy-key to create it anyway"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Creates the vault, loudly when it was let through without the policy-key guard.
async fn create_guarded(
    svc: &VaultService,
    cfg: VaultConfig,
    source: &str,
    guard: Guard,
    signer: Option<&signer::SignerClient>,
) -> Result<custody::vault::Vault, OpError> {
    match guard {
        Guard::Passed => svc.create_registered(cfg, source, signer).await,
        Guard::Bypassed(why) => {
            eprintln!(
                "WARNING: --allow-without-policy-key: {why}. vault {:?} is created anyway: \
                 keys may spend without the policy key, bypassing every rule of the policy \
                 signer; the ledger records it",
                cfg.name
            );
            svc.create_without_policy_key_guard(cfg, source, &why).await
        }
    }
}

fn outpoints(list: &[String]) -> Result<Vec<OutPoint>, String> {
    list.iter()
        .map(|s| OutPoint::from_str(s).map_err(|e| format!("outpoint {s:?}: {e}")))
        .collect()
}

/// Runs a `treasury vault` command; returns what to print on standard output.
///
/// # Errors
/// A message for standard error.
pub fn run_vault(opts: &VaultOpts, cmd: VaultCommand) -> Result<String, String> {
    runtime()?.block_on(async {
        let ledger = LedgerStore::open(&opts.db)
            .await
            .map_err(|e| e.to_string())?;
        let svc = VaultService::new(ledger);
        let out = vault_db(opts, &svc, cmd).await.map_err(|e| e.to_string());
        svc.ledger.close().await;
        out
    })
}

async fn vault_db(
    opts: &VaultOpts,
    svc: &VaultService,
    cmd: VaultCommand,
) -> Result<String, OpError> {
    let msg = |s: String| OpError::Task(s);
    match cmd {
        VaultCommand::Create {
            name,
            descriptor,
            change_descriptor,
            template,
            k,
            officers,
            policy_key,
            allow_without_policy_key,
            recovery,
            r,
            older,
            birthday,
            gap_limit,
        } => {
            let policy_key = policy_key_arg(policy_key.as_ref()).map_err(msg)?;
            let (desc, guard) = match (descriptor, template) {
                (Some(d), _) => {
                    let desc =
                        VaultDescriptor::parse(&d, change_descriptor.as_deref(), opts.network)
                            .map_err(custody::vault::VaultError::from)?;
                    let guard =
                        policy_key_guard(&desc, policy_key.as_ref(), allow_without_policy_key)
                            .map_err(msg)?;
                    (desc, guard)
                }
                (None, Some(t)) => template_descriptor(
                    t,
                    k,
                    &officers,
                    policy_key.as_ref(),
                    &recovery,
                    r,
                    older,
                    allow_without_policy_key,
                    opts.network,
                )
                .map_err(msg)?,
                (None, None) => return Err(msg("give --descriptor or --template".into())),
            };
            let mut cfg = VaultConfig::new(&name, desc, birthday)?;
            cfg.gap_limit = gap_limit;
            let signer = opts.signer.client();
            let vault = create_guarded(svc, cfg, "create", guard, signer.as_ref()).await?;
            Ok(describe(&vault))
        }
        VaultCommand::List => {
            let mut out = String::new();
            for cfg in svc.vaults.list().await? {
                out.push_str(&format!(
                    "{}\t{}\t{}\n",
                    cfg.name,
                    cfg.descriptor.network,
                    cfg.descriptor
                        .multipath_string()
                        .unwrap_or_else(|| cfg.descriptor.external_string())
                ));
            }
            Ok(out)
        }
        VaultCommand::Show { vault } => {
            let v = svc.vaults.load(&vault).await?;
            Ok(describe(&v))
        }
        VaultCommand::Export { vault, format } => {
            let v = svc.vaults.load(&vault).await?;
            let d = &v.config().descriptor;
            match format {
                FormatArg::Descriptor => Ok(format!(
                    "{}\n{}\n{}\n",
                    d.multipath_string().unwrap_or_default(),
                    d.external_string(),
                    d.internal_string()
                )),
                other => {
                    crate::files::vault_formats::export(v.name(), d, other.into()).map_err(msg)
                }
            }
        }
        VaultCommand::Import {
            name,
            format,
            file,
            birthday,
            policy_key,
            allow_without_policy_key,
        } => {
            let policy_key = policy_key_arg(policy_key.as_ref()).map_err(msg)?;
            let text = read_input(&file).map_err(msg)?;
            let desc = crate::files::vault_formats::import(&text, format.into(), opts.network)
                .map_err(msg)?;
            let guard = policy_key_guard(&desc, policy_key.as_ref(), allow_without_policy_key)
                .map_err(msg)?;
            let cfg = VaultConfig::new(&name, desc, birthday)?;
            let signer = opts.signer.client();
            let vault =
                create_guarded(svc, cfg, format_name(format), guard, signer.as_ref()).await?;
            Ok(describe(&vault))
        }
        VaultCommand::Address { vault, verify } => match verify {
            Some(addr) => {
                let v = svc.vaults.load(&vault).await?;
                let own = v.verify_address(&addr)?;
                let keys: Vec<serde_json::Value> = own
                    .keys
                    .iter()
                    .map(|k| serde_json::json!({"fingerprint": k.fingerprint, "path": k.path, "public_key": k.public_key}))
                    .collect();
                Ok(format!(
                    "{}\n",
                    serde_json::json!({
                        "vault": vault, "address": own.address.to_string(),
                        "keychain": own.keychain.as_str(), "index": own.index,
                        "keys": keys, "script": own.script.to_hex_string(),
                        "descriptor": own.descriptor,
                    })
                ))
            }
            None => {
                let a = svc.next_address(&vault).await?;
                Ok(format!("{}\n", a.address))
            }
        },
        VaultCommand::Sync { vault } => {
            let node = opts.node().map_err(msg)?;
            let names = match vault {
                Some(v) => vec![v],
                None => svc
                    .vaults
                    .list()
                    .await?
                    .into_iter()
                    .map(|c| c.name)
                    .collect(),
            };
            let mut out = String::new();
            for name in names {
                let (v, events) = svc.sync(&name, &node).await?;
                let b = v.balance();
                out.push_str(&format!(
                    "{name}: tip {} events {} confirmed {} pending {} immature {}\n",
                    v.tip_height(),
                    events.len(),
                    b.confirmed.to_sat(),
                    b.pending.to_sat(),
                    b.immature.to_sat()
                ));
            }
            Ok(out)
        }
        VaultCommand::Balance { vault } => {
            let v = svc.vaults.load(&vault).await?;
            let b = v.balance();
            Ok(format!(
                "{}\n",
                serde_json::json!({
                    "vault": vault, "tip": v.tip_height(),
                    "confirmed_sat": b.confirmed.to_sat(), "pending_sat": b.pending.to_sat(),
                    "immature_sat": b.immature.to_sat(),
                })
            ))
        }
        VaultCommand::Utxos { vault } => {
            let v = svc.vaults.load(&vault).await?;
            let mut out = String::new();
            for u in v.utxos() {
                out.push_str(&format!(
                    "{}\n",
                    serde_json::json!({
                        "outpoint": u.outpoint.to_string(), "amount_sat": u.value.to_sat(),
                        "keychain": u.keychain.as_str(), "index": u.index,
                        "height": u.height, "confirmations": u.confirmations,
                    })
                ));
            }
            Ok(out)
        }
    }
}

fn format_name(f: FormatArg) -> &'static str {
    match f {
        FormatArg::Descriptor => "descriptor",
        FormatArg::Bsms => "bsms",
        FormatArg::Caravan => "caravan",
        FormatArg::Coldcard => "coldcard",
    }
}

fn describe(v: &custody::vault::Vault) -> String {
    let d = &v.config().descriptor;
    let b = v.balance();
    format!(
        "{}\n",
        serde_json::json!({
            "vault": v.name(),
            "network": d.network.to_string(),
            "descriptor": d.multipath_string(),
            "external": d.external_string(),
            "internal": d.internal_string(),
            "birthday": v.config().birthday,
            "gap_limit": v.config().gap_limit,
            "tip": v.tip_height(),
            "receive_index": v.revealed_index(Keychain::External),
            "change_index": v.revealed_index(Keychain::Internal),
            "confirmed_sat": b.confirmed.to_sat(),
            "pending_sat": b.pending.to_sat(),
            "immature_sat": b.immature.to_sat(),
        })
    )
}

/// Runs a `treasury psbt` command; returns what to print on standard output (the PSBT in
/// base64, or the transaction hex). A summary goes to standard error.
///
/// # Errors
/// A message for standard error.
pub fn run_psbt(opts: &VaultOpts, cmd: PsbtCommand) -> Result<String, String> {
    match &cmd {
        PsbtCommand::Finalize { file } => {
            let tx = spend::finalize(read_psbt(file)?).map_err(|e| e.to_string())?;
            return Ok(format!(
                "{}\n",
                bdk_wallet::bitcoin::consensus::encode::serialize_hex(&tx)
            ));
        }
        PsbtCommand::Combine { base, signed } => {
            let mut psbt = read_psbt(base)?;
            for f in signed {
                let n = custody::vault::combine::combine(&mut psbt, read_psbt(f)?)
                    .map_err(|e| format!("{}: {e}", f.display()))?;
                eprintln!("{}: {n} signatures verified", f.display());
            }
            return Ok(format!("{psbt}\n"));
        }
        PsbtCommand::Broadcast { file } => {
            let tx = spend::finalize(read_psbt(file)?).map_err(|e| e.to_string())?;
            let node = opts.node()?;
            let network = opts.network;
            let txid = crate::node::broadcast(&node, network, &tx).map_err(|e| e.to_string())?;
            return Ok(format!("{txid}\n"));
        }
        _ => {}
    }
    runtime()?.block_on(async {
        let ledger = LedgerStore::open(&opts.db)
            .await
            .map_err(|e| e.to_string())?;
        let svc = VaultService::new(ledger);
        let out = psbt_db(opts, &svc, cmd).await.map_err(|e| e.to_string());
        svc.ledger.close().await;
        out
    })
}

async fn estimate_fee_rate(opts: &VaultOpts) -> Result<FeeRate, OpError> {
    use bdk_bitcoind_rpc::bitcoincore_rpc::RpcApi;
    let node = opts.node().map_err(OpError::Task)?;
    let network = opts.network;
    tokio::task::spawn_blocking(move || {
        let client = node.connect_checked(network, 3, Duration::from_millis(500))?;
        let est = client
            .estimate_smart_fee(6, None)
            .map_err(|e| crate::node::SyncError::Rpc(e.to_string()))?;
        match est.fee_rate {
            // BTC/kvB -> sat/kwu: sat per 1000 vB / 4.
            Some(rate) => Ok(FeeRate::from_sat_per_kwu(rate.to_sat() / 4)),
            None => Err(OpError::Task(
                "the node has no fee estimate yet; give --fee-rate".into(),
            )),
        }
    })
    .await
    .map_err(|e| OpError::Task(e.to_string()))?
}

async fn psbt_db(
    opts: &VaultOpts,
    svc: &VaultService,
    cmd: PsbtCommand,
) -> Result<String, OpError> {
    let msg = |s: String| OpError::Task(s);
    let mut rng = rand::rngs::OsRng;
    match cmd {
        PsbtCommand::Build {
            vault,
            to,
            fee_rate,
            include,
            exclude,
            only_included,
            consolidate,
            memo,
            recovery,
            request,
            reserve_secs,
        } => {
            let payments = to
                .iter()
                .map(|p| Payment::parse(p))
                .collect::<Result<Vec<_>, _>>()?;
            let req = SpendRequest {
                payments,
                fee_rate: fee_rate.map(FeeRate::from_sat_per_vb_u32),
                include: outpoints(&include).map_err(msg)?,
                exclude: outpoints(&exclude).map_err(msg)?,
                only_included,
                consolidate,
                memo: memo.map(String::into_bytes),
                path: if recovery {
                    SpendPath::Recovery
                } else {
                    SpendPath::Primary
                },
            };
            let default_rate = match fee_rate {
                Some(r) => FeeRate::from_sat_per_vb_u32(r),
                None => estimate_fee_rate(opts).await?,
            };
            let request = request.unwrap_or_else(|| {
                let mut id = [0u8; 12];
                rand_core::RngCore::fill_bytes(&mut rng, &mut id);
                hex::encode(id)
            });
            let built = svc
                .build_psbt(
                    &vault,
                    &request,
                    &req,
                    default_rate,
                    &opts.caps(),
                    Duration::from_secs(reserve_secs),
                    &mut rng,
                )
                .await?;
            eprintln!(
                "request {} txid {} fee {} sat ({} sat/vB at most size) inputs {}",
                built.request,
                built.built.txid,
                built.built.fee.to_sat(),
                built.built.fee_rate.to_sat_per_vb_floor(),
                built.built.inputs.len()
            );
            Ok(format!("{}\n", built.built.psbt))
        }
        PsbtCommand::Bump {
            vault,
            txid,
            fee_rate,
        } => {
            let mut v = svc.vaults.load(&vault).await?;
            let built = spend::bump_fee(
                &mut v,
                txid,
                FeeRate::from_sat_per_vb_u32(fee_rate),
                &opts.caps(),
                &mut rng,
            )?;
            svc.vaults.persist(&mut v).await?;
            eprintln!(
                "replacement txid {} fee {} sat",
                built.txid,
                built.fee.to_sat()
            );
            Ok(format!("{}\n", built.psbt))
        }
        PsbtCommand::Release { request } => {
            let n = svc.vaults.release(&request).await?;
            Ok(format!("released {n} coins of request {request}\n"))
        }
        PsbtCommand::Finalize { .. }
        | PsbtCommand::Combine { .. }
        | PsbtCommand::Broadcast { .. } => Err(msg("this command runs without a database".into())),
    }
}
