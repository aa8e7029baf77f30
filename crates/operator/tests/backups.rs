//! Each comune's backups as Velero's own resource, against its real CRD (installed by
//! tests/cluster): a `Schedule` of its namespace in Velero's namespace, on its data
//! classification's policy; the backups it made outlive the comune.

mod support;

use anyhow::{Context as _, ensure};
use consorzio::{
    render::{
        api_resource,
        backup::{VELERO_BACKUP, VELERO_RESTORE, VELERO_SCHEDULE},
    },
    restore::{Request, restore},
};
use consorzio_api::DataClassification;
use consorzio_testkit::{Env, TIMEOUT, run, wait_for};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{
    Api,
    api::{DynamicObject, PostParams},
};
use serde_json::{Value, json};
use support::{Operator, classified, comune, exclusive, onboard, remove};

/// The Schedule named `name` in Velero's namespace, once it passes `check`.
async fn schedule(env: &Env, name: &str, check: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let api = Api::<DynamicObject>::namespaced_with(
        env.client(),
        "velero",
        &api_resource(VELERO_SCHEDULE),
    );
    wait_for(&format!("Schedule velero/{name}"), TIMEOUT, || async {
        let s = serde_json::to_value(api.get(name).await?)?;
        ensure!(check(&s), "{s}");
        Ok(s)
    })
    .await
}

#[tokio::test]
async fn each_comune_is_backed_up_as_its_classification_says_and_its_backups_outlive_it() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let (a, a_ns) = onboard(&env, &comune()).await?;
        let (b, b_ns) = onboard(&env, &classified(DataClassification::Critical)).await?;

        // Accepted by Velero's schema, of the comune's namespace and volumes, owning nothing.
        let daily = schedule(&env, &a_ns, |_| true).await?;
        let four_times = schedule(&env, &b_ns, |_| true).await?;
        for (s, ns, ttl) in [(&daily, &a_ns, "720h0m0s"), (&four_times, &b_ns, "2160h0m0s")] {
            let template = &s["spec"]["template"];
            ensure!(template["includedNamespaces"] == json!([ns]), "{s}");
            ensure!(template["ttl"] == ttl, "{s}");
            ensure!(template["defaultVolumesToFsBackup"] == true, "{s}");
            ensure!(s["spec"]["useOwnerReferencesInBackup"] == false, "{s}");
            ensure!(s["metadata"]["ownerReferences"].is_null(), "{s}");
        }
        let hours = |s: &Value| {
            s["spec"]["schedule"].as_str().unwrap_or_default().split(' ').nth(1).unwrap_or_default().split(',').count()
        };
        ensure!(hours(&daily) == 1 && hours(&four_times) == 4, "{daily} / {four_times}");
        ensure!(daily["spec"]["schedule"] != four_times["spec"]["schedule"]);
        ensure!(daily["spec"]["template"]["metadata"]["labels"]["consorzio.io/municipality"] == json!(a));

        // The comune's own policy, and suspension pauses it.
        let mut own = Api::<consorzio_api::Municipality>::all(env.client()).get(&a).await?;
        own.spec.backup.schedule = Some("15 3 * * 0".into());
        own.spec.backup.retention_days = Some(7);
        own.spec.suspended = true;
        support::apply(&env, &own).await?;
        schedule(&env, &a_ns, |s| {
            s["spec"]["schedule"] == "15 3 * * 0"
                && s["spec"]["template"]["ttl"] == "168h0m0s"
                && s["spec"]["paused"] == true
        })
        .await?;

        // A backup Velero made of b (as Velero records it: no owner, the template's labels)
        // outlives b, which goes keeping its data: its Schedule goes, no more backups are taken.
        let backups = Api::<DynamicObject>::namespaced_with(env.client(), "velero", &api_resource(VELERO_BACKUP));
        let backup_name = format!("{b_ns}-20261130020000");
        let backup: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "velero.io/v1", "kind": "Backup",
            "metadata": {"name": backup_name, "namespace": "velero",
                         "labels": {"velero.io/schedule-name": b_ns, "consorzio.io/municipality": b}},
            "spec": {"includedNamespaces": [b_ns], "ttl": "2160h0m0s"},
            "status": {"phase": "Completed", "startTimestamp": "2026-11-30T02:00:00Z",
                       "completionTimestamp": "2026-11-30T02:03:10Z"},
        }))?;
        backups.create(&PostParams::default(), &backup).await?;
        remove(&env, &b).await?;
        let schedules = Api::<DynamicObject>::namespaced_with(env.client(), "velero", &api_resource(VELERO_SCHEDULE));
        wait_for("b's Schedule gone", TIMEOUT, || async {
            ensure!(schedules.get_opt(&b_ns).await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        ensure!(backups.get_opt(&backup_name).await?.is_some(), "the backup is kept");
        backups.delete(&backup_name, &Default::default()).await?;

        remove(&env, &a).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

/// A Backup of comune `comune` (of its namespace `ns`) as Velero records it once done: labelled
/// by its Schedule's template, `phase` and completion time in its status (Velero's CRDs have no
/// status subresource: the status is written with the object).
fn velero_backup(
    name: &str,
    comune: &str,
    ns: &str,
    phase: &str,
    completed: Timestamp,
) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "velero.io/v1", "kind": "Backup",
        "metadata": {"name": name, "namespace": "velero",
                     "labels": {"velero.io/schedule-name": ns, "consorzio.io/municipality": comune}},
        "spec": {"includedNamespaces": [ns]},
        "status": {"phase": phase, "startTimestamp": completed - SignedDuration::from_mins(3),
                   "completionTimestamp": completed},
    }))?)
}

/// The comune's status once its `BackedUp` condition has `reason`.
async fn backed_up(env: &Env, comune: &str, reason: &str) -> anyhow::Result<Value> {
    let api = Api::<consorzio_api::Municipality>::all(env.client());
    wait_for(&format!("{comune}: BackedUp {reason}"), TIMEOUT, || async {
        let status = serde_json::to_value(api.get(comune).await?.status)?;
        let condition = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "BackedUp"))
            .cloned()
            .unwrap_or_default();
        ensure!(condition["reason"] == reason, "{status}");
        Ok(status)
    })
    .await
}

/// `consorzio_backup_age_seconds` and `consorzio_backup_max_age_seconds` of a comune.
fn ages(op: &Operator, comune: &str) -> (Option<f64>, Option<f64>) {
    let text = op.metrics.encode();
    let labels = format!("{{municipality=\"{comune}\"}}");
    let value = |metric: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(metric)?
                .strip_prefix(&labels)?
                .trim()
                .parse()
                .ok()
        })
    };
    (
        value("consorzio_backup_age_seconds"),
        value("consorzio_backup_max_age_seconds"),
    )
}

#[tokio::test]
async fn the_newest_successful_backup_shows_in_status_and_metrics_and_an_old_one_raises_the_condition()
 {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let (a, a_ns) = onboard(&env, &comune()).await?;
        let (b, b_ns) = onboard(&env, &classified(DataClassification::Critical)).await?;
        let backups = Api::<DynamicObject>::namespaced_with(
            env.client(),
            "velero",
            &api_resource(VELERO_BACKUP),
        );
        let now = Timestamp::now();

        // Just onboarded: the policy, no backup yet, the first one due.
        let status = backed_up(&env, &a, "FirstBackupPending").await?;
        ensure!(
            status["backup"]["maxAge"] == "25h0m" && status["backup"]["retentionDays"] == 30,
            "{status}"
        );
        ensure!(status["backup"]["lastSuccessful"].is_null(), "{status}");
        let status = backed_up(&env, &b, "FirstBackupPending").await?;
        ensure!(
            status["backup"]["maxAge"] == "7h0m" && status["backup"]["retentionDays"] == 90,
            "{status}"
        );

        // a's backup of an hour ago completed; a later one failed in part, and one labelled a's
        // backed up another namespace: neither counts.
        let done = format!("{a_ns}-done");
        let mut made = vec![];
        for (name, ns, phase, at) in [
            (
                done.clone(),
                &a_ns,
                "Completed",
                now - SignedDuration::from_hours(1),
            ),
            (
                format!("{a_ns}-partial"),
                &a_ns,
                "PartiallyFailed",
                now - SignedDuration::from_mins(10),
            ),
            (
                format!("{a_ns}-other"),
                &b_ns,
                "Completed",
                now - SignedDuration::from_mins(5),
            ),
        ] {
            backups
                .create(
                    &PostParams::default(),
                    &velero_backup(&name, &a, ns, phase, at)?,
                )
                .await?;
            made.push(name);
        }
        let status = backed_up(&env, &a, "BackupCurrent").await?;
        ensure!(
            status["backup"]["lastSuccessful"] == json!(done),
            "{status}"
        );
        let (age, max) = wait_for("a's backup age", TIMEOUT, || async {
            match ages(&op, &a) {
                (Some(age), Some(max)) if age < 7200.0 => Ok((age, max)),
                other => anyhow::bail!("{other:?}"),
            }
        })
        .await?;
        ensure!(
            (3600.0..3700.0).contains(&age) && max == 25.0 * 3600.0,
            "{age} / {max}"
        );

        // b's newest successful backup is two days old: more than its policy (critical, every 6
        // hours) allows; the metric says so too.
        let old = format!("{b_ns}-old");
        backups
            .create(
                &PostParams::default(),
                &velero_backup(
                    &old,
                    &b,
                    &b_ns,
                    "Completed",
                    now - SignedDuration::from_hours(48),
                )?,
            )
            .await?;
        made.push(old.clone());
        let status = backed_up(&env, &b, "BackupTooOld").await?;
        ensure!(status["backup"]["lastSuccessful"] == json!(old), "{status}");
        ensure!(
            status["conditions"].as_array().is_some_and(|c| c
                .iter()
                .any(|c| c["type"] == "BackedUp" && c["status"] == "False")),
            "{status}"
        );
        let (age, max) = ages(&op, &b);
        ensure!(
            age.zip(max).is_some_and(|(age, max)| age > max),
            "{age:?} / {max:?}"
        );

        // A new one: current again. Deleted (by hand, or expired): the older one is the newest.
        let new = format!("{b_ns}-new");
        backups
            .create(
                &PostParams::default(),
                &velero_backup(&new, &b, &b_ns, "Completed", now)?,
            )
            .await?;
        backed_up(&env, &b, "BackupCurrent").await?;
        backups.delete(&new, &Default::default()).await?;
        let status = backed_up(&env, &b, "BackupTooOld").await?;
        ensure!(status["backup"]["lastSuccessful"] == json!(old), "{status}");

        for name in made {
            backups.delete(&name, &Default::default()).await?;
        }
        remove(&env, &a).await?;
        remove(&env, &b).await?;
        ensure!(ages(&op, &a) == (None, None), "a's series outlived it");
        op.stop().await;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn restore_makes_a_velero_restore_and_overwrites_nothing_live_unless_asked() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let (a, a_ns) = onboard(&env, &comune()).await?;
        let backups = Api::<DynamicObject>::namespaced_with(
            env.client(),
            "velero",
            &api_resource(VELERO_BACKUP),
        );
        let restores = Api::<DynamicObject>::namespaced_with(
            env.client(),
            "velero",
            &api_resource(VELERO_RESTORE),
        );
        let now = Timestamp::now();
        let (old, new) = (format!("{a_ns}-old"), format!("{a_ns}-new"));
        for (name, at) in [
            (&old, now - SignedDuration::from_hours(48)),
            (&new, now - SignedDuration::from_hours(1)),
        ] {
            backups
                .create(
                    &PostParams::default(),
                    &velero_backup(name, &a, &a_ns, "Completed", at)?,
                )
                .await?;
        }
        let config = consorzio::render::Config::default();
        let ask = |f: &dyn Fn(&mut Request)| {
            let mut r = Request {
                comune: a.clone(),
                ..Default::default()
            };
            f(&mut r);
            r
        };
        let refused = |request: Request| {
            let (client, config) = (env.client(), config.clone());
            async move {
                match restore(&client, &config, &request).await {
                    Ok(said) => anyhow::bail!("{request:?}: made a restore: {said}"),
                    Err(error) => Ok(format!("{error:#}")),
                }
            }
        };
        let ours = || async {
            let params =
                kube::api::ListParams::default().labels(&format!("consorzio.io/municipality={a}"));
            anyhow::Ok(restores.list(&params).await?.items)
        };

        // The comune's namespace is live: not over it without --overwrite.
        let message = refused(ask(&|_| {})).await?;
        ensure!(
            message.contains("live data")
                && message.contains("--overwrite")
                && message.contains("--into"),
            "{message}"
        );
        let message = refused(ask(&|r| r.backup = Some("someone-elses".into()))).await?;
        ensure!(
            message.contains("not a successful backup") && message.contains(&new),
            "{message}"
        );
        let message = refused(ask(&|r| r.into = Some(format!("{a_ns}-copy")))).await?;
        ensure!(message.contains("are the operator's"), "{message}");
        let message = refused(ask(&|r| r.at = Some(now - SignedDuration::from_hours(72)))).await?;
        ensure!(
            message.contains("no successful backup completed by"),
            "{message}"
        );
        ensure!(ours().await?.is_empty(), "a refused restore made something");

        // Beside it, as of yesterday: the backup of two days ago, into a new namespace, which
        // is restricted and none of the comune's.
        let copy = format!("restore-{a}");
        env.delete_later_dynamic(
            kube::api::ApiResource::erase::<Namespace>(&()),
            None,
            copy.clone(),
        );
        let said = restore(
            &env.client(),
            &config,
            &ask(&|r| {
                r.at = Some(now - SignedDuration::from_hours(24));
                r.into = Some(copy.clone());
            }),
        )
        .await?;
        ensure!(said.contains(&old), "{said}");
        let made = ours().await?;
        let spec = &made.first().context("a Restore")?.data["spec"];
        ensure!(
            spec["backupName"] == json!(old) && spec["includedNamespaces"] == json!([a_ns]),
            "{spec}"
        );
        ensure!(
            spec["namespaceMapping"] == json!({a_ns.clone(): copy}),
            "{spec}"
        );
        ensure!(spec["existingResourcePolicy"].is_null(), "{spec}");
        let labels = Api::<Namespace>::all(env.client())
            .get(&copy)
            .await?
            .metadata
            .labels
            .unwrap_or_default();
        ensure!(
            labels
                .get("pod-security.kubernetes.io/enforce")
                .map(String::as_str)
                == Some("restricted"),
            "{labels:?}"
        );
        ensure!(
            !labels.keys().any(|k| k.contains("consorzio")),
            "{labels:?}"
        );
        let message = refused(ask(&|r| r.into = Some(copy.clone()))).await?;
        ensure!(message.contains("exists"), "{message}");

        // Over it, when asked: the newest, its objects updated to the backup's.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await; // another name (seconds)
        let said = restore(&env.client(), &config, &ask(&|r| r.overwrite = true)).await?;
        ensure!(
            said.contains(&new) && said.contains("keep their data"),
            "{said}"
        );
        let made = ours().await?;
        let over = made
            .iter()
            .find(|r| r.data["spec"]["backupName"] == json!(new))
            .context("the Restore over it")?;
        ensure!(
            over.data["spec"]["existingResourcePolicy"] == "update",
            "{:?}",
            over.data
        );
        ensure!(
            over.data["spec"]["namespaceMapping"].is_null(),
            "{:?}",
            over.data
        );

        for r in made {
            restores
                .delete(&r.metadata.name.unwrap_or_default(), &Default::default())
                .await?;
        }
        for name in [old, new] {
            backups.delete(&name, &Default::default()).await?;
        }
        remove(&env, &a).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}
