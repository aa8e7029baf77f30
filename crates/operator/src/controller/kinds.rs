//! The kinds of object the operator manages, declared once. Caching, watching, pruning what is
//! no longer rendered, teardown when a comune leaves a service, and the RBAC the operator needs
//! all follow from this table: adding a kind to an instance is its render function plus one
//! entry here, and the chart's ClusterRole rule that a test then asks for (it checks that the
//! chart grants each declared kind exactly the verbs `Kind::verbs` says, and nothing else).

use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::Job,
    core::v1::{
        ConfigMap, LimitRange, Namespace, PersistentVolumeClaim, ResourceQuota, Secret,
        ServiceAccount,
    },
    networking::v1::{Ingress, NetworkPolicy},
    policy::v1::PodDisruptionBudget,
    rbac::v1::RoleBinding,
};
use kube::core::ApiResource;

use crate::render::{Gvk, backup, certificate, database::kinds as db, database_backup};

/// Who renders objects of a kind, and so whose changes they report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A Municipality, for its namespace.
    Municipality,
    /// A SharedService: its instances and access points, and its shared namespace.
    Service,
    /// Both: each namespace's isolation, rendered by whoever owns the namespace; and network
    /// policies, which a Shared service also renders in its subscribers' namespaces.
    Both,
    /// Neither: only watched.
    Neither,
}

/// What happens to an object of a kind that its owner no longer renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Rendered as long as its owner exists: never pruned on its own (it goes with the namespace).
    Always,
    /// Deleted once no longer rendered.
    Pruned,
    /// Holds data: kept (labelled orphaned, no longer managed) unless its owner's policy says
    /// `Delete`. Never given an owner reference, so no garbage collection deletes it.
    Data,
    /// Watched, never written.
    Watched,
}

/// Which objects of a kind the operator's cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Those labelled `app.kubernetes.io/managed-by=consorzio`.
    Managed,
    /// Those with this name, in every namespace.
    Named(&'static str),
    /// None: the operator may not read this kind (Secrets). Whether an object exists is told
    /// by another object it caches.
    Unread,
}

/// One kind of object the operator manages or watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// API group ("" for the core group).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural, as in the API path and RBAC rules.
    pub plural: &'static str,
    /// Whether its objects live in a namespace.
    pub namespaced: bool,
    /// Who renders it.
    pub owner: Owner,
    /// What happens to an object no longer rendered.
    pub lifecycle: Lifecycle,
    /// What the cache holds of it.
    pub cache: Cache,
    /// Where the cluster's object must hold exactly what is rendered (JSON pointers), not just
    /// include it: what isolates a namespace, so that drift that adds (a rule added to a
    /// policy, a subject to a binding, a key to the quota, an isolation label to the namespace)
    /// is removed as well as drift that changes or deletes.
    pub exact: &'static [&'static str],
    /// Whether its CRD may be missing: it comes with another operator (CloudNativePG,
    /// mariadb-operator), which a cluster may not have. The operator starts without it, says so
    /// on the services that need it, and picks the kind up once it is installed.
    pub optional: bool,
    /// Merged into an object before the operator deletes it under a `Delete` policy: what tells
    /// a database operator to drop the data too (objects are rendered to keep it, so that no
    /// deletion by anyone else drops it).
    pub before_delete: Option<&'static str>,
    /// Whether its objects live in Velero's namespace (`--velero-namespace`) rather than in the
    /// namespaces the operator manages: watched there only, and granted there only, by a Role.
    pub in_velero_namespace: bool,
}

impl Kind {
    /// A kind with Rust types (k8s-openapi), rendered by `owner`.
    const fn typed<K>(owner: Owner, lifecycle: Lifecycle, cache: Cache) -> Kind
    where
        K: k8s_openapi::Resource,
    {
        Kind {
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            namespaced: !is_cluster_scoped(K::KIND),
            owner,
            lifecycle,
            cache,
            exact: &[],
            optional: false,
            before_delete: None,
            in_velero_namespace: false,
        }
    }

    /// A kind of another operator's (no Rust types), rendered by a service, holding data (unless
    /// `pruned`): its CRD may be missing.
    const fn custom(gvk: Gvk, before_delete: Option<&'static str>) -> Kind {
        let (group, version, kind, plural) = gvk;
        Kind {
            group,
            version,
            kind,
            plural,
            namespaced: true,
            owner: Owner::Service,
            lifecycle: Lifecycle::Data,
            cache: Cache::Managed,
            exact: &[],
            optional: true,
            before_delete,
            in_velero_namespace: false,
        }
    }

    /// The kind, deleted once no longer rendered: it holds no data.
    const fn pruned(self) -> Kind {
        Kind {
            lifecycle: Lifecycle::Pruned,
            ..self
        }
    }

    /// The kind, rendered by a Municipality in Velero's namespace.
    const fn velero(self) -> Kind {
        Kind {
            owner: Owner::Municipality,
            in_velero_namespace: true,
            ..self
        }
    }

    /// The kind, with `paths` held exactly as rendered (see `exact`).
    const fn exact(self, paths: &'static [&'static str]) -> Kind {
        Kind {
            exact: paths,
            ..self
        }
    }

    /// The kind's API, for dynamic requests.
    pub fn resource(&self) -> ApiResource {
        let api_version = if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version,
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }

    /// Whether the operator writes objects of this kind.
    pub fn written(&self) -> bool {
        self.lifecycle != Lifecycle::Watched
    }

    /// The RBAC verbs the operator needs on this kind: read what it caches, create and patch
    /// what it renders, delete what it prunes or deletes under a `Delete` policy.
    pub fn verbs(&self) -> Vec<&'static str> {
        let mut verbs = vec![];
        // A namespace may exist unmanaged, outside the cache: it is read to tell whose it is.
        if self.kind == "Namespace" {
            verbs.push("get");
        }
        if self.cache != Cache::Unread {
            verbs.extend(["list", "watch"]);
        }
        if self.written() {
            verbs.extend(["create", "patch"]);
        }
        if matches!(self.lifecycle, Lifecycle::Pruned | Lifecycle::Data) {
            verbs.push("delete");
        }
        verbs
    }
}

/// Of the kinds below, those not in a namespace (k8s-openapi says so only through a marker
/// trait, which a `const fn` cannot ask): a cluster-scoped kind declared here is added here too,
/// and `every_kind_the_examples_render_is_declared_for_its_owner` checks it.
const fn is_cluster_scoped(kind: &str) -> bool {
    matches!(kind.as_bytes(), b"Namespace")
}

/// Namespaces: a comune's, or a Shared service's. Kept or deleted only by their owner's policy.
/// Its isolation labels are exact (see `compare::isolation_label`).
pub const NAMESPACE: Kind = Kind::typed::<Namespace>(Owner::Both, Lifecycle::Data, Cache::Managed)
    .exact(&["/metadata/labels"]);
/// Each namespace's quota.
pub const RESOURCE_QUOTA: Kind =
    Kind::typed::<ResourceQuota>(Owner::Both, Lifecycle::Always, Cache::Managed).exact(&["/spec"]);
/// Each namespace's default limits.
pub const LIMIT_RANGE: Kind =
    Kind::typed::<LimitRange>(Owner::Both, Lifecycle::Always, Cache::Managed).exact(&["/spec"]);
/// Network isolation, and a comune's access to a Shared service.
pub const NETWORK_POLICY: Kind =
    Kind::typed::<NetworkPolicy>(Owner::Both, Lifecycle::Pruned, Cache::Managed).exact(&["/spec"]);
/// A comune's admins and viewers.
pub const ROLE_BINDING: Kind =
    Kind::typed::<RoleBinding>(Owner::Municipality, Lifecycle::Pruned, Cache::Managed)
        .exact(&["/subjects", "/roleRef"]);
/// An instance's application.
pub const DEPLOYMENT: Kind =
    Kind::typed::<Deployment>(Owner::Service, Lifecycle::Pruned, Cache::Managed);
/// An instance's Service, or a comune's access point to a Shared instance.
pub const SERVICE: Kind = Kind::typed::<k8s_openapi::api::core::v1::Service>(
    Owner::Service,
    Lifecycle::Pruned,
    Cache::Managed,
);
/// An instance's public host.
pub const INGRESS: Kind = Kind::typed::<Ingress>(Owner::Service, Lifecycle::Pruned, Cache::Managed);
/// An instance's settings, or a comune's connection settings.
pub const CONFIG_MAP: Kind =
    Kind::typed::<ConfigMap>(Owner::Service, Lifecycle::Pruned, Cache::Managed);
/// Keeps an instance of several replicas serving through voluntary disruptions (node drains).
pub const POD_DISRUPTION_BUDGET: Kind =
    Kind::typed::<PodDisruptionBudget>(Owner::Service, Lifecycle::Pruned, Cache::Managed);
/// An instance's data.
pub const VOLUME_CLAIM: Kind =
    Kind::typed::<PersistentVolumeClaim>(Owner::Service, Lifecycle::Data, Cache::Managed);
/// An instance's generated credentials: created once, never read (the instance's Deployment
/// says it exists).
pub const SECRET: Kind = Kind::typed::<Secret>(Owner::Service, Lifecycle::Data, Cache::Unread);
/// Each namespace's `default` ServiceAccount: the API server refuses pods until it exists.
pub const DEFAULT_SERVICE_ACCOUNT: Kind =
    Kind::typed::<ServiceAccount>(Owner::Neither, Lifecycle::Watched, Cache::Named("default"));

/// A comune's onboarding or offboarding in a Shared application (`spec.tenantJobs`): made once
/// for its inputs, kept as the record, deleted when the comune leaves (or joins again).
pub const JOB: Kind = Kind::typed::<Job>(Owner::Service, Lifecycle::Pruned, Cache::Managed);

/// A PostgreSQL server (CloudNativePG). Deleting it deletes its volumes (they are its own).
pub const CNPG_CLUSTER: Kind = Kind::custom(db::CNPG_CLUSTER, None);
/// A PostgreSQL role on a shared server.
pub const CNPG_ROLE: Kind = Kind::custom(
    db::CNPG_ROLE,
    Some(r#"{"spec":{"databaseRoleReclaimPolicy":"delete"}}"#),
);
/// A PostgreSQL database.
pub const CNPG_DATABASE: Kind = Kind::custom(
    db::CNPG_DATABASE,
    Some(r#"{"spec":{"databaseReclaimPolicy":"delete"}}"#),
);
/// A MariaDB server (mariadb-operator). Its volumes outlive it (a StatefulSet's claims).
pub const MARIADB: Kind = Kind::custom(db::MARIADB, None);
/// What tells mariadb-operator to drop a database, user or grant with its object.
const MARIADB_CLEANUP: Option<&str> = Some(r#"{"spec":{"cleanupPolicy":"Delete"}}"#);
/// A MariaDB database.
pub const MARIADB_DATABASE: Kind = Kind::custom(db::MARIADB_DATABASE, MARIADB_CLEANUP);
/// A MariaDB user.
pub const MARIADB_USER: Kind = Kind::custom(db::MARIADB_USER, MARIADB_CLEANUP);
/// A MariaDB user's rights on its database.
pub const MARIADB_GRANT: Kind = Kind::custom(db::MARIADB_GRANT, MARIADB_CLEANUP);

/// A host's certificate (cert-manager). It holds no data: its Secret is cert-manager's, which
/// keeps it when the Certificate goes, and would issue it again.
pub const CERTIFICATE: Kind = Kind::custom(certificate::CERTIFICATE, None).pruned();

/// A comune's backup schedule (Velero), in Velero's namespace. Deleting it leaves its backups
/// (no owner references), which expire as the policy that made them said.
pub const VELERO_SCHEDULE: Kind = Kind::custom(backup::VELERO_SCHEDULE, None)
    .pruned()
    .velero();

/// Where a PostgreSQL server archives (barman-cloud plugin): the store's configuration only.
pub const OBJECT_STORE: Kind = Kind::custom(database_backup::OBJECT_STORE, None).pruned();
/// When a PostgreSQL server takes a base backup. Its backups outlive it (no owner reference).
pub const SCHEDULED_BACKUP: Kind = Kind::custom(database_backup::SCHEDULED_BACKUP, None).pruned();
/// When a MariaDB database is dumped, and to where. The dumps are in the store, not in it.
pub const MARIADB_BACKUP: Kind = Kind::custom(database_backup::MARIADB_BACKUP, None).pruned();

/// Every kind, the namespace first (everything else lives in one).
pub const KINDS: &[Kind] = &[
    NAMESPACE,
    RESOURCE_QUOTA,
    LIMIT_RANGE,
    NETWORK_POLICY,
    ROLE_BINDING,
    DEPLOYMENT,
    SERVICE,
    INGRESS,
    CONFIG_MAP,
    POD_DISRUPTION_BUDGET,
    VOLUME_CLAIM,
    SECRET,
    DEFAULT_SERVICE_ACCOUNT,
    JOB,
    CNPG_CLUSTER,
    CNPG_ROLE,
    CNPG_DATABASE,
    MARIADB,
    MARIADB_DATABASE,
    MARIADB_USER,
    MARIADB_GRANT,
    CERTIFICATE,
    VELERO_SCHEDULE,
    OBJECT_STORE,
    SCHEDULED_BACKUP,
    MARIADB_BACKUP,
];

/// The declared kind of an object of `resource`.
pub fn find(resource: &ApiResource) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.kind == resource.kind && k.group == resource.group)
}

/// Whether `owner` renders objects of `kind`.
pub fn rendered_by(kind: &Kind, owner: Owner) -> bool {
    kind.owner == owner
        || (kind.owner == Owner::Both && matches!(owner, Owner::Municipality | Owner::Service))
}

#[cfg(test)]
mod tests {
    use consorzio_api::{Municipality, SharedService};
    use serde_json::Value;

    use super::*;
    use crate::render::{
        Config, Rendered,
        database::Place,
        render_municipality,
        service::{is_dedicated, render_dedicated_at, selects},
        shared::{render_access_point, render_shared},
        tenant::{Stage, render_tenant_job},
    };

    fn of_kind<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<T> {
        docs.iter()
            .filter(|d| d["kind"] == kind)
            .map(|d| serde_json::from_value(d.clone()).expect("a valid example"))
            .collect()
    }

    /// Renders every example comune and every catalogue service for the comuni it selects, and
    /// checks that every kind rendered is declared, for the owner that renders it: otherwise its
    /// objects would be applied on every pass (not cached) and never pruned.
    #[test]
    fn every_kind_the_examples_render_is_declared_for_its_owner() {
        let docs = consorzio_testkit::example_manifests().expect("the examples read");
        let comuni: Vec<Municipality> = of_kind(&docs, "Municipality");
        let mut services: Vec<SharedService> = of_kind(&docs, "SharedService");
        // And each as it would be scaled out (on ReadWriteMany volumes): what several replicas
        // add.
        let scaled: Vec<SharedService> = services
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.spec.template.replicas = 2;
                for v in &mut s.spec.template.volumes {
                    v.access_mode = consorzio_api::AccessMode::ReadWriteMany;
                }
                s
            })
            .collect();
        services.extend(scaled);
        assert!(
            comuni.len() > 10 && services.len() > 5,
            "the examples are there"
        );
        // With the platform's certificates and database backups, as a cluster with cert-manager
        // and an object store runs it.
        let config = Config {
            cluster_issuer: Some("platform-ca".into()),
            backup_store: Some(crate::render::database_backup::BackupStore {
                destination: "s3://backups".into(),
                endpoint: None,
                cidrs: vec!["203.0.113.0/24".into()],
                credentials: ("consorzio".into(), "keys".into()),
            }),
            ..Config::default()
        };
        let mut rendered: Vec<(Owner, Rendered)> = vec![];
        for m in &comuni {
            let objects = render_municipality(m, &config).expect("renders");
            rendered.extend(objects.into_iter().map(|r| (Owner::Municipality, r)));
        }
        for s in &services {
            if !is_dedicated(s) {
                let objects = render_shared(s, &config).expect("renders");
                rendered.extend(objects.into_iter().map(|r| (Owner::Service, r)));
            }
            for m in comuni.iter().filter(|m| selects(s, m)) {
                let objects = if is_dedicated(s) {
                    // Its database wherever a comune's may be.
                    let mut objects = vec![];
                    for place in [Place::Own, Place::SharedServer] {
                        objects.extend(render_dedicated_at(s, m, &config, place).expect("renders"));
                    }
                    objects
                } else {
                    let mut objects = render_access_point(s, m, &config).expect("renders");
                    for stage in [Stage::Onboarding, Stage::Offboarding] {
                        objects.extend(render_tenant_job(s, m, stage, &config).expect("renders"));
                    }
                    objects
                };
                rendered.extend(objects.into_iter().map(|r| (Owner::Service, r)));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (owner, r) in &rendered {
            let kind = find(&r.resource)
                .unwrap_or_else(|| panic!("{} is rendered and not declared", r.describe()));
            assert!(
                rendered_by(kind, *owner),
                "{} is rendered by {owner:?}",
                r.describe()
            );
            assert_eq!(kind.resource(), r.resource, "{}", r.describe());
            assert_eq!(kind.namespaced, r.object.metadata.namespace.is_some());
            assert_eq!(
                kind.in_velero_namespace,
                r.object.metadata.namespace.as_deref() == config.velero_namespace.as_deref(),
                "{}",
                r.describe()
            );
            assert_eq!(kind.cache, Cache::Managed, "{} is cached", r.describe());
            seen.insert(kind.kind);
        }
        // Every declared kind that is rendered (not created once, not only watched) is seen.
        for kind in KINDS
            .iter()
            .filter(|k| k.written() && k.cache == Cache::Managed)
        {
            assert!(
                seen.contains(kind.kind),
                "{} is declared but never rendered",
                kind.kind
            );
        }
    }

    #[test]
    fn kinds_know_their_api_and_scope() {
        assert_eq!(DEPLOYMENT.resource().api_version, "apps/v1");
        assert_eq!(NAMESPACE.resource().api_version, "v1");
        assert_eq!(VOLUME_CLAIM.plural, "persistentvolumeclaims");
        const { assert!(!NAMESPACE.namespaced) };
        assert!(
            KINDS
                .iter()
                .filter(|k| k.kind != "Namespace")
                .all(|k| k.namespaced)
        );
        let unique: std::collections::BTreeSet<_> =
            KINDS.iter().map(|k| (k.group, k.kind)).collect();
        assert_eq!(unique.len(), KINDS.len(), "one entry per kind");
    }

    #[test]
    fn verbs_follow_from_what_is_done_with_a_kind() {
        assert_eq!(RESOURCE_QUOTA.verbs(), ["list", "watch", "create", "patch"]);
        assert_eq!(
            DEPLOYMENT.verbs(),
            ["list", "watch", "create", "patch", "delete"]
        );
        assert_eq!(SECRET.verbs(), ["create", "patch", "delete"]);
        assert_eq!(
            NAMESPACE.verbs(),
            ["get", "list", "watch", "create", "patch", "delete"]
        );
        assert_eq!(DEFAULT_SERVICE_ACCOUNT.verbs(), ["list", "watch"]);
    }
}
