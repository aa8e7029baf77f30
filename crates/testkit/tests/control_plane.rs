//! Checks that the local control plane does the API server's jobs the operator relies on.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use consorzio_testkit::{Env, TIMEOUT, kubectl, run, unique_name, wait_for, wait_gone};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{DynamicObject, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use serde_json::json;

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test fixture is valid")
}

fn forbidden_or_invalid(err: &kube::Error) -> Option<(u16, String)> {
    match err {
        kube::Error::Api(status) => Some((status.code, status.message.clone())),
        _ => None,
    }
}

#[tokio::test]
async fn apiserver_is_ready_and_reports_its_version() {
    run(|env: Env| async move {
        let out = kubectl(env.cluster(), &["get", "--raw", "/readyz"]).await?;
        ensure!(
            out.status.success(),
            "kubectl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
        let version = env.client().apiserver_version().await?;
        assert_eq!(
            (version.major.as_str(), version.minor.as_str()),
            ("1", "35")
        );
        assert!(
            version.git_version.starts_with("v1.35."),
            "{}",
            version.git_version
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn namespace_gets_its_default_service_account_and_deletion_finishes() {
    run(|env: Env| async move {
        let ns = env.namespace("sa").await?;
        let sas: Api<ServiceAccount> = env.api(&ns);
        wait_for("the default ServiceAccount", TIMEOUT, || async {
            sas.get_opt("default").await?.context("not created yet")
        })
        .await?;

        let namespaces: Api<Namespace> = Api::all(env.client());
        namespaces.delete(&ns, &Default::default()).await?;
        wait_gone(&namespaces, &ns, TIMEOUT).await
    })
    .await;
}

#[tokio::test]
async fn owned_config_map_is_garbage_collected_with_its_owner() {
    run(|env: Env| async move {
        let ns = env.namespace("gc").await?;
        let cms: Api<ConfigMap> = env.api(&ns);
        let owner = cms
            .create(
                &PostParams::default(),
                &from_json(json!({"metadata": {"name": "owner"}})),
            )
            .await?;
        let uid = owner.metadata.uid.context("owner has a uid")?;
        cms.create(
            &PostParams::default(),
            &from_json(
                json!({"metadata": {"name": "dependent", "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
                ]}}),
            ),
        )
        .await?;
        cms.delete("owner", &Default::default()).await?;
        wait_gone(&cms, "dependent", TIMEOUT).await
    })
    .await;
}

#[tokio::test]
async fn deployment_on_fake_nodes_becomes_available() {
    run(|env: Env| async move {
        let ns = env.namespace("deploy").await?;
        let deployments: Api<Deployment> = env.api(&ns);
        deployments
            .create(
                &PostParams::default(),
                &from_json(json!({
                    "metadata": {"name": "web"},
                    "spec": {
                        "replicas": 2,
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {
                            "metadata": {"labels": {"app": "web"}},
                            "spec": {
                                "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                                "containers": [{"name": "web", "image": "nginx:1.27"}]
                            }
                        }
                    }
                })),
            )
            .await?;
        wait_for("Deployment web to have 2 available replicas", TIMEOUT, || async {
            let d = deployments.get("web").await?;
            let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
            ensure!(available == 2, "{available} of 2 replicas available");
            Ok(())
        })
        .await
    })
    .await;
}

#[tokio::test]
async fn crd_cel_rule_rejects_invalid_object_with_its_message() {
    run(|env: Env| async move {
        let plural = unique_name("widgets").replace('-', "");
        let group = "test.consorzio.io";
        let crds: Api<CustomResourceDefinition> = Api::all(env.client());
        let crd: CustomResourceDefinition = from_json(json!({
            "metadata": {"name": format!("{plural}.{group}")},
            "spec": {
                "group": group,
                "scope": "Cluster",
                "names": {"plural": plural, "singular": plural.trim_end_matches('s'), "kind": "Widget", "listKind": "WidgetList"},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {"spec": {
                            "type": "object",
                            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                            "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min must not exceed max"}]
                        }}
                    }}
                }]
            }
        }));
        let created = crds.create(&PostParams::default(), &crd).await?;
        env.delete_later(&created);

        let gvk = GroupVersionKind::gvk(group, "v1", "Widget");
        let widgets: Api<DynamicObject> =
            Api::all_with(env.client(), &ApiResource::from_gvk_with_plural(&gvk, &plural));
        let widget = |name: &str, min: i64, max: i64| -> DynamicObject {
            from_json(json!({
                "apiVersion": format!("{group}/v1"), "kind": "Widget",
                "metadata": {"name": name}, "spec": {"min": min, "max": max}
            }))
        };
        // The CRD needs a moment to be served.
        let ok = wait_for("the Widget CRD to be served", TIMEOUT, || async {
            Ok(widgets.create(&PostParams::default(), &widget("good", 1, 2)).await?)
        })
        .await?;
        assert_eq!(ok.metadata.name.as_deref(), Some("good"));

        let err = widgets
            .create(&PostParams::default(), &widget("bad", 3, 2))
            .await
            .expect_err("an object breaking the CEL rule is rejected");
        let (code, message) = forbidden_or_invalid(&err).context("an API error")?;
        assert_eq!(code, 422, "{message}");
        assert!(message.contains("min must not exceed max"), "{message}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn user_without_rights_is_denied() {
    run(|env: Env| async move {
        let ns = env.namespace("rbac").await?;
        let nobody = env.client_as("nobody@example.org", &["nobodies"]).await?;
        let err = Api::<Secret>::namespaced(nobody.clone(), &ns)
            .list(&Default::default())
            .await
            .expect_err("a user without rights cannot list secrets");
        let (code, message) = forbidden_or_invalid(&err).context("an API error")?;
        assert_eq!(code, 403, "{message}");
        assert!(message.contains("nobody@example.org"), "{message}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn privileged_pod_is_rejected_by_pod_security_restricted() {
    run(|env: Env| async move {
        let ns = env
            .namespace_with_labels("psa", &[("pod-security.kubernetes.io/enforce", "restricted")])
            .await?;
        let pods: Api<Pod> = env.api(&ns);
        let pod = |name: &str, privileged: bool| -> Pod {
            let security = if privileged {
                json!({"privileged": true})
            } else {
                json!({
                    "runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
                })
            };
            from_json(json!({
                "metadata": {"name": name},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "securityContext": security}]}
            }))
        };
        let err = pods
            .create(&PostParams::default(), &pod("privileged", true))
            .await
            .expect_err("a privileged pod is rejected");
        let (code, message) = forbidden_or_invalid(&err).context("an API error")?;
        assert_eq!(code, 403, "{message}");
        assert!(message.contains("violates PodSecurity \"restricted"), "{message}");

        // The same namespace admits a pod that complies, so the rejection above is Pod Security's.
        pods.create(&PostParams::default(), &pod("compliant", false)).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn wait_for_fails_with_what_it_waited_for_and_what_it_saw() {
    let err = wait_for("the impossible", Duration::from_millis(200), || async {
        bail!("still possible") as anyhow::Result<()>
    })
    .await
    .expect_err("times out");
    let message = format!("{err:#}");
    assert!(message.contains("waiting for the impossible"), "{message}");
    assert!(message.contains("last seen: still possible"), "{message}");
}

#[test]
fn unique_names_are_dns_labels_and_differ() {
    let a = unique_name("comune");
    let b = unique_name("comune");
    assert_ne!(a, b);
    assert!(a.len() <= 63 && a.starts_with("comune-"));
    assert!(
        a.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    );
}

/// The default StorageClass binds a claim once a pod that uses it is scheduled
/// (WaitForFirstConsumer): kwok provisions the volume on the scheduler's pick of node.
#[tokio::test]
async fn volume_claim_of_the_default_storage_class_is_bound_for_its_first_pod() {
    run(|env: Env| async move {
        let ns = env.namespace("pvc").await?;
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = env.api(&ns);
        claims
            .create(
                &PostParams::default(),
                &from_json(json!({
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
                })),
            )
            .await?;
        let phase = || async {
            let claim = claims.get("data").await?;
            anyhow::Ok(claim.status.and_then(|s| s.phase).unwrap_or_default())
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = phase().await?;
        ensure!(before == "Pending", "a claim without a pod is {before:?}, not Pending");
        let pods: Api<Pod> = env.api(&ns);
        pods.create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": "app"},
                "spec": {
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "app", "image": "nginx:1.27"}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
                }
            })),
        )
        .await?;
        wait_for("the claim to be Bound and its pod Running", TIMEOUT, || async {
            let now = phase().await?;
            ensure!(now == "Bound", "claim {now:?}");
            let pod = pods.get("app").await?.status.and_then(|s| s.phase).unwrap_or_default();
            ensure!(pod == "Running", "pod {pod:?}");
            Ok(())
        })
        .await
    })
    .await;
}
