//! One ttRPC request frame decoded the way the daemon sees it: the frame
//! header and payload read by the `ttrpc` crate's own reader (the one the
//! server runs), the `ttrpc.Request` envelope, then the CDH message for its
//! service and method, and the request's first checks (bundle path, image
//! reference, resource path, sealed secret). For tests and the fuzz target.

use std::path::Path;

use protobuf::Message;

use super::bundle;
use super::pb::{api, keyprovider as kp};
use super::sealed;

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame: {0}")]
    Frame(String),
    #[error("frame type {0} is not a request")]
    NotRequest(u8),
    #[error("request envelope: {0}")]
    Envelope(String),
    #[error("unknown method {service}/{method}")]
    Unknown { service: String, method: String },
    #[error("{method} payload: {reason}")]
    Payload { method: &'static str, reason: String },
}

/// A decoded call (only what tests look at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    PullImage { image_url: String, bundle_path: String, checks: Result<(), String> },
    GetResource { path: String, checks: Result<(), String> },
    UnsealSecret { checks: Result<(), String> },
    SecureMount { volume_type: String },
    KeyProvider { unwrap: bool, len: usize },
}

fn payload<M: Message>(method: &'static str, bytes: &[u8]) -> Result<M, FrameError> {
    M::parse_from_bytes(bytes).map_err(|e| FrameError::Payload { method, reason: e.to_string() })
}

/// Decodes the first frame of `data`.
pub async fn decode(data: &[u8]) -> Result<Call, FrameError> {
    let msg =
        ttrpc::proto::GenMessage::read_from(data).await.map_err(|e| FrameError::Frame(format!("{e:?}")))?;
    if msg.header.type_ != ttrpc::proto::MESSAGE_TYPE_REQUEST {
        return Err(FrameError::NotRequest(msg.header.type_));
    }
    let req =
        ttrpc::Request::parse_from_bytes(&msg.payload).map_err(|e| FrameError::Envelope(e.to_string()))?;
    let root = Path::new(bundle::DEFAULT_BUNDLE_ROOT);
    Ok(match (req.service.as_str(), req.method.as_str()) {
        ("api.ImagePullService", "PullImage") => {
            let r: api::ImagePullRequest = payload("PullImage", &req.payload)?;
            let checks = bundle::check_bundle_path(root, &r.bundle_path)
                .and_then(|_| bundle::docker_reference(&r.image_url))
                .map(|_| ())
                .map_err(|e| report::line(&e));
            Call::PullImage { image_url: r.image_url, bundle_path: r.bundle_path, checks }
        }
        ("api.GetResourceService", "GetResource") => {
            let r: api::GetResourceRequest = payload("GetResource", &req.payload)?;
            let checks =
                r.ResourcePath.parse::<kbs_client::ResourceUri>().map(|_| ()).map_err(|e| report::line(&e));
            Call::GetResource { path: r.ResourcePath, checks }
        }
        ("api.SealedSecretService", "UnsealSecret") => {
            let r: api::UnsealSecretInput = payload("UnsealSecret", &req.payload)?;
            let checks = sealed::parse(&r.secret)
                .and_then(|s| sealed::interpret(&s.payload))
                .map(|_| ())
                .map_err(|e| report::line(&e));
            Call::UnsealSecret { checks }
        }
        ("api.SecureMountService", "SecureMount") => {
            let r: api::SecureMountRequest = payload("SecureMount", &req.payload)?;
            Call::SecureMount { volume_type: r.volume_type }
        }
        ("keyprovider.KeyProviderService", m @ ("WrapKey" | "UnWrapKey")) => {
            let r: kp::KeyProviderKeyWrapProtocolInput = payload("KeyProvider", &req.payload)?;
            let len = r.KeyProviderKeyWrapProtocolInput.len();
            let _ = keyprovider::protocol::KeyProviderInput::from_slice(&r.KeyProviderKeyWrapProtocolInput)
                .and_then(|i| i.into_request());
            Call::KeyProvider { unwrap: m == "UnWrapKey", len }
        }
        (s, m) => {
            return Err(FrameError::Unknown {
                service: s.chars().take(80).collect(),
                method: m.chars().take(80).collect(),
            })
        }
    })
}

/// Encodes a request frame (stream id 1) for `service`/`method`; tests use it
/// to check the wire identity against [`decode`].
pub fn encode(service: &str, method: &str, body: &impl Message) -> Result<Vec<u8>, FrameError> {
    let mut req = ttrpc::Request::new();
    req.service = service.to_owned();
    req.method = method.to_owned();
    req.payload = body.write_to_bytes().map_err(|e| FrameError::Envelope(e.to_string()))?;
    let payload = req.write_to_bytes().map_err(|e| FrameError::Envelope(e.to_string()))?;
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::Frame("too long".into()))?;
    let mut out = Vec::with_capacity(10 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.push(ttrpc::proto::MESSAGE_TYPE_REQUEST);
    out.push(0);
    out.extend_from_slice(&payload);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn wire_identity_and_field_numbers() {
        let mut r = api::ImagePullRequest::new();
        r.image_url = "registry.example/app@sha256:00".into();
        r.bundle_path = "/run/kata-containers/c1".into();
        let bytes = r.write_to_bytes().unwrap();
        // Field 1 (string) then field 2 (string): tags 0x0a and 0x12, as CoCo's proto.
        assert_eq!(bytes[0], 0x0a);
        assert_eq!(bytes[2 + r.image_url.len()], 0x12);
        let frame = encode("api.ImagePullService", "PullImage", &r).unwrap();
        match block(decode(&frame)).unwrap() {
            Call::PullImage { image_url, bundle_path, checks } => {
                assert_eq!(image_url, r.image_url);
                assert_eq!(bundle_path, r.bundle_path);
                assert!(checks.is_ok(), "{checks:?}");
            }
            other => panic!("{other:?}"),
        }
        let mut g = api::GetResourceRequest::new();
        g.ResourcePath = "kbs:///default/key/1".into();
        assert_eq!(g.write_to_bytes().unwrap()[0], 0x0a);
        let frame = encode("api.GetResourceService", "GetResource", &g).unwrap();
        assert!(matches!(block(decode(&frame)).unwrap(), Call::GetResource { checks: Ok(()), .. }));
        let mut s = api::SecureMountRequest::new();
        s.mount_point = "/m".into();
        assert_eq!(s.write_to_bytes().unwrap()[0], 0x22, "mount_point is field 4");
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        assert!(block(decode(&[])).is_err());
        assert!(block(decode(&[0, 0, 0, 4, 0, 0, 0, 1, 1, 0, 0xff])).is_err(), "short payload");
        assert!(block(decode(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0])).is_err(), "oversized");
        assert!(matches!(block(decode(&[0, 0, 0, 0, 0, 0, 0, 1, 2, 0])), Err(FrameError::NotRequest(2))));
        let frame = encode("api.Nope", "X", &api::GetResourceRequest::new()).unwrap();
        assert!(matches!(block(decode(&frame)), Err(FrameError::Unknown { .. })));
    }
}
