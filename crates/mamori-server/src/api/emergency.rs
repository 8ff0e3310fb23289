//! `/api/v1/break-glass`, `/emergency-accounts`, `/emergency-login`.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::Router;
use mamori_service::{breakglass, eaccounts, Services};
use serde::Deserialize;
use serde_json::json;

use crate::http::{created, json_body, ok, parse_json, ApiResult, Caller, Ctx, JSON_LIMIT};

/// The routes.
pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/api/v1/break-glass", get(list).post(request))
        .route("/api/v1/break-glass/{id}", get(show))
        .route("/api/v1/break-glass/{id}/review", post(review))
        .route("/api/v1/break-glass/{id}/end", post(end))
        .route("/api/v1/emergency-accounts", get(accounts).post(provision))
        .route("/api/v1/emergency-accounts/{name}/envelope", post(envelope))
        .route("/api/v1/emergency-login", post(emergency_login))
}

async fn request(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    created(breakglass::request(&svc, &c, req).await?)
}

#[derive(Deserialize)]
struct ListQ {
    review: Option<String>,
}

async fn list(State(svc): State<Services>, c: Caller, Query(q): Query<ListQ>) -> ApiResult {
    ok(json!({"grants": breakglass::list(&svc, &c, q.review).await?}))
}

async fn show(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    ok(breakglass::show(&svc, &c, id).await?)
}

async fn review(State(svc): State<Services>, c: Caller, Path(id): Path<i64>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    breakglass::review(&svc, &c, id, req).await?;
    ok(json!({"reviewed": true}))
}

async fn end(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    breakglass::end(&svc, &c, id).await?;
    ok(json!({"ended": true}))
}

async fn accounts(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(json!({"accounts": eaccounts::list(&svc, &c).await?}))
}

async fn provision(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    created(eaccounts::provision(&svc, &c, req).await?)
}

async fn envelope(State(svc): State<Services>, c: Caller, Path(name): Path<String>) -> ApiResult {
    ok(eaccounts::envelope(&svc, &c, &name).await?)
}

async fn emergency_login(State(svc): State<Services>, Ctx(ctx): Ctx, body: Body) -> ApiResult {
    let req = parse_json(body, JSON_LIMIT).await?;
    ok(eaccounts::emergency_login(&svc, ctx, req).await?)
}
