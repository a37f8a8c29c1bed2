//! The Azure vTPM attester (`az-snp-vtpm`) on a REAL TPM, end to end: cloak's guest
//! attester talks TPM 2.0 commands to swtpm and attests to cloak-kbs, which releases a
//! key; once through the `kbs_client` library and once through the `cloak-pull` binary
//! pulling an image encrypted for a `kbs:///` KEK.
//!
//! On Azure, the paravisor (the HCL) owns the vTPM's HCL report (NV 0x01400001): when
//! the guest writes its 64 bytes of user data to NV 0x01400002, the paravisor asks the
//! hardware for a fresh SNP report whose report_data is the hash of the HCL's variable
//! data, and that variable data (the AK as `HCLAkPub`, the VM configuration) now carries
//! the user data as `user-data`. swtpm has no paravisor, so [`Paravisor`] plays it at
//! the TPM command level: a loopback proxy in front of swtpm that, after it relays a
//! successful TPM2_NV_Write of the user data, writes such a report (an SNP report
//! signed by this test's VCEK chain) into NV 0x01400001 itself. The broker verifies the
//! whole chain: VCEK to the test ARK, report_data = SHA-256(var data), the quote signed
//! by `HCLAkPub` over this session's nonce, the PCR digest, and `user-data`.
//!
//! The guest cannot reach IMDS (a closed loopback port), so its evidence carries no
//! VCEK and the broker uses its configured one. swtpm deviates from Azure in the HCL
//! report's size: 2048 bytes (swtpm's largest NV index), not 2600.
//!
//! A missing swtpm or tpm2-tools skips with the reason printed, unless
//! `CLOAK_REQUIRE_PEERS=1`, where it fails. Nothing leaves 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use kbs_client::attester::tpm::TpmTarget;
use kbs_client::initdata::Initdata;
use kbs_client::{make_attester, AttesterKind, AttesterOptions, ClientConfig, KbsClient, ResourceUri};
use openssl::ec::EcKey;
use openssl::pkey::Private;
use sha2::{Digest, Sha256};
use test_support::swtpm::{hcl_report, hcl_var_data, HCL_INDEX, MAX_NV_SIZE};
use test_support::{bin, free_port, run_bounded, Paravisor, Swtpm, CMD_LIMIT};

const INITDATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\npod = \"az-pod\"\n";

/// A policy for az-snp-vtpm guests of the test SNP chain, with `pcrs` pinned.
fn az_policy(pcrs: &str) -> String {
    format!(
        "default_policy:\n  required_attestation:\n    az_snp_vtpm:\n      sev_snp: {{measurement: [\"{}\"]}}\n      pcrs: {pcrs}\n  released_resources: [\"default/*\"]\n",
        hex::encode(SnpFields::default().measurement)
    )
}

/// An "Azure SNP VM": swtpm with an AK, an HCL report, and the paravisor in front.
struct AzureVm {
    tpm: Swtpm,
    paravisor: Paravisor,
}

impl AzureVm {
    /// `None` when swtpm or tpm2-tools are missing (and peers are not required).
    fn start(vcek_key: EcKey<Private>) -> Option<AzureVm> {
        let tpm = Swtpm::start()?;
        let ak = tpm.provision_ak();
        // Every report the same length: NV 0x01400001 is defined once, at the maximum;
        // readers take the var data's length from the IGVM header, not the index size.
        let report = move |user_data: &[u8; 64]| {
            let var = hcl_var_data(&ak, user_data);
            let snp = snp_report(&SnpFields::default(), &Sha256::digest(&var), &vcek_key);
            let mut r = hcl_report(2, &snp, &var);
            r.resize(MAX_NV_SIZE, 0);
            r
        };
        tpm.define_nv(HCL_INDEX, &report(&[0; 64]));
        let paravisor = Paravisor::start(tpm.addr(), report);
        Some(AzureVm { tpm, paravisor })
    }

    /// `tcp:127.0.0.1:PORT` of the paravisor (`CLOAK_TPM_DEVICE`).
    fn device(&self) -> String {
        format!("tcp:{}", self.paravisor.addr())
    }

    fn opts(&self, initdata_digest: Option<Vec<u8>>) -> AttesterOptions {
        AttesterOptions {
            tpm_device: TpmTarget::Tcp(self.paravisor.addr()),
            azure_imds_url: closed_url(),
            tsm_root: self.tpm.dir().join("no-tsm"),
            sev_guest_device: self.tpm.dir().join("no-sev-guest"),
            initdata_digest,
            ..Default::default()
        }
    }
}

/// An address where nothing listens (IMDS unreachable).
fn closed_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// A broker trusting the test SNP chain, with its VCEK configured (the guest sends none).
async fn broker(chain: &SnpChain, policy: &str) -> Broker {
    let (ark, ask, vcek) = (chain.ark.clone(), chain.ask.clone(), chain.dir.join("vcek.pem"));
    let b = start(policy, move |c, _| {
        c.snp.ark = Some(ark);
        c.snp.ask = Some(ask);
        c.snp.vcek = Some(vcek);
    })
    .await;
    assert_eq!(b.put("default/key/az", b"az-secret").await.status(), 200);
    b
}

fn client(b: &Broker, opts: &AttesterOptions, init_data: Option<Initdata>) -> KbsClient {
    let attester: Arc<dyn kbs_client::Attester> = make_attester(AttesterKind::AzSnpVtpm, opts).unwrap();
    KbsClient::new(&b.url, attester, ClientConfig { init_data, ..Default::default() }).unwrap()
}

async fn set_policy(b: &Broker, policy: &str) {
    std::fs::write(&b.policy_path, policy).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swtpm_guest_gets_its_key_refused_on_a_pinned_pcr_and_binds_initdata_in_pcr8() {
    let chain_dir = tempfile::tempdir().unwrap();
    let chain = snp_chain(chain_dir.path());
    let Some(vm) = AzureVm::start(chain.vcek_key.clone()) else { return };
    let b = broker(&chain, &az_policy("{}")).await;
    let uri: ResourceUri = "kbs:///default/key/az".parse().unwrap();

    let c = client(&b, &vm.opts(None), None);
    assert_eq!(&c.get_resource(&uri).await.unwrap()[..], b"az-secret");
    assert_eq!(vm.paravisor.regenerated(), 1, "one user-data write, one fresh HCL report");

    // Without the paravisor (straight to swtpm) the HCL report keeps the last
    // session's user-data: the attester sends it after the settle time, the broker
    // refuses it.
    let mut bare = vm.opts(None);
    bare.tpm_device = TpmTarget::Tcp(vm.tpm.addr());
    bare.azure_report_settle = Duration::from_millis(200);
    let e = report::line(&client(&b, &bare, None).get_resource(&uri).await.unwrap_err());
    assert!(e.contains("report_data_mismatch") && e.contains("user-data"), "{e}");

    // PCR 11 pinned to a value swtpm's PCR 11 does not hold.
    set_policy(&b, &az_policy(&format!("{{\"11\": [\"{}\"]}}", "ee".repeat(32)))).await;
    let err = client(&b, &vm.opts(None), None).get_resource(&uri).await.unwrap_err();
    let e = report::line(&err);
    assert!(e.contains("measurement_mismatch") && e.contains("PCR 11"), "{e}");

    // Init-data: the attester extends its digest into PCR 8, the broker checks it
    // against the document in the request and labels the attestation with its pod.
    set_policy(&b, &az_policy("{}")).await;
    let digest = Sha256::digest(INITDATA.as_bytes()).to_vec();
    let init = Initdata::parse(INITDATA.as_bytes()).unwrap();
    let c = client(&b, &vm.opts(Some(digest.clone())), Some(init));
    assert_eq!(&c.get_resource(&uri).await.unwrap()[..], b"az-secret");
    vm.tpm.tool(&["tpm2_pcrread", "-Q", "sha256:8", "-o", "pcr8.bin"]);
    let pcr8 = std::fs::read(vm.tpm.dir().join("pcr8.bin")).unwrap();
    assert_eq!(pcr8, Sha256::digest([[0u8; 32].as_slice(), &digest].concat()).to_vec(), "PCR 8 bound");
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, "coco_attestation_success_total", &["pod=\"az-pod\""]),
        1,
        "the verified init-data names the pod:\n{m}"
    );
}

// Multi-threaded: the broker serves from the runtime's workers while the test's own
// thread waits for the binaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloak_pull_with_az_snp_vtpm_on_swtpm_decrypts_a_kbs_image() {
    let chain_dir = tempfile::tempdir().unwrap();
    let chain = snp_chain(chain_dir.path());
    let Some(vm) = AzureVm::start(chain.vcek_key.clone()) else { return };
    let b = broker(&chain, &az_policy("{}")).await;
    let work = tempfile::tempdir().unwrap();
    let (image, bundle) = (work.path().join("enc"), work.path().join("bundle"));
    encrypt_for(&b, "kbs:///default/image-kek/az", &image);

    let ran = run_bounded(
        Command::new(bin("cloak-pull"))
            .args(["--quiet", "--kbs", &b.url, "--attester", "az-snp-vtpm"])
            .arg(format!("oci:{}:enc", image.display()))
            .arg(&bundle)
            .env("CLOAK_TPM_DEVICE", vm.device())
            .env("CLOAK_AZURE_IMDS_URL", closed_url()),
        CMD_LIMIT,
    )
    .unwrap();
    assert!(ran.ok(), "cloak-pull: {}", ran.describe());
    assert!(!test_support::list_tree(&bundle.join("rootfs")).is_empty(), "no rootfs");
    assert_eq!(vm.paravisor.regenerated(), 1, "one attestation, one fresh HCL report");
    let m = b.metrics().await;
    assert_eq!(metric(&m, "coco_attestation_success_total", &[]), 1, "{m}");
}
