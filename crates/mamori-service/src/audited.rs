//! [`Audited<T>`]: patient data whose read is already in the audit log.
//!
//! Rule 1 of the house, audit before access, held by the types: every
//! service function that reads patient data returns its result wrapped in
//! `Audited`, which only this crate can make, and only after the audit
//! event of the read committed (see `Services::audited`). The HTTP and UI
//! response builders take patient data only as `Audited<T>`, so a read
//! path that forgets its audit event does not compile.

/// A value whose read was audited (the event's leaf index is `event`).
#[derive(Debug, Clone)]
#[must_use = "patient data was read and audited for this value; answer with it"]
pub struct Audited<T> {
    value: T,
    event: u64,
}

impl<T> Audited<T> {
    /// Only the audit commit makes one.
    pub(crate) fn committed(value: T, event: u64) -> Self {
        Audited { value, event }
    }
    /// The audited value.
    pub fn get(&self) -> &T {
        &self.value
    }
    /// The audited value, to answer with.
    pub fn into_inner(self) -> T {
        self.value
    }
    /// The audit event (leaf index) that recorded the read.
    pub fn event(&self) -> u64 {
        self.event
    }
    /// Transforms the value, keeping the proof that its read was audited.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Audited<U> {
        Audited { value: f(self.value), event: self.event }
    }
}
