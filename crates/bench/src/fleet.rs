//! `consorzio-bench fleet`: the first N comuni of Italy served by three services (two Dedicated,
//! one Shared), measured in five scenarios, and the same objects applied without the operator.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use consorzio_api::{Municipality, SharedService};
use consorzio_testkit::{Cluster, OperatorProcess, wait_for, yaml_documents};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Node, Secret},
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
    discovery::{ApiResource, Scope, pinned_kind},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};

use crate::{apply_service, clean_up, comuni::Comune, is_ready, service_manifest};

/// The services, from the example catalogue: two Dedicated, one Shared, for every comune.
const SERVICES: [(&str, &str); 3] = [
    ("sito-comunale", "bench-sito"),
    ("nextcloud", "bench-files"),
    ("sit", "bench-sit"),
];
/// The service whose image changes in the last scenario.
const ROLLED: &str = "bench-sito";
const NEW_IMAGE: &str = "docker.io/library/wordpress:6.7.1-apache";

#[derive(Debug)]
pub struct Options {
    pub sizes: Vec<usize>,
    pub onboard: usize,
    pub concurrency: usize,
    pub bin: PathBuf,
    /// Leave the last size's fleet in place.
    pub keep: bool,
}

/// What one fleet size measured.
#[derive(Debug, Clone)]
pub struct Figures {
    pub n: usize,
    /// Objects `consorzio render` gives for the fleet (and the credentials Secrets it leaves out),
    /// and the time to apply them directly and see every Deployment Available.
    pub direct_objects: usize,
    pub direct: Duration,
    pub cold: Duration,
    pub cold_writes: u64,
    pub cold_peak_kib: u64,
    pub cold_cpu_seconds: f64,
    /// Apply -> Ready of each comune onboarded into the converged fleet, sorted.
    pub onboarding: Vec<Duration>,
    pub resync: Duration,
    pub resync_writes: u64,
    pub resync_peak_kib: u64,
    pub rollout: Duration,
    pub rollout_wave: usize,
}

impl Figures {
    pub fn ratio(&self) -> f64 {
        self.cold.as_secs_f64() / self.direct.as_secs_f64()
    }
}

fn timeout(n: usize) -> Duration {
    Duration::from_secs(600 + n as u64)
}

fn start_operator(cluster: &Cluster, options: &Options) -> anyhow::Result<OperatorProcess> {
    let concurrency = options.concurrency.to_string();
    OperatorProcess::start(
        cluster,
        &options.bin,
        "bench-operator",
        &["--leader-election=false", "--concurrency", &concurrency],
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
    let mut all = vec![];
    for &n in &options.sizes {
        let figures = measure(cluster, client, &comuni[..n + options.onboard], n, options)
            .await
            .with_context(|| format!("fleet of {n} comuni"))?;
        all.push(figures);
    }
    Ok(all)
}

/// On the namespaces the physical-limit scenario applies, so that an interrupted run's are found.
const DIRECT_LABEL: &str = "consorzio.io/bench-direct";

/// The fixture's comuni, less those whose Municipality or namespace exists outside the
/// benchmark (`make run`'s examples are real comuni): the benchmark never touches them. The
/// namespaces an interrupted physical-limit scenario left are deleted first.
async fn available_comuni(client: &Client) -> anyhow::Result<Vec<Comune>> {
    let namespaces = Api::<Namespace>::all(client.clone());
    let leftovers: HashSet<String> = namespaces
        .list_metadata(&ListParams::default().labels(DIRECT_LABEL))
        .await?
        .items
        .iter()
        .map(|ns| ns.name_any())
        .collect();
    for name in &leftovers {
        namespaces.delete(name, &DeleteParams::background()).await?;
    }
    wait_namespaces_gone(client, leftovers).await?;
    let mut taken: HashSet<String> = Api::<Municipality>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|m| m.name_any())
        .collect();
    taken.extend(
        namespaces
            .list_metadata(&ListParams::default())
            .await?
            .items
            .iter()
            .filter_map(|ns| Some(ns.name_any().strip_prefix("comune-")?.to_string())),
    );
    Ok(crate::comuni::all()?
        .into_iter()
        .filter(|c| !taken.contains(&c.name))
        .collect())
}

/// The machine, versions and command, for the report.
pub async fn context(
    cluster: &Cluster,
    client: &Client,
    options: &Options,
) -> anyhow::Result<String> {
    let run = |program: &Path, args: &[&str]| -> String {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim())
        })
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let kubernetes = client.apiserver_version().await?.git_version;
    let etcd = run(&cluster.bin("kcp"), &["etcd", "--version"]);
    let etcd = etcd
        .lines()
        .next()
        .unwrap_or_default()
        .replace("Version: ", "");
    let kwok = run(&cluster.bin("kwok"), &["--version"]);
    let kwok = kwok.split_whitespace().nth(2).unwrap_or("unknown");
    let sizes: Vec<String> = options.sizes.iter().map(|n| n.to_string()).collect();
    Ok(format!(
        "Measured on {date} with `consorzio-bench fleet --municipalities {sizes} --onboard {onboard} --concurrency {concurrency}` \
         (release build; `make bench BENCH_SIZES=...` runs it), consorzio {commit}.\n\n\
         - Machine: {model}, {cores} cores, {memory:.0} GiB; {kernel}\n\
         - Control plane (tests/cluster): Kubernetes {kubernetes}, {etcd}, kwok {kwok}\n\
         - {rustc}",
        date = run(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]),
        sizes = sizes.join(","),
        onboard = options.onboard,
        concurrency = options.concurrency,
        commit = run(Path::new("git"), &["describe", "--always", "--dirty"]),
        memory = memory_kib as f64 / 1024.0 / 1024.0,
        kernel = run(Path::new("uname"), &["-sr"]),
        rustc = run(Path::new("rustc"), &["--version"]),
    ))
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

async fn measure(
    cluster: &Cluster,
    client: &Client,
    comuni: &[Comune],
    n: usize,
    options: &Options,
) -> anyhow::Result<Figures> {
    let (fleet, joiners) = comuni.split_at(n);
    let municipalities = Api::<Municipality>::all(client.clone());
    let services = Api::<SharedService>::all(client.clone());
    let selector = json!({"matchLabels": {"consorzio.io/bench": "true"}});

    // 2. The physical limit, first, on a cluster without the fleet.
    restart_control_plane(cluster, client, n).await?;
    eprintln!("[{n}] physical limit: applying `consorzio render` output directly");
    let (direct_objects, direct) = direct(cluster, client, fleet, &selector, options).await?;
    eprintln!("[{n}] physical limit: {direct_objects} objects in {direct:?}");

    // 1. Cold start.
    restart_control_plane(cluster, client, n).await?;
    eprintln!("[{n}] cold start");
    let mut operator = start_operator(cluster, options)?;
    operator.wait_leading().await?;
    let start = Instant::now();
    let started = Timestamp::now();
    let cpu = cluster.cpu_seconds()?;
    for (from, name) in SERVICES {
        apply_service(client, from, name, &selector, rollout_settings).await?;
    }
    stream::iter(fleet)
        .map(|c| apply(&municipalities, c))
        .buffer_unordered(options.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    wait_served(client, n, timeout(n)).await?;
    let cold = start.elapsed();
    eprintln!(
        "[{n}] cold start, timeline:\n{}\n  control plane CPU: {}; operator CPU: {:.1} s",
        timeline(client, started).await?,
        cpu_used(cluster, &cpu)?,
        operator.cpu_seconds()?
    );
    // Quiet for longer than the operator defers a comune's quota usage (30 s), so that those
    // writes count too.
    let by_kind = operator.quiet_for(35).await?;
    let cold_writes = by_kind.values().sum();
    eprintln!("[{n}] cold start: {cold:?}, operator writes by kind: {by_kind:?}");
    let metrics = cluster.dir.join(format!("logs/bench-metrics-{n}.txt"));
    std::fs::write(&metrics, operator.metrics().await?)?;
    eprintln!(
        "[{n}] cold start: the operator's metrics are in {}",
        metrics.display()
    );
    let cold_peak_kib = operator.memory_kib()?.1;
    let cold_cpu_seconds = operator.cpu_seconds()?;

    // 3. Steady onboarding, one comune at a time.
    eprintln!("[{n}] onboarding {} comuni one at a time", joiners.len());
    let mut onboarding = vec![];
    for c in joiners {
        let start = Instant::now();
        apply(&municipalities, c).await?;
        wait_for(
            &format!("{} Ready", c.name),
            Duration::from_secs(60),
            || async {
                match municipalities.get(&c.name).await? {
                    m if is_ready(&m) => Ok(()),
                    _ => bail!("not Ready"),
                }
            },
        )
        .await?;
        onboarding.push(start.elapsed());
    }
    onboarding.sort();
    wait_served(client, comuni.len(), timeout(n)).await?;
    // Converged: the deferred quota usage written too.
    operator.quiet_for(35).await?;

    // 4. No-op resync: a new operator on the converged fleet.
    eprintln!("[{n}] no-op resync");
    operator.stop();
    let start = Instant::now();
    let operator = start_operator(cluster, options)?;
    let (m_count, s_count) = (
        municipalities
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len(),
        services
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len(),
    );
    wait_for(
        "the initial reconcile of every object",
        timeout(n),
        || async {
            let m = operator
                .metric_sum("consorzio_reconcile_total", "controller=\"municipality\"")
                .await?;
            let s = operator
                .metric_sum("consorzio_reconcile_total", "controller=\"sharedservice\"")
                .await?;
            if m < m_count as f64 || s < s_count as f64 {
                bail!(
                    "{m} of {m_count} Municipalities and {s} of {s_count} SharedServices reconciled"
                );
            }
            Ok(())
        },
    )
    .await?;
    let resync = start.elapsed();
    let resync_writes = operator.quiet().await?.values().sum();
    let resync_peak_kib = operator.memory_kib()?.1;

    // 5. One change, whole fleet.
    eprintln!("[{n}] rolling out a new image of {ROLLED}");
    let start = Instant::now();
    services
        .patch(
            ROLLED,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"image": NEW_IMAGE}}})),
        )
        .await?;
    let rolled = wait_for(
        &format!("the rollout of {ROLLED} to every comune"),
        timeout(n),
        || async {
            let s = services.get(ROLLED).await?;
            let status = s.status.clone().unwrap_or_default();
            let rollout = status.rollout.clone().unwrap_or_default();
            let done = status.observed_generation == s.metadata.generation
                && rollout.target_version.contains("6.7.1")
                && rollout.updated == rollout.total
                && rollout.total == comuni.len() as i32
                && status.ready_instances == status.desired_instances;
            if !done {
                bail!("{status:?}");
            }
            Ok(s)
        },
    )
    .await?;
    let rollout = start.elapsed();
    let rollout_wave = consorzio::render::service::max_unavailable(&rolled, comuni.len());

    let figures = Figures {
        n,
        direct_objects,
        direct,
        cold,
        cold_writes,
        cold_peak_kib,
        cold_cpu_seconds,
        onboarding,
        resync,
        resync_writes,
        resync_peak_kib,
        rollout,
        rollout_wave,
    };
    // The figures first: a long clean-up that fails must not lose them.
    println!("{}", crate::report::table(std::slice::from_ref(&figures)));
    if options.keep && Some(&n) == options.sizes.last() {
        eprintln!("[{n}] the fleet is left in place (--keep)");
        return Ok(figures);
    }
    eprintln!("[{n}] cleaning up");
    clean_up(&services).await?;
    clean_up(&municipalities).await?;
    wait_namespaces_gone(client, namespaces(comuni)).await?;
    drop(operator);
    Ok(figures)
}

/// Waves of a tenth of the fleet.
fn rollout_settings(service: &mut Value) {
    service["spec"]["rollout"] = json!({"maxUnavailable": "10%"});
    // Overrides name the catalogue's comuni; storage must fit a comune's default quota
    // (100Gi) beside the other Dedicated service.
    if let Some(spec) = service["spec"].as_object_mut() {
        spec.remove("overrides");
    }
    if service["spec"]["template"]["storage"].is_object() {
        service["spec"]["template"]["storage"]["size"] = "10Gi".into();
    }
}

async fn apply(api: &Api<Municipality>, c: &Comune) -> anyhow::Result<()> {
    api.patch(
        &c.name,
        &PatchParams::apply("consorzio-bench").force(),
        &Patch::Apply(c.manifest()),
    )
    .await?;
    Ok(())
}

/// Every comune's namespace, and the Shared service's.
fn namespaces(comuni: &[Comune]) -> HashSet<String> {
    comuni
        .iter()
        .map(|c| format!("comune-{}", c.name))
        .chain(std::iter::once(format!("shared-{}", SERVICES[2].1)))
        .collect()
}

/// Waits until `n` benchmark comuni are Ready and served by every service, and the services
/// are Ready.
async fn wait_served(client: &Client, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let served = |m: &Municipality| {
        is_ready(m)
            && m.status.as_ref().is_some_and(|s| {
                SERVICES.iter().all(|(_, name)| {
                    s.services
                        .iter()
                        .any(|e| e.name == *name && e.phase == "Ready")
                })
            })
    };
    let api = Api::<Municipality>::all(client.clone());
    let config = watcher::Config::default().labels("consorzio.io/bench=true");
    wait_count(
        api,
        config,
        n,
        timeout,
        served,
        "comuni served by every service",
    )
    .await?;
    let services = Api::<SharedService>::all(client.clone());
    for (_, name) in SERVICES {
        wait_for(&format!("{name} Ready"), timeout, || async {
            let s = services.get(name).await?;
            let status = s.status.clone().unwrap_or_default();
            let ready = status.observed_generation == s.metadata.generation
                && status.ready_instances == status.desired_instances
                && status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready {
                bail!("{status:?}");
            }
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// Watches `api` until `n` objects satisfy `done`.
async fn wait_count<K>(
    api: Api<K>,
    config: watcher::Config,
    n: usize,
    timeout: Duration,
    done: impl Fn(&K) -> bool,
    what: &str,
) -> anyhow::Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut ok = HashSet::new();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while ok.len() < n {
        tokio::select! {
            event = events.try_next() => {
                match event?.context("the watch ended")? {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                        let key = (o.namespace(), o.name_any());
                        if done(&o) { ok.insert(key); } else { ok.remove(&key); }
                    }
                    watcher::Event::Delete(o) => { ok.remove(&(o.namespace(), o.name_any())); }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
            }
            _ = &mut deadline => bail!("only {} of {n} {what} after {}s", ok.len(), timeout.as_secs()),
        }
    }
    Ok(())
}

/// When, in seconds from `started`, the namespaces and the instances' Deployments created since
/// then were created, and when those Deployments became Available: the first, median, 90th
/// percentile and last of each (the API server's timestamps are whole seconds). Tells a slow
/// client from a slow controller-manager.
async fn timeline(client: &Client, started: Timestamp) -> anyhow::Result<String> {
    let since = |t: &Time| t.0.as_second() - started.as_second();
    let spread = |mut times: Vec<i64>| {
        times.sort_unstable();
        match times.last() {
            None => "none".to_string(),
            Some(last) => {
                let at = |q: usize| times[(times.len() - 1) * q / 100];
                format!(
                    "{} at {} / {} / {} / {last} s",
                    times.len(),
                    at(0),
                    at(50),
                    at(90)
                )
            }
        }
    };
    let new = |t: &Option<Time>| t.as_ref().map(since).filter(|s| *s >= 0);
    let namespaces = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?;
    let deployments = Api::<Deployment>::all(client.clone())
        .list(&ListParams::default().labels(consorzio::render::service::SERVICE_LABEL))
        .await?;
    let created: Vec<_> = deployments
        .iter()
        .filter_map(|d| new(&d.metadata.creation_timestamp))
        .collect();
    let available = deployments
        .iter()
        .filter(|d| new(&d.metadata.creation_timestamp).is_some())
        .filter_map(|d| {
            let conditions = d.status.as_ref()?.conditions.as_ref()?;
            let c = conditions
                .iter()
                .find(|c| c.type_ == "Available" && c.status == "True")?;
            new(&c.last_transition_time)
        })
        .collect();
    Ok(format!(
        "  (first / median / 90 % / last)\n  namespaces created: {}\n  Deployments created: {}\n  Deployments Available: {}",
        spread(
            namespaces
                .items
                .iter()
                .filter_map(|ns| new(&ns.metadata.creation_timestamp))
                .collect()
        ),
        spread(created),
        spread(available),
    ))
}

/// The CPU seconds each control-plane component used since `before`.
fn cpu_used(cluster: &Cluster, before: &BTreeMap<String, f64>) -> anyhow::Result<String> {
    let now = cluster.cpu_seconds()?;
    let used: Vec<String> = now
        .iter()
        .map(|(name, s)| format!("{name} {:.1} s", s - before.get(name).unwrap_or(&0.0)))
        .collect();
    Ok(used.join(", "))
}

async fn wait_namespaces_gone(client: &Client, names: HashSet<String>) -> anyhow::Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    wait_for(
        "the benchmark's namespaces to be deleted",
        Duration::from_secs(3600),
        || async {
            let left = api
                .list_metadata(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|ns| names.contains(&ns.name_any()))
                .count();
            if left > 0 {
                bail!("{left} left");
            }
            Ok(())
        },
    )
    .await
}

/// Both timed scenarios start on a control plane started afresh: the API server keeps the last
/// scenario's watch events (at N = 500, its live heap grew from 85 MB to 717 MB through the
/// physical limit and the deletion of its namespaces) and its garbage collector scans them all
/// through the next one, which would make whichever scenario runs second the slower.
async fn restart_control_plane(cluster: &Cluster, client: &Client, n: usize) -> anyhow::Result<()> {
    eprintln!("[{n}] restarting the control plane (tests/cluster/down, up)");
    cluster.restart()?;
    wait_for(
        "the API server to answer",
        Duration::from_secs(60),
        || async {
            client.apiserver_version().await?;
            Ok(())
        },
    )
    .await
}

/// The physical limit: the objects `consorzio render` gives for the fleet and its services, and
/// the instances' credentials Secrets (see `credentials`), applied by server-side apply at the
/// operator's concurrency (namespaces first), until every Deployment is Available. Deletes them
/// afterwards. Returns the object count and the time.
async fn direct(
    cluster: &Cluster,
    client: &Client,
    fleet: &[Comune],
    selector: &Value,
    options: &Options,
) -> anyhow::Result<(usize, Duration)> {
    let mut input = vec![];
    for (from, name) in SERVICES {
        input.push(service_manifest(from, name, selector, rollout_settings)?);
    }
    input.extend(fleet.iter().map(Comune::manifest));
    let docs = render(&options.bin, &input)?;

    let mut resources: HashMap<(String, String), (ApiResource, bool)> = HashMap::new();
    let mut objects = vec![];
    // A namespace appears again for each subscription label, which another field manager
    // applies, as the operator does.
    let mut seen = HashMap::<String, usize>::new();
    let mut deployments = HashSet::new();
    let mut namespaces = HashSet::new();
    for doc in docs {
        let api_version = doc["apiVersion"]
            .as_str()
            .context("apiVersion")?
            .to_string();
        let kind = doc["kind"].as_str().context("kind")?.to_string();
        let key = (api_version.clone(), kind.clone());
        if !resources.contains_key(&key) {
            let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
            let (resource, capabilities) =
                pinned_kind(client, &GroupVersionKind::gvk(group, version, &kind)).await?;
            resources.insert(
                key.clone(),
                (resource, capabilities.scope == Scope::Namespaced),
            );
        }
        let object: DynamicObject = serde_json::from_value(doc)?;
        let id = format!(
            "{kind}/{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        );
        let occurrence = *seen.entry(id.clone()).and_modify(|n| *n += 1).or_insert(1);
        if kind == "Deployment" {
            deployments.insert((object.namespace(), object.name_any()));
        }
        let mut object = object;
        if let Some(secret) = credentials(&object) {
            let key = ("v1".to_string(), "Secret".to_string());
            resources
                .entry(key.clone())
                .or_insert_with(|| (ApiResource::erase::<Secret>(&()), true));
            objects.push((key, secret, 1));
        }
        if kind == "Namespace" && occurrence == 1 {
            namespaces.insert(object.name_any());
            object
                .labels_mut()
                .insert(DIRECT_LABEL.into(), "true".into());
        }
        objects.push((key, object, occurrence));
    }
    let count = objects.len();
    let (first, rest): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|(key, _, occurrence)| key.1 == "Namespace" && *occurrence == 1);

    let start = Instant::now();
    let started = Timestamp::now();
    let cpu = cluster.cpu_seconds()?;
    for batch in [first, rest] {
        stream::iter(batch)
            .map(|(key, object, occurrence)| {
                let (resource, namespaced) = &resources[&key];
                let api: Api<DynamicObject> = match (namespaced, object.namespace()) {
                    (true, Some(ns)) => Api::namespaced_with(client.clone(), &ns, resource),
                    _ => Api::all_with(client.clone(), resource),
                };
                let manager = match occurrence {
                    1 => "consorzio-bench-direct".to_string(),
                    k => format!("consorzio-bench-direct-{k}"),
                };
                async move {
                    api.patch(
                        &object.name_any(),
                        &PatchParams::apply(&manager).force(),
                        &Patch::Apply(&object),
                    )
                    .await
                    .with_context(|| format!("applying {} {}", key.1, object.name_any()))
                }
            })
            .buffer_unordered(options.concurrency)
            .try_collect::<Vec<_>>()
            .await?;
    }
    let available = |d: &Deployment| {
        deployments.contains(&(d.namespace(), d.name_any()))
            && d.status.as_ref().is_some_and(|s| {
                s.observed_generation == d.metadata.generation
                    && s.conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Available" && c.status == "True")
            })
    };
    let config = watcher::Config::default().labels(consorzio::render::service::SERVICE_LABEL);
    wait_count(
        Api::<Deployment>::all(client.clone()),
        config,
        deployments.len(),
        timeout(fleet.len()),
        available,
        "Deployments Available",
    )
    .await?;
    let elapsed = start.elapsed();
    eprintln!(
        "[{}] physical limit, timeline:\n{}\n  control plane CPU: {}",
        fleet.len(),
        timeline(client, started).await?,
        cpu_used(cluster, &cpu)?
    );

    let api = Api::<Namespace>::all(client.clone());
    stream::iter(namespaces.iter())
        .map(|name| {
            let api = api.clone();
            async move { api.delete(name, &DeleteParams::background()).await }
        })
        .buffer_unordered(options.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    wait_namespaces_gone(client, namespaces).await?;
    Ok((count, elapsed))
}

/// The credentials Secret the operator creates for an instance before its Deployment (whose
/// annotation names it). `consorzio render` leaves it out, as its password is random; the direct
/// client creates one like it, so that it writes the same objects as the operator.
fn credentials(deployment: &DynamicObject) -> Option<DynamicObject> {
    use consorzio::render::{
        MANAGED_BY, MUNICIPALITY_LABEL,
        service::{CREDENTIALS_ANNOTATION, SERVICE_LABEL},
    };
    let name = deployment.annotations().get(CREDENTIALS_ANNOTATION)?;
    let labels: serde_json::Map<String, Value> = deployment
        .labels()
        .iter()
        .filter(|(k, _)| [MANAGED_BY.0, SERVICE_LABEL, MUNICIPALITY_LABEL].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.as_str().into()))
        .collect();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": deployment.namespace(), "labels": labels},
        "data": {"CONSORZIO_PASSWORD": BASE64_32},
    });
    serde_json::from_value(secret).ok()
}

/// 32 alphanumeric characters, base64-encoded: the size of a generated password.
const BASE64_32: &str = "YmVuY2hiZW5jaGJlbmNoYmVuY2hiZW5jaGJlbmNoYmU=";

/// `consorzio render` of the given objects.
fn render(bin: &Path, input: &[Value]) -> anyhow::Result<Vec<Value>> {
    let mut text = String::new();
    for value in input {
        text.push_str("---\n");
        text.push_str(&serde_json::to_string(value)?);
        text.push('\n');
    }
    let file =
        std::env::temp_dir().join(format!("consorzio-bench-fleet-{}.yaml", std::process::id()));
    std::fs::write(&file, text)?;
    let output = std::process::Command::new(bin)
        .args(["render", "-f"])
        .arg(&file)
        .args(["--pod-toleration", "kwok.x-k8s.io/node:NoSchedule"])
        .output()
        .with_context(|| format!("running {} render", bin.display()))?;
    let _ = std::fs::remove_file(&file);
    if !output.status.success() {
        bail!(
            "consorzio render failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    yaml_documents(&String::from_utf8(output.stdout)?)
}
