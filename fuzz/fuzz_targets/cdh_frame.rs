//! Fuzz a ttRPC request frame as cloak-cdh receives it: the ttrpc crate's frame
//! reader, the request envelope, the CDH message of each service and the
//! request's first checks. Any input must give a value or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::cdh_frame(data));
