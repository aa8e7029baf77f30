//! What a pass does for an instance's database: where it is, its password, and whether it is
//! ready, as the database operators report it in their objects' status.

use std::collections::BTreeMap;

use consorzio_api::{Database, Engine, Municipality, SharedService};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams},
};
use serde::Deserialize;

use super::{
    super::{
        Cached, Context, Error,
        error::{During, Step, describe},
        kinds::{self, Kind},
    },
    credentials::{create_once, new_password, secret_labels},
};
use crate::render::{
    database::{
        Place, Target, database_secret_name, place_for, render_database, server_name, target,
    },
    namespace_name,
    service::labels,
    shared::shared_namespace,
};

/// The kind of a database engine's servers.
pub fn server_kind(db: &Database) -> &'static Kind {
    match db.engine {
        Engine::PostgreSQL => &kinds::CNPG_CLUSTER,
        Engine::MariaDB => &kinds::MARIADB,
    }
}

/// The kind of a database engine's users, made with the database's password.
fn user_kind(db: &Database) -> &'static Kind {
    match db.engine {
        Engine::PostgreSQL => &kinds::CNPG_ROLE,
        Engine::MariaDB => &kinds::MARIADB_USER,
    }
}

/// What to install when the cluster does not serve `db`'s engine, if it does not.
pub fn missing_database_operator(db: &Database, ctx: &Context) -> Option<String> {
    let operator = match db.engine {
        Engine::PostgreSQL => "CloudNativePG (1.30 or later)",
        Engine::MariaDB => "mariadb-operator (0.38 or later)",
    };
    not_served(
        server_kind(db),
        &format!("spec.database asks for {:?}", db.engine),
        operator,
        ctx,
    )
}

/// With a platform object store: unless the cluster serves what backs up `db`'s engine.
pub fn missing_backup_kinds(db: &Database, ctx: &Context) -> Option<String> {
    ctx.config.backup_store.as_ref()?;
    let what = "database backups (--backup-object-store) need it";
    match db.engine {
        Engine::PostgreSQL => not_served(
            &kinds::OBJECT_STORE,
            what,
            "CloudNativePG's barman-cloud plugin (0.15 or later)",
            ctx,
        )
        .or_else(|| {
            not_served(
                &kinds::SCHEDULED_BACKUP,
                what,
                "CloudNativePG (1.30 or later)",
                ctx,
            )
        }),
        Engine::MariaDB => not_served(
            &kinds::MARIADB_BACKUP,
            what,
            "mariadb-operator (0.38 or later)",
            ctx,
        ),
    }
}

/// Unless the cluster serves `kind`: that `what` needs it, and to install `operator`.
pub fn not_served(kind: &Kind, what: &str, operator: &str, ctx: &Context) -> Option<String> {
    (!ctx.caches.serves(kind)).then(|| {
        format!(
            "{what}, which this cluster does not serve: it has no {}/{} {}. Install {operator}, \
             its CRDs and its controller; the operator picks them up by itself",
            kind.group, kind.version, kind.kind
        )
    })
}

/// Where comune `m`'s database for `s` is: where it was made (a server in its namespace, or its
/// user on the service's server), else where its data classification puts it.
pub fn place_of(s: &SharedService, db: &Database, m: &Municipality, ctx: &Context) -> Place {
    let ns = namespace_name(m, &ctx.config);
    if ctx
        .caches
        .get(server_kind(db), Some(&ns), &server_name(s))
        .is_some()
    {
        return Place::Own;
    }
    if ctx
        .caches
        .get(user_kind(db), Some(&shared_namespace(s)), &m.name_any())
        .is_some()
    {
        return Place::SharedServer;
    }
    place_for(m)
}

/// The instance's database user and its password, in the Secret `<service>-database` beside the
/// application and, on a shared server, in the one beside the server: made before the objects
/// that read them, so the operator never reads them back. Once the user object exists they are
/// left as they are. Until then a password is new: if only one Secret of two was made (the
/// operator stopped in between), both get a new one, which nothing has used yet.
pub async fn ensure_database_secrets(
    s: &SharedService,
    db: &Database,
    ns: &str,
    comune: Option<&str>,
    place: Place,
    ctx: &Context,
) -> Result<(), Error> {
    let target = target(s, ns, comune, place);
    let made = match place {
        Place::Own => ctx.caches.get(server_kind(db), Some(ns), &server_name(s)),
        Place::SharedServer => {
            ctx.caches
                .get(user_kind(db), Some(&target.namespace), &target.object)
        }
    };
    if made.is_some() {
        return Ok(());
    }
    let password = new_password();
    let mut secrets = vec![(ns.to_string(), database_secret_name(s))];
    if place == Place::SharedServer {
        secrets.push((target.namespace.clone(), target.secret.clone()));
    }
    let mut all_new = true;
    for (secret_ns, name) in &secrets {
        let secret = database_secret(s, db, &target, secret_ns, name, comune, &password);
        all_new &= create_once(ctx, &secret).await?;
    }
    // A Secret of a server of its own is read only once the server exists: the first one stays.
    if all_new || place == Place::Own {
        return Ok(());
    }
    for (secret_ns, name) in &secrets {
        let secret = database_secret(s, db, &target, secret_ns, name, comune, &password);
        ctx.metrics.wrote("Secret");
        Api::<Secret>::namespaced(ctx.client.clone(), secret_ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(&secret))
            .await
            .during(Step::NewPassword, describe("Secret", Some(secret_ns), name))?;
    }
    Ok(())
}

/// A database Secret: basic-auth, as both database operators read it, labelled so that they
/// follow a change of the password.
fn database_secret(
    s: &SharedService,
    db: &Database,
    target: &Target,
    ns: &str,
    name: &str,
    comune: Option<&str>,
    password: &str,
) -> Secret {
    let mut labels = secret_labels(s, comune);
    labels.extend([match db.engine {
        Engine::PostgreSQL => ("cnpg.io/reload".to_string(), "true".to_string()),
        Engine::MariaDB => ("k8s.mariadb.com/watch".to_string(), String::new()),
    }]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        type_: Some("kubernetes.io/basic-auth".into()),
        data: Some(BTreeMap::from([
            (
                "username".into(),
                ByteString(target.sql.clone().into_bytes()),
            ),
            ("password".into(), ByteString(password.as_bytes().to_vec())),
        ])),
        ..Default::default()
    }
}

/// Whether `r` is what starts an instance's pods: held back while a new instance waits for its
/// database (one that runs keeps running).
pub fn starts_pods(r: &crate::render::Rendered) -> bool {
    matches!(
        r.resource.kind.as_str(),
        "Deployment" | "PodDisruptionBudget"
    )
}

/// What the instance in `ns` still waits for of its database, if anything: its server and each
/// of its objects, ready as their operator reports it.
pub fn waiting_for(
    s: &SharedService,
    db: &Database,
    ns: &str,
    comune: Option<&str>,
    place: Place,
    ctx: &Context,
) -> Option<String> {
    let target = target(s, ns, comune, place);
    let server = ctx
        .caches
        .get(server_kind(db), Some(&target.namespace), &server_name(s));
    let kind = server_kind(db);
    let what = describe(kind.kind, Some(&target.namespace), &server_name(s));
    if let Err(why) = server.as_deref().map_or(Err("not made yet".into()), ready) {
        return Some(format!("{what}: {why}"));
    }
    let own = place == Place::Own;
    let objects = render_database(s, db, &target, &labels(s, comune), own).ok()?;
    for r in objects {
        let kind = kinds::find(&r.resource)?;
        let name = r.object.name_any();
        let cached = ctx.caches.get(kind, Some(&target.namespace), &name);
        if let Err(why) = cached.as_deref().map_or(Err("not made yet".into()), ready) {
            let what = describe(kind.kind, Some(&target.namespace), &name);
            return Some(format!("{what}: {why}"));
        }
    }
    None
}

/// What a database operator reports of an object: a Ready condition (mariadb-operator, and
/// CloudNativePG's Cluster), or whether it applied the object's generation (CloudNativePG's
/// Database and DatabaseRole).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Reported {
    status: ReportedStatus,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ReportedStatus {
    conditions: Vec<ReportedCondition>,
    applied: Option<bool>,
    message: Option<String>,
    observed_generation: Option<i64>,
    phase: Option<String>,
}

/// A condition in another operator's status.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct ReportedCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub message: Option<String>,
    pub observed_generation: Option<i64>,
}

/// Whether an object is ready as its operator reports it; if not, what it says.
fn ready(obj: &Cached) -> Result<(), String> {
    let status = obj.read::<Reported>().unwrap_or_default().status;
    if let Some(applied) = status.applied {
        let current = status.observed_generation == obj.generation();
        return match (applied, current) {
            (true, true) => Ok(()),
            (true, false) => Err("its change is not applied yet".into()),
            (false, _) => Err(status.message.unwrap_or_else(|| "not applied".into())),
        };
    }
    match status.conditions.iter().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(c
            .message
            .clone()
            .or(status.phase)
            .unwrap_or_else(|| "not ready".into())),
        None => Err(status.phase.unwrap_or_else(|| "not ready yet".into())),
    }
}

#[cfg(test)]
mod tests {
    use kube::api::DynamicObject;
    use serde_json::json;

    use super::*;
    use crate::controller::cached::Dictionary;

    fn cached(value: serde_json::Value) -> Cached {
        let obj: DynamicObject = serde_json::from_value(value).expect("an object");
        Cached::new(obj, &Dictionary::default())
    }

    #[test]
    fn readiness_as_each_database_operator_reports_it() {
        let cluster = |status: &str, message: &str| {
            cached(json!({"metadata": {"name": "sito-db", "generation": 2},
                "status": {"phase": "Setting up primary", "conditions": [
                    {"type": "Ready", "status": status, "message": message}]}}))
        };
        assert_eq!(ready(&cluster("True", "")), Ok(()));
        assert_eq!(
            ready(&cluster("False", "Cluster Is Not Ready")),
            Err("Cluster Is Not Ready".into())
        );
        let database = |applied: bool, observed: i64| {
            cached(json!({"metadata": {"name": "alvito", "generation": 2},
                "status": {"applied": applied, "observedGeneration": observed,
                           "message": "role c_alvito does not exist"}}))
        };
        assert_eq!(ready(&database(true, 2)), Ok(()));
        assert!(ready(&database(true, 1)).is_err(), "an older generation");
        assert_eq!(
            ready(&database(false, 2)),
            Err("role c_alvito does not exist".into())
        );
        let fresh = cached(json!({"metadata": {"name": "alvito"}}));
        assert!(ready(&fresh).is_err(), "no status yet");
    }
}
