//! Installing the consorzio CRDs into the cluster.

use std::time::Duration;

use anyhow::ensure;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use crate::wait_for;

/// Applies both CRDs from the Rust types (server-side apply) and waits until they are served.
/// Safe to call from many tests at once.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("consorzio-tests").force();
    for crd in consorzio_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&crd)).await?;
        wait_for(
            &format!("CRD {name} to be established"),
            Duration::from_secs(30),
            || async {
                let crd = api.get(&name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                ensure!(established, "not established yet");
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

/// Applies what the chart installs besides the operator's Deployment, as `tests/cluster/up` does:
/// the namespace `consorzio`, the operator's ServiceAccount, RBAC and admission policies
/// (deploy/rbac/operator.yaml) and the tenant roles, so that tests run under the current ones.
/// Once per process.
pub async fn install_platform(cluster: &crate::Cluster) -> anyhow::Result<()> {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_try_init(|| async {
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
        let files = [
            "../tests/cluster/platform.yaml",
            "namespace.yaml",
            "rbac/operator.yaml",
            "rbac/tenant-roles.yaml",
        ]
        .map(|f| format!("{deploy}/{f}"));
        let mut args = vec!["apply", "--server-side", "--force-conflicts"];
        for f in &files {
            args.extend(["-f", f]);
        }
        let out = crate::kubectl(cluster, &args).await?;
        ensure!(
            out.status.success(),
            "applying the operator's RBAC and policies: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .await
    .map(|_| ())
}
