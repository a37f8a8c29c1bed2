//! Errors of the KBS client, one enum per stage: [`KbsError`] for the client and
//! admin client (it names the protocol step that failed), [`AttesterError`] for
//! evidence collection. No variant ever carries key material or tokens.

use std::fmt;
use std::time::Duration;

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
///
/// Each variant's text says only its own step; a cause is reached through
/// `source()` (print with `report::line`).
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// The KBS could not be reached, or kept answering 5xx, until the deadline.
    ///
    /// The text names the broker and the deadline when the client knows them
    /// (`KBS unavailable: the broker at http://h:8080/ did not answer the auth request
    /// within 30 s (3 attempts)`); the last failure is the `source()`.
    #[error("{}", unavailable_message(*step, broker.as_deref(), *deadline, *attempts))]
    Unavailable {
        step: Step,
        /// The broker's base URL.
        broker: Option<String>,
        /// The time the call was allowed, retries included.
        deadline: Option<Duration>,
        /// Requests sent before giving up (0: no time was left to send one).
        attempts: u32,
        #[source]
        last: LastFailure,
    },
    /// The KBS answered with a definitive refusal (4xx).
    ///
    /// `reason` is what the client knows of the refusal: the client writes the
    /// broker's URL, the HTTP status and the broker's own reason into it, and at
    /// [`Step::Resource`] it starts with the resource URI
    /// (`"kbs:///a/b/c denied: the broker at http://h/ answered HTTP 403: <its reason>"`).
    /// The text adds what to check for a 401/403 of the attest and resource steps.
    #[error("{}", rejected_message(*step, *status, reason))]
    Rejected { step: Step, status: u16, reason: String },
    /// The KBS answered something that does not follow the protocol
    /// (bad JSON, bad JWE, a token without the expected shape, ...).
    ///
    /// At [`Step::Resource`] `resource` names the resource asked for. What was wrong
    /// is the `source()`.
    #[error("KBS protocol error at {step}{}", resource_suffix(resource.as_deref()))]
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
    /// The broker's TLS certificate was refused (not retried: it would be refused again).
    #[error("the TLS certificate of the broker at {broker} is refused: {problem}")]
    Certificate { broker: String, problem: crate::tls::CertProblem },
}

/// The last failure before [`KbsError::Unavailable`] gave up: the transport's
/// error (its chain flattened once) or the broker's 5xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFailure(String);

impl LastFailure {
    /// The failure's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LastFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LastFailure {}

impl KbsError {
    /// Builds [`KbsError::Unavailable`] when the broker and the deadline are not known
    /// (test doubles, callers outside the HTTP client).
    pub fn unavailable(step: Step, attempts: u32, cause: impl fmt::Display) -> Self {
        KbsError::Unavailable {
            step,
            broker: None,
            deadline: None,
            attempts,
            last: LastFailure(cause.to_string()),
        }
    }

    /// Builds [`KbsError::Unavailable`] naming the broker and the deadline it ran into.
    pub fn unavailable_at(
        step: Step,
        broker: &str,
        deadline: Duration,
        attempts: u32,
        cause: impl fmt::Display,
    ) -> Self {
        KbsError::Unavailable {
            step,
            broker: Some(broker.to_owned()),
            deadline: Some(deadline),
            attempts,
            last: LastFailure(cause.to_string()),
        }
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
            KbsError::Protocol { .. }
            | KbsError::Unsupported(_)
            | KbsError::Config(_)
            | KbsError::Certificate { .. } => KbsErrorKind::Other,
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

fn resource_suffix(resource: Option<&ResourceUri>) -> String {
    resource.map(|r| format!(" {r}")).unwrap_or_default()
}

/// A duration as people write it: `30 s`, `2.5 s`.
pub(crate) fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

fn unavailable_message(
    step: Step,
    broker: Option<&str>,
    deadline: Option<Duration>,
    attempts: u32,
) -> String {
    let who = broker.map_or_else(|| "the broker".to_owned(), |b| format!("the broker at {b}"));
    let within = deadline.map(|d| format!(" within {}", seconds(d))).unwrap_or_default();
    let tries = match attempts {
        0 => "no time was left to send it".to_owned(),
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts"),
    };
    format!("KBS unavailable: {who} did not answer the {step} request{within} ({tries})")
}

fn rejected_message(step: Step, status: u16, reason: &str) -> String {
    let refused = status == 401 || status == 403;
    match step {
        Step::Attest if refused => format!(
            "attestation rejected: {reason}; check the broker's attestation policy and its reference \
             values (measurements, TCB) against this guest's evidence"
        ),
        Step::Attest => format!("attestation rejected: {reason}"),
        Step::Resource if refused => format!(
            "resource {reason}; check that the broker's resource policy releases it to this guest \
             (released_resources) and that its attestation policy still accepts this TEE"
        ),
        Step::Resource => format!("resource {reason}"),
        Step::Admin if refused => {
            format!("admin request {reason}; check that the broker's admin public key matches this admin key")
        }
        Step::Admin => format!("admin request {reason}"),
        Step::Auth => format!("KBS rejected the auth request: {reason}"),
    }
}

/// Why evidence could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    /// Auto-detection found no TEE (or an explicit kind found not its interface).
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
    /// The Azure vTPM (or its HCL report) failed.
    #[error("Azure vTPM at {target}: {reason}")]
    AzureVtpm { target: String, reason: String },
    /// Azure IMDS (VCEK, TD quote) failed.
    #[error("Azure IMDS at {url}: {reason}")]
    Imds { url: String, reason: String },
    /// Anything else while collecting evidence.
    #[error("evidence collection failed: {0}")]
    Other(String),
    /// The report's init-data field is not the digest of the init-data this guest
    /// would send: the host launched it with other init-data (or without).
    #[error(
        "the {tee} report's {field} is {report}, not the digest of this guest's init-data \
         (--initdata, or kata-agent's initdata.toml): the host launched the guest with other init-data"
    )]
    InitdataMismatch { tee: &'static str, field: &'static str, report: String },
    /// The evidence has no readable init-data field to compare.
    #[error("the {tee} evidence has no readable {field} to compare with the init-data")]
    InitdataField { tee: &'static str, field: &'static str },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_step() {
        let e = KbsError::Rejected { step: Step::Attest, status: 400, reason: "bad measurement".into() };
        assert_eq!(e.to_string(), "attestation rejected: bad measurement");
        let e = KbsError::unavailable(Step::Auth, 4, "connection refused");
        assert_eq!(e.to_string(), "KBS unavailable: the broker did not answer the auth request (4 attempts)");
        assert_eq!(report::line(&e), format!("{e}: connection refused"));
        assert!(AttesterError::NoTee("x".into()).to_string().starts_with("no TEE found"));
    }

    /// Issue 27: `KBS unavailable at auth after 3 attempts: ...` did not say which
    /// broker or how long the client had waited, and the binaries repeated the cause.
    #[test]
    fn unavailable_broker_error_names_url_and_deadline_once() {
        let e = KbsError::unavailable_at(
            Step::Auth,
            "http://127.0.0.1:1",
            Duration::from_secs(30),
            3,
            "tcp connect error: Connection refused (os error 111)",
        );
        let line = report::line(&e);
        assert_eq!(
            line,
            "KBS unavailable: the broker at http://127.0.0.1:1 did not answer the auth request within 30 s \
             (3 attempts): tcp connect error: Connection refused (os error 111)"
        );
        assert_eq!(line.matches("http://127.0.0.1:1").count(), 1, "{line}");
        assert_eq!(line.matches("30 s").count(), 1, "{line}");
        assert_eq!(report::repeated_source(&e), None);
        assert_eq!(report::repeated_clause(&line), None);
        let e = KbsError::unavailable_at(Step::Resource, "http://h", Duration::from_millis(2500), 1, "x");
        assert!(e.to_string().ends_with("the resource request within 2.5 s (1 attempt)"), "{e}");
        let e = KbsError::unavailable_at(Step::Resource, "http://h", Duration::from_secs(1), 0, "x");
        assert!(e.to_string().ends_with("(no time was left to send it)"), "{e}");
    }

    /// Issue 27: a denial names the broker, the resource, the broker's reason and
    /// what to check, each once.
    #[test]
    fn denying_broker_error_names_broker_resource_reason_and_what_to_check() {
        let e = KbsError::Rejected {
            step: Step::Resource,
            status: 403,
            reason: "kbs:///default/key/1 denied: the broker at http://kbs:8080 answered HTTP 403: \
                     not_released: the resource is not listed in released_resources"
                .into(),
        };
        let line = report::line(&e);
        for part in [
            "kbs:///default/key/1",
            "http://kbs:8080",
            "not_released",
            "check that the broker's resource policy",
        ] {
            assert_eq!(line.matches(part).count(), 1, "{part} in {line}");
        }
        assert_eq!(report::repeated_clause(&line), None, "{line}");
        let e = KbsError::Rejected {
            step: Step::Attest,
            status: 401,
            reason: "the broker at http://kbs:8080 answered HTTP 401: sample_not_allowed: sample evidence"
                .into(),
        };
        let line = report::line(&e);
        assert!(line.starts_with("attestation rejected: the broker at http://kbs:8080"), "{line}");
        assert!(line.contains("check the broker's attestation policy and its reference values"), "{line}");
        // A 404 is no policy matter: no advice to check the policy.
        let e = KbsError::Rejected {
            step: Step::Resource,
            status: 404,
            reason: "kbs:///a/b/c not found: the broker at http://kbs answered HTTP 404".into(),
        };
        assert!(!e.to_string().contains("check"), "{e}");
    }

    /// Issue 27: no variant's text repeats its cause (`Protocol` used to end with it).
    #[test]
    fn kbs_errors_do_not_repeat_their_source() {
        let uri: ResourceUri = "kbs:///default/key/1".parse().unwrap();
        let errors = [
            KbsError::Protocol {
                step: Step::Resource,
                resource: Some(Box::new(uri)),
                source: ProtocolError::Decrypt("tag mismatch".into()),
            },
            KbsError::Protocol {
                step: Step::Attest,
                resource: None,
                source: ProtocolError::Malformed { what: "token", reason: "not a JWT".into() },
            },
            KbsError::unavailable_at(Step::Attest, "http://h", Duration::from_secs(30), 2, "HTTP 503: down"),
            KbsError::Attester(AttesterError::Other("boom".into())),
        ];
        for e in &errors {
            let line = report::line(e);
            assert_eq!(report::repeated_source(e), None, "{line}");
            assert_eq!(report::repeated_clause(&line), None, "{line}");
        }
        assert_eq!(
            report::line(&errors[0]),
            "KBS protocol error at resource kbs:///default/key/1: cannot decrypt the resource: tag mismatch"
        );
        let ecdh = crate::protocol::ecdh::EcdhError::Crypto(openssl::error::ErrorStack::get());
        assert_eq!(report::repeated_source(&ecdh), None);
    }
}
