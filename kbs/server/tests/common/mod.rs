//! Test helpers: an in-process broker on a free loopback port, a small RCAR client
//! written against the protocol notes (independent of the `kbs` crate), and builders
//! for sample, SNP and TDX evidence signed by test keys made here.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use openssl::bn::{BigNum, BigNumContext};
use openssl::derive::Deriver;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use serde_json::{json, Value};
use sha2::{Digest, Sha384};

pub struct Broker {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub policy_path: PathBuf,
    pub admin_key: PKey<Private>,
    pub broker: std::sync::Arc<kbs_server::Broker>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const SAMPLE_POLICY: &str =
    "default_policy: {required_attestation: {sample: {allow: true}}, released_resources: [\"default/*\"]}\n";

pub async fn start(policy: &str, tweak: impl FnOnce(&mut kbs_server::ServeConfig, &Path)) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let admin_key = PKey::generate_ed25519().unwrap();
    let pubp = dir.path().join("admin.pub.pem");
    std::fs::write(&pubp, admin_key.public_key_to_pem().unwrap()).unwrap();
    let mut cfg = kbs_server::ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        policy: Some(policy_path.clone()),
        resources: dir.path().join("resources"),
        admin_public_key: Some(pubp),
        policy_poll_ms: 100,
        ..Default::default()
    };
    tweak(&mut cfg, dir.path());
    let (addr, broker, task) = kbs_server::server::spawn(cfg).await.unwrap();
    Broker { url: format!("http://{addr}"), dir, policy_path, admin_key, broker, task }
}

pub fn admin_jwt(key: &PKey<Private>, claims: Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut signer = openssl::sign::Signer::new_without_digest(key).unwrap();
    let sig = signer.sign_oneshot_to_vec(format!("{h}.{p}").as_bytes()).unwrap();
    format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig))
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub fn good_admin_claims() -> Value {
    json!({"iss":"test","aud":["kbs"],"role":"admin","iat":now(),"exp":now()+600})
}

impl Broker {
    pub async fn put(&self, path: &str, data: &[u8]) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/kbs/v0/resource/{path}", self.url))
            .bearer_auth(admin_jwt(&self.admin_key, good_admin_claims()))
            .body(data.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url)).await.unwrap().text().await.unwrap()
    }
}

/// A TEE key pair on P-256 and its JWK.
pub struct TeeKey {
    pub key: EcKey<Private>,
    pub jwk: Value,
}

impl TeeKey {
    pub fn new() -> Self {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        key.public_key().affine_coordinates(&group, &mut x, &mut y, &mut ctx).unwrap();
        let jwk = json!({"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW",
            "x": URL_SAFE_NO_PAD.encode(x.to_vec_padded(32).unwrap()),
            "y": URL_SAFE_NO_PAD.encode(y.to_vec_padded(32).unwrap())});
        Self { key, jwk }
    }

    /// Decrypts a JWE answer as Trustee's guest does.
    pub fn decrypt(&self, resp: &Value) -> Vec<u8> {
        let prot_b64 = resp["protected"].as_str().unwrap();
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(prot_b64).unwrap()).unwrap();
        assert_eq!(header["alg"], "ECDH-ES+A256KW");
        assert_eq!(header["enc"], "A256GCM");
        let epk = &header["epk"];
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let bx = BigNum::from_slice(&URL_SAFE_NO_PAD.decode(epk["x"].as_str().unwrap()).unwrap()).unwrap();
        let by = BigNum::from_slice(&URL_SAFE_NO_PAD.decode(epk["y"].as_str().unwrap()).unwrap()).unwrap();
        let peer = EcKey::from_public_key_affine_coordinates(&group, &bx, &by).unwrap();
        let mine = PKey::from_ec_key(self.key.clone()).unwrap();
        let peer_pk = PKey::from_ec_key(peer).unwrap();
        let mut d = Deriver::new(&mine).unwrap();
        d.set_peer(&peer_pk).unwrap();
        let z = d.derive_to_vec().unwrap();
        let mut h = sha2::Sha256::new();
        h.update(1u32.to_be_bytes());
        h.update(&z);
        h.update(14u32.to_be_bytes());
        h.update(b"ECDH-ES+A256KW");
        h.update(0u32.to_be_bytes());
        h.update(0u32.to_be_bytes());
        h.update(256u32.to_be_bytes());
        let kek = h.finalize();
        let aes = openssl::aes::AesKey::new_decrypt(&kek).unwrap();
        let mut cek = [0u8; 32];
        let ek = URL_SAFE_NO_PAD.decode(resp["encrypted_key"].as_str().unwrap()).unwrap();
        openssl::aes::unwrap_key(&aes, None, &mut cek, &ek).unwrap();
        // AAD: base64url of the header re-serialised compactly with sorted keys (alg, enc first).
        let aad = URL_SAFE_NO_PAD.encode(
            serde_json::to_string(&json!({
            "alg": header["alg"], "enc": header["enc"], "epk": header["epk"]}))
            .unwrap(),
        );
        let b = |k: &str| URL_SAFE_NO_PAD.decode(resp[k].as_str().unwrap()).unwrap();
        openssl::symm::decrypt_aead(
            openssl::symm::Cipher::aes_256_gcm(),
            &cek,
            Some(&b("iv")),
            aad.as_bytes(),
            &b("ciphertext"),
            &b("tag"),
        )
        .unwrap()
    }
}

/// SHA-384 of the JCS runtime data, computed independently of the broker.
pub fn runtime_hash(nonce: &str, jwk: &Value) -> [u8; 48] {
    let v = json!({"tee-pubkey": jwk, "nonce": nonce, "additional-evidence": ""});
    Sha384::digest(serde_json_canonicalizer::to_vec(&v).unwrap()).into()
}

pub struct Rcar {
    pub http: reqwest::Client,
    pub url: String,
    pub cookie: String,
    pub nonce: String,
    pub tee_key: TeeKey,
}

pub async fn auth(url: &str, tee: &str, extra: Value) -> Rcar {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{url}/kbs/v0/auth"))
        .json(&json!({"version":"0.4.0","tee":tee,"extra-params":extra}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("kbs-session-id="));
    let v: Value = r.json().await.unwrap();
    Rcar { http, url: url.into(), cookie, nonce: v["nonce"].as_str().unwrap().into(), tee_key: TeeKey::new() }
}

impl Rcar {
    pub fn report_data(&self) -> [u8; 48] {
        runtime_hash(&self.nonce, &self.tee_key.jwk)
    }

    pub async fn attest(&self, evidence: Value) -> (u16, Value) {
        self.attest_with(evidence, None).await
    }

    /// `/attest` with `init-data` `{"format":"toml","body":initdata}` when given.
    pub async fn attest_with(&self, evidence: Value, initdata: Option<&str>) -> (u16, Value) {
        let mut body = json!({
            "runtime-data": {"nonce": self.nonce, "tee-pubkey": self.tee_key.jwk},
            "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""}
        });
        if let Some(doc) = initdata {
            body["init-data"] = json!({"format": "toml", "body": doc});
        }
        let r = self
            .http
            .post(format!("{}/kbs/v0/attest", self.url))
            .header("cookie", &self.cookie)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, token: Option<&str>, path: &str) -> (u16, Value) {
        let mut req = self.http.get(format!("{}/kbs/v0/resource/{path}", self.url));
        req = match token {
            Some(t) => req.bearer_auth(t),
            None => req.header("cookie", &self.cookie),
        };
        let r = req.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

pub fn sample_evidence(rd: &[u8]) -> Value {
    json!({"svn":"1","report_data": STANDARD.encode(rd)})
}

/// Sample evidence whose "host" launched the guest with init-data of digest `digest`.
pub fn sample_evidence_bound(rd: &[u8], digest: &[u8]) -> Value {
    json!({"svn":"1","report_data": STANDARD.encode(rd), "init_data": STANDARD.encode(digest)})
}

/// Init-data naming the pod and namespace (the `[data]` entries the broker labels with).
pub fn initdata_for(pod: &str, namespace: &str) -> (String, Vec<u8>) {
    let doc = format!(
        "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\npod = \"{pod}\"\nnamespace = \"{namespace}\"\n"
    );
    let digest = kbs_client::initdata::Initdata::parse(doc.as_bytes()).unwrap().digest();
    (doc, digest)
}

// ---- SNP ---------------------------------------------------------------------------

pub struct SnpChain {
    pub dir: PathBuf,
    pub ark: PathBuf,
    pub ask: PathBuf,
    pub vcek_pem: Vec<u8>,
    pub vcek_key: EcKey<Private>,
}

fn sh(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// ARK (self-signed) -> ASK -> VCEK, RSA-PSS signatures like AMD's, made with the
/// openssl CLI. RSA 2048 instead of AMD's 4096 to keep the test quick.
pub fn snp_chain(dir: &Path) -> SnpChain {
    let pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:48", "-sha384"];
    sh(dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "ark.key"]);
    sh(dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "ask.key"]);
    sh(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", "vcek.key"]);
    let mut a = vec![
        "req",
        "-x509",
        "-new",
        "-key",
        "ark.key",
        "-subj",
        "/CN=ARK-Test",
        "-days",
        "30",
        "-out",
        "ark.pem",
    ];
    a.extend(pss);
    sh(dir, &a);
    sh(dir, &["req", "-new", "-key", "ask.key", "-subj", "/CN=SEV-Test", "-out", "ask.csr"]);
    let mut a = vec![
        "x509",
        "-req",
        "-in",
        "ask.csr",
        "-CA",
        "ark.pem",
        "-CAkey",
        "ark.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-out",
        "ask.pem",
    ];
    a.extend(pss);
    sh(dir, &a);
    sh(dir, &["req", "-new", "-key", "vcek.key", "-subj", "/CN=SEV-VCEK", "-out", "vcek.csr"]);
    issue_vcek(dir, &SnpFields::default().tcb, "vcek.pem");
    let vcek_key = EcKey::private_key_from_pem(&std::fs::read(dir.join("vcek.key")).unwrap()).unwrap();
    SnpChain {
        dir: dir.into(),
        ark: dir.join("ark.pem"),
        ask: dir.join("ask.pem"),
        vcek_pem: std::fs::read(dir.join("vcek.pem")).unwrap(),
        vcek_key,
    }
}

/// Issues a VCEK for `vcek.key` from the test ASK, with AMD's extensions: the TCB SPLs
/// of `tcb` (Milan layout) and a hwID of 64 zero bytes (the test reports' chip_id).
pub fn issue_vcek(dir: &Path, tcb: &[u8; 8], out: &str) -> Vec<u8> {
    let int = |v: u8| if v < 0x80 { format!("DER:02:01:{v:02x}") } else { format!("DER:02:02:00:{v:02x}") };
    let hwid = format!("DER:04:40:{}", vec!["00"; 64].join(":"));
    let ext = format!(
        "[v3]\n1.3.6.1.4.1.3704.1.2 = DER:16:05:4d:69:6c:61:6e\n1.3.6.1.4.1.3704.1.3.1 = {}\n1.3.6.1.4.1.3704.1.3.2 = {}\n1.3.6.1.4.1.3704.1.3.3 = {}\n1.3.6.1.4.1.3704.1.3.8 = {}\n1.3.6.1.4.1.3704.1.4 = {hwid}\n",
        int(tcb[0]),
        int(tcb[1]),
        int(tcb[6]),
        int(tcb[7])
    );
    let extfile = format!("{out}.ext");
    std::fs::write(dir.join(&extfile), ext).unwrap();
    sh(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "vcek.csr",
            "-CA",
            "ask.pem",
            "-CAkey",
            "ask.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            out,
            "-extfile",
            &extfile,
            "-extensions",
            "v3",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:48",
            "-sha384",
        ],
    );
    std::fs::read(dir.join(out)).unwrap()
}

#[derive(Clone)]
pub struct SnpFields {
    pub version: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    pub measurement: [u8; 48],
    pub tcb: [u8; 8],
}

impl Default for SnpFields {
    fn default() -> Self {
        Self {
            version: 3,
            policy: 0x30000, // SMT allowed, reserved bit 17; debug (bit 19) off
            family_id: [0x11; 16],
            image_id: [0x22; 16],
            vmpl: 0,
            measurement: [0xAB; 48],
            tcb: [0x06, 0x02, 0, 0, 0, 0, 0x14, 0x73],
        }
    }
}

/// A 1184-byte report with `report_data`, signed by the VCEK.
pub fn snp_report(f: &SnpFields, report_data: &[u8], key: &EcKey<Private>) -> Vec<u8> {
    let mut r = vec![0u8; 0x4A0];
    r[0..4].copy_from_slice(&f.version.to_le_bytes());
    r[8..16].copy_from_slice(&f.policy.to_le_bytes());
    r[0x10..0x20].copy_from_slice(&f.family_id);
    r[0x20..0x30].copy_from_slice(&f.image_id);
    r[0x30..0x34].copy_from_slice(&f.vmpl.to_le_bytes());
    r[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
    r[0x50..0x50 + report_data.len()].copy_from_slice(report_data);
    r[0x90..0xC0].copy_from_slice(&f.measurement);
    r[0x180..0x188].copy_from_slice(&f.tcb);
    let digest = openssl::sha::sha384(&r[..0x2A0]);
    let sig = openssl::ecdsa::EcdsaSig::sign(&digest, key).unwrap();
    let mut rr = sig.r().to_vec_padded(72).unwrap();
    let mut ss = sig.s().to_vec_padded(72).unwrap();
    rr.reverse();
    ss.reverse();
    r[0x2A0..0x2A0 + 72].copy_from_slice(&rr);
    r[0x2E8..0x2E8 + 72].copy_from_slice(&ss);
    r
}

pub fn snp_evidence(report: &[u8], vcek_pem: &[u8]) -> Value {
    json!({"attestation_report": STANDARD.encode(report),
           "cert_chain": [{"cert_type": "vcek", "data": STANDARD.encode(vcek_pem)}]})
}

// ---- TDX ---------------------------------------------------------------------------

pub struct TdxFields {
    pub mr_td: [u8; 48],
    pub tcb_svn: [u8; 16],
    pub debug: bool,
}

impl Default for TdxFields {
    fn default() -> Self {
        Self { mr_td: [0xCD; 48], tcb_svn: [0x03; 16], debug: false }
    }
}

/// A v4 quote with a dummy 64-byte signature section (signatures are not verified yet).
pub fn tdx_quote(f: &TdxFields, report_data: &[u8]) -> Vec<u8> {
    let mut q = vec![0u8; 48 + 584 + 4 + 64];
    q[0..2].copy_from_slice(&4u16.to_le_bytes());
    q[2..4].copy_from_slice(&2u16.to_le_bytes());
    q[4..8].copy_from_slice(&0x81u32.to_le_bytes());
    let b = 48;
    q[b..b + 16].copy_from_slice(&f.tcb_svn);
    if f.debug {
        q[b + 120] = 1;
    }
    q[b + 136..b + 184].copy_from_slice(&f.mr_td);
    q[b + 520..b + 520 + report_data.len()].copy_from_slice(report_data);
    q[b + 584..b + 588].copy_from_slice(&64u32.to_le_bytes());
    q
}

pub fn tdx_evidence(quote: &[u8]) -> Value {
    json!({"quote": STANDARD.encode(quote), "cc_eventlog": null})
}

/// The value of a metric line that contains every fragment in `parts`, or 0.
pub fn metric(text: &str, name: &str, parts: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// `cloak encrypt` of the golden three-layer image for `kek_uri`, registered in `b`,
/// into the layout `dest` (tag `enc`).
pub fn encrypt_for(b: &Broker, kek_uri: &str, dest: &Path) {
    let admin = b.dir.path().join("admin.pem");
    std::fs::write(&admin, b.admin_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let plain = test_support::workspace_root().join("testdata/golden/three-layers/plain-oci");
    let ran = test_support::run_bounded(
        Command::new(test_support::bin("cloak"))
            .args(["encrypt", "--quiet", "--recipient", kek_uri, "--kbs-url", &b.url, "--kbs-admin-key"])
            .arg(&admin)
            .arg(format!("oci:{}:v1", plain.display()))
            .arg(format!("oci:{}:enc", dest.display())),
        test_support::CMD_LIMIT,
    )
    .unwrap();
    assert!(ran.ok(), "cloak encrypt: {}", ran.describe());
}
