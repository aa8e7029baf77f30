//! Names never collide: every object rendered into a namespace (the comune's own, each Dedicated
//! instance, each Shared service's access point) has a name no other rendered object of its kind
//! can take, whatever the services are called. By construction: the namespace's own objects are
//! named `consorzio-…` (policies `consorzio-default-deny` and `consorzio-allow-<what>`), a
//! service's access policy `consorzio-service-<service>`, and a service's other objects
//! `<service>` or `<service>-<suffix>` with one suffix per kind and role.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::{
    Config,
    fixtures::{comune, service},
    municipality::render_municipality,
    service::render_dedicated,
    service_namespace::render_database_namespace,
    shared::{render_access_point, render_shared},
};

/// Names chosen to collide: the namespace's own objects and policies, each other's suffixes.
const ODD_NAMES: &[&str] = &[
    "dns",
    "same-namespace",
    "ingress-controller",
    "internet-egress",
    "default-deny",
    "subscribers",
    "quota",
    "limits",
    "admins",
    "viewers",
    "x",
    "x-settings",
    "x-connection",
    "x-data",
    "x-credentials",
    "allow-dns",
    "consorzio-allow",
    "consorzio-default",
    "service-x",
];

fn odd_service(name: &str, tenancy: &str, engine: &str) -> consorzio_api::SharedService {
    service(&format!(
        r#"
apiVersion: consorzio.io/v1alpha1
kind: SharedService
metadata: {{name: {name}}}
spec:
  displayName: Odd
  tenancy: {tenancy}
  municipalities: {{names: [cuorgne]}}
  template:
    image: docker.io/library/nginx:1.27
    port: 8080
    replicas: 2
    volumes: [{{name: data, size: 1Gi, mountPath: /data}}, {{name: more, size: 1Gi, mountPath: /more}}]
  database: {{engine: {engine}, version: "17", size: 1Gi}}
  ingress: {{host: "{name}.example.it"}}
"#
    ))
}

/// Every object rendered into the comune's namespace and each shared namespace, for services
/// with these names and tenancies, by (kind, namespace, name): more than one is a collision.
fn rendered(services: &[(&str, &str)]) -> BTreeMap<String, usize> {
    // Hosts with certificates: a `Certificate` per instance, its Secret `<service>-tls` (made
    // by cert-manager, not rendered: no other Secret name ends in `-tls`).
    let config = Config {
        cluster_issuer: Some("platform-ca".into()),
        ..Config::default()
    };
    let mut m = comune("cuorgne", "canavese-digitale");
    m.spec.access = serde_yaml::from_str(
        "{admins: [{kind: Group, name: cuorgne-admins}], viewers: [{kind: Group, name: cuorgne-viewers}]}",
    )
    .expect("access");
    m.spec.network.allow_internet_egress = true;
    let mut all = render_municipality(&m, &config).expect("the comune renders");
    for (i, (name, tenancy)) in services.iter().enumerate() {
        let engine = if i % 4 < 2 { "PostgreSQL" } else { "MariaDB" };
        let s = odd_service(name, tenancy, engine);
        if *tenancy == "Dedicated" {
            all.extend(render_dedicated(&s, &m, &config).expect("an instance renders"));
            let db = s.spec.database.as_ref().expect("a database");
            all.extend(render_database_namespace(&s, db, &config).expect("a server renders"));
        } else {
            all.extend(render_access_point(&s, &m, &config).expect("an access point renders"));
            all.extend(render_shared(&s, &config).expect("a shared instance renders"));
        }
    }
    let mut counts = BTreeMap::new();
    for r in &all {
        let key = format!(
            "{} {}/{}",
            r.resource.api_version.clone() + "/" + &r.resource.kind,
            r.object.namespace().unwrap_or_default(),
            r.object.name_any()
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

#[test]
fn no_rendered_name_collides_whatever_the_services_are_called() {
    for first in ["Dedicated", "Shared"] {
        let other = if first == "Dedicated" {
            "Shared"
        } else {
            "Dedicated"
        };
        // Alternate tenancies, both ways round, so that each name meets both kinds of neighbour.
        let services: Vec<(&str, &str)> = ODD_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, if i % 2 == 0 { first } else { other }))
            .collect();
        let counts = rendered(&services);
        let collisions: Vec<&String> = counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k)
            .collect();
        assert!(collisions.is_empty(), "collisions: {collisions:?}");
        // Every kind the comune and the services render was checked.
        for kind in [
            "NetworkPolicy",
            "ConfigMap",
            "Service",
            "Deployment",
            "PersistentVolumeClaim",
            "RoleBinding",
            "Ingress",
            "PodDisruptionBudget",
            "Cluster",
            "MariaDB",
            "DatabaseRole",
            "Grant",
        ] {
            assert!(
                counts.keys().any(|k| k
                    .split(' ')
                    .next()
                    .is_some_and(|g| g.ends_with(&format!("/{kind}")))),
                "no {kind} rendered"
            );
        }
    }
}
