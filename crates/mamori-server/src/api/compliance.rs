//! `/api/v1/compliance`: compliance reports for inspections (produce,
//! list, fetch, verify).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use mamori_service::{compliance, Services};

use crate::http::{ok, read_body, ApiResult, Caller};

/// The largest report file accepted for verification.
const FILE_LIMIT: usize = 8 * 1024 * 1024;

/// The routes.
pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/api/v1/compliance/reports", get(list).post(generate))
        .route("/api/v1/compliance/reports/{id}", get(fetch))
        .route("/api/v1/compliance/reports/{id}/pdf", get(pdf))
        .route("/api/v1/compliance/verify", post(verify))
}

fn file(status: StatusCode, g: compliance::Generated) -> ApiResult {
    Ok((
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::LOCATION, format!("/api/v1/compliance/reports/{}", g.id)),
            (header::HeaderName::from_static("x-mamori-report-sha256"), g.signed.signature.sha256.clone()),
        ],
        g.body,
    )
        .into_response())
}

async fn generate(State(svc): State<Services>, c: Caller, Query(q): Query<compliance::ReportQuery>) -> ApiResult {
    file(StatusCode::CREATED, compliance::generate(&svc, &c, q).await?)
}

async fn list(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(compliance::list(&svc, &c).await?)
}

async fn fetch(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    file(StatusCode::OK, compliance::get(&svc, &c, id).await?)
}

async fn verify(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let bytes = match read_body(body, FILE_LIMIT).await {
        Ok(b) => b,
        Err(e) => return Err(svc.refused(&c, "compliance-verify", e).await.into()),
    };
    ok(compliance::verify_here(&svc, &c, bytes.to_vec()).await?)
}

#[derive(serde::Deserialize)]
struct PdfQ {
    lang: Option<String>,
}

async fn pdf(State(svc): State<Services>, c: Caller, Path(id): Path<i64>, Query(q): Query<PdfQ>) -> ApiResult {
    let ja = q.lang.as_deref() != Some("en");
    let bytes = compliance::pdf(&svc, &c, id, ja).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/pdf".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"compliance-report-{id}.pdf\"")),
        ],
        bytes,
    )
        .into_response())
}
