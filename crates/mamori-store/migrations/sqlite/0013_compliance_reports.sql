-- mamori schema, SQLite, migration 13: compliance reports.

-- Each compliance report is kept as it was signed (the exact JSON text
-- handed out), so that a printed or downloaded copy can be looked up by
-- its digest and shown again; the audit event of its production names the
-- same digest.
CREATE TABLE compliance_reports (
    id          INTEGER PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    period_from INTEGER NOT NULL,
    period_to   INTEGER NOT NULL,
    sha256      TEXT NOT NULL UNIQUE, -- hex digest of the canonical report
    body        TEXT NOT NULL         -- the signed report (JSON)
);
CREATE INDEX compliance_reports_created ON compliance_reports (created_at);
