//! Generates the ttRPC services of `protos/` (CoCo's CDH `api` package,
//! attestation-agent's `attestation_agent` package and ocicrypt's `keyprovider`
//! package) with ttrpc-codegen's pure-Rust protobuf parser: no system `protoc` is needed. The generated files carry inner
//! attributes (`#![allow(...)]`, among them `unsafe_code`, which the workspace
//! forbids, though the code has no `unsafe`), which `include!` cannot take;
//! they are dropped here and `src/cdh/pb.rs` puts its own allows on the modules.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos/api.proto");
    println!("cargo:rerun-if-changed=protos/keyprovider.proto");
    println!("cargo:rerun-if-changed=protos/attestation-agent.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("cdh");
    std::fs::create_dir_all(&out)?;
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(["protos/api.proto", "protos/keyprovider.proto", "protos/attestation-agent.proto"])
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize { async_all: true, ..Default::default() })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()?;
    for name in [
        "api.rs",
        "api_ttrpc.rs",
        "keyprovider.rs",
        "keyprovider_ttrpc.rs",
        "attestation_agent.rs",
        "attestation_agent_ttrpc.rs",
    ] {
        let path = out.join(name);
        let text = std::fs::read_to_string(&path)?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("#![") && !l.trim_start().starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n"))?;
    }
    Ok(())
}
