//! Plays the database operators whose resources consorzio emits (CloudNativePG,
//! mariadb-operator) as kwok plays the kubelet: their controllers cannot run here (they run
//! database pods, and there is no container runtime), so this sets the status of their objects
//! as each project documents it, once what the object needs exists.
//!
//! - CloudNativePG `Cluster`: `phase: Cluster in healthy state`, condition `Ready`
//!   (`ClusterIsReady`), `readyInstances`.
//! - CloudNativePG `DatabaseRole`: `applied: true` once its `passwordSecret` exists with a
//!   `username` equal to the role's name (otherwise `applied: false` and the operator's message);
//!   `Database`: `applied: true` once its owner exists (the server's initdb owner, or a role).
//! - mariadb-operator `MariaDB`, `Database`, `User`, `Grant`: condition `Ready` (`Created`), a
//!   `User` once its password Secret has the key it names.
//!
//! cert-manager is not played: its own controllers run in the rig (tests/cluster/cert-manager),
//! issuing real certificates from the rig's CA.
//!
//! Services whose objects a test wants held back (to see what waits for a database) are listed
//! with [`OperatorPlayer::hold`].

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::{Value, json};

/// The kinds played: (group, version, kind, plural).
const KINDS: &[(&str, &str, &str, &str)] = &[
    ("postgresql.cnpg.io", "v1", "Cluster", "clusters"),
    ("postgresql.cnpg.io", "v1", "DatabaseRole", "databaseroles"),
    ("postgresql.cnpg.io", "v1", "Database", "databases"),
    ("k8s.mariadb.com", "v1alpha1", "MariaDB", "mariadbs"),
    ("k8s.mariadb.com", "v1alpha1", "User", "users"),
    ("k8s.mariadb.com", "v1alpha1", "Database", "databases"),
    ("k8s.mariadb.com", "v1alpha1", "Grant", "grants"),
];

/// The label naming an object's SharedService.
const SERVICE_LABEL: &str = "consorzio.io/service";

/// A running player; stops when dropped.
#[derive(Debug)]
pub struct OperatorPlayer {
    held: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OperatorPlayer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OperatorPlayer {
    /// Starts playing against the cluster of `client` (an admin: it reads the password
    /// Secrets, as the database operators do).
    pub fn start(client: Client) -> OperatorPlayer {
        let held = Arc::new(Mutex::new(BTreeSet::new()));
        let task = tokio::spawn(play(client, held.clone()));
        OperatorPlayer { held, task }
    }

    /// Leaves the objects of `service` as they are until [`OperatorPlayer::release`].
    pub fn hold(&self, service: &str) {
        self.held
            .lock()
            .expect("not poisoned")
            .insert(service.into());
    }

    /// Plays `service`'s objects again.
    pub fn release(&self, service: &str) {
        self.held.lock().expect("not poisoned").remove(service);
    }
}

/// Watches every played kind; reports on each object as it arrives or changes, and on every
/// object again each few seconds (what it waits for may have come: a Secret, a role).
async fn play(client: Client, held: Arc<Mutex<BTreeSet<String>>>) {
    let kinds = KINDS.iter().map(|&(group, version, kind, plural)| {
        let resource = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        };
        play_kind(client.clone(), resource, held.clone())
    });
    futures::future::join_all(kinds).await;
}

async fn play_kind(client: Client, resource: ApiResource, held: Arc<Mutex<BTreeSet<String>>>) {
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    let writer = reflector::store::Writer::new(resource.clone());
    let store = writer.as_reader();
    let events = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    let mut events = std::pin::pin!(events);
    // A sweep that takes longer than its period is not followed by a burst of them: the watch's
    // events (which also fill the store) go on between sweeps.
    let mut sweep = tokio::time::interval(Duration::from_secs(2));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let objects: Vec<Arc<DynamicObject>> = tokio::select! {
            event = events.next() => match event {
                Some(Ok(obj)) if settled(&obj) => continue,
                Some(Ok(obj)) => vec![Arc::new(obj)],
                Some(Err(_)) => continue,
                None => return,
            },
            // Again those not ready yet: what they wait for may have come.
            _ = sweep.tick() => store.state().into_iter().filter(|o| !settled(o)).collect(),
        };
        let playing = objects.into_iter().filter(|obj| {
            let service = obj.labels().get(SERVICE_LABEL).cloned().unwrap_or_default();
            !held.lock().expect("not poisoned").contains(&service)
        });
        // As their operators would, many at once.
        futures::stream::iter(playing)
            .for_each_concurrent(16, |obj| {
                let (client, resource) = (&client, &resource);
                async move { report(client, resource, &obj).await }
            })
            .await;
    }
}

/// Whether `obj`'s status says it is ready for its generation.
fn settled(obj: &DynamicObject) -> bool {
    let status = &obj.data["status"];
    let current = status["observedGeneration"].as_i64() == obj.metadata.generation
        || status["conditions"][0]["observedGeneration"].as_i64() == obj.metadata.generation;
    current && (status["applied"] == true || status["conditions"][0]["status"] == "True")
}

/// Writes the status `obj`'s operator would report, unless it already says so.
async fn report(client: &Client, resource: &ApiResource, obj: &DynamicObject) {
    let Some(status) = status_of(client, &resource.kind, obj).await else {
        return;
    };
    if obj.data.get("status") == Some(&status) {
        return;
    }
    let ns = obj.namespace().unwrap_or_default();
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, resource);
    let patch = json!({"status": status});
    let _ = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
}

/// The status the operator of `kind` would report for `obj`, when it reports one.
async fn status_of(client: &Client, kind: &str, obj: &DynamicObject) -> Option<Value> {
    let spec = obj.data.get("spec")?;
    let ns = obj.namespace().unwrap_or_default();
    let generation = obj.metadata.generation;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let group = obj
        .types
        .as_ref()
        .map(|t| t.api_version.as_str())
        .unwrap_or_default();
    let cnpg = group.starts_with("postgresql.cnpg.io");
    let ready = |reason: &str| {
        // Kept from the last report, so an unchanged status is not written again.
        let since = obj.data["status"]["conditions"][0]["lastTransitionTime"]
            .as_str()
            .map_or_else(|| Timestamp::now().to_string(), str::to_string);
        json!([{"type": "Ready", "status": "True", "reason": reason, "message": "ready",
                "lastTransitionTime": since, "observedGeneration": generation}])
    };
    Some(match (cnpg, kind) {
        (true, "Cluster") => json!({
            "phase": "Cluster in healthy state", "instances": 1, "readyInstances": 1,
            "writeService": format!("{}-rw", obj.name_any()),
            "conditions": ready("ClusterIsReady"),
        }),
        (true, "DatabaseRole") => {
            let secret = spec["passwordSecret"]["name"].as_str()?;
            let username = secrets
                .get_opt(secret)
                .await
                .ok()
                .flatten()
                .and_then(|s| s.data?.get("username").cloned())
                .map(|u| String::from_utf8_lossy(&u.0).into_owned());
            let role = spec["name"].as_str()?;
            match username {
                Some(u) if u == role => {
                    json!({"applied": true, "observedGeneration": generation, "message": ""})
                }
                Some(u) => json!({"applied": false, "observedGeneration": generation,
                    "message": format!("the username in secret {secret} ({u}) does not match role {role}")}),
                None => json!({"applied": false, "observedGeneration": generation,
                    "message": format!("secret {secret} not found")}),
            }
        }
        (true, "Database") => {
            let owner = spec["owner"].as_str()?;
            let roles = Api::<DynamicObject>::namespaced_with(
                client.clone(),
                &ns,
                &ApiResource {
                    group: "postgresql.cnpg.io".into(),
                    version: "v1".into(),
                    api_version: "postgresql.cnpg.io/v1".into(),
                    kind: "DatabaseRole".into(),
                    plural: "databaseroles".into(),
                },
            );
            // The role of the same object name (as the operator names them), applied.
            let has_role = owner == "app"
                || roles
                    .get_opt(&obj.name_any())
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|r| {
                        r.data["spec"]["name"] == owner && r.data["status"]["applied"] == true
                    });
            if has_role {
                json!({"applied": true, "observedGeneration": generation, "message": ""})
            } else {
                json!({"applied": false, "observedGeneration": generation,
                    "message": format!("role {owner} does not exist")})
            }
        }
        (false, "User") => {
            let secret = spec["passwordSecretKeyRef"]["name"].as_str()?;
            let key = spec["passwordSecretKeyRef"]["key"].as_str()?;
            let has = secrets
                .get_opt(secret)
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.data.is_some_and(|d| d.contains_key(key)));
            if !has {
                return None;
            }
            json!({"conditions": ready("Created")})
        }
        (false, "MariaDB") => json!({"conditions": ready("StatefulSetReady"), "replicas": 1}),
        (false, _) => json!({"conditions": ready("Created")}),
        _ => return None,
    })
}
