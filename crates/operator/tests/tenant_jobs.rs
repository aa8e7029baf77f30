//! Each comune's tenant inside a Shared application: its onboarding Job once (not again after a
//! restart; again for new inputs), its offboarding Job before its access point goes, a failed
//! Job reported on its comune alone. Kwok plays the Jobs' pods (tests/cluster/kwok.yaml: they
//! succeed, or fail where a variable is "kwok:fail"); the Job controller and Pod Security
//! `restricted` are the cluster's own.

mod support;

use anyhow::{Context as _, ensure};
use consorzio_api::SharedService;
use consorzio_testkit::{Env, TIMEOUT, run, unique_name, wait_for};
use k8s_openapi::api::{batch::v1::Job, core::v1::Service};
use kube::{Api, ResourceExt, api::ListParams};
use serde_json::json;
use support::{
    Operator, apply_service, comune, exclusive, onboard, remove, remove_service, tenant, wait_ready,
};

/// A Shared service with tenant Jobs, offered to `names`.
fn service(name: &str, names: &[&str], marker: &str) -> anyhow::Result<SharedService> {
    let job = |what: &str| {
        json!({
            "image": "docker.io/library/busybox:1.37.0",
            "command": ["sh", "-c", format!("echo {what} $(TENANT)")],
            "env": [
                {"name": "TENANT", "value": "{{ municipality.name }}"},
                {"name": "OUTCOME", "value": "{{ municipality.displayName }}"},
                {"name": "MARKER", "value": marker},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "credentials", "key": "CONSORZIO_PASSWORD"}}},
            ],
        })
    };
    Ok(serde_json::from_value(json!({
        "apiVersion": "consorzio.io/v1alpha1", "kind": "SharedService",
        "metadata": {"name": name},
        "spec": {
            "displayName": "Tenants", "tenancy": "Shared",
            "municipalities": {"names": names},
            "template": {"image": "docker.io/library/nginx:1.27", "port": 8080},
            "tenantJobs": {"onboarding": job("made"), "offboarding": job("removed"), "retries": 0},
        },
    }))?)
}

/// The comune's tenant Jobs of `stage` in the service's namespace.
async fn jobs(env: &Env, service: &str, comune: &str, stage: &str) -> anyhow::Result<Vec<Job>> {
    let params = ListParams::default().labels(&format!(
        "consorzio.io/municipality={comune},consorzio.io/tenant-job={stage}"
    ));
    let listed = Api::<Job>::namespaced(env.client(), &format!("shared-{service}"))
        .list(&params)
        .await?;
    Ok(listed
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect())
}

fn complete(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

#[tokio::test]
async fn each_comune_gets_its_tenant_once_a_failure_is_its_own_and_leaving_offboards_first() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let (a, a_ns) = onboard(&env, &comune()).await?;
        let mut failing = comune();
        failing.spec.display_name = "kwok:fail".into();
        let (b, _) = onboard(&env, &failing).await?;
        let name = unique_name("tenants");
        apply_service(&env, &service(&name, &[&a, &b], "1")?).await?;

        // a's tenant is made, by one Job, under Pod Security restricted (the namespace enforces
        // it: a pod it refuses never runs); b's Job fails, and says so on b alone.
        let made = tenant(&env, &a, &name, |t| t["phase"] == "Provisioned").await?;
        let failed = tenant(&env, &b, &name, |t| t["phase"] == "Failed").await?;
        ensure!(failed["message"].as_str().is_some_and(|m| m.contains("BackoffLimitExceeded") && m.contains("delete the Job")), "{failed}");
        let first = jobs(&env, &name, &a, "onboarding").await?;
        ensure!(first.len() == 1 && first[0].name_any() == made["job"], "{first:?}");
        ensure!(complete(&first[0]));

        // An operator restart runs nothing again.
        op.stop().await;
        let op = Operator::start(&env).await?;
        wait_ready(&env, &a, "True").await?;
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        tenant(&env, &a, &name, |t| t["phase"] == "Provisioned").await?;
        let after = jobs(&env, &name, &a, "onboarding").await?;
        ensure!(after.len() == 1 && after[0].uid() == first[0].uid(), "ran again: {after:?}");

        // New inputs: a new Job, the old one gone.
        apply_service(&env, &service(&name, &[&a, &b], "2")?).await?;
        let again = tenant(&env, &a, &name, |t| t["phase"] == "Provisioned" && t["job"] != made["job"]).await?;
        wait_for("a's older onboarding Job gone", TIMEOUT, || async {
            let now = jobs(&env, &name, &a, "onboarding").await?;
            ensure!(now.len() == 1 && now[0].name_any() == again["job"], "{now:?}");
            Ok(())
        })
        .await?;

        // a leaves: its offboarding Job runs while its access point is still there; the access
        // point goes once the Job has completed.
        apply_service(&env, &service(&name, &[&b], "2")?).await?;
        let access = Api::<Service>::namespaced(env.client(), &a_ns);
        let offboarding = wait_for("a's offboarding Job", TIMEOUT, || async {
            jobs(&env, &name, &a, "offboarding").await?.into_iter().next().context("none yet")
        })
        .await?;
        if !complete(&offboarding) {
            ensure!(access.get_opt(&name).await?.is_some(), "the access point went before the offboarding Job ended");
        }
        wait_for("a's access point gone", TIMEOUT, || async {
            ensure!(access.get_opt(&name).await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        let ended = jobs(&env, &name, &a, "offboarding").await?;
        ensure!(ended.len() == 1 && complete(&ended[0]), "{ended:?}");
        wait_for("a's onboarding Jobs gone", TIMEOUT, || async {
            ensure!(jobs(&env, &name, &a, "onboarding").await?.is_empty(), "still there");
            Ok(())
        })
        .await?;
        // b is as it was.
        tenant(&env, &b, &name, |t| t["phase"] == "Failed").await?;

        remove_service(&env, &name).await?;
        for c in [&a, &b] {
            remove(&env, c).await?;
        }
        op.stop().await;
        Ok(())
    })
    .await;
}
