//! The client side of the keyprovider protocol: reads the ocicrypt keyprovider
//! config (`$OCICRYPT_KEYPROVIDER_CONFIG`) and plugs each configured provider into
//! ocicrypt's key-wrap seam as `provider.<NAME>`.
//!
//! Requests are Go-shaped (see [`crate::protocol`]) so any ocicrypt provider
//! works: `cmd` providers get the JSON on stdin and answer on stdout (non-zero exit
//! = error, stderr reported); `grpc` providers get it in `WrapKey` / `UnWrapKey`
//! over one tonic channel per provider, shared by every call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ocicrypt::keywrap::{BoxFuture, KeyUnwrapper, KeyWrapper, WrapError};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;
use tonic::transport::{Channel, Endpoint};
use zeroize::Zeroizing;

use crate::pb::key_provider_service_client::KeyProviderServiceClient;
use crate::pb::KeyProviderKeyWrapProtocolInput;
use crate::protocol::{B64Bytes, DecryptConfig, EncryptConfig, KeyProviderInput, KeyProviderOutput, Op};

/// Environment variable naming the keyprovider config file.
pub const CONFIG_ENV: &str = "OCICRYPT_KEYPROVIDER_CONFIG";
/// The parameter ocicrypt sends when a recipient names a provider without params.
pub const ENABLED: &str = "Enabled";
/// Largest answer read from a provider.
const MAX_ANSWER: u64 = 4 << 20;

/// Why a provider could not be configured or called.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The config file could not be read.
    #[error("cannot read keyprovider config {path}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not the ocicrypt format.
    #[error("invalid keyprovider config {path}: {reason}")]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// No provider of that name in the config.
    #[error("keyprovider {0:?} is not in the keyprovider config")]
    UnknownProvider(String),
    /// The provider entry has neither `cmd` nor `grpc`.
    #[error("keyprovider {0:?} has neither a \"cmd\" nor a \"grpc\" entry")]
    NoTransport(String),
    /// A bad gRPC address.
    #[error("keyprovider {name:?}: invalid grpc address {addr:?}: {reason}")]
    BadAddress {
        /// Provider.
        name: String,
        /// The address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// The command could not run or failed.
    #[error("keyprovider {name:?} command {path}: {reason}")]
    Cmd {
        /// Provider.
        name: String,
        /// Program.
        path: String,
        /// What happened, with the provider's stderr.
        reason: String,
    },
    /// The gRPC call failed.
    #[error("keyprovider {name:?} gRPC {op}: {code:?}: {message}")]
    Grpc {
        /// Provider.
        name: String,
        /// `WrapKey` or `UnWrapKey`.
        op: &'static str,
        /// The status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The answer was not a keyprovider output document.
    #[error("keyprovider {name:?} answered badly: {reason}")]
    BadAnswer {
        /// Provider.
        name: String,
        /// What was wrong.
        reason: String,
    },
}

impl From<ClientError> for WrapError {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Grpc {
                code: tonic::Code::PermissionDenied | tonic::Code::Unauthenticated, ..
            } => WrapError::Refused(Box::new(e)),
            ClientError::Grpc { code: tonic::Code::Unavailable | tonic::Code::DeadlineExceeded, .. } => {
                WrapError::Unavailable(Box::new(e))
            }
            ClientError::BadAnswer { .. } => {
                WrapError::Malformed { what: "keyprovider answer".into(), source: Box::new(e) }
            }
            _ => WrapError::Other(Box::new(e)),
        }
    }
}

/// `cmd` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct CmdConfig {
    /// Program to run.
    pub path: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

/// One provider's entry. Go prefers `cmd` when both are set; so do we.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ProviderConfig {
    /// Run a program per call.
    #[serde(default)]
    pub cmd: Option<CmdConfig>,
    /// `host:port`, `http://host:port` or `unix:/path` / `unix:///path`.
    #[serde(default)]
    pub grpc: Option<String>,
}

/// The ocicrypt keyprovider config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct KeyProviderConfig {
    /// Providers by name.
    #[serde(rename = "key-providers", default)]
    pub key_providers: BTreeMap<String, ProviderConfig>,
}

impl KeyProviderConfig {
    /// Reads a config file.
    pub fn from_path(path: &Path) -> Result<Self, ClientError> {
        let bytes = std::fs::read(path)
            .map_err(|source| ClientError::ReadConfig { path: path.to_owned(), source })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::ParseConfig { path: path.to_owned(), reason: e.to_string() })
    }

    /// Reads the file named by `$OCICRYPT_KEYPROVIDER_CONFIG`; `None` if unset.
    /// Unlike ocicrypt-rs, an unreadable file is an error, not a panic.
    pub fn from_env() -> Result<Option<Self>, ClientError> {
        match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => Self::from_path(Path::new(&p)).map(Some),
            _ => Ok(None),
        }
    }

    /// A client for provider `name`.
    pub fn client(&self, name: &str) -> Result<Arc<ProviderClient>, ClientError> {
        let cfg = self.key_providers.get(name).ok_or_else(|| ClientError::UnknownProvider(name.into()))?;
        ProviderClient::new(name, cfg).map(Arc::new)
    }
}

enum Transport {
    Cmd(CmdConfig),
    Grpc { endpoint: Box<Endpoint>, channel: OnceCell<KeyProviderServiceClient<Channel>> },
}

/// Talks to one configured provider. Cheap to share (`Arc`); a gRPC provider's
/// channel is created on first use and reused by every later call.
pub struct ProviderClient {
    name: String,
    transport: Transport,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.transport {
            Transport::Cmd(_) => "cmd",
            Transport::Grpc { .. } => "grpc",
        };
        f.debug_struct("ProviderClient").field("name", &self.name).field("transport", &kind).finish()
    }
}

/// Normalises an ocicrypt grpc address for tonic: bare `host:port` gets `http://`.
fn grpc_endpoint(name: &str, addr: &str) -> Result<Endpoint, ClientError> {
    let bad = |reason: String| ClientError::BadAddress { name: name.into(), addr: addr.into(), reason };
    let uri = if addr.starts_with("unix:") || addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else if let Some(rest) = addr.strip_prefix("tcp://") {
        format!("http://{rest}")
    } else {
        format!("http://{addr}")
    };
    let ep = Endpoint::from_shared(uri).map_err(|e| bad(e.to_string()))?;
    Ok(ep.connect_timeout(Duration::from_secs(10)).tcp_nodelay(true))
}

impl ProviderClient {
    /// Builds a client from a config entry (no I/O yet).
    pub fn new(name: &str, cfg: &ProviderConfig) -> Result<Self, ClientError> {
        let transport = if let Some(cmd) = &cfg.cmd {
            Transport::Cmd(cmd.clone())
        } else if let Some(addr) = &cfg.grpc {
            Transport::Grpc { endpoint: Box::new(grpc_endpoint(name, addr)?), channel: OnceCell::new() }
        } else {
            return Err(ClientError::NoTransport(name.into()));
        };
        Ok(Self { name: name.into(), transport })
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one request document and parses the answer.
    pub async fn call(&self, op: Op, input: &KeyProviderInput) -> Result<KeyProviderOutput, ClientError> {
        let body = input
            .to_vec()
            .map_err(|e| ClientError::BadAnswer { name: self.name.clone(), reason: e.to_string() })?;
        let answer = match &self.transport {
            Transport::Cmd(cmd) => self.call_cmd(cmd, &body).await?,
            Transport::Grpc { endpoint, channel } => self.call_grpc(endpoint, channel, op, body).await?,
        };
        KeyProviderOutput::from_slice(&answer)
            .map_err(|e| ClientError::BadAnswer { name: self.name.clone(), reason: e.to_string() })
    }

    async fn call_cmd(&self, cmd: &CmdConfig, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let err =
            |reason: String| ClientError::Cmd { name: self.name.clone(), path: cmd.path.clone(), reason };
        let mut child = tokio::process::Command::new(&cmd.path)
            .args(&cmd.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| err(format!("cannot start: {e}")))?;
        let mut stdin = child.stdin.take().ok_or_else(|| err("no stdin pipe".into()))?;
        let mut stdout = child.stdout.take().ok_or_else(|| err("no stdout pipe".into()))?;
        let mut stderr = child.stderr.take().ok_or_else(|| err("no stderr pipe".into()))?;
        // Write, read stdout and read stderr at the same time, so a provider that
        // answers before reading all of its input cannot deadlock us.
        let write = async {
            let r = stdin.write_all(body).await;
            drop(stdin);
            r
        };
        let mut out = Zeroizing::new(Vec::new());
        let mut errbuf = Vec::new();
        let mut limited_out = (&mut stdout).take(MAX_ANSWER);
        let mut limited_err = (&mut stderr).take(64 * 1024);
        let read_out = limited_out.read_to_end(&mut out);
        let read_err = limited_err.read_to_end(&mut errbuf);
        let (w, o, e) = tokio::join!(write, read_out, read_err);
        let status = child.wait().await.map_err(|e| err(format!("wait failed: {e}")))?;
        let stderr_text = String::from_utf8_lossy(&errbuf).trim().to_owned();
        if !status.success() {
            return Err(err(format!("exited with {status}: {stderr_text}")));
        }
        w.map_err(|e| err(format!("writing the request failed: {e}")))?;
        o.map_err(|e| err(format!("reading the answer failed: {e}")))?;
        e.map_err(|e| err(format!("reading stderr failed: {e}")))?;
        Ok(out)
    }

    async fn call_grpc(
        &self,
        endpoint: &Endpoint,
        channel: &OnceCell<KeyProviderServiceClient<Channel>>,
        op: Op,
        body: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        // `connect_lazy` spawns onto the runtime, so it runs on first use, not in `new`.
        let client = channel
            .get_or_init(|| async {
                KeyProviderServiceClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(MAX_ANSWER as usize)
            })
            .await;
        let mut client = client.clone();
        let req = KeyProviderKeyWrapProtocolInput { key_provider_key_wrap_protocol_input: body };
        let (rpc, res) = match op {
            Op::KeyWrap => ("WrapKey", client.wrap_key(req).await),
            Op::KeyUnwrap => ("UnWrapKey", client.un_wrap_key(req).await),
        };
        let res = res.map_err(|s| ClientError::Grpc {
            name: self.name.clone(),
            op: rpc,
            code: s.code(),
            message: s.message().to_owned(),
        })?;
        Ok(Zeroizing::new(res.into_inner().key_provider_key_wrap_protocol_output))
    }
}

fn params_of(name: &str, params: &[String]) -> BTreeMap<String, Vec<B64Bytes>> {
    let list = if params.is_empty() { vec![ENABLED.to_owned()] } else { params.to_vec() };
    let mut map = BTreeMap::new();
    map.insert(name.to_owned(), list.iter().map(|p| B64Bytes::from(p.as_bytes())).collect());
    map
}

/// `provider.NAME` wrapper for the encrypt side.
#[derive(Debug, Clone)]
pub struct ProviderWrapper {
    client: Arc<ProviderClient>,
    params: Vec<String>,
}

impl ProviderWrapper {
    /// `params`: the text after `provider:NAME:` of each recipient (empty = `Enabled`).
    pub fn new(client: Arc<ProviderClient>, params: Vec<String>) -> Self {
        Self { client, params }
    }

    /// Builds the wrapper for a `provider:NAME[:PARAMS]` recipient (text after `provider:`).
    pub fn from_recipient(config: &KeyProviderConfig, spec: &str) -> Result<Self, ClientError> {
        let (name, params) = match spec.split_once(':') {
            Some((n, p)) => (n, vec![p.to_owned()]),
            None => (spec, Vec::new()),
        };
        Ok(Self::new(config.client(name)?, params))
    }
}

impl KeyWrapper for ProviderWrapper {
    fn scheme(&self) -> String {
        format!("provider.{}", self.client.name)
    }

    fn wrap<'a>(&'a self, private_opts: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, WrapError>> {
        Box::pin(async move {
            let ec = EncryptConfig {
                parameters: params_of(&self.client.name, &self.params),
                ..Default::default()
            };
            let out = self.client.call(Op::KeyWrap, &KeyProviderInput::wrap(ec, private_opts)).await?;
            match out.keywrapresults.annotation {
                Some(a) if !a.as_bytes().is_empty() => Ok(a.as_bytes().to_vec()),
                _ => Err(WrapError::Malformed {
                    what: "keyprovider answer".into(),
                    source: format!(
                        "keyprovider {:?} returned no keywrapresults.annotation",
                        self.client.name
                    )
                    .into(),
                }),
            }
        })
    }
}

/// `provider.NAME` unwrapper for the decrypt side.
#[derive(Debug, Clone)]
pub struct ProviderUnwrapper {
    client: Arc<ProviderClient>,
    params: Vec<String>,
}

impl ProviderUnwrapper {
    /// `params`: the text after `provider:NAME:` of each decryption key (empty = `Enabled`).
    pub fn new(client: Arc<ProviderClient>, params: Vec<String>) -> Self {
        Self { client, params }
    }
}

impl KeyUnwrapper for ProviderUnwrapper {
    fn name(&self) -> String {
        format!("provider {}", self.client.name)
    }

    fn handles(&self, scheme: &str) -> bool {
        scheme.strip_prefix("provider.") == Some(self.client.name.as_str())
    }

    fn unwrap<'a>(
        &'a self,
        _scheme: &'a str,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, WrapError>> {
        Box::pin(async move {
            let dc = DecryptConfig { parameters: params_of(&self.client.name, &self.params) };
            let out = self.client.call(Op::KeyUnwrap, &KeyProviderInput::unwrap(dc, wrapped)).await?;
            match out.keyunwrapresults.optsdata {
                Some(o) if !o.as_bytes().is_empty() => Ok(o.0),
                _ => Err(WrapError::NoKey(
                    format!("keyprovider {:?} returned no keyunwrapresults.optsdata", self.client.name)
                        .into(),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_parses_cmd_and_grpc_entries() {
        let cfg: KeyProviderConfig = serde_json::from_str(
            r#"{"key-providers":{"a":{"cmd":{"path":"/bin/x","args":["exec"]}},"b":{"grpc":"127.0.0.1:50000"},
                "c":{"grpc":"unix:///run/kp.sock"},"d":{}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.key_providers["a"].cmd.as_ref().unwrap().args, vec!["exec"]);
        assert!(cfg.client("b").is_ok());
        assert!(cfg.client("c").is_ok());
        assert!(matches!(cfg.client("d"), Err(ClientError::NoTransport(_))));
        assert!(matches!(cfg.client("zz"), Err(ClientError::UnknownProvider(_))));
    }

    #[test]
    fn recipient_params_default_to_enabled() {
        let m = params_of("attestation-agent", &[]);
        assert_eq!(m["attestation-agent"][0].as_bytes(), b"Enabled");
        let m = params_of("x", &["keyid=kbs:///a/b/c".into()]);
        assert_eq!(m["x"][0].as_bytes(), b"keyid=kbs:///a/b/c");
    }
}
