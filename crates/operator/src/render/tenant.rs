//! A comune's tenant Job in a Shared service's namespace: its onboarding or offboarding command
//! (`spec.tenantJobs`), as a Job named from a hash of everything it runs with. The same inputs
//! give the same name, so a Job that exists (running, done or failed) is never run twice; new
//! inputs give a new Job.

use std::collections::BTreeMap;

use consorzio_api::{Municipality, SharedService, TenantJob, TenantJobs};
use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::{
        Capabilities, Container, EmptyDirVolumeSource, EnvVar, PodSecurityContext, PodSpec,
        PodTemplateSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
        VolumeMount,
    },
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{ResourceExt, core::ObjectMeta};

use super::{
    Config, MANAGED_BY, MUNICIPALITY_LABEL, Rendered, label_value,
    pod::{APP_UID, env_var},
    service::{SERVICE_LABEL, ServiceRenderError},
    shared::shared_namespace,
    template::fill,
};

/// On a tenant Job and its pod: which of the two it is (`onboarding`, `offboarding`).
pub const TENANT_JOB_LABEL: &str = "consorzio.io/tenant-job";

/// The two moments a comune's space in a Shared application changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// It joins.
    Onboarding,
    /// It leaves.
    Offboarding,
}

impl Stage {
    /// As in labels and names.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Onboarding => "onboarding",
            Stage::Offboarding => "offboarding",
        }
    }

    fn of(self, jobs: &TenantJobs) -> Option<&TenantJob> {
        match self {
            Stage::Onboarding => jobs.onboarding.as_ref(),
            Stage::Offboarding => jobs.offboarding.as_ref(),
        }
    }
}

/// The comune's Job for `stage`, if the service declares one.
pub fn render_tenant_job(
    s: &SharedService,
    m: &Municipality,
    stage: Stage,
    config: &Config,
) -> Result<Option<Rendered>, ServiceRenderError> {
    let Some(jobs) = &s.spec.tenant_jobs else {
        return Ok(None);
    };
    let Some(job) = stage.of(jobs) else {
        return Ok(None);
    };
    let comune = m.name_any();
    let service = s.name_any();
    let mut env = vec![];
    for var in &job.env {
        let value = var
            .value
            .as_deref()
            .map(|v| fill(v, m, config))
            .transpose()
            .map_err(|source| ServiceRenderError::Template {
                municipality: comune.clone(),
                source,
            })?;
        env.push(env_var(&service, var, value));
    }
    // Tools that keep a configuration in $HOME (kcadm.sh) find a writable one.
    env.push(EnvVar {
        name: "HOME".into(),
        value: Some("/tmp".into()),
        value_from: None,
    });
    let image = job.image.clone().unwrap_or(s.spec.template.image.clone());
    let user = s
        .spec
        .template
        .security_context
        .as_ref()
        .and_then(|c| c.run_as_user)
        .unwrap_or(APP_UID);
    let pod = pod(&image, job, env, user, stage, config);
    let spec = JobSpec {
        backoff_limit: Some(jobs.retries),
        active_deadline_seconds: Some(jobs.timeout_seconds),
        template: pod,
        ..Default::default()
    };
    let name = job_name(&comune, stage, &spec);
    let labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (SERVICE_LABEL.to_string(), service),
        (MUNICIPALITY_LABEL.to_string(), comune),
        (TENANT_JOB_LABEL.to_string(), stage.as_str().to_string()),
    ]);
    Ok(Some(Rendered::new(&Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(shared_namespace(s)),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })?))
}

/// `<comune>-<stage>-<hash>`: the hash (FNV-1a, stable across builds) of the stage, the comune
/// and the whole Job spec (image, command, filled variables, retries, timeout).
fn job_name(comune: &str, stage: Stage, spec: &JobSpec) -> String {
    let text = serde_json::to_string(&(stage.as_str(), comune, spec)).unwrap_or_default();
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let short = match stage {
        Stage::Onboarding => "on",
        Stage::Offboarding => "off",
    };
    // 63 characters at most (the Job's name is a label of its pods).
    let comune = label_value(&comune[..comune.len().min(46)]);
    format!("{comune}-{short}-{:012x}", hash & 0xffff_ffff_ffff)
}

/// The Job's pod: one container under Pod Security `restricted`, with a writable /tmp only, no
/// token, no retry in place (the Job makes a new pod), small fixed resources (the namespace's
/// quota counts them). It reaches its instance as any pod of the namespace does.
fn pod(
    image: &str,
    job: &TenantJob,
    env: Vec<EnvVar>,
    user: i64,
    stage: Stage,
    config: &Config,
) -> PodTemplateSpec {
    let quantity = |q: &str| Quantity(q.to_string());
    PodTemplateSpec {
        // Not the service's label: its Service and network policies select the instance by it.
        metadata: Some(ObjectMeta {
            labels: Some(BTreeMap::from([(
                TENANT_JOB_LABEL.to_string(),
                stage.as_str().to_string(),
            )])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(user),
                run_as_group: Some(user),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            tolerations: (!config.pod_tolerations.is_empty())
                .then(|| config.pod_tolerations.clone()),
            containers: vec![Container {
                name: "tenant".into(),
                image: Some(image.to_string()),
                command: Some(job.command.clone()),
                env: Some(env),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".into(), quantity("50m")),
                        ("memory".into(), quantity("128Mi")),
                    ])),
                    limits: Some(BTreeMap::from([
                        ("cpu".into(), quantity("500m")),
                        ("memory".into(), quantity("512Mi")),
                    ])),
                    ..Default::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: None,
                    }),
                    ..Default::default()
                }),
                volume_mounts: Some(vec![VolumeMount {
                    name: "tmp".into(),
                    mount_path: "/tmp".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use consorzio_api::Tenancy;
    use serde_json::json;

    use super::*;
    use crate::render::fixtures::{SITO, comune, service};

    fn with_jobs() -> SharedService {
        let mut s = service(SITO);
        s.metadata.name = Some("sit".into());
        s.spec.tenancy = Tenancy::Shared;
        s.spec.overrides.clear();
        s.spec.tenant_jobs = Some(
            serde_json::from_value(json!({
                "onboarding": {
                    "command": ["sh", "-c", "echo $(WORKSPACE)"],
                    "env": [
                        {"name": "WORKSPACE", "value": "{{ municipality.name }}"},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "credentials", "key": "CONSORZIO_PASSWORD"}}}
                    ]
                },
                "offboarding": {"image": "docker.io/curlimages/curl:8.11.0", "command": ["true"]}
            }))
            .expect("tenant jobs"),
        );
        s
    }

    fn job(s: &SharedService, m: &Municipality, stage: Stage) -> serde_json::Value {
        let r = render_tenant_job(s, m, stage, &Config::default())
            .expect("renders")
            .expect("declared");
        serde_json::to_value(&r.object).expect("JSON")
    }

    #[test]
    fn a_tenant_job_runs_in_the_services_namespace_for_one_comune_under_restricted() {
        let s = with_jobs();
        let m = comune("barrea", "alto-sangro");
        let j = job(&s, &m, Stage::Onboarding);
        assert_eq!(j["metadata"]["namespace"], "shared-sit");
        assert_eq!(j["metadata"]["labels"][TENANT_JOB_LABEL], "onboarding");
        assert_eq!(j["metadata"]["labels"][MUNICIPALITY_LABEL], "barrea");
        assert!(j["metadata"]["ownerReferences"].is_null());
        let spec = &j["spec"];
        assert_eq!(spec["backoffLimit"], 2);
        assert_eq!(spec["activeDeadlineSeconds"], 600);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let c = &pod["containers"][0];
        assert_eq!(c["image"], s.spec.template.image);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(c["env"][0], json!({"name": "WORKSPACE", "value": "barrea"}));
        assert_eq!(
            c["env"][1]["valueFrom"]["secretKeyRef"],
            json!({"name": "sit-credentials", "key": "CONSORZIO_PASSWORD"})
        );
        assert!(c["resources"]["limits"]["memory"].is_string());
        // Not selected as the instance is (its Service, its subscribers' policy).
        assert!(spec["template"]["metadata"]["labels"][SERVICE_LABEL].is_null());
        let off = job(&s, &m, Stage::Offboarding);
        assert_eq!(
            off["spec"]["template"]["spec"]["containers"][0]["image"],
            "docker.io/curlimages/curl:8.11.0"
        );
    }

    #[test]
    fn the_same_inputs_name_the_same_job_and_new_inputs_a_new_one() {
        let mut s = with_jobs();
        let (a, b) = (comune("barrea", "u"), comune("alfedena", "u"));
        let name = |s: &SharedService, m: &Municipality, stage| {
            job(s, m, stage)["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let first = name(&s, &a, Stage::Onboarding);
        assert!(
            first.starts_with("barrea-on-") && first.len() <= 63,
            "{first}"
        );
        assert_eq!(first, name(&s.clone(), &a.clone(), Stage::Onboarding));
        assert_ne!(first, name(&s, &b, Stage::Onboarding));
        assert_ne!(first, name(&s, &a, Stage::Offboarding));
        if let Some(j) = s.spec.tenant_jobs.as_mut() {
            j.retries = 3;
        }
        assert_ne!(first, name(&s, &a, Stage::Onboarding));
        let long = comune(&"x".repeat(55), "u");
        assert!(name(&s, &long, Stage::Offboarding).len() <= 63);
    }
}
