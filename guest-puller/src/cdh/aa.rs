//! CoCo attestation-agent's API over the daemon's one KBS session: the ttRPC
//! service kata-agent waits for on `attestation-agent.sock` (and CoCo's CDH and
//! api-server-rest call), and the logic behind the workload's `/aa/token` and
//! `/aa/evidence` on the REST endpoint.
//!
//! - `GetToken("kbs")`: `{"token":"<the daemon's KBS token>","tee_keypair":"<PEM>"}`, the
//!   token refreshed (re-attesting) when it expired. The private key is the daemon's
//!   TEE key, which the KBS encrypts every answer to: it is handed out only on the
//!   0600 socket (as attestation-agent does, for a CDH that decrypts KBS answers
//!   itself), never logged, and left out of the REST answer unless `--rest-tee-key`.
//! - `GetEvidence(RuntimeData)`: fresh evidence whose report data IS the caller's
//!   bytes (at most 64, zero-padded), as attestation-agent does.
//! - `GetTeeType`: the TEE's name as CoCo spells it (`snp`, `tdx`, `sample`).
//! - `BindInitData(Digest)`: compares the digest, zero-padded or truncated, with SNP
//!   `HOST_DATA` (32 bytes) or TDX `MRCONFIGID` (48 bytes) of a fresh report; on an
//!   Azure vTPM (`az-snp-vtpm`, `az-tdx-vtpm`) extends it into PCR 8 once, as
//!   attestation-agent does (a PCR 8 already holding other data is an error).
//! - `ExtendRuntimeMeasurement`: refused; cloak drives no runtime measurement register.

use std::path::Path;
use std::sync::Arc;

use base64::prelude::{Engine, BASE64_STANDARD};
use kbs_client::attester::Tee;
use kbs_client::{AttesterError, KbsClient, KbsError, KbsErrorKind};
use ttrpc::r#async::{Server, TtrpcContext};
use zeroize::Zeroizing;

use super::hub::Hub;
use super::pb::{attestation_agent as pb, attestation_agent_ttrpc as svc};
use super::server::ServeError;

/// Where kata-agent waits for attestation-agent's socket.
pub const DEFAULT_AA_SOCKET: &str =
    "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock";

/// Report data is at most this long (SNP and TDX take 64 bytes).
pub const MAX_RUNTIME_DATA: usize = 64;

/// An init-data digest is at most this long (SHA-512).
const MAX_DIGEST: usize = 64;

/// Why an attestation-agent call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AaError {
    #[error("no KBS is configured (--kbs URL or [kbc] url in cdh.toml), so cloak-cdh has no attester")]
    NoKbs,
    #[error("runtime data is {0} bytes; it is the report data itself, at most {MAX_RUNTIME_DATA} bytes")]
    RuntimeDataTooLong(usize),
    #[error("token type {0:?} is not supported (cloak-cdh hands out its KBS token: token_type=kbs)")]
    UnsupportedTokenType(String),
    #[error("getting the KBS token")]
    Token(#[source] KbsError),
    #[error("collecting evidence")]
    Evidence(#[source] AttesterError),
    #[error("encoding the token answer")]
    Encode(#[source] serde_json::Error),
    #[error("the {tee} evidence has no readable {field}")]
    BadEvidence { tee: &'static str, field: &'static str },
    #[error("init-data digest is {0} bytes; a sha256/384/512 digest is at most {MAX_DIGEST}")]
    DigestTooLong(usize),
    #[error("the init-data digest does not match the report's {field} (the host launched this guest with other init-data)")]
    InitDataMismatch { field: &'static str },
    #[error("BindInitData: the {0} TEE has no init-data field cloak-cdh can compare or bind (SNP HOST_DATA, TDX MRCONFIGID, Azure vTPM PCR 8)")]
    InitDataUnsupported(String),
    #[error("ExtendRuntimeMeasurement: cloak-cdh extends no runtime measurement register on this {0} TEE")]
    NoRuntimeMeasurement(String),
}

impl AaError {
    /// The ttRPC status code of this error.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            AaError::NoKbs | AaError::InitDataMismatch { .. } => Code::FAILED_PRECONDITION,
            AaError::RuntimeDataTooLong(_) | AaError::UnsupportedTokenType(_) | AaError::DigestTooLong(_) => {
                Code::INVALID_ARGUMENT
            }
            AaError::Token(e) => match e.kind() {
                KbsErrorKind::Unavailable => Code::UNAVAILABLE,
                KbsErrorKind::Denied => Code::PERMISSION_DENIED,
                _ => Code::INTERNAL,
            },
            AaError::Evidence(_) | AaError::BadEvidence { .. } | AaError::Encode(_) => Code::INTERNAL,
            AaError::InitDataUnsupported(_) | AaError::NoRuntimeMeasurement(_) => Code::UNIMPLEMENTED,
        }
    }

    /// Whether the request itself was wrong (HTTP 400 on the REST endpoint).
    pub fn is_bad_request(&self) -> bool {
        self.code() == ttrpc::Code::INVALID_ARGUMENT
    }

    /// What the caller reads: the chain once.
    pub fn message(&self) -> String {
        report::line(self)
    }
}

/// The TEE's name as CoCo's kbs-types spells it (`snp`, `tdx`, `sample`, ...).
pub fn tee_name(tee: Tee) -> String {
    serde_json::to_value(tee)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{tee:?}").to_lowercase())
}

fn client(hub: &Hub) -> Result<&KbsClient, AaError> {
    hub.kbs_client().ok_or(AaError::NoKbs)
}

/// `GetToken`: the daemon's current KBS token (attesting first if it has none or it
/// expired) as attestation-agent answers it. `with_key` adds the TEE private key
/// (`tee_keypair`). The answer is secret: never log it.
pub async fn token(hub: &Hub, token_type: &str, with_key: bool) -> Result<Zeroizing<Vec<u8>>, AaError> {
    if token_type != "kbs" {
        return Err(AaError::UnsupportedTokenType(token_type.chars().take(64).collect()));
    }
    let (token, pem) = client(hub)?.token_and_key().await.map_err(AaError::Token)?;
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        token: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        tee_keypair: Option<&'a str>,
    }
    let answer = Answer { token: token.expose(), tee_keypair: with_key.then_some(pem.as_str()) };
    let mut out = Zeroizing::new(Vec::with_capacity(token.expose().len() + pem.len() + 64));
    serde_json::to_writer(&mut *out, &answer).map_err(AaError::Encode)?;
    Ok(out)
}

/// `GetEvidence`: fresh evidence (the attester's JSON text) whose report data is
/// `runtime_data`, zero-padded to 64 bytes.
pub async fn evidence(hub: &Hub, runtime_data: &[u8]) -> Result<Vec<u8>, AaError> {
    if runtime_data.len() > MAX_RUNTIME_DATA {
        return Err(AaError::RuntimeDataTooLong(runtime_data.len()));
    }
    let attester = client(hub)?.attester();
    let mut report_data = [0u8; 64];
    report_data[..runtime_data.len()].copy_from_slice(runtime_data);
    let mut v = attester.evidence(&report_data).await.map_err(AaError::Evidence)?;
    if attester.tee() == Tee::Sample {
        // attestation-agent's sample evidence carries the runtime data as given
        // (cloak's KBS handshake sends only its 48-byte digest).
        v["report_data"] = serde_json::Value::String(BASE64_STANDARD.encode(runtime_data));
    }
    Ok(v.to_string().into_bytes())
}

/// `GetTeeType`.
pub fn tee_type(hub: &Hub) -> Result<String, AaError> {
    Ok(tee_name(client(hub)?.attester().tee()))
}

/// `BindInitData`: the digest, fitted to the report's init-data field, must equal it.
pub async fn bind_init_data(hub: &Hub, digest: &[u8]) -> Result<(), AaError> {
    if digest.len() > MAX_DIGEST {
        return Err(AaError::DigestTooLong(digest.len()));
    }
    let attester = client(hub)?.attester();
    // A TEE whose init-data register the guest extends (Azure vTPM PCR 8) binds it.
    if let Some(bind) = attester.bind_init_data(digest) {
        return bind.await.map_err(AaError::Evidence);
    }
    let tee = attester.tee();
    let (key, tee_label, field) = match tee {
        Tee::Snp => ("attestation_report", "SNP", "HOST_DATA"),
        Tee::Tdx => ("quote", "TDX", "MRCONFIGID"),
        other => return Err(AaError::InitDataUnsupported(tee_name(other))),
    };
    let v = attester.evidence(&[0u8; 64]).await.map_err(AaError::Evidence)?;
    let bad = || AaError::BadEvidence { tee: tee_label, field };
    let raw = v.get(key).and_then(|r| r.as_str()).ok_or_else(bad)?;
    let raw = BASE64_STANDARD.decode(raw).map_err(|_| bad())?;
    // Where the field is (SNP report; TDX quote v4 or v5): the guest library's one map.
    let (offset, len) = kbs_client::attester::initdata_field_range(tee, &raw).ok_or_else(bad)?;
    let actual = raw.get(offset..offset + len).ok_or_else(bad)?;
    let mut expected = vec![0u8; len];
    let n = digest.len().min(len);
    expected[..n].copy_from_slice(&digest[..n]);
    if actual != expected.as_slice() {
        return Err(AaError::InitDataMismatch { field });
    }
    Ok(())
}

/// The attestation-agent ttRPC service over one hub.
#[derive(Clone)]
pub struct AaService(pub Arc<Hub>);

fn status(e: AaError) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.message()))
}

#[async_trait::async_trait]
impl svc::AttestationAgentService for AaService {
    async fn get_evidence(
        &self,
        _ctx: &TtrpcContext,
        req: pb::GetEvidenceRequest,
    ) -> ttrpc::Result<pb::GetEvidenceResponse> {
        let mut resp = pb::GetEvidenceResponse::new();
        resp.Evidence = evidence(&self.0, &req.RuntimeData).await.map_err(status)?;
        Ok(resp)
    }

    async fn get_additional_evidence(
        &self,
        _ctx: &TtrpcContext,
        req: pb::GetAdditionalEvidenceRequest,
    ) -> ttrpc::Result<pb::GetEvidenceResponse> {
        if req.RuntimeData.len() > MAX_RUNTIME_DATA {
            return Err(status(AaError::RuntimeDataTooLong(req.RuntimeData.len())));
        }
        // No additional (device) attesters: empty, as attestation-agent answers then.
        Ok(pb::GetEvidenceResponse::new())
    }

    async fn get_token(
        &self,
        _ctx: &TtrpcContext,
        req: pb::GetTokenRequest,
    ) -> ttrpc::Result<pb::GetTokenResponse> {
        let answer = token(&self.0, &req.TokenType, true).await.map_err(status)?;
        let mut resp = pb::GetTokenResponse::new();
        resp.Token = answer.to_vec();
        Ok(resp)
    }

    async fn extend_runtime_measurement(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::ExtendRuntimeMeasurementRequest,
    ) -> ttrpc::Result<pb::ExtendRuntimeMeasurementResponse> {
        let tee = tee_type(&self.0).map_err(status)?;
        Err(status(AaError::NoRuntimeMeasurement(tee)))
    }

    async fn bind_init_data(
        &self,
        _ctx: &TtrpcContext,
        req: pb::BindInitDataRequest,
    ) -> ttrpc::Result<pb::BindInitDataResponse> {
        bind_init_data(&self.0, &req.Digest).await.map_err(status)?;
        Ok(pb::BindInitDataResponse::new())
    }

    async fn get_tee_type(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::GetTeeTypeRequest,
    ) -> ttrpc::Result<pb::GetTeeTypeResponse> {
        let mut resp = pb::GetTeeTypeResponse::new();
        resp.tee = tee_type(&self.0).map_err(status)?;
        Ok(resp)
    }

    async fn get_additional_tees(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::GetAdditionalTeesRequest,
    ) -> ttrpc::Result<pb::GetAdditionalTeesResponse> {
        Ok(pb::GetAdditionalTeesResponse::new())
    }
}

/// Serves attestation-agent's API on `socket` (published like the CDH socket: it
/// appears only once listening, 0600).
pub async fn start(hub: Arc<Hub>, socket: &Path) -> Result<Server, ServeError> {
    let services = svc::create_attestation_agent_service(Arc::new(AaService(hub)));
    super::server::start_services(services, socket).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tee_names_are_coco_s() {
        assert_eq!(tee_name(Tee::Snp), "snp");
        assert_eq!(tee_name(Tee::Tdx), "tdx");
        assert_eq!(tee_name(Tee::Sample), "sample");
    }

    #[test]
    fn errors_say_their_step_once() {
        for e in [
            AaError::NoKbs,
            AaError::RuntimeDataTooLong(65),
            AaError::Token(KbsError::Config("x".into())),
            AaError::InitDataMismatch { field: "HOST_DATA" },
        ] {
            assert_eq!(report::repeated_source(&e), None, "{e}");
        }
        assert!(AaError::RuntimeDataTooLong(65).is_bad_request());
        assert_eq!(AaError::NoRuntimeMeasurement("snp".into()).code(), ttrpc::Code::UNIMPLEMENTED);
    }
}
