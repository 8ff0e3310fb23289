//! The compliance report (issue 18): every requirement of the catalog with
//! its state measured from this system, signed by the institution and
//! bound to an audit checkpoint, for inspections.
//!
//! Producing a report: the caller is decided (`Operation::ComplianceReport`:
//! auditors and administrators), the facts are read in one snapshot, the
//! audit log is verified (deep on request), a checkpoint is signed, the
//! report is built and signed (CMS, detached, SHA-256, the institution's
//! S/MIME key over the canonical JSON), then stored with the audit event
//! `compliance-report` naming its digest, in one write job. Verifying one
//! ([`verify`]) needs only the file and the institution's certificate;
//! [`check_against_log`] also finds its audit event and checkpoint.

mod assess;
mod facts;
pub(crate) mod pdf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mamori_core::policy::{Facts as PolicyFacts, Operation};
use mamori_core::time::Timestamp;
use mamori_exchange::cms;
use mamori_store::audit_log::{self, EventQuery};
use mamori_store::compliance as store;
use mamori_store::sql::Conn;
use openssl::x509::X509;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use assess::{Evidence, Item, Status};
pub use mamori_core::bcp::Text;
pub use mamori_store::compliance::ReportRow;

use crate::actor::Actor;
use crate::error::ServiceError;
use crate::services::Services;

/// The format name a report carries.
pub const FORMAT: &str = "mamori-compliance-report/1";

/// The longest period a report covers (days).
pub const MAX_PERIOD_DAYS: i64 = 3660;

/// The catalog and the checklist mapping (data, `catalog.toml`).
const CATALOG: &str = include_str!("catalog.toml");

#[derive(Debug, Deserialize)]
struct Catalog {
    checklist: ChecklistSource,
    requirement: Vec<CatalogEntry>,
    item: Vec<CatalogItem>,
}

#[derive(Debug, Deserialize)]
struct ChecklistSource {
    title_ja: String,
    title_en: String,
    edition: String,
    source: String,
    note_ja: String,
    note_en: String,
}

#[derive(Debug, Deserialize)]
struct CatalogEntry {
    id: String,
    ja: String,
    en: String,
}

#[derive(Debug, Deserialize)]
struct CatalogItem {
    number: String,
    ja: String,
    en: String,
    requirements: Vec<String>,
    confidence: String,
}

fn catalog() -> Result<Catalog, ServiceError> {
    toml::from_str(CATALOG).map_err(|e| ServiceError::internal_from("the compliance catalog", e))
}

/// What a report asks for.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReportQuery {
    /// Start of the period (a local date or an instant); default 30 days before `to`.
    pub from: Option<String>,
    /// End of the period (a local date: its end; or an instant); default now.
    pub to: Option<String>,
    /// Also check every stored record version against the audit log.
    #[serde(default)]
    pub deep: bool,
}

/// The institution a report is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Institution {
    /// Its name.
    pub name: String,
    /// Its 10-digit medical institution code, if configured.
    pub code: String,
}

/// The period a report covers, `[from, to)`, RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// From (inclusive).
    pub from: String,
    /// To (exclusive).
    pub to: String,
}

/// How many requirements are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Met.
    pub met: usize,
    /// Attention.
    pub attention: usize,
    /// Not met.
    pub not_met: usize,
}

/// A requirement with its catalog title.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// Its title (a short paraphrase).
    pub title: Text,
    /// As measured.
    #[serde(flatten)]
    pub item: Item,
}

/// A checklist item answered by the requirements' evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecklistRow {
    /// The checklist's own number (2-⑥).
    pub number: String,
    /// Its question, paraphrased.
    pub title: Text,
    /// The requirements whose evidence answers it.
    pub requirements: Vec<String>,
    /// The worst of their states.
    pub status: Status,
    /// "confirmed" or "inferred" (the number).
    pub confidence: String,
}

/// The checklist section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checklist {
    /// The checklist's name.
    pub title: Text,
    /// Which edition the numbers follow.
    pub edition: String,
    /// Where it is published.
    pub source: String,
    /// A caveat on the numbering.
    pub note: Text,
    /// The items.
    pub items: Vec<ChecklistRow>,
}

/// The audit checkpoint a report is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundCheckpoint {
    /// The tree size it commits to.
    pub size: u64,
    /// The signed note (C2SP) as the log signed it.
    pub note: String,
}

/// A compliance report (what is signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// [`FORMAT`].
    pub format: String,
    /// Whose.
    pub institution: Institution,
    /// When it was made (RFC 3339 UTC).
    pub generated_at: String,
    /// Who made it.
    pub generated_by: String,
    /// The period.
    pub period: Period,
    /// The institution's time zone, minutes east of UTC (for display).
    pub utc_offset_minutes: i64,
    /// The mode at generation (`normal`, `emergency; ...`).
    pub mode: String,
    /// Whether record versions were checked against the audit log.
    pub deep: bool,
    /// Counts per state.
    pub summary: Summary,
    /// Every requirement of the catalog.
    pub requirements: Vec<Requirement>,
    /// The MHLW checklist items the evidence answers.
    pub checklist: Checklist,
    /// The audit checkpoint signed at generation.
    pub checkpoint: BoundCheckpoint,
}

/// The signature over a report's canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Hex SHA-256 of the canonical report.
    pub sha256: String,
    /// CMS SignedData (detached, DER, base64) over the canonical report.
    pub cms: String,
    /// The signer's certificate (PEM), for reference: verify against a
    /// certificate obtained independently.
    pub certificate: String,
}

/// A signed report: the file handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The report.
    pub report: Report,
    /// Its signature.
    pub signature: Signature,
}

/// A produced or stored report.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Its number in this system.
    pub id: i64,
    /// The signed file's text (pretty JSON).
    pub body: String,
    /// It, parsed.
    pub signed: Signed,
}

/// The canonical form of a JSON value (what is hashed and signed): the
/// audit log's canonical JSON, object keys sorted, no whitespace.
pub fn canonical(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    mamori_audit::event::canonical_json(v, &mut out);
    out
}

/// Produces, signs, stores and audits a report.
pub async fn generate(svc: &Services, actor: &Actor, q: ReportQuery) -> Result<Generated, ServiceError> {
    const ACTION: &str = "compliance-report";
    let d = svc.gate(actor, ACTION, Operation::ComplianceReport, PolicyFacts::default(), "compliance reports").await?;
    let now = svc.now();
    let offset = svc.cfg.institution.utc_offset_minutes;
    let parse = |s: &str, end: bool| crate::audit::parse_when(s, offset, end).map(Timestamp);
    let to = match q.to.as_deref().map(|s| parse(s, true)).transpose() {
        Ok(t) => t,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let from = match q.from.as_deref().map(|s| parse(s, false)).transpose() {
        Ok(f) => f,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let to = match to {
        Some(t) => t,
        // Up to and including now.
        None => Timestamp(now.micros() + 1),
    };
    let from = from.unwrap_or(Timestamp(to.micros() - 30 * 86_400_000_000));
    if from >= to {
        return Err(svc
            .refused(actor, ACTION, ServiceError::invalid("from", "the period must start before it ends"))
            .await);
    }
    if to.micros() - from.micros() > MAX_PERIOD_DAYS * 86_400_000_000 {
        return Err(svc
            .refused(
                actor,
                ACTION,
                ServiceError::invalid("from", format!("a period is at most {MAX_PERIOD_DAYS} days")),
            )
            .await);
    }
    let cat = catalog()?;
    svc.store.writer().flush_index().await?;
    let facts = svc.store.read(move |c| facts::read(c, now, from, to)).await?;

    // The audit log, verified now.
    let dd = crate::init::DataDir(svc.data_dir.clone());
    let (_, vkey) = crate::init::load_signer(&dd).map_err(|e| ServiceError::internal_from("the audit key", e))?;
    let origin = svc.cfg.audit.origin.clone();
    let deep = q.deep;
    let verified = svc.store.read(move |c| audit_log::verify(c, None, &vkey, &origin, deep)).await?;
    let provider = crate::tls::provider();
    let cert = &svc.exchange.identity.cert;
    let not_after = cert.not_after().to_string();
    let valid = openssl::asn1::Asn1Time::from_unix(now.secs()).map(|n| cert.not_after() > n).unwrap_or(false);
    let audit = assess::AuditFacts {
        deep,
        events: verified.events,
        checkpoints: verified.checkpoints,
        records: verified.records,
        // The report holds no patient data: a record finding names the
        // record's type, not its id (auditors find it with audit verify).
        findings: verified
            .findings
            .iter()
            .map(|f| match f {
                mamori_audit::verify::Finding::RecordMismatch { reference, why } => {
                    format!("record {}/…: {why}", reference.split('/').next().unwrap_or("?"))
                }
                other => other.to_string(),
            })
            .collect(),
        tls_suites: provider.cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect(),
        tls_groups: provider.kx_groups.iter().map(|g| format!("{:?}", g.name())).collect(),
        our_certificate: subject(cert),
        our_certificate_until: not_after,
        our_certificate_valid: valid,
    };
    let items = assess::assess(&facts, &svc.cfg, &audit);

    // A checkpoint now: the report is bound to the log as it stands.
    let note = svc.store.writer().write(|w| w.checkpoint("compliance-report"), |_, _| Ok(())).await?;
    let size: u64 = note
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| ServiceError::internal("a checkpoint without a size"))?;

    let by = match &actor.declared {
        Some(person) => format!("{} ({person})", actor.name()),
        None => actor.name().to_owned(),
    };
    let report = build(&cat, items, &svc.cfg, &by, now, (from, to), &svc.mode.get().header_value(), deep, size, note)?;
    let signed = sign(svc, report)?;
    let body = serde_json::to_string_pretty(&signed).map_err(|e| ServiceError::internal_from("the report", e))?;
    let digest = signed.signature.sha256.clone();
    let summary = signed.report.summary.clone();
    let mut rec = actor.decided(ACTION, 201, &d, now);
    rec.detail = Some(json!({
        "sha256": digest,
        "period": {"from": signed.report.period.from, "to": signed.report.period.to},
        "deep": deep,
        "summary": summary,
        "checkpoint": size,
    }));
    let by = actor.name().to_owned();
    let stored = body.clone();
    let id = svc
        .change(actor, ACTION, move |w| {
            let id = store::insert(w.conn, now, &by, (from, to), &digest, &stored)?;
            let mut rec = rec;
            if let Some(Value::Object(m)) = rec.detail.as_mut() {
                m.insert("id".into(), json!(id));
            }
            rec.query = Some(format!("report {id}"));
            w.audit(&rec)?;
            Ok(id)
        })
        .await?;
    Ok(Generated { id, body, signed })
}

fn subject(cert: &X509) -> String {
    cert.subject_name()
        .entries()
        .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

#[allow(clippy::too_many_arguments)]
fn build(
    cat: &Catalog,
    items: Vec<Item>,
    cfg: &crate::config::Config,
    by: &str,
    now: Timestamp,
    (from, to): (Timestamp, Timestamp),
    mode: &str,
    deep: bool,
    size: u64,
    note: String,
) -> Result<Report, ServiceError> {
    let mut requirements = Vec::new();
    for e in &cat.requirement {
        let item = items
            .iter()
            .find(|i| i.id == e.id)
            .cloned()
            .ok_or_else(|| ServiceError::internal(format!("requirement {} is not assessed", e.id)))?;
        requirements.push(Requirement { title: Text { ja: e.ja.clone(), en: e.en.clone() }, item });
    }
    if let Some(extra) = items.iter().find(|i| !cat.requirement.iter().any(|e| e.id == i.id)) {
        return Err(ServiceError::internal(format!("requirement {} is not in the catalog", extra.id)));
    }
    let mut summary = Summary::default();
    for r in &requirements {
        match r.item.status {
            Status::Met => summary.met += 1,
            Status::Attention => summary.attention += 1,
            Status::NotMet => summary.not_met += 1,
        }
    }
    let mut rows = Vec::new();
    for it in &cat.item {
        let mut status = Status::Met;
        for id in &it.requirements {
            let r = requirements
                .iter()
                .find(|r| &r.item.id == id)
                .ok_or_else(|| ServiceError::internal(format!("checklist {} names unknown {id}", it.number)))?;
            status = status.max(r.item.status);
        }
        rows.push(ChecklistRow {
            number: it.number.clone(),
            title: Text { ja: it.ja.clone(), en: it.en.clone() },
            requirements: it.requirements.clone(),
            status,
            confidence: it.confidence.clone(),
        });
    }
    let c = &cat.checklist;
    Ok(Report {
        format: FORMAT.into(),
        institution: Institution { name: cfg.institution.name.clone(), code: cfg.institution.id.clone() },
        generated_at: now.to_rfc3339(),
        generated_by: by.to_owned(),
        period: Period { from: from.to_rfc3339(), to: to.to_rfc3339() },
        utc_offset_minutes: cfg.institution.utc_offset_minutes,
        mode: mode.to_owned(),
        deep,
        summary,
        requirements,
        checklist: Checklist {
            title: Text { ja: c.title_ja.clone(), en: c.title_en.clone() },
            edition: c.edition.clone(),
            source: c.source.clone(),
            note: Text { ja: c.note_ja.clone(), en: c.note_en.clone() },
            items: rows,
        },
        checkpoint: BoundCheckpoint { size, note },
    })
}

fn sign(svc: &Services, report: Report) -> Result<Signed, ServiceError> {
    let v = serde_json::to_value(&report).map_err(|e| ServiceError::internal_from("the report", e))?;
    let bytes = canonical(&v);
    let id = &svc.exchange.identity;
    let cms = cms::sign_detached(id, &bytes).map_err(|e| ServiceError::internal_from("signing the report", e))?;
    let pem = id.cert.to_pem().map_err(|e| ServiceError::internal_from("the institution certificate", e))?;
    Ok(Signed {
        report,
        signature: Signature {
            sha256: mamori_audit::event::sha256_hex(&bytes),
            cms: B64.encode(cms),
            certificate: String::from_utf8_lossy(&pem).into_owned(),
        },
    })
}

/// A stored report (its production was audited; reading it is too).
pub async fn get(svc: &Services, actor: &Actor, id: i64) -> Result<Generated, ServiceError> {
    const ACTION: &str = "compliance-report-read";
    let d = svc.gate(actor, ACTION, Operation::ComplianceReport, PolicyFacts::default(), "compliance reports").await?;
    let Some((_, body)) = svc.store.read(move |c| store::get(c, id)).await? else {
        return Err(svc.refused(actor, ACTION, ServiceError::NotFound(format!("no compliance report {id}"))).await);
    };
    let signed: Signed = serde_json::from_str(&body).map_err(|e| ServiceError::internal_from("a stored report", e))?;
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    rec.query = Some(format!("report {id}"));
    rec.detail = Some(json!({"id": id, "sha256": signed.signature.sha256}));
    svc.audit(vec![rec]).await?;
    Ok(Generated { id, body, signed })
}

/// The stored reports, newest first.
pub async fn list(svc: &Services, actor: &Actor) -> Result<Vec<ReportRow>, ServiceError> {
    svc.read_gate(
        actor,
        "compliance-report-list",
        Operation::ComplianceReport,
        PolicyFacts::default(),
        "compliance reports",
    )
    .await?;
    Ok(svc.store.read(|c| store::list(c, 200)).await?)
}

/// Why a report does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Not a report file.
    #[error("not a mamori compliance report: {0}")]
    Format(String),
    /// The report's bytes are not what was signed.
    #[error("the report was changed after it was signed (SHA-256 {actual}, signed {signed})")]
    Changed {
        /// Of the report as it is.
        actual: String,
        /// As the signature says.
        signed: String,
    },
    /// The signature is not the institution's.
    #[error("the signature does not verify: {0}")]
    Signature(String),
}

/// A verified report.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The report.
    pub report: Report,
    /// Its digest (hex SHA-256 of the canonical form).
    pub sha256: String,
    /// The signer's certificate subject.
    pub signer: String,
    /// Whether it was checked against a pinned certificate (else only
    /// against the certificate it carries).
    pub pinned: bool,
}

/// Verifies a report file: its canonical bytes against the digest and
/// the CMS signature, with `pin` (the institution's certificate obtained
/// independently) or else the certificate the file carries.
pub fn verify(file: &[u8], pin: Option<&X509>) -> Result<Verified, VerifyError> {
    let v: Value = serde_json::from_slice(file).map_err(|e| VerifyError::Format(e.to_string()))?;
    let report_v = v.get("report").ok_or_else(|| VerifyError::Format("no \"report\"".into()))?;
    let sig: Signature = serde_json::from_value(v.get("signature").cloned().unwrap_or(Value::Null))
        .map_err(|e| VerifyError::Format(format!("signature: {e}")))?;
    let bytes = canonical(report_v);
    let actual = mamori_audit::event::sha256_hex(&bytes);
    if actual != sig.sha256 {
        return Err(VerifyError::Changed { actual, signed: sig.sha256 });
    }
    let der = B64.decode(sig.cms.as_bytes()).map_err(|e| VerifyError::Format(format!("signature.cms: {e}")))?;
    let carried =
        X509::from_pem(sig.certificate.as_bytes()).map_err(|e| VerifyError::Format(format!("certificate: {e}")))?;
    let signer = pin.unwrap_or(&carried);
    cms::verify_detached(&der, &bytes, signer, &[cms::Digest::Sha256])
        .map_err(|e| VerifyError::Signature(e.to_string()))?;
    let report: Report = serde_json::from_value(report_v.clone()).map_err(|e| VerifyError::Format(e.to_string()))?;
    if report.format != FORMAT {
        return Err(VerifyError::Format(format!("format {}", report.format)));
    }
    Ok(Verified { report, sha256: actual, signer: subject(signer), pinned: pin.is_some() })
}

/// What the audit log says of a verified report.
#[derive(Debug, Clone, Serialize)]
pub struct LogCheck {
    /// The audit event recording its production, if found.
    pub event: Option<u64>,
    /// Whether the log holds the checkpoint the report carries.
    pub checkpoint: bool,
}

/// Finds a verified report's audit event and checkpoint in a log.
pub fn check_against_log(c: &mut dyn Conn, v: &Verified) -> mamori_store::Result<LogCheck> {
    let mut event = None;
    let mut before = None;
    'outer: loop {
        let q =
            EventQuery { actions: Some(vec!["compliance-report".into()]), before, limit: 500, ..EventQuery::default() };
        let page = audit_log::search_events(c, &q)?;
        let Some(last) = page.last().map(|p| p.0) else { break };
        for (idx, leaf) in &page {
            let rec = mamori_audit::event::AuditRecord::from_leaf(leaf).ok();
            if rec
                .and_then(|r| r.detail)
                .and_then(|d| d.get("sha256").and_then(Value::as_str).map(str::to_owned))
                .as_deref()
                == Some(v.sha256.as_str())
            {
                event = Some(*idx);
                break 'outer;
            }
        }
        before = Some(last);
    }
    let body = |n: &str| n.split("\n\n").next().unwrap_or("").to_owned();
    let checkpoint = audit_log::cosigned_checkpoint(c, v.report.checkpoint.size)?
        .is_some_and(|n| body(&n) == body(&v.report.checkpoint.note));
    Ok(LogCheck { event, checkpoint })
}

/// Verifies a report file against this institution's certificate and this
/// audit log (auditors and administrators; audited). A malformed file is
/// refused; one that was changed or signed by another key answers
/// `ok: false` with the reason.
pub async fn verify_here(svc: &Services, actor: &Actor, file: Vec<u8>) -> Result<Value, ServiceError> {
    const ACTION: &str = "compliance-verify";
    let d = svc.gate(actor, ACTION, Operation::ComplianceReport, PolicyFacts::default(), "compliance reports").await?;
    let pin = svc.exchange.identity.cert.clone();
    let (out, detail) = match verify(&file, Some(&pin)) {
        Err(VerifyError::Format(m)) => {
            return Err(svc
                .refused(actor, ACTION, ServiceError::invalid("", format!("not a compliance report: {m}")))
                .await)
        }
        Err(e) => (json!({"ok": false, "error": e.to_string()}), json!({"ok": false, "error": e.to_string()})),
        Ok(v) => {
            let v2 = v.clone();
            let log = svc.store.read(move |c| check_against_log(c, &v2)).await?;
            let ok = log.event.is_some() && log.checkpoint;
            (
                json!({
                    "ok": ok,
                    "sha256": v.sha256,
                    "signer": v.signer,
                    "generated_at": v.report.generated_at,
                    "generated_by": v.report.generated_by,
                    "period": v.report.period,
                    "summary": v.report.summary,
                    "audit_event": log.event,
                    "checkpoint_in_log": log.checkpoint,
                    "error": if ok { Value::Null } else { json!("the signature is valid, but this audit log does not record the report's production or its checkpoint") },
                }),
                json!({"ok": ok, "sha256": v.sha256}),
            )
        }
    };
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    rec.detail = Some(detail);
    svc.audit(vec![rec]).await?;
    Ok(out)
}

/// Where Debian puts Japanese TrueType fonts (tried in order when
/// `[compliance] pdf_font` is empty).
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf",
    "/usr/share/fonts/truetype/ipaexfont-gothic/ipaexg.ttf",
    "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf",
    "/usr/share/fonts/truetype/ipafont-gothic/ipag.ttf",
];

/// The Japanese TrueType font printed reports embed: `[compliance]
/// pdf_font`, else the first of [`FONT_PATHS`] present; none is a 406 that
/// says what to install.
pub(crate) async fn pdf_font(svc: &Services) -> Result<Vec<u8>, ServiceError> {
    let configured = svc.cfg.compliance.pdf_font.trim().to_owned();
    let path = if configured.is_empty() {
        FONT_PATHS.iter().map(std::path::PathBuf::from).find(|p| p.exists())
    } else {
        Some(crate::init::DataDir(svc.data_dir.clone()).resolve(&configured))
    };
    let Some(path) = path else {
        return Err(ServiceError::NotAcceptable(
            "no PDF here: no Japanese TrueType font; install fonts-ipaexfont-gothic or set [compliance] pdf_font"
                .into(),
        ));
    };
    tokio::fs::read(&path)
        .await
        .map_err(|e| ServiceError::NotAcceptable(format!("no PDF here: the font {}: {e}", path.display())))
}

/// A stored report as a PDF (A4, Japanese or English), for handing to an
/// inspector; reading it is audited like [`get`].
pub async fn pdf(svc: &Services, actor: &Actor, id: i64, ja: bool) -> Result<Vec<u8>, ServiceError> {
    let g = get(svc, actor, id).await?;
    let font = pdf_font(svc).await?;
    let lines = document(&g.signed, ja);
    let r = &g.signed.report;
    let title = if ja {
        format!("準拠状況報告書 — {}", r.institution.name)
    } else {
        format!("Compliance report — {}", r.institution.name)
    };
    let footer =
        format!("{} · SHA-256 {}…", r.institution.name, g.signed.signature.sha256.chars().take(16).collect::<String>());
    tokio::task::spawn_blocking(move || pdf::render(&lines, &font, &title, &footer))
        .await
        .map_err(|e| ServiceError::internal_from("the PDF task", e))?
        .map_err(|e| ServiceError::NotAcceptable(format!("no PDF here: {e}")))
}

/// `YYYY-MM-DD HH:MM (UTC+hh:mm)` in the institution's time zone.
pub fn local(rfc3339: &str, offset_min: i64) -> String {
    match Timestamp::parse_rfc3339(rfc3339) {
        Some(t) => {
            let l = Timestamp(t.micros() + offset_min * 60_000_000);
            let (y, m, d) = l.ymd();
            let secs = l.secs().rem_euclid(86_400);
            let sign = if offset_min < 0 { '-' } else { '+' };
            format!(
                "{y:04}-{m:02}-{d:02} {:02}:{:02} (UTC{sign}{:02}:{:02})",
                secs / 3600,
                secs / 60 % 60,
                offset_min.abs() / 60,
                offset_min.abs() % 60
            )
        }
        None => rfc3339.to_owned(),
    }
}

/// The report as lines of a printed document.
fn document(s: &Signed, ja: bool) -> Vec<pdf::Line> {
    use pdf::Line;
    let r = &s.report;
    let pick = |b: &Text| if ja { b.ja.clone() } else { b.en.clone() };
    let st = |x: Status| if ja { x.label().0 } else { x.label().1 };
    let l = |ja_s: &str, en_s: &str| if ja { ja_s.to_owned() } else { en_s.to_owned() };
    let text = |t: String, indent: f32| Line::Text { text: t, indent };
    let off = r.utc_offset_minutes;
    let mut out = vec![
        Line::Title(format!("{} — {}", l("準拠状況報告書", "Compliance report"), r.institution.name)),
        text(
            format!("{}: {} – {}", l("対象期間", "Period"), local(&r.period.from, off), local(&r.period.to, off)),
            0.0,
        ),
        text(format!("{}: {} / {}", l("作成", "Produced"), local(&r.generated_at, off), r.generated_by), 0.0),
        text(
            format!(
                "{}: {} {} · {} {} · {} {}",
                l("結果", "Result"),
                st(Status::Met),
                r.summary.met,
                st(Status::Attention),
                r.summary.attention,
                st(Status::NotMet),
                r.summary.not_met
            ),
            0.0,
        ),
        text(format!("{}: {}", l("運用モード", "Mode"), r.mode), 0.0),
        Line::Gap,
    ];
    for q in &r.requirements {
        out.push(Line::Heading(format!("{}  [{}]  {}", q.item.id, st(q.item.status), pick(&q.title))));
        for f in &q.item.findings {
            out.push(text(format!("▲ {}", pick(f)), 10.0));
        }
        for e in &q.item.evidence {
            out.push(text(format!("・{}: {}", pick(&e.label), pick(&e.value)), 10.0));
        }
        out.push(Line::Gap);
    }
    let c = &r.checklist;
    out.push(Line::Heading(pick(&c.title)));
    out.push(text(format!("{} — {}", c.edition, pick(&c.note)), 0.0));
    for i in &c.items {
        let conf =
            if i.confidence == "confirmed" { String::new() } else { l("（項番は推定）", " (number inferred)") };
        out.push(text(
            format!("{}{conf}  [{}]  {}  ← {}", i.number, st(i.status), pick(&i.title), i.requirements.join(", ")),
            10.0,
        ));
    }
    out.push(text(format!("{}: {}", l("出典", "Source"), c.source), 10.0));
    out.push(Line::Gap);
    out.push(Line::Heading(l("署名と監査ログへの結び付け", "Signature and audit binding")));
    out.push(text(format!("SHA-256: {}", s.signature.sha256), 0.0));
    out.push(text(
        format!("{}: {}", l("監査チェックポイント（木のサイズ）", "Audit checkpoint (tree size)"), r.checkpoint.size),
        0.0,
    ));
    for line in r.checkpoint.note.lines() {
        out.push(text(line.to_owned(), 10.0));
    }
    out.push(text(
        l(
            "検証: 署名付き JSON を mamori compliance verify FILE --data DIR で検証すると、この SHA-256 と、作成を記録した監査イベントとチェックポイントが確認できます。",
            "To verify: run mamori compliance verify FILE --data DIR on the signed JSON; it prints this SHA-256 and finds the audit event of its production and its checkpoint.",
        ),
        0.0,
    ));
    out
}
