//! `/api/v1/bcp`, `/alerts`, `/notifications`, and the live event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mamori_service::notify::{self, LiveEvent};
use mamori_service::{bcp, ServiceError, Services};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{json_body, json_body_or_default, ok, read_body, ApiError, ApiResult, Caller, JSON_LIMIT};

/// The routes.
pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/api/v1/bcp/plan", get(get_plan).put(put_plan))
        .route("/api/v1/bcp/declarations", get(list).post(declare))
        .route("/api/v1/bcp/declarations/{id}", get(show))
        .route("/api/v1/bcp/declarations/{id}/confirm", post(confirm))
        .route("/api/v1/bcp/declarations/{id}/transitions", post(transition))
        .route("/api/v1/bcp/declarations/{id}/checklist/{phase}/{item}", post(tick))
        .route("/api/v1/bcp/declarations/{id}/review", get(get_review).put(put_review))
        .route("/api/v1/bcp/declarations/{id}/incident-report", get(incident_report))
        .route("/api/v1/bcp/declarations/{id}/incident-report.pdf", get(incident_report_pdf))
        .route("/api/v1/bcp/declarations/{id}/incident-report/{recipient}", post(reported))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/{id}/ack", post(ack))
        .route("/api/v1/notifications", get(notifications))
        .route("/api/v1/events", get(events))
}

#[derive(Deserialize)]
struct PlanQ {
    format: Option<String>,
}

async fn get_plan(State(svc): State<Services>, c: Caller, Query(q): Query<PlanQ>) -> ApiResult {
    let toml = q.format.as_deref() == Some("toml");
    let v = bcp::plan(&svc, &c, toml).await?;
    match v {
        Value::String(text) if toml => {
            Ok(([(header::CONTENT_TYPE, "application/toml; charset=utf-8")], text).into_response())
        }
        v => ok(v),
    }
}

async fn put_plan(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let text = match read_body(body, JSON_LIMIT).await.and_then(|b| {
        String::from_utf8(b.to_vec()).map_err(|_| ServiceError::invalid("", "the plan must be UTF-8 TOML"))
    }) {
        Ok(t) => t,
        Err(e) => return Err(ApiError(svc.refused(&c, "bcp-plan-import", e).await)),
    };
    ok(json!({"version": bcp::put_plan(&svc, &c, text).await?}))
}

async fn declare(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    let v = bcp::declare(&svc, &c, req).await?;
    let status = if v["state"] == "proposed" { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    Ok((status, Json(v)).into_response())
}

async fn confirm(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    ok(bcp::confirm(&svc, &c, id).await?)
}

async fn transition(State(svc): State<Services>, c: Caller, Path(id): Path<i64>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    ok(bcp::transition(&svc, &c, id, req).await?)
}

async fn list(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(json!({"declarations": bcp::list(&svc, &c).await?}))
}

async fn show(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    ok(bcp::show(&svc, &c, id).await?)
}

async fn tick(
    State(svc): State<Services>,
    c: Caller,
    Path((id, phase, item)): Path<(i64, String, String)>,
    body: Body,
) -> ApiResult {
    let req = json_body_or_default(&svc, &c, body).await?;
    let new = bcp::tick(&svc, &c, id, &phase, &item, req).await?;
    ok(json!({"done": true, "new": new}))
}

async fn get_review(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    ok(bcp::get_review(&svc, &c, id).await?)
}

async fn put_review(State(svc): State<Services>, c: Caller, Path(id): Path<i64>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    bcp::put_review(&svc, &c, id, req).await?;
    ok(json!({"completed": true}))
}

async fn incident_report(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    ok(bcp::incident_report(&svc, &c, id).await?)
}

/// `GET /api/v1/bcp/declarations/{id}/incident-report.pdf`: the report
/// for the authorities as a PDF (A4, Japanese font embedded).
async fn incident_report_pdf(
    State(svc): State<Services>,
    c: Caller,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let bytes = bcp::incident_report_pdf(&svc, &c, id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/pdf".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"incident-report-{id}.pdf\"")),
        ],
        bytes,
    )
        .into_response())
}

async fn reported(
    State(svc): State<Services>,
    c: Caller,
    Path((id, recipient)): Path<(i64, String)>,
    body: Body,
) -> ApiResult {
    let req = json_body_or_default(&svc, &c, body).await?;
    bcp::reported(&svc, &c, id, &recipient, req).await?;
    ok(json!({"recorded": true}))
}

#[derive(Deserialize)]
struct AlertQ {
    open: Option<bool>,
}

async fn alerts(State(svc): State<Services>, c: Caller, Query(q): Query<AlertQ>) -> ApiResult {
    ok(json!({"alerts": bcp::alerts(&svc, &c, q.open.unwrap_or(false)).await?}))
}

async fn ack(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    bcp::ack(&svc, &c, id).await?;
    ok(json!({"acknowledged": true}))
}

#[derive(Deserialize)]
struct DeliveryQ {
    state: Option<String>,
}

async fn notifications(State(svc): State<Services>, c: Caller, Query(q): Query<DeliveryQ>) -> ApiResult {
    ok(json!({"deliveries": bcp::notifications(&svc, &c, q.state).await?}))
}

/// `GET /api/v1/events`: server-sent events for an open screen: `mode`
/// (now, then every change) and the `announcement`s the caller may see.
async fn events(State(svc): State<Services>, c: Caller) -> impl IntoResponse {
    let rx = notify::live(&svc, c.0);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let e = match rx.recv().await? {
            LiveEvent::Mode(m) => Event::default().event("mode").data(m),
            LiveEvent::Announcement(a) => {
                Event::default().event("announcement").data(serde_json::to_string(&a).unwrap_or_default())
            }
        };
        Some((Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
