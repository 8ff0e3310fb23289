-- Witness cosignatures (C2SP tlog-cosignature) on stored checkpoints.
CREATE TABLE cosignatures (
    size    INTEGER NOT NULL REFERENCES checkpoints (size),
    witness TEXT NOT NULL,          -- the witness key name
    line    TEXT NOT NULL,          -- the signature line, as received
    time    INTEGER NOT NULL,       -- the cosignature's own timestamp (seconds)
    received INTEGER NOT NULL,
    PRIMARY KEY (size, witness)
);

-- Delivery cursors of background senders (e.g. the syslog stream).
CREATE TABLE cursors (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
