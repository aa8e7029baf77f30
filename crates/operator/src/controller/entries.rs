//! What the Municipality controller knows of each comune's status beyond the cache: the entries
//! the services reported and that are not written yet, when the status was last written, and the
//! status as written until the cache has it.
//!
//! One controller writes a comune's status, in one request: its own condition and quota, and
//! the services' entries (`status.services`). Each service hands over its entry here and wakes
//! that controller. Writes of the entries and the quota wait, within bounds, so that one write
//! carries several changes:
//! - while an entry is on its way (Pending, Updating; reported or already listed), or a service
//!   that selects the comune has not reported yet, the entries reported wait, at most
//!   `PROGRESS_HOLD` from the first of them: most instances arrive sooner, and are then written
//!   once, as Ready, together;
//! - a change of the quota usage alone is written once the usage has been still for
//!   `USAGE_SETTLE`, at most `USAGE_LIMIT` after its first change not written (instances that
//!   start change it a dozen times; the `consorzio_municipality_quota` metric follows each).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use consorzio_api::{Municipality, MunicipalityStatus, ServiceInstanceStatus};
use kube::ResourceExt;

use super::passes::{CACHE_LAG, PROGRESS_HOLD, USAGE_LIMIT, USAGE_SETTLE, left};

/// Per comune, by name.
#[derive(Debug, Default)]
pub struct Entries(Mutex<HashMap<Box<str>, Comune>>);

#[derive(Debug, Default)]
struct Comune {
    /// The services' entries not written yet.
    reports: Vec<Report>,
    /// When its status was last written.
    written: Option<Instant>,
    /// The status last written, and the resourceVersion the write made: until the cache has
    /// that version (at most `CACHE_LAG`), this is the comune's status.
    unseen: Option<Box<(String, MunicipalityStatus)>>,
    /// When it first waited for its namespace to be ready for pods.
    waiting: Option<Instant>,
    /// When its quota usage first changed since its status was last written, and when last.
    usage: Option<(Instant, Instant)>,
}

#[derive(Debug)]
struct Report {
    service: Box<str>,
    /// `None`: the comune no longer gets the service.
    entry: Option<ServiceInstanceStatus>,
    /// When it was first reported.
    since: Instant,
}

fn on_way(entry: &ServiceInstanceStatus) -> bool {
    matches!(entry.phase.as_str(), "Pending" | "Updating")
}

fn listed<'a>(
    services: &'a [ServiceInstanceStatus],
    service: &str,
) -> Option<&'a ServiceInstanceStatus> {
    services.iter().find(|e| e.name == service)
}

impl Comune {
    /// The status last written, if the cache (which has `m`) does not show it yet.
    fn unseen(&self, m: &Municipality) -> Option<&MunicipalityStatus> {
        let unseen = self.unseen.as_ref()?;
        let lagging = self.written.is_some_and(|at| at.elapsed() < CACHE_LAG);
        (lagging && m.metadata.resource_version.as_ref() != Some(&unseen.0)).then_some(&unseen.1)
    }

    /// The comune's status: the one last written while the cache is behind it.
    fn status<'a>(&'a self, m: &'a Municipality) -> Option<&'a MunicipalityStatus> {
        self.unseen(m).or(m.status.as_ref())
    }
}

impl Entries {
    fn with<T>(&self, comune: &str, f: impl FnOnce(&mut Comune) -> T) -> T {
        let mut all = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match all.get_mut(comune) {
            Some(c) => f(c),
            None => f(all.entry(comune.into()).or_default()),
        }
    }

    /// The comune's status, as the cache has it or as last written if the cache is behind.
    pub fn current(&self, m: &Municipality) -> MunicipalityStatus {
        self.with(&m.name_any(), |c| {
            if c.unseen(m).is_none() {
                c.unseen = None;
            }
            c.status(m).cloned().unwrap_or_default()
        })
    }

    /// Hands over the entry of `service` for comune `m` (`None`: it no longer gets the service).
    /// Says whether that changes what its status should say, and so whether to wake the
    /// Municipality controller.
    pub fn report(
        &self,
        m: &Municipality,
        service: &str,
        entry: Option<ServiceInstanceStatus>,
    ) -> bool {
        self.with(&m.name_any(), |c| {
            let reported = c.reports.iter().position(|r| &*r.service == service);
            let said = match reported {
                Some(i) => c.reports[i].entry.as_ref(),
                None => c.status(m).and_then(|s| listed(&s.services, service)),
            };
            if said == entry.as_ref() {
                return false;
            }
            match reported {
                Some(i) => c.reports[i].entry = entry,
                None => c.reports.push(Report {
                    service: service.into(),
                    entry,
                    since: Instant::now(),
                }),
            }
            true
        })
    }

    /// The entries the status should list, from `current` and the reports, in the order the
    /// status has them (new ones last); and, if the reports wait for others, for how long. The
    /// services in `expected` select the comune.
    pub fn services(
        &self,
        comune: &str,
        current: &[ServiceInstanceStatus],
        expected: &[String],
    ) -> (Vec<ServiceInstanceStatus>, Option<Duration>) {
        self.with(comune, |c| {
            let mut services = current.to_vec();
            let mut first: Option<Instant> = None;
            for r in &c.reports {
                let at = services.iter().position(|e| *e.name == *r.service);
                if r.entry.as_ref() != at.map(|i| &services[i]) {
                    first = Some(first.map_or(r.since, |f| f.min(r.since)));
                }
                match (at, &r.entry) {
                    (Some(i), Some(e)) => services[i] = e.clone(),
                    (Some(i), None) => {
                        services.remove(i);
                    }
                    (None, Some(e)) => services.push(e.clone()),
                    (None, None) => {}
                }
            }
            let unreported = expected
                .iter()
                .any(|name| listed(&services, name).is_none());
            let on_its_way = services.iter().any(on_way);
            let hold = first
                .filter(|_| on_its_way || unreported)
                .and_then(|first| left(PROGRESS_HOLD, first));
            (services, hold)
        })
    }

    /// Records that the comune's quota usage changed, and nothing else of its quota.
    pub fn usage_changed(&self, comune: &str) {
        self.with(comune, |c| {
            let now = Instant::now();
            c.usage = Some((c.usage.map_or(now, |(first, _)| first), now));
        });
    }

    /// When the comune's status may be written if only its quota usage changed: `None` now,
    /// `Some(wait)` after `wait`. A change of which the quota's watch told nothing (at start)
    /// is written at once.
    pub fn usage_write_wait(&self, comune: &str) -> Option<Duration> {
        self.with(comune, |c| {
            let (first, last) = c.usage?;
            Some(left(USAGE_SETTLE, last)?.min(left(USAGE_LIMIT, first)?))
        })
    }

    /// Records that the comune's status says `status`: as written now, the write making
    /// resourceVersion `version`, or as it already did (`None`). The reports it carries are done
    /// with.
    pub fn settled(&self, comune: &str, status: &MunicipalityStatus, version: Option<String>) {
        self.with(comune, |c| {
            c.reports
                .retain(|r| listed(&status.services, &r.service) != r.entry.as_ref());
            if let Some(version) = version {
                c.usage = None;
                c.written = Some(Instant::now());
                c.unseen = Some(Box::new((version, status.clone())));
            }
        });
    }

    /// How long the comune has waited for its namespace to be ready for pods, counted from the
    /// first time this is asked.
    pub fn waited(&self, comune: &str) -> Duration {
        self.with(comune, |c| {
            c.waiting.get_or_insert_with(Instant::now).elapsed()
        })
    }

    /// Forgets a comune that is gone.
    pub fn forget(&self, comune: &str) {
        if let Ok(mut all) = self.0.lock() {
            all.remove(comune);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comune(rv: &str, services: Vec<ServiceInstanceStatus>) -> Municipality {
        let mut m: Municipality = serde_yaml::from_str(
            "apiVersion: consorzio.io/v1alpha1\nkind: Municipality\nmetadata: {name: lugano}\n\
             spec: {displayName: Lugano, country: IT, istatCode: \"001185\", belfioreCode: G462, province: TO, region: Piemonte}\n",
        )
        .expect("a valid Municipality");
        m.metadata.resource_version = Some(rv.into());
        m.status = Some(MunicipalityStatus {
            services,
            ..Default::default()
        });
        m
    }

    fn entry(service: &str, phase: &str) -> ServiceInstanceStatus {
        ServiceInstanceStatus {
            name: service.into(),
            phase: phase.into(),
            url: None,
            version: Some("1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn entries_are_merged_in_the_status_order_and_removed_when_reported_gone() {
        let entries = Entries::default();
        let m = comune("1", vec![entry("gis", "Ready"), entry("cms", "Ready")]);
        // Reporting what the status says changes nothing.
        assert!(!entries.report(&m, "gis", Some(entry("gis", "Ready"))));
        assert!(!entries.report(&m, "files", None));
        assert!(entries.report(&m, "gis", None));
        assert!(entries.report(&m, "files", Some(entry("files", "Ready"))));
        assert!(entries.report(&m, "cms", Some(entry("cms", "Failed"))));
        // The same report twice wakes the controller once.
        assert!(!entries.report(&m, "cms", Some(entry("cms", "Failed"))));
        let current = entries.current(&m);
        let expected = ["cms".to_string(), "files".to_string()];
        let (services, hold) = entries.services("lugano", &current.services, &expected);
        assert_eq!(services, [entry("cms", "Failed"), entry("files", "Ready")]);
        assert_eq!(hold, None);
    }

    #[test]
    fn entries_wait_for_those_on_their_way_and_those_not_reported_yet() {
        let entries = Entries::default();
        let m = comune("1", vec![]);
        let expected = ["gis".to_string(), "cms".to_string(), "files".to_string()];
        let waits = |hold: Option<Duration>| {
            hold.is_some_and(|h| h > PROGRESS_HOLD - Duration::from_secs(1) && h <= PROGRESS_HOLD)
        };
        assert!(entries.report(&m, "gis", Some(entry("gis", "Ready"))));
        // cms and files select the comune and have not reported.
        assert!(waits(entries.services("lugano", &[], &expected).1));
        assert!(entries.report(&m, "files", Some(entry("files", "Ready"))));
        assert!(entries.report(&m, "cms", Some(entry("cms", "Pending"))));
        assert!(waits(entries.services("lugano", &[], &expected).1));
        assert!(entries.report(&m, "cms", Some(entry("cms", "Updating"))));
        assert!(waits(entries.services("lugano", &[], &expected).1));
        // All arrived: written at once.
        assert!(entries.report(&m, "cms", Some(entry("cms", "Ready"))));
        let (services, hold) = entries.services("lugano", &[], &expected);
        let ready = [
            entry("gis", "Ready"),
            entry("files", "Ready"),
            entry("cms", "Ready"),
        ];
        assert_eq!(services, ready);
        assert_eq!(hold, None);
        // An entry on its way that the status already lists holds the others too (in a cold
        // start of 1,000 comuni, each instance's arrival was otherwise a write of its own).
        let updating = comune("2", vec![entry("cms", "Updating")]);
        let other = Entries::default();
        assert!(other.report(&updating, "gis", Some(entry("gis", "Ready"))));
        let listed = [entry("cms", "Updating")];
        assert!(waits(other.services("lugano", &listed, &expected[..2]).1));
        assert!(other.report(&updating, "cms", Some(entry("cms", "Ready"))));
        assert_eq!(other.services("lugano", &listed, &expected[..2]).1, None);
    }

    #[test]
    fn the_status_written_stands_until_the_cache_has_it() {
        let entries = Entries::default();
        let stale = comune("1", vec![]);
        assert!(entries.report(&stale, "gis", Some(entry("gis", "Ready"))));
        let (services, _) = entries.services("lugano", &[], &[]);
        let written = MunicipalityStatus {
            services,
            ..Default::default()
        };
        entries.settled("lugano", &written, Some("2".into()));
        // The cache still has version 1: the status is the one written, and the service's entry,
        // reported again from a pass that read the old status, changes nothing.
        assert_eq!(entries.current(&stale), written);
        assert!(!entries.report(&stale, "gis", Some(entry("gis", "Ready"))));
        assert_eq!(entries.services("lugano", &[], &[]).0, []);
        // Once the cache has the version written, it is the status again.
        let fresh = comune("2", vec![]);
        assert_eq!(
            entries.current(&fresh),
            fresh.status.clone().unwrap_or_default()
        );
        assert!(entries.report(&fresh, "gis", Some(entry("gis", "Ready"))));
    }

    #[test]
    fn a_change_of_the_usage_alone_waits_until_the_usage_is_still() {
        let entries = Entries::default();
        // Nothing said when the usage changed (e.g. at start): written at once.
        assert_eq!(entries.usage_write_wait("lugano"), None);
        entries.usage_changed("lugano");
        let settles = |wait: Option<Duration>| {
            wait.is_some_and(|w| w > USAGE_SETTLE - Duration::from_secs(1) && w <= USAGE_SETTLE)
        };
        assert!(settles(entries.usage_write_wait("lugano")));
        // Another change starts the wait again.
        std::thread::sleep(Duration::from_millis(50));
        let before = entries.usage_write_wait("lugano");
        entries.usage_changed("lugano");
        assert!(entries.usage_write_wait("lugano") > before);
        // A write carries it.
        entries.settled("lugano", &MunicipalityStatus::default(), Some("2".into()));
        assert_eq!(entries.usage_write_wait("lugano"), None);
    }
}
