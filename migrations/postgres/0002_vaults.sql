-- Vaults (watch-only multisig descriptor wallets). A vault's wallet state is the merge of its
-- bdk ChangeSets, stored append-only as JSON in vault_changesets; a vault row never changes.
CREATE TABLE vaults (
    name                TEXT    PRIMARY KEY,
    network             TEXT    NOT NULL,
    external_descriptor TEXT    NOT NULL,
    internal_descriptor TEXT    NOT NULL,
    birthday            BIGINT  NOT NULL CHECK (birthday >= 0),
    gap_limit           BIGINT  NOT NULL CHECK (gap_limit > 0),
    created_ms          BIGINT  NOT NULL
);

CREATE TABLE vault_changesets (
    vault     TEXT    NOT NULL REFERENCES vaults (name),
    seq       BIGINT  NOT NULL CHECK (seq >= 0),
    changeset TEXT    NOT NULL,
    PRIMARY KEY (vault, seq)
);

-- Coins held by a pending request: an outpoint can be reserved once (primary key), so two
-- concurrent builders never spend the same coin. Rows go on release or expiry.
CREATE TABLE utxo_reservations (
    outpoint   TEXT    PRIMARY KEY,
    vault      TEXT    NOT NULL REFERENCES vaults (name),
    request    TEXT    NOT NULL,
    txid       TEXT    NOT NULL,
    expires_ms BIGINT  NOT NULL
);
CREATE INDEX utxo_reservations_request ON utxo_reservations (request);
