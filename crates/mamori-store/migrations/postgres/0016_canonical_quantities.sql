-- mamori schema, PostgreSQL, migration 16: quantities compared across UCUM
-- units, and number search. Each quantity with a UCUM unit mamori
-- understands also carries its value in base units (an order-preserving
-- integer, mamori_core::fhir::ucum::sortable) and the dimension's code;
-- numbers are indexed with the quantities, without a unit. The data step
-- indexes every stored resource again.
ALTER TABLE idx_quantity ADD COLUMN cvalue BIGINT;
ALTER TABLE idx_quantity ADD COLUMN cunit TEXT;
CREATE INDEX idx_quantity_canon ON idx_quantity (rtype, param, cunit, cvalue);
-- A composite parameter's code (code-value-quantity): the code of the
-- element whose quantity the row holds.
ALTER TABLE idx_quantity ADD COLUMN csys TEXT;
ALTER TABLE idx_quantity ADD COLUMN ccode TEXT;
CREATE INDEX idx_quantity_concept ON idx_quantity (rtype, param, ccode);
