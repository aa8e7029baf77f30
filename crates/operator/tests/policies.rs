//! The chart's admission policies and the tenants' quota, as rendered: the policies cover every
//! kind the operator writes, and the quota every kind a comune's admins can create.

mod support;

use std::collections::BTreeSet;

use anyhow::{Context as _, ensure};
use support::chart::{operator_roles, strings, template};

/// The admission policies cover every kind the operator may write, and nothing else: the operator
/// guard confines each of its writes; the label guard keeps everyone else from forging what the
/// operator trusts on any of them; managed objects are the operator's to change.
#[test]
fn admission_policies_cover_every_kind_the_operator_writes() -> anyhow::Result<()> {
    let docs = template("consorzio", "consorzio", &[])?;
    // And the Role in Velero's namespace (backup Schedules).
    let (role, backups) = operator_roles(&docs)?;
    let rules = role["rules"].as_array().context("rules")?;
    let more = backups["rules"].as_array().context("rules")?;
    let mut written = BTreeSet::new();
    for rule in rules.iter().chain(more) {
        let writes = strings(&rule["verbs"])
            .iter()
            .any(|v| ["create", "update", "patch", "delete"].contains(&v.as_str()));
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                let own = group == "consorzio.io" || group == "events.k8s.io";
                if writes && !own {
                    written.insert(format!("{group}/{resource}"));
                }
            }
        }
    }
    for name in [
        "consorzio-operator-guard",
        "consorzio-label-guard",
        "consorzio-managed-objects",
    ] {
        let policy = docs
            .iter()
            .find(|d| d["kind"] == "ValidatingAdmissionPolicy" && d["metadata"]["name"] == name)
            .with_context(|| format!("the policy {name}"))?;
        let mut covered = BTreeSet::new();
        for rule in policy["spec"]["matchConstraints"]["resourceRules"]
            .as_array()
            .context("resourceRules")?
        {
            let pods = strings(&rule["resources"]) == ["pods"];
            let update = strings(&rule["operations"]).contains(&"UPDATE".to_string());
            ensure!(pods || update, "{rule}");
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    covered.insert(format!("{group}/{resource}"));
                }
            }
        }
        // The operator guard also confines the one kind the operator only deletes: a suspended
        // comune's pods.
        let mut expected = written.clone();
        if name == "consorzio-operator-guard" {
            expected.insert("/pods".to_string());
        }
        ensure!(
            covered == expected,
            "{name} covers {covered:?}, the operator writes {expected:?}"
        );
        let bound = docs.iter().any(|d| {
            d["kind"] == "ValidatingAdmissionPolicyBinding" && d["spec"]["policyName"] == name
        });
        ensure!(bound, "{name} is not bound");
    }
    Ok(())
}

/// Finding 11: a comune's quota counts every kind its admins can create, so that none can be made
/// in unbounded numbers.
#[test]
fn the_quota_counts_every_kind_a_comunes_admin_can_create() -> anyhow::Result<()> {
    let docs = template("consorzio", "consorzio", &[])?;
    let role = docs
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRole" && d["metadata"]["name"] == "consorzio-municipality-admin"
        })
        .context("the tenant admin role")?;
    let counted: BTreeSet<String> = consorzio::render::municipality::OBJECT_COUNTS
        .iter()
        .map(|(k, _)| k.to_string())
        .chain(["pods".to_string()])
        .collect();
    let mut creatable = 0;
    for rule in role["rules"].as_array().context("rules")? {
        if !strings(&rule["verbs"]).contains(&"create".to_string()) {
            continue;
        }
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                if resource.contains('/') {
                    continue; // exec, port-forward, attach, scale: no object is made
                }
                creatable += 1;
                let keys = if group.is_empty() {
                    vec![resource.clone(), format!("count/{resource}")]
                } else {
                    vec![format!("count/{resource}.{group}")]
                };
                ensure!(
                    keys.iter().any(|k| counted.contains(k)),
                    "{group}/{resource}: a comune's admin creates them, its quota does not count them"
                );
            }
        }
    }
    ensure!(creatable >= 10, "only {creatable} kinds found");
    Ok(())
}
