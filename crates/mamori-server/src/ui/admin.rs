//! Administration: users and roles, care assignments, sealed emergency
//! accounts (provision, print the envelope), maintenance requests and
//! approvals, snapshots (create, list, verify), the reconciliation queue.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use mamori_service::continuity::{reconcile as rec, snapshot};
use mamori_service::records::enc;
use mamori_service::{accounts, eaccounts as eacc, maintenance as maint, Services};
use serde_json::{json, Value};

use super::html::{ev, notice, when};
use super::{cmd, esc, field, fields, form, Api, Next, Ui};

pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/ui/admin", get(|| async { Redirect::to("/ui/admin/users") }))
        .route("/ui/admin/users", get(users).post(user_create))
        .route("/ui/admin/users/{name}", post(user_update))
        .route("/ui/admin/requests", get(requests))
        .route("/ui/admin/requests/{id}", post(request_decide))
        .route("/ui/admin/care", get(care).post(care_assign))
        .route("/ui/admin/care/{id}/end", post(care_end))
        .route("/ui/admin/emergency-accounts", get(eaccounts).post(eaccounts_provision))
        .route("/ui/admin/emergency-accounts/{name}/envelope", get(envelope_page).post(envelope))
        .route("/ui/admin/maintenance", get(maintenance))
        .route("/ui/admin/maintenance/{id}/{action}", post(maintenance_decide))
        .route("/ui/admin/snapshots", get(snapshots).post(snapshot_create))
        .route("/ui/admin/snapshots/{id}/verify", post(snapshot_verify))
        .route("/ui/admin/reconcile", get(reconcile))
        .route("/ui/admin/reconcile/{id}", post(reconcile_resolve))
}

const ROLES: [(&str, &str, &str); 7] = [
    ("physician", "医師", "Physician"),
    ("nurse", "看護師", "Nurse"),
    ("pharmacist", "薬剤師", "Pharmacist"),
    ("clerk", "医事課", "Clerk"),
    ("admin", "システム管理者", "Administrator"),
    ("auditor", "監査担当", "Auditor"),
    ("bcp-decider", "BCP決定者", "BCP decider"),
];

fn tabs(ui: &Ui) -> String {
    let items = [
        ("/ui/admin/users", ui.t("利用者と権限", "Users and roles")),
        ("/ui/admin/requests", ui.t("承認待ちの変更", "Changes to approve")),
        ("/ui/admin/care", ui.t("担当関係", "Care assignments")),
        ("/ui/admin/emergency-accounts", ui.t("非常用アカウント", "Emergency accounts")),
        ("/ui/admin/maintenance", ui.t("リモート保守", "Remote maintenance")),
        ("/ui/admin/snapshots", ui.t("参照用スナップショット", "Snapshots")),
        ("/ui/admin/reconcile", ui.t("突合せ（非常時記録）", "Reconciliation")),
    ];
    super::html::tabs(ui, &items)
}

fn done(ui: &Ui, r: &Api, back: &str) -> Response {
    if r.ok() {
        Redirect::to(back).into_response()
    } else {
        ui.page(
            ui.t("管理", "Administration"),
            &format!(
                "{}{}<p><a href=\"{back}\">{}</a></p>",
                tabs(ui),
                notice("error", &r.message()),
                ui.t("戻る", "Back")
            ),
        )
    }
}

/// Where a form that succeeded leads (`to`), or the page that says why
/// it did not.
fn then(ui: &Ui, r: &Api, to: &str) -> Next {
    if r.ok() {
        Ok(to.to_owned())
    } else {
        Err(Box::new(done(ui, r, to)))
    }
}

fn opt(f: &[(String, String)], k: &str) -> Value {
    let v = field(f, k).trim();
    if v.is_empty() {
        Value::Null
    } else {
        json!(v)
    }
}

// ---- users -----------------------------------------------------------------------

pub(crate) async fn users(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let shown = ui.flash(&q);
    users_page(&ui, shown).await
}

async fn users_page(ui: &Ui, created: Option<String>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(accounts::list_users(&ui.svc, &ui.actor).await.map(|u| json!({"users": u})));
    let mut body = tabs(ui);
    if let Some(c) = created {
        body.push_str(&c);
    }
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("利用者と権限", "Users and roles"), &body);
    }
    let role_boxes: String = ROLES
        .iter()
        .map(|(v, ja, en)| {
            format!(
                "<label class=\"check\"><input type=\"checkbox\" name=\"roles\" value=\"{v}\"> {}</label>",
                ui.t(ja, en)
            )
        })
        .collect();
    body.push_str(&format!(
        r#"<details class="card"><summary>{h}</summary><form method="post" action="/ui/admin/users">{csrf}<div class="grid">
<div><label for="name">{nl}</label><input id="name" name="name" type="text" required pattern="[a-z0-9][a-z0-9._-]{{1,63}}"></div>
<div><label for="display">{dl}</label><input id="display" name="display" type="text" required></div>
<div><label for="department">{depl}</label><input id="department" name="department" type="text"></div></div>
<fieldset><legend>{rl}</legend>{roles}</fieldset><p><button type="submit">{b}</button></p></form></details>"#,
        h = ui.t("利用者を追加", "Add a user"),
        csrf = ui.csrf_field(),
        nl = ui.t("ログイン名（英小文字・数字）", "Login name (lower-case letters, digits)"),
        dl = ui.t("氏名", "Full name"),
        depl = ui.t("部署", "Department"),
        rl = ui.t("役割", "Roles"),
        roles = role_boxes,
        b = ui.t("追加（初期パスワードを表示）", "Add (shows a one-time password)"),
    ));
    body.push_str(&format!(
        "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr></thead><tbody>",
        ui.t("ログイン名", "Login"),
        ui.t("氏名", "Name"),
        ui.t("部署", "Department"),
        ui.t("役割", "Roles"),
        ui.t("状態", "State")
    ));
    for u in r.body["users"].as_array().into_iter().flatten() {
        let name = u["name"].as_str().unwrap_or("");
        let roles: Vec<String> = u["roles"].as_array().into_iter().flatten().map(ev).collect();
        let mut state = vec![];
        if u["disabled"] == true {
            state.push(format!("<span class=\"badge black\">{}</span>", ui.t("無効", "disabled")));
        }
        if u["kind"] == "emergency" {
            state.push(format!("<span class=\"badge red\">{}</span>", ui.t("非常用", "emergency")));
        }
        if u["must_change_password"] == true {
            state.push(ui.t("初回パスワード変更待ち", "must change password").to_owned());
        }
        if u["totp"] == true {
            state.push("TOTP".to_owned());
        }
        if !u["locked_until"].is_null() {
            state.push(format!("{} {}", ui.t("ロック中", "locked until"), when(&u["locked_until"], off)));
        }
        let toggle = if u["kind"] == "emergency" {
            String::new()
        } else {
            format!(
                "<form method=\"post\" action=\"/ui/admin/users/{n}\" class=\"inline\">{csrf}<input type=\"hidden\" name=\"op\" value=\"{op}\"><button type=\"submit\" class=\"secondary\">{l}</button></form> <form method=\"post\" action=\"/ui/admin/users/{n}\" class=\"inline\">{csrf}<input type=\"hidden\" name=\"op\" value=\"reset\"><button type=\"submit\" class=\"secondary\">{rl}</button></form>",
                n = enc(name),
                csrf = ui.csrf_field(),
                op = if u["disabled"] == true { "enable" } else { "disable" },
                l = if u["disabled"] == true { ui.t("有効にする", "Enable") } else { ui.t("無効にする", "Disable") },
                rl = ui.t("パスワード再発行", "Reset password"),
            )
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{toggle}</td></tr>",
            esc(name),
            ev(&u["display"]),
            ev(&u["department"]),
            roles.join(", "),
            state.join(" ")
        ));
    }
    body.push_str("</tbody></table>");
    ui.page(ui.t("利用者と権限", "Users and roles"), &body)
}

fn one_time(ui: &Ui, name: &str, pw: &str) -> String {
    format!(
        "<div class=\"notice ok\" role=\"alert\"><p>{} <strong>{}</strong></p><p>{}: <code class=\"secret\">{}</code></p><p>{}</p></div>",
        ui.t("利用者を登録しました:", "User ready:"),
        esc(name),
        ui.t("初期パスワード（一度だけ表示）", "One-time password (shown once)"),
        esc(pw),
        ui.t("本人に安全な方法で渡してください。初回ログイン時に変更が求められます。", "Hand it over in person; it must be changed at first login.")
    )
}

pub(crate) async fn user_create(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    ui.once(&f, || async {
        let req = json!({"name": field(&f, "name").trim(), "display": field(&f, "display").trim(), "roles": fields(&f, "roles"), "department": opt(&f, "department")});
        let r = match cmd(req) {
            Ok(req) => Api::of(accounts::create_user(&ui.svc, &ui.actor, req).await),
            Err(e) => Api::of::<()>(Err(e)),
        };
        then(&ui, &r, "/ui/admin/users")?;
        // The one-time password is shown once, on the page this leads to
        // (kept in memory, never in a URL or the database).
        let mut msg = one_time(&ui, field(&f, "name").trim(), r.body["one_time_password"].as_str().unwrap_or(""));
        if let Some(id) = r.body["pending_request"].as_i64() {
            msg.push_str(&pending(&ui, id));
        }
        ui.flash_to("/ui/admin/users", msg)
    })
    .await
}

pub(crate) async fn user_update(ui: Ui, Path(name): Path<String>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    match field(&f, "op") {
        "reset" => {
            ui.once(&f, || async {
                let r = Api::of(accounts::reset_password(&ui.svc, &ui.actor, &name).await);
                then(&ui, &r, "/ui/admin/users")?;
                let msg = match (r.body["one_time_password"].as_str(), r.body["pending_request"].as_i64()) {
                    (Some(pw), _) => one_time(&ui, &name, pw),
                    (None, Some(id)) => pending(&ui, id),
                    (None, None) => String::new(),
                };
                ui.flash_to("/ui/admin/users", msg)
            })
            .await
        }
        op @ ("enable" | "disable") => {
            let change = accounts::AccountChange { disabled: Some(op == "disable"), ..Default::default() };
            let r = Api::of(accounts::update_user(&ui.svc, &ui.actor, &name, change).await);
            done(&ui, &r, "/ui/admin/users")
        }
        _ => Redirect::to("/ui/admin/users").into_response(),
    }
}

fn pending(ui: &Ui, id: i64) -> String {
    notice(
        "info",
        &format!(
            "{} #{id} — {}",
            ui.t("承認依頼", "Request"),
            ui.t(
                "診療上の役割の付与・パスワード再発行は、別の管理者の承認後に有効になります。",
                "Clinical roles (and password resets of clinical accounts) take effect once another administrator approves."
            )
        ),
    )
}

// ---- account changes a second admin approves ---------------------------------------------------

pub(crate) async fn requests(ui: Ui) -> Response {
    let r = Api::of(accounts::list_requests(&ui.svc, &ui.actor, false).await.map(|r| json!({"requests": r})));
    let mut body = tabs(&ui);
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("承認待ちの変更", "Changes to approve"), &body);
    }
    body.push_str(&format!(
        "<p class=\"muted\">{}</p><table><thead><tr><th>#</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr></thead><tbody>",
        ui.t(
            "診療記録に触れる権限の付与は、依頼した管理者とは別の管理者が承認します（職務の分離）。",
            "A grant that reaches clinical records is approved by an administrator other than the one who asked (separation of duties)."
        ),
        ui.t("内容", "Change"),
        ui.t("利用者", "User"),
        ui.t("依頼者", "Asked by"),
        ui.t("日時", "When"),
        ui.t("状態", "State"),
    ));
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    for q in r.body["requests"].as_array().into_iter().flatten() {
        let id = q["id"].as_i64().unwrap_or(0);
        let what = format!(
            "{} {}",
            ev(&q["kind"]),
            q["roles"].as_array().into_iter().flatten().map(ev).collect::<Vec<_>>().join(", ")
        );
        let actions = if q["state"] == "pending" {
            format!(
                "<form method=\"post\" action=\"/ui/admin/requests/{id}\" class=\"inline\">{csrf}<button type=\"submit\" name=\"decision\" value=\"approve\">{a}</button> <button type=\"submit\" name=\"decision\" value=\"reject\" class=\"secondary\">{rj}</button></form>",
                csrf = ui.csrf_field(),
                a = ui.t("承認", "Approve"),
                rj = ui.t("却下", "Reject"),
            )
        } else {
            format!("{} {}", ev(&q["decided_by"]), when(&q["decided_at"], off))
        };
        body.push_str(&format!(
            "<tr><td>{id}</td><td>{what}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{actions}</td></tr>",
            ev(&q["user"]),
            ev(&q["requested_by"]),
            when(&q["requested_at"], off),
            ev(&q["state"]),
        ));
    }
    body.push_str("</tbody></table>");
    ui.page(ui.t("承認待ちの変更", "Changes to approve"), &body)
}

pub(crate) async fn request_decide(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let approve = field(&f, "decision") == "approve";
    ui.once(&f, || async {
        let r = Api::of(accounts::decide_request(&ui.svc, &ui.actor, id, approve).await);
        then(&ui, &r, "/ui/admin/requests")?;
        match r.body["one_time_password"].as_str() {
            // A reset's one-time password goes to the approving admin, once.
            Some(pw) => {
                let user = r.body["request"]["user"].as_str().unwrap_or("").to_owned();
                ui.flash_to("/ui/admin/users", one_time(&ui, &user, pw))
            }
            None => Ok("/ui/admin/requests".to_owned()),
        }
    })
    .await
}

// ---- care assignments --------------------------------------------------------------------

pub(crate) async fn care(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let r = Api::of(
        accounts::list_care(&ui.svc, &ui.actor, get("patient"), get("user")).await.map(|a| json!({"assignments": a})),
    );
    let mut body = tabs(&ui);
    body.push_str(&format!(
        r#"<form method="post" action="/ui/admin/care" class="card">{csrf}<h2>{h}</h2><div class="grid">
<div><label for="patient">{pl}</label><input id="patient" name="patient" type="text" required></div>
<div><label for="user">{ul}</label><input id="user" name="user" type="text"></div>
<div><label for="department">{dl}</label><input id="department" name="department" type="text"></div></div>
<label for="reason">{rl}</label><input id="reason" name="reason" type="text"><p class="muted">{hint}</p><p><button type="submit">{b}</button></p></form>"#,
        csrf = ui.csrf_field(),
        h = ui.t("担当関係を登録", "Assign care"),
        pl = ui.t("患者ID", "Patient id"),
        ul = ui.t("担当者（ログイン名）", "Staff member (login)"),
        dl = ui.t("または部署", "or department"),
        rl = ui.t("理由", "Reason"),
        hint = ui.t("担当者か部署のどちらかを指定します。", "Give a staff member or a department."),
        b = ui.t("登録", "Assign"),
    ));
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("担当関係", "Care assignments"), &body);
    }
    body.push_str(&format!(
        "<form method=\"get\" action=\"/ui/admin/care\" class=\"inline\"><label for=\"fp\">{}</label><input id=\"fp\" name=\"patient\" type=\"text\"> <button type=\"submit\" class=\"secondary\">{}</button></form>",
        ui.t("患者で絞り込み", "Filter by patient"),
        ui.t("絞り込み", "Filter")
    ));
    body.push_str(&format!(
        "<table><thead><tr><th>#</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr></thead><tbody>",
        ui.t("患者", "Patient"),
        ui.t("担当者・部署", "Staff or department"),
        ui.t("理由", "Reason"),
        ui.t("開始", "Since"),
        ui.t("終了", "Ended")
    ));
    for a in r.body["assignments"].as_array().into_iter().flatten().take(500) {
        let end = if a["ended"].is_null() {
            format!(
                "<form method=\"post\" action=\"/ui/admin/care/{}/end\" class=\"inline\">{}<button type=\"submit\" class=\"secondary\">{}</button></form>",
                ev(&a["id"]),
                ui.csrf_field(),
                ui.t("終了", "End")
            )
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"/ui/patients/{p}\">{p}</a></td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{end}</td></tr>",
            ev(&a["id"]),
            ev(&a["user"]),
            a["department"].as_str().map(|d| format!(" [{}]", esc(d))).unwrap_or_default(),
            ev(&a["reason"]),
            ev(&a["start"]),
            ev(&a["ended"]),
            p = ev(&a["patient"]),
        ));
    }
    body.push_str("</tbody></table>");
    ui.page(ui.t("担当関係", "Care assignments"), &body)
}

pub(crate) async fn care_assign(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    ui.once(&f, || async {
        let req = json!({"patient": field(&f, "patient").trim().trim_start_matches("Patient/"), "user": opt(&f, "user"), "department": opt(&f, "department"), "reason": opt(&f, "reason")});
        let r = match cmd(req) {
            Ok(req) => Api::of(accounts::assign_care(&ui.svc, &ui.actor, req).await),
            Err(e) => Api::of::<()>(Err(e)),
        };
        then(&ui, &r, "/ui/admin/care")
    })
    .await
}

pub(crate) async fn care_end(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let r = Api::of(accounts::end_care(&ui.svc, &ui.actor, id).await);
    done(&ui, &r, "/ui/admin/care")
}

// ---- emergency accounts -------------------------------------------------------------------

pub(crate) async fn eaccounts(ui: Ui) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(eacc::list(&ui.svc, &ui.actor).await.map(|a| json!({"accounts": a})));
    let mut body = tabs(&ui);
    body.push_str(&format!(
        r#"<form method="post" action="/ui/admin/emergency-accounts" class="card">{csrf}<h2>{h}</h2><div class="grid">
<div><label for="count">{cl}</label><input id="count" name="count" type="number" min="1" max="50" value="1"></div>
<div><label for="role">{rl}</label><select id="role" name="roles"><option value="physician">{ph}</option><option value="nurse">{nu}</option></select></div></div>
<label class="check"><input type="checkbox" name="drill" value="1"> {dl}</label><p><button type="submit">{b}</button></p></form>"#,
        csrf = ui.csrf_field(),
        h = ui.t("非常用アカウントを用意する", "Provision emergency accounts"),
        cl = ui.t("数", "How many"),
        rl = ui.t("役割", "Role"),
        ph = ui.t("医師", "Physician"),
        nu = ui.t("看護師", "Nurse"),
        dl = ui.t("訓練用（訓練中のみ使用可）", "For drills (usable only during drills)"),
        b = ui.t("作成", "Provision"),
    ));
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("非常用アカウント", "Emergency accounts"), &body);
    }
    body.push_str(&format!(
        "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr></thead><tbody>",
        ui.t("アカウント", "Account"),
        ui.t("状態", "State"),
        ui.t("役割", "Roles"),
        ui.t("封緘・使用", "Sealed, used"),
        ui.t("使用した本人", "Used by")
    ));
    for a in r.body["accounts"].as_array().into_iter().flatten() {
        let name = a["account"].as_str().unwrap_or("");
        let st = a["state"].as_str().unwrap_or("");
        let action = if st == "awaiting_envelope" || st == "created" {
            format!(
                "<form method=\"post\" action=\"/ui/admin/emergency-accounts/{}/envelope\" class=\"inline\">{}<button type=\"submit\">{}</button></form>",
                enc(name),
                ui.csrf_field(),
                ui.t("封筒を印刷して封緘", "Print the sealed envelope")
            )
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{action}</td></tr>",
            esc(name),
            if a["drill"] == true {
                format!(" <span class=\"badge yellow\">{}</span>", ui.t("訓練", "drill"))
            } else {
                String::new()
            },
            esc(st),
            a["roles"].as_array().into_iter().flatten().map(ev).collect::<Vec<_>>().join(", "),
            when(&a["sealed_at"], off),
            when(&a["unsealed_at"], off),
            ev(&a["declared_person"]),
        ));
    }
    body.push_str("</tbody></table>");
    ui.page(ui.t("非常用アカウント", "Emergency accounts"), &body)
}

pub(crate) async fn eaccounts_provision(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let count: u32 = field(&f, "count").parse().unwrap_or(1);
    ui.once(&f, || async {
        let req = json!({"count": count, "roles": fields(&f, "roles"), "drill": field(&f, "drill") == "1"});
        let r = match cmd(req) {
            Ok(req) => Api::of(eacc::provision(&ui.svc, &ui.actor, req).await),
            Err(e) => Api::of::<()>(Err(e)),
        };
        then(&ui, &r, "/ui/admin/emergency-accounts")
    })
    .await
}

pub(crate) async fn envelope(ui: Ui, Path(name): Path<String>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    ui.once(&f, || async {
        let r = Api::of(eacc::envelope(&ui.svc, &ui.actor, &name).await);
        then(&ui, &r, "/ui/admin/emergency-accounts")?;
        // Printed from the page this leads to, once (kept in memory only).
        let to = format!("/ui/admin/emergency-accounts/{}/envelope", enc(&name));
        ui.flash_to(&to, envelope_html(&ui, &r.body))
    })
    .await
}

/// The envelope printed once after [`envelope`]; a second look finds it
/// gone.
pub(crate) async fn envelope_page(
    ui: Ui,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let title = ui.t("非常用アカウントの封筒", "Emergency account envelope");
    match ui.flash(&q) {
        Some(body) => ui.page(title, &body),
        None => ui.page(
            title,
            &format!(
                "{}{}<p><a href=\"/ui/admin/emergency-accounts\">{}</a></p>",
                tabs(&ui),
                notice(
                    "error",
                    &format!(
                        "{} ({name})",
                        ui.t(
                            "封筒は一度だけ表示され、もう表示できません。印刷できなかった場合は、このアカウントを廃止して新しく用意してください。",
                            "The envelope was shown once and cannot be shown again. If it was not printed, retire this account and provision a new one."
                        )
                    )
                ),
                ui.t("非常用アカウントへ戻る", "Back to emergency accounts")
            ),
        ),
    }
}

fn envelope_html(ui: &Ui, e: &Value) -> String {
    format!(
        r#"<p class="noprint">{warn} <button type="button" class="secondary" data-print>{print}</button></p>
<section class="envelope"><h2>{inst}</h2><h3>{title}{drill}</h3>
<p>{al}: <code>{acc}</code></p><p>{pl}: <code class="secret">{pw}</code></p><p>{rl}: {roles}</p>
<p>{ja}</p><p>{en}</p><p class="muted">{printed}: {at}</p></section>"#,
        warn = ui.t(
            "このパスワードは二度と表示されません。印刷して封筒に入れ、封をしてください。",
            "This password is never shown again: print it, put it in the envelope and seal it."
        ),
        print = ui.t("印刷", "Print"),
        inst = ev(&e["institution"]),
        title = ui.t(
            "非常用アカウント（封緘）/ Sealed emergency account",
            "Sealed emergency account / 非常用アカウント（封緘）"
        ),
        drill = if e["drill"] == true { " — 訓練用 / DRILL" } else { "" },
        al = ui.t("アカウント", "Account"),
        acc = ev(&e["account"]),
        pl = ui.t("パスワード", "Password"),
        pw = ev(&e["password"]),
        rl = ui.t("役割", "Roles"),
        roles = e["roles"].as_array().into_iter().flatten().map(ev).collect::<Vec<_>>().join(", "),
        ja = ev(&e["instructions"]["ja"]),
        en = ev(&e["instructions"]["en"]),
        printed = ui.t("印刷日時", "Printed"),
        at = ev(&e["printed_at"]),
    )
}

// ---- maintenance ----------------------------------------------------------------------------

pub(crate) async fn maintenance(ui: Ui) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(maint::list_requests(&ui.svc, &ui.actor, None, None).await.map(|r| json!({"requests": r})));
    let mut body = tabs(&ui);
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("リモート保守", "Remote maintenance"), &body);
    }
    body.push_str(&format!(
        "<table><thead><tr><th>#</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        ui.t("作業者", "Person"),
        ui.t("理由・範囲", "Reason, scopes"),
        ui.t("時間枠", "Window"),
        ui.t("状態", "State"),
        ui.t("承認", "Approvals"),
        ui.t("操作", "Action")
    ));
    for m in r.body["requests"].as_array().into_iter().flatten() {
        let id = m["id"].as_i64().unwrap_or(0);
        let st = m["state"].as_str().unwrap_or("");
        let action = match st {
            "requested" => format!(
                "<form method=\"post\" action=\"/ui/admin/maintenance/{id}/approve\" class=\"inline\">{c}<button type=\"submit\">{a}</button></form> <form method=\"post\" action=\"/ui/admin/maintenance/{id}/reject\" class=\"inline\">{c}<input name=\"reason\" type=\"text\" required placeholder=\"{rp}\" aria-label=\"{rp}\"><button type=\"submit\" class=\"danger\">{r}</button></form>",
                c = ui.csrf_field(),
                a = ui.t("承認", "Approve"),
                r = ui.t("却下", "Reject"),
                rp = ui.t("却下の理由", "Reason for rejecting"),
            ),
            "approved" => format!(
                "<form method=\"post\" action=\"/ui/admin/maintenance/{id}/revoke\" class=\"inline\">{c}<input name=\"reason\" type=\"text\" required placeholder=\"{rp}\" aria-label=\"{rp}\"><button type=\"submit\" class=\"danger\">{r}</button></form>",
                c = ui.csrf_field(),
                r = ui.t("取り消し", "Revoke"),
                rp = ui.t("取り消しの理由", "Reason for revoking"),
            ),
            _ => String::new(),
        };
        body.push_str(&format!(
            "<tr><td>{id}</td><td>{}{}</td><td>{}<br><code>{}</code></td><td>{} — {}</td><td>{}{}</td><td>{} / {}</td><td>{action}</td></tr>",
            ev(&m["person"]),
            if m["emergency"] == true { format!(" <span class=\"badge red\">{}</span>", ui.t("緊急", "emergency")) } else { String::new() },
            ev(&m["reason"]),
            esc(&m["scopes"].to_string()),
            when(&m["start"], off),
            when(&m["end"], off),
            esc(st),
            if m["live"] == true { format!(" <span class=\"badge red\">{}</span>", ui.t("作業可能", "live")) } else { String::new() },
            m["approvals"].as_array().map_or(0, Vec::len),
            ev(&m["needed"]),
        ));
    }
    body.push_str("</tbody></table>");
    ui.page(ui.t("リモート保守", "Remote maintenance"), &body)
}

pub(crate) async fn maintenance_decide(ui: Ui, Path((id, action)): Path<(i64, String)>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let r = match action.as_str() {
        "approve" => {
            let note = field(&f, "note").trim();
            let req = maint::Note { note: (!note.is_empty()).then(|| note.to_owned()) };
            Api::of(maint::approve(&ui.svc, &ui.actor, id, req).await)
        }
        to @ ("reject" | "revoke") => {
            let to = if to == "reject" { "rejected" } else { "revoked" };
            match cmd(json!({"reason": field(&f, "reason")})) {
                Ok(req) => Api::of(maint::decide_as(&ui.svc, &ui.actor, id, req, to).await),
                Err(e) => Api::of::<()>(Err(e)),
            }
        }
        _ => return Redirect::to("/ui/admin/maintenance").into_response(),
    };
    done(&ui, &r, "/ui/admin/maintenance")
}

// ---- snapshots ------------------------------------------------------------------------------

pub(crate) async fn snapshots(ui: Ui) -> Response {
    snapshots_page(&ui, None).await
}

async fn snapshots_page(ui: &Ui, msg: Option<String>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(snapshot::list(&ui.svc, &ui.actor).await.map(|(rows, dir)| json!({"snapshots": rows, "dir": dir})));
    let mut body = tabs(ui);
    if let Some(m) = msg {
        body.push_str(&m);
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/ui/admin/snapshots\">{}<button type=\"submit\">{}</button> <span class=\"muted\">{}</span></form>",
        ui.csrf_field(),
        ui.t("今すぐスナップショットを作成", "Create a snapshot now"),
        ui.t("暗号化・署名された参照用コピーです。閲覧には管理者の鍵（分割保管）が必要です。", "An encrypted, signed reference copy; opening it needs the custodians' key shares.")
    ));
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("参照用スナップショット", "Snapshots"), &body);
    }
    body.push_str(&format!(
        "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>SHA-256</th><th></th></tr></thead><tbody>",
        ui.t("作成", "Created"),
        ui.t("患者数", "Patients"),
        ui.t("リソース数", "Resources"),
        ui.t("サイズ", "Size"),
    ));
    for s in r.body["snapshots"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1} MB</td><td><code>{}</code></td><td><form method=\"post\" action=\"/ui/admin/snapshots/{}/verify\" class=\"inline\">{}<button type=\"submit\" class=\"secondary\">{}</button></form></td></tr>",
            when(&s["created"], off),
            ev(&s["patients"]),
            ev(&s["resources"]),
            s["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            esc(&s["sha256"].as_str().unwrap_or("").chars().take(16).collect::<String>()),
            enc(s["id"].as_str().unwrap_or("")),
            ui.csrf_field(),
            ui.t("検証", "Verify")
        ));
    }
    body.push_str("</tbody></table>");
    ui.page(ui.t("参照用スナップショット", "Snapshots"), &body)
}

pub(crate) async fn snapshot_create(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    ui.once(&f, || async {
        let r = Api::of(snapshot::create_now(&ui.svc, &ui.actor).await);
        then(&ui, &r, "/ui/admin/snapshots")
    })
    .await
}

pub(crate) async fn snapshot_verify(ui: Ui, Path(id): Path<String>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let r = Api::of(snapshot::verify_one(&ui.svc, &ui.actor, &id).await);
    let msg = if r.ok() && r.body["ok"] == true {
        notice(
            "ok",
            &format!(
                "{} {id} — {:.2} s",
                ui.t("完全性と署名を確認しました:", "Intact and signed:"),
                r.body["seconds"].as_f64().unwrap_or(0.0)
            ),
        )
    } else if r.ok() {
        notice(
            "error",
            &format!(
                "{} {id}: {}",
                ui.t("検証に失敗しました", "Verification FAILED"),
                r.body["error"].as_str().unwrap_or("")
            ),
        )
    } else {
        notice("error", &r.message())
    };
    snapshots_page(&ui, Some(msg)).await
}

// ---- reconciliation -------------------------------------------------------------------------

pub(crate) async fn reconcile(ui: Ui) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(rec::tasks(&ui.svc, &ui.actor, Some("open".into())).await.map(|t| json!({"tasks": t})));
    let mut body = tabs(&ui);
    if !r.ok() {
        body.push_str(&notice("error", &r.message()));
        return ui.page(ui.t("突合せ", "Reconciliation"), &body);
    }
    let tasks: Vec<&Value> = r.body["tasks"].as_array().into_iter().flatten().collect();
    if tasks.is_empty() {
        body.push_str(&notice("ok", ui.t("未解決の突合せ課題はありません。", "No open reconciliation tasks.")));
    }
    for t in tasks {
        let id = t["id"].as_i64().unwrap_or(0);
        let kind = t["kind"].as_str().unwrap_or("");
        let choices = match kind {
            "conflict" => format!(
                "<button type=\"submit\" name=\"keep\" value=\"central\">{}</button> <button type=\"submit\" name=\"keep\" value=\"offline\" class=\"secondary\">{}</button>",
                ui.t("本システムの記録を残す", "Keep the central record"),
                ui.t("非常時の記録を採用", "Take the offline record")
            ),
            "match" => format!(
                "<label for=\"m-{id}\">{}</label><input id=\"m-{id}\" name=\"merge_into\" type=\"text\"> <button type=\"submit\">{}</button> <button type=\"submit\" name=\"keep_as_new\" value=\"1\" class=\"secondary\">{}</button>",
                ui.t("統合先の患者ID", "Merge into patient id"),
                ui.t("統合", "Merge"),
                ui.t("新規患者として残す", "Keep as a new patient")
            ),
            "unknown_patient" => format!(
                "<label for=\"a-{id}\">{}</label><input id=\"a-{id}\" name=\"assign_to\" type=\"text\"> <button type=\"submit\">{}</button> <button type=\"submit\" name=\"discard\" value=\"1\" class=\"danger\">{}</button>",
                ui.t("この患者の記録とする（患者ID）", "File under patient id"),
                ui.t("割り当て", "Assign"),
                ui.t("取り込まない（記録は残る）", "Drop (kept in the task)")
            ),
            _ => String::new(),
        };
        body.push_str(&format!(
            r#"<section class="card"><h2>#{id} {kind} — {rt}/{rid}</h2><p class="muted">{imp}: {import} · {created}</p><pre>{detail}</pre>
<form method="post" action="/ui/admin/reconcile/{id}">{csrf}<input type="hidden" name="kind" value="{kind}"><label for="n-{id}">{nl}</label><input id="n-{id}" name="note" type="text"><p>{choices}</p></form></section>"#,
            kind = esc(kind),
            rt = ev(&t["rtype"]),
            rid = ev(&t["rid"]),
            imp = ui.t("取り込み", "Import"),
            import = ev(&t["import"]),
            created = when(&t["created"], off),
            detail = esc(&serde_json::to_string_pretty(&t["detail"]).unwrap_or_default()),
            csrf = ui.csrf_field(),
            nl = ui.t("判断のメモ", "Note on the decision"),
        ));
    }
    ui.page(ui.t("突合せ（非常時記録）", "Reconciliation"), &body)
}

pub(crate) async fn reconcile_resolve(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let mut req = json!({"note": opt(&f, "note")});
    match field(&f, "kind") {
        "conflict" => req["keep"] = json!(field(&f, "keep")),
        "match" if field(&f, "keep_as_new") == "1" => req["keep_as_new"] = json!(true),
        "match" => req["merge_into"] = json!(field(&f, "merge_into").trim().trim_start_matches("Patient/")),
        "unknown_patient" if field(&f, "discard") == "1" => req["discard"] = json!(true),
        "unknown_patient" => req["assign_to"] = json!(field(&f, "assign_to").trim().trim_start_matches("Patient/")),
        _ => {}
    }
    let r = match cmd(req) {
        Ok(req) => Api::of(rec::resolve(&ui.svc, &ui.actor, id, req).await),
        Err(e) => Api::of::<()>(Err(e)),
    };
    done(&ui, &r, "/ui/admin/reconcile")
}
