//! How the caches keep a managed object: the few fields of its metadata the operator reads, and
//! the rest as compressed JSON.
//!
//! A typed object (k8s-openapi) takes 5–7 times the memory of its JSON: every optional field of
//! every nested struct has its place, set or not (a Deployment of 3 KB takes 13 KB). The
//! operator reads the rest of an object rarely, to compare it with what it renders or to read a
//! status, and then unpacks and parses it for that moment.
//!
//! Objects of one kind differ mostly in names: each cache compresses its objects (LZ4) against
//! the first one it kept, its `Dictionary`. The 20 objects of a comune, 11.5 KB of JSON, take
//! 1.8 KB so (8.2 KB compressed one by one).

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, OnceLock, Weak},
};

use kube::{
    api::DynamicObject, core::ObjectMeta, runtime::reflector::Lookup, runtime::watcher::Event,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Labels or annotations in one string, sorted by key: `key NUL value NUL` for each pair. A
/// `BTreeMap` takes half a kilobyte for its first entry, a boxed string per key and value about 80
/// bytes a pair. A pair with a NUL in it (Kubernetes allows one in an annotation's value; the
/// operator never writes one) is left out.
#[derive(Clone, Debug, Default, Hash)]
struct Pairs(Box<str>);

impl Pairs {
    fn new(map: Option<BTreeMap<String, String>>) -> Self {
        let mut text = String::new();
        for (k, v) in map.unwrap_or_default() {
            if !k.contains('\0') && !v.contains('\0') {
                for s in [k, v] {
                    text.push_str(&s);
                    text.push('\0');
                }
            }
        }
        Self(text.into_boxed_str())
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.0.split('\0');
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn to_value(&self) -> Value {
        Value::Object(self.iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

/// A managed object as the caches keep it: the few fields of its metadata the operator reads, and
/// the rest as compressed JSON. Dropped: `managedFields`, and what a comparison with a rendered object
/// never needs (`uid`, `resourceVersion`, `creationTimestamp`, `selfLink`). A typed `ObjectMeta`
/// alone takes 350 bytes before its strings.
#[derive(Debug)]
pub struct Cached {
    name: Box<str>,
    namespace: Option<Box<str>>,
    generation: Option<i64>,
    deleting: bool,
    labels: Pairs,
    annotations: Pairs,
    /// The object without the metadata above (its owner references and finalizers stay), as
    /// JSON compressed against `dictionary`.
    rest: Box<[u8]>,
    dictionary: Arc<[u8]>,
}

/// What a cache compresses its objects against: the JSON of the first object it kept.
#[derive(Debug, Default)]
pub struct Dictionary(OnceLock<Arc<[u8]>>);

impl Clone for Cached {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            generation: self.generation,
            deleting: self.deleting,
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            rest: self.rest.clone(),
            dictionary: self.dictionary.clone(),
        }
    }
}

impl Cached {
    /// Keeps `obj`, compressed against `dictionary`. Its apiVersion and kind are dropped: a
    /// cache holds one kind (and a list's items come without them, a watch's events with them).
    pub fn new(mut obj: DynamicObject, dictionary: &Dictionary) -> Self {
        let m = std::mem::take(&mut obj.metadata);
        obj.metadata = ObjectMeta {
            owner_references: m.owner_references,
            finalizers: m.finalizers,
            ..ObjectMeta::default()
        };
        obj.types = None;
        let json = serde_json::to_vec(&obj).unwrap_or_default();
        let dictionary = dictionary.0.get_or_init(|| json.as_slice().into()).clone();
        let rest = lz4_flex::block::compress_prepend_size_with_dict(&json, &dictionary);
        Self {
            name: m.name.unwrap_or_default().into_boxed_str(),
            namespace: m.namespace.map(String::into_boxed_str),
            generation: m.generation,
            deleting: m.deletion_timestamp.is_some(),
            labels: Pairs::new(m.labels),
            annotations: Pairs::new(m.annotations),
            rest: rest.into_boxed_slice(),
            dictionary,
        }
    }

    /// The object as JSON, to compare with a rendered one: what the caches keep of it.
    pub fn value(&self) -> Option<Value> {
        let mut value: Value = serde_json::from_slice(&self.json()?).ok()?;
        let metadata = &mut value["metadata"];
        metadata["name"] = Value::from(self.name.as_ref());
        if let Some(ns) = &self.namespace {
            metadata["namespace"] = Value::from(ns.as_ref());
        }
        if let Some(generation) = self.generation {
            metadata["generation"] = Value::from(generation);
        }
        for (field, pairs) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            if !pairs.0.is_empty() {
                metadata[field] = pairs.to_value();
            }
        }
        Some(value)
    }

    /// The parts of the object (other than its metadata) that `T` reads, e.g. a status.
    pub fn read<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.json()?).ok()
    }

    /// Fingerprints of the object without its status (it changes when the object is written,
    /// not when its controller reports on it), and of all of it.
    pub fn fingerprints(&self) -> (u64, u64) {
        let mut rest = self.read::<Value>().unwrap_or_default();
        if let Some(rest) = rest.as_object_mut() {
            rest.remove("status");
        }
        let meta = (&self.labels, &self.annotations, self.deleting);
        (
            super::passes::fingerprint((meta, rest.to_string())),
            super::passes::fingerprint((meta, &self.rest)),
        )
    }

    fn json(&self) -> Option<Vec<u8>> {
        lz4_flex::block::decompress_size_prepended_with_dict(&self.rest, &self.dictionary).ok()
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object's namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The value of one of its labels.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key)
    }

    /// The value of one of its annotations.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key)
    }

    /// Its `metadata.generation`.
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// Whether it is being deleted.
    pub fn deleting(&self) -> bool {
        self.deleting
    }
}

/// The caches find an object by namespace and name: each cache holds one kind (see `kinds`),
/// so a reference needs no kind, and nothing reads the version or uid of a cached object's
/// reference, so the index does not keep them either.
impl Lookup for Cached {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// What was read from cached objects, kept while the caches hold the same object (an update
/// replaces it): a pass reads every comune's instance state, and unpacking and parsing every
/// Deployment again on each pass took a quarter of the operator's CPU in a cold start of 1,000
/// comuni. Found by the object's address: the weak reference kept with each reading keeps the
/// address from being reused while the reading is kept.
#[derive(Debug)]
pub struct Readings<V>(Mutex<(ByAddress<V>, usize)>);

/// Readings by the address of the object read, each with a weak reference to it.
type ByAddress<V> = HashMap<usize, (Weak<Cached>, V)>;

impl<V> Default for Readings<V> {
    fn default() -> Self {
        Self(Mutex::new((HashMap::new(), 0)))
    }
}

impl<V: Copy> Readings<V> {
    /// What `read` reads of `obj`, read once per object.
    pub fn get(&self, obj: &Arc<Cached>, read: impl FnOnce(&Cached) -> V) -> V {
        let address = Arc::as_ptr(obj) as usize;
        let kept = self
            .0
            .lock()
            .ok()
            .and_then(|all| all.0.get(&address).map(|(_, value)| *value));
        if let Some(value) = kept {
            return value;
        }
        let value = read(obj);
        if let Ok(mut all) = self.0.lock() {
            let (readings, live) = &mut *all;
            readings.insert(address, (Arc::downgrade(obj), value));
            // Readings of objects the caches no longer hold go now and then.
            if readings.len() > 2 * *live + 64 {
                readings.retain(|_, (object, _)| object.strong_count() > 0);
                *live = readings.len();
            }
        }
        value
    }
}

/// A watch event, with its objects as a cache with `dictionary` keeps them.
pub fn event(event: Event<DynamicObject>, dictionary: &Dictionary) -> Event<Cached> {
    match event {
        Event::Apply(obj) => Event::Apply(Cached::new(obj, dictionary)),
        Event::Delete(obj) => Event::Delete(Cached::new(obj, dictionary)),
        Event::Init => Event::Init,
        Event::InitApply(obj) => Event::InitApply(Cached::new(obj, dictionary)),
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ResourceQuota;
    use serde_json::json;

    use super::*;

    #[test]
    fn a_cached_object_reads_back_whole_without_its_managed_fields() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "c", "namespace": "n", "labels": {"a": "1", "b": ""},
                         "annotations": {"nul": "x\u{0}y", "z": "="},
                         "uid": "u", "generation": 3, "ownerReferences": [{"apiVersion": "v1",
                         "kind": "K", "name": "o", "uid": "ou"}],
                         "managedFields": [{"manager": "x"}]},
            "data": {"k": "v"},
        }))
        .unwrap();
        let cached = Cached::new(obj, &Dictionary::default());
        assert_eq!(cached.name(), "c");
        assert_eq!(cached.label("a"), Some("1"));
        assert_eq!(cached.label("b"), Some(""));
        assert_eq!(cached.label("c"), None);
        assert_eq!(cached.annotation("z"), Some("="));
        assert_eq!(cached.annotation("nul"), None);
        assert_eq!(cached.generation(), Some(3));
        assert!(!cached.deleting());
        let value = cached.value().unwrap();
        assert_eq!(value["data"]["k"], "v");
        assert_eq!(value["metadata"]["namespace"], "n");
        assert_eq!(value["metadata"]["labels"], json!({"a": "1", "b": ""}));
        assert_eq!(value["metadata"]["annotations"], json!({"z": "="}));
        assert_eq!(value["metadata"]["ownerReferences"][0]["name"], "o");
        assert_eq!(value["metadata"]["generation"], 3);
        assert!(value["metadata"].get("managedFields").is_none());
        assert!(value["metadata"].get("uid").is_none());
    }

    #[test]
    fn objects_compressed_against_the_first_read_back_whole() {
        let dictionary = Dictionary::default();
        let config_map = |name: &str, value: &str| -> DynamicObject {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": name},
                "data": {"greeting": value, "common": "the same in every comune"},
            }))
            .unwrap()
        };
        let first = Cached::new(config_map("a", "ciao"), &dictionary);
        let second = Cached::new(config_map("b", "salve"), &dictionary);
        assert!(Arc::ptr_eq(&first.dictionary, &second.dictionary));
        assert!(second.rest.len() < first.dictionary.len() / 2);
        for (cached, name, value) in [(first, "a", "ciao"), (second, "b", "salve")] {
            let value_back = cached.value().unwrap();
            assert_eq!(value_back["metadata"]["name"], name);
            assert_eq!(value_back["data"]["greeting"], value);
            assert_eq!(value_back["data"]["common"], "the same in every comune");
        }
    }

    #[test]
    fn a_reading_is_kept_while_the_cache_holds_the_same_object() {
        let dictionary = Dictionary::default();
        let quota = |cpu: &str| -> Arc<Cached> {
            let obj = serde_json::from_value(json!({
                "metadata": {"name": "q", "namespace": "n"},
                "status": {"used": {"cpu": cpu}},
            }))
            .unwrap();
            Arc::new(Cached::new(obj, &dictionary))
        };
        let readings = Readings::<u32>::default();
        let reads = std::cell::Cell::new(0);
        let used = |q: &Cached| {
            reads.set(reads.get() + 1);
            let q: ResourceQuota = q.read().unwrap();
            q.status.unwrap().used.unwrap()["cpu"]
                .0
                .parse::<u32>()
                .unwrap()
        };
        let first = quota("1");
        assert_eq!(readings.get(&first, used), 1);
        assert_eq!(readings.get(&first, used), 1);
        assert_eq!(reads.get(), 1, "read once");
        // An update replaces the cached object: read again.
        let second = quota("2");
        assert_eq!(readings.get(&second, used), 2);
        assert_eq!(reads.get(), 2);
        // Readings of objects no longer cached go once there are many.
        drop(first);
        for _ in 0..100 {
            readings.get(&quota("3"), used);
        }
        let kept = readings.0.lock().unwrap().0.len();
        assert!(kept < 70, "{kept} readings kept");
        assert_eq!(readings.get(&second, used), 2);
    }

    #[test]
    fn a_cached_object_reads_its_status() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "q"},
            "status": {"used": {"cpu": "1"}},
        }))
        .unwrap();
        let quota: ResourceQuota = Cached::new(obj, &Dictionary::default()).read().unwrap();
        assert_eq!(quota.status.unwrap().used.unwrap()["cpu"].0, "1");
    }
}
