//! `cloak rotate-kek`: registers a new KEK under a new version of an id, and says
//! which of the images named still need the old one. Nothing existing is removed or
//! replaced: the old KEK stays in the KBS until the operator deletes it.

use keyprovider::kek::{create_kek, read_back, KekError};

use crate::config::KbsAdminOptions;
use crate::Error;

/// How many versions past the current one are tried before giving up.
const MAX_VERSION_STEPS: u32 = 1000;

/// `tag` → `tag.v2`, `tag.v7` → `tag.v8`.
pub fn next_version(tag: &str) -> (String, u32) {
    if let Some((base, n)) = tag.rsplit_once(".v") {
        if let Ok(n) = n.parse::<u32>() {
            if !base.is_empty() {
                return (base.to_string(), n.saturating_add(1));
            }
        }
    }
    (tag.to_string(), 2)
}

/// Registers a fresh KEK at the first free version after `old` and returns its id.
pub async fn rotate_kek(
    kbs: &KbsAdminOptions,
    old: &kbs_client::ResourceUri,
) -> Result<kbs_client::ResourceUri, Error> {
    let admin = crate::recipients::admin_client(kbs, &format!("rotating {old}")).await?;
    let kek_err = |e: KekError| Error::kbs(e);
    let (base, mut version) = next_version(old.tag());
    for _ in 0..MAX_VERSION_STEPS {
        let candidate =
            kbs_client::ResourceUri::new(old.repository(), old.r#type(), &format!("{base}.v{version}"))
                .map_err(Error::kbs)?;
        if read_back(&admin, &candidate).await.map_err(kek_err)?.is_none()
            && create_kek(&admin, &candidate).await.map_err(kek_err)?.is_some()
        {
            return Ok(candidate);
        }
        version = version.saturating_add(1);
    }
    Err(Error::kbs(format!("no free version of {old} after {MAX_VERSION_STEPS} tries")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up() {
        assert_eq!(next_version("app"), ("app".into(), 2));
        assert_eq!(next_version("app.v2"), ("app".into(), 3));
        assert_eq!(next_version("app.v41"), ("app".into(), 42));
        assert_eq!(next_version("app.vx"), ("app.vx".into(), 2));
        assert_eq!(next_version(".v3"), (".v3".into(), 2));
    }
}
