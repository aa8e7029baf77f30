//! Writing desired objects with server-side apply, but only when the cluster differs from them,
//! so that a reconcile with nothing to change performs no write at all.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
    core::ApiResource,
};
use serde_json::Value;

use super::Error;
use crate::{metrics::Metrics, quantity, render::Rendered};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "consorzio";

/// Whether `actual` already holds every field of `desired` (other fields may exist: the API
/// server adds defaults, status and metadata). Quantities match by value, so "1024Mi" is "1Gi".
pub fn contains(actual: &Value, desired: &Value) -> bool {
    match (actual, desired) {
        (_, Value::Null) => true,
        (Value::Object(a), Value::Object(d)) => d.iter().all(|(key, dv)| match a.get(key) {
            Some(av) => contains(av, dv),
            None => is_empty(dv),
        }),
        (Value::Array(a), Value::Array(d)) => {
            a.len() == d.len() && a.iter().zip(d).all(|(av, dv)| contains(av, dv))
        }
        (Value::String(a), Value::String(d)) => a == d || quantity::same(a, d),
        (Value::Number(a), Value::String(d)) => quantity::same(&a.to_string(), d),
        (a, d) => a == d,
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

fn api_for(client: &Client, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// Applies `desired` unless `cached` (the object as the cluster has it) already matches.
/// Returns whether it wrote.
pub async fn apply_if_changed(
    client: &Client,
    metrics: &Metrics,
    desired: &Rendered,
    cached: Option<Value>,
) -> Result<bool, Error> {
    let want = serde_json::to_value(&desired.object)?;
    if cached.is_some_and(|have| contains(&have, &want)) {
        return Ok(false);
    }
    write(client, metrics, desired).await?;
    Ok(true)
}

/// Applies `desired`.
async fn write(client: &Client, metrics: &Metrics, desired: &Rendered) -> Result<(), Error> {
    let name = desired.object.name_any();
    let api = api_for(
        client,
        &desired.resource,
        desired.object.namespace().as_deref(),
    );
    tracing::debug!(object = %desired.describe(), "applying");
    metrics.wrote(&desired.resource.kind);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired.object),
    )
    .await?;
    Ok(())
}

/// Objects created a moment ago, which the caches may not show yet: a reconcile that comes
/// right after the one that created them (woken by another object's change) leaves them be
/// instead of applying them again. In a cold start of 1,000 comuni, a quarter of the comuni had
/// their namespace's objects applied twice so.
#[derive(Debug, Default)]
pub struct Created(Mutex<HashMap<String, (u64, Instant)>>);

/// How long a created object may take to show in the caches.
pub const CREATION_LAG: Duration = Duration::from_secs(10);

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
    fn key(desired: &Rendered) -> String {
        format!(
            "{}/{}/{}",
            desired.resource.kind,
            desired.object.namespace().unwrap_or_default(),
            desired.object.name_any()
        )
    }

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

/// Like `apply_if_changed`, but an object that `created` says was created with the same content
/// a moment ago, and that the caches do not show yet, is not written again.
pub async fn apply_unless_unseen(
    client: &Client,
    metrics: &Metrics,
    desired: &Rendered,
    cached: Option<Value>,
    created: &Created,
) -> Result<Applied, Error> {
    if cached.is_some() {
        let wrote = apply_if_changed(client, metrics, desired, cached).await?;
        return Ok(if wrote {
            Applied::Wrote
        } else {
            Applied::Unchanged
        });
    }
    let (key, fingerprint) = (
        Created::key(desired),
        super::fingerprint(serde_json::to_string(&desired.object)?),
    );
    if created.is_recent(&key, fingerprint) {
        return Ok(Applied::Unseen);
    }
    write(client, metrics, desired).await?;
    created.record(key, fingerprint);
    Ok(Applied::Wrote)
}

/// Deletes an object the operator created and no longer wants. A missing object is fine.
pub async fn delete(
    client: &Client,
    metrics: &Metrics,
    resource: &ApiResource,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), Error> {
    tracing::debug!(kind = %resource.kind, ?namespace, name, "deleting");
    metrics.wrote(&resource.kind);
    match api_for(client, resource, namespace)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_creation_is_recent_for_a_while_and_for_the_same_content() {
        let created = Created::default();
        created.record("ConfigMap/n/c".into(), 1);
        assert!(created.is_recent("ConfigMap/n/c", 1));
        assert!(!created.is_recent("ConfigMap/n/c", 2), "other content");
        assert!(!created.is_recent("ConfigMap/n/d", 1), "another object");
        if let Ok(mut all) = created.0.lock() {
            all.insert("ConfigMap/n/c".into(), (1, Instant::now() - CREATION_LAG));
        }
        assert!(!created.is_recent("ConfigMap/n/c", 1), "too long ago");
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
    fn quantities_and_empty_values_match_their_stored_forms() {
        assert!(contains(&json!({"m": "1Gi"}), &json!({"m": "1024Mi"})));
        assert!(contains(&json!({"pods": 50}), &json!({"pods": "50"})));
        assert!(contains(
            &json!({}),
            &json!({"ingress": [], "selector": {}})
        ));
    }
}
