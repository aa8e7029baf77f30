//! Dedicated SharedServices: one instance per selected comune, run by the operator against the
//! local control plane (pods on kwok's fake nodes, Pod Security `restricted`, the comune's quota).

mod support;

use std::time::Duration;

use anyhow::{Context as _, ensure};
use consorzio_api::SharedService;
use consorzio_testkit::{Env, TIMEOUT, run, unique_name, wait_for, wait_gone};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, PersistentVolumeClaim, ResourceQuota, Secret},
    networking::v1::Ingress,
    policy::v1::PodDisruptionBudget,
};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::{
    Operator, apply_service, catalogue_service, comune, exclusive, onboard, remove, remove_service,
    wait_status,
};

/// Waits until the comune's status reports its namespace's quota usage as the quota has it.
async fn usage_reported(env: &Env, comune: &str, ns: &str) -> anyhow::Result<()> {
    let municipalities = Api::<consorzio_api::Municipality>::all(env.client());
    let quotas = env.api::<ResourceQuota>(ns);
    wait_for(
        &format!("{comune}'s status to report its quota usage"),
        Duration::from_secs(60),
        || async {
            let used = quotas
                .get("consorzio-quota")
                .await?
                .status
                .and_then(|s| s.used)
                .unwrap_or_default();
            let reported = municipalities
                .get(comune)
                .await?
                .status
                .map(|s| s.quota)
                .unwrap_or_default();
            for (resource, quantity) in &used {
                let seen = reported.get(resource).map(|q| &q.used);
                ensure!(
                    seen == Some(quantity),
                    "{resource}: {seen:?}, quota says {quantity:?}"
                );
            }
            Ok(())
        },
    )
    .await
}

/// The catalogue's website, renamed and offered to the comuni of `union`.
fn website(union: &str) -> anyhow::Result<SharedService> {
    catalogue_service(
        "sito-comunale",
        json!({"selector": {"matchLabels": {"consorzio.io/union": union}}}),
    )
}

#[tokio::test]
async fn dedicated_service_runs_in_every_selected_comune_and_leaving_keeps_the_volume() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let union = unique_name("u");
        let (mut a, mut b) = (comune(), comune());
        a.spec.union = Some(union.clone());
        b.spec.union = Some(union.clone());
        let (a_name, a_ns) = onboard(&env, &a).await?;
        let (b_name, b_ns) = onboard(&env, &b).await?;
        let s = website(&union)?;
        let name = s.name_any();
        apply_service(&env, &s).await?;

        wait_status(&env, &name, "2 of 2 instances Ready", |st| {
            st.desired_instances == 2
                && st.ready_instances == 2
                && st
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .await?;
        for ns in [&a_ns, &b_ns] {
            let d = env.api::<Deployment>(ns).get(&name).await?;
            assert_eq!(d.status.and_then(|s| s.available_replicas), Some(1), "{ns}");
        }
        let secret = env
            .api::<Secret>(&a_ns)
            .get(&format!("{name}-credentials"))
            .await?;

        // Each comune's status lists the service.
        let municipalities = Api::<consorzio_api::Municipality>::all(env.client());
        wait_for(
            "the comune's status to list the service",
            TIMEOUT,
            || async {
                let services = municipalities
                    .get(&a_name)
                    .await?
                    .status
                    .map(|s| s.services)
                    .unwrap_or_default();
                let entry = services
                    .iter()
                    .find(|e| e.name == name)
                    .context("no entry yet")?;
                ensure!(entry.phase == "Ready", "phase {}", entry.phase);
                ensure!(
                    entry.url.as_deref()
                        == Some(&format!("https://{a_name}.comuni.example.it")[..]),
                    "url {:?}",
                    entry.url
                );
                Ok(())
            },
        )
        .await?;

        // Converged: the operator writes a comune's quota usage up to 30 s after it changes.
        for (comune, ns) in [(&a_name, &a_ns), (&b_name, &b_ns)] {
            usage_reported(&env, comune, ns).await?;
        }
        // The generated Secret survives an operator restart unchanged.
        op.stop().await;
        let op = Operator::start(&env).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The restarted operator reconciled everything once and found nothing to change.
        assert_eq!(
            op.writes(),
            0,
            "a no-op resync wrote:\n{}",
            op.metrics.encode()
        );
        let again = env
            .api::<Secret>(&a_ns)
            .get(&format!("{name}-credentials"))
            .await?;
        assert_eq!(again.data, secret.data);
        assert_eq!(again.metadata.uid, secret.metadata.uid);

        // Comune b leaves the union: its instance goes, its volume stays, labelled orphaned.
        b.spec.union = Some(unique_name("other"));
        support::apply(&env, &b).await?;
        wait_status(&env, &name, "1 instance", |st| {
            st.desired_instances == 1 && st.ready_instances == 1
        })
        .await?;
        wait_gone(&env.api::<Deployment>(&b_ns), &name, TIMEOUT).await?;
        let claim = env
            .api::<PersistentVolumeClaim>(&b_ns)
            .get(&format!("{name}-data"))
            .await?;
        assert_eq!(
            claim
                .labels()
                .get("consorzio.io/orphaned")
                .map(String::as_str),
            Some("true")
        );

        remove_service(&env, &name).await?;
        wait_gone(&env.api::<Deployment>(&a_ns), &name, TIMEOUT).await?;
        env.api::<PersistentVolumeClaim>(&a_ns)
            .get(&format!("{name}-data"))
            .await?;
        remove(&env, &a_name).await?;
        remove(&env, &b_name).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn invalid_template_changes_nothing_and_a_stalled_rollout_halts() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let union = unique_name("u");
        let mut comuni = vec![];
        for _ in 0..3 {
            let mut m = comune();
            m.spec.union = Some(union.clone());
            comuni.push(onboard(&env, &m).await?);
        }
        let mut s = website(&union)?;
        s.spec.rollout.max_unavailable =
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1);
        s.spec.rollout.progress_deadline_seconds = 10;
        let name = s.name_any();
        apply_service(&env, &s).await?;
        wait_status(&env, &name, "3 Ready", |st| st.ready_instances == 3).await?;
        let versions = || async {
            let mut all = vec![];
            for (_, ns) in &comuni {
                all.push(
                    env.api::<Deployment>(ns)
                        .get(&name)
                        .await?
                        .resource_version(),
                );
            }
            anyhow::Ok(all)
        };
        let before = versions().await?;

        // A placeholder these Italian comuni cannot fill: InvalidTemplate, nothing touched.
        s.spec.template.env.push(consorzio_api::EnvVar::literal(
            "CANTON",
            "{{ municipality.canton }}",
        ));
        apply_service(&env, &s).await?;
        let status = wait_status(&env, &name, "InvalidTemplate", |st| {
            st.conditions.iter().any(|c| c.reason == "InvalidTemplate")
        })
        .await?;
        let message = &status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .context("Ready")?
            .message;
        assert!(
            message.contains("{{ municipality.canton }} has no value"),
            "{message}"
        );
        // Finding 13: GitOps tools see a failure, not progress.
        let stalled = |st: &consorzio_api::SharedServiceStatus, reason: &str| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True" && c.reason == reason)
        };
        assert!(
            stalled(&status, "InvalidTemplate"),
            "{:?}",
            status.conditions
        );
        assert_eq!(
            versions().await?,
            before,
            "an invalid template changed instances"
        );

        // An image that never becomes ready: the first wave (1 comune) stalls, the rollout halts
        // and the other comuni keep the old version.
        s.spec.template.env.pop();
        s.spec.template.image = "docker.io/library/wordpress:never-ready".into();
        apply_service(&env, &s).await?;
        let status = wait_status(&env, &name, "RolloutHalted", |st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "RolloutHalted" && c.status == "True")
        })
        .await?;
        assert_eq!(
            status.rollout.as_ref().map(|r| r.updated),
            Some(1),
            "only one wave started"
        );
        assert!(stalled(&status, "RolloutHalted"), "{:?}", status.conditions);
        let mut old = 0;
        for (_, ns) in &comuni {
            let d = env.api::<Deployment>(ns).get(&name).await?;
            let image = d
                .spec
                .and_then(|s| s.template.spec)
                .map(|p| p.containers[0].image.clone().unwrap_or_default())
                .unwrap_or_default();
            if image.ends_with("6.6.2-apache") {
                old += 1;
            }
        }
        assert_eq!(old, 2, "the halted rollout went on");

        // Fixing the template resumes it.
        s.spec.template.image = "docker.io/library/wordpress:6.7.1-apache".into();
        apply_service(&env, &s).await?;
        wait_status(&env, &name, "all on the fixed version", |st| {
            st.ready_instances == 3 && st.rollout.as_ref().is_some_and(|r| r.updated == 3)
        })
        .await?;

        remove_service(&env, &name).await?;
        for (m, _) in &comuni {
            remove(&env, m).await?;
        }
        op.stop().await;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn an_instance_that_does_not_fit_the_quota_is_reported() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let union = unique_name("u");
        let mut m = comune();
        m.spec.union = Some(union.clone());
        // The website asks 100m CPU and 256Mi: this comune has room for no such pod.
        m.spec.quota.cpu = k8s_openapi::apimachinery::pkg::api::resource::Quantity("50m".into());
        let (m_name, _) = onboard(&env, &m).await?;
        let s = website(&union)?;
        let name = s.name_any();
        apply_service(&env, &s).await?;
        let status = wait_status(&env, &name, "QuotaExceeded", |st| {
            st.not_ready
                .iter()
                .any(|n| n.municipality == m_name && n.reason == "QuotaExceeded")
        })
        .await?;
        assert_eq!((status.desired_instances, status.ready_instances), (1, 0));

        remove_service(&env, &name).await?;
        remove(&env, &m_name).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

/// Strings that read as the same quantity are different values outside quantity fields (a
/// comune's union label from "1000" to "1k" is applied), and what an instance no longer renders
/// goes (its Ingress, once the service has none; its PodDisruptionBudget, once it runs one
/// replica again).
#[tokio::test]
async fn a_changed_value_is_applied_even_as_the_same_quantity_and_unrendered_objects_go() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let mut a = comune();
        a.spec.union = Some("1000".into());
        let (a_name, a_ns) = onboard(&env, &a).await?;
        let mut s = catalogue_service("sito-comunale", json!({"names": [a_name]}))?;
        // Volumes several replicas can share (below, two replicas for a comune).
        for v in &mut s.spec.template.volumes {
            v.access_mode = consorzio_api::AccessMode::ReadWriteMany;
        }
        let name = s.name_any();
        apply_service(&env, &s).await?;
        wait_status(&env, &name, "1 instance Ready", |st| {
            st.ready_instances == 1
        })
        .await?;
        env.api::<Ingress>(&a_ns).get(&name).await?;

        // Outside the template (whose changes are new versions, applied anyway): the namespace's
        // label, and the service's ingress.
        a.spec.union = Some("1k".into());
        support::apply(&env, &a).await?;
        let namespaces = Api::<Namespace>::all(env.client());
        wait_for("the new union on the namespace", TIMEOUT, || async {
            let ns = namespaces.get(&a_ns).await?;
            let union = ns.labels().get("consorzio.io/union").cloned();
            ensure!(union.as_deref() == Some("1k"), "union {union:?}");
            Ok(())
        })
        .await?;
        s.spec.ingress = None;
        apply_service(&env, &s).await?;
        wait_gone(&env.api::<Ingress>(&a_ns), &name, TIMEOUT).await?;

        let budgets = env.api::<PodDisruptionBudget>(&a_ns);
        s.spec.overrides.insert(
            a_name.clone(),
            serde_json::from_value(json!({"replicas": 2}))?,
        );
        apply_service(&env, &s).await?;
        wait_for("a disruption budget for 2 replicas", TIMEOUT, || async {
            Ok(budgets.get(&name).await?)
        })
        .await?;
        s.spec.overrides.clear();
        apply_service(&env, &s).await?;
        wait_gone(&budgets, &name, TIMEOUT).await?;

        remove_service(&env, &name).await?;
        remove(&env, &a_name).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}
