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
use super::{field, form, html, Api, Markup, Ui};

pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/ui/compliance", get(index).post(produce))
        .route("/ui/compliance/{id}", get(show))
        .route("/ui/compliance/{id}/report.json", get(download))
        .route("/ui/compliance/{id}/report.pdf", get(pdf))
}

fn status_badge(ui: &Ui, s: Status) -> Markup {
    let (ja, en) = s.label();
    let cls = match s {
        Status::Met => "green",
        Status::Attention => "yellow",
        Status::NotMet => "red",
    };
    html! { span class={ "badge " (cls) } { (ui.t(ja, en)) } }
}

/// The page that says why a report cannot be shown, with the use case's status.
fn refused(ui: &Ui, e: &mamori_service::ServiceError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, ui.page(ui.t("報告書", "Report"), notice("error", &ui.why_err(e)))).into_response()
}

fn pick<'a>(ui: &Ui, b: &'a Text) -> &'a str {
    ui.t(&b.ja, &b.en)
}

async fn index(ui: Ui, Query(q): Query<HashMap<String, String>>) -> Response {
    let offset = ui.svc.cfg.institution.utc_offset_minutes;
    let today = mamori_core::time::Timestamp(ui.svc.now().micros() + offset * 60_000_000);
    let (y, m, d) = today.ymd();
    let from = mamori_core::time::Timestamp(today.micros() - 30 * 86_400_000_000);
    let (fy, fm, fd) = from.ymd();
    let list = Api::of(compliance::list(&ui.svc, &ui.actor).await);
    let body = html! {
        @if let Some(msg) = q.get("error") { (notice("error", msg)) }
        p { (ui.t(
            "ガイドラインの要件ごとに、このシステムで実測した状態と証跡を示し、医療機関の鍵で署名した報告書を作成します（作成は監査ログに記録されます）。立入検査の資料として印刷・PDF・JSON で渡せます。",
            "For each guideline requirement, the state measured from this system with its evidence, in a report signed with the institution's key (producing it is audited). Print it, or hand it over as PDF or JSON for an inspection."
        )) }
        form.stack method="post" action="/ui/compliance" {
            (ui.csrf_field())
            label { (ui.t("期間の開始日", "From")) " " input type="date" name="from" value=(format!("{fy:04}-{fm:02}-{fd:02}")) required; }
            label { (ui.t("期間の終了日", "To")) " " input type="date" name="to" value=(format!("{y:04}-{m:02}-{d:02}")) required; }
            label { input type="checkbox" name="deep" value="true"; " " (ui.t("診療記録のすべての版を監査ログと照合する（時間がかかります）", "Also check every stored record version against the audit log (slower)")) }
            button type="submit" { (ui.t("報告書を作成", "Produce the report")) }
        }
        h2 { (ui.t("作成済みの報告書", "Reports produced")) }
        @if !list.ok() {
            (notice("error", &ui.why(&list)))
        } @else if list.body.as_array().is_none_or(|a| a.is_empty()) {
            p.muted { (ui.t("まだありません。", "None yet.")) }
        } @else {
            table.stack {
                thead { tr { th { "#" } th { (ui.t("作成日時", "Produced")) } th { (ui.t("作成者", "By")) } th { (ui.t("対象期間", "Period")) } th { "SHA-256" } } }
                tbody {
                    @for r in list.body.as_array().into_iter().flatten() {
                        @let id = r["id"].as_i64().unwrap_or(0);
                        tr {
                            td { a href={ "/ui/compliance/" (id) } { (id) } }
                            td { (when(&r["created"], offset)) }
                            td { (r["created_by"].as_str().unwrap_or("")) }
                            td { (when(&r["from"], offset)) " – " (when(&r["to"], offset)) }
                            td { code { (r["sha256"].as_str().unwrap_or("").chars().take(16).collect::<String>()) } }
                        }
                    }
                }
            }
        }
    };
    ui.page(ui.t("準拠状況報告書", "Compliance report"), body)
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
                    _ => ui.why_err(&e),
                };
                Err(Box::new(ui.page(ui.t("作成できませんでした", "Not produced"), notice("error", &msg))))
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
    let body = html! {
        p.noprint {
            button.secondary type="button" data-print { (ui.t("印刷", "Print")) } " "
            a href={ "/ui/compliance/" (id) "/report.pdf" } { "PDF" } " · "
            a href={ "/ui/compliance/" (id) "/report.json" } { (ui.t("署名付き JSON", "Signed JSON")) } " · "
            a href="/ui/compliance" { (ui.t("一覧へ", "All reports")) }
        }
        (render(&ui, &g.signed.report, &g.signed.signature.sha256))
    };
    ui.page(ui.t("準拠状況報告書", "Compliance report"), body)
}

/// The report as a document.
fn render(ui: &Ui, r: &Report, sha256: &str) -> Markup {
    let offset = r.utc_offset_minutes;
    let w = |s: &str| when(&json!(s), offset);
    let c = &r.checklist;
    html! {
        section.report.compliance {
            h2 { (ui.t("準拠状況報告書", "Compliance report")) " — " (r.institution.name) }
            table.meta {
                tbody {
                    tr { th { (ui.t("対象期間", "Period")) } td { (w(&r.period.from)) " – " (w(&r.period.to)) } }
                    tr { th { (ui.t("作成", "Produced")) } td { (w(&r.generated_at)) " (" (r.generated_by) ")" } }
                    tr { th { (ui.t("運用モード", "Mode")) } td { @if r.mode == "normal" { (ui.t("平常時", "normal")) } @else { (r.mode) } } }
                    tr {
                        th { (ui.t("結果", "Result")) }
                        td { (ui.t("適合", "met")) " " (r.summary.met) " · " (ui.t("要確認", "attention")) " " (r.summary.attention) " · " (ui.t("不適合", "not met")) " " (r.summary.not_met) }
                    }
                }
            }
            table.requirements {
                thead { tr { th { (ui.t("要件", "Requirement")) } th { (ui.t("状態", "State")) } th { (ui.t("所見", "Findings")) } th { (ui.t("証跡（実測）", "Evidence (measured)")) } } }
                tbody {
                    @for q in &r.requirements {
                        tr id=(q.item.id) {
                            td { strong { (q.item.id) } br; (pick(ui, &q.title)) }
                            td { (status_badge(ui, q.item.status)) }
                            td { @if q.item.findings.is_empty() { "—" } @else { ul { @for f in &q.item.findings { li { (pick(ui, f)) } } } } }
                            td { ul.evidence { @for e in &q.item.evidence { li { (pick(ui, &e.label)) ": " (pick(ui, &e.value)) } } } }
                        }
                    }
                }
            }
            h3 { (pick(ui, &c.title)) }
            p.muted { (c.edition) " — " (pick(ui, &c.note)) }
            table {
                thead { tr { th { (ui.t("項番", "Item")) } th { (ui.t("確認項目", "Question")) } th { (ui.t("状態", "State")) } th { (ui.t("根拠となる要件", "From requirements")) } } }
                tbody {
                    @for i in &c.items {
                        tr {
                            td { (i.number) @if i.confidence != "confirmed" { (ui.t("（項番は推定）", " (number inferred)")) } }
                            td { (pick(ui, &i.title)) }
                            td { (status_badge(ui, i.status)) }
                            td { @for (n, id) in i.requirements.iter().enumerate() { @if n > 0 { ", " } a href={ "#" (id) } { (id) } } }
                        }
                    }
                }
            }
            p.muted { (ui.t("出典", "Source")) ": " (c.source) }
            h3 { (ui.t("署名と監査ログへの結び付け", "Signature and audit binding")) }
            p { "SHA-256: " code { (sha256) } br; (ui.t("監査チェックポイント（木のサイズ）", "Audit checkpoint (tree size)")) ": " (r.checkpoint.size) }
            pre.checkpoint { (r.checkpoint.note) }
            p.muted { (ui.t(
                "この報告書は医療機関の鍵で署名されています。署名付き JSON を `mamori compliance verify FILE --data DIR` で検証すると、上の SHA-256 と一致し、作成を記録した監査イベントとチェックポイントが確認できます。",
                "This report is signed with the institution's key. Verify the signed JSON with `mamori compliance verify FILE --data DIR`: it prints the SHA-256 above and finds the audit event of its production and its checkpoint."
            )) }
        }
    }
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
