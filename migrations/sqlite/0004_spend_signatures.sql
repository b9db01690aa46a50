-- The signing path of spend requests (issue 6): each request's PSBT as signed so far, and the
-- policy key's signatures (the policy signer's record for velocity). Every change is written in
-- the same transaction as its `signature` ledger entry.

-- The request's PSBT with every partial signature accepted so far (verified on arrival).
-- `signatures` guards against two writers: an update names the count it read.
CREATE TABLE spend_signed_psbts (
    request_id TEXT    PRIMARY KEY REFERENCES spend_requests (id),
    psbt       TEXT    NOT NULL,
    signatures INTEGER  NOT NULL CHECK (signatures >= 0),
    updated_ms INTEGER  NOT NULL
);

-- Every signature the policy key made, by request.
CREATE TABLE spend_policy_signatures (
    request_id TEXT    NOT NULL REFERENCES spend_requests (id),
    txid       TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    signed_ms  INTEGER  NOT NULL,
    PRIMARY KEY (request_id, key)
);
