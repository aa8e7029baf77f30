//! What a SharedService of `Shared` tenancy becomes: one instance in its own isolated namespace,
//! `shared-<service>`, and an access point in each selected comune's namespace.

use std::collections::BTreeMap;

use consorzio_api::{Municipality, SharedService};
use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Namespace, Service, ServicePort, ServiceSpec},
        networking::v1::{
            NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
        },
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{ResourceExt, core::ObjectMeta};

use super::{
    Config, Rendered,
    backup::server_policy,
    database::{Place, connection, render_database, render_server, target},
    database_backup::with_backups,
    instance::{Instance, public_url, render_instance},
    managed_meta,
    municipality::namespace_name,
    network::{egress_to, render_server_policy, tcp},
    service::{SERVICE_LABEL, container_env, labels, meta, template_version},
    service_namespace::render_isolation,
};

/// Prefix of the label a comune's namespace carries for each Shared service it subscribes to,
/// e.g. `services.consorzio.io/sit: "true"`: the shared instance admits traffic from those only.
pub const SUBSCRIBER_LABEL_PREFIX: &str = "services.consorzio.io/";
/// The policy of the shared namespace that admits the subscribed comuni.
pub const SUBSCRIBERS_POLICY: &str = "consorzio-allow-subscribers";

/// Prefix of a Shared service's namespace: `shared-<service>`.
pub const SHARED_NAMESPACE_PREFIX: &str = "shared-";

/// The namespace of a Shared service's instance.
pub fn shared_namespace(s: &SharedService) -> String {
    format!("{SHARED_NAMESPACE_PREFIX}{}", s.name_any())
}

/// The namespace label that subscribes a comune to `s`.
pub fn subscriber_label(s: &SharedService) -> String {
    format!("{SUBSCRIBER_LABEL_PREFIX}{}", s.name_any())
}

/// The name of a comune's access point settings.
pub fn connection_name(s: &SharedService) -> String {
    format!("{}-connection", s.name_any())
}

/// The name of the egress policy that opens a comune to a Shared service. The namespace's own
/// policies are `consorzio-default-deny` and `consorzio-allow-<what>`: no service's name can make
/// one of theirs (a service named `dns` once wrote its policy over `consorzio-allow-dns`).
pub fn access_policy_name(s: &SharedService) -> String {
    format!("consorzio-service-{}", s.name_any())
}

/// The in-cluster URL of a comune's access point to `s`, in the comune's namespace `ns`.
pub fn access_url(s: &SharedService, ns: &str) -> String {
    format!("http://{}.{ns}.svc:{}", s.name_any(), s.spec.template.port)
}

/// The labels of a service's instance's pods.
fn instance_labels(s: &SharedService) -> BTreeMap<String, String> {
    BTreeMap::from([(SERVICE_LABEL.to_string(), s.name_any())])
}

/// The shared namespace with the isolation of a comune's (Pod Security `restricted`, a quota with
/// no NodePort or LoadBalancer Services, default limits, deny-by-default network policies), and
/// the instance in it, with its database server when it has one.
pub fn render_shared(
    s: &SharedService,
    config: &Config,
) -> Result<Vec<Rendered>, serde_json::Error> {
    let ns = shared_namespace(s);
    let name = s.name_any();
    let owner = (SERVICE_LABEL, name.as_str());
    let t = &s.spec.template;
    let mut out = render_isolation(s, config)?;
    out.push(Rendered::new(&NetworkPolicy {
        metadata: managed_meta(SUBSCRIBERS_POLICY, Some(&ns), owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(instance_labels(s)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![subscribers(s)]),
                ports: tcp(&[t.port]),
            }]),
            egress: None,
        }),
    })?);
    // One instance for every comune: the template's values as they are (the API refuses
    // placeholders in a Shared service).
    let env = container_env(s, None, |v| {
        Ok::<_, std::convert::Infallible>(v.to_string())
    })
    .unwrap_or_else(|never| match never {});
    let target = s
        .spec
        .database
        .as_ref()
        .map(|db| (db, target(s, &ns, None, Place::Own)));
    let instance = Instance {
        namespace: ns.clone(),
        municipality: None,
        env,
        host: s.spec.ingress.as_ref().map(|i| i.host.clone()),
        replicas: t.replicas,
        resources: t.resources.clone(),
        version: template_version(s, None),
        database: target.as_ref().map(|(db, t)| connection(s, db, t)),
    };
    out.extend(render_instance(s, instance, config)?);
    if let Some((db, target)) = &target {
        let labels = labels(s, None);
        out.push(render_server(s, db, &ns, &labels, true)?);
        out.push(Rendered::new(&render_server_policy(
            s, db, &ns, &labels, None, config,
        ))?);
        out.extend(render_database(s, db, target, &labels, true)?);
        if let Some(store) = &config.backup_store {
            let (schedule, days) = server_policy(s);
            let databases = [(target.object.as_str(), target.sql.as_str())];
            with_backups(
                &mut out,
                s,
                db,
                &ns,
                &labels,
                &databases,
                (&schedule, days),
                store,
            )?;
        }
    }
    Ok(out)
}

/// The namespaces subscribed to `s`.
fn subscribers(s: &SharedService) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(subscriber_label(s), "true".into())])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A comune's access point to a Shared service, in the comune's namespace: a Service named after
/// the SharedService that resolves to the shared instance, its connection settings, and the
/// egress policy that opens the comune to the instance's pods and port, and nothing else of the
/// shared namespace.
pub fn render_access_point(
    s: &SharedService,
    m: &Municipality,
    config: &Config,
) -> Result<Vec<Rendered>, serde_json::Error> {
    let ns = namespace_name(m, config);
    let name = s.name_any();
    let comune = m.name_any();
    let labels = labels(s, Some(&comune));
    let port = s.spec.template.port;
    let mut settings = BTreeMap::from([
        ("CONSORZIO_SERVICE".to_string(), name.clone()),
        ("CONSORZIO_TENANT_ID".to_string(), comune.clone()),
        ("CONSORZIO_URL".to_string(), access_url(s, &ns)),
    ]);
    if let Some(ingress) = &s.spec.ingress {
        settings.insert(
            "CONSORZIO_PUBLIC_URL".into(),
            public_url(s, config, &ingress.host),
        );
    }
    let access_service = Service {
        metadata: meta(name.clone(), &ns, labels.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(format!("{name}.{}.svc.cluster.local", shared_namespace(s))),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let policy = egress_to(
        meta(access_policy_name(s), &ns, labels.clone()),
        &shared_namespace(s),
        instance_labels(s),
        &[port],
    );
    Ok(vec![
        Rendered::new(&ConfigMap {
            metadata: meta(connection_name(s), &ns, labels.clone()),
            data: Some(settings),
            ..Default::default()
        })?,
        Rendered::new(&access_service)?,
        Rendered::new(&policy)?,
    ])
}

/// The label that subscribes a comune's namespace to `s`, applied under a field manager of the
/// service's own, so that it never disturbs the labels the Municipality controller owns.
pub fn render_subscription(
    s: &SharedService,
    m: &Municipality,
    config: &Config,
    subscribed: bool,
) -> Result<Rendered, serde_json::Error> {
    let labels = subscribed.then(|| BTreeMap::from([(subscriber_label(s), "true".to_string())]));
    Rendered::new(&Namespace {
        metadata: ObjectMeta {
            name: Some(namespace_name(m, config)),
            labels,
            ..Default::default()
        },
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIT: &str = r#"
apiVersion: consorzio.io/v1alpha1
kind: SharedService
metadata: {name: sit, uid: 5e1c1f0a-0000-4000-8000-000000000009}
spec:
  displayName: SIT
  tenancy: Shared
  municipalities: {selector: {matchLabels: {consorzio.io/union: alto-sangro}}}
  template:
    image: docker.osgeo.org/geoserver:2.26.1
    port: 8080
    volumes: [{name: data, size: 50Gi, mountPath: /data}]
  ingress: {host: sit.altosangro.example.it, tlsSecretName: sit-tls}
"#;

    fn sit() -> SharedService {
        serde_yaml::from_str(SIT).unwrap()
    }

    fn roccaraso() -> Municipality {
        serde_yaml::from_str(
            "apiVersion: consorzio.io/v1alpha1\nkind: Municipality\nmetadata: {name: roccaraso}\n\
             spec: {displayName: Roccaraso, country: IT, istatCode: \"066080\", belfioreCode: H434, province: AQ, region: Abruzzo, union: alto-sangro}\n",
        )
        .unwrap()
    }

    fn json(r: &Rendered) -> serde_json::Value {
        serde_json::to_value(&r.object).unwrap()
    }

    #[test]
    fn one_isolated_namespace_holds_the_instance() {
        let objects = render_shared(&sit(), &Config::default()).unwrap();
        let names: Vec<String> = objects.iter().map(Rendered::describe).collect();
        assert_eq!(
            names,
            [
                "Namespace shared-sit",
                "ResourceQuota shared-sit/consorzio-quota",
                "LimitRange shared-sit/consorzio-limits",
                "NetworkPolicy shared-sit/consorzio-default-deny",
                "NetworkPolicy shared-sit/consorzio-allow-dns",
                "NetworkPolicy shared-sit/consorzio-allow-same-namespace",
                "NetworkPolicy shared-sit/consorzio-allow-ingress-controller",
                "NetworkPolicy shared-sit/consorzio-allow-subscribers",
                "ConfigMap shared-sit/sit-settings",
                "Deployment shared-sit/sit",
                "Service shared-sit/sit",
                "Ingress shared-sit/sit",
                "PersistentVolumeClaim shared-sit/sit-data",
            ]
        );
        let ns = json(&objects[0]);
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        assert!(ns["metadata"]["ownerReferences"].is_null(), "no owner");
        let subscribers = json(&objects[7]);
        assert_eq!(
            subscribers["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["services.consorzio.io/sit"],
            "true"
        );
        assert_eq!(subscribers["spec"]["ingress"][0]["ports"][0]["port"], 8080);
        let settings = json(&objects[8]);
        assert_eq!(
            settings["data"]["CONSORZIO_URL"],
            "https://sit.altosangro.example.it"
        );
        assert!(settings["data"].get("CONSORZIO_MUNICIPALITY").is_none());
    }

    #[test]
    fn access_point_resolves_to_the_shared_instance_and_opens_only_to_it() {
        let objects = render_access_point(&sit(), &roccaraso(), &Config::default()).unwrap();
        let names: Vec<String> = objects.iter().map(Rendered::describe).collect();
        assert_eq!(
            names,
            [
                "ConfigMap comune-roccaraso/sit-connection",
                "Service comune-roccaraso/sit",
                "NetworkPolicy comune-roccaraso/consorzio-service-sit",
            ]
        );
        let connection = json(&objects[0]);
        assert_eq!(connection["data"]["CONSORZIO_TENANT_ID"], "roccaraso");
        assert_eq!(
            connection["data"]["CONSORZIO_URL"],
            "http://sit.comune-roccaraso.svc:8080"
        );
        let service = json(&objects[1]);
        assert_eq!(service["spec"]["type"], "ExternalName");
        assert_eq!(
            service["spec"]["externalName"],
            "sit.shared-sit.svc.cluster.local"
        );
        let egress = &json(&objects[2])["spec"]["egress"][0];
        assert_eq!(
            egress["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "shared-sit"
        );
        assert_eq!(
            egress["to"][0]["podSelector"]["matchLabels"]["consorzio.io/service"],
            "sit"
        );
        assert_eq!(egress["ports"][0]["port"], 8080);
    }

    #[test]
    fn subscription_is_one_namespace_label() {
        let on =
            json(&render_subscription(&sit(), &roccaraso(), &Config::default(), true).unwrap());
        assert_eq!(
            on["metadata"]["labels"]["services.consorzio.io/sit"],
            "true"
        );
        let off =
            json(&render_subscription(&sit(), &roccaraso(), &Config::default(), false).unwrap());
        assert!(off["metadata"].get("labels").is_none());
    }
}
