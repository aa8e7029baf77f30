//! Each database's backups, as its operator's own resources, to the platform's object store
//! (`--backup-object-store`): a CloudNativePG server archives its WAL and takes a base backup on
//! schedule through the barman-cloud plugin (an `ObjectStore` and a `ScheduledBackup`: point in
//! time recovery); a mariadb-operator `Backup` dumps each database on schedule. Each writes
//! under `<destination>/<namespace>/<server>` (MariaDB: `/<database's object>`).
//!
//! On a comune's policy (`spec.backup`) where the server or database is the comune's; a
//! service's shared server (its `ordinary` comuni's databases, or a Shared instance's) on the
//! ordinary class's default. The keys to the store are copied by the operator into the server's
//! namespace as `<service>-backup-credentials`: the platform's own only into `shared-*`
//! namespaces, which no comune's admins can read; into a comune's namespace (its admins read
//! its Secrets) the platform's key for that comune alone, `<credentials>-<comune>`.

use std::collections::BTreeMap;

use consorzio_api::{Database, Engine, SharedService};
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicySpec,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::{
    Gvk, Rendered,
    database::{mariadb_restricted, server_name},
    network::{database_policy_name, tcp},
    service,
};

/// The barman-cloud plugin's object store.
pub const OBJECT_STORE: Gvk = ("barmancloud.cnpg.io", "v1", "ObjectStore", "objectstores");
/// CloudNativePG's backup schedule.
pub const SCHEDULED_BACKUP: Gvk = (
    "postgresql.cnpg.io",
    "v1",
    "ScheduledBackup",
    "scheduledbackups",
);
/// mariadb-operator's backup (with a schedule: a CronJob of dumps).
pub const MARIADB_BACKUP: Gvk = ("k8s.mariadb.com", "v1alpha1", "Backup", "backups");
/// The barman-cloud plugin, as a Cluster names it.
pub const BARMAN_PLUGIN: &str = "barman-cloud.cloudnative-pg.io";
/// Its keys.
pub const CREDENTIAL_KEYS: [&str; 2] = ["ACCESS_KEY_ID", "ACCESS_SECRET_KEY"];
/// On a MariaDB backup's pods: the server they dump, which their egress policy selects.
pub const MARIADB_BACKUP_POD: &str = "consorzio-database-backup";

/// The platform's object store for databases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupStore {
    /// `s3://bucket[/prefix]`.
    pub destination: String,
    /// An S3-compatible endpoint (`https://host[:port]`); none: Amazon S3.
    pub endpoint: Option<String>,
    /// The store's address ranges: the servers' (and dumps') egress to it. None: only where
    /// their namespace's own egress reaches.
    pub cidrs: Vec<String>,
    /// The Secret (namespace, name) with `ACCESS_KEY_ID` and `ACCESS_SECRET_KEY`, for servers in
    /// `shared-*` namespaces; a comune's servers get `<name>-<comune>`.
    pub credentials: (String, String),
}

impl BackupStore {
    /// The bucket and the path in it (no leading or trailing '/').
    fn bucket_and_path(&self) -> (&str, &str) {
        let rest = self.destination.trim_start_matches("s3://");
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        (bucket, path.trim_matches('/'))
    }

    /// The store's port, for the egress policy: the endpoint's, else 443.
    fn port(&self) -> i32 {
        let Some(endpoint) = &self.endpoint else {
            return 443;
        };
        let authority = endpoint.split("://").nth(1).unwrap_or(endpoint);
        let authority = authority.split('/').next().unwrap_or_default();
        match authority.rsplit_once(':').map(|(_, p)| p.parse()) {
            Some(Ok(port)) => port,
            _ if endpoint.starts_with("http://") => 80,
            _ => 443,
        }
    }

    /// The source of the keys for a server in namespace `ns` of comune `comune` (none: a
    /// service's own namespace).
    pub fn credentials_for(&self, comune: Option<&str>) -> (String, String) {
        let (ns, name) = &self.credentials;
        match comune {
            Some(c) => (ns.clone(), format!("{name}-{c}")),
            None => (ns.clone(), name.clone()),
        }
    }

    /// Whether `text` is a destination the store can be: `s3://` and a bucket.
    pub fn valid_destination(text: &str) -> bool {
        text.strip_prefix("s3://")
            .and_then(|rest| rest.split('/').next())
            .is_some_and(|bucket| !bucket.is_empty())
    }
}

/// The copy of the keys to the store beside each of `s`'s backed up servers (and databases).
pub fn backup_credentials_name(s: &SharedService) -> String {
    format!("{}-backup-credentials", s.name_any())
}

/// A secret key reference to the copy of the keys.
fn key(s: &SharedService, key: &str) -> Value {
    json!({"name": backup_credentials_name(s), "key": key})
}

/// What a CloudNativePG Cluster gets to archive to the store: its `plugins` entry.
pub fn cluster_plugin(s: &SharedService) -> Value {
    json!([{
        "name": BARMAN_PLUGIN,
        "isWALArchiver": true,
        "parameters": {"barmanObjectName": server_name(s)},
    }])
}

/// A CloudNativePG server's backups in `ns`: its object store and its schedule. `policy`: cron
/// (five fields, UTC) and days kept.
pub fn render_postgres_backup(
    s: &SharedService,
    ns: &str,
    labels: &BTreeMap<String, String>,
    (schedule, days): (&str, i32),
    store: &BackupStore,
) -> Result<Vec<Rendered>, serde_json::Error> {
    let server = server_name(s);
    let (bucket, path) = store.bucket_and_path();
    let destination = [bucket, path, ns, &server]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let mut configuration = json!({
        "destinationPath": format!("s3://{destination}"),
        "s3Credentials": {
            "accessKeyId": key(s, CREDENTIAL_KEYS[0]),
            "secretAccessKey": key(s, CREDENTIAL_KEYS[1]),
        },
        "wal": {"compression": "gzip"},
        "data": {"compression": "gzip"},
    });
    if let Some(endpoint) = &store.endpoint {
        configuration["endpointURL"] = json!(endpoint);
    }
    Ok(vec![
        Rendered::custom(
            OBJECT_STORE,
            &server,
            ns,
            labels,
            json!({"configuration": configuration, "retentionPolicy": format!("{days}d")}),
        )?,
        Rendered::custom(
            SCHEDULED_BACKUP,
            &server,
            ns,
            labels,
            json!({
                // CloudNativePG's schedules have a field for seconds first.
                "schedule": format!("0 {schedule}"),
                "cluster": {"name": server},
                "method": "plugin",
                "pluginConfiguration": {"name": BARMAN_PLUGIN},
                // The backups outlive the schedule: they go only as the retention says.
                "backupOwnerReference": "none",
                "immediate": true,
            }),
        )?,
    ])
}

/// A MariaDB database's backups: a dump on `policy`, named `object` (its Database's name) in
/// `ns`, of database `sql` on the service's server, its pods under Pod Security `restricted`.
pub fn render_mariadb_backup(
    s: &SharedService,
    ns: &str,
    object: &str,
    sql: &str,
    labels: &BTreeMap<String, String>,
    (schedule, days): (&str, i32),
    store: &BackupStore,
) -> Result<Rendered, serde_json::Error> {
    let server = server_name(s);
    let (bucket, path) = store.bucket_and_path();
    let prefix = [path, ns, &server, object]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let endpoint = store
        .endpoint
        .as_deref()
        .unwrap_or("https://s3.amazonaws.com");
    let tls = !endpoint.starts_with("http://");
    let host = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    Rendered::custom(
        MARIADB_BACKUP,
        object,
        ns,
        labels,
        json!({
            "mariaDbRef": {"name": server, "waitForIt": true},
            "databases": [sql],
            "schedule": {"cron": schedule, "suspend": false},
            "maxRetention": format!("{}h", 24 * days),
            "compression": "gzip",
            "storage": {"s3": {
                "bucket": bucket,
                "prefix": prefix,
                "endpoint": host,
                "accessKeyIdSecretKeyRef": key(s, CREDENTIAL_KEYS[0]),
                "secretAccessKeySecretKeyRef": key(s, CREDENTIAL_KEYS[1]),
                "tls": {"enabled": tls},
            }},
            "podMetadata": {"labels": {MARIADB_BACKUP_POD: server}},
        }),
    )
    .map(|mut r| {
        mariadb_restricted(&mut r.object.data["spec"]);
        r
    })
}

/// The egress to the store of what backs up a database of `db`'s engine: the store's ranges
/// on its port, if the platform named them.
pub fn store_egress(store: &BackupStore) -> Option<NetworkPolicyEgressRule> {
    (!store.cidrs.is_empty()).then(|| NetworkPolicyEgressRule {
        to: Some(
            store
                .cidrs
                .iter()
                .map(|cidr| NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: cidr.clone(),
                        except: None,
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: tcp(&[store.port()]),
    })
}

/// Adds to `out` what backs up, in `ns`, the service's server if `out` has it (its Cluster
/// archives through the plugin, and its network policy reaches the store; MariaDB's dumps get
/// a policy of their own) and the databases `databases` (object, SQL name) on it, on `policy`.
#[allow(clippy::too_many_arguments)]
pub fn with_backups(
    out: &mut Vec<Rendered>,
    s: &SharedService,
    db: &Database,
    ns: &str,
    labels: &BTreeMap<String, String>,
    databases: &[(&str, &str)],
    policy: (&str, i32),
    store: &BackupStore,
) -> Result<(), serde_json::Error> {
    let server = server_name(s);
    let here = |r: &Rendered, kind: &str, name: &str| {
        r.resource.kind == kind
            && r.object.metadata.name.as_deref() == Some(name)
            && r.object.metadata.namespace.as_deref() == Some(ns)
    };
    let has_server = out
        .iter()
        .any(|r| here(r, "Cluster", &server) || here(r, "MariaDB", &server));
    let egress = store_egress(store);
    match db.engine {
        Engine::PostgreSQL if has_server => {
            let policy_name = database_policy_name(s);
            for r in out.iter_mut() {
                if here(r, "Cluster", &server) {
                    r.object.data["spec"]["plugins"] = cluster_plugin(s);
                }
                if let Some(rule) = egress
                    .as_ref()
                    .filter(|_| here(r, "NetworkPolicy", &policy_name))
                    && let Some(rules) = r.object.data["spec"]["egress"].as_array_mut()
                {
                    rules.push(serde_json::to_value(rule)?);
                }
            }
            out.extend(render_postgres_backup(s, ns, labels, policy, store)?);
        }
        Engine::PostgreSQL => {}
        Engine::MariaDB => {
            for (object, sql) in databases {
                out.push(render_mariadb_backup(
                    s, ns, object, sql, labels, policy, store,
                )?);
            }
            if has_server && let Some(rule) = egress {
                out.push(Rendered::new(&NetworkPolicy {
                    metadata: service::meta(
                        format!("consorzio-backups-{}", s.name_any()),
                        ns,
                        labels.clone(),
                    ),
                    spec: Some(NetworkPolicySpec {
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                MARIADB_BACKUP_POD.into(),
                                server.clone(),
                            )])),
                            ..Default::default()
                        }),
                        policy_types: Some(vec!["Egress".into()]),
                        ingress: None,
                        egress: Some(vec![rule]),
                    }),
                })?);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{SITO, service};

    fn store(endpoint: Option<&str>) -> BackupStore {
        BackupStore {
            destination: "s3://consorzio-backups/db".into(),
            endpoint: endpoint.map(String::from),
            cidrs: vec!["203.0.113.0/24".into()],
            credentials: ("consorzio".into(), "backup-keys".into()),
        }
    }

    fn json(r: &Rendered) -> Value {
        serde_json::to_value(&r.object).expect("JSON")
    }

    #[test]
    fn a_postgresql_server_archives_under_its_namespace_and_keeps_what_its_policy_says() {
        let s = service(SITO);
        let out = render_postgres_backup(
            &s,
            "comune-alvito",
            &BTreeMap::new(),
            ("15 2 * * *", 90),
            &store(Some("https://minio.example:9000")),
        )
        .expect("renders");
        let (object_store, scheduled) = (json(&out[0]), json(&out[1]));
        let configuration = &object_store["spec"]["configuration"];
        assert_eq!(
            configuration["destinationPath"],
            "s3://consorzio-backups/db/comune-alvito/sito-db"
        );
        assert_eq!(configuration["endpointURL"], "https://minio.example:9000");
        assert_eq!(
            configuration["s3Credentials"]["accessKeyId"]["name"],
            "sito-backup-credentials"
        );
        assert_eq!(object_store["spec"]["retentionPolicy"], "90d");
        assert_eq!(scheduled["spec"]["schedule"], "0 15 2 * * *");
        assert_eq!(scheduled["spec"]["method"], "plugin");
        assert_eq!(scheduled["spec"]["backupOwnerReference"], "none");
        assert_eq!(
            cluster_plugin(&s)[0]["parameters"]["barmanObjectName"],
            "sito-db"
        );
    }

    #[test]
    fn a_mariadb_database_is_dumped_under_its_own_prefix_by_restricted_pods() {
        let s = service(SITO);
        let b = json(
            &render_mariadb_backup(
                &s,
                "shared-sito",
                "alvito",
                "c_alvito",
                &BTreeMap::new(),
                ("5 3 * * *", 30),
                &store(None),
            )
            .expect("renders"),
        );
        let s3 = &b["spec"]["storage"]["s3"];
        assert_eq!(s3["bucket"], "consorzio-backups");
        assert_eq!(s3["prefix"], "db/shared-sito/sito-db/alvito");
        assert_eq!(s3["endpoint"], "s3.amazonaws.com");
        assert_eq!(s3["tls"]["enabled"], true);
        assert_eq!(b["spec"]["databases"], json!(["c_alvito"]));
        assert_eq!(b["spec"]["maxRetention"], "720h");
        assert_eq!(b["spec"]["podSecurityContext"]["runAsNonRoot"], true);
        assert_eq!(
            b["spec"]["podMetadata"]["labels"][MARIADB_BACKUP_POD],
            "sito-db"
        );
    }

    #[test]
    fn the_store_is_reached_on_its_port_within_its_ranges_only() {
        let rule = store_egress(&store(Some("http://minio.minio.svc:9000"))).expect("a rule");
        assert_eq!(
            rule.ports.expect("ports")[0].port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9000))
        );
        assert_eq!(store(None).port(), 443);
        assert!(
            store_egress(&BackupStore {
                cidrs: vec![],
                ..store(None)
            })
            .is_none()
        );
        assert!(
            BackupStore::valid_destination("s3://bucket/x")
                && !BackupStore::valid_destination("s3:///x")
        );
        assert_eq!(
            store(None).credentials_for(Some("alvito")).1,
            "backup-keys-alvito"
        );
    }
}
