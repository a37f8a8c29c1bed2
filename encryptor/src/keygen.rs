//! `cloak keygen`: a key pair whose private half lives only in the KBS. The
//! public JWK's `kid` is the KBS URI, so a guest can see where to fetch the
//! private key after attestation; the private key touches this machine's disk
//! only with `--save-private`.

use std::io::Write as _;

use crate::config::KeygenConfig;
use crate::recipients::admin_client;
use crate::Error;

/// Creates the key pair, registers the private JWK, writes the public JWK.
/// Returns the KBS URI.
pub async fn keygen(cfg: &KeygenConfig) -> Result<String, Error> {
    let uri: kbs_client::ResourceUri = cfg
        .uri
        .parse()
        .map_err(|e: kbs_client::KbsError| Error::Usage(format!("{:?}: {}", cfg.uri, report::Line(&e))))?;
    let admin = admin_client(&cfg.kbs, "keygen").await?;
    let key = keyprovider::keygen::keygen(&admin, &uri, cfg.rsa).await.map_err(Error::kbs)?;
    std::fs::write(&cfg.out, key.public_jwk.as_bytes())
        .map_err(Error::io(format!("writing {}", cfg.out.display())))?;
    if let Some(path) = &cfg.save_private {
        write_private(path, key.private_jwk.as_bytes())?;
    }
    Ok(uri.to_string())
}

/// Writes a private key readable by the owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("creating {}", path.display())))?;
    f.write_all(bytes).map_err(Error::io(format!("writing {}", path.display())))
}
