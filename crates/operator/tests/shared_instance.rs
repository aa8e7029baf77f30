//! Shared SharedServices: one instance in `shared-<service>`, an access point in each subscribed
//! comune, and network isolation, checked on the policy objects the API server holds (the local
//! control plane has no network plugin to enforce them). Also: the whole catalogue of
//! deploy/examples reaches Ready.

mod support;

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use consorzio_api::{Municipality, SharedService};
use consorzio_testkit::{
    Env, TIMEOUT, example_manifests, netpol, run, unique_name, wait_for, wait_gone,
};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    core::ApiResource,
};
use serde_json::json;
use support::{
    Operator, apply_service, catalogue_service, comune, exclusive, onboard, remove_service, tenant,
    wait_status,
};

/// The first running pod of a service's instance in `ns`.
async fn instance_pod(env: &Env, ns: &str, service: &str) -> anyhow::Result<Pod> {
    let pods = env.api::<Pod>(ns);
    let selector = format!("consorzio.io/service={service}");
    wait_for(
        &format!("a running pod of {service} in {ns}"),
        TIMEOUT,
        || async {
            pods.list(&ListParams::default().labels(&selector))
                .await?
                .items
                .into_iter()
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .context("none running yet")
        },
    )
    .await
}

async fn set_union(env: &Env, name: &str, union: &str) -> anyhow::Result<()> {
    Api::<Municipality>::all(env.client())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"union": union}})),
        )
        .await?;
    Ok(())
}

/// Whether `ns` has the service's whole access point (Service, connection settings, egress
/// policy), or none of it.
async fn access_point(env: &Env, ns: &str, service: &str) -> anyhow::Result<Option<Service>> {
    let svc = env.api::<Service>(ns).get_opt(service).await?;
    let settings = env
        .api::<ConfigMap>(ns)
        .get_opt(&format!("{service}-connection"))
        .await?;
    let policy = env
        .api::<NetworkPolicy>(ns)
        .get_opt(&format!("consorzio-service-{service}"))
        .await?;
    let label = Api::<Namespace>::all(env.client())
        .get(ns)
        .await?
        .labels()
        .get(&format!("services.consorzio.io/{service}"))
        .cloned();
    let parts = [
        svc.is_some(),
        settings.is_some(),
        policy.is_some(),
        label.is_some(),
    ];
    ensure!(
        parts.iter().all(|p| *p) || parts.iter().all(|p| !*p),
        "a partial access point in {ns}: service, settings, policy, label = {parts:?}"
    );
    Ok(svc)
}

#[tokio::test]
async fn shared_service_serves_its_subscribed_comuni_only() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let (union, other) = (unique_name("u"), unique_name("v"));
        let (mut a, mut b, mut c) = (comune(), comune(), comune());
        a.spec.union = Some(union.clone());
        b.spec.union = Some(union.clone());
        c.spec.union = Some(other.clone());
        let (_, a_ns) = onboard(&env, &a).await?;
        let (b_name, b_ns) = onboard(&env, &b).await?;
        let (c_name, c_ns) = onboard(&env, &c).await?;

        // The territorial GIS, shared by the union; a dedicated file-sharing service for a and c.
        let gis = catalogue_service(
            "sit",
            json!({"selector": {"matchLabels": {"consorzio.io/union": union}}}),
        )?;
        let files = catalogue_service("nextcloud", json!({"names": [a.name_any(), c.name_any()]}))?;
        let (x, shared_ns) = (gis.name_any(), format!("shared-{}", gis.name_any()));
        env.delete_later_dynamic(
            ApiResource::erase::<Namespace>(&()),
            None,
            shared_ns.clone(),
        );
        apply_service(&env, &gis).await?;
        apply_service(&env, &files).await?;
        wait_status(&env, &x, "the shared instance Ready", |st| {
            st.desired_instances == 1
                && st.ready_instances == 1
                && st
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .await?;
        wait_status(&env, &files.name_any(), "2 instances Ready", |st| {
            st.ready_instances == 2
        })
        .await?;

        // One instance, in its own namespace, isolated like a comune's.
        let ns = Api::<Namespace>::all(env.client()).get(&shared_ns).await?;
        assert_eq!(
            ns.labels()["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        assert!(
            ns.owner_references().is_empty(),
            "it holds the instance's data: no owner reference"
        );
        let d = env.api::<Deployment>(&shared_ns).get(&x).await?;
        assert_eq!(d.status.and_then(|s| s.available_replicas), Some(1));
        for policy in ["consorzio-default-deny", "consorzio-allow-subscribers"] {
            env.api::<NetworkPolicy>(&shared_ns).get(policy).await?;
        }

        // Access points in the union's comuni, none in the other.
        let svc = access_point(&env, &a_ns, &x)
            .await?
            .context("a's access point")?;
        let spec = svc.spec.unwrap_or_default();
        assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
        assert_eq!(
            spec.external_name,
            Some(format!("{x}.{shared_ns}.svc.cluster.local"))
        );
        let connection = env
            .api::<ConfigMap>(&a_ns)
            .get(&format!("{x}-connection"))
            .await?
            .data
            .unwrap_or_default();
        assert_eq!(connection["CONSORZIO_TENANT_ID"], a.name_any());
        assert_eq!(
            connection["CONSORZIO_URL"],
            format!("http://{x}.{a_ns}.svc:8080")
        );
        ensure!(access_point(&env, &b_ns, &x).await?.is_some());
        ensure!(access_point(&env, &c_ns, &x).await?.is_none());
        let entry = Api::<Municipality>::all(env.client())
            .get(&b_name)
            .await?
            .status
            .and_then(|s| s.services.into_iter().find(|e| e.name == x))
            .context("b's status lists the shared service")?;
        assert_eq!(entry.phase, "Ready");
        assert_eq!(
            entry.url.as_deref(),
            Some("https://sit.altosangro.example.it")
        );

        // Who reaches whom, by the policies that select each pod.
        let client = env.client();
        let gis_pod =
            netpol::Endpoint::of_pod(&client, &instance_pod(&env, &shared_ns, &x).await?).await?;
        let files_a = instance_pod(&env, &a_ns, &files.name_any()).await?;
        let files_c = instance_pod(&env, &c_ns, &files.name_any()).await?;
        let (from_a, from_c) = (
            netpol::Endpoint::of_pod(&client, &files_a).await?,
            netpol::Endpoint::of_pod(&client, &files_c).await?,
        );
        let from_b = netpol::Endpoint::new(
            &client,
            &b_ns,
            BTreeMap::from([("app".into(), "gis".into())]),
        )
        .await?;
        let elsewhere_in_shared = netpol::Endpoint::new(
            &client,
            &shared_ns,
            BTreeMap::from([("app".into(), "database".into())]),
        )
        .await?;
        let reach = |from: netpol::Endpoint, to: netpol::Endpoint, port: i32| {
            let client = client.clone();
            async move { netpol::allows(&client, &from, &to, port).await }
        };
        ensure!(
            reach(from_a.clone(), gis_pod.clone(), 8080).await?,
            "a subscribed comune reaches the shared instance"
        );
        ensure!(
            reach(from_b.clone(), gis_pod.clone(), 8080).await?,
            "so does b"
        );
        ensure!(
            !reach(from_c.clone(), gis_pod.clone(), 8080).await?,
            "c is not subscribed"
        );
        // The shared instance's own policies admit only subscribers, whatever the caller's
        // egress: a namespace without policies is refused too.
        let outsider = netpol::Endpoint::new(&client, "default", BTreeMap::new()).await?;
        ensure!(
            !reach(outsider, gis_pod.clone(), 8080).await?,
            "an unsubscribed namespace with open egress"
        );
        ensure!(
            !reach(from_a.clone(), from_c.clone(), 80).await?,
            "a cannot reach c's instance"
        );
        ensure!(
            !reach(from_c.clone(), from_a.clone(), 80).await?,
            "c cannot reach a's instance"
        );
        ensure!(
            !reach(from_a.clone(), gis_pod.clone(), 5432).await?,
            "only the application's port is open"
        );
        ensure!(
            !reach(from_a.clone(), elsewhere_in_shared, 8080).await?,
            "nothing else of the shared namespace"
        );
        ensure!(
            reach(from_a.clone(), from_a.clone(), 80).await?,
            "inside its own namespace a comune is free"
        );

        // Earlier operators wrote each service's entry under a field manager of the service's own,
        // as this does: when b leaves, its entry must go all the same.
        let older = json!({
            "apiVersion": "consorzio.io/v1alpha1",
            "kind": "Municipality",
            "status": {"services": [entry]},
        });
        Api::<Municipality>::all(env.client())
            .patch_status(
                &b_name,
                &PatchParams::apply(&format!("consorzio-service-{x}")),
                &Patch::Apply(older),
            )
            .await?;

        // c joins the union: it gets an access point and reaches the instance; b leaves: it loses
        // them.
        set_union(&env, &c_name, &union).await?;
        set_union(&env, &b_name, &other).await?;
        wait_for("c's access point and b's removal", TIMEOUT, || async {
            ensure!(
                access_point(&env, &c_ns, &x).await?.is_some(),
                "c has none yet"
            );
            ensure!(
                access_point(&env, &b_ns, &x).await?.is_none(),
                "b still has one"
            );
            Ok(())
        })
        .await?;
        let from_c = netpol::Endpoint::of_pod(&client, &files_c).await?;
        ensure!(
            reach(from_c, gis_pod.clone(), 8080).await?,
            "c reaches the instance once subscribed"
        );
        let from_b = netpol::Endpoint::new(&client, &b_ns, BTreeMap::new()).await?;
        ensure!(
            !reach(from_b, gis_pod, 8080).await?,
            "b no longer reaches it"
        );
        wait_for("b's status to drop the service", TIMEOUT, || async {
            let m = Api::<Municipality>::all(env.client()).get(&b_name).await?;
            let listed = m
                .status
                .is_some_and(|s| s.services.iter().any(|e| e.name == x));
            ensure!(!listed, "still listed");
            Ok(())
        })
        .await?;

        // Deleting the service keeps its data: the namespace stays, no longer owned, with the
        // volume; the instance and every access point go.
        remove_service(&env, &x).await?;
        let ns = Api::<Namespace>::all(env.client()).get(&shared_ns).await?;
        assert_eq!(
            ns.labels().get("consorzio.io/orphaned").map(String::as_str),
            Some("true")
        );
        assert!(
            ns.owner_references().is_empty(),
            "{:?}",
            ns.owner_references()
        );
        let pvc = env
            .api::<PersistentVolumeClaim>(&shared_ns)
            .get(&format!("{x}-data"))
            .await?;
        assert_eq!(pvc.labels()["consorzio.io/orphaned"], "true");
        wait_gone(&env.api::<Deployment>(&shared_ns), &x, TIMEOUT).await?;
        ensure!(access_point(&env, &a_ns, &x).await?.is_none());
        ensure!(access_point(&env, &c_ns, &x).await?.is_none());

        remove_service(&env, &files.name_any()).await?;
        op.stop().await;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn every_catalogue_service_reaches_ready() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let (mut a, mut b) = (comune(), comune());
        for m in [&mut a, &mut b] {
            // Room for every Dedicated service of the catalogue at once.
            m.spec.quota.cpu = Quantity("16".into());
            m.spec.quota.memory = Quantity("32Gi".into());
            m.spec.quota.storage = Quantity("500Gi".into());
        }
        onboard(&env, &a).await?;
        onboard(&env, &b).await?;
        let names = json!({"names": [a.name_any(), b.name_any()]});
        let mut services: Vec<SharedService> = vec![];
        for value in example_manifests()? {
            if value["kind"] == "SharedService" {
                let name = value["metadata"]["name"].as_str().context("name")?;
                services.push(catalogue_service(name, names.clone())?);
            }
        }
        assert_eq!(services.len(), 8, "the catalogue's services");
        for s in &services {
            apply_service(&env, s).await?;
        }
        for s in &services {
            let desired = if s.spec.tenancy == consorzio_api::Tenancy::Shared {
                1
            } else {
                2
            };
            wait_status(&env, &s.name_any(), "every instance Ready", |st| {
                st.desired_instances == desired
                    && st.ready_instances == desired
                    && st
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .await?;
        }
        // Each comune's tenant in the Shared apps that make one (a GeoServer workspace, a
        // Keycloak realm, a CKAN organisation): Jobs the API server admits under `restricted`,
        // which kwok's node completes.
        for s in services.iter().filter(|s| s.spec.tenant_jobs.is_some()) {
            for m in [&a, &b] {
                tenant(&env, &m.name_any(), &s.name_any(), |t| {
                    t["phase"] == "Provisioned"
                })
                .await?;
            }
        }
        for s in &services {
            remove_service(&env, &s.name_any()).await?;
        }
        op.stop().await;
        Ok(())
    })
    .await;
}

/// Finding 4: a Shared service named like one of a comune's own policies (`dns`) gets an egress
/// policy of its own; the comune's DNS policy stays as it is.
#[tokio::test]
async fn a_service_named_like_a_comunes_own_policy_collides_with_nothing() {
    let _one = exclusive().await;
    run(|env: Env| async move {
        let op = Operator::start(&env).await?;
        let (name, ns) = onboard(&env, &comune()).await?;
        let mut s = catalogue_service("identity", json!({"names": [name]}))?;
        s.metadata.name = Some("dns".into());
        env.delete_later_dynamic(
            ApiResource::erase::<Namespace>(&()),
            None,
            "shared-dns".into(),
        );
        apply_service(&env, &s).await?;
        let policies = env.api::<NetworkPolicy>(&ns);
        wait_for("the service's own egress policy", TIMEOUT, || async {
            Ok(policies.get("consorzio-service-dns").await?)
        })
        .await?;
        let dns = policies.get("consorzio-allow-dns").await?;
        ensure!(
            !dns.labels().contains_key("consorzio.io/service"),
            "the DNS policy was taken over: {:?}",
            dns.labels()
        );
        let port = dns.spec.and_then(|s| s.egress).unwrap_or_default()[0]
            .ports
            .clone()
            .unwrap_or_default()[0]
            .port
            .clone();
        ensure!(
            port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(53)),
            "{port:?}"
        );
        remove_service(&env, "dns").await?;
        op.stop().await;
        Ok(())
    })
    .await;
}
