//! The reconcilers, and the caches of the objects they manage.

mod apply;
mod cache;
mod error;
mod municipality;
mod object;
mod service;
mod status;
mod statuses;

use std::{
    collections::{HashMap, HashSet},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt, channel::mpsc};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{
        ConfigMap, LimitRange, Namespace, PersistentVolumeClaim, ResourceQuota, Service,
        ServiceAccount,
    },
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
pub use cache::Cached;
pub use error::Error;
use service::Went;

use crate::{
    metrics::{ControllerName, Metrics},
    render::{Config, MANAGED_BY, MUNICIPALITY_LABEL, Rendered, service::SERVICE_LABEL},
};
use consorzio_api::{Municipality, ServiceInstanceStatus, SharedService};

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
    /// Each service's last pass.
    passes: Mutex<HashMap<String, Pass>>,
    /// When each service's status was last written.
    service_status_written: Mutex<HashMap<String, Instant>>,
    /// Which comuni changed, and when.
    changes: Arc<Changes>,
    /// What the comuni's status should say beyond the cache, and when to write it.
    statuses: Arc<statuses::Statuses>,
    /// Wakes the Municipality controller for a comune.
    wake: mpsc::UnboundedSender<ObjectRef<Municipality>>,
    /// The instances' states, as read from their cached Deployments.
    deployment_states: cache::Readings<Deployment, service::InstanceState>,
    /// The comuni's objects created a moment ago.
    created: apply::Created,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish()
    }
}

/// Watch-backed caches of every object the operator manages (label
/// `app.kubernetes.io/managed-by=consorzio`), kept compact (see `Cached`).
#[derive(Clone, Debug)]
pub struct Stores {
    /// Comuni's (and shared services') namespaces.
    pub namespaces: Store<Cached<Namespace>>,
    /// Resource quotas.
    pub quotas: Store<Cached<ResourceQuota>>,
    /// Limit ranges.
    pub limit_ranges: Store<Cached<LimitRange>>,
    /// Network policies.
    pub network_policies: Store<Cached<NetworkPolicy>>,
    /// Role bindings.
    pub role_bindings: Store<Cached<RoleBinding>>,
    /// Application Deployments.
    pub deployments: Store<Cached<Deployment>>,
    /// Application Services.
    pub services: Store<Cached<Service>>,
    /// Application Ingresses.
    pub ingresses: Store<Cached<Ingress>>,
    /// Application volume claims.
    pub volume_claims: Store<Cached<PersistentVolumeClaim>>,
    /// Application settings.
    pub config_maps: Store<Cached<ConfigMap>>,
    /// Every namespace's `default` ServiceAccount: pods are refused until it exists.
    pub service_accounts: Store<Cached<ServiceAccount>>,
    /// Every Municipality, shared by both controllers.
    pub municipalities: Store<DeserializeGuard<Municipality>>,
    /// Every SharedService.
    pub shared_services: Store<DeserializeGuard<SharedService>>,
}

fn cached_value<K: Resource<DynamicType = ()> + serde::Serialize>(
    store: &Store<Cached<K>>,
    name: &str,
    namespace: Option<&str>,
) -> Option<Value> {
    let mut key = ObjectRef::<Cached<K>>::new(name);
    if let Some(ns) = namespace {
        key = key.within(ns);
    }
    store.get(&key).and_then(|obj| obj.value())
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
        self.config_maps.wait_until_ready().await?;
        self.service_accounts.wait_until_ready().await
    }
}

/// Where changes of managed objects are sent: to the Municipality or SharedService they belong to.
#[derive(Clone)]
struct Senders {
    municipalities: mpsc::UnboundedSender<ObjectRef<Municipality>>,
    services: mpsc::UnboundedSender<ObjectRef<SharedService>>,
    changes: Arc<Changes>,
    statuses: Arc<statuses::Statuses>,
    /// The comuni whose reconcile is to be woken later for a change of their quota usage.
    waking: Arc<Mutex<HashSet<String>>>,
}

impl Senders {
    /// An object of `service` (if any) in the namespace of `comune` (if any) changed.
    fn notify(&self, service: Option<&str>, comune: Option<&str>) {
        if let Some(comune) = comune {
            self.changes.touch(comune);
        }
        if let Some(service) = service {
            let _ = self.services.unbounded_send(ObjectRef::new(service));
        } else if let Some(owner) = comune {
            let _ = self.municipalities.unbounded_send(ObjectRef::new(owner));
        }
    }

    /// The quota usage of `comune` changed, and nothing else of its quota. Its status carries a
    /// change of usage alone once the usage is still (see `statuses`): its reconcile is woken
    /// then, once for all the changes until then. (At onboarding the quota controller reports a
    /// dozen changes per comune, each a reconcile that had nothing to write.)
    fn usage_changed(&self, comune: &str) {
        self.statuses.usage_changed(comune);
        let first = self
            .waking
            .lock()
            .is_ok_and(|mut waking| waking.insert(comune.to_string()));
        if !first {
            return;
        }
        let (senders, comune) = (self.clone(), comune.to_string());
        tokio::spawn(async move {
            while let Some(wait) = senders.statuses.usage_write_wait(&comune) {
                tokio::time::sleep(wait).await;
            }
            if let Ok(mut waking) = senders.waking.lock() {
                waking.remove(&comune);
            }
            let _ = senders
                .municipalities
                .unbounded_send(ObjectRef::new(&comune));
        });
    }
}

/// The last fingerprint seen of each comune, or of one of its objects: a subscriber of their
/// changes acts only on those that change what it reads.
struct Fingerprints<T = u64> {
    seen: Mutex<HashMap<String, T>>,
    comuni: Store<DeserializeGuard<Municipality>>,
}

impl<T: PartialEq> Fingerprints<T> {
    /// Fingerprints of the comuni in `comuni` (by name).
    fn new(comuni: Store<DeserializeGuard<Municipality>>) -> Self {
        Self {
            seen: Mutex::default(),
            comuni,
        }
    }

    /// Records `fingerprint` for `comune`; returns the one before it (none the first time).
    fn replace(&self, comune: &str, fingerprint: T) -> Option<T> {
        let Ok(mut seen) = self.seen.lock() else {
            return None;
        };
        let last = seen.insert(comune.to_string(), fingerprint);
        // Deletions are not reported here: forget deleted comuni now and then.
        if last.is_none() && seen.len() > 2 * self.comuni.len() + 64 {
            seen.retain(|c, _| self.comuni.get(&ObjectRef::new(c)).is_some());
        }
        last
    }
}

impl Fingerprints {
    /// Records `fingerprint` for `comune`; says whether it differs from the last one (or is the
    /// first).
    fn changed(&self, comune: &str, fingerprint: u64) -> bool {
        self.replace(comune, fingerprint) != Some(fingerprint)
    }
}

/// A fingerprint of `parts`.
fn fingerprint(parts: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

/// The changes of one kind, as one controller receives them from the shared cache.
pub type Events<K> = reflector::ReflectHandle<DeserializeGuard<K>>;

/// What the controllers reconcile.
pub struct Streams {
    /// Changes of Municipalities, for their controller.
    pub municipalities: Events<Municipality>,
    /// Changes of Municipalities, for the SharedService controller (who gets what).
    pub comuni: Events<Municipality>,
    /// Changes of SharedServices.
    pub services: Events<SharedService>,
    /// Municipalities whose managed objects changed, or whose services reported.
    pub municipality_triggers: mpsc::UnboundedReceiver<ObjectRef<Municipality>>,
    /// SharedServices whose instances changed.
    pub service_triggers: mpsc::UnboundedReceiver<ObjectRef<SharedService>>,
}

impl Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

/// Starts a cache of every object of kind `K`, kept without their managedFields (a good part of
/// each object), and shared: each of `N` subscribers gets its own stream of changes, sent only
/// once the cache has them.
fn watch_shared<K, const N: usize>(client: &Client) -> (Store<DeserializeGuard<K>>, [Events<K>; N])
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + Send + Sync + 'static,
{
    let api = Api::<DeserializeGuard<K>>::all(client.clone());
    // A controller that falls this many changes behind holds up the others.
    let (reader, writer) = reflector::store_shared(1024);
    let subscribers = std::array::from_fn(|_| {
        writer
            .subscribe()
            .expect("a shared store can be subscribed to")
    });
    let root = watcher(api, list_config())
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect_shared(writer);
    tokio::spawn(async move {
        let mut root = std::pin::pin!(root);
        while let Some(event) = root.next().await {
            if let Err(error) = event {
                tracing::warn!(kind = %K::kind(&()), %error, "watch failed, retrying");
            }
        }
    });
    (reader, subscribers)
}

/// Which comuni changed (the Municipality, or an object in its namespace), in the order they
/// did: a service's pass goes over those that changed since its last one, not the whole fleet.
/// A change is counted after the caches have it, so a pass that starts later sees it.
#[derive(Debug, Default)]
pub struct Changes {
    /// The count of changes so far, and the count when each comune last changed.
    seen: Mutex<(u64, HashMap<String, u64>)>,
}

impl Changes {
    /// Records a change of `comune`.
    pub fn touch(&self, comune: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.0 += 1;
            let now = seen.0;
            seen.1.insert(comune.to_string(), now);
        }
    }

    /// The count of changes so far: a pass that starts now has seen all of them.
    fn now(&self) -> u64 {
        self.seen.lock().map_or(0, |seen| seen.0)
    }

    /// The comuni changed after count `since`.
    fn since(&self, since: u64) -> std::collections::HashSet<String> {
        let Ok(seen) = self.seen.lock() else {
            return Default::default();
        };
        seen.1
            .iter()
            .filter(|(_, at)| **at > since)
            .map(|(comune, _)| comune.clone())
            .collect()
    }
}

/// A service's pass: when it ended and how long the next should wait, and what it covered.
#[derive(Debug, Clone, Copy)]
struct Pass {
    ended: Instant,
    cooldown: Duration,
    /// The count of changes when this pass started (see `Changes`).
    seen: u64,
    /// The service's generation then.
    generation: Option<i64>,
    /// When the last pass over every comune started.
    whole: Instant,
    /// Whether it did all it had to.
    ok: bool,
}

/// Which comuni a service's pass goes over.
#[derive(Debug)]
pub enum Scope {
    /// All of them: the first pass, the service changed, the last pass failed, or it is time.
    Whole,
    /// Those changed since the last pass.
    Changed(std::collections::HashSet<String>),
}

impl Scope {
    /// Whether the pass goes over `comune`.
    pub fn covers(&self, comune: &str) -> bool {
        match self {
            Scope::Whole => true,
            Scope::Changed(changed) => changed.contains(comune),
        }
    }
}

/// How often a service's pass goes over every comune anyway, to repair what no event reported.
const WHOLE_PASS: Duration = Duration::from_secs(20 * 60);

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
/// The shortest wait after a pass that wrote nothing. While instances start, their
/// Deployments change many times a second across the fleet, and each pass reads every comune's
/// instance: a second's changes are read in one pass.
const MIN_COOLDOWN: Duration = Duration::from_secs(1);
/// The wait after a pass that created or changed instances: what changed meanwhile (e.g.
/// comuni that became Ready) is taken in the next pass, soon.
const WROTE_COOLDOWN: Duration = Duration::from_millis(250);

/// How often a service's status may be written when only its counts changed.
const COUNTS_REFRESH: Duration = Duration::from_secs(5);

/// What is left of `interval` counted from `since`; `None` once it has passed.
fn left(interval: Duration, since: Instant) -> Option<Duration> {
    interval
        .checked_sub(since.elapsed())
        .filter(|wait| !wait.is_zero())
}

/// Drives a watch stream in its own task, telling `changed` about every object it sees.
fn drive<K, S>(stream: S, changed: impl Fn(&Cached<K>) + Send + 'static)
where
    K: Resource<DynamicType = ()> + Send + 'static,
    S: futures::Stream<Item = Result<Cached<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(obj) => changed(&obj),
                Err(error) => {
                    tracing::warn!(kind = %K::kind(&()), %error, "watch failed, retrying")
                }
            }
        }
    });
}

/// What the caches of managed objects can keep.
trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + DeserializeOwned
    + serde::Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Starts a cache of the objects of kind `K` that `config` selects; `changed` hears of each
/// change once the cache has it.
fn watch<K>(
    client: &Client,
    config: watcher::Config,
    changed: impl Fn(&Cached<K>) + Send + 'static,
) -> Store<Cached<K>>
where
    K: Watched,
{
    let (reader, writer) = reflector::store();
    let dictionary = cache::Dictionary::default();
    let events = watcher(Api::<K>::all(client.clone()), config)
        .default_backoff()
        .map_ok(move |event| cache::event(event, &dictionary));
    let stream = reflector::reflector(writer, events).touched_objects();
    drive(stream, changed);
    reader
}

/// Starts a cache of the managed objects of kind `K`; their changes go to the Municipality or
/// SharedService they belong to.
fn watch_managed<K>(client: &Client, senders: &Senders) -> Store<Cached<K>>
where
    K: Watched,
{
    let senders = senders.clone();
    watch(client, managed(), move |obj: &Cached<K>| {
        senders.notify(obj.label(SERVICE_LABEL), obj.label(MUNICIPALITY_LABEL))
    })
}

/// Starts the cache of the comuni's quotas. Each change sets the comune's quota metrics. A change
/// of a quota's usage alone (its status) is left to `Senders::usage_changed`; any other change
/// goes to its comune at once, and so does a deletion (the same object again).
fn watch_quotas(
    client: &Client,
    senders: &Senders,
    metrics: Arc<Metrics>,
    comuni: Store<DeserializeGuard<Municipality>>,
) -> Store<Cached<ResourceQuota>> {
    let senders = senders.clone();
    let seen = Fingerprints::new(comuni.clone());
    watch(client, managed(), move |quota: &Cached<ResourceQuota>| {
        let Some(comune) = quota.label(MUNICIPALITY_LABEL) else {
            return;
        };
        // Not for a comune that is gone: its metrics are gone too.
        let live = comuni
            .get(&ObjectRef::new(comune))
            .is_some_and(|m| m.meta().deletion_timestamp.is_none());
        if live {
            municipality::record_quota(&metrics, comune, &municipality::usage_of(quota));
        }
        let (ours, all) = quota.fingerprints();
        match seen.replace(comune, (ours, all)) {
            Some((last_ours, last_all)) if last_ours == ours && last_all != all => {
                senders.usage_changed(comune)
            }
            _ => senders.notify(None, Some(comune)),
        }
    })
}

/// Starts a cache of every namespace's `default` ServiceAccount; its creation in a comune's
/// namespace goes to the comune's Municipality, which waits for it (see `municipality`).
fn watch_service_accounts(
    client: &Client,
    senders: &Senders,
    prefix: &str,
) -> Store<Cached<ServiceAccount>> {
    let (senders, prefix) = (senders.clone(), prefix.to_string());
    let config = list_config().fields("metadata.name=default");
    watch(client, config, move |sa: &Cached<ServiceAccount>| {
        let comune = sa
            .namespace()
            .and_then(|ns| ns.strip_prefix(prefix.as_str()));
        senders.notify(None, comune.filter(|c| !c.is_empty()))
    })
}

impl Context {
    /// Starts the caches and waits until each has listed its objects once, so that the first
    /// reconciles compare against the real cluster and write nothing that is already there.
    pub async fn start(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Arc<Context>, Streams)> {
        let (municipalities, municipalities_rx) = mpsc::unbounded();
        let (services, services_rx) = mpsc::unbounded();
        let changes = Arc::new(Changes::default());
        let statuses = Arc::new(statuses::Statuses::default());
        let senders = Senders {
            municipalities: municipalities.clone(),
            services,
            changes: changes.clone(),
            statuses: statuses.clone(),
            waking: Arc::default(),
        };
        let (municipality_store, [municipality_events, comuni_events]) = watch_shared(&client);
        let (service_store, [service_events]) = watch_shared(&client);
        let stores = Stores {
            namespaces: watch_managed(&client, &senders),
            quotas: watch_quotas(
                &client,
                &senders,
                metrics.clone(),
                municipality_store.clone(),
            ),
            limit_ranges: watch_managed(&client, &senders),
            network_policies: watch_managed(&client, &senders),
            role_bindings: watch_managed(&client, &senders),
            deployments: watch_managed(&client, &senders),
            services: watch_managed(&client, &senders),
            ingresses: watch_managed(&client, &senders),
            volume_claims: watch_managed(&client, &senders),
            config_maps: watch_managed(&client, &senders),
            service_accounts: watch_service_accounts(&client, &senders, &config.namespace_prefix),
            municipalities: municipality_store,
            shared_services: service_store,
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
            passes: Mutex::default(),
            service_status_written: Mutex::default(),
            changes,
            statuses,
            wake: municipalities,
            deployment_states: Default::default(),
            created: Default::default(),
        };
        let streams = Streams {
            municipalities: municipality_events,
            comuni: comuni_events,
            services: service_events,
            municipality_triggers: municipalities_rx,
            service_triggers: services_rx,
        };
        Ok((Arc::new(ctx), streams))
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

    /// How long a service's next pass should wait, counted from when the last one ended: a
    /// moment if that one created or changed instances (more may be waiting), else as long as
    /// it took, at least 1 s and at most 5 s.
    fn pass_cooldown(&self, service: &str) -> Option<Duration> {
        let passes = self.passes.lock().ok()?;
        let pass = passes.get(service)?;
        left(pass.cooldown, pass.ended)
    }

    /// Starts a pass of the service `s`: which comuni it covers, and the count of changes it
    /// has seen (for `pass_done`).
    fn pass_scope(&self, s: &SharedService) -> (Scope, u64) {
        let seen = self.changes.now();
        let Ok(passes) = self.passes.lock() else {
            return (Scope::Whole, seen);
        };
        let scope = match passes.get(&s.name_any()) {
            Some(last)
                if last.ok
                    && last.generation == s.meta().generation
                    && last.whole.elapsed() < WHOLE_PASS =>
            {
                Scope::Changed(self.changes.since(last.seen))
            }
            _ => Scope::Whole,
        };
        (scope, seen)
    }

    /// Records a service's pass, which started at change count `seen` and covered `scope`.
    /// After one that stopped early or failed the next pass covers every comune.
    fn pass_done(&self, s: &SharedService, took: Duration, scope: &Scope, seen: u64, went: Went) {
        let Ok(mut passes) = self.passes.lock() else {
            return;
        };
        let now = Instant::now();
        let whole = match (scope, passes.get(&s.name_any())) {
            (Scope::Changed(_), Some(last)) => last.whole,
            // Started `took` ago.
            _ => now.checked_sub(took).unwrap_or(now),
        };
        let pass = Pass {
            ended: now,
            cooldown: match went {
                Went::Wrote => WROTE_COOLDOWN,
                Went::Through | Went::Partly => took.clamp(MIN_COOLDOWN, MAX_COOLDOWN),
            },
            seen,
            generation: s.meta().generation,
            whole,
            ok: went != Went::Partly,
        };
        passes.insert(s.name_any(), pass);
    }

    /// When a service's status may be written if only its counts changed: `None` now,
    /// `Some(wait)` after `wait`.
    fn counts_write_wait(&self, service: &str) -> Option<Duration> {
        let written = self.service_status_written.lock().ok()?;
        left(COUNTS_REFRESH, *written.get(service)?)
    }

    /// Records that a service's status was written now.
    fn counts_written(&self, service: &str) {
        if let Ok(mut written) = self.service_status_written.lock() {
            written.insert(service.to_string(), Instant::now());
        }
    }

    /// Hands over the entry of `service` in comune `m`'s status (`None`: it no longer gets the
    /// service), and wakes the Municipality controller if that changes what the status says.
    fn report(&self, m: &Municipality, service: &str, entry: Option<ServiceInstanceStatus>) {
        if self.statuses.report(m, service, entry) {
            let _ = self.wake.unbounded_send(ObjectRef::new(&m.name_any()));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_covers_the_comuni_changed_since_the_last_one() {
        let changes = Changes::default();
        changes.touch("lugano");
        let seen = changes.now();
        assert_eq!(changes.since(0), ["lugano".to_string()].into());
        assert!(changes.since(seen).is_empty());
        changes.touch("chiasso");
        changes.touch("lugano");
        let scope = Scope::Changed(changes.since(seen));
        assert!(scope.covers("chiasso") && scope.covers("lugano"));
        assert!(!scope.covers("locarno"));
        assert!(Scope::Whole.covers("locarno"));
    }
}
