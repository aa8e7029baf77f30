//! Small writes both controllers make on their own objects: finalizers and Events.

use std::fmt::Debug;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType},
};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{
    Context,
    error::{During, Error, Step, describe},
};

/// Adds (or removes) `finalizer` on a cluster-scoped object, with its resourceVersion as a
/// precondition so that no other finalizer is lost. Writes nothing when already so.
pub async fn set_finalizer<K>(
    obj: &K,
    finalizer: &str,
    present: bool,
    ctx: &Context,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let mut finalizers = obj.finalizers().to_vec();
    if finalizers.iter().any(|f| f == finalizer) == present {
        return Ok(());
    }
    if present {
        finalizers.push(finalizer.into());
    } else {
        finalizers.retain(|f| f != finalizer);
    }
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}});
    ctx.metrics.wrote(&K::kind(&()));
    Api::<K>::all(ctx.client.clone())
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .during(
            Step::Finalizer,
            describe(&K::kind(&()), None, &obj.name_any()),
        )?;
    Ok(())
}

/// Publishes an Event about `obj`; a failure is logged, never fatal.
pub async fn publish<K>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    ctx.metrics.wrote("Event");
    if let Err(error) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(%error, "cannot publish event");
    }
}
