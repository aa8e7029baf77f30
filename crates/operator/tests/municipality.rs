//! Onboarding a comune with one Municipality, against the local control plane.

mod support;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, bail, ensure};
use consorzio_api::{DeletionPolicy, Municipality};
use consorzio_testkit::{Env, TIMEOUT, run, wait_for, wait_gone};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    apps::v1::Deployment,
    core::v1::{ConfigMap, LimitRange, Namespace, Pod, ResourceQuota, Secret, ServiceAccount},
    events::v1::Event,
    networking::v1::NetworkPolicy,
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{Operator, apply, comune, exclusive, onboard, remove, wait_ready};

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> anyhow::Result<(u16, String)> {
    match result {
        Err(kube::Error::Api(status)) => Ok((status.code, status.message)),
        other => bail!("expected an API error, got {other:?}"),
    }
}

/// Waits until the Municipality is not Ready, and returns its Ready condition.
async fn not_ready(env: &Env, name: &str) -> anyhow::Result<consorzio_api::Condition> {
    wait_ready(env, name, "False")
        .await?
        .status
        .context("status")?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .context("Ready")
}

async fn names<K>(api: &Api<K>) -> anyhow::Result<Vec<String>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await?
        .iter()
        .map(|o| o.name_any())
        .collect();
    names.sort();
    Ok(names)
}

#[tokio::test]
async fn onboarding_creates_the_isolated_namespace_and_reports_ready() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let m = comune();
        let name = m.name_any();
        let ns = format!("comune-{name}");
        let applied = apply(&env, &m).await?;
        let ready = wait_ready(&env, &name, "True").await?;

        let status = ready.status.clone().context("status")?;
        assert_eq!(status.namespace.as_deref(), Some(ns.as_str()));
        assert_eq!(status.code.as_deref(), Some("060004"));
        assert_eq!(status.observed_generation, applied.metadata.generation);

        let namespace = Api::<Namespace>::all(env.client()).get(&ns).await?;
        let labels = namespace.labels();
        for (key, value) in [
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/audit", "restricted"),
            ("pod-security.kubernetes.io/warn", "restricted"),
            ("consorzio.io/municipality", name.as_str()),
            ("consorzio.io/country", "IT"),
            ("consorzio.io/region", "lazio"),
            ("consorzio.io/union", "valle-di-comino"),
        ] {
            assert_eq!(
                labels.get(key).map(String::as_str),
                Some(value),
                "namespace label {key}"
            );
        }
        // It holds the comune's data: no owner reference, through which the garbage collector
        // could delete it.
        assert!(namespace.owner_references().is_empty());

        let quota = env.api::<ResourceQuota>(&ns).get("consorzio-quota").await?;
        let hard = quota.spec.and_then(|s| s.hard).context("quota hard")?;
        for (resource, value) in [
            ("requests.cpu", "4"),
            ("limits.memory", "8Gi"),
            ("requests.storage", "100Gi"),
            ("pods", "50"),
            ("services.nodeports", "0"),
            ("services.loadbalancers", "0"),
        ] {
            assert_eq!(
                hard.get(resource).map(|q| q.0.as_str()),
                Some(value),
                "quota {resource}"
            );
        }
        env.api::<LimitRange>(&ns).get("consorzio-limits").await?;
        assert_eq!(
            names(&env.api::<NetworkPolicy>(&ns)).await?,
            [
                "consorzio-allow-dns",
                "consorzio-allow-ingress-controller",
                "consorzio-allow-same-namespace",
                "consorzio-default-deny"
            ]
        );
        let admins = env.api::<RoleBinding>(&ns).get("consorzio-admins").await?;
        assert_eq!(admins.role_ref.name, "consorzio-municipality-admin");
        assert_eq!(
            admins.subjects.context("subjects")?[0].name,
            format!("{name}-admins")
        );

        // The quota controller reports hard and used; the status carries them.
        wait_for(
            "quota usage in the Municipality status",
            TIMEOUT,
            || async {
                let m = Api::<consorzio_api::Municipality>::all(env.client())
                    .get(&name)
                    .await?;
                let quota = m.status.map(|s| s.quota).unwrap_or_default();
                let pods = quota.get("pods").context("no pods entry yet")?;
                ensure!(pods.hard.0 == "50" && pods.used.0 == "0", "pods {:?}", pods);
                Ok(())
            },
        )
        .await?;
        let metrics = op.metrics.encode();
        assert!(
            metrics.contains(&format!(
                "consorzio_municipality_ready{{municipality=\"{name}\"}} 1"
            )),
            "{metrics}"
        );

        remove(&env, &name).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

async fn can_create_deployment(client: Client, ns: &str) -> Result<Deployment, kube::Error> {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "web", "image": "nginx:1.27",
                        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
                    }]
                }
            }
        }
    }))
    .expect("fixture");
    Api::<Deployment>::namespaced(client, ns)
        .create(&PostParams::default(), &deployment)
        .await
}

#[tokio::test]
async fn tenant_admin_runs_workloads_but_cannot_touch_isolation_or_other_comuni() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let (a, b) = (comune(), comune());
        apply(&env, &a).await?;
        apply(&env, &b).await?;
        wait_ready(&env, &a.name_any(), "True").await?;
        wait_ready(&env, &b.name_any(), "True").await?;
        let (ns_a, ns_b) = (format!("comune-{}", a.name_any()), format!("comune-{}", b.name_any()));
        let admin = env.client_as("alice@comune.example.it", &[&format!("{}-admins", a.name_any())]).await?;

        // Allowed: a Deployment that complies with Pod Security "restricted"; it becomes Available
        // under the quota thanks to the LimitRange defaults.
        can_create_deployment(admin.clone(), &ns_a).await?;
        wait_for("the tenant's Deployment to be Available", TIMEOUT, || async {
            let d = env.api::<Deployment>(&ns_a).get("web").await?;
            let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
            ensure!(available == 1, "{available} available");
            Ok(())
        })
        .await?;

        // Refused: a privileged pod (Pod Security), another comune's secrets, the quota, the network
        // policies, the namespace, and binding cluster-admin.
        let privileged: Pod = serde_json::from_value(json!({"metadata": {"name": "root"}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "securityContext": {"privileged": true}}]}}))?;
        let (code, message) = api_error(Api::<Pod>::namespaced(admin.clone(), &ns_a).create(&PostParams::default(), &privileged).await)?;
        assert!(code == 403 && message.contains("violates PodSecurity \"restricted"), "{code} {message}");

        let (code, _) = api_error(Api::<Secret>::namespaced(admin.clone(), &ns_b).list(&ListParams::default()).await)?;
        assert_eq!(code, 403, "reading another comune's secrets");
        let (code, _) = api_error(can_create_deployment(admin.clone(), &ns_b).await)?;
        assert_eq!(code, 403, "creating in another comune");

        let patch = Patch::Merge(json!({"spec": {"hard": {"pods": "1000"}}}));
        let (code, _) = api_error(Api::<ResourceQuota>::namespaced(admin.clone(), &ns_a).patch("consorzio-quota", &PatchParams::default(), &patch).await)?;
        assert_eq!(code, 403, "changing the quota");
        let (code, _) = api_error(Api::<NetworkPolicy>::namespaced(admin.clone(), &ns_a).delete("consorzio-default-deny", &DeleteParams::default()).await)?;
        assert_eq!(code, 403, "deleting a network policy");
        let open: NetworkPolicy = serde_json::from_value(json!({"metadata": {"name": "open"}, "spec": {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}}))?;
        let (code, _) = api_error(Api::<NetworkPolicy>::namespaced(admin.clone(), &ns_a).create(&PostParams::default(), &open).await)?;
        assert_eq!(code, 403, "adding a network policy");
        let (code, _) = api_error(Api::<Namespace>::all(admin.clone()).delete(&ns_a, &DeleteParams::default()).await)?;
        assert_eq!(code, 403, "deleting the namespace");
        let escalate: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "root"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice@comune.example.it"}]
        }))?;
        let (code, _) = api_error(Api::<RoleBinding>::namespaced(admin.clone(), &ns_a).create(&PostParams::default(), &escalate).await)?;
        assert_eq!(code, 403, "binding cluster-admin");

        // A viewer reads workloads but not secrets.
        let viewer = env.client_as("bob@comune.example.it", &[&format!("{}-viewers", a.name_any())]).await?;
        Api::<Deployment>::namespaced(viewer.clone(), &ns_a).get("web").await?;
        let (code, _) = api_error(Api::<Secret>::namespaced(viewer, &ns_a).list(&ListParams::default()).await)?;
        assert_eq!(code, 403, "viewer reading secrets");

        remove(&env, &a.name_any()).await?;
        remove(&env, &b.name_any()).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn drift_is_repaired_within_seconds() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let m = comune();
        let (name, ns) = onboard(&env, &m).await?;

        let policies = env.api::<NetworkPolicy>(&ns);
        policies.delete("consorzio-default-deny", &DeleteParams::default()).await?;
        let quotas = env.api::<ResourceQuota>(&ns);
        quotas.patch("consorzio-quota", &PatchParams::default(), &Patch::Merge(json!({"spec": {"hard": {"pods": "999"}}}))).await?;
        let namespaces = Api::<Namespace>::all(env.client());
        namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}))).await?;

        let patience = Duration::from_secs(15);
        wait_for("the deleted network policy to be back", patience, || async {
            policies.get_opt("consorzio-default-deny").await?.context("still missing")
        })
        .await?;
        wait_for("the quota to be put back", patience, || async {
            let hard = quotas.get("consorzio-quota").await?.spec.and_then(|s| s.hard).unwrap_or_default();
            let pods = hard.get("pods").map(|q| q.0.clone()).unwrap_or_default();
            ensure!(pods == "50", "pods {pods}");
            Ok(())
        })
        .await?;
        wait_for("the namespace's Pod Security label to be re-asserted", patience, || async {
            let ns = namespaces.get(&ns).await?;
            let enforce = ns.labels().get("pod-security.kubernetes.io/enforce").cloned().unwrap_or_default();
            ensure!(enforce == "restricted", "enforce={enforce}");
            Ok(())
        })
        .await?;
        // The quota alone: changes of its usage wait for the comune's next status write, its
        // deletion does not.
        quotas.delete("consorzio-quota", &DeleteParams::default()).await?;
        wait_for("the deleted quota to be back", patience, || async {
            quotas.get_opt("consorzio-quota").await?.context("still missing")
        })
        .await?;

        // Finding 12: drift that adds, by a cluster admin: a rule that opens the default-deny
        // policy, a subject in the admins' binding, a key in the quota, an isolation label.
        policies.patch("consorzio-default-deny", &PatchParams::default(), &Patch::Merge(json!({"spec": {"ingress": [{}]}}))).await?;
        let bindings = env.api::<RoleBinding>(&ns);
        let admins = bindings.get("consorzio-admins").await?;
        let mut subjects = admins.subjects.clone().unwrap_or_default();
        subjects.push(serde_json::from_value(json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}))?);
        bindings.patch("consorzio-admins", &PatchParams::default(), &Patch::Merge(json!({"subjects": subjects}))).await?;
        quotas.patch("consorzio-quota", &PatchParams::default(), &Patch::Merge(json!({"spec": {"hard": {"count/widgets.example.com": "5"}}}))).await?;
        namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce-version": "v1.20"}}}))).await?;
        wait_for("what was added to be removed", patience, || async {
            let policy = policies.get("consorzio-default-deny").await?;
            let ingress = policy.spec.and_then(|s| s.ingress).unwrap_or_default();
            ensure!(ingress.is_empty(), "default-deny admits {ingress:?}");
            let subjects = bindings.get("consorzio-admins").await?.subjects.unwrap_or_default();
            ensure!(subjects.iter().all(|s| s.name != "mallory"), "mallory is an admin");
            let hard = quotas.get("consorzio-quota").await?.spec.and_then(|s| s.hard).unwrap_or_default();
            ensure!(!hard.contains_key("count/widgets.example.com"), "quota key kept");
            let labels = namespaces.get(&ns).await?.labels().clone();
            ensure!(!labels.contains_key("pod-security.kubernetes.io/enforce-version"), "label kept");
            Ok(())
        })
        .await?;

        remove(&env, &name).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

/// Adds `Kind/name -> resourceVersion` of every object of kind `K` in `ns`.
async fn versions_of<K>(
    env: &Env,
    ns: &str,
    all: &mut BTreeMap<String, String>,
) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    for obj in env.api::<K>(ns).list(&ListParams::default()).await? {
        all.insert(
            format!("{}/{}", K::kind(&()), obj.name_any()),
            obj.resource_version().unwrap_or_default(),
        );
    }
    Ok(())
}

/// Resource versions of the Municipality, its namespace and every object the operator manages in it.
async fn versions(env: &Env, name: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let ns = format!("comune-{name}");
    let m = Api::<consorzio_api::Municipality>::all(env.client())
        .get(name)
        .await?;
    let namespace = Api::<Namespace>::all(env.client()).get(&ns).await?;
    let mut all = BTreeMap::from([
        (
            format!("Municipality/{name}"),
            m.resource_version().unwrap_or_default(),
        ),
        (
            format!("Namespace/{ns}"),
            namespace.resource_version().unwrap_or_default(),
        ),
    ]);
    versions_of::<ResourceQuota>(env, &ns, &mut all).await?;
    versions_of::<LimitRange>(env, &ns, &mut all).await?;
    versions_of::<NetworkPolicy>(env, &ns, &mut all).await?;
    versions_of::<RoleBinding>(env, &ns, &mut all).await?;
    Ok(all)
}

#[tokio::test]
async fn resync_of_a_converged_comune_writes_nothing() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let m = comune();
        let name = m.name_any();
        apply(&env, &m).await?;
        wait_ready(&env, &name, "True").await?;
        // Converged: status carries the quota controller's figures as they are now (usage
        // still changes for a moment after a namespace is made: its root CA ConfigMap, its
        // default ServiceAccount; the operator writes a change of usage alone once it is still).
        let quotas = env.api::<ResourceQuota>(&format!("comune-{name}"));
        wait_for(
            "the quota's usage in status",
            Duration::from_secs(90),
            || async {
                let m = Api::<consorzio_api::Municipality>::all(env.client())
                    .get(&name)
                    .await?;
                let used = quotas
                    .get("consorzio-quota")
                    .await?
                    .status
                    .and_then(|s| s.used);
                let status = m.status.unwrap_or_default();
                ensure!(status.quota.contains_key("pods"), "not yet");
                for (resource, used) in used.unwrap_or_default() {
                    let listed = status.quota.get(&resource).map(|q| &q.used);
                    ensure!(
                        listed == Some(&used),
                        "{resource}: {listed:?} in status, {used:?} used"
                    );
                }
                Ok(())
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = versions(&env, &name).await?;
        op.stop().await;

        // A new operator reconciles every comune once at start: that must change nothing.
        let op = Operator::start(&env).await?;
        wait_for(
            "the restarted operator to reconcile the comune",
            TIMEOUT,
            || async {
                let text = op.metrics.encode();
                ensure!(
                    text.contains(&format!(
                        "consorzio_municipality_ready{{municipality=\"{name}\"}} 1"
                    )),
                    "not reconciled yet"
                );
                Ok(())
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            op.writes(),
            0,
            "a no-op resync wrote:\n{}",
            op.metrics.encode()
        );
        assert_eq!(
            versions(&env, &name).await?,
            before,
            "resource versions changed"
        );

        remove(&env, &name).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn retain_keeps_the_data_revokes_access_and_reapplying_adopts_it() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let m = comune();
        let (name, ns) = onboard(&env, &m).await?;
        let uid = with_data(&env, &ns).await?;

        remove(&env, &name).await?;
        let namespace = Api::<Namespace>::all(env.client()).get(&ns).await?;
        assert!(
            namespace.metadata.deletion_timestamp.is_none(),
            "the namespace is being deleted"
        );
        assert_eq!(
            namespace
                .labels()
                .get("consorzio.io/orphaned")
                .map(String::as_str),
            Some("true")
        );
        assert!(namespace.owner_references().is_empty());
        // Its people no longer have access (finding 11).
        let bindings = env
            .api::<RoleBinding>(&ns)
            .list(&Default::default())
            .await?;
        let names: Vec<String> = bindings.iter().map(|b| b.name_any()).collect();
        assert!(names.is_empty(), "access kept: {names:?}");
        kept_with_its_data(&env, &ns, &uid).await?;

        let _again = apply(&env, &m).await?;
        wait_ready(&env, &name, "True").await?;
        adopted(&env, &ns).await?;
        remove(&env, &name).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

/// Finding 8: with the operator down, removing a Municipality's finalizer by hand (the usual way
/// to unstick a deletion) lets it go, and its namespace and data stay; applying it again adopts
/// them.
#[tokio::test]
async fn a_finalizer_removed_by_hand_loses_no_data() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let m = comune();
        let (name, ns) = onboard(&env, &m).await?;
        let uid = with_data(&env, &ns).await?;
        op.stop().await;

        let api = Api::<Municipality>::all(env.client());
        api.delete(&name, &Default::default()).await?;
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
        wait_gone(&api, &name, TIMEOUT).await?;
        kept_with_its_data(&env, &ns, &uid).await?;

        let op = Operator::start(&env).await?;
        apply(&env, &m).await?;
        wait_ready(&env, &name, "True").await?;
        adopted(&env, &ns).await?;
        remove(&env, &name).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

/// Puts the comune's own data in namespace `ns` (a ConfigMap `protocollo`); returns the
/// namespace's uid.
async fn with_data(env: &Env, ns: &str) -> anyhow::Result<Option<String>> {
    let data: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "protocollo"}, "data": {"n": "42"}}))?;
    env.api::<ConfigMap>(ns)
        .create(&PostParams::default(), &data)
        .await?;
    Ok(Api::<Namespace>::all(env.client())
        .get(ns)
        .await?
        .metadata
        .uid)
}

/// Namespace `ns` is still the one with uid `uid`, not being deleted, with the comune's data,
/// after giving the garbage collector time to act, were it owned.
async fn kept_with_its_data(env: &Env, ns: &str, uid: &Option<String>) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    let namespace = Api::<Namespace>::all(env.client()).get(ns).await?;
    ensure!(
        &namespace.metadata.uid == uid,
        "namespace {ns} was made anew"
    );
    ensure!(
        namespace.metadata.deletion_timestamp.is_none(),
        "namespace {ns} is being deleted"
    );
    let data = env.api::<ConfigMap>(ns).get("protocollo").await?;
    ensure!(data.data.context("data")?["n"] == "42", "data changed");
    env.api::<ResourceQuota>(ns).get("consorzio-quota").await?;
    Ok(())
}

/// Namespace `ns` is managed again: not labelled orphaned, its access bindings back.
async fn adopted(env: &Env, ns: &str) -> anyhow::Result<()> {
    wait_for("the namespace to be adopted", TIMEOUT, || async {
        let namespace = Api::<Namespace>::all(env.client()).get(ns).await?;
        ensure!(
            !namespace.labels().contains_key("consorzio.io/orphaned"),
            "still labelled orphaned"
        );
        ensure!(namespace.owner_references().is_empty(), "owned");
        env.api::<RoleBinding>(ns).get("consorzio-admins").await?;
        Ok(())
    })
    .await?;
    env.api::<ConfigMap>(ns).get("protocollo").await?;
    Ok(())
}

#[tokio::test]
async fn delete_policy_removes_the_namespace_before_letting_go() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let mut m = comune();
        m.spec.deletion_policy = DeletionPolicy::Delete;
        let (name, ns) = onboard(&env, &m).await?;

        let municipalities = Api::<consorzio_api::Municipality>::all(env.client());
        municipalities
            .delete(&name, &DeleteParams::default())
            .await?;
        // While the namespace exists, the Municipality stays.
        let namespaces = Api::<Namespace>::all(env.client());
        wait_for("the namespace to start terminating", TIMEOUT, || async {
            let ns = namespaces.get(&ns).await?;
            ensure!(ns.metadata.deletion_timestamp.is_some(), "not terminating");
            Ok(())
        })
        .await?;
        if namespaces.get_opt(&ns).await?.is_some() {
            assert!(
                municipalities.get_opt(&name).await?.is_some(),
                "the Municipality went before its namespace"
            );
        }
        wait_gone(&municipalities, &name, Duration::from_secs(120)).await?;
        assert!(
            namespaces.get_opt(&ns).await?.is_none(),
            "the namespace outlived its Municipality"
        );
        op.stop().await;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_comune_is_ready_only_once_its_namespace_can_run_pods() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let m = comune();
        let name = m.name_any();
        let ns = format!("comune-{name}");
        // An admission policy keeps the controller-manager from making the comune's namespace
        // its default ServiceAccount, without which the API server refuses pods.
        let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
            "metadata": {"name": format!("no-service-account-{name}")},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["CREATE"], "resources": ["serviceaccounts"],
                }]},
                "validations": [{"expression": "false", "message": "held back by a test"}],
            },
        }))?;
        // The comune's namespace, and a probe namespace to see when the policy holds.
        let probe = env.namespace("probe").await?;
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
            "metadata": {"name": policy.name_any()},
            "spec": {
                "policyName": policy.name_any(),
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchExpressions": [{
                    "key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns, probe],
                }]}},
            },
        }))?;
        let (policies, bindings) = (
            Api::<ValidatingAdmissionPolicy>::all(env.client()),
            Api::<ValidatingAdmissionPolicyBinding>::all(env.client()),
        );
        policies.create(&PostParams::default(), &policy).await?;
        env.delete_later(&policy);
        bindings.create(&PostParams::default(), &binding).await?;
        env.delete_later(&binding);
        let account = |ns: &str| -> anyhow::Result<ServiceAccount> {
            Ok(serde_json::from_value(
                json!({"metadata": {"name": "default", "namespace": ns}}),
            )?)
        };
        // A new ServiceAccount each time: the policy takes a moment to hold.
        wait_for(
            "the policy to hold ServiceAccounts back",
            TIMEOUT,
            || async {
                let probe_account = serde_json::from_value(
                    json!({"metadata": {"generateName": "probe-", "namespace": probe}}),
                )?;
                let created = env
                    .api::<ServiceAccount>(&probe)
                    .create(&PostParams::default(), &probe_account)
                    .await;
                match created {
                    Err(kube::Error::Api(status)) if status.message.contains("held back") => Ok(()),
                    other => bail!("not held back yet: {other:?}"),
                }
            },
        )
        .await?;

        apply(&env, &m).await?;
        let ready = not_ready(&env, &name).await?;
        assert_eq!(ready.reason, "WaitingForServiceAccount");
        assert!(ready.message.contains(&ns), "{}", ready.message);
        assert!(
            env.api::<ServiceAccount>(&ns)
                .get_opt("default")
                .await?
                .is_none()
        );

        // The policy goes and the ServiceAccount comes (made here: the controller-manager
        // would retry later): the comune becomes Ready.
        bindings
            .delete(&binding.name_any(), &DeleteParams::default())
            .await?;
        policies
            .delete(&policy.name_any(), &DeleteParams::default())
            .await?;
        wait_for("the default ServiceAccount", TIMEOUT, || async {
            let created = env
                .api::<ServiceAccount>(&ns)
                .create(&PostParams::default(), &account(&ns)?)
                .await;
            match created {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        wait_ready(&env, &name, "True").await?;
        remove(&env, &name).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn foreign_namespace_is_reported_and_left_untouched() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let m = comune();
        let name = m.name_any();
        let ns = format!("comune-{name}");
        let foreign: Namespace = serde_json::from_value(
            json!({"metadata": {"name": ns, "labels": {"owner": "someone-else"}}}),
        )?;
        let namespaces = Api::<Namespace>::all(env.client());
        namespaces.create(&PostParams::default(), &foreign).await?;
        env.delete_later(&foreign);
        apply(&env, &m).await?;

        let ready = not_ready(&env, &name).await?;
        assert_eq!(ready.reason, "NamespaceConflict");
        assert!(ready.message.contains(&ns), "{}", ready.message);
        // Finding 13: GitOps tools see a failure, not progress.
        let status = Api::<Municipality>::all(env.client())
            .get(&name)
            .await?
            .status
            .context("status")?;
        let state = |t: &str| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.reason.clone()))
        };
        assert_eq!(
            state("Stalled"),
            Some(("True".into(), "NamespaceConflict".into()))
        );
        assert_eq!(state("Reconciling").map(|s| s.0), Some("False".into()));

        let after = namespaces.get(&ns).await?;
        assert_eq!(
            after.labels(),
            &BTreeMap::from([
                ("owner".to_string(), "someone-else".to_string()),
                ("kubernetes.io/metadata.name".to_string(), ns.clone())
            ])
        );
        assert!(after.owner_references().is_empty());
        assert!(
            env.api::<ResourceQuota>(&ns)
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
        );
        wait_for("a NamespaceConflict event", TIMEOUT, || async {
            let events = Api::<Event>::all(env.client())
                .list(&ListParams::default())
                .await?;
            let found = events.iter().any(|e| {
                e.reason.as_deref() == Some("NamespaceConflict")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
            });
            ensure!(found, "no event yet");
            Ok(())
        })
        .await?;

        remove(&env, &name).await?;
        // Deleting the Municipality (Retain) did not touch the foreign namespace either.
        assert!(
            namespaces
                .get(&ns)
                .await?
                .labels()
                .get("consorzio.io/orphaned")
                .is_none()
        );
        op.stop().await;
        Ok(())
    })
    .await;
}
