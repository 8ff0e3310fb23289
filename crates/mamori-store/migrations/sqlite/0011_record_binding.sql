-- mamori migration 11: the audit log binds the contents of every stored
-- record version (the SHA-256 of its stored bytes, in the `versions` of
-- the audit event that stored it). Versions stored before this migration
-- are bound once, at the next server start, by `record-bind` events; until
-- that is done, 'records-unbound-upto' names the last of them and
-- 'records-unbound-after' how far the binding got.
INSERT INTO meta (key, value)
SELECT 'records-unbound-upto', CAST(t.m AS TEXT)
FROM (SELECT MAX(seq) AS m FROM resource_versions) AS t WHERE t.m IS NOT NULL;
