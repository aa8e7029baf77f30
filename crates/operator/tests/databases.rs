//! Databases through the database operators' own resources, against the real CRDs of
//! CloudNativePG and mariadb-operator (installed by tests/cluster): a Dedicated WordPress
//! (MariaDB) and a Dedicated Nextcloud (PostgreSQL) in an `ordinary` comune (a database and
//! user of its own on the service's server) and a `critical` one (a server of its own). The
//! database operators' part is played by `OperatorPlayer`, as kwok plays the kubelet's.

mod support;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, bail, ensure};
use consorzio::render::api_resource;
use consorzio_api::{DataClassification, Municipality, SharedService};
use consorzio_testkit::{Env, TIMEOUT, netpol, run, wait_for};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Secret},
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams},
};
use serde_json::{Value, json};
use support::{
    Operator, apply_service, catalogue_service, classified, comune, exclusive, onboard, wait_status,
};

fn mariadb(kind: &'static str, plural: &'static str) -> ApiResource {
    api_resource(("k8s.mariadb.com", "v1alpha1", kind, plural))
}

fn cnpg(kind: &'static str, plural: &'static str) -> ApiResource {
    api_resource(("postgresql.cnpg.io", "v1", kind, plural))
}

/// Waits for an object of `r` named `name` in `ns`, and returns it.
async fn object(env: &Env, r: &ApiResource, ns: &str, name: &str) -> anyhow::Result<Value> {
    let api = Api::<DynamicObject>::namespaced_with(env.client(), ns, r);
    let what = format!("{} {ns}/{name}", r.kind);
    wait_for(&what, TIMEOUT, || async {
        Ok(serde_json::to_value(api.get(name).await?)?)
    })
    .await
}

/// The comune's entry for `service` in its status.
async fn entry(env: &Env, comune: &str, service: &str) -> anyhow::Result<Value> {
    let m = Api::<Municipality>::all(env.client()).get(comune).await?;
    let status = serde_json::to_value(m.status.unwrap_or_default())?;
    status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == service)
        .cloned()
        .context("no entry yet")
}

/// Every env reference of the instance's container names a key its object has.
async fn references_resolve(env: &Env, ns: &str, service: &str) -> anyhow::Result<usize> {
    let d = env.api::<Deployment>(ns).get(service).await?;
    let pod = d.spec.context("spec")?.template.spec.context("pod")?;
    let mut resolved = 0;
    for var in pod.containers[0].env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(r) = &from.secret_key_ref {
            let secret = env.api::<Secret>(ns).get(&r.name).await?;
            ensure!(
                secret.data.unwrap_or_default().contains_key(&r.key),
                "{}: Secret {} has no key {}",
                var.name,
                r.name,
                r.key
            );
        }
        if let Some(r) = &from.config_map_key_ref {
            let settings = env.api::<ConfigMap>(ns).get(&r.name).await?;
            ensure!(
                settings.data.unwrap_or_default().contains_key(&r.key),
                "{}: ConfigMap {} has no key {}",
                var.name,
                r.name,
                r.key
            );
        }
        resolved += 1;
    }
    Ok(resolved)
}

#[tokio::test]
async fn wordpress_and_nextcloud_get_their_databases_where_their_data_classification_says() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let mut ordinary = comune();
        let mut critical = classified(DataClassification::Critical);
        // Room for a Nextcloud (100 GiB, 2 CPUs) beside a website.
        for m in [&mut ordinary, &mut critical] {
            m.spec.quota.cpu = Quantity("16".into());
            m.spec.quota.memory = Quantity("32Gi".into());
            m.spec.quota.storage = Quantity("500Gi".into());
        }
        let (a, a_ns) = onboard(&env, &ordinary).await?;
        let (b, b_ns) = onboard(&env, &critical).await?;
        let names = json!({"names": [a, b]});
        let sito: SharedService = catalogue_service("sito-comunale", names.clone())?;
        let files: SharedService = catalogue_service("nextcloud", names)?;
        let (sito_name, files_name) = (sito.name_any(), files.name_any());
        // The database operators are slow today: the instances must wait for them.
        op.players.hold(&sito_name);
        apply_service(&env, &sito).await?;
        apply_service(&env, &files).await?;

        // Every object is accepted by the real schemas, where the classification says.
        let sito_server_ns = format!("shared-{sito_name}");
        let files_server_ns = format!("shared-{files_name}");
        let server = format!("{sito_name}-db");
        object(
            &env,
            &mariadb("MariaDB", "mariadbs"),
            &sito_server_ns,
            &server,
        )
        .await?;
        object(&env, &mariadb("MariaDB", "mariadbs"), &b_ns, &server).await?;
        let grant_a = object(&env, &mariadb("Grant", "grants"), &sito_server_ns, &a).await?;
        let user_a = object(&env, &mariadb("User", "users"), &sito_server_ns, &a).await?;
        object(&env, &mariadb("Database", "databases"), &sito_server_ns, &a).await?;
        let grant_b = object(&env, &mariadb("Grant", "grants"), &b_ns, &sito_name).await?;
        object(
            &env,
            &cnpg("Cluster", "clusters"),
            &files_server_ns,
            &format!("{files_name}-db"),
        )
        .await?;
        let role_a = object(
            &env,
            &cnpg("DatabaseRole", "databaseroles"),
            &files_server_ns,
            &a,
        )
        .await?;
        let db_a = object(&env, &cnpg("Database", "databases"), &files_server_ns, &a).await?;
        let cluster_b = object(
            &env,
            &cnpg("Cluster", "clusters"),
            &b_ns,
            &format!("{files_name}-db"),
        )
        .await?;
        ensure!(
            cluster_b["spec"]["bootstrap"]["initdb"]["secret"]["name"]
                == format!("{files_name}-database").as_str(),
            "b's own server makes its database with b's password: {cluster_b}"
        );

        // Comune a's user is granted a's database only; b's database is on b's own server, in
        // b's namespace, which no object of a's names.
        ensure!(
            grant_a["spec"]["database"] == user_a["spec"]["name"],
            "{grant_a}"
        );
        ensure!(
            grant_a["spec"]["username"] == user_a["spec"]["name"],
            "{grant_a}"
        );
        ensure!(
            grant_a["spec"]["mariaDbRef"]["name"] == server.as_str(),
            "{grant_a}"
        );
        ensure!(
            grant_a["spec"]
                .get("mariaDbRef")
                .and_then(|r| r.get("namespace"))
                .is_none()
        );
        ensure!(
            grant_b["spec"]["database"] == "app"
                && grant_b["metadata"]["namespace"] == b_ns.as_str()
        );
        ensure!(db_a["spec"]["owner"] == role_a["spec"]["name"], "{db_a}");

        // The WordPress instances wait for their databases: no Deployment yet, the service
        // lists them as waiting, and the comune's entry says what is missing (entries on their
        // way are written within 2 minutes, so that one write carries an instance's arrival).
        wait_status(
            &env,
            &sito_name,
            "instances waiting for their database",
            |st| {
                st.not_ready.len() == 2
                    && st
                        .not_ready
                        .iter()
                        .all(|n| n.reason == "WaitingForDatabase")
            },
        )
        .await?;
        let waiting = wait_for(
            "a's WordPress to wait for its database",
            Duration::from_secs(150),
            || async {
                let e = entry(&env, &a, &sito_name).await?;
                ensure!(e["phase"] == "Pending", "{e}");
                Ok(e)
            },
        )
        .await?;
        let message = waiting["message"].as_str().unwrap_or_default();
        ensure!(
            message.starts_with("waiting for its database: MariaDB ") || message.contains("User "),
            "{message}"
        );
        ensure!(
            env.api::<Deployment>(&a_ns)
                .get_opt(&sito_name)
                .await?
                .is_none(),
            "a's instance started without its database"
        );

        // Nextcloud's databases are ready: its instances run, their references resolve.
        wait_status(&env, &files_name, "both instances Ready", |st| {
            st.ready_instances == 2
        })
        .await?;
        for ns in [&a_ns, &b_ns] {
            let n = references_resolve(&env, ns, &files_name).await?;
            let expected = files
                .spec
                .template
                .env
                .iter()
                .filter(|v| v.value_from.is_some());
            ensure!(n == expected.count() && n > 0, "{ns}: {n} references");
        }

        // Egress to a's database on the shared server opens for a only, on its port only.
        let client = env.client();
        let server_pod = netpol::Endpoint::new(
            &client,
            &files_server_ns,
            BTreeMap::from([("cnpg.io/cluster".into(), format!("{files_name}-db"))]),
        )
        .await?;
        let from = |ns: String| {
            let client = client.clone();
            async move { netpol::Endpoint::new(&client, &ns, BTreeMap::new()).await }
        };
        ensure!(
            netpol::allows(&client, &from(a_ns.clone()).await?, &server_pod, 5432).await?,
            "a reaches its database"
        );
        ensure!(
            !netpol::allows(&client, &from(a_ns.clone()).await?, &server_pod, 8000).await?,
            "only the SQL port"
        );
        ensure!(
            !netpol::allows(&client, &from(b_ns.clone()).await?, &server_pod, 5432).await?,
            "b's database is not there"
        );
        ensure!(
            !netpol::allows(&client, &from("default".into()).await?, &server_pod, 5432).await?,
            "an outsider"
        );

        // Released: WordPress starts.
        op.players.release(&sito_name);
        wait_status(&env, &sito_name, "both instances Ready", |st| {
            st.ready_instances == 2
        })
        .await?;
        references_resolve(&env, &a_ns, &sito_name).await?;

        // a leaves WordPress: its database, user and password stay (Retain), no longer managed.
        let mut only_b = sito.clone();
        only_b.spec.municipalities.names = vec![b.clone()];
        apply_service(&env, &only_b).await?;
        wait_for("a's database kept, labelled orphaned", TIMEOUT, || async {
            for r in [
                mariadb("Database", "databases"),
                mariadb("User", "users"),
                mariadb("Grant", "grants"),
            ] {
                let api = Api::<DynamicObject>::namespaced_with(env.client(), &sito_server_ns, &r);
                let obj = api.get(&a).await?;
                ensure!(
                    obj.labels()
                        .get("consorzio.io/orphaned")
                        .map(String::as_str)
                        == Some("true"),
                    "{} not kept yet",
                    r.kind
                );
                ensure!(obj.labels().get("app.kubernetes.io/managed-by").is_none());
            }
            let secret = env
                .api::<Secret>(&sito_server_ns)
                .get(&format!("{a}-database"))
                .await?;
            ensure!(
                secret.labels().get("consorzio.io/orphaned").is_some(),
                "the password is kept"
            );
            Ok(())
        })
        .await?;
        let left = Api::<DynamicObject>::namespaced_with(
            env.client(),
            &sito_server_ns,
            &mariadb("User", "users"),
        )
        .list(&ListParams::default().labels(&format!("consorzio.io/municipality={a}")))
        .await?;
        if left.items.len() != 1 {
            bail!("a's user is kept once: {:?}", left.items.len());
        }
        op.stop().await;
        Ok(())
    })
    .await;
}
