//! `SharedService`: one hosted application, offered to a set of comuni.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::ResourceRequirements,
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    app::{AppTemplate, KNOWN_PLACEHOLDERS_MESSAGE, KNOWN_PLACEHOLDERS_RULE, ReclaimPolicy},
    common::{Condition, conditions_schema, list_map},
    database::Database,
    tenant::TenantJobs,
};

/// CEL, on the spec: what a reference needs of the service (the settings keys that exist only
/// with a database, an ingress or Dedicated tenancy; the database Secret only with a database).
const NEEDS_RULE: &str = "!has(self.template.env) || self.template.env.all(e, !has(e.valueFrom) || (has(e.valueFrom.secretKeyRef) ? (e.valueFrom.secretKeyRef.name != 'database' || has(self.database)) : (!e.valueFrom.configMapKeyRef.key.startsWith('CONSORZIO_DB_') || has(self.database)) && (e.valueFrom.configMapKeyRef.key != 'CONSORZIO_URL' || has(self.ingress)) && (e.valueFrom.configMapKeyRef.key != 'CONSORZIO_MUNICIPALITY' || self.tenancy == 'Dedicated')))";
const NEEDS_MESSAGE: &str = "template.env[].valueFrom names what this service does not make: the database Secret and the CONSORZIO_DB_* settings need spec.database, CONSORZIO_URL needs spec.ingress, CONSORZIO_MUNICIPALITY needs tenancy Dedicated";

/// CEL, on the spec: what the tenant Jobs' references need of the service, as `NEEDS_RULE`
/// (a Shared service has no CONSORZIO_MUNICIPALITY: its Jobs have the placeholders instead).
macro_rules! tenant_needs_rule {
    ($stage:literal) => {
        concat!(
            "!has(self.tenantJobs) || !has(self.tenantJobs.", $stage, ") || !has(self.tenantJobs.", $stage, ".env) || self.tenantJobs.", $stage,
            ".env.all(e, !has(e.valueFrom) || (has(e.valueFrom.secretKeyRef) ? (e.valueFrom.secretKeyRef.name != 'database' || has(self.database)) : (!e.valueFrom.configMapKeyRef.key.startsWith('CONSORZIO_DB_') || has(self.database)) && (e.valueFrom.configMapKeyRef.key != 'CONSORZIO_URL' || has(self.ingress)) && e.valueFrom.configMapKeyRef.key != 'CONSORZIO_MUNICIPALITY'))"
        )
    };
}
const TENANT_NEEDS_MESSAGE: &str = "tenantJobs env valueFrom names what this service does not make: the database Secret and the CONSORZIO_DB_* settings need spec.database, CONSORZIO_URL needs spec.ingress, and a Shared service has no CONSORZIO_MUNICIPALITY (use the value \"{{ municipality.name }}\")";

/// The placeholders a template may use, filled from each comune's Municipality.
pub const PLACEHOLDERS: &[&str] = &[
    "name",
    "displayName",
    "namespace",
    "code",
    "country",
    "istatCode",
    "belfioreCode",
    "province",
    "region",
    "bfsNumber",
    "canton",
    "union",
];

/// An application hosted once by the consorzio and offered to a set of comuni.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "consorzio.io",
    version = "v1alpha1",
    kind = "SharedService",
    plural = "sharedservices",
    shortname = "ssvc",
    category = "consorzio",
    status = "SharedServiceStatus",
    derive = "PartialEq",
    doc = "An application hosted by the consorzio (GIS, website, document management, open data, ...) and offered to a set of comuni.",
    printcolumn(name = "Tenancy", type_ = "string", json_path = ".spec.tenancy"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.template.image"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredInstances"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyInstances"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 55 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label of at most 55 characters starting with a letter (lowercase letters, digits and '-'): it names the Service and the namespace shared-<name>"),
    validation = Rule::new("!self.metadata.name.endsWith('-db') && !self.metadata.name.contains('-db-')")
        .message("metadata.name may not end in -db or contain -db-: <service>-db names the service's database servers, and the database operators name their own objects after them (<service>-db-rw, <service>-db-root, ...)"),
)]
#[x_kube(
    validation = Rule::new("self.tenancy != 'Dedicated' || !has(self.ingress) || self.ingress.host.matches('[{][{] *municipality[.]name *[}][}]')")
        .message("ingress.host must contain {{ municipality.name }} when tenancy is Dedicated, so that every comune gets its own host, e.g. \"{{ municipality.name }}.gis.example.org\""),
    validation = Rule::new("self.tenancy != 'Shared' || !has(self.ingress) || !self.ingress.host.contains('{{')")
        .message("ingress.host cannot use placeholders when tenancy is Shared: one instance serves every comune, under one host"),
    validation = Rule::new("self.tenancy != 'Shared' || !has(self.template.env) || self.template.env.all(e, !has(e.value) || !e.value.contains('{{'))")
        .message("template.env values cannot use placeholders when tenancy is Shared: one instance serves every comune; each comune finds its tenant id in the access point's ConfigMap <service>-connection"),
    validation = Rule::new("!has(self.overrides) || !has(self.template.volumes) || self.template.volumes.all(v, v.accessMode == 'ReadWriteMany') || self.overrides.all(k, !has(self.overrides[k].replicas) || self.overrides[k].replicas <= 1)")
        .message("overrides[].replicas greater than 1 need every template volume ReadWriteMany: a ReadWriteOnce volume attaches to one node")
        .field_path(".overrides"),
    validation = Rule::new(NEEDS_RULE).message(NEEDS_MESSAGE).field_path(".template.env"),
    validation = Rule::new("self.tenancy == 'Shared' || !has(self.tenantJobs)")
        .message("tenantJobs apply to Shared services only: a Dedicated instance is the comune's alone")
        .field_path(".tenantJobs"),
    validation = Rule::new(tenant_needs_rule!("onboarding")).message(TENANT_NEEDS_MESSAGE).field_path(".tenantJobs.onboarding.env"),
    validation = Rule::new(tenant_needs_rule!("offboarding")).message(TENANT_NEEDS_MESSAGE).field_path(".tenantJobs.offboarding.env"),
    validation = Rule::new("self.tenancy != 'Shared' || !has(self.overrides) || size(self.overrides) == 0")
        .message("overrides apply to Dedicated services only: a Shared service runs one instance for every comune"),
)]
#[serde(rename_all = "camelCase")]
pub struct SharedServiceSpec {
    /// The application's name as people know it, e.g. "SIT - territorial GIS".
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,

    /// What the application is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Dedicated: one instance in each comune's namespace. Shared: one instance in the namespace
    /// shared-<name>, with an access point in each comune's namespace. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenancy cannot be changed: create a new SharedService instead"))]
    pub tenancy: Tenancy,

    /// Which comuni get the service: those matching the selector and those named.
    pub municipalities: MunicipalitySelection,

    /// The application: its container, settings and storage.
    pub template: AppTemplate,

    /// A database for each instance (see `Database` for where it lives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<Database>,

    /// What happens to a comune's data (its volumes and its database) when the comune stops
    /// getting the service or the SharedService is deleted: Retain (default) keeps it, labelled
    /// consorzio.io/orphaned; Delete removes it.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,

    /// How comuni reach the application over HTTP(S).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressTemplate>,

    /// How changes of the template reach the comuni.
    #[serde(default)]
    pub rollout: Rollout,

    /// Per-comune changes to the template, keyed by the comune's (Municipality's) name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 1000))]
    pub overrides: BTreeMap<String, Override>,

    /// Scales every instance to zero while keeping its data.
    #[serde(default)]
    pub suspended: bool,

    /// Shared services only: commands run for each comune when it joins and when it leaves,
    /// e.g. to make and remove its workspace, organisation or realm in the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_jobs: Option<TenantJobs>,
}

/// Where the instances of a service run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Tenancy {
    /// One instance in each selected comune's namespace.
    Dedicated,
    /// One instance in the namespace shared-<name>, reachable only from the selected comuni.
    Shared,
}

/// Which comuni get a service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.selector) || (has(self.names) && size(self.names) > 0)")
    .message("municipalities needs a selector, a list of names, or both"))]
pub struct MunicipalitySelection {
    /// Selects Municipalities by label. Besides their own labels, every Municipality carries
    /// consorzio.io/country, consorzio.io/union, consorzio.io/region, consorzio.io/province and
    /// consorzio.io/canton from its spec, e.g. matchLabels: {consorzio.io/union: alto-sangro}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Municipalities by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 10000),
        inner(length(max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub names: Vec<String>,
}

/// How comuni reach the application over HTTP(S). TLS comes from a certificate that
/// cert-manager issues for each host (`clusterIssuer`, or the operator's `--cluster-issuer`), or
/// from a Secret someone else provides (`tlsSecretName`); plain HTTP with neither.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.clusterIssuer) || !has(self.tlsSecretName)")
        .message("ingress: set clusterIssuer (cert-manager issues each host's certificate) or tlsSecretName (a Secret you provide in every instance's namespace), not both"),
)]
pub struct IngressTemplate {
    /// The host name; may use placeholders, e.g. "{{ municipality.name }}.sit.example.org".
    /// With Dedicated tenancy it must contain {{ municipality.name }}.
    #[x_kube(validation = Rule::new(KNOWN_PLACEHOLDERS_RULE).message(KNOWN_PLACEHOLDERS_MESSAGE))]
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// The IngressClass to use; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// The cert-manager ClusterIssuer that issues each host's certificate: the operator makes a
    /// `Certificate` per instance, whose Secret `<service>-tls` the Ingress serves. The
    /// operator's `--cluster-issuer` when unset. Only a ClusterIssuer: a namespaced Issuer would
    /// be looked up in each comune's namespace, where the comune's admins could make their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub cluster_issuer: Option<String>,
    /// A Secret holding the host's TLS certificate, made by someone else in each instance's
    /// namespace; the operator then requests no certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,
}

/// How template changes reach the comuni: in waves, never all at once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// How many comuni may be updating at once: a number (e.g. 1) or a share of the comuni
    /// served (e.g. "10%", rounded up). The next wave starts when this one is Available.
    #[serde(default = "default_max_unavailable")]
    #[x_kube(validation = Rule::new("string(self).matches('^([1-9][0-9]*|(100|[1-9][0-9]?)%)$')").message("maxUnavailable must be a whole number of at least 1, or a percentage from 1% to 100%"))]
    pub max_unavailable: IntOrString,
    /// Seconds a wave may take to become Available before the rollout halts.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: i32,
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}
fn default_progress_deadline() -> i32 {
    600
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            max_unavailable: default_max_unavailable(),
            progress_deadline_seconds: default_progress_deadline(),
        }
    }
}

/// Changes to the template for one comune.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Override {
    /// Pods of this comune's instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    /// Requests and limits of this comune's instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Variables added to, or replacing, the template's, as name: value. Values may use the
    /// same placeholders as the template; an unknown one makes the service InvalidTemplate.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 32))]
    pub env: BTreeMap<String, String>,
}

/// What the operator observed of a service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedServiceStatus {
    /// The generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many comuni should have an instance (1 for a Shared service's own instance).
    #[serde(default)]
    pub desired_instances: i32,
    /// How many of those instances are Available.
    #[serde(default)]
    pub ready_instances: i32,
    /// `Ready`, `RolloutHalted` and the reasons behind them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Progress of the latest template change across comuni.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Up to 20 comuni whose instance is not ready, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "not_ready_schema")]
    pub not_ready: Vec<NotReady>,
}

fn not_ready_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    list_map::<NotReady>(
        generator,
        "municipality",
        "Up to 20 comuni whose instance is not ready, with the reason.",
        Some(20),
    )
}

/// Progress of a template change.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The version being rolled out: the image tag or digest and a hash of the template.
    pub target_version: String,
    /// How many comuni run the target version.
    pub updated: i32,
    /// How many comuni the rollout covers.
    pub total: i32,
}

/// A comune whose instance is not ready.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct NotReady {
    /// The Municipality's name.
    pub municipality: String,
    /// Why, e.g. "Progressing", "QuotaExceeded", "Unavailable".
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_rule_allows_exactly_the_documented_placeholders() {
        let alternation = format!("({})", PLACEHOLDERS.join("|"));
        assert!(
            KNOWN_PLACEHOLDERS_RULE.contains(&alternation),
            "KNOWN_PLACEHOLDERS_RULE must list {alternation}"
        );
        for p in PLACEHOLDERS {
            assert!(
                KNOWN_PLACEHOLDERS_MESSAGE.contains(p),
                "message must name {p}"
            );
        }
    }
}
