//! `gyre-operator`: runs the controller, prints the CRD, or renders the objects for a resource
//! offline (for review, for CI validation, and to hand a generated `config.json` to the server's
//! `checkconfig`).

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gyre_operator::{
    builders::{self, Inputs},
    config::build_config,
    controller::{self, Settings},
    crd::Centrifugo,
    leader::LeaderElector,
    metrics::{self, Metrics},
};
use tracing_subscriber::EnvFilter;

/// Server image used when a `Centrifugo` names none. Release builds override it with
/// `--default-image` (the Helm chart always does).
const DEFAULT_IMAGE: &str = concat!("gyre:", env!("CARGO_PKG_VERSION"));

#[derive(Parser)]
#[command(name = "gyre-operator", version, about = "Kubernetes operator for Gyre (Centrifugo-compatible) servers")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Watch only this namespace (namespaced RBAC); all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Server image for resources that do not set spec.image.
    #[arg(long, env = "GYRE_DEFAULT_IMAGE", default_value = DEFAULT_IMAGE)]
    default_image: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader on a coordination.k8s.io Lease, so several replicas can run (one active).
    #[arg(long, env = "GYRE_LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Namespace of the Lease (the operator's own; the chart passes it from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_elect_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "gyre-operator")]
    leader_elect_lease: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    leader_elect_identity: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Write the CustomResourceDefinition as YAML.
    Crdgen {
        /// Output file; stdout when unset.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print, as JSON, the RBAC permissions the operator needs (checked against the chart in CI).
    Rbac {
        /// Print the chart's generated rules template instead (`templates/_rbac-rules.tpl`).
        #[arg(long)]
        helm: bool,
    },
    /// Print the objects the operator would create for a Centrifugo manifest, as YAML.
    /// The generated Secret gets fresh random values, like the operator's first pass.
    Render {
        /// A Centrifugo manifest (YAML or JSON).
        #[arg(short = 'f', long)]
        file: PathBuf,
        #[arg(long, default_value = DEFAULT_IMAGE)]
        default_image: String,
        /// Print only the generated config.json.
        #[arg(long)]
        config_only: bool,
        /// Print the objects as one JSON array instead of YAML documents (for test tooling).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crdgen { output }) => {
            let yaml = gyre_operator::crd_yaml();
            match output {
                Some(p) => std::fs::write(&p, yaml).with_context(|| format!("writing {}", p.display()))?,
                None => out(&yaml)?,
            }
            Ok(())
        }
        Some(Command::Render { file, default_image, config_only, json }) => {
            render(&file, &default_image, config_only, json)
        }
        Some(Command::Run(args)) => run(args),
        Some(Command::Rbac { helm: true }) => out(&gyre_operator::rbac::helm_rules_template()),
        Some(Command::Rbac { helm: false }) => {
            out(&format!("{}\n", serde_json::to_string_pretty(gyre_operator::rbac::REQUIRED)?))
        }
        None => run(cli.run),
    }
}

fn render(file: &PathBuf, default_image: &str, config_only: bool, json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut cr: Centrifugo =
        serde_norway::from_str(&text).with_context(|| format!("{} is not a Centrifugo manifest", file.display()))?;
    if cr.metadata.namespace.is_none() {
        cr.metadata.namespace = Some("default".into());
    }
    if let Err(e) = cr.validate_cel() {
        anyhow::bail!("{} fails the CRD's validation rules: {e:?}", file.display());
    }
    let config = build_config(&cr.spec).map_err(|e| anyhow::anyhow!("{} ({})", e, e.reason()))?;
    if config_only {
        return out(&config.json);
    }
    let generated = cr.spec.existing_secret().is_none().then(builders::generate_secret_values);
    let secret_hash = generated.as_ref().map_or_else(
        || "existing-secret".to_string(),
        |v| {
            builders::credentials_hash(
                &v.iter().map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.as_bytes().to_vec()))).collect(),
            )
        },
    );
    let inputs = Inputs {
        image: cr.spec.image.clone().unwrap_or_else(|| default_image.to_string()),
        config,
        secret_name: builders::secret_name(&cr),
        secret_hash,
    };
    let objects = builders::render_all(&cr, &inputs, generated.as_ref());
    if json {
        return out(&format!("{}\n", serde_json::to_string_pretty(&objects)?));
    }
    let mut text = String::new();
    for obj in objects {
        text.push_str("---\n");
        text.push_str(&quote_yaml11_booleans(&serde_norway::to_string(&obj)?));
    }
    out(&text)
}

/// Quotes plain scalars that YAML 1.1 readers (kubectl's sigs.k8s.io/yaml, PyYAML) take for
/// booleans although YAML 1.2 writers leave them bare: `proxy-buffering: off` would reach the
/// apiserver as `false`, which an annotation (a string) refuses.
fn quote_yaml11_booleans(yaml: &str) -> String {
    const WORDS: &[&str] = &["on", "off", "yes", "no", "y", "n"];
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.lines() {
        match line.rsplit_once(": ") {
            Some((key, value)) if WORDS.contains(&value.to_ascii_lowercase().as_str()) => {
                out.push_str(&format!("{key}: '{value}'"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Writes to stdout; a closed pipe (`| head`) is an error, not a panic.
fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// SIGTERM or Ctrl-C, while a standby waits for the Lease.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return futures::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let client =
            kube::Client::try_default().await.context("building a Kubernetes client (in-cluster or kubeconfig)")?;
        let m = Arc::new(Metrics::default());
        let server = tokio::spawn(metrics::serve(args.metrics_addr, m.clone()));
        let settings = Settings { default_image: args.default_image };
        if !args.leader_elect {
            let result = controller::run(client, settings, args.watch_namespace, m, futures::future::pending()).await;
            server.abort();
            return result;
        }
        let identity = args.leader_elect_identity.clone().unwrap_or_else(|| {
            format!("{}-{}", std::env::var("HOSTNAME").unwrap_or_else(|_| "gyre-operator".into()), std::process::id())
        });
        let elector = Arc::new(LeaderElector::new(
            kube::Api::namespaced(client.clone(), &args.leader_elect_namespace),
            args.leader_elect_lease.clone(),
            identity,
        ));
        // A standby is healthy and ready: a rolling update of the operator must not wait on it.
        m.set_ready(true);
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown_signal() => {
                server.abort();
                return Ok(());
            }
        }
        let (lost_tx, lost_rx) = futures::channel::oneshot::channel::<()>();
        let holder = {
            let elector = elector.clone();
            tokio::spawn(async move {
                elector.hold().await;
                let _ = lost_tx.send(());
            })
        };
        let lost = {
            use futures::FutureExt as _;
            lost_rx.map(|_| ())
        };
        let result = controller::run(client, settings, args.watch_namespace, m, lost).await;
        let lost_leadership = holder.is_finished();
        holder.abort();
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %e, "could not release the leader Lease; a standby takes over after it expires");
        }
        server.abort();
        result?;
        if lost_leadership {
            // Restart as a candidate rather than keep running without the Lease.
            anyhow::bail!("lost leadership of Lease {}; exiting", args.leader_elect_lease);
        }
        Ok(())
    })
}
