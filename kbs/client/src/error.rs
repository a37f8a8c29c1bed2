//! Errors of the KBS client, one enum per stage: [`KbsError`] for the client and
//! admin client (it names the protocol step that failed), [`AttesterError`] for
//! evidence collection. No variant ever carries key material or tokens.

use std::fmt;

use crate::attester::AttesterKind;
use crate::protocol::ProtocolError;
use crate::uri::ResourceUri;

/// The protocol step an error happened in, so an operator knows where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `POST /kbs/v0/auth` (request → challenge).
    Auth,
    /// `POST /kbs/v0/attest` (evidence → token).
    Attest,
    /// `GET /kbs/v0/resource/...` and decryption of its answer.
    Resource,
    /// Admin API calls (resource upload/delete, policy).
    Admin,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Auth => "auth",
            Step::Attest => "attest",
            Step::Resource => "resource",
            Step::Admin => "admin",
        })
    }
}

/// Why talking to the KBS failed. The client fails closed on every variant.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// The KBS could not be reached, or kept answering 5xx, until the deadline.
    ///
    /// `reason` starts with the attempt count (`"3 attempts: connection refused"`,
    /// see [`KbsError::unavailable`]), so the message reads
    /// `KBS unavailable at auth after 3 attempts: connection refused`.
    #[error("KBS unavailable at {step} after {reason}")]
    Unavailable { step: Step, reason: String },
    /// The KBS answered with a definitive refusal (4xx).
    ///
    /// At [`Step::Resource`] the `reason` starts with the resource URI
    /// (`"kbs:///a/b/c denied: <server's reason>"`), so the whole message reads
    /// `resource kbs:///a/b/c denied: ...`.
    #[error("{}", rejected_message(*step, *status, reason))]
    Rejected { step: Step, status: u16, reason: String },
    /// The KBS answered something that does not follow the protocol
    /// (bad JSON, bad JWE, a token without the expected shape, ...).
    ///
    /// At [`Step::Resource`] `resource` names the resource asked for. The message
    /// embeds the cause's text (as it always has); the cause is also `source()`.
    #[error("KBS protocol error at {step}: {}{source}", resource_prefix(resource.as_deref()))]
    Protocol {
        step: Step,
        /// Boxed: it would double the size of every `Result<_, KbsError>`.
        resource: Option<Box<ResourceUri>>,
        #[source]
        source: ProtocolError,
    },
    /// Evidence could not be collected.
    #[error(transparent)]
    Attester(#[from] AttesterError),
    /// A resource URI (or its segments) is malformed.
    #[error("invalid resource URI: {0}")]
    InvalidUri(String),
    /// The KBS lacks an API this call needs (e.g. Trustee has no admin read-back).
    #[error("{0}")]
    Unsupported(String),
    /// The client configuration is unusable (bad KBS URL, bad admin key, ...).
    #[error("invalid KBS client configuration: {0}")]
    Config(String),
}

impl KbsError {
    /// Builds [`KbsError::Unavailable`] with the attempt count in front of the cause.
    pub fn unavailable(step: Step, attempts: u32, cause: impl fmt::Display) -> Self {
        let noun = if attempts == 1 { "attempt" } else { "attempts" };
        KbsError::Unavailable { step, reason: format!("{attempts} {noun}: {cause}") }
    }

    /// Whether the KBS gave a definitive answer (as opposed to being unreachable).
    pub fn is_rejected(&self) -> bool {
        matches!(self, KbsError::Rejected { .. })
    }

    /// What the failure means to whoever asked, for choosing a status code: the one
    /// place that reads the KBS's HTTP status numbers.
    pub fn kind(&self) -> KbsErrorKind {
        match self {
            KbsError::Unavailable { .. } => KbsErrorKind::Unavailable,
            KbsError::Rejected { status: 404, .. } => KbsErrorKind::NotFound,
            KbsError::Rejected { .. } => KbsErrorKind::Denied,
            KbsError::InvalidUri(_) => KbsErrorKind::InvalidUri,
            KbsError::Attester(_) => KbsErrorKind::Attester,
            KbsError::Protocol { .. } | KbsError::Unsupported(_) | KbsError::Config(_) => KbsErrorKind::Other,
        }
    }
}

/// The classes of [`KbsError`] that callers map to status codes ([`KbsError::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KbsErrorKind {
    /// Unreachable, or 5xx until the deadline: may pass on a retry.
    Unavailable,
    /// The KBS has no such resource (HTTP 404).
    NotFound,
    /// The KBS refused: attestation, policy or token (any other 4xx).
    Denied,
    /// The resource URI was malformed before anything was sent.
    InvalidUri,
    /// This guest could not produce evidence.
    Attester,
    /// A protocol violation, an unsupported API or an unusable configuration.
    Other,
}

fn resource_prefix(resource: Option<&ResourceUri>) -> String {
    resource.map(|r| format!("{r}: ")).unwrap_or_default()
}

fn rejected_message(step: Step, status: u16, reason: &str) -> String {
    match step {
        Step::Attest => format!("attestation rejected: {reason}"),
        Step::Resource => format!("resource {reason}"),
        _ => format!("KBS rejected the {step} request (HTTP {status}): {reason}"),
    }
}

/// Why evidence could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    /// Auto-detection found neither SEV-SNP nor TDX.
    #[error("no TEE found: {0}")]
    NoTee(String),
    /// The sample attester was asked for without explicitly allowing it.
    #[error("the sample attester produces no hardware evidence and is refused unless explicitly allowed (development only)")]
    SampleNotAllowed,
    /// An unknown attester name was given.
    #[error("unknown attester {0:?} (expected {expected})", expected = AttesterKind::names_in_prose())]
    UnknownKind(String),
    /// The configfs-tsm interface misbehaved or answered for another provider.
    #[error("configfs-tsm report at {path}: {reason}")]
    Tsm { path: String, reason: String },
    /// The `/dev/sev-guest` device failed.
    #[error("SEV-SNP guest device {path}: {reason}")]
    SevGuest { path: String, reason: String },
    /// Anything else while collecting evidence.
    #[error("evidence collection failed: {0}")]
    Other(String),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_step() {
        let e = KbsError::Rejected { step: Step::Attest, status: 401, reason: "bad measurement".into() };
        assert_eq!(e.to_string(), "attestation rejected: bad measurement");
        let e = KbsError::unavailable(Step::Auth, 4, "connection refused");
        assert_eq!(e.to_string(), "KBS unavailable at auth after 4 attempts: connection refused");
        assert!(AttesterError::NoTee("x".into()).to_string().starts_with("no TEE found"));
    }
}
