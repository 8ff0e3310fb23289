//! HTML building with [maud](https://maud.lambda.xyz/): every page is a
//! compile-time template, and every value spliced into one is escaped
//! unless it is itself [`Markup`] made by a template. There is no way to
//! put a string into a page unescaped short of `PreEscaped`, which no
//! page uses (`tests/ui_templates.rs` checks the sources).
//!
//! Why maud rather than askama: templates are Rust expressions beside the
//! handler that fills them (no second file to keep in step, no template
//! inheritance to learn), type-checked by the compiler, and the crate is
//! small (two crates on top of `syn`, which the build has anyway).

use axum::response::Html;
pub(crate) use maud::{html, Markup};
use serde_json::Value;

use mamori_core::policy::Operation;

use super::Ui;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Ja,
    En,
}

impl Lang {
    pub(crate) fn t<'a>(self, ja: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Ja => ja,
            Lang::En => en,
        }
    }
    pub(crate) fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }
}

/// The text of a JSON value for a page (strings unquoted; escaped when
/// spliced into a template).
pub(crate) fn tx(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A phase's name for people.
pub(crate) fn phase_label(lang: Lang, phase: &str) -> &'static str {
    match phase {
        "activation" => lang.t("初動", "activation"),
        "resumption" => lang.t("業務再開", "resumption"),
        "recovery" => lang.t("業務回復", "recovery"),
        "full_recovery" => lang.t("全面復旧", "full recovery"),
        _ => "",
    }
}

/// The mode banner's class and text.
pub(crate) fn mode_banner(lang: Lang, mode: &str) -> (String, String) {
    let phase = phase_label(lang, mode.split("phase=").nth(1).unwrap_or("").split(';').next().unwrap_or("").trim());
    if mode.starts_with("drill") {
        (
            "banner drill".into(),
            format!(
                "{} — {} {}",
                lang.t("訓練中（実際の非常時ではありません）", "DRILL (not a real emergency)"),
                lang.t("フェーズ", "phase"),
                phase
            ),
        )
    } else if mode.starts_with("emergency") {
        (
            "banner emergency".into(),
            format!("{} — {} {}", lang.t("非常時運用中", "EMERGENCY OPERATION"), lang.t("フェーズ", "phase"), phase),
        )
    } else {
        ("banner normal".into(), lang.t("通常運用", "Normal operation").to_owned())
    }
}

fn nav(ui: &Ui) -> Markup {
    let mut links: Vec<(&str, &str)> = vec![("/ui/", ui.t("ホーム", "Home"))];
    if ui.may(Operation::ProvisionalRead) {
        links.push(("/ui/patients", ui.t("患者検索", "Patients")));
        links.push(("/ui/register", ui.t("緊急登録", "Emergency registration")));
        links.push(("/ui/provisional", ui.t("仮登録患者", "Provisional patients")));
    }
    if ui.may(Operation::NotificationRead) {
        links.push(("/ui/bcp", ui.t("BCPコンソール", "BCP console")));
    }
    if ui.may(Operation::AuditRead) {
        links.push(("/ui/audit", ui.t("監査", "Audit")));
    }
    if ui.may(Operation::ComplianceReport) {
        links.push(("/ui/compliance", ui.t("準拠状況", "Compliance")));
    }
    if ui.may(Operation::ExchangeSend) || ui.may(Operation::ExchangeMessageReadAll) || ui.may(Operation::InboundRead) {
        links.push(("/ui/exchange", ui.t("情報交換", "Exchange")));
    }
    if ui.may(Operation::UserRead) {
        links.push(("/ui/admin", ui.t("管理", "Administration")));
    }
    if ui.may(Operation::AppUse) {
        links.push(("/ui/apps", ui.t("アプリ", "Apps")));
    }
    let here = ui.path.split('?').next();
    html! {
        @for (href, label) in links {
            a href=(href) aria-current=[(here == Some(href)).then_some("page")] { (label) }
        }
    }
}

/// The whole page around `body`.
pub(crate) fn layout(ui: &Ui, title: &str, body: Markup) -> Html<String> {
    let mode = ui.me["mode"].as_str().unwrap_or("normal");
    let (cls, text) = mode_banner(ui.lang, mode);
    let other = if ui.lang == Lang::Ja { ("en", "English") } else { ("ja", "日本語") };
    let roles =
        ui.actor.user.roles.iter().map(|r| super::codes::role(ui.lang, r.as_str())).collect::<Vec<_>>().join("、");
    let back = mamori_service::records::enc(&ui.path);
    Html(
        html! {
            (maud::DOCTYPE)
            html lang=(ui.lang.code()) {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " — mamori" }
                    link rel="stylesheet" href="/ui/static/app.css";
                    script src="/ui/static/app.js" defer {}
                }
                body data-lang=(ui.lang.code()) data-mode=(mode) {
                    div #mode-banner class=(cls) role="status" aria-live="assertive" { span #mode-text { (text) } }
                    div #announcements aria-live="polite" {}
                    header {
                        span.brand { "守り mamori" }
                        nav { (nav(ui)) }
                        span.user {
                            (super::who(&ui.me)) " (" (roles) ")"
                            @if let Some(d) = ui.me["declared"].as_str() {
                                " — " (ui.t("本人:", "acting person:")) " " (d)
                            }
                        }
                        a.lang href={ "/ui/lang?to=" (other.0) "&back=" (back) } { (other.1) }
                        form.inline method="post" action="/ui/logout" {
                            (ui.csrf_field())
                            button type="submit" { (ui.t("ログアウト", "Log out")) }
                        }
                    }
                    main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

/// A page for people not logged in (login, emergency login).
pub(crate) fn bare(lang: Lang, title: &str, mode: &str, body: Markup) -> Html<String> {
    let (cls, text) = mode_banner(lang, mode);
    let other = if lang == Lang::Ja { ("en", "English") } else { ("ja", "日本語") };
    Html(
        html! {
            (maud::DOCTYPE)
            html lang=(lang.code()) {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " — mamori" }
                    link rel="stylesheet" href="/ui/static/app.css";
                }
                body {
                    div #mode-banner class=(cls) role="status" { span #mode-text { (text) } }
                    header {
                        span.brand { "守り mamori" }
                        a.lang href={ "/ui/lang?to=" (other.0) "&back=/ui/login" } { (other.1) }
                    }
                    main.narrow { h1 { (title) } (body) }
                }
            }
        }
        .into_string(),
    )
}

/// A section's tab bar; the current page is marked for screen readers and
/// styling. Tabs are not printed (reports print without them).
pub(crate) fn tabs(ui: &Ui, items: &[(&str, &str)]) -> Markup {
    let here = ui.path.split('?').next();
    html! {
        nav.tabs.noprint {
            @for (h, l) in items {
                a href=(h) aria-current=[(here == Some(*h)).then_some("page")] { (l) }
            }
        }
    }
}

/// An error or notice box.
/// An explanation with a technical detail ([`super::codes::explain`])
/// shows the detail folded, so the page reads in Japanese first.
pub(crate) fn notice(kind: &str, text: &str) -> Markup {
    use super::codes::{DETAIL_CLOSE, DETAIL_OPEN};
    let split = text
        .strip_suffix(DETAIL_CLOSE)
        .and_then(|t| t.split_once(DETAIL_OPEN))
        .filter(|(summary, _)| !summary.is_empty());
    match split {
        Some((summary, detail)) => html! {
            div class={ "notice " (kind) } role="alert" {
                p { (summary) }
                details.detail { summary { "技術的な詳細" } code { (detail) } }
            }
        },
        None => html! { p class={ "notice " (kind) } role="alert" { (text) } },
    }
}

/// A date-time for people (local time of the institution, minutes).
pub(crate) fn when(v: &Value, offset_min: i64) -> String {
    let s = v.as_str().unwrap_or("");
    let parsed = match v.as_i64() {
        Some(micros) => Some(mamori_core::time::Timestamp(micros)),
        None => mamori_core::time::Timestamp::parse_rfc3339(s),
    };
    match parsed {
        Some(t) => {
            let local = mamori_core::time::Timestamp(t.micros() + offset_min * 60_000_000);
            let (y, m, d) = local.ymd();
            let secs = local.secs().rem_euclid(86_400);
            format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", secs / 3600, secs % 3600 / 60)
        }
        None => s.to_owned(),
    }
}

/// A value as a trend labels it: integers without decimals, others
/// with what they need (up to two places).
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A date (local, month and day) for a trend's axis.
fn md(micros: i64, offset_min: i64) -> String {
    let (_, m, d) = mamori_core::time::Timestamp(micros + offset_min * 60_000_000).ymd();
    format!("{m}/{d}")
}

/// A line chart of numeric values in time order (SVG, no script), with
/// its scale: the lowest and highest value on the vertical axis, the
/// first and last date on the horizontal one, each point's value and time
/// as its tooltip, and the latest value written beside the line.
pub(crate) fn trend(points: &[(i64, f64)], unit: &str, offset_min: i64) -> Markup {
    let Some(last) = points.last().copied() else { return html! {} };
    let (w, h, left, right, top, bottom) = (320.0, 96.0, 44.0, 56.0, 8.0, 18.0);
    let (t0, t1) = (points[0].0 as f64, last.0 as f64);
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let sx = |t: f64| if t1 > t0 { left + (t - t0) / (t1 - t0) * (w - left - right) } else { (w - right + left) / 2.0 };
    let sy = |v: f64| {
        if hi > lo {
            h - bottom - (v - lo) / (hi - lo) * (h - top - bottom)
        } else {
            (h - bottom + top) / 2.0
        }
    };
    let f1 = |v: f64| format!("{v:.1}");
    let pts: Vec<String> = points.iter().map(|(t, v)| format!("{:.1},{:.1}", sx(*t as f64), sy(*v))).collect();
    let label = format!("{} {} → {} {}", num(points[0].1), unit, num(last.1), unit);
    html! {
        svg.trend viewBox={ "0 0 " (w) " " (h) } role="img" aria-label=(label) {
            line x1=(left) y1=(top) x2=(left) y2=(h - bottom) stroke="#888" {}
            line x1=(left) y1=(h - bottom) x2=(w - right) y2=(h - bottom) stroke="#888" {}
            text x=(left - 4.0) y=(f1(sy(hi) + 4.0)) text-anchor="end" font-size="11" { (num(hi)) }
            @if hi > lo { text x=(left - 4.0) y=(f1(sy(lo) + 4.0)) text-anchor="end" font-size="11" { (num(lo)) } }
            text x=(left) y=(h - 4.0) font-size="11" { (md(points[0].0, offset_min)) }
            @if points.len() > 1 { text x=(w - right) y=(h - 4.0) text-anchor="end" font-size="11" { (md(last.0, offset_min)) } }
            @if points.len() > 1 { polyline fill="none" stroke="#1f5fa8" stroke-width="2" points=(pts.join(" ")) {} }
            @for (t, v) in points {
                circle cx=(f1(sx(*t as f64))) cy=(f1(sy(*v))) r="3" fill="#1f5fa8" {
                    title { (when(&Value::from(*t), offset_min)) " " (num(*v)) " " (unit) }
                }
            }
            text x=(f1(sx(last.0 as f64) + 6.0)) y=(f1(sy(last.1) + 4.0)) font-size="12" font-weight="bold" { (num(last.1)) }
        }
    }
}

/// Bars per day (SVG): total, with denials and break-glass highlighted;
/// the vertical axis says its scale (0 and the highest day, in `unit`),
/// the horizontal one the dates (every seventh day), and each bar its
/// day and counts as a tooltip.
pub(crate) fn day_bars(days: &[Value], unit: &str) -> Markup {
    if days.is_empty() {
        return html! {};
    }
    let max = days.iter().filter_map(|d| d["total"].as_u64()).max().unwrap_or(1).max(1) as f64;
    let (bw, left, top, bottom) = (18.0, 40.0, 10.0, 22.0);
    let h = 150.0;
    let w = left + bw * days.len() as f64 + 10.0;
    let plot = h - top - bottom;
    let base = h - bottom;
    let f1 = |v: f64| format!("{v:.1}");
    let f0 = |v: f64| format!("{v:.0}");
    let md = |d: &Value| {
        let s = d["day"].as_str().unwrap_or("");
        s.get(5..).map(|x| x.replacen('-', "/", 1)).unwrap_or_default()
    };
    html! {
        svg.bars viewBox={ "0 0 " (f0(w)) " " (f0(h)) } role="img" aria-label={ "0–" (max) " " (unit) } {
            line x1=(left - 2.0) y1=(top) x2=(left - 2.0) y2=(base) stroke="#888" {}
            line x1=(left - 2.0) y1=(base) x2=(w - 5.0) y2=(base) stroke="#888" {}
            text x=(left - 6.0) y=(top + 4.0) text-anchor="end" font-size="11" { (max) }
            text x=(left - 6.0) y=(base) text-anchor="end" font-size="11" { "0" }
            @for (i, d) in days.iter().enumerate() {
                @let x = left + i as f64 * bw;
                @let total = d["total"].as_u64().unwrap_or(0);
                @let denied = d["denied"].as_u64().unwrap_or(0);
                @let bg = d["break_glass"].as_u64().unwrap_or(0);
                @let th = total as f64 / max * plot;
                @let dh = denied as f64 / max * plot;
                @let bh = bg as f64 / max * plot;
                g {
                    title { (tx(&d["day"])) ": " (total) " " (unit) " (" (denied) " / " (bg) ")" }
                    rect x=(f0(x)) y=(f1(base - th)) width=(f0(bw - 4.0)) height=(f1(th)) fill="#9bb7d4" {}
                    rect x=(f0(x)) y=(f1(base - dh)) width=(f0((bw - 4.0) / 2.0)) height=(f1(dh)) fill="#c0392b" {}
                    rect x=(f0(x + (bw - 4.0) / 2.0)) y=(f1(base - bh)) width=(f0((bw - 4.0) / 2.0)) height=(f1(bh)) fill="#e67e22" {}
                }
                @if i % 7 == 0 || i == days.len() - 1 {
                    text x=(f0(x)) y=(h - 6.0) font-size="10" { (md(d)) }
                }
            }
        }
    }
}

/// Structured data (a JSON value) as a readable block: an object as a
/// definition list with its fields named for people, an array as a list,
/// a value as text (a code by its name where the field says what it is).
/// For the parts of a record that have no screen of their own (a legal
/// basis, a hop's detail, a maintenance summary).
pub(crate) fn data(lang: Lang, v: &Value) -> Markup {
    data_of(lang, "", v)
}

fn data_of(lang: Lang, key: &str, v: &Value) -> Markup {
    match v {
        Value::Object(m) if m.is_empty() => html! { "—" },
        Value::Object(m) => html! {
            dl.data {
                @for (k, x) in m {
                    dt { (super::codes::field(lang, k)) }
                    dd { (data_of(lang, k, x)) }
                }
            }
        },
        Value::Array(a) if a.is_empty() => html! { "—" },
        Value::Array(a) => html! { ul.data { @for x in a { li { (data_of(lang, key, x)) } } } },
        Value::Bool(b) => html! { (if *b { "✓" } else { "✗" }) },
        Value::String(s) => html! { (super::codes::value(lang, key, s)) },
        other => html! { (tx(other)) },
    }
}

/// Markup a template rendered earlier in this process and kept in the
/// server's memory for one showing (a one-time password's page): it was
/// escaped when it was made, and nothing else is ever kept with its mark
/// ([`super::Ui::flash_markup_to`]).
pub(crate) fn kept_markup(m: String) -> Markup {
    maud::PreEscaped(m)
}
