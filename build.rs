//! Builds two things from `proto/`:
//! - Rust code for our admin service (tonic + prost), and
//! - one descriptor set, served by gRPC reflection, holding exactly the services we
//!   serve (Envoy's ext_authz v3 and our admin API) and their imports — envoy-types
//!   ships no descriptor set, and its full bundle would list every Envoy service.
//!
//! protox compiles the protos in-process, so building needs no `protoc`.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let admin = protox::compile(["velro/authz/admin/v1/admin.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(admin)?;

    let served = protox::compile(
        [
            "envoy/service/auth/v3/external_auth.proto",
            "velro/authz/admin/v1/admin.proto",
        ],
        ["proto/vendor", "proto"],
    )?;
    fs::write(
        out.join("reflection_descriptor.bin"),
        served.encode_to_vec(),
    )?;
    Ok(())
}
