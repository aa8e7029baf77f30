//! A service's own namespace, `shared-<service>`: a Shared service's instance lives there, and a
//! Dedicated service's server of its `ordinary` comuni's databases. Isolated as a comune's.

use std::collections::BTreeMap;

use consorzio_api::SharedService;
use k8s_openapi::{
    api::core::v1::{Namespace, ResourceQuota, ResourceQuotaSpec},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{ResourceExt, core::ObjectMeta};

use super::{
    Config, MANAGED_BY, ORPHANED_LABEL, Rendered,
    backup::server_policy,
    database::render_server,
    database_backup::with_backups,
    managed_meta,
    municipality::{pod_security_restricted, render_limit_range},
    network::{render_network_policies, render_server_policy},
    service::{SERVICE_LABEL, labels},
    shared::{shared_namespace, subscriber_label},
};

/// A Dedicated service's namespace, `shared-<service>`, isolated as a Shared one's: the server
/// that holds the databases of its `ordinary` comuni, reachable from those comuni only (their
/// namespaces carry the subscriber label), on its SQL port.
pub fn render_database_namespace(
    s: &SharedService,
    db: &consorzio_api::Database,
    config: &Config,
) -> Result<Vec<Rendered>, serde_json::Error> {
    let ns = shared_namespace(s);
    let labels = labels(s, None);
    let mut out = render_isolation(s, config)?;
    out.push(render_server(s, db, &ns, &labels, false)?);
    out.push(Rendered::new(&render_server_policy(
        s,
        db,
        &ns,
        &labels,
        Some((subscriber_label(s), "true".into())),
        config,
    ))?);
    // Its comuni's MariaDB databases are dumped each on its comune's policy (see
    // `render_dedicated_at`); a PostgreSQL server is backed up whole, on the service's.
    if let Some(store) = &config.backup_store {
        let (schedule, days) = server_policy(s);
        with_backups(&mut out, s, db, &ns, &labels, &[], (&schedule, days), store)?;
    }
    Ok(out)
}

/// The namespace `shared-<service>` and its isolation.
pub(super) fn render_isolation(
    s: &SharedService,
    config: &Config,
) -> Result<Vec<Rendered>, serde_json::Error> {
    let ns = shared_namespace(s);
    let name = s.name_any();
    let owner = (SERVICE_LABEL, name.as_str());
    let mut out = vec![
        Rendered::new(&render_shared_namespace(s, false))?,
        Rendered::new(&ResourceQuota {
            metadata: managed_meta("consorzio-quota", Some(&ns), owner),
            spec: Some(ResourceQuotaSpec {
                hard: Some(BTreeMap::from([
                    ("services.nodeports".into(), Quantity("0".into())),
                    ("services.loadbalancers".into(), Quantity("0".into())),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        })?,
        Rendered::new(&render_limit_range(&ns, owner))?,
    ];
    for policy in render_network_policies(false, &ns, config, owner) {
        out.push(Rendered::new(&policy)?);
    }
    Ok(out)
}

/// The shared namespace (or, `orphaned`, left behind with its data). Like a comune's, it has no
/// owner reference: only the operator deletes it.
pub fn render_shared_namespace(s: &SharedService, orphaned: bool) -> Namespace {
    let mut labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (SERVICE_LABEL.to_string(), s.name_any()),
    ]);
    labels.extend(pod_security_restricted());
    if orphaned {
        labels.insert(ORPHANED_LABEL.into(), "true".into());
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(shared_namespace(s)),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{SITO, service};

    #[test]
    fn orphaned_namespace_says_so() {
        let ns = render_shared_namespace(&service(SITO), true);
        assert_eq!(ns.labels()[ORPHANED_LABEL], "true");
    }
}
