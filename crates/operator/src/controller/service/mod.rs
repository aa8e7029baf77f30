//! The SharedService reconciler. Dedicated tenancy (`dedicated`): one instance in each selected
//! comune's namespace, template changes rolled out in waves (`rollout`). Shared tenancy
//! (`shared`): one instance in the namespace `shared-<service>` and an access point in each
//! selected comune's namespace. Either way, what comuni that leave had goes, their data kept
//! (`teardown`).

mod backup_credentials;
mod certificate;
mod credentials;
mod database;
mod dedicated;
mod failures;
mod observe;
mod rollout;
mod shared;
mod status;
mod teardown;
mod tenant;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use consorzio_api::{Municipality, SharedService};
use futures::{FutureExt, Stream, StreamExt};
use kube::{
    Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        controller::{self, Action, Controller},
        reflector::{self, ObjectRef},
    },
};

pub use failures::Retries;
pub use observe::InstanceState;

use super::{
    Context, Error, Events,
    conditions::is_ready,
    object::set_finalizer,
    passes::{Fingerprints, Scope, Went, fingerprint},
    reconcile::{log_outcome, reconcile_guarded, retry_policy},
};
use crate::{
    metrics::ControllerName,
    render::service::{Selection, is_dedicated},
};

/// Keeps a SharedService until its instances are removed (their volumes kept or not).
pub const FINALIZER: &str = "consorzio.io/instances";

/// Runs the SharedService controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    events: Events<SharedService>,
    comuni: Events<Municipality>,
    triggers: impl Stream<Item = ObjectRef<SharedService>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let services = ctx.caches.shared_services.clone();
    let changes = ctx.triggers.changes.clone();
    let seen = Fingerprints::new(ctx.caches.municipalities.clone());
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
    Controller::for_shared_stream(events, ctx.caches.shared_services.clone())
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .watches_shared_stream(comuni, every_service)
        .reconcile_on(triggers.map(|r: ObjectRef<SharedService>| ObjectRef::new(&r.name)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(log_outcome)
        .await;
}

async fn reconcile(
    guard: Arc<DeserializeGuard<SharedService>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    // A pass looks at every comune the service serves, and every change of an instance asks
    // for one: the next pass waits out the last one's cooldown (see `passes`), and the changes
    // that arrive meanwhile are merged into it. Waiting is a requeue, not a sleep, so it holds
    // no concurrency slot.
    if let Some(wait) = ctx.passes.cooldown(&guard.name_any()) {
        return Ok(Action::requeue(wait));
    }
    reconcile_guarded(&guard, &ctx, ControllerName::sharedservice, |s| async {
        let pass = ctx.passes.start(s, &ctx.triggers.changes);
        let outcome = reconcile_service(s, &pass.scope, &ctx).await;
        let went = outcome.as_ref().map_or(Went::Partly, |(_, went)| *went);
        ctx.passes.done(s, pass, went);
        outcome.map(|(action, _)| action)
    })
    .await
}

fn error_policy(
    guard: Arc<DeserializeGuard<SharedService>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    retry_policy(&guard, error, &ctx, ControllerName::sharedservice)
}

/// A fingerprint of what the services read of a comune: its spec (the generation), labels,
/// readiness and deletion.
fn what_services_read(m: &DeserializeGuard<Municipality>) -> u64 {
    let meta = m.meta();
    fingerprint((
        &meta.generation,
        &meta.labels,
        meta.deletion_timestamp.is_some(),
        m.0.as_ref().is_ok_and(comune_is_ready),
    ))
}

fn comune_is_ready(m: &Municipality) -> bool {
    m.meta().deletion_timestamp.is_none()
        && m.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
}

/// The comuni that get the service: selected and Ready, by name. Shared with the cache, not
/// copied: a pass over thousands of comuni would otherwise copy each of them.
fn selected(s: &SharedService, ctx: &Context) -> Vec<Arc<DeserializeGuard<Municipality>>> {
    let selection = Selection::new(s);
    let mut chosen: Vec<_> = ctx
        .caches
        .municipalities
        .state()
        .into_iter()
        .filter(|g| {
            g.0.as_ref()
                .is_ok_and(|m| comune_is_ready(m) && selection.matches(m))
        })
        .collect();
    chosen.sort_unstable_by(|a, b| a.meta().name.cmp(&b.meta().name));
    chosen
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
    if !listed(&ctx.caches.municipalities) {
        return Ok((Action::requeue(Duration::from_secs(1)), Went::Partly));
    }
    if s.meta().deletion_timestamp.is_some() {
        return Ok((teardown::cleanup(s, ctx).await?, Went::Partly));
    }
    set_finalizer(s, FINALIZER, true, ctx).await?;
    let chosen = selected(s, ctx);
    let comuni: Vec<&Municipality> = chosen.iter().filter_map(|g| g.0.as_ref().ok()).collect();
    if is_dedicated(s) {
        dedicated::reconcile_dedicated(s, &comuni, scope, ctx).await
    } else {
        shared::reconcile_shared(s, &comuni, scope, ctx).await
    }
}

/// Which operator the cluster lacks for what `s` asks, if any: the reason and what to install.
fn missing_operator(s: &SharedService, ctx: &Context) -> Option<(&'static str, String)> {
    let db = s.spec.database.as_ref();
    db.and_then(|db| database::missing_database_operator(db, ctx))
        .map(|why| ("DatabaseOperatorMissing", why))
        .or_else(|| {
            db.and_then(|db| database::missing_backup_kinds(db, ctx))
                .map(|why| ("DatabaseBackupMissing", why))
        })
        .or_else(|| {
            certificate::missing_cert_manager(s, ctx).map(|why| ("CertManagerMissing", why))
        })
}

/// A comune's entry (`ns` its instance's or access point's namespace, `instance_ns` where the
/// instance is) with its host's certificate, whose expiry goes to the metrics.
fn with_certificate(
    mut entry: consorzio_api::ServiceInstanceStatus,
    s: &SharedService,
    m: &Municipality,
    instance_ns: &str,
    ctx: &Context,
) -> consorzio_api::ServiceInstanceStatus {
    entry.certificate = certificate::certificate_state(s, instance_ns, ctx);
    let not_after = entry
        .certificate
        .as_ref()
        .and_then(|c| c.not_after.as_deref());
    ctx.metrics.set_certificate(
        &s.name_any(),
        &m.name_any(),
        not_after.and_then(certificate::unix_seconds),
    );
    entry
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

/// How far a pass went: through, writing or not, unless it failed on some comune (the next
/// pass then covers every comune).
fn went(wrote: &AtomicBool, failures: &[failures::Failed]) -> Went {
    if !failures.is_empty() {
        Went::Partly
    } else if wrote.load(Ordering::Relaxed) {
        Went::Wrote
    } else {
        Went::Through
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Namespace;

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
