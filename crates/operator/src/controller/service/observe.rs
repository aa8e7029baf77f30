//! What a pass reads of an instance: the state of its Deployment, from the cache.

use std::sync::Arc;

use consorzio_api::SharedService;
use k8s_openapi::api::apps::v1::DeploymentStatus;
use kube::ResourceExt;
use serde::Deserialize;

use super::super::{Cached, Context, kinds};
use crate::render::service::{CREDENTIALS_ANNOTATION, VERSION_ANNOTATION};

/// The state of a comune's instance, read from the cached Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum InstanceState {
    /// Not created yet.
    Missing,
    /// Runs an older template.
    Outdated,
    /// Runs the target template but is not Available yet.
    Progressing,
    /// Did not become Available within the progress deadline.
    Stalled,
    /// The quota refuses its pods.
    QuotaExceeded,
    /// Runs the target template, every replica available.
    Available,
}

/// The cached Deployment of the service's instance in a namespace.
fn deployment(s: &SharedService, ns: &str, ctx: &Context) -> Option<Arc<Cached>> {
    ctx.caches.get(&kinds::DEPLOYMENT, Some(ns), &s.name_any())
}

/// What a pass reads of an instance's Deployment besides its metadata.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Progress {
    spec: Replicas,
    status: DeploymentStatus,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Replicas {
    replicas: Option<i32>,
}

/// The state of the instance in `ns`, which should run template `version`.
pub fn instance_state(s: &SharedService, ns: &str, version: &str, ctx: &Context) -> InstanceState {
    let Some(d) = deployment(s, ns, ctx) else {
        return InstanceState::Missing;
    };
    if d.annotation(VERSION_ANNOTATION) != Some(version) {
        return InstanceState::Outdated;
    }
    ctx.instance_states.get(&d, progress)
}

/// How far a Deployment that runs the target template has come.
fn progress(d: &Cached) -> InstanceState {
    let Progress { spec, status } = d.read().unwrap_or_default();
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let wanted = spec.replicas.unwrap_or(1);
    let current = status.observed_generation == d.generation();
    if current
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.available_replicas.unwrap_or(0) >= wanted
        && status.replicas.unwrap_or(0) == wanted
    {
        return InstanceState::Available;
    }
    if conditions.iter().any(|c| {
        c.type_ == "ReplicaFailure"
            && c.message
                .as_deref()
                .is_some_and(|m| m.contains("exceeded quota"))
    }) {
        return InstanceState::QuotaExceeded;
    }
    if conditions.iter().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return InstanceState::Stalled;
    }
    InstanceState::Progressing
}

/// Whether some pod of the instance in `ns` is available, whatever its version.
pub fn serving(s: &SharedService, ns: &str, ctx: &Context) -> bool {
    deployment(s, ns, ctx)
        .and_then(|d| d.read::<Progress>())
        .and_then(|p| p.status.available_replicas)
        .unwrap_or(0)
        > 0
}

/// Whether the instance in `ns` has had its credentials created (its cached Deployment says so).
pub fn has_credentials(s: &SharedService, ns: &str, ctx: &Context) -> bool {
    deployment(s, ns, ctx).is_some_and(|d| d.annotation(CREDENTIALS_ANNOTATION).is_some())
}
