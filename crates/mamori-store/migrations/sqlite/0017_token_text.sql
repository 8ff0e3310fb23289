-- mamori schema, SQLite, migration 17: token search by text (`code:text=…`).
-- The text that goes with a code (a CodeableConcept's text, a Coding's
-- display, an Identifier's type text) is kept in idx_string under the
-- token parameter's name; no table changes. The data step indexes the
-- resources stored before.
SELECT 1;
