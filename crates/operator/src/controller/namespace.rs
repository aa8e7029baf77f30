//! The namespace an owner manages (a comune's, or a Shared service's): whether it is the owner's
//! to manage, and, when the owner goes, keeping it with its data or deleting it.

use std::fmt::Debug;

use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{Api, Resource, ResourceExt, api::DynamicObject, runtime::events::EventType};
use serde::de::DeserializeOwned;

use super::{
    Context,
    apply::{Reclaim, apply, delete},
    error::{During, Error, Step, describe},
    kinds,
    object::publish,
};
use crate::render::{MANAGED_BY, ORPHANED_LABEL, Rendered, shared::SHARED_NAMESPACE_PREFIX};

/// Where an owner's namespace stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceState {
    /// It does not exist.
    Absent,
    /// It exists and is the owner's.
    Ours,
    /// It is the owner's, and being deleted.
    Terminating,
    /// It exists and is not the owner's: never touched.
    Foreign,
}

/// Whether namespace `ns` exists, and whether it is the owner's to manage: managed by consorzio
/// and labelled `owner_label=owner`.
pub async fn namespace_state(
    ctx: &Context,
    ns: &str,
    owner_label: &str,
    owner: &str,
) -> Result<NamespaceState, Error> {
    let ours = |managed: Option<&str>, labelled: Option<&str>| {
        managed == Some(MANAGED_BY.1) && labelled == Some(owner)
    };
    let found = match ctx.caches.get(&kinds::NAMESPACE, None, ns) {
        Some(n) => Some((
            ours(n.label(MANAGED_BY.0), n.label(owner_label)),
            n.deleting(),
        )),
        // Not in the cache of managed namespaces: it may still exist, unmanaged.
        None => Api::<Namespace>::all(ctx.client.clone())
            .get_opt(ns)
            .await
            .during(Step::Read, describe("Namespace", None, ns))?
            .map(|n| {
                let label = |key| n.labels().get(key).map(String::as_str);
                (
                    ours(label(MANAGED_BY.0), label(owner_label)),
                    n.metadata.deletion_timestamp.is_some(),
                )
            }),
    };
    Ok(match found {
        None => NamespaceState::Absent,
        Some((false, _)) => NamespaceState::Foreign,
        Some((true, true)) => NamespaceState::Terminating,
        Some((true, false)) => NamespaceState::Ours,
    })
}

/// Whether an object is a namespace the operator manages, or in one, by its name: a comune's
/// (`<prefix><comune>`) or a Shared service's (`shared-<service>`). Only those are cached:
/// whatever carries consorzio's labels elsewhere (which the chart's label guard refuses to anyone
/// but the operator, but a cluster may lack the guard) is dropped as it arrives, so that no one
/// can fill the operator's memory, nor have it act, from a namespace of their own.
pub fn in_managed_namespace(obj: &DynamicObject, prefix: &str) -> bool {
    let ns = match &obj.metadata.namespace {
        Some(ns) => ns.as_str(),
        None => obj.metadata.name.as_deref().unwrap_or_default(),
    };
    ns.starts_with(prefix) || ns.starts_with(SHARED_NAMESPACE_PREFIX)
}

/// Whether the CRD named `crd` is being deleted: every object of its kind goes then, which is an
/// uninstall, not a decision to delete any comune's data (it is kept whatever the policies say).
pub async fn uninstalling(ctx: &Context, crd: &str) -> Result<bool, Error> {
    let found = Api::<CustomResourceDefinition>::all(ctx.client.clone())
        .get_opt(crd)
        .await
        .during(Step::Read, describe("CustomResourceDefinition", None, crd))?;
    Ok(found.is_none_or(|c| c.metadata.deletion_timestamp.is_some()))
}

/// The message of a namespace that exists and is not the owner's.
pub fn conflict_message(ns: &str, owner: &str, instead: &str) -> String {
    format!(
        "namespace {ns} already exists and is not managed by consorzio for this {owner}; \
         it is left untouched. Rename or remove it, or {instead}"
    )
}

/// The owner `owner` goes: its namespace `ns` (the owner's) is kept with its data, as
/// `orphaned` renders it (no owner reference, labelled orphaned), or deleted, as `reclaim`
/// says; an Event on the owner tells which, and why (`policy`, e.g. `deletionPolicy: Retain`).
pub async fn release<K>(
    ctx: &Context,
    owner: &K,
    ns: &str,
    reclaim: Reclaim,
    orphaned: &Rendered,
    policy: &str,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    match reclaim {
        Reclaim::Retain => {
            apply(ctx, orphaned).await?;
            let note = format!(
                "namespace {ns} and its data are kept, labelled {ORPHANED_LABEL}=true ({policy})"
            );
            publish(
                ctx,
                owner,
                EventType::Normal,
                "NamespaceRetained",
                "Cleanup",
                &note,
            )
            .await;
        }
        Reclaim::Delete => {
            delete(ctx, &kinds::NAMESPACE, None, ns).await?;
            let note = format!("deleting namespace {ns} ({policy})");
            publish(
                ctx,
                owner,
                EventType::Normal,
                "NamespaceDeleting",
                "Cleanup",
                &note,
            )
            .await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_in_the_operators_namespaces_is_cached() {
        let obj = |ns: Option<&str>, name: &str| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": ns,
                             "labels": {"app.kubernetes.io/managed-by": "consorzio"}}}))
            .unwrap()
        };
        assert!(in_managed_namespace(
            &obj(Some("comune-alvito"), "c"),
            "comune-"
        ));
        assert!(in_managed_namespace(
            &obj(Some("shared-sit"), "c"),
            "comune-"
        ));
        assert!(in_managed_namespace(&obj(None, "comune-alvito"), "comune-"));
        assert!(!in_managed_namespace(
            &obj(Some("kube-system"), "c"),
            "comune-"
        ));
        assert!(!in_managed_namespace(&obj(Some("team-a"), "c"), "comune-"));
        assert!(!in_managed_namespace(&obj(None, "team-a"), "comune-"));
        assert!(!in_managed_namespace(
            &obj(Some("comune-alvito"), "c"),
            "gemeinde-"
        ));
    }
}
