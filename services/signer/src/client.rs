//! The service's client of the policy signer (Unix socket, or mutual TLS across hosts): one
//! connection kept open, re-opened when it broke.
//!
//! A call on a kept connection that fails at the transport (the signer restarted) is retried
//! once on a new connection. Every operation is safe to repeat: a spend signed twice is one
//! velocity entry (by request id), an order applies to one state only, a checkpoint of the
//! same size and root is signed again.

use std::path::{Path, PathBuf};

use bitcoin::{Psbt, Script};
use hsm::policy_signer::SpendAuthorization;
use policies::freeze::{AdminSignature, FreezeOrder, FreezeState};
use policies::governance::{Activation, ChangeOrder};
use policies::Approval;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

use crate::core::{ProofReceipt, SpendReceipt, Status};
use crate::proto::{
    psbt_from_wire, psbt_to_wire, read_frame, write_frame, ErrorBody, ProtoError, Request, Response,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The signer could not be reached or the connection failed.
    #[error("policy signer at {path}: {source}")]
    Transport {
        /// The socket path or address.
        path: String,
        /// What failed.
        #[source]
        source: ProtoError,
    },
    /// The signer refused or failed (its code and message).
    #[error("policy signer refused ({}): {}", .0.code, .0.message)]
    Refused(ErrorBody),
    /// The signer answered something else than the request calls for.
    #[error("policy signer answered unexpectedly: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The signer's error code, for a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused(b) => Some(&b.code),
            _ => None,
        }
    }
}

/// A byte stream to the signer.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

enum Endpoint {
    Unix(PathBuf),
    Tls {
        addr: String,
        name: rustls_pki_types::ServerName<'static>,
        connector: TlsConnector,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tls { addr, .. } => write!(f, "tls:{addr}"),
        }
    }
}

/// A client of the policy signer over a Unix socket or mutual TLS.
pub struct SignerClient {
    endpoint: Endpoint,
    conn: Mutex<Option<Box<dyn Stream>>>,
}

impl std::fmt::Debug for SignerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl SignerClient {
    /// A client for the Unix socket `path` (connects at the first call).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SignerClient {
            endpoint: Endpoint::Unix(path.into()),
            conn: Mutex::new(None),
        }
    }

    /// A client for the signer at `addr` (`host:port`) over mutual TLS, expecting its
    /// certificate to name `server_name` ([`crate::tls::client_config`] builds `config`).
    ///
    /// # Errors
    /// [`ClientError::Unexpected`] for a server name that is not a DNS name or an address.
    pub fn tls(
        addr: impl Into<String>,
        server_name: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Self, ClientError> {
        let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| ClientError::Unexpected(format!("server name: {e}")))?;
        Ok(SignerClient {
            endpoint: Endpoint::Tls {
                addr: addr.into(),
                name,
                connector: TlsConnector::from(config),
            },
            conn: Mutex::new(None),
        })
    }

    /// Where the signer is (`unix:<path>` or `tls:<addr>`).
    pub fn endpoint(&self) -> String {
        format!("{:?}", self.endpoint)
    }

    /// The socket path, for a Unix socket client.
    pub fn path(&self) -> Option<&Path> {
        match &self.endpoint {
            Endpoint::Unix(p) => Some(p),
            Endpoint::Tls { .. } => None,
        }
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, ProtoError> {
        match &self.endpoint {
            Endpoint::Unix(p) => Ok(Box::new(UnixStream::connect(p).await?)),
            Endpoint::Tls {
                addr,
                name,
                connector,
            } => {
                let tcp = TcpStream::connect(addr.as_str()).await?;
                tcp.set_nodelay(true)?;
                Ok(Box::new(connector.connect(name.clone(), tcp).await?))
            }
        }
    }

    async fn exchange(stream: &mut Box<dyn Stream>, body: &[u8]) -> Result<Response, ProtoError> {
        write_frame(stream, body).await?;
        let frame = read_frame(stream).await?.ok_or_else(|| {
            ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the signer closed the connection",
            ))
        })?;
        Ok(serde_json::from_slice(&frame)?)
    }

    /// Sends one request and returns the response (an `Error` response becomes
    /// [`ClientError::Refused`]).
    ///
    /// # Errors
    /// [`ClientError::Transport`], [`ClientError::Refused`].
    pub async fn call(&self, req: &Request) -> Result<Response, ClientError> {
        let transport = |source| ClientError::Transport {
            path: self.endpoint(),
            source,
        };
        let body = serde_json::to_vec(req).map_err(|e| transport(e.into()))?;
        let mut guard = self.conn.lock().await;
        let reused = guard.is_some();
        let first = match guard.as_mut() {
            Some(s) => Self::exchange(s, &body).await,
            None => {
                let mut s = self.connect().await.map_err(transport)?;
                let r = Self::exchange(&mut s, &body).await;
                *guard = Some(s);
                r
            }
        };
        let response = match first {
            Ok(r) => r,
            Err(ProtoError::Io(_)) if reused => {
                *guard = None;
                let mut s = self.connect().await.map_err(transport)?;
                let r = Self::exchange(&mut s, &body).await;
                if r.is_ok() {
                    *guard = Some(s);
                }
                r.map_err(transport)?
            }
            Err(e) => {
                *guard = None;
                return Err(transport(e));
            }
        };
        match response {
            Response::Error(b) => Err(ClientError::Refused(b)),
            r => Ok(r),
        }
    }

    fn unexpected(r: &Response) -> ClientError {
        ClientError::Unexpected(format!("{r:?}").chars().take(200).collect())
    }

    /// The signer's state.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn status(&self) -> Result<Status, ClientError> {
        match self.call(&Request::Status).await? {
            Response::Status { status } => Ok(status),
            r => Err(Self::unexpected(&r)),
        }
    }

    /// Registers a vault (receive and change descriptors).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn register_vault(
        &self,
        name: &str,
        external: &str,
        internal: &str,
    ) -> Result<(), ClientError> {
        let req = Request::RegisterVault {
            name: name.to_owned(),
            external: external.to_owned(),
            internal: internal.to_owned(),
        };
        match self.call(&req).await? {
            Response::VaultRegistered => Ok(()),
            r => Err(Self::unexpected(&r)),
        }
    }

    /// Shows the signer the approvals of `auth` as they arrive (their delay runs from then).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn observe(&self, auth: &SpendAuthorization) -> Result<usize, ClientError> {
        match self.call(&Request::Observe { auth: auth.into() }).await? {
            Response::Observed { new } => Ok(new),
            r => Err(Self::unexpected(&r)),
        }
    }

    /// Asks the signer to sign a spend; returns the PSBT with the policy key's signatures.
    ///
    /// # Errors
    /// [`ClientError::Refused`] naming the check that failed, [`ClientError::Transport`].
    pub async fn sign_spend(
        &self,
        vault: &str,
        psbt: &Psbt,
        auth: &SpendAuthorization,
        tip_height: u32,
    ) -> Result<(Psbt, SpendReceipt), ClientError> {
        let req = Request::SignSpend {
            vault: vault.to_owned(),
            psbt: psbt_to_wire(psbt),
            auth: auth.into(),
            tip_height,
        };
        match self.call(&req).await? {
            Response::SpendSigned { psbt, receipt } => Ok((self.psbt(&psbt)?, receipt)),
            r => Err(Self::unexpected(&r)),
        }
    }

    fn psbt(&self, s: &str) -> Result<Psbt, ClientError> {
        psbt_from_wire(s).map_err(|source| ClientError::Transport {
            path: self.endpoint(),
            source,
        })
    }

    /// Asks the signer to sign a BIP-127 reserve proof.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn sign_proof(
        &self,
        psbt: &Psbt,
        request_id: &str,
        approvals: &[Approval],
    ) -> Result<(Psbt, ProofReceipt), ClientError> {
        let req = Request::SignProof {
            psbt: psbt_to_wire(psbt),
            request_id: request_id.to_owned(),
            approvals: approvals.to_vec(),
        };
        match self.call(&req).await? {
            Response::ProofSigned { psbt, receipt } => Ok((self.psbt(&psbt)?, receipt)),
            r => Err(Self::unexpected(&r)),
        }
    }

    /// Asks the signer to sign a BIP-322 proof of funds (`to_sign`).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn sign_proof_of_funds(
        &self,
        psbt: &Psbt,
        message: Option<&[u8]>,
        challenge: &Script,
        request_id: &str,
        approvals: &[Approval],
    ) -> Result<(Psbt, ProofReceipt), ClientError> {
        let req = Request::SignProofOfFunds {
            psbt: psbt_to_wire(psbt),
            message: message.map(hex::encode),
            challenge: challenge.to_hex_string(),
            request_id: request_id.to_owned(),
            approvals: approvals.to_vec(),
        };
        match self.call(&req).await? {
            Response::ProofSigned { psbt, receipt } => Ok((self.psbt(&psbt)?, receipt)),
            r => Err(Self::unexpected(&r)),
        }
    }

    /// Submits a policy change signed by the admins.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn submit_policy_change(
        &self,
        policy_toml: &str,
        order: &ChangeOrder,
        signatures: &[AdminSignature],
    ) -> Result<Activation, ClientError> {
        let req = Request::SubmitPolicyChange {
            policy_toml: policy_toml.to_owned(),
            order: order.clone(),
            signatures: signatures.to_vec(),
        };
        match self.call(&req).await? {
            Response::PolicyAccepted { activation } => Ok(activation),
            r => Err(Self::unexpected(&r)),
        }
    }

    /// Vetoes the held change.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn veto_policy_change(
        &self,
        order: &ChangeOrder,
        signature: &AdminSignature,
    ) -> Result<(), ClientError> {
        let req = Request::VetoPolicyChange {
            order: order.clone(),
            signature: signature.clone(),
        };
        match self.call(&req).await? {
            Response::PolicyVetoed => Ok(()),
            r => Err(Self::unexpected(&r)),
        }
    }

    /// Submits a freeze or lift order.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn submit_freeze(
        &self,
        order: &FreezeOrder,
        signatures: &[AdminSignature],
    ) -> Result<FreezeState, ClientError> {
        let req = Request::SubmitFreeze {
            order: order.clone(),
            signatures: signatures.to_vec(),
        };
        match self.call(&req).await? {
            Response::FreezeApplied { state } => Ok(state),
            r => Err(Self::unexpected(&r)),
        }
    }

    /// Asks the signer to sign the ledger checkpoint (`size`, `root`), proven consistent with
    /// the last one it signed by `proof`; returns the signed note.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn sign_checkpoint(
        &self,
        size: u64,
        root: &[u8; 32],
        proof: &[[u8; 32]],
    ) -> Result<String, ClientError> {
        let req = Request::SignCheckpoint {
            size,
            root: hex::encode(root),
            proof: proof.iter().map(hex::encode).collect(),
        };
        match self.call(&req).await? {
            Response::CheckpointSigned { note } => Ok(note),
            r => Err(Self::unexpected(&r)),
        }
    }
}
