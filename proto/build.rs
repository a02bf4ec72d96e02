//! Generates the wire types from `link.proto` with prost. The .proto is
//! parsed by protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=link.proto");
    let descriptors = protox::compile(["link.proto"], ["."])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
