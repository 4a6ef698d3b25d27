//! `GET /metrics`: the Prometheus scrape, behind the token unless `admin.public_metrics` is set.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AdminState;

/// What prometheus-client writes: the OpenMetrics text format (Prometheus reads it natively).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) fn routes(state: Arc<AdminState>) -> Router<Arc<AdminState>> {
    let routes = Router::new().route("/metrics", get(scrape));
    if state.public_metrics {
        routes
    } else {
        routes.route_layer(middleware::from_fn_with_state(state, super::require_token))
    }
}

/// The queue, hold and quota gauges are read from the scheduler now; the rest was counted as it happened.
async fn scrape(State(state): State<Arc<AdminState>>) -> Response {
    let stats = state.scheduler.stats();
    state.metrics.observe(&stats);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], state.metrics.encode()).into_response()
}
