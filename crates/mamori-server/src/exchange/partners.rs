//! The partner registry API (`/api/v1/partners`): register, update,
//! suspend and reactivate partners; each change is a new version, audited,
//! mirrored read-only as FHIR Organization and Endpoint `partner-<id>`, and
//! applied to the AS2 listener's trust at once.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mamori_core::ids::ResourceType;
use mamori_core::policy::{may_administer, Role};
use mamori_exchange::partner::{cert_infos, Partner, Status};
use mamori_store::exchange::{self as xs, PartnerRow};
use mamori_store::writer::WriteCtx;
use mamori_store::{records, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, OpsError};
use crate::exchange::{partner_of, partners_changed};
use crate::notify::{self, Audience};
use crate::ops::refuse;
use crate::state::{AppState, Caller};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/partners", get(list).post(register))
        .route("/api/v1/partners/{id}", get(show).put(update))
        .route("/api/v1/partners/{id}/suspend", post(suspend))
        .route("/api/v1/partners/{id}/activate", post(activate))
        .route("/api/v1/exchange/identity", get(identity))
}

type R = Result<Response, OpsError>;

/// Whether a FHIR id belongs to a registry mirror (read-only to users).
pub fn is_mirror(rtype: &str, id: &str) -> bool {
    matches!(rtype, "Organization" | "Endpoint") && id.starts_with("partner-")
}

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

async fn list(State(st): State<AppState>, _caller: Caller) -> R {
    let rows = st.store.read(xs::partners).await?;
    let now = st.store.clock().now();
    let out: Vec<Value> = rows
        .iter()
        .filter_map(|r| partner_of(r).ok().map(|p| summary(r, &p, now, st.cfg.exchange.cert_expiry_warn_days)))
        .collect();
    Ok(Json(json!({"partners": out})).into_response())
}

async fn show(State(st): State<AppState>, _caller: Caller, Path(id): Path<String>) -> R {
    let id2 = id.clone();
    let row = st
        .store
        .read(move |c| xs::partner(c, &id2))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("partner {id}")))?;
    let p = partner_of(&row)?;
    let now = st.store.clock().now();
    let mut v = summary(&row, &p, now, st.cfg.exchange.cert_expiry_warn_days);
    v["registration"] = serde_json::to_value(&p).unwrap_or(Value::Null);
    v["certificates"] = json!([
        cert_infos("signing", &p.certificates.signing).unwrap_or_default(),
        cert_infos("encryption", &p.certificates.encryption).unwrap_or_default(),
        cert_infos("tls_ca", &p.certificates.tls_ca).unwrap_or_default(),
    ]);
    Ok(Json(v).into_response())
}

/// Writes the registration and its FHIR mirrors in a job.
fn write_partner(
    w: &mut WriteCtx<'_>,
    p: &Partner,
    expected: Option<i64>,
    by: &str,
    note: Option<&str>,
) -> Result<i64, StoreError> {
    let doc = serde_json::to_string(p).map_err(|e| StoreError::Internal(e.to_string()))?;
    let status = match p.status {
        Status::Active => "active",
        Status::Suspended => "suspended",
    };
    let version = xs::put_partner(w.conn, &p.id, &p.as2_id, status, &doc, expected, by, note, w.now)?;
    for (rt, body) in [(ResourceType::ORGANIZATION, p.organization()), (ResourceType::ENDPOINT, p.endpoint_resource())]
    {
        crate::fhir::write::validate_body(rt, &body)
            .map_err(|e| StoreError::Internal(format!("mirror: {}", e.audit_text())))?;
        records::put(w.conn, rt, &p.fhir_id(), body, None, "system", w.now)?;
    }
    Ok(version)
}

fn parse_partner(bytes: &[u8]) -> Result<Partner, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad("", format!("invalid partner registration: {e}")))
}

fn validate(st: &AppState, p: &Partner) -> Result<Vec<mamori_exchange::partner::CertInfo>, ApiError> {
    p.validate(st.store.clock().now()).map_err(|issues| {
        ApiError::Unprocessable(
            issues
                .into_iter()
                .map(|m| mamori_core::fhir::validate::Issue { path: String::new(), message: m })
                .collect(),
        )
    })
}

async fn body_bytes(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, 1 << 20).await.map_err(|_| ApiError::TooLarge(1 << 20))
}

async fn register(State(st): State<AppState>, caller: Caller, body: Body) -> R {
    save(st, caller, None, body, None).await
}

async fn update(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> R {
    let expected = match headers.get("if-match").and_then(|v| v.to_str().ok()) {
        Some(v) => match crate::fhir::write::parse_etag(v) {
            Ok(n) => Some(n as i64),
            Err(e) => return Err(refuse(&st, &caller, "partner-update", e).await),
        },
        None => None,
    };
    save(st, caller, Some(id), body, expected).await
}

async fn save(st: AppState, caller: Caller, path_id: Option<String>, body: Body, expected: Option<i64>) -> R {
    let action = if path_id.is_some() { "partner-update" } else { "partner-register" };
    if !may_administer(&caller.subject()) {
        return Err(refuse(
            &st,
            &caller,
            action,
            ApiError::Forbidden("the partner registry requires the admin role".into()),
        )
        .await);
    }
    let p = match body_bytes(body).await.and_then(|b| parse_partner(&b)) {
        Ok(p) => p,
        Err(e) => return Err(refuse(&st, &caller, action, e).await),
    };
    if let Some(id) = &path_id {
        if &p.id != id {
            return Err(refuse(
                &st,
                &caller,
                action,
                ApiError::bad("id", format!("the body is partner {}, the URL names {id}", p.id)),
            )
            .await);
        }
    }
    let certs = match validate(&st, &p) {
        Ok(c) => c,
        Err(e) => return Err(refuse(&st, &caller, action, e).await),
    };
    let creating = path_id.is_none();
    let c2 = caller.clone();
    let c3 = caller.clone();
    let p2 = p.clone();
    let pid = p.id.clone();
    let version = st
        .store
        .writer()
        .write(
            move |w| {
                let exists = xs::partner(w.conn, &p2.id)?.is_some();
                if creating && exists {
                    return Err(StoreError::Duplicate(format!("partner {} (use PUT to update)", p2.id)));
                }
                if !creating && !exists {
                    return Err(StoreError::NotFound(format!("partner {}", p2.id)));
                }
                let v = write_partner(w, &p2, expected, c2.user.name.as_str(), None)?;
                let mut rec = c2.record(if creating { "partner-register" } else { "partner-update" }, if creating { 201 } else { 200 }, w.now);
                rec.entity = Some(mamori_audit::event::Entity { rtype: "Organization".into(), id: Some(p2.fhir_id()), version: None });
                rec.detail = Some(json!({
                    "partner": p2.id, "version": v, "as2_id": p2.as2_id, "endpoint": p2.endpoint,
                    "relationship": p2.relationship, "contract": p2.contract.reference, "status": p2.status,
                    "certificates": certs.iter().map(|c| json!({"role": c.role, "sha256": c.sha256, "not_after": c.not_after})).collect::<Vec<_>>(),
                }));
                w.audit(&rec)?;
                Ok(v)
            },
            move |e, w| {
                let mut rec = c3.record(action, ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"partner": pid, "error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    partners_changed(&st).await;
    let status = if creating { StatusCode::CREATED } else { StatusCode::OK };
    Ok((
        status,
        [("etag", format!("W/\"{version}\""))],
        Json(json!({"id": p.id, "version": version, "status": p.status})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusReq {
    reason: String,
}

async fn suspend(st: State<AppState>, caller: Caller, id: Path<String>, body: Body) -> R {
    set_status(st, caller, id, body, Status::Suspended).await
}

async fn activate(st: State<AppState>, caller: Caller, id: Path<String>, body: Body) -> R {
    set_status(st, caller, id, body, Status::Active).await
}

async fn set_status(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
    status: Status,
) -> R {
    let action = if status == Status::Suspended { "partner-suspend" } else { "partner-activate" };
    if !may_administer(&caller.subject()) {
        return Err(refuse(
            &st,
            &caller,
            action,
            ApiError::Forbidden("the partner registry requires the admin role".into()),
        )
        .await);
    }
    let req: StatusReq = match crate::ops::json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, action, e).await),
    };
    if req.reason.trim().chars().count() < 5 {
        return Err(refuse(&st, &caller, action, ApiError::bad("reason", "a reason of at least 5 characters")).await);
    }
    let (c2, c3, st2, id2, id3) = (caller.clone(), caller.clone(), st.clone(), id.clone(), id.clone());
    let (version, a) = st
        .store
        .writer()
        .write(
            move |w| {
                let row = xs::partner(w.conn, &id2)?.ok_or_else(|| StoreError::NotFound(format!("partner {id2}")))?;
                let mut p = partner_of(&row)?;
                if p.status == status {
                    return Err(StoreError::Precondition(format!(
                        "partner {id2} is already {}",
                        if status == Status::Active { "active" } else { "suspended" }
                    )));
                }
                p.status = status;
                let v = write_partner(w, &p, Some(row.version), c2.user.name.as_str(), Some(req.reason.trim()))?;
                let mut rec = c2.record(action, 200, w.now);
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
                    Audience::Roles(vec![Role::Admin, Role::Auditor]),
                )?;
                Ok((v, a))
            },
            move |e, w| {
                let mut rec = c3.record(action, ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"partner": id3, "error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    notify::publish(&st, [a]);
    partners_changed(&st).await;
    Ok(Json(json!({"id": id, "version": version, "status": status})).into_response())
}

/// What a partner needs to register this institution.
async fn identity(State(st): State<AppState>, _caller: Caller) -> R {
    let x = &st.exchange;
    let cert_pem = String::from_utf8(x.identity.cert.to_pem().map_err(|e| ApiError::Internal(e.to_string()))?)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({
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
    .into_response())
}
