//! `SecureMountService.SecureMount`: encrypted block storage for kata-agent's
//! ephemeral emptyDirs, its trusted image store (`/dev/trusted_store` on
//! `/run/kata-containers/image/`) and volumes reopened with a KBS key.
//!
//! - [`options`]: CoCo's `block-device` options, parsed (every bad one named).
//! - [`luks`]: the `cryptsetup` command lines and the workflow that undoes itself.
//! - here: the daemon's table of open volumes, the key sources (`sealed.…`,
//!   `kbs:///…` through the daemon's one KBS session, `file://…`, or a random
//!   in-memory key), and the lifecycle: a volume whose mount point went away
//!   (kata-agent unmounted it) is closed, and every volume is closed on SIGTERM.

pub mod luks;
pub mod options;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zeroize::Zeroizing;

use self::luks::{Host, OpenVolume, Pbkdf, RealHost, TargetKind, VolumeError};
use self::options::{BlockDeviceRequest, DeviceRef, KeySpec, OptionError};
use super::hub::{ErrorKind, Hub, HubError};

/// The one volume type cloak-cdh implements.
pub const BLOCK_DEVICE: &str = "block-device";

/// Bytes of a random ephemeral key (a LUKS passphrase; 512 bits).
const EPHEMERAL_KEY_BYTES: usize = 64;

/// The largest key file read (`file://…`); cryptsetup's own limit is 8 MiB, but a
/// key is small and a mistaken path should not read a disk image into memory.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// kata-agent's image work dir (`KATA_IMAGE_WORK_DIR`,
/// src/agent/src/confidential_data_hub/image.rs), where it has the pod's
/// `/dev/trusted_store` mounted through SecureMount (rpc.rs, `cdh_handler_trusted_storage`)
/// before any image of the container is pulled.
pub const KATA_IMAGE_WORK_DIR: &str = "/run/kata-containers/image";

/// The layer store's directory on the trusted store.
pub const TRUSTED_STORE_DIR: &str = "cloak-store";

/// How often the reaper looks for volumes whose mount point went away.
pub const REAP_INTERVAL: Duration = Duration::from_secs(2);

/// Why a secure mount failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("SecureMount block-device")]
    Options(#[source] OptionError),
    #[error("SecureMount: {mount_point} already has a secure volume (or one is being set up)")]
    Busy { mount_point: PathBuf },
    #[error("SecureMount: getting the volume key")]
    Key(#[source] Box<HubError>),
    #[error("SecureMount: reading the key file {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SecureMount: the key is empty")]
    EmptyKey,
    #[error("SecureMount: generating a random key")]
    Random(#[source] openssl::error::ErrorStack),
    #[error("SecureMount")]
    Volume(#[source] VolumeError),
    #[error("SecureMount: the volume task")]
    Task(#[source] tokio::task::JoinError),
}

impl StorageError {
    /// What this means to the caller (the hub's one mapping to ttRPC codes).
    pub fn kind(&self) -> ErrorKind {
        match self {
            StorageError::Options(_) => ErrorKind::InvalidArgument,
            StorageError::Busy { .. } => ErrorKind::FailedPrecondition,
            StorageError::Key(inner) => inner.kind(),
            StorageError::KeyFile { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            StorageError::KeyFile { .. } | StorageError::EmptyKey => ErrorKind::FailedPrecondition,
            StorageError::Volume(VolumeError::WrongKey { .. }) => ErrorKind::Denied,
            StorageError::Volume(VolumeError::Device { .. }) => ErrorKind::NotFound,
            StorageError::Random(_) | StorageError::Volume(_) | StorageError::Task(_) => ErrorKind::Internal,
        }
    }
}

/// The open volumes of this daemon, by mount point (`None` while one is set up).
pub struct Volumes {
    host: Arc<dyn Host>,
    open: Mutex<HashMap<PathBuf, Option<OpenVolume>>>,
}

impl std::fmt::Debug for Volumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volumes").finish_non_exhaustive()
    }
}

impl Default for Volumes {
    fn default() -> Self {
        Self::new(Arc::new(RealHost))
    }
}

impl Volumes {
    /// A table that acts through `host`.
    pub fn new(host: Arc<dyn Host>) -> Self {
        Self { host, open: Mutex::new(HashMap::new()) }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Option<OpenVolume>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mount points of the volumes open now.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.table().iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k.clone()).collect()
    }

    /// The layer store on kata's trusted image store, while one is mounted on
    /// [`KATA_IMAGE_WORK_DIR`] through this daemon: every pull then unpacks onto the
    /// encrypted disk instead of guest memory. `None` otherwise (the store stays at
    /// `--store`).
    pub fn trusted_image_store(&self) -> Option<PathBuf> {
        let work_dir = std::path::Path::new(KATA_IMAGE_WORK_DIR);
        let t = self.table();
        // Path equality is by component: kata's "/run/kata-containers/image/" matches.
        let v = t.get(work_dir)?.as_ref()?;
        (v.target == TargetKind::Mounted && self.host.is_mounted(&v.mount_point))
            .then(|| v.mount_point.join(TRUSTED_STORE_DIR))
    }

    /// Closes the volumes whose mount point is gone (unmounted or unlinked by
    /// kata-agent when the Pod went away): their mapping and its key go too.
    pub fn reap(&self) {
        let gone: Vec<OpenVolume> = {
            let mut t = self.table();
            let gone: Vec<PathBuf> = t
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
                .filter(|(_, v)| match v.target {
                    TargetKind::Mounted => !self.host.is_mounted(&v.mount_point),
                    TargetKind::Linked => v.mount_point.symlink_metadata().is_err(),
                })
                .map(|(k, _)| k.clone())
                .collect();
            gone.iter().filter_map(|k| t.remove(k).flatten()).collect()
        };
        for v in gone {
            match luks::close_volume(self.host.as_ref(), &v, false) {
                Ok(()) => tracing::info!(mount_point = %v.mount_point.display(), mapping = %v.name,
                    "secure volume's mount point went away; mapping closed"),
                Err(e) => tracing::error!(mount_point = %v.mount_point.display(), error = %report::Line(&e),
                    "closing a secure volume whose mount point went away"),
            }
        }
    }

    /// Unmounts and closes every volume (SIGTERM). Returns how many could not be closed.
    pub fn close_all(&self) -> usize {
        let all: Vec<OpenVolume> = self.table().drain().filter_map(|(_, v)| v).collect();
        let mut failed = 0;
        for v in all {
            let there = match v.target {
                TargetKind::Mounted => self.host.is_mounted(&v.mount_point),
                TargetKind::Linked => true,
            };
            match luks::close_volume(self.host.as_ref(), &v, there) {
                Ok(()) => {
                    tracing::info!(mount_point = %v.mount_point.display(), mapping = %v.name, "secure volume closed")
                }
                Err(e) => {
                    failed += 1;
                    tracing::error!(mount_point = %v.mount_point.display(), error = %report::Line(&e),
                        "closing a secure volume at shutdown")
                }
            }
        }
        failed
    }

    /// Sets `req` up with `key`: reserves the mount point, then runs the workflow
    /// on a blocking thread. The key is dropped (zeroized) when the workflow is done.
    pub async fn mount(
        self: &Arc<Self>,
        req: BlockDeviceRequest,
        key: Zeroizing<Vec<u8>>,
        pbkdf: Pbkdf,
    ) -> Result<(), StorageError> {
        self.reap();
        {
            let mut t = self.table();
            if t.contains_key(&req.mount_point) {
                return Err(StorageError::Busy { mount_point: req.mount_point.clone() });
            }
            t.insert(req.mount_point.clone(), None);
        }
        let me = self.clone();
        let mount_point = req.mount_point.clone();
        let result = tokio::task::spawn_blocking(move || {
            let host = me.host.as_ref();
            let device = match &req.device {
                DeviceRef::Number { major, minor } => host
                    .device_path(*major, *minor)
                    .map_err(|source| VolumeError::Device { major: *major, minor: *minor, source })?,
                DeviceRef::Path(p) => p.clone(),
            };
            let name = match &req.mapper_name {
                Some(n) => n.clone(),
                None => format!("cloak-{}", random_suffix()),
            };
            luks::open_volume(host, &req, device, name, key, pbkdf)
        })
        .await;
        let mut t = self.table();
        match result {
            Ok(Ok(vol)) => {
                tracing::info!(mount_point = %vol.mount_point.display(), device = %vol.device.display(),
                    mapping = %vol.name, "secure volume ready");
                if vol.mount_point == std::path::Path::new(KATA_IMAGE_WORK_DIR)
                    && vol.target == TargetKind::Mounted
                {
                    tracing::info!(store = %vol.mount_point.join(TRUSTED_STORE_DIR).display(),
                        "kata's trusted image store is mounted: later pulls unpack onto it");
                }
                t.insert(mount_point, Some(vol));
                Ok(())
            }
            Ok(Err(e)) => {
                t.remove(&mount_point);
                Err(StorageError::Volume(e))
            }
            Err(e) => {
                t.remove(&mount_point);
                Err(StorageError::Task(e))
            }
        }
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    // A name, not a secret: a fixed fallback would only collide with itself.
    if openssl::rand::rand_bytes(&mut b).is_err() {
        b = (std::process::id() as u64).to_be_bytes();
    }
    hex::encode(b)
}

/// A fresh random key for an ephemeral volume.
pub fn ephemeral_key() -> Result<Zeroizing<Vec<u8>>, StorageError> {
    let mut k = Zeroizing::new(vec![0u8; EPHEMERAL_KEY_BYTES]);
    openssl::rand::rand_bytes(&mut k).map_err(StorageError::Random)?;
    Ok(k)
}

fn read_key_file(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, StorageError> {
    use std::io::Read;
    let err = |source| StorageError::KeyFile { path: path.to_path_buf(), source };
    let f = std::fs::File::open(path).map_err(err)?;
    let mut k = Zeroizing::new(Vec::new());
    f.take(MAX_KEY_FILE + 1).read_to_end(&mut k).map_err(err)?;
    if k.len() as u64 > MAX_KEY_FILE {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_KEY_FILE} bytes; not a key"),
        )));
    }
    Ok(k)
}

impl Hub {
    /// `SecureMountService.SecureMount`.
    pub async fn secure_mount(
        &self,
        volume_type: &str,
        options: &HashMap<String, String>,
        flags: &[String],
        mount_point: &str,
    ) -> Result<(), HubError> {
        let _guard = self.enter()?;
        if volume_type != BLOCK_DEVICE {
            return Err(HubError::UnsupportedMount(volume_type.chars().take(64).collect()));
        }
        let req = BlockDeviceRequest::parse(options, flags, mount_point).map_err(StorageError::Options)?;
        let (key, pbkdf) = match &req.key {
            KeySpec::Ephemeral => (ephemeral_key()?, Pbkdf::FastForRandomKey),
            KeySpec::Sealed(s) => (
                self.unseal_secret(s.as_bytes()).await.map_err(|e| StorageError::Key(Box::new(e)))?,
                Pbkdf::Default,
            ),
            KeySpec::Kbs(uri) => {
                (self.resource(uri).await.map_err(|e| StorageError::Key(Box::new(e)))?, Pbkdf::Default)
            }
            KeySpec::File(p) => (read_key_file(p)?, Pbkdf::Default),
        };
        if key.is_empty() {
            return Err(StorageError::EmptyKey.into());
        }
        Ok(self.volumes().mount(req, key, pbkdf).await?)
    }

    /// Closes volumes whose mount point went away, every [`REAP_INTERVAL`], for as
    /// long as the returned task runs.
    pub fn spawn_volume_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let volumes = self.volumes().clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_INTERVAL).await;
                let v = volumes.clone();
                let _ = tokio::task::spawn_blocking(move || v.reap()).await;
            }
        })
    }

    /// Unmounts and closes every secure volume (SIGTERM, after the in-flight
    /// calls are done). Returns how many could not be closed.
    pub async fn close_volumes(&self) -> usize {
        let v = self.volumes().clone();
        tokio::task::spawn_blocking(move || v.close_all()).await.unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::Path;

    use super::luks::{Cmd, RunError};
    use super::options::MountFlags;
    use super::*;

    /// Succeeds at everything; `mounted` is what `is_mounted` says.
    struct Yes {
        mounted: bool,
    }

    impl Host for Yes {
        fn run(&self, _: &Cmd<'_>) -> Result<(), RunError> {
            Ok(())
        }
        fn run_output(&self, _: &Cmd<'_>) -> Result<String, RunError> {
            Ok("Creating filesystem with 4096 4k blocks and 4096 inodes\n".into())
        }
        fn zero_block(&self, _: &Path, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn mount(&self, _: &Path, _: &Path, _: &str, _: MountFlags) -> io::Result<()> {
            Ok(())
        }
        fn unmount(&self, _: &Path) -> io::Result<()> {
            Ok(())
        }
        fn symlink(&self, _: &Path, _: &Path) -> io::Result<()> {
            Ok(())
        }
        fn remove_link(&self, _: &Path) -> io::Result<()> {
            Ok(())
        }
        fn device_path(&self, _: u32, _: u32) -> io::Result<PathBuf> {
            Ok("/dev/vdz".into())
        }
        fn is_mounted(&self, _: &Path) -> bool {
            self.mounted
        }
    }

    fn trusted_store_request(mount_point: &str) -> BlockDeviceRequest {
        let o: HashMap<String, String> = [
            ("deviceId", "252:0"),
            ("sourceType", "empty"),
            ("targetType", "fileSystem"),
            ("filesystemType", "ext4"),
            ("mkfsOpts", "-E lazy_journal_init"),
            ("encryptionType", "luks2"),
            ("dataIntegrity", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        BlockDeviceRequest::parse(&o, &[], mount_point).expect("kata's trusted store request")
    }

    /// Issue 23: with kata's trusted store mounted on its image work dir, pulls must
    /// unpack there, not into guest memory; and back at --store once it is gone.
    #[tokio::test]
    async fn the_layer_store_follows_kata_trusted_store_while_it_is_mounted() {
        let v = Arc::new(Volumes::new(Arc::new(Yes { mounted: true })));
        assert_eq!(v.trusted_image_store(), None);
        let key = ephemeral_key().expect("key");
        v.mount(trusted_store_request("/run/kata-containers/image/"), key, Pbkdf::FastForRandomKey)
            .await
            .expect("mount");
        assert_eq!(v.trusted_image_store(), Some(PathBuf::from("/run/kata-containers/image/cloak-store")));
        // Another secure volume elsewhere does not move the store.
        let v2 = Arc::new(Volumes::new(Arc::new(Yes { mounted: true })));
        let key = ephemeral_key().expect("key");
        v2.mount(
            trusted_store_request("/run/kata-containers/sandbox/storage/x"),
            key,
            Pbkdf::FastForRandomKey,
        )
        .await
        .expect("mount");
        assert_eq!(v2.trusted_image_store(), None);
        // Unmounted by kata (not yet reaped): not used.
        let gone = Arc::new(Volumes::new(Arc::new(Yes { mounted: false })));
        let key = ephemeral_key().expect("key");
        gone.mount(trusted_store_request("/run/kata-containers/image"), key, Pbkdf::FastForRandomKey)
            .await
            .expect("mount");
        assert_eq!(gone.trusted_image_store(), None);
        assert_eq!(v.close_all(), 0);
        assert_eq!(v.trusted_image_store(), None);
    }
}
