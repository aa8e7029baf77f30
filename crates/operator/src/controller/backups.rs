//! Each comune's newest successful backup, as Velero records it on its `Backup`s (which carry
//! the comune's label, from its Schedule's template). Not a cache of the Backups: a country's
//! comuni keep a month of daily backups each, or more (over 200,000 objects at 7,900 comuni),
//! so the watch keeps the newest successful one of each comune only, and reads a comune's again
//! only when that one is deleted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};

use super::passes::Triggers;
use crate::render::{MUNICIPALITY_LABEL, api_resource, backup::VELERO_BACKUP};

/// A backup that Velero completed without errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    /// The Backup's name.
    pub name: String,
    /// When it completed.
    pub completed: Timestamp,
}

/// What an event of the watch changed of a comune.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// It has a newer successful backup (or, after a new list, another).
    Newer(String),
    /// Its newest was deleted: its Backups must be read again.
    Gone(String),
}

/// Comune → its newest successful backup.
type Newest = HashMap<Box<str>, Backup>;

/// The newest successful backup of each comune, kept by a watch of Velero's namespace.
#[derive(Debug, Default)]
pub struct Backups {
    newest: Mutex<Newest>,
    /// While the watch lists the Backups (at start, or again after it lost track), what it has
    /// found so far.
    listing: Mutex<Option<Newest>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The comune a Backup is a successful backup of, and the backup: phase `Completed` (not
/// `PartiallyFailed`), of the comune's namespace and nothing else.
pub fn successful(obj: &DynamicObject, prefix: &str) -> Option<(String, Backup)> {
    let comune = obj.labels().get(MUNICIPALITY_LABEL)?;
    let whole = serde_json::json!([format!("{prefix}{comune}")]);
    let status = obj.data.get("status")?;
    if status.get("phase")? != "Completed"
        || obj.data.pointer("/spec/includedNamespaces")? != &whole
    {
        return None;
    }
    let completed = status.get("completionTimestamp")?.as_str()?.parse().ok()?;
    Some((
        comune.clone(),
        Backup {
            name: obj.name_any(),
            completed,
        },
    ))
}

/// Keeps `backup` of `comune` if it is newer than what `newest` has; whether it was.
fn keep_newer(newest: &mut Newest, comune: &str, backup: Backup) -> bool {
    match newest.get(comune) {
        Some(known) if known.completed >= backup.completed => false,
        _ => {
            newest.insert(comune.into(), backup);
            true
        }
    }
}

impl Backups {
    /// Starts the watch of the Backups in `velero` (labelled with a comune); each change of a
    /// comune's newest backup wakes its reconcile.
    pub fn start(client: &Client, velero: &str, prefix: &str, triggers: &Triggers) -> Arc<Backups> {
        let backups = Arc::new(Backups::default());
        let resource = api_resource(VELERO_BACKUP);
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), velero, &resource);
        let config = watcher::Config::default()
            .labels(MUNICIPALITY_LABEL)
            .page_size(100);
        let (this, prefix, triggers) = (backups.clone(), prefix.to_string(), triggers.clone());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api.clone(), config).default_backoff());
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        for change in this.follow(event, &prefix) {
                            if let Change::Gone(comune) = &change {
                                this.read_again(&api, comune, &prefix).await;
                            }
                            let (Change::Newer(comune) | Change::Gone(comune)) = change;
                            triggers.wake(&comune);
                        }
                    }
                    Err(watcher::Error::InitialListFailed(kube::Error::Api(s)))
                        if s.code == 404 =>
                    {
                        tracing::debug!("Velero's Backups are not served, retrying");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "watch of Velero's Backups failed, retrying")
                    }
                }
            }
        });
        backups
    }

    /// The newest successful backup of `comune`.
    pub fn newest(&self, comune: &str) -> Option<Backup> {
        lock(&self.newest).get(comune).cloned()
    }

    /// Forgets a comune that is gone.
    pub fn forget(&self, comune: &str) {
        lock(&self.newest).remove(comune);
    }

    /// Takes in one event of the watch: which comuni's newest backup changed.
    fn follow(&self, event: Event<DynamicObject>, prefix: &str) -> Vec<Change> {
        match event {
            Event::Init => {
                *lock(&self.listing) = Some(Newest::new());
                vec![]
            }
            Event::InitApply(obj) => {
                if let (Some(listing), Some((comune, backup))) =
                    (lock(&self.listing).as_mut(), successful(&obj, prefix))
                {
                    keep_newer(listing, &comune, backup);
                }
                vec![]
            }
            Event::InitDone => {
                let Some(listed) = lock(&self.listing).take() else {
                    return vec![];
                };
                let mut newest = lock(&self.newest);
                let changed = newest
                    .iter()
                    .filter(|(comune, backup)| listed.get(*comune) != Some(*backup))
                    .chain(listed.iter().filter(|(c, _)| !newest.contains_key(*c)))
                    .map(|(comune, _)| Change::Newer(comune.to_string()))
                    .collect();
                *newest = listed;
                changed
            }
            Event::Apply(obj) => match successful(&obj, prefix) {
                Some((comune, backup)) => {
                    let newer = keep_newer(&mut lock(&self.newest), &comune, backup);
                    newer.then_some(Change::Newer(comune)).into_iter().collect()
                }
                // Velero marks a backup it is deleting (phase Deleting) before it goes.
                None => self.gone(&obj),
            },
            Event::Delete(obj) => self.gone(&obj),
        }
    }

    /// A Backup that is no longer a successful one: if it was its comune's newest, that comune.
    fn gone(&self, obj: &DynamicObject) -> Vec<Change> {
        let Some(comune) = obj.labels().get(MUNICIPALITY_LABEL) else {
            return vec![];
        };
        let newest = lock(&self.newest);
        let was_newest = newest.get(comune.as_str()).map(|b| &b.name) == Some(&obj.name_any());
        was_newest
            .then(|| Change::Gone(comune.clone()))
            .into_iter()
            .collect()
    }

    /// Reads the comune's Backups again, for its newest successful one.
    async fn read_again(&self, api: &Api<DynamicObject>, comune: &str, prefix: &str) {
        let params = ListParams::default().labels(&format!("{MUNICIPALITY_LABEL}={comune}"));
        let listed = match api.list(&params).await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(%error, comune, "reading the comune's backups failed");
                return;
            }
        };
        let mut found = Newest::new();
        for (c, backup) in listed.items.iter().filter_map(|b| successful(b, prefix)) {
            keep_newer(&mut found, &c, backup);
        }
        let mut newest = lock(&self.newest);
        match found.remove(comune) {
            Some(backup) => newest.insert(comune.into(), backup),
            None => newest.remove(comune),
        };
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn backup(name: &str, comune: &str, ns: &str, phase: &str, completed: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "velero.io/v1", "kind": "Backup",
            "metadata": {"name": name, "namespace": "velero",
                         "labels": {MUNICIPALITY_LABEL: comune}},
            "spec": {"includedNamespaces": [ns]},
            "status": {"phase": phase, "completionTimestamp": completed},
        }))
        .expect("a Backup")
    }

    #[test]
    fn the_newest_completed_backup_of_the_comunes_namespace_alone_counts() {
        let b = Backups::default();
        let day1 = backup("a-1", "a", "comune-a", "Completed", "2026-11-29T02:03:00Z");
        let day2 = backup("a-2", "a", "comune-a", "Completed", "2026-11-30T02:03:00Z");
        let failed = backup(
            "a-3",
            "a",
            "comune-a",
            "PartiallyFailed",
            "2026-12-01T02:03:00Z",
        );
        let foreign = backup("a-4", "a", "comune-b", "Completed", "2026-12-01T02:04:00Z");
        for event in [
            Event::Init,
            Event::InitApply(day2.clone()),
            Event::InitApply(day1),
        ] {
            assert!(b.follow(event, "comune-").is_empty());
        }
        assert!(b.newest("a").is_none(), "not before the list is complete");
        assert_eq!(
            b.follow(Event::InitDone, "comune-"),
            [Change::Newer("a".into())]
        );
        assert_eq!(b.newest("a").map(|b| b.name), Some("a-2".into()));
        for event in [Event::Apply(failed), Event::Apply(foreign)] {
            assert!(b.follow(event, "comune-").is_empty());
        }
        assert_eq!(b.newest("a").map(|b| b.name), Some("a-2".into()));
        // The newest deleted: the comune's backups are read again.
        assert_eq!(
            b.follow(Event::Delete(day2), "comune-"),
            [Change::Gone("a".into())]
        );
        let older = backup("a-1", "a", "comune-a", "Deleting", "2026-11-29T02:03:00Z");
        assert!(b.follow(Event::Delete(older), "comune-").is_empty());
        // Listed again without it.
        for event in [Event::Init, Event::InitDone] {
            b.follow(event, "comune-");
        }
        assert!(b.newest("a").is_none());
    }
}
