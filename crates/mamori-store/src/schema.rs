//! Schema migrations, per backend. Applied in order inside one transaction
//! each; the applied version is kept in `meta.schema_version`.

use crate::p;
use crate::sql::{Backend, Conn, DbError};

const SQLITE: &[(&str, &str)] = &[
    ("0001_foundation", include_str!("../migrations/sqlite/0001_foundation.sql")),
    ("0002_cosignatures", include_str!("../migrations/sqlite/0002_cosignatures.sql")),
    ("0003_emergency", include_str!("../migrations/sqlite/0003_emergency.sql")),
    ("0004_exchange", include_str!("../migrations/sqlite/0004_exchange.sql")),
    ("0005_continuity", include_str!("../migrations/sqlite/0005_continuity.sql")),
    ("0006_maintenance", include_str!("../migrations/sqlite/0006_maintenance.sql")),
    ("0007_service_layer", include_str!("../migrations/sqlite/0007_service_layer.sql")),
    ("0008_form_submissions", include_str!("../migrations/sqlite/0008_form_submissions.sql")),
    ("0009_compartment_self", include_str!("../migrations/sqlite/0009_compartment_self.sql")),
    ("0010_maintenance_totp_lock", include_str!("../migrations/sqlite/0010_maintenance_totp_lock.sql")),
    ("0011_record_binding", include_str!("../migrations/sqlite/0011_record_binding.sql")),
    ("0012_quantity_index", include_str!("../migrations/sqlite/0012_quantity_index.sql")),
    ("0013_compliance_reports", include_str!("../migrations/sqlite/0013_compliance_reports.sql")),
    ("0014_bulk_exports", include_str!("../migrations/sqlite/0014_bulk_exports.sql")),
    ("0015_apps", include_str!("../migrations/sqlite/0015_apps.sql")),
    ("0016_canonical_quantities", include_str!("../migrations/sqlite/0016_canonical_quantities.sql")),
    ("0017_token_text", include_str!("../migrations/sqlite/0017_token_text.sql")),
    ("0018_backend_services", include_str!("../migrations/sqlite/0018_backend_services.sql")),
    ("0019_patient_numbers", include_str!("../migrations/sqlite/0019_patient_numbers.sql")),
];

const POSTGRES: &[(&str, &str)] = &[
    ("0001_foundation", include_str!("../migrations/postgres/0001_foundation.sql")),
    ("0002_cosignatures", include_str!("../migrations/postgres/0002_cosignatures.sql")),
    ("0003_emergency", include_str!("../migrations/postgres/0003_emergency.sql")),
    ("0004_exchange", include_str!("../migrations/postgres/0004_exchange.sql")),
    ("0005_continuity", include_str!("../migrations/postgres/0005_continuity.sql")),
    ("0006_maintenance", include_str!("../migrations/postgres/0006_maintenance.sql")),
    ("0007_service_layer", include_str!("../migrations/postgres/0007_service_layer.sql")),
    ("0008_form_submissions", include_str!("../migrations/postgres/0008_form_submissions.sql")),
    ("0009_compartment_self", include_str!("../migrations/postgres/0009_compartment_self.sql")),
    ("0010_maintenance_totp_lock", include_str!("../migrations/postgres/0010_maintenance_totp_lock.sql")),
    ("0011_record_binding", include_str!("../migrations/postgres/0011_record_binding.sql")),
    ("0012_quantity_index", include_str!("../migrations/postgres/0012_quantity_index.sql")),
    ("0013_compliance_reports", include_str!("../migrations/postgres/0013_compliance_reports.sql")),
    ("0014_bulk_exports", include_str!("../migrations/postgres/0014_bulk_exports.sql")),
    ("0015_apps", include_str!("../migrations/postgres/0015_apps.sql")),
    ("0016_canonical_quantities", include_str!("../migrations/postgres/0016_canonical_quantities.sql")),
    ("0017_token_text", include_str!("../migrations/postgres/0017_token_text.sql")),
    ("0018_backend_services", include_str!("../migrations/postgres/0018_backend_services.sql")),
    ("0019_patient_numbers", include_str!("../migrations/postgres/0019_patient_numbers.sql")),
];

fn migrations(b: Backend) -> &'static [(&'static str, &'static str)] {
    match b {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    }
}

/// Work a migration does in Rust after its SQL, in the same transaction.
fn data_step(name: &str, c: &mut dyn Conn) -> Result<(), DbError> {
    match name {
        // Compartments computed from bodies (every referenced patient).
        "0007_service_layer" => crate::records::rebuild_compartments(c).map(|_| ()).map_err(|e| match e {
            crate::StoreError::Db(d) => d,
            other => DbError::Other(other.to_string()),
        }),
        // Quantities (with their UCUM canonical values) and numbers of the
        // resources stored before: migration 16 indexes them all again, so
        // a database older than 12 is indexed once, after both.
        "0016_canonical_quantities" => crate::records::index_quantities(c).map(|_| ()).map_err(|e| match e {
            crate::StoreError::Db(d) => d,
            other => DbError::Other(other.to_string()),
        }),
        // The text that goes with codes (`:text`), for the resources
        // stored before.
        "0017_token_text" => crate::records::index_token_texts(c).map(|_| ()).map_err(|e| match e {
            crate::StoreError::Db(d) => d,
            other => DbError::Other(other.to_string()),
        }),
        _ => Ok(()),
    }
}

/// The schema version this build expects.
pub fn latest(b: Backend) -> usize {
    migrations(b).len()
}

/// The schema version of a database (0 when empty).
pub fn current(c: &mut dyn Conn) -> Result<usize, DbError> {
    let exists = match c.backend() {
        Backend::Sqlite => {
            c.query_one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'", p![])?.is_some()
        }
        Backend::Postgres => c
            .query_one(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'meta'",
                p![],
            )?
            .is_some(),
    };
    if !exists {
        return Ok(0);
    }
    match c.query_one("SELECT value FROM meta WHERE key = 'schema_version'", p![])? {
        Some(r) => r.text(0)?.parse().map_err(|_| DbError::Decode("schema_version".into())),
        None => Ok(0),
    }
}

/// The migrations a database still needs, by name; an error if the
/// database is newer than this build.
pub fn pending(c: &mut dyn Conn) -> Result<Vec<&'static str>, DbError> {
    let all = migrations(c.backend());
    let cur = current(c)?;
    if cur > all.len() {
        return Err(DbError::Other(format!(
            "database schema version {cur} is newer than this mamori ({}); upgrade mamori",
            all.len()
        )));
    }
    Ok(all.iter().skip(cur).map(|(name, _)| *name).collect())
}

/// Before a SQLite database that holds data is migrated: a consistent copy
/// of it (`VACUUM INTO`, which reads one snapshot) in `backups/` beside it,
/// named by its schema version and `stamp`. `None` when there is nothing
/// to migrate or nothing to keep (a new database). A copy that cannot be
/// made stops the upgrade: nothing is migrated without its way back.
pub fn backup_before_migrating(
    c: &mut dyn Conn,
    db: &std::path::Path,
    stamp: &str,
) -> Result<Option<std::path::PathBuf>, DbError> {
    let cur = current(c)?;
    if cur == 0 || pending(c)?.is_empty() {
        return Ok(None);
    }
    let dir = db.parent().unwrap_or(std::path::Path::new(".")).join("backups");
    std::fs::create_dir_all(&dir).map_err(|e| DbError::Other(format!("{}: {e}", dir.display())))?;
    let to = dir.join(format!("mamori-schema{cur}-{stamp}.db"));
    let path = to.to_str().ok_or_else(|| DbError::Other(format!("{}: not UTF-8", to.display())))?;
    c.exec("VACUUM INTO $1", p![path])?;
    // Run by root on a service's directory, the copy and its directory
    // stay the directory owner's: the service takes the next copy itself.
    if let Ok(meta) = std::fs::metadata(db.parent().unwrap_or(std::path::Path::new("."))) {
        use std::os::unix::fs::MetadataExt;
        for p in [&dir, &to] {
            if let Err(e) = std::os::unix::fs::chown(p, Some(meta.uid()), Some(meta.gid())) {
                tracing::debug!(error = %e, path = %p.display(), "backup left with its creator's ownership");
            }
        }
    }
    Ok(Some(to))
}

/// Applies every pending migration. Refuses a database newer than this build.
/// Each step runs in a write transaction (on PostgreSQL under the writers'
/// advisory lock), so servers starting together migrate once.
pub fn migrate(c: &mut dyn Conn) -> Result<usize, DbError> {
    let all = migrations(c.backend());
    loop {
        c.batch("BEGIN IMMEDIATE")?;
        let step = (|| -> Result<bool, DbError> {
            let cur = current(c)?;
            if cur > all.len() {
                return Err(DbError::Other(format!(
                    "database schema version {cur} is newer than this mamori ({}); upgrade mamori",
                    all.len()
                )));
            }
            let Some((name, sql)) = all.get(cur) else { return Ok(false) };
            c.batch(sql)?;
            data_step(name, c)?;
            c.sync()?;
            c.exec(
                "INSERT INTO meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                p![(cur + 1).to_string()],
            )?;
            Ok(true)
        })();
        match step {
            Ok(more) => {
                c.batch("COMMIT")?;
                if !more {
                    return Ok(all.len());
                }
            }
            Err(e) => {
                // The migration's own error is the one to report.
                if let Err(r) = c.batch("ROLLBACK") {
                    tracing::debug!(error = %r, "cannot roll back a failed schema migration step");
                }
                return Err(e);
            }
        }
    }
}
