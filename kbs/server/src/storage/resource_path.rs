//! A resource's name, `REPO/TYPE/TAG`, as every backend keys it: the local backend as
//! the path `<dir>/<repo>/<type>/<tag>`, etcd as `PREFIX/resources/REPO/TYPE/TAG`.
//! Segments are validated with Trustee's rule `[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-\.]*`, which
//! excludes "", ".", ".." and separators, and bounded in length: each segment is a file
//! or directory name in the local backend (NAME_MAX is 255 bytes), and Trustee's own
//! local store keeps all three joined in one file name, so every name Trustee can hold
//! is shorter than both limits.

use super::StoreError;

/// The longest segment (repo, type or tag) of a resource name, in bytes: NAME_MAX.
pub const MAX_SEGMENT_LEN: usize = 255;
/// The longest resource name "repo/type/tag", in bytes.
pub const MAX_PATH_LEN: usize = 512;

/// A validated "repo/type/tag".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    segments: [String; 3],
}

pub(super) fn valid_segment(s: &str) -> bool {
    let b = s.as_bytes();
    let first_ok = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    !b.is_empty() && first_ok(b[0]) && b.iter().all(|&c| first_ok(c) || c == b'.')
}

impl ResourcePath {
    pub fn parse(path: &str) -> Result<Self, StoreError> {
        // Checked before anything else so a long name costs nothing and is never echoed whole.
        let too_long = |what, len, max, s: &str| StoreError::NameTooLong {
            what,
            len,
            max,
            start: s.chars().take(32).collect(),
        };
        if path.len() > MAX_PATH_LEN {
            return Err(too_long("name", path.len(), MAX_PATH_LEN, path));
        }
        if let Some(seg) = path.split('/').find(|s| s.len() > MAX_SEGMENT_LEN) {
            return Err(too_long("name segment", seg.len(), MAX_SEGMENT_LEN, seg));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != 3 || !parts.iter().all(|s| valid_segment(s)) {
            return Err(StoreError::InvalidPath(path.chars().take(200).collect()));
        }
        Ok(Self { segments: [parts[0].into(), parts[1].into(), parts[2].into()] })
    }

    /// Three segments a directory listing found, each already passed by [`valid_segment`]
    /// (the local backend's `list`, which has always skipped the length check: the
    /// names are ones its filesystem holds).
    pub(super) fn from_listed(segments: [String; 3]) -> Self {
        Self { segments }
    }

    /// The repo, type and tag.
    pub(super) fn segments(&self) -> &[String; 3] {
        &self.segments
    }

    pub fn as_string(&self) -> String {
        self.segments.join("/")
    }
}

impl std::fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_validated() {
        assert!(ResourcePath::parse("default/key/1").is_ok());
        assert!(ResourcePath::parse("default/key/v1.2").is_ok());
        for bad in
            ["../key/1", "default/../1", "/default/key/1", "default/key", "a//b", "a/b/c/d", "a/b/.x", ""]
        {
            assert!(ResourcePath::parse(bad).is_err(), "{bad}");
        }
    }
}
