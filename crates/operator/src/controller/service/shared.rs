//! A pass of a Shared service: one instance in the namespace `shared-<service>`, and in each
//! selected comune's namespace an access point and the subscription label.

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use consorzio_api::{Municipality, SharedService};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;

use super::{
    super::{
        Context, Error,
        apply::{SERVICE_MANAGER_PREFIX, apply_all},
        error::{During, Step, describe, gone_is_done},
        kinds,
        namespace::{NamespaceState, conflict_message, namespace_state},
        passes::{Scope, Went},
    },
    InstanceState,
    backup_credentials::ensure_backup_credentials,
    credentials::ensure_credentials,
    database::{ensure_database_secrets, starts_pods, waiting_for},
    failures::{each, on, record},
    missing_operator,
    observe::instance_state,
    status::{Summary, entry, finish, summarize_shared, write_status},
    teardown::{prune, remove_unrendered},
    tenant::{Slots, TENANT_JOBS_POLL, offboard_leaving, onboard, tenant_state},
    went, with_certificate,
};
use crate::render::{
    Rendered,
    database::Place,
    instance::public_url,
    namespace_name,
    service::{SERVICE_LABEL, template_version},
    shared::{access_url, render_access_point, render_shared, shared_namespace, subscriber_label},
};

/// A pass over the comuni that `scope` covers, of the comuni that get the service.
pub async fn reconcile_shared(
    s: &SharedService,
    comuni: &[&Municipality],
    scope: &Scope,
    ctx: &Context,
) -> Result<(Action, Went), Error> {
    let name = s.name_any();
    let ns = shared_namespace(s);
    let db = s.spec.database.as_ref();
    if let Some((reason, why)) = missing_operator(s, ctx) {
        write_status(s, ctx, Summary::failed(reason, why)).await?;
        return Ok((Action::requeue(Duration::from_secs(10)), Went::Partly));
    }
    let instance =
        render_shared(s, &ctx.config).map_err(Error::render(format!("SharedService {name}")))?;
    let Some(rest) = claim_namespace(s, &instance, ctx).await? else {
        let message = conflict_message(&ns, "service", "give the service another name");
        write_status(s, ctx, Summary::failed("NamespaceConflict", message)).await?;
        return Ok((Action::requeue(Duration::from_secs(60)), Went::Partly));
    };
    ensure_credentials(s, &ns, None, ctx).await?;
    let version = template_version(s, None);
    let state = instance_state(s, &ns, &version, ctx);
    let waiting = match db {
        Some(db) => {
            ensure_database_secrets(s, db, &ns, None, Place::Own, ctx).await?;
            ensure_backup_credentials(s, db, &ns, None, ctx).await?;
            waiting_for(s, db, &ns, None, Place::Own, ctx)
        }
        None => None,
    };
    // A new instance starts once its database is ready; one that runs keeps running.
    let rest: Vec<Rendered> = rest
        .iter()
        .filter(|r| waiting.is_none() || state != InstanceState::Missing || !starts_pods(r))
        .cloned()
        .collect();
    apply_all(ctx, &rest).await?;
    remove_unrendered(s, &ns, &instance, ctx).await?;

    // Each comune's entry is reported once its access point is applied, the others' at the end.
    let url = s
        .spec
        .ingress
        .as_ref()
        .map(|i| public_url(s, &ctx.config, &i.host));
    let report = |i: usize| {
        let m = comuni[i];
        let url = url
            .clone()
            .or_else(|| Some(access_url(s, &namespace_name(m, &ctx.config))));
        let entry = entry(s, state, url, version.clone(), waiting.clone());
        let mut entry = with_certificate(entry, s, m, &ns, ctx);
        entry.tenant = tenant_state(s, m, state == InstanceState::Available, ctx);
        ctx.report(m, &name, Some(entry));
    };
    let wrote = AtomicBool::new(false);
    let slots = Slots::new(s, ctx);
    let (report_ref, wrote_ref, slots_ref) = (&report, &wrote, &slots);
    let covered = (0..comuni.len()).filter(|&i| scope.covers(&comuni[i].name_any()));
    let mut failures = each(covered, ctx, |i| async move {
        let m = comuni[i];
        let work = async {
            let rendered = render_access_point(s, m, &ctx.config)
                .map_err(Error::render(format!("SharedService {}", s.name_any())))?;
            if apply_all(ctx, &rendered).await? {
                wrote_ref.store(true, Ordering::Relaxed);
            }
            subscribe(s, &namespace_name(m, &ctx.config), true, ctx).await?;
            // Its space in the application, once the application serves.
            if state == InstanceState::Available {
                onboard(s, m, slots_ref, ctx).await?;
            }
            report_ref(i);
            Ok(())
        };
        work.await.map_err(on(m.name_any()))
    })
    .await;
    let mut keep: BTreeSet<String> = comuni
        .iter()
        .map(|m| namespace_name(m, &ctx.config))
        .collect();
    keep.insert(ns.clone());
    // Comuni that leave keep their access until their offboarding Job has ended.
    let held = offboard_leaving(s, &keep, |c| scope.covers(c), ctx).await;
    keep.extend(held.iter().cloned());
    failures.extend(prune(s, keep, scope, ctx).await);
    (0..comuni.len()).for_each(report);
    let retry = record(s, &failures, |c| scope.covers(c), ctx).await;
    let summary = summarize_shared(s, &ns, state, waiting.as_deref()).failed_on(&failures);
    // Tenant Jobs that run or wait for a slot: looked at again soon, over every comune (a Job
    // that ends wakes its own comune's pass only).
    let jobs_pending = !held.is_empty() || slots.exhausted(s);
    let retry = if jobs_pending {
        retry.map_or(Some(TENANT_JOBS_POLL), |r| Some(r.min(TENANT_JOBS_POLL)))
    } else {
        retry
    };
    let went = if jobs_pending {
        Went::Partly
    } else {
        went(&wrote, &failures)
    };
    Ok((finish(s, summary, retry, ctx).await?, went))
}

/// Applies the service's namespace (the first of `rendered`) unless it is someone else's, and
/// returns the rest of `rendered`, which lives in it: `None` when it is someone else's.
pub async fn claim_namespace<'a>(
    s: &SharedService,
    rendered: &'a [Rendered],
    ctx: &Context,
) -> Result<Option<&'a [Rendered]>, Error> {
    let ns = shared_namespace(s);
    if namespace_state(ctx, &ns, SERVICE_LABEL, &s.name_any()).await? == NamespaceState::Foreign {
        return Ok(None);
    }
    let (namespace, rest) = rendered
        .split_first()
        .ok_or(Error::Malformed("a service renders its namespace first"))?;
    apply_all(ctx, std::slice::from_ref(namespace)).await?;
    Ok(Some(rest))
}

/// Labels (or unlabels) a comune's namespace as a subscriber of a Shared service, with a merge
/// patch under the service's own field manager: the Municipality controller's labels stay as they
/// are, and a namespace that is gone is not created again.
pub async fn subscribe(s: &SharedService, ns: &str, on: bool, ctx: &Context) -> Result<(), Error> {
    let label = subscriber_label(s);
    let has = ctx
        .caches
        .get(&kinds::NAMESPACE, None, ns)
        .is_some_and(|n| n.label(&label) == Some("true"));
    if has == on {
        return Ok(());
    }
    let value = on.then_some("true");
    let patch = json!({"metadata": {"labels": {label: value}}});
    ctx.metrics.wrote("Namespace");
    let manager = format!("{SERVICE_MANAGER_PREFIX}{}", s.name_any());
    let patched = Api::<Namespace>::all(ctx.client.clone())
        .patch(
            ns,
            &PatchParams {
                field_manager: Some(manager),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await;
    gone_is_done(patched).during(Step::Subscribe, describe("Namespace", None, ns))
}
