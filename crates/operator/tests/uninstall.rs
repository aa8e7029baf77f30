//! Data is never lost by accident: deleting the CRDs with the operator running (an uninstall)
//! deletes every Municipality and SharedService, and keeps every comune's namespace, volumes and
//! credentials, whatever their deletion policies say; reinstalling and applying them again adopts
//! them, credentials not regenerated.

mod support;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, ensure};
use consorzio_api::{DeletionPolicy, ReclaimPolicy};
use consorzio_testkit::{Env, install_crds, run, wait_gone};
use k8s_openapi::{
    api::core::v1::{Namespace, PersistentVolumeClaim, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::{
    Operator, apply, apply_service, catalogue_service, comune, exclusive, onboard, remove,
    remove_service, wait_ready, wait_status,
};

/// Each namespace's uid, and its credentials' and volume's uid and data, by namespace.
async fn data(
    env: &Env,
    namespaces: &[String],
    service: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    for ns in namespaces {
        let namespace = Api::<Namespace>::all(env.client()).get(ns).await?;
        ensure!(
            namespace.metadata.deletion_timestamp.is_none(),
            "{ns} is being deleted"
        );
        let secret = env
            .api::<Secret>(ns)
            .get(&format!("{service}-credentials"))
            .await?;
        let claim = env
            .api::<PersistentVolumeClaim>(ns)
            .get(&format!("{service}-data"))
            .await?;
        ensure!(
            claim.metadata.deletion_timestamp.is_none(),
            "{ns}'s volume is being deleted"
        );
        let fingerprint = format!(
            "namespace {:?}, credentials {:?} {}, volume {:?}",
            namespace.uid(),
            secret.uid(),
            serde_json::to_string(&secret.data)?,
            claim.uid()
        );
        all.insert(ns.clone(), fingerprint);
    }
    Ok(all)
}

#[tokio::test]
async fn deleting_the_crds_loses_nothing_and_reinstalling_adopts_everything() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let mut keep_nothing = comune();
        keep_nothing.spec.deletion_policy = DeletionPolicy::Delete;
        let comuni = [keep_nothing, comune()];
        let mut namespaces = vec![];
        for m in &comuni {
            namespaces.push(onboard(&env, m).await?.1);
        }
        let names: Vec<String> = comuni.iter().map(|m| m.name_any()).collect();
        let mut s = catalogue_service("sito-comunale", json!({"names": names}))?;
        s.spec.reclaim_policy = ReclaimPolicy::Delete;
        let service = s.name_any();
        apply_service(&env, &s).await?;
        wait_status(&env, &service, "both instances Available", |st| {
            st.ready_instances == 2
        })
        .await?;
        let before = data(&env, &namespaces, &service).await?;

        // The uninstall: both CRDs deleted, the operator running.
        let crds = Api::<CustomResourceDefinition>::all(env.client());
        for crd in ["municipalities.consorzio.io", "sharedservices.consorzio.io"] {
            crds.delete(crd, &Default::default()).await?;
        }
        for crd in ["municipalities.consorzio.io", "sharedservices.consorzio.io"] {
            wait_gone(&crds, crd, Duration::from_secs(120))
                .await
                .context("the CRDs to go")?;
        }
        op.stop().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = data(&env, &namespaces, &service).await?;
        ensure!(after == before, "lost or changed: {before:?} -> {after:?}");

        // Reinstalled, and everything applied again: adopted, not made anew.
        install_crds(&env.client()).await?;
        let op = Operator::start(&env).await?;
        for m in &comuni {
            apply(&env, m).await?;
            wait_ready(&env, &m.name_any(), "True").await?;
        }
        apply_service(&env, &s).await?;
        wait_status(&env, &service, "both instances Available", |st| {
            st.ready_instances == 2
        })
        .await?;
        let again = data(&env, &namespaces, &service).await?;
        ensure!(again == before, "made anew: {before:?} -> {again:?}");

        remove_service(&env, &service).await?;
        for name in &names {
            remove(&env, name).await?;
        }
        op.stop().await;
        Ok(())
    })
    .await;
}
