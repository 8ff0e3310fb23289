//! `/api/v1/partners`, `/api/v1/exchange/*`, and `POST /as2` on the AS2
//! listener.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use mamori_exchange::mime::Headers;
use mamori_exchange::partner::{Partner, Status};
use mamori_service::exchange::inbound::{self, As2Request, PeerCerts};
use mamori_service::exchange::{partners, send};
use mamori_service::records::parse_etag;
use mamori_service::{ServiceError, Services};
use serde::Deserialize;
use serde_json::json;

use crate::http::{accepted, json_body, ok, read_body, ApiError, ApiResult, Caller, PeerAddr, JSON_LIMIT};

/// The routes of the main listener.
pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/api/v1/partners", get(list_partners).post(register))
        .route("/api/v1/partners/{id}", get(show_partner).put(update))
        .route("/api/v1/partners/{id}/suspend", post(suspend))
        .route("/api/v1/partners/{id}/activate", post(activate))
        .route("/api/v1/exchange/identity", get(identity))
        .route("/api/v1/exchange/messages", get(messages).post(send_documents))
        .route("/api/v1/exchange/messages/{id}", get(message))
        .route("/api/v1/exchange/ledger", get(ledger))
        .route("/api/v1/exchange/inbound", get(inbound_list))
        .route("/api/v1/exchange/inbound/{message}", get(inbound_show))
        .route("/api/v1/exchange/inbound/{message}/match", post(inbound_file))
        .route("/api/v1/exchange/quarantine", get(quarantine))
}

/// The AS2 listener's one route.
pub(crate) fn as2_routes() -> Router<Services> {
    Router::new().route("/as2", post(receive))
}

async fn list_partners(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(json!({"partners": partners::list(&svc, &c).await?}))
}

async fn show_partner(State(svc): State<Services>, c: Caller, Path(id): Path<String>) -> ApiResult {
    ok(partners::show(&svc, &c, &id).await?)
}

async fn partner_body(body: Body) -> Result<Partner, ServiceError> {
    let b = read_body(body, JSON_LIMIT).await?;
    serde_json::from_slice(&b).map_err(|e| ServiceError::invalid("", format!("invalid partner registration: {e}")))
}

fn saved(s: partners::Saved, status: StatusCode) -> ApiResult {
    let etag = format!("W/\"{}\"", s.version);
    let mut r = (status, axum::Json(s)).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(HeaderName::from_static("etag"), v);
    }
    Ok(r)
}

async fn register(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let p = partner_body(body).await;
    saved(partners::save(&svc, &c, None, p, None).await?, StatusCode::CREATED)
}

async fn update(
    State(svc): State<Services>,
    c: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let expected = match headers
        .get("if-match")
        .map(|v| v.to_str().map_err(|_| ServiceError::invalid("If-Match", "not ASCII")).and_then(parse_etag))
    {
        None => None,
        Some(Ok(n)) => Some(i64::try_from(n).unwrap_or(i64::MAX)),
        Some(Err(e)) => return Err(ApiError(svc.refused(&c, "partner-update", e).await)),
    };
    let p = partner_body(body).await;
    saved(partners::save(&svc, &c, Some(id), p, expected).await?, StatusCode::OK)
}

async fn suspend(State(svc): State<Services>, c: Caller, Path(id): Path<String>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    ok(partners::set_status(&svc, &c, &id, req, Status::Suspended).await?)
}

async fn activate(State(svc): State<Services>, c: Caller, Path(id): Path<String>, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    ok(partners::set_status(&svc, &c, &id, req, Status::Active).await?)
}

async fn identity(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(partners::identity(&svc, &c).await?)
}

async fn send_documents(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let limit = svc.cfg.exchange.max_message_bytes;
    let req = match read_body(body, limit).await {
        Ok(b) => serde_json::from_slice::<send::Send>(&b)
            .map_err(|e| ServiceError::invalid("", format!("invalid request body: {e}"))),
        Err(e) => Err(e),
    };
    accepted(send::send(&svc, &c, req).await?)
}

async fn messages(State(svc): State<Services>, c: Caller, Query(q): Query<send::MessageFilter>) -> ApiResult {
    ok(json!({"messages": send::list(&svc, &c, q).await?}))
}

async fn message(State(svc): State<Services>, c: Caller, Path(id): Path<String>) -> ApiResult {
    ok(send::show(&svc, &c, &id).await?)
}

async fn ledger(State(svc): State<Services>, c: Caller, Query(q): Query<send::LedgerQuery>) -> ApiResult {
    let (ct, body) = send::ledger(&svc, &c, q).await?;
    Ok(([("content-type", ct)], body).into_response())
}

#[derive(Deserialize)]
struct StateQ {
    state: Option<String>,
}

async fn inbound_list(State(svc): State<Services>, c: Caller, Query(q): Query<StateQ>) -> ApiResult {
    ok(json!({"inbound": inbound::list(&svc, &c, q.state).await?}))
}

async fn inbound_show(State(svc): State<Services>, c: Caller, Path(message): Path<String>) -> ApiResult {
    ok(inbound::show(&svc, &c, &message).await?)
}

async fn inbound_file(State(svc): State<Services>, c: Caller, Path(message): Path<String>, body: Body) -> ApiResult {
    let req: inbound::FileInbound = json_body(&svc, &c, body).await?;
    let patient = req.patient.clone();
    let doc = inbound::file(&svc, &c, &message, req).await?;
    ok(json!({"message": message, "document": format!("DocumentReference/{doc}"), "patient": patient}))
}

async fn quarantine(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(json!({"quarantine": inbound::quarantine_list(&svc, &c).await?}))
}

/// `POST /as2`: an AS2 message or asynchronous receipt from a partner.
async fn receive(
    State(svc): State<Services>,
    Extension(peer): Extension<PeerCerts>,
    addr: Option<Extension<PeerAddr>>,
    hm: HeaderMap,
    body: Body,
) -> Response {
    let max = svc.cfg.exchange.max_message_bytes;
    let mut headers = Headers::default();
    for (k, v) in &hm {
        headers.push(k.as_str(), String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let declared = headers.get("content-length").and_then(|v| v.trim().parse::<usize>().ok());
    let body = match (declared, axum::body::to_bytes(body, max).await) {
        (Some(n), _) if n > max => None,
        (_, Ok(b)) => Some(b.to_vec()),
        // A sender too slow to finish within the body timeout sent no message.
        (_, Err(e)) if crate::limits::is_body_timeout(&e) => {
            return (StatusCode::REQUEST_TIMEOUT, e.to_string()).into_response();
        }
        (_, Err(_)) => None,
    };
    let req = As2Request { addr: addr.map(|a| a.0 .0.ip().to_string()), peer, headers, body };
    let answer = inbound::receive(&svc, req).await;
    let mut r =
        (StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), answer.body).into_response();
    for (k, v) in answer.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}
