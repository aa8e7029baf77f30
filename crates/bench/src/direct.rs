//! The physical limit (scenario 2): the objects the operator would create for the fleet, applied
//! by a plain client, without the operator, through the same API server, controller-manager,
//! scheduler and kwok.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use consorzio_testkit::{Cluster, yaml_documents};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Secret},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery::{ApiResource, Scope, pinned_kind},
    runtime::watcher,
};
use serde_json::{Value, json};

use crate::{
    comuni::Comune,
    fleet::{BENCH_ISSUER, SERVICES, rollout_settings, timeout},
    service_manifest, timeline,
    waits::{wait_count, wait_namespaces_gone},
};

/// On the namespaces the physical-limit scenario applies, so that an interrupted run's are found.
pub const DIRECT_LABEL: &str = "consorzio.io/bench-direct";

/// An object to apply: its kind's API (and whether it is namespaced), the object, and which
/// occurrence of it this is (see `Direct::prepare`).
type Entry = ((String, String), DynamicObject, usize);

/// What the direct client applies for one fleet, prepared once for every run of it.
#[derive(Debug)]
pub struct Direct {
    /// Comuni in the fleet.
    n: usize,
    resources: HashMap<(String, String), (ApiResource, bool)>,
    /// The namespaces, applied first (as the operator makes a comune's namespace before the
    /// rest), then everything else.
    namespaces_first: Vec<Entry>,
    rest: Vec<Entry>,
    deployments: HashSet<(Option<String>, String)>,
    namespaces: HashSet<String>,
}

impl Direct {
    /// `consorzio render` of the fleet and the benchmark's services, plus the instances'
    /// credentials Secrets (see `credentials`), with each kind's API looked up.
    pub async fn prepare(
        client: &Client,
        bin: &Path,
        fleet: &[Comune],
        selector: &Value,
    ) -> anyhow::Result<Direct> {
        let mut input = vec![];
        for (from, name) in SERVICES {
            input.push(service_manifest(from, name, selector, rollout_settings)?);
        }
        input.extend(fleet.iter().map(Comune::manifest));
        let docs = render(bin, &input)?;

        let mut resources: HashMap<(String, String), (ApiResource, bool)> = HashMap::new();
        let mut objects = vec![];
        // A namespace appears again for each subscription label, which another field manager
        // applies, as the operator does.
        let mut seen = HashMap::<String, usize>::new();
        let mut deployments = HashSet::new();
        let mut namespaces = HashSet::new();
        for doc in docs {
            let api_version = doc["apiVersion"]
                .as_str()
                .context("apiVersion")?
                .to_string();
            let kind = doc["kind"].as_str().context("kind")?.to_string();
            let key = (api_version.clone(), kind.clone());
            if !resources.contains_key(&key) {
                let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
                let (resource, capabilities) =
                    pinned_kind(client, &GroupVersionKind::gvk(group, version, &kind))
                        .await
                        .with_context(|| format!("looking up the API of {kind}"))?;
                resources.insert(
                    key.clone(),
                    (resource, capabilities.scope == Scope::Namespaced),
                );
            }
            let mut object: DynamicObject = serde_json::from_value(doc)?;
            let id = format!(
                "{kind}/{}/{}",
                object.namespace().unwrap_or_default(),
                object.name_any()
            );
            let occurrence = *seen.entry(id).and_modify(|n| *n += 1).or_insert(1);
            if kind == "Deployment" {
                deployments.insert((object.namespace(), object.name_any()));
            }
            let secrets = credentials(&object)
                .into_iter()
                .chain(database_secrets(&object));
            for secret in secrets {
                let id = format!(
                    "Secret/{}/{}",
                    secret.namespace().unwrap_or_default(),
                    secret.name_any()
                );
                if seen.insert(id, 1).is_some() {
                    continue;
                }
                let key = ("v1".to_string(), "Secret".to_string());
                resources
                    .entry(key.clone())
                    .or_insert_with(|| (ApiResource::erase::<Secret>(&()), true));
                objects.push((key, secret, 1));
            }
            if kind == "Namespace" && occurrence == 1 {
                namespaces.insert(object.name_any());
                object
                    .labels_mut()
                    .insert(DIRECT_LABEL.into(), "true".into());
            }
            objects.push((key, object, occurrence));
        }
        let (namespaces_first, rest) = objects
            .into_iter()
            .partition(|(key, _, occurrence)| key.1 == "Namespace" && *occurrence == 1);
        Ok(Direct {
            n: fleet.len(),
            resources,
            namespaces_first,
            rest,
            deployments,
            namespaces,
        })
    }

    /// How many objects a run applies.
    pub fn objects(&self) -> usize {
        self.namespaces_first.len() + self.rest.len()
    }

    /// Applies every object by server-side apply with `concurrency` requests in flight, with the
    /// operator's identity (under the same RBAC and admission policies), and returns the time
    /// until every Deployment is Available. Then deletes the namespaces and waits until they are
    /// gone, so that the next scenario starts without them.
    pub async fn run(
        &self,
        cluster: &Cluster,
        client: &Client,
        concurrency: usize,
    ) -> anyhow::Result<Duration> {
        let writer = cluster.operator_client().await?;
        let n = self.n;
        let start = Instant::now();
        let started = Timestamp::now();
        let cpu = cluster.cpu_seconds()?;
        for batch in [&self.namespaces_first, &self.rest] {
            stream::iter(batch)
                .map(|entry| self.apply(&writer, entry))
                .buffer_unordered(concurrency)
                .try_collect::<Vec<_>>()
                .await?;
        }
        let available = |d: &Deployment| {
            self.deployments.contains(&(d.namespace(), d.name_any()))
                && d.status.as_ref().is_some_and(|s| {
                    s.observed_generation == d.metadata.generation
                        && s.conditions
                            .iter()
                            .flatten()
                            .any(|c| c.type_ == "Available" && c.status == "True")
                })
        };
        let config = watcher::Config::default().labels(consorzio::render::service::SERVICE_LABEL);
        wait_count(
            Api::<Deployment>::all(client.clone()),
            config,
            self.deployments.len(),
            timeout(n),
            available,
            "Deployments Available",
        )
        .await?;
        let elapsed = start.elapsed();
        eprintln!(
            "[{n}] physical limit, {concurrency} in flight, timeline:\n{}\n  control plane CPU: {}",
            timeline::timeline(client, started).await?,
            timeline::cpu_used(cluster, &cpu)?
        );

        let api = Api::<Namespace>::all(client.clone());
        stream::iter(self.namespaces.iter())
            .map(|name| {
                let api = api.clone();
                async move {
                    api.delete(name, &DeleteParams::background())
                        .await
                        .with_context(|| format!("deleting namespace {name}"))
                }
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<_>>()
            .await?;
        wait_namespaces_gone(client, self.namespaces.clone()).await?;
        // What lives outside the comuni's namespaces (their backup Schedules, in Velero's) goes
        // too: the next run, and the operator's cold start, make it again.
        for (key, object, _) in self.rest.iter().filter(|(_, o, _)| {
            o.namespace()
                .is_some_and(|ns| !self.namespaces.contains(&ns))
        }) {
            let (resource, _) = &self.resources[key];
            let ns = object.namespace().unwrap_or_default();
            let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, resource);
            match api
                .delete(&object.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e).context("deleting the fleet's objects outside it"),
            }
        }
        Ok(elapsed)
    }

    async fn apply(
        &self,
        client: &Client,
        (key, object, occurrence): &Entry,
    ) -> anyhow::Result<()> {
        let (resource, namespaced) = &self.resources[key];
        let api: Api<DynamicObject> = match (namespaced, object.namespace()) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), &ns, resource),
            _ => Api::all_with(client.clone(), resource),
        };
        let manager = match occurrence {
            1 => "consorzio-bench-direct".to_string(),
            k => format!("consorzio-bench-direct-{k}"),
        };
        api.patch(
            &object.name_any(),
            &PatchParams::apply(&manager).force(),
            &Patch::Apply(object),
        )
        .await
        .with_context(|| format!("applying {} {}", key.1, object.name_any()))?;
        Ok(())
    }
}

/// The credentials Secret the operator creates for an instance before its Deployment (whose
/// annotation names it). `consorzio render` leaves it out, as its password is random; the direct
/// client creates one like it, so that it writes the same objects as the operator.
fn credentials(deployment: &DynamicObject) -> Option<DynamicObject> {
    use consorzio::render::service::CREDENTIALS_ANNOTATION;
    let name = deployment.annotations().get(CREDENTIALS_ANNOTATION)?;
    let labels = owner_labels(deployment);
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": deployment.namespace(), "labels": labels},
        "data": {"CONSORZIO_PASSWORD": BASE64_32},
    });
    serde_json::from_value(secret).ok()
}

/// The database password Secrets the operator creates before the objects that read them: the
/// one an instance's env reads (`<service>-database`), and the ones a database operator reads (a
/// server's initdb owner, a PostgreSQL role, a MariaDB user), each once.
fn database_secrets(object: &DynamicObject) -> Vec<DynamicObject> {
    let spec = &object.data["spec"];
    let mut names: Vec<&str> = vec![];
    for var in spec["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(name) = var["valueFrom"]["secretKeyRef"]["name"].as_str()
            && name.ends_with("-database")
        {
            names.push(name);
        }
    }
    names.extend(spec["bootstrap"]["initdb"]["secret"]["name"].as_str());
    names.extend(spec["passwordSecret"]["name"].as_str());
    names.extend(spec["passwordSecretKeyRef"]["name"].as_str());
    let labels = owner_labels(object);
    names
        .into_iter()
        .filter_map(|name| {
            serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/basic-auth",
                "metadata": {"name": name, "namespace": object.namespace(), "labels": labels},
                "data": {"username": "YmVuY2g=", "password": BASE64_32},
            }))
            .ok()
        })
        .collect()
}

/// The labels that tie `object` to its owners, for the Secrets made beside it.
fn owner_labels(object: &DynamicObject) -> serde_json::Map<String, Value> {
    use consorzio::render::{MANAGED_BY, MUNICIPALITY_LABEL, service::SERVICE_LABEL};
    object
        .labels()
        .iter()
        .filter(|(k, _)| [MANAGED_BY.0, SERVICE_LABEL, MUNICIPALITY_LABEL].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.as_str().into()))
        .collect()
}

/// 32 alphanumeric characters, base64-encoded: the size of a generated password.
const BASE64_32: &str = "YmVuY2hiZW5jaGJlbmNoYmVuY2hiZW5jaGJlbmNoYmU=";

/// `consorzio render` of the given objects.
fn render(bin: &Path, input: &[Value]) -> anyhow::Result<Vec<Value>> {
    let mut text = String::new();
    for value in input {
        text.push_str("---\n");
        text.push_str(&serde_json::to_string(value)?);
        text.push('\n');
    }
    let file =
        std::env::temp_dir().join(format!("consorzio-bench-fleet-{}.yaml", std::process::id()));
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let output = std::process::Command::new(bin)
        .args(["render", "-f"])
        .arg(&file)
        .args(["--pod-toleration", "kwok.x-k8s.io/node:NoSchedule"])
        .args(["--cluster-issuer", BENCH_ISSUER])
        .output()
        .with_context(|| format!("running {} render", bin.display()));
    let _ = std::fs::remove_file(&file);
    let output = output?;
    if !output.status.success() {
        bail!(
            "consorzio render failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    yaml_documents(&String::from_utf8(output.stdout)?)
}
