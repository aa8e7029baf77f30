//! The Municipality reconciler: render, apply what differs, prune what is no longer rendered,
//! write status; and on deletion, keep or delete the namespace as the deletion policy says.

mod backup;
mod status;

use std::{sync::Arc, time::Duration};

use consorzio_api::{DeletionPolicy, Municipality};
use futures::{Stream, StreamExt, future, future::try_join_all};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams},
    core::DeserializeGuard,
    runtime::{
        controller::{self, Action, Controller},
        reflector::ObjectRef,
    },
};

use super::{
    Context, Error, Events,
    apply::{Applied, Reclaim, apply_unless_unseen, delete, remove, unrendered},
    caches::quota_usage,
    conditions::{Ready, is_ready},
    error::{During, Step},
    kinds::{self, Owner},
    namespace::{NamespaceState, conflict_message, namespace_state, release, uninstalling},
    object::set_finalizer,
    passes::{
        CREATION_LAG, Fingerprints, RESYNC, RETRY_SERVICE_ACCOUNT, SERVICE_ACCOUNT_PATIENCE,
        fingerprint,
    },
    reconcile::{log_outcome, reconcile_guarded, retry_policy},
};
use crate::{
    metrics::ControllerName,
    render::{
        MUNICIPALITY_LABEL, Rendered, municipality::render_namespace, namespace_name,
        render_municipality, service::SERVICE_LABEL,
    },
};
use status::write_status;

/// Keeps a Municipality from going before its namespace is kept or deleted, as its policy says.
pub const FINALIZER: &str = "consorzio.io/namespace";

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
    let seen = Fingerprints::new(ctx.caches.municipalities.clone());
    let events =
        events.filter(move |m| future::ready(seen.changed(&m.name_any(), what_is_read(m))));
    Controller::for_shared_stream(events, ctx.caches.municipalities.clone())
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .reconcile_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(log_outcome)
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

    let name = m.name_any();
    let ns = namespace_name(m, &ctx.config);
    match namespace_state(ctx, &ns, MUNICIPALITY_LABEL, &name).await? {
        NamespaceState::Foreign => {
            let message = conflict_message(&ns, "comune", "choose another namespace prefix");
            write_status(m, ctx, Ready::no("NamespaceConflict", message), &ns).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        NamespaceState::Terminating => {
            let message = format!("namespace {ns} is being deleted; waiting to create it anew");
            write_status(m, ctx, Ready::no("NamespaceTerminating", message), &ns).await?;
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        NamespaceState::Absent | NamespaceState::Ours => {}
    }

    let mut desired = render_municipality(m, &ctx.config).map_err(Error::render(describe_of(m)))?;
    // Its backup Schedule once the cluster has Velero (its CRDs).
    desired.retain(|r| {
        r.resource.kind != kinds::VELERO_SCHEDULE.kind || ctx.caches.serves(&kinds::VELERO_SCHEDULE)
    });
    // The namespace first: everything else lives in it.
    let (namespace, rest) = desired
        .split_first()
        .ok_or(Error::Malformed("a comune renders its namespace first"))?;
    let mut applied = vec![apply_unless_unseen(ctx, namespace).await?];
    applied.extend(try_join_all(rest.iter().map(|obj| apply_unless_unseen(ctx, obj))).await?);
    // What the caches do not show yet is looked at again once they should.
    let look_again = applied.contains(&Applied::Unseen).then_some(CREATION_LAG);
    prune(m, &desired, &ns, ctx).await?;

    // The API server refuses pods in a namespace until the controller-manager has made its
    // `default` ServiceAccount, and services create instances only in Ready comuni: a comune
    // becomes Ready once its namespace has it. (In a cold start of 1,000 comuni, instances made
    // sooner had their pods refused 8,000 times, each retried after a growing backoff.) A comune
    // that was Ready stays so.
    let has_account = ctx
        .caches
        .get(&kinds::DEFAULT_SERVICE_ACCOUNT, Some(&ns), "default")
        .is_some();
    if !is_ready(&ctx.entries.current(m).conditions) && !has_account {
        let waited = ctx.entries.waited(&name);
        // Its creation wakes this controller; the requeues are in case it takes long.
        if let Some(patience) = SERVICE_ACCOUNT_PATIENCE.checked_sub(waited) {
            let later = look_again.map_or(patience, |l| l.min(patience));
            return Ok(Action::requeue(later.max(Duration::from_secs(1))));
        }
        let message = format!(
            "namespace {ns} has no default ServiceAccount yet, and pods cannot be created \
             without it; the controller-manager's serviceaccount controller makes it"
        );
        write_status(m, ctx, Ready::no("WaitingForServiceAccount", message), &ns).await?;
        return Ok(Action::requeue(look_again.unwrap_or(RETRY_SERVICE_ACCOUNT)));
    }

    let ready = if m.spec.suspended {
        stop_pods(&ns, ctx).await?;
        let message = format!(
            "namespace {ns} is in place, its data kept; its pods are stopped and no pods may run \
             while the comune is suspended"
        );
        Ready::yes("Suspended", message)
    } else {
        let message =
            format!("namespace {ns}, its quota, limits, network policies and access are in place");
        Ready::yes("Reconciled", message)
    };
    let usage_later = write_status(m, ctx, ready, &ns).await?;
    let later = [usage_later, look_again].into_iter().flatten().min();
    Ok(Action::requeue(later.unwrap_or(RESYNC)))
}

/// A suspended comune runs nothing: its instances are scaled to zero (see `render_dedicated`),
/// its quota admits no pod, and the pods still running in its namespace (its own workloads') are
/// deleted, while its quota says any run. Their controllers cannot make them again until the
/// comune resumes: then its quota admits pods again, and Deployments, StatefulSets and Jobs bring
/// them back. The operator guard lets the operator delete pods only in namespaces labelled
/// suspended.
async fn stop_pods(ns: &str, ctx: &Context) -> Result<(), Error> {
    let running = ctx
        .caches
        .get(&kinds::RESOURCE_QUOTA, Some(ns), "consorzio-quota")
        .and_then(|q| quota_usage(&q).remove("pods"))
        .is_some_and(|pods| pods.used.0 != "0");
    if !running {
        return Ok(());
    }
    ctx.metrics.wrote("Pod");
    Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .delete_collection(&DeleteParams::background(), &ListParams::default())
        .await
        .during(
            Step::Delete,
            format!("the pods of suspended namespace {ns}"),
        )?;
    Ok(())
}

/// `Municipality name`, for messages.
fn describe_of(m: &Municipality) -> String {
    crate::render::describe("Municipality", None, &m.name_any())
}

/// Deletes the comune's objects that it no longer renders (an access binding or the internet
/// egress policy that the spec dropped). The services' objects in its namespace are theirs.
async fn prune(
    m: &Municipality,
    desired: &[Rendered],
    ns: &str,
    ctx: &Context,
) -> Result<(), Error> {
    let name = m.name_any();
    let comune = |obj: &super::Cached| {
        obj.label(MUNICIPALITY_LABEL) == Some(name.as_str()) && obj.label(SERVICE_LABEL).is_none()
    };
    for (kind, obj) in unrendered(ctx, Owner::Municipality, ns, comune, desired) {
        remove(ctx, kind, &obj, Reclaim::Retain).await?;
    }
    Ok(())
}

/// A comune that goes keeping its data loses its people's access to it: its admins' and viewers'
/// RoleBindings are deleted (re-applying the Municipality makes them again).
async fn revoke_access(m: &Municipality, ns: &str, ctx: &Context) -> Result<(), Error> {
    let name = m.name_any();
    for binding in ctx.caches.in_namespace(&kinds::ROLE_BINDING, ns) {
        let comune = binding.label(MUNICIPALITY_LABEL) == Some(name.as_str());
        if comune && binding.label(SERVICE_LABEL).is_none() && !binding.deleting() {
            delete(ctx, &kinds::ROLE_BINDING, Some(ns), binding.name()).await?;
        }
    }
    Ok(())
}

/// The Municipality is being deleted: keep its namespace (Retain) or delete it (Delete), then
/// let it go.
async fn cleanup(m: &Municipality, ctx: &Context) -> Result<Action, Error> {
    if !m.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = m.name_any();
    let ns = namespace_name(m, &ctx.config);
    let state = namespace_state(ctx, &ns, MUNICIPALITY_LABEL, &name).await?;
    let (reclaim, policy) = match m.spec.deletion_policy {
        DeletionPolicy::Retain => (Reclaim::Retain, "deletionPolicy: Retain"),
        // Deleting the CRD deletes every Municipality: an uninstall keeps all data.
        DeletionPolicy::Delete if uninstalling(ctx, "municipalities.consorzio.io").await? => (
            Reclaim::Retain,
            "deletionPolicy: Delete, but the Municipality CRD is being deleted: an uninstall keeps all data",
        ),
        DeletionPolicy::Delete => (Reclaim::Delete, "deletionPolicy: Delete"),
    };
    match (reclaim, state) {
        (_, NamespaceState::Ours) => {
            if reclaim == Reclaim::Retain {
                revoke_access(m, &ns, ctx).await?;
            }
            let orphaned = Rendered::new(&render_namespace(m, &ctx.config, true))
                .map_err(Error::render(describe_of(m)))?;
            release(ctx, m, &ns, reclaim, &orphaned, policy).await?;
            if reclaim == Reclaim::Delete {
                // Let go only once it is gone.
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
        }
        (Reclaim::Delete, NamespaceState::Terminating) => {
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        // Absent, or not ours (never touched), or already terminating under Retain: nothing to do.
        _ => {}
    }
    // No more backups of what it kept; those taken stay until they expire.
    if let Some(velero) = &ctx.config.velero_namespace {
        let schedule = ctx.caches.get(&kinds::VELERO_SCHEDULE, Some(velero), &ns);
        if schedule.is_some_and(|s| !s.deleting()) {
            delete(ctx, &kinds::VELERO_SCHEDULE, Some(velero), &ns).await?;
        }
    }
    set_finalizer(m, FINALIZER, false, ctx).await?;
    if let Some(backups) = &ctx.backups {
        backups.forget(&name);
    }
    ctx.metrics.forget_municipality(&name);
    ctx.entries.forget(&name);
    Ok(Action::await_change())
}
