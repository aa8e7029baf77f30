//! What GitOps tools see (finding 13): the chart's Argo CD health check
//! (charts/consorzio/files/argocd/health.lua), run by a Lua interpreter on fixtures of both kinds
//! in each state the operator writes, says Degraded when the operator has given up, Progressing
//! while it works, Healthy or Suspended when Ready.

mod support;

use anyhow::Context as _;
use mlua::{Lua, LuaSerdeExt};
use serde_json::{Value, json};

/// Argo CD's verdict on `obj`: (status, message).
fn health(obj: &Value) -> anyhow::Result<(String, String)> {
    let script = support::chart::read("charts/consorzio/files/argocd/health.lua")?;
    let lua = Lua::new();
    lua.globals()
        .set(
            "obj",
            lua.to_value(obj).map_err(|e| anyhow::anyhow!("{e}"))?,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hs: mlua::Table = lua
        .load(&script)
        .eval()
        .map_err(|e| anyhow::anyhow!("the health check fails: {e}"))?;
    let get = |k: &str| -> anyhow::Result<String> {
        hs.get::<String>(k)
            .map_err(|e| anyhow::anyhow!("hs.{k}: {e}"))
    };
    Ok((get("status")?, get("message")?))
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": if status {"True"} else {"False"}, "reason": reason,
           "message": message, "lastTransitionTime": "2026-11-30T10:00:00Z"})
}

/// An object of `kind` at generation 2, with these conditions, observed at `observed`.
fn object(kind: &str, observed: i64, suspended: bool, conditions: Vec<Value>) -> Value {
    json!({"apiVersion": "consorzio.io/v1alpha1", "kind": kind,
           "metadata": {"name": "x", "generation": 2},
           "spec": {"suspended": suspended},
           "status": {"observedGeneration": observed, "conditions": conditions}})
}

/// Ready, Reconciling and Stalled as the operator writes them.
fn kstatus(ready: (bool, &str), reconciling: bool, stalled: Option<&str>) -> Vec<Value> {
    vec![
        condition(
            "Ready",
            ready.0,
            ready.1,
            &format!("ready says {}", ready.1),
        ),
        condition(
            "Reconciling",
            reconciling,
            if reconciling { ready.1 } else { "Idle" },
            "work",
        ),
        condition(
            "Stalled",
            stalled.is_some(),
            stalled.unwrap_or("NotStalled"),
            &format!("what to fix for {}", stalled.unwrap_or("nothing")),
        ),
    ]
}

#[test]
fn argo_cd_sees_failure_progress_and_health_of_both_kinds() -> anyhow::Result<()> {
    let no_status = json!({"kind": "Municipality", "metadata": {"name": "x", "generation": 1}});
    let cases = [
        ("no status yet", no_status, "Progressing", "waiting"),
        (
            "an older generation observed",
            object(
                "SharedService",
                1,
                false,
                kstatus((true, "Available"), false, None),
            ),
            "Progressing",
            "generation 2",
        ),
        (
            "a comune whose namespace is someone else's",
            object(
                "Municipality",
                2,
                false,
                kstatus(
                    (false, "NamespaceConflict"),
                    false,
                    Some("NamespaceConflict"),
                ),
            ),
            "Degraded",
            "NamespaceConflict",
        ),
        (
            "a comune waiting for its ServiceAccount",
            object(
                "Municipality",
                2,
                false,
                kstatus((false, "WaitingForServiceAccount"), true, None),
            ),
            "Progressing",
            "WaitingForServiceAccount",
        ),
        (
            "a Ready comune",
            object(
                "Municipality",
                2,
                false,
                kstatus((true, "Reconciled"), false, None),
            ),
            "Healthy",
            "ready says Reconciled",
        ),
        (
            "a suspended comune",
            object(
                "Municipality",
                2,
                true,
                kstatus((true, "Suspended"), false, None),
            ),
            "Suspended",
            "",
        ),
        (
            "a service with an unfillable template",
            object(
                "SharedService",
                2,
                false,
                kstatus((false, "InvalidTemplate"), false, Some("InvalidTemplate")),
            ),
            "Degraded",
            "InvalidTemplate",
        ),
        (
            "a service whose rollout halted",
            object(
                "SharedService",
                2,
                false,
                kstatus((false, "InstancesNotReady"), false, Some("RolloutHalted")),
            ),
            "Degraded",
            "RolloutHalted",
        ),
        (
            "a service whose instances are coming up",
            object(
                "SharedService",
                2,
                false,
                kstatus((false, "InstancesNotReady"), true, None),
            ),
            "Progressing",
            "InstancesNotReady",
        ),
    ];
    for (what, obj, status, says) in cases {
        let (got, message) = health(&obj).with_context(|| what.to_string())?;
        assert_eq!(got, status, "{what}: {message}");
        assert!(
            message.contains(says),
            "{what}: {message:?} should say {says:?}"
        );
    }
    Ok(())
}
