//! What a Municipality becomes: its namespace, quota, limits, network policies and role bindings.

use std::collections::BTreeMap;

use consorzio_api::{Country, Municipality, Subject, SubjectKind};
use k8s_openapi::{
    api::{
        core::v1::{
            LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
        },
        rbac::v1::{RoleBinding, RoleRef, Subject as RbacSubject},
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::ResourceExt;

use super::{
    Config, MANAGED_BY, MUNICIPALITY_LABEL, ORPHANED_LABEL, Rendered, SUSPENDED_LABEL, label_value,
    managed_meta, network,
};

/// Name of the ClusterRole bound to a comune's admins.
pub const ADMIN_CLUSTER_ROLE: &str = "consorzio-municipality-admin";
/// Name of the ClusterRole bound to a comune's viewers.
pub const VIEWER_CLUSTER_ROLE: &str = "consorzio-municipality-viewer";
const ADMINS_BINDING: &str = "consorzio-admins";
const VIEWERS_BINDING: &str = "consorzio-viewers";

/// The namespace of a comune: the prefix and its name, e.g. `comune-lugano`.
pub fn namespace_name(m: &Municipality, config: &Config) -> String {
    comune_namespace(&m.name_any(), config)
}

/// The namespace of the comune named `comune`.
pub fn comune_namespace(comune: &str, config: &Config) -> String {
    format!("{}{comune}", config.namespace_prefix)
}

/// The labels that describe a comune, from its spec.
const DESCRIBING: [&str; 7] = [
    MUNICIPALITY_LABEL,
    "consorzio.io/country",
    "consorzio.io/data-classification",
    "consorzio.io/region",
    "consorzio.io/province",
    "consorzio.io/canton",
    "consorzio.io/union",
];

/// One of the labels that describe a comune, from its spec (`None`: not one of them, or unset).
pub fn municipality_label(m: &Municipality, key: &str) -> Option<String> {
    let spec = &m.spec;
    let value = match key {
        MUNICIPALITY_LABEL => m.name_any(),
        "consorzio.io/country" => format!("{:?}", spec.country),
        "consorzio.io/data-classification" => {
            label_value(&format!("{:?}", spec.data_classification))
        }
        "consorzio.io/region" => label_value(spec.region.as_deref()?),
        "consorzio.io/province" => spec.province.clone()?,
        "consorzio.io/canton" => format!("{:?}", spec.canton?),
        "consorzio.io/union" => spec.union.clone()?,
        _ => return None,
    };
    Some(value).filter(|v| !v.is_empty())
}

/// Labels that describe a comune, from its spec: they go on its namespace, and SharedService
/// selectors match them (besides the Municipality's own labels).
pub fn municipality_labels(m: &Municipality) -> BTreeMap<String, String> {
    DESCRIBING
        .iter()
        .filter_map(|key| Some((key.to_string(), municipality_label(m, key)?)))
        .collect()
}

/// The official code shown by kubectl: the ISTAT code in Italy, the BFS number in Switzerland.
pub fn official_code(m: &Municipality) -> Option<String> {
    match m.spec.country {
        Country::IT => m.spec.istat_code.clone(),
        Country::CH => m.spec.bfs_number.map(|n| n.to_string()),
    }
}

/// Every object that should exist for a comune. `orphaned` renders the namespace as it is left
/// behind after the Municipality is deleted with `deletionPolicy: Retain`.
pub fn render_municipality(
    m: &Municipality,
    config: &Config,
) -> Result<Vec<Rendered>, serde_json::Error> {
    let ns = namespace_name(m, config);
    let owner = (MUNICIPALITY_LABEL, m.name_any());
    let owner = (owner.0, owner.1.as_str());
    let mut out = vec![
        Rendered::new(&render_namespace(m, config, false))?,
        Rendered::new(&render_quota(m, &ns, owner))?,
        Rendered::new(&render_limit_range(&ns, owner))?,
    ];
    for policy in
        network::render_network_policies(m.spec.network.allow_internet_egress, &ns, config, owner)
    {
        out.push(Rendered::new(&policy)?);
    }
    let bindings = [
        (ADMINS_BINDING, ADMIN_CLUSTER_ROLE, &m.spec.access.admins),
        (VIEWERS_BINDING, VIEWER_CLUSTER_ROLE, &m.spec.access.viewers),
    ];
    for (name, role, subjects) in bindings {
        if !subjects.is_empty() {
            out.push(Rendered::new(&render_role_binding(
                name, &ns, role, subjects, owner,
            ))?);
        }
    }
    if let Some(velero) = &config.velero_namespace {
        out.push(super::backup::render_backup_schedule(m, config, velero)?);
    }
    Ok(out)
}

/// Namespace labels that enforce (and audit, and warn of) Pod Security `restricted`.
pub(super) fn pod_security_restricted() -> impl Iterator<Item = (String, String)> {
    ["enforce", "audit", "warn"].into_iter().map(|mode| {
        (
            format!("pod-security.kubernetes.io/{mode}"),
            "restricted".to_string(),
        )
    })
}

/// The comune's namespace: labelled with the comune's fields and Pod Security `restricted`. It has
/// no owner reference: it holds the comune's data, which only the operator deletes, under
/// `deletionPolicy: Delete` (a finalizer removed by hand must not let the garbage collector
/// delete it). The labels say whose it is; only the operator can set them (the label guard).
pub fn render_namespace(m: &Municipality, config: &Config, orphaned: bool) -> Namespace {
    let mut labels = municipality_labels(m);
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.extend(pod_security_restricted());
    let mut namespace = Namespace {
        metadata: kube::core::ObjectMeta {
            name: Some(namespace_name(m, config)),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    if orphaned {
        namespace
            .labels_mut()
            .insert(ORPHANED_LABEL.into(), "true".into());
    } else if m.spec.suspended {
        namespace
            .labels_mut()
            .insert(SUSPENDED_LABEL.into(), "true".into());
    }
    namespace
}

fn quantity(text: &str) -> Quantity {
    Quantity(text.to_string())
}

/// How many objects of each kind a comune's admins can create (`deploy/rbac/tenant-roles.yaml`)
/// its namespace may hold, besides pods (from the spec): every kind they create in numbers is
/// counted, so no comune can fill the API server's storage.
pub const OBJECT_COUNTS: &[(&str, &str)] = &[
    ("persistentvolumeclaims", "50"),
    ("services", "50"),
    ("configmaps", "200"),
    ("secrets", "200"),
    ("count/serviceaccounts", "50"),
    ("count/deployments.apps", "50"),
    ("count/statefulsets.apps", "20"),
    ("count/jobs.batch", "100"),
    ("count/cronjobs.batch", "20"),
    ("count/horizontalpodautoscalers.autoscaling", "20"),
    ("count/poddisruptionbudgets.policy", "20"),
    ("count/ingresses.networking.k8s.io", "50"),
];

/// The comune's quota: compute, memory, storage and pods from the spec, a bound on other objects,
/// and no NodePort or LoadBalancer Services. A suspended comune may run no pods.
fn render_quota(m: &Municipality, ns: &str, owner: (&str, &str)) -> ResourceQuota {
    let q = &m.spec.quota;
    let pods = if m.spec.suspended { 0 } else { q.pods };
    let hard: BTreeMap<String, Quantity> = [
        ("requests.cpu".to_string(), q.cpu.clone()),
        ("limits.cpu".to_string(), q.cpu.clone()),
        ("requests.memory".to_string(), q.memory.clone()),
        ("limits.memory".to_string(), q.memory.clone()),
        ("requests.storage".to_string(), q.storage.clone()),
        ("pods".to_string(), quantity(&pods.to_string())),
        ("services.nodeports".to_string(), quantity("0")),
        ("services.loadbalancers".to_string(), quantity("0")),
    ]
    .into_iter()
    .chain(
        OBJECT_COUNTS
            .iter()
            .map(|(resource, n)| (resource.to_string(), quantity(n))),
    )
    .collect();
    ResourceQuota {
        metadata: managed_meta("consorzio-quota", Some(ns), owner),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Defaults for containers that say nothing of their resources, so they are admitted under the
/// quota (which requires requests and limits).
pub(super) fn render_limit_range(ns: &str, owner: (&str, &str)) -> LimitRange {
    let pair = |cpu: &str, memory: &str| {
        Some(BTreeMap::from([
            ("cpu".to_string(), quantity(cpu)),
            ("memory".to_string(), quantity(memory)),
        ]))
    };
    LimitRange {
        metadata: managed_meta("consorzio-limits", Some(ns), owner),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: pair("500m", "512Mi"),
                default_request: pair("100m", "128Mi"),
                ..Default::default()
            }],
        }),
    }
}

fn render_role_binding(
    name: &str,
    ns: &str,
    cluster_role: &str,
    subjects: &[Subject],
    owner: (&str, &str),
) -> RoleBinding {
    RoleBinding {
        metadata: managed_meta(name, Some(ns), owner),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: cluster_role.into(),
        },
        subjects: Some(
            subjects
                .iter()
                .map(|s| RbacSubject {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: match s.kind {
                        SubjectKind::User => "User".into(),
                        SubjectKind::Group => "Group".into(),
                    },
                    name: s.name.clone(),
                    namespace: None,
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_yaml(yaml: &str) -> Municipality {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    const LUGANO: &str = r#"
apiVersion: consorzio.io/v1alpha1
kind: Municipality
metadata: {name: lugano, uid: 7e1c1f0a-0000-4000-8000-000000000001}
spec:
  displayName: Lugano
  country: CH
  bfsNumber: 5192
  canton: TI
  union: citta-ticinesi
  access:
    admins: [{kind: Group, name: lugano-it}]
  quota: {cpu: "16", memory: 32Gi, storage: 500Gi, pods: 200}
  network: {allowInternetEgress: true}
"#;

    fn kinds_and_names(objects: &[Rendered]) -> Vec<String> {
        objects.iter().map(Rendered::describe).collect()
    }

    #[test]
    fn a_comune_becomes_its_namespace_quota_limits_policies_and_bindings() {
        let objects = render_municipality(&from_yaml(LUGANO), &Config::default()).unwrap();
        assert_eq!(
            kinds_and_names(&objects),
            [
                "Namespace comune-lugano",
                "ResourceQuota comune-lugano/consorzio-quota",
                "LimitRange comune-lugano/consorzio-limits",
                "NetworkPolicy comune-lugano/consorzio-default-deny",
                "NetworkPolicy comune-lugano/consorzio-allow-dns",
                "NetworkPolicy comune-lugano/consorzio-allow-same-namespace",
                "NetworkPolicy comune-lugano/consorzio-allow-ingress-controller",
                "NetworkPolicy comune-lugano/consorzio-allow-internet-egress",
                "RoleBinding comune-lugano/consorzio-admins",
                "Schedule velero/comune-lugano",
            ]
        );
    }

    #[test]
    fn namespace_names_the_comune_and_enforces_restricted_pods() {
        let ns = render_namespace(&from_yaml(LUGANO), &Config::default(), false);
        let labels = ns.labels();
        assert_eq!(labels["consorzio.io/country"], "CH");
        assert_eq!(labels["consorzio.io/canton"], "TI");
        assert_eq!(labels["consorzio.io/union"], "citta-ticinesi");
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        assert!(ns.owner_references().is_empty(), "it holds data: no owner");
        assert!(!labels.contains_key(ORPHANED_LABEL));
    }

    #[test]
    fn an_orphaned_namespace_says_so() {
        let ns = render_namespace(&from_yaml(LUGANO), &Config::default(), true);
        assert_eq!(ns.labels()[ORPHANED_LABEL], "true");
    }

    #[test]
    fn quota_follows_the_spec_and_forbids_node_ports_and_load_balancers() {
        let m = from_yaml(LUGANO);
        let hard = render_quota(&m, "comune-lugano", (MUNICIPALITY_LABEL, "lugano"))
            .spec
            .unwrap()
            .hard
            .unwrap();
        assert_eq!(hard["requests.cpu"].0, "16");
        assert_eq!(hard["limits.memory"].0, "32Gi");
        assert_eq!(hard["requests.storage"].0, "500Gi");
        assert_eq!(hard["pods"].0, "200");
        assert_eq!(hard["services.nodeports"].0, "0");
        assert_eq!(hard["services.loadbalancers"].0, "0");
    }

    #[test]
    fn a_suspended_comune_may_run_no_pods() {
        let mut m = from_yaml(LUGANO);
        m.spec.suspended = true;
        let hard = render_quota(&m, "ns", (MUNICIPALITY_LABEL, "lugano"))
            .spec
            .unwrap()
            .hard
            .unwrap();
        assert_eq!(hard["pods"].0, "0");
        assert_eq!(hard["requests.storage"].0, "500Gi", "data stays");
    }

    #[test]
    fn no_internet_and_no_viewers_means_no_such_objects() {
        let mut m = from_yaml(LUGANO);
        m.spec.network.allow_internet_egress = false;
        let names = kinds_and_names(&render_municipality(&m, &Config::default()).unwrap());
        assert!(
            !names
                .iter()
                .any(|n| n.contains("internet") || n.contains("viewers")),
            "{names:?}"
        );
    }

    #[test]
    fn internet_egress_never_reaches_private_ranges_where_other_comuni_live() {
        let policies = network::render_network_policies(
            from_yaml(LUGANO).spec.network.allow_internet_egress,
            "comune-lugano",
            &Config::default(),
            (MUNICIPALITY_LABEL, "lugano"),
        );
        let internet = policies
            .iter()
            .find(|p| p.name_any() == network::INTERNET_EGRESS)
            .unwrap();
        let peers = internet.spec.as_ref().unwrap().egress.as_ref().unwrap()[0]
            .to
            .clone()
            .unwrap();
        let v4 = peers[0].ip_block.as_ref().unwrap();
        assert_eq!(v4.cidr, "0.0.0.0/0");
        assert!(
            v4.except
                .as_ref()
                .unwrap()
                .contains(&"10.0.0.0/8".to_string())
        );
    }

    #[test]
    fn default_deny_covers_both_directions() {
        let policies = network::render_network_policies(
            from_yaml(LUGANO).spec.network.allow_internet_egress,
            "ns",
            &Config::default(),
            (MUNICIPALITY_LABEL, "lugano"),
        );
        let spec = policies[0].spec.as_ref().unwrap();
        assert_eq!(policies[0].name_any(), "consorzio-default-deny");
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string(), "Egress".to_string()][..])
        );
        assert!(spec.ingress.is_none() && spec.egress.is_none());
    }

    #[test]
    fn namespace_prefix_is_configurable() {
        let config = Config {
            namespace_prefix: "gem-".into(),
            ..Config::default()
        };
        assert_eq!(namespace_name(&from_yaml(LUGANO), &config), "gem-lugano");
    }

    #[test]
    fn official_code_is_istat_in_italy_and_bfs_in_switzerland() {
        assert_eq!(official_code(&from_yaml(LUGANO)).as_deref(), Some("5192"));
    }
}
