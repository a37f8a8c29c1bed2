//! Fuzzes what the broker reads back from a shared store (etcd): the JSON gateway's
//! watch lines and range answers, sealed values, and session records. A member or a
//! snapshot restore can hand any bytes; none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kbs_server::etcd::parse_watch_line(data);
    let _ = kbs_server::etcd::parse_range(data);
    let keys =
        kbs_server::seal::MasterKeys::new(kbs_server::seal::MasterKey::from_bytes(&[7u8; 32]), Vec::new());
    let _ = keys.open("/cloak/resources/a/b/c", data);
    let _ = keys.is_current(data);
    let _ = kbs_server::session::Session::from_wire(data);
});
