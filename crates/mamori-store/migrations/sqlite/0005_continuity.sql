-- mamori schema, SQLite, migration 5: care without the normal system
-- (provisional registration, merges, snapshots, standalone nodes,
-- reconciliation).

-- Provisional patient numbers, per day (per node: each node has its own database).
CREATE TABLE provisional_seq (
    day TEXT PRIMARY KEY,
    n   INTEGER NOT NULL
);

-- Patient merges ($merge) and their undoing.
CREATE TABLE merges (
    id          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    target      TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('merged', 'unmerged')),
    changes     TEXT NOT NULL,   -- JSON [[rtype, id, version before, version after], ...]
    reason      TEXT,
    by_user     TEXT NOT NULL,
    at          INTEGER NOT NULL,
    undone_by   TEXT,
    undone_at   INTEGER,
    reviewed_by TEXT,
    reviewed_at INTEGER,
    review      TEXT
);

-- Snapshot keys: the public half in clear, the private half sealed under a
-- secret split among custodians (and optionally wrapped by a passphrase).
CREATE TABLE snapshot_keys (
    id          TEXT PRIMARY KEY,
    created     INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    threshold   INTEGER NOT NULL,
    custodians  TEXT NOT NULL,    -- JSON list of names
    public_pem  TEXT NOT NULL,
    sealed      TEXT NOT NULL,    -- JSON: the sealed private key and passphrase wrap
    active      INTEGER NOT NULL
);

CREATE TABLE snapshots (
    id        TEXT PRIMARY KEY,
    created   INTEGER NOT NULL,
    file      TEXT NOT NULL,
    bytes     INTEGER NOT NULL,
    sha256    TEXT NOT NULL,
    patients  INTEGER NOT NULL,
    resources INTEGER NOT NULL,
    key_id    TEXT NOT NULL,
    by_user   TEXT NOT NULL
);

-- On a standalone node: what it is, and the reference copy it started from.
CREATE TABLE standalone (
    node        TEXT PRIMARY KEY,
    snapshot    TEXT NOT NULL,
    institution TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    created     INTEGER NOT NULL
);
CREATE TABLE reference_resources (
    rtype   TEXT NOT NULL,
    id      TEXT NOT NULL,
    central_version INTEGER NOT NULL,
    local_version   INTEGER NOT NULL,
    PRIMARY KEY (rtype, id)
);

-- Reconciliation at the centre.
CREATE TABLE reconcile_imports (
    id          TEXT PRIMARY KEY,     -- the export's id
    node        TEXT NOT NULL,
    imported_at INTEGER NOT NULL,
    by_user     TEXT NOT NULL,
    report      TEXT NOT NULL
);
CREATE TABLE reconcile_tasks (
    id          INTEGER PRIMARY KEY,
    import      TEXT NOT NULL,        -- the export id (reconcile_imports.id once committed)
    kind        TEXT NOT NULL CHECK (kind IN ('conflict', 'match', 'unknown_patient')),
    rtype       TEXT NOT NULL,
    rid         TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('open', 'resolved')),
    detail      TEXT NOT NULL,        -- JSON: offline version, reason, suggestions
    resolution  TEXT,
    resolved_by TEXT,
    resolved_at INTEGER,
    created     INTEGER NOT NULL
);
CREATE INDEX reconcile_open ON reconcile_tasks (state, kind);

-- Which local version of a node's resource became which central version,
-- so that a later export from the same node continues from it.
CREATE TABLE reconcile_applied (
    node            TEXT NOT NULL,
    rtype           TEXT NOT NULL,
    id              TEXT NOT NULL,
    local_version   INTEGER NOT NULL,
    central_version INTEGER NOT NULL,
    PRIMARY KEY (node, rtype, id)
);
