//! Each comune's backups: how old its newest successful backup is, computed on each scrape, and
//! how old its policy lets it be, for the alert to compare.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder, metrics::MetricType};

use super::Metrics;

/// Of one comune: since when (Unix seconds) it has gone without a newer successful backup, and
/// the age its policy allows (none while its backups are paused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupAge {
    /// When its newest successful backup completed; with none yet, when it was onboarded.
    pub since: i64,
    /// Seconds.
    pub max: Option<i64>,
}

#[derive(Debug, Default)]
pub(super) struct Backups(pub(super) Mutex<BTreeMap<Box<str>, BackupAge>>);

impl Collector for Backups {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(backups) = self.0.lock() else {
            return Ok(());
        };
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let mut age = encoder.encode_descriptor(
            "backup_age_seconds",
            "Seconds since the comune's newest successful backup (Velero's Backup, Completed) completed; with none yet, since the comune was onboarded",
            None,
            MetricType::Gauge,
        )?;
        for (municipality, b) in backups.iter() {
            let labels = [("municipality", municipality.as_ref())];
            age.encode_family(&labels)?.encode_gauge(&(now - b.since))?;
        }
        let mut max = encoder.encode_descriptor(
            "backup_max_age_seconds",
            "The age the comune's backup policy allows its newest successful backup (the longest interval between two scheduled runs, and an hour); absent while its backups are paused",
            None,
            MetricType::Gauge,
        )?;
        for (municipality, b) in backups.iter() {
            if let Some(allowed) = b.max {
                let labels = [("municipality", municipality.as_ref())];
                max.encode_family(&labels)?.encode_gauge(&allowed)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Sets (or, with `None`, drops) the backup age of `municipality`.
    pub fn set_backup(&self, municipality: &str, age: Option<BackupAge>) {
        let Ok(mut backups) = self.backups.0.lock() else {
            return;
        };
        match age {
            Some(age) => backups.insert(municipality.into(), age),
            None => backups.remove(municipality),
        };
    }
}
