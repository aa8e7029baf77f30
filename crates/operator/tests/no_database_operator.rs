//! A cluster without a database operator: a service that asks for its database says what to
//! install (Ready=False, DatabaseOperatorMissing) and changes nothing, the other services go on;
//! once the operator's CRDs are installed, the operator picks them up by itself.

mod support;

use anyhow::ensure;
use std::time::Duration;

use consorzio_testkit::{Env, TIMEOUT, run, wait_for, wait_gone};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, ResourceExt};
use serde_json::json;
use support::{
    Operator, apply_service, catalogue_service, comune, exclusive, onboard, wait_status,
};

const MARIADB_CRDS: &[&str] = &[
    "mariadbs.k8s.mariadb.com",
    "databases.k8s.mariadb.com",
    "users.k8s.mariadb.com",
    "grants.k8s.mariadb.com",
    "backups.k8s.mariadb.com",
    "restores.k8s.mariadb.com",
];

#[tokio::test]
async fn a_service_says_which_database_operator_to_install_and_picks_it_up_once_installed() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let crds = Api::<CustomResourceDefinition>::all(env.client());
        for name in MARIADB_CRDS {
            let _ = crds.delete(name, &Default::default()).await;
        }
        for name in MARIADB_CRDS {
            wait_gone(&crds, name, TIMEOUT).await?;
        }
        let outcome = async {
            let op = Operator::start(&env).await?;
            let (a, a_ns) = onboard(&env, &comune()).await?;
            let names = json!({"names": [a]});
            let analytics = catalogue_service("analytics", names.clone())?;
            let identity = catalogue_service("identity", names)?;
            apply_service(&env, &analytics).await?;
            apply_service(&env, &identity).await?;
            let status = wait_status(
                &env,
                &analytics.name_any(),
                "DatabaseOperatorMissing",
                |st| {
                    st.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.reason == "DatabaseOperatorMissing")
                },
            )
            .await?;
            let ready = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .unwrap();
            ensure!(
                ready.message.contains("Install mariadb-operator")
                    && ready.message.contains("k8s.mariadb.com/v1alpha1 MariaDB"),
                "{}",
                ready.message
            );
            // Nothing of it is made; the other service goes on.
            let shared = format!("shared-{}", analytics.name_any());
            ensure!(
                env.api::<Deployment>(&shared)
                    .list(&Default::default())
                    .await?
                    .items
                    .is_empty()
            );
            wait_status(&env, &identity.name_any(), "Ready", |st| {
                st.ready_instances == 1
            })
            .await?;
            ensure!(
                env.api::<k8s_openapi::api::core::v1::Service>(&a_ns)
                    .get_opt(&identity.name_any())
                    .await?
                    .is_some()
            );

            // Installed: the operator notices by itself.
            // (Within a watch's longest backoff, 30 s, and the service's next look, 10 s.)
            env.cluster().reinstall()?;
            let services = Api::<consorzio_api::SharedService>::all(env.client());
            wait_for(
                "analytics Ready once mariadb-operator is there",
                Duration::from_secs(120),
                || async {
                    let st = services
                        .get(&analytics.name_any())
                        .await?
                        .status
                        .unwrap_or_default();
                    ensure!(st.ready_instances == 1, "{:?}", st.conditions);
                    Ok(())
                },
            )
            .await?;
            op.stop().await;
            anyhow::Ok(())
        }
        .await;
        // Whatever happened, the CRDs are back for the other tests.
        env.cluster().reinstall()?;
        outcome
    })
    .await;
}
