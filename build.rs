//! Compiles `proto/` with protox (pure Rust), so the build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // common.proto is imported by the three services; listing it too keeps
    // every file compiled even if an import is dropped.
    let protos = [
        "proto/taskmint/v1/common.proto",
        "proto/taskmint/v1/issuer.proto",
        "proto/taskmint/v1/revocations.proto",
        "proto/taskmint/v1/admin.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds the migration files at compile time: a new file
    // alone must rebuild the crate.
    println!("cargo:rerun-if-changed=src/store/migrations");
    println!("cargo:rerun-if-changed=src/store/postgres/migrations");
    let fds = protox::compile(protos, ["proto"])?;
    // Our codec: prost's, with a request that does not decode answered
    // INVALID_ARGUMENT naming the field (src/grpc/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::grpc::codec::TaskmintCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    // The SPIFFE Workload API for the tests' stand-in SPIRE agent (and a raw
    // client to probe it); taskmint's own client is the `spiffe` crate's. It has no
    // proto package, so prost names the output `_.rs`: a directory of its
    // own keeps that name clear. Tests include it from OUT_DIR.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("spiffe_workload");
    std::fs::create_dir_all(&out)?;
    let fds = protox::compile(["proto/spiffe/workload.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out)
        .compile_fds(fds)?;
    Ok(())
}
