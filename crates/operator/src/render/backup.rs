//! A comune's backups: a Velero `Schedule` of its namespace (objects and volume data), in
//! Velero's namespace, on the comune's policy (`spec.backup`, by default from its data
//! classification).
//!
//! Defaults, by ACN class: `ordinary` daily (RPO one day, the class's data loses nothing the
//! State needs within a day), kept 30 days; `critical` every 6 hours, kept 90 days (a quarter:
//! what an incident found late needs); `strategic` hourly, kept 365 days. Each comune's time
//! is its own (a hash of its name), so that a country's comuni do not all start at 02:00. Volume
//! data is copied file by file (Velero's node agent, `defaultVolumesToFsBackup`), not by
//! snapshots, which need a CSI snapshot class the platform may not have. The Backups carry no
//! owner reference: deleting the Schedule (or the comune) leaves them to expire as kept.

use std::str::FromStr as _;

use consorzio_api::{DataClassification, Municipality, SharedService};
use k8s_openapi::jiff::{SignedDuration, civil};
use kube::ResourceExt;
use serde_json::json;

use super::{Config, Gvk, MUNICIPALITY_LABEL, Rendered, managed_meta, namespace_name};

/// Velero's schedule.
pub const VELERO_SCHEDULE: Gvk = ("velero.io", "v1", "Schedule", "schedules");
/// A backup Velero took (of a Schedule, here).
pub const VELERO_BACKUP: Gvk = ("velero.io", "v1", "Backup", "backups");
/// A restore of a backup, which `consorzio restore` makes.
pub const VELERO_RESTORE: Gvk = ("velero.io", "v1", "Restore", "restores");

/// A comune's backup policy, defaults filled in: when (cron, UTC) and for how many days.
pub fn policy(m: &Municipality) -> (String, i32) {
    let (schedule, days) = default_policy(&m.name_any(), m.spec.data_classification);
    let b = &m.spec.backup;
    (
        b.schedule.clone().unwrap_or(schedule),
        b.retention_days.unwrap_or(days),
    )
}

/// The backup policy of a service's own database server (a Shared instance's, or the one of a
/// Dedicated service's `ordinary` comuni): the ordinary class's, at a time of its own.
pub fn server_policy(s: &SharedService) -> (String, i32) {
    default_policy(
        &format!("shared-{}", s.name_any()),
        DataClassification::Ordinary,
    )
}

/// The default policy of `class`, at a time of `name`'s own.
fn default_policy(name: &str, class: DataClassification) -> (String, i32) {
    let spread = stable_hash(name);
    let minute = spread % 60;
    match class {
        DataClassification::Ordinary => (format!("{minute} {} * * *", 1 + (spread / 60) % 4), 30),
        DataClassification::Critical => {
            let first = (spread / 60) % 6;
            let hours: Vec<String> = (0..4).map(|i| (first + 6 * i).to_string()).collect();
            (format!("{minute} {} * * *", hours.join(",")), 90)
        }
        DataClassification::Strategic => (format!("{minute} * * * *"), 365),
    }
}

/// How long after a run of `schedule` its next must have finished: the longest interval between
/// two runs (over two months of them, from a fixed day, so the figure never changes), and an
/// hour for the run. A schedule rarer than that: two months. `None` if cron cannot read it
/// (admission refuses such schedules).
pub fn max_age(schedule: &str) -> Option<SignedDuration> {
    let cron = croner::Cron::from_str(schedule).ok()?;
    let start = civil::date(2001, 1, 1).at(0, 0, 0, 0);
    let end = start.checked_add(WINDOW).ok()?;
    let runs: Vec<civil::DateTime> = cron
        .iter_after(start)
        .take_while(|t| *t < end)
        .take(1000)
        .collect();
    let longest = runs
        .windows(2)
        .map(|w| w[0].duration_until(w[1]))
        .max()
        .unwrap_or(WINDOW);
    Some(longest + SignedDuration::from_hours(1))
}

/// The span `max_age` looks at.
const WINDOW: SignedDuration = SignedDuration::from_hours(62 * 24);

/// FNV-1a: the same number for the same name, on every platform and release.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The comune's Velero Schedule in `velero_namespace`, named as its namespace; paused while
/// the comune is suspended (nothing of it changes).
pub fn render_backup_schedule(
    m: &Municipality,
    config: &Config,
    velero_namespace: &str,
) -> Result<Rendered, serde_json::Error> {
    let ns = namespace_name(m, config);
    let name = m.name_any();
    let (schedule, days) = policy(m);
    let meta = managed_meta(&ns, Some(velero_namespace), (MUNICIPALITY_LABEL, &name));
    let labels = meta.labels.unwrap_or_default();
    Rendered::custom(
        VELERO_SCHEDULE,
        &ns,
        velero_namespace,
        &labels,
        json!({
            "schedule": schedule,
            "paused": m.spec.suspended,
            "useOwnerReferencesInBackup": false,
            "template": {
                "includedNamespaces": [ns],
                "ttl": format!("{}h0m0s", 24 * days),
                "snapshotVolumes": false,
                "defaultVolumesToFsBackup": true,
                // Velero puts these labels on each Backup (instead of the Schedule's): how the
                // operator finds a comune's backups.
                "metadata": {"labels": {MUNICIPALITY_LABEL: name}},
            },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::comune;

    #[test]
    fn the_policy_follows_the_data_classification_unless_the_comune_sets_it() {
        let mut m = comune("cuorgne", "canavese-digitale");
        let (daily, days) = policy(&m);
        let fields: Vec<&str> = daily.split(' ').collect();
        assert_eq!(fields[2..], ["*", "*", "*"]);
        let hour: u64 = fields[1].parse().expect("one hour");
        assert!((1..=4).contains(&hour), "{daily}");
        assert_eq!(days, 30);
        m.spec.data_classification = DataClassification::Critical;
        let (four_times, days) = policy(&m);
        assert_eq!(
            four_times
                .split(' ')
                .nth(1)
                .expect("hours")
                .split(',')
                .count(),
            4
        );
        assert_eq!(days, 90);
        m.spec.data_classification = DataClassification::Strategic;
        assert!(policy(&m).0.ends_with(" * * * *"));
        assert_eq!(policy(&m).1, 365);
        m.spec.backup.schedule = Some("0 3 * * 0".into());
        m.spec.backup.retention_days = Some(7);
        assert_eq!(policy(&m), ("0 3 * * 0".into(), 7));
    }

    #[test]
    fn a_backup_may_be_as_old_as_the_longest_wait_for_the_next_run_and_an_hour() {
        let hours = |s: &str| max_age(s).map(|d| d.as_hours());
        assert_eq!(hours("30 2 * * *"), Some(25));
        assert_eq!(hours("15 1,7,13,19 * * *"), Some(7));
        assert_eq!(hours("5 * * * *"), Some(2));
        // Twice a day, but 20 hours apart at night.
        assert_eq!(hours("0 8,12 * * *"), Some(21));
        // Weekly; on weekdays only (Friday to Monday).
        assert_eq!(hours("0 3 * * 0"), Some(7 * 24 + 1));
        assert_eq!(hours("0 3 * * 1-5"), Some(3 * 24 + 1));
        // Monthly: the longest month.
        assert_eq!(hours("0 3 1 * *"), Some(31 * 24 + 1));
        assert_eq!(hours("0 3 1 1 *"), Some(62 * 24 + 1));
        assert_eq!(max_age("61 * * * *"), None);
    }

    #[test]
    fn comuni_start_their_backups_at_times_of_their_own() {
        let times: std::collections::BTreeSet<String> = (0..100)
            .map(|i| policy(&comune(&format!("comune{i}"), "u")).0)
            .collect();
        assert!(times.len() > 50, "{} distinct times of 100", times.len());
        // The same comune, the same time, always.
        let a = comune("alvito", "valle-di-comino");
        assert_eq!(policy(&a), policy(&a.clone()));
    }

    #[test]
    fn a_schedule_backs_up_the_namespace_and_its_volumes_and_owns_nothing() {
        let mut m = comune("cuorgne", "canavese-digitale");
        m.spec.suspended = true;
        let r = render_backup_schedule(&m, &Config::default(), "velero").expect("renders");
        let v = serde_json::to_value(&r.object).expect("JSON");
        assert_eq!(v["metadata"]["namespace"], "velero");
        assert_eq!(v["metadata"]["name"], "comune-cuorgne");
        assert_eq!(
            v["spec"]["template"]["includedNamespaces"],
            json!(["comune-cuorgne"])
        );
        assert_eq!(v["spec"]["template"]["ttl"], "720h0m0s");
        assert_eq!(v["spec"]["template"]["defaultVolumesToFsBackup"], true);
        assert_eq!(v["spec"]["useOwnerReferencesInBackup"], false);
        assert_eq!(v["spec"]["paused"], true);
        assert_eq!(
            v["spec"]["template"]["metadata"]["labels"][MUNICIPALITY_LABEL],
            "cuorgne"
        );
    }
}
