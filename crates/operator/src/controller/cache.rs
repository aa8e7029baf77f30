//! How the caches keep a managed object: its metadata, and the rest as JSON text.
//!
//! A typed object (k8s-openapi) takes 5–7 times the memory of its JSON: every optional field of
//! every nested struct has its place, set or not (a Deployment of 3 KB takes 13 KB). The
//! operator reads the rest of an object rarely, to compare it with what it renders or to read a
//! status, and then parses it for that moment.

use std::{borrow::Cow, collections::BTreeMap, marker::PhantomData};

use kube::{Resource, core::ObjectMeta, runtime::reflector::Lookup, runtime::watcher::Event};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Labels or annotations, sorted by key. A `BTreeMap` takes half a kilobyte for the first entry.
type Pairs = Box<[(Box<str>, Box<str>)]>;

fn pairs(map: Option<BTreeMap<String, String>>) -> Pairs {
    map.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
        .collect()
}

fn get<'a>(pairs: &'a Pairs, key: &str) -> Option<&'a str> {
    pairs
        .binary_search_by(|(k, _)| k.as_ref().cmp(key))
        .ok()
        .map(|i| pairs[i].1.as_ref())
}

/// A managed object as the caches keep it (`managedFields` dropped).
#[derive(Debug)]
pub struct Cached<K> {
    /// The metadata, without labels and annotations (kept as `Pairs`).
    metadata: ObjectMeta,
    labels: Pairs,
    annotations: Pairs,
    /// The object without its metadata, as JSON.
    rest: Box<str>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Cached<K> {
    fn clone(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            rest: self.rest.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: Resource + Serialize> Cached<K> {
    /// Keeps `obj`.
    pub fn new(mut obj: K) -> Self {
        let mut metadata = std::mem::take(obj.meta_mut());
        metadata.managed_fields = None;
        let rest = serde_json::to_string(&obj).unwrap_or_default();
        Self {
            labels: pairs(metadata.labels.take()),
            annotations: pairs(metadata.annotations.take()),
            metadata,
            rest: rest.into_boxed_str(),
            kind: PhantomData,
        }
    }

    /// The whole object as JSON, to compare with a rendered one.
    pub fn value(&self) -> Option<Value> {
        let mut value: Value = serde_json::from_str(&self.rest).ok()?;
        let mut metadata = serde_json::to_value(&self.metadata).ok()?;
        for (field, pairs) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            if !pairs.is_empty() {
                let map: serde_json::Map<String, Value> = pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::from(v.as_ref())))
                    .collect();
                metadata[field] = Value::Object(map);
            }
        }
        value["metadata"] = metadata;
        Some(value)
    }

    /// The parts of the object (other than its metadata) that `T` reads, e.g. a status.
    pub fn read<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(&self.rest).ok()
    }
}

impl<K> Cached<K> {
    /// The object's name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The object's namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }

    /// The value of one of its labels.
    pub fn label(&self, key: &str) -> Option<&str> {
        get(&self.labels, key)
    }

    /// The value of one of its annotations.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        get(&self.annotations, key)
    }

    /// Its `metadata.generation`.
    pub fn generation(&self) -> Option<i64> {
        self.metadata.generation
    }

    /// Whether it is being deleted.
    pub fn deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
}

impl<K: Resource> Lookup for Cached<K> {
    type DynamicType = K::DynamicType;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        self.metadata.name.as_deref().map(Cow::Borrowed)
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.metadata.namespace.as_deref().map(Cow::Borrowed)
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.metadata.resource_version.as_deref().map(Cow::Borrowed)
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        self.metadata.uid.as_deref().map(Cow::Borrowed)
    }
}

/// A watch event, with its objects as the caches keep them.
pub fn event<K: Resource + Serialize>(event: Event<K>) -> Event<Cached<K>> {
    match event {
        Event::Apply(obj) => Event::Apply(Cached::new(obj)),
        Event::Delete(obj) => Event::Delete(Cached::new(obj)),
        Event::Init => Event::Init,
        Event::InitApply(obj) => Event::InitApply(Cached::new(obj)),
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_cached_object_reads_back_whole_without_its_managed_fields() {
        let obj: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "c", "namespace": "n", "labels": {"a": "1"},
                         "managedFields": [{"manager": "x"}]},
            "data": {"k": "v"},
        }))
        .unwrap();
        let cached = Cached::new(obj);
        assert_eq!(cached.name(), "c");
        assert_eq!(cached.label("a"), Some("1"));
        assert_eq!(cached.label("b"), None);
        let value = cached.value().unwrap();
        assert_eq!(value["data"]["k"], "v");
        assert_eq!(value["metadata"]["namespace"], "n");
        assert_eq!(value["metadata"]["labels"]["a"], "1");
        assert!(value["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn a_cached_object_reads_its_status() {
        let obj: ResourceQuota = serde_json::from_value(json!({
            "metadata": {"name": "q"},
            "status": {"used": {"cpu": "1"}},
        }))
        .unwrap();
        let quota: ResourceQuota = Cached::new(obj).read().unwrap();
        assert_eq!(quota.status.unwrap().used.unwrap()["cpu"].0, "1");
    }
}
