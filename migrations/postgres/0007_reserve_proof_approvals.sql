-- Officers' approvals of reserve proofs (ADR 0013): BIP-340 signatures by members of the
-- policy's proof_quorum group over the form-independent proof subject
-- (policies::proof::ProofSubject: network, message commitment, set of outpoints, amount,
-- request id, policy version, expiry). Verified on arrival; each row is written in the same
-- transaction as its ledger entry naming the principal who submitted it. The policy signer
-- verifies them again, against the subject it re-derives from the PSBT, before it signs.
CREATE TABLE reserve_proof_approvals (
    proof_id    TEXT    NOT NULL REFERENCES reserve_proofs (id),
    approver    TEXT    NOT NULL,
    -- Hex of the proof subject digest the approval signs.
    subject     TEXT    NOT NULL,
    -- JSON of policies::Approval.
    approval    TEXT    NOT NULL,
    -- The principal who submitted it (the ledger entry's actor).
    actor       TEXT    NOT NULL,
    received_ms BIGINT  NOT NULL,
    PRIMARY KEY (proof_id, approver, subject)
);
