//! The SharedService reconciler (Dedicated tenancy): one instance in each selected comune's
//! namespace, template changes rolled out in waves, instances of comuni that leave removed with
//! their volumes kept.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use consorzio_api::{
    Municipality, NotReady, RolloutStatus, ServiceInstanceStatus, SharedService,
    SharedServiceStatus, VolumeReclaimPolicy,
};
use futures::{Stream, StreamExt, future::try_join_all};
use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service},
        networking::v1::Ingress,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    core::{ApiResource, DeserializeGuard, ObjectMeta},
    runtime::{
        WatchStreamExt,
        controller::{self, Action, Controller},
        events::EventType,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use rand::{Rng, distr::Alphanumeric};
use serde_json::json;

use super::{
    Context, Error,
    apply::{apply_if_changed, delete},
    object::{publish, set_finalizer},
    reconcile_guarded, retry_policy,
    status::condition,
};
use crate::{
    metrics::ControllerName,
    render::{
        MANAGED_BY, MUNICIPALITY_LABEL, ORPHANED_LABEL, Rendered, namespace_name,
        service::{
            SERVICE_LABEL, VERSION_ANNOTATION, credentials_name, is_dedicated, render_dedicated,
            selects, template_version, volume_name,
        },
    },
};

/// Keeps a SharedService until its instances are removed (their volumes kept or not).
pub const FINALIZER: &str = "consorzio.io/instances";
/// Field manager of the status this controller writes.
const STATUS_MANAGER: &str = "consorzio-sharedservice";
/// At most this many comuni are listed in `status.notReady`.
const NOT_READY_LISTED: usize = 20;

/// Runs the SharedService controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    comuni: super::municipality::Events,
    triggers: impl Stream<Item = ObjectRef<SharedService>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let api = Api::<DeserializeGuard<SharedService>>::all(ctx.client.clone());
    let (reader, writer) = reflector::store();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|s| s.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects();
    let services = reader.clone();
    // Any change of a comune (joining a union, becoming Ready) may change who gets what.
    let every_service = move |_: DeserializeGuard<Municipality>| {
        services
            .state()
            .iter()
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect::<Vec<_>>()
    };
    Controller::for_stream(events, reader)
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .watches_stream(comuni, every_service)
        .reconcile_on(triggers.map(|r: ObjectRef<SharedService>| ObjectRef::new(&r.name)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile(
    guard: Arc<DeserializeGuard<SharedService>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    reconcile_guarded(&guard, &ctx, ControllerName::sharedservice, |s| {
        reconcile_service(s, &ctx)
    })
    .await
}

fn error_policy(
    guard: Arc<DeserializeGuard<SharedService>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    retry_policy(&guard, error, &ctx, ControllerName::sharedservice)
}

fn is_ready(m: &Municipality) -> bool {
    m.meta().deletion_timestamp.is_none()
        && m.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The comuni that get the service: selected and Ready, by name.
fn selected(s: &SharedService, ctx: &Context) -> Vec<Municipality> {
    let mut chosen: Vec<Municipality> = ctx
        .stores
        .comuni
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|m| is_ready(m) && selects(s, m))
        .cloned()
        .collect();
    chosen.sort_by_key(|m| m.name_any());
    chosen
}

/// The state of a comune's instance, read from the cached Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InstanceState {
    Missing,
    /// Runs an older template.
    Outdated,
    /// Runs the target template but is not Available yet.
    Progressing,
    /// Did not become Available within the progress deadline.
    Stalled,
    /// The quota refuses its pods.
    QuotaExceeded,
    Available,
}

/// The cached Deployment of a comune's instance.
fn deployment(s: &SharedService, m: &Municipality, ctx: &Context) -> Option<Arc<Deployment>> {
    let key = ObjectRef::new(&s.name_any()).within(&namespace_name(m, &ctx.config));
    ctx.stores.deployments.get(&key)
}

fn instance_state(s: &SharedService, m: &Municipality, ctx: &Context) -> InstanceState {
    let Some(d) = deployment(s, m, ctx) else {
        return InstanceState::Missing;
    };
    let version = d
        .annotations()
        .get(VERSION_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    if version != template_version(s, Some(&m.name_any())) {
        return InstanceState::Outdated;
    }
    let status = d.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let current = status.observed_generation == d.metadata.generation;
    if current
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.available_replicas.unwrap_or(0) >= wanted
        && status.replicas.unwrap_or(0) == wanted
    {
        return InstanceState::Available;
    }
    if conditions.iter().any(|c| {
        c.type_ == "ReplicaFailure"
            && c.message
                .as_deref()
                .is_some_and(|m| m.contains("exceeded quota"))
    }) {
        return InstanceState::QuotaExceeded;
    }
    if conditions.iter().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return InstanceState::Stalled;
    }
    InstanceState::Progressing
}

/// How many comuni may be updating at once.
fn max_unavailable(s: &SharedService, total: usize) -> usize {
    match &s.spec.rollout.max_unavailable {
        IntOrString::Int(n) => (*n).max(1) as usize,
        IntOrString::String(text) => {
            let percent: usize = text.trim_end_matches('%').parse().unwrap_or(100);
            (total * percent).div_ceil(100).max(1)
        }
    }
}

async fn reconcile_service(s: &SharedService, ctx: &Context) -> Result<Action, Error> {
    // The comuni come from the Municipality controller's cache, filled as that controller starts.
    // Until it has listed them all, no comune may look unselected: that would remove instances.
    if ctx.stores.comuni.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if s.meta().deletion_timestamp.is_some() {
        return cleanup(s, ctx).await;
    }
    set_finalizer(s, FINALIZER, true, ctx).await?;
    if !is_dedicated(s) {
        let message = "Shared tenancy is not implemented yet by this operator version".to_string();
        write_status(s, ctx, Summary::failed("NotImplemented", message)).await?;
        return Ok(Action::await_change());
    }
    let comuni = selected(s, ctx);
    // Render every instance first: an invalid template changes nothing anywhere.
    let mut rendered = Vec::with_capacity(comuni.len());
    for m in &comuni {
        match render_dedicated(s, m, &ctx.config) {
            Ok(objects) => rendered.push(objects),
            Err(crate::render::service::ServiceRenderError::Template {
                municipality,
                source,
            }) => {
                let message = format!(
                    "comune {municipality}: {source}; existing instances are left as they are"
                );
                write_status(s, ctx, Summary::failed("InvalidTemplate", message)).await?;
                return Ok(Action::await_change());
            }
            Err(crate::render::service::ServiceRenderError::Json(e)) => return Err(e.into()),
        }
    }

    // Waves: comuni on the target version that are not Available yet use up the budget; the
    // outdated ones (broken ones first) are updated as the budget allows. New comuni start at once.
    let states: Vec<InstanceState> = comuni.iter().map(|m| instance_state(s, m, ctx)).collect();
    let budget = max_unavailable(s, comuni.len());
    let busy = states
        .iter()
        .filter(|st| {
            matches!(
                st,
                InstanceState::Progressing | InstanceState::Stalled | InstanceState::QuotaExceeded
            )
        })
        .count();
    let halted: Vec<String> = comuni
        .iter()
        .zip(&states)
        .filter(|(_, st)| **st == InstanceState::Stalled)
        .map(|(m, _)| m.name_any())
        .collect();
    let mut room = if halted.is_empty() {
        budget.saturating_sub(busy)
    } else {
        0
    };
    let mut order: Vec<usize> = (0..comuni.len()).collect();
    // Outdated comuni whose instance is down go first: updating them cannot make things worse.
    order.sort_by_key(|&i| {
        (
            states[i] != InstanceState::Outdated,
            serving(s, &comuni[i], ctx),
        )
    });
    let mut to_apply = BTreeSet::new();
    for i in order {
        match states[i] {
            InstanceState::Outdated if room > 0 => {
                room -= 1;
                to_apply.insert(i);
            }
            InstanceState::Outdated => {}
            _ => {
                to_apply.insert(i);
            }
        }
    }
    for i in &to_apply {
        let objects = &rendered[*i];
        try_join_all(
            objects
                .iter()
                .map(|o| apply_if_changed(&ctx.client, &ctx.metrics, o, ctx.stores.cached(o))),
        )
        .await?;
        ensure_credentials(s, &comuni[*i], ctx).await?;
    }
    prune(s, &comuni, ctx).await?;
    for ((m, objects), state) in comuni.iter().zip(&rendered).zip(&states) {
        report_to_municipality(s, m, Some((objects, *state)), ctx).await?;
    }

    let summary = summarize(s, &comuni, &states, halted);
    if let Some(names) = summary.halted.as_ref().filter(|_| !was_halted(s)) {
        publish(
            ctx,
            s,
            EventType::Warning,
            "RolloutHalted",
            "Rollout",
            &format!(
                "instances did not become Available within {}s: {}",
                s.spec.rollout.progress_deadline_seconds,
                names.join(", ")
            ),
        )
        .await;
    }
    let done = summary.ready == comuni.len();
    let updated = summary.rollout.as_ref().map_or(0, |r| r.updated as usize);
    ctx.metrics
        .set_service(&s.name_any(), summary.ready, summary.desired, updated);
    write_status(s, ctx, summary).await?;
    Ok(Action::requeue(if done {
        Duration::from_secs(30 * 60)
    } else {
        Duration::from_secs(5)
    }))
}

/// Whether some pod of the comune's instance is available, whatever its version.
fn serving(s: &SharedService, m: &Municipality, ctx: &Context) -> bool {
    deployment(s, m, ctx)
        .and_then(|d| d.status.as_ref().and_then(|st| st.available_replicas))
        .unwrap_or(0)
        > 0
}

fn was_halted(s: &SharedService) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == "RolloutHalted" && c.status == "True")
    })
}

/// Keeps the comune's `status.services` entry for this service current (`instance`, its objects
/// and state, is `None` when the comune no longer gets it). Each service writes its own entry, under its own field
/// manager, so entries of different services never overwrite each other.
async fn report_to_municipality(
    s: &SharedService,
    m: &Municipality,
    instance: Option<(&Vec<Rendered>, InstanceState)>,
    ctx: &Context,
) -> Result<(), Error> {
    let name = s.name_any();
    let current = m
        .status
        .as_ref()
        .and_then(|st| st.services.iter().find(|e| e.name == name));
    let wanted = instance.map(|(objects, state)| {
        let phase = if s.spec.suspended {
            "Suspended"
        } else {
            match state {
                InstanceState::Available => "Ready",
                InstanceState::Missing => "Pending",
                InstanceState::Outdated | InstanceState::Progressing => "Updating",
                InstanceState::Stalled | InstanceState::QuotaExceeded => "Failed",
            }
        };
        let url = objects
            .iter()
            .find(|o| o.resource.kind == "ConfigMap")
            .and_then(|o| {
                o.object.data["data"]["CONSORZIO_URL"]
                    .as_str()
                    .map(str::to_string)
            });
        ServiceInstanceStatus {
            name: name.clone(),
            phase: phase.into(),
            url,
            version: Some(template_version(s, Some(&m.name_any()))),
        }
    });
    if current == wanted.as_ref() {
        return Ok(());
    }
    let services: Vec<ServiceInstanceStatus> = wanted.into_iter().collect();
    let patch = json!({
        "apiVersion": "consorzio.io/v1alpha1",
        "kind": "Municipality",
        "status": {"services": services},
    });
    ctx.metrics.wrote("Municipality");
    let manager = format!("consorzio-service-{name}");
    match Api::<Municipality>::all(ctx.client.clone())
        .patch_status(
            &m.name_any(),
            &PatchParams::apply(&manager).force(),
            &Patch::Apply(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The generated credentials of a comune's instance: random, created once, never replaced.
async fn ensure_credentials(
    s: &SharedService,
    m: &Municipality,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = namespace_name(m, &ctx.config);
    let name = credentials_name(s);
    if ctx
        .stores
        .secrets
        .get(&ObjectRef::new(&name).within(&ns))
        .is_some()
    {
        return Ok(());
    }
    let password: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns.clone()),
            labels: Some(
                [
                    (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                    (SERVICE_LABEL.to_string(), s.name_any()),
                    (MUNICIPALITY_LABEL.to_string(), m.name_any()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(
            [(
                "CONSORZIO_PASSWORD".to_string(),
                ByteString(password.into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    ctx.metrics.wrote("Secret");
    match Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
    {
        Ok(_) => Ok(()),
        // Created meanwhile (the cache lags): the existing one stays.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the instances of comuni that no longer get the service; their volumes (and the
/// credentials that go with the data) are kept and labelled orphaned, unless the service says
/// `reclaimPolicy: Delete`.
async fn prune(s: &SharedService, comuni: &[Municipality], ctx: &Context) -> Result<(), Error> {
    let keep: BTreeSet<String> = comuni
        .iter()
        .map(|m| namespace_name(m, &ctx.config))
        .collect();
    let name = s.name_any();
    let leaving: Vec<String> = ctx
        .stores
        .deployments
        .state()
        .iter()
        .filter(|d| d.labels().get(SERVICE_LABEL) == Some(&name))
        .filter_map(|d| d.namespace())
        .filter(|ns| !keep.contains(ns))
        .collect();
    for ns in leaving {
        remove_instance(s, &ns, ctx).await?;
    }
    // Comuni that still list the service in their status no longer get it.
    let listed: Vec<Municipality> = ctx
        .stores
        .comuni
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|m| !keep.contains(&namespace_name(m, &ctx.config)))
        .filter(|m| {
            m.status
                .as_ref()
                .is_some_and(|st| st.services.iter().any(|e| e.name == name))
        })
        .cloned()
        .collect();
    for m in &listed {
        report_to_municipality(s, m, None, ctx).await?;
    }
    Ok(())
}

async fn remove_instance(s: &SharedService, ns: &str, ctx: &Context) -> Result<(), Error> {
    let name = s.name_any();
    for (resource, object) in [
        (ApiResource::erase::<Deployment>(&()), name.clone()),
        (ApiResource::erase::<Service>(&()), name.clone()),
        (ApiResource::erase::<Ingress>(&()), name.clone()),
        (
            ApiResource::erase::<ConfigMap>(&()),
            format!("{name}-settings"),
        ),
    ] {
        let probe = Rendered {
            resource: resource.clone(),
            object: kube::api::DynamicObject::new(&object, &resource).within(ns),
        };
        if ctx.stores.cached(&probe).is_some() {
            delete(&ctx.client, &ctx.metrics, &resource, Some(ns), &object).await?;
        }
    }
    let reclaim = s
        .spec
        .template
        .storage
        .as_ref()
        .map(|st| st.reclaim_policy)
        .unwrap_or_default();
    let claim = ObjectRef::new(&volume_name(s)).within(ns);
    let has_claim = ctx.stores.volume_claims.get(&claim).is_some();
    if reclaim == VolumeReclaimPolicy::Delete || !has_claim {
        for (resource, object) in [
            (
                ApiResource::erase::<PersistentVolumeClaim>(&()),
                volume_name(s),
            ),
            (ApiResource::erase::<Secret>(&()), credentials_name(s)),
        ] {
            delete(&ctx.client, &ctx.metrics, &resource, Some(ns), &object).await?;
        }
        return Ok(());
    }
    // Kept: no longer managed (so never pruned or re-applied), and labelled so people find it.
    let orphan = json!({"metadata": {"labels": {ORPHANED_LABEL: "true", MANAGED_BY.0: null}}});
    ctx.metrics.wrote("PersistentVolumeClaim");
    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
        .patch(
            &volume_name(s),
            &PatchParams::default(),
            &Patch::Merge(&orphan),
        )
        .await?;
    ctx.metrics.wrote("Secret");
    match Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .patch(
            &credentials_name(s),
            &PatchParams::default(),
            &Patch::Merge(&orphan),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What the status says.
struct Summary {
    desired: usize,
    ready: usize,
    ready_condition: (bool, &'static str, String),
    not_ready: Vec<NotReady>,
    rollout: Option<RolloutStatus>,
    halted: Option<Vec<String>>,
}

impl Summary {
    fn failed(reason: &'static str, message: String) -> Summary {
        Summary {
            desired: 0,
            ready: 0,
            ready_condition: (false, reason, message),
            not_ready: vec![],
            rollout: None,
            halted: None,
        }
    }
}

fn summarize(
    s: &SharedService,
    comuni: &[Municipality],
    states: &[InstanceState],
    halted: Vec<String>,
) -> Summary {
    let mut ready = 0;
    let mut updated = 0;
    let mut not_ready = vec![];
    for (m, &state) in comuni.iter().zip(states) {
        if state != InstanceState::Outdated && state != InstanceState::Missing {
            updated += 1;
        }
        if state == InstanceState::Available {
            ready += 1;
        } else if not_ready.len() < NOT_READY_LISTED {
            let reason = match state {
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
    let ready_condition = if ready == desired {
        (
            true,
            "Available",
            format!("{ready} of {desired} instances are Available"),
        )
    } else {
        (
            false,
            "InstancesNotReady",
            format!("{ready} of {desired} instances are Available"),
        )
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
    }
}

async fn write_status(s: &SharedService, ctx: &Context, summary: Summary) -> Result<(), Error> {
    let current = s.status.clone().unwrap_or_default();
    let generation = s.metadata.generation;
    let (ok, reason, message) = summary.ready_condition;
    let mut conditions = vec![condition(
        &current.conditions,
        "Ready",
        ok,
        reason,
        message,
        generation,
    )];
    let halt_message = summary.halted.as_ref().map_or_else(
        || "the rollout proceeds".to_string(),
        |names| {
            format!(
                "instances did not become Available in time: {}; fix the template to resume",
                names.join(", ")
            )
        },
    );
    let halt_reason = if summary.halted.is_some() {
        "ProgressDeadlineExceeded"
    } else {
        "Progressing"
    };
    conditions.push(condition(
        &current.conditions,
        "RolloutHalted",
        summary.halted.is_some(),
        halt_reason,
        halt_message,
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
        return Ok(());
    }
    let patch =
        json!({"apiVersion": "consorzio.io/v1alpha1", "kind": "SharedService", "status": status});
    ctx.metrics.wrote("SharedService");
    Api::<SharedService>::all(ctx.client.clone())
        .patch_status(
            &s.name_any(),
            &PatchParams::apply(STATUS_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    Ok(())
}

/// The service is being deleted: every instance goes, volumes kept as the service says.
async fn cleanup(s: &SharedService, ctx: &Context) -> Result<Action, Error> {
    if !s.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    prune(s, &[], ctx).await?;
    set_finalizer(s, FINALIZER, false, ctx).await?;
    ctx.metrics.forget_service(&s.name_any());
    Ok(Action::await_change())
}
