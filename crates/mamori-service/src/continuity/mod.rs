//! Care without the normal system (guideline 6.9 EM-B9, EM-C2, GL-BACKUP):
//! registration without the reception desk, patient merges, offline
//! reference snapshots sealed for custodians, standalone nodes, and
//! reconciliation of what was recorded elsewhere.

pub mod container;
pub mod merge;
pub mod reconcile;
pub mod registration;
pub mod snapshot;
pub mod standalone;

use mamori_core::time::Timestamp;

/// The institution's local calendar day of `t`.
pub fn local_ymd(t: Timestamp, utc_offset_minutes: i64) -> (i64, u32, u32) {
    Timestamp(t.micros() + utc_offset_minutes * 60_000_000).ymd()
}
