//! `consorzio restore`: a comune's namespace back from one of its backups, as a Velero
//! `Restore`, made with the credentials of whoever runs it (the chart's `consorzio-restore` Role
//! in Velero's namespace is what they need there; the operator never restores).
//!
//! Nothing live is overwritten unless asked: into the comune's own namespace only if it is gone
//! (a comune deleted, a namespace lost) or with `--overwrite`; `--into` a new namespace beside
//! it, outside the operator's (where it would take the copy's objects for a comune's), made
//! here with Pod Security `restricted` and none of the comune's labels (no access to its
//! services, no place in its network policies). Its databases come back from their own backups
//! (`databases`), to the same time.

mod databases;

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use k8s_openapi::{api::core::v1::Namespace, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{DynamicObject, ListParams, ObjectMeta, PostParams},
};
use serde_json::json;

use crate::{
    controller::backups::{Backup, successful},
    render::{
        Config, MUNICIPALITY_LABEL, api_resource,
        backup::{VELERO_BACKUP, VELERO_RESTORE},
        shared::SHARED_NAMESPACE_PREFIX,
    },
};

/// What to restore, and where.
#[derive(Debug, Default)]
pub struct Request {
    /// The comune (its Municipality's name; it may be gone).
    pub comune: String,
    /// This backup (a name from its status, or Velero's list); else the newest.
    pub backup: Option<String>,
    /// The newest backup completed at or before this time; else the newest.
    pub at: Option<Timestamp>,
    /// A new namespace to restore into, beside the comune's.
    pub into: Option<String>,
    /// Restore over the comune's live namespace.
    pub overwrite: bool,
}

/// Makes the Restore; returns what was done, for people.
pub async fn restore(
    client: &Client,
    config: &Config,
    request: &Request,
) -> anyhow::Result<String> {
    let Some(velero) = config.velero_namespace.as_deref() else {
        bail!("backups are off (--velero-namespace is empty): there is nothing to restore from");
    };
    let comune = &request.comune;
    // A comune's namespace, by its name (as `render::namespace_name`; its Municipality may be gone).
    let ns = format!("{}{comune}", config.namespace_prefix);
    let backup = choose(client, velero, &ns, request).await?;
    let namespaces = Api::<Namespace>::all(client.clone());
    let live = namespaces.get_opt(&ns).await?.is_some();

    let mut spec = json!({
        "backupName": backup.name,
        "includedNamespaces": [ns],
        "restorePVs": true,
    });
    let target = match &request.into {
        Some(into) => {
            beside(into, &ns, config)?;
            if namespaces.get_opt(into).await?.is_some() {
                bail!(
                    "namespace {into} exists: a restore into it could overwrite what it holds; \
                     choose a new name for --into"
                );
            }
            namespaces
                .create(&PostParams::default(), &restricted(into))
                .await?;
            spec["namespaceMapping"] = json!({ns.clone(): into});
            spec["excludedResources"] = json!(["namespaces"]);
            into.clone()
        }
        None if live && !request.overwrite => bail!(
            "namespace {ns} exists and holds comune {comune}'s live data: restoring backup {} \
             into it would overwrite it. Restore beside it with --into NEW_NAMESPACE, or pass \
             --overwrite to restore over it",
            backup.name
        ),
        None if live => {
            // Its objects as they were in the backup; the operator puts its own back as it
            // renders them.
            spec["existingResourcePolicy"] = json!("update");
            spec["excludedResources"] = json!(["namespaces"]);
            ns.clone()
        }
        // Gone: the namespace is restored too, with its labels, and its Municipality (if any)
        // takes it back.
        None => ns.clone(),
    };
    let stamp = Timestamp::now().strftime("%Y%m%d%H%M%S");
    let name = format!("{ns}-{stamp}");
    let labels = BTreeMap::from([(MUNICIPALITY_LABEL.to_string(), comune.clone())]);
    let rendered = crate::render::Rendered::custom(VELERO_RESTORE, &name, velero, &labels, spec)?;
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), velero, &rendered.resource);
    if let Err(error) = api.create(&PostParams::default(), &rendered.object).await {
        // The namespace made for it, empty, goes with it.
        if let Some(into) = &request.into {
            namespaces.delete(into, &Default::default()).await?;
        }
        return Err(error).with_context(|| format!("creating Restore {velero}/{name}"));
    }
    let mut said = format!(
        "Restore {velero}/{name} made: backup {} (completed {}) of {ns} into {target}.\n\
         Follow it with: kubectl get restores.velero.io -n {velero} {name} -w",
        backup.name, backup.completed
    );
    let recovery = databases::Recovery {
        comune,
        ns: &ns,
        target: &target,
        overwrite: request.overwrite,
        at: request.at.unwrap_or(backup.completed),
        stamp: Timestamp::now().strftime("%d%H%M%S").to_string(),
    };
    for line in databases::recover(client, &recovery).await? {
        said.push('\n');
        said.push_str(&line);
    }
    if live && request.into.is_none() {
        said.push_str(
            "\nVelero 1.18 restores a volume's data only into a claim it makes: the comune's \
             claims still in place keep their data. To restore one, stop what uses it and delete \
             the claim before restoring, or restore --into a new namespace and copy from there.",
        );
    }
    Ok(said)
}

/// The comune's backup the request names: `--backup`, else the newest completed by `--at`,
/// else the newest.
async fn choose(
    client: &Client,
    velero: &str,
    ns: &str,
    request: &Request,
) -> anyhow::Result<Backup> {
    let comune = &request.comune;
    let api =
        Api::<DynamicObject>::namespaced_with(client.clone(), velero, &api_resource(VELERO_BACKUP));
    let params = ListParams::default().labels(&format!("{MUNICIPALITY_LABEL}={comune}"));
    let prefix = ns.strip_suffix(comune.as_str()).unwrap_or_default();
    let mut backups: Vec<Backup> = api
        .list(&params)
        .await
        .with_context(|| format!("listing the Backups in {velero}"))?
        .items
        .iter()
        .filter_map(|b| successful(b, prefix))
        .map(|(_, backup)| backup)
        .collect();
    backups.sort_by_key(|b| std::cmp::Reverse(b.completed));
    let names = || {
        let newest: Vec<&str> = backups.iter().take(5).map(|b| b.name.as_str()).collect();
        newest.join(", ")
    };
    let chosen = match (&request.backup, request.at) {
        (Some(name), _) => backups.iter().find(|b| &b.name == name).with_context(|| {
            format!(
                "{name} is not a successful backup of comune {comune}; its newest: {}",
                names()
            )
        })?,
        (None, Some(at)) => backups.iter().find(|b| b.completed <= at).with_context(|| {
            format!("comune {comune} has no successful backup completed by {at}; its newest: {}", names())
        })?,
        (None, None) => backups.first().with_context(|| {
            format!(
                "comune {comune} has no successful backup (kubectl get backups.velero.io -n {velero} \
                 -l {MUNICIPALITY_LABEL}={comune} lists its backups, failed ones too)"
            )
        })?,
    };
    Ok(chosen.clone())
}

/// A namespace to restore beside `ns` into: a valid name outside the operator's namespaces.
fn beside(into: &str, ns: &str, config: &Config) -> anyhow::Result<()> {
    let valid = !into.is_empty()
        && into.len() <= 63
        && into
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !into.starts_with('-')
        && !into.ends_with('-');
    if !valid {
        bail!(
            "--into {into:?} is not a namespace name (up to 63 lowercase letters, digits and '-')"
        );
    }
    let prefix = &config.namespace_prefix;
    if into.starts_with(prefix.as_str()) || into.starts_with(SHARED_NAMESPACE_PREFIX) {
        bail!(
            "--into {into}: names starting with {prefix:?} or {SHARED_NAMESPACE_PREFIX:?} are the \
             operator's, which would take the copy's objects for a comune's or a service's; \
             choose another, e.g. restore-{}",
            ns.strip_prefix(prefix.as_str()).unwrap_or(ns)
        );
    }
    Ok(())
}

/// A plain namespace under Pod Security `restricted`, like a comune's, without its labels.
fn restricted(name: &str) -> Namespace {
    let labels = ["enforce", "audit", "warn"].map(|mode| {
        (
            format!("pod-security.kubernetes.io/{mode}"),
            "restricted".to_string(),
        )
    });
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels.into_iter().collect()),
            ..Default::default()
        },
        ..Default::default()
    }
}
