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

use super::html::{day_bars, ev, notice, when};
use super::{cmd, esc, field, form, Api, Ui};

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

fn tabs(ui: &Ui) -> String {
    let items = [
        ("/ui/audit", ui.t("概要", "Overview")),
        ("/ui/audit/search", ui.t("ログ検索", "Search the log")),
        ("/ui/audit/patient", ui.t("患者別アクセス記録", "Who looked at a patient")),
        ("/ui/audit/break-glass", ui.t("緊急アクセスの確認", "Break-glass reviews")),
        ("/ui/audit/maintenance", ui.t("保守作業の確認", "Maintenance reviews")),
    ];
    super::html::tabs(ui, &items)
}

fn q(params: &HashMap<String, String>, k: &str) -> String {
    params.get(k).map(|s| s.trim().to_owned()).unwrap_or_default()
}

pub(crate) async fn overview(ui: Ui) -> Response {
    let mut body = tabs(&ui);
    let cp = Api::of(audit::latest(&ui.svc).await);
    body.push_str(&format!("<h2>{}</h2>", ui.t("最新の署名付きチェックポイント", "Latest signed checkpoint")));
    if cp.ok() {
        body.push_str(&format!("<pre class=\"checkpoint\">{}</pre>", ev(&cp.body)));
    } else {
        body.push_str(&notice("error", &cp.message()));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/ui/audit/verify\">{}<button type=\"submit\">{}</button> <span class=\"muted\">{}</span></form>",
        ui.csrf_field(),
        ui.t("監査ログ全体を今すぐ検証", "Verify the whole audit log now"),
        ui.t("全イベントからツリーを再計算し、すべてのチェックポイントの署名と整合性を確認します。", "Recomputes the tree from every event and checks every checkpoint's signature and consistency.")
    ));
    let daily = Api::audited(audit::report(&ui.svc, &ui.actor, "daily", audit::ReportQuery::default()).await);
    body.push_str(&format!("<h2>{}</h2>", ui.t("日別アクセス数（30日）", "Accesses per day (30 days)")));
    if daily.ok() {
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
        body.push_str(&format!(
            "<p>{} <span class=\"legend total\">■</span> {} <span class=\"legend denied\">■</span> {} <span class=\"legend bg\">■</span> {}</p>",
            day_bars(&days),
            ui.t("全体", "all"),
            ui.t("拒否", "denied"),
            ui.t("緊急アクセス", "break-glass")
        ));
        body.push_str(&format!(
            "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
            ui.t("日付", "Day"),
            ui.t("件数", "Events"),
            ui.t("拒否", "Denied"),
            ui.t("緊急アクセス", "Break-glass"),
            ui.t("非常時診療", "Emergency care")
        ));
        for d in days.iter().rev().filter(|d| d["total"].as_u64().unwrap_or(0) > 0) {
            let hl = if d["denied"].as_u64().unwrap_or(0) > 0 || d["break_glass"].as_u64().unwrap_or(0) > 0 {
                " class=\"hl\""
            } else {
                ""
            };
            body.push_str(&format!(
                "<tr{hl}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                ev(&d["day"]),
                ev(&d["total"]),
                ev(&d["denied"]),
                ev(&d["break_glass"]),
                ev(&d["emergency"])
            ));
        }
        body.push_str("</tbody></table>");
    } else {
        body.push_str(&notice("error", &daily.message()));
    }
    ui.page(ui.t("監査", "Audit"), &body)
}

pub(crate) async fn verify(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let r = Api::of(audit::verify_live(&ui.svc, &ui.actor).await);
    let mut body = tabs(&ui);
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
    } else if r.body["ok"] == true {
        body.push_str(&notice(
            "ok",
            &format!(
                "{} — {} {}, {} {}, {} {}, {:.2} s",
                ui.t("検証に成功しました。改ざんは検出されませんでした", "Verified: no tampering detected"),
                r.body["events"],
                ui.t("イベント", "events"),
                r.body["checkpoints"],
                ui.t("チェックポイント", "checkpoints"),
                r.body["records"].as_u64().unwrap_or(0),
                ui.t("件の診療記録の版（内容のハッシュを照合）", "record versions (contents matched)"),
                r.body["seconds"].as_f64().unwrap_or(0.0)
            ),
        ));
        body.push_str(&format!("<p>{}: <code>{}</code></p>", ui.t("ルートハッシュ", "Root hash"), ev(&r.body["root"])));
    } else {
        body.push_str(&notice("error", ui.t("検証に失敗しました。監査ログが改ざんされた可能性があります。直ちに個人情報保護責任者とシステム管理者に連絡してください。", "Verification FAILED: the audit log may have been tampered with. Call the privacy officer and the system administrator now.")));
        body.push_str("<ul>");
        for f in r.body["findings"].as_array().into_iter().flatten() {
            body.push_str(&format!("<li>{}</li>", ev(f)));
        }
        body.push_str("</ul>");
        body.push_str(&format!(
            "<p>{}: {}</p>",
            ui.t("最後に正しかったチェックポイント", "Last good checkpoint"),
            ev(&r.body["last_good_checkpoint"])
        ));
    }
    ui.page(ui.t("監査ログの検証", "Audit log verification"), &body)
}

fn events_table(ui: &Ui, events: &[Value], off: i64) -> String {
    let mut out = format!(
        "<table><thead><tr><th>#</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        ui.t("日時", "Time"),
        ui.t("利用者", "User"),
        ui.t("操作", "Action"),
        ui.t("対象", "Resource"),
        ui.t("患者", "Patients"),
        ui.t("目的", "Purpose"),
        ui.t("結果", "Status")
    );
    for e in events {
        let status = e["status"].as_u64().unwrap_or(0);
        let purpose = e["purpose"].as_str().unwrap_or("");
        let cls = if status == 401 || status == 403 {
            " class=\"denied\""
        } else if purpose == "BTG" {
            " class=\"bg\""
        } else {
            ""
        };
        let who = match e["declared"].as_str() {
            Some(d) => format!("{} ({} {})", ev(&e["user"]), ui.t("本人:", "person:"), esc(d)),
            None => ev(&e["user"]),
        };
        let patients: Vec<String> = e["patients"].as_array().into_iter().flatten().map(ev).collect();
        out.push_str(&format!(
            "<tr{cls}><td>{}</td><td>{}</td><td>{who}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{status}</td></tr>",
            ev(&e["index"]),
            when(&e["time"], off),
            ev(&e["action"]),
            ev(&e["resource"]),
            patients.join(", "),
            esc(purpose)
        ));
    }
    out.push_str("</tbody></table>");
    out
}

pub(crate) async fn search(ui: Ui, Query(p): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let (patient, user, from, to, action, purpose) =
        (q(&p, "patient"), q(&p, "user"), q(&p, "from"), q(&p, "to"), q(&p, "action"), q(&p, "purpose"));
    let denied = p.get("denied").is_some_and(|v| v == "1");
    let purposes = ["", "TREAT", "ETREAT", "BTG", "HOPERAT", "HMARKT", "PATRQT", "HRESCH"];
    let mut body = tabs(&ui);
    body.push_str(&format!(
        r#"<form method="get" action="/ui/audit/search" class="card"><div class="grid">
<div><label for="patient">{pl}</label><input id="patient" name="patient" type="text" value="{pv}"></div>
<div><label for="user">{ul}</label><input id="user" name="user" type="text" value="{uv}"></div>
<div><label for="from">{fl}</label><input id="from" name="from" type="date" value="{fv}"></div>
<div><label for="to">{tl}</label><input id="to" name="to" type="date" value="{tv}"></div>
<div><label for="action">{al}</label><input id="action" name="action" type="text" value="{av}" placeholder="read, search, break-glass"></div>
<div><label for="purpose">{prl}</label><select id="purpose" name="purpose">{popts}</select></div></div>
<label class="check"><input type="checkbox" name="denied" value="1"{dchk}> {dl}</label>
<p><button type="submit">{b}</button></p></form>"#,
        pl = ui.t("患者IDまたはカルテ番号", "Patient id or record number"),
        pv = esc(&patient),
        ul = ui.t("利用者", "User"),
        uv = esc(&user),
        fl = ui.t("開始日", "From"),
        fv = esc(&from),
        tl = ui.t("終了日", "To"),
        tv = esc(&to),
        al = ui.t("操作（カンマ区切り）", "Actions (comma-separated)"),
        av = esc(&action),
        prl = ui.t("目的", "Purpose of use"),
        popts = purposes
            .iter()
            .map(|x| format!("<option value=\"{x}\"{}>{}</option>", if *x == purpose { " selected" } else { "" }, if x.is_empty() { "—" } else { x }))
            .collect::<String>(),
        dchk = if denied { " checked" } else { "" },
        dl = ui.t("拒否されたアクセスのみ", "Refused accesses only"),
        b = ui.t("検索", "Search"),
    ));
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
        if r.ok() {
            let events: Vec<Value> = r.body["events"].as_array().cloned().unwrap_or_default();
            body.push_str(&format!(
                "<p class=\"muted\">{} {} ({} {})</p>",
                r.body["total"],
                ui.t("件", "events"),
                events.len(),
                ui.t("件を表示", "shown")
            ));
            body.push_str(&events_table(&ui, &events, off));
        } else {
            body.push_str(&notice("error", &r.message()));
        }
    }
    ui.page(ui.t("監査ログ検索", "Audit log search"), &body)
}

pub(crate) async fn patient_report(ui: Ui, Query(p): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let (patient, from, to) = (q(&p, "patient"), q(&p, "from"), q(&p, "to"));
    let mut body = tabs(&ui);
    body.push_str(&format!(
        r#"<form method="get" action="/ui/audit/patient" class="card"><div class="grid">
<div><label for="patient">{pl}</label><input id="patient" name="patient" type="text" value="{pv}" required></div>
<div><label for="from">{fl}</label><input id="from" name="from" type="date" value="{fv}"></div>
<div><label for="to">{tl}</label><input id="to" name="to" type="date" value="{tv}"></div></div>
<p><button type="submit">{b}</button></p></form>"#,
        pl = ui.t("患者IDまたはカルテ番号", "Patient id or record number"),
        pv = esc(&patient),
        fl = ui.t("開始日", "From"),
        fv = esc(&from),
        tl = ui.t("終了日", "To"),
        tv = esc(&to),
        b = ui.t("作成", "Make the report"),
    ));
    if !patient.is_empty() {
        let rq = audit::ReportQuery {
            patient: opt(&patient),
            from: opt(&from),
            to: opt(&to),
            limit: Some(10_000),
            ..audit::ReportQuery::default()
        };
        let r = Api::audited(audit::report(&ui.svc, &ui.actor, "patient", rq).await);
        if !r.ok() {
            body.push_str(&notice("error", &r.message()));
        } else {
            let events: Vec<Value> = r.body["events"].as_array().cloned().unwrap_or_default();
            body.push_str(&format!(
                "<section class=\"report\"><h2>{} Patient/{}{}</h2><p>{}: {} — {} · {}: {} · {}: {}</p><p class=\"noprint\"><button type=\"button\" class=\"secondary\" data-print>{}</button></p>",
                ui.t("診療記録へのアクセス記録", "Accesses to the record of"),
                ev(&r.body["patient"]),
                if r.body["patient"].as_str() == Some(patient.trim().trim_start_matches("Patient/")) {
                    String::new()
                } else {
                    format!(" ({} {})", ui.t("入力", "typed"), esc(&patient))
                },
                ui.t("期間", "Period"),
                when(&r.body["from"], off),
                when(&r.body["to"], off),
                ui.t("件数", "Events"),
                r.body["total"],
                ui.t("発行", "Issued by"),
                esc(&ui.svc.cfg.institution.name),
                ui.t("印刷", "Print")
            ));
            body.push_str(&events_table(&ui, &events, off));
            body.push_str(&format!(
                "<p class=\"muted\">{}</p></section>",
                ui.t(
                    "この報告は改ざん検知可能な監査ログ（署名付きチェックポイント）から作成されました。緊急アクセス（BTG）と拒否は色で示しています。",
                    "Made from the tamper-evident audit log (signed checkpoints). Break-glass (BTG) and refusals are highlighted."
                )
            ));
        }
    }
    ui.page(ui.t("患者別アクセス記録", "Who looked at this patient"), &body)
}

pub(crate) async fn break_glass(ui: Ui, Query(p): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let state = p.get("review").cloned().unwrap_or_else(|| "pending".into());
    let r = Api::of(breakglass::list(&ui.svc, &ui.actor, Some(state.clone())).await.map(|g| json!({"grants": g})));
    let mut body = tabs(&ui);
    body.push_str(&format!(
        "<p><a href=\"/ui/audit/break-glass?review=pending\">{}</a> · <a href=\"/ui/audit/break-glass?review=accepted\">{}</a> · <a href=\"/ui/audit/break-glass?review=questioned\">{}</a></p>",
        ui.t("未確認", "pending"),
        ui.t("承認済み", "accepted"),
        ui.t("要確認", "questioned")
    ));
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("緊急アクセスの確認", "Break-glass reviews"), &body);
    }
    let grants: Vec<&Value> = r.body["grants"].as_array().into_iter().flatten().collect();
    if grants.is_empty() {
        body.push_str(&format!(
            "<p class=\"muted\">{}</p>",
            ui.t("該当する緊急アクセスはありません。", "No break-glass grants here.")
        ));
    }
    let me = ui.me["name"].as_str().unwrap_or("");
    for g in grants {
        let id = g["id"].as_i64().unwrap_or(0);
        body.push_str(&format!(
            "<section class=\"card\" id=\"grant-{id}\"><h2>#{id} — {} → Patient/{}</h2><p>{}: {}</p><p>{}: {} — {} ({} {}){}</p>",
            ev(&g["user"]),
            ev(&g["patient"]),
            ui.t("理由", "Reason"),
            ev(&g["reason"]),
            ui.t("期間", "Period"),
            when(&g["started"], off),
            when(&g["ended"].as_str().map(|_| g["ended"].clone()).unwrap_or_else(|| g["expires"].clone()), off),
            g["minutes"],
            ui.t("分", "min"),
            if g["live"] == true { format!(" <span class=\"badge red\">{}</span>", ui.t("継続中", "live")) } else { String::new() }
        ));
        body.push_str(&format!(
            "<p><a href=\"/ui/audit/search?user={}&amp;patient={}\">{}</a></p>",
            mamori_service::records::enc(g["user"].as_str().unwrap_or("")),
            mamori_service::records::enc(g["patient"].as_str().unwrap_or("")),
            ui.t("この利用者がこの患者に行った操作を見る", "See what this user did with this patient")
        ));
        if g["review"] == "pending" {
            if g["user"] == me {
                body.push_str(&notice(
                    "info",
                    ui.t("自分の緊急アクセスは確認できません。", "You cannot review your own break-glass use."),
                ));
            } else {
                body.push_str(&format!(
                    r#"<form method="post" action="/ui/audit/break-glass/{id}">{csrf}<label for="note-{id}">{nl}</label><textarea id="note-{id}" name="note" required minlength="5"></textarea>
<p><button type="submit" name="outcome" value="accepted">{a}</button> <button type="submit" name="outcome" value="questioned" class="danger">{qd}</button></p></form>"#,
                    csrf = ui.csrf_field(),
                    nl = ui.t("確認した内容（必須）", "What you checked (required)"),
                    a = ui.t("妥当と確認", "Accept"),
                    qd = ui.t("疑義あり", "Question"),
                ));
            }
        } else {
            body.push_str(&format!(
                "<p>{}: <strong>{}</strong> — {} {}: {}</p>",
                ui.t("確認結果", "Review"),
                ev(&g["review"]),
                ev(&g["reviewed_by"]),
                when(&g["reviewed_at"], off),
                ev(&g["review_note"])
            ));
        }
        body.push_str("</section>");
    }
    ui.page(ui.t("緊急アクセスの確認", "Break-glass reviews"), &body)
}

pub(crate) async fn break_glass_review(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let r = match cmd(json!({"outcome": field(&f, "outcome"), "note": field(&f, "note")})) {
        Ok(req) => Api::of(breakglass::review(&ui.svc, &ui.actor, id, req).await),
        Err(e) => Api::of::<()>(Err(e)),
    };
    if !r.ok() {
        return ui.page(
            ui.t("緊急アクセスの確認", "Break-glass reviews"),
            &format!(
                "{}<p><a href=\"/ui/audit/break-glass\">{}</a></p>",
                notice("error", &r.message()),
                ui.t("戻る", "Back")
            ),
        );
    }
    Redirect::to("/ui/audit/break-glass").into_response()
}

pub(crate) async fn maintenance(ui: Ui) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(
        maintenance::list_requests(&ui.svc, &ui.actor, None, Some("pending".into()))
            .await
            .map(|r| json!({"requests": r})),
    );
    let mut body = tabs(&ui);
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("保守作業の確認", "Maintenance reviews"), &body);
    }
    let reqs: Vec<&Value> = r.body["requests"].as_array().into_iter().flatten().collect();
    if reqs.is_empty() {
        body.push_str(&format!(
            "<p class=\"muted\">{}</p>",
            ui.t("確認待ちの保守作業はありません。", "No maintenance sessions await review.")
        ));
    }
    for m in reqs {
        let id = m["id"].as_i64().unwrap_or(0);
        body.push_str(&format!(
            "<section class=\"card\"><h2>#{id} — {}{}</h2><p>{}: {}</p><p>{}: {} — {}</p><p>{}: <code>{}</code></p><h3>{}</h3><pre>{}</pre>",
            ev(&m["person"]),
            if m["review_overdue"] == true { format!(" <span class=\"badge red\">{}</span>", ui.t("確認期限超過", "review overdue")) } else { String::new() },
            ui.t("理由", "Reason"),
            ev(&m["reason"]),
            ui.t("時間枠", "Window"),
            when(&m["start"], off),
            when(&m["end"], off),
            ui.t("範囲", "Scopes"),
            esc(&m["scopes"].to_string()),
            ui.t("作業の要約", "Summary of the work"),
            esc(&serde_json::to_string_pretty(&m["summary"]).unwrap_or_default())
        ));
        body.push_str(&format!(
            r#"<form method="post" action="/ui/audit/maintenance/{id}">{csrf}<label for="mnote-{id}">{nl}</label><textarea id="mnote-{id}" name="note" required></textarea>
<p><button type="submit" name="outcome" value="accepted">{a}</button> <button type="submit" name="outcome" value="questioned" class="danger">{qd}</button></p></form></section>"#,
            csrf = ui.csrf_field(),
            nl = ui.t("確認した内容（必須）", "What you checked (required)"),
            a = ui.t("妥当と確認", "Accept"),
            qd = ui.t("疑義あり", "Question"),
        ));
    }
    ui.page(ui.t("保守作業の確認", "Maintenance reviews"), &body)
}

pub(crate) async fn maintenance_review(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let req = maintenance::Review { outcome: field(&f, "outcome").to_owned(), note: field(&f, "note").to_owned() };
    let r = Api::of(maintenance::review(&ui.svc, &ui.actor, id, req).await);
    if !r.ok() {
        return ui.page(ui.t("保守作業の確認", "Maintenance reviews"), &notice("error", &r.message()));
    }
    Redirect::to("/ui/audit/maintenance").into_response()
}
