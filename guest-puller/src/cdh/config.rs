//! CDH's configuration file (`-c cdh.toml`, usually from init-data): the keys
//! cloak-cdh honours, the ones it ignores with a warning, and the ones it
//! refuses because ignoring them would weaken what the operator asked for.
//!
//! ```toml
//! socket = "unix:///run/confidential-containers/cdh.sock"
//! [kbc]
//! name = "cc_kbc"
//! url = "http://kbs.example:8080"
//! kbs_cert = "-----BEGIN CERTIFICATE----- ..."   # optional extra root CA
//! [image]
//! max_concurrent_layer_downloads_per_image = 3
//! work_dir = "/var/lib/images"                     # the layer store lives under it (not
//!                                                  # under /run/kata-containers, which
//!                                                  # kata-agent empties: see hub::store_location)
//! # containers-policy.json checked on every pull: /path, file:///path or kbs:///repo/type/tag
//! image_security_policy_uri = "kbs:///default/security-policy/test"
//! # cloak's own bounds on a hostile registry and on decompression bombs (defaults shown)
//! registry_connect_timeout_secs = 30
//! registry_idle_timeout_secs = 60      # nothing received for this long fails the pull
//! registry_request_timeout_secs = 120  # total, for manifests, tokens, configs (not layers)
//! max_decompression_ratio = 100        # unpacked : compressed, checked after the first MiB
//! max_layer_size = 68719476736         # unpacked bytes per layer (64 GiB)
//! # private registries: an auth.json (kbs:///..., /path or file:///path), fetched
//! # through the daemon's one KBS session at each pull and kept in memory only
//! authenticated_registry_credentials_uri = "kbs:///default/credential/test"
//! # containers-registries.conf v2 (blocked registries, mirrors, remaps): a URI as
//! # above, or inline as `registry_config` (a TOML table or string)
//! registry_configuration_uri = "kbs:///default/registry-configuration/test"
//! image_pull_proxy = { https_proxy = "http://proxy:3128", no_proxy = "192.168.0.1,.internal" }
//! skip_proxy_ips = "10.0.0.0/8"                    # added to no_proxy
//! extra_root_certificates = ["-----BEGIN CERTIFICATE-----..."]  # CAs for registries
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket CDH listens on by default (kata-agent's constant).
pub const DEFAULT_SOCKET: &str = "unix:///run/confidential-containers/cdh.sock";

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid TOML: {reason}")]
    Syntax { path: String, reason: String },
    #[error("{path}: `{key}` {reason}")]
    Invalid { path: String, key: String, reason: String },
}

/// What a `cdh.toml` says, in cloak's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdhToml {
    /// `socket`, as written (`unix:///…`).
    pub socket: Option<String>,
    /// `[kbc] name`.
    pub kbc_name: Option<String>,
    /// `[kbc] url`.
    pub kbs_url: Option<String>,
    /// `[kbc] kbs_cert` (PEM), an extra root certificate for an https KBS.
    pub kbs_cert: Option<String>,
    /// `[image] max_concurrent_layer_downloads_per_image`.
    pub max_concurrent_layers: Option<usize>,
    /// `[image] work_dir`: the layer store goes to `<work_dir>/cloak-store`.
    pub work_dir: Option<PathBuf>,
    /// `[image] image_security_policy_uri`, checked by [`signature_policy_location`]:
    /// an absolute path or a `kbs:///repo/type/tag` URI.
    pub signature_policy: Option<String>,
    /// `[image] registry_connect_timeout_secs`.
    pub registry_connect_timeout: Option<Duration>,
    /// `[image] registry_idle_timeout_secs` (no-progress timeout).
    pub registry_idle_timeout: Option<Duration>,
    /// `[image] registry_request_timeout_secs` (total, small requests).
    pub registry_request_timeout: Option<Duration>,
    /// `[image] max_decompression_ratio`.
    pub max_decompression_ratio: Option<u64>,
    /// `[image] max_layer_size` (unpacked bytes per layer).
    pub max_layer_size: Option<u64>,
    /// `[image] authenticated_registry_credentials_uri`: an absolute path or a
    /// `kbs:///repo/type/tag` URI (as [`signature_policy_location`] returns it).
    pub registry_credentials: Option<String>,
    /// `[image] registry_configuration_uri`, the same forms.
    pub registry_configuration: Option<String>,
    /// `[image] registry_config`, parsed.
    pub registry_config: Option<oci::RegistriesConf>,
    /// `[image] image_pull_proxy` with `skip_proxy_ips` added to its `no_proxy`.
    pub image_pull_proxy: Option<oci::ProxyConfig>,
    /// `[image] extra_root_certificates` (PEM strings, each checked).
    pub extra_root_certificates: Vec<String>,
    /// Keys that were ignored, one line each (logged as warnings at start).
    pub warnings: Vec<String>,
}

/// `[image]` keys of image-rs's signature settings that cloak-cdh reads another
/// way. Ignoring them would pull unchecked images the operator meant to be
/// checked, so a non-empty value refuses start-up, saying what to use instead.
const REFUSED_IMAGE_KEYS: &[(&str, &str)] = &[
    (
        "image_security_policy",
        "is an inline signature policy, which cloak-cdh does not read; put the containers-policy.json \
         in a file or a KBS resource and name it with `image_security_policy_uri` (or --signature-policy)",
    ),
    (
        "sigstore_config_uri",
        "(image-rs's lookaside configuration) is not read by cloak-cdh; cosign signatures are found in \
         the registry without it, and GPG lookaside stores come from a registries.d directory \
         (--registries-d DIR)",
    ),
    (
        "sigstore_config",
        "(image-rs's lookaside configuration) is not read by cloak-cdh; cosign signatures are found in \
         the registry without it, and GPG lookaside stores come from a registries.d directory \
         (--registries-d DIR)",
    ),
];

/// Why `key` is refused when set (`None`: not one of [`REFUSED_IMAGE_KEYS`]).
fn refused_image_key(key: &str) -> Option<&'static str> {
    REFUSED_IMAGE_KEYS.iter().find(|(k, _)| *k == key).map(|(_, why)| *why)
}

/// Keys of CDH that cloak-cdh does not implement; harmless to ignore, so warned.
const IGNORED_KEYS: &[&str] = &["credentials"];

/// The KBS protocol clients CDH names; cloak speaks `cc_kbc` (Trustee's protocol).
const KBC_NAMES: &[&str] = &["cc_kbc"];

impl CdhToml {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: origin.into(),
            reason: e.to_string(),
        })?;
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            path: origin.into(),
            key: key.into(),
            reason: reason.into(),
        };
        let mut out = CdhToml::default();
        for (key, value) in &table {
            match key.as_str() {
                "socket" => {
                    let s = value.as_str().ok_or_else(|| invalid("socket", "must be a string"))?;
                    socket_path(s).map_err(|r| invalid("socket", &r))?;
                    out.socket = Some(s.to_owned());
                }
                "kbc" => {
                    let kbc = value.as_table().ok_or_else(|| invalid("kbc", "must be a table"))?;
                    for (k, v) in kbc {
                        let full = format!("kbc.{k}");
                        match k.as_str() {
                            "name" => {
                                let s = v.as_str().ok_or_else(|| invalid(&full, "must be a string"))?;
                                if !KBC_NAMES.contains(&s) {
                                    return Err(invalid(
                                        &full,
                                        &format!("is {s:?}; cloak-cdh speaks only cc_kbc (the Trustee KBS protocol)"),
                                    ));
                                }
                                out.kbc_name = Some(s.to_owned());
                            }
                            "url" => {
                                let s = v.as_str().ok_or_else(|| invalid(&full, "must be a string"))?;
                                if !(s.starts_with("http://") || s.starts_with("https://")) {
                                    return Err(invalid(&full, "must be an http:// or https:// URL"));
                                }
                                out.kbs_url = Some(s.to_owned());
                            }
                            "kbs_cert" => {
                                let s = v.as_str().ok_or_else(|| invalid(&full, "must be a string"))?;
                                if !s.is_empty() {
                                    if !s.contains("-----BEGIN CERTIFICATE-----") {
                                        return Err(invalid(&full, "must be a PEM certificate"));
                                    }
                                    out.kbs_cert = Some(s.to_owned());
                                }
                            }
                            _ => out.warnings.push(format!("{origin}: unknown key `{full}` ignored")),
                        }
                    }
                }
                "image" => {
                    let image = value.as_table().ok_or_else(|| invalid("image", "must be a table"))?;
                    for (k, v) in image {
                        let full = format!("image.{k}");
                        let empty = v.as_str().is_some_and(str::is_empty);
                        match k.as_str() {
                            "max_concurrent_layer_downloads_per_image" => {
                                let n = v
                                    .as_integer()
                                    .filter(|n| (1..=64).contains(n))
                                    .ok_or_else(|| invalid(&full, "must be an integer from 1 to 64"))?;
                                out.max_concurrent_layers = usize::try_from(n).ok();
                            }
                            "registry_connect_timeout_secs"
                            | "registry_idle_timeout_secs"
                            | "registry_request_timeout_secs" => {
                                let secs = v
                                    .as_float()
                                    .or_else(|| v.as_integer().map(|n| n as f64))
                                    .filter(|s| *s > 0.0 && *s <= 3600.0)
                                    .ok_or_else(|| {
                                        invalid(
                                            &full,
                                            "must be a number of seconds, more than 0, at most 3600",
                                        )
                                    })?;
                                let d = Some(Duration::from_secs_f64(secs));
                                match k.as_str() {
                                    "registry_connect_timeout_secs" => out.registry_connect_timeout = d,
                                    "registry_idle_timeout_secs" => out.registry_idle_timeout = d,
                                    _ => out.registry_request_timeout = d,
                                }
                            }
                            "max_decompression_ratio" | "max_layer_size" => {
                                let n = v
                                    .as_integer()
                                    .and_then(|n| u64::try_from(n).ok())
                                    .filter(|n| *n >= 1)
                                    .ok_or_else(|| invalid(&full, "must be a positive integer"))?;
                                if k == "max_layer_size" {
                                    out.max_layer_size = Some(n);
                                } else {
                                    out.max_decompression_ratio = Some(n);
                                }
                            }
                            "work_dir" => {
                                let s = v.as_str().ok_or_else(|| invalid(&full, "must be a string"))?;
                                if !s.starts_with('/') {
                                    return Err(invalid(&full, "must be an absolute path"));
                                }
                                out.work_dir = Some(PathBuf::from(s));
                            }
                            "image_security_policy_uri" => {
                                let s = v.as_str().ok_or_else(|| invalid(&full, "must be a string"))?;
                                if s.is_empty() {
                                    out.warnings.push(format!(
                                        "{origin}: `{full}` is empty: image signatures are not checked"
                                    ));
                                } else {
                                    let loc = signature_policy_location(s).map_err(|r| invalid(&full, &r))?;
                                    if !loc.starts_with('/') && !loc.starts_with("kbs:///") {
                                        return Err(invalid(
                                            &full,
                                            "must be an absolute path, file:///PATH or kbs:///REPO/TYPE/TAG",
                                        ));
                                    }
                                    out.signature_policy = Some(loc);
                                }
                            }
                            "authenticated_registry_credentials_uri" | "registry_configuration_uri" => {
                                let s = v.as_str().ok_or_else(|| invalid(&full, "must be a string"))?;
                                if !s.is_empty() {
                                    let loc = signature_policy_location(s).map_err(|r| invalid(&full, &r))?;
                                    if !loc.starts_with('/') && !loc.starts_with("kbs:///") {
                                        return Err(invalid(
                                            &full,
                                            "must be an absolute path, file:///PATH or kbs:///REPO/TYPE/TAG",
                                        ));
                                    }
                                    if k == "registry_configuration_uri" {
                                        out.registry_configuration = Some(loc);
                                    } else {
                                        out.registry_credentials = Some(loc);
                                    }
                                }
                            }
                            "registry_config" => {
                                let what = format!("{origin} [image] registry_config");
                                let conf = match v {
                                    toml::Value::Table(t) => oci::RegistriesConf::from_table(t, &what),
                                    toml::Value::String(s) if s.is_empty() => continue,
                                    toml::Value::String(s) => oci::RegistriesConf::parse(s.as_bytes(), &what),
                                    _ => {
                                        return Err(invalid(
                                            &full,
                                            "must be a registries.conf: a table or a TOML string",
                                        ))
                                    }
                                }
                                .map_err(|e| invalid(&full, &report::line(&e)))?;
                                out.registry_config = Some(conf);
                            }
                            "image_pull_proxy" => {
                                let t = v.as_table().ok_or_else(|| {
                                    invalid(&full, "must be a table { https_proxy, http_proxy, no_proxy }")
                                })?;
                                let mut p = out.image_pull_proxy.take().unwrap_or_default();
                                for (pk, pv) in t {
                                    let s = pv
                                        .as_str()
                                        .ok_or_else(|| invalid(&format!("{full}.{pk}"), "must be a string"))?
                                        .to_owned();
                                    match pk.as_str() {
                                        "https_proxy" | "http_proxy" if !s.is_empty() => {
                                            let u = reqwest::Url::parse(&s).map_err(|_| {
                                                invalid(
                                                    &format!("{full}.{pk}"),
                                                    "must be a URL (http://HOST:PORT)",
                                                )
                                            })?;
                                            if !matches!(u.scheme(), "http" | "https" | "socks5" | "socks5h")
                                            {
                                                return Err(invalid(
                                                    &format!("{full}.{pk}"),
                                                    "must be an http://, https:// or socks5:// URL",
                                                ));
                                            }
                                            if pk == "https_proxy" {
                                                p.https_proxy = Some(s);
                                            } else {
                                                p.http_proxy = Some(s);
                                            }
                                        }
                                        "https_proxy" | "http_proxy" => {}
                                        "no_proxy" => p.no_proxy = Some(join_no_proxy(p.no_proxy.take(), &s)),
                                        _ => out
                                            .warnings
                                            .push(format!("{origin}: unknown key `{full}.{pk}` ignored")),
                                    }
                                }
                                out.image_pull_proxy = Some(p);
                            }
                            "skip_proxy_ips" => {
                                let list = match v {
                                    toml::Value::String(s) => s.clone(),
                                    toml::Value::Array(a) => a
                                        .iter()
                                        .map(|x| x.as_str().map(str::to_owned))
                                        .collect::<Option<Vec<_>>>()
                                        .ok_or_else(|| {
                                            invalid(&full, "must be a string or a list of strings")
                                        })?
                                        .join(","),
                                    _ => return Err(invalid(&full, "must be a string or a list of strings")),
                                };
                                let mut p = out.image_pull_proxy.take().unwrap_or_default();
                                p.no_proxy = Some(join_no_proxy(p.no_proxy.take(), &list));
                                out.image_pull_proxy = Some(p);
                            }
                            "extra_root_certificates" => {
                                let list = v
                                    .as_array()
                                    .and_then(|a| {
                                        a.iter()
                                            .map(|x| x.as_str().map(str::to_owned))
                                            .collect::<Option<Vec<_>>>()
                                    })
                                    .ok_or_else(|| invalid(&full, "must be a list of PEM strings"))?;
                                let mut roots = oci::TlsRoots::default();
                                for (i, pem) in list.iter().enumerate() {
                                    roots
                                        .add_pem(pem, &format!("{full}[{i}]"))
                                        .map_err(|e| invalid(&full, &report::line(&e)))?;
                                }
                                out.extra_root_certificates = list;
                            }
                            k if refused_image_key(k).is_some() && !empty => {
                                let why = refused_image_key(k).unwrap_or_default();
                                return Err(invalid(
                                    &full,
                                    &format!("{why}; refusing to start rather than pull unchecked"),
                                ));
                            }
                            k if refused_image_key(k).is_some() => out.warnings.push(format!(
                                "{origin}: `{full}` is not supported by cloak-cdh and is ignored"
                            )),
                            _ => out.warnings.push(format!("{origin}: unknown key `{full}` ignored")),
                        }
                    }
                }
                k if IGNORED_KEYS.contains(&k) => {
                    out.warnings.push(format!("{origin}: `{k}` is not supported by cloak-cdh and is ignored"))
                }
                other => out.warnings.push(format!("{origin}: unknown key `{other}` ignored")),
            }
        }
        Ok(out)
    }
}

/// `no_proxy` lists joined with a comma.
fn join_no_proxy(a: Option<String>, b: &str) -> String {
    match a.filter(|a| !a.trim().is_empty()) {
        Some(a) if !b.trim().is_empty() => format!("{a},{b}"),
        Some(a) => a,
        None => b.to_owned(),
    }
}

/// Checks where a signature policy comes from (`image_security_policy_uri`,
/// `--signature-policy`) and returns it in the form `SignatureCheck::load` reads:
/// a `kbs:///repo/type/tag` URI as is, a `file:///PATH` as the bare `/PATH`, any
/// other path unchanged (the caller decides whether a relative one is allowed).
pub fn signature_policy_location(s: &str) -> Result<String, String> {
    if s.starts_with("kbs://") {
        if !s.starts_with("kbs:///") {
            return Err(format!("{s:?}: a KBS resource is written kbs:///REPO/TYPE/TAG (no host)"));
        }
        let uri: kbs_client::ResourceUri = s.parse().map_err(|e: kbs_client::KbsError| report::line(&e))?;
        return Ok(uri.to_string());
    }
    if let Some(rest) = s.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(format!("{s:?}: a file URI is written file:///ABSOLUTE/PATH (no host)"));
        }
        return Ok(rest.to_owned());
    }
    if s.contains("://") {
        return Err(format!("{s:?}: expected a path, file:///PATH or kbs:///REPO/TYPE/TAG"));
    }
    if s.is_empty() {
        return Err("is empty; expected a path, file:///PATH or kbs:///REPO/TYPE/TAG".into());
    }
    Ok(s.to_owned())
}

/// The filesystem path of a `unix:///PATH` (or `unix:PATH`) socket address.
pub fn socket_path(addr: &str) -> Result<PathBuf, String> {
    let p = addr
        .strip_prefix("unix://")
        .or_else(|| addr.strip_prefix("unix:"))
        .ok_or_else(|| format!("{addr:?} is not a unix:///PATH socket address"))?;
    if !p.starts_with('/') {
        return Err(format!("{addr:?}: the socket path must be absolute (unix:///PATH)"));
    }
    Ok(PathBuf::from(p))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn coco_shape_is_read() {
        let c = CdhToml::parse(
            "socket = \"unix:///run/confidential-containers/cdh.sock\"\n\
             [kbc]\nname = \"cc_kbc\"\nurl = \"http://10.0.0.1:8080\"\n\
             [image]\nmax_concurrent_layer_downloads_per_image = 5\n\
             authenticated_registry_credentials_uri = \"kbs:///default/credential/test\"\nfoo = 1\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.kbs_url.as_deref(), Some("http://10.0.0.1:8080"));
        assert_eq!(c.max_concurrent_layers, Some(5));
        assert_eq!(c.registry_credentials.as_deref(), Some("kbs:///default/credential/test"));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings.iter().any(|w| w.contains("image.foo")));
    }

    #[test]
    fn invalid_values_refuse() {
        for (text, key) in [
            ("socket = 3", "socket"),
            ("socket = \"/tmp/x.sock\"", "socket"),
            ("[kbc]\nname = \"offline_fs_kbc\"", "kbc.name"),
            ("[kbc]\nurl = \"ftp://x\"", "kbc.url"),
            ("[image]\nmax_concurrent_layer_downloads_per_image = 0", "image.max_concurrent"),
            (
                "[image]\nimage_security_policy_uri = \"https://x/policy.json\"",
                "image.image_security_policy_uri",
            ),
            (
                "[image]\nimage_security_policy_uri = \"kbs:///default/two\"",
                "image.image_security_policy_uri",
            ),
            ("[image]\nimage_security_policy_uri = \"policy.json\"", "image.image_security_policy_uri"),
            ("[image]\nimage_security_policy_uri = 3", "image.image_security_policy_uri"),
            ("[image]\nimage_security_policy = \"{}\"", "image_security_policy_uri"),
            ("[image]\nsigstore_config_uri = \"kbs:///default/sigstore-config/test\"", "--registries-d"),
            ("kbc = 1", "kbc"),
        ] {
            let e = CdhToml::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(key), "{text:?}: {e}");
        }
        assert!(matches!(CdhToml::parse("socket = ", "t"), Err(ConfigError::Syntax { .. })));
    }

    #[test]
    fn registry_timeouts_and_layer_bounds_are_read_and_checked() {
        let c = CdhToml::parse(
            "[image]\nregistry_connect_timeout_secs = 5\nregistry_idle_timeout_secs = 1.5\n\
             registry_request_timeout_secs = 90\nmax_decompression_ratio = 2000\nmax_layer_size = 1048576\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.registry_connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(c.registry_idle_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(c.registry_request_timeout, Some(Duration::from_secs(90)));
        assert_eq!(c.max_decompression_ratio, Some(2000));
        assert_eq!(c.max_layer_size, Some(1 << 20));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        for text in [
            "[image]\nregistry_idle_timeout_secs = 0",
            "[image]\nregistry_request_timeout_secs = \"60\"",
            "[image]\nmax_decompression_ratio = 0",
            "[image]\nmax_layer_size = -1",
        ] {
            let e = CdhToml::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(text.split('\n').nth(1).unwrap().split(' ').next().unwrap()), "{text}: {e}");
        }
    }

    #[test]
    fn empty_policy_uri_means_no_policy_and_warns() {
        let c = CdhToml::parse("[image]\nimage_security_policy_uri = \"\"", "t").unwrap();
        assert_eq!(c.signature_policy, None);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("not checked"), "{:?}", c.warnings);
    }

    #[test]
    fn image_security_policy_uri_is_accepted_and_parsed() {
        for (value, want) in [
            ("kbs:///default/security-policy/test", "kbs:///default/security-policy/test"),
            ("file:///etc/containers/policy.json", "/etc/containers/policy.json"),
            ("/etc/containers/policy.json", "/etc/containers/policy.json"),
        ] {
            let c = CdhToml::parse(&format!("[image]\nimage_security_policy_uri = {value:?}"), "t").unwrap();
            assert_eq!(c.signature_policy.as_deref(), Some(want), "{value}");
            assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        }
    }

    #[test]
    fn bad_policy_uri_refuses_start_naming_the_key() {
        for value in ["kbs://kbs.example/default/p/t", "file://host/p.json", "http://x/p.json", "kbs:///a/b"]
        {
            let e = CdhToml::parse(&format!("[image]\nimage_security_policy_uri = {value:?}"), "cdh.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains("cdh.toml: `image.image_security_policy_uri`"), "{value}: {e}");
        }
    }

    #[test]
    fn signature_policy_locations() {
        assert_eq!(signature_policy_location("policy.json").unwrap(), "policy.json");
        assert_eq!(signature_policy_location("file:///p.json").unwrap(), "/p.json");
        assert!(signature_policy_location("").is_err());
        assert!(signature_policy_location("kbs:///a/b/c/d").is_err());
    }

    #[test]
    fn private_registry_keys_are_read_as_coco_spells_them() {
        let c = CdhToml::parse(
            "[image]\n\
             authenticated_registry_credentials_uri = \"file:///etc/auth.json\"\n\
             registry_configuration_uri = \"kbs:///default/registry-configuration/test\"\n\
             image_pull_proxy = { https_proxy = \"http://proxy:3128\", no_proxy = \"192.168.0.1,.internal\" }\n\
             skip_proxy_ips = \"10.0.0.0/8\"\n\
             [image.registry_config]\n[[image.registry_config.registry]]\nlocation = \"bad.example\"\nblocked = true\n",
            "t",
        )
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.registry_credentials.as_deref(), Some("/etc/auth.json"));
        assert_eq!(c.registry_configuration.as_deref(), Some("kbs:///default/registry-configuration/test"));
        let p = c.image_pull_proxy.unwrap();
        assert_eq!(p.https_proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!(p.no_proxy.as_deref(), Some("192.168.0.1,.internal,10.0.0.0/8"));
        assert!(c.registry_config.unwrap().registries()[0].blocked);
        for (text, key) in [
            (
                "[image]\nauthenticated_registry_credentials_uri = \"auth.json\"",
                "authenticated_registry_credentials_uri",
            ),
            ("[image]\nregistry_configuration_uri = \"kbs:///a/b\"", "registry_configuration_uri"),
            ("[image]\nimage_pull_proxy = { https_proxy = \"proxy:3128\" }", "https_proxy"),
            ("[image]\nextra_root_certificates = [\"hello\"]", "extra_root_certificates[0] holds no PEM"),
            (
                "[image]\nregistry_config = \"[[registry]]\\ninsecure = true\"",
                "neither a prefix nor a location",
            ),
        ] {
            let e = CdhToml::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(socket_path("unix:///run/x.sock").unwrap(), PathBuf::from("/run/x.sock"));
        assert!(socket_path("unix://run/x.sock").is_err());
        assert!(socket_path("tcp://1.2.3.4:1").is_err());
    }
}
