//! An instance's pod: the application's container (and its sidecars) as Pod Security
//! `restricted` admits it and as real nodes can run it: a non-root user that can bind the
//! application's port, owns its volumes and writes its scratch paths.

use std::collections::BTreeMap;

use consorzio_api::{SharedService, referenced_object};
use k8s_openapi::{
    api::core::v1::{
        Capabilities, ConfigMapEnvSource, ConfigMapKeySelector, Container, ContainerPort,
        EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, HTTPHeader,
        PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
        ResourceRequirements, SeccompProfile, SecretEnvSource, SecretKeySelector, SecurityContext,
        Sysctl, Volume, VolumeMount,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{ResourceExt, core::ObjectMeta};

use super::{
    Config,
    service::{VERSION_ANNOTATION, claim_name, credentials_name, settings_name},
};

/// User and group the application runs as unless its template says otherwise: never root.
pub const APP_UID: i64 = 10001;
/// The init container that makes each volume's directory, owned by the application's user.
pub const INIT_VOLUMES: &str = "init-volumes";
/// The directory of each volume that the application sees: the volume's root belongs to root
/// (with `fsGroup` its group), and images that copy themselves in with `tar` (WordPress, Matomo)
/// fail there unless they own it.
const VOLUME_DIR: &str = "data";
/// Where the init container mounts the volumes.
const INIT_MOUNT: &str = "/consorzio/volumes";

/// A template's variable as the container gets it: a filled literal value, or a key of the
/// instance's own Secret or ConfigMap, `<service>-<name>` (the API refuses any other).
pub fn env_var(service: &str, var: &consorzio_api::EnvVar, value: Option<String>) -> EnvVar {
    let from = var.value_from.as_ref();
    let secret = from.and_then(|f| f.secret_key_ref.as_ref());
    let settings = from.and_then(|f| f.config_map_key_ref.as_ref());
    EnvVar {
        name: var.name.clone(),
        value: from.is_none().then(|| value.unwrap_or_default()),
        value_from: from.map(|_| EnvVarSource {
            secret_key_ref: secret.map(|r| SecretKeySelector {
                name: referenced_object(service, &r.name),
                key: r.key.clone(),
                optional: None,
            }),
            config_map_key_ref: settings.map(|r| ConfigMapKeySelector {
                name: referenced_object(service, &r.name),
                key: r.key.clone(),
                optional: None,
            }),
            ..Default::default()
        }),
    }
}

/// The application's pod template.
pub(crate) fn pod_template(
    s: &SharedService,
    labels: &BTreeMap<String, String>,
    version: &str,
    env: Vec<EnvVar>,
    resources: Option<ResourceRequirements>,
    config: &Config,
) -> PodTemplateSpec {
    let t = &s.spec.template;
    let sc = t.security_context.clone().unwrap_or_default();
    let user = sc.run_as_user.unwrap_or(APP_UID);
    let group = sc.run_as_group.unwrap_or(user);
    let (volumes, mounts) = volumes(s);
    let restricted = || SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..Default::default()
    };
    let app = Container {
        name: s.name_any(),
        image: Some(t.image.clone()),
        command: non_empty(&t.command),
        args: non_empty(&t.args),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: t.port,
            ..Default::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        env_from: Some(vec![
            EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: settings_name(s),
                    optional: None,
                }),
                ..Default::default()
            },
            EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: credentials_name(s),
                    optional: Some(true),
                }),
                ..Default::default()
            },
        ]),
        resources,
        readiness_probe: probe(s, 1),
        liveness_probe: probe(s, 6),
        // Five minutes to start (a first install, a schema migration) before liveness counts.
        startup_probe: probe(s, 30),
        security_context: Some(restricted()),
        volume_mounts: (!mounts.is_empty()).then(|| mounts.clone()),
        ..Default::default()
    };
    // Sidecars: the pod's user and volumes; the application's image, settings and secrets
    // unless it names another program's image, which gets only its own literal env. Not probed
    // (the application's probes say whether the pod serves), no port of their own.
    let sidecars = t.sidecars.iter().map(|c| {
        let own = c.env.iter().map(|(name, value)| EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            value_from: None,
        });
        let (env, env_from) = match &c.image {
            Some(_) => (own.collect::<Vec<_>>(), None),
            None => {
                let mut env = app.env.clone().unwrap_or_default();
                env.retain(|v| !c.env.contains_key(&v.name));
                env.extend(own);
                (env, app.env_from.clone())
            }
        };
        Container {
            name: c.name.clone(),
            image: c.image.clone().or_else(|| app.image.clone()),
            command: Some(c.command.clone()),
            args: None,
            env: (!env.is_empty()).then_some(env),
            env_from,
            resources: c.resources.clone(),
            ports: None,
            readiness_probe: None,
            liveness_probe: None,
            startup_probe: None,
            ..app.clone()
        }
    });
    let mut containers = vec![app.clone()];
    containers.extend(sidecars);
    // Each volume's directory, made by the application's user: it owns what it finds there.
    let init = (!t.volumes.is_empty()).then(|| {
        vec![Container {
            name: INIT_VOLUMES.into(),
            image: Some(t.image.clone()),
            command: Some(
                ["mkdir", "-p"]
                    .into_iter()
                    .map(String::from)
                    .chain(
                        t.volumes
                            .iter()
                            .map(|v| format!("{INIT_MOUNT}/{}/{VOLUME_DIR}", v.name)),
                    )
                    .collect(),
            ),
            resources: app.resources.clone(),
            security_context: Some(restricted()),
            volume_mounts: Some(
                t.volumes
                    .iter()
                    .map(|v| VolumeMount {
                        name: volume(&v.name),
                        mount_path: format!("{INIT_MOUNT}/{}", v.name),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }]
    });
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                VERSION_ANNOTATION.into(),
                version.into(),
            )])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(user),
                run_as_group: Some(group),
                fs_group: Some(sc.fs_group.unwrap_or(group)),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                // A port below 1024 (Apache's 80) is bound by the non-root user through this
                // namespaced sysctl, which Pod Security `restricted` allows, not a capability.
                sysctls: (t.port < 1024).then(|| {
                    vec![Sysctl {
                        name: "net.ipv4.ip_unprivileged_port_start".into(),
                        value: "0".into(),
                    }]
                }),
                ..Default::default()
            }),
            tolerations: (!config.pod_tolerations.is_empty())
                .then(|| config.pod_tolerations.clone()),
            automount_service_account_token: Some(false),
            init_containers: init,
            containers,
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..Default::default()
        }),
    }
}

fn non_empty(v: &[String]) -> Option<Vec<String>> {
    (!v.is_empty()).then(|| v.to_vec())
}

/// The pod's name of a template volume.
fn volume(name: &str) -> String {
    format!("volume-{name}")
}

/// The pod's volumes (claims, then scratch directories) and the application's mounts.
fn volumes(s: &SharedService) -> (Vec<Volume>, Vec<VolumeMount>) {
    let t = &s.spec.template;
    let mut volumes = vec![];
    let mut mounts = vec![];
    for v in &t.volumes {
        volumes.push(Volume {
            name: volume(&v.name),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(s, &v.name),
                read_only: None,
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume(&v.name),
            mount_path: v.mount_path.clone(),
            sub_path: Some(VOLUME_DIR.into()),
            ..Default::default()
        });
    }
    for (i, path) in t.scratch.iter().enumerate() {
        let name = format!("scratch-{i}");
        volumes.push(Volume {
            name: name.clone(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: path.clone(),
            ..Default::default()
        });
    }
    (volumes, mounts)
}

/// The application's HTTP probe, failing after `failures` checks ten seconds apart.
fn probe(s: &SharedService, failures: i32) -> Option<Probe> {
    let t = &s.spec.template;
    let p = t.probes.as_ref()?;
    Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some(p.path.clone()),
            port: IntOrString::Int(p.port.unwrap_or(t.port)),
            http_headers: p.host.as_ref().map(|host| {
                vec![HTTPHeader {
                    name: "Host".into(),
                    value: host.clone(),
                }]
            }),
            ..Default::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(failures),
        ..Default::default()
    })
}
