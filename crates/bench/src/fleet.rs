//! `consorzio-bench fleet`: the first N comuni of Italy served by three services (two Dedicated,
//! one Shared), measured in five scenarios, and the same objects applied without the operator.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use consorzio_api::Municipality;
use consorzio_testkit::{Cluster, OperatorProcess};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
};
use serde_json::{Value, json};

use crate::{comuni::Comune, direct::DIRECT_LABEL, waits::wait_namespaces_gone};

/// The services, from the example catalogue: two Dedicated, one Shared, for every comune.
pub const SERVICES: [(&str, &str); 3] = [
    ("sito-comunale", "bench-sito"),
    ("nextcloud", "bench-files"),
    ("sit", "bench-sit"),
];
/// The ClusterIssuer of every host: each comune's hosts get certificates (issued by the rig's
/// cert-manager, on both paths; tests/cluster/issuers.yaml).
pub(crate) const BENCH_ISSUER: &str = "bench-ca";
/// The service whose image changes in the last scenario.
pub(crate) const ROLLED: &str = "bench-sito";
pub(crate) const NEW_IMAGE: &str = "docker.io/library/wordpress:6.7.1-apache";

/// The default quiet window of the no-op resync, in seconds: how long the new operator must
/// write nothing before its writes are counted. The operator defers some writes (the constants
/// in crates/operator/src/controller), and a write deferred past the window would go uncounted.
/// On a converged fleet, restarted:
/// - `PROGRESS_HOLD`, 120 s, is the longest: a comune's service entries wait that long for an
///   entry still on its way (Pending, Updating). A restart that misreads an instance as on its
///   way would write its entries up to 120 s after the service's first pass reported them;
/// - `USAGE_SETTLE`, 30 s: a change of a quota's usage alone waits until the usage has been
///   still that long. `USAGE_LIMIT` (5 min) bounds only usage that keeps changing, which it does
///   not on a converged fleet; a difference found at start is written at once;
/// - `CREATION_LAG` (10 s), `COUNTS_REFRESH` (5 s) and the 5 s longest wait between a service's
///   passes are shorter.
///
/// The window starts once every object has been reconciled once, the services' first passes
/// (which report the entries) within seconds of that, and any write starts it again: 120 s plus
/// 30 s for those passes and the shorter waits.
pub const RESYNC_QUIET: u32 = 150;

#[derive(Debug)]
pub struct Options {
    pub sizes: Vec<usize>,
    pub onboard: usize,
    /// The operator's `--concurrency`, and the requests in flight of the benchmark's own client.
    pub concurrency: usize,
    /// The requests in flight at which the physical limit is measured.
    pub direct_concurrency: Vec<usize>,
    /// Seconds without writes before the no-op resync's writes are counted.
    pub resync_quiet: u32,
    pub bin: PathBuf,
    /// Leave the last size's fleet in place.
    pub keep: bool,
}

/// What one fleet size measured.
#[derive(Debug, Clone)]
pub struct Figures {
    pub n: usize,
    /// Objects `consorzio render` gives for the fleet (and the credentials Secrets it leaves out).
    pub direct_objects: usize,
    /// The time to apply them directly and see every Deployment Available, at each number of
    /// requests in flight tried, in the order tried.
    pub direct_runs: Vec<(usize, Duration)>,
    /// From the moment the operator leads with its caches filled (and the benchmark applies the
    /// services and the fleet) until every comune and service is Ready.
    pub cold: Duration,
    /// The same, from the operator's process start: with its start-up (connecting, listing
    /// what it watches).
    pub cold_from_process: Duration,
    pub cold_writes: u64,
    pub cold_peak_kib: u64,
    pub cold_cpu_seconds: f64,
    /// Apply -> Ready of each comune onboarded into the converged fleet, sorted.
    pub onboarding: Vec<Duration>,
    pub resync: Duration,
    /// Seconds without writes after which `resync_writes` were counted.
    pub resync_quiet: u32,
    pub resync_writes: u64,
    pub resync_peak_kib: u64,
    pub rollout: Duration,
    pub rollout_wave: usize,
}

impl Figures {
    /// The physical limit: the fastest of the direct runs, and its requests in flight.
    pub fn direct(&self) -> (usize, Duration) {
        self.direct_runs
            .iter()
            .copied()
            .min_by_key(|(_, time)| *time)
            .unwrap_or((0, Duration::ZERO))
    }

    /// The cold start over the physical limit. Both clocks start with the first request of the
    /// fleet's objects, neither with a process start.
    pub fn ratio(&self) -> f64 {
        self.cold.as_secs_f64() / self.direct().1.as_secs_f64()
    }
}

pub(crate) fn timeout(n: usize) -> Duration {
    Duration::from_secs(600 + n as u64)
}

pub(crate) fn start_operator(
    cluster: &Cluster,
    options: &Options,
) -> anyhow::Result<OperatorProcess> {
    let concurrency = options.concurrency.to_string();
    OperatorProcess::start(
        cluster,
        &options.bin,
        "bench-operator",
        &[
            "--leader-election=false",
            "--concurrency",
            &concurrency,
            "--cluster-issuer",
            BENCH_ISSUER,
        ],
    )
}

pub async fn run(
    cluster: &Cluster,
    client: &Client,
    options: &Options,
) -> anyhow::Result<Vec<Figures>> {
    if options.onboard == 0 {
        bail!("--onboard must be at least 1: scenario 3 reports the onboarding latencies");
    }
    if options.direct_concurrency.is_empty() || options.direct_concurrency.contains(&0) {
        bail!(
            "--direct-concurrency needs one or more numbers of requests in flight, each at least 1"
        );
    }
    delete_direct_leftovers(client).await?;
    let comuni = &available_comuni(client).await?;
    let largest = options.sizes.iter().max().copied().unwrap_or(0) + options.onboard;
    if largest > comuni.len() {
        bail!(
            "--municipalities {} plus {} onboarded: the fixture has {} comuni",
            largest - options.onboard,
            options.onboard,
            comuni.len()
        );
    }
    check_capacity(client, largest).await?;
    // The database operators' part, for both paths: the operator starts an instance once its
    // database is ready, as they report it.
    let _databases = consorzio_testkit::OperatorPlayer::start(client.clone());
    let mut all = vec![];
    for &n in &options.sizes {
        let figures =
            crate::scenarios::measure(cluster, client, &comuni[..n + options.onboard], n, options)
                .await
                .with_context(|| format!("fleet of {n} comuni"))?;
        all.push(figures);
    }
    Ok(all)
}

/// The comuni a run of `sizes` with `onboard` comuni onboarded will create, for the checks made
/// before it starts. Changes nothing.
pub async fn planned(
    client: &Client,
    sizes: &[usize],
    onboard: usize,
) -> anyhow::Result<Vec<Comune>> {
    let largest = sizes.iter().max().copied().unwrap_or(0) + onboard;
    let mut comuni = available_comuni(client).await?;
    comuni.truncate(largest);
    Ok(comuni)
}

/// Deletes the namespaces an interrupted physical-limit scenario left, and waits until they
/// are gone.
async fn delete_direct_leftovers(client: &Client) -> anyhow::Result<()> {
    let namespaces = Api::<Namespace>::all(client.clone());
    let leftovers: HashSet<String> = namespaces
        .list_metadata(&ListParams::default().labels(DIRECT_LABEL))
        .await
        .context("listing the physical limit's leftover namespaces")?
        .items
        .iter()
        .map(|ns| ns.name_any())
        .collect();
    for name in &leftovers {
        namespaces
            .delete(name, &DeleteParams::background())
            .await
            .with_context(|| format!("deleting namespace {name}"))?;
    }
    wait_namespaces_gone(client, leftovers).await
}

/// The fixture's comuni, less those whose Municipality or namespace exists outside the
/// benchmark (`make run`'s examples are real comuni): the benchmark never touches them. The
/// benchmark's own leftovers (Municipalities labelled `consorzio.io/bench`, their namespaces,
/// the physical limit's namespaces) do not count: they are deleted before the run.
async fn available_comuni(client: &Client) -> anyhow::Result<Vec<Comune>> {
    let municipalities = match Api::<Municipality>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        // The CRDs are not installed yet: no Municipality at all.
        Err(kube::Error::Api(e)) if e.code == 404 => vec![],
        Err(e) => return Err(e).context("listing Municipalities"),
    };
    let is_bench = |labels: &std::collections::BTreeMap<String, String>, label: &str| {
        labels.get(label).map(String::as_str) == Some("true")
    };
    let (bench, others): (Vec<_>, Vec<_>) = municipalities
        .iter()
        .partition(|m| is_bench(m.labels(), "consorzio.io/bench"));
    let bench: HashSet<String> = bench.iter().map(|m| m.name_any()).collect();
    let mut taken: HashSet<String> = others.iter().map(|m| m.name_any()).collect();
    taken.extend(
        Api::<Namespace>::all(client.clone())
            .list_metadata(&ListParams::default())
            .await
            .context("listing namespaces")?
            .items
            .iter()
            .filter(|ns| !is_bench(ns.labels(), DIRECT_LABEL))
            .filter_map(|ns| Some(ns.name_any().strip_prefix("comune-")?.to_string()))
            .filter(|name| !bench.contains(name)),
    );
    Ok(crate::comuni::all()?
        .into_iter()
        .filter(|c| !taken.contains(&c.name))
        .collect())
}

/// Fails early, saying what to do, when the fake nodes cannot hold every instance's pod.
async fn check_capacity(client: &Client, comuni: usize) -> anyhow::Result<()> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels("type=kwok"))
        .await?;
    let capacity: i64 = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.allocatable.as_ref()?.get("pods"))
        // Canonical quantities: "1000" is written "1k".
        .filter_map(|q| match q.0.strip_suffix('k') {
            Some(thousands) => thousands.parse::<i64>().ok().map(|k| k * 1000),
            None => q.0.parse::<i64>().ok(),
        })
        .sum();
    let needed = 2 * comuni as i64 + 1;
    if capacity < needed {
        bail!(
            "{comuni} comuni need {needed} pods but the fake nodes hold {capacity}: restart the \
             control plane with more nodes, e.g. `tests/cluster/down && CONSORZIO_FAKE_NODES={} tests/cluster/up`",
            needed / 10_000 + 1
        );
    }
    Ok(())
}

/// Waves of a tenth of the fleet.
pub(crate) fn rollout_settings(service: &mut Value) {
    service["spec"]["rollout"] = json!({"maxUnavailable": "10%"});
    // Overrides name the catalogue's comuni; storage must fit a comune's default quota
    // (100Gi) beside the other Dedicated service.
    if let Some(spec) = service["spec"].as_object_mut() {
        spec.remove("overrides");
    }
    for volume in service["spec"]["template"]["volumes"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        volume["size"] = "10Gi".into();
    }
}
