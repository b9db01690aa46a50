//! The order file admins sign offline (`treasury officer sign-order`): a policy change (to
//! approve or veto) or a freeze/lift order, as JSON.
//!
//! Why in `files/`: the admin's offline tool reads it with no database; the service writes it
//! and the API shows it, so the format stands apart from all three.

use policies::freeze::FreezeOrder;
use policies::governance::ChangeOrder;
use serde::{Deserialize, Serialize};

/// What cannot be signed in an order file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrderFileError {
    /// Only policy changes can be vetoed.
    #[error("a freeze order cannot be vetoed (lift it with the admin quorum)")]
    NotVetoable,
}

/// An order for admins to sign offline (`treasury officer sign-order`), as a JSON file:
/// `{"change": {...}}` (approve or veto a policy change) or `{"freeze": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OrderFile {
    /// A policy change order.
    Change(ChangeOrder),
    /// A freeze or lift order.
    Freeze(FreezeOrder),
}

impl OrderFile {
    /// The digest an admin signs: the change digest (or its veto digest when `veto`), or the
    /// freeze order's digest.
    ///
    /// # Errors
    /// [`OrderFileError::NotVetoable`] for a veto of a freeze order.
    pub fn digest(&self, veto: bool) -> Result<[u8; 32], OrderFileError> {
        match (self, veto) {
            (OrderFile::Change(c), false) => Ok(c.digest()),
            (OrderFile::Change(c), true) => Ok(c.veto_digest()),
            (OrderFile::Freeze(f), false) => Ok(f.digest()),
            (OrderFile::Freeze(_), true) => Err(OrderFileError::NotVetoable),
        }
    }
}
