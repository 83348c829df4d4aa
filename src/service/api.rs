//! The status API on the admin socket (`service::secrets`, root and group isboot only):
//! `GET /api/v1/status` and `GET /api/v1/clients`,
//! the same JSON as `isboot status --json` and `isboot list-clients --json`
//! ([`crate::config::report`]), from the running server's live view.

use crate::config::{ClientView, StatusView};
use crate::service::registry::StateRegistry;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Router, extract::State};
use std::sync::Arc;

/// The status API's routes.
pub fn router(registry: Arc<StateRegistry>) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/clients", get(clients))
        .with_state(registry)
}

/// Run `f` (it stats overlay files) off the executor.
async fn blocking<T: serde::Serialize + Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Json(v).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "status failed\n").into_response(),
    }
}

async fn status(State(reg): State<Arc<StateRegistry>>) -> Response {
    blocking(move || StatusView::of(&reg.current_state(), Some(&reg.status()))).await
}

async fn clients(State(reg): State<Arc<StateRegistry>>) -> Response {
    blocking(move || ClientView::all(&reg.current_state(), Some(&reg.status()))).await
}
