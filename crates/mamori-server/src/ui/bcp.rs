//! The BCP console: declare (with the plan's criteria), confirm, phase
//! progress with each phase's checklist, return to normal, alerts,
//! contacts, the timeline, the after-action review and the cyber-attack
//! report (printable).

use axum::body::Body;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use mamori_core::policy::Operation;
use mamori_service::{bcp, Services};
use serde_json::{json, Value};

use super::codes;
use super::html::{notice, tx, when};
use super::{cmd, field, fields, form, html, Api, Markup, Ui};

pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/ui/bcp", get(console))
        .route("/ui/bcp/declare", post(declare))
        .route("/ui/bcp/plan", get(plan_page).post(plan_post))
        .route("/ui/bcp/{id}/confirm", post(confirm))
        .route("/ui/bcp/{id}/tick", post(tick))
        .route("/ui/bcp/{id}/transition", post(transition))
        .route("/ui/bcp/{id}/review", get(review).post(review_post))
        .route("/ui/bcp/{id}/incident", get(incident))
        .route("/ui/bcp/{id}/incident.pdf", get(incident_pdf))
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
    t[ui.lang.code()].as_str().or_else(|| t["ja"].as_str()).or_else(|| t.as_str()).unwrap_or("").to_owned()
}

/// The criteria a declaration names, by their descriptions in the plan
/// (an id the plan no longer has is shown as it is).
fn criteria_text(ui: &Ui, plan: &Value, ids: &Value) -> String {
    ids.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|id| {
            plan["criteria"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["id"] == id)
                .map(|c| text(ui, &c["description"]))
                .unwrap_or_else(|| id.to_owned())
        })
        .collect::<Vec<_>>()
        .join("、")
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

pub(crate) async fn console(ui: Ui) -> Response {
    console_page(&ui, None, &[]).await
}

/// The console; after a refused action, with why at the top and what was
/// typed kept in its form (no dead end, nothing to type again).
async fn console_page(ui: &Ui, err: Option<String>, typed: &[(String, String)]) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let plan = Api::of(bcp::plan(&ui.svc, &ui.actor, false).await);
    let mode = Api::of(bcp::mode(&ui.svc, &ui.actor).await);
    let p = &plan.body["plan"];
    let decl = mode.body["declaration"].clone();
    let decider = ui.may(Operation::NotificationRead);
    let current = if decl.is_null() {
        None
    } else {
        Some(Api::of(bcp::show(&ui.svc, &ui.actor, decl["id"].as_i64().unwrap_or(0)).await))
    };
    // Alerts: possible emergencies the detectors raised.
    let alerts = Api::of(bcp::alerts(&ui.svc, &ui.actor, true).await.map(|a| json!({"alerts": a})));
    let items: Vec<&Value> = alerts.body["alerts"].as_array().into_iter().flatten().collect();
    let contractors: Vec<&Value> = p["contractors"].as_array().into_iter().flatten().collect();
    let docs: Vec<&Value> = p["documents"].as_array().into_iter().flatten().collect();
    let list = Api::of(bcp::list(&ui.svc, &ui.actor).await.map(|d| json!({"declarations": d})));
    let body = html! {
        @if let Some(e) = &err { (notice("error", e)) }
        @match &current {
            None => {
                (notice("ok", ui.t("現在、非常時宣言はありません。", "No emergency is declared.")))
                @if decider { (declare_form(ui, p, typed)) }
            }
            Some(d) => (declaration_view(ui, &d.body, p, off, typed)),
        }
        h2 { (ui.t("未確認のアラート（非常時の可能性）", "Open alerts (possible emergencies)")) }
        @if items.is_empty() {
            p.muted { (ui.t("ありません", "none")) }
        } @else {
            table.stack {
                thead { tr { th { (ui.t("時刻", "Time")) } th { (ui.t("重大度", "Severity")) } th { (ui.t("内容", "Message")) } th { (ui.t("該当しうる基準", "Matching criteria")) } th {} } }
                tbody {
                    @for a in &items {
                        tr {
                            td { (when(&a["time"], off)) }
                            td { (codes::severity(ui.lang, a["severity"].as_str().unwrap_or(""))) }
                            td { (tx(&a["message"])) }
                            td {
                                @for (i, c) in a["matching_criteria"].as_array().into_iter().flatten().enumerate() {
                                    @if i > 0 { br; }
                                    (c[ui.lang.code()].as_str().unwrap_or(""))
                                }
                            }
                            td {
                                form.inline method="post" action={ "/ui/bcp/alerts/" (tx(&a["id"])) "/ack" } {
                                    (ui.csrf_field())
                                    button.secondary type="submit" { (ui.t("確認済みにする", "Acknowledge")) }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { (ui.t("非常時対策本部・連絡先", "Emergency team and contacts")) }
        table.stack {
            thead { tr { th { (ui.t("役割", "Function")) } th { (ui.t("氏名", "Name")) } th { (ui.t("電話・メール", "Phone, e-mail")) } th { (ui.t("代替手段", "Alternate means")) } } }
            tbody {
                @for c in p["team"].as_array().into_iter().flatten() {
                    tr {
                        td { (tx(&c["function"])) }
                        td { (tx(&c["name"])) }
                        td { (tx(&c["phone"])) " " (tx(&c["email"])) }
                        td { (c["alternate"].as_array().into_iter().flatten().map(tx).collect::<Vec<_>>().join(", ")) }
                    }
                }
            }
        }
        @if !contractors.is_empty() {
            h3 { (ui.t("委託事業者・共同対応の窓口", "Contractors and joint troubleshooting")) }
            table.stack {
                thead { tr { th { (ui.t("事業者", "Contractor")) } th { (ui.t("提供サービス", "Service")) } th { (ui.t("連絡先", "Contact")) } th { (ui.t("エスカレーション", "Escalation")) } } }
                tbody {
                    @for c in &contractors {
                        tr { td { (tx(&c["name"])) } td { (tx(&c["service"])) } td { (tx(&c["contact"])) } td { (tx(&c["escalation"])) } }
                    }
                }
            }
        }
        @if !docs.is_empty() {
            h3 { (ui.t("公開・配布する文書", "Documents to publish")) }
            ul { @for d in &docs { li { (text(ui, &d["title"])) " " span.muted { (tx(&d["location"])) } } } }
        }
        h2 { (ui.t("宣言の履歴", "Declarations")) }
        table.stack {
            thead { tr { th { "#" } th { (ui.t("宣言日時", "Declared")) } th { (ui.t("原因", "Cause")) } th { (ui.t("状態", "State")) } th { (ui.t("理由", "Reason")) } th {} } }
            tbody {
                @for d in list.body["declarations"].as_array().into_iter().flatten() {
                    @let id = d["id"].as_i64().unwrap_or(0);
                    tr {
                        td { (id) }
                        td { (when(&d["declared_at"], off)) }
                        td {
                            (cause_name(ui, d["cause"].as_str().unwrap_or("")))
                            @if d["drill"] == true { " " span.badge.yellow { (ui.t("訓練", "drill")) } }
                        }
                        td { (phase_name(ui, d["state"].as_str().unwrap_or(""))) }
                        td { (tx(&d["reason"])) }
                        td {
                            @if d["state"] == "closed" || d["state"] == "stood_down" { a href={ "/ui/bcp/" (id) "/review" } { (ui.t("事後レビュー", "After-action review")) } }
                            @if d["cause"] == "cyber_attack" { " · " a href={ "/ui/bcp/" (id) "/incident" } { (ui.t("サイバー攻撃の報告", "Cyber-incident report")) } }
                        }
                    }
                }
            }
        }
        p.muted {
            (ui.t("計画", "Plan")) ": " (text(ui, &p["title"])) " (" (ui.t("版", "version")) " " (tx(&plan.body["version"])) ") "
            a href="/ui/bcp/plan" { (ui.t("計画を見る・編集する", "View or edit the plan")) }
        }
    };
    ui.page(ui.t("BCPコンソール", "BCP console"), body)
}

fn declare_form(ui: &Ui, plan: &Value, typed: &[(String, String)]) -> Markup {
    let ticked = fields(typed, "criteria");
    html! {
        form.card #declare method="post" action="/ui/bcp/declare" data-confirm=(ui.t("非常時を宣言しますか？ 全職員に通知され、非常時の規則に切り替わります。訓練の場合は「訓練を開始する」を使ってください。", "Declare an emergency? All staff are told and the emergency rules apply. For a drill, use \"Start a drill\".")) {
            (ui.csrf_field())
            h2 { (ui.t("非常時の宣言", "Declare an emergency")) }
            p.muted { (ui.t("計画の基準のうち、満たしているものを選び、理由を記入してください。宣言は全職員に通知され、監査ログに署名付きで記録されます。", "Tick the plan's criteria that are met and give the reason. The declaration is announced to all staff and recorded, signed, in the audit log.")) }
            fieldset {
                legend { (ui.t("該当する基準", "Criteria met")) }
                @for c in plan["criteria"].as_array().into_iter().flatten() {
                    label.check {
                        input type="checkbox" name="criteria" value=(tx(&c["id"])) checked[ticked.contains(&c["id"].as_str().unwrap_or(""))];
                        " [" (cause_name(ui, c["cause"].as_str().unwrap_or(""))) "] " (text(ui, &c["description"]))
                    }
                }
            }
            label for="cause" { (ui.t("原因の分類", "Cause")) }
            select #cause name="cause" {
                option value="" { (ui.t("基準から自動で判定", "From the criteria")) }
                @for c in ["cyber_attack", "disaster", "system_failure", "mass_casualty", "other"] { option value=(c) { (cause_name(ui, c)) } }
            }
            label for="reason" { (ui.t("理由・状況", "Reason and situation")) }
            textarea #reason name="reason" required placeholder=(ui.t("例: 電子カルテ端末の多数で身代金要求画面を確認", "e.g. ransom notes on many EHR terminals")) { (field(typed, "reason")) }
            p {
                button.danger type="submit" name="drill" value="0" { (ui.t("非常時を宣言する", "Declare the emergency")) }
                " "
                button.secondary type="submit" name="drill" value="1" data-no-confirm { (ui.t("訓練を開始する", "Start a drill")) }
            }
        }
    }
}

fn declaration_view(ui: &Ui, d: &Value, plan: &Value, off: i64, typed: &[(String, String)]) -> Markup {
    let id = d["id"].as_i64().unwrap_or(0);
    let state = d["state"].as_str().unwrap_or("");
    let drill = d["drill"] == true;
    let cur = PHASES.iter().position(|p| p.0 == state);
    html! {
        section.card {
            h2 { @if drill { span.badge.yellow { (ui.t("訓練", "DRILL")) } " " } (ui.t("宣言中", "Declaration")) " #" (id) }
            p {
                (ui.t("状態", "State")) ": " strong { (phase_name(ui, state)) }
                " · " (ui.t("原因", "Cause")) ": " (cause_name(ui, d["cause"].as_str().unwrap_or("")))
                " · " (ui.t("宣言", "Declared")) ": " (when(&d["declared_at"], off)) " (" (tx(&d["declared_by"])) ")"
            }
            p { (ui.t("理由", "Reason")) ": " (tx(&d["reason"])) }
            p { (ui.t("基準", "Criteria")) ": " (criteria_text(ui, plan, &d["criteria"])) }
            @if state == "proposed" {
                (notice("info", ui.t("この計画では二人目の決定者による確認が必要です。", "This plan needs a second decider to confirm.")))
                form method="post" action={ "/ui/bcp/" (id) "/confirm" } {
                    (ui.csrf_field())
                    button.danger type="submit" { (ui.t("宣言を確認する（二人目）", "Confirm the declaration (second decider)")) }
                }
            }
            ol.phases {
                @for (i, p) in PHASES.iter().enumerate() {
                    @let cls = match cur { Some(c) if i < c => "done", Some(c) if i == c => "current", _ => "todo" };
                    li class=(cls) aria-current=[(cls == "current").then_some("step")] { (ui.t(p.1, p.2)) }
                }
            }
            @if let Some(c) = cur {
                @let phase = PHASES[c].0;
                @let items: Vec<&Value> = d["checklists"][phase].as_array().into_iter().flatten().collect();
                @let open_required = items.iter().filter(|it| it["required"] == true && it["done_by"].is_null()).count();
                h3 { (ui.t("チェックリスト", "Checklist")) " — " (ui.t(PHASES[c].1, PHASES[c].2)) }
                ul.checklist {
                    @for it in &items {
                        @let label = it[ui.lang.code()].as_str().unwrap_or("");
                        @if it["done_by"].is_null() {
                            li {
                                form.inline method="post" action={ "/ui/bcp/" (id) "/tick" } {
                                    (ui.csrf_field())
                                    input type="hidden" name="phase" value=(phase);
                                    input type="hidden" name="item" value=(tx(&it["id"]));
                                    button.secondary type="submit" aria-label={ (ui.t("完了にする", "Mark done")) ": " (label) } { "☐" }
                                }
                                " " (label)
                                @if it["required"] == true { " " span.muted { "(" (ui.t("必須", "required")) ")" } }
                            }
                        } @else {
                            li.done {
                                "☑ " (label)
                                @if it["required"] == true { " " span.muted { "(" (ui.t("必須", "required")) ")" } }
                                " " span.muted { "— " (tx(&it["done_by"])) " " (when(&it["done_at"], off)) }
                            }
                        }
                    }
                }
                form.card method="post" action={ "/ui/bcp/" (id) "/transition" } data-confirm=[(open_required > 0).then(|| format!("{} {open_required} {}", ui.t("必須のチェック項目が", "Required checklist items open:"), ui.t("件、未完了です。未完了のまま進めると記録に残ります。進めますか？", "moving on with them open is recorded. Continue?")))] {
                    (ui.csrf_field())
                    @if open_required > 0 {
                        (notice("warning", &format!("{} {open_required} {}", ui.t("このフェーズの必須項目のうち", "Required items of this phase still open:"), ui.t("件が未完了です。未完了のまま進めた場合、その旨が記録されます。", "moving on is recorded with them."))))
                    }
                    label for="note" { (ui.t("記録するメモ", "Note for the record")) }
                    input #note name="note" type="text" value=(field(typed, "note"));
                    @match PHASES.get(c + 1) {
                        Some(n) => p { button type="submit" name="to" value=(n.0) { (ui.t("次のフェーズへ:", "Move to")) " " (ui.t(n.1, n.2)) } },
                        None => {
                            label for="override_reason" { (ui.t("未完了の項目が残る場合の理由", "Reason if required items or reconciliation tasks remain open")) }
                            input #override_reason name="override_reason" type="text" value=(field(typed, "override_reason"));
                            p { button.danger type="submit" name="to" value="normal" { (ui.t("通常運用に戻す", "Return to normal operation")) } }
                        }
                    }
                    p { button.secondary type="submit" name="to" value="stand_down" { (ui.t("宣言を取り下げる（誤報など）", "Stand down (false alarm)")) } }
                }
            }
            h3 { (ui.t("経過", "Timeline")) }
            ul {
                li { (when(&d["declared_at"], off)) " — " (ui.t("宣言", "declared")) " (" (tx(&d["declared_by"])) ")" }
                @for t in d["transitions"].as_array().into_iter().flatten() {
                    li {
                        (when(&t["at"], off)) " — " (phase_name(ui, t["from"].as_str().unwrap_or(""))) " → " (phase_name(ui, t["to"].as_str().unwrap_or("")))
                        " (" (tx(&t["by"])) ")"
                        @if let Some(n) = t["note"].as_str() { ": " (n) }
                    }
                }
            }
        }
    }
}

/// Runs a console form once (a repeat leads back to the console) and
/// answers with the console, or the refusal.
async fn act<Fut>(ui: &Ui, f: &[(String, String)], run: impl FnOnce() -> Fut) -> Response
where
    Fut: std::future::Future<Output = Api>,
{
    ui.once(f, || async {
        let r = run().await;
        if r.ok() {
            Ok("/ui/bcp".to_owned())
        } else {
            Err(Box::new(console_page(ui, Some(ui.why(&r)), f).await))
        }
    })
    .await
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
    act(&ui, &f, || async {
        match cmd(req) {
            Ok(req) => Api::of(bcp::declare(&ui.svc, &ui.actor, req).await),
            Err(e) => Api::of::<()>(Err(e)),
        }
    })
    .await
}

pub(crate) async fn confirm(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    act(&ui, &f, || async { Api::of(bcp::confirm(&ui.svc, &ui.actor, id).await) }).await
}

pub(crate) async fn tick(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    act(&ui, &f, || async {
        Api::of(bcp::tick(&ui.svc, &ui.actor, id, field(&f, "phase"), field(&f, "item"), bcp::Tick::default()).await)
    })
    .await
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
    act(&ui, &f, || async {
        match cmd(req) {
            Ok(req) => Api::of(bcp::transition(&ui.svc, &ui.actor, id, req).await),
            Err(e) => Api::of::<()>(Err(e)),
        }
    })
    .await
}

pub(crate) async fn ack(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    act(&ui, &f, || async { Api::of(bcp::ack(&ui.svc, &ui.actor, id).await) }).await
}

/// Minutes as people read them ("1時間25分").
fn duration(ui: &Ui, minutes: f64) -> String {
    let m = minutes.round() as i64;
    match (m / 60, m % 60) {
        (0, m) => format!("{m}{}", ui.t("分", " min")),
        (h, m) => format!("{h}{}{m}{}", ui.t("時間", " h "), ui.t("分", " min")),
    }
}

/// The after-action review as a printable document.
fn review_document(ui: &Ui, r: &Value, plan: &Value, off: i64) -> Markup {
    let yes_no = |b: &Value| match b.as_bool() {
        Some(true) => ui.t("達成", "met"),
        Some(false) => ui.t("超過", "exceeded"),
        None => "—",
    };
    html! {
        article.document {
            dl.facts {
                dt { (ui.t("宣言", "Declaration")) } dd { "#" (tx(&r["declaration"])) @if r["drill"] == true { " " span.badge.yellow { (ui.t("訓練", "drill")) } } }
                dt { (ui.t("原因", "Cause")) } dd { (cause_name(ui, r["cause"].as_str().unwrap_or(""))) }
                dt { (ui.t("理由", "Reason")) } dd { (tx(&r["reason"])) }
                dt { (ui.t("基準", "Criteria")) } dd { (criteria_text(ui, plan, &r["criteria"])) }
                dt { (ui.t("宣言者", "Declared by")) } dd { (tx(&r["declared_by"])) @if !r["confirmed_by"].is_null() { " / " (ui.t("確認", "confirmed by")) " " (tx(&r["confirmed_by"])) } }
                dt { (ui.t("期間", "Period")) } dd { (when(&r["declared_at"], off)) " — " (when(&r["ended_at"], off)) }
                dt { (ui.t("結果", "Outcome")) } dd { (phase_name(ui, r["outcome"].as_str().unwrap_or(""))) }
            }
            h2 { (ui.t("フェーズごとの所要時間", "Time in each phase")) }
            table.stack {
                thead { tr { th { (ui.t("フェーズ", "Phase")) } th { (ui.t("開始", "Started")) } th { (ui.t("所要時間", "Duration")) } th { (ui.t("目標", "Target")) } th { (ui.t("達成", "Met")) } } }
                tbody {
                    @for p in r["phases"].as_array().into_iter().flatten() {
                        tr {
                            td { (phase_name(ui, p["phase"].as_str().unwrap_or(""))) }
                            td { (when(&p["started"], off)) }
                            td { (duration(ui, p["minutes"].as_f64().unwrap_or(0.0))) }
                            td { @match p["target_minutes"].as_f64() { Some(t) => (duration(ui, t)), None => "—" } }
                            td { (yes_no(&p["within_target"])) }
                        }
                    }
                }
            }
            h2 { (ui.t("チェックリストの完了", "Checklist completion")) }
            table.stack {
                thead { tr { th { (ui.t("フェーズ", "Phase")) } th { (ui.t("項目", "Item")) } th { (ui.t("完了", "Done")) } th { (ui.t("担当", "By")) } th { (ui.t("フェーズ開始から", "Into the phase")) } } }
                tbody {
                    @for p in r["phases"].as_array().into_iter().flatten() {
                        @for it in p["checklist"].as_array().into_iter().flatten() {
                            tr {
                                td { (phase_name(ui, p["phase"].as_str().unwrap_or(""))) }
                                td { (tx(&it["item"])) }
                                td { (when(&it["at"], off)) }
                                td { (tx(&it["by"])) }
                                td { (duration(ui, it["minutes_into_phase"].as_f64().unwrap_or(0.0))) }
                            }
                        }
                    }
                }
            }
            h2 { (ui.t("経過", "Timeline")) }
            ul {
                @for t in r["timeline"].as_array().into_iter().flatten() {
                    li {
                        (when(&t["at"], off)) " — " (phase_name(ui, t["from"].as_str().unwrap_or(""))) " → " (phase_name(ui, t["to"].as_str().unwrap_or(""))) " (" (tx(&t["by"])) ")"
                        @if let Some(n) = t["note"].as_str() { ": " (n) }
                    }
                }
            }
            h2 { (ui.t("緊急アクセス（ブレークグラス）", "Break-glass access")) }
            @let grants: Vec<&Value> = r["break_glass"].as_array().into_iter().flatten().collect();
            @if grants.is_empty() { p.muted { (ui.t("ありません", "none")) } } @else {
                table.stack {
                    thead { tr { th { (ui.t("開始", "Started")) } th { (ui.t("利用者", "User")) } th { (ui.t("患者", "Patient")) } th { (ui.t("理由", "Reason")) } th { (ui.t("監査の確認", "Review")) } } }
                    tbody {
                        @for g in &grants {
                            tr {
                                td { (when(&g["started"], off)) } td { (tx(&g["user"])) }
                                td { a href={ "/ui/patients/" (tx(&g["patient"])) } { (tx(&g["patient"])) } }
                                td { (tx(&g["reason"])) }
                                td { @if g["review"].is_null() { (ui.t("未確認", "pending")) } @else { (ui.t("確認済み", "reviewed")) } }
                            }
                        }
                    }
                }
            }
            h2 { (ui.t("非常用アカウントの使用", "Emergency accounts used")) }
            @let accounts: Vec<&Value> = r["emergency_accounts"].as_array().into_iter().flatten().collect();
            @if accounts.is_empty() { p.muted { (ui.t("ありません", "none")) } } @else {
                ul {
                    @for a in &accounts {
                        li { (tx(&a["account"])) " — " (tx(&a["declared_person"])) " · " (when(&a["unsealed_at"], off)) " · " (tx(&a["state"])) }
                    }
                }
            }
            @if let Some(n) = r["drill_accesses_denied_but_permitted_in_emergency"].as_i64() {
                p { (ui.t("訓練中に拒否されたが、実際の非常時なら許可されたアクセス", "Accesses denied in the drill that a real emergency would have permitted")) ": " strong { (n) } }
            }
        }
    }
}

fn print_button(ui: &Ui) -> Markup {
    html! { p.noprint { button.secondary type="button" data-print { (ui.t("印刷", "Print")) } } }
}

pub(crate) async fn review(ui: Ui, Path(id): Path<i64>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(bcp::get_review(&ui.svc, &ui.actor, id).await);
    let plan = Api::of(bcp::plan(&ui.svc, &ui.actor, false).await);
    let title = format!("{} #{id}", ui.t("事後レビュー", "After-action review"));
    if !r.ok() {
        return ui.page(&title, notice("error", &ui.why(&r)));
    }
    let body = html! {
        (print_button(&ui))
        @match &r.body["report"] {
            Value::String(s) => pre { (s) },
            report => (review_document(&ui, report, &plan.body["plan"], off)),
        }
        @if r.body["completed_by"].is_null() {
            @if ui.may(Operation::BcpReviewWrite) {
                form.card method="post" action={ "/ui/bcp/" (id) "/review" } {
                    (ui.csrf_field())
                    label for="lessons" { (ui.t("教訓・改善点（計画の見直しへ）", "Lessons learned (feed into the plan)")) }
                    textarea #lessons name="lessons" required {}
                    p { button type="submit" { (ui.t("レビューを完了する", "Complete the review")) } }
                }
            }
        } @else {
            h2 { (ui.t("教訓", "Lessons learned")) }
            p.prewrap { (tx(&r.body["lessons"])) }
            p.muted { (tx(&r.body["completed_by"])) " " (when(&r.body["completed_at"], off)) }
        }
    };
    ui.page(&title, body)
}

pub(crate) async fn review_post(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    ui.once(&f, || async {
        let r = Api::of(
            bcp::put_review(&ui.svc, &ui.actor, id, bcp::Lessons { lessons: field(&f, "lessons").to_owned() }).await,
        );
        if r.ok() {
            Ok(format!("/ui/bcp/{id}/review"))
        } else {
            Err(Box::new(ui.page(ui.t("事後レビュー", "After-action review"), notice("error", &ui.why(&r)))))
        }
    })
    .await
}

/// A declaration state's name, as the report shows it.
fn state_name(ui: &Ui, s: &str) -> String {
    phase_name(ui, s)
}

/// The cyber-incident report as a printable document with its reporting
/// checklist, and the forms that record a report as made.
pub(crate) async fn incident(ui: Ui, Path(id): Path<i64>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(bcp::incident_report(&ui.svc, &ui.actor, id).await);
    let title = format!("{} #{id}", ui.t("サイバー攻撃被害の報告", "Cyber-incident report"));
    if !r.ok() {
        return ui.page(&title, notice("error", &ui.why(&r)));
    }
    let rep = &r.body["report"];
    let both = |v: &Value| text(&ui, v);
    let body = html! {
        p.noprint {
            button.secondary type="button" data-print { (ui.t("印刷", "Print")) } " "
            a.button href={ "/ui/bcp/" (id) "/incident.pdf" } { (ui.t("PDFをダウンロード（当局への送付用）", "Download the PDF (to send to the authorities)")) }
        }
        article.document.report {
            h2 {
                @if rep["drill"] == true { span.badge.yellow { (ui.t("訓練", "DRILL")) } " " }
                (ui.t("医療機関におけるサイバー攻撃被害の報告（第一報・下書き）", "Report of a cyber attack on a medical institution (first report, draft)"))
            }
            h3 { "1. " (ui.t("医療機関", "Institution")) }
            p {
                (tx(&rep["institution"]["name"])) " (" (ui.t("医療機関コード", "institution code")) ": "
                @if rep["institution"]["code"].as_str().is_none_or(str::is_empty) { (ui.t("未設定", "not set")) } @else { (tx(&rep["institution"]["code"])) }
                ")"
            }
            h3 { "2. " (ui.t("覚知・宣言日時", "Detected and declared")) }
            p { (when(&rep["declared_at"], off)) " (" (ui.t("宣言者", "declared by")) ": " (tx(&rep["declared_by"])) ")" }
            h3 { "3. " (ui.t("事象の概要", "Summary")) }
            p.prewrap { (tx(&rep["reason"])) }
            p { (ui.t("該当基準", "Criteria met")) ":" }
            ul { @for c in rep["criteria"].as_array().into_iter().flatten() { li { (both(c)) } } }
            h3 { "4. " (ui.t("影響を受けたシステム・診療への影響", "Affected systems and impact on care")) }
            p.muted { (ui.t("（報告前に記入してください）", "(to be completed before sending)")) }
            h3 { "5. " (ui.t("経過", "Timeline")) }
            ul {
                @for e in rep["timeline"].as_array().into_iter().flatten() {
                    li {
                        (when(&e["at"], off)) " — "
                        @if e["kind"] == "phase" {
                            (state_name(&ui, e["from"].as_str().unwrap_or(""))) " → " (state_name(&ui, e["to"].as_str().unwrap_or("")))
                            " (" (tx(&e["by"])) ")"
                            @if let Some(n) = e["note"].as_str() { ": " (n) }
                        } @else {
                            (ui.t("警報", "alert")) " [" (codes::severity(ui.lang, e["severity"].as_str().unwrap_or(""))) "] " (tx(&e["message"]))
                        }
                    }
                }
            }
            h3 { "6. " (ui.t("実施した対応", "Actions taken")) }
            @if rep["actions"].as_array().is_none_or(|a| a.is_empty()) { p.muted { (ui.t("記録なし", "none recorded")) } }
            ul {
                @for a in rep["actions"].as_array().into_iter().flatten() {
                    li {
                        (when(&a["at"], off)) " [" (state_name(&ui, a["phase"].as_str().unwrap_or(""))) "] "
                        @if a["ja"].is_string() { (both(a)) } @else { (tx(&a["item"])) }
                        " (" (tx(&a["by"])) ")"
                        @if let Some(n) = a["note"].as_str() { ": " (n) }
                    }
                }
            }
            h3 { "7. " (ui.t("証拠保全", "Evidence preserved")) }
            p { (ui.t("宣言時の署名付き監査チェックポイント", "Signed audit checkpoint at declaration")) ":" }
            pre.checkpoint { (tx(&rep["checkpoint"])) }
            dl.facts {
                dt { (ui.t("監査ログのエクスポート", "Audit log export")) } dd { code { (tx(&rep["evidence"]["path"])) } }
                dt { "SHA-256" } dd { @match rep["evidence"]["sha256"].as_str() { Some(h) => code { (h) }, None => (ui.t("作成中", "being written")) } }
                dt { (ui.t("検証", "Verify")) } dd { code { "mamori audit verify --export FILE --key LOG-KEY" } }
            }
            h3 { "8. " (ui.t("報告・連絡状況", "Reporting")) }
            ul.checklist {
                @for x in rep["reporting"].as_array().into_iter().flatten() {
                    @if x["done"] == true {
                        li.done { "☑ " (both(x)) " — " (when(&x["at"], off)) " (" (tx(&x["by"])) ")" @if let Some(n) = x["note"].as_str() { " — " (n) } }
                    } @else {
                        li { "☐ " (both(x)) " — " strong { (ui.t("未報告", "not yet reported")) } }
                    }
                }
            }
            h3 { "9. " (ui.t("連絡先", "Contact")) }
            p { (tx(&rep["contact"]["function"])) " " (tx(&rep["contact"]["name"])) " " (tx(&rep["contact"]["phone"])) }
        }
        @if ui.may(Operation::IncidentReportRecord) {
            h2.noprint { (ui.t("報告済みの記録", "Record a report as made")) }
            div.noprint {
                @for x in rep["reporting"].as_array().into_iter().flatten().filter(|x| x["done"] != true) {
                    @let rcp = x["recipient"].as_str().unwrap_or("");
                    form.card method="post" action={ "/ui/bcp/" (id) "/incident/" (rcp) } {
                        (ui.csrf_field())
                        label for={ "note-" (rcp) } { (ui.t("メモ（受付番号など）", "Note (reference number, ...)")) }
                        input id={ "note-" (rcp) } name="note" type="text";
                        p { button type="submit" { (both(x)) " — " (ui.t("報告済みとして記録", "record as reported")) } }
                    }
                }
            }
        }
    };
    ui.page(&title, body)
}

/// The report as a PDF, made on the server (the Japanese font embedded).
pub(crate) async fn incident_pdf(ui: Ui, Path(id): Path<i64>) -> Response {
    match bcp::incident_report_pdf(&ui.svc, &ui.actor, id).await {
        Ok(bytes) => (
            [
                (axum::http::header::CONTENT_TYPE, "application/pdf".to_owned()),
                (axum::http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"incident-report-{id}.pdf\"")),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            let mut r =
                ui.page(ui.t("サイバー攻撃被害の報告", "Cyber-incident report"), notice("error", &ui.why_err(&e)));
            *r.status_mut() =
                axum::http::StatusCode::from_u16(e.status()).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
            r
        }
    }
}

pub(crate) async fn reported(ui: Ui, Path((id, recipient)): Path<(i64, String)>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let note = field(&f, "note").trim();
    let req = bcp::Reported { note: (!note.is_empty()).then(|| note.to_owned()) };
    ui.once(&f, || async {
        let r = Api::of(bcp::reported(&ui.svc, &ui.actor, id, &recipient, req).await);
        if r.ok() {
            Ok(format!("/ui/bcp/{id}/incident"))
        } else {
            Err(Box::new(ui.page(ui.t("報告", "Report"), notice("error", &ui.why(&r)))))
        }
    })
    .await
}

// ---- the plan ---------------------------------------------------------------------------

fn plan_form(
    ui: &Ui,
    text: &str,
    version: &Value,
    saved: bool,
    issues: &[(String, Option<String>)],
    err: Option<&str>,
) -> Response {
    let may_edit = ui.may(Operation::BcpPlanChange { deciders_changed: false });
    let body = html! {
        @if saved { (notice("ok", ui.t("計画を保存しました。現在のフェーズの規則にも反映されます。", "The plan is saved; the rules of the current phase follow it."))) }
        @if let Some(e) = err { (notice("error", e)) }
        @if !issues.is_empty() {
            div.notice.error role="alert" {
                p { strong { (ui.t("計画に誤りがあります。直して保存してください（何も変更されていません）:", "The plan has errors; correct them and save again (nothing was changed):")) } }
                ul { @for (m, path) in issues { li { @if let Some(p) = path { code { (p) } ": " } (m) } } }
            }
        }
        p.muted {
            (ui.t("BCP計画（TOML形式）。宣言の基準、フェーズごとのチェックリストと規則、決定者、連絡先を定めます。書式は docs/example-bcp-plan.toml を参照してください。", "The BCP plan (TOML): declaration criteria, each phase's checklist and rules, deciders, contacts. See docs/example-bcp-plan.toml for the format."))
            " " (ui.t("現在の版", "Version in force")) ": " (tx(version))
        }
        form.card method="post" action="/ui/bcp/plan" {
            (ui.csrf_field())
            label for="plan" { (ui.t("計画", "Plan")) }
            textarea #plan.code name="plan" rows="30" spellcheck="false" readonly[!may_edit] { (text) }
            @if may_edit {
                p { button type="submit" { (ui.t("検証して保存", "Check and save")) } }
            } @else {
                p.muted { (ui.t("計画を変更できるのはBCPチームです。", "The BCP team changes the plan.")) }
            }
        }
    };
    ui.page(ui.t("BCP計画", "BCP plan"), body)
}

pub(crate) async fn plan_page(
    ui: Ui,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let t = Api::of(bcp::plan(&ui.svc, &ui.actor, true).await);
    let v = Api::of(bcp::plan(&ui.svc, &ui.actor, false).await);
    if !t.ok() {
        return ui.page(ui.t("BCP計画", "BCP plan"), notice("error", &ui.why(&t)));
    }
    plan_form(&ui, t.body.as_str().unwrap_or(""), &v.body["version"], q.contains_key("saved"), &[], None)
}

pub(crate) async fn plan_post(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let text = field(&f, "plan").to_owned();
    ui.once(&f, || async {
        match bcp::put_plan(&ui.svc, &ui.actor, text.clone()).await {
            Ok(_) => Ok("/ui/bcp/plan?saved=1".to_owned()),
            Err(e) => {
                let v = Api::of(bcp::plan(&ui.svc, &ui.actor, false).await);
                let (issues, err) =
                    if e.status() == 400 { (e.issues(), None) } else { (Vec::new(), Some(ui.why_err(&e))) };
                Err(Box::new(plan_form(&ui, &text, &v.body["version"], false, &issues, err.as_deref())))
            }
        }
    })
    .await
}
