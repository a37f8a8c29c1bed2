//! containers-registries.conf(5), version 2: where an image is pulled from.
//!
//! ```toml
//! [[registry]]
//! prefix = "example.com/team"          # optional; `*.example.com` matches subdomains
//! location = "registry.internal/team"  # remap: the prefix is replaced by this
//! insecure = false                     # true: plain HTTP
//! blocked = false                      # true: refused before any request
//! [[registry.mirror]]
//! location = "mirror.internal/team"
//! insecure = true
//! pull-from-mirror = "digest-only"     # all (default) | digest-only | tag-only
//! ```
//!
//! The entry whose prefix matches the most of `host/repository` applies. Its
//! mirrors (those whose `pull-from-mirror` admits the reference) are tried in
//! order, then the (remapped) location. Other keys of the file
//! (`unqualified-search-registries`, `[aliases]`, `short-name-mode`, ...) are
//! accepted and not used: cloak pulls fully qualified references only.

use crate::reference::RegistryRef;

/// Largest registries.conf read (real ones are a few KiB).
pub const MAX_REGISTRIES_CONF: u64 = 4 << 20;

/// Why a registries.conf was refused, or refuses an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistriesConfError {
    #[error("cannot read registries.conf {origin}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registries.conf {origin} is not valid TOML: {reason}")]
    Syntax { origin: String, reason: String },
    #[error("registries.conf {origin}: {what}")]
    Invalid { origin: String, what: String },
    /// The image's registry is `blocked = true`: nothing was sent.
    #[error(
        "{image} is blocked by the [[registry]] entry with prefix {prefix:?} in registries.conf {origin} \
         (blocked = true); no request was sent"
    )]
    Blocked { image: String, prefix: String, origin: String },
}

/// `pull-from-mirror`: which references a mirror serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullFromMirror {
    #[default]
    All,
    DigestOnly,
    TagOnly,
}

/// A `[[registry.mirror]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub location: String,
    pub insecure: bool,
    pub pull_from_mirror: PullFromMirror,
}

/// A `[[registry]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// As written (defaults to `location`).
    pub prefix: String,
    /// Empty: the image is not remapped.
    pub location: String,
    pub insecure: bool,
    pub blocked: bool,
    pub mirrors: Vec<Mirror>,
}

/// A parsed registries.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistriesConf {
    origin: String,
    registries: Vec<RegistryEntry>,
}

/// One place an image is tried at, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullLocation {
    /// The reference there (same tag or digest as the original).
    pub reference: RegistryRef,
    /// Plain HTTP (`insecure = true`).
    pub insecure: bool,
    /// A mirror (else the registry itself, possibly remapped).
    pub mirror: bool,
}

impl RegistriesConf {
    /// Reads a file (at most [`MAX_REGISTRIES_CONF`] bytes).
    pub fn load(path: &std::path::Path) -> Result<Self, RegistriesConfError> {
        let origin = path.display().to_string();
        let bytes = crate::bounded::read_file_capped(path, MAX_REGISTRIES_CONF, "a registries.conf")
            .map_err(|source| RegistriesConfError::Read { origin: origin.clone(), source })?;
        Self::parse(&bytes, &origin)
    }

    /// Parses registries.conf bytes; `origin` (a path, a `kbs:///` URI, "cdh.toml
    /// [image] registry_config") names them in messages.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self, RegistriesConfError> {
        if bytes.len() as u64 > MAX_REGISTRIES_CONF {
            return Err(invalid(origin, format!("larger than {MAX_REGISTRIES_CONF} bytes")));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| invalid(origin, "not UTF-8 text".into()))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| RegistriesConfError::Syntax {
            origin: origin.to_string(),
            reason: e.message().to_string(),
        })?;
        Self::from_table(&table, origin)
    }

    /// Reads an already parsed TOML table (cdh.toml's inline `[image.registry_config]`).
    pub fn from_table(table: &toml::Table, origin: &str) -> Result<Self, RegistriesConfError> {
        if table.contains_key("registries") {
            return Err(invalid(
                origin,
                "is in the version 1 format ([registries.search] ...); write it as version 2 \
                 ([[registry]] entries)"
                    .into(),
            ));
        }
        let mut registries: Vec<RegistryEntry> = Vec::new();
        let list = match table.get("registry") {
            None => &Vec::new(),
            Some(toml::Value::Array(a)) => a,
            Some(_) => {
                return Err(invalid(origin, "`registry` must be an array of tables ([[registry]])".into()))
            }
        };
        for (i, r) in list.iter().enumerate() {
            let n = i + 1;
            let r =
                r.as_table().ok_or_else(|| invalid(origin, format!("[[registry]] #{n} is not a table")))?;
            let entry = parse_entry(r, n, origin)?;
            if registries.iter().any(|e| e.prefix == entry.prefix) {
                return Err(invalid(
                    origin,
                    format!("two [[registry]] entries have the prefix {:?}", entry.prefix),
                ));
            }
            registries.push(entry);
        }
        Ok(RegistriesConf { origin: origin.to_string(), registries })
    }

    /// Where it was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The `[[registry]]` entries, in file order.
    pub fn registries(&self) -> &[RegistryEntry] {
        &self.registries
    }

    /// The entry that applies to `r` (the longest matching prefix).
    pub fn entry_for(&self, r: &RegistryRef) -> Option<&RegistryEntry> {
        let name = format!("{}/{}", r.registry, r.repository);
        self.registries
            .iter()
            .filter_map(|e| matched_len(&e.prefix, &r.registry, &name).map(|len| (len, e)))
            .max_by_key(|(len, _)| *len)
            .map(|(_, e)| e)
    }

    /// The places `r` is pulled from, in order: the mirrors that serve it, then
    /// the registry (remapped when the entry has a location). A blocked registry
    /// is an error. `insecure` of a location is its entry's.
    pub fn locations(&self, r: &RegistryRef) -> Result<Vec<PullLocation>, RegistriesConfError> {
        let Some(e) = self.entry_for(r) else {
            return Ok(vec![PullLocation { reference: r.clone(), insecure: false, mirror: false }]);
        };
        let image = format!("{}/{}", r.registry, r.repository);
        if e.blocked {
            return Err(RegistriesConfError::Blocked {
                image,
                prefix: e.prefix.clone(),
                origin: self.origin.clone(),
            });
        }
        // What follows the prefix (for `*.example.com`, what follows the host).
        let rest =
            if e.prefix.starts_with("*.") { &image[r.registry.len()..] } else { &image[e.prefix.len()..] };
        let mut out = Vec::new();
        let pinned = r.digest.is_some();
        for m in &e.mirrors {
            let serves = match m.pull_from_mirror {
                PullFromMirror::All => true,
                PullFromMirror::DigestOnly => pinned,
                PullFromMirror::TagOnly => !pinned,
            };
            if serves {
                let reference = relocate(r, &format!("{}{rest}", m.location), &self.origin)?;
                out.push(PullLocation { reference, insecure: m.insecure, mirror: true });
            }
        }
        let primary = if e.location.is_empty() {
            r.clone()
        } else {
            relocate(r, &format!("{}{rest}", e.location), &self.origin)?
        };
        out.push(PullLocation { reference: primary, insecure: e.insecure, mirror: false });
        Ok(out)
    }
}

fn invalid(origin: &str, what: String) -> RegistriesConfError {
    RegistriesConfError::Invalid { origin: origin.to_string(), what }
}

/// How much of `name` (`host/repo`) `prefix` matches, `None` if it does not.
fn matched_len(prefix: &str, host: &str, name: &str) -> Option<usize> {
    if let Some(domain) = prefix.strip_prefix('*') {
        // `*.example.com`: any host under example.com (not example.com itself).
        let bare = host.split(':').next().unwrap_or(host);
        return (bare.ends_with(domain) && bare.len() > domain.len()).then_some(prefix.len());
    }
    let at_boundary = name == prefix || name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    at_boundary.then_some(prefix.len())
}

/// `r` with its registry and repository taken from `name` (`host/repo`).
fn relocate(r: &RegistryRef, name: &str, origin: &str) -> Result<RegistryRef, RegistriesConfError> {
    let (host, repo) = name
        .split_once('/')
        .filter(|(h, repo)| !h.is_empty() && !repo.is_empty())
        .ok_or_else(|| invalid(origin, format!("remapping gives {name:?}, which has no host/repository")))?;
    Ok(RegistryRef {
        registry: host.to_string(),
        repository: repo.to_string(),
        tag: r.tag.clone(),
        digest: r.digest.clone(),
    })
}

/// A location or prefix as written: `host[:port][/path]`, no scheme, no tag.
fn check_location(s: &str, what: &str, origin: &str) -> Result<String, RegistriesConfError> {
    let bad = |why: &str| invalid(origin, format!("{what} {s:?} {why}"));
    if s.contains("://") {
        return Err(bad("must not have a scheme (write host[:port][/path])"));
    }
    if s.contains('@') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("is not host[:port][/path]"));
    }
    let t = s.trim_end_matches('/');
    if t.starts_with('/') || t.contains("//") {
        return Err(bad("is not host[:port][/path]"));
    }
    Ok(t.to_string())
}

fn get_bool(t: &toml::Table, key: &str, ctx: &str, origin: &str) -> Result<bool, RegistriesConfError> {
    match t.get(key) {
        None => Ok(false),
        Some(toml::Value::Boolean(b)) => Ok(*b),
        Some(_) => Err(invalid(origin, format!("{ctx}: `{key}` must be true or false"))),
    }
}

fn get_str<'a>(
    t: &'a toml::Table,
    key: &str,
    ctx: &str,
    origin: &str,
) -> Result<Option<&'a str>, RegistriesConfError> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(origin, format!("{ctx}: `{key}` must be a string"))),
    }
}

fn parse_entry(r: &toml::Table, n: usize, origin: &str) -> Result<RegistryEntry, RegistriesConfError> {
    let ctx = format!("[[registry]] #{n}");
    let location = match get_str(r, "location", &ctx, origin)? {
        Some(l) if !l.is_empty() => check_location(l, &format!("{ctx}: location"), origin)?,
        _ => String::new(),
    };
    let prefix = match get_str(r, "prefix", &ctx, origin)? {
        Some(p) if !p.is_empty() => p.trim_end_matches('/').to_string(),
        _ if !location.is_empty() => location.clone(),
        _ => return Err(invalid(origin, format!("{ctx} has neither a prefix nor a location"))),
    };
    let ctx = format!("[[registry]] prefix {prefix:?}");
    if let Some(domain) = prefix.strip_prefix('*') {
        if !domain.starts_with('.') || domain.len() < 2 || domain.contains(['/', '*', ':']) {
            return Err(invalid(
                origin,
                format!("{ctx}: a wildcard prefix is written *.DOMAIN (no path, no port)"),
            ));
        }
        if !location.is_empty() {
            return Err(invalid(
                origin,
                format!("{ctx}: a wildcard prefix cannot be remapped (leave location unset)"),
            ));
        }
    } else {
        check_location(&prefix, &format!("{ctx}: prefix"), origin)?;
    }
    let insecure = get_bool(r, "insecure", &ctx, origin)?;
    let blocked = get_bool(r, "blocked", &ctx, origin)?;
    let digest_only = get_bool(r, "mirror-by-digest-only", &ctx, origin)?;
    let mut mirrors = Vec::new();
    match r.get("mirror") {
        None => {}
        Some(toml::Value::Array(list)) => {
            for (j, m) in list.iter().enumerate() {
                let mctx = format!("{ctx}: mirror #{}", j + 1);
                let m = m.as_table().ok_or_else(|| invalid(origin, format!("{mctx} is not a table")))?;
                let location = match get_str(m, "location", &mctx, origin)? {
                    Some(l) if !l.is_empty() => check_location(l, &format!("{mctx}: location"), origin)?,
                    _ => return Err(invalid(origin, format!("{mctx} has no location"))),
                };
                let pull_from_mirror = match get_str(m, "pull-from-mirror", &mctx, origin)? {
                    None | Some("") if digest_only => PullFromMirror::DigestOnly,
                    None | Some("") | Some("all") => PullFromMirror::All,
                    Some("digest-only") => PullFromMirror::DigestOnly,
                    Some("tag-only") => PullFromMirror::TagOnly,
                    Some(other) => {
                        return Err(invalid(
                            origin,
                            format!(
                                "{mctx}: pull-from-mirror is {other:?}; it is all, digest-only or tag-only"
                            ),
                        ))
                    }
                };
                mirrors.push(Mirror {
                    location,
                    insecure: get_bool(m, "insecure", &mctx, origin)?,
                    pull_from_mirror,
                });
            }
        }
        Some(_) => {
            return Err(invalid(
                origin,
                format!("{ctx}: `mirror` must be an array of tables ([[registry.mirror]])"),
            ))
        }
    }
    Ok(RegistryEntry { prefix, location, insecure, blocked, mirrors })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::reference::ImageRef;

    fn reg(s: &str) -> RegistryRef {
        match s.parse::<ImageRef>().unwrap() {
            ImageRef::Registry(r) => r,
            ImageRef::Layout(_) => panic!("not a registry ref"),
        }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    const CONF: &str = r#"
unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "example.com"
location = "internal.example:5000"
[[registry.mirror]]
location = "mirror.one:5000/cache"
insecure = true
[[registry.mirror]]
location = "mirror.two"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "example.com/team/app"
location = "app.example/apps/app"

[[registry]]
location = "bad.example"
blocked = true

[[registry]]
prefix = "*.corp.example"
[[registry.mirror]]
location = "corp-mirror:5000"
pull-from-mirror = "tag-only"
"#;

    #[test]
    fn longest_prefix_remaps_and_orders_mirrors() {
        let c = RegistriesConf::parse(CONF.as_bytes(), "r.conf").unwrap();
        let l = c.locations(&reg("docker://example.com/ns/img:1")).unwrap();
        let names: Vec<String> = l
            .iter()
            .map(|l| {
                format!("{}/{} {} {}", l.reference.registry, l.reference.repository, l.insecure, l.mirror)
            })
            .collect();
        assert_eq!(
            names,
            ["mirror.one:5000/cache/ns/img true true", "internal.example:5000/ns/img false false"]
        );
        assert_eq!(l[0].reference.tag.as_deref(), Some("1"));
        let pinned = c.locations(&reg(&format!("docker://example.com/ns/img@{D}"))).unwrap();
        assert_eq!(pinned.len(), 3, "digest-only mirror joins for a pinned reference");
        assert_eq!(pinned[1].reference.registry, "mirror.two");
        assert_eq!(pinned[2].reference.digest.as_ref().unwrap().to_string(), D);
        let app = c.locations(&reg("docker://example.com/team/app:v")).unwrap();
        assert_eq!(app.len(), 1);
        assert_eq!(
            (app[0].reference.registry.as_str(), app[0].reference.repository.as_str()),
            ("app.example", "apps/app")
        );
        // Prefix matches on path boundaries only.
        let other = c.locations(&reg("docker://example.community/x:1")).unwrap();
        assert_eq!(other[0].reference.registry, "example.community");
    }

    #[test]
    fn wildcard_and_blocked() {
        let c = RegistriesConf::parse(CONF.as_bytes(), "r.conf").unwrap();
        let l = c.locations(&reg("docker://a.corp.example/x/y:1")).unwrap();
        assert_eq!(l[0].reference.registry, "corp-mirror:5000");
        assert_eq!(l[0].reference.repository, "x/y");
        assert_eq!(l[1].reference.registry, "a.corp.example");
        assert_eq!(c.locations(&reg(&format!("docker://a.corp.example/x/y@{D}"))).unwrap().len(), 1);
        assert_eq!(
            c.locations(&reg("docker://corp.example/x:1")).unwrap()[0].reference.registry,
            "corp.example"
        );
        let e = c.locations(&reg("docker://bad.example/x:1")).unwrap_err();
        let msg = report::line(&e);
        assert!(
            msg.contains("bad.example/x is blocked")
                && msg.contains("\"bad.example\"")
                && msg.contains("r.conf"),
            "{msg}"
        );
    }

    #[test]
    fn bad_files_are_clear() {
        for (text, want) in [
            ("[registries.search]\nregistries=[]", "version 1"),
            ("[[registry]]\ninsecure = true", "neither a prefix nor a location"),
            ("[[registry]]\nlocation = \"https://x\"", "scheme"),
            ("[[registry]]\nprefix = \"*.x.com\"\nlocation = \"y\"", "wildcard"),
            ("[[registry]]\nprefix = \"*x.com\"", "wildcard"),
            ("[[registry]]\nlocation = \"x\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"never\"", "pull-from-mirror"),
            ("[[registry]]\nlocation = \"x\"\n[[registry]]\nlocation = \"x\"", "two [[registry]]"),
            ("[[registry]]\nlocation = \"x\"\ninsecure = \"yes\"", "true or false"),
            ("registry = 1", "array"),
            ("[[registry", "not valid TOML"),
        ] {
            let e = RegistriesConf::parse(text.as_bytes(), "r.conf").unwrap_err();
            let msg = report::line(&e);
            assert!(msg.contains(want) && msg.contains("r.conf"), "{text}: {msg}");
            assert_eq!(report::repeated_source(&e), None);
        }
    }

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.conf");
        std::fs::write(&f, vec![b'#'; (MAX_REGISTRIES_CONF + 1) as usize]).unwrap();
        let e = RegistriesConf::load(&f).unwrap_err();
        assert!(report::line(&e).contains("larger than"), "{e}");
    }
}
