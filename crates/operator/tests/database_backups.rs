//! The databases' own backups, against the real CRDs of CloudNativePG, its barman-cloud plugin
//! and mariadb-operator (installed by tests/cluster), with the operator under its
//! ServiceAccount: a PostgreSQL server archives to the platform's store under its namespace, on
//! its comune's policy (a `critical` comune's own server) or the service's (the shared server of
//! its `ordinary` comuni); a MariaDB database is dumped under a prefix of its own. The keys: the
//! platform's only into the service's namespace, a comune's own into its namespace, and without
//! it the comune's entry says which Secret to make.

mod support;

use anyhow::{Context as _, ensure};
use consorzio::render::{api_resource, database_backup::BackupStore};
use consorzio_api::DataClassification;
use consorzio_testkit::{Env, TIMEOUT, run, wait_for};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, ObjectMeta, PostParams},
};
use serde_json::{Value, json};
use support::{Operator, apply_service, catalogue_service, classified, comune, exclusive, onboard};

/// Waits for an object of `r` named `name` in `ns` passing `check`, and returns it.
async fn object(
    env: &Env,
    r: &ApiResource,
    ns: &str,
    name: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let api = Api::<DynamicObject>::namespaced_with(env.client(), ns, r);
    wait_for(&format!("{} {ns}/{name}", r.kind), TIMEOUT, || async {
        let v = serde_json::to_value(api.get(name).await?)?;
        ensure!(check(&v), "{v}");
        Ok(v)
    })
    .await
}

/// A Secret with the store's keys, as the platform makes it.
async fn keys(env: &Env, ns: &str, name: &str, id: &str) -> anyhow::Result<()> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            [("ACCESS_KEY_ID", id), ("ACCESS_SECRET_KEY", "secret")]
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .into(),
        ),
        ..Default::default()
    };
    let api = Api::<Secret>::namespaced(env.client(), ns);
    let _ = api.delete(name, &Default::default()).await;
    api.create(&PostParams::default(), &secret).await?;
    Ok(())
}

async fn copied_key(env: &Env, ns: &str, service: &str) -> anyhow::Result<String> {
    let name = format!("{service}-backup-credentials");
    wait_for(&format!("Secret {ns}/{name}"), TIMEOUT, || async {
        let s = Api::<Secret>::namespaced(env.client(), ns)
            .get(&name)
            .await?;
        let id = s
            .data
            .unwrap_or_default()
            .remove("ACCESS_KEY_ID")
            .context("no key")?;
        Ok(String::from_utf8(id.0)?)
    })
    .await
}

#[tokio::test]
async fn each_database_is_backed_up_to_the_platforms_store_with_keys_no_other_comune_holds() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        // The platform's store and keys, in the operator's namespace.
        let keys_ns = "consorzio";
        let store = BackupStore {
            destination: "s3://consorzio-backups/test".into(),
            endpoint: Some("https://minio.example.org:9000".into()),
            cidrs: vec!["203.0.113.0/24".into()],
            credentials: (keys_ns.into(), "test-backup-keys".into()),
        };
        keys(&env, keys_ns, "test-backup-keys", "platform").await?;
        // The chart's Role for reading them, as it renders it with a store.
        let docs = support::chart::template(
            "consorzio",
            keys_ns,
            &[
                "--set",
                "operator.databaseBackups.objectStore=s3://consorzio-backups/test",
            ],
        )?;
        for doc in docs
            .iter()
            .filter(|d| d["metadata"]["name"] == "consorzio-backup-credentials")
        {
            let (kind, plural) = match doc["kind"].as_str() {
                Some("Role") => ("Role", "roles"),
                _ => ("RoleBinding", "rolebindings"),
            };
            let r = api_resource(("rbac.authorization.k8s.io", "v1", kind, plural));
            let obj: DynamicObject = serde_json::from_value(doc.clone())?;
            let api = Api::<DynamicObject>::namespaced_with(env.client(), keys_ns, &r);
            let _ = api
                .delete("consorzio-backup-credentials", &Default::default())
                .await;
            api.create(&PostParams::default(), &obj).await?;
        }
        let client = env.cluster().operator_client().await?;
        let configured = store.clone();
        let op =
            Operator::start_configured(&env, client, move |c| c.backup_store = Some(configured))
                .await?;
        let (a, _) = onboard(&env, &comune()).await?;
        let (b, b_ns) = onboard(&env, &classified(DataClassification::Critical)).await?;
        let (c, _) = onboard(&env, &classified(DataClassification::Critical)).await?;
        keys(&env, keys_ns, &format!("test-backup-keys-{b}"), "only-b").await?;

        let files = catalogue_service("nextcloud", json!({"names": [a, b, c]}))?;
        let sito = catalogue_service("sito-comunale", json!({"names": [a]}))?;
        let (files_name, sito_name) = (
            files.metadata.name.clone().unwrap_or_default(),
            sito.metadata.name.clone().unwrap_or_default(),
        );
        apply_service(&env, &files).await?;
        apply_service(&env, &sito).await?;
        let (files_ns, sito_ns) = (
            format!("shared-{files_name}"),
            format!("shared-{sito_name}"),
        );
        let server = format!("{files_name}-db");

        // PostgreSQL: the ordinary comuni's shared server and b's own archive, each under its
        // namespace, b's on its critical policy (four times a day, 90 days), through the plugin.
        let stores = api_resource(("barmancloud.cnpg.io", "v1", "ObjectStore", "objectstores"));
        let schedules = api_resource((
            "postgresql.cnpg.io",
            "v1",
            "ScheduledBackup",
            "scheduledbackups",
        ));
        let clusters = api_resource(("postgresql.cnpg.io", "v1", "Cluster", "clusters"));
        for (ns, days) in [(&files_ns, "30d"), (&b_ns, "90d")] {
            let o = object(&env, &stores, ns, &server, |_| true).await?;
            let conf = &o["spec"]["configuration"];
            ensure!(
                conf["destinationPath"]
                    == json!(format!("s3://consorzio-backups/test/{ns}/{server}")),
                "{o}"
            );
            ensure!(
                conf["endpointURL"] == "https://minio.example.org:9000"
                    && o["spec"]["retentionPolicy"] == days,
                "{o}"
            );
            let sb = object(&env, &schedules, ns, &server, |_| true).await?;
            ensure!(
                sb["spec"]["method"] == "plugin" && sb["spec"]["backupOwnerReference"] == "none",
                "{sb}"
            );
            ensure!(
                sb["spec"]["schedule"]
                    .as_str()
                    .is_some_and(|s| s.split(' ').count() == 6),
                "{sb}"
            );
            object(&env, &clusters, ns, &server, |c| {
                c["spec"]["plugins"][0]["isWALArchiver"] == true
            })
            .await?;
        }
        let own = object(&env, &schedules, &b_ns, &server, |_| true).await?;
        ensure!(
            own["spec"]["schedule"]
                .as_str()
                .and_then(|s| s.split(' ').nth(2))
                .is_some_and(|h| h.split(',').count() == 4),
            "{own}"
        );
        // Its server reaches the store on its port, within its ranges.
        let policy = object(
            &env,
            &api_resource((
                "networking.k8s.io",
                "v1",
                "NetworkPolicy",
                "networkpolicies",
            )),
            &b_ns,
            &format!("consorzio-database-{files_name}"),
            |_| true,
        )
        .await?;
        ensure!(
            policy["spec"]["egress"]
                .as_array()
                .is_some_and(|e| e.iter().any(|r| r["ports"][0]["port"] == 9000
                    && r["to"][0]["ipBlock"]["cidr"] == "203.0.113.0/24")),
            "{policy}"
        );

        // The keys: the platform's beside the service's server, b's own in b's namespace.
        ensure!(copied_key(&env, &files_ns, &files_name).await? == "platform");
        ensure!(copied_key(&env, &b_ns, &files_name).await? == "only-b");

        // MariaDB: a's database on the service's server is dumped under its own prefix.
        let backups = api_resource(("k8s.mariadb.com", "v1alpha1", "Backup", "backups"));
        let dump = object(&env, &backups, &sito_ns, &a, |_| true).await?;
        ensure!(
            dump["spec"]["storage"]["s3"]["prefix"]
                == json!(format!("test/{sito_ns}/{sito_name}-db/{a}")),
            "{dump}"
        );
        ensure!(
            dump["spec"]["databases"] == json!([format!("c_{}", a.replace('-', "_"))]),
            "{dump}"
        );
        ensure!(copied_key(&env, &sito_ns, &sito_name).await? == "platform");

        // c has no key of its own: its entry says which Secret to make; the platform's key is
        // not copied into its namespace.
        let m = Api::<consorzio_api::Municipality>::all(env.client());
        let message = wait_for("c's entry to say its key is missing", TIMEOUT, || async {
            let status = serde_json::to_value(m.get(&c).await?.status)?;
            let entry = status["services"]
                .as_array()
                .and_then(|e| e.iter().find(|e| e["name"] == json!(files_name)))
                .cloned()
                .unwrap_or_default();
            let message = entry["message"].as_str().unwrap_or_default().to_string();
            ensure!(
                entry["phase"] == "Failed" && message.contains(&format!("test-backup-keys-{c}")),
                "{entry}"
            );
            Ok(message)
        })
        .await?;
        ensure!(message.contains("ACCESS_KEY_ID"), "{message}");
        let c_copy = Api::<Secret>::namespaced(env.client(), &format!("comune-{c}"))
            .get_opt(&format!("{files_name}-backup-credentials"))
            .await?;
        ensure!(c_copy.is_none(), "a key was copied into c's namespace");

        // Restored (from a backup Velero completed): b's own PostgreSQL server is recovered as a
        // new Cluster in the namespace restored into, beside nothing live, from its archive.
        let velero = api_resource(("velero.io", "v1", "Backup", "backups"));
        let velero_backups = Api::<DynamicObject>::namespaced_with(env.client(), "velero", &velero);
        let taken = k8s_openapi::jiff::Timestamp::now();
        for (comune, ns) in [(&a, format!("comune-{a}")), (&b, b_ns.clone())] {
            let backup: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "velero.io/v1", "kind": "Backup",
                "metadata": {"name": format!("{ns}-db-test"), "namespace": "velero", "labels": {"consorzio.io/municipality": comune}},
                "spec": {"includedNamespaces": [ns]},
                "status": {"phase": "Completed", "completionTimestamp": taken},
            }))?;
            velero_backups.create(&PostParams::default(), &backup).await?;
        }
        let config = consorzio::render::Config { backup_store: Some(store.clone()), ..Default::default() };
        let into = format!("restore-{b}");
        env.delete_later_dynamic(ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()), None, into.clone());
        let request = consorzio::restore::Request { comune: b.clone(), into: Some(into.clone()), ..Default::default() };
        let said = consorzio::restore::restore(&env.client(), &config, &request).await?;
        ensure!(said.contains("recovered to"), "{said}");
        let recovered = Api::<DynamicObject>::namespaced_with(env.client(), &into, &clusters).list(&Default::default()).await?.items;
        let cluster = recovered.first().context("a recovery Cluster")?;
        ensure!(cluster.data["spec"]["bootstrap"]["recovery"]["source"] == "origin", "{:?}", cluster.data);
        ensure!(cluster.data["spec"]["externalClusters"][0]["plugin"]["parameters"]["barmanObjectName"] == json!(server), "{:?}", cluster.data);
        ensure!(cluster.labels().is_empty(), "the operator would take it for its own");

        // a's MariaDB database is on the service's server: beside (--into) it is not written
        // over; with --overwrite, a Restore loads it from a's own dumps.
        let request = consorzio::restore::Request { comune: a.clone(), into: Some(format!("restore-{a}")), ..Default::default() };
        env.delete_later_dynamic(ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()), None, format!("restore-{a}"));
        let said = consorzio::restore::restore(&env.client(), &config, &request).await?;
        ensure!(said.contains("not restored, as that writes over its live data"), "{said}");
        let restores = api_resource(("k8s.mariadb.com", "v1alpha1", "Restore", "restores"));
        let mariadb_restores = Api::<DynamicObject>::namespaced_with(env.client(), &sito_ns, &restores);
        ensure!(mariadb_restores.list(&Default::default()).await?.items.is_empty(), "written over without --overwrite");
        let request = consorzio::restore::Request { comune: a.clone(), overwrite: true, ..Default::default() };
        tokio::time::sleep(std::time::Duration::from_secs(1)).await; // another Velero Restore name
        consorzio::restore::restore(&env.client(), &config, &request).await?;
        let made = mariadb_restores.list(&Default::default()).await?.items;
        let loaded = made.first().context("a MariaDB Restore")?;
        ensure!(loaded.data["spec"]["database"] == json!(format!("c_{}", a.replace('-', "_"))), "{:?}", loaded.data);
        ensure!(loaded.data["spec"]["s3"]["prefix"] == dump["spec"]["storage"]["s3"]["prefix"], "{:?}", loaded.data);
        for ns in [format!("comune-{a}"), b_ns.clone()] {
            velero_backups.delete(&format!("{ns}-db-test"), &Default::default()).await?;
        }

        // a leaves the website: its dumps stop (their schedule on the service's server goes;
        // the dumps in the store stay), its database stays, kept and labelled orphaned.
        let mut left = sito.clone();
        left.spec.municipalities.names = vec![b.clone()];
        apply_service(&env, &left).await?;
        let dumps = Api::<DynamicObject>::namespaced_with(env.client(), &sito_ns, &backups);
        wait_for("a's dump schedule to go", TIMEOUT, || async {
            ensure!(dumps.get_opt(&a).await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        let databases = api_resource(("k8s.mariadb.com", "v1alpha1", "Database", "databases"));
        object(&env, &databases, &sito_ns, &a, |d| {
            d["metadata"]["labels"]["consorzio.io/orphaned"] == "true"
        })
        .await?;

        for name in [
            "test-backup-keys".to_string(),
            format!("test-backup-keys-{b}"),
        ] {
            Api::<Secret>::namespaced(env.client(), keys_ns)
                .delete(&name, &Default::default())
                .await?;
        }
        op.stop().await;
        Ok(())
    })
    .await;
}
