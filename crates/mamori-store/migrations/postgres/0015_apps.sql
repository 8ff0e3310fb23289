-- mamori schema, PostgreSQL, migration 15: third-party apps (SMART App Launch).

-- An app's access token is an API token of its user, with the app, the
-- scopes the user granted and the patient it was launched for; `family`
-- ties it to the authorization (code and refresh tokens) it came from, so
-- that a replayed code or a reused refresh token revokes all of them.
ALTER TABLE tokens ADD COLUMN client_id TEXT;
ALTER TABLE tokens ADD COLUMN scope TEXT;
ALTER TABLE tokens ADD COLUMN patient TEXT;
ALTER TABLE tokens ADD COLUMN family TEXT;
CREATE INDEX tokens_family ON tokens (family);
CREATE INDEX tokens_client ON tokens (client_id);

-- The apps an administrator registered.
CREATE TABLE oauth_clients (
    client_id     TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,      -- JSON array; compared exactly
    launch_url    TEXT,               -- where an EHR launch sends the browser
    secret_hash   BYTEA,               -- confidential apps: SHA-256 of the secret
    scope         TEXT NOT NULL,      -- the most a user may grant it
    registered_by TEXT NOT NULL,
    created       BIGINT NOT NULL,
    disabled      BIGINT             -- when it was disabled
);

-- Authorization codes: one use, a minute, bound to the app, the redirect
-- URI and the PKCE challenge.
CREATE TABLE oauth_codes (
    hash         BYTEA PRIMARY KEY,    -- SHA-256 of the code
    client_id    TEXT NOT NULL,
    user_name    TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scope        TEXT NOT NULL,
    patient      TEXT,
    challenge    TEXT NOT NULL,       -- S256 code challenge
    nonce        TEXT,
    created      BIGINT NOT NULL,
    expires      BIGINT NOT NULL,
    used         BIGINT,
    family       TEXT NOT NULL
);

-- Refresh tokens: each use replaces it with a new one of the same family.
CREATE TABLE oauth_refresh (
    hash      BYTEA PRIMARY KEY,
    family    TEXT NOT NULL,
    client_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    scope     TEXT NOT NULL,
    patient   TEXT,
    created   BIGINT NOT NULL,
    expires   BIGINT NOT NULL,
    used      BIGINT,
    revoked   BIGINT
);
CREATE INDEX oauth_refresh_family ON oauth_refresh (family);

-- EHR launches: a chart opened an app for a patient; one use, minutes.
CREATE TABLE oauth_launches (
    hash      BYTEA PRIMARY KEY,
    client_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    patient   TEXT NOT NULL,
    created   BIGINT NOT NULL,
    expires   BIGINT NOT NULL,
    used      BIGINT
);

-- The public keys ID tokens are signed with (each server keeps its private
-- key in its data directory and publishes the public one here).
CREATE TABLE oauth_keys (
    kid     TEXT PRIMARY KEY,
    jwk     TEXT NOT NULL,
    created BIGINT NOT NULL
);
