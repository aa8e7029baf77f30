//! The SharedService reconciler. Dedicated tenancy: one instance in each selected comune's
//! namespace, template changes rolled out in waves. Shared tenancy: one instance in the namespace
//! `shared-<service>` and an access point in each selected comune's namespace. Either way, the
//! instances of comuni that leave are removed with their volumes kept.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use consorzio_api::{
    Municipality, NotReady, RolloutStatus, ServiceInstanceStatus, SharedService,
    SharedServiceStatus, VolumeReclaimPolicy,
};
use futures::{FutureExt, Stream, StreamExt, TryStreamExt, future::try_join_all};
use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{Deployment, DeploymentStatus},
        core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service},
        networking::v1::{Ingress, NetworkPolicy},
    },
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    core::{ApiResource, DeserializeGuard, ObjectMeta},
    runtime::{
        controller::{self, Action, Controller},
        events::EventType,
        reflector::{self, ObjectRef},
    },
};
use rand::{Rng, distr::Alphanumeric};
use serde::Deserialize;
use serde_json::json;

use super::{
    Cached, Context, Error, Events, Fingerprints, Scope,
    apply::{apply_if_changed, delete},
    fingerprint,
    object::{publish, set_finalizer},
    reconcile_guarded, retry_policy,
    status::{self, condition},
};
use crate::{
    metrics::ControllerName,
    render::{
        MANAGED_BY, MUNICIPALITY_LABEL, ORPHANED_LABEL, Rendered, comune_namespace, namespace_name,
        service::{
            CREDENTIALS_ANNOTATION, SERVICE_LABEL, Selection, VERSION_ANNOTATION, Versions,
            credentials_name, instance_url, is_dedicated, max_unavailable, public_url,
            render_dedicated, settings_name, template_version, volume_name,
        },
        shared::{
            access_policy_name, access_url, connection_name, render_access_point, render_shared,
            render_shared_namespace, shared_namespace, subscriber_label,
        },
    },
};

/// Keeps a SharedService until its instances are removed (their volumes kept or not).
pub const FINALIZER: &str = "consorzio.io/instances";
/// Field manager of the status this controller writes.
const STATUS_MANAGER: &str = "consorzio-sharedservice";
/// Field managers of each service's own writes (`<prefix><service>`): its subscription labels,
/// and in earlier versions its entries in the comuni's status.
pub const SERVICE_MANAGER_PREFIX: &str = "consorzio-service-";
/// At most this many comuni are listed in `status.notReady`.
const NOT_READY_LISTED: usize = 20;

/// Runs the SharedService controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    events: Events<SharedService>,
    comuni: Events<Municipality>,
    triggers: impl Stream<Item = ObjectRef<SharedService>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let services = ctx.stores.shared_services.clone();
    let changes = ctx.changes.clone();
    let seen = Fingerprints::new(ctx.stores.municipalities.clone());
    // A change of a comune that services read (its spec, labels, readiness; joining a union,
    // becoming Ready) may change who gets what. Its status's other changes (quota usage, the
    // services' entries: most of its changes) do not.
    let every_service = move |m: Arc<DeserializeGuard<Municipality>>| {
        let name = m.name_any();
        if !seen.changed(&name, what_services_read(&m)) {
            return vec![];
        }
        changes.touch(&name);
        services
            .state()
            .iter()
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect::<Vec<_>>()
    };
    Controller::for_shared_stream(events, ctx.stores.shared_services.clone())
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .watches_shared_stream(comuni, every_service)
        .reconcile_on(triggers.map(|r: ObjectRef<SharedService>| ObjectRef::new(&r.name)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(super::log_outcome)
        .await;
}

async fn reconcile(
    guard: Arc<DeserializeGuard<SharedService>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    // A pass looks at every comune the service serves, and every change of an instance asks
    // for one: after a pass that created or changed no instance, wait as long as it took (at
    // least 1 s, at most 5 s) before the next, after one that did a moment. Changes that arrive
    // meanwhile are merged into that next pass.
    let name = guard.name_any();
    if let Some(wait) = ctx.pass_cooldown(&name) {
        tokio::time::sleep(wait).await;
    }
    let started = std::time::Instant::now();
    reconcile_guarded(&guard, &ctx, ControllerName::sharedservice, |s| async {
        let (scope, seen) = ctx.pass_scope(s);
        let outcome = reconcile_service(s, &scope, &ctx).await;
        let went = outcome.as_ref().map_or(Went::Partly, |(_, went)| *went);
        ctx.pass_done(s, started.elapsed(), &scope, seen, went);
        outcome.map(|(action, _)| action)
    })
    .await
}

/// How far a pass went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Went {
    /// It stopped early, or failed: the next covers every comune.
    Partly,
    /// It did all it had to, and wrote nothing to the comuni's instances.
    Through,
    /// It did all it had to, and created or changed instances: more may be waiting, so the next
    /// pass need not wait.
    Wrote,
}

impl Went {
    fn through(wrote: &AtomicBool) -> Went {
        if wrote.load(Ordering::Relaxed) {
            Went::Wrote
        } else {
            Went::Through
        }
    }
}

/// A fingerprint of what the services read of a comune: its spec (the generation), labels,
/// readiness and deletion.
fn what_services_read(m: &DeserializeGuard<Municipality>) -> u64 {
    let meta = m.meta();
    fingerprint((
        &meta.generation,
        &meta.labels,
        meta.deletion_timestamp.is_some(),
        m.0.as_ref().is_ok_and(is_ready),
    ))
}

fn error_policy(
    guard: Arc<DeserializeGuard<SharedService>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    retry_policy(&guard, error, &ctx, ControllerName::sharedservice)
}

fn is_ready(m: &Municipality) -> bool {
    m.meta().deletion_timestamp.is_none()
        && m.status
            .as_ref()
            .is_some_and(|s| status::is_ready(&s.conditions))
}

/// The comuni that get the service: selected and Ready, by name. Shared with the cache, not
/// copied: a pass over thousands of comuni would otherwise copy each of them.
fn selected(s: &SharedService, ctx: &Context) -> Vec<Arc<DeserializeGuard<Municipality>>> {
    let selection = Selection::new(s);
    let mut chosen: Vec<_> = ctx
        .stores
        .municipalities
        .state()
        .into_iter()
        .filter(|g| {
            g.0.as_ref()
                .is_ok_and(|m| is_ready(m) && selection.matches(m))
        })
        .collect();
    chosen.sort_unstable_by(|a, b| a.meta().name.cmp(&b.meta().name));
    chosen
}

/// The state of a comune's instance, read from the cached Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Missing,
    /// Runs an older template.
    Outdated,
    /// Runs the target template but is not Available yet.
    Progressing,
    /// Did not become Available within the progress deadline.
    Stalled,
    /// The quota refuses its pods.
    QuotaExceeded,
    Available,
}

/// The cached Deployment of the service's instance in a namespace.
fn deployment(s: &SharedService, ns: &str, ctx: &Context) -> Option<Arc<Cached<Deployment>>> {
    ctx.stores
        .deployments
        .get(&ObjectRef::new(&s.name_any()).within(ns))
}

/// What a pass reads of an instance's Deployment besides its metadata.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Progress {
    spec: Replicas,
    status: DeploymentStatus,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Replicas {
    replicas: Option<i32>,
}

/// The state of the instance in `ns`, which should run template `version`.
fn instance_state(s: &SharedService, ns: &str, version: &str, ctx: &Context) -> InstanceState {
    let Some(d) = deployment(s, ns, ctx) else {
        return InstanceState::Missing;
    };
    if d.annotation(VERSION_ANNOTATION) != Some(version) {
        return InstanceState::Outdated;
    }
    ctx.deployment_states.get(&d, progress)
}

/// How far a Deployment that runs the target template has come.
fn progress(d: &Cached<Deployment>) -> InstanceState {
    let Progress { spec, status } = d.read().unwrap_or_default();
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let wanted = spec.replicas.unwrap_or(1);
    let current = status.observed_generation == d.generation();
    if current
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.available_replicas.unwrap_or(0) >= wanted
        && status.replicas.unwrap_or(0) == wanted
    {
        return InstanceState::Available;
    }
    if conditions.iter().any(|c| {
        c.type_ == "ReplicaFailure"
            && c.message
                .as_deref()
                .is_some_and(|m| m.contains("exceeded quota"))
    }) {
        return InstanceState::QuotaExceeded;
    }
    if conditions.iter().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return InstanceState::Stalled;
    }
    InstanceState::Progressing
}

/// A pass over the comuni that `scope` covers. Says when to look again, and whether it did
/// everything (if not, the next pass covers every comune).
async fn reconcile_service(
    s: &SharedService,
    scope: &Scope,
    ctx: &Context,
) -> Result<(Action, Went), Error> {
    // Until the Municipality cache has listed them all, no comune may look unselected: that
    // would remove instances.
    if !listed(&ctx.stores.municipalities) {
        return Ok((Action::requeue(Duration::from_secs(1)), Went::Partly));
    }
    if s.meta().deletion_timestamp.is_some() {
        return Ok((cleanup(s, ctx).await?, Went::Partly));
    }
    set_finalizer(s, FINALIZER, true, ctx).await?;
    let chosen = selected(s, ctx);
    let comuni: Vec<&Municipality> = chosen.iter().filter_map(|g| g.0.as_ref().ok()).collect();
    if is_dedicated(s) {
        reconcile_dedicated(s, &comuni, scope, ctx).await
    } else {
        reconcile_shared(s, &comuni, scope, ctx).await
    }
}

/// Whether a cache has listed its objects once. Checked, not awaited: a store's readiness wakes
/// only one of the tasks waiting for it, so concurrent reconciles that awaited it could wait
/// forever (seen as Dedicated services never reconciled after an operator restart).
fn listed<K>(store: &reflector::Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Runs `work` on every item, at most `--concurrency` at a time: a reconcile that touches many
/// comuni neither waits on each in turn nor floods the API server. The first error ends it.
async fn bounded<T, Fut>(
    items: impl IntoIterator<Item = T>,
    ctx: &Context,
    work: impl Fn(T) -> Fut,
) -> Result<(), Error>
where
    Fut: Future<Output = Result<(), Error>>,
{
    futures::stream::iter(items.into_iter().map(work))
        .buffer_unordered(usize::from(ctx.config.concurrency.max(1)))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Applies what differs from the cache; says whether it wrote anything.
async fn apply_all(objects: &[Rendered], ctx: &Context) -> Result<bool, Error> {
    let wrote = try_join_all(
        objects
            .iter()
            .map(|o| apply_if_changed(&ctx.client, &ctx.metrics, o, ctx.stores.cached(o))),
    )
    .await?;
    Ok(wrote.contains(&true))
}

async fn reconcile_dedicated(
    s: &SharedService,
    comuni: &[&Municipality],
    scope: &Scope,
    ctx: &Context,
) -> Result<(Action, Went), Error> {
    // Render the instances first: an invalid template changes nothing anywhere. A template
    // renders differently only when the service or the comune changes, so the comuni the pass
    // covers are enough. The objects are rendered again where they are applied, a few at a
    // time, so that a pass over thousands of comuni does not hold them all in memory.
    for m in comuni.iter().filter(|m| scope.covers(&m.name_any())) {
        match render_dedicated(s, m, &ctx.config) {
            Ok(_) => {}
            Err(crate::render::service::ServiceRenderError::Template {
                municipality,
                source,
            }) => {
                let message = format!(
                    "comune {municipality}: {source}; existing instances are left as they are"
                );
                write_status(s, ctx, Summary::failed("InvalidTemplate", message)).await?;
                return Ok((Action::await_change(), Went::Partly));
            }
            Err(crate::render::service::ServiceRenderError::Json(e)) => return Err(e.into()),
        }
    }
    let namespaces: Vec<String> = comuni
        .iter()
        .map(|m| namespace_name(m, &ctx.config))
        .collect();

    // Waves: comuni on the target version that are not Available yet use up the budget; the
    // outdated ones (broken ones first) are updated as the budget allows. New comuni start at
    // once. The others are applied when the pass covers them.
    let versions = Versions::new(s);
    let states: Vec<InstanceState> = comuni
        .iter()
        .zip(&namespaces)
        .map(|(m, ns)| instance_state(s, ns, &versions.of(Some(&m.name_any())), ctx))
        .collect();
    let budget = max_unavailable(s, comuni.len());
    let busy = states
        .iter()
        .filter(|st| {
            matches!(
                st,
                InstanceState::Progressing | InstanceState::Stalled | InstanceState::QuotaExceeded
            )
        })
        .count();
    let halted: Vec<String> = comuni
        .iter()
        .zip(&states)
        .filter(|(_, st)| **st == InstanceState::Stalled)
        .map(|(m, _)| m.name_any())
        .collect();
    let mut room = if halted.is_empty() {
        budget.saturating_sub(busy)
    } else {
        0
    };
    let mut order: Vec<usize> = (0..comuni.len()).collect();
    // Outdated comuni whose instance is down go first: updating them cannot make things worse.
    order.sort_by_cached_key(|&i| {
        let outdated = states[i] == InstanceState::Outdated;
        (!outdated, outdated && serving(s, &namespaces[i], ctx))
    });
    let mut to_apply = BTreeSet::new();
    for i in order {
        match states[i] {
            InstanceState::Outdated if room > 0 => {
                room -= 1;
                to_apply.insert(i);
            }
            InstanceState::Outdated => {}
            InstanceState::Missing => {
                to_apply.insert(i);
            }
            _ if scope.covers(&comuni[i].name_any()) => {
                to_apply.insert(i);
            }
            _ => {}
        }
    }
    // Each comune's entry is reported once its instance is applied, the others' at the end.
    let report = |i: usize| {
        let m = comuni[i];
        let url = instance_url(s, m, &ctx.config);
        let version = versions.of(Some(&m.name_any()));
        ctx.report(m, &s.name_any(), Some(entry(s, states[i], url, version)));
    };
    let (namespaces_ref, report_ref) = (&namespaces, &report);
    let wrote = AtomicBool::new(false);
    let wrote_ref = &wrote;
    bounded(to_apply, ctx, |i| async move {
        let m = &comuni[i];
        ensure_credentials(s, &namespaces_ref[i], Some(&m.name_any()), ctx).await?;
        // The same inputs rendered without error above.
        let rendered = render_dedicated(s, m, &ctx.config).map_err(|e| match e {
            crate::render::service::ServiceRenderError::Json(e) => Error::from(e),
            _ => Error::Malformed("instance template"),
        })?;
        if apply_all(&rendered, ctx).await? {
            wrote_ref.store(true, Ordering::Relaxed);
        }
        report_ref(i);
        Ok(())
    })
    .await?;
    prune(s, namespaces.iter().cloned().collect(), scope, ctx).await?;
    // The entries of comuni the pass does not cover have not changed since the last.
    (0..comuni.len())
        .filter(|&i| scope.covers(comuni[i].meta().name.as_deref().unwrap_or_default()))
        .for_each(report);
    let summary = summarize(s, comuni, &states, halted);
    Ok((finish(s, summary, ctx).await?, Went::through(&wrote)))
}

async fn reconcile_shared(
    s: &SharedService,
    comuni: &[&Municipality],
    scope: &Scope,
    ctx: &Context,
) -> Result<(Action, Went), Error> {
    let ns = shared_namespace(s);
    if let Some(message) = foreign_namespace(s, &ns, ctx).await? {
        write_status(s, ctx, Summary::failed("NamespaceConflict", message)).await?;
        return Ok((Action::requeue(Duration::from_secs(60)), Went::Partly));
    }
    let instance = render_shared(s, &ctx.config)?;
    // The namespace first: everything else lives in it.
    let (namespace, rest) = instance
        .split_first()
        .ok_or(Error::Malformed("rendered namespace"))?;
    apply_all(std::slice::from_ref(namespace), ctx).await?;
    ensure_credentials(s, &ns, None, ctx).await?;
    apply_all(rest, ctx).await?;
    let version = template_version(s, None);
    let state = instance_state(s, &ns, &version, ctx);

    // Each comune's entry is reported once its access point is applied, the others' at the end.
    let url = s.spec.ingress.as_ref().map(|i| public_url(s, &i.host));
    let report = |i: usize| {
        let m = comuni[i];
        let url = url
            .clone()
            .or_else(|| Some(access_url(s, &namespace_name(m, &ctx.config))));
        ctx.report(
            m,
            &s.name_any(),
            Some(entry(s, state, url, version.clone())),
        );
    };
    let report_ref = &report;
    let wrote = AtomicBool::new(false);
    let wrote_ref = &wrote;
    let covered: Vec<usize> = (0..comuni.len())
        .filter(|&i| scope.covers(&comuni[i].name_any()))
        .collect();
    bounded(covered, ctx, |i| async move {
        let m = &comuni[i];
        if apply_all(&render_access_point(s, m, &ctx.config)?, ctx).await? {
            wrote_ref.store(true, Ordering::Relaxed);
        }
        subscribe(s, &namespace_name(m, &ctx.config), true, ctx).await?;
        report_ref(i);
        Ok(())
    })
    .await?;
    let mut keep: BTreeSet<String> = comuni
        .iter()
        .map(|m| namespace_name(m, &ctx.config))
        .collect();
    keep.insert(ns.clone());
    prune(s, keep, scope, ctx).await?;
    (0..comuni.len()).for_each(report);
    let summary = summarize_shared(s, &ns, state);
    Ok((finish(s, summary, ctx).await?, Went::through(&wrote)))
}

/// Says when the shared namespace exists but is not this service's: it is left untouched.
async fn foreign_namespace(
    s: &SharedService,
    ns: &str,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let name = s.name_any();
    let ours = |managed: Option<&str>, service: Option<&str>| {
        managed == Some(MANAGED_BY.1) && service == Some(name.as_str())
    };
    let cached = ctx.stores.namespaces.get(&ObjectRef::new(ns));
    let existing = match cached {
        Some(n) => Some(ours(n.label(MANAGED_BY.0), n.label(SERVICE_LABEL))),
        None => Api::<Namespace>::all(ctx.client.clone())
            .get_opt(ns)
            .await?
            .map(|n| {
                let label = |key| n.labels().get(key).map(String::as_str);
                ours(label(MANAGED_BY.0), label(SERVICE_LABEL))
            }),
    };
    Ok(existing.filter(|ours| !ours).map(|_| {
        format!(
            "namespace {ns} already exists and is not managed by consorzio for this service; \
             it is left untouched. Rename or remove it, or give the service another name"
        )
    }))
}

/// Labels (or unlabels) a comune's namespace as a subscriber of a Shared service, with a merge
/// patch under the service's own field manager: the Municipality controller's labels stay as they
/// are, and a namespace that is gone is not created again.
async fn subscribe(s: &SharedService, ns: &str, on: bool, ctx: &Context) -> Result<(), Error> {
    let label = subscriber_label(s);
    let has = ctx
        .stores
        .namespaces
        .get(&ObjectRef::new(ns))
        .is_some_and(|n| n.label(&label) == Some("true"));
    if has == on {
        return Ok(());
    }
    let value = on.then_some("true");
    let patch = json!({"metadata": {"labels": {label: value}}});
    ctx.metrics.wrote("Namespace");
    let manager = format!("{SERVICE_MANAGER_PREFIX}{}", s.name_any());
    match Api::<Namespace>::all(ctx.client.clone())
        .patch(
            ns,
            &PatchParams {
                field_manager: Some(manager),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Publishes a halted rollout, keeps the metrics current, writes the status, and says when to
/// look again.
async fn finish(s: &SharedService, summary: Summary, ctx: &Context) -> Result<Action, Error> {
    if let Some(names) = summary.halted.as_ref().filter(|_| !was_halted(s)) {
        publish(
            ctx,
            s,
            EventType::Warning,
            "RolloutHalted",
            "Rollout",
            &format!(
                "instances did not become Available within {}s: {}",
                s.spec.rollout.progress_deadline_seconds,
                names.join(", ")
            ),
        )
        .await;
    }
    let done = summary.ready == summary.desired;
    let updated = summary.rollout.as_ref().map_or(0, |r| r.updated as usize);
    let counts = (summary.ready, summary.desired, updated);
    ctx.metrics
        .set_service(&s.name_any(), counts, summary.halted.is_some());
    let later = write_status(s, ctx, summary).await?;
    let next = if done {
        Duration::from_secs(30 * 60)
    } else {
        Duration::from_secs(5)
    };
    Ok(Action::requeue(later.map_or(next, |later| later.min(next))))
}

/// Whether some pod of the instance in `ns` is available, whatever its version.
fn serving(s: &SharedService, ns: &str, ctx: &Context) -> bool {
    deployment(s, ns, ctx)
        .and_then(|d| d.read::<Progress>())
        .and_then(|p| p.status.available_replicas)
        .unwrap_or(0)
        > 0
}

fn was_halted(s: &SharedService) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == "RolloutHalted" && c.status == "True")
    })
}

/// A comune's `status.services` entry for this service, from its instance's state.
fn entry(
    s: &SharedService,
    state: InstanceState,
    url: Option<String>,
    version: String,
) -> ServiceInstanceStatus {
    let phase = if s.spec.suspended {
        "Suspended"
    } else {
        match state {
            InstanceState::Available => "Ready",
            InstanceState::Missing => "Pending",
            InstanceState::Outdated | InstanceState::Progressing => "Updating",
            InstanceState::Stalled | InstanceState::QuotaExceeded => "Failed",
        }
    };
    ServiceInstanceStatus {
        name: s.name_any(),
        phase: phase.into(),
        url,
        version: Some(version),
    }
}

/// Whether the instance in `ns` has had its credentials created (its cached Deployment says so).
fn has_credentials(s: &SharedService, ns: &str, ctx: &Context) -> bool {
    deployment(s, ns, ctx).is_some_and(|d| d.annotation(CREDENTIALS_ANNOTATION).is_some())
}

/// The generated credentials of an instance: random, created once, never replaced (when the
/// Secret exists already, it stays as it is).
async fn ensure_credentials(
    s: &SharedService,
    ns: &str,
    municipality: Option<&str>,
    ctx: &Context,
) -> Result<(), Error> {
    // The operator may not read Secrets: the instance's Deployment, applied only after the
    // Secret exists, says it was created.
    if has_credentials(s, ns, ctx) {
        return Ok(());
    }
    let name = credentials_name(s);
    let password: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let mut labels = std::collections::BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (SERVICE_LABEL.to_string(), s.name_any()),
    ]);
    if let Some(comune) = municipality {
        labels.insert(MUNICIPALITY_LABEL.to_string(), comune.to_string());
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(
            [(
                "CONSORZIO_PASSWORD".to_string(),
                ByteString(password.into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    ctx.metrics.wrote("Secret");
    match Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
    {
        Ok(_) => Ok(()),
        // Created meanwhile (the cache lags): the existing one stays.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The namespaces where the service has something: instances, access points, subscriptions.
/// A pass over the comuni that changed looks only in theirs: the others have not changed since
/// a pass that left them as they should be.
fn namespaces_in_use(s: &SharedService, scope: &Scope, ctx: &Context) -> BTreeSet<String> {
    let name = s.name_any();
    let label = subscriber_label(s);
    if let Scope::Changed(comuni) = scope {
        return comuni
            .iter()
            .map(|c| comune_namespace(c, &ctx.config))
            .filter(|ns| has_something_in(s, &label, ns, ctx))
            .collect();
    }
    let mut found = BTreeSet::new();
    let mut take = |service: Option<&str>, ns: Option<&str>| {
        if service == Some(name.as_str())
            && let Some(ns) = ns
        {
            found.insert(ns.to_string());
        }
    };
    for d in ctx.stores.deployments.state() {
        take(d.label(SERVICE_LABEL), d.namespace());
    }
    for svc in ctx.stores.services.state() {
        take(svc.label(SERVICE_LABEL), svc.namespace());
    }
    for c in ctx.stores.config_maps.state() {
        take(c.label(SERVICE_LABEL), c.namespace());
    }
    for p in ctx.stores.network_policies.state() {
        take(p.label(SERVICE_LABEL), p.namespace());
    }
    for n in ctx.stores.namespaces.state() {
        if n.label(&label).is_some() {
            found.insert(n.name().to_string());
        }
    }
    found
}

/// Whether the service has, in `ns`, any of the objects `namespaces_in_use` looks for, by the
/// names it gives them; `label` is its subscription label.
fn has_something_in(s: &SharedService, label: &str, ns: &str, ctx: &Context) -> bool {
    let name = s.name_any();
    let stores = &ctx.stores;
    has(&stores.deployments, &name, ns, &name)
        || has(&stores.services, &name, ns, &name)
        || has(&stores.config_maps, &settings_name(s), ns, &name)
        || has(&stores.config_maps, &connection_name(s), ns, &name)
        || has(&stores.network_policies, &access_policy_name(s), ns, &name)
        || stores
            .namespaces
            .get(&ObjectRef::new(ns))
            .is_some_and(|n| n.label(label).is_some())
}

/// Whether `store` has the object `name` in `ns`, and it belongs to `service`.
fn has<K>(store: &reflector::Store<Cached<K>>, name: &str, ns: &str, service: &str) -> bool
where
    K: Resource<DynamicType = ()>,
{
    store
        .get(&ObjectRef::new(name).within(ns))
        .is_some_and(|o| o.label(SERVICE_LABEL) == Some(service))
}

/// Removes what the service has in namespaces other than `keep` (comuni that no longer get it,
/// or every one when the service goes); volumes (and the credentials that go with the data) are
/// kept and labelled orphaned, unless the service says `reclaimPolicy: Delete`. Looks only at the
/// comuni that `scope` covers.
async fn prune(
    s: &SharedService,
    keep: BTreeSet<String>,
    scope: &Scope,
    ctx: &Context,
) -> Result<(), Error> {
    let name = s.name_any();
    let leaving: Vec<String> = namespaces_in_use(s, scope, ctx)
        .difference(&keep)
        .cloned()
        .collect();
    bounded(leaving, ctx, |ns| async move {
        remove_instance(s, &ns, ctx).await
    })
    .await?;
    // Comuni that no longer get the service no longer list it.
    for m in ctx.stores.municipalities.state() {
        if let Ok(m) = &m.0
            && scope.covers(m.meta().name.as_deref().unwrap_or_default())
            && !keep.contains(&namespace_name(m, &ctx.config))
        {
            ctx.report(m, &name, None);
        }
    }
    Ok(())
}

/// Removes the service's instance or access point from `ns`: its data first (while the
/// Deployment still says whether credentials were made), then its objects and the subscription.
async fn remove_instance(s: &SharedService, ns: &str, ctx: &Context) -> Result<(), Error> {
    release_data(s, ns, ctx).await?;
    let name = s.name_any();
    let config_map = ApiResource::erase::<ConfigMap>(&());
    for (resource, object) in [
        (ApiResource::erase::<Deployment>(&()), name.clone()),
        (ApiResource::erase::<Service>(&()), name.clone()),
        (ApiResource::erase::<Ingress>(&()), name.clone()),
        (config_map.clone(), settings_name(s)),
        (config_map, connection_name(s)),
        (
            ApiResource::erase::<NetworkPolicy>(&()),
            access_policy_name(s),
        ),
    ] {
        let probe = Rendered {
            resource: resource.clone(),
            object: kube::api::DynamicObject::new(&object, &resource).within(ns),
        };
        if ctx.stores.cached(&probe).is_some() {
            delete(&ctx.client, &ctx.metrics, &resource, Some(ns), &object).await?;
        }
    }
    subscribe(s, ns, false, ctx).await
}

/// Keeps (labelled orphaned, no longer managed) or deletes the instance's volume and
/// credentials, as the service's reclaim policy says.
async fn release_data(s: &SharedService, ns: &str, ctx: &Context) -> Result<(), Error> {
    let reclaim = s
        .spec
        .template
        .storage
        .as_ref()
        .map(|st| st.reclaim_policy)
        .unwrap_or_default();
    let has_claim = ctx
        .stores
        .volume_claims
        .get(&ObjectRef::new(&volume_name(s)).within(ns))
        .is_some();
    let has_secret = has_credentials(s, ns, ctx);
    if reclaim == VolumeReclaimPolicy::Delete || !has_claim {
        for (resource, object, present) in [
            (
                ApiResource::erase::<PersistentVolumeClaim>(&()),
                volume_name(s),
                has_claim,
            ),
            (
                ApiResource::erase::<Secret>(&()),
                credentials_name(s),
                has_secret,
            ),
        ] {
            if present {
                delete(&ctx.client, &ctx.metrics, &resource, Some(ns), &object).await?;
            }
        }
        return Ok(());
    }
    // Kept: no longer managed (so never pruned or re-applied), and labelled so people find it.
    let orphan = json!({"metadata": {"labels": {ORPHANED_LABEL: "true", MANAGED_BY.0: null}}});
    ctx.metrics.wrote("PersistentVolumeClaim");
    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
        .patch(
            &volume_name(s),
            &PatchParams::default(),
            &Patch::Merge(&orphan),
        )
        .await?;
    if !has_secret {
        return Ok(());
    }
    ctx.metrics.wrote("Secret");
    match Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .patch(
            &credentials_name(s),
            &PatchParams::default(),
            &Patch::Merge(&orphan),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What the status says.
struct Summary {
    desired: usize,
    ready: usize,
    ready_condition: (bool, &'static str, String),
    not_ready: Vec<NotReady>,
    rollout: Option<RolloutStatus>,
    halted: Option<Vec<String>>,
}

impl Summary {
    fn failed(reason: &'static str, message: String) -> Summary {
        Summary {
            desired: 0,
            ready: 0,
            ready_condition: (false, reason, message),
            not_ready: vec![],
            rollout: None,
            halted: None,
        }
    }
}

fn summarize(
    s: &SharedService,
    comuni: &[&Municipality],
    states: &[InstanceState],
    halted: Vec<String>,
) -> Summary {
    let mut ready = 0;
    let mut updated = 0;
    let mut not_ready = vec![];
    for (m, &state) in comuni.iter().zip(states) {
        if state != InstanceState::Outdated && state != InstanceState::Missing {
            updated += 1;
        }
        if state == InstanceState::Available {
            ready += 1;
        } else if not_ready.len() < NOT_READY_LISTED {
            let reason = match state {
                InstanceState::Missing => "Creating",
                InstanceState::Outdated => "WaitingForRollout",
                InstanceState::Progressing => "Progressing",
                InstanceState::Stalled => "ProgressDeadlineExceeded",
                InstanceState::QuotaExceeded => "QuotaExceeded",
                InstanceState::Available => "Available",
            };
            not_ready.push(NotReady {
                municipality: m.name_any(),
                reason: reason.into(),
            });
        }
    }
    let desired = comuni.len();
    let ready_condition = if ready == desired {
        (
            true,
            "Available",
            format!("{ready} of {desired} instances are Available"),
        )
    } else {
        (
            false,
            "InstancesNotReady",
            format!("{ready} of {desired} instances are Available"),
        )
    };
    let rollout = Some(RolloutStatus {
        target_version: template_version(s, None),
        updated,
        total: desired as i32,
    });
    Summary {
        desired,
        ready,
        ready_condition,
        not_ready,
        rollout,
        halted: (!halted.is_empty()).then_some(halted),
    }
}

/// Writes the service's status if it changed. Counts alone (instances becoming Available) are
/// written at most every `COUNTS_REFRESH`: returns when to write them, if later.
async fn write_status(
    s: &SharedService,
    ctx: &Context,
    summary: Summary,
) -> Result<Option<Duration>, Error> {
    let current = s.status.clone().unwrap_or_default();
    let generation = s.metadata.generation;
    let (ok, reason, message) = summary.ready_condition;
    let mut conditions = vec![condition(
        &current.conditions,
        "Ready",
        ok,
        reason,
        message,
        generation,
    )];
    let halt_message = summary.halted.as_ref().map_or_else(
        || "the rollout proceeds".to_string(),
        |names| {
            format!(
                "instances did not become Available in time: {}; fix the template to resume",
                names.join(", ")
            )
        },
    );
    let halt_reason = if summary.halted.is_some() {
        "ProgressDeadlineExceeded"
    } else {
        "Progressing"
    };
    conditions.push(condition(
        &current.conditions,
        "RolloutHalted",
        summary.halted.is_some(),
        halt_reason,
        halt_message,
        generation,
    ));
    let status = SharedServiceStatus {
        observed_generation: generation,
        desired_instances: summary.desired as i32,
        ready_instances: summary.ready as i32,
        conditions,
        rollout: summary.rollout,
        not_ready: summary.not_ready,
    };
    if current == status {
        return Ok(None);
    }
    let name = s.name_any();
    fn outline(c: &consorzio_api::Condition) -> (&str, &str, &str) {
        (&c.type_, &c.status, &c.reason)
    }
    let counts_alone = current.observed_generation == status.observed_generation
        && current
            .conditions
            .iter()
            .map(outline)
            .eq(status.conditions.iter().map(outline))
        && current.rollout.as_ref().map(|r| &r.target_version)
            == status.rollout.as_ref().map(|r| &r.target_version);
    if counts_alone && let Some(wait) = ctx.counts_write_wait(&name) {
        return Ok(Some(wait));
    }
    let patch =
        json!({"apiVersion": "consorzio.io/v1alpha1", "kind": "SharedService", "status": status});
    ctx.metrics.wrote("SharedService");
    Api::<SharedService>::all(ctx.client.clone())
        .patch_status(
            &name,
            &PatchParams::apply(STATUS_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    ctx.counts_written(&name);
    Ok(None)
}

/// The service is being deleted: every instance and access point goes, volumes kept as the
/// service says; a shared namespace that holds kept data stays, no longer owned.
async fn cleanup(s: &SharedService, ctx: &Context) -> Result<Action, Error> {
    if !s.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let ns = shared_namespace(s);
    // Read before the prune, which un-manages a kept volume and so drops it from the cache.
    let keeps_data = !is_dedicated(s)
        && ctx
            .stores
            .volume_claims
            .get(&ObjectRef::new(&volume_name(s)).within(&ns))
            .is_some()
        && s.spec
            .template
            .storage
            .as_ref()
            .is_some_and(|st| st.reclaim_policy != VolumeReclaimPolicy::Delete);
    prune(s, BTreeSet::new(), &Scope::Whole, ctx).await?;
    if !is_dedicated(s) && foreign_namespace(s, &ns, ctx).await?.is_none() {
        if keeps_data {
            let orphan = Rendered::new(&render_shared_namespace(s, true))?;
            apply_all(std::slice::from_ref(&orphan), ctx).await?;
            let note = format!(
                "namespace {ns} and its data are kept, labelled {ORPHANED_LABEL}=true (reclaimPolicy: Retain)"
            );
            publish(
                ctx,
                s,
                EventType::Normal,
                "NamespaceRetained",
                "Cleanup",
                &note,
            )
            .await;
        } else {
            let resource = ApiResource::erase::<Namespace>(&());
            delete(&ctx.client, &ctx.metrics, &resource, None, &ns).await?;
        }
    }
    set_finalizer(s, FINALIZER, false, ctx).await?;
    ctx.metrics.forget_service(&s.name_any());
    Ok(Action::await_change())
}

/// What the status of a Shared service says: one instance, serving every selected comune.
fn summarize_shared(s: &SharedService, ns: &str, state: InstanceState) -> Summary {
    let ready = usize::from(state == InstanceState::Available);
    let message = match state {
        InstanceState::Available => format!("the instance in {ns} is Available"),
        InstanceState::QuotaExceeded => {
            format!("the instance in {ns} does not fit its namespace's quota")
        }
        _ => format!("the instance in {ns} is not Available yet"),
    };
    Summary {
        desired: 1,
        ready,
        ready_condition: if ready == 1 {
            (true, "Available", message)
        } else {
            (false, "InstancesNotReady", message)
        },
        not_ready: vec![],
        rollout: Some(RolloutStatus {
            target_version: template_version(s, None),
            updated: i32::from(!matches!(
                state,
                InstanceState::Outdated | InstanceState::Missing
            )),
            total: 1,
        }),
        halted: (state == InstanceState::Stalled).then(|| vec![ns.to_string()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cache_counts_as_listed_after_its_first_list_and_checking_never_waits() {
        let (store, mut writer) = reflector::store::<Namespace>();
        // Concurrent checks before the first list completes each answer at once.
        let checks = futures::future::join_all((0..3).map(|_| async { listed(&store) })).await;
        assert_eq!(checks, [false, false, false]);
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Init);
        assert!(!listed(&store));
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        assert!(listed(&store));
    }
}
