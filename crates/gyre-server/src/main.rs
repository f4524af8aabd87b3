//! The `gyre` binary.

fn main() -> std::process::ExitCode {
    gyre_server::cli::main()
}
