//! `treasury officer ...`: an officer's own key, offline (an air-gapped laptop). The key lives in
//! an encrypted keystore file (argon2id + XChaCha20-Poly1305, `hsm::SoftwareKeystore`); the
//! passphrase comes from `TREASURY_KEYSTORE_PASSPHRASE` or a file, never from the command line.

use std::path::PathBuf;
use std::str::FromStr;

use bdk_wallet::bitcoin::bip32::DerivationPath;
use bdk_wallet::bitcoin::psbt::Psbt;
use bdk_wallet::bitcoin::Network;
use clap::Subcommand;
use hsm::{KdfParams, Signer, SoftwareKeystore};
use zeroize::Zeroizing;

/// `treasury officer` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum OfficerCommand {
    /// Create a new officer key in an encrypted keystore file and print its account key
    /// `[fingerprint/48'/coin'/0'/2']xpub` for the vault descriptor.
    Keygen {
        /// Keystore file to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// The officer's name (not secret).
        #[arg(long)]
        id: String,
        /// Network of the key.
        #[arg(long, env = "TREASURY_NETWORK", default_value = "regtest")]
        network: Network,
        /// Account path (BIP-48, script type 2 = wsh).
        #[arg(long)]
        path: Option<String>,
        /// File holding the passphrase (default: TREASURY_KEYSTORE_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Cheap key derivation, for tests and demos only.
        #[arg(long, hide = true)]
        insecure_fast_kdf: bool,
    },
    /// Print the account key of a keystore.
    Show {
        /// Keystore file.
        #[arg(long)]
        key: PathBuf,
        /// File holding the passphrase (default: TREASURY_KEYSTORE_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Sign every input of a PSBT this key can sign; prints the signed PSBT (base64).
    Sign {
        /// Keystore file.
        #[arg(long)]
        key: PathBuf,
        /// File holding the passphrase (default: TREASURY_KEYSTORE_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// The PSBT file (base64; `-` for standard input).
        psbt: PathBuf,
    },
}

fn passphrase(file: Option<&PathBuf>) -> Result<Zeroizing<String>, String> {
    let text = match file {
        Some(f) => Zeroizing::new(
            std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read passphrase file {}: {e}", f.display()))?,
        ),
        None => Zeroizing::new(std::env::var("TREASURY_KEYSTORE_PASSPHRASE").map_err(|_| {
            "no passphrase: set TREASURY_KEYSTORE_PASSPHRASE or give --passphrase-file".to_string()
        })?),
    };
    let trimmed = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
    if trimmed.is_empty() {
        return Err("the passphrase is empty".into());
    }
    Ok(trimmed)
}

/// Runs a `treasury officer` command; returns what to print on standard output.
///
/// # Errors
/// A message for standard error (never containing the passphrase or key material).
pub fn run_officer(cmd: OfficerCommand) -> Result<String, String> {
    match cmd {
        OfficerCommand::Keygen {
            out,
            id,
            network,
            path,
            passphrase_file,
            insecure_fast_kdf,
        } => {
            let pass = passphrase(passphrase_file.as_ref())?;
            let coin = if network == Network::Bitcoin { 0 } else { 1 };
            let path = path.unwrap_or_else(|| format!("m/48'/{coin}'/0'/2'"));
            let path = DerivationPath::from_str(&path)
                .map_err(|e| format!("account path {path:?}: {e}"))?;
            let ks =
                SoftwareKeystore::generate(id, network.into(), path).map_err(|e| e.to_string())?;
            let kdf = if insecure_fast_kdf {
                KdfParams::insecure_for_tests()
            } else {
                KdfParams::production()
            };
            ks.save(&out, &pass, kdf).map_err(|e| e.to_string())?;
            Ok(format!("{}\n", ks.descriptor_key()))
        }
        OfficerCommand::Show {
            key,
            passphrase_file,
        } => {
            let pass = passphrase(passphrase_file.as_ref())?;
            let ks = SoftwareKeystore::load(&key, &pass).map_err(|e| e.to_string())?;
            Ok(format!("{}\n", ks.descriptor_key()))
        }
        OfficerCommand::Sign {
            key,
            passphrase_file,
            psbt,
        } => {
            let pass = passphrase(passphrase_file.as_ref())?;
            let ks = SoftwareKeystore::load(&key, &pass).map_err(|e| e.to_string())?;
            let text = if psbt.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| format!("cannot read standard input: {e}"))?;
                s
            } else {
                std::fs::read_to_string(&psbt)
                    .map_err(|e| format!("cannot read {}: {e}", psbt.display()))?
            };
            let mut p = Psbt::from_str(text.trim()).map_err(|e| format!("malformed psbt: {e}"))?;
            let report = ks.sign_psbt(&mut p).map_err(|e| e.to_string())?;
            if report.is_empty() {
                return Err(format!(
                    "key {} signs no input of this psbt (no matching key origin)",
                    ks.descriptor_key()
                ));
            }
            eprintln!("signed inputs {:?}", report.inputs());
            Ok(format!("{p}\n"))
        }
    }
}
