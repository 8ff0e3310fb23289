-- mamori schema, PostgreSQL, migration 14: FHIR Bulk Data exports.

-- An export job: who asked, what, and how far it got. Its output lives in
-- bulk_export_files until it expires, in the database rather than on one
-- server's disk, so that any server of a cluster answers the status and
-- the downloads.
CREATE TABLE bulk_exports (
    id          TEXT PRIMARY KEY,      -- random, unguessable; in the status URL
    owner       TEXT NOT NULL,         -- the user name that asked
    token       TEXT,                  -- the token it asked with (id, not secret)
    request     TEXT NOT NULL,         -- the kick-off URL as asked
    params      TEXT NOT NULL,         -- the parsed request (JSON)
    state       TEXT NOT NULL,         -- queued | running | complete | failed | cancelled
    tx_time     BIGINT NOT NULL,         -- transactionTime: nothing later is exported
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    finished_at BIGINT,
    expires_at  BIGINT,                  -- output removed after this
    progress    TEXT,                  -- for X-Progress
    summary     TEXT,                  -- JSON: counts, withheld, patients
    error       TEXT                   -- why it failed
);
CREATE INDEX bulk_exports_state ON bulk_exports (state);
CREATE INDEX bulk_exports_owner ON bulk_exports (owner, state);

-- One NDJSON output file of an export.
CREATE TABLE bulk_export_files (
    export_id   TEXT NOT NULL,
    n           BIGINT NOT NULL,         -- file number within the export (1, 2, ...)
    rtype       TEXT NOT NULL,         -- the type of every resource in it
    count       BIGINT NOT NULL,         -- resources (lines)
    sha256      TEXT NOT NULL,         -- hex digest of body
    body        BYTEA NOT NULL,         -- NDJSON
    PRIMARY KEY (export_id, n)
);
