//! A pass of a Dedicated service: one instance in each selected comune's namespace, template
//! changes rolled out in waves (see `rollout`).

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use consorzio_api::{Database, Municipality, SharedService};
use kube::{ResourceExt, runtime::controller::Action};

use super::{
    super::{
        Context, Error,
        apply::apply_all,
        namespace::conflict_message,
        passes::{Scope, Went},
    },
    InstanceState,
    backup_credentials::ensure_backup_credentials,
    credentials::ensure_credentials,
    database::{ensure_database_secrets, place_of, starts_pods, waiting_for},
    failures::{each, on, record},
    missing_operator,
    observe::{instance_state, serving},
    rollout::{Observed, plan},
    shared::{claim_namespace, subscribe},
    status::{Summary, entry, finish, summarize, write_status},
    teardown::{prune, remove_unrendered, remove_unrendered_of_service},
    went, with_certificate,
};
use crate::render::{
    database::Place,
    namespace_name,
    service::{
        ServiceRenderError, Versions, instance_url, max_unavailable, render_dedicated,
        render_dedicated_at,
    },
    service_namespace::render_database_namespace,
    shared::shared_namespace,
};

/// A pass over the comuni that `scope` covers, of the comuni that get the service.
pub async fn reconcile_dedicated(
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
            Err(ServiceRenderError::Template {
                municipality,
                source,
            }) => {
                let message = format!(
                    "comune {municipality}: {source}; existing instances are left as they are"
                );
                write_status(s, ctx, Summary::failed("InvalidTemplate", message)).await?;
                return Ok((Action::await_change(), Went::Partly));
            }
            Err(ServiceRenderError::Json(e)) => {
                return Err(Error::render(format!("SharedService {}", s.name_any()))(e));
            }
        }
    }
    let namespaces: Vec<String> = comuni
        .iter()
        .map(|m| namespace_name(m, &ctx.config))
        .collect();

    let db = s.spec.database.as_ref();
    if let Some((reason, why)) = missing_operator(s, ctx) {
        write_status(s, ctx, Summary::failed(reason, why)).await?;
        return Ok((Action::requeue(Duration::from_secs(10)), Went::Partly));
    }
    // Where each comune's database is, and the service's server for those on it.
    let places: Vec<Place> = comuni
        .iter()
        .map(|m| db.map_or(Place::Own, |db| place_of(s, db, m, ctx)))
        .collect();
    let server_ns = match db {
        Some(db) if places.contains(&Place::SharedServer) => {
            let Some(ns) = apply_database_namespace(s, db, ctx).await? else {
                let ns = shared_namespace(s);
                let message = conflict_message(&ns, "service", "give the service another name");
                write_status(s, ctx, Summary::failed("NamespaceConflict", message)).await?;
                return Ok((Action::requeue(Duration::from_secs(60)), Went::Partly));
            };
            Some(ns)
        }
        _ => None,
    };

    let versions = Versions::new(s);
    let states: Vec<_> = comuni
        .iter()
        .zip(&namespaces)
        .map(|(m, ns)| instance_state(s, ns, &versions.of(Some(&m.name_any())), ctx))
        .collect();
    let waits: Vec<Option<String>> = (0..comuni.len())
        .map(|i| {
            let comune = comuni[i].name_any();
            db.and_then(|db| waiting_for(s, db, &namespaces[i], Some(&comune), places[i], ctx))
        })
        .collect();
    let observed: Vec<Observed> = (0..comuni.len())
        .map(|i| Observed {
            state: states[i],
            // Read only where the plan asks: it reads and parses the Deployment.
            serving: states[i] == super::InstanceState::Outdated && serving(s, &namespaces[i], ctx),
            covered: scope.covers(&comuni[i].name_any()),
        })
        .collect();
    let plan = plan(&observed, max_unavailable(s, comuni.len()));
    tracing::debug!(service = %s.name_any(), apply = plan.apply.len(), why = %plan.why(), "rollout");

    // Each comune's entry is reported once its instance is applied, the others' at the end.
    let report = |i: usize| {
        let m = comuni[i];
        let url = instance_url(s, m, &ctx.config);
        let version = versions.of(Some(&m.name_any()));
        let entry = entry(s, states[i], url, version, waits[i].clone());
        let mut entry = with_certificate(entry, s, m, &namespaces[i], ctx);
        if m.spec.suspended {
            entry.phase = "Suspended".into();
        }
        ctx.report(m, &s.name_any(), Some(entry));
    };
    let wrote = AtomicBool::new(false);
    let (namespaces_ref, report_ref, wrote_ref) = (&namespaces, &report, &wrote);
    let (places_ref, states_ref, waits_ref) = (&places, &states, &waits);
    let mut failures = each(plan.apply.iter().copied(), ctx, |i| async move {
        let m = comuni[i];
        let ns = &namespaces_ref[i];
        let place = places_ref[i];
        let work = async {
            let comune = m.name_any();
            ensure_credentials(s, ns, Some(&comune), ctx).await?;
            if let Some(db) = db {
                ensure_database_secrets(s, db, ns, Some(&comune), place, ctx).await?;
                subscribe(s, ns, place == Place::SharedServer, ctx).await?;
                // The keys beside its database: its own, or the platform's on the service's server.
                let (keys_ns, whose) = match place {
                    Place::Own => (ns.clone(), Some(comune.as_str())),
                    Place::SharedServer => (shared_namespace(s), None),
                };
                ensure_backup_credentials(s, db, &keys_ns, whose, ctx).await?;
            }
            // The same inputs rendered without error above.
            let mut rendered = render_dedicated_at(s, m, &ctx.config, place)
                .map_err(|_| Error::Malformed("an instance template that rendered before"))?;
            // A new instance starts once its database is ready; one that runs keeps running.
            if waits_ref[i].is_some() && states_ref[i] == InstanceState::Missing {
                rendered.retain(|r| !starts_pods(r));
            }
            let applied = apply_all(ctx, &rendered).await?;
            let removed = remove_unrendered(s, ns, &rendered, ctx).await?;
            if applied || removed {
                wrote_ref.store(true, Ordering::Relaxed);
            }
            report_ref(i);
            Ok(())
        };
        work.await.map_err(on(m.name_any()))
    })
    .await;
    let mut keep: BTreeSet<String> = namespaces.iter().cloned().collect();
    keep.extend(server_ns);
    failures.extend(prune(s, keep, scope, ctx).await);
    // The entries of comuni the pass does not cover have not changed since the last.
    (0..comuni.len())
        .filter(|&i| scope.covers(&comuni[i].name_any()))
        .for_each(report);
    let retry = record(s, &failures, |c| scope.covers(c), ctx).await;
    let halted = plan.halted.iter().map(|&i| comuni[i].name_any()).collect();
    let summary = summarize(s, comuni, &states, &waits, halted).failed_on(&failures);
    Ok((
        finish(s, summary, retry, ctx).await?,
        went(&wrote, &failures),
    ))
}

/// The service's namespace with the server of its `ordinary` comuni's databases; returns it,
/// unless the namespace is someone else's.
async fn apply_database_namespace(
    s: &SharedService,
    db: &Database,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let ns = shared_namespace(s);
    let rendered = render_database_namespace(s, db, &ctx.config)
        .map_err(Error::render(format!("SharedService {}", s.name_any())))?;
    let Some(rest) = claim_namespace(s, &rendered, ctx).await? else {
        return Ok(None);
    };
    ensure_backup_credentials(s, db, &ns, None, ctx).await?;
    apply_all(ctx, rest).await?;
    remove_unrendered_of_service(s, &ns, &rendered, ctx).await?;
    Ok(Some(ns))
}
