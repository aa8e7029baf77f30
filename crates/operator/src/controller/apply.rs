//! Writing desired objects with server-side apply, but only when the cluster differs from them,
//! so that a reconcile with nothing to change performs no write at all; and removing what an
//! owner no longer renders, by kind (see `kinds`): deleted, or kept when it holds data.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Instant,
};

use kube::{
    Api, ResourceExt,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
    core::ApiResource,
};
use serde_json::{Value, json};

use super::{
    Context,
    cached::Cached,
    compare::{self, contains, stray},
    error::{During, Error, Step, describe, gone_is_done},
    kinds::{self, KINDS, Kind, Lifecycle, Owner},
    passes::{CREATION_LAG, fingerprint},
};
use crate::render::{MANAGED_BY, ORPHANED_LABEL, Rendered};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "consorzio";
/// Field managers of each service's own writes (`<prefix><service>`): its subscription labels,
/// and in earlier versions its entries in the comuni's status.
pub const SERVICE_MANAGER_PREFIX: &str = "consorzio-service-";

fn api_for(ctx: &Context, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, resource),
        None => Api::all_with(ctx.client.clone(), resource),
    }
}

/// How the cluster's object compares with a rendered one, as the caches show it.
#[derive(Debug)]
enum Compared {
    /// The caches hold no such object.
    Unseen,
    /// It holds everything rendered (and, where the kind is exact, nothing more).
    Same,
    /// It differs: the JSON patch that removes what it holds beyond an exact path (empty when
    /// nothing), before the rendered object is applied.
    Differs(Vec<Value>),
}

fn compare(ctx: &Context, desired: &Rendered) -> Result<Compared, Error> {
    let Some(have) = ctx.caches.cached(desired) else {
        return Ok(Compared::Unseen);
    };
    let mut want =
        serde_json::to_value(&desired.object).map_err(Error::render(desired.describe()))?;
    // The caches keep no apiVersion and kind: each holds one kind.
    if let Some(want) = want.as_object_mut() {
        want.remove("apiVersion");
        want.remove("kind");
    }
    let kind = kinds::find(&desired.resource);
    if let Some(removals) = kind.and_then(|k| compare::additions(k, &have, &want)) {
        return Ok(Compared::Differs(removals));
    }
    Ok(if contains(&have, &want) && !stray(&have, &want) {
        Compared::Same
    } else {
        Compared::Differs(vec![])
    })
}

/// Applies `desired` unless the caches show the cluster already has it. Returns whether it wrote.
pub async fn apply(ctx: &Context, desired: &Rendered) -> Result<bool, Error> {
    match compare(ctx, desired)? {
        Compared::Same => return Ok(false),
        Compared::Differs(removals) => remove_additions(ctx, desired, removals).await?,
        Compared::Unseen => {}
    }
    write(ctx, desired).await?;
    Ok(true)
}

/// Applies what differs from the caches; says whether it wrote anything.
pub async fn apply_all(ctx: &Context, objects: &[Rendered]) -> Result<bool, Error> {
    let wrote = futures::future::try_join_all(objects.iter().map(|o| apply(ctx, o))).await?;
    Ok(wrote.contains(&true))
}

/// Removes what the cluster's copy of `desired` holds beyond it (see `compare`), if anything.
async fn remove_additions(ctx: &Context, desired: &Rendered, ops: Vec<Value>) -> Result<(), Error> {
    if ops.is_empty() {
        return Ok(());
    }
    let name = desired.object.name_any();
    let api = api_for(
        ctx,
        &desired.resource,
        desired.object.namespace().as_deref(),
    );
    tracing::info!(object = %desired.describe(), removed = ?ops, "removing what was added");
    ctx.metrics.wrote(&desired.resource.kind);
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops)).map_err(Error::render(desired.describe()))?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(&name, &params, &Patch::<()>::Json(patch))
        .await
        .during(Step::Apply, desired.describe())?;
    Ok(())
}

/// Applies `desired`.
async fn write(ctx: &Context, desired: &Rendered) -> Result<(), Error> {
    let name = desired.object.name_any();
    let resource = &desired.resource;
    let api = api_for(ctx, resource, desired.object.namespace().as_deref());
    tracing::debug!(object = %desired.describe(), "applying");
    ctx.metrics.wrote(&resource.kind);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired.object),
    )
    .await
    .during(Step::Apply, desired.describe())?;
    Ok(())
}

/// Objects created a moment ago, which the caches may not show yet: a reconcile that comes
/// right after the one that created them (woken by another object's change) leaves them be
/// instead of applying them again. In a cold start of 1,000 comuni, a quarter of the comuni had
/// their namespace's objects applied twice so.
#[derive(Debug, Default)]
pub struct Created(Mutex<HashMap<String, (u64, Instant)>>);

/// What `apply_unless_unseen` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The cluster already had it.
    Unchanged,
    /// It was written.
    Wrote,
    /// It was created a moment ago, and the caches do not show it yet: look again later.
    Unseen,
}

impl Created {
    fn is_recent(&self, key: &str, fingerprint: u64) -> bool {
        self.0.lock().is_ok_and(|created| {
            created
                .get(key)
                .is_some_and(|(f, at)| *f == fingerprint && at.elapsed() < CREATION_LAG)
        })
    }

    fn record(&self, key: String, fingerprint: u64) {
        if let Ok(mut created) = self.0.lock() {
            if created.len() > 1024 {
                created.retain(|_, (_, at)| at.elapsed() < CREATION_LAG);
            }
            created.insert(key, (fingerprint, Instant::now()));
        }
    }
}

/// Like `apply`, but an object created with the same content a moment ago, that the caches do
/// not show yet, is not written again.
pub async fn apply_unless_unseen(ctx: &Context, desired: &Rendered) -> Result<Applied, Error> {
    match compare(ctx, desired)? {
        Compared::Same => return Ok(Applied::Unchanged),
        Compared::Differs(removals) => {
            remove_additions(ctx, desired, removals).await?;
            write(ctx, desired).await?;
            return Ok(Applied::Wrote);
        }
        Compared::Unseen => {}
    }
    let key = desired.describe();
    let content = serde_json::to_string(&desired.object).map_err(Error::render(&key))?;
    let content = fingerprint(content);
    if ctx.created.is_recent(&key, content) {
        return Ok(Applied::Unseen);
    }
    write(ctx, desired).await?;
    ctx.created.record(key, content);
    Ok(Applied::Wrote)
}

/// Deletes an object the operator created and no longer wants. A missing object is fine.
pub async fn delete(
    ctx: &Context,
    kind: &Kind,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), Error> {
    let object = describe(kind.kind, namespace, name);
    tracing::debug!(%object, "deleting");
    let api = api_for(ctx, &kind.resource(), namespace);
    if let Some(patch) = kind.before_delete {
        let patch: Value = serde_json::from_str(patch).map_err(Error::render(&object))?;
        ctx.metrics.wrote(kind.kind);
        let patched = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        gone_is_done(patched).during(Step::Delete, object.clone())?;
    }
    ctx.metrics.wrote(kind.kind);
    let deleted = api.delete(name, &DeleteParams::background()).await;
    gone_is_done(deleted).during(Step::Delete, object)
}

/// Keeps an object's data: labelled orphaned so people find it, and no longer managed, so it is
/// never pruned or applied again. A missing object is fine.
pub async fn keep(
    ctx: &Context,
    kind: &Kind,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), Error> {
    let orphan = json!({"metadata": {"labels": {ORPHANED_LABEL: "true", MANAGED_BY.0: null}}});
    ctx.metrics.wrote(kind.kind);
    let kept = api_for(ctx, &kind.resource(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&orphan))
        .await;
    gone_is_done(kept).during(Step::Keep, describe(kind.kind, namespace, name))
}

/// What becomes of the data an owner no longer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// Kept, labelled orphaned.
    Retain,
    /// Deleted.
    Delete,
}

/// Removes an object its owner no longer renders, as its kind says: deleted, or, holding data,
/// kept or deleted as `reclaim` says. Objects rendered as long as their owner exists (quota,
/// limits) and namespaces are left alone: they go with their owner.
pub async fn remove(
    ctx: &Context,
    kind: &Kind,
    obj: &Cached,
    reclaim: Reclaim,
) -> Result<(), Error> {
    let (ns, name) = (obj.namespace(), obj.name());
    match kind.lifecycle {
        _ if *kind == kinds::NAMESPACE => Ok(()),
        Lifecycle::Pruned => delete(ctx, kind, ns, name).await,
        Lifecycle::Data if reclaim == Reclaim::Delete => delete(ctx, kind, ns, name).await,
        Lifecycle::Data => keep(ctx, kind, ns, name).await,
        Lifecycle::Always | Lifecycle::Watched => Ok(()),
    }
}

/// The cached objects in namespace `ns`, of the kinds `owner` renders and may remove (see
/// `remove`), that `belongs` says are the owner's; those being deleted already are left out.
pub fn owned_in(
    ctx: &Context,
    owner: Owner,
    ns: &str,
    belongs: impl Fn(&Kind, &Cached) -> bool,
) -> Vec<(&'static Kind, Arc<Cached>)> {
    KINDS
        .iter()
        .filter(|kind| kind.namespaced && kinds::rendered_by(kind, owner))
        .filter(|kind| matches!(kind.lifecycle, Lifecycle::Pruned | Lifecycle::Data))
        .flat_map(|kind| {
            ctx.caches
                .in_namespace(kind, ns)
                .into_iter()
                .map(move |obj| (kind, obj))
        })
        .filter(|(kind, obj)| !obj.deleting() && belongs(kind, obj))
        .collect()
}

/// Of `owned_in`, those that `rendered` lacks.
pub fn unrendered(
    ctx: &Context,
    owner: Owner,
    ns: &str,
    belongs: impl Fn(&Cached) -> bool,
    rendered: &[Rendered],
) -> Vec<(&'static Kind, Arc<Cached>)> {
    let wanted: HashSet<(&str, &str, String)> = rendered
        .iter()
        .map(|r| {
            let (group, kind) = (r.resource.group.as_str(), r.resource.kind.as_str());
            (group, kind, r.object.name_any())
        })
        .collect();
    owned_in(ctx, owner, ns, |kind, obj| {
        belongs(obj) && !wanted.contains(&(kind.group, kind.kind, obj.name().to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_creation_is_recent_for_a_while_and_for_the_same_content() {
        let created = Created::default();
        created.record("ConfigMap n/c".into(), 1);
        assert!(created.is_recent("ConfigMap n/c", 1));
        assert!(!created.is_recent("ConfigMap n/c", 2), "other content");
        assert!(!created.is_recent("ConfigMap n/d", 1), "another object");
        if let Ok(mut all) = created.0.lock() {
            all.insert("ConfigMap n/c".into(), (1, Instant::now() - CREATION_LAG));
        }
        assert!(!created.is_recent("ConfigMap n/c", 1), "too long ago");
    }
}
