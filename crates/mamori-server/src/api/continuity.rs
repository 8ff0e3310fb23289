//! `/api/v1/registrations`, `/merges`, `/snapshots`, `/reconcile`,
//! `/transcriptions`.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::Router;
use mamori_service::continuity::{merge, reconcile, registration, snapshot};
use mamori_service::Services;
use serde::Deserialize;
use serde_json::json;

use crate::http::{created, json_body, ok, read_body, ApiError, ApiResult, Caller};

/// The routes.
pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/api/v1/registrations", get(registrations).post(register))
        .route("/api/v1/merges", get(merges))
        .route("/api/v1/merges/{id}", get(merge_show))
        .route("/api/v1/merges/{id}/undo", post(merge_undo))
        .route("/api/v1/merges/{id}/review", post(merge_review))
        .route("/api/v1/snapshots", get(snapshots).post(snapshot_now))
        .route("/api/v1/snapshots/custodians", get(custodians).post(init_custodians))
        .route("/api/v1/snapshots/{id}/verify", post(snapshot_verify))
        .route("/api/v1/reconcile/imports", get(imports).post(import))
        .route("/api/v1/reconcile/tasks", get(tasks))
        .route("/api/v1/reconcile/tasks/{id}/resolve", post(resolve))
        .route("/api/v1/transcriptions", post(transcribe))
}

async fn register(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    created(registration::register(&svc, &c, req).await?)
}

#[derive(Deserialize)]
struct OpenQ {
    /// Only those not yet identified (default true).
    open: Option<bool>,
}

async fn registrations(State(svc): State<Services>, c: Caller, Query(q): Query<OpenQ>) -> ApiResult {
    ok(json!({"provisional": registration::list(&svc, &c, q.open.unwrap_or(true)).await?}))
}

#[derive(Deserialize)]
struct PatientQ {
    patient: Option<String>,
}

async fn merges(State(svc): State<Services>, c: Caller, Query(q): Query<PatientQ>) -> ApiResult {
    ok(json!({"merges": merge::list(&svc, &c, q.patient).await?}))
}

async fn merge_show(State(svc): State<Services>, c: Caller, Path(id): Path<i64>) -> ApiResult {
    ok(merge::show(&svc, &c, id).await?)
}

async fn merge_undo(State(svc): State<Services>, c: Caller, Path(id): Path<i64>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    ok(merge::undo(&svc, &c, id, req).await?)
}

async fn merge_review(State(svc): State<Services>, c: Caller, Path(id): Path<i64>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    merge::review(&svc, &c, id, req).await?;
    ok(json!({"merge": id, "reviewed": true}))
}

async fn snapshots(State(svc): State<Services>, c: Caller) -> ApiResult {
    let (rows, dir) = snapshot::list(&svc, &c).await?;
    ok(json!({"snapshots": rows, "dir": dir}))
}

async fn snapshot_now(State(svc): State<Services>, c: Caller) -> ApiResult {
    created(snapshot::create_now(&svc, &c).await?)
}

async fn custodians(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(json!({"keys": snapshot::custodians(&svc, &c).await?}))
}

async fn init_custodians(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    created(snapshot::init_custodians(&svc, &c, req).await?)
}

async fn snapshot_verify(State(svc): State<Services>, c: Caller, Path(id): Path<String>) -> ApiResult {
    ok(snapshot::verify_one(&svc, &c, &id).await?)
}

/// The largest export file an import reads.
const IMPORT_LIMIT: usize = 1 << 30;

async fn import(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let bytes = match read_body(body, IMPORT_LIMIT).await {
        Ok(b) => b.to_vec(),
        Err(e) => return Err(ApiError(svc.refused(&c, "reconcile-import", e).await)),
    };
    let v = reconcile::import(&svc, &c, bytes).await?;
    if v["already_imported"] == true {
        ok(v)
    } else {
        created(v)
    }
}

async fn imports(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(json!({"imports": reconcile::imports(&svc, &c).await?}))
}

#[derive(Deserialize)]
struct TasksQ {
    state: Option<String>,
}

async fn tasks(State(svc): State<Services>, c: Caller, Query(q): Query<TasksQ>) -> ApiResult {
    ok(json!({"tasks": reconcile::tasks(&svc, &c, q.state).await?}))
}

async fn resolve(State(svc): State<Services>, c: Caller, Path(id): Path<i64>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    ok(reconcile::resolve(&svc, &c, id, req).await?)
}

async fn transcribe(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    created(reconcile::transcribe(&svc, &c, req).await?)
}
