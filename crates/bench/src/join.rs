//! API writes caused by one comune joining services that already serve a fleet of comuni: a
//! Dedicated one (an instance in each comune) and a Shared one (an access point in each).
//!
//! The count must not grow with the fleet: the run fails when a join at the largest size takes
//! more than `--tolerance` writes more, or fewer, than a join at the smallest.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::bail;
use consorzio_api::Municipality;
use futures::{StreamExt, TryStreamExt, stream};
use kube::{Api, Client, api::ListParams};

use consorzio_testkit::OperatorProcess;

use crate::{SETTLE_QUIET, apply, apply_service, is_ready};

/// How many writes a join may differ by from size to size with nothing growing with the fleet.
/// The comune's status and each service's status are written once their changes settle
/// (a service's counts at most every 5 s, the comune's entries once its instances arrive), so
/// one join may take a write more or fewer of each of those three objects than another, by
/// timing alone. Anything that grows with the fleet, a write per comune already served, adds
/// at least as many writes as the sizes differ by, 990 between 10 and 1,000 comuni.
pub const TOLERANCE: u64 = 3;

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

/// The names of every comune a run through `sizes` creates: the fleet grows by
/// `bench-join-<i>`, and at each size `bench-join-<size>` joins.
pub fn names(sizes: &[usize]) -> Vec<String> {
    let last = sizes.iter().max().copied().unwrap_or(0);
    (0..=last).map(|i| format!("bench-join-{i}")).collect()
}

/// Grows the fleet through `sizes`; at each size, one more comune joins and its writes are
/// counted. Fails when the writes of a join at the largest size differ from those at the
/// smallest by more than `tolerance`.
pub async fn run(
    client: Client,
    operator: &OperatorProcess,
    sizes: &[usize],
    tolerance: u64,
) -> anyhow::Result<()> {
    if sizes.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--sizes must increase: {sizes:?}");
    }
    let api = Api::<Municipality>::all(client.clone());
    let _databases = consorzio_testkit::OperatorPlayer::start(client.clone());
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
        // The growth's deferred writes (quota usage) are done before counting starts, and the
        // join's are done before counting ends.
        let before = operator.quiet_for(SETTLE_QUIET).await?;
        let grown = start.elapsed();

        let joiner = format!("bench-join-{size}");
        let start = Instant::now();
        apply(&api, &joiner).await?;
        wait_converged(&client, size + 1).await?;
        let served = start.elapsed();
        let after = operator.quiet_for(SETTLE_QUIET).await?;
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
        rows.push((size, total, by_kind));
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
    for (size, total, _) in &rows {
        println!("  {size:>6} comuni: {total} writes");
    }
    check_constant(&rows, tolerance)
}

/// Whether the writes of a join at the largest size are within `tolerance` of those at the
/// smallest; the error names both, kind by kind.
fn check_constant(
    rows: &[(usize, u64, BTreeMap<String, u64>)],
    tolerance: u64,
) -> anyhow::Result<()> {
    let (Some(smallest), Some(largest)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    let difference = smallest.1.abs_diff(largest.1);
    if difference <= tolerance {
        println!(
            "constant writes per join: {} at {} comuni, {} at {} (tolerance {tolerance})",
            smallest.1, smallest.0, largest.1, largest.0
        );
        return Ok(());
    }
    let kinds = |by_kind: &BTreeMap<String, u64>| {
        by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    bail!(
        "writes per join are not constant: {} at {} comuni ({}) but {} at {} comuni ({}), \
         {difference} apart where at most {tolerance} are allowed (--tolerance). Look for \
         the kind that grew: something the operator writes for each comune it already serves.",
        smallest.1,
        smallest.0,
        kinds(&smallest.2),
        largest.1,
        largest.0,
        kinds(&largest.2),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(size: usize, writes: &[(&str, u64)]) -> (usize, u64, BTreeMap<String, u64>) {
        let by_kind: BTreeMap<String, u64> =
            writes.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        (size, by_kind.values().sum(), by_kind)
    }

    #[test]
    fn writes_per_join_within_the_tolerance_pass() {
        let rows = [
            row(
                10,
                &[("Deployment", 1), ("Municipality", 3), ("SharedService", 2)],
            ),
            row(
                100,
                &[("Deployment", 1), ("Municipality", 4), ("SharedService", 3)],
            ),
            row(
                1000,
                &[("Deployment", 1), ("Municipality", 4), ("SharedService", 4)],
            ),
        ];
        check_constant(&rows, TOLERANCE).unwrap();
    }

    #[test]
    fn writes_per_join_that_grow_with_the_fleet_fail_naming_the_kinds() {
        let rows = [
            row(10, &[("Deployment", 1), ("Municipality", 3)]),
            row(
                1000,
                &[
                    ("Deployment", 1),
                    ("Municipality", 3),
                    ("NetworkPolicy", 1000),
                ],
            ),
        ];
        let error = check_constant(&rows, TOLERANCE).unwrap_err().to_string();
        assert!(error.contains("4 at 10 comuni"), "{error}");
        assert!(error.contains("1004 at 1000 comuni"), "{error}");
        assert!(error.contains("NetworkPolicy 1000"), "{error}");
    }

    #[test]
    fn the_names_cover_the_growing_fleet_and_every_joiner() {
        let names = names(&[2, 4]);
        assert_eq!(names.first().map(String::as_str), Some("bench-join-0"));
        assert_eq!(names.last().map(String::as_str), Some("bench-join-4"));
        assert_eq!(names.len(), 5);
    }
}
