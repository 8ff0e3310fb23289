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
        .route("/ui/exchange/partners/new", get(partner_new).post(partner_create))
        .route("/ui/exchange/partners/{id}", get(partner_page).post(partner_update))
        .route("/ui/exchange/partners/{id}/status", post(partner_status))
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
    let resources = || all.body["entry"].as_array().into_iter().flatten().map(|e| &e["resource"]);
    let docs: Vec<(String, String)> = resources()
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
    // Finished admissions, for a discharge summary.
    let admissions: Vec<(String, String)> = resources()
        .filter(|r| {
            r["resourceType"] == "Encounter"
                && r["status"] == "finished"
                && matches!(r["class"]["code"].as_str(), Some("IMP" | "ACUTE" | "NONAC"))
        })
        .map(|r| {
            let d = |k: &str| r["period"][k].as_str().and_then(|s| s.get(..10)).unwrap_or("?").to_owned();
            (format!("Encounter/{}", r["id"].as_str().unwrap_or("")), format!("{} – {}", d("start"), d("end")))
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
        form.card method="post" action="/ui/exchange/send" data-confirm=(ui.t("この内容を署名・暗号化して送信します。よろしいですか？", "Sign, encrypt and send this to the partner?")) data-confirm-send data-patient=(who) data-l-to=(ui.t("送り先", "To")) data-l-patient=(ui.t("患者", "Patient")) data-l-docs=(ui.t("送る記録", "Records")) data-l-clins=(ui.t("JP-CLINS 診療情報提供書（カルテから作成し、検証してから送信）", "JP-CLINS referral letter (composed from the chart, validated before it is sent)")) data-l-discharge=(ui.t("JP-CLINS 退院時サマリー（カルテから作成し、検証してから送信）", "JP-CLINS discharge summary (composed from the chart, validated before it is sent)")) {
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
            fieldset {
                legend { (ui.t("文書の形式", "Document format")) }
                label.check { input type="radio" name="format" value="" checked; " " (ui.t("mamori 形式（選んだ記録と本文）", "mamori format (the records chosen and the text)")) }
                label.check { input type="radio" name="format" value="jp-clins"; " " (ui.t("JP-CLINS 診療情報提供書（カルテから作成し、送信前に JP-CLINS で検証。目的は「紹介」、本文は紹介目的になります）", "JP-CLINS referral letter (composed from the chart and validated against JP-CLINS before it is sent; purpose referral, the text is the purpose of the referral)")) }
                @if !admissions.is_empty() {
                    label.check { input type="radio" name="format" value="jp-clins-discharge"; " " (ui.t("JP-CLINS 退院時サマリー（下の入院について。本文は入院中経過になります）", "JP-CLINS discharge summary (for the admission below; the text is the hospital course)")) }
                    label for="encounter" { (ui.t("入院", "Admission")) }
                    select #encounter name="encounter" {
                        @for (r, dates) in &admissions { option value=(r) { (dates) } }
                    }
                    label for="plan" { (ui.t("退院時方針指示（退院時サマリーのみ）", "Instructions at discharge (discharge summary only)")) }
                    textarea #plan name="plan" {}
                }
            }
            label for="title" { (ui.t("文書の表題", "Title of the document")) }
            input #title name="title" type="text" value=(ui.t("診療情報提供書", "Referral letter"));
            label for="note" { (ui.t("本文（紹介状の文面など）", "Text (the letter)")) }
            textarea #note name="note" {}
            label for="history" { (ui.t("現病歴（JP-CLINS のみ。空欄ならカルテの病名から作成）", "Present illness (JP-CLINS only; composed from the chart's problems when empty)")) }
            textarea #history name="history" {}
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
    // A JP-CLINS letter is composed from the chart: the records and the
    // title of the mamori format do not apply.
    let format = field(&f, "format");
    if format == send::FORMAT_JP_CLINS || format == "jp-clins-discharge" {
        req["format"] = json!(send::FORMAT_JP_CLINS);
        req["history"] = opt("history");
        req["documents"] = json!([]);
        req["title"] = Value::Null;
        if format == "jp-clins-discharge" {
            req["document"] = json!("discharge-summary");
            req["encounter"] = opt("encounter");
            req["plan"] = opt("plan");
        }
    }
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
                        td { a href={ "/ui/exchange/partners/" (enc(p["id"].as_str().unwrap_or(""))) } { (tx(&p["id"])) } }
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
        @if ui.may(Operation::PartnerManage) {
            p { a.button href="/ui/exchange/partners/new" { (ui.t("新しい連携先を登録", "Register a partner")) } }
        }
        p.muted { (ui.t("連携先の登録・変更（証明書の更新を含む）はこの画面、`mamori partner` コマンドまたは API で行い、すべて版管理され監査されます。", "Partners are registered and changed (certificate renewal included) here, with `mamori partner` or the API; every version is kept and audited.")) }
    };
    ui.page(ui.t("連携先", "Partners"), body)
}

// ---- partner registration and certificate renewal -----------------------------------------

const DEMARCATION: [(&str, &str, &str); 7] = [
    ("sender_side", "送信側の責任範囲", "Sender's side"),
    ("path", "通信経路の責任", "The path between"),
    ("recipient_side", "受信側の責任範囲", "Recipient's side"),
    ("fault_isolation", "障害の切り分け", "Fault isolation"),
    ("stopping", "停止・中断の手順", "Stopping the exchange"),
    ("patient_enquiries", "患者からの問い合わせ窓口", "Patients' enquiries"),
    ("operations_contact", "運用窓口", "Operations contact"),
];

const CERTS: [(&str, &str, &str); 3] = [
    ("signing", "署名検証用の証明書（相手の署名鍵）", "Signing certificate (verifies the partner's signatures)"),
    ("encryption", "暗号化用の証明書（相手への暗号化）", "Encryption certificate (what we encrypt to)"),
    ("tls_ca", "TLSクライアント証明書の発行元（CA）", "TLS client certificate issuer (CA)"),
];

/// The registration form: a new partner, or an existing one (its
/// version, so that a concurrent change is refused, not overwritten).
fn partner_form(
    ui: &Ui,
    r: &Value,
    version: Option<i64>,
    issues: &[(String, Option<String>)],
    err: Option<&str>,
) -> Markup {
    let s = |v: &Value| tx(v);
    let action = match version {
        Some(_) => format!("/ui/exchange/partners/{}", enc(r["id"].as_str().unwrap_or(""))),
        None => "/ui/exchange/partners/new".to_owned(),
    };
    let purposes: Vec<&str> = r["purposes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    html! {
        @if let Some(e) = err { (notice("error", e)) }
        @if !issues.is_empty() {
            div.notice.error role="alert" {
                p { strong { (ui.t("登録内容に誤りがあります（何も変更されていません）:", "The registration has errors (nothing was changed):")) } }
                ul { @for (m, path) in issues { li { @if let Some(p) = path { code { (p) } ": " } (m) } } }
            }
        }
        form.card method="post" action=(action) {
            (ui.csrf_field())
            @if let Some(v) = version { input type="hidden" name="version" value=(v); }
            div.grid {
                div {
                    label for="id" { (ui.t("連携先ID（医療機関コードなど、変更不可）", "Partner id (e.g. institution code; fixed)")) }
                    input #id name="id" type="text" required value=(s(&r["id"])) readonly[version.is_some()];
                }
                div { label for="name" { (ui.t("名称", "Name")) } input #name name="name" type="text" required value=(s(&r["name"])); }
                div { label for="institution_code" { (ui.t("医療機関コード（10桁、任意）", "Institution code (10 digits, optional)")) } input #institution_code name="institution_code" type="text" value=(s(&r["institution_code"])); }
            }
            div.grid {
                div { label for="as2_id" { (ui.t("AS2識別子", "AS2 id")) } input #as2_id name="as2_id" type="text" required value=(s(&r["as2_id"])); }
                div { label for="endpoint" { (ui.t("受信URL（https）", "Endpoint (https)")) } input #endpoint name="endpoint" type="url" required value=(s(&r["endpoint"])); }
                div {
                    label for="relationship" { (ui.t("関係", "Relationship")) }
                    select #relationship name="relationship" {
                        @for v in ["third_party", "delegation"] { option value=(v) selected[r["relationship"] == v] { (codes::relationship(ui.lang, v)) } }
                    }
                }
            }
            fieldset {
                legend { (ui.t("送ってよい目的（契約の範囲）", "Purposes the contract covers")) }
                @for v in ["referral", "referral_reply", "consultation", "testing", "claims", "research", "other"] {
                    label.check { input type="checkbox" name="purposes" value=(v) checked[purposes.contains(&v)]; " " (codes::exchange_purpose(ui.lang, v)) }
                }
            }
            div.grid {
                div { label for="contract_reference" { (ui.t("契約（番号・名称）", "Contract (reference)")) } input #contract_reference name="contract_reference" type="text" required value=(s(&r["contract"]["reference"])); }
                div { label for="contract_valid_until" { (ui.t("契約の有効期限", "Contract valid until")) } input #contract_valid_until name="contract_valid_until" type="date" value=(s(&r["contract"]["valid_until"])); }
            }
            div.grid {
                div {
                    label for="network_kind" { (ui.t("ネットワーク", "Network")) }
                    select #network_kind name="network_kind" {
                        @for (v, ja, en) in [("closed_network", "閉域網", "closed network"), ("ip_vpn", "IP-VPN", "IP-VPN"), ("internet_tls", "インターネット（TLS）", "Internet (TLS)")] {
                            option value=(v) selected[r["network"]["kind"] == v] { (ui.t(ja, en)) }
                        }
                    }
                }
                div {
                    label for="network_secured_by" { (ui.t("安全管理の責任", "Secured by")) }
                    select #network_secured_by name="network_secured_by" {
                        @for (v, ja, en) in [("institution", "医療機関", "the institutions"), ("carrier", "通信事業者", "the carrier"), ("both", "双方", "both")] {
                            option value=(v) selected[r["network"]["secured_by"] == v] { (ui.t(ja, en)) }
                        }
                    }
                }
                div { label for="network_carrier" { (ui.t("通信事業者（任意）", "Carrier (optional)")) } input #network_carrier name="network_carrier" type="text" value=(s(&r["network"]["carrier"])); }
            }
            fieldset {
                legend { (ui.t("責任分界（契約の定め）", "Responsibility demarcation (as the contract states it)")) }
                @for (k, ja, en) in DEMARCATION {
                    label for={ "d_" (k) } { (ui.t(ja, en)) }
                    textarea id={ "d_" (k) } name={ "d_" (k) } rows="2" required[k != "operations_contact"] { (s(&r["demarcation"][k])) }
                }
            }
            fieldset {
                legend { (ui.t("証明書（PEM）— 更新するときは新しい証明書を貼り付けます", "Certificates (PEM) — to renew, paste the new certificate")) }
                @for (k, ja, en) in CERTS {
                    label for={ "c_" (k) } { (ui.t(ja, en)) }
                    textarea.code id={ "c_" (k) } name={ "c_" (k) } rows="4" spellcheck="false" required[k != "tls_ca"] { (s(&r["certificates"][k])) }
                }
            }
            p { button type="submit" { @if version.is_some() { (ui.t("検証して更新", "Check and update")) } @else { (ui.t("検証して登録", "Check and register")) } } }
        }
    }
}

/// The registration a submitted form describes; `base` keeps what the
/// form does not show (the algorithm profile, document types, status).
fn registration_of(f: &[(String, String)], base: &Value) -> Value {
    let g = |k: &str| field(f, k).trim().to_owned();
    let opt = |k: &str| Some(g(k)).filter(|v| !v.is_empty());
    let mut r = base.clone();
    if !r.is_object() {
        r = json!({});
    }
    r["id"] = json!(g("id"));
    r["name"] = json!(g("name"));
    r["institution_code"] = json!(opt("institution_code"));
    if r["institution_code"].is_null() {
        r.as_object_mut().map(|o| o.remove("institution_code"));
    }
    r["as2_id"] = json!(g("as2_id"));
    r["endpoint"] = json!(g("endpoint"));
    r["relationship"] = json!(g("relationship"));
    r["purposes"] = json!(fields(f, "purposes"));
    r["contract"] = json!({"reference": g("contract_reference")});
    if let Some(v) = opt("contract_valid_until") {
        r["contract"]["valid_until"] = json!(v);
    }
    r["network"] = json!({"kind": g("network_kind"), "secured_by": g("network_secured_by")});
    if let Some(c) = opt("network_carrier") {
        r["network"]["carrier"] = json!(c);
    }
    r["demarcation"] = json!({});
    for (k, _, _) in DEMARCATION {
        r["demarcation"][k] = json!(g(&format!("d_{k}")));
    }
    r["certificates"] = json!({});
    for (k, _, _) in CERTS {
        r["certificates"][k] = json!(field(f, &format!("c_{k}")).trim().replace("\r\n", "\n"));
    }
    r
}

fn partner_refused(ui: &Ui, r: &Value, version: Option<i64>, e: &mamori_service::ServiceError) -> Box<Response> {
    let (issues, err) =
        if matches!(e.status(), 400 | 422) { (e.issues(), None) } else { (Vec::new(), Some(ui.why_err(e))) };
    let title = if version.is_some() {
        ui.t("連携先の変更", "Change a partner")
    } else {
        ui.t("連携先の登録", "Register a partner")
    };
    Box::new(ui.page(title, html! { (tabs(ui)) (partner_form(ui, r, version, &issues, err.as_deref())) }))
}

pub(crate) async fn partner_new(ui: Ui) -> Response {
    let blank = json!({"relationship": "third_party", "purposes": ["referral", "referral_reply"], "network": {"kind": "internet_tls", "secured_by": "institution"}});
    ui.page(
        ui.t("連携先の登録", "Register a partner"),
        html! { (tabs(&ui)) (partner_form(&ui, &blank, None, &[], None)) },
    )
}

pub(crate) async fn partner_create(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let r = registration_of(&f, &Value::Null);
    ui.once(&f, || async {
        let p = serde_json::from_value(r.clone())
            .map_err(|e| mamori_service::ServiceError::invalid("", format!("the registration: {e}")));
        match parts::save(&ui.svc, &ui.actor, None, p, None).await {
            Ok(saved) => Ok(format!("/ui/exchange/partners/{}?saved=1", enc(&saved.id))),
            Err(e) => Err(partner_refused(&ui, &r, None, &e)),
        }
    })
    .await
}

pub(crate) async fn partner_page(ui: Ui, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(parts::show(&ui.svc, &ui.actor, &id).await);
    if !r.ok() {
        return ui.page(ui.t("連携先", "Partner"), html! { (tabs(&ui)) (notice("error", &ui.why(&r))) });
    }
    let p = &r.body;
    let version = p["version"].as_i64();
    let manage = ui.may(Operation::PartnerManage);
    let active = p["status"] == "active";
    let body = html! {
        (tabs(&ui))
        @if q.contains_key("saved") { (notice("ok", ui.t("連携先の登録を保存しました（新しい版として記録）。", "The registration is saved (as a new version)."))) }
        article.document {
            dl.facts {
                dt { (ui.t("名称", "Name")) } dd { (tx(&p["name"])) }
                dt { (ui.t("状態", "Status")) } dd { (codes::partner_status(ui.lang, p["status"].as_str().unwrap_or(""))) }
                dt { (ui.t("関係", "Relationship")) } dd { (codes::relationship(ui.lang, p["relationship"].as_str().unwrap_or(""))) }
                dt { (ui.t("目的", "Purposes")) } dd { (p["purposes"].as_array().into_iter().flatten().map(|x| codes::exchange_purpose(ui.lang, x.as_str().unwrap_or(""))).collect::<Vec<_>>().join("、")) }
                dt { (ui.t("AS2識別子・受信URL", "AS2 id, endpoint")) } dd { (tx(&p["as2_id"])) " · " code { (tx(&p["endpoint"])) } }
                dt { (ui.t("契約", "Contract")) } dd { (tx(&p["contract"]["reference"])) " " (tx(&p["contract"]["valid_until"])) }
                dt { (ui.t("版", "Version")) } dd { (tx(&p["version"])) " — " (tx(&p["updated_by"])) " " (when(&p["updated_at"], off)) }
            }
            h2 { (ui.t("証明書", "Certificates")) }
            table.stack {
                thead { tr { th { (ui.t("用途", "Use")) } th { (ui.t("主体", "Subject")) } th { (ui.t("有効期間", "Valid")) } th { "SHA-256" } } }
                tbody {
                    @for c in p["certificates"].as_array().into_iter().flatten().flat_map(|x| x.as_array().into_iter().flatten()) {
                        @let expiring = p["expiring_certificates"].as_array().into_iter().flatten().any(|e| e["sha256"] == c["sha256"]);
                        tr {
                            td { (tx(&c["role"])) }
                            td { (tx(&c["subject"])) }
                            td { (tx(&c["not_before"])) " — " (tx(&c["not_after"])) @if expiring { " " span.badge.red { (ui.t("期限間近", "expiring")) } } }
                            td { code { (tx(&c["sha256"]).chars().take(16).collect::<String>()) "…" } }
                        }
                    }
                }
            }
        }
        @if manage {
            h2 { (ui.t("登録の変更・証明書の更新", "Change the registration, renew a certificate")) }
            (partner_form(&ui, &p["registration"], version, &[], None))
            h2 { @if active { (ui.t("交換を停止する", "Suspend the exchange")) } @else { (ui.t("交換を再開する", "Resume the exchange")) } }
            form.card method="post" action={ "/ui/exchange/partners/" (enc(&id)) "/status" } data-confirm=(if active { ui.t("この連携先との送受信を停止します。全職員に通知されます。よろしいですか？", "Stop exchanging with this partner? All staff are told.") } else { ui.t("この連携先との送受信を再開します。よろしいですか？", "Resume exchanging with this partner?") }) {
                (ui.csrf_field())
                input type="hidden" name="to" value=(if active { "suspended" } else { "active" });
                label for="reason" { (ui.t("理由（必須、5文字以上）", "Reason (required, at least 5 characters)")) }
                input #reason name="reason" type="text" required minlength="5";
                p { @if active { button.danger type="submit" { (ui.t("停止する", "Suspend")) } } @else { button type="submit" { (ui.t("再開する", "Resume")) } } }
            }
        }
    };
    ui.page(&format!("{} {}", ui.t("連携先", "Partner"), id), body)
}

pub(crate) async fn partner_update(ui: Ui, Path(id): Path<String>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let version = field(&f, "version").parse::<i64>().ok();
    ui.once(&f, || async {
        // What the form does not show is kept from the registration in force.
        let current = Api::of(parts::show(&ui.svc, &ui.actor, &id).await);
        let r = registration_of(&f, &current.body["registration"]);
        let p = serde_json::from_value(r.clone())
            .map_err(|e| mamori_service::ServiceError::invalid("", format!("the registration: {e}")));
        match parts::save(&ui.svc, &ui.actor, Some(id.clone()), p, version).await {
            Ok(saved) => Ok(format!("/ui/exchange/partners/{}?saved=1", enc(&saved.id))),
            Err(e) => Err(partner_refused(&ui, &r, version, &e)),
        }
    })
    .await
}

pub(crate) async fn partner_status(ui: Ui, Path(id): Path<String>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let to = if field(&f, "to") == "active" {
        mamori_exchange::partner::Status::Active
    } else {
        mamori_exchange::partner::Status::Suspended
    };
    ui.once(&f, || async {
        let req = parts::StatusChange { reason: field(&f, "reason").to_owned() };
        match parts::set_status(&ui.svc, &ui.actor, &id, req, to).await {
            Ok(_) => Ok(format!("/ui/exchange/partners/{}", enc(&id))),
            Err(e) => Err(Box::new(ui.page(
                ui.t("連携先", "Partner"),
                html! {
                    (tabs(&ui))
                    (notice("error", &ui.why_err(&e)))
                    p { a href={ "/ui/exchange/partners/" (enc(&id)) } { (ui.t("戻る", "Back")) } }
                },
            ))),
        }
    })
    .await
}
