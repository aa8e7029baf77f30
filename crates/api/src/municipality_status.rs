//! What the operator reports of a comune: `Municipality.status`, with an entry per shared service
//! it gets (the service's instance, its certificate, its tenant) and its backups.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, conditions_schema, list_map};

/// What the operator observed of a comune.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MunicipalityStatus {
    /// The comune's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The official code shown by kubectl: the ISTAT code (IT) or the BFS number (CH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and the reasons behind it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Quota use of the namespace per resource (cpu, memory, storage, pods, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quota: BTreeMap<String, QuotaUsage>,
    /// The shared services this comune gets, one entry per service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "services_schema")]
    pub services: Vec<ServiceInstanceStatus>,
    /// Its backups, as Velero records them (when the platform has Velero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupState>,
}

/// A comune's backups: the policy in effect and the newest backup Velero completed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupState {
    /// When backups are taken (cron, UTC), as set or by its data classification.
    pub schedule: String,
    /// How many days each backup is kept.
    pub retention_days: i32,
    /// How old its newest successful backup may be: the longest interval between two runs of
    /// the schedule, and an hour for a run to finish (e.g. "25h0m"). Older: `BackedUp=False`.
    pub max_age: String,
    /// The newest backup that Velero completed without errors (its Backup's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful: Option<String>,
    /// When that backup completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
}

fn services_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    list_map::<ServiceInstanceStatus>(
        generator,
        "name",
        "The shared services this comune gets, one entry per SharedService.",
        None,
    )
}

/// How much of one resource a namespace may use and uses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct QuotaUsage {
    /// The limit.
    pub hard: Quantity,
    /// What is in use now.
    pub used: Quantity,
}

/// The state of one shared service's instance for a comune.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ServiceInstanceStatus {
    /// The SharedService's name.
    pub name: String,
    /// Pending, Ready, Updating, Failed or Suspended.
    pub phase: String,
    /// Where the comune reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The version (image tag or digest) the instance runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When Failed: what went wrong, where and why (the operator retries with backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The certificate of its host, when cert-manager issues it, as cert-manager reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateState>,
    /// Its space inside a Shared application, when the service has tenant Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<crate::TenantState>,
}

/// A host's certificate, as cert-manager reports it on its `Certificate`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateState {
    /// Whether a valid certificate is in its Secret (cert-manager's Ready condition).
    pub ready: bool,
    /// When the certificate in its Secret expires (cert-manager renews it before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When not ready: what cert-manager says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
