//! A small TPM 2.0 command layer: the handful of commands the Azure vTPM attester
//! needs (NV_ReadPublic, NV_Read, NV_Write, NV_DefineSpace, NV_UndefineSpace, Quote,
//! PCR_Read, PCR_Extend), marshalled by hand, big-endian, with the empty password session.
//!
//! Why not tss-esapi: it links libtss2 (C) into the guest binaries, which must stay
//! static and small, for eight commands. The cost is that every response is parsed
//! here, so each one is treated as untrusted input: sizes are checked against what
//! was read, response codes become [`TpmError::Response`] naming the command, and
//! nothing panics ([`fuzz_responses`] is the fuzz entry point).
//!
//! Transports: the kernel's resource-managed device (`/dev/tpmrm0`), and for tests
//! a TCP stream to swtpm's data channel, which carries the same raw commands. Both
//! are bounded: one response is at most [`MAX_RESPONSE`] bytes and arrives within a
//! deadline.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Largest response accepted from the TPM (a TPM's own buffer is 4 KiB).
pub const MAX_RESPONSE: usize = 4096;
/// Largest NV chunk read or written in one command. The TPM's MAX_NV_BUFFER is at
/// least 1024 on every TPM we know of (swtpm/libtpms and Hyper-V's vTPM: 1024).
pub const NV_CHUNK: usize = 1024;
/// How long one command may take before the transport gives up.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

const TPM_ST_NO_SESSIONS: u16 = 0x8001;
const TPM_ST_SESSIONS: u16 = 0x8002;
const TPM_RS_PW: u32 = 0x4000_0009;
/// The owner hierarchy as an authorization handle.
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_ALG_SHA256: u16 = 0x000B;
const TPM_ALG_RSASSA: u16 = 0x0014;
/// `TPM_ST_ATTEST_QUOTE`: the type field of a quote's TPMS_ATTEST.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_GENERATED_VALUE`: the magic at the start of every TPMS_ATTEST.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
const RC_RETRY: u32 = 0x922;
const RC_YIELDED: u32 = 0x908;
const RC_TESTING: u32 = 0x90A;
/// Retries of one command, about 1 s of waiting in all.
const MAX_RETRIES: u32 = 12;
/// Number of PCRs quoted and read (the SHA-256 bank, PCR 0..23).
pub const PCR_COUNT: usize = 24;

/// TPMA_NV bits the attester looks at.
pub mod nv_attr {
    pub const OWNERWRITE: u32 = 1 << 1;
    pub const AUTHWRITE: u32 = 1 << 2;
    pub const OWNERREAD: u32 = 1 << 17;
    pub const AUTHREAD: u32 = 1 << 18;
}

/// Command codes, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    NvReadPublic,
    NvRead,
    NvWrite,
    NvDefineSpace,
    NvUndefineSpace,
    Quote,
    PcrRead,
    PcrExtend,
}

impl Command {
    fn code(self) -> u32 {
        match self {
            Command::NvUndefineSpace => 0x0000_0122,
            Command::NvDefineSpace => 0x0000_012A,
            Command::NvWrite => 0x0000_0137,
            Command::NvRead => 0x0000_014E,
            Command::Quote => 0x0000_0158,
            Command::NvReadPublic => 0x0000_0169,
            Command::PcrRead => 0x0000_017E,
            Command::PcrExtend => 0x0000_0182,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Command::NvReadPublic => "TPM2_NV_ReadPublic",
            Command::NvRead => "TPM2_NV_Read",
            Command::NvWrite => "TPM2_NV_Write",
            Command::NvDefineSpace => "TPM2_NV_DefineSpace",
            Command::NvUndefineSpace => "TPM2_NV_UndefineSpace",
            Command::Quote => "TPM2_Quote",
            Command::PcrRead => "TPM2_PCR_Read",
            Command::PcrExtend => "TPM2_PCR_Extend",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong talking to the TPM.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The transport failed (open, write, read, deadline).
    #[error("TPM at {target}: {reason}")]
    Transport { target: String, reason: String },
    /// The TPM answered with a non-zero response code.
    #[error("{command} failed with TPM response code {code:#x}{hint}", hint = rc_hint(*.code))]
    Response { command: Command, code: u32 },
    /// The response does not parse.
    #[error("{command}: malformed response: {reason}")]
    Malformed { command: Command, reason: String },
}

impl TpmError {
    /// Whether the TPM said a handle does not exist (TPM_RC_HANDLE, format 1, any
    /// handle number): an NV index or persistent key that was never defined.
    pub fn is_missing_handle(&self) -> bool {
        matches!(self, TpmError::Response { code, .. } if code & 0x80 != 0 && code & 0x3F == 0x0B)
    }
}

fn rc_hint(code: u32) -> &'static str {
    if code & 0x80 != 0 {
        match code & 0x3F {
            0x0B => " (TPM_RC_HANDLE: no such handle)",
            0x15 => " (TPM_RC_SIZE)",
            0x12 => " (TPM_RC_SCHEME)",
            _ => "",
        }
    } else {
        match code {
            0x149 => " (TPM_RC_NV_AUTHORIZATION)",
            0x14A => " (TPM_RC_NV_UNINITIALIZED: the index was never written)",
            0x14C => " (TPM_RC_NV_DEFINED)",
            0x146 => " (TPM_RC_NV_RANGE)",
            0x148 => " (TPM_RC_NV_LOCKED)",
            0x100 => " (TPM_RC_INITIALIZE: TPM2_Startup was not run)",
            0x922 => " (TPM_RC_RETRY)",
            0x908 => " (TPM_RC_YIELDED)",
            0x90A => " (TPM_RC_TESTING)",
            _ => "",
        }
    }
}

/// Where the TPM is: a character device, or (tests, development) swtpm's TCP data
/// channel on a loopback address, spelled `tcp:127.0.0.1:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmTarget {
    Device(PathBuf),
    Tcp(SocketAddr),
}

impl Default for TpmTarget {
    fn default() -> Self {
        TpmTarget::Device(PathBuf::from("/dev/tpmrm0"))
    }
}

impl fmt::Display for TpmTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmTarget::Device(p) => write!(f, "{}", p.display()),
            TpmTarget::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl FromStr for TpmTarget {
    type Err = String;

    /// A path, or `tcp:ADDR:PORT` with a loopback address: a TPM reached over the
    /// network could be anyone's, so only a simulator on this machine is accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("tcp:") {
            Some(addr) => {
                let a: SocketAddr = addr.parse().map_err(|e| format!("TPM address {addr:?}: {e}"))?;
                if !a.ip().is_loopback() {
                    return Err(format!("TPM address {a} is not a loopback address (only a local simulator may be reached over TCP)"));
                }
                Ok(TpmTarget::Tcp(a))
            }
            None if s.is_empty() => Err("empty TPM device path".to_owned()),
            None => Ok(TpmTarget::Device(PathBuf::from(s))),
        }
    }
}

impl TpmTarget {
    /// Whether there is anything to talk to (a device file exists; a TCP target is
    /// always tried).
    pub fn present(&self) -> bool {
        match self {
            TpmTarget::Device(p) => p.exists(),
            TpmTarget::Tcp(_) => true,
        }
    }

    /// Opens the transport; each command may take up to [`COMMAND_TIMEOUT`].
    pub fn open(&self) -> Result<Tpm, TpmError> {
        self.open_with_timeout(COMMAND_TIMEOUT)
    }

    /// Opens the transport with a per-command deadline.
    pub fn open_with_timeout(&self, timeout: Duration) -> Result<Tpm, TpmError> {
        let err = |reason: String| TpmError::Transport { target: self.to_string(), reason };
        let transport: Box<dyn Transport> = match self {
            TpmTarget::Device(p) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(p)
                    .map_err(|e| err(format!("open: {e}")))?;
                Box::new(DeviceTransport { file: Arc::new(f), timeout })
            }
            TpmTarget::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, timeout).map_err(|e| err(format!("connect: {e}")))?;
                s.set_read_timeout(Some(timeout)).map_err(|e| err(e.to_string()))?;
                s.set_write_timeout(Some(timeout)).map_err(|e| err(e.to_string()))?;
                Box::new(TcpTransport { stream: s })
            }
        };
        Ok(Tpm { transport, target: self.to_string() })
    }
}

/// Sends one command, returns one whole response (header included, at most
/// [`MAX_RESPONSE`] bytes). Errors are plain text; [`Tpm`] adds the target.
pub trait Transport: Send {
    fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>, String>;
}

/// `/dev/tpmrm0`: one write is one command, one read returns the whole response.
/// The kernel blocks the read until the TPM answers, so the I/O runs on a helper
/// thread and the caller waits at most its deadline: a wedged TPM costs a
/// parked thread, never a hung attester.
struct DeviceTransport {
    file: Arc<File>,
    timeout: Duration,
}

impl Transport for DeviceTransport {
    fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>, String> {
        let file = Arc::clone(&self.file);
        let cmd = cmd.to_vec();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("tpm-io".to_owned())
            .spawn(move || {
                let run = || -> Result<Vec<u8>, String> {
                    (&*file).write_all(&cmd).map_err(|e| format!("write: {e}"))?;
                    let mut buf = vec![0u8; MAX_RESPONSE + 1];
                    let n = (&*file).read(&mut buf).map_err(|e| format!("read: {e}"))?;
                    if n > MAX_RESPONSE {
                        return Err(format!("response larger than {MAX_RESPONSE} bytes"));
                    }
                    buf.truncate(n);
                    Ok(buf)
                };
                let _ = tx.send(run());
            })
            .map_err(|e| format!("starting the I/O thread: {e}"))?;
        let timeout = self.timeout;
        rx.recv_timeout(timeout).map_err(|_| format!("no response within {timeout:?}"))?
    }
}

/// swtpm's data channel: the header says how much follows.
struct TcpTransport {
    stream: TcpStream,
}

impl Transport for TcpTransport {
    fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>, String> {
        self.stream.write_all(cmd).map_err(|e| format!("write: {e}"))?;
        let mut hdr = [0u8; 10];
        self.stream.read_exact(&mut hdr).map_err(|e| format!("reading the response header: {e}"))?;
        let size = u32::from_be_bytes([hdr[2], hdr[3], hdr[4], hdr[5]]) as usize;
        if !(10..=MAX_RESPONSE).contains(&size) {
            return Err(format!("response size field {size} outside 10..={MAX_RESPONSE}"));
        }
        let mut out = hdr.to_vec();
        out.resize(size, 0);
        self.stream.read_exact(&mut out[10..]).map_err(|e| format!("reading the response body: {e}"))?;
        Ok(out)
    }
}

/// An open TPM.
pub struct Tpm {
    transport: Box<dyn Transport>,
    target: String,
}

/// An NV index's public area (the parts the attester uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvPublic {
    pub index: u32,
    pub name_alg: u16,
    pub attributes: u32,
    pub data_size: u16,
}

/// A quote: the TPMS_ATTEST bytes and the raw RSASSA signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub message: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Tpm {
    /// Wraps a transport (tests pass their own).
    pub fn with_transport(transport: Box<dyn Transport>, target: String) -> Self {
        Tpm { transport, target }
    }

    /// Sends `cmd`, again while the TPM says to retry later (TPM_RC_RETRY, _YIELDED,
    /// _TESTING are warnings, not failures; tss2's ESAPI retries them the same way).
    fn run(&mut self, command: Command, cmd: Vec<u8>) -> Result<Vec<u8>, TpmError> {
        let mut attempt = 0u32;
        loop {
            let resp = self.transport.transact(&cmd).map_err(|reason| TpmError::Transport {
                target: self.target.clone(),
                reason: format!("{command}: {reason}"),
            })?;
            match parse_response(command, &resp) {
                Err(TpmError::Response { code: RC_RETRY | RC_YIELDED | RC_TESTING, .. })
                    if attempt < MAX_RETRIES =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10 * u64::from(attempt)));
                }
                other => return other.map(<[u8]>::to_vec),
            }
        }
    }

    /// TPM2_NV_ReadPublic.
    pub fn nv_read_public(&mut self, index: u32) -> Result<NvPublic, TpmError> {
        let c = Cmd::new(TPM_ST_NO_SESSIONS, Command::NvReadPublic).u32(index).finish();
        let body = self.run(Command::NvReadPublic, c)?;
        parse_nv_read_public(&body)
    }

    /// Reads all of an NV index, `NV_CHUNK` bytes at a time, authorizing with
    /// `auth` (the owner hierarchy or the index itself) and the empty password.
    pub fn nv_read_all(&mut self, index: u32, auth: u32, size: u16) -> Result<Vec<u8>, TpmError> {
        let mut out = Vec::with_capacity(size as usize);
        while out.len() < size as usize {
            let offset = out.len();
            let want = (size as usize - offset).min(NV_CHUNK);
            let c = Cmd::new(TPM_ST_SESSIONS, Command::NvRead)
                .u32(auth)
                .u32(index)
                .password_session()
                .u16(want as u16)
                .u16(offset as u16)
                .finish();
            let body = self.run(Command::NvRead, c)?;
            let chunk = parse_nv_read(&body)?;
            if chunk.len() != want {
                return Err(malformed(
                    Command::NvRead,
                    format!("asked for {want} bytes at {offset}, got {}", chunk.len()),
                ));
            }
            out.extend_from_slice(chunk);
        }
        Ok(out)
    }

    /// TPM2_NV_Write of `data` (at most one chunk) at offset 0.
    pub fn nv_write(&mut self, index: u32, auth: u32, data: &[u8]) -> Result<(), TpmError> {
        if data.len() > NV_CHUNK {
            return Err(malformed(
                Command::NvWrite,
                format!("{} bytes is more than one write may carry", data.len()),
            ));
        }
        let c = Cmd::new(TPM_ST_SESSIONS, Command::NvWrite)
            .u32(auth)
            .u32(index)
            .password_session()
            .tpm2b(data)
            .u16(0)
            .finish();
        self.run(Command::NvWrite, c).map(drop)
    }

    /// TPM2_NV_DefineSpace under the owner hierarchy, empty index auth, SHA-256 name.
    pub fn nv_define_space(&mut self, index: u32, attributes: u32, size: u16) -> Result<(), TpmError> {
        let mut public = Vec::with_capacity(14);
        public.extend_from_slice(&index.to_be_bytes());
        public.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        public.extend_from_slice(&attributes.to_be_bytes());
        public.extend_from_slice(&0u16.to_be_bytes()); // authPolicy: empty
        public.extend_from_slice(&size.to_be_bytes());
        let c = Cmd::new(TPM_ST_SESSIONS, Command::NvDefineSpace)
            .u32(TPM_RH_OWNER)
            .password_session()
            .tpm2b(&[]) // the index's auth value: empty
            .tpm2b(&public)
            .finish();
        self.run(Command::NvDefineSpace, c).map(drop)
    }

    /// TPM2_NV_UndefineSpace under the owner hierarchy.
    pub fn nv_undefine_space(&mut self, index: u32) -> Result<(), TpmError> {
        let c = Cmd::new(TPM_ST_SESSIONS, Command::NvUndefineSpace)
            .u32(TPM_RH_OWNER)
            .u32(index)
            .password_session()
            .finish();
        self.run(Command::NvUndefineSpace, c).map(drop)
    }

    /// TPM2_Quote over SHA-256 PCR 0..23 with the key at `key` (RSASSA, SHA-256,
    /// empty password), `qualifying_data` as extraData.
    pub fn quote(&mut self, key: u32, qualifying_data: &[u8]) -> Result<Quote, TpmError> {
        let c = Cmd::new(TPM_ST_SESSIONS, Command::Quote)
            .u32(key)
            .password_session()
            .tpm2b(qualifying_data)
            .u16(TPM_ALG_RSASSA)
            .u16(TPM_ALG_SHA256)
            .pcr_selection(ALL_PCRS)
            .finish();
        let body = self.run(Command::Quote, c)?;
        parse_quote(&body)
    }

    /// TPM2_PCR_Extend of SHA-256 PCR `pcr` with `digest` (empty password: the
    /// PCR's auth, as for every PCR a guest may extend).
    pub fn pcr_extend_sha256(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        let c = Cmd::new(TPM_ST_SESSIONS, Command::PcrExtend)
            .u32(pcr)
            .password_session()
            .u32(1)
            .u16(TPM_ALG_SHA256)
            .bytes(digest)
            .finish();
        self.run(Command::PcrExtend, c).map(drop)
    }

    /// The 24 SHA-256 PCRs, PCR0 first. A TPM returns at most 8 per PCR_Read, and
    /// says which in its answer; ask again for the rest until none is left.
    pub fn pcr_read_sha256(&mut self) -> Result<Vec<[u8; 32]>, TpmError> {
        let mut pcrs: [Option<[u8; 32]>; PCR_COUNT] = [None; PCR_COUNT];
        let mut pending = ALL_PCRS;
        // Each round returns at least one PCR, so 24 rounds always suffice.
        for _ in 0..PCR_COUNT {
            if pending == 0 {
                break;
            }
            let c = Cmd::new(TPM_ST_NO_SESSIONS, Command::PcrRead).pcr_selection(pending).finish();
            let body = self.run(Command::PcrRead, c)?;
            let (returned, digests) = parse_pcr_read(&body)?;
            if returned == 0 || returned & !pending != 0 {
                return Err(malformed(
                    Command::PcrRead,
                    format!("asked for PCR mask {pending:#08x}, got {returned:#08x}"),
                ));
            }
            let mut d = digests.into_iter();
            for (i, slot) in pcrs.iter_mut().enumerate() {
                if returned & (1 << i) != 0 {
                    *slot = d.next();
                }
            }
            pending &= !returned;
        }
        pcrs.into_iter()
            .enumerate()
            .map(|(i, p)| p.ok_or_else(|| malformed(Command::PcrRead, format!("PCR {i} never returned"))))
            .collect()
    }
}

const ALL_PCRS: u32 = (1 << PCR_COUNT) - 1;

/// A command being marshalled; `finish` patches the size.
struct Cmd(Vec<u8>);

impl Cmd {
    fn new(tag: u16, command: Command) -> Self {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&tag.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&command.code().to_be_bytes());
        Cmd(v)
    }
    fn u16(mut self, x: u16) -> Self {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    fn u32(mut self, x: u32) -> Self {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    /// A TPM2B: u16 size then the bytes (callers keep them far below 64 KiB).
    fn tpm2b(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(&(b.len() as u16).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    /// The authorization area: one TPMS_AUTH_COMMAND for TPM_RS_PW with an empty
    /// nonce, continueSession, and an empty password.
    fn password_session(self) -> Self {
        self.u32(9).u32(TPM_RS_PW).u16(0).u8(0x01).u16(0)
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(mut self, x: u8) -> Self {
        self.0.push(x);
        self
    }
    /// TPML_PCR_SELECTION with one SHA-256 selection of the PCRs in `mask`.
    fn pcr_selection(self, mask: u32) -> Self {
        let b = mask.to_le_bytes();
        self.u32(1).u16(TPM_ALG_SHA256).u8(3).u8(b[0]).u8(b[1]).u8(b[2])
    }
    fn finish(mut self) -> Vec<u8> {
        let len = (self.0.len() as u32).to_be_bytes();
        self.0[2..6].copy_from_slice(&len);
        self.0
    }
}

fn malformed(command: Command, reason: impl Into<String>) -> TpmError {
    TpmError::Malformed { command, reason: reason.into() }
}

/// A bounds-checked cursor over response bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    command: Command,
}

impl<'a> Reader<'a> {
    fn new(command: Command, buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0, command }
    }
    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], TpmError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            malformed(
                self.command,
                format!("{what}: needs {n} bytes at offset {}, {} left", self.pos, self.buf.len() - self.pos),
            )
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, TpmError> {
        Ok(self.bytes(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, TpmError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, TpmError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn tpm2b(&mut self, what: &str) -> Result<&'a [u8], TpmError> {
        let n = self.u16(what)? as usize;
        self.bytes(n, what)
    }
    fn rest(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Checks a whole response (header, size field equal to the length, response
/// code) and returns what follows the header. For commands sent with sessions, the
/// body starts with the parameter size, which is checked and stripped too.
pub fn parse_response(command: Command, resp: &[u8]) -> Result<&[u8], TpmError> {
    if resp.len() > MAX_RESPONSE {
        return Err(malformed(command, format!("{} bytes, more than {MAX_RESPONSE}", resp.len())));
    }
    let mut r = Reader::new(command, resp);
    let tag = r.u16("tag")?;
    let size = r.u32("size")? as usize;
    let code = r.u32("response code")?;
    if size != resp.len() {
        return Err(malformed(command, format!("size field {size} but {} bytes read", resp.len())));
    }
    if code != 0 {
        return Err(TpmError::Response { command, code });
    }
    match tag {
        TPM_ST_NO_SESSIONS => Ok(&resp[r.pos..]),
        TPM_ST_SESSIONS => {
            let params = r.u32("parameter size")? as usize;
            let body = r.bytes(params, "parameters")?;
            // The rest is the (password) session's response auth; nothing to check.
            Ok(body)
        }
        other => Err(malformed(command, format!("unknown tag {other:#06x}"))),
    }
}

fn parse_nv_read_public(body: &[u8]) -> Result<NvPublic, TpmError> {
    let c = Command::NvReadPublic;
    let mut r = Reader::new(c, body);
    let public = r.tpm2b("nvPublic")?;
    let _name = r.tpm2b("nvName")?;
    let mut p = Reader::new(c, public);
    let index = p.u32("nvIndex")?;
    let name_alg = p.u16("nameAlg")?;
    let attributes = p.u32("attributes")?;
    let _policy = p.tpm2b("authPolicy")?;
    let data_size = p.u16("dataSize")?;
    if p.rest() != 0 {
        return Err(malformed(c, format!("{} bytes after the NV public area", p.rest())));
    }
    Ok(NvPublic { index, name_alg, attributes, data_size })
}

fn parse_nv_read(body: &[u8]) -> Result<&[u8], TpmError> {
    let mut r = Reader::new(Command::NvRead, body);
    let data = r.tpm2b("data")?;
    if r.rest() != 0 {
        return Err(malformed(Command::NvRead, format!("{} bytes after the data", r.rest())));
    }
    Ok(data)
}

fn parse_quote(body: &[u8]) -> Result<Quote, TpmError> {
    let c = Command::Quote;
    let mut r = Reader::new(c, body);
    let message = r.tpm2b("quoted")?.to_vec();
    let sig_alg = r.u16("sigAlg")?;
    if sig_alg != TPM_ALG_RSASSA {
        return Err(malformed(c, format!("signature algorithm {sig_alg:#06x}, expected RSASSA (0x0014)")));
    }
    let hash = r.u16("signature hash")?;
    if hash != TPM_ALG_SHA256 {
        return Err(malformed(c, format!("signature hash {hash:#06x}, expected SHA-256 (0x000b)")));
    }
    let signature = r.tpm2b("signature")?.to_vec();
    if signature.is_empty() || r.rest() != 0 {
        return Err(malformed(c, "empty signature or bytes after it"));
    }
    Ok(Quote { message, signature })
}

/// Returns the PCR mask the TPM answered for and the digests in PCR order.
fn parse_pcr_read(body: &[u8]) -> Result<(u32, Vec<[u8; 32]>), TpmError> {
    let c = Command::PcrRead;
    let mut r = Reader::new(c, body);
    let _update_counter = r.u32("pcrUpdateCounter")?;
    let count = r.u32("pcrSelectionOut count")?;
    let mut mask = 0u32;
    // A TPM answers with the banks asked for: one (SHA-256), or none when it has
    // no SHA-256 bank.
    if count > 1 {
        return Err(malformed(c, format!("{count} PCR selections for one asked")));
    }
    for _ in 0..count {
        let alg = r.u16("hash")?;
        if alg != TPM_ALG_SHA256 {
            return Err(malformed(c, format!("PCR bank {alg:#06x}, expected SHA-256")));
        }
        let n = r.u8("sizeofSelect")? as usize;
        let sel = r.bytes(n, "pcrSelect")?;
        for (i, b) in sel.iter().enumerate() {
            if *b != 0 && i >= 3 {
                return Err(malformed(c, "PCR selected beyond PCR 23"));
            }
            if i < 3 {
                mask |= u32::from(*b) << (8 * i);
            }
        }
    }
    let n = r.u32("digest count")? as usize;
    if n != mask.count_ones() as usize {
        return Err(malformed(c, format!("{n} digests for {} selected PCRs", mask.count_ones())));
    }
    let mut digests = Vec::with_capacity(n);
    for _ in 0..n {
        let d = r.tpm2b("digest")?;
        let d: [u8; 32] =
            d.try_into().map_err(|_| malformed(c, format!("SHA-256 PCR digest of {} bytes", d.len())))?;
        digests.push(d);
    }
    if r.rest() != 0 {
        return Err(malformed(c, format!("{} bytes after the digests", r.rest())));
    }
    Ok((mask, digests))
}

/// Fuzz entry point: runs `data` (first byte picks the command) through the
/// response parser of every command. Must never panic.
pub fn fuzz_responses(data: &[u8]) {
    let Some((&pick, resp)) = data.split_first() else { return };
    let commands = [
        Command::NvReadPublic,
        Command::NvRead,
        Command::NvWrite,
        Command::NvDefineSpace,
        Command::NvUndefineSpace,
        Command::Quote,
        Command::PcrRead,
        Command::PcrExtend,
    ];
    let command = commands[pick as usize % commands.len()];
    let Ok(body) = parse_response(command, resp) else { return };
    let _ = parse_nv_read_public(body);
    let _ = parse_nv_read(body);
    let _ = parse_quote(body);
    let _ = parse_pcr_read(body);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn response(tag: u16, code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&tag.to_be_bytes());
        v.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn with_params(params: &[u8]) -> Vec<u8> {
        let mut v = (params.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(params);
        v.extend_from_slice(&[0, 0, 1, 0, 0]); // password session response auth
        v
    }

    #[test]
    fn response_code_names_the_command_and_the_code() {
        let r = response(TPM_ST_NO_SESSIONS, 0x18B, &[]);
        let e = parse_response(Command::NvReadPublic, &r).unwrap_err();
        assert!(e.is_missing_handle());
        assert_eq!(
            e.to_string(),
            "TPM2_NV_ReadPublic failed with TPM response code 0x18b (TPM_RC_HANDLE: no such handle)"
        );
    }

    #[test]
    fn size_field_must_equal_bytes_read() {
        let mut r = response(TPM_ST_NO_SESSIONS, 0, &[1, 2, 3]);
        r.push(0);
        let e = parse_response(Command::PcrRead, &r).unwrap_err();
        assert!(e.to_string().contains("size field 13 but 14 bytes read"), "{e}");
        r.truncate(12);
        assert!(parse_response(Command::PcrRead, &r).is_err());
        for n in 0..10 {
            assert!(parse_response(Command::PcrRead, &r[..n]).is_err());
        }
    }

    #[test]
    fn oversized_response_is_refused() {
        let r = response(TPM_ST_NO_SESSIONS, 0, &vec![0u8; MAX_RESPONSE]);
        let e = parse_response(Command::NvRead, &r).unwrap_err();
        assert!(e.to_string().contains("more than 4096"), "{e}");
    }

    #[test]
    fn parameter_size_beyond_the_response_is_refused() {
        let mut body = with_params(&[0, 1, 7]);
        body[3] = 200;
        let r = response(TPM_ST_SESSIONS, 0, &body);
        assert!(parse_response(Command::NvRead, &r).is_err());
    }

    #[test]
    fn nv_read_public_parses_and_rejects_truncation() {
        let mut public = Vec::new();
        public.extend_from_slice(&0x0140_0001u32.to_be_bytes());
        public.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        public.extend_from_slice(&(nv_attr::OWNERREAD | nv_attr::OWNERWRITE).to_be_bytes());
        public.extend_from_slice(&[0, 0]);
        public.extend_from_slice(&2600u16.to_be_bytes());
        let mut body = (public.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(&public);
        body.extend_from_slice(&[0, 2, 0xAA, 0xBB]);
        let p = parse_nv_read_public(&body).unwrap();
        assert_eq!(p.index, 0x0140_0001);
        assert_eq!(p.data_size, 2600);
        for n in 0..body.len() {
            assert!(parse_nv_read_public(&body[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn pcr_read_checks_selection_against_digests() {
        let mut body = vec![0, 0, 0, 5, 0, 0, 0, 1, 0, 0x0B, 3, 0x03, 0, 0];
        body.extend_from_slice(&2u32.to_be_bytes());
        for i in 0..2u8 {
            body.extend_from_slice(&[0, 32]);
            body.extend_from_slice(&[i; 32]);
        }
        let (mask, d) = parse_pcr_read(&body).unwrap();
        assert_eq!(mask, 0b11);
        assert_eq!(d[1], [1; 32]);
        // One digest short of the selection.
        let mut short = body.clone();
        short[17] = 1;
        assert!(parse_pcr_read(&short).is_err());
        for n in 0..body.len() {
            assert!(parse_pcr_read(&body[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn quote_requires_rsassa_sha256() {
        let mut body = vec![0, 3, 1, 2, 3];
        body.extend_from_slice(&TPM_ALG_RSASSA.to_be_bytes());
        body.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        body.extend_from_slice(&[0, 2, 9, 9]);
        let q = parse_quote(&body).unwrap();
        assert_eq!(q.message, [1, 2, 3]);
        assert_eq!(q.signature, [9, 9]);
        let mut pss = body.clone();
        pss[6] = 0x16;
        assert!(parse_quote(&pss).unwrap_err().to_string().contains("expected RSASSA"));
        for n in 0..body.len() {
            assert!(parse_quote(&body[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn fuzz_entry_survives_garbage() {
        for seed in 0..2000u32 {
            let len = (seed % 64) as usize;
            let data: Vec<u8> =
                (0..len).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u32 * 7)) as u8).collect();
            fuzz_responses(&data);
        }
        let mut r = vec![0u8];
        r.extend_from_slice(&response(TPM_ST_SESSIONS, 0, &with_params(&[0xff, 0xff])));
        fuzz_responses(&r);
    }

    /// swtpm's real answers (the fuzz seeds, see `fuzz/seeds/README.md`) parse.
    #[test]
    fn real_swtpm_responses_parse() {
        let seed = |name: &str| {
            let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fuzz/seeds/tpm_response")
                .join(name);
            std::fs::read(p).unwrap()[1..].to_vec()
        };
        let r = seed("nv_read_public.bin");
        let p = parse_nv_read_public(parse_response(Command::NvReadPublic, &r).unwrap()).unwrap();
        assert_eq!((p.index, p.name_alg, p.data_size), (0x0140_0001, TPM_ALG_SHA256, 600));
        assert_eq!(
            p.attributes & (nv_attr::OWNERREAD | nv_attr::OWNERWRITE),
            nv_attr::OWNERREAD | nv_attr::OWNERWRITE
        );
        let r = seed("nv_read.bin");
        let data = parse_nv_read(parse_response(Command::NvRead, &r).unwrap()).unwrap();
        assert_eq!(&data[..4], b"HCLA");
        assert_eq!(data.len(), 256);
        let r = seed("nv_read_public_missing.bin");
        assert!(parse_response(Command::NvReadPublic, &r).unwrap_err().is_missing_handle());
        let r = seed("pcr_read.bin");
        let (mask, digests) = parse_pcr_read(parse_response(Command::PcrRead, &r).unwrap()).unwrap();
        assert_eq!((mask, digests.len()), (0xff, 8), "swtpm answers 8 PCRs per PCR_Read");
        let r = seed("quote.bin");
        let q = parse_quote(parse_response(Command::Quote, &r).unwrap()).unwrap();
        assert_eq!(q.message[..6], [0xff, 0x54, 0x43, 0x47, 0x80, 0x18]);
        assert_eq!(q.signature.len(), 256);
    }

    #[test]
    fn tcp_target_must_be_loopback() {
        assert!("tcp:127.0.0.1:2321".parse::<TpmTarget>().is_ok());
        assert!("tcp:10.0.0.1:2321".parse::<TpmTarget>().unwrap_err().contains("not a loopback"));
        assert_eq!("/dev/tpmrm0".parse::<TpmTarget>().unwrap(), TpmTarget::default());
    }
}
