//! What a comune's status says of its backups (`status.backup`, the `BackedUp` condition), the
//! backup age metric, and when that changes by itself: when its newest backup gets too old.

use std::time::Duration;

use consorzio_api::{BackupState, Condition, Municipality};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::ResourceExt;

use super::super::{Context, conditions::condition, kinds};
use crate::{
    metrics::BackupAge,
    render::backup::{max_age, policy},
};

/// A comune's backups, as its status says them.
#[derive(Debug)]
pub struct BackupReport {
    /// `status.backup`.
    pub state: BackupState,
    /// `BackedUp`: (status, reason, message).
    pub backed_up: (bool, &'static str, String),
    /// When its newest backup gets too old, if it is not yet.
    pub look_again: Option<Duration>,
}

impl BackupReport {
    /// The `BackedUp` condition.
    pub fn condition(&self, previous: &[Condition], generation: Option<i64>) -> Condition {
        let (status, reason, message) = &self.backed_up;
        condition(
            previous,
            "BackedUp",
            *status,
            reason,
            message.clone(),
            generation,
        )
    }
}

/// The comune's backups, once the platform has Velero; sets its backup age metric.
pub fn backup_report(m: &Municipality, ctx: &Context) -> Option<BackupReport> {
    let name = m.name_any();
    let Some(backups) = ctx.backups.as_ref() else {
        ctx.metrics.set_backup(&name, None);
        return None;
    };
    let now = Timestamp::now();
    let (schedule, retention_days) = policy(m);
    let max = max_age(&schedule);
    let newest = backups.newest(&name);
    let state = BackupState {
        schedule,
        retention_days,
        max_age: max.map(hours_minutes).unwrap_or_default(),
        last_successful: newest.as_ref().map(|b| b.name.clone()),
        last_successful_time: newest.as_ref().map(|b| Time(b.completed)),
    };
    let onboarded = m.creation_timestamp().map_or(now, |t| t.0);
    let since = newest.as_ref().map_or(onboarded, |b| b.completed);
    let due = max.and_then(|max| since.checked_add(max).ok());
    let paused = m.spec.suspended;
    ctx.metrics.set_backup(
        &name,
        Some(BackupAge {
            since: since.as_second(),
            max: max.filter(|_| !paused).map(|d| d.as_secs()),
        }),
    );
    let newest_text = match &newest {
        Some(b) => format!(
            "the newest successful backup, {}, completed at {}",
            b.name, b.completed
        ),
        None => "no backup has completed yet".to_string(),
    };
    let velero = ctx.config.velero_namespace.as_deref().unwrap_or_default();
    let backed_up = if !ctx.caches.serves(&kinds::VELERO_SCHEDULE) {
        (
            false,
            "VeleroMissing",
            "the cluster has no Velero (its CRDs are not installed): no backups are taken; \
             install Velero v1.18 and its Schedule is made"
                .to_string(),
        )
    } else if paused {
        (
            newest.is_some(),
            "Suspended",
            format!("backups are paused while the comune is suspended; {newest_text}"),
        )
    } else if let Some(due) = due.filter(|due| now <= *due) {
        match newest {
            Some(_) => (
                true,
                "BackupCurrent",
                format!("{newest_text}; the next is due by {due}"),
            ),
            None => (
                false,
                "FirstBackupPending",
                format!("{newest_text}; the first is due by {due}"),
            ),
        }
    } else if due.is_none() {
        (
            false,
            "ScheduleUnreadable",
            format!(
                "backup.schedule {:?} cannot be read as a cron expression",
                state.schedule
            ),
        )
    } else {
        (
            false,
            if newest.is_some() {
                "BackupTooOld"
            } else {
                "NoBackup"
            },
            format!(
                "{newest_text}, longer ago than its policy allows ({}): see its failed backups \
                 with `kubectl get backups.velero.io -n {velero} -l consorzio.io/municipality={name}`",
                state.max_age
            ),
        )
    };
    let look_again = due
        .filter(|due| now <= *due && !paused)
        .and_then(|due| Duration::try_from(now.duration_until(due)).ok())
        .map(|d| d + Duration::from_secs(1));
    Some(BackupReport {
        state,
        backed_up,
        look_again,
    })
}

/// "25h0m".
fn hours_minutes(d: SignedDuration) -> String {
    format!("{}h{}m", d.as_hours(), d.as_mins() % 60)
}
