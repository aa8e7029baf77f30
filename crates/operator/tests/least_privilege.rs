//! Least privilege, tried as an attacker would: the operator under the chart's RBAC and
//! admission policies (deploy/rbac/operator.yaml, installed by the local control plane) can do its
//! work and nothing more; a comune's admin and the owner of an unrelated namespace cannot forge
//! what the operator trusts.

mod support;

use anyhow::{Context as _, bail, ensure};
use consorzio_testkit::{Env, install_platform, run, unique_name};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, Secret, ServiceAccount},
    rbac::v1::ClusterRoleBinding,
};
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
    core::ApiResource,
};
use serde_json::json;
use support::{
    Operator, apply_service, catalogue_service, comune, merge, onboard, remove, remove_service,
    wait_status,
};

#[tokio::test]
async fn the_operator_runs_on_the_charts_rbac_and_can_do_nothing_more() {
    let _one = support::exclusive().await;
    run(|env: Env| async move {
        // The chart's RBAC and policies, as deploy/rbac/operator.yaml has them (rendered from
        // the chart with its defaults; a test keeps them in sync), are installed by the cluster.
        install_platform(env.cluster()).await?;
        let (ns, release) = ("consorzio", "consorzio");

        // The operator, with a token of the chart's ServiceAccount.
        let token = Api::<ServiceAccount>::namespaced(env.client(), ns)
            .create_token_request(
                release,
                &PostParams::default(),
                &TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![],
                        expiration_seconds: Some(3600),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await?
            .status
            .context("token")?
            .token;
        let client = env.cluster().client_with_token(&token).await?;
        let op = Operator::start_with(&env, client.clone()).await?;

        // Onboarding, a Dedicated and a Shared service, to Ready; then a comune deleted with its
        // namespace and a shared service deleted with its data.
        let mut m = comune();
        m.spec.deletion_policy = consorzio_api::DeletionPolicy::Delete;
        let (name, comune_ns) = onboard(&env, &m).await?;
        let mut services = vec![];
        for (entry, tenancy) in [("sito-comunale", 1), ("formazione", 1)] {
            let s = catalogue_service(entry, json!({"names": [name]}))?;
            if s.spec.tenancy == consorzio_api::Tenancy::Shared {
                env.delete_later_dynamic(
                    ApiResource::erase::<Namespace>(&()),
                    None,
                    format!("shared-{}", s.metadata.name.clone().unwrap_or_default()),
                );
            }
            apply_service(&env, &s).await?;
            let service = s.metadata.name.clone().unwrap_or_default();
            wait_status(&env, &service, "Ready", |st| {
                st.ready_instances == tenancy
                    && st
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .await?;
            services.push(service);
        }
        for service in &services {
            remove_service(&env, service).await?;
        }
        remove(&env, &name).await?;
        consorzio_testkit::wait_gone(
            &Api::<Namespace>::all(env.client()),
            &comune_ns,
            consorzio_testkit::TIMEOUT,
        )
        .await?;

        // And nothing more.
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": unique_name("escalate")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": release, "namespace": ns}],
        }))?;
        let denied = |result: Result<(), kube::Error>, what: &str| -> anyhow::Result<String> {
            match result {
                Err(kube::Error::Api(status)) if status.code == 403 || status.code == 422 => {
                    Ok(status.message)
                }
                other => bail!("{what}: expected to be refused, got {other:?}"),
            }
        };
        denied(
            Api::<ClusterRoleBinding>::all(client.clone())
                .create(&PostParams::default(), &binding)
                .await
                .map(|_| ()),
            "binding cluster-admin",
        )?;
        denied(
            Api::<Secret>::namespaced(client.clone(), "kube-system")
                .list(&Default::default())
                .await
                .map(|_| ()),
            "listing kube-system's Secrets",
        )?;
        denied(
            Api::<Secret>::namespaced(client.clone(), "kube-system")
                .get("bootstrap-token-abcdef")
                .await
                .map(|_| ()),
            "reading a kube-system Secret",
        )?;
        let foreign = env.namespace("not-consorzio").await?;
        let message = denied(
            Api::<Namespace>::all(client.clone())
                .delete(&foreign, &DeleteParams::default())
                .await
                .map(|_| ()),
            "deleting a namespace consorzio does not manage",
        )?;
        ensure!(message.contains("may change or delete only objects it made"), "{message}");

        // Finding 3: its identity writes nowhere else. In kube-system (or any namespace it does
        // not manage), no RoleBinding of the tenant roles, no Deployment, no Secret.
        let elsewhere = |kind: &str| -> anyhow::Result<DynamicObject> {
            let (api_version, extra) = match kind {
                "RoleBinding" => ("rbac.authorization.k8s.io/v1", json!({
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": "consorzio-municipality-admin"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]})),
                "Deployment" => ("apps/v1", json!({"spec": {
                    "selector": {"matchLabels": {"app": "x"}},
                    "template": {"metadata": {"labels": {"app": "x"}},
                                 "spec": {"containers": [{"name": "x", "image": "x"}]}}}})),
                _ => ("v1", json!({})),
            };
            let mut object = json!({"apiVersion": api_version, "kind": kind,
                "metadata": {"name": unique_name("probe"), "namespace": "kube-system",
                             "labels": {"app.kubernetes.io/managed-by": "consorzio"}}});
            merge(&mut object, extra);
            Ok(serde_json::from_value(object)?)
        };
        for (kind, plural) in [("RoleBinding", "rolebindings"), ("Deployment", "deployments"),
                               ("Secret", "secrets"), ("ConfigMap", "configmaps")] {
            let object = elsewhere(kind)?;
            let resource = ApiResource::from_gvk_with_plural(&object.types.as_ref().context("types")?.try_into()?, plural);
            let message = denied(
                Api::<DynamicObject>::namespaced_with(client.clone(), "kube-system", &resource)
                    .create(&PostParams::default(), &object)
                    .await
                    .map(|_| ()),
                &format!("creating a {kind} in kube-system"),
            )?;
            ensure!(message.contains("may write only in namespaces it manages"), "{message}");
        }
        // No Secret's data, by an empty patch or a delete: not kube-system's, nor a comune's own.
        let (tenant_ns, tenant) = onboard_with_secret(&env).await?;
        for ns in ["kube-system", tenant_ns.as_str()] {
            let secrets = Api::<Secret>::namespaced(client.clone(), ns);
            let name = if ns == "kube-system" { kube_system_secret(&env).await? } else { tenant.clone() };
            let message = denied(
                secrets
                    .patch(&name, &PatchParams::default(), &Patch::Merge(json!({})))
                    .await
                    .map(|_| ()),
                &format!("an empty patch of Secret {ns}/{name}"),
            )?;
            ensure!(!message.contains("c2VjcmV0"), "{message}");
            denied(
                secrets.delete(&name, &DeleteParams::default()).await.map(|_| ()),
                &format!("deleting Secret {ns}/{name}"),
            )?;
        }
        // In Velero's namespace: no Schedule that backs up another namespace than one comune's,
        // or runs hooks (commands inside the comune's pods); no Restore at all.
        let velero = |kind: &str, plural: &str| ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("velero.io", "v1", kind), plural);
        let schedules = Api::<DynamicObject>::namespaced_with(client.clone(), "velero", &velero("Schedule", "schedules"));
        let hook = json!({"resources": [{"name": "x", "pre": [{"exec": {"command": ["/bin/sh", "-c", "id"]}}]}]});
        for (what, namespaces, hooks) in [
            ("kube-system", json!(["kube-system"]), None),
            ("a comune's and kube-system", json!([tenant_ns, "kube-system"]), None),
            ("a comune's, with a hook", json!([tenant_ns]), Some(hook)),
        ] {
            let mut template = json!({"includedNamespaces": namespaces});
            if let Some(hooks) = hooks {
                template["hooks"] = hooks;
            }
            let schedule: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "velero.io/v1", "kind": "Schedule",
                "metadata": {"name": unique_name("probe"), "namespace": "velero",
                             "labels": {"app.kubernetes.io/managed-by": "consorzio"}},
                "spec": {"schedule": "0 1 * * *", "template": template},
            }))?;
            let message = denied(
                schedules.create(&PostParams::default(), &schedule).await.map(|_| ()),
                &format!("a Schedule of {what}"),
            )?;
            ensure!(message.contains("backs up one comune's namespace"), "{message}");
        }
        // No Job in a comune's namespace (tenant Jobs run in Shared services' namespaces only).
        let job: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": unique_name("probe"), "namespace": tenant_ns,
                         "labels": {"app.kubernetes.io/managed-by": "consorzio"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                     "containers": [{"name": "x", "image": "busybox:1.37.0"}]}}},
        }))?;
        let jobs = ApiResource::from_gvk_with_plural(&kube::core::GroupVersionKind::gvk("batch", "v1", "Job"), "jobs");
        let message = denied(
            Api::<DynamicObject>::namespaced_with(client.clone(), &tenant_ns, &jobs)
                .create(&PostParams::default(), &job)
                .await
                .map(|_| ()),
            "a Job in a comune's namespace",
        )?;
        ensure!(message.contains("only in Shared services' namespaces"), "{message}");
        let restore: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "velero.io/v1", "kind": "Restore",
            "metadata": {"name": unique_name("probe"), "namespace": "velero"},
            "spec": {"backupName": "anything"},
        }))?;
        denied(
            Api::<DynamicObject>::namespaced_with(client.clone(), "velero", &velero("Restore", "restores"))
                .create(&PostParams::default(), &restore)
                .await
                .map(|_| ()),
            "a Restore",
        )?;
        op.stop().await;
        Ok(())
    })
    .await;
}

/// A Secret of kube-system's, made by the admin for the test.
async fn kube_system_secret(env: &Env) -> anyhow::Result<String> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": unique_name("probe")},
        "stringData": {"token": "secret"},
    }))?;
    let created = Api::<Secret>::namespaced(env.client(), "kube-system")
        .create(&PostParams::default(), &secret)
        .await?;
    env.delete_later(&created);
    Ok(created.metadata.name.unwrap_or_default())
}

/// A comune onboarded (the operator must be running), and a Secret its admin made in its
/// namespace: the namespace and the Secret's name.
async fn onboard_with_secret(env: &Env) -> anyhow::Result<(String, String)> {
    let m = comune();
    let (name, ns) = onboard(env, &m).await?;
    let admin = env
        .client_as("someone", &[&format!("{name}-admins")])
        .await?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "own"},
        "stringData": {"token": "secret"},
    }))?;
    Api::<Secret>::namespaced(admin, &ns)
        .create(&PostParams::default(), &secret)
        .await
        .context("the comune's admin creating a Secret")?;
    Ok((ns, "own".into()))
}
