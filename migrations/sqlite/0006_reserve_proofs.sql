-- Proof-of-reserves requests (issue 7): a BIP-127 proof PSBT over every UTXO of the chosen vaults
-- at block H, signed through the normal signer path under the policy's reserve-proof rule.
-- Every change is written in the same transaction as its ledger entry.
--
-- Named 0006 (not 0005) so as not to collide with a sibling branch's 0005.
CREATE TABLE reserve_proofs (
    id          TEXT    PRIMARY KEY,
    -- JSON: the vault names, in proof order.
    vaults      TEXT    NOT NULL,
    network     TEXT    NOT NULL,
    height      INTEGER  NOT NULL CHECK (height >= 0),
    block_hash  TEXT    NOT NULL,
    -- The canonical proof message (custody::reserves::ProofMessage).
    message     TEXT    NOT NULL,
    -- The unsigned proof PSBT (base64).
    psbt        TEXT    NOT NULL,
    -- The PSBT with every signature accepted so far (verified on arrival).
    signed_psbt TEXT    NOT NULL,
    -- Guards against two writers: an update names the count it read.
    signatures  INTEGER  NOT NULL CHECK (signatures >= 0),
    -- JSON: [{outpoint, block_hash, value_sat, vault}] for every real input, in input order.
    outputs     TEXT    NOT NULL,
    -- JSON: [{vault, keychain, descriptor}] (public descriptors with key origins).
    descriptors TEXT    NOT NULL,
    total_sat   INTEGER  NOT NULL CHECK (total_sat >= 0),
    -- Tree size of the ledger checkpoint the message carries.
    checkpoint_size INTEGER NOT NULL CHECK (checkpoint_size >= 0),
    state       TEXT    NOT NULL CHECK (state IN ('signing', 'finalized')),
    -- The finalized proof transaction (hex), once finalized.
    final_tx    TEXT,
    created_ms  INTEGER  NOT NULL,
    updated_ms  INTEGER  NOT NULL
);
