//! Forms submitted once: the key a form carries is claimed by its first
//! submission; a repeated submission finds the claim and where the first
//! one led.

use mamori_core::time::Timestamp;

use crate::p;
use crate::sql::Conn;
use crate::Result;

/// How long a claim is kept (a resubmission later than this acts again).
pub const KEEP_MICROS: i64 = 24 * 3600 * 1_000_000;

/// What claiming a form key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The first submission: it may act.
    Fresh,
    /// Submitted before, and that submission is still running.
    Running,
    /// Submitted before; it led here.
    Done(String),
}

/// Claims `key` for `user` (pruning old claims first).
pub fn claim(c: &mut dyn Conn, user: &str, key: &str, now: Timestamp) -> Result<Claim> {
    c.exec("DELETE FROM form_submissions WHERE created_at < $1", p![now.micros() - KEEP_MICROS])?;
    let inserted = c.exec(
        "INSERT INTO form_submissions (user_name, form_key, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_name, form_key) DO NOTHING",
        p![user, key, now.micros()],
    )?;
    if inserted == 1 {
        return Ok(Claim::Fresh);
    }
    let row =
        c.query_one("SELECT result FROM form_submissions WHERE user_name = $1 AND form_key = $2", p![user, key])?;
    Ok(match row.map(|r| r.opt_text(0)).transpose()?.flatten() {
        Some(result) => Claim::Done(result),
        None => Claim::Running,
    })
}

/// Records where the submission holding `key` led.
pub fn settle(c: &mut dyn Conn, user: &str, key: &str, result: &str) -> Result<()> {
    c.exec("UPDATE form_submissions SET result = $3 WHERE user_name = $1 AND form_key = $2", p![user, key, result])?;
    Ok(())
}

/// Gives a claim back (its submission failed and changed nothing), so that
/// the form can be submitted again.
pub fn release(c: &mut dyn Conn, user: &str, key: &str) -> Result<()> {
    c.exec("DELETE FROM form_submissions WHERE user_name = $1 AND form_key = $2 AND result IS NULL", p![user, key])?;
    Ok(())
}
