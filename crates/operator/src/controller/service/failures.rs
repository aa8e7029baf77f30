//! A comune's failure is that comune's. A pass works on every comune whatever happens to the
//! others (applying, revoking, pruning), and what failed on one (a tenant's quota full, an object
//! of its own where the operator's should be, its namespace going) is recorded on that comune:
//! its entry in the comune's status (phase `Failed`, with what, where and why), a Warning Event
//! on the Municipality, and `consorzio_municipality_service_failing`; and retried with backoff,
//! 5 s doubling to 5 minutes, per comune and service.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use consorzio_api::{ServiceInstanceStatus, SharedService};
use futures::StreamExt;
use kube::{ResourceExt, runtime::events::EventType, runtime::reflector::ObjectRef};

use super::super::{Context, Error, object::publish};

/// What failed on a comune.
#[derive(Debug)]
pub struct Failed {
    /// The Municipality's name.
    pub comune: String,
    /// What went wrong.
    pub error: Error,
}

/// First retry of a comune that failed; each failure in a row doubles it.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between retries.
const LAST_RETRY: Duration = Duration::from_secs(5 * 60);

/// How many times in a row each (service, comune) failed.
#[derive(Debug, Default)]
pub struct Retries(Mutex<HashMap<(String, String), u32>>);

impl Retries {
    /// Counts a failure; says when to try again.
    fn failed(&self, service: &str, comune: &str) -> Duration {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = all.entry((service.into(), comune.into())).or_default();
        *n = n.saturating_add(1);
        FIRST_RETRY
            .saturating_mul(2u32.saturating_pow(*n - 1))
            .min(LAST_RETRY)
    }

    /// Forgets the failures of `service` on the comuni that `keep` does not keep (those that did
    /// not fail again); returns those forgotten.
    fn recovered(&self, service: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let gone: Vec<(String, String)> = all
            .keys()
            .filter(|(s, c)| s == service && !keep(c))
            .cloned()
            .collect();
        gone.into_iter()
            .map(|key| {
                all.remove(&key);
                key.1
            })
            .collect()
    }
}

/// Runs `work` on every item, at most `--concurrency` at a time (a pass that touches many comuni
/// neither waits on each in turn nor floods the API server), and every item whatever happens to
/// the others; returns what failed.
pub async fn each<T, Fut>(
    items: impl IntoIterator<Item = T>,
    ctx: &Context,
    work: impl Fn(T) -> Fut,
) -> Vec<Failed>
where
    Fut: Future<Output = Result<(), Failed>>,
{
    futures::stream::iter(items.into_iter().map(work))
        .buffer_unordered(usize::from(ctx.config.concurrency.max(1)))
        .filter_map(|outcome| async move { outcome.err() })
        .collect()
        .await
}

/// The error of a comune's work, as a [`Failed`].
pub fn on(comune: String) -> impl FnOnce(Error) -> Failed {
    move |error| Failed { comune, error }
}

/// Records this pass's failures of `s` on their comuni (status entry, Event, metric), and clears
/// the record of comuni that failed before and did not now, when `checked` says the pass looked
/// at them. Says when to look again, if anything failed.
pub async fn record(
    s: &SharedService,
    failures: &[Failed],
    checked: impl Fn(&str) -> bool,
    ctx: &Context,
) -> Option<Duration> {
    let service = s.name_any();
    let mut next: Option<Duration> = None;
    for Failed { comune, error } in failures {
        let retry = ctx.retries.failed(&service, comune);
        next = Some(next.map_or(retry, |n| n.min(retry)));
        ctx.metrics
            .set_failing(comune, &service, Some(error.reason()));
        let message = format!("{}; retrying in {}s", error.explain(), retry.as_secs());
        tracing::warn!(service = %service, comune = %comune, %error, "failed on a comune");
        let Some(m) = ctx.caches.municipalities.get(&ObjectRef::new(comune)) else {
            continue;
        };
        let Ok(m) = &m.0 else { continue };
        let entry = ServiceInstanceStatus {
            name: service.clone(),
            phase: "Failed".into(),
            message: Some(message.clone()),
            ..Default::default()
        };
        ctx.report(m, &service, Some(entry));
        publish(
            ctx,
            m,
            EventType::Warning,
            "ServiceFailed",
            "Reconcile",
            &message,
        )
        .await;
    }
    let failed_now = |c: &str| failures.iter().any(|f| f.comune == c);
    for comune in ctx
        .retries
        .recovered(&service, |c| failed_now(c) || !checked(c))
    {
        ctx.metrics.set_failing(&comune, &service, None);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_per_comune_and_forget_those_that_recover() {
        let retries = Retries::default();
        let waits: Vec<u64> = (0..8)
            .map(|_| retries.failed("sit", "alvito").as_secs())
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(
            retries.failed("sit", "atina").as_secs(),
            5,
            "another comune"
        );
        assert_eq!(
            retries.failed("gis", "alvito").as_secs(),
            5,
            "another service"
        );
        // alvito passed, atina was not looked at.
        let forgotten = retries.recovered("sit", |c| c == "atina");
        assert_eq!(forgotten, ["alvito"]);
        assert_eq!(retries.failed("sit", "alvito").as_secs(), 5);
        assert_eq!(retries.failed("sit", "atina").as_secs(), 10);
    }
}
