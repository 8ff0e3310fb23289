-- mamori schema, SQLite, migration 4: exchange with partner institutions (guideline 6.10).

-- The partner registry: the registration in force.
CREATE TABLE partners (
    id         TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    as2_id     TEXT NOT NULL UNIQUE,
    status     TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    doc        TEXT NOT NULL,          -- the registration (JSON)
    updated_by TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Every version of every registration, for contract reviews.
CREATE TABLE partner_versions (
    id      TEXT NOT NULL,
    version INTEGER NOT NULL,
    doc     TEXT NOT NULL,
    by_user TEXT NOT NULL,
    at      INTEGER NOT NULL,
    note    TEXT,
    PRIMARY KEY (id, version)
);

-- The exchange ledger: one row per AS2 message, either direction.
CREATE TABLE exchange_messages (
    id              TEXT PRIMARY KEY,      -- mamori's id (UUIDv7)
    direction       TEXT NOT NULL CHECK (direction IN ('out', 'in')),
    kind            TEXT NOT NULL CHECK (kind IN ('document', 'mdn')),  -- 'mdn': an asynchronous receipt mamori sends
    message_id      TEXT NOT NULL,         -- the AS2 Message-ID, without <>
    partner         TEXT NOT NULL,         -- partner id; '' when the sender is unknown
    partner_version INTEGER,               -- the registration in force at the time
    send_id         TEXT,                  -- outbound: the request it belongs to
    patient         TEXT,
    purpose         TEXT,
    basis           TEXT,                  -- JSON
    state           TEXT NOT NULL,
    content_type    TEXT,
    payload_sha256  TEXT,
    size            INTEGER,
    mic             TEXT,                  -- "<base64>, sha-256"
    algorithms      TEXT,                  -- JSON
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt    INTEGER,
    deadline        INTEGER,               -- asynchronous MDN deadline
    failure_segment TEXT,
    failure         TEXT,
    mdn             TEXT,                  -- the disposition received or sent
    created_by      TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
-- One Message-ID per partner and direction, except for refused inbound attempts.
CREATE UNIQUE INDEX exchange_message_ids ON exchange_messages (direction, partner, message_id) WHERE state <> 'rejected';
CREATE INDEX exchange_due ON exchange_messages (state, next_attempt);
CREATE INDEX exchange_by_patient ON exchange_messages (patient, created_at);
CREATE INDEX exchange_by_time ON exchange_messages (created_at);

-- Outbound bodies (already encrypted to the recipient) until the send ends.
CREATE TABLE exchange_outbox (
    message TEXT PRIMARY KEY REFERENCES exchange_messages (id),
    url     TEXT,                          -- NULL: the partner's registered endpoint
    headers TEXT NOT NULL,                 -- JSON list of [name, value]
    body    BLOB NOT NULL
);

-- Each hop of each message, and whose responsibility it was then (EX-B1a).
CREATE TABLE exchange_hops (
    message TEXT NOT NULL REFERENCES exchange_messages (id),
    seq     INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    hop     TEXT NOT NULL,
    party   TEXT NOT NULL,
    detail  TEXT,
    PRIMARY KEY (message, seq)
);

-- Verified inbound documents and where they went.
CREATE TABLE exchange_inbound (
    message    TEXT PRIMARY KEY REFERENCES exchange_messages (id),
    payload    BLOB NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('matched', 'unmatched')),
    patient    TEXT,
    document   TEXT,                       -- DocumentReference/<id> once matched
    matched_by TEXT,
    matched_at INTEGER,
    summary    TEXT NOT NULL               -- JSON: what the document says about its patient
);
CREATE INDEX exchange_inbound_state ON exchange_inbound (state);

-- Inbound messages that failed verification: kept apart from clinical data.
CREATE TABLE exchange_quarantine (
    id           INTEGER PRIMARY KEY,
    message      TEXT,
    at           INTEGER NOT NULL,
    peer         TEXT,
    claimed_from TEXT,
    message_id   TEXT,
    reason       TEXT NOT NULL,
    disposition  TEXT,
    headers      TEXT NOT NULL,
    body         BLOB
);
