//! A SharedService's application: its container, settings, volumes and the processes beside it.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::ResourceRequirements, apimachinery::pkg::api::resource::Quantity,
};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CEL: `self` is an image with a tag other than latest, or a digest (a sidecar's, a tenant Job's).
pub(crate) const PINNED_IMAGE_RULE: &str = "self.matches('^[^\\\\s@]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$') && !self.endsWith(':latest')";

/// CEL: every `{{ … }}` in `self` is one of [`crate::PLACEHOLDERS`] (one regular expression, so
/// its cost stays linear in the length of the text). Kept in sync by a unit test.
pub(crate) const KNOWN_PLACEHOLDERS_RULE: &str = "self.matches('^([^{]|[{][^{]|[{][{] *municipality[.](name|displayName|namespace|code|country|istatCode|belfioreCode|province|region|bfsNumber|canton|union) *[}][}])*[{]?$')";
pub(crate) const KNOWN_PLACEHOLDERS_MESSAGE: &str = "unknown placeholder: use {{ municipality.<field> }} with field one of name, displayName, namespace, code, country, istatCode, belfioreCode, province, region, bfsNumber, canton, union";

/// The keys of an instance's settings ConfigMap (`<service>-settings`), which a template's env
/// may read with `valueFrom.configMapKeyRef`: the service, the comune (Dedicated only), the
/// public URL (with an ingress) and, with a database, where it is and whose it is.
pub const SETTINGS_KEYS: &[&str] = &[
    "CONSORZIO_SERVICE",
    "CONSORZIO_MUNICIPALITY",
    "CONSORZIO_URL",
];
/// The settings keys that say where an instance's database is (with `spec.database`): host,
/// port, `host:port`, database name and user name.
pub const DATABASE_SETTINGS_KEYS: &[&str] = &[
    "CONSORZIO_DB_HOST",
    "CONSORZIO_DB_PORT",
    "CONSORZIO_DB_ADDRESS",
    "CONSORZIO_DB_NAME",
    "CONSORZIO_DB_USER",
];
/// The key of an instance's generated password in its credentials Secret
/// (`<service>-credentials`).
pub const CREDENTIALS_KEY: &str = "CONSORZIO_PASSWORD";
/// The keys of an instance's database Secret (`<service>-database`, type
/// `kubernetes.io/basic-auth`, read by the database operator and the application alike).
pub const DATABASE_SECRET_KEYS: &[&str] = &["username", "password"];

/// The application's container, settings and storage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.replicas <= 1 || !has(self.volumes) || self.volumes.all(v, v.accessMode == 'ReadWriteMany')")
        .message("replicas greater than 1 need every volume ReadWriteMany: a ReadWriteOnce volume attaches to one node, so the other replicas could never start; set template.replicas to 1, or the volumes' accessMode to ReadWriteMany where the storage class offers it")
        .field_path(".replicas"),
    validation = Rule::new("!has(self.sidecars) || self.sidecars.all(c, self.sidecars.exists_one(d, d.name == c.name))")
        .message("template.sidecars: each sidecar needs a name of its own"),
)]
pub struct AppTemplate {
    /// The container image, with a tag or a digest, e.g. "docker.io/kartoza/geoserver:2.26.1".
    #[x_kube(
        validation = Rule::new("self.matches('^[^\\\\s@]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$')")
            .message("image must carry a tag or a digest, e.g. docker.io/library/nginx:1.27 or nginx@sha256:<64 hex digits>"),
        validation = Rule::new("!self.endsWith(':latest')")
            .message("image must not use the tag latest: pin a version, so that rollouts can tell versions apart")
    )]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// The port the application listens on. Below 1024 the pod lets its non-root user bind it
    /// (the sysctl net.ipv4.ip_unprivileged_port_start=0, allowed by Pod Security `restricted`).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Pods per instance. More than one needs every volume ReadWriteMany.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// Environment variables: a literal `value` (which may use placeholders filled from each
    /// comune, e.g. "{{ municipality.name }}"), or `valueFrom` a key of an object the operator
    /// makes for the instance, named by what it is: the Secret `credentials` (key
    /// CONSORZIO_PASSWORD), the Secret `database` (keys username, password; with
    /// spec.database) or the ConfigMap `settings` (keys CONSORZIO_SERVICE,
    /// CONSORZIO_MUNICIPALITY, CONSORZIO_URL and, with spec.database, CONSORZIO_DB_HOST,
    /// CONSORZIO_DB_PORT, CONSORZIO_DB_ADDRESS, CONSORZIO_DB_NAME, CONSORZIO_DB_USER). The
    /// operator names them `<service>-credentials`, `<service>-database`, `<service>-settings`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,

    /// CPU and memory requests and limits of the application's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Health checks over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,

    /// Persistent volumes, one claim each per instance (`<service>-<name>`). The application's
    /// user owns what it finds at the mount path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "volumes_schema")]
    pub volumes: Vec<Volume>,

    /// Paths the application writes to but need not keep (e.g. /tmp, /run): an empty directory
    /// each, for the pod's life.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(regex(pattern = "^/[^:]*$"), length(max = 1024))
    )]
    pub scratch: Vec<String>,

    /// The user and groups the application runs as (never root), for images that expect their
    /// own (e.g. www-data, 33). Every other setting of Pod Security `restricted` stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<AppSecurityContext>,

    /// Processes beside the application, in the same pod, with its user and volumes: by default
    /// its image, settings and secrets (e.g. a scheduler loop that runs its background jobs), or
    /// another program's image (e.g. a search index on localhost) with only its own env.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub sidecars: Vec<Sidecar>,

    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,

    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

fn one() -> i32 {
    1
}

/// Volumes are a list-map by name, so that each is compared with its earlier self (a claim's
/// access mode and class cannot change).
fn volumes_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    crate::common::list_map::<Volume>(
        generator,
        "name",
        "Persistent volumes, one claim each per instance (<service>-<name>). The application's user owns what it finds at the mount path.",
        Some(4),
    )
}

/// An environment variable of the application: a literal value, or a key of one of the
/// instance's own Secrets or ConfigMaps (Kubernetes' own field names).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)")
    .message("an env entry has either value or valueFrom, not both and not neither"))]
pub struct EnvVar {
    /// The variable's name: letters, digits, '_', '.' and '-', not starting with a digit.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = "^[A-Za-z_][A-Za-z0-9_.-]*$")
    )]
    pub name: String,
    /// The value; may use placeholders such as {{ municipality.name }}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(KNOWN_PLACEHOLDERS_RULE).message(KNOWN_PLACEHOLDERS_MESSAGE))]
    #[schemars(length(max = 1024))]
    pub value: Option<String>,
    /// A key of the instance's own Secret or ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

impl EnvVar {
    /// A variable with a literal value.
    pub fn literal(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }
}

/// Where a variable's value comes from: exactly one of the two, each an object the operator
/// makes for the instance, named by what it is (`credentials`, `database`, `settings`): the
/// operator names them `<service>-<name>` in the instance's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretKeyRef) != has(self.configMapKeyRef)")
    .message("valueFrom names either secretKeyRef or configMapKeyRef"))]
pub struct EnvVarSource {
    /// A key of the instance's Secret `credentials` (CONSORZIO_PASSWORD) or `database`
    /// (username, password; with spec.database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// A key of the instance's ConfigMap `settings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeyRef>,
}

/// A key of one of the instance's Secrets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(SECRET_REF_RULE).message(SECRET_REF_MESSAGE))]
pub struct SecretKeyRef {
    /// `credentials` or `database`.
    #[schemars(length(min = 1, max = 16))]
    pub name: String,
    /// The key.
    #[schemars(length(min = 1, max = 32))]
    pub key: String,
}

/// CEL: a Secret the operator makes for an instance, and a key it has.
const SECRET_REF_RULE: &str = "(self.name == 'credentials' && self.key == 'CONSORZIO_PASSWORD') || (self.name == 'database' && self.key in ['username', 'password'])";
const SECRET_REF_MESSAGE: &str = "secretKeyRef names one of the instance's own Secrets: credentials (key CONSORZIO_PASSWORD) or, with spec.database, database (keys username, password)";

/// A key of the instance's settings ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(SETTINGS_REF_RULE).message(SETTINGS_REF_MESSAGE))]
pub struct ConfigMapKeyRef {
    /// `settings`.
    #[schemars(length(min = 1, max = 16))]
    pub name: String,
    /// The key.
    #[schemars(length(min = 1, max = 32))]
    pub key: String,
}

/// CEL: the settings ConfigMap, and a key it may have (whether it has it: `spec`'s rules).
const SETTINGS_REF_RULE: &str = "self.name == 'settings' && self.key in ['CONSORZIO_SERVICE', 'CONSORZIO_MUNICIPALITY', 'CONSORZIO_URL', 'CONSORZIO_DB_HOST', 'CONSORZIO_DB_PORT', 'CONSORZIO_DB_ADDRESS', 'CONSORZIO_DB_NAME', 'CONSORZIO_DB_USER']";
const SETTINGS_REF_MESSAGE: &str = "configMapKeyRef names the instance's settings (name: settings) and one of its keys: CONSORZIO_SERVICE, CONSORZIO_MUNICIPALITY (Dedicated), CONSORZIO_URL (with an ingress), and with spec.database CONSORZIO_DB_HOST, CONSORZIO_DB_PORT, CONSORZIO_DB_ADDRESS, CONSORZIO_DB_NAME, CONSORZIO_DB_USER";

/// The object a reference names: `<service>-<name>`.
pub fn referenced_object(service: &str, name: &str) -> String {
    format!("{service}-{name}")
}

/// HTTP health checks. The container gets five minutes to start (a startup probe), then is
/// restarted after a minute of failures and taken out of its Service after one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    /// The HTTP path answering 2xx or 3xx when the application is healthy, e.g. "/healthz".
    #[schemars(regex(pattern = "^/"), length(max = 1024))]
    pub path: String,
    /// The port to probe; the application's port when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// The Host header the probe sends, for applications that answer only their trusted
    /// domains (e.g. "localhost").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub host: Option<String>,
}

/// A persistent volume of the application.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// The volume's name: its claim is `<service>-<name>`, e.g. "data". Lowercase letters and
    /// digits only, so that no two services' claims can have the same name.
    #[schemars(length(min = 1, max = 20), regex(pattern = "^[a-z][a-z0-9]*$"))]
    pub name: String,
    /// The volume's size, e.g. "10Gi".
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))").message("volumes[].size must be a positive quantity, e.g. 10Gi"))]
    pub size: Quantity,
    /// Where the volume is mounted in the container, e.g. "/var/www/html".
    #[schemars(regex(pattern = "^/[^:]*$"), length(max = 1024))]
    pub mount_path: String,
    /// ReadWriteOnce (the default): one node at a time, so the instance runs one replica and is
    /// replaced by stopping the old pod first. ReadWriteMany: any number of replicas, where the
    /// storage class offers it (e.g. NFS or CephFS). Cannot change: a claim's cannot.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("a volume's accessMode cannot change (its claims' cannot): add a volume with another name"))]
    pub access_mode: AccessMode,
    /// The StorageClass; the cluster's default when unset. Cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("a volume's storageClassName cannot change (its claims' cannot): add a volume with another name"))]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
}

/// How many nodes may mount a volume at once.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    /// One node.
    #[default]
    ReadWriteOnce,
    /// Many nodes.
    ReadWriteMany,
}

/// The application's user and groups: any but root.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppSecurityContext {
    /// The user id (10001 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub run_as_user: Option<i64>,
    /// The primary group id (the user id when unset; 0 for images that share files with
    /// group root, as OpenShift-ready images do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_group: Option<i64>,
    /// The group that owns the volumes (the user id when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub fs_group: Option<i64>,
}

/// A process beside the application, in its pod: it shares the pod's network (localhost),
/// user and volumes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct Sidecar {
    /// The container's name.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = "^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Another program's image (e.g. a search index or a cache the application needs on
    /// localhost), with a tag or a digest. Unset: the application's image, with its settings and
    /// secrets. With an image of its own it gets neither: only its `env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new(PINNED_IMAGE_RULE)
            .message("sidecars[].image must carry a tag other than latest, or a digest")
    )]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// What it runs, e.g. ["sh", "-c", "while true; do php -f cron.php; sleep 300; done"].
    #[schemars(length(min = 1, max = 32))]
    pub command: Vec<String>,
    /// Literal environment variables of its own, e.g. {"SOLR_JETTY_HOST": "127.0.0.1"}.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "sidecar_env_schema")]
    pub env: BTreeMap<String, String>,
    /// Its CPU and memory; the namespace's defaults when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// A sidecar's env: at most 32 literal values (bounded, so that the API server can cost the rule).
fn sidecar_env_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Literal environment variables of its own, e.g. {\"SOLR_JETTY_HOST\": \"127.0.0.1\"}.",
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": {"type": "string", "maxLength": 1024},
        "x-kubernetes-validations": [
            {
                "rule": "self.all(k, size(k) <= 128 && k.matches('^[A-Za-z_][A-Za-z0-9_.-]*$'))",
                "message": "sidecars[].env names are letters, digits, '_', '.' and '-', not starting with a digit, at most 128 characters",
            },
            {
                "rule": "self.all(k, !self[k].contains('{{'))",
                "message": "sidecars[].env values are literal: placeholders are filled in template.env only",
            },
        ],
    })
}

/// What happens to a comune's data (its volumes and database) when the comune stops getting
/// the service or the SharedService is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReclaimPolicy {
    /// Keep it, labelled consorzio.io/orphaned (the default).
    #[default]
    Retain,
    /// Delete it with the instance.
    Delete,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference rules allow exactly the keys the operator writes.
    #[test]
    fn reference_rules_know_every_key_the_operator_writes() {
        for key in SETTINGS_KEYS.iter().chain(DATABASE_SETTINGS_KEYS) {
            assert!(SETTINGS_REF_RULE.contains(&format!("'{key}'")), "{key}");
            assert!(SETTINGS_REF_MESSAGE.contains(key), "{key}");
        }
        for key in DATABASE_SECRET_KEYS.iter().chain([&CREDENTIALS_KEY]) {
            assert!(SECRET_REF_RULE.contains(&format!("'{key}'")), "{key}");
            assert!(SECRET_REF_MESSAGE.contains(key), "{key}");
        }
    }
}
