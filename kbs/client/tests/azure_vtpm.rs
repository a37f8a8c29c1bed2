//! The Azure vTPM attesters against a real TPM: swtpm, provisioned with tpm2-tools
//! the way an Azure CVM's paravisor provisions its vTPM (an RSA AK persisted at
//! 0x81000003, a synthetic HCL report in NV 0x01400001 carrying that AK as
//! `HCLAkPub`; the harness is [`test_support::swtpm`]), and a loopback stand-in for
//! Azure IMDS. Nothing leaves 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD};
use kbs_client::attester::tpm::TpmTarget;
use kbs_client::attester::Tee;
use kbs_client::{make_attester, AttesterError, AttesterKind, AttesterOptions};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use test_support::free_port;
use test_support::swtpm::{self, hcl_var_data, Swtpm, HCL_INDEX, USER_DATA_INDEX};

fn target(tpm: &Swtpm) -> TpmTarget {
    TpmTarget::Tcp(tpm.addr())
}

/// A synthetic HCL report ([`test_support::swtpm::hcl_report`]) whose hardware report
/// is a byte pattern, with report_data = SHA-256(var data) for SNP.
fn hcl_report(report_type: u32, ak: &PKey<Public>, user_data: &[u8; 64]) -> Vec<u8> {
    let var = hcl_var_data(ak, user_data);
    let mut hw = [0u8; 1184];
    let pattern_len = if report_type == 4 { 1024 } else { 1184 };
    for (i, b) in hw[..pattern_len].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    if report_type == 2 {
        hw[0x50..0x70].copy_from_slice(&Sha256::digest(&var));
    }
    swtpm::hcl_report(report_type, &hw, &var)
}

/// One HTTP request the IMDS stand-in saw.
#[derive(Debug)]
struct Seen {
    request_line: String,
    metadata_header: bool,
    body: Vec<u8>,
}

/// A loopback IMDS stand-in answering every request with `status` and `body`.
fn fake_imds(status: u16, body: Value) -> (String, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let seen = read_request(&mut conn);
            let body = body.to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

fn read_request(conn: &mut TcpStream) -> Seen {
    let mut r = BufReader::new(conn);
    let mut request_line = String::new();
    r.read_line(&mut request_line).unwrap();
    let (mut len, mut metadata_header) = (0usize, false);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        metadata_header |= l == "metadata: true";
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    Seen { request_line: request_line.trim_end().to_owned(), metadata_header, body }
}

/// An address where nothing listens.
fn closed_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

fn opts(tpm: &Swtpm, imds: &str) -> AttesterOptions {
    AttesterOptions {
        tpm_device: target(tpm),
        azure_imds_url: imds.to_owned(),
        azure_report_settle: Duration::from_millis(300),
        tsm_root: tpm.dir().join("no-tsm"),
        sev_guest_device: tpm.dir().join("no-sev-guest"),
        ..Default::default()
    }
}

fn report_data(seed: u8) -> [u8; 64] {
    let mut rd = [0u8; 64];
    for (i, b) in rd[..48].iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8);
    }
    rd
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// Checks the TPM quote the way the broker does: signature by the AK, a quote
/// structure, the nonce, and the PCR digest over the PCRs sent.
fn check_tpm_quote(evidence: &Value, ak: &PKey<Public>, rd: &[u8; 64]) {
    let q = &evidence["tpm_quote"];
    let message = unhex(&q["message"]);
    let signature = unhex(&q["signature"]);
    let mut v = Verifier::new(MessageDigest::sha256(), ak).unwrap();
    v.update(&message).unwrap();
    assert!(v.verify(&signature).unwrap(), "quote signature does not verify with the AK");

    let mut r = Cursor(&message);
    assert_eq!(r.u32(), 0xff54_4347, "TPM_GENERATED_VALUE");
    assert_eq!(r.u16(), 0x8018, "TPM_ST_ATTEST_QUOTE");
    let _signer = r.tpm2b();
    assert_eq!(r.tpm2b(), &rd[..48], "extraData is the 48-byte runtime-data hash");
    r.take(17 + 8); // clockInfo, firmwareVersion
    assert_eq!(r.u32(), 1, "one PCR selection");
    assert_eq!(r.u16(), 0x000B, "SHA-256 bank");
    let n = r.take(1)[0] as usize;
    assert_eq!(r.take(n), [0xff, 0xff, 0xff], "PCR 0..23");
    let digest = r.tpm2b().to_vec();
    assert!(r.0.is_empty());

    let pcrs: Vec<Vec<u8>> = q["pcrs"].as_array().unwrap().iter().map(unhex).collect();
    assert_eq!(pcrs.len(), 24);
    assert!(pcrs.iter().all(|p| p.len() == 32));
    assert_eq!(pcrs[8], Sha256::digest([[0u8; 32], [0x11; 32]].concat()).to_vec(), "PCR 8 as extended");
    assert_eq!(digest, Sha256::digest(pcrs.concat()).to_vec(), "pcrDigest over the PCRs sent");
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn tpm2b(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.take(n)
    }
}

/// The evidence's base64url: padded, as attestation-agent writes it.
fn b64url(v: &Value) -> Vec<u8> {
    base64::prelude::BASE64_URL_SAFE.decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn snp_evidence_from_swtpm_verifies_and_survives_missing_imds() {
    let Some(tpm) = Swtpm::start() else { return };
    let ak = tpm.provision_ak();
    let rd = report_data(7);
    let hcl = hcl_report(2, &ak, &rd);
    tpm.define_nv(HCL_INDEX, &hcl);
    tpm.define_nv(USER_DATA_INDEX, &[0; 64]);
    tpm.extend_pcrs();

    let vcek_der = self_signed_der();
    let vcek_pem =
        String::from_utf8(openssl::x509::X509::from_der(&vcek_der).unwrap().to_pem().unwrap()).unwrap();
    let (imds, seen) = fake_imds(200, json!({"vcekCert": vcek_pem, "certificateChain": ""}));
    let o = opts(&tpm, &imds);
    let rt = runtime();

    let a = make_attester(AttesterKind::Auto, &o).unwrap();
    assert_eq!(a.tee(), Tee::AzSnpVtpm, "auto picks the Azure vTPM");
    assert_eq!(make_attester(AttesterKind::AzSnpVtpm, &o).unwrap().tee(), Tee::AzSnpVtpm);
    let e = make_attester(AttesterKind::AzTdxVtpm, &o).err().unwrap();
    assert!(e.to_string().contains("az-tdx-vtpm requested") && e.to_string().contains("other TEE"), "{e}");

    let ev = rt.block_on(a.evidence(&rd)).unwrap();
    let mut keys: Vec<&str> = ev.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["hcl_report", "tpm_quote", "vcek", "version"]);
    assert_eq!(ev["version"], 2);
    assert_eq!(b64url(&ev["hcl_report"]), hcl, "hcl_report is the NV content as read");
    let exact = base64::prelude::BASE64_URL_SAFE.encode(&hcl);
    assert_eq!(ev["hcl_report"].as_str().unwrap(), exact, "padded base64url, as attestation-agent writes it");
    assert_eq!(b64url(&ev["vcek"]), vcek_der, "the VCEK as DER");
    check_tpm_quote(&ev, &ak, &rd);
    assert_eq!(tpm.read_nv(USER_DATA_INDEX), rd, "all 64 bytes of report data written");
    let req = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(req.request_line, "GET /metadata/THIM/amd/certification HTTP/1.1");
    assert!(req.metadata_header, "IMDS needs `Metadata: true`");

    // IMDS unreachable: the evidence goes without the VCEK (the broker fetches it).
    // Another nonce, so the static report's user-data is stale: sent after the settle time.
    let rd2 = report_data(99);
    let a = make_attester(AttesterKind::AzSnpVtpm, &opts(&tpm, &closed_url())).unwrap();
    let ev = rt.block_on(a.evidence(&rd2)).unwrap();
    assert!(ev.get("vcek").is_none(), "{ev}");
    check_tpm_quote(&ev, &ak, &rd2);
    assert_eq!(tpm.read_nv(USER_DATA_INDEX), rd2);

    // IMDS answering an error: the same.
    let (imds, _seen) = fake_imds(500, json!({}));
    let ev = rt
        .block_on(make_attester(AttesterKind::AzSnpVtpm, &opts(&tpm, &imds)).unwrap().evidence(&rd))
        .unwrap();
    assert!(ev.get("vcek").is_none(), "{ev}");
}

/// A stand-in for the VCEK: the attester only converts it from PEM to DER.
fn self_signed_der() -> Vec<u8> {
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    let group = EcGroup::from_curve_name(Nid::SECP384R1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "SEV-VCEK stand-in").unwrap();
    let name = name.build();
    let mut b = openssl::x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.sign(&key, MessageDigest::sha384()).unwrap();
    b.build().to_der().unwrap()
}

#[test]
fn tdx_evidence_carries_the_td_quote_and_fails_without_imds() {
    let Some(tpm) = Swtpm::start() else { return };
    let ak = tpm.provision_ak();
    let rd = report_data(1);
    let hcl = hcl_report(4, &ak, &rd);
    tpm.define_nv(HCL_INDEX, &hcl);
    // No user-data index: the attester defines it (as az-cvm-vtpm does).
    tpm.extend_pcrs();

    let td_quote = b"a TD quote from the Azure quoting service".to_vec();
    let (imds, seen) = fake_imds(200, json!({"quote": BASE64_URL_SAFE_NO_PAD.encode(&td_quote)}));
    let o = opts(&tpm, &imds);
    let rt = runtime();
    let a = make_attester(AttesterKind::Auto, &o).unwrap();
    assert_eq!(a.tee(), Tee::AzTdxVtpm, "auto picks az-tdx-vtpm for report type 4");
    assert!(make_attester(AttesterKind::AzSnpVtpm, &o).is_err());

    let ev = rt.block_on(a.evidence(&rd)).unwrap();
    let mut keys: Vec<&str> = ev.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["hcl_report", "td_quote", "tpm_quote", "version"]);
    assert_eq!(b64url(&ev["td_quote"]), td_quote);
    assert_eq!(b64url(&ev["hcl_report"]), hcl);
    check_tpm_quote(&ev, &ak, &rd);
    assert_eq!(tpm.read_nv(USER_DATA_INDEX), rd);
    let req = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(req.request_line, "POST /acc/tdquote HTTP/1.1");
    assert!(req.metadata_header);
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    let sent = base64::prelude::BASE64_STANDARD.decode(body["report"].as_str().unwrap()).unwrap();
    assert_eq!(sent, hcl[32..32 + 1024], "the TDREPORT from the HCL report, as base64 first");

    // IMDS refusing both encodings of the report: an error naming the URL and both answers.
    let (imds, seen) = fake_imds(400, json!({"error": "bad report"}));
    let e = rt
        .block_on(make_attester(AttesterKind::AzTdxVtpm, &opts(&tpm, &imds)).unwrap().evidence(&rd))
        .unwrap_err();
    assert!(e.to_string().contains("HTTP 400 Bad Request, then 400 Bad Request"), "{e}");
    let _first = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    let second: Value =
        serde_json::from_slice(&seen.recv_timeout(Duration::from_secs(5)).unwrap().body).unwrap();
    let sent = BASE64_URL_SAFE_NO_PAD.decode(second["report"].as_str().unwrap()).unwrap();
    assert_eq!(sent, hcl[32..32 + 1024], "then as base64url");

    // IMDS unreachable: no TD quote, no evidence, and the error names the URL.
    let closed = closed_url();
    let a = make_attester(AttesterKind::AzTdxVtpm, &opts(&tpm, &closed)).unwrap();
    let e = rt.block_on(a.evidence(&rd)).unwrap_err();
    assert!(matches!(e, AttesterError::Imds { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("{closed}/acc/tdquote")), "{e}");
}

#[test]
fn missing_or_foreign_hcl_report_is_a_clear_error() {
    let Some(tpm) = Swtpm::start() else { return };
    let o = opts(&tpm, &closed_url());
    let e = make_attester(AttesterKind::Auto, &o).err().unwrap();
    assert!(e.to_string().starts_with("no TEE found"), "{e}");
    assert!(e.to_string().contains("no HCL report (NV index 0x01400001 is not defined)"), "{e}");
    let e = make_attester(AttesterKind::AzSnpVtpm, &o).err().unwrap();
    assert!(e.to_string().contains("az-snp-vtpm requested, but vTPM tcp:127.0.0.1"), "{e}");

    let ak = tpm.provision_ak();
    let mut hcl = hcl_report(2, &ak, &[0; 64]);
    hcl[..4].copy_from_slice(b"XXXX");
    tpm.define_nv(HCL_INDEX, &hcl);
    let e = make_attester(AttesterKind::Auto, &o).err().unwrap();
    assert!(e.to_string().contains("not \"HCLA\""), "{e}");

    // Nothing listening where the TPM should be: fails, fast.
    let mut gone = o.clone();
    gone.tpm_device = TpmTarget::Tcp(SocketAddr::from(([127, 0, 0, 1], free_port())));
    let e = make_attester(AttesterKind::AzTdxVtpm, &gone).err().unwrap();
    assert!(e.to_string().contains("connect"), "{e}");
    // A device path that does not exist.
    gone.tpm_device = TpmTarget::Device(Path::new("/nonexistent/tpmrm0").to_path_buf());
    let e = make_attester(AttesterKind::AzSnpVtpm, &gone).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/tpmrm0 does not exist"), "{e}");
}

#[test]
fn initdata_is_extended_into_pcr8_once_and_other_initdata_is_refused() {
    let Some(tpm) = Swtpm::start() else { return };
    // Bound at the first evidence (or by BindInitData, below), before the quote.
    let ak = tpm.provision_ak();
    let rd = report_data(3);
    tpm.define_nv(HCL_INDEX, &hcl_report(2, &ak, &rd));
    let rt = runtime();
    let digest = Sha256::digest(b"algorithm = \"sha256\"\nversion = \"0.1.0\"\n").to_vec();
    let expected = Sha256::digest([[0u8; 32].as_slice(), &digest].concat()).to_vec();
    let mut o = opts(&tpm, &closed_url());
    o.initdata_digest = Some(digest.clone());

    let a = make_attester(AttesterKind::AzSnpVtpm, &o).unwrap();
    for _ in 0..2 {
        // The second round finds PCR 8 bound already and leaves it alone.
        let ev = rt.block_on(a.evidence(&rd)).unwrap();
        assert_eq!(
            unhex(&ev["tpm_quote"]["pcrs"][8]),
            expected,
            "PCR 8 = SHA-256(zeros || init-data digest)"
        );
    }

    // attestation-agent's BindInitData (cloak-cdh's ttRPC): the same binding, idempotent.
    rt.block_on(a.bind_init_data(&digest).unwrap()).unwrap();
    let e = rt.block_on(a.bind_init_data(&Sha256::digest(b"other")).unwrap()).unwrap_err();
    assert!(e.to_string().contains("PCR 8 is"), "{e}");

    // Other init-data: PCR 8 cannot be made to match, and nothing is sent.
    let mut other = o.clone();
    other.initdata_digest = Some(Sha256::digest(b"other").to_vec());
    let e = rt.block_on(make_attester(AttesterKind::AzSnpVtpm, &other).unwrap().evidence(&rd)).unwrap_err();
    assert!(e.to_string().contains("PCR 8 is") && e.to_string().contains("other init-data"), "{e}");

    // A SHA-384 init-data digest cannot be bound in a SHA-256 PCR.
    other.initdata_digest = Some(vec![7; 48]);
    let e = rt.block_on(make_attester(AttesterKind::AzSnpVtpm, &other).unwrap().evidence(&rd)).unwrap_err();
    assert!(e.to_string().contains("use algorithm = \"sha256\""), "{e}");
}
