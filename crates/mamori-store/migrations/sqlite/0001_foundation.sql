-- mamori schema, SQLite, migration 1: records, search index, accounts, audit log.
-- Enumerated states are TEXT with CHECK constraints, parsed at the store boundary.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Every version of every resource, whole (rule 2: nothing is lost).
CREATE TABLE resource_versions (
    seq          INTEGER PRIMARY KEY,            -- global version order
    rtype        TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL CHECK (version >= 1),
    last_updated INTEGER NOT NULL,               -- microseconds since epoch, UTC
    deleted      INTEGER NOT NULL CHECK (deleted IN (0, 1)),
    patient      TEXT,                           -- patient compartment
    author       TEXT    NOT NULL,               -- who wrote this version (GL-TRUE)
    body         TEXT    NOT NULL,               -- JSON; empty for a tombstone
    UNIQUE (rtype, id, version)
);
CREATE INDEX resource_versions_type ON resource_versions (rtype, seq);

-- The current version of each resource.
CREATE TABLE resources (
    rtype        TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted      INTEGER NOT NULL CHECK (deleted IN (0, 1)),
    patient      TEXT,
    PRIMARY KEY (rtype, id)
) WITHOUT ROWID;
CREATE INDEX resources_patient ON resources (patient, rtype) WHERE patient IS NOT NULL;
CREATE INDEX resources_updated ON resources (rtype, last_updated, id);

-- Search index rows of current, non-deleted versions.
CREATE TABLE idx_token (
    rtype TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
    system TEXT, code TEXT NOT NULL
);
CREATE INDEX idx_token_res ON idx_token (rtype, id);
CREATE INDEX idx_token_val ON idx_token (rtype, param, code, system);

CREATE TABLE idx_string (
    rtype TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
    norm TEXT NOT NULL, exact TEXT NOT NULL
);
CREATE INDEX idx_string_res ON idx_string (rtype, id);
CREATE INDEX idx_string_val ON idx_string (rtype, param, norm);

CREATE TABLE idx_date (
    rtype TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
    low INTEGER NOT NULL, high INTEGER NOT NULL
);
CREATE INDEX idx_date_res ON idx_date (rtype, id);
CREATE INDEX idx_date_val ON idx_date (rtype, param, low);

CREATE TABLE idx_ref (
    rtype TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
    target_type TEXT NOT NULL, target_id TEXT NOT NULL
);
CREATE INDEX idx_ref_res ON idx_ref (rtype, id);
CREATE INDEX idx_ref_val ON idx_ref (rtype, param, target_id, target_type);
CREATE INDEX idx_ref_target ON idx_ref (target_type, target_id);

-- Accounts.
CREATE TABLE users (
    name            TEXT PRIMARY KEY,
    display         TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('staff', 'emergency')),
    department      TEXT,
    password_hash   TEXT,
    must_change     INTEGER NOT NULL DEFAULT 0 CHECK (must_change IN (0, 1)),
    totp_secret     BLOB,
    totp_last_step  INTEGER,
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until    INTEGER,
    disabled        INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created         INTEGER NOT NULL,
    created_by      TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE user_roles (
    user_name TEXT NOT NULL REFERENCES users (name),
    role TEXT NOT NULL CHECK (role IN ('physician', 'nurse', 'pharmacist', 'clerk', 'admin', 'auditor', 'bcp-decider')),
    PRIMARY KEY (user_name, role)
) WITHOUT ROWID;

CREATE TABLE tokens (
    hash      BLOB PRIMARY KEY,                  -- SHA-256 of the secret
    user_name TEXT NOT NULL REFERENCES users (name),
    kind      TEXT NOT NULL CHECK (kind IN ('api', 'session')),
    label     TEXT,
    created   INTEGER NOT NULL,
    expires   INTEGER NOT NULL,
    revoked   INTEGER,                           -- time of revocation
    declared  TEXT                               -- emergency accounts: real name and affiliation
) WITHOUT ROWID;
CREATE INDEX tokens_user ON tokens (user_name);

CREATE TABLE care_assignments (
    id          INTEGER PRIMARY KEY,
    patient     TEXT NOT NULL,
    user_name   TEXT,
    department  TEXT,
    reason      TEXT,
    assigned_by TEXT NOT NULL,
    start       INTEGER NOT NULL,
    ended       INTEGER,
    CHECK ((user_name IS NULL) <> (department IS NULL))
);
CREATE INDEX care_patient ON care_assignments (patient);
CREATE INDEX care_user ON care_assignments (user_name, patient);
CREATE INDEX care_department ON care_assignments (department, patient);

-- The audit log: one row per event, in commit order; seq is the leaf index.
CREATE TABLE audit_events (
    seq     INTEGER PRIMARY KEY CHECK (seq >= 0),
    time    INTEGER NOT NULL,
    agent   TEXT NOT NULL,
    action  TEXT NOT NULL,
    rtype   TEXT,
    rid     TEXT,
    status  INTEGER NOT NULL,
    purpose TEXT,
    leaf    BLOB NOT NULL                        -- canonical encoding (docs/audit-format.md)
);
CREATE INDEX audit_time ON audit_events (time);

-- Who accessed which patient, and what each user did: derived from the
-- events by the writer in sorted batches (about once a second, and before
-- every query that uses them); the cursor 'audit-index' in `cursors` says
-- up to which event they are complete.
CREATE TABLE audit_patients (
    patient TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (patient, seq)
) WITHOUT ROWID;

CREATE TABLE audit_agents (
    agent TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (agent, seq)
) WITHOUT ROWID;

-- Complete nodes of the Merkle tree: level 0 are leaf hashes.
CREATE TABLE merkle_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- Signed checkpoints (C2SP signed notes), one per tree size.
CREATE TABLE checkpoints (
    size   INTEGER PRIMARY KEY,
    time   INTEGER NOT NULL,
    reason TEXT NOT NULL,
    note   TEXT NOT NULL
);
