//! Compiles envd's and the host agent's .proto files with protox (pure Rust, no `protoc` on the machine) into prost
//! messages plus pbjson serde impls, so one set of types speaks both the binary and the JSON codec.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/envd/process.proto",
        "proto/envd/filesystem.proto",
        "proto/hostagent/hostagent.proto",
    ];
    let includes = ["proto/envd", "proto/hostagent"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = protox::compile(protos, includes)?;
    let descriptor_path = out.join("envd_descriptor.bin");
    fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .bytes(["."])
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_protos(&protos, &includes)?;

    let descriptor_bytes = fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .build(&[".process", ".filesystem", ".hostagent"])?;
    Ok(())
}
