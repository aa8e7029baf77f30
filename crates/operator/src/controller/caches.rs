//! The operator's caches: one for each kind declared in `kinds` (what each keeps: `Cached`),
//! filled by watches, and every Municipality and SharedService. Each change of a cached object is
//! routed to whom it concerns (see `passes::Triggers`).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use consorzio_api::{Municipality, QuotaUsage, SharedService};
use futures::{StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::DynamicObject,
    core::DeserializeGuard,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher::{self, Event, watcher},
    },
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    cached::{self, Cached},
    index::Index,
    kinds::{self, Cache, KINDS, Kind},
    namespace::in_managed_namespace,
    passes::{Fingerprints, Triggers},
};
use crate::{
    metrics::Metrics,
    render::{MANAGED_BY, MUNICIPALITY_LABEL, Rendered, service::SERVICE_LABEL},
};

/// How long the start waits for an optional kind's first list: a served kind lists in moments,
/// one whose CRD is missing never does.
const OPTIONAL_LIST: Duration = Duration::from_secs(5);

/// The changes of one kind, as one controller receives them from the shared cache.
pub type Events<K> = reflector::ReflectHandle<DeserializeGuard<K>>;

/// Every cache.
#[derive(Clone, Debug)]
pub struct Caches {
    by_kind: HashMap<(&'static str, &'static str), KindCache>,
    /// Every Municipality, shared by both controllers.
    pub municipalities: Store<DeserializeGuard<Municipality>>,
    /// Every SharedService.
    pub shared_services: Store<DeserializeGuard<SharedService>>,
}

/// The cache of one kind, and the names of its objects by namespace.
#[derive(Clone, Debug)]
struct KindCache {
    store: Store<Cached>,
    index: Arc<Index>,
}

impl Caches {
    /// Starts a watch for every cached kind, and waits until each has listed its objects once,
    /// so that the first reconciles compare against the real cluster.
    pub async fn start(
        client: &Client,
        triggers: &Triggers,
        metrics: Arc<Metrics>,
        municipalities: Store<DeserializeGuard<Municipality>>,
        shared_services: Store<DeserializeGuard<SharedService>>,
        namespace_prefix: &str,
        velero_namespace: Option<&str>,
    ) -> Result<Caches, reflector::store::WriterDropped> {
        let mut by_kind = HashMap::new();
        for kind in KINDS {
            let home = match (kind.in_velero_namespace, velero_namespace) {
                (false, _) => None,
                (true, Some(velero)) => Some(velero),
                // No Velero: nothing of it is made, nor watched.
                (true, None) => continue,
            };
            let route: Route = match kind.cache {
                Cache::Unread => continue,
                Cache::Named(_) => Box::new(by_namespace(triggers, namespace_prefix)),
                Cache::Managed if *kind == kinds::RESOURCE_QUOTA => {
                    Box::new(by_quota(triggers, metrics.clone(), municipalities.clone()))
                }
                Cache::Managed => Box::new(by_owner(triggers)),
            };
            by_kind.insert(
                (kind.group, kind.kind),
                watch(client, kind, namespace_prefix, home, route),
            );
        }
        for kind in KINDS.iter().filter(|k| k.cache != Cache::Unread) {
            let Some(cache) = by_kind.get(&(kind.group, kind.kind)) else {
                continue;
            };
            let ready = cache.store.wait_until_ready();
            if !kind.optional {
                ready.await?;
            } else if tokio::time::timeout(OPTIONAL_LIST, ready).await.is_err() {
                tracing::info!(
                    kind = kind.kind,
                    group = kind.group,
                    "not served by this cluster (yet): services that need it wait for it"
                );
            }
        }
        Ok(Caches {
            by_kind,
            municipalities,
            shared_services,
        })
    }

    /// Whether the cluster serves `kind` (its watch has listed it): an optional kind's CRD may
    /// be missing, or installed since the operator started.
    pub fn serves(&self, kind: &Kind) -> bool {
        self.of(kind)
            .is_some_and(|c| c.index.listed.load(Ordering::Relaxed))
    }

    fn of(&self, kind: &Kind) -> Option<&KindCache> {
        self.by_kind.get(&(kind.group, kind.kind))
    }

    /// The cached object of `kind` named `name` (in `ns`).
    pub fn get(&self, kind: &Kind, ns: Option<&str>, name: &str) -> Option<Arc<Cached>> {
        let mut key = ObjectRef::<Cached>::new(name);
        if let Some(ns) = ns {
            key = key.within(ns);
        }
        self.of(kind)?.store.get(&key)
    }

    /// The cluster's copy of a rendered object, if the caches hold one.
    pub fn cached(&self, rendered: &Rendered) -> Option<Value> {
        let kind = kinds::find(&rendered.resource)?;
        let ns = rendered.object.namespace();
        self.get(kind, ns.as_deref(), &rendered.object.name_any())?
            .value()
    }

    /// The cached objects of `kind` in namespace `ns`.
    pub fn in_namespace(&self, kind: &Kind, ns: &str) -> Vec<Arc<Cached>> {
        let Some(cache) = self.of(kind) else {
            return vec![];
        };
        let names = cache.index.names(ns);
        names
            .iter()
            .filter_map(|name| cache.store.get(&ObjectRef::new(name).within(ns)))
            .collect()
    }

    /// Every cached object of `kind`.
    pub fn all(&self, kind: &Kind) -> Vec<Arc<Cached>> {
        self.of(kind).map(|c| c.store.state()).unwrap_or_default()
    }
}

/// Where the changes of a kind's objects go.
type Route = Box<dyn Fn(&Cached) + Send + 'static>;

/// Every watch lists its objects 50 at a time. Each object arrives with its managedFields, as
/// large as the object itself, and read into a JSON tree before they are dropped: with the
/// default pages of 500, a restart on 350 comuni peaked at 87 MiB instead of 65.
fn list_config() -> watcher::Config {
    watcher::Config::default().page_size(50)
}

/// Starts the cache of `kind` (what is in managed namespaces); `changed` hears of each change
/// once the cache has it.
fn watch(
    client: &Client,
    kind: &Kind,
    prefix: &str,
    home: Option<&str>,
    changed: Route,
) -> KindCache {
    let config = match kind.cache {
        Cache::Named(name) => list_config().fields(&format!("metadata.name={name}")),
        _ => list_config().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)),
    };
    let (store, writer) = reflector::store();
    let index = Arc::new(Index::default());
    let dictionary = cached::Dictionary::default();
    // A kind of Velero's namespace is watched there only (the operator may read it nowhere
    // else); the others everywhere, keeping what is in the namespaces the operator manages.
    let api = match home {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &kind.resource()),
        None => Api::<DynamicObject>::all_with(client.clone(), &kind.resource()),
    };
    let events = {
        let index = index.clone();
        let prefix = prefix.to_string();
        let anywhere = home.is_some();
        let managed = move |event: &Event<DynamicObject>| match event {
            Event::Apply(obj) | Event::InitApply(obj) | Event::Delete(obj) => {
                anywhere || in_managed_namespace(obj, &prefix)
            }
            Event::Init | Event::InitDone => true,
        };
        let watch = watcher(api, config).default_backoff();
        watch
            .try_filter(move |e| future::ready(managed(e)))
            .map_ok(move |event| {
                let event = cached::event(event, &dictionary);
                index.follow(&event);
                event
            })
    };
    let stream = reflector::reflector(writer, events).touched_objects();
    let kind_name = kind.kind;
    let optional = kind.optional;
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(obj) => changed(&obj),
                // A kind whose CRD is not installed: listed once it is (the watch retries).
                Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                    if optional && status.code == 404 =>
                {
                    tracing::debug!(kind = kind_name, "not served, retrying");
                }
                Err(error) => tracing::warn!(kind = kind_name, %error, "watch failed, retrying"),
            }
        }
    });
    KindCache { store, index }
}

/// Changes go to the SharedService or Municipality the object belongs to, by its labels.
fn by_owner(triggers: &Triggers) -> impl Fn(&Cached) + Send + 'static {
    let triggers = triggers.clone();
    move |obj| triggers.notify(obj.label(SERVICE_LABEL), obj.label(MUNICIPALITY_LABEL))
}

/// Changes go to the comune whose namespace the object is in.
fn by_namespace(triggers: &Triggers, prefix: &str) -> impl Fn(&Cached) + Send + 'static {
    let (triggers, prefix) = (triggers.clone(), prefix.to_string());
    move |obj| {
        let comune = obj
            .namespace()
            .and_then(|ns| ns.strip_prefix(prefix.as_str()));
        triggers.notify(None, comune.filter(|c| !c.is_empty()))
    }
}

/// A comune's quota: each change sets the comune's quota metrics. A change of its usage alone
/// (its status) is left to `Triggers::usage_changed`; any other change goes to its comune at
/// once, and so does a deletion (the same object again).
fn by_quota(
    triggers: &Triggers,
    metrics: Arc<Metrics>,
    comuni: Store<DeserializeGuard<Municipality>>,
) -> impl Fn(&Cached) + Send + 'static {
    let triggers = triggers.clone();
    let seen = Fingerprints::new(comuni.clone());
    move |quota| {
        let Some(comune) = quota.label(MUNICIPALITY_LABEL) else {
            return;
        };
        // Not for a comune that is gone: its metrics are gone too.
        let live = comuni
            .get(&ObjectRef::new(comune))
            .is_some_and(|m| m.meta().deletion_timestamp.is_none());
        if live {
            metrics.record_quota(comune, &quota_usage(quota));
        }
        let (ours, all) = quota.fingerprints();
        match seen.replace(comune, (ours, all)) {
            Some((last_ours, last_all)) if last_ours == ours && last_all != all => {
                triggers.usage_changed(comune)
            }
            _ => triggers.notify(None, Some(comune)),
        }
    }
}

/// Hard and used quota, from the ResourceQuota's status as the quota controller reports it.
pub fn quota_usage(quota: &Cached) -> BTreeMap<String, QuotaUsage> {
    let Some(status) = quota.read::<ResourceQuota>().and_then(|q| q.status) else {
        return BTreeMap::new();
    };
    let (hard, used) = (
        status.hard.unwrap_or_default(),
        status.used.unwrap_or_default(),
    );
    hard.into_iter()
        .map(|(resource, hard)| {
            let used = used.get(&resource).cloned().unwrap_or_default();
            (resource, QuotaUsage { hard, used })
        })
        .collect()
}

/// Starts a cache of every object of kind `K`, kept without their managedFields (a good part of
/// each object), and shared: each of `N` subscribers gets its own stream of changes, sent only
/// once the cache has them.
pub fn watch_shared<K, const N: usize>(
    client: &Client,
) -> (Store<DeserializeGuard<K>>, [Events<K>; N])
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
