//! A comune's status: its Ready condition, quota and the services' entries, in one write, and
//! the metrics that follow it.

use std::{collections::BTreeMap, time::Duration};

use consorzio_api::{Condition, Municipality, MunicipalityStatus, QuotaUsage};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;

use super::super::{
    Context, Error,
    apply::{FIELD_MANAGER, SERVICE_MANAGER_PREFIX},
    caches::quota_usage,
    conditions::{Ready, progress, ready_reason},
    error::{During, Step},
    kinds,
    object::publish,
};
use super::backup::backup_report;
use crate::render::{municipality::official_code, service::selects};

/// `Ready`, and `Reconciling` and `Stalled` with it: a comune is stalled only when its namespace
/// is someone else's (it waits for a person); everything else it waits for comes by itself.
/// With `BackedUp` (see `backup`) once the platform has Velero.
fn conditions(
    previous: &[Condition],
    ready: Ready,
    backed_up: Option<Condition>,
    generation: Option<i64>,
) -> Vec<Condition> {
    let stalled =
        (ready.reason == "NamespaceConflict").then(|| (ready.reason, ready.message.clone()));
    let [reconciling, stalled] = progress(previous, &ready, stalled, generation);
    let ready = ready.condition(previous, generation);
    [ready, reconciling, stalled]
        .into_iter()
        .chain(backed_up)
        .collect()
}

/// Writes the comune's status if it changed, and keeps the metrics current. The status carries
/// the services' entries too (see `entries`), and, while the comune is Ready (its backup
/// Schedule is in place), its backups. Returns when to look again: if the write waits, or when
/// its newest backup gets too old.
pub async fn write_status(
    m: &Municipality,
    ctx: &Context,
    ready: Ready,
    ns: &str,
) -> Result<Option<Duration>, Error> {
    let name = m.name_any();
    let current = ctx.entries.current(m);
    let quota = quota_of(ctx, ns);
    ctx.metrics.record_quota(&name, &quota);
    ctx.metrics.set_ready(&name, ready.status);

    if ready.reason == "NamespaceConflict"
        && ready_reason(&current.conditions) != Some(ready.reason)
    {
        publish(
            ctx,
            m,
            EventType::Warning,
            ready.reason,
            "Reconcile",
            &ready.message,
        )
        .await;
    }
    let expected: Vec<String> = if ready.status {
        ctx.caches
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
    let (services, hold) = ctx.entries.services(&name, &current.services, &expected);
    let generation = m.metadata.generation;
    let (backup, backed_up, stale_at) = match ready.status.then(|| backup_report(m, ctx)) {
        Some(Some(report)) => {
            let condition = report.condition(&current.conditions, generation);
            (Some(report.state), Some(condition), report.look_again)
        }
        Some(None) => (None, None, None),
        // Not Ready: what it said.
        None => {
            let said = current.conditions.iter().find(|c| c.type_ == "BackedUp");
            (current.backup.clone(), said.cloned(), None)
        }
    };
    let status = MunicipalityStatus {
        namespace: Some(ns.to_string()),
        code: official_code(m),
        observed_generation: generation,
        conditions: conditions(&current.conditions, ready, backed_up, generation),
        quota,
        services,
        backup,
    };
    let later = |wait: Option<Duration>| [wait, stale_at].into_iter().flatten().min();
    if status == current {
        ctx.entries.settled(&name, &status, None);
        return Ok(later(None));
    }
    // The comune's own state is written at once. The services' entries and the quota usage
    // wait, within bounds, so that one write carries several of their changes (see `passes`).
    let mut own = status.clone();
    own.quota.clone_from(&current.quota);
    own.services.clone_from(&current.services);
    let own_changed = own != current;
    if !own_changed {
        if hold.is_some() {
            return Ok(later(hold));
        }
        if status.services == current.services
            && let Some(wait) = ctx.entries.usage_write_wait(&name)
        {
            return Ok(later(Some(wait)));
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
        .await
        .during(Step::Status, format!("Municipality {name}"))?;
    let version = release_older_managers(&api, written, ctx).await?;
    ctx.entries.settled(&name, &status, version);
    Ok(later(None))
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
            .await
            .during(Step::Status, format!("Municipality {}", written.name_any()))?;
        version = released.resource_version();
    }
    Ok(version)
}

/// Hard and used quota of the comune's namespace.
fn quota_of(ctx: &Context, ns: &str) -> BTreeMap<String, QuotaUsage> {
    ctx.caches
        .get(&kinds::RESOURCE_QUOTA, Some(ns), "consorzio-quota")
        .map(|quota| quota_usage(&quota))
        .unwrap_or_default()
}
