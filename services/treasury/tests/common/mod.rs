//! Helpers shared by the regtest integration tests: officers' keys from seeds, Core RPC calls,
//! a faucet paying from mature coinbases with Core's RPCs only, and the node configuration.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod signer;

use std::str::FromStr;

use bdk_wallet::bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bdk_wallet::bitcoin::secp256k1::Secp256k1;
use bdk_wallet::bitcoin::{Address, Amount, BlockHash, Network, Txid};
use custody::vault::descriptor::with_checksum;
use regtest::RegtestNode;
use serde_json::{json, Value};
use treasury::node::{NodeAuth, NodeConfig};

/// The network of every regtest test.
pub const NET: Network = Network::Regtest;

/// An officer: master key, account key text `[fp/48'/1'/0'/2']tpub`, and the same with tprv.
pub struct Officer {
    /// `[fp/48'/1'/0'/2']tpub...`
    pub public: String,
    /// `[fp/48'/1'/0'/2']tprv...`
    pub private: String,
}

pub fn officer(seed: u8) -> Officer {
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(NET, &[seed; 32]).unwrap();
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let acct = master.derive_priv(&secp, &path).unwrap();
    let xpub = Xpub::from_priv(&secp, &acct);
    let fp = master.fingerprint(&secp);
    Officer {
        public: format!("[{fp}/48'/1'/0'/2']{xpub}"),
        private: format!("[{fp}/48'/1'/0'/2']{acct}"),
    }
}

/// The vault's two descriptors with `signers`' public keys replaced by their private keys.
pub fn private_descriptors(
    d: &custody::vault::VaultDescriptor,
    signers: &[&Officer],
) -> Vec<String> {
    [d.external_string(), d.internal_string()]
        .iter()
        .map(|s| {
            let mut body = s.split('#').next().unwrap().to_string();
            for o in signers {
                body = body.replace(&o.public, &o.private);
            }
            with_checksum(&body)
        })
        .collect()
}

pub fn node_config(node: &RegtestNode) -> NodeConfig {
    NodeConfig {
        url: node.rpc_url(),
        auth: NodeAuth::Cookie(node.cookie_file()),
    }
}

pub fn rpc(node: &RegtestNode, method: &str, params: &[Value]) -> Value {
    node.rpc(method, params)
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// Pays `amount` to `to` from a fresh key funded by a mature coinbase, with Core's RPCs only
/// (createpsbt, utxoupdatepsbt, descriptorprocesspsbt, finalizepsbt, sendrawtransaction).
pub struct Faucet {
    wif: String,
    coins: Vec<(Txid, Amount)>,
}

impl Faucet {
    pub fn new(node: &RegtestNode, coins: usize) -> Faucet {
        let (key, addr) = node.new_key();
        let hashes = node.mine_blocks(coins as u64, &addr).unwrap();
        node.mine_blocks(100, &node.new_address()).unwrap();
        let coins = hashes.iter().map(|h| coinbase(node, h)).collect();
        Faucet {
            wif: key.to_wif(),
            coins,
        }
    }

    pub fn pay(&mut self, node: &RegtestNode, to: &Address, amount: Amount) -> Txid {
        let (txid, value) = self.coins.pop().expect("faucet is empty");
        let (_, change) = node.new_key();
        let fee = Amount::from_sat(2_000);
        let outputs = json!([
            { to.to_string(): amount.to_btc() },
            { change.to_string(): (value - amount - fee).to_btc() },
        ]);
        let psbt = rpc(
            node,
            "createpsbt",
            &[json!([{"txid": txid.to_string(), "vout": 0}]), outputs],
        );
        let desc = with_checksum(&format!("wpkh({})", self.wif));
        let psbt = rpc(node, "utxoupdatepsbt", &[psbt, json!([desc.clone()])]);
        let signed = rpc(node, "descriptorprocesspsbt", &[psbt, json!([desc])]);
        let hex = signed["hex"]
            .as_str()
            .expect("faucet tx complete")
            .to_string();
        let sent = rpc(node, "sendrawtransaction", &[json!(hex)]);
        Txid::from_str(sent.as_str().unwrap()).unwrap()
    }
}

impl Faucet {
    /// Pays every `(address, amount)` (distinct addresses) in one transaction from one coinbase.
    pub fn pay_many(&mut self, node: &RegtestNode, outputs: &[(Address, Amount)]) -> Txid {
        let (txid, value) = self.coins.pop().expect("faucet is empty");
        let (_, change) = node.new_key();
        let fee = Amount::from_sat(2_000 + 50 * outputs.len() as u64);
        let total: Amount = outputs.iter().map(|(_, a)| *a).sum();
        let mut outs: Vec<Value> = outputs
            .iter()
            .map(|(to, amount)| json!({ to.to_string(): amount.to_btc() }))
            .collect();
        outs.push(json!({ change.to_string(): (value - total - fee).to_btc() }));
        let psbt = rpc(
            node,
            "createpsbt",
            &[json!([{"txid": txid.to_string(), "vout": 0}]), json!(outs)],
        );
        let desc = with_checksum(&format!("wpkh({})", self.wif));
        let psbt = rpc(node, "utxoupdatepsbt", &[psbt, json!([desc.clone()])]);
        let signed = rpc(node, "descriptorprocesspsbt", &[psbt, json!([desc])]);
        let hex = signed["hex"]
            .as_str()
            .expect("faucet tx complete")
            .to_string();
        let sent = rpc(node, "sendrawtransaction", &[json!(hex)]);
        Txid::from_str(sent.as_str().unwrap()).unwrap()
    }
}

pub fn coinbase(node: &RegtestNode, hash: &BlockHash) -> (Txid, Amount) {
    let block = rpc(node, "getblock", &[json!(hash.to_string()), json!(2)]);
    let tx = &block["tx"][0];
    let value = tx["vout"][0]["value"].as_f64().unwrap();
    (
        Txid::from_str(tx["txid"].as_str().unwrap()).unwrap(),
        Amount::from_btc(value).unwrap(),
    )
}

/// Debian's SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A fresh SoftHSM2 token directory under `dir` with our own configuration (never a system
/// token) and one token labelled `reserve` with user PIN `pin`; returns the configuration
/// file. `None` (with a printed reason) when SoftHSM2 is missing and not required.
pub fn softhsm_token(dir: &std::path::Path, test: &str, pin: &str) -> Option<std::path::PathBuf> {
    if !std::path::Path::new(SOFTHSM_MODULE).exists() {
        regtest::skip_or_fail("softhsm", test, &format!("{SOFTHSM_MODULE} is missing"));
        return None;
    }
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", "reserve", "--pin", pin])
        .args(["--so-pin", "5678"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(conf)
}

/// The policy key of a reserve test: a fresh SoftHSM2 token in `dir` (label `reserve`, user
/// PIN `pin`) holding a generated key `policy-key`, with `SOFTHSM2_CONF` set for this process
/// (call it before any other PKCS#11 use in the test binary). Returns the token's config file
/// and the key as it goes into a descriptor; `None` (the test skips) without SoftHSM2.
pub fn hsm_policy_key(
    dir: &std::path::Path,
    test: &str,
    pin: &str,
) -> Option<(std::path::PathBuf, custody::vault::TemplateKey)> {
    let conf = softhsm_token(dir, test, pin)?;
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let cfg = hsm::Pkcs11Config::new(
        SOFTHSM_MODULE,
        "reserve",
        "policy-key",
        hsm::Pkcs11Pin::new(pin),
    );
    let key = hsm::Pkcs11Signer::generate(cfg).unwrap();
    let policy_key = custody::vault::TemplateKey::parse(&key.descriptor_key()).unwrap();
    Some((conf, policy_key))
}

/// A ledger key file `ledger.key` in `dir` for `secret`, its signer, and the verifier key an
/// auditor pins for `origin`.
pub fn ledger_key_file(
    dir: &std::path::Path,
    secret: &[u8; 32],
    origin: &str,
) -> (
    std::path::PathBuf,
    custody::ledger::KeyFileSigner,
    custody::ledger::VerifierKey,
) {
    let file = dir.join("ledger.key");
    std::fs::write(
        &file,
        custody::ledger::KeyFileSigner::key_file_text(secret).as_str(),
    )
    .unwrap();
    let signer = custody::ledger::KeyFileSigner::from_secret_bytes(secret).unwrap();
    let vk = custody::ledger::VerifierKey::of_signer(origin.to_string(), &signer).unwrap();
    (file, signer, vk)
}
