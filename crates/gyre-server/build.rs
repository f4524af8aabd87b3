//! Generates the gRPC API service glue (`CentrifugoApi` server trait and its
//! tower service) from `proto/api.proto`.
//!
//! The message types are not generated here: they come from `gyre-proto`
//! (`extern_path`), so the HTTP and gRPC APIs share one schema and one set of
//! Rust types. `protox` compiles the schema in pure Rust (no `protoc`).

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let api = root.join("api.proto");
    println!("cargo:rerun-if-changed={}", api.display());
    let fds = protox::compile([&api], [&root]).expect("proto/api.proto must compile");
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .extern_path(".centrifugal.centrifugo.api", "::gyre_proto::api")
        .compile_fds(fds)
        .expect("tonic code generation for proto/api.proto");
}
