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

use super::html::{ev, notice, when};
use super::{cmd, esc, field, fields, form, Api, Ui};

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

fn tabs(ui: &Ui) -> String {
    let items = [
        ("/ui/exchange", ui.t("文書を送る", "Send documents")),
        ("/ui/exchange/messages", ui.t("送受信の記録", "Message ledger")),
        ("/ui/exchange/inbound", ui.t("受信文書の患者照合", "Inbound documents")),
        ("/ui/exchange/partners", ui.t("連携先", "Partners")),
    ];
    super::html::tabs(ui, &items)
}

const PURPOSES: [(&str, &str, &str); 7] = [
    ("referral", "紹介", "Referral"),
    ("referral_reply", "紹介への返書", "Referral reply"),
    ("consultation", "対診・相談", "Consultation"),
    ("testing", "検査委託", "Testing"),
    ("claims", "請求", "Claims"),
    ("research", "研究", "Research"),
    ("other", "その他", "Other"),
];

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

fn state_badge(ui: &Ui, s: &str) -> String {
    let (cls, ja, en) = match s {
        "delivered" | "acknowledged" | "accepted" | "matched" => ("green", "配達済み", "delivered"),
        "failed" | "rejected" | "expired" => ("red", "失敗", "failed"),
        "queued" | "sending" | "retrying" => ("yellow", "送信中", "in transit"),
        _ => ("black", "", ""),
    };
    let extra = if ja.is_empty() { String::new() } else { format!(" ({})", ui.t(ja, en)) };
    format!("<span class=\"badge {cls}\">{}{extra}</span>", esc(s))
}

pub(crate) async fn send_page(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let patient = q.get("patient").map(|s| s.trim().trim_start_matches("Patient/").to_owned()).unwrap_or_default();
    let mut body = tabs(&ui);
    body.push_str(&format!(
        r#"<form method="get" action="/ui/exchange" class="card"><label for="patient">{l}</label><input id="patient" name="patient" type="text" value="{v}" required> <button type="submit" class="secondary">{b}</button></form>"#,
        l = ui.t("1. 患者IDまたはカルテ番号", "1. Patient id or record number"),
        v = esc(&patient),
        b = ui.t("この患者の記録を表示", "Show this patient's records"),
    ));
    if patient.is_empty() {
        return ui.page(ui.t("情報交換", "Exchange"), &body);
    }
    let p = Api::resource(read::read(&ui.svc, &ui.actor, "Patient", &patient).await);
    if p.status == 404 {
        // Not an id: the record number staff see (a search, decided and
        // audited as one), then this page for the patient's id.
        let q = vec![("identifier".to_owned(), patient.clone()), ("_count".to_owned(), "2".to_owned())];
        let found = read::search(&ui.svc, &ui.actor, "Patient", q, false)
            .await
            .map(|f| f.into_inner().page.entries.iter().map(|v| v.id.clone()).collect::<Vec<_>>());
        let msg = match found.as_deref() {
            Ok([one]) => return Redirect::to(&format!("/ui/exchange?patient={}", enc(one))).into_response(),
            Ok([]) => ui
                .t("その患者IDまたはカルテ番号の患者はいません。", "No patient has this id or record number.")
                .to_owned(),
            Ok(_) => ui
                .t(
                    "このカルテ番号の患者が複数います。患者IDで指定してください。",
                    "Several patients have this record number; give the patient id.",
                )
                .to_owned(),
            Err(e) => e.message(),
        };
        body.push_str(&notice("error", &msg));
        return ui.page(ui.t("情報交換", "Exchange"), &body);
    }
    if !p.ok() {
        body.push_str(&notice("error", &p.message()));
        return ui.page(ui.t("情報交換", "Exchange"), &body);
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
        body.push_str(&notice("error", &all.message()));
        return ui.page(ui.t("情報交換", "Exchange"), &body);
    }
    let partners = Api::of(parts::list(&ui.svc, &ui.actor).await.map(|p| json!({"partners": p})));
    let popts: String = partners.body["partners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"] == "active")
        .map(|p| format!("<option value=\"{}\">{} ({})</option>", ev(&p["id"]), ev(&p["name"]), ev(&p["id"])))
        .collect();
    let mut docs = String::new();
    for e in all.body["entry"].as_array().into_iter().flatten() {
        let r = &e["resource"];
        let t = r["resourceType"].as_str().unwrap_or("");
        if matches!(
            t,
            "Condition"
                | "AllergyIntolerance"
                | "MedicationRequest"
                | "MedicationStatement"
                | "Observation"
                | "DocumentReference"
                | "Composition"
                | "Procedure"
                | "Immunization"
        ) {
            let reference = format!("{t}/{}", r["id"].as_str().unwrap_or(""));
            docs.push_str(&format!(
                "<label class=\"check\"><input type=\"checkbox\" name=\"documents\" value=\"{rv}\"> {t} — {l}</label>",
                rv = esc(&reference),
                t = esc(t),
                l = esc(&label(r))
            ));
        }
    }
    let name = p.body["name"][0]["text"].as_str().map(str::to_owned).unwrap_or_else(|| {
        format!(
            "{} {}",
            p.body["name"][0]["family"].as_str().unwrap_or(""),
            p.body["name"][0]["given"][0].as_str().unwrap_or("")
        )
    });
    body.push_str(&format!(
        r#"<form method="post" action="/ui/exchange/send" class="card" data-confirm="{confirm}" data-confirm-send data-patient="{pname} (Patient/{pid})" data-l-to="{lto}" data-l-patient="{lpat}" data-l-docs="{ldocs}">{csrf}<input type="hidden" name="patient" value="{pid}">
<p><strong>{pname}</strong> (Patient/{pid})</p>
<fieldset><legend>{dl}</legend>{docs}</fieldset>
<label for="title">{tl}</label><input id="title" name="title" type="text" value="{tv}">
<label for="note">{nl}</label><textarea id="note" name="note"></textarea>
<div class="grid"><div><label for="partner">{pl}</label><select id="partner" name="partner" required>{popts}</select></div>
<div><label for="purpose">{prl}</label><select id="purpose" name="purpose">{prs}</select></div>
<div><label for="basis">{bl}</label><select id="basis" name="basis">{bs}</select></div></div>
<label for="justification">{jl}</label><input id="justification" name="justification" type="text">
<p class="muted">{hint}</p><p><button type="submit">{b}</button></p></form>"#,
        confirm = esc(ui.t("この内容を署名・暗号化して送信します。よろしいですか？", "Sign, encrypt and send this to the partner?")),
        csrf = ui.csrf_field(),
        pid = esc(&patient),
        pname = esc(&name),
        lto = esc(ui.t("送り先", "To")),
        lpat = esc(ui.t("患者", "Patient")),
        ldocs = esc(ui.t("送る記録", "Records")),
        dl = ui.t("2. 送る記録", "2. Records to send"),
        docs = if docs.is_empty() { format!("<p class=\"muted\">{}</p>", ui.t("記録がありません（送り状だけを送れます）", "No records (you can send a letter only)")) } else { docs },
        tl = ui.t("文書の表題", "Title of the document"),
        tv = esc(ui.t("診療情報提供書", "Referral letter")),
        nl = ui.t("本文（紹介状の文面など）", "Text (the letter)"),
        pl = ui.t("3. 送り先（登録済みの連携先）", "3. Recipient (a registered partner)"),
        popts = popts,
        prl = ui.t("目的", "Purpose"),
        prs = PURPOSES.iter().map(|(v, ja, en)| format!("<option value=\"{v}\">{}</option>", ui.t(ja, en))).collect::<String>(),
        bl = ui.t("法的根拠", "Legal basis"),
        bs = BASES.iter().map(|(v, ja, en)| format!("<option value=\"{v}\">{}</option>", ui.t(ja, en))).collect::<String>(),
        jl = ui.t("根拠の説明（生命・身体の保護の場合は必須）", "Justification (required for protection of life)"),
        hint = ui.t("送信前に、連携先の登録、目的、同意または法的根拠が確認されます。文書は当院の鍵で署名され、相手の証明書で暗号化されます。", "Before sending, the partner's registration, the purpose and the consent or legal basis are checked. The document is signed with our key and encrypted to the partner's certificate."),
        b = ui.t("署名・暗号化して送信", "Sign, encrypt and send"),
    ));
    ui.page(ui.t("情報交換", "Exchange"), &body)
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
            Err(e) => {
                let mut body = tabs(&ui);
                body.push_str(&notice("error", &e.message()));
                body.push_str(&format!(
                    "<p><a href=\"/ui/exchange?patient={}\">{}</a></p>",
                    enc(field(&f, "patient")),
                    ui.t("送信画面に戻る", "Back to the form")
                ));
                Err(Box::new(ui.page(ui.t("送信できませんでした", "Not sent"), &body)))
            }
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
    let mut body = tabs(&ui);
    if q.contains_key("send") && r.ok() {
        body.push_str(&notice(
            "ok",
            ui.t(
                "送信キューに入れました。配達と受領確認（署名付きMDN）は記録で確認できます。",
                "Queued. Delivery and the signed receipt (MDN) show in the ledger.",
            ),
        ));
    }
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("送受信の記録", "Message ledger"), &body);
    }
    body.push_str(&format!(
        "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        ui.t("日時", "Created"),
        ui.t("方向", "Direction"),
        ui.t("連携先", "Partner"),
        ui.t("患者", "Patient"),
        ui.t("目的", "Purpose"),
        ui.t("状態", "State"),
        ui.t("作成者", "By")
    ));
    for m in r.body["messages"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<tr><td><a href=\"/ui/exchange/messages/{id}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(&m["created_at"], off),
            if m["direction"] == "out" { ui.t("送信", "out") } else { ui.t("受信", "in") },
            ev(&m["partner"]),
            ev(&m["patient"]),
            ev(&m["purpose"]),
            state_badge(&ui, m["state"].as_str().unwrap_or("")),
            ev(&m["created_by"]),
            id = enc(m["id"].as_str().unwrap_or("")),
        ));
    }
    body.push_str("</tbody></table>");
    if ui.may(Operation::ExchangeMessageReadAll) {
        body.push_str(&format!(
            "<p class=\"muted\">{}: <code>GET /api/v1/exchange/ledger?format=csv</code></p>",
            ui.t("契約見直し用の台帳エクスポート（CSV/NDJSON）", "Ledger export for contract reviews (CSV/NDJSON)")
        ));
    }
    ui.page(ui.t("送受信の記録", "Message ledger"), &body)
}

pub(crate) async fn message(ui: Ui, Path(id): Path<String>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(send::show(&ui.svc, &ui.actor, &id).await);
    let mut body = tabs(&ui);
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("メッセージ", "Message"), &body);
    }
    let m = &r.body;
    body.push_str(&format!(
        "<div class=\"card\"><p>{}: {}</p><p>{}: {} · {}: {} · {}: {}</p><p>{}: {} · MIC: <code>{}</code></p>{}</div>",
        ui.t("状態", "State"),
        state_badge(&ui, m["state"].as_str().unwrap_or("")),
        ui.t("連携先", "Partner"),
        ev(&m["partner"]),
        ui.t("患者", "Patient"),
        ev(&m["patient"]),
        ui.t("目的", "Purpose"),
        ev(&m["purpose"]),
        ui.t("根拠", "Basis"),
        esc(&m["basis"].to_string()),
        ev(&m["mic"]),
        m["failure"]
            .as_object()
            .map(|f| notice(
                "error",
                &format!(
                    "{}: {}",
                    f.get("segment").and_then(Value::as_str).unwrap_or(""),
                    f.get("reason").and_then(Value::as_str).unwrap_or("")
                )
            ))
            .unwrap_or_default()
    ));
    body.push_str(&format!(
        "<h2>{}</h2><table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        ui.t("経路と責任の記録（各段階）", "Hops and responsibility"),
        ui.t("日時", "Time"),
        ui.t("段階", "Hop"),
        ui.t("責任を持つ者", "Responsible party"),
        ui.t("詳細", "Detail")
    ));
    for h in m["hops"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            when(&h["at"], off),
            ev(&h["hop"]),
            ev(&h["party"]),
            esc(&h["detail"].to_string())
        ));
    }
    body.push_str("</tbody></table>");
    if let Some(t) = m.get("partner_terms").filter(|t| !t.is_null()) {
        body.push_str(&format!(
            "<h2>{}</h2><pre>{}</pre>",
            ui.t("送信時点の連携先との取り決め", "The partner's terms at the time"),
            esc(&serde_json::to_string_pretty(t).unwrap_or_default())
        ));
    }
    ui.page(&format!("{} {}", ui.t("メッセージ", "Message"), id), &body)
}

pub(crate) async fn inbound(ui: Ui) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(inb::list(&ui.svc, &ui.actor, Some("unmatched".into())).await.map(|i| json!({"inbound": i})));
    let mut body = tabs(&ui);
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("受信文書の患者照合", "Inbound documents"), &body);
    }
    let items: Vec<&Value> = r.body["inbound"].as_array().into_iter().flatten().collect();
    if items.is_empty() {
        body.push_str(&format!(
            "<p class=\"muted\">{}</p>",
            ui.t("照合待ちの受信文書はありません。", "No received document awaits matching.")
        ));
    }
    for ib in items {
        let s = &ib["summary"];
        let ids: Vec<String> = s["patient"]["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| format!("{} {}", ev(&i["system"]), ev(&i["value"])))
            .collect();
        let names: Vec<String> = s["patient"]["name"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                n["text"].as_str().map(esc).unwrap_or_else(|| format!("{} {}", ev(&n["family"]), ev(&n["given"][0])))
            })
            .collect();
        let msg = ib["message"].as_str().unwrap_or("");
        body.push_str(&format!(
            r#"<section class="card"><h2>{title}</h2><p>{dl}: {date} · {ml}: <a href="/ui/exchange/messages/{mid}">{mide}</a></p>
<p>{pl}: {names} · {bl}: {birth} · {gl}: {gender}</p><p class="muted">{il}: {ids}</p>
<form method="post" action="/ui/exchange/inbound/{mid}/match">{csrf}<label for="p-{mide}">{ml2}</label><input id="p-{mide}" name="patient" type="text" required> <button type="submit">{b}</button></form></section>"#,
            title = ev(&s["title"]),
            dl = ui.t("文書日付", "Dated"),
            date = when(&s["date"], off),
            ml = ui.t("メッセージ", "Message"),
            mid = enc(msg),
            mide = esc(msg),
            pl = ui.t("文書上の患者", "Patient in the document"),
            names = names.join(" / "),
            bl = ui.t("生年月日", "born"),
            birth = ev(&s["patient"]["birthDate"]),
            gl = ui.t("性別", "sex"),
            gender = ev(&s["patient"]["gender"]),
            il = ui.t("識別子", "Identifiers"),
            ids = ids.join(", "),
            csrf = ui.csrf_field(),
            ml2 = ui.t("当院の患者ID（患者検索で確認）", "Our patient id (check with patient search)"),
            b = ui.t("この患者に紐づける", "File under this patient"),
        ));
    }
    ui.page(ui.t("受信文書の患者照合", "Inbound documents"), &body)
}

pub(crate) async fn match_post(ui: Ui, Path(message): Path<String>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let patient = field(&f, "patient").trim().trim_start_matches("Patient/").to_owned();
    let r = Api::of(inb::file(&ui.svc, &ui.actor, &message, inb::FileInbound { patient }).await);
    if !r.ok() {
        return ui.page(
            ui.t("受信文書の患者照合", "Inbound documents"),
            &format!("{}{}", tabs(&ui), notice("error", &r.message())),
        );
    }
    Redirect::to("/ui/exchange/inbound").into_response()
}

pub(crate) async fn partners(ui: Ui) -> Response {
    let r = Api::of(parts::list(&ui.svc, &ui.actor).await.map(|p| json!({"partners": p})));
    let mut body = tabs(&ui);
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("連携先", "Partners"), &body);
    }
    body.push_str(&format!(
        "<table><thead><tr><th>ID</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        ui.t("名称", "Name"),
        ui.t("関係", "Relationship"),
        ui.t("状態", "Status"),
        ui.t("目的", "Purposes"),
        ui.t("契約", "Contract"),
        ui.t("期限が近い証明書", "Certificates expiring soon")
    ));
    for p in r.body["partners"].as_array().into_iter().flatten() {
        let exp: Vec<String> = p["expiring_certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("<span class=\"badge red\">{} {}</span>", ev(&c["role"]), ev(&c["not_after"])))
            .collect();
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ev(&p["id"]),
            ev(&p["name"]),
            ev(&p["relationship"]),
            ev(&p["status"]),
            p["purposes"].as_array().into_iter().flatten().map(ev).collect::<Vec<_>>().join(", "),
            ev(&p["contract"]["reference"]),
            if exp.is_empty() { "—".into() } else { exp.join(" ") }
        ));
    }
    body.push_str("</tbody></table>");
    body.push_str(&format!(
        "<p class=\"muted\">{}</p>",
        ui.t(
            "連携先の登録・変更は `mamori partner` コマンドまたは API で行い、すべて版管理され監査されます。",
            "Partners are registered and changed with `mamori partner` or the API; every version is kept and audited."
        )
    ));
    ui.page(ui.t("連携先", "Partners"), &body)
}
