//! Suspended means suspended (finding 12): a suspended comune's instances scale to zero and its
//! own workloads stop, its data kept; resuming brings them back.

mod support;

use anyhow::{Context as _, ensure};
use consorzio_api::Municipality;
use consorzio_testkit::{Env, TIMEOUT, run, wait_for};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, PersistentVolumeClaim, Pod, ResourceQuota},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    Operator, apply_service, catalogue_service, comune, exclusive, onboard, remove_service,
    wait_ready, wait_status,
};

/// Running pods in `ns` whose labels match `selector`.
async fn running(env: &Env, ns: &str, selector: &str) -> anyhow::Result<usize> {
    let pods = env
        .api::<Pod>(ns)
        .list(&ListParams::default().labels(selector))
        .await?;
    Ok(pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count())
}

async fn suspend(env: &Env, name: &str, suspended: bool) -> anyhow::Result<()> {
    Api::<Municipality>::all(env.client())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspended": suspended}})),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_suspended_comune_runs_nothing_keeps_its_data_and_resumes() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let (name, ns) = onboard(&env, &comune()).await?;
        let s = catalogue_service("sito-comunale", json!({"names": [name]}))?;
        let service = s.name_any();
        apply_service(&env, &s).await?;
        wait_status(&env, &service, "its instance Available", |st| st.ready_instances == 1).await?;
        // A workload of the comune's own, made by its admin.
        let admin = env
            .client_as(&format!("{name}-admin"), &[&format!("{name}-admins")])
            .await?;
        let own: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "protocollo"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "protocollo"}},
                     "template": {"metadata": {"labels": {"app": "protocollo"}},
                                  "spec": {
                                      "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                                      "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                                      "containers": [{"name": "app", "image": "registry.example/protocollo:1",
                                                      "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}},
        }))?;
        Api::<Deployment>::namespaced(admin, &ns)
            .create(&PostParams::default(), &own)
            .await?;
        let instance = format!("consorzio.io/service={service}");
        wait_for("both running", TIMEOUT, || async {
            ensure!(running(&env, &ns, "app=protocollo").await? == 2, "protocollo");
            ensure!(running(&env, &ns, &instance).await? >= 1, "the instance");
            Ok(())
        })
        .await?;

        suspend(&env, &name, true).await?;
        wait_for("nothing running", TIMEOUT, || async {
            let pods = env.api::<Pod>(&ns).list(&ListParams::default()).await?;
            let left: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
            ensure!(left.is_empty(), "still there: {left:?}");
            Ok(())
        })
        .await?;
        wait_for("the instance scaled to zero", TIMEOUT, || async {
            let instance = env.api::<Deployment>(&ns).get(&service).await?;
            let replicas = instance.spec.and_then(|s| s.replicas);
            ensure!(replicas == Some(0), "the instance runs {replicas:?} replicas");
            Ok(())
        })
        .await?;
        let hard = env.api::<ResourceQuota>(&ns).get("consorzio-quota").await?.spec.and_then(|s| s.hard).context("hard")?;
        ensure!(hard["pods"].0 == "0", "quota pods {:?}", hard["pods"]);
        let ready = wait_ready(&env, &name, "True").await?;
        let reason = ready.status.context("status")?.conditions[0].reason.clone();
        ensure!(reason == "Suspended", "{reason}");
        // Its data stays.
        env.api::<PersistentVolumeClaim>(&ns).get(&format!("{service}-data")).await?;
        let namespace = Api::<Namespace>::all(env.client()).get(&ns).await?;
        ensure!(namespace.labels().get("consorzio.io/suspended").map(String::as_str) == Some("true"));

        suspend(&env, &name, false).await?;
        wait_for("both running again", TIMEOUT, || async {
            ensure!(running(&env, &ns, &instance).await? >= 1, "the instance");
            ensure!(running(&env, &ns, "app=protocollo").await? == 2, "protocollo");
            Ok(())
        })
        .await?;
        let namespace = Api::<Namespace>::all(env.client()).get(&ns).await?;
        ensure!(!namespace.labels().contains_key("consorzio.io/suspended"));
        remove_service(&env, &service).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}
