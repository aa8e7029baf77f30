//! The reconcilers, and what they share. A newcomer's map:
//!
//! | file | its one job |
//! |---|---|
//! | `mod.rs` | `Context` (client, settings, metrics, caches, and the state shared across reconciles) and the entry points |
//! | `kinds.rs` | the kinds of object the operator manages, declared once |
//! | `caches.rs`, `cached.rs` | a watch-backed cache per kind, and how compactly each object is kept |
//! | `passes.rs` | routing of changes, a service's scope and cooldowns, every deferred write (a table) |
//! | `entries.rs` | the services' entries in a comune's status, held until written |
//! | `reconcile.rs` | what every reconcile goes through: timing, unreadable objects, retry and backoff |
//! | `apply.rs` | compare with the cache, server-side apply, remove what is no longer rendered |
//! | `namespace.rs` | whose a namespace is; keep or delete it when its owner goes |
//! | `backups.rs` | each comune's newest successful backup, from Velero's Backups |
//! | `conditions.rs`, `object.rs`, `error.rs` | conditions; finalizers and Events; errors |
//! | `municipality/` | the Municipality controller |
//! | `service/` | the SharedService controller |
//!
//! The two controllers do not import each other; what they share lives here, below both.

mod apply;
pub(crate) mod backups;
mod cached;
mod caches;
mod compare;
mod conditions;
mod entries;
mod error;
mod index;
pub mod kinds;
mod municipality;
mod namespace;
mod object;
mod passes;
mod reconcile;
mod service;

use std::{fmt::Debug, sync::Arc};

use consorzio_api::{Municipality, ServiceInstanceStatus, SharedService};
use futures::channel::mpsc;
use kube::{
    Client, ResourceExt,
    runtime::{
        events::{Recorder, Reporter},
        reflector::ObjectRef,
    },
};

pub use apply::FIELD_MANAGER;
pub use cached::Cached;
pub use caches::{Caches, Events};
pub use compare::contains;
pub use error::Error;
pub use municipality::run as run_municipalities;
pub use service::run as run_services;

use crate::{metrics::Metrics, render::Config};

/// What every reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The operator's settings.
    pub config: Config,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Caches of the managed objects, the Municipalities and the SharedServices.
    pub caches: Caches,
    recorder: Recorder,
    failures: reconcile::Failures,
    /// Each service's last pass.
    passes: passes::Passes,
    /// Where changes go, and which comuni changed.
    triggers: passes::Triggers,
    /// What the comuni's status should say beyond the cache, and when to write it.
    entries: Arc<entries::Entries>,
    /// The instances' states, as read from their cached Deployments.
    instance_states: cached::Readings<service::InstanceState>,
    /// Each comune's newest successful backup, when the platform has Velero.
    backups: Option<Arc<backups::Backups>>,
    /// The comuni's objects created a moment ago.
    created: apply::Created,
    /// The services' failures on each comune, in a row.
    retries: service::Retries,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish()
    }
}

/// What the controllers reconcile.
pub struct Streams {
    /// Changes of Municipalities, for their controller.
    pub municipalities: Events<Municipality>,
    /// Changes of Municipalities, for the SharedService controller (who gets what).
    pub comuni: Events<Municipality>,
    /// Changes of SharedServices.
    pub services: Events<SharedService>,
    /// Municipalities whose managed objects changed, or whose services reported.
    pub municipality_triggers: mpsc::UnboundedReceiver<ObjectRef<Municipality>>,
    /// SharedServices whose instances changed.
    pub service_triggers: mpsc::UnboundedReceiver<ObjectRef<SharedService>>,
}

impl Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

impl Context {
    /// Starts the caches and waits until each has listed its objects once, so that the first
    /// reconciles compare against the real cluster and write nothing that is already there.
    pub async fn start(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Arc<Context>, Streams)> {
        let (municipalities, municipalities_rx) = mpsc::unbounded();
        let (services, services_rx) = mpsc::unbounded();
        let entries = Arc::new(entries::Entries::default());
        let triggers =
            passes::Triggers::new(municipalities, services, Arc::default(), entries.clone());
        let (municipality_store, [municipality_events, comuni_events]) =
            caches::watch_shared(&client);
        let (service_store, [service_events]) = caches::watch_shared(&client);
        let caches = Caches::start(
            &client,
            &triggers,
            metrics.clone(),
            municipality_store,
            service_store,
            &config.namespace_prefix,
            config.velero_namespace.as_deref(),
        )
        .await?;
        let reporter = Reporter {
            controller: "consorzio".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let backups = config.velero_namespace.as_deref().map(|velero| {
            backups::Backups::start(&client, velero, &config.namespace_prefix, &triggers)
        });
        let ctx = Context {
            client,
            config,
            metrics,
            caches,
            recorder,
            failures: Default::default(),
            passes: Default::default(),
            triggers,
            entries,
            instance_states: Default::default(),
            created: Default::default(),
            backups,
            retries: Default::default(),
        };
        let streams = Streams {
            municipalities: municipality_events,
            comuni: comuni_events,
            services: service_events,
            municipality_triggers: municipalities_rx,
            service_triggers: services_rx,
        };
        Ok((Arc::new(ctx), streams))
    }

    /// Hands over the entry of `service` in comune `m`'s status (`None`: it no longer gets the
    /// service), and wakes the Municipality controller if that changes what the status says.
    fn report(&self, m: &Municipality, service: &str, entry: Option<ServiceInstanceStatus>) {
        if entry.is_none() {
            self.metrics.set_certificate(service, &m.name_any(), None);
        }
        if self.entries.report(m, service, entry) {
            self.triggers.wake(&m.name_any());
        }
    }
}
