//! A Dedicated service's rendered instance is admitted in a comune's namespace (Pod Security
//! `restricted`, the comune's quota and limits) and becomes Available on the fake nodes.

mod support;

use anyhow::ensure;
use consorzio::render::{Config, service::render_dedicated};
use consorzio_api::SharedService;
use consorzio_testkit::{Env, TIMEOUT, example_manifests, run, wait_for};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Toleration};
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
};
use support::{Operator, comune, exclusive, onboard, remove};

#[tokio::test]
async fn every_dedicated_example_service_runs_in_a_restricted_comune() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let mut m = comune();
        // Nextcloud asks 100Gi and the website 5Gi: more than the default quota of 100Gi (the
        // quota's refusal of the opposite is what the SharedService status must report).
        m.spec.quota.storage =
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("200Gi".into());
        let (name, ns) = onboard(&env, &m).await?;
        let config = Config {
            pod_tolerations: vec![Toleration {
                key: Some("kwok.x-k8s.io/node".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }],
            ..Config::default()
        };
        let dedicated: Vec<SharedService> = example_manifests()?
            .into_iter()
            .filter(|v| v["kind"] == "SharedService" && v["spec"]["tenancy"] == "Dedicated")
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()?;
        ensure!(dedicated.len() >= 2, "the catalogue has Dedicated services");
        for service in &dedicated {
            // The test comune is Italian with a union: every example placeholder has a value.
            for obj in render_dedicated(service, &m, &config)? {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(env.client(), &ns, &obj.resource);
                api.patch(
                    &obj.object.name_any(),
                    &PatchParams::apply("consorzio-tests").force(),
                    &Patch::Apply(&obj.object),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{} refused: {e}", obj.describe()))?;
            }
        }
        let deployments = env.api::<Deployment>(&ns);
        for service in &dedicated {
            let what = format!("{} to be Available in {ns}", service.name_any());
            wait_for(&what, TIMEOUT, || async {
                let d = deployments.get(&service.name_any()).await?;
                let status = d.status.unwrap_or_default();
                let wanted = d.spec.and_then(|s| s.replicas).unwrap_or(1);
                ensure!(
                    status.available_replicas.unwrap_or(0) == wanted,
                    "{:?}",
                    status.conditions
                );
                Ok(())
            })
            .await?;
        }
        remove(&env, &name).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}
