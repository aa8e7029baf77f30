//! Where a scenario's time went: when namespaces and Deployments were created and became
//! Available, and the CPU each control-plane component used. Tells a slow client from a slow
//! controller-manager, and a saturated machine from an idle one.

use std::collections::BTreeMap;

use consorzio_testkit::Cluster;
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Namespace},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{Api, Client, api::ListParams};

/// When, in seconds from `started`, the namespaces and the instances' Deployments created since
/// then were created, and when those Deployments became Available: the first, median, 90th
/// percentile and last of each (the API server's timestamps are whole seconds). Tells a slow
/// client from a slow controller-manager.
pub async fn timeline(client: &Client, started: Timestamp) -> anyhow::Result<String> {
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
pub fn cpu_used(cluster: &Cluster, before: &BTreeMap<String, f64>) -> anyhow::Result<String> {
    let now = cluster.cpu_seconds()?;
    let used: Vec<String> = now
        .iter()
        .map(|(name, s)| format!("{name} {:.1} s", s - before.get(name).unwrap_or(&0.0)))
        .collect();
    Ok(used.join(", "))
}
