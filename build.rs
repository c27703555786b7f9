// Compiles our own `.proto` files with protox (pure Rust, no system protoc) and generates the
// tonic clients and servers. The descriptor set is also kept so a test can compare our files
// field by field with the upstream Python stubs.
use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "jumpstarter/v1/common.proto",
    "jumpstarter/v1/kubernetes.proto",
    "jumpstarter/v1/router.proto",
    "jumpstarter/v1/jumpstarter.proto",
    "jumpstarter/client/v1/client.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("src/proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
