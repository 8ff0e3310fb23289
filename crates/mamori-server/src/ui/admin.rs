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

use super::codes;
use super::html::{data, notice, tx, when};
use super::{cmd, field, fields, form, html, Api, Markup, Next, Ui};

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

const ROLES: [&str; 7] = ["physician", "nurse", "pharmacist", "clerk", "admin", "auditor", "bcp-decider"];

fn tabs(ui: &Ui) -> Markup {
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

fn refusal(ui: &Ui, r: &Api, back: &str) -> Response {
    ui.page(
        ui.t("管理", "Administration"),
        html! {
            (tabs(ui))
            (notice("error", &ui.why(r)))
            p { a href=(back) { (ui.t("戻る", "Back")) } }
        },
    )
}

/// Where a form that succeeded leads (`to`), or the page that says why
/// it did not.
fn then(ui: &Ui, r: &Api, to: &str) -> Next {
    if r.ok() {
        Ok(to.to_owned())
    } else {
        Err(Box::new(refusal(ui, r, to)))
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

fn roles_of(ui: &Ui, v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| codes::role(ui.lang, r.as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("、")
}

// ---- users -----------------------------------------------------------------------

pub(crate) async fn users(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let shown = ui.flash_markup(&q);
    users_page(&ui, shown).await
}

async fn users_page(ui: &Ui, created: Option<Markup>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(accounts::list_users(&ui.svc, &ui.actor).await.map(|u| json!({"users": u})));
    if !r.ok() {
        return ui.page(
            ui.t("利用者と権限", "Users and roles"),
            html! { (tabs(ui)) @if let Some(c) = &created { (c) } (notice("error", &ui.why(&r))) },
        );
    }
    let body = html! {
        (tabs(ui))
        @if let Some(c) = &created { (c) }
        details.card {
            summary { (ui.t("利用者を追加", "Add a user")) }
            form method="post" action="/ui/admin/users" {
                (ui.csrf_field())
                div.grid {
                    div { label for="name" { (ui.t("ログイン名（英小文字・数字）", "Login name (lower-case letters, digits)")) } input #name name="name" type="text" required pattern="[a-z0-9][a-z0-9._-]{1,63}"; }
                    div { label for="display" { (ui.t("氏名", "Full name")) } input #display name="display" type="text" required; }
                    div { label for="department" { (ui.t("部署", "Department")) } input #department name="department" type="text"; }
                }
                fieldset {
                    legend { (ui.t("役割", "Roles")) }
                    @for v in ROLES { label.check { input type="checkbox" name="roles" value=(v); " " (codes::role(ui.lang, v)) } }
                }
                p { button type="submit" { (ui.t("追加（初期パスワードを表示）", "Add (shows a one-time password)")) } }
            }
        }
        table.stack {
            thead { tr { th { (ui.t("ログイン名", "Login")) } th { (ui.t("氏名", "Name")) } th { (ui.t("部署", "Department")) } th { (ui.t("役割", "Roles")) } th { (ui.t("状態", "State")) } th {} } }
            tbody {
                @for u in r.body["users"].as_array().into_iter().flatten() {
                    @let name = u["name"].as_str().unwrap_or("");
                    tr {
                        td { (name) }
                        td { (tx(&u["display"])) }
                        td { (tx(&u["department"])) }
                        td { (roles_of(ui, &u["roles"])) }
                        td {
                            @if u["disabled"] == true { span.badge.black { (ui.t("無効", "disabled")) } " " }
                            @if u["kind"] == "emergency" { span.badge.red { (ui.t("非常用", "emergency")) } " " }
                            @if u["must_change_password"] == true { (ui.t("初回パスワード変更待ち", "must change password")) " " }
                            @if u["totp"] == true { (ui.t("ワンタイムコード設定済み", "one-time code enrolled")) " " }
                            @if !u["locked_until"].is_null() { (ui.t("ロック中（解除予定）", "locked until")) " " (when(&u["locked_until"], off)) }
                        }
                        td {
                            @if u["kind"] != "emergency" {
                                form.inline method="post" action={ "/ui/admin/users/" (enc(name)) } {
                                    (ui.csrf_field())
                                    @let disabled = u["disabled"] == true;
                                    input type="hidden" name="op" value=(if disabled { "enable" } else { "disable" });
                                    button.secondary type="submit" { @if disabled { (ui.t("有効にする", "Enable")) } @else { (ui.t("無効にする", "Disable")) } }
                                }
                                " "
                                form.inline method="post" action={ "/ui/admin/users/" (enc(name)) } {
                                    (ui.csrf_field())
                                    input type="hidden" name="op" value="reset";
                                    button.secondary type="submit" { (ui.t("パスワード再発行", "Reset password")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    ui.page(ui.t("利用者と権限", "Users and roles"), body)
}

fn one_time(ui: &Ui, name: &str, pw: &str) -> Markup {
    html! {
        div.notice.ok role="alert" {
            p { (ui.t("利用者を登録しました:", "User ready:")) " " strong { (name) } }
            p { (ui.t("初期パスワード（一度だけ表示）", "One-time password (shown once)")) ": " code.secret { (pw) } }
            p { (ui.t("本人に安全な方法で渡してください。初回ログイン時に変更が求められます。", "Hand it over in person; it must be changed at first login.")) }
        }
    }
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
        let msg = html! {
            (one_time(&ui, field(&f, "name").trim(), r.body["one_time_password"].as_str().unwrap_or("")))
            @if let Some(id) = r.body["pending_request"].as_i64() { (pending(&ui, id)) }
        };
        ui.flash_markup_to("/ui/admin/users", msg)
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
                    (None, None) => html! {},
                };
                ui.flash_markup_to("/ui/admin/users", msg)
            })
            .await
        }
        op @ ("enable" | "disable") => {
            let change = accounts::AccountChange { disabled: Some(op == "disable"), ..Default::default() };
            ui.once(&f, || async {
                let r = Api::of(accounts::update_user(&ui.svc, &ui.actor, &name, change).await);
                then(&ui, &r, "/ui/admin/users")
            })
            .await
        }
        _ => Redirect::to("/ui/admin/users").into_response(),
    }
}

fn pending(ui: &Ui, id: i64) -> Markup {
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
    if !r.ok() {
        return ui
            .page(ui.t("承認待ちの変更", "Changes to approve"), html! { (tabs(&ui)) (notice("error", &ui.why(&r))) });
    }
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let body = html! {
        (tabs(&ui))
        p.muted { (ui.t(
            "診療記録に触れる権限の付与は、依頼した管理者とは別の管理者が承認します（職務の分離）。",
            "A grant that reaches clinical records is approved by an administrator other than the one who asked (separation of duties)."
        )) }
        table.stack {
            thead { tr { th { "#" } th { (ui.t("内容", "Change")) } th { (ui.t("利用者", "User")) } th { (ui.t("依頼者", "Asked by")) } th { (ui.t("日時", "When")) } th { (ui.t("状態", "State")) } th {} } }
            tbody {
                @for q in r.body["requests"].as_array().into_iter().flatten() {
                    @let id = q["id"].as_i64().unwrap_or(0);
                    tr {
                        td { (id) }
                        td { (codes::account_request(ui.lang, q["kind"].as_str().unwrap_or(""))) " " (roles_of(&ui, &q["roles"])) }
                        td { (tx(&q["user"])) }
                        td { (tx(&q["requested_by"])) }
                        td { (when(&q["requested_at"], off)) }
                        td { (codes::account_request(ui.lang, q["state"].as_str().unwrap_or(""))) }
                        td {
                            @if q["state"] == "pending" {
                                form.inline method="post" action={ "/ui/admin/requests/" (id) } {
                                    (ui.csrf_field())
                                    button type="submit" name="decision" value="approve" { (ui.t("承認", "Approve")) } " "
                                    button.secondary type="submit" name="decision" value="reject" { (ui.t("却下", "Reject")) }
                                }
                            } @else {
                                (tx(&q["decided_by"])) " " (when(&q["decided_at"], off))
                            }
                        }
                    }
                }
            }
        }
    };
    ui.page(ui.t("承認待ちの変更", "Changes to approve"), body)
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
                ui.flash_markup_to("/ui/admin/users", one_time(&ui, &user, pw))
            }
            None => Ok("/ui/admin/requests".to_owned()),
        }
    })
    .await
}

// ---- care assignments --------------------------------------------------------------------

pub(crate) async fn care(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let get = |k: &str| q.get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let r = Api::of(
        accounts::list_care(&ui.svc, &ui.actor, get("patient"), get("user")).await.map(|a| json!({"assignments": a})),
    );
    let assign = html! {
        (tabs(&ui))
        form.card method="post" action="/ui/admin/care" {
            (ui.csrf_field())
            h2 { (ui.t("担当関係を登録", "Assign care")) }
            div.grid {
                div { label for="patient" { (ui.t("患者ID", "Patient id")) } input #patient name="patient" type="text" required; }
                div { label for="user" { (ui.t("担当者（ログイン名）", "Staff member (login)")) } input #user name="user" type="text"; }
                div { label for="department" { (ui.t("または部署", "or department")) } input #department name="department" type="text"; }
            }
            label for="reason" { (ui.t("理由", "Reason")) }
            input #reason name="reason" type="text";
            p.muted { (ui.t("担当者か部署のどちらかを指定します。", "Give a staff member or a department.")) }
            p { button type="submit" { (ui.t("登録", "Assign")) } }
        }
    };
    if !r.ok() {
        return ui.page(ui.t("担当関係", "Care assignments"), html! { (assign) (notice("error", &ui.why(&r))) });
    }
    let body = html! {
        (assign)
        form.inline method="get" action="/ui/admin/care" {
            label for="fp" { (ui.t("患者で絞り込み", "Filter by patient")) }
            input #fp name="patient" type="text";
            " "
            button.secondary type="submit" { (ui.t("絞り込み", "Filter")) }
        }
        table.stack {
            thead { tr { th { "#" } th { (ui.t("患者", "Patient")) } th { (ui.t("担当者・部署", "Staff or department")) } th { (ui.t("理由", "Reason")) } th { (ui.t("開始", "Since")) } th { (ui.t("終了", "Ended")) } th {} } }
            tbody {
                @for a in r.body["assignments"].as_array().into_iter().flatten().take(500) {
                    tr {
                        td { (tx(&a["id"])) }
                        td { a href={ "/ui/patients/" (tx(&a["patient"])) } { (tx(&a["patient"])) } }
                        td { (tx(&a["user"])) @if let Some(d) = a["department"].as_str() { " [" (d) "]" } }
                        td { (tx(&a["reason"])) }
                        td { (when(&a["start"], off)) }
                        td { (when(&a["ended"], off)) }
                        td {
                            @if a["ended"].is_null() {
                                form.inline method="post" action={ "/ui/admin/care/" (tx(&a["id"])) "/end" } {
                                    (ui.csrf_field())
                                    button.secondary type="submit" { (ui.t("終了", "End")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    ui.page(ui.t("担当関係", "Care assignments"), body)
}

pub(crate) async fn care_assign(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    ui.once(&f, || async {
        let patient = match ui.patient_id(field(&f, "patient")).await {
            Ok(p) => p,
            Err(msg) => {
                return Err(Box::new(ui.page(
                    ui.t("担当関係", "Care assignments"),
                    html! { (tabs(&ui)) (notice("error", &msg)) p { a href="/ui/admin/care" { (ui.t("戻る", "Back")) } } },
                )))
            }
        };
        let req = json!({"patient": patient, "user": opt(&f, "user"), "department": opt(&f, "department"), "reason": opt(&f, "reason")});
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
    ui.once(&f, || async {
        let r = Api::of(accounts::end_care(&ui.svc, &ui.actor, id).await);
        then(&ui, &r, "/ui/admin/care")
    })
    .await
}

// ---- emergency accounts -------------------------------------------------------------------

pub(crate) async fn eaccounts(ui: Ui) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(eacc::list(&ui.svc, &ui.actor).await.map(|a| json!({"accounts": a})));
    let provision = html! {
        (tabs(&ui))
        form.card method="post" action="/ui/admin/emergency-accounts" {
            (ui.csrf_field())
            h2 { (ui.t("非常用アカウントを用意する", "Provision emergency accounts")) }
            div.grid {
                div { label for="count" { (ui.t("数", "How many")) } input #count name="count" type="number" min="1" max="50" value="1"; }
                div {
                    label for="role" { (ui.t("役割", "Role")) }
                    select #role name="roles" { @for v in ["physician", "nurse"] { option value=(v) { (codes::role(ui.lang, v)) } } }
                }
            }
            label.check { input type="checkbox" name="drill" value="1"; " " (ui.t("訓練用（訓練中のみ使用可）", "For drills (usable only during drills)")) }
            p { button type="submit" { (ui.t("作成", "Provision")) } }
        }
    };
    if !r.ok() {
        return ui.page(
            ui.t("非常用アカウント", "Emergency accounts"),
            html! { (provision) (notice("error", &ui.why(&r))) },
        );
    }
    let body = html! {
        (provision)
        table.stack {
            thead { tr { th { (ui.t("アカウント", "Account")) } th { (ui.t("状態", "State")) } th { (ui.t("役割", "Roles")) } th { (ui.t("封緘・使用", "Sealed, used")) } th { (ui.t("使用した本人", "Used by")) } th {} } }
            tbody {
                @for a in r.body["accounts"].as_array().into_iter().flatten() {
                    @let name = a["account"].as_str().unwrap_or("");
                    @let st = a["state"].as_str().unwrap_or("");
                    tr {
                        td { (name) @if a["drill"] == true { " " span.badge.yellow { (ui.t("訓練", "drill")) } } }
                        td { (codes::eaccount_state(ui.lang, st)) }
                        td { (roles_of(&ui, &a["roles"])) }
                        td { (when(&a["sealed_at"], off)) " / " (when(&a["unsealed_at"], off)) }
                        td { (tx(&a["declared_person"])) }
                        td {
                            @if st == "awaiting_envelope" || st == "created" {
                                form.inline method="post" action={ "/ui/admin/emergency-accounts/" (enc(name)) "/envelope" } {
                                    (ui.csrf_field())
                                    button type="submit" { (ui.t("封筒を印刷して封緘", "Print the sealed envelope")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    ui.page(ui.t("非常用アカウント", "Emergency accounts"), body)
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
        ui.flash_markup_to(&to, envelope_html(&ui, &r.body))
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
    match ui.flash_markup(&q) {
        Some(body) => ui.page(title, body),
        None => ui.page(
            title,
            html! {
                (tabs(&ui))
                (notice("error", &format!(
                    "{} ({name})",
                    ui.t(
                        "封筒は一度だけ表示され、もう表示できません。印刷できなかった場合は、このアカウントを廃止して新しく用意してください。",
                        "The envelope was shown once and cannot be shown again. If it was not printed, retire this account and provision a new one."
                    )
                )))
                p { a href="/ui/admin/emergency-accounts" { (ui.t("非常用アカウントへ戻る", "Back to emergency accounts")) } }
            },
        ),
    }
}

fn envelope_html(ui: &Ui, e: &Value) -> Markup {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    html! {
        p.noprint {
            (ui.t("このパスワードは二度と表示されません。印刷して封筒に入れ、封をしてください。", "This password is never shown again: print it, put it in the envelope and seal it."))
            " "
            button.secondary type="button" data-print { (ui.t("印刷", "Print")) }
        }
        section.envelope {
            h2 { (tx(&e["institution"])) }
            h3 {
                (ui.t("非常用アカウント（封緘）/ Sealed emergency account", "Sealed emergency account / 非常用アカウント（封緘）"))
                @if e["drill"] == true { " — 訓練用 / DRILL" }
            }
            p { (ui.t("アカウント", "Account")) ": " code { (tx(&e["account"])) } }
            p { (ui.t("パスワード", "Password")) ": " code.secret { (tx(&e["password"])) } }
            p { (ui.t("役割", "Roles")) ": " (roles_of(ui, &e["roles"])) }
            p { (tx(&e["instructions"]["ja"])) }
            p { (tx(&e["instructions"]["en"])) }
            p.muted { (ui.t("印刷日時", "Printed")) ": " (when(&e["printed_at"], off)) }
        }
    }
}

// ---- maintenance ----------------------------------------------------------------------------

pub(crate) async fn maintenance(ui: Ui) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(maint::list_requests(&ui.svc, &ui.actor, None, None).await.map(|r| json!({"requests": r})));
    if !r.ok() {
        return ui
            .page(ui.t("リモート保守", "Remote maintenance"), html! { (tabs(&ui)) (notice("error", &ui.why(&r))) });
    }
    let body = html! {
        (tabs(&ui))
        table.stack {
            thead { tr { th { "#" } th { (ui.t("作業者", "Person")) } th { (ui.t("理由・範囲", "Reason, scopes")) } th { (ui.t("時間枠", "Window")) } th { (ui.t("状態", "State")) } th { (ui.t("承認", "Approvals")) } th { (ui.t("操作", "Action")) } } }
            tbody {
                @for m in r.body["requests"].as_array().into_iter().flatten() {
                    @let id = m["id"].as_i64().unwrap_or(0);
                    @let st = m["state"].as_str().unwrap_or("");
                    tr {
                        td { (id) }
                        td { (tx(&m["person"])) @if m["emergency"] == true { " " span.badge.red { (ui.t("緊急", "emergency")) } } }
                        td { (tx(&m["reason"])) br; (m["scopes"].as_array().into_iter().flatten().map(|x| codes::maintenance_scope(ui.lang, x.as_str().unwrap_or(""))).collect::<Vec<_>>().join("、")) }
                        td { (when(&m["start"], off)) " — " (when(&m["end"], off)) }
                        td { (codes::maintenance_state(ui.lang, st)) @if m["live"] == true { " " span.badge.red { (ui.t("作業可能", "live")) } } }
                        td { (m["approvals"].as_array().map_or(0, Vec::len)) " / " (tx(&m["needed"])) }
                        td {
                            @if st == "requested" {
                                form.inline method="post" action={ "/ui/admin/maintenance/" (id) "/approve" } {
                                    (ui.csrf_field())
                                    button type="submit" { (ui.t("承認", "Approve")) }
                                }
                                " "
                                form.inline method="post" action={ "/ui/admin/maintenance/" (id) "/reject" } {
                                    (ui.csrf_field())
                                    input name="reason" type="text" required placeholder=(ui.t("却下の理由", "Reason for rejecting")) aria-label=(ui.t("却下の理由", "Reason for rejecting"));
                                    button.danger type="submit" { (ui.t("却下", "Reject")) }
                                }
                            }
                            @if st == "approved" {
                                form.inline method="post" action={ "/ui/admin/maintenance/" (id) "/revoke" } {
                                    (ui.csrf_field())
                                    input name="reason" type="text" required placeholder=(ui.t("取り消しの理由", "Reason for revoking")) aria-label=(ui.t("取り消しの理由", "Reason for revoking"));
                                    button.danger type="submit" { (ui.t("取り消し", "Revoke")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    ui.page(ui.t("リモート保守", "Remote maintenance"), body)
}

pub(crate) async fn maintenance_decide(ui: Ui, Path((id, action)): Path<(i64, String)>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    if !matches!(action.as_str(), "approve" | "reject" | "revoke") {
        return Redirect::to("/ui/admin/maintenance").into_response();
    }
    ui.once(&f, || async {
        let r = match action.as_str() {
            "approve" => {
                let note = field(&f, "note").trim();
                let req = maint::Note { note: (!note.is_empty()).then(|| note.to_owned()) };
                Api::of(maint::approve(&ui.svc, &ui.actor, id, req).await)
            }
            to => {
                let to = if to == "reject" { "rejected" } else { "revoked" };
                match cmd(json!({"reason": field(&f, "reason")})) {
                    Ok(req) => Api::of(maint::decide_as(&ui.svc, &ui.actor, id, req, to).await),
                    Err(e) => Api::of::<()>(Err(e)),
                }
            }
        };
        then(&ui, &r, "/ui/admin/maintenance")
    })
    .await
}

// ---- snapshots ------------------------------------------------------------------------------

pub(crate) async fn snapshots(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let msg = ui.flash_markup(&q);
    snapshots_page(&ui, msg).await
}

async fn snapshots_page(ui: &Ui, msg: Option<Markup>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(snapshot::list(&ui.svc, &ui.actor).await.map(|(rows, dir)| json!({"snapshots": rows, "dir": dir})));
    let head = html! {
        (tabs(ui))
        @if let Some(m) = &msg { (m) }
        form method="post" action="/ui/admin/snapshots" {
            (ui.csrf_field())
            button type="submit" { (ui.t("今すぐスナップショットを作成", "Create a snapshot now")) }
            " " span.muted { (ui.t("暗号化・署名された参照用コピーです。閲覧には管理者の鍵（分割保管）が必要です。", "An encrypted, signed reference copy; opening it needs the custodians' key shares.")) }
        }
    };
    if !r.ok() {
        return ui.page(ui.t("参照用スナップショット", "Snapshots"), html! { (head) (notice("error", &ui.why(&r))) });
    }
    let body = html! {
        (head)
        table.stack {
            thead { tr { th { (ui.t("作成", "Created")) } th { (ui.t("患者数", "Patients")) } th { (ui.t("リソース数", "Resources")) } th { (ui.t("サイズ", "Size")) } th { "SHA-256" } th {} } }
            tbody {
                @for s in r.body["snapshots"].as_array().into_iter().flatten() {
                    tr {
                        td { (when(&s["created"], off)) }
                        td { (tx(&s["patients"])) }
                        td { (tx(&s["resources"])) }
                        td { (format!("{:.1} MB", s["bytes"].as_f64().unwrap_or(0.0) / 1e6)) }
                        td { code { (s["sha256"].as_str().unwrap_or("").chars().take(16).collect::<String>()) } }
                        td {
                            form.inline method="post" action={ "/ui/admin/snapshots/" (enc(s["id"].as_str().unwrap_or(""))) "/verify" } {
                                (ui.csrf_field())
                                button.secondary type="submit" { (ui.t("検証", "Verify")) }
                            }
                        }
                    }
                }
            }
        }
    };
    ui.page(ui.t("参照用スナップショット", "Snapshots"), body)
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
        notice("error", &ui.why(&r))
    };
    // Shown once on the list (Post/Redirect/Get): a reload verifies nothing again.
    match ui.flash_markup_to("/ui/admin/snapshots", msg) {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(page) => *page,
    }
}

// ---- reconciliation -------------------------------------------------------------------------

pub(crate) async fn reconcile(ui: Ui) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let r = Api::of(rec::tasks(&ui.svc, &ui.actor, Some("open".into())).await.map(|t| json!({"tasks": t})));
    if !r.ok() {
        return ui.page(ui.t("突合せ", "Reconciliation"), html! { (tabs(&ui)) (notice("error", &ui.why(&r))) });
    }
    let tasks: Vec<&Value> = r.body["tasks"].as_array().into_iter().flatten().collect();
    let body = html! {
        (tabs(&ui))
        p {
            a href="/ui/transcribe" { (ui.t("紙の記録を転記する", "Transcribe a paper record")) } " · "
            a href="/ui/merge/reviews" { (ui.t("患者統合の一覧", "Merges")) }
        }
        @if tasks.is_empty() { (notice("ok", ui.t("未解決の突合せ課題はありません。", "No open reconciliation tasks."))) }
        @for t in &tasks {
            @let id = t["id"].as_i64().unwrap_or(0);
            @let kind = t["kind"].as_str().unwrap_or("");
            section.card {
                h2 { "#" (id) " " (codes::reconcile_kind(ui.lang, kind)) " — " (tx(&t["rtype"])) "/" (tx(&t["rid"])) }
                p.muted { (ui.t("取り込み", "Import")) ": " (tx(&t["import"])) " · " (when(&t["created"], off)) }
                (data(ui.lang, &t["detail"]))
                form method="post" action={ "/ui/admin/reconcile/" (id) } {
                    (ui.csrf_field())
                    input type="hidden" name="kind" value=(kind);
                    label for={ "n-" (id) } { (ui.t("判断のメモ", "Note on the decision")) }
                    input id={ "n-" (id) } name="note" type="text";
                    p {
                        @match kind {
                            "conflict" => {
                                button type="submit" name="keep" value="central" { (ui.t("本システムの記録を残す", "Keep the central record")) } " "
                                button.secondary type="submit" name="keep" value="offline" { (ui.t("非常時の記録を採用", "Take the offline record")) }
                            }
                            "match" => {
                                label for={ "m-" (id) } { (ui.t("統合先の患者IDまたはカルテ番号", "Merge into patient id or record number")) }
                                input id={ "m-" (id) } name="merge_into" type="text";
                                " " button type="submit" { (ui.t("統合", "Merge")) } " "
                                button.secondary type="submit" name="keep_as_new" value="1" { (ui.t("新規患者として残す", "Keep as a new patient")) }
                            }
                            "unknown_patient" => {
                                label for={ "a-" (id) } { (ui.t("この患者の記録とする（患者IDまたはカルテ番号）", "File under patient id or record number")) }
                                input id={ "a-" (id) } name="assign_to" type="text";
                                " " button type="submit" { (ui.t("割り当て", "Assign")) } " "
                                button.danger type="submit" name="discard" value="1" { (ui.t("取り込まない（記録は残る）", "Drop (kept in the task)")) }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    };
    ui.page(ui.t("突合せ（非常時記録）", "Reconciliation"), body)
}

pub(crate) async fn reconcile_resolve(ui: Ui, Path(id): Path<i64>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    ui.once(&f, || async {
        let mut req = json!({"note": opt(&f, "note")});
        let patient = |k: &'static str| {
            let ui = &ui;
            let f = &f;
            async move {
                ui.patient_id(field(f, k)).await.map_err(|msg| {
                    Box::new(ui.page(ui.t("突合せ", "Reconciliation"), html! { (tabs(ui)) (notice("error", &msg)) }))
                })
            }
        };
        match field(&f, "kind") {
            "conflict" => req["keep"] = json!(field(&f, "keep")),
            "match" if field(&f, "keep_as_new") == "1" => req["keep_as_new"] = json!(true),
            "match" => req["merge_into"] = json!(patient("merge_into").await?),
            "unknown_patient" if field(&f, "discard") == "1" => req["discard"] = json!(true),
            "unknown_patient" => req["assign_to"] = json!(patient("assign_to").await?),
            _ => {}
        }
        let r = match cmd(req) {
            Ok(req) => Api::of(rec::resolve(&ui.svc, &ui.actor, id, req).await),
            Err(e) => Api::of::<()>(Err(e)),
        };
        then(&ui, &r, "/ui/admin/reconcile")
    })
    .await
}
