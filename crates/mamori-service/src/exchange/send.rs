//! Sending documents (EX-B1b/c/d, EX-B2a/b/c): `POST
//! /api/v1/exchange/messages` checks every recipient and the legal basis,
//! builds a FHIR document Bundle, signs it once, encrypts it to each
//! recipient and queues one AS2 message per recipient in the durable
//! outbox; the ledger (`GET /api/v1/exchange/messages`, `/ledger`).

use std::collections::HashSet;

use base64::Engine as _;
use mamori_core::consent::{self, Basis, BasisKind, ConsentRule, Purpose, SendRequest};
use mamori_core::fhir::compartment::patients_named;
use mamori_core::fhir::validate::{validate_resource, Issue};
use mamori_core::ids::{PatientId, ResourceType};
use mamori_core::policy::{Action, Decision, Facts, Operation};
use mamori_core::time::Timestamp;
use mamori_exchange::as2::{self, MdnRequest};
use mamori_exchange::partner::{MdnMode, Partner, Status};
use mamori_store::exchange::{self as xs, MessageQuery, MessageRow};
use mamori_store::sql::Conn;
use mamori_store::{accounts, records};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::actor::{set_decision, set_patients, Actor};
use crate::authz;
use crate::error::ServiceError;
use crate::exchange::{fingerprint, partner_of};
use crate::services::Services;

/// What to send, to whom, why.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Send {
    /// The patient.
    pub patient: String,
    /// The partners (1 to 20).
    pub recipients: Vec<String>,
    /// The purpose (referral, ...).
    pub purpose: String,
    /// The legal basis asked for.
    #[serde(default)]
    pub basis: Option<String>,
    /// Why that basis holds (protection of life).
    #[serde(default)]
    pub justification: Option<String>,
    /// References to stored resources (`Condition/123`, or a stored
    /// `Composition/…` that becomes the document's Composition).
    #[serde(default)]
    pub documents: Vec<String>,
    /// A complete FHIR document Bundle, instead of `documents`.
    #[serde(default)]
    pub bundle: Option<Value>,
    /// Files to attach.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Title of the generated Composition (referral letter).
    #[serde(default)]
    pub title: Option<String>,
    /// Text of the generated Composition (with `format: "jp-clins"`,
    /// the referral's purpose, 紹介目的).
    #[serde(default)]
    pub note: Option<String>,
    /// The document format: mamori's own (absent), or `jp-clins`, a
    /// JP-CLINS document composed from the chart (the referral letter,
    /// 診療情報提供書, for purpose `referral`).
    #[serde(default)]
    pub format: Option<String>,
    /// With `format: "jp-clins"`: the present illness (現病歴); composed
    /// from the active problems when absent.
    #[serde(default)]
    pub history: Option<String>,
    /// With `format: "jp-clins"`: `referral` (診療情報提供書, the default)
    /// or `discharge-summary` (退院時サマリー; `note` is then the hospital
    /// course).
    #[serde(default)]
    pub document: Option<String>,
    /// The admission a discharge summary is about (`Encounter/<id>`).
    #[serde(default)]
    pub encounter: Option<String>,
    /// A discharge summary's instructions at discharge (退院時方針指示).
    #[serde(default)]
    pub plan: Option<String>,
}

/// The JP-CLINS format name in a send.
pub const FORMAT_JP_CLINS: &str = "jp-clins";

/// Types read from the chart for a JP-CLINS document.
const CLINS_TYPES: [ResourceType; 5] = [
    ResourceType::ALLERGY_INTOLERANCE,
    ResourceType::CONDITION,
    ResourceType::ENCOUNTER,
    ResourceType::MEDICATION_REQUEST,
    ResourceType::OBSERVATION,
];

/// A file to attach.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Its MIME type.
    pub content_type: String,
    /// Its title.
    pub title: String,
    /// Its bytes (base64).
    pub data: String,
}

fn bad(path: &str, m: impl Into<String>) -> ServiceError {
    ServiceError::invalid(path, m)
}

fn unprocessable(msgs: Vec<String>) -> ServiceError {
    ServiceError::Unprocessable(msgs.into_iter().map(|m| Issue { path: String::new(), message: m }).collect())
}

/// What the read phase gathered.
struct Gathered {
    patient: Value,
    /// The decision to send: a read of every resource sent, combined.
    decision: Decision,
    create_decision: Decision,
    resources: Vec<(String, String, Value)>,
    /// A stored Composition named in `documents`.
    composition: Option<(String, Value)>,
    consents: Vec<ConsentRule>,
    partners: Vec<(Partner, i64)>,
    /// For a JP-CLINS document: the chart it is composed from.
    chart: Vec<(String, String, Value)>,
}

fn gather(
    c: &mut dyn Conn,
    actor: &Actor,
    req: &Send,
    patient: &str,
    now: Timestamp,
) -> Result<Gathered, ServiceError> {
    let pv =
        records::read(c, "Patient", patient)?.ok_or_else(|| ServiceError::NotFound(format!("Patient/{patient}")))?;
    if pv.deleted {
        return Err(ServiceError::Gone(format!("Patient/{patient}")));
    }
    let one = std::slice::from_ref(&patient.to_owned()).to_vec();
    // Sending is reading every resource sent, for that patient: the
    // patient's record as a whole (the Patient and whatever a document
    // carries), then each stored resource named.
    let mut decisions = vec![authz::decide_clinical_read(c, actor, &one, now)?];
    let clins = req.format.as_deref() == Some(FORMAT_JP_CLINS);
    // What the send writes in the sender's record: the generated
    // Composition, or the JP-CLINS letter as a DocumentReference.
    let kept = if clins { ResourceType::DOCUMENT_REFERENCE } else { ResourceType::COMPOSITION };
    let create_decision = authz::decide_record(c, actor, Action::Create, kept, &one, now)?;
    let mut chart = Vec::new();
    if clins {
        for rt in CLINS_TYPES {
            decisions.push(authz::decide_record(c, actor, Action::Read, rt, &one, now)?);
        }
        let mut after: Option<(String, String)> = None;
        loop {
            let page = records::compartment(c, patient, after.as_ref().map(|(t, i)| (t.as_str(), i.as_str())), 500)?;
            let Some(last) = page.last() else { break };
            after = Some((last.rtype.clone(), last.id.clone()));
            for v in page {
                // One patient's data only: what is also another's stays home.
                if v.deleted
                    || !CLINS_TYPES.iter().any(|t| t.as_str() == v.rtype)
                    || v.patients.iter().any(|p| p != patient)
                {
                    continue;
                }
                let body: Value =
                    serde_json::from_str(&v.body).map_err(|e| ServiceError::internal_from("a chart resource", e))?;
                chart.push((v.rtype, v.id, body));
            }
            if chart.len() > 20_000 {
                return Err(unprocessable(vec!["the chart is too large to compose one letter from".into()]));
            }
        }
    }
    let mut resources = Vec::new();
    let mut composition = None;
    let mut seen = HashSet::new();
    for r in &req.documents {
        let (t, id) = r.split_once('/').ok_or_else(|| bad("documents", format!("'{r}' is not Type/id")))?;
        let rt = ResourceType::parse(t).map_err(|e| bad("documents", e.to_string()))?;
        if !seen.insert(r.clone()) || (rt == ResourceType::PATIENT && id == patient) {
            continue;
        }
        let v = records::read(c, rt.as_str(), id)?.ok_or_else(|| ServiceError::NotFound(r.clone()))?;
        if v.deleted {
            return Err(ServiceError::Gone(r.clone()));
        }
        if v.patients.iter().any(|p| p != patient) {
            return Err(unprocessable(vec![format!(
                "{r} is also another patient's data; a document may hold one patient's data only"
            )]));
        }
        if v.patients.is_empty() && mamori_core::fhir::compartment::requires_patient(rt) {
            return Err(unprocessable(vec![format!("{r} is not linked to a patient")]));
        }
        decisions.push(authz::decide_record(c, actor, Action::Read, rt, &v.patients, now)?);
        let body: Value = serde_json::from_str(&v.body).map_err(|e| ServiceError::internal_from(r.clone(), e))?;
        if rt == ResourceType::COMPOSITION && composition.is_none() {
            composition = Some((id.to_owned(), body));
        } else {
            resources.push((rt.as_str().to_owned(), id.to_owned(), body));
        }
    }
    // The patient's consents.
    let mut consents = Vec::new();
    let mut after = ("Consent".to_owned(), String::new());
    'pages: loop {
        let page = records::compartment(c, patient, Some((&after.0, &after.1)), 200)?;
        if page.is_empty() {
            break;
        }
        for v in &page {
            if v.rtype != "Consent" {
                break 'pages;
            }
            let body: Value = serde_json::from_str(&v.body).map_err(|e| ServiceError::internal_from("a Consent", e))?;
            consents.push(
                ConsentRule::from_fhir(&v.id, &body)
                    .map_err(|e| unprocessable(vec![format!("Consent/{} cannot be evaluated: {e}", v.id)]))?,
            );
            after = (v.rtype.clone(), v.id.clone());
        }
    }
    let mut partners = Vec::new();
    let mut problems = Vec::new();
    for id in &req.recipients {
        match xs::partner(c, id)? {
            None => problems.push(format!("{id} is not an identified partner in the registry; nothing was sent")),
            Some(row) => {
                let p = partner_of(&row)?;
                if p.status != Status::Active {
                    problems.push(format!("partner {id} is suspended; nothing was sent"));
                }
                if !p.document_types.iter().any(|t| t == "application/fhir+json") {
                    problems.push(format!("partner {id} is not registered for FHIR documents (application/fhir+json)"));
                }
                for u in p.unusable_certificates(now) {
                    problems.push(format!("{u}; nothing was sent"));
                }
                partners.push((p, row.version));
            }
        }
    }
    if !problems.is_empty() {
        return Err(unprocessable(problems));
    }
    let patient: Value = serde_json::from_str(&pv.body).map_err(|e| ServiceError::internal_from("the Patient", e))?;
    let decision = mamori_core::policy::combine(decisions).ok_or_else(|| ServiceError::internal("no decision"))?;
    Ok(Gathered { patient, decision, create_decision, resources, composition, consents, partners, chart })
}

fn loinc(purpose: Purpose) -> (&'static str, &'static str) {
    match purpose {
        Purpose::Referral => ("57133-1", "Referral note"),
        Purpose::ReferralReply | Purpose::Consultation => ("11488-4", "Consult note"),
        _ => ("34133-9", "Summary of episode note"),
    }
}

fn title_of(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Referral => "診療情報提供書 / Referral letter",
        Purpose::ReferralReply => "返書 / Reply to referral",
        Purpose::Consultation => "照会への回答 / Consultation",
        Purpose::Testing => "検査依頼 / Testing request",
        Purpose::Claims => "請求情報 / Claims information",
        Purpose::Research => "研究用提供 / Research data",
        Purpose::Other => "診療情報 / Clinical information",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The document Bundle, and a Composition to store when one was generated.
#[allow(clippy::too_many_arguments)]
fn build_bundle(
    st: &Services,
    actor: &Actor,
    req: &Send,
    purpose: Purpose,
    patient: &str,
    g: &Gathered,
    attachments: &[(String, String, Vec<u8>)],
    now: Timestamp,
) -> Result<(Value, Option<(String, Value)>), ServiceError> {
    let base = format!("{}/fhir", st.base_url);
    let mut entries = Vec::new();
    let mut refs: Vec<Value> = g.resources.iter().map(|(t, id, _)| json!({"reference": format!("{t}/{id}")})).collect();
    let bin: Vec<(String, Value)> = attachments
        .iter()
        .map(|(ct, title, data)| {
            let u = format!("urn:uuid:{}", accounts::new_id().unwrap_or_default());
            let b64 = base64::engine::general_purpose::STANDARD.encode(data);
            (u, json!({"resourceType": "Binary", "contentType": ct, "data": b64, "meta": {"tag": [{"display": title}]}}))
        })
        .collect();
    refs.extend(bin.iter().map(|(u, _)| json!({"reference": u})));
    let (comp_id, comp, generated) = match &g.composition {
        Some((id, c)) => {
            let subj = c.pointer("/subject/reference").and_then(Value::as_str).unwrap_or("");
            if subj != format!("Patient/{patient}") {
                return Err(unprocessable(vec![format!("Composition/{id} is not about Patient/{patient}")]));
            }
            (id.clone(), c.clone(), false)
        }
        None => {
            let id = accounts::new_id()?;
            let (code, display) = loinc(purpose);
            let title = req.title.clone().unwrap_or_else(|| title_of(purpose).to_owned());
            let note = req.note.clone().unwrap_or_default();
            let div = format!(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{}</p><p>{}</p></div>",
                escape(&title),
                escape(&note).replace('\n', "<br/>")
            );
            let mut section = json!({"title": title, "text": {"status": "generated", "div": div}});
            if !refs.is_empty() {
                section["entry"] = json!(refs);
            }
            let c = json!({
                "resourceType": "Composition",
                "status": "final",
                "type": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                "subject": {"reference": format!("Patient/{patient}")},
                "date": now.to_rfc3339(),
                "author": [{"display": format!("{} ({})", actor.user.display, actor.user.name)}],
                "title": title,
                "custodian": {"display": st.cfg.institution.name},
                "section": [section]
            });
            crate::records::validate_body(ResourceType::COMPOSITION, &c)?;
            (id, c, true)
        }
    };
    let mut comp_entry = comp.clone();
    comp_entry["id"] = json!(comp_id);
    entries.push(json!({"fullUrl": format!("{base}/Composition/{comp_id}"), "resource": comp_entry}));
    entries.push(json!({"fullUrl": format!("{base}/Patient/{patient}"), "resource": g.patient}));
    for (t, id, body) in &g.resources {
        entries.push(json!({"fullUrl": format!("{base}/{t}/{id}"), "resource": body}));
    }
    for (u, b) in bin {
        entries.push(json!({"fullUrl": u, "resource": b}));
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{}", accounts::new_id()?)},
        "type": "document",
        "timestamp": now.to_rfc3339(),
        "entry": entries
    });
    Ok((bundle, generated.then_some((comp_id, comp))))
}

/// Composes the JP-CLINS referral letter: the Bundle, the letter kept in
/// the sender's record (a DocumentReference, its attachment added once
/// signed) and what the send answers about it.
fn compose_clins(
    st: &Services,
    actor: &Actor,
    req: &Send,
    patient: &str,
    g: &Gathered,
    now: Timestamp,
) -> Result<(Value, (String, Value), Value), ServiceError> {
    let (partner, _) = g.partners.first().ok_or_else(|| ServiceError::internal("no recipient"))?;
    let conf = st.conformance();
    let id = accounts::new_id()?;
    let inst = &st.cfg.institution;
    use crate::exchange::clins::{self, Kind};
    let kind = match req.encounter.as_deref().and_then(|e| e.strip_prefix("Encounter/")) {
        Some(eid) => {
            let (_, _, body) = g
                .chart
                .iter()
                .find(|(t, id, _)| t == "Encounter" && id == eid)
                .ok_or_else(|| ServiceError::NotFound(format!("Encounter/{eid} of Patient/{patient}")))?;
            Kind::Discharge { encounter: (eid, body), plan: req.plan.as_deref() }
        }
        None => Kind::Referral,
    };
    let discharge = matches!(kind, Kind::Discharge { .. });
    let r = clins::Letter {
        registry: &conf.registry,
        institution: (&inst.id, &inst.name),
        utc_offset_minutes: inst.utc_offset_minutes,
        recipient: (partner.institution_code.as_deref(), &partner.name),
        author: (actor.name(), &actor.user.display, actor.user.department.as_deref()),
        patient: (patient, &g.patient),
        chart: &g.chart,
        purpose: req.note.as_deref().unwrap_or(""),
        history: req.history.as_deref(),
        now,
        serial: &id,
        kind,
    };
    let c = clins::compose(&r).map_err(ServiceError::Unprocessable)?;
    let (code, title, profile) = if discharge {
        ("18842-5", "退院時サマリー / Discharge summary", clins::BUNDLE_EDISCHARGE)
    } else {
        ("57133-1", "診療情報提供書 / Referral letter", clins::BUNDLE_EREFERRAL)
    };
    let bundle_id = c.bundle.pointer("/identifier/value").cloned().unwrap_or(Value::Null);
    let dr = json!({
        "resourceType": "DocumentReference",
        "identifier": [{"system": "http://jpfhir.jp/fhir/clins/bundle-identifier", "value": bundle_id}],
        "status": "current",
        "type": {"coding": [{"system": "http://jpfhir.jp/fhir/Common/CodeSystem/doc-typecodes", "code": code,
                              "display": title.split(" / ").next().unwrap_or(title)}],
                 "text": title},
        "subject": {"reference": format!("Patient/{patient}")},
        "date": now.to_rfc3339(),
        "author": [{"display": format!("{} ({})", actor.user.display, actor.user.name)}],
        "description": format!("{title} → {}", partner.name),
    });
    let report = json!({
        "format": FORMAT_JP_CLINS,
        "profile": profile,
        "kept": format!("DocumentReference/{id}"),
        "structured": c.structured,
        "text_only": c.text_only,
        "warnings": c.warnings.len(),
    });
    Ok((c.bundle, (id, dr), report))
}

/// The letter kept in the sender's record: the signed document as sent.
fn kept_letter(dr: &Value, signed: &Value) -> Value {
    let bytes = serde_json::to_vec(signed).unwrap_or_default();
    let mut dr = dr.clone();
    dr["content"] = json!([{"attachment": {
        "contentType": "application/fhir+json",
        "data": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "size": bytes.len(),
        "title": dr["type"]["text"].clone(),
    }}]);
    dr
}

/// Checks a caller-supplied document Bundle.
fn check_bundle(b: &Value, patient: &str) -> Result<(), ServiceError> {
    if b.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || b.get("type").and_then(Value::as_str) != Some("document")
    {
        return Err(bad("bundle", "a FHIR Bundle of type document"));
    }
    let entries = b.get("entry").and_then(Value::as_array).ok_or_else(|| bad("bundle.entry", "entries required"))?;
    let first =
        entries.first().and_then(|e| e.get("resource")).ok_or_else(|| bad("bundle.entry", "entries required"))?;
    if first.get("resourceType").and_then(Value::as_str) != Some("Composition") {
        return Err(bad("bundle.entry[0]", "the first entry of a document is its Composition"));
    }
    if first.pointer("/subject/reference").and_then(Value::as_str) != Some(&format!("Patient/{patient}")) {
        return Err(unprocessable(vec![format!("the Composition is not about Patient/{patient}")]));
    }
    for (i, e) in entries.iter().enumerate() {
        let r = e.get("resource").ok_or_else(|| bad(&format!("bundle.entry[{i}]"), "resource required"))?;
        let rt = validate_resource(r).map_err(ServiceError::Invalid)?;
        let id = r.get("id").and_then(Value::as_str).unwrap_or("");
        let others = patients_named(rt, id, r)
            .into_iter()
            .any(|p| p != patient && !(rt == ResourceType::PATIENT && id.is_empty()));
        if others {
            return Err(unprocessable(vec![format!(
                "bundle.entry[{i}] ({rt}) is also another patient's data; a document may hold one patient's data only"
            )]));
        }
    }
    Ok(())
}

fn as2_host(as2_id: &str) -> String {
    let h: String =
        as2_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect();
    if h.is_empty() {
        "mamori".into()
    } else {
        h
    }
}

/// What a send queued: one message per recipient.
#[derive(Debug, Serialize)]
pub struct Sent {
    /// The send's id.
    pub send: String,
    /// The messages (id, partner, message id, state, legal basis).
    pub messages: Vec<Value>,
    /// For a JP-CLINS document: its profile, the letter kept in the
    /// sender's record, the chart resources sent as structured entries,
    /// those shown in the text only (with why), the validation warnings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Value>,
}

/// Sends a patient's documents to partners: decided as a read of every
/// resource sent (and, for a generated letter, as writing it), with a
/// legal basis per recipient; signed once, encrypted per recipient,
/// queued in the outbox. A refusal is audited with the patient.
pub async fn send(svc: &Services, actor: &Actor, req: Result<Send, ServiceError>) -> Result<Sent, ServiceError> {
    const ACTION: &str = "exchange-send";
    let patient = req.as_ref().ok().map(|r| r.patient.strip_prefix("Patient/").unwrap_or(&r.patient).to_owned());
    let r = match req {
        Ok(req) => prepare(svc, actor, req).await,
        Err(e) => Err(e),
    };
    match r {
        Ok(r) => Ok(r),
        Err(e) => {
            let mut rec = crate::commit::failure_record(actor, ACTION, &e, svc.now());
            // The refusal is in the record of the patient meant (typed as
            // an id or a medical record number), if there is one.
            if let Some(p) = patient {
                if let Ok(Ok(id)) = svc.store.read(move |c| Ok(crate::records::resolve_patient(c, &p))).await {
                    rec.patients = vec![id];
                }
            }
            svc.audit(vec![rec]).await?;
            Err(e)
        }
    }
}

struct Prepared {
    patient: String,
    purpose: Purpose,
    bundle_id: String,
    decision: Decision,
    /// What the send keeps in the sender's record.
    composition: Option<(ResourceType, String, Value)>,
    documents: Vec<String>,
    signed: as2::SignedPayload,
    size: usize,
    per_partner: Vec<(Partner, i64, Basis, as2::Outgoing, String)>,
}

async fn prepare(st: &Services, actor: &Actor, req: Send) -> Result<Sent, ServiceError> {
    authz::require(actor, &Operation::ExchangeSend, Facts::default(), "sending to partners")?;
    // The patient as staff name them: the id or the medical record number.
    let typed = req.patient.clone();
    let patient = st.store.read(move |c| Ok(crate::records::resolve_patient(c, &typed))).await??;
    let patient = PatientId::parse(&patient).map_err(|e| bad("patient", e.to_string()))?.as_str().to_owned();
    let purpose = Purpose::parse(&req.purpose).ok_or_else(|| {
        bad("purpose", format!("one of: {}", Purpose::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")))
    })?;
    let requested = match &req.basis {
        None => None,
        Some(b) => Some(
            BasisKind::parse(b)
                .ok_or_else(|| bad("basis", "delegation, explicit_consent, implied_consent or protection_of_life"))?,
        ),
    };
    if req.recipients.is_empty() || req.recipients.len() > 20 {
        return Err(bad("recipients", "1 to 20 partner ids"));
    }
    if req.recipients.iter().collect::<HashSet<_>>().len() != req.recipients.len() {
        return Err(bad("recipients", "each partner once"));
    }
    if req.bundle.is_some() && (!req.documents.is_empty() || !req.attachments.is_empty()) {
        return Err(bad("bundle", "send either a bundle, or documents and attachments"));
    }
    if req.bundle.is_none() && req.documents.is_empty() && req.attachments.is_empty() && req.note.is_none() {
        return Err(bad("documents", "nothing to send: give documents, attachments, a note or a bundle"));
    }
    let mut attachments = Vec::new();
    for (i, a) in req.attachments.iter().enumerate() {
        if !a.content_type.contains('/') || !a.content_type.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(&format!("attachments[{i}].content_type"), "a MIME type"));
        }
        if a.title.trim().is_empty() {
            return Err(bad(&format!("attachments[{i}].title"), "required"));
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(a.data.as_bytes())
            .map_err(|e| bad(&format!("attachments[{i}].data"), format!("base64: {e}")))?;
        attachments.push((a.content_type.clone(), a.title.trim().to_owned(), data));
    }
    if let Some(b) = &req.bundle {
        check_bundle(b, &patient)?;
    }
    match req.format.as_deref() {
        None => {
            for (k, v) in [
                ("history", &req.history),
                ("document", &req.document),
                ("encounter", &req.encounter),
                ("plan", &req.plan),
            ] {
                if v.is_some() {
                    return Err(bad(k, "only with format jp-clins"));
                }
            }
        }
        Some(FORMAT_JP_CLINS) => {
            if purpose != Purpose::Referral {
                return Err(bad(
                    "purpose",
                    "a JP-CLINS document (referral letter or discharge summary) goes to the next carer: purpose referral",
                ));
            }
            match (req.document.as_deref(), &req.encounter, &req.plan) {
                (None | Some("referral"), None, None) => {}
                (None | Some("referral"), _, _) => {
                    return Err(bad("encounter", "encounter and plan belong to a discharge summary"))
                }
                (Some("discharge-summary"), Some(e), _)
                    if e.strip_prefix("Encounter/").is_some_and(|i| mamori_core::ids::ResourceId::parse(i).is_ok()) => {
                }
                (Some("discharge-summary"), _, _) => {
                    return Err(bad("encounter", "a discharge summary names its admission: Encounter/<id>"))
                }
                (Some(d), _, _) => {
                    return Err(bad(
                        "document",
                        format!("'{d}' is not a JP-CLINS document here: referral or discharge-summary"),
                    ))
                }
            }
            if req.recipients.len() != 1 {
                return Err(bad(
                    "recipients",
                    "a JP-CLINS referral letter names its recipient: one partner per letter",
                ));
            }
            if req.bundle.is_some() || !req.documents.is_empty() || !req.attachments.is_empty() || req.title.is_some() {
                return Err(bad(
                    "format",
                    "a JP-CLINS letter is composed from the chart: give note (the purpose) and history, not bundle, documents, attachments or title",
                ));
            }
            if req.note.as_deref().is_none_or(|n| n.trim().is_empty()) {
                return Err(bad(
                    "note",
                    if req.document.as_deref() == Some("discharge-summary") {
                        "the hospital course (入院中経過) is required"
                    } else {
                        "the purpose of the referral (紹介目的) is required"
                    },
                ));
            }
        }
        Some(f) => {
            return Err(bad("format", format!("'{f}' is not a document format: absent (mamori's own) or jp-clins")))
        }
    }
    let now = st.now();
    let (a2, r2, p2) = (actor.clone(), req.clone(), patient.clone());
    let g = st.store.read(move |c| Ok(gather(c, &a2, &r2, &p2, now))).await??;
    if !g.decision.permit {
        return Err(ServiceError::denied(&format!("sending Patient/{patient}'s records"), &g.decision));
    }
    // The legal basis, per recipient.
    let mut bases = Vec::new();
    let mut refusals = Vec::new();
    for (p, _) in &g.partners {
        let r = SendRequest {
            partner: &p.id,
            relationship: p.relationship,
            contract: &p.contract.reference,
            partner_purposes: &p.purposes,
            purpose,
            requested,
            justification: req.justification.as_deref(),
            consents: &g.consents,
            mode: actor.mode(),
            now,
        };
        match consent::decide_basis(&r) {
            Ok(b) => bases.push(b),
            Err(e) => refusals.push(format!("{}: {}", p.id, e.0)),
        }
    }
    if !refusals.is_empty() {
        return Err(unprocessable(
            refusals.into_iter().map(|r| format!("no legal basis to send to {r}; nothing was sent")).collect(),
        ));
    }
    let mut report = None;
    let (mut bundle, composition) = match (&req.bundle, req.format.as_deref()) {
        (Some(b), _) => (b.clone(), None),
        (None, Some(FORMAT_JP_CLINS)) => {
            let (b, kept, r) = compose_clins(st, actor, &req, &patient, &g, now)?;
            report = Some(r);
            (b, Some(kept))
        }
        (None, _) => build_bundle(st, actor, &req, purpose, &patient, &g, &attachments, now)?,
    };
    if composition.is_some() && !g.create_decision.permit {
        return Err(ServiceError::denied(
            "authoring a document for this patient (send a stored Composition written by a clinician)",
            &g.create_decision,
        ));
    }
    // The FHIR Bundle signature, unless the document carries its own: it
    // stays with the document after the S/MIME envelope is opened.
    if bundle.get("signature").is_none() {
        let who = if report.is_some() {
            // The issuing institution's entry in the letter.
            let from = bundle["entry"][0]["resource"]["custodian"]["reference"].clone();
            json!({"reference": from, "display": st.cfg.institution.name})
        } else {
            json!({"display": st.cfg.institution.name})
        };
        let (x, when) =
            (st.exchange.clone(), crate::exchange::clins::instant(now, st.cfg.institution.utc_offset_minutes));
        bundle = tokio::task::spawn_blocking(move || {
            mamori_exchange::fhirsig::sign(&mut bundle, &x.identity, who, &when).map(|()| bundle)
        })
        .await
        .map_err(|e| ServiceError::internal_from("signing", e))?
        .map_err(|e| ServiceError::internal(format!("signing the document failed: {e}")))?;
    }
    let composition = match (composition, report.is_some()) {
        (Some((id, body)), true) => Some((ResourceType::DOCUMENT_REFERENCE, id.clone(), kept_letter(&body, &bundle))),
        (Some((id, body)), false) => Some((ResourceType::COMPOSITION, id, body)),
        (None, _) => None,
    };
    let bundle_id = bundle.pointer("/identifier/value").and_then(Value::as_str).unwrap_or("").to_owned();
    let payload = serde_json::to_vec(&bundle).map_err(|e| ServiceError::internal_from("the document", e))?;
    if payload.len() > st.cfg.exchange.max_message_bytes {
        return Err(ServiceError::TooLarge(format!(
            "the document is larger than {} bytes",
            st.cfg.exchange.max_message_bytes
        )));
    }
    let mut documents: Vec<String> = composition.iter().map(|(t, id, _)| format!("{t}/{id}")).collect();
    documents.extend(g.composition.iter().map(|(id, _)| format!("Composition/{id}")));
    documents.extend(g.resources.iter().map(|(t, id, _)| format!("{t}/{id}")));
    if let Some(r) = &report {
        documents.extend(r["structured"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned));
    }
    // Sign once, encrypt per recipient (CPU work, off the async threads).
    let x = st.exchange.clone();
    let partners = g.partners.clone();
    let async_url = x.as2_url();
    let date = crate::exchange::http_date(now);
    let (signed, per) = tokio::task::spawn_blocking(move || -> Result<_, ServiceError> {
        let signed = as2::sign_payload(&x.identity, "application/fhir+json", "document.json", &payload)
            .map_err(|e| ServiceError::internal(format!("signing failed: {e}")))?;
        let mut per = Vec::new();
        for ((p, v), basis) in partners.into_iter().zip(bases) {
            let cert = p.encryption_cert().map_err(|e| ServiceError::internal(format!("partner {}: {e}", p.id)))?;
            let mid = format!("{}@{}", accounts::new_id()?, as2_host(&x.as2_id));
            let mdn = MdnRequest {
                notify_to: x.as2_id.clone(),
                async_url: match p.profile.mdn {
                    MdnMode::Sync => None,
                    MdnMode::Async if !async_url.is_empty() => Some(async_url.clone()),
                    MdnMode::Async => {
                        return Err(unprocessable(vec![format!(
                            "partner {} expects asynchronous receipts, but this server has no AS2 listener (exchange.listen)",
                            p.id
                        )]))
                    }
                },
            };
            let out = as2::envelope(
                &x.as2_id,
                &p.as2_id,
                &mid,
                "mamori exchange document",
                &date,
                &signed,
                &cert,
                &p.profile.cipher,
                &p.profile.key_transport,
                &mdn,
            )
            .map_err(|e| ServiceError::internal(format!("encryption for partner {} failed: {e}", p.id)))?;
            per.push((p, v, basis, out, mid));
        }
        Ok((signed, per))
    })
    .await
    .map_err(|e| ServiceError::internal_from("signing", e))??;
    let size = per.first().map_or(0, |_| signed.entity.len());
    let prepared = Prepared {
        patient,
        purpose,
        bundle_id,
        decision: g.decision,
        composition,
        documents,
        signed,
        size,
        per_partner: per,
    };
    let mut sent = commit(st, actor, prepared, g.create_decision).await?;
    sent.document = report;
    Ok(sent)
}

async fn commit(st: &Services, actor: &Actor, p: Prepared, create: Decision) -> Result<Sent, ServiceError> {
    let a2 = actor.clone();
    let signer_fp = st.exchange.identity.cert.to_der().map(|d| fingerprint(&d)).unwrap_or_default();
    let send_id = accounts::new_id()?;
    let sid = send_id.clone();
    let out = st
        .store
        .writer()
        .run(
            move |w| {
                let now = w.now;
                let user = a2.name().to_owned();
                // The registrations may have changed since the checks.
                for (partner, version, ..) in &p.per_partner {
                    let row = xs::partner(w.conn, &partner.id)?;
                    if row.as_ref().map(|r| (r.version, r.status.as_str())) != Some((*version, "active")) {
                        return Err(ServiceError::Precondition(format!(
                            "partner {}'s registration changed during the send; nothing was sent, try again",
                            partner.id
                        )));
                    }
                }
                if let Some((rt, id, body)) = &p.composition {
                    let written = records::put(w, *rt, id, body.clone(), None, &user, now)?;
                    let rec = a2.fhir_record(
                        "create",
                        201,
                        Some(rt.as_str()),
                        Some(id),
                        Some(written.version),
                        vec![p.patient.clone()],
                        Some(&create),
                        now,
                    );
                    w.audit(&rec)?;
                }
                let mut created = Vec::new();
                for (partner, version, basis, outgoing, mid) in &p.per_partner {
                    let id = accounts::new_id()?;
                    let algorithms = json!({"cipher": partner.profile.cipher.name(), "key_transport": partner.profile.key_transport.name(), "digest": "sha-256",
                                            "mdn": partner.profile.mdn});
                    let m = MessageRow {
                        id: id.clone(),
                        direction: "out".into(),
                        kind: "document".into(),
                        message_id: mid.clone(),
                        partner: partner.id.clone(),
                        partner_version: Some(*version),
                        send_id: Some(sid.clone()),
                        patient: Some(p.patient.clone()),
                        purpose: Some(p.purpose.as_str().into()),
                        basis: Some(serde_json::to_value(basis).unwrap_or(Value::Null)),
                        state: "queued".into(),
                        content_type: Some("application/fhir+json".into()),
                        payload_sha256: Some(p.signed.payload_sha256.clone()),
                        size: Some(p.size as i64),
                        mic: Some(p.signed.mic.field()),
                        algorithms: Some(algorithms.clone()),
                        attempts: 0,
                        next_attempt: Some(now),
                        created_by: user.clone(),
                        created_at: now,
                        updated_at: now,
                        ..Default::default()
                    };
                    xs::insert_message(w.conn, &m)?;
                    xs::outbox_put(w.conn, &id, None, &outgoing.headers, &outgoing.body)?;
                    xs::add_hop(w.conn, &id, "accepted", "sender", &json!({"by": user, "purpose": p.purpose, "basis": basis,
                        "documents": p.documents, "bundle": p.bundle_id, "partner_version": version}), now)?;
                    xs::add_hop(w.conn, &id, "signed", "sender", &json!({"digest": "sha-256", "mic": p.signed.mic.field(), "signer": signer_fp}), now)?;
                    let rfp = partner.encryption_cert().ok().and_then(|c| c.to_der().ok()).map(|d| fingerprint(&d));
                    xs::add_hop(w.conn, &id, "encrypted", "sender", &json!({"cipher": partner.profile.cipher.name(),
                        "key_transport": partner.profile.key_transport.name(), "recipient_certificate": rfp, "bytes": outgoing.body.len()}), now)?;
                    // The access decision (basis, purpose of use), and the
                    // legal basis of this recipient.
                    let mut rec = a2.decided("exchange-send", 202, &p.decision, now);
                    rec.patients = vec![p.patient.clone()];
                    rec.entity = Some(mamori_audit::event::Entity { rtype: "Bundle".into(), id: Some(p.bundle_id.clone()), version: None });
                    rec.detail = Some(json!({"message": id, "message_id": mid, "partner": partner.id, "send": sid,
                        "documents": p.documents, "basis": basis, "legal_basis": basis.kind().as_str(),
                        "exchange_purpose": p.purpose.act_reason(), "mic": p.signed.mic.field()}));
                    w.audit(&rec)?;
                    created.push(json!({"id": id, "partner": partner.id, "message_id": mid, "state": "queued", "basis": basis}));
                }
                Ok(created)
            },
            |_: &ServiceError, _| Ok(()),
        )
        .await?;
    st.exchange.wake.notify_one();
    Ok(Sent { send: send_id, messages: out, document: None })
}

/// A ledger row as the operations API shows it.
pub fn message_json(m: &MessageRow) -> Value {
    json!({
        "id": m.id, "direction": m.direction, "kind": m.kind, "message_id": m.message_id, "partner": m.partner,
        "partner_version": m.partner_version, "send": m.send_id, "patient": m.patient, "purpose": m.purpose,
        "basis": m.basis, "state": m.state, "content_type": m.content_type, "payload_sha256": m.payload_sha256,
        "size": m.size, "mic": m.mic, "algorithms": m.algorithms, "attempts": m.attempts,
        "next_attempt": m.next_attempt.map(|t| t.to_rfc3339()), "deadline": m.deadline.map(|t| t.to_rfc3339()),
        "failure": m.failure.as_ref().map(|f| json!({"segment": m.failure_segment, "reason": f})),
        "mdn": m.mdn, "created_by": m.created_by, "created_at": m.created_at.to_rfc3339(), "updated_at": m.updated_at.to_rfc3339(),
    })
}

/// Which messages a query may list: filters, and the bounds of a period.
#[derive(Debug, Default, Deserialize)]
pub struct MessageFilter {
    /// in | out
    pub direction: Option<String>,
    /// A partner.
    pub partner: Option<String>,
    /// A patient.
    pub patient: Option<String>,
    /// A state.
    pub state: Option<String>,
    /// A send.
    pub send: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

/// Messages: one's own sends, or (admins, auditors) all; audited with the
/// patients they concern.
pub async fn list(svc: &Services, actor: &Actor, q: MessageFilter) -> Result<Vec<Value>, ServiceError> {
    const ACTION: &str = "exchange-message-list";
    let all = authz::decide(actor, &Operation::ExchangeMessageReadAll, Facts::default());
    let d = if all.permit {
        all
    } else {
        authz::decide(actor, &Operation::ExchangeMessageRead, Facts { own: true, ..Facts::default() })
    };
    if !d.permit {
        return Err(svc.refused(actor, ACTION, ServiceError::denied("sent messages", &d)).await);
    }
    let own = d.basis == mamori_core::policy::Basis::Own;
    let query = MessageQuery {
        direction: q.direction,
        partner: q.partner,
        patient: q.patient,
        state: q.state,
        send_id: q.send,
        created_by: own.then(|| actor.name().to_owned()),
        limit: q.limit.unwrap_or(100).min(1000),
        ..Default::default()
    };
    let rows = svc.store.read(move |c| xs::messages(c, &query)).await?;
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    set_patients(&mut rec, rows.iter().filter_map(|m| m.patient.clone()).collect());
    rec.detail = Some(json!({"count": rows.len()}));
    svc.audit(vec![rec]).await?;
    Ok(rows.iter().map(message_json).collect())
}

/// One message with its hops and the partner's terms at the time: one's
/// own, or (admins, auditors) any.
pub async fn show(svc: &Services, actor: &Actor, id: &str) -> Result<Value, ServiceError> {
    const ACTION: &str = "exchange-message-read";
    let id2 = id.to_owned();
    let found = svc
        .store
        .read(move |c| {
            let Some(m) = xs::message(c, &id2)? else { return Ok(None) };
            let hops = xs::hops(c, &id2)?;
            let doc = match m.partner_version {
                Some(v) if !m.partner.is_empty() => xs::partner_version(c, &m.partner, v)?,
                _ => None,
            };
            Ok(Some((m, hops, doc)))
        })
        .await?;
    let Some((m, hops, doc)) = found else {
        return Err(svc.refused(actor, ACTION, ServiceError::NotFound(format!("message {id}"))).await);
    };
    let facts = Facts { own: m.created_by == actor.name(), ..Facts::default() };
    let d = authz::decide(actor, &Operation::ExchangeMessageRead, facts);
    if !d.permit {
        // Someone else's message is not there for the caller.
        let mut rec =
            crate::commit::failure_record(actor, ACTION, &ServiceError::NotFound(format!("message {id}")), svc.now());
        set_decision(&mut rec, &d);
        svc.audit(vec![rec]).await?;
        return Err(ServiceError::NotFound(format!("message {id}")));
    }
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    set_patients(&mut rec, m.patient.clone().into_iter().collect());
    rec.detail = Some(json!({"message": id}));
    svc.audit(vec![rec]).await?;
    let mut v = message_json(&m);
    v["hops"] = json!(hops
        .iter()
        .map(|h| json!({"seq": h.seq, "at": h.at.to_rfc3339(), "hop": h.hop, "party": h.party, "detail": h.detail}))
        .collect::<Vec<_>>());
    if let Some(p) = doc.and_then(|d| serde_json::from_str::<Partner>(&d).ok()) {
        v["partner_terms"] = json!({"name": p.name, "relationship": p.relationship, "contract": p.contract, "demarcation": p.demarcation, "network": p.network});
    }
    Ok(v)
}

/// The ledger's period and format.
#[derive(Debug, Default, Deserialize)]
pub struct LedgerQuery {
    /// From (a date or date-time).
    pub from: Option<String>,
    /// To.
    pub to: Option<String>,
    /// A partner.
    pub partner: Option<String>,
    /// ndjson (default) or csv.
    pub format: Option<String>,
}

fn parse_bound(s: &Option<String>, high: bool, name: &str) -> Result<Option<Timestamp>, ServiceError> {
    match s {
        None => Ok(None),
        Some(v) => mamori_core::time::parse_date_time(v)
            .map(|r| Some(Timestamp(if high { r.high } else { r.low })))
            .ok_or_else(|| bad(name, "a date or date-time")),
    }
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The exchange ledger for contract reviews: every message in the period
/// with its hops and the partner's terms in force at the time (admins,
/// auditors). Returns the content type and the body.
pub async fn ledger(svc: &Services, actor: &Actor, q: LedgerQuery) -> Result<(&'static str, String), ServiceError> {
    const ACTION: &str = "exchange-ledger-export";
    let st = svc;
    let d = match authz::require(actor, &Operation::ExchangeMessageReadAll, Facts::default(), "the ledger export") {
        Ok(d) => d,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let (from, to) = match (parse_bound(&q.from, false, "from"), parse_bound(&q.to, true, "to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let csv_out = match q.format.as_deref() {
        None | Some("ndjson") => false,
        Some("csv") => true,
        Some(_) => return Err(svc.refused(actor, ACTION, bad("format", "ndjson or csv")).await),
    };
    let query = MessageQuery { partner: q.partner.clone(), from, to, limit: 100_000, ..Default::default() };
    let rows = st
        .store
        .read(move |c| {
            let ms = xs::messages(c, &query)?;
            let mut out = Vec::new();
            for m in ms {
                let hops = xs::hops(c, &m.id)?;
                let terms = match m.partner_version {
                    Some(v) if !m.partner.is_empty() => xs::partner_version(c, &m.partner, v)?,
                    _ => None,
                };
                out.push((m, hops, terms));
            }
            Ok(out)
        })
        .await?;
    let mut rec = actor.decided(ACTION, 200, &d, st.now());
    set_patients(&mut rec, rows.iter().filter_map(|(m, _, _)| m.patient.clone()).collect());
    rec.detail = Some(
        json!({"from": q.from, "to": q.to, "partner": q.partner, "messages": rows.len(), "format": if csv_out { "csv" } else { "ndjson" }}),
    );
    st.audit(vec![rec]).await?;
    let mut body = String::new();
    if csv_out {
        body.push_str("id,direction,message_id,partner,relationship,contract,patient,purpose,basis,state,mic,failure_segment,failure,mdn,created_at,hops\n");
    }
    for (m, hops, terms) in rows {
        let p = terms.and_then(|d| serde_json::from_str::<Partner>(&d).ok());
        if csv_out {
            let hops_s = hops
                .iter()
                .map(|h| format!("{} {} ({})", h.at.to_rfc3339(), h.hop, h.party))
                .collect::<Vec<_>>()
                .join("; ");
            let fields = [
                m.id.clone(),
                m.direction.clone(),
                m.message_id.clone(),
                m.partner.clone(),
                p.as_ref()
                    .map(|p| {
                        serde_json::to_value(p.relationship)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    })
                    .unwrap_or_default(),
                p.as_ref().map(|p| p.contract.reference.clone()).unwrap_or_default(),
                m.patient.clone().unwrap_or_default(),
                m.purpose.clone().unwrap_or_default(),
                m.basis.as_ref().map(Value::to_string).unwrap_or_default(),
                m.state.clone(),
                m.mic.clone().unwrap_or_default(),
                m.failure_segment.clone().unwrap_or_default(),
                m.failure.clone().unwrap_or_default(),
                m.mdn.clone().unwrap_or_default(),
                m.created_at.to_rfc3339(),
                hops_s,
            ];
            body.push_str(&fields.iter().map(|f| csv(f)).collect::<Vec<_>>().join(","));
            body.push('\n');
        } else {
            let mut v = message_json(&m);
            v["hops"] = json!(hops.iter().map(|h| json!({"seq": h.seq, "at": h.at.to_rfc3339(), "hop": h.hop, "party": h.party, "detail": h.detail})).collect::<Vec<_>>());
            if let Some(p) = p {
                v["partner_terms"] = json!({"name": p.name, "relationship": p.relationship, "contract": p.contract, "demarcation": p.demarcation, "network": p.network});
            }
            body.push_str(&v.to_string());
            body.push('\n');
        }
    }
    let ct = if csv_out { "text/csv; charset=utf-8" } else { "application/x-ndjson" };
    Ok((ct, body))
}
