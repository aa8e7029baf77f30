//! What the Municipality controller knows of each comune's status beyond the cache: the entries
//! the services reported and that are not written yet, when the status was last written, and the
//! status as written until the cache has it.
//!
//! One controller writes a comune's status, in one request: its own condition and quota, and
//! the services' entries (`status.services`). Each service hands over its entry here and wakes
//! that controller. Writes wait, within bounds, so that one write carries several changes:
//! - an entry on its way (Pending, Updating) is held for `PROGRESS_HOLD`, and so is the rest of
//!   the write; most instances arrive sooner, and are then written once, as Ready, together with
//!   the quota and the other services;
//! - a change of the quota usage alone is written at most every `USAGE_REFRESH`.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use consorzio_api::{Municipality, MunicipalityStatus, ServiceInstanceStatus};
use kube::ResourceExt;

/// How long an instance on its way (Pending, Updating) goes unreported: most are Ready sooner,
/// and then the comune's status is written once instead of two or three times.
const PROGRESS_HOLD: Duration = Duration::from_secs(10);

/// How often a comune's status may be written when only its quota changed.
const USAGE_REFRESH: Duration = Duration::from_secs(30);

/// Per comune, by name.
#[derive(Debug, Default)]
pub struct Statuses(Mutex<HashMap<Box<str>, Comune>>);

#[derive(Debug, Default)]
struct Comune {
    /// The services' entries not written yet.
    reports: Vec<Report>,
    /// When its status was last written.
    written: Option<Instant>,
    /// The status last written, and the resourceVersion it replaced: while the cache still has
    /// that version, this is the comune's status.
    unseen: Option<Box<(String, MunicipalityStatus)>>,
}

#[derive(Debug)]
struct Report {
    service: Box<str>,
    /// `None`: the comune no longer gets the service.
    entry: Option<ServiceInstanceStatus>,
    /// Since when the entry has been on its way.
    since: Instant,
}

fn on_way(entry: Option<&ServiceInstanceStatus>) -> bool {
    entry.is_some_and(|e| matches!(e.phase.as_str(), "Pending" | "Updating"))
}

fn listed<'a>(
    services: &'a [ServiceInstanceStatus],
    service: &str,
) -> Option<&'a ServiceInstanceStatus> {
    services.iter().find(|e| e.name == service)
}

impl Comune {
    /// The comune's status: the one last written while the cache is behind it.
    fn status<'a>(&'a self, m: &'a Municipality) -> Option<&'a MunicipalityStatus> {
        match &self.unseen {
            Some(unseen) if m.metadata.resource_version.as_ref() == Some(&unseen.0) => {
                Some(&unseen.1)
            }
            _ => m.status.as_ref(),
        }
    }
}

impl Statuses {
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
            let rv = m.metadata.resource_version.as_ref();
            if c.unseen.as_ref().is_some_and(|u| Some(&u.0) != rv) {
                // The cache has caught up (or someone else wrote since).
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
            let said = match c.reports.iter().find(|r| &*r.service == service) {
                Some(r) => r.entry.as_ref(),
                None => c.status(m).and_then(|s| listed(&s.services, service)),
            };
            if said == entry.as_ref() {
                return false;
            }
            let now = Instant::now();
            match c.reports.iter_mut().find(|r| &*r.service == service) {
                Some(r) => {
                    // Pending, then Updating: on its way since the first.
                    if !(on_way(r.entry.as_ref()) && on_way(entry.as_ref())) {
                        r.since = now;
                    }
                    r.entry = entry;
                }
                None => c.reports.push(Report {
                    service: service.into(),
                    entry,
                    since: now,
                }),
            }
            true
        })
    }

    /// The entries the status should list, from `current` and the reports, in the order the
    /// status has them (new ones last); and, if a report on its way is held, for how long.
    pub fn services(
        &self,
        comune: &str,
        current: &[ServiceInstanceStatus],
    ) -> (Vec<ServiceInstanceStatus>, Option<Duration>) {
        self.with(comune, |c| {
            let mut services = current.to_vec();
            let mut hold: Option<Duration> = None;
            for r in &c.reports {
                let at = services.iter().position(|e| *e.name == *r.service);
                if on_way(r.entry.as_ref()) && r.entry.as_ref() != at.map(|i| &services[i]) {
                    let left = PROGRESS_HOLD.saturating_sub(r.since.elapsed());
                    if !left.is_zero() {
                        hold = Some(hold.map_or(left, |h| h.min(left)));
                    }
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
            (services, hold)
        })
    }

    /// When the comune's status may be written if only its quota usage changed: `None` now,
    /// `Some(wait)` after `wait`.
    pub fn usage_write_wait(&self, comune: &str) -> Option<Duration> {
        self.with(comune, |c| {
            let since = c.written?.elapsed();
            USAGE_REFRESH
                .checked_sub(since)
                .filter(|wait| !wait.is_zero())
        })
    }

    /// Records that the comune's status says `status`: written now over resourceVersion `over`,
    /// or already so (`None`). The reports it carries are done with.
    pub fn settled(&self, comune: &str, status: &MunicipalityStatus, over: Option<String>) {
        self.with(comune, |c| {
            c.reports
                .retain(|r| listed(&status.services, &r.service) != r.entry.as_ref());
            if let Some(over) = over {
                c.written = Some(Instant::now());
                c.unseen = Some(Box::new((over, status.clone())));
            }
        });
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
        }
    }

    #[test]
    fn entries_are_merged_in_the_status_order_and_removed_when_reported_gone() {
        let statuses = Statuses::default();
        let m = comune("1", vec![entry("gis", "Ready"), entry("cms", "Ready")]);
        // Reporting what the status says changes nothing.
        assert!(!statuses.report(&m, "gis", Some(entry("gis", "Ready"))));
        assert!(!statuses.report(&m, "files", None));
        assert!(statuses.report(&m, "gis", None));
        assert!(statuses.report(&m, "files", Some(entry("files", "Ready"))));
        assert!(statuses.report(&m, "cms", Some(entry("cms", "Failed"))));
        // The same report twice wakes the controller once.
        assert!(!statuses.report(&m, "cms", Some(entry("cms", "Failed"))));
        let current = statuses.current(&m);
        let (services, hold) = statuses.services("lugano", &current.services);
        assert_eq!(services, [entry("cms", "Failed"), entry("files", "Ready")]);
        assert_eq!(hold, None);
    }

    #[test]
    fn an_entry_on_its_way_holds_the_write_until_it_arrives_or_its_time_is_up() {
        let statuses = Statuses::default();
        let m = comune("1", vec![]);
        assert!(statuses.report(&m, "gis", Some(entry("gis", "Ready"))));
        assert!(statuses.report(&m, "cms", Some(entry("cms", "Pending"))));
        let (_, hold) = statuses.services("lugano", &[]);
        assert!(hold.is_some_and(|h| h > Duration::from_secs(9) && h <= PROGRESS_HOLD));
        // Pending then Updating: still on its way since the first report.
        assert!(statuses.report(&m, "cms", Some(entry("cms", "Updating"))));
        assert!(statuses.services("lugano", &[]).1.is_some());
        assert!(statuses.report(&m, "cms", Some(entry("cms", "Ready"))));
        let (services, hold) = statuses.services("lugano", &[]);
        assert_eq!(services, [entry("gis", "Ready"), entry("cms", "Ready")]);
        assert_eq!(hold, None);
        // An entry on its way that the status already lists holds nothing.
        let updating = comune("2", vec![entry("cms", "Updating")]);
        let other = Statuses::default();
        assert!(other.report(&updating, "gis", Some(entry("gis", "Ready"))));
        assert_eq!(
            other.services("lugano", &[entry("cms", "Updating")]).1,
            None
        );
    }

    #[test]
    fn the_status_written_stands_until_the_cache_has_a_newer_version() {
        let statuses = Statuses::default();
        let stale = comune("1", vec![]);
        assert!(statuses.report(&stale, "gis", Some(entry("gis", "Ready"))));
        let (services, _) = statuses.services("lugano", &[]);
        let written = MunicipalityStatus {
            services,
            ..Default::default()
        };
        statuses.settled("lugano", &written, Some("1".into()));
        // The cache still has version 1: the status is the one written, and the service's entry,
        // reported again from a pass that read the old status, changes nothing.
        assert_eq!(statuses.current(&stale), written);
        assert!(!statuses.report(&stale, "gis", Some(entry("gis", "Ready"))));
        assert_eq!(statuses.services("lugano", &[]).0, []);
        assert!(statuses.usage_write_wait("lugano").is_some());
        // A newer version in the cache is the status again.
        let fresh = comune("2", vec![]);
        assert_eq!(
            statuses.current(&fresh),
            fresh.status.clone().unwrap_or_default()
        );
        assert!(statuses.report(&fresh, "gis", Some(entry("gis", "Ready"))));
    }
}
