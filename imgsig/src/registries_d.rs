//! registries.d (containers-registries.d(5)): where GPG signatures of a
//! registry's images are kept (`lookaside`, older name `sigstore`). Only what
//! cloak reads is interpreted; the files are the ones skopeo uses, so one
//! directory configures both the signer and the verifier.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// A registries.d directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesDError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: {what} is configured in more than one file")]
    Duplicate { path: String, what: String },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Entry {
    lookaside: Option<String>,
    #[serde(rename = "lookaside-staging")]
    lookaside_staging: Option<String>,
    sigstore: Option<String>,
    #[serde(rename = "sigstore-staging")]
    sigstore_staging: Option<String>,
    #[serde(rename = "use-sigstore-attachments")]
    use_sigstore_attachments: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "default-docker")]
    default_docker: Option<Entry>,
    #[serde(default)]
    docker: BTreeMap<String, Entry>,
}

/// The merged configuration of a registries.d directory.
#[derive(Debug, Clone, Default)]
pub struct RegistriesD {
    default_docker: Option<Entry>,
    docker: BTreeMap<String, Entry>,
}

impl RegistriesD {
    /// Reads every `*.yaml` file of `dir`.
    pub fn load(dir: &Path) -> Result<RegistriesD, RegistriesDError> {
        let rd = |e| RegistriesDError::Read { path: dir.display().to_string(), source: e };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(rd)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        let mut out = RegistriesD::default();
        for p in files {
            let text = std::fs::read_to_string(&p)
                .map_err(|source| RegistriesDError::Read { path: p.display().to_string(), source })?;
            out.merge(&text, &p.display().to_string())?;
        }
        Ok(out)
    }

    /// Adds one file's contents (`path` names it in errors).
    pub fn merge(&mut self, yaml: &str, path: &str) -> Result<(), RegistriesDError> {
        let f: File = if yaml.trim().is_empty() {
            File::default()
        } else {
            serde_yaml::from_str(yaml)
                .map_err(|source| RegistriesDError::Parse { path: path.to_string(), source })?
        };
        if let Some(d) = f.default_docker {
            if self.default_docker.is_some() {
                return Err(RegistriesDError::Duplicate { path: path.into(), what: "default-docker".into() });
            }
            self.default_docker = Some(d);
        }
        for (k, v) in f.docker {
            if self.docker.contains_key(&k) {
                return Err(RegistriesDError::Duplicate { path: path.into(), what: format!("docker {k:?}") });
            }
            self.docker.insert(k, v);
        }
        Ok(())
    }

    /// The lookaside URL GPG signatures of `registry/repository` are read from.
    pub fn lookaside_for(&self, registry: &str, repository: &str) -> Option<String> {
        let full = format!("{registry}/{repository}");
        let mut n = full.as_str();
        loop {
            if let Some(e) = self.docker.get(n) {
                if let Some(u) = e.lookaside.as_ref().or(e.sigstore.as_ref()) {
                    return Some(u.clone());
                }
            }
            match n.rsplit_once('/') {
                Some((parent, _)) => n = parent,
                None => break,
            }
        }
        self.default_docker.as_ref().and_then(|e| e.lookaside.clone().or_else(|| e.sigstore.clone()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn most_specific_entry_wins_and_old_names_work() {
        let mut r = RegistriesD::default();
        r.merge(
            "default-docker:\n  lookaside: file:///default\ndocker:\n  127.0.0.1:5000/app:\n    sigstore: file:///app\n  127.0.0.1:5000:\n    lookaside: file:///host\n    use-sigstore-attachments: true\n",
            "a.yaml",
        )
        .unwrap();
        assert_eq!(r.lookaside_for("127.0.0.1:5000", "app/x").as_deref(), Some("file:///app"));
        assert_eq!(r.lookaside_for("127.0.0.1:5000", "other").as_deref(), Some("file:///host"));
        assert_eq!(r.lookaside_for("h.io", "other").as_deref(), Some("file:///default"));
        let e = r.merge("default-docker:\n  lookaside: file:///x\n", "b.yaml").unwrap_err();
        assert!(e.to_string().contains("b.yaml"), "{e}");
        let e = RegistriesD::default().merge("docker:\n  h.io:\n    lookasid: x\n", "c.yaml").unwrap_err();
        assert!(report::line(&e).contains("lookasid"), "{e}");
        assert_eq!(report::repeated_source(&e), None);
    }
}
