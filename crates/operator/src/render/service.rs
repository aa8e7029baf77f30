//! What a SharedService becomes in a comune's namespace (Dedicated tenancy): the application's
//! Deployment, Service, Ingress, volume claim and settings.

use std::collections::BTreeMap;

use consorzio_api::{Municipality, SharedService, Tenancy};
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
use kube::{
    ResourceExt,
    core::{Expression, ObjectMeta, Selector},
};

use super::{
    Config, MANAGED_BY, MUNICIPALITY_LABEL, Rendered,
    municipality::{municipality_label, namespace_name},
    template::{TemplateError, fill},
};

/// Names the SharedService an object belongs to.
pub const SERVICE_LABEL: &str = "consorzio.io/service";
/// The template version an instance runs, on its Deployment.
pub const VERSION_ANNOTATION: &str = "consorzio.io/version";
/// On an instance's Deployment: the name of its generated credentials Secret, which exists
/// (the Secret is created before the Deployment is applied).
pub const CREDENTIALS_ANNOTATION: &str = "consorzio.io/credentials";
/// User and group the application runs as: never root.
const APP_UID: i64 = 10001;

/// Why a service cannot be rendered for a comune.
#[derive(Debug, thiserror::Error)]
pub enum ServiceRenderError {
    /// A placeholder cannot be filled.
    #[error("invalid template for comune {municipality}: {source}")]
    Template {
        /// The comune.
        municipality: String,
        /// What is wrong.
        source: TemplateError,
    },
    /// An object could not be serialized.
    #[error("cannot serialize an object")]
    Json(#[from] serde_json::Error),
}

/// Whether a service is offered to a comune: named in `municipalities.names`, or matching
/// `municipalities.selector` on the Municipality's labels plus those derived from its spec
/// (`consorzio.io/union`, `consorzio.io/country`, ...).
pub fn selects(s: &SharedService, m: &Municipality) -> bool {
    Selection::new(s).matches(m)
}

/// A service's choice of comuni, read once to be matched against many.
#[derive(Debug)]
pub struct Selection<'a> {
    names: &'a [String],
    /// `None`: no selector. `Some(None)`: a malformed one (the API server refuses them; should
    /// one get through, it selects nothing).
    selector: Option<Option<Vec<Expression>>>,
}

impl<'a> Selection<'a> {
    pub fn new(s: &'a SharedService) -> Self {
        let selection = &s.spec.municipalities;
        Selection {
            names: &selection.names,
            selector: selection.selector.as_ref().map(|sel| {
                Selector::try_from(sel.clone())
                    .ok()
                    .map(|sel| sel.into_iter().collect())
            }),
        }
    }

    /// Whether the comune is chosen. Its labels are looked up one by one, as the selector asks
    /// for them: building them all for every comune of every pass took a tenth of the operator's
    /// CPU in a cold start of 1,000 comuni.
    pub fn matches(&self, m: &Municipality) -> bool {
        let name = m.metadata.name.as_deref().unwrap_or_default();
        if self.names.iter().any(|n| n == name) {
            return true;
        }
        let Some(Some(selector)) = &self.selector else {
            return false;
        };
        // The labels derived from the spec take precedence over the Municipality's own.
        let label = |key: &str| municipality_label(m, key).or_else(|| m.labels().get(key).cloned());
        selector.iter().all(|expression| match expression {
            Expression::In(key, values) => label(key).is_some_and(|v| values.contains(&v)),
            Expression::NotIn(key, values) => label(key).is_none_or(|v| !values.contains(&v)),
            Expression::Equal(key, value) => label(key).as_ref() == Some(value),
            Expression::NotEqual(key, value) => label(key).as_ref() != Some(value),
            Expression::Exists(key) => label(key).is_some(),
            Expression::DoesNotExist(key) => label(key).is_none(),
        })
    }
}

/// A short, stable fingerprint of everything in the template that changes the pods: the
/// rollout compares instances by it. FNV-1a, so it stays the same across operator builds.
pub fn template_version(s: &SharedService, comune: Option<&str>) -> String {
    Versions::new(s).of(comune)
}

/// The template versions of one service, for many comuni: the template is serialized and hashed
/// once, and only a comune's overrides, if it has any, for each comune.
#[derive(Debug)]
pub struct Versions<'a> {
    s: &'a SharedService,
    tag: &'a str,
    hash: u64,
}

impl<'a> Versions<'a> {
    pub fn new(s: &'a SharedService) -> Self {
        let text = serde_json::to_string(&s.spec.template).unwrap_or_default();
        let image = &s.spec.template.image;
        let tag = image.rsplit_once('@').map_or_else(
            || image.rsplit_once(':').map_or("", |(_, t)| t),
            |(_, digest)| &digest[..digest.len().min(19)],
        );
        Versions {
            s,
            tag,
            hash: fnv(0xcbf2_9ce4_8422_2325, &text),
        }
    }

    /// The version of the instance of `comune` (of the shared instance: `None`).
    pub fn of(&self, comune: Option<&str>) -> String {
        let hash = match comune.and_then(|c| self.s.spec.overrides.get(c)) {
            Some(o) => fnv(self.hash, &serde_json::to_string(o).unwrap_or_default()),
            None => self.hash,
        };
        format!("{}-{:08x}", self.tag, hash as u32)
    }
}

/// FNV-1a of `text`, continuing from `hash`.
fn fnv(mut hash: u64, text: &str) -> u64 {
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The name of an instance's settings ConfigMap.
pub fn settings_name(s: &SharedService) -> String {
    format!("{}-settings", s.name_any())
}

pub(crate) fn labels(s: &SharedService, municipality: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (SERVICE_LABEL.to_string(), s.name_any()),
        ("app.kubernetes.io/name".to_string(), s.name_any()),
    ]);
    if let Some(m) = municipality {
        labels.insert(MUNICIPALITY_LABEL.to_string(), m.to_string());
    }
    labels
}

pub(crate) fn meta(name: String, ns: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(ns.to_string()),
        labels: Some(labels),
        ..Default::default()
    }
}

/// The name of the generated credentials Secret of a service in a namespace.
pub fn credentials_name(s: &SharedService) -> String {
    format!("{}-credentials", s.name_any())
}

/// The name of a service's data volume claim.
pub fn volume_name(s: &SharedService) -> String {
    format!("{}-data", s.name_any())
}

/// Every object of a Dedicated service's instance for one comune, except the generated Secret
/// (created once by the controller, never rendered again).
pub fn render_dedicated(
    s: &SharedService,
    m: &Municipality,
    config: &Config,
) -> Result<Vec<Rendered>, ServiceRenderError> {
    let comune = m.name_any();
    let filled = |text: &str| {
        fill(text, m, config).map_err(|source| ServiceRenderError::Template {
            municipality: comune.clone(),
            source,
        })
    };
    let t = &s.spec.template;
    let o = s.spec.overrides.get(&comune);
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for var in &t.env {
        env.insert(var.name.clone(), filled(&var.value)?);
    }
    for (name, value) in o.map(|o| &o.env).into_iter().flatten() {
        env.insert(name.clone(), filled(value)?);
    }
    let host = s
        .spec
        .ingress
        .as_ref()
        .map(|i| filled(&i.host))
        .transpose()?;
    let instance = Instance {
        namespace: namespace_name(m, config),
        municipality: Some(comune.clone()),
        env,
        host,
        replicas: o.and_then(|o| o.replicas).unwrap_or(t.replicas),
        resources: o
            .and_then(|o| o.resources.clone())
            .or_else(|| t.resources.clone()),
        version: template_version(s, Some(&comune)),
    };
    Ok(render_instance(s, instance, config)?)
}

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

/// The URL of a comune's Dedicated instance (its `CONSORZIO_URL`), when the service has an
/// ingress and its host renders for the comune.
pub fn instance_url(s: &SharedService, m: &Municipality, config: &Config) -> Option<String> {
    let host = fill(&s.spec.ingress.as_ref()?.host, m, config).ok()?;
    Some(public_url(s, &host))
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

/// How many of `total` comuni may be updating at once (a rollout's wave).
pub fn max_unavailable(s: &SharedService, total: usize) -> usize {
    wave_size(&s.spec.rollout.max_unavailable, total)
}

/// How many of `total` comuni `max_unavailable` (a number, or a percentage rounded up) lets
/// update at once: at least one.
pub fn wave_size(max_unavailable: &IntOrString, total: usize) -> usize {
    match max_unavailable {
        IntOrString::Int(n) => (*n).max(1) as usize,
        IntOrString::String(text) => {
            let percent: usize = text.trim_end_matches('%').parse().unwrap_or(100);
            (total * percent).div_ceil(100).max(1)
        }
    }
}

/// Whether `s` is Dedicated.
pub fn is_dedicated(s: &SharedService) -> bool {
    s.spec.tenancy == Tenancy::Dedicated
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn service(yaml: &str) -> SharedService {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn comune(name: &str, union: &str) -> Municipality {
        serde_yaml::from_str(&format!(
            "apiVersion: consorzio.io/v1alpha1\nkind: Municipality\nmetadata: {{name: {name}, labels: {{area: canavese}}}}\n\
             spec: {{displayName: {name}, country: IT, istatCode: \"001185\", belfioreCode: G462, province: TO, region: Piemonte, union: {union}}}\n"
        ))
        .unwrap()
    }

    const SITO: &str = r#"
apiVersion: consorzio.io/v1alpha1
kind: SharedService
metadata: {name: sito}
spec:
  displayName: Sito
  tenancy: Dedicated
  municipalities: {selector: {matchLabels: {consorzio.io/union: canavese-digitale}}}
  template:
    image: docker.io/library/wordpress:6.6.2-apache
    port: 8080
    env: [{name: TITLE, value: "Comune di {{ municipality.displayName }}"}]
    probes: {path: /healthz}
    storage: {size: 5Gi, mountPath: /data}
  ingress: {host: "{{ municipality.name }}.comuni.example.it", tlsSecretName: wildcard}
  overrides:
    perosa: {replicas: 3, env: {TITLE: "Perosa!"}}
"#;

    #[test]
    fn selection_by_union_label_names_and_expressions() {
        let s = service(SITO);
        assert!(selects(&s, &comune("perosa", "canavese-digitale")));
        assert!(!selects(&s, &comune("vische", "altro")));
        let mut by_name = s.clone();
        by_name.spec.municipalities.selector = None;
        by_name.spec.municipalities.names = vec!["vische".into()];
        assert!(selects(&by_name, &comune("vische", "altro")));
        let mut by_expression = s.clone();
        by_expression.spec.municipalities.selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "area".into(),
                operator: "In".into(),
                values: Some(vec!["canavese".into()]),
            }]),
            ..Default::default()
        });
        assert!(
            selects(&by_expression, &comune("vische", "altro")),
            "the Municipality's own labels count"
        );
    }

    #[test]
    fn selection_matches_as_a_selector_on_all_the_comune_labels_would() {
        use kube::core::SelectorExt;
        let requirement = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let requirements = [
            requirement("consorzio.io/union", "In", &["canavese-digitale", "x"]),
            requirement("consorzio.io/union", "NotIn", &["canavese-digitale"]),
            requirement("consorzio.io/region", "In", &["piemonte"]),
            requirement("consorzio.io/canton", "NotIn", &["TI"]),
            requirement("area", "In", &["canavese"]),
            requirement("area", "Exists", &[]),
            requirement("consorzio.io/canton", "Exists", &[]),
            requirement("consorzio.io/canton", "DoesNotExist", &[]),
            requirement("consorzio.io/country", "DoesNotExist", &[]),
        ];
        let mut s = service(SITO);
        let comuni = [
            comune("perosa", "canavese-digitale"),
            comune("vische", "altro"),
        ];
        for (i, first) in requirements.iter().enumerate() {
            for second in &requirements[i..] {
                let selector = LabelSelector {
                    match_expressions: Some(vec![first.clone(), second.clone()]),
                    match_labels: Some([("consorzio.io/country".into(), "IT".into())].into()),
                };
                s.spec.municipalities.selector = Some(selector.clone());
                let reference = Selector::try_from(selector).unwrap();
                for m in &comuni {
                    let mut labels = m.labels().clone();
                    labels.extend(crate::render::municipality_labels(m));
                    assert_eq!(
                        selects(&s, m),
                        reference.matches(&labels),
                        "{} with {first:?} and {second:?}",
                        m.name_any()
                    );
                }
            }
        }
    }

    #[test]
    fn dedicated_instance_lives_in_the_comune_namespace_with_its_own_host() {
        let objects =
            render_dedicated(&service(SITO), &comune("vische", "x"), &Config::default()).unwrap();
        let names: Vec<String> = objects.iter().map(Rendered::describe).collect();
        assert_eq!(
            names,
            [
                "ConfigMap comune-vische/sito-settings",
                "Deployment comune-vische/sito",
                "Service comune-vische/sito",
                "Ingress comune-vische/sito",
                "PersistentVolumeClaim comune-vische/sito-data",
            ]
        );
        let ingress = serde_json::to_value(&objects[3].object).unwrap();
        assert_eq!(
            ingress["spec"]["rules"][0]["host"],
            "vische.comuni.example.it"
        );
        let settings = serde_json::to_value(&objects[0].object).unwrap();
        assert_eq!(
            settings["data"]["CONSORZIO_URL"],
            "https://vische.comuni.example.it"
        );
    }

    #[test]
    fn an_instance_url_is_the_one_its_settings_give() {
        let (s, m) = (service(SITO), comune("vische", "x"));
        let objects = render_dedicated(&s, &m, &Config::default()).unwrap();
        let settings = serde_json::to_value(&objects[0].object).unwrap();
        assert_eq!(
            instance_url(&s, &m, &Config::default()).as_deref(),
            settings["data"]["CONSORZIO_URL"].as_str()
        );
    }

    #[test]
    fn pods_comply_with_pod_security_restricted() {
        let objects =
            render_dedicated(&service(SITO), &comune("vische", "x"), &Config::default()).unwrap();
        let d = serde_json::to_value(&objects[1].object).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(c["env"][0]["value"], "Comune di vische");
    }

    #[test]
    fn overrides_change_one_comune_only_and_its_version() {
        let s = service(SITO);
        let perosa = render_dedicated(&s, &comune("perosa", "x"), &Config::default()).unwrap();
        let d = serde_json::to_value(&perosa[1].object).unwrap();
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
            "Perosa!"
        );
        assert_ne!(
            template_version(&s, Some("perosa")),
            template_version(&s, Some("vische"))
        );
        assert!(template_version(&s, None).starts_with("6.6.2-apache-"));
    }

    #[test]
    fn an_instance_of_several_replicas_keeps_one_through_a_drain() {
        let s = service(SITO);
        let kinds = |name: &str| -> Vec<String> {
            render_dedicated(&s, &comune(name, "x"), &Config::default())
                .unwrap()
                .iter()
                .map(|r| r.resource.kind.clone())
                .collect()
        };
        assert!(!kinds("vische").contains(&"PodDisruptionBudget".to_string()));
        let perosa = render_dedicated(&s, &comune("perosa", "x"), &Config::default()).unwrap();
        let pdb = perosa
            .iter()
            .find(|r| r.resource.kind == "PodDisruptionBudget")
            .expect("perosa runs 3 replicas");
        let pdb = serde_json::to_value(&pdb.object).unwrap();
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        let deployment = serde_json::to_value(&perosa[1].object).unwrap();
        assert_eq!(
            pdb["spec"]["selector"], deployment["spec"]["selector"],
            "it covers the instance's pods"
        );
    }

    #[test]
    fn suspended_service_runs_no_pods() {
        let mut s = service(SITO);
        s.spec.suspended = true;
        let objects = render_dedicated(&s, &comune("perosa", "x"), &Config::default()).unwrap();
        assert_eq!(
            serde_json::to_value(&objects[1].object).unwrap()["spec"]["replicas"],
            0
        );
    }

    #[test]
    fn a_placeholder_the_comune_cannot_fill_is_an_error_naming_it() {
        let mut s = service(SITO);
        s.spec.template.env[0].value = "{{ municipality.canton }}".into();
        let err = render_dedicated(&s, &comune("vische", "x"), &Config::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid template for comune vische: {{ municipality.canton }} has no value for this comune"
        );
    }
}
