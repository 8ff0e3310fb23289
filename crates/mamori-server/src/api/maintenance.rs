//! Remote maintenance: the hospital's side on the main listener
//! (`/api/v1/maintenance/vendors|people|requests|report|ca`), and the
//! maintenance listener (login, requests, and the scoped operations
//! behind [`guard`]).

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use mamori_service::exchange::inbound::PeerCerts;
use mamori_service::maintenance::{self as maint, Refused};
use mamori_service::Services;
use serde::Deserialize;
use serde_json::json;

use crate::http::{
    accepted, bearer_token, created, ctx_of, json_body, json_body_or_default, ok, parse_json, ApiError, ApiResult,
    Caller, MaintenanceActor, PeerAddr, JSON_LIMIT,
};

/// The hospital's side, on the main listener.
pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/api/v1/maintenance/vendors", get(list_vendors).post(add_vendor))
        .route("/api/v1/maintenance/people", get(list_people).post(add_person))
        .route("/api/v1/maintenance/people/{id}/leave", post(person_leaves))
        .route("/api/v1/maintenance/people/{id}/reissue", post(reissue))
        .route("/api/v1/maintenance/requests", get(list_requests).post(staff_request))
        .route("/api/v1/maintenance/requests/{id}", get(show_request))
        .route("/api/v1/maintenance/requests/{id}/approve", post(approve))
        .route("/api/v1/maintenance/requests/{id}/reject", post(reject))
        .route("/api/v1/maintenance/requests/{id}/revoke", post(revoke))
        .route("/api/v1/maintenance/requests/{id}/review", post(review))
        .route("/api/v1/maintenance/report", get(report))
        .route("/api/v1/maintenance/ca", get(ca_cert))
}

/// The maintenance listener's routes before login.
pub(crate) fn listener_routes() -> Router<Services> {
    Router::new()
        .route("/api/v1/maintenance/login", post(login))
        .route("/api/v1/maintenance/request", post(vendor_request))
}

/// The maintenance listener's routes that need a live session (wrapped by
/// [`guard`]).
pub(crate) fn session_routes() -> Router<Services> {
    Router::new()
        .route("/api/v1/maintenance/session", get(session_info))
        .route("/api/v1/maintenance/logout", post(logout))
        .route("/api/v1/maintenance/ops/config", get(op_config))
        .route("/api/v1/maintenance/ops/status", get(op_status))
        .route("/api/v1/maintenance/ops/db", get(op_db))
        .route("/api/v1/maintenance/ops/db/check", post(op_db_check))
        .route("/api/v1/maintenance/ops/db/analyze", post(op_db_analyze))
        .route("/api/v1/maintenance/ops/audit/verify", get(op_audit_verify))
        .route("/api/v1/maintenance/ops/restart", post(op_restart))
}

fn refused(r: Refused) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
    (status, Json(json!({"error": "refused", "message": r.message}))).into_response()
}

fn ip(addr: &Option<Extension<PeerAddr>>) -> Option<std::net::IpAddr> {
    addr.as_ref().map(|a| a.0 .0.ip())
}

async fn login(
    State(svc): State<Services>,
    Extension(certs): Extension<PeerCerts>,
    addr: Option<Extension<PeerAddr>>,
    body: Body,
) -> Response {
    let req = match parse_json(body, JSON_LIMIT).await {
        Ok(r) => r,
        Err(e) => return ApiError(e).into_response(),
    };
    match maint::login(&svc, &certs, ip(&addr), req).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => refused(r),
    }
}

async fn vendor_request(
    State(svc): State<Services>,
    Extension(certs): Extension<PeerCerts>,
    addr: Option<Extension<PeerAddr>>,
    body: Body,
) -> Response {
    let req = match parse_json(body, JSON_LIMIT).await {
        Ok(r) => r,
        Err(e) => return ApiError(e).into_response(),
    };
    match maint::vendor_request(&svc, &certs, ip(&addr), req).await {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(r) => refused(r),
    }
}

/// Every request on the maintenance listener after login: a live session
/// of the presenting certificate's person, inside the approved window,
/// within its scopes (the policy's decision); each call is audited with
/// its answer's status.
pub(crate) async fn guard(State(svc): State<Services>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let certs = parts.extensions.get::<PeerCerts>().cloned().unwrap_or_default();
    let a = parts.extensions.get::<PeerAddr>().map(|p| p.0.ip());
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let token = bearer_token(&parts.headers);
    let ctx = ctx_of(&parts, &svc);
    let call = match maint::authenticate(&svc, &certs, a, token, &method, &path, ctx).await {
        Ok(c) => c,
        Err(r) => return refused(r),
    };
    parts.extensions.insert(MaintenanceActor(call.actor.clone()));
    parts.extensions.insert(call.clone());
    let resp = next.run(Request::from_parts(parts, body)).await;
    maint::record_call(&svc, &call, &method, &path, resp.status().as_u16()).await;
    resp
}

async fn session_info(State(svc): State<Services>, Extension(call): Extension<maint::MaintenanceCall>) -> ApiResult {
    ok(maint::session_info(&svc, &call).await?)
}

async fn logout(State(svc): State<Services>, headers: axum::http::HeaderMap) -> ApiResult {
    maint::logout(&svc, bearer_token(&headers)).await?;
    ok(json!({"logged_out": true}))
}

async fn op_config(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(maint::op_config(&svc, &c).await?)
}

async fn op_status(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(maint::op_status(&svc, &c).await?)
}

async fn op_db(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(maint::op_db(&svc, &c).await?)
}

async fn op_db_check(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(maint::op_db_check(&svc, &c).await?)
}

async fn op_db_analyze(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(maint::op_db_analyze(&svc, &c).await?)
}

async fn op_audit_verify(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(maint::op_audit_verify(&svc, &c).await?)
}

async fn op_restart(State(svc): State<Services>, c: Caller) -> ApiResult {
    accepted(maint::op_restart(&svc, &c).await?)
}

async fn add_vendor(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    maint::add_vendor(&svc, &c, req).await?;
    created(json!({"created": true}))
}

async fn list_vendors(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(json!({"vendors": maint::list_vendors(&svc, &c).await?}))
}

async fn add_person(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    created(maint::add_person(&svc, &c, req).await?)
}

async fn list_people(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(json!({"people": maint::list_people(&svc, &c).await?}))
}

async fn person_leaves(State(svc): State<Services>, c: Caller, Path(id): Path<String>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    ok(maint::person_leaves(&svc, &c, &id, req).await?)
}

async fn reissue(State(svc): State<Services>, c: Caller, Path(id): Path<String>) -> ApiResult {
    ok(maint::reissue(&svc, &c, &id).await?)
}

async fn staff_request(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    created(maint::staff_request(&svc, &c, req).await?)
}

#[derive(Deserialize)]
struct ListQ {
    state: Option<String>,
    review: Option<String>,
}

async fn list_requests(State(svc): State<Services>, c: Caller, Query(q): Query<ListQ>) -> ApiResult {
    ok(json!({"requests": maint::list_requests(&svc, &c, q.state, q.review).await?}))
}

async fn show_request(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    ok(maint::show_request(&svc, &c, id).await?)
}

async fn approve(State(svc): State<Services>, c: Caller, Path(id): Path<i64>, body: Body) -> ApiResult {
    let req = json_body_or_default(&svc, &c, body).await?;
    ok(maint::approve(&svc, &c, id, req).await?)
}

async fn reject(State(svc): State<Services>, c: Caller, Path(id): Path<i64>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    ok(maint::decide_as(&svc, &c, id, req, "rejected").await?)
}

async fn revoke(State(svc): State<Services>, c: Caller, Path(id): Path<i64>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    ok(maint::decide_as(&svc, &c, id, req, "revoked").await?)
}

async fn review(State(svc): State<Services>, c: Caller, Path(id): Path<i64>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    ok(maint::review(&svc, &c, id, req).await?)
}

async fn report(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(maint::report(&svc, &c).await?)
}

async fn ca_cert(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(maint::ca_cert(&svc, &c).await?)
}
