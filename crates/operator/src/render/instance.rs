//! An application instance: its settings ConfigMap, Deployment (and PodDisruptionBudget when it
//! runs several replicas), Service, Ingress and volume claim, as a Dedicated service renders one
//! in each comune's namespace and a Shared service once in its own.

use std::collections::BTreeMap;

use consorzio_api::SharedService;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource,
            EnvVar, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
            PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            SeccompProfile, SecretEnvSource, SecurityContext, Service, ServicePort, ServiceSpec,
            Volume, VolumeMount, VolumeResourceRequirements,
        },
        networking::v1::{
            HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
            IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::{ResourceExt, core::ObjectMeta};

use super::{
    Config, MUNICIPALITY_LABEL, Rendered,
    service::{
        CREDENTIALS_ANNOTATION, SERVICE_LABEL, VERSION_ANNOTATION, credentials_name, labels, meta,
        settings_name, volume_name,
    },
};

/// User and group the application runs as: never root.
const APP_UID: i64 = 10001;

/// Where an instance runs and what it is given: a Dedicated instance is a comune's, a Shared one
/// (`municipality: None`) serves every selected comune.
pub(crate) struct Instance {
    pub namespace: String,
    pub municipality: Option<String>,
    pub env: BTreeMap<String, String>,
    pub host: Option<String>,
    pub replicas: i32,
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    pub version: String,
}

/// The URL of a service behind its ingress host.
pub(crate) fn public_url(s: &SharedService, host: &str) -> String {
    let tls = s
        .spec
        .ingress
        .as_ref()
        .is_some_and(|i| i.tls_secret_name.is_some());
    format!("{}://{host}", if tls { "https" } else { "http" })
}

/// The settings ConfigMap, Deployment, Service, Ingress and volume claim of an instance.
pub(crate) fn render_instance(
    s: &SharedService,
    i: Instance,
    config: &Config,
) -> Result<Vec<Rendered>, serde_json::Error> {
    let t = &s.spec.template;
    let ns = &i.namespace;
    let name = s.name_any();
    let labels = labels(s, i.municipality.as_deref());
    let replicas = if s.spec.suspended { 0 } else { i.replicas };

    let mut settings = BTreeMap::from([("CONSORZIO_SERVICE".to_string(), name.clone())]);
    if let Some(comune) = &i.municipality {
        settings.insert("CONSORZIO_MUNICIPALITY".into(), comune.clone());
    }
    if let Some(host) = &i.host {
        settings.insert("CONSORZIO_URL".into(), public_url(s, host));
    }
    let settings_map = ConfigMap {
        metadata: meta(settings_name(s), ns, labels.clone()),
        data: Some(settings),
        ..Default::default()
    };

    let mut out = vec![Rendered::new(&settings_map)?];
    let mut selector = BTreeMap::from([(SERVICE_LABEL.to_string(), name.clone())]);
    if let Some(comune) = &i.municipality {
        selector.insert(MUNICIPALITY_LABEL.to_string(), comune.clone());
    }
    let deployment = Deployment {
        metadata: ObjectMeta {
            annotations: Some(BTreeMap::from([
                (VERSION_ANNOTATION.into(), i.version.clone()),
                (CREDENTIALS_ANNOTATION.into(), credentials_name(s)),
            ])),
            ..meta(name.clone(), ns, labels.clone())
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            progress_deadline_seconds: Some(s.spec.rollout.progress_deadline_seconds),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template: pod_template(s, &labels, &i.version, i.env, i.resources, config),
            ..Default::default()
        }),
        ..Default::default()
    };
    out.push(Rendered::new(&deployment)?);
    // Several replicas: a node drain takes one at a time, so the instance keeps serving.
    if replicas > 1 {
        out.push(Rendered::new(&PodDisruptionBudget {
            metadata: meta(name.clone(), ns, labels.clone()),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })?);
    }
    out.push(Rendered::new(&Service {
        metadata: meta(name.clone(), ns, labels.clone()),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: t.port,
                target_port: Some(IntOrString::Int(t.port)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })?);
    if let (Some(ingress), Some(host)) = (&s.spec.ingress, i.host) {
        out.push(Rendered::new(&render_ingress(
            &name, ns, &labels, ingress, host, t.port,
        ))?);
    }
    if let Some(storage) = &t.storage {
        out.push(Rendered::new(&PersistentVolumeClaim {
            metadata: meta(volume_name(s), ns, labels.clone()),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), storage.size.clone())])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })?);
    }
    Ok(out)
}

fn render_ingress(
    name: &str,
    ns: &str,
    labels: &BTreeMap<String, String>,
    ingress: &consorzio_api::IngressTemplate,
    host: String,
    port: i32,
) -> Ingress {
    Ingress {
        metadata: meta(name.to_string(), ns, labels.clone()),
        spec: Some(IngressSpec {
            ingress_class_name: ingress.class_name.clone(),
            tls: ingress.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(host),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: name.to_string(),
                                port: Some(ServiceBackendPort {
                                    number: Some(port),
                                    ..Default::default()
                                }),
                            }),
                            ..Default::default()
                        },
                    }],
                }),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The application's pod: admitted under Pod Security `restricted` (non-root, no privilege
/// escalation, no capabilities, RuntimeDefault seccomp).
fn pod_template(
    s: &SharedService,
    labels: &BTreeMap<String, String>,
    version: &str,
    env: BTreeMap<String, String>,
    resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    config: &Config,
) -> PodTemplateSpec {
    let t = &s.spec.template;
    let name = s.name_any();
    let probe = t.probes.as_ref().map(|p| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(p.path.clone()),
            port: IntOrString::Int(p.port.unwrap_or(t.port)),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    });
    let (volumes, mounts) = match &t.storage {
        Some(storage) => (
            Some(vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: volume_name(s),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            Some(vec![VolumeMount {
                name: "data".into(),
                mount_path: storage.mount_path.clone(),
                ..Default::default()
            }]),
        ),
        None => (None, None),
    };
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
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
                run_as_user: Some(APP_UID),
                run_as_group: Some(APP_UID),
                fs_group: Some(APP_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            tolerations: (!config.pod_tolerations.is_empty())
                .then(|| config.pod_tolerations.clone()),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: name.clone(),
                image: Some(t.image.clone()),
                command: non_empty(&t.command),
                args: non_empty(&t.args),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: t.port,
                    ..Default::default()
                }]),
                env: (!env.is_empty()).then(|| {
                    env.into_iter()
                        .map(|(name, value)| EnvVar {
                            name,
                            value: Some(value),
                            value_from: None,
                        })
                        .collect()
                }),
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
                readiness_probe: probe.clone(),
                liveness_probe: probe.map(|p| Probe {
                    failure_threshold: Some(6),
                    ..p
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: None,
                    }),
                    ..Default::default()
                }),
                volume_mounts: mounts,
                ..Default::default()
            }],
            volumes,
            ..Default::default()
        }),
    }
}
