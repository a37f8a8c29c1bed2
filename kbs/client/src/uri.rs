//! `ResourceUri`: the name of a KBS resource, `kbs:///<repository>/<type>/<tag>`.
//! Parsing is the only place that checks the segments, so every `ResourceUri`
//! in the program is safe to splice into a URL path or a file path on the broker.

use std::fmt;
use std::str::FromStr;

use crate::error::KbsError;

/// A validated KBS resource name. The host part of a `kbs://host/...` URI is
/// accepted and dropped, as Trustee's guest does: the KBS address always comes
/// from configuration, never from an image annotation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceUri {
    repository: String,
    r#type: String,
    tag: String,
}

/// Longest segment accepted; far above anything real, it only bounds hostile input.
const MAX_SEGMENT: usize = 255;

fn check_segment(what: &str, s: &str) -> Result<(), KbsError> {
    if s.is_empty() {
        return Err(KbsError::InvalidUri(format!("empty {what} segment")));
    }
    if s.len() > MAX_SEGMENT {
        return Err(KbsError::InvalidUri(format!("{what} segment longer than {MAX_SEGMENT} bytes")));
    }
    if s == "." || s == ".." {
        return Err(KbsError::InvalidUri(format!("{what} segment {s:?} is a relative path component")));
    }
    // Trustee's path rule: [a-zA-Z0-9_-]+[a-zA-Z0-9_.-]* — the first character may
    // not be a dot, which also excludes "..".
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !first_ok || !rest_ok {
        return Err(KbsError::InvalidUri(format!(
            "{what} segment {s:?} may only contain letters, digits, '_', '-' and '.' (not first)"
        )));
    }
    Ok(())
}

impl ResourceUri {
    /// Builds a resource name from its three segments, validating each.
    pub fn new(repo: &str, ty: &str, tag: &str) -> Result<Self, KbsError> {
        check_segment("repository", repo)?;
        check_segment("type", ty)?;
        check_segment("tag", tag)?;
        Ok(ResourceUri { repository: repo.to_owned(), r#type: ty.to_owned(), tag: tag.to_owned() })
    }

    /// `repository/type/tag`, as used after `/kbs/v0/resource/`.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.repository, self.r#type, self.tag)
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn r#type(&self) -> &str {
        &self.r#type
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl FromStr for ResourceUri {
    type Err = KbsError;

    /// Accepts `kbs:///repo/type/tag`, `kbs://host[:port]/repo/type/tag` and
    /// `repo/type/tag`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = if let Some(rest) = s.strip_prefix("kbs://") {
            // Drop the authority (possibly empty); what follows its '/' is the path.
            match rest.find('/') {
                Some(i) => &rest[i + 1..],
                None => return Err(KbsError::InvalidUri(format!("{s:?} has no path after the host"))),
            }
        } else if s.contains("://") {
            return Err(KbsError::InvalidUri(format!("{s:?}: only the kbs:// scheme is supported")));
        } else if s.starts_with('/') {
            return Err(KbsError::InvalidUri(format!(
                "{s:?} is absolute; write repo/type/tag or kbs:///repo/type/tag"
            )));
        } else {
            s
        };
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            [repo, ty, tag] => ResourceUri::new(repo, ty, tag),
            _ => Err(KbsError::InvalidUri(format!(
                "{s:?} must have exactly three segments repository/type/tag"
            ))),
        }
    }
}

impl fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kbs:///{}/{}/{}", self.repository, self.r#type, self.tag)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_three_forms() {
        for s in [
            "kbs:///default/key/1",
            "kbs://kbs.example:8080/default/key/1",
            "kbs://127.0.0.1/default/key/1",
            "default/key/1",
        ] {
            let u: ResourceUri = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(u.repository(), "default");
            assert_eq!(u.r#type(), "key");
            assert_eq!(u.tag(), "1");
            assert_eq!(u.path(), "default/key/1");
            assert_eq!(u.to_string(), "kbs:///default/key/1");
        }
    }

    #[test]
    fn display_round_trips() {
        let u = ResourceUri::new("my_repo", "image-kek", "v1.2").unwrap();
        let back: ResourceUri = u.to_string().parse().unwrap();
        assert_eq!(u, back);
    }

    #[test]
    fn rejects_bad_segments() {
        for s in [
            "",
            "kbs:///",
            "kbs:///a/b",
            "kbs:///a/b/c/d",
            "kbs:///a//c",
            "kbs:///../b/c",
            "kbs:///a/../c",
            "kbs:///a/b/..",
            "kbs:///a/b/.hidden",
            "/a/b/c",
            "a/b",
            "a/b/c/",
            "a/b c/d",
            "a/b/c%2f",
            "kbs://host",
            "https://host/a/b/c",
            "kbs:///a/b\\c/d",
            "a/b/ü",
        ] {
            let r = s.parse::<ResourceUri>();
            assert!(matches!(r, Err(KbsError::InvalidUri(_))), "{s:?} was accepted: {r:?}");
        }
        assert!(ResourceUri::new("a", "..", "c").is_err());
        assert!(ResourceUri::new("a", "b/c", "d").is_err());
        assert!(ResourceUri::new("a", "", "d").is_err());
        assert!(ResourceUri::new(&"x".repeat(300), "b", "c").is_err());
    }
}
