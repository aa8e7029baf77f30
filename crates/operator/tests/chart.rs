//! The Helm chart: it lints and renders (defaults and every toggle on), its CRDs and deploy/ are
//! what they are generated from, its RBAC is least privilege and enough to run the operator, and
//! its dashboard and alerts query metrics the operator really exports.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail, ensure};
use consorzio::server::{self, Health};
use consorzio_testkit::{Cluster, Env, run, unique_name, yaml_documents};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, Secret, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
    core::ApiResource,
};
use serde_json::{Value, json};
use support::{
    Operator, apply_service, catalogue_service, comune, onboard, remove, remove_service,
    wait_status,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const CHART: &str = "charts/consorzio";
const EVERY_TOGGLE: &str =
    "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true";

/// Runs the cluster's helm in the repository root and returns its standard output.
fn helm(args: &[&str]) -> anyhow::Result<String> {
    let cluster = Cluster::get();
    let out = std::process::Command::new(cluster.bin("helm"))
        .args(args)
        .current_dir(root())
        .output()
        .context("running helm")?;
    ensure!(
        out.status.success(),
        "helm {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn template(release: &str, namespace: &str, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec!["template", release, CHART, "--namespace", namespace];
    args.extend(extra);
    yaml_documents(&helm(&args)?)
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_string))
        .collect()
}

fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(root().join(path)).with_context(|| format!("reading {path}"))
}

#[test]
fn chart_lints_and_renders_with_defaults_and_every_toggle() -> anyhow::Result<()> {
    helm(&["lint", CHART])?;
    helm(&["lint", CHART, "--set", EVERY_TOGGLE])?;
    let defaults = kinds(&template("consorzio", "consorzio", &[])?);
    for kind in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
    ] {
        ensure!(defaults.contains(kind), "{kind} missing: {defaults:?}");
    }
    for kind in ["ServiceMonitor", "PrometheusRule", "ConfigMap"] {
        ensure!(!defaults.contains(kind), "{kind} is off by default");
    }
    let all = template("consorzio", "consorzio", &["--set", EVERY_TOGGLE])?;
    let toggled = kinds(&all);
    for kind in ["ServiceMonitor", "PrometheusRule", "ConfigMap"] {
        ensure!(toggled.contains(kind), "{kind} missing with its toggle on");
    }
    let deployment = all
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("Deployment")?;
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    Ok(())
}

#[test]
fn crds_and_deploy_are_what_they_are_generated_from() -> anyhow::Result<()> {
    ensure!(
        read("charts/consorzio/crds/consorzio.io.yaml")? == read("crds/consorzio.io.yaml")?,
        "the chart's CRDs differ from crds/: run `make crds`"
    );
    let rendered = helm(&[
        "template",
        "consorzio",
        CHART,
        "--namespace",
        "consorzio",
        "--include-crds",
    ])?;
    ensure!(
        read("deploy/consorzio.yaml")? == rendered,
        "deploy/consorzio.yaml differs from the chart: run `make manifests`"
    );
    let roles = helm(&[
        "template",
        "consorzio",
        CHART,
        "--namespace",
        "consorzio",
        "--show-only",
        "templates/tenant-roles.yaml",
    ])?;
    ensure!(
        read("deploy/rbac/tenant-roles.yaml")? == roles,
        "deploy/rbac/tenant-roles.yaml differs from the chart: run `make manifests`"
    );
    Ok(())
}

/// The strings of a list in a rule (`verbs`, `resources`…).
fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

#[test]
fn operator_role_has_no_wildcards_and_binds_only_tenant_roles() -> anyhow::Result<()> {
    let docs = template("consorzio", "consorzio", &[])?;
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "consorzio-operator")
        .context("the operator's ClusterRole")?;
    for rule in role["rules"].as_array().context("rules")? {
        let list = |field: &str| strings(&rule[field]);
        let (verbs, resources) = (list("verbs"), list("resources"));
        for word in verbs.iter().chain(&resources).chain(&list("apiGroups")) {
            ensure!(word != "*", "wildcard in {rule}");
        }
        for verb in ["escalate", "impersonate", "deletecollection"] {
            ensure!(!verbs.iter().any(|v| v == verb), "{verb} in {rule}");
        }
        if verbs.iter().any(|v| v == "bind") {
            assert_eq!(
                list("resourceNames"),
                [
                    "consorzio-municipality-admin",
                    "consorzio-municipality-viewer"
                ]
            );
        }
        if resources.iter().any(|r| r == "secrets") {
            for verb in ["get", "list", "watch"] {
                ensure!(!verbs.iter().any(|v| v == verb), "secrets: {verb}");
            }
        }
    }
    Ok(())
}

/// The kinds the operator manages are declared once (`controller::kinds`); its ClusterRole
/// grants each exactly the verbs the declaration says it needs, and beyond them only its own
/// resources, Events and binding the tenant roles.
#[test]
fn operator_role_grants_exactly_what_the_declared_kinds_need() -> anyhow::Result<()> {
    let docs = template("consorzio", "consorzio", &[])?;
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "consorzio-operator")
        .context("the operator's ClusterRole")?;
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().context("rules")? {
        let list = |field: &str| strings(&rule[field]);
        for group in list("apiGroups") {
            for resource in list("resources") {
                granted
                    .entry((group.clone(), resource))
                    .or_default()
                    .extend(list("verbs"));
            }
        }
    }
    for kind in consorzio::controller::kinds::KINDS {
        let key = (kind.group.to_string(), kind.plural.to_string());
        let verbs = granted.remove(&key).unwrap_or_default();
        let wanted: BTreeSet<String> = kind.verbs().into_iter().map(str::to_string).collect();
        ensure!(
            verbs == wanted,
            "{}: the chart grants {verbs:?}, the declaration needs {wanted:?}",
            kind.kind
        );
    }
    let rest: Vec<String> = granted
        .keys()
        .map(|(group, resource)| format!("{group}/{resource}"))
        .collect();
    assert_eq!(
        rest,
        [
            "consorzio.io/municipalities",
            "consorzio.io/municipalities/status",
            "consorzio.io/sharedservices",
            "consorzio.io/sharedservices/status",
            "events.k8s.io/events",
            "rbac.authorization.k8s.io/clusterroles",
        ],
        "granted beyond the declared kinds"
    );
    Ok(())
}

/// Metric names in PromQL expressions: `consorzio_…` words.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("consorzio_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Whether `/metrics` text exports `name` (a counter's `_total`, a histogram's `_bucket`, `_sum`
/// and `_count` count as their family's).
fn exports(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|line| {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            return false;
        };
        let mut parts = rest.split_whitespace();
        let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
            return false;
        };
        name == family
            || (kind == "counter" && name == format!("{family}_total"))
            || (kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{family}{s}")))
    })
}

#[tokio::test]
async fn dashboard_and_alerts_use_metrics_the_operator_exports() {
    let _one = support::exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let health = Health {
            metrics: op.metrics.clone(),
            ready: std::sync::Arc::new(true.into()),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server::serve(addr, health, async {
            let _ = stopped.await;
        }));
        op.metrics.set_leader(true);
        let (name, _) = onboard(&env, &comune()).await?;
        let s = catalogue_service("sito-comunale", json!({"names": [name]}))?;
        apply_service(&env, &s).await?;
        wait_status(
            &env,
            &s.metadata.name.clone().unwrap_or_default(),
            "Ready",
            |st| st.ready_instances == 1,
        )
        .await?;

        let live = reqwest_get(&format!("http://{addr}/metrics")).await?;
        let dashboard = read("charts/consorzio/files/dashboard.json")?;
        let dashboard: Value = serde_json::from_str(&dashboard)?;
        let mut expressions = String::new();
        collect_exprs(&dashboard, &mut expressions);
        let rules = template(
            "consorzio",
            "consorzio",
            &["--set", "prometheusRule.enabled=true"],
        )?;
        let rule = rules
            .iter()
            .find(|d| d["kind"] == "PrometheusRule")
            .context("PrometheusRule")?;
        collect_exprs(rule, &mut expressions);
        let names = metric_names(&expressions);
        ensure!(names.len() >= 8, "too few metrics found: {names:?}");
        let missing: Vec<&String> = names.iter().filter(|n| !exports(&live, n)).collect();
        ensure!(
            missing.is_empty(),
            "not exported by the operator: {missing:?}\n{live}"
        );
        remove_service(&env, &s.metadata.name.clone().unwrap_or_default()).await?;
        let _ = stop.send(());
        serving.await??;
        op.stop().await;
        Ok(())
    })
    .await;
}

/// Every `expr` string in a JSON tree (dashboard targets, alerting rules), appended to `out`.
fn collect_exprs(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(e)) => {
                        out.push_str(e);
                        out.push('\n');
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// A plain HTTP/1.0 GET of a local URL's body.
async fn reqwest_get(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("http URL")?;
    let (host, path) = rest.split_once('/').context("path")?;
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").context("response")?;
    if !head.contains(" 200 ") {
        bail!("{head}");
    }
    Ok(body.to_string())
}

/// Applies rendered documents with the admin's kubectl, server-side.
async fn apply_documents(env: &Env, docs: &[Value]) -> anyhow::Result<()> {
    let mut text = String::new();
    for doc in docs {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(doc)?);
    }
    let file = std::env::temp_dir().join(format!("{}.yaml", unique_name("chart-rbac")));
    std::fs::write(&file, text)?;
    let out = consorzio_testkit::kubectl(
        env.cluster(),
        &[
            "apply",
            "--server-side",
            "-f",
            file.to_str().context("path")?,
        ],
    )
    .await?;
    let _ = std::fs::remove_file(&file);
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn the_operator_runs_on_the_charts_rbac_and_can_do_nothing_more() {
    let _one = support::exclusive().await;
    run(|env: Env| async move {
        // The chart's RBAC and namespace guard, under a release of the test's own.
        let ns = env.namespace("consorzio-rbac").await?;
        let release = unique_name("rbac");
        let docs: Vec<Value> = template(&release, &ns, &[])?
            .into_iter()
            .filter(|d| {
                [
                    "ServiceAccount",
                    "ClusterRole",
                    "ClusterRoleBinding",
                    "Role",
                    "RoleBinding",
                    "ValidatingAdmissionPolicy",
                    "ValidatingAdmissionPolicyBinding",
                ]
                .contains(&d["kind"].as_str().unwrap_or_default())
            })
            .collect();
        // Cluster-scoped objects go when the test ends (the tenant roles stay: they are shared).
        for d in docs.iter().filter(|d| d["metadata"]["namespace"].is_null()) {
            let name = d["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let resource = match d["kind"].as_str().unwrap_or_default() {
                "ClusterRole" if name.starts_with("consorzio-municipality-") => continue,
                "ClusterRole" => ApiResource::erase::<ClusterRole>(&()),
                "ClusterRoleBinding" => ApiResource::erase::<ClusterRoleBinding>(&()),
                "ValidatingAdmissionPolicy" => ApiResource::erase::<ValidatingAdmissionPolicy>(&()),
                "ValidatingAdmissionPolicyBinding" => {
                    ApiResource::erase::<ValidatingAdmissionPolicyBinding>(&())
                }
                other => bail!("unexpected cluster-scoped {other} in the chart"),
            };
            env.delete_later_dynamic(resource, None, name);
        }
        apply_documents(&env, &docs).await?;

        // The operator, with a token of the chart's ServiceAccount.
        let token = Api::<ServiceAccount>::namespaced(env.client(), &ns)
            .create_token_request(
                &release,
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
        op.stop().await;

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
        ensure!(
            message.contains("may only create, change or delete namespaces labelled"),
            "{message}"
        );
        Ok(())
    })
    .await;
}
