-- The reserve ledger (docs/ledger-format.md). Entries are append-only: triggers reject UPDATE
-- and DELETE. The head row holds the appender state (size, last hash and time, the RFC 9162
-- compact frontier) and is updated in the same transaction as the entries it covers.
CREATE TABLE ledger_entries (
    seq          INTEGER PRIMARY KEY CHECK (seq >= 0),
    time_ms      INTEGER NOT NULL CHECK (time_ms >= 0),
    kind         INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    payload_type INTEGER NOT NULL,
    payload      BLOB    NOT NULL,
    prev_hash    BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    entry_hash   BLOB    NOT NULL CHECK (length(entry_hash) = 32)
);

CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;

CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;

CREATE TABLE ledger_head (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    size         INTEGER NOT NULL CHECK (size >= 0),
    last_hash    BLOB    NOT NULL CHECK (length(last_hash) = 32),
    last_time_ms INTEGER NOT NULL,
    frontier     BLOB    NOT NULL
);

INSERT INTO ledger_head (id, size, last_hash, last_time_ms, frontier)
VALUES (1, 0, zeroblob(32), 0, x'');
