//! Checks made before a benchmark touches the cluster: that nothing else would act on the
//! comuni it creates, since the figures would then measure that too.
//!
//! - Another operator (`make run`'s, or one a killed benchmark left behind) would reconcile the
//!   benchmark's comuni beside the benchmark's own operator, and with `make run` holding the
//!   Lease the benchmark's operator never leads.
//! - A SharedService other than the benchmark's that selects the benchmark's comuni (`make
//!   run`'s catalogue offers several services to every Italian comune) has its instances built
//!   in the cold start, and not in the physical limit, which applies only the benchmark's own
//!   services: in one run at 1,000 comuni that made the ratio 1.88. The comuni are real ones,
//!   with the labels any service may select (country, region, province), so the benchmark
//!   cannot keep them out of another service's selection: it refuses to run instead.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use consorzio::render::service::selects;
use consorzio_api::{Municipality, SharedService};
use consorzio_testkit::Cluster;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{Api, Client, ResourceExt, api::ListParams};

/// The leader Lease of `consorzio run` as `make run` starts it (in the operator's namespace, where
/// its Role lets it hold one).
const LEASE_NAMESPACE: &str = "consorzio";
const LEASE_NAME: &str = "consorzio-leader";

/// Fails, saying what to do, when another operator runs against the cluster or another
/// SharedService would select any of `planned` (the Municipalities the benchmark will create).
/// Changes nothing in the cluster.
pub async fn check(
    cluster: &Cluster,
    client: &Client,
    planned: &[Municipality],
) -> anyhow::Result<()> {
    let mut problems = vec![];
    // In the order the steps must be taken: a service's deletion needs an operator to finish it.
    if let Some(problem) = other_services(client, planned).await? {
        problems.push(problem);
    }
    if let Some(problem) = lease_holder(client).await? {
        problems.push(problem);
    }
    if let Some(problem) = operator_processes(cluster)? {
        problems.push(problem);
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "the benchmark did not start, as its figures would measure more than its own operator \
         and services:\n\n{}",
        problems.join("\n\n")
    )
}

/// The SharedServices, other than the benchmark's own (labelled `consorzio.io/bench`), that
/// select any planned comune, and what to do about them.
async fn other_services(
    client: &Client,
    planned: &[Municipality],
) -> anyhow::Result<Option<String>> {
    let services = match Api::<SharedService>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        // The CRDs are not installed yet: no service at all.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
        Err(e) => return Err(e).context("listing SharedServices"),
    };
    let found = selecting(&services, planned);
    if found.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "These SharedServices, not the benchmark's, select comuni the benchmark creates:\n{}\n\
         The operator would build their instances too, in the cold start but not in the physical \
         limit. Delete them while an operator runs to finish their deletion; for `make run`'s \
         catalogue, with `make run` still running: `source target/cluster/env && kubectl delete \
         -f deploy/examples/catalogue.yaml`.",
        found.join("\n")
    )))
}

/// A line for each service, other than the benchmark's own, that selects any of `planned`.
fn selecting(services: &[SharedService], planned: &[Municipality]) -> Vec<String> {
    let mut found = vec![];
    for s in services
        .iter()
        .filter(|s| s.labels().get("consorzio.io/bench").map(String::as_str) != Some("true"))
    {
        let selected: Vec<&Municipality> = planned.iter().filter(|m| selects(s, m)).collect();
        if let Some(first) = selected.first() {
            found.push(format!(
                "  - {}: {} of the {} comuni (e.g. {})",
                s.name_any(),
                selected.len(),
                planned.len(),
                first.name_any()
            ));
        }
    }
    found
}

/// Whether the leader Lease is held by a live operator: one that renews it. A Lease renewed
/// within its duration may be that of an operator just killed (a benchmark's own, at its end),
/// so a fresh one is watched until it is renewed again (alive) or expires (dead).
async fn lease_holder(client: &Client) -> anyhow::Result<Option<String>> {
    let leases = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE);
    let mut first_renewal = None;
    loop {
        let lease = leases
            .get_opt(LEASE_NAME)
            .await
            .with_context(|| format!("reading the Lease {LEASE_NAMESPACE}/{LEASE_NAME}"))?;
        let Some(Held {
            holder,
            renewed,
            age,
        }) = lease.and_then(|l| held(&l.spec?, Timestamp::now()))
        else {
            return Ok(None);
        };
        match first_renewal {
            None => first_renewal = Some(renewed),
            Some(first) if first != renewed => {
                return Ok(Some(format!(
                    "Another consorzio operator runs against this cluster: it holds the Lease \
                     {LEASE_NAMESPACE}/{LEASE_NAME} (holder {holder}, renewed {age:.0} s ago). \
                     It would reconcile the benchmark's comuni too, and the benchmark's operator \
                     could not lead. Stop it (Ctrl-C where `make run` runs), then run the \
                     benchmark again."
                )));
            }
            Some(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A Lease's holder, while its last renewal is within its duration.
#[derive(Debug, PartialEq)]
struct Held {
    holder: String,
    renewed: Timestamp,
    /// Seconds since the renewal.
    age: f64,
}

fn held(spec: &LeaseSpec, now: Timestamp) -> Option<Held> {
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let MicroTime(renewed) = spec.renew_time.clone()?;
    let duration = f64::from(spec.lease_duration_seconds.unwrap_or(10));
    let age = now.duration_since(renewed).as_secs_f64();
    // A second of slack for the clocks of the API server and of this process.
    (age <= duration + 1.0).then_some(Held {
        holder,
        renewed,
        age,
    })
}

/// `consorzio run` processes of this user whose KUBECONFIG is this cluster's: an operator
/// without leader election (a benchmark's, left behind by a benchmark that was killed) holds no
/// Lease. Processes whose environment cannot be read (another user's) are not counted.
fn operator_processes(cluster: &Cluster) -> anyhow::Result<Option<String>> {
    let ours = [
        canonical(&cluster.kubeconfig()),
        canonical(&cluster.operator_kubeconfig()),
    ];
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !is_operator(&args) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let kubeconfig = environ
            .split(|b| *b == 0)
            .find_map(|v| v.strip_prefix(b"KUBECONFIG="))
            .map(|v| {
                // A relative path is the process's own: relative to its working directory.
                let path = PathBuf::from(&*String::from_utf8_lossy(v));
                let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
                canonical(&cwd.join(path))
            });
        if kubeconfig.is_some_and(|k| ours.contains(&k)) {
            found.push(format!("  - pid {pid}: {}", args.join(" ").trim()));
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "consorzio operators run against this cluster:\n{}\nThey would reconcile the benchmark's \
         comuni too. Stop them (Ctrl-C where `make run` runs; `kill <pid>` for one a benchmark \
         left behind), then run the benchmark again.",
        found.join("\n")
    )))
}

/// Whether a command line is `consorzio run ...`, whatever the binary's directory.
fn is_operator(args: &[String]) -> bool {
    args.len() > 1
        && Path::new(&args[0]).file_name().and_then(|n| n.to_str()) == Some("consorzio")
        && args[1] == "run"
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use consorzio_testkit::example_manifests;
    use k8s_openapi::jiff::SignedDuration;

    use super::*;
    use crate::comuni::all;

    fn fleet(n: usize) -> Vec<Municipality> {
        all()
            .unwrap()
            .iter()
            .take(n)
            .map(|c| serde_json::from_value(c.manifest()).unwrap())
            .collect()
    }

    fn catalogue() -> Vec<SharedService> {
        example_manifests()
            .unwrap()
            .into_iter()
            .filter(|v| v["kind"] == "SharedService")
            .map(|v| serde_json::from_value(v).unwrap())
            .collect()
    }

    #[test]
    fn make_runs_catalogue_is_found_to_select_the_fleet() {
        let found = selecting(&catalogue(), &fleet(10));
        // sito-comunale selects every Italian comune.
        assert!(
            found.contains(&"  - sito-comunale: 10 of the 10 comuni (e.g. abano-terme)".into()),
            "{found:?}"
        );
        // sit selects the union of Alto Sangro, nextcloud names the Ticino cities.
        assert!(
            !found
                .iter()
                .any(|line| line.contains(" sit:") || line.contains("nextcloud")),
            "{found:?}"
        );
    }

    #[test]
    fn the_benchmarks_own_services_are_not_counted() {
        let mut services = catalogue();
        for s in &mut services {
            s.labels_mut()
                .insert("consorzio.io/bench".into(), "true".into());
        }
        assert!(selecting(&services, &fleet(10)).is_empty());
    }

    fn lease(holder: Option<&str>, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(10),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_renewed_within_its_duration_is_held() {
        let now = Timestamp::now();
        let renewed = now - SignedDuration::from_secs(3);
        let held = held(&lease(Some("host-42"), renewed), now).unwrap();
        assert_eq!(held.holder, "host-42");
        assert_eq!(held.renewed, renewed);
    }

    #[test]
    fn an_expired_or_released_lease_is_not_held() {
        let now = Timestamp::now();
        let old = now - SignedDuration::from_secs(30);
        assert_eq!(held(&lease(Some("host-42"), old), now), None);
        assert_eq!(held(&lease(None, now), now), None);
        assert_eq!(held(&lease(Some(""), now), now), None);
    }

    #[test]
    fn operators_are_recognised_by_their_command_line() {
        let args = |line: &str| line.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert!(is_operator(&args(
            "target/debug/consorzio run --metrics-addr 127.0.0.1:8080"
        )));
        assert!(is_operator(&args(
            "/repo/target/release/consorzio run --leader-election=false"
        )));
        assert!(!is_operator(&args(
            "target/release/consorzio render -f deploy/examples"
        )));
        assert!(!is_operator(&args("target/release/consorzio-bench fleet")));
    }
}
