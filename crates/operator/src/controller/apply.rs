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
    error::{During, Error, Step, describe, gone_is_done},
    kinds::{self, KINDS, Kind, Lifecycle, Owner},
    passes::{CREATION_LAG, fingerprint},
};
use crate::{
    quantity,
    render::{MANAGED_BY, ORPHANED_LABEL, Rendered},
};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "consorzio";
/// Field managers of each service's own writes (`<prefix><service>`): its subscription labels,
/// and in earlier versions its entries in the comuni's status.
pub const SERVICE_MANAGER_PREFIX: &str = "consorzio-service-";

/// The keys of the maps whose values are quantities (`ResourceList`s: a quota's `hard`, a
/// container's `requests` and `limits`, a LimitRange's `default`…): there "1024Mi" is "1Gi", as
/// the API server stores it. Anywhere else two strings match only when equal ("1k" is not
/// "1000" in a ConfigMap, nor "1.1" "1.10" in a label).
const QUANTITY_MAPS: &[&str] = &[
    "hard",
    "requests",
    "limits",
    "default",
    "defaultRequest",
    "max",
    "min",
    "maxLimitRequestRatio",
];

/// Whether `actual` already holds every field of `desired` (other fields may exist: the API
/// server adds defaults, status and metadata).
pub fn contains(actual: &Value, desired: &Value) -> bool {
    contains_in(actual, desired, false)
}

/// `contains`, where `list` says the objects compared are `ResourceList`s: maps of quantities.
fn contains_in(actual: &Value, desired: &Value, list: bool) -> bool {
    match (actual, desired) {
        (_, Value::Null) => true,
        (Value::Object(a), Value::Object(d)) => d.iter().all(|(key, dv)| match a.get(key) {
            Some(av) if list => same_quantity(av, dv),
            Some(av) => contains_in(av, dv, QUANTITY_MAPS.contains(&key.as_str())),
            None => is_empty(dv),
        }),
        (Value::Array(a), Value::Array(d)) => {
            a.len() == d.len() && a.iter().zip(d).all(|(av, dv)| contains(av, dv))
        }
        (a, d) => a == d,
    }
}

/// Whether two values of a `ResourceList` are the same quantity.
fn same_quantity(actual: &Value, desired: &Value) -> bool {
    match (actual, desired) {
        (Value::String(a), Value::String(d)) => a == d || quantity::same(a, d),
        (Value::Number(a), Value::String(d)) => quantity::same(&a.to_string(), d),
        (a, d) => contains(a, d),
    }
}

/// Empty values are not stored by the API server, so their absence matches.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn api_for(ctx: &Context, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, resource),
        None => Api::all_with(ctx.client.clone(), resource),
    }
}

/// Whether the caches hold `desired` as it is rendered.
fn is_current(ctx: &Context, desired: &Rendered) -> Result<Option<bool>, Error> {
    let Some(have) = ctx.caches.cached(desired) else {
        return Ok(None);
    };
    let mut want =
        serde_json::to_value(&desired.object).map_err(Error::render(desired.describe()))?;
    // The caches keep no apiVersion and kind: each holds one kind.
    if let Some(want) = want.as_object_mut() {
        want.remove("apiVersion");
        want.remove("kind");
    }
    Ok(Some(contains(&have, &want) && !stray(&have, &want)))
}

/// Whether the cluster's object has what the rendered one lacks and the operator set before:
/// owner references (it renders none: an owner reference lets the garbage collector delete what
/// holds data, e.g. a namespace whose Municipality's finalizer was removed by hand; an apply
/// removes those earlier versions set), or the orphaned label of data kept when its owner went,
/// which it adopts again.
fn stray(have: &Value, want: &Value) -> bool {
    let owners = |v: &Value| {
        v.pointer("/metadata/ownerReferences")
            .is_some_and(|o| !is_empty(o))
    };
    let orphaned = |v: &Value| {
        v.pointer("/metadata/labels")
            .and_then(|l| l.get(ORPHANED_LABEL))
            .is_some()
    };
    (owners(have) && !owners(want)) || (orphaned(have) && !orphaned(want))
}

/// Applies `desired` unless the caches show the cluster already has it. Returns whether it wrote.
pub async fn apply(ctx: &Context, desired: &Rendered) -> Result<bool, Error> {
    if is_current(ctx, desired)? == Some(true) {
        return Ok(false);
    }
    write(ctx, desired).await?;
    Ok(true)
}

/// Applies what differs from the caches; says whether it wrote anything.
pub async fn apply_all(ctx: &Context, objects: &[Rendered]) -> Result<bool, Error> {
    let wrote = futures::future::try_join_all(objects.iter().map(|o| apply(ctx, o))).await?;
    Ok(wrote.contains(&true))
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
    match is_current(ctx, desired)? {
        Some(true) => return Ok(Applied::Unchanged),
        Some(false) => {
            write(ctx, desired).await?;
            return Ok(Applied::Wrote);
        }
        None => {}
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
    ctx.metrics.wrote(kind.kind);
    let deleted = api_for(ctx, &kind.resource(), namespace)
        .delete(name, &DeleteParams::background())
        .await;
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
    let wanted: HashSet<(&str, String)> = rendered
        .iter()
        .map(|r| (r.resource.kind.as_str(), r.object.name_any()))
        .collect();
    owned_in(ctx, owner, ns, |kind, obj| {
        belongs(obj) && !wanted.contains(&(kind.kind, obj.name().to_string()))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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

    #[test]
    fn extra_fields_in_the_cluster_do_not_count_as_a_change() {
        let actual = json!({"metadata": {"name": "q", "uid": "1", "labels": {"a": "1", "b": "2"}},
                            "spec": {"hard": {"cpu": "4"}}, "status": {"used": {"cpu": "0"}}});
        let desired = json!({"metadata": {"name": "q", "labels": {"a": "1"}}, "spec": {"hard": {"cpu": "4"}}});
        assert!(contains(&actual, &desired));
    }

    #[test]
    fn a_changed_or_missing_field_is_a_change() {
        let actual = json!({"spec": {"hard": {"cpu": "8"}}});
        assert!(!contains(&actual, &json!({"spec": {"hard": {"cpu": "4"}}})));
        assert!(!contains(
            &actual,
            &json!({"spec": {"hard": {"cpu": "8", "pods": "10"}}})
        ));
        assert!(!contains(&json!({"a": [1, 2]}), &json!({"a": [1]})));
    }

    #[test]
    fn quantities_match_their_stored_forms_in_quantity_fields_only() {
        assert!(contains(
            &json!({"spec": {"hard": {"memory": "1Gi", "pods": 50}}}),
            &json!({"spec": {"hard": {"memory": "1024Mi", "pods": "50"}}})
        ));
        let container =
            |cpu: &str| json!({"resources": {"limits": {"cpu": cpu}, "requests": {"cpu": cpu}}});
        assert!(contains(&container("500m"), &container("0.5")));
        let range = |memory: &str| json!({"spec": {"limits": [{"type": "Container", "default": {"memory": memory}}]}});
        assert!(contains(&range("1Gi"), &range("1024Mi")));
        assert!(contains(
            &json!({"spec": {"resources": {"requests": {"storage": "10Gi"}}}}),
            &json!({"spec": {"resources": {"requests": {"storage": "10240Mi"}}}})
        ));
        // Elsewhere, strings that read as the same quantity are different values.
        assert!(!contains(
            &json!({"data": {"SIZE": "1000"}}),
            &json!({"data": {"SIZE": "1k"}})
        ));
        let label = |v: &str| json!({"metadata": {"labels": {"consorzio.io/union": v}}});
        assert!(!contains(&label("1.10"), &label("1.1")));
        let env = |v: &str| json!({"env": [{"name": "LIMIT", "value": v}]});
        assert!(!contains(&env("1000"), &env("1k")));
        // A key named like a quantity map whose value is not a map is compared as it is.
        assert!(!contains(
            &json!({"data": {"limits": "1000"}}),
            &json!({"data": {"limits": "1k"}})
        ));
    }

    #[test]
    fn an_owner_reference_or_orphaned_label_not_rendered_is_a_change() {
        let owned = json!({"metadata": {"name": "comune-a", "ownerReferences": [{"name": "a"}]}});
        let desired = json!({"metadata": {"name": "comune-a"}});
        assert!(contains(&owned, &desired) && stray(&owned, &desired));
        assert!(!stray(&desired, &desired));
        assert!(!stray(
            &json!({"metadata": {"ownerReferences": []}}),
            &desired
        ));
        let orphaned = json!({"metadata": {"labels": {ORPHANED_LABEL: "true"}}});
        assert!(stray(&orphaned, &desired) && !stray(&orphaned, &orphaned));
    }

    #[test]
    fn empty_values_match_their_absence() {
        assert!(contains(
            &json!({}),
            &json!({"ingress": [], "selector": {}})
        ));
    }
}
