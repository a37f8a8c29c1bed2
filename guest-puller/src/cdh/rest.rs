//! The pod-facing endpoint (`--rest 127.0.0.1:8006`), api-server-rest's paths:
//! `GET /cdh/resource/<repo>/<type>/<tag>` answers the KBS resource's bytes;
//! `GET /aa/token?token_type=kbs` and `GET /aa/evidence?runtime_data=…` (with
//! `--rest-attestation`) answer as attestation-agent does (see [`super::aa`]). Only loopback peers are served (403 otherwise), so a workload reads its
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

/// What the endpoint serves beyond `/cdh/resource`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestOptions {
    /// Serve `/cdh/resource` (api-server-rest's `resource` feature).
    pub resource: bool,
    /// Serve `/aa/token` and `/aa/evidence` (api-server-rest's `attestation` feature).
    pub attestation: bool,
    /// `/aa/token` also carries the TEE private key (`tee_keypair`), as
    /// attestation-agent's token does: the workload can then read KBS answers itself.
    pub tee_key: bool,
}

impl RestOptions {
    /// api-server-rest's `--features` (`resource`, `attestation`, `all`); `/cdh/…` is
    /// served unless only `attestation` is asked for.
    pub fn from_features(features: &str, tee_key: bool) -> Self {
        RestOptions {
            resource: features != "attestation",
            attestation: features == "attestation" || features == "all",
            tee_key,
        }
    }
}

/// A query string longer than this is refused (400): the longest valid one carries
/// 64 bytes of runtime data, percent-encoded.
const MAX_QUERY: usize = 1024;

#[derive(Clone)]
struct Rest {
    hub: Arc<Hub>,
    opts: RestOptions,
}

/// Starts serving on `listener` (`/cdh/resource` only); runs until the task is dropped.
pub async fn serve(hub: Arc<Hub>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_with(hub, listener, RestOptions { resource: true, ..RestOptions::default() }).await
}

/// Starts serving on `listener` as `opts` says; runs until the task is dropped.
pub async fn serve_with(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    opts: RestOptions,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/cdh/resource/{repo}/{ty}/{tag}", get(resource))
        .route("/aa/token", get(aa_token))
        .route("/aa/evidence", get(aa_evidence))
        .fallback(|| async { (StatusCode::NOT_FOUND, "URL NOT FOUND") })
        .with_state(Rest { hub, opts });
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
}

fn forbidden(peer: SocketAddr) -> Option<Response> {
    if peer.ip().is_loopback() || peer.ip().to_canonical().is_loopback() {
        return None;
    }
    tracing::warn!(%peer, "REST: refused a non-loopback peer");
    Some((StatusCode::FORBIDDEN, "forbidden: loopback peers only\n").into_response())
}

/// The query's pairs (decoded); `None` (api-server-rest's 400) when it is missing,
/// too long or malformed.
fn query_pairs(query: Option<&str>) -> Option<Vec<(String, String)>> {
    let q = query.filter(|q| q.len() <= MAX_QUERY)?;
    let uri = format!("/?{q}").parse::<axum::http::Uri>().ok()?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok().map(|axum::extract::Query(v)| v)
}

fn bad_request() -> Response {
    (StatusCode::BAD_REQUEST, "BAD REQUEST").into_response()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn aa_failure(what: &str, e: &super::aa::AaError) -> Response {
    let message = e.message();
    tracing::warn!(error = %message, "REST: {what} failed");
    let status = if e.is_bad_request() { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
    (status, format!("{message}\n")).into_response()
}

/// What every `/aa/*` request is refused for before it is read: a non-loopback
/// peer (403), or the attestation feature not enabled (api-server-rest's 404).
fn aa_refusal(rest: &Rest, peer: SocketAddr) -> Option<Response> {
    if let Some(r) = forbidden(peer) {
        return Some(r);
    }
    if !rest.opts.attestation {
        return Some((StatusCode::NOT_FOUND, "Attestation Feature Not Enabled").into_response());
    }
    None
}

/// `GET /aa/token?token_type=kbs`: the daemon's KBS token (never logged).
async fn aa_token(
    State(rest): State<Rest>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
) -> Response {
    if let Some(r) = aa_refusal(&rest, peer) {
        return r;
    }
    let Some(pairs) = query_pairs(uri.query()) else { return bad_request() };
    let Some(token_type) = param(&pairs, "token_type") else { return bad_request() };
    match super::aa::token(&rest.hub, token_type, rest.opts.tee_key).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes.to_vec()).into_response(),
        Err(e) => aa_failure("token request", &e),
    }
}

/// `GET /aa/evidence?runtime_data=…[&encoding=base64]`: fresh evidence whose report
/// data is the caller's bytes (UTF-8 as given, or base64url without padding).
async fn aa_evidence(
    State(rest): State<Rest>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
) -> Response {
    use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD};
    if let Some(r) = aa_refusal(&rest, peer) {
        return r;
    }
    let bad = bad_request;
    let Some(pairs) = query_pairs(uri.query()) else { return bad() };
    let Some(data) = param(&pairs, "runtime_data") else { return bad() };
    let data = match param(&pairs, "encoding") {
        None => data.as_bytes().to_vec(),
        Some("base64") => match BASE64_URL_SAFE_NO_PAD.decode(data) {
            Ok(d) => d,
            Err(_) => return bad(),
        },
        Some(_) => return bad(),
    };
    match super::aa::evidence(&rest.hub, &data).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => aa_failure("evidence request", &e),
    }
}

async fn resource(
    State(rest): State<Rest>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath((repo, ty, tag)): UrlPath<(String, String, String)>,
) -> Response {
    if let Some(r) = forbidden(peer) {
        return r;
    }
    if !rest.opts.resource {
        return (StatusCode::NOT_FOUND, "Resource Feature Not Enabled").into_response();
    }
    let hub = rest.hub;
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
