//! Each comune's tenant inside a Shared application (`spec.tenantJobs`): its onboarding Job when
//! it gets the service, its offboarding Job when it leaves, before its access point goes, and
//! what its entry says of them. A Job's name is a hash of its inputs (`render::tenant`): one
//! that exists, running, done or failed, is not made again, by this pass or after a restart.
//! The Jobs of the current inputs stay as the record: a comune's onboarding Job until it leaves,
//! its offboarding Job until it joins again.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use consorzio_api::{Municipality, MunicipalitySpec, SharedService, TenantState};
use k8s_openapi::api::batch::v1::Job;
use kube::{ResourceExt, api::ObjectMeta};

use super::super::{
    Cached, Context, Error,
    apply::{apply_all, delete},
    kinds,
};
use crate::render::{
    MUNICIPALITY_LABEL,
    shared::shared_namespace,
    tenant::{Stage, TENANT_JOB_LABEL, render_tenant_job},
};

/// How a Job ended, if it did.
enum Ended {
    Running,
    Complete,
    Failed(String),
}

fn ended(job: &Cached) -> Ended {
    let conditions = job
        .read::<Job>()
        .and_then(|j| j.status)
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    let is = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if is("Complete").is_some() {
        return Ended::Complete;
    }
    match is("Failed") {
        Some(c) => Ended::Failed(format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("Failed"),
            c.message.as_deref().unwrap_or_default()
        )),
        None => Ended::Running,
    }
}

/// The comune's tenant Jobs of `stage` in the service's namespace.
fn jobs_of(s: &SharedService, comune: &str, stage: Stage, ctx: &Context) -> Vec<Arc<Cached>> {
    ctx.caches
        .in_namespace(&kinds::JOB, &shared_namespace(s))
        .into_iter()
        .filter(|j| {
            j.label(MUNICIPALITY_LABEL) == Some(comune)
                && j.label(TENANT_JOB_LABEL) == Some(stage.as_str())
        })
        .collect()
}

/// Deletes the comune's Jobs of `stage` but `keep` (with their pods).
async fn delete_jobs(
    s: &SharedService,
    comune: &str,
    stage: Stage,
    keep: Option<&str>,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = shared_namespace(s);
    for job in jobs_of(s, comune, stage, ctx) {
        if Some(job.name()) != keep && !job.deleting() {
            delete(ctx, &kinds::JOB, Some(&ns), job.name()).await?;
        }
    }
    Ok(())
}

/// One pass's onboarding: how many Jobs may still start.
#[derive(Debug)]
pub struct Slots(AtomicUsize);

impl Slots {
    /// The slots left of `spec.tenantJobs.parallelism`, given the onboarding Jobs running.
    pub fn new(s: &SharedService, ctx: &Context) -> Slots {
        let parallelism = s.spec.tenant_jobs.as_ref().map_or(0, |j| j.parallelism);
        let running = ctx
            .caches
            .in_namespace(&kinds::JOB, &shared_namespace(s))
            .iter()
            .filter(|j| j.label(TENANT_JOB_LABEL) == Some(Stage::Onboarding.as_str()))
            .filter(|j| matches!(ended(j), Ended::Running))
            .count();
        Slots(AtomicUsize::new(
            usize::try_from(parallelism)
                .unwrap_or(0)
                .saturating_sub(running),
        ))
    }

    /// Whether comuni wait for a slot: every slot taken, and an onboarding Job missing.
    pub fn exhausted(&self, s: &SharedService) -> bool {
        s.spec
            .tenant_jobs
            .as_ref()
            .is_some_and(|j| j.onboarding.is_some())
            && self.0.load(Ordering::Relaxed) == 0
    }

    fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Makes the comune's onboarding Job unless it exists (or no slot is free: a later pass makes
/// it); a comune that joins again forgets how it left, and Jobs of older inputs go.
pub async fn onboard(
    s: &SharedService,
    m: &Municipality,
    slots: &Slots,
    ctx: &Context,
) -> Result<(), Error> {
    // A placeholder this comune cannot fill: its entry says so (`tenant_state`).
    let Ok(Some(job)) = render_tenant_job(s, m, Stage::Onboarding, &ctx.config) else {
        return Ok(());
    };
    let comune = m.name_any();
    let name = job.object.name_any();
    let exists = ctx
        .caches
        .get(&kinds::JOB, Some(&shared_namespace(s)), &name)
        .is_some();
    if !exists {
        if !slots.take() {
            return Ok(());
        }
        apply_all(ctx, std::slice::from_ref(&job)).await?;
    }
    delete_jobs(s, &comune, Stage::Offboarding, None, ctx).await?;
    delete_jobs(s, &comune, Stage::Onboarding, Some(&name), ctx).await
}

/// What the comune's entry says of its tenant (`serving`: whether the instance is available, which
/// its onboarding waits for): `None` if the service has no onboarding Job.
pub fn tenant_state(
    s: &SharedService,
    m: &Municipality,
    serving: bool,
    ctx: &Context,
) -> Option<TenantState> {
    let job = match render_tenant_job(s, m, Stage::Onboarding, &ctx.config) {
        Ok(job) => job?,
        Err(error) => {
            return Some(TenantState {
                phase: "Failed".into(),
                job: None,
                message: Some(format!("its onboarding Job cannot be made: {error}")),
            });
        }
    };
    let name = job.object.name_any();
    let ns = shared_namespace(s);
    let (phase, message) = match ctx.caches.get(&kinds::JOB, Some(&ns), &name) {
        None if !serving => (
            "Pending",
            Some("its onboarding Job waits for the instance to be ready".to_string()),
        ),
        None => (
            "Pending",
            Some(format!(
                "its onboarding Job waits to run (at most {} of the service run at once)",
                s.spec.tenant_jobs.as_ref().map_or(0, |j| j.parallelism)
            )),
        ),
        Some(job) => match ended(&job) {
            Ended::Running => ("Pending", Some("its onboarding Job runs".to_string())),
            Ended::Complete => ("Provisioned", None),
            Ended::Failed(why) => (
                "Failed",
                Some(format!(
                    "{why}; its logs: kubectl logs -n {ns} job/{name}; delete the Job to run it again"
                )),
            ),
        },
    };
    Some(TenantState {
        phase: phase.into(),
        job: Some(name),
        message,
    })
}

/// The comuni leaving the service (a namespace of theirs not in `keep`, within `covered`) whose
/// offboarding Job has not ended: their access points wait. Starts the Jobs that are not there.
/// Once a Job ends (done or failed: a failure never holds a comune's revocation for longer than
/// the Job's timeout), the comune's onboarding Jobs go. Returns the namespaces to keep a while
/// longer.
pub async fn offboard_leaving(
    s: &SharedService,
    keep: &BTreeSet<String>,
    covered: impl Fn(&str) -> bool,
    ctx: &Context,
) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    if s.spec.tenant_jobs.is_none() {
        return held;
    }
    let prefix = &ctx.config.namespace_prefix;
    let leaving: BTreeSet<String> = ctx
        .caches
        .in_namespace(&kinds::JOB, &shared_namespace(s))
        .iter()
        .filter(|j| j.label(TENANT_JOB_LABEL) == Some(Stage::Onboarding.as_str()))
        .filter_map(|j| j.label(MUNICIPALITY_LABEL).map(str::to_string))
        .filter(|c| covered(c) && !keep.contains(&format!("{prefix}{c}")))
        .collect();
    for comune in leaving {
        match offboard(s, &comune, ctx).await {
            Ok(true) => {}
            Ok(false) => {
                held.insert(format!("{prefix}{comune}"));
            }
            // Its access goes all the same.
            Err(error) => tracing::warn!(
                service = %s.name_any(), %comune, %error,
                "the offboarding Job could not be made; the comune's access goes without it"
            ),
        }
    }
    held
}

/// The comune's offboarding: whether it has ended (or there is none).
async fn offboard(s: &SharedService, comune: &str, ctx: &Context) -> Result<bool, Error> {
    // Its Municipality, or, if it is gone, its name: what most commands need.
    let m = ctx
        .caches
        .municipalities
        .state()
        .iter()
        .find_map(|m| {
            m.0.as_ref()
                .ok()
                .filter(|m| m.name_any() == comune)
                .cloned()
        })
        .unwrap_or_else(|| gone(comune));
    let job = match render_tenant_job(s, &m, Stage::Offboarding, &ctx.config) {
        Ok(job) => job,
        Err(error) => {
            tracing::warn!(service = %s.name_any(), comune, %error, "no offboarding Job");
            None
        }
    };
    let done = match job {
        None => true,
        Some(job) => {
            let name = job.object.name_any();
            match ctx
                .caches
                .get(&kinds::JOB, Some(&shared_namespace(s)), &name)
            {
                None => {
                    apply_all(ctx, std::slice::from_ref(&job)).await?;
                    false
                }
                Some(j) => !matches!(ended(&j), Ended::Running),
            }
        }
    };
    if done {
        delete_jobs(s, comune, Stage::Onboarding, None, ctx).await?;
    }
    Ok(done)
}

/// A comune whose Municipality is gone, as far as its name goes (its display name is its name;
/// a placeholder of anything else cannot be filled, and its Job is not made).
fn gone(comune: &str) -> Municipality {
    let spec = serde_json::json!({"displayName": comune, "country": "IT"});
    Municipality {
        metadata: ObjectMeta {
            name: Some(comune.to_string()),
            ..Default::default()
        },
        spec: serde_json::from_value::<MunicipalitySpec>(spec).unwrap_or_else(|_| unreachable!()),
        status: None,
    }
}

/// How soon a pass looks again while tenant Jobs run or wait.
pub const TENANT_JOBS_POLL: Duration = Duration::from_secs(5);
