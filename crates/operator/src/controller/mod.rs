//! The reconcilers, and the caches of the objects they manage.

mod apply;
mod error;
mod municipality;
mod object;
mod service;
mod status;

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, channel::mpsc};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, LimitRange, Namespace, PersistentVolumeClaim, ResourceQuota, Service},
    networking::v1::{Ingress, NetworkPolicy},
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        WatchStreamExt,
        controller::Action,
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
    metrics::{ControllerName, Metrics},
    render::{Config, MANAGED_BY, MUNICIPALITY_LABEL, Rendered, service::SERVICE_LABEL},
};
use consorzio_api::{Municipality, SharedService};

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
    /// When each comune's status was last written (see `Context::usage_write_wait`).
    status_written: Mutex<HashMap<String, Instant>>,
    /// When each service's last pass ended, and how long it took.
    passes: Mutex<HashMap<String, (Instant, Duration)>>,
    /// Since when each instance (`service/comune`) has been on its way, not yet reported.
    in_progress: Mutex<HashMap<String, Instant>>,
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
    /// Application Deployments.
    pub deployments: Store<Deployment>,
    /// Application Services.
    pub services: Store<Service>,
    /// Application Ingresses.
    pub ingresses: Store<Ingress>,
    /// Application volume claims.
    pub volume_claims: Store<PersistentVolumeClaim>,
    /// Application settings.
    pub config_maps: Store<ConfigMap>,
    /// Every Municipality, as its controller sees it.
    pub municipalities: Store<DeserializeGuard<Municipality>>,
    /// Every Municipality, as the SharedService controller sees it: its own watch, so that a
    /// reconcile triggered by a comune's change always finds that change in the cache.
    pub comuni: Store<DeserializeGuard<Municipality>>,
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
            "Deployment" => cached_value(&self.deployments, &name, ns),
            "Service" => cached_value(&self.services, &name, ns),
            "Ingress" => cached_value(&self.ingresses, &name, ns),
            "PersistentVolumeClaim" => cached_value(&self.volume_claims, &name, ns),
            "ConfigMap" => cached_value(&self.config_maps, &name, ns),
            _ => None,
        }
    }

    async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.namespaces.wait_until_ready().await?;
        self.quotas.wait_until_ready().await?;
        self.limit_ranges.wait_until_ready().await?;
        self.network_policies.wait_until_ready().await?;
        self.role_bindings.wait_until_ready().await?;
        self.deployments.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.ingresses.wait_until_ready().await?;
        self.volume_claims.wait_until_ready().await?;
        self.config_maps.wait_until_ready().await
    }
}

/// Where changes of managed objects are sent: to the Municipality or SharedService they belong to.
#[derive(Clone)]
struct Senders {
    municipalities: mpsc::UnboundedSender<ObjectRef<Municipality>>,
    services: mpsc::UnboundedSender<ObjectRef<SharedService>>,
}

impl Senders {
    fn notify(&self, labels: &std::collections::BTreeMap<String, String>) {
        if let Some(service) = labels.get(SERVICE_LABEL) {
            let _ = self.services.unbounded_send(ObjectRef::new(service));
        } else if let Some(owner) = labels.get(MUNICIPALITY_LABEL) {
            let _ = self.municipalities.unbounded_send(ObjectRef::new(owner));
        }
    }
}

/// What the controllers are asked to reconcile, beyond changes of their own objects.
#[derive(Debug)]
pub struct Triggers {
    /// Municipalities whose managed objects changed.
    pub municipalities: mpsc::UnboundedReceiver<ObjectRef<Municipality>>,
    /// SharedServices whose instances changed.
    pub services: mpsc::UnboundedReceiver<ObjectRef<SharedService>>,
}

/// Every watch lists its objects 50 at a time. Each object arrives with its managedFields, as
/// large as the object itself, and read into a JSON tree before they are dropped: with the
/// default pages of 500, a restart on 350 comuni peaked at 87 MiB instead of 65.
fn list_config() -> watcher::Config {
    watcher::Config::default().page_size(50)
}

fn managed() -> watcher::Config {
    list_config().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
}

/// The longest a service's pass waits after the previous one.
const MAX_COOLDOWN: Duration = Duration::from_secs(5);

/// How often a comune's status may be written when only its quota changed.
const USAGE_REFRESH: Duration = Duration::from_secs(30);

/// How long an instance on its way (Pending, Updating) goes unreported: most are Ready sooner,
/// and then the comune's status is written once instead of two or three times.
const PROGRESS_HOLD: Duration = Duration::from_secs(10);

/// Drives a watch stream in its own task, telling `senders` about every object it sees.
fn drive<K, S>(stream: S, senders: Senders)
where
    K: Resource<DynamicType = ()> + Send + 'static,
    S: futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(obj) => senders.notify(obj.labels()),
                Err(error) => {
                    tracing::warn!(kind = %K::kind(&()), %error, "watch failed, retrying")
                }
            }
        }
    });
}

/// Starts a cache of the managed objects of kind `K`.
fn watch_managed<K>(client: &Client, senders: &Senders) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<K>::all(client.clone()), managed())
        .default_backoff()
        .modify(|obj| obj.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    drive(stream, senders.clone());
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
        Triggers,
        municipality::Events,
        municipality::Events,
    )> {
        let (municipalities, municipalities_rx) = mpsc::unbounded();
        let (services, services_rx) = mpsc::unbounded();
        let senders = Senders {
            municipalities,
            services,
        };
        let (municipality_store, municipality_events) = municipality::watch(&client);
        let (comuni, comuni_events) = municipality::watch(&client);
        let stores = Stores {
            namespaces: watch_managed(&client, &senders),
            quotas: watch_managed(&client, &senders),
            limit_ranges: watch_managed(&client, &senders),
            network_policies: watch_managed(&client, &senders),
            role_bindings: watch_managed(&client, &senders),
            deployments: watch_managed(&client, &senders),
            services: watch_managed(&client, &senders),
            ingresses: watch_managed(&client, &senders),
            volume_claims: watch_managed(&client, &senders),
            config_maps: watch_managed(&client, &senders),
            municipalities: municipality_store,
            comuni,
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
            status_written: Mutex::default(),
            passes: Mutex::default(),
            in_progress: Mutex::default(),
        };
        let triggers = Triggers {
            municipalities: municipalities_rx,
            services: services_rx,
        };
        Ok((Arc::new(ctx), triggers, municipality_events, comuni_events))
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

    /// A comune's quota usage changes with every object created in its namespace. When nothing
    /// else in its status changed, the usage is written at most every `USAGE_REFRESH` (metrics
    /// have it live): `None` means write now, `Some(wait)` to try again after `wait`.
    fn usage_write_wait(&self, municipality: &str) -> Option<Duration> {
        let written = self.status_written.lock().ok()?;
        let since = written.get(municipality)?.elapsed();
        USAGE_REFRESH
            .checked_sub(since)
            .filter(|wait| !wait.is_zero())
    }

    /// Records that a comune's status was written now.
    fn status_written(&self, municipality: &str) {
        if let Ok(mut written) = self.status_written.lock() {
            written.insert(municipality.to_string(), Instant::now());
        }
    }

    /// How long a service's next pass should wait: as long as its last one took, at most 5 s,
    /// counted from when that one ended.
    fn pass_cooldown(&self, service: &str) -> Option<Duration> {
        let passes = self.passes.lock().ok()?;
        let (ended, took) = passes.get(service)?;
        (*took)
            .min(MAX_COOLDOWN)
            .checked_sub(ended.elapsed())
            .filter(|wait| !wait.is_zero())
    }

    /// Records a service's pass.
    fn pass_done(&self, service: &str, took: Duration) {
        if let Ok(mut passes) = self.passes.lock() {
            passes.insert(service.to_string(), (Instant::now(), took));
        }
    }

    /// Whether an instance on its way (`key`: `service/comune`) has been so for `PROGRESS_HOLD`
    /// and should now be reported; `on_way: false` says it arrived, and forgets it.
    fn progress_due(&self, key: &str, on_way: bool) -> bool {
        let Ok(mut since) = self.in_progress.lock() else {
            return true;
        };
        if !on_way {
            since.remove(key);
            return true;
        }
        since
            .entry(key.to_string())
            .or_insert_with(Instant::now)
            .elapsed()
            >= PROGRESS_HOLD
    }

    fn succeeded(&self, key: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }
}

/// Reconciles a readable object with `work`, timed and counted under `controller`. An object
/// these types cannot read (e.g. written under an older CRD) is logged and waits for a change:
/// the rest of the fleet goes on.
async fn reconcile_guarded<'a, K, Fut>(
    guard: &'a DeserializeGuard<K>,
    ctx: &Context,
    controller: ControllerName,
    work: impl FnOnce(&'a K) -> Fut,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    Fut: Future<Output = Result<Action, Error>>,
{
    let _timer = ctx.metrics.reconcile_started(controller);
    let name = guard.name_any();
    let obj = match &guard.0 {
        Ok(obj) => obj,
        Err(invalid) => {
            tracing::warn!(kind = %K::kind(&()), %name, error = %invalid, "cannot read object");
            ctx.metrics
                .reconcile_finished(controller, Some("malformed"));
            return Ok(Action::await_change());
        }
    };
    tracing::debug!(kind = %K::kind(&()), %name, "reconcile started");
    let result = work(obj).await;
    tracing::debug!(kind = %K::kind(&()), %name, ok = result.is_ok(), "reconcile finished");
    ctx.metrics
        .reconcile_finished(controller, result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        ctx.succeeded(&format!("{controller:?}/{name}"));
    }
    result
}

/// Logs what the controller machinery reports beyond our own reconcile errors (which the error
/// policy handles), such as a watch that failed.
async fn log_outcome<K, E>(
    outcome: Result<
        (ObjectRef<K>, Action),
        kube::runtime::controller::Error<E, kube::runtime::watcher::Error>,
    >,
) where
    K: Resource,
    E: std::error::Error + 'static,
{
    use kube::runtime::controller::Error as E;
    match outcome {
        Ok(_) | Err(E::ReconcilerFailed(..)) => {}
        // A deleted object's instances, going away after it, still ask for it.
        Err(error @ E::ObjectNotFound(_)) => tracing::debug!(%error, "controller"),
        Err(error) => tracing::warn!(%error, "controller"),
    }
}

/// After a failed reconcile: permanent errors wait for the object to change, transient ones are
/// retried with a per-object backoff.
fn retry_policy<K>(
    guard: &DeserializeGuard<K>,
    error: &Error,
    ctx: &Context,
    controller: ControllerName,
) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let name = guard.name_any();
    tracing::warn!(?controller, %name, error = %error, source = ?std::error::Error::source(error), "reconcile failed");
    if error.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(ctx.backoff(&format!("{controller:?}/{name}")))
    }
}

pub use municipality::run as run_municipalities;
pub use service::run as run_services;
