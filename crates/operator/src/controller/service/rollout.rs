//! Rollout planning for a Dedicated service, as a pure function: from the state of each comune's
//! instance (read against the target template version) and the wave size (`maxUnavailable`),
//! which instances to apply now, and whether the rollout is halted.
//!
//! - Instances on the target version that are not Available yet use up the wave.
//! - Outdated instances are updated as the wave allows, those whose pods are all down first
//!   (updating them cannot make things worse).
//! - An instance that did not become Available within its progress deadline halts the rollout:
//!   no outdated instance is updated until the template changes (then it is outdated too).
//! - A comune that has no instance yet gets one at once: nothing of it can break.
//! - The pass re-applies the instances it covers that are not outdated (drift repair), whatever
//!   the wave.

use super::InstanceState;

/// What a pass knows of one comune's instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Its state against the target template version.
    pub state: InstanceState,
    /// Whether some pod of it is available, whatever its version.
    pub serving: bool,
    /// Whether the pass covers the comune (it changed since the last pass).
    pub covered: bool,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The instances to apply, by index, in order.
    pub apply: Vec<usize>,
    /// The instances that halt the rollout, by index: past their progress deadline.
    pub halted: Vec<usize>,
    /// How many instances may be updating at once.
    pub wave: usize,
    /// How many are updating now (on the target version, not Available yet).
    pub updating: usize,
}

impl Plan {
    /// Why the outdated instances not in `apply` wait, for people.
    pub fn why(&self) -> String {
        if self.halted.is_empty() {
            format!(
                "{} of at most {} instances updating at once",
                self.updating, self.wave
            )
        } else {
            format!(
                "halted: {} instances did not become Available in time",
                self.halted.len()
            )
        }
    }
}

/// Plans the pass over `instances`, with waves of `wave` instances.
pub fn plan(instances: &[Observed], wave: usize) -> Plan {
    use InstanceState::*;
    let updating = instances
        .iter()
        .filter(|i| matches!(i.state, Progressing | Stalled | QuotaExceeded))
        .count();
    let halted: Vec<usize> = (0..instances.len())
        .filter(|&i| instances[i].state == Stalled)
        .collect();
    let mut room = if halted.is_empty() {
        wave.saturating_sub(updating)
    } else {
        0
    };
    let mut order: Vec<usize> = (0..instances.len()).collect();
    // Outdated first, and of them those not serving first; otherwise in the comuni's order.
    order.sort_by_key(|&i| {
        let outdated = instances[i].state == Outdated;
        (!outdated, outdated && instances[i].serving)
    });
    let mut apply = vec![];
    for i in order {
        let take = match instances[i].state {
            Outdated if room > 0 => {
                room -= 1;
                true
            }
            Outdated => false,
            Missing => true,
            _ => instances[i].covered,
        };
        if take {
            apply.push(i);
        }
    }
    apply.sort_unstable();
    Plan {
        apply,
        halted,
        wave,
        updating,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde::Deserialize;

    use super::*;
    use crate::render::service::wave_size;

    /// A scenario: the service's wave, each comune's instance, and what the plan should say.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Scenario {
        max_unavailable: IntOrString,
        /// Comune → its instance, e.g. `{state: Outdated, serving: true}`.
        instances: BTreeMap<String, Instance>,
        /// The comuni whose instance is applied now, in any order.
        update: Vec<String>,
        #[serde(default)]
        halted: Vec<String>,
    }

    #[derive(Deserialize)]
    struct Instance {
        state: InstanceState,
        #[serde(default = "yes")]
        serving: bool,
        #[serde(default)]
        covered: bool,
    }

    fn yes() -> bool {
        true
    }

    /// Plans `yaml`'s scenario and checks the plan says what it expects.
    fn check(yaml: &str) {
        let scenario: Scenario = serde_yaml::from_str(yaml).expect("a valid scenario");
        let comuni: Vec<&String> = scenario.instances.keys().collect();
        let observed: Vec<Observed> = scenario
            .instances
            .values()
            .map(|i| Observed {
                state: i.state,
                serving: i.serving,
                covered: i.covered,
            })
            .collect();
        let wave = wave_size(&scenario.max_unavailable, comuni.len());
        let plan = plan(&observed, wave);
        let names = |indices: &[usize]| {
            let mut names: Vec<String> = indices.iter().map(|&i| comuni[i].clone()).collect();
            names.sort();
            names
        };
        let mut update = scenario.update.clone();
        update.sort();
        assert_eq!(names(&plan.apply), update, "updated now ({})", plan.why());
        assert_eq!(names(&plan.halted), scenario.halted, "halting");
    }

    #[test]
    fn first_rollout_creates_every_instance_at_once() {
        check(
            "maxUnavailable: 1
instances: {a: {state: Missing}, b: {state: Missing}, c: {state: Missing}}
update: [a, b, c]",
        );
    }

    #[test]
    fn a_new_version_goes_out_in_waves_of_a_number() {
        check(
            "maxUnavailable: 2
instances:
  a: {state: Outdated}
  b: {state: Outdated}
  c: {state: Outdated}
  d: {state: Outdated}
update: [a, b]",
        );
        // The first wave is on its way: nothing more until one is Available.
        check(
            "maxUnavailable: 2
instances:
  a: {state: Progressing}
  b: {state: Progressing}
  c: {state: Outdated}
  d: {state: Outdated}
update: []",
        );
        check(
            "maxUnavailable: 2
instances:
  a: {state: Available}
  b: {state: Progressing}
  c: {state: Outdated}
  d: {state: Outdated}
update: [c]",
        );
    }

    #[test]
    fn a_new_version_goes_out_in_waves_of_a_percentage() {
        // 25 % of 8 comuni: 2 at a time; an instance whose pods are all down goes first.
        check(
            "maxUnavailable: 25%
instances:
  a: {state: Outdated}
  b: {state: Outdated}
  c: {state: Outdated}
  d: {state: Outdated}
  e: {state: Outdated}
  f: {state: Outdated, serving: false}
  g: {state: Outdated}
  h: {state: Outdated}
update: [a, f]",
        );
        // 10 % of 3 comuni rounds up to one.
        check(
            "maxUnavailable: 10%
instances: {a: {state: Outdated}, b: {state: Outdated}, c: {state: Outdated}}
update: [a]",
        );
    }

    #[test]
    fn a_wave_past_its_deadline_halts_the_rollout() {
        check(
            "maxUnavailable: 50%
instances:
  a: {state: Stalled}
  b: {state: Available}
  c: {state: Outdated}
  d: {state: Outdated}
update: []
halted: [a]",
        );
        // The instances the pass covers are still repaired, and new comuni still served.
        check(
            "maxUnavailable: 50%
instances:
  a: {state: Stalled, covered: true}
  b: {state: Available, covered: true}
  c: {state: Outdated, covered: true}
  n: {state: Missing}
update: [a, b, n]
halted: [a]",
        );
    }

    #[test]
    fn a_fixed_template_resumes_the_rollout_broken_instances_first() {
        // The fix is a new version: every instance is outdated, the broken one goes first.
        check(
            "maxUnavailable: 1
instances:
  a: {state: Outdated, serving: false}
  b: {state: Outdated}
  c: {state: Outdated}
update: [a]",
        );
    }

    #[test]
    fn a_comune_that_joins_mid_rollout_gets_its_instance_at_once() {
        check(
            "maxUnavailable: 1
instances:
  a: {state: Progressing}
  b: {state: Outdated}
  joined: {state: Missing}
update: [joined]",
        );
    }

    #[test]
    fn an_instance_refused_by_its_quota_takes_room_in_the_wave() {
        check(
            "maxUnavailable: 1
instances: {a: {state: QuotaExceeded}, b: {state: Outdated}}
update: []",
        );
    }
}
