//! The compliance report for auditors and administrators: produce one for
//! a period (Post/Redirect/Get), read it as a printable document, download
//! the signed file or its PDF.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use mamori_service::compliance::{self, Report, Status, Text};
use mamori_service::Services;
use serde_json::json;

use super::html::{notice, when};
use super::{esc, field, form, Api, Ui};

pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/ui/compliance", get(index).post(produce))
        .route("/ui/compliance/{id}", get(show))
        .route("/ui/compliance/{id}/report.json", get(download))
        .route("/ui/compliance/{id}/report.pdf", get(pdf))
}

fn status_badge(ui: &Ui, s: Status) -> String {
    let (ja, en) = s.label();
    let cls = match s {
        Status::Met => "green",
        Status::Attention => "yellow",
        Status::NotMet => "red",
    };
    format!("<span class=\"badge {cls}\">{}</span>", esc(ui.t(ja, en)))
}

/// The page that says why a report cannot be shown, with the use case's status.
fn refused(ui: &Ui, e: &mamori_service::ServiceError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, ui.page(ui.t("報告書", "Report"), &notice("error", &e.message()))).into_response()
}

fn pick<'a>(ui: &Ui, b: &'a Text) -> &'a str {
    ui.t(&b.ja, &b.en)
}

async fn index(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut body = String::new();
    if let Some(msg) = q.get("error") {
        body.push_str(&notice("error", msg));
    }
    body.push_str(&format!(
        "<p>{}</p>",
        ui.t(
            "ガイドラインの要件ごとに、このシステムで実測した状態と証跡を示し、医療機関の鍵で署名した報告書を作成します（作成は監査ログに記録されます）。立入検査の資料として印刷・PDF・JSON で渡せます。",
            "For each guideline requirement, the state measured from this system with its evidence, in a report signed with the institution's key (producing it is audited). Print it, or hand it over as PDF or JSON for an inspection."
        )
    ));
    let offset = ui.svc.cfg.institution.utc_offset_minutes;
    let today = mamori_core::time::Timestamp(ui.svc.now().micros() + offset * 60_000_000);
    let (y, m, d) = today.ymd();
    let from = mamori_core::time::Timestamp(today.micros() - 30 * 86_400_000_000);
    let (fy, fm, fd) = from.ymd();
    body.push_str(&format!(
        "<form method=\"post\" action=\"/ui/compliance\" class=\"stack\">{}\
         <label>{} <input type=\"date\" name=\"from\" value=\"{fy:04}-{fm:02}-{fd:02}\" required></label>\
         <label>{} <input type=\"date\" name=\"to\" value=\"{y:04}-{m:02}-{d:02}\" required></label>\
         <label><input type=\"checkbox\" name=\"deep\" value=\"true\"> {}</label>\
         <button type=\"submit\">{}</button></form>",
        ui.csrf_field(),
        ui.t("期間の開始日", "From"),
        ui.t("期間の終了日", "To"),
        ui.t(
            "診療記録のすべての版を監査ログと照合する（時間がかかります）",
            "Also check every stored record version against the audit log (slower)"
        ),
        ui.t("報告書を作成", "Produce the report")
    ));
    let list = Api::of(compliance::list(&ui.svc, &ui.actor).await);
    body.push_str(&format!("<h2>{}</h2>", ui.t("作成済みの報告書", "Reports produced")));
    if !list.ok() {
        body.push_str(&notice("error", &list.message()));
    } else if list.body.as_array().is_none_or(|a| a.is_empty()) {
        body.push_str(&format!("<p class=\"muted\">{}</p>", ui.t("まだありません。", "None yet.")));
    } else {
        body.push_str(&format!(
            "<table><thead><tr><th>#</th><th>{}</th><th>{}</th><th>{}</th><th>SHA-256</th></tr></thead><tbody>",
            ui.t("作成日時", "Produced"),
            ui.t("作成者", "By"),
            ui.t("対象期間", "Period")
        ));
        for r in list.body.as_array().into_iter().flatten() {
            let id = r["id"].as_i64().unwrap_or(0);
            body.push_str(&format!(
                "<tr><td><a href=\"/ui/compliance/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{} – {}</td><td><code>{}</code></td></tr>",
                esc(&when(&r["created"], offset)),
                esc(r["created_by"].as_str().unwrap_or("")),
                esc(&when(&r["from"], offset)),
                esc(&when(&r["to"], offset)),
                esc(&r["sha256"].as_str().unwrap_or("").chars().take(16).collect::<String>())
            ));
        }
        body.push_str("</tbody></table>");
    }
    ui.page(ui.t("準拠状況報告書", "Compliance report"), &body)
}

async fn produce(ui: Ui, body: Body) -> Response {
    let f = form(body).await;
    if let Some(r) = ui.csrf_rejects(&f) {
        return r;
    }
    let q = compliance::ReportQuery {
        from: Some(field(&f, "from").to_owned()).filter(|s| !s.is_empty()),
        to: Some(field(&f, "to").to_owned()).filter(|s| !s.is_empty()),
        deep: field(&f, "deep") == "true",
    };
    ui.once(&f, || async {
        match compliance::generate(&ui.svc, &ui.actor, q).await {
            Ok(g) => Ok(format!("/ui/compliance/{}", g.id)),
            Err(e) => {
                let msg = match &e {
                    mamori_service::ServiceError::Invalid { .. } => ui
                        .t(
                            "期間が正しくありません（開始日は終了日より前、最長10年）。",
                            "The period is not valid (it must start before it ends, at most 10 years).",
                        )
                        .to_owned(),
                    _ => e.message(),
                };
                Err(Box::new(ui.page(ui.t("作成できませんでした", "Not produced"), &notice("error", &msg))))
            }
        }
    })
    .await
}

async fn show(ui: Ui, Path(id): Path<i64>) -> Response {
    let g = match compliance::get(&ui.svc, &ui.actor, id).await {
        Ok(g) => g,
        Err(e) => return refused(&ui, &e),
    };
    let mut body = format!(
        "<p class=\"noprint\"><button type=\"button\" class=\"secondary\" data-print>{}</button> \
         <a href=\"/ui/compliance/{id}/report.pdf\">PDF</a> · <a href=\"/ui/compliance/{id}/report.json\">{}</a> · <a href=\"/ui/compliance\">{}</a></p>",
        ui.t("印刷", "Print"),
        ui.t("署名付き JSON", "Signed JSON"),
        ui.t("一覧へ", "All reports")
    );
    body.push_str(&render(&ui, &g.signed.report, &g.signed.signature.sha256));
    ui.page(ui.t("準拠状況報告書", "Compliance report"), &body)
}

/// The report as a document (HTML, escaped).
fn render(ui: &Ui, r: &Report, sha256: &str) -> String {
    let offset = r.utc_offset_minutes;
    let w = |s: &str| esc(&when(&json!(s), offset));
    let mut out = String::from("<section class=\"report compliance\">");
    out.push_str(&format!(
        "<h2>{} — {}</h2><table class=\"meta\"><tbody>\
         <tr><th>{}</th><td>{} – {}</td></tr><tr><th>{}</th><td>{} ({})</td></tr>\
         <tr><th>{}</th><td>{}</td></tr><tr><th>{}</th><td>{} {} · {} {} · {} {}</td></tr></tbody></table>",
        ui.t("準拠状況報告書", "Compliance report"),
        esc(&r.institution.name),
        ui.t("対象期間", "Period"),
        w(&r.period.from),
        w(&r.period.to),
        ui.t("作成", "Produced"),
        w(&r.generated_at),
        esc(&r.generated_by),
        ui.t("運用モード", "Mode"),
        esc(if r.mode == "normal" { ui.t("平常時", "normal") } else { &r.mode }),
        ui.t("結果", "Result"),
        ui.t("適合", "met"),
        r.summary.met,
        ui.t("要確認", "attention"),
        r.summary.attention,
        ui.t("不適合", "not met"),
        r.summary.not_met
    ));
    out.push_str(&format!(
        "<table class=\"requirements\"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        ui.t("要件", "Requirement"),
        ui.t("状態", "State"),
        ui.t("所見", "Findings"),
        ui.t("証跡（実測）", "Evidence (measured)")
    ));
    for q in &r.requirements {
        let findings = if q.item.findings.is_empty() {
            "—".to_owned()
        } else {
            format!(
                "<ul>{}</ul>",
                q.item.findings.iter().map(|f| format!("<li>{}</li>", esc(pick(ui, f)))).collect::<String>()
            )
        };
        let evidence = q
            .item
            .evidence
            .iter()
            .map(|e| format!("<li>{}: {}</li>", esc(pick(ui, &e.label)), esc(pick(ui, &e.value))))
            .collect::<String>();
        out.push_str(&format!(
            "<tr id=\"{}\"><td><strong>{}</strong><br>{}</td><td>{}</td><td>{findings}</td><td><ul class=\"evidence\">{evidence}</ul></td></tr>",
            esc(&q.item.id),
            esc(&q.item.id),
            esc(pick(ui, &q.title)),
            status_badge(ui, q.item.status)
        ));
    }
    out.push_str("</tbody></table>");
    let c = &r.checklist;
    out.push_str(&format!(
        "<h3>{}</h3><p class=\"muted\">{} — {}</p><table><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>",
        esc(pick(ui, &c.title)),
        esc(&c.edition),
        esc(pick(ui, &c.note)),
        ui.t("項番", "Item"),
        ui.t("確認項目", "Question"),
        ui.t("状態", "State"),
        ui.t("根拠となる要件", "From requirements")
    ));
    for i in &c.items {
        let conf = if i.confidence == "confirmed" { "" } else { ui.t("（項番は推定）", " (number inferred)") };
        out.push_str(&format!(
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&i.number),
            esc(conf),
            esc(pick(ui, &i.title)),
            status_badge(ui, i.status),
            i.requirements.iter().map(|id| format!("<a href=\"#{0}\">{0}</a>", esc(id))).collect::<Vec<_>>().join(", ")
        ));
    }
    out.push_str(&format!("</tbody></table><p class=\"muted\">{}: {}</p>", ui.t("出典", "Source"), esc(&c.source)));
    out.push_str(&format!(
        "<h3>{}</h3><p>SHA-256: <code>{}</code><br>{}: {}</p><pre class=\"checkpoint\">{}</pre><p class=\"muted\">{}</p></section>",
        ui.t("署名と監査ログへの結び付け", "Signature and audit binding"),
        esc(sha256),
        ui.t("監査チェックポイント（木のサイズ）", "Audit checkpoint (tree size)"),
        r.checkpoint.size,
        esc(&r.checkpoint.note),
        ui.t(
            "この報告書は医療機関の鍵で署名されています。署名付き JSON を `mamori compliance verify FILE --data DIR` で検証すると、上の SHA-256 と一致し、作成を記録した監査イベントとチェックポイントが確認できます。",
            "This report is signed with the institution's key. Verify the signed JSON with `mamori compliance verify FILE --data DIR`: it prints the SHA-256 above and finds the audit event of its production and its checkpoint."
        )
    ));
    out
}

async fn download(ui: Ui, Path(id): Path<i64>) -> Response {
    match compliance::get(&ui.svc, &ui.actor, id).await {
        Ok(g) => (
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"compliance-report-{id}.json\"")),
            ],
            g.body,
        )
            .into_response(),
        Err(e) => refused(&ui, &e),
    }
}

async fn pdf(ui: Ui, Path(id): Path<i64>) -> Response {
    match compliance::pdf(&ui.svc, &ui.actor, id, ui.t("ja", "en") == "ja").await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/pdf".to_owned()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"compliance-report-{id}.pdf\"")),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => refused(&ui, &e),
    }
}
