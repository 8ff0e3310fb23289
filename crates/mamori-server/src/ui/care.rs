//! Login, the home page, patient search and chart, break-glass,
//! registration without the reception desk, provisional patients and merge.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Value};

use mamori_core::policy::Operation;
use mamori_service::continuity::{merge, registration};
use mamori_service::records::{enc, read};
use mamori_service::{accounts, bcp, breakglass, eaccounts, Services};

use super::html::{bare, ev, notice, sparkline, when, Lang};
use super::{cmd, cookie, esc, field, form, lang_of, new_csrf, set_cookie, Api, Ui, CSRF_COOKIE};
use crate::http::{Ctx, SESSION_COOKIE};

fn safe_next(n: &str) -> String {
    if n.starts_with("/ui/") && !n.starts_with("//") && !n.contains("\\") && !n.chars().any(char::is_control) {
        // Back into a Location header: what is not visible ASCII (a
        // search for 山田 in the page's query) is percent-encoded.
        n.bytes()
            .map(|b| if (0x21..0x7f).contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect()
    } else {
        "/ui/".into()
    }
}

fn current_mode(st: &Services) -> String {
    st.mode.get().header_value()
}

fn login_form(lang: Lang, csrf: &str, next: &str, error: Option<&str>) -> String {
    format!(
        r#"{err}<form method="post" action="/ui/login" class="card">
<input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="next" value="{next}">
<label for="username">{u}</label><input id="username" name="username" type="text" autocomplete="username" required autofocus>
<label for="password">{p}</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<label for="totp">{t}</label><input id="totp" name="totp" type="text" inputmode="numeric" autocomplete="one-time-code">
<p><button type="submit">{b}</button></p></form>
<p><a href="/ui/emergency-login">{e}</a></p>"#,
        err = error.map(|e| notice("error", e)).unwrap_or_default(),
        csrf = esc(csrf),
        next = esc(next),
        u = lang.t("ユーザー名", "User name"),
        p = lang.t("パスワード", "Password"),
        t = lang.t("ワンタイムコード（設定している場合）", "One-time code (if enrolled)"),
        b = lang.t("ログイン", "Log in"),
        e = lang
            .t("非常用アカウントでログイン（非常時のみ）", "Log in with a sealed emergency account (emergencies only)"),
    )
}

fn with_csrf_cookie(mut r: Response, csrf: &str) -> Response {
    r.headers_mut().append(header::SET_COOKIE, set_cookie(CSRF_COOKIE, csrf, None));
    r
}

pub(crate) async fn login_page(
    State(st): State<Services>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let lang = lang_of(&headers);
    let csrf = cookie(&headers, CSRF_COOKIE).unwrap_or_else(new_csrf);
    let next = safe_next(q.get("next").map(String::as_str).unwrap_or(""));
    let mode = current_mode(&st);
    let r = bare(lang, lang.t("ログイン", "Log in"), &mode, &login_form(lang, &csrf, &next, None)).into_response();
    with_csrf_cookie(r, &csrf)
}

pub(crate) async fn login_post(State(st): State<Services>, Ctx(ctx): Ctx, headers: HeaderMap, body: Body) -> Response {
    let lang = lang_of(&headers);
    let f = form(body).await;
    let csrf = cookie(&headers, CSRF_COOKIE).unwrap_or_default();
    let mode = current_mode(&st);
    let next = safe_next(field(&f, "next"));
    if csrf.is_empty() || field(&f, "csrf") != csrf {
        let c = new_csrf();
        let page = bare(
            lang,
            lang.t("ログイン", "Log in"),
            &mode,
            &login_form(
                lang,
                &c,
                &next,
                Some(lang.t(
                    "フォームの有効期限が切れました。もう一度入力してください。",
                    "The form expired; please try again.",
                )),
            ),
        )
        .into_response();
        return with_csrf_cookie(page, &c);
    }
    let totp = field(&f, "totp").trim();
    let body = json!({"username": field(&f, "username"), "password": field(&f, "password"), "totp": if totp.is_empty() { Value::Null } else { json!(totp) }});
    let r = match cmd(body) {
        Ok(req) => Api::of(accounts::login(&st, ctx, req).await),
        Err(e) => Api::of::<()>(Err(e)),
    };
    if !r.ok() {
        let (max, minutes) = (st.cfg.auth.max_failed_logins, st.cfg.auth.lockout_minutes);
        // The API does not say whether an account is locked (that would
        // tell an attacker which names exist); the page says what locks
        // it and for how long, so a locked person knows what happened.
        let wrong = match lang {
            Lang::Ja => format!(
                "ユーザー名・パスワード・ワンタイムコードのいずれかが違うか、アカウントがロック中です。{max}回続けて失敗するとアカウントは{minutes}分間ロックされます。正しく入力してもログインできない場合は、時間をおくか管理者に連絡してください。"
            ),
            Lang::En => format!(
                "The user name, password or one-time code is wrong, or the account is locked. {max} failures in a row lock an account for {minutes} minutes; if the right password does not work, wait or call an administrator."
            ),
        };
        let msg = match r.status {
            401 => wrong.as_str(),
            423 | 429 => lang.t(
                "失敗が続いたためアカウントは一時的にロックされています。しばらく待つか管理者に連絡してください。",
                "The account is locked after repeated failures; wait, or call an administrator.",
            ),
            _ => lang.t("ログインできませんでした。", "Could not log in."),
        };
        let detail = format!("{msg} ({})", r.message());
        return bare(lang, lang.t("ログイン", "Log in"), &mode, &login_form(lang, &csrf, &next, Some(&detail)))
            .into_response();
    }
    let token = r.body["token"].as_str().unwrap_or("").to_owned();
    let to = if r.body["must_change_password"] == true { "/ui/password".to_owned() } else { next };
    let mut resp = Redirect::to(&to).into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &token, None));
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(CSRF_COOKIE, &new_csrf(), None));
    resp
}

fn emergency_form(lang: Lang, csrf: &str, error: Option<&str>) -> String {
    format!(
        r#"{err}<p class="notice info">{intro}</p><form method="post" action="/ui/emergency-login" class="card">
<input type="hidden" name="csrf" value="{csrf}">
<label for="account">{a}</label><input id="account" name="account" type="text" required>
<label for="password">{p}</label><input id="password" name="password" type="password" required>
<label for="real_name">{n}</label><input id="real_name" name="real_name" type="text" required>
<label for="affiliation">{f}</label><input id="affiliation" name="affiliation" type="text" required>
<p><button type="submit" class="danger">{b}</button></p></form><p><a href="/ui/login">{back}</a></p>"#,
        err = error.map(|e| notice("error", e)).unwrap_or_default(),
        intro = lang.t("非常用アカウントは非常時宣言中のみ使えます。使用は全職員に通知され、記録されます。あなたの氏名と所属を入力してください。", "Sealed emergency accounts work only while an emergency is declared. Their use is announced to all staff and recorded. Enter your own name and affiliation."),
        csrf = esc(csrf),
        a = lang.t("非常用アカウント名（封筒に記載）", "Emergency account (from the envelope)"),
        p = lang.t("パスワード（封筒に記載）", "Password (from the envelope)"),
        n = lang.t("あなたの氏名", "Your name"),
        f = lang.t("所属・職種", "Affiliation and profession"),
        b = lang.t("非常用アカウントでログイン", "Log in with the emergency account"),
        back = lang.t("通常のログインへ", "Back to normal login"),
    )
}

pub(crate) async fn emergency_page(State(st): State<Services>, headers: HeaderMap) -> Response {
    let lang = lang_of(&headers);
    let csrf = cookie(&headers, CSRF_COOKIE).unwrap_or_else(new_csrf);
    let mode = current_mode(&st);
    with_csrf_cookie(
        bare(lang, lang.t("非常用アカウント", "Emergency account"), &mode, &emergency_form(lang, &csrf, None))
            .into_response(),
        &csrf,
    )
}

pub(crate) async fn emergency_post(
    State(st): State<Services>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let lang = lang_of(&headers);
    let f = form(body).await;
    let csrf = cookie(&headers, CSRF_COOKIE).unwrap_or_default();
    let mode = current_mode(&st);
    if csrf.is_empty() || field(&f, "csrf") != csrf {
        return bare(
            lang,
            lang.t("非常用アカウント", "Emergency account"),
            &mode,
            &emergency_form(lang, &csrf, Some(lang.t("フォームの有効期限が切れました。", "The form expired."))),
        )
        .into_response();
    }
    let body = json!({"account": field(&f, "account"), "password": field(&f, "password"), "real_name": field(&f, "real_name"), "affiliation": field(&f, "affiliation")});
    let r = match cmd(body) {
        Ok(req) => Api::of(eaccounts::emergency_login(&st, ctx, req).await),
        Err(e) => Api::of::<()>(Err(e)),
    };
    if !r.ok() {
        return bare(
            lang,
            lang.t("非常用アカウント", "Emergency account"),
            &mode,
            &emergency_form(lang, &csrf, Some(&r.message())),
        )
        .into_response();
    }
    let mut resp = Redirect::to("/ui/").into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, r.body["token"].as_str().unwrap_or(""), None));
    // A new session gets a new CSRF token, as at the ordinary login: one
    // seen before the login (on a shared ward PC) is worthless after it.
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(CSRF_COOKIE, &new_csrf(), None));
    resp
}

pub(crate) async fn password_page(ui: Ui) -> Response {
    password_form(&ui, None)
}

fn password_form(ui: &Ui, msg: Option<String>) -> Response {
    let body = format!(
        r#"{m}<form method="post" action="/ui/password" class="card">{csrf}
<label for="current">{c}</label><input id="current" name="current" type="password" autocomplete="current-password" required>
<label for="new">{n}</label><input id="new" name="new" type="password" autocomplete="new-password" required minlength="12">
<label for="new2">{n2}</label><input id="new2" name="new2" type="password" autocomplete="new-password" required minlength="12">
<p class="muted">{rule}</p><p><button type="submit">{b}</button></p></form>"#,
        m = msg.map(|m| notice("error", &m)).unwrap_or_else(|| notice(
            "info",
            ui.t("初回ログインです。新しいパスワードを設定してください。", "Set a new password before you continue.")
        )),
        csrf = ui.csrf_field(),
        c = ui.t("現在のパスワード", "Current password"),
        n = ui.t("新しいパスワード", "New password"),
        n2 = ui.t("新しいパスワード（確認）", "New password again"),
        rule = ui.t("12文字以上、2種類以上の文字を含めてください。", "At least 12 characters, of at least two kinds."),
        b = ui.t("変更する", "Change password"),
    );
    ui.page(ui.t("パスワードの変更", "Change password"), &body)
}

pub(crate) async fn password_post(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    if field(&f, "new") != field(&f, "new2") {
        return password_form(&ui, Some(ui.t("新しいパスワードが一致しません。", "The new passwords differ.").into()));
    }
    let r = match cmd(json!({"current": field(&f, "current"), "new": field(&f, "new")})) {
        Ok(req) => Api::of(accounts::change_password(&ui.svc, &ui.actor, req).await),
        Err(e) => Api::of::<()>(Err(e)),
    };
    if !r.ok() {
        return password_form(&ui, Some(r.message()));
    }
    // Every session of the account ended with the change; this browser
    // continues on the new one.
    let mut resp = Redirect::to("/ui/").into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, r.body["token"].as_str().unwrap_or(""), None));
    resp
}

pub(crate) async fn logout(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    if let Err(e) = accounts::logout(&ui.svc, &ui.actor).await {
        tracing::warn!(error = %e, "logout failed; the session cookie is cleared anyway");
    }
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", Some(0)));
    resp
}

pub(crate) async fn home(ui: Ui) -> Response {
    let mut body = String::new();
    let mode = Api::of(bcp::mode(&ui.svc, &ui.actor).await);
    if let Some(d) = mode.body.get("declaration").filter(|d| !d.is_null()) {
        body.push_str(&notice(
            "info",
            &format!("{}: {} — {}", ui.t("宣言", "Declaration"), ev(&d["state"]), d["reason"].as_str().unwrap_or("")),
        ));
    }
    if ui.may(Operation::ProvisionalRead) {
        body.push_str(&format!(
            r#"<form method="get" action="/ui/patients" class="card"><label for="q">{l}</label><input id="q" name="q" type="search" placeholder="{ph}" autofocus> <button type="submit">{b}</button></form>"#,
            l = ui.t("患者検索（氏名・カナ・患者ID・カルテ番号）", "Find a patient (name, kana, id, record number)"),
            ph = ui.t("例: やまだ", "e.g. Yamada"),
            b = ui.t("検索", "Search")
        ));
        let bg = Api::of(breakglass::list(&ui.svc, &ui.actor, None).await.map(|g| json!({"grants": g})));
        let me = ui.me["name"].clone();
        let live: Vec<&Value> = bg.body["grants"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["live"] == true && g["user"] == me)
            .collect();
        if !live.is_empty() {
            body.push_str(&format!("<h2>{}</h2><ul>", ui.t("有効な緊急アクセス", "Your live break-glass grants")));
            for g in live {
                body.push_str(&format!("<li><a href=\"/ui/patients/{p}\">Patient/{p}</a> — {} <span class=\"countdown\" data-expires=\"{e}\"></span></li>", ui.t("残り", "left"), p = ev(&g["patient"]), e = ev(&g["expires"])));
            }
            body.push_str("</ul>");
        }
    }
    if ui.may(Operation::AlertRead) {
        let a = Api::of(bcp::alerts(&ui.svc, &ui.actor, false).await.map(|a| json!({"alerts": a})));
        let open: Vec<&Value> =
            a.body["alerts"].as_array().into_iter().flatten().filter(|x| x["acked_at"].is_null()).take(10).collect();
        if !open.is_empty() {
            body.push_str(&format!("<h2>{}</h2><ul>", ui.t("未確認のアラート", "Open alerts")));
            for x in open {
                body.push_str(&format!("<li><strong>{}</strong> {}</li>", ev(&x["severity"]), ev(&x["message"])));
            }
            body.push_str("</ul>");
        }
    }
    ui.page(&format!("{} {}", ui.t("ようこそ", "Welcome,"), super::who(&ui.me)), &body)
}

fn name_of(p: &Value) -> String {
    let names: Vec<String> = p["name"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            n["text"].as_str().map(str::to_owned).unwrap_or_else(|| {
                let given: Vec<&str> = n["given"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                format!("{} {}", n["family"].as_str().unwrap_or(""), given.join(" ")).trim().to_owned()
            })
        })
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        "—".into()
    } else {
        names.join(" / ")
    }
}

/// The representation of a JP Core name: `IDE` (kanji), `SYL` (kana),
/// `ABC` (alphabetic), if marked.
fn representation(n: &Value) -> Option<&str> {
    n["extension"].as_array().into_iter().flatten().find_map(|e| {
        (e["url"] == "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation")
            .then(|| e["valueCode"].as_str())
            .flatten()
    })
}

/// A patient's name as the chart heading and the search list show it
/// (escaped): the kanji name with its kana reading above it (`<ruby>`),
/// as Japanese charts show it, then any other names.
fn name_html(p: &Value) -> String {
    let names: Vec<&Value> = p["name"].as_array().into_iter().flatten().collect();
    let text = |n: &Value| name_of(&json!({"name": [n]}));
    let kanji = names.iter().find(|n| representation(n) == Some("IDE"));
    let kana = names.iter().find(|n| representation(n) == Some("SYL"));
    match (kanji, kana) {
        (Some(k), Some(r)) => {
            let mut out = format!("<ruby>{}<rt>{}</rt></ruby>", esc(&text(k)), esc(&text(r)));
            for n in names.iter().filter(|n| !matches!(representation(n), Some("IDE" | "SYL"))) {
                out.push_str(&format!(" / {}", esc(&text(n))));
            }
            out
        }
        _ => esc(&name_of(p)),
    }
}

/// What was written at a registration without the reception desk
/// (triage, estimated age, features, where found, arrival, note).
fn registration_card(ui: &Ui, p: &Value) -> String {
    let Some(fields) = p["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == mamori_service::continuity::registration::EXT)
        .and_then(|e| e["extension"].as_array())
    else {
        return String::new();
    };
    let mut rows = String::new();
    for f in fields {
        let (label, value) = match f["url"].as_str().unwrap_or("") {
            "triage" => {
                let v = match f["valueCode"].as_str().unwrap_or("") {
                    "red" => ui.t("赤（最優先治療）", "Red (immediate)"),
                    "yellow" => ui.t("黄（待機的治療）", "Yellow (delayed)"),
                    "green" => ui.t("緑（軽処置）", "Green (minor)"),
                    "black" => ui.t("黒（救命困難・死亡）", "Black (expectant or deceased)"),
                    other => other,
                };
                (ui.t("トリアージ", "Triage"), v.to_owned())
            }
            "estimated-age" => (ui.t("推定年齢", "Estimated age"), f["valueInteger"].to_string()),
            "age-band" => (ui.t("年齢層", "Age band"), f["valueString"].as_str().unwrap_or("").to_owned()),
            "features" => (ui.t("身体的特徴", "Features"), f["valueString"].as_str().unwrap_or("").to_owned()),
            "found-at" => (ui.t("発見場所", "Where found"), f["valueString"].as_str().unwrap_or("").to_owned()),
            "arrival" => (ui.t("来院方法", "Arrival"), f["valueString"].as_str().unwrap_or("").to_owned()),
            "note" => (ui.t("メモ", "Note"), f["valueString"].as_str().unwrap_or("").to_owned()),
            _ => continue,
        };
        rows.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>", esc(label), esc(&value)));
    }
    format!(
        "<section class=\"card\"><h2>{}</h2><table>{rows}</table></section>",
        ui.t("仮登録時の記録", "Recorded at registration")
    )
}

fn is_provisional(p: &Value) -> bool {
    p["meta"]["tag"].as_array().is_some_and(|a| a.iter().any(|t| t["code"] == "provisional"))
}

fn is_test(p: &Value) -> bool {
    p["meta"]["security"].as_array().is_some_and(|a| a.iter().any(|t| t["code"] == "HTEST"))
}

fn badges(ui: &Ui, p: &Value) -> String {
    let mut b = String::new();
    if is_provisional(p) {
        b.push_str(&format!(" <span class=\"badge provisional\">{}</span>", ui.t("仮登録", "provisional")));
    }
    if is_test(p) {
        b.push_str(&format!(" <span class=\"badge test\">{}</span>", ui.t("デモ", "demo")));
    }
    if p["active"] == false {
        b.push_str(&format!(" <span class=\"badge black\">{}</span>", ui.t("統合済/無効", "merged/inactive")));
    }
    b
}

pub(crate) async fn search(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
    let (name, ident, birth) = (get("q"), get("identifier"), get("birthdate"));
    let mut body = format!(
        r#"<form method="get" action="/ui/patients" class="card"><div class="grid">
<div><label for="q">{l1}</label><input id="q" name="q" type="search" value="{v1}"></div>
<div><label for="identifier">{l2}</label><input id="identifier" name="identifier" type="text" value="{v2}"></div>
<div><label for="birthdate">{l3}</label><input id="birthdate" name="birthdate" type="date" value="{v3}"></div></div>
<p><button type="submit">{b}</button></p></form>"#,
        l1 = ui.t("氏名（漢字・かな・ローマ字）", "Name (kanji, kana, latin)"),
        l2 = ui.t("患者ID・保険者番号など", "Identifier"),
        l3 = ui.t("生年月日", "Birth date"),
        v1 = esc(&name),
        v2 = esc(&ident),
        v3 = esc(&birth),
        b = ui.t("検索", "Search"),
    );
    let mut params = vec![];
    for (k, v) in [("name", &name), ("identifier", &ident), ("birthdate", &birth)] {
        if !v.is_empty() {
            params.push((k.to_owned(), v.clone()));
        }
    }
    if !params.is_empty() {
        params.push(("_count".into(), "50".into()));
        // One box for what staff type: a name, or the id or record number
        // they see on a chart (each search decided and audited as one).
        let mut searches = vec![params];
        let id_like = !name.is_empty()
            && ident.is_empty()
            && birth.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if id_like {
            searches.push(vec![("identifier".into(), name.clone()), ("_count".into(), "50".into())]);
            searches.push(vec![("_id".into(), name.clone())]);
        }
        let mut r: Result<Vec<Value>, mamori_service::ServiceError> = Ok(Vec::new());
        let mut seen = std::collections::HashSet::new();
        for q in searches {
            match read::search(&ui.svc, &ui.actor, "Patient", q, false).await {
                Ok(found) => {
                    if let Ok(list) = r.as_mut() {
                        for v in &found.into_inner().page.entries {
                            if seen.insert(v.id.clone()) {
                                list.push(
                                    json!({"resource": serde_json::from_str::<Value>(&v.body).unwrap_or(Value::Null)}),
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = &r {
            body.push_str(&notice("error", &e.message()));
        } else if let Ok(entries) = r {
            body.push_str(&format!("<p class=\"muted\">{} {}</p>", entries.len(), ui.t("件", "found")));
            body.push_str(&format!(
                "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>ID</th></tr></thead><tbody>",
                ui.t("氏名", "Name"),
                ui.t("性別", "Sex"),
                ui.t("生年月日", "Born")
            ));
            for e in entries {
                let p = &e["resource"];
                let ids: Vec<String> = p["identifier"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["value"].as_str().map(esc))
                    .collect();
                body.push_str(&format!(
                    "<tr><td><a href=\"/ui/patients/{id}\">{name}</a>{b}</td><td>{g}</td><td>{bd}</td><td>{ids}</td></tr>",
                    id = ev(&p["id"]),
                    name = name_html(p),
                    b = badges(&ui, p),
                    g = ev(&p["gender"]),
                    bd = ev(&p["birthDate"]),
                    ids = ids.join(", ")
                ));
            }
            body.push_str("</tbody></table>");
        }
    }
    ui.page(ui.t("患者検索", "Patient search"), &body)
}

fn code_text(c: &Value) -> String {
    c["text"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| c["coding"][0]["display"].as_str().map(str::to_owned))
        .or_else(|| c["coding"][0]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn obs_value(o: &Value) -> String {
    if let Some(q) = o.get("valueQuantity") {
        return format!("{} {}", ev(&q["value"]), ev(&q["unit"]));
    }
    o.get("valueString")
        .map(ev)
        .or_else(|| o.get("valueCodeableConcept").map(|c| esc(&code_text(c))))
        .unwrap_or_default()
}

fn break_glass_form(ui: &Ui, id: &str, why: &str) -> String {
    format!(
        r#"<div class="card"><p class="notice error">{explain}</p><p class="muted">{detail}</p>
<h2>{h}</h2><form method="post" action="/ui/patients/{pid}/break-glass" data-confirm="{confirm}">{csrf}
<label for="reason">{rl}</label><textarea id="reason" name="reason" required minlength="10" placeholder="{rph}"></textarea>
<label for="minutes">{ml}</label><select id="minutes" name="minutes"><option value="30">30</option><option value="60" selected>60</option><option value="120">120</option></select>
<p><button type="submit" class="danger">{b}</button></p></form></div>"#,
        explain = ui.t(
            "この患者の診療記録を見る権限がありません（担当関係がありません）。",
            "You may not open this patient's clinical record: you have no care relationship."
        ),
        detail = esc(why),
        h = ui.t("緊急アクセス（ブレークグラス）", "Break the glass"),
        pid = esc(id),
        confirm = esc(ui.t(
            "緊急アクセスは記録され、個人情報保護責任者と担当チームに通知されます。続けますか？",
            "Break-glass access is recorded and announced to the privacy officer and the care team. Continue?"
        )),
        csrf = ui.csrf_field(),
        rl = ui.t("理由（必須）", "Reason (required)"),
        rph = ui.t(
            "例: 救急搬送、意識障害のため既往歴の確認が必要",
            "e.g. emergency admission, unconscious: need the history"
        ),
        ml = ui.t("時間（分）", "Duration (minutes)"),
        b = ui.t("緊急アクセスを開始", "Break the glass"),
    )
}

pub(crate) async fn chart(ui: Ui, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let p = Api::resource(read::read(&ui.svc, &ui.actor, "Patient", &id).await);
    if p.status == 403 {
        return ui.page(ui.t("カルテ", "Chart"), &break_glass_form(&ui, &id, &p.message()));
    }
    if !p.ok() {
        return ui.page(ui.t("カルテ", "Chart"), &notice("error", &p.message()));
    }
    let pt = &p.body;
    let title = match name_of(pt) {
        // An unidentified patient is named by the provisional id staff
        // wrote on the wristband.
        n if n == "—" && is_provisional(pt) => esc(&format!(
            "{} {}",
            ui.t("身元不明", "Unidentified"),
            pt["identifier"][0]["value"].as_str().unwrap_or("")
        )),
        _ => name_html(pt),
    };
    let mut body = format!(
        "<div class=\"card\"><p><strong class=\"pname\">{}</strong>{}</p><p>{}: {} · {}: {} · ID: {}</p></div>",
        title,
        badges(&ui, pt),
        ui.t("性別", "Sex"),
        ev(&pt["gender"]),
        ui.t("生年月日", "Born"),
        ev(&pt["birthDate"]),
        pt["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["value"].as_str().map(esc))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(src) = q.get("merged") {
        body.push_str(&notice("ok", &format!("{} Patient/{} → Patient/{}", ui.t("統合しました:", "Merged:"), src, id)));
    }
    if ui.may(Operation::AppUse) {
        body.push_str(&format!(
            "<p class=\"noprint\"><a href=\"/ui/apps?patient={}\">{}</a></p>",
            esc(&enc(&id)),
            ui.t("この患者でアプリを起動", "Launch an app for this patient")
        ));
    }
    if is_provisional(pt) {
        body.push_str(&notice(
            "info",
            ui.t(
                "仮登録の患者です。身元が判明したら医事課が統合します。",
                "A provisional patient: when the identity is known, medical records merges the record.",
            ),
        ));
        body.push_str(&registration_card(&ui, pt));
    }
    let grants = Api::of(breakglass::list(&ui.svc, &ui.actor, None).await.map(|g| json!({"grants": g})));
    if let Some(g) = grants.body["grants"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["live"] == true && g["patient"] == id && g["user"] == ui.me["name"])
    {
        body.push_str(&format!(
            "<p class=\"notice error\">{} <span class=\"countdown\" data-expires=\"{}\"></span> — {}: {}</p>",
            ui.t("緊急アクセス（ブレークグラス）で閲覧中。残り", "Viewing under break-glass. Time left"),
            ev(&g["expires"]),
            ui.t("理由", "reason"),
            ev(&g["reason"])
        ));
    }
    let all = read::everything(&ui.svc, &ui.actor, &id, &[("_count".into(), "1000".into())]).await;
    let entries: Vec<Value> = match all {
        Ok(page) => page
            .into_inner()
            .rows
            .iter()
            .map(|v| serde_json::from_str::<Value>(&v.body).unwrap_or(Value::Null))
            .collect(),
        Err(e) if e.status() == 403 => {
            body.push_str(&break_glass_form(&ui, &id, &e.message()));
            return ui.page(&name_of(pt), &body);
        }
        Err(e) => {
            body.push_str(&notice("error", &e.message()));
            return ui.page(&name_of(pt), &body);
        }
    };
    let of = |t: &str| entries.iter().filter(|r| r["resourceType"] == t).collect::<Vec<_>>();
    let list = |title: &str, items: Vec<String>| -> String {
        if items.is_empty() {
            format!("<section class=\"card\"><h2>{}</h2><p class=\"muted\">—</p></section>", esc(title))
        } else {
            format!(
                "<section class=\"card\"><h2>{}</h2><ul>{}</ul></section>",
                esc(title),
                items.iter().map(|i| format!("<li>{i}</li>")).collect::<String>()
            )
        }
    };
    body.push_str("<div class=\"grid\">");
    body.push_str(&list(
        ui.t("アレルギー", "Allergies"),
        of("AllergyIntolerance")
            .iter()
            .map(|a| {
                format!(
                    "{} {}",
                    esc(&code_text(&a["code"])),
                    a["criticality"].as_str().map(|c| format!("({})", esc(c))).unwrap_or_default()
                )
            })
            .collect(),
    ));
    body.push_str(&list(
        ui.t("問題・病名", "Problems"),
        of("Condition").iter().map(|c| esc(&code_text(&c["code"]))).collect(),
    ));
    let meds: Vec<String> = of("MedicationRequest")
        .iter()
        .chain(of("MedicationStatement").iter())
        .filter(|m| m["status"] == "active")
        .map(|m| esc(&code_text(&m["medicationCodeableConcept"])))
        .collect();
    body.push_str(&list(ui.t("使用中の薬剤", "Active medications"), meds));
    body.push_str(&list(
        ui.t("受診・入院", "Encounters"),
        of("Encounter")
            .iter()
            .map(|e| format!("{} {} {}", ev(&e["status"]), ev(&e["class"]["code"]), when(&e["period"]["start"], off)))
            .collect(),
    ));
    body.push_str(&list(
        ui.t("文書", "Documents"),
        of("DocumentReference")
            .iter()
            .map(|d| format!("{} ({})", ev(&d["description"]), when(&d["date"], off)))
            .collect(),
    ));
    body.push_str("</div>");
    // Observations: recent values, with a trend per code.
    let mut obs: Vec<&Value> = of("Observation");
    obs.sort_by(|a, b| {
        b["effectiveDateTime"].as_str().unwrap_or("").cmp(a["effectiveDateTime"].as_str().unwrap_or(""))
    });
    let mut by_code: Vec<(String, Vec<(i64, f64)>)> = Vec::new();
    for o in &obs {
        if let (Some(v), Some(t)) = (
            o["valueQuantity"]["value"].as_f64(),
            o["effectiveDateTime"].as_str().and_then(mamori_core::time::Timestamp::parse_rfc3339),
        ) {
            let k = code_text(&o["code"]);
            match by_code.iter_mut().find(|(c, _)| *c == k) {
                Some((_, pts)) => pts.push((t.micros(), v)),
                None => by_code.push((k, vec![(t.micros(), v)])),
            }
        }
    }
    body.push_str(&format!("<section class=\"card\"><h2>{}</h2>", ui.t("検査値・バイタルの推移", "Trends")));
    for (code, mut pts) in by_code {
        pts.sort_by_key(|p| p.0);
        body.push_str(&format!("<p>{} {}</p>", esc(&code), sparkline(&pts)));
    }
    body.push_str(&format!("</section><section class=\"card\"><h2>{}</h2><table><thead><tr><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>", ui.t("最近の観察", "Recent observations"), ui.t("日時", "When"), ui.t("項目", "What"), ui.t("値", "Value")));
    for o in obs.iter().take(50) {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(&o["effectiveDateTime"], off),
            esc(&code_text(&o["code"])),
            obs_value(o)
        ));
    }
    body.push_str("</tbody></table></section>");
    ui.page(&name_of(pt), &body)
}

pub(crate) async fn break_glass(ui: Ui, Path(id): Path<String>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let minutes: u32 = field(&f, "minutes").parse().unwrap_or(60);
    let r = match cmd(json!({"patient": id, "reason": field(&f, "reason"), "minutes": minutes})) {
        Ok(req) => Api::of(breakglass::request(&ui.svc, &ui.actor, req).await),
        Err(e) => Api::of::<()>(Err(e)),
    };
    if !r.ok() {
        return ui.page(
            ui.t("緊急アクセス", "Break the glass"),
            &format!(
                "{}<p><a href=\"/ui/patients/{}\">{}</a></p>",
                notice("error", &r.message()),
                esc(&id),
                ui.t("戻る", "Back")
            ),
        );
    }
    Redirect::to(&format!("/ui/patients/{}", enc(&id))).into_response()
}

pub(crate) async fn register_page(ui: Ui) -> Response {
    register_form(&ui, None)
}

fn register_form(ui: &Ui, err: Option<String>) -> Response {
    let triage = [
        ("red", "赤 即時", "Red — immediate"),
        ("yellow", "黄 待機", "Yellow — delayed"),
        ("green", "緑 軽症", "Green — minor"),
        ("black", "黒", "Black — expectant"),
    ];
    let radios: String = triage
        .iter()
        .map(|(v, ja, en)| format!("<label class=\"check\"><input type=\"radio\" name=\"triage\" value=\"{v}\" required> <span class=\"badge {v}\">{}</span></label>", ui.t(ja, en)))
        .collect();
    let body = format!(
        r#"{e}<p class="muted">{intro}</p><form method="post" action="/ui/register" class="card">{csrf}
<fieldset><legend>{tl}</legend><div class="triage">{radios}</div></fieldset>
<div class="grid"><div><label for="sex">{sl}</label><select id="sex" name="sex" required><option value="unknown">{su}</option><option value="male">{sm}</option><option value="female">{sf}</option><option value="other">{so}</option></select></div>
<div><label for="age">{al}</label><input id="age" name="age" type="number" min="0" max="130" inputmode="numeric"></div>
<div><label for="age_band">{abl}</label><input id="age_band" name="age_band" type="text" placeholder="40-49"></div></div>
<label for="features">{fl}</label><input id="features" name="features" type="text">
<div class="grid"><div><label for="arrival">{arl}</label><select id="arrival" name="arrival"><option value="">—</option><option value="ambulance">{amb}</option><option value="walk-in">{walk}</option><option value="helicopter">{heli}</option><option value="transfer">{tr}</option></select></div>
<div><label for="found_at">{fal}</label><input id="found_at" name="found_at" type="text"></div></div>
<div class="grid"><div><label for="kanji">{kl}</label><input id="kanji" name="kanji" type="text"></div><div><label for="kana">{knl}</label><input id="kana" name="kana" type="text"></div></div>
<label for="note">{nl}</label><textarea id="note" name="note"></textarea>
<p><button type="submit">{b}</button></p></form>"#,
        e = err.map(|m| notice("error", &m)).unwrap_or_default(),
        intro = ui.t(
            "受付を通さずに患者を登録します（非常時、または救急外来）。氏名が不明でも登録できます。",
            "Register a patient without the reception desk (in an emergency, or in the ER). The name may be unknown."
        ),
        csrf = ui.csrf_field(),
        tl = ui.t("トリアージ", "Triage"),
        sl = ui.t("性別", "Sex"),
        su = ui.t("不明", "unknown"),
        sm = ui.t("男性", "male"),
        sf = ui.t("女性", "female"),
        so = ui.t("その他", "other"),
        al = ui.t("推定年齢", "Estimated age"),
        abl = ui.t("年齢層", "Age band"),
        fl = ui.t("特徴（服装・傷・刺青など）", "Distinguishing features"),
        arl = ui.t("来院経路", "Arrival"),
        amb = ui.t("救急車", "ambulance"),
        walk = ui.t("徒歩", "walk-in"),
        heli = ui.t("ヘリ", "helicopter"),
        tr = ui.t("転院", "transfer"),
        fal = ui.t("発見場所", "Found at"),
        kl = ui.t("氏名（漢字、分かれば）", "Name in kanji (if known)"),
        knl = ui.t("氏名（カナ、分かれば）", "Name in kana (if known)"),
        nl = ui.t("メモ", "Note"),
        b = ui.t("登録", "Register"),
    );
    ui.page(ui.t("緊急登録", "Emergency registration"), &body)
}

pub(crate) async fn register_post(ui: Ui, body: Body) -> Response {
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
    let mut req = json!({"triage": field(&f, "triage"), "sex": field(&f, "sex"), "age_band": opt("age_band"), "features": opt("features"),
                         "found_at": opt("found_at"), "arrival": opt("arrival"), "note": opt("note")});
    if let Ok(a) = field(&f, "age").parse::<u32>() {
        req["estimated_age"] = json!(a);
    }
    if !field(&f, "kanji").trim().is_empty() || !field(&f, "kana").trim().is_empty() {
        req["name"] = json!({"kanji": opt("kanji"), "kana": opt("kana")});
    }
    // A repeated submission (reload, double click) leads to the patient
    // the first one registered, not to a second provisional patient.
    ui.once(&f, || async {
        let r = match cmd(req) {
            Ok(req) => registration::register(&ui.svc, &ui.actor, req).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(reg) => Ok(format!("/ui/patients/{}", enc(&reg.id))),
            Err(e) => Err(Box::new(register_form(&ui, Some(e.message())))),
        }
    })
    .await
}

pub(crate) async fn provisional(ui: Ui) -> Response {
    let r = Api::of(registration::list(&ui.svc, &ui.actor, true).await.map(|p| json!({"provisional": p})));
    if !r.ok() {
        return ui.page(ui.t("仮登録患者", "Provisional patients"), &notice("error", &r.message()));
    }
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let mut body = format!(
        "<table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr></thead><tbody>",
        ui.t("仮ID", "Provisional id"),
        ui.t("トリアージ", "Triage"),
        ui.t("性別・年齢", "Sex, age"),
        ui.t("特徴", "Features"),
        ui.t("登録", "Registered")
    );
    for p in r.body["provisional"].as_array().into_iter().flatten() {
        let age = p["estimated_age"]
            .as_i64()
            .map(|a| a.to_string())
            .or_else(|| p["age_band"].as_str().map(str::to_owned))
            .unwrap_or_default();
        body.push_str(&format!(
            "<tr><td><a href=\"/ui/patients/{id}\">{pid}</a></td><td><span class=\"badge {tr}\">{tr}</span></td><td>{sex} {age}</td><td>{f}</td><td>{w}</td><td><a href=\"/ui/merge?source={id}\">{m}</a></td></tr>",
            id = ev(&p["id"]),
            pid = ev(&p["provisional_id"]),
            tr = ev(&p["triage"]),
            sex = ev(&p["sex"]),
            age = esc(&age),
            f = ev(&p["features"]),
            w = when(&p["last_updated"], off),
            m = ui.t("身元を確認して統合", "Identify and merge"),
        ));
    }
    body.push_str("</tbody></table>");
    ui.page(ui.t("仮登録患者", "Provisional patients"), &body)
}

pub(crate) async fn merge_page(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let source = q.get("source").cloned().unwrap_or_default();
    let body = format!(
        r#"<form method="post" action="/ui/merge" class="card">{csrf}<input type="hidden" name="step" value="preview">
<label for="source">{sl}</label><input id="source" name="source" type="text" value="{s}" required>
<label for="target">{tl}</label><input id="target" name="target" type="text" required placeholder="{tph}">
<label for="reason">{rl}</label><input id="reason" name="reason" type="text">
<p><button type="submit">{b}</button></p></form><p class="muted">{hint}</p>"#,
        csrf = ui.csrf_field(),
        sl = ui.t("統合元（仮登録の患者ID）", "Source (the provisional patient's id)"),
        s = esc(&source),
        tl = ui.t("統合先（本来の患者ID）", "Target (the real patient's id)"),
        tph = ui.t("患者検索で確認したID", "the id found by patient search"),
        rl = ui.t("確認の根拠（例: 家族が確認）", "How the identity was confirmed"),
        b = ui.t("変更内容を確認", "Preview"),
        hint = ui.t(
            "統合は記録され、監査担当が確認します。誤りは取り消せます。",
            "Merges are recorded and reviewed by an auditor; a mistaken merge can be undone."
        ),
    );
    ui.page(ui.t("身元確認と統合", "Identify and merge"), &body)
}

fn merge_params(source: &str, target: &str, preview: bool, reason: &str) -> Value {
    let mut p = vec![
        json!({"name": "source-patient", "valueReference": {"reference": format!("Patient/{source}")}}),
        json!({"name": "target-patient", "valueReference": {"reference": format!("Patient/{target}")}}),
        json!({"name": "preview", "valueBoolean": preview}),
    ];
    if !reason.is_empty() {
        p.push(json!({"name": "reason", "valueString": reason}));
    }
    json!({"resourceType": "Parameters", "parameter": p})
}

pub(crate) async fn merge_post(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let (source, target, reason) = (
        field(&f, "source").trim(),
        field(&f, "target").trim().trim_start_matches("Patient/"),
        field(&f, "reason").trim(),
    );
    let preview = field(&f, "step") == "preview";
    let r = Api::of(merge::fhir_merge(&ui.svc, &ui.actor, Ok(merge_params(source, target, preview, reason))).await);
    let outcome = r.body["parameter"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "outcome"))
        .map(|p| p["resource"]["issue"][0]["diagnostics"].as_str().unwrap_or("").to_owned());
    if !r.ok() {
        return ui.page(ui.t("身元確認と統合", "Identify and merge"), &notice("error", &r.message()));
    }
    if preview {
        let body = format!(
            r#"{o}<form method="post" action="/ui/merge" class="card">{csrf}<input type="hidden" name="step" value="merge">
<input type="hidden" name="source" value="{s}"><input type="hidden" name="target" value="{t}"><input type="hidden" name="reason" value="{r}">
<p><button type="submit" class="danger">{b}</button> <a href="/ui/provisional">{c}</a></p></form>"#,
            o = notice("info", &outcome.unwrap_or_default()),
            csrf = ui.csrf_field(),
            s = esc(source),
            t = esc(target),
            r = esc(reason),
            b = ui.t("この内容で統合する", "Merge"),
            c = ui.t("やめる", "Cancel"),
        );
        return ui.page(ui.t("統合の確認", "Confirm the merge"), &body);
    }
    // Done: the chart of the surviving record (a reload does not merge again).
    Redirect::to(&format!("/ui/patients/{}?merged={}", enc(target), enc(source))).into_response()
}
