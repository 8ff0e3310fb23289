//! The operations API (`/api/v1`): thin handlers that extract the
//! request, call one use case of `mamori-service` and render its answer.

mod accounts;
mod apps;
mod audit;
mod bcp;
mod compliance;
mod continuity;
mod emergency;
mod exchange;
pub(crate) mod maintenance;

use axum::Router;
use mamori_service::Services;

pub(crate) use exchange::as2_routes;

/// Every operations API route of the main listener.
pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .merge(accounts::routes())
        .merge(apps::routes())
        .merge(audit::routes())
        .merge(compliance::routes())
        .merge(bcp::routes())
        .merge(continuity::routes())
        .merge(emergency::routes())
        .merge(exchange::routes())
        .merge(maintenance::routes())
}
