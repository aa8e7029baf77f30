//! A SharedService's status: desired and ready instances, the Ready and RolloutHalted
//! conditions, rollout progress, and the comuni whose instance is not ready; and each comune's
//! entry for the service.

use std::time::Duration;

use consorzio_api::{
    Municipality, NotReady, RolloutStatus, ServiceInstanceStatus, SharedService,
    SharedServiceStatus,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use serde_json::json;

use super::{
    super::{
        Context, Error,
        conditions::{Ready, condition, is_true, progress},
        error::{During, Step},
        object::publish,
    },
    InstanceState,
    failures::Failed,
};
use crate::render::service::template_version;

/// Field manager of the status this controller writes.
const STATUS_MANAGER: &str = "consorzio-sharedservice";
/// At most this many comuni are listed in `status.notReady`.
const NOT_READY_LISTED: usize = 20;

/// What the status says.
#[derive(Debug)]
pub struct Summary {
    desired: usize,
    ready: usize,
    ready_condition: Ready,
    not_ready: Vec<NotReady>,
    rollout: Option<RolloutStatus>,
    halted: Option<Vec<String>>,
    /// Comuni where the pass was refused (see `failed_on`).
    refused: Vec<String>,
}

impl Summary {
    /// Nothing could be done: `reason` says why.
    pub fn failed(reason: &'static str, message: String) -> Summary {
        Summary {
            desired: 0,
            ready: 0,
            ready_condition: Ready::no(reason, message),
            not_ready: vec![],
            rollout: None,
            halted: None,
            refused: vec![],
        }
    }

    /// Lists the comuni a pass failed on first among those not ready, with the error's reason,
    /// and says so in the Ready condition's message.
    pub fn failed_on(mut self, failures: &[Failed]) -> Summary {
        if failures.is_empty() {
            return self;
        }
        let names: Vec<&str> = failures.iter().map(|f| f.comune.as_str()).collect();
        self.ready_condition.message.push_str(&format!(
            "; failing on {} comuni ({}), see their status",
            failures.len(),
            names.join(", ")
        ));
        // Refused (a conflict, a denial, an invalid object): they wait for a person.
        self.refused = failures
            .iter()
            .filter(|f| matches!(f.error.reason(), "conflict" | "forbidden" | "invalid"))
            .map(|f| f.comune.clone())
            .collect();
        self.not_ready
            .retain(|n| !failures.iter().any(|f| f.comune == n.municipality));
        let mut listed: Vec<NotReady> = failures
            .iter()
            .map(|f| NotReady {
                municipality: f.comune.clone(),
                reason: format!("Failed ({})", f.error.reason()),
            })
            .collect();
        listed.append(&mut self.not_ready);
        listed.truncate(NOT_READY_LISTED);
        self.not_ready = listed;
        self
    }
}

/// What the status of a Dedicated service says: one instance per comune.
pub fn summarize(
    s: &SharedService,
    comuni: &[&Municipality],
    states: &[InstanceState],
    waits: &[Option<String>],
    halted: Vec<String>,
) -> Summary {
    let mut ready = 0;
    let mut updated = 0;
    let mut not_ready = vec![];
    for ((m, &state), waiting) in comuni.iter().zip(states).zip(waits) {
        if state != InstanceState::Outdated && state != InstanceState::Missing {
            updated += 1;
        }
        if state == InstanceState::Available && waiting.is_none() {
            ready += 1;
        } else if not_ready.len() < NOT_READY_LISTED {
            let reason = match state {
                _ if waiting.is_some() => "WaitingForDatabase",
                InstanceState::Missing => "Creating",
                InstanceState::Outdated => "WaitingForRollout",
                InstanceState::Progressing => "Progressing",
                InstanceState::Stalled => "ProgressDeadlineExceeded",
                InstanceState::QuotaExceeded => "QuotaExceeded",
                InstanceState::Available => "Available",
            };
            not_ready.push(NotReady {
                municipality: m.name_any(),
                reason: reason.into(),
            });
        }
    }
    let desired = comuni.len();
    let message = format!("{ready} of {desired} instances are Available");
    let ready_condition = if ready == desired {
        Ready::yes("Available", message)
    } else {
        Ready::no("InstancesNotReady", message)
    };
    let rollout = Some(RolloutStatus {
        target_version: template_version(s, None),
        updated,
        total: desired as i32,
    });
    Summary {
        desired,
        ready,
        ready_condition,
        not_ready,
        rollout,
        halted: (!halted.is_empty()).then_some(halted),
        refused: vec![],
    }
}

/// What the status of a Shared service says: one instance, serving every selected comune.
pub fn summarize_shared(
    s: &SharedService,
    ns: &str,
    state: InstanceState,
    waiting: Option<&str>,
) -> Summary {
    let ready = usize::from(state == InstanceState::Available && waiting.is_none());
    let message = match state {
        _ if let Some(what) = waiting => {
            format!("the instance in {ns} waits for its database: {what}")
        }
        InstanceState::Available => format!("the instance in {ns} is Available"),
        InstanceState::QuotaExceeded => {
            format!("the instance in {ns} does not fit its namespace's quota")
        }
        _ => format!("the instance in {ns} is not Available yet"),
    };
    Summary {
        desired: 1,
        ready,
        ready_condition: if ready == 1 {
            Ready::yes("Available", message)
        } else {
            Ready::no("InstancesNotReady", message)
        },
        not_ready: vec![],
        rollout: Some(RolloutStatus {
            target_version: template_version(s, None),
            updated: i32::from(!matches!(
                state,
                InstanceState::Outdated | InstanceState::Missing
            )),
            total: 1,
        }),
        halted: (state == InstanceState::Stalled).then(|| vec![ns.to_string()]),
        refused: vec![],
    }
}

/// A comune's `status.services` entry for this service, from its instance's state and what it
/// waits for of its database.
pub fn entry(
    s: &SharedService,
    state: InstanceState,
    url: Option<String>,
    version: String,
    waiting: Option<String>,
) -> ServiceInstanceStatus {
    let phase = if s.spec.suspended {
        "Suspended"
    } else {
        match state {
            _ if waiting.is_some() => "Pending",
            InstanceState::Available => "Ready",
            InstanceState::Missing => "Pending",
            InstanceState::Outdated | InstanceState::Progressing => "Updating",
            InstanceState::Stalled | InstanceState::QuotaExceeded => "Failed",
        }
    };
    ServiceInstanceStatus {
        name: s.name_any(),
        phase: phase.into(),
        url,
        version: Some(version),
        message: waiting.map(|what| format!("waiting for its database: {what}")),
        certificate: None,
        tenant: None,
    }
}

/// Publishes a halted rollout, keeps the metrics current, writes the status, and says when to
/// look again.
pub async fn finish(
    s: &SharedService,
    summary: Summary,
    retry: Option<Duration>,
    ctx: &Context,
) -> Result<Action, Error> {
    let was_halted = s
        .status
        .as_ref()
        .is_some_and(|st| is_true(&st.conditions, "RolloutHalted"));
    if let Some(names) = summary.halted.as_ref().filter(|_| !was_halted) {
        let note = format!(
            "instances did not become Available within {}s: {}",
            s.spec.rollout.progress_deadline_seconds,
            names.join(", ")
        );
        publish(
            ctx,
            s,
            EventType::Warning,
            "RolloutHalted",
            "Rollout",
            &note,
        )
        .await;
    }
    let done = summary.ready == summary.desired;
    let updated = summary.rollout.as_ref().map_or(0, |r| r.updated as usize);
    let counts = (summary.ready, summary.desired, updated);
    ctx.metrics
        .set_service(&s.name_any(), counts, summary.halted.is_some());
    let later = write_status(s, ctx, summary).await?;
    let next = if done {
        Duration::from_secs(30 * 60)
    } else {
        Duration::from_secs(5)
    };
    let next = retry.map_or(next, |retry| retry.min(next));
    Ok(Action::requeue(later.map_or(next, |later| later.min(next))))
}

/// Whether the operator has given up on the service until a person acts, and why: a template it
/// cannot fill, a namespace that is someone else's, a halted rollout, instances that do not fit
/// their quota, or comuni where it meets an object it did not make or a refusal.
fn stalled(summary: &Summary, halt_message: &str) -> Option<(&'static str, String)> {
    let reason = summary.ready_condition.reason;
    if matches!(
        reason,
        "InvalidTemplate" | "NamespaceConflict" | "DatabaseOperatorMissing" | "CertManagerMissing"
    ) {
        return Some((reason, summary.ready_condition.message.clone()));
    }
    if summary.halted.is_some() {
        return Some(("RolloutHalted", halt_message.to_string()));
    }
    let over: Vec<&str> = summary
        .not_ready
        .iter()
        .filter(|n| n.reason == "QuotaExceeded")
        .map(|n| n.municipality.as_str())
        .collect();
    if !over.is_empty() {
        let message = format!(
            "instances do not fit their comune's quota: {}; raise the quota or lower the template's resources",
            over.join(", ")
        );
        return Some(("QuotaExceeded", message));
    }
    (!summary.refused.is_empty()).then(|| {
        let message = format!(
            "refused in comuni {}: see each comune's status for what to fix",
            summary.refused.join(", ")
        );
        ("ComuniFailing", message)
    })
}

/// Writes the service's status if it changed. Counts alone (instances becoming Available) are
/// written at most every `COUNTS_REFRESH`: returns when to write them, if later.
pub async fn write_status(
    s: &SharedService,
    ctx: &Context,
    summary: Summary,
) -> Result<Option<Duration>, Error> {
    let current = s.status.clone().unwrap_or_default();
    let generation = s.metadata.generation;
    let mut conditions = vec![
        summary
            .ready_condition
            .clone()
            .condition(&current.conditions, generation),
    ];
    let (halt_reason, halt_message) = match &summary.halted {
        Some(names) => (
            "ProgressDeadlineExceeded",
            format!(
                "instances did not become Available in time: {}; fix the template to resume",
                names.join(", ")
            ),
        ),
        None => ("Progressing", "the rollout proceeds".to_string()),
    };
    let stalled = stalled(&summary, &halt_message);
    conditions.push(condition(
        &current.conditions,
        "RolloutHalted",
        summary.halted.is_some(),
        halt_reason,
        halt_message,
        generation,
    ));
    conditions.extend(progress(
        &current.conditions,
        &summary.ready_condition,
        stalled,
        generation,
    ));
    let status = SharedServiceStatus {
        observed_generation: generation,
        desired_instances: summary.desired as i32,
        ready_instances: summary.ready as i32,
        conditions,
        rollout: summary.rollout,
        not_ready: summary.not_ready,
    };
    if current == status {
        return Ok(None);
    }
    let name = s.name_any();
    fn outline(c: &consorzio_api::Condition) -> (&str, &str, &str) {
        (&c.type_, &c.status, &c.reason)
    }
    let counts_alone = current.observed_generation == status.observed_generation
        && current
            .conditions
            .iter()
            .map(outline)
            .eq(status.conditions.iter().map(outline))
        && current.rollout.as_ref().map(|r| &r.target_version)
            == status.rollout.as_ref().map(|r| &r.target_version);
    if counts_alone && let Some(wait) = ctx.passes.counts_write_wait(&name) {
        return Ok(Some(wait));
    }
    let patch =
        json!({"apiVersion": "consorzio.io/v1alpha1", "kind": "SharedService", "status": status});
    ctx.metrics.wrote("SharedService");
    Api::<SharedService>::all(ctx.client.clone())
        .patch_status(
            &name,
            &PatchParams::apply(STATUS_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .during(Step::Status, format!("SharedService {name}"))?;
    ctx.passes.status_written(&name);
    Ok(None)
}
