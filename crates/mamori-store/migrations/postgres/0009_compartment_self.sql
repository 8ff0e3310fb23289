-- mamori schema, PostgreSQL, migration 9: a Patient is not stored as a
-- member of its own compartment.

-- Every Patient was a row of its own compartment: one more b-tree entry per
-- registration that said nothing `resources` does not. The queries that
-- list a compartment add the Patient itself (records::compartment,
-- snapshots); a Patient named by another Patient (link) keeps its row.
DELETE FROM resource_compartments WHERE rtype = 'Patient' AND id = patient;
