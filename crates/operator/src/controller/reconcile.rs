//! What every reconcile goes through: timing and counting, objects these types cannot read, the
//! retry policy with a per-object backoff, and logging what the controller machinery reports.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use kube::{
    Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{controller::Action, reflector::ObjectRef},
};

use super::{Context, Error};
use crate::metrics::ControllerName;

/// How many times in a row each object's reconcile failed.
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// How long to wait before retrying an object that failed `n` times in a row: 1 s,
    /// doubling, at most 5 minutes.
    fn backoff(&self, key: &str) -> Duration {
        let Ok(mut failures) = self.0.lock() else {
            return Duration::from_secs(5);
        };
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    fn succeeded(&self, key: &str) {
        if let Ok(mut failures) = self.0.lock() {
            failures.remove(key);
        }
    }
}

/// Reconciles a readable object with `work`, timed and counted under `controller`. An object
/// these types cannot read (e.g. written under an older CRD) is logged and waits for a change:
/// the rest of the fleet goes on.
pub async fn reconcile_guarded<'a, K, Fut>(
    guard: &'a DeserializeGuard<K>,
    ctx: &Context,
    controller: ControllerName,
    work: impl FnOnce(&'a K) -> Fut,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    Fut: Future<Output = Result<Action, Error>>,
{
    let _timer = ctx.metrics.reconcile_started(controller);
    let name = guard.name_any();
    let obj = match &guard.0 {
        Ok(obj) => obj,
        Err(invalid) => {
            tracing::warn!(kind = %K::kind(&()), %name, error = %invalid, "cannot read object");
            ctx.metrics
                .reconcile_finished(controller, Some("malformed"));
            return Ok(Action::await_change());
        }
    };
    tracing::debug!(kind = %K::kind(&()), %name, "reconcile started");
    let result = work(obj).await;
    tracing::debug!(kind = %K::kind(&()), %name, ok = result.is_ok(), "reconcile finished");
    ctx.metrics
        .reconcile_finished(controller, result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        ctx.failures.succeeded(&format!("{controller:?}/{name}"));
    }
    result
}

/// After a failed reconcile: permanent errors wait for the object to change, transient ones are
/// retried with a per-object backoff.
pub fn retry_policy<K>(
    guard: &DeserializeGuard<K>,
    error: &Error,
    ctx: &Context,
    controller: ControllerName,
) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let name = guard.name_any();
    tracing::warn!(?controller, %name, error = %error, source = ?std::error::Error::source(error), "reconcile failed");
    if error.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(ctx.failures.backoff(&format!("{controller:?}/{name}")))
    }
}

/// Logs what the controller machinery reports beyond our own reconcile errors (which the error
/// policy handles), such as a watch that failed.
pub async fn log_outcome<K, E>(
    outcome: Result<
        (ObjectRef<K>, Action),
        kube::runtime::controller::Error<E, kube::runtime::watcher::Error>,
    >,
) where
    K: Resource,
    E: std::error::Error + 'static,
{
    use kube::runtime::controller::Error as E;
    match outcome {
        Ok(_) | Err(E::ReconcilerFailed(..)) => {}
        // A deleted object's instances, going away after it, still ask for it.
        Err(error @ E::ObjectNotFound(_)) => tracing::debug!(%error, "controller"),
        Err(error) => tracing::warn!(%error, "controller"),
    }
}
