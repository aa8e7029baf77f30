//! The API server refuses bad Municipality and SharedService manifests with a message that names
//! the field, and accepts the examples of deploy/examples. Runs against the local control plane.

use anyhow::{Context, bail};
use consorzio_testkit::{Env, example_manifests, install_crds, run, unique_name};
use kube::{
    Api,
    api::{DynamicObject, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use serde_json::{Value, json};

fn resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "Municipality" => "municipalities",
        "SharedService" => "sharedservices",
        other => panic!("unknown kind {other}"),
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("consorzio.io", "v1alpha1", kind),
        plural,
    )
}

fn italian() -> Value {
    json!({
        "apiVersion": "consorzio.io/v1alpha1", "kind": "Municipality",
        "metadata": {"name": "placeholder"},
        "spec": {
            "displayName": "Alvito", "country": "IT", "istatCode": "060004",
            "belfioreCode": "A244", "province": "FR", "region": "Lazio",
            "contacts": {"rtd": {"name": "RTD", "email": "rtd@comune.example.it"}},
            "access": {"admins": [{"kind": "Group", "name": "alvito-admins"}]}
        }
    })
}

fn swiss() -> Value {
    json!({
        "apiVersion": "consorzio.io/v1alpha1", "kind": "Municipality",
        "metadata": {"name": "placeholder"},
        "spec": {"displayName": "Lugano", "country": "CH", "bfsNumber": 5192, "canton": "TI"}
    })
}

fn service() -> Value {
    json!({
        "apiVersion": "consorzio.io/v1alpha1", "kind": "SharedService",
        "metadata": {"name": "placeholder"},
        "spec": {
            "displayName": "SIT", "tenancy": "Dedicated",
            "municipalities": {"names": ["alvito"]},
            "template": {
                "image": "docker.osgeo.org/geoserver:2.26.1", "port": 8080,
                "env": [{"name": "TITLE", "value": "SIT {{ municipality.displayName }}"}],
                "probes": {"path": "/geoserver/web/"},
                "volumes": [{"name": "data", "size": "10Gi", "mountPath": "/data"}]
            },
            "ingress": {"host": "{{ municipality.name }}.sit.example.org"},
            "rollout": {"maxUnavailable": "10%"}
        }
    })
}

/// A Shared service (no placeholders) with `jobs` as its tenantJobs.
fn shared_with_jobs(jobs: Value) -> Value {
    let shared = set(service(), "/spec/tenancy", json!("Shared"));
    let shared = set(shared, "/spec/template/env", json!([]));
    let shared = set(shared, "/spec/ingress", json!({"host": "sit.example.org"}));
    set(shared, "/spec/tenantJobs", jobs)
}

/// `base` with the value at a JSON pointer set (or removed, for `None`).
fn with(mut base: Value, pointer: &str, value: Option<Value>) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let parent = base
        .pointer_mut(parent)
        .expect("parent exists")
        .as_object_mut()
        .expect("object");
    match value {
        Some(v) => parent.insert(key.to_string(), v),
        None => parent.remove(key),
    };
    base
}

fn set(base: Value, pointer: &str, value: Value) -> Value {
    with(base, pointer, Some(value))
}

fn unset(base: Value, pointer: &str) -> Value {
    with(base, pointer, None)
}

/// An invalid manifest and a piece of the message the API server must answer with.
struct Case {
    what: &'static str,
    manifest: Value,
    message: &'static str,
}

fn invalid_on_create() -> Vec<Case> {
    let c = |what, manifest, message| Case {
        what,
        manifest,
        message,
    };
    vec![
        c(
            "ISTAT code of 5 digits",
            set(italian(), "/spec/istatCode", json!("60004")),
            "spec.istatCode: Invalid value: \"60004\": istatCode must be exactly 6 digits",
        ),
        c(
            "ISTAT code with a letter",
            set(italian(), "/spec/istatCode", json!("06A004")),
            "istatCode must be exactly 6 digits",
        ),
        c(
            "ISTAT code as a number",
            set(italian(), "/spec/istatCode", json!(60004)),
            "spec.istatCode: Invalid value: \"integer\": spec.istatCode in body must be of type string",
        ),
        c(
            "Belfiore code in lowercase",
            set(italian(), "/spec/belfioreCode", json!("a244")),
            "belfioreCode must be a capital letter followed by 3 digits",
        ),
        c(
            "province of three letters",
            set(italian(), "/spec/province", json!("FRO")),
            "province must be the two capital letters",
        ),
        c(
            "Italian comune without ISTAT code",
            unset(italian(), "/spec/istatCode"),
            "a comune in Italy (country: IT) needs istatCode, belfioreCode, province and region",
        ),
        c(
            "Italian comune without region",
            unset(italian(), "/spec/region"),
            "needs istatCode, belfioreCode, province and region",
        ),
        c(
            "Italian comune with a canton",
            set(italian(), "/spec/canton", json!("TI")),
            "bfsNumber and canton are for Swiss municipalities",
        ),
        c(
            "Swiss Gemeinde without BFS number",
            unset(swiss(), "/spec/bfsNumber"),
            "a Gemeinde in Switzerland (country: CH) needs bfsNumber and canton",
        ),
        c(
            "Swiss Gemeinde with an ISTAT code",
            set(swiss(), "/spec/istatCode", json!("013130")),
            "istatCode, belfioreCode, province and region are for Italian comuni",
        ),
        c(
            "BFS number 0",
            set(swiss(), "/spec/bfsNumber", json!(0)),
            "spec.bfsNumber: Invalid value: 0: spec.bfsNumber in body should be greater than or equal to 1",
        ),
        c(
            "BFS number 10000",
            set(swiss(), "/spec/bfsNumber", json!(10000)),
            "spec.bfsNumber in body should be less than or equal to 9999",
        ),
        c(
            "unknown canton",
            set(swiss(), "/spec/canton", json!("XX")),
            "spec.canton: Unsupported value: \"XX\": supported values:",
        ),
        c(
            "unknown country",
            set(italian(), "/spec/country", json!("FR")),
            "spec.country: Unsupported value: \"FR\": supported values: \"IT\", \"CH\"",
        ),
        c(
            "name with a dot",
            set(italian(), "/metadata/name", json!("comune.alvito")),
            "metadata.name must be a DNS label of at most 55 characters",
        ),
        c(
            "name too long for its namespace",
            set(italian(), "/metadata/name", json!("a".repeat(56))),
            "metadata.name must be a DNS label of at most 55 characters",
        ),
        c(
            "service name starting with a digit (not a Service name)",
            set(service(), "/metadata/name", json!("1sito")),
            "metadata.name must be a DNS label of at most 55 characters starting with a letter",
        ),
        c(
            "negative population",
            set(italian(), "/spec/population", json!(-1)),
            "spec.population in body should be greater than or equal to 0",
        ),
        c(
            "union that is not a DNS label",
            set(italian(), "/spec/union", json!("Valle di Comino")),
            "spec.union: Invalid value: \"Valle di Comino\": union must be a DNS label",
        ),
        c(
            "negative CPU quota",
            set(italian(), "/spec/quota", json!({"cpu": "-1"})),
            "spec.quota.cpu: Invalid value: \"-1\": must be a non-negative quantity",
        ),
        c(
            "memory quota that is no quantity",
            set(italian(), "/spec/quota", json!({"memory": "lots"})),
            "spec.quota.memory: Invalid value: \"lots\": must be a non-negative quantity",
        ),
        c(
            "negative pod quota",
            set(italian(), "/spec/quota", json!({"pods": -5})),
            "spec.quota.pods in body should be greater than or equal to 0",
        ),
        c(
            "RTD e-mail without @",
            set(
                italian(),
                "/spec/contacts/rtd/email",
                json!("rtd.comune.example.it"),
            ),
            "email must be an e-mail address",
        ),
        c(
            "admin of kind ServiceAccount",
            set(
                italian(),
                "/spec/access/admins",
                json!([{"kind": "ServiceAccount", "name": "x"}]),
            ),
            "spec.access.admins[0].kind: Unsupported value: \"ServiceAccount\": supported values: \"User\", \"Group\"",
        ),
        c(
            "every authenticated user as admins",
            set(
                italian(),
                "/spec/access/admins",
                json!([{"kind": "Group", "name": "system:authenticated"}]),
            ),
            "spec.access.admins[0].name: Invalid value: \"system:authenticated\": access is for the comune's own users and groups",
        ),
        c(
            "the anonymous user as viewer",
            set(
                italian(),
                "/spec/access/viewers",
                json!([{"kind": "User", "name": "system:anonymous"}]),
            ),
            "spec.access.viewers[0].name: Invalid value: \"system:anonymous\": access is for the comune's own users and groups",
        ),
        c(
            "another namespace's service account as admin",
            set(
                italian(),
                "/spec/access/admins",
                json!([{"kind": "User", "name": "system:serviceaccount:kube-system:default"}]),
            ),
            "names the cluster reserves, starting with 'system:'",
        ),
        c(
            "unknown data classification",
            set(italian(), "/spec/dataClassification", json!("secret")),
            "spec.dataClassification: Unsupported value: \"secret\": supported values: \"ordinary\", \"critical\", \"strategic\"",
        ),
        c(
            "unknown deletion policy",
            set(italian(), "/spec/deletionPolicy", json!("Orphan")),
            "spec.deletionPolicy: Unsupported value: \"Orphan\": supported values: \"Retain\", \"Delete\"",
        ),
        c(
            "empty display name",
            set(italian(), "/spec/displayName", json!("")),
            "spec.displayName in body should be at least 1 chars long",
        ),
        c(
            "image without tag",
            set(service(), "/spec/template/image", json!("nginx")),
            "spec.template.image: Invalid value: \"nginx\": image must carry a tag or a digest",
        ),
        c(
            "image on a registry port without tag",
            set(
                service(),
                "/spec/template/image",
                json!("registry.example:5000/sit"),
            ),
            "image must carry a tag or a digest",
        ),
        c(
            "image tagged latest",
            set(service(), "/spec/template/image", json!("nginx:latest")),
            "image must not use the tag latest",
        ),
        c(
            "port out of range",
            set(service(), "/spec/template/port", json!(70000)),
            "spec.template.port in body should be less than or equal to 65535",
        ),
        c(
            "negative replicas",
            set(service(), "/spec/template/replicas", json!(-1)),
            "spec.template.replicas in body should be greater than or equal to 0",
        ),
        c(
            "unknown tenancy",
            set(service(), "/spec/tenancy", json!("Multi")),
            "spec.tenancy: Unsupported value: \"Multi\": supported values: \"Dedicated\", \"Shared\"",
        ),
        c(
            "no comuni selected",
            set(service(), "/spec/municipalities", json!({})),
            "municipalities needs a selector, a list of names, or both",
        ),
        c(
            "comune name in capitals",
            set(service(), "/spec/municipalities/names", json!(["Alvito"])),
            "spec.municipalities.names[0] in body should match",
        ),
        c(
            "dedicated host without the comune's name",
            set(service(), "/spec/ingress/host", json!("sit.example.org")),
            "ingress.host must contain {{ municipality.name }} when tenancy is Dedicated",
        ),
        c(
            "a certificate from cert-manager and a TLS Secret of its own",
            set(
                set(
                    service(),
                    "/spec/ingress/clusterIssuer",
                    json!("letsencrypt"),
                ),
                "/spec/ingress/tlsSecretName",
                json!("wildcard-tls"),
            ),
            "ingress: set clusterIssuer (cert-manager issues each host's certificate) or tlsSecretName",
        ),
        c(
            "an issuer name that is not a Kubernetes name",
            set(
                service(),
                "/spec/ingress/clusterIssuer",
                json!("Let's Encrypt"),
            ),
            "spec.ingress.clusterIssuer in body should match",
        ),
        c(
            "shared host with a placeholder",
            set(
                set(service(), "/spec/tenancy", json!("Shared")),
                "/spec/template/env",
                json!([]),
            ),
            "ingress.host cannot use placeholders when tenancy is Shared",
        ),
        c(
            "shared env with a placeholder",
            set(
                set(service(), "/spec/tenancy", json!("Shared")),
                "/spec/ingress/host",
                json!("sit.example.org"),
            ),
            "template.env values cannot use placeholders when tenancy is Shared",
        ),
        c(
            "shared service with overrides",
            set(
                set(
                    set(
                        set(service(), "/spec/tenancy", json!("Shared")),
                        "/spec/ingress/host",
                        json!("sit.example.org"),
                    ),
                    "/spec/template/env",
                    json!([]),
                ),
                "/spec/overrides",
                json!({"alvito": {"replicas": 2}}),
            ),
            "overrides apply to Dedicated services only",
        ),
        c(
            "unknown placeholder in env",
            set(
                service(),
                "/spec/template/env",
                json!([{"name": "X", "value": "{{ municipality.mayor }}"}]),
            ),
            "spec.template.env[0].value: Invalid value: \"{{ municipality.mayor }}\": unknown placeholder",
        ),
        c(
            "env name starting with a digit",
            set(
                service(),
                "/spec/template/env",
                json!([{"name": "1X", "value": "v"}]),
            ),
            "spec.template.env[0].name in body should match",
        ),
        c(
            "maxUnavailable 0",
            set(service(), "/spec/rollout/maxUnavailable", json!(0)),
            "maxUnavailable must be a whole number of at least 1, or a percentage from 1% to 100%",
        ),
        c(
            "maxUnavailable 150%",
            set(service(), "/spec/rollout/maxUnavailable", json!("150%")),
            "maxUnavailable must be a whole number of at least 1",
        ),
        c(
            "zero storage",
            set(service(), "/spec/template/volumes/0/size", json!("0")),
            "volumes[].size must be a positive quantity",
        ),
        c(
            "replicas 3 with a ReadWriteOnce volume",
            set(service(), "/spec/template/replicas", json!(3)),
            "spec.template.replicas: Invalid value: replicas greater than 1 need every volume ReadWriteMany",
        ),
        c(
            "an override of 3 replicas with a ReadWriteOnce volume",
            set(
                service(),
                "/spec/overrides",
                json!({"alvito": {"replicas": 3}}),
            ),
            "spec.overrides: Invalid value: overrides[].replicas greater than 1 need every template volume ReadWriteMany",
        ),
        c(
            "a secretKeyRef to a foreign Secret",
            set(
                service(),
                "/spec/template/env",
                json!([{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "kube-root-ca", "key": "password"}}}]),
            ),
            "spec.template.env[0].valueFrom.secretKeyRef: Invalid value: secretKeyRef names one of the instance's own Secrets: credentials (key CONSORZIO_PASSWORD) or, with spec.database, database (keys username, password)",
        ),
        c(
            "a key the credentials do not have",
            set(
                service(),
                "/spec/template/env",
                json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "credentials", "key": "token"}}}]),
            ),
            "spec.template.env[0].valueFrom.secretKeyRef: Invalid value: secretKeyRef names one of the instance's own Secrets",
        ),
        c(
            "the database Secret without a database",
            set(
                service(),
                "/spec/template/env",
                json!([{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "database", "key": "password"}}}]),
            ),
            "spec.template.env: Invalid value: template.env[].valueFrom names what this service does not make: the database Secret and the CONSORZIO_DB_* settings need spec.database",
        ),
        c(
            "a database setting without a database",
            set(
                service(),
                "/spec/template/env",
                json!([{"name": "HOST", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "CONSORZIO_DB_HOST"}}}]),
            ),
            "template.env[].valueFrom names what this service does not make",
        ),
        c(
            "another ConfigMap",
            set(
                service(),
                "/spec/template/env",
                json!([{"name": "HOST", "valueFrom": {"configMapKeyRef": {"name": "kube-root-ca.crt", "key": "ca.crt"}}}]),
            ),
            "spec.template.env[0].valueFrom.configMapKeyRef: Invalid value: configMapKeyRef names the instance's settings (name: settings)",
        ),
        c(
            "value and valueFrom",
            set(
                service(),
                "/spec/template/env",
                json!([{"name": "X", "value": "1", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "CONSORZIO_SERVICE"}}}]),
            ),
            "an env entry has either value or valueFrom, not both and not neither",
        ),
        c(
            "an unknown database engine",
            set(
                service(),
                "/spec/database",
                json!({"engine": "Oracle", "version": "19", "size": "10Gi"}),
            ),
            "spec.database.engine: Unsupported value: \"Oracle\": supported values: \"PostgreSQL\", \"MariaDB\"",
        ),
        c(
            "extensions for MariaDB",
            set(
                service(),
                "/spec/database",
                json!({"engine": "MariaDB", "version": "11.4.5", "size": "10Gi", "extensions": ["postgis"]}),
            ),
            "spec.database.extensions: Invalid value: database.extensions are PostgreSQL extensions",
        ),
        c(
            "a name the database servers take",
            set(service(), "/metadata/name", json!("sito-db")),
            "metadata.name may not end in -db or contain -db-",
        ),
        c(
            "backup at minute 61",
            set(swiss(), "/spec/backup", json!({"schedule": "61 2 * * *"})),
            "backup.schedule must be a cron expression of five fields",
        ),
        c(
            "backup every 0 hours",
            set(swiss(), "/spec/backup", json!({"schedule": "0 */0 * * *"})),
            "backup.schedule must be a cron expression of five fields",
        ),
        c(
            "backup schedule of four fields",
            set(swiss(), "/spec/backup", json!({"schedule": "0 2 * *"})),
            "backup.schedule must be a cron expression of five fields",
        ),
        c(
            "backups kept no day",
            set(swiss(), "/spec/backup", json!({"retentionDays": 0})),
            "spec.backup.retentionDays in body should be greater than or equal to 1",
        ),
        c(
            "tenant Jobs of a Dedicated service",
            set(
                service(),
                "/spec/tenantJobs",
                json!({"onboarding": {"command": ["true"]}}),
            ),
            "tenantJobs apply to Shared services only",
        ),
        c(
            "tenant Jobs with neither Job",
            shared_with_jobs(json!({"retries": 1})),
            "tenantJobs needs onboarding, offboarding or both",
        ),
        c(
            "a tenant Job reading a database the service has not",
            shared_with_jobs(json!({"offboarding": {"command": ["true"], "env": [
                {"name": "P", "valueFrom": {"secretKeyRef": {"name": "database", "key": "password"}}}]}})),
            "tenantJobs env valueFrom names what this service does not make",
        ),
        c(
            "a tenant Job's image at latest",
            shared_with_jobs(
                json!({"onboarding": {"image": "busybox:latest", "command": ["true"]}}),
            ),
            "image must carry a tag (not latest) or a digest",
        ),
        c(
            "a sidecar's image at latest",
            set(
                service(),
                "/spec/template/sidecars",
                json!([{"name": "cache", "image": "redis:latest", "command": ["redis-server"]}]),
            ),
            "sidecars[].image must carry a tag other than latest, or a digest",
        ),
        c(
            "a sidecar's env name starting with a digit",
            set(
                service(),
                "/spec/template/sidecars",
                json!([{"name": "cron", "command": ["true"], "env": {"1SITE": "x"}}]),
            ),
            "sidecars[].env names are letters, digits",
        ),
        c(
            "a placeholder in a sidecar's env",
            set(
                service(),
                "/spec/template/sidecars",
                json!([{"name": "cron", "command": ["true"], "env": {"SITE": "{{ municipality.name }}"}}]),
            ),
            "sidecars[].env values are literal",
        ),
        c(
            "a tenant Job retried 7 times",
            shared_with_jobs(json!({"onboarding": {"command": ["true"]}, "retries": 7})),
            "spec.tenantJobs.retries in body should be less than or equal to 6",
        ),
        c(
            "probe path without a slash",
            set(service(), "/spec/template/probes/path", json!("healthz")),
            "spec.template.probes.path in body should match '^/'",
        ),
    ]
}

/// Valid first, then changed: (what, original, changed, message).
fn invalid_on_update() -> Vec<(&'static str, Value, Value, &'static str)> {
    vec![
        (
            "country changed",
            italian(),
            set(
                unset(
                    unset(
                        unset(
                            unset(
                                set(italian(), "/spec/country", json!("CH")),
                                "/spec/istatCode",
                            ),
                            "/spec/belfioreCode",
                        ),
                        "/spec/province",
                    ),
                    "/spec/region",
                ),
                "/spec/bfsNumber",
                json!(5192),
            ),
            "country cannot be changed once set",
        ),
        (
            "ISTAT code changed",
            italian(),
            set(italian(), "/spec/istatCode", json!("060011")),
            "istatCode cannot be changed once set",
        ),
        (
            "Belfiore code changed",
            italian(),
            set(italian(), "/spec/belfioreCode", json!("A486")),
            "belfioreCode cannot be changed once set",
        ),
        (
            "BFS number changed",
            swiss(),
            set(swiss(), "/spec/bfsNumber", json!(5113)),
            "bfsNumber cannot be changed once set",
        ),
        (
            "a volume's access mode changed",
            service(),
            set(
                service(),
                "/spec/template/volumes/0/accessMode",
                json!("ReadWriteMany"),
            ),
            "a volume's accessMode cannot change (its claims' cannot)",
        ),
        (
            "tenancy changed",
            service(),
            unset(
                set(service(), "/spec/tenancy", json!("Shared")),
                "/spec/ingress",
            ),
            "tenancy cannot be changed",
        ),
    ]
}

fn named(mut manifest: Value, name: &str) -> anyhow::Result<DynamicObject> {
    if manifest.pointer("/metadata/name") == Some(&json!("placeholder")) {
        manifest = set(manifest, "/metadata/name", json!(name));
    }
    Ok(serde_json::from_value(manifest)?)
}

fn api(env: &Env, manifest: &Value) -> Api<DynamicObject> {
    let kind = manifest["kind"].as_str().expect("fixture has a kind");
    Api::all_with(env.client(), &resource(kind))
}

/// Creates `obj`, registering it for clean-up. Returns the API server's refusal, if any.
async fn create(
    env: &Env,
    manifest: &Value,
    name: &str,
) -> anyhow::Result<Result<DynamicObject, kube::core::Status>> {
    let obj = named(manifest.clone(), name)?;
    let kind = manifest["kind"].as_str().context("kind")?;
    match api(env, manifest)
        .create(&PostParams::default(), &obj)
        .await
    {
        Ok(created) => {
            env.delete_later_dynamic(
                resource(kind),
                None,
                created.metadata.name.clone().unwrap_or_default(),
            );
            Ok(Ok(created))
        }
        Err(kube::Error::Api(status)) => Ok(Err(*status)),
        Err(e) => Err(e.into()),
    }
}

fn check_refusal(
    what: &str,
    outcome: Result<DynamicObject, kube::core::Status>,
    message: &str,
    failures: &mut Vec<String>,
) {
    match outcome {
        Ok(_) => failures.push(format!(
            "{what}: accepted, but should be refused with \"{message}\""
        )),
        Err(status) if status.code != 422 => failures.push(format!(
            "{what}: HTTP {} instead of 422: {}",
            status.code, status.message
        )),
        Err(status) if !status.message.contains(message) => failures.push(format!(
            "{what}: message does not contain \"{message}\":\n    {}",
            status.message
        )),
        Err(_) => {}
    }
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_a_message_naming_the_field() {
    run(|env: Env| async move {
        install_crds(&env.client()).await?;
        let cases = invalid_on_create();
        assert!(
            cases.len() >= 25,
            "the issue asks for at least 25 invalid manifests"
        );
        let mut failures = vec![];
        for case in &cases {
            let outcome = create(&env, &case.manifest, &unique_name("bad")).await?;
            check_refusal(case.what, outcome, case.message, &mut failures);
        }
        if !failures.is_empty() {
            bail!(
                "{} of {} invalid manifests were not refused as expected:\n{}",
                failures.len(),
                cases.len(),
                failures.join("\n")
            );
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn immutable_fields_cannot_be_changed() {
    run(|env: Env| async move {
        install_crds(&env.client()).await?;
        let mut failures = vec![];
        for (what, original, changed, message) in invalid_on_update() {
            let name = unique_name("immutable");
            let created = match create(&env, &original, &name).await? {
                Ok(created) => created,
                Err(status) => bail!("{what}: the original was refused: {}", status.message),
            };
            let mut update = named(changed.clone(), &name)?;
            update.metadata.resource_version = created.metadata.resource_version.clone();
            let outcome = match api(&env, &changed)
                .replace(&name, &PostParams::default(), &update)
                .await
            {
                Ok(obj) => Ok(obj),
                Err(kube::Error::Api(status)) => Err(*status),
                Err(e) => return Err(e.into()),
            };
            check_refusal(what, outcome, message, &mut failures);
        }
        if !failures.is_empty() {
            bail!("immutable fields were changed:\n{}", failures.join("\n"));
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn minimal_municipality_gets_the_documented_defaults() {
    run(|env: Env| async move {
        install_crds(&env.client()).await?;
        let created = match create(&env, &swiss(), &unique_name("defaults")).await? {
            Ok(obj) => obj,
            Err(status) => bail!("refused: {}", status.message),
        };
        let spec = &created.data["spec"];
        assert_eq!(
            spec["quota"],
            json!({"cpu": "4", "memory": "8Gi", "storage": "100Gi", "pods": 50})
        );
        assert_eq!(spec["network"], json!({"allowInternetEgress": false}));
        assert_eq!(spec["dataClassification"], "ordinary");
        assert_eq!(spec["deletionPolicy"], "Retain");
        assert_eq!(spec["suspended"], false);
        // Cron schedules of every kind admission lets through.
        for schedule in [
            "30 2 * * *",
            "0 */6 * * 1-5",
            "5,35 8-18/2 1,15 1-12 0",
            "*/15 * * * 7",
        ] {
            let manifest = set(swiss(), "/spec/backup", json!({"schedule": schedule}));
            if let Err(status) = create(&env, &manifest, &unique_name("cron")).await? {
                bail!("{schedule}: refused: {}", status.message);
            }
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn every_example_is_accepted() {
    run(|env: Env| async move {
        install_crds(&env.client()).await?;
        // A prefix keeps the examples apart from a demo (`make run`) on the same cluster.
        let prefix = unique_name("ex");
        let mut count = 0;
        for manifest in example_manifests()? {
            let name = format!(
                "{prefix}-{}",
                manifest["metadata"]["name"].as_str().context("name")?
            );
            let manifest = set(manifest, "/metadata/name", json!(name));
            if let Err(status) = create(&env, &manifest, &name).await? {
                bail!("example {name} was refused: {}", status.message);
            }
            count += 1;
        }
        assert!(
            count >= 30 + 8,
            "expected at least 30 comuni and 8 services, found {count} objects"
        );
        Ok(())
    })
    .await;
}
