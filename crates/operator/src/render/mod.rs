//! Pure functions from custom resources to the Kubernetes objects that should exist for them.
//! No I/O: the controllers apply what these return, and `consorzio render` prints it.

#[cfg(test)]
mod apps;
pub mod backup;
pub mod certificate;
#[cfg(test)]
mod collisions;
pub mod database;
pub mod database_backup;
#[cfg(test)]
mod database_placement;
#[cfg(test)]
mod fixtures;
pub mod instance;
pub mod municipality;
mod network;
pub mod pod;
pub mod selection;
pub mod service;
pub mod service_namespace;
pub mod shared;
pub mod template;
pub mod tenant;

use std::collections::BTreeMap;

use kube::{
    Resource, ResourceExt,
    api::DynamicObject,
    core::{ApiResource, ObjectMeta},
};
use serde::Serialize;

pub use municipality::{
    comune_namespace, municipality_labels, namespace_name, render_municipality,
};

/// Marks every object the operator manages.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "consorzio");
/// Names the Municipality an object belongs to.
pub const MUNICIPALITY_LABEL: &str = "consorzio.io/municipality";
/// Set on a suspended comune's namespace: the operator may then stop its pods (the operator guard
/// lets it delete pods only there).
pub const SUSPENDED_LABEL: &str = "consorzio.io/suspended";
/// Set on a namespace (or volume) that the operator no longer manages but kept, so no data is lost.
pub const ORPHANED_LABEL: &str = "consorzio.io/orphaned";

/// Settings of the operator that shape what it renders.
#[derive(Clone, Debug)]
pub struct Config {
    /// Prefix of comuni's namespaces: `comune-` gives `comune-lugano`.
    pub namespace_prefix: String,
    /// Labels of the ingress controller's namespace, whose pods may reach every comune.
    pub ingress_namespace_labels: BTreeMap<String, String>,
    /// How many objects each controller reconciles at once. Bounds the requests in flight, and
    /// so the operator's memory and its load on the API server.
    pub concurrency: u16,
    /// Tolerations given to every application pod the operator creates (e.g. for a dedicated
    /// node pool).
    pub pod_tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// Address ranges a comune's internet egress never reaches, besides the private and
    /// special-purpose ones (e.g. the nodes' public addresses), IPv4 or IPv6.
    pub internet_egress_except: Vec<String>,
    /// The namespace of CloudNativePG's operator, which must reach its PostgreSQL servers.
    pub cnpg_namespace: String,
    /// The namespace of mariadb-operator, which must reach its MariaDB servers.
    pub mariadb_operator_namespace: String,
    /// The API server's addresses, which database servers reach (CloudNativePG's instance
    /// manager stops a primary that cannot): when empty, any address on ports 443 and 6443.
    pub api_server_cidrs: Vec<String>,
    /// The cert-manager ClusterIssuer of every host whose service names neither its own nor a
    /// TLS Secret: none, plain HTTP.
    pub cluster_issuer: Option<String>,
    /// Velero's namespace, where each comune's backup Schedule is made; none: no Schedules.
    pub velero_namespace: Option<String>,
    /// The platform's object store for the databases' own backups; none: no database backups.
    pub backup_store: Option<database_backup::BackupStore>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace_prefix: "comune-".into(),
            ingress_namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".into(),
                "ingress-nginx".into(),
            )]),
            concurrency: 16,
            pod_tolerations: vec![],
            internet_egress_except: vec![],
            cnpg_namespace: "cnpg-system".into(),
            mariadb_operator_namespace: "mariadb-operator".into(),
            api_server_cidrs: vec![],
            cluster_issuer: None,
            velero_namespace: Some("velero".into()),
            backup_store: None,
        }
    }
}

/// Whether `text` is an IPv4 or IPv6 address range, `address/prefix`.
pub fn is_cidr(text: &str) -> bool {
    let Some((address, bits)) = text.split_once('/') else {
        return false;
    };
    match (address.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(bits)) => bits <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(bits)) => bits <= 128,
        _ => false,
    }
}

/// A kind of another operator's (no Rust types): (group, version, kind, plural).
pub type Gvk = (&'static str, &'static str, &'static str, &'static str);

/// The API of another operator's kind.
pub fn api_resource((group, version, kind, plural): Gvk) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// One object to apply, with the API it belongs to.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// Group, version, kind and plural of the object.
    pub resource: ApiResource,
    /// The object, as it is applied.
    pub object: DynamicObject,
}

impl Rendered {
    /// Wraps a typed object.
    pub fn new<K>(object: &K) -> Result<Rendered, serde_json::Error>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let mut value = serde_json::to_value(object)?;
        value["apiVersion"] = resource.api_version.clone().into();
        value["kind"] = resource.kind.clone().into();
        Ok(Rendered {
            resource,
            object: serde_json::from_value(value)?,
        })
    }

    /// An object of another operator's kind (no Rust types): its name, namespace, labels and
    /// spec.
    pub fn custom(
        gvk: Gvk,
        name: &str,
        ns: &str,
        labels: &BTreeMap<String, String>,
        spec: serde_json::Value,
    ) -> Result<Rendered, serde_json::Error> {
        let resource = api_resource(gvk);
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": spec,
        }))?;
        Ok(Rendered { resource, object })
    }

    /// `Kind namespace/name`, for messages.
    pub fn describe(&self) -> String {
        let ns = self.object.namespace();
        describe(&self.resource.kind, ns.as_deref(), &self.object.name_any())
    }
}

/// `Kind namespace/name` (or `Kind name`), for messages.
pub fn describe(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Metadata of a managed object: its name, namespace and the labels that tie it to its owner.
pub(crate) fn managed_meta(
    name: &str,
    namespace: Option<&str>,
    owner_label: (&str, &str),
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(BTreeMap::from([
            (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
            (owner_label.0.to_string(), owner_label.1.to_string()),
        ])),
        ..Default::default()
    }
}

/// A label value made from free text: lowercase letters, digits and '-', at most 63 characters.
pub(crate) fn label_value(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'à' | 'á' | 'â' | 'ä' => 'a',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ò' | 'ó' | 'ô' | 'ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            c if c.is_ascii_alphanumeric() => c,
            _ => '-',
        };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    out.truncate(63);
    out.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_from_region_names() {
        assert_eq!(
            label_value("Valle d'Aosta/Vallée d'Aoste"),
            "valle-d-aosta-vallee-d-aoste"
        );
        assert_eq!(
            label_value("Friuli-Venezia Giulia"),
            "friuli-venezia-giulia"
        );
        assert_eq!(label_value("Lazio"), "lazio");
        assert_eq!(label_value("  "), "");
    }
}
