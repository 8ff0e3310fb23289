-- mamori schema, SQLite, migration 7: the Patient compartment in full,
-- service accounts, token issuers, account changes a second admin approves.

-- A resource is the data of every patient it names (fhir::compartment):
-- `patient` keeps the primary one; the others of a version are kept here
-- (space-separated, NULL when there are none).
ALTER TABLE resource_versions ADD COLUMN other_patients TEXT;

-- Every (patient, resource) membership of current versions (tombstones
-- included), for `$everything`, merges and care-restricted searches.
CREATE TABLE resource_compartments (
    patient TEXT NOT NULL,
    rtype   TEXT NOT NULL,
    id      TEXT NOT NULL,
    PRIMARY KEY (patient, rtype, id)
) WITHOUT ROWID;
CREATE INDEX resource_compartments_res ON resource_compartments (rtype, id);
INSERT INTO resource_compartments (patient, rtype, id)
    SELECT patient, rtype, id FROM resources WHERE patient IS NOT NULL;

-- A service account: a system of the hospital with roles of its own and
-- API tokens an admin issues it (no password login).
ALTER TABLE users ADD COLUMN service INTEGER NOT NULL DEFAULT 0 CHECK (service IN (0, 1));

-- Who issued a token, when not its holder (an admin, for a service account).
ALTER TABLE tokens ADD COLUMN issued_by TEXT;

-- Account changes that take effect only when a second admin approves them
-- (clinical role grants, password resets of clinical accounts).
CREATE TABLE account_requests (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('role-grant', 'password-reset')),
    user_name    TEXT NOT NULL REFERENCES users (name),
    roles        TEXT,                        -- role-grant: the roles asked for (comma-separated)
    reason       TEXT,
    requested_by TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'superseded')),
    decided_by   TEXT,
    decided_at   INTEGER
);
CREATE INDEX account_requests_state ON account_requests (state, id);
