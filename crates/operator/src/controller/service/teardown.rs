//! What goes when a comune no longer gets a service, when an instance no longer renders an
//! object, and when the service is deleted. Objects are found by kind (see `kinds`) and by the
//! service's label; those that hold data (volumes, and the credentials that go with them) are
//! kept, labelled orphaned, unless the service says `reclaimPolicy: Delete`.

use std::{collections::BTreeSet, sync::Arc};

use consorzio_api::{ReclaimPolicy, SharedService};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::{Api, Resource, ResourceExt, api::ListParams, runtime::controller::Action};

use super::{
    super::{
        Cached, Context, Error,
        apply::{Reclaim, delete, keep, owned_in, remove, unrendered},
        error::{During, Step},
        kinds::{self, KINDS, Kind, Lifecycle, Owner},
        namespace::{NamespaceState, namespace_state, release, uninstalling},
        object::set_finalizer,
        passes::Scope,
    },
    FINALIZER,
    failures::{Failed, each, on, record},
    observe::has_credentials,
    shared::subscribe,
};
use crate::render::{
    MUNICIPALITY_LABEL, Rendered, comune_namespace,
    database::{Place, database_secret_name, target},
    namespace_name,
    service::{SERVICE_LABEL, credentials_name, is_dedicated},
    service_namespace::render_shared_namespace,
    shared::{shared_namespace, subscriber_label},
    tenant::TENANT_JOB_LABEL,
};

/// What the service says becomes of its data.
fn reclaim(s: &SharedService) -> Reclaim {
    match s.spec.reclaim_policy {
        ReclaimPolicy::Delete => Reclaim::Delete,
        ReclaimPolicy::Retain => Reclaim::Retain,
    }
}

fn is_ours(s: &SharedService) -> impl Fn(&Cached) -> bool {
    let name = s.name_any();
    move |obj| obj.label(SERVICE_LABEL) == Some(name.as_str())
}

/// The service's cached objects in `ns`. In its own namespace, the namespace's isolation (quota,
/// limits, network policies) is left out: it stays as long as the namespace does.
fn owned(s: &SharedService, ns: &str, ctx: &Context) -> Vec<(&'static Kind, Arc<Cached>)> {
    let own_namespace = ns == shared_namespace(s);
    let ours = is_ours(s);
    owned_in(ctx, Owner::Service, ns, |kind, obj| {
        !(own_namespace && kind.owner == Owner::Both) && ours(obj)
    })
}

/// Removes the service's objects in `ns` that `rendered` (an instance or access point) lacks,
/// e.g. an Ingress once the service has no ingress. What holds data is only ever kept here,
/// whatever the reclaim policy: a volume no longer rendered may be a tenant's copy that carries
/// the service's labels, and deleting data takes the comune leaving or the service going. Says
/// whether it removed any.
pub async fn remove_unrendered(
    s: &SharedService,
    ns: &str,
    rendered: &[Rendered],
    ctx: &Context,
) -> Result<bool, Error> {
    // The tenant Jobs are rendered for each comune, and go as `tenant` says.
    let ours = is_ours(s);
    let rendered_here = |obj: &Cached| ours(obj) && obj.label(TENANT_JOB_LABEL).is_none();
    let gone = unrendered(ctx, Owner::Service, ns, rendered_here, rendered);
    for (kind, obj) in &gone {
        remove(ctx, kind, obj, Reclaim::Retain).await?;
    }
    Ok(!gone.is_empty())
}

/// Removes the service's own objects in its namespace `ns` that `rendered` lacks, leaving the
/// comuni's (their databases on its server, which go when they leave).
pub async fn remove_unrendered_of_service(
    s: &SharedService,
    ns: &str,
    rendered: &[Rendered],
    ctx: &Context,
) -> Result<bool, Error> {
    let ours = is_ours(s);
    let own = |obj: &Cached| ours(obj) && obj.label(MUNICIPALITY_LABEL).is_none();
    let gone = unrendered(ctx, Owner::Service, ns, own, rendered);
    for (kind, obj) in &gone {
        remove(ctx, kind, obj, Reclaim::Retain).await?;
    }
    Ok(!gone.is_empty())
}

/// Removes what the service has in namespaces other than `keep` (comuni that no longer get it,
/// or every one when the service goes). Looks only at the comuni that `scope` covers. Each comune
/// is revoked whatever happens to the others; returns those that failed.
pub async fn prune(
    s: &SharedService,
    keep: BTreeSet<String>,
    scope: &Scope,
    ctx: &Context,
) -> Vec<Failed> {
    prune_keeping(s, keep, scope, reclaim(s), ctx).await
}

/// `prune`, the data of the comuni that lose the service kept or deleted as `reclaim` says.
async fn prune_keeping(
    s: &SharedService,
    keep: BTreeSet<String>,
    scope: &Scope,
    reclaim: Reclaim,
    ctx: &Context,
) -> Vec<Failed> {
    let name = s.name_any();
    let leaving: Vec<String> = namespaces_in_use(s, scope, ctx)
        .difference(&keep)
        .cloned()
        .collect();
    let failures = each(leaving, ctx, |ns| async move {
        let comune = ns
            .strip_prefix(ctx.config.namespace_prefix.as_str())
            .unwrap_or(&ns);
        let comune = comune.to_string();
        remove_instance(s, &ns, reclaim, ctx)
            .await
            .map_err(on(comune))
    })
    .await;
    // Comuni that no longer get the service no longer list it.
    for m in ctx.caches.municipalities.state() {
        if let Ok(m) = &m.0
            && scope.covers(m.meta().name.as_deref().unwrap_or_default())
            && !keep.contains(&namespace_name(m, &ctx.config))
        {
            ctx.report(m, &name, None);
        }
    }
    failures
}

/// The namespaces where the service has something: instances, access points, subscriptions.
/// A pass over the comuni that changed looks only in theirs: the others have not changed since
/// a pass that left them as they should be.
fn namespaces_in_use(s: &SharedService, scope: &Scope, ctx: &Context) -> BTreeSet<String> {
    let label = subscriber_label(s);
    let subscribed = |ns: &str| {
        ctx.caches
            .get(&kinds::NAMESPACE, None, ns)
            .is_some_and(|n| n.label(&label).is_some())
    };
    if let Scope::Changed(comuni) = scope {
        return comuni
            .iter()
            .map(|c| comune_namespace(c, &ctx.config))
            .filter(|ns| subscribed(ns) || !owned(s, ns, ctx).is_empty())
            .collect();
    }
    let ours = is_ours(s);
    let mut found: BTreeSet<String> = KINDS
        .iter()
        .filter(|k| k.namespaced && kinds::rendered_by(k, Owner::Service))
        .flat_map(|kind| ctx.caches.all(kind))
        .filter(|obj| ours(obj))
        .filter_map(|obj| obj.namespace().map(str::to_string))
        .collect();
    for n in ctx.caches.all(&kinds::NAMESPACE) {
        if n.label(&label).is_some() {
            found.insert(n.name().to_string());
        }
    }
    found
}

/// Removes the service's instance or access point from `ns`: its data first (while the
/// Deployment still says whether credentials were made), then its other objects and the
/// subscription.
async fn remove_instance(
    s: &SharedService,
    ns: &str,
    reclaim: Reclaim,
    ctx: &Context,
) -> Result<(), Error> {
    let (data, rest): (Vec<_>, Vec<_>) = owned(s, ns, ctx)
        .into_iter()
        .partition(|(kind, _)| kind.lifecycle == Lifecycle::Data);
    // The credentials go with the data: kept when a volume is (or was: a retry after the volume
    // was kept no longer finds it in the cache, and the template says it had one), deleted
    // otherwise.
    if has_credentials(s, ns, ctx) {
        let secret = credentials_name(s);
        let had_data =
            !data.is_empty() || !s.spec.template.volumes.is_empty() || s.spec.database.is_some();
        if reclaim == Reclaim::Retain && had_data {
            keep(ctx, &kinds::SECRET, Some(ns), &secret).await?;
        } else {
            delete(ctx, &kinds::SECRET, Some(ns), &secret).await?;
        }
    }
    // The database's password goes with the database (a missing Secret is fine).
    if s.spec.database.is_some() {
        let secret = database_secret_name(s);
        match reclaim {
            Reclaim::Retain => keep(ctx, &kinds::SECRET, Some(ns), &secret).await?,
            Reclaim::Delete => delete(ctx, &kinds::SECRET, Some(ns), &secret).await?,
        }
    }
    for (kind, obj) in data.iter().chain(&rest) {
        remove(ctx, kind, obj, reclaim).await?;
    }
    remove_from_server(s, ns, reclaim, ctx).await?;
    subscribe(s, ns, false, ctx).await
}

/// Removes a comune's database from the service's shared server (its objects there, and the
/// Secret the server read its password from), kept or deleted as `reclaim` says.
async fn remove_from_server(
    s: &SharedService,
    ns: &str,
    reclaim: Reclaim,
    ctx: &Context,
) -> Result<(), Error> {
    let server_ns = shared_namespace(s);
    let Some(comune) = ns.strip_prefix(ctx.config.namespace_prefix.as_str()) else {
        return Ok(());
    };
    if s.spec.database.is_none() || ns == server_ns {
        return Ok(());
    }
    let theirs = owned(s, &server_ns, ctx)
        .into_iter()
        .filter(|(_, obj)| obj.label(MUNICIPALITY_LABEL) == Some(comune));
    for (kind, obj) in theirs {
        remove(ctx, kind, &obj, reclaim).await?;
    }
    let secret = target(s, ns, Some(comune), Place::SharedServer).secret;
    match reclaim {
        Reclaim::Retain => keep(ctx, &kinds::SECRET, Some(&server_ns), &secret).await,
        Reclaim::Delete => delete(ctx, &kinds::SECRET, Some(&server_ns), &secret).await,
    }
}

/// Whether namespace `ns` holds any volume claim, managed or kept.
async fn holds_volumes(ns: &str, ctx: &Context) -> Result<bool, Error> {
    let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
        .list_metadata(&ListParams::default().limit(1))
        .await
        .during(Step::Read, format!("the volume claims of namespace {ns}"))?;
    Ok(!claims.items.is_empty())
}

/// The service is being deleted: every instance and access point goes, volumes kept as the
/// service says; a shared namespace that holds kept data stays, no longer owned.
pub async fn cleanup(s: &SharedService, ctx: &Context) -> Result<Action, Error> {
    if !s.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = s.name_any();
    let ns = shared_namespace(s);
    // Deleting the CRD deletes every SharedService: an uninstall, not a decision to delete
    // data, which is then kept whatever the services say.
    let uninstall = uninstalling(ctx, "sharedservices.consorzio.io").await?;
    let data = if uninstall {
        Reclaim::Retain
    } else {
        reclaim(s)
    };
    // Every comune is revoked; the service goes once none failed.
    let failures = prune_keeping(s, BTreeSet::new(), &Scope::Whole, data, ctx).await;
    record(s, &failures, |_| true, ctx).await;
    if let Some(failed) = failures.into_iter().next() {
        return Err(failed.error);
    }
    if !is_dedicated(s)
        && namespace_state(ctx, &ns, SERVICE_LABEL, &name).await? == NamespaceState::Ours
    {
        let orphaned = Rendered::new(&render_shared_namespace(s, true))
            .map_err(Error::render(format!("SharedService {name}")))?;
        // Asked of the API server, not the caches: a volume kept by this cleanup (or an earlier
        // try of it, or when the template dropped its storage) is no longer managed, and so no
        // longer cached, and it is still data.
        let (reclaim, policy) = match data {
            Reclaim::Retain if holds_volumes(&ns, ctx).await? => {
                (Reclaim::Retain, "reclaimPolicy: Retain")
            }
            Reclaim::Retain => (Reclaim::Delete, "it holds no volume to keep"),
            Reclaim::Delete => (Reclaim::Delete, "reclaimPolicy: Delete"),
        };
        let policy = if uninstall {
            "the SharedService CRD is being deleted: an uninstall keeps all data"
        } else {
            policy
        };
        release(ctx, s, &ns, reclaim, &orphaned, policy).await?;
    }
    set_finalizer(s, FINALIZER, false, ctx).await?;
    ctx.metrics.forget_service(&name);
    Ok(Action::await_change())
}
