//! The keys to the platform's object store beside each backed up database server: copied once
//! from the platform's Secret (`--backup-credentials`), the platform's own key only into a
//! service's namespace (`shared-*`, which no comune's admins can read), a comune's own key
//! (`<name>-<comune>`, which the platform limits to that comune's prefix) into its namespace.
//! Created before the backup objects that read it; those say it exists (the operator reads no
//! Secret of a managed namespace). A new key: delete the copies, the operator makes them again.

use consorzio_api::{Database, Engine, SharedService};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt, api::ObjectMeta};

use super::{
    super::{
        Context, Error,
        error::{During, Step, describe},
        kinds,
    },
    credentials::{create_once, secret_labels},
};
use crate::render::{
    database::server_name,
    database_backup::{CREDENTIAL_KEYS, backup_credentials_name},
    service::SERVICE_LABEL,
};

/// Copies the keys into `ns`, where a server (or, for MariaDB, a database) of `s` is backed up,
/// for comune `comune` (none: the service's own namespace), unless its backup objects there say
/// the copy exists.
pub async fn ensure_backup_credentials(
    s: &SharedService,
    db: &Database,
    ns: &str,
    comune: Option<&str>,
    ctx: &Context,
) -> Result<(), Error> {
    let Some(store) = &ctx.config.backup_store else {
        return Ok(());
    };
    let service = s.name_any();
    let made = match db.engine {
        Engine::PostgreSQL => ctx
            .caches
            .get(&kinds::OBJECT_STORE, Some(ns), &server_name(s))
            .is_some(),
        Engine::MariaDB => ctx
            .caches
            .in_namespace(&kinds::MARIADB_BACKUP, ns)
            .iter()
            .any(|b| b.label(SERVICE_LABEL) == Some(service.as_str())),
    };
    if made {
        return Ok(());
    }
    let (source_ns, source) = store.credentials_for(comune);
    let what = describe("Secret", Some(&source_ns), &source);
    let found = Api::<Secret>::namespaced(ctx.client.clone(), &source_ns)
        .get_opt(&source)
        .await
        .during(Step::Read, what.clone())?;
    let for_whom = match comune {
        Some(c) => format!("comune {c}'s own key, limited to its prefix in the store"),
        None => "the platform's key to the store".to_string(),
    };
    let data = found.and_then(|f| f.data).unwrap_or_default();
    let keys: Option<Vec<_>> = CREDENTIAL_KEYS
        .iter()
        .map(|k| data.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    let Some(keys) = keys else {
        return Err(Error::Missing(format!(
            "the database backups of service {service} in {ns} need {what} with {} \
             ({for_whom}): make it, and the operator copies it",
            CREDENTIAL_KEYS.join(" and ")
        )));
    };
    let copy = Secret {
        metadata: ObjectMeta {
            name: Some(backup_credentials_name(s)),
            namespace: Some(ns.to_string()),
            labels: Some(secret_labels(s, comune)),
            ..Default::default()
        },
        data: Some(keys.into_iter().collect()),
        ..Default::default()
    };
    create_once(ctx, &copy).await.map(|_| ())
}
