//! API writes caused by one comune joining services that already serve a fleet of comuni: a
//! Dedicated one (an instance in each comune) and a Shared one (an access point in each).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::bail;
use consorzio_api::Municipality;
use futures::{StreamExt, TryStreamExt, stream};
use kube::{Api, Client, api::ListParams};

use consorzio_testkit::OperatorProcess;

use crate::{apply, apply_service, is_ready};

/// The services of the benchmark: catalogue entries renamed, for the comuni of union `bench`.
const SERVICES: [(&str, &str); 2] = [
    ("sito-comunale", "bench-dedicated"),
    ("sit", "bench-shared"),
];

async fn apply_services(client: &Client) -> anyhow::Result<()> {
    let selector = serde_json::json!({"matchLabels": {"consorzio.io/union": "bench"}});
    for (from, name) in SERVICES {
        apply_service(client, from, name, &selector, |_| {}).await?;
    }
    Ok(())
}

/// Waits until `n` comuni are Ready and both services report every comune's instance Ready.
async fn wait_converged(client: &Client, n: usize) -> anyhow::Result<()> {
    let municipalities = Api::<Municipality>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let list = municipalities
            .list(&ListParams::default().labels("consorzio.io/bench=true"))
            .await?;
        let served = list
            .iter()
            .filter(|m| is_ready(m))
            .filter(|m| {
                let services = m.status.as_ref().map(|s| &s.services);
                SERVICES.iter().all(|(_, name)| {
                    services.is_some_and(|list| {
                        list.iter().any(|e| e.name == *name && e.phase == "Ready")
                    })
                })
            })
            .count();
        if served >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {served} of {n} comuni served after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn difference(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Grows the fleet through `sizes`; at each size, one more comune joins and its writes are
/// counted.
pub async fn run(
    client: Client,
    operator: &OperatorProcess,
    sizes: &[usize],
) -> anyhow::Result<()> {
    let api = Api::<Municipality>::all(client.clone());
    apply_services(&client).await?;
    let mut fleet = 0;
    let mut rows = vec![];
    for &size in sizes {
        let start = Instant::now();
        stream::iter(fleet..size)
            .map(|i| {
                let api = api.clone();
                async move { apply(&api, &format!("bench-join-{i}")).await }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        wait_converged(&client, size).await?;
        let before = operator.quiet().await?;
        let grown = start.elapsed();

        let joiner = format!("bench-join-{size}");
        let start = Instant::now();
        apply(&api, &joiner).await?;
        wait_converged(&client, size + 1).await?;
        let served = start.elapsed();
        let after = operator.quiet().await?;
        fleet = size + 1;

        let by_kind = difference(&after, &before);
        let total: u64 = by_kind.values().sum();
        println!(
            "fleet {size}: grown and served in {:.1} s; comune {joiner} joined, served by both services in {:.2} s, {total} writes: {}",
            grown.as_secs_f64(),
            served.as_secs_f64(),
            by_kind
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        rows.push((size, total));
        let listed = api
            .get(&joiner)
            .await?
            .status
            .map_or(0, |s| s.services.len());
        if listed != SERVICES.len() {
            bail!("{joiner} lists {listed} services, not {}", SERVICES.len());
        }
    }
    println!("writes caused by one comune joining, by fleet size:");
    for (size, total) in &rows {
        println!("  {size:>6} comuni: {total} writes");
    }
    Ok(())
}
