//! `/api/v1/audit`: the public transparency endpoints (checkpoints,
//! proofs, witness cosignatures) and the auditors' review.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use mamori_service::{audit, ServiceError, Services};
use serde::Deserialize;

use crate::http::{ok, ok_audited, read_body, ApiResult, Caller};

/// The routes.
pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/api/v1/audit/checkpoint", get(latest))
        .route("/api/v1/audit/checkpoints", get(list))
        .route("/api/v1/audit/checkpoints/{size}", get(by_size))
        .route("/api/v1/audit/proof/inclusion", get(inclusion))
        .route("/api/v1/audit/proof/consistency", get(consistency))
        .route("/api/v1/audit/cosignatures", post(cosign))
        .route("/api/v1/audit/events/{index}", get(event))
        .route("/api/v1/audit/verify", get(verify_live))
        .route("/api/v1/audit/reports/{kind}", get(report))
}

fn note(text: String) -> ApiResult {
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn latest(State(svc): State<Services>) -> ApiResult {
    note(audit::latest(&svc).await?)
}

async fn by_size(State(svc): State<Services>, Path(size): Path<u64>) -> ApiResult {
    note(audit::by_size(&svc, size).await?)
}

#[derive(Deserialize)]
struct ListQ {
    before: Option<u64>,
    limit: Option<usize>,
}

async fn list(State(svc): State<Services>, Query(q): Query<ListQ>) -> ApiResult {
    ok(audit::list(&svc, q.before, q.limit).await?)
}

#[derive(Deserialize)]
struct InclusionQ {
    index: u64,
    size: Option<u64>,
}

async fn inclusion(State(svc): State<Services>, Query(q): Query<InclusionQ>) -> ApiResult {
    ok(audit::inclusion(&svc, q.index, q.size).await?)
}

#[derive(Deserialize)]
struct ConsistencyQ {
    first: u64,
    second: Option<u64>,
}

async fn consistency(State(svc): State<Services>, Query(q): Query<ConsistencyQ>) -> ApiResult {
    ok(audit::consistency(&svc, q.first, q.second).await?)
}

async fn cosign(State(svc): State<Services>, body: Body) -> ApiResult {
    let bytes = read_body(body, 64 * 1024).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ServiceError::invalid("", "not UTF-8"))?;
    ok(audit::cosign(&svc, text).await?)
}

async fn event(State(svc): State<Services>, c: Caller, Path(index): Path<u64>) -> ApiResult {
    ok_audited(audit::event(&svc, &c, index).await?)
}

async fn verify_live(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(audit::verify_live(&svc, &c).await?)
}

async fn report(
    State(svc): State<Services>,
    c: Caller,
    Path(kind): Path<String>,
    Query(q): Query<audit::ReportQuery>,
) -> ApiResult {
    ok_audited(audit::report(&svc, &c, &kind, q).await?)
}
