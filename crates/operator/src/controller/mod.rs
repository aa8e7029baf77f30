//! The reconcilers, and the caches of the objects they manage.

mod apply;
mod error;
mod municipality;
mod status;

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, channel::mpsc};
use k8s_openapi::api::{
    core::v1::{LimitRange, Namespace, ResourceQuota},
    networking::v1::NetworkPolicy,
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use apply::{FIELD_MANAGER, contains};
pub use error::Error;

use crate::{
    metrics::Metrics,
    render::{Config, MANAGED_BY, MUNICIPALITY_LABEL, Rendered},
};
use consorzio_api::Municipality;

/// What every reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The operator's settings.
    pub config: Config,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Caches of the managed objects.
    pub stores: Stores,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish()
    }
}

/// Watch-backed caches of every object the operator manages (label
/// `app.kubernetes.io/managed-by=consorzio`), without their managedFields to save memory.
#[derive(Clone, Debug)]
pub struct Stores {
    /// Comuni's (and shared services') namespaces.
    pub namespaces: Store<Namespace>,
    /// Resource quotas.
    pub quotas: Store<ResourceQuota>,
    /// Limit ranges.
    pub limit_ranges: Store<LimitRange>,
    /// Network policies.
    pub network_policies: Store<NetworkPolicy>,
    /// Role bindings.
    pub role_bindings: Store<RoleBinding>,
}

fn cached_value<K: Resource<DynamicType = ()> + Clone + serde::Serialize>(
    store: &Store<K>,
    name: &str,
    namespace: Option<&str>,
) -> Option<Value> {
    let mut key = ObjectRef::<K>::new(name);
    if let Some(ns) = namespace {
        key = key.within(ns);
    }
    store
        .get(&key)
        .and_then(|obj| serde_json::to_value(obj.as_ref()).ok())
}

impl Stores {
    /// The cluster's copy of a rendered object, if the caches hold one.
    pub fn cached(&self, rendered: &Rendered) -> Option<Value> {
        let name = rendered.object.name_any();
        let ns = rendered.object.namespace();
        let ns = ns.as_deref();
        match rendered.resource.kind.as_str() {
            "Namespace" => cached_value(&self.namespaces, &name, None),
            "ResourceQuota" => cached_value(&self.quotas, &name, ns),
            "LimitRange" => cached_value(&self.limit_ranges, &name, ns),
            "NetworkPolicy" => cached_value(&self.network_policies, &name, ns),
            "RoleBinding" => cached_value(&self.role_bindings, &name, ns),
            _ => None,
        }
    }

    async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.namespaces.wait_until_ready().await?;
        self.quotas.wait_until_ready().await?;
        self.limit_ranges.wait_until_ready().await?;
        self.network_policies.wait_until_ready().await?;
        self.role_bindings.wait_until_ready().await
    }
}

/// Starts a cache of the managed objects of kind `K`. Every change to one of them asks for a
/// reconcile of the Municipality it belongs to, through `trigger`.
fn watch_managed<K>(
    client: &Client,
    trigger: mpsc::UnboundedSender<ObjectRef<Municipality>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let stream = watcher(Api::<K>::all(client.clone()), config)
        .default_backoff()
        .modify(|obj| obj.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(obj) => {
                    if let Some(owner) = obj.labels().get(MUNICIPALITY_LABEL) {
                        let _ = trigger.unbounded_send(ObjectRef::new(owner));
                    }
                }
                Err(error) => {
                    tracing::warn!(kind = %K::kind(&()), %error, "watch failed, retrying")
                }
            }
        }
    });
    reader
}

impl Context {
    /// Starts the caches and waits until each has listed its objects once, so that the first
    /// reconciles compare against the real cluster and write nothing that is already there.
    pub async fn start(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(
        Arc<Context>,
        mpsc::UnboundedReceiver<ObjectRef<Municipality>>,
    )> {
        let (trigger, triggered) = mpsc::unbounded();
        let stores = Stores {
            namespaces: watch_managed(&client, trigger.clone()),
            quotas: watch_managed(&client, trigger.clone()),
            limit_ranges: watch_managed(&client, trigger.clone()),
            network_policies: watch_managed(&client, trigger.clone()),
            role_bindings: watch_managed(&client, trigger),
        };
        stores.wait_until_ready().await?;
        let reporter = Reporter {
            controller: "consorzio".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let ctx = Context {
            client,
            config,
            metrics,
            stores,
            recorder,
            failures: Mutex::default(),
        };
        Ok((Arc::new(ctx), triggered))
    }

    /// How long to wait before retrying an object that failed `n` times in a row: 1 s, doubling,
    /// at most 5 minutes.
    fn backoff(&self, key: &str) -> Duration {
        let Ok(mut failures) = self.failures.lock() else {
            return Duration::from_secs(5);
        };
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    fn succeeded(&self, key: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }
}

pub use municipality::run as run_municipalities;
