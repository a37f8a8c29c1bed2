//! `cloak inspect`: per layer the media type, size, whether it is encrypted, the
//! key-wrap schemes, the JWE recipients (algorithm, key id) and provider names.
//! Reads manifests and annotations only; no layer is downloaded.

use std::fmt::Write as _;

use oci::{Descriptor, ImageManifest, ImageRef, ImageSource, Manifest};
use serde::Serialize;

use crate::config::InspectConfig;
use crate::Error;

/// One JWE recipient.
#[derive(Debug, Clone, Serialize)]
pub struct Recipient {
    pub alg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// One layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    pub index: usize,
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub encrypted: bool,
    /// Key-wrap schemes present (`jwe`, `provider.attestation-agent`, ...).
    pub schemes: Vec<String>,
    pub jwe_recipients: Vec<Recipient>,
    pub providers: Vec<String>,
    /// KBS key ids (`kbs:///…`) named by attestation-agent packets: the KEKs a guest
    /// fetches to open this layer.
    pub kek_ids: Vec<String>,
    /// Schemes present that cloak cannot use (pkcs7, pgp, pkcs11).
    pub unsupported_schemes: Vec<String>,
    /// Why the encryption annotations could not be read, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotation_error: Option<String>,
}

/// One image manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub digest: String,
    pub media_type: String,
    pub config_digest: String,
    pub layers: Vec<LayerInfo>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub image: String,
    pub digest: String,
    pub media_type: String,
    pub manifests: Vec<ManifestInfo>,
}

impl InspectReport {
    /// JSON for pipelines.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// A table for people.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ =
            writeln!(s, "image:    {}\ndigest:   {}\ntype:     {}", self.image, self.digest, self.media_type);
        for m in &self.manifests {
            let _ = writeln!(s);
            if let Some(p) = &m.platform {
                let _ = writeln!(s, "platform: {p}  manifest {}", m.digest);
            }
            let _ = writeln!(s, "config:   {}", m.config_digest);
            for l in &m.layers {
                let _ = writeln!(
                    s,
                    "layer {:>2}: {} {:>12} B  {}\n          {}",
                    l.index,
                    if l.encrypted { "ENCRYPTED" } else { "plain    " },
                    l.size,
                    l.digest,
                    l.media_type
                );
                for r in &l.jwe_recipients {
                    let _ = writeln!(
                        s,
                        "          jwe recipient: {}{}",
                        r.alg,
                        r.kid.as_deref().map(|k| format!(" kid={k}")).unwrap_or_default()
                    );
                }
                for p in &l.providers {
                    let _ = writeln!(s, "          keyprovider: {p}");
                }
                for u in &l.unsupported_schemes {
                    let _ = writeln!(s, "          unsupported scheme: {u}");
                }
                if let Some(e) = &l.annotation_error {
                    let _ = writeln!(s, "          annotations unreadable: {e}");
                }
            }
        }
        s
    }
}

fn layer_info(index: usize, d: &Descriptor) -> LayerInfo {
    let mut info = LayerInfo {
        index,
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size,
        encrypted: ocicrypt::is_encrypted(&d.media_type),
        schemes: Vec::new(),
        jwe_recipients: Vec::new(),
        providers: Vec::new(),
        kek_ids: Vec::new(),
        unsupported_schemes: Vec::new(),
        annotation_error: None,
    };
    let Some(ann) = &d.annotations else { return info };
    if !ocicrypt::annotations::has_wrapped_keys(ann) {
        return info;
    }
    match ocicrypt::EncAnnotations::parse(ann) {
        Ok(enc) => {
            info.unsupported_schemes = enc.unknown_schemes.clone();
            for (scheme, items) in &enc.wrapped {
                info.schemes.push(scheme.clone());
                let provider = scheme.strip_prefix("provider.");
                if let Some(name) = provider {
                    info.providers.push(name.to_string());
                }
                if provider == Some(keyprovider::kek::PROVIDER_NAME) {
                    for item in items {
                        match keyprovider::packet::AnnotationPacket::parse(item) {
                            Ok(p) => info.kek_ids.push(p.kid),
                            Err(e) => info.annotation_error = Some(report::line(&e)),
                        }
                    }
                }
                if scheme == "jwe" {
                    for item in items {
                        match ocicrypt::jwe_recipients(item) {
                            Ok(rs) => info
                                .jwe_recipients
                                .extend(rs.into_iter().map(|r| Recipient { alg: r.alg, kid: r.kid })),
                            Err(e) => info.annotation_error = Some(report::line(&e)),
                        }
                    }
                }
            }
        }
        Err(e) => info.annotation_error = Some(report::line(&e)),
    }
    info
}

fn manifest_info(
    platform: Option<String>,
    digest: String,
    media_type: String,
    m: &ImageManifest,
) -> ManifestInfo {
    ManifestInfo {
        platform,
        digest,
        media_type,
        config_digest: m.config.digest.to_string(),
        layers: m.layers.iter().enumerate().map(|(i, d)| layer_info(i, d)).collect(),
    }
}

/// Reads the image's manifests and describes every layer.
pub async fn inspect(cfg: &InspectConfig) -> Result<InspectReport, Error> {
    let r: &ImageRef = &cfg.image;
    let opts = oci::SourceOptions {
        creds: cfg.creds.clone(),
        auth_file: cfg.authfile.clone(),
        insecure_plain_http: cfg.insecure_plain_http,
        ..Default::default()
    };
    let src = ImageSource::open(r, &opts).await.map_err(Error::oci(format!("opening {}", cfg.image)))?;
    let top = src.manifest().await.map_err(Error::oci(format!("reading the manifest of {}", cfg.image)))?;
    let mut manifests = Vec::new();
    match top.parse().map_err(Error::oci("parsing the manifest"))? {
        Manifest::Image(m) => {
            manifests.push(manifest_info(None, top.digest.to_string(), top.media_type.clone(), &m));
        }
        Manifest::Index(idx) => {
            let chosen: Vec<&Descriptor> = match &cfg.platform {
                Some(spec) => vec![oci::select_platform(&idx, spec).map_err(|e| Error::Manifest {
                    digest: top.digest.to_string(),
                    reason: report::line(&e),
                })?],
                None => idx.manifests.iter().collect(),
            };
            for d in chosen {
                let raw = src
                    .manifest_by_digest(&d.digest)
                    .await
                    .map_err(Error::oci(format!("reading {}", d.digest)))?;
                if let Manifest::Image(m) =
                    raw.parse().map_err(Error::oci(format!("parsing {}", d.digest)))?
                {
                    let platform = d.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture));
                    manifests.push(manifest_info(
                        platform,
                        raw.digest.to_string(),
                        raw.media_type.clone(),
                        &m,
                    ));
                }
            }
        }
    }
    Ok(InspectReport {
        image: cfg.image.to_string(),
        digest: top.digest.to_string(),
        media_type: top.media_type,
        manifests,
    })
}

/// The KEK ids (`kbs:///…`) any layer of the report names.
impl InspectReport {
    pub fn kek_ids(&self) -> std::collections::BTreeSet<String> {
        self.manifests.iter().flat_map(|m| m.layers.iter()).flat_map(|l| l.kek_ids.iter().cloned()).collect()
    }
}
