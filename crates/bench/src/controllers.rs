//! The controllers' own benchmarks (`make bench-controllers`): onboarding latency one comune at
//! a time, and the operator's memory with a fleet of comuni. (`join` is in join.rs.)

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::bail;
use consorzio_api::Municipality;
use consorzio_testkit::OperatorProcess;
use futures::{StreamExt, TryStreamExt, stream};
use kube::{Api, Client, api::ListParams};

use crate::{apply, is_ready, percentile, ready};

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

pub(crate) fn onboarding_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("bench-onboard-{i}")).collect()
}

pub(crate) async fn onboarding(client: Client, n: usize) -> anyhow::Result<()> {
    let api = Api::<Municipality>::all(client);
    let names = onboarding_names(n);
    let mut ready =
        ready::ReadyTimes::start(api.clone(), names.iter().cloned().collect::<HashSet<_>>())
            .await?;
    let mut latencies = vec![];
    for name in &names {
        let applied = Instant::now();
        apply(&api, name).await?;
        let at = ready.wait(name, Duration::from_secs(60)).await?;
        latencies.push(at.saturating_duration_since(applied));
    }
    latencies.sort();
    println!(
        "onboarding latency, apply -> Ready=True (the watch event), {n} comuni one at a time:"
    );
    println!(
        "  median {}  p95 {}  p99 {}  max {}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.95)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0))
    );
    Ok(())
}

pub(crate) fn memory_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("bench-fleet-{i}")).collect()
}

pub(crate) async fn memory(
    client: Client,
    operator: &OperatorProcess,
    n: usize,
) -> anyhow::Result<()> {
    let api = Api::<Municipality>::all(client);
    let start = Instant::now();
    stream::iter(memory_names(n))
        .map(|name| {
            let api = api.clone();
            async move { apply(&api, &name).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let list = api
            .list(&ListParams::default().labels("consorzio.io/bench=true"))
            .await?;
        let ready = list.iter().filter(|m| is_ready(m)).count();
        if ready >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {n} comuni Ready after 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converged = start.elapsed();
    // Let the quota controller's status updates settle, then read the memory.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, peak) = operator.memory_kib()?;
    let writes: f64 = operator
        .metrics()
        .await?
        .lines()
        .filter(|l| l.starts_with("consorzio_api_writes_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!(
        "{n} comuni applied and Ready in {:.1} s; {writes} API writes by the operator ({:.1} per comune)",
        converged.as_secs_f64(),
        writes / n as f64
    );
    println!(
        "operator memory with {n} comuni: RSS {:.1} MiB, peak RSS {:.1} MiB",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}
