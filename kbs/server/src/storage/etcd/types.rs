//! What the etcd backend and both of its transports share: the cluster's spec
//! (`etcd://HOST:PORT[,...]/PREFIX`), its TLS and authentication settings, one
//! key-value as etcd returns it, and the transports' error. A leaf: it imports neither
//! transport, so `gateway` can call `grpc` and both can name these types.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    #[error("invalid etcd store {spec:?}: {why} (want etcd://HOST:PORT[,HOST:PORT...]/PREFIX)")]
    Spec { spec: String, why: &'static str },
    #[error("etcd member {endpoint} unreachable")]
    Unreachable {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// A refusal; `code` is etcd's gRPC status code (0 when the answer had none).
    #[error("etcd member {endpoint} answered HTTP {status}: {message}")]
    Status { endpoint: String, status: u16, code: u32, message: String },
    #[error("etcd answer from {endpoint} is malformed: {what}")]
    Malformed { endpoint: String, what: &'static str },
    #[error("etcd watch stream ended: {0}")]
    WatchEnded(String),
    #[error("etcd TLS/auth setup: {0}")]
    Setup(String),
}

impl EtcdError {
    /// Whether etcd refused the token, so that a new one is worth asking for. These are
    /// the two refusals etcd's own client renews its token on:
    /// - `ErrInvalidAuthToken`, gRPC UNAUTHENTICATED (16): the token expired
    ///   (`--auth-token-ttl`) or was voided (authentication disabled and enabled);
    /// - `ErrAuthOldRevision`, INVALID_ARGUMENT (3) "revision of auth store is old": any
    ///   user, role or permission change since the token was issued voids it for
    ///   writes and reads. Code 3 has other meanings, so that one is told by its text,
    ///   as etcd's client does.
    pub(crate) fn is_auth_expired(&self) -> bool {
        match self {
            EtcdError::Status { code: 16, .. } => true,
            EtcdError::Status { code: 3, message, .. } => message.contains("auth store is old"),
            _ => false,
        }
    }

    /// Whether another member might answer (connection trouble, timeouts, 5xx).
    pub(crate) fn retriable(&self) -> bool {
        match self {
            EtcdError::Unreachable { .. } => true,
            EtcdError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSpec {
    pub endpoints: Vec<String>,
    /// Key prefix without a trailing slash, e.g. "/cloak-kbs".
    pub prefix: String,
}

impl std::str::FromStr for EtcdSpec {
    type Err = EtcdError;
    fn from_str(s: &str) -> Result<Self, EtcdError> {
        let err = |why| EtcdError::Spec { spec: s.chars().take(200).collect(), why };
        let rest = s.strip_prefix("etcd://").ok_or_else(|| err("does not start with etcd://"))?;
        let (hosts, prefix) = rest.split_once('/').ok_or_else(|| err("no /PREFIX after the members"))?;
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() || prefix.contains("//") || !prefix.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(err("PREFIX must be non-empty printable ASCII without empty segments"));
        }
        let endpoints: Vec<String> = hosts.split(',').map(str::trim).map(String::from).collect();
        for e in &endpoints {
            let Some((h, p)) = e.rsplit_once(':') else { return Err(err("a member lacks :PORT")) };
            if h.is_empty() || p.parse::<u16>().is_err() {
                return Err(err("a member is not HOST:PORT"));
            }
        }
        Ok(Self { endpoints, prefix: format!("/{}", prefix.trim_start_matches('/')) })
    }
}

impl std::fmt::Display for EtcdSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

/// TLS and authentication for the etcd connection.
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// CA certificate (PEM) of the etcd members; with it the members are reached over https.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and its key (PEM, concatenated), for members started with
    /// `--client-cert-auth`; needs `ca_pem`.
    pub client_pem: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// etcd user and password (etcd authentication): the client takes a token from
    /// `/v3/auth/authenticate` and sends it with every request.
    pub auth: Option<(String, zeroize::Zeroizing<String>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client_pem.is_some())
            .field("user", &self.auth.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// One key-value as etcd returns it.
#[derive(Clone, Debug)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_and_refuses() {
        let s: EtcdSpec = "etcd://127.0.0.1:2379,10.0.0.2:2379/cloak".parse().unwrap();
        assert_eq!(s.endpoints, ["127.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(s.prefix, "/cloak");
        assert_eq!(s.to_string(), "etcd://127.0.0.1:2379,10.0.0.2:2379/cloak");
        for bad in ["etcd://h:1", "etcd://h/p", "etcd://h:x/p", "http://h:1/p", "etcd://h:1/", "etcd://:1/p"]
        {
            assert!(bad.parse::<EtcdSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn token_renewal_follows_the_grpc_code() {
        let st = |code: u32, message: &str| EtcdError::Status {
            endpoint: "e".into(),
            status: 400,
            code,
            message: message.into(),
        };
        assert!(st(16, "etcdserver: invalid auth token").is_auth_expired());
        assert!(st(16, "anything the member words differently").is_auth_expired());
        assert!(st(3, "gRPC status 3: etcdserver: revision of auth store is old").is_auth_expired());
        assert!(!st(3, "etcdserver: key is not provided").is_auth_expired());
        assert!(!st(7, "etcdserver: permission denied").is_auth_expired());
        assert!(!st(14, "etcdserver: no leader").is_auth_expired());
    }
}
