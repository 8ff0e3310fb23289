//! The inbound AS2 endpoint (`POST /as2` on the AS2 listener, mutual TLS):
//! identifies the partner by its TLS client certificate and AS2-From,
//! decrypts, verifies the signature against that partner's registered
//! certificate, refuses replays, stores verified documents (matched to a
//! patient by identifier, or queued for a person) and answers with a signed
//! MDN. Everything refused is quarantined, audited and alerted. Also the
//! use cases for received documents (reading, filing into a patient's
//! record) and the quarantine.

use base64::Engine as _;
use mamori_core::fhir::search::parse_query;
use mamori_core::ids::{PatientId, ResourceType};
use mamori_core::policy::{told, Facts, Notice, Operation};
use mamori_core::time::Timestamp;
use mamori_exchange::as2::{self, Disposition, Failure, InboundPolicy, MdnReport};
use mamori_exchange::mime::Headers;
use mamori_exchange::partner::{Partner, Status};
use mamori_store::exchange::{self as xs, MessageRow};
use mamori_store::search::Restriction;
use mamori_store::sql::Conn;
use mamori_store::writer::WriteCtx;
use mamori_store::{accounts, records, StoreError};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509StoreContext, X509};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actor::{set_patients, Actor, RequestCtx};
use crate::authz;
use crate::error::ServiceError;
use crate::exchange::{fingerprint, partner_of};
use crate::notify::{self, Audience};
use crate::services::Services;

/// The TLS client certificate chain of the connection (DER).
#[derive(Debug, Clone, Default)]
pub struct PeerCerts(pub Vec<Vec<u8>>);

/// An AS2 request as it arrived on the listener.
pub struct As2Request {
    /// The client's address.
    pub addr: Option<String>,
    /// The TLS client certificate chain.
    pub peer: PeerCerts,
    /// The request's headers.
    pub headers: Headers,
    /// The body, or none when it was larger than `exchange.max_message_bytes`.
    pub body: Option<Vec<u8>>,
}

/// The answer to an AS2 request.
pub struct As2Answer {
    /// The HTTP status.
    pub status: u16,
    /// Headers (a synchronous MDN's).
    pub headers: Vec<(String, String)>,
    /// The body (an MDN, or a short text).
    pub body: Vec<u8>,
}

/// Whether the presented chain is issued under the partner's registered TLS CA.
fn peer_matches(p: &Partner, chain: &[Vec<u8>]) -> bool {
    let Some(ee) = chain.first().and_then(|d| X509::from_der(d).ok()) else { return false };
    let Ok(cas) = p.tls_cas() else { return false };
    let verify = || -> Result<bool, openssl::error::ErrorStack> {
        let mut b = X509StoreBuilder::new()?;
        for c in cas {
            b.add_cert(c)?;
        }
        b.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
        let store = b.build();
        let mut untrusted = Stack::new()?;
        for d in chain.iter().skip(1) {
            untrusted.push(X509::from_der(d)?)?;
        }
        let mut ctx = X509StoreContext::new()?;
        ctx.init(&store, &ee, &untrusted, |c| c.verify_cert())
    };
    verify().unwrap_or(false)
}

fn text(status: u16, msg: &str) -> As2Answer {
    As2Answer {
        status,
        headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
        body: format!("{msg}\n").into_bytes(),
    }
}

fn headers_json(h: &Headers) -> Value {
    json!(h.0.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>())
}

/// A refusal to record: why, and how to answer.
struct Refusal {
    modifier: &'static str,
    reason: String,
    /// Audit status.
    status: u16,
    segment: &'static str,
    warning: bool,
}

impl Refusal {
    fn new(modifier: &'static str, reason: impl Into<String>, status: u16, segment: &'static str) -> Self {
        Refusal { modifier, reason: reason.into(), status, segment, warning: false }
    }
    fn from_failure(f: &Failure) -> Self {
        let (status, segment) = match f {
            Failure::DecryptionFailed(_) => (422, "sender_or_path"),
            Failure::AuthenticationFailed(_) => (422, "sender_or_path"),
            Failure::InsufficientSecurity(_) => (422, "sender"),
            Failure::Unexpected(_) => (422, "sender"),
        };
        Refusal::new(f.modifier(), f.to_string(), status, segment)
    }
    fn disposition(&self) -> Disposition {
        if self.warning {
            Disposition::Warning(self.modifier.into())
        } else {
            Disposition::Error(self.modifier.into())
        }
    }
}

async fn alert_once(st: &Services, kind: String, msg: String, detail: Value) {
    let since = st.now().plus_secs(-600);
    let k2 = kind.clone();
    let recent = st.store.read(move |c| mamori_store::emergency::recent_alert(c, &k2, since)).await.unwrap_or(false);
    if !recent {
        crate::notify::raise_alert(st, &kind, "warning", &msg, detail).await;
    }
}

fn system_record(
    st: &Services,
    addr: Option<String>,
    action: &str,
    status: u16,
    now: Timestamp,
) -> mamori_audit::event::AuditRecord {
    let mut r =
        RequestCtx { addr, request_id: None, mode: st.mode.get() }.record("system", "system", action, status, now);
    r.agent.kind = "partner".into();
    r
}

/// `POST /as2`: receives an AS2 message or asynchronous receipt from a
/// partner, and answers it.
pub async fn receive(st: &Services, req: As2Request) -> As2Answer {
    let As2Request { addr, peer, headers, body } = req;
    let peer_fp = peer.0.first().map(|d| fingerprint(d)).unwrap_or_default();
    let max = st.cfg.exchange.max_message_bytes;
    let from = headers.get("as2-from").map(as2::unquote_name);
    let to = headers.get("as2-to").map(as2::unquote_name);
    let mid = headers.get("message-id").map(as2::bare_message_id);
    let Some(body) = body else {
        quarantine_only(
            st,
            addr,
            &peer_fp,
            from.as_deref(),
            mid.as_deref(),
            &format!("message larger than {max} bytes"),
            &headers,
            None,
            413,
        )
        .await;
        return text(413, &format!("AS2 messages are limited to {max} bytes"));
    };
    let (Some(from), Some(to), Some(mid)) = (from, to, mid) else {
        quarantine_only(
            st,
            addr,
            &peer_fp,
            None,
            None,
            "not an AS2 message (AS2-From, AS2-To and Message-ID are required)",
            &headers,
            Some(&body),
            400,
        )
        .await;
        return text(400, "not an AS2 message: AS2-From, AS2-To and Message-ID are required");
    };
    let f2 = from.clone();
    let row = match st.store.read(move |c| xs::partner_by_as2(c, &f2)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "AS2: cannot read the partner registry");
            return text(503, "temporarily unavailable; retry later");
        }
    };
    let partner = row.as_ref().and_then(|r| partner_of(r).ok().map(|p| (p, r.version)));
    if as2::is_mdn(&headers, &body) {
        return receive_mdn(st, addr, &peer_fp, &peer, partner, &headers, &body, &mid).await;
    }
    let x = st.exchange.clone();
    // Identification (before any cryptography).
    let early: Option<Refusal> = if to != x.as2_id {
        Some(Refusal::new(
            "unknown-trading-partner",
            format!("addressed to AS2 id '{to}', not to this institution ('{}')", x.as2_id),
            403,
            "sender",
        ))
    } else {
        match &partner {
            None => Some(Refusal::new(
                "unknown-trading-partner",
                format!("'{from}' is not a registered partner"),
                403,
                "sender",
            )),
            Some((p, _)) if p.status != Status::Active => {
                Some(Refusal::new("unknown-trading-partner", format!("partner {} is suspended", p.id), 403, "sender"))
            }
            Some((p, _)) if !peer_matches(p, &peer.0) => Some(Refusal::new(
                "authentication-failed",
                format!("the TLS client certificate ({peer_fp}) was not issued under partner {}'s registered CA", p.id),
                403,
                "partner_tls",
            )),
            // A signature under an expired (or not yet valid) certificate
            // proves nothing at this time: refused before any cryptography.
            Some((p, _)) => {
                let unusable = p.unusable_certificates(st.now());
                (!unusable.is_empty())
                    .then(|| Refusal::new("authentication-failed", unusable.join("; "), 403, "sender"))
            }
        }
    };
    let early = match early {
        Some(r) => Some(r),
        None => {
            let (pid, m2) = (partner.as_ref().map(|(p, _)| p.id.clone()).unwrap_or_default(), mid.clone());
            match st.store.read(move |c| xs::message_by_as2(c, "in", &pid, &m2)).await {
                Ok(Some(_)) => Some(Refusal {
                    warning: true,
                    ..Refusal::new(
                        "duplicate-document",
                        format!("Message-ID {mid} was already received"),
                        409,
                        "sender",
                    )
                }),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(error = %e, "AS2: cannot check for a replay");
                    return text(503, "temporarily unavailable; retry later");
                }
            }
        }
    };
    let mic_alg = as2::requested_mic_alg(headers.get("disposition-notification-options"));
    // Decrypt and verify off the async threads.
    let verdict: Result<(as2::Opened, Value), Refusal> = match early {
        Some(r) => Err(r),
        None => {
            let Some((p, _)) = partner.clone() else {
                return text(500, "partner vanished");
            };
            let (h2, b2, x2) = (headers.clone(), body.clone(), x.clone());
            let conf = st.conformance();
            tokio::task::spawn_blocking(move || {
                let signer =
                    p.signing_cert().map_err(|e| Refusal::new("unexpected-processing-error", e, 500, "receiver"))?;
                let policy = InboundPolicy {
                    signer: &signer,
                    ciphers: &p.profile.inbound_ciphers,
                    key_transports: &p.profile.inbound_key_transports,
                    digests: &p.profile.inbound_digests,
                };
                let opened =
                    as2::open(&h2, &b2, &x2.identity, &policy, mic_alg).map_err(|f| Refusal::from_failure(&f))?;
                if !p.document_types.iter().any(|t| t.eq_ignore_ascii_case(&opened.content_type)) {
                    return Err(Refusal::new(
                        "unexpected-processing-error",
                        format!("document type {} is not agreed with this partner", opened.content_type),
                        422,
                        "sender",
                    ));
                }
                let doc = check_document(&opened, &conf, &signer)
                    .map_err(|m| Refusal::new("unexpected-processing-error", m, 422, "sender"))?;
                Ok((opened, doc))
            })
            .await
            .unwrap_or_else(|e| Err(Refusal::new("unexpected-processing-error", e.to_string(), 500, "receiver")))
        }
    };
    let mic = verdict.as_ref().ok().map(|(o, _)| o.mic.clone());
    let disposition = match &verdict {
        Ok(_) => Disposition::Processed,
        Err(r) => r.disposition(),
    };
    let report = MdnReport {
        reporting_ua: format!("mamori/{} ({})", env!("CARGO_PKG_VERSION"), st.cfg.institution.name),
        original_recipient: x.as2_id.clone(),
        final_recipient: x.as2_id.clone(),
        original_message_id: mid.clone(),
        mic,
        disposition: disposition.clone(),
    };
    let text_body = match &verdict {
        Ok(_) => "受信し、署名を検証しました。/ The message was received and its signature verified.".to_owned(),
        Err(r) => format!("受信できませんでした。/ The message could not be processed: {}", r.reason),
    };
    let mdn_id = format!(
        "{}@{}",
        accounts::new_id().unwrap_or_default(),
        x.as2_id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-', "-")
    );
    let date = crate::exchange::http_date(st.now());
    let mdn = match as2::build_mdn(&x.identity, &x.as2_id, &from, &mdn_id, &date, &report, &text_body) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "AS2: could not sign a receipt");
            return text(500, "could not sign the receipt");
        }
    };
    // An asynchronous receipt goes only to the partner's registered origin.
    let async_url = headers
        .get("receipt-delivery-option")
        .map(str::trim)
        .map(str::to_owned)
        .filter(|u| partner.as_ref().is_some_and(|(p, _)| same_origin(u, &p.endpoint)));
    let async_queue = async_url.clone().filter(|_| partner.is_some());
    let record = Inbound {
        addr,
        peer_fp,
        from: from.clone(),
        message_id: mid,
        headers: headers.clone(),
        partner: partner.clone(),
        size: body.len(),
        mdn_id: mdn_id.clone(),
        mdn: mdn.clone(),
        async_url: async_queue.clone(),
    };
    let committed = match verdict {
        Ok((opened, doc)) => store_accepted(st, record, opened, doc).await,
        Err(r) => store_refused(st, record, r, body.to_vec()).await.map_err(ServiceError::from),
    };
    if let Err(e) = committed {
        // Nothing was stored: tell the sender to try again later.
        tracing::error!(error = %e, "could not record an inbound AS2 message");
        return text(503, "temporarily unable to store the message; retry later");
    }
    if async_queue.is_some() {
        st.exchange.wake.notify_one();
        return As2Answer { status: 200, headers: Vec::new(), body: Vec::new() };
    }
    As2Answer { status: 200, headers: mdn.headers.clone(), body: mdn.body }
}

fn same_origin(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.scheme() == "https" && a.origin() == b.origin(),
        _ => false,
    }
}

/// Checks a received FHIR document and summarizes what it says about its patient.
fn check_document(
    o: &as2::Opened,
    conf: &crate::conformance::Conformance,
    signer: &openssl::x509::X509,
) -> Result<Value, String> {
    if o.content_type != "application/fhir+json" {
        return Ok(json!({"content_type": o.content_type, "filename": o.filename}));
    }
    let v: Value = serde_json::from_slice(&o.payload).map_err(|e| format!("the document is not JSON: {e}"))?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || v.get("type").and_then(Value::as_str) != Some("document")
    {
        return Err("the payload is not a FHIR document Bundle".into());
    }
    let entries = v.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, e) in entries.iter().enumerate() {
        let r = e.get("resource").ok_or_else(|| format!("entry {i} has no resource"))?;
        mamori_core::fhir::validate::validate_resource(r).map_err(|issues| {
            format!("entry {i}: {}", issues.iter().map(|x| x.message.clone()).collect::<Vec<_>>().join("; "))
        })?;
    }
    // The FHIR Bundle signature, when there is one, must be the partner's
    // and must hold: a document changed on its way, or re-signed by
    // someone else, is refused like a broken envelope.
    let signature = match mamori_exchange::fhirsig::verify(&v, signer)? {
        mamori_exchange::fhirsig::Checked::Verified => "verified".to_owned(),
        mamori_exchange::fhirsig::Checked::Absent => "absent".to_owned(),
        mamori_exchange::fhirsig::Checked::Unsupported(f) => format!("not verified ({f})"),
    };
    // The profiles the document and its entries claim (JP-CLINS, JP Core),
    // where loaded: a document that does not conform is refused.
    let errors = conf.check_document(&v);
    if !errors.is_empty() {
        let shown: Vec<String> = errors.iter().take(5).map(|f| format!("{}: {}", f.path, f.message)).collect();
        return Err(format!(
            "the document does not conform to the profiles it claims ({} error(s)): {}",
            errors.len(),
            shown.join("; ")
        ));
    }
    let comp = entries
        .first()
        .and_then(|e| e.get("resource"))
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Composition"))
        .ok_or("the first entry of a document must be its Composition")?;
    let patient = entries
        .iter()
        .filter_map(|e| e.get("resource"))
        .find(|r| r.get("resourceType").and_then(Value::as_str) == Some("Patient"))
        .cloned()
        .unwrap_or(Value::Null);
    Ok(json!({
        "bundle": v.pointer("/identifier/value"),
        "signature": signature,
        "title": comp.get("title"),
        "type": comp.get("type"),
        "date": comp.get("date"),
        "patient": {
            "identifier": patient.get("identifier"),
            "name": patient.get("name"),
            "birthDate": patient.get("birthDate"),
            "gender": patient.get("gender"),
        },
    }))
}

/// The local patient the document's identifiers name, if exactly one.
fn match_local(c: &mut dyn Conn, summary: &Value) -> Result<Option<String>, StoreError> {
    let mut found = std::collections::BTreeSet::new();
    for id in summary.pointer("/patient/identifier").and_then(Value::as_array).cloned().unwrap_or_default() {
        let (Some(sys), Some(val)) =
            (id.get("system").and_then(Value::as_str), id.get("value").and_then(Value::as_str))
        else {
            continue;
        };
        let Ok((q, _)) = parse_query(ResourceType::PATIENT, &[("identifier".into(), format!("{sys}|{val}"))], false)
        else {
            continue;
        };
        let page = mamori_store::search::search(c, &q, &Restriction::None)?;
        for v in page.entries {
            found.insert(v.id);
        }
    }
    Ok(if found.len() == 1 { found.into_iter().next() } else { None })
}

/// Files a verified document into a patient's record as a DocumentReference.
#[allow(clippy::too_many_arguments)]
fn file_document(
    w: &mut WriteCtx<'_>,
    message: &str,
    message_id: &str,
    partner: &Partner,
    patient: &str,
    content_type: &str,
    payload: &[u8],
    summary: &Value,
    author: &str,
) -> Result<(String, u64), ServiceError> {
    match records::current(w.conn, "Patient", patient)? {
        Some(c) if !c.deleted => {}
        _ => return Err(ServiceError::NotFound(format!("Patient/{patient}"))),
    }
    let id = accounts::new_id()?;
    let mut dr = json!({
        "resourceType": "DocumentReference",
        "identifier": [{"system": "urn:mamori:as2-message-id", "value": message_id}, {"system": "urn:mamori:exchange-message", "value": message}],
        "status": "current",
        "subject": {"reference": format!("Patient/{patient}")},
        "date": w.now.to_rfc3339(),
        "author": [{"reference": format!("Organization/{}", partner.fhir_id()), "display": partner.name}],
        "description": summary.get("title").and_then(Value::as_str).unwrap_or("received document"),
        "content": [{"attachment": {
            "contentType": content_type,
            "data": base64::engine::general_purpose::STANDARD.encode(payload),
            "size": payload.len(),
            "title": summary.get("title").and_then(Value::as_str).unwrap_or("received document"),
        }}],
    });
    if let Some(t) = summary.get("type").filter(|t| t.is_object()) {
        dr["type"] = t.clone();
    }
    if let Some(b) = summary.get("bundle").and_then(Value::as_str) {
        dr["masterIdentifier"] = json!({"system": "urn:ietf:rfc:3986", "value": b});
    }
    // The document's own signature held on receipt: the partner is the
    // one who authenticated it.
    if summary.get("signature").and_then(Value::as_str) == Some("verified") {
        dr["authenticator"] = json!({"reference": format!("Organization/{}", partner.fhir_id()),
            "display": format!("{}（FHIR 文書の電子署名を受信時に検証 / document signature verified on receipt）", partner.name)});
    }
    crate::records::validate_body(ResourceType::DOCUMENT_REFERENCE, &dr)?;
    let written = records::put(w, ResourceType::DOCUMENT_REFERENCE, &id, dr, None, author, w.now)?;
    xs::mark_matched(w.conn, message, patient, &format!("DocumentReference/{id}"), author, w.now)?;
    Ok((id, written.version))
}

struct Inbound {
    addr: Option<String>,
    peer_fp: String,
    from: String,
    message_id: String,
    headers: Headers,
    partner: Option<(Partner, i64)>,
    size: usize,
    mdn_id: String,
    mdn: as2::Outgoing,
    async_url: Option<String>,
}

fn queue_async_mdn(w: &mut WriteCtx<'_>, rec: &Inbound) -> Result<(), StoreError> {
    let (Some(url), Some((p, v))) = (&rec.async_url, &rec.partner) else { return Ok(()) };
    let id = accounts::new_id()?;
    xs::insert_message(
        w.conn,
        &MessageRow {
            id: id.clone(),
            direction: "out".into(),
            kind: "mdn".into(),
            message_id: rec.mdn_id.clone(),
            partner: p.id.clone(),
            partner_version: Some(*v),
            state: "queued".into(),
            content_type: Some("multipart/signed".into()),
            next_attempt: Some(w.now),
            created_by: "system".into(),
            created_at: w.now,
            updated_at: w.now,
            ..Default::default()
        },
    )?;
    xs::outbox_put(w.conn, &id, Some(url), &rec.mdn.headers, &rec.mdn.body)?;
    xs::add_hop(
        w.conn,
        &id,
        "accepted",
        "receiver",
        &json!({"asynchronous_receipt_for": rec.message_id, "url": url}),
        w.now,
    )
}

async fn store_accepted(st: &Services, rec: Inbound, opened: as2::Opened, summary: Value) -> Result<(), ServiceError> {
    let st2 = st.clone();
    let announcement = st
        .store
        .writer()
        .run(
            move |w| {
                let (p, v) = rec.partner.clone().ok_or_else(|| ServiceError::internal("no partner"))?;
                let id = accounts::new_id()?;
                let signer_fp = p.signing_cert().ok().and_then(|c| c.to_der().ok()).map(|d| fingerprint(&d));
                let m = MessageRow {
                    id: id.clone(),
                    direction: "in".into(),
                    kind: "document".into(),
                    message_id: rec.message_id.clone(),
                    partner: p.id.clone(),
                    partner_version: Some(v),
                    state: "stored".into(),
                    content_type: Some(opened.content_type.clone()),
                    payload_sha256: Some(openssl::sha::sha256(&opened.payload).iter().map(|b| format!("{b:02x}")).collect()),
                    size: Some(rec.size as i64),
                    mic: Some(opened.mic.field()),
                    algorithms: Some(json!({"cipher": opened.envelope.cipher.name(), "key_transport": opened.envelope.key_transport.iter().map(|k| k.name()).collect::<Vec<_>>(),
                                            "digest": opened.signature.digests.iter().map(|d| d.micalg()).collect::<Vec<_>>()})),
                    mdn: Some(Disposition::Processed.short()),
                    created_by: format!("partner:{}", p.id),
                    created_at: w.now,
                    updated_at: w.now,
                    ..Default::default()
                };
                xs::insert_message(w.conn, &m)?;
                xs::add_hop(w.conn, &id, "received", "receiver", &json!({"from": p.id, "tls_client_certificate": rec.peer_fp, "address": rec.addr, "bytes": rec.size}), w.now)?;
                xs::add_hop(w.conn, &id, "decrypted", "receiver", &json!({"cipher": opened.envelope.cipher.name(), "key_transport": opened.envelope.key_transport.iter().map(|k| k.name()).collect::<Vec<_>>()}), w.now)?;
                xs::add_hop(w.conn, &id, "verified", "receiver", &json!({"signer_certificate": signer_fp, "digest": opened.signature.digests.iter().map(|d| d.micalg()).collect::<Vec<_>>(), "mic": opened.mic.field(), "bundle_signature": summary.get("signature")}), w.now)?;
                xs::insert_inbound(w.conn, &id, &opened.payload, &summary)?;
                let local = if opened.content_type == "application/fhir+json" { match_local(w.conn, &summary)? } else { None };
                let mut patients = Vec::new();
                let matched = match &local {
                    Some(pid) => {
                        let (doc, version) = file_document(w, &id, &rec.message_id, &p, pid, &opened.content_type, &opened.payload, &summary, "system")?;
                        xs::add_hop(w.conn, &id, "stored", "receiver", &json!({"patient": pid, "document": format!("DocumentReference/{doc}"), "matched_by": "identifier"}), w.now)?;
                        let mut c = system_record(&st2, rec.addr.clone(), "create", 201, w.now);
                        c.entity = Some(mamori_audit::event::Entity { rtype: "DocumentReference".into(), id: Some(doc), version: Some(version) });
                        c.patients = vec![pid.clone()];
                        w.audit(&c)?;
                        patients.push(pid.clone());
                        true
                    }
                    None => {
                        xs::add_hop(w.conn, &id, "stored", "receiver", &json!({"queued_for_matching": true}), w.now)?;
                        false
                    }
                };
                xs::add_hop(w.conn, &id, "mdn_issued", "receiver", &json!({"disposition": "processed", "mdn_message_id": rec.mdn_id, "asynchronous": rec.async_url}), w.now)?;
                queue_async_mdn(w, &rec)?;
                let mut a = system_record(&st2, rec.addr.clone(), "exchange-receive", 200, w.now);
                a.agent.user = format!("partner:{}", p.id);
                a.patients = patients;
                a.detail = Some(json!({"message": id, "message_id": rec.message_id, "partner": p.id, "mic": opened.mic.field(), "matched": matched}));
                w.audit(&a)?;
                if matched {
                    Ok(None)
                } else {
                    let msg = format!(
                        "連携先 {} から文書を受信しました。患者の照合が必要です / A document from partner {} awaits matching to a patient",
                        p.name, p.name
                    );
                    Ok(notify::announce(w, &st2, "exchange-inbound-unmatched", false, "info", &msg, json!({"message": id}),
                        Audience::Roles(told(Notice::InboundUnmatched))).map(Some)?)
                }
            },
            |_: &ServiceError, _| Ok(()),
        )
        .await?;
    if let Some(a) = announcement {
        notify::publish(st, [a]);
    }
    Ok(())
}

async fn store_refused(st: &Services, rec: Inbound, r: Refusal, body: Vec<u8>) -> Result<(), StoreError> {
    let st2 = st.clone();
    let reason = r.reason.clone();
    let modifier = r.modifier;
    let partner_id = rec.partner.as_ref().map(|(p, _)| p.id.clone());
    let from = rec.from.clone();
    st.store
        .writer()
        .write(
            move |w| {
                let id = accounts::new_id()?;
                let m = MessageRow {
                    id: id.clone(),
                    direction: "in".into(),
                    kind: "document".into(),
                    message_id: rec.message_id.clone(),
                    partner: rec.partner.as_ref().map(|(p, _)| p.id.clone()).unwrap_or_default(),
                    partner_version: rec.partner.as_ref().map(|(_, v)| *v),
                    state: "rejected".into(),
                    size: Some(rec.size as i64),
                    failure_segment: Some(r.segment.into()),
                    failure: Some(r.reason.clone()),
                    mdn: Some(r.disposition().short()),
                    created_by: format!("as2:{}", rec.from),
                    created_at: w.now,
                    updated_at: w.now,
                    ..Default::default()
                };
                xs::insert_message(w.conn, &m)?;
                xs::add_hop(w.conn, &id, "received", "receiver", &json!({"claimed_from": rec.from, "tls_client_certificate": rec.peer_fp, "address": rec.addr, "bytes": rec.size}), w.now)?;
                let q = xs::quarantine(w.conn, Some(&id), Some(&rec.peer_fp), Some(&rec.from), Some(&rec.message_id), &r.reason,
                    Some(&r.disposition().short()), &headers_json(&rec.headers), Some(&body), w.now)?;
                xs::add_hop(w.conn, &id, "rejected", r.segment, &json!({"reason": r.reason, "disposition": r.disposition().short(), "quarantine": q}), w.now)?;
                xs::add_hop(w.conn, &id, "mdn_issued", "receiver", &json!({"disposition": r.disposition().short(), "mdn_message_id": rec.mdn_id}), w.now)?;
                queue_async_mdn(w, &rec)?;
                let mut a = system_record(&st2, rec.addr.clone(), "exchange-receive", r.status, w.now);
                a.agent.user = format!("as2:{}", rec.from);
                a.detail = Some(json!({"message": id, "message_id": rec.message_id, "claimed_from": rec.from, "refused": r.modifier, "reason": r.reason, "quarantine": q}));
                w.audit(&a)?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    alert_once(
        st,
        format!("exchange-refused:{}:{modifier}", partner_id.as_deref().unwrap_or(&from)),
        format!(
            "受信を拒否しました（{modifier}）/ Refused an inbound AS2 message from '{from}' ({modifier}): {reason}"
        ),
        json!({"from": from, "partner": partner_id, "refused": modifier}),
    )
    .await;
    Ok(())
}

/// Records what arrived without a usable AS2 identity (oversize, not AS2).
#[allow(clippy::too_many_arguments)]
async fn quarantine_only(
    st: &Services,
    addr: Option<String>,
    peer_fp: &str,
    from: Option<&str>,
    mid: Option<&str>,
    reason: &str,
    headers: &Headers,
    body: Option<&[u8]>,
    status: u16,
) {
    let (st2, pf, fr, mi, re, hj, bo) = (
        st.clone(),
        peer_fp.to_owned(),
        from.map(str::to_owned),
        mid.map(str::to_owned),
        reason.to_owned(),
        headers_json(headers),
        body.map(<[u8]>::to_vec),
    );
    let addr2 = addr.clone();
    let r = st
        .store
        .writer()
        .write(
            move |w| {
                let q = xs::quarantine(
                    w.conn,
                    None,
                    Some(&pf),
                    fr.as_deref(),
                    mi.as_deref(),
                    &re,
                    None,
                    &hj,
                    bo.as_deref(),
                    w.now,
                )?;
                let mut a = system_record(&st2, addr2, "exchange-receive", status, w.now);
                a.agent.user = format!("as2:{}", fr.as_deref().unwrap_or("unknown"));
                a.detail = Some(json!({"refused": re, "quarantine": q, "tls_client_certificate": pf}));
                w.audit(&a).map(|_| ())
            },
            |_, _| Ok(()),
        )
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "could not quarantine an inbound message");
    }
    alert_once(
        st,
        format!("exchange-refused:{}", from.unwrap_or("unknown")),
        format!(
            "受信を拒否しました / Refused an inbound AS2 request from {}: {reason}",
            addr.as_deref().unwrap_or("?")
        ),
        json!({"from": from, "reason": reason}),
    )
    .await;
}

/// An asynchronous receipt for a message mamori sent.
#[allow(clippy::too_many_arguments)]
async fn receive_mdn(
    st: &Services,
    addr: Option<String>,
    peer_fp: &str,
    peer: &PeerCerts,
    partner: Option<(Partner, i64)>,
    headers: &Headers,
    body: &[u8],
    mid: &str,
) -> As2Answer {
    let Some((p, _)) = partner.filter(|(p, _)| peer_matches(p, &peer.0)) else {
        quarantine_only(
            st,
            addr,
            peer_fp,
            headers.get("as2-from"),
            Some(mid),
            "receipt from an unknown partner or TLS identity",
            headers,
            Some(body),
            403,
        )
        .await;
        return text(403, "unknown trading partner");
    };
    let signer = match p.signing_cert() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, partner = %p.id, "AS2: the partner's signing certificate");
            return text(500, "receipt not processed");
        }
    };
    let mdn = match as2::parse_mdn(headers, body, Some(&signer), &p.profile.inbound_digests) {
        Ok(m) => m,
        Err(e) => {
            quarantine_only(
                st,
                addr,
                peer_fp,
                Some(&p.as2_id),
                Some(mid),
                &format!("receipt refused: {e}"),
                headers,
                Some(body),
                422,
            )
            .await;
            return text(422, &format!("receipt refused: {e}"));
        }
    };
    let (pid, omid) = (p.id.clone(), mdn.report.original_message_id.clone());
    let found = st.store.read(move |c| xs::message_by_as2(c, "out", &pid, &omid)).await;
    match found {
        Ok(Some(m)) if m.state == "awaiting_mdn" => {
            crate::exchange::outbox::apply_mdn(st, &m, &p, mdn).await;
            text(200, "receipt accepted")
        }
        Ok(Some(m)) => text(409, &format!("message {} is {}, not awaiting a receipt", m.message_id, m.state)),
        Ok(None) => {
            quarantine_only(
                st,
                addr,
                peer_fp,
                Some(&p.as2_id),
                Some(mid),
                "receipt for an unknown message",
                headers,
                Some(body),
                404,
            )
            .await;
            text(404, "no such original message")
        }
        Err(e) => {
            tracing::error!(error = %e, "AS2: cannot look up a receipt's message");
            text(503, "temporarily unavailable; retry later")
        }
    }
}

// ---- received documents ---------------------------------------------------------------

/// Received documents (partner-supplied summaries with demographics):
/// matched or unmatched ones; audited with the local patients they name.
pub async fn list(svc: &Services, actor: &Actor, state: Option<String>) -> Result<Value, ServiceError> {
    const ACTION: &str = "exchange-inbound-list";
    let a = actor.clone();
    let facts = svc.store.read(move |c| authz::plan_facts(c, &a)).await?;
    let d = match authz::require(actor, &Operation::InboundRead, facts, "received documents") {
        Ok(d) => d,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    if let Some(s) = &state {
        if !matches!(s.as_str(), "matched" | "unmatched") {
            return Err(svc.refused(actor, ACTION, ServiceError::invalid("state", "matched or unmatched")).await);
        }
    }
    let rows = svc.store.read(move |c| xs::inbound_list(c, state.as_deref(), 500)).await?;
    let rows = json!(rows);
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    let patients =
        rows.as_array().into_iter().flatten().filter_map(|r| r["patient"].as_str().map(str::to_owned)).collect();
    set_patients(&mut rec, patients);
    rec.detail = Some(json!({"count": rows.as_array().map_or(0, Vec::len)}));
    svc.audit(vec![rec]).await?;
    Ok(rows)
}

/// One received document's summary; audited (with its local patient).
pub async fn show(svc: &Services, actor: &Actor, message: &str) -> Result<Value, ServiceError> {
    const ACTION: &str = "exchange-inbound-read";
    let a = actor.clone();
    let facts = svc.store.read(move |c| authz::plan_facts(c, &a)).await?;
    let d = match authz::require(actor, &Operation::InboundRead, facts, "received documents") {
        Ok(d) => d,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let m2 = message.to_owned();
    let row = match svc.store.read(move |c| xs::inbound(c, &m2, false)).await? {
        Some(r) => json!(r),
        None => return Err(svc.refused(actor, ACTION, ServiceError::NotFound(format!("inbound {message}"))).await),
    };
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    set_patients(&mut rec, row["patient"].as_str().map(str::to_owned).into_iter().collect());
    rec.detail = Some(json!({"message": message}));
    svc.audit(vec![rec]).await?;
    Ok(row)
}

/// Which patient a received document is filed for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInbound {
    /// The patient (`Patient/<id>` or the id).
    pub patient: String,
}

/// Files a received document into a patient's record: the records keeper
/// the plan names, or a clinician who may write that patient's records.
pub async fn file(svc: &Services, actor: &Actor, message: &str, req: FileInbound) -> Result<String, ServiceError> {
    const ACTION: &str = "exchange-inbound-match";
    let patient = match PatientId::parse(req.patient.strip_prefix("Patient/").unwrap_or(&req.patient)) {
        Ok(p) => p.as_str().to_owned(),
        Err(e) => return Err(svc.refused(actor, ACTION, ServiceError::invalid("patient", e.to_string())).await),
    };
    let (a2, m2, p2) = (actor.clone(), message.to_owned(), patient.clone());
    svc.change(actor, ACTION, move |w| {
        let facts = Facts {
            records_manager: authz::plan_facts(w.conn, &a2)?.records_manager,
            ..authz::patient_facts(w.conn, &a2, &p2, w.now)?
        };
        let d = authz::require(&a2, &Operation::InboundFile, facts, &format!("filing a document for Patient/{p2}"))?;
        let ib = xs::inbound(w.conn, &m2, true)?.ok_or_else(|| ServiceError::NotFound(format!("inbound {m2}")))?;
        if ib.state != "unmatched" {
            return Err(ServiceError::Precondition(format!(
                "inbound {m2} is already filed in {}",
                ib.document.unwrap_or_default()
            )));
        }
        let m = xs::message(w.conn, &m2)?.ok_or_else(|| ServiceError::NotFound(format!("message {m2}")))?;
        let row =
            xs::partner(w.conn, &m.partner)?.ok_or_else(|| ServiceError::NotFound(format!("partner {}", m.partner)))?;
        let p = partner_of(&row)?;
        let user = a2.name().to_owned();
        let (doc, version) = file_document(
            w,
            &m2,
            &m.message_id,
            &p,
            &p2,
            m.content_type.as_deref().unwrap_or("application/octet-stream"),
            &ib.payload,
            &ib.summary,
            &user,
        )?;
        xs::add_hop(
            w.conn,
            &m2,
            "stored",
            "receiver",
            &json!({"patient": p2, "document": format!("DocumentReference/{doc}"), "matched_by": user}),
            w.now,
        )?;
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        rec.patients = vec![p2.clone()];
        rec.entity = Some(mamori_audit::event::Entity {
            rtype: "DocumentReference".into(),
            id: Some(doc.clone()),
            version: Some(version),
        });
        rec.detail = Some(json!({"message": m2, "partner": m.partner}));
        w.audit(&rec)?;
        Ok(doc)
    })
    .await
}

/// The quarantine: refused inbound messages (admins, auditors).
pub async fn quarantine_list(svc: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    const ACTION: &str = "exchange-quarantine-list";
    let d = match authz::require(actor, &Operation::QuarantineRead, Facts::default(), "the quarantine") {
        Ok(d) => d,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    svc.audit(vec![actor.decided(ACTION, 200, &d, svc.now())]).await?;
    Ok(json!(svc.store.read(|c| xs::quarantined(c, 500)).await?))
}

/// Limits the audit events of refused TLS handshakes on the AS2 listener
/// (a scan must not flood the audit log): at most 60 a minute, the rest
/// counted in the next event.
#[derive(Default)]
pub struct RefusalLimiter(std::sync::Mutex<(i64, u32, u64)>);

/// Audits a refused TLS handshake (no or unknown client certificate).
pub async fn audit_handshake_refusal(
    st: &Services,
    lim: &RefusalLimiter,
    peer: std::net::SocketAddr,
    err: &str,
    action: &str,
) {
    let now = st.now();
    let minute = now.secs() / 60;
    let suppressed = {
        let Ok(mut g) = lim.0.lock() else { return };
        if g.0 != minute {
            *g = (minute, 0, g.2);
        }
        g.1 += 1;
        if g.1 > 60 {
            g.2 += 1;
            return;
        }
        std::mem::take(&mut g.2)
    };
    let mut rec = system_record(st, Some(peer.ip().to_string()), action, 401, now);
    rec.agent.user = "anonymous".into();
    rec.agent.kind = "anonymous".into();
    rec.detail = Some(json!({"error": err, "suppressed_since_last": suppressed}));
    if let Err(e) = st.store.writer().audit(vec![rec]).await {
        tracing::error!(error = %e, "could not audit a refused AS2 handshake");
    }
}
