//! The `gyre` binary.

/// jemalloc rather than glibc malloc: after a burst of connections or
/// channels is gone, glibc kept the freed memory in the process (RSS stayed
/// at the peak); jemalloc's background thread returns it within seconds
/// (see `.cargo/config.toml` for the decay settings). Without the default
/// `jemalloc` feature the system allocator serves, so that heap profilers
/// which hook malloc (valgrind's massif) see every allocation.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    gyre_server::cli::main()
}
