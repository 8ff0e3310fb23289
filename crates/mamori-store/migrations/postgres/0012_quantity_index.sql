-- mamori migration 12: quantity search (value-quantity=gt75|system|code).
-- Values in millionths, compared exactly; the data step indexes the
-- resources already stored.
CREATE TABLE idx_quantity (
    rtype  TEXT NOT NULL,
    id     TEXT NOT NULL,
    param  TEXT NOT NULL,
    value  BIGINT NOT NULL,
    system TEXT,
    code   TEXT
);
CREATE INDEX idx_quantity_res ON idx_quantity (rtype, id);
CREATE INDEX idx_quantity_val ON idx_quantity (rtype, param, value);
