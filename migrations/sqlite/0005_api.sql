-- The HTTPS API (issue 8): what several `treasury serve` instances against one database must
-- share. Tokens are stored only as the SHA-256 of the secret; the creation of each token is
-- recorded in the reserve ledger in the same transaction as its row.
CREATE TABLE api_tokens (
    token_hash TEXT    PRIMARY KEY CHECK (length(token_hash) = 64),
    token_id   TEXT    NOT NULL UNIQUE,
    principal  TEXT    NOT NULL,
    role       TEXT    NOT NULL CHECK (role IN ('admin', 'officer', 'auditor', 'integrator')),
    vaults     TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE INDEX api_tokens_principal ON api_tokens (principal);

-- Idempotency keys of spend-request creation: per principal, the SHA-256 of the canonical
-- request body and the request it created. The row is written before the request is built
-- (so two instances racing on one key cannot both build) and removed if building fails.
CREATE TABLE api_idempotency (
    principal  TEXT    NOT NULL,
    idem_key   TEXT    NOT NULL,
    body_hash  TEXT    NOT NULL CHECK (length(body_hash) = 64),
    request_id TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (principal, idem_key)
);
