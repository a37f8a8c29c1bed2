//! The provider side: one request handler ([`KeyProviderCore`]) shared by the gRPC
//! service (`serve`) and the cmd protocol (`exec`).
//!
//! Wrap: `keywrapparams.ec.Parameters[<name>]` holds coco_keyprovider parameters
//! (`keyid=..::keypath=..`, or `Enabled`); the options are sealed into a CoCo
//! AnnotationPacket. Unwrap: the annotation is a packet; its KEK comes from the KBS
//! after one attestation and is cached for a short TTL.
//! Every error becomes a gRPC status (or an exit code) in [`status_code`] alone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use futures::Stream;
use kbs_client::{AdminClient, KbsErrorKind};
use ocicrypt::keywrap::{KeyUnwrapper, WrapError};
use tokio::sync::Semaphore;
use tonic::{Code, Request as GrpcRequest, Response, Status};
use zeroize::Zeroizing;

use crate::kek::{KbsKekUnwrapper, KbsKekWrapper, KekError, KeyPathRule, WrapParams, PROVIDER_NAME};
use crate::packet::{AnnotationPacket, PacketError};
use crate::pb::key_provider_service_server::{KeyProviderService, KeyProviderServiceServer};
use crate::pb::{KeyProviderKeyWrapProtocolInput, KeyProviderKeyWrapProtocolOutput};
use crate::protocol::{KeyProviderInput, KeyProviderOutput, Op, ProtocolError, Request};

/// Default cap on one request document.
pub const DEFAULT_MAX_REQUEST: usize = 1 << 20;
/// Default number of requests handled at once.
pub const DEFAULT_MAX_CONCURRENT: usize = 256;

/// Why a request failed. Messages name the field or the peer; never key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request document was wrong.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The JSON field (dotted path) that was wrong.
        field: String,
        /// What was wrong.
        reason: String,
    },
    /// The request was larger than the limit.
    #[error("request of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size seen (at least).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// This provider was not started with what the request needs.
    #[error("not configured: {0}")]
    NotConfigured(String),
    /// Wrapping or unwrapping with a KBS-held KEK failed.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// A local (JWE) unwrapper failed.
    #[error("local key unwrap failed")]
    Local(#[source] WrapError),
}

impl From<ProtocolError> for ServiceError {
    fn from(e: ProtocolError) -> Self {
        let field = match &e {
            ProtocolError::Json(_) => "request JSON",
            ProtocolError::UnknownOp(_) => "op",
            ProtocolError::Missing(f) => f,
        };
        ServiceError::InvalidArgument { field: field.into(), reason: e.to_string() }
    }
}

/// The one place that decides how an error is reported: gRPC code (and, through
/// [`exit_code`], the cmd protocol's exit status).
pub fn status_code(e: &ServiceError) -> Code {
    match e {
        ServiceError::InvalidArgument { .. } => Code::InvalidArgument,
        ServiceError::TooLarge { .. } => Code::ResourceExhausted,
        ServiceError::NotConfigured(_) => Code::FailedPrecondition,
        ServiceError::Kek(k) => match k {
            KekError::Params(_) | KekError::KeyPath { .. } => Code::InvalidArgument,
            KekError::Packet(PacketError::Auth(_)) => Code::InvalidArgument,
            KekError::Packet(PacketError::KekLength(_)) => Code::FailedPrecondition,
            KekError::Packet(_) => Code::InvalidArgument,
            KekError::KekFile { .. }
            | KekError::NoAdmin(_)
            | KekError::NoReadBack { .. }
            | KekError::NotAKek { .. } => Code::FailedPrecondition,
            KekError::Contended(_) => Code::Aborted,
            KekError::Kbs(kbs) => match kbs.kind() {
                KbsErrorKind::Unavailable => Code::Unavailable,
                KbsErrorKind::NotFound => Code::NotFound,
                KbsErrorKind::Denied => Code::PermissionDenied,
                KbsErrorKind::InvalidUri => Code::InvalidArgument,
                KbsErrorKind::Attester => Code::FailedPrecondition,
                _ => Code::Internal,
            },
        },
        ServiceError::Local(w) => match w {
            WrapError::Malformed { .. } => Code::InvalidArgument,
            WrapError::NoKey(_) => Code::NotFound,
            WrapError::Refused(_) => Code::PermissionDenied,
            WrapError::Unavailable(_) => Code::Unavailable,
            WrapError::Other(_) => Code::Internal,
            // A kind added later: an internal error until it is mapped here.
            _ => Code::Internal,
        },
    }
}

/// The gRPC status for an error: the code from [`status_code`], the message the
/// error's chain said once.
pub fn to_status(e: &ServiceError) -> Status {
    Status::new(status_code(e), report::line(e))
}

/// Exit status of `cloak-keyprovider exec` for an error.
pub fn exit_code(e: &ServiceError) -> i32 {
    match status_code(e) {
        Code::InvalidArgument => 2,
        Code::Unavailable => 3,
        Code::PermissionDenied => 4,
        Code::NotFound => 5,
        _ => 1,
    }
}

/// The JSON written on stderr by `exec` for an error: the code, the message (the
/// chain once, on one line) and the chain as a list.
pub fn error_json(e: &ServiceError) -> String {
    serde_json::json!({"error": {
        "code": format!("{:?}", status_code(e)),
        "message": report::line(e),
        "chain": report::chain(e),
    }})
    .to_string()
}

/// Handles keyprovider requests. Build once, share through `Arc`.
pub struct KeyProviderCore {
    name: String,
    admin: Option<Arc<AdminClient>>,
    kek_unwrapper: Option<Arc<KbsKekUnwrapper>>,
    local: Vec<Arc<dyn KeyUnwrapper>>,
    no_unwrap_reason: String,
    /// Which files a client's `keypath=` may name.
    keypath_rule: KeyPathRule,
    /// One wrapper per parameter string, so a generated KEK is registered once and
    /// every layer wrapped with the same `keyid` uses the same KEK.
    wrappers: Mutex<HashMap<String, Arc<KbsKekWrapper>>>,
}

impl std::fmt::Debug for KeyProviderCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyProviderCore").field("name", &self.name).finish_non_exhaustive()
    }
}

impl KeyProviderCore {
    /// A provider answering to `provider.attestation-agent`.
    pub fn new(admin: Option<Arc<AdminClient>>, kek_unwrapper: Option<Arc<KbsKekUnwrapper>>) -> Self {
        Self {
            name: PROVIDER_NAME.into(),
            admin,
            kek_unwrapper,
            local: Vec::new(),
            no_unwrap_reason: "no --kbs-url: cannot fetch KEKs".into(),
            keypath_rule: KeyPathRule::default(),
            wrappers: Mutex::new(HashMap::new()),
        }
    }

    /// Reads wrap parameters under `ec.Parameters[name]` instead of `attestation-agent`.
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Which files a client's `keypath=` may name (default: any regular file).
    pub fn with_keypath_rule(mut self, rule: KeyPathRule) -> Self {
        self.keypath_rule = rule;
        self
    }

    /// What unwrap requests report when there is no KEK unwrapper.
    pub fn with_unwrap_disabled_reason(mut self, reason: &str) -> Self {
        self.no_unwrap_reason = reason.into();
        self
    }

    /// Adds a local unwrapper (e.g. JWE private keys) tried for annotations that are
    /// not AnnotationPackets.
    pub fn with_local_unwrapper(mut self, u: Arc<dyn KeyUnwrapper>) -> Self {
        self.local.push(u);
        self
    }

    /// Handles one request document and returns the answer document.
    pub async fn handle(&self, input: &[u8], expect: Option<Op>) -> Result<Vec<u8>, ServiceError> {
        let parsed = KeyProviderInput::from_slice(input)?;
        if let Some(op) = expect {
            if parsed.op != op.as_str() {
                return Err(ServiceError::InvalidArgument {
                    field: "op".into(),
                    reason: format!(
                        "{:?} sent to the {} call",
                        parsed.op.chars().take(32).collect::<String>(),
                        op.as_str()
                    ),
                });
            }
        }
        let out = match parsed.into_request()? {
            Request::Wrap { ec, optsdata } => {
                let field = format!("keywrapparams.ec.Parameters.{}", self.name);
                let params = ec.parameters.get(&self.name).and_then(|v| v.first()).ok_or_else(|| {
                    ServiceError::InvalidArgument { field: field.clone(), reason: "missing".into() }
                })?;
                let params = std::str::from_utf8(params.as_bytes())
                    .map_err(|_| ServiceError::InvalidArgument { field, reason: "not UTF-8".into() })?
                    .to_owned();
                let wrapper = self.wrapper_for(&params)?;
                KeyProviderOutput::wrapped(wrapper.wrap_packet(optsdata.as_bytes()).await?)
            }
            Request::Unwrap { annotation, .. } => {
                KeyProviderOutput::unwrapped(self.unwrap(annotation.as_bytes()).await?)
            }
        };
        out.to_vec().map_err(ServiceError::from)
    }

    fn wrapper_for(&self, params: &str) -> Result<Arc<KbsKekWrapper>, ServiceError> {
        let mut map = self.wrappers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get(params) {
            return Ok(w.clone());
        }
        let parsed: WrapParams = params.parse()?;
        let w = Arc::new(KbsKekWrapper::from_params(&parsed, self.admin.clone(), &self.keypath_rule)?);
        // Bounded: a client sending endless distinct parameters must not grow memory.
        if map.len() >= 1024 {
            map.clear();
        }
        map.insert(params.to_owned(), w.clone());
        Ok(w)
    }

    async fn unwrap(&self, annotation: &[u8]) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
        match AnnotationPacket::parse(annotation) {
            Ok(_) => {
                let u = self
                    .kek_unwrapper
                    .as_ref()
                    .ok_or_else(|| ServiceError::NotConfigured(self.no_unwrap_reason.clone()))?;
                Ok(u.unwrap_packet(annotation).await?)
            }
            Err(packet_err) => {
                let mut last = None;
                for u in &self.local {
                    match u.unwrap("jwe", annotation).await {
                        Ok(o) => return Ok(o),
                        Err(e) => last = Some(e),
                    }
                }
                match last {
                    Some(e) => Err(ServiceError::Local(e)),
                    None => Err(ServiceError::InvalidArgument {
                        field: "keyunwrapparams.annotation".into(),
                        reason: packet_err.to_string(),
                    }),
                }
            }
        }
    }
}

/// Limits of the gRPC server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request message.
    pub max_request: usize,
    /// Requests handled at once; more wait.
    pub max_concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_request: DEFAULT_MAX_REQUEST, max_concurrent: DEFAULT_MAX_CONCURRENT }
    }
}

/// The tonic service.
#[derive(Clone)]
pub struct GrpcService {
    core: Arc<KeyProviderCore>,
    permits: Arc<Semaphore>,
}

impl GrpcService {
    /// Wraps a core with a concurrency limit.
    pub fn new(core: Arc<KeyProviderCore>, limits: Limits) -> Self {
        Self { core, permits: Arc::new(Semaphore::new(limits.max_concurrent.max(1))) }
    }

    async fn call(
        &self,
        op: Op,
        body: Vec<u8>,
    ) -> Result<Response<KeyProviderKeyWrapProtocolOutput>, Status> {
        let _permit = self.permits.acquire().await.map_err(|_| Status::unavailable("shutting down"))?;
        match self.core.handle(&body, Some(op)).await {
            Ok(out) => Ok(Response::new(KeyProviderKeyWrapProtocolOutput {
                key_provider_key_wrap_protocol_output: out,
            })),
            Err(e) => {
                tracing::warn!(
                    op = op.as_str(),
                    code = ?status_code(&e),
                    error = %report::Line(&e),
                    "keyprovider request failed"
                );
                Err(to_status(&e))
            }
        }
    }
}

#[tonic::async_trait]
impl KeyProviderService for GrpcService {
    async fn wrap_key(
        &self,
        request: GrpcRequest<KeyProviderKeyWrapProtocolInput>,
    ) -> Result<Response<KeyProviderKeyWrapProtocolOutput>, Status> {
        self.call(Op::KeyWrap, request.into_inner().key_provider_key_wrap_protocol_input).await
    }

    async fn un_wrap_key(
        &self,
        request: GrpcRequest<KeyProviderKeyWrapProtocolInput>,
    ) -> Result<Response<KeyProviderKeyWrapProtocolOutput>, Status> {
        self.call(Op::KeyUnwrap, request.into_inner().key_provider_key_wrap_protocol_input).await
    }
}

/// Where `serve` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `host:port`.
    Tcp(SocketAddr),
    /// `unix:/path` or `unix:///path`.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self, ServerError> {
        if let Some(rest) = s.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(ServerError::Address(s.into()));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse().map(ListenAddr::Tcp).map_err(|_| ServerError::Address(s.into()))
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A bad `--grpc` value.
    #[error("invalid listen address {0:?}: expected host:port or unix:/path")]
    Address(String),
    /// Binding failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The transport failed.
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound listener (so callers can learn the port before serving).
pub enum Listener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// Unix socket, removed again when the server stops.
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`. A stale unix socket file is replaced.
    pub async fn bind(addr: &ListenAddr) -> Result<Self, ServerError> {
        match addr {
            ListenAddr::Tcp(a) => tokio::net::TcpListener::bind(a)
                .await
                .map(Listener::Tcp)
                .map_err(|source| ServerError::Bind { addr: a.to_string(), source }),
            ListenAddr::Unix(p) => {
                if let Ok(meta) = std::fs::symlink_metadata(p) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        let _ = std::fs::remove_file(p);
                    }
                }
                tokio::net::UnixListener::bind(p)
                    .map(|l| Listener::Unix(l, p.clone()))
                    .map_err(|source| ServerError::Bind { addr: p.display().to_string(), source })
            }
        }
    }

    /// The TCP address, if TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }
}

fn tcp_stream(l: tokio::net::TcpListener) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}

fn unix_stream(l: tokio::net::UnixListener) -> impl Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    futures::stream::unfold(l, |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) })
}

/// Serves the gRPC service until `shutdown` resolves, then drains in-flight calls.
pub async fn serve(
    listener: Listener,
    core: Arc<KeyProviderCore>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let svc = KeyProviderServiceServer::new(GrpcService::new(core, limits))
        .max_decoding_message_size(limits.max_request)
        .max_encoding_message_size(4 << 20);
    let builder =
        tonic::transport::Server::builder().max_concurrent_streams(Some(limits.max_concurrent as u32));
    match listener {
        Listener::Tcp(l) => {
            let mut b = builder;
            b.add_service(svc).serve_with_incoming_shutdown(tcp_stream(l), shutdown).await?;
        }
        Listener::Unix(l, path) => {
            let mut b = builder;
            let r = b.add_service(svc).serve_with_incoming_shutdown(unix_stream(l), shutdown).await;
            let _ = std::fs::remove_file(&path);
            r?;
        }
    }
    Ok(())
}

/// The cmd protocol: one request document in, one answer document out.
/// `input` beyond `max_request` is refused.
pub async fn exec_once(
    core: &KeyProviderCore,
    input: &[u8],
    max_request: usize,
) -> Result<Vec<u8>, ServiceError> {
    if input.len() > max_request {
        return Err(ServiceError::TooLarge { size: input.len(), limit: max_request });
    }
    core.handle(input, None).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Issue 27: gRPC Status messages and `exec`'s error JSON repeated each cause
    /// (`local key unwrap failed: no usable key: …` and the like, said twice once a
    /// printer walked the chain). The message is the chain once; codes are unchanged.
    #[test]
    fn keyprovider_status_message_says_each_cause_once() {
        let packet = PacketError::Auth("kbs:///default/kek/app".into());
        let cases: Vec<(ServiceError, Code, &str)> = vec![
            (
                ServiceError::Local(WrapError::NoKey(Box::new(std::io::Error::other(
                    "RSA-OAEP decryption failed",
                )))),
                Code::NotFound,
                "local key unwrap failed: no usable key: RSA-OAEP decryption failed",
            ),
            (
                ServiceError::Kek(KekError::Packet(packet)),
                Code::InvalidArgument,
                "AES-256-GCM authentication failed for kid kbs:///default/kek/app",
            ),
            (
                ServiceError::Kek(KekError::Kbs(kbs_client::KbsError::InvalidUri(
                    "needs three parts".into(),
                ))),
                Code::InvalidArgument,
                "invalid resource URI: needs three parts",
            ),
        ];
        for (e, code, says) in cases {
            assert_eq!(report::repeated_source(&e), None, "{}", report::line(&e));
            let status = to_status(&e);
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(status.message().contains(says), "{}", status.message());
            assert_eq!(report::repeated_clause(status.message()), None, "{}", status.message());
            let json: serde_json::Value = serde_json::from_str(&error_json(&e)).unwrap();
            assert_eq!(json["error"]["message"], status.message());
            assert_eq!(json["error"]["chain"], serde_json::json!(report::chain(&e)));
        }
    }

    #[tokio::test]
    async fn malformed_requests_name_the_field() {
        let core = KeyProviderCore::new(None, None);
        let cases: [(&[u8], &str); 5] = [
            (b"{nope", "request JSON"),
            (br#"{"op":"dance"}"#, "op"),
            (
                br#"{"op":"keywrap","keywrapparams":{"ec":{"Parameters":{}},"optsdata":"e30="}}"#,
                "keywrapparams.ec.Parameters.attestation-agent",
            ),
            (
                br#"{"op":"keyunwrap","keyunwrapparams":{"dc":null,"annotation":null}}"#,
                "keyunwrapparams.annotation",
            ),
            (
                br#"{"op":"keyunwrap","keyunwrapparams":{"annotation":"bm90IGEgcGFja2V0"}}"#,
                "keyunwrapparams.annotation",
            ),
        ];
        for (input, field) in cases {
            let e = core.handle(input, None).await.unwrap_err();
            assert_eq!(status_code(&e), Code::InvalidArgument, "{e}");
            assert!(e.to_string().contains(field), "{e} should name {field}");
            assert_eq!(exit_code(&e), 2);
        }
        let e = core
            .handle(br#"{"op":"keyunwrap","keyunwrapparams":{"annotation":"e30="}}"#, Some(Op::KeyWrap))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("op"));
    }

    #[tokio::test]
    async fn wrap_without_keypath_or_admin_is_refused() {
        let core = KeyProviderCore::new(None, None);
        let req = br#"{"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":["RW5hYmxlZA=="]},"DecryptConfig":{"Parameters":{}}},"optsdata":"e30="},"keyunwrapparams":{"dc":null,"annotation":null}}"#;
        let e = core.handle(req, None).await.unwrap_err();
        assert_eq!(status_code(&e), Code::FailedPrecondition);
        assert!(e.to_string().contains("admin"));
    }

    fn wrap_request(params: &str) -> Vec<u8> {
        use base64::Engine as _;
        let p = base64::engine::general_purpose::STANDARD.encode(params);
        format!(
            r#"{{"op":"keywrap","keywrapparams":{{"ec":{{"Parameters":{{"attestation-agent":["{p}"]}}}},"optsdata":"e30="}}}}"#
        )
        .into_bytes()
    }

    /// Issue 21, finding 3: `keypath=/etc/shadow` answered "KEK must be 32 bytes, got
    /// 698", so a client could probe any file's existence and size; `/dev/zero` was
    /// read until memory ran out.
    #[tokio::test]
    async fn keypath_probe_learns_nothing_about_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("shadow");
        std::fs::write(&big, [b'x'; 698]).unwrap();
        let sparse = dir.path().join("sparse");
        std::fs::File::create(&sparse).unwrap().set_len(1 << 40).unwrap();
        let core = KeyProviderCore::new(None, None);
        let mut texts = Vec::new();
        for path in
            [big.clone(), sparse, dir.path().join("missing"), "/dev/null".into(), dir.path().to_owned()]
        {
            let e =
                core.handle(&wrap_request(&format!("keypath={}", path.display())), None).await.unwrap_err();
            assert_eq!(status_code(&e), Code::InvalidArgument, "{e}");
            let text = e.to_string().replace(&path.display().to_string(), "PATH");
            assert!(!text.contains("698") && !text.contains("1099511627776"), "{text}");
            texts.push(text);
        }
        assert!(texts.iter().all(|t| t == &texts[0]), "answers differ by file: {texts:#?}");
    }

    /// A FIFO must be refused without waiting for a writer or reading from it.
    #[tokio::test]
    async fn keypath_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        // mkfifo(1) keeps unsafe code out of the tests.
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let core = KeyProviderCore::new(None, None);
        let req = wrap_request(&format!("keypath={}", fifo.display()));
        let e = tokio::time::timeout(std::time::Duration::from_secs(20), core.handle(&req, None))
            .await
            .expect("a FIFO keypath blocked the provider")
            .unwrap_err();
        assert_eq!(status_code(&e), Code::InvalidArgument, "{e}");
    }

    #[tokio::test]
    async fn keypath_dir_allows_only_files_inside_it() {
        let allowed = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let inside = allowed.path().join("kek");
        std::fs::write(&inside, [3u8; 32]).unwrap();
        let outside = other.path().join("kek");
        std::fs::write(&outside, [4u8; 32]).unwrap();
        let link = allowed.path().join("link-out");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let real = std::fs::canonicalize(allowed.path()).unwrap();
        let core = KeyProviderCore::new(None, None).with_keypath_rule(KeyPathRule::Under(real));
        let ok = core
            .handle(&wrap_request(&format!("keyid=kbs:///default/k/1::keypath={}", inside.display())), None)
            .await
            .unwrap();
        assert!(String::from_utf8(ok).unwrap().contains("keywrapresults"));
        for bad in [&outside, &link] {
            let e =
                core.handle(&wrap_request(&format!("keypath={}", bad.display())), None).await.unwrap_err();
            assert_eq!(status_code(&e), Code::InvalidArgument, "{e}");
            assert!(e.to_string().contains("inside"), "{e}");
        }
        let refused = KeyProviderCore::new(None, None).with_keypath_rule(KeyPathRule::Refused);
        let e =
            refused.handle(&wrap_request(&format!("keypath={}", inside.display())), None).await.unwrap_err();
        assert_eq!(status_code(&e), Code::InvalidArgument, "{e}");
    }

    #[tokio::test]
    async fn oversized_exec_input_is_refused() {
        let core = KeyProviderCore::new(None, None);
        let e = exec_once(&core, &[b' '; 100], 10).await.unwrap_err();
        assert_eq!(status_code(&e), Code::ResourceExhausted);
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "unix:///run/kp.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/kp.sock".into())
        );
        assert_eq!(
            "unix:/run/kp.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/kp.sock".into())
        );
        assert!(matches!("127.0.0.1:50000".parse::<ListenAddr>().unwrap(), ListenAddr::Tcp(_)));
        assert!("localhost".parse::<ListenAddr>().is_err());
    }
}
