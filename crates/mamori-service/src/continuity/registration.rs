//! Registration without the reception desk (EM-B9): a provisional patient
//! with minimal data, a provisional id unique across nodes, clearly marked,
//! and listed for follow-up until identified (merged) or confirmed.

use mamori_core::continuity::{may_register_provisionally, provisional_id, Triage, PROVISIONAL_SYSTEM, TAG_SYSTEM};
use mamori_core::ids::ResourceType;
use mamori_core::policy::{Facts, Operation, PurposeOfUse};
use mamori_store::{accounts, continuity as cs, emergency, records};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actor::{set_patients, Actor};
use crate::authz;
use crate::error::ServiceError;
use crate::services::Services;

/// The extension carrying a provisional registration's details.
pub const EXT: &str = "urn:mamori:fhir:registration";
const EN_REP: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";

/// Names, if known.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Names {
    /// 漢字氏名, family and given separated by a space.
    pub kanji: Option<String>,
    /// カナ氏名.
    pub kana: Option<String>,
}

/// A registration without the reception desk.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// The triage category.
    pub triage: Triage,
    /// male | female | other | unknown
    pub sex: String,
    /// An estimated age.
    #[serde(default)]
    pub estimated_age: Option<u32>,
    /// e.g. "40-49", "child", "elderly"
    #[serde(default)]
    pub age_band: Option<String>,
    /// Distinguishing features.
    #[serde(default)]
    pub features: Option<String>,
    /// Where the patient was found.
    #[serde(default)]
    pub found_at: Option<String>,
    /// How the patient arrived.
    #[serde(default)]
    pub arrival: Option<String>,
    /// A note.
    #[serde(default)]
    pub note: Option<String>,
    /// Names, if known.
    #[serde(default)]
    pub name: Option<Names>,
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
fn patient_body(req: &Register, pid: &str) -> Result<Value, ServiceError> {
    if !matches!(req.sex.as_str(), "male" | "female" | "other" | "unknown") {
        return Err(ServiceError::invalid("sex", "male, female, other or unknown"));
    }
    if req.estimated_age.is_some_and(|a| a > 130) {
        return Err(ServiceError::invalid("estimated_age", "0-130"));
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
    crate::records::validate_body(ResourceType::PATIENT, &p)?;
    Ok(p)
}

/// A registered provisional patient.
#[derive(Debug, serde::Serialize)]
pub struct Registered {
    /// Its id.
    pub id: String,
    /// The provisional id (unique across nodes).
    pub provisional_id: String,
    /// The Patient.
    pub patient: Value,
}

/// Registers a patient without the reception desk: clerks, physicians and
/// nurses, while the plan opens it (a declared emergency phase, or the
/// departments it names). A clinician who registers cares for the patient.
pub async fn register(svc: &Services, actor: &Actor, req: Register) -> Result<Registered, ServiceError> {
    const ACTION: &str = "provisional-register";
    let a2 = actor.clone();
    let node = svc.node().unwrap_or_else(|| svc.cfg.institution.node.clone());
    let off = svc.cfg.institution.utc_offset_minutes;
    svc.change(actor, ACTION, move |w| {
        let (_, plan) = emergency::current_plan(w.conn)?;
        let open = may_register_provisionally(
            &a2.mode(),
            a2.user.department.as_deref(),
            &plan.registration.always_departments,
        );
        let facts = Facts { registration_open: open.is_ok(), ..Facts::default() };
        let d = authz::require(&a2, &Operation::ProvisionalRegister, facts, "registration without the reception desk")?;
        let ymd = super::local_ymd(w.now, off);
        let day = format!("{:04}{:02}{:02}", ymd.0, ymd.1, ymd.2);
        let n = cs::next_provisional(w.conn, &day)?;
        let pid = provisional_id(ymd, &node, n);
        let body = patient_body(&req, &pid)?;
        let id = accounts::new_id()?;
        let user = a2.name().to_owned();
        let written = records::put(w, ResourceType::PATIENT, &id, body, None, &user, w.now)?;
        if matches!(d.purpose, Some(PurposeOfUse::Treat | PurposeOfUse::EmergencyTreat)) {
            accounts::assign_care_unchecked(w.conn, &id, &user, "provisional registration", w.now)?;
        }
        let mut rec =
            a2.fhir_record("create", 201, Some("Patient"), Some(&id), Some(1), vec![id.clone()], Some(&d), w.now);
        rec.action = ACTION.into();
        rec.detail = Some(json!({"provisional_id": pid, "triage": req.triage.as_str(), "node": node}));
        w.audit(&rec)?;
        Ok(Registered {
            id,
            provisional_id: pid,
            patient: serde_json::from_str::<Value>(&written.body).unwrap_or(Value::Null),
        })
    })
    .await
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

/// The provisional patients (only those not yet identified if `open`):
/// clinicians and clerks; audited with the patients listed.
pub async fn list(svc: &Services, actor: &Actor, open: bool) -> Result<Vec<Value>, ServiceError> {
    const ACTION: &str = "provisional-list";
    let d = match authz::require(actor, &Operation::ProvisionalRead, Facts::default(), "the follow-up list") {
        Ok(d) => d,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let rows = svc
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
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    set_patients(&mut rec, rows.iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect());
    svc.audit(vec![rec]).await?;
    Ok(rows)
}
