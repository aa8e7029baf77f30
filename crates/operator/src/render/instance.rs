//! An application instance: its settings ConfigMap, Deployment (and PodDisruptionBudget when it
//! runs several replicas), Service, Ingress (and its host's Certificate: `certificate`) and
//! volume claims (its pod: `pod`), as a Dedicated service renders one in each comune's namespace
//! and a Shared service once in its own.

use std::collections::BTreeMap;

use consorzio_api::AccessMode;
use consorzio_api::SharedService;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        core::v1::{
            ConfigMap, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec, Service,
            ServicePort, ServiceSpec, VolumeResourceRequirements,
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
    certificate::{Tls, render_certificate, tls, tls_secret_name},
    database::Connection,
    pod::pod_template,
    service::{
        CREDENTIALS_ANNOTATION, SERVICE_LABEL, VERSION_ANNOTATION, claim_name, credentials_name,
        labels, meta, settings_name,
    },
};

/// Where an instance runs and what it is given: a Dedicated instance is a comune's, a Shared one
/// (`municipality: None`) serves every selected comune.
pub(crate) struct Instance {
    pub namespace: String,
    pub municipality: Option<String>,
    pub env: Vec<EnvVar>,
    pub host: Option<String>,
    pub replicas: i32,
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    pub version: String,
    /// Where its database is, when the service has one.
    pub database: Option<Connection>,
}

/// The URL of a service behind its ingress host: https when the host has a certificate.
pub(crate) fn public_url(s: &SharedService, config: &Config, host: &str) -> String {
    let scheme = match tls(s, config) {
        Tls::Plain => "http",
        _ => "https",
    };
    format!("{scheme}://{host}")
}

/// The settings ConfigMap, Deployment, Service, Ingress and volume claims of an instance.
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
        settings.insert("CONSORZIO_URL".into(), public_url(s, config, host));
    }
    if let Some(db) = &i.database {
        settings.extend(db.settings());
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
            // A ReadWriteOnce volume attaches to one node: the old pod lets go of it before the
            // new one starts, wherever the new one is scheduled.
            strategy: t
                .volumes
                .iter()
                .any(|v| v.access_mode == AccessMode::ReadWriteOnce)
                .then(|| DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    rolling_update: None,
                }),
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
        if let Tls::Issuer(issuer) = tls(s, config) {
            out.push(render_certificate(s, ns, &labels, &host, issuer)?);
        }
        let secret = tls_secret_name(s, config);
        out.push(Rendered::new(&render_ingress(
            &name, ns, &labels, ingress, secret, host, t.port,
        ))?);
    }
    for v in &t.volumes {
        out.push(Rendered::new(&PersistentVolumeClaim {
            metadata: meta(claim_name(s, &v.name), ns, labels.clone()),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec![format!("{:?}", v.access_mode)]),
                storage_class_name: v.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), v.size.clone())])),
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
    tls_secret: Option<String>,
    host: String,
    port: i32,
) -> Ingress {
    Ingress {
        metadata: meta(name.to_string(), ns, labels.clone()),
        spec: Some(IngressSpec {
            ingress_class_name: ingress.class_name.clone(),
            tls: tls_secret.map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![host.clone()]),
                    secret_name: Some(secret),
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
