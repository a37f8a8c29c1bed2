//! A `SecureMountRequest` for `volume_type = "block-device"`, parsed into one typed
//! request. The option names and meanings are CoCo's (guest-components,
//! `confidential-data-hub/hub/src/storage/volume_type/blockdevice/` and
//! `storage/drivers/luks2.rs`), and kata-agent sends exactly these (its
//! `rpc.rs`, `cdh_secure_mount`). Unlike CDH, a value outside the documented
//! set, or an option nobody defines, is refused with its name rather than
//! ignored: a typo must not quietly give an unencrypted or unchecked volume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kbs_client::ResourceUri;

/// The longest value quoted back in an error (values come from the caller).
const QUOTE: usize = 80;

/// Every option CoCo's block-device volume defines.
const KNOWN: &[&str] = &[
    "deviceId",
    "devicePath",
    "sourceType",
    "targetType",
    "encryptionType",
    "dataIntegrity",
    "filesystemType",
    "mkfsOpts",
    "key",
    "mapperName",
];

/// Which block device: `deviceId` (`MAJ:MIN`, looked up in `/sys/dev/block`) wins
/// over `devicePath`, as in CDH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRef {
    Number { major: u32, minor: u32 },
    Path(PathBuf),
}

/// `sourceType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceType {
    /// Format the device (everything on it is lost), then open it.
    Empty,
    /// Open the LUKS2 volume already on the device.
    Encrypted,
}

/// `targetType` (with `filesystemType` and `mkfsOpts` for a filesystem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Mount the opened volume at `mount_point` (`mkfs` first when the source is empty).
    FileSystem { fs: FsType, mkfs_opts: Vec<String> },
    /// `mount_point` becomes a symlink to `/dev/mapper/<name>`.
    Device,
}

/// `filesystemType`: CDH knows only ext4, and so does cloak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
}

impl FsType {
    /// The name `mount(2)` takes.
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
        }
    }

    /// The program that makes this filesystem.
    pub fn mkfs(self) -> &'static str {
        match self {
            FsType::Ext4 => "mkfs.ext4",
        }
    }
}

/// `key`: where the LUKS passphrase comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// No `key`: a random key that lives only in the daemon's memory (an
    /// ephemeral volume: nobody can open it again once it is closed).
    Ephemeral,
    /// `sealed.…`: unsealed as `UnsealSecret` does.
    Sealed(String),
    /// `kbs:///…`: through the daemon's one attested KBS session.
    Kbs(ResourceUri),
    /// `file:///…`: a file in the guest.
    File(PathBuf),
}

impl std::fmt::Debug for KeySpec {
    // A sealed secret is not key material, but it need not reach a log either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySpec::Ephemeral => f.write_str("Ephemeral"),
            KeySpec::Sealed(_) => f.write_str("Sealed(..)"),
            KeySpec::Kbs(u) => write!(f, "Kbs({u})"),
            KeySpec::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// `flags`: mount flags for a filesystem target (CDH ignores them; cloak applies
/// the ones `mount(8)` spells the same way and refuses the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

/// One parsed `block-device` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDeviceRequest {
    pub device: DeviceRef,
    pub source: SourceType,
    pub target: Target,
    /// `dataIntegrity=true`: dm-integrity with HMAC-SHA256 under dm-crypt.
    pub integrity: bool,
    pub key: KeySpec,
    /// `mapperName`, else a random `cloak-…` name.
    pub mapper_name: Option<String>,
    pub mount_point: PathBuf,
    pub flags: MountFlags,
}

/// What is wrong with a request; the option is always named.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionError {
    #[error("option {name}: unknown to the block-device volume (known: {known})", known = KNOWN.join(", "))]
    Unknown { name: String },
    #[error("option {name} is required")]
    Missing { name: &'static str },
    #[error("option {name}={value:?}: {expected}")]
    Bad { name: &'static str, value: String, expected: &'static str },
    #[error("mount_point {value:?}: {expected}")]
    MountPoint { value: String, expected: &'static str },
    #[error("flag {value:?}: not a mount flag cloak-cdh applies (ro, rw, nosuid, nodev, noexec, noatime)")]
    Flag { value: String },
    #[error("option {name} applies only to targetType=fileSystem")]
    NotForDevice { name: &'static str },
    #[error("options deviceId, devicePath: neither deviceId nor devicePath names the device")]
    NoDevice,
}

fn quote(v: &str) -> String {
    v.chars().take(QUOTE).collect()
}

fn bad(name: &'static str, value: &str, expected: &'static str) -> OptionError {
    OptionError::Bad { name, value: quote(value), expected }
}

impl BlockDeviceRequest {
    /// Parses CoCo's options, `flags` and `mount_point`.
    pub fn parse(
        options: &HashMap<String, String>,
        flags: &[String],
        mount_point: &str,
    ) -> Result<Self, OptionError> {
        // Sorted, so the first unknown named is the same on every call.
        let mut names: Vec<&String> = options.keys().collect();
        names.sort();
        if let Some(n) = names.into_iter().find(|n| !KNOWN.contains(&n.as_str())) {
            return Err(OptionError::Unknown { name: quote(n) });
        }
        let get = |n: &str| options.get(n).map(String::as_str);

        let device = match (get("deviceId"), get("devicePath")) {
            (Some(id), _) => parse_device_id(id)?,
            (None, Some(p)) => DeviceRef::Path(absolute("devicePath", p)?),
            (None, None) => return Err(OptionError::NoDevice),
        };
        let source = match get("sourceType") {
            Some("empty") => SourceType::Empty,
            Some("encrypted") => SourceType::Encrypted,
            Some(v) => return Err(bad("sourceType", v, "expected empty or encrypted")),
            None => return Err(OptionError::Missing { name: "sourceType" }),
        };
        match get("encryptionType") {
            Some("luks2") => {}
            Some(v) => return Err(bad("encryptionType", v, "cloak-cdh supports luks2 only")),
            None => return Err(OptionError::Missing { name: "encryptionType" }),
        }
        let integrity = match get("dataIntegrity") {
            None | Some("false") | Some("") => false,
            Some("true") => true,
            Some(v) => return Err(bad("dataIntegrity", v, "expected true or false")),
        };
        let target = match get("targetType") {
            Some("fileSystem") => {
                let fs = match get("filesystemType") {
                    None | Some("ext4") => FsType::Ext4,
                    Some(v) => return Err(bad("filesystemType", v, "cloak-cdh supports ext4 only")),
                };
                let mkfs_opts = match get("mkfsOpts") {
                    None => Vec::new(),
                    Some(v) => parse_mkfs_opts(v)?,
                };
                Target::FileSystem { fs, mkfs_opts }
            }
            Some("device") => {
                for name in ["filesystemType", "mkfsOpts"] {
                    if get(name).is_some_and(|v| !v.is_empty()) {
                        return Err(OptionError::NotForDevice {
                            name: if name == "mkfsOpts" { "mkfsOpts" } else { "filesystemType" },
                        });
                    }
                }
                Target::Device
            }
            Some(v) => return Err(bad("targetType", v, "expected fileSystem or device")),
            None => return Err(OptionError::Missing { name: "targetType" }),
        };
        let key = match get("key") {
            None | Some("") => KeySpec::Ephemeral,
            Some(k) => parse_key(k)?,
        };
        if key == KeySpec::Ephemeral && source == SourceType::Encrypted {
            return Err(bad(
                "sourceType",
                "encrypted",
                "an encrypted source needs the key that formatted it (option key); \
                 without one only sourceType=empty makes sense",
            ));
        }
        let mapper_name = match get("mapperName") {
            None => None,
            Some(n) if valid_mapper_name(n) => Some(n.to_string()),
            Some(n) => return Err(bad("mapperName", n, "expected 1 to 64 characters of A-Z a-z 0-9 _ -")),
        };
        let mount_point = parse_mount_point(mount_point)?;
        let flags = parse_flags(flags)?;
        Ok(Self { device, source, target, integrity, key, mapper_name, mount_point, flags })
    }
}

fn parse_device_id(id: &str) -> Result<DeviceRef, OptionError> {
    let expected = "expected MAJ:MIN, two decimal numbers (as in /sys/dev/block)";
    let (maj, min) = id.split_once(':').ok_or_else(|| bad("deviceId", id, expected))?;
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| bad("deviceId", id, expected))
    };
    Ok(DeviceRef::Number { major: num(maj)?, minor: num(min)? })
}

fn absolute(name: &'static str, p: &str) -> Result<PathBuf, OptionError> {
    let path = Path::new(p);
    if !path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(bad(name, p, "expected an absolute path without .."));
    }
    Ok(path.to_path_buf())
}

fn parse_key(k: &str) -> Result<KeySpec, OptionError> {
    if k.starts_with("sealed.") {
        return Ok(KeySpec::Sealed(k.to_string()));
    }
    if k.starts_with("kbs://") {
        // The URI is named in the error; it is a name, not key material.
        return k.parse().map(KeySpec::Kbs).map_err(|_| bad("key", k, "expected kbs:///repository/type/tag"));
    }
    if let Some(p) = k.strip_prefix("file://") {
        return absolute("key", p).map(KeySpec::File);
    }
    // Whatever else it is, it may be a passphrase pasted by mistake: never quote it.
    Err(OptionError::Bad {
        name: "key",
        value: "<not shown>".into(),
        expected:
            "expected sealed.…, kbs:///repository/type/tag or file:///path (or no key: an ephemeral one)",
    })
}

fn parse_mkfs_opts(v: &str) -> Result<Vec<String>, OptionError> {
    let args: Vec<String> = v.split_ascii_whitespace().map(str::to_string).collect();
    // The device is cloak's to name: a stray operand would make mkfs format it
    // at another size or aim it elsewhere.
    match args.first() {
        Some(a) if !a.starts_with('-') => Err(bad("mkfsOpts", v, "expected options (starting with -)")),
        _ => Ok(args),
    }
}

fn valid_mapper_name(n: &str) -> bool {
    (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_mount_point(m: &str) -> Result<PathBuf, OptionError> {
    let err = |expected| OptionError::MountPoint { value: quote(m), expected };
    let path = Path::new(m);
    if !path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(err("expected an absolute path without .."));
    }
    if path.parent().is_none() {
        return Err(err("must not be /"));
    }
    Ok(path.to_path_buf())
}

fn parse_flags(flags: &[String]) -> Result<MountFlags, OptionError> {
    let mut f = MountFlags::default();
    for flag in flags {
        match flag.as_str() {
            "ro" | "rdonly" => f.read_only = true,
            "rw" | "noatime" => {}
            "nosuid" => f.nosuid = true,
            "nodev" => f.nodev = true,
            "noexec" => f.noexec = true,
            other => return Err(OptionError::Flag { value: quote(other) }),
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kata-agent 4.1.0's request for a block emptyDir with `encryption_key=ephemeral`
    /// (src/agent/src/rpc.rs, `cdh_secure_mount`, called from
    /// src/agent/src/storage/block_handler.rs, `handle_block_storage`).
    pub(crate) fn kata_empty_dir(device_id: &str, integrity: bool) -> HashMap<String, String> {
        HashMap::from([
            ("deviceId".to_string(), device_id.to_string()),
            ("sourceType".to_string(), "empty".to_string()),
            ("targetType".to_string(), "fileSystem".to_string()),
            ("filesystemType".to_string(), "ext4".to_string()),
            ("mkfsOpts".to_string(), "-O ^has_journal -m 0 -i 163840 -I 128".to_string()),
            ("encryptionType".to_string(), "luks2".to_string()),
            ("dataIntegrity".to_string(), integrity.to_string()),
        ])
    }

    fn with(mut o: HashMap<String, String>, k: &str, v: &str) -> HashMap<String, String> {
        o.insert(k.into(), v.into());
        o
    }

    fn without(mut o: HashMap<String, String>, k: &str) -> HashMap<String, String> {
        o.remove(k);
        o
    }

    fn parse(o: &HashMap<String, String>) -> Result<BlockDeviceRequest, OptionError> {
        BlockDeviceRequest::parse(o, &[], "/run/kata-containers/sandbox/storage/vol")
    }

    #[test]
    fn kata_empty_dir_request_parses() {
        let r = parse(&kata_empty_dir("254:16", true)).expect("kata's request");
        assert_eq!(r.device, DeviceRef::Number { major: 254, minor: 16 });
        assert_eq!(r.source, SourceType::Empty);
        assert!(r.integrity);
        assert_eq!(r.key, KeySpec::Ephemeral);
        assert_eq!(
            r.target,
            Target::FileSystem {
                fs: FsType::Ext4,
                mkfs_opts: ["-O", "^has_journal", "-m", "0", "-i", "163840", "-I", "128"]
                    .map(String::from)
                    .to_vec()
            }
        );
        assert_eq!(r.flags, MountFlags::default());
    }

    #[test]
    fn kata_trusted_store_request_parses() {
        // rpc.rs: the /dev/trusted_store device, mkfsOpts "-E lazy_journal_init".
        let o = with(kata_empty_dir("252:0", false), "mkfsOpts", "-E lazy_journal_init");
        let r = BlockDeviceRequest::parse(&o, &[], "/run/kata-containers/image/").expect("trusted store");
        assert!(!r.integrity);
        assert_eq!(r.mount_point, PathBuf::from("/run/kata-containers/image/"));
    }

    #[test]
    fn device_path_and_keys_parse() {
        let base = without(kata_empty_dir("1:2", false), "deviceId");
        let o = with(with(base.clone(), "devicePath", "/dev/vdb"), "key", "kbs:///default/disk/pvc1");
        let r = parse(&o).expect("devicePath");
        assert_eq!(r.device, DeviceRef::Path("/dev/vdb".into()));
        assert!(matches!(r.key, KeySpec::Kbs(_)));
        let o = with(with(base.clone(), "devicePath", "/dev/vdb"), "key", "file:///etc/disk.key");
        assert_eq!(parse(&o).expect("file key").key, KeySpec::File("/etc/disk.key".into()));
        let o = with(with(base, "devicePath", "/dev/vdb"), "key", "sealed.h.p.s");
        assert!(matches!(parse(&o).expect("sealed key").key, KeySpec::Sealed(_)));
        // deviceId wins over devicePath, as in CDH.
        let o = with(kata_empty_dir("8:0", false), "devicePath", "/dev/vdb");
        assert_eq!(parse(&o).expect("both").device, DeviceRef::Number { major: 8, minor: 0 });
    }

    #[test]
    fn device_target_parses_and_refuses_filesystem_options() {
        let o = with(without(kata_empty_dir("8:0", false), "mkfsOpts"), "targetType", "device");
        let o = without(o, "filesystemType");
        assert_eq!(parse(&o).expect("device").target, Target::Device);
        let o = with(o, "mkfsOpts", "-q");
        assert_eq!(parse(&o), Err(OptionError::NotForDevice { name: "mkfsOpts" }));
    }

    /// Every bad option is refused with its name in the message.
    #[test]
    fn every_bad_option_is_named() {
        let base = kata_empty_dir("254:16", false);
        let cases: Vec<(HashMap<String, String>, &str)> = vec![
            (with(base.clone(), "deviceId", "254"), "deviceId"),
            (with(base.clone(), "deviceId", "a:b"), "deviceId"),
            (with(base.clone(), "deviceId", "1:2:3"), "deviceId"),
            (with(base.clone(), "deviceId", "-1:2"), "deviceId"),
            (with(without(base.clone(), "deviceId"), "devicePath", "dev/vdb"), "devicePath"),
            (with(without(base.clone(), "deviceId"), "devicePath", "/dev/../etc"), "devicePath"),
            (without(base.clone(), "deviceId"), "deviceId nor devicePath"),
            (with(base.clone(), "sourceType", "blank"), "sourceType"),
            (without(base.clone(), "sourceType"), "sourceType"),
            (with(base.clone(), "targetType", "filesystem"), "targetType"),
            (without(base.clone(), "targetType"), "targetType"),
            (with(base.clone(), "encryptionType", "luks1"), "encryptionType"),
            (without(base.clone(), "encryptionType"), "encryptionType"),
            (with(base.clone(), "dataIntegrity", "yes"), "dataIntegrity"),
            (with(base.clone(), "filesystemType", "xfs"), "filesystemType"),
            (with(base.clone(), "mkfsOpts", "/dev/sda"), "mkfsOpts"),
            (with(base.clone(), "key", "hunter2"), "key"),
            (with(base.clone(), "key", "kbs:///only-two/parts"), "key"),
            (with(base.clone(), "key", "file://relative"), "key"),
            (with(base.clone(), "mapperName", "../x"), "mapperName"),
            (with(base.clone(), "sourcetype", "empty"), "sourcetype"),
            (with(base.clone(), "sourceType", "encrypted"), "sourceType"),
        ];
        for (o, name) in cases {
            let e = parse(&o).expect_err(name);
            assert!(e.to_string().contains(name), "{name}: {e}");
        }
        let e = BlockDeviceRequest::parse(&base, &[], "relative").expect_err("mount_point");
        assert!(e.to_string().contains("mount_point"), "{e}");
        let e = BlockDeviceRequest::parse(&base, &[], "/").expect_err("mount_point /");
        assert!(e.to_string().contains("mount_point"), "{e}");
        let e = BlockDeviceRequest::parse(&base, &["bind".into()], "/mnt/x").expect_err("flag");
        assert!(e.to_string().contains("flag \"bind\""), "{e}");
    }

    #[test]
    fn a_passphrase_given_as_key_is_never_quoted() {
        let o = with(kata_empty_dir("254:16", false), "key", "correct horse battery staple");
        let e = parse(&o).expect_err("plain passphrase");
        assert!(!e.to_string().contains("horse"), "{e}");
        assert!(!format!("{e:?}").contains("horse"), "{e:?}");
    }

    #[test]
    fn flags_apply() {
        let flags = ["ro", "nosuid", "nodev", "noexec", "noatime"].map(String::from);
        let r = BlockDeviceRequest::parse(&kata_empty_dir("1:1", false), &flags, "/mnt/x").expect("flags");
        assert_eq!(r.flags, MountFlags { read_only: true, nosuid: true, nodev: true, noexec: true });
    }
}
