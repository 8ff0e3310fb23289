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

use super::codes;
use super::html::{bare, notice, trend, tx, when, Lang};
use super::{cmd, cookie, field, form, html, lang_of, new_csrf, set_cookie, Api, Markup, Ui, CSRF_COOKIE};
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

fn login_form(lang: Lang, csrf: &str, next: &str, error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { (notice("error", e)) }
        form.card method="post" action="/ui/login" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="next" value=(next);
            label for="username" { (lang.t("ユーザー名", "User name")) }
            input #username name="username" type="text" autocomplete="username" required autofocus;
            label for="password" { (lang.t("パスワード", "Password")) }
            input #password name="password" type="password" autocomplete="current-password" required;
            label for="totp" { (lang.t("ワンタイムコード（設定している場合）", "One-time code (if enrolled)")) }
            input #totp name="totp" type="text" inputmode="numeric" autocomplete="one-time-code";
            p { button type="submit" { (lang.t("ログイン", "Log in")) } }
        }
        p { a href="/ui/emergency-login" { (lang.t("非常用アカウントでログイン（非常時のみ）", "Log in with a sealed emergency account (emergencies only)")) } }
    }
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
    let r = bare(lang, lang.t("ログイン", "Log in"), &mode, login_form(lang, &csrf, &next, None)).into_response();
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
            login_form(
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
        return bare(lang, lang.t("ログイン", "Log in"), &mode, login_form(lang, &csrf, &next, Some(&detail)))
            .into_response();
    }
    let token = r.body["token"].as_str().unwrap_or("").to_owned();
    let to = if r.body["must_change_password"] == true { "/ui/password".to_owned() } else { next };
    let mut resp = Redirect::to(&to).into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &token, None));
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(CSRF_COOKIE, &new_csrf(), None));
    resp
}

fn emergency_form(lang: Lang, csrf: &str, error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { (notice("error", e)) }
        p.notice.info { (lang.t("非常用アカウントは非常時宣言中のみ使えます。使用は全職員に通知され、記録されます。あなたの氏名と所属を入力してください。", "Sealed emergency accounts work only while an emergency is declared. Their use is announced to all staff and recorded. Enter your own name and affiliation.")) }
        form.card method="post" action="/ui/emergency-login" {
            input type="hidden" name="csrf" value=(csrf);
            label for="account" { (lang.t("非常用アカウント名（封筒に記載）", "Emergency account (from the envelope)")) }
            input #account name="account" type="text" required;
            label for="password" { (lang.t("パスワード（封筒に記載）", "Password (from the envelope)")) }
            input #password name="password" type="password" required;
            label for="real_name" { (lang.t("あなたの氏名", "Your name")) }
            input #real_name name="real_name" type="text" required;
            label for="affiliation" { (lang.t("所属・職種", "Affiliation and profession")) }
            input #affiliation name="affiliation" type="text" required;
            p { button.danger type="submit" { (lang.t("非常用アカウントでログイン", "Log in with the emergency account")) } }
        }
        p { a href="/ui/login" { (lang.t("通常のログインへ", "Back to normal login")) } }
    }
}

pub(crate) async fn emergency_page(State(st): State<Services>, headers: HeaderMap) -> Response {
    let lang = lang_of(&headers);
    let csrf = cookie(&headers, CSRF_COOKIE).unwrap_or_else(new_csrf);
    let mode = current_mode(&st);
    with_csrf_cookie(
        bare(lang, lang.t("非常用アカウント", "Emergency account"), &mode, emergency_form(lang, &csrf, None))
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
            emergency_form(lang, &csrf, Some(lang.t("フォームの有効期限が切れました。", "The form expired."))),
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
            emergency_form(lang, &csrf, Some(&codes::explain(lang, r.status, r.body["basis"].as_str(), &r.message()))),
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
    let body = html! {
        @match msg {
            Some(m) => (notice("error", &m)),
            None => (notice("info", ui.t("初回ログインです。新しいパスワードを設定してください。", "Set a new password before you continue."))),
        }
        form.card method="post" action="/ui/password" {
            (ui.csrf_field())
            label for="current" { (ui.t("現在のパスワード", "Current password")) }
            input #current name="current" type="password" autocomplete="current-password" required;
            label for="new" { (ui.t("新しいパスワード", "New password")) }
            input #new name="new" type="password" autocomplete="new-password" required minlength="12";
            label for="new2" { (ui.t("新しいパスワード（確認）", "New password again")) }
            input #new2 name="new2" type="password" autocomplete="new-password" required minlength="12";
            p.muted { (ui.t("12文字以上、2種類以上の文字を含めてください。", "At least 12 characters, of at least two kinds.")) }
            p { button type="submit" { (ui.t("変更する", "Change password")) } }
        }
    };
    ui.page(ui.t("パスワードの変更", "Change password"), body)
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
        return password_form(&ui, Some(ui.why(&r)));
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
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let mode = Api::of(bcp::mode(&ui.svc, &ui.actor).await);
    let declaration = mode.body.get("declaration").filter(|d| !d.is_null()).cloned();
    let mut live: Vec<Value> = Vec::new();
    if ui.may(Operation::ProvisionalRead) {
        let bg = Api::of(breakglass::list(&ui.svc, &ui.actor, None).await.map(|g| json!({"grants": g})));
        let me = ui.me["name"].clone();
        live = bg.body["grants"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["live"] == true && g["user"] == me)
            .cloned()
            .collect();
    }
    let mut open: Vec<Value> = Vec::new();
    if ui.may(Operation::AlertRead) {
        let a = Api::of(bcp::alerts(&ui.svc, &ui.actor, false).await.map(|a| json!({"alerts": a})));
        open = a.body["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["acked_at"].is_null())
            .take(10)
            .cloned()
            .collect();
    }
    let body = html! {
        @if let Some(d) = &declaration {
            (notice("info", &format!("{}: {} — {}", ui.t("宣言", "Declaration"), codes::declaration_state(ui.lang, d["state"].as_str().unwrap_or("")), d["reason"].as_str().unwrap_or(""))))
        }
        @if ui.may(Operation::ProvisionalRead) {
            form.card method="get" action="/ui/patients" {
                label for="q" { (ui.t("患者検索（氏名・カナ・患者ID・カルテ番号）", "Find a patient (name, kana, id, record number)")) }
                input #q name="q" type="search" placeholder=(ui.t("例: やまだ、00011480", "e.g. Yamada, 00011480")) autofocus;
                " "
                button type="submit" { (ui.t("検索", "Search")) }
            }
            @if !live.is_empty() {
                h2 { (ui.t("有効な緊急アクセス", "Your live break-glass grants")) }
                ul {
                    @for g in &live {
                        li {
                            a href={ "/ui/patients/" (tx(&g["patient"])) } { (ui.t("患者", "Patient")) " " (tx(&g["patient"])) }
                            " — " (ui.t("残り", "left")) " "
                            span.countdown data-expires=(tx(&g["expires"])) {}
                        }
                    }
                }
            }
        }
        @if !open.is_empty() {
            h2 { (ui.t("未確認のアラート", "Open alerts")) }
            ul {
                @for x in &open {
                    li { strong { (codes::severity(ui.lang, x["severity"].as_str().unwrap_or(""))) } " " (when(&x["time"], off)) " " (tx(&x["message"])) }
                }
            }
        }
    };
    ui.page(&format!("{} {}", ui.t("ようこそ", "Welcome,"), super::who(&ui.me)), body)
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

/// A patient's name as the chart heading and the search list show it:
/// the kanji name with its kana reading above it (`<ruby>`), as Japanese
/// charts show it, then any other names.
fn name_html(p: &Value) -> Markup {
    let names: Vec<&Value> = p["name"].as_array().into_iter().flatten().collect();
    let text = |n: &Value| name_of(&json!({"name": [n]}));
    let kanji = names.iter().find(|n| representation(n) == Some("IDE"));
    let kana = names.iter().find(|n| representation(n) == Some("SYL"));
    match (kanji, kana) {
        (Some(k), Some(r)) => html! {
            ruby { (text(k)) rt { (text(r)) } }
            @for n in names.iter().filter(|n| !matches!(representation(n), Some("IDE" | "SYL"))) {
                " / " (text(n))
            }
        },
        _ => html! { (name_of(p)) },
    }
}

/// What was written at a registration without the reception desk
/// (triage, estimated age, features, where found, arrival, note).
fn registration_card(ui: &Ui, p: &Value) -> Markup {
    let Some(fields) = p["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == mamori_service::continuity::registration::EXT)
        .and_then(|e| e["extension"].as_array())
    else {
        return html! {};
    };
    let mut rows: Vec<(&str, String)> = Vec::new();
    for f in fields {
        let s = || f["valueString"].as_str().unwrap_or("").to_owned();
        rows.push(match f["url"].as_str().unwrap_or("") {
            "triage" => (ui.t("トリアージ", "Triage"), codes::triage(ui.lang, f["valueCode"].as_str().unwrap_or(""))),
            "estimated-age" => {
                (ui.t("推定年齢", "Estimated age"), format!("{}{}", f["valueInteger"], ui.t("歳", " years")))
            }
            "age-band" => (ui.t("年齢層", "Age band"), s()),
            "features" => (ui.t("身体的特徴", "Features"), s()),
            "found-at" => (ui.t("発見場所", "Where found"), s()),
            "arrival" => (ui.t("来院方法", "Arrival"), codes::arrival(ui.lang, &s())),
            "note" => (ui.t("メモ", "Note"), s()),
            _ => continue,
        });
    }
    html! {
        section.card {
            h2 { (ui.t("仮登録時の記録", "Recorded at registration")) }
            table { @for (label, value) in &rows { tr { th { (label) } td { (value) } } } }
        }
    }
}

fn is_provisional(p: &Value) -> bool {
    p["meta"]["tag"].as_array().is_some_and(|a| a.iter().any(|t| t["code"] == "provisional"))
}

fn is_test(p: &Value) -> bool {
    p["meta"]["security"].as_array().is_some_and(|a| a.iter().any(|t| t["code"] == "HTEST"))
}

fn badges(ui: &Ui, p: &Value) -> Markup {
    html! {
        @if is_provisional(p) { " " span.badge.provisional { (ui.t("仮登録", "provisional")) } }
        @if is_test(p) { " " span.badge.test { (ui.t("デモ", "demo")) } }
        @if p["active"] == false { " " span.badge.black { (ui.t("統合済/無効", "merged/inactive")) } }
    }
}

/// A patient's age in whole years on the institution's local date.
fn age(birth: &str, now: mamori_core::time::Timestamp, off: i64) -> Option<i64> {
    let mut it = birth.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, d) = (it.next()??, it.next().flatten().unwrap_or(1), it.next().flatten().unwrap_or(1));
    let now = mamori_core::time::Timestamp(now.micros() + off * 60_000_000);
    let (ny, nm, nd) = now.ymd();
    let (nm, nd) = (i64::from(nm), i64::from(nd));
    let years = ny - y - i64::from((nm, nd) < (m, d));
    (years >= 0).then_some(years)
}

/// Sex and age as a chart shows them ("男性 · 55歳").
fn sex_age(ui: &Ui, p: &Value) -> String {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let sex = codes::gender(ui.lang, p["gender"].as_str().unwrap_or(""));
    match p["birthDate"].as_str().and_then(|b| age(b, ui.svc.now(), off)) {
        Some(a) => format!("{sex} · {a}{}", ui.t("歳", " years")),
        None => sex,
    }
}

pub(crate) async fn search(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
    let (name, ident, birth) = (get("q"), get("identifier"), get("birthdate"));
    let form = html! {
        form.card method="get" action="/ui/patients" {
            div.grid {
                div { label for="q" { (ui.t("氏名（漢字・かな・ローマ字）・患者ID・カルテ番号", "Name (kanji, kana, latin), id or record number")) } input #q name="q" type="search" value=(name); }
                div { label for="identifier" { (ui.t("患者ID・保険者番号など", "Identifier")) } input #identifier name="identifier" type="text" value=(ident); }
                div { label for="birthdate" { (ui.t("生年月日", "Birth date")) } input #birthdate name="birthdate" type="date" value=(birth); }
            }
            p { button type="submit" { (ui.t("検索", "Search")) } }
        }
    };
    let mut params = vec![];
    for (k, v) in [("name", &name), ("identifier", &ident), ("birthdate", &birth)] {
        if !v.is_empty() {
            params.push((k.to_owned(), v.clone()));
        }
    }
    if params.is_empty() {
        return ui.page(ui.t("患者検索", "Patient search"), form);
    }
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
                            list.push(serde_json::from_str::<Value>(&v.body).unwrap_or(Value::Null));
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
    let body = html! {
        (form)
        @match &r {
            Err(e) => (notice("error", &ui.why_err(e))),
            Ok(entries) if entries.is_empty() => (notice("info", ui.t("該当する患者はいません。", "No patient matches."))),
            Ok(entries) => {
                p.muted { (entries.len()) " " (ui.t("件", "found")) }
                table.stack {
                    thead { tr { th { (ui.t("氏名", "Name")) } th { (ui.t("性別・年齢", "Sex, age")) } th { (ui.t("生年月日", "Born")) } th { (ui.t("患者ID・カルテ番号", "Id, record number")) } } }
                    tbody {
                        @for p in entries {
                            tr {
                                td data-label=(ui.t("氏名", "Name")) { a href={ "/ui/patients/" (tx(&p["id"])) } { (name_html(p)) } (badges(&ui, p)) }
                                td data-label=(ui.t("性別・年齢", "Sex, age")) { (sex_age(&ui, p)) }
                                td data-label=(ui.t("生年月日", "Born")) { (tx(&p["birthDate"])) }
                                td data-label=(ui.t("患者ID・カルテ番号", "Id, record number")) { (ids_of(p)) }
                            }
                        }
                    }
                }
            }
        }
    };
    ui.page(ui.t("患者検索", "Patient search"), body)
}

/// The patient's internal id and the record numbers staff see.
fn ids_of(p: &Value) -> String {
    let mut ids: Vec<&str> =
        p["identifier"].as_array().into_iter().flatten().filter_map(|i| i["value"].as_str()).collect();
    if let Some(id) = p["id"].as_str() {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids.join(", ")
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
        let unit = codes::unit(q["code"].as_str().or(q["unit"].as_str()).unwrap_or(""));
        return format!("{} {}", tx(&q["value"]), unit).trim().to_owned();
    }
    o.get("valueString").map(tx).or_else(|| o.get("valueCodeableConcept").map(code_text)).unwrap_or_default()
}

fn break_glass_form(ui: &Ui, id: &str, why: &str, reason: &str, err: Option<&str>) -> Markup {
    html! {
        div.card {
            @if let Some(e) = err { (notice("error", e)) }
            p.notice.error { (ui.t("この患者の診療記録を見る権限がありません（担当関係がありません）。", "You may not open this patient's clinical record: you have no care relationship.")) }
            p.muted { (why) }
            h2 { (ui.t("緊急アクセス（ブレークグラス）", "Break the glass")) }
            form method="post" action={ "/ui/patients/" (enc(id)) "/break-glass" } data-confirm=(ui.t("緊急アクセスは記録され、個人情報保護責任者と担当チームに通知されます。続けますか？", "Break-glass access is recorded and announced to the privacy officer and the care team. Continue?")) {
                (ui.csrf_field())
                label for="reason" { (ui.t("理由（必須、10文字以上）", "Reason (required, at least 10 characters)")) }
                textarea #reason name="reason" required minlength="10" placeholder=(ui.t("例: 救急搬送、意識障害のため既往歴の確認が必要", "e.g. emergency admission, unconscious: need the history")) { (reason) }
                label for="minutes" { (ui.t("時間（分）", "Duration (minutes)")) }
                select #minutes name="minutes" {
                    option value="30" { "30" }
                    option value="60" selected { "60" }
                    option value="120" { "120" }
                }
                p { button.danger type="submit" { (ui.t("緊急アクセスを開始", "Break the glass")) } }
            }
        }
    }
}

pub(crate) async fn chart(ui: Ui, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let p = Api::resource(read::read(&ui.svc, &ui.actor, "Patient", &id).await);
    if matches!(p.status, 400 | 404) {
        // Not an id: the record number staff see (resolved by an audited
        // search), then the chart under the patient's id.
        return match ui.patient_id(&id).await {
            Ok(pid) if pid != id => Redirect::to(&format!("/ui/patients/{}", enc(&pid))).into_response(),
            Ok(_) => ui.page(ui.t("カルテ", "Chart"), notice("error", &ui.why(&p))),
            Err(msg) => ui.page(ui.t("カルテ", "Chart"), notice("error", &msg)),
        };
    }
    if p.status == 403 {
        return ui.page(ui.t("カルテ", "Chart"), break_glass_form(&ui, &id, &ui.why(&p), "", None));
    }
    if !p.ok() {
        return ui.page(ui.t("カルテ", "Chart"), notice("error", &ui.why(&p)));
    }
    let pt = &p.body;
    let unidentified = name_of(pt) == "—" && is_provisional(pt);
    // An unidentified patient is named by the provisional id staff wrote
    // on the wristband.
    let plain_title = if unidentified {
        format!("{} {}", ui.t("身元不明", "Unidentified"), pt["identifier"][0]["value"].as_str().unwrap_or(""))
    } else {
        name_of(pt)
    };
    let grants = Api::of(breakglass::list(&ui.svc, &ui.actor, None).await.map(|g| json!({"grants": g})));
    let grant = grants.body["grants"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["live"] == true && g["patient"] == id && g["user"] == ui.me["name"])
        .cloned();
    let head = html! {
        div.card {
            p {
                strong.pname { @if unidentified { (plain_title) } @else { (name_html(pt)) } }
                (badges(&ui, pt))
            }
            p {
                (sex_age(&ui, pt)) " · " (ui.t("生年月日", "Born")) ": " (tx(&pt["birthDate"]))
                " · " (ui.t("患者ID・カルテ番号", "Id, record number")) ": " (ids_of(pt))
            }
        }
        @if let Some(src) = q.get("merged") {
            (notice("ok", &format!("{} {} → {}", ui.t("統合しました:", "Merged:"), src, id)))
        }
        @if q.contains_key("transcribed") {
            (notice("ok", ui.t("紙の記録を転記しました。元の記録者と時刻が記録の由来として残っています。", "The paper record was entered, with its original author and time kept as its provenance.")))
        }
        p.noprint {
            (super::records::transcribe_link(&ui, &id))
            @if ui.may(Operation::AppUse) {
                " · " a href={ "/ui/apps?patient=" (enc(&id)) } { (ui.t("この患者でアプリを起動", "Launch an app for this patient")) }
            }
        }
        @if is_provisional(pt) {
            (notice("info", ui.t("仮登録の患者です。身元が判明したら医事課が統合します。", "A provisional patient: when the identity is known, medical records merges the record.")))
            (registration_card(&ui, pt))
        }
        @if let Some(g) = &grant {
            p.notice.error {
                (ui.t("緊急アクセス（ブレークグラス）で閲覧中。残り", "Viewing under break-glass. Time left")) " "
                span.countdown data-expires=(tx(&g["expires"])) {}
                " — " (ui.t("理由", "reason")) ": " (tx(&g["reason"]))
            }
        }
    };
    let all = read::everything(&ui.svc, &ui.actor, &id, &[("_count".into(), "1000".into())]).await;
    let entries: Vec<Value> = match all {
        Ok(page) => page
            .into_inner()
            .rows
            .iter()
            .map(|v| serde_json::from_str::<Value>(&v.body).unwrap_or(Value::Null))
            .collect(),
        Err(e) if e.status() == 403 => {
            return ui.page(&plain_title, html! { (head) (break_glass_form(&ui, &id, &ui.why_err(&e), "", None)) });
        }
        Err(e) => return ui.page(&plain_title, html! { (head) (notice("error", &ui.why_err(&e))) }),
    };
    let of = |t: &str| entries.iter().filter(|r| r["resourceType"] == t).collect::<Vec<_>>();
    let list = |title: &str, items: Vec<String>| -> Markup {
        html! {
            section.card {
                h2 { (title) }
                @if items.is_empty() { p.muted { "—" } } @else { ul { @for i in &items { li { (i) } } } }
            }
        }
    };
    let allergies: Vec<String> = of("AllergyIntolerance")
        .iter()
        .map(|a| match a["criticality"].as_str() {
            Some(c) => format!("{} ({})", code_text(&a["code"]), codes::criticality(ui.lang, c)),
            None => code_text(&a["code"]),
        })
        .collect();
    let problems: Vec<String> = of("Condition").iter().map(|c| code_text(&c["code"])).collect();
    let meds: Vec<String> = of("MedicationRequest")
        .iter()
        .chain(of("MedicationStatement").iter())
        .filter(|m| m["status"] == "active")
        .map(|m| code_text(&m["medicationCodeableConcept"]))
        .collect();
    let encounters: Vec<String> = of("Encounter")
        .iter()
        .map(|e| {
            format!(
                "{} {} · {}",
                when(&e["period"]["start"], off),
                codes::encounter_class(ui.lang, e["class"]["code"].as_str().unwrap_or("")),
                codes::encounter_status(ui.lang, e["status"].as_str().unwrap_or("")),
            )
        })
        .collect();
    let docs: Vec<&Value> = of("DocumentReference");
    // Observations: recent values, with a trend per code.
    let mut obs: Vec<&Value> = of("Observation");
    obs.sort_by(|a, b| {
        b["effectiveDateTime"].as_str().unwrap_or("").cmp(a["effectiveDateTime"].as_str().unwrap_or(""))
    });
    // Per code: its name, its unit, and the (time, value) points.
    type Series = (String, String, Vec<(i64, f64)>);
    let mut by_code: Vec<Series> = Vec::new();
    for o in &obs {
        if let (Some(v), Some(t)) = (
            o["valueQuantity"]["value"].as_f64(),
            o["effectiveDateTime"].as_str().and_then(mamori_core::time::Timestamp::parse_rfc3339),
        ) {
            let k = code_text(&o["code"]);
            match by_code.iter_mut().find(|(c, _, _)| *c == k) {
                Some((_, _, pts)) => pts.push((t.micros(), v)),
                None => {
                    let q = &o["valueQuantity"];
                    let unit = codes::unit(q["code"].as_str().or(q["unit"].as_str()).unwrap_or(""));
                    by_code.push((k, unit, vec![(t.micros(), v)]))
                }
            }
        }
    }
    for (_, _, pts) in by_code.iter_mut() {
        pts.sort_by_key(|p| p.0);
    }
    let body = html! {
        (head)
        div.grid {
            (list(ui.t("アレルギー", "Allergies"), allergies))
            (list(ui.t("問題・病名", "Problems"), problems))
            (list(ui.t("使用中の薬剤", "Active medications"), meds))
            (list(ui.t("受診・入院", "Encounters"), encounters))
            section.card {
                h2 { (ui.t("文書", "Documents")) }
                @if docs.is_empty() { p.muted { "—" } }
                ul {
                    @for d in &docs {
                        li {
                            @let label = format!("{} ({})", d["description"].as_str().or(d["type"]["text"].as_str()).unwrap_or(ui.t("文書", "document")), when(&d["date"], off));
                            @match d["id"].as_str() {
                                Some(did) => a href={ "/ui/patients/" (enc(&id)) "/documents/" (enc(did)) } { (label) },
                                None => (label),
                            }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { (ui.t("検査値・バイタルの推移", "Trends")) }
            @if by_code.is_empty() { p.muted { "—" } }
            div.trends {
                @for (code, unit, pts) in &by_code {
                    figure.trend {
                        figcaption { (code) @if !unit.is_empty() { " (" (unit) ")" } }
                        (trend(pts, unit, off))
                    }
                }
            }
        }
        section.card {
            h2 { (ui.t("最近の観察", "Recent observations")) }
            table.stack {
                thead { tr { th { (ui.t("日時", "When")) } th { (ui.t("項目", "What")) } th { (ui.t("値", "Value")) } } }
                tbody {
                    @for o in obs.iter().take(50) {
                        tr {
                            td data-label=(ui.t("日時", "When")) { (when(&o["effectiveDateTime"], off)) }
                            td data-label=(ui.t("項目", "What")) { (code_text(&o["code"])) }
                            td data-label=(ui.t("値", "Value")) { (obs_value(o)) }
                        }
                    }
                }
            }
        }
    };
    ui.page(&plain_title, body)
}

/// A patient's document, read by the same rule as the chart (audited),
/// or the refusal; a document of another patient is not found here.
async fn patient_document(ui: &Ui, id: &str, doc: &str) -> Result<Value, Response> {
    let d = Api::resource(read::read(&ui.svc, &ui.actor, "DocumentReference", doc).await);
    if !d.ok() {
        return Err(ui.page(ui.t("文書", "Document"), notice("error", &ui.why(&d))));
    }
    if d.body["subject"]["reference"].as_str() != Some(format!("Patient/{id}").as_str()) {
        let mut r = ui.page(
            ui.t("文書", "Document"),
            notice("error", ui.t("この患者の文書ではありません。", "This is not a document of this patient.")),
        );
        *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
        return Err(r);
    }
    Ok(d.body)
}

/// The text of an attachment that is text, if it carries its data.
fn attachment_text(a: &Value) -> Option<String> {
    use base64::Engine as _;
    let ct = a["contentType"].as_str().unwrap_or("");
    if !ct.starts_with("text/plain") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(a["data"].as_str()?).ok()?;
    String::from_utf8(bytes).ok()
}

/// A FHIR document Bundle carried by an attachment, if it is one.
fn attachment_document(a: &Value) -> Option<Value> {
    use base64::Engine as _;
    if !a["contentType"].as_str().unwrap_or("").starts_with("application/fhir+json") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(a["data"].as_str()?).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    (v["resourceType"] == "Bundle"
        && v["type"] == "document"
        && v["entry"][0]["resource"]["resourceType"] == "Composition")
        .then_some(v)
}

/// A date or time as the document wrote it (its own time zone), minutes
/// at most: `2026-12-05 03:27`.
fn as_written(v: &Value) -> String {
    match v.as_str() {
        Some(s) => match (s.get(..10), s.get(10..11), s.get(11..16)) {
            (Some(d), Some("T"), Some(t)) => format!("{d} {t}"),
            _ => s.to_owned(),
        },
        None => "—".into(),
    }
}

/// A document Bundle (a JP-CLINS referral letter, or any FHIR document)
/// as a letter: title, date, to and from, the patient, each section's
/// text and its structured entries. Printable.
fn letter(ui: &Ui, b: &Value) -> Markup {
    let entries: Vec<&Value> = b["entry"].as_array().into_iter().flatten().collect();
    let resolve = |r: &Value| -> Option<&Value> {
        let r = r["reference"].as_str()?;
        entries.iter().find(|e| e["fullUrl"].as_str() == Some(r)).map(|e| &e["resource"])
    };
    let comp = &b["entry"][0]["resource"];
    let name_of = |v: &Value| -> String {
        match v["resourceType"].as_str() {
            Some("Organization") => {
                let code = v["identifier"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|i| i["system"].as_str().is_some_and(|s| s.ends_with("insurance-medical-institution-no")))
                    .and_then(|i| i["value"].as_str());
                match code {
                    Some(c) => format!("{}（{c}）", v["name"].as_str().unwrap_or("—")),
                    None => v["name"].as_str().unwrap_or("—").to_owned(),
                }
            }
            Some("Practitioner" | "Patient") => v["name"][0]["text"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| v["name"][0]["family"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "—".into()),
            _ => "—".into(),
        }
    };
    let sections: Vec<&Value> = comp["section"].as_array().into_iter().flatten().collect();
    let code_of = |s: &Value| s["code"]["coding"][0]["code"].as_str().unwrap_or("").to_owned();
    let people = |code: &str| -> Vec<String> {
        sections
            .iter()
            .filter(|s| code_of(s) == code)
            .flat_map(|s| s["entry"].as_array().into_iter().flatten())
            .filter_map(&resolve)
            .map(&name_of)
            .collect()
    };
    let (to, from) = (people("910"), people("920"));
    let patient = resolve(&comp["subject"]).cloned().unwrap_or(Value::Null);
    let rep = |code: &str| {
        patient["name"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["extension"].as_array().into_iter().flatten().any(|x| x["valueCode"] == code))
    };
    let kanji = rep("IDE").or_else(|| patient["name"].get(0)).and_then(|n| n["text"].as_str()).unwrap_or("—");
    let kana = rep("SYL").and_then(|n| n["text"].as_str());
    // Sections other than the addresses, with their sub-sections flattened.
    let mut body: Vec<(String, String, Vec<String>)> = Vec::new();
    fn walk<'a>(s: &'a Value, out: &mut Vec<&'a Value>) {
        out.push(s);
        for x in s["section"].as_array().into_iter().flatten() {
            walk(x, out);
        }
    }
    let mut flat = Vec::new();
    for s in &sections {
        if !matches!(code_of(s).as_str(), "910" | "920") {
            walk(s, &mut flat);
        }
    }
    for s in flat {
        let text = s["text"]["div"].as_str().map(mamori_service::exchange::clins::narrative_text).unwrap_or_default();
        let items: Vec<String> = s["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(&resolve)
            .map(|v| {
                let what = ["code", "medicationCodeableConcept", "type"]
                    .iter()
                    .find_map(|k| v[*k].is_object().then(|| mamori_service::exchange::clins::concept_text(&v[*k])))
                    .or_else(|| {
                        let p = &v["period"];
                        p["start"].as_str().map(|s| format!("{s} – {}", p["end"].as_str().unwrap_or("")))
                    })
                    .unwrap_or_default();
                format!("{} {what}", v["resourceType"].as_str().unwrap_or(""))
            })
            .collect();
        if text.is_empty() && items.is_empty() {
            continue;
        }
        body.push((s["title"].as_str().unwrap_or("").to_owned(), text, items));
    }
    let sig = &b["signature"];
    html! {
        section.letter {
            @if !to.is_empty() { p.to { (to.join("、")) " " (ui.t("御中", "")) } }
            h2.letter-title { (comp["title"].as_str().unwrap_or("")) }
            dl.facts {
                dt { (ui.t("作成日", "Date")) } dd { (as_written(&comp["date"])) }
                @if !from.is_empty() { dt { (ui.t("紹介元", "From")) } dd { (from.join(" ")) } }
                dt { (ui.t("患者氏名", "Patient")) }
                dd {
                    @match kana {
                        Some(k) => ruby { (kanji) rt { (k) } },
                        None => (kanji),
                    }
                    " " (patient["birthDate"].as_str().unwrap_or("")) " " (patient["gender"].as_str().map(|g| codes::gender(ui.lang, g)).unwrap_or_default())
                }
            }
            @for (title, text, items) in &body {
                h3 { (title) }
                @if !text.is_empty() { p.prewrap { (text) } }
                @if !items.is_empty() {
                    ul.muted { @for i in items { li { (i) } } }
                }
            }
            @if sig.is_object() {
                p.muted {
                    (ui.t("電子署名", "Signed")) ": "
                    (sig["who"]["display"].as_str().or(sig["who"]["reference"].as_str()).unwrap_or("—"))
                    " · " (as_written(&sig["when"]))
                }
            }
        }
    }
}

/// A clinical document (DocumentReference) as a page: what it is, when,
/// by whom, and its text; other attachments can be downloaded.
pub(crate) async fn document(ui: Ui, Path((id, doc)): Path<(String, String)>) -> Response {
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let d = match patient_document(&ui, &id, &doc).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let title = d["description"].as_str().or(d["type"]["text"].as_str()).unwrap_or(ui.t("文書", "Document")).to_owned();
    let authors: Vec<String> = d["author"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["display"].as_str().or(a["reference"].as_str()).unwrap_or("").to_owned())
        .collect();
    let body = html! {
        p.noprint {
            a href={ "/ui/patients/" (enc(&id)) } { (ui.t("カルテへ戻る", "Back to the chart")) } " "
            button.secondary type="button" data-print { (ui.t("印刷", "Print")) }
        }
        article.document {
            dl.facts {
                dt { (ui.t("種類", "Type")) } dd { (code_text(&d["type"])) }
                dt { (ui.t("日付", "Date")) } dd { (when(&d["date"], off)) }
                @if !authors.is_empty() { dt { (ui.t("作成者", "Author")) } dd { (authors.join("、")) } }
                dt { (ui.t("患者ID", "Patient id")) } dd { (id) }
            }
            @if let Some(a) = d["authenticator"]["display"].as_str() {
                p.muted { (ui.t("認証", "Authenticated by")) ": " (a) }
            }
            @for (n, c) in d["content"].as_array().into_iter().flatten().enumerate() {
                @let a = &c["attachment"];
                @match (attachment_text(a), attachment_document(a)) {
                    (Some(text), _) => {
                        @if let Some(t) = a["title"].as_str() { h2 { (t) } }
                        p.prewrap { (text) }
                    }
                    (None, Some(bundle)) => {
                        (letter(&ui, &bundle))
                        p.noprint {
                            a href={ "/ui/patients/" (enc(&id)) "/documents/" (enc(&doc)) "/content/" (n) } {
                                (ui.t("FHIR 文書（JSON）を保存", "Download the FHIR document (JSON)"))
                            }
                        }
                    }
                    (None, None) => p {
                        a href={ "/ui/patients/" (enc(&id)) "/documents/" (enc(&doc)) "/content/" (n) } {
                            (a["title"].as_str().unwrap_or(ui.t("添付ファイル", "Attachment"))) " (" (a["contentType"].as_str().unwrap_or("?")) ")"
                        }
                    },
                }
            }
        }
    };
    ui.page(&title, body)
}

/// An attachment's bytes, as a download: only the types a browser shows
/// safely keep their type, everything else is a plain download.
pub(crate) async fn document_content(ui: Ui, Path((id, doc, n)): Path<(String, String, usize)>) -> Response {
    use base64::Engine as _;
    let d = match patient_document(&ui, &id, &doc).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let a = &d["content"][n]["attachment"];
    let Some(bytes) = a["data"].as_str().and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()) else {
        let mut r = ui.page(
            ui.t("文書", "Document"),
            notice("error", ui.t("この添付ファイルは本文を含んでいません。", "This attachment carries no data here.")),
        );
        *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
        return r;
    };
    let ct = a["contentType"].as_str().unwrap_or("");
    let ct = ["application/pdf", "image/png", "image/jpeg", "text/plain"]
        .into_iter()
        .find(|t| ct.starts_with(t))
        .unwrap_or("application/octet-stream");
    let name: String = a["title"]
        .as_str()
        .unwrap_or("attachment")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    (
        [
            (header::CONTENT_TYPE, ct.to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
            (header::HeaderName::from_static("x-content-type-options"), "nosniff".to_owned()),
        ],
        bytes,
    )
        .into_response()
}

pub(crate) async fn break_glass(ui: Ui, Path(id): Path<String>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let minutes: u32 = field(&f, "minutes").parse().unwrap_or(60);
    // One grant per form: a double click or a reload of the request does
    // not open a second grant (each is announced and reviewed).
    ui.once(&f, || async {
        let r = match cmd(json!({"patient": id, "reason": field(&f, "reason"), "minutes": minutes})) {
            Ok(req) => Api::of(breakglass::request(&ui.svc, &ui.actor, req).await),
            Err(e) => Api::of::<()>(Err(e)),
        };
        if r.ok() {
            return Ok(format!("/ui/patients/{}", enc(&id)));
        }
        // Refused (e.g. a reason too short, or the plan's cap): the same
        // form again, with what was typed and why.
        Err(Box::new(ui.page(
            ui.t("緊急アクセス", "Break the glass"),
            break_glass_form(
                &ui,
                &id,
                ui.t("この患者の診療記録には担当関係が必要です。", "This patient's record needs a care relationship."),
                field(&f, "reason"),
                Some(&ui.why(&r)),
            ),
        )))
    })
    .await
}

pub(crate) async fn register_page(ui: Ui) -> Response {
    register_form(&ui, None, &[])
}

/// The registration form; after a refusal, with what was typed (`typed`).
fn register_form(ui: &Ui, err: Option<String>, typed: &[(String, String)]) -> Response {
    let v = |k: &str| field(typed, k);
    let triage = [
        ("red", "赤 即時", "Red — immediate"),
        ("yellow", "黄 待機", "Yellow — delayed"),
        ("green", "緑 軽症", "Green — minor"),
        ("black", "黒", "Black — expectant"),
    ];
    let body = html! {
        @if let Some(m) = &err { (notice("error", m)) }
        p.muted { (ui.t("受付を通さずに患者を登録します（非常時、または救急外来）。氏名が不明でも登録できます。", "Register a patient without the reception desk (in an emergency, or in the ER). The name may be unknown.")) }
        form.card method="post" action="/ui/register" {
            (ui.csrf_field())
            fieldset {
                legend { (ui.t("トリアージ", "Triage")) }
                div.triage {
                    @for (v, ja, en) in triage {
                        label.check { input type="radio" name="triage" value=(v) required checked[field(typed, "triage") == v]; " " span class={ "badge " (v) } { (ui.t(ja, en)) } }
                    }
                }
            }
            div.grid {
                div {
                    label for="sex" { (ui.t("性別", "Sex")) }
                    select #sex name="sex" required {
                        @for x in ["unknown", "male", "female", "other"] { option value=(x) selected[v("sex") == x] { (codes::gender(ui.lang, x)) } }
                    }
                }
                div { label for="age" { (ui.t("推定年齢", "Estimated age")) } input #age name="age" type="number" min="0" max="130" inputmode="numeric" value=(v("age")); }
                div { label for="age_band" { (ui.t("年齢層", "Age band")) } input #age_band name="age_band" type="text" placeholder="40-49" value=(v("age_band")); }
            }
            label for="features" { (ui.t("特徴（服装・傷・刺青など）", "Distinguishing features")) }
            input #features name="features" type="text" value=(v("features"));
            div.grid {
                div {
                    label for="arrival" { (ui.t("来院経路", "Arrival")) }
                    select #arrival name="arrival" {
                        option value="" { "—" }
                        @for x in ["ambulance", "walk-in", "helicopter", "transfer"] { option value=(x) selected[v("arrival") == x] { (codes::arrival(ui.lang, x)) } }
                    }
                }
                div { label for="found_at" { (ui.t("発見場所", "Found at")) } input #found_at name="found_at" type="text" value=(v("found_at")); }
            }
            div.grid {
                div { label for="kanji" { (ui.t("氏名（漢字、分かれば）", "Name in kanji (if known)")) } input #kanji name="kanji" type="text" value=(v("kanji")); }
                div { label for="kana" { (ui.t("氏名（カナ、分かれば）", "Name in kana (if known)")) } input #kana name="kana" type="text" value=(v("kana")); }
            }
            label for="note" { (ui.t("メモ", "Note")) }
            textarea #note name="note" { (v("note")) }
            p { button type="submit" { (ui.t("登録", "Register")) } }
        }
    };
    ui.page(ui.t("緊急登録", "Emergency registration"), body)
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
            Err(e) => Err(Box::new(register_form(&ui, Some(ui.why_err(&e)), &f))),
        }
    })
    .await
}

pub(crate) async fn provisional(ui: Ui) -> Response {
    let r = Api::of(registration::list(&ui.svc, &ui.actor, true).await.map(|p| json!({"provisional": p})));
    if !r.ok() {
        return ui.page(ui.t("仮登録患者", "Provisional patients"), notice("error", &ui.why(&r)));
    }
    let off = ui.svc.cfg.institution.utc_offset_minutes;
    let cols = [
        ui.t("仮ID", "Provisional id"),
        ui.t("トリアージ", "Triage"),
        ui.t("性別・年齢", "Sex, age"),
        ui.t("特徴", "Features"),
        ui.t("登録", "Registered"),
    ];
    let list: Vec<&Value> = r.body["provisional"].as_array().into_iter().flatten().collect();
    let body = html! {
        @if list.is_empty() { (notice("info", ui.t("仮登録の患者はいません。", "There are no provisional patients."))) }
        table.stack {
            thead { tr { @for c in cols { th { (c) } } th {} } }
            tbody {
                @for p in &list {
                    @let age = p["estimated_age"].as_i64().map(|a| format!("{a}{}", ui.t("歳", " years"))).or_else(|| p["age_band"].as_str().map(str::to_owned)).unwrap_or_default();
                    @let tr_code = p["triage"].as_str().unwrap_or("");
                    tr {
                        td data-label=(cols[0]) { a href={ "/ui/patients/" (tx(&p["id"])) } { (tx(&p["provisional_id"])) } }
                        td data-label=(cols[1]) { span class={ "badge " (tr_code) } { (codes::triage(ui.lang, tr_code)) } }
                        td data-label=(cols[2]) { (codes::gender(ui.lang, p["sex"].as_str().unwrap_or(""))) " " (age) }
                        td data-label=(cols[3]) { (tx(&p["features"])) }
                        td data-label=(cols[4]) { (when(&p["last_updated"], off)) }
                        td { a href={ "/ui/merge?source=" (tx(&p["id"])) } { (ui.t("身元を確認して統合", "Identify and merge")) } }
                    }
                }
            }
        }
    };
    ui.page(ui.t("仮登録患者", "Provisional patients"), body)
}

pub(crate) async fn merge_page(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let source = q.get("source").cloned().unwrap_or_default();
    merge_form(&ui, &source, "", "", None)
}

fn merge_form(ui: &Ui, source: &str, target: &str, reason: &str, err: Option<&str>) -> Response {
    let body = html! {
        @if let Some(e) = err { (notice("error", e)) }
        form.card method="post" action="/ui/merge" {
            (ui.csrf_field())
            input type="hidden" name="step" value="preview";
            label for="source" { (ui.t("統合元（仮登録の患者ID・仮ID）", "Source (the provisional patient's id or provisional id)")) }
            input #source name="source" type="text" value=(source) required;
            label for="target" { (ui.t("統合先（本来の患者ID・カルテ番号）", "Target (the real patient's id or record number)")) }
            input #target name="target" type="text" value=(target) required placeholder=(ui.t("患者検索で確認した患者IDまたはカルテ番号", "the id or record number found by patient search"));
            label for="reason" { (ui.t("確認の根拠（例: 家族が確認）", "How the identity was confirmed")) }
            input #reason name="reason" type="text" value=(reason);
            p { button type="submit" { (ui.t("変更内容を確認", "Preview")) } }
        }
        p.muted {
            (ui.t("統合は記録され、監査担当が確認します。誤りは取り消せます。", "Merges are recorded and reviewed by an auditor; a mistaken merge can be undone."))
            " " a href="/ui/merge/reviews" { (ui.t("統合の一覧と確認", "Merges and their review")) }
        }
    };
    ui.page(ui.t("身元確認と統合", "Identify and merge"), body)
}

/// The count and the records a merge preview says would change (its
/// outcome reads `preview: N resources would change: A, B`).
fn preview_changes(text: &str) -> Option<(usize, Vec<String>)> {
    let (n, list) = text.strip_prefix("preview: ")?.split_once(" resources would change: ")?;
    Some((n.parse().ok()?, list.split(", ").filter(|r| !r.is_empty()).map(str::to_owned).collect()))
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
    let (source_in, target_in, reason) =
        (field(&f, "source").trim(), field(&f, "target").trim(), field(&f, "reason").trim());
    // Either field takes the id or the number staff see; an unknown one
    // is said on the form, with what was typed kept.
    let (source, target) = match (ui.patient_id(source_in).await, ui.patient_id(target_in).await) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => return merge_form(&ui, source_in, target_in, reason, Some(&e)),
    };
    let preview = field(&f, "step") == "preview";
    if !preview {
        // The merge itself acts once: a reload or double click of the
        // confirmation leads to the merged chart.
        return ui
            .once(&f, || async {
                let r = Api::of(
                    merge::fhir_merge(&ui.svc, &ui.actor, Ok(merge_params(&source, &target, false, reason))).await,
                );
                if r.ok() {
                    Ok(format!("/ui/patients/{}?merged={}", enc(&target), enc(&source)))
                } else {
                    Err(Box::new(merge_form(&ui, source_in, target_in, reason, Some(&ui.why(&r)))))
                }
            })
            .await;
    }
    let r = Api::of(merge::fhir_merge(&ui.svc, &ui.actor, Ok(merge_params(&source, &target, true, reason))).await);
    if !r.ok() {
        return merge_form(&ui, source_in, target_in, reason, Some(&ui.why(&r)));
    }
    let outcome = r.body["parameter"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "outcome"))
        .map(|p| p["resource"]["issue"][0]["diagnostics"].as_str().unwrap_or("").to_owned());
    let body = html! {
        @match preview_changes(outcome.as_deref().unwrap_or("")) {
            Some((n, refs)) => {
                (notice("info", &format!("{} {n} {}", ui.t("統合すると、次の", "Merging moves these"), ui.t("件の記録が統合先の患者に移ります。統合元は無効になります。", "records to the target patient; the source becomes inactive."))))
                ul { @for r in &refs { li { code { (r) } } } }
            }
            None => (notice("info", outcome.as_deref().unwrap_or(""))),
        }
        form.card method="post" action="/ui/merge" {
            (ui.csrf_field())
            input type="hidden" name="step" value="merge";
            input type="hidden" name="source" value=(source);
            input type="hidden" name="target" value=(target);
            input type="hidden" name="reason" value=(reason);
            p { button.danger type="submit" { (ui.t("この内容で統合する", "Merge")) } " " a href="/ui/provisional" { (ui.t("やめる", "Cancel")) } }
        }
    };
    ui.page(ui.t("統合の確認", "Confirm the merge"), body)
}
