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
