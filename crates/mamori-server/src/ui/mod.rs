//! The web UI (Japanese first, English selectable): server-rendered pages
//! with a small script of our own for the live mode banner and countdowns.
//! No CDN, no inline script or style (strict Content-Security-Policy).
//!
//! A page handler calls the same use cases as the HTTP API
//! (`mamori-service`), as the user of the session cookie, so the same
//! policy decides and the same audit events are written. What a screen
//! offers is the policy's preview ([`Ui::may`]), never a role check of
//! its own. Forms carry a CSRF token checked against an HttpOnly,
//! SameSite=Strict cookie; a form that changes something answers with a
//! redirect.

pub(crate) mod admin;
pub(crate) mod apps;
pub(crate) mod audit;
pub(crate) mod bcp;
pub(crate) mod care;
pub(crate) mod codes;
pub(crate) mod compliance;
pub(crate) mod exchange;
pub(crate) mod html;
pub(crate) mod records;

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use mamori_core::policy::{Facts, Operation};
use mamori_service::{accounts, forms, Actor, Audited, ServiceError, Services};
use mamori_store::records::Version;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::http::{ctx_of, session_cookie};
pub(crate) use html::{html, Lang, Markup};

pub(crate) const CSRF_COOKIE: &str = "mamori_csrf";
pub(crate) const LANG_COOKIE: &str = "mamori_lang";

pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/static/app.css",
            get(|| async { static_file("text/css; charset=utf-8", include_str!("static/app.css")) }),
        )
        .route(
            "/ui/static/app.js",
            get(|| async { static_file("text/javascript; charset=utf-8", include_str!("static/app.js")) }),
        )
        .route("/ui/login", get(care::login_page).post(care::login_post))
        .route("/ui/emergency-login", get(care::emergency_page).post(care::emergency_post))
        .route("/ui/password", get(care::password_page).post(care::password_post))
        .route("/ui/logout", post(care::logout))
        .route("/ui/lang", get(lang_switch))
        .route("/ui/", get(care::home))
        .route("/ui/patients", get(care::search))
        .route("/ui/patients/{id}", get(care::chart))
        .route("/ui/patients/{id}/break-glass", post(care::break_glass))
        .route("/ui/patients/{id}/documents/{doc}", get(care::document))
        .route("/ui/patients/{id}/documents/{doc}/content/{n}", get(care::document_content))
        .route("/ui/register", get(care::register_page).post(care::register_post))
        .route("/ui/provisional", get(care::provisional))
        .route("/ui/merge", get(care::merge_page).post(care::merge_post))
        .merge(bcp::routes())
        .merge(audit::routes())
        .merge(compliance::routes())
        .merge(exchange::routes())
        .merge(admin::routes())
        .merge(apps::routes())
        .merge(records::routes())
        .route("/ui/{*rest}", get(not_found))
}

/// An unknown address under `/ui/`: a page in the user's language with a
/// way back, not the API's JSON.
async fn not_found(ui: Ui) -> Response {
    let mut r = ui.page(
        ui.t("ページが見つかりません", "Page not found"),
        html! {
            (html::notice(
                "error",
                ui.t(
                    "このアドレスのページはありません。メニューから選んでください。",
                    "There is no page at this address; choose one from the menu."
                )
            ))
            p { a href="/ui/" { (ui.t("ホームへ戻る", "Back to the home page")) } }
        },
    );
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

fn static_file(ct: &'static str, body: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    r
}

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

pub(crate) fn set_cookie(name: &str, value: &str, max_age: Option<i64>) -> HeaderValue {
    let age = max_age.map(|a| format!("; Max-Age={a}")).unwrap_or_default();
    HeaderValue::from_str(&format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}"))
        .unwrap_or(HeaderValue::from_static(""))
}

/// The UI language: the cookie, else Accept-Language, else Japanese.
pub(crate) fn lang_of(headers: &HeaderMap) -> Lang {
    match cookie(headers, LANG_COOKIE).as_deref() {
        Some("en") => return Lang::En,
        Some("ja") => return Lang::Ja,
        _ => {}
    }
    let al = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or("");
    match al.split(',').next().map(|s| s.trim().to_ascii_lowercase()) {
        Some(s) if s.starts_with("en") => Lang::En,
        _ => Lang::Ja,
    }
}

async fn lang_switch(axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>) -> Response {
    let to = if q.get("to").map(String::as_str) == Some("en") { "en" } else { "ja" };
    // A control character (CR/LF) would split the Location header: the
    // request is refused rather than redirected anywhere.
    if q.get("back").is_some_and(|b| b.chars().any(char::is_control)) {
        return (StatusCode::BAD_REQUEST, "back: a path without control characters / 戻り先が不正です").into_response();
    }
    let back =
        q.get("back").filter(|b| b.starts_with("/ui/") && !b.contains("//")).cloned().unwrap_or_else(|| "/ui/".into());
    let mut r = Redirect::to(&back).into_response();
    r.headers_mut().append(header::SET_COOKIE, set_cookie(LANG_COOKIE, to, Some(365 * 86_400)));
    r
}

/// A new CSRF token.
pub(crate) fn new_csrf() -> String {
    mamori_audit::merkle::to_hex(&mamori_store::accounts::random_bytes::<16>().unwrap_or_default())
}

/// Parses an `application/x-www-form-urlencoded` body.
pub(crate) async fn form(body: Body) -> Vec<(String, String)> {
    let bytes = axum::body::to_bytes(body, 8 << 20).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn field<'a>(f: &'a [(String, String)], k: &str) -> &'a str {
    f.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str()).unwrap_or("")
}

pub(crate) fn fields<'a>(f: &'a [(String, String)], k: &str) -> Vec<&'a str> {
    f.iter().filter(|(a, _)| a == k).map(|(_, v)| v.as_str()).collect()
}

/// A use case's answer as a page sees it: a status and a JSON view of
/// the value (or `{"error", "message"}`).
pub(crate) struct Api {
    pub status: u16,
    pub body: Value,
}

impl Api {
    /// The view of a use case's result.
    pub(crate) fn of<T: Serialize>(r: Result<T, ServiceError>) -> Api {
        match r {
            Ok(v) => Api { status: 200, body: serde_json::to_value(v).unwrap_or(Value::Null) },
            Err(e) => Api::err(&e),
        }
    }
    /// The view of a read of patient data (audited before it is shown).
    pub(crate) fn audited<T: Serialize>(r: Result<Audited<T>, ServiceError>) -> Api {
        Api::of(r.map(Audited::into_inner))
    }
    /// The view of a stored resource read (its JSON).
    pub(crate) fn resource(r: Result<Audited<Version>, ServiceError>) -> Api {
        match r {
            Ok(v) => Api { status: 200, body: serde_json::from_str(&v.into_inner().body).unwrap_or(Value::Null) },
            Err(e) => Api::err(&e),
        }
    }
    fn err(e: &ServiceError) -> Api {
        if matches!(e, ServiceError::Internal { .. } | ServiceError::Unavailable(_)) {
            tracing::error!(error = %e, "a page's use case failed");
        }
        Api {
            status: e.status(),
            body: json!({"error": e.code(), "message": e.message(), "basis": e.basis().map(|b| b.as_str())}),
        }
    }
    pub(crate) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// The explanation of a failure.
    pub(crate) fn message(&self) -> String {
        self.body
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }
}

/// A form turned into a use case's command (a malformed one is a 400).
pub(crate) fn cmd<T: DeserializeOwned>(v: Value) -> Result<T, ServiceError> {
    serde_json::from_value(v).map_err(|e| ServiceError::invalid("", format!("invalid form: {e}")))
}

/// Where a form's action leads the browser next, or the page that says
/// why nothing changed.
pub(crate) type Next = Result<String, Box<Response>>;

/// A logged-in user's page context.
pub(crate) struct Ui {
    pub svc: Services,
    /// Who acts, authenticated by the session cookie.
    pub actor: Actor,
    pub lang: Lang,
    pub csrf: String,
    /// The account, as shown on pages.
    pub me: Value,
    pub path: String,
    set_csrf: bool,
}

impl Ui {
    pub(crate) fn t<'a>(&self, ja: &'a str, en: &'a str) -> &'a str {
        self.lang.t(ja, en)
    }
    /// Whether the policy would let this user do `op` (what a screen
    /// offers; the use case decides again, and audits, when it is done).
    /// A failed use case's answer, explained in the user's language.
    pub(crate) fn why(&self, r: &Api) -> String {
        codes::explain(self.lang, r.status, r.body["basis"].as_str(), &r.message())
    }
    /// A use case's error, explained in the user's language.
    pub(crate) fn why_err(&self, e: &ServiceError) -> String {
        codes::error_message(self.lang, e)
    }
    pub(crate) fn may(&self, op: Operation) -> bool {
        mamori_service::authz::decide(&self.actor, &op, Facts::default()).permit
    }
    /// Checks the CSRF field of a submitted form: `Some(refusal)` if it
    /// does not match the cookie.
    pub(crate) fn csrf_rejects(&self, f: &[(String, String)]) -> Option<Response> {
        if !self.csrf.is_empty() && field(f, "csrf") == self.csrf {
            None
        } else {
            Some((StatusCode::FORBIDDEN, "the form has expired; reload the page and try again / フォームの有効期限が切れました。再読み込みしてください").into_response())
        }
    }
    /// A complete page.
    pub(crate) fn page(&self, title: &str, body: Markup) -> Response {
        let mut r = html::layout(self, title, body).into_response();
        if self.set_csrf {
            r.headers_mut().append(header::SET_COOKIE, set_cookie(CSRF_COOKIE, &self.csrf, None));
        }
        r
    }
    /// The hidden fields every form carries: the CSRF token and a key of
    /// its own, new on each rendering, so that the form acts once
    /// ([`Ui::once`]).
    pub(crate) fn csrf_field(&self) -> Markup {
        html! {
            input type="hidden" name="csrf" value=(self.csrf);
            input type="hidden" name="form_key" value=(new_csrf());
        }
    }
    /// Runs a state-changing form's action once, then redirects (Post/
    /// Redirect/Get). `act` answers where the browser goes next, or the
    /// page that says why nothing changed. A repeated submission of the
    /// same form (reload, double click, back and resubmit) does not act
    /// again: it is sent where the first one led.
    pub(crate) async fn once<Fut>(&self, f: &[(String, String)], act: impl FnOnce() -> Fut) -> Response
    where
        Fut: std::future::Future<Output = Next>,
    {
        let key = field(f, "form_key");
        if key.is_empty() {
            // A form posted by a client that does not send keys.
            return match act().await {
                Ok(to) => Redirect::to(&to).into_response(),
                Err(page) => *page,
            };
        }
        match forms::claim(&self.svc, &self.actor, key).await {
            Err(e) => self.page(self.t("送信できませんでした", "Not submitted"), html::notice("error", &self.why_err(&e))),
            Ok(forms::Claim::Done(to)) => Redirect::to(&to).into_response(),
            Ok(forms::Claim::Running) => self.page(
                self.t("処理中です", "Already submitted"),
                html::notice(
                    "info",
                    self.t(
                        "このフォームは送信済みで、処理中です。二重に実行はしません。結果は一覧で確認してください。",
                        "This form was already submitted and is being processed; it is not done twice. See the result in the list.",
                    ),
                ),
            ),
            Ok(forms::Claim::Fresh) => match act().await {
                Ok(to) => {
                    if let Err(e) = forms::settle(&self.svc, &self.actor, key, &to).await {
                        tracing::warn!(error = %e, "could not record a form's result; a resubmission will show 'already submitted'");
                    }
                    Redirect::to(&to).into_response()
                }
                Err(page) => {
                    if let Err(e) = forms::release(&self.svc, &self.actor, key).await {
                        tracing::warn!(error = %e, "could not release a failed form's key");
                    }
                    *page
                }
            },
        }
    }
    /// The internal id of the patient a person means by `input`: the id
    /// itself, or the medical record number (or provisional id) staff see
    /// on a chart or wristband. Each lookup is an audited search. None or
    /// several is a message in the user's language, never an empty answer.
    pub(crate) async fn patient_id(&self, input: &str) -> Result<String, String> {
        let t = input.trim();
        let t = t.strip_prefix("Patient/").unwrap_or(t);
        if t.is_empty() {
            return Err(self
                .t("患者IDまたはカルテ番号を入力してください。", "Give a patient id or record number.")
                .into());
        }
        let mut tries = Vec::new();
        if t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            tries.push(vec![("_id".to_owned(), t.to_owned())]);
        }
        tries.push(vec![("identifier".to_owned(), t.to_owned()), ("_count".to_owned(), "2".to_owned())]);
        for q in tries {
            let found = mamori_service::records::read::search(&self.svc, &self.actor, "Patient", q, false)
                .await
                .map(|f| f.into_inner().page.entries.iter().map(|v| v.id.clone()).collect::<Vec<_>>());
            match found.as_deref() {
                Ok([one]) => return Ok(one.clone()),
                Ok([]) => {}
                Ok(_) => {
                    return Err(self
                        .t(
                            "このカルテ番号の患者が複数います。患者IDで指定してください。",
                            "Several patients have this record number; give the patient id.",
                        )
                        .into())
                }
                // A role that may not search patients (an administrator
                // assigning care) gives the id itself; the use case decides.
                Err(e) if e.status() == 403 && mamori_core::ids::is_fhir_id(t) => return Ok(t.to_owned()),
                Err(e) => return Err(codes::error_message(self.lang, e)),
            }
        }
        Err(format!(
            "{} ({t})",
            self.t("その患者IDまたはカルテ番号の患者はいません。", "No patient has this id or record number.")
        ))
    }
    /// Keeps a text to be shown once (a launch link) for the page at
    /// `to`, and answers `to` with the flash's id.
    pub(crate) fn flash_to(&self, to: &str, content: String) -> Next {
        self.keep(to, plain(content))
    }
    /// Keeps a result to be shown once (a one-time password) for the page
    /// at `to`: markup made by a template now, shown as it is then.
    pub(crate) fn flash_markup_to(&self, to: &str, content: Markup) -> Next {
        self.keep(to, format!("{MARKUP_FLASH}{}", content.into_string()))
    }
    fn keep(&self, to: &str, content: String) -> Next {
        match self.svc.flash.put(self.actor.name(), content) {
            Ok(id) => Ok(format!("{to}{}flash={id}", if to.contains('?') { '&' } else { '?' })),
            Err(e) => Err(Box::new(
                self.page(self.t("表示できません", "Cannot show"), html::notice("error", &self.why_err(&e))),
            )),
        }
    }
    /// The text kept for this page, once.
    pub(crate) fn flash(&self, q: &HashMap<String, String>) -> Option<String> {
        q.get("flash")
            .and_then(|id| self.svc.flash.take(self.actor.name(), id))
            .filter(|c| !c.starts_with(MARKUP_FLASH))
    }
    /// The markup kept for this page by [`Ui::flash_markup_to`], once.
    pub(crate) fn flash_markup(&self, q: &HashMap<String, String>) -> Option<Markup> {
        let kept = q.get("flash").and_then(|id| self.svc.flash.take(self.actor.name(), id))?;
        kept.strip_prefix(MARKUP_FLASH).map(|m| html::kept_markup(m.to_owned()))
    }
}

/// A text kept for a page, never able to pass for kept markup, whatever
/// it starts with.
fn plain(mut text: String) -> String {
    while let Some(rest) = text.strip_prefix(MARKUP_FLASH) {
        text = rest.to_owned();
    }
    text
}

/// Marks a flash that holds markup rendered by a template (escaped when it
/// was made), as opposed to a text that a page escapes when it shows it.
const MARKUP_FLASH: &str = "\u{1}markup\u{1}";

/// Redirects to the login page when there is no valid session.
pub(crate) struct LoginFirst(Response);

impl IntoResponse for LoginFirst {
    fn into_response(self) -> Response {
        self.0
    }
}

impl FromRequestParts<Services> for Ui {
    type Rejection = LoginFirst;

    async fn from_request_parts(parts: &mut Parts, svc: &Services) -> Result<Self, Self::Rejection> {
        let lang = lang_of(&parts.headers);
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/ui/".into());
        let to_login = || {
            let next = if parts.method == Method::GET {
                format!("?next={}", mamori_service::records::enc(&path))
            } else {
                String::new()
            };
            LoginFirst(Redirect::to(&format!("/ui/login{next}")).into_response())
        };
        let Some(token) = session_cookie(&parts.headers) else { return Err(to_login()) };
        let Ok(actor) = accounts::authenticate(svc, token, ctx_of(parts, svc)).await else {
            return Err(to_login());
        };
        if actor.user.must_change && !parts.uri.path().starts_with("/ui/password") && parts.uri.path() != "/ui/logout" {
            return Err(LoginFirst(Redirect::to("/ui/password").into_response()));
        }
        let existing = cookie(&parts.headers, CSRF_COOKIE);
        let set_csrf = existing.is_none();
        let me = serde_json::to_value(accounts::describe(&actor)).unwrap_or(Value::Null);
        Ok(Ui { svc: svc.clone(), actor, lang, csrf: existing.unwrap_or_else(new_csrf), me, path, set_csrf })
    }
}

/// The user's display name from `/api/v1/auth/me`.
pub(crate) fn who(me: &Value) -> String {
    me["display"].as_str().or_else(|| me["name"].as_str()).unwrap_or("").to_owned()
}

/// Sets the UI's security headers (strict CSP).
pub(crate) async fn security_headers(req: Request, next: axum::middleware::Next) -> Response {
    let is_ui = req.uri().path().starts_with("/ui") || req.uri().path() == "/";
    let mut r = next.run(req).await;
    if is_ui {
        let h = r.headers_mut();
        // A page may set a narrower policy of its own (the consent screen
        // lets its form lead to the app's redirect URI).
        if h.contains_key("content-security-policy") {
            return r;
        }
        h.insert(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_text_never_passes_for_markup() {
        let forged = format!("{MARKUP_FLASH}{MARKUP_FLASH}forged markup");
        assert!(!plain(forged).starts_with(MARKUP_FLASH));
        assert_eq!(plain("https://app.example/launch?iss=x".into()), "https://app.example/launch?iss=x");
    }
}
