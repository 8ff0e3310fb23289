//! The routers and the middleware every request passes through: request
//! id, the mode snapshot and `Mamori-Mode` header, a tracing span per
//! request (request id, route, mode) so that a logged failure ties to its
//! request, small request bodies read before the handler, security
//! headers, metrics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mamori_service::{jobs, Services};
use serde_json::json;
use tracing::Instrument;

use crate::http::{RequestId, RequestMode};

/// The main listener's router: the APIs and the web UI.
pub fn router(svc: Services) -> Router {
    let ui = crate::ui::routes().layer(middleware::from_fn(crate::ui::security_headers));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/livez", get(|| async { Json(json!({"status": "alive"})) }))
        .route("/metrics", get(metrics))
        .merge(crate::fhir::routes())
        .merge(crate::api::routes())
        .merge(ui)
        .fallback(|| async {
            (StatusCode::NOT_FOUND, Json(json!({"error": "not-found", "message": "no such endpoint"})))
        })
        .layer(middleware::from_fn_with_state(svc.clone(), common))
        .with_state(svc)
}

/// The AS2 listener's router: only `POST /as2`, with the same middleware.
pub fn as2_router(svc: Services) -> Router {
    crate::api::as2_routes()
        .fallback(|| async { (StatusCode::NOT_FOUND, "this listener serves POST /as2 only\n") })
        .layer(middleware::from_fn_with_state(svc.clone(), common))
        .with_state(svc)
}

/// The maintenance listener's router: login and requests, then, behind the
/// session guard, the scoped operations and read-only FHIR.
pub fn maint_router(svc: Services) -> Router {
    let guarded = crate::api::maintenance::session_routes()
        .merge(crate::fhir::routes())
        .layer(middleware::from_fn_with_state(svc.clone(), crate::api::maintenance::guard));
    crate::api::maintenance::listener_routes()
        .merge(guarded)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "not-found", "message": "not available to remote maintenance"})),
            )
        })
        .layer(middleware::from_fn_with_state(svc.clone(), common))
        .with_state(svc)
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

async fn common(State(svc): State<Services>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let rid = request_id(&req);
    let mode = svc.mode.get();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    req.extensions_mut().insert(RequestId(rid.clone()));
    req.extensions_mut().insert(RequestMode(mode));
    let span = tracing::info_span!("request", request_id = %rid, %method, route = %route, mode = %mode.header_value());
    let req = crate::limits::read_small_body(req).instrument(span.clone()).await;
    let mut resp = next.run(req).instrument(span.clone()).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&mode.header_value()) {
        h.insert(HeaderName::from_static("mamori-mode"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    if let Some(n) = svc.node() {
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
    svc.metrics.observe(status, micros);
    let log = &svc.cfg.log;
    let ms = micros as f64 / 1000.0;
    let slow = micros >= log.slow_ms.saturating_mul(1000);
    match log.access.as_str() {
        "all" => span.in_scope(|| tracing::info!(target: "mamori::access", status, ms, "request")),
        "off" => {}
        mode => {
            if status >= 500 {
                span.in_scope(|| tracing::warn!(target: "mamori::access", status, ms, "request failed"));
            } else if slow {
                span.in_scope(|| tracing::warn!(target: "mamori::access", status, ms, "slow request"));
            } else if mode == "sampled" && svc.metrics.count() % log.sample == 0 {
                span.in_scope(|| tracing::info!(target: "mamori::access", status, ms, "request (sampled)"));
            }
        }
    }
    resp
}

async fn healthz(State(svc): State<Services>) -> Response {
    match jobs::health(&svc).await {
        Ok(h) if h.problems.is_empty() => Json(h).into_response(),
        Ok(h) => (StatusCode::SERVICE_UNAVAILABLE, Json(h)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable"}))).into_response()
        }
    }
}

/// Ready to take requests: the store answers and can be written. (The
/// audit self-check does not make a server unready: it is reported by
/// `/healthz` and raised as an alert.)
async fn readyz(State(svc): State<Services>) -> Response {
    match jobs::ready(&svc).await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(problem) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "problem": problem})))
            .into_response(),
    }
}

async fn metrics(State(svc): State<Services>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], jobs::metrics_text(&svc).await).into_response()
}
