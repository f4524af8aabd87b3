//! A private nats-server for tests: its own free port and store directory,
//! killed on drop. Tests never touch a system NATS.
//!
//! The binary is `$NATS_SERVER_BIN`, else `nats-server` on `PATH`, else
//! `/usr/sbin/nats-server` (Debian's package); a missing binary fails the
//! test with a message saying how to install it.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Finds the nats-server binary or panics with instructions.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("nats-server");
            if p.is_file() {
                return p;
            }
        }
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.is_file() {
        return debian;
    }
    panic!(
        "nats-server not found: set NATS_SERVER_BIN or install it (Debian: apt-get install nats-server; \
         tests/install-deps.sh does it)"
    );
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A running nats-server child.
pub struct NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    /// Port.
    pub port: u16,
    /// Store directory (JetStream files).
    pub dir: PathBuf,
    jetstream: bool,
    args: Vec<String>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port with a fresh store directory.
    pub fn start() -> NatsServer {
        Self::start_with(true)
    }

    /// Starts it with or without JetStream.
    pub fn start_with(jetstream: bool) -> NatsServer {
        let mut s = Self::reserved(jetstream);
        s.spawn();
        s
    }

    /// Starts it with extra command-line arguments (e.g. `--tls --tlscert …`).
    /// Readiness is a TCP connect, so TLS-only servers are waited for too.
    pub fn start_with_args(jetstream: bool, args: &[&str]) -> NatsServer {
        let mut s = Self::reserved(jetstream);
        s.args = args.iter().map(|a| a.to_string()).collect();
        s.spawn();
        s
    }

    /// Chooses the port and store directory without starting the server
    /// (for "NATS comes up after Gyre" tests): [`NatsServer::restart`] starts it.
    /// The port is free when chosen; another process could take it meanwhile,
    /// which makes the later start fail loudly rather than silently.
    pub fn reserved(jetstream: bool) -> NatsServer {
        let dir = std::env::temp_dir().join(format!("gyre-nats-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("nats store dir");
        let port = free_port();
        NatsServer { url: format!("nats://127.0.0.1:{port}"), port, dir, jetstream, args: Vec::new(), child: None }
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(nats_server_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(&self.dir);
        }
        cmd.args(&self.args);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nats_server_bin().display()));
        self.child = Some(child);
        // 500 × 20 ms: 10 s at most.
        let mut tries = 0;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            tries += 1;
            assert!(tries < 500, "nats-server did not listen on {} within 10 s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server (store kept).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
