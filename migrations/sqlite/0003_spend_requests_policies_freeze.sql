-- Spend requests, policy versions with their governance, and the freeze state (issue 5).
-- Every change of these rows is written in the same transaction as its reserve-ledger entry;
-- the ledger is the record, these tables are the current state and its history for queries.

-- A spend request: the immutable part it was built from (spec: JSON, the PSBT in base64) and
-- its current state. revision guards against two writers: every update names the revision it
-- read and bumps it.
CREATE TABLE spend_requests (
    id          TEXT    PRIMARY KEY,
    vault       TEXT    NOT NULL REFERENCES vaults (name),
    initiator   TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    policy_hash TEXT    NOT NULL,
    txid        TEXT    NOT NULL,
    amount_sat  INTEGER  NOT NULL CHECK (amount_sat >= 0),
    fee_sat     INTEGER  NOT NULL CHECK (fee_sat >= 0),
    created_ms  INTEGER  NOT NULL,
    approved_ms INTEGER,
    psbt        TEXT    NOT NULL,
    spec        TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    revision    INTEGER  NOT NULL CHECK (revision >= 0),
    updated_ms  INTEGER  NOT NULL
);
CREATE INDEX spend_requests_vault ON spend_requests (vault, created_ms);

-- Verified approvals and rejections, with the time the service received them.
CREATE TABLE spend_approvals (
    request_id  TEXT    NOT NULL REFERENCES spend_requests (id),
    approver    TEXT    NOT NULL,
    decision    TEXT    NOT NULL CHECK (decision IN ('approve', 'reject')),
    approval    TEXT    NOT NULL,
    received_ms INTEGER  NOT NULL,
    PRIMARY KEY (request_id, approver, decision)
);

-- Every transition of a request (JSON of custody::request::Transition), in order.
CREATE TABLE spend_transitions (
    request_id TEXT    NOT NULL REFERENCES spend_requests (id),
    seq        INTEGER  NOT NULL CHECK (seq >= 0),
    at_ms      INTEGER  NOT NULL,
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    transition TEXT    NOT NULL,
    PRIMARY KEY (request_id, seq)
);

-- Policy versions by content address: proposed (waiting for the admin quorum), accepted (the
-- quorum signed; activates at activates_at_ms unless vetoed), active (exactly one),
-- superseded, vetoed.
CREATE TABLE policy_versions (
    hash            TEXT    PRIMARY KEY,
    version         INTEGER  NOT NULL,
    document        TEXT    NOT NULL,
    status          TEXT    NOT NULL
        CHECK (status IN ('proposed', 'accepted', 'active', 'superseded', 'vetoed')),
    base_hash       TEXT,
    kind            TEXT,
    loosened        TEXT    NOT NULL,
    issued_at_ms    INTEGER  NOT NULL,
    activates_at_ms INTEGER,
    activated_ms    INTEGER,
    updated_ms      INTEGER  NOT NULL
);
CREATE UNIQUE INDEX policy_versions_one_active ON policy_versions (status) WHERE status = 'active';

-- Admin signatures on a proposal: approvals of the change order, and vetoes.
CREATE TABLE policy_signatures (
    policy_hash TEXT    NOT NULL REFERENCES policy_versions (hash),
    admin       TEXT    NOT NULL,
    purpose     TEXT    NOT NULL CHECK (purpose IN ('approve', 'veto')),
    signature   TEXT    NOT NULL,
    received_ms INTEGER  NOT NULL,
    PRIMARY KEY (policy_hash, admin, purpose)
);

-- The freeze state (one row) and every order applied to it.
CREATE TABLE freeze_state (
    id         INTEGER  PRIMARY KEY CHECK (id = 1),
    frozen     INTEGER  NOT NULL CHECK (frozen IN (0, 1)),
    seq        INTEGER  NOT NULL CHECK (seq >= 0),
    since_ms   INTEGER,
    updated_ms INTEGER  NOT NULL
);
INSERT INTO freeze_state (id, frozen, seq, since_ms, updated_ms) VALUES (1, 0, 0, NULL, 0);

CREATE TABLE freeze_orders (
    seq        INTEGER  PRIMARY KEY CHECK (seq >= 0),
    action     TEXT    NOT NULL CHECK (action IN ('freeze', 'lift')),
    order_json TEXT    NOT NULL,
    signatures TEXT    NOT NULL,
    applied_ms INTEGER  NOT NULL
);
