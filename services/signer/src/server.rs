//! The server: requests from a stream, answered by the core, one at a time.
//!
//! [`dispatch`] maps one [`Request`] to one [`Response`]; [`serve_stream`] runs it over any
//! `AsyncRead + AsyncWrite` stream; [`serve_unix`] listens on a Unix socket created with mode
//! 0600 and serves only peers whose uid (`SO_PEERCRED`) is the allowed one. The core runs
//! under a mutex inside `spawn_blocking` (a PKCS#11 call blocks), so requests are serialized:
//! the state log has one writer.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use bitcoin::ScriptBuf;
use hsm::policy_signer::SpendAuthorization;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;

use crate::core::{CoreError, SignerCore};
use crate::proto::{
    psbt_from_wire, psbt_to_wire, read_frame, write_frame, ErrorBody, ProtoError, Request, Response,
};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding or configuring the socket failed.
    #[error("socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// The core shared by connections.
pub type SharedCore = Arc<Mutex<SignerCore>>;

fn error(code: &str, message: impl Into<String>) -> Response {
    Response::Error(ErrorBody {
        code: code.to_owned(),
        message: message.into(),
    })
}

fn core_error(e: &CoreError) -> Response {
    error(e.code(), e.to_string())
}

fn proto_error(e: &ProtoError) -> Response {
    error("bad_request", e.to_string())
}

fn hex_digest(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Runs one request on the core.
pub fn dispatch(core: &mut SignerCore, req: Request) -> Response {
    macro_rules! try_proto {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return proto_error(&e),
            }
        };
    }
    macro_rules! try_core {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return core_error(&e),
            }
        };
    }
    match req {
        Request::Status => Response::Status {
            status: try_core!(core.status()),
        },
        Request::RegisterVault {
            name,
            external,
            internal,
        } => {
            try_core!(core.register_vault(&name, &external, &internal));
            Response::VaultRegistered
        }
        Request::Observe { auth } => {
            let auth: SpendAuthorization = try_proto!(auth.try_into());
            Response::Observed {
                new: try_core!(core.observe(&auth)),
            }
        }
        Request::SignSpend {
            vault,
            psbt,
            auth,
            tip_height,
        } => {
            let psbt = try_proto!(psbt_from_wire(&psbt));
            let auth: SpendAuthorization = try_proto!(auth.try_into());
            let (signed, receipt) = try_core!(core.sign_spend(&vault, &psbt, &auth, tip_height));
            Response::SpendSigned {
                psbt: psbt_to_wire(&signed),
                receipt,
            }
        }
        Request::SignProof {
            psbt,
            request_id,
            approvals,
        } => {
            let psbt = try_proto!(psbt_from_wire(&psbt));
            let (signed, receipt) = try_core!(core.sign_proof(&psbt, &request_id, &approvals));
            Response::ProofSigned {
                psbt: psbt_to_wire(&signed),
                receipt,
            }
        }
        Request::SignProofOfFunds {
            psbt,
            message,
            challenge,
            request_id,
            approvals,
        } => {
            let psbt = try_proto!(psbt_from_wire(&psbt));
            let message = match message.map(hex::decode).transpose() {
                Ok(m) => m,
                Err(e) => return error("bad_request", format!("message: {e}")),
            };
            let challenge = match ScriptBuf::from_hex(&challenge) {
                Ok(c) => c,
                Err(e) => return error("bad_request", format!("challenge: {e}")),
            };
            let (signed, receipt) = try_core!(core.sign_proof_of_funds(
                &psbt,
                message.as_deref(),
                &challenge,
                &request_id,
                &approvals
            ));
            Response::ProofSigned {
                psbt: psbt_to_wire(&signed),
                receipt,
            }
        }
        Request::SubmitPolicyChange {
            policy_toml,
            order,
            signatures,
        } => Response::PolicyAccepted {
            activation: try_core!(core.submit_policy_change(&policy_toml, &order, &signatures)),
        },
        Request::VetoPolicyChange { order, signature } => {
            try_core!(core.veto_policy_change(&order, &signature));
            Response::PolicyVetoed
        }
        Request::SubmitFreeze { order, signatures } => Response::FreezeApplied {
            state: try_core!(core.submit_freeze(&order, &signatures)),
        },
        Request::SignCheckpoint { size, root, proof } => {
            let Some(root) = hex_digest(&root) else {
                return error("bad_request", "root must be 64 hex digits");
            };
            let proof: Option<Vec<[u8; 32]>> = proof.iter().map(|h| hex_digest(h)).collect();
            let Some(proof) = proof else {
                return error("bad_request", "proof hashes must be 64 hex digits");
            };
            Response::CheckpointSigned {
                note: try_core!(core.sign_checkpoint(size, root, &proof)),
            }
        }
    }
}

/// Serves requests from one stream until it ends or fails.
///
/// # Errors
/// [`ProtoError`] when the stream fails (a malformed request is answered, not an error).
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    core: SharedCore,
) -> Result<(), ProtoError> {
    while let Some(frame) = read_frame(&mut stream).await? {
        let response = match serde_json::from_slice::<Request>(&frame) {
            Err(e) => error("bad_request", e.to_string()),
            Ok(req) => {
                let core = core.clone();
                tokio::task::spawn_blocking(move || {
                    let mut guard = core.lock().unwrap_or_else(PoisonError::into_inner);
                    dispatch(&mut guard, req)
                })
                .await
                .unwrap_or_else(|e| error("internal", format!("request task failed: {e}")))
            }
        };
        let bytes = serde_json::to_vec(&response)?;
        write_frame(&mut stream, &bytes).await?;
    }
    Ok(())
}

/// Listens on the Unix socket `path` (replacing a stale socket file; mode 0600) and serves
/// each connection whose peer uid is `allowed_uid` (the signer's own uid when `None`) until
/// `shutdown` completes. Other peers are closed without a word.
///
/// # Errors
/// [`ServerError::Socket`] when the socket cannot be bound or its mode set.
pub async fn serve_unix(
    core: SharedCore,
    path: &Path,
    allowed_uid: Option<u32>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let sock_err = |source| ServerError::Socket {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        std::fs::remove_file(path).map_err(sock_err)?;
    }
    let listener = UnixListener::bind(path).map_err(sock_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(sock_err)?;
    let allowed = match allowed_uid {
        Some(u) => u,
        None => own_uid(path).map_err(sock_err)?,
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let uid = stream.peer_cred().map(|c| c.uid()).ok();
                if uid != Some(allowed) {
                    drop(stream);
                    continue;
                }
                let core = core.clone();
                tokio::spawn(async move {
                    let _ = serve_stream(stream, core).await;
                });
            }
        }
    }
}

/// The uid owning the socket file we just created: our effective uid, without `unsafe`.
fn own_uid(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.uid())
}
