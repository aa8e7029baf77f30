//! Helpers for tests that run against the local Kubernetes control plane of `tests/cluster`.
//!
//! ```no_run
//! # async fn demo() {
//! consorzio_testkit::run(|env| async move {
//!     let ns = env.namespace("demo").await?;
//!     // ... create objects in `ns` with `env.client()` ...
//!     Ok(())
//! })
//! .await;
//! # }
//! ```
//!
//! [`run`] connects to the cluster (starting it through `tests/cluster/up` when it is not running),
//! runs the test body, then deletes every throwaway namespace and object the test registered, even
//! when the body fails or panics.

mod cluster;
mod crds;
mod manifests;
pub mod netpol;
mod operator;
mod players;
mod wait;

pub use cluster::{Cluster, OPERATOR_GROUPS, OPERATOR_USER, kubectl};
pub use crds::{install_crds, install_platform};
pub use manifests::{example_manifests, examples_dir, yaml_documents};
pub use operator::OperatorProcess;
pub use players::OperatorPlayer;
pub use wait::{wait_for, wait_gone};

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, PostParams},
    core::{ApiResource, ObjectMeta},
};
use rand::Rng;
use serde::de::DeserializeOwned;

/// Label put on everything the testkit creates, so leftovers of a killed run can be found.
pub const TEST_LABEL: &str = "tests.consorzio.example/run";

/// Default patience of the wait helpers.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A name nobody else uses: `<prefix>-<6 random lowercase letters or digits>`, a valid DNS label.
pub fn unique_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..6)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}-{suffix}")
}

/// What a test body gets: a client for the cluster and a place to register throwaway objects.
#[derive(Clone)]
pub struct Env {
    client: Client,
    cluster: Arc<Cluster>,
    cleanup: Arc<Mutex<Vec<Leftover>>>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("cluster", &self.cluster)
            .finish()
    }
}

#[derive(Debug)]
struct Leftover {
    resource: ApiResource,
    namespace: Option<String>,
    name: String,
}

impl Env {
    /// An admin client (group `system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The running cluster: its directory, kubeconfig and binaries.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// A client acting as `user` in `groups`, through impersonation, to test RBAC.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> anyhow::Result<Client> {
        self.cluster.client_as(user, groups).await
    }

    /// Creates a throwaway namespace, deleted when the test ends.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        self.namespace_with_labels(prefix, &[]).await
    }

    /// Creates a throwaway namespace with extra labels, deleted when the test ends.
    pub async fn namespace_with_labels(
        &self,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let name = unique_name(prefix);
        let mut all = vec![(TEST_LABEL.to_string(), "true".to_string())];
        all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(all.into_iter().collect()),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await?;
        self.delete_later(&created);
        Ok(name)
    }

    /// Registers an object to be deleted when the test ends.
    pub fn delete_later<K>(&self, obj: &K)
    where
        K: Resource<DynamicType = ()>,
    {
        self.delete_later_dynamic(
            ApiResource::erase::<K>(&()),
            obj.namespace(),
            obj.name_any(),
        );
    }

    /// Registers an object of any kind (for example a custom resource known only by its
    /// [`ApiResource`]) to be deleted when the test ends.
    pub fn delete_later_dynamic(
        &self,
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
    ) {
        if let Ok(mut list) = self.cleanup.lock() {
            list.push(Leftover {
                resource,
                namespace,
                name,
            });
        }
    }

    /// An [`Api`] for a namespaced kind in `ns`.
    pub fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client(), ns)
    }

    async fn clean_up(&self) {
        let leftovers = match self.cleanup.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(_) => return,
        };
        // Newest first: objects inside a namespace go before the namespace.
        for left in leftovers.into_iter().rev() {
            let api: Api<DynamicObject> = match &left.namespace {
                Some(ns) => Api::namespaced_with(self.client(), ns, &left.resource),
                None => Api::all_with(self.client(), &left.resource),
            };
            match api.delete(&left.name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => eprintln!(
                    "testkit: could not delete {} {}: {e}",
                    left.resource.kind, left.name
                ),
            }
        }
    }
}

/// Runs a test body against the local cluster and cleans up what it registered, whatever happens.
///
/// Panics (failing the test) when the cluster cannot be reached or started, or when the body
/// returns an error or panics.
pub async fn run<F, Fut>(body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let cluster = Arc::new(Cluster::get());
    let client = cluster.client().await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to the local cluster in {}: {e:#}",
            cluster.dir.display()
        )
    });
    let env = Env {
        client,
        cluster,
        cleanup: Arc::default(),
    };
    let outcome = tokio::spawn(body(env.clone())).await;
    env.clean_up().await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e:?}"),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("test body was cancelled: {e}"),
    }
}

/// CPU time a process has used so far (user plus system), in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses; utime and stime are fields 14
    // and 15 of the line, in clock ticks of 1/100 s.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short /proc stat")?.parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}
