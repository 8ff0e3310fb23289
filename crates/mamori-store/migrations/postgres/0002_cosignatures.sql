-- Witness cosignatures (C2SP tlog-cosignature) on stored checkpoints.
CREATE TABLE cosignatures (
    size    BIGINT NOT NULL REFERENCES checkpoints (size),
    witness TEXT NOT NULL,          -- the witness key name
    line    TEXT NOT NULL,          -- the signature line, as received
    time    BIGINT NOT NULL,       -- the cosignature's own timestamp (seconds)
    received BIGINT NOT NULL,
    PRIMARY KEY (size, witness)
);

-- Delivery cursors of background senders (e.g. the syslog stream).
CREATE TABLE cursors (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
