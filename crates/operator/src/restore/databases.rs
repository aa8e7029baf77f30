//! A comune's databases back from their operators' own backups (`--backup-object-store`), as
//! part of `consorzio restore`: a PostgreSQL server is recovered as a new Cluster beside the live
//! one, never over it, to the restore's time (its WAL allows any point); a MariaDB database is
//! loaded from its dumps by a mariadb-operator `Restore`, which writes over the database it
//! names: into the namespace being restored, or over the live one with `--overwrite` only. What
//! is made carries none of consorzio's labels: the operator leaves it alone.

use std::collections::BTreeSet;

use anyhow::Context as _;
use k8s_openapi::{api::networking::v1::NetworkPolicy, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams, ObjectMeta, PostParams},
};
use serde_json::{Value, json};

use crate::render::{
    Gvk, MUNICIPALITY_LABEL, api_resource,
    database::{kinds, mariadb_restricted},
    database_backup::{BARMAN_PLUGIN, MARIADB_BACKUP, OBJECT_STORE},
};

/// mariadb-operator's restore.
const MARIADB_RESTORE: Gvk = ("k8s.mariadb.com", "v1alpha1", "Restore", "restores");

/// Where the namespace is restored, and how.
#[derive(Debug)]
pub struct Recovery<'a> {
    /// The comune.
    pub comune: &'a str,
    /// Its namespace.
    pub ns: &'a str,
    /// The namespace restored into (its own, or `--into`).
    pub target: &'a str,
    /// `--overwrite`.
    pub overwrite: bool,
    /// The time the databases go back to.
    pub at: Timestamp,
    /// Makes the new objects' names unique.
    pub stamp: String,
}

fn api(client: &Client, gvk: Gvk, ns: Option<&str>) -> Api<DynamicObject> {
    let resource = api_resource(gvk);
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Objects of `gvk`, in every namespace, labelled with the comune.
async fn of_comune(client: &Client, gvk: Gvk, comune: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let params = ListParams::default().labels(&format!("{MUNICIPALITY_LABEL}={comune}"));
    let listed = api(client, gvk, None).list(&params).await;
    match listed {
        Ok(list) => Ok(list.items),
        // A kind the cluster does not serve: nothing of it to restore.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(vec![]),
        Err(e) => Err(e).with_context(|| format!("listing {}", gvk.3)),
    }
}

/// `name`, cut so that `<name>-r<stamp>` stays a short DNS label.
fn restored(name: &str, stamp: &str) -> String {
    format!(
        "{}-r{stamp}",
        &name[..name.len().min(40)].trim_end_matches('-')
    )
}

/// Makes the recovery objects of the comune's databases; what was done, for people.
pub async fn recover(client: &Client, r: &Recovery<'_>) -> anyhow::Result<Vec<String>> {
    let mut said = vec![];
    // PostgreSQL: the servers with its data, its own (labelled with it) or the service's
    // (where its Database is).
    let mut servers = BTreeSet::new();
    for c in of_comune(client, kinds::CNPG_CLUSTER, r.comune).await? {
        servers.insert((c.namespace().unwrap_or_default(), c.name_any()));
    }
    for d in of_comune(client, kinds::CNPG_DATABASE, r.comune).await? {
        let server = d.data["spec"]["cluster"]["name"]
            .as_str()
            .unwrap_or_default();
        servers.insert((d.namespace().unwrap_or_default(), server.to_string()));
    }
    for (server_ns, server) in servers {
        said.push(recover_postgres(client, r, &server_ns, &server).await?);
    }
    for b in of_comune(client, MARIADB_BACKUP, r.comune).await? {
        said.push(restore_mariadb(client, r, &b).await?);
    }
    Ok(said)
}

/// A new Cluster beside `server`, bootstrapped from its archive to `r.at`, and the network
/// policy of the live one for it.
async fn recover_postgres(
    client: &Client,
    r: &Recovery<'_>,
    server_ns: &str,
    server: &str,
) -> anyhow::Result<String> {
    if api(client, OBJECT_STORE, Some(server_ns))
        .get_opt(server)
        .await?
        .is_none()
    {
        return Ok(format!(
            "PostgreSQL server {server_ns}/{server}: no archive (database backups are off): its \
             data is as Velero copied its volume"
        ));
    }
    let live = api(client, kinds::CNPG_CLUSTER, Some(server_ns))
        .get(server)
        .await?;
    // Its own server comes back where the namespace does; the service's stays in its namespace.
    let dest = if server_ns == r.ns {
        r.target
    } else {
        server_ns
    };
    let name = restored(server, &r.stamp);
    let spec = json!({
        "instances": 1,
        "imageName": live.data["spec"]["imageName"],
        "storage": live.data["spec"]["storage"],
        "bootstrap": {"recovery": {
            "source": "origin",
            "recoveryTarget": {"targetTime": r.at.to_string()},
        }},
        "externalClusters": [{
            "name": "origin",
            "plugin": {"name": BARMAN_PLUGIN, "parameters": {"barmanObjectName": server, "serverName": server}},
        }],
    });
    create(client, kinds::CNPG_CLUSTER, dest, &name, spec).await?;
    // Its pods reach what the live server's reach (its operator, the API server, the store).
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), server_ns);
    let live_policy = format!(
        "consorzio-database-{}",
        server.strip_suffix("-db").unwrap_or(server)
    );
    if let Some(mut policy) = policies.get_opt(&live_policy).await?.and_then(|p| p.spec) {
        policy.pod_selector = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("cnpg.io/cluster".to_string(), name.clone())].into()),
                ..Default::default()
            },
        );
        let copy = NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(format!("restore-{name}")),
                ..Default::default()
            },
            spec: Some(policy),
        };
        Api::<NetworkPolicy>::namespaced(client.clone(), dest)
            .create(&PostParams::default(), &copy)
            .await
            .with_context(|| format!("creating NetworkPolicy {dest}/restore-{name}"))?;
    }
    Ok(format!(
        "PostgreSQL server {server_ns}/{server}: recovered to {} as Cluster {dest}/{name}, beside \
         the live one (which its application still uses): compare, then copy from it or point the \
         application at it",
        r.at
    ))
}

/// A mariadb-operator Restore of the database `backup` dumps, to `r.at`: into the namespace
/// restored (its own server), or over the live one (the service's server) with --overwrite only.
async fn restore_mariadb(
    client: &Client,
    r: &Recovery<'_>,
    backup: &DynamicObject,
) -> anyhow::Result<String> {
    let backup_ns = backup.namespace().unwrap_or_default();
    let spec = &backup.data["spec"];
    let server = spec["mariaDbRef"]["name"].as_str().unwrap_or_default();
    let database = spec["databases"][0].as_str().unwrap_or_default();
    let own = backup_ns == r.ns;
    let dest = if own { r.target } else { backup_ns.as_str() };
    if !own && !r.overwrite {
        return Ok(format!(
            "MariaDB database {database} on {backup_ns}/{server} (the service's server): not \
             restored, as that writes over its live data; run restore again with --overwrite (and \
             without --into) to restore it there"
        ));
    }
    let name = restored(&backup.name_any(), &r.stamp);
    let mut restore = json!({
        "mariaDbRef": {"name": server, "waitForIt": true},
        "database": database,
        "s3": spec["storage"]["s3"],
        "targetRecoveryTime": r.at.to_string(),
    });
    mariadb_restricted(&mut restore);
    create(client, MARIADB_RESTORE, dest, &name, restore).await?;
    Ok(format!(
        "MariaDB database {database}: restored to the dump nearest before {} by Restore \
         {dest}/{name}, into server {dest}/{server}",
        r.at
    ))
}

async fn create(
    client: &Client,
    gvk: Gvk,
    ns: &str,
    name: &str,
    spec: Value,
) -> anyhow::Result<()> {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{}/{}", gvk.0, gvk.1), "kind": gvk.2,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))?;
    api(client, gvk, Some(ns))
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {} {ns}/{name}", gvk.2))?;
    Ok(())
}
