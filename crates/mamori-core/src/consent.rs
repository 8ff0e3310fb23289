//! The legal basis for sending a patient's information to another
//! institution (guideline 6.10 EX-B1b), decided without IO.
//!
//! - **Delegation** (委託): the partner processes the information on the
//!   institution's behalf under its contract; the institution stays
//!   responsible. No consent is needed, but the purpose must be one the
//!   contract covers.
//! - **Third-party provision** (第三者提供) needs the patient's consent:
//!   - *explicit*: an active FHIR Consent that permits this recipient and
//!     purpose now;
//!   - *implied* (黙示の同意): for the purposes the MHLW guidance for medical
//!     and care providers lists as part of the patient's own care (referral
//!     and cooperation with other institutions, answering their enquiries,
//!     asking outside specialists' opinion, claims to payers), unless the
//!     patient objected (a Consent that denies it);
//!   - the *protection-of-life* exception (人の生命、身体の保護のために必要で、
//!     本人の同意を得ることが困難な場合): only while a real (not drill)
//!     emergency is declared, only when asked for explicitly, with a
//!     written justification.
//!
//! A patient's objection (a deny provision that applies) overrides explicit
//! and implied consent. Consent resources are read through [`ConsentRule`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mode::Mode;
use crate::time::{parse_date_time, Timestamp};

/// The partner relationship (EX-B1b).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relationship {
    /// 委託: the partner acts on the institution's behalf under contract.
    Delegation,
    /// 第三者提供: the partner receives the information for its own use.
    ThirdParty,
}

/// Why information is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// 診療情報提供 (referral letter) for the patient's continuing care.
    Referral,
    /// 返書: the reply to a referral.
    ReferralReply,
    /// 照会への回答 / 外部の医師等の意見: answering another institution's
    /// enquiry about the patient's care, or asking an outside specialist.
    Consultation,
    /// 検体検査等の委託: laboratory or imaging work sent out.
    Testing,
    /// 審査支払機関へのレセプト提出: claims to payers.
    Claims,
    /// Research.
    Research,
    /// Anything else (always needs explicit consent or delegation).
    Other,
}

impl Purpose {
    /// Every purpose, in declaration order.
    pub const ALL: [Purpose; 7] = [
        Purpose::Referral,
        Purpose::ReferralReply,
        Purpose::Consultation,
        Purpose::Testing,
        Purpose::Claims,
        Purpose::Research,
        Purpose::Other,
    ];
    /// The purpose's name in the database and the API (`referral_reply`).
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Referral => "referral",
            Purpose::ReferralReply => "referral_reply",
            Purpose::Consultation => "consultation",
            Purpose::Testing => "testing",
            Purpose::Claims => "claims",
            Purpose::Research => "research",
            Purpose::Other => "other",
        }
    }
    /// Parses a name made by [`Purpose::as_str`].
    pub fn parse(s: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == s)
    }
    /// The HL7 v3 ActReason (purpose of use) code a Consent uses for it.
    pub fn act_reason(self) -> Option<&'static str> {
        match self {
            Purpose::Referral | Purpose::ReferralReply | Purpose::Consultation | Purpose::Testing => Some("TREAT"),
            Purpose::Claims => Some("HPAYMT"),
            Purpose::Research => Some("HRESCH"),
            Purpose::Other => None,
        }
    }
    /// Covered by implied consent under the MHLW guidance (別表2: uses
    /// needed to provide the patient's care and for medical-insurance work).
    pub fn implied_consent(self) -> bool {
        matches!(
            self,
            Purpose::Referral | Purpose::ReferralReply | Purpose::Consultation | Purpose::Testing | Purpose::Claims
        )
    }
}

/// The system of HL7 v3 ActReason codes.
pub const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The recorded basis of a send, stored with the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Basis {
    /// 委託: the partner processes the information under contract.
    Delegation {
        /// The contract it is sent under.
        contract: String,
    },
    /// An active Consent of the patient permits this recipient and purpose.
    ExplicitConsent {
        /// The permitting Consent (`Consent/<id>`).
        consent: String,
    },
    /// Implied consent: a purpose of the patient's own care, not objected to.
    ImpliedConsent {
        /// The purpose it covers.
        purpose: Purpose,
    },
    /// The protection-of-life exception, during a real emergency.
    ProtectionOfLife {
        /// The sender's written justification.
        justification: String,
    },
}

impl Basis {
    /// Which kind of basis this is.
    pub fn kind(&self) -> BasisKind {
        match self {
            Basis::Delegation { .. } => BasisKind::Delegation,
            Basis::ExplicitConsent { .. } => BasisKind::ExplicitConsent,
            Basis::ImpliedConsent { .. } => BasisKind::ImpliedConsent,
            Basis::ProtectionOfLife { .. } => BasisKind::ProtectionOfLife,
        }
    }
}

/// The basis a sender may ask for explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BasisKind {
    /// 委託: the partner processes the information under contract.
    Delegation,
    /// An active Consent of the patient permits it.
    ExplicitConsent,
    /// Implied consent for a purpose of the patient's own care.
    ImpliedConsent,
    /// The protection-of-life exception (real emergencies only).
    ProtectionOfLife,
}

impl BasisKind {
    /// The kind's name in the database and the API (`explicit_consent`).
    pub fn as_str(self) -> &'static str {
        match self {
            BasisKind::Delegation => "delegation",
            BasisKind::ExplicitConsent => "explicit_consent",
            BasisKind::ImpliedConsent => "implied_consent",
            BasisKind::ProtectionOfLife => "protection_of_life",
        }
    }
    /// Parses a name made by [`BasisKind::as_str`].
    pub fn parse(s: &str) -> Option<BasisKind> {
        [BasisKind::Delegation, BasisKind::ExplicitConsent, BasisKind::ImpliedConsent, BasisKind::ProtectionOfLife]
            .into_iter()
            .find(|b| b.as_str() == s)
    }
}

/// One rule of a Consent: permit or deny, for some recipients, purposes
/// and period. Empty lists mean "any".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provision {
    /// Whether the rule permits (`true`) or denies (`false`).
    pub permit: bool,
    /// Recipient references: `Organization/partner-<id>` or a partner id.
    pub actors: Vec<String>,
    /// ActReason codes.
    pub purposes: Vec<String>,
    /// Start of the period it applies in (microseconds since the Unix epoch,
    /// inclusive); `None` from the beginning of time.
    pub start: Option<i64>,
    /// End of the period it applies in (microseconds since the Unix epoch,
    /// exclusive); `None` without end.
    pub end: Option<i64>,
}

/// A patient's Consent resource, read for exchange decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRule {
    /// `Consent/<id>`.
    pub reference: String,
    /// Whether the Consent's status is `active`; an inactive one says nothing.
    pub active: bool,
    /// The base rule.
    pub base: Provision,
    /// Exceptions to the base rule (FHIR nested provisions, one level).
    pub exceptions: Vec<Provision>,
}

fn provision(v: &Value, default_permit: bool) -> Result<Provision, String> {
    let permit = match v.get("type").and_then(Value::as_str) {
        Some("permit") => true,
        Some("deny") => false,
        Some(o) => return Err(format!("provision.type '{o}' is not permit or deny")),
        None => default_permit,
    };
    let actors = v
        .get("actor")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.get("reference"))
                .filter_map(|r| {
                    r.get("reference").and_then(Value::as_str).map(str::to_owned).or_else(|| {
                        let id = r.get("identifier")?;
                        id.get("value").and_then(Value::as_str).map(str::to_owned)
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let purposes = v
        .get("purpose")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|c| c.get("system").and_then(Value::as_str).is_none_or(|s| s == ACT_REASON))
                .filter_map(|c| c.get("code").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let period = v.get("period");
    let bound = |k: &str, hi: bool| -> Result<Option<i64>, String> {
        match period.and_then(|p| p.get(k)).and_then(Value::as_str) {
            None => Ok(None),
            Some(s) => parse_date_time(s)
                .map(|r| Some(if hi { r.high } else { r.low }))
                .ok_or_else(|| format!("provision.period.{k} '{s}' is not a date")),
        }
    };
    Ok(Provision { permit, actors, purposes, start: bound("start", false)?, end: bound("end", true)? })
}

impl ConsentRule {
    /// Reads a FHIR R4 Consent. Only `active` consents count; a consent
    /// without provision permits (FHIR: the base policy is the one the
    /// consent records).
    pub fn from_fhir(id: &str, v: &Value) -> Result<ConsentRule, String> {
        let active = v.get("status").and_then(Value::as_str) == Some("active");
        let p = v.get("provision").cloned().unwrap_or(Value::Null);
        let base = provision(&p, true)?;
        let exceptions = p
            .get("provision")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|x| provision(x, !base.permit)).collect::<Result<Vec<_>, _>>())
            .transpose()?
            .unwrap_or_default();
        Ok(ConsentRule { reference: format!("Consent/{id}"), active, base, exceptions })
    }

    /// What this consent says about sending to `partner` for `purpose` at
    /// `now`: `Some(true)` permit, `Some(false)` deny, `None` silent.
    pub fn says(&self, partner: &str, purpose: Purpose, now: Timestamp) -> Option<bool> {
        if !self.active {
            return None;
        }
        let applies = |p: &Provision| {
            let t = now.micros();
            let in_time = p.start.is_none_or(|s| t >= s) && p.end.is_none_or(|e| t < e);
            let actor = p.actors.is_empty()
                || p.actors.iter().any(|a| a == partner || a == &format!("Organization/partner-{partner}"));
            let purpose_ok =
                p.purposes.is_empty() || purpose.act_reason().is_some_and(|c| p.purposes.iter().any(|x| x == c));
            in_time && actor && purpose_ok
        };
        if !applies(&self.base) {
            return None;
        }
        // A matching exception reverses the base rule.
        match self.exceptions.iter().find(|e| applies(e)) {
            Some(e) => Some(e.permit),
            None => Some(self.base.permit),
        }
    }
}

/// Everything the decision needs.
#[derive(Debug, Clone)]
pub struct SendRequest<'a> {
    /// The recipient partner's id.
    pub partner: &'a str,
    /// How the partner is related to the institution.
    pub relationship: Relationship,
    /// The partner's contract (recorded as the basis of a delegation).
    pub contract: &'a str,
    /// Purposes the partner's registration allows.
    pub partner_purposes: &'a [Purpose],
    /// Why the information is sent.
    pub purpose: Purpose,
    /// A basis the sender asked for, if any.
    pub requested: Option<BasisKind>,
    /// The written justification for the protection-of-life exception.
    pub justification: Option<&'a str>,
    /// The patient's Consents.
    pub consents: &'a [ConsentRule],
    /// The operating mode (the protection-of-life exception needs a real
    /// emergency).
    pub mode: Mode,
    /// When the send is decided (Consent periods are checked against it).
    pub now: Timestamp,
}

/// Why a send is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Decides the legal basis of sending to one recipient.
pub fn decide_basis(r: &SendRequest<'_>) -> Result<Basis, Refusal> {
    if !r.partner_purposes.contains(&r.purpose) {
        return Err(Refusal(format!(
            "partner {} is not registered for purpose '{}' (its contract covers: {})",
            r.partner,
            r.purpose.as_str(),
            r.partner_purposes.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let said: Vec<(&ConsentRule, bool)> =
        r.consents.iter().filter_map(|c| c.says(r.partner, r.purpose, r.now).map(|s| (c, s))).collect();
    let objection = said.iter().find(|(_, s)| !*s).map(|(c, _)| c.reference.clone());
    let permit = said.iter().find(|(_, s)| *s).map(|(c, _)| c.reference.clone());

    let delegation = || -> Result<Basis, Refusal> {
        if r.relationship == Relationship::Delegation {
            Ok(Basis::Delegation { contract: r.contract.to_owned() })
        } else {
            Err(Refusal(format!("partner {} is a third party, not a delegate (委託先) under contract", r.partner)))
        }
    };
    let objected =
        |o: &str| Refusal(format!("the patient objected to this provision ({o}); it may not be sent on consent"));
    let explicit = || -> Result<Basis, Refusal> {
        if let Some(o) = &objection {
            return Err(objected(o));
        }
        match &permit {
            Some(c) => Ok(Basis::ExplicitConsent { consent: c.clone() }),
            None => Err(Refusal(format!(
                "no active Consent of the patient permits sending to partner {} for '{}'",
                r.partner,
                r.purpose.as_str()
            ))),
        }
    };
    let implied = || -> Result<Basis, Refusal> {
        if let Some(o) = &objection {
            return Err(objected(o));
        }
        if r.purpose.implied_consent() {
            Ok(Basis::ImpliedConsent { purpose: r.purpose })
        } else {
            Err(Refusal(format!(
                "purpose '{}' is not covered by implied consent; it needs the patient's explicit consent",
                r.purpose.as_str()
            )))
        }
    };
    match r.requested {
        Some(BasisKind::Delegation) => delegation(),
        Some(BasisKind::ExplicitConsent) => explicit(),
        Some(BasisKind::ImpliedConsent) => implied(),
        Some(BasisKind::ProtectionOfLife) => {
            if !r.mode.is_real_emergency() {
                return Err(Refusal(
                    "the protection-of-life exception applies only while an emergency is declared (not in normal operation or a drill)"
                        .into(),
                ));
            }
            let j = r.justification.map(str::trim).unwrap_or("");
            if j.chars().count() < 10 {
                return Err(Refusal(
                    "the protection-of-life exception needs a justification (at least 10 characters)".into(),
                ));
            }
            Ok(Basis::ProtectionOfLife { justification: j.to_owned() })
        }
        None => delegation().or_else(|_| explicit()).or_else(|e| {
            // Objection is final; otherwise fall back to implied consent.
            if objection.is_some() {
                Err(e)
            } else {
                implied()
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Phase;
    use serde_json::json;

    const NOW: Timestamp = Timestamp(1_795_000_000_000_000);

    fn req<'a>(rel: Relationship, purpose: Purpose, consents: &'a [ConsentRule]) -> SendRequest<'a> {
        SendRequest {
            partner: "1310000001",
            relationship: rel,
            contract: "C-2026-01",
            partner_purposes: &Purpose::ALL,
            purpose,
            requested: None,
            justification: None,
            consents,
            mode: Mode::Normal,
            now: NOW,
        }
    }

    fn consent(v: Value) -> ConsentRule {
        ConsentRule::from_fhir("c1", &v).unwrap()
    }

    #[test]
    fn delegation_needs_no_consent() {
        let b = decide_basis(&req(Relationship::Delegation, Purpose::Testing, &[])).unwrap();
        assert_eq!(b, Basis::Delegation { contract: "C-2026-01".into() });
    }

    #[test]
    fn implied_consent_for_referral_but_not_research() {
        let b = decide_basis(&req(Relationship::ThirdParty, Purpose::Referral, &[])).unwrap();
        assert_eq!(b, Basis::ImpliedConsent { purpose: Purpose::Referral });
        let e = decide_basis(&req(Relationship::ThirdParty, Purpose::Research, &[])).unwrap_err();
        assert!(e.0.contains("explicit consent"), "{}", e.0);
    }

    #[test]
    fn explicit_consent_for_research() {
        let c = [consent(json!({"status": "active", "provision": {"type": "permit",
            "actor": [{"reference": {"reference": "Organization/partner-1310000001"}}],
            "purpose": [{"system": ACT_REASON, "code": "HRESCH"}]}}))];
        let b = decide_basis(&req(Relationship::ThirdParty, Purpose::Research, &c)).unwrap();
        assert_eq!(b, Basis::ExplicitConsent { consent: "Consent/c1".into() });
        // Not for another partner.
        let mut r = req(Relationship::ThirdParty, Purpose::Research, &c);
        r.partner = "9999999999";
        assert!(decide_basis(&r).is_err());
    }

    #[test]
    fn objection_overrides_implied_and_explicit() {
        let c = [consent(json!({"status": "active", "provision": {"type": "deny"}}))];
        let e = decide_basis(&req(Relationship::ThirdParty, Purpose::Referral, &c)).unwrap_err();
        assert!(e.0.contains("objected"), "{}", e.0);
        let mut r = req(Relationship::ThirdParty, Purpose::Referral, &c);
        r.requested = Some(BasisKind::ImpliedConsent);
        assert!(decide_basis(&r).is_err());
        // A deny with a permit exception for one partner.
        let c = [consent(json!({"status": "active", "provision": {"type": "deny", "provision": [
            {"type": "permit", "actor": [{"reference": {"reference": "Organization/partner-1310000001"}}]}]}}))];
        assert!(matches!(
            decide_basis(&req(Relationship::ThirdParty, Purpose::Referral, &c)),
            Ok(Basis::ExplicitConsent { .. })
        ));
    }

    #[test]
    fn inactive_or_expired_consent_is_ignored() {
        let c = [consent(json!({"status": "inactive", "provision": {"type": "deny"}}))];
        assert!(decide_basis(&req(Relationship::ThirdParty, Purpose::Referral, &c)).is_ok());
        let c = [consent(json!({"status": "active", "provision": {"type": "deny", "period": {"end": "2020-01-01"}}}))];
        assert!(decide_basis(&req(Relationship::ThirdParty, Purpose::Referral, &c)).is_ok());
        let c =
            [consent(json!({"status": "active", "provision": {"type": "permit", "period": {"start": "2099-01-01"},
            "purpose": [{"system": ACT_REASON, "code": "HRESCH"}]}}))];
        assert!(decide_basis(&req(Relationship::ThirdParty, Purpose::Research, &c)).is_err());
    }

    #[test]
    fn protection_of_life_only_in_a_real_emergency() {
        let emergency =
            Mode::Emergency { phase: Phase::Activation, drill: false, open_access: true, registration: true };
        let drill = Mode::Emergency { phase: Phase::Activation, drill: true, open_access: true, registration: true };
        let mut r = req(Relationship::ThirdParty, Purpose::Other, &[]);
        r.requested = Some(BasisKind::ProtectionOfLife);
        r.justification = Some("unconscious patient transferred to the burns unit");
        assert!(decide_basis(&r).is_err());
        r.mode = drill;
        assert!(decide_basis(&r).is_err());
        r.mode = emergency;
        assert!(matches!(decide_basis(&r), Ok(Basis::ProtectionOfLife { .. })));
        r.justification = Some("urgent");
        assert!(decide_basis(&r).is_err());
        // Never chosen by itself.
        let mut r = req(Relationship::ThirdParty, Purpose::Other, &[]);
        r.mode = emergency;
        assert!(decide_basis(&r).is_err());
    }

    #[test]
    fn purpose_must_be_registered() {
        let mut r = req(Relationship::Delegation, Purpose::Research, &[]);
        r.partner_purposes = &[Purpose::Testing];
        assert!(decide_basis(&r).unwrap_err().0.contains("not registered"));
    }

    #[test]
    fn malformed_consent_is_an_error() {
        assert!(ConsentRule::from_fhir("x", &json!({"status": "active", "provision": {"type": "maybe"}})).is_err());
        assert!(ConsentRule::from_fhir("x", &json!({"status": "active", "provision": {"period": {"start": "soon"}}}))
            .is_err());
    }
}
