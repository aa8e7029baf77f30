//! The Municipality reconciler: render, apply what differs, prune, write status; and on deletion,
//! keep or delete the namespace as the deletion policy says.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use consorzio_api::{DeletionPolicy, Municipality, MunicipalityStatus, QuotaUsage};
use futures::{Stream, StreamExt, future, future::try_join_all};
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::{ApiResource, DeserializeGuard},
    runtime::{
        controller::{self, Action, Controller},
        events::EventType,
        reflector::ObjectRef,
    },
};
use serde_json::json;

use super::{
    Cached, Context, Error, Events, Fingerprints,
    apply::{Applied, CREATION_LAG, FIELD_MANAGER, apply_if_changed, apply_unless_unseen, delete},
    fingerprint,
    object::{publish, set_finalizer},
    reconcile_guarded, retry_policy,
    service::SERVICE_MANAGER_PREFIX,
    status::{condition, is_ready, ready_reason},
};
use crate::{
    metrics::{ControllerName, Metrics, QUOTA_RESOURCES},
    quantity,
    render::{
        MANAGED_BY, MUNICIPALITY_LABEL, ORPHANED_LABEL, Rendered,
        municipality::{official_code, optional_objects, render_namespace},
        namespace_name, render_municipality,
        service::selects,
    },
};

/// Keeps a Municipality from going before its namespace is kept or deleted, as its policy says.
pub const FINALIZER: &str = "consorzio.io/namespace";
/// How often a comune is checked even when nothing changed.
const RESYNC: Duration = Duration::from_secs(30 * 60);

/// Runs the Municipality controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    events: Events<Municipality>,
    triggers: impl Stream<Item = ObjectRef<Municipality>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let triggers = triggers.map(|r: ObjectRef<Municipality>| ObjectRef::new(&r.name));
    // Most changes of a comune are its status, which this controller writes: they need no
    // reconcile.
    let seen = Fingerprints::new(ctx.stores.municipalities.clone());
    let events =
        events.filter(move |m| future::ready(seen.changed(&m.name_any(), what_is_read(m))));
    Controller::for_shared_stream(events, ctx.stores.municipalities.clone())
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .reconcile_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(super::log_outcome)
        .await;
}

/// A fingerprint of what a reconcile reads of a comune, besides the status it writes: its spec
/// (the generation), labels, annotations, finalizers and deletion. Of an object these types
/// cannot read, every change.
fn what_is_read(m: &DeserializeGuard<Municipality>) -> u64 {
    let meta = m.meta();
    match &m.0 {
        Ok(_) => fingerprint((
            &meta.generation,
            &meta.labels,
            &meta.annotations,
            &meta.finalizers,
            meta.deletion_timestamp.is_some(),
        )),
        Err(_) => fingerprint(&meta.resource_version),
    }
}

async fn reconcile(
    guard: Arc<DeserializeGuard<Municipality>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    reconcile_guarded(&guard, &ctx, ControllerName::municipality, |m| {
        reconcile_municipality(m, &ctx)
    })
    .await
}

fn error_policy(
    guard: Arc<DeserializeGuard<Municipality>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    retry_policy(&guard, error, &ctx, ControllerName::municipality)
}

async fn reconcile_municipality(m: &Municipality, ctx: &Context) -> Result<Action, Error> {
    if m.meta().deletion_timestamp.is_some() {
        return cleanup(m, ctx).await;
    }
    set_finalizer(m, FINALIZER, true, ctx).await?;

    let ns_name = namespace_name(m, &ctx.config);
    match namespace_state(m, &ns_name, ctx).await? {
        NamespaceState::Foreign => {
            let message = format!(
                "namespace {ns_name} already exists and is not managed by consorzio for this comune; \
                 it is left untouched. Rename or remove it, or choose another namespace prefix"
            );
            write_status(m, ctx, (false, "NamespaceConflict", message), &ns_name).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        NamespaceState::Terminating => {
            let message =
                format!("namespace {ns_name} is being deleted; waiting to create it anew");
            write_status(m, ctx, (false, "NamespaceTerminating", message), &ns_name).await?;
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        NamespaceState::Absent | NamespaceState::Ours => {}
    }

    let desired = render_municipality(m, &ctx.config)?;
    // The namespace first: everything else lives in it.
    let (namespace, rest) = desired
        .split_first()
        .ok_or(Error::Malformed("rendered namespace"))?;
    let apply = |obj| {
        let cached = ctx.stores.cached(obj);
        apply_unless_unseen(&ctx.client, &ctx.metrics, obj, cached, &ctx.created)
    };
    let mut applied = vec![apply(namespace).await?];
    applied.extend(try_join_all(rest.iter().map(apply)).await?);
    // What the caches do not show yet is looked at again once they should.
    let look_again = applied.contains(&Applied::Unseen).then_some(CREATION_LAG);
    prune(&desired, &ns_name, ctx).await?;

    // The API server refuses pods in a namespace until the controller-manager has made its
    // `default` ServiceAccount, and services create instances only in Ready comuni: a comune
    // becomes Ready once its namespace has it. (In a cold start of 1,000 comuni, instances made
    // sooner had their pods refused 8,000 times, each retried after a growing backoff.) A comune
    // that was Ready stays so.
    if !was_ready(m, ctx) && !has_default_service_account(&ns_name, ctx) {
        let waited = ctx.statuses.waited(&m.name_any());
        // Its creation wakes this controller; the requeues are in case it takes long.
        if let Some(patience) = SERVICE_ACCOUNT_PATIENCE.checked_sub(waited) {
            let later = look_again.map_or(patience, |l| l.min(patience));
            return Ok(Action::requeue(later.max(Duration::from_secs(1))));
        }
        let message = format!(
            "namespace {ns_name} has no default ServiceAccount yet, and pods cannot be created \
             without it; the controller-manager's serviceaccount controller makes it"
        );
        write_status(
            m,
            ctx,
            (false, "WaitingForServiceAccount", message),
            &ns_name,
        )
        .await?;
        return Ok(Action::requeue(look_again.unwrap_or(RETRY_SERVICE_ACCOUNT)));
    }

    let ready = if m.spec.suspended {
        (
            true,
            "Suspended",
            format!(
                "namespace {ns_name} is in place; no pods may run while the comune is suspended"
            ),
        )
    } else {
        (
            true,
            "Reconciled",
            format!(
                "namespace {ns_name}, its quota, limits, network policies and access are in place"
            ),
        )
    };
    let usage_later = write_status(m, ctx, ready, &ns_name).await?;
    let later = [usage_later, look_again].into_iter().flatten().min();
    Ok(Action::requeue(later.unwrap_or(RESYNC)))
}

/// How long a comune's status waits silently for its namespace's `default` ServiceAccount
/// (usually a moment) before it says what it waits for.
const SERVICE_ACCOUNT_PATIENCE: Duration = Duration::from_secs(10);
/// How often a comune that has waited that long looks for it again.
const RETRY_SERVICE_ACCOUNT: Duration = Duration::from_secs(30);

/// Whether the comune's status says it is Ready.
fn was_ready(m: &Municipality, ctx: &Context) -> bool {
    is_ready(&ctx.statuses.current(m).conditions)
}

fn has_default_service_account(ns: &str, ctx: &Context) -> bool {
    let key = ObjectRef::new("default").within(ns);
    ctx.stores.service_accounts.get(&key).is_some()
}

enum NamespaceState {
    Absent,
    Ours,
    Terminating,
    Foreign,
}

/// Whether the comune's namespace exists, and whether it is this Municipality's to manage.
async fn namespace_state(
    m: &Municipality,
    ns_name: &str,
    ctx: &Context,
) -> Result<NamespaceState, Error> {
    let name = m.name_any();
    let ours = |managed: Option<&str>, comune: Option<&str>| {
        managed == Some(MANAGED_BY.1) && comune == Some(name.as_str())
    };
    let cached = ctx.stores.namespaces.get(&ObjectRef::new(ns_name));
    let found = match cached {
        Some(ns) => Some((
            ours(ns.label(MANAGED_BY.0), ns.label(MUNICIPALITY_LABEL)),
            ns.deleting(),
        )),
        // Not in the cache of managed namespaces: it may still exist, unmanaged.
        None => Api::<Namespace>::all(ctx.client.clone())
            .get_opt(ns_name)
            .await?
            .map(|ns| {
                let label = |key| ns.labels().get(key).map(String::as_str);
                (
                    ours(label(MANAGED_BY.0), label(MUNICIPALITY_LABEL)),
                    ns.metadata.deletion_timestamp.is_some(),
                )
            }),
    };
    let Some((ours, terminating)) = found else {
        return Ok(NamespaceState::Absent);
    };
    Ok(match (ours, terminating) {
        (false, _) => NamespaceState::Foreign,
        (true, true) => NamespaceState::Terminating,
        (true, false) => NamespaceState::Ours,
    })
}

/// Deletes the managed objects this comune no longer needs (an access binding or the internet
/// egress policy that the spec dropped).
async fn prune(desired: &[Rendered], ns: &str, ctx: &Context) -> Result<(), Error> {
    for (resource, name) in optional_objects() {
        let wanted = desired
            .iter()
            .any(|d| d.resource.kind == resource.kind && d.object.name_any() == name);
        if wanted {
            continue;
        }
        let probe = Rendered {
            resource: resource.clone(),
            object: kube::api::DynamicObject::new(name, &resource).within(ns),
        };
        if ctx.stores.cached(&probe).is_some() {
            delete(&ctx.client, &ctx.metrics, &resource, Some(ns), name).await?;
        }
    }
    Ok(())
}

/// Writes the comune's status if it changed, and keeps the metrics current. The status carries
/// the services' entries too (see `statuses`). Returns when to try again if the write waits.
async fn write_status(
    m: &Municipality,
    ctx: &Context,
    (ready, reason, message): (bool, &str, String),
    ns_name: &str,
) -> Result<Option<Duration>, Error> {
    let name = m.name_any();
    let current = ctx.statuses.current(m);
    let quota = quota_usage(ctx, ns_name);
    record_quota(&ctx.metrics, &name, &quota);
    ctx.metrics.set_ready(&name, ready);

    if reason == "NamespaceConflict" && ready_reason(&current.conditions) != Some(reason) {
        publish(ctx, m, EventType::Warning, reason, "Reconcile", &message).await;
    }
    let expected: Vec<String> = if ready {
        ctx.stores
            .shared_services
            .state()
            .iter()
            .filter_map(|s| s.0.as_ref().ok())
            .filter(|s| s.meta().deletion_timestamp.is_none() && selects(s, m))
            .map(|s| s.name_any())
            .collect()
    } else {
        vec![]
    };
    let (services, hold) = ctx.statuses.services(&name, &current.services, &expected);
    let status = MunicipalityStatus {
        namespace: Some(ns_name.to_string()),
        code: official_code(m),
        observed_generation: m.metadata.generation,
        conditions: vec![condition(
            &current.conditions,
            "Ready",
            ready,
            reason,
            message,
            m.metadata.generation,
        )],
        quota,
        services,
    };
    if status == current {
        ctx.statuses.settled(&name, &status, None);
        return Ok(None);
    }
    // The comune's own state is written at once. The services' entries and the quota usage
    // wait, within bounds, so that one write carries several of their changes: entries wait a
    // while for those still on their way (most arrive sooner), and the quota alone is written at
    // most every 30 s (the metrics have it live).
    let mut own = status.clone();
    own.quota.clone_from(&current.quota);
    own.services.clone_from(&current.services);
    let own_changed = own != current;
    if !own_changed {
        if hold.is_some() {
            return Ok(hold);
        }
        if status.services == current.services
            && let Some(wait) = ctx.statuses.usage_write_wait(&name)
        {
            return Ok(Some(wait));
        }
    }
    tracing::debug!(
        municipality = %name,
        own = own_changed,
        quota = status.quota != current.quota,
        services = ?status.services.iter().map(|e| &e.phase).collect::<Vec<_>>(),
        was = ?current.services.iter().map(|e| &e.phase).collect::<Vec<_>>(),
        "writing status"
    );
    let patch = json!({
        "apiVersion": "consorzio.io/v1alpha1",
        "kind": "Municipality",
        "status": status,
    });
    ctx.metrics.wrote("Municipality");
    let api = Api::<Municipality>::all(ctx.client.clone());
    let written = api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    let version = release_older_managers(&api, written, ctx).await?;
    ctx.statuses.settled(&name, &status, version);
    Ok(None)
}

/// Earlier versions wrote each service's entry under a field manager of its own. Once this
/// controller writes the whole status, those managers let go of their entries, so that an entry
/// this controller drops is gone: once per comune, on its first status write. Returns the
/// resourceVersion of the last write.
async fn release_older_managers(
    api: &Api<Municipality>,
    written: Municipality,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let older: Vec<String> = written
        .managed_fields()
        .iter()
        .filter_map(|f| f.manager.clone())
        .filter(|manager| manager.starts_with(SERVICE_MANAGER_PREFIX))
        .collect();
    let mut version = written.resource_version();
    for manager in older {
        let release = json!({"apiVersion": "consorzio.io/v1alpha1", "kind": "Municipality"});
        ctx.metrics.wrote("Municipality");
        let released = api
            .patch_status(
                &written.name_any(),
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(release),
            )
            .await?;
        version = released.resource_version();
    }
    Ok(version)
}

/// Hard and used quota of the comune's namespace.
fn quota_usage(ctx: &Context, ns: &str) -> BTreeMap<String, QuotaUsage> {
    let key = ObjectRef::new("consorzio-quota").within(ns);
    ctx.stores
        .quotas
        .get(&key)
        .map(|quota| usage_of(&quota))
        .unwrap_or_default()
}

/// Hard and used quota, from the ResourceQuota's status as the quota controller reports it.
pub(super) fn usage_of(quota: &Cached<ResourceQuota>) -> BTreeMap<String, QuotaUsage> {
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

/// Sets the comune's quota metrics.
pub(super) fn record_quota(metrics: &Metrics, comune: &str, quota: &BTreeMap<String, QuotaUsage>) {
    for resource in QUOTA_RESOURCES {
        if let Some(q) = quota.get(resource) {
            let (hard, used) = (quantity::parse(&q.hard.0), quantity::parse(&q.used.0));
            metrics.set_quota(comune, resource, hard.unwrap_or(0.0), used.unwrap_or(0.0));
        }
    }
}

/// The Municipality is being deleted: keep its namespace (Retain) or delete it (Delete), then
/// let it go.
async fn cleanup(m: &Municipality, ctx: &Context) -> Result<Action, Error> {
    if !m.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = m.name_any();
    let ns_name = namespace_name(m, &ctx.config);
    let state = namespace_state(m, &ns_name, ctx).await?;
    match (m.spec.deletion_policy, state) {
        (DeletionPolicy::Retain, NamespaceState::Ours) => {
            let orphan = Rendered::new(&render_namespace(m, &ctx.config, true))?;
            apply_if_changed(
                &ctx.client,
                &ctx.metrics,
                &orphan,
                ctx.stores.cached(&orphan),
            )
            .await?;
            let note = format!(
                "namespace {ns_name} and its data are kept, labelled {ORPHANED_LABEL}=true (deletionPolicy: Retain)"
            );
            publish(
                ctx,
                m,
                EventType::Normal,
                "NamespaceRetained",
                "Reconcile",
                &note,
            )
            .await;
        }
        (DeletionPolicy::Delete, NamespaceState::Ours) => {
            let resource = ApiResource::erase::<Namespace>(&());
            delete(&ctx.client, &ctx.metrics, &resource, None, &ns_name).await?;
            publish(
                ctx,
                m,
                EventType::Normal,
                "NamespaceDeleting",
                "Reconcile",
                &format!("deleting namespace {ns_name} (deletionPolicy: Delete)"),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        (DeletionPolicy::Delete, NamespaceState::Terminating) => {
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        // Absent, or not ours (never touched), or already terminating under Retain: nothing to do.
        _ => {}
    }
    set_finalizer(m, FINALIZER, false, ctx).await?;
    ctx.metrics.forget_municipality(&name);
    ctx.statuses.forget(&name);
    Ok(Action::await_change())
}
