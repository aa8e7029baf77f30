//! A pass of a Dedicated service: one instance in each selected comune's namespace, template
//! changes rolled out in waves (see `rollout`).

use std::sync::atomic::{AtomicBool, Ordering};

use consorzio_api::{Municipality, SharedService};
use kube::{ResourceExt, runtime::controller::Action};

use super::{
    super::{
        Context, Error,
        apply::apply_all,
        passes::{Scope, Went},
    },
    credentials::ensure_credentials,
    failures::{each, on, record},
    observe::{instance_state, serving},
    rollout::{Observed, plan},
    status::{Summary, entry, finish, summarize, write_status},
    teardown::{prune, remove_unrendered},
    went,
};
use crate::render::{
    namespace_name,
    service::{ServiceRenderError, Versions, instance_url, max_unavailable, render_dedicated},
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

    let versions = Versions::new(s);
    let states: Vec<_> = comuni
        .iter()
        .zip(&namespaces)
        .map(|(m, ns)| instance_state(s, ns, &versions.of(Some(&m.name_any())), ctx))
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
        let mut entry = entry(s, states[i], url, version);
        if m.spec.suspended {
            entry.phase = "Suspended".into();
        }
        ctx.report(m, &s.name_any(), Some(entry));
    };
    let wrote = AtomicBool::new(false);
    let (namespaces_ref, report_ref, wrote_ref) = (&namespaces, &report, &wrote);
    let mut failures = each(plan.apply.iter().copied(), ctx, |i| async move {
        let m = comuni[i];
        let ns = &namespaces_ref[i];
        let work = async {
            ensure_credentials(s, ns, Some(&m.name_any()), ctx).await?;
            // The same inputs rendered without error above.
            let rendered = render_dedicated(s, m, &ctx.config)
                .map_err(|_| Error::Malformed("an instance template that rendered before"))?;
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
    failures.extend(prune(s, namespaces.iter().cloned().collect(), scope, ctx).await);
    // The entries of comuni the pass does not cover have not changed since the last.
    (0..comuni.len())
        .filter(|&i| scope.covers(&comuni[i].name_any()))
        .for_each(report);
    let retry = record(s, &failures, |c| scope.covers(c), ctx).await;
    let halted = plan.halted.iter().map(|&i| comuni[i].name_any()).collect();
    let summary = summarize(s, comuni, &states, halted).failed_on(&failures);
    Ok((
        finish(s, summary, retry, ctx).await?,
        went(&wrote, &failures),
    ))
}
