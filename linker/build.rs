//! Generates the admin API (gRPC, `proto/admin.proto`) with tonic and
//! prost. The .proto is parsed by protox (pure Rust): no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/admin.proto");
    let descriptors = protox::compile(["admin.proto"], ["../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // `mqlink ctl --json` prints the replies as they are.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)?;
    Ok(())
}
