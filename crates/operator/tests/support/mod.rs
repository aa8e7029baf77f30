//! Runs the operator inside a test, against the local control plane.

#![allow(dead_code)] // each test binary uses part of this

pub mod chart;

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, ensure};
use consorzio::{
    controller::{self, Context},
    metrics::Metrics,
    render::Config,
};
use consorzio_api::{DataClassification, Municipality, SharedService, SharedServiceStatus};
use consorzio_testkit::{
    Env, OperatorPlayer, TIMEOUT, example_manifests, install_crds, install_platform, unique_name,
    wait_for, wait_gone,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    core::ApiResource,
};

use tokio::{sync::oneshot, task::JoinHandle};

/// Tests in one binary share the cluster's Municipalities: only one operator may run at a time.
/// The operator's `--cluster-issuer` in tests: every host without a TLS Secret of its own gets a
/// certificate.
pub const TEST_CLUSTER_ISSUER: &str = "consorzio-test-ca";

static ONE_OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An operator running in this test, and the part of the operators it emits resources for
/// (database operators, cert-manager) played.
pub struct Operator {
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Sets the status of the database operators' and cert-manager's objects, as they would.
    pub players: OperatorPlayer,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Operator {
    /// Starts an operator with the default settings (plus a toleration of the fake nodes, and
    /// `TEST_CLUSTER_ISSUER` for certificates), with the identity of the chart's
    /// ServiceAccount: under its RBAC and admission policies.
    pub async fn start(env: &Env) -> anyhow::Result<Operator> {
        Operator::start_with(env, env.cluster().operator_client().await?).await
    }

    /// [`Operator::start`], with the operator's requests made by `client` (e.g. with a
    /// ServiceAccount's token); the CRDs, the operator's RBAC and policies and the tenant roles
    /// are installed as the admin.
    pub async fn start_with(env: &Env, client: kube::Client) -> anyhow::Result<Operator> {
        Operator::start_configured(env, client, |_| {}).await
    }

    /// [`Operator::start_with`], its settings changed by `configure`.
    pub async fn start_configured(
        env: &Env,
        client: kube::Client,
        configure: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Operator> {
        // CONSORZIO_TEST_LOG=debug shows what the operator does (with --nocapture).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env(
                "CONSORZIO_TEST_LOG",
            ))
            .with_test_writer()
            .try_init();
        install_crds(&env.client()).await?;
        install_platform(env.cluster()).await?;
        let metrics = Arc::new(Metrics::default());
        let mut config = Config {
            pod_tolerations: vec![k8s_openapi::api::core::v1::Toleration {
                key: Some("kwok.x-k8s.io/node".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }],
            cluster_issuer: Some(TEST_CLUSTER_ISSUER.into()),
            ..Config::default()
        };
        configure(&mut config);
        let (ctx, streams) = Context::start(client, config, metrics.clone()).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = futures::FutureExt::shared(async {
            let _ = stopped.await;
        });
        let municipalities = controller::run_municipalities(
            ctx.clone(),
            streams.municipalities,
            streams.municipality_triggers,
            stopped.clone(),
        );
        let services = controller::run_services(
            ctx,
            streams.services,
            streams.comuni,
            streams.service_triggers,
            stopped,
        );
        let task = tokio::spawn(async move {
            futures::future::join(municipalities, services).await;
        });
        Ok(Operator {
            metrics,
            players: OperatorPlayer::start(env.client()),
            stop: Some(stop),
            task,
        })
    }

    /// Stops the operator and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
    }

    /// Sum of `consorzio_api_writes_total` over every kind.
    pub fn writes(&self) -> u64 {
        sum_of(&self.metrics.encode(), "consorzio_api_writes_total")
    }
}

/// The sum of every sample of a metric in Prometheus text.
pub fn sum_of(text: &str, metric: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Merges the keys of `extra` into `object` (both JSON objects).
pub fn merge(object: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(object), serde_json::Value::Object(extra)) = (object.as_object_mut(), extra) {
        object.extend(extra);
    }
}

/// Holds the operator lock for the test's duration.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_OPERATOR.lock().await
}

/// A valid Italian Municipality with a fresh name, admins `<name>-admins`, viewers
/// `<name>-viewers`.
pub fn comune() -> Municipality {
    let name = unique_name("t");
    serde_yaml::from_str(&format!(
        r#"
apiVersion: consorzio.io/v1alpha1
kind: Municipality
metadata: {{name: {name}}}
spec:
  displayName: Comune di prova {name}
  country: IT
  istatCode: "060004"
  belfioreCode: A244
  province: FR
  region: Lazio
  union: valle-di-comino
  access:
    admins: [{{kind: Group, name: {name}-admins}}]
    viewers: [{{kind: Group, name: {name}-viewers}}]
"#
    ))
    .expect("fixture parses")
}

/// A [`comune`] whose data is of `class`.
pub fn classified(class: DataClassification) -> Municipality {
    let mut m = comune();
    m.spec.data_classification = class;
    m
}

/// Applies a Municipality (server-side, as a user would) and registers it and its namespace
/// for clean-up.
pub async fn apply(env: &Env, m: &Municipality) -> anyhow::Result<Municipality> {
    let applied = apply_as_user(env, m).await?;
    env.delete_later_dynamic(
        ApiResource::erase::<Namespace>(&()),
        None,
        format!("comune-{}", m.name_any()),
    );
    Ok(applied)
}

/// Waits until the Municipality's Ready condition has `status`, and returns the object.
pub async fn wait_ready(env: &Env, name: &str, status: &str) -> anyhow::Result<Municipality> {
    let api = Api::<Municipality>::all(env.client());
    wait_for(
        &format!("Municipality {name} to be Ready={status}"),
        TIMEOUT,
        || async {
            let m = api.get(name).await?;
            let ready = m
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
            match ready {
                Some(c) if c.status == status => Ok(m),
                Some(c) => anyhow::bail!("Ready={} ({}: {})", c.status, c.reason, c.message),
                None => anyhow::bail!("no Ready condition yet"),
            }
        },
    )
    .await
}

/// Deletes a Municipality and waits until it is gone (its finalizer done).
pub async fn remove(env: &Env, name: &str) -> anyhow::Result<()> {
    let api = Api::<Municipality>::all(env.client());
    api.delete(name, &Default::default()).await?;
    wait_gone(&api, name, TIMEOUT).await
}

/// Applies a Municipality and waits until it is Ready; returns its name and namespace.
pub async fn onboard(env: &Env, m: &Municipality) -> anyhow::Result<(String, String)> {
    apply(env, m).await?;
    let name = m.name_any();
    wait_ready(env, &name, "True").await?;
    Ok((name.clone(), format!("comune-{name}")))
}

/// A service of the deploy/examples catalogue, renamed uniquely and offered to `municipalities`.
pub fn catalogue_service(
    name: &str,
    municipalities: serde_json::Value,
) -> anyhow::Result<SharedService> {
    let mut value = example_manifests()?
        .into_iter()
        .find(|v| v["kind"] == "SharedService" && v["metadata"]["name"] == name)
        .with_context(|| format!("{name} in the catalogue"))?;
    value["metadata"] = serde_json::json!({"name": unique_name(name)});
    value["spec"]["municipalities"] = municipalities;
    Ok(serde_json::from_value(value)?)
}

/// Applies a SharedService (server-side, as a user would) and registers it, and the namespace
/// `shared-<name>` it may make (and keep, with its data), for clean-up.
pub async fn apply_service(env: &Env, s: &SharedService) -> anyhow::Result<()> {
    env.delete_later_dynamic(
        ApiResource::erase::<Namespace>(&()),
        None,
        format!("shared-{}", s.name_any()),
    );
    apply_as_user(env, s).await?;
    Ok(())
}

/// Waits until the SharedService's status passes `check`.
pub async fn wait_status(
    env: &Env,
    name: &str,
    what: &str,
    check: impl Fn(&SharedServiceStatus) -> bool,
) -> anyhow::Result<SharedServiceStatus> {
    let api = Api::<SharedService>::all(env.client());
    wait_for(
        &format!("SharedService {name}: {what}"),
        TIMEOUT,
        || async {
            let status = api.get(name).await?.status.unwrap_or_default();
            ensure!(check(&status), "{}", serde_json::to_string(&status)?);
            Ok(status)
        },
    )
    .await
}

/// Deletes a SharedService and waits until it is gone (its finalizer done).
pub async fn remove_service(env: &Env, name: &str) -> anyhow::Result<()> {
    let api = Api::<SharedService>::all(env.client());
    api.delete(name, &Default::default()).await?;
    wait_gone(&api, name, TIMEOUT).await
}

/// Applies a cluster-scoped object server-side with its name, labels and spec only, as a user
/// would, and registers it for clean-up.
async fn apply_as_user<K>(env: &Env, obj: &K) -> anyhow::Result<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut body = serde_json::to_value(obj)?;
    if let Some(meta) = body.get_mut("metadata").and_then(|v| v.as_object_mut()) {
        meta.retain(|k, _| k == "name" || k == "labels");
    }
    body.as_object_mut().context("object")?.remove("status");
    let applied = Api::<K>::all(env.client())
        .patch(
            &obj.name_any(),
            &PatchParams::apply("consorzio-tests").force(),
            &Patch::Apply(&body),
        )
        .await?;
    env.delete_later(&applied);
    Ok(applied)
}

/// The comune's entry for `service` once its tenant passes `check`.
pub async fn tenant(
    env: &Env,
    comune: &str,
    service: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    entry_part(env, comune, service, "tenant", check).await
}

/// The field `part` of the comune's entry for `service` (`tenant`, `certificate`), once it
/// passes `check`.
pub async fn entry_part(
    env: &Env,
    comune: &str,
    service: &str,
    part: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let api = Api::<Municipality>::all(env.client());
    wait_for(
        &format!("{comune}'s {part} in {service}"),
        TIMEOUT,
        || async {
            let status = serde_json::to_value(api.get(comune).await?.status)?;
            let entry = status["services"]
                .as_array()
                .and_then(|e| e.iter().find(|e| e["name"] == service))
                .cloned()
                .unwrap_or_default();
            ensure!(check(&entry[part]), "{entry}");
            Ok(entry[part].clone())
        },
    )
    .await
}
