-- mamori schema, PostgreSQL, migration 8: forms submitted once.

-- Each state-changing form of the web UI carries a random key; the first
-- submission claims it, a repeated one (reload, double click, back and
-- resubmit) finds it and is sent to the first one's result instead of
-- acting again. Rows older than a day are pruned when a key is claimed.
CREATE TABLE form_submissions (
    user_name  TEXT NOT NULL,
    form_key   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    result     TEXT,                 -- where the first submission led (NULL while it runs)
    PRIMARY KEY (user_name, form_key)
);
CREATE INDEX form_submissions_created ON form_submissions (created_at);
