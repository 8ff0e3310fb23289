//! The router and the middleware every request passes through: request
//! id, the mode snapshot and `Mamori-Mode` header, security headers,
//! metrics and a log line (without patient data).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::{AppState, RequestId, RequestMode};

/// The main listener's router: the APIs and the web UI. The API part is
/// also kept in the state for the UI's in-process calls.
pub fn router(st: AppState) -> Router {
    let api = api_router(st.clone());
    if let Ok(mut g) = st.api_router.write() {
        *g = Some(api.clone());
    }
    let ui = crate::ui::routes()
        .layer(middleware::from_fn_with_state(st.clone(), crate::ui::security_headers))
        .layer(middleware::from_fn_with_state(st.clone(), common))
        .with_state(st);
    api.merge(ui)
}

fn api_router(st: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(crate::fhir::routes())
        .merge(crate::ops::routes())
        .merge(crate::audit_api::routes())
        .merge(crate::bcp_api::routes())
        .merge(crate::breakglass::routes())
        .merge(crate::eaccounts::routes())
        .merge(crate::exchange::partners::routes())
        .merge(crate::exchange::send::routes())
        .merge(crate::exchange::inbound::routes())
        .merge(crate::continuity::registration::routes())
        .merge(crate::continuity::merge::routes())
        .merge(crate::continuity::snapshot::routes())
        .merge(crate::continuity::reconcile::routes())
        .merge(crate::maintenance::routes())
        .fallback(|| async {
            (StatusCode::NOT_FOUND, Json(json!({"error": "not-found", "message": "no such endpoint"})))
        })
        .layer(middleware::from_fn_with_state(st.clone(), common))
        .with_state(st)
}

/// The AS2 listener's router: only `POST /as2`, with the same middleware.
pub fn as2_router(st: AppState) -> Router {
    crate::exchange::inbound::as2_routes()
        .fallback(|| async { (StatusCode::NOT_FOUND, "this listener serves POST /as2 only\n") })
        .layer(middleware::from_fn_with_state(st.clone(), common))
        .with_state(st)
}

/// The maintenance listener's router: login and requests, then, behind the
/// session guard, the scoped operations and read-only FHIR.
pub fn maint_router(st: AppState) -> Router {
    let guarded = crate::maintenance::session_routes()
        .merge(crate::fhir::routes())
        .layer(middleware::from_fn_with_state(st.clone(), crate::maintenance::guard));
    crate::maintenance::listener_routes()
        .merge(guarded)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "not-found", "message": "not available to remote maintenance"})),
            )
        })
        .layer(middleware::from_fn_with_state(st.clone(), common))
        .with_state(st)
}

fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| {
            mamori_audit::merkle::to_hex(&mamori_store::accounts::random_bytes::<8>().unwrap_or_default())
        })
}

async fn common(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let rid = request_id(&req);
    let mode = st.mode.get();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    req.extensions_mut().insert(RequestId(rid.clone()));
    req.extensions_mut().insert(RequestMode(mode));
    let mutating_ops = method != axum::http::Method::GET && req.uri().path().starts_with("/api/");
    let mut resp = next.run(req).await;
    if mutating_ops && resp.status().is_success() {
        // Accounts, tokens or roles may have changed: forget cached tokens.
        st.tokens.invalidate();
    }
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&mode.header_value()) {
        h.insert(HeaderName::from_static("mamori-mode"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    if let Some(n) = st.node() {
        if let Ok(v) = HeaderValue::from_str(&format!("standalone; node={n}")) {
            h.insert(HeaderName::from_static("mamori-node"), v);
        }
    }
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let status = resp.status().as_u16();
    st.metrics.observe(status, micros);
    tracing::info!(request_id = %rid, %method, route = %route, status, ms = micros as f64 / 1000.0, "request");
    resp
}

async fn healthz(State(st): State<AppState>) -> Response {
    let size = st.store.read(|c| mamori_store::audit_log::size(c)).await;
    match size {
        Ok(n) => {
            let backend = match st.store.backend() {
                mamori_store::sql::Backend::Sqlite => "sqlite",
                mamori_store::sql::Backend::Postgres => "postgres",
            };
            Json(json!({
                "status": "ok",
                "mode": st.mode.get().header_value(),
                "audit_tree_size": n,
                "backend": backend,
                "leader": st.is_leader(),
            }))
            .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable"}))).into_response()
        }
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let size = st.store.read(|c| mamori_store::audit_log::size(c)).await.unwrap_or(0);
    let emergency = u64::from(!st.mode.get().is_normal());
    let body = st.metrics.render(&[
        ("mamori_audit_tree_size", "Number of events in the audit log.", size),
        ("mamori_emergency_declared", "1 while an emergency (or drill) is declared.", emergency),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
