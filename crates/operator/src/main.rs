//! `consorzio`: the operator (`run`), its CRDs (`crds`), a dry run of what it would create
//! (`render`), and a comune's namespace back from a backup (`restore`).

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use consorzio::{
    controller::{self, Context},
    metrics::Metrics,
    server::{self, Health},
    telemetry::{self, LogFormat},
};
use consorzio_api::Municipality;
use futures::FutureExt;
use kube::{Api, Client, api::ListParams};

mod render_files;
mod settings;

use settings::Settings;

/// jemalloc: with glibc's malloc, allocation and freeing took about a quarter of the operator's
/// CPU time in a fleet's cold start (docs/benchmarks.md). Its memory use is about the same.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "consorzio",
    version,
    about = "Shared infrastructure for many municipalities, on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the operator against the cluster of KUBECONFIG (or the in-cluster configuration).
    Run(RunArgs),
    /// Prints the CustomResourceDefinitions of Municipality and SharedService as YAML.
    Crds,
    /// Prints, as YAML, every object the operator would create for the given manifests, without
    /// touching a cluster.
    Render(RenderArgs),
    /// Restores a comune's namespace from one of its backups (a Velero Restore, made with your
    /// credentials): into its own namespace only if that is gone or with --overwrite, else
    /// --into a new namespace beside it.
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// The comune (its Municipality's name; it may have been deleted).
    comune: String,
    /// The backup to restore (status.backup.lastSuccessful names the newest); else the newest.
    #[arg(long, conflicts_with = "at")]
    backup: Option<String>,
    /// The newest backup completed at or before this time (RFC 3339, e.g.
    /// 2026-11-30T02:00:00Z).
    #[arg(long)]
    at: Option<k8s_openapi::jiff::Timestamp>,
    /// A new namespace to restore into, beside the comune's (outside the operator's namespaces).
    #[arg(long)]
    into: Option<String>,
    /// Restore over the comune's live namespace: its objects return to the backup's state.
    #[arg(long, conflicts_with = "into")]
    overwrite: bool,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    settings: Settings,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "CONSORZIO_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "CONSORZIO_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Reconcile only while holding a Lease, so that replicas never write at the same time; the
    /// others serve health and metrics and stand by.
    #[arg(long, env = "CONSORZIO_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (the chart sets the operator's own).
    #[arg(
        long,
        env = "CONSORZIO_LEADER_ELECTION_NAMESPACE",
        default_value = "default"
    )]
    leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "CONSORZIO_LEADER_ELECTION_LEASE",
        default_value = "consorzio-leader"
    )]
    leader_election_lease: String,
    /// How long a leader's Lease lasts without renewal: a replica that dies is replaced within
    /// about this time.
    #[arg(long, env = "CONSORZIO_LEASE_DURATION_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..))]
    lease_duration_seconds: u64,
}

#[derive(Args, Debug)]
struct RenderArgs {
    #[command(flatten)]
    settings: Settings,
    /// Manifest files of Municipalities and SharedServices (`-` reads standard input).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => {
            std::io::stdout()
                .lock()
                .write_all(consorzio::crds_yaml()?.as_bytes())?;
            Ok(())
        }
        Command::Render(args) => render_files::render_files(&args.files, &args.settings.config()?),
        Command::Restore(args) => {
            let config = args.settings.config()?;
            let request = consorzio::restore::Request {
                comune: args.comune,
                backup: args.backup,
                at: args.at,
                into: args.into,
                overwrite: args.overwrite,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let client = Client::try_default().await?;
                    let said = consorzio::restore::restore(&client, &config, &request).await?;
                    println!("{said}");
                    anyhow::Ok(())
                })
        }
        Command::Run(args) => {
            telemetry::init(args.log_format);
            // jemalloc gives freed pages back to the system from a background thread, idle or
            // not: memory used for a moment (a burst of large objects, even ones dropped as
            // they arrive because they are outside the operator's namespaces) does not stay
            // resident.
            if let Err(error) = tikv_jemalloc_ctl::background_thread::write(true) {
                tracing::warn!(%error, "jemalloc's background thread could not start");
            }
            // One thread: the work waits on the API server far more than it computes (in a cold
            // start of 1,000 comuni on two worker threads, `perf` put a tenth of the operator's
            // CPU in the kernel's context switches).
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(run(args))
        }
    }
}

/// Waits until the Municipality CRD is served, saying how to install it meanwhile.
async fn wait_for_crds(client: &Client) {
    let api = Api::<Municipality>::all(client.clone());
    loop {
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 404 => tracing::warn!(
                "the Municipality CRD is not installed; install it with `consorzio crds | kubectl apply --server-side -f -`"
            ),
            Err(error) => tracing::warn!(%error, "cannot list Municipalities yet"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c().map(|_| ());
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    futures::future::select(Box::pin(ctrl_c), Box::pin(term)).await;
    tracing::info!("shutting down");
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.settings.config()?;
    let client = Client::try_default()
        .await
        .context("cannot find a cluster: set KUBECONFIG, or run inside a cluster")?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = shutdown_signal().shared();

    let health = Health {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let server = tokio::spawn(server::serve(args.metrics_addr, health, shutdown.clone()));
    tracing::info!(addr = %args.metrics_addr, "serving /metrics, /healthz and /readyz");

    let mut leadership = None;
    if args.leader_election {
        // A standby replica is ready: it serves health and metrics, and waits.
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut lease = elect(&client, &args).await?;
        tracing::info!(lease = %args.leader_election_lease, "waiting to lead");
        tokio::select! {
            result = lease.0.wait_for(|leading| *leading) => {
                result.context("leader election stopped")?;
            }
            () = shutdown.clone() => return Ok(()),
        }
        tracing::info!("leading");
        leadership = Some(lease);
    }
    wait_for_crds(&client).await;
    let (ctx, streams) = Context::start(client, config, metrics.clone()).await?;
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    metrics.set_leader(true);
    tracing::info!("caches filled; reconciling");
    let municipalities = controller::run_municipalities(
        ctx.clone(),
        streams.municipalities,
        streams.municipality_triggers,
        shutdown.clone(),
    );
    let services = controller::run_services(
        ctx,
        streams.services,
        streams.comuni,
        streams.service_triggers,
        shutdown.clone(),
    );
    let lost = async {
        match &mut leadership {
            Some((channel, _)) => {
                let _ = channel.wait_for(|leading| !*leading).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = futures::future::join(municipalities, services) => {}
        result = server => result??,
        () = lost => bail!("lost the leader lease; exiting so that a fresh start stands by"),
    }
    // Stepping down on a clean stop hands the lease over at once.
    if let Some((channel, task)) = leadership {
        drop(channel);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(())
}

type Lease = (
    tokio::sync::watch::Receiver<bool>,
    tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
);

/// Joins the election for the leader Lease; the receiver says whether this replica leads.
async fn elect(client: &Client, args: &RunArgs) -> anyhow::Result<Lease> {
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let duration = args.lease_duration_seconds;
    let manager =
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.leader_election_lease)
            .with_namespace(&args.leader_election_namespace)
            .with_identity(identity)
            .with_duration(duration)
            .with_grace((duration / 3).max(1))
            .with_field_manager("consorzio")
            .build()
            .await
            .with_context(|| {
                format!(
                    "cannot use the Lease {}/{}",
                    args.leader_election_namespace, args.leader_election_lease
                )
            })?;
    Ok(manager.watch().await)
}
