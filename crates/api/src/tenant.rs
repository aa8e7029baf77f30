//! A Shared service's tenant Jobs: what makes each comune's own space inside the shared
//! application (a workspace, an organisation, a realm) when it joins, and removes it when it
//! leaves.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::app::{EnvVar, PINNED_IMAGE_RULE};

/// Commands run once for each comune, as a Job in the Shared service's namespace, beside its
/// instance, under Pod Security `restricted`. A Job is named from a hash of its inputs: a change
/// of them runs it again, a restart of the operator never does. A failed Job is retried
/// `retries` times, then reported on the comune's entry; delete it to run it again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.onboarding) || has(self.offboarding)")
    .message("tenantJobs needs onboarding, offboarding or both"))]
pub struct TenantJobs {
    /// Run when a comune starts getting the service: makes its space in the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onboarding: Option<TenantJob>,
    /// Run when a comune stops getting the service, before its access point goes (at most
    /// `timeoutSeconds` later, done or not): removes its space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offboarding: Option<TenantJob>,
    /// How many times a failed run is tried again (the Job's backoffLimit).
    #[serde(default = "two")]
    #[schemars(range(min = 0, max = 6))]
    pub retries: i32,
    /// How many comuni's onboarding Jobs run at once (more wait for a slot), so that a service
    /// offered to hundreds of comuni at once does not swamp its application.
    #[serde(default = "ten")]
    #[schemars(range(min = 1, max = 100))]
    pub parallelism: i32,
    /// How long a Job may take, its retries included, before it fails.
    #[serde(default = "ten_minutes")]
    #[schemars(range(min = 30, max = 3600))]
    pub timeout_seconds: i64,
}

fn two() -> i32 {
    2
}

fn ten() -> i32 {
    10
}

fn ten_minutes() -> i64 {
    600
}

/// One command, run for one comune.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantJob {
    /// The container image, with a tag or a digest; by default the template's (which has the
    /// application's own tools: kcadm.sh in Keycloak, curl in GeoServer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new(PINNED_IMAGE_RULE)
            .message("image must carry a tag (not latest) or a digest, e.g. docker.io/curlimages/curl:8.11.0")
    )]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// What it runs, e.g. ["sh", "-c", "..."]; `$(NAME)` is the variable NAME of `env`. It must
    /// be idempotent: it may run again (a retry, new inputs).
    #[schemars(length(min = 1, max = 32))]
    pub command: Vec<String>,
    /// Its variables, as the template's: a literal value with the comune's placeholders (e.g.
    /// "{{ municipality.name }}"), or `valueFrom` a key of the instance's own Secret or
    /// ConfigMap (`credentials`, `database`, `settings`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub env: Vec<EnvVar>,
}

/// Whether a comune's space in a Shared application is there, as its tenant Jobs say.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantState {
    /// Provisioned (its onboarding Job completed), Pending (not yet, or not run yet) or Failed
    /// (out of retries).
    pub phase: String,
    /// The Job, in the service's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When Failed: the Job's reason and message; when Pending: what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
