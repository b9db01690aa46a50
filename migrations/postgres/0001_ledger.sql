-- The reserve ledger (docs/ledger-format.md). Entries are append-only: triggers reject UPDATE,
-- DELETE and TRUNCATE. The head row holds the appender state (size, last hash and time, the
-- RFC 9162 compact frontier); appenders lock it (SELECT ... FOR UPDATE) so concurrent
-- appenders, in any number of processes, serialize with no fork and no gap.
CREATE TABLE ledger_entries (
    seq          BIGINT  PRIMARY KEY CHECK (seq >= 0),
    time_ms      BIGINT  NOT NULL CHECK (time_ms >= 0),
    kind         INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    payload_type INTEGER NOT NULL,
    payload      BYTEA   NOT NULL,
    prev_hash    BYTEA   NOT NULL CHECK (octet_length(prev_hash) = 32),
    entry_hash   BYTEA   NOT NULL CHECK (octet_length(entry_hash) = 32)
);

CREATE FUNCTION ledger_entries_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only';
END;
$$;

CREATE TRIGGER ledger_entries_no_update_delete BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();

CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_append_only();

CREATE TABLE ledger_head (
    id           SMALLINT PRIMARY KEY CHECK (id = 1),
    size         BIGINT   NOT NULL CHECK (size >= 0),
    last_hash    BYTEA    NOT NULL CHECK (octet_length(last_hash) = 32),
    last_time_ms BIGINT   NOT NULL,
    frontier     BYTEA    NOT NULL
);

INSERT INTO ledger_head (id, size, last_hash, last_time_ms, frontier)
VALUES (1, 0, decode(repeat('00', 32), 'hex'), 0, ''::bytea);
