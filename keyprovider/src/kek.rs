//! KEK wrapping with keys held in the KBS, compatible with CoCo's
//! `coco_keyprovider` (build side) and CDH (guest side), provider name
//! `attestation-agent`.
//!
//! Build side: [`KbsKekWrapper`] seals the private options into an
//! [`AnnotationPacket`] with a KEK read from a file (`keypath=`) or generated once
//! per wrapper and registered in the KBS through the admin API.
//! Guest side: [`KbsKekUnwrapper`] fetches the KEK named by the packet's `kid`
//! through one shared [`kbs_client::KbsClient`] (one attestation serves every layer) and
//! keeps it in memory for a short TTL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kbs_client::{AdminClient, Created, KbsClient, KbsError, ResourceUri};
use ocicrypt::keywrap::{BoxFuture, KeyUnwrapper, KeyWrapper, WrapError};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::packet::{AnnotationPacket, Kek, PacketError};

/// The provider name CoCo guests look for.
pub const PROVIDER_NAME: &str = "attestation-agent";
/// How long an unwrapper keeps a fetched KEK.
pub const DEFAULT_KEK_TTL: Duration = Duration::from_secs(60);

/// What went wrong wrapping or unwrapping with a KBS-held KEK.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    /// Bad `keyid=..::keypath=..` parameters.
    #[error("invalid attestation-agent parameters: {0}")]
    Params(String),
    /// The KEK file could not be read or has the wrong size.
    #[error("cannot use KEK file {path}: {reason}")]
    KekFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A client's `keypath=` names nothing this provider will use. The text is the
    /// same whatever the reason, so a client cannot learn whether other files exist
    /// or how large they are.
    #[error(
        "keypath {shown:?} does not name a usable KEK: it must be a readable regular file of exactly \
         32 bytes{where_}"
    )]
    KeyPath {
        /// The path as the client sent it (shortened).
        shown: String,
        /// Where such files must be, if the provider restricts it.
        where_: String,
    },
    /// No keypath and no admin client: nowhere to put a generated KEK.
    #[error("no keypath given and no KBS admin key configured: cannot register a generated KEK for {0}")]
    NoAdmin(String),
    /// The broker cannot say whether the id already holds a KEK (Trustee has no admin
    /// read-back), so generating one could replace a KEK images depend on.
    #[error(
        "cannot register a generated KEK at {kid} safely: {reason}. Register the KEK once yourself \
         (e.g. `cloak-kbs put-resource` or Trustee's kbs-client) and wrap with that file: \
         keypath=FILE in the attestation-agent parameters, or --kek-file FILE for `cloak encrypt`"
    )]
    NoReadBack {
        /// The KEK id.
        kid: String,
        /// What the broker answered.
        reason: String,
    },
    /// The id holds a resource that is not a 32-byte KEK.
    #[error("{kid} already holds a resource that is not a 32-byte KEK ({reason}); choose another key id")]
    NotAKek {
        /// The KEK id.
        kid: String,
        /// What was wrong.
        reason: String,
    },
    /// The id was created and deleted again under every create-then-read attempt.
    #[error("{0} kept appearing and disappearing in the KBS while registering a KEK; is another tool deleting it?")]
    Contended(String),
    /// The packet was bad, or did not open.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// The KBS refused or failed (its error names the broker).
    #[error(transparent)]
    Kbs(#[from] KbsError),
}

impl From<KekError> for WrapError {
    fn from(e: KekError) -> Self {
        match &e {
            KekError::Params(_) | KekError::Packet(PacketError::Malformed(_)) => WrapError::Malformed {
                what: "attestation-agent packet or parameters".into(),
                source: Box::new(e),
            },
            KekError::Packet(PacketError::Auth(_)) => WrapError::NoKey(Box::new(e)),
            KekError::Kbs(KbsError::Unavailable { .. }) => WrapError::Unavailable(Box::new(e)),
            KekError::Kbs(KbsError::Rejected { .. })
            | KekError::KeyPath { .. }
            | KekError::NoReadBack { .. }
            | KekError::NotAKek { .. } => WrapError::Refused(Box::new(e)),
            _ => WrapError::Other(Box::new(e)),
        }
    }
}

/// Parses a `keyid`: `kbs:///r/t/g`, `kbs://host/r/t/g`, `r/t/g` or `/r/t/g`.
pub fn parse_kid(kid: &str) -> Result<ResourceUri, KbsError> {
    let trimmed = if kid.starts_with('/') { kid.trim_start_matches('/') } else { kid };
    ResourceUri::from_str(trimmed)
}

/// coco_keyprovider's parameter list `k=v::k=v` (or the literal `Enabled`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrapParams {
    /// `keyid=`: where the KEK lives in the KBS.
    pub keyid: Option<ResourceUri>,
    /// `keypath=`: a file holding the 32-byte KEK.
    pub keypath: Option<PathBuf>,
}

impl FromStr for WrapParams {
    type Err = KekError;
    fn from_str(s: &str) -> Result<Self, KekError> {
        let mut p = WrapParams::default();
        let s = s.trim();
        if s.is_empty() || s == crate::client::ENABLED {
            return Ok(p);
        }
        for item in s.split("::") {
            let (k, v) =
                item.split_once('=').ok_or_else(|| KekError::Params(format!("{item:?} is not key=value")))?;
            match k {
                "keyid" => {
                    p.keyid = Some(
                        parse_kid(v).map_err(|e| KekError::Params(format!("keyid: {}", report::Line(&e))))?,
                    );
                }
                "keypath" => p.keypath = Some(PathBuf::from(v)),
                "algorithm" if v == "A256GCM" => {}
                "algorithm" => {
                    return Err(KekError::Params(format!("algorithm {v:?} is not supported (only A256GCM)")));
                }
                // coco_keyprovider's fixed test key would wrap with a well-known KEK: refuse.
                "sample" => return Err(KekError::Params("sample=true is not supported".into())),
                other => return Err(KekError::Params(format!("unknown parameter {other:?}"))),
            }
        }
        Ok(p)
    }
}

/// A random `default/image-kek/<32 hex>` resource for a KEK without a keyid.
pub fn random_kid() -> Result<ResourceUri, KbsError> {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    let tag: String = b.iter().map(|x| format!("{x:02x}")).collect();
    ResourceUri::new("default", "image-kek", &tag)
}

enum KekSource {
    Fixed(Kek),
    Register { admin: Arc<AdminClient>, kek: OnceCell<Kek> },
}

/// How many times a lost create-only race is retried before giving up.
const REGISTER_ATTEMPTS: usize = 3;

/// The KEK for `kid`: the one the KBS already holds (read back with the admin key),
/// or a fresh one registered with a create-only write. A KEK is never replaced: when
/// two registrations race, the loser's write is refused (412) and it reads the
/// winner's KEK back, so both wrap with the same key. A broker without admin
/// read-back (Trustee) is refused before anything is written.
pub async fn obtain_kek(admin: &AdminClient, kid: &ResourceUri) -> Result<Kek, KekError> {
    for _ in 0..REGISTER_ATTEMPTS {
        if let Some(bytes) = read_back(admin, kid).await? {
            let k = Kek::from_slice(&bytes)
                .map_err(|e| KekError::NotAKek { kid: kid.to_string(), reason: e.to_string() })?;
            tracing::info!(kid = %kid, "reusing the KEK already registered in the KBS");
            return Ok(k);
        }
        if let Some(k) = create_kek(admin, kid).await? {
            tracing::info!(kid = %kid, "registered a generated KEK in the KBS");
            return Ok(k);
        }
        tracing::info!(kid = %kid, "another registration won the race: reading its KEK back");
    }
    Err(KekError::Contended(kid.to_string()))
}

/// What the KBS holds at `kid`, read back with the admin key; a broker without the
/// read-back (whose create-only writes cannot be trusted either) is [`KekError::NoReadBack`].
pub async fn read_back(
    admin: &AdminClient,
    kid: &ResourceUri,
) -> Result<Option<Zeroizing<Vec<u8>>>, KekError> {
    admin.read_back(kid).await.map_err(|e| match e {
        KbsError::Unsupported(reason) => KekError::NoReadBack { kid: kid.to_string(), reason },
        e => KekError::Kbs(e),
    })
}

/// Stores a fresh KEK at `kid` create-only: `Some(kek)` when this call registered it,
/// `None` when the id was taken meanwhile (its bytes untouched). Call [`read_back`]
/// first: only a broker with the read-back honours the create-only write.
pub async fn create_kek(admin: &AdminClient, kid: &ResourceUri) -> Result<Option<Kek>, KekError> {
    let k = Kek::generate();
    Ok(match admin.create_resource(kid, k.as_bytes()).await? {
        Created::New => Some(k),
        Created::Exists => None,
    })
}

/// `provider.attestation-agent` wrapper (build side).
pub struct KbsKekWrapper {
    kid: ResourceUri,
    source: KekSource,
}

impl std::fmt::Debug for KbsKekWrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KbsKekWrapper").field("kid", &self.kid.to_string()).finish_non_exhaustive()
    }
}

/// Which files a keyprovider client may name with `keypath=`. The provider reads
/// them with its own rights, so a client that is not the provider's operator must
/// not be able to point it anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeyPathRule {
    /// Any regular file the provider can read (coco_keyprovider's behaviour; the
    /// default of `cloak-keyprovider`, which serves the operator's own build tools).
    #[default]
    Any,
    /// Only regular files whose real path (links resolved) is inside this directory,
    /// itself given resolved (as `std::fs::canonicalize` returns it).
    Under(PathBuf),
    /// No file at all (`cloak-cdh`: the guest wraps nothing, and a caller of its
    /// socket must not make it read guest files).
    Refused,
}

/// A KEK file is 32 bytes; one byte more is enough to tell that it is too long,
/// so no file is ever read further than this.
const KEK_FILE_READ_CAP: u64 = 33;

/// Reads a 32-byte KEK from `path`: a regular file (a FIFO or device is refused
/// before anything is read from it), at most [`KEK_FILE_READ_CAP`] bytes. With
/// `within`, the file actually opened (links resolved) must lie inside that
/// resolved directory, checked before any byte is read.
fn read_kek_capped(path: &Path, within: Option<&Path>) -> Result<Kek, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() != 32 {
        return Err(format!("{} bytes, a KEK is 32", meta.len()));
    }
    if let Some(dir) = within {
        use std::os::fd::AsRawFd;
        let real =
            std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|e| e.to_string())?;
        if !real.starts_with(dir) {
            return Err(format!("{} is outside the allowed directory", real.display()));
        }
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(KEK_FILE_READ_CAP as usize));
    file.take(KEK_FILE_READ_CAP).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Kek::from_slice(&bytes).map_err(|e| e.to_string())
}

/// A KEK file the local user named (`cloak encrypt --kek-file`): errors say what
/// was wrong with it.
fn read_kek_file(path: &Path) -> Result<Kek, KekError> {
    read_kek_capped(path, None).map_err(|reason| KekError::KekFile { path: path.to_owned(), reason })
}

/// A KEK file a keyprovider client named: allowed by `rule`, and one error text
/// for every refusal (the reason goes to the provider's own log only).
fn read_client_kek_file(path: &Path, rule: &KeyPathRule) -> Result<Kek, KekError> {
    let shown: String = path.display().to_string().chars().take(200).collect();
    let (within, where_) = match rule {
        KeyPathRule::Any => (None, String::new()),
        KeyPathRule::Under(dir) => (Some(dir.as_path()), format!(" inside {}", dir.display())),
        KeyPathRule::Refused => {
            return Err(KekError::Params(
                "keypath is not accepted by this provider: it does not read files named by its callers"
                    .into(),
            ))
        }
    };
    let refuse = |why: String| {
        tracing::info!(keypath = %shown, reason = %why, "keypath refused");
        KekError::KeyPath { shown: shown.clone(), where_: where_.clone() }
    };
    read_kek_capped(path, within).map_err(refuse)
}

impl KbsKekWrapper {
    /// Wraps with the KEK in `path` (32 raw bytes), announcing `kid` in the packet.
    /// The KEK is expected to be in the KBS already.
    pub fn with_kek_file(kid: ResourceUri, path: &Path) -> Result<Self, KekError> {
        Ok(Self { kid, source: KekSource::Fixed(read_kek_file(path)?) })
    }

    /// Wraps with a given KEK.
    pub fn with_kek(kid: ResourceUri, kek: Kek) -> Self {
        Self { kid, source: KekSource::Fixed(kek) }
    }

    /// On first use, takes the KEK already registered at `kid` in the KBS, or else
    /// generates one and registers it create-only (see [`obtain_kek`]); every later
    /// wrap by this wrapper reuses it.
    pub fn registering(kid: ResourceUri, admin: Arc<AdminClient>) -> Self {
        Self { kid, source: KekSource::Register { admin, kek: OnceCell::new() } }
    }

    /// From coco_keyprovider parameters sent by a client: `keypath` → a file that
    /// `rule` allows; otherwise generate and register (needs `admin`). A missing
    /// `keyid` gets a random one.
    pub fn from_params(
        params: &WrapParams,
        admin: Option<Arc<AdminClient>>,
        rule: &KeyPathRule,
    ) -> Result<Self, KekError> {
        let kid = match &params.keyid {
            Some(k) => k.clone(),
            None => random_kid()?,
        };
        match (&params.keypath, admin) {
            (Some(p), _) => Ok(Self { kid, source: KekSource::Fixed(read_client_kek_file(p, rule)?) }),
            (None, Some(a)) => Ok(Self::registering(kid, a)),
            (None, None) => Err(KekError::NoAdmin(kid.to_string())),
        }
    }

    /// Obtains the KEK now (for a registering wrapper: reads it back or registers
    /// it), so that a caller can refuse before it writes anything; later wraps reuse it.
    pub async fn ready(&self) -> Result<(), KekError> {
        self.kek().await.map(|_| ())
    }

    /// The KBS resource the packet names.
    pub fn kid(&self) -> &ResourceUri {
        &self.kid
    }

    async fn kek(&self) -> Result<&Kek, KekError> {
        match &self.source {
            KekSource::Fixed(k) => Ok(k),
            KekSource::Register { admin, kek } => kek.get_or_try_init(|| obtain_kek(admin, &self.kid)).await,
        }
    }

    /// Seals `private_opts` into a v1 AnnotationPacket (JSON bytes).
    pub async fn wrap_packet(&self, private_opts: &[u8]) -> Result<Vec<u8>, KekError> {
        let kek = self.kek().await?;
        Ok(AnnotationPacket::seal(&self.kid.to_string(), kek, private_opts)?.to_v1_json())
    }
}

impl KeyWrapper for KbsKekWrapper {
    fn scheme(&self) -> String {
        format!("provider.{PROVIDER_NAME}")
    }

    fn wrap<'a>(&'a self, private_opts: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, WrapError>> {
        Box::pin(async move { Ok(self.wrap_packet(private_opts).await?) })
    }
}

/// Where an unwrapper gets KEKs: the KBS ([`KbsClient`], after attestation) in
/// production; tests pass their own.
pub trait KekFetcher: Send + Sync {
    /// The raw resource at `uri`.
    fn fetch<'a>(&'a self, uri: &'a ResourceUri) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KbsError>>;
}

impl KekFetcher for KbsClient {
    fn fetch<'a>(&'a self, uri: &'a ResourceUri) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KbsError>> {
        Box::pin(self.get_resource(uri))
    }
}

struct CachedKek {
    kek: Kek,
    fetched: Instant,
}

/// A small TTL cache of KEKs by `kid`. Expired entries are dropped (and so
/// zeroized) on the next access.
struct KekCache {
    ttl: Duration,
    map: Mutex<HashMap<String, CachedKek>>,
}

impl KekCache {
    fn get(&self, kid: &str) -> Option<Kek> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, e| now.duration_since(e.fetched) < self.ttl);
        map.get(kid).map(|e| e.kek.clone())
    }

    fn put(&self, kid: String, kek: Kek) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(kid, CachedKek { kek, fetched: Instant::now() });
    }

    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// `provider.attestation-agent` unwrapper (guest side).
pub struct KbsKekUnwrapper {
    client: Arc<dyn KekFetcher>,
    cache: KekCache,
    provider: String,
}

impl std::fmt::Debug for KbsKekUnwrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KbsKekUnwrapper").field("provider", &self.provider).finish_non_exhaustive()
    }
}

impl KbsKekUnwrapper {
    /// Uses `client` (share one per pull so it attests once) and the default TTL.
    pub fn new(client: KbsClient) -> Self {
        Self::with_fetcher(Arc::new(client))
    }

    /// Uses any KEK source.
    pub fn with_fetcher(client: Arc<dyn KekFetcher>) -> Self {
        Self {
            client,
            cache: KekCache { ttl: DEFAULT_KEK_TTL, map: Mutex::new(HashMap::new()) },
            provider: PROVIDER_NAME.into(),
        }
    }

    /// Changes how long a KEK stays cached (zero disables the cache).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.cache.ttl = ttl;
        self
    }

    /// Answers for `provider.<name>` instead of `provider.attestation-agent`.
    pub fn with_provider_name(mut self, name: &str) -> Self {
        self.provider = name.into();
        self
    }

    /// Number of KEKs cached right now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Parses the packet, gets its KEK (cache or KBS) and opens it.
    pub async fn unwrap_packet(&self, packet: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let packet = AnnotationPacket::parse(packet)?;
        let uri = parse_kid(&packet.kid)
            .map_err(|e| PacketError::Malformed(format!("kid: {}", report::Line(&e))))?;
        let key = uri.to_string();
        let kek = match self.cache.get(&key) {
            Some(k) => k,
            None => {
                let bytes = self.client.fetch(&uri).await?;
                let k = Kek::from_slice(&bytes)?;
                self.cache.put(key, k.clone());
                k
            }
        };
        Ok(packet.open(&kek)?)
    }
}

impl KeyUnwrapper for KbsKekUnwrapper {
    fn name(&self) -> String {
        format!("provider {} (KBS KEK)", self.provider)
    }

    fn handles(&self, scheme: &str) -> bool {
        scheme.strip_prefix("provider.") == Some(self.provider.as_str())
    }

    fn unwrap<'a>(
        &'a self,
        _scheme: &'a str,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, WrapError>> {
        Box::pin(async move { Ok(self.unwrap_packet(wrapped).await?) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn coco_parameter_syntax() {
        let p: WrapParams =
            "keyid=kbs:///default/key/1::keypath=/path/to/kek::algorithm=A256GCM".parse().unwrap();
        assert_eq!(p.keyid.unwrap().to_string(), "kbs:///default/key/1");
        assert_eq!(p.keypath.unwrap(), PathBuf::from("/path/to/kek"));
        let p: WrapParams = "keypath=k1::keyid=/default/key/key_id1".parse().unwrap();
        assert_eq!(p.keyid.unwrap().path(), "default/key/key_id1");
        let p: WrapParams = "Enabled".parse().unwrap();
        assert_eq!(p, WrapParams::default());
        assert!("keyid=kbs:///a/../b".parse::<WrapParams>().is_err());
        assert!("algorithm=A256CTR".parse::<WrapParams>().is_err());
        assert!("bogus=1".parse::<WrapParams>().is_err());
        assert!("keyid".parse::<WrapParams>().is_err());
    }

    #[tokio::test]
    async fn file_kek_wraps_into_a_packet_the_same_kek_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        std::fs::write(&path, [9u8; 32]).unwrap();
        let params: WrapParams =
            format!("keyid=kbs:///default/key/1::keypath={}", path.display()).parse().unwrap();
        let w = KbsKekWrapper::from_params(&params, None, &KeyPathRule::Any).unwrap();
        assert_eq!(w.scheme(), "provider.attestation-agent");
        let packet = w.wrap(b"privopts").await.unwrap();
        let p = AnnotationPacket::parse(&packet).unwrap();
        assert_eq!(p.kid, "kbs:///default/key/1");
        assert_eq!(p.open(&Kek::from_slice(&[9u8; 32]).unwrap()).unwrap().as_slice(), b"privopts");
        std::fs::write(&path, [9u8; 31]).unwrap();
        assert!(matches!(
            KbsKekWrapper::from_params(&params, None, &KeyPathRule::Any),
            Err(KekError::KeyPath { .. })
        ));
        let no_path: WrapParams = "keyid=kbs:///default/key/1".parse().unwrap();
        assert!(matches!(
            KbsKekWrapper::from_params(&no_path, None, &KeyPathRule::Any),
            Err(KekError::NoAdmin(_))
        ));
    }
}
