//! Waiting for the cluster to reach a state, with a deadline and a clear message when it does not.

use std::{future::Future, time::Duration};

use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::time::{Instant, sleep};

/// Polls `check` until it returns `Ok`, and returns that value.
///
/// An `Err` from `check` means "not yet" and should say what was seen, e.g.
/// `anyhow::bail!("2 of 3 replicas available")`. After `timeout`, fails with
/// `timed out after 60s waiting for <what>; last seen: <the last Err>`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(seen) if Instant::now() >= deadline => {
                anyhow::bail!(
                    "timed out after {}s waiting for {what}; last seen: {seen:#}",
                    timeout.as_secs()
                )
            }
            Err(_) => {}
        }
        sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// Waits until the object `name` no longer exists.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    wait_for(&format!("{kind} {name} to be deleted"), timeout, || async {
        match api.get_opt(name).await? {
            None => Ok(()),
            Some(obj) => {
                let deleting = obj.meta().deletion_timestamp.is_some();
                let finalizers = obj.meta().finalizers.clone().unwrap_or_default();
                anyhow::bail!("still there (deleting: {deleting}, finalizers: {finalizers:?})")
            }
        }
    })
    .await
}
