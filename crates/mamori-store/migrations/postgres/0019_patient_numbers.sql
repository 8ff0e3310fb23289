-- mamori schema, PostgreSQL, migration 19: the institution's patient numbers.

-- The last number given in each patient-id system ([institution]
-- number_patients): a created Patient without an identifier in the system
-- gets the next one that no Patient holds yet.
CREATE TABLE patient_number_seq (
    system TEXT PRIMARY KEY,
    n      BIGINT NOT NULL
);
