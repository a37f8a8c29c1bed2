//! One function per fuzz target (see the crate docs). Keys and options here are
//! fixed test material: fuzzing needs determinism, not secrecy.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::OnceLock;

/// Annotation and cipher-options parsers (untrusted manifest bytes): parsed
/// values must survive a serialize/parse round trip.
pub fn annotations(data: &[u8]) {
    use ocicrypt::{EncAnnotations, PrivateOptions, PublicOptions};
    if let Ok(p) = PrivateOptions::from_json(data) {
        let again = PrivateOptions::from_json(&p.to_json()).expect("private options round trip");
        assert_eq!(again, p);
    }
    if let Ok(p) = PublicOptions::from_json(data) {
        assert_eq!(PublicOptions::from_json(&p.to_json()).expect("public options round trip"), p);
    }
    // Annotations as `key=value` lines, or as a JSON object.
    let text = String::from_utf8_lossy(data);
    let mut map: BTreeMap<String, String> =
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    if let Ok(json) = serde_json::from_slice::<BTreeMap<String, String>>(data) {
        map.extend(json);
    }
    if let Ok(enc) = EncAnnotations::parse(&map) {
        let back = EncAnnotations::parse(&enc.to_annotations()).expect("annotations round trip");
        assert_eq!(back.wrapped, enc.wrapped);
        assert_eq!(back.pubopts, enc.pubopts);
    }
    let stripped = ocicrypt::annotations::strip_enc_annotations(&map);
    assert!(stripped.keys().all(|k| !k.starts_with(ocicrypt::annotations::ENC_PREFIX)));
}

/// A reader that hands out its data in the fuzzer-chosen chunk sizes.
struct Chunky<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    i: usize,
}

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = self.sizes.get(self.i % self.sizes.len().max(1)).copied().unwrap_or(255) as usize + 1;
        self.i += 1;
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// The decrypting reader over arbitrary ciphertext and read chunking: it must
/// end in `Ok` only when the HMAC matched, and an error must stay an error. The
/// combined-pass variants (blob digests hashed in the HMAC's SIMD pass) must
/// agree with the plain ones and with OpenSSL (differential).
///
/// Input layout: 32 bytes of claimed HMAC, one byte giving how many of the
/// following bytes are chunk sizes, then the ciphertext/plaintext.
pub fn decrypt_stream(input: &[u8]) {
    use ocicrypt::{DecryptReader, EncryptReader, PrivateOptions, PublicOptions};
    if input.len() < 33 {
        return;
    }
    let (head, rest) = input.split_at(33);
    let split = (head[32] as usize).min(rest.len());
    let (sizes, data) = rest.split_at(split);
    let o = PrivateOptions::from_json(
        br#"{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","cipheroptions":{"nonce":"AAECAwQFBgcICQoLDA0ODw=="}}"#,
    )
    .expect("fixed options");
    let mut hmac = [0u8; 32];
    hmac.copy_from_slice(&head[..32]);

    // Arbitrary ciphertext and HMAC: success only if the reader says verified.
    let mut r =
        DecryptReader::new(Chunky { data, sizes, i: 0 }, &o, &PublicOptions::new(hmac)).expect("cipher");
    let mut out = Vec::new();
    match r.read_to_end(&mut out) {
        Ok(_) => assert!(r.is_verified()),
        Err(e) => {
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(r.read(&mut [0u8; 8]).is_err(), "a failed stream must not turn into EOF");
        }
    }

    // Real ciphertext of `data`: must round-trip under any chunking.
    let mut enc = EncryptReader::new(Chunky { data, sizes, i: 0 }, &o);
    let mut ct = Vec::new();
    enc.read_to_end(&mut ct).expect("encrypt");
    let public = enc.public_options().expect("finished").clone();
    let mut r = DecryptReader::new(Chunky { data: &ct, sizes, i: 0 }, &o, &public).expect("cipher");
    let mut plain = Vec::new();
    r.read_to_end(&mut plain).expect("decrypt");
    assert_eq!(plain, data);

    // The combined-pass variants (sha256x lanes): same ciphertext and HMAC, and
    // digests equal to OpenSSL's, under any chunking.
    let mut fused = EncryptReader::with_digests(Chunky { data, sizes, i: 0 }, &o);
    let mut ct2 = Vec::new();
    fused.read_to_end(&mut ct2).expect("encrypt");
    assert_eq!(ct2, ct);
    let sealed = fused.sealed().expect("finished").clone();
    assert_eq!(sealed.public.hmac, public.hmac);
    assert_eq!(sealed.plaintext_sha256, Some(openssl::sha::sha256(data)));
    let blob = openssl::sha::sha256(&ct);
    assert_eq!(sealed.ciphertext_sha256, Some(blob));
    let mut r = DecryptReader::with_ciphertext_digest(Chunky { data: &ct, sizes, i: 0 }, &o, &public, blob)
        .expect("cipher");
    let mut plain = Vec::new();
    r.read_to_end(&mut plain).expect("decrypt with the blob digest");
    assert_eq!(plain, data);
    let mut wrong = blob;
    wrong[31] ^= 1;
    let mut r = DecryptReader::with_ciphertext_digest(Chunky { data: &ct, sizes, i: 0 }, &o, &public, wrong)
        .expect("cipher");
    assert!(r.read_to_end(&mut Vec::new()).is_err(), "a wrong blob digest must fail");
}

/// One entry of the `tar` crate's own listing of an archive.
struct Listed {
    path: Vec<u8>,
    kind: tar::EntryType,
    contents: Vec<u8>,
}

/// The `tar` crate's listing, and whether it reached the end without error.
fn tar_listing(data: &[u8]) -> (Vec<Listed>, bool) {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(data);
    let Ok(entries) = archive.entries() else { return (out, false) };
    for e in entries {
        let Ok(mut e) = e else { return (out, false) };
        let path = e.path_bytes().into_owned();
        let kind = e.header().entry_type();
        let mut contents = Vec::new();
        if kind.is_file() && e.read_to_end(&mut contents).is_err() {
            return (out, false);
        }
        out.push(Listed { path, kind, contents });
    }
    (out, true)
}

/// A listing the extractor must reproduce exactly: only regular files and
/// directories, plain relative names (no `.`/`..`, no whiteouts, no duplicates,
/// no file that is also used as a directory).
fn is_simple(list: &[Listed]) -> bool {
    use std::collections::HashSet;
    let mut files = HashSet::new();
    let mut dirs = HashSet::new();
    for e in list {
        let Ok(p) = std::str::from_utf8(&e.path) else { return false };
        let p = p.trim_end_matches('/');
        let parts: Vec<&str> = p.split('/').collect();
        let plain =
            |c: &&str| !c.is_empty() && *c != "." && *c != ".." && !c.starts_with(".wh.") && c.len() < 200;
        if p.is_empty() || !parts.iter().all(plain) {
            return false;
        }
        for i in 1..parts.len() {
            dirs.insert(parts[..i].join("/"));
        }
        match e.kind {
            tar::EntryType::Regular if files.insert(p.to_owned()) => {}
            tar::EntryType::Directory => {
                dirs.insert(p.to_owned());
            }
            _ => return false,
        }
    }
    files.iter().all(|f| !dirs.contains(f))
}

/// The safe tar extractor with arbitrary bytes, in both whiteout modes, each
/// into a fresh root inside a sandbox directory: nothing may appear next to the
/// root (the escape property). Differential against the `tar` crate's listing:
/// an archive the extractor accepts must list to the end with as many entries,
/// and for simple archives every listed file must be on disk with its bytes.
pub fn extract_tar(data: &[u8]) {
    use guest_puller::extract::{extract, ExtractOptions, Limits, WhiteoutMode};
    let limits = Limits { max_total_size: 16 << 20, max_entries: 10_000, ..Limits::default() };
    for mode in [WhiteoutMode::Apply, WhiteoutMode::Keep] {
        let Ok(tmp) = tempfile::tempdir() else { return };
        let root = tmp.path().join("root");
        if std::fs::create_dir(&root).is_err() {
            return;
        }
        let opts = ExtractOptions { whiteouts: mode, limits, ..ExtractOptions::default() };
        let res = extract(data, &root, &opts);
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(names, vec![std::ffi::OsString::from("root")], "an entry escaped the root");
        let Ok(stats) = res else { continue };
        let (list, complete) = tar_listing(data);
        assert!(complete, "the extractor accepted an archive the tar crate cannot list to the end");
        assert_eq!(stats.entries, list.len() as u64, "entry count differs from the tar crate's listing");
        if is_simple(&list) {
            for e in list.iter().filter(|e| e.kind == tar::EntryType::Regular) {
                let p = root.join(std::str::from_utf8(&e.path).expect("checked utf-8"));
                match std::fs::read(&p) {
                    Ok(on_disk) => {
                        assert!(on_disk == e.contents, "extracted bytes differ from the tar crate's")
                    }
                    // Not root: a mode the archive set may keep us out.
                    Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {}
                    Err(err) => panic!("a listed file is missing after extraction: {err}"),
                }
            }
        }
    }
}

/// The two private keys the `multi-recipient-rsa-ec` golden vector (real
/// skopeo) was encrypted to, so the seed JWEs open.
const JWE_KEYS: [&[u8]; 2] = [
    include_bytes!("../../../testdata/golden/multi-recipient-rsa-ec/keys/rsa.priv.pem"),
    include_bytes!("../../../testdata/golden/multi-recipient-rsa-ec/keys/ec.priv.pem"),
];

/// The JWE parser and unwrapper with fixed RSA and EC keys, and the header-only
/// `jwe_recipients`: arbitrary bytes give an error, never a panic. Differential
/// against josekit: a JWE we open must open under josekit with one of the same
/// keys, to the same plaintext.
pub fn jwe(data: &[u8]) {
    use ocicrypt::{jwe_recipients, load_private_key, JweUnwrapper};
    static U: OnceLock<JweUnwrapper> = OnceLock::new();
    let u = U.get_or_init(|| {
        JweUnwrapper::new(JWE_KEYS.iter().map(|k| load_private_key(k).expect("test key")).collect())
    });
    let _ = jwe_recipients(data);
    let Ok(ours) = u.unwrap_jwe(data) else { return };
    let theirs = josekit_open(data);
    assert!(
        theirs.iter().any(|p| p[..] == ours[..]),
        "ocicrypt opened a JWE that josekit does not open to the same plaintext ({} josekit results)",
        theirs.len()
    );
}

/// Every plaintext josekit finds with the fixed keys and the algorithms ocicrypt
/// accepts: in the JWE as given, and in each recipient taken alone as a
/// flattened JWE with its binary members (and the `epk` coordinates, `apu`,
/// `apv`) re-encoded as canonical base64url.
/// ocicrypt (like go-jose) is lenient where josekit is strict — it skips a
/// recipient it cannot read and takes padded or standard-alphabet base64 — so
/// the property both must share is "some recipient opens, to this plaintext";
/// the protected header is passed on byte for byte (it is the AAD).
fn josekit_open(data: &[u8]) -> Vec<Vec<u8>> {
    use serde_json::Value;
    let mut found = josekit_open_one(data);
    // ocicrypt trims surrounding (Unicode) whitespace and reads the compact form too.
    let Ok(text) = std::str::from_utf8(data) else { return found };
    let text = text.trim();
    if !text.starts_with('{') {
        return josekit_open_compact(text);
    }
    let Ok(Value::Object(top)) = serde_json::from_str::<Value>(text) else { return found };
    // Only the members that mean something; unknown ones are ignored by both.
    let mut base = serde_json::Map::new();
    for field in ["protected", "unprotected", "aad", "iv", "ciphertext", "tag"] {
        if let Some(v) = top.get(field) {
            let mut v = v.clone();
            if matches!(field, "iv" | "ciphertext" | "tag") {
                canonical_b64u(&mut v);
            }
            base.insert(field.into(), v);
        }
    }
    let recipients = match top.get("recipients") {
        Some(Value::Array(rs)) => rs.clone(),
        _ => vec![Value::Object(top.clone())],
    };
    for r in recipients {
        let mut one = base.clone();
        if let Some(h) = r.get("header") {
            let mut h = h.clone();
            for field in ["apu", "apv"] {
                if let Some(v) = h.get_mut(field) {
                    canonical_b64u(v);
                }
            }
            if let Some(epk) = h.get_mut("epk") {
                for field in ["x", "y"] {
                    if let Some(v) = epk.get_mut(field) {
                        canonical_b64u(v);
                    }
                }
            }
            one.insert("header".into(), h);
        }
        if let Some(k) = r.get("encrypted_key") {
            let mut k = k.clone();
            canonical_b64u(&mut k);
            one.insert("encrypted_key".into(), k);
        }
        found.extend(josekit_open_one(Value::Object(one).to_string().as_bytes()));
    }
    found
}

/// Re-encodes a base64 string (either alphabet, padded or not) as unpadded
/// base64url; leaves anything else alone.
fn canonical_b64u(v: &mut serde_json::Value) {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine;
    let Some(s) = v.as_str() else { return };
    let s = s.trim_end_matches('=');
    if let Ok(bytes) = URL_SAFE_NO_PAD.decode(s).or_else(|_| STANDARD_NO_PAD.decode(s)) {
        *v = serde_json::Value::String(URL_SAFE_NO_PAD.encode(bytes));
    }
}

/// What josekit opens the compact form `text` to.
fn josekit_open_compact(text: &str) -> Vec<Vec<u8>> {
    josekit_decrypters()
        .iter()
        .filter_map(|d| josekit::jwe::deserialize_compact(text, &**d).ok())
        .map(|(p, _)| p)
        .collect()
}

/// What josekit opens `data` (JSON serialization) to, with each fixed key and algorithm.
fn josekit_open_one(data: &[u8]) -> Vec<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(data) else { return Vec::new() };
    josekit_decrypters()
        .iter()
        .filter_map(|d| josekit::jwe::deserialize_json(text, &**d).ok())
        .map(|(p, _)| p)
        .collect()
}

/// The josekit decrypters for the fixed keys, one per algorithm ocicrypt accepts.
fn josekit_decrypters() -> &'static [Box<dyn josekit::jwe::JweDecrypter>] {
    use josekit::jwe::{self, JweDecrypter};
    static D: OnceLock<Vec<Box<dyn JweDecrypter>>> = OnceLock::new();
    let decrypters = D.get_or_init(|| {
        let mut d: Vec<Box<dyn JweDecrypter>> = Vec::new();
        for rsa in [jwe::RSA_OAEP, jwe::RSA_OAEP_256] {
            d.push(Box::new(rsa.decrypter_from_pem(JWE_KEYS[0]).expect("josekit RSA key")));
        }
        for ec in [jwe::ECDH_ES_A128KW, jwe::ECDH_ES_A192KW, jwe::ECDH_ES_A256KW, jwe::ECDH_ES] {
            d.push(Box::new(ec.decrypter_from_pem(JWE_KEYS[1]).expect("josekit EC key")));
        }
        d
    });
    decrypters
}

/// The KBS handshake answers: the `/auth` challenge, the `/attest` token answer
/// and the token's claims. Arbitrary bytes give an error, never a panic.
pub fn kbs_challenge(data: &[u8]) {
    use kbs_client::protocol::{parse_attest_response, parse_challenge, Token};
    let _ = parse_challenge(data);
    if let Ok(t) = parse_attest_response(data) {
        let _ = t.is_fresh(0, 5);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Token::parse(s.to_owned());
    }
}

/// The broker's parsers of untrusted guest input: raw SNP reports and TDX
/// quotes, evidence JSON through each verifier, and the policy YAML.
pub fn kbs_evidence(data: &[u8]) {
    use kbs_server::verifier::Tee;
    // Verification is async (collateral may be fetched); one runtime for all inputs.
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"));
    let _ = kbs_server::verifier::snp::Report::parse(data);
    let _ = kbs_server::verifier::tdx::quote_info(data);
    let trust = kbs_server::verifier::Trust::default();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        for tee in [Tee::Sample, Tee::Snp, Tee::Tdx] {
            let _ = rt.block_on(kbs_server::verifier::verify(tee, &v, &[0u8; 48], &trust));
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kbs_server::policy::BrokerPolicy::parse(s);
    }
}

/// The KBS resource answer: arbitrary bytes go through the JWE parser and the
/// decryptor with fixed EC and RSA TEE keys; an error, never a panic.
pub fn kbs_resource_response(data: &[u8]) {
    use kbs_client::protocol::{decrypt_response, parse_response};
    use kbs_client::{TeeKeyKind, TeeKeyPair};
    static K: OnceLock<[TeeKeyPair; 2]> = OnceLock::new();
    let keys = K.get_or_init(|| {
        [
            TeeKeyPair::generate(TeeKeyKind::EcP256).expect("EC key"),
            TeeKeyPair::generate(TeeKeyKind::Rsa).expect("RSA key"),
        ]
    });
    if let Ok(resp) = parse_response(data) {
        for k in keys {
            let _ = decrypt_response(k, &resp);
        }
    }
}

/// CoCo AnnotationPackets (untrusted: from an image's layer annotation):
/// parsing and opening with a fixed KEK never panic.
pub fn keyprovider_packet(data: &[u8]) {
    if let Ok(p) = keyprovider::AnnotationPacket::parse(data) {
        if let Ok(kek) = keyprovider::Kek::from_slice(&[7u8; 32]) {
            let _ = p.open(&kek);
        }
        let _ = p.to_v1_json();
    }
}

/// Keyprovider request/answer JSON (untrusted: from skopeo/containerd or from a
/// provider process): parsing and validating never panic.
pub fn keyprovider_protocol(data: &[u8]) {
    if let Ok(input) = keyprovider::protocol::KeyProviderInput::from_slice(data) {
        let _ = input.to_vec();
        let _ = input.into_request();
    }
    let _ = keyprovider::protocol::KeyProviderOutput::from_slice(data);
}

/// Manifests and indexes come from registries the guest does not trust:
/// parsing any bytes under any media type returns, never panics.
pub fn oci_manifest(data: &[u8]) {
    for media_type in [
        oci::media_type::OCI_MANIFEST,
        oci::media_type::OCI_INDEX,
        oci::media_type::DOCKER_MANIFEST,
        oci::media_type::DOCKER_MANIFEST_LIST,
    ] {
        if let Ok(oci::Manifest::Index(idx)) = oci::parse_manifest(data, media_type) {
            let _ = oci::select_platform(&idx, &oci::PlatformSpec::current());
        }
    }
    if let Ok(c) = oci::ImageConfig::parse(data.to_vec()) {
        let _ = c.check_layer_count(c.diff_ids().len());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<oci::ImageRef>();
        let _ = s.parse::<oci::Digest>();
        // A layer media type that parses prints back as the same string.
        if let Ok(t) = ocicrypt::LayerMediaType::parse(s) {
            assert_eq!(t.to_string(), s);
            let _ = t.encrypt();
        }
    }
}

/// A ttRPC request frame as cloak-cdh receives it: the ttrpc crate's frame reader,
/// the request envelope, the CDH message of each service and the request's first
/// checks. Any input gives a value or an error, never a panic.
pub fn cdh_frame(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let _ = rt.block_on(guest_puller::cdh::frame::decode(data));
}

/// The sealed-secret parser (`sealed.<header>.<payload>.<signature>`) and its payload
/// reader. A parsed secret's signing input must be what was sent.
pub fn cdh_sealed(data: &[u8]) {
    use guest_puller::cdh::sealed;
    if let Ok(s) = sealed::parse(data) {
        let text = std::str::from_utf8(data).expect("parsed input is UTF-8");
        assert!(text.contains(&s.signing_input));
        let _ = sealed::interpret(&s.payload);
    }
    let _ = sealed::interpret(data);
}

/// What the broker reads back from a shared store (etcd): the JSON gateway's watch
/// lines and range answers, gRPC transaction answers, sealed values, and session records. A member or a
/// snapshot restore can hand any bytes; none may panic.
pub fn kbs_store_values(data: &[u8]) {
    let _ = kbs_server::storage::etcd::gateway::parse_watch_line(data);
    let _ = kbs_server::storage::etcd::gateway::parse_range(data);
    // A TxnResponse as etcd's gRPC answer carries it (decoded by hand, no protoc).
    let _ = kbs_server::storage::etcd::grpc::decode_txn(data);
    let keys =
        kbs_server::seal::MasterKeys::new(kbs_server::seal::MasterKey::from_bytes(&[7u8; 32]), Vec::new());
    let _ = keys.open("/cloak/resources/a/b/c", data);
    let _ = keys.is_current(data);
    let _ = kbs_server::session::Session::from_wire(data);
}

/// Cosign signature manifests (served by the registry under the `sha256-<hex>.sig`
/// tag): never a panic, never more signatures than the cap, and appending a signature
/// to a parsed manifest keeps it parseable.
pub fn signature_manifest(data: &[u8]) {
    use imgsig::cosign::{append_signature, parse_signature_manifest, MAX_SIGNATURES};
    let Ok(sigs) = parse_signature_manifest(data) else { return };
    assert!(sigs.len() <= MAX_SIGNATURES);
    if let Ok(built) = append_signature(Some(data), b"payload", b"signature") {
        let again = parse_signature_manifest(&built.manifest).expect("appended manifest parses");
        assert!(again.len() <= sigs.len() + 1);
    }
}

/// The simple-signing payload parser and the docker reference parser (both read bytes
/// a registry serves): never a panic; a parsed reference prints to a string that
/// parses back to the same reference.
pub fn signature_payload(data: &[u8]) {
    use imgsig::payload::{ATOMIC_TYPE, COSIGN_TYPE};
    use imgsig::{DockerRef, Payload};
    for kind in [COSIGN_TYPE, ATOMIC_TYPE] {
        if let Ok(p) = Payload::parse(data, kind) {
            let again = DockerRef::parse(&p.docker_reference.to_string()).expect("printed reference parses");
            assert_eq!(again, p.docker_reference);
        }
    }
    if let Ok(r) = DockerRef::parse(&String::from_utf8_lossy(data)) {
        assert_eq!(DockerRef::parse(&r.to_string()).expect("round trip"), r);
    }
}

/// containers-policy.json parsing (the policy may come from the KBS or a config map)
/// and scope lookup: never a panic; every scope found for a parsed image reference has
/// requirements. Input: POLICY, optionally followed by NUL and an image reference.
pub fn signature_policy(data: &[u8]) {
    use imgsig::policy::ImageIdentity;
    use imgsig::{DockerRef, Policy};
    let (policy, reference) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"127.0.0.1:5000/app/hello:v1"[..]),
    };
    let Ok(p) = Policy::parse(policy, std::path::Path::new("/etc/containers")) else { return };
    if let Ok(r) = DockerRef::parse(&String::from_utf8_lossy(reference)) {
        let scope = p.scope_for(&ImageIdentity::Docker(r));
        assert!(!scope.requirements.is_empty(), "a scope never has an empty requirement list");
    }
}

/// The SNP extended-report certificate table (configfs-tsm auxblob) parser and the
/// VCEK certificate checks of each entry. None may panic.
pub fn snp_cert_table(data: &[u8]) {
    if let Ok(entries) = kbs_client::attester::parse_cert_table(data) {
        for e in entries {
            let _ = kbs_server::verifier::snp::check_vcek_file(&e.data);
            let _ = kbs_server::verifier::snp::vcek_extensions(&e.data);
        }
    }
    let _ = kbs_server::verifier::snp::check_vcek_file(data);
}

/// SNP evidence JSON: the report object form CoCo's attestation-agent sends and the
/// cert_chain entries, then verification with the bundled anchors. None may panic.
pub fn snp_report_object(data: &[u8]) {
    use kbs_server::verifier::snp;
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Some(o) = v.as_object() {
        let _ = snp::report_from_object(o);
    }
    if let Ok(ev) = snp::parse_evidence(&v) {
        let _ = snp::verify_report(&ev.report, &ev.certs, &snp::SnpTrust::default(), 1_751_000_000);
    }
}

/// The genuine TDX v4 sample quote (`testdata/attestation/tdx/`).
const TDX_QUOTE: &[u8] = include_bytes!("../../../testdata/attestation/tdx/tdx_quote");

/// The TDX collateral JSON (QuoteCollateralV3, as read from --collateral, the offline
/// directory or the cache) through validity checks and verification of the genuine
/// sample quote. None may panic.
pub fn tdx_collateral(data: &[u8]) {
    use kbs_server::verifier::{collateral, tdx};
    if let Ok(c) = collateral::parse_collateral_json(data) {
        let _ = tdx::collateral_next_update(&c);
        let _ = tdx::check_collateral_window(&c, 1_751_000_000);
        let _ = tdx::verify_quote(TDX_QUOTE, &c, tdx::INTEL_SGX_ROOT_CA_DER, 1_751_000_000);
    }
}

/// The genuine sample's collateral, parsed once.
fn tdx_sample_collateral() -> &'static dcap_qvl::QuoteCollateralV3 {
    static C: OnceLock<dcap_qvl::QuoteCollateralV3> = OnceLock::new();
    C.get_or_init(|| {
        serde_json::from_slice(include_bytes!("../../../testdata/attestation/tdx/tdx_quote_collateral.json"))
            .expect("sample collateral")
    })
}

/// TDX quote parsing and the whole DCAP verification of arbitrary quote bytes against
/// the genuine sample collateral at its valid instant. None may panic.
pub fn tdx_quote(data: &[u8]) {
    use kbs_server::verifier::tdx;
    let _ = tdx::quote_info(data);
    let _ = tdx::verify_quote(data, tdx_sample_collateral(), tdx::INTEL_SGX_ROOT_CA_DER, 1_751_000_000);
}

/// The sealed `kbs-session-id` cookie a guest (or anyone on the network) sends to
/// `/attest` and `/resource`: any value gives a clear refusal or, for a cookie this key
/// sealed, its ticket back unchanged; never a panic.
pub fn kbs_session_cookie(data: &[u8]) {
    use kbs_server::session::{CookieKey, Ticket};
    static KEY: OnceLock<CookieKey> = OnceLock::new();
    let key = KEY.get_or_init(|| CookieKey::derive(&[9u8; 32]));
    let _ = key.open(&String::from_utf8_lossy(data));
    // A genuine cookie whose ticket carries the fuzzer's text, bounded as `/auth` bounds
    // it (pod and namespace through the metrics label filter, a 32-byte base64 nonce),
    // opens to the same ticket.
    use base64::Engine as _;
    let text = String::from_utf8_lossy(data);
    let t = Ticket {
        tee: kbs_types::Tee::Sample,
        pod: kbs_server::metrics::label(&text),
        namespace: kbs_server::metrics::label(&text.chars().rev().collect::<String>()),
        nonce: base64::engine::general_purpose::STANDARD.encode(&data[..data.len().min(32)]),
        exp: u64::MAX,
    };
    let (id, cookie) = key.seal(&t);
    let (id2, back) = key.open(&cookie).expect("a cookie this key sealed opens");
    assert_eq!((id2, back.pod, back.nonce), (id, t.pod, t.nonce));
}

/// Init-data as a guest would send it: any bytes are a document or a named refusal,
/// and a document's fields are its digest fitted to each report field.
pub fn initdata(data: &[u8]) {
    use kbs_client::initdata::Initdata;
    if let Ok(doc) = Initdata::parse(data) {
        let full = doc.digest();
        assert_eq!(doc.raw(), data, "the digest must be of the bytes as sent");
        assert_eq!(&doc.snp_host_data()[..], &full[..32]);
        let n = full.len().min(48);
        assert_eq!(&doc.tdx_mrconfigid()[..n], &full[..n]);
        assert!(doc.tdx_mrconfigid()[n..].iter().all(|&b| b == 0));
    }
    initdata_broker(data);
}

/// The broker's side of the same bytes (issue 25): the RCAR `init-data` body bound to
/// sample evidence carrying its digest must bind exactly when it is init-data, never
/// against another digest; the policy's dotted-path rules read the untrusted `[data]`
/// entries (`cdh.toml` parsed again as TOML). None may panic.
fn initdata_broker(data: &[u8]) {
    use kbs_server::claims::{Claims, SampleClaims};
    use kbs_server::initdata::bind;
    use kbs_server::policy::{BrokerPolicy, Reason};
    static POLICY: OnceLock<BrokerPolicy> = OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        BrokerPolicy::parse(
            "default_policy: {initdata: {data: {\"cdh.toml\": {\"kbc.url\": [\"https://kbs.example\"], \"image.a.b\": [\"1\"]}, pod: [p]}}}",
        )
        .expect("fixed policy")
    });
    let Ok(body) = std::str::from_utf8(data) else { return };
    let sent = kbs_types::InitData { format: "toml".into(), body: body.to_owned() };
    let digest = kbs_client::initdata::Initdata::parse(data)
        .ok()
        .map(|d| d.digest().iter().map(|b| format!("{b:02x}")).collect::<String>());
    let sample = |d: Option<String>| Claims::Sample(SampleClaims { svn: "1".into(), init_data: d });
    match (bind(&sample(digest.clone()), Some(&sent)), &digest) {
        (Ok(Some(c)), Some(d)) => {
            assert_eq!(&c.digest, d);
            let _ = policy.initdata.check(Some(&c));
            let _ = policy.initdata.check_resource("default/x/1", Some(&c));
        }
        (Err(e), None) => assert_eq!(e.reason, Reason::InitdataInvalid),
        (r, d) => panic!("bind {r:?} for digest {d:?}"),
    }
    if digest.is_some() {
        let e = bind(&sample(Some("00".repeat(48))), Some(&sent)).expect_err("another digest bound");
        assert_eq!(e.reason, Reason::InitdataMismatch);
    }
}

/// containers-registries.conf (from the KBS, a file or cdh.toml): never a panic;
/// for a parsed file and any reference, the locations end with the registry
/// itself (never a mirror) and keep the reference's tag and digest. Input:
/// `CONF\0REFERENCE`.
pub fn registries_conf(data: &[u8]) {
    let (conf, reference) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"docker://example.com/team/app:v1"[..]),
    };
    let Ok(c) = oci::RegistriesConf::parse(conf, "fuzz") else { return };
    let Ok(oci::ImageRef::Registry(r)) = String::from_utf8_lossy(reference).parse::<oci::ImageRef>() else {
        return;
    };
    if let Ok(locs) = c.locations(&r) {
        let last = locs.last().expect("at least the registry itself");
        assert!(!last.mirror, "the registry itself comes last");
        for l in &locs {
            assert_eq!(
                (&l.reference.tag, &l.reference.digest),
                (&r.tag, &r.digest),
                "a location keeps tag and digest"
            );
            assert!(!l.reference.registry.is_empty() && !l.reference.repository.is_empty());
        }
    }
}

/// containers auth.json (from the KBS or a file): never a panic, and an error
/// never quotes the file (it may hold passwords). Input: the file's bytes.
pub fn auth_json(data: &[u8]) {
    match oci::AuthJson::parse(data, "fuzz") {
        Ok(f) => {
            for (reg, repo) in [("docker.io", "library/alpine"), ("127.0.0.1:5000", "a/b/c"), ("", "")] {
                let _ = f.lookup(reg, repo);
            }
        }
        Err(e) => {
            let mut line = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                line.push_str(&format!(": {c}"));
                cause = c.source();
            }
            // A quoted value (a password, a token) would show up as a run of the input's
            // own text. Keys are registry names, which an error names on purpose.
            fn values<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
                match v {
                    serde_json::Value::String(s) => out.push(s),
                    serde_json::Value::Array(a) => a.iter().for_each(|v| values(v, out)),
                    serde_json::Value::Object(o) => o.values().for_each(|v| values(v, out)),
                    _ => {}
                }
            }
            if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) {
                let mut secrets = Vec::new();
                values(&doc, &mut secrets);
                for piece in secrets.into_iter().filter(|p| p.len() >= 12) {
                    assert!(!line.contains(piece), "the error quotes a value of the input: {line}");
                }
            }
        }
    }
}

/// cloak-cdh's SecureMount `block-device` options (kata-agent's request, or any
/// caller of the socket): never a panic; a request that parses names an absolute
/// mount point without `..`, a device, and mkfs options that cannot name a device;
/// a `key` that is no reference is never quoted back. Input: lines; the first is the
/// mount point, `-FLAG` lines are flags, the others `NAME=VALUE` options.
pub fn securemount_options(data: &[u8]) {
    use guest_puller::cdh::storage::options::{BlockDeviceRequest, DeviceRef, OptionError, Target};
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mount_point = lines.next().unwrap_or_default();
    let mut options = std::collections::HashMap::new();
    let mut flags = Vec::new();
    for l in lines {
        if let Some(f) = l.strip_prefix('-') {
            flags.push(f.to_string());
        } else if let Some((k, v)) = l.split_once('=') {
            options.insert(k.to_string(), v.to_string());
        }
    }
    match BlockDeviceRequest::parse(&options, &flags, mount_point) {
        Ok(r) => {
            let no_dotdot = |p: &std::path::Path| {
                p.is_absolute() && !p.components().any(|c| c == std::path::Component::ParentDir)
            };
            assert!(no_dotdot(&r.mount_point) && r.mount_point.parent().is_some(), "{r:?}");
            if let DeviceRef::Path(p) = &r.device {
                assert!(no_dotdot(p), "{r:?}");
            }
            if let Target::FileSystem { mkfs_opts, .. } = &r.target {
                assert!(mkfs_opts.first().is_none_or(|a| a.starts_with('-')), "{r:?}");
            }
        }
        Err(OptionError::Bad { name: "key", value, .. }) => {
            let key = options.get("key").map(String::as_str).unwrap_or_default();
            if !["sealed.", "kbs://", "file://"].iter().any(|p| key.starts_with(p)) {
                assert_eq!(value, "<not shown>", "a key that is no reference was quoted");
            }
        }
        Err(_) => {}
    }
}

/// The CPAK (public half) of the published CCA test tokens, as one JWK.
const CCA_TEST_CPAK: &str = r#"{"kty":"EC","crv":"P-384","x":"IShnxS4rlQiwpCCpBWDzlNLfqiG911FP8akBr-fh94uxHU5m-Kijivp2r2oxxN6M","y":"hM4tr8mWQli1P61xh3T0ViDREbF26DGOEYfbAjWjGNN7pZf-6A4OTHYqEryz6m7U"}"#;

/// An Arm CCA token from a guest (the CBOR collection of two COSE_Sign1) or the
/// evidence JSON around it, and the trust-anchor store format: parsing and the whole
/// verification against the test CPAK give a clear refusal, never a panic; a token that
/// verifies has claims of the sizes the format fixes.
pub fn cca_token(data: &[u8]) {
    use kbs_server::verifier::cca;
    static TRUST: OnceLock<cca::CcaTrust> = OnceLock::new();
    let trust = TRUST.get_or_init(|| cca::CcaTrust::parse(CCA_TEST_CPAK.as_bytes()).expect("test CPAK"));
    let _ = cca::parse_collection(data);
    let _ = cca::parse_sign1(cca::Part::Realm, data);
    if let Ok(c) = cca::verify_token(data, trust) {
        assert_eq!(c.challenge.len(), 128);
        assert_eq!(c.personalization_value.len(), 128);
        assert_eq!(c.instance_id.len(), 66);
        assert_eq!(c.lifecycle_state, cca::lifecycle_state(c.lifecycle));
        let _ = cca::check_challenge(&c, &[0u8; 48]);
    }
    let _ = cca::CcaTrust::parse(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(token) = cca::parse_evidence(&v) {
            assert!(token.len() <= cca::MAX_TOKEN_LEN);
            let _ = cca::verify_token(&token, trust);
        }
    }
}

/// A genuine Azure TPM quote (TPMS_ATTEST, its AK signature and the 24 PCRs) and the
/// HCL report whose AK signed it, for the Azure targets to vary one part at a time.
fn azure_genuine() -> &'static (serde_json::Value, Vec<u8>) {
    static G: OnceLock<(serde_json::Value, Vec<u8>)> = OnceLock::new();
    G.get_or_init(|| {
        let quote =
            serde_json::from_str(include_str!("../../../testdata/attestation/azure/snp-tpm-quote-v1.json"))
                .expect("genuine TPM quote JSON");
        (quote, include_bytes!("../../../testdata/attestation/azure/snp-hcl-report.bin").to_vec())
    })
}

/// Azure's HCL report (header, hardware report, IGVM data, variable data JSON with
/// the AK): parsing gives slices inside the input, and the whole az-snp-vtpm and
/// az-tdx-vtpm verification over it (with a genuine TPM quote) refuses clearly,
/// never panics.
pub fn azure_hcl_report(data: &[u8]) {
    use kbs_server::verifier::azure;
    if let Ok(r) = azure::parse_hcl_report(data) {
        assert!(r.hw_report.len() <= data.len() && r.var_data.len() <= data.len());
        let h = r.var_data_hash();
        assert!([32, 48, 64].contains(&h.len()));
        let _ = azure::check_bound_by(&r, &[0u8; 64], "fuzz");
        let _ = azure::var_data(&r);
    }
    let (quote, _) = azure_genuine();
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
    for kind in [azure::AzureKind::Snp, azure::AzureKind::Tdx] {
        let ev = serde_json::json!({"version": 2, "tpm_quote": quote, "hcl_report": b64(data),
                                    "td_quote": b64(b"not a quote")});
        if let Ok(ev) = azure::parse_evidence(&ev, kind) {
            let _ = azure::verify_snp(&ev, &[], &Default::default(), 1_767_225_600);
            let _ = azure::verify_tdx_vtpm(&ev);
        }
    }
}

/// The TPM quote of Azure evidence: a TPMS_ATTEST parses to bounded fields or is
/// refused; the evidence JSON of every version parses or is refused; and a quote that
/// parses is verified (AK signature, PCR digest) against the genuine HCL report.
pub fn azure_tpm_quote(data: &[u8]) {
    use kbs_server::verifier::azure;
    if let Ok(q) = azure::parse_quote_message(data) {
        assert!(q.extra_data.len() <= 64 && q.pcr_digest.len() <= 64 && q.qualified_signer.len() <= 68);
        assert!(q.selection.iter().all(|(_, pcrs)| pcrs.iter().all(|i| *i < 32)));
    }
    let (quote, hcl) = azure_genuine();
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
    let mut q = quote.clone();
    q["message"] = serde_json::Value::String(data.iter().map(|b| format!("{b:02x}")).collect());
    let ev = serde_json::json!({"version": 1, "tpm_quote": q, "hcl_report": b64(hcl)});
    if let Ok(ev) = azure::parse_evidence(&ev, azure::AzureKind::Snp) {
        let _ = azure::verify_snp(&ev, &[], &Default::default(), 1_767_225_600);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        for kind in [azure::AzureKind::Snp, azure::AzureKind::Tdx] {
            if let Ok(ev) = azure::parse_evidence(&v, kind) {
                assert!(ev.hcl_report.len() <= azure::MAX_HCL_REPORT);
                assert!(ev.tpm_quote.message.len() <= azure::MAX_TPM_MESSAGE);
                let _ = azure::verify_snp(&ev, &[], &Default::default(), 1_767_225_600);
                let _ = azure::verify_tdx_vtpm(&ev);
            }
        }
    }
}

/// TPM 2.0 responses as the guest's Azure vTPM attester reads them from `/dev/tpmrm0`
/// (first byte: which command's parser; the rest: the response, header included),
/// and the HCL report layout it reads out of NV: a clear error, never a panic.
pub fn tpm_response(data: &[u8]) {
    kbs_client::attester::tpm::fuzz_responses(data);
    let _ = kbs_client::attester::azure::parse_hcl_report(data);
    // The IMDS answers (VCEK, TD quote) come from the host's side too.
    let _ = kbs_client::attester::azure::vcek_from_answer(data);
    if let Ok(q) = kbs_client::attester::azure::td_quote_from_answer(data) {
        assert!(!q.is_empty() && q.len() <= data.len());
    }
}
