//! The per-comune metrics (readiness and quota), kept compact and encoded on each scrape.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder, metrics::MetricType};

/// What the metrics know of each comune, encoded on each scrape: a gauge per series took about
/// 3.5 KB a comune (heaptrack, 300 comuni); this takes about 200 bytes.
#[derive(Debug, Default)]
pub(super) struct Comuni(pub(super) Mutex<BTreeMap<Box<str>, Comune>>);

#[derive(Debug, Default)]
pub(super) struct Comune {
    pub(super) ready: bool,
    /// (hard, used) for each of `QUOTA_RESOURCES` the comune's quota has.
    pub(super) quota: [Option<(f64, f64)>; QUOTA_RESOURCES.len()],
    /// The services whose pass failed on this comune, and why (an error reason).
    pub(super) failing: BTreeMap<Box<str>, &'static str>,
}

impl Comuni {
    pub(super) fn with(&self, municipality: &str, f: impl FnOnce(&mut Comune)) {
        let Ok(mut comuni) = self.0.lock() else {
            return;
        };
        match comuni.get_mut(municipality) {
            Some(c) => f(c),
            None => f(comuni.entry(municipality.into()).or_default()),
        }
    }
}

impl Collector for Comuni {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(comuni) = self.0.lock() else {
            return Ok(());
        };
        let ready = comuni.values().filter(|c| c.ready).count() as i64;
        let mut m = encoder.encode_descriptor(
            "municipalities",
            "Municipalities by readiness (condition ready or not_ready)",
            None,
            MetricType::Gauge,
        )?;
        for (condition, n) in [("ready", ready), ("not_ready", comuni.len() as i64 - ready)] {
            m.encode_family(&[("condition", condition)])?
                .encode_gauge(&n)?;
        }
        let mut m = encoder.encode_descriptor(
            "municipality_ready",
            "1 when the comune is Ready, else 0",
            None,
            MetricType::Gauge,
        )?;
        for (name, c) in comuni.iter() {
            m.encode_family(&[("municipality", name.as_ref())])?
                .encode_gauge(&i64::from(c.ready))?;
        }
        let mut m = encoder.encode_descriptor(
            "municipality_quota",
            "Quota of a comune's namespace per resource: type hard (the limit) or used",
            None,
            MetricType::Gauge,
        )?;
        for (name, c) in comuni.iter() {
            for (resource, q) in QUOTA_RESOURCES.iter().zip(&c.quota) {
                let Some((hard, used)) = q else { continue };
                for (r#type, value) in [("hard", hard), ("used", used)] {
                    let labels = [
                        ("municipality", name.as_ref()),
                        ("resource", resource),
                        ("type", r#type),
                    ];
                    m.encode_family(&labels)?.encode_gauge(value)?;
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            "municipality_service_failing",
            "1 while a service's pass fails on this comune (its instance or access point), by reason",
            None,
            MetricType::Gauge,
        )?;
        for (name, c) in comuni.iter() {
            for (service, reason) in &c.failing {
                let labels = [
                    ("municipality", name.as_ref()),
                    ("service", service.as_ref()),
                    ("reason", reason),
                ];
                m.encode_family(&labels)?.encode_gauge(&1)?;
            }
        }
        Ok(())
    }
}

/// The quota resources exported per comune.
pub const QUOTA_RESOURCES: [&str; 6] = [
    "requests.cpu",
    "limits.cpu",
    "requests.memory",
    "limits.memory",
    "requests.storage",
    "pods",
];
