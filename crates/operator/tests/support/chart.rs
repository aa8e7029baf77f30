//! The Helm chart, rendered by the cluster's helm in the repository root.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, ensure};
use consorzio_testkit::{Cluster, yaml_documents};
use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub const CHART: &str = "charts/consorzio";
pub const EVERY_TOGGLE: &str = "serviceMonitor.enabled=true,prometheusRule.enabled=true,\
    grafanaDashboard.enabled=true,operator.databaseBackups.objectStore=s3://backups/consorzio";

/// Runs the cluster's helm in the repository root and returns its standard output.
pub fn helm(args: &[&str]) -> anyhow::Result<String> {
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

pub fn template(release: &str, namespace: &str, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec!["template", release, CHART, "--namespace", namespace];
    args.extend(extra);
    yaml_documents(&helm(&args)?)
}

/// The operator's ClusterRole and its Role in Velero's namespace (backup Schedules), as the
/// chart's default release renders them.
pub fn operator_roles(docs: &[Value]) -> anyhow::Result<(&Value, &Value)> {
    let named = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .with_context(|| format!("the chart's {kind} {name}"))
    };
    Ok((
        named("ClusterRole", "consorzio-operator")?,
        named("Role", "consorzio-backups")?,
    ))
}

pub fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_string))
        .collect()
}

pub fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(root().join(path)).with_context(|| format!("reading {path}"))
}

/// The strings of a list in a rule (`verbs`, `resources`…).
pub fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}
