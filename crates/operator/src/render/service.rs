//! What a SharedService becomes in a comune's namespace (Dedicated tenancy): the application's
//! Deployment, Service, Ingress, volume claim and settings (see `instance`), filled in for the
//! comune; and what identifies a service's objects.

use std::collections::BTreeMap;

use consorzio_api::{EnvVar, Municipality, SharedService, Tenancy};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{ResourceExt, core::ObjectMeta};

pub use super::selection::{Selection, selects};
use super::{
    Config, MANAGED_BY, MUNICIPALITY_LABEL, Rendered, backup,
    database::{Place, connection, place_for, render_database, render_server, target},
    database_backup::with_backups,
    instance::{Instance, public_url, render_instance},
    municipality::namespace_name,
    network::{render_client_policy, render_server_policy},
    pod::env_var,
    template::{TemplateError, fill},
};

/// Names the SharedService an object belongs to.
pub const SERVICE_LABEL: &str = "consorzio.io/service";
/// The template version an instance runs, on its Deployment.
pub const VERSION_ANNOTATION: &str = "consorzio.io/version";
/// On an instance's Deployment: the name of its generated credentials Secret, which exists
/// (the Secret is created before the Deployment is applied).
pub const CREDENTIALS_ANNOTATION: &str = "consorzio.io/credentials";

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

/// The name of a service's volume claim for its template volume `volume`.
pub fn claim_name(s: &SharedService, volume: &str) -> String {
    format!("{}-{volume}", s.name_any())
}

/// The container's variables of a template: its literal values filled by `fill`, its
/// references as they are; then `overrides` (name: literal value) replace or add.
pub(crate) fn container_env<E>(
    s: &SharedService,
    overrides: Option<&BTreeMap<String, String>>,
    fill: impl Fn(&str) -> Result<String, E>,
) -> Result<Vec<k8s_openapi::api::core::v1::EnvVar>, E> {
    let mut env = vec![];
    for var in &s.spec.template.env {
        let value = var.value.as_deref().map(&fill).transpose()?;
        env.push(env_var(&s.name_any(), var, value));
    }
    for (name, value) in overrides.into_iter().flatten() {
        let var = env_var(
            &s.name_any(),
            &EnvVar::literal(name, ""),
            Some(fill(value)?),
        );
        match env.iter_mut().find(|v| &v.name == name) {
            Some(existing) => *existing = var,
            None => env.push(var),
        }
    }
    Ok(env)
}

/// Every object of a Dedicated service's instance for one comune, except the generated Secrets
/// (created once by the controller, never rendered again): its database where the comune's data
/// classification puts it.
pub fn render_dedicated(
    s: &SharedService,
    m: &Municipality,
    config: &Config,
) -> Result<Vec<Rendered>, ServiceRenderError> {
    render_dedicated_at(s, m, config, place_for(m))
}

/// `render_dedicated`, with the comune's database at `place` (where it was first made).
pub fn render_dedicated_at(
    s: &SharedService,
    m: &Municipality,
    config: &Config,
    place: Place,
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
    let env = container_env(s, o.map(|o| &o.env), filled)?;
    let host = s
        .spec
        .ingress
        .as_ref()
        .map(|i| fill(&i.host, m, config))
        .transpose()
        .map_err(|source| ServiceRenderError::Template {
            municipality: comune.clone(),
            source,
        })?;
    let ns = namespace_name(m, config);
    let target = s
        .spec
        .database
        .as_ref()
        .map(|db| (db, target(s, &ns, Some(&comune), place)));
    let instance = Instance {
        namespace: ns.clone(),
        municipality: Some(comune.clone()),
        env,
        host,
        // A suspended comune runs nothing; its instance comes back when it resumes.
        replicas: if m.spec.suspended {
            0
        } else {
            o.and_then(|o| o.replicas).unwrap_or(t.replicas)
        },
        resources: o
            .and_then(|o| o.resources.clone())
            .or_else(|| t.resources.clone()),
        version: template_version(s, Some(&comune)),
        database: target.as_ref().map(|(db, t)| connection(s, db, t)),
    };
    let mut out = render_instance(s, instance, config)?;
    if let Some((db, target)) = &target {
        let labels = labels(s, Some(&comune));
        let own = place == Place::Own;
        if own {
            out.push(render_server(s, db, &ns, &labels, true)?);
            out.push(Rendered::new(&render_server_policy(
                s, db, &ns, &labels, None, config,
            ))?);
        } else {
            out.push(Rendered::new(&render_client_policy(
                s, db, m, &labels, config,
            ))?);
        }
        out.extend(render_database(s, db, target, &labels, own)?);
        // Backed up on the comune's policy: its own server, or its database on the service's.
        if let Some(store) = &config.backup_store {
            let (schedule, days) = backup::policy(m);
            let databases = [(target.object.as_str(), target.sql.as_str())];
            let server_ns = target.namespace.clone();
            with_backups(
                &mut out,
                s,
                db,
                &server_ns,
                &labels,
                &databases,
                (&schedule, days),
                store,
            )?;
        }
    }
    Ok(out)
}

/// The URL of a comune's Dedicated instance (its `CONSORZIO_URL`), when the service has an
/// ingress and its host renders for the comune.
pub fn instance_url(s: &SharedService, m: &Municipality, config: &Config) -> Option<String> {
    let host = fill(&s.spec.ingress.as_ref()?.host, m, config).ok()?;
    Some(public_url(s, config, &host))
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
    use super::*;
    use crate::render::fixtures::{SITO, comune, service};

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
        s.spec.template.env[0].value = Some("{{ municipality.canton }}".into());
        let err = render_dedicated(&s, &comune("vische", "x"), &Config::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid template for comune vische: {{ municipality.canton }} has no value for this comune"
        );
    }
}
