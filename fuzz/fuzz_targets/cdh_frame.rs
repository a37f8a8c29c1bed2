//! Fuzz a ttRPC request frame as cloak-cdh receives it: the ttrpc crate's frame
//! reader, the request envelope, the CDH message of each service and the
//! request's first checks. Any input must give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let _ = rt.block_on(guest_puller::cdh::frame::decode(data));
});
