//! A real TPM for the Azure vTPM tests: swtpm on free loopback ports, provisioned
//! with tpm2-tools the way an Azure CVM's paravisor provisions its vTPM (an RSA AK
//! persisted at 0x81000003, the "HCL report" in NV 0x01400001 carrying that AK as
//! `HCLAkPub`), the HCL report layout, and [`Paravisor`]: a TPM-command-level proxy
//! that regenerates the HCL report when the guest writes its user data, as Azure's
//! paravisor does and swtpm alone does not.
//!
//! swtpm deviates from Azure in one way: its largest NV index is [`MAX_NV_SIZE`]
//! bytes, so a synthetic HCL report is shorter than Azure's 2600 (its var data holds
//! only the AK, the VM configuration and the user data).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD};
use openssl::pkey::{PKey, Public};
use serde_json::json;

use crate::net::{free_port, wait_for_port};
use crate::peers::{peer, which};
use crate::process::{run_bounded, Daemon};

/// The HCL report's NV index.
pub const HCL_INDEX: &str = "0x01400001";
/// The NV index the guest writes its 64 bytes of user data (report data) to.
pub const USER_DATA_INDEX: &str = "0x01400002";
/// Where the AK is persisted.
pub const AK_HANDLE: &str = "0x81000003";
/// swtpm's (libtpms') largest NV index.
pub const MAX_NV_SIZE: usize = 2048;

const HCL_NV: u32 = 0x0140_0001;
const USER_DATA_NV: u32 = 0x0140_0002;
const TPM_CC_NV_WRITE: u32 = 0x0000_0137;
const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_RS_PW: u32 = 0x4000_0009;
const TPM_ST_SESSIONS: u16 = 0x8002;
/// libtpms' MAX_NV_BUFFER_SIZE: the most one TPM2_NV_Write may carry.
const NV_CHUNK: usize = 1024;
/// The largest command or response the proxy relays (TPM2's are a few KiB at most).
const MAX_TPM_MESSAGE: usize = 8192;

/// A running swtpm with its state directory.
pub struct Swtpm {
    dir: tempfile::TempDir,
    port: u16,
    _daemon: Daemon,
}

impl Swtpm {
    /// `None` (skip, with the reason printed) when swtpm or tpm2-tools are missing and
    /// peers are not required; panics when they are required.
    pub fn start() -> Option<Swtpm> {
        let swtpm = peer(which("swtpm"), "swtpm")?;
        peer(which("tpm2_nvdefine"), "tpm2-tools")?;
        let dir = tempfile::tempdir().expect("a temporary directory for swtpm");
        // tpm2-tools' swtpm TCTI finds the control channel at the data port + 1.
        // free_port() can race with another test (and port + 1 may be taken): retry.
        for _ in 0..10 {
            let port = free_port();
            let ctrl = port.wrapping_add(1);
            if port == u16::MAX || TcpListener::bind(("127.0.0.1", ctrl)).is_err() {
                continue;
            }
            let mut daemon = Daemon::spawn(
                "swtpm",
                Command::new(&swtpm)
                    .arg("socket")
                    .arg("--tpm2")
                    .arg("--tpmstate")
                    .arg(format!("dir={}", dir.path().display()))
                    .arg("--server")
                    .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                    .arg("--ctrl")
                    .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
                    .arg("--flags")
                    .arg("not-need-init,startup-clear"),
            )
            .expect("starting swtpm");
            if wait_for_port(port, Duration::from_secs(5)).is_ok() && !daemon.exited() {
                return Some(Swtpm { dir, port, _daemon: daemon });
            }
            daemon.stop();
        }
        panic!("swtpm did not start on a free port");
    }

    /// The data port (raw TPM 2.0 commands), on 127.0.0.1.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The state directory (also tpm2-tools' working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs one tpm2-tools command against this swtpm; returns its stdout.
    pub fn tool(&self, args: &[&str]) -> Vec<u8> {
        let mut cmd = Command::new(which(args[0]));
        cmd.args(&args[1..])
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", format!("swtpm:host=127.0.0.1,port={}", self.port));
        let ran = run_bounded(&mut cmd, Duration::from_secs(30)).expect("running tpm2-tools");
        assert!(ran.ok(), "{args:?}: {}", ran.describe());
        ran.stdout
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// An RSA-2048 restricted signing key (RSASSA/SHA-256), persisted at the AK
    /// handle; returns its public key.
    pub fn provision_ak(&self) -> PKey<Public> {
        let ctx = self.path("ak.ctx");
        self.tool(&[
            "tpm2_createprimary",
            "-Q",
            "-C",
            "o",
            "-G",
            "rsa2048:rsassa-sha256:null",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
            "-c",
            &ctx,
        ]);
        self.tool(&["tpm2_evictcontrol", "-Q", "-C", "o", "-c", &ctx, AK_HANDLE]);
        let pem = self.path("ak.pem");
        self.tool(&["tpm2_readpublic", "-Q", "-c", AK_HANDLE, "-f", "pem", "-o", &pem]);
        let pem = std::fs::read(&pem).expect("the AK's PEM");
        PKey::public_key_from_pem(&pem).expect("tpm2_readpublic wrote a PEM public key")
    }

    /// Defines `index` (owner read/write) holding exactly `data`.
    pub fn define_nv(&self, index: &str, data: &[u8]) {
        self.tool(&[
            "tpm2_nvdefine",
            "-Q",
            index,
            "-C",
            "o",
            "-s",
            &data.len().to_string(),
            "-a",
            "ownerread|ownerwrite",
        ]);
        self.write_nv(index, data);
    }

    pub fn write_nv(&self, index: &str, data: &[u8]) {
        let f = self.path("nv.bin");
        std::fs::write(&f, data).expect("writing the NV data file");
        self.tool(&["tpm2_nvwrite", "-Q", index, "-C", "o", "-i", &f]);
    }

    pub fn read_nv(&self, index: &str) -> Vec<u8> {
        self.tool(&["tpm2_nvread", index, "-C", "o"])
    }

    /// Extends PCR 8 with 32 bytes of 0x11 and PCR 16 with 0x22 (a measured boot's
    /// worth of non-zero PCRs).
    pub fn extend_pcrs(&self) {
        for (pcr, byte) in [(8, "11"), (16, "22")] {
            self.tool(&["tpm2_pcrextend", &format!("{pcr}:sha256={}", byte.repeat(32))]);
        }
    }
}

/// The HCL report's variable data as Azure's paravisor writes it: the AK as
/// `HCLAkPub`, the VM configuration and the user data in upper-case hex.
pub fn hcl_var_data(ak: &PKey<Public>, user_data: &[u8; 64]) -> Vec<u8> {
    let rsa = ak.rsa().expect("the AK is an RSA key");
    serde_json::to_vec(&json!({
        "keys": [{
            "kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA",
            "e": BASE64_URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
            "n": BASE64_URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
        }],
        "vm-configuration": {"secure-boot": true, "tpm-enabled": true},
        "user-data": hex::encode_upper(user_data),
    }))
    .expect("JSON of the var data")
}

/// An HCL report in the real layout: "HCLA" header (version 2), the 1184-byte
/// hardware report area (`hw`, zero-padded), IGVM request data (`report_type`: 2 SNP,
/// 4 TDX; hash type 1, SHA-256) and `var`.
pub fn hcl_report(report_type: u32, hw: &[u8], var: &[u8]) -> Vec<u8> {
    assert!(hw.len() <= 1184, "the hardware report area is 1184 bytes");
    let mut v = Vec::new();
    for x in [0x414C_4348u32, 2, 1184, 2, 0] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&[0; 12]);
    v.extend_from_slice(hw);
    v.resize(32 + 1184, 0);
    for x in [20 + var.len() as u32, 1, report_type, 1, var.len() as u32] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(var);
    assert!(v.len() <= MAX_NV_SIZE, "swtpm's NV index limit");
    v
}

/// Azure's paravisor, at the TPM command level: a loopback proxy between the guest's
/// attester and swtpm's data port that relays commands and responses unchanged,
/// except that after a successful TPM2_NV_Write to the user-data index
/// (0x01400002) it writes a fresh HCL report into NV 0x01400001 on the same swtpm
/// connection (its own TPM2_NV_Writes, owner auth, empty password session, 1024-byte
/// chunks), before the guest sees the NV_Write's response. `report` makes that
/// report from the 64 bytes just written; it must fit the index swtpm holds.
///
/// Real Azure regenerates the report asynchronously (the guest polls until the
/// report's `user-data` is its own); here it is ready before the guest asks.
pub struct Paravisor {
    port: u16,
    regenerated: Arc<AtomicUsize>,
}

type ReportFn = dyn Fn(&[u8; 64]) -> Vec<u8> + Send + Sync;

impl Paravisor {
    /// Listens on a free 127.0.0.1 port; each guest connection gets its own swtpm
    /// connection. The listener thread lives as long as the test process.
    pub fn start(
        tpm: SocketAddr,
        report: impl Fn(&[u8; 64]) -> Vec<u8> + Send + Sync + 'static,
    ) -> Paravisor {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port for the paravisor");
        let port = listener.local_addr().expect("the paravisor's address").port();
        let regenerated = Arc::new(AtomicUsize::new(0));
        let report: Arc<ReportFn> = Arc::new(report);
        let count = regenerated.clone();
        std::thread::spawn(move || {
            for guest in listener.incoming() {
                let Ok(guest) = guest else { return };
                let (report, count) = (report.clone(), count.clone());
                std::thread::spawn(move || {
                    if let Err(e) = relay(guest, tpm, &*report, &count) {
                        eprintln!("paravisor: {e:#}");
                    }
                });
            }
        });
        Paravisor { port, regenerated }
    }

    /// Where the guest's attester connects (`CLOAK_TPM_DEVICE=tcp:` this).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// How many HCL reports it has written so far.
    pub fn regenerated(&self) -> usize {
        self.regenerated.load(Ordering::SeqCst)
    }
}

fn relay(mut guest: TcpStream, tpm: SocketAddr, report: &ReportFn, count: &AtomicUsize) -> Result<()> {
    let mut up = TcpStream::connect(tpm).with_context(|| format!("connecting to swtpm at {tpm}"))?;
    up.set_read_timeout(Some(Duration::from_secs(30)))?;
    loop {
        let Some(cmd) = read_message(&mut guest)? else { return Ok(()) };
        up.write_all(&cmd)?;
        let resp = read_message(&mut up)?.context("swtpm closed the connection mid-command")?;
        if let Some(user_data) = user_data_written(&cmd, &resp) {
            write_nv(&mut up, HCL_NV, &report(&user_data)).context("writing the fresh HCL report")?;
            count.fetch_add(1, Ordering::SeqCst);
        }
        guest.write_all(&resp)?;
    }
}

/// One TPM command or response (tag, size, code, rest), or `None` at a clean EOF.
fn read_message(s: &mut TcpStream) -> Result<Option<Vec<u8>>> {
    let mut head = [0u8; 10];
    match s.read(&mut head[..1])? {
        0 => return Ok(None),
        _ => s.read_exact(&mut head[1..])?,
    }
    let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
    ensure!((10..=MAX_TPM_MESSAGE).contains(&size), "TPM message size {size} out of range");
    let mut m = head.to_vec();
    m.resize(size, 0);
    s.read_exact(&mut m[10..])?;
    Ok(Some(m))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The 64 bytes a successful TPM2_NV_Write put at offset 0 of the user-data index.
fn user_data_written(cmd: &[u8], resp: &[u8]) -> Option<[u8; 64]> {
    if be32(cmd, 6)? != TPM_CC_NV_WRITE || be32(cmd, 14)? != USER_DATA_NV || be32(resp, 6)? != 0 {
        return None;
    }
    // Handles (auth, index), then the authorization area, then TPM2B data and offset.
    let auth_size = be32(cmd, 18)? as usize;
    let data_at = 22 + auth_size;
    let len = be16(cmd, data_at)? as usize;
    let data = cmd.get(data_at + 2..data_at + 2 + len)?;
    let offset = be16(cmd, data_at + 2 + len)?;
    (offset == 0).then_some(())?;
    data.try_into().ok()
}

/// Writes `data` into `index` at offset 0 with owner authorization, chunk by chunk,
/// reading swtpm's responses itself.
fn write_nv(up: &mut TcpStream, index: u32, data: &[u8]) -> Result<()> {
    for (i, chunk) in data.chunks(NV_CHUNK).enumerate() {
        let mut c = Vec::with_capacity(chunk.len() + 40);
        c.extend(TPM_ST_SESSIONS.to_be_bytes());
        c.extend([0; 4]); // size, below
        c.extend(TPM_CC_NV_WRITE.to_be_bytes());
        c.extend(TPM_RH_OWNER.to_be_bytes());
        c.extend(index.to_be_bytes());
        // One password session: handle, empty nonce, attributes, empty password.
        c.extend(9u32.to_be_bytes());
        c.extend(TPM_RS_PW.to_be_bytes());
        c.extend(0u16.to_be_bytes());
        c.push(0);
        c.extend(0u16.to_be_bytes());
        c.extend((chunk.len() as u16).to_be_bytes());
        c.extend(chunk);
        c.extend(((i * NV_CHUNK) as u16).to_be_bytes());
        let size = c.len() as u32;
        c[2..6].copy_from_slice(&size.to_be_bytes());
        up.write_all(&c)?;
        let r = read_message(up)?.context("swtpm closed the connection during the HCL write")?;
        let rc = be32(&r, 6).unwrap_or(u32::MAX);
        if rc != 0 {
            bail!("TPM2_NV_Write of the HCL report at offset {} failed: TPM_RC {rc:#x}", i * NV_CHUNK);
        }
    }
    Ok(())
}
