//! When the operator writes: how changes reach the controllers, which comuni a service's pass
//! covers, and every write it defers so that one write carries several changes. Each wait was
//! introduced for a figure of the fleet benchmark (`docs/benchmarks.md`; the history of each in
//! `docs/performance-history.md`):
//!
//! | what waits | for how long | why | figure |
//! |---|---|---|---|
//! | a service's next pass | as long as the last took, 1–5 s (`MIN_COOLDOWN`, `MAX_COOLDOWN`); 250 ms after a pass that wrote (`WROTE_COOLDOWN`) | every change of an instance asks for a pass over every comune; changes that arrive meanwhile are merged into the next | operator CPU in a cold start |
//! | a pass over every comune | `WHOLE_PASS` (20 min) | a pass covers the comuni changed since the last; now and then all, to repair what no event told | operator CPU at 1,000 comuni |
//! | a service's status when only its counts changed | `COUNTS_REFRESH` (5 s) | instances becoming Available one by one | status writes per service |
//! | a comune's services' entries | while one is on its way, at most `PROGRESS_HOLD` (2 min) from the first | instances arrive within a minute or two of each other; written once, together | writes per comune |
//! | a comune's quota usage alone | until still for `USAGE_SETTLE` (30 s), at most `USAGE_LIMIT` (5 min); the metric follows at once | starting instances change it a dozen times | writes per comune |
//! | a comune's status as written, over the cache's | `CACHE_LAG` (10 s) | a reconcile right after a write would write it again | writes per comune |
//! | an object created a moment ago | `CREATION_LAG` (10 s) | not applied again before the cache shows it | writes per comune |
//! | a comune's Ready, for its namespace's `default` ServiceAccount | silently `SERVICE_ACCOUNT_PATIENCE` (10 s), then said, looked at every `RETRY_SERVICE_ACCOUNT` (30 s) | pods are refused without it (8,000 refusals in a cold start) | cold-start time |
//! | a comune with nothing changed | `RESYNC` (30 min) | repairs what no event told | — |

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use consorzio_api::{Municipality, SharedService};
use futures::channel::mpsc;
use kube::{
    Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};

use super::entries::Entries;

/// The shortest wait after a pass that wrote nothing. While instances start, their Deployments
/// change many times a second across the fleet, and each pass reads every comune's state.
pub const MIN_COOLDOWN: Duration = Duration::from_secs(1);
/// The longest a service's pass waits after the previous one.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(5);
/// The wait after a pass that created or changed instances: what changed meanwhile (e.g. comuni
/// that became Ready) is taken in the next pass, soon.
pub const WROTE_COOLDOWN: Duration = Duration::from_millis(250);
/// How often a service's pass goes over every comune anyway.
pub const WHOLE_PASS: Duration = Duration::from_secs(20 * 60);
/// How often a service's status may be written when only its counts changed.
pub const COUNTS_REFRESH: Duration = Duration::from_secs(5);
/// How long the entries reported may wait for the others. (In a cold start of 1,000 comuni,
/// instances take a minute or two from their first report to Ready.)
pub const PROGRESS_HOLD: Duration = Duration::from_secs(120);
/// How long the quota usage must be still before a change of it alone is written...
pub const USAGE_SETTLE: Duration = Duration::from_secs(30);
/// ...and how late such a change may be written at most.
pub const USAGE_LIMIT: Duration = Duration::from_secs(5 * 60);
/// How long the cache may take to show a status write; until it does, the status written is
/// the comune's status.
pub const CACHE_LAG: Duration = Duration::from_secs(10);
/// How long a created object may take to show in the caches.
pub const CREATION_LAG: Duration = Duration::from_secs(10);
/// How long a comune's status waits silently for its namespace's `default` ServiceAccount.
pub const SERVICE_ACCOUNT_PATIENCE: Duration = Duration::from_secs(10);
/// How often a comune that has waited that long looks for it again.
pub const RETRY_SERVICE_ACCOUNT: Duration = Duration::from_secs(30);
/// How often a comune is checked even when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(30 * 60);

/// What is left of `interval` counted from `since`; `None` once it has passed.
pub fn left(interval: Duration, since: Instant) -> Option<Duration> {
    interval
        .checked_sub(since.elapsed())
        .filter(|wait| !wait.is_zero())
}

/// A fingerprint of `parts`.
pub fn fingerprint(parts: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

/// Where changes of managed objects are sent: to the Municipality or SharedService they belong to.
#[derive(Clone, Debug)]
pub struct Triggers {
    pub(super) municipalities: mpsc::UnboundedSender<ObjectRef<Municipality>>,
    pub(super) services: mpsc::UnboundedSender<ObjectRef<SharedService>>,
    pub(super) changes: Arc<Changes>,
    pub(super) entries: Arc<Entries>,
    /// The comuni whose reconcile is to be woken later for a change of their quota usage.
    waking: Arc<Mutex<HashSet<String>>>,
}

impl Triggers {
    /// Sends changes to `municipalities` and `services`; `changes` and `entries` hear of them.
    pub fn new(
        municipalities: mpsc::UnboundedSender<ObjectRef<Municipality>>,
        services: mpsc::UnboundedSender<ObjectRef<SharedService>>,
        changes: Arc<Changes>,
        entries: Arc<Entries>,
    ) -> Self {
        Triggers {
            municipalities,
            services,
            changes,
            entries,
            waking: Arc::default(),
        }
    }

    /// An object of `service` (if any) in the namespace of `comune` (if any) changed.
    pub fn notify(&self, service: Option<&str>, comune: Option<&str>) {
        if let Some(comune) = comune {
            self.changes.touch(comune);
        }
        if let Some(service) = service {
            let _ = self.services.unbounded_send(ObjectRef::new(service));
        } else if let Some(owner) = comune {
            self.wake(owner);
        }
    }

    /// Wakes the Municipality controller for `comune`.
    pub fn wake(&self, comune: &str) {
        let _ = self.municipalities.unbounded_send(ObjectRef::new(comune));
    }

    /// The quota usage of `comune` changed, and nothing else of its quota. Its reconcile is
    /// woken once the usage is still (`USAGE_SETTLE`), once for all the changes until then.
    pub fn usage_changed(&self, comune: &str) {
        self.entries.usage_changed(comune);
        let first = self
            .waking
            .lock()
            .is_ok_and(|mut waking| waking.insert(comune.to_string()));
        if !first {
            return;
        }
        let (triggers, comune) = (self.clone(), comune.to_string());
        tokio::spawn(async move {
            while let Some(wait) = triggers.entries.usage_write_wait(&comune) {
                tokio::time::sleep(wait).await;
            }
            if let Ok(mut waking) = triggers.waking.lock() {
                waking.remove(&comune);
            }
            triggers.wake(&comune);
        });
    }
}

/// The last fingerprint seen of each comune, or of one of its objects: a subscriber of their
/// changes acts only on those that change what it reads.
#[derive(Debug)]
pub struct Fingerprints<T = u64> {
    seen: Mutex<HashMap<String, T>>,
    comuni: Store<DeserializeGuard<Municipality>>,
}

impl<T: PartialEq> Fingerprints<T> {
    /// Fingerprints of the comuni in `comuni` (by name).
    pub fn new(comuni: Store<DeserializeGuard<Municipality>>) -> Self {
        Self {
            seen: Mutex::default(),
            comuni,
        }
    }

    /// Records `fingerprint` for `comune`; returns the one before it (none the first time).
    pub fn replace(&self, comune: &str, fingerprint: T) -> Option<T> {
        let Ok(mut seen) = self.seen.lock() else {
            return None;
        };
        let last = seen.insert(comune.to_string(), fingerprint);
        // Deletions are not reported here: forget deleted comuni now and then.
        if last.is_none() && seen.len() > 2 * self.comuni.len() + 64 {
            seen.retain(|c, _| self.comuni.get(&ObjectRef::new(c)).is_some());
        }
        last
    }
}

impl Fingerprints {
    /// Records `fingerprint` for `comune`; says whether it differs from the last one (or is the
    /// first).
    pub fn changed(&self, comune: &str, fingerprint: u64) -> bool {
        self.replace(comune, fingerprint) != Some(fingerprint)
    }
}

/// Which comuni changed (the Municipality, or an object in its namespace), in the order they
/// did: a service's pass goes over those that changed since its last one, not the whole fleet.
/// A change is counted after the caches have it, so a pass that starts later sees it.
#[derive(Debug, Default)]
pub struct Changes {
    /// The count of changes so far, and the count when each comune last changed.
    seen: Mutex<(u64, HashMap<String, u64>)>,
}

impl Changes {
    /// Records a change of `comune`.
    pub fn touch(&self, comune: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.0 += 1;
            let now = seen.0;
            seen.1.insert(comune.to_string(), now);
        }
    }

    /// The count of changes so far: a pass that starts now has seen all of them.
    fn now(&self) -> u64 {
        self.seen.lock().map_or(0, |seen| seen.0)
    }

    /// The comuni changed after count `since`.
    fn since(&self, since: u64) -> HashSet<String> {
        let Ok(seen) = self.seen.lock() else {
            return HashSet::new();
        };
        seen.1
            .iter()
            .filter(|(_, at)| **at > since)
            .map(|(comune, _)| comune.clone())
            .collect()
    }
}

/// Which comuni a service's pass goes over.
#[derive(Debug)]
pub enum Scope {
    /// All of them: the first pass, the service changed, the last pass failed, or it is time.
    Whole,
    /// Those changed since the last pass.
    Changed(HashSet<String>),
}

impl Scope {
    /// Whether the pass goes over `comune`.
    pub fn covers(&self, comune: &str) -> bool {
        match self {
            Scope::Whole => true,
            Scope::Changed(changed) => changed.contains(comune),
        }
    }
}

/// How far a pass went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Went {
    /// It stopped early, or failed: the next covers every comune.
    Partly,
    /// It did all it had to, and wrote nothing to the comuni's instances.
    Through,
    /// It did all it had to, and created or changed instances: more may be waiting, so the next
    /// pass need not wait.
    Wrote,
}

/// A service's pass: when it ended and how long the next should wait, and what it covered.
#[derive(Debug, Clone, Copy)]
struct Pass {
    ended: Instant,
    cooldown: Duration,
    /// The count of changes when this pass started (see `Changes`).
    seen: u64,
    /// The service's generation then.
    generation: Option<i64>,
    /// When the last pass over every comune started.
    whole: Instant,
    /// Whether it did all it had to.
    ok: bool,
}

/// Each service's last pass, and when its status was last written.
#[derive(Debug, Default)]
pub struct Passes {
    last: Mutex<HashMap<String, Pass>>,
    status_written: Mutex<HashMap<String, Instant>>,
}

/// A pass under way: what it covers and the count of changes it has seen.
#[derive(Debug)]
pub struct Started {
    /// The comuni it covers.
    pub scope: Scope,
    seen: u64,
    at: Instant,
}

impl Passes {
    /// How long a service's next pass should wait, counted from when the last one ended: a
    /// moment if that one created or changed instances (more may be waiting), else as long as
    /// it took, at least 1 s and at most 5 s.
    pub fn cooldown(&self, service: &str) -> Option<Duration> {
        let passes = self.last.lock().ok()?;
        let pass = passes.get(service)?;
        left(pass.cooldown, pass.ended)
    }

    /// Starts a pass of the service `s`.
    pub fn start(&self, s: &SharedService, changes: &Changes) -> Started {
        let seen = changes.now();
        let scope = match self
            .last
            .lock()
            .ok()
            .and_then(|p| p.get(&s.name_any()).copied())
        {
            Some(last)
                if last.ok
                    && last.generation == s.meta().generation
                    && last.whole.elapsed() < WHOLE_PASS =>
            {
                Scope::Changed(changes.since(last.seen))
            }
            _ => Scope::Whole,
        };
        Started {
            scope,
            seen,
            at: Instant::now(),
        }
    }

    /// Records a service's pass. After one that stopped early or failed the next pass covers
    /// every comune.
    pub fn done(&self, s: &SharedService, pass: Started, went: Went) {
        let Ok(mut passes) = self.last.lock() else {
            return;
        };
        let whole = match (&pass.scope, passes.get(&s.name_any())) {
            (Scope::Changed(_), Some(last)) => last.whole,
            _ => pass.at,
        };
        let took = pass.at.elapsed();
        let record = Pass {
            ended: Instant::now(),
            cooldown: match went {
                Went::Wrote => WROTE_COOLDOWN,
                Went::Through | Went::Partly => took.clamp(MIN_COOLDOWN, MAX_COOLDOWN),
            },
            seen: pass.seen,
            generation: s.meta().generation,
            whole,
            ok: went != Went::Partly,
        };
        passes.insert(s.name_any(), record);
    }

    /// When a service's status may be written if only its counts changed: `None` now,
    /// `Some(wait)` after `wait`.
    pub fn counts_write_wait(&self, service: &str) -> Option<Duration> {
        let written = self.status_written.lock().ok()?;
        left(COUNTS_REFRESH, *written.get(service)?)
    }

    /// Records that a service's status was written now.
    pub fn status_written(&self, service: &str) {
        if let Ok(mut written) = self.status_written.lock() {
            written.insert(service.to_string(), Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_covers_the_comuni_changed_since_the_last_one() {
        let changes = Changes::default();
        changes.touch("lugano");
        let seen = changes.now();
        assert_eq!(changes.since(0), ["lugano".to_string()].into());
        assert!(changes.since(seen).is_empty());
        changes.touch("chiasso");
        changes.touch("lugano");
        let scope = Scope::Changed(changes.since(seen));
        assert!(scope.covers("chiasso") && scope.covers("lugano"));
        assert!(!scope.covers("locarno"));
        assert!(Scope::Whole.covers("locarno"));
    }
}
