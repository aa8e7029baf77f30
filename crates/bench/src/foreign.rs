//! The operator's memory against what others create (issue 21, finding 2): ConfigMaps of about
//! 1 MB labelled as consorzio's, in a namespace the operator does not manage. The chart's label
//! guard refuses them to anyone but the operator; the benchmark checks that first, then lifts the
//! guard (deletes its binding, and puts it back after) to measure what the operator itself does
//! with them: it drops what is outside its namespaces as it arrives, so they must move its
//! resident memory by less than 5 MB.

use std::time::Duration;

use anyhow::{Context, bail};
use consorzio_testkit::{OperatorProcess, unique_name};
use k8s_openapi::api::{
    admissionregistration::v1::ValidatingAdmissionPolicyBinding,
    core::v1::{ConfigMap, Namespace},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

/// The label guard's binding, as the chart names it.
const LABEL_GUARD: &str = "consorzio-label-guard";

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Creates `count` ConfigMaps of `kib` KiB labelled as consorzio's in a fresh namespace, and
/// prints the operator's resident memory before and after.
pub(crate) async fn run(
    client: Client,
    operator: &OperatorProcess,
    count: usize,
    kib: usize,
) -> anyhow::Result<()> {
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns = unique_name("bench-foreign");
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let result = measure(&client, operator, &ns, count, kib).await;
    namespaces.delete(&ns, &DeleteParams::background()).await?;
    result
}

fn config_map(i: usize, kib: usize) -> anyhow::Result<ConfigMap> {
    let value: String = std::iter::repeat_n('x', kib * 1024).collect();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("foreign-{i}"),
                     "labels": {"app.kubernetes.io/managed-by": "consorzio",
                                "consorzio.io/service": "foreign"}},
        "data": {"blob": value},
    }))?)
}

async fn measure(
    client: &Client,
    operator: &OperatorProcess,
    ns: &str,
    count: usize,
    kib: usize,
) -> anyhow::Result<()> {
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    // As shipped, the label guard refuses them.
    match configmaps
        .create(&PostParams::default(), &config_map(0, kib)?)
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {
            println!("with the label guard: refused ({})", status.message);
        }
        other => bail!("the label guard did not refuse a labelled ConfigMap: {other:?}"),
    }
    let bindings = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone());
    let mut guard = bindings
        .get(LABEL_GUARD)
        .await
        .context("the label guard's binding")?;
    bindings
        .delete(LABEL_GUARD, &DeleteParams::default())
        .await?;
    let result = async {
        tokio::time::sleep(Duration::from_secs(3)).await; // the policy's removal takes a moment
        let (before, _) = operator.memory_kib()?;
        for i in 0..count {
            configmaps.create(&PostParams::default(), &config_map(i, kib)?).await?;
        }
        // jemalloc gives freed pages back after about 10 s (its dirty-page decay): RSS is read
        // at 10 s and at 30 s, the later one is the figure.
        let mut seen = vec![];
        for wait in [10, 20] {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            seen.push(operator.memory_kib()?);
        }
        let (after, peak) = seen[seen.len() - 1];
        println!(
            "{count} ConfigMaps of {kib} KiB labelled as consorzio's in namespace {ns}, without the \
             label guard: operator RSS {:.1} MiB before, {:.1} MiB 10 s after, {:.1} MiB 30 s \
             after ({:+.1} MiB; target < 5 MB = 4.77 MiB), peak {:.1} MiB",
            mib(before),
            mib(seen[0].0),
            mib(after),
            mib(after) - mib(before),
            mib(peak)
        );
        anyhow::Ok(())
    }
    .await;
    guard.metadata.resource_version = None;
    guard.metadata.uid = None;
    guard.metadata.creation_timestamp = None;
    guard.metadata.managed_fields = None;
    bindings
        .create(&PostParams::default(), &guard)
        .await
        .with_context(|| format!("putting the label guard back (kubectl apply -f deploy/rbac/operator.yaml does): {}", guard.name_any()))?;
    result
}
