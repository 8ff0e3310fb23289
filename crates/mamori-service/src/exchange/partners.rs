//! The partner registry API (`/api/v1/partners`): register, update,
//! suspend and reactivate partners; each change is a new version, audited,
//! mirrored read-only as FHIR Organization and Endpoint `partner-<id>`, and
//! applied to the AS2 listener's trust at once.

use mamori_core::ids::ResourceType;
use mamori_core::policy::{told, Facts, Notice, Operation};
use mamori_exchange::partner::{cert_infos, Partner, Status};
use mamori_store::exchange::{self as xs, PartnerRow};
use mamori_store::records;
use mamori_store::writer::WriteCtx;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actor::Actor;
use crate::commit::{Effect, Outcome};
use crate::error::ServiceError;
use crate::exchange::partner_of;
use crate::notify::{self, Audience};
use crate::services::Services;

fn summary(row: &PartnerRow, p: &Partner, now: mamori_core::time::Timestamp, warn_days: i64) -> Value {
    json!({
        "id": p.id, "name": p.name, "institution_code": p.institution_code, "as2_id": p.as2_id,
        "endpoint": p.endpoint, "relationship": p.relationship, "purposes": p.purposes,
        "document_types": p.document_types, "status": p.status, "version": row.version,
        "updated_by": row.updated_by, "updated_at": row.updated_at.to_rfc3339(),
        "network": p.network, "contract": p.contract,
        "expiring_certificates": p.expiring(now, warn_days),
        "fhir": {"organization": format!("Organization/{}", p.fhir_id()), "endpoint": format!("Endpoint/{}", p.fhir_id())},
    })
}

/// The partner registry.
pub async fn list(svc: &Services, actor: &Actor) -> Result<Vec<Value>, ServiceError> {
    let d = svc.gate(actor, "partner-list", Operation::PartnerRead, Facts::default(), "the partner registry").await?;
    svc.audit(vec![actor.decided("partner-list", 200, &d, svc.now())]).await?;
    let rows = svc.store.read(xs::partners).await?;
    let now = svc.now();
    Ok(rows
        .iter()
        .filter_map(|r| partner_of(r).ok().map(|p| summary(r, &p, now, svc.cfg.exchange.cert_expiry_warn_days)))
        .collect())
}

/// One partner, with its registration and certificates.
pub async fn show(svc: &Services, actor: &Actor, id: &str) -> Result<Value, ServiceError> {
    let d = svc.gate(actor, "partner-read", Operation::PartnerRead, Facts::default(), "the partner registry").await?;
    svc.audit(vec![actor.decided("partner-read", 200, &d, svc.now())]).await?;
    let id2 = id.to_owned();
    let st = svc;
    let row = st
        .store
        .read(move |c| xs::partner(c, &id2))
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("partner {id}")))?;
    let p = partner_of(&row)?;
    let now = st.now();
    let mut v = summary(&row, &p, now, st.cfg.exchange.cert_expiry_warn_days);
    v["registration"] = serde_json::to_value(&p).unwrap_or(Value::Null);
    v["certificates"] = json!([
        cert_infos("signing", &p.certificates.signing).unwrap_or_default(),
        cert_infos("encryption", &p.certificates.encryption).unwrap_or_default(),
        cert_infos("tls_ca", &p.certificates.tls_ca).unwrap_or_default(),
    ]);
    Ok(v)
}

/// Writes the registration and its FHIR mirrors in a job.
fn write_partner(
    w: &mut WriteCtx<'_>,
    p: &Partner,
    expected: Option<i64>,
    by: &str,
    note: Option<&str>,
) -> Result<i64, ServiceError> {
    let doc = serde_json::to_string(p).map_err(|e| ServiceError::internal_from("the partner document", e))?;
    let status = match p.status {
        Status::Active => "active",
        Status::Suspended => "suspended",
    };
    let version = xs::put_partner(w.conn, &p.id, &p.as2_id, status, &doc, expected, by, note, w.now)?;
    for (rt, body) in [(ResourceType::ORGANIZATION, p.organization()), (ResourceType::ENDPOINT, p.endpoint_resource())]
    {
        crate::records::validate_body(rt, &body)
            .map_err(|e| ServiceError::internal(format!("mirror: {}", e.message())))?;
        records::put(w, rt, &p.fhir_id(), body, None, "system", w.now)?;
    }
    Ok(version)
}

fn validate(st: &Services, p: &Partner) -> Result<Vec<mamori_exchange::partner::CertInfo>, ServiceError> {
    p.validate(st.now()).map_err(|issues| {
        ServiceError::Unprocessable(
            issues
                .into_iter()
                .map(|m| mamori_core::fhir::validate::Issue { path: String::new(), message: m })
                .collect(),
        )
    })
}

/// A saved registration.
#[derive(Debug, serde::Serialize)]
pub struct Saved {
    /// The partner.
    pub id: String,
    /// The registration's version.
    pub version: i64,
    /// Its status.
    pub status: Status,
    /// What the registration accepted but cannot use yet (a certificate
    /// whose validity starts later).
    pub warnings: Vec<String>,
}

/// Registers a partner (`path_id` none) or updates one (admins); with
/// `expected`, only if the registration is still that version.
pub async fn save(
    svc: &Services,
    actor: &Actor,
    path_id: Option<String>,
    p: Result<Partner, ServiceError>,
    expected: Option<i64>,
) -> Result<Saved, ServiceError> {
    let action = if path_id.is_some() { "partner-update" } else { "partner-register" };
    let d =
        svc.gate(actor, action, Operation::PartnerManage, Facts::default(), "changing the partner registry").await?;
    let p = match p {
        Ok(p) => p,
        Err(e) => return Err(svc.refused(actor, action, e).await),
    };
    if let Some(id) = &path_id {
        if &p.id != id {
            let e = ServiceError::invalid("id", format!("the body is partner {}, the URL names {id}", p.id));
            return Err(svc.refused(actor, action, e).await);
        }
    }
    let certs = match validate(svc, &p) {
        Ok(c) => c,
        Err(e) => return Err(svc.refused(actor, action, e).await),
    };
    let warnings = p.not_yet_valid(svc.now());
    let creating = path_id.is_none();
    let (a2, p2, w2) = (actor.clone(), p.clone(), warnings.clone());
    let out = svc
        .change(actor, action, move |w| {
            let exists = xs::partner(w.conn, &p2.id)?.is_some();
            if creating && exists {
                return Err(ServiceError::Conflict(format!("partner {} already exists (use PUT to update)", p2.id)));
            }
            if !creating && !exists {
                return Err(ServiceError::NotFound(format!("partner {}", p2.id)));
            }
            let v = write_partner(w, &p2, expected, a2.name(), None)?;
            let mut rec = a2.decided(action, if creating { 201 } else { 200 }, &d, w.now);
            rec.entity = Some(mamori_audit::event::Entity { rtype: "Organization".into(), id: Some(p2.fhir_id()), version: None });
            rec.detail = Some(json!({
                "partner": p2.id, "version": v, "as2_id": p2.as2_id, "endpoint": p2.endpoint,
                "relationship": p2.relationship, "contract": p2.contract.reference, "status": p2.status,
                "certificates": certs.iter().map(|c| json!({"role": c.role, "sha256": c.sha256, "not_before": c.not_before, "not_after": c.not_after})).collect::<Vec<_>>(),
                "warnings": w2,
            }));
            w.audit(&rec)?;
            Ok(Outcome::with(v, vec![Effect::PartnersChanged]))
        })
        .await?;
    let version = svc.finish(out).await;
    Ok(Saved { id: p.id, version, status: p.status, warnings })
}

/// Why a partner is suspended or activated.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// The reason (at least 5 characters).
    pub reason: String,
}

/// Suspends or reactivates a partner (admins); announced.
pub async fn set_status(
    svc: &Services,
    actor: &Actor,
    id: &str,
    req: StatusChange,
    status: Status,
) -> Result<Saved, ServiceError> {
    let action = if status == Status::Suspended { "partner-suspend" } else { "partner-activate" };
    let d =
        svc.gate(actor, action, Operation::PartnerManage, Facts::default(), "changing the partner registry").await?;
    if req.reason.trim().chars().count() < 5 {
        return Err(svc
            .refused(actor, action, ServiceError::invalid("reason", "a reason of at least 5 characters"))
            .await);
    }
    let (a2, st2, id2) = (actor.clone(), svc.clone(), id.to_owned());
    let out = svc
        .change(actor, action, move |w| {
            let row = xs::partner(w.conn, &id2)?.ok_or_else(|| ServiceError::NotFound(format!("partner {id2}")))?;
            let mut p = partner_of(&row)?;
            if p.status == status {
                return Err(ServiceError::Precondition(format!(
                    "partner {id2} is already {}",
                    if status == Status::Active { "active" } else { "suspended" }
                )));
            }
            p.status = status;
            let v = write_partner(w, &p, Some(row.version), a2.name(), Some(req.reason.trim()))?;
            let mut rec = a2.decided(action, 200, &d, w.now);
            rec.entity = Some(mamori_audit::event::Entity {
                rtype: "Organization".into(),
                id: Some(p.fhir_id()),
                version: None,
            });
            rec.detail = Some(json!({"partner": p.id, "version": v, "reason": req.reason.trim()}));
            w.audit(&rec)?;
            let msg = if status == Status::Suspended {
                format!(
                    "連携先 {} ({}) との交換を停止しました / Exchange with partner {} ({}) suspended: {}",
                    p.name,
                    p.id,
                    p.name,
                    p.id,
                    req.reason.trim()
                )
            } else {
                format!(
                    "連携先 {} ({}) との交換を再開しました / Exchange with partner {} ({}) resumed: {}",
                    p.name,
                    p.id,
                    p.name,
                    p.id,
                    req.reason.trim()
                )
            };
            let a = notify::announce(
                w,
                &st2,
                action,
                false,
                "warning",
                &msg,
                json!({"partner": p.id, "version": v}),
                Audience::Roles(told(Notice::PartnerStatus)),
            )?;
            Ok(Outcome::with(v, vec![Effect::Announce(vec![a]), Effect::PartnersChanged]))
        })
        .await?;
    let version = svc.finish(out).await;
    Ok(Saved { id: id.to_owned(), version, status, warnings: Vec::new() })
}

/// What a partner needs to register this institution.
pub async fn identity(svc: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    let d = svc
        .gate(actor, "exchange-identity-read", Operation::PartnerRead, Facts::default(), "the institution's identity")
        .await?;
    svc.audit(vec![actor.decided("exchange-identity-read", 200, &d, svc.now())]).await?;
    let st = svc;
    let x = &st.exchange;
    let cert_pem =
        x.identity.cert.to_pem().map_err(|e| ServiceError::internal_from("the institution certificate", e))?;
    let cert_pem =
        String::from_utf8(cert_pem).map_err(|e| ServiceError::internal_from("the institution certificate", e))?;
    Ok(json!({
        "as2_id": x.as2_id,
        "name": st.cfg.institution.name,
        "institution_code": if st.cfg.institution.id.is_empty() { Value::Null } else { json!(st.cfg.institution.id) },
        "endpoint": x.as2_url(),
        "certificates": {"signing": cert_pem, "encryption": cert_pem, "tls_ca": x.ca_pem},
        "certificate_info": [
            cert_infos("signing", &cert_pem).unwrap_or_default(),
            cert_infos("tls_ca", &x.ca_pem).unwrap_or_default(),
            cert_infos("tls", &x.tls_cert_pem).unwrap_or_default(),
        ],
        "profile": {"sends": {"cipher": "aes-256-cbc (per partner: aes-256-gcm)", "key_transport": "rsa-pkcs1 (per partner: rsa-oaep-sha256)", "digest": "sha-256"},
                    "receipts": "signed MDN (synchronous; asynchronous per partner)"}
    }))
}
