//! Waiting for the cluster to reach a state the benchmark measures up to: every comune served,
//! every Deployment Available, namespaces gone, the control plane restarted. Comuni and
//! Deployments, which stop a scenario's clock, are counted from watches, so that the moment
//! the last one gets there is seen as it happens, not at the next poll.

use std::{collections::HashSet, time::Duration};

use anyhow::{Context, bail};
use consorzio_api::{Municipality, SharedService};
use consorzio_testkit::{Cluster, wait_for};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::ListParams,
    runtime::{WatchStreamExt, watcher},
};

use crate::{fleet::SERVICES, is_ready};

/// Waits until `n` benchmark comuni are Ready and served by every service, and the services
/// are Ready.
pub async fn wait_served(client: &Client, n: usize, timeout: Duration) -> anyhow::Result<()> {
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
pub async fn wait_count<K>(
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

pub async fn wait_namespaces_gone(client: &Client, names: HashSet<String>) -> anyhow::Result<()> {
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

/// Each timed run (every run of the physical limit, the cold start) starts on a control plane
/// started afresh: the API server keeps the last run's watch events (at N = 500, its live heap
/// grew from 85 MB to 717 MB through the physical limit and the deletion of its namespaces) and
/// its garbage collector scans them all through the next one, which would make whichever run
/// comes later the slower.
pub async fn restart_control_plane(
    cluster: &Cluster,
    client: &Client,
    n: usize,
) -> anyhow::Result<()> {
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
