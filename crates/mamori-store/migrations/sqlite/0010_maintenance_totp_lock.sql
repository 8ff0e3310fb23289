-- mamori schema, SQLite, migration 10: wrong second-factor codes of a
-- maintenance person are counted, and too many lock their TOTP for a while
-- (200 guesses in 14 s once found the right code).
ALTER TABLE maint_people ADD COLUMN totp_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE maint_people ADD COLUMN totp_locked_until INTEGER;
