//! The BCP console: declare (with the plan's criteria), confirm, phase
//! progress with each phase's checklist, return to normal, alerts,
//! contacts, the timeline, the after-action review and the cyber-attack
//! report (printable).

use axum::body::Body;
use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use mamori_core::policy::Operation;
use mamori_service::{bcp, Services};
use serde_json::{json, Value};

use super::html::{ev, notice, when};
use super::{cmd, esc, field, fields, form, Api, Ui};

pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/ui/bcp", get(console))
        .route("/ui/bcp/declare", post(declare))
        .route("/ui/bcp/{id}/confirm", post(confirm))
        .route("/ui/bcp/{id}/tick", post(tick))
        .route("/ui/bcp/{id}/transition", post(transition))
        .route("/ui/bcp/{id}/review", get(review).post(review_post))
        .route("/ui/bcp/{id}/incident", get(incident))
        .route("/ui/bcp/{id}/incident/{recipient}", post(reported))
        .route("/ui/bcp/alerts/{id}/ack", post(ack))
}

const PHASES: [(&str, &str, &str); 4] = [
    ("activation", "初動", "Activation"),
    ("resumption", "業務再開", "Resumption"),
    ("recovery", "業務回復", "Recovery"),
    ("full_recovery", "全面復旧", "Full recovery"),
];

fn text(ui: &Ui, t: &Value) -> String {
    let s = t[ui.lang.code()].as_str().or_else(|| t["ja"].as_str()).or_else(|| t.as_str()).unwrap_or("");
    esc(s)
}

fn phase_name(ui: &Ui, p: &str) -> String {
    PHASES.iter().find(|x| x.0 == p).map(|x| ui.t(x.1, x.2).to_owned()).unwrap_or_else(|| match p {
        "proposed" => ui.t("確認待ち（二人目の承認）", "awaiting confirmation").into(),
        "closed" => ui.t("通常に復帰", "returned to normal").into(),
        "stood_down" => ui.t("取り下げ", "stood down").into(),
        "normal" => ui.t("通常運用", "normal").into(),
        other => other.to_owned(),
    })
}

fn cause_name(ui: &Ui, c: &str) -> String {
    match c {
        "disaster" => ui.t("災害", "disaster"),
        "cyber_attack" => ui.t("サイバー攻撃", "cyber attack"),
        "system_failure" => ui.t("システム障害", "system failure"),
        "mass_casualty" => ui.t("多数傷病者", "mass casualty"),
        _ => ui.t("その他", "other"),
    }
    .to_owned()
}

fn back_with(ui: &Ui, r: &super::Api) -> Response {
    if r.ok() {
        Redirect::to("/ui/bcp").into_response()
    } else {
        ui.page(
            ui.t("BCPコンソール", "BCP console"),
            &format!(
                "{}<p><a href=\"/ui/bcp\">{}</a></p>",
                notice("error", &r.message()),
                ui.t("コンソールへ戻る", "Back to the console")
            ),
        )
    }
}

pub(crate) async fn console(ui: Ui) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let plan = Api::of(bcp::plan(&ui.svc, &ui.actor, false).await);
    let mode = Api::of(bcp::mode(&ui.svc, &ui.actor).await);
    let p = &plan.body["plan"];
    let mut body = String::new();
    let decl = mode.body["declaration"].clone();
    let decider = ui.may(Operation::NotificationRead);
    if decl.is_null() {
        body.push_str(&notice("ok", ui.t("現在、非常時宣言はありません。", "No emergency is declared.")));
        if decider {
            body.push_str(&declare_form(&ui, p));
        }
    } else {
        let id = decl["id"].as_i64().unwrap_or(0);
        let d = Api::of(bcp::show(&ui.svc, &ui.actor, id).await);
        body.push_str(&declaration_view(&ui, &d.body, off));
    }
    // Alerts: possible emergencies the detectors raised.
    let alerts = Api::of(bcp::alerts(&ui.svc, &ui.actor, true).await.map(|a| json!({"alerts": a})));
    let items: Vec<&Value> = alerts.body["alerts"].as_array().into_iter().flatten().collect();
    body.push_str(&format!(
        "<h2>{}</h2>",
        ui.t("未確認のアラート（非常時の可能性）", "Open alerts (possible emergencies)")
    ));
    if items.is_empty() {
        body.push_str(&format!("<p class=\"muted\">{}</p>", ui.t("ありません", "none")));
    } else {
        body.push_str(&format!(
            "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr></thead><tbody>",
            ui.t("時刻", "Time"),
            ui.t("重大度", "Severity"),
            ui.t("内容", "Message"),
            ui.t("該当しうる基準", "Matching criteria")
        ));
        for a in items {
            let crit: Vec<String> = a["matching_criteria"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| format!("{} {}", ev(&c["id"]), esc(c[ui.lang.code()].as_str().unwrap_or(""))))
                .collect();
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><form method=\"post\" action=\"/ui/bcp/alerts/{}/ack\" class=\"inline\">{}<button type=\"submit\" class=\"secondary\">{}</button></form></td></tr>",
                when(&a["time"], off),
                ev(&a["severity"]),
                ev(&a["message"]),
                crit.join("<br>"),
                ev(&a["id"]),
                ui.csrf_field(),
                ui.t("確認済みにする", "Acknowledge")
            ));
        }
        body.push_str("</tbody></table>");
    }
    // Contacts.
    body.push_str(&format!(
        "<h2>{}</h2><table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        ui.t("非常時対策本部・連絡先", "Emergency team and contacts"),
        ui.t("役割", "Function"),
        ui.t("氏名", "Name"),
        ui.t("電話・メール", "Phone, e-mail"),
        ui.t("代替手段", "Alternate means")
    ));
    for c in p["team"].as_array().into_iter().flatten() {
        let alt: Vec<String> = c["alternate"].as_array().into_iter().flatten().map(ev).collect();
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
            ev(&c["function"]),
            ev(&c["name"]),
            ev(&c["phone"]),
            ev(&c["email"]),
            alt.join(", ")
        ));
    }
    body.push_str("</tbody></table>");
    let contractors: Vec<&Value> = p["contractors"].as_array().into_iter().flatten().collect();
    if !contractors.is_empty() {
        body.push_str(&format!(
            "<h3>{}</h3><table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
            ui.t("委託事業者・共同対応の窓口", "Contractors and joint troubleshooting"),
            ui.t("事業者", "Contractor"),
            ui.t("提供サービス", "Service"),
            ui.t("連絡先", "Contact"),
            ui.t("エスカレーション", "Escalation")
        ));
        for c in contractors {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                ev(&c["name"]),
                ev(&c["service"]),
                ev(&c["contact"]),
                ev(&c["escalation"])
            ));
        }
        body.push_str("</tbody></table>");
    }
    let docs: Vec<&Value> = p["documents"].as_array().into_iter().flatten().collect();
    if !docs.is_empty() {
        body.push_str(&format!("<h3>{}</h3><ul>", ui.t("公開・配布する文書", "Documents to publish")));
        for d in docs {
            body.push_str(&format!(
                "<li>{} <span class=\"muted\">{}</span></li>",
                text(&ui, &d["title"]),
                ev(&d["location"])
            ));
        }
        body.push_str("</ul>");
    }
    // Past declarations, with their reports.
    let list = Api::of(bcp::list(&ui.svc, &ui.actor).await.map(|d| json!({"declarations": d})));
    body.push_str(&format!(
        "<h2>{}</h2><table><thead><tr><th>#</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr></thead><tbody>",
        ui.t("宣言の履歴", "Declarations"),
        ui.t("宣言日時", "Declared"),
        ui.t("原因", "Cause"),
        ui.t("状態", "State"),
        ui.t("理由", "Reason")
    ));
    for d in list.body["declarations"].as_array().into_iter().flatten() {
        let id = d["id"].as_i64().unwrap_or(0);
        let mut links = vec![];
        if d["state"] == "closed" {
            links.push(format!("<a href=\"/ui/bcp/{id}/review\">{}</a>", ui.t("事後レビュー", "After-action review")));
        }
        if d["cause"] == "cyber_attack" {
            links.push(format!(
                "<a href=\"/ui/bcp/{id}/incident\">{}</a>",
                ui.t("サイバー攻撃の報告", "Cyber-incident report")
            ));
        }
        body.push_str(&format!(
            "<tr><td>{id}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(&d["declared_at"], off),
            esc(&cause_name(&ui, d["cause"].as_str().unwrap_or(""))),
            if d["drill"] == true {
                format!(" <span class=\"badge yellow\">{}</span>", ui.t("訓練", "drill"))
            } else {
                String::new()
            },
            esc(&phase_name(&ui, d["state"].as_str().unwrap_or(""))),
            ev(&d["reason"]),
            links.join(" · ")
        ));
    }
    body.push_str("</tbody></table>");
    body.push_str(&format!(
        "<p class=\"muted\">{}: {} (v{})</p>",
        ui.t("計画", "Plan"),
        text(&ui, &p["title"]),
        ev(&plan.body["version"])
    ));
    ui.page(ui.t("BCPコンソール", "BCP console"), &body)
}

fn declare_form(ui: &Ui, plan: &Value) -> String {
    let crit: String = plan["criteria"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "<label class=\"check\"><input type=\"checkbox\" name=\"criteria\" value=\"{id}\"> <strong>{id}</strong> [{cause}] {d}</label>",
                id = ev(&c["id"]),
                cause = esc(&cause_name(ui, c["cause"].as_str().unwrap_or(""))),
                d = text(ui, &c["description"])
            )
        })
        .collect();
    let auto = format!("<option value=\"\">{}</option>", ui.t("基準から自動で判定", "From the criteria"));
    let causes: String = auto
        + &["cyber_attack", "disaster", "system_failure", "mass_casualty", "other"]
            .iter()
            .map(|c| format!("<option value=\"{c}\">{}</option>", esc(&cause_name(ui, c))))
            .collect::<String>();
    format!(
        r#"<form method="post" action="/ui/bcp/declare" class="card" id="declare">{csrf}
<h2>{h}</h2><p class="muted">{intro}</p>
<fieldset><legend>{cl}</legend>{crit}</fieldset>
<label for="cause">{causel}</label><select id="cause" name="cause">{causes}</select>
<label for="reason">{rl}</label><textarea id="reason" name="reason" required placeholder="{rph}"></textarea>
<p><button type="submit" name="drill" value="0" class="danger">{b}</button> <button type="submit" name="drill" value="1" class="secondary">{bd}</button></p></form>"#,
        csrf = ui.csrf_field(),
        h = ui.t("非常時の宣言", "Declare an emergency"),
        intro = ui.t("計画の基準のうち、満たしているものを選び、理由を記入してください。宣言は全職員に通知され、監査ログに署名付きで記録されます。", "Tick the plan's criteria that are met and give the reason. The declaration is announced to all staff and recorded, signed, in the audit log."),
        cl = ui.t("該当する基準", "Criteria met"),
        crit = crit,
        causel = ui.t("原因の分類", "Cause"),
        causes = causes,
        rl = ui.t("理由・状況", "Reason and situation"),
        rph = ui.t("例: 電子カルテ端末の多数で身代金要求画面を確認", "e.g. ransom notes on many EHR terminals"),
        b = ui.t("非常時を宣言する", "Declare the emergency"),
        bd = ui.t("訓練を開始する", "Start a drill"),
    )
}

fn declaration_view(ui: &Ui, d: &Value, off: i64) -> String {
    let id = d["id"].as_i64().unwrap_or(0);
    let state = d["state"].as_str().unwrap_or("");
    let drill = d["drill"] == true;
    let mut out = format!(
        "<section class=\"card\"><h2>{}{} #{id}</h2><p>{}: <strong>{}</strong> · {}: {} · {}: {} ({})</p><p>{}: {}</p><p>{}: {}</p>",
        if drill { format!("<span class=\"badge yellow\">{}</span> ", ui.t("訓練", "DRILL")) } else { String::new() },
        ui.t("宣言中", "Declaration"),
        ui.t("状態", "State"),
        esc(&phase_name(ui, state)),
        ui.t("原因", "Cause"),
        esc(&cause_name(ui, d["cause"].as_str().unwrap_or(""))),
        ui.t("宣言", "Declared"),
        when(&d["declared_at"], off),
        ev(&d["declared_by"]),
        ui.t("理由", "Reason"),
        ev(&d["reason"]),
        ui.t("基準", "Criteria"),
        d["criteria"].as_array().into_iter().flatten().map(ev).collect::<Vec<_>>().join(", "),
    );
    if state == "proposed" {
        out.push_str(&format!(
            "{}<form method=\"post\" action=\"/ui/bcp/{id}/confirm\">{}<button type=\"submit\" class=\"danger\">{}</button></form>",
            notice("info", ui.t("この計画では二人目の決定者による確認が必要です。", "This plan needs a second decider to confirm.")),
            ui.csrf_field(),
            ui.t("宣言を確認する（二人目）", "Confirm the declaration (second decider)")
        ));
    }
    // Phase progress.
    let cur = PHASES.iter().position(|p| p.0 == state);
    out.push_str("<ol class=\"phases\">");
    for (i, p) in PHASES.iter().enumerate() {
        let cls = match cur {
            Some(c) if i < c => "done",
            Some(c) if i == c => "current",
            _ => "todo",
        };
        let cur_attr = if cls == "current" { " aria-current=\"step\"" } else { "" };
        out.push_str(&format!("<li class=\"{cls}\"{cur_attr}>{}</li>", ui.t(p.1, p.2)));
    }
    out.push_str("</ol>");
    if let Some(c) = cur {
        let phase = PHASES[c].0;
        let items: Vec<&Value> = d["checklists"][phase].as_array().into_iter().flatten().collect();
        out.push_str(&format!(
            "<h3>{} — {}</h3><ul class=\"checklist\">",
            ui.t("チェックリスト", "Checklist"),
            ui.t(PHASES[c].1, PHASES[c].2)
        ));
        for it in items {
            let label = esc(it[ui.lang.code()].as_str().unwrap_or(""));
            let req = if it["required"] == true {
                format!(" <span class=\"muted\">({})</span>", ui.t("必須", "required"))
            } else {
                String::new()
            };
            if it["done_by"].is_null() {
                out.push_str(&format!(
                    "<li><form method=\"post\" action=\"/ui/bcp/{id}/tick\" class=\"inline\">{}<input type=\"hidden\" name=\"phase\" value=\"{phase}\"><input type=\"hidden\" name=\"item\" value=\"{}\"><button type=\"submit\" class=\"secondary\" aria-label=\"{}: {label}\">☐</button></form> {label}{req}</li>",
                    ui.csrf_field(),
                    ev(&it["id"]),
                    ui.t("完了にする", "Mark done"),
                ));
            } else {
                out.push_str(&format!(
                    "<li class=\"done\">☑ {label}{req} <span class=\"muted\">— {} {}</span></li>",
                    ev(&it["done_by"]),
                    when(&it["done_at"], off)
                ));
            }
        }
        out.push_str("</ul>");
        // Transitions.
        let next = PHASES.get(c + 1);
        out.push_str(&format!(
            "<form method=\"post\" action=\"/ui/bcp/{id}/transition\" class=\"card\">{}",
            ui.csrf_field()
        ));
        out.push_str(&format!(
            "<label for=\"note\">{}</label><input id=\"note\" name=\"note\" type=\"text\">",
            ui.t("記録するメモ", "Note for the record")
        ));
        if let Some(n) = next {
            out.push_str(&format!(
                "<p><button type=\"submit\" name=\"to\" value=\"{}\">{} {}</button></p>",
                n.0,
                ui.t("次のフェーズへ:", "Move to"),
                ui.t(n.1, n.2)
            ));
        } else {
            out.push_str(&format!(
                "<label for=\"override_reason\">{}</label><input id=\"override_reason\" name=\"override_reason\" type=\"text\"><p><button type=\"submit\" name=\"to\" value=\"normal\" class=\"danger\">{}</button></p>",
                ui.t("未完了の項目が残る場合の理由", "Reason if required items or reconciliation tasks remain open"),
                ui.t("通常運用に戻す", "Return to normal operation")
            ));
        }
        out.push_str(&format!(
            "<p><button type=\"submit\" name=\"to\" value=\"stand_down\" class=\"secondary\">{}</button></p></form>",
            ui.t("宣言を取り下げる（誤報など）", "Stand down (false alarm)")
        ));
    }
    // Timeline.
    out.push_str(&format!("<h3>{}</h3><ul>", ui.t("経過", "Timeline")));
    out.push_str(&format!(
        "<li>{} — {} ({})</li>",
        when(&d["declared_at"], off),
        ui.t("宣言", "declared"),
        ev(&d["declared_by"])
    ));
    for t in d["transitions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "<li>{} — {} → {} ({}){}</li>",
            when(&t["at"], off),
            esc(&phase_name(ui, t["from"].as_str().unwrap_or(""))),
            esc(&phase_name(ui, t["to"].as_str().unwrap_or(""))),
            ev(&t["by"]),
            t["note"].as_str().map(|n| format!(": {}", esc(n))).unwrap_or_default()
        ));
    }
    out.push_str("</ul></section>");
    out
}

pub(crate) async fn declare(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let criteria: Vec<&str> = fields(&f, "criteria");
    let mut cause = field(&f, "cause").to_owned();
    if cause.is_empty() {
        // The cause class of the first criterion ticked.
        let plan = Api::of(bcp::plan(&ui.svc, &ui.actor, false).await);
        cause = plan.body["plan"]["criteria"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| criteria.first().is_some_and(|f| c["id"] == *f))
            .and_then(|c| c["cause"].as_str())
            .unwrap_or("other")
            .to_owned();
    }
    let req = json!({"cause": cause, "criteria": criteria, "reason": field(&f, "reason").trim(), "drill": field(&f, "drill") == "1"});
    let r = match cmd(req) {
        Ok(req) => Api::of(bcp::declare(&ui.svc, &ui.actor, req).await),
        Err(e) => Api::of::<()>(Err(e)),
    };
    back_with(&ui, &r)
}

pub(crate) async fn confirm(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let r = Api::of(bcp::confirm(&ui.svc, &ui.actor, id).await);
    back_with(&ui, &r)
}

pub(crate) async fn tick(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let r =
        Api::of(bcp::tick(&ui.svc, &ui.actor, id, field(&f, "phase"), field(&f, "item"), bcp::Tick::default()).await);
    back_with(&ui, &r)
}

pub(crate) async fn transition(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
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
    let req = json!({"to": field(&f, "to"), "note": opt("note"), "override_reason": opt("override_reason")});
    let r = match cmd(req) {
        Ok(req) => Api::of(bcp::transition(&ui.svc, &ui.actor, id, req).await),
        Err(e) => Api::of::<()>(Err(e)),
    };
    back_with(&ui, &r)
}

pub(crate) async fn ack(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let r = Api::of(bcp::ack(&ui.svc, &ui.actor, id).await);
    back_with(&ui, &r)
}

pub(crate) async fn review(ui: Ui, Path(id): Path<i64>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(bcp::get_review(&ui.svc, &ui.actor, id).await);
    let title = format!("{} #{id}", ui.t("事後レビュー", "After-action review"));
    if !r.ok() {
        return ui.page(&title, &notice("error", &r.message()));
    }
    let report = match &r.body["report"] {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    let mut body = format!(
        "<p class=\"noprint\"><button type=\"button\" class=\"secondary\" data-print>{}</button></p><pre>{}</pre>",
        ui.t("印刷", "Print"),
        esc(&report)
    );
    if r.body["completed_by"].is_null() {
        if ui.may(Operation::BcpReviewWrite) {
            body.push_str(&format!(
                "<form method=\"post\" action=\"/ui/bcp/{id}/review\" class=\"card\">{}<label for=\"lessons\">{}</label><textarea id=\"lessons\" name=\"lessons\" required></textarea><p><button type=\"submit\">{}</button></p></form>",
                ui.csrf_field(),
                ui.t("教訓・改善点（計画の見直しへ）", "Lessons learned (feed into the plan)"),
                ui.t("レビューを完了する", "Complete the review")
            ));
        }
    } else {
        body.push_str(&format!(
            "<h2>{}</h2><pre>{}</pre><p class=\"muted\">{} {}</p>",
            ui.t("教訓", "Lessons learned"),
            ev(&r.body["lessons"]),
            ev(&r.body["completed_by"]),
            when(&r.body["completed_at"], off)
        ));
    }
    ui.page(&title, &body)
}

pub(crate) async fn review_post(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let r = Api::of(
        bcp::put_review(&ui.svc, &ui.actor, id, bcp::Lessons { lessons: field(&f, "lessons").to_owned() }).await,
    );
    if !r.ok() {
        return ui.page(ui.t("事後レビュー", "After-action review"), &notice("error", &r.message()));
    }
    Redirect::to(&format!("/ui/bcp/{id}/review")).into_response()
}

pub(crate) async fn incident(ui: Ui, Path(id): Path<i64>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(bcp::incident_report(&ui.svc, &ui.actor, id).await);
    let title = format!("{} #{id}", ui.t("サイバー攻撃被害の報告", "Cyber-incident report"));
    if !r.ok() {
        return ui.page(&title, &notice("error", &r.message()));
    }
    let mut body = format!(
        "<p class=\"noprint\"><button type=\"button\" class=\"secondary\" data-print>{}</button></p><pre>{}</pre>",
        ui.t("印刷", "Print"),
        ev(&r.body["text"])
    );
    if ui.may(Operation::IncidentReportRecord) {
        body.push_str(&format!(
            "<h2 class=\"noprint\">{}</h2><div class=\"noprint\">",
            ui.t("報告済みの記録", "Record a report as made")
        ));
        for (rcp, ja, en) in [
            ("mhlw", "厚生労働省に報告した", "Reported to MHLW"),
            ("police", "警察に届け出た", "Reported to the police"),
            ("patients", "患者に周知した", "Patients informed"),
        ] {
            let done = r.body["reported"].as_array().into_iter().flatten().find(|x| x["recipient"] == rcp);
            match done {
                Some(x) => body.push_str(&format!("<p>☑ {} — {} {}</p>", ui.t(ja, en), ev(&x["by"]), when(&x["at"], off))),
                None => body.push_str(&format!(
                    "<form method=\"post\" action=\"/ui/bcp/{id}/incident/{rcp}\" class=\"card\">{}<label for=\"note-{rcp}\">{}</label><input id=\"note-{rcp}\" name=\"note\" type=\"text\"><p><button type=\"submit\">{}</button></p></form>",
                    ui.csrf_field(),
                    ui.t("メモ（受付番号など）", "Note (reference number, ...)"),
                    ui.t(ja, en)
                )),
            }
        }
        body.push_str("</div>");
    }
    ui.page(&title, &body)
}

pub(crate) async fn reported(ui: Ui, Path((id, recipient)): Path<(i64, String)>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let note = field(&f, "note").trim();
    let req = bcp::Reported { note: (!note.is_empty()).then(|| note.to_owned()) };
    let r = Api::of(bcp::reported(&ui.svc, &ui.actor, id, &recipient, req).await);
    if !r.ok() {
        return ui.page(ui.t("報告", "Report"), &notice("error", &r.message()));
    }
    Redirect::to(&format!("/ui/bcp/{id}/incident")).into_response()
}
