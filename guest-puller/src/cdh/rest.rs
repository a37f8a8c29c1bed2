//! The pod-facing resource endpoint (`--rest 127.0.0.1:8006`), api-server-rest's
//! path: `GET /cdh/resource/<repo>/<type>/<tag>` answers the KBS resource's
//! bytes. Only loopback peers are served (403 otherwise), so a workload reads its
//! secrets without ever holding a token; answers come through the hub's short
//! in-memory cache.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use kbs_client::KbsErrorKind;

use super::hub::{ErrorKind, Hub};

/// Starts serving on `listener`; runs until the task is dropped.
pub async fn serve(hub: Arc<Hub>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let app = Router::new()
        .route("/cdh/resource/{repo}/{ty}/{tag}", get(resource))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: GET /cdh/resource/<repo>/<type>/<tag>\n") })
        .with_state(hub);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
}

async fn resource(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath((repo, ty, tag)): UrlPath<(String, String, String)>,
) -> Response {
    if !peer.ip().is_loopback() && !peer.ip().to_canonical().is_loopback() {
        tracing::warn!(%peer, "REST: refused a non-loopback peer");
        return (StatusCode::FORBIDDEN, "forbidden: loopback peers only\n").into_response();
    }
    let uri = format!("kbs:///{repo}/{ty}/{tag}");
    match hub.get_resource(&uri).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes.to_vec()).into_response(),
        Err(e) => {
            let status = http_status(e.kind());
            let message = e.message();
            tracing::warn!(
                resource = %uri,
                error = %message,
                error_chain = super::chain_field(|| e.chain()),
                "REST: resource request failed"
            );
            (status, format!("{message}\n")).into_response()
        }
    }
}

/// The HTTP status for a failed call: a table over the hub's [`ErrorKind`] (the KBS
/// failing or unreachable is the gateway's fault, 502).
fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::FailedPrecondition | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Kbs(KbsErrorKind::NotFound) | ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Kbs(KbsErrorKind::Denied) | ErrorKind::Denied => StatusCode::FORBIDDEN,
        ErrorKind::Kbs(_) => StatusCode::BAD_GATEWAY,
        ErrorKind::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
