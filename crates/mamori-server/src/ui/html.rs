//! HTML building: escaping, the page layout with the mode banner, small
//! helpers. Every dynamic string goes through [`esc`].

use axum::response::Html;
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

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escaped text of a JSON value (strings unquoted).
pub(crate) fn ev(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
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

fn nav(ui: &Ui) -> String {
    let mut links: Vec<(&str, String)> = vec![("/ui/", ui.t("ホーム", "Home").into())];
    if ui.may(Operation::ProvisionalRead) {
        links.push(("/ui/patients", ui.t("患者検索", "Patients").into()));
        links.push(("/ui/register", ui.t("緊急登録", "Emergency registration").into()));
        links.push(("/ui/provisional", ui.t("仮登録患者", "Provisional patients").into()));
    }
    if ui.may(Operation::NotificationRead) {
        links.push(("/ui/bcp", ui.t("BCPコンソール", "BCP console").into()));
    }
    if ui.may(Operation::AuditRead) {
        links.push(("/ui/audit", ui.t("監査", "Audit").into()));
    }
    if ui.may(Operation::ComplianceReport) {
        links.push(("/ui/compliance", ui.t("準拠状況", "Compliance").into()));
    }
    if ui.may(Operation::ExchangeSend) || ui.may(Operation::ExchangeMessageReadAll) || ui.may(Operation::InboundRead) {
        links.push(("/ui/exchange", ui.t("情報交換", "Exchange").into()));
    }
    if ui.may(Operation::UserRead) {
        links.push(("/ui/admin", ui.t("管理", "Administration").into()));
    }
    if ui.may(Operation::AppUse) {
        links.push(("/ui/apps", ui.t("アプリ", "Apps").into()));
    }
    links
        .iter()
        .map(|(href, label)| {
            let cur = if ui.path.split('?').next() == Some(href) { " aria-current=\"page\"" } else { "" };
            format!("<a href=\"{href}\"{cur}>{}</a>", esc(label))
        })
        .collect::<Vec<_>>()
        .join("")
}

/// The whole page around `body`.
pub(crate) fn layout(ui: &Ui, title: &str, body: &str) -> Html<String> {
    let mode = ui.me["mode"].as_str().unwrap_or("normal");
    let (cls, text) = mode_banner(ui.lang, mode);
    let other = if ui.lang == Lang::Ja { ("en", "English") } else { ("ja", "日本語") };
    let user = format!(
        "{} ({})",
        esc(&super::who(&ui.me)),
        esc(&ui.actor.user.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "))
    );
    let declared = ui.me["declared"]
        .as_str()
        .map(|d| format!(" — {} {}", ui.t("本人:", "acting person:"), esc(d)))
        .unwrap_or_default();
    Html(format!(
        r#"<!DOCTYPE html>
<html lang="{lang}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — mamori</title><link rel="stylesheet" href="/ui/static/app.css"><script src="/ui/static/app.js" defer></script></head>
<body data-lang="{lang}" data-mode="{mode_attr}">
<div id="mode-banner" class="{cls}" role="status" aria-live="assertive"><span id="mode-text">{text}</span></div>
<div id="announcements" aria-live="polite"></div>
<header><span class="brand">守り mamori</span><nav>{nav}</nav>
<span class="user">{user}{declared}</span>
<a class="lang" href="/ui/lang?to={olang}&amp;back={back}">{olabel}</a>
<form method="post" action="/ui/logout" class="inline">{csrf}<button type="submit">{logout}</button></form></header>
<main><h1>{title}</h1>
{body}
</main></body></html>"#,
        lang = ui.lang.code(),
        title = esc(title),
        mode_attr = esc(mode),
        cls = cls,
        text = text,
        nav = nav(ui),
        user = user,
        declared = declared,
        olang = other.0,
        olabel = other.1,
        back = esc(&mamori_service::records::enc(&ui.path)),
        csrf = ui.csrf_field(),
        logout = ui.t("ログアウト", "Log out"),
        body = body,
    ))
}

/// A page for people not logged in (login, emergency login).
pub(crate) fn bare(lang: Lang, title: &str, mode: &str, body: &str) -> Html<String> {
    let (cls, text) = mode_banner(lang, mode);
    let other = if lang == Lang::Ja { ("en", "English") } else { ("ja", "日本語") };
    Html(format!(
        r#"<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — mamori</title><link rel="stylesheet" href="/ui/static/app.css"></head>
<body><div id="mode-banner" class="{cls}" role="status"><span id="mode-text">{text}</span></div>
<header><span class="brand">守り mamori</span><a class="lang" href="/ui/lang?to={olang}&amp;back=/ui/login">{olabel}</a></header>
<main class="narrow"><h1>{title}</h1>{body}</main></body></html>"#,
        lang = lang.code(),
        title = esc(title),
        olang = other.0,
        olabel = other.1,
    ))
}

/// An error or notice box.
/// A section's tab bar; the current page is marked for screen readers and
/// styling. Tabs are not printed (reports print without them).
pub(crate) fn tabs(ui: &Ui, items: &[(&str, &str)]) -> String {
    let here = ui.path.split('?').next();
    let links: String = items
        .iter()
        .map(|(h, l)| {
            let cur = if here == Some(*h) { " aria-current=\"page\"" } else { "" };
            format!("<a href=\"{h}\"{cur}>{}</a>", esc(l))
        })
        .collect();
    format!("<nav class=\"tabs noprint\">{links}</nav>")
}

pub(crate) fn notice(kind: &str, text: &str) -> String {
    format!("<p class=\"notice {kind}\" role=\"alert\">{}</p>", esc(text))
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
        None => esc(s),
    }
}

/// A small line chart of numeric values in time order (SVG, no script).
pub(crate) fn sparkline(points: &[(i64, f64)]) -> String {
    if points.len() < 2 {
        return String::new();
    }
    let (w, h, pad) = (220.0, 48.0, 4.0);
    let (t0, t1) = (points[0].0 as f64, points[points.len() - 1].0 as f64);
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let sx = |t: f64| if t1 > t0 { pad + (t - t0) / (t1 - t0) * (w - 2.0 * pad) } else { w / 2.0 };
    let sy = |v: f64| if hi > lo { h - pad - (v - lo) / (hi - lo) * (h - 2.0 * pad) } else { h / 2.0 };
    let pts: Vec<String> = points.iter().map(|(t, v)| format!("{:.1},{:.1}", sx(*t as f64), sy(*v))).collect();
    let last = points[points.len() - 1];
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"trend\"><polyline fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"2\" points=\"{}\"/><circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#1f5fa8\"/></svg>",
        pts.join(" "),
        sx(last.0 as f64),
        sy(last.1)
    )
}

/// Bars per day (SVG): total, with denials and break-glass highlighted.
pub(crate) fn day_bars(days: &[Value]) -> String {
    if days.is_empty() {
        return String::new();
    }
    let max = days.iter().filter_map(|d| d["total"].as_u64()).max().unwrap_or(1).max(1) as f64;
    let bw = 18.0;
    let h = 120.0;
    let w = bw * days.len() as f64 + 10.0;
    let mut bars = String::new();
    for (i, d) in days.iter().enumerate() {
        let x = 5.0 + i as f64 * bw;
        let total = d["total"].as_u64().unwrap_or(0) as f64;
        let denied = d["denied"].as_u64().unwrap_or(0) as f64;
        let bg = d["break_glass"].as_u64().unwrap_or(0) as f64;
        let th = total / max * (h - 20.0);
        bars.push_str(&format!("<rect x=\"{x:.0}\" y=\"{:.1}\" width=\"{:.0}\" height=\"{th:.1}\" fill=\"#9bb7d4\"><title>{} {}</title></rect>", h - 15.0 - th, bw - 4.0, ev(&d["day"]), total));
        let dh = denied / max * (h - 20.0);
        bars.push_str(&format!(
            "<rect x=\"{x:.0}\" y=\"{:.1}\" width=\"{:.0}\" height=\"{dh:.1}\" fill=\"#c0392b\"/>",
            h - 15.0 - dh,
            (bw - 4.0) / 2.0
        ));
        let bh = bg / max * (h - 20.0);
        bars.push_str(&format!(
            "<rect x=\"{:.0}\" y=\"{:.1}\" width=\"{:.0}\" height=\"{bh:.1}\" fill=\"#e67e22\"/>",
            x + (bw - 4.0) / 2.0,
            h - 15.0 - bh,
            (bw - 4.0) / 2.0
        ));
    }
    format!("<svg class=\"bars\" viewBox=\"0 0 {w:.0} {h:.0}\" width=\"{w:.0}\" height=\"{h:.0}\" role=\"img\" aria-label=\"accesses per day\">{bars}</svg>")
}
