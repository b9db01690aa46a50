//! Vaults registered with the policy signer process (ADR 0017): the signer signs only for
//! vaults it was told about, and refuses one its policy key could be bypassed in.

use ::signer::SignerClient;
use custody::vault::{Vault, VaultConfig};

use crate::service::vaults::{OpError, VaultService};

impl VaultService {
    /// Creates a vault as [`VaultService::create`], registering it with the policy signer
    /// first when one is given: a refusal (for instance a spending path without the policy key
    /// and without a timelock) means the vault is not created, and the error names why.
    ///
    /// # Errors
    /// [`OpError::SignerRefused`] with the signer's reason, and as [`VaultService::create`].
    pub async fn create_registered(
        &self,
        config: VaultConfig,
        source: &str,
        signer: Option<&SignerClient>,
    ) -> Result<Vault, OpError> {
        if let Some(client) = signer {
            let d = &config.descriptor;
            client
                .register_vault(&config.name, &d.external_string(), &d.internal_string())
                .await
                .map_err(|e| OpError::SignerRefused {
                    vault: config.name.clone(),
                    reason: e.to_string(),
                })?;
        }
        self.create(config, source).await
    }
}
