//! `/api/v1/auth`, `/users`, `/account-requests`, `/tokens`,
//! `/care-assignments`, `/mode`.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::routing::{delete, get, post};
use axum::Router;
use mamori_service::{accounts, bcp, Services};
use serde::Deserialize;
use serde_json::json;

use crate::http::{created, json_body, json_body_or_default, ok, parse_json, ApiResult, Caller, Ctx, JSON_LIMIT};

/// The routes.
pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/password", post(change_password))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{name}", get(get_user).patch(update_user))
        .route("/api/v1/users/{name}/reset-password", post(reset_password))
        .route("/api/v1/users/{name}/totp", post(enroll_totp).delete(remove_totp))
        .route("/api/v1/account-requests", get(list_requests))
        .route("/api/v1/account-requests/{id}/approve", post(approve_request))
        .route("/api/v1/account-requests/{id}/reject", post(reject_request))
        .route("/api/v1/tokens", get(list_tokens).post(issue_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/care-assignments", get(list_care).post(assign_care))
        .route("/api/v1/care-assignments/{id}", delete(end_care))
        .route("/api/v1/mode", get(mode))
}

async fn login(State(svc): State<Services>, Ctx(ctx): Ctx, body: Body) -> ApiResult {
    let req = parse_json(body, JSON_LIMIT).await?;
    ok(accounts::login(&svc, ctx, req).await?)
}

async fn logout(State(svc): State<Services>, c: Caller) -> ApiResult {
    accounts::logout(&svc, &c).await?;
    ok(json!({"logged_out": true}))
}

async fn change_password(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    let done = accounts::change_password(&svc, &c, req).await?;
    ok(json!({"changed": true, "token": done.token, "expires_at": done.expires_at, "sessions_ended": done.ended}))
}

async fn me(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(accounts::me(&svc, &c).await?)
}

async fn mode(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(bcp::mode(&svc, &c).await?)
}

async fn list_users(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(json!({"users": accounts::list_users(&svc, &c).await?}))
}

async fn get_user(State(svc): State<Services>, c: Caller, Path(name): Path<String>) -> ApiResult {
    ok(accounts::get_user(&svc, &c, &name).await?)
}

async fn create_user(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    created(accounts::create_user(&svc, &c, req).await?)
}

async fn update_user(State(svc): State<Services>, c: Caller, Path(name): Path<String>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    ok(accounts::update_user(&svc, &c, &name, req).await?)
}

async fn reset_password(State(svc): State<Services>, c: Caller, Path(name): Path<String>) -> ApiResult {
    ok(accounts::reset_password(&svc, &c, &name).await?)
}

async fn enroll_totp(State(svc): State<Services>, c: Caller, Path(name): Path<String>) -> ApiResult {
    ok(accounts::enroll_totp(&svc, &c, &name).await?)
}

async fn remove_totp(State(svc): State<Services>, c: Caller, Path(name): Path<String>) -> ApiResult {
    accounts::remove_totp(&svc, &c, &name).await?;
    ok(json!({"removed": true}))
}

#[derive(Deserialize)]
struct RequestFilter {
    #[serde(default)]
    state: Option<String>,
}

async fn list_requests(State(svc): State<Services>, c: Caller, Query(q): Query<RequestFilter>) -> ApiResult {
    let pending_only = q.state.as_deref() != Some("all");
    ok(json!({"requests": accounts::list_requests(&svc, &c, pending_only).await?}))
}

// The decisions take no parameters. A body a client sends (`{}`) has
// been read before the handler runs (`limits::read_small_body`).
async fn approve_request(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    ok(accounts::decide_request(&svc, &c, id, true).await?)
}

async fn reject_request(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    ok(accounts::decide_request(&svc, &c, id, false).await?)
}

#[derive(Deserialize)]
struct UserFilter {
    user: Option<String>,
}

async fn issue_token(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body_or_default(&svc, &c, body).await?;
    created(accounts::issue_token(&svc, &c, req).await?)
}

async fn list_tokens(State(svc): State<Services>, c: Caller, Query(f): Query<UserFilter>) -> ApiResult {
    ok(json!({"tokens": accounts::list_tokens(&svc, &c, f.user).await?}))
}

async fn revoke_token(State(svc): State<Services>, c: Caller, Path(id): Path<String>) -> ApiResult {
    let n = accounts::revoke_token(&svc, &c, &id).await?;
    ok(json!({"revoked": n}))
}

async fn assign_care(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    created(json!({"id": accounts::assign_care(&svc, &c, req).await?}))
}

#[derive(Deserialize)]
struct CareFilter {
    patient: Option<String>,
    user: Option<String>,
}

async fn list_care(State(svc): State<Services>, c: Caller, Query(f): Query<CareFilter>) -> ApiResult {
    ok(json!({"assignments": accounts::list_care(&svc, &c, f.patient, f.user).await?}))
}

async fn end_care(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    ok(accounts::end_care(&svc, &c, id).await?)
}
