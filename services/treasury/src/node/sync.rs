//! Following the node for one vault: blocks from the vault's checkpoint to the tip, then the
//! mempool.
//!
//! Why apart from the client: this is the only place bdk_bitcoind_rpc's emitter is used; the
//! vault applies what it emits (reorgs included) and the service stores the result.

use bdk_bitcoind_rpc::bitcoincore_rpc::Client;
use bdk_bitcoind_rpc::Emitter;
use custody::vault::{Vault, VaultEvent};

use super::{rpc_error, SyncError};

/// Follows the node from the vault's checkpoint (or its birthday) to the tip, then reads the
/// mempool. Reorgs are handled by the emitter (it re-emits from the fork point). Returns the
/// deposits, spends, confirmations and reorgs seen. Blocking.
///
/// # Errors
/// [`SyncError::Rpc`] when the node fails mid-way (what was applied stays staged and is
/// consistent: persist it and sync again), [`SyncError::Vault`].
pub fn sync_vault(vault: &mut Vault, client: &Client) -> Result<Vec<VaultEvent>, SyncError> {
    let checkpoint = vault.latest_checkpoint();
    let start = vault.config().birthday;
    let expected = vault.unconfirmed_transactions();
    vault.with_events(|v| {
        let mut emitter = Emitter::new(client, checkpoint, start, expected);
        while let Some(ev) = emitter.next_block().map_err(rpc_error)? {
            let height = ev.block_height();
            let connected_to = ev.connected_to();
            v.apply_block(&ev.block, height, connected_to)?;
        }
        let mempool = emitter.mempool().map_err(rpc_error)?;
        v.apply_mempool(mempool.update, mempool.evicted);
        Ok(())
    })
}
