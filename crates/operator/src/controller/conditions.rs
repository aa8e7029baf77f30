//! Conditions, as both controllers write them.

use consorzio_api::Condition;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

/// What a `Ready` condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Whether it is ready.
    pub status: bool,
    /// Why, in one CamelCase word.
    pub reason: &'static str,
    /// Why, for people, with what to do when it is not.
    pub message: String,
}

impl Ready {
    /// Ready, because `reason`.
    pub fn yes(reason: &'static str, message: String) -> Ready {
        Ready {
            status: true,
            reason,
            message,
        }
    }

    /// Not ready, because `reason`.
    pub fn no(reason: &'static str, message: String) -> Ready {
        Ready {
            status: false,
            reason,
            message,
        }
    }

    /// As a condition, keeping the previous transition time when its status did not change.
    pub fn condition(self, previous: &[Condition], generation: Option<i64>) -> Condition {
        condition(
            previous,
            "Ready",
            self.status,
            self.reason,
            self.message,
            generation,
        )
    }
}

/// The conditions GitOps tools read (kstatus: Flux, kpt, cli-utils; and the chart's Argo CD
/// health checks) that go with a `Ready` condition: `Reconciling` while work is in flight (not
/// Ready, not given up), `Stalled` while the operator has given up until something changes
/// (`stalled`: why, and what to do). Both are always present, True or False.
pub fn progress(
    previous: &[Condition],
    ready: &Ready,
    stalled: Option<(&str, String)>,
    generation: Option<i64>,
) -> [Condition; 2] {
    let is_stalled = stalled.is_some();
    let reconciling = !ready.status && !is_stalled;
    let (reconciling_reason, reconciling_message) = if reconciling {
        (ready.reason, ready.message.clone())
    } else {
        ("Idle", "no work in flight".to_string())
    };
    let (stalled_reason, stalled_message) =
        stalled.unwrap_or(("NotStalled", "nothing needs a person".to_string()));
    [
        condition(
            previous,
            "Reconciling",
            reconciling,
            reconciling_reason,
            reconciling_message,
            generation,
        ),
        condition(
            previous,
            "Stalled",
            is_stalled,
            stalled_reason,
            stalled_message,
            generation,
        ),
    ]
}

/// A condition, keeping the previous transition time when its status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Whether the conditions say `type_=True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Whether the conditions say `Ready=True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    is_true(conditions, "Ready")
}

/// The reason of the `Ready` condition, if there is one.
pub fn ready_reason(conditions: &[Condition]) -> Option<&str> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str())
}
