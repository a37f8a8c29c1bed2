//! Registry credentials: `--creds USER:PASS` and auth files.
//!
//! Lookup order, as skopeo does it: `--creds`, then `--authfile` (or
//! `$REGISTRY_AUTH_FILE`), then `$XDG_RUNTIME_DIR/containers/auth.json`, then
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. Only the `auths` map with
//! base64 `auth` fields is read; credential helpers are not run. Passwords live in
//! [`Secret`]s so they are zeroized on drop and never printed.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use zeroize::Zeroizing;

/// What was wrong with supplied credentials or an auth file (never includes secrets).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("--creds must be USER:PASS (or USER alone); the user name is empty")]
    EmptyUser,
    #[error("cannot read auth file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("auth file {path} is not valid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("auth file {path}: entry {key:?} has an `auth` field that is not base64 of USER:PASS")]
    BadAuthField { path: PathBuf, key: String },
}

/// Largest auth file read: real ones are a few KiB; the cap keeps a path such as
/// `/dev/zero` (in `$REGISTRY_AUTH_FILE`, say) from exhausting memory.
pub const MAX_AUTH_FILE: u64 = 4 << 20;

/// Reads an auth file, at most [`MAX_AUTH_FILE`] bytes.
fn read_auth_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    std::fs::File::open(path)?.take(MAX_AUTH_FILE + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_AUTH_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_AUTH_FILE} bytes; not an auth file"),
        ));
    }
    Ok(out)
}

/// A secret string (password, token): zeroized on drop, redacted in Debug.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(Zeroizing::new(s.into()))
    }
    /// The secret itself; only for building an HTTP header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Parse `--creds USER:PASS`; the password may contain `:`; `USER` alone means
    /// an empty password.
    pub fn parse_creds(s: &str) -> Result<Credentials, AuthError> {
        let (user, pass) = s.split_once(':').unwrap_or((s, ""));
        if user.is_empty() {
            return Err(AuthError::EmptyUser);
        }
        Ok(Credentials { username: user.to_string(), password: Secret::new(pass) })
    }
}

/// Strip a scheme and a path so legacy keys such as `https://index.docker.io/v1/`
/// compare equal to plain host names.
fn normalise_key(key: &str) -> &str {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    k.trim_end_matches('/')
}

fn host_of(key: &str) -> &str {
    let k = normalise_key(key);
    k.split('/').next().unwrap_or(k)
}

fn same_host(a: &str, b: &str) -> bool {
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    a == b || (hub(a) && hub(b))
}

/// Find credentials for `registry`/`repository` in the JSON of an auth file.
/// A key naming the repository or one of its namespaces (`quay.io/org`) wins over
/// a key naming just the host, as in containers-auth.json.
pub fn parse_auth_file(
    json: &[u8],
    registry: &str,
    repository: &str,
    path: &Path,
) -> Result<Option<Credentials>, AuthError> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: Option<String>,
    }
    let file: File = serde_json::from_slice(json)
        .map_err(|source| AuthError::Json { path: path.to_path_buf(), source })?;
    let full = format!("{registry}/{repository}");
    // Score: length of the matched path (longer = more specific).
    let mut best: Option<(usize, &String, &Entry)> = None;
    for (key, entry) in &file.auths {
        let k = normalise_key(key);
        let score = if k.contains('/') && !key.contains("://") {
            // A namespaced key: must be a path prefix of registry/repository.
            let matches = full == k || full.starts_with(&format!("{k}/"));
            if matches {
                k.len()
            } else {
                continue;
            }
        } else if same_host(host_of(key), registry) {
            0
        } else {
            continue;
        };
        if entry.auth.as_deref().is_some_and(|a| !a.is_empty())
            && best.as_ref().is_none_or(|(s, _, _)| score > *s)
        {
            best = Some((score, key, entry));
        }
    }
    let Some((_, key, entry)) = best else {
        return Ok(None);
    };
    let bad = || AuthError::BadAuthField { path: path.to_path_buf(), key: key.clone() };
    let encoded = entry.auth.as_deref().unwrap_or_default();
    let decoded =
        Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| bad())?);
    let text = std::str::from_utf8(&decoded).map_err(|_| bad())?;
    let (user, pass) = text.split_once(':').ok_or_else(bad)?;
    if user.is_empty() {
        return Err(bad());
    }
    Ok(Some(Credentials { username: user.to_string(), password: Secret::new(pass) }))
}

/// The auth files consulted when none is given, in order.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        v.push(PathBuf::from(p));
    }
    if let Some(rt) = std::env::var_os("XDG_RUNTIME_DIR") {
        v.push(PathBuf::from(rt).join("containers/auth.json"));
    }
    if let Some(dc) = std::env::var_os("DOCKER_CONFIG") {
        v.push(PathBuf::from(dc).join("config.json"));
    } else if let Some(home) = std::env::var_os("HOME") {
        v.push(PathBuf::from(home).join(".docker/config.json"));
    }
    v
}

/// Resolve the credentials to use for `registry`/`repository`: `creds` (the
/// `--creds` value) wins, then `auth_file` (an explicit `--authfile`, which must
/// exist), then the [`default_auth_files`] that exist. `None` means anonymous.
pub fn resolve_credentials(
    registry: &str,
    repository: &str,
    creds: Option<&str>,
    auth_file: Option<&Path>,
) -> Result<Option<Credentials>, AuthError> {
    if let Some(c) = creds {
        return Credentials::parse_creds(c).map(Some);
    }
    let read = |path: &Path| -> Result<Option<Vec<u8>>, AuthError> {
        match read_auth_file(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AuthError::Read { path: path.to_path_buf(), source }),
        }
    };
    if let Some(p) = auth_file {
        let bytes = read_auth_file(p).map_err(|source| AuthError::Read { path: p.to_path_buf(), source })?;
        return parse_auth_file(&bytes, registry, repository, p);
    }
    for p in default_auth_files() {
        if let Some(bytes) = read(&p)? {
            if let Some(c) = parse_auth_file(&bytes, registry, repository, &p)? {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn creds_flag() {
        let c = Credentials::parse_creds("alice:pa:ss").unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(c.password.expose(), "pa:ss");
        let c = Credentials::parse_creds("bob").unwrap();
        assert_eq!(c.password.expose(), "");
        assert!(matches!(Credentials::parse_creds(":x"), Err(AuthError::EmptyUser)));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credentials::parse_creds("alice:hunter2").unwrap();
        let dbg = format!("{c:?}");
        assert!(dbg.contains("alice") && !dbg.contains("hunter2"), "{dbg}");
        assert!(!format!("{:?}", Secret::new("tok123")).contains("tok123"));
    }

    #[test]
    fn auth_file_lookup() {
        let json = format!(
            r#"{{"auths":{{
                "127.0.0.1:5000":{{"auth":"{}"}},
                "quay.io/org":{{"auth":"{}"}},
                "quay.io":{{"auth":"{}"}},
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "helper.io":{{"auth":""}}
            }}, "credHelpers": {{"x.io":"pass"}} }}"#,
            b64("u1:p1"),
            b64("org:porg"),
            b64("quay:pq"),
            b64("hub:ph")
        );
        let p = Path::new("auth.json");
        let get = |reg: &str, repo: &str| {
            parse_auth_file(json.as_bytes(), reg, repo, p).unwrap().map(|c| c.username)
        };
        assert_eq!(get("127.0.0.1:5000", "app").as_deref(), Some("u1"));
        assert_eq!(get("127.0.0.1:5001", "app"), None);
        assert_eq!(get("quay.io", "org/app").as_deref(), Some("org"));
        assert_eq!(get("quay.io", "other/app").as_deref(), Some("quay"));
        assert_eq!(get("quay.io", "organic/app").as_deref(), Some("quay"));
        assert_eq!(get("docker.io", "library/alpine").as_deref(), Some("hub"));
        assert_eq!(get("helper.io", "x"), None, "empty auth entries are skipped");
    }

    #[test]
    fn bad_auth_files_are_clear_errors() {
        let p = Path::new("auth.json");
        assert!(matches!(parse_auth_file(b"{", "h", "r", p), Err(AuthError::Json { .. })));
        let bad = br#"{"auths":{"h":{"auth":"!!notbase64"}}}"#;
        let e = parse_auth_file(bad, "h", "r", p).unwrap_err();
        assert!(matches!(e, AuthError::BadAuthField { ref key, .. } if key == "h"));
        let nocolon = format!(r#"{{"auths":{{"h":{{"auth":"{}"}}}}}}"#, b64("justuser"));
        assert!(parse_auth_file(nocolon.as_bytes(), "h", "r", p).is_err());
        assert_eq!(parse_auth_file(b"{}", "h", "r", p).unwrap(), None);
    }

    #[test]
    fn oversized_auth_file_is_refused_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        let mut big = br#"{"auths":{},"pad":""#.to_vec();
        big.resize((MAX_AUTH_FILE + 10) as usize, b' ');
        std::fs::write(&f, big).unwrap();
        let e = resolve_credentials("h:1", "r", None, Some(&f)).unwrap_err();
        assert!(matches!(e, AuthError::Read { .. }), "{e}");
        assert!(report::line(&e).contains("larger than"), "{e}");
        assert_eq!(report::repeated_source(&e), None);
    }

    #[test]
    fn explicit_creds_and_auth_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, format!(r#"{{"auths":{{"h:1":{{"auth":"{}"}}}}}}"#, b64("fu:fp"))).unwrap();
        let c = resolve_credentials("h:1", "r", Some("cu:cp"), Some(&f)).unwrap().unwrap();
        assert_eq!(c.username, "cu", "--creds wins over the auth file");
        let c = resolve_credentials("h:1", "r", None, Some(&f)).unwrap().unwrap();
        assert_eq!(c.password.expose(), "fp");
        let missing = dir.path().join("nope.json");
        assert!(matches!(resolve_credentials("h:1", "r", None, Some(&missing)), Err(AuthError::Read { .. })));
    }
}
