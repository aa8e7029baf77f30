//! The operator killed (SIGKILL) at random moments, at least 10 times, while comuni and services
//! converge and change: in the end everything has converged to exactly the objects rendered, and
//! no instance's credentials were ever made twice.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::ensure;
use consorzio::{
    controller::kinds::KINDS,
    render::{
        Config,
        database::database_secret_name,
        municipality::render_municipality,
        namespace_name,
        service::{credentials_name, render_dedicated},
        shared::render_access_point,
    },
};
use consorzio_api::{Municipality, SharedService};
use consorzio_testkit::OperatorPlayer;
use consorzio_testkit::{Env, OperatorProcess, install_crds, install_platform, run, wait_for};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams},
    core::ApiResource,
    runtime::{WatchStreamExt, watcher},
};
use rand::Rng;
use serde_json::json;
use support::{apply, apply_service, catalogue_service, comune, exclusive, remove_service};

const KILLS: usize = 12;

/// Every version of each credentials Secret seen, by namespace/name: (uid, data).
type Seen = Arc<Mutex<BTreeMap<String, BTreeSet<(String, String)>>>>;

/// Records every version of the services' credentials Secrets, until the test ends. (A
/// database's password pair is written again if the operator stopped between its two Secrets,
/// before anything used them: checked apart, in `passwords_match`.)
fn watch_credentials(env: &Env, services: &[String]) -> Seen {
    let seen: Seen = Arc::default();
    let selector = format!("consorzio.io/service in ({})", services.join(","));
    let api = Api::<Secret>::all(env.client());
    let record = seen.clone();
    tokio::spawn(async move {
        let config = watcher::Config::default()
            .labels(&selector)
            .fields("type!=kubernetes.io/basic-auth");
        let events = watcher(api, config).applied_objects();
        let mut events = std::pin::pin!(events);
        while let Some(Ok(secret)) = events.next().await {
            let key = format!(
                "{}/{}",
                secret.namespace().unwrap_or_default(),
                secret.name_any()
            );
            let data = serde_json::to_string(&secret.data).unwrap_or_default();
            let uid = secret.uid().unwrap_or_default();
            if let Ok(mut seen) = record.lock() {
                seen.entry(key).or_default().insert((uid, data));
            }
        }
    });
    seen
}

/// What the operator should have made in comune `m`'s namespace, as `Kind name`.
fn expected(m: &Municipality, services: &[SharedService]) -> anyhow::Result<BTreeSet<String>> {
    let config = Config::default();
    let mut objects = render_municipality(m, &config)?;
    // The instances' credentials, which are not rendered (they are random).
    let mut extra = BTreeSet::new();
    for s in services {
        if s.spec.tenancy == consorzio_api::Tenancy::Dedicated {
            objects.extend(render_dedicated(s, m, &config)?);
            extra.insert(format!("Secret {}", credentials_name(s)));
            if s.spec.database.is_some() {
                extra.insert(format!("Secret {}", database_secret_name(s)));
            }
        } else {
            objects.extend(render_access_point(s, m, &config)?);
        }
    }
    let ns = namespace_name(m, &config);
    extra.extend(
        objects
            .iter()
            .filter(|o| o.resource.kind != "Namespace" && o.object.namespace() == Some(ns.clone()))
            .map(|o| format!("{} {}", o.resource.kind, o.object.name_any())),
    );
    Ok(extra)
}

/// What the operator manages in namespace `ns`, as `Kind name`.
async fn managed(env: &Env, ns: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let params = ListParams::default().labels("app.kubernetes.io/managed-by=consorzio");
    for kind in KINDS.iter().filter(|k| k.namespaced && k.written()) {
        let resource: ApiResource = kind.resource();
        let api = Api::<DynamicObject>::namespaced_with(env.client(), ns, &resource);
        for obj in api.list(&params).await? {
            if obj.metadata.deletion_timestamp.is_none() {
                found.insert(format!("{} {}", kind.kind, obj.name_any()));
            }
        }
    }
    Ok(found)
}

#[tokio::test]
async fn killed_at_random_the_operator_converges_exactly_and_keeps_credentials() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        install_crds(&env.client()).await?;
        install_platform(env.cluster()).await?;
        let bin = Path::new(env!("CARGO_BIN_EXE_consorzio"));
        let union = consorzio_testkit::unique_name("chaos");
        let selection = json!({"selector": {"matchLabels": {"consorzio.io/union": union}}});
        let mut comuni = vec![];
        for _ in 0..8 {
            let mut m = comune();
            m.spec.union = Some(union.clone());
            comuni.push(m);
        }
        let mut dedicated = catalogue_service("sito-comunale", selection.clone())?;
        let shared = catalogue_service("identity", selection)?;
        let names = vec![dedicated.name_any(), shared.name_any()];
        env.delete_later_dynamic(
            ApiResource::erase::<Namespace>(&()),
            None,
            format!("shared-{}", shared.name_any()),
        );
        let seen = watch_credentials(&env, &names);
        let _databases = OperatorPlayer::start(env.client());
        for m in &comuni[..5] {
            apply(&env, m).await?;
        }
        apply_service(&env, &dedicated).await?;
        apply_service(&env, &shared).await?;

        // Killed at random moments while it works; the fleet changes meanwhile: comuni join, a
        // comune leaves the union, the template changes.
        let args = ["--leader-election", "false"];
        let lives: Vec<u64> = {
            let mut rng = rand::rng();
            (0..KILLS).map(|_| rng.random_range(300..3000)).collect()
        };
        for (kill, lived) in lives.into_iter().enumerate() {
            let mut op = OperatorProcess::start(env.cluster(), bin, "chaos", &args)?;
            tokio::time::sleep(Duration::from_millis(lived)).await;
            op.stop();
            match kill {
                2 => {
                    for m in &comuni[5..] {
                        apply(&env, m).await?;
                    }
                }
                5 => {
                    let leaving = comuni[0].name_any();
                    Api::<Municipality>::all(env.client())
                        .patch(
                            &leaving,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"spec": {"union": "elsewhere"}})),
                        )
                        .await?;
                }
                8 => {
                    dedicated.spec.template.image =
                        "docker.io/library/wordpress:6.7.1-apache".into();
                    apply_service(&env, &dedicated).await?;
                }
                _ => {}
            }
        }

        // Then it runs until everything has converged.
        let op = OperatorProcess::start(env.cluster(), bin, "chaos", &args)?;
        let services = Api::<SharedService>::all(env.client());
        let joined = &comuni[1..];
        wait_for(
            "both services Ready on every comune",
            Duration::from_secs(180),
            || async {
                for name in &names {
                    let st = services.get(name).await?.status.unwrap_or_default();
                    let want = if *name == names[0] {
                        joined.len() as i32
                    } else {
                        1
                    };
                    ensure!(
                        st.ready_instances == want,
                        "{name}: {} of {want}",
                        st.ready_instances
                    );
                    let rollout = st.rollout.map(|r| (r.updated, r.total));
                    ensure!(
                        rollout.is_some_and(|(u, t)| u == t),
                        "{name}: rollout {rollout:?}"
                    );
                }
                Ok(())
            },
        )
        .await?;
        let service_objects = [
            services.get(&names[0]).await?,
            services.get(&names[1]).await?,
        ];
        wait_for(
            "exactly the rendered objects in every comune",
            Duration::from_secs(60),
            || async {
                let municipalities = Api::<Municipality>::all(env.client());
                for m in joined {
                    let m = municipalities.get(&m.name_any()).await?;
                    let ns = format!("comune-{}", m.name_any());
                    let want = expected(&m, &service_objects)?;
                    let have = managed(&env, &ns).await?;
                    ensure!(have == want, "{ns}: has {have:?}, should have {want:?}");
                }
                // The comune that left keeps only its own objects (its volume and credentials are
                // kept, no longer managed).
                let left = municipalities.get(&comuni[0].name_any()).await?;
                let ns = format!("comune-{}", left.name_any());
                let want = expected(&left, &[])?;
                let have = managed(&env, &ns).await?;
                ensure!(have == want, "{ns}: has {have:?}, should have {want:?}");
                Ok(())
            },
        )
        .await?;
        drop(op);

        // Each credentials Secret was made once and never changed.
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        ensure!(
            seen.len() > joined.len(),
            "credentials seen: {:?}",
            seen.keys()
        );
        for (secret, versions) in &seen {
            ensure!(
                versions.len() == 1,
                "{secret} was made or changed {} times",
                versions.len()
            );
        }
        let in_comuni = seen.keys().filter(|k| k.starts_with("comune-")).count();
        ensure!(
            in_comuni >= joined.len(),
            "{in_comuni} credentials in comuni"
        );
        // Each comune's database password is the same beside its application and beside the
        // server, whatever moment the operator was killed at.
        let secret = |ns: String, name: String| {
            let api = env.api::<Secret>(&ns);
            async move {
                let data = api.get(&name).await?.data.unwrap_or_default();
                anyhow::Ok(data.get("password").map(|p| p.0.clone()))
            }
        };
        for m in joined {
            let app = secret(
                format!("comune-{}", m.name_any()),
                database_secret_name(&dedicated),
            )
            .await?;
            let server = secret(
                format!("shared-{}", dedicated.name_any()),
                format!("{}-database", m.name_any()),
            )
            .await?;
            ensure!(
                app.is_some() && app == server,
                "{}: the password pair differs",
                m.name_any()
            );
        }

        let op = OperatorProcess::start(env.cluster(), bin, "chaos", &args)?;
        for name in &names {
            remove_service(&env, name).await?;
        }
        for m in &comuni {
            support::remove(&env, &m.name_any()).await?;
        }
        drop(op);
        Ok(())
    })
    .await;
}
