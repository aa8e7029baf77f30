//! Fixtures of the render tests: a Dedicated service and comuni of the Canavese.

use consorzio_api::{Municipality, SharedService};

/// A service from YAML.
pub fn service(yaml: &str) -> SharedService {
    serde_yaml::from_str(yaml).expect("a valid SharedService")
}

/// An Italian comune named `name` in union `union`, labelled `area: canavese`.
pub fn comune(name: &str, union: &str) -> Municipality {
    serde_yaml::from_str(&format!(
        "apiVersion: consorzio.io/v1alpha1\nkind: Municipality\nmetadata: {{name: {name}, labels: {{area: canavese}}}}\n\
         spec: {{displayName: {name}, country: IT, istatCode: \"001185\", belfioreCode: G462, province: TO, region: Piemonte, union: {union}}}\n"
    ))
    .expect("a valid Municipality")
}

/// A Dedicated website for the union canavese-digitale; perosa runs three replicas.
pub const SITO: &str = r#"
apiVersion: consorzio.io/v1alpha1
kind: SharedService
metadata: {name: sito}
spec:
  displayName: Sito
  tenancy: Dedicated
  municipalities: {selector: {matchLabels: {consorzio.io/union: canavese-digitale}}}
  template:
    image: docker.io/library/wordpress:6.6.2-apache
    port: 8080
    env: [{name: TITLE, value: "Comune di {{ municipality.displayName }}"}]
    probes: {path: /healthz}
    volumes: [{name: data, size: 5Gi, mountPath: /data}]
  ingress: {host: "{{ municipality.name }}.comuni.example.it", tlsSecretName: wildcard}
  overrides:
    perosa: {replicas: 3, env: {TITLE: "Perosa!"}}
"#;
