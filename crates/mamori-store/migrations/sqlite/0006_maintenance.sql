-- mamori schema, SQLite, migration 6: remote maintenance (guideline 6.10 EX-B1e).

CREATE TABLE maint_vendors (
    id      TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    contact TEXT NOT NULL,
    created INTEGER NOT NULL,
    created_by TEXT NOT NULL
);

-- One dedicated account per maintenance person (never shared).
CREATE TABLE maint_people (
    id          TEXT PRIMARY KEY,
    vendor      TEXT NOT NULL REFERENCES maint_vendors (id),
    display     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'left')),
    totp_secret BLOB NOT NULL,
    totp_last_step INTEGER,
    sources     TEXT NOT NULL,          -- JSON list of allowed CIDR blocks
    cert_sha256 TEXT NOT NULL,          -- the current client certificate
    created     INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    left_at     INTEGER,
    last_used   INTEGER
);

-- Every client certificate issued, and its revocation.
CREATE TABLE maint_certs (
    sha256     TEXT PRIMARY KEY,
    person     TEXT NOT NULL REFERENCES maint_people (id),
    serial     TEXT NOT NULL,
    not_after  INTEGER NOT NULL,
    issued     INTEGER NOT NULL,
    revoked_at INTEGER,
    revoked_by TEXT
);

CREATE TABLE maint_requests (
    id           INTEGER PRIMARY KEY,
    person       TEXT NOT NULL REFERENCES maint_people (id),
    reason       TEXT NOT NULL,
    scopes       TEXT NOT NULL,         -- JSON list
    start        INTEGER NOT NULL,
    end_at       INTEGER NOT NULL,
    emergency    INTEGER NOT NULL CHECK (emergency IN (0, 1)),
    state        TEXT NOT NULL CHECK (state IN ('requested', 'approved', 'rejected', 'revoked', 'closed')),
    requested_by TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    approvals    TEXT NOT NULL,         -- JSON list of {by, at}
    needed       INTEGER NOT NULL,
    decided_by   TEXT,
    decided_at   INTEGER,
    decision_note TEXT,
    closed_at    INTEGER,
    summary      TEXT,                  -- JSON, at close
    review       TEXT CHECK (review IN ('pending', 'accepted', 'questioned')),
    review_due   INTEGER,
    reviewed_by  TEXT,
    reviewed_at  INTEGER,
    review_note  TEXT,
    overdue_reported INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX maint_requests_state ON maint_requests (state, end_at);

CREATE TABLE maint_sessions (
    token_hash BLOB PRIMARY KEY,
    request    INTEGER NOT NULL REFERENCES maint_requests (id),
    person     TEXT NOT NULL,
    cert_sha256 TEXT NOT NULL,
    address    TEXT,
    started    INTEGER NOT NULL,
    expires    INTEGER NOT NULL,
    ended      INTEGER,
    end_reason TEXT
);
CREATE INDEX maint_sessions_request ON maint_sessions (request);
