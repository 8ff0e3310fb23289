//! How use cases commit: audit events for reads and refusals, a change and
//! its audit event in one write job, and the effects that take place only
//! after the commit ([`Outcome`], generalizing what the BCP console did
//! for mode changes).

use mamori_audit::event::AuditRecord;
use mamori_core::mode::Mode;
use mamori_core::policy::{Decision, Facts, Operation};
use mamori_store::writer::WriteCtx;
use serde_json::json;

use crate::actor::{set_decision, Actor};
use crate::audited::Audited;
use crate::error::ServiceError;
use crate::notify::Announcement;
use crate::services::Services;

/// What must happen once a change committed, never before.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Put this mode in force (and tell every open screen and server).
    Mode(Mode),
    /// Publish these announcements to open screens and other servers.
    Announce(Vec<Announcement>),
    /// The partner registry changed: rebuild the AS2 listener's trust
    /// here and on the other servers.
    PartnersChanged,
}

/// A committed change's value and its after-commit effects.
#[derive(Debug)]
pub struct Outcome<T> {
    /// The value.
    pub value: T,
    /// What to do now that it committed.
    pub effects: Vec<Effect>,
}

impl<T> Outcome<T> {
    /// A value without effects.
    pub fn plain(value: T) -> Self {
        Outcome { value, effects: Vec::new() }
    }
    /// A value with effects.
    pub fn with(value: T, effects: Vec<Effect>) -> Self {
        Outcome { value, effects }
    }
}

impl Services {
    /// Appends audit events on their own (reads, refusals).
    pub(crate) async fn audit(&self, recs: Vec<AuditRecord>) -> Result<Vec<u64>, ServiceError> {
        Ok(self.store.writer().audit(recs).await?)
    }

    /// Audits the read of patient data, then hands the value out: the
    /// only way an [`Audited`] is made.
    pub(crate) async fn audited<T>(&self, rec: AuditRecord, value: T) -> Result<Audited<T>, ServiceError> {
        let idx = self.audit(vec![rec]).await?;
        let event = idx.first().copied().ok_or_else(|| ServiceError::internal("no audit index"))?;
        Ok(Audited::committed(value, event))
    }

    /// Audits a refusal made before any write job (with the decision's
    /// basis, if the policy made it) and returns it. Adapters use it for
    /// requests refused before they reach a use case (a malformed body).
    pub async fn refused(&self, actor: &Actor, action: &str, e: ServiceError) -> ServiceError {
        let rec = failure_record(actor, action, &e, self.now());
        match self.audit(vec![rec]).await {
            Ok(_) => e,
            Err(se) => se,
        }
    }

    /// Decides `op` for `actor` with `facts`; a refusal is audited under
    /// `action` before it is answered. The one way a use case gates.
    pub(crate) async fn gate(
        &self,
        actor: &Actor,
        action: &str,
        op: Operation,
        facts: Facts,
        what: &str,
    ) -> Result<Decision, ServiceError> {
        match crate::authz::require(actor, &op, facts, what) {
            Ok(d) => Ok(d),
            Err(e) => Err(self.refused(actor, action, e).await),
        }
    }

    /// As [`Services::gate`], for a read that reveals nothing about a
    /// patient: the permit is audited too.
    pub(crate) async fn read_gate(
        &self,
        actor: &Actor,
        action: &str,
        op: Operation,
        facts: Facts,
        what: &str,
    ) -> Result<Decision, ServiceError> {
        let d = self.gate(actor, action, op, facts, what).await?;
        self.audit(vec![actor.decided(action, 200, &d, self.now())]).await?;
        Ok(d)
    }

    /// Runs `job` (the change and its success audit event) in one write
    /// job; if it fails, the job is rolled back and the failure audited
    /// under `action`. Account caches are invalidated after the commit.
    pub(crate) async fn change<T, F>(&self, actor: &Actor, action: &'static str, job: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, ServiceError> + Send + 'static,
    {
        let a = actor.clone();
        let r = self
            .store
            .writer()
            .run(job, move |e: &ServiceError, w| w.audit(&failure_record(&a, action, e, w.now)).map(|_| ()))
            .await;
        if r.is_ok() {
            self.tokens.invalidate();
        }
        r
    }

    /// Applies a committed outcome's effects and returns its value.
    pub(crate) async fn finish<T>(&self, o: Outcome<T>) -> T {
        for e in o.effects {
            match e {
                Effect::Mode(m) => {
                    if m != self.mode.get() {
                        self.set_mode(m);
                    }
                }
                Effect::Announce(list) => crate::notify::publish(self, list),
                Effect::PartnersChanged => crate::exchange::partners_changed(self).await,
            }
        }
        o.value
    }
}

/// The audit record of a failed or refused action.
pub(crate) fn failure_record(
    actor: &Actor,
    action: &str,
    e: &ServiceError,
    now: mamori_core::time::Timestamp,
) -> AuditRecord {
    let mut rec = actor.record(action, e.status(), now);
    rec.detail = Some(json!({"error": e.message()}));
    if let Some(d) = e.decision() {
        set_decision(&mut rec, d);
    }
    rec
}
