//! Who acts: an [`Actor`] is an authenticated account (staff, emergency,
//! service, maintenance person), the server itself or the local operator,
//! with the request's context. Every audit event names its actor the same
//! way: user, kind, roles, the token and who issued it, the declared
//! person, the client's address, the request id and the mode.

use mamori_audit::event::{Agent, AuditRecord, Entity};
use mamori_core::ids::UserId;
use mamori_core::mode::Mode;
use mamori_core::policy::{AppGrant, Decision, Obligation, Role, Subject, SubjectKind};
use mamori_core::time::Timestamp;
use mamori_store::accounts::{AppToken, User};
use serde_json::json;

/// What every audit event needs about a request, authenticated or not.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// The client's address.
    pub addr: Option<String>,
    /// The request id (also in the response and the log).
    pub request_id: Option<String>,
    /// The mode the request is decided under (taken at its start).
    pub mode: Mode,
}

impl RequestCtx {
    /// A context for work the server does by itself.
    pub fn background(mode: Mode) -> Self {
        RequestCtx { addr: None, request_id: None, mode }
    }

    /// An audit record of an unauthenticated or system action.
    pub fn record(&self, who: &str, kind: &str, action: &str, status: u16, now: Timestamp) -> AuditRecord {
        AuditRecord {
            time: now.to_rfc3339(),
            mode: self.mode.header_value(),
            agent: Agent {
                user: who.to_owned(),
                kind: kind.to_owned(),
                roles: Vec::new(),
                declared: None,
                address: self.addr.clone(),
                issuer: None,
                token: None,
            },
            action: action.to_owned(),
            entity: None,
            patients: Vec::new(),
            status,
            basis: None,
            purpose: None,
            request: self.request_id.clone(),
            query: None,
            detail: None,
            versions: Vec::new(),
        }
    }
}

/// The token an actor authenticated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRef {
    /// Its id (never the secret).
    pub id: String,
    /// Who issued it, when not the holder.
    pub issuer: Option<String>,
}

/// Who acts, in which request.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The account.
    pub user: User,
    /// The token it presented (none for the server itself, the local
    /// operator, a maintenance person).
    pub token: Option<TokenRef>,
    /// The person behind an emergency account (given at login), the local
    /// operator, or the maintenance person and window.
    pub declared: Option<String>,
    /// The request's context.
    pub ctx: RequestCtx,
    /// The standalone node this server is, if any: new entries are
    /// stamped with it.
    pub node: Option<String>,
    /// A maintenance person's window: the scopes it grants (empty for
    /// everyone else).
    pub scopes: Vec<mamori_core::maintenance::Scope>,
    /// A third-party app acting for the account (SMART): the app, the
    /// scopes the user granted it, its patient.
    pub app: Option<std::sync::Arc<AppToken>>,
}

fn synthetic(name: UserId, display: &str, kind: SubjectKind, roles: Vec<Role>, department: Option<String>) -> User {
    User {
        name,
        display: display.into(),
        kind,
        department,
        roles,
        must_change: false,
        has_password: false,
        has_totp: false,
        failed_logins: 0,
        locked_until: None,
        disabled: false,
        created: Timestamp(0),
    }
}

impl Actor {
    /// The server itself (background work).
    pub fn system(ctx: RequestCtx) -> Actor {
        Actor {
            user: synthetic(UserId::system(), "mamori", SubjectKind::System, Vec::new(), None),
            token: None,
            declared: None,
            ctx,
            node: None,
            scopes: Vec::new(),
            app: None,
        }
    }

    /// A local operator at the CLI on the server's host, on a data
    /// directory whose server is not running. Only code in this process
    /// makes one; it never comes from the network.
    pub fn local_operator(who: &str, ctx: RequestCtx) -> Actor {
        Actor {
            user: synthetic(UserId::system(), "local operator", SubjectKind::System, vec![Role::Admin], None),
            token: None,
            declared: Some(format!("{who} (mamori CLI on the server host)")),
            ctx,
            node: None,
            scopes: Vec::new(),
            app: None,
        }
    }

    /// A maintenance person inside an approved window granting `scopes`.
    pub fn maintenance(
        person: UserId,
        vendor: &str,
        declared: String,
        scopes: Vec<mamori_core::maintenance::Scope>,
        ctx: RequestCtx,
    ) -> Actor {
        Actor {
            user: synthetic(
                person,
                "maintenance",
                SubjectKind::Maintenance,
                Vec::new(),
                Some(format!("vendor:{vendor}")),
            ),
            token: None,
            declared: Some(declared),
            ctx,
            node: None,
            scopes,
            app: None,
        }
    }

    /// An authenticated account.
    pub fn account(user: User, token: TokenRef, declared: Option<String>, ctx: RequestCtx) -> Actor {
        Actor { user, token: Some(token), declared, ctx, node: None, scopes: Vec::new(), app: None }
    }

    /// Who the policy decides about.
    pub fn subject(&self) -> Subject {
        let mut s = self.user.subject();
        s.app = self.app.as_ref().map(|a| AppGrant::of(&a.scope));
        s
    }

    /// The patient an app acting for this account was launched for.
    pub fn app_patient(&self) -> Option<&str> {
        self.app.as_ref().and_then(|a| a.patient.as_deref())
    }

    /// The mode the request is decided under.
    pub fn mode(&self) -> Mode {
        self.ctx.mode
    }

    /// The account's name.
    pub fn name(&self) -> &str {
        self.user.name.as_str()
    }

    /// An audit record of this actor's action.
    pub fn record(&self, action: &str, status: u16, now: Timestamp) -> AuditRecord {
        let mut r = self.ctx.record(self.name(), self.user.kind.as_str(), action, status, now);
        r.agent.roles = self.user.roles.iter().map(|r| r.as_str().to_owned()).collect();
        r.agent.declared = self.declared.clone();
        if let Some(t) = &self.token {
            r.agent.token = Some(t.id.clone());
            r.agent.issuer = t.issuer.clone();
        }
        r
    }

    /// An audit record of an action with its decision.
    pub fn decided(&self, action: &str, status: u16, decision: &Decision, now: Timestamp) -> AuditRecord {
        let mut r = self.record(action, status, now);
        set_decision(&mut r, decision);
        r
    }

    /// A record of a FHIR interaction with its decision.
    #[allow(clippy::too_many_arguments)]
    pub fn fhir_record(
        &self,
        action: &str,
        status: u16,
        rtype: Option<&str>,
        id: Option<&str>,
        version: Option<u64>,
        patients: Vec<String>,
        decision: Option<&Decision>,
        now: Timestamp,
    ) -> AuditRecord {
        let mut r = self.record(action, status, now);
        r.entity = rtype.map(|t| Entity { rtype: t.to_owned(), id: id.map(str::to_owned), version });
        set_patients(&mut r, patients);
        if let Some(d) = decision {
            set_decision(&mut r, d);
        }
        r
    }
}

/// Puts a decision's basis and purpose in a record (and a drill's "would
/// permit").
pub fn set_decision(r: &mut AuditRecord, d: &Decision) {
    r.basis = Some(d.basis.as_str().to_owned());
    r.purpose = d.purpose.map(|p| p.code().to_owned());
    if d.has(Obligation::WouldPermitInEmergency) {
        let mut detail = r.detail.take().filter(serde_json::Value::is_object).unwrap_or_else(|| json!({}));
        if let Some(o) = detail.as_object_mut() {
            o.insert("drill".into(), json!("would-permit-in-emergency"));
        }
        r.detail = Some(detail);
    }
}

/// Sets a record's patients (distinct, sorted).
pub fn set_patients(r: &mut AuditRecord, mut patients: Vec<String>) {
    patients.sort();
    patients.dedup();
    r.patients = patients;
}
