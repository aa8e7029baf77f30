//! The Helm chart: it lints and renders (defaults and every toggle on), its CRDs and deploy/ are
//! what they are generated from, its RBAC is least privilege and enough to run the operator, and
//! its dashboard and alerts query metrics the operator really exports.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, bail, ensure};
use consorzio::server::{self, Health};
use consorzio_testkit::{Env, run};
use serde_json::{Value, json};
use support::chart::{CHART, EVERY_TOGGLE, helm, kinds, operator_roles, read, strings, template};
use support::{
    Operator, apply_service, catalogue_service, comune, onboard, remove_service, wait_status,
};

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
    // With an object store: its settings, and a Role to read the keys in its own namespace only.
    let env = container["env"].as_array().context("env")?;
    ensure!(
        env.iter()
            .any(|e| e["name"] == "CONSORZIO_BACKUP_CREDENTIALS"
                && e["value"] == "consorzio/consorzio-backup-credentials"),
        "{env:?}"
    );
    let keys = all
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "consorzio-backup-credentials")
        .context("the keys' Role")?;
    ensure!(keys["metadata"]["namespace"] == "consorzio", "{keys}");
    ensure!(
        keys["rules"]
            == serde_json::json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]),
        "{keys}"
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
    // deploy/rbac: the chart's templates that `make manifests` renders there, each file from
    // its templates.
    for (file, templates) in [
        ("deploy/rbac/tenant-roles.yaml", &["tenant-roles.yaml"][..]),
        (
            "deploy/rbac/operator.yaml",
            &[
                "serviceaccount.yaml",
                "rbac.yaml",
                "admission-policies.yaml",
            ][..],
        ),
    ] {
        let mut args = vec!["template", "consorzio", CHART, "--namespace", "consorzio"];
        let paths: Vec<String> = templates.iter().map(|t| format!("templates/{t}")).collect();
        for path in &paths {
            args.extend(["--show-only", path.as_str()]);
        }
        ensure!(
            read(file)? == helm(&args)?,
            "{file} differs from the chart: run `make manifests`"
        );
    }
    Ok(())
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
            // Only a suspended comune's pods are deleted all at once (see the operator guard).
            let allowed = verb == "deletecollection" && resources == ["pods"];
            ensure!(
                allowed || !verbs.iter().any(|v| v == verb),
                "{verb} in {rule}"
            );
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

/// What a role's rules grant, by (group, resource).
fn grants(role: &Value) -> anyhow::Result<BTreeMap<(String, String), BTreeSet<String>>> {
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
    Ok(granted)
}

/// The kinds the operator manages are declared once (`controller::kinds`); its ClusterRole
/// grants each exactly the verbs the declaration says it needs (those of Velero's namespace, its
/// Role there), and beyond them only its own resources, Events and binding the tenant roles.
#[test]
fn operator_role_grants_exactly_what_the_declared_kinds_need() -> anyhow::Result<()> {
    let docs = template("consorzio", "consorzio", &[])?;
    let (role, backups) = operator_roles(&docs)?;
    ensure!(backups["metadata"]["namespace"] == "velero", "{backups}");
    let mut granted = grants(role)?;
    let mut in_velero = grants(backups)?;
    for kind in consorzio::controller::kinds::KINDS {
        let key = (kind.group.to_string(), kind.plural.to_string());
        let verbs = if kind.in_velero_namespace {
            ensure!(
                !granted.contains_key(&key),
                "{}: granted cluster-wide",
                kind.kind
            );
            in_velero.remove(&key).unwrap_or_default()
        } else {
            granted.remove(&key).unwrap_or_default()
        };
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
            "/pods",
            "apiextensions.k8s.io/customresourcedefinitions",
            "consorzio.io/municipalities",
            "consorzio.io/municipalities/status",
            "consorzio.io/sharedservices",
            "consorzio.io/sharedservices/status",
            "events.k8s.io/events",
            "rbac.authorization.k8s.io/clusterroles",
        ],
        "granted beyond the declared kinds"
    );
    // Beyond its Schedules, it reads the Backups they make (each comune's newest in its status).
    let read = BTreeSet::from(["list".to_string(), "watch".to_string()]);
    let backups_read = BTreeMap::from([(("velero.io".to_string(), "backups".to_string()), read)]);
    ensure!(
        in_velero == backups_read,
        "granted in Velero's namespace: {in_velero:?}"
    );
    Ok(())
}

/// `consorzio restore` runs with its user's credentials: the chart's Role for them, in Velero's
/// namespace, reads Backups and makes Restores, nothing else, and the chart binds it to no one
/// (least of all the operator, which never restores).
#[test]
fn the_restore_role_reads_backups_and_makes_restores_only() -> anyhow::Result<()> {
    let docs = template("consorzio", "consorzio", &[])?;
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "consorzio-restore")
        .context("the restore Role")?;
    ensure!(role["metadata"]["namespace"] == "velero", "{role}");
    let verbs = |list: &[&str]| list.iter().map(|v| v.to_string()).collect::<BTreeSet<_>>();
    let expected = BTreeMap::from([
        (
            ("velero.io".into(), "backups".into()),
            verbs(&["get", "list"]),
        ),
        (
            ("velero.io".into(), "restores".into()),
            verbs(&["get", "list", "create"]),
        ),
    ]);
    ensure!(grants(role)? == expected, "{role}");
    let bound = docs.iter().any(|d| {
        d["kind"].as_str().is_some_and(|k| k.ends_with("Binding"))
            && d["roleRef"]["name"] == "consorzio-restore"
    });
    ensure!(!bound, "the chart binds the restore Role");
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
