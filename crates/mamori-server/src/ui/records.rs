//! Records management screens: the merge review queue (auditors review a
//! merge made by someone else; records managers undo a mistaken one) and
//! paper-record transcription (what was written on paper during an
//! outage, entered with its original author and time and the person who
//! transcribes it).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use mamori_core::policy::Operation;
use mamori_service::continuity::{merge, reconcile};
use mamori_service::records::enc;
use mamori_service::Services;
use serde_json::{json, Value};

use super::codes;
use super::html::{notice, tx, when};
use super::{cmd, field, form, html, Api, Markup, Ui};

pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/ui/merge/reviews", get(merge_reviews))
        .route("/ui/merge/{id}/review", post(merge_review))
        .route("/ui/merge/{id}/undo", post(merge_undo))
        .route("/ui/transcribe", get(transcribe_page).post(transcribe_post))
}

// ---- merge review queue -----------------------------------------------------------------

pub(crate) async fn merge_reviews(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let show = q.get("show").map(String::as_str).unwrap_or("pending");
    let r = Api::of(merge::list(&ui.svc, &ui.actor, None).await.map(|m| json!({"merges": m})));
    let title = ui.t("患者統合の確認", "Merge reviews");
    if !r.ok() {
        return ui.page(title, notice("error", &ui.why(&r)));
    }
    let me = ui.me["name"].as_str().unwrap_or("");
    let all: Vec<&Value> = r.body["merges"].as_array().into_iter().flatten().collect();
    let shown: Vec<&&Value> =
        all.iter().filter(|m| if show == "pending" { m["reviewed_by"].is_null() } else { true }).collect();
    let reviewer = ui.may(Operation::MergeReview);
    let body = html! {
        p {
            a href="/ui/merge/reviews?show=pending" aria-current=[(show == "pending").then_some("page")] { (ui.t("未確認", "pending")) }
            " · "
            a href="/ui/merge/reviews?show=all" aria-current=[(show != "pending").then_some("page")] { (ui.t("すべて", "all")) }
        }
        p.muted { (ui.t(
            "身元確認による患者統合は、統合した人とは別の監査担当・管理者が確認します。誤った統合は、その後に記録が変更されていなければ取り消せます。",
            "A merge made on identification is reviewed by an auditor or administrator other than who made it. A mistaken merge can be undone while its records are unchanged since."
        )) }
        @if shown.is_empty() { (notice("ok", ui.t("確認待ちの統合はありません。", "No merge awaits review."))) }
        @for m in &shown {
            @let id = m["id"].as_i64().unwrap_or(0);
            section.card.document id={ "merge-" (id) } {
                h2 {
                    "#" (id) " — " (ui.t("統合元", "from")) " " a href={ "/ui/patients/" (tx(&m["source"])) } { (tx(&m["source"])) }
                    " → " (ui.t("統合先", "into")) " " a href={ "/ui/patients/" (tx(&m["target"])) } { (tx(&m["target"])) }
                    @if m["state"] == "unmerged" { " " span.badge.black { (ui.t("取り消し済み", "undone")) } }
                }
                dl.facts {
                    dt { (ui.t("統合した人", "Merged by")) } dd { (tx(&m["by_user"])) " " (when(&m["at"], off)) }
                    dt { (ui.t("確認の根拠", "How the identity was confirmed")) } dd { (tx(&m["reason"])) }
                    dt { (ui.t("書き換えた記録", "Records rewritten")) } dd { (m["changes"].as_array().map_or(0, Vec::len)) }
                    @if !m["undone_by"].is_null() {
                        dt { (ui.t("取り消し", "Undone")) } dd { (tx(&m["undone_by"])) " " (when(&m["undone_at"], off)) }
                    }
                    dt { (ui.t("確認", "Review")) }
                    dd {
                        @if m["reviewed_by"].is_null() { (codes::review(ui.lang, "pending")) }
                        @else { (tx(&m["reviewed_by"])) " " (when(&m["reviewed_at"], off)) ": " (tx(&m["review"])) }
                    }
                }
                @if m["reviewed_by"].is_null() && reviewer {
                    @if m["by_user"] == me {
                        (notice("info", ui.t("自分が行った統合は確認できません。", "You cannot review a merge you made.")))
                    } @else {
                        form method="post" action={ "/ui/merge/" (id) "/review" } {
                            (ui.csrf_field())
                            label for={ "review-" (id) } { (ui.t("確認した内容（必須）", "What you checked (required)")) }
                            textarea id={ "review-" (id) } name="note" required minlength="5" {}
                            p { button type="submit" { (ui.t("確認済みにする", "Mark reviewed")) } }
                        }
                    }
                }
                @if m["state"] == "merged" {
                    details.noprint {
                        summary { (ui.t("この統合を取り消す", "Undo this merge")) }
                        form method="post" action={ "/ui/merge/" (id) "/undo" } data-confirm=(ui.t("統合を取り消し、両方の患者の記録を統合前の版に戻します。よろしいですか？", "Undo the merge and return both patients' records to their versions before it?")) {
                            (ui.csrf_field())
                            label for={ "undo-" (id) } { (ui.t("取り消す理由（必須）", "Why (required)")) }
                            input id={ "undo-" (id) } name="reason" type="text" required minlength="5";
                            p { button.danger type="submit" { (ui.t("統合を取り消す", "Undo the merge")) } }
                        }
                    }
                }
            }
        }
    };
    ui.page(title, body)
}

fn merge_refusal(ui: &Ui, r: &Api) -> Box<Response> {
    Box::new(ui.page(
        ui.t("患者統合の確認", "Merge reviews"),
        html! {
            (notice("error", &ui.why(r)))
            p { a href="/ui/merge/reviews" { (ui.t("戻る", "Back")) } }
        },
    ))
}

pub(crate) async fn merge_review(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    ui.once(&f, || async {
        let r =
            Api::of(merge::review(&ui.svc, &ui.actor, id, merge::Review { note: field(&f, "note").to_owned() }).await);
        if r.ok() {
            Ok(format!("/ui/merge/reviews#merge-{id}"))
        } else {
            Err(merge_refusal(&ui, &r))
        }
    })
    .await
}

pub(crate) async fn merge_undo(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    ui.once(&f, || async {
        let r =
            Api::of(merge::undo(&ui.svc, &ui.actor, id, merge::Undo { reason: field(&f, "reason").to_owned() }).await);
        if r.ok() {
            Ok("/ui/merge/reviews?show=all".into())
        } else {
            Err(merge_refusal(&ui, &r))
        }
    })
    .await
}

// ---- paper-record transcription ---------------------------------------------------------

/// The vital signs a paper record usually carries: LOINC code, Japanese
/// and English names, UCUM unit, and the unit as people write it.
const VITALS: [(&str, &str, &str, &str, &str); 7] = [
    ("8310-5", "体温", "Body temperature", "Cel", "℃"),
    ("8480-6", "収縮期血圧", "Systolic blood pressure", "mm[Hg]", "mmHg"),
    ("8462-4", "拡張期血圧", "Diastolic blood pressure", "mm[Hg]", "mmHg"),
    ("8867-4", "脈拍", "Heart rate", "/min", "/min"),
    ("9279-1", "呼吸数", "Respiratory rate", "/min", "/min"),
    ("59408-5", "SpO2", "Oxygen saturation (SpO2)", "%", "%"),
    ("29463-7", "体重", "Body weight", "kg", "kg"),
];

/// The values typed into the transcription form, kept when it is shown
/// again.
#[derive(Default)]
struct Typed {
    patient: String,
    kind: String,
    vital: String,
    value: String,
    title: String,
    text: String,
    author: String,
    time: String,
    note: String,
}

impl Typed {
    fn of(f: &[(String, String)]) -> Typed {
        let g = |k: &str| field(f, k).trim().to_owned();
        Typed {
            patient: g("patient"),
            kind: g("kind"),
            vital: g("vital"),
            value: g("value"),
            title: g("title"),
            text: field(f, "text").to_owned(),
            author: g("original_author"),
            time: g("original_time"),
            note: g("note"),
        }
    }
}

fn transcribe_form(ui: &Ui, t: &Typed, err: Option<&str>) -> Response {
    let note_kind = t.kind == "note";
    let body = html! {
        @if let Some(e) = err { (notice("error", e)) }
        p.muted { (ui.t(
            "停電・システム停止中に紙に書いた記録を入力します。元の記録者と記録した時刻、転記するあなたの名前が、記録の由来（Provenance）として残ります。",
            "Enter what was written on paper during an outage. The original author and time, and you as the transcriber, are kept with it (its Provenance)."
        )) }
        form.card method="post" action="/ui/transcribe" {
            (ui.csrf_field())
            label for="patient" { (ui.t("患者IDまたはカルテ番号", "Patient id or record number")) }
            input #patient name="patient" type="text" required value=(t.patient);
            fieldset {
                legend { (ui.t("記録の種類", "Kind of record")) }
                label.check { input type="radio" name="kind" value="vital" checked[!note_kind]; " " (ui.t("バイタルサイン", "Vital sign")) }
                label.check { input type="radio" name="kind" value="note" checked[note_kind]; " " (ui.t("経過記録（文章）", "Progress note (text)")) }
            }
            div.grid {
                div {
                    label for="vital" { (ui.t("項目（バイタルサインの場合）", "Item (for a vital sign)")) }
                    select #vital name="vital" {
                        @for (code, ja, en, _, unit) in VITALS {
                            option value=(code) selected[t.vital == code] { (ui.t(ja, en)) " (" (unit) ")" }
                        }
                    }
                }
                div { label for="value" { (ui.t("値", "Value")) } input #value name="value" type="text" inputmode="decimal" value=(t.value); }
            }
            label for="title" { (ui.t("表題（経過記録の場合）", "Title (for a note)")) }
            input #title name="title" type="text" value=(t.title);
            label for="text" { (ui.t("本文（経過記録の場合）", "Text (for a note)")) }
            textarea #text name="text" { (t.text) }
            div.grid {
                div { label for="original_author" { (ui.t("元の記録者（必須）", "Original author (required)")) } input #original_author name="original_author" type="text" required value=(t.author); }
                div { label for="original_time" { (ui.t("記録した日時（必須）", "When it was written (required)")) } input #original_time name="original_time" type="datetime-local" required value=(t.time); }
            }
            label for="note" { (ui.t("転記のメモ", "Note on the transcription")) }
            input #note name="note" type="text" value=(t.note);
            p { button type="submit" { (ui.t("転記する", "Transcribe")) } }
        }
    };
    ui.page(ui.t("紙記録の転記", "Transcribe a paper record"), body)
}

pub(crate) async fn transcribe_page(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let t = Typed { patient: q.get("patient").cloned().unwrap_or_default(), ..Typed::default() };
    transcribe_form(&ui, &t, None)
}

/// A `datetime-local` value (`2026-12-04T10:30`) as a FHIR dateTime in
/// the institution's time zone.
fn local_to_fhir(v: &str, offset_min: i64) -> Option<String> {
    let (d, t) = v.split_once('T')?;
    let t = if t.len() == 5 { format!("{t}:00") } else { t.to_owned() };
    let sign = if offset_min < 0 { '-' } else { '+' };
    let s = format!("{d}T{t}{sign}{:02}:{:02}", offset_min.abs() / 60, offset_min.abs() % 60);
    mamori_core::time::parse_date_time(&s).map(|_| s)
}

pub(crate) async fn transcribe_post(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let t = Typed::of(&f);
    ui.once(&f, || async {
        let refuse = |msg: &str| Box::new(transcribe_form(&ui, &t, Some(msg)));
        let patient = ui.patient_id(&t.patient).await.map_err(|m| refuse(&m))?;
        let off = ui.svc.cfg.institution.utc_offset_minutes;
        let Some(when) = local_to_fhir(&t.time, off) else {
            return Err(refuse(ui.t("記録した日時を入力してください。", "Give the date and time it was written.")));
        };
        let subject = json!({"reference": format!("Patient/{patient}")});
        let resource = if t.kind == "note" {
            if t.text.trim().is_empty() {
                return Err(refuse(ui.t("経過記録の本文を入力してください。", "Give the note's text.")));
            }
            let title = if t.title.is_empty() { ui.t("紙記録からの転記", "Transcribed from paper").to_owned() } else { t.title.clone() };
            json!({
                "resourceType": "DocumentReference", "status": "current",
                "type": {"text": title}, "subject": subject, "date": when, "description": title,
                "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "title": "transcription.txt",
                    "data": mamori_service::continuity::container::b64(t.text.as_bytes())}}]
            })
        } else {
            let Some((code, ja, en, ucum, unit)) = VITALS.iter().find(|v| v.0 == t.vital) else {
                return Err(refuse(ui.t("項目を選んでください。", "Choose an item.")));
            };
            let Ok(value) = t.value.replace(',', ".").parse::<f64>() else {
                return Err(refuse(ui.t("値は数値で入力してください。", "The value must be a number.")));
            };
            json!({
                "resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": en}], "text": ja},
                "subject": subject, "effectiveDateTime": when,
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum}
            })
        };
        let note = (!t.note.is_empty()).then(|| t.note.clone());
        let req = json!({"resource": resource, "original_author": t.author, "original_time": when, "note": note});
        let r = match cmd(req) {
            Ok(req) => Api::of(reconcile::transcribe(&ui.svc, &ui.actor, req).await),
            Err(e) => Api::of::<()>(Err(e)),
        };
        if r.ok() {
            Ok(format!("/ui/patients/{}?transcribed=1", enc(&patient)))
        } else {
            Err(refuse(&ui.why(&r)))
        }
    })
    .await
}

/// The link a chart shows to the transcription form for its patient.
pub(crate) fn transcribe_link(ui: &Ui, patient: &str) -> Markup {
    html! { a href={ "/ui/transcribe?patient=" (enc(patient)) } { (ui.t("紙の記録を転記", "Transcribe a paper record")) } }
}
