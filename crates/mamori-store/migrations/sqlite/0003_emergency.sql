-- mamori schema, SQLite, migration 3: emergency operations (guideline 6.9).

-- Imported BCP plans; the newest version is in force.
CREATE TABLE bcp_plans (
    version     INTEGER PRIMARY KEY,
    toml        TEXT NOT NULL,
    imported_by TEXT NOT NULL,
    imported_at INTEGER NOT NULL
);

-- Declarations of an emergency (or a drill) and their state.
CREATE TABLE bcp_declarations (
    id           INTEGER PRIMARY KEY,
    cause        TEXT NOT NULL CHECK (cause IN ('disaster', 'cyber_attack', 'system_failure', 'mass_casualty', 'other')),
    criteria     TEXT NOT NULL,          -- JSON list of criterion ids
    reason       TEXT NOT NULL,
    drill        INTEGER NOT NULL CHECK (drill IN (0, 1)),
    state        TEXT NOT NULL CHECK (state IN ('proposed', 'activation', 'resumption', 'recovery', 'full_recovery', 'closed', 'stood_down')),
    plan_version INTEGER NOT NULL,
    declared_by  TEXT NOT NULL,
    confirmed_by TEXT,
    declared_at  INTEGER NOT NULL,
    closed_at    INTEGER,
    checkpoint   TEXT                    -- the signed audit checkpoint at declaration
);
-- At most one open declaration at a time.
CREATE UNIQUE INDEX bcp_one_open ON bcp_declarations ((1)) WHERE state NOT IN ('closed', 'stood_down');

CREATE TABLE bcp_transitions (
    id             INTEGER PRIMARY KEY,
    declaration    INTEGER NOT NULL REFERENCES bcp_declarations (id),
    from_state     TEXT NOT NULL,
    to_state       TEXT NOT NULL,
    by_user        TEXT NOT NULL,
    at             INTEGER NOT NULL,
    note           TEXT,
    override_reason TEXT
);

CREATE TABLE bcp_checklist (
    declaration INTEGER NOT NULL REFERENCES bcp_declarations (id),
    phase       TEXT NOT NULL,
    item        TEXT NOT NULL,
    done_by     TEXT NOT NULL,
    done_at     INTEGER NOT NULL,
    note        TEXT,
    PRIMARY KEY (declaration, phase, item)
);

-- After-action review (EM-B6) and, for cyber attacks, the authority report (EM-C4).
CREATE TABLE bcp_reviews (
    declaration  INTEGER PRIMARY KEY REFERENCES bcp_declarations (id),
    report       TEXT NOT NULL,          -- generated JSON report
    lessons      TEXT,
    completed_by TEXT,
    completed_at INTEGER
);

CREATE TABLE incident_reports (
    declaration INTEGER NOT NULL REFERENCES bcp_declarations (id),
    recipient   TEXT NOT NULL CHECK (recipient IN ('mhlw', 'police', 'patients')),
    done_by     TEXT NOT NULL,
    done_at     INTEGER NOT NULL,
    note        TEXT,
    PRIMARY KEY (declaration, recipient)
);

-- Break-glass grants (EM-B8 for single patients in normal mode).
CREATE TABLE break_glass (
    id            INTEGER PRIMARY KEY,
    user_name     TEXT NOT NULL,
    patient       TEXT NOT NULL,
    reason        TEXT NOT NULL,
    minutes       INTEGER NOT NULL CHECK (minutes > 0),
    started       INTEGER NOT NULL,
    expires       INTEGER NOT NULL,
    ended         INTEGER,
    review        TEXT NOT NULL DEFAULT 'pending' CHECK (review IN ('pending', 'accepted', 'questioned')),
    reviewed_by   TEXT,
    reviewed_at   INTEGER,
    review_note   TEXT
);
CREATE INDEX break_glass_live ON break_glass (user_name, patient, expires);
CREATE INDEX break_glass_review ON break_glass (review);

-- Sealed emergency accounts (the account itself is a row in users).
CREATE TABLE emergency_accounts (
    user_name    TEXT PRIMARY KEY REFERENCES users (name),
    state        TEXT NOT NULL CHECK (state IN ('awaiting_envelope', 'sealed', 'in_use', 'retired')),
    drill        INTEGER NOT NULL CHECK (drill IN (0, 1)),
    created      INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    sealed_at    INTEGER,
    unsealed_at  INTEGER,
    declared     TEXT,                   -- the real name and affiliation given at first login
    retired_at   INTEGER,
    replaced_by  TEXT
) WITHOUT ROWID;

-- Alerts: possible emergencies and security alerts.
CREATE TABLE alerts (
    id        INTEGER PRIMARY KEY,
    time      INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    severity  TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message   TEXT NOT NULL,
    detail    TEXT,                      -- JSON
    acked_by  TEXT,
    acked_at  INTEGER
);

-- Announcements and their delivery on each channel (durable outbox).
CREATE TABLE notifications (
    id      INTEGER PRIMARY KEY,
    time    INTEGER NOT NULL,
    event   TEXT NOT NULL,
    drill   INTEGER NOT NULL CHECK (drill IN (0, 1)),
    payload TEXT NOT NULL                -- JSON
);

CREATE TABLE deliveries (
    notification INTEGER NOT NULL REFERENCES notifications (id),
    channel      TEXT NOT NULL,          -- webhook:<name>, email:<address>
    state        TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    last_error   TEXT,
    delivered_at INTEGER,
    PRIMARY KEY (notification, channel)
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt);
