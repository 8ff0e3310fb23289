//! Third-party apps in the UI: the list (and, for administrators,
//! registration and disabling), launching an app for a patient, and the
//! consent screen of the OAuth authorization (SMART App Launch).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, RawQuery};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use mamori_core::policy::{AppContext, Operation, ResourceScope};
use mamori_service::oauth::{self, AuthorizeError};
use mamori_service::records::enc;
use mamori_service::Services;
use serde_json::json;

use super::html::notice;
use super::{cmd, field, fields, form, html, Api, Ui};

pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/ui/apps", get(list_page).post(register_post))
        .route("/ui/apps/{id}/disable", post(disable_post))
        .route("/ui/apps/{id}/launch", post(launch_post))
        .route("/ui/apps/launched", get(launched))
        .route("/ui/apps/authorize", get(consent_page).post(consent_post))
}

/// What a scope means, for the consent screen.
fn describe(ui: &Ui, s: &str) -> String {
    match s {
        "openid" | "profile" => {
            ui.t("あなたが誰か（利用者名・表示名）", "Who you are (user name, display name)").into()
        }
        "fhirUser" => ui.t("あなたを表す FHIR リソース", "The FHIR resource that stands for you").into(),
        "launch" | "launch/patient" => ui.t("対象の患者（起動時の文脈）", "The patient (launch context)").into(),
        "offline_access" => ui
            .t("ログアウト後も継続して利用（リフレッシュトークン）", "Keep access after you log out (refresh token)")
            .into(),
        "online_access" => {
            ui.t("ログイン中の継続利用（リフレッシュトークン）", "Keep access while you work (refresh token)").into()
        }
        _ => match ResourceScope::parse(s) {
            Some(r) => {
                let what = r
                    .rtype
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_else(|| ui.t("すべての記録", "all records").into());
                let whose = match r.context {
                    AppContext::Patient => ui.t("選んだ患者の", "of the chosen patient"),
                    AppContext::User => ui.t("あなたが扱える範囲の", "that you may reach"),
                    AppContext::System => {
                        ui.t("サービスアカウントが扱える範囲の", "that its service account may reach")
                    }
                };
                let perms = s.rsplit('.').next().unwrap_or("");
                let verbs: Vec<&str> = match perms {
                    "read" => vec![ui.t("閲覧", "read"), ui.t("検索", "search")],
                    "write" => vec![ui.t("作成", "create"), ui.t("更新", "update"), ui.t("削除", "delete")],
                    "*" => vec![ui.t("すべての操作", "everything")],
                    p => p
                        .chars()
                        .map(|c| match c {
                            'c' => ui.t("作成", "create"),
                            'r' => ui.t("閲覧", "read"),
                            'u' => ui.t("更新", "update"),
                            'd' => ui.t("削除", "delete"),
                            _ => ui.t("検索", "search"),
                        })
                        .collect(),
                };
                match ui.lang {
                    super::Lang::Ja => format!("{whose}{what}（{}）", verbs.join("・")),
                    super::Lang::En => format!("{what} {whose} ({})", verbs.join(", ")),
                }
            }
            None => s.to_owned(),
        },
    }
}

async fn list_page(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let apps = Api::of(oauth::list(&ui.svc, &ui.actor).await);
    let kept = ui.flash_markup(&q);
    if !apps.ok() {
        return ui
            .page(ui.t("アプリ", "Apps"), html! { @if let Some(k) = &kept { (k) } (notice("error", &ui.why(&apps))) });
    }
    let patient = q.get("patient").cloned().unwrap_or_default();
    let admin = ui.may(Operation::AppManage);
    let body = html! {
        @if let Some(k) = &kept { (k) }
        p { (ui.t(
            "登録済みの外部アプリ（SMART on FHIR）。アプリはあなたの権限の範囲で、あなたが許可したスコープだけを使えます。",
            "Registered third-party apps (SMART on FHIR). An app can do only what you may, narrowed to the scopes you grant it."
        )) }
        @if !patient.is_empty() {
            (notice("info", &format!("{} {} {}", ui.t("この患者のためにアプリを起動します:", "Launching an app for"), ui.t("患者ID", "patient"), patient)))
        }
        table.stack {
            thead { tr { th { (ui.t("名称", "Name")) } th { "client_id" } th { (ui.t("許可できる最大スコープ", "Most it may be granted")) } th { (ui.t("種別", "Kind")) } th { (ui.t("状態", "State")) } th {} } }
            tbody {
                @for a in apps.body.as_array().into_iter().flatten() {
                    @let id = a["client_id"].as_str().unwrap_or("");
                    @let live = a["disabled"].is_null();
                    tr {
                        td { (a["name"].as_str().unwrap_or("")) }
                        td { code { (id) } }
                        td { code { (a["scope"].as_str().unwrap_or("")) } }
                        td { @if a["confidential"] == true { (ui.t("機密（シークレットあり）", "Confidential")) } @else { (ui.t("公開（PKCE のみ）", "Public (PKCE)")) } }
                        td { @if live { (ui.t("有効", "Enabled")) } @else { (ui.t("無効", "Disabled")) } }
                        td {
                            @if live && !patient.is_empty() && a["launch_url"].is_string() {
                                form.inline method="post" action={ "/ui/apps/" (enc(id)) "/launch" } {
                                    (ui.csrf_field())
                                    input type="hidden" name="patient" value=(patient);
                                    button type="submit" { (ui.t("起動", "Launch")) }
                                }
                            }
                            @if live && admin {
                                form.inline method="post" action={ "/ui/apps/" (enc(id)) "/disable" } data-confirm=(ui.t("このアプリを無効にし、発行済みのトークンをすべて失効させます。よろしいですか？", "Disable this app and revoke all its tokens?")) {
                                    (ui.csrf_field())
                                    button.danger type="submit" { (ui.t("無効化（全トークン失効）", "Disable (revokes its tokens)")) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if admin {
            section.card {
                h2 { (ui.t("アプリの登録", "Register an app")) }
                form method="post" action="/ui/apps" {
                    (ui.csrf_field())
                    label { (ui.t("名称", "Name")) " " input name="name" required maxlength="200"; }
                    label { "client_id (" (ui.t("省略時は自動採番", "generated if empty")) ") " input name="client_id" maxlength="64" pattern="[A-Za-z0-9._-]{3,64}"; }
                    label { (ui.t("リダイレクト URI（1 行に 1 つ、https）", "Redirect URIs (one per line, https)")) " " textarea name="redirect_uris" rows="2" required {} }
                    label { (ui.t("起動 URL（EHR 起動用、任意）", "Launch URL (EHR launch, optional)")) " " input name="launch_url" type="url"; }
                    label { (ui.t("許可できる最大スコープ", "Most it may be granted (scopes)")) " " input name="scope" required value="launch launch/patient openid fhirUser offline_access patient/*.rs"; }
                    label { input type="checkbox" name="confidential" value="1"; " " (ui.t("機密クライアント（サーバー上のアプリ。シークレットを発行）", "Confidential client (a server; gets a secret)")) }
                    button type="submit" { (ui.t("登録", "Register")) }
                }
            }
        }
    };
    ui.page(ui.t("アプリ", "Apps"), body)
}

async fn register_post(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let uris: Vec<String> =
        field(&f, "redirect_uris").lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    let opt = |k: &str| Some(field(&f, k).trim().to_owned()).filter(|v| !v.is_empty());
    let req = json!({
        "client_id": opt("client_id"),
        "name": field(&f, "name"),
        "redirect_uris": uris,
        "launch_url": opt("launch_url"),
        "confidential": !fields(&f, "confidential").is_empty(),
        "scope": field(&f, "scope"),
    });
    ui.once(&f, || async {
        let r = match cmd(req) {
            Ok(req) => oauth::register(&ui.svc, &ui.actor, req).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(reg) => {
                let shown = html! {
                    (notice("ok", ui.t("登録しました。", "Registered.")))
                    p { "client_id: " code { (reg.client_id) } }
                    @if let Some(s) = &reg.client_secret {
                        p { "client_secret: " code { (s) } }
                        (notice("info", ui.t("シークレットは今回だけ表示されます。アプリの管理者に安全な方法で渡してください。", "The secret is shown this once: give it to the app's administrator securely.")))
                    }
                };
                ui.flash_markup_to("/ui/apps", shown)
            }
            Err(e) => Err(Box::new(ui.page(ui.t("アプリ", "Apps"), notice("error", &ui.why_err(&e))))),
        }
    })
    .await
}

async fn disable_post(ui: Ui, Path(id): Path<String>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    ui.once(&f, || async {
        match oauth::disable(&ui.svc, &ui.actor, &id).await {
            Ok(n) => ui.flash_markup_to(
                "/ui/apps",
                notice(
                    "ok",
                    &format!(
                        "{} {id}: {n} {}",
                        ui.t("無効化しました", "Disabled"),
                        ui.t("件のトークンを失効", "tokens revoked")
                    ),
                ),
            ),
            Err(e) => Err(Box::new(ui.page(ui.t("アプリ", "Apps"), notice("error", &ui.why_err(&e))))),
        }
    })
    .await
}

async fn launch_post(ui: Ui, Path(id): Path<String>, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let patient = field(&f, "patient").to_owned();
    ui.once(&f, || async {
        match oauth::launch(&ui.svc, &ui.actor, &id, &patient).await {
            // The link is opened by the user from our page: the chart's
            // forms post only to this server (CSP form-action 'self').
            Ok(url) => ui.flash_to("/ui/apps/launched", url),
            Err(e) => Err(Box::new(ui.page(ui.t("アプリの起動", "Launch an app"), notice("error", &ui.why_err(&e))))),
        }
    })
    .await
}

async fn launched(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(url) = ui.flash(&q) else {
        return ui.page(
            ui.t("アプリの起動", "Launch an app"),
            notice(
                "info",
                ui.t(
                    "この起動リンクは表示済みです。もう一度起動してください。",
                    "This launch link was shown already; launch the app again.",
                ),
            ),
        );
    };
    ui.page(
        ui.t("アプリの起動", "Launch an app"),
        html! {
            p { (ui.t("起動の準備ができました（5 分間有効、1 回限り）。", "The launch is ready (valid for 5 minutes, once).")) }
            p { a.button href=(url) rel="noopener noreferrer" { (ui.t("アプリを開く", "Open the app")) } }
        },
    )
}

fn pairs_of(q: &str) -> Vec<(String, String)> {
    mamori_service::records::parse_pairs(q).unwrap_or_default()
}

/// The consent screen's own Content-Security-Policy: its form may lead
/// only to this server and to the app's registered redirect URI.
fn with_csp(mut r: Response, redirect_uri: &str) -> Response {
    let origin: String = {
        let scheme_end = redirect_uri.find("://").map(|i| i + 3).unwrap_or(0);
        let rest = &redirect_uri[scheme_end..];
        let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
        format!("{}{}", &redirect_uri[..scheme_end], &rest[..host_end])
    };
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self' {origin}; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(HeaderName::from_static("content-security-policy"), v);
    }
    r
}

async fn consent_page(ui: Ui, RawQuery(q): RawQuery) -> Response {
    let params = pairs_of(&q.unwrap_or_default());
    let c = match oauth::begin(&ui.svc, &ui.actor, params).await {
        Ok(c) => c,
        Err(AuthorizeError::Redirect(to)) => return axum::response::Redirect::to(&to).into_response(),
        Err(AuthorizeError::Page(e)) => {
            let status = axum::http::StatusCode::from_u16(e.status()).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
            return (status, ui.page(ui.t("アプリの認可", "Authorize an app"), notice("error", &ui.why_err(&e))))
                .into_response();
        }
    };
    let body = html! {
        section.card {
            h2 { (c.client.name) }
            p { (ui.t("このアプリが、あなたの権限で次のことを求めています:", "This app asks to act for you with:")) }
            ul { @for s in &c.scope.granted { li { (describe(&ui, s)) " " code { (s) } } } }
            @if !c.scope.refused.is_empty() {
                p.muted { (ui.t("許可されないスコープ（アプリには伝えます）:", "Not granted (the app is told):")) " " code { (c.scope.refused.join(" ")) } }
            }
            p.muted { (ui.t(
                "アプリはあなたに許されたこと以上はできません。すべての利用は監査ログに記録されます。許可はいつでも管理者が取り消せます。",
                "The app can never do more than you may. Everything it does is in the audit log. An administrator can revoke it at any time."
            )) }
            form method="post" action="/ui/apps/authorize" {
                (ui.csrf_field())
                @for (k, v) in &c.params { input type="hidden" name={ "q_" (k) } value=(v); }
                @match (&c.launch_patient, c.needs_patient) {
                    (Some(p), _) => p { (ui.t("対象患者:", "Patient:")) " " strong { (ui.t("患者ID", "patient")) " " (p) } },
                    (None, true) => label { (ui.t("対象患者（患者 ID または診察券番号）", "The patient (patient id or medical record number)")) " " input name="patient" required autocomplete="off"; },
                    (None, false) => {},
                }
                button type="submit" name="decision" value="allow" { (ui.t("許可する", "Allow")) }
                " "
                button type="submit" name="decision" value="deny" formnovalidate { (ui.t("拒否する", "Deny")) }
            }
        }
    };
    let uri = c.params.iter().find(|(k, _)| k == "redirect_uri").map(|(_, v)| v.clone()).unwrap_or_default();
    with_csp(ui.page(ui.t("アプリの認可", "Authorize an app"), body), &uri)
}

async fn consent_post(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let params: Vec<(String, String)> =
        f.iter().filter_map(|(k, v)| k.strip_prefix("q_").map(|k| (k.to_owned(), v.clone()))).collect();
    let uri = params.iter().find(|(k, _)| k == "redirect_uri").map(|(_, v)| v.clone()).unwrap_or_default();
    let answer = oauth::Answer {
        allow: field(&f, "decision") == "allow",
        patient: Some(field(&f, "patient").to_owned()).filter(|p| !p.trim().is_empty()),
    };
    let r = ui
        .once(&f, || async {
            match oauth::answer(&ui.svc, &ui.actor, params, answer).await {
                Ok(to) | Err(AuthorizeError::Redirect(to)) => Ok(to),
                Err(AuthorizeError::Page(e)) => {
                    let status =
                        axum::http::StatusCode::from_u16(e.status()).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
                    Err(Box::new(
                        (status, ui.page(ui.t("アプリの認可", "Authorize an app"), notice("error", &ui.why_err(&e))))
                            .into_response(),
                    ))
                }
            }
        })
        .await;
    with_csp(r, &uri)
}
