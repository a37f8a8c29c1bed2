//! The transport-neutral seam: [`ImageSource`] and [`ImageDest`].
//!
//! The encryptor and the guest puller talk to these two enums only, so they do not
//! care whether an image lives in a layout directory or in a registry. Each method
//! dispatches to the layout or registry implementation; the checks that make a read
//! trustworthy (size caps, digest verification, pinned-manifest checks) happen here
//! or below, never in the callers.

use std::path::PathBuf;

use crate::blob::BlobReader;
use crate::digest::Digest;
use crate::error::OciError;
use crate::layout::{LayoutBlobWriter, OciLayout};
use crate::manifest::{sniff_media_type, Descriptor};
use crate::media_type;
use crate::reference::{ImageRef, LayoutRef, RegistryRef};
use crate::registry::{RegistryBlobWriter, RegistryClient, RegistryConfig};

/// Manifests larger than this are refused (distribution's own limit is 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// A manifest or index exactly as stored, with its media type and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    /// The raw bytes; the digest is over these, so never re-serialise them.
    pub bytes: Vec<u8>,
    pub media_type: String,
    /// sha256 (or the pinned algorithm) of `bytes`.
    pub digest: Digest,
}

impl RawManifest {
    /// Parse into the typed [`crate::manifest::Manifest`].
    pub fn parse(&self) -> Result<crate::manifest::Manifest, OciError> {
        Ok(crate::manifest::parse_manifest(&self.bytes, &self.media_type)?)
    }

    /// A descriptor pointing at this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.media_type.clone(), self.digest.clone(), self.bytes.len() as u64)
    }
}

/// Options for opening a source.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// `--creds USER:PASS` (or `USER` alone, for an empty password).
    pub creds: Option<String>,
    /// `--authfile`; otherwise `$REGISTRY_AUTH_FILE`, then the usual defaults.
    pub auth_file: Option<PathBuf>,
    /// Talk plain HTTP to the registry (`--src-tls-verify=false`).
    pub insecure_plain_http: bool,
    /// Connect, no-progress and total deadlines of registry requests.
    pub timeouts: crate::RegistryTimeouts,
    /// An auth file held in memory (e.g. fetched from the KBS); takes the place
    /// of `auth_file` and the default files. `creds` still wins.
    pub auth_json: Option<std::sync::Arc<crate::auth::AuthJson>>,
    /// containers-registries.conf: blocked registries, mirrors, remaps, insecure.
    pub registries: Option<std::sync::Arc<crate::registries_conf::RegistriesConf>>,
    /// Extra CA roots for registries.
    pub roots: crate::transport::TlsRoots,
    /// The image-pull proxy (`None`: the proxy environment variables).
    pub proxy: Option<crate::transport::ProxyConfig>,
}

/// Options for opening a destination.
pub type DestOptions = SourceOptions;

/// Where an image is read from.
#[derive(Debug)]
pub enum ImageSource {
    Layout(LayoutSource),
    Registry(RegistryImage),
}

/// An image in a registry (as a source or a destination).
#[derive(Debug)]
pub struct RegistryImage {
    /// The client of the location the image is read from (a mirror, a remapped
    /// location or the registry itself).
    pub client: RegistryClient,
    /// The reference as the caller gave it (signature policy is checked on this).
    pub reference: RegistryRef,
    /// Where the image is actually read from (`reference` without a registries.conf).
    pub location: RegistryRef,
    /// The top-level manifest, when it was already fetched (and checked) while a
    /// location was chosen: every later request goes to that location.
    first: Option<RawManifest>,
}

fn registry_client(
    r: &RegistryRef,
    opts: &SourceOptions,
    push: bool,
    insecure: bool,
) -> Result<RegistryClient, OciError> {
    let found = crate::auth::lookup_credentials(
        &r.registry,
        &r.repository,
        opts.creds.as_deref(),
        opts.auth_json.as_deref(),
        opts.auth_file.as_deref(),
    )?;
    Ok(RegistryClient::new(
        r,
        RegistryConfig {
            insecure_plain_http: opts.insecure_plain_http || insecure,
            credentials: found.credentials,
            push,
            timeouts: opts.timeouts,
            credentials_searched: found.searched,
            roots: opts.roots.clone(),
            proxy: opts.proxy.clone(),
        },
    )?)
}

/// Opens `reg` as a source, through registries.conf when given: a blocked
/// registry is refused before any request; with mirrors, each is asked for the
/// top-level manifest in order, then the registry; the first that answers is
/// used for everything else. A mirror whose manifest does not match a pinned
/// digest stops the pull.
async fn open_registry_source(reg: &RegistryRef, opts: &SourceOptions) -> Result<RegistryImage, OciError> {
    let locations = match &opts.registries {
        Some(conf) => conf.locations(reg)?,
        None => vec![crate::registries_conf::PullLocation {
            reference: reg.clone(),
            insecure: false,
            mirror: false,
        }],
    };
    let last = locations.len().saturating_sub(1);
    for (i, loc) in locations.into_iter().enumerate() {
        let img = RegistryImage {
            client: registry_client(&loc.reference, opts, false, loc.insecure)?,
            reference: reg.clone(),
            location: loc.reference.clone(),
            first: None,
        };
        if i == last && !loc.mirror {
            // The registry itself (maybe remapped): fetched lazily, as without mirrors.
            return Ok(img);
        }
        let where_ = format!("{}/{}", loc.reference.registry, loc.reference.repository);
        match registry_manifest(&img, &loc.reference.manifest_reference(), reg.digest.as_ref()).await {
            Ok(m) => {
                tracing::info!(mirror = %where_, "pulling from a mirror");
                return Ok(RegistryImage { first: Some(m), ..img });
            }
            Err(OciError::ManifestDigestMismatch { expected, actual, .. }) => {
                return Err(OciError::MirrorManifestMismatch(Box::new(crate::error::MirrorMismatch {
                    mirror: where_,
                    reference: format!("{}/{}", reg.registry, reg.repository),
                    expected,
                    actual,
                })))
            }
            Err(e) if i == last => return Err(e),
            Err(e) => {
                tracing::warn!(mirror = %where_, error = %report::Line(&e), "mirror failed; trying the next location")
            }
        }
    }
    // Unreachable: locations always ends with the registry itself.
    Err(crate::registries_conf::RegistriesConfError::Invalid {
        origin: "registries.conf".into(),
        what: format!("no location for {}/{}", reg.registry, reg.repository),
    }
    .into())
}

/// Fetch a manifest from a registry and check it against `pinned` when given.
async fn registry_manifest(
    img: &RegistryImage,
    reference: &str,
    pinned: Option<&Digest>,
) -> Result<RawManifest, OciError> {
    let m = img.client.get_manifest(reference, MAX_MANIFEST_SIZE).await?;
    let sha = Digest::sha256_of(&m.bytes);
    let digest = match pinned {
        Some(p) => {
            let actual = Digest::of(p.algorithm(), &m.bytes);
            if &actual != p {
                return Err(OciError::ManifestDigestMismatch {
                    reference: format!("{}/{}@{p}", img.reference.registry, img.reference.repository),
                    expected: p.clone(),
                    actual,
                });
            }
            p.clone()
        }
        None => sha,
    };
    Ok(RawManifest { bytes: m.bytes, media_type: m.media_type, digest })
}

/// An image in a layout, as a source.
#[derive(Debug)]
pub struct LayoutSource {
    pub layout: OciLayout,
    pub reference: LayoutRef,
}

impl ImageSource {
    /// Open the image `r` names for reading.
    pub async fn open(r: &ImageRef, opts: &SourceOptions) -> Result<ImageSource, OciError> {
        match r {
            ImageRef::Layout(l) => Ok(ImageSource::Layout(LayoutSource {
                layout: OciLayout::open(&l.dir)?,
                reference: l.clone(),
            })),
            ImageRef::Registry(reg) => Ok(ImageSource::Registry(open_registry_source(reg, opts).await?)),
        }
    }

    /// The top-level manifest or index the reference names.
    pub async fn manifest(&self) -> Result<RawManifest, OciError> {
        match self {
            ImageSource::Layout(s) => {
                let desc = s.layout.resolve(s.reference.tag.as_deref(), s.reference.digest.as_ref())?;
                let mut m = layout_manifest(&s.layout, &desc.digest).await?;
                // index.json's descriptor is authoritative for the media type when
                // the manifest omits its (optional) mediaType field.
                if media_type::is_manifest(&desc.media_type) {
                    m.media_type = desc.media_type;
                }
                Ok(m)
            }
            ImageSource::Registry(img) => match &img.first {
                Some(m) => Ok(m.clone()),
                None => {
                    registry_manifest(img, &img.location.manifest_reference(), img.reference.digest.as_ref())
                        .await
                }
            },
        }
    }

    /// A manifest by digest (a child of an index); verified against `d`.
    pub async fn manifest_by_digest(&self, d: &Digest) -> Result<RawManifest, OciError> {
        match self {
            ImageSource::Layout(s) => layout_manifest(&s.layout, d).await,
            ImageSource::Registry(img) => registry_manifest(img, &d.to_string(), Some(d)).await,
        }
    }

    /// Stream a blob; the reader is capped at `size` and verifies `d` at the end
    /// (an `InvalidData` I/O error on mismatch).
    pub async fn blob(&self, d: &Digest, size: u64) -> Result<BlobReader, OciError> {
        match self {
            ImageSource::Layout(s) => Ok(s.layout.open_blob(d, size).await?),
            ImageSource::Registry(img) => {
                let stream = img.client.get_blob_stream(d, 0).await?;
                let reader = tokio_util::io::StreamReader::new(stream);
                Ok(BlobReader::new(reader, d.clone(), size))
            }
        }
    }

    /// Read a small blob (a config) whole, at most `max` bytes, verified.
    pub async fn blob_bytes(&self, d: &Digest, max: u64) -> Result<Vec<u8>, OciError> {
        match self {
            ImageSource::Layout(s) => Ok(s.layout.read_blob(d, max).await?),
            ImageSource::Registry(img) => {
                let bytes = match img.client.get_blob_bytes(d, max).await {
                    Ok(b) => b,
                    Err(crate::RegistryError::BlobTooLarge { digest, max }) => {
                        return Err(OciError::TooLarge { digest, max })
                    }
                    Err(e) => return Err(e.into()),
                };
                let actual = Digest::of(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(OciError::BlobDigestMismatch { expected: d.clone(), actual });
                }
                Ok(bytes)
            }
        }
    }
}

async fn layout_manifest(layout: &OciLayout, d: &Digest) -> Result<RawManifest, OciError> {
    let bytes = layout.read_blob(d, MAX_MANIFEST_SIZE).await?;
    let media_type = sniff_media_type(&bytes).unwrap_or_else(|| media_type::OCI_MANIFEST.to_string());
    Ok(RawManifest { bytes, media_type, digest: d.clone() })
}

/// Whether a manifest is the reference's top-level one (tagged) or a child of an
/// index (stored by digest only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestRole {
    /// Tag it with the destination reference's tag (layout: index.json entry).
    TopLevel,
    /// Store it by digest only.
    Child,
}

/// Where an image is written to.
#[derive(Debug)]
pub enum ImageDest {
    Layout(LayoutDest),
    Registry(RegistryImage),
}

/// A layout, as a destination.
#[derive(Debug)]
pub struct LayoutDest {
    pub layout: OciLayout,
    pub reference: LayoutRef,
}

/// A blob being written; see [`ImageDest::begin_blob`].
#[derive(Debug)]
pub enum BlobWriter {
    Layout(LayoutBlobWriter),
    Registry(RegistryBlobWriter),
}

impl BlobWriter {
    /// Append bytes (uploads as they come, for a registry).
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), OciError> {
        match self {
            BlobWriter::Layout(w) => Ok(w.write_all(buf).await?),
            BlobWriter::Registry(w) => Ok(w.write_all(buf).await?),
        }
    }

    /// Hand hashing over to the caller, who must then pass the digest of
    /// exactly what it wrote to [`finish`](Self::finish). For callers that
    /// already hash the bytes in a combined pass (the encryptor). Only before
    /// the first write.
    pub fn skip_hashing(&mut self) {
        match self {
            BlobWriter::Layout(w) => w.skip_hashing(),
            BlobWriter::Registry(w) => w.skip_hashing(),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        match self {
            BlobWriter::Layout(w) => w.written(),
            BlobWriter::Registry(w) => w.written(),
        }
    }

    /// Commit the blob. `expected` is checked when given; the sha256 digest and size
    /// of what was written are returned. Nothing is visible at the destination
    /// unless this succeeds.
    pub async fn finish(self, expected: Option<&Digest>) -> Result<(Digest, u64), OciError> {
        match self {
            BlobWriter::Layout(w) => Ok(w.finish(expected).await?),
            BlobWriter::Registry(w) => Ok(w.finish(expected).await?),
        }
    }
}

impl ImageDest {
    /// Open (creating a layout if needed) the destination `r` names.
    pub async fn open(r: &ImageRef, opts: &DestOptions) -> Result<ImageDest, OciError> {
        match r {
            ImageRef::Layout(l) => {
                Ok(ImageDest::Layout(LayoutDest { layout: OciLayout::create(&l.dir)?, reference: l.clone() }))
            }
            ImageRef::Registry(reg) => Ok(ImageDest::Registry(RegistryImage {
                client: registry_client(reg, opts, true, false)?,
                reference: reg.clone(),
                location: reg.clone(),
                first: None,
            })),
        }
    }

    /// Start a blob whose digest is known only at the end.
    pub async fn begin_blob(&self) -> Result<BlobWriter, OciError> {
        match self {
            ImageDest::Layout(d) => Ok(BlobWriter::Layout(d.layout.begin_blob().await?)),
            ImageDest::Registry(r) => Ok(BlobWriter::Registry(r.client.begin_blob().await?)),
        }
    }

    /// Whether the destination already has the blob.
    pub async fn has_blob(&self, d: &Digest) -> Result<bool, OciError> {
        match self {
            ImageDest::Layout(l) => Ok(l.layout.has_blob(d)),
            ImageDest::Registry(r) => Ok(r.client.has_blob(d).await?),
        }
    }

    /// Store a small blob (config, child manifest) and return its sha256 digest.
    pub async fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, OciError> {
        match self {
            ImageDest::Layout(l) => Ok(l.layout.put_blob_bytes(bytes).await?),
            ImageDest::Registry(r) => Ok(r.client.put_blob_bytes(bytes).await?),
        }
    }

    /// Copy one blob from `src`, streaming and verifying; skipped if present.
    pub async fn copy_blob_from(&self, src: &ImageSource, d: &Digest, size: u64) -> Result<(), OciError> {
        if self.has_blob(d).await? {
            return Ok(());
        }
        // Same registry, other repository: ask for a cross-repository mount first.
        if let (ImageDest::Registry(dst), ImageSource::Registry(s)) = (self, src) {
            if dst.client.base_url() == s.client.base_url()
                && dst.client.repository() != s.client.repository()
            {
                match dst.client.mount_blob(d, s.client.repository()).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => tracing::debug!("mounting {d} failed, copying instead: {}", report::Line(&e)),
                }
            }
        }
        let mut reader = src.blob(d, size).await?;
        let mut w = self.begin_blob().await?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut reader, &mut buf)
                .await
                .map_err(|source| OciError::Io { context: format!("reading blob {d}"), source })?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).await?;
        }
        w.finish(Some(d)).await?;
        Ok(())
    }

    /// Copy a whole image unchanged (an index with all its platform manifests, or
    /// one manifest), blobs first, manifests last, so the tag appears only when
    /// everything it points at is in place. Returns the top manifest as copied.
    pub async fn copy_image_from(&self, src: &ImageSource) -> Result<RawManifest, OciError> {
        let top = src.manifest().await?;
        match top.parse()? {
            crate::manifest::Manifest::Index(idx) => {
                for child in &idx.manifests {
                    let m = src.manifest_by_digest(&child.digest).await?;
                    self.copy_manifest_blobs(src, &m).await?;
                    self.put_manifest(&m.bytes, &m.media_type, ManifestRole::Child).await?;
                }
            }
            crate::manifest::Manifest::Image(_) => self.copy_manifest_blobs(src, &top).await?,
        }
        self.put_manifest(&top.bytes, &top.media_type, ManifestRole::TopLevel).await?;
        Ok(top)
    }

    async fn copy_manifest_blobs(&self, src: &ImageSource, m: &RawManifest) -> Result<(), OciError> {
        if let crate::manifest::Manifest::Image(im) = m.parse()? {
            self.copy_blob_from(src, &im.config.digest, im.config.size).await?;
            for l in &im.layers {
                self.copy_blob_from(src, &l.digest, l.size).await?;
            }
        }
        Ok(())
    }

    /// Store a manifest. A [`ManifestRole::TopLevel`] manifest gets the destination
    /// reference's tag (layout: an index.json entry replacing any with the same ref
    /// name; registry: PUT by tag); a child is stored by digest. Returns its digest.
    pub async fn put_manifest(
        &self,
        bytes: &[u8],
        media_type: &str,
        role: ManifestRole,
    ) -> Result<Digest, OciError> {
        match self {
            ImageDest::Layout(l) => {
                let d = l.layout.put_blob_bytes(bytes).await?;
                if role == ManifestRole::TopLevel {
                    let desc = Descriptor::new(media_type, d.clone(), bytes.len() as u64);
                    l.layout.set_manifest(&desc, l.reference.tag.as_deref())?;
                }
                Ok(d)
            }
            ImageDest::Registry(r) => {
                let reference = match role {
                    ManifestRole::TopLevel => {
                        r.reference.tag.clone().unwrap_or_else(|| Digest::sha256_of(bytes).to_string())
                    }
                    ManifestRole::Child => Digest::sha256_of(bytes).to_string(),
                };
                Ok(r.client.put_manifest(&reference, bytes, media_type).await?)
            }
        }
    }
}
