//! The scenarios of `consorzio-bench fleet` at one fleet size, in the order they run.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use consorzio_api::{Municipality, SharedService};
use consorzio_testkit::{Cluster, wait_for};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

use crate::{
    SETTLE_QUIET, apply_service, clean_up,
    comuni::Comune,
    direct::Direct,
    fleet::{
        Figures, NEW_IMAGE, Options, ROLLED, SERVICES, rollout_settings, start_operator, timeout,
    },
    ready::ReadyTimes,
    timeline,
    waits::{restart_control_plane, wait_namespaces_gone, wait_served},
};

/// The five scenarios at fleet size `n` (`comuni` holds the fleet and the comuni onboarded after
/// it).
pub(crate) async fn measure(
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

    // 2. The physical limit, first, on a cluster without the fleet: at each number of requests
    // in flight, each run on a control plane started afresh and the fleet deleted after it.
    let direct = Direct::prepare(client, &options.bin, fleet, &selector).await?;
    let direct_objects = direct.objects();
    let mut direct_runs = vec![];
    for &concurrency in &options.direct_concurrency {
        restart_control_plane(cluster, client, n).await?;
        eprintln!(
            "[{n}] physical limit: applying `consorzio render` output directly, {concurrency} in flight"
        );
        let time = direct.run(cluster, client, concurrency).await?;
        eprintln!(
            "[{n}] physical limit, {concurrency} in flight: {direct_objects} objects in {time:?}"
        );
        direct_runs.push((concurrency, time));
    }
    if let Some((concurrency, time)) = direct_runs.iter().min_by_key(|(_, time)| *time) {
        eprintln!("[{n}] physical limit: {time:?}, the fastest, at {concurrency} in flight");
    }

    // 1. Cold start. The clock starts once the operator leads with its caches filled, as the
    // physical limit's starts with its first request; the time from its process start is
    // reported too.
    restart_control_plane(cluster, client, n).await?;
    eprintln!("[{n}] cold start");
    let launched = Instant::now();
    let mut operator = start_operator(cluster, options)?;
    operator.wait_leading().await?;
    eprintln!(
        "[{n}] cold start: the operator leads with its caches filled {:?} after its start",
        launched.elapsed()
    );
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
    let (cold, cold_from_process) = (start.elapsed(), launched.elapsed());
    eprintln!(
        "[{n}] cold start, timeline:\n{}\n  control plane CPU: {}; operator CPU: {:.1} s",
        timeline::timeline(client, started).await?,
        timeline::cpu_used(cluster, &cpu)?,
        operator.cpu_seconds()?
    );
    // Its deferred writes count too.
    let by_kind = operator.quiet_for(SETTLE_QUIET).await?;
    let cold_writes = by_kind.values().sum();
    eprintln!("[{n}] cold start: {cold:?}, operator writes by kind: {by_kind:?}");
    let metrics = cluster.dir.join(format!("logs/bench-metrics-{n}.txt"));
    std::fs::write(&metrics, operator.metrics().await?)
        .with_context(|| format!("writing {}", metrics.display()))?;
    eprintln!(
        "[{n}] cold start: the operator's metrics are in {}",
        metrics.display()
    );
    let cold_peak_kib = operator.memory_kib()?.1;
    let cold_cpu_seconds = operator.cpu_seconds()?;

    // 3. Steady onboarding, one comune at a time, each timed from just before its apply to the
    // watch event that shows it Ready.
    eprintln!("[{n}] onboarding {} comuni one at a time", joiners.len());
    let names = joiners.iter().map(|c| c.name.clone()).collect();
    let mut ready = ReadyTimes::start(municipalities.clone(), names).await?;
    let mut onboarding = vec![];
    for c in joiners {
        let applied = Instant::now();
        apply(&municipalities, c).await?;
        let at = ready.wait(&c.name, Duration::from_secs(60)).await?;
        onboarding.push(at.saturating_duration_since(applied));
    }
    drop(ready);
    onboarding.sort();
    wait_served(client, comuni.len(), timeout(n)).await?;
    // Converged: the deferred writes done, so that a new operator finds nothing to write.
    operator.quiet_for(SETTLE_QUIET).await?;

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
    eprintln!(
        "[{n}] no-op resync: every object reconciled in {resync:?}; counting writes once none \
         for {} s",
        options.resync_quiet
    );
    let resync_writes = operator
        .quiet_for(options.resync_quiet)
        .await?
        .values()
        .sum();
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
        direct_runs,
        cold,
        cold_from_process,
        cold_writes,
        cold_peak_kib,
        cold_cpu_seconds,
        onboarding,
        resync,
        resync_quiet: options.resync_quiet,
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
