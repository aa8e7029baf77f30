//! Each instance's certificate: seconds to its expiry, computed on each scrape from when it
//! expires, so the figure is current whenever Prometheus asks.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder, metrics::MetricType};

/// (service, comune).
type Key = (Box<str>, Box<str>);

/// When each certificate expires (Unix seconds), by (service, comune).
#[derive(Debug, Default)]
pub(super) struct Certificates(pub(super) Mutex<BTreeMap<Key, i64>>);

impl Collector for Certificates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(certificates) = self.0.lock() else {
            return Ok(());
        };
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let mut m = encoder.encode_descriptor(
            "certificate_expiry_seconds",
            "Seconds until the certificate of a comune's host for a service expires (negative once expired): a Dedicated instance's host, or the Shared instance's host the comune reaches it by",
            None,
            MetricType::Gauge,
        )?;
        for ((service, municipality), not_after) in certificates.iter() {
            let labels = [
                ("municipality", municipality.as_ref()),
                ("service", service.as_ref()),
            ];
            m.encode_family(&labels)?.encode_gauge(&(not_after - now))?;
        }
        Ok(())
    }
}
