//! A broker without cloak's admin read-back (Trustee answers its unknown routes with a
//! bare 404) must make a generated-KEK registration refuse before anything is written,
//! with an error that names the way out (`keypath=` / `--kek-file`).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

#[tokio::test]
async fn generated_kek_is_refused_against_a_broker_without_read_back() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            seen2.lock().unwrap().push(line.trim().to_string());
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
        }
    });
    let key = josekit::jws::EdDSA.generate_key_pair(josekit::jwk::alg::ed::EdCurve::Ed25519).unwrap();
    let admin =
        kbs_client::AdminClient::new(&format!("http://127.0.0.1:{port}"), &key.to_pem_private_key()).unwrap();
    let kid: kbs_client::ResourceUri = "default/image-kek/app".parse().unwrap();
    let e = keyprovider::kek::obtain_kek(&admin, &kid).await.unwrap_err().to_string();
    assert!(e.contains("keypath=") && e.contains("--kek-file"), "{e}");
    assert!(e.contains("kbs:///default/image-kek/app"), "{e}");
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|l| l.starts_with("GET ")), "nothing may be written: {seen:?}");
}
