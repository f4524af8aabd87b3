//! Generates the protocol types from `proto/client.proto` at build time.
//!
//! `protox` compiles the schema in pure Rust, so the build needs nothing but
//! crates: no `protoc` download, no committed generated code to drift.

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [root.join("client.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root]).expect("proto/client.proto must compile");
    let mut config = prost_build::Config::new();
    // Payloads are shared between subscribers by reference count, never copied.
    config.bytes(["."]);
    config.compile_fds(fds).expect("prost code generation for proto/client.proto");
}
