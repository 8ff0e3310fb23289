-- mamori schema, SQLite, migration 18: SMART Backend Services.

-- A backend client authenticates with a JWT signed by a key of its JWK
-- set (no secret), and acts as the service account it is registered for.
ALTER TABLE oauth_clients ADD COLUMN jwks TEXT;          -- JSON {"keys": [...]}
ALTER TABLE oauth_clients ADD COLUMN service_user TEXT;  -- the service account

-- The ids (jti) of the client assertions used, kept until they expire,
-- so that a captured assertion cannot be presented twice.
CREATE TABLE oauth_jti (
    client_id TEXT NOT NULL,
    jti       TEXT NOT NULL,
    expires   INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
);
