//! Builds three things from `proto/`:
//! - Rust code for our admin service (tonic + prost),
//! - the descriptor set served by gRPC reflection on the Check port, holding
//!   exactly the service served there (Envoy's ext_authz v3) and its imports —
//!   envoy-types ships no descriptor set, and its full bundle would list every
//!   Envoy service, and
//! - the admin API's descriptor set, served by reflection on the admin listener.
//!
//! protox compiles the protos in-process, so building needs no `protoc`.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let admin = protox::compile(["velro/authz/admin/v1/admin.proto"], ["proto"])?;
    fs::write(out.join("admin_descriptor.bin"), admin.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(admin)?;

    let served = protox::compile(
        ["envoy/service/auth/v3/external_auth.proto"],
        ["proto/vendor", "proto"],
    )?;
    fs::write(
        out.join("reflection_descriptor.bin"),
        served.encode_to_vec(),
    )?;
    Ok(())
}
