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
    #[error("auth file {path}: {what} is not a JSON object")]
    NotAnObject { path: PathBuf, what: String },
}

/// Largest auth file read: real ones are a few KiB; the cap keeps a path such as
/// `/dev/zero` (in `$REGISTRY_AUTH_FILE`, say) from exhausting memory.
pub const MAX_AUTH_FILE: u64 = 4 << 20;

/// Reads an auth file, at most [`MAX_AUTH_FILE`] bytes.
fn read_auth_file(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    crate::bounded::read_file_capped(path, MAX_AUTH_FILE, "an auth file").map(Zeroizing::new)
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

/// A user name and password for a registry, and the `identitytoken` (an OAuth2
/// refresh token for the registry's token service) when the auth file has one.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
    pub identity_token: Option<Secret>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("identity_token", &self.identity_token.as_ref().map(|_| "<redacted>"))
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
        Ok(Credentials { username: user.to_string(), password: Secret::new(pass), identity_token: None })
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

/// A containers auth.json held in memory (from a file or a KBS resource): its
/// usable entries, parsed once. The secrets stay in [`Secret`]s; `origin` (a path
/// or a `kbs:///` URI) names it in messages, never its content.
#[derive(Clone)]
pub struct AuthJson {
    origin: String,
    entries: Vec<(String, Credentials)>,
}

impl fmt::Debug for AuthJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthJson")
            .field("origin", &self.origin)
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// One `auths` entry as credentials, `Ok(None)` when it holds none (an empty
/// `auth`, a credential helper's placeholder). Never quotes a value.
fn entry_credentials(
    key: &str,
    v: &serde_json::Value,
    origin: &Path,
) -> Result<Option<Credentials>, AuthError> {
    let bad = || AuthError::BadAuthField { path: origin.to_path_buf(), key: key.to_string() };
    let field = |name: &str| v.get(name).and_then(serde_json::Value::as_str).filter(|s| !s.is_empty());
    let identity_token = field("identitytoken").map(Secret::new);
    if let Some(encoded) = field("auth") {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| bad())?,
        );
        let text = std::str::from_utf8(&decoded).map_err(|_| bad())?;
        let (user, pass) = text.split_once(':').ok_or_else(bad)?;
        if user.is_empty() {
            return Err(bad());
        }
        return Ok(Some(Credentials {
            username: user.to_string(),
            password: Secret::new(pass),
            identity_token,
        }));
    }
    if let Some(user) = field("username") {
        let pass = v.get("password").and_then(serde_json::Value::as_str).unwrap_or_default();
        return Ok(Some(Credentials {
            username: user.to_string(),
            password: Secret::new(pass),
            identity_token,
        }));
    }
    // An identity token alone (a registry's OAuth2 refresh token): the user name
    // sent with it is the conventional placeholder.
    Ok(identity_token.map(|t| Credentials {
        username: "<token>".to_string(),
        password: Secret::new(""),
        identity_token: Some(t),
    }))
}

impl AuthJson {
    /// Parses auth.json bytes; `origin` names them in errors. Every entry with
    /// credentials is checked now, so a bad one fails at load, not at a pull.
    pub fn parse(json: &[u8], origin: &str) -> Result<Self, AuthError> {
        let path = Path::new(origin);
        // Parsed untyped: serde's typed errors quote the offending value, which
        // here could be a password.
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|source| AuthError::Json {
            path: path.to_path_buf(),
            source: strip_json_error(source),
        })?;
        let mut entries = Vec::new();
        let auths = match value.get("auths") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Object(m)) => Some(m),
            Some(_) => {
                return Err(AuthError::NotAnObject { path: path.to_path_buf(), what: "`auths`".into() })
            }
        };
        for (key, v) in auths.into_iter().flatten() {
            if !v.is_object() {
                return Err(AuthError::NotAnObject {
                    path: path.to_path_buf(),
                    what: format!("entry {key:?}"),
                });
            }
            if let Some(c) = entry_credentials(key, v, path)? {
                entries.push((key.clone(), c));
            }
        }
        Ok(AuthJson { origin: origin.to_string(), entries })
    }

    /// Where the file came from (a path or a `kbs:///` URI).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The credentials for `registry`/`repository`, as containers-auth.json(5)
    /// looks them up: the most specific key first (`host/ns/repo`, then `host/ns`,
    /// then `host`); legacy `https://host/v1/` keys count as `host`.
    pub fn lookup(&self, registry: &str, repository: &str) -> Option<&Credentials> {
        let full = format!("{registry}/{repository}");
        let mut best: Option<(usize, &Credentials)> = None;
        for (key, creds) in &self.entries {
            let k = normalise_key(key);
            let score = if k.contains('/') && !key.contains("://") {
                // A namespaced key: must be a path prefix of registry/repository.
                if full == k || full.starts_with(&format!("{k}/")) {
                    k.len()
                } else {
                    continue;
                }
            } else if same_host(host_of(key), registry) {
                0
            } else {
                continue;
            };
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, creds));
            }
        }
        best.map(|(_, c)| c)
    }
}

/// A JSON syntax error says where (line, column), never what: its text is kept
/// only for syntax and EOF errors, which do not quote the input.
fn strip_json_error(e: serde_json::Error) -> serde_json::Error {
    use serde::de::Error as _;
    match e.classify() {
        serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof
        | serde_json::error::Category::Io => e,
        serde_json::error::Category::Data => serde_json::Error::custom(format!(
            "unexpected content at line {} column {}",
            e.line(),
            e.column()
        )),
    }
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
    let file = AuthJson::parse(json, &path.display().to_string())?;
    Ok(file.lookup(registry, repository).cloned())
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
    Ok(lookup_credentials(registry, repository, creds, None, auth_file)?.credentials)
}

/// The credentials found for one registry location, and where they were looked
/// for (for a 401's message; never their value).
#[derive(Debug, Clone)]
pub struct Found {
    pub credentials: Option<Credentials>,
    /// `--creds`, the auth file's path or `kbs:///` URI, or the default files.
    pub searched: String,
}

/// [`resolve_credentials`] with an in-memory auth file (`auth_json`, e.g. from the
/// KBS) taking the place of `auth_file`, saying where it looked.
pub fn lookup_credentials(
    registry: &str,
    repository: &str,
    creds: Option<&str>,
    auth_json: Option<&AuthJson>,
    auth_file: Option<&Path>,
) -> Result<Found, AuthError> {
    if let Some(c) = creds {
        return Ok(Found { credentials: Some(Credentials::parse_creds(c)?), searched: "--creds".into() });
    }
    if let Some(j) = auth_json {
        return Ok(Found {
            credentials: j.lookup(registry, repository).cloned(),
            searched: format!("the auth file {}", j.origin()),
        });
    }
    if let Some(p) = auth_file {
        let bytes = read_auth_file(p).map_err(|source| AuthError::Read { path: p.to_path_buf(), source })?;
        return Ok(Found {
            credentials: parse_auth_file(&bytes, registry, repository, p)?,
            searched: format!("the auth file {}", p.display()),
        });
    }
    let files = default_auth_files();
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let searched = format!("--creds, --authfile or the default auth files ({})", names.join(", "));
    for p in files {
        let bytes = match read_auth_file(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(AuthError::Read { path: p.clone(), source }),
        };
        if let Some(c) = parse_auth_file(&bytes, registry, repository, &p)? {
            return Ok(Found { credentials: Some(c), searched: format!("the auth file {}", p.display()) });
        }
    }
    Ok(Found { credentials: None, searched })
}

/// Reads an auth file (at most [`MAX_AUTH_FILE`] bytes) into an [`AuthJson`].
pub fn load_auth_file(path: &Path) -> Result<AuthJson, AuthError> {
    let bytes =
        read_auth_file(path).map_err(|source| AuthError::Read { path: path.to_path_buf(), source })?;
    AuthJson::parse(&bytes, &path.display().to_string())
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

    #[test]
    fn username_password_identity_token_and_namespaces() {
        let json = format!(
            r#"{{"auths":{{
                "reg.example:5000":{{"username":"host","password":"ph"}},
                "reg.example:5000/team":{{"auth":"{}"}},
                "reg.example:5000/team/app":{{"username":"app","password":"pa","identitytoken":"refresh-tok"}},
                "tok.example":{{"identitytoken":"only-tok"}}
            }}}}"#,
            b64("team:pt")
        );
        let f = AuthJson::parse(json.as_bytes(), "kbs:///default/credential/test").unwrap();
        let user = |reg: &str, repo: &str| f.lookup(reg, repo).map(|c| c.username.clone());
        assert_eq!(user("reg.example:5000", "team/app").as_deref(), Some("app"));
        assert_eq!(user("reg.example:5000", "team/app/sub").as_deref(), Some("app"));
        assert_eq!(user("reg.example:5000", "team/other").as_deref(), Some("team"));
        assert_eq!(user("reg.example:5000", "teams/x").as_deref(), Some("host"));
        assert_eq!(user("reg.example:5000", "x").as_deref(), Some("host"));
        assert_eq!(f.lookup("reg.example:5000", "x").unwrap().password.expose(), "ph");
        let app = f.lookup("reg.example:5000", "team/app").unwrap();
        assert_eq!(app.identity_token.as_ref().unwrap().expose(), "refresh-tok");
        assert!(f.lookup("tok.example", "r").unwrap().identity_token.is_some());
        let dbg = format!("{f:?} {app:?}");
        assert!(!dbg.contains("refresh-tok") && !dbg.contains("pa\"") && dbg.contains("kbs:///"), "{dbg}");
    }

    #[test]
    fn malformed_auth_files_never_quote_their_values() {
        for bad in [
            r#"{"auths":{"h":"hunter2-secret"}}"#,
            r#"{"auths":"hunter2-secret"}"#,
            r#"{"auths":{"h":{"auth":"hunter2-secret"}}}"#,
            r#"{"auths":{"h":{"auth":7}}}, "x": "hunter2-secret"#,
        ] {
            let e = AuthJson::parse(bad.as_bytes(), "auth.json").unwrap_err();
            let line = report::line(&e);
            assert!(!line.contains("hunter2"), "{line}");
            assert!(line.contains("auth.json"), "{line}");
        }
    }
}
