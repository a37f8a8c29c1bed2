//! Fuzzes what the broker reads back from a shared store (etcd): the JSON gateway's
//! watch lines and range answers, sealed values, and session records. A member or a
//! snapshot restore can hand any bytes; none may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::kbs_store_values(data));
