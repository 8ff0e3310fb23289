//! Exchange with outside parties: send documents to a partner, the
//! message ledger with each hop, inbound documents awaiting patient
//! matching, partners and their certificate expiry.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use mamori_core::policy::Operation;
use mamori_service::exchange::{inbound as inb, partners as parts, send};
use mamori_service::records::{enc, read};
use mamori_service::Services;
use serde_json::{json, Value};

use super::codes;
use super::html::{data, notice, tx, when};
use super::{cmd, field, fields, form, html, Api, Markup, Ui};

pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/ui/exchange", get(send_page))
        .route("/ui/exchange/send", post(send_post))
        .route("/ui/exchange/messages", get(messages))
        .route("/ui/exchange/messages/{id}", get(message))
        .route("/ui/exchange/inbound", get(inbound))
        .route("/ui/exchange/inbound/{message}/match", post(match_post))
        .route("/ui/exchange/partners", get(partners))
}

fn tabs(ui: &Ui) -> Markup {
    let items = [
        ("/ui/exchange", ui.t("文書を送る", "Send documents")),
        ("/ui/exchange/messages", ui.t("送受信の記録", "Message ledger")),
        ("/ui/exchange/inbound", ui.t("受信文書の患者照合", "Inbound documents")),
        ("/ui/exchange/partners", ui.t("連携先", "Partners")),
    ];
    super::html::tabs(ui, &items)
}

const BASES: [(&str, &str, &str); 5] = [
    ("", "記録から自動判定（同意・委託）", "Decide from the records (consent, delegation)"),
    ("implied_consent", "黙示の同意（院内掲示の範囲）", "Implied consent (within the posted notice)"),
    ("explicit_consent", "明示の同意（同意書あり）", "Explicit consent (signed)"),
    ("delegation", "業務委託", "Delegation (contractor)"),
    ("protection_of_life", "生命・身体の保護（同意取得困難）", "Protection of life (consent impossible)"),
];

fn label(r: &Value) -> String {
    let c = &r["code"];
    let text = c["text"]
        .as_str()
        .or_else(|| c["coding"][0]["display"].as_str())
        .or_else(|| r["description"].as_str())
        .or_else(|| r["title"].as_str())
        .unwrap_or("");
    text.to_owned()
}

/// The kind of a record offered for sending, for people.
fn kind(ui: &Ui, t: &str) -> String {
    match t {
        "Condition" => ui.t("病名", "Condition"),
        "AllergyIntolerance" => ui.t("アレルギー", "Allergy"),
        "MedicationRequest" => ui.t("処方", "Prescription"),
        "MedicationStatement" => ui.t("服薬", "Medication"),
        "Observation" => ui.t("検査・観察", "Observation"),
        "DocumentReference" => ui.t("文書", "Document"),
        "Composition" => ui.t("文書", "Document"),
        "Procedure" => ui.t("処置・手術", "Procedure"),
        "Immunization" => ui.t("予防接種", "Immunization"),
        other => other,
    }
    .to_owned()
}

fn state_badge(ui: &Ui, s: &str) -> Markup {
    let cls = match s {
        "delivered" | "acknowledged" | "accepted" | "matched" => "green",
        "failed" | "rejected" | "expired" | "quarantined" => "red",
        "queued" | "sending" | "retry" | "retrying" | "awaiting_mdn" | "unmatched" => "yellow",
        _ => "black",
    };
    html! { span class={ "badge " (cls) } { (codes::message_state(ui.lang, s)) } }
}

pub(crate) async fn send_page(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let patient = q.get("patient").map(|s| s.trim().trim_start_matches("Patient/").to_owned()).unwrap_or_default();
    let pick = html! {
        (tabs(&ui))
        form.card method="get" action="/ui/exchange" {
            label for="patient" { (ui.t("1. 患者IDまたはカルテ番号", "1. Patient id or record number")) }
            input #patient name="patient" type="text" value=(patient) required;
            " "
            button.secondary type="submit" { (ui.t("この患者の記録を表示", "Show this patient's records")) }
        }
    };
    if patient.is_empty() {
        return ui.page(ui.t("情報交換", "Exchange"), pick);
    }
    let p = Api::resource(read::read(&ui.svc, &ui.actor, "Patient", &patient).await);
    if matches!(p.status, 400 | 404) {
        // Not an id: the record number staff see (a search, decided and
        // audited as one), then this page for the patient's id.
        return match ui.patient_id(&patient).await {
            Ok(one) if one != patient => Redirect::to(&format!("/ui/exchange?patient={}", enc(&one))).into_response(),
            Ok(_) => ui.page(ui.t("情報交換", "Exchange"), html! { (pick) (notice("error", &ui.why(&p))) }),
            Err(msg) => ui.page(ui.t("情報交換", "Exchange"), html! { (pick) (notice("error", &msg)) }),
        };
    }
    if !p.ok() {
        return ui.page(ui.t("情報交換", "Exchange"), html! { (pick) (notice("error", &ui.why(&p))) });
    }
    let all =
        Api::of(read::everything(&ui.svc, &ui.actor, &patient, &[("_count".into(), "500".into())]).await.map(|page| {
            let entries: Vec<Value> = page
                .into_inner()
                .rows
                .iter()
                .map(|v| json!({"resource": serde_json::from_str::<Value>(&v.body).unwrap_or(Value::Null)}))
                .collect();
            json!({"entry": entries})
        }));
    if !all.ok() {
        return ui.page(ui.t("情報交換", "Exchange"), html! { (pick) (notice("error", &ui.why(&all))) });
    }
    let partners = Api::of(parts::list(&ui.svc, &ui.actor).await.map(|p| json!({"partners": p})));
    let active: Vec<&Value> =
        partners.body["partners"].as_array().into_iter().flatten().filter(|p| p["status"] == "active").collect();
    let docs: Vec<(String, String)> = all.body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|r| {
            matches!(
                r["resourceType"].as_str().unwrap_or(""),
                "Condition"
                    | "AllergyIntolerance"
                    | "MedicationRequest"
                    | "MedicationStatement"
                    | "Observation"
                    | "DocumentReference"
                    | "Composition"
                    | "Procedure"
                    | "Immunization"
            )
        })
        .map(|r| {
            let t = r["resourceType"].as_str().unwrap_or("");
            (format!("{t}/{}", r["id"].as_str().unwrap_or("")), format!("{} — {}", kind(&ui, t), label(r)))
        })
        .collect();
    let name = p.body["name"][0]["text"].as_str().map(str::to_owned).unwrap_or_else(|| {
        format!(
            "{} {}",
            p.body["name"][0]["family"].as_str().unwrap_or(""),
            p.body["name"][0]["given"][0].as_str().unwrap_or("")
        )
    });
    let who = format!("{name} ({} {patient})", ui.t("患者ID", "patient id"));
    let body = html! {
        (pick)
        form.card method="post" action="/ui/exchange/send" data-confirm=(ui.t("この内容を署名・暗号化して送信します。よろしいですか？", "Sign, encrypt and send this to the partner?")) data-confirm-send data-patient=(who) data-l-to=(ui.t("送り先", "To")) data-l-patient=(ui.t("患者", "Patient")) data-l-docs=(ui.t("送る記録", "Records")) {
            (ui.csrf_field())
            input type="hidden" name="patient" value=(patient);
            p { strong { (name) } " (" (ui.t("患者ID", "patient id")) " " (patient) ")" }
            fieldset {
                legend { (ui.t("2. 送る記録", "2. Records to send")) }
                @if docs.is_empty() { p.muted { (ui.t("記録がありません（送り状だけを送れます）", "No records (you can send a letter only)")) } }
                @for (reference, text) in &docs {
                    label.check { input type="checkbox" name="documents" value=(reference); " " (text) }
                }
            }
            label for="title" { (ui.t("文書の表題", "Title of the document")) }
            input #title name="title" type="text" value=(ui.t("診療情報提供書", "Referral letter"));
            label for="note" { (ui.t("本文（紹介状の文面など）", "Text (the letter)")) }
            textarea #note name="note" {}
            div.grid {
                div {
                    label for="partner" { (ui.t("3. 送り先（登録済みの連携先）", "3. Recipient (a registered partner)")) }
                    select #partner name="partner" required {
                        @for p in &active { option value=(tx(&p["id"])) { (tx(&p["name"])) " (" (tx(&p["id"])) ")" } }
                    }
                }
                div {
                    label for="purpose" { (ui.t("目的", "Purpose")) }
                    select #purpose name="purpose" {
                        @for v in ["referral", "referral_reply", "consultation", "testing", "claims", "research", "other"] { option value=(v) { (codes::exchange_purpose(ui.lang, v)) } }
                    }
                }
                div {
                    label for="basis" { (ui.t("法的根拠", "Legal basis")) }
                    select #basis name="basis" { @for (v, ja, en) in BASES { option value=(v) { (ui.t(ja, en)) } } }
                }
            }
            label for="justification" { (ui.t("根拠の説明（生命・身体の保護の場合は必須）", "Justification (required for protection of life)")) }
            input #justification name="justification" type="text";
            p.muted { (ui.t("送信前に、連携先の登録、目的、同意または法的根拠が確認されます。文書は当院の鍵で署名され、相手の証明書で暗号化されます。", "Before sending, the partner's registration, the purpose and the consent or legal basis are checked. The document is signed with our key and encrypted to the partner's certificate.")) }
            p { button type="submit" { (ui.t("署名・暗号化して送信", "Sign, encrypt and send")) } }
        }
    };
    ui.page(ui.t("情報交換", "Exchange"), body)
}

pub(crate) async fn send_post(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let opt = |k: &str| {
        let v = field(&f, k).trim();
        if v.is_empty() {
            Value::Null
        } else {
            json!(v)
        }
    };
    let mut req = json!({
        "patient": field(&f, "patient"),
        "recipients": [field(&f, "partner")],
        "purpose": field(&f, "purpose"),
        "documents": fields(&f, "documents"),
        "title": opt("title"),
        "note": opt("note"),
        "justification": opt("justification"),
    });
    if !field(&f, "basis").is_empty() {
        req["basis"] = json!(field(&f, "basis"));
    }
    // Queued: the ledger of this send. A reload of the ledger, a double
    // click or a resubmission of the same form does not send again.
    ui.once(&f, || async {
        match send::send(&ui.svc, &ui.actor, cmd(req)).await {
            Ok(sent) => Ok(format!("/ui/exchange/messages?send={}", enc(&sent.send))),
            Err(e) => Err(Box::new(ui.page(
                ui.t("送信できませんでした", "Not sent"),
                html! {
                    (tabs(&ui))
                    (notice("error", &ui.why_err(&e)))
                    p { a href={ "/ui/exchange?patient=" (enc(field(&f, "patient"))) } { (ui.t("送信画面に戻る", "Back to the form")) } }
                },
            ))),
        }
    })
    .await
}

pub(crate) async fn messages(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let get = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let filter = send::MessageFilter {
        direction: get("direction"),
        partner: get("partner"),
        patient: get("patient"),
        state: get("state"),
        send: get("send"),
        limit: Some(200),
    };
    let r = Api::of(send::list(&ui.svc, &ui.actor, filter).await.map(|m| json!({"messages": m})));
    if !r.ok() {
        return ui.page(ui.t("送受信の記録", "Message ledger"), html! { (tabs(&ui)) (notice("error", &ui.why(&r))) });
    }
    let cols = [
        ui.t("日時", "Created"),
        ui.t("方向", "Direction"),
        ui.t("連携先", "Partner"),
        ui.t("患者", "Patient"),
        ui.t("目的", "Purpose"),
        ui.t("状態", "State"),
        ui.t("作成者", "By"),
    ];
    let body = html! {
        (tabs(&ui))
        @if q.contains_key("send") {
            (notice("ok", ui.t("送信キューに入れました。配達と受領確認（署名付きMDN）は記録で確認できます。", "Queued. Delivery and the signed receipt (MDN) show in the ledger.")))
        }
        table.stack {
            thead { tr { @for c in cols { th { (c) } } } }
            tbody {
                @for m in r.body["messages"].as_array().into_iter().flatten() {
                    tr {
                        td data-label=(cols[0]) { a href={ "/ui/exchange/messages/" (enc(m["id"].as_str().unwrap_or(""))) } { (when(&m["created_at"], off)) } }
                        td data-label=(cols[1]) { @if m["direction"] == "out" { (ui.t("送信", "out")) } @else { (ui.t("受信", "in")) } }
                        td data-label=(cols[2]) { (tx(&m["partner"])) }
                        td data-label=(cols[3]) { (tx(&m["patient"])) }
                        td data-label=(cols[4]) { (codes::exchange_purpose(ui.lang, m["purpose"].as_str().unwrap_or(""))) }
                        td data-label=(cols[5]) { (state_badge(&ui, m["state"].as_str().unwrap_or(""))) }
                        td data-label=(cols[6]) { (tx(&m["created_by"])) }
                    }
                }
            }
        }
        @if ui.may(Operation::ExchangeMessageReadAll) {
            p.muted { (ui.t("契約見直し用の台帳エクスポート（CSV/NDJSON）", "Ledger export for contract reviews (CSV/NDJSON)")) ": " code { "GET /api/v1/exchange/ledger?format=csv" } }
        }
    };
    ui.page(ui.t("送受信の記録", "Message ledger"), body)
}

/// A message's legal basis for people: its kind, then what supports it.
fn basis_view(ui: &Ui, b: &Value) -> Markup {
    match b {
        Value::Object(m) => {
            let kind = m.get("kind").or_else(|| m.get("basis")).and_then(Value::as_str);
            let rest: serde_json::Map<String, Value> = m
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "kind" | "basis"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            html! {
                @if let Some(k) = kind { strong { (codes::legal_basis(ui.lang, k)) } }
                @if !rest.is_empty() { (data(ui.lang, &Value::Object(rest))) }
            }
        }
        Value::String(s) => html! { (codes::legal_basis(ui.lang, s)) },
        other => data(ui.lang, other),
    }
}

pub(crate) async fn message(ui: Ui, Path(id): Path<String>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(send::show(&ui.svc, &ui.actor, &id).await);
    if !r.ok() {
        return ui.page(ui.t("メッセージ", "Message"), html! { (tabs(&ui)) (notice("error", &ui.why(&r))) });
    }
    let m = &r.body;
    let body = html! {
        (tabs(&ui))
        article.document {
            p.noprint { button.secondary type="button" data-print { (ui.t("印刷", "Print")) } }
            dl.facts {
                dt { (ui.t("状態", "State")) } dd { (state_badge(&ui, m["state"].as_str().unwrap_or(""))) }
                dt { (ui.t("方向", "Direction")) } dd { @if m["direction"] == "in" { (ui.t("受信", "in")) } @else { (ui.t("送信", "out")) } }
                dt { (ui.t("連携先", "Partner")) } dd { (tx(&m["partner"])) }
                dt { (ui.t("患者", "Patient")) } dd { (tx(&m["patient"])) }
                dt { (ui.t("目的", "Purpose")) } dd { (codes::exchange_purpose(ui.lang, m["purpose"].as_str().unwrap_or(""))) }
                dt { (ui.t("法的根拠", "Legal basis")) } dd { (basis_view(&ui, &m["basis"])) }
                dt { (ui.t("内容のハッシュ（MIC）", "Content digest (MIC)")) } dd { code { (tx(&m["mic"])) } }
            }
            @if let Some(f) = m["failure"].as_object() {
                (notice("error", &format!("{}: {}", f.get("segment").and_then(Value::as_str).unwrap_or(""), f.get("reason").and_then(Value::as_str).unwrap_or(""))))
            }
            h2 { (ui.t("経路と責任の記録（各段階）", "Hops and responsibility")) }
            table.stack {
                thead { tr { th { (ui.t("日時", "Time")) } th { (ui.t("段階", "Hop")) } th { (ui.t("責任を持つ者", "Responsible party")) } th { (ui.t("詳細", "Detail")) } } }
                tbody {
                    @for h in m["hops"].as_array().into_iter().flatten() {
                        tr {
                            td { (when(&h["at"], off)) }
                            td { (codes::hop(ui.lang, h["hop"].as_str().unwrap_or(""))) }
                            td { (codes::party(ui.lang, h["party"].as_str().unwrap_or(""))) }
                            td { (data(ui.lang, &h["detail"])) }
                        }
                    }
                }
            }
            @if let Some(t) = m.get("partner_terms").filter(|t| !t.is_null()) {
                h2 { (ui.t("送信時点の連携先との取り決め", "The partner's terms at the time")) }
                (data(ui.lang, t))
            }
        }
    };
    ui.page(&format!("{} {}", ui.t("メッセージ", "Message"), id), body)
}

pub(crate) async fn inbound(ui: Ui) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(inb::list(&ui.svc, &ui.actor, Some("unmatched".into())).await.map(|i| json!({"inbound": i})));
    if !r.ok() {
        return ui.page(
            ui.t("受信文書の患者照合", "Inbound documents"),
            html! { (tabs(&ui)) (notice("error", &ui.why(&r))) },
        );
    }
    let items: Vec<&Value> = r.body["inbound"].as_array().into_iter().flatten().collect();
    let body = html! {
        (tabs(&ui))
        @if items.is_empty() { p.muted { (ui.t("照合待ちの受信文書はありません。", "No received document awaits matching.")) } }
        @for ib in &items {
            @let s = &ib["summary"];
            @let msg = ib["message"].as_str().unwrap_or("");
            @let names: Vec<String> = s["patient"]["name"].as_array().into_iter().flatten().map(|n| n["text"].as_str().map(str::to_owned).unwrap_or_else(|| format!("{} {}", tx(&n["family"]), tx(&n["given"][0])))).collect();
            @let ids: Vec<String> = s["patient"]["identifier"].as_array().into_iter().flatten().map(|i| format!("{} {}", tx(&i["system"]), tx(&i["value"]))).collect();
            section.card {
                h2 { (tx(&s["title"])) }
                p { (ui.t("文書日付", "Dated")) ": " (when(&s["date"], off)) " · " (ui.t("メッセージ", "Message")) ": " a href={ "/ui/exchange/messages/" (enc(msg)) } { (msg) } }
                p {
                    (ui.t("文書上の患者", "Patient in the document")) ": " (names.join(" / "))
                    " · " (ui.t("生年月日", "born")) ": " (tx(&s["patient"]["birthDate"]))
                    " · " (ui.t("性別", "sex")) ": " (codes::gender(ui.lang, s["patient"]["gender"].as_str().unwrap_or("")))
                }
                p.muted { (ui.t("識別子", "Identifiers")) ": " (ids.join(", ")) }
                form method="post" action={ "/ui/exchange/inbound/" (enc(msg)) "/match" } {
                    (ui.csrf_field())
                    label for={ "p-" (msg) } { (ui.t("当院の患者IDまたはカルテ番号（患者検索で確認）", "Our patient id or record number (check with patient search)")) }
                    input id={ "p-" (msg) } name="patient" type="text" required;
                    " "
                    button type="submit" { (ui.t("この患者に紐づける", "File under this patient")) }
                }
            }
        }
    };
    ui.page(ui.t("受信文書の患者照合", "Inbound documents"), body)
}

pub(crate) async fn match_post(ui: Ui, Path(message): Path<String>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let refused = |msg: String| {
        Box::new(
            ui.page(ui.t("受信文書の患者照合", "Inbound documents"), html! { (tabs(&ui)) (notice("error", &msg)) }),
        )
    };
    ui.once(&f, || async {
        let patient = ui.patient_id(field(&f, "patient")).await.map_err(refused)?;
        let r = Api::of(inb::file(&ui.svc, &ui.actor, &message, inb::FileInbound { patient }).await);
        if r.ok() {
            Ok("/ui/exchange/inbound".into())
        } else {
            Err(refused(ui.why(&r)))
        }
    })
    .await
}

pub(crate) async fn partners(ui: Ui) -> Response {
    let r = Api::of(parts::list(&ui.svc, &ui.actor).await.map(|p| json!({"partners": p})));
    if !r.ok() {
        return ui.page(ui.t("連携先", "Partners"), html! { (tabs(&ui)) (notice("error", &ui.why(&r))) });
    }
    let body = html! {
        (tabs(&ui))
        table.stack {
            thead { tr { th { "ID" } th { (ui.t("名称", "Name")) } th { (ui.t("関係", "Relationship")) } th { (ui.t("状態", "Status")) } th { (ui.t("目的", "Purposes")) } th { (ui.t("契約", "Contract")) } th { (ui.t("期限が近い証明書", "Certificates expiring soon")) } } }
            tbody {
                @for p in r.body["partners"].as_array().into_iter().flatten() {
                    @let exp: Vec<&Value> = p["expiring_certificates"].as_array().into_iter().flatten().collect();
                    tr {
                        td { (tx(&p["id"])) }
                        td { (tx(&p["name"])) }
                        td { (codes::relationship(ui.lang, p["relationship"].as_str().unwrap_or(""))) }
                        td { (codes::partner_status(ui.lang, p["status"].as_str().unwrap_or(""))) }
                        td { (p["purposes"].as_array().into_iter().flatten().map(|x| codes::exchange_purpose(ui.lang, x.as_str().unwrap_or(""))).collect::<Vec<_>>().join("、")) }
                        td { (tx(&p["contract"]["reference"])) }
                        td {
                            @if exp.is_empty() { "—" }
                            @for c in &exp { span.badge.red { (tx(&c["role"])) " " (when(&c["not_after"], 0)) } " " }
                        }
                    }
                }
            }
        }
        p.muted { (ui.t("連携先の登録・変更は `mamori partner` コマンドまたは API で行い、すべて版管理され監査されます。", "Partners are registered and changed with `mamori partner` or the API; every version is kept and audited.")) }
    };
    ui.page(ui.t("連携先", "Partners"), body)
}
