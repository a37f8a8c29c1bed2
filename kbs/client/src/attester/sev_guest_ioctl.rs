//! The `SNP_GET_REPORT` ioctl on `/dev/sev-guest`, for kernels without
//! configfs-tsm. This is the crate's only unsafe code: the ioctl hands the kernel
//! raw pointers to a request and a response buffer that we own.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::snp::SNP_REPORT_LEN;
use crate::error::AttesterError;

/// `struct snp_report_req` (linux/sev-guest.h).
#[repr(C)]
struct SnpReportReq {
    user_data: [u8; 64],
    vmpl: u32,
    rsvd: [u8; 28],
}

/// `struct snp_report_resp`.
#[repr(C)]
struct SnpReportResp {
    data: [u8; 4000],
}

/// `struct snp_guest_request_ioctl`.
#[repr(C)]
struct SnpGuestRequestIoctl {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    exitinfo2: u64,
}

/// `_IOWR('S', 0x0, struct snp_guest_request_ioctl)`: dir=3 (rw), size=32.
const SNP_GET_REPORT: u64 =
    (3 << 30) | ((std::mem::size_of::<SnpGuestRequestIoctl>() as u64) << 16) | ((b'S' as u64) << 8);

/// Offset of the report inside `MSG_REPORT_RSP` (status u32, size u32, 24 reserved).
const REPORT_OFFSET: usize = 32;

/// Requests an attestation report at VMPL 0 binding `report_data`.
pub(crate) fn get_report(device: &Path, report_data: &[u8; 64]) -> Result<Vec<u8>, AttesterError> {
    let err = |reason: String| AttesterError::SevGuest { path: device.display().to_string(), reason };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| err(format!("cannot open: {e}")))?;
    let req = SnpReportReq { user_data: *report_data, vmpl: 0, rsvd: [0; 28] };
    let mut resp = Box::new(SnpReportResp { data: [0; 4000] });
    let mut ioctl_arg = SnpGuestRequestIoctl {
        msg_version: 1,
        req_data: &req as *const SnpReportReq as u64,
        resp_data: &mut *resp as *mut SnpReportResp as u64,
        exitinfo2: 0,
    };
    // SAFETY: `file` is an open descriptor for the duration of the call; the
    // request number matches the layout of `SnpGuestRequestIoctl`, whose
    // `req_data`/`resp_data` point to `req` and `resp`, which are live, correctly
    // sized (#[repr(C)] copies of the kernel structs) and not otherwise borrowed
    // until the call returns. The kernel writes only into `resp` and `ioctl_arg`.
    let rc = unsafe {
        libc::ioctl(file.as_raw_fd(), SNP_GET_REPORT as _, &mut ioctl_arg as *mut SnpGuestRequestIoctl)
    };
    if rc != 0 {
        let os = std::io::Error::last_os_error();
        return Err(err(format!(
            "SNP_GET_REPORT failed: {os} (firmware/VMM error 0x{:x})",
            ioctl_arg.exitinfo2
        )));
    }
    let status = u32::from_le_bytes([resp.data[0], resp.data[1], resp.data[2], resp.data[3]]);
    if status != 0 {
        return Err(err(format!("firmware returned status 0x{status:x}")));
    }
    let size = u32::from_le_bytes([resp.data[4], resp.data[5], resp.data[6], resp.data[7]]) as usize;
    let len = size.min(SNP_REPORT_LEN);
    resp.data
        .get(REPORT_OFFSET..REPORT_OFFSET + len)
        .map(<[u8]>::to_vec)
        .filter(|r| r.len() == SNP_REPORT_LEN)
        .ok_or_else(|| err(format!("report size {size} is not {SNP_REPORT_LEN}")))
}
