//! `gyre-loadgen`: WebSocket fan-out load generator for Gyre and Nchan.
//!
//! `gyre-loadgen run …` opens connections, subscribes, publishes timestamped
//! messages over keep-alive HTTP connections and prints ONE JSON line.
//! `gyre-loadgen flood …` measures `/api/publish` latency during a subscribe/unsubscribe flood.
//! `gyre-loadgen report FILE…` turns such lines into medians and a markdown table.

mod flood;
mod frames;
mod payload;
mod procfs;
mod report;
mod run;
mod stats;
mod wsraw;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gyre-loadgen", about = "Load generator for Gyre and Nchan (loopback only)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario and print one JSON line.
    Run {
        #[command(flatten)]
        opts: Box<run::RunOpts>,
        /// Tokio worker threads (1 = a current-thread runtime).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// API latency while a subscribe/unsubscribe flood runs on a join_leave channel; one JSON line.
    Flood {
        #[command(flatten)]
        opts: Box<flood::FloodOpts>,
        /// Tokio worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Medians of JSON-line results: a markdown table on stdout.
    Report {
        /// Files of JSON lines.
        files: Vec<std::path::PathBuf>,
        /// Also write the medians as JSON lines here.
        #[arg(long)]
        json_out: Option<std::path::PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run { opts, threads } => {
            let rt = if threads <= 1 {
                tokio::runtime::Builder::new_current_thread().enable_all().build()?
            } else {
                tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
            };
            let report = rt.block_on(run::run(*opts))?;
            println!("{report}");
            // Connections are torn down by dropping the runtime without waiting.
            rt.shutdown_background();
            Ok(())
        }
        Cmd::Flood { opts, threads } => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?;
            let report = rt.block_on(flood::run(*opts))?;
            println!("{report}");
            rt.shutdown_background();
            Ok(())
        }
        Cmd::Report { files, json_out } => {
            let mut text = String::new();
            for f in &files {
                text.push_str(&std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?);
                text.push('\n');
            }
            let rows = report::summarize(&text);
            print!("{}", report::markdown(&rows));
            if let Some(p) = json_out {
                let lines: Vec<String> = report::medians_json(&rows).iter().map(|v| v.to_string()).collect();
                std::fs::write(&p, lines.join("\n") + "\n").with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(())
        }
    }
}
