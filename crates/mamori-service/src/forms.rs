//! Forms that act once, and results shown once.
//!
//! A state-changing form answers with a redirect (Post/Redirect/Get) and
//! carries a random key; [`claim`] lets only its first submission act. A
//! reload, a double click or a back-and-resubmit finds the claim and is
//! sent where the first submission led. A result that must be shown once
//! and never stored (a one-time password, an envelope) goes through
//! [`Flash`]: kept in this server's memory for a few minutes and handed to
//! the first page that asks for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use mamori_store::forms::Claim;

use crate::actor::Actor;
use crate::error::ServiceError;
use crate::services::Services;

/// Whether `key` looks like a form key (hex, 16 to 64 characters).
fn valid(key: &str) -> bool {
    (16..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Claims a form's key for the actor: [`Claim::Fresh`] for the first
/// submission only.
pub async fn claim(svc: &Services, actor: &Actor, key: &str) -> Result<Claim, ServiceError> {
    if !valid(key) {
        return Err(ServiceError::invalid("form_key", "not a form key; reload the page"));
    }
    let (user, key) = (actor.name().to_owned(), key.to_owned());
    Ok(svc.store.writer().write(move |w| mamori_store::forms::claim(w.conn, &user, &key, w.now), |_, _| Ok(())).await?)
}

/// Records where the first submission of `key` led.
pub async fn settle(svc: &Services, actor: &Actor, key: &str, result: &str) -> Result<(), ServiceError> {
    let (user, key, result) = (actor.name().to_owned(), key.to_owned(), result.to_owned());
    Ok(svc
        .store
        .writer()
        .write(move |w| mamori_store::forms::settle(w.conn, &user, &key, &result), |_, _| Ok(()))
        .await?)
}

/// Gives the claim of a submission that failed back, so that the form
/// can be corrected and sent again.
pub async fn release(svc: &Services, actor: &Actor, key: &str) -> Result<(), ServiceError> {
    let (user, key) = (actor.name().to_owned(), key.to_owned());
    Ok(svc.store.writer().write(move |w| mamori_store::forms::release(w.conn, &user, &key), |_, _| Ok(())).await?)
}

/// How long a flashed result waits for its page.
pub const FLASH_TTL: Duration = Duration::from_secs(300);
const FLASH_MAX: usize = 1000;

/// Results shown once, in memory only (a restart forgets them): each is
/// bound to the user it was made for and handed out once.
#[derive(Default)]
pub struct Flash {
    map: Mutex<HashMap<String, (String, Instant, String)>>,
}

impl Flash {
    /// Keeps `content` for `user`; returns the id to fetch it with.
    pub fn put(&self, user: &str, content: String) -> Result<String, ServiceError> {
        let id = mamori_audit::merkle::to_hex(
            &mamori_store::accounts::random_bytes::<16>().map_err(|e| ServiceError::internal_from("random", e))?,
        );
        let mut m = self.map.lock().map_err(|_| ServiceError::internal("the flash store is poisoned"))?;
        m.retain(|_, (_, at, _)| at.elapsed() < FLASH_TTL);
        if m.len() >= FLASH_MAX {
            return Err(ServiceError::TooMany {
                message: "too many results waiting to be shown".into(),
                retry_after: None,
            });
        }
        m.insert(id.clone(), (user.to_owned(), Instant::now(), content));
        Ok(id)
    }

    /// Hands out the content `id` holds for `user`, once.
    pub fn take(&self, user: &str, id: &str) -> Option<String> {
        let mut m = self.map.lock().ok()?;
        match m.get(id) {
            Some((owner, at, _)) if owner == user && at.elapsed() < FLASH_TTL => m.remove(id).map(|(_, _, c)| c),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flash_is_handed_out_once_and_only_to_its_user() {
        let f = Flash::default();
        let id = f.put("it.kimura", "secret".into()).unwrap();
        assert_eq!(f.take("dr.sato", &id), None, "another user");
        assert_eq!(f.take("it.kimura", &id).as_deref(), Some("secret"));
        assert_eq!(f.take("it.kimura", &id), None, "only once");
        assert_eq!(f.take("it.kimura", "nope"), None);
    }

    #[test]
    fn form_keys_are_checked() {
        assert!(valid("0123456789abcdef0123456789abcdef"));
        assert!(!valid("short"));
        assert!(!valid("0123456789abcdef0123456789abcdeg"));
        assert!(!valid(&"a".repeat(65)));
    }
}
