//! The operator's Prometheus metrics, all under the `consorzio_` prefix.

use std::{
    collections::HashMap,
    sync::{Mutex, atomic::AtomicU64},
    time::Instant,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// The reasons a reconcile fails with (`Error::reason`), and `malformed` for unreadable objects.
const ERROR_REASONS: &[&str] = &[
    "conflict",
    "forbidden",
    "invalid",
    "api_error",
    "api_unreachable",
    "render",
    "malformed",
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
struct ConditionLabels {
    condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MunicipalityLabels {
    municipality: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    municipality: String,
    resource: String,
    r#type: &'static str,
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
    municipalities: Family<ConditionLabels, Gauge>,
    ready: Family<MunicipalityLabels, Gauge>,
    quota: Family<QuotaLabels, Gauge<f64, AtomicU64>>,
    writes: Family<KindLabels, Counter>,
    service_instances: Family<ServiceStateLabels, Gauge>,
    rollout_progress: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
    leader: Gauge,
    rollout_halted: Family<ServiceLabels, Gauge>,
    readiness: Mutex<HashMap<String, bool>>,
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
        let municipalities = Family::<ConditionLabels, Gauge>::default();
        let ready = Family::<MunicipalityLabels, Gauge>::default();
        let quota = Family::<QuotaLabels, Gauge<f64, AtomicU64>>::default();
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
        registry.register(
            "municipalities",
            "Municipalities by readiness (condition ready or not_ready)",
            municipalities.clone(),
        );
        registry.register(
            "municipality_ready",
            "1 when the comune is Ready, else 0",
            ready.clone(),
        );
        registry.register(
            "municipality_quota",
            "Quota of a comune's namespace per resource: type hard (the limit) or used",
            quota.clone(),
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
            municipalities,
            ready,
            quota,
            writes,
            service_instances,
            rollout_progress,
            leader,
            rollout_halted,
            readiness: Mutex::default(),
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
        self.ready
            .get_or_create(&MunicipalityLabels {
                municipality: municipality.into(),
            })
            .set(i64::from(ready));
        let Ok(mut readiness) = self.readiness.lock() else {
            return;
        };
        readiness.insert(municipality.to_string(), ready);
        self.count_readiness(&readiness);
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
    }

    /// Records a comune's quota: (resource, hard, used) with values as numbers.
    pub fn set_quota(&self, municipality: &str, resource: &str, hard: f64, used: f64) {
        for (r#type, value) in [("hard", hard), ("used", used)] {
            self.quota
                .get_or_create(&QuotaLabels {
                    municipality: municipality.into(),
                    resource: resource.into(),
                    r#type,
                })
                .set(value);
        }
    }

    /// Forgets a comune that no longer exists.
    pub fn forget_municipality(&self, municipality: &str) {
        self.ready.remove(&MunicipalityLabels {
            municipality: municipality.into(),
        });
        // Families cannot be filtered, so drop the quota series one by one.
        for resource in QUOTA_RESOURCES {
            for r#type in ["hard", "used"] {
                self.quota.remove(&QuotaLabels {
                    municipality: municipality.into(),
                    resource: (*resource).into(),
                    r#type,
                });
            }
        }
        let Ok(mut readiness) = self.readiness.lock() else {
            return;
        };
        readiness.remove(municipality);
        self.count_readiness(&readiness);
    }

    fn count_readiness(&self, readiness: &HashMap<String, bool>) {
        let ready = readiness.values().filter(|r| **r).count() as i64;
        let total = readiness.len() as i64;
        self.municipalities
            .get_or_create(&ConditionLabels { condition: "ready" })
            .set(ready);
        self.municipalities
            .get_or_create(&ConditionLabels {
                condition: "not_ready",
            })
            .set(total - ready);
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The quota resources exported per comune.
pub const QUOTA_RESOURCES: &[&str] = &[
    "requests.cpu",
    "limits.cpu",
    "requests.memory",
    "limits.memory",
    "requests.storage",
    "pods",
];
