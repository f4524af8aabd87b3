//! Generates the protocol types from `proto/client.proto`, the server API
//! types from `proto/api.proto` and the gRPC proxy types from
//! `proto/proxy.proto` at build time.
//!
//! `protox` compiles the schema in pure Rust, so the build needs nothing but
//! crates: no `protoc` download, no committed generated code to drift.

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [root.join("client.proto"), root.join("api.proto"), root.join("proxy.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root]).expect("proto/*.proto must compile");
    let mut config = prost_build::Config::new();
    // Payloads are shared between subscribers by reference count, never copied.
    config.bytes(["."]);
    config.compile_fds(fds).expect("prost code generation for proto/*.proto");
}
