//! Compiles the protos with a vendored protoc (no system protoc needed) and
//! writes the descriptor set that server reflection serves.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "proto/tollgate/v1/plans.proto",
        "proto/tollgate/v1/billing.proto",
        "proto/tollgate/v1/keys.proto",
        "proto/tollgate/v1/verify.proto",
    ];
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Maps as BTreeMap: Verify's headers (a handful of entries on every call)
    // encode and decode without hashing, in a stable order.
    config.btree_map([".tollgate.v1.VerifyResponse.headers"]);
    tonic_prost_build::configure()
        .build_client(true)
        .file_descriptor_set_path(out.join("tollgate_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
