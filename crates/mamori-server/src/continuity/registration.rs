//! Registration without the reception desk (EM-B9): a provisional patient
//! with minimal data, a provisional id unique across nodes, clearly marked,
//! and listed for follow-up until identified (merged) or confirmed.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mamori_core::continuity::{may_register_provisionally, provisional_id, Triage, PROVISIONAL_SYSTEM, TAG_SYSTEM};
use mamori_core::ids::ResourceType;
use mamori_core::policy::Role;
use mamori_store::{accounts, continuity as cs, emergency, records, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, OpsError};
use crate::ops::{json_body, refuse};
use crate::state::{AppState, Caller};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/registrations", get(list).post(register))
}

pub const EXT: &str = "urn:mamori:fhir:registration";
const EN_REP: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Names {
    /// 漢字氏名, family and given separated by a space.
    kanji: Option<String>,
    /// カナ氏名.
    kana: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterReq {
    triage: Triage,
    /// male | female | other | unknown
    sex: String,
    #[serde(default)]
    estimated_age: Option<u32>,
    /// e.g. "40-49", "child", "elderly"
    #[serde(default)]
    age_band: Option<String>,
    #[serde(default)]
    features: Option<String>,
    #[serde(default)]
    found_at: Option<String>,
    #[serde(default)]
    arrival: Option<String>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    name: Option<Names>,
}

fn human_name(text: &str, rep: &str) -> Value {
    let t = text.trim();
    let (family, given) = t.split_once([' ', '\u{3000}']).map_or((t, ""), |(f, g)| (f.trim(), g.trim()));
    let mut n =
        json!({"extension": [{"url": EN_REP, "valueCode": rep}], "use": "official", "text": t, "family": family});
    if !given.is_empty() {
        n["given"] = json!([given]);
    }
    n
}

/// The provisional Patient resource for a registration.
fn patient_body(req: &RegisterReq, pid: &str) -> Result<Value, ApiError> {
    if !matches!(req.sex.as_str(), "male" | "female" | "other" | "unknown") {
        return Err(ApiError::bad("sex", "male, female, other or unknown"));
    }
    if req.estimated_age.is_some_and(|a| a > 130) {
        return Err(ApiError::bad("estimated_age", "0-130"));
    }
    let mut ext = vec![json!({"url": "triage", "valueCode": req.triage.as_str()})];
    let mut push = |k: &str, v: &Option<String>| {
        if let Some(s) = v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            ext.push(json!({"url": k, "valueString": s}));
        }
    };
    push("age-band", &req.age_band);
    push("features", &req.features);
    push("found-at", &req.found_at);
    push("arrival", &req.arrival);
    push("note", &req.note);
    if let Some(a) = req.estimated_age {
        ext.push(json!({"url": "estimated-age", "valueInteger": a}));
    }
    let mut p = json!({
        "resourceType": "Patient",
        "meta": {"tag": [{"system": TAG_SYSTEM, "code": "provisional", "display": "仮登録 / provisional registration"}]},
        "extension": [{"url": EXT, "extension": ext}],
        "identifier": [{"use": "temp", "system": PROVISIONAL_SYSTEM, "value": pid}],
        "active": true,
        "gender": req.sex,
    });
    let mut names = Vec::new();
    if let Some(n) = &req.name {
        if let Some(k) = n.kanji.as_deref().filter(|s| !s.trim().is_empty()) {
            names.push(human_name(k, "IDE"));
        }
        if let Some(k) = n.kana.as_deref().filter(|s| !s.trim().is_empty()) {
            names.push(human_name(k, "SYL"));
        }
    }
    if !names.is_empty() {
        p["name"] = json!(names);
    }
    crate::fhir::write::validate_body(ResourceType::PATIENT, &p)?;
    Ok(p)
}

async fn register(State(st): State<AppState>, caller: Caller, body: Body) -> Result<Response, OpsError> {
    const ACTION: &str = "provisional-register";
    let req: RegisterReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, ACTION, e).await),
    };
    let s = caller.subject();
    if !(s.roles.iter().any(|r| r.is_clinical()) || s.has(Role::Clerk)) {
        return Err(refuse(
            &st,
            &caller,
            ACTION,
            ApiError::Forbidden("registration is for clinicians and clerks".into()),
        )
        .await);
    }
    let (c2, c3, st2) = (caller.clone(), caller.clone(), st.clone());
    let node = st.node().unwrap_or_else(|| st.cfg.institution.node.clone());
    let off = st.cfg.institution.utc_offset_minutes;
    let created = st
        .store
        .writer()
        .write(
            move |w| {
                let (_, plan) = emergency::current_plan(w.conn)?;
                may_register_provisionally(&c2.mode(), c2.user.department.as_deref(), &plan.registration.always_departments)
                    .map_err(StoreError::Forbidden)?;
                let ymd = super::local_ymd(w.now, off);
                let day = format!("{:04}{:02}{:02}", ymd.0, ymd.1, ymd.2);
                let n = cs::next_provisional(w.conn, &day)?;
                let pid = provisional_id(ymd, &node, n);
                let body = patient_body(&req, &pid).map_err(|e| StoreError::invalid("", e.audit_text()))?;
                let id = accounts::new_id()?;
                let user = c2.user.name.as_str().to_owned();
                let written = records::put(w.conn, ResourceType::PATIENT, &id, body, None, &user, w.now)?;
                if c2.subject().roles.iter().any(|r| r.is_clinical()) {
                    accounts::assign_care_unchecked(w.conn, &id, &user, "provisional registration", w.now)?;
                }
                let mut rec = c2.fhir_record("create", 201, Some("Patient"), Some(&id), Some(1), vec![id.clone()], None, w.now);
                rec.action = ACTION.into();
                rec.detail = Some(json!({"provisional_id": pid, "triage": req.triage.as_str(), "node": node}));
                w.audit(&rec)?;
                let _ = &st2;
                Ok(json!({"id": id, "provisional_id": pid, "patient": serde_json::from_str::<Value>(&written.body).unwrap_or(Value::Null)}))
            },
            move |e, w| {
                let mut rec = c3.record(ACTION, ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// A provisional patient's summary for the follow-up list.
pub fn summary(id: &str, p: &Value) -> Value {
    let ext =
        p["extension"].as_array().and_then(|a| a.iter().find(|e| e["url"] == EXT)).cloned().unwrap_or(Value::Null);
    let get = |k: &str| {
        ext["extension"].as_array().and_then(|a| a.iter().find(|e| e["url"] == k)).map(|e| {
            e.get("valueString")
                .or_else(|| e.get("valueCode"))
                .or_else(|| e.get("valueInteger"))
                .cloned()
                .unwrap_or(Value::Null)
        })
    };
    json!({
        "id": id,
        "provisional_id": p["identifier"].as_array().and_then(|a| a.iter().find(|i| i["system"] == PROVISIONAL_SYSTEM)).map(|i| i["value"].clone()),
        "active": p["active"],
        "triage": get("triage"), "sex": p["gender"], "estimated_age": get("estimated-age"), "age_band": get("age-band"),
        "features": get("features"), "found_at": get("found-at"), "arrival": get("arrival"), "note": get("note"),
        "names": p["name"].as_array().map(|a| a.iter().map(|n| n["text"].clone()).collect::<Vec<_>>()),
        "merged_into": p["link"].as_array().and_then(|a| a.iter().find(|l| l["type"] == "replaced-by")).map(|l| l["other"]["reference"].clone()),
        "last_updated": p["meta"]["lastUpdated"],
    })
}

#[derive(Deserialize)]
struct ListQ {
    /// Only those not yet identified (default true).
    open: Option<bool>,
}

async fn list(State(st): State<AppState>, caller: Caller, Query(q): Query<ListQ>) -> Result<Response, OpsError> {
    let s = caller.subject();
    if !(s.roles.iter().any(|r| r.is_clinical()) || s.has(Role::Clerk)) {
        return Err(refuse(
            &st,
            &caller,
            "provisional-list",
            ApiError::Forbidden("the follow-up list is for clinicians and clerks".into()),
        )
        .await);
    }
    let open = q.open.unwrap_or(true);
    let rows = st
        .store
        .read(move |c| {
            let ids = cs::patients_with_identifier_system(c, PROVISIONAL_SYSTEM)?;
            let mut out = Vec::new();
            for id in ids {
                if let Some(v) = records::read(c, "Patient", &id)? {
                    let p: Value = serde_json::from_str(&v.body).unwrap_or(Value::Null);
                    let merged = p["link"].as_array().is_some_and(|a| a.iter().any(|l| l["type"] == "replaced-by"));
                    let confirmed =
                        p["meta"]["tag"].as_array().is_some_and(|a| !a.iter().any(|t| t["code"] == "provisional"));
                    if !open || (!merged && !confirmed && p["active"] != false) {
                        out.push(summary(&id, &p));
                    }
                }
            }
            Ok(out)
        })
        .await?;
    let mut rec = caller.record("provisional-list", 200, st.store.clock().now());
    rec.patients = rows.iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect();
    st.store.writer().audit(vec![rec]).await?;
    Ok(Json(json!({"provisional": rows})).into_response())
}
