//! The operator's Prometheus metrics, all under the `consorzio_` prefix.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

mod backups;
mod certificates;
mod comuni;

pub use backups::BackupAge;
use backups::Backups;
use certificates::Certificates;
use comuni::Comuni;
pub use comuni::QUOTA_RESOURCES;

/// The reasons a reconcile fails with (`Error::reason`), and `malformed` for unreadable objects.
const ERROR_REASONS: &[&str] = &[
    "conflict",
    "forbidden",
    "invalid",
    "api_error",
    "api_unreachable",
    "render",
    "malformed",
    "missing",
];

/// Which controller a reconcile belongs to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ControllerName {
    /// The Municipality controller.
    municipality,
    /// The SharedService controller.
    sharedservice,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: ControllerName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: ControllerName,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: ControllerName,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceStateLabels {
    service: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// Every metric the operator exports, and the registry that serves them.
#[derive(Debug)]
pub struct Metrics {
    /// The registry rendered on `/metrics`.
    pub registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    durations: Family<ControllerLabels, Histogram>,
    errors: Family<ErrorLabels, Counter>,
    comuni: Arc<Comuni>,
    certificates: Arc<Certificates>,
    backups: Arc<Backups>,
    writes: Family<KindLabels, Counter>,
    service_instances: Family<ServiceStateLabels, Gauge>,
    rollout_progress: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
    leader: Gauge,
    rollout_halted: Family<ServiceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("consorzio");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let durations = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        let errors = Family::<ErrorLabels, Counter>::default();
        // Every series starts at zero, so that rates and alerts work before the first failure.
        for controller in [ControllerName::municipality, ControllerName::sharedservice] {
            for reason in ERROR_REASONS {
                let _ = errors.get_or_create(&ErrorLabels { controller, reason });
            }
        }
        let comuni = Arc::new(Comuni::default());
        registry.register_collector(Box::new(comuni.clone()));
        let certificates = Arc::new(Certificates::default());
        registry.register_collector(Box::new(certificates.clone()));
        let backups = Arc::new(Backups::default());
        registry.register_collector(Box::new(backups.clone()));
        let writes = Family::<KindLabels, Counter>::default();
        let service_instances = Family::<ServiceStateLabels, Gauge>::default();
        let rollout_progress = Family::<ServiceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "service_instances",
            "Instances of a shared service by state (ready or not_ready)",
            service_instances.clone(),
        );
        registry.register(
            "rollout_progress",
            "Share of a service's comuni on its latest template, 0 to 1",
            rollout_progress.clone(),
        );
        registry.register(
            "reconcile",
            "Reconciles by controller and result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile takes",
            durations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by controller and reason",
            errors.clone(),
        );
        let leader = Gauge::default();
        let rollout_halted = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "rollout_halted",
            "1 while a service's rollout is halted (an instance missed its progress deadline)",
            rollout_halted.clone(),
        );
        registry.register(
            "leader",
            "1 when this replica holds the leader lease and reconciles, 0 while it stands by",
            leader.clone(),
        );
        registry.register(
            "api_writes",
            "Writes (create, apply, patch, delete) the operator sent to the API server, by kind",
            writes.clone(),
        );
        Metrics {
            registry,
            reconciles,
            durations,
            errors,
            comuni,
            certificates,
            backups,
            writes,
            service_instances,
            rollout_progress,
            leader,
            rollout_halted,
        }
    }
}

/// Times a reconcile from its creation until it is dropped.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: ControllerName,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .durations
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Starts timing a reconcile.
    pub fn reconcile_started(&self, controller: ControllerName) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    /// Counts a finished reconcile; `error` is its bounded reason when it failed.
    pub fn reconcile_finished(&self, controller: ControllerName, error: Option<&'static str>) {
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles
            .get_or_create(&ResultLabels { controller, result })
            .inc();
        if let Some(reason) = error {
            self.errors
                .get_or_create(&ErrorLabels { controller, reason })
                .inc();
        }
    }

    /// Counts one write to the API server.
    pub fn wrote(&self, kind: &str) {
        self.writes
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Whether this replica leads (and reconciles).
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Records whether a comune is Ready.
    pub fn set_ready(&self, municipality: &str, ready: bool) {
        self.comuni.with(municipality, |c| c.ready = ready);
    }

    /// Records a service's instances and rollout progress.
    pub fn set_service(
        &self,
        service: &str,
        (ready, desired, updated): (usize, usize, usize),
        halted: bool,
    ) {
        self.rollout_halted
            .get_or_create(&ServiceLabels {
                service: service.into(),
            })
            .set(i64::from(halted));
        for (state, n) in [
            ("ready", ready),
            ("not_ready", desired.saturating_sub(ready)),
        ] {
            self.service_instances
                .get_or_create(&ServiceStateLabels {
                    service: service.into(),
                    state,
                })
                .set(n as i64);
        }
        let progress = if desired == 0 {
            1.0
        } else {
            updated as f64 / desired as f64
        };
        self.rollout_progress
            .get_or_create(&ServiceLabels {
                service: service.into(),
            })
            .set(progress);
    }

    /// Forgets a service that no longer exists.
    pub fn forget_service(&self, service: &str) {
        for state in ["ready", "not_ready"] {
            self.service_instances.remove(&ServiceStateLabels {
                service: service.into(),
                state,
            });
        }
        self.rollout_progress.remove(&ServiceLabels {
            service: service.into(),
        });
        self.rollout_halted.remove(&ServiceLabels {
            service: service.into(),
        });
        if let Ok(mut certificates) = self.certificates.0.lock() {
            certificates.retain(|(s, _), _| s.as_ref() != service);
        }
    }

    /// Records whether `service`'s pass failed on `municipality`, and why (an error reason).
    pub fn set_failing(&self, municipality: &str, service: &str, reason: Option<&'static str>) {
        self.comuni.with(municipality, |c| match reason {
            Some(reason) => {
                c.failing.insert(service.into(), reason);
            }
            None => {
                c.failing.remove(service);
            }
        });
    }

    /// Records when the certificate of `municipality`'s host for `service` expires (Unix
    /// seconds), or that it has none.
    pub fn set_certificate(&self, service: &str, municipality: &str, not_after: Option<i64>) {
        let Ok(mut certificates) = self.certificates.0.lock() else {
            return;
        };
        let key = (service.into(), municipality.into());
        match not_after {
            Some(t) => certificates.insert(key, t),
            None => certificates.remove(&key),
        };
    }

    /// Records a comune's quota of one of `QUOTA_RESOURCES`: its hard limit and what is used.
    pub fn set_quota(&self, municipality: &str, resource: &str, hard: f64, used: f64) {
        if let Some(i) = QUOTA_RESOURCES.iter().position(|r| *r == resource) {
            self.comuni
                .with(municipality, |c| c.quota[i] = Some((hard, used)));
        }
    }

    /// Records a comune's quota, as its status reports it.
    pub fn record_quota(
        &self,
        municipality: &str,
        quota: &std::collections::BTreeMap<String, consorzio_api::QuotaUsage>,
    ) {
        for resource in QUOTA_RESOURCES {
            if let Some(q) = quota.get(resource) {
                let (hard, used) = (
                    crate::quantity::parse(&q.hard.0),
                    crate::quantity::parse(&q.used.0),
                );
                self.set_quota(
                    municipality,
                    resource,
                    hard.unwrap_or(0.0),
                    used.unwrap_or(0.0),
                );
            }
        }
    }

    /// Forgets a comune that no longer exists.
    pub fn forget_municipality(&self, municipality: &str) {
        if let Ok(mut comuni) = self.comuni.0.lock() {
            comuni.remove(municipality);
        }
        if let Ok(mut certificates) = self.certificates.0.lock() {
            certificates.retain(|(_, m), _| m.as_ref() != municipality);
        }
        self.set_backup(municipality, None);
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comuni_are_encoded_on_scrape_and_forgotten_when_gone() {
        let metrics = Metrics::default();
        metrics.set_quota("a", "pods", 10.0, 3.0);
        metrics.set_quota("a", "not-a-resource", 1.0, 1.0);
        metrics.set_ready("a", true);
        metrics.set_ready("b", false);
        let text = metrics.encode();
        for line in [
            "consorzio_municipalities{condition=\"ready\"} 1",
            "consorzio_municipalities{condition=\"not_ready\"} 1",
            "consorzio_municipality_ready{municipality=\"a\"} 1",
            "consorzio_municipality_ready{municipality=\"b\"} 0",
            "consorzio_municipality_quota{municipality=\"a\",resource=\"pods\",type=\"hard\"} 10.0",
            "consorzio_municipality_quota{municipality=\"a\",resource=\"pods\",type=\"used\"} 3.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(!text.contains("not-a-resource"));
        metrics.forget_municipality("a");
        let text = metrics.encode();
        assert!(!text.contains("municipality=\"a\""), "{text}");
        assert!(text.contains("consorzio_municipalities{condition=\"ready\"} 0"));
    }
}
