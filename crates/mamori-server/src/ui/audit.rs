//! Auditor views: the signed checkpoint and verification, accesses per
//! day, the audit log search, "who looked at this patient" (printable),
//! and the break-glass and maintenance review queues.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use mamori_service::{audit, breakglass, maintenance, Services};
use serde_json::{json, Value};

use super::codes;
use super::html::{data, day_bars, notice, tx, when};
use super::{cmd, field, form, html, Api, Markup, Ui};

fn opt(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/ui/audit", get(overview))
        .route("/ui/audit/verify", post(verify))
        .route("/ui/audit/search", get(search))
        .route("/ui/audit/patient", get(patient_report))
        .route("/ui/audit/break-glass", get(break_glass))
        .route("/ui/audit/break-glass/{id}", post(break_glass_review))
        .route("/ui/audit/maintenance", get(maintenance))
        .route("/ui/audit/maintenance/{id}", post(maintenance_review))
}

fn tabs(ui: &Ui) -> Markup {
    let items = [
        ("/ui/audit", ui.t("概要", "Overview")),
        ("/ui/audit/search", ui.t("ログ検索", "Search the log")),
        ("/ui/audit/patient", ui.t("患者別アクセス記録", "Who looked at a patient")),
        ("/ui/audit/break-glass", ui.t("緊急アクセスの確認", "Break-glass reviews")),
        ("/ui/audit/maintenance", ui.t("保守作業の確認", "Maintenance reviews")),
        ("/ui/merge/reviews", ui.t("患者統合の確認", "Merge reviews")),
    ];
    super::html::tabs(ui, &items)
}

fn q(params: &HashMap<String, String>, k: &str) -> String {
    params.get(k).map(|s| s.trim().to_owned()).unwrap_or_default()
}

pub(crate) async fn overview(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let verified = ui.flash_markup(&q);
    let cp = Api::of(audit::latest(&ui.svc).await);
    let daily = Api::audited(audit::report(&ui.svc, &ui.actor, "daily", audit::ReportQuery::default()).await);
    // Every day of the period, zero where nothing happened.
    let have: Vec<Value> = daily.body["days"].as_array().cloned().unwrap_or_default();
    let now = ui.svc.now().micros() + ui.svc.cfg.institution.utc_offset_minutes * 60_000_000;
    let days: Vec<Value> = (0..30)
        .rev()
        .map(|back| {
            let (y, m, d) = mamori_core::time::Timestamp(now - back * 86_400_000_000).ymd();
            let day = format!("{y:04}-{m:02}-{d:02}");
            have.iter()
                .find(|x| x["day"] == day.as_str())
                .cloned()
                .unwrap_or_else(|| json!({"day": day, "total": 0, "denied": 0, "break_glass": 0, "emergency": 0}))
        })
        .collect();
    let body = html! {
        (tabs(&ui))
        @if let Some(v) = &verified { (v) }
        h2 { (ui.t("最新の署名付きチェックポイント", "Latest signed checkpoint")) }
        @if cp.ok() { pre.checkpoint { (tx(&cp.body)) } } @else { (notice("error", &ui.why(&cp))) }
        form method="post" action="/ui/audit/verify" {
            (ui.csrf_field())
            button type="submit" { (ui.t("監査ログ全体を今すぐ検証", "Verify the whole audit log now")) }
            " " span.muted { (ui.t("全イベントからツリーを再計算し、すべてのチェックポイントの署名と整合性を確認します。", "Recomputes the tree from every event and checks every checkpoint's signature and consistency.")) }
        }
        h2 { (ui.t("日別アクセス数（30日）", "Accesses per day (30 days)")) }
        @if daily.ok() {
            figure.daybars {
                (day_bars(&days, ui.t("件", "events")))
                figcaption {
                    span.legend.total { "■" } " " (ui.t("全体", "all")) " "
                    span.legend.denied { "■" } " " (ui.t("拒否", "denied")) " "
                    span.legend.bg { "■" } " " (ui.t("緊急アクセス", "break-glass"))
                }
            }
            table.stack {
                thead { tr { th { (ui.t("日付", "Day")) } th { (ui.t("件数", "Events")) } th { (ui.t("拒否", "Denied")) } th { (ui.t("緊急アクセス", "Break-glass")) } th { (ui.t("非常時診療", "Emergency care")) } } }
                tbody {
                    @for d in days.iter().rev().filter(|d| d["total"].as_u64().unwrap_or(0) > 0) {
                        tr.hl[d["denied"].as_u64().unwrap_or(0) > 0 || d["break_glass"].as_u64().unwrap_or(0) > 0] {
                            td { (tx(&d["day"])) } td { (tx(&d["total"])) } td { (tx(&d["denied"])) } td { (tx(&d["break_glass"])) } td { (tx(&d["emergency"])) }
                        }
                    }
                }
            }
        } @else {
            (notice("error", &ui.why(&daily)))
        }
    };
    ui.page(ui.t("監査", "Audit"), body)
}

pub(crate) async fn verify(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    // Post/Redirect/Get: the result is shown once on the overview, so a
    // reload of it does not run the verification again.
    let r = Api::of(audit::verify_live(&ui.svc, &ui.actor).await);
    let result = html! {
        h2 { (ui.t("監査ログの検証結果", "Audit log verification")) }
        @if !r.ok() {
            (notice("error", &ui.why(&r)))
        } @else if r.body["ok"] == true {
            (notice("ok", &format!(
                "{} — {} {}, {} {}, {} {}, {:.2} s",
                ui.t("検証に成功しました。改ざんは検出されませんでした", "Verified: no tampering detected"),
                r.body["events"],
                ui.t("イベント", "events"),
                r.body["checkpoints"],
                ui.t("チェックポイント", "checkpoints"),
                r.body["records"].as_u64().unwrap_or(0),
                ui.t("件の診療記録の版（内容のハッシュを照合）", "record versions (contents matched)"),
                r.body["seconds"].as_f64().unwrap_or(0.0)
            )))
            p { (ui.t("ルートハッシュ", "Root hash")) ": " code { (tx(&r.body["root"])) } }
        } @else {
            (notice("error", ui.t("検証に失敗しました。監査ログが改ざんされた可能性があります。直ちに個人情報保護責任者とシステム管理者に連絡してください。", "Verification FAILED: the audit log may have been tampered with. Call the privacy officer and the system administrator now.")))
            ul { @for f in r.body["findings"].as_array().into_iter().flatten() { li { (tx(f)) } } }
            p { (ui.t("最後に正しかったチェックポイント", "Last good checkpoint")) ": " (tx(&r.body["last_good_checkpoint"])) }
        }
    };
    match ui.flash_markup_to("/ui/audit", result) {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(page) => *page,
    }
}

fn events_table(ui: &Ui, events: &[Value], off: i64) -> Markup {
    let cols = [
        "#",
        ui.t("日時", "Time"),
        ui.t("利用者", "User"),
        ui.t("操作", "Action"),
        ui.t("対象", "Resource"),
        ui.t("患者", "Patients"),
        ui.t("目的", "Purpose"),
        ui.t("結果", "Outcome"),
    ];
    html! {
        table.stack.events {
            thead { tr { @for c in cols { th { (c) } } } }
            tbody {
                @for e in events {
                    @let status = e["status"].as_u64().unwrap_or(0);
                    @let purpose = e["purpose"].as_str().unwrap_or("");
                    @let cls = if status == 401 || status == 403 { Some("denied") } else if purpose == "BTG" { Some("bg") } else { None };
                    tr class=[cls] {
                        td data-label=(cols[0]) { (tx(&e["index"])) }
                        td data-label=(cols[1]) { (when(&e["time"], off)) }
                        td data-label=(cols[2]) {
                            (tx(&e["user"]))
                            @if let Some(d) = e["declared"].as_str() { " (" (ui.t("本人:", "person:")) " " (d) ")" }
                        }
                        td data-label=(cols[3]) { (codes::action(ui.lang, e["action"].as_str().unwrap_or(""))) }
                        td data-label=(cols[4]) { (tx(&e["resource"])) }
                        td data-label=(cols[5]) { (e["patients"].as_array().into_iter().flatten().map(tx).collect::<Vec<_>>().join(", ")) }
                        td data-label=(cols[6]) { @if !purpose.is_empty() { (codes::purpose(ui.lang, purpose)) } }
                        td data-label=(cols[7]) {
                            (codes::outcome(ui.lang, status))
                            @if let Some(b) = e["basis"].as_str() { br; span.muted { (codes::basis(ui.lang, b)) } }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) async fn search(ui: Ui, Query(p): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let (patient, user, from, to, action, purpose) =
        (q(&p, "patient"), q(&p, "user"), q(&p, "from"), q(&p, "to"), q(&p, "action"), q(&p, "purpose"));
    let denied = p.get("denied").is_some_and(|v| v == "1");
    let purposes = ["TREAT", "ETREAT", "BTG", "HOPERAT", "HMARKT", "PATRQT", "HRESCH"];
    let form = html! {
        form.card method="get" action="/ui/audit/search" {
            div.grid {
                div { label for="patient" { (ui.t("患者IDまたはカルテ番号", "Patient id or record number")) } input #patient name="patient" type="text" value=(patient); }
                div { label for="user" { (ui.t("利用者", "User")) } input #user name="user" type="text" value=(user); }
                div { label for="from" { (ui.t("開始日", "From")) } input #from name="from" type="date" value=(from); }
                div { label for="to" { (ui.t("終了日", "To")) } input #to name="to" type="date" value=(to); }
                div { label for="action" { (ui.t("操作（コード、カンマ区切り）", "Actions (codes, comma-separated)")) } input #action name="action" type="text" value=(action) placeholder="read, search, break-glass-start"; }
                div {
                    label for="purpose" { (ui.t("目的", "Purpose of use")) }
                    select #purpose name="purpose" {
                        option value="" { "—" }
                        @for x in purposes { option value=(x) selected[x == purpose] { (codes::purpose(ui.lang, x)) } }
                    }
                }
            }
            label.check { input type="checkbox" name="denied" value="1" checked[denied]; " " (ui.t("拒否されたアクセスのみ", "Refused accesses only")) }
            p { button type="submit" { (ui.t("検索", "Search")) } }
        }
    };
    let mut result = html! {};
    if !p.is_empty() {
        let kind = if denied { "denied" } else { "search" };
        let rq = audit::ReportQuery {
            patient: opt(&patient),
            user: opt(&user),
            from: opt(&from),
            to: opt(&to),
            limit: Some(500),
            action: opt(&action),
            purpose: opt(&purpose),
        };
        let r = Api::audited(audit::report(&ui.svc, &ui.actor, kind, rq).await);
        result = if r.ok() {
            let events: Vec<Value> = r.body["events"].as_array().cloned().unwrap_or_default();
            html! {
                p.muted { (tx(&r.body["total"])) " " (ui.t("件", "events")) " (" (events.len()) " " (ui.t("件を表示", "shown")) ")" }
                (events_table(&ui, &events, off))
            }
        } else {
            notice("error", &ui.why(&r))
        };
    }
    ui.page(ui.t("監査ログ検索", "Audit log search"), html! { (tabs(&ui)) (form) (result) })
}

pub(crate) async fn patient_report(ui: Ui, Query(p): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let (patient, from, to) = (q(&p, "patient"), q(&p, "from"), q(&p, "to"));
    let form = html! {
        form.card method="get" action="/ui/audit/patient" {
            div.grid {
                div { label for="patient" { (ui.t("患者IDまたはカルテ番号", "Patient id or record number")) } input #patient name="patient" type="text" value=(patient) required; }
                div { label for="from" { (ui.t("開始日", "From")) } input #from name="from" type="date" value=(from); }
                div { label for="to" { (ui.t("終了日", "To")) } input #to name="to" type="date" value=(to); }
            }
            p { button type="submit" { (ui.t("作成", "Make the report")) } }
        }
    };
    let mut result = html! {};
    if !patient.is_empty() {
        let rq = audit::ReportQuery {
            patient: opt(&patient),
            from: opt(&from),
            to: opt(&to),
            limit: Some(10_000),
            ..audit::ReportQuery::default()
        };
        let r = Api::audited(audit::report(&ui.svc, &ui.actor, "patient", rq).await);
        result = if !r.ok() {
            notice("error", &ui.why(&r))
        } else {
            let events: Vec<Value> = r.body["events"].as_array().cloned().unwrap_or_default();
            let typed_other = r.body["patient"].as_str() != Some(patient.trim().trim_start_matches("Patient/"));
            html! {
                article.document.report {
                    h2 {
                        (ui.t("診療記録へのアクセス記録", "Accesses to the record of")) " " (ui.t("患者ID", "patient")) " " (tx(&r.body["patient"]))
                        @if typed_other { " (" (ui.t("入力", "typed")) " " (patient) ")" }
                    }
                    dl.facts {
                        dt { (ui.t("期間", "Period")) } dd { (when(&r.body["from"], off)) " — " (when(&r.body["to"], off)) }
                        dt { (ui.t("件数", "Events")) } dd { (tx(&r.body["total"])) }
                        dt { (ui.t("発行", "Issued by")) } dd { (ui.svc.cfg.institution.name) }
                    }
                    p.noprint { button.secondary type="button" data-print { (ui.t("印刷", "Print")) } }
                    (events_table(&ui, &events, off))
                    p.muted { (ui.t("この報告は改ざん検知可能な監査ログ（署名付きチェックポイント）から作成されました。緊急アクセスと拒否は色で示しています。", "Made from the tamper-evident audit log (signed checkpoints). Break-glass and refusals are highlighted.")) }
                }
            }
        };
    }
    ui.page(ui.t("患者別アクセス記録", "Who looked at this patient"), html! { (tabs(&ui)) (form) (result) })
}

pub(crate) async fn break_glass(ui: Ui, Query(p): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let state = p.get("review").cloned().unwrap_or_else(|| "pending".into());
    let r = Api::of(breakglass::list(&ui.svc, &ui.actor, Some(state.clone())).await.map(|g| json!({"grants": g})));
    let filters = html! {
        (tabs(&ui))
        p {
            a href="/ui/audit/break-glass?review=pending" { (codes::review(ui.lang, "pending")) } " · "
            a href="/ui/audit/break-glass?review=accepted" { (codes::review(ui.lang, "accepted")) } " · "
            a href="/ui/audit/break-glass?review=questioned" { (codes::review(ui.lang, "questioned")) }
        }
    };
    if !r.ok() {
        return ui.page(
            ui.t("緊急アクセスの確認", "Break-glass reviews"),
            html! { (filters) (notice("error", &ui.why(&r))) },
        );
    }
    let grants: Vec<&Value> = r.body["grants"].as_array().into_iter().flatten().collect();
    let me = ui.me["name"].as_str().unwrap_or("");
    let body = html! {
        (filters)
        @if grants.is_empty() { p.muted { (ui.t("該当する緊急アクセスはありません。", "No break-glass grants here.")) } }
        @for g in &grants {
            @let id = g["id"].as_i64().unwrap_or(0);
            @let end = if g["ended"].is_string() { &g["ended"] } else { &g["expires"] };
            section.card.document id={ "grant-" (id) } {
                h2 { "#" (id) " — " (tx(&g["user"])) " → " (ui.t("患者", "patient")) " " (tx(&g["patient"])) }
                p { (ui.t("理由", "Reason")) ": " (tx(&g["reason"])) }
                p {
                    (ui.t("期間", "Period")) ": " (when(&g["started"], off)) " — " (when(end, off))
                    " (" (tx(&g["minutes"])) (ui.t("分", " min")) ")"
                    @if g["live"] == true { " " span.badge.red { (ui.t("継続中", "live")) } }
                }
                p.noprint {
                    a href={ "/ui/audit/search?user=" (mamori_service::records::enc(g["user"].as_str().unwrap_or(""))) "&patient=" (mamori_service::records::enc(g["patient"].as_str().unwrap_or(""))) } {
                        (ui.t("この利用者がこの患者に行った操作を見る", "See what this user did with this patient"))
                    }
                }
                @if g["review"] == "pending" {
                    @if g["user"] == me {
                        (notice("info", ui.t("自分の緊急アクセスは確認できません。", "You cannot review your own break-glass use.")))
                    } @else {
                        form method="post" action={ "/ui/audit/break-glass/" (id) } {
                            (ui.csrf_field())
                            label for={ "note-" (id) } { (ui.t("確認した内容（必須）", "What you checked (required)")) }
                            textarea id={ "note-" (id) } name="note" required minlength="5" {}
                            p {
                                button type="submit" name="outcome" value="accepted" { (ui.t("妥当と確認", "Accept")) } " "
                                button.danger type="submit" name="outcome" value="questioned" { (ui.t("疑義あり", "Question")) }
                            }
                        }
                    }
                } @else {
                    p {
                        (ui.t("確認結果", "Review")) ": " strong { (codes::review(ui.lang, g["review"].as_str().unwrap_or(""))) }
                        " — " (tx(&g["reviewed_by"])) " " (when(&g["reviewed_at"], off)) ": " (tx(&g["review_note"]))
                    }
                }
            }
        }
    };
    ui.page(ui.t("緊急アクセスの確認", "Break-glass reviews"), body)
}

pub(crate) async fn break_glass_review(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    ui.once(&f, || async {
        let r = match cmd(json!({"outcome": field(&f, "outcome"), "note": field(&f, "note")})) {
            Ok(req) => Api::of(breakglass::review(&ui.svc, &ui.actor, id, req).await),
            Err(e) => Api::of::<()>(Err(e)),
        };
        if r.ok() {
            return Ok("/ui/audit/break-glass".into());
        }
        Err(Box::new(ui.page(
            ui.t("緊急アクセスの確認", "Break-glass reviews"),
            html! {
                (notice("error", &ui.why(&r)))
                p { a href="/ui/audit/break-glass" { (ui.t("戻る", "Back")) } }
            },
        )))
    })
    .await
}

pub(crate) async fn maintenance(ui: Ui) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(
        maintenance::list_requests(&ui.svc, &ui.actor, None, Some("pending".into()))
            .await
            .map(|r| json!({"requests": r})),
    );
    if !r.ok() {
        return ui
            .page(ui.t("保守作業の確認", "Maintenance reviews"), html! { (tabs(&ui)) (notice("error", &ui.why(&r))) });
    }
    let reqs: Vec<&Value> = r.body["requests"].as_array().into_iter().flatten().collect();
    let body = html! {
        (tabs(&ui))
        @if reqs.is_empty() { p.muted { (ui.t("確認待ちの保守作業はありません。", "No maintenance sessions await review.")) } }
        @for m in &reqs {
            @let id = m["id"].as_i64().unwrap_or(0);
            section.card.document {
                h2 { "#" (id) " — " (tx(&m["person"])) @if m["review_overdue"] == true { " " span.badge.red { (ui.t("確認期限超過", "review overdue")) } } }
                p { (ui.t("理由", "Reason")) ": " (tx(&m["reason"])) }
                p { (ui.t("時間枠", "Window")) ": " (when(&m["start"], off)) " — " (when(&m["end"], off)) }
                p { (ui.t("範囲", "Scopes")) ": " (m["scopes"].as_array().into_iter().flatten().map(tx).collect::<Vec<_>>().join(", ")) }
                h3 { (ui.t("作業の要約", "Summary of the work")) }
                (data(ui.lang, &m["summary"]))
                form method="post" action={ "/ui/audit/maintenance/" (id) } {
                    (ui.csrf_field())
                    label for={ "mnote-" (id) } { (ui.t("確認した内容（必須）", "What you checked (required)")) }
                    textarea id={ "mnote-" (id) } name="note" required {}
                    p {
                        button type="submit" name="outcome" value="accepted" { (ui.t("妥当と確認", "Accept")) } " "
                        button.danger type="submit" name="outcome" value="questioned" { (ui.t("疑義あり", "Question")) }
                    }
                }
            }
        }
    };
    ui.page(ui.t("保守作業の確認", "Maintenance reviews"), body)
}

pub(crate) async fn maintenance_review(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let req = maintenance::Review { outcome: field(&f, "outcome").to_owned(), note: field(&f, "note").to_owned() };
    ui.once(&f, || async {
        let r = Api::of(maintenance::review(&ui.svc, &ui.actor, id, req).await);
        if r.ok() {
            Ok("/ui/audit/maintenance".into())
        } else {
            Err(Box::new(ui.page(ui.t("保守作業の確認", "Maintenance reviews"), notice("error", &ui.why(&r)))))
        }
    })
    .await
}
