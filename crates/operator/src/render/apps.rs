//! The catalogue's applications as they would run on real nodes: what each image documents it
//! writes is on a volume or an empty directory, its port is one its non-root user can bind, and
//! its settings come from objects and keys the operator makes (where its database goes:
//! `database_placement`).

use std::collections::{BTreeMap, BTreeSet};

use consorzio_api::{CREDENTIALS_KEY, DATABASE_SECRET_KEYS, DataClassification, SharedService};
use serde_json::Value;

use super::{
    Config, Rendered,
    database::database_secret_name,
    fixtures::comune,
    service::{credentials_name, is_dedicated, render_dedicated},
    shared::render_shared,
    tenant::{Stage, render_tenant_job},
};

/// What each image's documentation says it writes (see the sources in the catalogue's
/// comments): every path must be on a volume or an empty directory.
const WRITTEN: &[(&str, &[&str])] = &[
    ("sit", &["/opt/geoserver_data", "/tmp"]),
    ("sito-comunale", &["/var/www/html", "/tmp", "/run"]),
    ("nextcloud", &["/var/www/html", "/tmp", "/run"]),
    ("identity", &["/tmp", "/opt/keycloak/data"]),
    // CKAN's uploads, Solr's index and logs; Redis keeps nothing.
    ("opendata", &["/var/lib/ckan", "/tmp", "/var/solr"]),
    ("analytics", &["/var/www/html", "/tmp", "/run"]),
    ("pagopa", &["/var/log/govpay", "/tmp"]),
    (
        "formazione",
        &["/var/www/moodledata", "/var/www/html", "/tmp"],
    ),
];

fn catalogue() -> Vec<SharedService> {
    consorzio_testkit::example_manifests()
        .expect("the examples read")
        .into_iter()
        .filter(|d| d["kind"] == "SharedService")
        .map(|d| serde_json::from_value(d).expect("a valid SharedService"))
        .collect()
}

/// The catalogue's service `name`.
pub(super) fn catalogue_service(name: &str) -> SharedService {
    catalogue()
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{name} in the catalogue"))
}

pub(super) fn json(r: &Rendered) -> Value {
    serde_json::to_value(&r.object).expect("serializes")
}

/// The objects of `s`'s instance for a comune of classification `class` (or the shared one).
pub(super) fn instance(s: &SharedService, class: DataClassification) -> Vec<Rendered> {
    let config = Config::default();
    if is_dedicated(s) {
        let mut m = comune("alvito", "x");
        m.spec.data_classification = class;
        render_dedicated(s, &m, &config).expect("renders")
    } else {
        render_shared(s, &config).expect("renders")
    }
}

pub(super) fn one(objects: &[Rendered], kind: &str) -> Value {
    json(
        objects
            .iter()
            .find(|r| r.resource.kind == kind)
            .unwrap_or_else(|| panic!("a {kind}")),
    )
}

#[test]
fn every_app_runs_as_its_image_documents_under_pod_security_restricted() {
    let services = catalogue();
    let names: BTreeSet<String> = services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    let documented: BTreeSet<String> = WRITTEN.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        names, documented,
        "every catalogue app has its documented paths here"
    );
    for s in &services {
        let name = s.metadata.name.clone().unwrap();
        let objects = instance(s, DataClassification::Ordinary);
        let deployment = one(&objects, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let app = &pod["containers"][0];
        // Non-root, every capability dropped: a port below 1024 needs the sysctl.
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_ne!(pod["securityContext"]["runAsUser"], 0, "{name}");
        for c in pod["containers"].as_array().unwrap() {
            assert_eq!(
                c["securityContext"]["capabilities"]["drop"][0], "ALL",
                "{name}"
            );
            assert_eq!(
                c["securityContext"]["allowPrivilegeEscalation"], false,
                "{name}"
            );
        }
        let port = app["ports"][0]["containerPort"].as_i64().unwrap();
        let unprivileged = pod["securityContext"]["sysctls"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == "net.ipv4.ip_unprivileged_port_start" && s["value"] == "0");
        assert!(
            port >= 1024 || unprivileged,
            "{name}: port {port} is not bindable as non-root"
        );
        // Every documented written path is mounted (a volume or an empty directory), in every
        // container of the pod.
        let written = WRITTEN.iter().find(|(n, _)| *n == name).unwrap().1;
        for c in pod["containers"].as_array().unwrap() {
            let mounts: Vec<&str> = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["mountPath"].as_str())
                .collect();
            for path in written {
                assert!(
                    mounts.iter().any(|m| path.starts_with(m)),
                    "{name}/{}: {path} is written and not mounted ({mounts:?})",
                    c["name"]
                );
            }
        }
        // ReadWriteOnce volumes: one replica, the old pod stopped before the new one starts.
        if objects
            .iter()
            .any(|r| r.resource.kind == "PersistentVolumeClaim")
        {
            assert!(
                deployment["spec"]["replicas"].as_i64().unwrap() <= 1,
                "{name}"
            );
            assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate", "{name}");
        }
    }
}

/// The pod specs of `s`'s tenant Jobs for a comune, which run beside the shared instance.
fn tenant_job_pods(s: &SharedService) -> Vec<Value> {
    let m = comune("alvito", "x");
    [Stage::Onboarding, Stage::Offboarding]
        .into_iter()
        .filter_map(|stage| render_tenant_job(s, &m, stage, &Config::default()).expect("renders"))
        .map(|job| json(&job)["spec"]["template"]["spec"].clone())
        .collect()
}

#[test]
fn every_env_reference_resolves_to_a_key_the_operator_writes() {
    for s in &catalogue() {
        let name = s.metadata.name.clone().unwrap();
        let objects = instance(s, DataClassification::Ordinary);
        let settings = one(&objects, "ConfigMap");
        let settings_keys: BTreeSet<&str> = settings["data"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // What the operator writes: the credentials Secret (ensure_credentials), the database
        // Secret (ensure_database_secrets), the settings (rendered).
        let secrets: BTreeMap<String, Vec<&str>> = BTreeMap::from([
            (credentials_name(s), vec![CREDENTIALS_KEY]),
            (database_secret_name(s), DATABASE_SECRET_KEYS.to_vec()),
        ]);
        let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
        let mut env: Vec<Value> = pod["containers"][0]["env"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // And its tenant Jobs', which run beside the shared instance.
        for pod in tenant_job_pods(s) {
            env.extend(
                pod["containers"][0]["env"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        for var in &env {
            let from = &var["valueFrom"];
            if let Some(r) = from.get("configMapKeyRef") {
                assert_eq!(r["name"], settings["metadata"]["name"], "{name}: {var}");
                assert!(
                    settings_keys.contains(r["key"].as_str().unwrap()),
                    "{name}: {var}"
                );
            }
            if let Some(r) = from.get("secretKeyRef") {
                let keys = secrets.get(r["name"].as_str().unwrap());
                assert!(
                    keys.is_some_and(|k| k.contains(&r["key"].as_str().unwrap())),
                    "{name}: {var} names no key the operator writes"
                );
            }
        }
    }
}

/// The names in `$(NAME)` of a value: Kubernetes fills them from the variables before it and the
/// container's `envFrom`, and leaves any other as it is, which the application then gets.
fn references(value: &str) -> Vec<&str> {
    value
        .split("$(")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(name, _)| name))
        .collect()
}

#[test]
fn every_dependent_variable_names_one_the_container_has() {
    for s in &catalogue() {
        let name = s.metadata.name.clone().unwrap();
        let objects = instance(s, DataClassification::Ordinary);
        let settings = one(&objects, "ConfigMap");
        let mut pods = vec![one(&objects, "Deployment")["spec"]["template"]["spec"].clone()];
        pods.extend(tenant_job_pods(s));
        for c in pods
            .iter()
            .flat_map(|p| p["containers"].as_array().unwrap())
        {
            let mut known: BTreeSet<String> = BTreeSet::new();
            for from in c["envFrom"].as_array().into_iter().flatten() {
                if from["configMapRef"]["name"] == settings["metadata"]["name"] {
                    known.extend(settings["data"].as_object().unwrap().keys().cloned());
                }
                if from["secretRef"]["name"] == credentials_name(s).as_str() {
                    known.insert(CREDENTIALS_KEY.to_string());
                }
            }
            for var in c["env"].as_array().into_iter().flatten() {
                for reference in references(var["value"].as_str().unwrap_or_default()) {
                    assert!(
                        known.contains(reference),
                        "{name}/{}: {} reads $({reference}), which it does not have before it",
                        c["name"],
                        var["name"]
                    );
                }
                known.insert(var["name"].as_str().unwrap().to_string());
            }
        }
    }
}

#[test]
fn a_sidecar_of_another_image_gets_its_own_env_only_and_one_of_the_application_gets_its_settings() {
    let containers = |name: &str| -> Vec<Value> {
        let objects = instance(&catalogue_service(name), DataClassification::Ordinary);
        one(&objects, "Deployment")["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .clone()
    };
    let ckan = containers("opendata");
    let solr = ckan.iter().find(|c| c["name"] == "solr").expect("solr");
    assert_eq!(solr["image"], "docker.io/ckan/ckan-solr:2.11-solr9");
    assert_eq!(solr["envFrom"], Value::Null, "no settings, no credentials");
    assert_eq!(
        solr["env"],
        serde_json::json!([
            {"name": "SOLR_HEAP", "value": "512m"},
            {"name": "SOLR_JETTY_HOST", "value": "127.0.0.1"}
        ])
    );
    assert_eq!(solr["securityContext"], ckan[0]["securityContext"]);
    assert_eq!(solr["volumeMounts"], ckan[0]["volumeMounts"]);
    let matomo = containers("analytics");
    let archiver = matomo.iter().find(|c| c["name"] == "archiver").unwrap();
    assert_eq!(archiver["image"], matomo[0]["image"]);
    assert_eq!(archiver["env"], matomo[0]["env"]);
    assert_eq!(archiver["envFrom"], matomo[0]["envFrom"]);
}
