//! How a rendered object compares with the cluster's copy of it (from the caches): whether the
//! cluster holds every field rendered (quantities compared as quantities where they are ones),
//! nothing the operator set and no longer renders (owner references, the orphaned label), and,
//! where a kind declares paths exact (`Kind::exact`), nothing more than rendered there.
//!
//! Drift that adds: server-side apply changes only the fields the operator applies, so a field
//! another manager added (a rule in a namespace's default-deny policy, a subject in an access
//! binding, a key in the quota, an isolation label on the namespace) would stay. What the cluster
//! holds beyond an exact path is removed by a JSON patch (the apply that follows puts back
//! anything else).

use serde_json::{Value, json};

use super::kinds::Kind;
use crate::{
    quantity,
    render::{MANAGED_BY, ORPHANED_LABEL, shared::SUBSCRIBER_LABEL_PREFIX},
};

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

/// Whether the cluster's object has what the rendered one lacks and the operator set before:
/// owner references (it renders none: an owner reference lets the garbage collector delete what
/// holds data, e.g. a namespace whose Municipality's finalizer was removed by hand; an apply
/// removes those earlier versions set), or the orphaned label of data kept when its owner went,
/// which it adopts again.
pub fn stray(have: &Value, want: &Value) -> bool {
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

/// The labels of a namespace that say how it is isolated and whose it is: Pod Security's, and
/// consorzio's own, except the subscriptions to Shared services (each service keeps its own).
pub fn isolation_label(key: &str) -> bool {
    let domain = key.split_once('/').map_or("", |(d, _)| d);
    key.starts_with("pod-security.kubernetes.io/")
        || key == MANAGED_BY.0
        || ((domain == "consorzio.io" || domain.ends_with(".consorzio.io"))
            && !key.starts_with(SUBSCRIBER_LABEL_PREFIX))
}

/// What of `have` is held exactly at `path`: all of it, but for labels only the isolation ones.
fn held(path: &str, have: &Value) -> Value {
    match (path, have) {
        ("/metadata/labels", Value::Object(labels)) => Value::Object(
            labels
                .iter()
                .filter(|(k, _)| isolation_label(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => have.clone(),
    }
}

/// A JSON pointer's segment for `key`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// JSON patch operations that remove from `have` (at `path`) what `want` lacks: keys of objects,
/// items of lists; each preceded by a test of what it removes, so that a change made meanwhile
/// fails the patch instead of being removed blindly.
fn removals(path: &str, have: &Value, want: &Value, ops: &mut Vec<Value>) {
    fn remove(ops: &mut Vec<Value>, at: String, value: &Value) {
        ops.push(json!({"op": "test", "path": at, "value": value}));
        ops.push(json!({"op": "remove", "path": at}));
    }
    match (have, want) {
        (Value::Object(h), w) => {
            for (k, hv) in h {
                let at = format!("{path}/{}", escape(k));
                match w.get(k) {
                    None | Some(Value::Null) => remove(ops, at, hv),
                    Some(wv) => removals(&at, hv, wv, ops),
                }
            }
        }
        (Value::Array(h), w) => {
            let w = w.as_array().map(Vec::as_slice).unwrap_or_default();
            // From the last: a removal does not move the items before it.
            for (i, hv) in h.iter().enumerate().rev() {
                if !w.iter().any(|wv| contains(hv, wv)) {
                    remove(ops, format!("{path}/{i}"), hv);
                }
            }
        }
        _ => {}
    }
}

/// Where `kind` is exact, what the cluster's object `have` holds more than `want`: a JSON patch
/// that removes it, if there is any.
pub fn additions(kind: &Kind, have: &Value, want: &Value) -> Option<Vec<Value>> {
    let mut ops = vec![];
    for path in kind.exact {
        let Some(have_at) = have.pointer(path).map(|h| held(path, h)) else {
            continue;
        };
        let want_at = want.pointer(path).cloned().unwrap_or(Value::Null);
        removals(path, &have_at, &want_at, &mut ops);
    }
    (!ops.is_empty()).then_some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::kinds;

    fn paths(ops: &[Value]) -> Vec<String> {
        ops.iter()
            .filter(|o| o["op"] == "remove")
            .map(|o| o["path"].as_str().unwrap_or_default().to_string())
            .collect()
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

    #[test]
    fn a_rule_added_to_a_policy_is_removed() {
        let want = json!({"metadata": {"name": "consorzio-default-deny"},
                          "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}});
        let mut have = want.clone();
        assert_eq!(additions(&kinds::NETWORK_POLICY, &have, &want), None);
        have["spec"]["ingress"] = json!([{}]);
        have["metadata"]["uid"] = json!("u");
        let ops = additions(&kinds::NETWORK_POLICY, &have, &want).expect("an addition");
        assert_eq!(paths(&ops), ["/spec/ingress"]);
        assert_eq!(
            ops[0],
            json!({"op": "test", "path": "/spec/ingress", "value": [{}]})
        );
    }

    #[test]
    fn a_subject_added_to_a_binding_and_a_key_to_the_quota_are_removed() {
        let subject =
            |n: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": n});
        let want = json!({"subjects": [subject("a-admins")], "roleRef": {"name": "admin"}});
        let have = json!({"subjects": [subject("mallory"), subject("a-admins"), subject("eve")],
                          "roleRef": {"name": "admin"}});
        let ops = additions(&kinds::ROLE_BINDING, &have, &want).expect("an addition");
        assert_eq!(paths(&ops), ["/subjects/2", "/subjects/0"], "from the last");
        let want = json!({"spec": {"hard": {"pods": "50", "memory": "8Gi"}}});
        let same = json!({"spec": {"hard": {"pods": "50", "memory": "8192Mi"}}});
        assert_eq!(additions(&kinds::RESOURCE_QUOTA, &same, &want), None);
        let more = json!({"spec": {"hard": {"pods": "50", "memory": "8Gi", "count/foo": "1"}}});
        let ops = additions(&kinds::RESOURCE_QUOTA, &more, &want).expect("an addition");
        assert_eq!(paths(&ops), ["/spec/hard/count~1foo"]);
    }

    #[test]
    fn only_isolation_labels_of_a_namespace_are_exact() {
        let want = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                                  "consorzio.io/municipality": "a"}}});
        let mut have = want.clone();
        have["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!("comune-a");
        have["metadata"]["labels"]["services.consorzio.io/sit"] = json!("true");
        have["metadata"]["labels"]["team"] = json!("x");
        assert_eq!(additions(&kinds::NAMESPACE, &have, &want), None);
        have["metadata"]["labels"]["pod-security.kubernetes.io/enforce-version"] = json!("v1.20");
        let ops = additions(&kinds::NAMESPACE, &have, &want).expect("an addition");
        assert_eq!(
            paths(&ops),
            ["/metadata/labels/pod-security.kubernetes.io~1enforce-version"]
        );
    }
}
