//! API writes caused by one comune joining services that already serve a fleet of comuni: a
//! Dedicated one (an instance in each comune) and a Shared one (an access point in each).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use consorzio_api::{Municipality, SharedService};
use consorzio_testkit::example_manifests;
use futures::{StreamExt, TryStreamExt, stream};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};

use consorzio_testkit::OperatorProcess;

use crate::{apply, is_ready};

/// The services of the benchmark: catalogue entries renamed, for the comuni of union `bench`.
const SERVICES: [(&str, &str); 2] = [
    ("sito-comunale", "bench-dedicated"),
    ("sit", "bench-shared"),
];

async fn apply_services(client: &Client) -> anyhow::Result<()> {
    let api = Api::<SharedService>::all(client.clone());
    let catalogue = example_manifests()?;
    for (from, name) in SERVICES {
        let mut value = catalogue
            .iter()
            .find(|v| v["kind"] == "SharedService" && v["metadata"]["name"] == from)
            .with_context(|| format!("{from} in the catalogue"))?
            .clone();
        value["metadata"] =
            serde_json::json!({"name": name, "labels": {"consorzio.io/bench": "true"}});
        value["spec"]["municipalities"] =
            serde_json::json!({"selector": {"matchLabels": {"consorzio.io/union": "bench"}}});
        // Benchmark data is not worth keeping.
        if value["spec"]["template"]["storage"].is_object() {
            value["spec"]["template"]["storage"]["reclaimPolicy"] = "Delete".into();
        }
        api.patch(
            name,
            &PatchParams::apply("consorzio-bench").force(),
            &Patch::Apply(value),
        )
        .await?;
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

/// The operator's writes so far, by kind.
async fn writes(operator: &OperatorProcess) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = operator.metrics().await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("consorzio_api_writes_total{kind=\"") else {
            continue;
        };
        let (kind, value) = rest.split_once("\"}").context("malformed sample")?;
        let value: f64 = value.trim().parse()?;
        out.insert(kind.to_string(), value as u64);
    }
    Ok(out)
}

/// Waits until the operator has written nothing for 5 s, and returns its writes.
async fn quiet(operator: &OperatorProcess) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut last = writes(operator).await?;
    let mut still = 0;
    while still < 5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = writes(operator).await?;
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    Ok(last)
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
        let before = quiet(operator).await?;
        let grown = start.elapsed();

        let joiner = format!("bench-join-{size}");
        let start = Instant::now();
        apply(&api, &joiner).await?;
        wait_converged(&client, size + 1).await?;
        let served = start.elapsed();
        let after = quiet(operator).await?;
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
